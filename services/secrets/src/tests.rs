use std::path::PathBuf;

use serde_json::json;

use super::*;

/// A private directory under the system temp dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("meridian-secrets-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d.canonicalize().unwrap())
    }
    fn file(&self, name: &str, body: &[u8]) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn refused(r: Result<Reference, Error>) -> String {
    match r {
        Err(e @ Error::Refused { .. }) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn syntax() {
    for bad in [
        json!("plain"),
        json!({}),
        json!({"env": "A", "file": "/b"}),
        json!({"env": "lower"}),
        json!({"env": "1ABC"}),
        json!({"env": ""}),
        json!({"file": "relative"}),
        json!({"file": 3}),
        json!({"colour": "x"}),
    ] {
        assert!(matches!(parse(&bad), Err(Error::Syntax)), "{bad}");
    }
    assert_eq!(
        parse(&json!({"env": "MERIDIAN_SECRET_X"})).unwrap(),
        Reference::Env("MERIDIAN_SECRET_X".into())
    );
}

/// The rules by table: (reference, allowed by the default rules).
#[test]
fn default_rules_by_table() {
    let rules = Rules::default();
    let cases = [
        (json!({"env": "MERIDIAN_SECRET_PDNS"}), true),
        (json!({"env": "MERIDIAN_SECRET_"}), true),
        (json!({"env": "PDNS_API_KEY"}), false),
        (json!({"env": "MERIDIAN_CA_KEY"}), false),
        (json!({"env": "DATABASE_URL"}), false),
        (json!({"env": "HOME"}), false),
        (json!({"file": "/var/run/secrets/pdns/key"}), true),
        (json!({"file": "/var/run/secrets"}), false),
        (
            json!({"file": "/var/run/secrets/../../../etc/shadow"}),
            false,
        ),
        (json!({"file": "/var/run/secrets/./x"}), false),
        (json!({"file": "/var/run/secretsX/key"}), false),
        (json!({"file": "/etc/meridian/aws"}), false),
        (json!({"file": "/dev/zero"}), false),
        (json!({"file": "/dev/null; touch /tmp/pwned #"}), false),
        (json!({"file": "/var/run/secrets/a;b"}), false),
        (json!({"file": "/var/run/secrets/a b"}), false),
        (json!({"file": "/var/run/secrets/$(id)"}), false),
        (json!({"file": "/var/run/secrets/a\nb"}), false),
        (
            json!({"file": "/var/run/secrets/kubernetes.io/serviceaccount/token"}),
            false,
        ),
    ];
    for (reference, allowed) in cases {
        let got = rules.check(&reference);
        assert_eq!(got.is_ok(), allowed, "{reference}: {got:?}");
        if let Err(e) = got {
            let text = e.to_string();
            assert!(
                text.contains("MERIDIAN_SECRET_") && text.contains("/var/run/secrets"),
                "the refusal states the rule: {text}"
            );
        }
    }
}

#[test]
fn settings_are_checked() {
    assert!(Rules::new("", vec![]).is_err());
    assert!(Rules::new("lower_", vec![]).is_err());
    assert!(Rules::new("OK_", vec![PathBuf::from("relative")]).is_err());
    assert!(Rules::new("OK_", vec![PathBuf::from("/")]).is_err());
    assert!(Rules::new("OK_", vec![PathBuf::from("/a/../b")]).is_err());
    assert!(Rules::new("OK_", vec![PathBuf::from("/a b")]).is_err());
    let none = Rules::new("OK_", vec![]).unwrap();
    assert!(none.describe().contains("no files"));
    assert!(none.check(&json!({"file": "/var/run/secrets/x"})).is_err());
}

#[test]
fn files_are_read_within_the_directories_and_bounded() {
    let dir = Dir::new("read");
    let outside = Dir::new("outside");
    let rules = Rules::new("T_", vec![dir.0.clone()]).unwrap();

    let ok = dir.file("token", b"hunter2\n");
    let s = rules.resolve(&json!({"file": ok})).unwrap();
    assert_eq!(s.expose(), "hunter2");
    assert_eq!(format!("{s:?}"), "Secret(<redacted>)");

    // Exactly the limit is read; one byte more is refused, not truncated.
    let at_limit = dir.file("big", &vec![b'a'; MAX_BYTES as usize]);
    assert_eq!(
        rules
            .resolve(&json!({"file": at_limit}))
            .unwrap()
            .expose()
            .len(),
        MAX_BYTES as usize
    );
    let over = dir.file("bigger", &vec![b'a'; MAX_BYTES as usize + 1]);
    assert!(matches!(
        rules.resolve(&json!({"file": over})),
        Err(Error::TooLarge(_))
    ));

    // A symbolic link inside the directory that leads out of it.
    let secret_elsewhere = outside.file("db", b"postgres://u:p@h/db");
    let link = dir.0.join("link");
    std::os::unix::fs::symlink(&secret_elsewhere, &link).unwrap();
    let e = rules
        .resolve(&json!({"file": link.to_str().unwrap()}))
        .unwrap_err();
    assert!(matches!(e, Error::Refused { .. }), "{e}");
    assert!(!e.to_string().contains("postgres://"), "{e}");

    // A link to an endless device is refused before it is read.
    let zero = dir.0.join("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    assert!(rules
        .resolve(&json!({"file": zero.to_str().unwrap()}))
        .is_err());

    // A directory, not a file.
    std::fs::create_dir(dir.0.join("sub")).unwrap();
    assert!(matches!(
        rules.resolve(&json!({"file": dir.0.join("sub").to_str().unwrap()})),
        Err(Error::NotRegular(_))
    ));

    // Meridian's own key file, even inside the directory.
    let own = dir.file("ca.key", b"k");
    let denied = rules.clone().deny([PathBuf::from(&own)]);
    let msg = refused(denied.check(&json!({"file": own})));
    assert!(msg.contains("own key files"), "{msg}");

    assert!(matches!(
        rules.resolve(&json!({"file": dir.0.join("missing").to_str().unwrap()})),
        Err(Error::File { .. })
    ));
    // An empty secret is never usable (an empty webhook secret would let
    // anyone sign).
    let empty = dir.file("empty", b" \n");
    assert!(matches!(
        rules.resolve(&json!({"file": empty})),
        Err(Error::Empty(_))
    ));
}

#[test]
fn environment_variables_need_the_prefix() {
    let rules = Rules::new("MERIDIAN_TEST_SECRETS_", vec![]).unwrap();
    // Set by the test harness environment? No: read a variable every
    // process has under a name the rules refuse, and one they allow but
    // which is unset.
    assert!(refused(rules.check(&json!({"env": "PATH"}))).contains("MERIDIAN_TEST_SECRETS_"));
    assert!(matches!(
        rules.resolve(&json!({"env": "MERIDIAN_TEST_SECRETS_SURELY_UNSET"})),
        Err(Error::MissingEnv(_))
    ));
    // Even a prefix that would cover them never exposes these.
    let broad = Rules::new("MERIDIAN_", vec![]).unwrap();
    assert!(broad.check(&json!({"env": "MERIDIAN_CA_KEY"})).is_err());
    assert!(broad.check(&json!({"env": "MERIDIAN_OTHER"})).is_ok());
}

#[test]
fn the_process_rules_default_and_can_be_installed() {
    // Only this test touches the global, so it cannot race another test.
    assert_eq!(*rules(), Rules::default());
    let dir = Dir::new("global");
    let f = dir.file("k", b"v");
    assert!(check(&json!({"file": f})).is_err());
    install(Rules::new("X_", vec![dir.0.clone()]).unwrap());
    assert_eq!(resolve(&json!({"file": f})).unwrap().expose(), "v");
    install(Rules::default());
}

/// The typed form (held by DNS provider settings) is the same JSON as the
/// untyped one, and resolving it applies the same rules.
#[test]
fn a_typed_reference_is_the_same_json_under_the_same_rules() {
    for v in [
        json!({"env": "MERIDIAN_SECRET_K"}),
        json!({"file": "/var/run/secrets/k"}),
    ] {
        let r: Reference = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(r, parse(&v).unwrap());
        assert_eq!(serde_json::to_value(&r).unwrap(), v);
    }
    for bad in [
        json!("plain"),
        json!({"env": "lower"}),
        json!({"file": "rel"}),
        json!({"env": "A", "file": "/b"}),
    ] {
        let e = serde_json::from_value::<Reference>(bad.clone()).unwrap_err();
        assert!(e.to_string().contains("never stored"), "{bad}: {e}");
    }
    let dir = Dir::new("typed");
    let path = dir.file("token", b"s3cret\n");
    let rules = Rules::new("MERIDIAN_SECRET_", vec![dir.0.clone()]).unwrap();
    let typed = Reference::File(PathBuf::from(&path));
    assert_eq!(rules.resolve_reference(&typed).unwrap().expose(), "s3cret");
    let own = Reference::Env("DATABASE_URL".into());
    assert!(matches!(
        rules.resolve_reference(&own),
        Err(Error::Refused { .. })
    ));
}
