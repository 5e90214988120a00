//! Webhook subscriptions: other teams' endpoints receiving public events as CloudEvents 1.0
//! structured JSON, signed per Standard Webhooks. Each webhook is a bus subscription
//! (`webhook:<id>`) with its own worker, so one slow or dead receiver never delays another.
//!
//! Delivery: `webhook-id` is the event id (the same on every retry and redrive),
//! `webhook-timestamp` the attempt's time, `webhook-signature` one `v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">` per active secret, space-separated (rotation). `2xx` is success;
//! `410 Gone` disables the webhook; `429`/`503` with `Retry-After` are retried no sooner than
//! asked; anything else is retried with exponential backoff and jitter, then dead-lettered.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use airlock_events::{BoxFuture, CancellationToken, Envelope, Handler, HandlerCtx, HandlerError, RetryPolicy, SubscriptionSpec};
use base64::Engine;
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::app::App;

/// A webhook subscription.
#[derive(Debug, Clone, Serialize)]
pub struct Webhook {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub filter: BTreeMap<String, Value>,
    #[serde(skip)]
    pub secrets: Vec<String>,
    pub timeout_ms: i64,
    pub created_at: i64,
    pub disabled_at: Option<i64>,
    pub disabled_reason: Option<String>,
}

impl Webhook {
    /// The name of the bus subscription behind this webhook.
    pub fn subscription(&self) -> String {
        subscription_name(&self.id)
    }

    fn from_row(r: &SqliteRow) -> Result<Webhook, sqlx::Error> {
        let decode = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
        Ok(Webhook {
            id: r.try_get("id")?,
            tenant: r.try_get("tenant")?,
            name: r.try_get("name")?,
            url: r.try_get("url")?,
            event_types: serde_json::from_str(r.try_get("event_types")?).map_err(decode)?,
            filter: serde_json::from_str(r.try_get("filter")?).map_err(decode)?,
            secrets: serde_json::from_str(r.try_get("secrets")?).map_err(decode)?,
            timeout_ms: r.try_get("timeout_ms")?,
            created_at: r.try_get("created_at")?,
            disabled_at: r.try_get("disabled_at")?,
            disabled_reason: r.try_get("disabled_reason")?,
        })
    }
}

/// Deliveries in flight at once per webhook.
const WEBHOOK_CONCURRENCY: usize = 16;

pub fn subscription_name(id: &str) -> String {
    format!("webhook:{id}")
}

/// A new `whsec_` secret (32 random bytes).
///
/// # Errors
/// If the OS has no randomness.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf)?;
    Ok(format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(buf)))
}

/// The key bytes of a `whsec_` secret, if it is well-formed (at least 24 bytes).
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let b = base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix("whsec_")?).ok()?;
    (b.len() >= 24 && b.len() <= 64).then_some(b)
}

/// `v1,<sig>` for each secret, space-separated.
pub fn sign(secrets: &[String], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut sigs = Vec::new();
    for s in secrets {
        let Some(key) = secret_key(s) else { continue };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            continue;
        };
        mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
        mac.update(body);
        sigs.push(format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())));
    }
    sigs.join(" ")
}

/// Every webhook, or one tenant's.
///
/// # Errors
/// Database failures.
pub async fn list(pool: &sqlx::SqlitePool, tenant: Option<&str>) -> Result<Vec<Webhook>, sqlx::Error> {
    let rows = sqlx::query("SELECT * FROM webhooks WHERE ($1 IS NULL OR tenant = $1) ORDER BY id").bind(tenant).fetch_all(pool).await?;
    rows.iter().map(Webhook::from_row).collect()
}

/// One webhook of a tenant.
///
/// # Errors
/// Database failures.
pub async fn get(pool: &sqlx::SqlitePool, tenant: &str, id: &str) -> Result<Option<Webhook>, sqlx::Error> {
    let row = sqlx::query("SELECT * FROM webhooks WHERE id = $1 AND tenant = $2").bind(id).bind(tenant).fetch_optional(pool).await?;
    row.as_ref().map(Webhook::from_row).transpose()
}

