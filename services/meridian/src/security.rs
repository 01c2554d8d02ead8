//! Workload mTLS and xDS authentication: flags, CA start-up, and the
//! `meridian ca` commands.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use meridian_ca::{MasterKey, SpiffeId};
use meridian_store::Store;
use meridian_xds::tls_server::ServerCert;
use meridian_xds::ClientAuth;

/// Identity of the xDS server's own certificate.
const XDS_SERVER_NAMESPACE: &str = "meridian-system";
const XDS_SERVER_ACCOUNT: &str = "meridian-xds";

#[derive(Args, Clone, Debug)]
pub struct SecurityArgs {
    /// SPIFFE trust domain of workload identities.
    #[arg(long, env = "MERIDIAN_TRUST_DOMAIN", default_value = meridian_xds::translate::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// File holding the 32-byte key that seals the CA key in PostgreSQL
    /// (raw, hex or base64; `meridian ca keygen` makes one). Enables the CA.
    #[arg(long, env = "MERIDIAN_CA_KEY_FILE")]
    pub ca_key_file: Option<PathBuf>,
    /// An operator's CA certificate (PEM), e.g. an intermediate; with
    /// --ca-private-key-file. Without it Meridian generates a root.
    #[arg(long, env = "MERIDIAN_CA_CERT_FILE", requires = "ca_private_key_file")]
    pub ca_cert_file: Option<PathBuf>,
    /// The private key (PKCS#8 PEM) of --ca-cert-file.
    #[arg(long, env = "MERIDIAN_CA_PRIVATE_KEY_FILE", requires = "ca_cert_file")]
    pub ca_private_key_file: Option<PathBuf>,
    /// Certificates between --ca-cert-file and the root (PEM), sent with every workload certificate.
    #[arg(long, env = "MERIDIAN_CA_CHAIN_FILE", requires = "ca_cert_file")]
    pub ca_chain_file: Option<PathBuf>,
    /// The root(s) peers trust (PEM); default: --ca-cert-file itself.
    #[arg(long, env = "MERIDIAN_CA_BUNDLE_FILE", requires = "ca_cert_file")]
    pub ca_bundle_file: Option<PathBuf>,
    /// Lifetime of workload certificates, in seconds (renewed at half life).
    #[arg(long, env = "MERIDIAN_WORKLOAD_CERT_SECONDS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u32).range(60..=31_536_000))]
    pub workload_cert_seconds: u32,
    /// Serve xDS over TLS (with a certificate from the CA). Implied by
    /// --xds-client-auth required|optional.
    #[arg(long, env = "MERIDIAN_XDS_TLS")]
    pub xds_tls: bool,
    /// Client certificates on the xDS port: `required` refuses clients
    /// without one at the handshake; `optional` checks one when sent;
    /// `none` asks for none (nodes then have no identity). Default:
    /// `required` when the CA is on and --xds-addr is not loopback (where
    /// `none` is refused), `none` otherwise.
    #[arg(long, env = "MERIDIAN_XDS_CLIENT_AUTH")]
    pub xds_client_auth: Option<ClientAuth>,
    /// INSECURE, for loopback and tests: believe the SPIFFE ID a node
    /// claims (metadata `meridian.spiffe_id`) without a client certificate,
    /// and give it that identity's namespace view and workload key. Refused
    /// unless --xds-addr is loopback and --xds-client-auth is `none`.
    #[arg(long, env = "MERIDIAN_XDS_TRUST_CLAIMED_IDENTITIES")]
    pub xds_trust_claimed_identities: bool,
    /// DNS names and IP addresses in the xDS server's certificate.
    #[arg(
        long,
        env = "MERIDIAN_XDS_SERVER_NAMES",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    pub xds_server_names: Vec<String>,
    /// Directories whose files a credential reference (`{"file": PATH}` in
    /// DNS providers and GitOps sources) may name; repeatable, or
    /// comma-separated in the variable. An empty value allows no files.
    #[arg(
        long = "secrets-dir",
        env = "MERIDIAN_SECRETS_DIRS",
        value_delimiter = ',',
        default_value = meridian_secrets::DEFAULT_DIR
    )]
    pub secrets_dirs: Vec<PathBuf>,
    /// Environment variables a credential reference (`{"env": NAME}`) may
    /// name must start with this.
    #[arg(long, env = "MERIDIAN_SECRETS_ENV_PREFIX", default_value = meridian_secrets::DEFAULT_ENV_PREFIX)]
    pub secret_env_prefix: String,
    /// Built from the two above by the settings check.
    #[arg(skip)]
    pub secret_rules: Option<meridian_secrets::Rules>,
}

impl SecurityArgs {
    /// How the xDS port treats client certificates, once the settings
    /// check has settled the default ([`crate::config::validate`]).
    pub fn client_auth(&self) -> ClientAuth {
        self.xds_client_auth.unwrap_or_default()
    }

