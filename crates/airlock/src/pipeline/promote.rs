//! Promotion: moves a validated file's bytes from quarantine to production storage, marks it
//! `promoted`, and publishes `file.promoted.v1` then `resource.ready`.

use airlock_events::{BoxFuture, Envelope, Handler, HandlerCtx, HandlerError};
use serde_json::json;

use super::{file_of, storage_error};
use crate::app::App;
use crate::blobs::{original_key, quarantine_prefix};
use crate::files::{self, Changes, Status};

pub struct Promote(pub App);

impl Handler for Promote {
    fn handle<'a>(&'a self, ev: &'a Envelope, cx: &'a mut HandlerCtx) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let app = &self.0;
            let Some(file) = file_of(app, ev).await? else {
                return Ok(());
            };
            if file.status != Status::Validating {
                return Ok(());
            }
            let Some(from) = &file.quarantine_key else {
                return Err(HandlerError::permanent("promoting a file without bytes"));
            };
            let to = original_key(&file.tenant, file.id);
            let detected = ev.payload_str("detected_type").unwrap_or("application/octet-stream").to_owned();
            // Validation may have made a cleaned copy (metadata stripped): that is what is served.
            let source = ev.payload_str("source_key").unwrap_or(from).to_owned();
            let bytes = ev.payload.get("bytes").and_then(serde_json::Value::as_i64).or(file.bytes);
            let sha256 = ev.payload_str("sha256").map(str::to_owned).or(file.sha256.clone());
            app.blobs.rename(&source, &to).await.map_err(storage_error)?;
            // Nothing of this file stays in quarantine: not the original when its cleaned copy
            // was promoted (its metadata must not stay), nor the partial bytes of an attempt
            // cut off by a crash, nor the file's quarantine directory.
            app.blobs.remove_prefix(&quarantine_prefix(&file.tenant, file.id)).await.map_err(storage_error)?;
            let scan = ev.payload.get("scan").cloned().unwrap_or_else(|| json!({"engine": "none", "result": "skipped"}));
            let tx = cx.tx().await?;
            let changes = Changes {
                detected_type: Some(&detected),
                scan: Some(&scan),
                object_key: Some(&to),
                bytes,
                sha256: sha256.as_deref(),
                ..Default::default()
            };
            if !files::transition(tx.conn().await?, file.id, Status::Promoted, &changes).await? {
                // Deleted (or timed out) while we moved the bytes: do not leave them behind.
                if let Ok(Some(now)) = files::get(&mut *tx.conn().await?, file.id).await
                    && now.status == Status::Deleted
                {
                    let _ = app.blobs.delete(&to).await;
                }
                return Ok(());
            }
            let promoted = ev.caused(
                "file.promoted",
                1,
                json!({"file_id": file.id, "user_id": file.user_id, "kind": file.kind, "mime": detected, "bytes": bytes,
                       "sha256": sha256, "path": to, "scan": scan, "at": airlock_events::envelope::format_rfc3339(airlock_events::envelope::now_utc())}),
            );
            let ready = promoted.caused("resource.ready", 1, json!({"file_id": file.id, "kind": file.kind}));
            tx.publish_all(&[promoted, ready]).await?;
            tracing::info!(file_id = %file.id, mime = %detected, "File promoted.");
            Ok(())
        })
    }
}
