//! Object storage behind `object_store`: streamed writes with a byte limit and SHA-256 on the
//! way, ranged reads, idempotent rename and delete. Keys are always server-generated
//! (`quarantine/<tenant>/<file_id>/<attempt>`, `files/<tenant>/<file_id>/original`); no user
//! input ever becomes a path.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Part size of multipart uploads to stores other than local files.
const CHUNK: usize = 4 << 20;
/// Bytes handed to the hashing thread and the writer at once.
const BATCH: usize = 1 << 20;
/// Batches queued for the hasher, and for the writer, at most: with [`BATCH`] this bounds the
/// memory one upload holds to a few MiB (a multipart store holds up to three parts beside).
const IN_FLIGHT_BATCHES: usize = 4;
/// Parts a multipart store writes at once.
const IN_FLIGHT_PARTS: usize = 3;
/// Bytes per ranged read when streaming an object out.
const READ_CHUNK: u64 = 1 << 20;

/// The object store.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// The same store when it is local files: uploads are then written by [`local::FileSink`]
    /// (writeback started while streaming, `fdatasync` before the upload is acknowledged).
    local: Option<Arc<object_store::local::LocalFileSystem>>,
    description: String,
}

/// Why a streamed write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the upload exceeds its limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the request body failed: {0}")]
    Body(String),
    #[error("no bytes arrived for {0:?}")]
    Idle(std::time::Duration),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("writing the object: {0}")]
    Io(#[from] std::io::Error),
}

/// What a streamed write stored.
#[derive(Debug, Clone)]
pub struct Written {
    pub bytes: u64,
    pub sha256: String,
}

pub fn quarantine_key(tenant: &str, file_id: Uuid, attempt: Uuid) -> String {
    format!("quarantine/{tenant}/{file_id}/{attempt}")
}

pub fn quarantine_prefix(tenant: &str, file_id: Uuid) -> String {
    format!("quarantine/{tenant}/{file_id}")
}

pub fn original_key(tenant: &str, file_id: Uuid) -> String {
    format!("files/{tenant}/{file_id}/original")
}

pub fn file_prefix(tenant: &str, file_id: Uuid) -> String {
    format!("files/{tenant}/{file_id}")
}

