//! The command line beside a running server: `events list|show|check`, `keys revoke`,
//! `dlq list|redrive|discard`, and the exit codes of CONTRACT §1.

use std::process::Output;

use serde_json::{Value, json};

use crate::helpers::*;

fn run(app: Option<&TestApp>, args: &[&str]) -> Output {
    let mut cmd = airlock_command();
    cmd.args(args).env("AIRLOCK_LOG", "warn");
    if let Some(app) = app {
        cmd.env("AIRLOCK_DATA_DIR", app.data_dir());
    }
    cmd.output().expect("running the airlock binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn catalog_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events")
}

#[test]
fn events_list_and_show_print_the_catalog() {
    let list = run(None, &["events", "list"]);
    assert!(list.status.success());
    let text = stdout(&list);
    assert!(text.lines().any(|l| l.starts_with("file.promoted.v1") && l.contains("public")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("validation.passed.v1") && l.contains("internal")), "{text}");
    let show = run(None, &["events", "show", "file.promoted"]);
    assert!(show.status.success());
    let schema: Value = serde_json::from_slice(&show.stdout).expect("a JSON schema");
    assert_eq!(schema["x-airlock-visibility"], "public");
    let unknown = run(None, &["events", "show", "file.exploded"]);
    assert_eq!(unknown.status.code(), Some(1), "an unknown type is the user's error");
}

#[test]
fn events_check_passes_against_itself_and_fails_with_reasons_on_a_breaking_change() {
    let same = run(None, &["events", "check", "--against", catalog_dir().to_str().unwrap_or_default()]);
    assert!(same.status.success(), "{}", stdout(&same));

    // An older catalog that had a field this one removed, and a type this one dropped.
    let old = tempfile::tempdir().expect("dir");
    for entry in walk(&catalog_dir()) {
        let rel = entry.strip_prefix(catalog_dir()).expect("under the catalog").to_path_buf();
        let dest = old.path().join(&rel);
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&entry, &dest).expect("copy");
    }
    let promoted = old.path().join("file/promoted.v1.json");
    let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(&promoted).expect("read")).expect("json");
    schema["properties"]["thumbnail_url"] = json!({"type": "string"});
    std::fs::write(&promoted, schema.to_string()).expect("write");
    std::fs::write(old.path().join("file/archived.v1.json"), json!({"x-airlock-visibility": "public", "type": "object"}).to_string()).expect("write");

    let out = run(None, &["events", "check", "--against", old.path().to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1), "a breaking change exits 1");
    let text = stdout(&out);
    assert!(text.contains("file.promoted.v1: field `/thumbnail_url` removed"), "{text}");
    assert!(text.contains("file.archived.v1: event type removed"), "{text}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[tokio::test]
async fn a_revoked_key_is_refused_from_then_on() {
    let app = TestApp::spawn().await;
    let mut cmd = airlock_command();
    cmd.args(["keys", "create", "--tenant", "acme", "--name", "ci"]).env("AIRLOCK_DATA_DIR", app.data_dir()).env("AIRLOCK_LOG", "warn");
    let created = cmd.output().expect("keys create");
    assert!(created.status.success());
    let key = stdout(&created).trim().to_owned();
    let stderr = String::from_utf8_lossy(&created.stderr).into_owned();
    let id = stderr
        .lines()
        .find(|l| l.starts_with("key id"))
        .and_then(|l| l.split_whitespace().nth(2))
        .expect("the key id is printed on stderr")
        .to_owned();
    let ok = app.client.get(app.url("/v1/files")).bearer_auth(&key).send().await.expect("request");
    assert_eq!(ok.status(), 200);

    let revoked = run(Some(&app), &["keys", "revoke", &id]);
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    let refused = app.client.get(app.url("/v1/files")).bearer_auth(&key).send().await.expect("request");
    assert_problem(refused, 401, "unauthorized").await;
    assert_eq!(run(Some(&app), &["keys", "revoke", &id]).status.code(), Some(1), "revoking twice is the user's error");
    assert_eq!(run(Some(&app), &["keys", "create", "--tenant", "Bad Tenant!"]).status.code(), Some(1));
}

#[tokio::test]
async fn dlq_commands_list_redrive_and_discard_dead_letters() {
    let app = TestApp::spawn().await;
    // A receiver that is never there: every delivery dead-letters after two quick attempts.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let sub: Value = app
        .client
        .post(app.url("/v1/subscriptions"))
        .bearer_auth(&app.api_key)
        .json(&json!({"name": "gone", "url": format!("http://127.0.0.1:{closed}/hook"), "event_types": ["file.uploaded.v1"],
                      "retry": {"max_attempts": 2, "base_ms": 50, "cap_ms": 100}}))
        .send()
        .await
        .expect("subscribe")
        .json()
        .await
        .expect("json");
    let subscription = format!("webhook:{}", sub["id"].as_str().expect("id"));
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await; // the worker starts within 1 s
    app.upload_ok("default", "a.txt", None, text()).await;
    app.upload_ok("default", "b.txt", None, text()).await;

    let deadline = std::time::Instant::now() + DEADLINE;
    let letters = loop {
        let out = run(Some(&app), &["dlq", "list", "--subscription", &subscription]);
        assert!(out.status.success());
        let lines: Vec<String> = stdout(&out).lines().filter(|l| l.contains(&subscription)).map(str::to_owned).collect();
        if lines.len() == 2 {
            break lines;
        }
        assert!(std::time::Instant::now() < deadline, "dead letters did not appear: {}", stdout(&out));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(letters.iter().all(|l| l.contains("attempts=2") && l.contains("file.uploaded.v1")), "{letters:?}");
    let first: String = letters[0].split_whitespace().next().expect("id").to_owned();
    let second: String = letters[1].split_whitespace().next().expect("id").to_owned();

    let discarded = run(Some(&app), &["dlq", "discard", &first]);
    assert!(discarded.status.success());
    assert_eq!(run(Some(&app), &["dlq", "discard", &first]).status.code(), Some(1), "gone already");
    let redriven = run(Some(&app), &["dlq", "redrive", &second]);
    assert!(redriven.status.success());
    let listed = stdout(&run(Some(&app), &["dlq", "list", "--subscription", &subscription]));
    assert!(!listed.contains(&format!("{first} ")), "discarded letters are not listed: {listed}");
    // The redriven one fails again (still no receiver) and comes back as a dead letter.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let listed = stdout(&run(Some(&app), &["dlq", "list", "--subscription", &subscription]));
        if listed.lines().any(|l| l.starts_with(&format!("{second} "))) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the redriven letter did not come back: {listed}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(run(Some(&app), &["dlq", "redrive"]).status.code(), Some(1), "an id or --all is required");
    let all = run(Some(&app), &["dlq", "redrive", "--all"]);
    assert!(all.status.success());
    assert_eq!(run(Some(&app), &["nonsense"]).status.code(), Some(2), "usage errors exit 2");
}
