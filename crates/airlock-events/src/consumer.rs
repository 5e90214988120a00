//! Idempotent consumers: the worker loop of one subscription, the [`Handler`] trait, and the
//! timer loop.
//!
//! A handler does its slow work first (reading objects, calling a scanner or a webhook), then
//! asks [`HandlerCtx::tx`] for the transaction in which it writes its effects and publishes its
//! events. The runner adds `(subscription, event_id)` to `processed` and marks the delivery
//! `done` in that same transaction, then commits: the effects and the record of having applied
//! them cannot part. A failed handler's transaction is rolled back and the delivery retried.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bus::{Arg, Bus, Tx, envelope_from_row, now_ms, until};
use crate::subscription::SubscriptionSpec;
use crate::{Envelope, EventError};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a subscription does with each event.
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivery. Write effects only through `cx.tx()`; anything else the handler
    /// does must be safe to repeat (delivery is at least once).
    fn handle<'a>(&'a self, event: &'a Envelope, cx: &'a mut HandlerCtx) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// How a failed delivery is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// After the subscription's exponential backoff.
    Backoff,
    /// Not before this delay (e.g. a receiver's `Retry-After`), and at least the backoff.
    After(Duration),
    /// Never: dead-letter now (the failure cannot go away by itself).
    Never,
}

/// A handler's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    pub message: String,
    pub retry: Retry,
}

