//! HMAC-SHA256 signed URLs granting time-limited upload (`PUT`) or download (`GET`) access to one file.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// Domain-separation prefix of the string that is MACed; bump it if the format ever changes.
const CANONICAL_PREFIX: &str = "airlock-url-v1";

/// The query parameters a signed URL may carry; anything else is rejected.
const KNOWN_PARAMS: &[&str] = &["exp", "max", "ct", "var", "sig"];

/// The HTTP method a signed URL is valid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Upload the file.
    Put,
    /// Download the file.
    Get,
}

impl Method {
    /// The method's name as it appears on the wire and in the canonical string.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Put => "PUT",
            Method::Get => "GET",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a signed URL grants.
///
/// Values must not contain line breaks: such a URL would be signed but never verify. An empty
/// `content_type` or `variant` is treated as absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlClaims {
    /// The method the URL may be used with.
    pub method: Method,
    /// The file the URL refers to (taken from the path when verifying).
    pub file_id: Uuid,
    /// Expiry, in Unix seconds; the URL is valid up to and including this second.
    pub expires: i64,
    /// Largest body an upload may send.
    pub max_bytes: Option<u64>,
    /// Content type an upload must declare, or a download is served with.
    pub content_type: Option<String>,
    /// Which derived variant of the file a download refers to.
    pub variant: Option<String>,
}

/// Why a signed URL was refused.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The URL lacks the `sig` or `exp` parameter.
    #[error("the URL is not signed: the `sig` or `exp` parameter is missing")]
    Missing,
    /// The signature does not match, or the query string is malformed.
    #[error("the URL signature is invalid")]
    Invalid,
    /// The signature is genuine but the URL has expired.
    #[error("the signed URL has expired")]
    Expired,
}

impl SignatureError {
    /// A stable, machine-readable error code for API responses.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Invalid => "signature_invalid",
            SignatureError::Expired => "signature_expired",
        }
    }
}

/// Signs and verifies URLs with a secret HMAC-SHA256 key.
#[derive(Clone)]
pub struct UrlSigner {
    key: Vec<u8>,
}

impl fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlSigner").field("key", &"<redacted>").finish()
    }
}

impl UrlSigner {
    /// Creates a signer using `key` as the HMAC secret.
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    /// Signs `claims`, returning the query string (without a leading `?`) to append to the
    /// file's URL: `exp=..&max=..&ct=..&var=..&sig=..`, absent optional parameters omitted.
    pub fn sign(&self, claims: &UrlClaims) -> String {
        let exp = claims.expires.to_string();
        let max = claims.max_bytes.map(|max| max.to_string());
        let ct = non_empty(claims.content_type.as_deref());
        let var = non_empty(claims.variant.as_deref());
        let canonical = canonical_string(claims.method, claims.file_id, &exp, max.as_deref(), ct, var);
        let sig = URL_SAFE_NO_PAD.encode(self.mac(&canonical).finalize().into_bytes());

        let mut query = format!("exp={}", percent_encode(&exp));
        for (name, value) in [("max", max.as_deref()), ("ct", ct), ("var", var)] {
            if let Some(value) = value {
                query.push_str(&format!("&{name}={}", percent_encode(value)));
            }
        }
        query.push_str(&format!("&sig={sig}"));
        query
    }

    /// Verifies the raw query string of a request for `file_id` with `method`.
    ///
    /// The MAC is checked (in constant time) before the expiry, so a forged URL is always
    /// [`SignatureError::Invalid`] whatever its `exp`. Unknown or repeated parameters and
    /// undecodable values are [`SignatureError::Invalid`] too.
    pub fn verify(&self, method: Method, file_id: Uuid, query: &str, now_unix: i64) -> Result<UrlClaims, SignatureError> {
        let mut params = parse_query(query)?;
        let (Some(sig), Some(exp)) = (params.remove("sig"), params.remove("exp")) else {
            return Err(SignatureError::Missing);
        };
        let max = params.remove("max");
        let ct = params.remove("ct").filter(|ct| !ct.is_empty());
        let var = params.remove("var").filter(|var| !var.is_empty());

        let canonical = canonical_string(method, file_id, &exp, max.as_deref(), ct.as_deref(), var.as_deref());
        let tag = URL_SAFE_NO_PAD.decode(sig.as_bytes()).map_err(|_| SignatureError::Invalid)?;
        self.mac(&canonical).verify_slice(&tag).map_err(|_| SignatureError::Invalid)?;

        let expires: i64 = exp.parse().map_err(|_| SignatureError::Invalid)?;
        let max_bytes = max.map(|max| max.parse::<u64>()).transpose().map_err(|_| SignatureError::Invalid)?;
        if now_unix > expires {
            return Err(SignatureError::Expired);
        }
        Ok(UrlClaims { method, file_id, expires, max_bytes, content_type: ct, variant: var })
    }

