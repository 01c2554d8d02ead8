//! `meridian serve` settings: flags, environment and an optional file,
//! merged and checked before anything binds a port or starts a database.
//!
//! Precedence, highest first: a flag, its `MERIDIAN_*` variable, the
//! `--config` file, the built-in default. Every error names the setting
//! the way the operator wrote it (file key, flag and variable).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, ValueEnum};
use serde::Deserialize;

use crate::serve::Role;
use crate::{DatabaseArgs, LogFormat, ServeArgs};

/// A setting that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for the settings (unknown key, wrong type).
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is out of range or inconsistent with another.
    #[error("invalid setting {name} (--{flag}, {env}): {message}")]
    Invalid {
        name: &'static str,
        flag: &'static str,
        env: &'static str,
        message: String,
    },
}

/// The `--config` file: YAML (or JSON), camelCase keys named after the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct File {
    pub roles: Option<Vec<String>>,
    pub replica_id: Option<String>,
    pub probe_source: Option<IpAddr>,
    pub api_addr: Option<SocketAddr>,
    pub xds_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub xds_debounce_ms: Option<u64>,
    pub examples: Option<PathBuf>,
    pub db_pool: Option<u32>,
    pub drain_seconds: Option<u64>,
    pub data_dir: Option<PathBuf>,
    /// A file holding the database URL (a mounted secret). The URL itself
    /// is not accepted in the file, so it never sits in a config map.
    pub database_url_file: Option<PathBuf>,
    pub log_format: Option<String>,
    pub migrate: Option<bool>,
    pub grpc_addr: Option<SocketAddr>,
    pub no_auth: Option<bool>,
    pub oidc_issuer: Option<String>,
    pub oidc_audience: Option<String>,
    pub oidc_jwks_url: Option<String>,
    pub oidc_role_claim: Option<String>,
    pub rate_limit: Option<u32>,
    pub max_streams_per_caller: Option<u32>,
    pub retention_events_days: Option<u32>,
    pub retention_audit_days: Option<u32>,
    pub retention_gitops_syncs_days: Option<u32>,
    pub retention_expired_certs_days: Option<u32>,
    pub prune_minutes: Option<u64>,
    pub gitops_poll_ms: Option<u64>,
    pub metrics_admin_only: Option<bool>,
    pub otlp_endpoint: Option<String>,
    pub otlp_sample_ratio: Option<f64>,
    pub otlp_filter: Option<String>,
    pub otlp_service_name: Option<String>,
    /// `--secrets-dir`, as a list.
    pub secrets_dirs: Option<Vec<PathBuf>>,
    pub secret_env_prefix: Option<String>,
    pub trust_domain: Option<String>,
    pub ca_key_file: Option<PathBuf>,
    pub ca_cert_file: Option<PathBuf>,
    pub ca_private_key_file: Option<PathBuf>,
    pub ca_chain_file: Option<PathBuf>,
    pub ca_bundle_file: Option<PathBuf>,
    pub workload_cert_seconds: Option<u32>,
    pub xds_tls: Option<bool>,
    /// `required`, `optional` or `none`.
    pub xds_client_auth: Option<String>,
    pub xds_trust_claimed_identities: Option<bool>,
    pub xds_server_names: Option<Vec<String>>,
}

impl File {
    pub fn load(path: &Path) -> Result<File, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        parse(&text).map_err(|message| Error::Parse {
            path: path.to_owned(),
            message,
        })
    }
}

fn parse(text: &str) -> Result<File, String> {
    if text.trim().is_empty() {
        return Ok(File::default());
    }
    serde_norway::from_str(text).map_err(|e| e.to_string())
}

