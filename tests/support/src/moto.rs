//! moto's Route53 API (`moto_server` from the project virtualenv) on
//! 127.0.0.1 for tests, and a TCP relay a test can cut to make a provider
//! unreachable without losing moto's in-memory state.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_dns::{AwsSecret, Route53Config};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::pdns::free_tcp_port;
use crate::repo_root;

/// The hosted zone tests create.
pub const ZONE: &str = "example.com.";

pub const INSTALL_HINT: &str =
    "run scripts/install-deps --test, which installs moto[server] from tests/interop/requirements.txt into .venv";

/// A running moto_server; killed on drop, including when a test panics.
pub struct Moto {
    child: Child,
    log: PathBuf,
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Moto {
    pub async fn start() -> Moto {
        let bin = repo_root().join(".venv/bin/moto_server");
        assert!(
            bin.is_file(),
            "{} is missing: {INSTALL_HINT}",
            bin.display()
        );
        let port = free_tcp_port();
        let log =
            std::env::temp_dir().join(format!("meridian-moto-{}-{port}.log", std::process::id()));
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("moto log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}; {INSTALL_HINT}", bin.display()));
        let mut moto = Moto {
            child,
            log,
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited with {status}: {}", moto.log_text());
            }
            let probe = http.get(format!("{}/moto-api/", moto.url)).send().await;
            if probe.is_ok_and(|r| r.status().is_success()) {
                return moto;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer /moto-api/ within 30 s: {}",
                moto.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn config(&self, hosted_zone_id: &str) -> Route53Config {
        Route53Config {
            hosted_zone_id: hosted_zone_id.to_owned(),
            region: None,
            endpoint_url: Some(self.url.clone()),
            // Any SigV4-shaped credentials pass moto.
            access_key_id: AwsSecret::new("AKIAIOSFODNN7EXAMPLE"),
            secret_access_key: AwsSecret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        }
    }

    /// A plain SDK client on moto. It reads moto's record values (CDATA)
    /// as empty, so listing goes through [`Route53Provider::client`].
    pub fn sdk(&self) -> aws_sdk_route53::Client {
        let config = aws_sdk_route53::Config::builder()
            .behavior_version(aws_sdk_route53::config::BehaviorVersion::latest())
            .region(aws_sdk_route53::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_route53::config::Credentials::new(
                "AKIAIOSFODNN7EXAMPLE",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                None,
                None,
                "test",
            ))
            .endpoint_url(self.url.clone())
            .build();
        aws_sdk_route53::Client::from_conf(config)
    }

    /// Creates the hosted zone `example.com.`; returns its id.
    pub async fn create_zone(&self) -> String {
        let out = self
            .sdk()
            .create_hosted_zone()
            .name(ZONE)
            .caller_reference(format!("meridian-test-{}", std::process::id()))
            .send()
            .await
            .expect("CreateHostedZone");
        out.hosted_zone().expect("hosted zone").id().to_owned()
    }
}

/// Forwards 127.0.0.1:port to a target until cut. While cut nothing listens
/// on the port (connections are refused, as with a provider outage) and open
/// connections are dropped; restore listens on the same port again.
pub struct Relay {
    pub port: u16,
    target: String,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Relay {
    pub async fn start(target: &str) -> Relay {
        let relay = Relay {
            port: free_tcp_port(),
            target: target.to_owned(),
            task: Arc::default(),
        };
        relay.restore().await;
        relay
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn cut(&self) {
        if let Some(task) = self.task.lock().await.take() {
            task.abort();
            let _ = task.await;
        }
    }

    pub async fn restore(&self) {
        let mut slot = self.task.lock().await;
        if slot.is_some() {
            return;
        }
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind relay");
        let target = self.target.clone();
        *slot = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.task.try_lock() {
            if let Some(task) = slot.take() {
                task.abort();
            }
        }
    }
}
