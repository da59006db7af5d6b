//! Probes of the one-call client over plain HTTP/1 against raw loopback
//! servers that behave legally but unusually: `Connection: close` and
//! close-delimited bodies, bodiless responses (HEAD, 204, 304), truncated
//! bodies, half-closed connections, odd `Keep-Alive` headers, 1xx
//! responses before the final one, trickled and huge heads, a final
//! response before the request body was read, a body dropped half-way,
//! `max_idle_per_origin(0)`, many origins and odd request URIs.
//!
//! Server-side facts decide: every server counts the connections it
//! accepted, the request heads it read (method, path, connection) and the
//! connections it saw closed. Every await that could hang is under a
//! `timeout` with a named limit, every loop is bounded, no sleep is an
//! assertion, and everything binds `127.0.0.1:0`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, timeout, Instant};
use tower::ServiceExt;
use tower_conn_lifecycle::client::{self, Client};
use tower_conn_lifecycle::phase_timeout::PhaseTimeoutLayer;
use tower_conn_lifecycle::retry::{NotRetried, Retried};
use tower_conn_lifecycle::track::ConnectionInfo;
use tower_conn_lifecycle::{error_chain, find_cause, BoxError};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Upper bound for one request (head or body) that must end on its own.
const STEP_LIMIT: Duration = Duration::from_secs(10);
/// How long a server waits on one socket read before giving up.
const SERVER_IO_LIMIT: Duration = Duration::from_secs(15);
/// Upper bound for one server connection's handler.
const CONN_LIMIT: Duration = Duration::from_secs(30);
/// How late an expected event (a close, a counter) may be observed on a
/// loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(3);
/// How often a wait polls what it waits for.
const POLL: Duration = Duration::from_millis(5);
/// How long a test gives the client's connection task to read a FIN the
/// server sent (setup, not an assertion: either path must be correct).
const FIN_SETTLE: Duration = Duration::from_millis(100);
/// The servers' socket receive buffer: small, so that a server that stops
/// reading blocks the client's writes after a bounded number of bytes.
const SERVER_RCVBUF: u32 = 64 * 1024;
/// The longest request head a server accepts.
const MAX_HEAD: usize = 64 * KIB;
/// The answer of every well-behaved exchange.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

// ---------------------------------------------------------------------------
// Raw loopback servers.

/// One request head as a server read it.
#[derive(Clone, Debug)]
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    /// The index of the connection it came on (accept order).
    conn: usize,
}

