//! Per-caller rate limits: a token bucket per identity.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Requests per second, and how many may come at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug)]
pub struct Limiter {
    rate: Rate,
    buckets: HashMap<String, (f64, Instant)>,
}

impl Limiter {
    pub fn new(rate: Rate) -> Limiter {
        Limiter {
            rate,
            buckets: HashMap::new(),
        }
    }

    /// Whether `who`'s bucket is empty at `now` (nothing is taken): how
    /// long until it holds one request again.
    pub fn empty(&mut self, who: &str, now: Instant) -> Option<Duration> {
        let Rate { per_second, burst } = self.rate;
        let (tokens, last) = *self.buckets.get(who)?;
        let refilled =
            (tokens + now.saturating_duration_since(last).as_secs_f64() * per_second).min(burst);
        (refilled < 1.0).then(|| Duration::from_secs_f64((1.0 - refilled) / per_second))
    }

    /// Takes one request from `who`'s bucket at `now`; when it is empty,
    /// how long until the next request would pass.
    pub fn check(&mut self, who: &str, now: Instant) -> Result<(), Duration> {
        let Rate { per_second, burst } = self.rate;
        if self.buckets.len() > 100_000 {
            // Bound memory under a flood of distinct callers: full buckets
            // carry no information, and the rest refill soon enough.
            self.buckets.clear();
        }
        let (tokens, last) = self.buckets.entry(who.to_owned()).or_insert((burst, now));
        let refilled =
            (*tokens + now.saturating_duration_since(*last).as_secs_f64() * per_second).min(burst);
        *last = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_per_caller() {
        let mut l = Limiter::new(Rate {
            per_second: 10.0,
            burst: 3.0,
        });
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.check("a", t).is_ok());
        }
        let wait = l.check("a", t).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        assert!(l.check("b", t).is_ok(), "another caller has its own bucket");
        assert!(l.check("a", t + Duration::from_millis(100)).is_ok());
        assert!(l.check("a", t + Duration::from_millis(100)).is_err());
    }
}
