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

/// Parts written to the store at once while streaming an upload; with [`CHUNK`] this bounds
/// the memory one upload holds to about `CHUNK * (IN_FLIGHT + 1)`.
const IN_FLIGHT: usize = 3;
const CHUNK: usize = 4 << 20;
/// Bytes handed to the hashing thread at once.
const HASH_BATCH: usize = 1 << 20;
/// Bytes per ranged read when streaming an object out.
const READ_CHUNK: u64 = 1 << 20;

/// The object store.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
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
            let store = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| format!("{dir}: {e}"))?.with_automatic_cleanup(true);
            return Ok(Blobs { store: Arc::new(store), description: format!("local files at {dir}") });
        }
        if url.starts_with("memory://") {
            return Ok(Blobs { store: Arc::new(object_store::memory::InMemory::new()), description: "memory".into() });
        }
        Err(format!("storage URL `{url}`: only file:// is supported in this build (S3 is planned behind the same interface)"))
    }

    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Streams `body` to `key`, failing as soon as more than `limit` bytes arrived (the
    /// partial object is removed). Never holds more than a few chunks in memory.
    ///
    /// # Errors
    /// [`WriteError`].
    pub async fn write_stream<S, E>(&self, key: &str, body: S, limit: u64, idle: std::time::Duration) -> Result<Written, WriteError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let upload = self.store.put_multipart(&Path::from(key)).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        // SHA-256 runs on its own thread, beside the writes: hashing on the receiving task
        // would serialise the two and halve throughput on large uploads.
        // Chunks go over in batches of about HASH_BATCH bytes: hyper yields tens of kilobytes
        // at a time, and a channel hop (with a thread wake-up) per chunk costs more than hashing it.
        let (to_hasher, mut batches) = tokio::sync::mpsc::channel::<Vec<Bytes>>(8);
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
                pending.push(chunk.clone());
                if pending_bytes >= HASH_BATCH {
                    pending_bytes = 0;
                    to_hasher.send(std::mem::take(&mut pending)).await.map_err(|_| WriteError::Body("the hasher stopped".into()))?;
                }
                writer.wait_for_capacity(IN_FLIGHT).await?;
                writer.put(chunk);
            }
            if !pending.is_empty() {
                to_hasher.send(pending).await.map_err(|_| WriteError::Body("the hasher stopped".into()))?;
            }
            Ok(())
        }
        .await;
        drop(to_hasher);
        match outcome {
            Ok(()) => {
                writer.finish().await?;
                let sha256 = hasher.await.map_err(|e| WriteError::Body(format!("hashing failed: {e}")))?;
                Ok(Written { bytes: total, sha256 })
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(key, error = %abort, "Aborting a partial upload failed.");
                }
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
