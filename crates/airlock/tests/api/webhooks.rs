//! Webhooks: public events delivered to real HTTP receivers (in this process) as signed
//! CloudEvents; retries through an outage, `Retry-After`, dead letters and their redrive and
//! discard, `410 Gone`, replay, filters, slow receivers, tenants; and the per-file SSE stream.
//!
//! Every receiver verifies the Standard Webhooks signature itself and records every request it
//! got (headers, raw body, what it answered), so the tests assert what a receiver really saw.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::StreamExt as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::{DEADLINE, TestApp, assert_problem, file_id, html, png, random_token, random_traceparent, sha256_hex};

/// The public event types (CONTRACT §4).
const PUBLIC: [&str; 6] =
    ["file.uploaded.v1", "file.promoted.v1", "file.quarantined.v1", "file.variant.generated.v1", "file.deleted.v1", "upload.expired.v1"];

// ---- the receiver ----

/// What a receiver answers to one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// `200`.
    Ok,
    /// This status, without `Retry-After`.
    Status(u16),
    /// This status with `Retry-After: <seconds>`.
    RetryAfter(u16, u64),
    /// This status with `Retry-After: <HTTP-date>`, the date this long after the request.
    RetryAfterDate(u16, Duration),
    /// `503` without `Retry-After` for this long after the first request it gets, `200` after.
    DownFor(Duration),
    /// Sleeps this long, then `200`.
    Sleep(Duration),
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub received_at: Instant,
    pub received_wall: OffsetDateTime,
    pub answered_at: Instant,
    /// What the receiver answered.
    pub status: u16,
    pub webhook_id: String,
    pub timestamp: String,
    pub signature: String,
    /// The signature verified against the receiver's secret.
    pub signature_ok: bool,
    pub content_type: String,
    pub raw: Bytes,
    /// The CloudEvent (`Null` if the body was not JSON).
    pub body: Value,
}

impl Delivery {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn event_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }

    pub fn subject(&self) -> &str {
        self.body["subject"].as_str().unwrap_or_default()
    }
}

struct Script {
    secret: String,
    queue: VecDeque<Answer>,
    default: Answer,
    down_until: Option<Instant>,
    deliveries: Vec<Delivery>,
}

/// An HTTP receiver on 127.0.0.1 that verifies signatures, records every request and answers
/// as scripted: first the queued answers, then the default one.
pub struct Receiver {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    pub secret: String,
    state: Arc<Mutex<Script>>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(secret: &str, default: Answer) -> Receiver {
        Receiver::start_on(0, secret, default).await
    }

    /// A receiver on a given port (0: any).
    pub async fn start_on(port: u16, secret: &str, default: Answer) -> Receiver {
        let state =
            Arc::new(Mutex::new(Script { secret: secret.to_owned(), queue: VecDeque::new(), default, down_until: None, deliveries: Vec::new() }));
        let router = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("binding the receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("local address"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Receiver { url, secret: secret.to_owned(), state, server }
    }

    /// Answers the next requests with `answers`, then with the default.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.lock().expect("receiver lock").queue.extend(answers);
    }

    pub fn set_default(&self, answer: Answer) {
        self.state.lock().expect("receiver lock").default = answer;
    }

    /// Verifies with this secret from now on (e.g. one the server generated).
    pub fn set_secret(&self, secret: &str) {
        self.state.lock().expect("receiver lock").secret = secret.to_owned();
    }

