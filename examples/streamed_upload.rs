//! A 100 MB streamed upload (a body that is not `Clone`) through the
//! one-call client, retried after its keep-alive connection went stale.
//!
//! ```sh
//! cargo run --release --example streamed_upload          # 100 MB
//! cargo run --release --example streamed_upload -- 10    # 10 MB
//! ```
//!
//! A local server (plain tokio, in this file) serves one request per
//! keep-alive connection: when the next request arrives on a connection it
//! has already served, it closes that connection without answering, as a
//! server whose keep-alive timeout fired just as the request was sent (the
//! stale keep-alive race, made deterministic). It checks every upload
//! against the bytes the client generates and counts what it saw.
//!
//! The client is `client::builder().build::<Generated>()`: the generated
//! body goes in as it is, with retry on (the default). An earlier request
//! leaves a connection idle in the pool; the upload's first attempt goes
//! out on it and the server closes it. The upload is a `PUT` (idempotent),
//! on a reused connection, with nothing of a response back: the retry layer
//! sends it again, on a new connection. The body is not `Clone`: the retry
//! replays it through the retry layer's bounded buffer
//! (`RetryOnStaleConnectionLayer::replay_limit`, 64 KiB by default). Its
//! producer takes a moment before its first chunk (as a file or an encoder
//! does), so the close comes before any of it was read and the retry sends
//! the whole upload from its start; a stream already past the limit when
//! its connection fails is not retried (`Rule::BodyNotReplayable`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;
use tower_conn_lifecycle::retry::{Retried, RetryReason};
use tower_conn_lifecycle::{client, BoxError};

/// The size of the generated body's chunks.
const CHUNK: usize = 64 * 1024;

/// How long the producer takes before its first chunk.
const START_UP: Duration = Duration::from_millis(200);

/// What the client and the server saw of one run.
#[derive(Debug)]
pub struct Report {
    /// The upload's size in bytes.
    pub size: u64,
    /// The upload's response status.
    pub status: StatusCode,
    /// Why the client retried the upload (one reason per retry).
    pub retries: Vec<RetryReason>,
    /// Connections the server accepted.
    pub connections: u64,
    /// Upload requests the server saw begin (attempts).
    pub attempts: u64,
    /// Upload body bytes the server received, over all attempts.
    pub body_bytes: u64,
    /// Uploads the server received whole, every byte as generated.
    pub intact: u64,
    /// Uploads the server received whole but different.
    pub corrupt: u64,
    /// The upload's time, first attempt to response.
    pub elapsed: Duration,
}

/// Runs the server, an earlier request and the upload of `size` bytes.
pub async fn run(size: u64) -> Result<Report, BoxError> {
    let server = Server::start().await?;
    let client = client::builder().build::<Generated>();

    // An earlier request: its connection goes back to the pool, idle.
    let warm_up = http::Request::put(server.url("/warm-up")).body(Generated::new(1024))?;
    let res = client.clone().oneshot(warm_up).await?;
    res.into_body().collect().await?;

    let upload = http::Request::put(server.url("/upload")).body(Generated::new(size))?;
    let start = Instant::now();
    let res = client.oneshot(upload).await?;
    let status = res.status();
    let retries = res
        .extensions()
        .get::<Retried>()
        .map(|r| r.reasons().to_vec())
        .unwrap_or_default();
    res.into_body().collect().await?;
    let elapsed = start.elapsed();

    let seen = &server.counters;
    Ok(Report {
        size,
        status,
        retries,
        connections: seen.connections.load(Ordering::SeqCst),
        attempts: seen.attempts.load(Ordering::SeqCst),
        body_bytes: seen.body_bytes.load(Ordering::SeqCst),
        intact: seen.intact.load(Ordering::SeqCst),
        corrupt: seen.corrupt.load(Ordering::SeqCst),
        elapsed,
    })
}

#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let megabytes: u64 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| format!("not a size in MB: {arg}"))?,
        None => 100,
    };
    let report = run(megabytes * 1_000_000).await?;
    let reasons: Vec<String> = report.retries.iter().map(|r| r.to_string()).collect();
    let rows = [
        ("upload", format!("{} bytes, streamed", report.size)),
        ("client: response", report.status.to_string()),
        (
            "client: retries",
            format!("{} ({})", report.retries.len(), reasons.join(", ")),
        ),
        (
            "server: connections accepted",
            report.connections.to_string(),
        ),
        ("server: upload attempts", report.attempts.to_string()),
        (
            "server: upload bytes received",
            report.body_bytes.to_string(),
        ),
        ("server: uploads intact", report.intact.to_string()),
        ("server: uploads corrupt", report.corrupt.to_string()),
        (
            "time (first attempt to response)",
            format!("{:.2} s", report.elapsed.as_secs_f64()),
        ),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    println!("| {:<width$} | {:<value_width$} |", "what", "value");
    println!(
        "|{}|{}|",
        "-".repeat(width + 2),
        "-".repeat(value_width + 2)
    );
    for (k, v) in rows {
        println!("| {k:<width$} | {v:<value_width$} |");
    }
    Ok(())
}