/// Stores a new webhook (its bus subscription is registered by the caller).
///
/// # Errors
/// Database failures.
pub async fn insert(pool: &sqlx::SqlitePool, w: &Webhook) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhooks (id, tenant, name, url, event_types, filter, secrets, timeout_ms, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&w.id)
    .bind(&w.tenant)
    .bind(&w.name)
    .bind(&w.url)
    .bind(serde_json::to_string(&w.event_types).unwrap_or_default())
    .bind(serde_json::to_string(&w.filter).unwrap_or_default())
    .bind(serde_json::to_string(&w.secrets).unwrap_or_default())
    .bind(w.timeout_ms)
    .bind(w.created_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// What a new webhook is created from (validated by the API).
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookRetry {
    pub max_attempts: Option<u32>,
    pub base_ms: Option<u64>,
    pub cap_ms: Option<u64>,
}

/// The retry policy of webhooks unless the subscription asks otherwise: about two hours of
/// attempts, so a receiver down for an hour still gets everything.
pub fn retry_policy(r: Option<&WebhookRetry>) -> RetryPolicy {
    RetryPolicy {
        max_attempts: r.and_then(|r| r.max_attempts).unwrap_or(20),
        base: Duration::from_millis(r.and_then(|r| r.base_ms).unwrap_or(1000)),
        cap: Duration::from_millis(r.and_then(|r| r.cap_ms).unwrap_or(15 * 60 * 1000)),
    }
}

/// The bus subscription of a webhook.
pub fn spec(w: &Webhook, retry: RetryPolicy, start_from: Option<time::OffsetDateTime>) -> SubscriptionSpec {
    let mut filter = w.filter.clone();
    filter.insert("tenant".into(), Value::String(w.tenant.clone()));
    let mut s = SubscriptionSpec::new(w.subscription(), &[]);
    s.patterns = w.event_types.clone();
    s.filter = filter;
    s.retry = retry;
    s.start_from = start_from;
    s.concurrency = WEBHOOK_CONCURRENCY;
    s.lease = Duration::from_millis(w.timeout_ms as u64 * 3 + 5000);
    s
}

/// Delivers events to one webhook.
struct Deliver {
    app: App,
    client: reqwest::Client,
    webhook_id: String,
    /// The webhook's row, re-read at most once a second (URL, secrets and disabled state may
    /// change under a running worker; reading it per delivery would cost a query each).
    cached: tokio::sync::Mutex<Option<(std::time::Instant, Option<Webhook>)>>,
}

impl Deliver {
    async fn webhook(&self) -> Result<Option<Webhook>, sqlx::Error> {
        let mut cached = self.cached.lock().await;
        if let Some((at, w)) = cached.as_ref()
            && at.elapsed() < Duration::from_secs(1)
        {
            return Ok(w.clone());
        }
        let row = sqlx::query("SELECT * FROM webhooks WHERE id = $1").bind(&self.webhook_id).fetch_optional(self.app.bus.pool()).await?;
        let w = row.as_ref().map(Webhook::from_row).transpose()?;
        *cached = Some((std::time::Instant::now(), w.clone()));
        Ok(w)
    }
}

fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(3600)));
    }
    let when = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let d = when - time::OffsetDateTime::now_utc();
    Some(Duration::try_from(d).unwrap_or_default().min(Duration::from_secs(3600)))
}