/// Fills every setting the operator did not give by flag or environment
/// from `file`; `matches` are the `serve` subcommand's.
pub fn merge(args: &mut ServeArgs, file: File, matches: &ArgMatches) -> Result<(), Error> {
    let unset = |id: &str| {
        !matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    macro_rules! take {
        ($field:ident) => {
            if let Some(v) = file.$field {
                if unset(stringify!($field)) {
                    args.$field = v;
                }
            }
        };
        ($field:ident, optional) => {
            if let Some(v) = file.$field {
                if unset(stringify!($field)) {
                    args.$field = Some(v);
                }
            }
        };
    }
    take!(api_addr);
    take!(xds_addr);
    take!(xds_debounce_ms);
    take!(examples);
    take!(db_pool);
    take!(drain_seconds);
    take!(migrate);
    take!(replica_id, optional);
    take!(probe_source, optional);
    take!(admin_addr, optional);
    take!(grpc_addr);
    take!(no_auth);
    take!(oidc_issuer, optional);
    take!(oidc_audience, optional);
    take!(oidc_jwks_url, optional);
    take!(oidc_role_claim);
    take!(rate_limit);
    take!(max_streams_per_caller);
    take!(retention_events_days);
    take!(retention_audit_days);
    take!(retention_gitops_syncs_days);
    take!(retention_expired_certs_days);
    take!(prune_minutes);
    take!(gitops_poll_ms);
    take!(metrics_admin_only);
    take!(otlp_endpoint, optional);
    take!(otlp_sample_ratio);
    take!(otlp_filter);
    take!(otlp_service_name);
    // The security settings live in their own flattened group.
    macro_rules! take_security {
        ($field:ident) => {
            if let Some(v) = file.$field {
                if unset(stringify!($field)) {
                    args.security.$field = v;
                }
            }
        };
        ($field:ident, optional) => {
            if let Some(v) = file.$field {
                if unset(stringify!($field)) {
                    args.security.$field = Some(v);
                }
            }
        };
    }
    take_security!(trust_domain);
    take_security!(ca_key_file, optional);
    take_security!(ca_cert_file, optional);
    take_security!(ca_private_key_file, optional);
    take_security!(ca_chain_file, optional);
    take_security!(ca_bundle_file, optional);
    take_security!(workload_cert_seconds);
    take_security!(xds_tls);
    take_security!(xds_trust_claimed_identities);
    take_security!(xds_server_names);
    if let Some(mode) = file.xds_client_auth {
        if unset("xds_client_auth") {
            args.security.xds_client_auth = Some(mode.parse().map_err(|_| {
                invalid(
                    XDS_CLIENT_AUTH,
                    format!("{mode:?} is not required, optional or none"),
                )
            })?);
        }
    }
    if let Some(dirs) = file.secrets_dirs {
        if unset("secrets_dirs") {
            args.security.secrets_dirs = dirs;
        }
    }
    if let Some(prefix) = file.secret_env_prefix {
        if unset("secret_env_prefix") {
            args.security.secret_env_prefix = prefix;
        }
    }
    if let Some(dir) = file.data_dir {
        if unset("data_dir") {
            args.db.data_dir = dir;
        }
    }
    if let Some(path) = file.database_url_file {
        if unset("database_url_file") {
            args.db.database_url_file = Some(path);
        }
    }
    if let Some(roles) = file.roles {
        if unset("roles") {
            args.roles = roles
                .iter()
                .map(|r| Role::from_str(r.trim(), true))
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    invalid(
                        ROLES,
                        format!(
                            "unknown role in {roles:?}; roles are api, xds, health, failover, grpc"
                        ),
                    )
                })?;
        }
    }
    if let Some(format) = file.log_format {
        if unset("log_format") {
            args.log_format = LogFormat::from_str(&format, true)
                .map_err(|_| invalid(LOG_FORMAT, format!("{format:?} is not text or json")))?;
        }
    }
    Ok(())
}

/// How a setting is spelt in each source.
struct Name {
    key: &'static str,
    flag: &'static str,
    env: &'static str,
}

