//! The plan of a sync: what to create, update and delete so that the
//! policies in scope become what a commit says. Pure: the caller reads the
//! current state (under lock) and applies the plan.

use std::collections::{BTreeMap, BTreeSet};

use meridian_policy::Policy;
use meridian_store::gitops::Current;
use serde::Serialize;
use serde_json::Value;

/// Who plans: a GitOps source, or the API (`meridian apply`), which may
/// touch only policies no source owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Planner<'a> {
    Source { name: &'a str, adopt: bool },
    Api,
}

/// A field that differs, by wire path: `old` absent means added, `new`
/// absent means removed.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub policy: Policy,
    pub changes: Vec<Change>,
    /// The policy was created through the API and the source adopts it.
    pub adopt: bool,
    /// The stored version was written by someone else (a forced API edit):
    /// this update restores the repository's version.
    pub restore: bool,
}

/// Everything one apply does, each list in name order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<Policy>,
    pub update: Vec<Update>,
    pub delete: Vec<String>,
    pub unchanged: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }

    /// The plan as recorded with a sync and returned by the API.
    pub fn summary(&self) -> Value {
        let names = |v: Vec<&str>| Value::from(v);
        serde_json::json!({
            "counts": {
                "create": self.create.len(),
                "update": self.update.len(),
                "delete": self.delete.len(),
                "unchanged": self.unchanged.len(),
            },
            "create": names(self.create.iter().map(|p| p.metadata.name.as_str()).collect()),
            "update": self.update.iter().map(|u| serde_json::json!({
                "name": u.policy.metadata.name,
                "changes": u.changes,
                "adopt": u.adopt,
                "restore": u.restore,
            })).collect::<Vec<_>>(),
            "delete": self.delete,
        })
    }
}

/// A reason the plan cannot be applied (another owner, an API policy not adopted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    pub name: String,
    pub message: String,
}

/// Computes the plan. `current` holds every stored policy named in
/// `desired` plus every policy in the planner's scope (owned by the source,
/// or by no source for the API). `prune` deletes in-scope policies that
/// `desired` no longer names. `Err` lists every conflict.
pub fn compute(
    planner: Planner<'_>,
    desired: &[Policy],
    current: &[Current],
    prune: bool,
) -> Result<Plan, Vec<Conflict>> {
    let by_name: BTreeMap<&str, &Current> = current
        .iter()
        .map(|c| (c.policy.metadata.name.as_str(), c))
        .collect();
    let mut desired: Vec<&Policy> = desired.iter().collect();
    desired.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut plan = Plan::default();
    let mut conflicts = Vec::new();
    for want in &desired {
        let name = want.metadata.name.as_str();
        let Some(have) = by_name.get(name) else {
            plan.create.push((*want).clone());
            continue;
        };
        let mut adopt = false;
        match (planner, have.owner.as_deref()) {
            (Planner::Source { name: me, .. }, Some(owner)) if owner == me => {}
            (Planner::Source { adopt: true, .. }, None) => adopt = true,
            (Planner::Source { .. }, None) => {
                conflicts.push(Conflict {
                    name: name.to_owned(),
                    message: format!(
                        "policy {name:?} exists and is managed through the API; \
                         set adopt: true on the source to take it over"
                    ),
                });
                continue;
            }
            (_, Some(owner)) => {
                conflicts.push(Conflict {
                    name: name.to_owned(),
                    message: format!("policy {name:?} is owned by GitOps source {owner:?}"),
                });
                continue;
            }
            (Planner::Api, None) => {}
        }
        let changes = diff_policies(&have.policy, want);
        if changes.is_empty() && !adopt {
            plan.unchanged.push(name.to_owned());
            continue;
        }
        let restore = match planner {
            Planner::Source { name: me, .. } if !adopt => !have
                .policy
                .metadata
                .source
                .as_deref()
                .unwrap_or_default()
                .starts_with(&meridian_store::gitops_origin(me)),
            _ => false,
        };
        plan.update.push(Update {
            policy: (*want).clone(),
            changes,
            adopt,
            restore,
        });
    }
    if prune {
        let wanted: BTreeSet<&str> = desired.iter().map(|p| p.metadata.name.as_str()).collect();
        for c in current {
            let in_scope = match planner {
                Planner::Source { name: me, .. } => c.owner.as_deref() == Some(me),
                Planner::Api => c.owner.is_none(),
            };
            let name = c.policy.metadata.name.as_str();
            if in_scope && !wanted.contains(name) {
                plan.delete.push(name.to_owned());
            }
        }
        plan.delete.sort();
    }
    if conflicts.is_empty() {
        Ok(plan)
    } else {
        Err(conflicts)
    }
}

/// What differs between a stored policy and a desired one: labels and spec,
/// compared on their wire form (defaults filled in on both sides).
pub fn diff_policies(have: &Policy, want: &Policy) -> Vec<Change> {
    let mut out = Vec::new();
    if have.metadata.labels != want.metadata.labels {
        diff(
            "metadata.labels",
            &serde_json::to_value(&have.metadata.labels).unwrap_or_default(),
            &serde_json::to_value(&want.metadata.labels).unwrap_or_default(),
            &mut out,
        );
    }
    if have.spec != want.spec {
        diff(
            "spec",
            &serde_json::to_value(&have.spec).unwrap_or_default(),
            &serde_json::to_value(&want.spec).unwrap_or_default(),
            &mut out,
        );
    }
    out
}

