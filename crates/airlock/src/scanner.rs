//! A ClamAV client over the clamd protocol: `zINSTREAM` with length-prefixed chunks streamed
//! straight from the object store (never the whole file in memory), a connection limit, a
//! timeout on every scan, and clamd's own size limit reported as such — never as clean.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

/// Where clamd listens.
#[derive(Debug, Clone)]
enum Address {
    Tcp(String),
    Unix(String),
}

/// A clamd scanner.
#[derive(Clone)]
pub struct Scanner {
    address: Address,
    /// At most this many scans at once (clamd has a thread pool of its own; queueing here is
    /// cheaper than piling connections onto it).
    slots: Arc<Semaphore>,
    timeout: Duration,
}

/// What clamd said about the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Infected(String),
}

/// Why there is no verdict.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("the scanner is unavailable: {0}")]
    Unavailable(String),
    #[error("the scan timed out after {0:?}")]
    Timeout(Duration),
    #[error("the file exceeds the scanner's size limit (StreamMaxLength)")]
    TooLarge,
    #[error("the scanner answered unexpectedly: {0}")]
    Protocol(String),
    #[error("reading the object failed: {0}")]
    Source(String),
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// Largest chunk sent in one INSTREAM frame.
const FRAME: usize = 1024 * 1024;

impl Scanner {
    /// `tcp://HOST:PORT` or `unix:///PATH`.
    ///
    /// # Errors
    /// Any other form.
    pub fn from_url(url: &str, max_connections: usize, timeout: Duration) -> Result<Scanner, String> {
        let address = if let Some(a) = url.strip_prefix("tcp://") {
            Address::Tcp(a.trim_end_matches('/').to_owned())
        } else if let Some(p) = url.strip_prefix("unix://") {
            Address::Unix(p.to_owned())
        } else {
            return Err(format!("scanner `{url}`: expected tcp://HOST:PORT or unix:///PATH"));
        };
        Ok(Scanner { address, slots: Arc::new(Semaphore::new(max_connections.max(1))), timeout })
    }

    async fn connect(&self) -> Result<Box<dyn Conn>, ScanError> {
        let unavailable = |e: std::io::Error| ScanError::Unavailable(e.to_string());
        Ok(match &self.address {
            Address::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await.map_err(unavailable)?),
            #[cfg(unix)]
            Address::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await.map_err(unavailable)?),
            #[cfg(not(unix))]
            Address::Unix(_) => return Err(ScanError::Unavailable("unix sockets are not supported here".into())),
        })
    }

    /// `zPING` → `PONG`: is clamd up?
    ///
    /// # Errors
    /// Unavailable, timeout or an unexpected answer.
    pub async fn ping(&self) -> Result<(), ScanError> {
        let fut = async {
            let mut c = self.connect().await?;
            c.write_all(b"zPING\0").await.map_err(|e| ScanError::Unavailable(e.to_string()))?;
            let reply = read_reply(&mut c).await?;
            if reply == "PONG" { Ok(()) } else { Err(ScanError::Protocol(reply)) }
        };
        tokio::time::timeout(Duration::from_secs(5), fut).await.map_err(|_| ScanError::Timeout(Duration::from_secs(5)))?
    }

    /// Scans a byte stream.
    ///
    /// # Errors
    /// [`ScanError`]: no verdict. Callers decide by policy; nothing here means "clean".
    pub async fn scan<S, E>(&self, body: S) -> Result<Verdict, ScanError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let _slot = self.slots.acquire().await.map_err(|_| ScanError::Unavailable("scanner closed".into()))?;
        tokio::time::timeout(self.timeout, self.scan_inner(body)).await.map_err(|_| ScanError::Timeout(self.timeout))?
    }

    async fn scan_inner<S, E>(&self, mut body: S) -> Result<Verdict, ScanError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let mut c = self.connect().await?;
        c.write_all(b"zINSTREAM\0").await.map_err(|e| ScanError::Unavailable(e.to_string()))?;
        // Storage hands out small chunks; clamd is fastest with large frames, so chunks are
        // gathered into frames of up to FRAME bytes, each sent with one write.
        let mut frame = Vec::with_capacity(FRAME + 4);
        let mut broken = false;
        let send = async |c: &mut Box<dyn Conn>, frame: &mut Vec<u8>| -> bool {
            let len = ((frame.len() - 4) as u32).to_be_bytes();
            frame[..4].copy_from_slice(&len);
            let ok = c.write_all(frame).await.is_ok();
            frame.clear();
            ok
        };
        frame.extend_from_slice(&[0; 4]);
        while let Some(chunk) = body.next().await {
            let mut chunk: &[u8] = &chunk.map_err(|e| ScanError::Source(e.to_string()))?;
            while !chunk.is_empty() {
                let take = chunk.len().min(FRAME + 4 - frame.len());
                frame.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                if frame.len() == FRAME + 4 {
                    // clamd closes the stream when its limit is exceeded: its reply says why.
                    if !send(&mut c, &mut frame).await {
                        broken = true;
                        break;
                    }
                    frame.extend_from_slice(&[0; 4]);
                }
            }
            if broken {
                break;
            }
        }
        if !broken && frame.len() > 4 {
            broken = !send(&mut c, &mut frame).await;
        }
        if !broken {
            let _ = c.write_all(&[0, 0, 0, 0]).await;
        }
        let reply = read_reply(&mut c).await?;
        parse_reply(&reply)
    }
}

