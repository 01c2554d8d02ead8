//! The command-line client: `get`, `apply`, `delete` against a running server.

use std::path::Path;

use anyhow::{bail, Context};
use meridian_policy::Policy;
use reqwest::{Client, Response, StatusCode};
use serde_json::Value;

use crate::{files, Output};

fn url(server: &str, path: &str) -> String {
    format!("{}/api/v1/policies{path}", server.trim_end_matches('/'))
}

/// Turns an error response into a readable message with every field problem.
async fn fail(what: &str, response: Response) -> anyhow::Error {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let mut message = format!(
        "{what}: {status}: {}",
        body["message"]
            .as_str()
            .unwrap_or("no error message from the server")
    );
    for d in body["details"].as_array().into_iter().flatten() {
        message.push_str(&format!(
            "\n  {}: {}",
            d["field"].as_str().unwrap_or(""),
            d["message"].as_str().unwrap_or("")
        ));
    }
    anyhow::anyhow!(message)
}

/// An HTTP client that sends `MERIDIAN_TOKEN`, when set, as a bearer token.
fn http_client() -> anyhow::Result<Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(token) = std::env::var("MERIDIAN_TOKEN") {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| anyhow::anyhow!("MERIDIAN_TOKEN is not a valid header value"))?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(Client::builder().default_headers(headers).build()?)
}

async fn send(what: &str, request: reqwest::RequestBuilder) -> anyhow::Result<Response> {
    request
        .send()
        .await
        .with_context(|| format!("{what}: cannot reach the Meridian server"))
}

async fn fetch_all(client: &Client, server: &str) -> anyhow::Result<Vec<Policy>> {
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = client.get(url(server, "")).query(&[("limit", "500")]);
        if let Some(t) = &token {
            req = req.query(&[("continue", t)]);
        }
        let response = send("listing policies", req).await?;
        if !response.status().is_success() {
            return Err(fail("listing policies", response).await);
        }
        let page: Value = response.json().await?;
        items.extend(serde_json::from_value::<Vec<Policy>>(
            page["items"].clone(),
        )?);
        match page["continue"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => return Ok(items),
        }
    }
}

