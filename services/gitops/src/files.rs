//! Policy files of a repository (or a directory): which files count, and
//! turning their bytes into validated policies with every error at once.
//!
//! Pure: takes `(path, bytes)` pairs, so the sync (files from git objects)
//! and the CLI (files from disk) share it and tests need no repository.

use std::collections::BTreeMap;

use meridian_policy::{decode, validate, Format, Policy};
use serde::Serialize;
use serde_json::Value;

/// One problem in one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileError {
    /// Path relative to the repository's (or directory's) root.
    pub file: String,
    /// 1-based line: exact for syntax errors, the document's first line otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based index of the document in a multi-document file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    /// Wire path of the field, e.g. `spec.zones[0].weight`; empty for the whole document.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(doc) = self.document {
            write!(f, " (document {doc})")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A policy read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub file: String,
    pub document: usize,
    pub policy: Policy,
}

/// Whether a path is a policy file (`*.yaml`, `*.yml`, `*.json`).
pub fn is_policy_file(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")
}

/// Parses and validates every document of every file. `Err` lists every
/// problem, including names or hosts defined twice; then nothing may be
/// applied. Files are read in path order, so errors come in a stable order.
pub fn parse(files: &[(String, Vec<u8>)]) -> Result<Vec<Loaded>, Vec<FileError>> {
    let mut sorted: Vec<&(String, Vec<u8>)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut errors = Vec::new();
    let mut loaded = Vec::new();
    for (file, bytes) in sorted {
        parse_file(file, bytes, &mut loaded, &mut errors);
    }
    // Two documents claiming one name or host: the second is the error.
    let mut names: BTreeMap<&str, &Loaded> = BTreeMap::new();
    let mut hosts: BTreeMap<&str, &Loaded> = BTreeMap::new();
    for l in &loaded {
        let at = |field: &str, message: String| FileError {
            file: l.file.clone(),
            line: None,
            document: Some(l.document),
            field: field.to_owned(),
            message,
        };
        if let Some(first) = names.insert(&l.policy.metadata.name, l) {
            errors.push(at(
                "metadata.name",
                format!(
                    "policy {:?} is also defined in {} (document {})",
                    l.policy.metadata.name, first.file, first.document
                ),
            ));
        } else if let Some(first) = hosts.insert(&l.policy.spec.host, l) {
            errors.push(at(
                "spec.host",
                format!(
                    "host {:?} is also used by policy {:?} in {}",
                    l.policy.spec.host, first.policy.metadata.name, first.file
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors)
    }
}

fn parse_file(file: &str, bytes: &[u8], loaded: &mut Vec<Loaded>, errors: &mut Vec<FileError>) {
    let err = |line, document, field: &str, message: String| FileError {
        file: file.to_owned(),
        line,
        document,
        field: field.to_owned(),
        message,
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        errors.push(err(None, None, "", "not UTF-8 text".to_owned()));
        return;
    };
    let json = file.to_ascii_lowercase().ends_with(".json");
    // (document value, its first line)
    let mut docs: Vec<(Value, Option<usize>)> = Vec::new();
    if json {
        match decode::parse_value(bytes, Format::Json) {
            Ok(v) => docs.push((v, Some(1))),
            Err(e) => {
                let line = match serde_json::from_slice::<Value>(bytes) {
                    Err(je) => Some(je.line()),
                    Ok(_) => None,
                };
                errors.push(err(line, None, "", e.to_string()));
                return;
            }
        }
    } else {
        let starts = document_starts(text);
        for (index, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let value = match <Value as serde::Deserialize>::deserialize(doc) {
                Ok(v) => v,
                Err(e) => {
                    let line = e.location().map(|l| l.line());
                    errors.push(err(
                        line,
                        Some(index + 1),
                        "",
                        format!("malformed YAML: {e}"),
                    ));
                    return;
                }
            };
            let start = starts.get(index).copied();
            if !value.is_null() {
                docs.push((value, start));
            }
        }
    }
    let many = docs.len() > 1;
    for (i, (value, line)) in docs.into_iter().enumerate() {
        let document = i + 1;
        let shown_doc = many.then_some(document);
        let mut policy = match decode::from_value(value) {
            Ok(p) => p,
            Err(decode::DecodeError::Invalid(f)) => {
                errors.push(err(line, shown_doc, &f.field, f.message));
                continue;
            }
            Err(e) => {
                errors.push(err(line, shown_doc, "", e.to_string()));
                continue;
            }
        };
        policy.metadata.clear_server_fields();
        if let Err(problems) = validate(&policy) {
            for p in problems {
                errors.push(err(line, shown_doc, &p.field, p.message));
            }
            continue;
        }
        loaded.push(Loaded {
            file: file.to_owned(),
            document,
            policy,
        });
    }
}

/// First line of each YAML document, in the order the parser yields them
/// (empty documents included): line 1, then the line after each `---`,
/// except that a leading `---` with nothing but comments before it opens
/// the first document rather than ending an empty one.
fn document_starts(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut content_seen = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.starts_with("---") {
            starts.push(n + 1);
            content_seen = true;
            continue;
        }
        let t = line.trim();
        if !t.is_empty() && !t.starts_with('#') && !content_seen {
            starts.push(1);
            content_seen = true;
        }
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str, host: &str, weight: &str) -> String {
        format!(
            "metadata: {{name: {name}}}\nspec:\n  host: {host}\n  port: 8080\n  zones:\n    - {{name: a, weight: {weight}, endpoints: [{{address: 127.0.0.1, port: 80}}]}}\n"
        )
    }

    fn files(list: &[(&str, String)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(p, t)| (p.to_string(), t.clone().into_bytes()))
            .collect()
    }

    #[test]
    fn policy_files_by_extension() {
        for (path, want) in [
            ("a.yaml", true),
            ("x/b.YML", true),
            ("c.json", true),
            ("README.md", false),
            ("yaml", false),
        ] {
            assert_eq!(is_policy_file(path), want, "{path}");
        }
    }

    #[test]
    fn reads_multi_document_yaml_and_json() {
        let two = format!(
            "{}---\n{}",
            doc("a", "a.example.com", "100"),
            doc("b", "b.example.com", "100")
        );
        let json = r#"{"metadata":{"name":"c"},"spec":{"host":"c.example.com","port":1,"zones":[{"name":"z","weight":100,"endpoints":[{"address":"127.0.0.1","port":2}]}]}}"#;
        let got = parse(&files(&[("p/two.yaml", two), ("c.json", json.into())])).unwrap();
        let names: Vec<&str> = got
            .iter()
            .map(|l| l.policy.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["c", "a", "b"]);
        assert_eq!(got[2].document, 2);
    }

    #[test]
    fn every_error_is_listed_with_file_line_and_field() {
        let bad_weight = format!(
            "{}---\n{}",
            doc("ok", "ok.example.com", "100"),
            doc("w", "w.example.com", "lots")
        );
        let bad_rules = doc("Bad_Name", "x.example.com", "70");
        let broken = "metadata: [1, 2\n".to_owned();
        let dup = doc("ok", "other.example.com", "100");
        let errors = parse(&files(&[
            ("a.yaml", bad_weight),
            ("b.yaml", bad_rules),
            ("c.yml", broken),
            ("d.yaml", dup),
        ]))
        .unwrap_err();
        let summary: Vec<(String, Option<usize>, String)> = errors
            .iter()
            .map(|e| (e.file.clone(), e.line, e.field.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a.yaml".into(), Some(8), "spec.zones[0].weight".into()),
                ("b.yaml".into(), Some(1), "metadata.name".into()),
                ("b.yaml".into(), Some(1), "spec.zones".into()),
                ("c.yml".into(), Some(2), "".into()),
                ("d.yaml".into(), None, "metadata.name".into()),
            ],
            "{errors:#?}"
        );
        assert!(errors[4].message.contains("also defined in a.yaml"));
    }

    #[test]
    fn duplicate_host_is_an_error() {
        let errors = parse(&files(&[
            ("a.yaml", doc("a", "same.example.com", "100")),
            ("b.yaml", doc("b", "same.example.com", "100")),
        ]))
        .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].file, "b.yaml");
        assert_eq!(errors[0].field, "spec.host");
    }
}
