//! The happy path: request an upload, PUT the bytes, watch the pipeline promote them, download.

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, file_id, png, random_token, random_traceparent, sha256_hex};

fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers().get(name).unwrap_or_else(|| panic!("no {name} header in {:?}", res.headers())).to_str().expect("ASCII header").to_owned()
}

#[tokio::test]
async fn a_png_upload_is_promoted_and_downloads_byte_for_byte() {
    let app = TestApp::spawn().await;
    let bytes = png(&[7u8; 300]);
    let correlation = format!("happy-{}", random_token());
    let traceparent = random_traceparent();

    let res = app
        .create_upload_with(
            json!({"kind": "default", "filename": "photo.png", "content_type": "image/png",
                   "size": bytes.len(), "user_id": "u-1", "metadata": {"album": "summer"}}),
            &[("x-correlation-id", &correlation), ("traceparent", &traceparent)],
        )
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(header(&res, "x-correlation-id"), correlation);
    let created: Value = res.json().await.expect("JSON");
    let id = file_id(&created);
    assert_eq!(created["status"], "pending");
    let upload = &created["upload"];
    assert_eq!(upload["method"], "PUT");
    let url = upload["url"].as_str().expect("url");
    assert!(url.starts_with(&app.url(&format!("/v1/blobs/{id}?"))), "the upload URL {url} is not under the public URL");
    assert!(url.contains("sig="), "the upload URL {url} is not signed");
    assert_eq!(upload["headers"]["Content-Type"], "image/png");
    assert_eq!(upload["max_bytes"], bytes.len(), "a declared size caps the upload");
    assert!(upload["expires_at"].is_string(), "no expires_at in {upload}");

    let put = app.put_bytes(&created, bytes.clone()).await;
    assert_eq!(put.status(), 200);
    let put: Value = put.json().await.expect("JSON");
    assert_eq!(put["status"], "uploaded");
    assert_eq!(put["bytes"], bytes.len());
    assert_eq!(put["sha256"], sha256_hex(&bytes));

    let file = app.wait_for_status(&id, &["promoted", "quarantined"]).await;
    assert_eq!(file["status"], "promoted", "{file}");
    assert_eq!(file["file_id"], id.as_str());
    assert_eq!(file["kind"], "default");
    assert_eq!(file["filename"], "photo.png");
    assert_eq!(file["declared_type"], "image/png");
    assert_eq!(file["detected_type"], "image/png");
    assert_eq!(file["bytes"], bytes.len());
    assert_eq!(file["sha256"], sha256_hex(&bytes));
    assert_eq!(file["user_id"], "u-1");
    assert_eq!(file["metadata"], json!({"album": "summer"}));
    assert_eq!(file["correlation_id"], correlation.as_str());
    assert!(file.get("reason").is_none(), "a promoted file has no reason: {file}");

    assert_eq!(app.download(&id).await, bytes, "downloaded bytes differ");
}

#[tokio::test]
async fn every_event_of_the_chain_carries_the_requests_correlation_id_and_traceparent() {
    let app = TestApp::spawn().await;
    let bytes = png(b"chain");
    let correlation = format!("chain-{}", random_token());
    let traceparent = random_traceparent();
    let created: Value = app
        .create_upload_with(
            json!({"kind": "default", "filename": "chain.png", "content_type": "image/png"}),
            &[("X-Correlation-Id", &correlation), ("traceparent", &traceparent)],
        )
        .await
        .json()
        .await
        .expect("JSON");
    let id = file_id(&created);
    // The PUT is another request with its own correlation id: the chain keeps the first.
    let put = app.put_bytes(&created, bytes.clone()).await;
    assert_eq!(put.status(), 200);
    assert_ne!(header(&put, "x-correlation-id"), correlation);
    app.wait_for_status(&id, &["promoted"]).await;

    let events = app.wait_for_event(&id, "resource.ready").await;
    let types: Vec<&str> = events.iter().map(|e| e["event_type"].as_str().unwrap_or_default()).collect();
    assert_eq!(
        types,
        ["upload.requested", "file.uploaded", "validation.started", "validation.passed", "file.promoted", "resource.ready"],
        "the event chain of a promoted file"
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["correlation_id"], correlation.as_str(), "event {e}");
        assert_eq!(e["traceparent"], traceparent.as_str(), "event {e}");
        assert_eq!(e["subject"], id.as_str(), "event {e}");
        assert_eq!(e["tenant"], "default", "event {e}");
        assert_eq!(e["source"], "airlock", "event {e}");
        assert_eq!(e["payload"]["file_id"], id.as_str(), "event {e}");
        // A straight chain: each event was caused by the one before it.
        let cause = if i == 0 { Value::Null } else { events[i - 1]["event_id"].clone() };
        assert_eq!(e["causation_id"], cause, "causation of {e}");
    }
    let promoted = &events[4]["payload"];
    assert_eq!(promoted["mime"], "image/png");
    assert_eq!(promoted["sha256"], sha256_hex(&bytes));
    assert_eq!(promoted["bytes"], bytes.len());
    assert_eq!(events[1]["payload"]["sha256"], sha256_hex(&bytes));
}

