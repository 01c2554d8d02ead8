//! AWS Route 53, through the AWS SDK (`aws-sdk-route53`).
//!
//! **Shape.** Route 53 has weighted record sets, so Meridian's records map
//! one to one: each zone is one weighted record set named after the policy
//! host, with `SetIdentifier` = zone name, `Weight` = effective weight,
//! `TTL` = `spec.dns.ttl` and type A / AAAA / CNAME by target. Nothing needs
//! encoding on the side, and [`Provider::read`] maps the live sets straight
//! back to [`Record`]s.
//!
//! **Weights.** Without health checks, Route 53 answers a name with its
//! non-zero weighted records in proportion to their weights, so a failed-over
//! 0/100 pair answers only the second zone. When *every* record of the name
//! has weight 0, Route 53 answers all of them with equal probability (as AWS
//! documents for weighted routing): a name never goes dark because Meridian
//! drained everything. Route 53 accepts weights 0..=255; Meridian's are
//! 0..=100, and anything above 255 is refused as [`Error::Invalid`] before a
//! request is made.
//!
//! **Writes.** [`Provider::apply`] sends all changes for a name as ONE
//! `ChangeResourceRecordSets` batch, which Route 53 applies atomically:
//! `DELETE`s first (carrying the exact values read, as Route 53 requires),
//! then `UPSERT`s for creates and updates. Never `CREATE`: real Route 53
//! refuses to create a set that exists (moto accepts it), and `UPSERT` is
//! idempotent, so a retry after an apply that landed but whose answer was
//! lost cannot fail. It then polls `GetChange` every 500 ms until the change
//! is `INSYNC`; a change still `PENDING` after 30 s is
//! [`Error::Unavailable`] (Route 53 will still apply it; the retry re-reads).
//!
//! **Rate limits.** Route 53 allows about five API requests per second per
//! AWS account (all hosted zones, all callers together) and answers more
//! with HTTP 400 `Throttling` / `Rate exceeded`. It also refuses a change to
//! a hosted zone while an earlier one is still being processed
//! (`PriorRequestNotComplete`): the fix is to wait and retry. So one provider
//! (one hosted zone) serializes its changes, holding a lock from submit
//! until `INSYNC`, and both errors are [`Error::Unavailable`], which
//! [`crate::reconcile`] retries with backoff, from a fresh read. The SDK's
//! own retries are off, so `reconcile`'s [`crate::Backoff`] is the only retry
//! policy. A reconcile of a converged name costs one `ListResourceRecordSets`.
//!
//! **Ownership.** Every weighted set Meridian writes has a mark beside it:
//! a weighted TXT set at `_meridian.<name>` with the same `SetIdentifier`,
//! whose value names the installation, policy and zone
//! ([`crate::desired::ownership_text`]), written and deleted in the same
//! batch as the set. Meridian owns exactly the weighted A / AAAA / CNAME
//! sets of a name whose mark is its own: a set it owns that was edited by
//! hand is rewritten, one it owns for a zone no longer published is
//! deleted. Every other set at the name (weighted sets without its mark,
//! simple sets, other routing policies) is foreign: never changed or
//! deleted, and a change that would write over one (same type and set id,
//! or a CNAME beside it) is refused as [`Error::NotOwned`]; Route 53 itself
//! refuses to mix routing policies on one name and type, which surfaces as
//! [`Error::Rejected`]. Alias sets and other types are not read. A set
//! holding several values (hand edit) reads back as one record whose target
//! is the values joined by spaces, so it is replaced, or deleted with its
//! exact values. Health checks are not managed (see Weights).
//!
//! **Errors.** Throttling, `PriorRequestNotComplete`, HTTP 5xx, timeouts and
//! connection errors are [`Error::Unavailable`]; other 4xx are
//! [`Error::Rejected`] with the service's code and message
//! (`InvalidChangeBatch` with all of its messages).
//!
//! **Compatible endpoints.** moto and LocalStack send record values as
//! `<![CDATA[...]]>`, which the SDK's XML decoder reads as empty; the client
//! repairs those `ListResourceRecordSets` answers (see `CdataRecordValues`),
//! and `read` refuses an empty value rather than misreading it.
//!
//! **Credentials** come only from [`Route53Config`]: no environment, profile
//! or instance-metadata lookup, and no network but the (optional)
//! `endpoint_url`.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_route53::config::http::HttpResponse;
use aws_sdk_route53::config::interceptors::FinalizerInterceptorContextMut;
use aws_sdk_route53::config::retry::RetryConfig;
use aws_sdk_route53::config::timeout::TimeoutConfig;
use aws_sdk_route53::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents,
};
use aws_sdk_route53::error::{BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_route53::operation::change_resource_record_sets::ChangeResourceRecordSetsError;
use aws_sdk_route53::operation::list_resource_record_sets::ListResourceRecordSetsOutput;
use aws_sdk_route53::types::{
    Change as AwsChange, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord,
    ResourceRecordSet, RrType,
};

use crate::desired::{
    classify_target, fqdn, ownership_name, ownership_text, parse_ownership, Change, Granularity,
    Held, Owner, Record, RecordKind,
};
use crate::provider::{submit, Error, Fence, Provider, CALL_TIMEOUT};

const KIND: &str = "route53";
/// Region used when [`Route53Config::region`] is `None`; Route 53 is global
/// and signs in us-east-1.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Largest weight Route 53 accepts.
pub const MAX_WEIGHT: u32 = 255;
const MAX_SET_ID_LEN: usize = 128;
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
const SYNC_INTERVAL: Duration = Duration::from_millis(500);
/// TTL of the ownership marks; nothing resolves them in the hot path.
const MARK_TTL: i64 = 300;
/// Error codes that mean "try again later", whatever the HTTP status.
const RETRYABLE_CODES: [&str; 7] = [
    "Throttling",
    "ThrottlingException",
    "PriorRequestNotComplete",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "InternalFailure",
    "RequestTimeout",
];

/// An AWS credential part.
pub type AwsSecret = crate::provider::Secret;

/// Where and how to publish in Route 53.
#[derive(Clone, Debug)]
pub struct Route53Config {
    /// The hosted zone holding the names, e.g. `Z0123456789ABCDEFGHIJ`
    /// (a `/hostedzone/` prefix is accepted).
    pub hosted_zone_id: String,
    /// Signing region; [`DEFAULT_REGION`] when `None`.
    pub region: Option<String>,
    /// Endpoint override (tests, LocalStack, moto), e.g.
    /// `http://127.0.0.1:5000`; the AWS endpoint when `None`.
    pub endpoint_url: Option<String>,
    pub access_key_id: AwsSecret,
    pub secret_access_key: AwsSecret,
}

/// [`Provider`] for one Route 53 hosted zone.
#[derive(Clone)]
pub struct Route53Provider {
    client: aws_sdk_route53::Client,
    hosted_zone_id: String,
    region: String,
    endpoint_url: Option<String>,
    /// Held from submitting a change until it is `INSYNC`: Route 53 refuses
    /// overlapping changes to a zone (`PriorRequestNotComplete`).
    apply_lock: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for Route53Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route53Provider")
            .field("hosted_zone_id", &self.hosted_zone_id)
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .finish_non_exhaustive()
    }
}

