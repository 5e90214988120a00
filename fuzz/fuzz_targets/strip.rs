//! Metadata stripping and the image checks on arbitrary bytes, for every stripped format.
//!
//! Never panics; and for a JPEG that Airlock would accept and store (the input passes
//! `check`, strips, and the stripped copy passes `check` again, as in
//! `pipeline::validate::inspect`), stripping the stored copy again changes nothing.
//! Garbage that `check` refuses is not held to that: it is quarantined before it is stored.
#![no_main]

use airlock::images::{ImageLimits, check, strip};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

const LIMITS: ImageLimits = ImageLimits { max_pixels: 1_000_000, max_side: 2000, max_frames: 50, max_alloc: 64 << 20 };

fuzz_target!(|data: &[u8]| {
    for mime in ["image/jpeg", "image/png", "image/webp"] {
        let accepted = check(data, mime, &LIMITS).is_ok();
        let Ok(out) = strip(Bytes::copy_from_slice(data), mime) else {
            continue;
        };
        let stored = check(&out, mime, &LIMITS).is_ok();

        if mime == "image/jpeg" && accepted && stored {
            // Stripping the clean copy Airlock stores removes nothing more.
            match strip(out.clone(), mime) {
                Ok(again) => assert_eq!(again.len(), out.len(), "stripping a stored, stripped JPEG changed its length"),
                Err(e) => panic!("a stored, stripped JPEG no longer strips: {e}"),
            }
        }
    }
});
