//! `meridian`: runs the control plane, and talks to a running one.
//!
//! Thin on purpose: parse and check the command line, build the services,
//! run them until a signal, drain with a time limit.

mod client;
mod files;
mod security;
mod serve;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    Serve(ServeArgs),
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
    Apply {
        #[arg(short = 'f', long = "filename", value_name = "FILE_OR_DIR")]
        path: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a policy.
    Delete {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// xDS debugging.
    #[command(subcommand)]
    Xds(XdsCommand),
    /// Print policy changes as they commit (or, with --events, failover
    /// events) from the gRPC API; reconnects and resumes where it left off.
    Watch(watch::WatchArgs),
    /// The certificate authority: key generation, forced rotation, bootstrap certificates.
    #[command(subcommand)]
    Ca(security::CaCommand),
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
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://user:pass@host/meridian.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the private PostgreSQL keeps its data when no DATABASE_URL is given.
    #[arg(long, env = "MERIDIAN_DATA_DIR", default_value = ".meridian")]
    pub data_dir: PathBuf,
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Roles this process runs, comma-separated. Default: all.
    #[arg(
        long,
        env = "MERIDIAN_ROLES",
        value_enum,
        value_delimiter = ',',
        default_value = "api,xds,health,failover,grpc"
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
    /// Address of the xDS (ADS and CSDS) gRPC server.
    #[arg(long, env = "MERIDIAN_XDS_ADDR", default_value = "0.0.0.0:18000")]
    pub xds_addr: SocketAddr,
    /// Address of the gRPC automation API.
    #[arg(long, env = "MERIDIAN_GRPC_ADDR", default_value = "0.0.0.0:9090")]
    pub grpc_addr: SocketAddr,
    /// How long a burst of policy changes is gathered into one xDS push, in ms.
    #[arg(long, env = "MERIDIAN_XDS_DEBOUNCE_MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub xds_debounce_ms: u64,
    /// Policies loaded into a private database at start (never overwriting).
    #[arg(long, env = "MERIDIAN_EXAMPLES", default_value = "examples")]
    pub examples: PathBuf,
    /// Largest number of database connections of this process.
    #[arg(long, env = "MERIDIAN_DB_POOL", default_value_t = 32)]
    pub db_pool: u32,
    /// How long to wait for in-flight requests at shutdown, in seconds.
    #[arg(long, env = "MERIDIAN_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
    #[command(flatten)]
    pub security: Box<security::SecurityArgs>,
}

#[derive(Args)]
pub struct ServerArgs {
    /// Base URL of a running Meridian.
    #[arg(long, env = "MERIDIAN_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Migrate(db) => serve::migrate(db).await,
            Command::Get {
                name,
                output,
                server,
            } => client::get(&server.server, name.as_deref(), output).await,
            Command::Apply { path, server } => client::apply(&server.server, &path).await,
            Command::Delete { name, server } => client::delete(&server.server, &name).await,
            Command::Xds(XdsCommand::Render {
                node,
                policy,
                server,
            }) => client::render(&server.server, &node, policy.as_deref()).await,
            Command::Watch(args) => watch::run(args).await,
            Command::Ca(cmd) => security::run(cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
