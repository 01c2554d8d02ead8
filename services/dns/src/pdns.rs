//! PowerDNS Authoritative, through its HTTP API.
//!
//! PowerDNS has no weighted record sets, so Meridian's per-zone records
//! become one of two shapes (see [`PdnsConfig::use_lua`]):
//!
//! * **plain**: an A / AAAA (or single CNAME) RRset holding the targets of
//!   the zones whose weight is above 0. Resolvers spread load roughly evenly
//!   over them; weights only decide who is in. A failed zone stops being
//!   answered.
//! * **LUA** (needs `enable-lua-records=yes`): one `LUA` RRset with one
//!   record per address type, `A "pickwrandom({{70, '192.0.2.10'}, ...})"`,
//!   so every answer is drawn by weight. CNAME targets are refused
//!   ([`Error::Invalid`]): `pickwrandom` picks addresses.
//!
//! In both shapes, when every zone is at weight 0 all targets are published
//! (fail open, as Route 53 does): answering with something beats NXDOMAIN.
//!
//! **Mapping back.** Neither shape records which zone a target belongs to,
//! nor the zones at weight 0, and the plain shape drops weights. So every
//! RRset Meridian writes carries a comment, `meridian/v1 <JSON records>`,
//! with the full desired records. [`Provider::read`] decodes the *live*
//! contents (targets and, for LUA, weights), names them by the comment
//! (unknown targets come back as `unmanaged:<target>` records, which the
//! diff deletes), adds the weight-0 zones from the comment, then re-renders
//! what it decoded: if that is not exactly the live data (hand edits the
//! decoding cannot express), it adds an `unmanaged:drift` record. Hence a
//! reconcile is a no-op exactly when the live RRsets are what the desired
//! records render to, and drift of any kind is rewritten.
//!
//! **Ownership.** Beside the records, a TXT RRset at `_meridian.<name>`
//! holds one mark per zone naming the installation, policy and zone
//! ([`crate::desired::ownership_text`]). Meridian owns the A, AAAA, CNAME
//! and LUA RRsets of a name only when that TXT RRset holds its mark (or,
//! for names written before marks existed, when the RRsets carry the
//! `meridian/v1` comment and no mark of anyone): [`Provider::apply`]
//! replaces them, and the marks, in one PATCH (atomic in PowerDNS),
//! deleting the ones the desired records do not render to. Records at a
//! name Meridian does not own are reported as foreign and never written
//! over (an RRset is the unit PowerDNS writes, so any of them is in the
//! way); removing a policy deletes its RRsets and marks, and nothing else.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::desired::{
    classify_target, fqdn, ownership_name, ownership_text, parse_ownership, Change, Granularity,
    Held, Owner, Record, RecordKind,
};
use crate::provider::{excerpt, submit, Error, Fence, Provider, CALL_TIMEOUT};

const KIND: &str = "pdns";
const COMMENT_PREFIX: &str = "meridian/v1 ";
const COMMENT_ACCOUNT: &str = "meridian";
const MANAGED_TYPES: [&str; 4] = ["A", "AAAA", "CNAME", "LUA"];
const UNMANAGED_PREFIX: &str = "unmanaged:";
/// TTL of the ownership marks; nothing resolves them in the hot path.
const MARK_TTL: u32 = 300;

/// A PowerDNS API key.
pub type ApiKey = crate::provider::Secret;

/// Where and how to publish in PowerDNS.
#[derive(Clone, Debug)]
pub struct PdnsConfig {
    /// Base URL of the webserver, e.g. `http://127.0.0.1:8081`.
    pub api_url: String,
    pub api_key: ApiKey,
    /// The PowerDNS zone holding the names, e.g. `example.com.`.
    pub zone: String,
    /// Weighted answers through a LUA record (`pickwrandom`) instead of a
    /// plain RRset of the healthy targets. The server needs
    /// `enable-lua-records=yes`.
    pub use_lua: bool,
}

/// [`Provider`] for PowerDNS Authoritative (HTTP API v1, server `localhost`).
#[derive(Clone, Debug)]
pub struct PdnsProvider {
    config: PdnsConfig,
    zone: String,
    client: reqwest::Client,
}

