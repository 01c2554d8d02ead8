//! Whatever a client sends as DNS provider settings or a credential
//! reference, validation and the secret rules answer with a value or an
//! error, never a panic; and a reference the rules accept never names a
//! path with `..` or a shell metacharacter, nor a variable outside the
//! prefix.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_policy::provider::{validate_provider, KINDS};
use meridian_secrets::{Reference, Rules};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for kind in KINDS {
        let _ = validate_provider("fuzz", kind, &value);
    }
    let rules = Rules::default();
    let candidates = std::iter::once(&value).chain(value.as_object().into_iter().flat_map(|m| m.values()));
    for v in candidates {
        match rules.check(v) {
            Ok(Reference::Env(name)) => assert!(name.starts_with(rules.env_prefix())),
            Ok(Reference::File(path)) => {
                let text = path.to_str().unwrap();
                assert!(!text.split('/').any(|c| c == ".." || c == "."), "{text}");
                assert!(!text.contains([';', '$', '`', ' ', '\'', '"', '\n']), "{text}");
                assert!(rules.dirs().iter().any(|d| path.starts_with(d)), "{text}");
            }
            Err(_) => {}
        }
    }
});
