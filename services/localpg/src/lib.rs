//! A private PostgreSQL cluster built from the system's binaries.
//!
//! `meridian serve` without `DATABASE_URL` and the test suite both need a
//! database nobody set up by hand. This crate runs `initdb` into a data
//! directory, starts the server on loopback only, and stops it again. A
//! cluster that is already running in that directory is reused, so test
//! processes share one server and each makes its own databases.
//!
//! PostgreSQL refuses to run as root; as root every server command runs as
//! the `postgres` system user (created by the Debian package).

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `initdb`/`pg_ctl` found.
    #[error(
        "PostgreSQL server binaries not found (looked in $PG_BIN_DIR, /usr/lib/postgresql/*/bin and PATH); \
         install them with `apt-get install -y postgresql` or run scripts/install-deps"
    )]
    BinariesNotFound,
    /// Running as root, but there is no unprivileged `postgres` user to run the server as.
    #[error("running as root and there is no `postgres` user to run PostgreSQL as; install the `postgresql` package")]
    NoPostgresUser,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// How to run the cluster.
#[derive(Clone, Debug)]
pub struct Options {
    pub data_dir: PathBuf,
    /// Port to listen on; `None` picks a free one.
    pub port: Option<u16>,
    /// `false` turns off fsync and synchronous commit: for tests, whose data
    /// may be lost in a crash, never for `meridian serve`.
    pub durable: bool,
}

/// A running cluster. Dropping it does not stop the server: call [`Cluster::stop`].
#[derive(Debug)]
pub struct Cluster {
    data_dir: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    run_as_postgres: bool,
    /// The superuser's password, from `<data dir>.password` (mode 0600).
    /// `None` for a cluster made before passwords (trust authentication).
    password: Option<String>,
}

pub const SUPERUSER: &str = "meridian";

impl Cluster {
    /// Initializes the data directory if needed and starts the server, or
    /// attaches to the server already running there.
    pub fn start(opts: &Options) -> Result<Cluster, Error> {
        let bin_dir = find_bin_dir().ok_or(Error::BinariesNotFound)?;
        let run_as_postgres = is_root();
        if run_as_postgres && !user_exists("postgres") {
            return Err(Error::NoPostgresUser);
        }
        let data_dir = usable_data_dir(&opts.data_dir, run_as_postgres)?;
        let mut cluster = Cluster {
            data_dir,
            bin_dir,
            port: 0,
            run_as_postgres,
            password: None,
        };

        // Serialize start-up between processes sharing the directory (parallel test binaries).
        let lock_path = PathBuf::from(format!("{}.lock", cluster.data_dir.display()));
        let lock =
            File::create(&lock_path).map_err(io(format!("creating {}", lock_path.display())))?;
        lock.lock().map_err(io("locking the cluster directory"))?;

        if !cluster.data_dir.join("PG_VERSION").exists() {
            cluster.init(opts.durable)?;
        }
        cluster.password = fs::read_to_string(cluster.password_file())
            .ok()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty());
        if cluster.password.is_none() {
            tracing::warn!(
                dir = %cluster.data_dir.display(),
                "this private PostgreSQL predates passwords and trusts every local user; \
                 remove its data directory to make a new one with a password"
            );
        }
        if let Some(port) = cluster.running_port() {
            cluster.port = port;
            tracing::info!(port, dir = %cluster.data_dir.display(), "reusing running PostgreSQL");
            return Ok(cluster);
        }
        cluster.port = match opts.port {
            Some(p) => p,
            None => free_port()?,
        };
        let log = cluster.data_dir.join("server.log");
        let out = cluster.server_command("pg_ctl", |c| {
            c.arg("start")
                .arg("-D")
                .arg(&cluster.data_dir)
                .arg("-l")
                .arg(&log)
                .arg("-w")
                .arg("-t")
                .arg("60");
            c.arg("-o").arg(format!("-p {}", cluster.port));
        })?;
        if !out.status.success() {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            return Err(Error::Command {
                what: "pg_ctl start".into(),
                detail: format!("{}\n{tail}", describe(&out)),
            });
        }
        tracing::info!(port = cluster.port, dir = %cluster.data_dir.display(), "started private PostgreSQL");
        Ok(cluster)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Connection URL for a database of this cluster (with the password:
    /// treat it as a secret).
    pub fn url(&self, database: &str) -> String {
        match &self.password {
            Some(p) => format!(
                "postgres://{SUPERUSER}:{p}@127.0.0.1:{}/{database}",
                self.port
            ),
            None => format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port),
        }
    }

