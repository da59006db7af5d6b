use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http1::Conn;
use super::keys::KeySet;
use super::server::{impl_addr, start, Counter, Running};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// SETTINGS_MAX_FRAME_SIZE's default: the largest frame a client may send
/// before the server raises it (this server never does).
const MAX_FRAME: usize = 16_384;
/// Open streams per connection beyond which the connection is dropped.
const MAX_OPEN_STREAMS: usize = 1024;
/// Request bodies up to this size are recorded as keys.
const MAX_KEY: usize = 256;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

const NO_ERROR: u32 = 0x0;
const REFUSED_STREAM: u32 = 0x7;

/// The response header block: HPACK static-table entry 8, `:status: 200`.
const STATUS_200: &[u8] = &[0x88];

/// A cleartext HTTP/2 server (prior knowledge, as hyper-util's client speaks
/// it with `http2_only`) that refuses streams on purpose:
///
/// * [`refuse_streams(n)`](Http2FaultServerBuilder::refuse_streams): the
///   first `n` streams it receives are reset with `REFUSED_STREAM` before
///   any processing;
/// * [`go_away_after(k)`](Http2FaultServerBuilder::go_away_after): on its
///   first connection, right after the `k`-th stream's `HEADERS`, it sends a
///   `GOAWAY` (`NO_ERROR`) whose last stream id is that stream's, ignores
///   every later stream, answers the streams up to it, then closes the
///   connection — a server shutting down in the middle of a batch. Later
///   connections are served normally.
///
/// Every other stream is answered `200` with body `ok` once its request
/// has ended. Request bodies of up to 256 bytes count as keys
/// ([`distinct_keys`](Http2FaultServer::distinct_keys),
/// [`duplicate_keys`](Http2FaultServer::duplicate_keys)), so a test that
/// sends a unique body per request can prove none was processed twice.
///
/// It speaks HTTP/2 frames itself rather than through the `h2` crate,
/// whose server cannot send a `GOAWAY` with a chosen last stream id and go
/// on serving the streams below it. It decodes no header block (it has no
/// HPACK decoder), so it serves any path and method alike.
#[derive(Debug)]
pub struct Http2FaultServer {
    running: Running,
    counters: Arc<Counters>,
}

/// Configures and starts an [`Http2FaultServer`].
#[derive(Clone, Debug, Default)]
pub struct Http2FaultServerBuilder {
    refuse_streams: u64,
    go_away_after: Option<u64>,
}

#[derive(Debug)]
struct Config {
    refusals_left: AtomicU64,
    go_away_after: Option<u64>,
}

#[derive(Debug, Default)]
struct Counters {
    connections: Counter,
    streams: Counter,
    refused: Counter,
    ignored: Counter,
    processed: Counter,
    go_aways: Counter,
    keys: KeySet,
}

impl Http2FaultServer {
    /// A builder for a server that, until configured, serves every stream.
    pub fn builder() -> Http2FaultServerBuilder {
        Http2FaultServerBuilder::default()
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.counters.connections.get()
    }

    /// Streams opened by clients (`HEADERS` received), including refused
    /// and ignored ones.
    pub fn streams(&self) -> u64 {
        self.counters.streams.get()
    }

    /// Streams reset with `REFUSED_STREAM`.
    pub fn refused(&self) -> u64 {
        self.counters.refused.get()
    }

    /// Streams ignored because their id was above a `GOAWAY`'s last stream
    /// id.
    pub fn ignored(&self) -> u64 {
        self.counters.ignored.get()
    }

    /// Streams answered: the requests the server processed.
    pub fn processed(&self) -> u64 {
        self.counters.processed.get()
    }

    /// `GOAWAY` frames sent.
    pub fn go_aways(&self) -> u64 {
        self.counters.go_aways.get()
    }

    /// Distinct request bodies (of at most 256 bytes) among the streams
    /// answered.
    pub fn distinct_keys(&self) -> u64 {
        self.counters.keys.distinct()
    }

