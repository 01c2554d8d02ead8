//! Reading `/metrics` the way Prometheus does: by family name and labels.

/// `GET {api}/metrics` as text; panics unless it answers 200 with the
/// OpenMetrics content type.
pub async fn scrape(api: &str) -> String {
    let r = reqwest::get(format!("{api}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(r.status(), 200, "GET /metrics");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        ct.starts_with("application/openmetrics-text"),
        "content type {ct}"
    );
    r.text().await.unwrap()
}

/// The value of the series `name` whose labels include every pair of
/// `labels` (others may be present); the sum when several match, `None`
/// when none does.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(parts) => parts,
            None => continue,
        };
        let (series_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let have: Vec<(&str, &str)> = label_text
            .split("\",")
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if labels.iter().all(|want| have.contains(want)) {
            let v: f64 = value.parse().unwrap_or(f64::NAN);
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_series_by_subset_of_labels() {
        let text = "# TYPE a counter\na_total{x=\"1\",y=\"p,q\"} 2\na_total{x=\"2\",y=\"r\"} 3\nb 7\n# EOF\n";
        assert_eq!(sample(text, "a_total", &[("x", "1")]), Some(2.0));
        assert_eq!(sample(text, "a_total", &[("y", "p,q")]), Some(2.0));
        assert_eq!(sample(text, "a_total", &[]), Some(5.0));
        assert_eq!(sample(text, "a_total", &[("x", "9")]), None);
        assert_eq!(sample(text, "b", &[]), Some(7.0));
    }
}