    /// Where the superuser's password is kept: beside the data directory
    /// (which belongs to `postgres` when running as root), readable by the
    /// user who made the cluster alone.
    fn password_file(&self) -> PathBuf {
        PathBuf::from(format!("{}.password", self.data_dir.display()))
    }

    /// Creates a database unless it exists.
    pub fn ensure_database(&self, name: &str) -> Result<(), Error> {
        let out = self.server_command("createdb", |c| {
            if let Some(p) = &self.password {
                c.env("PGPASSWORD", p);
            }
            c.args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                name,
            ]);
        })?;
        if out.status.success() || String::from_utf8_lossy(&out.stderr).contains("already exists") {
            Ok(())
        } else {
            Err(Error::Command {
                what: format!("createdb {name}"),
                detail: describe(&out),
            })
        }
    }

    /// Stops the server (fast shutdown: open sessions are ended, data is safe).
    pub fn stop(&self) -> Result<(), Error> {
        let out = self.server_command("pg_ctl", |c| {
            c.arg("stop")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "fast", "-w", "-t", "60"]);
        })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Command {
                what: "pg_ctl stop".into(),
                detail: describe(&out),
            })
        }
    }

    /// Makes the cluster with a random superuser password (SCRAM): any
    /// local user can reach 127.0.0.1, so trusting every connection there
    /// would hand the database to every account on the machine.
    fn init(&self, durable: bool) -> Result<(), Error> {
        let password = random_password()?;
        write_private(&self.password_file(), &password)?;
        // initdb reads the password from a file the server's user can read.
        let pwfile = PathBuf::from(format!("{}.pwfile", self.data_dir.display()));
        write_private(&pwfile, &password)?;
        if self.run_as_postgres {
            let _ = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&pwfile)
                .status();
        }
        let out = self.server_command("initdb", |c| {
            c.arg("-D").arg(&self.data_dir);
            c.arg(format!("--pwfile={}", pwfile.display()));
            c.args([
                "--auth=scram-sha-256",
                "--username",
                SUPERUSER,
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ]);
        });
        let _ = fs::remove_file(&pwfile);
        let out = out?;
        if !out.status.success() {
            return Err(Error::Command {
                what: "initdb".into(),
                detail: describe(&out),
            });
        }
        // Loopback TCP only: no Unix socket directory to own, nothing reachable from outside.
        let mut conf = String::from(
            "\n# meridian-localpg\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\nmax_connections = 300\nshared_buffers = '128MB'\n",
        );
        if !durable {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        let path = self.data_dir.join("postgresql.conf");
        let mut text = fs::read_to_string(&path).map_err(io("reading postgresql.conf"))?;
        text.push_str(&conf);
        fs::write(&path, text).map_err(io("writing postgresql.conf"))
    }

    /// Port of a server already running in the data directory, from `postmaster.pid`.
    fn running_port(&self) -> Option<u16> {
        let pid_file = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let out = self
            .server_command("pg_ctl", |c| {
                c.arg("status").arg("-D").arg(&self.data_dir);
            })
            .ok()?;
        if !out.status.success() {
            return None;
        }
        pid_file.lines().nth(3)?.trim().parse().ok()
    }

    fn server_command(
        &self,
        program: &str,
        args: impl FnOnce(&mut Command),
    ) -> Result<Output, Error> {
        let bin = self.bin_dir.join(program);
        let mut cmd = if self.run_as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        args(&mut cmd);
        // Keep the caller's locale settings out of initdb and the server.
        cmd.env("LC_ALL", "C").current_dir("/");
        cmd.output()
            .map_err(io(format!("running {}", bin.display())))
    }
}

