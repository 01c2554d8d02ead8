//! Whatever a client or a policy repository sends, decoding, validation
//! and merge patching answer with a value or an error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_policy::{decode, merge_patch, validate, Format};

fuzz_target!(|data: &[u8]| {
    for format in [Format::Json, Format::Yaml] {
        if let Ok(policy) = decode::from_bytes(data, format) {
            let _ = validate(&policy);
            // A valid policy patched with itself is still itself.
            let mut doc = serde_json::to_value(&policy).expect("a policy serializes");
            let patch = doc.clone();
            merge_patch::apply(&mut doc, &patch);
            assert_eq!(decode::from_value(doc).ok().as_ref(), Some(&policy));
        }
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = decode::parse_documents(text, format);
        }
    }
});
