//! Connection pool metrics, read from the pool at each scrape.

use std::sync::LazyLock;

use meridian_telemetry::{gauge, single_gauge, Family, Gauge, Labels};
use sqlx::PgPool;

static CONNECTIONS: LazyLock<Family<Labels<1>, Gauge>> = LazyLock::new(|| {
    gauge(
        "meridian_db_pool_connections",
        "Open database connections of this process, by state (idle or in_use).",
    )
});

static MAX: LazyLock<Gauge> = LazyLock::new(|| {
    single_gauge(
        "meridian_db_pool_max_connections",
        "Largest number of database connections this process may open (--db-pool).",
    )
});

pub(crate) static DB_UP: LazyLock<Gauge> = LazyLock::new(|| {
    single_gauge(
        "meridian_db_up",
        "1 when the last database check answered within a second, 0 when not.",
    )
});

/// Copies the pool's numbers into the gauges before every scrape: reading
/// them then is exact and costs nothing between scrapes.
pub(crate) fn export(pool: PgPool) {
    let max = i64::from(pool.options().get_max_connections());
    MAX.set(max);
    // Up until a check says otherwise, so the family is listed from the start.
    DB_UP.set(1);
    let connections = CONNECTIONS.clone();
    meridian_telemetry::on_render(move || {
        let size = i64::from(pool.size());
        let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
        connections
            .get_or_create(&[("state", "idle".into())])
            .set(idle);
        connections
            .get_or_create(&[("state", "in_use".into())])
            .set((size - idle).max(0));
    });
}