impl Head {
    fn parse(bytes: &[u8], conn: usize) -> Option<Head> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let method = first.next()?.to_owned();
        let path = first.next()?.to_owned();
        let mut headers = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':')?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        Some(Head {
            method,
            path,
            headers,
            conn,
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> u64 {
        self.header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// What a server saw, shared with the test.
#[derive(Debug, Default)]
struct Facts {
    accepted: AtomicUsize,
    heads: Mutex<Vec<Head>>,
    /// Per connection that ended: its index and how the server saw it end.
    closed: Mutex<Vec<(usize, String)>>,
    body_bytes: AtomicUsize,
}

/// One accepted connection.
struct Conn {
    io: TcpStream,
    buf: Vec<u8>,
    index: usize,
    facts: Arc<Facts>,
}

impl Conn {
    /// Reads once (at most `limit`): `Some(n)` bytes, `None` on EOF, error
    /// or timeout.
    async fn read_more(&mut self, limit: Duration) -> Result<usize, String> {
        let mut chunk = [0u8; 16 * KIB];
        match timeout(limit, self.io.read(&mut chunk)).await {
            Ok(Ok(0)) => Err("eof".into()),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Ok(Err(e)) => Err(format!("{:?}", e.kind())),
            Err(_) => Err("timed out".into()),
        }
    }

    /// The next request head (recorded), or `None` on EOF, error, timeout
    /// or garbage; bytes after it stay buffered.
    async fn head(&mut self) -> Option<Head> {
        // Bounded: each turn reads at least one byte, MAX_HEAD caps it.
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = Head::parse(&self.buf[..end], self.index)?;
                self.buf.drain(..end + 4);
                self.facts.heads.lock().unwrap().push(head.clone());
                return Some(head);
            }
            if self.buf.len() > MAX_HEAD {
                return None;
            }
            if let Err(how) = self.read_more(SERVER_IO_LIMIT).await {
                self.record_closed(&how);
                return None;
            }
        }
    }

    /// Consumes `n` body bytes (buffered first); returns how many it got.
    async fn body(&mut self, n: u64) -> u64 {
        let mut got = 0;
        while got < n {
            if self.buf.is_empty() && self.read_more(SERVER_IO_LIMIT).await.is_err() {
                break;
            }
            let take = self.buf.len().min((n - got) as usize);
            self.buf.drain(..take);
            got += take as u64;
        }
        self.facts
            .body_bytes
            .fetch_add(got as usize, Ordering::SeqCst);
        got
    }

    async fn send(&mut self, bytes: &[u8]) -> bool {
        matches!(
            timeout(SERVER_IO_LIMIT, self.io.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Reads and discards until EOF or an error (recorded), or `limit`.
    async fn wait_closed(&mut self, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        // Bounded by `deadline`.
        loop {
            self.buf.clear();
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_more(left).await {
                Ok(_) => continue,
                Err(how) if how == "timed out" => return None,
                Err(how) => {
                    self.record_closed(&how);
                    return Some(how);
                }
            }
        }
    }

    fn record_closed(&self, how: &str) {
        self.facts
            .closed
            .lock()
            .unwrap()
            .push((self.index, how.to_owned()));
    }
}

/// A raw HTTP/1.1 server on `127.0.0.1:0`: `handler` gets every accepted
/// connection. Dropping it aborts the accept loop and every connection.
struct Server {
    addr: SocketAddr,
    facts: Arc<Facts>,
    accept: JoinHandle<()>,
}

impl Server {
    async fn start<F, Fut>(handler: F) -> Server
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(SERVER_RCVBUF).unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        Server::on(socket.listen(1024).unwrap(), handler)
    }

    fn on<F, Fut>(listener: TcpListener, handler: F) -> Server
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let facts = Arc::new(Facts::default());
        let shared = facts.clone();
        let accept = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((io, _)) = accepted else {
                            sleep(Duration::from_millis(1)).await;
                            continue;
                        };
                        let index = shared.accepted.fetch_add(1, Ordering::SeqCst);
                        let conn = Conn { io, buf: Vec::new(), index, facts: shared.clone() };
                        let served = handler(conn);
                        conns.spawn(async move {
                            let _ = timeout(CONN_LIMIT, served).await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Server {
            addr,
            facts,
            accept,
        }
    }

    /// A keep-alive server that reads every request's `Content-Length`
    /// body, then writes `answer(head)` and does what it says next.
    async fn scripted<A>(answer: A) -> Server
    where
        A: Fn(&Head) -> (Vec<u8>, After) + Send + Sync + 'static,
    {
        let answer = Arc::new(answer);
        Server::start(move |conn| serve(conn, answer.clone())).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn accepted(&self) -> usize {
        self.facts.accepted.load(Ordering::SeqCst)
    }

    fn heads(&self) -> Vec<Head> {
        self.facts.heads.lock().unwrap().clone()
    }

    /// How many heads arrived for `path`.
    fn heads_for(&self, path: &str) -> usize {
        self.heads().iter().filter(|h| h.path == path).count()
    }

    /// The connection each head came on, in order.
    fn conns(&self) -> Vec<usize> {
        self.heads().iter().map(|h| h.conn).collect()
    }

    fn closed(&self) -> Vec<(usize, String)> {
        self.facts.closed.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// What a scripted server does after an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    /// Reads the next request.
    KeepAlive,
    /// Closes the connection (FIN).
    Close,
    /// Shuts its write side down and keeps reading (and recording) request
    /// heads, never answering them; closes at the client's EOF.
    HalfClose,
}

/// A scripted server's connection: answers each request by `answer`.
async fn serve<A>(mut conn: Conn, answer: Arc<A>)
where
    A: Fn(&Head) -> (Vec<u8>, After) + Send + Sync + 'static,
{
    // Bounded: each turn reads a head (or ends), and CONN_LIMIT caps it.
    while let Some(head) = conn.head().await {
        let (bytes, after) = answer(&head);
        if head.path.starts_with("/early") {
            // Answers before reading the body.
            if !conn.send(&bytes).await {
                return;
            }
        } else {
            conn.body(head.content_length()).await;
            if !conn.send(&bytes).await {
                return;
            }
        }
        match after {
            After::KeepAlive => {}
            After::Close => {
                let _ = conn.io.shutdown().await;
                conn.wait_closed(SERVER_IO_LIMIT).await;
                return;
            }
            After::HalfClose => {
                let _ = conn.io.shutdown().await;
                // Records whatever heads still arrive (never answered).
                while let Some(head) = conn.head().await {
                    conn.body(head.content_length()).await;
                }
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Client-side helpers.

type Probe = Client<Full<Bytes>>;

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

fn post(url: &str, len: usize) -> Request<Full<Bytes>> {
    Request::post(url)
        .body(Full::new(Bytes::from(vec![b'p'; len])))
        .unwrap()
}

/// A complete exchange as the client saw it.
#[derive(Debug)]
struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    /// The whole body, or the body's error chain.
    body: Result<Bytes, String>,
    reused: bool,
    retried: bool,
}

/// Sends `req` and reads its whole body; `Err` is the head's error chain.
async fn fetch(client: &Probe, req: Request<Full<Bytes>>) -> Result<Got, BoxError> {
    let res = timeout(STEP_LIMIT, client.clone().oneshot(req))
        .await
        .unwrap_or_else(|_| panic!("no response head within {STEP_LIMIT:?}"))?;
    let reused = ConnectionInfo::of(&res).is_some_and(|i| i.is_reused());
    let retried = res.extensions().get::<Retried>().is_some();
    let status = res.status();
    let headers = res.headers().clone();
    let body = timeout(STEP_LIMIT, res.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("the body did not end within {STEP_LIMIT:?}"))
        .map(|b| b.to_bytes())
        .map_err(|e| error_chain(e.as_ref()).to_string());
    Ok(Got {
        status,
        headers,
        body,
        reused,
        retried,
    })
}

/// `fetch` that must succeed with a complete body.
async fn fetch_ok(client: &Probe, req: Request<Full<Bytes>>) -> Got {
    let what = format!("{} {}", req.method(), req.uri());
    let got = fetch(client, req)
        .await
        .unwrap_or_else(|e| panic!("{what}: {}", error_chain(e.as_ref())));
    assert!(got.body.is_ok(), "{what}: body failed: {:?}", got.body);
    got
}

/// Waits until `cond` holds, at most `limit`; panics naming `what`.
async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    // Bounded by `deadline`.
    while !cond() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        sleep(POLL).await;
    }
}

fn new_client() -> Probe {
    client::builder().build::<Full<Bytes>>()
}

/// A server answering every request with `bytes`, then doing `after`.
async fn answering(bytes: &'static [u8], after: After) -> Server {
    Server::scripted(move |_| (bytes.to_vec(), after)).await
}

// ---------------------------------------------------------------------------
// 1. `Connection: close` and close-delimited bodies.

/// A response with `Connection: close` (and a `Content-Length` body) ends
/// its connection: the next request opens another, and the client closes
/// the announced one even when the server keeps it open (here it would
/// answer a second request, which would prove a wrong reuse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_with_content_length_is_never_reused() {
    for after in [After::Close, After::KeepAlive] {
        let server = Server::scripted(move |head| match head.path.as_str() {
            "/close" => (
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                after,
            ),
            _ => (OK.to_vec(), After::KeepAlive),
        })
        .await;
        let client = new_client();
        let first = fetch_ok(&client, get(&server.url("/close"))).await;
        assert_eq!(first.body.as_deref().unwrap(), b"ok");
        let next = fetch_ok(&client, get(&server.url("/next"))).await;
        assert_eq!(next.status, StatusCode::OK);
        assert!(!next.reused && !next.retried, "{after:?}: {next:?}");
        assert_eq!(server.conns(), vec![0, 1], "{after:?}: a new connection");
        assert_eq!(server.accepted(), 2, "{after:?}");
        // The announced connection is closed by the client too.
        eventually(SLACK, "the client closed connection 0", || {
            server.closed().iter().any(|(c, _)| *c == 0)
        })
        .await;
    }
}

/// A body delimited by the connection's close (no `Content-Length`, no
/// chunking) is read to the server's FIN, whole; the next request gets a
/// new connection, without an error or a retry. The same for an HTTP/1.0
/// response (which does not keep the connection alive by default), with
/// the server keeping its end open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_and_http10_bodies_end_their_connection() {
    let cases: [(&'static [u8], After, &[u8]); 3] = [
        (
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nread until the close",
            After::Close,
            b"read until the close",
        ),
        (
            b"HTTP/1.1 200 OK\r\n\r\nno length, no close header",
            After::Close,
            b"no length, no close header",
        ),
        (
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            After::KeepAlive,
            b"ok",
        ),
    ];
    for (bytes, after, body) in cases {
        let case = String::from_utf8_lossy(bytes).into_owned();
        let server = Server::scripted(move |head| match head.path.as_str() {
            "/first" => (bytes.to_vec(), after),
            _ => (OK.to_vec(), After::KeepAlive),
        })
        .await;
        let client = new_client();
        let first = fetch_ok(&client, get(&server.url("/first"))).await;
        assert_eq!(first.body.as_deref().unwrap(), body, "{case}");
        let next = fetch_ok(&client, get(&server.url("/next"))).await;
        assert!(!next.retried, "{case}: {next:?}");
        assert_eq!(server.conns(), vec![0, 1], "{case}");
        eventually(SLACK, "connection 0 closed", || {
            server.closed().iter().any(|(c, _)| *c == 0)
        })
        .await;
    }
}

// ---------------------------------------------------------------------------
// 2. Responses without a body.

/// HEAD with a `Content-Length` and no body, 204, and 304 with a
/// `Content-Length`: each ends at its head, and the connection carries the
/// next request (one connection for all of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_responses_leave_their_connection_reusable() {
    let server = Server::scripted(|head| {
        let bytes: &[u8] = match (head.method.as_str(), head.path.as_str()) {
            ("HEAD", _) => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
            (_, "/204") => b"HTTP/1.1 204 No Content\r\nx-a: b\r\n\r\n",
            (_, "/304") => {
                b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\ncontent-length: 50\r\n\r\n"
            }
            _ => OK,
        };
        (bytes.to_vec(), After::KeepAlive)
    })
    .await;
    let client = new_client();
    let head = Request::head(server.url("/h"))
        .body(Full::default())
        .unwrap();
    let steps = [
        (head, StatusCode::OK, &b""[..]),
        (get(&server.url("/204")), StatusCode::NO_CONTENT, b""),
        (get(&server.url("/304")), StatusCode::NOT_MODIFIED, b""),
        (post(&server.url("/204"), 10), StatusCode::NO_CONTENT, b""),
        (get(&server.url("/ok")), StatusCode::OK, b"ok"),
    ];
    for (i, (req, status, body)) in steps.into_iter().enumerate() {
        let got = fetch_ok(&client, req).await;
        assert_eq!(got.status, status, "step {i}");
        assert_eq!(got.body.as_deref().unwrap(), body, "step {i}");
        assert_eq!(got.reused, i > 0, "step {i}: {got:?}");
    }
    assert_eq!(server.accepted(), 1);
    assert_eq!(server.heads().len(), 5);
}

// ---------------------------------------------------------------------------
// 3. Truncated response bodies.

/// A response body cut by the server's close (a `Content-Length` larger
/// than what was sent; a chunked body without its last chunk) fails in the
/// body, typed as hyper's error; the connection is not reused (the next GET
/// opens another and succeeds), and a POST whose response was cut is never
/// sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_bodies_fail_and_are_never_resent() {
    let cases: [&'static [u8]; 2] = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ];
    for bytes in cases {
        let case = String::from_utf8_lossy(bytes).into_owned();
        let server = Server::scripted(move |head| match head.path.as_str() {
            "/cut" => (bytes.to_vec(), After::Close),
            _ => (OK.to_vec(), After::KeepAlive),
        })
        .await;
        let client = new_client();
        // Warm a connection first, so the cut one is a reused connection
        // (the case a retry would look at).
        fetch_ok(&client, get(&server.url("/warm"))).await;
        for req in [get(&server.url("/cut")), post(&server.url("/cut"), 1000)] {
            let method = req.method().clone();
            let got = fetch(&client, req)
                .await
                .unwrap_or_else(|e| panic!("{case}: the head arrived whole: {e}"));
            let err = got.body.expect_err(&case);
            assert!(
                err.contains("connection closed before message completed")
                    || err.contains("EOF")
                    || err.contains("end of file"),
                "{case} {method}: {err}"
            );
            let next = fetch_ok(&client, get(&server.url("/next"))).await;
            assert!(!next.retried, "{case}");
        }
        assert_eq!(server.heads_for("/cut"), 2, "{case}: one GET, one POST");
        let posts = server.heads().iter().filter(|h| h.method == "POST").count();
        assert_eq!(posts, 1, "{case}: the POST was sent once");
        // warm(0) cut(0) next(1) cut(1) next(2).
        assert_eq!(server.conns(), vec![0, 0, 1, 1, 2], "{case}");
    }
}

// ---------------------------------------------------------------------------
// 4. A half-closed connection.

/// The server shuts its write side down after a complete response and
/// keeps reading. Once the client has read that FIN, the next POST goes on
/// a new connection (sent once); sent at once (the FIN possibly not yet
/// read), a GET still succeeds and a POST is sent at most once, never
/// hangs, and fails typed if it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_connection_is_not_used_and_nothing_is_duplicated() {
    let half = || async {
        Server::scripted(|head| match head.path.as_str() {
            "/half" => (OK.to_vec(), After::HalfClose),
            _ => (OK.to_vec(), After::KeepAlive),
        })
        .await
    };
    // After the FIN had time to arrive.
    let server = half().await;
    let client = new_client();
    fetch_ok(&client, get(&server.url("/half"))).await;
    sleep(FIN_SETTLE).await;
    let got = fetch_ok(&client, post(&server.url("/p"), 100)).await;
    assert!(!got.retried && !got.reused, "{got:?}");
    assert_eq!(server.conns(), vec![0, 1]);
    // At once, a GET then a POST, several rounds.
    for round in 0..5 {
        let server = half().await;
        let client = new_client();
        fetch_ok(&client, get(&server.url("/half"))).await;
        let got = fetch_ok(&client, get(&server.url("/g"))).await;
        assert_eq!(got.body.as_deref().unwrap(), b"ok", "round {round}");
        fetch_ok(&client, get(&server.url("/half"))).await;
        match fetch(&client, post(&server.url("/p"), 100)).await {
            Ok(got) => assert!(got.body.is_ok(), "round {round}: {got:?}"),
            Err(e) => assert!(
                find_cause::<NotRetried>(e.as_ref()).is_some(),
                "round {round}: untyped: {}",
                error_chain(e.as_ref())
            ),
        }
        assert!(
            server.heads_for("/p") <= 1,
            "round {round}: POST duplicated"
        );
        assert!(
            server.heads_for("/g") <= 2,
            "round {round}: one safe retry at most"
        );
    }
}

// ---------------------------------------------------------------------------
// 5. Keep-Alive headers.

/// Each `Keep-Alive` variant, then a second request at once: reused or not
/// as the documented rule says (`timeout=0` and the smallest of several
/// values win; huge, malformed and `max=` are ignored); never a panic, and
/// both requests succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_variants_follow_the_documented_rule() {
    let cases: [(&'static [u8], bool); 11] = [
        (b"keep-alive: timeout=0\r\n", false),
        (b"keep-alive: timeout=1\r\n", true),
        (b"keep-alive: timeout=99999999999999999999\r\n", true),
        (b"keep-alive: timeout=abc\r\n", true),
        (b"keep-alive: max=0\r\n", true),
        (b"keep-alive: timeout=5, max=0\r\n", true),
        (b"keep-alive: timeout=5\r\nkeep-alive: timeout=0\r\n", false),
        (b"keep-alive: timeout=5, timeout=0\r\n", false),
        (b"keep-alive: timeout=\"0\"\r\n", false),
        (b"keep-alive: timeout=-1\r\nkeep-alive:\r\n", true),
        (b"keep-alive: timeout=\xff\r\n", true),
    ];
    for (header, reused) in cases {
        let case = String::from_utf8_lossy(header).into_owned();
        let answer = [
            &b"HTTP/1.1 200 OK\r\n"[..],
            header,
            b"content-length: 2\r\n\r\nok",
        ]
        .concat();
        let server = Server::scripted(move |_| (answer.clone(), After::KeepAlive)).await;
        let client = new_client();
        fetch_ok(&client, get(&server.url("/1"))).await;
        let second = fetch_ok(&client, get(&server.url("/2"))).await;
        let want = if reused { vec![0, 0] } else { vec![0, 1] };
        assert_eq!(server.conns(), want, "{case}");
        assert_eq!(second.reused, reused, "{case}");
        assert!(!second.retried, "{case}");
    }
}

// ---------------------------------------------------------------------------
// 6. 1xx responses before the final one.

/// `100 Continue` (without `Expect`), `103 Early Hints` with `Link`
/// headers and `102 Processing`, in a row, before every final response:
/// GET and POST, on a fresh and on a reused connection, all on one
/// connection, each request sent once, and the final response's headers
/// are the final ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_responses_before_the_final_one() {
    const INFO: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n\
        HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\nlink: </b.js>; rel=preload\r\n\r\n\
        HTTP/1.1 102 Processing\r\n\r\n\
        HTTP/1.1 200 OK\r\nx-final: yes\r\ncontent-length: 2\r\n\r\nok";
    for first_post in [false, true] {
        let server = answering(INFO, After::KeepAlive).await;
        let client = new_client();
        let mut reqs = vec![
            get(&server.url("/g1")),
            post(&server.url("/p1"), 5000),
            get(&server.url("/g2")),
            post(&server.url("/p2"), 10),
        ];
        if first_post {
            reqs.swap(0, 1);
        }
        for (i, req) in reqs.into_iter().enumerate() {
            let got = fetch_ok(&client, req).await;
            assert_eq!(got.status, StatusCode::OK, "{i}");
            assert_eq!(got.body.as_deref().unwrap(), b"ok", "{i}");
            assert_eq!(got.headers["x-final"], "yes", "{i}");
            assert!(!got.headers.contains_key("link"), "{i}");
            assert_eq!(got.reused, i > 0, "{i}");
        }
        assert_eq!(server.accepted(), 1, "first_post={first_post}");
        for path in ["/g1", "/p1", "/g2", "/p2"] {
            assert_eq!(server.heads_for(path), 1, "{path}");
        }
    }
}

/// A 100 Continue (unasked) and a 103 arrive before the server read the
/// POST's body; it then reads the body and answers: one connection, sent
/// once, the next request reuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_responses_before_the_body_was_read() {
    let server = Server::start(|mut conn| async move {
        while let Some(head) = conn.head().await {
            if !conn
                .send(
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n",
                )
                .await
            {
                return;
            }
            conn.body(head.content_length()).await;
            if !conn.send(OK).await {
                return;
            }
        }
    })
    .await;
    let client = new_client();
    for i in 0..3 {
        let got = fetch_ok(&client, post(&server.url(&format!("/p{i}")), 256 * KIB)).await;
        assert_eq!(got.body.as_deref().unwrap(), b"ok");
    }
    assert_eq!(server.conns(), vec![0, 0, 0]);
    assert_eq!(
        server.facts.body_bytes.load(Ordering::SeqCst),
        3 * 256 * KIB
    );
}

// ---------------------------------------------------------------------------
// 7. Trickled and huge heads.

/// A response head written one byte at a time (a `read` limit set, well
/// above the whole trickle) arrives whole; the connection is reused after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_byte_by_byte() {
    const SLOW: &[u8] =
        b"HTTP/1.1 200 OK\r\nx-one: 1\r\nx-two: 22\r\ncontent-length: 7\r\n\r\ntrickle";
    let server = Server::start(|mut conn| async move {
        while let Some(head) = conn.head().await {
            conn.body(head.content_length()).await;
            for byte in SLOW {
                if !conn.send(&[*byte]).await {
                    return;
                }
                let _ = conn.io.flush().await;
                sleep(Duration::from_millis(1)).await;
            }
        }
    })
    .await;
    let client = client::builder()
        .timeouts(PhaseTimeoutLayer::new().read(Duration::from_secs(5)))
        .build::<Full<Bytes>>();
    for _ in 0..2 {
        let got = fetch_ok(&client, post(&server.url("/t"), 10)).await;
        assert_eq!(got.headers["x-two"], "22");
        assert_eq!(got.body.as_deref().unwrap(), b"trickle");
    }
    assert_eq!(server.conns(), vec![0, 0]);
}

/// A head just below hyper's default limit is taken (and the connection
/// reused); one above it fails typed, is not retried (response bytes
/// arrived), and the connection is not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_heads_below_and_above_the_limit() {
    // hyper's default read buffer limit: 8 KiB + 100 × 4 KiB.
    const LIMIT: usize = 8192 + 4096 * 100;
    let server = Server::scripted(|head| {
        let size = match head.path.as_str() {
            "/below" => LIMIT - 1024,
            "/above" => 2 * MIB,
            _ => return (OK.to_vec(), After::KeepAlive),
        };
        let mut bytes = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        bytes.extend(std::iter::repeat_n(b'b', size));
        bytes.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\nok");
        (bytes, After::KeepAlive)
    })
    .await;
    let client = new_client();
    let got = fetch_ok(&client, get(&server.url("/below"))).await;
    assert_eq!(got.headers["x-big"].len(), LIMIT - 1024);
    let next = fetch_ok(&client, get(&server.url("/next"))).await;
    assert!(next.reused);
    let err = match fetch(&client, get(&server.url("/above"))).await {
        Ok(got) => panic!("a head above the limit was taken: {}", got.status),
        Err(e) => e,
    };
    let chain = error_chain(err.as_ref()).to_string();
    assert!(
        find_cause::<NotRetried>(err.as_ref()).is_some(),
        "typed: {chain}"
    );
    assert!(chain.contains("too large"), "{chain}");
    assert_eq!(server.heads_for("/above"), 1, "not retried: {chain}");
    let after = fetch_ok(&client, get(&server.url("/after"))).await;
    assert!(!after.reused, "{after:?}");
    assert_eq!(server.conns(), vec![0, 0, 0, 1]);
}

