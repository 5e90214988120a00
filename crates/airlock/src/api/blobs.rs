//! The byte routes, authorised by signed URLs instead of API keys:
//! `PUT /v1/blobs/{id}` streams an upload into quarantine (limits enforced while streaming,
//! SHA-256 on the way) and publishes `file.uploaded`; `GET /v1/blobs/{id}` serves a promoted
//! file with `Range`, `ETag`, `nosniff`, a sandboxing CSP and a sanitised attachment name.

use airlock_events::EventContext;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::App;
use crate::blobs::{WriteError, quarantine_key};
use crate::error::ApiError;
use crate::files::{self, Changes, Status};
use crate::range::{ByteRange, content_range, parse_range};
use crate::signing::{Method, SignatureError};

pub fn router() -> Router<App> {
    Router::new().route("/v1/blobs/{id}", put(put_bytes).get(get_bytes))
}

fn signature_error(e: SignatureError) -> ApiError {
    ApiError::forbidden(e.code(), e.to_string())
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found("file"))
}

#[utoipa::path(put, path = "/v1/blobs/{id}", tag = "bytes", params(("id" = String, Path, description = "file id")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "bytes stored in quarantine"), (status = 403, description = "missing, tampered or expired signature"),
              (status = 409, description = "already uploaded"), (status = 413, description = "larger than allowed")))]
pub async fn put_bytes(
    state: State<App>,
    path: Path<String>,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<Value>, Response> {
    // A refusal may come before the body was read to its end: the connection cannot be reused
    // (the unread rest would be taken for the next request), so say so instead of dropping it.
    store_upload(state, path, query, headers, body).await.map_err(|e| {
        let mut res = e.into_response();
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        res
    })
}

async fn store_upload(
    State(app): State<App>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<Value>, ApiError> {
    let file_id = parse_id(&id)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = app.signer.verify(Method::Put, file_id, query.as_deref().unwrap_or_default(), now).map_err(signature_error)?;
    let file = files::get(app.bus.pool(), file_id).await?.ok_or_else(|| ApiError::not_found("file"))?;
    match file.status {
        Status::Pending => {}
        Status::Expired => {
            return Err(ApiError::new(StatusCode::GONE, "upload_expired", "the upload window has closed"));
        }
        Status::Deleted => return Err(ApiError::not_found("file")),
        _ => {
            return Err(ApiError::conflict("already_uploaded", "this file's bytes were already uploaded"));
        }
    }
    if let Some(expected) = &claims.content_type {
        let sent = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(crate::sniff::normalize_mime);
        if sent.as_deref() != Some(expected.as_str()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content_type_mismatch",
                format!("this URL was signed for Content-Type {expected}; send that header"),
            ));
        }
    }
    let limit = claims.max_bytes.unwrap_or(u64::MAX).min(file.max_bytes as u64);
    let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "upload_too_large", format!("this upload is limited to {limit} bytes"));
    // A Content-Length may only refuse early; the bytes actually received are what count.
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(too_large());
    }
    let Some(_slot) = app.uploads.acquire(&file.tenant) else {
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_uploads", "this tenant has too many uploads in progress; retry shortly");
        e.retry_after = Some(1);
        return Err(e);
    };
    let key = quarantine_key(&file.tenant, file_id, Uuid::now_v7());
    let written = match app.blobs.write_stream(&key, body.into_data_stream(), limit, app.settings.upload_idle_timeout).await {
        Ok(w) => w,
        Err(WriteError::Idle(d)) => return Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "upload_timeout", format!("no bytes arrived for {d:?}"))),
        Err(WriteError::TooLarge { .. }) => return Err(too_large()),
        Err(WriteError::Body(e)) => {
            return Err(ApiError::bad_request("body_incomplete", format!("the request body ended early: {e}")));
        }
        Err(WriteError::Store(e)) => return Err(e.into()),
        Err(WriteError::Io(e)) if e.kind() == std::io::ErrorKind::StorageFull => {
            tracing::error!(%file_id, "The object store is full; an upload was refused.");
            return Err(ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "storage_full", "the server has no room for this upload; retry later"));
        }
        Err(WriteError::Io(e)) => return Err(ApiError::internal(format!("storing the upload: {e}"))),
    };

    let mut tx = app.bus.begin().await?;
    let cancelled = tx.cancel_timer(&crate::api::uploads::expiry_timer(file_id)).await?;
    let moved = cancelled
        && files::transition(
            tx.conn().await?,
            file_id,
            Status::Uploaded,
            &Changes { bytes: Some(written.bytes as i64), sha256: Some(&written.sha256), quarantine_key: Some(&key), ..Default::default() },
        )
        .await?;
    if !moved {
        tx.rollback().await?;
        let _ = app.blobs.delete(&key).await;
        let now = files::get(app.bus.pool(), file_id).await?.map(|f| f.status);
        return Err(match now {
            Some(Status::Pending | Status::Expired) => {
                ApiError::new(StatusCode::GONE, "upload_expired", "the upload window closed before the bytes were in")
            }
            _ => ApiError::conflict("already_uploaded", "this file's bytes were already uploaded"),
        });
    }
    let chain = EventContext {
        correlation_id: file.correlation_id.clone(),
        causation_id: Some(file.requested_event_id),
        traceparent: file.traceparent.clone(),
        tenant: file.tenant.clone(),
    };
    tx.publish(chain.event(
        "file.uploaded",
        1,
        file_id.to_string(),
        json!({"file_id": file_id, "user_id": file.user_id, "kind": file.kind, "filename": file.filename,
               "declared_type": file.declared_type, "bytes": written.bytes, "sha256": written.sha256}),
    ))
    .await?;
    tx.commit().await?;
    tracing::info!(%file_id, bytes = written.bytes, "Upload stored in quarantine.");
    Ok(axum::Json(json!({"file_id": file_id, "status": "uploaded", "bytes": written.bytes, "sha256": written.sha256})))
}

