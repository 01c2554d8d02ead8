//! Reading what a request says: body format, size limit, query parameters,
//! `If-Match`. Each failure is an [`ApiError`] with the status the API promises.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use meridian_policy::{decode, Format, Policy};
use meridian_store::Precondition;

use crate::error::ApiError;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

pub fn content_type(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        raw.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
    )
}

/// The policy formats accepted on POST and PUT.
pub fn policy_format(headers: &HeaderMap) -> Result<Format, ApiError> {
    let ct = content_type(headers);
    match ct.as_deref() {
        Some("application/json") => Ok(Format::Json),
        Some("application/yaml" | "application/x-yaml" | "text/yaml") => Ok(Format::Yaml),
        other => Err(ApiError::unsupported_media_type(
            other,
            "application/json or application/yaml",
        )),
    }
}

/// The body's bytes when its type is `expected` (415 otherwise; 413 when
/// too large).
pub async fn typed_body(
    headers: &HeaderMap,
    body: Body,
    expected: &str,
) -> Result<axum::body::Bytes, ApiError> {
    let ct = content_type(headers);
    if ct.as_deref() != Some(expected) {
        return Err(ApiError::unsupported_media_type(ct.as_deref(), expected));
    }
    read_body(headers, body).await
}

/// A body of type `expected` parsed as JSON; 400 when it is not JSON.
pub async fn json_value(
    headers: &HeaderMap,
    body: Body,
    expected: &str,
) -> Result<serde_json::Value, ApiError> {
    let bytes = typed_body(headers, body, expected).await?;
    serde_json::from_slice(&bytes).map_err(ApiError::malformed_json)
}

/// Collects the body, refusing more than [`MAX_BODY`] bytes without
/// reading them all, and refusing a JSON body with text PostgreSQL cannot
/// store ([`storable_json`]). Every handler that keeps what it reads
/// reads through here.
pub async fn read_body(headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let bytes = read_raw_body(headers, body).await?;
    // A body that is not JSON is the caller's to refuse, in its own words.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        storable_json(&value)?;
    }
    Ok(bytes)
}

/// [`read_body`] without the text check, for bodies that are verified
/// and never stored (webhook payloads).
pub async fn read_raw_body(headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(ApiError::too_large(MAX_BODY));
    }
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::too_large(MAX_BODY))
}

/// Decodes a policy body; server-set metadata in the input is dropped.
pub async fn policy_body(headers: &HeaderMap, body: Body) -> Result<Policy, ApiError> {
    let format = policy_format(headers)?;
    let bytes = read_body(headers, body).await?;
    let mut policy = decode::from_bytes(&bytes, format)?;
    policy.metadata.clear_server_fields();
    // YAML has its own escapes for NUL ("\0"), so the decoded policy is
    // checked, not only a JSON body.
    storable_json(&serde_json::to_value(&policy).expect("a policy serializes"))?;
    Ok(policy)
}

/// Why PostgreSQL could not store `s` (`text` and `jsonb` hold no NUL
/// character), if it could not.
pub fn unstorable(s: &str) -> Option<&'static str> {
    s.contains('\0')
        .then_some("contains a NUL character (\\u0000), which cannot be stored")
}

/// 422 naming the first field (as `a.b[2].c`) or key whose text
/// PostgreSQL cannot store.
pub fn storable_json(value: &serde_json::Value) -> Result<(), ApiError> {
    fn walk(v: &serde_json::Value, at: &str) -> Option<(String, &'static str)> {
        use serde_json::Value as V;
        match v {
            V::String(s) => unstorable(s).map(|why| (at.to_owned(), why)),
            V::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| walk(item, &format!("{at}[{i}]"))),
            V::Object(map) => map.iter().find_map(|(k, item)| {
                let here = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match unstorable(k) {
                    Some(why) => Some((here, why)),
                    None => walk(item, &here),
                }
            }),
            _ => None,
        }
    }
    match walk(value, "") {
        None => Ok(()),
        Some((field, why)) => Err(ApiError::invalid_resource(
            "request",
            vec![meridian_policy::FieldError::new(field, why)],
        )),
    }
}