// ---------------------------------------------------------------------------
// 8. A final response before the request body was read.

/// The upload: far more than the socket buffers hold once the server stops
/// reading.
const EARLY_UPLOAD: usize = 16 * MIB;

/// How long the early server stops reading after its early answer.
const EARLY_HOLD: Duration = Duration::from_secs(3);

/// Answers `/early` at once with `answer` (before reading the body), then
/// neither reads nor writes for `EARLY_HOLD` (the connection kept open),
/// then reads the rest of the body and serves on; answers anything else
/// normally.
async fn early_server(answer: &'static [u8]) -> Server {
    Server::start(move |mut conn| async move {
        while let Some(head) = conn.head().await {
            if head.path == "/early" {
                if !conn.send(answer).await {
                    return;
                }
                sleep(EARLY_HOLD).await;
                conn.body(head.content_length()).await;
                continue;
            }
            conn.body(head.content_length()).await;
            if !conn.send(OK).await {
                return;
            }
        }
    })
    .await
}

/// One early-answer case: the POST's response, then a GET on the same
/// origin must complete on a new connection; the POST is sent once.
async fn early_case(answer: &'static [u8], client: Probe, what: &str) {
    let server = early_server(answer).await;
    // Warm a connection so the POST goes on a reused one.
    fetch_ok(&client, get(&server.url("/warm"))).await;
    let started = Instant::now();
    let posted = timeout(
        STEP_LIMIT,
        fetch(&client, post(&server.url("/early"), EARLY_UPLOAD)),
    )
    .await;
    let posted = match posted {
        Ok(Ok(got)) => format!("{} {:?}", got.status, got.body.map(|b| b.len())),
        Ok(Err(e)) => format!("error: {}", error_chain(e.as_ref())),
        Err(_) => format!("no answer within {STEP_LIMIT:?}"),
    };
    let after_post = started.elapsed();
    let started = Instant::now();
    let next = timeout(STEP_LIMIT, fetch(&client, get(&server.url("/next")))).await;
    let waited = started.elapsed();
    let next = match next {
        Ok(Ok(got)) => format!("{} reused={}", got.status, got.reused),
        Ok(Err(e)) => format!("error: {}", error_chain(e.as_ref())),
        Err(_) => format!("no answer within {STEP_LIMIT:?}"),
    };
    eprintln!(
        "{what}: POST -> {posted} ({after_post:?}); next GET -> {next} ({waited:?}); conns {:?}; closed {:?}",
        server.conns(),
        server.closed()
    );
    assert_eq!(server.heads_for("/early"), 1, "{what}: POST sent once");
    assert!(
        posted.starts_with("200") || posted.starts_with("413"),
        "{what}: {posted}"
    );
    assert!(
        next.starts_with("200"),
        "{what}: the next GET on the origin: {next}"
    );
    assert!(
        waited < EARLY_HOLD,
        "{what}: the next GET waited {waited:?} behind the stuck upload"
    );
    assert_eq!(
        server.conns(),
        vec![0, 0, 1],
        "{what}: the next GET on a new connection"
    );
    // The early-answered connection is closed, not kept to finish the
    // upload: once the server reads again, it finds the end of what the
    // socket buffers held, then EOF.
    eventually(
        EARLY_HOLD + SLACK,
        "the early-answered connection closed",
        || server.closed().iter().any(|(c, _)| *c == 0),
    )
    .await;
    let read = server.facts.body_bytes.load(Ordering::SeqCst);
    assert!(
        read < EARLY_UPLOAD,
        "{what}: the upload went on ({read} bytes)"
    );
}

