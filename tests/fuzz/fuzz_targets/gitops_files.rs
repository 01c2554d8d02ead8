//! Whatever a policy repository holds, reading its files answers with the
//! policies or with every error (file, line, field), never a panic. The
//! input is split into files at NUL bytes, so one run can hold several
//! files with names the fuzzer chooses.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_gitops::files::{is_policy_file, parse};

fuzz_target!(|data: &[u8]| {
    let mut files = Vec::new();
    let mut parts = data.split(|b| *b == 0);
    while let (Some(name), Some(body)) = (parts.next(), parts.next()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if is_policy_file(&name) {
            files.push((name, body.to_vec()));
        }
    }
    // A refusal always says why.
    if let Err(errors) = parse(&files) {
        assert!(!errors.is_empty());
    }
});
