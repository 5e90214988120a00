//! Who may do what: API keys and tenants, signed URLs and their tampering, log hygiene.

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, file_id, png};

/// Rebuilds `url` with its query parameter `name` set to `value` (or removed when `None`),
/// keeping the other parameters and their order.
fn with_param(url: &str, name: &str, value: Option<&str>) -> String {
    let (base, query) = url.split_once('?').expect("a query string");
    let mut parts: Vec<String> = Vec::new();
    for pair in query.split('&') {
        let (k, _) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            if let Some(v) = value {
                parts.push(format!("{k}={v}"));
            }
        } else {
            parts.push(pair.to_owned());
        }
    }
    format!("{base}?{}", parts.join("&"))
}

fn param(url: &str, name: &str) -> String {
    let (_, query) = url.split_once('?').expect("a query string");
    query.split('&').find_map(|p| p.strip_prefix(&format!("{name}="))).unwrap_or_else(|| panic!("no {name} in {url}")).to_owned()
}

#[tokio::test]
async fn another_tenant_cannot_see_or_touch_a_file() {
    let app = TestApp::spawn().await;
    let other = app.other_tenant_key();
    let id = app.upload_ok("default", "mine.png", Some("image/png"), png(b"mine")).await;
    app.wait_for_status(&id, &["promoted"]).await;

    let get = app.client.get(app.url(&format!("/v1/files/{id}"))).bearer_auth(&other).send().await.expect("GET");
    assert_problem(get, 404, "not_found").await;
    assert_problem(app.download_response(&id, &other).await, 404, "not_found").await;
    assert_problem(app.events_response(&id, &other).await, 404, "not_found").await;
    let stream = app.client.get(app.url(&format!("/v1/files/{id}/events/stream"))).bearer_auth(&other).send().await.expect("GET stream");
    assert_problem(stream, 404, "not_found").await;
    let complete = app.client.post(app.url(&format!("/v1/files/{id}/complete"))).bearer_auth(&other).send().await.expect("POST complete");
    assert_problem(complete, 404, "not_found").await;
    assert_problem(app.delete_file(&id, &other).await, 404, "not_found").await;

    let list: Value = app.list("", &other).await.json().await.expect("JSON");
    assert_eq!(list["items"], json!([]), "the other tenant lists our file");
    let events: Value = app.client.get(app.url("/v1/events")).bearer_auth(&other).send().await.expect("GET /v1/events").json().await.expect("JSON");
    assert_eq!(events["events"], json!([]), "the other tenant sees our events");

    // The failed delete did nothing.
    let f = app.file(&id).await;
    assert_eq!(f["status"], "promoted");
    let types = app.event_types(&id).await;
    assert!(!types.iter().any(|t| t == "file.deleted"), "{types:?}");
}