    /// Answered streams whose body had already been answered.
    pub fn duplicate_keys(&self) -> u64 {
        self.counters.keys.duplicates()
    }
}

impl_addr!(Http2FaultServer);

impl Http2FaultServerBuilder {
    /// Resets the first `n` streams the server receives (over all
    /// connections) with `REFUSED_STREAM`. Default 0.
    pub fn refuse_streams(mut self, n: u64) -> Self {
        self.refuse_streams = n;
        self
    }

    /// On the first connection, sends `GOAWAY` right after the `k`-th
    /// stream; `None` (the default) never does.
    pub fn go_away_after(mut self, k: impl Into<Option<u64>>) -> Self {
        self.go_away_after = k.into();
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(self) -> io::Result<Http2FaultServer> {
        let config = Config {
            refusals_left: AtomicU64::new(self.refuse_streams),
            go_away_after: self.go_away_after,
        };
        let (running, counters) = start(config, serve).await?;
        Ok(Http2FaultServer { running, counters })
    }
}

impl Config {
    /// Takes one refusal, if any are left.
    fn refuse(&self) -> bool {
        self.refusals_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

struct FrameHead {
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Reads one frame; `None` on a clean EOF between frames.
async fn read_frame(io: &mut TcpStream, payload: &mut Vec<u8>) -> io::Result<Option<FrameHead>> {
    let mut head = [0u8; 9];
    match io.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    if len > MAX_FRAME {
        return Err(invalid("frame larger than SETTINGS_MAX_FRAME_SIZE"));
    }
    payload.resize(len, 0);
    io.read_exact(payload).await?;
    Ok(Some(FrameHead {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
    }))
}

async fn write_frame(
    io: &mut TcpStream,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> io::Result<()> {
    let len = payload.len();
    let mut frame = Vec::with_capacity(9 + len);
    frame.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    io.write_all(&frame).await
}

/// The part of a `HEADERS` or `DATA` payload after padding and priority.
fn content(payload: &[u8], flags: u8, priority: bool) -> io::Result<&[u8]> {
    let mut body = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&n, rest) = body.split_first().ok_or_else(|| invalid("bad padding"))?;
        pad = usize::from(n);
        body = rest;
    }
    if priority && flags & PRIORITY != 0 {
        body = body.get(5..).ok_or_else(|| invalid("bad priority"))?;
    }
    body.get(
        ..body
            .len()
            .checked_sub(pad)
            .ok_or_else(|| invalid("bad padding"))?,
    )
    .ok_or_else(|| invalid("bad padding"))
}

/// A stream the server will answer.
#[derive(Default)]
struct Stream {
    headers_done: bool,
    request_done: bool,
    body: Vec<u8>,
    body_len: usize,
}

async fn serve(
    conn: Conn<TcpStream>,
    config: Arc<Config>,
    counters: Arc<Counters>,
) -> io::Result<()> {
    let connection = counters.connections.next();
    let mut io = conn.into_fresh_io();
    let mut preface = [0u8; 24];
    io.read_exact(&mut preface).await?;
    if &preface != PREFACE {
        return Err(invalid("not an HTTP/2 preface"));
    }
    write_frame(&mut io, SETTINGS, 0, 0, &[]).await?;

    let go_away_after = config.go_away_after.filter(|_| connection == 1);
    let mut streams: HashMap<u32, Stream> = HashMap::new();
    let mut seen = 0u64;
    let mut highest = 0u32;
    let mut last_accepted: Option<u32> = None;
    // A header block still waiting for its CONTINUATION frames.
    let mut continuing: Option<u32> = None;
    let mut payload = Vec::with_capacity(MAX_FRAME);

    loop {
        if last_accepted.is_some() && streams.is_empty() && continuing.is_none() {
            // Every stream up to the GOAWAY's last id is answered.
            return io.shutdown().await;
        }
        let Some(frame) = read_frame(&mut io, &mut payload).await? else {
            return Ok(());
        };
        if continuing.is_some_and(|id| frame.kind != CONTINUATION || frame.stream != id) {
            return Err(invalid("expected CONTINUATION"));
        }
        match frame.kind {
            HEADERS | CONTINUATION => {
                let id = frame.stream;
                if id % 2 == 0 {
                    return Err(invalid("bad stream id"));
                }
                // A higher id opens a stream; a lower one is trailers, or a
                // stream already refused, ignored or answered.
                if frame.kind == HEADERS && id > highest {
                    highest = id;
                    counters.streams.inc();
                    if last_accepted.is_some_and(|last| id > last) {
                        counters.ignored.inc();
                    } else if config.refuse() {
                        counters.refused.inc();
                        write_frame(&mut io, RST_STREAM, 0, id, &REFUSED_STREAM.to_be_bytes())
                            .await?;
                    } else {
                        if streams.len() >= MAX_OPEN_STREAMS {
                            return Err(invalid("too many open streams"));
                        }
                        streams.insert(id, Stream::default());
                        seen += 1;
                        if go_away_after == Some(seen) {
                            let mut body = id.to_be_bytes().to_vec();
                            body.extend_from_slice(&NO_ERROR.to_be_bytes());
                            write_frame(&mut io, GOAWAY, 0, 0, &body).await?;
                            counters.go_aways.inc();
                            last_accepted = Some(id);
                        }
                    }
                }
                if frame.kind == HEADERS {
                    content(&payload, frame.flags, true)?;
                }
                continuing = (frame.flags & END_HEADERS == 0).then_some(id);
                if let Some(stream) = streams.get_mut(&id) {
                    stream.request_done |= frame.kind == HEADERS && frame.flags & END_STREAM != 0;
                    stream.headers_done = continuing.is_none();
                }
            }
            DATA => {
                let id = frame.stream;
                let data = content(&payload, frame.flags, false)?;
                if let Some(stream) = streams.get_mut(&id) {
                    let room = MAX_KEY.saturating_sub(stream.body.len());
                    stream.body.extend_from_slice(&data[..data.len().min(room)]);
                    stream.body_len += data.len();
                    stream.request_done |= frame.flags & END_STREAM != 0;
                    if !payload.is_empty() && !stream.request_done {
                        let n = (payload.len() as u32).to_be_bytes();
                        write_frame(&mut io, WINDOW_UPDATE, 0, id, &n).await?;
                    }
                }
                if !payload.is_empty() {
                    let n = (payload.len() as u32).to_be_bytes();
                    write_frame(&mut io, WINDOW_UPDATE, 0, 0, &n).await?;
                }
            }
            RST_STREAM => {
                streams.remove(&frame.stream);
            }
            SETTINGS if frame.flags & ACK == 0 => {
                write_frame(&mut io, SETTINGS, ACK, 0, &[]).await?;
            }
            PING if frame.flags & ACK == 0 => {
                write_frame(&mut io, PING, ACK, 0, &payload).await?;
            }
            GOAWAY => return Ok(()),
            // PRIORITY, WINDOW_UPDATE, acknowledgements, unknown frames.
            _ => {}
        }
        let ready: Vec<u32> = streams
            .iter()
            .filter(|(_, s)| s.headers_done && s.request_done)
            .map(|(&id, _)| id)
            .collect();
        for id in ready {
            let Some(stream) = streams.remove(&id) else {
                continue;
            };
            write_frame(&mut io, HEADERS, END_HEADERS, id, STATUS_200).await?;
            write_frame(&mut io, DATA, END_STREAM, id, b"ok").await?;
            counters.processed.inc();
            if stream.body_len > 0 && stream.body_len <= MAX_KEY {
                counters.keys.record(&stream.body);
            }
        }
    }
}
