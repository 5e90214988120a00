//! The application: opens the database, the object store and the bus from [`Settings`], runs
//! the HTTP API and/or the pipeline's workers, and stops them gracefully.

use std::sync::Arc;
use std::time::Duration;

use airlock_events::{Bus, BusOptions, CancellationToken};
use tokio::net::TcpListener;

use crate::blobs::Blobs;
use crate::config::Settings;
use crate::signing::UrlSigner;

/// What every request handler and worker shares.
pub struct AppState {
    pub settings: Settings,
    pub bus: Bus,
    pub blobs: Blobs,
    pub signer: UrlSigner,
    /// The virus scanner, when `AIRLOCK_CLAMD` is set.
    pub scanner: Option<crate::scanner::Scanner>,
    /// Requests per second per API key.
    pub limiter: crate::limits::RateLimiter,
    /// Concurrent streaming uploads per tenant.
    pub uploads: Arc<crate::limits::UploadSlots>,
    /// Cancelled when the service stops: ends long-lived responses (event streams) so a
    /// graceful shutdown does not wait for clients that never hang up.
    pub stopping: CancellationToken,
    /// SHA-256 (hex) of `AIRLOCK_BOOTSTRAP_API_KEY`, accepted as tenant `default`.
    pub bootstrap_key_hash: Option<String>,
}

pub type App = Arc<AppState>;

/// Which halves of the service this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    All,
    Api,
    Worker,
}

/// Opens the database (migrating it), the object store and the bus.
///
/// # Errors
/// Unsupported URLs, unreachable or unmigratable database, unusable storage.
pub async fn open(settings: Settings) -> anyhow::Result<App> {
    if settings.bus_url != "embedded" {
        anyhow::bail!(
            "AIRLOCK_BUS_URL `{}`: only the embedded bus is supported in this build (NATS JetStream is planned behind the same interface)",
            settings.bus_url
        );
    }
    if !settings.database_url.starts_with("sqlite:") {
        anyhow::bail!("AIRLOCK_DATABASE_URL: only sqlite:// is supported in this build (PostgreSQL is planned behind the same interface)");
    }
    if let Some(path) = settings.database_url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or(path);
        if let Some(parent) = std::path::Path::new(path).parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| anyhow::anyhow!("creating {}: {e}", parent.display()))?;
        }
    }
    let pool = airlock_events::db::open_sqlite(&settings.database_url).await?;
    airlock_events::db::migrate(&pool).await?;
    crate::files::migrate(&pool).await?;
    let bus = Bus::new(pool, BusOptions::default())?;
    let blobs = Blobs::from_url(&settings.storage_url).map_err(anyhow::Error::msg)?;
    let secret = match &settings.signing_secret {
        Some(s) => s.clone(),
        None => crate::auth::stored_secret(bus.pool(), "signing_secret").await?,
    };
    let bootstrap_key_hash = settings.bootstrap_api_key.as_deref().map(crate::auth::hash_key);
    let scanner = settings
        .clamd
        .as_deref()
        .map(|url| crate::scanner::Scanner::from_url(url, 4, Duration::from_secs(120)))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    Ok(Arc::new(AppState {
        signer: UrlSigner::new(secret.as_bytes()),
        limiter: crate::limits::RateLimiter::new(settings.rate_limit),
        uploads: crate::limits::UploadSlots::new(settings.max_concurrent_uploads),
        stopping: CancellationToken::new(),
        settings,
        bus,
        blobs,
        bootstrap_key_hash,
        scanner,
    }))
}

/// Runs the service on `listener` until `shutdown`: the API, the workers, or both.
///
/// # Errors
/// Server failures.
pub async fn run(app: App, listener: Option<TcpListener>, role: Role, shutdown: CancellationToken) -> anyhow::Result<()> {
    let stopping = app.stopping.clone();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        signal.cancelled().await;
        stopping.cancel();
    });
    let mut workers = Vec::new();
    if role != Role::Api {
        workers = crate::pipeline::start(&app, shutdown.clone()).await?;
        workers.push(app.bus.spawn_timers(shutdown.clone()));
        workers.push(spawn_housekeeping(app.clone(), shutdown.clone()));
        workers.push(crate::webhooks::spawn_supervisor(app.clone(), shutdown.clone()));
    }
    if let (Some(listener), true) = (listener, role != Role::Worker) {
        let router = crate::api::router(app.clone());
        let stop = shutdown.clone();
        axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await }).await?;
    } else {
        shutdown.cancelled().await;
    }
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    Ok(())
}

/// Deletes finished deliveries older than a week, hourly: queue tables must not grow forever.
fn spawn_housekeeping(app: App, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    match app.bus.purge_finished(Duration::from_secs(7 * 86_400)).await {
                        Ok(n) if n > 0 => tracing::info!(deliveries = n, "Purged finished deliveries."),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "Purging finished deliveries failed."),
                    }
                }
            }
        }
    })
}