    /// Every request so far, in the order they were answered.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.lock().expect("receiver lock").deliveries.clone()
    }

    /// The requests whose `webhook-id` is `id`.
    pub fn attempts_of(&self, id: &str) -> Vec<Delivery> {
        self.deliveries().into_iter().filter(|d| d.webhook_id == id).collect()
    }

    /// Polls the recorded requests until `done` holds.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let start = Instant::now();
        loop {
            let ds = self.deliveries();
            if done(&ds) {
                return ds;
            }
            if start.elapsed() > DEADLINE {
                let seen: Vec<(String, String, u16)> = ds.iter().map(|d| (d.event_type().to_owned(), d.webhook_id.clone(), d.status)).collect();
                panic!("{what}: not within {DEADLINE:?}; the receiver got {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until each of `event_ids` was answered with a 2xx at least once.
    pub async fn wait_delivered(&self, event_ids: &[String]) -> Vec<Delivery> {
        self.wait_for(&format!("successful deliveries of {event_ids:?}"), |ds| {
            event_ids.iter().all(|id| ds.iter().any(|d| d.ok() && d.webhook_id == *id))
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(state): State<Arc<Mutex<Script>>>, headers: HeaderMap, raw: Bytes) -> Response {
    let received_at = Instant::now();
    let received_wall = OffsetDateTime::now_utc();
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (webhook_id, timestamp, signature) = (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    let (answer, secret) = {
        let mut s = state.lock().expect("receiver lock");
        let next = s.queue.pop_front();
        (next.unwrap_or_else(|| s.default.clone()), s.secret.clone())
    };
    let signature_ok = verify(&secret, &webhook_id, &timestamp, &raw, &signature);
    let mut retry_after = None;
    let status = match answer {
        Answer::Ok => 200,
        Answer::Status(s) => s,
        Answer::RetryAfter(s, secs) => {
            retry_after = Some(secs.to_string());
            s
        }
        Answer::RetryAfterDate(s, after) => {
            retry_after = Some(http_date(received_wall + after));
            s
        }
        Answer::DownFor(d) => {
            let until = *state.lock().expect("receiver lock").down_until.get_or_insert(received_at + d);
            if received_at < until { 503 } else { 200 }
        }
        Answer::Sleep(d) => {
            tokio::time::sleep(d).await;
            200
        }
    };
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let delivery = Delivery {
        received_at,
        received_wall,
        answered_at: Instant::now(),
        status,
        webhook_id,
        timestamp,
        signature,
        signature_ok,
        content_type: header("content-type"),
        raw,
        body,
    };
    state.lock().expect("receiver lock").deliveries.push(delivery);
    let mut res = (StatusCode::from_u16(status).expect("a status code"), format!("scripted answer {status}")).into_response();
    if let Some(v) = retry_after {
        res.headers_mut().insert("retry-after", HeaderValue::from_str(&v).expect("a header value"));
    }
    res
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), rounded up to the next second.
fn http_date(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).expect("a valid time") + time::Duration::SECOND;
    let f = time::macros::format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");
    t.format(f).expect("formatting an HTTP date")
}

/// Standard Webhooks: HMAC-SHA256 with the base64-decoded secret (after `whsec_`) over
/// `"{id}.{timestamp}.{body}"`; the header holds space-separated `v1,<base64>` signatures.
pub fn verify(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let Some(key) = secret.strip_prefix("whsec_").and_then(|k| B64.decode(k).ok()) else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = B64.encode(mac.finalize().into_bytes());
    !id.is_empty() && !timestamp.is_empty() && header.split(' ').any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

/// A new `whsec_` secret of 32 random bytes.
pub fn new_secret() -> String {
    let mut key = uuid::Uuid::new_v4().as_bytes().to_vec();
    key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    format!("whsec_{}", B64.encode(key))
}

// ---- the API ----

/// A subscription body for `rx` (its URL and secret) to `event_types`, with `extra` fields.
pub fn hook(rx: &Receiver, event_types: &[&str], extra: Value) -> Value {
    let mut body = json!({"name": format!("receiver-{}", random_token()), "url": rx.url, "event_types": event_types, "secret": rx.secret});
    for (k, v) in extra.as_object().expect("extra fields are an object") {
        body[k] = v.clone();
    }
    body
}

pub async fn subscribe_response(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.client.post(app.url("/v1/subscriptions")).bearer_auth(key).json(body).send().await.expect("POST /v1/subscriptions")
}

/// `POST /v1/subscriptions` that must succeed; returns its body.
pub async fn subscribe(app: &TestApp, key: &str, body: Value) -> Value {
    let res = subscribe_response(app, key, &body).await;
    let status = res.status();
    let v: Value = res.json().await.expect("JSON body");
    assert_eq!(status, 201, "POST /v1/subscriptions {body} answered {v}");
    assert!(v["id"].is_string(), "no id in {v}");
    v
}

/// The id of a created subscription.
pub fn sub_id(sub: &Value) -> String {
    sub["id"].as_str().unwrap_or_else(|| panic!("no id in {sub}")).to_owned()
}

pub async fn get_as(app: &TestApp, path: &str, key: &str) -> reqwest::Response {
    app.client.get(app.url(path)).bearer_auth(key).send().await.expect("GET")
}

pub async fn post_as(app: &TestApp, path: &str, key: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = app.client.post(app.url(path)).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.expect("POST")
}

pub async fn delete_as(app: &TestApp, path: &str, key: &str) -> reqwest::Response {
    app.client.delete(app.url(path)).bearer_auth(key).send().await.expect("DELETE")
}

/// A JSON answer with `status`.
async fn json_with(res: reqwest::Response, status: u16) -> Value {
    let got = res.status().as_u16();
    let url = res.url().path().to_owned();
    let text = res.text().await.unwrap_or_default();
    assert_eq!(got, status, "{url} answered {got}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {text}"))
}

pub async fn subscription(app: &TestApp, id: &str) -> Value {
    json_with(get_as(app, &format!("/v1/subscriptions/{id}"), &app.api_key).await, 200).await
}

pub async fn dead_letters(app: &TestApp, id: &str) -> Vec<Value> {
    let v = json_with(get_as(app, &format!("/v1/subscriptions/{id}/dead-letters"), &app.api_key).await, 200).await;
    v["items"].as_array().expect("items").clone()
}

/// Polls until the subscription has `n` dead letters; returns them.
pub async fn wait_for_dead_letters(app: &TestApp, id: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} dead letter(s) of subscription {id}"), async || {
        let items = dead_letters(app, id).await;
        (items.len() == n).then_some(items)
    })
    .await
}

/// Polls `check` until it gives a value.
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "{what}: not within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The file's logged event of `event_type` (unversioned), waiting for it.
pub async fn logged_event(app: &TestApp, file: &str, event_type: &str) -> Value {
    let events = app.wait_for_event(file, event_type).await;
    events.into_iter().find(|e| e["event_type"] == event_type).expect("the event")
}

fn event_id(e: &Value) -> String {
    e["event_id"].as_str().unwrap_or_else(|| panic!("no event_id in {e}")).to_owned()
}

/// The names of the subscriptions an event was fanned out to.
fn delivered_to(e: &Value) -> Vec<String> {
    e["deliveries"].as_array().expect("deliveries").iter().map(|d| d["subscription"].as_str().unwrap_or_default().to_owned()).collect()
}

/// `POST /v1/uploads` as `key` with a correlation id and a traceparent; must succeed.
async fn create_upload_as(app: &TestApp, key: &str, body: Value, headers: &[(&str, &str)]) -> Value {
    let mut req = app.client.post(app.url("/v1/uploads")).bearer_auth(key).json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    json_with(req.send().await.expect("POST /v1/uploads"), 201).await
}

/// Uploads a PNG as `key` and returns its file id (without waiting for the pipeline).
async fn upload_png_as(app: &TestApp, key: &str, kind: &str, seed: &[u8]) -> String {
    let created = create_upload_as(app, key, json!({"kind": kind, "filename": "p.png", "content_type": "image/png"}), &[]).await;
    let res = app.put_bytes(&created, png(seed)).await;
    assert_eq!(res.status(), 200, "PUT answered {}", res.text().await.unwrap_or_default());
    file_id(&created)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("formatting a time")
}

fn parse_time(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("`{s}` is not RFC 3339: {e}"))
}

/// Asserts what every receiver may expect of every request: signed with its secret, a fresh
/// timestamp, a CloudEvent whose `id` is the `webhook-id`.
fn assert_well_formed(d: &Delivery) {
    assert!(d.signature_ok, "a delivery with a bad signature ({}): {}", d.signature, d.body);
    assert_eq!(d.content_type, "application/cloudevents+json", "content type of {}", d.body);
    assert_eq!(d.body["specversion"], "1.0", "{}", d.body);
    assert_eq!(d.body["id"], d.webhook_id.as_str(), "webhook-id is the CloudEvent id: {}", d.body);
    let ts: i64 = d.timestamp.parse().unwrap_or_else(|_| panic!("webhook-timestamp `{}` is not Unix seconds", d.timestamp));
    let skew = (d.received_wall.unix_timestamp() - ts).abs();
    assert!(skew <= 5, "webhook-timestamp {ts} is {skew} s off the receiver's clock");
}

// ---- the tests ----

const EPHEMERAL: &str = r#"
[kinds.ephemeral]
max_bytes = 100000
allowed_types = ["image/*"]
upload_ttl = "1s"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_event_type_reaches_a_subscriber_as_a_signed_cloudevent_carrying_the_requests_correlation() {
    let app = TestApp::spawn_with_config(EPHEMERAL).await;
    let secret = new_secret();
    let rx = Receiver::start(&secret, Answer::Ok).await;
    let sub = subscribe(&app, &app.api_key, hook(&rx, &PUBLIC, json!({}))).await;
    assert_eq!(sub["secret"], secret.as_str(), "the given secret is the one used: {sub}");
    assert_eq!(sub["status"], "active");
    assert_eq!(sub["url"], rx.url.as_str());
    // A subscription without a secret gets a generated one (shown once), and it signs.
    let rx2 = Receiver::start("", Answer::Ok).await;
    let sub2 = subscribe(&app, &app.api_key, json!({"name": "generated", "url": rx2.url, "event_types": ["file.promoted"]})).await;
    let generated = sub2["secret"].as_str().expect("a generated secret").to_owned();
    let key = B64.decode(generated.strip_prefix("whsec_").expect("a whsec_ secret")).expect("base64 after whsec_");
    assert!(key.len() >= 24, "a generated secret of {} bytes", key.len());
    rx2.set_secret(&generated);
    assert_eq!(sub2["event_types"], json!(["file.promoted.v1"]), "an unversioned type means its newest version");
    let shown = subscription(&app, &sub_id(&sub2)).await;
    assert!(shown.get("secret").is_none() && !shown.to_string().contains(&generated), "GET shows the secret again: {shown}");

    let ctx = || (format!("wh-{}", random_token()), random_traceparent());
    let (p_corr, p_tp) = ctx();
    let (q_corr, q_tp) = ctx();
    let (e_corr, e_tp) = ctx();
    let (d_corr, d_tp) = ctx();
    let bytes = png(b"public events");
    let p = create_upload_as(
        &app,
        &app.api_key,
        json!({"kind": "default", "filename": "ok.png", "content_type": "image/png", "user_id": "u-7"}),
        &[("X-Correlation-Id", &p_corr), ("traceparent", &p_tp)],
    )
    .await;
    let q = create_upload_as(
        &app,
        &app.api_key,
        json!({"kind": "default", "filename": "page.html"}),
        &[("X-Correlation-Id", &q_corr), ("traceparent", &q_tp)],
    )
    .await;
    let e = create_upload_as(
        &app,
        &app.api_key,
        json!({"kind": "ephemeral", "filename": "never.png", "user_id": "u-8"}),
        &[("X-Correlation-Id", &e_corr), ("traceparent", &e_tp)],
    )
    .await;
    let (p_id, q_id, e_id) = (file_id(&p), file_id(&q), file_id(&e));
    assert_eq!(app.put_bytes(&p, bytes.clone()).await.status(), 200);
    assert_eq!(app.put_bytes(&q, html()).await.status(), 200);
    let p_file = app.wait_for_status(&p_id, &["promoted"]).await;
    let q_file = app.wait_for_status(&q_id, &["quarantined"]).await;
    assert_eq!(q_file["reason"], "active_content");
    let del = app
        .client
        .delete(app.url(&format!("/v1/files/{p_id}")))
        .bearer_auth(&app.api_key)
        .header("X-Correlation-Id", &d_corr)
        .header("traceparent", &d_tp)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(del.status(), 202);
    app.wait_for_status(&e_id, &["expired"]).await;

    // (file, event type, correlation id and traceparent of the request that caused it)
    let expected = [
        (&p_id, "file.uploaded", &p_corr, &p_tp),
        (&p_id, "file.promoted", &p_corr, &p_tp),
        (&p_id, "file.deleted", &d_corr, &d_tp),
        (&q_id, "file.uploaded", &q_corr, &q_tp),
        (&q_id, "file.quarantined", &q_corr, &q_tp),
        (&e_id, "upload.expired", &e_corr, &e_tp),
    ];
    let mut logged = Vec::new();
    for (file, ty, _, _) in &expected {
        logged.push(logged_event(&app, file, ty).await);
    }
    let ids: Vec<String> = logged.iter().map(event_id).collect();
    let got = rx.wait_delivered(&ids).await;

    for ((file, ty, corr, tp), log) in expected.iter().zip(&logged) {
        let id = event_id(log);
        let d = got.iter().find(|d| d.ok() && d.webhook_id == id).expect("delivered");
        assert_well_formed(d);
        let ce = &d.body;
        assert_eq!(ce["type"], format!("{ty}.v1"), "{ce}");
        assert_eq!(ce["subject"], file.as_str(), "{ce}");
        assert_eq!(ce["source"], "airlock", "{ce}");
        assert_eq!(ce["correlationid"], corr.as_str(), "{ty} of {file}: {ce}");
        assert_eq!(ce["traceparent"], tp.as_str(), "{ty} of {file}: {ce}");
        assert_eq!(ce["data"], log["payload"], "the CloudEvent's data is the event's payload");
        assert_eq!(ce["causationid"], log["causation_id"], "{ce}");
        assert_eq!(parse_time(ce["time"].as_str().expect("time")), parse_time(log["created_at"].as_str().expect("created_at")));
        assert_eq!(ce["data"]["file_id"], file.as_str(), "{ce}");
    }
    let data = |i: usize| got.iter().find(|d| d.webhook_id == ids[i]).expect("delivered").body["data"].clone();
    let uploaded = data(0);
    assert_eq!(
        (&uploaded["kind"], &uploaded["filename"], &uploaded["declared_type"], &uploaded["user_id"]),
        (&json!("default"), &json!("ok.png"), &json!("image/png"), &json!("u-7"))
    );
    assert_eq!(uploaded["sha256"], sha256_hex(&bytes));
    assert_eq!(uploaded["bytes"], bytes.len());
    let promoted = data(1);
    assert_eq!(promoted["mime"], "image/png");
    assert_eq!(promoted["mime"], p_file["detected_type"]);
    assert_eq!(promoted["sha256"], p_file["sha256"]);
    assert_eq!(promoted["bytes"], p_file["bytes"]);
    assert_eq!(promoted["kind"], "default");
    assert_eq!(data(2)["cause"], "user");
    assert_eq!(data(3)["filename"], "page.html");
    assert_eq!(data(4)["reason"], "active_content");
    assert_eq!(data(4)["kind"], "default");
    let expired = data(5);
    assert_eq!((&expired["kind"], &expired["user_id"]), (&json!("ephemeral"), &json!("u-8")));

    // Only these events, no internal one (upload.requested, validation.*, resource.*, cleanup.*).
    let seen: BTreeSet<String> = rx.deliveries().iter().map(|d| d.webhook_id.clone()).collect();
    assert_eq!(
        seen,
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        "types received: {:?}",
        rx.deliveries().iter().map(|d| d.event_type().to_owned()).collect::<Vec<_>>()
    );

    // The generated secret signs too; and the verifier is not a rubber stamp.
    let d2 = rx2.wait_delivered(&ids[1..2]).await.into_iter().find(Delivery::ok).expect("delivered");
    assert_well_formed(&d2);
    assert!(rx2.deliveries().iter().all(|d| d.webhook_id == ids[1]), "the file.promoted-only subscription got other events");
    assert!(!verify(&secret, &d2.webhook_id, &d2.timestamp, &d2.raw, &d2.signature), "a signature verified with another secret");
}

#[tokio::test]
async fn subscriptions_to_internal_or_unknown_types_bad_urls_bad_secrets_or_without_a_key_are_refused() {
    let app = TestApp::spawn().await;
    let base = |patch: Value| {
        let mut b = json!({"name": "n", "url": "http://127.0.0.1:9/hook", "event_types": ["file.promoted.v1"]});
        for (k, v) in patch.as_object().expect("object") {
            b[k] = v.clone();
        }
        b
    };
    let key = app.api_key.clone();
    for internal in ["upload.requested", "validation.passed.v1", "validation.failed", "resource.ready.v1", "cleanup.initiated"] {
        let res = subscribe_response(&app, &key, &base(json!({"event_types": ["file.promoted.v1", internal]}))).await;
        let p = assert_problem(res, 422, "event_type_not_public").await;
        assert!(p["detail"].as_str().unwrap_or_default().contains(internal), "the problem names {internal}: {p}");
    }
    for unknown in ["file.exploded", "file.promoted.v9", "nope", "file.*"] {
        let res = subscribe_response(&app, &key, &base(json!({"event_types": [unknown]}))).await;
        assert_problem(res, 422, "unknown_event_type").await;
    }
    for url in ["not a url", "ftp://example.com/hook", "file:///etc/passwd", "http://", "/relative/hook", "javascript:alert(1)"] {
        let res = subscribe_response(&app, &key, &base(json!({"url": url}))).await;
        assert_problem(res, 422, "invalid_url").await;
    }
    let short = format!("whsec_{}", B64.encode([7u8; 16]));
    let long = format!("whsec_{}", B64.encode([7u8; 65]));
    let unprefixed = B64.encode([7u8; 32]);
    for secret in ["secret", "whsec_", "whsec_!!!not-base64!!!", short.as_str(), long.as_str(), unprefixed.as_str()] {
        let res = subscribe_response(&app, &key, &base(json!({"secret": secret}))).await;
        assert_problem(res, 422, "invalid_secret").await;
    }
    assert_problem(subscribe_response(&app, &key, &base(json!({"filter": {"tenant": "other"}}))).await, 422, "invalid_filter").await;
    assert_problem(subscribe_response(&app, &key, &base(json!({"event_types": []}))).await, 422, "invalid_event_types").await;
    assert_problem(subscribe_response(&app, &key, &base(json!({"timeout_ms": 50}))).await, 422, "invalid_timeout").await;
    assert_problem(subscribe_response(&app, &key, &base(json!({"retry": {"max_attempts": 0}}))).await, 422, "invalid_retry").await;
    assert_problem(subscribe_response(&app, &key, &base(json!({"name": ""}))).await, 422, "invalid_name").await;
    let typo = subscribe_response(&app, &key, &base(json!({"secrets": ["whsec_x"]}))).await;
    assert!(typo.status().is_client_error(), "an unknown field was accepted: {}", typo.status());
    assert_eq!(typo.json::<Value>().await.expect("a problem")["code"], "invalid_json");

    let no_key = app.client.post(app.url("/v1/subscriptions")).json(&base(json!({}))).send().await.expect("POST");
    assert_problem(no_key, 401, "unauthorized").await;
    assert_problem(subscribe_response(&app, "ak_not-a-key", &base(json!({}))).await, 401, "unauthorized").await;
    assert_problem(app.get("/v1/subscriptions").await, 401, "unauthorized").await;

    // Nothing was created by the refused requests; a valid one is.
    let list = json_with(get_as(&app, "/v1/subscriptions", &key).await, 200).await;
    assert_eq!(list["items"], json!([]), "a refused subscription was stored");
    let ok = subscribe(&app, &key, base(json!({"event_types": ["file.uploaded", "upload.expired.v1"]}))).await;
    assert_eq!(ok["event_types"], json!(["file.uploaded.v1", "upload.expired.v1"]));
    let list = json_with(get_as(&app, "/v1/subscriptions", &key).await, 200).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_two_seconds_gets_every_event_once_it_is_back_under_the_same_webhook_id() {
    let app = TestApp::spawn().await;
    let outage = Duration::from_secs(2);
    let rx = Receiver::start(&new_secret(), Answer::DownFor(outage)).await;
    subscribe(
        &app,
        &app.api_key,
        hook(&rx, &["file.uploaded.v1", "file.promoted.v1"], json!({"retry": {"max_attempts": 50, "base_ms": 100, "cap_ms": 500}})),
    )
    .await;
    let mut files = Vec::new();
    for i in 0..3u8 {
        files.push(app.upload_ok("default", "o.png", Some("image/png"), png(&[b'o', i])).await);
    }
    let mut ids = Vec::new();
    for f in &files {
        app.wait_for_status(f, &["promoted"]).await;
        ids.push(event_id(&logged_event(&app, f, "file.uploaded").await));
        ids.push(event_id(&logged_event(&app, f, "file.promoted").await));
    }
    let got = rx.wait_delivered(&ids).await;

    let failed: Vec<&Delivery> = got.iter().filter(|d| !d.ok()).collect();
    assert!(!failed.is_empty(), "the receiver was never down");
    assert!(failed.iter().all(|d| d.status == 503));
    let first = got.iter().map(|d| d.received_at).min().expect("requests");
    for d in &got {
        assert_well_formed(d);
        assert!(ids.contains(&d.webhook_id), "an unexpected event: {}", d.body);
        if d.ok() {
            assert!(d.received_at >= first + outage, "a success during the outage");
        }
    }
    // The retries of one event are the same message: same webhook-id, same CloudEvent.
    for id in &ids {
        let attempts: Vec<&Delivery> = got.iter().filter(|d| d.webhook_id == *id).collect();
        assert!(attempts.iter().all(|d| d.body == attempts[0].body), "the retries of {id} differ");
        assert!(attempts.iter().any(|d| d.ok()), "{id} never arrived");
    }
    let retried: BTreeSet<&String> = failed.iter().map(|d| &d.webhook_id).collect();
    assert!(retried.iter().all(|id| got.iter().any(|d| d.ok() && d.webhook_id == **id)), "an event failed during the outage was never retried");
    // Deduplicated by webhook-id, the receiver got each event exactly once.
    let unique: BTreeSet<&String> = got.iter().filter(|d| d.ok()).map(|d| &d.webhook_id).collect();
    assert_eq!(unique.len(), ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_refusing_connections_gets_every_event_once_it_listens() {
    let app = TestApp::spawn().await;
    // A port nobody listens on (yet): connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port();
    let secret = new_secret();
    let body = json!({"name": "later", "url": format!("http://127.0.0.1:{port}/hook"), "secret": secret, "event_types": ["file.promoted.v1"],
                      "retry": {"max_attempts": 50, "base_ms": 100, "cap_ms": 500}});
    let sid = sub_id(&subscribe(&app, &app.api_key, body).await);
    let mut files = Vec::new();
    for i in 0..3u8 {
        files.push(app.upload_ok("default", "c.png", Some("image/png"), png(&[b'c', i])).await);
    }
    let mut ids = Vec::new();
    for f in &files {
        ids.push(event_id(&logged_event(&app, f, "file.promoted").await));
    }
    // The receiver comes up once every delivery has failed three times.
    eventually("three failed attempts of every delivery", async || {
        let mut failed = 0;
        for f in &files {
            let ev = logged_event(&app, f, "file.promoted").await;
            let mine = ev["deliveries"].as_array()?.iter().find(|d| d["subscription"] == format!("webhook:{sid}"))?.clone();
            if mine["attempts"].as_u64()? >= 3 && mine["state"] != "done" {
                failed += 1;
            }
        }
        (failed == files.len()).then_some(())
    })
    .await;
    let rx = Receiver::start_on(port, &secret, Answer::Ok).await;
    let got = rx.wait_delivered(&ids).await;
    for d in &got {
        assert_well_formed(d);
        assert!(ids.contains(&d.webhook_id), "an unexpected event: {}", d.body);
    }
    let unique: BTreeSet<&String> = got.iter().map(|d| &d.webhook_id).collect();
    assert_eq!(unique.len(), ids.len());
    // The bus records each delivery as done, after 3 refused attempts and the successful one.
    for f in &files {
        let mine = eventually("the delivery recorded as done", async || {
            let ev = logged_event(&app, f, "file.promoted").await;
            let mine = ev["deliveries"].as_array()?.iter().find(|d| d["subscription"] == format!("webhook:{sid}"))?.clone();
            (mine["state"] == "done").then_some(mine)
        })
        .await;
        assert!(mine["attempts"].as_u64().unwrap_or(0) >= 4, "three refused attempts and a success: {mine}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_or_503_with_retry_after_2_is_retried_no_sooner_than_asked() {
    let app = TestApp::spawn().await;
    // Retry-After in seconds on a 429 and a 503, and as an HTTP date on a 503.
    let answers = [Answer::RetryAfter(429, 2), Answer::RetryAfter(503, 2), Answer::RetryAfterDate(503, Duration::from_secs(2))];
    let mut receivers = Vec::new();
    for answer in answers {
        let rx = Receiver::start(&new_secret(), Answer::Ok).await;
        rx.script([answer.clone()]);
        subscribe(&app, &app.api_key, hook(&rx, &["file.promoted.v1"], json!({"retry": {"max_attempts": 10, "base_ms": 100, "cap_ms": 500}}))).await;
        receivers.push((answer, rx));
    }
    let id = app.upload_ok("default", "r.png", Some("image/png"), png(b"retry-after")).await;
    let ev = event_id(&logged_event(&app, &id, "file.promoted").await);
    for (answer, rx) in &receivers {
        rx.wait_delivered(std::slice::from_ref(&ev)).await;
        let attempts = rx.attempts_of(&ev);
        let statuses: Vec<u16> = attempts.iter().map(|d| d.status).collect();
        assert_eq!(statuses.len(), 2, "{answer:?}, then one success: {statuses:?}");
        assert_eq!(statuses[1], 200);
        let waited = attempts[1].received_at - attempts[0].answered_at;
        assert!(waited >= Duration::from_millis(1500), "retried {waited:?} after {answer:?}");
        assert!(waited < Duration::from_secs(10), "retried only {waited:?} after {answer:?}");
        assert_eq!(attempts[0].body, attempts[1].body);
        attempts.iter().for_each(assert_well_formed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_receiver_ends_in_dead_letters_that_only_its_tenant_can_redrive_or_discard() {
    let app = TestApp::spawn().await;
    let other = app.other_tenant_key();
    let rx = Receiver::start(&new_secret(), Answer::Status(500)).await;
    let sub =
        subscribe(&app, &app.api_key, hook(&rx, &["file.promoted.v1"], json!({"retry": {"max_attempts": 3, "base_ms": 50, "cap_ms": 100}}))).await;
    let sid = sub_id(&sub);

    let first = app.upload_ok("default", "poison.png", Some("image/png"), png(b"poison 1")).await;
    let promoted = event_id(&logged_event(&app, &first, "file.promoted").await);
    let letters = wait_for_dead_letters(&app, &sid, 1).await;
    let dl = &letters[0];
    assert_eq!(dl["attempts"], 3, "{dl}");
    assert!(dl["last_error"].as_str().unwrap_or_default().contains("500"), "last_error: {dl}");
    assert_eq!(dl["event_id"], promoted.as_str());
    assert_eq!(dl["event_type"], "file.promoted");
    assert_eq!(dl["subject"], first.as_str());
    assert_eq!(dl["subscription"], format!("webhook:{sid}"));
    let dl_id = dl["id"].as_i64().expect("a numeric dead letter id");
    let failed = rx.attempts_of(&promoted);
    assert_eq!(failed.len(), 3, "max_attempts 3");
    assert!(failed.iter().all(|d| d.status == 500));
    failed.iter().for_each(assert_well_formed);

    // Another tenant sees and touches nothing.
    assert_problem(get_as(&app, &format!("/v1/subscriptions/{sid}/dead-letters"), &other).await, 404, "not_found").await;
    assert_problem(post_as(&app, &format!("/v1/dead-letters/{dl_id}/redrive"), &other, None).await, 404, "not_found").await;
    assert_problem(delete_as(&app, &format!("/v1/dead-letters/{dl_id}"), &other).await, 404, "not_found").await;
    let still = dead_letters(&app, &sid).await;
    assert_eq!(still.len(), 1, "another tenant's redrive or discard changed the dead letters: {still:?}");
    assert_eq!(still[0]["attempts"], 3);
    assert_eq!(rx.attempts_of(&promoted).len(), 3, "another tenant's redrive delivered");

    // The receiver is fixed; the redrive delivers the same message.
    rx.set_default(Answer::Ok);
    let res = json_with(post_as(&app, &format!("/v1/dead-letters/{dl_id}/redrive"), &app.api_key, None).await, 202).await;
    assert_eq!(res["id"], dl_id);
    let got = rx.wait_delivered(std::slice::from_ref(&promoted)).await;
    let ok = got.iter().find(|d| d.ok()).expect("delivered");
    assert_well_formed(ok);
    assert_eq!(ok.webhook_id, failed[0].webhook_id, "a redrive keeps the webhook-id");
    assert_eq!(ok.body, failed[0].body);
    assert_eq!(dead_letters(&app, &sid).await, Vec::<Value>::new());
    assert_problem(post_as(&app, &format!("/v1/dead-letters/{dl_id}/redrive"), &app.api_key, None).await, 404, "not_found").await;

    // A second dead letter is discarded: gone from the list, never delivered.
    rx.set_default(Answer::Status(500));
    let second = app.upload_ok("default", "poison.png", Some("image/png"), png(b"poison 2")).await;
    let promoted2 = event_id(&logged_event(&app, &second, "file.promoted").await);
    let letters = wait_for_dead_letters(&app, &sid, 1).await;
    assert_eq!(letters[0]["event_id"], promoted2.as_str());
    let dl2 = letters[0]["id"].as_i64().expect("id");
    assert_problem(delete_as(&app, &format!("/v1/dead-letters/{dl2}"), &other).await, 404, "not_found").await;
    let res = delete_as(&app, &format!("/v1/dead-letters/{dl2}"), &app.api_key).await;
    assert_eq!(res.status(), 204);
    assert_eq!(dead_letters(&app, &sid).await, Vec::<Value>::new());
    assert_problem(delete_as(&app, &format!("/v1/dead-letters/{dl2}"), &app.api_key).await, 404, "not_found").await;
    assert_problem(post_as(&app, &format!("/v1/dead-letters/{dl2}/redrive"), &app.api_key, None).await, 404, "not_found").await;
    assert_eq!(rx.attempts_of(&promoted2).len(), 3);
    // The redriven delivery is recorded as done (shortly after the receiver answered).
    let counts = eventually("the redriven delivery recorded as done", async || {
        let counts = subscription(&app, &sid).await["deliveries"].clone();
        (counts["done"] == 1).then_some(counts)
    })
    .await;
    assert_eq!(counts, json!({"done": 1, "discarded": 1}), "delivery counts");
    assert_problem(post_as(&app, "/v1/dead-letters/not-a-number/redrive", &app.api_key, None).await, 404, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_disables_the_subscription_and_later_events_are_not_delivered() {
    let app = TestApp::spawn().await;
    let gone = Receiver::start(&new_secret(), Answer::Status(410)).await;
    let control = Receiver::start(&new_secret(), Answer::Ok).await;
    let retry = json!({"retry": {"max_attempts": 10, "base_ms": 100, "cap_ms": 500}});
    let sid = sub_id(&subscribe(&app, &app.api_key, hook(&gone, &["file.promoted.v1"], retry.clone())).await);
    subscribe(&app, &app.api_key, hook(&control, &["file.promoted.v1"], retry)).await;

    let first = app.upload_ok("default", "g.png", Some("image/png"), png(b"gone 1")).await;
    let promoted = event_id(&logged_event(&app, &first, "file.promoted").await);
    let sub = eventually("the subscription disabled", async || {
        let s = subscription(&app, &sid).await;
        (s["status"] == "disabled").then_some(s)
    })
    .await;
    assert!(sub["disabled_at"].is_string(), "{sub}");
    assert!(sub["disabled_reason"].as_str().unwrap_or_default().contains("410"), "{sub}");
    let letters = wait_for_dead_letters(&app, &sid, 1).await;
    assert_eq!(letters[0]["attempts"], 1, "a 410 is not retried: {letters:?}");
    assert_eq!(gone.attempts_of(&promoted).len(), 1, "a 410 is not retried");

    // Even if the receiver would now accept, nothing more is sent to it.
    gone.set_default(Answer::Ok);
    let second = app.upload_ok("default", "g.png", Some("image/png"), png(b"gone 2")).await;
    let promoted2 = logged_event(&app, &second, "file.promoted").await;
    control.wait_delivered(&[event_id(&promoted2)]).await;
    assert!(!delivered_to(&promoted2).contains(&format!("webhook:{sid}")), "an event was fanned out to a disabled subscription: {promoted2}");
    assert_eq!(gone.deliveries().len(), 1, "the disabled subscription's receiver got more requests");
    assert_eq!(subscription(&app, &sid).await["status"], "disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_since_delivers_earlier_events_and_the_replay_route_queues_the_undelivered_ones() {
    let app = TestApp::spawn().await;
    let other = app.other_tenant_key();
    let since = rfc3339(OffsetDateTime::now_utc() - time::Duration::seconds(2));
    let ours = app.upload_ok("default", "old.png", Some("image/png"), png(b"replay ours")).await;
    let theirs = upload_png_as(&app, &other, "default", b"replay theirs").await;
    app.wait_for_status(&ours, &["promoted"]).await;
    let ours_promoted = event_id(&logged_event(&app, &ours, "file.promoted").await);
    eventually("the other tenant's file promoted", async || {
        let f = json_with(get_as(&app, &format!("/v1/files/{theirs}"), &other).await, 200).await;
        (f["status"] == "promoted").then_some(())
    })
    .await;

    let plain = Receiver::start(&new_secret(), Answer::Ok).await;
    let backfilled = Receiver::start(&new_secret(), Answer::Ok).await;
    let plain_id = sub_id(&subscribe(&app, &app.api_key, hook(&plain, &["file.promoted.v1"], json!({}))).await);
    let back_id = sub_id(&subscribe(&app, &app.api_key, hook(&backfilled, &["file.promoted.v1"], json!({"replay_since": since}))).await);

    backfilled.wait_delivered(std::slice::from_ref(&ours_promoted)).await;
    let ev = logged_event(&app, &ours, "file.promoted").await;
    let to = delivered_to(&ev);
    assert!(to.contains(&format!("webhook:{back_id}")), "{ev}");
    assert!(!to.contains(&format!("webhook:{plain_id}")), "a subscription without replay_since got an earlier event: {ev}");
    assert!(plain.deliveries().is_empty(), "a subscription without replay_since got earlier events");

    // The replay route queues what the subscription never got: our one event, not theirs.
    let res = json_with(post_as(&app, &format!("/v1/subscriptions/{plain_id}/replay"), &app.api_key, Some(json!({"since": since}))).await, 202).await;
    assert_eq!(res["replayed"], 1, "{res}");
    plain.wait_delivered(std::slice::from_ref(&ours_promoted)).await;
    // Already delivered events are not queued again.
    let res = json_with(post_as(&app, &format!("/v1/subscriptions/{back_id}/replay"), &app.api_key, Some(json!({"since": since}))).await, 202).await;
    assert_eq!(res["replayed"], 0, "{res}");
    let res = json_with(post_as(&app, &format!("/v1/subscriptions/{plain_id}/replay"), &app.api_key, Some(json!({"since": since}))).await, 202).await;
    assert_eq!(res["replayed"], 0, "{res}");

    for rx in [&plain, &backfilled] {
        let ds = rx.deliveries();
        assert!(
            ds.iter().all(|d| d.subject() == ours),
            "another tenant's event was replayed: {:?}",
            ds.iter().map(|d| d.subject()).collect::<Vec<_>>()
        );
        assert_eq!(ds.iter().filter(|d| d.ok()).count(), 1);
        ds.iter().for_each(assert_well_formed);
    }
    let bad = post_as(&app, &format!("/v1/subscriptions/{plain_id}/replay"), &app.api_key, Some(json!({"since": "yesterday"}))).await;
    assert_problem(bad, 422, "invalid_time").await;
    let bad = subscribe_response(&app, &app.api_key, &hook(&plain, &["file.promoted.v1"], json!({"replay_since": "last week"}))).await;
    assert_problem(bad, 422, "invalid_time").await;
    let foreign = post_as(&app, &format!("/v1/subscriptions/{plain_id}/replay"), &other, Some(json!({"since": since}))).await;
    assert_problem(foreign, 404, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_filter_delivers_only_that_kinds_events() {
    let app = TestApp::spawn_with_config(
        r#"
[kinds.kyc_doc]
allowed_types = ["image/*"]

[kinds.avatar]
allowed_types = ["image/*"]
"#,
    )
    .await;
    let rx = Receiver::start(&new_secret(), Answer::Ok).await;
    let sub = subscribe(&app, &app.api_key, hook(&rx, &["file.uploaded.v1", "file.promoted.v1"], json!({"filter": {"kind": "kyc_doc"}}))).await;
    assert_eq!(sub["filter"], json!({"kind": "kyc_doc"}));
    let sid = sub_id(&sub);

    let avatar = app.upload_ok("avatar", "me.png", Some("image/png"), png(b"avatar")).await;
    app.wait_for_status(&avatar, &["promoted"]).await;
    let kyc = app.upload_ok("kyc_doc", "passport.png", Some("image/png"), png(b"kyc")).await;
    let ids = [event_id(&logged_event(&app, &kyc, "file.uploaded").await), event_id(&logged_event(&app, &kyc, "file.promoted").await)];
    rx.wait_delivered(&ids).await;

    for e in app.events(&avatar).await {
        assert!(!delivered_to(&e).contains(&format!("webhook:{sid}")), "an avatar event was fanned out to the kyc_doc subscription: {e}");
    }
    let ds = rx.deliveries();
    for d in &ds {
        assert_eq!(d.body["data"]["kind"], "kyc_doc", "{}", d.body);
        assert_eq!(d.subject(), kyc);
        assert_well_formed(d);
    }
    assert_eq!(ds.iter().filter(|d| d.ok()).count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_does_not_delay_a_fast_one() {
    let app = TestApp::spawn().await;
    let slow = Receiver::start(&new_secret(), Answer::Sleep(Duration::from_secs(3))).await;
    let fast = Receiver::start(&new_secret(), Answer::Ok).await;
    subscribe(&app, &app.api_key, hook(&slow, &["file.promoted.v1"], json!({"timeout_ms": 5000}))).await;
    subscribe(&app, &app.api_key, hook(&fast, &["file.promoted.v1"], json!({"timeout_ms": 5000}))).await;
    // A first file, to know both delivery workers are running.
    let warm = app.upload_ok("default", "w.png", Some("image/png"), png(b"warm up")).await;
    let warm_ev = [event_id(&logged_event(&app, &warm, "file.promoted").await)];
    fast.wait_delivered(&warm_ev).await;
    slow.wait_delivered(&warm_ev).await;

    let mut files = Vec::new();
    for i in 0..6u8 {
        files.push(app.upload_ok("default", "s.png", Some("image/png"), png(&[b's', i])).await);
    }
    let mut ids = Vec::new();
    for f in &files {
        ids.push(event_id(&logged_event(&app, f, "file.promoted").await));
    }
    let got = fast.wait_delivered(&ids).await;
    let slow_done = slow.deliveries().iter().filter(|d| ids.contains(&d.webhook_id)).count();
    assert!(slow_done < ids.len(), "the slow receiver finished first ({slow_done} of {}): the test proves nothing", ids.len());
    for id in &ids {
        let d = got.iter().find(|d| d.webhook_id == *id && d.ok()).expect("delivered");
        let promoted_at = parse_time(d.body["time"].as_str().expect("time"));
        let delay = d.received_wall - promoted_at;
        assert!(delay < time::Duration::seconds(2), "the fast receiver got {id} {delay} after its promotion");
        assert_well_formed(d);
    }
    // The slow one gets everything too, each in one attempt (3 s is within its 5 s timeout).
    let slow_got = slow.wait_delivered(&ids).await;
    for id in &ids {
        let attempts: Vec<&Delivery> = slow_got.iter().filter(|d| d.webhook_id == *id).collect();
        assert_eq!(attempts.len(), 1, "{id} was retried although the slow receiver answered in time");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_subscription_never_receives_another_tenants_events_nor_can_it_be_managed_by_them() {
    let app = TestApp::spawn().await;
    let other = app.other_tenant_key();
    let rx_a = Receiver::start(&new_secret(), Answer::Ok).await;
    let rx_b = Receiver::start(&new_secret(), Answer::Ok).await;
    let types = ["file.uploaded.v1", "file.promoted.v1"];
    let sub_a = sub_id(&subscribe(&app, &app.api_key, hook(&rx_a, &types, json!({}))).await);
    let sub_b = sub_id(&subscribe(&app, &other, hook(&rx_b, &types, json!({}))).await);

    let fa = app.upload_ok("default", "a.png", Some("image/png"), png(b"tenant a")).await;
    let fb = upload_png_as(&app, &other, "default", b"tenant b").await;
    let fa_ev = event_id(&logged_event(&app, &fa, "file.promoted").await);
    rx_a.wait_delivered(std::slice::from_ref(&fa_ev)).await;
    let fb_promoted = eventually("the other tenant's file.promoted", async || {
        let v = json_with(app.events_response(&fb, &other).await, 200).await;
        v["events"].as_array().expect("events").iter().find(|e| e["event_type"] == "file.promoted").cloned()
    })
    .await;
    rx_b.wait_delivered(&[event_id(&fb_promoted)]).await;

    for (rx, file, tenant) in [(&rx_a, &fa, "default"), (&rx_b, &fb, "other")] {
        let ds = rx.deliveries();
        assert_eq!(ds.iter().filter(|d| d.ok()).count(), 2, "uploaded and promoted of its own file only");
        for d in &ds {
            assert_eq!(d.subject(), file.as_str(), "tenant {tenant}'s receiver got another tenant's event: {}", d.body);
            assert_eq!(d.body["tenant"], tenant);
            assert_well_formed(d);
        }
    }
    for e in app.events(&fa).await {
        assert!(!delivered_to(&e).contains(&format!("webhook:{sub_b}")), "{e}");
    }
    for e in json_with(app.events_response(&fb, &other).await, 200).await["events"].as_array().expect("events") {
        assert!(!delivered_to(e).contains(&format!("webhook:{sub_a}")), "{e}");
    }

    // Each tenant sees and manages only its own subscription.
    assert_problem(get_as(&app, &format!("/v1/subscriptions/{sub_a}"), &other).await, 404, "not_found").await;
    assert_problem(delete_as(&app, &format!("/v1/subscriptions/{sub_a}"), &other).await, 404, "not_found").await;
    assert_problem(get_as(&app, &format!("/v1/subscriptions/{sub_b}"), &app.api_key).await, 404, "not_found").await;
    let theirs = json_with(get_as(&app, "/v1/subscriptions", &other).await, 200).await;
    let listed: Vec<&Value> = theirs["items"].as_array().expect("items").iter().map(|s| &s["id"]).collect();
    assert_eq!(listed, [&json!(sub_b.as_str())]);
    assert_eq!(subscription(&app, &sub_a).await["status"], "active", "another tenant's DELETE removed the subscription");
    assert_eq!(delete_as(&app, &format!("/v1/subscriptions/{sub_a}"), &app.api_key).await.status(), 204);
    assert_problem(get_as(&app, &format!("/v1/subscriptions/{sub_a}"), &app.api_key).await, 404, "not_found").await;
    assert_eq!(json_with(get_as(&app, &format!("/v1/subscriptions/{sub_b}"), &other).await, 200).await["status"], "active");
    // A deleted subscription gets nothing more.
    let later = app.upload_ok("default", "a2.png", Some("image/png"), png(b"tenant a, later")).await;
    let ev = logged_event(&app, &later, "file.promoted").await;
    assert!(!delivered_to(&ev).contains(&format!("webhook:{sub_a}")), "an event was fanned out to a deleted subscription: {ev}");
}

// ---- Server-Sent Events ----

/// One SSE event.
#[derive(Debug, Clone)]
struct SseEvent {
    event: String,
    id: String,
    data: String,
}

/// Reads `text/event-stream` events off a response.
struct SseReader {
    stream: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    buf: Vec<u8>,
}

impl SseReader {
    fn new(res: reqwest::Response) -> SseReader {
        SseReader { stream: res.bytes_stream().boxed(), buf: Vec::new() }
    }

    /// The next event (comments and keep-alives skipped), waiting at most `DEADLINE`.
    async fn next(&mut self) -> SseEvent {
        tokio::time::timeout(DEADLINE, self.next_event()).await.unwrap_or_else(|_| panic!("no SSE event within {DEADLINE:?}"))
    }

    async fn next_event(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                let mut ev = SseEvent { event: String::new(), id: String::new(), data: String::new() };
                let mut any = false;
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => ev.event = value.to_owned(),
                        "id" => ev.id = value.to_owned(),
                        "data" => {
                            if !ev.data.is_empty() {
                                ev.data.push('\n');
                            }
                            ev.data.push_str(value);
                        }
                        _ => continue,
                    }
                    any = true;
                }
                if any {
                    return ev;
                }
                continue;
            }
            match self.stream.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => panic!("reading the SSE stream: {e}"),
                None => panic!("the SSE stream ended"),
            }
        }
    }
}

async fn open_stream(app: &TestApp, id: &str, last_event_id: Option<&str>) -> SseReader {
    let mut req = app.client.get(app.url(&format!("/v1/files/{id}/events/stream"))).bearer_auth(&app.api_key);
    if let Some(l) = last_event_id {
        req = req.header("Last-Event-ID", l);
    }
    let res = req.send().await.expect("GET /v1/files/{id}/events/stream");
    assert_eq!(res.status(), 200);
    let ct = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(ct.starts_with("text/event-stream"), "content type {ct}");
    SseReader::new(res)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sse_stream_of_a_file_shows_its_events_as_they_happen_and_resumes_after_last_event_id() {
    let app = TestApp::spawn().await;
    let created = app.create_upload_ok(json!({"kind": "default", "filename": "live.png", "content_type": "image/png"})).await;
    let id = file_id(&created);
    let mut sse = open_stream(&app, &id, None).await;
    let first = sse.next().await;
    assert_eq!(first.event, "upload.requested.v1", "{first:?}");
    assert_eq!(app.put_bytes(&created, png(b"live")).await.status(), 200);

    let chain = ["upload.requested.v1", "file.uploaded.v1", "validation.started.v1", "validation.passed.v1", "file.promoted.v1", "resource.ready.v1"];
    let mut seen = vec![first];
    while seen.len() < chain.len() {
        seen.push(sse.next().await);
    }
    let types: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(types, chain);
    let logged = app.events(&id).await;
    let mut last_seq = 0;
    for (e, log) in seen.iter().zip(&logged) {
        let seq: i64 = e.id.parse().unwrap_or_else(|_| panic!("a non-numeric id: {e:?}"));
        assert!(seq > last_seq, "ids do not increase: {seen:?}");
        last_seq = seq;
        let data: Value = serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("data is not JSON ({err}): {e:?}"));
        assert_eq!(data["event_id"], log["event_id"], "{e:?}");
        assert_eq!(format!("{}.v{}", data["event_type"].as_str().unwrap_or_default(), data["event_version"]), e.event);
        assert_eq!(data["subject"], id.as_str());
        assert_eq!(log["seq"], seq, "the SSE id is the log position");
    }

    // Resuming after file.uploaded replays from validation.started on.
    let mut resumed = open_stream(&app, &id, Some(&seen[1].id)).await;
    for expected in &seen[2..] {
        let e = resumed.next().await;
        assert_eq!((&e.event, &e.id), (&expected.event, &expected.id), "resumed after {}", seen[1].id);
    }
    // Resuming after the last event gives only what happens next.
    let mut tail = open_stream(&app, &id, Some(&seen[5].id)).await;
    assert_eq!(app.delete_file(&id, &app.api_key).await.status(), 202);
    let next = tail.next().await;
    assert_eq!(next.event, "file.deleted.v1", "{next:?}");
    // The first stream is still live and sees it too.
    assert_eq!(sse.next().await.event, "file.deleted.v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_delivery_survives_a_server_crash_and_arrives_after_the_restart() {
    let mut app = TestApp::spawn().await;
    let rx = Receiver::start(&new_secret(), Answer::Status(500)).await;
    // A short timeout keeps the lease short, should the crash catch an attempt in flight.
    subscribe(
        &app,
        &app.api_key,
        hook(&rx, &["file.promoted.v1"], json!({"timeout_ms": 1000, "retry": {"max_attempts": 100, "base_ms": 200, "cap_ms": 500}})),
    )
    .await;
    let id = app.upload_ok("default", "crash.png", Some("image/png"), png(b"crash")).await;
    let ev = event_id(&logged_event(&app, &id, "file.promoted").await);
    rx.wait_for("a failed attempt before the crash", |ds| ds.iter().any(|d| d.webhook_id == ev)).await;
    app.restart().await;
    rx.set_default(Answer::Ok);
    let got = rx.wait_delivered(std::slice::from_ref(&ev)).await;
    let attempts: Vec<&Delivery> = got.iter().filter(|d| d.webhook_id == ev).collect();
    assert!(attempts.iter().all(|d| d.body == attempts[0].body), "the retries after the restart are another message");
    attempts.iter().for_each(|d| assert_well_formed(d));
}
