//! `airlock trace FILE_ID|CORRELATION_ID`: the event chain printed as a tree, with the
//! deliveries that failed or are still pending, read from the data directory while the server
//! runs.

use serde_json::{Value, json};

use crate::helpers::{TestApp, airlock_command, file_id, html, png, random_token};
use crate::webhooks::{Answer, Receiver, eventually, hook, new_secret, sub_id, subscribe, wait_for_dead_letters};

/// What `airlock trace` printed and how it exited.
struct Traced {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn trace(app: &TestApp, id: &str) -> Traced {
    let mut cmd = airlock_command();
    cmd.args(["trace", id]).env("AIRLOCK_DATA_DIR", app.data_dir()).env("AIRLOCK_LOG", "warn");
    let out = tokio::process::Command::from(cmd).output().await.expect("running `airlock trace`");
    Traced {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `airlock trace` that must succeed; returns its output.
async fn trace_ok(app: &TestApp, id: &str) -> String {
    let t = trace(app, id).await;
    assert_eq!(t.code, Some(0), "`airlock trace {id}` failed: {}{}", t.stdout, t.stderr);
    t.stdout
}

/// One line of a trace.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    /// The column (in characters) where the text after the tree drawing starts.
    indent: usize,
    /// The event type (`file.promoted.v1`) of an event line; `None` for a delivery note.
    event: Option<String>,
    text: String,
}

fn parse(out: &str) -> Vec<Line> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let rest = l.trim_start_matches([' ', '│', '├', '└', '─']);
            let indent = l.chars().count() - rest.chars().count();
            let first = rest.split_whitespace().next().unwrap_or_default();
            let is_event = first.rsplit_once(".v").is_some_and(|(name, v)| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '.' || c == '_') && v.parse::<u32>().is_ok()
            });
            Line { indent, event: is_event.then(|| first.to_owned()), text: l.to_owned() }
        })
        .collect()
}

fn events(lines: &[Line]) -> Vec<Line> {
    lines.iter().filter(|l| l.event.is_some()).cloned().collect()
}

/// Asserts the trace is one straight chain of `chain`: the root first, each next event the
/// only child of the one before (`└── `), four columns further right.
fn assert_chain(out: &str, chain: &[&str]) {
    let lines = events(&parse(out));
    let types: Vec<&str> = lines.iter().map(|l| l.event.as_deref().unwrap_or_default()).collect();
    assert_eq!(types, chain, "the trace:\n{out}");
    let mut last_ms = 0;
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l.indent, 4 * i, "indentation of {} in the trace:\n{out}", chain[i]);
        if i == 0 {
            assert!(l.text.starts_with(chain[0]), "the root is not flush left:\n{out}");
            continue;
        }
        let drawn = format!("{}└── {}", "    ".repeat(i - 1), chain[i]);
        assert!(l.text.starts_with(&drawn), "`{}` is not drawn as `{drawn}` in the trace:\n{out}", l.text);
        // `+Nms` since the root: causes come before their effects.
        let ms: i64 = l
            .text
            .split_whitespace()
            .find_map(|w| w.strip_prefix('+').and_then(|w| w.strip_suffix("ms")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no +Nms on `{}`", l.text));
        assert!(ms >= last_ms, "the times of the trace go backwards:\n{out}");
        last_ms = ms;
    }
}

const PROMOTED: [&str; 6] =
    ["upload.requested.v1", "file.uploaded.v1", "validation.started.v1", "validation.passed.v1", "file.promoted.v1", "resource.ready.v1"];

#[tokio::test]
async fn the_trace_of_a_promoted_file_is_its_chain_as_a_tree_and_its_correlation_id_gives_the_same() {
    let app = TestApp::spawn().await;
    let correlation = format!("trace-{}", random_token());
    let res = app
        .create_upload_with(json!({"kind": "default", "filename": "t.png", "content_type": "image/png"}), &[("X-Correlation-Id", &correlation)])
        .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.expect("JSON");
    let id = file_id(&created);
    assert_eq!(app.put_bytes(&created, png(b"traced")).await.status(), 200);
    app.wait_for_status(&id, &["promoted"]).await;
    app.wait_for_event(&id, "resource.ready").await;

    let by_file = trace_ok(&app, &id).await;
    assert_chain(&by_file, &PROMOTED);
    let root = &parse(&by_file)[0];
    assert!(root.text.contains(&format!("correlation={correlation}")), "the root names the correlation id: {}", root.text);
    assert!(!by_file.contains("DEAD") && !by_file.contains("FAILED"), "a healthy file shows failures:\n{by_file}");

    let by_correlation = trace_ok(&app, &correlation).await;
    assert_eq!(events(&parse(&by_correlation)), events(&parse(&by_file)), "by correlation id:\n{by_correlation}\nby file id:\n{by_file}");
}