const ROLES: Name = Name {
    key: "roles",
    flag: "roles",
    env: "MERIDIAN_ROLES",
};
const LOG_FORMAT: Name = Name {
    key: "logFormat",
    flag: "log-format",
    env: "MERIDIAN_LOG_FORMAT",
};
const DB_POOL: Name = Name {
    key: "dbPool",
    flag: "db-pool",
    env: "MERIDIAN_DB_POOL",
};
const DRAIN: Name = Name {
    key: "drainSeconds",
    flag: "drain-seconds",
    env: "MERIDIAN_DRAIN_SECONDS",
};
const DEBOUNCE: Name = Name {
    key: "xdsDebounceMs",
    flag: "xds-debounce-ms",
    env: "MERIDIAN_XDS_DEBOUNCE_MS",
};
const XDS_ADDR: Name = Name {
    key: "xdsAddr",
    flag: "xds-addr",
    env: "MERIDIAN_XDS_ADDR",
};
const ADMIN_ADDR: Name = Name {
    key: "adminAddr",
    flag: "admin-addr",
    env: "MERIDIAN_ADMIN_ADDR",
};
const REPLICA: Name = Name {
    key: "replicaId",
    flag: "replica-id",
    env: "MERIDIAN_REPLICA_ID",
};
const DB_URL: Name = Name {
    key: "databaseUrl",
    flag: "database-url",
    env: "DATABASE_URL",
};
const DB_URL_FILE: Name = Name {
    key: "databaseUrlFile",
    flag: "database-url-file",
    env: "MERIDIAN_DATABASE_URL_FILE",
};

const NO_AUTH: Name = Name {
    key: "noAuth",
    flag: "no-auth",
    env: "MERIDIAN_NO_AUTH",
};
const OIDC: Name = Name {
    key: "oidcIssuer",
    flag: "oidc-issuer",
    env: "MERIDIAN_OIDC_ISSUER",
};

const XDS_CLIENT_AUTH: Name = Name {
    key: "xdsClientAuth",
    flag: "xds-client-auth",
    env: "MERIDIAN_XDS_CLIENT_AUTH",
};
const XDS_TRUST_CLAIMS: Name = Name {
    key: "xdsTrustClaimedIdentities",
    flag: "xds-trust-claimed-identities",
    env: "MERIDIAN_XDS_TRUST_CLAIMED_IDENTITIES",
};
const CA_CERT: Name = Name {
    key: "caCertFile",
    flag: "ca-cert-file",
    env: "MERIDIAN_CA_CERT_FILE",
};
const WORKLOAD_CERT: Name = Name {
    key: "workloadCertSeconds",
    flag: "workload-cert-seconds",
    env: "MERIDIAN_WORKLOAD_CERT_SECONDS",
};

const SECRETS: Name = Name {
    key: "secretsDirs",
    flag: "secrets-dir",
    env: "MERIDIAN_SECRETS_DIRS",
};

const RETENTION: Name = Name {
    key: "retentionAuditDays",
    flag: "retention-audit-days",
    env: "MERIDIAN_RETENTION_AUDIT_DAYS",
};

const OTLP_ENDPOINT: Name = Name {
    key: "otlpEndpoint",
    flag: "otlp-endpoint",
    env: "OTEL_EXPORTER_OTLP_ENDPOINT",
};
const OTLP_RATIO: Name = Name {
    key: "otlpSampleRatio",
    flag: "otlp-sample-ratio",
    env: "MERIDIAN_OTLP_SAMPLE_RATIO",
};
const OTLP_FILTER: Name = Name {
    key: "otlpFilter",
    flag: "otlp-filter",
    env: "MERIDIAN_OTLP_FILTER",
};

fn invalid(name: Name, message: String) -> Error {
    Error::Invalid {
        name: name.key,
        flag: name.flag,
        env: name.env,
        message,
    }
}

/// Largest drain: a replica that takes longer to stop is stuck, and an
/// orchestrator kills it anyway (Kubernetes after its grace period).
pub const MAX_DRAIN_SECONDS: u64 = 600;

