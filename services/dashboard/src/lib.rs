//! The SRE dashboard: the web app in `web/app`, built into the binary.
//!
//! The app needs no front-end build: plain JavaScript modules and CSS,
//! embedded here with `include_bytes!`, so `meridian serve` serves it with
//! no extra step and a release binary carries the exact files it was built
//! with. [`with_api`] puts the dashboard in front of the API router:
//! the assets at `/` and `/assets/...`, an SPA fallback that answers the
//! app's own deep links (`/policies/NAME`, `/events`, ...) with
//! `index.html`, and everything else, including every unknown `/api/...`
//! path, handed to the API untouched so it keeps its JSON errors.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower::ServiceExt;

/// One embedded file.
struct Asset {
    /// Path under `/assets/` (the index is served at `/`).
    name: &'static str,
    bytes: &'static [u8],
    content_type: &'static str,
    /// Strong validator: FNV-1a of the bytes, computed at compile time.
    etag: u64,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {{
        const BYTES: &[u8] = include_bytes!(concat!("../../../web/app/", $name));
        Asset {
            name: $name,
            bytes: BYTES,
            content_type: $type,
            etag: fnv1a(BYTES),
        }
    }};
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

static INDEX: Asset = asset!("index.html", HTML);
static ASSETS: &[Asset] = &[
    asset!("assets/app.css", CSS),
    asset!("assets/main.js", JS),
    asset!("assets/api.js", JS),
    asset!("assets/logic.js", JS),
    asset!("assets/ui.js", JS),
    asset!("assets/overview.js", JS),
    asset!("assets/policy.js", JS),
    asset!("assets/events.js", JS),
    asset!("assets/xds.js", JS),
    asset!("assets/favicon.svg", "image/svg+xml"),
];

const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Paths the SPA fallback never answers: they belong to the API (or to
/// the assets), and a client asking for one must get the API's own answer,
/// a JSON 404 included, never the app's HTML.
const RESERVED: &[&str] = &[
    "/api",
    "/assets",
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/metrics",
];

fn is_reserved(path: &str) -> bool {
    RESERVED.iter().any(|prefix| {
        path == *prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The dashboard in front of `api`: assets, the SPA fallback, and the API
/// for everything else.
pub fn with_api(api: Router) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/*file", get(asset))
        .fallback(fallback)
        .with_state(api)
}

async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS
        .iter()
        .find(|a| a.name.strip_prefix("assets/") == Some(&file))
    {
        Some(a) => serve(a, &headers),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such asset",
        )
            .into_response(),
    }
}

/// A page navigation (GET or HEAD asking for HTML) to one of the app's
/// own paths gets the app, which routes on the path itself; anything else
/// goes to the API.
async fn fallback(State(api): State<Router>, request: Request) -> Response {
    let navigation = matches!(*request.method(), Method::GET | Method::HEAD)
        && !is_reserved(request.uri().path())
        && request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html"));
    if navigation {
        return serve(&INDEX, request.headers());
    }
    match api.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.etag);
    // No build step means no content-hashed file names, so nothing may be
    // cached blindly: every use revalidates, and an unchanged file costs a
    // 304 with no body. A new binary's files are picked up at once.
    let cache = HeaderValue::from_static("no-cache");
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Body::from(asset.bytes).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, cache);
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.content_type == HTML {
        // Everything the app loads comes from this origin, and nothing
        // inline: the weight bars' widths are set through the CSSOM,
        // which style-src does not restrict.
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self'; \
                 img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use axum::http::Request as HttpRequest;
    use axum::routing::post;

    /// A stand-in API with the same shape of answers as the real one: a
    /// route, and a JSON 404 for everything else.
    fn api() -> Router {
        Router::new()
            .route("/api/v1/things", get(|| async { "things" }))
            .route("/api/v1/things", post(|| async { StatusCode::CREATED }))
            .route("/healthz", get(|| async { "ok" }))
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    [(header::CONTENT_TYPE, "application/json")],
                    r#"{"error":"not_found"}"#,
                )
            })
    }

    async fn call(method: Method, path: &str, accept: Option<&str>) -> Response {
        let mut req = HttpRequest::builder().method(method).uri(path);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        with_api(api())
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn body(r: Response) -> String {
        String::from_utf8(to_bytes(r.into_body(), 1 << 22).await.unwrap().to_vec()).unwrap()
    }

    const BROWSER: Option<&str> = Some("text/html,application/xhtml+xml,*/*;q=0.8");

    #[tokio::test]
    async fn index_and_assets_have_their_types_and_validators() {
        let r = call(Method::GET, "/", BROWSER).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], HTML);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        assert!(body(r).await.contains("<title>Meridian"));

        for a in ASSETS {
            let r = call(Method::GET, &format!("/{}", a.name), None).await;
            assert_eq!(r.status(), StatusCode::OK, "{}", a.name);
            assert_eq!(
                r.headers()[header::CONTENT_TYPE],
                a.content_type,
                "{}",
                a.name
            );
            let etag = r.headers()[header::ETAG].to_str().unwrap().to_owned();
            assert_eq!(body(r).await.len(), a.bytes.len());
            // Revalidation with the validator it gave costs no body.
            let again = with_api(api())
                .oneshot(
                    HttpRequest::get(format!("/{}", a.name))
                        .header(header::IF_NONE_MATCH, &etag)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{}", a.name);
            assert!(body(again).await.is_empty());
        }
    }

    #[tokio::test]
    async fn app_paths_get_the_app_but_api_paths_keep_the_api_answers() {
        for path in ["/policies/track-api", "/events", "/xds", "/policies/a/b"] {
            let r = call(Method::GET, path, BROWSER).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], HTML, "{path}");
        }
        // The API's routes and its own 404s, even for a browser.
        for (path, status, text) in [
            ("/api/v1/things", StatusCode::OK, "things"),
            ("/api/v1/nope", StatusCode::NOT_FOUND, "not_found"),
            ("/api", StatusCode::NOT_FOUND, "not_found"),
            ("/healthz", StatusCode::OK, "ok"),
            ("/openapi.json", StatusCode::NOT_FOUND, "not_found"),
            ("/readyz", StatusCode::NOT_FOUND, "not_found"),
            ("/metrics", StatusCode::NOT_FOUND, "not_found"),
        ] {
            let r = call(Method::GET, path, BROWSER).await;
            assert_eq!(r.status(), status, "{path}");
            assert_eq!(
                body(r).await,
                text.replace("not_found", r#"{"error":"not_found"}"#),
                "{path}"
            );
        }
        // A non-HTML client asking for an unknown path gets the API's 404.
        let r = call(Method::GET, "/policies/x", Some("application/json")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        // Writes always go to the API.
        let r = call(Method::POST, "/api/v1/things", BROWSER).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = call(Method::POST, "/policies/x", BROWSER).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        // A missing asset is a 404, not the app.
        let r = call(Method::GET, "/assets/nope.js", BROWSER).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    /// A file added to `web/app` but not to [`ASSETS`] would be missing
    /// from the binary while working in a browser pointed at the files.
    #[test]
    fn every_file_of_the_app_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/app/assets");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| format!("assets/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.name.to_owned()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn reserved_prefixes_match_whole_segments() {
        assert!(is_reserved("/api"));
        assert!(is_reserved("/api/v1/policies"));
        assert!(is_reserved("/healthz"));
        assert!(!is_reserved("/apix"));
        assert!(!is_reserved("/policies/api"));
        assert!(!is_reserved("/"));
    }
}
