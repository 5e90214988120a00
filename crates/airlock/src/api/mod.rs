//! The HTTP API (CONTRACT §3): one module per resource, each with its `router()`.
//!
//! Cross-cutting: every response carries `X-Correlation-Id` (taken from the request, or new);
//! a valid W3C `traceparent` is kept in [`RequestContext`] and propagated into every event the
//! request causes. Request logs never contain query strings (signed URLs carry signatures).

pub mod blobs;
pub mod events;
pub mod files;
pub mod ops;
pub mod subscriptions;
pub mod uploads;

use axum::Router;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use utoipa::OpenApi;

use crate::app::App;

/// Where a request sits in a trace: the chain its events will share.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub correlation_id: String,
    pub traceparent: Option<String>,
}

/// Accepts a client correlation id of 1–128 visible ASCII characters.
fn valid_correlation_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// W3C trace context: `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero.
pub fn valid_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

async fn context(mut req: Request, next: Next) -> Response {
    let correlation_id = req
        .headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_correlation_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let traceparent =
        req.headers().get("traceparent").and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| valid_traceparent(v)).map(str::to_owned);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    req.extensions_mut().insert(RequestContext { correlation_id: correlation_id.clone(), traceparent });
    let span = tracing::info_span!("request", %method, %path, correlation_id = %correlation_id);
    let started = std::time::Instant::now();
    let mut res = tracing::Instrument::instrument(next.run(req), span).await;
    let status = res.status().as_u16();
    // The path only: a signed URL's query string is a credential and never logged.
    tracing::info!(%method, %path, status, correlation_id = %correlation_id, ms = started.elapsed().as_millis() as u64, "Request served.");
    if let Ok(v) = HeaderValue::from_str(&correlation_id) {
        res.headers_mut().insert("x-correlation-id", v);
    }
    // Refused before the body was read to its end: the rest of it would be taken for the next
    // request on this connection, so the connection ends here, and the client is told.
    if matches!(res.status().as_u16(), 408 | 413) {
        res.headers_mut().insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Airlock", description = "A self-hosted, event-driven file-upload pipeline."),
    paths(
        uploads::create_upload, blobs::put_bytes, blobs::get_bytes, files::get_file, files::list_files, files::complete,
        files::download, files::delete_file, files::file_events, files::file_event_stream,
        subscriptions::create, subscriptions::list, subscriptions::show, subscriptions::remove, subscriptions::dead_letters,
        subscriptions::replay, subscriptions::redrive, subscriptions::discard, events::list_events, events::catalog,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    components(schemas(uploads::CreateUpload, subscriptions::CreateSubscription)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

/// The whole API.
pub fn router(app: App) -> Router {
    Router::new()
        .merge(uploads::router())
        .merge(blobs::router())
        .merge(files::router())
        .merge(events::router())
        .merge(ops::router())
        .merge(subscriptions::router())
        .route("/openapi.json", axum::routing::get(|| async { axum::Json(ApiDoc::openapi()) }))
        .fallback(|| async { crate::error::ApiError::not_found("route") })
        .layer(axum::middleware::from_fn(context))
        .with_state(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_checked_to_the_w3c_format() {
        assert!(valid_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        assert!(!valid_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01"));
        assert!(!valid_traceparent("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"));
        assert!(!valid_traceparent("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        assert!(!valid_traceparent("garbage"));
    }

    #[test]
    fn the_openapi_document_lists_the_routes() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        for path in ["/v1/uploads", "/v1/files/{id}", "/v1/files/{id}/download", "/v1/events", "/readyz"] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing");
        }
    }
}