    /// A MAC keyed with this signer's secret, already fed `canonical`.
    fn mac(&self, canonical: &str) -> HmacSha256 {
        let mut mac = match HmacSha256::new_from_slice(&self.key) {
            Ok(mac) => mac,
            // HMAC accepts keys of any length (long keys are hashed first), so `hmac` never
            // returns `InvalidLength` here.
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(canonical.as_bytes());
        mac
    }
}

/// The string that is MACed.
fn canonical_string(method: Method, file_id: Uuid, exp: &str, max: Option<&str>, ct: Option<&str>, var: Option<&str>) -> String {
    format!("{CANONICAL_PREFIX}\n{method}\n{file_id}\n{exp}\n{}\n{}\n{}", max.unwrap_or_default(), ct.unwrap_or_default(), var.unwrap_or_default(),)
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|value| !value.is_empty())
}

/// Splits and percent-decodes a raw query string, rejecting unknown and repeated parameters.
///
/// Values containing control characters are rejected so that no value can forge the line
/// structure of the canonical string.
fn parse_query(query: &str) -> Result<HashMap<&'static str, String>, SignatureError> {
    let mut params = HashMap::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(raw_name)?;
        let Some(&name) = KNOWN_PARAMS.iter().find(|known| **known == name) else {
            return Err(SignatureError::Invalid);
        };
        let value = percent_decode(raw_value)?;
        if value.chars().any(char::is_control) {
            return Err(SignatureError::Invalid);
        }
        if params.insert(name, value).is_some() {
            return Err(SignatureError::Invalid);
        }
    }
    Ok(params)
}

