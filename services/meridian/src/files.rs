//! Policy documents on disk: one file, or every *.yaml/*.yml/*.json under a directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use meridian_policy::{decode, validate, Format, Policy};

/// Reads, decodes and validates every document; fails on the first bad one
/// with its file and field, so nothing is applied from a broken set.
pub fn load(path: &Path) -> anyhow::Result<Vec<(PathBuf, Policy)>> {
    let mut paths = Vec::new();
    collect(path, &mut paths)?;
    paths.sort();
    let mut out = Vec::new();
    for file in paths {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let format = if file.extension().is_some_and(|e| e == "json") {
            Format::Json
        } else {
            Format::Yaml
        };
        let docs =
            decode::parse_documents(&text, format).with_context(|| file.display().to_string())?;
        for (i, doc) in docs.into_iter().enumerate() {
            let at = || format!("{} (document {})", file.display(), i + 1);
            let mut policy = decode::from_value(doc).with_context(at)?;
            policy.metadata.clear_server_fields();
            if let Err(errors) = validate(&policy) {
                let list: Vec<String> = errors
                    .iter()
                    .map(|e| format!("  {}: {}", e.field, e.message))
                    .collect();
                bail!("{}: invalid policy:\n{}", at(), list.join("\n"));
            }
            out.push((file.clone(), policy));
        }
    }
    Ok(out)
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_file() {
        out.push(path.to_owned());
        return Ok(());
    }
    for entry in std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
        let p = entry?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if p
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            out.push(p);
        }
    }
    Ok(())
}
