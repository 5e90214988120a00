//! Start-up configuration errors: reported, named, and exit code 1.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::helpers::airlock_command;

/// Runs `airlock serve --config <toml>` and expects it to refuse to start; returns
/// (exit code, stderr).
fn serve_with_bad_config(toml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("airlock.toml");
    std::fs::write(&path, toml).expect("write config");
    let mut child = airlock_command()
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env("AIRLOCK_DATA_DIR", dir.path())
        .env("AIRLOCK_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started despite the config:\n{toml}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), reader.join().expect("stderr reader"))
}

#[test]
fn an_unknown_top_level_key_stops_the_server_and_is_named() {
    let (code, stderr) = serve_with_bad_config("lisen = \"127.0.0.1:1\"\n");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("lisen"), "stderr does not name the key: {stderr}");
}

#[test]
fn an_unknown_key_in_a_kind_stops_the_server_and_is_named() {
    let (code, stderr) = serve_with_bad_config("[kinds.avatar]\nmax_bytez = 1000\n");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("max_bytez"), "stderr does not name the key: {stderr}");
}

#[test]
fn required_scanning_without_a_scanner_stops_the_server() {
    let (code, stderr) = serve_with_bad_config("[kinds.kyc]\nscan = \"required\"\n");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("kinds.kyc.scan"), "{stderr}");
    assert!(stderr.contains("scanner"), "{stderr}");
}

#[test]
fn invalid_values_stop_the_server_with_a_useful_message() {
    for (toml, needle) in [
        ("[kinds.a]\nupload_ttl = \"soon\"\n", "upload_ttl"),
        ("validation_timeout = \"forever\"\n", "validation_timeout"),
        ("[kinds.a]\nmax_bytes = 0\n", "max_bytes"),
        ("[kinds.a]\nallowed_types = [\"png\"]\n", "allowed_types"),
        ("[kinds.\"bad name\"]\nmax_bytes = 1\n", "bad name"),
        ("this is not toml", "airlock.toml"),
    ] {
        let (code, stderr) = serve_with_bad_config(toml);
        assert_eq!(code, Some(1), "{toml}: {stderr}");
        assert!(stderr.contains(needle), "{toml}: {stderr}");
    }
}
