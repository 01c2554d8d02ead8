//! Credential references, `{"env": NAME}` and `{"file": PATH}`, and the one
//! resolver that every role uses to read them.
//!
//! DNS providers and GitOps sources name where a credential lives, never the
//! credential, and a replica reads it when a call needs it (so a rotated
//! secret is picked up). Whoever may write those settings (an admin) chooses
//! both the reference and where the credential is sent (`apiUrl`,
//! `endpointUrl`, a Git URL). Unrestricted, a reference could name anything
//! the process can read (`MERIDIAN_CA_KEY`, `DATABASE_URL`, the CA key file)
//! and ship it to a server of the admin's choosing, or `/dev/zero` and
//! exhaust the leader's memory. So a reference may only name
//!
//! - an environment variable whose name starts with a configured prefix
//!   (default [`DEFAULT_ENV_PREFIX`], `--secret-env-prefix`), never
//!   [`NEVER_ENV`]; or
//! - a regular file under a configured secrets directory (default
//!   [`DEFAULT_DIR`] alone, `--secrets-dir`, repeatable), after symbolic
//!   links are followed, and not one of the files Meridian keeps for itself
//!   (the database URL file, the CA key files: [`Rules::deny`]);
//!
//! and at most [`MAX_BYTES`] are read. [`Rules::check`] is the lexical
//! check run when a reference is written (a 422 naming the field);
//! [`Rules::resolve`] checks again, against the file system, when it is read.
//!
//! The rules are process-wide ([`install`] once at start, [`rules`] after):
//! the API, the GitOps syncer and the DNS reconciler of one replica must
//! agree on them, and a credential is read deep inside each of them.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde_json::Value;

/// Most bytes read for one credential. Keys and tokens are far smaller; a
/// reference to a large or endless file is refused rather than read.
pub const MAX_BYTES: u64 = 64 * 1024;
/// Environment variables a reference may name start with this, by default.
pub const DEFAULT_ENV_PREFIX: &str = "MERIDIAN_SECRET_";
/// Files a reference may name are under this directory, by default.
pub const DEFAULT_DIR: &str = "/var/run/secrets";
/// The Kubernetes service account token lives here: never readable through
/// a reference, even under the default directory.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io";
/// The process's own secrets: never readable, whatever the prefix.
pub const NEVER_ENV: [&str; 3] = ["MERIDIAN_CA_KEY", "DATABASE_URL", "MERIDIAN_DATABASE_URL"];
/// Characters a shell would interpret. A path is later handed to programs
/// (ssh reads the GitOps key through a command line), so none is allowed.
const SHELL_META: &str = " \t;&|$`'\"<>(){}[]*?!~#\\";

/// Where a credential is, `{"env": "NAME"}` or `{"file": "/absolute/path"}`:
/// never the credential itself. The one description of a reference: DNS
/// provider settings hold it typed (it (de)serializes as that JSON), GitOps
/// sources as JSON, and both are read through [`Rules`].
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub enum Reference {
    /// An environment variable of the Meridian process.
    Env(String),
    /// A file, by absolute path.
    File(PathBuf),
}

impl std::fmt::Debug for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Env(name) => write!(f, "env:{name}"),
            Reference::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl TryFrom<Value> for Reference {
    type Error = Error;
    fn try_from(v: Value) -> Result<Self, Error> {
        parse(&v)
    }
}

impl From<Reference> for Value {
    fn from(r: Reference) -> Value {
        match r {
            Reference::Env(name) => serde_json::json!({ "env": name }),
            Reference::File(path) => serde_json::json!({ "file": path.to_string_lossy() }),
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Env(name) => write!(f, "environment variable {name}"),
            Reference::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// A credential: `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a reference cannot be used. Messages name the reference and the
/// rule, never the credential.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not `{"env": NAME}` or `{"file": "/absolute/path"}`.
    #[error("must say where the secret is, {{\"env\": \"NAME\"}} or {{\"file\": \"/absolute/path\"}}; secrets are never stored")]
    Syntax,
    /// The reference names something the rules do not allow.
    #[error("{reference} is not allowed: {rule}")]
    Refused { reference: String, rule: String },
    /// The variable is allowed but not set in this replica.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// The file could not be opened or read.
    #[error("reading secret file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is a directory, device or pipe.
    #[error("secret file {0} is not a regular file")]
    NotRegular(String),
    /// More than [`MAX_BYTES`].
    #[error("secret {0} is larger than {MAX_BYTES} bytes")]
    TooLarge(String),
    /// Not UTF-8 text.
    #[error("secret {0} is not UTF-8 text")]
    NotText(String),
    /// Empty (or only whitespace): never a usable credential, and an empty
    /// webhook secret would let anyone sign.
    #[error("secret {0} is empty")]
    Empty(String),
}

/// Which references a replica may read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    env_prefix: String,
    dirs: Vec<PathBuf>,
    deny: Vec<PathBuf>,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules::new(DEFAULT_ENV_PREFIX, vec![PathBuf::from(DEFAULT_DIR)])
            .expect("the defaults are valid")
    }
}

