//! Webhook subscriptions, their dead letters, redrive, discard and replay (CONTRACT §3).
//! A tenant sees and manages only its own subscriptions and their dead letters.

use std::collections::BTreeMap;

use airlock_events::Visibility;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::auth::Tenant;
use crate::error::{ApiError, Json};
use crate::webhooks::{self, Webhook, WebhookRetry};

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/subscriptions", post(create).get(list))
        .route("/v1/subscriptions/{id}", get(show).delete(remove))
        .route("/v1/subscriptions/{id}/dead-letters", get(dead_letters))
        .route("/v1/subscriptions/{id}/replay", post(replay))
        .route("/v1/dead-letters/{id}/redrive", post(redrive))
        .route("/v1/dead-letters/{id}", axum::routing::delete(discard))
}

/// A new webhook subscription.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubscription {
    pub name: String,
    /// `http://` or `https://` URL receiving POSTs.
    pub url: String,
    /// Public event types, e.g. `file.promoted.v1` (or `file.promoted`: its newest version).
    pub event_types: Vec<String>,
    /// Equality filters on payload fields, e.g. `{"kind": "kyc_doc"}`.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<BTreeMap<String, Value>>,
    /// A `whsec_` secret (base64 of 24–64 bytes); generated when absent.
    pub secret: Option<String>,
    /// Deliver the matching events published since this RFC 3339 time (a backfill).
    pub replay_since: Option<String>,
    /// Per-attempt timeout in milliseconds (default 10000, 100–60000).
    pub timeout_ms: Option<i64>,
    #[schema(value_type = Option<Object>)]
    pub retry: Option<WebhookRetryBody>,
}

/// Retry policy overrides.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct WebhookRetryBody {
    pub max_attempts: Option<u32>,
    pub base_ms: Option<u64>,
    pub cap_ms: Option<u64>,
}

fn parse_time(field: &str, s: &str) -> Result<time::OffsetDateTime, ApiError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| ApiError::unprocessable("invalid_time", format!("{field}: `{s}` is not an RFC 3339 time: {e}")))
}

async fn view(app: &App, w: &Webhook) -> Result<Value, ApiError> {
    let counts = app.bus.delivery_counts(&w.subscription()).await?;
    let mut v = serde_json::to_value(w).unwrap_or(Value::Null);
    v["deliveries"] = json!(counts);
    v["status"] = if w.disabled_at.is_some() { "disabled" } else { "active" }.into();
    let fmt = |ms: i64| airlock_events::envelope::format_rfc3339(crate::files::from_ms(ms));
    v["created_at"] = fmt(w.created_at).into();
    v["disabled_at"] = w.disabled_at.map(fmt).into();
    Ok(v)
}

#[utoipa::path(post, path = "/v1/subscriptions", tag = "subscriptions", request_body = CreateSubscription,
    responses((status = 201, description = "`{id, secret, …}`; the secret is shown here only"), (status = 422, description = "internal or unknown event type, bad URL, bad secret")),
    security(("api_key" = [])))]
pub async fn create(
    State(app): State<App>,
    Tenant(tenant): Tenant,
    Json(req): Json<CreateSubscription>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    if req.name.trim().is_empty() || req.name.len() > 200 {
        return Err(ApiError::unprocessable("invalid_name", "name must be 1-200 characters"));
    }
    let url = reqwest::Url::parse(&req.url).map_err(|e| ApiError::unprocessable("invalid_url", format!("url: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ApiError::unprocessable("invalid_url", "url must be http:// or https:// with a host"));
    }
    if req.event_types.is_empty() {
        return Err(ApiError::unprocessable("invalid_event_types", "event_types must name at least one public event type"));
    }
    let catalog = app.bus.catalog();
    let mut types = Vec::new();
    for t in &req.event_types {
        let ty =
            catalog.find(t).ok_or_else(|| ApiError::unprocessable("unknown_event_type", format!("`{t}` is not in the catalog (GET /v1/catalog)")))?;
        if ty.visibility != Visibility::Public {
            return Err(ApiError::unprocessable(
                "event_type_not_public",
                format!("`{t}` is an internal event: webhooks may subscribe only to public events (file.uploaded, file.promoted, …)"),
            ));
        }
        types.push(ty.versioned());
    }
    let filter = req.filter.unwrap_or_default();
    if filter.contains_key("tenant") {
        return Err(ApiError::unprocessable("invalid_filter", "`tenant` cannot be filtered: a subscription only ever sees its own tenant"));
    }
    if let Some((k, _)) = filter.iter().find(|(_, v)| !(v.is_string() || v.is_number() || v.is_boolean() || v.is_array())) {
        return Err(ApiError::unprocessable("invalid_filter", format!("filter `{k}`: values are strings, numbers, booleans or arrays of them")));
    }
    let secret = match req.secret {
        Some(s) if webhooks::secret_key(&s).is_some() => s,
        Some(_) => {
            return Err(ApiError::unprocessable("invalid_secret", "secret must be `whsec_` followed by base64 of 24 to 64 bytes"));
        }
        None => webhooks::new_secret().map_err(ApiError::internal)?,
    };
    let timeout_ms = req.timeout_ms.unwrap_or(10_000);
    if !(100..=60_000).contains(&timeout_ms) {
        return Err(ApiError::unprocessable("invalid_timeout", "timeout_ms must be between 100 and 60000"));
    }
    let since = req.replay_since.as_deref().map(|s| parse_time("replay_since", s)).transpose()?;
    let retry = req.retry.map(|r| WebhookRetry { max_attempts: r.max_attempts, base_ms: r.base_ms, cap_ms: r.cap_ms });
    if let Some(r) = &retry
        && (r.max_attempts == Some(0) || r.base_ms == Some(0))
    {
        return Err(ApiError::unprocessable("invalid_retry", "retry.max_attempts and retry.base_ms must be positive"));
    }
    let w = Webhook {
        id: uuid::Uuid::now_v7().to_string(),
        tenant: tenant.clone(),
        name: req.name,
        url: req.url,
        event_types: types,
        filter,
        secrets: vec![secret.clone()],
        timeout_ms,
        created_at: crate::files::ms(time::OffsetDateTime::now_utc()),
        disabled_at: None,
        disabled_reason: None,
    };
    webhooks::insert(app.bus.pool(), &w).await?;
    app.bus.register(&webhooks::spec(&w, webhooks::retry_policy(retry.as_ref()), since)).await?;
    tracing::info!(webhook = %w.id, tenant = %tenant, "Webhook subscription created.");
    let mut v = view(&app, &w).await?;
    v["secret"] = secret.into();
    Ok((StatusCode::CREATED, axum::Json(v)))
}

#[utoipa::path(get, path = "/v1/subscriptions", tag = "subscriptions", responses((status = 200, description = "the tenant's subscriptions")), security(("api_key" = [])))]
pub async fn list(State(app): State<App>, Tenant(tenant): Tenant) -> Result<axum::Json<Value>, ApiError> {
    let mut items = Vec::new();
    for w in webhooks::list(app.bus.pool(), Some(&tenant)).await? {
        items.push(view(&app, &w).await?);
    }
    Ok(axum::Json(json!({"items": items})))
}

async fn load(app: &App, tenant: &str, id: &str) -> Result<Webhook, ApiError> {
    webhooks::get(app.bus.pool(), tenant, id).await?.ok_or_else(|| ApiError::not_found("subscription"))
}

#[utoipa::path(get, path = "/v1/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path, description = "subscription id")),
    responses((status = 200, description = "the subscription with delivery counts by state")), security(("api_key" = [])))]
