//! Image safety and hygiene, in process and with an allow-list of decoders (PNG, JPEG, GIF,
//! WebP); no file is ever handed to an external tool.
//!
//! - [`check`]: dimensions from the header *before* any decode (pixel-flood limits), then a
//!   full decode under explicit `image::Limits` (truncated or corrupt files fail here), and a
//!   frame cap for animations.
//! - [`strip`]: removes EXIF, GPS, XMP, IPTC and comments from JPEG, PNG and WebP without
//!   re-encoding pixels, keeping colour profiles and re-adding only the EXIF Orientation.

use std::io::Cursor;

use bytes::Bytes;
use img_parts::{ImageEXIF, jpeg::Jpeg, png::Png, webp::WebP};

use crate::files::QuarantineReason;

/// The limits an image must respect.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    pub max_pixels: u64,
    pub max_side: u32,
    pub max_frames: usize,
    /// Memory the decoder may allocate.
    pub max_alloc: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self { max_pixels: 40_000_000, max_side: 10_000, max_frames: 500, max_alloc: 512 << 20 }
    }
}

/// The image formats that are decoded (everything else is never decoded).
pub fn decodable(mime: &str) -> Option<image::ImageFormat> {
    Some(match mime {
        "image/png" => image::ImageFormat::Png,
        "image/jpeg" => image::ImageFormat::Jpeg,
        "image/gif" => image::ImageFormat::Gif,
        "image/webp" => image::ImageFormat::WebP,
        _ => return None,
    })
}

/// Checks an image's header dimensions, decodes it under limits and counts its frames.
/// Returns `(width, height)`.
///
/// # Errors
/// `(DimensionsExceeded | Corrupt, detail)`.
pub fn check(bytes: &[u8], mime: &str, limits: &ImageLimits) -> Result<(u32, u32), (QuarantineReason, String)> {
    let Some(format) = decodable(mime) else { return Ok((0, 0)) };
    let corrupt = |e: &dyn std::fmt::Display| (QuarantineReason::Corrupt, format!("{mime} does not decode: {e}"));
    let (w, h) = image::ImageReader::with_format(Cursor::new(bytes), format).into_dimensions().map_err(|e| corrupt(&e))?;
    let pixels = u64::from(w) * u64::from(h);
    if w > limits.max_side || h > limits.max_side || pixels > limits.max_pixels {
        return Err((
            QuarantineReason::DimensionsExceeded,
            format!("{w}x{h} exceeds the limits ({} px a side, {} pixels)", limits.max_side, limits.max_pixels),
        ));
    }
    if w == 0 || h == 0 {
        return Err((QuarantineReason::Corrupt, format!("{mime} has an empty canvas ({w}x{h})")));
    }
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(limits.max_alloc);
    if format == image::ImageFormat::Gif {
        use image::AnimationDecoder;
        let mut decoder = image::codecs::gif::GifDecoder::new(Cursor::new(bytes)).map_err(|e| corrupt(&e))?;
        image::ImageDecoder::set_limits(&mut decoder, l).map_err(|e| corrupt(&e))?;
        let mut frames = 0usize;
        for frame in decoder.into_frames() {
            frame.map_err(|e| corrupt(&e))?;
            frames += 1;
            if frames > limits.max_frames || frames as u64 * pixels > limits.max_pixels * 10 {
                return Err((QuarantineReason::DimensionsExceeded, format!("more than {frames} frames of {w}x{h}: an animation bomb")));
            }
        }
        if frames == 0 {
            return Err((QuarantineReason::Corrupt, "a GIF without frames".into()));
        }
        return Ok((w, h));
    }
    if format == image::ImageFormat::Jpeg {
        // The JPEG decoder pads a truncated scan with grey instead of failing.
        jpeg_scans_only(bytes).map_err(|e| (QuarantineReason::Corrupt, format!("{mime}: {e}")))?;
    }
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(l);
    reader.decode().map_err(|e| corrupt(&e))?;
    Ok((w, h))
}

/// Where the first scan (SOS) of a JPEG starts, walking the marker segments before it.
fn first_scan(b: &[u8]) -> Option<usize> {
    let mut pos = 2;
    while pos + 4 <= b.len() {
        if b[pos] != 0xFF {
            return None;
        }
        let marker = b[pos + 1];
        if marker == 0xFF {
            pos += 1;
            continue;
        }
        if marker == 0xDA {
            return Some(pos);
        }
        let len = usize::from(u16::from_be_bytes([b[pos + 2], b[pos + 3]]));
        pos += 2 + len;
    }
    None
}

