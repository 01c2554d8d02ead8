//! Pure desired state: which records a policy asks each provider to hold,
//! and the changes that turn what a provider holds into that. No I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use meridian_policy::Policy;
use serde::{Deserialize, Serialize};

/// Record type Meridian publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordKind {
    A,
    #[allow(clippy::upper_case_acronyms)]
    AAAA,
    #[allow(clippy::upper_case_acronyms)]
    CNAME,
}

impl RecordKind {
    /// The DNS type mnemonic, as providers spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::A => "A",
            RecordKind::AAAA => "AAAA",
            RecordKind::CNAME => "CNAME",
        }
    }

    /// Parses a DNS type mnemonic; `None` for types Meridian does not manage.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "A" => Some(RecordKind::A),
            "AAAA" => Some(RecordKind::AAAA),
            "CNAME" => Some(RecordKind::CNAME),
            _ => None,
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One weighted record: a zone's share of a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Record {
    /// Fully qualified, lower case, with the trailing dot.
    pub name: String,
    pub kind: RecordKind,
    /// The zone name: tells the weighted records of one name apart.
    pub set_id: String,
    pub weight: u32,
    /// An IP address in canonical form, or (CNAME) an FQDN with the trailing dot.
    pub target: String,
    pub ttl: u32,
}

impl Record {
    /// Identity of a record for diffing: two records with the same key are
    /// versions of each other.
    pub fn key(&self) -> (&str, RecordKind, &str) {
        (&self.name, self.kind, &self.set_id)
    }
}

/// One step towards the desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Create the record, or replace the one with the same key.
    Upsert(Record),
    /// Remove the record with this key.
    Delete(Record),
}

impl Change {
    /// The record the change carries.
    pub fn record(&self) -> &Record {
        match self {
            Change::Upsert(r) | Change::Delete(r) => r,
        }
    }
}

/// A policy whose DNS cannot be published as asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DesiredError {
    /// A CNAME cannot share its name with any other record (RFC 1034 §3.6.2),
    /// so zones of one provider must all use addresses or all use host names.
    #[error(
        "{name}: provider {provider} would get CNAME records (zones {cname_zones:?}) beside address records (zones {address_zones:?}); a CNAME cannot share its name with other records"
    )]
    CnameConflict {
        provider: String,
        name: String,
        cname_zones: Vec<String>,
        address_zones: Vec<String>,
    },
}

/// Lower case with exactly one trailing dot: the form providers return.
pub fn fqdn(name: &str) -> String {
    let mut n = name.trim_end_matches('.').to_ascii_lowercase();
    n.push('.');
    n
}

/// Kind and canonical target for a zone's `dns.target`.
pub fn classify_target(target: &str) -> (RecordKind, String) {
    match target.parse::<IpAddr>() {
        // Canonical form, because providers return IPv6 compressed and a
        // spelling difference must not look like a change.
        Ok(IpAddr::V4(ip)) => (RecordKind::A, ip.to_string()),
        Ok(IpAddr::V6(ip)) => (RecordKind::AAAA, ip.to_string()),
        Err(_) => (RecordKind::CNAME, fqdn(target)),
    }
}

/// The records each provider should hold for `policy`, keyed by provider
/// name: one weighted record per zone that has `dns`, weighted by the zone's
/// effective weight (its spec weight when `effective` does not name it).
/// Zones at weight 0 stay in the result, so a provider can keep them as
/// drained rather than forget them.
///
/// Returns an error, not records, when one provider would get a CNAME
/// beside address records for the host.
pub fn desired_records(
    policy: &Policy,
    effective: &BTreeMap<String, u32>,
) -> Result<BTreeMap<String, Vec<Record>>, DesiredError> {
    let name = fqdn(&policy.spec.host);
    let mut out: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for zone in &policy.spec.zones {
        let Some(dns) = &zone.dns else { continue };
        let (kind, target) = classify_target(&dns.target);
        out.entry(dns.provider.clone()).or_default().push(Record {
            name: name.clone(),
            kind,
            set_id: zone.name.clone(),
            weight: effective.get(&zone.name).copied().unwrap_or(zone.weight),
            target,
            ttl: policy.spec.dns.ttl,
        });
    }
    for (provider, records) in &mut out {
        check_cname_conflict(provider, records)?;
        records.sort_by(|a, b| a.key().cmp(&b.key()));
    }
    Ok(out)
}

