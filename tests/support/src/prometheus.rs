//! A real Prometheus (Debian's `prometheus`, which `scripts/install-deps
//! --test` installs) on 127.0.0.1, scraping only the loopback targets a
//! test gives it (Envoy's admin `/stats/prometheus`), every second. Killed
//! and its data removed on drop. Fails, never skips, when it is missing.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::repo_root;
use crate::traffic::free_port;

pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    /// Base URL of its HTTP API, e.g. `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Prometheus {
    /// Starts Prometheus on `port` (choose it with [`free_port`] when the
    /// URL must be known before, say in a policy) scraping `targets`
    /// (`host:port` of Envoy admin interfaces), and waits until it is
    /// ready.
    pub async fn start(port: u16, targets: &[&str]) -> Prometheus {
        let dir = repo_root().join(format!(
            ".meridian/prometheus-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let targets = targets
            .iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        // One-second scrapes: a rollout test's intervals are seconds long.
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: envoy\n    metrics_path: /stats/prometheus\n    \
             static_configs: [{{targets: [{targets}]}}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("prometheus.log")).unwrap(),
            ))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start prometheus: {e}; install it: scripts/install-deps --test (Debian `prometheus`)")
            });
        let p = Prometheus {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        let ready = format!("{}/-/ready", p.url);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus not ready in 30 s:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A port for [`Prometheus::start`].
    pub fn free_port() -> u16 {
        free_port(&["127.0.0.1"])
    }

    /// The first value of an instant query, if it has one.
    pub async fn query(&self, promql: &str) -> Option<f64> {
        let v: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.try_wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
