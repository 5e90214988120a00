//! Validation: `Validate` first moves an uploaded file to `validating` and arms the timeout
//! (committed on its own, before the work), then sniffs the real type from the bytes and
//! applies the kind's policy; `Timeout` fails a validation that took too long. Validate and
//! Timeout race through the timer: whoever removes it (cancel or fire) decides, the other does
//! nothing.
//!
//! Quick validations skip the first transaction: a file of at most [`QUICK_BYTES`] whose kind
//! runs no virus scan is checked in memory in milliseconds, with nothing that can stall, so
//! its `validation.started` (stamped when validation began) commits together with the verdict
//! and no timer is armed. That is one write transaction fewer per small file, on a database
//! with a single writer.

use airlock_events::{BoxFuture, Envelope, EventQuery, Handler, HandlerCtx, HandlerError};
use serde_json::{Value, json};

use super::{file_of, storage_error, validation_timer};
use crate::app::App;
use crate::config::{Kind, ScanPolicy};
use crate::files::{self, Changes, FileRecord, QuarantineReason, Status};
use crate::scanner::{ScanError, Verdict};

/// The largest file validated without its own start transaction and timeout (when its kind
/// runs no virus scan).
pub const QUICK_BYTES: i64 = 1 << 20;

/// How many leading bytes the sniffer reads.
const SNIFF_BYTES: u64 = 8192;

/// A metadata-free copy of the file, made during validation, that promotion serves instead.
#[derive(Debug, PartialEq)]
pub struct Cleaned {
    pub key: String,
    pub bytes: i64,
    pub sha256: String,
}

/// The outcome of checking a file against its kind.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Pass { detected: String, scan: Value, clean: Option<Cleaned> },
    Fail { reason: QuarantineReason, detail: String, detected: Option<String>, scan: Option<Value> },
}

/// Checks the head of the bytes against the kind's policy: size, active content, allowed types,
/// agreement of the sniffed type with the declared type and with the extension.
pub fn decide(file: &FileRecord, kind: &Kind, head: &[u8]) -> Decision {
    let fail = |reason, detail: String, detected: Option<&str>| Decision::Fail { reason, detail, detected: detected.map(str::to_owned), scan: None };
    let bytes = file.bytes.unwrap_or(0) as u64;
    if bytes > kind.max_bytes {
        return fail(QuarantineReason::TooLarge, format!("{bytes} bytes exceed the kind's max_bytes {}", kind.max_bytes), None);
    }
    let detected = crate::sniff::sniff(head).unwrap_or_else(|| "application/octet-stream".to_owned());
    if crate::sniff::is_active_content(&detected) && !kind.allows(&detected) {
        return fail(
            QuarantineReason::ActiveContent,
            format!("the bytes are {detected}, which can run code in a browser or on a machine"),
            Some(&detected),
        );
    }
    if !kind.allows(&detected) {
        return fail(QuarantineReason::TypeNotAllowed, format!("kind `{}` does not accept {detected}", kind.name), Some(&detected));
    }
    if let Some(declared) = &file.declared_type
        && !crate::sniff::declared_agrees(declared, &detected)
    {
        return fail(QuarantineReason::TypeMismatch, format!("declared {declared}, but the bytes are {detected}"), Some(&detected));
    }
    let ext = crate::names::extension(&file.filename);
    if !crate::sniff::extension_agrees(ext.as_deref(), &detected) {
        return fail(QuarantineReason::TypeMismatch, format!("the extension .{} does not fit {detected}", ext.unwrap_or_default()), Some(&detected));
    }
    Decision::Pass { detected, scan: Value::Null, clean: None }
}

/// Images larger than this are not decoded (they are refused as `too_large`).
const IMAGE_MAX_BYTES: u64 = 64 << 20;
/// Attempts at scanning before a failing scanner becomes `scan_failed`.
const SCAN_ATTEMPTS: u32 = 3;

fn skipped(engine: &str, detail: &str) -> Value {
    json!({"engine": engine, "result": "skipped", "signature": null, "detail": detail})
}