/// Refuses a request whose path or query holds text PostgreSQL cannot
/// store (a NUL, `%00`) or that is not UTF-8 once percent-decoded, with a
/// 400 naming the query parameter or the path, before any handler sees it:
/// one check for every route, rather than one per handler.
pub async fn storable_uri(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let uri = request.uri();
    let path_bytes = percent_decode(uri.path().as_bytes(), false);
    let path_problem = match std::str::from_utf8(&path_bytes) {
        Err(_) => Some("is not UTF-8 text once percent-decoded"),
        Ok(text) => unstorable(text),
    };
    if let Some(why) = path_problem {
        return ApiError::bad_request(format!("the request path {why}")).into_response();
    }
    for pair in uri.query().unwrap_or_default().split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (
            percent_decode(k.as_bytes(), true),
            percent_decode(v.as_bytes(), true),
        );
        let name = String::from_utf8_lossy(&k).replace('\0', "\\u0000");
        for (what, bytes) in [("name", &k), ("value", &v)] {
            let problem = match std::str::from_utf8(bytes) {
                Err(_) => Some("is not UTF-8 text once percent-decoded"),
                Ok(text) => unstorable(text),
            };
            if let Some(why) = problem {
                return ApiError::bad_request(format!(
                    "query parameter {name:?}: its {what} {why}"
                ))
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// `%XX` escapes (and, in a query, `+` for space) as bytes; a malformed
/// escape stays as it is, as browsers send it.
fn percent_decode(input: &[u8], plus_is_space: bool) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'%' if i + 2 < input.len() => match (hex(input[i + 1]), hex(input[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// `If-Match`: absent, `*`, or one entity tag (quoted or not).
pub fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(Precondition::None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::bad_request("If-Match is not valid text"))?
        .trim();
    if value == "*" {
        return Ok(Precondition::Exists);
    }
    if value.contains(',') {
        return Err(ApiError::bad_request(
            "If-Match with several entity tags is not supported; send one",
        ));
    }
    Ok(Precondition::Version(value.trim_matches('"').to_owned()))
}

/// The entity tag of a policy: its resourceVersion, quoted.
pub fn etag(policy: &Policy) -> String {
    format!(
        "\"{}\"",
        policy
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default()
    )
}

/// Query parameters as pairs, refusing any name not in `allowed`.
pub fn query_pairs(raw: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {k:?}; this route takes {}",
            allowed.join(", ")
        )));
    }
    Ok(pairs)
}

/// `?dryRun=true|false`.
pub fn dry_run(raw: Option<&str>) -> Result<bool, ApiError> {
    Ok(flags(raw, &["dryRun"])?[0])
}

/// `?dryRun=` and `?force=` of writes to an existing policy, in that order.
pub fn dry_run_force(raw: Option<&str>) -> Result<(bool, bool), ApiError> {
    let f = flags(raw, &["dryRun", "force"])?;
    Ok((f[0], f[1]))
}

/// Boolean query flags, in the order named; absent ones are false.
pub fn flags(raw: Option<&str>, names: &[&str]) -> Result<Vec<bool>, ApiError> {
    let mut out = vec![false; names.len()];
    for (k, v) in query_pairs(raw, names)? {
        let value = match v.as_str() {
            "true" | "" => true,
            "false" => false,
            other => {
                return Err(ApiError::bad_request(format!(
                    "{k} must be true or false, not {other:?}"
                )))
            }
        };
        if let Some(i) = names.iter().position(|n| *n == k) {
            out[i] = value;
        }
    }
    Ok(out)
}

/// A `since=` query value: an RFC 3339 time.
pub fn since_param(v: &str) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| ApiError::bad_request(format!("since must be an RFC 3339 time, not {v:?}")))
}

/// A `limit=` query value of a log read: 1 to 5000.
pub fn limit_param(v: &str) -> Result<i64, ApiError> {
    v.parse()
        .ok()
        .filter(|n| (1..=5000).contains(n))
        .ok_or_else(|| ApiError::bad_request(format!("limit must be 1 to 5000, not {v:?}")))
}

/// Continue tokens are opaque to clients; inside, the last name of the page, hex-encoded.
pub fn encode_continue(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn decode_continue(token: &str) -> Result<String, ApiError> {
    let bad =
        || ApiError::bad_request("invalid continue token; pass the one the previous page returned");
    // Checked as bytes first: slicing a &str in the middle of a multi-byte
    // character panics (schemathesis found that), and from_str_radix
    // would take a "+".
    if !token.bytes().all(|b| b.is_ascii_hexdigit())
        || !token.len().is_multiple_of(2)
        || token.len() > 126
    {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>, _>>()?;
    String::from_utf8(bytes).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        assert_eq!(
            decode_continue(&encode_continue("track-api")).unwrap(),
            "track-api"
        );
        for bad in ["zz", "abc", "ff", "\u{fbaad}æ\u{56465}", "é1", "+1"] {
            assert!(decode_continue(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn if_match_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(precondition(&h).unwrap(), Precondition::None);
        h.insert(header::IF_MATCH, "*".parse().unwrap());
        assert_eq!(precondition(&h).unwrap(), Precondition::Exists);
        h.insert(header::IF_MATCH, "\"42\"".parse().unwrap());
        assert_eq!(
            precondition(&h).unwrap(),
            Precondition::Version("42".into())
        );
        h.insert(header::IF_MATCH, "\"1\", \"2\"".parse().unwrap());
        assert!(precondition(&h).is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%00b", false), b"a\0b");
        assert_eq!(percent_decode(b"a+b%2B%zz%4", true), b"a b+%zz%4");
        assert_eq!(percent_decode(b"%FF", false), [0xFF]);
        assert_eq!(percent_decode(b"%", false), b"%");
    }

    #[test]
    fn unstorable_json_names_the_field() {
        let v = serde_json::json!({"items": [{"metadata": {"name": "ok"}}, {"metadata": {"name": "a\u{0}b"}}]});
        let e = storable_json(&v).unwrap_err();
        assert_eq!(e.body.details[0].field, "items[1].metadata.name");
        assert_eq!(e.status, axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        let key = serde_json::json!({"labels": {"k\u{0}": "v"}});
        assert_eq!(
            storable_json(&key).unwrap_err().body.details[0].field,
            "labels.k\u{0}"
        );
        assert!(storable_json(&serde_json::json!({"a": ["b", 1, null]})).is_ok());
    }

    #[test]
    fn unknown_query_parameters_are_refused() {
        assert!(dry_run(Some("dryRun=true")).unwrap());
        assert!(!dry_run(None).unwrap());
        assert!(dry_run(Some("dryrun=true")).is_err());
        assert!(dry_run(Some("dryRun=maybe")).is_err());
    }
}
