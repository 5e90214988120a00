//! Signed URL verification on arbitrary query strings, and a sign/verify round trip with
//! claims derived from the input, including single-byte tampering.
#![no_main]

use airlock::signing::{Method, SignatureError, UrlClaims, UrlSigner};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

const FILE: Uuid = Uuid::from_u128(0x0192_5f6e_7a1b_7c3d_8e4f_a0b1_c2d3_e4f5);

/// Reads fixed-size fields off the front of the input, padding with zeros once it runs out.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn byte(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
}

fuzz_target!(|data: &[u8]| {
    // 1. Verifying whatever a client sends never panics.
    let query = String::from_utf8_lossy(data);
    let signer = UrlSigner::new(b"k");
    let _ = signer.verify(Method::Put, FILE, &query, 1_700_000_000);
    let _ = signer.verify(Method::Get, Uuid::nil(), &query, i64::MIN);
    let _ = signer.verify(Method::Get, Uuid::max(), &query, i64::MAX);

    // 2. Round trip: claims derived from the input sign and verify to themselves.
    let mut c = Cursor(data);
    let flags = c.byte();
    let method = if flags & 1 == 0 { Method::Put } else { Method::Get };
    let file_id = Uuid::from_bytes(c.bytes::<16>());
    let expires = i64::from_le_bytes(c.bytes::<8>());
    let max = u64::from_le_bytes(c.bytes::<8>());
    let max_bytes = (flags & 2 != 0).then_some(max);
    let pos = u16::from_le_bytes(c.bytes::<2>());
    let new_byte = c.byte();
    let rest = String::from_utf8_lossy(c.0);
    let (ct, var) = rest.split_once('\u{1}').map_or((rest.as_ref(), None), |(a, b)| (a, Some(b)));
    let content_type = (flags & 4 != 0).then(|| ct.to_owned());
    let variant = if flags & 8 != 0 { var.map(str::to_owned) } else { None };
    let claims = UrlClaims { method, file_id, expires, max_bytes, content_type, variant };

    let signed = signer.sign(&claims);
    let result = signer.verify(method, file_id, &signed, i64::MIN);
    let has_control = |v: &Option<String>| v.as_deref().is_some_and(|v| v.chars().any(char::is_control));
    if has_control(&claims.content_type) || has_control(&claims.variant) {
        // Documented: such values are signed but never verify.
        assert_eq!(result, Err(SignatureError::Invalid), "a value with a control character verified");
        return;
    }
    let expected = UrlClaims {
        content_type: claims.content_type.clone().filter(|v| !v.is_empty()),
        variant: claims.variant.clone().filter(|v| !v.is_empty()),
        ..claims.clone()
    };
    assert_eq!(result.as_ref(), Ok(&expected), "round trip failed for {signed}");

    // A different method or file never verifies.
    let other = if method == Method::Put { Method::Get } else { Method::Put };
    assert_eq!(signer.verify(other, file_id, &signed, i64::MIN), Err(SignatureError::Invalid));

    // 3. Any single-byte change of the query never verifies to different claims.
    let mut tampered = signed.clone().into_bytes();
    let i = usize::from(pos) % tampered.len();
    if tampered[i] == new_byte {
        return;
    }
    tampered[i] = new_byte;
    let Ok(tampered) = String::from_utf8(tampered) else {
        return;
    };
    if let Ok(got) = signer.verify(method, file_id, &tampered, i64::MIN) {
        assert_eq!(got, expected, "tampered query {tampered:?} (from {signed:?}) verified to other claims");
    }
});