impl Rules {
    /// Rules allowing variables named `env_prefix*` and files under `dirs`.
    /// The prefix must be a non-empty variable-name start (an empty one
    /// would allow every variable); each directory must be absolute and
    /// not `/`. The Kubernetes service account directory is always denied.
    pub fn new(env_prefix: &str, dirs: Vec<PathBuf>) -> Result<Rules, String> {
        if env_prefix.is_empty() || !env_name_chars(env_prefix) {
            return Err(format!(
                "the secret variable prefix must be non-empty, of A-Z, 0-9 and _, not starting \
                 with a digit (got {env_prefix:?})"
            ));
        }
        for dir in &dirs {
            if !dir.is_absolute() || dir.parent().is_none() || !normal(dir) {
                return Err(format!(
                    "a secrets directory must be an absolute path below /, without . or .. \
                     (got {})",
                    dir.display()
                ));
            }
            if let Some(bad) = dir.to_str().and_then(|d| d.chars().find(|c| forbidden(*c))) {
                return Err(format!(
                    "a secrets directory may not contain {bad:?} (got {})",
                    dir.display()
                ));
            }
        }
        Ok(Rules {
            env_prefix: env_prefix.to_owned(),
            dirs,
            deny: Vec::new(),
        }
        .deny([PathBuf::from(SERVICE_ACCOUNT_DIR)]))
    }

    /// Also refuses these files (and anything under these directories),
    /// even inside a secrets directory: Meridian's own key files.
    pub fn deny(mut self, paths: impl IntoIterator<Item = PathBuf>) -> Rules {
        for p in paths {
            let p = if p.is_absolute() {
                p
            } else {
                std::env::current_dir().unwrap_or_default().join(p)
            };
            if let Ok(canonical) = p.canonicalize() {
                self.deny.push(canonical);
            }
            self.deny.push(p);
        }
        self
    }