/// Rewrites a JPEG from its first scan on: keeps scans and the tables between them, drops
/// APPn and comment segments hidden between progressive scans, and cuts everything after the
/// end-of-image marker (trailers such as "motion photo" videos or appended data).
///
/// # Errors
/// No scan or no end-of-image marker: a truncated file.
fn jpeg_scans_only(b: &[u8]) -> Result<Bytes, String> {
    let start = first_scan(b).ok_or("no image data (SOS) found")?;
    let mut out = b[..start].to_vec();
    let mut pos = start;
    while pos + 1 < b.len() {
        if b[pos] != 0xFF {
            out.push(b[pos]);
            pos += 1;
            continue;
        }
        match b[pos + 1] {
            // Stuffed 0xFF and restart markers belong to the entropy-coded data.
            0x00 | 0xD0..=0xD7 => {
                out.push(b[pos]);
                pos += 1;
            }
            // Fill bytes before a marker may be dropped: the output is canonical.
            0xFF => pos += 1,
            0xD9 => {
                out.extend_from_slice(&[0xFF, 0xD9]);
                return Ok(Bytes::from(out));
            }
            marker => {
                let len = b.get(pos + 2..pos + 4).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))).ok_or("truncated segment")?;
                let end = (pos + 2 + len).min(b.len());
                if !matches!(marker, 0xE0..=0xEF | 0xFE) {
                    out.extend_from_slice(&b[pos..end]);
                }
                pos = end;
            }
        }
    }
    Err("no end-of-image marker: the JPEG is truncated".into())
}

/// EXIF orientation (1–8) from raw TIFF EXIF bytes.
fn orientation(tiff: &[u8]) -> Option<u16> {
    let exif = exif::Reader::new().read_raw(tiff.to_vec()).ok()?;
    let field = exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)?;
    let v = field.value.get_uint(0)? as u16;
    (2..=8).contains(&v).then_some(v)
}

