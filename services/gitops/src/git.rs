//! Fetching a source's branch with gix and reading its policy files
//! straight from git objects (no checkout, no `git` program).
//!
//! Blocking: call from `spawn_blocking`. Each source keeps a bare cache
//! repository under the cache directory, so a fetch transfers only new
//! objects.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::bstr::ByteSlice;
use gix::remote::Direction;
use meridian_store::gitops::Source;

use crate::files::is_policy_file;
use crate::source::{resolve, Secret, SecretError};

/// Largest policy file read from a repository; bigger ones are errors.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;
/// Most policy files read from one commit: everything read is held in
/// memory and validated at once, so a repository cannot be unbounded.
pub const MAX_FILES: usize = 2_000;
/// Most bytes of policy files read from one commit, all files together.
pub const MAX_TOTAL_BYTES: usize = 32 * 1024 * 1024;
/// Most tree entries (files and directories, policy files or not) walked
/// under the source's path: a tree of millions of entries costs time even
/// when few are policies.
pub const MAX_ENTRIES: usize = 100_000;

/// What a fetch found: the branch's commit and its policy files under the
/// source's path, as `(path relative to that directory, bytes)`.
#[derive(Debug)]
pub struct Fetched {
    pub commit: String,
    pub files: Vec<(String, Vec<u8>)>,
}

/// Why a fetch failed; every variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("credentials of the source: {0}")]
    Secret(#[from] SecretError),
    #[error("preparing the cache repository {path}: {message}")]
    Cache { path: PathBuf, message: String },
    #[error("fetching {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("branch {branch:?} not found in {url}")]
    NoBranch { url: String, branch: String },
    #[error("path {path:?} is not a directory in commit {commit}")]
    NoPath { path: String, commit: String },
    #[error("reading commit {commit}: {message}")]
    Read { commit: String, message: String },
    #[error("{file} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { file: String },
    /// Over one of the repository limits ([`MAX_FILES`],
    /// [`MAX_TOTAL_BYTES`], [`MAX_ENTRIES`]); nothing is applied.
    #[error("the repository is over a limit: {0}")]
    OverLimit(String),
}

