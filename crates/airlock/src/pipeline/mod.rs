//! The pipeline: every step after the bytes arrive is a subscriber on an event. The upload
//! route only writes state and publishes; it never calls a validator or a promoter.
//!
//! ```text
//! file.uploaded ──validate──▶ validation.started (+ processing.timeout timer), committed first,
//!                             then validation.passed | validation.failed
//!                             (quick validations — ≤ 1 MiB, no virus scan — commit the start
//!                             with the verdict and arm no timer)
//! processing.timeout ──timeout──▶ validation.failed (processing_timeout)
//! validation.passed ──promote──▶ file.promoted ▶ resource.ready
//! validation.failed ──quarantine──▶ file.quarantined ▶ resource.rejected
//! upload.expired | file.deleted ──cleanup──▶ cleanup.initiated (bytes removed)
//! ```
//!
//! Every handler re-reads the file and acts only if its status is the one it expects, and
//! changes status with a guarded transition in the same transaction as its events: a
//! redelivery, a race with a timeout or a deletion turns into a no-op.

mod cleanup;
mod promote;
mod quarantine;
mod validate;

use std::sync::Arc;

use airlock_events::{CancellationToken, Envelope, Handler, HandlerError, SubscriptionSpec};
use uuid::Uuid;

use crate::app::App;
use crate::files::{self, FileRecord};

/// The timer id of a file's validation timeout.
pub fn validation_timer(file_id: Uuid) -> String {
    format!("processing.timeout:validation:{file_id}")
}

/// A pipeline subscriber: name, event types, concurrency, handler.
type Subscriber = (&'static str, &'static [&'static str], usize, Arc<dyn Handler>);

/// Starts every pipeline subscriber; returns their tasks.
///
/// # Errors
/// Subscription registration failures.
pub async fn start(app: &App, shutdown: CancellationToken) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let subs: Vec<Subscriber> = vec![
        ("pipeline.validate", &["file.uploaded.v1"], 8, Arc::new(validate::Validate(app.clone()))),
        ("pipeline.timeout", &["processing.timeout.v1"], 2, Arc::new(validate::Timeout(app.clone()))),
        ("pipeline.promote", &["validation.passed.v1"], 8, Arc::new(promote::Promote(app.clone()))),
        ("pipeline.quarantine", &["validation.failed.v1"], 2, Arc::new(quarantine::Quarantine(app.clone()))),
        ("pipeline.cleanup", &["upload.expired.v1", "file.deleted.v1"], 2, Arc::new(cleanup::Cleanup(app.clone()))),
    ];
    // Subscriptions of earlier versions of the pipeline would keep collecting deliveries that
    // no worker takes: remove them.
    let stored: Vec<String> = sqlx::query_scalar("SELECT name FROM subscriptions WHERE name LIKE 'pipeline.%'").fetch_all(app.bus.pool()).await?;
    for name in stored.iter().filter(|n| !subs.iter().any(|s| s.0 == n.as_str())) {
        app.bus.remove(name).await?;
        tracing::info!(subscription = %name, "Removed a retired pipeline subscription.");
    }
    let mut tasks = Vec::new();
    for (name, patterns, concurrency, handler) in subs {
        let mut spec = SubscriptionSpec::new(name, patterns);
        spec.concurrency = concurrency;
        tasks.push(app.bus.spawn_consumer(spec, handler, shutdown.clone()).await?);
    }
    Ok(tasks)
}

/// The file an event is about, if it still exists.
pub(crate) async fn file_of(app: &App, ev: &Envelope) -> Result<Option<FileRecord>, HandlerError> {
    let id = ev.payload_str("file_id").and_then(|s| Uuid::parse_str(s).ok()).ok_or_else(|| HandlerError::permanent("event has no valid file_id"))?;
    Ok(files::get(app.bus.pool(), id).await?)
}

pub(crate) fn storage_error(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::retryable(format!("object store: {e}"))
}
