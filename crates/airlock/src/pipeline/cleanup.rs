//! Cleanup: an expired upload becomes `expired` and its partial bytes go; a deleted file's
//! bytes (quarantine, original, variants) go. Either way `cleanup.initiated` is published.

use airlock_events::{BoxFuture, Envelope, Handler, HandlerCtx, HandlerError};
use serde_json::json;

use super::{file_of, storage_error};
use crate::app::App;
use crate::blobs::{file_prefix, quarantine_prefix};
use crate::files::{self, Changes, Status};

pub struct Cleanup(pub App);

impl Handler for Cleanup {
    fn handle<'a>(&'a self, ev: &'a Envelope, cx: &'a mut HandlerCtx) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let app = &self.0;
            let Some(file) = file_of(app, ev).await? else {
                return Ok(());
            };
            let expired = ev.event_type == "upload.expired";
            if expired && file.status != Status::Pending {
                return Ok(());
            }
            let mut objects = app.blobs.delete_prefix(&quarantine_prefix(&file.tenant, file.id)).await.map_err(storage_error)?;
            if !expired {
                objects += app.blobs.delete_prefix(&file_prefix(&file.tenant, file.id)).await.map_err(storage_error)?;
            }
            let tx = cx.tx().await?;
            if expired && !files::transition(tx.conn().await?, file.id, Status::Expired, &Changes::default()).await? {
                return Ok(());
            }
            let cause = if expired { "expired" } else { "deleted" };
            tx.publish(ev.caused("cleanup.initiated", 1, json!({"file_id": file.id, "cause": cause, "objects": objects}))).await?;
            tracing::info!(file_id = %file.id, cause, objects, "File bytes cleaned up.");
            Ok(())
        })
    }
}
