//! `meridian serve` and `meridian migrate`.

use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use meridian_localpg::{Cluster, Options};
use meridian_store::{Store, Write};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{files, DatabaseArgs, ServeArgs};

/// A job a process can take on. Replicas sharing one database can split them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// The REST API.
    Api,
}

/// Name of the database inside a private cluster.
const PRIVATE_DB: &str = "meridian";

/// A database to use: the operator's, or a private one we started (and stop).
struct Database {
    url: String,
    private: Option<Cluster>,
}

impl Database {
    async fn open(args: &DatabaseArgs) -> anyhow::Result<Database> {
        if let Some(url) = &args.database_url {
            return Ok(Database {
                url: url.clone(),
                private: None,
            });
        }
        let data_dir = args.data_dir.join("postgres");
        let cluster = tokio::task::spawn_blocking(move || -> anyhow::Result<Cluster> {
            let cluster = Cluster::start(&Options {
                data_dir,
                port: None,
                durable: true,
            })
            .context("starting the private PostgreSQL (set DATABASE_URL to use your own)")?;
            cluster.ensure_database(PRIVATE_DB)?;
            Ok(cluster)
        })
        .await??;
        let url = cluster.url(PRIVATE_DB);
        tracing::info!(%url, "using private PostgreSQL; set DATABASE_URL to use another database");
        Ok(Database {
            url,
            private: Some(cluster),
        })
    }

    async fn close(self) {
        if let Some(cluster) = self.private {
            let stopped = tokio::task::spawn_blocking(move || cluster.stop()).await;
            match stopped {
                Ok(Ok(())) => tracing::info!("stopped private PostgreSQL"),
                Ok(Err(e)) => tracing::warn!(error = %e, "stopping private PostgreSQL"),
                Err(e) => tracing::warn!(error = %e, "stopping private PostgreSQL"),
            }
        }
    }
}

pub async fn migrate(args: DatabaseArgs) -> anyhow::Result<()> {
    let db = Database::open(&args).await?;
    let result = async {
        let store = Store::connect(&db.url, 2)
            .await
            .context("connecting to PostgreSQL")?;
        store.migrate().await?;
        anyhow::Ok(())
    }
    .await;
    db.close().await;
    result?;
    println!("migrations applied");
    Ok(())
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Bind first: a taken port is an operator error worth hearing about
    // before a database is started.
    let listener = TcpListener::bind(args.api_addr)
        .await
        .with_context(|| format!("binding the API address {}", args.api_addr))?;
    let db = Database::open(&args.db).await?;
    let result = serve(&args, &db, listener).await;
    db.close().await;
    result
}

async fn serve(args: &ServeArgs, db: &Database, listener: TcpListener) -> anyhow::Result<()> {
    let store = Store::connect(&db.url, args.db_pool)
        .await
        .context("connecting to PostgreSQL")?;
    store.migrate().await?;
    if db.private.is_some() && args.examples.exists() {
        load_examples(&store, &args.examples).await?;
    }

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signal.cancel();
    });

    let local = listener.local_addr()?;
    tracing::info!(roles = ?args.roles, "starting");
    println!("Meridian API listening on http://{}", display_addr(local));
    let app = meridian_api::router(meridian_api::AppState {
        store: store.clone(),
    });
    let drain = Duration::from_secs(args.drain_seconds);
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let server = tokio::spawn(async move { server.await });
    shutdown.cancelled().await;
    tracing::info!(
        seconds = drain.as_secs(),
        "shutting down: draining in-flight requests"
    );
    match tokio::time::timeout(drain, server).await {
        Ok(joined) => joined?.context("API server")?,
        Err(_) => tracing::warn!("drain time limit reached; closing open connections"),
    }
    store.pool().close().await;
    Ok(())
}

/// Loads the examples into a fresh private database. A policy that exists
/// already is left alone, so edits survive a restart.
async fn load_examples(store: &Store, dir: &std::path::Path) -> anyhow::Result<()> {
    let docs = files::load(dir)?;
    let write = Write {
        actor: "meridian",
        source: "examples",
        dry_run: false,
    };
    let mut loaded = 0;
    for (_, policy) in docs {
        match store.create(&policy, &write).await {
            Ok(_) => loaded += 1,
            Err(
                meridian_store::Error::NameTaken { .. } | meridian_store::Error::HostTaken { .. },
            ) => {}
            Err(e) => return Err(e).context(format!("loading example {}", policy.metadata.name)),
        }
    }
    tracing::info!(loaded, dir = %dir.display(), "example policies loaded");
    Ok(())
}

fn display_addr(addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
