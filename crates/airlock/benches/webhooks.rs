//! Webhook fan-out: deliveries/s to 10 local receivers and the delay from commit to delivery
//! (a benchmark, not a test). `cargo bench -p airlock --bench webhooks`.
//!
//! Runs the real application in-process (SQLite in a temp dir, the webhook workers), subscribes
//! 10 HTTP receivers (real axum servers on 127.0.0.1) to `file.promoted.v1` through the API
//! code, publishes `BENCH_EVENTS` events (default 2000) in batches, and waits until every
//! receiver has every event. Each receiver records `now - time` of the CloudEvent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock::config::Settings;
use airlock_events::{CancellationToken, EventContext};
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let events: usize = std::env::var("BENCH_EVENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let receivers = 10;
    let dir = tempfile::tempdir()?;
    let mut env = std::collections::BTreeMap::new();
    env.insert("AIRLOCK_DATA_DIR".to_owned(), dir.path().display().to_string());
    let settings = Settings::from_parts(None, None, &env)?;
    let app = airlock::app::open(settings).await?;

    let delays: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut urls = Vec::new();
    for _ in 0..receivers {
        let delays = delays.clone();
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let delays = delays.clone();
                async move {
                    if let Ok(ce) = serde_json::from_slice::<serde_json::Value>(&body)
                        && let Some(t) = ce["time"].as_str()
                        && let Ok(t) = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        && let Ok(mut d) = delays.lock()
                    {
                        d.push((time::OffsetDateTime::now_utc() - t).try_into().unwrap_or_default());
                    }
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        urls.push(format!("http://{}/hook", listener.local_addr()?));
        tokio::spawn(async move { axum::serve(listener, router).await });
    }
    for (i, url) in urls.iter().enumerate() {
        let w = airlock::webhooks::Webhook {
            id: uuid::Uuid::now_v7().to_string(),
            tenant: "bench".into(),
            name: format!("receiver-{i}"),
            url: url.clone(),
            event_types: vec!["file.promoted.v1".into()],
            filter: Default::default(),
            secrets: vec![airlock::webhooks::new_secret()?],
            timeout_ms: 10_000,
            created_at: 0,
            disabled_at: None,
            disabled_reason: None,
        };
        airlock::webhooks::insert(app.bus.pool(), &w).await?;
        app.bus.register(&airlock::webhooks::spec(&w, airlock::webhooks::retry_policy(None), None)).await?;
    }
    let shutdown = CancellationToken::new();
    let supervisor = airlock::webhooks::spawn_supervisor(app.clone(), shutdown.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await; // the supervisor starts the workers

    let ctx = EventContext::root("bench", "bench", None);
    let make = |i: usize| {
        let id = uuid::Uuid::now_v7();
        ctx.event(
            "file.promoted",
            1,
            id.to_string(),
            json!({"file_id": id, "user_id": null, "kind": "bench", "mime": "image/png", "bytes": i, "sha256": "0".repeat(64),
                   "path": "files/x", "scan": {"engine": "none", "result": "skipped", "signature": null}, "at": "2026-11-23T00:00:00Z"}),
        )
    };
    let wait_for = async |expected: usize| {
        let start = Instant::now();
        while delays.lock().map(|d| d.len()).unwrap_or(0) < expected && start.elapsed() < Duration::from_secs(600) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let report = |label: &str, elapsed: Duration| {
        let mut d = delays.lock().map(|mut d| std::mem::take(&mut *d)).unwrap_or_default();
        d.sort();
        let pct = |p: f64| d.get(((d.len().saturating_sub(1)) as f64 * p) as usize).copied().unwrap_or_default();
        println!(
            "{label}: {} deliveries in {elapsed:.2?} = {:.0} deliveries/s; commit->delivery p50 {:.1?}, p99 {:.1?}, max {:.1?}",
            d.len(),
            d.len() as f64 / elapsed.as_secs_f64(),
            pct(0.5),
            pct(0.99),
            d.last().copied().unwrap_or_default()
        );
    };

    // 1. Throughput: a backlog of `events` x 10 deliveries, published as fast as possible.
    let start = Instant::now();
    for chunk in (0..events).collect::<Vec<_>>().chunks(100) {
        let batch: Vec<_> = chunk.iter().map(|&i| make(i)).collect();
        let mut tx = app.bus.begin().await?;
        tx.publish_all(&batch).await?;
        tx.commit().await?;
    }
    wait_for(events * receivers).await;
    report(&format!("fan-out throughput ({events} events x {receivers} receivers, backlog)"), start.elapsed());

    // 2. Delay at a steady 50 events/s (500 deliveries/s), one event per transaction.
    let steady = 500;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for i in 0..steady {
        tick.tick().await;
        let mut tx = app.bus.begin().await?;
        tx.publish(make(i)).await?;
        tx.commit().await?;
    }
    wait_for(steady * receivers).await;
    report(&format!("steady 50 events/s x {receivers} receivers"), start.elapsed());
    shutdown.cancel();
    let _ = supervisor.await;
    Ok(())
}