fn check_cname_conflict(provider: &str, records: &[Record]) -> Result<(), DesiredError> {
    let (cnames, addresses): (Vec<&Record>, Vec<&Record>) =
        records.iter().partition(|r| r.kind == RecordKind::CNAME);
    if cnames.is_empty() || addresses.is_empty() {
        return Ok(());
    }
    Err(DesiredError::CnameConflict {
        provider: provider.to_owned(),
        name: records[0].name.clone(),
        cname_zones: cnames.iter().map(|r| r.set_id.clone()).collect(),
        address_zones: addresses.iter().map(|r| r.set_id.clone()).collect(),
    })
}

/// Changes that turn `current` into `desired`, keyed by (name, kind,
/// set_id), in key order. Identical records produce no change, so
/// reconciling a converged provider calls nothing.
pub fn diff(current: &[Record], desired: &[Record]) -> Vec<Change> {
    let current: BTreeMap<_, _> = current.iter().map(|r| (r.key(), r)).collect();
    let desired: BTreeMap<_, _> = desired.iter().map(|r| (r.key(), r)).collect();
    let mut changes = Vec::new();
    for (key, want) in &desired {
        if current.get(key) != Some(want) {
            changes.push(((*key), Change::Upsert((*want).clone())));
        }
    }
    for (key, have) in &current {
        if !desired.contains_key(key) {
            changes.push(((*key), Change::Delete((*have).clone())));
        }
    }
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    changes.into_iter().map(|(_, c)| c).collect()
}

/// Whose records these are: the Meridian installation (one owner id per
/// database, shared by its replicas) and the policy they serve. Records
/// carry it as an ownership mark (see [`ownership_text`]), the way
/// external-dns's TXT registry marks what it created, so that Meridian
/// changes and removes only records it created, and two installations
/// sharing a DNS zone never touch each other's records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The installation, e.g. `meridian-3f2a9c01b7de`.
    pub id: String,
    /// The policy whose records these are (informational: a record of
    /// another policy of the same installation is still owned, so a host
    /// moving between policies is taken over, not refused).
    pub policy: String,
}

impl Owner {
    pub fn new(id: impl Into<String>, policy: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            policy: policy.into(),
        }
    }
}

impl Default for Owner {
    /// The owner id of tests and tools that run without a database.
    fn default() -> Self {
        Self::new("meridian", "")
    }
}

/// The first label of the names that hold ownership marks: a TXT record
/// cannot sit beside a CNAME, so marks live at `_meridian.<name>`.
pub const OWNERSHIP_LABEL: &str = "_meridian";
const HERITAGE: &str = "heritage=meridian";

/// Where the ownership marks of `name`'s records live.
pub fn ownership_name(name: &str) -> String {
    format!("{OWNERSHIP_LABEL}.{}", fqdn(name))
}

/// One ownership mark as parsed back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    pub owner: String,
    pub policy: String,
    pub zone: String,
}

/// The mark of `owner`'s record for `zone`, unquoted:
/// `heritage=meridian,meridian/owner=ID,meridian/policy=P,meridian/zone=Z`.
pub fn ownership_text(owner: &Owner, zone: &str) -> String {
    format!(
        "{HERITAGE},meridian/owner={},meridian/policy={},meridian/zone={zone}",
        owner.id, owner.policy
    )
}