/// Fetches `source.branch` into the cache and reads its files. Setting
/// `interrupt` makes gix abandon a transfer in progress (at shutdown).
pub fn fetch(cache_dir: &Path, source: &Source, interrupt: &AtomicBool) -> Result<Fetched, Error> {
    let dir = cache_dir.join(cache_name(source));
    let cache = |e: &dyn std::error::Error| Error::Cache {
        path: dir.clone(),
        message: chain(e),
    };
    let fetch_err = |e: &dyn std::error::Error| Error::Fetch {
        url: source.url.clone(),
        message: chain(e),
    };
    let token = auth_secret(source, "token")?;
    let username = source
        .auth
        .as_ref()
        .and_then(|a| a.get("username"))
        .and_then(|u| u.as_str())
        .unwrap_or("x-access-token")
        .to_owned();
    let key_file = ssh_key_file(cache_dir, source)?;

    if !dir.join("HEAD").exists() {
        std::fs::create_dir_all(cache_dir).map_err(|e| cache(&e))?;
        gix::init_bare(&dir).map_err(|e| cache(&e))?;
    }
    let mut overrides: Vec<String> = Vec::new();
    if let Some(key) = &key_file {
        // gix's ssh transport runs core.sshCommand through `sh -c`, as git
        // does, so the command must not carry input: the key is always
        // our own copy, named after the source (a DNS label) in the cache
        // directory (the operator's setting), and that path is quoted.
        overrides.push(format!(
            "core.sshCommand={}",
            ssh_command(key).map_err(|message| Error::Cache {
                path: key.clone(),
                message,
            })?
        ));
    }
    let repo = gix::open_opts(
        &dir,
        gix::open::Options::isolated().config_overrides(overrides),
    )
    .map_err(|e| cache(&e))?;
    let local = format!("refs/meridian/{}", source.branch);
    let spec = format!("+refs/heads/{}:{local}", source.branch);
    let remote = repo
        .remote_at(source.url.as_str())
        .and_then(|r| r.with_refspecs([spec.as_str()], Direction::Fetch))
        .map_err(|e| fetch_err(&e))?;
    let connection = remote
        .connect(Direction::Fetch)
        .map_err(|e| fetch_err(&e))?;
    let connection = connection.with_credentials(move |action| {
        use gix::credentials::helper::Action;
        match (&action, &token) {
            (Action::Get(ctx), Some(token)) => Ok(Some(gix::credentials::protocol::Outcome {
                identity: gix::sec::identity::Account {
                    username: username.clone(),
                    password: token.expose().to_owned(),
                    oauth_refresh_token: None,
                },
                next: ctx.clone().into(),
            })),
            _ => Ok(None),
        }
    });
    connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(|e| fetch_err(&e))?
        .receive(gix::progress::Discard, interrupt)
        .map_err(|e| fetch_err(&e))?;

    let no_branch = || Error::NoBranch {
        url: source.url.clone(),
        branch: source.branch.clone(),
    };
    let mut reference = repo
        .find_reference(local.as_str())
        .map_err(|_| no_branch())?;
    let commit = reference.peel_to_commit().map_err(|_| no_branch())?;
    let sha = commit.id.to_string();
    let read = |e: &dyn std::error::Error| Error::Read {
        commit: sha.clone(),
        message: chain(e),
    };
    let mut tree = commit.tree().map_err(|e| read(&e))?;
    let path = source.path.trim_matches('/');
    if !path.is_empty() {
        let no_path = || Error::NoPath {
            path: source.path.clone(),
            commit: sha.clone(),
        };
        let entry = tree
            .lookup_entry_by_path(path)
            .map_err(|e| read(&e))?
            .ok_or_else(no_path)?;
        if !entry.mode().is_tree() {
            return Err(no_path());
        }
        tree = repo.find_tree(entry.object_id()).map_err(|e| read(&e))?;
    }
    let mut files = Vec::new();
    let mut budget = Budget::default();
    walk(&repo, tree, String::new(), &mut files, &mut budget).map_err(|e| match e {
        Walk::Git(message) => Error::Read {
            commit: sha.clone(),
            message,
        },
        Walk::TooLarge(file) => Error::TooLarge { file },
        Walk::OverLimit(what) => Error::OverLimit(what),
    })?;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Fetched { commit: sha, files })
}

/// The cache repository's directory name: the source's name and a hash of
/// its URL, so a source pointed at another repository starts afresh.
fn cache_name(source: &Source) -> String {
    // FNV-1a: stable across runs and Rust versions, unlike `DefaultHasher`.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in source.url.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}-{h:016x}.git", source.name)
}

/// An error and its causes on one line, as `a: b: c`, skipping a cause
/// whose text its parent already shows.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

enum Walk {
    Git(String),
    TooLarge(String),
    OverLimit(String),
}

/// What a walk has read so far, against the limits.
#[derive(Default)]
struct Budget {
    entries: usize,
    files: usize,
    bytes: usize,
}

impl Budget {
    fn entry(&mut self) -> Result<(), Walk> {
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(Walk::OverLimit(format!(
                "more than {MAX_ENTRIES} files and directories under the source's path"
            )));
        }
        Ok(())
    }

    /// Checks a policy file's size before its bytes are copied.
    fn file(&mut self, name: &str, size: usize) -> Result<(), Walk> {
        if size > MAX_FILE_BYTES {
            return Err(Walk::TooLarge(name.to_owned()));
        }
        self.files += 1;
        self.bytes += size;
        if self.files > MAX_FILES {
            return Err(Walk::OverLimit(format!(
                "more than {MAX_FILES} policy files"
            )));
        }
        if self.bytes > MAX_TOTAL_BYTES {
            return Err(Walk::OverLimit(format!(
                "policy files larger than {MAX_TOTAL_BYTES} bytes together"
            )));
        }
        Ok(())
    }
}

