//! Virus scanning with a real clamd over INSTREAM: clean files are promoted with the scan on
//! record, infected ones quarantined with ClamAV's signature, a scanner that is down fails the
//! scan (after retries) when the kind requires one, readiness reports the scanner, and the kind,
//! not the scanner, decides whether a file is scanned at all.
//!
//! `scripts/test` starts clamd with a database that detects the EICAR test string anywhere in a
//! file and exports its address as `AIRLOCK_TEST_CLAMD`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, sha256_hex, text};

/// The EICAR anti-virus test file, assembled at run time from two halves kept apart, so that
/// no file of the repository holds it (nor even the part this clamd's signature matches) and
/// no scanner on a developer's machine quarantines the sources.
const EICAR_HEAD: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-";
const EICAR_TAIL: &[u8] = b"ANTIVIRUS-TEST-FILE!$H+H*";

fn eicar() -> Vec<u8> {
    [EICAR_HEAD, EICAR_TAIL].concat()
}

/// Where the test clamd listens: `AIRLOCK_TEST_CLAMD`, or the port `scripts/test` uses when
/// one answers there.
fn clamd() -> String {
    if let Ok(url) = std::env::var("AIRLOCK_TEST_CLAMD")
        && !url.is_empty()
    {
        return url;
    }
    let fallback = std::net::SocketAddr::from(([127, 0, 0, 1], 13310));
    if std::net::TcpStream::connect_timeout(&fallback, Duration::from_secs(2)).is_ok() {
        return format!("tcp://{fallback}");
    }
    panic!("the scanning tests need a clamd: run them with scripts/test, which starts one and exports AIRLOCK_TEST_CLAMD");
}

/// An address where nothing listens: port 1 (tcpmux) on loopback, which an unprivileged test
/// can never have bound.
fn closed_port() -> String {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(), "something listens on {addr}");
    format!("tcp://{addr}")
}

/// `docs` must be scanned, `relaxed` is scanned when it can be, `unscanned` never is.
fn config(clamd: &str) -> String {
    format!(
        r#"
clamd = "{clamd}"

[kinds.docs]
scan = "required"

[kinds.relaxed]
scan = "optional"

[kinds.unscanned]
scan = "off"
"#
    )
}

/// How long a scan that keeps failing may take to end in `scan_failed`: three attempts with
/// backoff in between (about 1.5 s), with room to spare.
const SCAN_RETRIES: Duration = Duration::from_secs(20);

/// Asserts the file was quarantined as `infected` by ClamAV, and that nothing of it is servable.
async fn assert_infected(app: &TestApp, id: &str) -> Value {
    let f = app.wait_for_status(id, &["promoted", "quarantined"]).await;
    assert_eq!(f["status"], "quarantined", "{f}");
    assert_eq!(f["reason"], "infected", "{f}");
    assert_eq!(f["scan"]["engine"], "clamav", "{f}");
    assert_eq!(f["scan"]["result"], "infected", "{f}");
    let signature = f["scan"]["signature"].as_str().unwrap_or_default();
    assert!(signature.contains("Eicar"), "the scan names ClamAV's signature: {f}");
    assert!(f["reason_detail"].as_str().unwrap_or_default().contains(signature), "the detail names the signature: {f}");
    assert_problem(app.download_response(id, &app.api_key).await, 409, "not_promoted").await;
    assert!(app.stored_objects(&format!("files/default/{id}")).is_empty(), "an infected file's bytes were promoted");
    assert_eq!(app.stored_objects(&format!("quarantine/default/{id}")).len(), 1, "an infected file's bytes are kept in quarantine");
    let events = app.events(id).await;
    let failed = events.iter().find(|e| e["event_type"] == "validation.failed").expect("a validation.failed event");
    assert_eq!(failed["payload"]["reason"], "infected");
    assert_eq!(failed["payload"]["scan"]["signature"], signature);
    assert!(!events.iter().any(|e| e["event_type"] == "file.promoted"), "an infected file was promoted");
    f
}

#[tokio::test]
async fn a_clean_file_is_scanned_by_clamav_and_promoted() {
    let app = TestApp::spawn_with_config(&config(&clamd())).await;
    let bytes = text();
    let id = app.upload_ok("docs", "notes.txt", Some("text/plain"), bytes.clone()).await;
    let f = app.wait_for_status(&id, &["promoted", "quarantined"]).await;
    assert_eq!(f["status"], "promoted", "{f}");
    assert_eq!(f["scan"], json!({"engine": "clamav", "result": "clean", "signature": null}), "{f}");
    let events = app.events(&id).await;
    let passed = events.iter().find(|e| e["event_type"] == "validation.passed").expect("a validation.passed event");
    assert_eq!(passed["payload"]["scan"]["result"], "clean");
    let promoted = events.iter().find(|e| e["event_type"] == "file.promoted").expect("a file.promoted event");
    assert_eq!(promoted["payload"]["scan"]["engine"], "clamav");
    assert_eq!(app.download(&id).await, bytes);
}

#[tokio::test]
async fn the_eicar_test_file_is_quarantined_as_infected_with_clamavs_signature() {
    let app = TestApp::spawn_with_config(&config(&clamd())).await;
    let id = app.upload_ok("docs", "eicar.txt", Some("text/plain"), eicar()).await;
    assert_infected(&app, &id).await;
}

