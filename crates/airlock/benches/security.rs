//! Scan and metadata-strip throughput (a benchmark, not a test):
//! `AIRLOCK_TEST_CLAMD=tcp://127.0.0.1:13310 cargo bench -p airlock --bench security`
//! (`scripts/bench-security` starts clamd and runs it).
//!
//! 1. Virus scanning through Airlock's path — objects streamed from the object store into
//!    clamd's INSTREAM by `Scanner` — against `clamdscan --stream` on the same files, in the
//!    same run, as MB/s and a ratio (target ≥ 0.9).
//! 2. Metadata stripping of JPEGs carrying EXIF/XMP/comments, in MB/s of input.

use std::io::Write;
use std::time::Instant;

use airlock::blobs::Blobs;
use airlock::scanner::Scanner;
use bytes::Bytes;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let clamd = std::env::var("AIRLOCK_TEST_CLAMD").unwrap_or_else(|_| "tcp://127.0.0.1:13310".into());
    let files: usize = std::env::var("BENCH_FILES").ok().and_then(|s| s.parse().ok()).unwrap_or(16);
    let mib: usize = std::env::var("BENCH_FILE_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let dir = tempfile::tempdir()?;
    let objects = dir.path().join("objects");
    let blobs = Blobs::from_url(&format!("file://{}", objects.display())).map_err(anyhow::Error::msg)?;

    // Text-like, compressible-ish content: the kind of bytes clamd really has to look at.
    let mut block = Vec::with_capacity(1 << 20);
    let mut x: u32 = 12345;
    while block.len() < 1 << 20 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        block.extend_from_slice(format!("line {} of a report, value {}\n", block.len(), x >> 8).as_bytes());
    }
    block.truncate(1 << 20);
    // Two sets of distinct files of equal size: clamd caches the verdicts of files it has seen
    // (by hash), so each side scans files the other never sent.
    let mut paths = Vec::new();
    for i in 0..files * 2 {
        let key = format!("bench/file-{i}");
        let mut data = Vec::with_capacity(mib << 20);
        for _ in 0..mib {
            data.extend_from_slice(&block);
        }
        for (j, chunk) in data.chunks_mut(1 << 20).enumerate() {
            chunk[..16].copy_from_slice(&[(i as u64).to_le_bytes(), (j as u64).to_le_bytes()].concat());
        }
        if i % 2 == 0 {
            blobs.put(&key, Bytes::from(data)).await?;
        } else {
            std::fs::File::create(dir.path().join(format!("file-{i}.txt")))?.write_all(&data)?;
        }
        paths.push((key, dir.path().join(format!("file-{i}.txt"))));
    }
    let airlock_set: Vec<_> = paths.iter().step_by(2).cloned().collect();
    let clamdscan_set: Vec<_> = paths.iter().skip(1).step_by(2).cloned().collect();
    let total_mb = (files * mib) as f64 * 1.048_576;

    let scanner = Scanner::from_url(&clamd, 2, std::time::Duration::from_secs(300)).map_err(anyhow::Error::msg)?;
    scanner.ping().await.map_err(|e| anyhow::anyhow!("clamd at {clamd}: {e} (start it with scripts/bench-security)"))?;

    // Airlock: two scans at once, like the validation workers.
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for chunk in airlock_set.chunks(airlock_set.len().div_ceil(2)) {
        let (blobs, scanner, keys) = (blobs.clone(), scanner.clone(), chunk.iter().map(|p| p.0.clone()).collect::<Vec<_>>());
        set.spawn(async move {
            for key in keys {
                let stream = blobs.read(&key, None).await?;
                let verdict = scanner.scan(stream).await?;
                anyhow::ensure!(verdict == airlock::scanner::Verdict::Clean, "unexpected verdict {verdict:?}");
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let airlock_mbs = total_mb / start.elapsed().as_secs_f64();

    // clamdscan on the same files, streaming them to the same clamd (two processes at once).
    let conf = dir.path().join("clamdscan.conf");
    let (host, port) = clamd.trim_start_matches("tcp://").split_once(':').ok_or_else(|| anyhow::anyhow!("tcp://HOST:PORT expected"))?;
    std::fs::write(&conf, format!("TCPSocket {port}\nTCPAddr {host}\n"))?;
    let start = Instant::now();
    let mut children = Vec::new();
    for chunk in clamdscan_set.chunks(clamdscan_set.len().div_ceil(2)) {
        let mut cmd = std::process::Command::new("clamdscan");
        cmd.arg(format!("--config-file={}", conf.display())).args(["--stream", "--no-summary", "--quiet"]);
        cmd.args(chunk.iter().map(|p| &p.1));
        children.push(cmd.spawn().map_err(|e| anyhow::anyhow!("clamdscan: {e} (apt-get install clamav-daemon)"))?);
    }
    for mut c in children {
        let status = c.wait()?;
        anyhow::ensure!(status.success(), "clamdscan failed: {status}");
    }
    let clamdscan_mbs = total_mb / start.elapsed().as_secs_f64();
    println!(
        "scan ({files} files x {mib} MiB): airlock {airlock_mbs:.0} MB/s, clamdscan --stream {clamdscan_mbs:.0} MB/s, ratio {:.2} (target >= 0.9)",
        airlock_mbs / clamdscan_mbs
    );

    // Metadata stripping of 2000x1500 JPEGs with EXIF, XMP and a comment.
    let mut jpeg = Vec::new();
    let img = image::RgbImage::from_fn(2000, 1500, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x ^ y) % 256) as u8]));
    img.write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)?;
    let mut j = img_parts::jpeg::Jpeg::from_bytes(Bytes::from(jpeg))?;
    img_parts::ImageEXIF::set_exif(&mut j, Some(Bytes::from(vec![b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0])));
    let xmp = [b"http://ns.adobe.com/xap/1.0/\0".as_slice(), &vec![b'x'; 20_000]].concat();
    j.segments_mut().insert(1, img_parts::jpeg::JpegSegment::new_with_contents(0xE1, Bytes::from(xmp)));
    j.segments_mut().insert(1, img_parts::jpeg::JpegSegment::new_with_contents(0xFE, Bytes::from_static(b"a comment")));
    let input = j.encoder().bytes();
    let rounds = 50;
    let start = Instant::now();
    for _ in 0..rounds {
        let out = airlock::images::strip(input.clone(), "image/jpeg").map_err(anyhow::Error::msg)?;
        anyhow::ensure!(out.len() < input.len(), "nothing stripped");
    }
    let strip_mbs = (input.len() * rounds) as f64 / 1e6 / start.elapsed().as_secs_f64();
    println!("strip metadata (JPEG {} KB, EXIF+XMP+COM): {strip_mbs:.0} MB/s on one core", input.len() / 1000);
    Ok(())
}
