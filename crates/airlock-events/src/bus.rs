//! The embedded, database-backed bus: the transactional outbox (fan-out on write), durable
//! subscriptions, claims with leases, retries, dead letters, replay and durable timers.
//!
//! How a publish becomes deliveries: inside the caller's transaction, [`Tx::publish`] appends
//! the events to the log and inserts one `deliveries` row per matching subscription. There is
//! no read cursor over the log, so transactions committing out of id order cannot make a
//! consumer skip an event. Workers claim rows (state `leased` with a lease deadline), run the
//! handler, and in the handler's own transaction record `(subscription, event_id)` in
//! `processed` and mark the delivery `done`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use time::OffsetDateTime;
use tokio::sync::watch;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::envelope::{from_micros, to_micros};
use crate::subscription::{SubscriptionSpec, matches};
use crate::{Envelope, EventError};

/// Tunables of the embedded bus.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// The fallback poll, for events committed by other processes (in-process commits wake
    /// workers at once).
    pub poll_interval: Duration,
    /// Deliveries claimed per round trip.
    pub claim_batch: usize,
}

impl Default for BusOptions {
    fn default() -> Self {
        Self { poll_interval: Duration::from_millis(500), claim_batch: 64 }
    }
}

/// The handle to the substrate: cheap to clone, shared by the API and every worker.
#[derive(Clone)]
pub struct Bus {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pool: SqlitePool,
    pub(crate) catalog: &'static Catalog,
    /// Bumped after every commit that wrote events, timers or redrives: wakes the workers.
    pub(crate) wake: watch::Sender<u64>,
    subs: Mutex<(i64, Arc<Vec<ActiveSub>>)>,
    pub(crate) options: BusOptions,
    /// Per-subscription wake-ups of this process's consumers: a commit wakes only the
    /// subscriptions it gave deliveries to (waking every consumer on every commit would make
    /// each of them take the write lock for nothing).
    pub(crate) wakers: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Wakes the timer loop after a commit that scheduled a timer.
    pub(crate) timer_wake: tokio::sync::Notify,
    /// SQLite has one writer: queueing writers here, in order, is far cheaper than letting
    /// them collide on the file lock (whose busy handler sleeps). Other processes still queue
    /// on the busy timeout. The slot holds the one connection every write transaction uses:
    /// its page cache stays valid between transactions (a pooled connection would find it
    /// stale after another connection's commit and re-read every page it touches).
    write: Arc<tokio::sync::Mutex<Option<SqliteConnection>>>,
}

