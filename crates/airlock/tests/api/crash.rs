//! Durability: a SIGKILLed server loses nothing it acknowledged.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{TestApp, file_id, png, sha256_hex};

/// Redelivery after a crash waits for the dead worker's lease (30 s) to run out.
const AFTER_CRASH: Duration = Duration::from_secs(120);

#[tokio::test]
async fn every_upload_acknowledged_before_a_kill_is_promoted_after_the_restart() {
    let mut app = TestApp::spawn().await;
    // Six uploads at once, so that the kill lands while the pipeline is busy with them.
    let uploads = (0..6u8).map(|i| {
        let app = &app;
        async move {
            let bytes = png(&[i; 64]);
            let id = app.upload_ok("default", &format!("crash{i}.png"), Some("image/png"), bytes.clone()).await;
            (id, bytes)
        }
    });
    let files: Vec<(String, Vec<u8>)> = futures::future::join_all(uploads).await;
    // Right after the last PUT was acknowledged, without any graceful shutdown.
    app.restart().await;

    for (id, bytes) in &files {
        let f = app.wait_for_status_within(id, &["promoted", "quarantined"], AFTER_CRASH).await;
        assert_eq!(f["status"], "promoted", "{f}");
        assert_eq!(f["sha256"], sha256_hex(bytes));
        assert_eq!(&app.download(id).await, bytes);
        // Each step happened exactly once, however often it was delivered.
        let types = app.wait_for_event(id, "resource.ready").await;
        for t in ["file.uploaded", "validation.started", "validation.passed", "file.promoted", "resource.ready"] {
            let n = types.iter().filter(|e| e["event_type"] == t).count();
            assert_eq!(n, 1, "{id}: {n} × {t}");
        }
    }
    let list: serde_json::Value = app.list("limit=200", &app.api_key).await.json().await.expect("JSON");
    assert_eq!(list["items"].as_array().expect("items").len(), files.len(), "files were lost or invented");
}

#[tokio::test]
async fn an_upload_requested_before_a_kill_can_be_put_after_the_restart() {
    let mut app = TestApp::spawn().await;
    let created = app.create_upload_ok(json!({"kind": "default", "filename": "later.png", "content_type": "image/png"})).await;
    let id = file_id(&created);
    let promoted = app.upload_ok("default", "before.png", None, png(b"before")).await;
    app.wait_for_status(&promoted, &["promoted"]).await;

    app.restart().await;

    // The signing secret survived: the URL signed before the kill is still good.
    let bytes = png(b"after the restart");
    let res = app.put_bytes(&created, bytes.clone()).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap_or_default());
    let f = app.wait_for_status_within(&id, &["promoted", "quarantined"], AFTER_CRASH).await;
    assert_eq!(f["status"], "promoted", "{f}");
    assert_eq!(app.download(&id).await, bytes);
    // And files promoted before the kill still download.
    assert_eq!(app.download(&promoted).await, png(b"before"));
}

#[tokio::test]
async fn an_expiry_timer_armed_before_a_kill_still_fires_after_the_restart() {
    let mut app = TestApp::spawn_with_config("[kinds.brief]\nupload_ttl = \"2s\"\n").await;
    let created = app.create_upload_ok(json!({"kind": "brief", "filename": "x.png"})).await;
    let id = file_id(&created);
    app.restart().await;
    app.wait_for_status_within(&id, &["expired"], AFTER_CRASH).await;
    app.wait_for_event(&id, "cleanup.initiated").await;
}

#[tokio::test]
async fn an_upload_cut_off_by_a_kill_can_be_sent_again_and_leaves_nothing_in_quarantine() {
    let mut app = TestApp::spawn().await;
    let created = app.create_upload_ok(json!({"kind": "default", "filename": "cut.png"})).await;
    let id = file_id(&created);
    let bytes = png(b"sent twice");
    let url = created["upload"]["url"].as_str().expect("url").to_owned();
    let _conn = crate::helpers::start_chunked_put(&app, &url, &bytes[..16]).await;
    // The first attempt's object exists (its bytes are still arriving) when the server dies.
    let quarantine = format!("quarantine/default/{id}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.stored_objects(&quarantine).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the streamed upload never reached the store");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.restart().await;

    let res = app.put_bytes(&created, bytes.clone()).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap_or_default());
    let f = app.wait_for_status_within(&id, &["promoted", "quarantined"], AFTER_CRASH).await;
    assert_eq!(f["status"], "promoted", "{f}");
    assert_eq!(app.download(&id).await, bytes);
    // Neither the cut-off attempt's bytes nor the file's quarantine directory outlive the promotion.
    assert!(!app.data_dir().join("objects").join(&quarantine).exists(), "{:?}", app.stored_objects(&quarantine));
}