/// A final `200` (keep-alive) before the server read any of the upload,
/// which it then does not read for a while: the response arrives, the next
/// request on the origin does not wait behind the stuck upload (it gets a
/// new connection), and the early-answered connection is closed (the upload
/// stops), with a `send` limit set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_200_with_a_send_limit_does_not_block_the_origin() {
    let client = client::builder()
        .timeouts(PhaseTimeoutLayer::new().send(Duration::from_millis(500)))
        .build::<Full<Bytes>>();
    early_case(OK, client, "200 + send limit").await;
}

/// The same without any limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_200_without_limits_does_not_block_the_origin() {
    early_case(OK, new_client(), "200, no limit").await;
}

/// The same with `413` and `Connection: close` (what servers send).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_413_close_without_limits_does_not_block_the_origin() {
    early_case(
        b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        new_client(),
        "413 close, no limit",
    )
    .await;
}

// ---------------------------------------------------------------------------
// 9. A response body dropped half-way.

/// A large response body dropped after its first bytes: the connection is
/// closed (the server's writes fail within a bounded time; it is never
/// handed the next request with the rest of the body pending), and the
/// next request opens another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_dropped_half_way_closes_its_connection() {
    const BIG: usize = 32 * MIB;
    let server = Server::start(|mut conn| async move {
        while let Some(head) = conn.head().await {
            conn.body(head.content_length()).await;
            if head.path != "/big" {
                if !conn.send(OK).await {
                    return;
                }
                continue;
            }
            let mut sent = conn
                .send(format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n").as_bytes())
                .await;
            let chunk = vec![b'x'; 64 * KIB];
            let mut left = BIG;
            // Bounded: BIG / 64 KiB writes at most.
            while sent && left > 0 {
                sent = conn.send(&chunk[..left.min(chunk.len())]).await;
                left -= left.min(chunk.len());
            }
            if !sent {
                conn.record_closed("write failed");
                return;
            }
        }
    })
    .await;
    let client = new_client();
    fetch_ok(&client, get(&server.url("/warm"))).await;
    let res = timeout(STEP_LIMIT, client.clone().oneshot(get(&server.url("/big"))))
        .await
        .expect("head in time")
        .unwrap();
    let mut body = res.into_body();
    let first = timeout(STEP_LIMIT, body.frame())
        .await
        .expect("a first frame in time")
        .expect("a frame")
        .expect("no error");
    assert!(first.is_data());
    drop(body);
    eventually(
        SLACK,
        "the server's writes failed (connection closed)",
        || server.closed().iter().any(|(c, _)| *c == 0),
    )
    .await;
    let next = fetch_ok(&client, get(&server.url("/next"))).await;
    assert!(!next.reused && !next.retried, "{next:?}");
    assert_eq!(server.conns(), vec![0, 0, 1]);
}

