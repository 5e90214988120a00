#!/usr/bin/env python3
"""Writes small, valid seed inputs for every fuzz target into fuzz/seeds/<target>/.

Standard library only (zlib, struct, hmac): run `python3 fuzz/make_seeds.py` from anywhere.
"""
import hashlib
import hmac
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# --- images -------------------------------------------------------------------------------

def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def tiff_orientation(o, extra=b""):
    # Big-endian TIFF with one IFD entry: Orientation (0x0112), SHORT, count 1.
    return b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01" + struct.pack(">H", o) + b"\x00\x00" + b"\x00\x00\x00\x00" + extra


def png(w=2, h=2, extra_chunks=()):
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)  # 8-bit RGBA
    raw = b"".join(b"\x00" + bytes([200, 10, 10, 255]) * w for _ in range(h))
    chunks = [png_chunk(b"IHDR", ihdr)]
    chunks += [png_chunk(k, v) for k, v in extra_chunks]
    chunks += [png_chunk(b"IDAT", zlib.compress(raw)), png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def jpeg_segment(marker, body):
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def jpeg(extra_segments=(), trailer=b""):
    """A 1x1 grayscale baseline JPEG: one DC code (category 0) and one AC code (EOB)."""
    out = b"\xFF\xD8"
    out += jpeg_segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    for marker, body in extra_segments:
        out += jpeg_segment(marker, body)
    out += jpeg_segment(0xDB, b"\x00" + b"\x01" * 64)
    out += jpeg_segment(0xC0, b"\x08\x00\x01\x00\x01\x01\x01\x11\x00")
    counts = b"\x01" + b"\x00" * 15
    out += jpeg_segment(0xC4, b"\x00" + counts + b"\x00")  # DC table 0: '0' -> category 0
    out += jpeg_segment(0xC4, b"\x10" + counts + b"\x00")  # AC table 0: '0' -> EOB
    out += jpeg_segment(0xDA, b"\x01\x01\x00\x00\x3F\x00")
    out += b"\x3F"  # bits 0 (DC) 0 (EOB), padded with ones
    return out + b"\xFF\xD9" + trailer


def riff_chunk(fourcc, body):
    pad = b"\x00" if len(body) % 2 else b""
    return fourcc + struct.pack("<I", len(body)) + body + pad


VP8L_1X1 = b"\x2F\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88\xFE\x07\x00"


def webp(extended=False):
    if not extended:
        chunks = riff_chunk(b"VP8L", VP8L_1X1)
    else:
        # VP8X with the EXIF (0x08) and XMP (0x04) flags, canvas 1x1.
        vp8x = bytes([0x08 | 0x04, 0, 0, 0]) + (0).to_bytes(3, "little") + (0).to_bytes(3, "little")
        chunks = riff_chunk(b"VP8X", vp8x) + riff_chunk(b"VP8L", VP8L_1X1)
        chunks += riff_chunk(b"EXIF", tiff_orientation(6, b"GPS 48.8584 N"))
        chunks += riff_chunk(b"XMP ", b"<x:xmpmeta>secret</x:xmpmeta>")
    body = b"WEBP" + chunks
    return b"RIFF" + struct.pack("<I", len(body)) + body


GIF_1X1 = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"

EXIF_JPEG = [(0xE1, b"Exif\x00\x00" + tiff_orientation(6, b"GPS 48.8584 N")), (0xFE, b"taken at home"), (0xED, b"Photoshop 3.0\x00IPTC")]

# --- strip --------------------------------------------------------------------------------
write("strip", "tiny.png", png())
write("strip", "meta.png", png(extra_chunks=[(b"tEXt", b"Comment\x00home"), (b"eXIf", tiff_orientation(6))]))
write("strip", "tiny.jpg", jpeg())
write("strip", "meta.jpg", jpeg(EXIF_JPEG, trailer=b"appended"))
write("strip", "tiny.webp", webp())
write("strip", "meta.webp", webp(extended=True))

# --- sniff --------------------------------------------------------------------------------
write("sniff", "tiny.png", png())
write("sniff", "tiny.jpg", jpeg())
write("sniff", "tiny.webp", webp())
write("sniff", "tiny.gif", GIF_1X1)
write("sniff", "page.html", b"\xEF\xBB\xBF  <!DOCTYPE html><html><body>hi</body></html>")
write("sniff", "icon.svg", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>')
write("sniff", "notes.txt", "name,city\nZo\u00eb,Z\u00fcrich\n")
write("sniff", "doc.pdf", b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n")
write("sniff", "archive.zip", b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 16 + b"\x05\x00\x00\x00hello")
write("sniff", "declared.txt", b"image/JPG; charset=x\n.jpeg")

# --- signed_url ---------------------------------------------------------------------------
FILE = "01925f6e-7a1b-7c3d-8e4f-a0b1c2d3e4f5"


def pct(value):
    safe = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    return "".join(chr(b) if b in safe else "%%%02X" % b for b in value.encode())


def signed_query(method, exp, max_bytes=None, ct=None, var=None):
    canonical = "\n".join(["airlock-url-v1", method, FILE, str(exp), "" if max_bytes is None else str(max_bytes), ct or "", var or ""])
    import base64
    sig = base64.urlsafe_b64encode(hmac.new(b"k", canonical.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    q = "exp=" + pct(str(exp))
    for name, value in (("max", None if max_bytes is None else str(max_bytes)), ("ct", ct), ("var", var)):
        if value:
            q += "&%s=%s" % (name, pct(value))
    return q + "&sig=" + sig


write("signed_url", "full.query", signed_query("PUT", 4102444800, 10485760, "image/svg+xml", "thumb 256"))
write("signed_url", "minimal.query", signed_query("PUT", 4102444800))
write("signed_url", "expired.query", signed_query("PUT", 1000, ct="text/plain"))
write("signed_url", "claims.bin", bytes([0x0E]) + bytes(range(16)) + struct.pack("<qQ", 4102444800, 1 << 20) + b"\x05\x00" + b"A" + "image/png\x01thumb \u00e9".encode())

# --- headers (the first 8 bytes are the length, little-endian) ---------------------------
LEN = struct.pack("<Q", 100)
write("headers", "range.txt", LEN + b"bytes=0-10")
write("headers", "suffix.txt", LEN + b"bytes=-5")
write("headers", "open.txt", LEN + b"Bytes=90-")
write("headers", "name.txt", LEN + "../..\\con.txt\u202e\u200bexe.jpg".encode())
write("headers", "traceparent.txt", LEN + b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
event = (
    '{"specversion":"1.0","id":"0192f0e8-7a1b-7c3d-8e4f-a0b1c2d3e4f5","source":"airlock",'
    '"type":"file.promoted.v1","subject":"0192f0e8-7a1b-7c3d-8e4f-a0b1c2d3e4f6",'
    '"time":"2026-04-01T12:00:00.123456Z","datacontenttype":"application/json",'
    '"correlationid":"req-1","causationid":"0192f0e8-7a1b-7c3d-8e4f-a0b1c2d3e4f7",'
    '"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",'
    '"tenant":"acme","data":{"file_id":"x","size":12,"ok":true}}'
)
write("headers", "event.json", event)
