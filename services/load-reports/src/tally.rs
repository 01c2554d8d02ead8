//! Pure LRS logic: the answer to a new stream, and a load report folded
//! into counts per (policy, zone, version, route). No I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use xds_api::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};

/// How often clients report. Short, so a zone that starts failing shows
/// in the pooled rate within a couple of seconds.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Requests and failures of one zone over some time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Completed requests: successful and failed.
    pub requests: u64,
    /// Failed requests (Envoy: 5xx answers, resets and timeouts; gRPC: RPCs
    /// that did not end OK).
    pub failures: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.failures = self.failures.saturating_add(other.failures);
    }
}

/// What a count is of: a policy's zone, which of its versions served it
/// (`""`: a stable cluster; a canary's version otherwise), and through
/// which route's own clusters (`""`: the policy's shared clusters; a route
/// under a rollout has its own pair). Failover sums all of a zone; a
/// rollout compares the versions of its route.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub policy: String,
    pub zone: String,
    pub version: String,
    pub route: String,
}

/// Counts per (policy, zone, version, route).
pub type Tallies = BTreeMap<Key, Counts>;

/// The first (and only) answer on a stream: report every cluster, every
/// `interval`. Clusters not Meridian's are ignored on receipt, which costs
/// less than keeping per-client cluster lists in step with their config.
pub fn initial_response(interval: Duration) -> LoadStatsResponse {
    LoadStatsResponse {
        clusters: Vec::new(),
        send_all_clusters: true,
        load_reporting_interval: Some(xds_api::pb::google::protobuf::Duration {
            seconds: interval.as_secs() as i64,
            nanos: interval.subsec_nanos() as i32,
        }),
        report_endpoint_granularity: false,
    }
}

/// Whose traffic a cluster carries, by the translation's names
/// (`meridian_xds::translate`): the stable cluster is the policy's name, a
/// canary cluster `policy@version`, and a route under a rollout has
/// `policy~route` and `policy@version~route`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterOf<'a> {
    pub policy: &'a str,
    /// `""` for a stable cluster.
    pub version: &'a str,
    /// `""` for the policy's shared clusters.
    pub route: &'a str,
}

/// Parses a cluster name (see [`ClusterOf`]). Sidecar inbound clusters
/// (`inbound|policy`) and clusters Meridian did not make give `None`.
pub fn policy_of_cluster(cluster: &str) -> Option<ClusterOf<'_>> {
    if cluster.is_empty() || cluster.contains('|') {
        return None;
    }
    // `~` and `@` never appear in the names themselves (DNS labels).
    let (rest, route) = match cluster.split_once('~') {
        Some((rest, route)) if !route.is_empty() => (rest, route),
        Some(_) => return None,
        None => (cluster, ""),
    };
    let (policy, version) = match rest.split_once('@') {
        Some((policy, version)) if !version.is_empty() => (policy, version),
        Some(_) => return None,
        None => (rest, ""),
    };
    let label = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let ok = !policy.is_empty() && label(policy) && label(version) && label(route);
    ok.then_some(ClusterOf {
        policy,
        version,
        route,
    })
}

/// The counts of one report, per (policy, zone, version, route). The zone is the
/// locality's `zone`, as the translation names localities; localities
/// without one, clusters not Meridian's and empty counts are left out.
pub fn tally(report: &LoadStatsRequest) -> Tallies {
    let mut out = Tallies::new();
    for cluster in &report.cluster_stats {
        let Some(of) = policy_of_cluster(&cluster.cluster_name) else {
            continue;
        };
        for locality in &cluster.upstream_locality_stats {
            let Some(zone) = locality.locality.as_ref().map(|l| l.zone.as_str()) else {
                continue;
            };
            if zone.is_empty() {
                continue;
            }
            let counts = Counts {
                requests: locality
                    .total_successful_requests
                    .saturating_add(locality.total_error_requests),
                failures: locality.total_error_requests,
            };
            if counts == Counts::default() {
                continue;
            }
            let key = Key {
                policy: of.policy.to_owned(),
                zone: zone.to_owned(),
                version: of.version.to_owned(),
                route: of.route.to_owned(),
            };
            out.entry(key).or_default().add(counts);
        }
    }
    out
}