struct ActiveSub {
    name: String,
    patterns: Vec<String>,
    filter: BTreeMap<String, Value>,
    ordered: bool,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Bus {
    /// A bus over an open, migrated pool, with the compiled-in catalog.
    ///
    /// # Errors
    /// If the compiled-in catalog is malformed.
    pub fn new(pool: SqlitePool, options: BusOptions) -> Result<Bus, EventError> {
        Ok(Bus::with_catalog(pool, options, Catalog::builtin()?))
    }

    /// A bus validating against another catalog (tests and tools; the binary uses the builtin).
    pub fn with_catalog(pool: SqlitePool, options: BusOptions, catalog: &'static Catalog) -> Bus {
        let (wake, _) = watch::channel(0);
        Bus {
            inner: Arc::new(Inner {
                pool,
                catalog,
                wake,
                subs: Mutex::new((-1, Arc::new(Vec::new()))),
                options,
                write: Arc::default(),
                wakers: Mutex::default(),
                timer_wake: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Opens the database at `url`, applies the substrate's migrations and returns the bus.
    ///
    /// # Errors
    /// Database or migration failures.
    pub async fn open(url: &str, options: BusOptions) -> Result<Bus, EventError> {
        let pool = crate::db::open_sqlite(url).await?;
        crate::db::migrate(&pool).await?;
        Bus::new(pool, options)
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    pub fn catalog(&self) -> &'static Catalog {
        self.inner.catalog
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE`: SQLite takes the write lock up front, so
    /// a transaction never fails half-way on a lock upgrade). This process's writers queue
    /// here; `BEGIN` itself goes out with the transaction's first statements.
    ///
    /// # Errors
    /// Database failures.
    pub async fn begin(&self) -> Result<Tx, EventError> {
        let mut slot = self.inner.write.clone().lock_owned().await;
        let conn = match slot.take() {
            Some(conn) => conn,
            None => crate::db::open_writer(&self.inner.pool).await?,
        };
        Ok(Tx {
            writer: Some(Writer { conn, slot }),
            begun: false,
            bus: self.clone(),
            wakes: false,
            woken: Vec::new(),
            timers: false,
            batch: Batch::default(),
        })
    }

    /// Runs statements (`$n` numbered per statement) as a transaction of their own, in one round
    /// trip; returns the rows they returned (use `RETURNING` to count).
    pub(crate) async fn write_once(&self, stmts: Vec<(&'static str, Vec<Arg>)>) -> Result<Vec<sqlx::sqlite::SqliteRow>, EventError> {
        let mut tx = self.begin().await?;
        tx.batch.ops.extend(stmts.into_iter().map(|(sql, args)| Op::Stmt(sql, args)));
        tx.commit_returning().await
    }

    /// Publishes events in a transaction of their own.
    ///
    /// # Errors
    /// See [`Tx::publish_all`].
    pub async fn publish(&self, events: &[Envelope]) -> Result<(), EventError> {
        let mut tx = self.begin().await?;
        tx.publish_all(events).await?;
        tx.commit().await
    }

    pub(crate) fn wake(&self) {
        self.inner.wake.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Wakes this process's consumers of the named subscriptions (all of them for `None`).
    pub(crate) fn wake_subscriptions(&self, names: Option<&[String]>) {
        let Ok(wakers) = self.inner.wakers.lock() else { return };
        match names {
            Some(names) => names.iter().filter_map(|n| wakers.get(n)).for_each(|w| w.notify_one()),
            None => wakers.values().for_each(|w| w.notify_one()),
        }
    }

    /// Creates or updates a subscription. A newly created subscription with `start_from`
    /// is backfilled with the events published since then.
    ///
    /// # Errors
    /// Database failures.
    pub async fn register(&self, spec: &SubscriptionSpec) -> Result<bool, EventError> {
        let mut tx = self.begin().await?;
        let existed = sqlx::query("SELECT 1 FROM subscriptions WHERE name = $1").bind(&spec.name).fetch_optional(tx.conn().await?).await?.is_some();
        sqlx::query(
            "INSERT INTO subscriptions (name, patterns, filter, max_attempts, backoff_base_ms, backoff_cap_ms, lease_ms, ordered, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (name) DO UPDATE SET patterns = excluded.patterns, filter = excluded.filter,
               max_attempts = excluded.max_attempts, backoff_base_ms = excluded.backoff_base_ms,
               backoff_cap_ms = excluded.backoff_cap_ms, lease_ms = excluded.lease_ms, ordered = excluded.ordered",
        )
        .bind(&spec.name)
        .bind(serde_json::to_string(&spec.patterns)?)
        .bind(serde_json::to_string(&spec.filter)?)
        .bind(i64::from(spec.retry.max_attempts))
        .bind(spec.retry.base.as_millis() as i64)
        .bind(spec.retry.cap.as_millis() as i64)
        .bind(spec.lease.as_millis() as i64)
        .bind(spec.ordered)
        .bind(now_ms())
        .execute(tx.conn().await?)
        .await?;
        bump_subscriptions_version(tx.conn().await?).await?;
        if !existed && let Some(since) = spec.start_from {
            tx.backfill(&spec.name, since).await?;
        }
        tx.commit().await?;
        Ok(!existed)
    }

    /// A stored subscription (concurrency and `start_from` are not stored: defaults).
    ///
    /// # Errors
    /// Database failures.
    pub async fn subscription(&self, name: &str) -> Result<Option<SubscriptionSpec>, EventError> {
        let Some(r) = sqlx::query("SELECT * FROM subscriptions WHERE name = $1").bind(name).fetch_optional(&self.inner.pool).await? else {
            return Ok(None);
        };
        let mut spec = SubscriptionSpec::new(name, &[]);
        spec.patterns = serde_json::from_str(r.get("patterns"))?;
        spec.filter = serde_json::from_str(r.get("filter"))?;
        spec.retry = crate::RetryPolicy {
            max_attempts: r.get::<i64, _>("max_attempts") as u32,
            base: Duration::from_millis(r.get::<i64, _>("backoff_base_ms") as u64),
            cap: Duration::from_millis(r.get::<i64, _>("backoff_cap_ms") as u64),
        };
        spec.lease = Duration::from_millis(r.get::<i64, _>("lease_ms") as u64);
        spec.ordered = r.get("ordered");
        Ok(Some(spec))
    }

    /// How many deliveries of a subscription are in each state.
    ///
    /// # Errors
    /// Database failures.
    pub async fn delivery_counts(&self, name: &str) -> Result<BTreeMap<String, i64>, EventError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM deliveries WHERE subscription = $1 GROUP BY state")
            .bind(name)
            .fetch_all(&self.inner.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get("state"), r.get("n"))).collect())
    }

    /// A receiver that changes after every local commit that published events (for live
    /// streams; other processes' commits are seen by polling).
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }

    /// Stops fan-out to a subscription (e.g. its webhook answered `410 Gone`); its existing
    /// deliveries stay for inspection.
    ///
    /// # Errors
    /// Database failures.
    pub async fn disable(&self, name: &str) -> Result<(), EventError> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE subscriptions SET disabled_at = $2 WHERE name = $1 AND disabled_at IS NULL")
            .bind(name)
            .bind(now_ms())
            .execute(tx.conn().await?)
            .await?;
        bump_subscriptions_version(tx.conn().await?).await?;
        tx.commit().await
    }

    /// Deletes a subscription with its undelivered deliveries and dead letters.
    ///
    /// # Errors
    /// Database failures.
    pub async fn remove(&self, name: &str) -> Result<bool, EventError> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM subscriptions WHERE name = $1").bind(name).execute(tx.conn().await?).await?.rows_affected();
        sqlx::query("DELETE FROM deliveries WHERE subscription = $1 AND state IN ('pending', 'leased', 'dead')")
            .bind(name)
            .execute(tx.conn().await?)
            .await?;
        bump_subscriptions_version(tx.conn().await?).await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Delivers to `subscription` every matching event published since `since` that it has not
    /// been given yet (a replay; already-delivered events are not repeated).
    ///
    /// # Errors
    /// [`EventError::NotFound`] for an unknown subscription; database failures.
    pub async fn replay(&self, subscription: &str, since: OffsetDateTime) -> Result<u64, EventError> {
        let mut tx = self.begin().await?;
        let n = tx.backfill(subscription, since).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// The fan-out list as last read, with the `subscriptions_version` it was read at.
    fn cached_subs(&self) -> (i64, Arc<Vec<ActiveSub>>) {
        match self.inner.subs.lock() {
            Ok(cache) => (cache.0, cache.1.clone()),
            Err(_) => (-1, Arc::new(Vec::new())),
        }
    }

    /// Reads the active subscriptions (inside a write transaction, so they cannot change
    /// before it commits) and caches them with their version.
    async fn load_subs(&self, conn: &mut SqliteConnection) -> Result<Arc<Vec<ActiveSub>>, EventError> {
        let version: i64 = sqlx::query_scalar("SELECT value FROM bus_meta WHERE key = 'subscriptions_version'").fetch_one(&mut *conn).await?;
        let rows = sqlx::query("SELECT name, patterns, filter, ordered FROM subscriptions WHERE disabled_at IS NULL").fetch_all(&mut *conn).await?;
        let mut subs = Vec::with_capacity(rows.len());
        for r in rows {
            subs.push(ActiveSub {
                name: r.get("name"),
                patterns: serde_json::from_str(r.get("patterns"))?,
                filter: serde_json::from_str(r.get("filter"))?,
                ordered: r.get("ordered"),
            });
        }
        let subs = Arc::new(subs);
        if let Ok(mut cache) = self.inner.subs.lock() {
            *cache = (version, subs.clone());
        }
        Ok(subs)
    }

    /// Dead letters, newest first, optionally of one subscription.
    ///
    /// # Errors
    /// Database failures.
    pub async fn dead_letters(&self, subscription: Option<&str>, limit: i64) -> Result<Vec<DeadLetter>, EventError> {
        let rows = sqlx::query(
            "SELECT d.id, d.subscription, d.event_id, d.attempts, d.last_error, d.updated_at, e.event_type, e.event_version, e.subject, e.tenant
             FROM deliveries d JOIN events e ON e.event_id = d.event_id
             WHERE d.state = 'dead' AND ($1 IS NULL OR d.subscription = $1)
             ORDER BY d.updated_at DESC, d.id DESC LIMIT $2",
        )
        .bind(subscription)
        .bind(limit)
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(DeadLetter::from_row).collect()
    }

    /// One dead letter by id.
    ///
    /// # Errors
    /// Database failures.
    pub async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, EventError> {
        let row = sqlx::query(
            "SELECT d.id, d.subscription, d.event_id, d.attempts, d.last_error, d.updated_at, e.event_type, e.event_version, e.subject, e.tenant
             FROM deliveries d JOIN events e ON e.event_id = d.event_id WHERE d.state = 'dead' AND d.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.inner.pool)
        .await?;
        row.as_ref().map(DeadLetter::from_row).transpose()
    }

    /// Sends a dead letter back to its subscription for a fresh series of attempts (same event,
    /// same `event_id`, so receivers can still deduplicate).
    ///
    /// # Errors
    /// Database failures.
    pub async fn redrive(&self, id: i64) -> Result<bool, EventError> {
        let n = self
            .write_once(vec![(
                "UPDATE deliveries SET state = 'pending', attempts = 0, available_at = $2, updated_at = $2 WHERE id = $1 AND state = 'dead' RETURNING 1",
                vec![Arg::Int(id), Arg::Int(now_ms())],
            )])
            .await?
            .len();
        self.wake_subscriptions(None);
        Ok(n > 0)
    }

    /// Redrives every dead letter (of one subscription, or all).
    ///
    /// # Errors
    /// Database failures.
    pub async fn redrive_all(&self, subscription: Option<&str>) -> Result<u64, EventError> {
        let n = self
            .write_once(vec![(
                "UPDATE deliveries SET state = 'pending', attempts = 0, available_at = $2, updated_at = $2 WHERE state = 'dead' AND ($1 IS NULL OR subscription = $1) RETURNING 1",
                vec![subscription.map_or(Arg::Null, |s| Arg::Text(s.to_owned())), Arg::Int(now_ms())],
            )])
            .await?
            .len();
        self.wake_subscriptions(None);
        Ok(n as u64)
    }

    /// Discards a dead letter (kept in the history as `discarded`).
    ///
    /// # Errors
    /// Database failures.
    pub async fn discard(&self, id: i64) -> Result<bool, EventError> {
        let n = self
            .write_once(vec![(
                "UPDATE deliveries SET state = 'discarded', updated_at = $2 WHERE id = $1 AND state = 'dead' RETURNING 1",
                vec![Arg::Int(id), Arg::Int(now_ms())],
            )])
            .await?
            .len();
        Ok(n > 0)
    }

    /// Deliveries not yet finished (pending or leased), over all subscriptions.
    ///
    /// # Errors
    /// Database failures.
    pub async fn unfinished(&self) -> Result<i64, EventError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE state IN ('pending', 'leased')").fetch_one(&self.inner.pool).await?)
    }

    /// Deletes finished deliveries and idempotency records older than `age` (queue tables must
    /// not grow forever). The event log itself is kept.
    ///
    /// # Errors
    /// Database failures.
    pub async fn purge_finished(&self, age: Duration) -> Result<u64, EventError> {
        let before = now_ms() - age.as_millis() as i64;
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM deliveries WHERE state IN ('done', 'discarded') AND updated_at < $1")
            .bind(before)
            .execute(tx.conn().await?)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM processed WHERE processed_at < $1").bind(before).execute(tx.conn().await?).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Fires every due timer (publishes its event and deletes it, in one transaction).
    /// Returns how many fired.
    ///
    /// # Errors
    /// Database failures.
    pub async fn fire_due_timers(&self, max: i64) -> Result<usize, EventError> {
        let now = now_ms();
        // A read first: most wake-ups find nothing due, and need not take the write lock.
        let due: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM timers WHERE fire_at <= $1 LIMIT 1").bind(now).fetch_optional(&self.inner.pool).await?;
        if due.is_none() {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        let rows =
            sqlx::query("DELETE FROM timers WHERE id IN (SELECT id FROM timers WHERE fire_at <= $1 ORDER BY fire_at LIMIT $2) RETURNING event")
                .bind(now)
                .bind(max)
                .fetch_all(tx.conn().await?)
                .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let mut events = Vec::with_capacity(rows.len());
        let fired_at = crate::envelope::now_utc();
        for r in &rows {
            let mut ev: Envelope = serde_json::from_str(r.get("event"))?;
            ev.created_at = fired_at;
            events.push(ev);
        }
        tx.publish_all(&events).await?;
        tx.commit().await?;
        tracing::debug!(count = events.len(), "Timers fired.");
        Ok(events.len())
    }

    /// How long until the next timer is due (capped by `cap`).
    pub(crate) async fn next_timer_in(&self, cap: Duration) -> Duration {
        let next: Option<i64> = sqlx::query_scalar("SELECT MIN(fire_at) FROM timers").fetch_one(&self.inner.pool).await.unwrap_or(None);
        until(next, cap)
    }

    /// The event log, in publication order, filtered.
    ///
    /// # Errors
    /// Database failures.
    pub async fn events(&self, q: &EventQuery) -> Result<Vec<LoggedEvent>, EventError> {
        let rows = sqlx::query(
            "SELECT seq, event_id, event_type, event_version, correlation_id, causation_id, created_at, source, subject, tenant, traceparent, payload
             FROM events
             WHERE seq > $1 AND ($2 IS NULL OR correlation_id = $2) AND ($3 IS NULL OR subject = $3)
               AND ($4 IS NULL OR event_type = $4) AND ($5 IS NULL OR tenant = $5)
             ORDER BY seq LIMIT $6",
        )
        .bind(q.after_seq.unwrap_or(0))
        .bind(q.correlation_id.as_deref())
        .bind(q.subject.as_deref())
        .bind(q.event_type.as_deref())
        .bind(q.tenant.as_deref())
        .bind(q.limit)
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(|r| Ok(LoggedEvent { seq: r.get("seq"), envelope: envelope_from_row(r)? })).collect()
    }

    /// Every delivery of the given events (for traces), oldest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn deliveries_of(&self, event_ids: &[Uuid]) -> Result<Vec<DeliveryState>, EventError> {
        let ids = serde_json::to_string(&event_ids.iter().map(Uuid::to_string).collect::<Vec<_>>())?;
        let rows = sqlx::query(
            "SELECT id, subscription, event_id, state, attempts, available_at, last_error, updated_at FROM deliveries
             WHERE event_id IN (SELECT value FROM json_each($1)) ORDER BY id",
        )
        .bind(ids)
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeliveryState {
                    id: r.get("id"),
                    subscription: r.get("subscription"),
                    event_id: parse_uuid(r.get("event_id"))?,
                    state: r.get("state"),
                    attempts: r.get::<i64, _>("attempts") as u32,
                    next_attempt_at: ms_to_time(r.get("available_at")),
                    last_error: r.get("last_error"),
                    updated_at: ms_to_time(r.get("updated_at")),
                })
            })
            .collect()
    }
}

/// A filter over the event log.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub correlation_id: Option<String>,
    pub subject: Option<String>,
    pub event_type: Option<String>,
    pub tenant: Option<String>,
    /// Only events after this log position (a cursor).
    pub after_seq: Option<i64>,
    pub limit: i64,
}

/// An event with its position in the log.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedEvent {
    pub seq: i64,
    #[serde(flatten)]
    pub envelope: Envelope,
}

/// One delivery of one event to one subscription.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryState {
    pub id: i64,
    pub subscription: String,
    pub event_id: Uuid,
    /// `pending`, `leased`, `done`, `dead` or `discarded`.
    pub state: String,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A delivery that exhausted its attempts.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub subscription: String,
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: u32,
    pub subject: String,
    pub tenant: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: OffsetDateTime,
}

impl DeadLetter {
    fn from_row(r: &sqlx::sqlite::SqliteRow) -> Result<DeadLetter, EventError> {
        Ok(DeadLetter {
            id: r.get("id"),
            subscription: r.get("subscription"),
            event_id: parse_uuid(r.get("event_id"))?,
            event_type: r.get("event_type"),
            event_version: r.get::<i64, _>("event_version") as u32,
            subject: r.get("subject"),
            tenant: r.get("tenant"),
            attempts: r.get::<i64, _>("attempts") as u32,
            last_error: r.get("last_error"),
            failed_at: ms_to_time(r.get("updated_at")),
        })
    }
}

fn ms_to_time(ms: i64) -> OffsetDateTime {
    from_micros(ms.saturating_mul(1000))
}

pub(crate) fn until(next_ms: Option<i64>, cap: Duration) -> Duration {
    match next_ms {
        Some(t) => Duration::from_millis((t - now_ms()).max(0) as u64).min(cap),
        None => cap,
    }
}

fn parse_uuid(s: &str) -> Result<Uuid, EventError> {
    Uuid::parse_str(s).map_err(|e| EventError::Corrupt(format!("bad uuid {s:?}: {e}")))
}

pub(crate) fn envelope_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<Envelope, EventError> {
    let causation: Option<String> = r.get("causation_id");
    Ok(Envelope {
        event_id: parse_uuid(r.get("event_id"))?,
        event_type: r.get("event_type"),
        event_version: r.get::<i64, _>("event_version") as u32,
        correlation_id: r.get("correlation_id"),
        causation_id: causation.as_deref().map(parse_uuid).transpose()?,
        created_at: from_micros(r.get("created_at")),
        source: r.get("source"),
        subject: r.get("subject"),
        tenant: r.get("tenant"),
        traceparent: r.get("traceparent"),
        payload: serde_json::from_str(r.get("payload"))?,
    })
}

async fn bump_subscriptions_version(conn: &mut SqliteConnection) -> Result<(), EventError> {
    sqlx::query("UPDATE bus_meta SET value = value + 1 WHERE key = 'subscriptions_version'").execute(conn).await?;
    Ok(())
}

/// A write transaction that can carry events: the transactional outbox.
///
/// Whatever the caller writes through [`Tx::conn`] and every event it publishes commit or roll
/// back together. Dropping a `Tx` without [`Tx::commit`] rolls it back.
pub struct Tx {
    /// Present until the transaction ends.
    writer: Option<Writer>,
    /// Whether `BEGIN` was sent (a lazy transaction sends it with its first batch).
    begun: bool,
    bus: Bus,
    wakes: bool,
    /// Subscriptions given deliveries by this transaction, to wake after the commit.
    woken: Vec<String>,
    /// Whether a timer was scheduled.
    timers: bool,
    /// The bus's own writes not sent yet (see [`Batch`]).
    batch: Batch,
}

/// The write connection, out of its slot while a transaction uses it.
struct Writer {
    conn: SqliteConnection,
    slot: tokio::sync::OwnedMutexGuard<Option<SqliteConnection>>,
}

impl Writer {
    /// Gives the connection back to the slot (and releases the write lock).
    fn release(self) {
        let Writer { conn, mut slot } = self;
        *slot = Some(conn);
    }

    /// Rolls back, then releases. A connection that cannot roll back is closed instead
    /// (closing rolls back too); the next transaction opens another.
    async fn rollback(self) -> Result<(), EventError> {
        let Writer { mut conn, mut slot } = self;
        let r = sqlx::query("ROLLBACK").execute(&mut conn).await;
        if r.is_ok() {
            *slot = Some(conn);
        }
        r?;
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            if !self.begun {
                w.release();
                return;
            }
            // Not committed: roll back before the next transaction gets the connection.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = w.rollback().await {
                        tracing::debug!(error = %e, "Rolling back a dropped transaction failed; its connection was closed.");
                    }
                });
            }
        }
    }
}

/// The bus's own writes of a transaction (events, deliveries, timers, completions), queued and
/// sent to SQLite as one multi-statement round trip before the next statement that needs a
/// result, or together with `COMMIT`. Every round trip inside a write transaction holds the
/// database's only write lock, so sending five statements at once instead of one by one is
/// what lets several hundred transactions a second through.
///
/// Fan-out is rendered when the batch is sent, from the cached subscription list, behind a
/// guard statement that fails (a unique-key violation on `bus_meta`) unless
/// `subscriptions_version` still equals the cached version. The guard is the batch's first
/// statement, so when it fails nothing else ran: the list is reloaded and the batch rendered
/// again.
#[derive(Default)]
struct Batch {
    ops: Vec<Op>,
}

pub(crate) enum Op {
    /// A statement whose `$1..$n` refer to its own arguments.
    Stmt(&'static str, Vec<Arg>),
    /// Deliveries of these events to the matching subscriptions.
    FanOut(Vec<Envelope>),
}

pub(crate) enum Arg {
    Text(String),
    Int(i64),
    Null,
}

const STALE_GUARD: &str = "INSERT INTO bus_meta (key, value) SELECT 'subscriptions_version', 0
     WHERE (SELECT value FROM bus_meta WHERE key = 'subscriptions_version') IS NOT $1";

const INSERT_DELIVERIES: &str = "INSERT INTO deliveries (subscription, event_id, ordering_key, state, attempts, available_at, updated_at)
     SELECT j.value->>0, j.value->>1, j.value->>2, 'pending', 0, $2, $2 FROM json_each($1) AS j WHERE true
     ON CONFLICT (subscription, event_id) DO NOTHING";

/// One multi-statement query being assembled.
#[derive(Default)]
struct Rendered {
    sql: String,
    args: Vec<Arg>,
}

impl Rendered {
    /// Appends one statement, renumbering its `$n` after the arguments already there.
    fn push(&mut self, sql: &str, args: Vec<Arg>) {
        let base = self.args.len();
        if !self.sql.is_empty() {
            self.sql.push_str(";\n");
        }
        let mut rest = sql;
        while let Some(at) = rest.find('$') {
            self.sql.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            match rest[..digits].parse::<usize>() {
                Ok(n) => self.sql.push_str(&(n + base).to_string()),
                Err(_) => self.sql.push_str(&rest[..digits]),
            }
            rest = &rest[digits..];
        }
        self.sql.push_str(rest);
        self.args.extend(args);
    }
}

/// The deliveries of `events` to `subs` (as JSON rows), noting whom to wake.
fn fan_out(subs: &[ActiveSub], events: &[Envelope], woken: &mut Vec<String>) -> Vec<Value> {
    let mut deliveries = Vec::new();
    for ev in events {
        for s in subs.iter().filter(|s| matches(&s.patterns, &s.filter, ev)) {
            deliveries.push(json!([s.name, ev.event_id.to_string(), s.ordered.then_some(&ev.subject)]));
            if !woken.contains(&s.name) {
                woken.push(s.name.clone());
            }
        }
    }
    deliveries
}

fn is_stale_guard(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.message().contains("bus_meta.key"))
}

impl Tx {
    /// The connection, for the caller's own state changes, after the writes queued so far
    /// (published events, timers) were sent: statements run in the order they were made.
    ///
    /// # Errors
    /// Database failures.
    pub async fn conn(&mut self) -> Result<&mut SqliteConnection, EventError> {
        self.send(false).await?;
        Ok(self.raw())
    }

    /// The connection as it is (`BEGIN` and queued writes possibly not sent yet).
    fn raw(&mut self) -> &mut SqliteConnection {
        // Only `commit` and `rollback`, which consume the Tx, take the writer out.
        &mut self.writer.as_mut().expect("a transaction keeps its connection until it ends").conn
    }

    /// The bus this transaction belongs to.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Publishes one event with this transaction. See [`Tx::publish_all`].
    ///
    /// # Errors
    /// See [`Tx::publish_all`].
    pub async fn publish(&mut self, event: Envelope) -> Result<(), EventError> {
        self.publish_all(std::slice::from_ref(&event)).await
    }

    /// Validates every event against the catalog, appends them to the log and fans them out to
    /// the matching subscriptions — all inside this transaction.
    ///
    /// # Errors
    /// [`EventError::UnknownType`] / [`EventError::InvalidPayload`] before anything is written;
    /// database failures.
    pub async fn publish_all(&mut self, events: &[Envelope]) -> Result<(), EventError> {
        if events.is_empty() {
            return Ok(());
        }
        for ev in events {
            self.bus.inner.catalog.validate(&ev.event_type, ev.event_version, &ev.payload)?;
        }
        let rows: Vec<Value> = events
            .iter()
            .map(|e| {
                json!({
                    "event_id": e.event_id.to_string(), "event_type": e.event_type, "event_version": e.event_version,
                    "correlation_id": e.correlation_id, "causation_id": e.causation_id.map(|c| c.to_string()),
                    "created_at": to_micros(e.created_at), "source": e.source, "subject": e.subject, "tenant": e.tenant,
                    "traceparent": e.traceparent, "payload": e.payload,
                })
            })
            .collect();
        self.batch.ops.push(Op::Stmt(
            "INSERT INTO events (event_id, event_type, event_version, correlation_id, causation_id, created_at, source, subject, tenant, traceparent, payload)
             SELECT j.value->>'event_id', j.value->>'event_type', j.value->>'event_version', j.value->>'correlation_id',
                    j.value->>'causation_id', j.value->>'created_at', j.value->>'source', j.value->>'subject', j.value->>'tenant',
                    j.value->>'traceparent', j.value->'payload'
             FROM json_each($1) AS j",
            vec![Arg::Text(Value::Array(rows).to_string())],
        ));
        self.batch.ops.push(Op::FanOut(events.to_vec()));
        self.wakes = true;
        Ok(())
    }

    /// Sends the queued writes of the bus (one round trip); returns the rows their statements
    /// returned.
    ///
    /// # Errors
    /// Database failures (the transaction should then be dropped).
    pub async fn flush(&mut self) -> Result<Vec<sqlx::sqlite::SqliteRow>, EventError> {
        self.send(false).await
    }

    /// Renders the batch (with `COMMIT` at the end if `commit`) and runs it in one round trip,
    /// re-rendering if the subscriptions changed under the cached list.
    async fn send(&mut self, commit: bool) -> Result<Vec<sqlx::sqlite::SqliteRow>, EventError> {
        if self.batch.ops.is_empty() {
            match (self.begun, commit) {
                // Nothing to send; or a transaction that never wrote anything, nothing to commit.
                (true, false) | (false, true) => return Ok(Vec::new()),
                // BEGIN is due (for `conn`), or COMMIT is.
                _ => {}
            }
        }
        let ops = std::mem::take(&mut self.batch.ops);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (version, subs) = self.bus.cached_subs();
            let mut woken = Vec::new();
            let mut r = Rendered::default();
            if !self.begun {
                r.push("BEGIN IMMEDIATE", Vec::new());
                self.begun = true;
            }
            if ops.iter().any(|op| matches!(op, Op::FanOut(_))) {
                r.push(STALE_GUARD, vec![Arg::Int(version)]);
            }
            let now = now_ms();
            for op in &ops {
                match op {
                    Op::Stmt(sql, args) => r.push(
                        sql,
                        args.iter()
                            .map(|a| match a {
                                Arg::Text(t) => Arg::Text(t.clone()),
                                Arg::Int(i) => Arg::Int(*i),
                                Arg::Null => Arg::Null,
                            })
                            .collect(),
                    ),
                    Op::FanOut(events) => {
                        let deliveries = fan_out(&subs, events, &mut woken);
                        if !deliveries.is_empty() {
                            r.push(INSERT_DELIVERIES, vec![Arg::Text(Value::Array(deliveries).to_string()), Arg::Int(now)]);
                        }
                    }
                }
            }
            if commit {
                r.push("COMMIT", Vec::new());
            }
            let mut q = sqlx::query(sqlx::AssertSqlSafe(r.sql));
            for a in r.args {
                q = match a {
                    Arg::Text(t) => q.bind(t),
                    Arg::Int(i) => q.bind(i),
                    Arg::Null => q.bind(None::<String>),
                };
            }
            match q.fetch_all(self.raw()).await {
                Ok(rows) => {
                    for w in woken {
                        if !self.woken.contains(&w) {
                            self.woken.push(w);
                        }
                    }
                    return Ok(rows);
                }
                // The guard failed before anything else ran: reload the list and render again.
                Err(e) if is_stale_guard(&e) && attempt < 3 => {
                    let bus = self.bus.clone();
                    bus.load_subs(self.raw()).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Queues the completion of a delivery with this transaction's commit: `(subscription,
    /// event_id)` recorded as processed, the delivery marked done. If the event was already
    /// processed (a concurrent redelivery won), the commit fails with an error for which
    /// [`EventError::is_already_processed`] holds, and nothing is committed.
    pub(crate) fn finish_delivery(&mut self, subscription: &str, event_id: &str, delivery_id: i64) {
        let now = now_ms();
        self.batch.ops.push(Op::Stmt(
            "INSERT INTO processed (subscription, event_id, processed_at) VALUES ($1, $2, $3)",
            vec![Arg::Text(subscription.to_owned()), Arg::Text(event_id.to_owned()), Arg::Int(now)],
        ));
        self.batch.ops.push(Op::Stmt(
            "UPDATE deliveries SET state = 'done', lease_until = NULL, last_error = NULL, updated_at = $2 WHERE id = $1",
            vec![Arg::Int(delivery_id), Arg::Int(now)],
        ));
    }

    async fn insert_deliveries(&mut self, deliveries: Vec<Value>) -> Result<u64, EventError> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        let n = sqlx::query(INSERT_DELIVERIES).bind(Value::Array(deliveries).to_string()).bind(now_ms()).execute(self.raw()).await?.rows_affected();
        self.wakes = true;
        Ok(n)
    }

    async fn backfill(&mut self, subscription: &str, since: OffsetDateTime) -> Result<u64, EventError> {
        let sub = sqlx::query("SELECT patterns, filter, ordered FROM subscriptions WHERE name = $1")
            .bind(subscription)
            .fetch_optional(self.conn().await?)
            .await?;
        let Some(sub) = sub else {
            return Err(EventError::NotFound(format!("subscription {subscription}")));
        };
        let patterns: Vec<String> = serde_json::from_str(sub.get("patterns"))?;
        let filter: BTreeMap<String, Value> = serde_json::from_str(sub.get("filter"))?;
        let ordered: bool = sub.get("ordered");
        let mut after = 0i64;
        let mut total = 0;
        loop {
            let rows = sqlx::query(
                "SELECT seq, event_id, event_type, event_version, correlation_id, causation_id, created_at, source, subject, tenant, traceparent, payload
                 FROM events WHERE created_at >= $1 AND seq > $2 ORDER BY seq LIMIT 1000",
            )
            .bind(to_micros(since))
            .bind(after)
            .fetch_all(self.conn().await?)
            .await?;
            let Some(last) = rows.last() else { break };
            after = last.get("seq");
            let mut deliveries = Vec::new();
            for r in &rows {
                let ev = envelope_from_row(r)?;
                if matches(&patterns, &filter, &ev) {
                    deliveries.push(json!([subscription, ev.event_id.to_string(), ordered.then_some(&ev.subject)]));
                }
            }
            total += self.insert_deliveries(deliveries).await?;
            if !self.woken.iter().any(|w| w == subscription) {
                self.woken.push(subscription.to_owned());
            }
        }
        Ok(total)
    }

    /// Schedules `event` to be published at `at` under the timer id `timer_id` (replacing a
    /// timer of the same id). The event is validated now and keeps its `event_id`.
    ///
    /// # Errors
    /// Catalog and database failures.
    pub async fn schedule(&mut self, timer_id: &str, at: OffsetDateTime, event: &Envelope) -> Result<(), EventError> {
        self.bus.inner.catalog.validate(&event.event_type, event.event_version, &event.payload)?;
        self.batch.ops.push(Op::Stmt(
            "INSERT INTO timers (id, fire_at, event) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET fire_at = excluded.fire_at, event = excluded.event",
            vec![Arg::Text(timer_id.to_owned()), Arg::Int((at.unix_timestamp_nanos() / 1_000_000) as i64), Arg::Text(serde_json::to_string(event)?)],
        ));
        self.timers = true;
        Ok(())
    }

    /// Cancels a timer. Returns `false` when there was none — it never existed or has already
    /// fired, in which case its event is (or will be, once this commits) in the log.
    ///
    /// # Errors
    /// Database failures.
    pub async fn cancel_timer(&mut self, timer_id: &str) -> Result<bool, EventError> {
        self.batch.ops.push(Op::Stmt("DELETE FROM timers WHERE id = $1 RETURNING 1 AS cancelled", vec![Arg::Text(timer_id.to_owned())]));
        let rows = self.flush().await?;
        Ok(rows.iter().any(|r| r.try_get::<i64, _>("cancelled").is_ok()))
    }

    /// Commits, then wakes the workers if events were written.
    ///
    /// # Errors
    /// Database failures (nothing was committed).
    pub async fn commit(self) -> Result<(), EventError> {
        self.commit_returning().await.map(drop)
    }

    /// Commits; returns the rows the last batch's statements returned.
    pub(crate) async fn commit_returning(mut self) -> Result<Vec<sqlx::sqlite::SqliteRow>, EventError> {
        // The queued writes and COMMIT in one round trip.
        let rows = self.send(true).await?;
        if let Some(w) = self.writer.take() {
            w.release();
        }
        if self.wakes {
            self.bus.wake();
        }
        if !self.woken.is_empty() {
            self.bus.wake_subscriptions(Some(&self.woken));
        }
        if self.timers {
            self.bus.inner.timer_wake.notify_one();
        }
        Ok(rows)
    }

    /// Rolls back: nothing written through this transaction, events included, remains.
    ///
    /// # Errors
    /// Database failures.
    pub async fn rollback(mut self) -> Result<(), EventError> {
        match self.writer.take() {
            Some(w) if self.begun => w.rollback().await,
            Some(w) => {
                w.release();
                Ok(())
            }
            None => Ok(()),
        }
    }
}
