//! Files: read, list (cursor-paginated), complete, download URL, delete, and the event chain.
//! Every route is scoped to the caller's tenant: another tenant's file is a 404.

use std::collections::HashMap;

use airlock_events::{EventContext, EventQuery};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::RequestContext;
use crate::app::App;
use crate::auth::Tenant;
use crate::error::{ApiError, Query};
use crate::files::{self, Changes, FileRecord, ListQuery, Status};
use crate::signing::{Method, UrlClaims};

/// How long a download URL stays valid.
const DOWNLOAD_TTL: time::Duration = time::Duration::minutes(15);

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/files", get(list_files))
        .route("/v1/files/{id}", get(get_file).delete(delete_file))
        .route("/v1/files/{id}/complete", post(complete))
        .route("/v1/files/{id}/download", get(download))
        .route("/v1/files/{id}/events", get(file_events))
        .route("/v1/files/{id}/events/stream", get(file_event_stream))
}

async fn load(app: &App, tenant: &str, id: &str) -> Result<FileRecord, ApiError> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found("file"))?;
    files::get_for_tenant(app.bus.pool(), tenant, id).await?.ok_or_else(|| ApiError::not_found("file"))
}

#[utoipa::path(get, path = "/v1/files/{id}", tag = "files", params(("id" = String, Path, description = "file id")),
    responses((status = 200, description = "the file"), (status = 404, description = "no such file in this tenant")), security(("api_key" = [])))]
pub async fn get_file(State(app): State<App>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(load(&app, &tenant, &id).await?.to_api()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    user_id: Option<String>,
    status: Option<String>,
    kind: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// 1–200, default 50.
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/files", tag = "files", params(ListParams),
    responses((status = 200, description = "a page of files, newest first, and `next_cursor`")), security(("api_key" = [])))]
pub async fn list_files(State(app): State<App>, Tenant(tenant): Tenant, Query(p): Query<ListParams>) -> Result<axum::Json<Value>, ApiError> {
    let limit = p.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 200"));
    }
    if let Some(s) = &p.status
        && Status::parse(s).is_none()
    {
        return Err(ApiError::bad_request("invalid_query", format!("unknown status `{s}`")));
    }
    let before = p
        .cursor
        .as_deref()
        .map(Uuid::parse_str)
        .transpose()
        .map_err(|_| ApiError::bad_request("invalid_cursor", "cursor is not one this API returned"))?;
    let rows =
        files::list(app.bus.pool(), &tenant, &ListQuery { user_id: p.user_id, status: p.status, kind: p.kind, before, limit: limit + 1 }).await?;
    let more = rows.len() as i64 > limit;
    let page: Vec<&FileRecord> = rows.iter().take(limit as usize).collect();
    let next = if more { page.last().map(|f| f.id.to_string()) } else { None };
    Ok(axum::Json(json!({"items": page.iter().map(|f| f.to_api()).collect::<Vec<_>>(), "next_cursor": next})))
}

#[utoipa::path(post, path = "/v1/files/{id}/complete", tag = "files", params(("id" = String, Path, description = "file id")),
    responses((status = 200, description = "the file; its bytes are in"), (status = 409, description = "no bytes received yet")), security(("api_key" = [])))]
pub async fn complete(State(app): State<App>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let f = load(&app, &tenant, &id).await?;
    match f.status {
        Status::Pending => Err(ApiError::conflict("upload_incomplete", "no bytes have been received for this file yet")),
        Status::Expired => Err(ApiError::new(StatusCode::GONE, "upload_expired", "the upload window has closed")),
        _ => Ok(axum::Json(f.to_api())),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DownloadParams {
    /// A variant's name, e.g. `thumb`.
    variant: Option<String>,
}

#[utoipa::path(get, path = "/v1/files/{id}/download", tag = "files", params(("id" = String, Path, description = "file id"), DownloadParams),
    responses((status = 200, description = "`{url, expires_at}`: a signed GET URL"), (status = 409, description = "the file is not promoted")), security(("api_key" = [])))]
pub async fn download(
    State(app): State<App>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    Query(p): Query<DownloadParams>,
) -> Result<axum::Json<Value>, ApiError> {
    let f = load(&app, &tenant, &id).await?;
    if f.status != Status::Promoted {
        return Err(ApiError::conflict("not_promoted", format!("only promoted files can be downloaded; this one is {}", f.status.as_str())));
    }
    if let Some(v) = &p.variant
        && !f.variants.as_array().is_some_and(|a| a.iter().any(|x| x["name"] == v.as_str()))
    {
        return Err(ApiError::not_found("variant"));
    }
    let expires = time::OffsetDateTime::now_utc() + DOWNLOAD_TTL;
    let claims =
        UrlClaims { method: Method::Get, file_id: f.id, expires: expires.unix_timestamp(), max_bytes: None, content_type: None, variant: p.variant };
    let url = format!("{}/v1/blobs/{}?{}", app.settings.public_url, f.id, app.signer.sign(&claims));
    Ok(axum::Json(json!({"url": url, "expires_at": airlock_events::envelope::format_rfc3339(expires)})))
}