/// 32 random bytes from the kernel, hex-encoded.
fn random_password() -> Result<String, Error> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("reading /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `text` to a new file of mode 0600.
fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(io(format!("writing {}", path.display())))
}

fn describe(out: &Output) -> String {
    format!(
        "exit {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )
}

/// Where `initdb` and `pg_ctl` live: `$PG_BIN_DIR`, the newest
/// `/usr/lib/postgresql/<major>/bin`, or the directory on `PATH`.
pub fn find_bin_dir() -> Option<PathBuf> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN_DIR").map(PathBuf::from) {
        return has_tools(&dir).then_some(dir);
    }
    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, d)| has_tools(d))
        .collect();
    versioned.sort();
    if let Some((_, dir)) = versioned.pop() {
        return Some(dir);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|d| has_tools(d))
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg("-u")
        .arg(name)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Creates the data directory. As root it must belong to `postgres`, and
/// `postgres` must be able to reach it; a project under `/root` is not
/// reachable, so then the cluster lives under the temp directory instead.
fn usable_data_dir(wanted: &Path, as_postgres: bool) -> Result<PathBuf, Error> {
    fs::create_dir_all(wanted).map_err(io(format!("creating {}", wanted.display())))?;
    let wanted = wanted
        .canonicalize()
        .map_err(io(format!("resolving {}", wanted.display())))?;
    if !as_postgres {
        return Ok(wanted);
    }
    let reachable = |dir: &Path| {
        let _ = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir)
            .status();
        Command::new("runuser")
            .args(["-u", "postgres", "--", "test", "-w"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success())
    };
    if reachable(&wanted) {
        return Ok(wanted);
    }
    let tmp = std::env::temp_dir();
    let fallback = fallback_dir(&wanted, &tmp)?;
    let legacy = tmp.join(format!("meridian-pg{}", flat(&wanted)));
    if legacy.is_dir() && !fallback.exists() {
        tracing::warn!(
            old = %legacy.display(),
            "data a deleted checkout at this path left behind is not used: it was sealed with that checkout's CA key (.meridian/ca-master.key); delete it when no longer needed"
        );
    }
    fs::create_dir_all(&fallback).map_err(io(format!("creating {}", fallback.display())))?;
    // Expected, not a fault: a root checkout under /root (mode 0700) is out of
    // the postgres user's reach. The README documents where the data goes.
    tracing::info!(
        wanted = %wanted.display(),
        using = %fallback.display(),
        "the postgres user cannot reach the data directory; using one under the temp directory"
    );
    if reachable(&fallback) {
        Ok(fallback)
    } else {
        Err(Error::Command {
            what: "preparing the data directory".into(),
            detail: format!("the postgres user cannot write {}", fallback.display()),
        })
    }
}

/// `path` as one file name.
fn flat(path: &Path) -> String {
    path.to_string_lossy().replace('/', "_")
}

