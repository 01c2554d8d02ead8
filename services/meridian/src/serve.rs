//! `meridian serve` and `meridian migrate`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use meridian_localpg::{Cluster, Options};
use meridian_store::{Store, Write};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{files, security, DatabaseArgs, ServeArgs};

/// A job a process can take on. Replicas sharing one database can split them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// The REST API.
    Api,
    /// The xDS server for Envoy sidecars and proxyless gRPC clients.
    Xds,
    /// Probes every zone's endpoints and reports what it saw.
    Health,
    /// Competes for the failover lease; the leader decides effective weights.
    Failover,
    /// The gRPC automation API (proto/meridian/v1).
    Grpc,
}

/// Name of the database inside a private cluster.
const PRIVATE_DB: &str = "meridian";

/// Opens the database as `serve` does (the operator's, or the private one).
pub(crate) async fn open_database(args: &DatabaseArgs) -> anyhow::Result<Database> {
    Database::open(args).await
}

/// A database to use: the operator's, or a private one we started (and stop).
pub(crate) struct Database {
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

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) async fn close(self) {
        if let Some(cluster) = self.private {
            match tokio::task::spawn_blocking(move || cluster.stop()).await {
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

/// The sockets of the roles, bound before anything else starts.
struct Listeners {
    api: Option<TcpListener>,
    xds: Option<TcpListener>,
    grpc: Option<TcpListener>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    security::validate(&args.security)?;
    // Bind first: a taken port is an operator error worth hearing about
    // before a database is started.
    let has = |role| args.roles.contains(&role);
    let listeners = Listeners {
        api: match has(Role::Api) {
            true => Some(bind(args.api_addr, "API").await?),
            false => None,
        },
        xds: match has(Role::Xds) {
            true => Some(bind(args.xds_addr, "xDS").await?),
            false => None,
        },
        grpc: match has(Role::Grpc) {
            true => Some(bind(args.grpc_addr, "gRPC").await?),
            false => None,
        },
    };
    let db = Database::open(&args.db).await?;
    let result = serve(&args, &db, listeners).await;
    db.close().await;
    result
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} address {addr}"))
}

async fn serve(args: &ServeArgs, db: &Database, listeners: Listeners) -> anyhow::Result<()> {
    let store = Store::connect(&db.url, args.db_pool)
        .await
        .context("connecting to PostgreSQL")?;
    store.migrate().await?;
    if db.private.is_some() && args.examples.exists() {
        load_examples(&store, &args.examples).await?;
    }

    let shutdown = CancellationToken::new();
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let mut state = meridian_api::AppState::new(store.clone());
    state.shutdown = shutdown.clone();

    if let Some(listener) = listeners.xds {
        let (publisher, subscriber) = meridian_xds::snapshot_channel();
        let config = meridian_xds_sync::Config {
            debounce: Duration::from_millis(args.xds_debounce_ms),
        };
        let registry = meridian_xds::Registry::new();
        let ca = security::start_ca(&args.security, &store).await?;
        let (issuer, ca) = match ca {
            Some((issuer, ca)) => (Some((issuer, registry.identities())), Some(ca)),
            None => (None, None),
        };
        let writer = meridian_xds_sync::Writer::new(store.clone(), publisher, config)
            .with_security(&args.security.trust_domain, issuer);
        state.ready.push(writer.ready_flag());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            writer.run(stop).await;
            Ok(())
        });
        let server = meridian_xds::Server::new(subscriber, registry.clone(), shutdown.clone())
            .with_client_auth(args.security.xds_client_auth);
        let clients = registry.clone();
        state.xds_clients = Some(Arc::new(move || {
            serde_json::to_value(clients.clients()).unwrap_or_default()
        }));
        let tls = match &ca {
            Some(ca) => security::xds_tls(&args.security, ca)?,
            None => None,
        };
        let addr = display_addr(listener.local_addr()?);
        let stop = shutdown.clone();
        match (tls, ca) {
            (Some((config, cert)), Some(ca)) => {
                // The address stays the last word: scripts and tests read it.
                println!("Meridian xDS listening on {addr}");
                tracing::info!(client_auth = ?args.security.xds_client_auth, "xDS serves TLS");
                tasks.spawn(security::renew_server_cert(
                    (*args.security).clone(),
                    ca,
                    cert,
                    shutdown.clone(),
                ));
                tasks.spawn(async move {
                    meridian_xds::tls_server::serve_tls(listener, server, config, stop)
                        .await
                        .context("xDS server")
                });
            }
            _ => {
                println!("Meridian xDS listening on {addr}");
                // Loudly: this mode is for loopback and tests.
                tracing::warn!(
                    "xDS is PLAINTEXT and UNAUTHENTICATED: nodes' claimed identities are believed \
                     and workload keys travel in the clear; use --xds-client-auth required \
                     (with --ca-key-file) beyond loopback"
                );
                tasks.spawn(async move {
                    meridian_xds::serve(listener, server, stop)
                        .await
                        .context("xDS server")
                });
            }
        }
    }

    let replica = args.replica_id.clone().unwrap_or_else(default_replica_id);
    if args.roles.contains(&Role::Health) {
        let config = meridian_health::Config {
            checker: replica.clone(),
            report_every: Duration::from_millis(500),
            refresh_every: Duration::from_secs(2),
            source: args.probe_source,
        };
        let prober = meridian_health::Prober::new(store.clone(), config);
        let stop = shutdown.clone();
        tasks.spawn(async move {
            prober.run(stop).await;
            Ok(())
        });
    }
    if args.roles.contains(&Role::Failover) {
        let leader = meridian_failover_loop::Leader::new(
            store.clone(),
            meridian_failover_loop::Config::new(replica.clone()),
        );
        let stop = shutdown.clone();
        tasks.spawn(async move {
            leader.run(stop).await;
            Ok(())
        });
    }

    if let Some(listener) = listeners.grpc {
        println!(
            "Meridian gRPC listening on {}",
            display_addr(listener.local_addr()?)
        );
        let (store, stop) = (store.clone(), shutdown.clone());
        tasks.spawn(async move {
            meridian_grpc::serve(listener, store, stop)
                .await
                .context("gRPC automation API")
        });
    }

    if let Some(listener) = listeners.api {
        println!(
            "Meridian API listening on http://{}",
            display_addr(listener.local_addr()?)
        );
        let app = meridian_api::router(state);
        let stop = shutdown.clone();
        tasks.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("API server")
        });
    }
    tracing::info!(roles = ?args.roles, "started");

    // Run until a signal, or until any role ends: one failing role stops
    // the others rather than leaving a half-working replica behind.
    let mut failure = None;
    tokio::select! {
        _ = wait_for_signal() => tracing::info!("signal received"),
        Some(ended) = tasks.join_next() => {
            failure = Some(match ended {
                Ok(Ok(())) => anyhow::anyhow!("a role stopped unexpectedly"),
                Ok(Err(e)) => e,
                Err(e) => anyhow::Error::new(e).context("a role panicked"),
            });
        }
    }
    shutdown.cancel();
    let drain = Duration::from_secs(args.drain_seconds);
    tracing::info!(seconds = drain.as_secs(), "shutting down: draining");
    let drained = tokio::time::timeout(drain, async {
        while let Some(ended) = tasks.join_next().await {
            if let Ok(Err(e)) = ended {
                tracing::warn!(error = %e, "role ended with an error during shutdown");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("drain time limit reached; closing what is left");
        tasks.abort_all();
    }
    store.pool().close().await;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
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

fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
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