pub async fn get(server: &str, name: Option<&str>, output: Output) -> anyhow::Result<()> {
    let client = http_client()?;
    let policies = match name {
        Some(name) => {
            let response = send(
                "reading policy",
                client.get(url(server, &format!("/{name}"))),
            )
            .await?;
            if !response.status().is_success() {
                return Err(fail(&format!("reading policy {name}"), response).await);
            }
            vec![response.json::<Policy>().await?]
        }
        None => fetch_all(&client, server).await?,
    };
    match output {
        Output::Json if name.is_some() => {
            println!("{}", serde_json::to_string_pretty(&policies[0])?)
        }
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"items": policies}))?
        ),
        Output::Yaml => {
            for p in &policies {
                print!("---\n{}", serde_norway::to_string(p)?);
            }
        }
        Output::Table => {
            println!(
                "{:<32} {:<36} {:<28} {:>9}",
                "NAME", "HOST", "ZONES (weight)", "VERSION"
            );
            for p in &policies {
                let zones: Vec<String> = p
                    .spec
                    .zones
                    .iter()
                    .map(|z| format!("{}={}", z.name, z.weight))
                    .collect();
                println!(
                    "{:<32} {:<36} {:<28} {:>9}",
                    p.metadata.name,
                    format!("{}:{}", p.spec.host, p.spec.port),
                    zones.join(","),
                    p.metadata.resource_version.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

/// Creates or updates each document. An update names the version it read
/// (If-Match), so a concurrent change is refused rather than overwritten.
pub async fn apply(server: &str, path: &Path) -> anyhow::Result<()> {
    let docs = files::load(path)?;
    if docs.is_empty() {
        bail!("no policy documents under {}", path.display());
    }
    let client = http_client()?;
    for (file, policy) in docs {
        let name = &policy.metadata.name;
        let what = format!("applying {name} from {}", file.display());
        let response = send(&what, client.get(url(server, &format!("/{name}")))).await?;
        let outcome = match response.status() {
            StatusCode::NOT_FOUND => {
                let response = send(&what, client.post(url(server, "")).json(&policy)).await?;
                if !response.status().is_success() {
                    return Err(fail(&what, response).await);
                }
                "created"
            }
            s if s.is_success() => {
                let current: Policy = response.json().await?;
                if current.spec == policy.spec && current.metadata.labels == policy.metadata.labels
                {
                    "unchanged"
                } else {
                    let rv = current.metadata.resource_version.unwrap_or_default();
                    let request = client
                        .put(url(server, &format!("/{name}")))
                        .header("If-Match", format!("\"{rv}\""))
                        .json(&policy);
                    let response = send(&what, request).await?;
                    if !response.status().is_success() {
                        return Err(fail(&what, response).await);
                    }
                    "configured"
                }
            }
            _ => return Err(fail(&what, response).await),
        };
        println!("policy/{name} {outcome}");
    }
    Ok(())
}

pub async fn delete(server: &str, name: &str) -> anyhow::Result<()> {
    let response = send(
        "deleting policy",
        http_client()?.delete(url(server, &format!("/{name}"))),
    )
    .await?;
    if !response.status().is_success() {
        return Err(fail(&format!("deleting policy {name}"), response).await);
    }
    println!("policy/{name} deleted");
    Ok(())
}

/// `POST /api/v1/policies/NAME/simulate`: prints what would happen if the
/// zones in `fail` stopped answering now.
pub async fn simulate(
    server: &str,
    name: &str,
    fail: &[String],
    output: Output,
) -> anyhow::Result<()> {
    let what = format!("simulating policy {name}");
    let response = send(
        &what,
        http_client()?
            .post(url(server, &format!("/{name}/simulate")))
            .json(&serde_json::json!({"fail": fail})),
    )
    .await?;
    if !response.status().is_success() {
        return Err(self::fail(&what, response).await);
    }
    let s: Value = response.json().await?;
    if !matches!(output, Output::Table) {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "if {} failed: cause {}",
        fail.join(", "),
        s["cause"].as_str().unwrap_or("?")
    );
    println!("{:<24} {:>5}  REASON", "ZONE", "XDS");
    for (zone, w) in s["xds"].as_object().into_iter().flatten() {
        println!(
            "{:<24} {:>5}  {}",
            zone,
            w,
            s["reasons"][zone].as_str().unwrap_or("")
        );
    }
    for d in s["dns"].as_array().into_iter().flatten() {
        println!(
            "dns {} {} via {}: weight {}",
            d["zone"].as_str().unwrap_or(""),
            d["target"].as_str().unwrap_or(""),
            d["provider"].as_str().unwrap_or(""),
            d["weight"]
        );
    }
    for r in s["guardRails"].as_array().into_iter().flatten() {
        println!(
            "guard rail {}: {}",
            r["rule"].as_str().unwrap_or(""),
            r["message"].as_str().unwrap_or("")
        );
    }
    if let Some(c) = s["critical"].as_str() {
        println!("critical: {c}");
    }
    let p = &s["predicted"];
    println!(
        "predicted shift: {} ms to detect, {} ms DNS, {} ms TTL: {} ms in all",
        p["detectionMs"], p["dnsMs"], p["ttlMs"], p["totalMs"]
    );
    Ok(())
}

/// Renders locally from the server's stored policies: the translation is a
/// pure function of them, so this prints what the server serves.
pub async fn render(
    server: &str,
    node: &str,
    policy: Option<&str>,
    xds: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let client = http_client()?;
    let policies = fetch_all(&client, server).await?;
    if let Some(name) = policy {
        if !policies.iter().any(|p| p.metadata.name == name) {
            bail!("policy {name:?} not found");
        }
    }
    let resources = meridian_xds::render(
        &policies,
        &meridian_xds::Weights::new(),
        &meridian_xds::Rollouts::new(),
        policy,
    );
    let out = serde_json::json!({
        "node": node,
        "bootstrap": envoy_bootstrap(node, xds),
        "resources": resources,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// The Envoy bootstrap of a node that takes everything from Meridian at
/// `xds` over ADS and reports its load there (LRS) through the same cluster.
pub(crate) fn envoy_bootstrap(node: &str, xds: std::net::SocketAddr) -> serde_json::Value {
    let grpc = serde_json::json!({
        "api_type": "GRPC",
        "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "meridian"}}],
    });
    serde_json::json!({
        "node": {"id": node, "cluster": node},
        "dynamic_resources": {
            "ads_config": grpc,
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "cluster_manager": {"load_stats_config": grpc},
        "static_resources": {"clusters": [{
            "name": "meridian",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                },
            },
            "load_assignment": {
                "cluster_name": "meridian",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": xds.ip().to_string(), "port_value": xds.port(),
                }}}}]}],
            },
        }]},
    })
}