#[utoipa::path(delete, path = "/v1/files/{id}", tag = "files", params(("id" = String, Path, description = "file id")),
    responses((status = 202, description = "deleted; bytes and variants are removed by a worker")), security(("api_key" = [])))]
pub async fn delete_file(
    State(app): State<App>,
    Tenant(tenant): Tenant,
    Extension(ctx): Extension<RequestContext>,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let f = load(&app, &tenant, &id).await?;
    let mut tx = app.bus.begin().await?;
    if files::transition(tx.conn().await?, f.id, Status::Deleted, &Changes::default()).await? {
        tx.cancel_timer(&crate::api::uploads::expiry_timer(f.id)).await?;
        tx.cancel_timer(&crate::pipeline::validation_timer(f.id)).await?;
        let root = EventContext::root(tenant.clone(), ctx.correlation_id.clone(), ctx.traceparent.clone());
        tx.publish(root.event("file.deleted", 1, f.id.to_string(), json!({"file_id": f.id, "user_id": f.user_id, "kind": f.kind, "cause": "user"})))
            .await?;
        tx.commit().await?;
        tracing::info!(file_id = %f.id, "File deleted.");
    } else {
        tx.rollback().await?;
    }
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"file_id": f.id, "status": "deleted"}))))
}

/// Events with their deliveries' states attached.
pub async fn with_deliveries(app: &App, events: Vec<airlock_events::LoggedEvent>) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.envelope.event_id).collect();
    let mut by_event: HashMap<Uuid, Vec<Value>> = HashMap::new();
    for d in app.bus.deliveries_of(&ids).await? {
        by_event.entry(d.event_id).or_default().push(json!({
            "subscription": d.subscription, "state": d.state, "attempts": d.attempts, "last_error": d.last_error,
            "next_attempt_at": airlock_events::envelope::format_rfc3339(d.next_attempt_at),
            "updated_at": airlock_events::envelope::format_rfc3339(d.updated_at),
        }));
    }
    Ok(events
        .into_iter()
        .map(|e| {
            let mut v = serde_json::to_value(&e.envelope).unwrap_or(Value::Null);
            v["seq"] = e.seq.into();
            v["deliveries"] = Value::Array(by_event.remove(&e.envelope.event_id).unwrap_or_default());
            v
        })
        .collect())
}

#[utoipa::path(get, path = "/v1/files/{id}/events", tag = "events", params(("id" = String, Path, description = "file id")),
    responses((status = 200, description = "the file's events, oldest first, each with its deliveries")), security(("api_key" = [])))]
pub async fn file_events(State(app): State<App>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let f = load(&app, &tenant, &id).await?;
    let events = app.bus.events(&EventQuery { subject: Some(f.id.to_string()), tenant: Some(tenant), limit: 1000, ..Default::default() }).await?;
    Ok(axum::Json(json!({"events": with_deliveries(&app, events).await?})))
}

struct StreamState {
    app: App,
    subject: String,
    tenant: String,
    after: i64,
    commits: tokio::sync::watch::Receiver<u64>,
    buffer: std::collections::VecDeque<airlock_events::LoggedEvent>,
}

#[utoipa::path(get, path = "/v1/files/{id}/events/stream", tag = "events", params(("id" = String, Path, description = "file id")),
    responses((status = 200, description = "Server-Sent Events: the file's events so far, then each new one (`event:` type, `id:` log position; resumes after `Last-Event-ID`)")),
    security(("api_key" = [])))]
pub async fn file_event_stream(
    State(app): State<App>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::sse::Sse<impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>>, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let f = load(&app, &tenant, &id).await?;
    let after = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    let state = StreamState { commits: app.bus.commits(), app, subject: f.id.to_string(), tenant, after, buffer: Default::default() };
    let stream = futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(e) = s.buffer.pop_front() {
                let data = serde_json::to_string(&e.envelope).unwrap_or_default();
                let ev = Event::default().event(e.envelope.versioned_type()).id(e.seq.to_string()).data(data);
                return Some((Ok(ev), s));
            }
            s.commits.borrow_and_update();
            let q = EventQuery {
                subject: Some(s.subject.clone()),
                tenant: Some(s.tenant.clone()),
                after_seq: Some(s.after),
                limit: 100,
                ..Default::default()
            };
            match s.app.bus.events(&q).await {
                Ok(events) if !events.is_empty() => {
                    s.after = events.last().map(|e| e.seq).unwrap_or(s.after);
                    s.buffer.extend(events);
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "Reading events for a stream failed."),
            }
            // Local commits wake the stream at once; other processes' are seen by the poll.
            tokio::select! {
                _ = s.commits.changed() => {}
                () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                () = s.app.stopping.cancelled() => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