impl PdnsProvider {
    /// Builds the HTTP client; makes no request.
    pub fn new(config: PdnsConfig) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            // A hung API must surface as Unavailable well inside the
            // failover lease, not stall reconciles.
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(1))
            .build()
            .map_err(|e| Error::Invalid(format!("building the PowerDNS HTTP client: {e}")))?;
        let zone = fqdn(&config.zone);
        Ok(Self {
            config,
            zone,
            client,
        })
    }

    fn zone_url(&self) -> String {
        format!(
            "{}/api/v1/servers/localhost/zones/{}",
            self.config.api_url.trim_end_matches('/'),
            self.zone
        )
    }

    fn check_name(&self, name: &str) -> Result<String, Error> {
        let name = fqdn(name);
        if name == self.zone || name.ends_with(&format!(".{}", self.zone)) {
            Ok(name)
        } else {
            Err(Error::Invalid(format!(
                "{name} is not in the PowerDNS zone {}",
                self.zone
            )))
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        let resp = req
            .header("X-API-Key", self.config.api_key.expose())
            .send()
            .await
            .map_err(|e| {
                if e.is_builder() {
                    Error::Invalid(format!("PowerDNS request: {e}"))
                } else {
                    unavailable(format!("{e}"))
                }
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        // PowerDNS explains refusals as {"error": "..."}.
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(body);
        let message = excerpt(&message);
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Err(unavailable(format!("HTTP {status}: {message}")))
        } else {
            Err(Error::Rejected {
                provider: KIND,
                status: status.as_u16(),
                message,
            })
        }
    }
}

fn unavailable(message: String) -> Error {
    Error::Unavailable {
        provider: KIND,
        message,
    }
}

impl Provider for PdnsProvider {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn granularity(&self) -> Granularity {
        Granularity::WholeName
    }

    async fn read(&self, name: &str, owner: &Owner) -> Result<Held, Error> {
        let name = self.check_name(name)?;
        let marks_at = ownership_name(&name);
        let zone: ApiZone = self
            .send(self.client.get(self.zone_url()))
            .await?
            .json()
            .await
            .map_err(|e| Error::Invalid(format!("PowerDNS zone response: {e}")))?;
        let mut live = Vec::new();
        let mut written = None;
        // None: no marks at all; Some(ours?).
        let mut marked: Option<bool> = None;
        for rrset in zone.rrsets {
            if fqdn(&rrset.name) == marks_at && rrset.rtype == "TXT" {
                let marks: Vec<_> = rrset
                    .records
                    .iter()
                    .filter_map(|r| parse_ownership(&r.content))
                    .collect();
                if !marks.is_empty() {
                    marked = Some(marks.iter().any(|m| m.owner == owner.id));
                }
                continue;
            }
            if fqdn(&rrset.name) != name || !MANAGED_TYPES.contains(&rrset.rtype.as_str()) {
                continue;
            }
            if written.is_none() {
                written = rrset
                    .comments
                    .iter()
                    .find_map(|c| parse_comment(&c.content));
            }
            let contents: BTreeSet<String> = rrset
                .records
                .into_iter()
                .filter(|r| !r.disabled)
                .map(|r| r.content)
                .collect();
            if !contents.is_empty() {
                live.push(RRset {
                    rtype: rrset.rtype,
                    ttl: rrset.ttl,
                    contents,
                });
            }
        }
        live.sort();
        // Marked as ours, or (before marks existed) written by Meridian.
        let owned = marked.unwrap_or(written.is_some());
        if !owned {
            let foreign = live
                .iter()
                .flat_map(|rrset| {
                    let kind = RecordKind::parse(&rrset.rtype).unwrap_or(RecordKind::A);
                    let name = &name;
                    rrset.contents.iter().map(move |c| Record {
                        name: name.clone(),
                        kind,
                        set_id: format!("{} RRset", rrset.rtype),
                        weight: 0,
                        target: c.clone(),
                        ttl: rrset.ttl,
                    })
                })
                .collect();
            return Ok(Held {
                owned: Vec::new(),
                foreign,
            });
        }
        let mut owned = decode(
            &name,
            &live,
            &written.unwrap_or_default(),
            self.config.use_lua,
        );
        if marked.is_none() && !owned.is_empty() {
            // Adopted from before marks existed: the apply adds them.
            owned.push(Record {
                name: name.clone(),
                kind: RecordKind::A,
                set_id: format!("{UNMANAGED_PREFIX}unmarked"),
                weight: 0,
                target: "no ownership mark yet".to_owned(),
                ttl: 0,
            });
        }
        Ok(Held {
            owned,
            foreign: Vec::new(),
        })
    }

    async fn apply(
        &self,
        name: &str,
        _changes: &[Change],
        desired: &[Record],
        owner: &Owner,
        fence: &impl Fence,
    ) -> Result<(), Error> {
        // No weighted sets in PowerDNS: whole RRsets are rendered from the
        // desired state, so `changes` only told the caller that it differs.
        let name = self.check_name(name)?;
        let rendered = render(desired, self.config.use_lua)?;
        let comment = format!(
            "{COMMENT_PREFIX}{}",
            serde_json::to_string(desired).map_err(|e| Error::Invalid(e.to_string()))?
        );
        let mut rrsets = Vec::new();
        // Deletes first: PowerDNS refuses a CNAME beside other data, so a
        // switch between A and CNAME must drop the old type in the same patch.
        for rtype in MANAGED_TYPES {
            if !rendered.iter().any(|r| r.rtype == rtype) {
                rrsets.push(json!({"name": name, "type": rtype, "changetype": "DELETE"}));
            }
        }
        for rrset in &rendered {
            rrsets.push(json!({
                "name": name,
                "type": rrset.rtype,
                "ttl": rrset.ttl,
                "changetype": "REPLACE",
                "records": rrset.contents.iter()
                    .map(|c| json!({"content": c, "disabled": false}))
                    .collect::<Vec<_>>(),
                "comments": [{"content": comment, "account": COMMENT_ACCOUNT}],
            }));
        }
        // The marks go and come with the records, in the same atomic patch.
        let marks: BTreeSet<String> = desired
            .iter()
            .map(|r| format!("\"{}\"", ownership_text(owner, &r.set_id)))
            .collect();
        let marks_at = ownership_name(&name);
        if marks.is_empty() {
            rrsets.push(json!({"name": marks_at, "type": "TXT", "changetype": "DELETE"}));
        } else {
            rrsets.push(json!({
                "name": marks_at,
                "type": "TXT",
                "ttl": MARK_TTL,
                "changetype": "REPLACE",
                "records": marks.iter()
                    .map(|c| json!({"content": c, "disabled": false}))
                    .collect::<Vec<_>>(),
            }));
        }
        let patch = self
            .client
            .patch(self.zone_url())
            .json(&json!({ "rrsets": rrsets }));
        submit(fence, self.send(patch)).await?;
        Ok(())
    }
}

#[derive(Deserialize)]
struct ApiZone {
    #[serde(default)]
    rrsets: Vec<ApiRRset>,
}

#[derive(Deserialize)]
struct ApiRRset {
    name: String,
    #[serde(rename = "type")]
    rtype: String,
    ttl: u32,
    #[serde(default)]
    records: Vec<ApiRecord>,
    #[serde(default)]
    comments: Vec<ApiComment>,
}

#[derive(Deserialize)]
struct ApiRecord {
    content: String,
    #[serde(default)]
    disabled: bool,
}

#[derive(Deserialize)]
struct ApiComment {
    content: String,
}

fn parse_comment(content: &str) -> Option<Vec<Record>> {
    serde_json::from_str(content.strip_prefix(COMMENT_PREFIX)?).ok()
}

/// One PowerDNS RRset as Meridian compares it: type, TTL, enabled contents.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RRset {
    rtype: String,
    ttl: u32,
    contents: BTreeSet<String>,
}

