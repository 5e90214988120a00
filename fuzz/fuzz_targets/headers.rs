//! Header parsers: `Range`, filenames and `Content-Disposition`, `traceparent`, and
//! CloudEvents JSON into an event envelope.
#![no_main]

use airlock::names::{content_disposition, sanitize_filename};
use airlock::range::{ByteRange, parse_range};
use airlock_events::Envelope;
use libfuzzer_sys::fuzz_target;

const RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8", "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5",
    "LPT6", "LPT7", "LPT8", "LPT9",
];

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes are the representation's length, the rest the header value.
    let mut len = [0u8; 8];
    let n = data.len().min(8);
    len[..n].copy_from_slice(&data[..n]);
    let len = u64::from_le_bytes(len);
    let s = String::from_utf8_lossy(&data[n..]);
    let s = s.as_ref();

    // Range: a partial range always lies inside the representation.
    match parse_range(Some(s), len) {
        ByteRange::Partial { start, end } => assert!(start <= end && end < len, "{s:?} on {len} bytes gave {start}-{end}"),
        ByteRange::Full | ByteRange::Unsatisfiable => {}
    }

    // Filenames: sanitised names are safe and stable; the header cannot be split.
    let name = sanitize_filename(s);
    assert!(!name.is_empty() && name != "." && name != "..", "{s:?} -> {name:?}");
    assert!(!name.contains(['/', '\\']) && !name.contains(".."), "{s:?} -> {name:?}");
    assert!(!name.chars().any(char::is_control), "{s:?} -> {name:?}");
    assert!(name.len() <= 200, "{s:?} -> {} bytes", name.len());
    let stem = name.split('.').next().unwrap_or_default().trim_end();
    assert!(!RESERVED.iter().any(|r| stem.eq_ignore_ascii_case(r)), "{s:?} -> reserved device name {name:?}");
    assert_eq!(sanitize_filename(&name), name, "sanitize_filename is not idempotent on {s:?}");
    for value in [content_disposition(&name), content_disposition(s)] {
        assert!(!value.contains(['\r', '\n', '\0']), "header split: {value:?}");
    }

    // traceparent: only the exact 55-character form is accepted.
    if airlock::api::valid_traceparent(s) {
        assert!(s.len() == 55 && s.is_ascii(), "{s:?} accepted");
    }
    let _ = airlock::api::valid_traceparent(s.trim());

    // CloudEvents: parsing never panics, and an accepted event maps back losslessly.
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data)
        && let Ok(envelope) = Envelope::from_cloudevent(&json)
    {
        let again = Envelope::from_cloudevent(&envelope.to_cloudevent());
        assert_eq!(again.as_ref(), Ok(&envelope), "CloudEvent round trip changed the envelope");
    }
});
