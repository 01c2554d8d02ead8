//! `meridian watch`: a small client of the gRPC API's streams.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use meridian_proto::v1 as pb;
use meridian_proto::v1::failover_service_client::FailoverServiceClient;
use meridian_proto::v1::policy_service_client::PolicyServiceClient;

#[derive(Args)]
pub struct WatchArgs {
    /// Failover events instead of policy changes.
    #[arg(long)]
    events: bool,
    /// Resume after this resource version (with --events: event id).
    /// Default: policies as they are now, then changes; events from now on.
    #[arg(long)]
    from: Option<String>,
    /// Only this policy.
    #[arg(long)]
    policy: Option<String>,
    /// Address of a running Meridian's gRPC API.
    #[arg(
        long,
        env = "MERIDIAN_GRPC_SERVER",
        default_value = "http://127.0.0.1:9090"
    )]
    grpc_server: String,
}

/// Adds `MERIDIAN_TOKEN`, when set, as the bearer token of every call.
#[derive(Clone)]
struct Token(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

fn token() -> anyhow::Result<Token> {
    match std::env::var("MERIDIAN_TOKEN") {
        Ok(t) => Ok(Token(Some(format!("Bearer {t}").parse().map_err(
            |_| anyhow::anyhow!("MERIDIAN_TOKEN is not a valid header value"),
        )?))),
        Err(_) => Ok(Token(None)),
    }
}

async fn channel(server: &str) -> anyhow::Result<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(server.to_owned())
        .with_context(|| format!("--grpc-server {server:?}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {server}"))
}

/// Stop after this many failed reconnects in a row.
const MAX_RETRIES: u32 = 10;

pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    let mut position = args.from.clone();
    let mut failures = 0;
    loop {
        let result = if args.events {
            events(&args, &mut position).await
        } else {
            policies(&args, &mut position).await
        };
        match result {
            Ok(()) => failures = 0,
            Err(e) if failures < MAX_RETRIES => {
                failures += 1;
                eprintln!("watch: {e:#}; reconnecting");
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(Duration::from_millis(500 * u64::from(failures.max(1)))).await;
    }
}

async fn policies(args: &WatchArgs, position: &mut Option<String>) -> anyhow::Result<()> {
    let mut client =
        PolicyServiceClient::with_interceptor(channel(&args.grpc_server).await?, token()?);
    let request = pb::WatchPoliciesRequest {
        resource_version: position.clone().unwrap_or_default(),
        name: args.policy.clone().unwrap_or_default(),
    };
    let mut stream = client.watch_policies(request).await?.into_inner();
    while let Some(change) = stream.message().await? {
        let kind = pb::ChangeType::try_from(change.r#type).map_or("UNKNOWN", |t| {
            t.as_str_name().trim_start_matches("CHANGE_TYPE_")
        });
        let name = change
            .policy
            .as_ref()
            .and_then(|p| p.metadata.as_ref())
            .map_or("", |m| m.name.as_str());
        let generation = change
            .policy
            .as_ref()
            .and_then(|p| p.metadata.as_ref())
            .and_then(|m| m.generation)
            .map(|g| format!(" generation={g}"))
            .unwrap_or_default();
        let actor = match change.actor.as_str() {
            "" => String::new(),
            a => format!(" by {a}"),
        };
        println!(
            "{} {kind} {name}{generation}{actor}",
            change.resource_version
        );
        *position = Some(change.resource_version);
    }
    Ok(())
}

async fn events(args: &WatchArgs, position: &mut Option<String>) -> anyhow::Result<()> {
    let after_id = match position {
        Some(id) => Some(id.parse().context("--from must be an event id")?),
        None => None,
    };
    let mut client =
        FailoverServiceClient::with_interceptor(channel(&args.grpc_server).await?, token()?);
    let request = pb::WatchEventsRequest {
        after_id,
        policy: args.policy.clone().unwrap_or_default(),
    };
    let mut stream = client.watch_events(request).await?.into_inner();
    while let Some(e) = stream.message().await? {
        let at =
            e.at.as_ref()
                .and_then(meridian_proto::from_timestamp)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
        println!(
            "{} {at} {} {} {} {}",
            e.id, e.severity, e.kind, e.policy, e.message
        );
        *position = Some(e.id.to_string());
    }
    Ok(())
}
