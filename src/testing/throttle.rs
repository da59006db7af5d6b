use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::http1::Conn;
use super::server::{impl_addr, ok_response, start, without_body, Counters, Running};

/// The throttle takes the body off the socket in slices of about this much
/// time's worth of bytes, so the pace is smooth at low rates.
const SLICE: Duration = Duration::from_millis(10);

/// The most read from the socket at once, so the pace also holds at high
/// rates.
const MAX_SLICE_BYTES: u64 = 256 * 1024;

/// A server that reads request bodies slowly, at most a fixed number of
/// bytes per second, like a peer on a slow link or one whose receive window
/// stays nearly closed.
///
/// The client's upload stalls once the socket buffers between the two are
/// full, so a write/send timeout can be tested against real TCP flow
/// control. After the whole body is read the server waits `think_time`, then
/// answers `200 OK` with the decimal count of body bytes it read.
/// Each connection is throttled on its own; connections are kept alive.
#[derive(Debug)]
pub struct ThrottledReader {
    running: Running,
    counters: Arc<Counters>,
}

/// Configures and starts a [`ThrottledReader`].
#[derive(Debug, Clone)]
pub struct ThrottledReaderBuilder {
    bytes_per_sec: u64,
    think_time: Duration,
}

impl ThrottledReader {
    /// Starts a server that reads each request body at `bytes_per_sec`.
    ///
    /// # Errors
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] when `bytes_per_sec` is 0,
    /// and when binding fails.
    pub async fn start(bytes_per_sec: u64) -> io::Result<Self> {
        Self::builder(bytes_per_sec).start().await
    }

    /// A builder for a server that reads each request body at
    /// `bytes_per_sec`.
    pub fn builder(bytes_per_sec: u64) -> ThrottledReaderBuilder {
        ThrottledReaderBuilder {
            bytes_per_sec,
            think_time: Duration::ZERO,
        }
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.counters.connections.get()
    }

    /// Request heads read completely.
    pub fn requests(&self) -> u64 {
        self.counters.requests.get()
    }

    /// Responses written completely.
    pub fn responses(&self) -> u64 {
        self.counters.responses.get()
    }

    /// Request body bytes read so far, over all requests; grows while a body
    /// is being read.
    pub fn bytes_read(&self) -> u64 {
        self.counters.bytes_read.get()
    }
}

impl_addr!(ThrottledReader);

impl ThrottledReaderBuilder {
    /// The most request body bytes read per second on each connection.
    pub fn bytes_per_sec(mut self, bytes_per_sec: u64) -> Self {
        self.bytes_per_sec = bytes_per_sec;
        self
    }

    /// How long to wait after reading a body before responding. Default
    /// zero.
    pub fn think_time(mut self, think_time: Duration) -> Self {
        self.think_time = think_time;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    ///
    /// # Errors
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] when the rate is 0, and
    /// when binding fails.
    pub async fn start(self) -> io::Result<ThrottledReader> {
        if self.bytes_per_sec == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ThrottledReader rate must be at least 1 byte per second",
            ));
        }
        let (running, counters) = start(self, serve).await?;
        Ok(ThrottledReader { running, counters })
    }
}

async fn serve(
    mut conn: Conn<TcpStream>,
    config: Arc<ThrottledReaderBuilder>,
    counters: Arc<Counters>,
) -> io::Result<()> {
    counters.connections.inc();
    let rate = config.bytes_per_sec;
    let slice = (rate.saturating_mul(SLICE.as_millis() as u64) / 1000).clamp(1, MAX_SLICE_BYTES);
    let slice = slice as usize;
    while let Some(head) = conn.next_request().await? {
        counters.requests.inc();
        let mut body = head.body();
        let start = Instant::now();
        let mut read: u64 = 0;
        while let Some(data) = conn.body_chunk(&mut body, slice).await? {
            read += data.len() as u64;
            counters.bytes_read.add(data.len() as u64);
            // Sleep until the bytes read so far are due at `rate`.
            let due = Duration::try_from_secs_f64(read as f64 / rate as f64)
                .ok()
                .and_then(|d| start.checked_add(d));
            if let Some(due) = due.filter(|&due| due > Instant::now()) {
                tokio::time::sleep_until(due).await;
            }
        }
        if !config.think_time.is_zero() {
            tokio::time::sleep(config.think_time).await;
        }
        let close = ["Connection: close".to_owned()];
        let extra: &[String] = if head.keep_alive { &[] } else { &close };
        let body = read.to_string();
        let response = ok_response(body.as_bytes(), extra);
        conn.write_all(without_body(&response, body.len(), &head))
            .await?;
        counters.responses.inc();
        if !head.keep_alive {
            return conn.shutdown().await;
        }
    }
    Ok(())
}