/// A minimal big-endian TIFF holding only the Orientation tag.
fn orientation_only(o: u16) -> Bytes {
    let mut t = vec![b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1];
    t.extend_from_slice(&o.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    Bytes::from(t)
}

/// Removes metadata from a JPEG, PNG or WebP without touching pixel data. Other types are
/// returned as they are.
///
/// # Errors
/// A file that cannot be parsed as its type (it is then `corrupt`).
pub fn strip(bytes: Bytes, mime: &str) -> Result<Bytes, String> {
    match mime {
        "image/jpeg" => {
            let mut j = Jpeg::from_bytes(bytes).map_err(|e| e.to_string())?;
            let o = j.exif().as_deref().and_then(orientation);
            // Keep JFIF (APP0), ICC profiles (APP2 "ICC_PROFILE") and Adobe (APP14, colour
            // transform); drop EXIF/XMP (APP1), IPTC (APP13), every other APPn and comments.
            j.segments_mut().retain(|s| match s.marker() {
                0xE0 | 0xEE => true,
                0xE2 => s.contents().starts_with(b"ICC_PROFILE\0"),
                0xE1 | 0xE3..=0xED | 0xEF | 0xFE => false,
                _ => true,
            });
            if let Some(o) = o {
                j.set_exif(Some(orientation_only(o)));
            }
            jpeg_scans_only(&j.encoder().bytes())
        }
        "image/png" => {
            let mut p = Png::from_bytes(bytes).map_err(|e| e.to_string())?;
            let o = p.exif().as_deref().and_then(orientation);
            p.chunks_mut().retain(|c| !matches!(&c.kind(), b"eXIf" | b"tEXt" | b"zTXt" | b"iTXt" | b"tIME"));
            if let Some(o) = o {
                p.set_exif(Some(orientation_only(o)));
            }
            Ok(p.encoder().bytes())
        }
        "image/webp" => {
            let mut w = WebP::from_bytes(bytes).map_err(|e| e.to_string())?;
            let o = w.exif().as_deref().and_then(orientation);
            w.remove_chunks_by_id(*b"XMP ");
            // Re-setting EXIF recomputes the VP8X ICC/EXIF flags, not the XMP one: clear it.
            w.set_exif(o.map(orientation_only));
            for c in w.chunks_mut().iter_mut().filter(|c| c.id() == *b"VP8X") {
                if let Some(data) = c.content().data()
                    && !data.is_empty()
                {
                    let mut d = data.to_vec();
                    d[0] &= !0x04;
                    *c = img_parts::riff::RiffChunk::new(*b"VP8X", img_parts::riff::RiffContent::Data(Bytes::from(d)));
                }
            }
            Ok(w.encoder().bytes())
        }
        _ => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbImage::new(w, h).write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).expect("encode");
        out
    }

    fn jpeg_with_metadata(orient: u16) -> Bytes {
        let mut out = Vec::new();
        image::RgbImage::from_pixel(16, 8, image::Rgb([200, 10, 10])).write_to(&mut Cursor::new(&mut out), image::ImageFormat::Jpeg).expect("encode");
        let mut j = Jpeg::from_bytes(Bytes::from(out)).expect("parse");
        // EXIF with orientation and a fake GPS-ish tag, an XMP packet and a comment.
        let mut tiff = orientation_only(orient).to_vec();
        tiff.extend_from_slice(b"GPS 48.8584 N 2.2945 E");
        j.set_exif(Some(Bytes::from(tiff)));
        let xmp = [b"http://ns.adobe.com/xap/1.0/\0".as_slice(), b"<x:xmpmeta>secret location</x:xmpmeta>"].concat();
        j.segments_mut().insert(1, img_parts::jpeg::JpegSegment::new_with_contents(0xE1, Bytes::from(xmp)));
        j.segments_mut().insert(1, img_parts::jpeg::JpegSegment::new_with_contents(0xFE, Bytes::from_static(b"taken at home")));
        j.segments_mut().insert(1, img_parts::jpeg::JpegSegment::new_with_contents(0xED, Bytes::from_static(b"Photoshop 3.0\0IPTC by-line")));
        j.encoder().bytes()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn jpeg_metadata_is_removed_but_orientation_and_pixels_stay() {
        let input = jpeg_with_metadata(6);
        let before = image::load_from_memory(&input).expect("decodes").to_rgb8();
        let out = strip(input.clone(), "image/jpeg").expect("strip");
        for secret in [b"GPS 48.8584".as_slice(), b"secret location", b"taken at home", b"IPTC by-line"] {
            assert!(contains(&input, secret));
            assert!(!contains(&out, secret), "{:?} survived", String::from_utf8_lossy(secret));
        }
        let j = Jpeg::from_bytes(out.clone()).expect("parses");
        assert_eq!(j.exif().as_deref().and_then(orientation), Some(6));
        let after = image::load_from_memory(&out).expect("decodes").to_rgb8();
        assert_eq!(before.as_raw(), after.as_raw(), "pixels untouched (no re-encode)");
    }

    #[test]
    fn png_text_chunks_are_removed() {
        let mut p = Png::from_bytes(Bytes::from(png(4, 4))).expect("png");
        p.chunks_mut().insert(1, img_parts::png::PngChunk::new(*b"tEXt", Bytes::from_static(b"Comment\0my home address")));
        let input = p.encoder().bytes();
        let out = strip(input.clone(), "image/png").expect("strip");
        assert!(contains(&input, b"my home address"));
        assert!(!contains(&out, b"my home address"));
        assert!(image::load_from_memory(&out).is_ok());
    }

    #[test]
    fn a_pixel_flood_is_refused_from_the_header_alone() {
        // A PNG header claiming 50000x50000 with no pixel data: refused before any decode.
        let mut bomb = png(1, 1);
        bomb[16..20].copy_from_slice(&50_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&50_000u32.to_be_bytes());
        let crc = bomb[12..29].iter().fold(!0u32, |mut c, &b| {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
            }
            c
        });
        bomb[29..33].copy_from_slice(&(!crc).to_be_bytes());
        let err = check(&bomb, "image/png", &ImageLimits::default()).expect_err("flood");
        assert_eq!(err.0, QuarantineReason::DimensionsExceeded);
    }

    #[test]
    fn truncated_images_are_corrupt_not_a_panic() {
        let full = png(64, 64);
        assert_eq!(check(&full, "image/png", &ImageLimits::default()), Ok((64, 64)));
        let err = check(&full[..full.len() / 2], "image/png", &ImageLimits::default()).expect_err("truncated");
        assert_eq!(err.0, QuarantineReason::Corrupt);
        let err = check(b"\xFF\xD8\xFF\xE0garbage", "image/jpeg", &ImageLimits::default()).expect_err("garbage");
        assert_eq!(err.0, QuarantineReason::Corrupt);
    }
}
