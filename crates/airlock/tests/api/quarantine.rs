//! Files that fail a check: refused at the door (413, 415, 422) or quarantined by the pipeline
//! with a stable reason, never downloadable.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestApp, assert_problem, file_id, html, jpeg, png, read_response_head, text};

/// `avatar`: small images only.
const CONFIG: &str = r#"
[kinds.avatar]
max_bytes = 1000
allowed_types = ["image/png", "image/jpeg"]
"#;

/// Asserts a file was quarantined for `reason` and that nothing of it can be downloaded.
async fn assert_quarantined(app: &TestApp, id: &str, reason: &str) -> Value {
    let file = app.wait_for_status(id, &["promoted", "quarantined"]).await;
    assert_eq!(file["status"], "quarantined", "{file}");
    assert_eq!(file["reason"], reason, "{file}");
    assert!(file["reason_detail"].as_str().is_some_and(|d| !d.is_empty()), "a quarantined file explains why: {file}");
    assert_problem(app.download_response(id, &app.api_key).await, 409, "not_promoted").await;

    let events = app.events(id).await;
    let types: Vec<&str> = events.iter().map(|e| e["event_type"].as_str().unwrap_or_default()).collect();
    assert_eq!(
        types,
        ["upload.requested", "file.uploaded", "validation.started", "validation.failed", "file.quarantined", "resource.rejected"],
        "the event chain of a quarantined file"
    );
    assert_eq!(events[4]["payload"]["reason"], reason);
    assert_eq!(events[5]["payload"]["reason"], reason);
    assert_eq!(events[5]["causation_id"], events[4]["event_id"]);

    // The bytes stay in quarantine; nothing reaches the servable area.
    assert!(app.stored_objects(&format!("files/default/{id}")).is_empty(), "a quarantined file's bytes were promoted");
    assert_eq!(app.stored_objects(&format!("quarantine/default/{id}")).len(), 1, "a quarantined file's bytes are kept in quarantine");
    file
}

#[tokio::test]
async fn a_streamed_upload_without_content_length_over_max_bytes_is_refused_with_413() {
    let app = TestApp::spawn_with_config(CONFIG).await;
    let created = app.create_upload_ok(json!({"kind": "avatar", "filename": "big.png", "content_type": "image/png"})).await;
    let id = file_id(&created);
    assert_eq!(created["upload"]["max_bytes"], 1000);
    let url = created["upload"]["url"].as_str().expect("url");
    // 10 chunks of 512 bytes, sent chunked: the server only learns the size by counting.
    let chunks = futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![0u8; 512])));
    // Its own client: the server may close this connection (see
    // `a_keep_alive_client_is_told_when_an_early_413_closes_the_connection`).
    let res =
        crate::helpers::client().put(url).header("content-type", "image/png").body(reqwest::Body::wrap_stream(chunks)).send().await.expect("PUT");
    assert_problem(res, 413, "upload_too_large").await;

    // Nothing was kept, and the file still waits for its bytes: the right ones are accepted.
    let f = app.file(&id).await;
    assert_eq!(f["status"], "pending", "{f}");
    assert!(app.stored_objects("quarantine").is_empty(), "partial bytes were left behind");
    let res = app.put_bytes(&created, png(b"small")).await;
    assert_eq!(res.status(), 200);
    let f = app.wait_for_status(&id, &["promoted", "quarantined"]).await;
    assert_eq!(f["status"], "promoted", "{f}");
}

#[tokio::test]
async fn an_oversize_upload_is_refused_before_the_body_has_ended() {
    let app = TestApp::spawn_with_config(CONFIG).await;
    let created = app.create_upload_ok(json!({"kind": "avatar", "filename": "big.png", "content_type": "image/png"})).await;
    let url = reqwest::Url::parse(created["upload"]["url"].as_str().expect("url")).expect("URL");
    let target = format!("{}?{}", url.path(), url.query().expect("query"));
    // A raw HTTP/1.1 client: one 2000-byte chunk, then the body is left open. A server that
    // waited for the end of the body before counting would never answer.
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.expect("connect");
    let head = format!("PUT {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n", app.port);
    conn.write_all(head.as_bytes()).await.expect("write head");
    let mut body = png(b"head");
    body.resize(2000, 0);
    let mut chunk = format!("{:x}\r\n", body.len()).into_bytes();
    chunk.extend(body);
    chunk.extend_from_slice(b"\r\n");
    conn.write_all(&chunk).await.expect("write chunk");
    let read = tokio::time::timeout(Duration::from_secs(30), read_response_head(&mut conn)).await;
    let answer = read.expect("no answer within 30 s while the oversize body was still open");
    assert!(answer.starts_with("HTTP/1.1 413"), "expected 413 before the body ended, got: {answer}");
}

