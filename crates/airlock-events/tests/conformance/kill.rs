//! The kill test: a child process publishes and consumes thousands of events (with rolled-back
//! transactions, flaky handlers, timers and an ordered subscription) while this test SIGKILLs
//! it at random moments, several times, then lets a last child finish. Afterwards every
//! committed event was handled exactly once by every matching subscription, nothing rolled
//! back was ever delivered, every timer fired exactly once, and ordered keys stayed in order.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock_events::{BusOptions, CancellationToken, Envelope, EventContext, Handler, HandlerCtx, HandlerError, RetryPolicy, SubscriptionSpec};
use serde_json::json;
use sqlx::Row;

use super::backend_at;

const TARGET: i64 = 5000;

/// Inserts an effect row, then fails one time in ten (the effect must be rolled back).
struct Flaky;

impl Handler for Flaky {
    fn handle<'a>(&'a self, event: &'a Envelope, cx: &'a mut HandlerCtx) -> airlock_events::BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let sub = cx.subscription.to_string();
            sqlx::query("INSERT INTO effects (subscription, event_id, n) VALUES ($1, $2, $3)")
                .bind(sub)
                .bind(event.event_id.to_string())
                .bind(event.payload["n"].as_i64())
                .execute(cx.tx().await?.conn().await?)
                .await?;
            if fastrand::u8(0..10) == 0 {
                return Err(HandlerError::retryable("flaky"));
            }
            Ok(())
        })
    }
}