impl Route53Provider {
    /// Builds the SDK client from `config` alone; makes no request.
    pub fn new(config: Route53Config) -> Result<Self, Error> {
        let access_key_id = config.access_key_id.expose().trim();
        let secret_access_key = config.secret_access_key.expose().trim();
        if access_key_id.is_empty() || secret_access_key.is_empty() {
            return Err(Error::Invalid(
                "Route 53 credentials are required: set both access_key_id and secret_access_key (they are never looked up in the environment, profiles or instance metadata)".to_owned(),
            ));
        }
        let hosted_zone_id = config
            .hosted_zone_id
            .trim()
            .trim_start_matches("/hostedzone/")
            .to_owned();
        if hosted_zone_id.is_empty() || hosted_zone_id.contains('/') {
            return Err(Error::Invalid(format!(
                "Route 53 hosted_zone_id {:?} is not a hosted zone id",
                config.hosted_zone_id
            )));
        }
        let region = config
            .region
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .unwrap_or(DEFAULT_REGION)
            .to_owned();
        let credentials = Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "meridian-route53-config",
        );
        let mut builder = aws_sdk_route53::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.clone()))
            .credentials_provider(credentials)
            .interceptor(CdataRecordValues)
            // reconcile's Backoff is the one retry policy, and it re-reads
            // before retrying; the SDK would resend a possibly landed batch.
            .retry_config(RetryConfig::disabled())
            // A hung API must surface as Unavailable well inside the
            // failover lease, not stall reconciles.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(1))
                    .operation_attempt_timeout(CALL_TIMEOUT)
                    .build(),
            );
        if let Some(url) = &config.endpoint_url {
            builder = builder.endpoint_url(url.clone());
        }
        Ok(Self {
            client: aws_sdk_route53::Client::from_conf(builder.build()),
            hosted_zone_id,
            region,
            endpoint_url: config.endpoint_url,
            apply_lock: Arc::default(),
        })
    }

    /// The SDK client this provider uses (its credentials, endpoint and
    /// CDATA repair), for Route 53 calls Meridian does not wrap.
    pub fn client(&self) -> &aws_sdk_route53::Client {
        &self.client
    }

    /// The hosted zone id, without a `/hostedzone/` prefix.
    pub fn hosted_zone_id(&self) -> &str {
        &self.hosted_zone_id
    }

    /// Waits until the change `id` is `INSYNC` (see the module docs).
    async fn wait_insync(&self, id: &str, mut status: ChangeStatus) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + SYNC_TIMEOUT;
        while status != ChangeStatus::Insync {
            if tokio::time::Instant::now() >= deadline {
                return Err(unavailable(format!(
                    "change {id} is still {status} after {SYNC_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(SYNC_INTERVAL).await;
            let out = self
                .client
                .get_change()
                .id(id)
                .send()
                .await
                .map_err(|e| sdk_error("GetChange", e))?;
            status = out
                .change_info()
                .map(|i| i.status().clone())
                .ok_or_else(|| Error::Invalid(format!("GetChange {id}: no ChangeInfo")))?;
        }
        Ok(())
    }
}

fn unavailable(message: String) -> Error {
    Error::Unavailable {
        provider: KIND,
        message,
    }
}

impl Provider for Route53Provider {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn granularity(&self) -> Granularity {
        Granularity::PerZone
    }

    async fn read(&self, name: &str, owner: &Owner) -> Result<Held, Error> {
        let name = fqdn(name);
        let marks = self.marks(&name).await?;
        let mut held = Held::default();
        for set in self.list(&name).await? {
            let Some(record) = to_record(&name, &set) else {
                // A simple set, or another routing policy, of a type
                // Meridian publishes: someone else's, in the way of ours.
                if let Some(kind) = RecordKind::parse(set.r#type().as_str()) {
                    if set.alias_target().is_none() && fqdn(&unescape(set.name())) == name {
                        held.foreign.push(Record {
                            name: name.clone(),
                            kind,
                            set_id: set.set_identifier().unwrap_or("(not weighted)").to_owned(),
                            weight: 0,
                            target: set
                                .resource_records()
                                .iter()
                                .map(|r| r.value())
                                .collect::<Vec<_>>()
                                .join(" "),
                            ttl: 0,
                        });
                    }
                }
                continue;
            };
            if record.target.split(' ').any(str::is_empty) {
                return Err(Error::Invalid(format!(
                    "ListResourceRecordSets returned an empty value for {name} ({}); the endpoint's XML may be unreadable to the AWS SDK",
                    record.set_id
                )));
            }
            let ours = marks
                .iter()
                .any(|(set_id, mark, _)| *set_id == record.set_id && mark.owner == owner.id);
            if ours {
                held.owned.push(record);
            } else {
                held.foreign.push(record);
            }
        }
        held.owned.sort_by(|a, b| a.key().cmp(&b.key()));
        Ok(held)
    }

    async fn apply(
        &self,
        name: &str,
        changes: &[Change],
        _desired: &[Record],
        owner: &Owner,
        fence: &impl Fence,
    ) -> Result<(), Error> {
        let name = fqdn(name);
        // The exact marks, for deleting them (Route 53 deletes by value).
        let marks = self.marks(&name).await?;
        let Some(batch) = change_batch(&name, changes, &marks, owner)? else {
            return Ok(());
        };
        let _serialized = self.apply_lock.lock().await;
        let out = submit(fence, async {
            self.client
                .change_resource_record_sets()
                .hosted_zone_id(&self.hosted_zone_id)
                .change_batch(batch)
                .send()
                .await
                .map_err(change_error)
        })
        .await?;
        let info = out.change_info().ok_or_else(|| {
            Error::Invalid("ChangeResourceRecordSets answered without ChangeInfo".to_owned())
        })?;
        self.wait_insync(info.id(), info.status().clone()).await
    }
}

impl Route53Provider {
    /// Every set named `name` (all types), all pages.
    async fn list(&self, name: &str) -> Result<Vec<ResourceRecordSet>, Error> {
        let mut out = Vec::new();
        let mut start = (name.to_owned(), None::<RrType>, None::<String>);
        let mut seen = BTreeSet::new();
        loop {
            let page = self
                .client
                .list_resource_record_sets()
                .hosted_zone_id(&self.hosted_zone_id)
                .start_record_name(&start.0)
                .set_start_record_type(start.1.clone())
                .set_start_record_identifier(start.2.clone())
                .send()
                .await
                .map_err(|e| sdk_error("ListResourceRecordSets", e))?;
            out.extend(
                page.resource_record_sets()
                    .iter()
                    .filter(|set| fqdn(&unescape(set.name())) == name)
                    .cloned(),
            );
            // Sets are listed by name, so the name's sets are contiguous:
            // stop once the next page starts at another name.
            let next = match page.next_record_name() {
                Some(next) if page.is_truncated() && fqdn(&unescape(next)) == name => (
                    next.to_owned(),
                    page.next_record_type().cloned(),
                    page.next_record_identifier().map(str::to_owned),
                ),
                _ => break,
            };
            // A server that ignores the start position would page forever.
            let key = format!("{} {:?} {:?}", next.0, next.1, next.2);
            if !seen.insert(key.clone()) {
                return Err(Error::Invalid(format!(
                    "ListResourceRecordSets for {name} returned the page starting at {key} twice"
                )));
            }
            start = next;
        }
        Ok(out)
    }

    /// The ownership marks of `name`'s sets: (set id, mark, the set itself).
    async fn marks(
        &self,
        name: &str,
    ) -> Result<Vec<(String, crate::desired::Ownership, ResourceRecordSet)>, Error> {
        Ok(self
            .list(&ownership_name(name))
            .await?
            .into_iter()
            .filter(|set| set.r#type() == &RrType::Txt)
            .filter_map(|set| {
                let set_id = set.set_identifier()?.to_owned();
                let mark = set
                    .resource_records()
                    .iter()
                    .find_map(|r| parse_ownership(r.value()))?;
                Some((set_id, mark, set))
            })
            .collect())
    }
}

/// Restores record values sent as `<![CDATA[...]]>`.
///
/// The SDK's XML decoder (aws-smithy-xml `try_data`) reads only plain text
/// nodes, so a CDATA value comes out as `""`. Real Route 53 sends plain text;
/// moto, and LocalStack which embeds it, wrap every `<Value>` in CDATA. For
/// `ListResourceRecordSets` answers whose body has CDATA values, this puts
/// the body's `<Value>`s, in document order, into the parsed records (the
/// only `<Value>` elements of that answer), when the counts agree. Anything
/// else passes untouched; [`Provider::read`] refuses empty values regardless.
#[derive(Debug)]
struct CdataRecordValues;

impl Intercept for CdataRecordValues {
    fn name(&self) -> &'static str {
        "MeridianCdataRecordValues"
    }

    fn modify_before_attempt_completion(
        &self,
        context: &mut FinalizerInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(values) = context
            .response()
            .and_then(|r| r.body().bytes())
            .and_then(cdata_values)
        else {
            return Ok(());
        };
        let Some(Ok(output)) = context.output_or_error_mut() else {
            return Ok(());
        };
        let Some(output) = output.downcast_mut::<ListResourceRecordSetsOutput>() else {
            return Ok(());
        };
        let slots: Vec<&mut String> = output
            .resource_record_sets
            .iter_mut()
            .flat_map(|set| set.resource_records.iter_mut().flatten())
            .map(|rr| &mut rr.value)
            .collect();
        if slots.len() == values.len() {
            for (slot, value) in slots.into_iter().zip(values) {
                *slot = value;
            }
        }
        Ok(())
    }
}

/// The contents of every `<Value>` element in `body`, in order; `None`
/// unless some value is CDATA (nothing to repair).
fn cdata_values(body: &[u8]) -> Option<Vec<String>> {
    const CDATA: &str = "<![CDATA[";
    let body = std::str::from_utf8(body).ok()?;
    if !body.contains(CDATA) {
        return None;
    }
    let mut values = Vec::new();
    let mut rest = body;
    while let Some(start) = rest.find("<Value>") {
        let tail = &rest[start + "<Value>".len()..];
        let end = tail.find("</Value>")?;
        let content = tail[..end].trim();
        values.push(
            match content
                .strip_prefix(CDATA)
                .and_then(|c| c.strip_suffix("]]>"))
            {
                Some(raw) => raw.to_owned(),
                None => content
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&quot;", "\"")
                    .replace("&apos;", "'")
                    .replace("&amp;", "&"),
            },
        );
        rest = &tail[end..];
    }
    Some(values)
}

/// The weighted set as a [`Record`], if it is one Meridian manages for `name`.
fn to_record(name: &str, set: &ResourceRecordSet) -> Option<Record> {
    if fqdn(&unescape(set.name())) != name || set.alias_target().is_some() {
        return None;
    }
    let kind = RecordKind::parse(set.r#type().as_str())?;
    let set_id = set.set_identifier()?;
    let weight = u32::try_from(set.weight()?).ok()?;
    let ttl = u32::try_from(set.ttl()?).ok()?;
    let values: Vec<String> = set
        .resource_records()
        .iter()
        .map(|rr| normalize(kind, rr.value()))
        .collect();
    if values.is_empty() {
        return None;
    }
    Some(Record {
        name: name.to_owned(),
        kind,
        set_id: set_id.to_owned(),
        weight,
        target: values.join(" "),
        ttl,
    })
}

/// The one batch for `changes` (all for `name`): deletes, then upserts, so
/// a switch between CNAME and address records is valid within the batch.
/// `None` when there is nothing to change.
/// Each record's ownership mark goes with it: upserted beside an upsert,
/// deleted (with the exact values of `marks`) beside a delete.
fn change_batch(
    name: &str,
    changes: &[Change],
    marks: &[(String, crate::desired::Ownership, ResourceRecordSet)],
    owner: &Owner,
) -> Result<Option<ChangeBatch>, Error> {
    let (deletes, upserts): (Vec<&Change>, Vec<&Change>) =
        changes.iter().partition(|c| matches!(c, Change::Delete(_)));
    let mut out = Vec::with_capacity(2 * changes.len());
    let change = |action, set| {
        AwsChange::builder()
            .action(action)
            .resource_record_set(set)
            .build()
            .map_err(|e| Error::Invalid(format!("Route 53 change: {e}")))
    };
    for change_ in deletes.into_iter().chain(upserts) {
        let (action, record) = match change_ {
            Change::Upsert(r) => (ChangeAction::Upsert, r),
            Change::Delete(r) => (ChangeAction::Delete, r),
        };
        if record.name != name {
            return Err(Error::Invalid(format!(
                "change for {} in a batch for {name}",
                record.name
            )));
        }
        out.push(change(action.clone(), record_set(record)?)?);
        let mark = match action {
            ChangeAction::Delete => marks
                .iter()
                .find(|(set_id, m, _)| *set_id == record.set_id && m.owner == owner.id)
                .map(|(_, _, set)| set.clone()),
            _ => Some(mark_set(record, owner)?),
        };
        if let Some(mark) = mark {
            out.push(change(action, mark)?);
        }
    }
    if out.is_empty() {
        return Ok(None);
    }
    ChangeBatch::builder()
        .comment(format!("meridian: {} change(s) for {name}", out.len()))
        .set_changes(Some(out))
        .build()
        .map(Some)
        .map_err(|e| Error::Invalid(format!("Route 53 change batch: {e}")))
}

/// The weighted record set for `record`; refuses what Route 53 cannot hold.
fn record_set(record: &Record) -> Result<ResourceRecordSet, Error> {
    let invalid =
        |why: String| Error::Invalid(format!("{} ({}): {why}", record.name, record.set_id));
    if record.weight > MAX_WEIGHT {
        return Err(invalid(format!(
            "weight {} is above Route 53's maximum of {MAX_WEIGHT}",
            record.weight
        )));
    }
    if record.set_id.is_empty() || record.set_id.len() > MAX_SET_ID_LEN {
        return Err(invalid(format!(
            "the zone name must be 1 to {MAX_SET_ID_LEN} characters to be a SetIdentifier"
        )));
    }
    let values = record
        .target
        .split_whitespace()
        .map(|v| ResourceRecord::builder().value(v).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if values.is_empty() {
        return Err(invalid("empty target".to_owned()));
    }
    ResourceRecordSet::builder()
        .name(&record.name)
        .r#type(RrType::from(record.kind.as_str()))
        .set_identifier(&record.set_id)
        .weight(i64::from(record.weight))
        .ttl(i64::from(record.ttl))
        .set_resource_records(Some(values))
        .build()
        .map_err(|e| invalid(e.to_string()))
}

/// The ownership mark of `record`: a weighted TXT set beside it.
fn mark_set(record: &Record, owner: &Owner) -> Result<ResourceRecordSet, Error> {
    let value = format!("\"{}\"", ownership_text(owner, &record.set_id));
    ResourceRecordSet::builder()
        .name(ownership_name(&record.name))
        .r#type(RrType::Txt)
        .set_identifier(&record.set_id)
        .weight(0)
        .ttl(MARK_TTL)
        .resource_records(
            ResourceRecord::builder()
                .value(value)
                .build()
                .map_err(|e| Error::Invalid(e.to_string()))?,
        )
        .build()
        .map_err(|e| Error::Invalid(format!("{} mark: {e}", record.name)))
}

/// Route 53 lists names with `\ddd` octal escapes (e.g. `\052` for `*`).
fn unescape(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn normalize(kind: RecordKind, value: &str) -> String {
    let (parsed_kind, target) = classify_target(value);
    if parsed_kind == kind {
        target
    } else {
        value.to_owned()
    }
}

/// Route 53's answer to a failed call, by retry class (see the module docs).
fn classify(status: Option<u16>, code: Option<&str>, message: &str) -> Error {
    let code = code.unwrap_or("Unknown");
    let retryable = RETRYABLE_CODES.contains(&code)
        || message.contains("Rate exceeded")
        || status.is_some_and(|s| s >= 500 || s == 429);
    match status {
        _ if retryable => unavailable(match status {
            Some(s) => format!("HTTP {s} {code}: {message}"),
            None => format!("{code}: {message}"),
        }),
        Some(status) => Error::Rejected {
            provider: KIND,
            status,
            message: format!("{code}: {message}"),
        },
        None => Error::Invalid(format!("Route 53 {code}: {message}")),
    }
}

fn sdk_error<E>(op: &str, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(e) => classify(
            Some(e.raw().status().as_u16()),
            e.err().code(),
            &format!("{} ({op})", e.err().message().unwrap_or("no message")),
        ),
        SdkError::ResponseError(e) => {
            let status = e.raw().status().as_u16();
            let message = format!("{op}: unreadable response: {}", DisplayErrorContext(&err));
            if status >= 300 {
                classify(Some(status), None, &message)
            } else {
                Error::Invalid(message)
            }
        }
        SdkError::DispatchFailure(e) if e.is_user() => {
            Error::Invalid(format!("{op}: {}", DisplayErrorContext(&err)))
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            unavailable(format!("{op}: {}", DisplayErrorContext(&err)))
        }
        _ => Error::Invalid(format!("{op}: {}", DisplayErrorContext(&err))),
    }
}

/// [`sdk_error`], plus the list of reasons an `InvalidChangeBatch` carries.
fn change_error(err: SdkError<ChangeResourceRecordSetsError, HttpResponse>) -> Error {
    if let SdkError::ServiceError(e) = &err {
        if let ChangeResourceRecordSetsError::InvalidChangeBatch(batch) = e.err() {
            let mut reasons: Vec<&str> = batch.messages().iter().map(String::as_str).collect();
            reasons.extend(batch.message());
            if reasons.is_empty() {
                reasons.push("no message");
            }
            return Error::Rejected {
                provider: KIND,
                status: e.raw().status().as_u16(),
                message: format!("InvalidChangeBatch: {}", reasons.join("; ")),
            };
        }
    }
    sdk_error("ChangeResourceRecordSets", err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: RecordKind, set_id: &str, weight: u32, target: &str) -> Record {
        Record {
            name: "track.example.com.".to_owned(),
            kind,
            set_id: set_id.to_owned(),
            weight,
            target: target.to_owned(),
            ttl: 30,
        }
    }

    fn config() -> Route53Config {
        Route53Config {
            hosted_zone_id: "/hostedzone/Z123".to_owned(),
            region: None,
            endpoint_url: Some("http://127.0.0.1:1".to_owned()),
            access_key_id: AwsSecret::new("AKIDEXAMPLE"),
            secret_access_key: AwsSecret::new("s3cret-key"),
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        assert_eq!(format!("{:?}", AwsSecret::new("x")), "Secret(<redacted>)");
        let config = config();
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret-key") && !printed.contains("AKIDEXAMPLE"));
        let provider = Route53Provider::new(config).unwrap();
        let printed = format!("{provider:?}");
        assert!(!printed.contains("s3cret-key") && !printed.contains("AKIDEXAMPLE"));
        assert_eq!(provider.hosted_zone_id(), "Z123");
        assert_eq!(provider.region, DEFAULT_REGION);
    }

    #[test]
    fn credentials_and_zone_are_required() {
        for (what, edit) in [
            (
                "no access key",
                (|c: &mut Route53Config| c.access_key_id = AwsSecret::new(""))
                    as fn(&mut Route53Config),
            ),
            ("no secret", |c| c.secret_access_key = AwsSecret::new("  ")),
        ] {
            let mut c = config();
            edit(&mut c);
            let err = Route53Provider::new(c).unwrap_err();
            assert!(
                matches!(&err, Error::Invalid(m) if m.contains("credentials are required")),
                "{what}: {err}"
            );
        }
        let mut c = config();
        c.hosted_zone_id = "/hostedzone/".to_owned();
        assert!(matches!(Route53Provider::new(c), Err(Error::Invalid(_))));
    }

    #[test]
    fn classify_table() {
        type Case = (
            &'static str,
            Option<u16>,
            Option<&'static str>,
            &'static str,
            bool,
        );
        let cases: [Case; 9] = [
            (
                "throttling",
                Some(400),
                Some("Throttling"),
                "Rate exceeded",
                true,
            ),
            (
                "rate exceeded, other code",
                Some(400),
                Some("Unknown"),
                "Rate exceeded",
                true,
            ),
            (
                "prior request",
                Some(400),
                Some("PriorRequestNotComplete"),
                "busy",
                true,
            ),
            ("5xx", Some(503), Some("ServiceUnavailable"), "x", true),
            ("500 without code", Some(500), None, "x", true),
            ("429", Some(429), None, "x", true),
            (
                "no such zone",
                Some(404),
                Some("NoSuchHostedZone"),
                "No hosted zone",
                false,
            ),
            (
                "invalid input",
                Some(400),
                Some("InvalidInput"),
                "bad",
                false,
            ),
            (
                "access denied",
                Some(403),
                Some("AccessDenied"),
                "no",
                false,
            ),
        ];
        for (what, status, code, message, retryable) in cases {
            let err = classify(status, code, message);
            assert_eq!(err.is_retryable(), retryable, "{what}: {err}");
            if let Error::Rejected {
                status: s,
                message: m,
                ..
            } = &err
            {
                assert_eq!(Some(*s), status, "{what}");
                assert!(
                    m.contains(message) && m.contains(code.unwrap()),
                    "{what}: {m}"
                );
            }
        }
    }

    #[test]
    fn batch_deletes_first_and_upserts_never_creates_each_with_its_mark() {
        let owner = Owner::new("meridian-test", "track-api");
        let changes = vec![
            Change::Upsert(rec(RecordKind::A, "a", 70, "192.0.2.10")),
            Change::Delete(rec(RecordKind::CNAME, "b", 30, "lb.example.net.")),
        ];
        let b_mark = mark_set(&rec(RecordKind::CNAME, "b", 30, "lb.example.net."), &owner).unwrap();
        let marks = vec![(
            "b".to_owned(),
            parse_ownership(&ownership_text(&owner, "b")).unwrap(),
            b_mark,
        )];
        let batch = change_batch("track.example.com.", &changes, &marks, &owner)
            .unwrap()
            .unwrap();
        let got: Vec<(ChangeAction, String, String, Option<i64>)> = batch
            .changes()
            .iter()
            .map(|c| {
                let set = c.resource_record_set().unwrap();
                (
                    c.action().clone(),
                    set.name().to_owned(),
                    set.r#type().as_str().to_owned(),
                    set.weight(),
                )
            })
            .collect();
        let (host, marks_at) = (
            "track.example.com.".to_owned(),
            "_meridian.track.example.com.".to_owned(),
        );
        assert_eq!(
            got,
            vec![
                (
                    ChangeAction::Delete,
                    host.clone(),
                    "CNAME".to_owned(),
                    Some(30)
                ),
                (
                    ChangeAction::Delete,
                    marks_at.clone(),
                    "TXT".to_owned(),
                    Some(0)
                ),
                (ChangeAction::Upsert, host, "A".to_owned(), Some(70)),
                (ChangeAction::Upsert, marks_at, "TXT".to_owned(), Some(0)),
            ]
        );
        let set = batch.changes()[2].resource_record_set().unwrap();
        assert_eq!(set.set_identifier(), Some("a"));
        assert_eq!(set.ttl(), Some(30));
        assert_eq!(set.resource_records()[0].value(), "192.0.2.10");
        let mark = batch.changes()[3].resource_record_set().unwrap();
        assert_eq!(mark.set_identifier(), Some("a"));
        assert_eq!(
            mark.resource_records()[0].value(),
            "\"heritage=meridian,meridian/owner=meridian-test,meridian/policy=track-api,meridian/zone=a\""
        );
        // A record without a mark of ours (adopted or half-written) is
        // deleted alone.
        let batch = change_batch("track.example.com.", &changes[1..], &[], &owner)
            .unwrap()
            .unwrap();
        assert_eq!(batch.changes().len(), 1);
        assert_eq!(
            change_batch("track.example.com.", &[], &[], &owner).unwrap(),
            None
        );
    }

    #[test]
    fn batch_refuses_what_route53_cannot_hold() {
        let cases = [
            rec(RecordKind::A, "a", 256, "192.0.2.10"),
            rec(RecordKind::A, "", 10, "192.0.2.10"),
            rec(RecordKind::A, &"z".repeat(129), 10, "192.0.2.10"),
            rec(RecordKind::A, "a", 10, " "),
            Record {
                name: "other.example.com.".to_owned(),
                ..rec(RecordKind::A, "a", 10, "192.0.2.10")
            },
        ];
        for record in cases {
            let err = change_batch(
                "track.example.com.",
                &[Change::Upsert(record.clone())],
                &[],
                &Owner::default(),
            );
            assert!(matches!(err, Err(Error::Invalid(_))), "{record:?}: {err:?}");
        }
        assert!(change_batch(
            "track.example.com.",
            &[Change::Upsert(rec(RecordKind::A, "a", 255, "192.0.2.10"))],
            &[],
            &Owner::default(),
        )
        .is_ok());
    }

    fn set(
        name: &str,
        rtype: &str,
        id: Option<&str>,
        weight: Option<i64>,
        values: &[&str],
    ) -> ResourceRecordSet {
        ResourceRecordSet::builder()
            .name(name)
            .r#type(RrType::from(rtype))
            .set_set_identifier(id.map(str::to_owned))
            .set_weight(weight)
            .ttl(30)
            .set_resource_records(Some(
                values
                    .iter()
                    .map(|v| ResourceRecord::builder().value(*v).build().unwrap())
                    .collect(),
            ))
            .build()
            .unwrap()
    }

    #[test]
    fn to_record_keeps_only_managed_weighted_sets() {
        let name = "track.example.com.";
        let cases: Vec<(&str, ResourceRecordSet, Option<Record>)> = vec![
            (
                "weighted A",
                set(
                    "Track.Example.com.",
                    "A",
                    Some("a"),
                    Some(70),
                    &["192.0.2.10"],
                ),
                Some(rec(RecordKind::A, "a", 70, "192.0.2.10")),
            ),
            (
                "AAAA is canonicalized",
                set(name, "AAAA", Some("b"), Some(0), &["2001:DB8:0::1"]),
                Some(rec(RecordKind::AAAA, "b", 0, "2001:db8::1")),
            ),
            (
                "CNAME gets the trailing dot",
                set(name, "CNAME", Some("c"), Some(5), &["LB.example.net"]),
                Some(rec(RecordKind::CNAME, "c", 5, "lb.example.net.")),
            ),
            (
                "several values join, so a delete carries them all",
                set(name, "A", Some("a"), Some(1), &["192.0.2.10", "192.0.2.11"]),
                Some(rec(RecordKind::A, "a", 1, "192.0.2.10 192.0.2.11")),
            ),
            (
                "simple set",
                set(name, "A", None, None, &["192.0.2.10"]),
                None,
            ),
            (
                "latency-style set without weight",
                set(name, "A", Some("a"), None, &["192.0.2.10"]),
                None,
            ),
            (
                "other type",
                set(name, "TXT", Some("a"), Some(1), &["\"x\""]),
                None,
            ),
            (
                "other name",
                set("x.example.com.", "A", Some("a"), Some(1), &["192.0.2.10"]),
                None,
            ),
        ];
        for (what, set, want) in cases {
            assert_eq!(to_record(name, &set), want, "{what}");
        }
        // What apply writes reads back as the same record.
        let written = rec(RecordKind::A, "a", 1, "192.0.2.10 192.0.2.11");
        assert_eq!(
            to_record(name, &record_set(&written).unwrap()),
            Some(written)
        );
    }

    #[test]
    fn cdata_values_are_extracted_in_order() {
        let moto = "<ResourceRecordSets><ResourceRecordSet><ResourceRecords>\
            <ResourceRecord><Value><![CDATA[192.0.2.10]]></Value></ResourceRecord>\
            <ResourceRecord><Value>a&amp;b</Value></ResourceRecord>\
            </ResourceRecords></ResourceRecordSet></ResourceRecordSets>";
        assert_eq!(
            cdata_values(moto.as_bytes()),
            Some(vec!["192.0.2.10".to_owned(), "a&b".to_owned()])
        );
        let plain = "<ResourceRecord><Value>192.0.2.10</Value></ResourceRecord>";
        assert_eq!(
            cdata_values(plain.as_bytes()),
            None,
            "plain text needs no repair"
        );
    }

    #[test]
    fn unescape_octal() {
        assert_eq!(unescape("\\052.example.com."), "*.example.com.");
        assert_eq!(unescape("a\\0"), "a\\0");
        assert_eq!(unescape("track.example.com."), "track.example.com.");
    }
}