// ---------------------------------------------------------------------------
// 10. No idle connections kept; many origins.

/// `max_idle_per_origin(0)`: every request opens a connection, and the
/// previous ones are closed (the server reads EOF), not left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_idle_zero_opens_a_connection_per_request_and_closes_the_others() {
    let server = answering(OK, After::KeepAlive).await;
    let client = client::builder()
        .max_idle_per_origin(0)
        .build::<Full<Bytes>>();
    for i in 0..4 {
        let got = fetch_ok(&client, get(&server.url(&format!("/{i}")))).await;
        assert!(!got.reused, "{i}: {got:?}");
    }
    assert_eq!(server.conns(), vec![0, 1, 2, 3]);
    eventually(SLACK, "connections 0..3 closed by the client", || {
        let closed = server.closed();
        (0..3).all(|c| closed.iter().any(|(i, _)| *i == c))
    })
    .await;
}

/// How many origins the many-origins test uses (above the engine's 256).
const ORIGINS: usize = 300;

/// 300 origins (ports), each answered once: with keep-alive servers every
/// request succeeds and each origin keeps one connection until the client
/// is dropped, when they all close; with `Connection: close` servers every
/// connection is closed and the client ends with none open. No panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_origins() {
    for close in [false, true] {
        let mut servers = Vec::with_capacity(ORIGINS);
        for _ in 0..ORIGINS {
            servers.push(if close {
                answering(
                    b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                    After::Close,
                )
                .await
            } else {
                answering(OK, After::KeepAlive).await
            });
        }
        let client = new_client();
        for round in 0..2 {
            for server in &servers {
                fetch_ok(&client, get(&server.url(&format!("/{round}")))).await;
            }
        }
        let stats = client.connection_stats();
        if close {
            assert_eq!(stats.opened(), 2 * ORIGINS as u64);
            eventually(SLACK, "no connection left open", || stats.open_now() == 0).await;
        } else {
            assert_eq!(stats.opened(), ORIGINS as u64, "one connection per origin");
            assert_eq!(stats.open_now(), ORIGINS as u64);
            drop(client);
            eventually(SLACK, "every connection closed with the client", || {
                servers.iter().all(|s| !s.closed().is_empty())
            })
            .await;
        }
        for server in &servers {
            assert_eq!(server.heads().len(), 2);
        }
    }
}

