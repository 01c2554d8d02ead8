//! Rules for a source definition, reading the credentials it names, and
//! verifying push webhooks.

use hmac::{Hmac, Mac};
use meridian_policy::validate::dns_label;
use meridian_policy::FieldError;
use meridian_store::gitops::Source;
use sha2::Sha256;

/// Shortest polling interval: a tighter loop only loads the git server.
pub const MIN_INTERVAL_SECONDS: u32 = 1;
pub const MAX_INTERVAL_SECONDS: u32 = 86_400;

/// Checks a source definition; `Err` lists every problem.
pub fn validate(s: &Source) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut push = |field: &str, message: String| errors.push(FieldError::new(field, message));
    if let Err(m) = dns_label(&s.name) {
        push("name", m);
    }
    let scheme = s.url.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some("file" | "http" | "https" | "ssh") if s.url.len() > scheme.unwrap().len() + 3 => {}
        _ => push(
            "url",
            "must be a file://, http://, https:// or ssh:// URL".to_owned(),
        ),
    }
    if let Err(m) = url_credentials(&s.url) {
        push("url", m);
    }
    if s.branch.is_empty()
        || s.branch.starts_with(['-', '/'])
        || s.branch.contains("..")
        || s.branch
            .chars()
            .any(|c| c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        push("branch", "must be a valid git branch name".to_owned());
    }
    if s.path.starts_with('/') || s.path.split('/').any(|c| c == "..") {
        push(
            "path",
            "must be relative to the repository root, without ..".to_owned(),
        );
    }
    if !(MIN_INTERVAL_SECONDS..=MAX_INTERVAL_SECONDS).contains(&s.interval_seconds) {
        push(
            "intervalSeconds",
            format!("must be {MIN_INTERVAL_SECONDS} to {MAX_INTERVAL_SECONDS}"),
        );
    }
    if let Some(auth) = &s.auth {
        match auth.as_object() {
            None => push("auth", "must be an object".to_owned()),
            Some(map) => {
                for (k, v) in map {
                    let at = format!("auth.{k}");
                    match k.as_str() {
                        "token" | "sshKey" => {
                            if let Err(e) = meridian_secrets::check(v) {
                                push(&at, e.to_string());
                            }
                        }
                        "username" if v.as_str().is_some_and(|u| !u.is_empty()) => {}
                        "username" => push(&at, "must be a non-empty string".to_owned()),
                        _ => push(
                            &at,
                            "unknown field; known: token, username, sshKey".to_owned(),
                        ),
                    }
                }
            }
        }
    }
    if let Some(secret) = &s.webhook_secret {
        if let Err(e) = meridian_secrets::check(secret) {
            push("webhookSecret", e.to_string());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A URL may not carry a credential: sources are shown to every viewer
/// and written to the audit log. ssh's `user@` is a login name and allowed;
/// a password, or any user part on http(s) (where it is the token), is not.
fn url_credentials(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let Some((user, _)) = authority.rsplit_once('@') else {
        return Ok(());
    };
    match scheme {
        "ssh" if !user.contains(':') => Ok(()),
        "ssh" => Err("must not hold a password; use auth.sshKey".to_owned()),
        _ => Err(
            "must not hold credentials (user:password@ or token@); use auth.token and auth.username"
                .to_owned(),
        ),
    }
}

/// `url` with any `user:password@` or `token@` (on http/https) replaced by
/// `***@`: for showing a source stored before URLs were checked.
pub fn redact_url(url: &str) -> String {
    if url_credentials(url).is_ok() {
        return url.to_owned();
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{tail}"),
        None => url.to_owned(),
    }
}

/// Credentials are read by the one resolver every role shares, with the
/// replica's rules of which variables and files may be named.
pub use meridian_secrets::{resolve, Error as SecretError, Secret};

/// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
/// The comparison is constant-time.
pub fn verify_github(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The signature GitHub would send for `body` (for tests and clients).
pub fn sign_github(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// GitLab: `X-Gitlab-Token` is the secret itself. Compared in constant
/// time (by HMAC-ing both sides) so timing does not leak a prefix.
pub fn verify_gitlab(secret: &[u8], token: &str) -> bool {
    let digest = |bytes: &[u8]| {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"meridian-gitlab-token").expect("any key");
        mac.update(bytes);
        mac.finalize()
    };
    digest(secret) == digest(token.as_bytes())
}

/// Whether a verified webhook should start a sync of a source following
/// `branch`: GitHub and GitLab push payloads name the pushed `ref`, and a
/// push to another branch or a tag is not this source's business. Without
/// a `ref` (GitHub's ping, other events) the sync runs: a sync of an
/// unchanged commit is harmless, a missed one is not.
pub fn webhook_concerns(payload: &[u8], branch: &str) -> Result<(), String> {
    let pushed = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("ref").and_then(|r| r.as_str()).map(str::to_owned));
    match pushed {
        Some(r) if r != format!("refs/heads/{branch}") => Err(format!(
            "a push to {r}; this source follows refs/heads/{branch}"
        )),
        _ => Ok(()),
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn source(v: Value) -> Source {
        serde_json::from_value(v).unwrap()
    }

    fn fields(s: &Source) -> Vec<String> {
        validate(s)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn defaults_and_rules() {
        let ok = source(json!({"name": "logistics", "url": "file:///srv/repo"}));
        assert_eq!(ok.branch, "main");
        assert_eq!(ok.interval_seconds, 60);
        assert!(ok.prune && !ok.adopt);
        assert_eq!(fields(&ok), Vec::<String>::new());
        let bad = source(json!({
            "name": "Bad", "url": "ftp://x", "branch": "a..b", "path": "../up",
            "intervalSeconds": 0, "auth": {"token": "plain", "colour": 1},
            "webhookSecret": {"env": "lower"}
        }));
        assert_eq!(
            fields(&bad),
            vec![
                "name",
                "url",
                "branch",
                "path",
                "intervalSeconds",
                "auth.token",
                "auth.colour",
                "webhookSecret"
            ]
        );
        let ssh = source(json!({"name": "s", "url": "ssh://git@127.0.0.1/r.git",
            "auth": {"sshKey": {"file": "/var/run/secrets/git/key"}}}));
        assert_eq!(fields(&ssh), Vec::<String>::new());
    }

    #[test]
    fn urls_carry_no_credentials() {
        let url = |u: &str| fields(&source(json!({"name": "s", "url": u})));
        for bad in [
            "https://user:pass@git.example.com/r.git",
            "https://ghp_token@github.com/o/r.git",
            "http://a:b@127.0.0.1/r",
            "ssh://git:pw@127.0.0.1/r.git",
        ] {
            assert_eq!(url(bad), vec!["url"], "{bad}");
        }
        assert_eq!(
            redact_url("https://user:s3cret@git.example.com/r.git"),
            "https://***@git.example.com/r.git"
        );
        assert_eq!(
            redact_url("ssh://git@127.0.0.1/r.git"),
            "ssh://git@127.0.0.1/r.git"
        );
        for good in [
            "ssh://git@127.0.0.1/r.git",
            "https://git.example.com/r.git?x=a@b",
            "file:///srv/repo",
        ] {
            assert_eq!(url(good), Vec::<String>::new(), "{good}");
        }
    }

    #[test]
    fn github_signature() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let sig = sign_github(b"s3cret", body);
        assert!(verify_github(b"s3cret", body, &sig));
        assert!(!verify_github(b"other", body, &sig));
        assert!(!verify_github(b"s3cret", b"tampered", &sig));
        assert!(!verify_github(b"s3cret", body, "sha1=abc"));
        assert!(!verify_github(b"s3cret", body, "sha256=zz"));
    }

    #[test]
    fn gitlab_token() {
        assert!(verify_gitlab(b"tok", "tok"));
        assert!(!verify_gitlab(b"tok", "tok2"));
        assert!(!verify_gitlab(b"tok", ""));
    }

    /// A key path is never handed to a shell, and one that a shell would
    /// interpret is refused when the source is written.
    #[test]
    fn credential_references_follow_the_secret_rules() {
        let with = |auth: Value| {
            source(json!({"name": "s", "url": "ssh://git@127.0.0.1/r.git", "auth": auth}))
        };
        let pwn = with(json!({"sshKey": {"file": "/dev/null; touch /tmp/pwned #"}}));
        let errors = validate(&pwn).unwrap_err();
        assert_eq!(errors[0].field, "auth.sshKey");
        assert!(errors[0].message.contains("';'"), "{}", errors[0].message);
        for refused in [
            json!({"sshKey": {"file": "/etc/ssh/ssh_host_ed25519_key"}}),
            json!({"token": {"env": "DATABASE_URL"}}),
            json!({"token": {"env": "GIT_TOKEN"}}),
        ] {
            let errors = validate(&with(refused.clone())).unwrap_err();
            assert!(
                errors[0].message.contains("MERIDIAN_SECRET_"),
                "{refused}: {}",
                errors[0].message
            );
        }
        assert!(validate(&with(
            json!({"sshKey": {"file": "/var/run/secrets/git/key"}})
        ))
        .is_ok());
        assert!(validate(&with(json!({"token": {"env": "MERIDIAN_SECRET_GIT"}}))).is_ok());
    }

    #[test]
    fn webhooks_concern_only_pushes_to_the_followed_branch() {
        assert!(webhook_concerns(br#"{"ref":"refs/heads/main"}"#, "main").is_ok());
        let other = webhook_concerns(br#"{"ref":"refs/heads/feature"}"#, "main").unwrap_err();
        assert!(other.contains("refs/heads/feature"), "{other}");
        assert!(webhook_concerns(br#"{"ref":"refs/tags/v1"}"#, "main").is_err());
        assert!(webhook_concerns(br#"{"ref":"refs/heads/main-2"}"#, "main").is_err());
        // A ping, or a payload that is not JSON: sync anyway.
        assert!(webhook_concerns(br#"{"zen":"hi","hook_id":1}"#, "main").is_ok());
        assert!(webhook_concerns(b"not json", "main").is_ok());
    }
}
