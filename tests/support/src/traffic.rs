//! Traffic through an Envoy egress listener, and waiting for conditions.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::Value;
use tokio::task::JoinSet;

/// A port free on every loopback address given.
pub fn free_port(ips: &[&str]) -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if ips.iter().all(|ip| TcpListener::bind((*ip, port)).is_ok()) {
            return port;
        }
    }
}

/// One request to `127.0.0.1:port` with `Host: host`; the backend's JSON
/// answer, or the failure. `extra` headers are sent as given.
pub async fn request(
    client: &Client,
    port: u16,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> Result<Value, String> {
    let mut req = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = req.send().await.map_err(|e| e.to_string())?;
    if r.status() != 200 {
        // Envoy's body names the reason (no healthy upstream, reset reason, ...).
        let status = r.status();
        return Err(format!(
            "status {status}: {}",
            r.text().await.unwrap_or_default()
        ));
    }
    r.json().await.map_err(|e| e.to_string())
}

/// `n` requests, 8 at a time, every `spoof_every`-th with `spoof` headers;
/// panics on the first failure.
pub async fn burst(
    port: u16,
    host: &str,
    path: &str,
    n: usize,
    spoof_every: usize,
    spoof: &'static [(&'static str, &'static str)],
) -> Vec<Value> {
    let client = Client::new();
    let mut out = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    for i in 0..n {
        let (client, path, host) = (client.clone(), path.to_owned(), host.to_owned());
        let extra: &'static [(&str, &str)] = if spoof_every > 0 && i % spoof_every == 0 {
            spoof
        } else {
            &[]
        };
        set.spawn(async move { request(&client, port, &host, &path, extra).await });
        if set.len() >= 8 {
            out.push(
                set.join_next()
                    .await
                    .unwrap()
                    .unwrap()
                    .expect("request through envoy"),
            );
        }
    }
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap().expect("request through envoy"));
    }
    out
}

/// Percentage of answers whose `key` is `value`.
pub fn share(answers: &[Value], key: &str, value: &str) -> f64 {
    answers.iter().filter(|a| a[key] == value).count() as f64 * 100.0 / answers.len() as f64
}

/// Polls `check` every 100 ms until it holds; panics after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {within:?}");
}

/// True when `n` requests in a row all succeed and land in `zone`. For
/// waiting on a shift: failures while Envoy still routes to a zone that
/// just went down are expected then, and only mean "not yet".
pub async fn all_reach(port: u16, host: &str, n: usize, zone: &str) -> bool {
    let client = Client::new();
    for _ in 0..n {
        match request(&client, port, host, "/", &[]).await {
            Ok(answer) if answer["zone"] == zone => {}
            _ => return false,
        }
    }
    true
}