/// Parses a mark, quoted (as DNS APIs return TXT data) or not; `None` for
/// any other text, which is then simply not a mark.
pub fn parse_ownership(text: &str) -> Option<Ownership> {
    let text = text.trim();
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let mut parts = text.split(',');
    if parts.next()? != HERITAGE {
        return None;
    }
    let (mut owner, mut policy, mut zone) = (None, None, None);
    for part in parts {
        let (key, value) = part.split_once('=')?;
        match key {
            "meridian/owner" => owner = Some(value),
            "meridian/policy" => policy = Some(value),
            "meridian/zone" => zone = Some(value),
            _ => {}
        }
    }
    Some(Ownership {
        owner: owner.filter(|o| !o.is_empty())?.to_owned(),
        policy: policy.unwrap_or_default().to_owned(),
        zone: zone.filter(|z| !z.is_empty())?.to_owned(),
    })
}

/// What a provider holds for a name: the records Meridian owns (by its
/// marks), and records of the types it publishes that someone else made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Meridian's records, in the shape [`desired_records`] produces.
    pub owned: Vec<Record>,
    /// Records of A / AAAA / CNAME (LUA in PowerDNS) type at the name that
    /// carry no mark of this owner. Never changed, never deleted.
    pub foreign: Vec<Record>,
}

/// How a provider stores a name's records, for [`conflicts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// One record set per zone (Route 53 weighted sets): a foreign set is in
    /// the way only with the same type and set id, or when either is a CNAME.
    PerZone,
    /// All of a name's records of one type form one set written whole
    /// (PowerDNS RRsets; Alidns weighted round robin spans every record of
    /// the name and type): any foreign record of those types is in the way.
    WholeName,
}

