//! xDS metrics: streams, pushes, answers, and how long a change takes to
//! reach the wire.

use std::sync::LazyLock;

use meridian_telemetry::{
    counter, gauge, histogram, Counter, Family, Gauge, HistogramFamily, Labels,
};

use crate::resources::ResourceType;

pub(crate) static CLIENTS: LazyLock<Family<Labels<1>, Gauge>> = LazyLock::new(|| {
    gauge(
        "meridian_xds_connected_clients",
        "ADS streams open on this replica, by variant (sotw or delta).",
    )
});

pub(crate) static PUSHES: LazyLock<Family<Labels<2>, Counter>> = LazyLock::new(|| {
    counter(
        "meridian_xds_pushes",
        "xDS responses sent, by variant and resource type (lds, rds, cds, eds, sds).",
    )
});

pub(crate) static ACKS: LazyLock<Family<Labels<2>, Counter>> = LazyLock::new(|| {
    counter(
        "meridian_xds_acks",
        "Responses a client accepted, by variant and resource type.",
    )
});

pub(crate) static NACKS: LazyLock<Family<Labels<2>, Counter>> = LazyLock::new(|| {
    counter(
        "meridian_xds_nacks",
        "Responses a client rejected, by variant and resource type.",
    )
});

pub(crate) static PUSH_LATENCY: LazyLock<HistogramFamily<1>> = LazyLock::new(|| {
    histogram(
        "meridian_xds_push_latency_seconds",
        "From this replica learning of a committed write (its NOTIFY) to the resulting responses being handed to a stream, per stream; includes the debounce window.",
        meridian_telemetry::LATENCY_SECONDS,
    )
});

pub(crate) static GENERATION: LazyLock<meridian_telemetry::Gauge> = LazyLock::new(|| {
    meridian_telemetry::single_gauge(
        "meridian_xds_snapshot_generation",
        "Generation of the snapshot this replica serves; 0 until the first load.",
    )
});

/// Lists the xDS families from start-up, at zero.
pub fn init() {
    for variant in ["sotw", "delta"] {
        CLIENTS
            .get_or_create(&[("variant", variant.into())])
            .inc_by(0);
        for ty in ResourceType::ALL {
            let labels = [
                ("variant", variant.into()),
                ("type", ty.short_name().into()),
            ];
            PUSHES.get_or_create(&labels).inc_by(0);
            ACKS.get_or_create(&labels).inc_by(0);
            NACKS.get_or_create(&labels).inc_by(0);
        }
    }
    LazyLock::force(&PUSH_LATENCY);
    LazyLock::force(&GENERATION);
}

pub(crate) fn type_label(type_url: &str) -> String {
    ResourceType::from_type_url(type_url)
        .map(ResourceType::short_name)
        .unwrap_or("other")
        .to_owned()
}