impl Handler for Deliver {
    fn handle<'a>(&'a self, ev: &'a Envelope, _cx: &'a mut HandlerCtx) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let Some(w) = self.webhook().await? else {
                return Err(HandlerError::permanent("webhook deleted"));
            };
            if w.disabled_at.is_some() {
                return Err(HandlerError::permanent(format!("webhook disabled: {}", w.disabled_reason.unwrap_or_default())));
            }
            let body = serde_json::to_vec(&ev.to_cloudevent()).map_err(|e| HandlerError::permanent(e.to_string()))?;
            let msg_id = ev.event_id.to_string();
            let ts = time::OffsetDateTime::now_utc().unix_timestamp();
            let signature = sign(&w.secrets, &msg_id, ts, &body);
            let res = self
                .client
                .post(&w.url)
                .timeout(Duration::from_millis(w.timeout_ms as u64))
                .header(reqwest::header::CONTENT_TYPE, "application/cloudevents+json")
                .header("webhook-id", &msg_id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", signature)
                .body(body)
                .send()
                .await;
            let res = match res {
                Ok(r) => r,
                Err(e) => {
                    let kind = if e.is_timeout() {
                        "timed out"
                    } else if e.is_connect() {
                        "connection failed"
                    } else {
                        "request failed"
                    };
                    return Err(HandlerError::retryable(format!("{kind}: {}", without_url(&e))));
                }
            };
            let status = res.status();
            if status.is_success() {
                return Ok(());
            }
            let after = retry_after(res.headers());
            let text: String = res.text().await.unwrap_or_default().chars().take(200).collect();
            let msg = format!("HTTP {}: {}", status.as_u16(), text.trim());
            match status.as_u16() {
                410 => {
                    disable(&self.app, &w.id, "the receiver answered 410 Gone").await.map_err(HandlerError::from)?;
                    Err(HandlerError::permanent(format!("{msg} (webhook disabled)")))
                }
                429 | 503 if after.is_some() => Err(HandlerError::retry_after(msg, after.unwrap_or_default())),
                _ => Err(HandlerError::retryable(msg)),
            }
        })
    }
}

/// A reqwest error's text without its URL (which may carry a receiver's token).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(err) = src {
        s = err.to_string();
        src = err.source();
    }
    if s.is_empty() { "no response".into() } else { s }
}

/// Disables a webhook: no new deliveries are fanned out to it.
///
/// # Errors
/// Database failures.
pub async fn disable(app: &App, id: &str, reason: &str) -> Result<(), airlock_events::EventError> {
    sqlx::query("UPDATE webhooks SET disabled_at = $2, disabled_reason = $3 WHERE id = $1 AND disabled_at IS NULL")
        .bind(id)
        .bind(crate::files::ms(time::OffsetDateTime::now_utc()))
        .bind(reason)
        .execute(app.bus.pool())
        .await?;
    app.bus.disable(&subscription_name(id)).await?;
    tracing::warn!(webhook = id, reason, "Webhook disabled.");
    Ok(())
}

/// Keeps one delivery worker per webhook: starts workers for new webhooks, stops those of
/// deleted ones. Webhooks may be created by another process (an API-only node), so it polls.
pub fn spawn_supervisor(app: App, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder().user_agent("Airlock-Webhooks/1").redirect(reqwest::redirect::Policy::none()).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "Cannot build the webhook HTTP client; webhooks will not be delivered.");
                return;
            }
        };
        let mut running: HashMap<String, (CancellationToken, tokio::task::JoinHandle<()>)> = HashMap::new();
        loop {
            match list(app.bus.pool(), None).await {
                Ok(hooks) => {
                    let live: HashMap<String, Webhook> = hooks.into_iter().map(|w| (w.id.clone(), w)).collect();
                    running.retain(|id, (stop, _)| {
                        let keep = live.contains_key(id);
                        if !keep {
                            stop.cancel();
                        }
                        keep
                    });
                    for (id, w) in live {
                        if running.contains_key(&id) {
                            continue;
                        }
                        let stop = shutdown.child_token();
                        let handler =
                            Arc::new(Deliver { app: app.clone(), client: client.clone(), webhook_id: id.clone(), cached: Default::default() });
                        // Registration keeps the stored policy; it is set when the webhook is created.
                        match app.bus.subscription(&w.subscription()).await {
                            Ok(Some(mut spec)) => {
                                // Concurrency belongs to this worker; it is not stored with the subscription.
                                spec.concurrency = WEBHOOK_CONCURRENCY;
                                match app.bus.spawn_consumer(spec, handler, stop.clone()).await {
                                    Ok(task) => {
                                        running.insert(id, (stop, task));
                                    }
                                    Err(e) => tracing::warn!(webhook = %id, error = %e, "Starting a webhook worker failed."),
                                }
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(webhook = %id, error = %e, "Loading a webhook subscription failed.")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Listing webhooks failed."),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        for (_, (stop, task)) in running {
            stop.cancel();
            let _ = task.await;
        }
    })
}