fn spec(name: &str, patterns: &[&str]) -> SubscriptionSpec {
    let mut s = SubscriptionSpec::new(name, patterns);
    s.retry = RetryPolicy { max_attempts: 1000, base: Duration::from_millis(5), cap: Duration::from_millis(50) };
    s.lease = Duration::from_millis(600);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the kill test's child process; started by kill_test_loses_nothing_and_applies_nothing_twice"]
async fn child_process() {
    let Ok(dir) = std::env::var("KILLTEST_DIR") else {
        return;
    };
    let finish = std::env::var("KILLTEST_FINISH").is_ok();
    let (bus, _) = backend_at(std::path::Path::new(&dir), BusOptions { poll_interval: Duration::from_millis(100), claim_batch: 32 }).await;
    let stop = CancellationToken::new();
    bus.spawn_timers(stop.clone());
    bus.spawn_consumer(spec("all", &["test.*"]), std::sync::Arc::new(Flaky), stop.clone()).await.expect("all");
    let mut evens = spec("evens", &["test.happened"]);
    evens.filter.insert("group".into(), json!("even"));
    bus.spawn_consumer(evens, std::sync::Arc::new(Flaky), stop.clone()).await.expect("evens");
    let mut ordered = spec("ordered", &["test.happened"]);
    ordered.ordered = true;
    ordered.concurrency = 8;
    bus.spawn_consumer(ordered, std::sync::Arc::new(Flaky), stop.clone()).await.expect("ordered");

    loop {
        let mut tx = bus.begin().await.expect("begin");
        let committed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE event_type = 'test.happened'")
            .fetch_one(tx.conn().await.expect("conn"))
            .await
            .expect("count");
        if committed >= TARGET {
            break;
        }
        let doomed = fastrand::u8(0..5) == 0;
        let size = fastrand::i64(1..=20).min(TARGET - committed);
        let events: Vec<Envelope> = (committed..committed + size)
            .map(|n| {
                EventContext::root("t", format!("c{n}"), None).event(
                    "test.happened",
                    1,
                    format!("k{}", n % 10),
                    json!({"n": n, "batch": committed, "group": if n % 2 == 0 { "even" } else { "odd" }, "doomed": doomed}),
                )
            })
            .collect();
        tx.publish_all(&events).await.expect("publish");
        let at = airlock_events::envelope::now_utc() + Duration::from_millis(fastrand::u64(0..400));
        let timer = EventContext::root("t", "timers", None).event("test.ticked", 1, "timers", json!({"n": committed, "doomed": doomed}));
        tx.schedule(&format!("tick-{committed}"), at, &timer).await.expect("schedule");
        if doomed {
            tx.rollback().await.expect("rollback");
        } else {
            tx.commit().await.expect("commit");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if !finish {
        std::future::pending::<()>().await;
    }
    loop {
        let timers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM timers").fetch_one(bus.pool()).await.expect("timers");
        if timers == 0 && bus.unfinished().await.expect("unfinished") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_test_loses_nothing_and_applies_nothing_twice() {
    let dir = tempfile::tempdir().expect("dir");
    let exe = std::env::current_exe().expect("exe");
    let spawn = |finish: bool| {
        let mut cmd = Command::new(&exe);
        cmd.args(["--exact", "kill::child_process", "--include-ignored", "--nocapture"])
            .env("KILLTEST_DIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if finish {
            cmd.env("KILLTEST_FINISH", "1");
        }
        cmd.spawn().expect("spawn child")
    };
    let mut kills = 0;
    for _ in 0..6 {
        let mut child = spawn(false);
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1500))).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kills += 1;
    }
    let mut last = spawn(true);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = last.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(240) {
            let _ = last.kill();
            panic!("the finishing child did not finish");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "finishing child failed: {status}");

    let (bus, _) = backend_at(dir.path(), BusOptions::default()).await;
    let pool = bus.pool();
    let committed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE event_type = 'test.happened'").fetch_one(pool).await.expect("q");
    assert_eq!(committed, TARGET, "every committed event is in the log");
    let doomed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE json_extract(payload, '$.doomed') = 1").fetch_one(pool).await.expect("q");
    assert_eq!(doomed, 0, "nothing rolled back was published");
    let doomed_effects: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM effects f JOIN events e ON e.event_id = f.event_id WHERE json_extract(e.payload, '$.doomed') = 1")
            .fetch_one(pool)
            .await
            .expect("q");
    assert_eq!(doomed_effects, 0);

    for (sub, condition) in [
        ("all", "e.event_type IN ('test.happened', 'test.ticked')"),
        ("evens", "e.event_type = 'test.happened' AND json_extract(e.payload, '$.group') = 'even'"),
        ("ordered", "e.event_type = 'test.happened'"),
    ] {
        let sql = format!(
            "SELECT COUNT(*) AS expected, SUM(CASE WHEN (SELECT COUNT(*) FROM effects f WHERE f.subscription = '{sub}' AND f.event_id = e.event_id) = 1 THEN 1 ELSE 0 END) AS once
             FROM events e WHERE {condition}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.expect("q");
        let (expected, once): (i64, i64) = (row.get("expected"), row.get("once"));
        assert!(expected > 0);
        assert_eq!(once, expected, "{sub}: every matching committed event handled exactly once");
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM effects WHERE subscription = $1").bind(sub).fetch_one(pool).await.expect("q");
        assert_eq!(total, expected, "{sub}: no effect applied twice or for a foreign event");
    }

    let batches: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT json_extract(payload, '$.batch')) FROM events WHERE event_type = 'test.happened'")
        .fetch_one(pool)
        .await
        .expect("q");
    let ticks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE event_type = 'test.ticked'").fetch_one(pool).await.expect("q");
    let distinct: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT json_extract(payload, '$.n')) FROM events WHERE event_type = 'test.ticked'")
        .fetch_one(pool)
        .await
        .expect("q");
    assert_eq!((ticks, distinct), (batches, batches), "each committed batch's timer fired exactly once");

    let rows = sqlx::query(
        "SELECT e.subject, f.n FROM effects f JOIN events e ON e.event_id = f.event_id WHERE f.subscription = 'ordered' ORDER BY f.rowid",
    )
    .fetch_all(pool)
    .await
    .expect("q");
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for r in rows {
        let (subject, n): (String, i64) = (r.get("subject"), r.get("n"));
        if let Some(prev) = last.insert(subject.clone(), n) {
            assert!(n > prev, "ordered subscription: {subject} handled {n} after {prev}");
        }
    }
    eprintln!("kill test: {kills} SIGKILLs, {committed} events, {batches} batches verified");
}
