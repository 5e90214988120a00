//! Operations routes: health, readiness, OpenAPI, metrics.

use serde_json::Value;

use crate::helpers::{TestApp, png};

#[tokio::test]
async fn healthz_answers_ok() {
    let app = TestApp::spawn().await;
    let res = app.get("/healthz").await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.expect("JSON");
    assert_eq!(v["status"], "ok");
}

#[tokio::test]
async fn readyz_reports_each_dependency() {
    let app = TestApp::spawn().await;
    let res = app.get("/readyz").await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.expect("JSON");
    assert_eq!(v["status"], "ready", "{v}");
    for dep in ["db", "storage", "bus", "scanner"] {
        assert!(v["checks"][dep]["status"].is_string(), "no {dep} check in {v}");
    }
    assert_eq!(v["checks"]["db"]["status"], "ok");
    assert_eq!(v["checks"]["storage"]["status"], "ok");
    assert_eq!(v["checks"]["bus"]["status"], "ok");
    assert_eq!(v["checks"]["scanner"]["status"], "not_configured");
}

#[tokio::test]
async fn the_openapi_document_describes_the_api() {
    let app = TestApp::spawn().await;
    let res = app.get("/openapi.json").await;
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.expect("JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "OpenAPI version: {}", doc["openapi"]);
    for path in [
        "/v1/uploads",
        "/v1/files",
        "/v1/files/{id}",
        "/v1/files/{id}/download",
        "/v1/files/{id}/events",
        "/v1/blobs/{id}",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not in the OpenAPI document");
    }
    assert!(doc["paths"]["/v1/uploads"].get("post").is_some());
    assert!(doc["paths"]["/v1/files/{id}"].get("delete").is_some());
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object(), "bearer auth is described");
}

#[tokio::test]
async fn metrics_count_files_by_status_in_prometheus_text() {
    let app = TestApp::spawn().await;
    let id = app.upload_ok("default", "m.png", None, png(b"metrics")).await;
    app.wait_for_status(&id, &["promoted"]).await;
    app.create_upload_ok(serde_json::json!({"kind": "default", "filename": "p.png"})).await;
    let res = app.get("/metrics").await;
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().expect("ASCII").to_owned();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let text = res.text().await.expect("text");
    assert!(text.contains("# TYPE airlock_files gauge"), "{text}");
    assert!(text.contains("airlock_files{status=\"promoted\"} 1"), "{text}");
    assert!(text.contains("airlock_files{status=\"pending\"} 1"), "{text}");
    let events: u64 =
        text.lines().find_map(|l| l.strip_prefix("airlock_events_total ")).expect("airlock_events_total").trim().parse().expect("a number");
    assert!(events >= 7, "{text}");
}