pub async fn show(State(app): State<App>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let w = load(&app, &tenant, &id).await?;
    Ok(axum::Json(view(&app, &w).await?))
}

#[utoipa::path(delete, path = "/v1/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path, description = "subscription id")),
    responses((status = 204, description = "deleted, with its pending deliveries and dead letters")), security(("api_key" = [])))]
pub async fn remove(State(app): State<App>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let w = load(&app, &tenant, &id).await?;
    sqlx::query("DELETE FROM webhooks WHERE id = $1").bind(&w.id).execute(app.bus.pool()).await?;
    app.bus.remove(&w.subscription()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/subscriptions/{id}/dead-letters", tag = "subscriptions", params(("id" = String, Path, description = "subscription id")),
    responses((status = 200, description = "dead letters with last error and attempts")), security(("api_key" = [])))]
pub async fn dead_letters(State(app): State<App>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let w = load(&app, &tenant, &id).await?;
    let items = app.bus.dead_letters(Some(&w.subscription()), 1000).await?;
    Ok(axum::Json(json!({"items": items})))
}

/// A replay request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// RFC 3339 time: matching events published since then that this subscription was never
    /// given. Events it was given and that failed are dead letters: redrive those instead.
    pub since: String,
}

#[utoipa::path(post, path = "/v1/subscriptions/{id}/replay", tag = "subscriptions", params(("id" = String, Path, description = "subscription id")),
    responses((status = 202, description = "`{replayed}`: deliveries queued")), security(("api_key" = [])))]
pub async fn replay(
    State(app): State<App>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    Json(body): Json<ReplayBody>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let w = load(&app, &tenant, &id).await?;
    let since = parse_time("since", &body.since)?;
    let n = app.bus.replay(&w.subscription(), since).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"replayed": n}))))
}

async fn own_dead_letter(app: &App, tenant: &str, id: &str) -> Result<i64, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::not_found("dead letter"))?;
    let d = app.bus.dead_letter(id).await?.ok_or_else(|| ApiError::not_found("dead letter"))?;
    let owned = match d.subscription.strip_prefix("webhook:") {
        Some(wid) => webhooks::get(app.bus.pool(), tenant, wid).await?.is_some(),
        None => false,
    };
    if !owned {
        return Err(ApiError::not_found("dead letter"));
    }
    Ok(id)
}

#[utoipa::path(post, path = "/v1/dead-letters/{id}/redrive", tag = "subscriptions", params(("id" = i64, Path, description = "dead letter id")),
    responses((status = 202, description = "queued again; same event id and webhook-id")), security(("api_key" = [])))]
pub async fn redrive(State(app): State<App>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let id = own_dead_letter(&app, &tenant, &id).await?;
    app.bus.redrive(id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"id": id, "state": "pending"}))))
}

#[utoipa::path(delete, path = "/v1/dead-letters/{id}", tag = "subscriptions", params(("id" = i64, Path, description = "dead letter id")),
    responses((status = 204, description = "discarded")), security(("api_key" = [])))]
pub async fn discard(State(app): State<App>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let id = own_dead_letter(&app, &tenant, &id).await?;
    app.bus.discard(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
