//! Operations routes: health, readiness, OpenAPI, metrics, correlation ids.

use serde_json::Value;

use crate::helpers::TestApp;

#[tokio::test]
async fn healthz_answers_ok() {
    let app = TestApp::spawn().await;
    let res = app.get("/healthz").await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.expect("JSON");
    assert_eq!(v["status"], "ok");
}