/// Adds `more` into `into`.
pub fn merge(into: &mut Tallies, more: Tallies) {
    for (key, counts) in more {
        into.entry(key).or_default().add(counts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_api::pb::envoy::config::core::v3::Locality;
    use xds_api::pb::envoy::config::endpoint::v3::{ClusterStats, UpstreamLocalityStats};

    fn locality(zone: &str, ok: u64, failed: u64) -> UpstreamLocalityStats {
        UpstreamLocalityStats {
            locality: Some(Locality {
                region: "us-west-2".into(),
                zone: zone.into(),
                sub_zone: String::new(),
            }),
            total_successful_requests: ok,
            total_error_requests: failed,
            total_issued_requests: ok + failed,
            ..Default::default()
        }
    }

    fn cluster(name: &str, localities: Vec<UpstreamLocalityStats>) -> ClusterStats {
        ClusterStats {
            cluster_name: name.into(),
            upstream_locality_stats: localities,
            ..Default::default()
        }
    }

    #[test]
    fn cluster_names_follow_the_translation() {
        use meridian_xds::translate::{
            canary_cluster_name, inbound_cluster_name, route_canary_cluster_name,
            route_stable_cluster_name, stable_cluster_name,
        };
        type Case = (String, Option<(&'static str, &'static str, &'static str)>);
        let cases: Vec<Case> = vec![
            (
                stable_cluster_name("track-api"),
                Some(("track-api", "", "")),
            ),
            (
                canary_cluster_name("track-api", "v2"),
                Some(("track-api", "v2", "")),
            ),
            (
                route_stable_cluster_name("track-api", "position"),
                Some(("track-api", "", "position")),
            ),
            (
                route_canary_cluster_name("track-api", "v2", "position"),
                Some(("track-api", "v2", "position")),
            ),
            (inbound_cluster_name("track-api"), None),
            ("xds_cluster".into(), None),
            ("".into(), None),
            ("@v2".into(), None),
            ("~r".into(), None),
            ("track-api@".into(), None),
            ("track-api~".into(), None),
            ("track-api@~r".into(), None),
            ("track-api@V2".into(), None),
            ("track-api~R".into(), None),
            ("track-api~r~s".into(), None),
            ("track-api~r@v2".into(), None),
        ];
        for (name, want) in cases {
            let got = policy_of_cluster(&name).map(|c| (c.policy, c.version, c.route));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn tally_table() {
        type Case = (
            &'static str,
            Vec<ClusterStats>,
            Vec<(
                &'static str,
                &'static str,
                &'static str,
                &'static str,
                u64,
                u64,
            )>,
        );
        let cases: Vec<Case> = vec![
            ("nothing", vec![], vec![]),
            (
                "per zone, failures included in requests",
                vec![cluster(
                    "track-api",
                    vec![locality("a", 90, 10), locality("b", 100, 0)],
                )],
                vec![
                    ("track-api", "a", "", "", 100, 10),
                    ("track-api", "b", "", "", 100, 0),
                ],
            ),
            (
                "canary and stable clusters of one policy are counted apart",
                vec![
                    cluster("track-api", vec![locality("a", 50, 5)]),
                    cluster("track-api@v2", vec![locality("a", 10, 5)]),
                    cluster("track-api@v2", vec![locality("a", 1, 1)]),
                ],
                vec![
                    ("track-api", "a", "", "", 55, 5),
                    ("track-api", "a", "v2", "", 17, 6),
                ],
            ),
            (
                "a route's own clusters are counted apart from the shared ones",
                vec![
                    cluster("track-api", vec![locality("a", 50, 5)]),
                    cluster("track-api~position", vec![locality("a", 30, 0)]),
                    cluster("track-api@v2~position", vec![locality("b", 4, 1)]),
                ],
                vec![
                    ("track-api", "a", "", "", 55, 5),
                    ("track-api", "a", "", "position", 30, 0),
                    ("track-api", "b", "v2", "position", 5, 1),
                ],
            ),
            (
                "other clusters, zoneless localities and idle zones are left out",
                vec![
                    cluster("xds_cluster", vec![locality("a", 5, 5)]),
                    cluster("inbound|track-api", vec![locality("a", 5, 5)]),
                    cluster("track-api", vec![locality("", 5, 5), locality("b", 0, 0)]),
                ],
                vec![],
            ),
        ];
        for (what, clusters, want) in cases {
            let report = LoadStatsRequest {
                node: None,
                cluster_stats: clusters,
            };
            let want: Tallies = want
                .into_iter()
                .map(|(p, z, v, r, requests, failures)| {
                    let key = Key {
                        policy: p.into(),
                        zone: z.into(),
                        version: v.into(),
                        route: r.into(),
                    };
                    (key, Counts { requests, failures })
                })
                .collect();
            assert_eq!(tally(&report), want, "{what}");
        }
    }

    #[test]
    fn merge_adds() {
        let key = Key {
            policy: "p".into(),
            zone: "a".into(),
            version: String::new(),
            route: String::new(),
        };
        let mut total: Tallies = [(
            key.clone(),
            Counts {
                requests: 10,
                failures: 1,
            },
        )]
        .into();
        merge(
            &mut total,
            [(
                key.clone(),
                Counts {
                    requests: 5,
                    failures: 2,
                },
            )]
            .into(),
        );
        assert_eq!(
            total[&key],
            Counts {
                requests: 15,
                failures: 3
            }
        );
    }

    #[test]
    fn the_first_answer_asks_for_every_cluster() {
        let r = initial_response(Duration::from_millis(1500));
        assert!(r.send_all_clusters);
        assert_eq!(
            r.load_reporting_interval,
            Some(xds_api::pb::google::protobuf::Duration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
    }
}
