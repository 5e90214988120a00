//! Throughput and latency of the embedded bus on SQLite (a benchmark, not a test).
//!
//! `cargo bench -p airlock-events --bench bus` prints:
//! - publish-through-outbox events/s (batches of 100, one subscription so deliveries fan out),
//! - end-to-end delivery events/s to one subscription (idempotent completion per event),
//! - delivery latency p50/p99 (commit to handler start) at a fixed 1,000 events/s.
//!
//! `BENCH_SCALE` (default 1.0) scales the event counts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_events::{Bus, BusOptions, CancellationToken, Envelope, EventContext, Handler, HandlerCtx, HandlerError, SubscriptionSpec};
use serde_json::json;

struct Noop {
    latencies: Mutex<Vec<Duration>>,
}

impl Handler for Noop {
    fn handle<'a>(&'a self, event: &'a Envelope, _cx: &'a mut HandlerCtx) -> airlock_events::BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let lat = time::OffsetDateTime::now_utc() - event.created_at;
            if let Ok(mut l) = self.latencies.lock() {
                l.push(lat.try_into().unwrap_or_default());
            }
            Ok(())
        })
    }
}

fn event(n: usize) -> Envelope {
    EventContext::root("bench", format!("c{n}"), None).event(
        "processing.job.created",
        1,
        uuid::Uuid::now_v7().to_string(),
        json!({"file_id": uuid::Uuid::now_v7().to_string(), "job": format!("job-{n}")}),
    )
}

async fn fresh_bus(dir: &std::path::Path, name: &str) -> Bus {
    Bus::open(
        &format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
        BusOptions { poll_interval: Duration::from_millis(200), claim_batch: 128 },
    )
    .await
    .expect("bus")
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let scale: f64 = std::env::var("BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let dir = tempfile::tempdir().expect("dir");

    // 1. Publish through the outbox, batches of 100.
    let bus = fresh_bus(dir.path(), "publish").await;
    bus.register(&SubscriptionSpec::new("one", &["processing.*"])).await.expect("register");
    let n = (50_000.0 * scale) as usize;
    let events: Vec<Envelope> = (0..n).map(event).collect();
    let start = Instant::now();
    for chunk in events.chunks(100) {
        let mut tx = bus.begin().await.expect("begin");
        tx.publish_all(chunk).await.expect("publish");
        tx.commit().await.expect("commit");
    }
    let publish_rate = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "publish (outbox, batches of 100, 1 subscription): {n} events in {:.2?} = {publish_rate:.0} events/s (target >= 20000)",
        start.elapsed()
    );

    // 2. End-to-end delivery of a backlog to one subscription.
    let stop = CancellationToken::new();
    let handler = Arc::new(Noop { latencies: Mutex::new(Vec::new()) });
    let mut spec = SubscriptionSpec::new("one", &["processing.*"]);
    spec.concurrency = 16;
    let start = Instant::now();
    bus.spawn_consumer(spec.clone(), handler.clone(), stop.clone()).await.expect("consumer");
    while bus.unfinished().await.expect("count") > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deliver_rate = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "deliver (end to end, 1 subscription, concurrency 16): {n} events in {:.2?} = {deliver_rate:.0} events/s (target >= 5000)",
        start.elapsed()
    );
    stop.cancel();

    // 3. Latency at a fixed rate of 1,000 events/s, one event per transaction.
    let bus = fresh_bus(dir.path(), "latency").await;
    let stop = CancellationToken::new();
    let handler = Arc::new(Noop { latencies: Mutex::new(Vec::new()) });
    bus.spawn_consumer(spec, handler.clone(), stop.clone()).await.expect("consumer");
    let total = (5_000.0 * scale) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Open loop: one publisher task per tick, as independent requests would publish, so the
    // offered rate does not depend on how long each commit takes.
    let mut publishers = tokio::task::JoinSet::new();
    let start = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let bus = bus.clone();
        publishers.spawn(async move {
            let mut tx = bus.begin().await.expect("begin");
            tx.publish(event(i)).await.expect("publish");
            tx.commit().await.expect("commit");
        });
    }
    while publishers.join_next().await.is_some() {}
    let offered = total as f64 / start.elapsed().as_secs_f64();
    while bus.unfinished().await.expect("count") > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    let mut lat = handler.latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort();
    println!(
        "latency at {offered:.0} events/s (commit to handler): p50 {:.2?}, p99 {:.2?}, max {:.2?} over {} events (target p99 < 20ms)",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or_default(),
        lat.len()
    );
}
