//! Policy repositories for GitOps tests: a real repository in a temporary
//! directory whose history the `git` program writes, served as `file://`
//! or over smart HTTP by `git http-backend` behind a small loopback server.
//! (The code under test reads them with gix; only fixtures use `git`.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "meridian-{tag}-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A work tree with history on branch `main`.
pub struct Repo {
    dir: TempDir,
}

impl Repo {
    /// `git init` of an empty repository on `main`.
    pub fn new() -> Repo {
        let repo = Repo {
            dir: TempDir::new("repo"),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    pub fn path(&self) -> &Path {
        &self.dir.0
    }

    /// `file:///...` of the repository.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    /// Runs `git` in the work tree; panics with its output on failure.
    pub fn git(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=Test", "-c", "user.email=test@127.0.0.1"])
            .args([
                "-c",
                "commit.gpgsign=false",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(self.path())
            .output()
            .unwrap_or_else(|e| panic!("GitOps tests need git (scripts/install-deps --test): {e}"));
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Writes a file (creating directories).
    pub fn write(&self, path: &str, text: &str) {
        let p = self.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn remove(&self, path: &str) {
        let p = self.path().join(path);
        if p.is_dir() {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            std::fs::remove_file(p).unwrap();
        }
    }

    /// Stages everything and commits; returns the new commit's sha.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

impl Default for Repo {
    fn default() -> Self {
        Repo::new()
    }
}

/// A minimal GlobalTrafficPolicy document in YAML.
pub fn policy_yaml(name: &str, host: &str, port: u16) -> String {
    format!(
        "apiVersion: meridian/v1\nkind: GlobalTrafficPolicy\nmetadata:\n  name: {name}\nspec:\n  host: {host}\n  port: {port}\n  zones:\n    - name: a\n      weight: 100\n      endpoints:\n        - {{address: 127.0.0.1, port: 9}}\n"
    )
}

/// Smart HTTP for the repositories under a directory, through
/// `git http-backend` (CGI) on 127.0.0.1 port 0.
pub struct HttpGit {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl HttpGit {
    /// Serves `root`: `http://ADDR/<dir name>` is the repository `root/<dir name>`.
    pub async fn start(root: &Path) -> HttpGit {
        Self::start_with_auth(root, None).await
    }

    /// Like [`HttpGit::start`], answering 401 unless the request carries
    /// HTTP basic auth `user:password` (as a git host does for a token).
    pub async fn start_with_auth(root: &Path, basic: Option<(&str, &str)>) -> HttpGit {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let expected = basic.map(|(u, p)| {
            use base64::Engine;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let app = axum::Router::new()
            .fallback(cgi)
            .with_state((root.to_owned(), expected));
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        tokio::spawn(async move {
            let _ = serve.await;
        });
        HttpGit { addr, stop }
    }

    /// URL of a repository directory under the root.
    pub fn url(&self, repo_dir: &str) -> String {
        format!("http://{}/{repo_dir}", self.addr)
    }
}

impl Drop for HttpGit {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn cgi(
    State((root, expected)): State<(PathBuf, Option<String>)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    if let Some(expected) = expected {
        if header("authorization") != expected {
            return Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("www-authenticate", "Basic realm=\"git\"")
                .body(Body::empty())
                .unwrap();
        }
    }
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("git http-backend");
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child
        .wait_with_output()
        .await
        .expect("git http-backend output");
    let _ = writer.await;
    // CGI: headers, a blank line, the body.
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((at, len)) = split else {
        return Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from("bad CGI output"))
            .unwrap();
    };
    let mut response = Response::builder().status(StatusCode::OK);
    for line in String::from_utf8_lossy(&raw[..at]).lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code: u16 = v
                .split_whitespace()
                .next()
                .unwrap_or("500")
                .parse()
                .unwrap_or(500);
            response = response.status(code);
        } else {
            response = response.header(k.trim(), v);
        }
    }
    response.body(Body::from(raw[at + len..].to_vec())).unwrap()
}