/// Checks the merged settings; reads `--database-url-file` into the URL.
/// Binds nothing and connects to nothing.
pub fn validate(args: &mut ServeArgs) -> Result<(), Error> {
    if args.roles.is_empty() {
        return Err(invalid(ROLES, "at least one role is needed".into()));
    }
    if !(1..=1000).contains(&args.db_pool) {
        return Err(invalid(
            DB_POOL,
            format!("must be between 1 and 1000, got {}", args.db_pool),
        ));
    }
    if args.drain_seconds > MAX_DRAIN_SECONDS {
        return Err(invalid(
            DRAIN,
            format!(
                "must be at most {MAX_DRAIN_SECONDS}, got {}",
                args.drain_seconds
            ),
        ));
    }
    if args.xds_debounce_ms > 10_000 {
        return Err(invalid(
            DEBOUNCE,
            format!("must be at most 10000, got {}", args.xds_debounce_ms),
        ));
    }
    let both = args.roles.contains(&Role::Api) && args.roles.contains(&Role::Xds);
    if both && args.api_addr.port() != 0 && args.api_addr == args.xds_addr {
        return Err(invalid(
            XDS_ADDR,
            format!("{} is also the API address", args.xds_addr),
        ));
    }
    if args.metrics_admin_only && args.admin_addr.is_none() {
        return Err(invalid(
            ADMIN_ADDR,
            "--metrics-admin-only needs an admin address to serve /metrics on".into(),
        ));
    }
    if let Some(admin) = args.admin_addr {
        let taken = [
            (Role::Api, args.api_addr, "API"),
            (Role::Xds, args.xds_addr, "xDS"),
        ]
        .into_iter()
        .find(|(role, addr, _)| args.roles.contains(role) && addr.port() != 0 && *addr == admin);
        if let Some((_, _, what)) = taken {
            return Err(invalid(
                ADMIN_ADDR,
                format!("{admin} is also the {what} address"),
            ));
        }
    }
    if args.no_auth {
        // Anyone who can reach an unauthenticated API can change traffic.
        let exposed: Vec<String> = [
            (Role::Api, args.api_addr, "--api-addr"),
            (Role::Grpc, args.grpc_addr, "--grpc-addr"),
        ]
        .into_iter()
        .filter(|(role, addr, _)| args.roles.contains(role) && !addr.ip().is_loopback())
        .map(|(_, addr, flag)| format!("{flag} {addr}"))
        .collect();
        if !exposed.is_empty() {
            return Err(invalid(
                NO_AUTH,
                format!(
                    "only for local use on loopback addresses, but {} can be reached from other \
                     machines; bind to 127.0.0.1, or drop --no-auth and create a token with \
                     `meridian token create`",
                    exposed.join(" and ")
                ),
            ));
        }
    }
    if args.oidc_issuer.is_some() && (args.oidc_audience.is_none() || args.oidc_jwks_url.is_none())
    {
        return Err(invalid(
            OIDC,
            "needs --oidc-audience and --oidc-jwks-url as well".into(),
        ));
    }
    if let Some(id) = &args.replica_id {
        if id.trim().is_empty() || id.len() > 200 {
            return Err(invalid(REPLICA, "must be 1 to 200 characters".into()));
        }
    }
    // An empty OTEL_EXPORTER_OTLP_ENDPOINT (a template left blank) means
    // "no export", as the OpenTelemetry SDKs read it.
    if args
        .otlp_endpoint
        .as_deref()
        .is_some_and(|e| e.trim().is_empty())
    {
        args.otlp_endpoint = None;
    }
    if let Some(settings) = args.otlp() {
        use meridian_telemetry::traces::{check, Error as Trace};
        check(&settings).map_err(|e| match e {
            Trace::SampleRatio(_) => invalid(OTLP_RATIO, e.to_string()),
            Trace::Filter(_) => invalid(OTLP_FILTER, e.to_string()),
            Trace::Endpoint(_) | Trace::Exporter(_) => invalid(OTLP_ENDPOINT, e.to_string()),
        })?;
    }
    args.retention()
        .check()
        .map_err(|m| invalid(RETENTION, m))?;
    // What clap's `requires` says for flags, for values from the file too.
    let sec = &args.security;
    if sec.ca_cert_file.is_some() != sec.ca_private_key_file.is_some()
        || (sec.ca_cert_file.is_none()
            && (sec.ca_chain_file.is_some() || sec.ca_bundle_file.is_some()))
    {
        return Err(invalid(
            CA_CERT,
            "caCertFile and caPrivateKeyFile go together, and caChainFile and caBundleFile \
             need them"
                .into(),
        ));
    }
    if !(60..=31_536_000).contains(&sec.workload_cert_seconds) {
        return Err(invalid(
            WORKLOAD_CERT,
            format!("must be 60 to 31536000, got {}", sec.workload_cert_seconds),
        ));
    }
    settle_xds_client_auth(args)?;
    resolve_database_url(&mut args.db)?;
    let rules = args
        .security
        .secret_rules(args.db.database_url_file.as_deref())
        .map_err(|m| invalid(SECRETS, m))?;
    args.security.secret_rules = Some(rules);
    Ok(())
}