#[tokio::test]
async fn each_tenant_sees_only_its_own_files() {
    let app = TestApp::spawn().await;
    let other = app.other_tenant_key();
    let ours = app.upload_ok("default", "ours.png", None, png(b"ours")).await;
    let res = app
        .client
        .post(app.url("/v1/uploads"))
        .bearer_auth(&other)
        .json(&json!({"kind": "default", "filename": "theirs.png"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 201);
    let theirs_created: Value = res.json().await.expect("JSON");
    let theirs = file_id(&theirs_created);
    assert_eq!(app.put_bytes(&theirs_created, png(b"theirs")).await.status(), 200);

    let ids = |v: Value| -> Vec<String> {
        v["items"].as_array().expect("items").iter().map(|f| f["file_id"].as_str().unwrap_or_default().to_owned()).collect()
    };
    let mine: Value = app.list("", &app.api_key).await.json().await.expect("JSON");
    assert_eq!(ids(mine), std::slice::from_ref(&ours));
    let their_list: Value = app.list("", &other).await.json().await.expect("JSON");
    assert_eq!(ids(their_list), std::slice::from_ref(&theirs));
    assert_problem(app.get_file_response(&theirs).await, 404, "not_found").await;

    // Their file goes through the pipeline in their tenant, stored under their prefix.
    let start = std::time::Instant::now();
    loop {
        let f: Value =
            app.client.get(app.url(&format!("/v1/files/{theirs}"))).bearer_auth(&other).send().await.expect("GET").json().await.expect("JSON");
        if f["status"] == "promoted" {
            break;
        }
        assert!(start.elapsed() < crate::helpers::DEADLINE, "their file: {f}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(app.stored_objects(&format!("files/other/{theirs}")).len(), 1);
}

#[tokio::test]
async fn management_routes_need_a_valid_api_key() {
    let app = TestApp::spawn().await;
    let no_key = app.client.post(app.url("/v1/uploads")).json(&json!({"kind": "default", "filename": "a.png"})).send().await.expect("POST");
    assert_problem(no_key, 401, "unauthorized").await;
    let wrong = app
        .client
        .post(app.url("/v1/uploads"))
        .bearer_auth("ak_not-a-key")
        .json(&json!({"kind": "default", "filename": "a.png"}))
        .send()
        .await
        .expect("POST");
    assert_problem(wrong, 401, "unauthorized").await;
    let basic = app.client.get(app.url("/v1/files")).header("authorization", format!("Basic {}", app.api_key)).send().await.expect("GET");
    assert_problem(basic, 401, "unauthorized").await;
    for path in ["/v1/files", "/v1/events", &format!("/v1/files/{}", uuid::Uuid::now_v7())] {
        assert_problem(app.get(path).await, 401, "unauthorized").await;
    }
    // A key created with the CLI works.
    let key = app.create_key("default");
    assert_eq!(app.list("", &key).await.status(), 200);
}

#[tokio::test]
async fn tampered_upload_urls_are_refused_with_403_and_the_genuine_one_still_works() {
    let app = TestApp::spawn().await;
    let created = app.create_upload_ok(json!({"kind": "default", "filename": "a.png", "size": 500})).await;
    let id = file_id(&created);
    let other = app.create_upload_ok(json!({"kind": "default", "filename": "b.png", "size": 500})).await;
    let other_id = file_id(&other);
    let url = created["upload"]["url"].as_str().expect("url").to_owned();
    let bytes = png(b"genuine");

    let sig = param(&url, "sig");
    let flipped = {
        let mut c: Vec<char> = sig.chars().collect();
        c[0] = if c[0] == 'A' { 'B' } else { 'A' };
        c.into_iter().collect::<String>()
    };
    let exp: i64 = param(&url, "exp").parse().expect("exp");
    let cases = [
        ("one character of sig changed", with_param(&url, "sig", Some(&flipped)), "signature_invalid"),
        ("exp extended", with_param(&url, "exp", Some(&(exp + 3600).to_string())), "signature_invalid"),
        ("max raised", with_param(&url, "max", Some("999999999")), "signature_invalid"),
        ("max removed", with_param(&url, "max", None), "signature_invalid"),
        ("another file's id", url.replace(&id, &other_id), "signature_invalid"),
        ("an unknown file id", url.replace(&id, &uuid::Uuid::now_v7().to_string()), "signature_invalid"),
        ("a content type added", format!("{url}&ct=text%2Fhtml"), "signature_invalid"),
        ("an unknown parameter", format!("{url}&admin=1"), "signature_invalid"),
        ("sig repeated", format!("{url}&sig={sig}"), "signature_invalid"),
        ("sig removed", with_param(&url, "sig", None), "signature_missing"),
        ("exp removed", with_param(&url, "exp", None), "signature_missing"),
        ("no query at all", url.split('?').next().expect("base").to_owned(), "signature_missing"),
    ];
    for (what, tampered, code) in &cases {
        let res = app.client.put(tampered).body(bytes.clone()).send().await.expect("PUT");
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        assert_eq!(status, 403, "{what}: {tampered} answered {body}");
        let v: Value = serde_json::from_str(&body).expect("problem JSON");
        assert_eq!(v["code"], *code, "{what}: {body}");
    }
    // An upload URL is not a download URL.
    let res = app.client.get(&url).send().await.expect("GET");
    assert_problem(res, 403, "signature_invalid").await;

    // None of that consumed either file.
    assert_eq!(app.file(&id).await["status"], "pending");
    assert_eq!(app.file(&other_id).await["status"], "pending");
    assert!(app.stored_objects("quarantine").is_empty());

    let res = app.put_bytes(&created, bytes.clone()).await;
    assert_eq!(res.status(), 200);
    let again = app.put_bytes(&created, png(b"second attempt")).await;
    assert_problem(again, 409, "already_uploaded").await;
    let f = app.wait_for_status(&id, &["promoted"]).await;
    assert_eq!(f["sha256"], crate::helpers::sha256_hex(&bytes), "the second PUT replaced the bytes");
    let again = app.put_bytes(&created, png(b"third attempt")).await;
    assert_problem(again, 409, "already_uploaded").await;
    assert_eq!(app.download(&id).await, bytes);
}

#[tokio::test]
async fn tampered_download_urls_are_refused_with_403() {
    let app = TestApp::spawn().await;
    let a = app.upload_ok("default", "a.png", None, png(b"a")).await;
    let b = app.upload_ok("default", "b.png", None, png(b"b")).await;
    app.wait_for_status(&a, &["promoted"]).await;
    app.wait_for_status(&b, &["promoted"]).await;
    let url = app.download_url(&a).await;
    let exp: i64 = param(&url, "exp").parse().expect("exp");
    for (what, tampered, code) in [
        ("another file's id", url.replace(&a, &b), "signature_invalid"),
        ("exp extended", with_param(&url, "exp", Some(&(exp + 1).to_string())), "signature_invalid"),
        ("a variant added", format!("{url}&var=thumb"), "signature_invalid"),
        ("sig removed", with_param(&url, "sig", None), "signature_missing"),
    ] {
        let res = app.client.get(&tampered).send().await.expect("GET");
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        assert_eq!(status, 403, "{what}: {body}");
        assert!(body.contains(code), "{what}: {body}");
    }
    // A download URL cannot upload.
    let res = app.client.put(&url).body(png(b"evil")).send().await.expect("PUT");
    assert_problem(res, 403, "signature_invalid").await;
}

#[tokio::test]
async fn signed_url_signatures_never_reach_the_logs() {
    let app = TestApp::spawn().await;
    let created = app.create_upload_ok(json!({"kind": "default", "filename": "a.png"})).await;
    let id = file_id(&created);
    let put_sig = param(created["upload"]["url"].as_str().expect("url"), "sig");
    assert_eq!(app.put_bytes(&created, png(b"log")).await.status(), 200);
    app.wait_for_status(&id, &["promoted"]).await;
    let url = app.download_url(&id).await;
    let get_sig = param(&url, "sig");
    assert_eq!(app.client.get(&url).send().await.expect("GET").status(), 200);
    // The requests were logged (by path), the credentials were not.
    let logs = app.logs();
    assert!(logs.iter().any(|l| l.contains(&format!("/v1/blobs/{id}"))), "the byte requests were not logged at all");
    for sig in [&put_sig, &get_sig] {
        assert!(!logs.iter().any(|l| l.contains(sig.as_str())), "a URL signature was logged");
    }
    assert!(!logs.iter().any(|l| l.contains(&app.api_key)), "the API key was logged");
}

#[tokio::test]
async fn every_response_carries_a_correlation_id() {
    let app = TestApp::spawn().await;
    for path in ["/healthz", "/v1/files", "/no/such/route"] {
        let res = app.get(path).await;
        let id = res.headers().get("x-correlation-id").unwrap_or_else(|| panic!("no X-Correlation-Id on {path}")).to_str().expect("ASCII").to_owned();
        assert!(!id.is_empty());
    }
    let a = app.get("/healthz").await;
    let b = app.get("/healthz").await;
    assert_ne!(a.headers()["x-correlation-id"], b.headers()["x-correlation-id"], "a fresh id for each request");
    let echoed = app.client.get(app.url("/healthz")).header("x-correlation-id", "my-id-123").send().await.expect("GET");
    assert_eq!(echoed.headers()["x-correlation-id"], "my-id-123");
    // An unusable one (too long) is replaced, not echoed.
    let long = "x".repeat(300);
    let replaced = app.client.get(app.url("/healthz")).header("x-correlation-id", &long).send().await.expect("GET");
    let got = replaced.headers()["x-correlation-id"].to_str().expect("ASCII");
    assert!(!got.is_empty() && got != long);
    assert_problem(app.get("/no/such/route").await, 404, "not_found").await;
}

#[tokio::test]
async fn an_invalid_traceparent_is_not_propagated() {
    let app = TestApp::spawn().await;
    let res = app
        .create_upload_with(
            json!({"kind": "default", "filename": "a.png"}),
            &[("traceparent", "00-00000000000000000000000000000000-0000000000000000-01")],
        )
        .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.expect("JSON");
    let events = app.events(&file_id(&created)).await;
    assert_eq!(events.len(), 1);
    assert!(events[0].get("traceparent").is_none_or(Value::is_null), "an all-zero traceparent was kept: {}", events[0]);
}

/// Uploads must keep bytes coming; one at a time per tenant.
const STRICT: &str = "upload_idle_timeout = \"1s\"\nmax_concurrent_uploads = 1\n";

#[tokio::test]
async fn a_stalled_upload_is_cut_off_and_holds_its_tenants_slot_until_then() {
    let app = TestApp::spawn_with_config(STRICT).await;
    let stalled = app.create_upload_ok(json!({"kind": "default", "filename": "slow.png"})).await;
    let stalled_id = file_id(&stalled);
    let other = app.create_upload_ok(json!({"kind": "default", "filename": "next.png"})).await;
    let other_id = file_id(&other);

    // A slowloris: a few bytes, then nothing.
    let mut conn = crate::helpers::start_chunked_put(&app, stalled["upload"]["url"].as_str().expect("url"), &png(b"slow")[..16]).await;
    // Wait until the server has taken the slot for it: a probe that may never store anything
    // (1 byte allowed, 2 sent without a Content-Length) answers 413 while the slot is free and
    // 429 once it is taken.
    let probe = app.create_upload_ok(json!({"kind": "default", "filename": "probe.png", "size": 1})).await;
    let probe_url = probe["upload"]["url"].as_str().expect("url").to_owned();
    let start = std::time::Instant::now();
    loop {
        let body = reqwest::Body::wrap_stream(futures::stream::iter([Ok::<_, std::io::Error>(vec![1u8, 2])]));
        let res = crate::helpers::client().put(&probe_url).body(body).send().await.expect("probe PUT");
        match res.status().as_u16() {
            429 => break,
            413 => {}
            other => panic!("the probe got {other}"),
        }
        assert!(start.elapsed() < crate::helpers::DEADLINE, "the stalled upload never took its slot");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // While it holds the tenant's only slot, another upload of the tenant must wait.
    let busy = app.put_bytes(&other, png(b"next")).await;
    assert!(busy.headers().get("retry-after").is_some(), "429 without Retry-After");
    assert_problem(busy, 429, "too_many_uploads").await;

    let head = tokio::time::timeout(std::time::Duration::from_secs(30), crate::helpers::read_response_head(&mut conn))
        .await
        .expect("the stalled upload was never cut off");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(app.file(&stalled_id).await["status"], "pending", "a cut-off upload leaves the file waiting");
    assert!(app.stored_objects("quarantine").is_empty(), "the partial bytes were left behind");

    // The slot is free again, and the cut-off file can still get its bytes.
    assert_eq!(app.put_bytes(&other, png(b"next")).await.status(), 200);
    assert_eq!(app.put_bytes(&stalled, png(b"slow")).await.status(), 200);
    app.wait_for_status(&stalled_id, &["promoted"]).await;
    app.wait_for_status(&other_id, &["promoted"]).await;
}

#[tokio::test]
async fn an_api_key_over_its_rate_limit_is_told_to_retry_later() {
    let app = TestApp::spawn_with_config("rate_limit = 2\n").await;
    let other = app.other_tenant_key();
    let mut limited = None;
    for _ in 0..20 {
        let res = app.list("", &app.api_key).await;
        if res.status() == 429 {
            limited = Some(res);
            break;
        }
        assert_eq!(res.status(), 200);
    }
    let res = limited.expect("20 requests in a row were never limited at 2 a second");
    let retry: u64 = res.headers()["retry-after"].to_str().expect("ASCII").parse().expect("seconds");
    assert!(retry >= 1, "Retry-After {retry}");
    assert_problem(res, 429, "rate_limited").await;
    // Another key has its own budget.
    assert_eq!(app.list("", &other).await.status(), 200);
}