    /// Whether nodes' claimed identities count.
    pub fn claims(&self) -> meridian_xds::Claims {
        if self.xds_trust_claimed_identities {
            meridian_xds::Claims::Trusted
        } else {
            meridian_xds::Claims::Ignored
        }
    }

    /// Whether a master key is given, so this replica runs the CA.
    pub fn ca_configured(&self) -> bool {
        self.ca_key_file.is_some() || ca_key_from_env().is_some()
    }

    /// The rules of credential references: the prefix and directories
    /// given, and never the files Meridian keeps its own keys in.
    pub fn secret_rules(
        &self,
        database_url_file: Option<&Path>,
    ) -> Result<meridian_secrets::Rules, String> {
        let dirs = self
            .secrets_dirs
            .iter()
            .filter(|d| !d.as_os_str().is_empty())
            .cloned()
            .collect();
        let own = [
            database_url_file,
            self.ca_key_file.as_deref(),
            self.ca_private_key_file.as_deref(),
        ];
        Ok(meridian_secrets::Rules::new(&self.secret_env_prefix, dirs)?
            .deny(own.into_iter().flatten().map(Path::to_owned)))
    }
}

/// Variables holding secrets of Meridian itself: read once at start, then
/// removed from the environment, so the programs Meridian starts (ssh for
/// GitOps, PostgreSQL's tools) never inherit them.
const OWN_SECRET_VARS: [&str; 2] = ["MERIDIAN_CA_KEY", "DATABASE_URL"];

static CA_KEY_FROM_ENV: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Takes MERIDIAN_CA_KEY (kept for [`master_key`]) and DATABASE_URL
/// (already in the parsed arguments) out of the environment. Call before
/// any thread starts: changing the environment is only sound then.
pub fn take_secret_env() {
    let key = std::env::var("MERIDIAN_CA_KEY").ok();
    let _ = CA_KEY_FROM_ENV.set(key);
    for var in OWN_SECRET_VARS {
        std::env::remove_var(var);
    }
}

fn ca_key_from_env() -> Option<&'static str> {
    CA_KEY_FROM_ENV
        .get_or_init(|| std::env::var("MERIDIAN_CA_KEY").ok())
        .as_deref()
}

/// Reads the master key from MERIDIAN_CA_KEY (the key itself) or the file.
pub fn master_key(args: &SecurityArgs) -> anyhow::Result<Option<MasterKey>> {
    if let Some(v) = ca_key_from_env() {
        return Ok(Some(
            MasterKey::parse(v.as_bytes()).context("MERIDIAN_CA_KEY")?,
        ));
    }
    match &args.ca_key_file {
        None => Ok(None),
        Some(path) => {
            check_private(path).with_context(|| format!("--ca-key-file {}", path.display()))?;
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading --ca-key-file {}", path.display()))?;
            Ok(Some(MasterKey::parse(&bytes).with_context(|| {
                format!("--ca-key-file {}", path.display())
            })?))
        }
    }
}

/// A key file must be readable by its owner alone: whoever else can read
/// the master key can unseal the CA key from a database dump.
fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "is readable or writable by group or others (mode {:o}); `chmod 600 {}` first",
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// Checks the flags before anything binds.
pub fn validate(args: &SecurityArgs) -> anyhow::Result<()> {
    meridian_ca::validate_trust_domain(&args.trust_domain).context("--trust-domain")?;
    let tls = args.xds_tls || args.client_auth() != ClientAuth::None;
    if tls && !args.ca_configured() {
        bail!("xDS over TLS (--xds-tls or --xds-client-auth) needs the CA: give --ca-key-file");
    }
    Ok(())
}

/// The CA of this replica, when one is configured.
pub async fn start_ca(
    args: &SecurityArgs,
    store: &Store,
) -> anyhow::Result<Option<(meridian_xds_sync::Issuer, meridian_ca::Authority)>> {
    let Some(key) = master_key(args)? else {
        tracing::warn!(
            "no --ca-key-file: no certificate authority; mTLS policies get no certificates"
        );
        return Ok(None);
    };
    let source = match (&args.ca_cert_file, &args.ca_private_key_file) {
        (Some(cert), Some(private)) => meridian_xds_sync::Source::Provided {
            cert_pem: read(cert, "--ca-cert-file")?,
            key_pem: read(private, "--ca-private-key-file")?,
            chain_pem: match &args.ca_chain_file {
                Some(p) => read(p, "--ca-chain-file")?,
                None => String::new(),
            },
            trust_bundle_pem: match &args.ca_bundle_file {
                Some(p) => read(p, "--ca-bundle-file")?,
                None => String::new(),
            },
        },
        _ => meridian_xds_sync::Source::Generate,
    };
    let ca = meridian_xds_sync::bootstrap(store, &key, &args.trust_domain, source)
        .await
        .context("starting the certificate authority")?;
    // A second handle for the xDS server certificate; the issuer owns one.
    let again = meridian_ca::Authority::from_pem(
        ca.trust_domain(),
        ca.cert_pem(),
        &ca.key_pem(),
        ca.chain_pem(),
        ca.trust_bundle_pem(),
    )?;
    let lifetime = chrono::Duration::seconds(i64::from(args.workload_cert_seconds));
    Ok(Some((
        meridian_xds_sync::Issuer::new(ca, key, lifetime),
        again,
    )))
}

