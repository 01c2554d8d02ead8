//! schemathesis (from PyPI) fuzzes the REST API from its own OpenAPI
//! document: no request may get a server error, and every response must
//! match the document. It found a panic on non-ASCII continue tokens. Every
//! /api/v1 route but the event stream is in the document (a unit test in
//! services/api checks that).

use std::time::Duration;

use meridian_test_support::{database, process::Meridian, repo_root};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_response_off_the_schema() {
    let schemathesis = repo_root().join(".venv/bin/schemathesis");
    assert!(
        schemathesis.is_file(),
        "{} is missing: run scripts/install-deps --test",
        schemathesis.display()
    );
    let db = database().await;
    // No health or failover role: the fuzzer invents endpoint addresses and
    // DNS providers, which those roles would contact (tests keep their
    // traffic on loopback). The xds role only listens, and without it
    // /api/v1/xds/clients answers 503 by design.
    let m =
        Meridian::start_with(BIN.as_ref(), &db.url, &[("MERIDIAN_ROLES", "api,xds")], &[]).await;
    let run = tokio::process::Command::new(&schemathesis)
        .arg("run")
        .arg(m.url("/openapi.json"))
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--max-examples", "60", "--no-color"])
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(900), run)
        .await
        .expect("schemathesis finished within 15 minutes")
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let summary: String = report
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        out.status.success(),
        "schemathesis failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("passed"),
        "schemathesis ran no test:\n{summary}"
    );
    eprintln!("{summary}");
    m.stop().await;
}