#[tokio::test]
async fn a_download_is_served_with_safe_headers_etag_and_ranges() {
    let app = TestApp::spawn().await;
    let bytes = png(&(0..=255u8).collect::<Vec<_>>());
    let id = app.upload_ok("default", "photo.png", Some("image/png"), bytes.clone()).await;
    app.wait_for_status(&id, &["promoted"]).await;
    let url = app.download_url(&id).await;

    let full = app.client.get(&url).send().await.expect("GET");
    assert_eq!(full.status(), 200);
    let etag = header(&full, "etag");
    assert_eq!(etag, format!("\"{}\"", sha256_hex(&bytes)));
    assert_eq!(header(&full, "content-type"), "image/png");
    assert_eq!(header(&full, "x-content-type-options"), "nosniff");
    assert!(header(&full, "content-security-policy").contains("sandbox"), "CSP must sandbox downloads");
    assert_eq!(header(&full, "content-disposition"), "attachment; filename=\"photo.png\"; filename*=UTF-8''photo.png");
    assert_eq!(header(&full, "accept-ranges"), "bytes");
    assert_eq!(header(&full, "content-length"), bytes.len().to_string());
    assert!(!header(&full, "x-correlation-id").is_empty());
    assert_eq!(full.bytes().await.expect("body").to_vec(), bytes);

    let part = app.client.get(&url).header("range", "bytes=8-23").send().await.expect("GET range");
    assert_eq!(part.status(), 206);
    assert_eq!(header(&part, "content-range"), format!("bytes 8-23/{}", bytes.len()));
    assert_eq!(header(&part, "content-length"), "16");
    assert_eq!(header(&part, "etag"), etag);
    assert_eq!(part.bytes().await.expect("body").to_vec(), &bytes[8..24]);

    let suffix = app.client.get(&url).header("range", "bytes=-4").send().await.expect("GET suffix");
    assert_eq!(suffix.status(), 206);
    assert_eq!(suffix.bytes().await.expect("body").to_vec(), &bytes[bytes.len() - 4..]);

    let cached = app.client.get(&url).header("if-none-match", &etag).send().await.expect("GET conditional");
    assert_eq!(cached.status(), 304);
    assert_eq!(header(&cached, "etag"), etag);
    assert!(cached.bytes().await.expect("body").is_empty());

    // A range computed for another representation is ignored: the whole file comes back.
    let stale = app.client.get(&url).header("range", "bytes=0-3").header("if-range", "\"someotheretag\"").send().await.expect("GET if-range");
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.bytes().await.expect("body").len(), bytes.len());
}

#[tokio::test]
async fn a_range_past_the_end_is_a_416_problem_naming_the_length() {
    let app = TestApp::spawn().await;
    let bytes = png(b"range");
    let id = app.upload_ok("default", "photo.png", Some("image/png"), bytes.clone()).await;
    app.wait_for_status(&id, &["promoted"]).await;
    let url = app.download_url(&id).await;
    let past = app.client.get(&url).header("range", format!("bytes={}-", bytes.len() + 10)).send().await.expect("GET past the end");
    assert_eq!(header(&past, "content-range"), format!("bytes */{}", bytes.len()));
    // The body is a JSON problem, so it must not be labelled (or offered as an attachment) as
    // the file's own type.
    assert!(past.headers().get("content-disposition").is_none(), "a 416 problem is not an attachment: {:?}", past.headers());
    assert_problem(past, 416, "range_not_satisfiable").await;
}

#[tokio::test]
async fn a_hostile_filename_is_sanitised_in_the_record_and_the_content_disposition() {
    let app = TestApp::spawn().await;
    let bytes = png(b"name");
    let id = app.upload_ok("default", "../../etc/r\u{e9}sum\u{e9} \"1\"\r\nSet-Cookie: x=1;.png", Some("image/png"), bytes).await;
    let file = app.wait_for_status(&id, &["promoted", "quarantined"]).await;
    assert_eq!(file["status"], "promoted", "{file}");
    let name = file["filename"].as_str().expect("filename");
    assert!(!name.contains('/') && !name.contains("..") && !name.contains('\r') && !name.contains('\n'), "unsanitised filename {name:?}");
    assert!(name.ends_with(".png"), "{name:?}");

    let url = app.download_url(&id).await;
    let res = app.client.get(&url).send().await.expect("GET");
    assert_eq!(res.status(), 200);
    let cd = header(&res, "content-disposition");
    assert!(cd.starts_with("attachment; filename=\""), "{cd}");
    assert!(cd.contains("filename*=UTF-8''"), "{cd}");
    assert!(cd.contains("r%C3%A9sum%C3%A9"), "the UTF-8 name is percent-encoded: {cd}");
    let fallback = cd.trim_start_matches("attachment; filename=\"").split('"').next().expect("fallback name");
    assert!(fallback.is_ascii(), "{cd}");
    assert!(!fallback.contains('\\'), "{cd}");
    // Exactly the two parameters: nothing was injected.
    assert_eq!(cd.matches("filename").count(), 2, "{cd}");
}