// ---------------------------------------------------------------------------
// 11. Request URIs.

/// `https://` to a plain server, `ws://`, `ftp://`, an upper-case scheme, a
/// URI with userinfo, and `CONNECT`: a typed error or the documented
/// behaviour, never a panic or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_request_uris() {
    // A plain server that answers garbage (a TLS ClientHello) with a 400
    // and closes, as HTTP servers do.
    let server = Server::start(|mut conn| async move {
        let _ = conn.read_more(SERVER_IO_LIMIT).await;
        if conn.buf.first() == Some(&0x16) {
            conn.record_closed("tls hello");
            let _ = conn
                .send(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        }
        // Bounded: each turn reads a head (or ends).
        while let Some(head) = conn.head().await {
            conn.body(head.content_length()).await;
            let answer: &[u8] = if head.method == "CONNECT" {
                b"HTTP/1.1 200 Connection Established\r\n\r\n"
            } else {
                OK
            };
            if !conn.send(answer).await {
                return;
            }
            if head.method == "CONNECT" {
                // A tunnel: echoes what comes.
                let pending = std::mem::take(&mut conn.buf);
                let _ = conn.send(&pending).await;
                while conn.read_more(SERVER_IO_LIMIT).await.is_ok() {
                    let echo = std::mem::take(&mut conn.buf);
                    if !conn.send(&echo).await {
                        return;
                    }
                }
                return;
            }
        }
    })
    .await;
    let port = server.addr.port();
    let client = client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build::<Full<Bytes>>();

    let err = fetch(&client, get(&format!("https://127.0.0.1:{port}/")))
        .await
        .expect_err("TLS to a plain server");
    let chain = error_chain(err.as_ref()).to_string();
    assert!(find_cause::<NotRetried>(err.as_ref()).is_some(), "{chain}");
    assert!(server.heads().is_empty(), "{chain}");

    for scheme in ["ws", "ftp"] {
        let accepted = server.accepted();
        let err = fetch(&client, get(&format!("{scheme}://127.0.0.1:{port}/")))
            .await
            .expect_err(scheme);
        let chain = error_chain(err.as_ref()).to_string();
        assert!(
            chain.contains("unsupported uri scheme"),
            "{scheme}: {chain}"
        );
        assert!(find_cause::<NotRetried>(err.as_ref()).is_some(), "{chain}");
        assert_eq!(server.accepted(), accepted, "{scheme}: nothing connected");
    }

    // Upper-case scheme: the same origin as `http`.
    let got = fetch_ok(&client, get(&format!("HTTP://127.0.0.1:{port}/upper"))).await;
    assert_eq!(got.body.as_deref().unwrap(), b"ok");

    // Userinfo: never in the Host header nor in an error message.
    let got = fetch_ok(
        &client,
        get(&format!("http://user:secret@127.0.0.1:{port}/ui")),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let head = server
        .heads()
        .into_iter()
        .find(|h| h.path == "/ui")
        .unwrap();
    assert_eq!(
        head.header("host"),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    let err = fetch(&client, get("http://user:secret@127.0.0.1:1/refused"))
        .await
        .expect_err("nothing listens on port 1");
    let chain = error_chain(err.as_ref()).to_string();
    eprintln!("userinfo error: {chain}");
    assert!(!chain.contains("secret"), "the password leaks: {chain}");

    // CONNECT: authority-form on the wire, the tunnel is the caller's.
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://127.0.0.1:{port}"))
        .body(Full::default())
        .unwrap();
    let res = timeout(STEP_LIMIT, client.clone().oneshot(req))
        .await
        .expect("CONNECT answered in time")
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let upgraded = timeout(STEP_LIMIT, hyper::upgrade::on(res))
        .await
        .expect("upgrade in time")
        .expect("the tunnel");
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    io.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    timeout(STEP_LIMIT, io.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&echo, b"ping");
    let connect = server
        .heads()
        .into_iter()
        .find(|h| h.method == "CONNECT")
        .unwrap();
    assert_eq!(connect.path, format!("127.0.0.1:{port}"));
}

// ---------------------------------------------------------------------------
// 12. More connection-reuse edges.

/// A request carrying `Connection: close`, and bodiless responses (204,
/// HEAD) carrying `Connection: close` from a server that keeps its end
/// open: the connection is never used again (the server would answer a
/// second request on it), and it is closed by the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_on_the_request_or_on_a_bodiless_response_is_honoured() {
    let server = Server::scripted(|head| {
        let bytes: &[u8] = match (head.method.as_str(), head.path.as_str()) {
            ("HEAD", _) => b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 9\r\n\r\n",
            (_, "/204") => b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n",
            _ => OK,
        };
        (bytes.to_vec(), After::KeepAlive)
    })
    .await;
    let client = new_client();
    let closing = Request::get(server.url("/req-close"))
        .header("connection", "close")
        .body(Full::default())
        .unwrap();
    let head = Request::head(server.url("/h"))
        .body(Full::default())
        .unwrap();
    let steps = [
        closing,
        get(&server.url("/204")),
        head,
        get(&server.url("/last")),
    ];
    for (i, req) in steps.into_iter().enumerate() {
        let got = fetch_ok(&client, req).await;
        assert!(!got.reused && !got.retried, "step {i}: {got:?}");
    }
    assert_eq!(server.conns(), vec![0, 1, 2, 3]);
    eventually(SLACK, "connections 0..3 closed by the client", || {
        let closed = server.closed();
        (0..3).all(|c| closed.iter().any(|(i, _)| *i == c))
    })
    .await;
}

/// A chunked body with trailers, read frame by frame until
/// `is_end_stream()` (never polled for its `None`), and then dropped: its
/// connection still carries the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_read_to_is_end_stream_gives_its_connection_back() {
    let server = Server::scripted(|head| {
        let bytes: &[u8] = match head.path.as_str() {
            "/trailers" => {
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
                  5\r\nhello\r\n0\r\nx-sum: 5\r\n\r\n"
            }
            "/cl" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            _ => OK,
        };
        (bytes.to_vec(), After::KeepAlive)
    })
    .await;
    let client = new_client();
    for path in ["/trailers", "/cl", "/cl", "/trailers"] {
        let res = timeout(STEP_LIMIT, client.clone().oneshot(get(&server.url(path))))
            .await
            .expect("head in time")
            .unwrap();
        let mut body = res.into_body();
        let mut frames = 0;
        // Bounded: a few frames at most.
        while !http_body::Body::is_end_stream(&body) && frames < 10 {
            let frame = timeout(STEP_LIMIT, body.frame())
                .await
                .expect("frame in time");
            frames += 1;
            if frame.is_none() {
                break;
            }
            frame.unwrap().unwrap();
        }
        drop(body);
    }
    let last = fetch_ok(&client, get(&server.url("/last"))).await;
    assert!(last.reused, "{last:?}");
    assert_eq!(
        server.conns(),
        vec![0, 0, 0, 0, 0],
        "one connection throughout"
    );
}