/// `GET /readyz`; an error unless it answers 200 within 5 seconds.
pub async fn ready(server: &str) -> anyhow::Result<()> {
    let url = format!("{}/readyz", server.trim_end_matches('/'));
    let response = Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if response.status() != StatusCode::OK {
        bail!("{url} answered {}", response.status());
    }
    println!("ready");
    Ok(())
}

/// `meridian ca rotate`: replaces every workload certificate now.
pub async fn ca_rotate(server: &str) -> anyhow::Result<()> {
    let client = http_client()?;
    let response = send(
        "rotating workload certificates",
        client.post(format!("{}/api/v1/ca/rotate", server.trim_end_matches('/'))),
    )
    .await?;
    if !response.status().is_success() {
        return Err(fail("rotating workload certificates", response).await);
    }
    let body: Value = response.json().await?;
    println!(
        "rotation {} started: every workload certificate is being replaced",
        body["rotation"]
    );
    Ok(())
}

/// `meridian rollout status|pause|resume|promote|abort NAME [--route R]`:
/// `GET /api/v1/policies/NAME/rollouts`, or `POST
/// /api/v1/policies/NAME/rollouts/ROUTE/ACTION`.
pub async fn rollout(
    server: &str,
    name: &str,
    route: Option<&str>,
    action: crate::RolloutAction,
) -> anyhow::Result<()> {
    use crate::RolloutAction as A;
    let client = http_client()?;
    let response = send(
        "reading rollouts",
        client.get(url(server, &format!("/{name}/rollouts"))),
    )
    .await?;
    if !response.status().is_success() {
        return Err(fail(&format!("reading the rollouts of {name}"), response).await);
    }
    let statuses: serde_json::Map<String, Value> = response.json().await?;
    let verb = match action {
        A::Status => {
            for (r, s) in statuses
                .iter()
                .filter(|(r, _)| route.is_none_or(|want| want == r.as_str()))
            {
                println!(
                    "{name}/{r}: {} of {} at step {} {}, weights {}{}",
                    s["phase"].as_str().unwrap_or("?"),
                    s["version"].as_str().unwrap_or("?"),
                    s["stepIndex"],
                    s["steps"],
                    s["weights"],
                    s["reason"]
                        .as_str()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                );
            }
            if statuses.is_empty() {
                println!("{name}: no rollout has started");
            }
            return Ok(());
        }
        A::Pause => "pause",
        A::Resume => "resume",
        A::Promote => "promote",
        A::Abort => "abort",
    };
    let route = match route {
        Some(r) => r.to_owned(),
        None => match statuses.keys().collect::<Vec<_>>()[..] {
            [only] => only.clone(),
            [] => bail!("policy {name} has no rollout"),
            _ => bail!("policy {name} has several rollouts: say which with --route"),
        },
    };
    let response = send(
        "acting on a rollout",
        client.post(url(server, &format!("/{name}/rollouts/{route}/{verb}"))),
    )
    .await?;
    if !response.status().is_success() {
        return Err(fail(&format!("{verb} the rollout of {name}/{route}"), response).await);
    }
    let body: Value = response.json().await?;
    if body["changes"] == true {
        println!("{name}/{route}: {verb} queued; the leader applies it within a second");
    } else {
        println!("{name}/{route}: already so, nothing to do");
    }
    Ok(())
}
