//! Content-type detection from a file's first bytes, and the checks that compare it with what the client claimed.

/// The MIME type meaning "unknown binary data".
const OCTET_STREAM: &str = "application/octet-stream";

/// Markup openings that make a browser treat the body as HTML.
const HTML_PREFIXES: &[&[u8]] = &[b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<iframe"];

/// Alternative spellings of a MIME type, mapped to the one [`normalize_mime`] returns.
const ALIASES: &[(&str, &str)] = &[
    ("image/jpg", "image/jpeg"),
    ("image/pjpeg", "image/jpeg"),
    ("image/x-png", "image/png"),
    ("image/heic", "image/heif"),
    ("image/x-icon", "image/vnd.microsoft.icon"),
    // `infer` reports WAV as `audio/x-wav`.
    ("audio/x-wav", "audio/wav"),
    ("audio/wave", "audio/wav"),
    ("audio/vnd.wave", "audio/wav"),
    ("audio/mp3", "audio/mpeg"),
    ("audio/x-mp3", "audio/mpeg"),
    ("audio/mpeg3", "audio/mpeg"),
    // `infer` reports FLAC as `audio/x-flac` and M4A as `audio/m4a`.
    ("audio/flac", "audio/x-flac"),
    ("audio/x-m4a", "audio/m4a"),
    ("application/x-pdf", "application/pdf"),
    ("application/x-zip-compressed", "application/zip"),
    ("application/x-gzip", "application/gzip"),
    ("text/xml", "application/xml"),
];

/// Types that can run code when opened by a browser or an operating system.
///
/// Includes the exact strings `infer` 0.22 reports for WebAssembly, ELF, PE, Mach-O, Java
/// classes, Android DEX, Flash and shell scripts.
const ACTIVE_TYPES: &[&str] = &[
    "image/svg+xml",
    "text/html",
    "application/xml",
    "text/xml",
    "application/xhtml+xml",
    "application/javascript",
    "application/ecmascript",
    "text/javascript",
    "text/ecmascript",
    "text/xsl",
    "application/x-msdownload",
    "application/vnd.microsoft.portable-executable",
    "application/x-executable",
    "application/x-elf",
    "application/x-mach-binary",
    "application/x-sh",
    "text/x-shellscript",
    "application/java-archive",
    "application/java",
    "application/vnd.android.dex",
    "application/vnd.android.dey",
    "application/wasm",
    "application/x-shockwave-flash",
];

/// Non-`text/*` types whose content is plain text.
const TEXTUAL_APPLICATION_TYPES: &[&str] =
    &["application/json", "application/x-ndjson", "application/yaml", "application/x-yaml", "application/toml"];

/// Zip-based document formats, which `infer` may report as plain `application/zip`.
const ZIP_CONTAINERS: &[&str] = &[
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
    "application/epub+zip",
];

/// OLE2 document formats, which `infer` may report as `application/x-ole-storage`.
const OLE_CONTAINERS: &[&str] = &["application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint"];

const DOCX: &str = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
const PPTX: &str = "application/vnd.openxmlformats-officedocument.presentationml.presentation";

/// Extensions and the normalised types their content may be detected as.
const EXTENSIONS: &[(&[&str], &[&str])] = &[
    (&["jpg", "jpeg", "jpe", "jfif"], &["image/jpeg"]),
    (&["png"], &["image/png"]),
    (&["gif"], &["image/gif"]),
    (&["webp"], &["image/webp"]),
    (&["avif"], &["image/avif"]),
    (&["heic", "heif"], &["image/heif"]),
    (&["bmp"], &["image/bmp"]),
    (&["tif", "tiff"], &["image/tiff"]),
    (&["ico"], &["image/vnd.microsoft.icon"]),
    (&["svg"], &["image/svg+xml"]),
    (&["pdf"], &["application/pdf"]),
    (&["txt", "text", "log"], &["text/plain"]),
    (&["md", "markdown"], &["text/plain", "text/markdown"]),
    (&["csv"], &["text/plain", "text/csv"]),
    (&["json"], &["text/plain", "application/json"]),
    (&["html", "htm"], &["text/html"]),
    (&["xml"], &["application/xml"]),
    (&["rtf"], &["application/rtf"]),
    (&["mp3"], &["audio/mpeg"]),
    (&["wav"], &["audio/wav"]),
    (&["ogg", "oga"], &["audio/ogg", "audio/opus"]),
    (&["opus"], &["audio/opus"]),
    (&["flac"], &["audio/x-flac"]),
    (&["m4a"], &["audio/m4a", "audio/mp4"]),
    (&["aac"], &["audio/aac"]),
    (&["mp4"], &["video/mp4"]),
    (&["m4v"], &["video/x-m4v", "video/mp4"]),
    (&["mov"], &["video/quicktime"]),
    (&["webm"], &["video/webm"]),
    (&["mkv"], &["video/x-matroska"]),
    (&["avi"], &["video/x-msvideo"]),
    (&["mpg", "mpeg"], &["video/mpeg"]),
    (&["zip"], &["application/zip"]),
    (&["gz", "tgz"], &["application/gzip"]),
    (&["bz2"], &["application/x-bzip2"]),
    (&["xz"], &["application/x-xz"]),
    (&["zst"], &["application/zstd"]),
    (&["7z"], &["application/x-7z-compressed"]),
    (&["rar"], &["application/vnd.rar"]),
    (&["tar"], &["application/x-tar"]),
    (&["exe", "dll"], &["application/vnd.microsoft.portable-executable"]),
    (&["doc"], &["application/msword", "application/x-ole-storage"]),
    (&["xls"], &["application/vnd.ms-excel", "application/x-ole-storage"]),
    (&["ppt"], &["application/vnd.ms-powerpoint", "application/x-ole-storage"]),
    (&["docx"], &[DOCX, "application/zip"]),
    (&["xlsx"], &[XLSX, "application/zip"]),
    (&["pptx"], &[PPTX, "application/zip"]),
    (&["odt"], &["application/vnd.oasis.opendocument.text", "application/zip"]),
    (&["ods"], &["application/vnd.oasis.opendocument.spreadsheet", "application/zip"]),
    (&["odp"], &["application/vnd.oasis.opendocument.presentation", "application/zip"]),
    (&["epub"], &["application/epub+zip", "application/zip"]),
];

/// Detects the content type of a file from its first bytes (callers pass up to 8 KiB).
///
/// Markup that a browser would execute (HTML, SVG, XML) is recognised first, after skipping a
/// UTF-8 BOM and leading whitespace; then binary formats via `infer`; then UTF-8 text without
/// NUL bytes is `text/plain`. Returns normalised types (see [`normalize_mime`]), or `None` when
/// nothing matched and the caller should assume `application/octet-stream`.
pub fn sniff(head: &[u8]) -> Option<String> {
    if let Some(mime) = sniff_markup(head) {
        return Some(mime.to_owned());
    }
    if let Some(kind) = infer::get(head) {
        return Some(normalize_mime(kind.mime_type()));
    }
    if is_utf8_text(head) {
        return Some("text/plain".to_owned());
    }
    None
}

/// Whether `mime` matches `pattern`: an exact type, `type/*`, `*/*` or `*`.
///
/// Both sides are compared normalised, so case, parameters and aliases don't matter.
pub fn mime_matches(pattern: &str, mime: &str) -> bool {
    let pattern = normalize_mime(pattern);
    let mime = normalize_mime(mime);
    if pattern == "*" || pattern == "*/*" {
        return true;
    }
    match pattern.strip_suffix("/*") {
        Some(wanted) => mime.split_once('/').is_some_and(|(kind, subtype)| kind == wanted && !subtype.is_empty()),
        None => pattern == mime,
    }
}

/// Lowercases `m`, strips parameters such as `; charset=utf-8` and maps aliases
/// (`image/jpg` → `image/jpeg`, `audio/x-wav` → `audio/wav`, …) to one spelling.
pub fn normalize_mime(m: &str) -> String {
    let essence = m.split(';').next().unwrap_or_default().trim();
    let lower = essence.to_ascii_lowercase();
    ALIASES.iter().find(|(alias, _)| *alias == lower).map_or(lower, |(_, canonical)| (*canonical).to_owned())
}

/// Whether the client's `declared` type is consistent with the `detected` one.
///
/// True when they are equal once normalised; when `declared` is `application/octet-stream`;
/// when `detected` is `text/plain` and `declared` is a passive textual type such as `text/csv`
/// or `application/json` (never an active one like `text/html`); and when `detected` is the
/// generic zip or OLE2 container of a declared office document.
pub fn declared_agrees(declared: &str, detected: &str) -> bool {
    let declared = normalize_mime(declared);
    let detected = normalize_mime(detected);
    if declared == detected || declared == OCTET_STREAM {
        return true;
    }
    match detected.as_str() {
        "text/plain" => (declared.starts_with("text/") || TEXTUAL_APPLICATION_TYPES.contains(&&*declared)) && !is_active_content(&declared),
        "application/zip" => ZIP_CONTAINERS.contains(&&*declared),
        "application/x-ole-storage" => OLE_CONTAINERS.contains(&&*declared),
        _ => false,
    }
}

/// Whether a file extension is consistent with the `detected` type.
///
/// Known extensions must list the detected type; unknown extensions, or none, always agree.
pub fn extension_agrees(ext: Option<&str>, detected: &str) -> bool {
    let Some(ext) = ext else {
        return true;
    };
    let ext = ext.trim().trim_start_matches('.').to_ascii_lowercase();
    let detected = normalize_mime(detected);
    EXTENSIONS.iter().find(|(exts, _)| exts.contains(&ext.as_str())).is_none_or(|(_, mimes)| mimes.contains(&detected.as_str()))
}

/// Whether content of type `mime` can execute code: scriptable markup (HTML, SVG and any XML,
/// including every `+xml` type), JavaScript, executables and shell scripts.
pub fn is_active_content(mime: &str) -> bool {
    let mime = normalize_mime(mime);
    ACTIVE_TYPES.contains(&mime.as_str()) || mime.ends_with("+xml")
}

/// Recognises HTML, SVG and XML by their opening markup.
fn sniff_markup(head: &[u8]) -> Option<&'static str> {
    let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let start = text.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0C')).unwrap_or(text.len());
    let text = &text[start..];

    if starts_with_ignore_case(text, b"<?xml") {
        return Some(if contains_ignore_case(text, b"<svg") { "image/svg+xml" } else { "application/xml" });
    }
    if starts_with_ignore_case(text, b"<svg") {
        return Some("image/svg+xml");
    }
    if HTML_PREFIXES.iter().any(|prefix| starts_with_ignore_case(text, prefix)) {
        return Some("text/html");
    }
    // `<!DOCTYPE svg ...>` or a leading comment before the `<svg>` element.
    if text.starts_with(b"<!") && contains_ignore_case(text, b"<svg") {
        return Some("image/svg+xml");
    }
    None
}

