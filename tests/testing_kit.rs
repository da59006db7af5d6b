//! The testing kit's servers, proven with raw sockets (and hyper-util's
//! client where a real client matters) on the real clock, asserting on their
//! server-side counters.
//!
//! These tests must use the real clock: the servers' timers and the kernel's
//! TCP behaviour are what is under test. Every wait is bounded.

mod common;

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};
use tower_conn_lifecycle::testing::{
    Blackhole, Http2FaultServer, IdleClosingServer, ResetServer, SeedWorkload, SilentServer,
    SlowBodyServer, StalledBodyServer, StopReadingServer, ThrottledReader,
};

use common::{bounded, eventually, POLL, SLACK, STEP_LIMIT};

/// How long to watch for something that must *not* happen (an answer, a
/// completed write, a completed connect). Long enough that on loopback the
/// thing would certainly have happened if the server were not misbehaving.
const NEVER_WAIT: Duration = Duration::from_millis(500);

/// Reads a response head; returns it and the body bytes read past it.
async fn read_head(stream: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("content-length")
        .parse()
        .unwrap()
}

/// Reads one complete response with a `Content-Length`.
async fn read_response(stream: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let (head, mut body) = read_head(stream).await?;
    let len = content_length(&head);
    while body.len() < len {
        if stream.read_buf(&mut body).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    assert_eq!(body.len(), len, "more bytes than the content-length");
    Ok((head, body))
}

/// Writes `request` and reads one complete response (bounded:
/// [`STEP_LIMIT`]).
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> (String, Vec<u8>) {
    stream.write_all(request).await.unwrap();
    bounded(STEP_LIMIT, "a response", read_response(stream))
        .await
        .unwrap()
}

/// Waits until the peer closes `stream` (EOF or reset), at most `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0; 64];
    matches!(
        timeout(limit, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";

#[tokio::test]
async fn idle_closing_reuses_within_idle_timeout_then_closes() {
    const IDLE: Duration = Duration::from_millis(300);
    let server = IdleClosingServer::start(IDLE).await.unwrap();
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();

    for _ in 0..2 {
        let (head, body) = exchange(&mut stream, GET).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(!head.contains("Keep-Alive"), "{head}");
        assert_eq!(body, b"ok");
    }
    assert_eq!((server.connections(), server.requests()), (1, 2));
    assert_eq!(server.requests_by_method(&Method::GET), 2);
    assert_eq!(server.idle_closes(), 0);

    // Real clock: the server's idle timer is what is under test.
    let idle_start = Instant::now();
    assert!(closed_within(&mut stream, IDLE + SLACK).await, "not closed");
    assert!(
        idle_start.elapsed() >= IDLE / 2,
        "closed too early: {:?}",
        idle_start.elapsed()
    );
    assert_eq!(server.idle_closes(), 1);
    assert_eq!(
        (server.connections(), server.requests(), server.posts()),
        (1, 2, 0)
    );
}

/// A reload closes every idle connection at once; a late close and a new
/// idle timeout set while running apply to the next idle periods.
#[tokio::test]
async fn idle_closing_reload_late_close_and_new_timeout() {
    // A long timeout: only the reload can close these.
    let server = IdleClosingServer::builder(Duration::from_secs(30))
        .close_delay(Duration::from_millis(40))
        .start()
        .await
        .unwrap();
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        exchange(&mut stream, GET).await;
        streams.push(stream);
    }
    server.close_idle();
    for stream in &mut streams {
        assert!(
            closed_within(stream, SLACK).await,
            "not closed by the reload"
        );
    }
    assert_eq!((server.reload_closes(), server.idle_closes()), (2, 0));

    // Now 100 ms, closed up to 40 ms late: never before 100 ms.
    server.set_idle_timeout(Duration::from_millis(100));
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    exchange(&mut stream, GET).await;
    // Real clock: the server's idle timer is what is under test.
    let idle_start = Instant::now();
    assert!(closed_within(&mut stream, SLACK).await, "not closed");
    // (The server's idle clock started a moment before ours.)
    assert!(
        idle_start.elapsed() >= Duration::from_millis(90),
        "closed too early: {:?}",
        idle_start.elapsed()
    );
    assert_eq!((server.reload_closes(), server.idle_closes()), (2, 1));
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn idle_closing_options_posts_and_connection_close() {
    const THINK: Duration = Duration::from_millis(100);
    let server = IdleClosingServer::builder(Duration::from_secs(5))
        .keep_alive_header(Some(Duration::from_millis(1500)))
        .response_body("hello")
        .think_time(THINK)
        .start()
        .await
        .unwrap();
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();

    let requests: [&[u8]; 2] = [
        b"POST /a HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\n12345",
        b"POST /b HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ];
    for request in requests {
        let start = Instant::now();
        let (head, body) = exchange(&mut stream, request).await;
        // Real clock: think time delays the answer (a lower bound only).
        assert!(start.elapsed() >= THINK);
        assert!(head.contains("\r\nKeep-Alive: timeout=1\r\n"), "{head}");
        assert!(head.contains("\r\nConnection: keep-alive\r\n"), "{head}");
        assert_eq!(body, b"hello");
    }
    assert_eq!(server.posts(), 2);

    // HEAD gets the head only; the connection stays usable.
    stream
        .write_all(b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let (head, rest) = bounded(STEP_LIMIT, "head", read_head(&mut stream))
        .await
        .unwrap();
    assert_eq!((content_length(&head), rest.len()), (5, 0));

    // Expect: 100-continue is honoured before the body is sent.
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        )
        .await
        .unwrap();
    let (interim, rest) = bounded(STEP_LIMIT, "100 continue", read_head(&mut stream))
        .await
        .unwrap();
    assert_eq!(
        (interim.as_str(), rest.len()),
        ("HTTP/1.1 100 Continue\r\n\r\n", 0)
    );
    let (_, body) = exchange(&mut stream, b"hi").await;
    assert_eq!(body, b"hello");
    assert_eq!(server.posts(), 3);

    let (head, _) = exchange(
        &mut stream,
        b"DELETE / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
    assert!(closed_within(&mut stream, SLACK).await);
    assert_eq!(server.requests_by_method(&Method::DELETE), 1);
    assert_eq!(server.requests_by_method(&Method::HEAD), 1);
    assert_eq!((server.requests(), server.responses()), (5, 5));
    assert_eq!((server.connections(), server.idle_closes()), (1, 0));
}

#[tokio::test]
async fn idle_closing_serves_hyper_client_on_one_connection() {
    let server = IdleClosingServer::start(Duration::from_secs(5))
        .await
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for _ in 0..3 {
        let response = bounded(
            STEP_LIMIT,
            "request",
            client.get(server.url().parse().unwrap()),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");
    }
    assert_eq!((server.connections(), server.requests()), (1, 3));
}

/// `SeedWorkload` reads each request's connection story wherever the
/// response carries it: the one-call client's responses carry it in their
/// body, not in their extensions (the main demo, `stale_race`, printed
/// "0 % reused" for that client while it reused most connections).
#[tokio::test]
async fn seed_workload_sees_the_one_call_clients_connection_reuse() {
    const TASKS: usize = 2;
    const REQUESTS: usize = 5;
    let server = IdleClosingServer::start(Duration::from_secs(5))
        .await
        .unwrap();
    let report = SeedWorkload::new(Duration::from_millis(10))
        .tasks(TASKS)
        .requests(REQUESTS)
        .run(&server.url(), |_| {
            tower_conn_lifecycle::client::builder().build::<Full<Bytes>>()
        })
        .await;
    assert_eq!((report.requests(), report.errors()), (TASKS * REQUESTS, 0));
    assert!(report.samples().iter().all(|s| s.info().is_some()));
    // One connection per task (its own client), each reused by the rest.
    assert_eq!(server.connections(), TASKS as u64);
    assert_eq!(report.reused(), TASKS * (REQUESTS - 1));
}

/// `SeedWorkload` keeps each response body only when asked to.
#[tokio::test]
async fn seed_workload_keeps_bodies_only_when_asked() {
    let server = IdleClosingServer::start(Duration::from_secs(5))
        .await
        .unwrap();
    for keep in [false, true] {
        let report = SeedWorkload::new(Duration::from_millis(10))
            .tasks(2)
            .requests(2)
            .keep_bodies(keep)
            .run(&server.url(), |_| {
                Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>()
            })
            .await;
        assert_eq!((report.requests(), report.errors()), (4, 0));
        for sample in report.samples() {
            assert_eq!(sample.body(), keep.then(|| Bytes::from("ok")).as_ref());
        }
    }
    assert_eq!(server.requests(), 8);
}

#[tokio::test]
async fn malformed_request_ends_only_its_connection() {
    let server = IdleClosingServer::start(Duration::from_secs(5))
        .await
        .unwrap();
    let mut bad = TcpStream::connect(server.addr()).await.unwrap();
    bad.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    assert!(closed_within(&mut bad, SLACK).await);

    let mut good = TcpStream::connect(server.addr()).await.unwrap();
    exchange(&mut good, GET).await;
    assert_eq!((server.connections(), server.requests()), (2, 1));
}

/// Sends `body_len` bytes as one request and returns the response body and
/// how long the exchange took.
async fn upload(addr: std::net::SocketAddr, body_len: usize) -> (Vec<u8>, Duration) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    let head = format!("PUT / HTTP/1.1\r\nHost: test\r\nContent-Length: {body_len}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![7; body_len]).await.unwrap();
    let (_, body) = read_response(&mut stream).await.unwrap();
    (body, start.elapsed())
}

#[tokio::test]
async fn throttled_reader_reads_at_its_rate() {
    const RATE: u64 = 100_000;
    const LEN: usize = 200_000;
    let server = ThrottledReader::start(RATE).await.unwrap();
    // Real clock: the pace is what is under test. 200 KB at 100 KB/s takes
    // 2 s; only a lower bound is asserted.
    let (body, took) = bounded(STEP_LIMIT, "upload", upload(server.addr(), LEN)).await;
    assert_eq!(body, LEN.to_string().as_bytes());
    assert!(took >= Duration::from_millis(1500), "too fast: {took:?}");
    assert_eq!(server.bytes_read(), LEN as u64);
    assert_eq!((server.requests(), server.responses()), (1, 1));
}

#[tokio::test]
async fn throttled_reader_keeps_up_at_high_rate_and_thinks() {
    const THINK: Duration = Duration::from_millis(200);
    const LEN: usize = 10 * 1024 * 1024;
    let server = ThrottledReader::builder(1)
        .bytes_per_sec(50_000_000)
        .think_time(THINK)
        .start()
        .await
        .unwrap();
    // 10 MiB at 50 MB/s is about 0.2 s; `bounded` fails the test if the
    // throttle cannot keep up at all.
    let (body, took) = bounded(STEP_LIMIT, "upload", upload(server.addr(), LEN)).await;
    assert_eq!(body, LEN.to_string().as_bytes());
    assert!(took >= THINK, "think time skipped: {took:?}");
    assert_eq!(server.bytes_read(), LEN as u64);

    let err = ThrottledReader::start(0).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn stop_reading_server_stalls_the_upload() {
    const AFTER: u64 = 1000;
    const BODY: usize = 256 * 1024 * 1024;
    let server = StopReadingServer::start(AFTER).await.unwrap();
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let head = format!("POST / HTTP/1.1\r\nHost: test\r\nContent-Length: {BODY}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();

    let block = vec![1; 64 * 1024];
    let mut written = 0;
    // Real clock: on loopback 256 MiB would be written well within
    // NEVER_WAIT if the server kept reading.
    let upload = timeout(NEVER_WAIT, async {
        while written < BODY {
            written += stream.write(&block).await.unwrap();
        }
    })
    .await;
    assert!(upload.is_err(), "upload of {BODY} bytes did not stall");
    assert!(written < BODY);
    eventually(SLACK, "bytes_read == AFTER", || {
        server.bytes_read() == AFTER
    })
    .await;
    assert_eq!((server.connections(), server.requests()), (1, 1));

    // It really stopped: nothing more is read, even after a while.
    sleep(NEVER_WAIT / 5).await;
    assert_eq!(server.bytes_read(), AFTER);
}

#[tokio::test]
async fn silent_server_reads_everything_and_never_answers() {
    let server = SilentServer::start().await.unwrap();
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let mut request = b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 5000\r\n\r\n".to_vec();
    request.extend_from_slice(&[b'p'; 5000]);
    request.extend_from_slice(GET);
    stream.write_all(&request).await.unwrap();

    eventually(SLACK, "both requests read", || {
        server.requests() == 2 && server.bytes_read() == 5000
    })
    .await;
    // Real clock: watch for an answer that must not come.
    let mut buf = [0; 16];
    assert!(
        timeout(NEVER_WAIT, stream.read(&mut buf)).await.is_err(),
        "answered"
    );
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn stalled_body_server_sends_part_then_stalls() {
    let server = StalledBodyServer::builder()
        .content_length(1_000_000)
        .first_bytes(100)
        .start()
        .await
        .unwrap();
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream.write_all(GET).await.unwrap();
    let (head, mut body) = bounded(STEP_LIMIT, "head", read_head(&mut stream))
        .await
        .unwrap();
    assert_eq!(content_length(&head), 1_000_000);
    while body.len() < 100 {
        let n = bounded(STEP_LIMIT, "first bytes", stream.read_buf(&mut body))
            .await
            .unwrap();
        assert_ne!(n, 0, "closed");
    }
    assert_eq!(body.len(), 100);
    // Real clock: watch for body bytes that must not come.
    assert!(
        timeout(NEVER_WAIT, stream.read_buf(&mut body))
            .await
            .is_err(),
        "not stalled"
    );
    assert_eq!((server.connections(), server.requests()), (1, 1));
}

#[tokio::test]
async fn slow_body_server_trickles_the_body() {
    const INTERVAL: Duration = Duration::from_millis(100);
    let server = SlowBodyServer::start(4, 10, INTERVAL).await.unwrap();
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let start = Instant::now();
    stream.write_all(GET).await.unwrap();
    let (head, mut body) = bounded(STEP_LIMIT, "head", read_head(&mut stream))
        .await
        .unwrap();
    assert_eq!(content_length(&head), 40);
    // The head comes first; the body follows one chunk per interval.
    let mut reads = 0;
    while body.len() < 40 {
        assert_ne!(
            bounded(STEP_LIMIT, "chunk", stream.read_buf(&mut body))
                .await
                .unwrap(),
            0
        );
        reads += 1;
    }
    assert_eq!(body, [b'x'; 40]);
    assert!(reads >= 2, "body arrived in one piece");
    // Real clock: four intervals must have passed (lower bound only).
    assert!(start.elapsed() >= 4 * INTERVAL, "{:?}", start.elapsed());
    assert_eq!(server.bytes_written(), 40);
    assert_eq!((server.requests(), server.responses()), (1, 1));

    // The connection is kept alive for another request.
    exchange(&mut stream, GET).await;
    assert_eq!(
        (
            server.connections(),
            server.requests(),
            server.bytes_written()
        ),
        (1, 2, 80)
    );
}

#[tokio::test]
async fn blackhole_connect_never_completes() {
    /// Real clock: on loopback a connect completes in microseconds, so one
    /// still pending after this long is hanging.
    const CONNECT_WAIT: Duration = Duration::from_secs(1);
    let blackhole = Blackhole::start().await.unwrap();
    assert!(blackhole.addr().ip().is_loopback());
    assert!(blackhole.url().starts_with("http://127.0.0.1:"));
    let attempt = timeout(CONNECT_WAIT, TcpStream::connect(blackhole.addr())).await;
    assert!(attempt.is_err(), "connect completed: {attempt:?}");

    // hyper-util's client hangs the same way.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let attempt = timeout(NEVER_WAIT, client.get(blackhole.url().parse().unwrap())).await;
    assert!(attempt.is_err(), "request completed: {attempt:?}");
}

/// Drops the server while `stream` is connected to it, then checks that
/// `stream` is closed and that the port no longer accepts connections.
async fn assert_drop_stops(addr: std::net::SocketAddr, stream: &mut TcpStream, server: impl Sized) {
    drop(server);
    assert!(
        closed_within(stream, SLACK).await,
        "connection survived the drop"
    );
    assert_stops_accepting(addr).await;
}

/// Checks that the port of a dropped server no longer accepts connections
/// (the listener closes on the runtime shortly after the drop).
async fn assert_stops_accepting(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + SLACK;
    loop {
        match timeout(SLACK, TcpStream::connect(addr)).await {
            Ok(Err(_refused)) => break,
            Ok(Ok(mut late)) => {
                // Accepted into the backlog just before the listener closed:
                // it must be closed without being served.
                assert!(closed_within(&mut late, SLACK).await, "accepted after drop");
            }
            Err(_) => panic!("connect after drop hung"),
        }
        assert!(Instant::now() < deadline, "still accepting after drop");
        sleep(POLL).await;
    }
}

#[tokio::test]
async fn dropping_a_server_stops_it_and_its_connections() {
    let server = SilentServer::start().await.unwrap();
    let addr = server.addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(GET).await.unwrap();
    eventually(SLACK, "request read", || server.requests() == 1).await;
    assert_drop_stops(addr, &mut stream, server).await;

    // A connection parked forever (never reading) is stopped too.
    let server = StopReadingServer::start(10).await.unwrap();
    let addr = server.addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nContent-Length: 20\r\n\r\n01234567890123456789")
        .await
        .unwrap();
    eventually(SLACK, "body read", || server.bytes_read() == 10).await;
    assert_drop_stops(addr, &mut stream, server).await;
}

/// Connects to `addr`, writes `request` and reads until EOF or an error
/// (bounded: [`STEP_LIMIT`]); returns the bytes and how it ended.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> (Vec<u8>, io::Result<()>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match timeout(STEP_LIMIT, stream.read(&mut buf)).await {
            Err(_) => panic!("the server neither answered nor closed"),
            Ok(Ok(0)) => return (out, Ok(())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (out, Err(e)),
        }
    }
}

#[tokio::test]
async fn reset_server_resets_instead_of_closing() {
    let server = ResetServer::builder()
        .reset_after_bytes(10)
        .start()
        .await
        .unwrap();
    let (bytes, end) = raw_exchange(server.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(bytes.is_empty());
    assert_eq!(end.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(
        (server.attempts(), server.requests(), server.resets()),
        (1, 0, 1)
    );
}

#[tokio::test]
async fn reset_server_sends_part_of_the_head_then_resets() {
    let server = ResetServer::builder()
        .on_request(2)
        .partial_head(12)
        .start()
        .await
        .unwrap();
    // Two pipelined requests: the first is answered, the second cut.
    let pipelined = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n";
    let (bytes, end) = raw_exchange(server.addr(), pipelined).await;
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.ends_with("\r\n\r\n3HTTP/1.1 200"), "{text:?}");
    assert_eq!(end.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(
        (server.attempts(), server.responses(), server.bytes_read()),
        (2, 1, 3)
    );
}

#[tokio::test]
async fn http2_server_survives_garbage_and_stops_on_drop() {
    let server = Http2FaultServer::builder().start().await.unwrap();
    let (_, _) = raw_exchange(server.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // A frame longer than SETTINGS_MAX_FRAME_SIZE after a good preface.
    let big = [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        &[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1],
    ]
    .concat();
    let (_, _) = raw_exchange(server.addr(), &big).await;
    // Still serving (hyper-util's client, HTTP/2 with prior knowledge).
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let response = bounded(
        STEP_LIMIT,
        "request",
        client.get(server.url().parse().unwrap()),
    )
    .await
    .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "ok");
    assert_eq!((server.connections(), server.processed()), (3, 1));
    let addr = server.addr();
    drop(server);
    assert_stops_accepting(addr).await;
}
