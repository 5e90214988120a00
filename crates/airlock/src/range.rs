//! HTTP `Range` requests for a single byte range (RFC 9110 §14), as used by downloads.

/// What a `Range` header asks for, resolved against the representation's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// No usable range: serve the whole representation with `200 OK`.
    Full,
    /// Serve bytes `start..=end` with `206 Partial Content`; `end` is inclusive and `< len`.
    Partial {
        /// First byte offset.
        start: u64,
        /// Last byte offset, inclusive.
        end: u64,
    },
    /// The range lies outside the representation: answer `416 Range Not Satisfiable`.
    Unsatisfiable,
}

/// Resolves an optional `Range` header against a representation of `len` bytes.
///
/// Understands `bytes=a-b`, `bytes=a-` and the suffix form `bytes=-n`, clamping the end to
/// `len - 1`. A start at or past `len`, a zero-length suffix, or any range on an empty
/// representation is [`ByteRange::Unsatisfiable`]. Malformed headers, other units and
/// multi-range requests are ignored, as RFC 9110 allows, giving [`ByteRange::Full`].
pub fn parse_range(header: Option<&str>, len: u64) -> ByteRange {
    let Some(header) = header else {
        return ByteRange::Full;
    };
    let Some((unit, spec)) = header.trim().split_once('=') else {
        return ByteRange::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };

    if first.is_empty() {
        // Suffix range: the last `n` bytes.
        let Some(suffix) = parse_digits(last) else {
            return ByteRange::Full;
        };
        if suffix == 0 || len == 0 {
            return ByteRange::Unsatisfiable;
        }
        return ByteRange::Partial { start: len.saturating_sub(suffix), end: len - 1 };
    }

    let Some(start) = parse_digits(first) else {
        return ByteRange::Full;
    };
    let end = if last.is_empty() {
        None
    } else {
        match parse_digits(last) {
            Some(end) if end >= start => Some(end),
            // `a-b` with `b < a` is syntactically invalid, so the header is ignored.
            _ => return ByteRange::Full,
        }
    };
    if start >= len {
        return ByteRange::Unsatisfiable;
    }
    let last_byte = len - 1;
    ByteRange::Partial { start, end: end.map_or(last_byte, |end| end.min(last_byte)) }
}

/// Formats a `Content-Range` value for a `206` response: `bytes start-end/len`.
pub fn content_range(start: u64, end: u64, len: u64) -> String {
    format!("bytes {start}-{end}/{len}")
}

/// Formats a `Content-Range` value for a `416` response: `bytes */len`.
pub fn unsatisfied_content_range(len: u64) -> String {
    format!("bytes */{len}")
}

/// Parses a non-empty run of ASCII digits, saturating at `u64::MAX` instead of overflowing.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, b| acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(start: u64, end: u64) -> ByteRange {
        ByteRange::Partial { start, end }
    }

    #[test]
    fn no_header_means_the_full_body() {
        assert_eq!(parse_range(None, 100), ByteRange::Full);
    }

    #[test]
    fn a_closed_range_is_returned_as_is() {
        assert_eq!(parse_range(Some("bytes=0-9"), 100), partial(0, 9));
        assert_eq!(parse_range(Some("bytes=10-10"), 100), partial(10, 10));
    }

    #[test]
    fn an_open_range_runs_to_the_last_byte() {
        assert_eq!(parse_range(Some("bytes=90-"), 100), partial(90, 99));
        assert_eq!(parse_range(Some("bytes=0-"), 1), partial(0, 0));
    }

    #[test]
    fn the_end_is_clamped_to_the_last_byte() {
        assert_eq!(parse_range(Some("bytes=50-1000"), 100), partial(50, 99));
        assert_eq!(parse_range(Some("bytes=0-99999999999999999999999"), 100), partial(0, 99));
    }

    #[test]
    fn a_suffix_range_takes_the_last_n_bytes() {
        assert_eq!(parse_range(Some("bytes=-10"), 100), partial(90, 99));
        assert_eq!(parse_range(Some("bytes=-500"), 100), partial(0, 99));
    }

    #[test]
    fn a_start_at_or_past_the_end_is_unsatisfiable() {
        assert_eq!(parse_range(Some("bytes=100-"), 100), ByteRange::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=150-200"), 100), ByteRange::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=99999999999999999999999-"), 100), ByteRange::Unsatisfiable);
    }

    #[test]
    fn a_zero_length_suffix_is_unsatisfiable() {
        assert_eq!(parse_range(Some("bytes=-0"), 100), ByteRange::Unsatisfiable);
    }

    #[test]
    fn any_range_on_an_empty_body_is_unsatisfiable() {
        assert_eq!(parse_range(Some("bytes=0-"), 0), ByteRange::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-5"), 0), ByteRange::Unsatisfiable);
        assert_eq!(parse_range(None, 0), ByteRange::Full);
    }

    #[test]
    fn malformed_headers_are_ignored() {
        for header in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=abc",
            "bytes=a-b",
            "bytes=5",
            "bytes=+5-10",
            "bytes=5-+10",
            "bytes=-+5",
            "bytes=10-5",
            "bytes=1-2-3",
            "bytes=--5",
            "bytes= 5 - 6",
        ] {
            assert_eq!(parse_range(Some(header), 100), ByteRange::Full, "{header:?}");
        }
    }

    #[test]
    fn other_units_are_ignored() {
        assert_eq!(parse_range(Some("items=0-5"), 100), ByteRange::Full);
    }

    #[test]
    fn the_unit_is_case_insensitive() {
        assert_eq!(parse_range(Some("Bytes=0-5"), 100), partial(0, 5));
    }

    #[test]
    fn multiple_ranges_are_ignored() {
        assert_eq!(parse_range(Some("bytes=0-5,10-15"), 100), ByteRange::Full);
        assert_eq!(parse_range(Some("bytes=0-5, 200-300"), 100), ByteRange::Full);
    }

    #[test]
    fn content_range_formats_the_range_and_length() {
        assert_eq!(content_range(0, 9, 100), "bytes 0-9/100");
        assert_eq!(unsatisfied_content_range(100), "bytes */100");
    }
}
