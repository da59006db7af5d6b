//! Raw-socket loopback servers shared by the hostile-server tests
//! (`hostile.rs`, `probe_legacy.rs`): `RawServer` (each test controls the
//! exact bytes and the moment of every reset, and every server counts the
//! request heads it read per `x-req-id`, the connections it accepted and the
//! bytes it read), the randomized hostile server, and the client-side
//! `send` every such test drives its client with (generic over the client:
//! any tower HTTP service whose errors are boxed).
//!
//! Every loop is bounded in count and time, every await that could hang is
//! under a `timeout`. Everything binds `127.0.0.1:0`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, timeout, Instant};
use tower::ServiceExt;
use tower_conn_lifecycle::error_chain;
use tower_conn_lifecycle::phase_timeout::{Elapsed, Phase};
use tower_conn_lifecycle::retry::{NotRetried, Retried, RetryReason, Rule, IDEMPOTENCY_KEY};
use tower_conn_lifecycle::testing::Rng;
use tower_conn_lifecycle::track::ConnectionInfo;
use tower_conn_lifecycle::{find_cause, BoxError};

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * KIB;
/// Upper bound for one request that must complete or fail on its own.
pub const STEP_LIMIT: Duration = Duration::from_secs(20);
/// How long a server waits on one socket read before giving up.
pub const SERVER_IO_LIMIT: Duration = Duration::from_secs(30);
/// Upper bound for one server connection's handler.
pub const CONN_LIMIT: Duration = Duration::from_secs(120);
/// The servers' socket receive buffer: small, so that a server that stops
/// reading blocks the client's writes after a bounded number of bytes
/// (loopback autotuning would otherwise let tens of MiB vanish into
/// buffers). Linux doubles it.
pub const SERVER_RCVBUF: u32 = 128 * 1024;
/// The request-id header every test sets; servers count heads by it.
pub const REQ_ID: &str = "x-req-id";
/// The answer of every well-behaved exchange.
pub const OK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
/// The longest request head a server accepts.
pub const MAX_HEAD: usize = 64 * KIB;

// ---------------------------------------------------------------------------
// Raw loopback servers.

/// What a raw server saw, shared with the test.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicUsize,
    pub heads: AtomicUsize,
    pub bytes_read: AtomicU64,
    /// Per `x-req-id`: the index of the connection each of its heads came on.
    pub by_id: ById<usize>,
}

/// Something recorded per request head, by the head's `x-req-id`.
#[derive(Debug)]
pub struct ById<T>(Mutex<HashMap<String, Vec<T>>>);

impl<T> Default for ById<T> {
    fn default() -> Self {
        ById(Mutex::new(HashMap::new()))
    }
}

impl<T: Clone> ById<T> {
    pub fn push(&self, head: &Head, value: T) {
        self.0
            .lock()
            .unwrap()
            .entry(head.header(REQ_ID).unwrap_or("-").to_owned())
            .or_default()
            .push(value);
    }

    /// What was recorded for this request id, in order.
    pub fn of(&self, id: &str) -> Vec<T> {
        self.0.lock().unwrap().get(id).cloned().unwrap_or_default()
    }
}

impl Counters {
    pub fn record_head(&self, head: &Head, conn: usize) {
        self.heads.fetch_add(1, Ordering::SeqCst);
        self.by_id.push(head, conn);
    }

    /// How many heads arrived with this request id.
    pub fn heads_of(&self, id: &str) -> usize {
        self.by_id.of(id).len()
    }

    /// The connections the heads of this request id arrived on.
    pub fn conns_of(&self, id: &str) -> Vec<usize> {
        self.by_id.of(id)
    }
}