#[tokio::test]
async fn a_keep_alive_client_is_told_when_an_early_413_closes_the_connection() {
    let app = TestApp::spawn_with_config(CONFIG).await;
    let created = app.create_upload_ok(json!({"kind": "avatar", "filename": "big.png"})).await;
    let url = reqwest::Url::parse(created["upload"]["url"].as_str().expect("url")).expect("URL");
    let target = format!("{}?{}", url.path(), url.query().expect("query"));
    // A whole (chunked) oversize request, then a second request on the same connection, as a
    // keep-alive client (reqwest, browsers) does unless the response said `Connection: close`.
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.expect("connect");
    let mut request = format!("PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    for _ in 0..10 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[0u8; 512]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    conn.write_all(&request).await.expect("write PUT");
    let head = tokio::time::timeout(Duration::from_secs(30), read_response_head(&mut conn)).await.expect("an answer to the PUT");
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    if head.contains("\r\nconnection: close") {
        return; // The client was told; it will not reuse the connection.
    }
    // Skip the problem body, then reuse the connection.
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("content-length"))
        .expect("a content-length on the 413");
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await.expect("the 413 body");
    let _ = conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    let next = tokio::time::timeout(Duration::from_secs(30), read_response_head(&mut conn)).await.expect("an answer to the GET");
    assert!(
        next.starts_with("HTTP/1.1 200"),
        "the 413 response did not say `Connection: close`, yet the server dropped the kept-alive connection: the next request got {next:?}"
    );
}

#[tokio::test]
async fn a_content_length_over_the_limit_is_refused_at_once() {
    let app = TestApp::spawn_with_config(CONFIG).await;
    let (_, res) = app.upload("avatar", "big.png", Some("image/png"), vec![0u8; 2000]).await;
    assert_problem(res, 413, "upload_too_large").await;
}

#[tokio::test]
async fn a_declared_size_over_max_bytes_is_refused_when_the_upload_is_requested() {
    let app = TestApp::spawn_with_config(CONFIG).await;
    let res = app.create_upload(json!({"kind": "avatar", "filename": "big.png", "content_type": "image/png", "size": 1001})).await;
    assert_problem(res, 413, "upload_too_large").await;
}

#[tokio::test]
async fn an_upload_may_not_exceed_its_declared_size() {
    let app = TestApp::spawn_with_config(CONFIG).await;
    let created = app.create_upload_ok(json!({"kind": "avatar", "filename": "a.png", "content_type": "image/png", "size": 100})).await;
    assert_eq!(created["upload"]["max_bytes"], 100);
    let res = app.put_bytes(&created, vec![0u8; 200]).await;
    assert_problem(res, 413, "upload_too_large").await;
}

#[tokio::test]
async fn text_declared_as_png_to_an_image_kind_is_quarantined() {
    let app = TestApp::spawn_with_config(CONFIG).await;
    let id = app.upload_ok("avatar", "face.png", Some("image/png"), text()).await;
    // The bytes are text, which the kind does not accept at all: that is checked before the
    // disagreement with the declared type.
    let f = assert_quarantined(&app, &id, "type_not_allowed").await;
    assert_eq!(f["detected_type"], "text/plain");
    assert_eq!(f["declared_type"], "image/png");
}

#[tokio::test]
async fn jpeg_bytes_declared_as_png_are_quarantined_as_a_type_mismatch() {
    let app = TestApp::spawn_with_config(CONFIG).await;
    let id = app.upload_ok("avatar", "face.png", Some("image/png"), jpeg()).await;
    let f = assert_quarantined(&app, &id, "type_mismatch").await;
    assert_eq!(f["detected_type"], "image/jpeg");
}

#[tokio::test]
async fn a_disallowed_declared_type_is_refused_when_the_upload_is_requested() {
    let app = TestApp::spawn_with_config(CONFIG).await;
    let res = app.create_upload(json!({"kind": "avatar", "filename": "notes.txt", "content_type": "text/plain"})).await;
    let p = assert_problem(res, 422, "type_not_allowed").await;
    assert!(p["detail"].as_str().unwrap_or_default().contains("text/plain"), "{p}");
}

