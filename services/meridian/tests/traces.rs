//! Trace export over OTLP/gRPC to a collector: a real gRPC trace service on
//! loopback, fed by the real binary's exporter. Spans must land in the
//! caller's trace, nest (request → store write), follow the caller's
//! sampling decision, and the batch still queued at SIGTERM must be flushed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_proto::v1::policy_service_client::PolicyServiceClient;
use meridian_proto::v1::GetPolicyRequest;
use meridian_test_support::database;
use meridian_test_support::process::Meridian;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::json;

static BIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("MERIDIAN_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_meridian").to_owned())
});
const WAIT: Duration = Duration::from_secs(30);

/// Polls `find` until it gives something or `within` passes.
async fn eventually<T>(within: Duration, mut find: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = find() {
            return Some(found);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One exported span, flattened for assertions.
#[derive(Clone, Debug)]
struct Exported {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: i32,
    attributes: BTreeMap<String, String>,
    resource: BTreeMap<String, String>,
}

/// An OTLP trace receiver, as a collector runs it.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
}

fn text(attributes: Vec<KeyValue>) -> BTreeMap<String, String> {
    attributes
        .into_iter()
        .map(|kv| {
            let value = match kv.value.and_then(|v| v.value) {
                Some(any_value::Value::StringValue(s)) => s,
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key, value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for batch in request.into_inner().resource_spans {
            let resource = text(batch.resource.map(|r| r.attributes).unwrap_or_default());
            for scope in batch.scope_spans {
                for span in scope.spans {
                    spans.push(Exported {
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        attributes: text(span.attributes),
                        resource: resource.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Listens on a free loopback port; its `http://` address.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        format!("http://{addr}")
    }

    fn in_trace(&self, trace_id: &str) -> Vec<Exported> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    fn named(&self, name: &str) -> Vec<Exported> {
        let spans = self.spans.lock().unwrap();
        spans.iter().filter(|s| s.name == name).cloned().collect()
    }
}

fn policy(name: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "host": format!("{name}.example.com"), "port": 8443,
            "zones": [
                {"name": "zone-a", "weight": 50, "endpoints": [{"address": "127.0.0.2", "port": 9}]},
                {"name": "zone-b", "weight": 50, "endpoints": [{"address": "127.0.0.3", "port": 9}]}
            ]
        }
    })
}

async fn start(db_url: &str, collector: &str, batch_delay_ms: &str) -> Meridian {
    Meridian::start_with(
        Path::new(BIN.as_str()),
        db_url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
            ("OTEL_BSP_SCHEDULE_DELAY", batch_delay_ms),
            ("MERIDIAN_REPLICA_ID", "replica-traced"),
            // No health probes: only the spans this test causes.
            ("MERIDIAN_ROLES", "api,grpc,failover"),
        ],
        &[],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_traced_inside_the_callers_trace() {
    let db = database().await;
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let m = start(&db.url, &endpoint, "100").await;
    let http = reqwest::Client::new();

    // A REST write inside a trace the caller started.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let r = http
        .post(m.url("/api/v1/policies"))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .json(&policy("traced"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let found = eventually(WAIT, || {
        let spans = collector.in_trace(trace);
        let request = spans.iter().find(|s| s.name == "POST /api/v1/policies")?;
        let write = spans
            .iter()
            .find(|s| s.name == "store.write" && s.parent_span_id == request.span_id)?;
        Some((request.clone(), write.clone()))
    })
    .await;
    let (request, write) = found.expect("the request and its store write were exported");
    assert_eq!(request.parent_span_id, caller, "{request:?}");
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(request.attributes["http.response.status_code"], "201");
    assert_eq!(request.attributes["route"], "/api/v1/policies");
    assert_eq!(request.resource["service.name"], "meridian");
    assert_eq!(request.resource["service.instance.id"], "replica-traced");
    assert_eq!(write.attributes["policy"], "traced");
    assert_eq!(write.attributes["db.system"], "postgresql");
    assert_eq!(write.kind, SpanKind::Client as i32);

    // A gRPC call, with the trace context in its metadata.
    let grpc_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut client = PolicyServiceClient::connect(m.grpc.clone()).await.unwrap();
    let mut call = tonic::Request::new(GetPolicyRequest {
        name: "traced".into(),
    });
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{grpc_trace}-b7ad6b7169203331-01")
            .parse()
            .unwrap(),
    );
    client.get_policy(call).await.unwrap();
    let rpc = eventually(WAIT, || {
        collector
            .in_trace(grpc_trace)
            .into_iter()
            .find(|s| s.name == "meridian.v1.PolicyService/GetPolicy")
    })
    .await
    .expect("the gRPC call was exported in the caller's trace");
    assert_eq!(rpc.parent_span_id, "b7ad6b7169203331");
    assert_eq!(rpc.attributes["rpc.method"], "GetPolicy");
    assert_eq!(rpc.kind, SpanKind::Server as i32);

    // A caller that decided not to sample: nothing of its trace is sent,
    // though the request itself succeeds.
    let unsampled = "11111111111111111111111111111111";
    let r = http
        .get(m.url("/api/v1/policies/traced"))
        .header("traceparent", format!("00-{unsampled}-2222222222222222-00"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A failover decision is a root span of its own: drain a zone.
    let r = http
        .post(m.url("/api/v1/policies/traced/zones/zone-a/drain"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let decision = eventually(WAIT, || {
        collector
            .named("failover.decide")
            .into_iter()
            .find(|s| s.attributes.get("policy").map(String::as_str) == Some("traced"))
    })
    .await
    .expect("the failover decision was exported");
    // The drain's own transaction re-derives the weights now (a write never
    // waits for the leader), so the leader's pass may find nothing left to
    // change; what matters here is that it is traced, as a root span.
    assert!(
        decision.attributes.contains_key("weights_changed"),
        "{decision:?}"
    );
    assert_eq!(decision.parent_span_id, "", "{decision:?}");

    // The unsampled request happened before the drain and its spans would
    // have been in the same or an earlier batch.
    assert!(
        collector.in_trace(unsampled).is_empty(),
        "an unsampled trace was exported"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_batched_at_sigterm_are_flushed_before_exit() {
    let db = database().await;
    let collector = Collector::default();
    let endpoint = collector.start().await;
    // A batch delay far longer than the test: only the shutdown flush can
    // deliver the span.
    let m = start(&db.url, &endpoint, "600000").await;
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let r = reqwest::Client::new()
        .post(m.url("/api/v1/policies"))
        .header("traceparent", format!("00-{trace}-10f067aa0ba902b7-01"))
        .json(&policy("flushed"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        collector.in_trace(trace).is_empty(),
        "exported before the batch delay: the flush below would prove nothing"
    );
    let (status, took) = m.terminate(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?} after {took:?}"
    );
    let spans = collector.in_trace(trace);
    assert!(
        spans.iter().any(|s| s.name == "POST /api/v1/policies"),
        "the batched request span was lost at shutdown: {spans:?}"
    );
}