#[tokio::test]
async fn eicar_in_the_middle_of_a_5_mb_file_is_found() {
    let app = TestApp::spawn_with_config(&config(&clamd())).await;
    let mut bytes = vec![0u8; 5 << 20];
    fastrand::Rng::with_seed(5).fill(&mut bytes[64..]);
    // Across the middle, which is also a boundary of every power-of-two chunking (object store
    // reads, INSTREAM frames): the scan must see the stream, not its pieces.
    let at = bytes.len() / 2 - 30;
    let sample = eicar();
    bytes[at..at + sample.len()].copy_from_slice(&sample);
    let id = app.upload_ok("relaxed", "backup.bin", None, bytes.clone()).await;
    let f = assert_infected(&app, &id).await;
    assert_eq!(f["bytes"], bytes.len());
    assert_eq!(f["sha256"], sha256_hex(&bytes));
}

#[tokio::test]
async fn files_scanned_at_once_each_get_their_own_verdict() {
    let app = TestApp::spawn_with_config(&config(&clamd())).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let infected = i % 2 == 1;
        let mut bytes = format!("file {i}: some ordinary words\n").into_bytes();
        if infected {
            bytes.extend(eicar());
        }
        ids.push((app.upload_ok("docs", &format!("f{i}.txt"), None, bytes).await, infected));
    }
    for (id, infected) in &ids {
        let f = app.wait_for_status(id, &["promoted", "quarantined"]).await;
        let expected = if *infected { ("quarantined", "infected") } else { ("promoted", "clean") };
        assert_eq!((f["status"].as_str().unwrap_or_default(), f["scan"]["result"].as_str().unwrap_or_default()), expected, "{f}");
    }
}

#[tokio::test]
async fn when_clamd_is_down_a_kind_that_requires_scanning_quarantines_with_scan_failed_after_retries() {
    let app = TestApp::spawn_with_config(&config(&closed_port())).await;
    let started = Instant::now();
    let id = app.upload_ok("docs", "contract.txt", Some("text/plain"), text()).await;
    let f = app.wait_for_status_within(&id, &["promoted", "quarantined"], SCAN_RETRIES).await;
    assert_eq!(f["status"], "quarantined", "an unscanned file of a kind that requires scanning: {f}");
    assert_eq!(f["reason"], "scan_failed", "{f}");
    assert_eq!(f["scan"]["engine"], "clamav", "{f}");
    assert_eq!(f["scan"]["result"], "failed", "{f}");
    assert!(f["reason_detail"].as_str().unwrap_or_default().contains("after 3 attempts"), "{f}");
    // Retried with backoff (at least 0.25 s, then 0.5 s), not given up at once.
    assert!(started.elapsed() >= Duration::from_millis(750), "gave up after {:?}", started.elapsed());
    let events = app.events(&id).await;
    let uploaded_ev = events.iter().find(|e| e["event_type"] == "file.uploaded").expect("file.uploaded");
    let validate = uploaded_ev["deliveries"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["subscription"] == "pipeline.validate")
        .unwrap_or_else(|| panic!("no pipeline.validate delivery: {uploaded_ev}"));
    assert_eq!(validate["attempts"], 3, "{validate}");
    assert!(!events.iter().any(|e| e["event_type"] == "file.promoted"), "promoted unscanned");
    assert_problem(app.download_response(&id, &app.api_key).await, 409, "not_promoted").await;
    assert!(app.stored_objects(&format!("files/default/{id}")).is_empty(), "an unscanned file's bytes were promoted");
    // Never promoted later either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.file(&id).await["status"], "quarantined");
}

#[tokio::test]
async fn when_clamd_is_down_an_optional_kind_promotes_and_records_the_failed_scan() {
    let app = TestApp::spawn_with_config(&config(&closed_port())).await;
    let id = app.upload_ok("relaxed", "notes.txt", None, text()).await;
    let f = app.wait_for_status_within(&id, &["promoted", "quarantined"], SCAN_RETRIES).await;
    assert_eq!(f["status"], "promoted", "{f}");
    assert_eq!(f["scan"]["engine"], "clamav", "{f}");
    assert_eq!(f["scan"]["result"], "failed", "the file is promoted, but not as scanned: {f}");
}

#[tokio::test]
async fn readyz_reports_the_scanner_ok_when_clamd_answers() {
    let app = TestApp::spawn_with_config(&config(&clamd())).await;
    let res = app.get("/readyz").await;
    let status = res.status();
    let v: Value = res.json().await.expect("JSON");
    assert_eq!(v["checks"]["scanner"]["status"], "ok", "{v}");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "ready", "{v}");
}

#[tokio::test]
async fn readyz_reports_the_scanner_down_with_503_when_clamd_is_unreachable() {
    let app = TestApp::spawn_with_config(&config(&closed_port())).await;
    let res = app.get("/readyz").await;
    let status = res.status();
    let v: Value = res.json().await.expect("JSON");
    assert_eq!(v["checks"]["scanner"]["status"], "down", "{v}");
    assert_eq!(status, 503, "a kind requires scanning and the scanner is down: {v}");
    assert_eq!(v["status"], "not_ready", "{v}");
    assert_eq!(v["checks"]["db"]["status"], "ok", "only the scanner is down: {v}");
}

#[tokio::test]
async fn a_kind_with_scan_off_promotes_even_the_eicar_test_file_because_the_kind_decides() {
    let app = TestApp::spawn_with_config(&config(&clamd())).await;
    // The same bytes, with the same scanner up: the kind that scans quarantines them...
    let scanned = app.upload_ok("docs", "eicar.txt", None, eicar()).await;
    assert_infected(&app, &scanned).await;
    // ...the kind that does not promotes them, unscanned and saying so.
    let id = app.upload_ok("unscanned", "eicar.txt", None, eicar()).await;
    let f = app.wait_for_status(&id, &["promoted", "quarantined"]).await;
    assert_eq!(f["status"], "promoted", "{f}");
    assert_eq!(f["scan"]["engine"], "none", "{f}");
    assert_eq!(f["scan"]["result"], "skipped", "{f}");
    assert_eq!(app.download(&id).await, eicar());
}
