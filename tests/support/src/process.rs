//! The real `meridian` binary as a child process: what an operator runs,
//! with the addresses it prints read back from its standard output.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Meridian {
    child: Child,
    /// `http://127.0.0.1:PORT` of the REST API.
    pub api: String,
    /// Port of the xDS server on 127.0.0.1 (0 without the xds role).
    pub xds_port: u16,
    /// `http://127.0.0.1:PORT` of the gRPC automation API (empty without the grpc role).
    pub grpc: String,
}

impl Meridian {
    /// Starts `meridian serve` on `database_url` with every role, on free
    /// loopback ports, and waits until it is ready.
    pub async fn start(bin: &Path, database_url: &str) -> Meridian {
        Self::start_with_env(bin, database_url, &[]).await
    }

    /// Like [`Meridian::start`], with extra environment (e.g. the variable a
    /// DNS provider's credential reference names).
    pub async fn start_with_env(bin: &Path, database_url: &str, env: &[(&str, &str)]) -> Meridian {
        Self::start_full(bin, database_url, env, "127.0.0.1:0").await
    }

    /// Like [`Meridian::start_with_env`], with the gRPC API on a given
    /// address (to restart a replica where its clients will reconnect).
    pub async fn start_full(
        bin: &Path,
        database_url: &str,
        env: &[(&str, &str)],
        grpc_addr: &str,
    ) -> Meridian {
        let mut all = vec![("MERIDIAN_GRPC_ADDR", grpc_addr)];
        all.extend_from_slice(env);
        Self::start_with(bin, database_url, &all, &[]).await
    }

    /// `meridian serve` with extra arguments (e.g. `--drain-seconds 5`) and
    /// environment. Defaults come from the environment, so either can
    /// override them: loopback ports chosen by the OS, no authentication
    /// (loopback only; the access-control tests start their own), every
    /// role unless e.g. `MERIDIAN_ROLES=api`.
    pub async fn start_with(
        bin: &Path,
        database_url: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Meridian {
        Self::start_inner(bin, database_url, env, args, None).await
    }

    /// [`Meridian::start_with`], with every line of its log (standard
    /// error) also sent to `log`, for tests of what it says.
    pub async fn start_logged(
        bin: &Path,
        database_url: &str,
        env: &[(&str, &str)],
        args: &[&str],
        log: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Meridian {
        Self::start_inner(bin, database_url, env, args, Some(log)).await
    }

    async fn start_inner(
        bin: &Path,
        database_url: &str,
        env: &[(&str, &str)],
        args: &[&str],
        log: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> Meridian {
        let stderr = match log {
            Some(_) => Stdio::piped(),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(bin)
            .arg("serve")
            .args(args)
            .env("MERIDIAN_API_ADDR", "127.0.0.1:0")
            .env("MERIDIAN_XDS_ADDR", "127.0.0.1:0")
            .env("MERIDIAN_GRPC_ADDR", "127.0.0.1:0")
            .env("MERIDIAN_NO_AUTH", "true")
            .env("MERIDIAN_XDS_DEBOUNCE_MS", "20")
            .env("DATABASE_URL", database_url)
            .env("MERIDIAN_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start meridian serve");
        if let (Some(log), Some(err)) = (log, child.stderr.take()) {
            // Still shown, as inherited standard error would be.
            let mut lines = BufReader::new(err).lines();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("{line}");
                    let _ = log.send(line);
                }
            });
        }
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // The API prints its address last, after the roles it may serve.
        let (mut api, mut xds_port, mut grpc) = (None, None, None);
        let started = tokio::time::timeout(Duration::from_secs(60), async {
            while api.is_none() {
                let line = lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("meridian exited before listening");
                let addr = line
                    .split_whitespace()
                    .last()
                    .unwrap_or_default()
                    .to_owned();
                if line.starts_with("Meridian API listening on") {
                    api = Some(addr);
                } else if line.starts_with("Meridian gRPC listening on") {
                    grpc = Some(format!("http://{addr}"));
                } else if line.starts_with("Meridian xDS listening on") {
                    xds_port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
                }
            }
        })
        .await;
        assert!(
            started.is_ok(),
            "meridian did not print its addresses within 60 s"
        );
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let m = Meridian {
            child,
            api: api.unwrap(),
            xds_port: xds_port.unwrap_or_default(),
            grpc: grpc.unwrap_or_default(),
        };
        m.wait_ready().await;
        m
    }

    async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.api);
        for _ in 0..300 {
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("meridian at {} not ready within 30 s", self.api);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// Creates a policy through the REST API; panics with the server's answer unless 201.
    pub async fn create_policy(&self, policy: &serde_json::Value) {
        let r = reqwest::Client::new()
            .post(self.url("/api/v1/policies"))
            .json(policy)
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(
            status,
            201,
            "creating a policy: {}",
            r.text().await.unwrap_or_default()
        );
    }

    /// SIGKILL: a crash, with no chance to release leases or drain.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, as an orchestrator stops a replica; returns how the process
    /// exited and how long that took (up to `limit`; `None` if it was still
    /// running then, and then it is killed).
    pub async fn terminate(mut self, limit: Duration) -> (Option<ExitStatus>, Duration) {
        let started = Instant::now();
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let status = tokio::time::timeout(limit, self.child.wait()).await;
        let took = started.elapsed();
        match status {
            Ok(Ok(s)) => (Some(s), took),
            _ => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                (None, took)
            }
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        assert!(
            matches!(status, Ok(Ok(s)) if s.success()),
            "meridian did not exit cleanly: {status:?}"
        );
    }
}