/// The RRsets `records` (all for one name) become, sorted by type.
fn render(records: &[Record], use_lua: bool) -> Result<Vec<RRset>, Error> {
    let Some(ttl) = records.iter().map(|r| r.ttl).min() else {
        return Ok(Vec::new());
    };
    let any_up = records.iter().any(|r| r.weight > 0);
    let serving = |r: &&Record| r.weight > 0 || !any_up;
    let has_cname = records.iter().any(|r| r.kind == RecordKind::CNAME);
    if has_cname && records.iter().any(|r| r.kind != RecordKind::CNAME) {
        return Err(Error::Invalid(format!(
            "{}: a CNAME cannot share its name with address records",
            records[0].name
        )));
    }
    let mut out = Vec::new();
    if use_lua {
        if has_cname {
            return Err(Error::Invalid(format!(
                "{}: PowerDNS LUA mode publishes addresses only (pickwrandom); CNAME targets need use_lua: false and a single live CNAME zone",
                records[0].name
            )));
        }
        let mut contents = BTreeSet::new();
        for kind in [RecordKind::A, RecordKind::AAAA] {
            let pairs: Vec<String> = records
                .iter()
                .filter(|r| r.kind == kind)
                .filter(serving)
                // pickwrandom needs a positive weight; in fail-open all count alike.
                .map(|r| format!("{{{}, '{}'}}", if any_up { r.weight } else { 1 }, r.target))
                .collect();
            if !pairs.is_empty() {
                // Single quotes: escaped double quotes inside the content
                // make PowerDNS answer SERVFAIL.
                contents.insert(format!("{kind} \"pickwrandom({{{}}})\"", pairs.join(", ")));
            }
        }
        if !contents.is_empty() {
            out.push(RRset {
                rtype: "LUA".to_owned(),
                ttl,
                contents,
            });
        }
    } else {
        for kind in [RecordKind::A, RecordKind::AAAA, RecordKind::CNAME] {
            let contents: BTreeSet<String> = records
                .iter()
                .filter(|r| r.kind == kind)
                .filter(serving)
                .map(|r| r.target.clone())
                .collect();
            if kind == RecordKind::CNAME && contents.len() > 1 {
                return Err(Error::Invalid(format!(
                    "{}: PowerDNS has no weighted CNAMEs and a name holds one CNAME, but {} CNAME targets are live ({:?})",
                    records[0].name,
                    contents.len(),
                    contents
                )));
            }
            if !contents.is_empty() {
                out.push(RRset {
                    rtype: kind.as_str().to_owned(),
                    ttl,
                    contents,
                });
            }
        }
    }
    Ok(out)
}