#[tokio::test]
async fn undeclared_text_to_an_image_kind_is_quarantined_as_type_not_allowed() {
    let app = TestApp::spawn_with_config(CONFIG).await;
    let id = app.upload_ok("avatar", "face", None, text()).await;
    let f = assert_quarantined(&app, &id, "type_not_allowed").await;
    assert_eq!(f["detected_type"], "text/plain");
}

#[tokio::test]
async fn png_bytes_named_pdf_are_quarantined_as_a_type_mismatch() {
    let app = TestApp::spawn().await;
    let id = app.upload_ok("default", "invoice.pdf", Some("image/png"), png(b"pdf?")).await;
    let f = assert_quarantined(&app, &id, "type_mismatch").await;
    assert_eq!(f["detected_type"], "image/png");
    assert!(f["reason_detail"].as_str().unwrap_or_default().contains("pdf"), "the detail names the extension: {f}");
}

#[tokio::test]
async fn html_in_a_default_kind_upload_is_quarantined_as_active_content() {
    let app = TestApp::spawn().await;
    let id = app.upload_ok("default", "index.html", None, html()).await;
    let f = assert_quarantined(&app, &id, "active_content").await;
    assert_eq!(f["detected_type"], "text/html");
}

#[tokio::test]
async fn html_declared_as_plain_text_is_still_quarantined_as_active_content() {
    let app = TestApp::spawn().await;
    let mut page = b"  \r\n".to_vec();
    page.extend(html());
    let id = app.upload_ok("default", "notes.txt", Some("text/plain"), page).await;
    assert_quarantined(&app, &id, "active_content").await;
}

#[tokio::test]
async fn a_put_with_another_content_type_than_declared_is_refused_with_415() {
    let app = TestApp::spawn_with_config(CONFIG).await;
    let created = app.create_upload_ok(json!({"kind": "avatar", "filename": "a.png", "content_type": "image/png"})).await;
    let url = created["upload"]["url"].as_str().expect("url");
    let res = app.client.put(url).header("content-type", "image/jpeg").body(png(b"x")).send().await.expect("PUT");
    assert_problem(res, 415, "content_type_mismatch").await;
    let res = app.client.put(url).body(png(b"x")).send().await.expect("PUT");
    assert_problem(res, 415, "content_type_mismatch").await;
    // Parameters and case do not matter.
    let res = app.client.put(url).header("content-type", "IMAGE/PNG; charset=binary").body(png(b"x")).send().await.expect("PUT");
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn quarantined_files_are_listed_with_their_status() {
    let app = TestApp::spawn().await;
    let bad = app.upload_ok("default", "index.html", None, html()).await;
    let good = app.upload_ok("default", "ok.png", None, png(b"ok")).await;
    app.wait_for_status(&bad, &["quarantined"]).await;
    app.wait_for_status(&good, &["promoted"]).await;
    let list: Value = app.list("status=quarantined", &app.api_key).await.json().await.expect("JSON");
    let ids: Vec<&str> = list["items"].as_array().expect("items").iter().map(|f| f["file_id"].as_str().unwrap_or_default()).collect();
    assert_eq!(ids, [bad.as_str()]);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_body_leaves_no_bytes_behind() {
    let app = TestApp::spawn().await;
    let created = app.create_upload_ok(serde_json::json!({"kind": "default", "filename": "gone.png"})).await;
    let id = file_id(&created);
    let url = created["upload"]["url"].as_str().expect("url").to_owned();
    let bytes = png(b"half a body");
    let conn = crate::helpers::start_chunked_put(&app, &url, &bytes[..16]).await;
    let quarantine = format!("quarantine/default/{id}");
    let deadline = std::time::Instant::now() + crate::helpers::DEADLINE;
    while app.stored_objects(&quarantine).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the streamed upload never reached the store");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(conn);
    while !app.stored_objects(&quarantine).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the partial object outlived its request: {:?}", app.stored_objects(&quarantine));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The upload is still pending and can be sent again in full.
    assert_eq!(app.file(&id).await["status"], "pending");
    let res = app.put_bytes(&created, bytes.clone()).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap_or_default());
    assert_eq!(app.wait_for_status(&id, &["promoted"]).await["status"], "promoted");
}