#[utoipa::path(get, path = "/v1/blobs/{id}", tag = "bytes", params(("id" = String, Path, description = "file id")),
    responses((status = 200, description = "the bytes"), (status = 206, description = "a range of the bytes"), (status = 304, description = "not modified"),
              (status = 403, description = "missing, tampered or expired signature"), (status = 416, description = "range not satisfiable")))]
pub async fn get_bytes(State(app): State<App>, Path(id): Path<String>, RawQuery(query): RawQuery, headers: HeaderMap) -> Result<Response, ApiError> {
    let file_id = parse_id(&id)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = app.signer.verify(Method::Get, file_id, query.as_deref().unwrap_or_default(), now).map_err(signature_error)?;
    let file = files::get(app.bus.pool(), file_id).await?.ok_or_else(|| ApiError::not_found("file"))?;
    if file.status != Status::Promoted {
        return Err(ApiError::not_found("file"));
    }
    let (key, mime, etag_src) = match &claims.variant {
        None => (
            file.object_key.clone().ok_or_else(|| ApiError::not_found("file"))?,
            file.detected_type.clone().unwrap_or_default(),
            file.sha256.clone().unwrap_or_default(),
        ),
        Some(v) => {
            let variant =
                file.variants.as_array().and_then(|a| a.iter().find(|x| x["name"] == v.as_str())).ok_or_else(|| ApiError::not_found("variant"))?;
            (
                variant["key"].as_str().unwrap_or_default().to_owned(),
                variant["mime"].as_str().unwrap_or_default().to_owned(),
                variant["sha256"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    let len = app.blobs.size(&key).await?.ok_or_else(|| ApiError::not_found("file"))?;
    let etag = format!("\"{etag_src}\"");
    let mut res_headers = HeaderMap::new();
    let mime = if mime.is_empty() { "application/octet-stream".to_owned() } else { mime };
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(&mut res_headers, header::CONTENT_TYPE, &mime);
    set(&mut res_headers, header::ETAG, &etag);
    set(&mut res_headers, header::ACCEPT_RANGES, "bytes");
    set(&mut res_headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(&mut res_headers, header::CONTENT_SECURITY_POLICY, "sandbox");
    set(&mut res_headers, header::CACHE_CONTROL, "private, max-age=300");
    set(&mut res_headers, header::CONTENT_DISPOSITION, &crate::names::content_disposition(&file.filename));

    let inm = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
    if inm.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        return Ok((StatusCode::NOT_MODIFIED, res_headers).into_response());
    }
    // If-Range: a range only applies to the representation it was computed from.
    let if_range_ok = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()).is_none_or(|v| v.trim() == etag);
    let range_header = if if_range_ok { headers.get(header::RANGE).and_then(|v| v.to_str().ok()) } else { None };
    match parse_range(range_header, len) {
        ByteRange::Unsatisfiable => {
            // A problem document, not the file: only the range headers are about the object.
            let mut err =
                ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable", format!("the object has {len} bytes")).into_response();
            set(err.headers_mut(), header::CONTENT_RANGE, &crate::range::unsatisfied_content_range(len));
            set(err.headers_mut(), header::ACCEPT_RANGES, "bytes");
            Ok(err)
        }
        ByteRange::Partial { start, end } => {
            let stream = app.blobs.read(&key, Some((start, end))).await?;
            set(&mut res_headers, header::CONTENT_RANGE, &content_range(start, end, len));
            set(&mut res_headers, header::CONTENT_LENGTH, &(end - start + 1).to_string());
            Ok((StatusCode::PARTIAL_CONTENT, res_headers, Body::from_stream(stream)).into_response())
        }
        ByteRange::Full => {
            let stream = app.blobs.read(&key, None).await?;
            set(&mut res_headers, header::CONTENT_LENGTH, &len.to_string());
            Ok((StatusCode::OK, res_headers, Body::from_stream(stream)).into_response())
        }
    }
}
