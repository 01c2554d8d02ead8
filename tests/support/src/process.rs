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
    /// Port of the xDS server on 127.0.0.1.
    pub xds_port: u16,
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
        Self::start_with(bin, database_url, env, &[]).await
    }

    /// Like [`Meridian::start_with_env`], with extra `serve` arguments
    /// (e.g. `--drain-seconds 5`).
    pub async fn start_with(
        bin: &Path,
        database_url: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Meridian {
        let mut child = Command::new(bin)
            .args([
                "serve",
                "--api-addr",
                "127.0.0.1:0",
                "--xds-addr",
                "127.0.0.1:0",
            ])
            .args(["--xds-debounce-ms", "20"])
            .args(args)
            .env("DATABASE_URL", database_url)
            .env("MERIDIAN_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start meridian serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut api, mut xds_port) = (None, None);
        let started = tokio::time::timeout(Duration::from_secs(60), async {
            while api.is_none() || xds_port.is_none() {
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
            xds_port: xds_port.unwrap(),
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