/// A parsed request head (request line and headers, names lowercased).
#[derive(Debug)]
pub struct Head {
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn parse(bytes: &[u8]) -> Option<Head> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let _method = first.next()?;
        let path = first.next()?.to_owned();
        let mut headers = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':')?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        Some(Head { path, headers })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body length (every request of these tests has a known length:
    /// `Content-Length`, or none at all).
    pub fn content_length(&self) -> u64 {
        self.header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// One socket read's result.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    Data(usize),
    Eof,
    Error(std::io::ErrorKind),
    TimedOut,
}

/// How a connection ended, as the server saw it.
#[derive(Debug)]
pub struct Closed {
    /// Bytes read while waiting for the close.
    pub bytes: u64,
    /// When the EOF or error was read; `None` if the wait ran out first.
    pub at: Option<Instant>,
    pub how: String,
}

/// One accepted connection: the socket, what was read and not consumed,
/// and the server's counters.
pub struct Conn {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
    pub scratch: Vec<u8>,
    pub index: usize,
    pub counters: Arc<Counters>,
}

impl Conn {
    /// Reads once (at most `limit`) and appends to the buffer.
    pub async fn read_more(&mut self, limit: Duration) -> Read {
        match timeout(limit, self.stream.read(&mut self.scratch)).await {
            Ok(Ok(0)) => Read::Eof,
            Ok(Ok(n)) => {
                self.counters
                    .bytes_read
                    .fetch_add(n as u64, Ordering::SeqCst);
                self.buf.extend_from_slice(&self.scratch[..n]);
                Read::Data(n)
            }
            Ok(Err(e)) => Read::Error(e.kind()),
            Err(_) => Read::TimedOut,
        }
    }

    /// The next request head (counted), or `None` on EOF, error, timeout or
    /// garbage. Bytes after the head stay buffered.
    pub async fn read_head(&mut self) -> Option<Head> {
        // Bounded: every turn reads at least one byte, and MAX_HEAD caps it.
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = Head::parse(&self.buf[..end])?;
                self.buf.drain(..end + 4);
                self.counters.record_head(&head, self.index);
                return Some(head);
            }
            if self.buf.len() > MAX_HEAD {
                return None;
            }
            if !matches!(self.read_more(SERVER_IO_LIMIT).await, Read::Data(_)) {
                return None;
            }
        }
    }

    /// Consumes up to `n` body bytes (buffered first); returns how many.
    pub async fn skip_body(&mut self, n: u64) -> u64 {
        let mut got = 0;
        while got < n {
            if self.buf.is_empty()
                && !matches!(self.read_more(SERVER_IO_LIMIT).await, Read::Data(_))
            {
                break;
            }
            let take = self.buf.len().min((n - got) as usize);
            self.buf.drain(..take);
            got += take as u64;
        }
        got
    }

    pub async fn write(&mut self, bytes: &[u8]) -> bool {
        matches!(
            timeout(SERVER_IO_LIMIT, self.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Reads and discards until EOF, an error, or `limit`.
    pub async fn wait_closed(&mut self, limit: Duration) -> Closed {
        let deadline = Instant::now() + limit;
        let mut bytes = self.buf.len() as u64;
        self.buf.clear();
        // Bounded by `deadline`.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_more(left).await {
                Read::Data(n) => {
                    bytes += n as u64;
                    self.buf.clear();
                }
                Read::Eof => {
                    return Closed {
                        bytes,
                        at: Some(Instant::now()),
                        how: "eof".into(),
                    }
                }
                Read::Error(kind) => {
                    return Closed {
                        bytes,
                        at: Some(Instant::now()),
                        how: format!("{kind:?}"),
                    }
                }
                Read::TimedOut => {
                    return Closed {
                        bytes,
                        at: None,
                        how: format!("still open after {limit:?}"),
                    }
                }
            }
        }
    }

    /// Reads nothing until the test says the caller gave up (`gave_up`,
    /// told right after; bounded by `limit`), then waits for the close as
    /// [`wait_closed`](Self::wait_closed): what it counts is what the
    /// client's buffers held when the caller gave up plus what it wrote
    /// after, not what it wrote meanwhile while the caller was slow to be
    /// scheduled (reading on at full speed, a loaded machine let several
    /// MiB through before the caller even gave up).
    pub async fn wait_closed_after(
        &mut self,
        gave_up: &tokio::sync::Notify,
        limit: Duration,
    ) -> Closed {
        if timeout(limit, gave_up.notified()).await.is_err() {
            return Closed {
                bytes: self.buf.len() as u64,
                at: None,
                how: format!("the test never gave up within {limit:?}"),
            };
        }
        self.wait_closed(limit).await
    }

    /// Closes with a TCP RST (`SO_LINGER` 0), discarding anything unread.
    pub fn reset(self) {
        let _ = self.stream.set_zero_linger();
        drop(self.stream);
    }
}

/// A raw HTTP/1.1 server on `127.0.0.1:0`: `handler` gets every accepted
/// connection. Dropping it aborts the accept loop and every connection.
pub struct RawServer {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    pub accept: JoinHandle<()>,
}

