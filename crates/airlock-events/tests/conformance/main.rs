//! The bus conformance suite: every guarantee of the substrate, written once against the
//! [`Bus`] API. Every backend must pass it; `backend()` picks one (`AIRLOCK_TEST_BUS`, default
//! `embedded` on SQLite — the only backend so far).

mod kill;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use airlock_events::{
    Bus, BusOptions, CancellationToken, Catalog, Envelope, EventContext, EventError, Handler, HandlerCtx, HandlerError, RetryPolicy, SubscriptionSpec,
};
use serde_json::json;
use sqlx::Row;

pub static TEST_CATALOG: LazyLock<Catalog> =
    LazyLock::new(|| Catalog::from_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/catalog")).expect("test catalog"));

/// A fresh bus on a fresh database of the selected backend.
pub struct Backend {
    pub bus: Bus,
    pub url: String,
    _dir: tempfile::TempDir,
}

pub async fn backend_at(dir: &std::path::Path, options: BusOptions) -> (Bus, String) {
    match std::env::var("AIRLOCK_TEST_BUS").as_deref().unwrap_or("embedded") {
        "embedded" => {
            let url = format!("sqlite://{}", dir.join("bus.db").display());
            let pool = airlock_events::db::open_sqlite(&url).await.expect("open");
            airlock_events::db::migrate(&pool).await.expect("migrate");
            sqlx::query("CREATE TABLE IF NOT EXISTS effects (subscription TEXT NOT NULL, event_id TEXT NOT NULL, n INTEGER)")
                .execute(&pool)
                .await
                .expect("effects");
            (Bus::with_catalog(pool, options, &TEST_CATALOG), url)
        }
        other => panic!("unknown AIRLOCK_TEST_BUS backend {other}"),
    }
}

pub async fn backend() -> Backend {
    backend_with(BusOptions { poll_interval: Duration::from_millis(200), claim_batch: 64 }).await
}

pub async fn backend_with(options: BusOptions) -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bus, url) = backend_at(dir.path(), options).await;
    Backend { bus, url, _dir: dir }
}

pub fn event(n: i64, subject: &str) -> Envelope {
    EventContext::root("t1", format!("corr-{n}"), None).event("test.happened", 1, subject, json!({"n": n}))
}

/// Records each delivery as an effect row in the handler's transaction; fails on command.
pub struct Recorder {
    /// Fail these event numbers this many times before succeeding (`u32::MAX`: always).
    pub fail: Mutex<HashMap<i64, u32>>,
    pub calls: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub delay: Duration,
    pub retry_after: Option<Duration>,
    pub order: Mutex<Vec<(String, i64)>>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::with_delay(Duration::ZERO))
    }

    pub fn with_delay(delay: Duration) -> Recorder {
        Recorder {
            fail: Mutex::new(HashMap::new()),
            calls: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            delay,
            retry_after: None,
            order: Mutex::new(Vec::new()),
        }
    }
}

impl Handler for Recorder {
    fn handle<'a>(&'a self, event: &'a Envelope, cx: &'a mut HandlerCtx) -> airlock_events::BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let n = event.payload["n"].as_i64().unwrap_or(-1);
            let sub = cx.subscription.to_string();
            // The effect is written first, so a failure below proves it is rolled back.
            sqlx::query("INSERT INTO effects (subscription, event_id, n) VALUES ($1, $2, $3)")
                .bind(&sub)
                .bind(event.event_id.to_string())
                .bind(n)
                .execute(cx.tx().await?.conn().await?)
                .await?;
            {
                let mut fail = self.fail.lock().expect("lock");
                if let Some(left) = fail.get_mut(&n)
                    && *left > 0
                {
                    *left = left.saturating_sub(1);
                    return Err(match self.retry_after {
                        Some(d) => HandlerError::retry_after(format!("told to fail {n}"), d),
                        None => HandlerError::retryable(format!("told to fail {n}")),
                    });
                }
            }
            self.order.lock().expect("lock").push((event.subject.clone(), n));
            Ok(())
        })
    }
}