fn walk(
    repo: &gix::Repository,
    tree: gix::Tree<'_>,
    prefix: String,
    out: &mut Vec<(String, Vec<u8>)>,
    budget: &mut Budget,
) -> Result<(), Walk> {
    let git = |e: gix::Error| Walk::Git(chain(&e));
    let mut subtrees = Vec::new();
    for entry in tree.iter() {
        let entry = entry.map_err(git)?;
        budget.entry()?;
        let name = format!("{prefix}{}", entry.filename().to_str_lossy());
        let mode = entry.mode();
        if mode.is_tree() {
            subtrees.push((entry.object_id(), format!("{name}/")));
        } else if mode.is_blob() && is_policy_file(&name) {
            // The header gives the size without inflating the blob.
            let header = repo.find_header(entry.object_id()).map_err(git)?;
            let size = usize::try_from(header.size()).unwrap_or(usize::MAX);
            budget.file(&name, size)?;
            let blob = repo.find_blob(entry.object_id()).map_err(git)?;
            out.push((name, blob.detach().data));
        }
    }
    for (id, prefix) in subtrees {
        let sub = repo.find_tree(id).map_err(git)?;
        walk(repo, sub, prefix, out, budget)?;
    }
    Ok(())
}

fn auth_secret(source: &Source, key: &str) -> Result<Option<Secret>, SecretError> {
    match source.auth.as_ref().and_then(|a| a.get(key)) {
        Some(reference) => resolve(reference).map(Some),
        None => Ok(None),
    }
}

/// The ssh key as a private file the ssh program can read: always a copy
/// in the cache directory (mode 0600), named after the source, read through
/// the one credential resolver. The reference's own path never reaches a
/// command line.
fn ssh_key_file(cache_dir: &Path, source: &Source) -> Result<Option<PathBuf>, Error> {
    let Some(reference) = source.auth.as_ref().and_then(|a| a.get("sshKey")) else {
        return Ok(None);
    };
    let key = resolve(reference)?;
    let path = cache_dir.join(format!("{}.key", source.name));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(cache_dir)?;
        // A key left by an older version may be more open; start afresh.
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(key.expose().as_bytes())?;
        f.write_all(b"\n")
    };
    write().map_err(|e| Error::Cache {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(Some(path))
}

/// The ssh command line for `key`, the key's path single-quoted for the
/// shell gix runs it with.
fn ssh_command(key: &Path) -> Result<String, String> {
    let path = key
        .to_str()
        .ok_or("the cache directory's path is not UTF-8")?;
    if path.chars().any(char::is_control) {
        return Err("the cache directory's path contains control characters".into());
    }
    Ok(format!(
        "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes",
        shell_quote(path)
    ))
}

/// `s` as one POSIX shell word: in single quotes, each `'` as `'\''`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_stops_at_each_limit() {
        let mut b = Budget::default();
        assert!(matches!(
            b.file("big.yaml", MAX_FILE_BYTES + 1),
            Err(Walk::TooLarge(_))
        ));
        let mut b = Budget::default();
        for _ in 0..MAX_FILES {
            assert!(b.file("a.yaml", 1).is_ok());
        }
        assert!(matches!(b.file("a.yaml", 1), Err(Walk::OverLimit(_))));
        let mut b = Budget::default();
        for _ in 0..MAX_TOTAL_BYTES / MAX_FILE_BYTES {
            assert!(b.file("a.yaml", MAX_FILE_BYTES).is_ok());
        }
        assert!(matches!(b.file("a.yaml", 1), Err(Walk::OverLimit(_))));
        let mut b = Budget::default();
        for _ in 0..MAX_ENTRIES {
            assert!(b.entry().is_ok());
        }
        assert!(matches!(b.entry(), Err(Walk::OverLimit(_))));
    }

    #[test]
    fn the_ssh_command_quotes_the_key_path() {
        let cmd = ssh_command(Path::new("/var/cache/it's here; rm -rf x/s.key")).unwrap();
        assert_eq!(
            cmd,
            "ssh -i '/var/cache/it'\\''s here; rm -rf x/s.key' -o IdentitiesOnly=yes -o BatchMode=yes"
        );
        // What sh makes of it: exactly one argument after -i.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '%s\\n' {}",
                shell_quote("a'b; touch /tmp/x #")
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "a'b; touch /tmp/x #\n"
        );
        assert!(ssh_command(Path::new("/a\nb")).is_err());
    }
}
