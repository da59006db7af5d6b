//! Servers that stop half-way: they stop reading, never answer, or stall or
//! trickle the response body.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::http1::Conn;
use super::server::{impl_addr, ok_head, start, Counters, Running};

// ---------------------------------------------------------------------------

/// A server that reads a connection's requests until it has read
/// `after_bytes` request body bytes in total, then stops reading forever: it
/// keeps the socket open and never answers.
///
/// Once the socket buffers fill, the client's upload makes no progress at
/// all (a zero receive window), which is what a send/stall timeout must
/// catch. Its connections stay open until the server is dropped.
#[derive(Debug)]
pub struct StopReadingServer {
    running: Running,
    counters: Arc<Counters>,
}

impl StopReadingServer {
    /// Starts a server that stops reading each connection after
    /// `after_bytes` request body bytes.
    pub async fn start(after_bytes: u64) -> io::Result<Self> {
        let (running, counters) = start(after_bytes, stop_reading).await?;
        Ok(Self { running, counters })
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.counters.connections.get()
    }

    /// Request heads read completely.
    pub fn requests(&self) -> u64 {
        self.counters.requests.get()
    }

    /// Request body bytes read, over all connections. Each connection
    /// contributes at most `after_bytes`.
    pub fn bytes_read(&self) -> u64 {
        self.counters.bytes_read.get()
    }
}

impl_addr!(StopReadingServer);

async fn stop_reading(
    mut conn: Conn<TcpStream>,
    after_bytes: Arc<u64>,
    counters: Arc<Counters>,
) -> io::Result<()> {
    counters.connections.inc();
    let mut left = *after_bytes;
    while left > 0 {
        let Some(head) = conn.next_request().await? else {
            return Ok(());
        };
        counters.requests.inc();
        let mut body = head.body();
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX);
            let Some(data) = conn.body_chunk(&mut body, want).await? else {
                break;
            };
            left -= data.len() as u64;
            counters.bytes_read.add(data.len() as u64);
        }
    }
    // Keep the socket open and unread until the server is dropped.
    std::future::pending().await
}

// ---------------------------------------------------------------------------

/// A server that reads every request completely (head and body) and never
/// answers, keeping the connection open: a hung backend, for testing the
/// wait for a response head.
///
/// A connection ends when the client closes it.
#[derive(Debug)]
pub struct SilentServer {
    running: Running,
    counters: Arc<Counters>,
}

impl SilentServer {
    /// Starts a server that never answers.
    pub async fn start() -> io::Result<Self> {
        let (running, counters) = start((), silent).await?;
        Ok(Self { running, counters })
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.counters.connections.get()
    }

    /// Request heads read completely.
    pub fn requests(&self) -> u64 {
        self.counters.requests.get()
    }

    /// Request body bytes read, over all requests.
    pub fn bytes_read(&self) -> u64 {
        self.counters.bytes_read.get()
    }
}

impl_addr!(SilentServer);

