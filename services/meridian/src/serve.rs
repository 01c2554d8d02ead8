//! `meridian serve` and `meridian migrate`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use meridian_localpg::{Cluster, Options};
use meridian_store::tokens::Imported;
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
    /// Syncs policy repositories (GitOps sources) as they fall due.
    Gitops,
}

/// Connections of the failover leader's own pool: the decision loop, the
/// lease renewal and the DNS reconciler, each at most one at a time.
const LEADER_POOL: u32 = 4;

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
        // Every command that touches the database comes here, so each one
        // honours --database-url-file (a `token import` that skipped it
        // would write the first admin token into a throwaway private database).
        let mut args = args.clone();
        crate::config::resolve_database_url(&mut args)?;
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
        // Not the URL: it holds the cluster's password.
        tracing::info!(
            port = cluster.port(),
            "using private PostgreSQL; set DATABASE_URL to use another database"
        );
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

/// `meridian token …`: straight to the database, since the first admin
/// token cannot come from an API that needs one.
pub async fn token(command: crate::TokenCommand) -> anyhow::Result<()> {
    use crate::TokenCommand as T;
    let db_args = match &command {
        T::Create { db, .. } | T::Import { db, .. } | T::List { db } | T::Revoke { db, .. } => db,
    };
    // The file is checked before a database is opened or started.
    let imported = match &command {
        T::Import {
            name, role, file, ..
        } => {
            let role: meridian_auth::Role = role.parse().map_err(anyhow::Error::msg)?;
            meridian_policy::validate::dns_label(name)
                .map_err(|e| anyhow::anyhow!("--name: {e}"))?;
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("--file {}", file.display()))?;
            let token = text.trim();
            meridian_auth::token::check_imported(token)
                .map_err(|e| anyhow::anyhow!("--file {}: {e}", file.display()))?;
            Some((role, meridian_auth::token::hash(token)))
        }
        _ => None,
    };
    let db = Database::open(db_args).await?;
    let result = async {
        let store = Store::connect(&db.url, 2)
            .await
            .context("connecting to PostgreSQL")?;
        store.migrate().await?;
        let actor = format!(
            "cli:{}",
            std::env::var("USER").unwrap_or_else(|_| "unknown".into())
        );
        match &command {
            T::Create { name, role, .. } => {
                let role: meridian_auth::Role = role.parse().map_err(anyhow::Error::msg)?;
                meridian_policy::validate::dns_label(name)
                    .map_err(|e| anyhow::anyhow!("--name: {e}"))?;
                let secret = meridian_auth::token::generate();
                store
                    .create_token(
                        name,
                        role.as_str(),
                        &meridian_auth::token::hash(&secret),
                        &actor,
                    )
                    .await?;
                eprintln!("token {name:?} ({role}) created; it is shown only now:");
                println!("{secret}");
            }
            T::Import { name, .. } => {
                let (role, hash) = imported.as_ref().expect("checked above");
                let done = store
                    .import_token(name, role.as_str(), hash, &actor)
                    .await?;
                let what = match done {
                    Imported::Created => "created",
                    Imported::Unchanged => "already in place",
                    Imported::Replaced => "replaced (the previous token no longer works)",
                };
                println!("token {name:?} ({role}) {what}");
            }
            T::List { .. } => {
                println!("{:<24} {:<9} {:<20} REVOKED", "NAME", "ROLE", "CREATED BY");
                for t in store.tokens().await? {
                    let revoked = t.revoked_at.map(|t| t.to_rfc3339()).unwrap_or_default();
                    println!(
                        "{:<24} {:<9} {:<20} {revoked}",
                        t.name, t.role, t.created_by
                    );
                }
            }
            T::Revoke { name, .. } => {
                if store.revoke_token(name, &actor).await? {
                    println!("token {name:?} revoked");
                } else {
                    println!("token {name:?} was revoked already");
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    db.close().await;
    result
}

/// Says loudly when the APIs run without authentication (which the
/// settings check allows on loopback only).
fn warn_if_unauthenticated(args: &ServeArgs) {
    if args.no_auth {
        // Through the log, so JSON logs stay one object per line.
        tracing::warn!(
            "authentication is OFF (--no-auth): anyone on this machine can read and change \
             traffic policies through the REST and gRPC APIs. For local use only."
        );
    }
}

fn authenticator(args: &ServeArgs, store: &Store) -> Arc<meridian_auth::Authenticator> {
    let streams = (args.max_streams_per_caller > 0).then_some(args.max_streams_per_caller);
    if args.no_auth {
        return Arc::new(meridian_auth::Authenticator::off().with_stream_limit(streams));
    }
    let oidc = args
        .oidc_issuer
        .as_ref()
        .map(|issuer| meridian_auth::OidcConfig {
            issuer: issuer.clone(),
            audience: args.oidc_audience.clone().unwrap_or_default(),
            jwks_url: args.oidc_jwks_url.clone().unwrap_or_default(),
            role_claim: args.oidc_role_claim.clone(),
        });
    let rate = (args.rate_limit > 0).then(|| meridian_auth::Rate {
        per_second: f64::from(args.rate_limit),
        burst: 2.0 * f64::from(args.rate_limit),
    });
    Arc::new(meridian_auth::Authenticator::new(
        store.clone(),
        meridian_auth::Config {
            oidc,
            rate,
            streams_per_caller: (args.max_streams_per_caller > 0)
                .then_some(args.max_streams_per_caller),
        },
    ))
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
    admin: Option<TcpListener>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    security::validate(&args.security)?;
    // Bind first: a taken port is an operator error worth hearing about
    // before a database is started.
    warn_if_unauthenticated(&args);
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
        admin: match args.admin_addr {
            Some(addr) => Some(bind(addr, "admin").await?),
            None => None,
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
    if args.migrate || db.private.is_some() {
        store.migrate().await?;
    } else {
        let pending = store.pending_migrations().await?;
        if !pending.is_empty() {
            anyhow::bail!(
                "the database schema is behind this build (migrations {pending:?} not applied): \
                 run `meridian migrate` first, or start with --migrate true"
            );
        }
    }
    if db.private.is_some() && args.examples.exists() {
        load_examples(&store, &args.examples).await?;
    }
    export_metrics(&store);

    let shutdown = CancellationToken::new();
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    // What the API's database gate and /readyz know of the database.
    let (monitor, stop) = (store.clone(), shutdown.clone());
    tasks.spawn(async move {
        monitor.monitor(Duration::from_secs(1), stop).await;
        Ok(())
    });
    // Old rows go by age; one replica at a time prunes.
    let (pruner, stop, retention) = (store.clone(), shutdown.clone(), args.retention());
    let every = Duration::from_secs(args.prune_minutes * 60);
    tasks.spawn(async move {
        pruner.prune_loop(retention, every, stop).await;
        Ok(())
    });
    let mut state = meridian_api::AppState::new(store.clone());
    state.shutdown = shutdown.clone();
    state.auth = authenticator(args, &store);
    state.metrics_on_api = !args.metrics_admin_only;
    if state.auth.is_on() && args.oidc_issuer.is_none() && store.tokens().await?.is_empty() {
        tracing::warn!(
            "no API tokens exist yet, so every API call will get 401; create the first one with \
             `meridian token create --name admin --role admin`"
        );
    }

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
        // NACKs of shared route configurations go from the server to the
        // writer, which leaves the refused policy out of the route.
        let (nacks_tx, nacks_rx) = tokio::sync::mpsc::unbounded_channel();
        let writer = meridian_xds_sync::Writer::new(store.clone(), publisher, config)
            .with_security(&args.security.trust_domain, issuer)
            .with_route_nacks(nacks_rx);
        state.ready.push(writer.ready_flag());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            writer.run(stop).await;
            Ok(())
        });
        // CSDS answers admins of the APIs. Without authentication
        // (--no-auth) every caller would be one: fine on loopback, where the
        // APIs themselves are; not where other machines reach xDS.
        let csds_auth =
            (!args.no_auth || args.xds_addr.ip().is_loopback()).then(|| state.auth.clone());
        let server = meridian_xds::server(subscriber, registry.clone(), shutdown.clone())
            .with_client_auth(args.security.client_auth())
            .with_claims(args.security.claims())
            .with_status_access(Arc::new(crate::csds::Access::new(csds_auth)))
            .with_route_nacks(nacks_tx);
        let clients = registry.clone();
        state.xds_clients = Some(Arc::new(move || {
            serde_json::to_value(clients.clients()).unwrap_or_default()
        }));
        let tls = match &ca {
            Some(ca) => security::xds_tls(&args.security, ca)?,
            None => None,
        };
        // Load reports (LRS) share the xDS port: clients reach it through
        // their xDS cluster.
        let lrs = meridian_load_reports::Service::new(shutdown.clone());
        let extra = tonic::service::Routes::new(lrs.server());
        let reporter = args.replica_id.clone().unwrap_or_else(default_replica_id);
        let flusher = lrs.run_flusher(store.clone(), reporter);
        tasks.spawn(async move {
            flusher.await;
            Ok(())
        });
        let addr = display_addr(listener.local_addr()?);
        if args.security.xds_trust_claimed_identities {
            // Loudly, on every start: any local process can become any
            // workload (allowed on loopback only, by the settings check).
            tracing::warn!(
                xds = %addr,
                "xDS TRUSTS CLAIMED IDENTITIES (--xds-trust-claimed-identities): any client that \
                 reaches the xDS port can claim any SPIFFE ID and receive that identity's \
                 namespace policies and workload PRIVATE KEY. For loopback and tests only."
            );
        }
        let stop = shutdown.clone();
        match (tls, ca) {
            (Some((config, cert)), Some(ca)) => {
                // The address stays the last word: scripts and tests read it.
                println!("Meridian xDS listening on {addr}");
                tracing::info!(client_auth = ?args.security.client_auth(), "xDS serves TLS");
                tasks.spawn(security::renew_server_cert(
                    (*args.security).clone(),
                    ca,
                    cert,
                    shutdown.clone(),
                ));
                tasks.spawn(async move {
                    meridian_xds::tls_server::serve_tls_with(listener, server, config, extra, stop)
                        .await
                        .context("xDS server")
                });
            }
            _ => {
                println!("Meridian xDS listening on {addr}");
                // Loudly: nodes get no identity here unless claims are
                // trusted, which the settings check allows on loopback only.
                if !args.security.xds_trust_claimed_identities {
                    tracing::warn!(
                        "xDS is PLAINTEXT and UNAUTHENTICATED: nodes have no verified identity, \
                         so they get no workload keys and only unscoped policies; use \
                         --xds-client-auth required (with --ca-key-file) for identities"
                    );
                }
                tasks.spawn(async move {
                    meridian_xds::serve_with(listener, server, extra, stop)
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
        // The leader, its lease and its DNS reconciler get connections of
        // their own: on the shared pool, callers holding many streams or a
        // burst of API requests could keep the lease from being renewed
        // (the pool's acquire timeout is longer than the lease), and a
        // replica would lose leadership to load rather than failure.
        let leader_store = Store::connect(&db.url, LEADER_POOL)
            .await
            .context("connecting the failover leader to PostgreSQL")?;
        let leader = meridian_failover_loop::Leader::new(
            leader_store,
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
        let (store, auth, stop) = (store.clone(), state.auth.clone(), shutdown.clone());
        tasks.spawn(async move {
            meridian_grpc::serve(listener, store, auth, stop)
                .await
                .context("gRPC automation API")
        });
    }

    if let Some(listener) = listeners.admin {
        println!(
            "Meridian admin listening on http://{}",
            display_addr(listener.local_addr()?)
        );
        let app = meridian_api::admin_router(state.clone());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("admin server")
        });
    }
    if args.roles.contains(&Role::Gitops) {
        let syncer = meridian_gitops::sync::Syncer::new(
            store.clone(),
            meridian_gitops::sync::Config {
                cache_dir: args.db.data_dir.join("gitops"),
                poll: Duration::from_millis(args.gitops_poll_ms),
            },
        );
        let stop = shutdown.clone();
        tasks.spawn(async move {
            syncer.run(stop).await;
            Ok(())
        });
    }

    if let Some(listener) = listeners.api {
        println!(
            "Meridian API listening on http://{}",
            display_addr(listener.local_addr()?)
        );
        // The dashboard answers its own pages and hands every other path,
        // `/api/...` included, to the API unchanged.
        let app = meridian_dashboard::with_api(meridian_api::router(state));
        let stop = shutdown.clone();
        tasks.spawn(async move {
            // With the peer's address: failed token lookups are limited
            // per source address.
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
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
        // Aborting is safe for the data: a write cut off here never
        // committed, and PostgreSQL rolls its transaction back when the
        // connection goes; its client got no success answer either.
        tracing::warn!("drain time limit reached; closing what is left");
        tasks.abort_all();
    }
    // Closing waits for connections still checked out by aborted requests;
    // it must not stretch the grace period.
    if tokio::time::timeout(Duration::from_secs(2), store.pool().close())
        .await
        .is_err()
    {
        tracing::warn!("database connections still busy at exit; dropping them");
    }
    tracing::info!("stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Lists every family in `/metrics` from the start, so dashboards and
/// alerts see zeros rather than gaps before the first event.
fn export_metrics(store: &Store) {
    store.export_metrics();
    meridian_xds::metrics::init();
    meridian_failover_loop::init_metrics();
    meridian_telemetry::gauge::<1>(
        "meridian_build_info",
        "Always 1; the version label says which build runs.",
    )
    .get_or_create(&[("version", env!("CARGO_PKG_VERSION").to_owned())])
    .set(1);
}

/// Loads the examples into a fresh private database. A policy that exists
/// already is left alone, so edits survive a restart.
async fn load_examples(store: &Store, dir: &std::path::Path) -> anyhow::Result<()> {
    let docs = files::load(dir)?;
    let write = Write {
        actor: "meridian",
        source: "examples",
        dry_run: false,
        force: false,
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

pub(crate) fn default_replica_id() -> String {
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