/// `A "pickwrandom({{70, '192.0.2.10'}, ...})"` → (A, [(70, "192.0.2.10"), ...]).
fn parse_lua(content: &str) -> Option<(RecordKind, Vec<(u32, String)>)> {
    let (kind, rest) = content.split_once(' ')?;
    let kind = RecordKind::parse(kind).filter(|k| *k != RecordKind::CNAME)?;
    let body = rest.trim().strip_prefix('"')?.strip_suffix('"')?;
    let mut list = body
        .trim()
        .strip_prefix("pickwrandom({")?
        .strip_suffix("})")?
        .trim();
    let mut pairs = Vec::new();
    while !list.is_empty() {
        let (pair, rest) = list.strip_prefix('{')?.split_once('}')?;
        let (weight, target) = pair.split_once(',')?;
        let target = target.trim().strip_prefix('\'')?.strip_suffix('\'')?;
        pairs.push((weight.trim().parse().ok()?, target.to_owned()));
        let rest = rest.trim_start();
        list = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some((kind, pairs))
}

/// Per-zone records from the live RRsets of `name`, named by the records
/// Meridian last wrote (`written`); see the module docs.
fn decode(name: &str, live: &[RRset], written: &[Record], use_lua: bool) -> Vec<Record> {
    let mut unused: Vec<&Record> = written.iter().filter(|r| r.name == name).collect();
    // Fail-open LUA data carries weight 1 for zones written at weight 0.
    let written_all_down = !unused.is_empty() && unused.iter().all(|r| r.weight == 0);
    let mut out = Vec::new();
    let unmanaged = |kind, target: String, weight, ttl| Record {
        name: name.to_owned(),
        kind,
        set_id: format!("{UNMANAGED_PREFIX}{target}"),
        weight,
        target,
        ttl,
    };
    for rrset in live {
        if rrset.rtype == "LUA" {
            for content in &rrset.contents {
                let Some((kind, pairs)) = parse_lua(content) else {
                    out.push(unmanaged(RecordKind::A, content.clone(), 0, rrset.ttl));
                    continue;
                };
                for (weight, target) in pairs {
                    let weight = if written_all_down && weight == 1 {
                        0
                    } else {
                        weight
                    };
                    let target = normalize(kind, &target);
                    let pos = unused
                        .iter()
                        .position(|r| r.kind == kind && r.target == target && r.weight == weight)
                        .or_else(|| {
                            unused
                                .iter()
                                .position(|r| r.kind == kind && r.target == target)
                        });
                    out.push(match pos {
                        Some(i) => Record {
                            weight,
                            ttl: rrset.ttl,
                            ..unused.remove(i).clone()
                        },
                        None => unmanaged(kind, target, weight, rrset.ttl),
                    });
                }
            }
        } else {
            let Some(kind) = RecordKind::parse(&rrset.rtype) else {
                continue;
            };
            for content in &rrset.contents {
                let target = normalize(kind, content);
                // One plain content stands for every zone with that target.
                let (matched, rest): (Vec<&Record>, Vec<&Record>) = unused
                    .iter()
                    .partition(|r| r.kind == kind && r.target == target);
                unused = rest;
                if matched.is_empty() {
                    out.push(unmanaged(kind, target, 0, rrset.ttl));
                }
                out.extend(matched.into_iter().map(|r| Record {
                    ttl: rrset.ttl,
                    ..r.clone()
                }));
            }
        }
    }
    // Drained zones are expected to be absent from the live data.
    out.extend(unused.into_iter().filter(|r| r.weight == 0).cloned());
    if render(&out, use_lua).ok().as_deref() != Some(live) {
        out.push(Record {
            name: name.to_owned(),
            kind: RecordKind::A,
            set_id: format!("{UNMANAGED_PREFIX}drift"),
            weight: 0,
            target: "live RRsets differ from what the records render to".to_owned(),
            ttl: 0,
        });
    }
    out
}

fn normalize(kind: RecordKind, content: &str) -> String {
    let (parsed_kind, target) = classify_target(content);
    if parsed_kind == kind {
        target
    } else {
        content.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::diff;

    fn rec(kind: RecordKind, set_id: &str, weight: u32, target: &str) -> Record {
        Record {
            name: "track.example.com.".to_owned(),
            kind,
            set_id: set_id.to_owned(),
            weight,
            target: target.to_owned(),
            ttl: 30,
        }
    }

    fn rrset(rtype: &str, contents: &[&str]) -> RRset {
        RRset {
            rtype: rtype.to_owned(),
            ttl: 30,
            contents: contents.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    fn a(set: &str, w: u32, ip: &str) -> Record {
        rec(RecordKind::A, set, w, ip)
    }

    #[test]
    fn render_table() {
        let lua = "LUA";
        type Case = (&'static str, Vec<Record>, bool, Vec<RRset>);
        let cases: Vec<Case> = vec![
            ("empty", vec![], false, vec![]),
            (
                "plain 70/30",
                vec![a("a", 70, "192.0.2.10"), a("b", 30, "192.0.2.11")],
                false,
                vec![rrset("A", &["192.0.2.10", "192.0.2.11"])],
            ),
            (
                "plain drops failed zone",
                vec![a("a", 0, "192.0.2.10"), a("b", 100, "192.0.2.11")],
                false,
                vec![rrset("A", &["192.0.2.11"])],
            ),
            (
                "plain all down fails open",
                vec![a("a", 0, "192.0.2.10"), a("b", 0, "192.0.2.11")],
                false,
                vec![rrset("A", &["192.0.2.10", "192.0.2.11"])],
            ),
            (
                "plain dual stack",
                vec![
                    a("a", 50, "192.0.2.10"),
                    rec(RecordKind::AAAA, "b", 50, "2001:db8::1"),
                ],
                false,
                vec![rrset("A", &["192.0.2.10"]), rrset("AAAA", &["2001:db8::1"])],
            ),
            (
                "plain single live CNAME",
                vec![
                    rec(RecordKind::CNAME, "a", 100, "lb-a.example.net."),
                    rec(RecordKind::CNAME, "b", 0, "lb-b.example.net."),
                ],
                false,
                vec![rrset("CNAME", &["lb-a.example.net."])],
            ),
            (
                "lua 70/30",
                vec![a("a", 70, "192.0.2.10"), a("b", 30, "192.0.2.11")],
                true,
                vec![rrset(
                    lua,
                    &["A \"pickwrandom({{70, '192.0.2.10'}, {30, '192.0.2.11'}})\""],
                )],
            ),
            (
                "lua leaves out weight 0",
                vec![a("a", 0, "192.0.2.10"), a("b", 100, "192.0.2.11")],
                true,
                vec![rrset(lua, &["A \"pickwrandom({{100, '192.0.2.11'}})\""])],
            ),
            (
                "lua all down fails open with equal weights",
                vec![a("a", 0, "192.0.2.10"), a("b", 0, "192.0.2.11")],
                true,
                vec![rrset(
                    lua,
                    &["A \"pickwrandom({{1, '192.0.2.10'}, {1, '192.0.2.11'}})\""],
                )],
            ),
            (
                "lua dual stack: one LUA RRset, a record per type",
                vec![
                    a("a", 50, "192.0.2.10"),
                    rec(RecordKind::AAAA, "b", 50, "2001:db8::1"),
                ],
                true,
                vec![rrset(
                    lua,
                    &[
                        "A \"pickwrandom({{50, '192.0.2.10'}})\"",
                        "AAAA \"pickwrandom({{50, '2001:db8::1'}})\"",
                    ],
                )],
            ),
        ];
        for (what, records, use_lua, want) in cases {
            assert_eq!(render(&records, use_lua).expect(what), want, "{what}");
        }
    }

    #[test]
    fn render_refuses_what_pdns_cannot_hold() {
        let two_cnames = vec![
            rec(RecordKind::CNAME, "a", 50, "lb-a.example.net."),
            rec(RecordKind::CNAME, "b", 50, "lb-b.example.net."),
        ];
        let err = render(&two_cnames, false).unwrap_err();
        assert!(err.to_string().contains("one CNAME"), "{err}");
        let one_cname = vec![rec(RecordKind::CNAME, "a", 100, "lb-a.example.net.")];
        let err = render(&one_cname, true).unwrap_err();
        assert!(err.to_string().contains("LUA mode"), "{err}");
        let mixed = vec![
            rec(RecordKind::CNAME, "a", 100, "lb-a.example.net."),
            a("b", 0, "192.0.2.1"),
        ];
        assert!(matches!(render(&mixed, false), Err(Error::Invalid(_))));
    }

    #[test]
    fn parse_lua_round_trips_render() {
        let content = "A \"pickwrandom({{70, '192.0.2.10'}, {30, '192.0.2.11'}})\"";
        assert_eq!(
            parse_lua(content),
            Some((
                RecordKind::A,
                vec![(70, "192.0.2.10".to_owned()), (30, "192.0.2.11".to_owned())]
            ))
        );
        assert_eq!(parse_lua("A \"ifportup(443, {'192.0.2.1'})\""), None);
        assert_eq!(parse_lua("garbage"), None);
    }

    /// Reading back what apply wrote diffs to nothing, in every shape.
    #[test]
    fn decode_of_rendered_state_is_converged() {
        let sets: Vec<Vec<Record>> = vec![
            vec![a("a", 70, "192.0.2.10"), a("b", 30, "192.0.2.11")],
            vec![a("a", 0, "192.0.2.10"), a("b", 100, "192.0.2.11")],
            vec![a("a", 0, "192.0.2.10"), a("b", 0, "192.0.2.11")],
            vec![a("a", 50, "192.0.2.10"), a("b", 50, "192.0.2.10")],
            vec![
                a("a", 50, "192.0.2.10"),
                rec(RecordKind::AAAA, "b", 50, "2001:db8::1"),
            ],
        ];
        for desired in &sets {
            for use_lua in [false, true] {
                let live = render(desired, use_lua).unwrap();
                let got = decode("track.example.com.", &live, desired, use_lua);
                assert_eq!(diff(&got, desired), vec![], "{desired:?} lua={use_lua}");
            }
        }
        let cname = vec![
            rec(RecordKind::CNAME, "a", 100, "lb-a.example.net."),
            rec(RecordKind::CNAME, "b", 0, "lb-b.example.net."),
        ];
        let live = render(&cname, false).unwrap();
        assert_eq!(
            diff(&decode("track.example.com.", &live, &cname, false), &cname),
            vec![]
        );
    }

    #[test]
    fn decode_reports_drift() {
        let desired = vec![a("a", 70, "192.0.2.10"), a("b", 30, "192.0.2.11")];
        let drained = vec![a("a", 0, "192.0.2.10"), a("b", 100, "192.0.2.11")];
        type Case = (&'static str, bool, Vec<Record>, Vec<RRset>);
        let cases: Vec<Case> = vec![
            ("nothing written yet", false, vec![], vec![]),
            (
                "target replaced by hand",
                false,
                desired.clone(),
                vec![rrset("A", &["192.0.2.10", "198.51.100.1"])],
            ),
            (
                "target removed by hand",
                false,
                desired.clone(),
                vec![rrset("A", &["192.0.2.10"])],
            ),
            ("ttl changed by hand", false, desired.clone(), {
                let mut r = render(&desired, false).unwrap();
                r[0].ttl = 3600;
                r
            }),
            (
                "failed zone added back by hand",
                false,
                drained.clone(),
                vec![rrset("A", &["192.0.2.10", "192.0.2.11"])],
            ),
            (
                "lua weights edited by hand",
                true,
                desired.clone(),
                vec![rrset(
                    "LUA",
                    &["A \"pickwrandom({{10, '192.0.2.10'}, {90, '192.0.2.11'}})\""],
                )],
            ),
            (
                "lua replaced by arbitrary code",
                true,
                desired.clone(),
                vec![rrset("LUA", &["A \"'192.0.2.99'\""])],
            ),
            (
                "plain data while lua is configured",
                true,
                desired.clone(),
                render(&desired, false).unwrap(),
            ),
        ];
        for (what, use_lua, written, live) in cases {
            let want = if what.contains("failed zone") {
                &drained
            } else {
                &desired
            };
            let got = decode("track.example.com.", &live, &written, use_lua);
            assert_ne!(diff(&got, want), vec![], "{what}: {got:?}");
        }
    }

    #[test]
    fn api_key_is_not_printed() {
        let config = PdnsConfig {
            api_url: "http://127.0.0.1:8081".to_owned(),
            api_key: ApiKey::new("s3cret"),
            zone: "example.com.".to_owned(),
            use_lua: false,
        };
        assert!(!format!("{config:?}").contains("s3cret"));
        let provider = PdnsProvider::new(config).unwrap();
        assert!(!format!("{provider:?}").contains("s3cret"));
    }

    #[test]
    fn names_outside_the_zone_are_invalid() {
        let provider = PdnsProvider::new(PdnsConfig {
            api_url: "http://127.0.0.1:1".to_owned(),
            api_key: ApiKey::new("k"),
            zone: "example.com".to_owned(),
            use_lua: false,
        })
        .unwrap();
        assert_eq!(
            provider.check_name("Track.Example.com").unwrap(),
            "track.example.com."
        );
        assert!(provider.check_name("track.example.org.").is_err());
        assert!(provider.check_name("badexample.com.").is_err());
    }
}
