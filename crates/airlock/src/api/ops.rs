//! Operations: `/healthz` (alive), `/readyz` (each dependency's state), `/metrics`
//! (Prometheus text: files by status, deliveries by state).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};
use sqlx::Row;

use crate::app::App;

pub fn router() -> Router<App> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics))
}

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "the process is alive")))]
pub async fn healthz() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, description = "every dependency is ready"), (status = 503, description = "a dependency is not")))]
pub async fn readyz(State(app): State<App>) -> (StatusCode, axum::Json<Value>) {
    let db = match sqlx::query("SELECT 1").execute(app.bus.pool()).await {
        Ok(_) => json!({"status": "ok", "engine": "sqlite"}),
        Err(e) => json!({"status": "down", "error": e.to_string()}),
    };
    let storage = match app.blobs.probe().await {
        Ok(()) => json!({"status": "ok", "backend": app.blobs.describe()}),
        Err(e) => json!({"status": "down", "error": e.to_string()}),
    };
    let bus = json!({"status": db["status"], "backend": "embedded"});
    let scanner = match &app.scanner {
        None => json!({"status": "not_configured"}),
        Some(s) => match s.ping().await {
            Ok(()) => json!({"status": "ok", "engine": "clamav"}),
            Err(e) => json!({"status": "down", "engine": "clamav", "error": e.to_string()}),
        },
    };
    // A configured scanner that is down makes the service not ready: files of kinds that scan
    // would wait for it (and end in scan_failed where a scan is required).
    let ready = db["status"] == "ok" && storage["status"] == "ok" && scanner["status"] != "down";
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        code,
        axum::Json(
            json!({"status": if ready { "ready" } else { "not_ready" }, "checks": {"db": db, "storage": storage, "bus": bus, "scanner": scanner}}),
        ),
    )
}

#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(app): State<App>) -> impl IntoResponse {
    let mut out = String::new();
    out.push_str("# HELP airlock_files Files by status.\n# TYPE airlock_files gauge\n");
    if let Ok(rows) = sqlx::query("SELECT status, COUNT(*) AS n FROM files GROUP BY status").fetch_all(app.bus.pool()).await {
        for r in rows {
            out.push_str(&format!("airlock_files{{status=\"{}\"}} {}\n", r.get::<String, _>("status"), r.get::<i64, _>("n")));
        }
    }
    out.push_str("# HELP airlock_deliveries Event deliveries by subscription and state.\n# TYPE airlock_deliveries gauge\n");
    if let Ok(rows) =
        sqlx::query("SELECT subscription, state, COUNT(*) AS n FROM deliveries GROUP BY subscription, state").fetch_all(app.bus.pool()).await
    {
        for r in rows {
            out.push_str(&format!(
                "airlock_deliveries{{subscription=\"{}\",state=\"{}\"}} {}\n",
                r.get::<String, _>("subscription").replace('"', "'"),
                r.get::<String, _>("state"),
                r.get::<i64, _>("n")
            ));
        }
    }
    out.push_str("# HELP airlock_events_total Events in the log.\n# TYPE airlock_events_total counter\n");
    if let Ok(n) = sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(seq), 0) FROM events").fetch_one(app.bus.pool()).await {
        out.push_str(&format!("airlock_events_total {n}\n"));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
