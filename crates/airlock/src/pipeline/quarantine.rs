//! Quarantine: a failed validation leaves the bytes in quarantine, marks the file
//! `quarantined` with its stable reason, and publishes `file.quarantined.v1` then
//! `resource.rejected`.

use airlock_events::{BoxFuture, Envelope, Handler, HandlerCtx, HandlerError};
use serde_json::json;

use super::file_of;
use crate::app::App;
use crate::files::{self, Changes, Status};

pub struct Quarantine(pub App);

impl Handler for Quarantine {
    fn handle<'a>(&'a self, ev: &'a Envelope, cx: &'a mut HandlerCtx) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let Some(file) = file_of(&self.0, ev).await? else {
                return Ok(());
            };
            if file.status != Status::Validating {
                return Ok(());
            }
            let reason = ev.payload_str("reason").unwrap_or("corrupt").to_owned();
            let detail = ev.payload_str("detail").unwrap_or_default().to_owned();
            let detected = ev.payload_str("detected_type").map(str::to_owned);
            let scan = ev.payload.get("scan").cloned();
            let tx = cx.tx().await?;
            let changes = Changes { reason: Some((&reason, &detail)), detected_type: detected.as_deref(), scan: scan.as_ref(), ..Default::default() };
            if !files::transition(tx.conn().await?, file.id, Status::Quarantined, &changes).await? {
                return Ok(());
            }
            let quarantined = ev.caused(
                "file.quarantined",
                1,
                json!({"file_id": file.id, "user_id": file.user_id, "kind": file.kind, "reason": reason, "detail": detail}),
            );
            let rejected = quarantined.caused("resource.rejected", 1, json!({"file_id": file.id, "kind": file.kind, "reason": reason}));
            tx.publish_all(&[quarantined, rejected]).await?;
            tracing::info!(file_id = %file.id, %reason, "File quarantined.");
            Ok(())
        })
    }
}