impl RawServer {
    pub async fn start<F, Fut>(handler: F) -> RawServer
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(SERVER_RCVBUF).unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let listener = socket.listen(1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let shared = counters.clone();
        let accept = tokio::spawn(async move {
            // The connections live in this task's JoinSet: aborting the task
            // (on drop) aborts them all. The loop ends with the server.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else {
                            sleep(Duration::from_millis(1)).await;
                            continue;
                        };
                        let index = shared.connections.fetch_add(1, Ordering::SeqCst);
                        let conn = Conn {
                            stream,
                            buf: Vec::new(),
                            scratch: vec![0; 64 * KIB],
                            index,
                            counters: shared.clone(),
                        };
                        let served = handler(conn);
                        conns.spawn(async move {
                            let _ = timeout(CONN_LIMIT, served).await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        RawServer {
            addr,
            counters,
            accept,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

// ---------------------------------------------------------------------------
// Client-side helpers.

pub fn body_of(len: usize) -> Full<Bytes> {
    Full::new(Bytes::from(vec![b'u'; len]))
}

/// What a failed request says about itself.
#[derive(Debug)]
pub struct Failure {
    pub rule: Option<Rule>,
    pub retries: Option<usize>,
    /// When a limit refused: why the failure itself looked safe to retry.
    pub safe: Option<RetryReason>,
    pub phase: Option<Phase>,
    pub chain: String,
    /// The error came from the response body, after a response head (the
    /// retry layer never sees those).
    pub in_body: bool,
}

impl Failure {
    pub fn of(err: &BoxError) -> Failure {
        let not_retried = find_cause::<NotRetried>(err.as_ref());
        Failure {
            rule: not_retried.map(NotRetried::rule),
            retries: not_retried.map(NotRetried::retries),
            safe: not_retried.and_then(NotRetried::retry_safe_reason),
            phase: find_cause::<Elapsed>(err.as_ref()).map(Elapsed::phase),
            chain: error_chain(err.as_ref()).to_string(),
            in_body: false,
        }
    }
}

/// A complete response, as the client saw it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub retried: Option<Retried>,
    /// The tracker's `ConnectionInfo` says the connection was reused.
    pub reused: bool,
}

/// Sends `req` and reads the whole response body.
pub async fn send<S, B>(client: &S, req: Request<Full<Bytes>>) -> Result<Answer, Failure>
where
    S: tower::Service<Request<Full<Bytes>>, Response = http::Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
{
    let res = match timeout(STEP_LIMIT, client.clone().oneshot(req)).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => return Err(Failure::of(&e.into())),
        Err(_) => panic!("a request did not complete within {STEP_LIMIT:?}"),
    };
    let status = res.status();
    let retried = res.extensions().get::<Retried>().cloned();
    let reused = ConnectionInfo::of(&res).is_some_and(|info| info.is_reused());
    match timeout(STEP_LIMIT, res.into_body().collect()).await {
        Ok(Ok(_)) => Ok(Answer {
            status,
            retried,
            reused,
        }),
        Ok(Err(e)) => Err(Failure {
            in_body: true,
            ..Failure::of(&e.into())
        }),
        Err(_) => panic!("a response body did not end within {STEP_LIMIT:?}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstBytes {
    Continue100,
    EarlyHints103,
    PartialErrorHead,
    /// The control: no response byte before the reset.
    Nothing,
}

impl FirstBytes {
    pub fn bytes(self) -> &'static [u8] {
        match self {
            FirstBytes::Continue100 => b"HTTP/1.1 100 Continue\r\n\r\n",
            FirstBytes::EarlyHints103 => {
                b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
            }
            FirstBytes::PartialErrorHead => b"HTTP/1.1 500 Internal",
            FirstBytes::Nothing => b"",
        }
    }
}

// ---------------------------------------------------------------------------
// 5. A randomized hostile server.

pub const RANDOM_MAX_BODY: usize = 4 * MIB;
/// A tenth of the POSTs have bodies between this and `RANDOM_MAX_BODY`.
pub const RANDOM_NEAR_MAX: usize = 3 * MIB + 3 * MIB / 4;

/// How long a `PartialHeadReset` server at least waits, not reading, before
/// it sends its response bytes during an upload of over 1 MiB.
pub const FILL_WAIT: Duration = Duration::from_millis(100);

/// What the server does with one request (or, for `ResetOnAccept`, a new
/// connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Read the whole body, answer `200` with keep-alive.
    Answer,
    /// Send a `100` or `103` after the head, then as `Answer`.
    Informational,
    /// Read part of the body, stop reading, send `HTTP/1.1 500 Internal`
    /// (half the time; else a `100` or a `103`), reset.
    PartialHeadReset,
    /// Read part of the body, send a complete final response, read a bit
    /// more, reset mid-upload.
    EarlyAnswerReset,
    /// Read the head (and maybe part of the body), reset with no response byte.
    ResetBeforeResponse,
    /// Reset a new connection before reading any byte.
    ResetOnAccept,
    /// After an answer: close (FIN or RST) if the next request does not
    /// start within a few ms.
    CloseWhileIdle,
}

pub fn below(rng: &mut Rng, max: Duration) -> Duration {
    max.mul_f64(rng.unit())
}

pub struct Hostile {
    pub rng: Mutex<Rng>,
    pub actions: Mutex<BTreeMap<Action, usize>>,
    /// Per `x-req-id`: what the server did with each of its heads.
    pub by_id: ById<Action>,
}

impl Hostile {
    pub fn with<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        f(&mut self.rng.lock().unwrap())
    }

    pub fn count(&self, action: Action) {
        *self.actions.lock().unwrap().entry(action).or_default() += 1;
    }

    pub fn record(&self, head: &Head, action: Action) {
        self.count(action);
        self.by_id.push(head, action);
    }

    pub fn actions_of(&self, id: &str) -> Vec<Action> {
        self.by_id.of(id)
    }

    pub fn request_action(&self) -> Action {
        let r = self.with(|rng| rng.unit());
        match r {
            r if r < 0.55 => Action::Answer,
            r if r < 0.70 => Action::Informational,
            r if r < 0.79 => Action::PartialHeadReset,
            r if r < 0.88 => Action::EarlyAnswerReset,
            _ => Action::ResetBeforeResponse,
        }
    }
}

/// A random part of a `len`-byte body: at most half of it (and 256 KiB).
pub fn part_of(rng: &mut Rng, len: u64) -> u64 {
    let cap = (len / 2).min(256 * KIB as u64);
    (rng.unit() * cap as f64) as u64
}

pub async fn hostile_conn(mut conn: Conn, hostile: Arc<Hostile>) {
    let pause = Duration::from_millis(40);
    if hostile.with(|rng| rng.unit() < 0.04) {
        hostile.count(Action::ResetOnAccept);
        conn.reset();
        return;
    }
    let mut idle_close = false;
    // Bounded: every turn reads a head (a request the client sent) or ends.
    loop {
        let head = if idle_close {
            // The idle wait before the next request's first byte.
            let idle = hostile.with(|rng| below(rng, Duration::from_millis(30)));
            if conn.buf.is_empty() && conn.read_more(idle).await == Read::TimedOut {
                hostile.count(Action::CloseWhileIdle);
                if hostile.with(|rng| rng.unit() < 0.5) {
                    conn.reset();
                }
                return;
            }
            conn.read_head().await
        } else {
            conn.read_head().await
        };
        let Some(head) = head else {
            return;
        };
        let len = head.content_length();
        let action = hostile.request_action();
        hostile.record(&head, action);
        match action {
            Action::Answer | Action::Informational => {
                if action == Action::Informational {
                    let early = if hostile.with(|rng| rng.unit() < 0.5) {
                        FirstBytes::Continue100
                    } else {
                        FirstBytes::EarlyHints103
                    };
                    if !conn.write(early.bytes()).await {
                        return;
                    }
                }
                if conn.skip_body(len).await < len || !conn.write(OK_RESPONSE).await {
                    return;
                }
                idle_close = hostile.with(|rng| rng.unit() < 0.2);
            }
            Action::PartialHeadReset => {
                let (part, wait, hold, early) = hostile.with(|rng| {
                    let early = match rng.unit() {
                        r if r < 0.5 => FirstBytes::PartialErrorHead,
                        r if r < 0.75 => FirstBytes::Continue100,
                        _ => FirstBytes::EarlyHints103,
                    };
                    // For a large upload, long enough to fill the socket
                    // buffers, so its write is pending when the response
                    // bytes arrive.
                    let wait = if len > MIB as u64 {
                        FILL_WAIT + below(rng, pause)
                    } else {
                        below(rng, pause)
                    };
                    (part_of(rng, len), wait, below(rng, pause), early)
                });
                conn.skip_body(part).await;
                sleep(wait).await;
                conn.write(early.bytes()).await;
                sleep(hold).await;
                conn.reset();
                return;
            }
            Action::EarlyAnswerReset => {
                let (part, more, wait) =
                    hostile.with(|rng| (part_of(rng, len), part_of(rng, len), below(rng, pause)));
                conn.skip_body(part).await;
                let answer: &[u8] = if hostile.with(|rng| rng.unit() < 0.5) {
                    b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n"
                } else {
                    OK_RESPONSE
                };
                conn.write(answer).await;
                sleep(wait).await;
                conn.skip_body(more.min(len - part)).await;
                conn.reset();
                return;
            }
            Action::ResetBeforeResponse => {
                let part = hostile.with(|rng| part_of(rng, len));
                conn.skip_body(part).await;
                conn.reset();
                return;
            }
            Action::ResetOnAccept | Action::CloseWhileIdle => unreachable!(),
        }
    }
}

/// One request's facts, as the client saw them.
#[derive(Debug)]
pub struct Sent {
    pub id: String,
    pub method: Method,
    pub keyed: bool,
    pub len: usize,
    pub result: Result<Answer, Failure>,
}

pub fn random_request(
    rng: &mut Rng,
    server: &RawServer,
    big: &Bytes,
    id: &str,
) -> (Request<Full<Bytes>>, Method, bool, usize) {
    let post = rng.unit() < 0.6;
    let keyed = post && rng.unit() < 0.35;
    let size = rng.unit();
    let len = match rng.unit() {
        _ if !post => 0,
        r if r < 0.5 => (size * KIB as f64) as usize,
        r if r < 0.75 => KIB + (size * (63 * KIB) as f64) as usize,
        r if r < 0.85 => 64 * KIB + (size * (960 * KIB) as f64) as usize,
        r if r < 0.9 => MIB + (size * (RANDOM_NEAR_MAX - MIB) as f64) as usize,
        // Loopback socket buffers swallow most of a smaller upload whole, so
        // only these can still be writing when a response byte arrives.
        _ => RANDOM_NEAR_MAX + (size * (RANDOM_MAX_BODY - RANDOM_NEAR_MAX) as f64) as usize,
    };
    let method = if post { Method::POST } else { Method::GET };
    let mut req = Request::builder()
        .method(method.clone())
        .uri(server.url("/r"))
        .header(REQ_ID, id);
    if keyed {
        req = req.header(IDEMPOTENCY_KEY, format!("key-{id}"));
    }
    let req = req.body(Full::new(big.slice(..len))).unwrap();
    (req, method, keyed, len)
}

pub fn seed() -> u64 {
    match std::env::var("HOSTILE_SEED") {
        Ok(s) => s.parse().expect("HOSTILE_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// The shape of a randomized run: `requests` in all, spread over `tasks`
/// concurrent tasks sharing one client; the run stops early (and its
/// count then falls short) after `run_limit`.
#[derive(Clone, Copy, Debug)]
pub struct RandomPlan {
    pub requests: usize,
    pub tasks: usize,
    pub run_limit: Duration,
}

/// What a randomized run sent, and the server that saw it.
pub struct RandomRun {
    pub seed: u64,
    pub hostile: Arc<Hostile>,
    pub server: Arc<RawServer>,
    pub all: Vec<Sent>,
    pub took: Duration,
}

/// Runs `plan` against a new randomized hostile server ([`hostile_conn`])
/// through `client` (one clone per task).
pub async fn randomized_run<S, B>(client: S, seed: u64, plan: RandomPlan) -> RandomRun
where
    S: tower::Service<Request<Full<Bytes>>, Response = http::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let hostile = Arc::new(Hostile {
        rng: Mutex::new(Rng::new(seed ^ 0x5eed_5e7e)),
        actions: Mutex::new(BTreeMap::new()),
        by_id: ById::default(),
    });
    let server = {
        let hostile = hostile.clone();
        Arc::new(RawServer::start(move |conn| hostile_conn(conn, hostile.clone())).await)
    };
    let big = Bytes::from(vec![b'r'; RANDOM_MAX_BODY]);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for task in 0..plan.tasks {
        let (client, server, big) = (client.clone(), server.clone(), big.clone());
        tasks.spawn(async move {
            let mut rng = Rng::new(seed.wrapping_add(task as u64 + 1));
            let mut sent = Vec::new();
            for i in 0..plan.requests / plan.tasks {
                if started.elapsed() > plan.run_limit {
                    break;
                }
                let id = format!("t{task}-{i}");
                let (req, method, keyed, len) = random_request(&mut rng, &server, &big, &id);
                let result = send(&client, req).await;
                sent.push(Sent {
                    id,
                    method,
                    keyed,
                    len,
                    result,
                });
                // A short gap lets the pool take the connection back
                // (without one, the next request opens a new connection);
                // longer ones let idle closes race the next request.
                // Neither is an assertion.
                let gap = if rng.unit() < 0.7 {
                    Duration::from_millis(1) + below(&mut rng, Duration::from_millis(2))
                } else {
                    below(&mut rng, Duration::from_millis(20))
                };
                sleep(gap).await;
            }
            sent
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.expect("a client task panicked"));
    }
    RandomRun {
        seed,
        hostile,
        server,
        all,
        took: started.elapsed(),
    }
}

/// What [`RandomRun::check`] found.
#[derive(Debug, Default)]
pub struct RandomReport {
    pub ok: usize,
    pub reused_ok: usize,
    /// Requests whose server saw more than one head, by kind.
    pub duplicates: BTreeMap<&'static str, usize>,
    pub retries_by_reason: BTreeMap<String, usize>,
    pub errors_by_rule: BTreeMap<String, usize>,
    /// Broken invariants, one line each.
    pub violations: Vec<String>,
}

impl RandomRun {
    /// Checks the invariants (no POST without a key seen twice, every error
    /// typed, every duplicate a retry the client counted, every success
    /// seen by the server) and prints the run's summary.
    pub fn check(&self) -> RandomReport {
        let c = &self.server.counters;
        let mut report = RandomReport::default();
        let mut sent_again_after_response_bytes: BTreeMap<&str, usize> = BTreeMap::new();
        let mut chains: BTreeMap<String, usize> = BTreeMap::new();
        let mut bytes = 0usize;
        for s in &self.all {
            bytes += s.len;
            let heads = c.heads_of(&s.id);
            let kind = match (&s.method, s.keyed) {
                (&Method::POST, false) => "POST without key",
                (&Method::POST, true) => "POST with key",
                _ => "GET",
            };
            let client_retries = match &s.result {
                Ok(Answer {
                    retried, reused, ..
                }) => {
                    report.ok += 1;
                    report.reused_ok += usize::from(*reused);
                    if let Some(r) = retried {
                        for reason in r.reasons() {
                            *report
                                .retries_by_reason
                                .entry(format!("{reason:?}"))
                                .or_default() += 1;
                        }
                    }
                    retried.as_ref().map_or(0, Retried::count)
                }
                Err(f) => {
                    let key = match (f.rule, f.phase) {
                        _ if f.in_body => "response body error".into(),
                        (Some(rule), Some(phase)) => format!("{rule} ({phase})"),
                        (Some(rule), None) => rule.to_string(),
                        (None, Some(phase)) => format!("untyped rule, {phase} timeout"),
                        (None, None) => "UNTYPED".into(),
                    };
                    *report.errors_by_rule.entry(key).or_default() += 1;
                    *chains.entry(f.chain.clone()).or_default() += 1;
                    if f.rule.is_none() && f.phase.is_none() && !f.in_body {
                        report
                            .violations
                            .push(format!("{} {kind}: untyped error: {}", s.id, f.chain));
                    }
                    f.retries.unwrap_or(0)
                }
            };
            if heads > 1 {
                *report.duplicates.entry(kind).or_default() += 1;
                let actions = self.hostile.actions_of(&s.id);
                if matches!(
                    actions.first(),
                    Some(Action::PartialHeadReset | Action::EarlyAnswerReset)
                ) {
                    // Informational: the client may not have read those
                    // bytes before the reset.
                    *sent_again_after_response_bytes.entry(kind).or_default() += 1;
                }
                if kind == "POST without key" {
                    report.violations.push(format!(
                        "{} POST without key ({} bytes) seen {heads} times on connections {:?} \
                         (server: {actions:?}): {:?}",
                        s.id,
                        s.len,
                        c.conns_of(&s.id),
                        s.result
                    ));
                }
                if client_retries + 1 < heads {
                    report.violations.push(format!(
                        "{} {kind} seen {heads} times but the client counted {client_retries} retries: {:?}",
                        s.id, s.result
                    ));
                }
            }
            if s.result.is_ok() && heads == 0 {
                report.violations.push(format!(
                    "{} {kind} succeeded but the server never saw it",
                    s.id
                ));
            }
        }
        println!("seed                 {}", self.seed);
        println!(
            "requests             {} ({} ok, {} of them on a reused connection) in {:?}",
            self.all.len(),
            report.ok,
            report.reused_ok,
            self.took
        );
        println!("request body bytes   {bytes}");
        println!(
            "server               {} connections, {} heads, {} bytes read",
            c.connections.load(Ordering::SeqCst),
            c.heads.load(Ordering::SeqCst),
            c.bytes_read.load(Ordering::SeqCst)
        );
        println!(
            "server actions       {:?}",
            self.hostile.actions.lock().unwrap()
        );
        println!("errors by rule       {:?}", report.errors_by_rule);
        println!("retries by reason    {:?}", report.retries_by_reason);
        println!("duplicate heads      {:?}", report.duplicates);
        println!(
            "  of which the server had sent response bytes first: {sent_again_after_response_bytes:?}"
        );
        println!("error chains:");
        for (chain, n) in &chains {
            println!("  {n:5}  {chain}");
        }
        report
    }
}

// ---------------------------------------------------------------------------
// Response bytes (1xx, a partial head) during a large upload, then a reset.

/// Large enough that the client's writes block on full socket buffers
/// (the server reads only `EARLY_READ` of it). 4 MiB reproduces too on a
/// default Linux loopback, barely: the client's send buffer grows to 4 MiB.
pub const EARLY_UPLOAD: usize = 16 * MIB;
/// The body bytes the server reads before the response bytes.
pub const EARLY_READ: u64 = 16 * KIB as u64;
/// How long the server then stops reading before it sends response bytes,
/// so the client's write is pending when they arrive (as in the issue's
/// reproduction).
pub const EARLY_FILL: Duration = Duration::from_millis(200);
/// How long the server waits after the response bytes before the reset, so
/// the client has read them (hyper reads them at once; the margin is for a
/// loaded CI machine: a keyed POST whose client had not yet read them would
/// rightly be retried, and the test would then see two heads).
pub const EARLY_HOLD: Duration = Duration::from_millis(500);
/// Lets the pool take the warm-up connection back before the next request
/// (not an assertion: the test checks the server saw one connection).
pub const POOL_SETTLE: Duration = Duration::from_millis(50);

/// The response bytes the early tests send before the reset.
pub const EARLY_BYTES: [FirstBytes; 3] = [
    FirstBytes::Continue100,
    FirstBytes::EarlyHints103,
    FirstBytes::PartialErrorHead,
];

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    PostNoKey,
    PostWithKey,
    GetWithBody,
}

/// Answers `/warm` normally (keep-alive); on any other request reads
/// `EARLY_READ` body bytes, stops reading, sends `early`'s bytes, and resets.
pub async fn early_server(early: FirstBytes) -> RawServer {
    RawServer::start(move |mut conn| async move {
        // Bounded: every turn reads a head or ends the connection.
        while let Some(head) = conn.read_head().await {
            if head.path == "/warm" {
                conn.skip_body(head.content_length()).await;
                if !conn.write(OK_RESPONSE).await {
                    return;
                }
                continue;
            }
            conn.skip_body(EARLY_READ).await;
            sleep(EARLY_FILL).await;
            conn.write(early.bytes()).await;
            sleep(EARLY_HOLD).await;
            conn.reset();
            return;
        }
    })
    .await
}

/// What one early case must end with: the request heads the server saw,
/// and the rule of the client's error.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    pub heads: usize,
    pub rule: Rule,
}

/// What the tracked stacks (the one-call client, the legacy hand stack)
/// must do: a request whose response had started is never sent again
/// (`ResponseStarted`); without a response byte, a fresh connection's
/// failure is a real error (`FreshConnection`).
pub fn tracked_expect(early: FirstBytes, _kind: Kind) -> Expect {
    let rule = match early {
        FirstBytes::Nothing => Rule::FreshConnection,
        _ => Rule::ResponseStarted,
    };
    Expect { heads: 1, rule }
}

/// One case through `client`: returns a line for the report and whether it
/// met `expect`.
pub async fn early_case<S, B>(
    client: S,
    early: FirstBytes,
    kind: Kind,
    reused: bool,
    expect: Expect,
) -> (String, bool)
where
    S: tower::Service<Request<Full<Bytes>>, Response = http::Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
{
    let server = early_server(early).await;
    if reused {
        let warm = Request::get(server.url("/warm"))
            .header(REQ_ID, "warm")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let got = send(&client, warm).await;
        assert!(
            matches!(&got, Ok(a) if a.status == StatusCode::OK && a.retried.is_none()),
            "warm-up failed: {got:?}"
        );
        sleep(POOL_SETTLE).await;
    }
    let big = body_of(EARLY_UPLOAD);
    let req = match kind {
        Kind::PostNoKey => Request::post(server.url("/upload")),
        Kind::PostWithKey => Request::post(server.url("/upload")).header(IDEMPOTENCY_KEY, "key-1"),
        Kind::GetWithBody => Request::get(server.url("/upload")),
    }
    .header(REQ_ID, "upload")
    .body(big)
    .unwrap();
    let got = send(&client, req).await;
    let c = &server.counters;
    let heads = c.heads_of("upload");
    let conns = c.conns_of("upload");
    let label = format!(
        "{early:?} {kind:?} on a {} connection",
        if reused { "reused" } else { "fresh" }
    );
    let mut problems = Vec::new();
    if reused && conns.first() != c.conns_of("warm").first() {
        problems.push(format!(
            "setup: the upload was not sent on the warm-up connection ({conns:?})"
        ));
    }
    if heads != expect.heads {
        problems.push(format!(
            "server saw {heads} request heads (connections {conns:?}), expected {}",
            expect.heads
        ));
    }
    let outcome = match &got {
        Ok(answer) => {
            problems.push(format!("succeeded: {answer:?}"));
            format!("{answer:?}")
        }
        Err(f) => {
            if f.rule != Some(expect.rule) {
                problems.push(format!(
                    "rule {:?}, expected {:?}",
                    f.rule.map(|r| r.as_str()),
                    expect.rule
                ));
            }
            format!(
                "rule={:?} retries={:?} (retried as {:?}) chain: {}",
                f.rule.map(|r| r.as_str()),
                f.retries,
                f.safe,
                f.chain
            )
        }
    };
    let ok = problems.is_empty();
    let line = format!(
        "{} {label}: heads={heads} connections={} | {outcome}{}",
        if ok { "ok  " } else { "FAIL" },
        c.connections.load(Ordering::SeqCst),
        if ok {
            String::new()
        } else {
            format!("\n       problems: {}", problems.join("; "))
        }
    );
    (line, ok)
}

/// Runs every case of `table` (all of them, then asserts), each with a new
/// client from `make_client`.
pub async fn early_table<S, B>(
    make_client: impl Fn() -> S,
    reused: bool,
    table: &[FirstBytes],
    expect: impl Fn(FirstBytes, Kind) -> Expect,
) where
    S: tower::Service<Request<Full<Bytes>>, Response = http::Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
{
    let (mut cases, mut failed) = (0, Vec::new());
    for &early in table {
        for kind in [Kind::PostNoKey, Kind::PostWithKey, Kind::GetWithBody] {
            let (line, ok) =
                early_case(make_client(), early, kind, reused, expect(early, kind)).await;
            println!("{line}");
            cases += 1;
            if !ok {
                failed.push(line);
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {cases} cases broke the rule table:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

// ---------------------------------------------------------------------------
// An upgraded connection is the caller's tunnel.
//
// The tunnel runs in two phases, each with a pause longer than the expiry:
// first the server pushes (the client only reads, as under a server-push
// protocol or a CONNECT to a server that speaks first), then the client
// sends and reads its bytes back. Client writes alone would hide the bug:
// the tracker takes each write after a read for a new exchange, which is
// never idle.

/// How long the client keeps the tunnel busy, both phases together.
pub const TUNNEL_RUN: Duration = Duration::from_secs(3);
/// The interval between messages, in both phases.
pub const TUNNEL_TICK: Duration = Duration::from_millis(100);
/// The ticks the server pushes first; the pause comes after half of them.
pub const PUSH_TICKS: usize = 8;
/// When the client's pause starts in the echo phase.
pub const ECHO_PAUSE_AT: Duration = Duration::from_millis(2000);
/// The pause in each phase: longer than the 500 ms expiry.
pub const TUNNEL_PAUSE: Duration = Duration::from_millis(700);
/// Every message, both ways, is this long.
pub const TUNNEL_MESSAGE: usize = 16;
/// How long one message may take to arrive.
pub const MESSAGE_LIMIT: Duration = Duration::from_secs(2);
/// At most this many echo messages (the phase is bounded by time too).
pub const TUNNEL_MAX_MESSAGES: usize = 200;
pub const TUNNEL_EXPIRY: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
pub struct TunnelFacts {
    pub pushed: AtomicU64,
    pub echoed: AtomicU64,
    pub closed: Mutex<Option<(Instant, String)>>,
}

impl TunnelFacts {
    pub fn close(&self, how: impl Into<String>) {
        *self.closed.lock().unwrap() = Some((Instant::now(), how.into()));
    }
}

/// Answers a request with `101 Switching Protocols`, pushes `PUSH_TICKS`
/// messages (pausing `TUNNEL_PAUSE` halfway), then echoes bytes until the
/// connection closes.
pub async fn tunnel_server(facts: Arc<TunnelFacts>) -> RawServer {
    RawServer::start(move |mut conn| {
        let facts = facts.clone();
        async move {
            let Some(_head) = conn.read_head().await else {
                return;
            };
            if !conn
                .write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
                .await
            {
                return;
            }
            for i in 0..PUSH_TICKS {
                // The pause is the scenario, not an assertion.
                sleep(if i == PUSH_TICKS / 2 { TUNNEL_PAUSE } else { TUNNEL_TICK }).await;
                let tick = format!("tick {i:010}\n");
                if !conn.write(tick.as_bytes()).await {
                    facts.close("push write failed");
                    return;
                }
                facts.pushed.fetch_add(tick.len() as u64, Ordering::SeqCst);
            }
            // Bounded: ends at EOF, an error, or SERVER_IO_LIMIT of silence.
            loop {
                if !conn.buf.is_empty() {
                    let data = std::mem::take(&mut conn.buf);
                    if !conn.write(&data).await {
                        facts.close("echo write failed");
                        return;
                    }
                    facts.echoed.fetch_add(data.len() as u64, Ordering::SeqCst);
                }
                match conn.read_more(SERVER_IO_LIMIT).await {
                    Read::Data(_) => {}
                    other => {
                        facts.close(format!("{other:?}"));
                        return;
                    }
                }
            }
        }
    })
    .await
}

/// Reads one `TUNNEL_MESSAGE`; `Err` says what came instead.
pub async fn read_message<T: tokio::io::AsyncRead + Unpin>(io: &mut T) -> Result<String, String> {
    let mut back = vec![0; TUNNEL_MESSAGE];
    match timeout(MESSAGE_LIMIT, io.read_exact(&mut back)).await {
        Ok(Ok(_)) => Ok(String::from_utf8_lossy(&back).into_owned()),
        Ok(Err(e)) => Err(format!("{:?}: {e}", e.kind())),
        Err(_) => Err(format!("nothing within {MESSAGE_LIMIT:?}")),
    }
}

/// Runs `run` with each idle expiry of `table` (a label and the layer) and
/// fails naming every one that cut the upgraded stream.
pub async fn assert_tunnels_survive<F, Fut>(
    table: Vec<(&str, tower_conn_lifecycle::idle_expiry::IdleExpiryLayer)>,
    run: F,
) where
    F: Fn(tower_conn_lifecycle::idle_expiry::IdleExpiryLayer) -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let mut failures = Vec::new();
    for (label, expiry) in table {
        let got = run(expiry).await;
        println!("{label}: {got:?}");
        if let Err(e) = got {
            failures.push(format!("{label}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "the upgraded stream was cut:\n{}",
        failures.join("\n")
    );
}

/// Keeps an upgraded stream to a [`tunnel_server`] busy for `TUNNEL_RUN`:
/// first the server pushes (the client only reads), then the client sends
/// and reads its bytes back, each phase with a pause longer than the
/// expiry. `Err` says what went wrong.
pub async fn drive_tunnel<T>(mut io: T, facts: &TunnelFacts) -> Result<String, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start = Instant::now();
    let (mut ticks, mut sent, mut echoed, mut paused) = (0, 0u64, 0u64, false);
    let mut failure = None;
    // Phase 1: the server pushes, the client only reads.
    for i in 0..PUSH_TICKS {
        match read_message(&mut io).await {
            Ok(tick) if tick == format!("tick {i:010}\n") => ticks += 1,
            other => {
                failure = Some(format!("push {i}: {other:?}"));
                break;
            }
        }
    }
    // Phase 2: the client sends, the server echoes.
    for i in 0..TUNNEL_MAX_MESSAGES {
        if failure.is_some() || start.elapsed() >= TUNNEL_RUN {
            break;
        }
        if !paused && start.elapsed() >= ECHO_PAUSE_AT {
            // The pause is the scenario (a tunnel idle longer than the
            // expiry), not an assertion.
            sleep(TUNNEL_PAUSE).await;
            paused = true;
        }
        let msg = format!("ping {i:010}\n");
        match timeout(MESSAGE_LIMIT, io.write_all(msg.as_bytes())).await {
            Ok(Ok(())) => sent += msg.len() as u64,
            other => {
                failure = Some(format!("echo write {i}: {other:?}"));
                break;
            }
        }
        match read_message(&mut io).await {
            Ok(back) if back == msg => echoed += back.len() as u64,
            other => {
                failure = Some(format!("echo {i}: {other:?}"));
                break;
            }
        }
        sleep(TUNNEL_TICK).await;
    }
    let ran = start.elapsed();
    let closed = facts
        .closed
        .lock()
        .unwrap()
        .as_ref()
        .map(|(at, how)| format!("{how} at {:?}", at.saturating_duration_since(start)));
    let summary = format!(
        "ran {ran:?}: {ticks} of {PUSH_TICKS} pushed ticks read (server pushed {} bytes); \
         echo sent {sent}, read back {echoed}, server echoed {}; paused: {paused}; \
         server saw the tunnel closed: {closed:?}",
        facts.pushed.load(Ordering::SeqCst),
        facts.echoed.load(Ordering::SeqCst),
    );
    drop(io);
    let server_echoed = facts.echoed.load(Ordering::SeqCst);
    match failure {
        Some(f) => Err(format!("{f}; {summary}")),
        None if ran < TUNNEL_RUN || !paused || closed.is_some() || server_echoed != sent => {
            Err(summary)
        }
        None => Ok(summary),
    }
}
