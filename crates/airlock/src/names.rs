//! Filename hygiene: sanitising client-supplied names, extracting extensions and building `Content-Disposition` headers.

/// Longest sanitised filename, in bytes.
const MAX_NAME_BYTES: usize = 200;

/// Longest extension (including its dot), in bytes, that truncation preserves.
const MAX_EXT_BYTES: usize = 16;

/// Name used when nothing usable is left of the input.
const FALLBACK_NAME: &str = "file";

/// Windows device names that cannot be used as a file stem, whatever the extension.
const RESERVED_NAMES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8", "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5",
    "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Turns a client-supplied filename into one that is safe to store, log and send back.
///
/// Keeps only the last path segment, drops control characters and invisible or bidirectional
/// formatting characters, trims whitespace and dots from both ends, collapses runs of dots,
/// defuses Windows device names (`con.txt` becomes `_con.txt`) and truncates to 200 bytes while
/// keeping a short extension. Never returns an empty string, `.` or `..`, and is idempotent.
pub fn sanitize_filename(input: &str) -> String {
    let segment = input.rsplit(['/', '\\']).next().unwrap_or_default();

    let mut name = String::with_capacity(segment.len());
    for c in segment.chars().filter(|&c| !is_stripped(c)) {
        // Collapse runs of dots so that no `..` survives anywhere in the name.
        if c == '.' && name.ends_with('.') {
            continue;
        }
        name.push(c);
    }

    // Truncate first: cutting a long name (and trimming what the cut exposes) can produce a
    // device name (`con<spaces>x.txt` → `con.txt`), so the check comes last. Found by fuzzing.
    let mut name = truncate_name(trim_name(&name));
    if is_reserved(&name) {
        name.insert(0, '_');
        name = truncate_name(&name);
    }

    if name.is_empty() { FALLBACK_NAME.to_owned() } else { name }
}

/// Returns the lowercase extension of `filename`, without its dot.
///
/// Returns `None` when the name has no dot, ends with a dot, or is a dotfile such as `.env`.
pub fn extension(filename: &str) -> Option<String> {
    let (stem, ext) = filename.rsplit_once('.')?;
    if stem.is_empty() || ext.is_empty() {
        return None;
    }
    Some(ext.to_lowercase())
}

/// Builds a `Content-Disposition: attachment` header value for `filename`.
///
/// The `filename` parameter carries an ASCII fallback (non-ASCII characters, quotes, backslashes
/// and control characters become `_`); `filename*` carries the exact UTF-8 name, percent-encoded
/// as in RFC 5987. No input can smuggle CR or LF into the header.
pub fn content_disposition(filename: &str) -> String {
    let filename = if filename.is_empty() { FALLBACK_NAME } else { filename };
    let fallback: String = filename.chars().map(|c| if c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\' { c } else { '_' }).collect();
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{}", rfc5987_encode(filename))
}

/// Whether `c` is removed outright: control characters and invisible or bidi formatting marks.
fn is_stripped(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
        )
}

/// Trims whitespace and dots from both ends.
fn trim_name(name: &str) -> &str {
    name.trim_matches(|c: char| c.is_whitespace() || c == '.')
}

/// Whether the part before the first dot is a Windows device name.
fn is_reserved(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or_default().trim_end();
    RESERVED_NAMES.iter().any(|reserved| stem.eq_ignore_ascii_case(reserved))
}

/// Truncates `name` to [`MAX_NAME_BYTES`] on a char boundary, keeping a short extension.
fn truncate_name(name: &str) -> String {
    if name.len() <= MAX_NAME_BYTES {
        return name.to_owned();
    }
    let ext = match name.rfind('.') {
        Some(dot) if dot > 0 && name.len() - dot <= MAX_EXT_BYTES => &name[dot..],
        _ => "",
    };
    let stem = &name[..name.len() - ext.len()];
    let stem = &stem[..floor_char_boundary(stem, MAX_NAME_BYTES - ext.len())];
    // Cutting may leave a trailing dot or space; drop it so `stem..ext` or `name.` can't appear.
    format!("{}{ext}", trim_name(stem))
}