/// Where the cluster lives when `postgres` cannot reach `wanted`: under
/// `tmp`, named after `wanted` and after an id kept in `wanted`.
///
/// Why the id: the data must live and die with the directory it stands in
/// for. Meridian seals secrets in the database with a key that scripts/run
/// keeps in the checkout (`.meridian/ca-master.key`); a checkout deleted
/// and cloned again at the same path gets a new key, and found the old
/// checkout's data under the same temp name, sealed with the lost key
/// ("sealed data does not open"). A new checkout has no id, so it gets a
/// new id and a new cluster.
fn fallback_dir(wanted: &Path, tmp: &Path) -> Result<PathBuf, Error> {
    // Beside `wanted`, not in it: should `postgres` reach `wanted` one day,
    // initdb needs it empty.
    let marker = match (wanted.parent(), wanted.file_name()) {
        (Some(dir), Some(name)) => dir.join(format!("{}.fallback-id", name.to_string_lossy())),
        _ => wanted.join("fallback-id"),
    };
    let kept = fs::read_to_string(&marker)
        .ok()
        .filter(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    let id = match kept {
        Some(id) => id,
        None => {
            let id = random_password()?[..16].to_owned();
            write_private(&marker, &id)?;
            id
        }
    };
    Ok(tmp.join(format!("meridian-pg{}-{id}", flat(wanted))))
}

fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io("finding a free port"))?
        .port();
    drop(listener);
    // Give the kernel a moment; the port is free to bind again at once on Linux.
    std::thread::sleep(Duration::from_millis(1));
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fallback stays the same while the directory it stands in for
    /// lives, and is new for a directory made again at the same path (a
    /// re-cloned checkout) or whose id was damaged.
    #[test]
    fn the_fallback_data_directory_belongs_to_the_one_it_stands_in_for() {
        let root =
            std::env::temp_dir().join(format!("meridian-localpg-fallback-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let (wanted, tmp) = (root.join("checkout/.meridian/pg"), root.join("tmp"));
        fs::create_dir_all(&wanted).unwrap();
        let first = fallback_dir(&wanted, &tmp).unwrap();
        let name = first.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("meridian-pg{}-", flat(&wanted))),
            "{name}"
        );
        assert_eq!(first.parent(), Some(tmp.as_path()));
        assert_eq!(
            fallback_dir(&wanted, &tmp).unwrap(),
            first,
            "same directory, same data"
        );

        fs::remove_dir_all(root.join("checkout")).unwrap();
        fs::create_dir_all(&wanted).unwrap();
        let recloned = fallback_dir(&wanted, &tmp).unwrap();
        assert_ne!(
            recloned, first,
            "a new checkout does not get the old one's data"
        );
        assert_eq!(fallback_dir(&wanted, &tmp).unwrap(), recloned);

        assert_eq!(
            fs::read_dir(&wanted).unwrap().count(),
            0,
            "initdb needs it empty"
        );
        fs::write(root.join("checkout/.meridian/pg.fallback-id"), "../../etc").unwrap();
        let damaged = fallback_dir(&wanted, &tmp).unwrap();
        assert_ne!(damaged, recloned);
        assert_eq!(damaged.parent(), Some(tmp.as_path()));
        fs::remove_dir_all(&root).unwrap();
    }

    /// A new cluster asks for the password: a local user without it (here
    /// `createdb` without PGPASSWORD) is refused, the cluster's own URL works.
    #[test]
    fn a_new_cluster_needs_its_password() {
        let dir =
            std::env::temp_dir().join(format!("meridian-localpg-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let cluster = match Cluster::start(&Options {
            data_dir: dir.join("pg"),
            port: None,
            durable: false,
        }) {
            Ok(c) => c,
            Err(Error::BinariesNotFound) => {
                panic!("PostgreSQL is needed: run scripts/install-deps")
            }
            Err(e) => panic!("{e}"),
        };
        let password = cluster
            .password
            .clone()
            .expect("a new cluster has a password");
        assert_eq!(password.len(), 64);
        assert!(cluster.url("x").contains(&password));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(cluster.password_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        cluster.ensure_database("with_password").unwrap();
        let without = cluster
            .server_command("createdb", |c| {
                c.env_remove("PGPASSWORD").args([
                    "-w",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &cluster.port.to_string(),
                    "-U",
                    SUPERUSER,
                    "without_password",
                ]);
            })
            .unwrap();
        let stopped = cluster.stop();
        let _ = fs::remove_dir_all(&dir);
        stopped.unwrap();
        assert!(!without.status.success(), "trusted without a password");
        assert!(
            String::from_utf8_lossy(&without.stderr).contains("password"),
            "{}",
            describe(&without)
        );
    }
}
