//! A file's life after the happy path: expiry of unused upload URLs, deletion, listing.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::helpers::{DEADLINE, TestApp, assert_problem, file_id, png};

const CONFIG: &str = r#"
[kinds.ephemeral]
max_bytes = 10000
allowed_types = ["image/*"]
upload_ttl = "1s"
"#;

/// The `exp` (Unix seconds) of a signed URL.
fn url_exp(url: &str) -> i64 {
    let url = reqwest::Url::parse(url).expect("URL");
    url.query_pairs().find(|(k, _)| k == "exp").expect("exp parameter").1.parse().expect("numeric exp")
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// Waits until the wall clock is past a signed URL's last valid second.
async fn wait_until_past(exp: i64) {
    let start = Instant::now();
    while now_unix() <= exp {
        assert!(start.elapsed() < DEADLINE, "the clock did not pass {exp} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_upload_that_never_gets_its_bytes_expires_and_is_cleaned_up() {
    let app = TestApp::spawn_with_config(CONFIG).await;
    let created = app.create_upload_ok(json!({"kind": "ephemeral", "filename": "late.png", "user_id": "u-9"})).await;
    let id = file_id(&created);
    let file = app.wait_for_status(&id, &["expired"]).await;
    assert_eq!(file["bytes"], Value::Null);

    let events = app.wait_for_event(&id, "cleanup.initiated").await;
    let types: Vec<&str> = events.iter().map(|e| e["event_type"].as_str().unwrap_or_default()).collect();
    assert_eq!(types, ["upload.requested", "upload.expired", "cleanup.initiated"]);
    assert_eq!(events[1]["payload"]["user_id"], "u-9");
    assert_eq!(events[1]["payload"]["kind"], "ephemeral");
    assert_eq!(events[1]["causation_id"], events[0]["event_id"]);
    assert_eq!(events[2]["causation_id"], events[1]["event_id"]);
    assert_eq!(events[2]["payload"]["cause"], "expired");

    assert_problem(app.download_response(&id, &app.api_key).await, 409, "not_promoted").await;
}

#[tokio::test]
async fn a_put_after_the_upload_url_expired_is_refused_with_signature_expired() {
    let app = TestApp::spawn_with_config(CONFIG).await;
    let created = app.create_upload_ok(json!({"kind": "ephemeral", "filename": "late.png", "content_type": "image/png"})).await;
    let id = file_id(&created);
    let url = created["upload"]["url"].as_str().expect("url");
    wait_until_past(url_exp(url)).await;
    let res = app.put_bytes(&created, png(b"too late")).await;
    assert_problem(res, 403, "signature_expired").await;
    let file = app.wait_for_status(&id, &["expired"]).await;
    assert_eq!(file["sha256"], Value::Null, "late bytes were recorded: {file}");
    assert!(app.stored_objects("").iter().all(|p| !p.to_string_lossy().contains(&id)));
}

#[tokio::test]
async fn an_upload_that_arrived_in_time_does_not_expire() {
    let app = TestApp::spawn_with_config(CONFIG).await;
    let created = app.create_upload_ok(json!({"kind": "ephemeral", "filename": "quick.png", "content_type": "image/png"})).await;
    let id = file_id(&created);
    let res = app.put_bytes(&created, png(b"quick")).await;
    assert_eq!(res.status(), 200);
    app.wait_for_status(&id, &["promoted"]).await;
    // Well past the TTL, the file is still promoted and no expiry happened.
    wait_until_past(url_exp(created["upload"]["url"].as_str().expect("url")) + 1).await;
    let f = app.file(&id).await;
    assert_eq!(f["status"], "promoted");
    let types = app.event_types(&id).await;
    assert!(!types.iter().any(|t| t == "upload.expired"), "{types:?}");
}

#[tokio::test]
async fn deleting_a_promoted_file_removes_its_bytes_and_records_the_cleanup() {
    let app = TestApp::spawn().await;
    let bytes = png(b"delete me");
    let id = app.upload_ok("default", "gone.png", Some("image/png"), bytes.clone()).await;
    app.wait_for_status(&id, &["promoted"]).await;
    let old_url = app.download_url(&id).await;
    assert_eq!(app.stored_objects(&format!("files/default/{id}")).len(), 1, "a promoted file is stored under files/<tenant>/<id>");
    assert!(!app.data_dir().join(format!("objects/quarantine/default/{id}")).exists(), "the file's quarantine directory outlived its promotion");

    let res = app
        .client
        .delete(app.url(&format!("/v1/files/{id}")))
        .bearer_auth(&app.api_key)
        .header("x-correlation-id", "delete-request")
        .send()
        .await
        .expect("DELETE");
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(body["status"], "deleted");
    assert_eq!(body["file_id"], id.as_str());

    assert_eq!(app.file(&id).await["status"], "deleted");
    assert_problem(app.download_response(&id, &app.api_key).await, 409, "not_promoted").await;
    // A download URL handed out before the deletion no longer serves anything.
    let res = app.client.get(&old_url).send().await.expect("GET");
    assert_problem(res, 404, "not_found").await;

    let events = app.wait_for_event(&id, "cleanup.initiated").await;
    let deleted = events.iter().find(|e| e["event_type"] == "file.deleted").expect("a file.deleted event");
    assert_eq!(deleted["payload"]["cause"], "user");
    assert_eq!(deleted["correlation_id"], "delete-request");
    let cleanup = events.iter().find(|e| e["event_type"] == "cleanup.initiated").expect("cleanup");
    assert_eq!(cleanup["causation_id"], deleted["event_id"]);
    assert_eq!(cleanup["payload"]["cause"], "deleted");
    assert!(cleanup["payload"]["objects"].as_u64().unwrap_or(0) >= 1, "the cleanup removed no object: {cleanup}");
    assert!(app.stored_objects(&format!("files/default/{id}")).is_empty(), "the promoted bytes are still on disk");
    assert!(app.stored_objects(&format!("quarantine/default/{id}")).is_empty(), "quarantined bytes are still on disk");

    // Deleting again changes nothing.
    assert_eq!(app.delete_file(&id, &app.api_key).await.status(), 202);
    let types = app.event_types(&id).await;
    assert_eq!(types.iter().filter(|t| *t == "file.deleted").count(), 1, "{types:?}");
}

#[tokio::test]
async fn deleting_a_quarantined_file_removes_its_quarantined_bytes() {
    let app = TestApp::spawn().await;
    let id = app.upload_ok("default", "page.html", None, crate::helpers::html()).await;
    app.wait_for_status(&id, &["quarantined"]).await;
    assert_eq!(app.stored_objects(&format!("quarantine/default/{id}")).len(), 1);
    assert_eq!(app.delete_file(&id, &app.api_key).await.status(), 202);
    let events = app.wait_for_event(&id, "cleanup.initiated").await;
    let cleanup = events.iter().find(|e| e["event_type"] == "cleanup.initiated").expect("cleanup");
    assert_eq!(cleanup["payload"]["objects"], 1, "{cleanup}");
    assert!(app.stored_objects(&format!("quarantine/default/{id}")).is_empty(), "quarantined bytes survived the deletion");
    assert_eq!(app.file(&id).await["status"], "deleted");
}

#[tokio::test]
async fn a_pending_file_that_was_deleted_no_longer_accepts_bytes() {
    let app = TestApp::spawn().await;
    let created = app.create_upload_ok(json!({"kind": "default", "filename": "never.png"})).await;
    let id = file_id(&created);
    assert_eq!(app.delete_file(&id, &app.api_key).await.status(), 202);
    let res = app.put_bytes(&created, png(b"after delete")).await;
    assert_problem(res, 404, "not_found").await;
    assert_eq!(app.file(&id).await["status"], "deleted");
    app.wait_for_event(&id, "cleanup.initiated").await;
    assert!(app.stored_objects("").iter().all(|p| !p.to_string_lossy().contains(&id)));
}

#[tokio::test]
async fn deleting_an_unknown_file_is_a_404() {
    let app = TestApp::spawn().await;
    let id = uuid::Uuid::now_v7();
    assert_problem(app.delete_file(&id.to_string(), &app.api_key).await, 404, "not_found").await;
    assert_problem(app.delete_file("not-a-uuid", &app.api_key).await, 404, "not_found").await;
}

#[tokio::test]
async fn the_file_list_pages_newest_first_through_next_cursor() {
    let app = TestApp::spawn().await;
    let mut created = Vec::new();
    for i in 0..5 {
        let c = app.create_upload_ok(json!({"kind": "default", "filename": format!("f{i}.png"), "user_id": "pager"})).await;
        created.push(file_id(&c));
    }
    // Another user's file, to check the filter.
    app.create_upload_ok(json!({"kind": "default", "filename": "x.png", "user_id": "someone-else"})).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let mut q = "user_id=pager&limit=2".to_owned();
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let res = app.list(&q, &app.api_key).await;
        assert_eq!(res.status(), 200);
        let page: Value = res.json().await.expect("JSON");
        let items = page["items"].as_array().expect("items").clone();
        pages.push(items.len());
        for f in &items {
            assert_eq!(f["user_id"], "pager");
            assert_eq!(f["status"], "pending");
            seen.push(f["file_id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages.len() < 10, "the cursor never ends");
    }
    assert_eq!(pages, [2, 2, 1]);
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a file appeared twice: {seen:?}");
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    // Filters: kind and status combine; an exhausted filter is an empty page.
    let all: Value = app.list("kind=default&status=pending&limit=200", &app.api_key).await.json().await.expect("JSON");
    assert_eq!(all["items"].as_array().expect("items").len(), 6);
    assert_eq!(all["next_cursor"], Value::Null);
    let none: Value = app.list("status=promoted", &app.api_key).await.json().await.expect("JSON");
    assert_eq!(none["items"], json!([]));
}

#[tokio::test]
async fn bad_list_queries_are_400_problems() {
    let app = TestApp::spawn().await;
    assert_problem(app.list("limit=0", &app.api_key).await, 400, "invalid_query").await;
    assert_problem(app.list("limit=201", &app.api_key).await, 400, "invalid_query").await;
    assert_problem(app.list("status=lost", &app.api_key).await, 400, "invalid_query").await;
    assert_problem(app.list("cursor=abc", &app.api_key).await, 400, "invalid_cursor").await;
    assert_problem(app.list("colour=red", &app.api_key).await, 400, "invalid_query").await;
}
