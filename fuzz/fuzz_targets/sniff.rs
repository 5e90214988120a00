//! Content sniffing on arbitrary bytes: `sniff` and the checks applied to its result must
//! never panic, and a few properties must hold.
#![no_main]

use airlock::sniff::{declared_agrees, extension_agrees, is_active_content, normalize_mime, sniff};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let detected = sniff(data);
    let detected = detected.as_deref().unwrap_or("application/octet-stream");

    // Sniffed types are already normalised.
    assert_eq!(normalize_mime(detected), detected, "sniff returned a non-normalised type");

    // A type always agrees with itself, and a missing extension always agrees.
    assert!(declared_agrees(detected, detected), "{detected} does not agree with itself");
    assert!(extension_agrees(None, detected));

    // Markup the sniffer recognises as executable in a browser is active content.
    if matches!(detected, "text/html" | "image/svg+xml" | "application/xml") {
        assert!(is_active_content(detected), "{detected} sniffed as markup but not active");
    }

    // Plain text never lets a client declare an active type.
    if detected == "text/plain" {
        for active in ["text/html", "image/svg+xml", "application/xml", "text/javascript"] {
            assert!(!declared_agrees(active, detected), "text/plain accepted as {active}");
        }
    }

    // The same calls with client-controlled strings taken from the input.
    let text = String::from_utf8_lossy(data);
    let (declared, ext) = text.split_once('\n').unwrap_or((&text, ""));
    let _ = declared_agrees(declared, detected);
    let _ = declared_agrees(detected, declared);
    let _ = extension_agrees(Some(ext), detected);
    let _ = extension_agrees(Some(declared), detected);
    let _ = is_active_content(declared);
});
