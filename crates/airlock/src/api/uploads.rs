//! `POST /v1/uploads`: records a pending file, publishes `upload.requested`, arms the
//! `upload.expired` timer — in one transaction — and hands out a signed PUT URL.

use airlock_events::EventContext;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::RequestContext;
use crate::app::App;
use crate::auth::Tenant;
use crate::error::{ApiError, Json};
use crate::files::{self, NewFile};
use crate::signing::{Method, UrlClaims};

/// Largest accepted `metadata`, serialised.
pub const MAX_METADATA_BYTES: usize = 4096;

pub fn router() -> Router<App> {
    Router::new().route("/v1/uploads", post(create_upload))
}

/// The request for an upload URL.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUpload {
    /// The upload kind (its policy), e.g. `avatar`; `default` always exists.
    pub kind: String,
    /// The user's file name; sanitised, shown and used in downloads, never a storage path.
    pub filename: String,
    /// The declared MIME type; checked against the kind now and against the bytes later.
    pub content_type: Option<String>,
    /// The declared size in bytes; the upload may not exceed it.
    pub size: Option<u64>,
    pub user_id: Option<String>,
    /// Free JSON object (at most 4 KiB), returned with the file and in events.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// The timer id of a file's upload expiry.
pub fn expiry_timer(file_id: Uuid) -> String {
    format!("upload.expired:{file_id}")
}

#[utoipa::path(post, path = "/v1/uploads", request_body = CreateUpload, tag = "uploads",
    responses((status = 201, description = "pending file and its signed upload URL"), (status = 413, description = "declared size over the kind's limit"),
              (status = 422, description = "unknown kind, disallowed type, bad metadata")),
    security(("api_key" = [])))]
pub async fn create_upload(
    State(app): State<App>,
    Tenant(tenant): Tenant,
    Extension(ctx): Extension<RequestContext>,
    Json(req): Json<CreateUpload>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let kind = app.settings.kinds.get(&req.kind).ok_or_else(|| {
        let known: Vec<&str> = app.settings.kinds.keys().map(String::as_str).collect();
        ApiError::unprocessable("unknown_kind", format!("kind `{}` is not configured (known: {})", req.kind, known.join(", ")))
    })?;
    if req.filename.trim().is_empty() {
        return Err(ApiError::unprocessable("invalid_filename", "filename must not be empty"));
    }
    if req.filename.len() > 1024 {
        return Err(ApiError::unprocessable("invalid_filename", "filename is longer than 1024 bytes"));
    }
    let filename = crate::names::sanitize_filename(&req.filename);
    let declared_type = match req.content_type.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => {
            let norm = crate::sniff::normalize_mime(t);
            if !norm.split_once('/').is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !norm.contains('*')) {
                return Err(ApiError::unprocessable("invalid_content_type", format!("content_type `{t}` is not a MIME type")));
            }
            if norm != "application/octet-stream" && !kind.allows(&norm) {
                return Err(ApiError::unprocessable("type_not_allowed", format!("kind `{}` does not accept {norm}", kind.name)));
            }
            Some(norm)
        }
        None => None,
    };
    if let Some(size) = req.size
        && size > kind.max_bytes
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "upload_too_large",
            format!("size {size} exceeds kind `{}`'s max_bytes {}", kind.name, kind.max_bytes),
        ));
    }
    let metadata = req.metadata.unwrap_or_else(|| json!({}));
    if !metadata.is_object() {
        return Err(ApiError::unprocessable("invalid_metadata", "metadata must be a JSON object"));
    }
    if metadata.to_string().len() > MAX_METADATA_BYTES {
        return Err(ApiError::unprocessable("metadata_too_large", format!("metadata is limited to {MAX_METADATA_BYTES} bytes")));
    }
    if req.user_id.as_ref().is_some_and(|u| u.is_empty() || u.len() > 256 || u.chars().any(char::is_control)) {
        return Err(ApiError::unprocessable("invalid_user_id", "user_id must be 1-256 characters without control characters"));
    }
    let max_bytes = req.size.unwrap_or(kind.max_bytes).min(kind.max_bytes);
    let file_id = Uuid::now_v7();
    let now = OffsetDateTime::now_utc();
    let expires_at = now + kind.upload_ttl;
    let root = EventContext::root(tenant.clone(), ctx.correlation_id.clone(), ctx.traceparent.clone());
    let requested = root.event(
        "upload.requested",
        1,
        file_id.to_string(),
        json!({"file_id": file_id, "user_id": req.user_id, "kind": kind.name, "filename": filename, "declared_type": declared_type,
               "declared_size": req.size, "expires_at": airlock_events::envelope::format_rfc3339(expires_at)}),
    );
    let expired = requested.caused("upload.expired", 1, json!({"file_id": file_id, "user_id": req.user_id, "kind": kind.name}));

    let mut tx = app.bus.begin().await?;
    files::insert(
        tx.conn().await?,
        &NewFile {
            id: file_id,
            tenant: &tenant,
            kind: &kind.name,
            filename: &filename,
            declared_type: declared_type.as_deref(),
            declared_size: req.size.map(|s| s as i64),
            user_id: req.user_id.as_deref(),
            metadata: &metadata,
            max_bytes: max_bytes as i64,
            expires_at,
            correlation_id: &ctx.correlation_id,
            traceparent: ctx.traceparent.as_deref(),
            requested_event_id: requested.event_id,
        },
    )
    .await?;
    tx.publish(requested).await?;
    tx.schedule(&expiry_timer(file_id), expires_at, &expired).await?;
    tx.commit().await?;

    let claims = UrlClaims {
        method: Method::Put,
        file_id,
        expires: expires_at.unix_timestamp(),
        max_bytes: Some(max_bytes),
        content_type: declared_type.clone(),
        variant: None,
    };
    let url = format!("{}/v1/blobs/{file_id}?{}", app.settings.public_url, app.signer.sign(&claims));
    let headers = match &declared_type {
        Some(t) => json!({"Content-Type": t}),
        None => json!({}),
    };
    tracing::info!(%file_id, tenant = %tenant, kind = %kind.name, "Upload requested.");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "file_id": file_id, "status": "pending",
            "upload": {"method": "PUT", "url": url, "headers": headers, "expires_at": airlock_events::envelope::format_rfc3339(expires_at), "max_bytes": max_bytes},
        })),
    ))
}