impl HandlerError {
    /// A failure that may succeed later.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { message: message.into(), retry: Retry::Backoff }
    }

    /// A failure that will not: the delivery becomes a dead letter at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), retry: Retry::Never }
    }

    /// Retry no sooner than `after`.
    pub fn retry_after(message: impl Into<String>, after: Duration) -> Self {
        Self { message: message.into(), retry: Retry::After(after) }
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<EventError> for HandlerError {
    fn from(e: EventError) -> Self {
        if e.is_retryable() { Self::retryable(e.to_string()) } else { Self::permanent(e.to_string()) }
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        Self::from(EventError::from(e))
    }
}

/// What a handler knows about its delivery, and its lazily begun transaction.
pub struct HandlerCtx {
    bus: Bus,
    tx: Option<Tx>,
    /// The subscription's name.
    pub subscription: Arc<str>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The delivery row (stable across retries; e.g. a webhook's idempotency key).
    pub delivery_id: i64,
}

impl HandlerCtx {
    /// The transaction for this delivery's effects, begun on first use. Call it after the
    /// slow work: holding a write transaction blocks other writers on SQLite.
    ///
    /// # Errors
    /// Database failures.
    pub async fn tx(&mut self) -> Result<&mut Tx, EventError> {
        if self.tx.is_none() {
            self.tx = Some(self.bus.begin().await?);
        }
        self.tx.as_mut().ok_or_else(|| EventError::Corrupt("transaction vanished".into()))
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }
}

struct Claimed {
    id: i64,
    attempts: u32,
    /// Already in `processed`: a duplicate, acknowledged without running the handler.
    seen: bool,
    event: Envelope,
}

/// A finished delivery whose handler wrote nothing: recorded as processed in batches.
struct Finished {
    id: i64,
    event_id: String,
}

struct Consumer {
    spec: SubscriptionSpec,
    name: Arc<str>,
    handler: Arc<dyn Handler>,
    /// Signalled when a delivery finishes: frees a slot, and may unblock the next event of
    /// an ordering key.
    done: Arc<Notify>,
    /// Deliveries whose handler opened no transaction, to be completed in one transaction per
    /// batch (group commit).
    finished: tokio::sync::mpsc::UnboundedSender<Finished>,
}

impl Bus {
    /// Registers `spec` and runs its worker until `shutdown`; in-flight deliveries finish first.
    ///
    /// # Errors
    /// Registration failures (the loop itself logs and retries database errors).
    pub async fn spawn_consumer(
        &self,
        spec: SubscriptionSpec,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, EventError> {
        self.register(&spec).await?;
        let (finished, rx) = tokio::sync::mpsc::unbounded_channel();
        let done = Arc::new(Notify::new());
        let consumer = Arc::new(Consumer { name: Arc::from(spec.name.as_str()), spec, handler, done: done.clone(), finished });
        let bus = self.clone();
        // The completer must not hold the sender (it lives in `Consumer`): it ends when the
        // consumer and its in-flight deliveries are gone and the channel closes.
        let completer = tokio::spawn(bus.clone().complete_batches(consumer.name.clone(), done, rx));
        Ok(tokio::spawn(async move {
            bus.consume(consumer, shutdown).await;
            let _ = completer.await;
        }))
    }

    /// Records finished deliveries as processed and done, many per transaction. If a batch
    /// fails, its deliveries stay leased and are redelivered when the lease runs out (and then
    /// recognised as unprocessed: nothing was recorded).
    async fn complete_batches(self, name: Arc<str>, done: Arc<Notify>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Finished>) {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 512).await > 0 {
            let ids: Vec<i64> = batch.iter().map(|f| f.id).collect();
            let events: Vec<&str> = batch.iter().map(|f| f.event_id.as_str()).collect();
            let now = now_ms();
            let r = match (serde_json::to_string(&events), serde_json::to_string(&ids)) {
                (Ok(events), Ok(ids)) => self
                    .write_once(vec![
                        (
                            "INSERT INTO processed (subscription, event_id, processed_at) SELECT $1, value, $2 FROM json_each($3) WHERE true ON CONFLICT DO NOTHING",
                            vec![Arg::Text(name.to_string()), Arg::Int(now), Arg::Text(events)],
                        ),
                        (
                            "UPDATE deliveries SET state = 'done', lease_until = NULL, last_error = NULL, updated_at = $1 WHERE id IN (SELECT value FROM json_each($2))",
                            vec![Arg::Int(now), Arg::Text(ids)],
                        ),
                    ])
                    .await
                    .map(drop),
                (Err(e), _) | (_, Err(e)) => Err(e.into()),
            };
            if let Err(e) = r {
                tracing::warn!(subscription = %name, error = %e, count = ids.len(), "Recording finished deliveries failed; they will be redelivered.");
            }
            batch.clear();
            done.notify_one();
        }
    }

    /// Runs the timer loop, and the WAL checkpoints, until `shutdown`.
    pub fn spawn_timers(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let bus = self.clone();
        let checkpoints = self.spawn_checkpoints(shutdown.clone());
        tokio::spawn(async move {
            loop {
                let wait = match bus.fire_due_timers(500).await {
                    Ok(500) => continue,
                    Ok(_) => bus.next_timer_in(bus.inner.options.poll_interval).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "Firing timers failed; retrying.");
                        Duration::from_secs(1)
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = bus.inner.timer_wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
            let _ = checkpoints.await;
        })
    }

    /// Copies the WAL back into the database file every 200 ms from a reading connection
    /// (`PASSIVE`: never waits for, nor blocks, the writer). Left to the writer, the commit that
    /// crosses the autocheckpoint threshold would do it, fsyncs included, while holding the
    /// database's only write lock.
    fn spawn_checkpoints(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let bus = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(bus.pool()).await {
                    tracing::debug!(error = %e, "WAL checkpoint failed; retrying.");
                }
            }
        })
    }

    async fn consume(self, c: Arc<Consumer>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(c.spec.concurrency.max(1)));
        if let Ok(mut wakers) = self.inner.wakers.lock() {
            wakers.insert(c.name.to_string(), c.done.clone());
        }
        let mut tasks = JoinSet::new();
        let batch = self.inner.options.claim_batch.max(1);
        tracing::debug!(subscription = %c.name, "Consumer started.");
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let free = slots.available_permits().min(batch);
            let concurrency = c.spec.concurrency.max(1);
            let mut wait = self.inner.options.poll_interval;
            // Claim when at least half the slots are free (or all are): one claim per several
            // deliveries instead of one per completion.
            if free > 0 && (free * 2 >= concurrency || free == slots.available_permits() && tasks.is_empty()) {
                match self.claim(&c, free).await {
                    Ok(claimed) => {
                        let got = claimed.len();
                        for d in claimed {
                            let Ok(permit) = slots.clone().try_acquire_owned() else {
                                break;
                            };
                            let (bus, c) = (self.clone(), c.clone());
                            tasks.spawn(async move {
                                bus.deliver(&c, d).await;
                                drop(permit);
                                c.done.notify_one();
                            });
                        }
                        if got == free {
                            continue;
                        }
                        if got == 0 {
                            wait = self.next_due_in(&c.name, wait).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(subscription = %c.name, error = %e, "Claiming deliveries failed; retrying.");
                        wait = Duration::from_secs(1);
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = c.done.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        while tasks.join_next().await.is_some() {}
        if let Ok(mut wakers) = self.inner.wakers.lock()
            && wakers.get(&*c.name).is_some_and(|w| Arc::ptr_eq(w, &c.done))
        {
            wakers.remove(&*c.name);
        }
        tracing::debug!(subscription = %c.name, "Consumer stopped.");
    }

    /// When something may next become claimable without a wake-up: a retry falling due or a
    /// lease running out. Deliveries already due but not claimed (held back by an earlier one
    /// of their key) are unblocked by one of those, or by a completion's wake-up — counting
    /// them would make the loop spin.
    async fn next_due_in(&self, subscription: &str, cap: Duration) -> Duration {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(CASE WHEN state = 'pending' AND available_at > $2 THEN available_at WHEN state = 'leased' THEN lease_until END)
             FROM deliveries WHERE subscription = $1 AND state IN ('pending', 'leased')",
        )
        .bind(subscription)
        .bind(now_ms())
        .fetch_one(self.pool())
        .await
        .unwrap_or(None);
        until(next, cap)
    }

    async fn claim(&self, c: &Consumer, n: usize) -> Result<Vec<Claimed>, EventError> {
        let now = now_ms();
        let lease_until = now + c.spec.lease.as_millis() as i64;
        // Claimable: pending and due, or leased by a worker whose lease ran out (it crashed or
        // hung). With per-key ordering, only the oldest unfinished delivery of each key.
        const UNORDERED: &str = "UPDATE deliveries SET state = 'leased', lease_until = $1, attempts = attempts + 1, updated_at = $2
             WHERE id IN (
                 SELECT id FROM (SELECT id FROM deliveries WHERE subscription = $3 AND state = 'pending' AND available_at <= $2 ORDER BY id LIMIT $4)
                 UNION ALL
                 SELECT id FROM (SELECT id FROM deliveries WHERE subscription = $3 AND state = 'leased' AND lease_until < $2 ORDER BY id LIMIT $4)
                 ORDER BY id LIMIT $4)
             RETURNING id, attempts";
        const ORDERED: &str = "UPDATE deliveries SET state = 'leased', lease_until = $1, attempts = attempts + 1, updated_at = $2
             WHERE id IN (
                 SELECT id FROM (SELECT d.id FROM deliveries d WHERE d.subscription = $3
                     AND ((d.state = 'pending' AND d.available_at <= $2) OR (d.state = 'leased' AND d.lease_until < $2))
                     AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.subscription = d.subscription
                         AND p.ordering_key = d.ordering_key AND p.id < d.id AND p.state IN ('pending', 'leased'))
                     ORDER BY d.id LIMIT $4))
             RETURNING id, attempts";
        // A read first (no lock): a wake-up or poll that finds nothing claimable must not take
        // the write lock.
        // Two index-friendly probes (an OR across states would scan every finished delivery).
        let any: Option<i64> = sqlx::query_scalar(
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM deliveries WHERE subscription = $1 AND state = 'pending' AND available_at <= $2)
                         OR EXISTS (SELECT 1 FROM deliveries WHERE subscription = $1 AND state = 'leased' AND lease_until < $2)",
        )
        .bind(&*c.name)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        let rows = self
            .write_once(vec![(
                if c.spec.ordered { ORDERED } else { UNORDERED },
                vec![Arg::Int(lease_until), Arg::Int(now), Arg::Text(c.name.to_string()), Arg::Int(n as i64)],
            )])
            .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.get("id")).collect();
        let events = sqlx::query(
            "SELECT d.id AS delivery_id, d.attempts, e.event_id,
                    EXISTS (SELECT 1 FROM processed p WHERE p.subscription = d.subscription AND p.event_id = d.event_id) AS seen, e.event_type, e.event_version, e.correlation_id, e.causation_id,
                    e.created_at, e.source, e.subject, e.tenant, e.traceparent, e.payload
             FROM deliveries d JOIN events e ON e.event_id = d.event_id
             WHERE d.id IN (SELECT value FROM json_each($1)) ORDER BY d.id",
        )
        .bind(serde_json::to_string(&ids)?)
        .fetch_all(self.pool())
        .await?;
        events
            .iter()
            .map(|r| {
                Ok(Claimed {
                    id: r.get("delivery_id"),
                    attempts: r.get::<i64, _>("attempts") as u32,
                    seen: r.get("seen"),
                    event: envelope_from_row(r)?,
                })
            })
            .collect()
    }

    async fn deliver(&self, c: &Consumer, d: Claimed) {
        let span = tracing::info_span!("deliver", subscription = %c.name, event_type = %d.event.event_type,
            event_id = %d.event.event_id, subject = %d.event.subject, attempt = d.attempts);
        async {
            let outcome = self.run_handler(c, &d).await;
            if let Err(err) = outcome {
                self.record_failure(c, &d, &err).await;
            }
        }
        .instrument(span)
        .await;
    }

    async fn run_handler(&self, c: &Consumer, d: &Claimed) -> Result<(), HandlerError> {
        if d.seen {
            tracing::debug!("Duplicate delivery acknowledged without running the handler.");
            let _ = c.finished.send(Finished { id: d.id, event_id: d.event.event_id.to_string() });
            return Ok(());
        }
        let keeper = self.keep_lease(d.id, c.spec.lease);
        let mut cx = HandlerCtx { bus: self.clone(), tx: None, subscription: c.name.clone(), attempt: d.attempts, delivery_id: d.id };
        let result = c.handler.handle(&d.event, &mut cx).await;
        keeper.abort();
        result?;
        let Some(mut tx) = cx.tx.take() else {
            // No effects to commit with: complete in the next batch.
            let _ = c.finished.send(Finished { id: d.id, event_id: d.event.event_id.to_string() });
            return Ok(());
        };
        tx.finish_delivery(&c.name, &d.event.event_id.to_string(), d.id);
        match tx.commit().await {
            Ok(()) => Ok(()),
            Err(e) if e.is_already_processed() => {
                // A concurrent redelivery (expired lease) got there first: our effects were not
                // committed.
                tracing::debug!("Concurrent duplicate: effects rolled back.");
                self.mark_done(d.id).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Extends a long handler's lease every third of the lease, so no other worker takes it.
    fn keep_lease(&self, id: i64, lease: Duration) -> tokio::task::JoinHandle<()> {
        let bus = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                let until = now_ms() + lease.as_millis() as i64;
                let r = bus
                    .write_once(vec![(
                        "UPDATE deliveries SET lease_until = $2 WHERE id = $1 AND state = 'leased'",
                        vec![Arg::Int(id), Arg::Int(until)],
                    )])
                    .await;
                if let Err(e) = r {
                    tracing::warn!(delivery = id, error = %e, "Extending a lease failed.");
                }
            }
        })
    }

    async fn mark_done(&self, id: i64) -> Result<(), EventError> {
        self.write_once(vec![(
            "UPDATE deliveries SET state = 'done', lease_until = NULL, updated_at = $2 WHERE id = $1",
            vec![Arg::Int(id), Arg::Int(now_ms())],
        )])
        .await?;
        Ok(())
    }

    async fn record_failure(&self, c: &Consumer, d: &Claimed, err: &HandlerError) {
        let policy = &c.spec.retry;
        let dead = err.retry == Retry::Never || d.attempts >= policy.max_attempts;
        let delay = match err.retry {
            Retry::After(after) => after.max(policy.backoff(d.attempts)),
            _ => policy.backoff(d.attempts),
        };
        let now = now_ms();
        let r = self
            .write_once(vec![(
                "UPDATE deliveries SET state = $2, available_at = $3, lease_until = NULL, last_error = $4, updated_at = $5 WHERE id = $1 AND state = 'leased'",
                vec![
                    Arg::Int(d.id),
                    Arg::Text(if dead { "dead" } else { "pending" }.to_owned()),
                    Arg::Int(now + delay.as_millis() as i64),
                    Arg::Text(err.message.clone()),
                    Arg::Int(now),
                ],
            )])
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "Recording a failed delivery failed; the lease will expire and it will be retried.");
        } else if dead {
            tracing::error!(attempts = d.attempts, error = %err.message, "Delivery dead-lettered.");
        } else {
            tracing::warn!(attempts = d.attempts, retry_in_ms = delay.as_millis() as u64, error = %err.message, "Delivery failed; will retry.");
        }
    }
}