/// Leaf-by-leaf difference of two JSON values; arrays by index.
pub fn diff(path: &str, old: &Value, new: &Value, out: &mut Vec<Change>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff(&p, x, y, out),
                    (x, y) => out.push(Change {
                        path: p,
                        old: x.cloned(),
                        new: y.cloned(),
                    }),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let p = format!("{path}[{i}]");
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => diff(&p, x, y, out),
                    (x, y) => out.push(Change {
                        path: p,
                        old: x.cloned(),
                        new: y.cloned(),
                    }),
                }
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(Change {
            path: path.to_owned(),
            old: Some(a.clone()),
            new: Some(b.clone()),
        }),
    }
}

/// A readable rendering of changes, one line each: `~ path: old -> new`,
/// `+ path: new`, `- path: old`.
pub fn render(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match (&c.old, &c.new) {
            (Some(o), Some(n)) => format!("~ {}: {o} -> {n}", c.path),
            (None, Some(n)) => format!("+ {}: {n}", c.path),
            (Some(o), None) => format!("- {}: {o}", c.path),
            (None, None) => format!("? {}", c.path),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_policy::{decode, Format};

    fn policy(name: &str, port: u32, source: &str) -> Policy {
        let text = format!(
            "metadata: {{name: {name}}}\nspec:\n  host: {name}.example.com\n  port: {port}\n  zones:\n    - {{name: a, weight: 100, endpoints: [{{address: 127.0.0.1, port: 80}}]}}\n"
        );
        let mut p = decode::from_bytes(text.as_bytes(), Format::Yaml).unwrap();
        p.metadata.source = Some(source.to_owned());
        p
    }

    fn current(name: &str, port: u32, owner: Option<&str>, source: &str) -> Current {
        Current {
            policy: policy(name, port, source),
            owner: owner.map(str::to_owned),
        }
    }

    fn names(plan: &Plan) -> (Vec<&str>, Vec<&str>, Vec<&str>, Vec<&str>) {
        (
            plan.create
                .iter()
                .map(|p| p.metadata.name.as_str())
                .collect(),
            plan.update
                .iter()
                .map(|u| u.policy.metadata.name.as_str())
                .collect(),
            plan.delete.iter().map(String::as_str).collect(),
            plan.unchanged.iter().map(String::as_str).collect(),
        )
    }

    const ME: Planner<'static> = Planner::Source {
        name: "team",
        adopt: false,
    };

    #[test]
    fn create_update_delete_and_unchanged() {
        let desired = [
            policy("new", 1, ""),
            policy("same", 2, ""),
            policy("moved", 9, ""),
        ];
        let cur = [
            current("same", 2, Some("team"), "gitops:team@aaa"),
            current("moved", 3, Some("team"), "gitops:team@aaa"),
            current("gone", 4, Some("team"), "gitops:team@aaa"),
            current("theirs", 5, Some("other"), "gitops:other@bbb"),
            current("api", 6, None, "api"),
        ];
        let plan = compute(ME, &desired, &cur, true).unwrap();
        assert_eq!(
            names(&plan),
            (vec!["new"], vec!["moved"], vec!["gone"], vec!["same"])
        );
        let u = &plan.update[0];
        assert_eq!(render(&u.changes), vec!["~ spec.port: 3 -> 9".to_owned()]);
        assert!(!u.restore && !u.adopt);
        // Without prune nothing is deleted.
        let plan = compute(ME, &desired, &cur, false).unwrap();
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn other_owners_and_api_policies_are_conflicts() {
        let desired = [policy("theirs", 1, ""), policy("api", 1, "")];
        let cur = [
            current("theirs", 5, Some("other"), "gitops:other@bbb"),
            current("api", 6, None, "api"),
        ];
        let err = compute(ME, &desired, &cur, true).unwrap_err();
        assert_eq!(err.len(), 2);
        assert!(err[0].message.contains("adopt"), "{}", err[0].message);
        assert!(err[1].message.contains("\"other\""), "{}", err[1].message);

        // With adopt, the API policy is taken over, even with an equal spec.
        let adopt = Planner::Source {
            name: "team",
            adopt: true,
        };
        let cur = [current("api", 1, None, "api")];
        let plan = compute(adopt, &[policy("api", 1, "")], &cur, true).unwrap();
        assert_eq!(plan.update.len(), 1);
        assert!(plan.update[0].adopt && plan.update[0].changes.is_empty());
    }

    #[test]
    fn a_forced_edit_is_restored() {
        let cur = [current("p", 7, Some("team"), "api")];
        let plan = compute(ME, &[policy("p", 1, "")], &cur, true).unwrap();
        assert!(plan.update[0].restore);
    }

    #[test]
    fn the_api_plans_only_unowned_policies() {
        let cur = [
            current("mine", 1, None, "api"),
            current("old", 1, None, "api"),
            current("git", 1, Some("team"), "gitops:team@a"),
        ];
        let plan = compute(Planner::Api, &[policy("mine", 2, "")], &cur, true).unwrap();
        assert_eq!(names(&plan), (vec![], vec!["mine"], vec!["old"], vec![]));
        let err = compute(Planner::Api, &[policy("git", 2, "")], &cur, false).unwrap_err();
        assert_eq!(err[0].name, "git");
    }

    #[test]
    fn diff_of_arrays_and_objects() {
        let mut out = Vec::new();
        diff(
            "spec",
            &serde_json::json!({"a": [1, 2], "b": {"c": 1}}),
            &serde_json::json!({"a": [1], "b": {"c": 1, "d": "x"}}),
            &mut out,
        );
        assert_eq!(
            render(&out),
            vec!["- spec.a[1]: 2".to_owned(), "+ spec.b.d: \"x\"".to_owned()]
        );
    }
}
