//! `meridian validate`, `meridian diff` and `meridian apply --prune`: the
//! commands a policy repository's CI runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use meridian_gitops::files::{self, FileError};
use meridian_gitops::plan::{render, Change};
use serde_json::{json, Value};

/// Every policy file under `path` (or `path` itself), as `(path relative
/// to it, bytes)`.
pub fn read_files(path: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(vec![(path.display().to_string(), bytes)]);
    }
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let p = entry?.path();
            if p.is_dir() {
                // Never descend into the repository's own metadata.
                if p.file_name().is_some_and(|n| n != ".git") {
                    stack.push(p);
                }
                continue;
            }
            let rel = p.strip_prefix(path).unwrap_or(&p).display().to_string();
            if files::is_policy_file(&rel) {
                let bytes =
                    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                out.push((rel, bytes));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Parses and validates every file, offline.
pub fn load(path: &Path) -> anyhow::Result<Result<Vec<Value>, Vec<FileError>>> {
    let files = read_files(path)?;
    Ok(files::parse(&files).map(|loaded| {
        loaded
            .into_iter()
            .map(|l| serde_json::to_value(&l.policy).expect("a policy serializes"))
            .collect()
    }))
}

fn errors_to_message(errors: &[FileError]) -> String {
    let mut m = format!("{} problem(s):", errors.len());
    for e in errors {
        m.push_str(&format!("\n  {e}"));
    }
    m
}

pub fn validate(path: &Path) -> anyhow::Result<()> {
    let files = read_files(path)?;
    match files::parse(&files) {
        Ok(loaded) => {
            println!(
                "{} policies in {} files are valid",
                loaded.len(),
                files.len()
            );
            Ok(())
        }
        Err(errors) => bail!(errors_to_message(&errors)),
    }
}

/// Sends the directory to the server's atomic apply; `dry_run` only plans.
/// With `source`, plans as that GitOps source's sync would.
async fn plan(
    server: &str,
    path: &Path,
    prune: bool,
    dry_run: bool,
    source: Option<&str>,
) -> anyhow::Result<Value> {
    let items = match load(path)? {
        Ok(items) => items,
        Err(errors) => bail!(errors_to_message(&errors)),
    };
    let url = format!("{}/api/v1/gitops/apply", server.trim_end_matches('/'));
    let mut request = reqwest::Client::new().post(url);
    match source {
        Some(name) => request = request.query(&[("source", name), ("dryRun", "true")]),
        None => request = request.query(&[("prune", prune), ("dryRun", dry_run)]),
    }
    let response = request
        .json(&json!({ "items": items }))
        .send()
        .await
        .context("cannot reach the Meridian server")?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let mut m = format!(
            "{status}: {}",
            body["message"].as_str().unwrap_or("no error message")
        );
        for d in body["details"].as_array().into_iter().flatten() {
            m.push_str(&format!(
                "\n  {}: {}",
                d["field"].as_str().unwrap_or(""),
                d["message"].as_str().unwrap_or("")
            ));
        }
        bail!(m);
    }
    Ok(body["plan"].clone())
}

fn print_plan(plan: &Value) {
    let names = |k: &str| -> Vec<String> {
        plan[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    for name in names("create") {
        println!("create {name}");
    }
    for u in plan["update"].as_array().into_iter().flatten() {
        println!("update {}", u["name"].as_str().unwrap_or(""));
        let changes: Vec<Change> = serde_json::from_value(u["changes"].clone()).unwrap_or_default();
        for line in render(&changes) {
            println!("    {line}");
        }
    }
    for name in names("delete") {
        println!("delete {name}");
    }
    let c = &plan["counts"];
    println!(
        "plan: {} to create, {} to update, {} to delete, {} unchanged",
        c["create"], c["update"], c["delete"], c["unchanged"]
    );
}

pub async fn diff(
    server: &str,
    path: &Path,
    prune: bool,
    source: Option<&str>,
) -> anyhow::Result<()> {
    let plan = plan(server, path, prune, true, source).await?;
    print_plan(&plan);
    Ok(())
}

pub async fn apply(server: &str, path: &Path) -> anyhow::Result<()> {
    let plan = plan(server, path, true, false, None).await?;
    print_plan(&plan);
    println!("applied in one transaction");
    Ok(())
}