/// The largest char boundary of `s` that is at most `index`.
fn floor_char_boundary(s: &str, index: usize) -> usize {
    if index >= s.len() {
        return s.len();
    }
    (0..=index).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

/// Percent-encodes everything except RFC 5987 `attr-char`s.
fn rfc5987_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'!' | b'#' | b'$' | b'&' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_never_exposes_a_device_name() {
        let sneaky = format!("con{}x.txt", " ".repeat(250));
        let once = sanitize_filename(&sneaky);
        assert!(!is_reserved(&once), "{once:?}");
        assert_eq!(sanitize_filename(&once), once, "idempotent");
    }

    const NASTY: &[&str] = &[
        "",
        ".",
        "..",
        "...",
        "../../etc/passwd",
        "..\\..\\windows\\system32\\cmd.exe",
        "C:\\Users\\me\\Desktop\\report.pdf",
        "/",
        "dir/",
        "  . hidden . ",
        ".bashrc",
        "a..b",
        "a. .b",
        "evil\u{0}.png",
        "line\r\nbreak.txt",
        "\u{202E}gnp.exe",
        "zero\u{200B}width\u{FEFF}.txt",
        "\u{2066}isolate\u{2069}.doc",
        "con",
        "CON.txt",
        "con .txt",
        "Lpt9.tar.gz",
        "com1",
        "nul.",
        "_con",
        "conf.txt",
        "\t\u{3000} spaced \u{3000}\t",
        "日本語のファイル.txt",
        "emoji 😀.png",
        "name.",
        "name. ",
        "...name...",
    ];

    fn long_inputs() -> Vec<String> {
        vec![
            format!("{}.png", "a".repeat(300)),
            format!("{}.png", "é".repeat(150)),
            format!("{}.png", "😀".repeat(80)),
            "x".repeat(500),
            format!("{}.{}", "b".repeat(250), "e".repeat(40)),
            format!("{}. .png", "c".repeat(195)),
            format!("{}..png", "d".repeat(300)),
            format!("{} {}.txt", "f".repeat(183), "g".repeat(30)),
            format!("{}.{}", "h".repeat(190), "i".repeat(30)),
        ]
    }

    #[test]
    fn only_the_last_path_segment_is_kept() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_filename("C:\\Users\\me\\report.pdf"), "report.pdf");
        assert_eq!(sanitize_filename("a/b\\c.txt"), "c.txt");
    }

    #[test]
    fn control_and_invisible_characters_are_removed() {
        assert_eq!(sanitize_filename("evil\u{0}.png"), "evil.png");
        assert_eq!(sanitize_filename("line\r\nbreak.txt"), "linebreak.txt");
        assert_eq!(sanitize_filename("\u{202E}gnp.exe"), "gnp.exe");
        assert_eq!(sanitize_filename("a\u{200B}b\u{FEFF}c\u{2067}.txt"), "abc.txt");
    }

    #[test]
    fn whitespace_and_dots_are_trimmed_from_both_ends() {
        assert_eq!(sanitize_filename("  report.pdf  "), "report.pdf");
        assert_eq!(sanitize_filename(".bashrc"), "bashrc");
        assert_eq!(sanitize_filename("name..."), "name");
    }

    #[test]
    fn dot_runs_are_collapsed_so_dot_dot_never_survives() {
        assert_eq!(sanitize_filename("a..b"), "a.b");
        assert_eq!(sanitize_filename("a....tar..gz"), "a.tar.gz");
        for input in NASTY {
            let out = sanitize_filename(input);
            assert!(!out.contains(".."), "{input:?} gave {out:?}");
            assert_ne!(out, ".");
        }
    }

    #[test]
    fn empty_or_dot_only_input_becomes_file() {
        for input in ["", ".", "..", "...", "/", "dir/", " . . ", "\u{0}\u{200B}"] {
            assert_eq!(sanitize_filename(input), "file", "input {input:?}");
        }
    }

    #[test]
    fn windows_device_names_get_an_underscore_prefix() {
        assert_eq!(sanitize_filename("con"), "_con");
        assert_eq!(sanitize_filename("CON.txt"), "_CON.txt");
        assert_eq!(sanitize_filename("con.txt"), "_con.txt");
        assert_eq!(sanitize_filename("Lpt9.tar.gz"), "_Lpt9.tar.gz");
        assert_eq!(sanitize_filename("aux"), "_aux");
        assert_eq!(sanitize_filename("conf.txt"), "conf.txt");
        assert_eq!(sanitize_filename("com10"), "com10");
    }

    #[test]
    fn long_names_are_truncated_to_200_bytes_keeping_the_extension() {
        let out = sanitize_filename(&format!("{}.png", "a".repeat(300)));
        assert_eq!(out.len(), 200);
        assert!(out.ends_with(".png"));

        let out = sanitize_filename(&format!("{}.png", "é".repeat(150)));
        assert!(out.len() <= 200);
        assert!(out.ends_with(".png"));

        let out = sanitize_filename(&"x".repeat(500));
        assert_eq!(out, "x".repeat(200));
    }

    #[test]
    fn overlong_extensions_are_not_preserved_by_truncation() {
        let out = sanitize_filename(&format!("{}.{}", "b".repeat(250), "e".repeat(40)));
        assert_eq!(out, "b".repeat(200));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        for input in long_inputs() {
            let out = sanitize_filename(&input);
            assert!(out.len() <= 200, "{} bytes", out.len());
        }
        let out = sanitize_filename(&format!("{}.png", "😀".repeat(80)));
        assert_eq!(out.len(), 4 * 49 + 4);
    }

    #[test]
    fn sanitizing_is_idempotent_on_nasty_inputs() {
        let inputs = NASTY.iter().map(|s| (*s).to_owned()).chain(long_inputs());
        for input in inputs {
            let once = sanitize_filename(&input);
            let twice = sanitize_filename(&once);
            assert_eq!(once, twice, "input {input:?}");
            assert!(!once.is_empty());
            assert!(once.len() <= 200);
            assert!(!once.chars().any(|c| c.is_control() || c == '/' || c == '\\'));
        }
    }

    #[test]
    fn unicode_names_are_preserved() {
        assert_eq!(sanitize_filename("日本語のファイル.txt"), "日本語のファイル.txt");
        assert_eq!(sanitize_filename("emoji 😀.png"), "emoji 😀.png");
    }

    #[test]
    fn extension_is_lowercase_without_the_dot() {
        assert_eq!(extension("photo.JPG").as_deref(), Some("jpg"));
        assert_eq!(extension("archive.tar.gz").as_deref(), Some("gz"));
        assert_eq!(extension("README"), None);
        assert_eq!(extension(".env"), None);
        assert_eq!(extension("name."), None);
    }

    #[test]
    fn content_disposition_has_an_ascii_fallback_and_an_encoded_utf8_name() {
        assert_eq!(content_disposition("report.pdf"), "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf");
        assert_eq!(content_disposition("résumé 1.pdf"), "attachment; filename=\"r_sum_ 1.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%201.pdf");
    }

    #[test]
    fn content_disposition_cannot_be_broken_out_of() {
        let header = content_disposition("a\"b\\c\r\nSet-Cookie: x=1;.txt");
        assert!(!header.contains('\r') && !header.contains('\n'));
        assert!(header.starts_with("attachment; filename=\"a_b_c__Set-Cookie: x=1;.txt\"; "));
        assert!(header.ends_with("filename*=UTF-8''a%22b%5Cc%0D%0ASet-Cookie%3A%20x%3D1%3B.txt"));
    }

    #[test]
    fn content_disposition_of_an_empty_name_uses_the_fallback_name() {
        assert_eq!(content_disposition(""), "attachment; filename=\"file\"; filename*=UTF-8''file");
    }
}