/// TLS for the xDS port, when asked for: the rustls configuration and a
/// task that renews the server's certificate at half life.
pub fn xds_tls(
    args: &SecurityArgs,
    ca: &meridian_ca::Authority,
) -> anyhow::Result<Option<(Arc<rustls::ServerConfig>, Arc<ServerCert>)>> {
    if !args.xds_tls && args.client_auth() == ClientAuth::None {
        return Ok(None);
    }
    let issued = issue_server_cert(args, ca)?;
    let cert = ServerCert::new(&issued.cert_chain_pem, &issued.key_pem)?;
    let config = meridian_xds::tls_server::server_config(
        cert.clone(),
        ca.trust_bundle_pem(),
        args.client_auth(),
    )?;
    Ok(Some((config, cert)))
}

pub fn issue_server_cert(
    args: &SecurityArgs,
    ca: &meridian_ca::Authority,
) -> anyhow::Result<meridian_ca::Issued> {
    let id = SpiffeId::new(&args.trust_domain, XDS_SERVER_NAMESPACE, XDS_SERVER_ACCOUNT)?;
    Ok(ca.issue(
        &id,
        &args.xds_server_names,
        chrono::Utc::now(),
        chrono::Duration::seconds(i64::from(args.workload_cert_seconds)),
    )?)
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Print a new random master key (hex) for --ca-key-file.
    Keygen,
    /// Force every workload certificate to be replaced now (through the API).
    Rotate {
        #[command(flatten)]
        server: crate::ServerArgs,
    },
    /// Issue a certificate for an identity from the stored CA, to bootstrap
    /// a client of an authenticated xDS port (writes PEM files).
    Issue {
        /// spiffe://<trust domain>/ns/<namespace>/sa/<service account>
        #[arg(long)]
        spiffe_id: String,
        /// Where to write the certificate chain, key and trust bundle.
        #[arg(long)]
        out_dir: PathBuf,
        #[command(flatten)]
        db: crate::DatabaseArgs,
        #[command(flatten)]
        security: Box<SecurityArgs>,
    },
}

pub async fn run(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Keygen => {
            println!("{}", MasterKey::generate()?.to_hex());
            Ok(())
        }
        CaCommand::Rotate { server } => crate::client::ca_rotate(&server.server).await,
        CaCommand::Issue {
            spiffe_id,
            out_dir,
            db,
            security,
        } => {
            let id = SpiffeId::parse(&spiffe_id)?;
            let database = crate::serve::open_database(&db).await?;
            let result = async {
                let store = Store::connect(database.url(), 2).await?;
                store.migrate().await?;
                let Some((_, ca)) = start_ca(&security, &store).await? else {
                    bail!("no CA: give --ca-key-file");
                };
                let issued = ca.issue(
                    &id,
                    &[],
                    chrono::Utc::now(),
                    chrono::Duration::seconds(i64::from(security.workload_cert_seconds)),
                )?;
                std::fs::create_dir_all(&out_dir)?;
                write_private(&out_dir.join("key.pem"), &issued.key_pem)?;
                std::fs::write(out_dir.join("cert.pem"), &issued.cert_chain_pem)?;
                std::fs::write(out_dir.join("bundle.pem"), ca.trust_bundle_pem())?;
                println!(
                    "wrote cert.pem, key.pem and bundle.pem to {}",
                    out_dir.display()
                );
                anyhow::Ok(())
            }
            .await;
            database.close().await;
            result
        }
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Re-issues the xDS server's certificate at half life until shutdown.
pub async fn renew_server_cert(
    args: SecurityArgs,
    ca: meridian_ca::Authority,
    cert: Arc<ServerCert>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let half = std::time::Duration::from_secs(u64::from(args.workload_cert_seconds) / 2);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(half) => {}
        }
        match issue_server_cert(&args, &ca)
            .and_then(|i| Ok(cert.replace(&i.cert_chain_pem, &i.key_pem)?))
        {
            Ok(()) => tracing::info!("xDS server certificate renewed"),
            Err(e) => tracing::error!(error = %e, "renewing the xDS server certificate failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("meridian-key-{}", std::process::id()));
        std::fs::write(&path, "00").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o620, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let got = check_private(&path);
            assert_eq!(got.is_ok(), ok, "mode {mode:o}: {got:?}");
            if let Err(e) = got {
                assert!(e.to_string().contains("chmod 600"), "{e}");
            }
        }
        std::fs::remove_file(&path).unwrap();
    }
}