pub async fn effects(bus: &Bus, sub: &str) -> Vec<(String, i64)> {
    sqlx::query("SELECT event_id, n FROM effects WHERE subscription = $1 ORDER BY rowid")
        .bind(sub)
        .fetch_all(bus.pool())
        .await
        .expect("effects")
        .iter()
        .map(|r| (r.get("event_id"), r.get("n")))
        .collect()
}

/// Waits until no delivery is pending or leased (never sleeps a fixed time).
pub async fn until_idle(bus: &Bus, max: Duration) {
    let start = Instant::now();
    loop {
        if bus.unfinished().await.expect("count") == 0 {
            return;
        }
        assert!(start.elapsed() < max, "bus not idle after {max:?}: {} unfinished", bus.unfinished().await.unwrap_or(-1));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn until<F: AsyncFn() -> bool>(what: &str, max: Duration, f: F) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < max, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn spec(name: &str, patterns: &[&str]) -> SubscriptionSpec {
    let mut s = SubscriptionSpec::new(name, patterns);
    s.retry = RetryPolicy { max_attempts: 3, base: Duration::from_millis(20), cap: Duration::from_millis(100) };
    s
}

#[tokio::test]
async fn a_rolled_back_transaction_publishes_nothing_and_a_commit_delivers() {
    let b = backend().await;
    let stop = CancellationToken::new();
    let rec = Recorder::new();
    b.bus.spawn_consumer(spec("s", &["test.*"]), rec.clone(), stop.clone()).await.expect("consumer");

    let mut tx = b.bus.begin().await.expect("begin");
    tx.publish(event(1, "a")).await.expect("publish");
    tx.rollback().await.expect("rollback");
    let mut tx = b.bus.begin().await.expect("begin");
    tx.publish(event(2, "a")).await.expect("publish");
    drop(tx); // dropped without commit = rolled back
    let committed = event(3, "a");
    let mut tx = b.bus.begin().await.expect("begin");
    tx.publish(committed.clone()).await.expect("publish");
    tx.commit().await.expect("commit");

    until_idle(&b.bus, Duration::from_secs(10)).await;
    let got = effects(&b.bus, "s").await;
    assert_eq!(got, vec![(committed.event_id.to_string(), 3)]);
    let log = b.bus.events(&airlock_events::EventQuery { limit: 100, ..Default::default() }).await.expect("log");
    assert_eq!(log.len(), 1, "rolled-back events never reach the log");
    stop.cancel();
}

#[tokio::test]
async fn every_committed_event_reaches_every_matching_subscription_exactly_once() {
    let b = backend().await;
    let stop = CancellationToken::new();
    let all = Recorder::new();
    let evens = Recorder::new();
    let none = Recorder::new();
    b.bus.spawn_consumer(spec("all", &["*"]), all.clone(), stop.clone()).await.expect("c");
    let mut even_spec = spec("evens", &["test.happened.v1"]);
    even_spec.filter.insert("group".into(), json!("even"));
    b.bus.spawn_consumer(even_spec, evens.clone(), stop.clone()).await.expect("c");
    b.bus.spawn_consumer(spec("none", &["other.*"]), none.clone(), stop.clone()).await.expect("c");

    let mut published = Vec::new();
    for batch in 0..50 {
        let mut tx = b.bus.begin().await.expect("begin");
        let events: Vec<Envelope> = (0..40)
            .map(|i| {
                let n = batch * 40 + i;
                let mut e = event(n, &format!("k{}", n % 7));
                e.payload["group"] = json!(if n % 2 == 0 { "even" } else { "odd" });
                e
            })
            .collect();
        tx.publish_all(&events).await.expect("publish");
        tx.commit().await.expect("commit");
        published.extend(events);
    }
    until_idle(&b.bus, Duration::from_secs(60)).await;
    let mut got: Vec<i64> = effects(&b.bus, "all").await.into_iter().map(|e| e.1).collect();
    got.sort_unstable();
    assert_eq!(got, (0..2000).collect::<Vec<_>>());
    let mut got: Vec<i64> = effects(&b.bus, "evens").await.into_iter().map(|e| e.1).collect();
    got.sort_unstable();
    assert_eq!(got, (0..2000).filter(|n| n % 2 == 0).collect::<Vec<_>>());
    assert!(effects(&b.bus, "none").await.is_empty());
    assert_eq!(all.calls.load(Ordering::SeqCst), 2000, "no handler ran twice");
    stop.cancel();
}

#[tokio::test]
async fn unknown_types_and_invalid_payloads_are_refused_before_anything_is_written() {
    let b = backend().await;
    let mut tx = b.bus.begin().await.expect("begin");
    let bad = EventContext::root("t", "c", None).event("test.happened", 1, "s", json!({"n": "three"}));
    let err = tx.publish(bad).await.expect_err("invalid");
    assert!(matches!(err, EventError::InvalidPayload { .. }));
    let msg = err.to_string();
    assert!(msg.contains("`/n`") && msg.contains("test.happened.v1") && msg.contains("happened.v1.json"), "{msg}");
    let unknown = EventContext::root("t", "c", None).event("test.unheard", 1, "s", json!({}));
    assert!(matches!(tx.publish(unknown).await, Err(EventError::UnknownType(_))));
    let v2 = EventContext::root("t", "c", None).event("test.happened", 2, "s", json!({"n": 1}));
    assert!(matches!(tx.publish(v2).await, Err(EventError::UnknownType(_))));
}

#[tokio::test]
async fn a_failed_handler_is_retried_with_backoff_and_its_effects_rolled_back() {
    let b = backend().await;
    let stop = CancellationToken::new();
    let rec = Recorder::new();
    rec.fail.lock().expect("lock").insert(1, 2);
    b.bus.spawn_consumer(spec("s", &["test.*"]), rec.clone(), stop.clone()).await.expect("c");
    let ev = event(1, "a");
    b.bus.publish(std::slice::from_ref(&ev)).await.expect("publish");
    until_idle(&b.bus, Duration::from_secs(10)).await;
    assert_eq!(rec.calls.load(Ordering::SeqCst), 3, "two failures, then success");
    assert_eq!(effects(&b.bus, "s").await.len(), 1, "failed attempts left no effect");
    let d = b.bus.deliveries_of(&[ev.event_id]).await.expect("deliveries");
    assert_eq!((d[0].state.as_str(), d[0].attempts), ("done", 3));
    stop.cancel();
}

#[tokio::test]
async fn exhausted_deliveries_become_dead_letters_that_can_be_redriven_or_discarded() {
    let b = backend().await;
    let stop = CancellationToken::new();
    let rec = Recorder::new();
    rec.fail.lock().expect("lock").extend([(1, u32::MAX), (2, u32::MAX)]);
    b.bus.spawn_consumer(spec("s", &["test.*"]), rec.clone(), stop.clone()).await.expect("c");
    let (e1, e2) = (event(1, "a"), event(2, "b"));
    b.bus.publish(&[e1.clone(), e2.clone()]).await.expect("publish");
    until_idle(&b.bus, Duration::from_secs(10)).await;
    let dead = b.bus.dead_letters(Some("s"), 10).await.expect("dlq");
    assert_eq!(dead.len(), 2);
    for d in &dead {
        assert_eq!(d.attempts, 3, "max_attempts");
        assert!(d.last_error.as_deref().unwrap_or_default().starts_with("told to fail"), "{:?}", d.last_error);
    }
    assert!(effects(&b.bus, "s").await.is_empty());

    // Redrive one after fixing the cause: it is delivered, same event id.
    rec.fail.lock().expect("lock").clear();
    let d1 = dead.iter().find(|d| d.event_id == e1.event_id).expect("e1 dead");
    assert!(b.bus.redrive(d1.id).await.expect("redrive"));
    until_idle(&b.bus, Duration::from_secs(10)).await;
    assert_eq!(effects(&b.bus, "s").await, vec![(e1.event_id.to_string(), 1)]);

    let d2 = dead.iter().find(|d| d.event_id == e2.event_id).expect("e2 dead");
    assert!(b.bus.discard(d2.id).await.expect("discard"));
    assert!(b.bus.dead_letters(Some("s"), 10).await.expect("dlq").is_empty());
    assert!(!b.bus.redrive(d2.id).await.expect("redrive"), "a discarded letter cannot be redriven");
    stop.cancel();
}

#[tokio::test]
async fn a_duplicate_delivery_is_acknowledged_without_applying_effects_again() {
    let b = backend().await;
    let stop = CancellationToken::new();
    let rec = Recorder::new();
    b.bus.spawn_consumer(spec("s", &["test.*"]), rec.clone(), stop.clone()).await.expect("c");
    let ev = event(1, "a");
    b.bus.publish(std::slice::from_ref(&ev)).await.expect("publish");
    until_idle(&b.bus, Duration::from_secs(10)).await;
    // Simulate the transport delivering it again (as after a lost acknowledgement).
    sqlx::query("UPDATE deliveries SET state = 'pending' WHERE event_id = $1")
        .bind(ev.event_id.to_string())
        .execute(b.bus.pool())
        .await
        .expect("reset");
    b.bus.redrive_all(None).await.expect("wake");
    until_idle(&b.bus, Duration::from_secs(10)).await;
    assert_eq!(effects(&b.bus, "s").await.len(), 1);
    assert_eq!(rec.calls.load(Ordering::SeqCst), 1, "the handler did not run for the duplicate");
    stop.cancel();
}

#[tokio::test]
async fn a_delivery_held_by_a_crashed_worker_is_redelivered_after_its_lease() {
    let b = backend().await;
    let ev = event(1, "a");
    let mut s = spec("s", &["test.*"]);
    s.lease = Duration::from_millis(300);
    b.bus.register(&s).await.expect("register");
    b.bus.publish(std::slice::from_ref(&ev)).await.expect("publish");
    // A worker claims it, then dies without finishing.
    let n = sqlx::query("UPDATE deliveries SET state = 'leased', attempts = 1, lease_until = $1")
        .bind((time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64 + 300)
        .execute(b.bus.pool())
        .await
        .expect("claim")
        .rows_affected();
    assert_eq!(n, 1);
    let stop = CancellationToken::new();
    let rec = Recorder::new();
    b.bus.spawn_consumer(s, rec.clone(), stop.clone()).await.expect("c");
    until_idle(&b.bus, Duration::from_secs(10)).await;
    assert_eq!(effects(&b.bus, "s").await.len(), 1);
    let d = b.bus.deliveries_of(&[ev.event_id]).await.expect("d");
    assert_eq!(d[0].attempts, 2, "the crashed attempt counts");
    stop.cancel();
}

#[tokio::test]
async fn ordered_subscriptions_hold_back_a_key_while_its_event_waits_for_a_retry() {
    let b = backend().await;
    let stop = CancellationToken::new();
    let rec = Recorder::new();
    rec.fail.lock().expect("lock").insert(0, 2); // the first event of key "a" fails twice
    let mut s = spec("s", &["test.*"]);
    s.ordered = true;
    s.concurrency = 8;
    s.retry.base = Duration::from_millis(100);
    b.bus.spawn_consumer(s, rec.clone(), stop.clone()).await.expect("c");
    let events: Vec<Envelope> = (0..60)
        .map(|n| {
            event(
                n,
                if n % 3 == 0 {
                    "a"
                } else if n % 3 == 1 {
                    "b"
                } else {
                    "c"
                },
            )
        })
        .collect();
    b.bus.publish(&events).await.expect("publish");
    until_idle(&b.bus, Duration::from_secs(20)).await;
    let order = rec.order.lock().expect("lock").clone();
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (k, n) in order {
        per_key.entry(k).or_default().push(n);
    }
    for (k, ns) in &per_key {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, &sorted, "key {k} out of order");
        assert_eq!(ns.len(), 20);
    }
    stop.cancel();
}

#[tokio::test]
async fn concurrency_per_subscription_is_bounded() {
    let b = backend().await;
    let stop = CancellationToken::new();
    let rec = Arc::new(Recorder::with_delay(Duration::from_millis(20)));
    let mut s = spec("s", &["test.*"]);
    s.concurrency = 3;
    b.bus.spawn_consumer(s, rec.clone(), stop.clone()).await.expect("c");
    b.bus.publish(&(0..30).map(|n| event(n, &format!("k{n}"))).collect::<Vec<_>>()).await.expect("publish");
    until_idle(&b.bus, Duration::from_secs(20)).await;
    let max = rec.max_in_flight.load(Ordering::SeqCst);
    assert!((2..=3).contains(&max), "max in flight {max}");
    stop.cancel();
}

#[tokio::test]
async fn a_new_subscription_can_backfill_and_an_existing_one_can_replay_since_a_time() {
    let b = backend().await;
    let before = event(1, "a");
    b.bus.publish(std::slice::from_ref(&before)).await.expect("publish");
    let cut = airlock_events::envelope::now_utc();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let after = event(2, "a");
    b.bus.publish(std::slice::from_ref(&after)).await.expect("publish");

    let stop = CancellationToken::new();
    let mut late = spec("late", &["test.*"]);
    late.start_from = Some(cut);
    b.bus.spawn_consumer(late, Recorder::new(), stop.clone()).await.expect("c");
    let fresh = spec("fresh", &["test.*"]);
    b.bus.spawn_consumer(fresh, Recorder::new(), stop.clone()).await.expect("c");
    until_idle(&b.bus, Duration::from_secs(10)).await;
    assert_eq!(effects(&b.bus, "late").await, vec![(after.event_id.to_string(), 2)], "backfilled from the cut");
    assert!(effects(&b.bus, "fresh").await.is_empty(), "a subscription without start_from begins now");

    let replayed = b.bus.replay("fresh", time::OffsetDateTime::UNIX_EPOCH).await.expect("replay");
    assert_eq!(replayed, 2);
    until_idle(&b.bus, Duration::from_secs(10)).await;
    assert_eq!(effects(&b.bus, "fresh").await.len(), 2);
    assert_eq!(b.bus.replay("fresh", time::OffsetDateTime::UNIX_EPOCH).await.expect("replay"), 0, "already delivered");
    assert!(matches!(b.bus.replay("nope", cut).await, Err(EventError::NotFound(_))));
    stop.cancel();
}

#[tokio::test]
async fn workers_wake_on_commit_without_waiting_for_the_poll() {
    let b = backend_with(BusOptions { poll_interval: Duration::from_secs(600), claim_batch: 64 }).await;
    let stop = CancellationToken::new();
    b.bus.spawn_consumer(spec("s", &["test.*"]), Recorder::new(), stop.clone()).await.expect("c");
    tokio::time::sleep(Duration::from_millis(50)).await; // let it go idle
    b.bus.publish(&[event(1, "a")]).await.expect("publish");
    let bus = b.bus.clone();
    until("delivery long before the 10-minute poll", Duration::from_secs(10), async || effects(&bus, "s").await.len() == 1).await;
    stop.cancel();
}

fn tick(n: i64) -> Envelope {
    EventContext::root("t1", "c", None).event("test.ticked", 1, "timer", json!({"n": n}))
}

#[tokio::test]
async fn timers_fire_once_unless_cancelled_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let (bus, _) = backend_at(dir.path(), BusOptions::default()).await;
    let soon = airlock_events::envelope::now_utc() + Duration::from_millis(300);
    let mut tx = bus.begin().await.expect("begin");
    for n in 0..3 {
        tx.schedule(&format!("t{n}"), soon, &tick(n)).await.expect("schedule");
    }
    tx.commit().await.expect("commit");
    let mut tx = bus.begin().await.expect("begin");
    assert!(tx.cancel_timer("t1").await.expect("cancel"));
    assert!(!tx.cancel_timer("t-unknown").await.expect("cancel"));
    tx.commit().await.expect("commit");
    bus.pool().close().await;
    drop(bus);

    // "Restart": a new process opens the same database and runs the timer loop (twice over).
    let (bus, _) = backend_at(dir.path(), BusOptions::default()).await;
    let (bus2, _) = backend_at(dir.path(), BusOptions::default()).await;
    let stop = CancellationToken::new();
    bus.spawn_timers(stop.clone());
    bus2.spawn_timers(stop.clone());
    let b = bus.clone();
    let count = async move || {
        b.events(&airlock_events::EventQuery { event_type: Some("test.ticked".into()), limit: 100, ..Default::default() }).await.expect("log").len()
    };
    until("timers to fire", Duration::from_secs(10), async || count().await == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fired =
        bus.events(&airlock_events::EventQuery { event_type: Some("test.ticked".into()), limit: 100, ..Default::default() }).await.expect("log");
    let mut ns: Vec<i64> = fired.iter().map(|e| e.envelope.payload["n"].as_i64().unwrap_or(-1)).collect();
    ns.sort_unstable();
    assert_eq!(ns, vec![0, 2], "t1 was cancelled; each other timer fired exactly once");
    let mut tx = bus.begin().await.expect("begin");
    assert!(!tx.cancel_timer("t0").await.expect("cancel"), "a fired timer cannot be cancelled");
    stop.cancel();
}

#[tokio::test]
async fn a_subscription_added_elsewhere_gets_the_next_events_of_a_publisher_with_a_warm_fan_out_list() {
    let b = backend().await;
    b.bus.register(&spec("first", &["test.*"])).await.expect("register");
    let one = event(1, "a");
    b.bus.publish(std::slice::from_ref(&one)).await.expect("publish"); // the fan-out list is now cached
    // Another process on the same database adds a subscription behind this bus's back.
    let pool = airlock_events::db::open_sqlite(&b.url).await.expect("open");
    let other = Bus::with_catalog(pool, BusOptions::default(), &TEST_CATALOG);
    other.register(&spec("second", &["test.*"])).await.expect("register elsewhere");

    let two = event(2, "a");
    b.bus.publish(std::slice::from_ref(&two)).await.expect("publish");
    let subs = |d: Vec<airlock_events::DeliveryState>| d.into_iter().map(|d| d.subscription).collect::<Vec<_>>();
    assert_eq!(subs(b.bus.deliveries_of(&[one.event_id]).await.expect("d")), ["first"]);
    assert_eq!(subs(b.bus.deliveries_of(&[two.event_id]).await.expect("d")), ["first", "second"], "the stale list was noticed and reloaded");

    // Statements run in the order they were made: a read through `conn` sees what this
    // transaction published before it.
    let three = event(3, "a");
    let mut tx = b.bus.begin().await.expect("begin");
    tx.publish(three.clone()).await.expect("publish");
    let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE event_id = $1")
        .bind(three.event_id.to_string())
        .fetch_one(tx.conn().await.expect("conn"))
        .await
        .expect("count");
    assert_eq!(seen, 2);
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn a_handler_that_loses_the_race_to_a_concurrent_redelivery_commits_none_of_its_effects() {
    let b = backend().await;
    let stop = CancellationToken::new();
    let rec = Arc::new(Recorder::with_delay(Duration::from_millis(300)));
    b.bus.spawn_consumer(spec("s", &["test.*"]), rec.clone(), stop.clone()).await.expect("c");
    let ev = event(1, "a");
    b.bus.publish(std::slice::from_ref(&ev)).await.expect("publish");
    until("the handler to start", Duration::from_secs(10), async || rec.calls.load(Ordering::SeqCst) == 1).await;
    // Another worker (after a lease expiry) finishes the same event first.
    sqlx::query("INSERT INTO processed (subscription, event_id, processed_at) VALUES ('s', $1, 0)")
        .bind(ev.event_id.to_string())
        .execute(b.bus.pool())
        .await
        .expect("processed elsewhere");
    until_idle(&b.bus, Duration::from_secs(10)).await;
    assert!(effects(&b.bus, "s").await.is_empty(), "the loser's effects were rolled back");
    let d = b.bus.deliveries_of(&[ev.event_id]).await.expect("d");
    assert_eq!((d[0].state.as_str(), d[0].attempts), ("done", 1), "done, not retried nor dead");
    // The write connection is usable after that rollback.
    b.bus.publish(&[event(2, "a")]).await.expect("publish after");
    until_idle(&b.bus, Duration::from_secs(10)).await;
    assert_eq!(effects(&b.bus, "s").await.len(), 1);
    stop.cancel();
}