async fn read_reply(c: &mut Box<dyn Conn>) -> Result<String, ScanError> {
    let mut buf = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    loop {
        match c.read(&mut byte).await {
            Ok(0) => break,
            Ok(_) if byte[0] == 0 => break,
            Ok(_) => {
                buf.push(byte[0]);
                if buf.len() > 4096 {
                    return Err(ScanError::Protocol("reply too long".into()));
                }
            }
            Err(e) => return Err(ScanError::Unavailable(e.to_string())),
        }
    }
    if buf.is_empty() {
        return Err(ScanError::Unavailable("clamd closed the connection without a reply".into()));
    }
    Ok(String::from_utf8_lossy(&buf).trim().to_owned())
}

/// `stream: OK`, `stream: <signature> FOUND`, `INSTREAM size limit exceeded. ERROR`.
fn parse_reply(reply: &str) -> Result<Verdict, ScanError> {
    let body = reply.strip_prefix("stream:").map(str::trim).unwrap_or(reply);
    if body == "OK" {
        return Ok(Verdict::Clean);
    }
    if let Some(sig) = body.strip_suffix(" FOUND") {
        return Ok(Verdict::Infected(sig.trim().to_owned()));
    }
    if body.contains("size limit exceeded") {
        return Err(ScanError::TooLarge);
    }
    Err(ScanError::Protocol(reply.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamd_replies_are_parsed_into_verdicts_or_errors() {
        assert_eq!(parse_reply("stream: OK").ok(), Some(Verdict::Clean));
        assert_eq!(
            parse_reply("stream: Eicar-Test-Signature-NDB.UNOFFICIAL FOUND").ok(),
            Some(Verdict::Infected("Eicar-Test-Signature-NDB.UNOFFICIAL".into()))
        );
        assert!(matches!(parse_reply("INSTREAM size limit exceeded. ERROR"), Err(ScanError::TooLarge)));
        assert!(matches!(parse_reply("stream: Can't allocate memory ERROR"), Err(ScanError::Protocol(_))));
    }

    #[test]
    fn scanner_urls_are_tcp_or_unix() {
        assert!(Scanner::from_url("tcp://127.0.0.1:3310", 2, Duration::from_secs(1)).is_ok());
        assert!(Scanner::from_url("unix:///run/clamd.ctl", 2, Duration::from_secs(1)).is_ok());
        assert!(Scanner::from_url("http://x", 2, Duration::from_secs(1)).is_err());
    }
}
