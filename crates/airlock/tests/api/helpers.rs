//! The harness: runs the real `airlock` binary as a child process on a temporary data directory
//! and talks to it over HTTP like any client would.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

/// The deadline for the pipeline to reach a state in ordinary tests.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// How long the binary may take to start serving.
const STARTUP: Duration = Duration::from_secs(60);
/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(50);

/// The `airlock` binary Cargo built for this test run.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_airlock")
}

/// A command running the binary with no `AIRLOCK_*` variable inherited from the test's
/// environment: every setting a test relies on is given explicitly.
pub fn airlock_command() -> Command {
    let mut cmd = Command::new(binary());
    for (k, _) in std::env::vars() {
        if k.starts_with("AIRLOCK_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A random token (for API keys and correlation ids).
pub fn random_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A W3C `traceparent` with random ids.
pub fn random_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().expect("local address").port()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A running Airlock server.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    pub port: u16,
    /// The bootstrap API key (tenant `default`).
    pub api_key: String,
    pub client: reqwest::Client,
    data_dir: tempfile::TempDir,
    config_path: Option<PathBuf>,
    child: Child,
    /// Every stderr line of every process this app ran, for diagnostics and log assertions.
    logs: Arc<Mutex<Vec<String>>>,
}

/// A new HTTP client with its own connection pool.
pub fn client() -> reqwest::Client {
    // reqwest is built without a default TLS crypto provider; only plain HTTP is used here, but
    // the builder insists on one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().expect("building the HTTP client")
}

impl TestApp {
    /// Starts the binary on embedded defaults (zero config).
    pub async fn spawn() -> TestApp {
        TestApp::start(None).await
    }

    /// Starts the binary with `--config <file>` holding `toml`.
    pub async fn spawn_with_config(toml: &str) -> TestApp {
        TestApp::start(Some(toml)).await
    }

    async fn start(toml: Option<&str>) -> TestApp {
        let data_dir = tempfile::tempdir().expect("creating the data directory");
        let config_path = toml.map(|t| {
            let p = data_dir.path().join("airlock.toml");
            std::fs::write(&p, t).expect("writing the config file");
            p
        });
        let mut port = free_port();
        let api_key = format!("test_{}", random_token());
        let logs = Arc::new(Mutex::new(Vec::new()));
        // The port was free a moment ago; another test may have taken it since: try another.
        let mut attempts = 0;
        let (port, child) = loop {
            attempts += 1;
            match launch(data_dir.path(), config_path.as_deref(), port, &api_key, &logs).await {
                Ok(child) => break (port, child),
                Err(log) if attempts < 5 && log.contains("listening on") => port = free_port(),
                Err(log) => panic!("{log}"),
            }
        };
        TestApp { address: format!("http://127.0.0.1:{port}"), port, api_key, client: client(), data_dir, config_path, child, logs }
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Everything the server processes wrote to stderr so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("log lock").clone()
    }

    /// SIGKILLs the server (no graceful shutdown) and starts a new one on the same data
    /// directory, port and settings.
    pub async fn restart(&mut self) {
        self.child.kill().expect("killing the server");
        self.child.wait().expect("reaping the server");
        self.child = launch(self.data_dir.path(), self.config_path.as_deref(), self.port, &self.api_key, &self.logs)
            .await
            .unwrap_or_else(|log| panic!("restarting: {log}"));
        // Pooled connections went to the dead process.
        self.client = client();
    }

    /// Creates an API key for another tenant with `airlock keys create` on the same data
    /// directory (the server may be running: SQLite in WAL mode allows it).
    pub fn create_key(&self, tenant: &str) -> String {
        let mut cmd = airlock_command();
        cmd.args(["keys", "create", "--tenant", tenant]).env("AIRLOCK_DATA_DIR", self.data_dir.path()).env("AIRLOCK_LOG", "warn");
        if let Some(c) = &self.config_path {
            cmd.arg("--config").arg(c);
        }
        let out = cmd.output().expect("running `airlock keys create`");
        assert!(out.status.success(), "`airlock keys create` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        let key = String::from_utf8(out.stdout).expect("a UTF-8 key").trim().to_owned();
        assert!(!key.is_empty(), "`airlock keys create` printed no key");
        key
    }

    /// A key of the tenant `other`.
    pub fn other_tenant_key(&self) -> String {
        self.create_key("other")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    // ---- management API (bootstrap key) ----

    pub async fn create_upload(&self, body: Value) -> reqwest::Response {
        self.create_upload_with(body, &[]).await
    }

    /// `POST /v1/uploads` with extra request headers.
    pub async fn create_upload_with(&self, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.client.post(self.url("/v1/uploads")).bearer_auth(&self.api_key).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("POST /v1/uploads")
    }

    /// `POST /v1/uploads` that must succeed; returns its body.
    pub async fn create_upload_ok(&self, body: Value) -> Value {
        let res = self.create_upload(body.clone()).await;
        let status = res.status();
        let v: Value = res.json().await.expect("JSON body");
        assert_eq!(status, 201, "POST /v1/uploads {body} answered {v}");
        v
    }

    /// PUTs `bytes` to a created upload's signed URL with the headers it asked for.
    pub async fn put_bytes(&self, created: &Value, bytes: Vec<u8>) -> reqwest::Response {
        let upload = &created["upload"];
        assert_eq!(upload["method"], "PUT", "upload method in {created}");
        let url = upload["url"].as_str().expect("upload.url");
        let mut headers = HeaderMap::new();
        if let Some(h) = upload["headers"].as_object() {
            for (k, v) in h {
                headers.insert(
                    HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                    HeaderValue::from_str(v.as_str().expect("header value")).expect("header"),
                );
            }
        }
        self.client.put(url).headers(headers).body(bytes).send().await.expect("PUT to the signed upload URL")
    }

    /// Creates an upload and PUTs the bytes; returns the file id and the PUT's response.
    pub async fn upload(&self, kind: &str, filename: &str, content_type: Option<&str>, bytes: Vec<u8>) -> (String, reqwest::Response) {
        let mut body = json!({"kind": kind, "filename": filename});
        if let Some(t) = content_type {
            body["content_type"] = t.into();
        }
        let created = self.create_upload_ok(body).await;
        let id = file_id(&created);
        let res = self.put_bytes(&created, bytes).await;
        (id, res)
    }

    /// Creates an upload and PUTs the bytes, asserting the PUT succeeded; returns the file id.
    pub async fn upload_ok(&self, kind: &str, filename: &str, content_type: Option<&str>, bytes: Vec<u8>) -> String {
        let (id, res) = self.upload(kind, filename, content_type, bytes).await;
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        assert_eq!(status, 200, "PUT of {filename} answered {body}");
        id
    }

    pub async fn get_file_response(&self, id: &str) -> reqwest::Response {
        self.client.get(self.url(&format!("/v1/files/{id}"))).bearer_auth(&self.api_key).send().await.expect("GET /v1/files/{id}")
    }

    /// `GET /v1/files/{id}`, which must succeed.
    pub async fn file(&self, id: &str) -> Value {
        let res = self.get_file_response(id).await;
        let status = res.status();
        let v: Value = res.json().await.expect("JSON body");
        assert_eq!(status, 200, "GET /v1/files/{id} answered {v}");
        v
    }

    /// Polls `GET /v1/files/{id}` until its status is one of `statuses`.
    pub async fn wait_for_status(&self, id: &str, statuses: &[&str]) -> Value {
        self.wait_for_status_within(id, statuses, DEADLINE).await
    }

    pub async fn wait_for_status_within(&self, id: &str, statuses: &[&str], deadline: Duration) -> Value {
        let start = Instant::now();
        loop {
            let f = self.file(id).await;
            if statuses.iter().any(|s| f["status"] == *s) {
                return f;
            }
            if start.elapsed() > deadline {
                let events = self.event_types(id).await;
                panic!(
                    "file {id} did not reach {statuses:?} within {deadline:?}: it is {f}\nits events: {events:?}\nlast server logs:\n{}",
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn events_response(&self, id: &str, key: &str) -> reqwest::Response {
        self.client.get(self.url(&format!("/v1/files/{id}/events"))).bearer_auth(key).send().await.expect("GET /v1/files/{id}/events")
    }

    /// `GET /v1/files/{id}/events` → `events`, oldest first.
    pub async fn events(&self, id: &str) -> Vec<Value> {
        let res = self.events_response(id, &self.api_key).await;
        let status = res.status();
        let v: Value = res.json().await.expect("JSON body");
        assert_eq!(status, 200, "GET /v1/files/{id}/events answered {v}");
        v["events"].as_array().expect("events array").clone()
    }

    pub async fn event_types(&self, id: &str) -> Vec<String> {
        self.events(id).await.iter().map(|e| e["event_type"].as_str().unwrap_or_default().to_owned()).collect()
    }

    /// Polls the file's events until one of type `event_type` is there; returns all of them.
    pub async fn wait_for_event(&self, id: &str, event_type: &str) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let events = self.events(id).await;
            if events.iter().any(|e| e["event_type"] == event_type) {
                return events;
            }
            if start.elapsed() > DEADLINE {
                let types: Vec<&Value> = events.iter().map(|e| &e["event_type"]).collect();
                panic!("file {id} got no {event_type} event within {DEADLINE:?}; its events: {types:?}\nlast server logs:\n{}", self.log_tail(30));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn download_response(&self, id: &str, key: &str) -> reqwest::Response {
        self.client.get(self.url(&format!("/v1/files/{id}/download"))).bearer_auth(key).send().await.expect("GET /v1/files/{id}/download")
    }

    /// A signed download URL of a promoted file.
    pub async fn download_url(&self, id: &str) -> String {
        let res = self.download_response(id, &self.api_key).await;
        let status = res.status();
        let v: Value = res.json().await.expect("JSON body");
        assert_eq!(status, 200, "GET /v1/files/{id}/download answered {v}");
        assert!(v["expires_at"].is_string(), "no expires_at in {v}");
        v["url"].as_str().expect("url").to_owned()
    }

    /// The bytes a promoted file serves.
    pub async fn download(&self, id: &str) -> Vec<u8> {
        let url = self.download_url(id).await;
        let res = self.client.get(&url).send().await.expect("GET download URL");
        assert_eq!(res.status(), 200, "download of {id}");
        res.bytes().await.expect("body").to_vec()
    }

    pub async fn delete_file(&self, id: &str, key: &str) -> reqwest::Response {
        self.client.delete(self.url(&format!("/v1/files/{id}"))).bearer_auth(key).send().await.expect("DELETE /v1/files/{id}")
    }

    /// `GET /v1/files` with a query string, as tenant `key`.
    pub async fn list(&self, query: &str, key: &str) -> reqwest::Response {
        self.client.get(self.url(&format!("/v1/files?{query}"))).bearer_auth(key).send().await.expect("GET /v1/files")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    /// The last `n` lines the server logged.
    pub fn log_tail(&self, n: usize) -> String {
        let logs = self.logs();
        logs[logs.len().saturating_sub(n)..].join("\n")
    }

    /// Regular files stored under `objects/<prefix>` of the data directory.
    pub fn stored_objects(&self, prefix: &str) -> Vec<PathBuf> {
        let mut found = Vec::new();
        walk(&self.data_dir().join("objects").join(prefix), &mut found);
        found
    }
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, found);
        } else {
            found.push(p);
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `airlock serve` and waits for its "Airlock is serving." log line.
/// `Err` (with the process's log) when it exited before serving.
async fn launch(data_dir: &Path, config: Option<&Path>, port: u16, api_key: &str, logs: &Arc<Mutex<Vec<String>>>) -> Result<Child, String> {
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = airlock_command();
    cmd.arg("serve")
        .env("AIRLOCK_DATA_DIR", data_dir)
        .env("AIRLOCK_LISTEN", &listen)
        .env("AIRLOCK_PUBLIC_URL", format!("http://{listen}"))
        .env("AIRLOCK_BOOTSTRAP_API_KEY", api_key)
        .env("AIRLOCK_LOG_FORMAT", "json")
        .env("AIRLOCK_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd.spawn().expect("starting `airlock serve`");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel::<String>();
    let sink = Arc::clone(logs);
    // Drains stderr for the process's whole life so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut announced = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !announced
                && let Ok(v) = serde_json::from_str::<Value>(&line)
                && let Some(fields) = [&v["fields"], &v].into_iter().find(|f| f["message"] == "Airlock is serving.")
            {
                announced = true;
                let _ = tx.send(fields["address"].as_str().unwrap_or_default().to_owned());
            }
            sink.lock().expect("log lock").push(line);
        }
    });
    let start = Instant::now();
    loop {
        if let Ok(address) = rx.try_recv() {
            assert_eq!(address, listen, "the server announced another address than it was told");
            return Ok(child);
        }
        if let Ok(Some(exit)) = child.try_wait() {
            // Give the reader a moment to collect the last lines.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let log = logs.lock().expect("log lock").join("\n");
            return Err(format!("`airlock serve` exited ({exit}) before serving:\n{log}"));
        }
        if start.elapsed() > STARTUP {
            let _ = child.kill();
            let log = logs.lock().expect("log lock").join("\n");
            panic!("`airlock serve` did not announce it was serving within {STARTUP:?}:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `file_id` of a `POST /v1/uploads` answer.
pub fn file_id(created: &Value) -> String {
    created["file_id"].as_str().unwrap_or_else(|| panic!("no file_id in {created}")).to_owned()
}

/// Asserts `res` is an RFC 9457 problem with `status` and `code`; returns its body.
pub async fn assert_problem(res: reqwest::Response, status: u16, code: &str) -> Value {
    let got = res.status().as_u16();
    let ct = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let text = res.text().await.unwrap_or_default();
    assert_eq!(got, status, "expected {status} {code}, got {got}: {text}");
    assert_eq!(ct, "application/problem+json", "a {status} error must be application/problem+json: {text}");
    let v: Value = serde_json::from_str(&text).expect("a JSON problem body");
    assert_eq!(v["code"], code, "problem code in {v}");
    assert_eq!(v["status"], status, "problem status in {v}");
    assert!(v["type"].is_string() && v["title"].is_string() && v["detail"].is_string(), "problem fields in {v}");
    v
}

/// Reads an HTTP/1.1 response's status line and headers (lowercased) from a raw connection.
pub async fn read_response_head(conn: &mut tokio::net::TcpStream) -> String {
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).await.expect("read") == 0 {
            break;
        }
        answer.push(byte[0]);
    }
    String::from_utf8_lossy(&answer).to_ascii_lowercase().replace("http/1.1", "HTTP/1.1")
}

/// Opens a raw connection and sends the head of a chunked `PUT` to `url` plus `first` as one
/// chunk, leaving the body open.
pub async fn start_chunked_put(app: &TestApp, url: &str, first: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let url = reqwest::Url::parse(url).expect("URL");
    let target = format!("{}?{}", url.path(), url.query().expect("query"));
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.expect("connect");
    let mut req = format!("PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", first.len()).into_bytes();
    req.extend_from_slice(first);
    req.extend_from_slice(b"\r\n");
    conn.write_all(&req).await.expect("write");
    conn
}

// ---- test files, built in code ----

/// An 8×8 RGB image whose pixels are derived from `seed`, so different seeds give different
/// files.
fn pixels(seed: &[u8]) -> image::RgbImage {
    let digest = Sha256::digest(seed);
    image::RgbImage::from_fn(8, 8, |x, y| {
        let i = (x + y * 8) as usize;
        image::Rgb([digest[i % 32], digest[(i * 7 + 3) % 32], (x * 32 + y) as u8])
    })
}

/// A real (decodable) PNG.
pub fn png(seed: &[u8]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    pixels(seed).write_to(&mut out, image::ImageFormat::Png).expect("encoding a PNG");
    out.into_inner()
}

/// A real (decodable) JPEG.
pub fn jpeg() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    pixels(b"jpeg").write_to(&mut out, image::ImageFormat::Jpeg).expect("encoding a JPEG");
    out.into_inner()
}

pub fn text() -> Vec<u8> {
    b"just some plain text, nothing to see here\n".repeat(4)
}

pub fn html() -> Vec<u8> {
    b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>".to_vec()
}

impl TestApp {
    /// Whether the server process is still running (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}