async fn silent(
    mut conn: Conn<TcpStream>,
    _config: Arc<()>,
    counters: Arc<Counters>,
) -> io::Result<()> {
    counters.connections.inc();
    while let Some(head) = conn.next_request().await? {
        counters.requests.inc();
        conn.read_body(&mut head.body(), |n| counters.bytes_read.add(n as u64))
            .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------

/// A server that reads a request, sends a response head announcing a large
/// `Content-Length` and optionally the first bytes of the body, then stalls
/// forever: for testing a read/stall timeout between body frames.
///
/// It reads and discards whatever the client sends afterwards; a connection
/// ends when the client closes it.
#[derive(Debug)]
pub struct StalledBodyServer {
    running: Running,
    counters: Arc<Counters>,
}

/// Configures and starts a [`StalledBodyServer`].
#[derive(Debug, Clone)]
pub struct StalledBodyServerBuilder {
    content_length: u64,
    first_bytes: u64,
}

impl StalledBodyServer {
    /// Starts a server announcing a 1 MiB body and sending none of it.
    pub async fn start() -> io::Result<Self> {
        Self::builder().start().await
    }

    /// A builder; see [`StalledBodyServerBuilder`] for the options.
    pub fn builder() -> StalledBodyServerBuilder {
        StalledBodyServerBuilder {
            content_length: 1024 * 1024,
            first_bytes: 0,
        }
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.counters.connections.get()
    }

    /// Requests read completely (head and body).
    pub fn requests(&self) -> u64 {
        self.counters.requests.get()
    }
}

impl_addr!(StalledBodyServer);

impl StalledBodyServerBuilder {
    /// The `Content-Length` announced. Default 1 MiB.
    pub fn content_length(mut self, content_length: u64) -> Self {
        self.content_length = content_length;
        self
    }

    /// How many body bytes (`x`) to send before stalling, capped at the
    /// content length. Default 0.
    pub fn first_bytes(mut self, first_bytes: u64) -> Self {
        self.first_bytes = first_bytes;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(self) -> io::Result<StalledBodyServer> {
        let (running, counters) = start(self, stalled).await?;
        Ok(StalledBodyServer { running, counters })
    }
}

async fn stalled(
    mut conn: Conn<TcpStream>,
    config: Arc<StalledBodyServerBuilder>,
    counters: Arc<Counters>,
) -> io::Result<()> {
    counters.connections.inc();
    let Some(head) = conn.next_request().await? else {
        return Ok(());
    };
    conn.read_body(&mut head.body(), |_| {}).await?;
    counters.requests.inc();
    conn.write_all(&ok_head(config.content_length, &[])).await?;
    if head.method != http::Method::HEAD {
        write_filler(&mut conn, config.first_bytes.min(config.content_length)).await?;
    }
    conn.drain_to_eof().await;
    Ok(())
}

/// Writes `n` bytes of `x`.
async fn write_filler(conn: &mut Conn<TcpStream>, mut n: u64) -> io::Result<()> {
    let block = [b'x'; 16 * 1024];
    while n > 0 {
        let len = n.min(block.len() as u64) as usize;
        conn.write_all(&block[..len]).await?;
        n -= len as u64;
    }
    Ok(())
}

// ---------------------------------------------------------------------------

/// A server that answers each request with a body trickled out in `chunks`
/// pieces of `chunk_size` bytes, each sent after waiting `interval`; the
/// `Content-Length` is announced up front. For testing that a stall timeout
/// between body frames does not fire while a slow body keeps moving, and
/// that a total deadline does. Connections are kept alive.
#[derive(Debug)]
pub struct SlowBodyServer {
    running: Running,
    counters: Arc<Counters>,
}

#[derive(Debug)]
struct SlowConfig {
    chunks: u64,
    chunk: Vec<u8>,
    interval: Duration,
}

impl SlowBodyServer {
    /// Starts a server whose response bodies are `chunks` pieces of
    /// `chunk_size` bytes (`x`), one every `interval`, the first one
    /// `interval` after the response head.
    pub async fn start(chunks: u64, chunk_size: usize, interval: Duration) -> io::Result<Self> {
        let config = SlowConfig {
            chunks,
            chunk: vec![b'x'; chunk_size],
            interval,
        };
        let (running, counters) = start(config, slow).await?;
        Ok(Self { running, counters })
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.counters.connections.get()
    }

    /// Requests read completely (head and body).
    pub fn requests(&self) -> u64 {
        self.counters.requests.get()
    }

    /// Responses whose body was written completely.
    pub fn responses(&self) -> u64 {
        self.counters.responses.get()
    }

    /// Response body bytes written, over all responses.
    pub fn bytes_written(&self) -> u64 {
        self.counters.bytes_written.get()
    }
}

impl_addr!(SlowBodyServer);

async fn slow(
    mut conn: Conn<TcpStream>,
    config: Arc<SlowConfig>,
    counters: Arc<Counters>,
) -> io::Result<()> {
    counters.connections.inc();
    let length = config.chunks.saturating_mul(config.chunk.len() as u64);
    while let Some(head) = conn.next_request().await? {
        conn.read_body(&mut head.body(), |_| {}).await?;
        counters.requests.inc();
        let close = ["Connection: close".to_owned()];
        let extra: &[String] = if head.keep_alive { &[] } else { &close };
        conn.write_all(&ok_head(length, extra)).await?;
        let chunks = if head.method == http::Method::HEAD {
            0
        } else {
            config.chunks
        };
        for _ in 0..chunks {
            tokio::time::sleep(config.interval).await;
            conn.write_all(&config.chunk).await?;
            counters.bytes_written.add(config.chunk.len() as u64);
        }
        counters.responses.inc();
        if !head.keep_alive {
            return conn.shutdown().await;
        }
    }
    Ok(())
}