/// The checks that need more than the head of the file: decoding images under limits, and
/// the virus scan. Runs only for files the policy already accepts.
async fn inspect(app: &App, file: &FileRecord, kind: &Kind, key: &str, detected: String, attempt: u32) -> Result<Decision, HandlerError> {
    let fail = |reason, detail: String, scan: Option<Value>| Decision::Fail { reason, detail, detected: Some(detected.clone()), scan };
    if crate::images::decodable(&detected).is_some() {
        let Some(bytes) = app.blobs.read_all(key, IMAGE_MAX_BYTES).await.map_err(storage_error)? else {
            return Ok(fail(QuarantineReason::TooLarge, format!("images over {IMAGE_MAX_BYTES} bytes are not decoded"), None));
        };
        let (limits, mime) = (kind.image_limits(), detected.clone());
        let checked = tokio::task::spawn_blocking(move || crate::images::check(&bytes, &mime, &limits))
            .await
            .map_err(|e| HandlerError::retryable(format!("image check: {e}")))?;
        if let Err((reason, detail)) = checked {
            return Ok(fail(reason, detail, None));
        }
    }
    let mut clean = None;
    if kind.strip_metadata && matches!(detected.as_str(), "image/jpeg" | "image/png" | "image/webp") {
        // Strip now, and check the result decodes: a file that cannot be cleaned is corrupt,
        // and promotion only ever moves bytes that passed every check.
        let Some(original) = app.blobs.read_all(key, IMAGE_MAX_BYTES).await.map_err(storage_error)? else {
            return Ok(fail(QuarantineReason::TooLarge, format!("images over {IMAGE_MAX_BYTES} bytes are not decoded"), None));
        };
        let (limits, mime) = (kind.image_limits(), detected.clone());
        let stripped = tokio::task::spawn_blocking(move || {
            let out = crate::images::strip(original, &mime).map_err(|e| (QuarantineReason::Corrupt, format!("cannot remove metadata: {e}")))?;
            crate::images::check(&out, &mime, &limits).map_err(|(r, d)| (r, format!("after removing metadata: {d}")))?;
            Ok::<_, (QuarantineReason, String)>(out)
        })
        .await
        .map_err(|e| HandlerError::retryable(format!("strip: {e}")))?;
        let stripped = match stripped {
            Ok(b) => b,
            Err((reason, detail)) => return Ok(fail(reason, detail, None)),
        };
        let clean_key = format!("{key}.clean");
        let cleaned =
            Cleaned { key: clean_key.clone(), bytes: stripped.len() as i64, sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&stripped)) };
        app.blobs.put(&clean_key, stripped).await.map_err(storage_error)?;
        clean = Some(cleaned);
    }
    let scan = match (&app.scanner, kind.scan) {
        (_, ScanPolicy::Off) => skipped("none", "scanning is off for this kind"),
        (None, _) => skipped("none", "no scanner is configured"),
        (Some(scanner), policy) => {
            let stream = app.blobs.read(key, None).await.map_err(storage_error)?;
            let failed = |detail: String| json!({"engine": "clamav", "result": "failed", "signature": null, "detail": detail});
            match scanner.scan(stream).await {
                Ok(Verdict::Clean) => json!({"engine": "clamav", "result": "clean", "signature": null}),
                Ok(Verdict::Infected(sig)) => {
                    let scan = json!({"engine": "clamav", "result": "infected", "signature": sig});
                    return Ok(fail(QuarantineReason::Infected, format!("ClamAV found {sig}"), Some(scan)));
                }
                Err(ScanError::TooLarge) if policy == ScanPolicy::Required => {
                    let detail = "larger than the scanner accepts; the kind requires a scan".to_owned();
                    return Ok(fail(QuarantineReason::ScanFailed, detail.clone(), Some(failed(detail))));
                }
                Err(ScanError::TooLarge) => skipped("clamav", "larger than the scanner accepts"),
                Err(e) if attempt < SCAN_ATTEMPTS => return Err(HandlerError::retryable(format!("scan: {e}"))),
                Err(e) if policy == ScanPolicy::Required => {
                    tracing::warn!(file_id = %file.id, error = %e, "Scanning failed; the kind requires a scan.");
                    return Ok(fail(QuarantineReason::ScanFailed, format!("{e} (after {attempt} attempts)"), Some(failed(e.to_string()))));
                }
                Err(e) => failed(e.to_string()),
            }
        }
    };
    Ok(Decision::Pass { detected, scan, clean })
}

pub struct Validate(pub App);