    pub fn env_prefix(&self) -> &str {
        &self.env_prefix
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The rule, as said in every refusal.
    pub fn describe(&self) -> String {
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        let files = match dirs.as_slice() {
            [] => "no files (no --secrets-dir)".to_owned(),
            [one] => format!("files under {one} (--secrets-dir)"),
            many => format!("files under {} (--secrets-dir)", many.join(", ")),
        };
        format!(
            "references may name only environment variables starting with {} \
             (--secret-env-prefix) or {files}, at most {} KiB",
            self.env_prefix,
            MAX_BYTES / 1024
        )
    }

    /// The syntax and the lexical rules: what can be said without the file
    /// system. Run when a provider or source is written.
    pub fn check(&self, v: &Value) -> Result<Reference, Error> {
        let reference = parse(v)?;
        self.check_reference(&reference)?;
        Ok(reference)
    }

    /// [`Rules::check`] of a reference already parsed.
    pub fn check_reference(&self, reference: &Reference) -> Result<(), Error> {
        let refuse = |reference: &Reference, why: &str| Error::Refused {
            reference: reference.to_string(),
            rule: format!("{why}; {}", self.describe()),
        };
        match reference {
            Reference::Env(name) => {
                if NEVER_ENV.contains(&name.as_str()) {
                    return Err(refuse(reference, "it holds Meridian's own credentials"));
                }
                if !name.starts_with(&self.env_prefix) {
                    return Err(refuse(
                        reference,
                        &format!("its name does not start with {}", self.env_prefix),
                    ));
                }
            }
            Reference::File(path) => {
                let text = path.to_str().unwrap_or_default();
                if let Some(c) = text.chars().find(|c| forbidden(*c)) {
                    return Err(refuse(
                        reference,
                        &format!(
                            "the path contains {c:?} (no spaces, control or shell characters)"
                        ),
                    ));
                }
                if !normal(path) {
                    return Err(refuse(reference, "the path has . or .. components"));
                }
                if !self.dirs.iter().any(|d| path.starts_with(d) && path != d) {
                    return Err(refuse(reference, "it is not under a secrets directory"));
                }
                if self.deny.iter().any(|d| path.starts_with(d)) {
                    return Err(refuse(reference, "it is one of Meridian's own key files"));
                }
            }
        }
        Ok(())
    }

    /// Reads the credential `v` names, checking the rules again against
    /// the file system: symbolic links are followed before the directory
    /// test, and only a regular file of at most [`MAX_BYTES`] is read.
    /// Surrounding whitespace (a file's final newline) is dropped.
    pub fn resolve(&self, v: &Value) -> Result<Secret, Error> {
        self.resolve_reference(&parse(v)?)
    }

    /// [`Rules::resolve`] of a reference already parsed (a typed setting).
    pub fn resolve_reference(&self, reference: &Reference) -> Result<Secret, Error> {
        self.check_reference(reference)?;
        let secret = match reference {
            Reference::Env(name) => match std::env::var(name) {
                Ok(value) if value.len() as u64 > MAX_BYTES => {
                    return Err(Error::TooLarge(reference.to_string()))
                }
                Ok(value) => Secret(value.trim().to_owned()),
                Err(_) => return Err(Error::MissingEnv(name.clone())),
            },
            Reference::File(path) => self.read_file(path)?,
        };
        if secret.0.is_empty() {
            return Err(Error::Empty(reference.to_string()));
        }
        Ok(secret)
    }

    fn read_file(&self, path: &Path) -> Result<Secret, Error> {
        let shown = path.display().to_string();
        let io = |source| Error::File {
            path: shown.clone(),
            source,
        };
        let real = path.canonicalize().map_err(io)?;
        let inside = self.dirs.iter().any(|d| {
            d.canonicalize()
                .is_ok_and(|d| real.starts_with(&d) && real != d)
        });
        if !inside {
            return Err(Error::Refused {
                reference: format!("file {shown}"),
                rule: format!(
                    "it leads to {} outside the secrets directories; {}",
                    real.display(),
                    self.describe()
                ),
            });
        }
        if self.deny.iter().any(|d| real.starts_with(d)) {
            return Err(Error::Refused {
                reference: format!("file {shown}"),
                rule: format!("it is one of Meridian's own key files; {}", self.describe()),
            });
        }
        let file = std::fs::File::open(&real).map_err(io)?;
        if !file.metadata().map_err(io)?.is_file() {
            return Err(Error::NotRegular(shown));
        }
        let mut bytes = Vec::new();
        file.take(MAX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_BYTES {
            return Err(Error::TooLarge(format!("file {shown}")));
        }
        let text = String::from_utf8(bytes).map_err(|_| Error::NotText(format!("file {shown}")))?;
        Ok(Secret(text.trim().to_owned()))
    }
}

/// The syntax alone: one key, `env` with a variable name or `file` with an
/// absolute path.
pub fn parse(v: &Value) -> Result<Reference, Error> {
    let map = v
        .as_object()
        .filter(|m| m.len() == 1)
        .ok_or(Error::Syntax)?;
    match (
        map.get("env").and_then(Value::as_str),
        map.get("file").and_then(Value::as_str),
    ) {
        (Some(env), None) if !env.is_empty() && env_name_chars(env) => {
            Ok(Reference::Env(env.to_owned()))
        }
        (None, Some(path)) if path.starts_with('/') => Ok(Reference::File(PathBuf::from(path))),
        _ => Err(Error::Syntax),
    }
}

/// Whether `v` has the shape of a reference (an object with an `env` or
/// `file` key), valid or not: how settings tell a reference from a value.
pub fn looks_like_reference(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|m| m.contains_key("env") || m.contains_key("file"))
}

fn env_name_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

fn forbidden(c: char) -> bool {
    c.is_control() || SHELL_META.contains(c)
}

/// No `.` or `..` components, so a lexical prefix test means what it says.
fn normal(path: &Path) -> bool {
    let text = path.to_str().unwrap_or_default();
    !text.split('/').any(|c| c == "." || c == "..")
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

static RULES: RwLock<Option<Arc<Rules>>> = RwLock::new(None);

/// Sets the process's rules (at start, from the settings).
pub fn install(rules: Rules) {
    *RULES.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(rules));
}

/// The process's rules: those installed, or the defaults.
pub fn rules() -> Arc<Rules> {
    RULES
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| Arc::new(Rules::default()))
}

/// [`Rules::check`] with the process's rules.
pub fn check(v: &Value) -> Result<Reference, Error> {
    rules().check(v)
}

/// [`Rules::resolve`] with the process's rules.
pub fn resolve(v: &Value) -> Result<Secret, Error> {
    rules().resolve(v)
}

/// [`Rules::resolve_reference`] with the process's rules.
pub fn resolve_reference(reference: &Reference) -> Result<Secret, Error> {
    rules().resolve_reference(reference)
}

#[cfg(test)]
mod tests;
