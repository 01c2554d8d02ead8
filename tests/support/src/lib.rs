//! Helpers shared by the integration tests, compiled once.
//!
//! - [`database`]: a fresh, migrated database per test, on one PostgreSQL
//!   server shared by all test processes: `MERIDIAN_TEST_DATABASE_URL`
//!   when set, else a private cluster that this crate starts (or finds
//!   running) in `$MERIDIAN_TEST_PG_DIR`, default `.meridian/test-postgres`.
//!   `scripts/test` points that at a temporary directory and stops the
//!   cluster when the run ends.
//! - [`Server`]: the REST API on 127.0.0.1 port 0, stoppable and restartable.
//! - [`process::Meridian`]: the real binary as a process, every role on.
//! - [`backend::Backend`]: an HTTP backend per zone that echoes what it got.
//! - [`envoy::Envoy`]: a real Envoy bootstrapped with only an ADS cluster.
//! - [`prometheus::Prometheus`]: a real Prometheus scraping loopback targets.
//!
//! A missing PostgreSQL is a failure that says what to install, never a skip.

pub mod backend;
pub mod delay;
pub mod envoy;
pub mod git;
pub mod metrics;
pub mod moto;
pub mod pdns;
pub mod process;
pub mod prometheus;
pub mod traffic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use meridian_api::AppState;
use meridian_store::Store;
use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// URL of the server's maintenance database, used to create test databases.
fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("MERIDIAN_TEST_DATABASE_URL") {
            return url;
        }
        let data_dir = std::env::var_os("MERIDIAN_TEST_PG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".meridian/test-postgres"));
        let opts = meridian_localpg::Options {
            data_dir,
            port: None,
            durable: false,
        };
        let cluster = meridian_localpg::Cluster::start(&opts).unwrap_or_else(|e| {
            panic!("integration tests need PostgreSQL: {e}. Run scripts/test, which installs it.")
        });
        cluster.url("postgres")
    })
}

/// A migrated database of its own for one test.
pub struct TestDb {
    pub url: String,
    pub store: Store,
}

/// Creates and migrates a new database.
pub async fn database() -> TestDb {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!(
        "t{}_{}_{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    );
    let admin = admin_url();
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .unwrap_or_else(|e| panic!("connecting to test PostgreSQL at {admin}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.ok();
    let (base, _) = admin.rsplit_once('/').expect("database URL has a path");
    let url = format!("{base}/{name}");
    let store = Store::connect(&url, 16)
        .await
        .expect("connect to test database");
    store.migrate().await.expect("migrate test database");
    TestDb { url, store }
}

/// The REST API serving on a loopback port until stopped.
pub struct Server {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    pub async fn start(store: Store) -> Server {
        Self::start_on(store, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(store: Store, addr: SocketAddr) -> Server {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind test server");
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let app = meridian_api::router(AppState::new(store));
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        let task = tokio::spawn(async move { serve.await.expect("test server") });
        Server { addr, stop, task }
    }

    /// `http://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops accepting, waits for in-flight requests, and returns.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("test server task");
    }
}