#[tokio::test]
async fn the_trace_of_a_quarantined_file_ends_in_validation_failed_file_quarantined_resource_rejected() {
    let app = TestApp::spawn().await;
    let id = app.upload_ok("default", "page.html", None, html()).await;
    app.wait_for_status(&id, &["quarantined"]).await;
    app.wait_for_event(&id, "resource.rejected").await;
    let out = trace_ok(&app, &id).await;
    assert_chain(
        &out,
        &["upload.requested.v1", "file.uploaded.v1", "validation.started.v1", "validation.failed.v1", "file.quarantined.v1", "resource.rejected.v1"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_shows_as_dead_or_failed_under_its_event_in_the_trace() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start(&new_secret(), Answer::Status(500)).await;
    // One that gives up quickly (a dead letter), one that waits a minute before its retry.
    let dead = sub_id(
        &subscribe(&app, &app.api_key, hook(&rx, &["file.promoted.v1"], json!({"retry": {"max_attempts": 2, "base_ms": 50, "cap_ms": 100}}))).await,
    );
    let failing = sub_id(
        &subscribe(&app, &app.api_key, hook(&rx, &["file.promoted.v1"], json!({"retry": {"max_attempts": 5, "base_ms": 60000, "cap_ms": 60000}})))
            .await,
    );
    let id = app.upload_ok("default", "t.png", Some("image/png"), png(b"traced webhook")).await;
    app.wait_for_event(&id, "resource.ready").await;
    wait_for_dead_letters(&app, &dead, 1).await;
    eventually("a failed attempt waiting for its retry", async || {
        let events = app.events(&id).await;
        let promoted = events.iter().find(|e| e["event_type"] == "file.promoted")?;
        promoted["deliveries"]
            .as_array()?
            .iter()
            .any(|d| d["subscription"] == format!("webhook:{failing}") && d["state"] == "pending" && d["attempts"] == 1)
            .then_some(())
    })
    .await;

    let out = trace_ok(&app, &id).await;
    assert_chain(&out, &PROMOTED);
    let lines = parse(&out);
    let at = lines.iter().position(|l| l.event.as_deref() == Some("file.promoted.v1")).expect("file.promoted");
    let promoted = &lines[at];
    // The notes under file.promoted, up to the next event.
    let notes: Vec<&Line> = lines[at + 1..].iter().take_while(|l| l.event.is_none()).collect();
    let dead_line =
        notes.iter().find(|l| l.text.contains(&format!("webhook:{dead}"))).unwrap_or_else(|| panic!("no line for webhook:{dead}:\n{out}"));
    assert!(dead_line.text.contains("DEAD") && dead_line.text.contains('2') && dead_line.text.contains("500"), "`{}`", dead_line.text);
    let failed_line =
        notes.iter().find(|l| l.text.contains(&format!("webhook:{failing}"))).unwrap_or_else(|| panic!("no line for webhook:{failing}:\n{out}"));
    assert!(failed_line.text.contains("FAILED") && failed_line.text.contains("500"), "`{}`", failed_line.text);
    for n in [dead_line, failed_line] {
        assert!(n.indent > promoted.indent, "`{}` is not under file.promoted:\n{out}", n.text);
    }
    // Nothing about the webhooks anywhere else: they only subscribe to file.promoted.
    let elsewhere = lines.iter().enumerate().filter(|(i, l)| l.text.contains("webhook:") && (*i <= at || *i > at + notes.len())).count();
    assert_eq!(elsewhere, 0, "webhook notes under other events:\n{out}");
}

#[tokio::test]
async fn tracing_an_unknown_file_or_correlation_id_exits_with_code_1() {
    let app = TestApp::spawn().await;
    // Something exists, so an empty database is not why nothing is found.
    app.upload_ok("default", "t.png", Some("image/png"), png(b"exists")).await;
    for id in [uuid::Uuid::now_v7().to_string(), "no-such-correlation-id".to_owned()] {
        let t = trace(&app, &id).await;
        assert_eq!(t.code, Some(1), "`airlock trace {id}`: {}{}", t.stdout, t.stderr);
        assert!(t.stdout.trim().is_empty(), "printed a trace for {id}: {}", t.stdout);
        assert!(t.stderr.contains(&id), "the error names the id: {}", t.stderr);
    }
}