/// `Keep-Alive: timeout=1`: reused below about 950 ms; a request after a
/// full second of idle gets a new connection (the announced one expired),
/// without an error or a retry, while the server closes its end at 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_timeout_expires_the_connection() {
    let server = Server::start(|mut conn| async move {
        // Bounded: each turn reads a head (or ends at the idle timeout).
        loop {
            let Ok(Some(head)) = timeout(Duration::from_secs(1), conn.head()).await else {
                let _ = conn.io.shutdown().await;
                conn.wait_closed(SERVER_IO_LIMIT).await;
                return;
            };
            conn.body(head.content_length()).await;
            if !conn
                .send(b"HTTP/1.1 200 OK\r\nkeep-alive: timeout=1\r\ncontent-length: 2\r\n\r\nok")
                .await
            {
                return;
            }
        }
    })
    .await;
    let client = new_client();
    fetch_ok(&client, get(&server.url("/1"))).await;
    let second = fetch_ok(&client, post(&server.url("/2"), 10)).await;
    assert!(second.reused);
    sleep(Duration::from_millis(1000)).await;
    let third = fetch_ok(&client, post(&server.url("/3"), 10)).await;
    assert!(!third.reused && !third.retried, "{third:?}");
    assert_eq!(server.conns(), vec![0, 0, 1]);
}