fn starts_with_ignore_case(haystack: &[u8], prefix: &[u8]) -> bool {
    haystack.get(..prefix.len()).is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window.eq_ignore_ascii_case(needle))
}

/// Valid UTF-8 without NUL bytes, allowing a multi-byte character cut off at the very end.
fn is_utf8_text(head: &[u8]) -> bool {
    if head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(err) => err.error_len().is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00";
    const JPEG: &[u8] = b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00";
    const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04";
    const PDF: &[u8] = b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n";
    const ZIP: &[u8] = b"PK\x03\x04\x14\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00hello";
    const WAV: &[u8] = b"RIFF\x24\x08\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x02\x00\x44\xAC\x00\x00";

    fn elf() -> Vec<u8> {
        let mut head = b"\x7FELF\x02\x01\x01\x00".to_vec();
        head.resize(64, 0);
        head
    }

    #[test]
    fn binary_formats_are_detected_from_their_magic_bytes() {
        assert_eq!(sniff(PNG).as_deref(), Some("image/png"));
        assert_eq!(sniff(JPEG).as_deref(), Some("image/jpeg"));
        assert_eq!(sniff(GIF).as_deref(), Some("image/gif"));
        assert_eq!(sniff(PDF).as_deref(), Some("application/pdf"));
        assert_eq!(sniff(ZIP).as_deref(), Some("application/zip"));
        assert_eq!(sniff(&elf()).as_deref(), Some("application/x-executable"));
    }

    #[test]
    fn wav_is_reported_with_the_normalised_type() {
        assert_eq!(infer::get(WAV).map(|kind| kind.mime_type()), Some("audio/x-wav"));
        assert_eq!(sniff(WAV).as_deref(), Some("audio/wav"));
        assert!(declared_agrees("audio/x-wav", "audio/wav"));
        assert!(declared_agrees("audio/wave", &sniff(WAV).unwrap_or_default()));
        assert!(extension_agrees(Some("wav"), "audio/x-wav"));
    }

    #[test]
    fn svg_with_a_bom_and_xml_declaration_is_svg() {
        let head = b"\xEF\xBB\xBF  <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- made by hand -->\n<SVG xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></SVG>";
        assert_eq!(sniff(head).as_deref(), Some("image/svg+xml"));
    }

    #[test]
    fn bare_svg_and_svg_after_a_doctype_are_svg() {
        assert_eq!(sniff(b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>").as_deref(), Some("image/svg+xml"));
        assert_eq!(sniff(b"<!DOCTYPE svg PUBLIC \"-//W3C//DTD SVG 1.1//EN\" \"x\">\n<svg/>").as_deref(), Some("image/svg+xml"));
        assert_eq!(sniff(b"<!-- icon -->\n<svg/>").as_deref(), Some("image/svg+xml"));
    }

    #[test]
    fn xml_without_svg_is_xml() {
        assert_eq!(sniff(b"<?xml version=\"1.0\"?><feed/>").as_deref(), Some("application/xml"));
    }

    #[test]
    fn html_is_detected_case_insensitively_after_whitespace() {
        assert_eq!(sniff(b"<!DOCTYPE HTML>\n<html></html>").as_deref(), Some("text/html"));
        assert_eq!(sniff(b"\r\n\t <HtMl lang=en>").as_deref(), Some("text/html"));
        assert_eq!(sniff(b"\xEF\xBB\xBF<script>alert(1)</script>").as_deref(), Some("text/html"));
        assert_eq!(sniff(b"<iframe src=x>").as_deref(), Some("text/html"));
        assert_eq!(sniff(b"<body onload=x>").as_deref(), Some("text/html"));
        assert_eq!(sniff(b"<head>").as_deref(), Some("text/html"));
    }

    #[test]
    fn plain_utf8_text_is_text_plain() {
        assert_eq!(sniff(b"hello, world\n").as_deref(), Some("text/plain"));
        assert_eq!(sniff("name,city\nZoë,Zürich\n".as_bytes()).as_deref(), Some("text/plain"));
        assert_eq!(sniff(b"{\"a\": 1}").as_deref(), Some("text/plain"));
    }

    #[test]
    fn text_cut_in_the_middle_of_a_character_is_still_text() {
        let text = "prix: 10 €".as_bytes();
        assert_eq!(sniff(&text[..text.len() - 1]).as_deref(), Some("text/plain"));
        assert_eq!(sniff(&text[..text.len() - 2]).as_deref(), Some("text/plain"));
    }

    #[test]
    fn invalid_utf8_in_the_middle_is_not_text() {
        assert_eq!(sniff(b"abc\xE2\x82def").as_deref(), None);
    }

    #[test]
    fn text_with_nul_bytes_is_not_text() {
        assert_eq!(sniff(b"abc\x00def").as_deref(), None);
    }

    #[test]
    fn binary_garbage_is_unknown() {
        assert_eq!(sniff(b"\xDE\xAD\xBE\xEF\x00\x01\x02\xFF\xFE\x80\x81").as_deref(), None);
    }

    #[test]
    fn mime_matches_exact_types_ignoring_case_and_parameters() {
        assert!(mime_matches("image/png", "image/png"));
        assert!(mime_matches("Image/PNG", "image/png; charset=binary"));
        assert!(mime_matches("text/plain", "text/plain; charset=utf-8"));
        assert!(mime_matches("image/jpeg", "image/jpg"));
        assert!(!mime_matches("image/png", "image/jpeg"));
    }

    #[test]
    fn mime_matches_wildcards() {
        assert!(mime_matches("image/*", "image/webp"));
        assert!(mime_matches("IMAGE/*", "image/webp"));
        assert!(!mime_matches("image/*", "video/mp4"));
        assert!(!mime_matches("image/*", "imagex/png"));
        assert!(mime_matches("*/*", "application/pdf"));
        assert!(mime_matches("*", "application/pdf"));
    }

    #[test]
    fn normalize_mime_lowercases_strips_parameters_and_maps_aliases() {
        assert_eq!(normalize_mime(" Text/HTML ; charset=UTF-8"), "text/html");
        assert_eq!(normalize_mime("image/jpg"), "image/jpeg");
        assert_eq!(normalize_mime("image/pjpeg"), "image/jpeg");
        assert_eq!(normalize_mime("image/x-png"), "image/png");
        assert_eq!(normalize_mime("audio/x-wav"), "audio/wav");
        assert_eq!(normalize_mime("audio/wave"), "audio/wav");
        assert_eq!(normalize_mime("audio/vnd.wave"), "audio/wav");
        assert_eq!(normalize_mime("audio/mp3"), "audio/mpeg");
        assert_eq!(normalize_mime("application/x-pdf"), "application/pdf");
        assert_eq!(normalize_mime("image/webp"), "image/webp");
    }

    #[test]
    fn declared_types_agree_with_the_same_detected_type() {
        assert!(declared_agrees("image/png", "image/png"));
        assert!(declared_agrees("image/jpg", "image/jpeg"));
        assert!(declared_agrees("IMAGE/JPEG; q=1", "image/jpeg"));
    }

    #[test]
    fn octet_stream_agrees_with_anything() {
        assert!(declared_agrees("application/octet-stream", "image/png"));
        assert!(declared_agrees("application/octet-stream", "text/html"));
    }

    #[test]
    fn passive_text_types_agree_with_detected_plain_text() {
        assert!(declared_agrees("text/csv", "text/plain"));
        assert!(declared_agrees("text/markdown; charset=utf-8", "text/plain"));
        assert!(declared_agrees("application/json", "text/plain"));
    }

    #[test]
    fn active_text_types_do_not_agree_with_detected_plain_text() {
        assert!(!declared_agrees("text/html", "text/plain"));
        assert!(!declared_agrees("text/javascript", "text/plain"));
        assert!(!declared_agrees("text/xml", "text/plain"));
        assert!(!declared_agrees("image/svg+xml", "text/plain"));
    }

    #[test]
    fn mismatched_declared_types_disagree() {
        assert!(!declared_agrees("image/png", "image/jpeg"));
        assert!(!declared_agrees("image/png", "text/html"));
        assert!(!declared_agrees("image/png", "image/svg+xml"));
        assert!(!declared_agrees("application/pdf", "application/x-executable"));
        assert!(!declared_agrees("text/plain", "application/zip"));
        assert!(!declared_agrees("image/jpeg", "application/octet-stream"));
    }

    #[test]
    fn office_documents_agree_with_their_generic_container() {
        assert!(declared_agrees(DOCX, "application/zip"));
        assert!(declared_agrees("application/msword", "application/x-ole-storage"));
        assert!(!declared_agrees("application/java-archive", "application/zip"));
    }

    #[test]
    fn known_extensions_must_match_the_detected_type() {
        assert!(extension_agrees(Some("jpg"), "image/jpeg"));
        assert!(extension_agrees(Some("JFIF"), "image/jpeg"));
        assert!(extension_agrees(Some(".png"), "image/png"));
        assert!(extension_agrees(Some("csv"), "text/plain"));
        assert!(extension_agrees(Some("json"), "text/plain"));
        assert!(extension_agrees(Some("svg"), "image/svg+xml"));
        assert!(extension_agrees(Some("m4a"), "audio/m4a"));
        assert!(extension_agrees(Some("flac"), "audio/x-flac"));
        assert!(extension_agrees(Some("exe"), "application/vnd.microsoft.portable-executable"));
        assert!(extension_agrees(Some("docx"), "application/zip"));
    }

    #[test]
    fn known_extensions_with_a_different_detected_type_disagree() {
        assert!(!extension_agrees(Some("png"), "image/jpeg"));
        assert!(!extension_agrees(Some("jpg"), "text/html"));
        assert!(!extension_agrees(Some("txt"), "image/svg+xml"));
        assert!(!extension_agrees(Some("pdf"), "application/x-executable"));
        assert!(!extension_agrees(Some("svg"), "text/plain"));
        assert!(!extension_agrees(Some("png"), "application/octet-stream"));
    }

    #[test]
    fn unknown_or_missing_extensions_always_agree() {
        assert!(extension_agrees(None, "image/png"));
        assert!(extension_agrees(Some("xyz"), "image/png"));
        assert!(extension_agrees(Some("bin"), "application/x-executable"));
    }

    #[test]
    fn every_extension_table_entry_is_normalised() {
        for (_, mimes) in EXTENSIONS {
            for mime in *mimes {
                assert_eq!(normalize_mime(mime), *mime);
            }
        }
    }

    #[test]
    fn active_content_includes_markup_scripts_and_executables() {
        for mime in [
            "image/svg+xml",
            "text/html; charset=utf-8",
            "application/xml",
            "text/xml",
            "application/xhtml+xml",
            "application/rss+xml",
            "text/javascript",
            "application/javascript",
            "application/x-executable",
            "application/vnd.microsoft.portable-executable",
            "application/x-mach-binary",
            "application/wasm",
            "application/x-sh",
            "text/x-shellscript",
            "application/java-archive",
        ] {
            assert!(is_active_content(mime), "{mime}");
        }
    }

    #[test]
    fn ordinary_media_is_not_active_content() {
        for mime in ["image/png", "text/plain", "application/pdf", "video/mp4", "application/zip"] {
            assert!(!is_active_content(mime), "{mime}");
        }
    }

    #[test]
    fn every_executable_type_infer_reports_is_active_content() {
        let elf = elf();
        let wasm: &[u8] = b"\x00asm\x01\x00\x00\x00";
        let macho: &[u8] = b"\xCF\xFA\xED\xFE\x07\x00\x00\x01\x03\x00\x00\x00";
        let pe = {
            let mut pe = b"MZ".to_vec();
            pe.resize(0x80, 0);
            pe[0x3C] = 0x40;
            pe[0x40..0x44].copy_from_slice(b"PE\x00\x00");
            pe
        };
        for head in [elf.as_slice(), wasm, macho, pe.as_slice()] {
            let detected = sniff(head);
            assert!(detected.is_some(), "{head:?} not detected");
            let detected = detected.unwrap_or_default();
            assert!(is_active_content(&detected), "{detected}");
        }
    }
}