/// Settles `--xds-client-auth` and checks `--xds-trust-claimed-identities`.
///
/// A node's identity picks its namespace view and the workload key it gets,
/// so where other machines can reach the xDS port and the CA is on, the
/// identity must come from a client certificate: `required` by default,
/// `none` refused. Believing claimed identities is allowed on loopback only,
/// as `--no-auth` is.
fn settle_xds_client_auth(args: &mut ServeArgs) -> Result<(), Error> {
    use meridian_xds::ClientAuth;
    let serves_xds = args.roles.contains(&Role::Xds);
    let exposed = serves_xds && !args.xds_addr.ip().is_loopback();
    let ca = args.security.ca_configured();
    let auth = match args.security.xds_client_auth {
        None if ca && exposed => ClientAuth::Required,
        None => ClientAuth::None,
        Some(ClientAuth::None) if ca && exposed => {
            return Err(invalid(
                XDS_CLIENT_AUTH,
                format!(
                    "`none` is refused with the CA on (--ca-key-file or MERIDIAN_CA_KEY) while xDS \
                     at {} can be reached from other machines: nodes would get no verified \
                     identity. Use `required` (the default there) or `optional`, and give \
                     nodes certificates with `meridian ca issue`; or bind --xds-addr to 127.0.0.1",
                    args.xds_addr
                ),
            ))
        }
        Some(auth) => auth,
    };
    args.security.xds_client_auth = Some(auth);
    if args.security.xds_trust_claimed_identities && serves_xds {
        if exposed {
            return Err(invalid(
                XDS_TRUST_CLAIMS,
                format!(
                    "only for local use on loopback addresses, but xDS at {} can be reached \
                     from other machines, and any of them could claim any identity and get its \
                     workload key; bind --xds-addr to 127.0.0.1, or drop this flag and give nodes \
                     client certificates (`meridian ca issue`, --xds-client-auth required)",
                    args.xds_addr
                ),
            ));
        }
        if auth != ClientAuth::None {
            return Err(invalid(
                XDS_TRUST_CLAIMS,
                "applies only with --xds-client-auth none: under client authentication \
                 the certificate is the identity"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// Reads `--database-url-file` into the URL, and checks the URL's shape.
///
/// Idempotent (the file, once read, becomes the URL), so the early check of
/// `serve` and the one in `Database::open`, which every command that touches
/// the database goes through, agree.
pub fn resolve_database_url(db: &mut DatabaseArgs) -> Result<(), Error> {
    // An empty DATABASE_URL (a template left blank) means "not given".
    if db
        .database_url
        .as_deref()
        .is_some_and(|u| u.trim().is_empty())
    {
        db.database_url = None;
    }
    if let Some(path) = db.database_url_file.take() {
        if db.database_url.is_some() {
            return Err(invalid(
                DB_URL_FILE,
                "give the database URL or a file holding it, not both".into(),
            ));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| invalid(DB_URL_FILE, format!("cannot read {}: {e}", path.display())))?;
        let url = text.trim();
        if url.is_empty() {
            return Err(invalid(DB_URL_FILE, format!("{} is empty", path.display())));
        }
        check_url_shape(url, DB_URL_FILE)?;
        db.database_url = Some(url.to_owned());
    }
    if let Some(url) = &db.database_url {
        check_url_shape(url, DB_URL)?;
    }
    Ok(())
}

fn check_url_shape(url: &str, name: Name) -> Result<(), Error> {
    // The value is a secret: say what is wrong without echoing it.
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(())
    } else {
        Err(invalid(
            name,
            "must be a postgres:// or postgresql:// URL".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_errors_name_the_key() {
        let unknown = parse("apiAdr: 127.0.0.1:1\n").unwrap_err();
        assert!(unknown.contains("apiAdr"), "{unknown}");
        let bad = parse("xdsAddr: nowhere\n").unwrap_err();
        assert!(bad.contains("xdsAddr"), "{bad}");
        let ok = parse("dbPool: 4\nroles: [api]\n").unwrap();
        assert_eq!(ok.db_pool, Some(4));
        assert!(parse("").unwrap().api_addr.is_none());
    }

    #[test]
    fn database_url_file_resolves_once_and_again() {
        let path = std::env::temp_dir().join(format!("meridian-db-url-{}", std::process::id()));
        std::fs::write(&path, "postgres://u@127.0.0.1/m\n").unwrap();
        let mut db = DatabaseArgs {
            database_url: None,
            database_url_file: Some(path.clone()),
            data_dir: ".meridian".into(),
        };
        resolve_database_url(&mut db).unwrap();
        // `serve` checks early and `Database::open` resolves again.
        resolve_database_url(&mut db).unwrap();
        assert_eq!(db.database_url.as_deref(), Some("postgres://u@127.0.0.1/m"));
        std::fs::write(&path, "mysql://x").unwrap();
        let mut bad = DatabaseArgs {
            database_url: None,
            database_url_file: Some(path.clone()),
            data_dir: ".meridian".into(),
        };
        let e = resolve_database_url(&mut bad).unwrap_err().to_string();
        assert!(
            e.contains("database-url-file") || e.contains("databaseUrlFile"),
            "{e}"
        );
        assert!(!e.contains("mysql"), "the URL is a secret: {e}");
        let _ = std::fs::remove_file(path);
    }

    /// Every `serve` flag can be set in the file too, under its camelCase
    /// name: the file's own error for an unknown key lists the keys it has.
    #[test]
    fn every_serve_flag_has_a_file_key() {
        use clap::CommandFactory;
        let known = parse("zzzNoSuchKey: 1\n").unwrap_err();
        let cli = crate::Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        // By design: the file itself, and the database URL (a secret, which
        // a config map must not hold; `databaseUrlFile` is the file's way).
        let not_in_file = ["config", "database-url", "help"];
        let renamed = [("secrets-dir", "secretsDirs")];
        let mut missing = Vec::new();
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if not_in_file.contains(&long) {
                continue;
            }
            let key = renamed
                .iter()
                .find(|(flag, _)| *flag == long)
                .map(|(_, key)| (*key).to_owned())
                .unwrap_or_else(|| {
                    let mut parts = long.split('-');
                    let mut key = parts.next().unwrap().to_owned();
                    for p in parts {
                        key.push_str(&p[..1].to_uppercase());
                        key.push_str(&p[1..]);
                    }
                    key
                });
            if !known.contains(&format!("`{key}`")) {
                missing.push(format!("--{long} ({key})"));
            }
        }
        assert!(missing.is_empty(), "flags without a file key: {missing:?}");
    }

    #[test]
    fn security_settings_from_the_file() {
        let f = parse(
            "xdsClientAuth: required\ncaKeyFile: /k\nworkloadCertSeconds: 3600\nsecretsDirs: [/run/secrets]\n",
        )
        .unwrap();
        assert_eq!(f.xds_client_auth.as_deref(), Some("required"));
        assert_eq!(f.workload_cert_seconds, Some(3600));
        assert_eq!(f.secrets_dirs, Some(vec![PathBuf::from("/run/secrets")]));
    }

    fn serve_args(extra: &[&str]) -> ServeArgs {
        use clap::Parser;
        let argv = ["meridian", "serve"].iter().chain(extra);
        match crate::Cli::try_parse_from(argv).unwrap().command {
            crate::Command::Serve(args) => *args,
            _ => unreachable!("a serve command"),
        }
    }

    /// Where other machines reach xDS and the CA is on, identities come
    /// from client certificates: `required` by default, `none` refused;
    /// trusting claimed identities is for loopback and `none` only.
    #[test]
    fn xds_client_auth_is_secure_by_default() {
        use meridian_xds::ClientAuth::{None as Plain, Optional, Required};
        const CA: &[&str] = &["--ca-key-file", "/k"];
        const EXPOSED: &[&str] = &["--xds-addr", "0.0.0.0:18000"];
        const LOCAL: &[&str] = &["--xds-addr", "127.0.0.1:18000"];
        const TRUST: &[&str] = &["--xds-trust-claimed-identities"];
        // (arguments, the client auth settled on, or the flag an error names)
        type Case<'a> = (
            &'a [&'a [&'a str]],
            Result<meridian_xds::ClientAuth, &'a str>,
        );
        let cases: &[Case<'_>] = &[
            (&[CA, EXPOSED], Ok(Required)),
            (&[CA, LOCAL], Ok(Plain)),
            (&[EXPOSED], Ok(Plain)),
            (
                &[CA, EXPOSED, &["--xds-client-auth", "optional"]],
                Ok(Optional),
            ),
            (
                &[CA, EXPOSED, &["--xds-client-auth", "none"]],
                Err("--xds-client-auth"),
            ),
            // Without the xds role nothing listens.
            (
                &[
                    CA,
                    EXPOSED,
                    &["--xds-client-auth", "none", "--roles", "api"],
                ],
                Ok(Plain),
            ),
            (&[CA, LOCAL, TRUST], Ok(Plain)),
            (&[LOCAL, TRUST], Ok(Plain)),
            (&[EXPOSED, TRUST], Err("--xds-trust-claimed-identities")),
            (&[CA, EXPOSED, TRUST], Err("--xds-trust-claimed-identities")),
            (
                &[CA, LOCAL, TRUST, &["--xds-client-auth", "required"]],
                Err("--xds-trust-claimed-identities"),
            ),
        ];
        for (parts, want) in cases {
            let argv: Vec<&str> = parts.iter().flat_map(|p| p.iter().copied()).collect();
            let mut args = serve_args(&argv);
            let got = settle_xds_client_auth(&mut args);
            match want {
                Ok(auth) => {
                    assert!(got.is_ok(), "{argv:?}: {got:?}");
                    assert_eq!(args.security.client_auth(), *auth, "{argv:?}");
                }
                Err(flag) => {
                    let e = got.expect_err(&format!("{argv:?} is refused")).to_string();
                    assert!(e.contains(flag), "{argv:?}: {e}");
                }
            }
        }
    }

    /// The files shipped in deploy/ are valid settings files, and what
    /// they ask for passes the same checks as flags would.
    #[test]
    fn shipped_config_files_parse() {
        let demo = parse(include_str!("../../../deploy/demo/meridian.yaml")).unwrap();
        assert_eq!(demo.migrate, Some(false));
        assert!(demo.database_url_file.is_some());
        let configmap: serde_json::Value =
            serde_norway::from_str(include_str!("../../../deploy/kubernetes/configmap.yaml"))
                .unwrap();
        let text = configmap["data"]["meridian.yaml"].as_str().unwrap();
        let k8s = parse(text).unwrap();
        assert!(k8s.drain_seconds.unwrap() <= MAX_DRAIN_SECONDS);
        assert_eq!(k8s.log_format.as_deref(), Some("json"));
    }
}