/// `max_idle_per_origin(0)` keeps no idle connection: after a single
/// request, its connection is closed without waiting for another request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_idle_zero_keeps_no_idle_connection() {
    let server = answering(OK, After::KeepAlive).await;
    let client = client::builder()
        .max_idle_per_origin(0)
        .build::<Full<Bytes>>();
    fetch_ok(&client, get(&server.url("/only"))).await;
    let stats = client.connection_stats();
    eventually(SLACK, "the only connection closed (max_idle 0)", || {
        !server.closed().is_empty()
    })
    .await;
    assert_eq!(stats.open_now(), 0);
}

/// A server that closes its first connections right after their first
/// response (no `Connection: close`, as a server with a request limit of
/// one does), then keeps connections alive: reuse comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_unannounced_closes_do_not_stop_reuse_for_the_origin() {
    const EARLY_CLOSES: usize = 2;
    const LATER: usize = 10;
    let server = Server::start(|mut conn| async move {
        while let Some(head) = conn.head().await {
            conn.body(head.content_length()).await;
            if !conn.send(OK).await {
                return;
            }
            if conn.index < EARLY_CLOSES {
                let _ = conn.io.shutdown().await;
                conn.wait_closed(SERVER_IO_LIMIT).await;
                return;
            }
        }
    })
    .await;
    let client = new_client();
    for i in 0..EARLY_CLOSES {
        fetch_ok(&client, get(&server.url(&format!("/early{i}")))).await;
        eventually(SLACK, "the server closed", || {
            server.closed().iter().any(|(c, _)| *c == i)
        })
        .await;
        sleep(FIN_SETTLE).await;
    }
    for i in 0..LATER {
        fetch_ok(&client, get(&server.url(&format!("/later{i}")))).await;
        sleep(Duration::from_millis(50)).await;
    }
    let later: Vec<usize> = server
        .heads()
        .iter()
        .filter(|h| h.path.starts_with("/later"))
        .map(|h| h.conn)
        .collect();
    let distinct = later
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    eprintln!(
        "later requests' connections: {later:?}; expiry stats: {:?}",
        client.expiry_stats()
    );
    assert!(distinct <= 2, "reuse collapsed: {later:?}");
}

/// Malformed response heads (two different `Content-Length`s, a status
/// line without a code): a typed error, the request not sent again (bytes
/// of a response arrived), and the next request on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_fail_typed_and_are_not_resent() {
    let server = Server::scripted(|head| {
        let bytes: &[u8] = match head.path.as_str() {
            "/two-lengths" => {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"
            }
            "/no-code" => b"HTTP/1.1 abc\r\ncontent-length: 2\r\n\r\nok",
            _ => OK,
        };
        (bytes.to_vec(), After::KeepAlive)
    })
    .await;
    let client = new_client();
    fetch_ok(&client, get(&server.url("/warm"))).await;
    for (i, path) in ["/two-lengths", "/no-code"].into_iter().enumerate() {
        let err = match fetch(&client, get(&server.url(path))).await {
            Ok(got) => panic!("{path}: taken: {got:?}"),
            Err(e) => e,
        };
        let chain = error_chain(err.as_ref()).to_string();
        assert!(
            find_cause::<NotRetried>(err.as_ref()).is_some(),
            "{path}: {chain}"
        );
        assert_eq!(server.heads_for(path), 1, "{path}: not resent: {chain}");
        let next = fetch_ok(&client, get(&server.url(&format!("/next{i}")))).await;
        assert!(!next.reused, "{path}: {next:?}");
    }
    assert_eq!(server.conns(), vec![0, 0, 1, 1, 2]);
}