/// Percent-encodes everything except RFC 3986 unreserved characters.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (`+` stays a literal plus); the result must be UTF-8.
fn percent_decode(value: &str) -> Result<String, SignatureError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|&b| hex_value(b));
            let lo = bytes.get(i + 2).and_then(|&b| hex_value(b));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(SignatureError::Invalid);
            };
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| SignatureError::Invalid)
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|digit| u8::try_from(digit).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn signer() -> UrlSigner {
        UrlSigner::new(b"test secret key")
    }

    fn file_id() -> Uuid {
        Uuid::from_u128(0x0192_5f6e_7a1b_7c3d_8e4f_a0b1_c2d3_e4f5)
    }

    fn claims() -> UrlClaims {
        UrlClaims {
            method: Method::Put,
            file_id: file_id(),
            expires: NOW + 600,
            max_bytes: Some(10 * 1024 * 1024),
            content_type: Some("image/svg+xml".to_owned()),
            variant: Some("thumb 256".to_owned()),
        }
    }

    /// Replaces the value of `name` in a query string.
    fn with_param(query: &str, name: &str, value: &str) -> String {
        query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((n, _)) if n == name => format!("{n}={value}"),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    fn verify(query: &str) -> Result<UrlClaims, SignatureError> {
        signer().verify(Method::Put, file_id(), query, NOW)
    }

    #[test]
    fn a_signed_url_round_trips() {
        let claims = claims();
        let query = signer().sign(&claims);
        assert_eq!(verify(&query), Ok(claims));
    }

    #[test]
    fn the_query_string_lists_parameters_in_order_and_encodes_values() {
        let query = signer().sign(&claims());
        assert!(query.starts_with("exp=1700000600&max=10485760&ct=image%2Fsvg%2Bxml&var=thumb%20256&sig="), "{query}");
        let sig = query.rsplit_once("sig=").map(|(_, sig)| sig).unwrap_or_default();
        assert_eq!(sig.len(), 43);
        assert!(!sig.contains(['=', '+', '/']));
    }

    #[test]
    fn absent_optional_claims_are_omitted_and_round_trip() {
        let claims = UrlClaims { method: Method::Get, max_bytes: None, content_type: None, variant: None, ..claims() };
        let query = signer().sign(&claims);
        assert!(query.starts_with("exp=1700000600&sig="), "{query}");
        assert_eq!(signer().verify(Method::Get, file_id(), &query, NOW), Ok(claims));
    }

    #[test]
    fn a_negative_expiry_round_trips_but_is_expired() {
        let claims = UrlClaims { expires: -5, ..claims() };
        let query = signer().sign(&claims);
        assert_eq!(verify(&query), Err(SignatureError::Expired));
        assert_eq!(signer().verify(Method::Put, file_id(), &query, -10), Ok(claims));
    }

    #[test]
    fn a_different_method_is_invalid() {
        let query = signer().sign(&claims());
        assert_eq!(signer().verify(Method::Get, file_id(), &query, NOW), Err(SignatureError::Invalid));
    }

    #[test]
    fn a_different_file_id_is_invalid() {
        let query = signer().sign(&claims());
        assert_eq!(signer().verify(Method::Put, Uuid::nil(), &query, NOW), Err(SignatureError::Invalid));
    }

    #[test]
    fn tampering_with_any_parameter_is_invalid() {
        let query = signer().sign(&claims());
        for (name, value) in [
            ("exp", "1700009999"),
            ("exp", "+1700000600"),
            ("exp", "01700000600"),
            ("max", "99999999999"),
            ("max", ""),
            ("ct", "text%2Fhtml"),
            ("ct", ""),
            ("var", "original"),
            ("var", ""),
            ("sig", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ] {
            let tampered = with_param(&query, name, value);
            assert_ne!(tampered, query);
            assert_eq!(verify(&tampered), Err(SignatureError::Invalid), "{name}={value}");
        }
    }

    #[test]
    fn removing_an_optional_parameter_is_invalid() {
        let query = signer().sign(&claims());
        for name in ["max", "ct", "var"] {
            let stripped: Vec<_> = query.split('&').filter(|pair| !pair.starts_with(&format!("{name}="))).collect();
            assert_eq!(verify(&stripped.join("&")), Err(SignatureError::Invalid), "{name}");
        }
    }

    #[test]
    fn a_truncated_signature_is_invalid() {
        let query = signer().sign(&claims());
        for cut in [1, 2, 4, 20] {
            let truncated = &query[..query.len() - cut];
            assert_eq!(verify(truncated), Err(SignatureError::Invalid), "cut {cut}");
        }
    }

    #[test]
    fn a_signature_with_an_extra_character_is_invalid() {
        let query = signer().sign(&claims());
        assert_eq!(verify(&format!("{query}A")), Err(SignatureError::Invalid));
    }

    #[test]
    fn an_expired_url_is_expired() {
        let query = signer().sign(&claims());
        let expires = NOW + 600;
        assert!(signer().verify(Method::Put, file_id(), &query, expires).is_ok());
        assert_eq!(signer().verify(Method::Put, file_id(), &query, expires + 1), Err(SignatureError::Expired));
    }

    #[test]
    fn a_forged_url_is_invalid_even_when_expired() {
        let query = with_param(&signer().sign(&claims()), "var", "other");
        assert_eq!(signer().verify(Method::Put, file_id(), &query, NOW + 10_000), Err(SignatureError::Invalid));
    }

    #[test]
    fn a_url_signed_with_another_key_is_invalid() {
        let query = UrlSigner::new(b"another key").sign(&claims());
        assert_eq!(verify(&query), Err(SignatureError::Invalid));
    }

    #[test]
    fn a_duplicated_parameter_is_invalid() {
        let query = signer().sign(&claims());
        for extra in ["exp=1700000600", "ct=image%2Fsvg%2Bxml", "sig=x", "max=1"] {
            assert_eq!(verify(&format!("{query}&{extra}")), Err(SignatureError::Invalid), "{extra}");
        }
        // Also when the duplicate is spelt with an escape.
        assert_eq!(verify(&format!("{query}&%65xp=1700000600")), Err(SignatureError::Invalid));
    }

    #[test]
    fn an_unknown_parameter_is_invalid() {
        let query = signer().sign(&claims());
        assert_eq!(verify(&format!("{query}&download=1")), Err(SignatureError::Invalid));
    }

    #[test]
    fn a_missing_signature_or_expiry_is_missing() {
        let query = signer().sign(&claims());
        let without = |name: &str| query.split('&').filter(|pair| !pair.starts_with(&format!("{name}="))).collect::<Vec<_>>().join("&");
        assert_eq!(verify(&without("sig")), Err(SignatureError::Missing));
        assert_eq!(verify(&without("exp")), Err(SignatureError::Missing));
        assert_eq!(verify(""), Err(SignatureError::Missing));
    }

    #[test]
    fn malformed_percent_escapes_are_invalid() {
        let query = signer().sign(&claims());
        for value in ["%", "%2", "%zz", "%FF"] {
            assert_eq!(verify(&with_param(&query, "var", value)), Err(SignatureError::Invalid), "{value}");
        }
    }

    #[test]
    fn line_breaks_cannot_shift_values_between_fields() {
        // Signed with ct "a" and var "b": an attacker must not be able to move the
        // boundary, e.g. into ct "a\nb" with no var, and keep a valid MAC.
        let claims = UrlClaims { content_type: Some("a".to_owned()), variant: Some("b".to_owned()), ..claims() };
        let query = signer().sign(&claims);
        let shifted: Vec<_> =
            query.split('&').filter(|pair| !pair.starts_with("var=")).map(|pair| if pair == "ct=a" { "ct=a%0Ab" } else { pair }).collect();
        assert_eq!(verify(&shifted.join("&")), Err(SignatureError::Invalid));
    }

    #[test]
    fn error_codes_and_messages_are_stable() {
        assert_eq!(SignatureError::Missing.code(), "signature_missing");
        assert_eq!(SignatureError::Invalid.code(), "signature_invalid");
        assert_eq!(SignatureError::Expired.code(), "signature_expired");
        assert_eq!(SignatureError::Expired.to_string(), "the signed URL has expired");
    }

    #[test]
    fn percent_encoding_round_trips_arbitrary_text() {
        for value in ["image/png", "a b+c&d=e%f", "ünïcødé/😀", "-._~"] {
            assert_eq!(percent_decode(&percent_encode(value)), Ok(value.to_owned()));
        }
    }

    #[test]
    fn the_signer_does_not_leak_its_key_in_debug_output() {
        let debug = format!("{:?}", signer());
        assert!(!debug.contains("test secret key"));
    }
}
