//! Airlock's event substrate. It knows events, subscriptions and deliveries — nothing of uploads.
//!
//! # Layout
//! - [`envelope`]: the [`Envelope`] every event travels in, [`EventContext`] for building
//!   chains (correlation, causation, trace), and the CloudEvents 1.0 mapping.
//! - [`catalog`]: the compiled-in JSON Schemas (`events/<context>/<name>.v<N>.json`), payload
//!   validation, and the breaking-change check between two catalogs.
//! - [`db`]: opening SQLite and the substrate's migrations.
//! - [`bus`]: the embedded bus — [`Tx`] (the transactional outbox: publish in the caller's
//!   transaction), fan-out on write, subscriptions, dead letters, replay, timers, the log.
//! - [`subscription`]: [`SubscriptionSpec`]: type patterns, filters, retry, lease, ordering.
//! - [`consumer`]: the worker loop, the [`Handler`] trait and idempotent completion.
//!
//! # Guarantees (each tested by `tests/conformance`)
//! - A rolled-back transaction publishes nothing; a committed one loses nothing.
//! - Every committed event reaches every subscription it matched at commit time, at least once.
//! - A handler's effects and its `(subscription, event_id)` record commit together.
//! - Failed deliveries are retried with backoff and jitter, then dead-lettered.
//! - With `ordered`, one subject's events are handled one at a time, in publication order.
//! - Timers fire once, after restarts too, unless cancelled first.

pub mod bus;
pub mod catalog;
pub mod consumer;
pub mod db;
pub mod envelope;
pub mod subscription;

pub use bus::{Bus, BusOptions, DeadLetter, DeliveryState, EventQuery, LoggedEvent, Tx};
pub use catalog::{Catalog, EventType, Visibility};
pub use consumer::{BoxFuture, Handler, HandlerCtx, HandlerError, Retry};
pub use envelope::{Envelope, EventContext};
pub use subscription::{RetryPolicy, SubscriptionSpec};
pub use tokio_util::sync::CancellationToken;

/// The substrate's errors. [`EventError::code`] is the stable machine-readable name.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("unknown event type {0} (not in the catalog)")]
    UnknownType(String),
    #[error("invalid payload for {event} at `{field}`: {message} (schema {schema})")]
    InvalidPayload { event: String, schema: String, field: String, message: String },
    #[error("event catalog: {0}")]
    Catalog(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl EventError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::UnknownType(_) => "unknown_event_type",
            EventError::InvalidPayload { .. } => "invalid_event_payload",
            EventError::Catalog(_) => "catalog_invalid",
            EventError::NotFound(_) => "not_found",
            EventError::Config(_) => "config_invalid",
            EventError::Corrupt(_) => "corrupt_data",
            EventError::Database(_) | EventError::Migrate(_) => "database_error",
            EventError::Json(_) => "json_error",
        }
    }

    /// Whether trying again later may succeed (the consumer runner retries these).
    pub fn is_retryable(&self) -> bool {
        matches!(self, EventError::Database(_))
    }

    /// A completion refused because the event was already processed by this subscription (a
    /// concurrent redelivery got there first).
    pub fn is_already_processed(&self) -> bool {
        matches!(self, EventError::Database(sqlx::Error::Database(d)) if d.is_unique_violation() && d.message().contains("processed.event_id"))
    }
}