impl Handler for Validate {
    fn handle<'a>(&'a self, ev: &'a Envelope, cx: &'a mut HandlerCtx) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let app = &self.0;
            let Some(file) = file_of(app, ev).await? else {
                return Ok(());
            };
            let quick = file.status == Status::Uploaded
                && file.bytes.is_some_and(|b| b <= QUICK_BYTES)
                && app.settings.kinds.get(&file.kind).is_some_and(|k| k.scan == ScanPolicy::Off || app.scanner.is_none());
            let started = match file.status {
                Status::Uploaded if quick => {
                    let timeout_at = airlock_events::envelope::now_utc() + app.settings.validation_timeout;
                    ev.caused(
                        "validation.started",
                        1,
                        json!({"file_id": file.id, "kind": file.kind, "timeout_at": airlock_events::envelope::format_rfc3339(timeout_at)}),
                    )
                }
                Status::Uploaded => {
                    // Committed before the work: the file is `validating` and its timeout armed,
                    // whatever happens to this worker from here on.
                    let timeout_at = airlock_events::envelope::now_utc() + app.settings.validation_timeout;
                    let started = ev.caused(
                        "validation.started",
                        1,
                        json!({"file_id": file.id, "kind": file.kind, "timeout_at": airlock_events::envelope::format_rfc3339(timeout_at)}),
                    );
                    let timeout = started.caused("processing.timeout", 1, json!({"file_id": file.id, "stage": "validation"}));
                    let mut tx = app.bus.begin().await?;
                    if !files::transition(tx.conn().await?, file.id, Status::Validating, &Changes::default()).await? {
                        tx.rollback().await?;
                        return Ok(());
                    }
                    tx.schedule(&validation_timer(file.id), timeout_at, &timeout).await?;
                    tx.publish(started.clone()).await?;
                    tx.commit().await?;
                    started
                }
                Status::Validating => {
                    // Redelivered after a crash mid-validation: carry on under the same start.
                    let q = EventQuery {
                        subject: Some(file.id.to_string()),
                        event_type: Some("validation.started".into()),
                        limit: 1,
                        ..Default::default()
                    };
                    match app.bus.events(&q).await?.into_iter().next() {
                        Some(e) => e.envelope,
                        None => return Err(HandlerError::permanent("validating, but validation.started is missing")),
                    }
                }
                _ => return Ok(()),
            };
            let ev = &started;
            let decision = match (app.settings.kinds.get(&file.kind), &file.quarantine_key) {
                (Some(kind), Some(key)) => {
                    let head = app.blobs.read_head(key, SNIFF_BYTES).await.map_err(storage_error)?;
                    match decide(&file, kind, &head) {
                        Decision::Pass { detected, .. } => inspect(app, &file, kind, key, detected, cx.attempt).await?,
                        fail => fail,
                    }
                }
                (None, _) => Decision::Fail {
                    reason: QuarantineReason::TypeNotAllowed,
                    detail: format!("kind `{}` is no longer configured", file.kind),
                    detected: None,
                    scan: None,
                },
                (_, None) => {
                    return Err(HandlerError::permanent("validating a file without bytes"));
                }
            };
            let tx = cx.tx().await?;
            if quick {
                if !files::transition(tx.conn().await?, file.id, Status::Validating, &Changes::default()).await? {
                    // Changed meanwhile (deleted): nothing to decide.
                    return Ok(());
                }
                tx.publish(started.clone()).await?;
            } else if !tx.cancel_timer(&validation_timer(file.id)).await? {
                tracing::info!(file_id = %file.id, "Validation finished after its timeout; the timeout decides.");
                return Ok(());
            }
            let next = match decision {
                Decision::Pass { detected, scan, clean } => {
                    let mut p = json!({"file_id": file.id, "kind": file.kind, "detected_type": detected, "bytes": file.bytes, "sha256": file.sha256, "scan": scan});
                    if let Some(c) = clean {
                        p["source_key"] = c.key.into();
                        p["bytes"] = c.bytes.into();
                        p["sha256"] = c.sha256.into();
                    }
                    ev.caused("validation.passed", 1, p)
                }
                Decision::Fail { reason, detail, detected, scan } => {
                    let mut p = json!({"file_id": file.id, "kind": file.kind, "reason": reason.code(), "detail": detail, "detected_type": detected});
                    if let Some(scan) = scan {
                        p["scan"] = scan;
                    }
                    ev.caused("validation.failed", 1, p)
                }
            };
            tx.publish(next).await?;
            Ok(())
        })
    }
}

pub struct Timeout(pub App);

impl Handler for Timeout {
    fn handle<'a>(&'a self, ev: &'a Envelope, cx: &'a mut HandlerCtx) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let Some(file) = file_of(&self.0, ev).await? else {
                return Ok(());
            };
            if file.status != Status::Validating {
                return Ok(());
            }
            let detail = format!("validation did not finish within {:?}", self.0.settings.validation_timeout);
            tracing::warn!(file_id = %file.id, "Validation timed out.");
            cx.tx()
                .await?
                .publish(ev.caused(
                    "validation.failed",
                    1,
                    json!({"file_id": file.id, "kind": file.kind, "reason": QuarantineReason::ProcessingTimeout.code(), "detail": detail}),
                ))
                .await?;
            Ok(())
        })
    }
}