// ------------------------------------------------------------------ the body

/// The upload: `size` bytes generated chunk by chunk (never all in memory),
/// the first one after [`START_UP`]. Not `Clone`.
pub struct Generated {
    size: u64,
    sent: u64,
    start_up: Option<Pin<Box<Sleep>>>,
}

impl Generated {
    /// A body of `size` bytes.
    pub fn new(size: u64) -> Self {
        Generated {
            size,
            sent: 0,
            start_up: Some(Box::pin(tokio::time::sleep(START_UP))),
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(start_up) = self.start_up.as_mut() {
            ready!(start_up.as_mut().poll(cx));
            self.start_up = None;
        }
        let left = self.size - self.sent;
        if left == 0 {
            return Poll::Ready(None);
        }
        let mut chunk = vec![0; left.min(CHUNK as u64) as usize];
        fill(self.sent, &mut chunk);
        self.sent += chunk.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.size
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.size - self.sent)
    }
}

/// The bytes of the upload at `offset`: a pseudo-random sequence (splitmix64
/// of each 8-byte word's index) that the server regenerates to check.
fn fill(offset: u64, buf: &mut [u8]) {
    let word = |n: u64| {
        let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).to_le_bytes()
    };
    let mut pos = offset;
    let mut rest = buf;
    // Up to the next word boundary, then whole words, then the tail.
    while pos % 8 != 0 && !rest.is_empty() {
        rest[0] = word(pos / 8)[(pos % 8) as usize];
        rest = &mut rest[1..];
        pos += 1;
    }
    let mut words = rest.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&word(pos / 8));
        pos += 8;
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b = word(pos / 8)[i];
    }
}

// ---------------------------------------------------------------- the server

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    attempts: AtomicU64,
    body_bytes: AtomicU64,
    intact: AtomicU64,
    corrupt: AtomicU64,
}

/// An HTTP/1.1 server that answers one request per connection and closes
/// a connection, unanswered, when a second request arrives on it.
struct Server {
    addr: std::net::SocketAddr,
    counters: Arc<Counters>,
    accept: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> std::io::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn({
            let counters = counters.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    counters.connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve(stream, counters.clone()));
                }
            }
        });
        Ok(Server {
            addr,
            counters,
            accept,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve(mut stream: TcpStream, counters: Arc<Counters>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut served = 0;
    loop {
        let Some((path, length)) = read_head(&mut stream, &mut buf).await? else {
            return Ok(());
        };
        let upload = path == "/upload";
        if upload {
            counters.attempts.fetch_add(1, Ordering::SeqCst);
        }
        if served > 0 {
            // Its keep-alive timeout "fired": closed, nothing answered.
            return Ok(());
        }
        served += 1;
        let intact = read_body(&mut stream, &mut buf, length, |n| {
            if upload {
                counters.body_bytes.fetch_add(n, Ordering::SeqCst);
            }
        })
        .await?;
        if upload {
            let count = if intact {
                &counters.intact
            } else {
                &counters.corrupt
            };
            count.fetch_add(1, Ordering::SeqCst);
        }
        let text = if intact { "intact" } else { "corrupt" };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        stream.write_all(response.as_bytes()).await?;
    }
}

/// Reads a request head into `buf` (keeping what follows it there): its
/// path and `Content-Length` (0 if none). `None` at a clean end.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(String, u64)>> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    Ok(Some((path, length)))
}

/// Reads `length` body bytes (the first from `buf`), reporting each piece's
/// size to `got`; whether every byte is the generated one at its offset.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    length: u64,
    got: impl Fn(u64),
) -> std::io::Result<bool> {
    let mut offset = 0;
    let mut intact = true;
    let mut expected = vec![0; CHUNK];
    let mut chunk = vec![0; CHUNK];
    while offset < length {
        let want = (length - offset).min(CHUNK as u64) as usize;
        let n = if buf.is_empty() {
            stream.read(&mut chunk[..want]).await?
        } else {
            let n = buf.len().min(want);
            chunk[..n].copy_from_slice(&buf[..n]);
            buf.drain(..n);
            n
        };
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        fill(offset, &mut expected[..n]);
        intact &= expected[..n] == chunk[..n];
        offset += n as u64;
        got(n as u64);
    }
    Ok(intact)
}
