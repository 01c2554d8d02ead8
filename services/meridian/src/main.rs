//! `meridian`: runs the control plane, and talks to a running one.
//!
//! Thin on purpose: parse and check the command line, build the services,
//! run them until a signal, drain with a time limit.

mod client;
mod config;
mod csds;
mod files;
mod gitops_cli;
mod security;
mod serve;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "Multi-cloud traffic governance control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane. Without DATABASE_URL, starts a private PostgreSQL
    /// under --data-dir and loads the example policies.
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Show one policy, or list all of them.
    Get {
        /// Policy name; all policies when omitted.
        name: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Create or update every policy document in a file or directory (*.yaml, *.yml, *.json).
    /// With --prune, the directory becomes the whole set of API-managed policies in one
    /// atomic plan: those not in it are deleted (GitOps-owned policies are never touched).
    Apply {
        #[arg(short = 'f', long = "filename", value_name = "FILE_OR_DIR")]
        path: PathBuf,
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Check policy files offline (no server): every error with file, line, field path.
    Validate {
        #[arg(short = 'f', long = "filename", value_name = "FILE_OR_DIR")]
        path: PathBuf,
    },
    /// Print the plan `apply -f DIR [--prune]` would carry out, with a diff of each change.
    Diff {
        #[arg(short = 'f', long = "filename", value_name = "FILE_OR_DIR")]
        path: PathBuf,
        /// Also list the API-managed policies the directory no longer has.
        #[arg(long, conflicts_with = "source")]
        prune: bool,
        /// Plan as this GitOps source's sync would if its repository held the
        /// directory (its prune and adopt settings apply): a pull request preview.
        #[arg(long)]
        source: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a policy.
    Delete {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// What-if: the xDS and DNS weights, guard rails and time to shift if
    /// these zones stopped answering now (the leader's own decision; changes nothing).
    Simulate {
        name: String,
        /// Zones to fail, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        fail: Vec<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Progressive delivery: where a policy's rollouts are, and operator
    /// actions on one (queued for the failover leader's next step).
    Rollout {
        #[arg(value_enum)]
        action: RolloutAction,
        /// Policy name.
        name: String,
        /// The route whose rollout to act on; needed for an action when the
        /// policy has several rollouts.
        #[arg(long)]
        route: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// xDS debugging.
    #[command(subcommand)]
    Xds(XdsCommand),
    /// Exit 0 when the server answers `/readyz` with 200: a health check
    /// for images without a shell or curl.
    Ready {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Create, list and revoke API tokens, in the database directly (so the
    /// first admin token can be made before anyone can call the API).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print policy changes as they commit (or, with --events, failover
    /// events) from the gRPC API; reconnects and resumes where it left off.
    Watch(watch::WatchArgs),
    /// The certificate authority: key generation, forced rotation, bootstrap certificates.
    #[command(subcommand)]
    Ca(security::CaCommand),
}

/// What `meridian rollout` does.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum RolloutAction {
    /// Print every rollout of the policy.
    Status,
    Pause,
    Resume,
    Promote,
    Abort,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it: the only time it is shown.
    Create {
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Store a token you made, read from a file (a mounted secret), e.g.
    /// `mrd_$(openssl rand -hex 32)`: the bootstrap step of a deployment.
    /// Idempotent; a new token in the file replaces the old one.
    Import {
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
        /// File holding the token (surrounding whitespace is ignored).
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// List tokens (names and roles; never the tokens).
    List {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Revoke a token for good.
    Revoke {
        name: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

#[derive(Subcommand)]
enum XdsCommand {
    /// Print, as JSON, the Envoy resources a node gets for the stored
    /// policies (rendered by the same pure translation the server runs).
    Render {
        /// Node id, echoed in the output. Resources are the same for every
        /// node; only the egress bind address differs (node metadata
        /// `meridian.egress_address`).
        #[arg(long)]
        node: String,
        /// Only this policy's resources.
        #[arg(long)]
        policy: Option<String>,
        /// Where the printed Envoy bootstrap finds Meridian's xDS (and load
        /// reporting) port, as an IP address and port.
        #[arg(long, default_value = "127.0.0.1:18000")]
        xds_address: std::net::SocketAddr,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Args, Clone)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://user:pass@host/meridian.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// A file holding the PostgreSQL URL (e.g. a mounted Kubernetes secret),
    /// instead of --database-url.
    #[arg(long, env = "MERIDIAN_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// Where the private PostgreSQL keeps its data when no DATABASE_URL is given.
    #[arg(long, env = "MERIDIAN_DATA_DIR", default_value = ".meridian")]
    pub data_dir: PathBuf,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Settings file (YAML or JSON, camelCase keys named after these flags,
    /// e.g. `apiAddr`). Flags and MERIDIAN_* variables override it.
    #[arg(long, env = "MERIDIAN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Log lines as readable text or as one JSON object per line.
    #[arg(long, env = "MERIDIAN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Roles this process runs, comma-separated. Default: all.
    #[arg(
        long,
        env = "MERIDIAN_ROLES",
        value_enum,
        value_delimiter = ',',
        default_value = "api,xds,health,failover,grpc,gitops"
    )]
    pub roles: Vec<serve::Role>,
    /// This replica's name: the health checker and failover lease holder it
    /// appears as. Default: host name and process id.
    #[arg(long, env = "MERIDIAN_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Local address this replica's HTTP and TCP health probes leave from.
    #[arg(long, env = "MERIDIAN_PROBE_SOURCE")]
    pub probe_source: Option<std::net::IpAddr>,
    /// Address of the REST API.
    #[arg(long, env = "MERIDIAN_API_ADDR", default_value = "0.0.0.0:8080")]
    pub api_addr: SocketAddr,
    /// Optional address serving only /metrics, /healthz and /readyz: for
    /// replicas without the api role, or to keep scrapes off the API port.
    #[arg(long, env = "MERIDIAN_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// Serve `/metrics` only on --admin-addr, not on the API address
    /// (where it is open without credentials).
    #[arg(long, env = "MERIDIAN_METRICS_ADMIN_ONLY")]
    pub metrics_admin_only: bool,
    /// Address of the xDS (ADS and CSDS) gRPC server.
    #[arg(long, env = "MERIDIAN_XDS_ADDR", default_value = "0.0.0.0:18000")]
    pub xds_addr: SocketAddr,
    /// Address of the gRPC automation API.
    #[arg(long, env = "MERIDIAN_GRPC_ADDR", default_value = "0.0.0.0:9090")]
    pub grpc_addr: SocketAddr,
    /// Longest a burst of policy changes is gathered into one xDS push, and
    /// shortest time between two pushes of changes, in ms. A lone change is
    /// pushed once the change feed has been quiet for 3 ms.
    #[arg(long, env = "MERIDIAN_XDS_DEBOUNCE_MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub xds_debounce_ms: u64,
    /// Policies loaded into a private database at start (never overwriting).
    #[arg(long, env = "MERIDIAN_EXAMPLES", default_value = "examples")]
    pub examples: PathBuf,
    /// Largest number of database connections of this process.
    #[arg(long, env = "MERIDIAN_DB_POOL", default_value_t = 32)]
    pub db_pool: u32,
    /// Serve the REST and gRPC APIs without authentication: every caller is
    /// an anonymous admin. Refused unless both bind to loopback; for local use.
    #[arg(long, env = "MERIDIAN_NO_AUTH")]
    pub no_auth: bool,
    /// OIDC issuer whose JWTs are accepted (with --oidc-audience and --oidc-jwks-url).
    #[arg(long, env = "MERIDIAN_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Audience the JWTs must be issued for.
    #[arg(long, env = "MERIDIAN_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// Where the issuer publishes its signing keys (JWKS).
    #[arg(long, env = "MERIDIAN_OIDC_JWKS_URL")]
    pub oidc_jwks_url: Option<String>,
    /// JWT claim that holds the caller's role: viewer, operator or admin.
    #[arg(
        long,
        env = "MERIDIAN_OIDC_ROLE_CLAIM",
        default_value = "meridian_role"
    )]
    pub oidc_role_claim: String,
    /// Requests per second each caller (token or OIDC subject) may make, in
    /// bursts of twice that; 0 for no limit.
    #[arg(long, env = "MERIDIAN_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,
    /// Long-lived streams (REST event streams, gRPC watches and event
    /// streams) each caller may hold at once; 0 for no limit.
    #[arg(long, env = "MERIDIAN_MAX_STREAMS_PER_CALLER", default_value_t = 32)]
    pub max_streams_per_caller: u32,
    /// Apply pending migrations at start. With `false`, the replica only
    /// checks that the schema is current and refuses to start otherwise,
    /// for deployments that run `meridian migrate` once per upgrade.
    #[arg(long, env = "MERIDIAN_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
    /// How often the gitops role looks for sources due for a sync, in ms
    /// (a manual sync or webhook waits at most this long).
    #[arg(long, env = "MERIDIAN_GITOPS_POLL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub gitops_poll_ms: u64,
    /// Days failover and operator events are kept.
    #[arg(long, env = "MERIDIAN_RETENTION_EVENTS_DAYS", default_value_t = 30)]
    pub retention_events_days: u32,
    /// Days audit rows are kept: the longest of all (at least the others).
    #[arg(long, env = "MERIDIAN_RETENTION_AUDIT_DAYS", default_value_t = 400)]
    pub retention_audit_days: u32,
    /// Days GitOps sync records are kept (the newest 20 of each source
    /// always stay; no source keeps more than 10,000).
    #[arg(
        long,
        env = "MERIDIAN_RETENTION_GITOPS_SYNCS_DAYS",
        default_value_t = 7
    )]
    pub retention_gitops_syncs_days: u32,
    /// Days an expired workload certificate's row is kept.
    #[arg(
        long,
        env = "MERIDIAN_RETENTION_EXPIRED_CERTS_DAYS",
        default_value_t = 7
    )]
    pub retention_expired_certs_days: u32,
    /// How often old rows are pruned and table sizes measured, in minutes
    /// (one replica at a time prunes).
    #[arg(long, env = "MERIDIAN_PRUNE_MINUTES", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=1440))]
    pub prune_minutes: u64,
    /// How long to wait for in-flight requests at shutdown, in seconds.
    #[arg(long, env = "MERIDIAN_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
    /// OpenTelemetry collector that receives spans over OTLP/gRPC
    /// (`http://host:4317`). Unset: no traces are exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Fraction of new traces exported, 0 to 1. A request that arrives with
    /// a `traceparent` follows its caller's sampling decision instead.
    #[arg(long, env = "MERIDIAN_OTLP_SAMPLE_RATIO", default_value_t = 1.0)]
    pub otlp_sample_ratio: f64,
    /// Which spans are exported: an EnvFilter, like MERIDIAN_LOG for logs.
    #[arg(long, env = "MERIDIAN_OTLP_FILTER", default_value = "info,sqlx=warn")]
    pub otlp_filter: String,
    /// `service.name` of the exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "meridian")]
    pub otlp_service_name: String,
    #[command(flatten)]
    pub security: Box<security::SecurityArgs>,
}

impl ServeArgs {
    /// The retention settings, as the store takes them.
    pub fn retention(&self) -> meridian_store::retention::Retention {
        let days = |d: u32| std::time::Duration::from_secs(u64::from(d) * 86_400);
        meridian_store::retention::Retention {
            events: days(self.retention_events_days),
            audit: days(self.retention_audit_days),
            gitops_syncs: days(self.retention_gitops_syncs_days),
            expired_certs: days(self.retention_expired_certs_days),
        }
    }

    /// Trace export settings, when a collector is configured.
    pub fn otlp(&self) -> Option<meridian_telemetry::traces::OtlpSettings> {
        let endpoint = self.otlp_endpoint.clone()?;
        Some(meridian_telemetry::traces::OtlpSettings {
            endpoint,
            sample_ratio: self.otlp_sample_ratio,
            filter: self.otlp_filter.clone(),
            service_name: self.otlp_service_name.clone(),
            instance: self
                .replica_id
                .clone()
                .unwrap_or_else(serve::default_replica_id),
        })
    }
}

#[derive(Args)]
pub struct ServerArgs {
    /// Base URL of a running Meridian.
    #[arg(long, env = "MERIDIAN_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// Merges the config file into `serve`'s settings and checks them all,
/// before any port is bound or database started.
fn prepare(args: &mut ServeArgs, matches: &clap::ArgMatches) -> Result<(), config::Error> {
    if let Some(path) = args.config.clone() {
        let file = config::File::load(&path)?;
        config::merge(args, file, matches)?;
    }
    config::validate(args)
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The arguments hold what they need; children must not inherit these.
    // Single-threaded still, so changing the environment is sound.
    security::take_secret_env();
    let mut log_format = LogFormat::Text;
    let mut otlp = None;
    match &mut cli.command {
        Command::Serve(args) => {
            let serve = matches.subcommand_matches("serve").expect("serve matches");
            if let Err(e) = prepare(args, serve) {
                eprintln!("error: {e}");
                // 2, like a command-line usage error: nothing was started.
                return ExitCode::from(2);
            }
            log_format = args.log_format;
            otlp = args.otlp();
            // Before any thread starts: every role reads credentials with
            // these rules.
            if let Some(rules) = args.security.secret_rules.clone() {
                meridian_secrets::install(rules);
            }
        }
        Command::Migrate(db) => {
            if let Err(e) = config::resolve_database_url(db) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
        _ => {}
    }
    let filter = std::env::var("MERIDIAN_LOG").unwrap_or_else(|_| "info,sqlx=warn".into());
    let format = match log_format {
        LogFormat::Text => meridian_telemetry::LogFormat::Text,
        LogFormat::Json => meridian_telemetry::LogFormat::Json,
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    // Trace export connects on this runtime, so it is set up inside it.
    let telemetry = {
        let _inside = runtime.enter();
        match meridian_telemetry::init(format, &filter, otlp.as_ref()) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("error: trace export: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Migrate(db) => serve::migrate(db).await,
            Command::Get {
                name,
                output,
                server,
            } => client::get(&server.server, name.as_deref(), output).await,
            Command::Apply {
                path,
                prune: false,
                server,
            } => client::apply(&server.server, &path).await,
            Command::Apply {
                path,
                prune: true,
                server,
            } => gitops_cli::apply(&server.server, &path).await,
            Command::Validate { path } => gitops_cli::validate(&path),
            Command::Diff {
                path,
                prune,
                source,
                server,
            } => gitops_cli::diff(&server.server, &path, prune, source.as_deref()).await,
            Command::Delete { name, server } => client::delete(&server.server, &name).await,
            Command::Rollout {
                action,
                name,
                route,
                server,
            } => client::rollout(&server.server, &name, route.as_deref(), action).await,
            Command::Simulate {
                name,
                fail,
                output,
                server,
            } => client::simulate(&server.server, &name, &fail, output).await,
            Command::Xds(XdsCommand::Render {
                node,
                policy,
                xds_address,
                server,
            }) => client::render(&server.server, &node, policy.as_deref(), xds_address).await,
            Command::Watch(args) => watch::run(args).await,
            Command::Token(command) => serve::token(command).await,
            Command::Ready { server } => client::ready(&server.server).await,
            Command::Ca(cmd) => security::run(cmd).await,
        }
    });
    // Spans of the last moments (the shutdown itself) are still batched.
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