impl Blobs {
    /// Opens the store named by `url`: `file://PATH` (created if missing). `s3://` is planned
    /// behind the same interface.
    ///
    /// # Errors
    /// An unsupported scheme or an unusable directory.
    pub fn from_url(url: &str) -> Result<Blobs, String> {
        if let Some(dir) = url.strip_prefix("file://") {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {dir}: {e}"))?;
            // fsync: derived objects (cleaned copies) and renames are durable like uploads.
            let store = Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| format!("{dir}: {e}"))?
                    .with_automatic_cleanup(true)
                    .with_fsync(true),
            );
            return Ok(Blobs { store: store.clone(), local: Some(store), description: format!("local files at {dir}") });
        }
        if url.starts_with("memory://") {
            return Ok(Blobs { store: Arc::new(object_store::memory::InMemory::new()), local: None, description: "memory".into() });
        }
        Err(format!("storage URL `{url}`: only file:// is supported in this build (S3 is planned behind the same interface)"))
    }

    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Streams `body` to `key`, failing as soon as more than `limit` bytes arrived (the
    /// partial object is removed). Never holds more than a few batches in memory. When this
    /// returns `Ok`, the bytes are durable: on local files they were `fdatasync`ed (with the
    /// new directory entries) before; other stores are durable once their upload completes.
    ///
    /// # Errors
    /// [`WriteError`].
    pub async fn write_stream<S, E>(&self, key: &str, body: S, limit: u64, idle: std::time::Duration) -> Result<Written, WriteError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut sink = match &self.local {
            Some(local) => Sink::File(local::FileSink::create(local.path_to_filesystem(&Path::from(key))?).await?),
            None => Sink::Store(WriteMultipart::new_with_chunk_size(self.store.put_multipart(&Path::from(key)).await?, CHUNK)),
        };
        // SHA-256 runs on its own thread, beside the writes: hashing on the receiving task
        // would serialise the two and halve throughput on large uploads.
        // Chunks go over in batches of about BATCH bytes: hyper yields tens of kilobytes at a
        // time, and a channel hop (with a thread wake-up) per chunk costs more than hashing it.
        let (to_hasher, mut batches) = tokio::sync::mpsc::channel::<Vec<Bytes>>(IN_FLIGHT_BATCHES);
        let hasher = tokio::task::spawn_blocking(move || {
            let mut h = Sha256::new();
            while let Some(batch) = batches.blocking_recv() {
                for c in batch {
                    h.update(&c);
                }
            }
            hex::encode(h.finalize())
        });
        let mut pending: Vec<Bytes> = Vec::new();
        let mut pending_bytes = 0usize;
        let mut total: u64 = 0;
        let mut body = body;
        let outcome: Result<(), WriteError> = async {
            // A client that stops sending (slowloris) is cut off after `idle` without bytes.
            while let Some(chunk) = tokio::time::timeout(idle, body.next()).await.map_err(|_| WriteError::Idle(idle))? {
                let chunk = chunk.map_err(|e| WriteError::Body(e.to_string()))?;
                total += chunk.len() as u64;
                if total > limit {
                    return Err(WriteError::TooLarge { limit });
                }
                pending_bytes += chunk.len();
                pending.push(chunk);
                if pending_bytes >= BATCH {
                    pending_bytes = 0;
                    let batch = std::mem::take(&mut pending);
                    to_hasher.send(batch.clone()).await.map_err(|_| WriteError::Body("the hasher stopped".into()))?;
                    sink.write(batch).await?;
                }
            }
            if !pending.is_empty() {
                to_hasher.send(pending.clone()).await.map_err(|_| WriteError::Body("the hasher stopped".into()))?;
                sink.write(std::mem::take(&mut pending)).await?;
            }
            Ok(())
        }
        .await;
        drop(to_hasher);
        match outcome {
            Ok(()) => {
                sink.finish().await?;
                let sha256 = hasher.await.map_err(|e| WriteError::Body(format!("hashing failed: {e}")))?;
                Ok(Written { bytes: total, sha256 })
            }
            Err(e) => {
                sink.abort(key).await;
                Err(e)
            }
        }
    }

    /// The first `n` bytes of an object (fewer if it is shorter).
    ///
    /// # Errors
    /// Store failures, including a missing object.
    pub async fn read_head(&self, key: &str, n: u64) -> Result<Bytes, object_store::Error> {
        let size = self.store.head(&Path::from(key)).await?.size;
        if size == 0 {
            return Ok(Bytes::new());
        }
        self.store.get_range(&Path::from(key), 0..n.min(size)).await
    }

    /// An object's size, or `None` if it does not exist.
    ///
    /// # Errors
    /// Store failures.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, object_store::Error> {
        match self.store.head(&Path::from(key)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A byte stream of an object, or of the inclusive range `start..=end`.
    ///
    /// # Errors
    /// Store failures.
    pub async fn read(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes, object_store::Error>>, object_store::Error> {
        // Ranged reads of READ_CHUNK each: the local store's own stream reads 8 KiB at a time,
        // each on a blocking thread, which caps reads at tens of MB/s.
        let path = Path::from(key);
        let (start, end) = match range {
            Some((s, e)) => (s, e + 1),
            None => (0, self.store.head(&path).await?.size),
        };
        let store = self.store.clone();
        Ok(futures::stream::try_unfold(start, move |pos| {
            let (store, path) = (store.clone(), path.clone());
            async move {
                if pos >= end {
                    return Ok(None);
                }
                let next = (pos + READ_CHUNK).min(end);
                Ok(Some((store.get_range(&path, pos..next).await?, next)))
            }
        })
        .boxed())
    }

    /// Moves an object. Idempotent: if `from` is gone and `to` exists, it already moved.
    ///
    /// # Errors
    /// Store failures.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), object_store::Error> {
        match self.store.rename(&Path::from(from), &Path::from(to)).await {
            Ok(()) => Ok(()),
            Err(e @ object_store::Error::NotFound { .. }) => match self.size(to).await? {
                Some(_) => Ok(()),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Reads a whole object, refusing ones larger than `max` (for in-memory processing of
    /// bounded formats such as images). `Ok(None)` when it is larger.
    ///
    /// # Errors
    /// Store failures.
    pub async fn read_all(&self, key: &str, max: u64) -> Result<Option<Bytes>, object_store::Error> {
        let size = self.store.head(&Path::from(key)).await?.size;
        if size > max {
            return Ok(None);
        }
        Ok(Some(self.store.get(&Path::from(key)).await?.bytes().await?))
    }

    /// Writes a whole (small) object.
    ///
    /// # Errors
    /// Store failures.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), object_store::Error> {
        self.store.put(&Path::from(key), bytes.into()).await?;
        Ok(())
    }

    /// Deletes every object under `prefix`; returns how many.
    ///
    /// # Errors
    /// Store failures.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, object_store::Error> {
        let metas: Vec<_> = self.store.list(Some(&Path::from(prefix))).try_collect().await?;
        let mut n = 0;
        for m in metas {
            match self.store.delete(&m.location).await {
                Ok(()) => n += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Removes everything under `prefix`, and on local files the prefix's directory itself
    /// (deleting objects one by one would leave it behind, empty). Idempotent.
    ///
    /// # Errors
    /// Store failures.
    pub async fn remove_prefix(&self, prefix: &str) -> Result<(), object_store::Error> {
        let Some(local) = &self.local else {
            self.delete_prefix(prefix).await?;
            return Ok(());
        };
        let dir = local.path_to_filesystem(&Path::from(prefix))?;
        local::blocking(move || local::gone_is_fine(std::fs::remove_dir_all(&dir)))
            .await
            .map_err(|e| object_store::Error::Generic { store: "local", source: Box::new(e) })
    }

    /// Deletes one object; a missing one is not an error.
    ///
    /// # Errors
    /// Store failures.
    pub async fn delete(&self, key: &str) -> Result<bool, object_store::Error> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Checks the store answers (for `/readyz`).
    ///
    /// # Errors
    /// Store failures.
    pub async fn probe(&self) -> Result<(), object_store::Error> {
        let key = Path::from("_probe/ready");
        self.store.put(&key, Bytes::from_static(b"ok").into()).await?;
        self.store.head(&key).await?;
        Ok(())
    }
}

/// Where a streamed upload goes.
enum Sink {
    Store(WriteMultipart),
    File(local::FileSink),
}

impl Sink {
    async fn write(&mut self, batch: Vec<Bytes>) -> Result<(), WriteError> {
        match self {
            Sink::Store(w) => {
                for chunk in batch {
                    w.wait_for_capacity(IN_FLIGHT_PARTS).await?;
                    w.put(chunk);
                }
                Ok(())
            }
            Sink::File(f) => f.write(batch).await,
        }
    }

    async fn finish(self) -> Result<(), WriteError> {
        match self {
            Sink::Store(w) => {
                w.finish().await?;
                Ok(())
            }
            Sink::File(f) => f.finish().await,
        }
    }

    async fn abort(self, key: &str) {
        let res = match self {
            Sink::Store(w) => w.abort().await.map_err(|e| e.to_string()),
            Sink::File(f) => f.abort().await.map_err(|e| e.to_string()),
        };
        if let Err(error) = res {
            tracing::warn!(key, %error, "Removing a partial upload failed.");
        }
    }
}

/// Streamed writes to local files, durable when they return.
mod local {
    use std::fs::File;
    use std::io::{IoSlice, Write};
    use std::path::{Path, PathBuf};

    use bytes::Bytes;
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;

    use super::{IN_FLIGHT_BATCHES, WriteError};

    /// Writeback of written bytes is started every this many bytes, and waited for one step
    /// later, when those pages are dropped from the page cache: an upload of any size then
    /// occupies a few steps of page cache, its writes reuse the pages it just freed (on a VM,
    /// pages the guest has not touched recently cost a host fault each, which made copying
    /// into fresh page cache the largest cost of a large upload), and the final `fdatasync`
    /// has little left to do.
    const WRITEBACK_STEP: u64 = 8 << 20;

    /// A file being written by its own blocking thread, fed batches over a bounded channel.
    /// The object is written at its final path (keys are unique per attempt and no record
    /// names it before the write is durable); a failed write removes it.
    pub(super) struct FileSink {
        path: PathBuf,
        to_writer: Option<mpsc::Sender<Vec<Bytes>>>,
        writer: Option<JoinHandle<std::io::Result<File>>>,
        /// Finished (durable) or already removed: nothing for `Drop` to clean up.
        settled: bool,
    }

    impl Drop for FileSink {
        /// A sink dropped unsettled belongs to a request that went away mid-body (its future
        /// was dropped): its partial object is removed, off the async threads.
        fn drop(&mut self) {
            if self.settled {
                return;
            }
            let path = std::mem::take(&mut self.path);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn_blocking(move || {
                    if let Err(e) = gone_is_fine(std::fs::remove_file(&path)) {
                        tracing::warn!(error = %e, "Removing the partial object of an abandoned upload failed.");
                    }
                });
            }
        }
    }

    impl FileSink {
        pub(super) async fn create(path: PathBuf) -> Result<FileSink, WriteError> {
            let p = path.clone();
            let file = blocking(move || {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                File::create_new(&p)
            })
            .await?;
            let (to_writer, batches) = mpsc::channel(IN_FLIGHT_BATCHES);
            let writer = tokio::task::spawn_blocking(move || write_batches(file, batches));
            Ok(FileSink { path, to_writer: Some(to_writer), writer: Some(writer), settled: false })
        }

        pub(super) async fn write(&mut self, batch: Vec<Bytes>) -> Result<(), WriteError> {
            if let Some(tx) = &self.to_writer
                && tx.send(batch).await.is_ok()
            {
                return Ok(());
            }
            // The writer stopped: its error says why.
            self.to_writer = None;
            Err(self.join_writer().await.err().unwrap_or_else(|| std::io::Error::other("the writer thread stopped")).into())
        }

        /// Waits for the writer thread (once) and returns the file it wrote, or why it stopped.
        async fn join_writer(&mut self) -> std::io::Result<File> {
            let writer = self.writer.take().ok_or_else(|| std::io::Error::other("the writer thread stopped"))?;
            writer.await.map_err(|e| std::io::Error::other(e.to_string()))?
        }

        /// Waits for the writer, then makes the file and its new directory entries durable.
        pub(super) async fn finish(mut self) -> Result<(), WriteError> {
            self.to_writer = None;
            let file = self.join_writer().await?;
            let path = self.path.clone();
            blocking(move || {
                file.sync_data()?;
                drop(file);
                sync_parents(&path)
            })
            .await?;
            self.settled = true;
            Ok(())
        }

        pub(super) async fn abort(mut self) -> std::io::Result<()> {
            self.to_writer = None;
            let _ = self.join_writer().await;
            self.settled = true;
            gone_is_fine(tokio::fs::remove_file(&self.path).await)
        }
    }

    /// Runs blocking file-system work off the async threads.
    pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
        tokio::task::spawn_blocking(f).await.map_err(|e| std::io::Error::other(e.to_string()))?
    }

    /// A removal of something already gone succeeded.
    pub(super) fn gone_is_fine(res: std::io::Result<()>) -> std::io::Result<()> {
        match res {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// The writer thread: one `writev` per batch, writeback started as it goes.
    fn write_batches(mut file: File, mut batches: mpsc::Receiver<Vec<Bytes>>) -> std::io::Result<File> {
        let mut written: u64 = 0;
        let mut kicked: u64 = 0;
        let mut waited: u64 = 0;
        while let Some(batch) = batches.blocking_recv() {
            let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|b| IoSlice::new(b)).collect();
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                let n = file.write_vectored(rest)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                written += n as u64;
                IoSlice::advance_slices(&mut rest, n);
            }
            if written - kicked >= WRITEBACK_STEP {
                // Wait for the step before the last to reach the disk, then start the last.
                if kicked > waited {
                    writeback(&file, waited, kicked - waited, true);
                    drop_cached(&file, waited, kicked - waited);
                    waited = kicked;
                }
                writeback(&file, kicked, written - kicked, false);
                kicked = written;
            }
        }
        Ok(file)
    }

    /// Starts (and with `wait`, waits for) writeback of a byte range: `sync_file_range`, a
    /// hint about I/O scheduling only; durability comes from `fdatasync` at the end.
    #[cfg(target_os = "linux")]
    fn writeback(file: &File, offset: u64, len: u64, wait: bool) {
        use std::os::fd::AsRawFd;
        let flags = if wait {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER
        } else {
            libc::SYNC_FILE_RANGE_WRITE
        };
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
        // SAFETY: a plain syscall on a file descriptor this function borrows; no memory is shared.
        let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    }

    #[cfg(not(target_os = "linux"))]
    fn writeback(_file: &File, _offset: u64, _len: u64, _wait: bool) {}

    /// Drops a written-back range from the page cache (`POSIX_FADV_DONTNEED`; a hint).
    #[cfg(target_os = "linux")]
    fn drop_cached(file: &File, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
        // SAFETY: a plain syscall on a file descriptor this function borrows; no memory is shared.
        let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
    }

    #[cfg(not(target_os = "linux"))]
    fn drop_cached(_file: &File, _offset: u64, _len: u64) {}

    #[cfg(all(test, target_os = "linux"))]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn a_full_disk_is_reported_as_storage_full() {
            let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
            let (tx, rx) = mpsc::channel(1);
            let writer = tokio::task::spawn_blocking(move || write_batches(full, rx));
            // The writer may stop before taking the batch; its error is what counts.
            let _ = tx.send(vec![Bytes::from(vec![0u8; 4096])]).await;
            drop(tx);
            let err = writer.await.expect("writer thread").expect_err("a write to /dev/full succeeded");
            assert_eq!(err.kind(), std::io::ErrorKind::StorageFull, "{err}");
        }
    }

    /// fsyncs the directories a new object's entries may have been created in (keys are
    /// `<area>/<tenant>/<file_id>/<name>`: the three levels above the file).
    fn sync_parents(path: &Path) -> std::io::Result<()> {
        let mut dir = path.parent();
        for _ in 0..3 {
            let Some(d) = dir else { break };
            match File::open(d) {
                Ok(f) => f.sync_all()?,
                // Removed meanwhile (the upload expired while it streamed and its cleanup ran):
                // the caller finds out from the file's state and refuses the upload.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            dir = d.parent();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const IDLE: Duration = Duration::from_secs(5);

    /// A body of `n` chunks of `size` bytes (distinct per chunk).
    fn body(n: usize, size: usize) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures::stream::iter((0..n).map(move |i| Ok(Bytes::from(vec![(i % 251) as u8; size]))))
    }

    fn expected(n: usize, size: usize) -> (Vec<u8>, String) {
        let all: Vec<u8> = (0..n).flat_map(|i| vec![(i % 251) as u8; size]).collect();
        let sha = hex::encode(Sha256::digest(&all));
        (all, sha)
    }

    async fn stores() -> Vec<(Blobs, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().expect("temp dir");
        let local = Blobs::from_url(&format!("file://{}", dir.path().display())).expect("local store");
        vec![(local, Some(dir)), (Blobs::from_url("memory://").expect("memory store"), None)]
    }

    #[tokio::test]
    async fn a_streamed_write_stores_every_byte_and_hashes_them() {
        for (blobs, _dir) in stores().await {
            // 20 MiB in 300 KiB chunks: several batches and writeback steps, and a last partial batch.
            let (n, size) = (70, 300 << 10);
            let w = blobs.write_stream("quarantine/t/f/a", body(n, size), u64::MAX, IDLE).await.expect("write");
            let (all, sha) = expected(n, size);
            assert_eq!(w.bytes, all.len() as u64, "{}", blobs.describe());
            assert_eq!(w.sha256, sha, "{}", blobs.describe());
            let stored = blobs.read_all("quarantine/t/f/a", u64::MAX).await.expect("read").expect("object");
            assert!(stored == all, "{}: stored bytes differ", blobs.describe());
        }
    }

    #[tokio::test]
    async fn an_empty_body_is_an_empty_object() {
        for (blobs, _dir) in stores().await {
            let w = blobs.write_stream("quarantine/t/f/empty", body(0, 0), 10, IDLE).await.expect("write");
            assert_eq!((w.bytes, w.sha256.as_str()), (0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
            assert_eq!(blobs.size("quarantine/t/f/empty").await.expect("head"), Some(0), "{}", blobs.describe());
        }
    }

    #[tokio::test]
    async fn a_write_over_its_limit_fails_and_leaves_nothing() {
        for (blobs, dir) in stores().await {
            let res = blobs.write_stream("quarantine/t/f/big", body(10, 1 << 20), (5 << 20) + 1, IDLE).await;
            assert!(matches!(res, Err(WriteError::TooLarge { .. })), "{}: {res:?}", blobs.describe());
            assert_eq!(blobs.size("quarantine/t/f/big").await.expect("head"), None, "{}", blobs.describe());
            if let Some(dir) = dir {
                assert!(!dir.path().join("quarantine/t/f/big").exists());
            }
        }
    }

    #[tokio::test]
    async fn a_body_that_fails_midway_leaves_nothing() {
        for (blobs, _dir) in stores().await {
            let chunks = vec![Ok(Bytes::from(vec![1u8; 3 << 20])), Err(std::io::Error::other("connection reset"))];
            let res = blobs.write_stream("quarantine/t/f/cut", futures::stream::iter(chunks), u64::MAX, IDLE).await;
            assert!(matches!(res, Err(WriteError::Body(_))), "{}: {res:?}", blobs.describe());
            assert_eq!(blobs.size("quarantine/t/f/cut").await.expect("head"), None, "{}", blobs.describe());
        }
    }

    #[tokio::test]
    async fn remove_prefix_takes_the_objects_and_their_directory() {
        for (blobs, dir) in stores().await {
            blobs.put("quarantine/t/f/a", Bytes::from_static(b"a")).await.expect("put");
            blobs.put("quarantine/t/f/a.clean", Bytes::from_static(b"b")).await.expect("put");
            blobs.put("quarantine/t/g/a", Bytes::from_static(b"c")).await.expect("put");
            blobs.remove_prefix("quarantine/t/f").await.expect("remove");
            blobs.remove_prefix("quarantine/t/f").await.expect("removing twice is fine");
            assert_eq!(blobs.size("quarantine/t/f/a").await.expect("head"), None);
            assert_eq!(blobs.size("quarantine/t/f/a.clean").await.expect("head"), None);
            assert_eq!(blobs.size("quarantine/t/g/a").await.expect("head"), Some(1), "a neighbour was removed");
            if let Some(dir) = dir {
                assert!(!dir.path().join("quarantine/t/f").exists(), "the directory stayed");
            }
        }
    }
}
