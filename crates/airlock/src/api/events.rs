//! The event log (`GET /v1/events`, tenant-scoped, cursor `after`) and the catalog
//! (`GET /v1/catalog`: every event type with its version, visibility and JSON Schema).

use airlock_events::EventQuery;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::auth::Tenant;
use crate::error::{ApiError, Query};

pub fn router() -> Router<App> {
    Router::new().route("/v1/events", get(list_events)).route("/v1/catalog", get(catalog))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    correlation_id: Option<String>,
    /// An event type, e.g. `file.promoted`.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// The `next_after` of the previous page.
    after: Option<i64>,
    /// 1–1000, default 100.
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventParams),
    responses((status = 200, description = "events oldest first, each with its deliveries, and `next_after`")), security(("api_key" = [])))]
pub async fn list_events(State(app): State<App>, Tenant(tenant): Tenant, Query(p): Query<EventParams>) -> Result<axum::Json<Value>, ApiError> {
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 1000"));
    }
    let events = app
        .bus
        .events(&EventQuery {
            correlation_id: p.correlation_id,
            event_type: p.event_type,
            tenant: Some(tenant),
            after_seq: p.after,
            limit,
            subject: None,
        })
        .await?;
    let next = if events.len() as i64 == limit { events.last().map(|e| e.seq) } else { None };
    Ok(axum::Json(json!({"events": crate::api::files::with_deliveries(&app, events).await?, "next_after": next})))
}

#[utoipa::path(get, path = "/v1/catalog", tag = "events", responses((status = 200, description = "every event type with its schema")))]
pub async fn catalog(State(app): State<App>) -> axum::Json<Value> {
    let types: Vec<Value> = app
        .bus
        .catalog()
        .types()
        .map(|t| json!({"type": t.name, "version": t.version, "visibility": t.visibility, "description": t.description, "schema": t.schema}))
        .collect();
    axum::Json(json!({"types": types}))
}