/// Why writing `desired` would change or shadow records Meridian did not
/// create; empty when it would not. Meridian then refuses to write.
pub fn conflicts(desired: &[Record], foreign: &[Record], granularity: Granularity) -> Vec<String> {
    let mut out = Vec::new();
    for f in foreign {
        let clash = desired.iter().any(|d| match granularity {
            Granularity::WholeName => true,
            Granularity::PerZone => {
                (d.kind == f.kind && d.set_id == f.set_id)
                    || d.kind == RecordKind::CNAME
                    || f.kind == RecordKind::CNAME
            }
        });
        if clash {
            out.push(format!(
                "{} {} {} ({}) was not created by this Meridian installation",
                f.name, f.kind, f.target, f.set_id
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_policy::{Dns, Endpoint, Metadata, Spec, Zone, ZoneDns};

    fn zone(name: &str, weight: u32, dns: Option<(&str, &str)>) -> Zone {
        Zone {
            name: name.to_owned(),
            region: None,
            weight,
            priority: 0,
            endpoints: vec![Endpoint {
                address: "10.0.0.1".to_owned(),
                port: 8080,
                version: "v1".to_owned(),
            }],
            dns: dns.map(|(target, provider)| ZoneDns {
                target: target.to_owned(),
                provider: provider.to_owned(),
            }),
            capacity_percent: None,
        }
    }

    fn policy(zones: Vec<Zone>) -> Policy {
        Policy {
            api_version: meridian_policy::API_VERSION.to_owned(),
            kind: meridian_policy::KIND.to_owned(),
            metadata: Metadata {
                name: "track-api".to_owned(),
                ..Default::default()
            },
            spec: Spec {
                host: "Track.Example.com".to_owned(),
                port: 8080,
                protocol: Default::default(),
                zones,
                routes: vec![],
                health_check: Default::default(),
                failover: Default::default(),
                mtls: Default::default(),
                dns: Dns { ttl: 60 },
                outlier_detection: None,
                circuit_breakers: None,
            },
        }
    }

    fn rec(kind: RecordKind, set_id: &str, weight: u32, target: &str) -> Record {
        Record {
            name: "track.example.com.".to_owned(),
            kind,
            set_id: set_id.to_owned(),
            weight,
            target: target.to_owned(),
            ttl: 60,
        }
    }

    #[test]
    fn desired_records_table() {
        use RecordKind::*;
        type Case = (
            &'static str,
            Vec<Zone>,
            Vec<(&'static str, u32)>,
            Vec<(&'static str, Vec<Record>)>,
        );
        let cases: Vec<Case> = vec![
            (
                "spec weights when nothing is effective yet",
                vec![
                    zone("a", 70, Some(("192.0.2.10", "pdns"))),
                    zone("b", 30, Some(("192.0.2.11", "pdns"))),
                ],
                vec![],
                vec![(
                    "pdns",
                    vec![rec(A, "a", 70, "192.0.2.10"), rec(A, "b", 30, "192.0.2.11")],
                )],
            ),
            (
                "effective weights win, failed zone stays at 0",
                vec![
                    zone("a", 70, Some(("192.0.2.10", "pdns"))),
                    zone("b", 30, Some(("192.0.2.11", "pdns"))),
                ],
                vec![("a", 0), ("b", 100)],
                vec![(
                    "pdns",
                    vec![rec(A, "a", 0, "192.0.2.10"), rec(A, "b", 100, "192.0.2.11")],
                )],
            ),
            (
                "zones without dns are skipped; providers split; v6 canonical",
                vec![
                    zone("a", 50, Some(("2001:DB8:0:0::1", "pdns"))),
                    zone("b", 25, None),
                    zone("c", 25, Some(("LB.Cloud.example.net", "route53"))),
                ],
                vec![],
                vec![
                    ("pdns", vec![rec(AAAA, "a", 50, "2001:db8::1")]),
                    (
                        "route53",
                        vec![rec(CNAME, "c", 25, "lb.cloud.example.net.")],
                    ),
                ],
            ),
            (
                "A and AAAA may share a name",
                vec![
                    zone("a", 50, Some(("192.0.2.10", "pdns"))),
                    zone("b", 50, Some(("2001:db8::2", "pdns"))),
                ],
                vec![],
                vec![(
                    "pdns",
                    vec![
                        rec(A, "a", 50, "192.0.2.10"),
                        rec(AAAA, "b", 50, "2001:db8::2"),
                    ],
                )],
            ),
            ("no dns at all", vec![zone("a", 100, None)], vec![], vec![]),
        ];
        for (what, zones, effective, want) in cases {
            let effective = effective
                .into_iter()
                .map(|(z, w)| (z.to_owned(), w))
                .collect();
            let got = desired_records(&policy(zones), &effective).expect(what);
            let want: BTreeMap<String, Vec<Record>> =
                want.into_iter().map(|(p, r)| (p.to_owned(), r)).collect();
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn cname_beside_address_is_an_error() {
        let p = policy(vec![
            zone("a", 50, Some(("192.0.2.10", "pdns"))),
            zone("b", 50, Some(("lb.example.net", "pdns"))),
        ]);
        let err = desired_records(&p, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err,
            DesiredError::CnameConflict {
                provider: "pdns".to_owned(),
                name: "track.example.com.".to_owned(),
                cname_zones: vec!["b".to_owned()],
                address_zones: vec!["a".to_owned()],
            }
        );
        // Different providers hold separate copies of the name: no conflict.
        let p = policy(vec![
            zone("a", 50, Some(("192.0.2.10", "pdns"))),
            zone("b", 50, Some(("lb.example.net", "route53"))),
        ]);
        assert!(desired_records(&p, &BTreeMap::new()).is_ok());
    }

    #[test]
    fn diff_table() {
        use RecordKind::*;
        let a70 = rec(A, "a", 70, "192.0.2.10");
        let a0 = rec(A, "a", 0, "192.0.2.10");
        let b30 = rec(A, "b", 30, "192.0.2.11");
        let mut b30_ttl = b30.clone();
        b30_ttl.ttl = 300;
        type Case = (&'static str, Vec<Record>, Vec<Record>, Vec<Change>);
        let cases: Vec<Case> = vec![
            (
                "converged",
                vec![a70.clone(), b30.clone()],
                vec![b30.clone(), a70.clone()],
                vec![],
            ),
            (
                "from nothing",
                vec![],
                vec![a70.clone(), b30.clone()],
                vec![Change::Upsert(a70.clone()), Change::Upsert(b30.clone())],
            ),
            (
                "weight change",
                vec![a70.clone(), b30.clone()],
                vec![a0.clone(), b30.clone()],
                vec![Change::Upsert(a0.clone())],
            ),
            (
                "ttl change",
                vec![a70.clone(), b30_ttl.clone()],
                vec![a70.clone(), b30.clone()],
                vec![Change::Upsert(b30.clone())],
            ),
            (
                "zone removed",
                vec![a70.clone(), b30.clone()],
                vec![a70.clone()],
                vec![Change::Delete(b30.clone())],
            ),
            (
                "kind is part of the key",
                vec![rec(AAAA, "a", 70, "2001:db8::1")],
                vec![a70.clone()],
                vec![
                    Change::Upsert(a70.clone()),
                    Change::Delete(rec(AAAA, "a", 70, "2001:db8::1")),
                ],
            ),
        ];
        for (what, current, desired, want) in cases {
            assert_eq!(diff(&current, &desired), want, "{what}");
        }
    }

    #[test]
    fn ownership_marks_round_trip_and_refuse_other_text() {
        let owner = Owner::new("meridian-1a2b", "track-api");
        let text = ownership_text(&owner, "zone-a");
        assert_eq!(
            text,
            "heritage=meridian,meridian/owner=meridian-1a2b,meridian/policy=track-api,meridian/zone=zone-a"
        );
        let want = Some(Ownership {
            owner: "meridian-1a2b".into(),
            policy: "track-api".into(),
            zone: "zone-a".into(),
        });
        type Case = (&'static str, String, Option<Ownership>);
        let cases: Vec<Case> = vec![
            ("plain", text.clone(), want.clone()),
            (
                "quoted, as DNS APIs return TXT",
                format!("\"{text}\""),
                want,
            ),
            (
                "external-dns's mark is not ours",
                "\"heritage=external-dns,external-dns/owner=default\"".into(),
                None,
            ),
            ("any other TXT", "v=spf1 -all".into(), None),
            ("no owner", "heritage=meridian,meridian/zone=a".into(), None),
            ("no zone", "heritage=meridian,meridian/owner=x".into(), None),
        ];
        for (what, text, want) in cases {
            assert_eq!(parse_ownership(&text), want, "{what}");
        }
        assert_eq!(
            ownership_name("Track.Example.com"),
            "_meridian.track.example.com."
        );
    }

    #[test]
    fn conflicts_table() {
        use Granularity::*;
        use RecordKind::*;
        let a = rec(A, "a", 50, "192.0.2.10");
        let foreign_a = rec(A, "hand-made", 10, "198.51.100.1");
        let foreign_same_id = rec(A, "a", 10, "198.51.100.1");
        let foreign_cname = rec(CNAME, "x", 10, "lb.example.net.");
        type Case = (&'static str, Vec<Record>, Vec<Record>, Granularity, usize);
        let cases: Vec<Case> = vec![
            ("nothing foreign", vec![a.clone()], vec![], PerZone, 0),
            (
                "other set id beside ours",
                vec![a.clone()],
                vec![foreign_a.clone()],
                PerZone,
                0,
            ),
            (
                "same set id",
                vec![a.clone()],
                vec![foreign_same_id],
                PerZone,
                1,
            ),
            (
                "a foreign CNAME",
                vec![a.clone()],
                vec![foreign_cname],
                PerZone,
                1,
            ),
            (
                "whole-name sets",
                vec![a.clone()],
                vec![foreign_a.clone()],
                WholeName,
                1,
            ),
            (
                "removing ours never conflicts",
                vec![],
                vec![foreign_a],
                WholeName,
                0,
            ),
        ];
        for (what, desired, foreign, granularity, want) in cases {
            assert_eq!(
                conflicts(&desired, &foreign, granularity).len(),
                want,
                "{what}"
            );
        }
    }
}