#[tokio::test]
async fn an_upload_without_a_declared_type_is_sniffed_and_promoted() {
    let app = TestApp::spawn().await;
    let bytes = crate::helpers::jpeg();
    let id = app.upload_ok("default", "cat.jpg", None, bytes.clone()).await;
    let file = app.wait_for_status(&id, &["promoted", "quarantined"]).await;
    assert_eq!(file["status"], "promoted", "{file}");
    assert_eq!(file["detected_type"], "image/jpeg");
    assert_eq!(file["declared_type"], Value::Null);
    assert_eq!(app.download(&id).await, bytes);
}

#[tokio::test]
async fn malformed_upload_requests_are_refused_with_stable_codes() {
    let app = TestApp::spawn().await;
    assert_problem(app.create_upload(json!({"kind": "nope", "filename": "a.png"})).await, 422, "unknown_kind").await;
    assert_problem(app.create_upload(json!({"kind": "default", "filename": "   "})).await, 422, "invalid_filename").await;
    let big = "x".repeat(5000);
    assert_problem(app.create_upload(json!({"kind": "default", "filename": "a.png", "metadata": {"big": big}})).await, 422, "metadata_too_large")
        .await;
    assert_problem(app.create_upload(json!({"kind": "default", "filename": "a.png", "metadata": [1, 2]})).await, 422, "invalid_metadata").await;
    assert_problem(app.create_upload(json!({"kind": "default", "filename": "a.png", "content_type": "text/html"})).await, 422, "type_not_allowed")
        .await;
    assert_problem(app.create_upload(json!({"kind": "default", "filename": "a.png", "colour": "red"})).await, 422, "invalid_json").await;
    // None of them left a file behind.
    let list: Value = app.list("", &app.api_key).await.json().await.expect("JSON");
    assert_eq!(list["items"], json!([]), "refused requests created files");
}

#[tokio::test]
async fn of_two_concurrent_puts_to_one_upload_url_exactly_one_wins() {
    let app = TestApp::spawn().await;
    let created = app.create_upload_ok(json!({"kind": "default", "filename": "race.png", "content_type": "image/png"})).await;
    let id = file_id(&created);
    let (a, b) = (png(b"first contender"), png(b"second contender"));
    let (ra, rb) = tokio::join!(app.put_bytes(&created, a.clone()), app.put_bytes(&created, b.clone()));
    let (sa, sb) = (ra.status().as_u16(), rb.status().as_u16());
    let winner = match (sa, sb) {
        (200, 409) => {
            assert_problem(rb, 409, "already_uploaded").await;
            a
        }
        (409, 200) => {
            assert_problem(ra, 409, "already_uploaded").await;
            b
        }
        other => panic!("two PUTs of one upload answered {other:?}"),
    };
    let f = app.wait_for_status(&id, &["promoted", "quarantined"]).await;
    assert_eq!(f["status"], "promoted", "{f}");
    assert_eq!(f["sha256"], sha256_hex(&winner), "the record is not the winner's");
    assert_eq!(app.download(&id).await, winner, "the stored bytes are not the winner's");
    // The loser's bytes were not left behind in quarantine.
    assert!(app.stored_objects(&format!("quarantine/default/{id}")).is_empty());
    let types = app.event_types(&id).await;
    assert_eq!(types.iter().filter(|t| *t == "file.uploaded").count(), 1, "{types:?}");
}

#[tokio::test]
async fn complete_says_whether_the_bytes_are_in() {
    let app = TestApp::spawn().await;
    let created = app.create_upload_ok(json!({"kind": "default", "filename": "c.png"})).await;
    let id = file_id(&created);
    let complete = || async { app.client.post(app.url(&format!("/v1/files/{id}/complete"))).bearer_auth(&app.api_key).send().await.expect("POST") };
    assert_problem(complete().await, 409, "upload_incomplete").await;
    assert_eq!(app.put_bytes(&created, png(b"c")).await.status(), 200);
    let res = complete().await;
    assert_eq!(res.status(), 200);
    let f: Value = res.json().await.expect("JSON");
    assert_eq!(f["file_id"], id.as_str());
    assert_ne!(f["status"], "pending");
    // Harmless: it starts nothing twice.
    app.wait_for_status(&id, &["promoted"]).await;
    assert_eq!(complete().await.status(), 200);
    let types = app.event_types(&id).await;
    assert_eq!(types.iter().filter(|t| *t == "file.uploaded").count(), 1, "{types:?}");
}
