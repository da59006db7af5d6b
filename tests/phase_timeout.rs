//! PhaseTimeout and ConnectTimeout against real loopback servers from the
//! crate's `testing` kit, through hyper-util's client.
//!
//! These tests run on the real clock. Each timing assertion allows a named,
//! generous slack; nothing asserts on speed.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tower_conn_lifecycle::connect_timeout::ConnectTimeoutLayer;
use tower_conn_lifecycle::phase_timeout::{
    Elapsed, Phase, PhaseOverride, PhaseTimeoutLayer, ResponseBody,
};
use tower_conn_lifecycle::testing::{
    Blackhole, HyperServer, SilentServer, SlowBodyServer, StalledBodyServer, StopReadingServer,
    ThrottledReader,
};
use tower_conn_lifecycle::track::{
    ConnectionCapture, ConnectionState, ExchangeOutcome, TrackConnectionsLayer,
};
use tower_conn_lifecycle::RequestBody;
use tower_conn_lifecycle::{find_cause, BoxError};

use common::{eventually, small_buffers, tracked_client, tracked_client_with, LATE, POLL};

type TestClient =
    BoxCloneService<http::Request<Full<Bytes>>, http::Response<ResponseBody<Incoming>>, BoxError>;

/// The full stack: ConnectTimeout(Track(HttpConnector)) under PhaseTimeout.
/// `tracked = false` leaves the tracker out (progress from body frames).
fn client(connect: Duration, phases: PhaseTimeoutLayer, tracked: bool) -> TestClient {
    // Small kernel buffers, so flow control shows quickly.
    let http = small_buffers();
    let builder = Client::builder(TokioExecutor::new());
    let inner: tower::util::BoxCloneService<_, _, BoxError> = if tracked {
        let connector = ServiceBuilder::new()
            .layer(ConnectTimeoutLayer::new(connect))
            .layer(TrackConnectionsLayer::new())
            .service(http);
        BoxCloneService::new(
            builder
                .build::<_, RequestBody>(connector)
                .map_err(BoxError::from),
        )
    } else {
        let connector = ServiceBuilder::new()
            .layer(ConnectTimeoutLayer::new(connect))
            .service(http);
        BoxCloneService::new(
            builder
                .build::<_, RequestBody>(connector)
                .map_err(BoxError::from),
        )
    };
    BoxCloneService::new(ServiceBuilder::new().layer(phases).service(inner))
}

fn post(url: &str, bytes: usize) -> http::Request<Full<Bytes>> {
    http::Request::post(url)
        .body(Full::new(Bytes::from(vec![b'u'; bytes])))
        .unwrap()
}

fn get(url: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(url).body(Full::default()).unwrap()
}

const MB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_100mb_upload_succeeds_with_short_send_and_connect() {
    // 100 MB at 32 MiB/s: more than 3 s of upload, far beyond send = connect = 1 s.
    let server = ThrottledReader::start(32 * MB as u64).await.unwrap();
    let svc = client(
        Duration::from_secs(1),
        PhaseTimeoutLayer::new()
            .send(Duration::from_secs(1))
            .read(Duration::from_secs(1)),
        true,
    );
    let start = Instant::now();
    let res = svc.oneshot(post(&server.url(), 100 * MB)).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "104857600");
    assert_eq!(server.bytes_read(), 104_857_600);
    assert_eq!(server.requests(), 1);
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_single_frame_upload_without_tracker_succeeds() {
    // One 24 MiB `Bytes` frame read at 8 MiB/s: ~3 s with send = 500 ms.
    // Without the tracker progress comes from the 64 KiB pieces pulled.
    let server = ThrottledReader::start(8 * MB as u64).await.unwrap();
    let svc = client(
        Duration::from_secs(1),
        PhaseTimeoutLayer::new().send(Duration::from_millis(500)),
        false,
    );
    let res = svc.oneshot(post(&server.url(), 24 * MB)).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, (24 * MB).to_string());
    assert_eq!(server.bytes_read(), 24 * MB as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_reader_fails_in_the_send_phase() {
    let server = StopReadingServer::start(MB as u64).await.unwrap();
    let send = Duration::from_secs(1);
    let svc = client(
        Duration::from_secs(1),
        PhaseTimeoutLayer::new().send(send),
        true,
    );
    let total = 50 * MB;
    let mut req = post(&server.url(), total);
    let capture = ConnectionCapture::get_or_insert(&mut req);
    let err = svc.oneshot(req).await.unwrap_err();
    let failed_at = Instant::now();
    let e = find_cause::<Elapsed>(err.as_ref()).expect("an Elapsed");
    assert_eq!(e.phase(), Phase::Send, "{err}");
    assert!(e.bytes_sent() > 0 && e.bytes_sent() < total as u64, "{e:?}");
    // Tracked HTTP/1: the socket's count for this exchange, head included,
    // not the body frames hyper pulled into its write buffer.
    let state = capture.state().unwrap();
    assert_eq!(e.bytes_sent(), state.info().bytes_sent(), "{e:?}");
    assert_eq!(e.bytes_received(), 0, "{e:?}");
    let last_write = state.last_write().unwrap();
    let after = failed_at.saturating_duration_since(last_write);
    assert!(after >= send && after <= send + LATE, "{after:?}");
    assert!(err
        .to_string()
        .starts_with("send timed out after 1s: no upload progress"));
    // The server really stopped early.
    assert!(server.bytes_read() <= MB as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_clock_starts_after_the_upload() {
    // A ~2 s upload (4 MiB at 2 MiB/s), then 500 ms of server think time: a
    // read limit of 1 s counted from the request's start would fire; counted
    // from the end of the upload it does not.
    let server = ThrottledReader::builder(2 * MB as u64)
        .think_time(Duration::from_millis(500))
        .start()
        .await
        .unwrap();
    let svc = client(
        Duration::from_secs(1),
        PhaseTimeoutLayer::new()
            .send(Duration::from_secs(1))
            .read(Duration::from_secs(1)),
        true,
    );
    let start = Instant::now();
    let mut req = post(&server.url(), 4 * MB);
    let capture = ConnectionCapture::get_or_insert(&mut req);
    let res = svc.oneshot(req).await.unwrap();
    let head_at = Instant::now();
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        (4 * MB).to_string()
    );
    // The client really spent more than `read` uploading, and the head came
    // more than `read` after the request started: only a read clock started
    // at the end of the upload lets this succeed.
    let last_write = capture.state().unwrap().last_write().unwrap();
    assert!(
        last_write - start > Duration::from_secs(1),
        "{:?}",
        last_write - start
    );
    assert!(
        head_at - start > Duration::from_millis(1500),
        "{:?}",
        head_at - start
    );
    assert_eq!(server.responses(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_fails_in_the_read_phase() {
    let server = SilentServer::start().await.unwrap();
    let read = Duration::from_millis(500);
    for tracked in [true, false] {
        let svc = client(
            Duration::from_secs(1),
            PhaseTimeoutLayer::new()
                .send(Duration::from_secs(1))
                .read(read),
            tracked,
        );
        let start = Instant::now();
        let mut req = post(&server.url(), 1000);
        let capture = ConnectionCapture::get_or_insert(&mut req);
        let err = svc.oneshot(req).await.unwrap_err();
        let e = find_cause::<Elapsed>(err.as_ref()).expect("an Elapsed");
        assert_eq!(e.phase(), Phase::Read, "{err}");
        if tracked {
            // The socket's count: the 1000 body bytes and the head.
            let written = capture.state().unwrap().info().bytes_sent();
            assert!(written > 1000, "{written}");
            assert_eq!(e.bytes_sent(), written, "{e:?}");
        } else {
            assert_eq!(e.bytes_sent(), 1000);
        }
        assert_eq!(e.bytes_received(), 0, "{e:?}");
        let took = start.elapsed();
        assert!(
            took >= read && took <= read + LATE,
            "tracked={tracked}: {took:?}"
        );
    }
    // Both requests were read completely; neither was answered.
    assert_eq!(server.requests(), 2);
    assert!(server.bytes_read() >= 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_fails_from_the_body_stream() {
    let server = StalledBodyServer::builder()
        .content_length(1_000_000)
        .first_bytes(100)
        .start()
        .await
        .unwrap();
    let read = Duration::from_millis(500);
    for tracked in [true, false] {
        let svc = client(
            Duration::from_secs(1),
            PhaseTimeoutLayer::new().read(read),
            tracked,
        );
        let res = svc
            .oneshot(get(&server.url()))
            .await
            .expect("the head arrives");
        assert_eq!(res.status(), 200);
        let state = res.extensions().get::<ConnectionState>().cloned();
        assert_eq!(state.is_some(), tracked);
        let mut body = res.into_body();
        let mut got = 0;
        let err = loop {
            match body.frame().await {
                Some(Ok(frame)) => got += frame.data_ref().map_or(0, Bytes::len),
                Some(Err(e)) => break e,
                None => panic!("the body cannot end"),
            }
        };
        let e = find_cause::<Elapsed>(err.as_ref()).expect("an Elapsed");
        assert_eq!(e.phase(), Phase::Read);
        assert_eq!(got, 100);
        match state {
            // Tracked HTTP/1: the socket's count, the head and the 100 body
            // bytes.
            Some(state) => {
                let read = state.info().bytes_received();
                assert!(read > 100, "{read}");
                assert_eq!(e.bytes_received(), read, "{e:?}");
            }
            None => assert_eq!(e.bytes_received(), 100),
        }
    }
    assert_eq!(server.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_fires_through_a_slow_body() {
    // 40 chunks, one every 100 ms: never stalls for 1 s, but lasts 4 s.
    let server = SlowBodyServer::start(40, 10, Duration::from_millis(100))
        .await
        .unwrap();
    let total = Duration::from_secs(1);
    let svc = client(
        Duration::from_secs(1),
        PhaseTimeoutLayer::new()
            .read(Duration::from_secs(1))
            .total(total),
        true,
    );
    let start = Instant::now();
    let res = svc.oneshot(get(&server.url())).await.unwrap();
    let err = res.into_body().collect().await.unwrap_err();
    let took = start.elapsed();
    let e = find_cause::<Elapsed>(err.as_ref()).expect("an Elapsed");
    assert_eq!(e.phase(), Phase::Total, "{err}");
    assert!(e.bytes_received() > 0 && e.bytes_received() < 400, "{e:?}");
    assert!(took >= total && took <= total + LATE, "{took:?}");
    assert_eq!(server.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_fails_in_the_connect_phase() {
    let hole = Blackhole::start().await.unwrap();
    let connect = Duration::from_millis(300);
    // A bodiless GET with a `read` limit shorter than the connect: on
    // hyper-util's client the empty capture is the connect phase (the
    // request is held, not handed to a service that hides its connection),
    // so `read` has not started.
    for phases in [
        PhaseTimeoutLayer::new().send(Duration::from_secs(5)),
        PhaseTimeoutLayer::new().read(Duration::from_millis(100)),
    ] {
        let svc = client(connect, phases, true);
        let start = Instant::now();
        let err = svc.oneshot(get(&hole.url())).await.unwrap_err();
        let took = start.elapsed();
        let e =
            find_cause::<Elapsed>(err.as_ref()).unwrap_or_else(|| panic!("no Elapsed in {err:?}"));
        assert_eq!(e.phase(), Phase::Connect, "{phases:?}");
        assert!(took >= connect && took <= connect + LATE, "{took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_works_inside_reqwest_connector_layer() {
    let hole = Blackhole::start().await.unwrap();
    let connect = Duration::from_millis(300);
    let client =
        tower_conn_lifecycle::reqwest::ClientBuilderExt::shared_tls(reqwest::Client::builder())
            .unwrap()
            .no_proxy()
            .connector_layer(ConnectTimeoutLayer::new(connect))
            .build()
            .unwrap();
    let start = Instant::now();
    let err = client.get(hole.url()).send().await.unwrap_err();
    let took = start.elapsed();
    let e = find_cause::<Elapsed>(&err).unwrap_or_else(|| panic!("no Elapsed in {err:?}"));
    assert_eq!(e.phase(), Phase::Connect);
    assert!(took >= connect && took <= connect + LATE, "{took:?}");
}

// ------------------------------------------- issue 8: bodiless read, zero

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Asserts `err` is a read timeout that fired within `LATE` of its limit
/// after the request was handed over (`took` is measured from before the
/// call; a loopback connect takes milliseconds), and that `elapsed()` is the
/// real wait, not the limit.
fn assert_read_on_time(err: &BoxError, took: Duration, context: &str) {
    let e = find_cause::<Elapsed>(err.as_ref()).unwrap_or_else(|| panic!("{context}: {err}"));
    assert_eq!(e.phase(), Phase::Read, "{context}: {err}");
    let read = e.limit();
    assert!(
        took >= read && took <= read + LATE,
        "{context}: fired after {took:?} for read = {read:?}"
    );
    assert!(
        e.elapsed() >= read && e.elapsed() <= took && took - e.elapsed() <= LATE,
        "{context}: elapsed() = {:?}, real wait {took:?}",
        e.elapsed()
    );
}

/// The read limit of the issue-8 read tests: above four times `LATE`, so a
/// read clock started one check cadence (a quarter of the limit) after the
/// hand-over would miss the slack, not only one started a whole limit late.
const READ: Duration = Duration::from_millis(1200);

/// Issue 8, case 1: without the tracker, a request without a body started
/// its read clock only when a timer first looked at the connection capture,
/// so `read` fired up to one limit late (and `elapsed()` hid it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_read_fires_on_time_with_and_without_tracker() {
    let server = SilentServer::start().await.unwrap();
    let cases = [
        PhaseTimeoutLayer::new().read(READ),
        PhaseTimeoutLayer::new()
            .read(READ)
            .total(Duration::from_secs(5)),
        PhaseTimeoutLayer::new().send(ms(200)).read(READ),
    ];
    // All six at once, each on its own client and connection.
    let mut runs = tokio::task::JoinSet::new();
    for tracked in [false, true] {
        for (i, phases) in cases.into_iter().enumerate() {
            let svc = client(Duration::from_secs(1), phases, tracked);
            let req = get(&server.url());
            runs.spawn(async move {
                let start = Instant::now();
                let res = svc.oneshot(req).await;
                (
                    res.map(|_| ()),
                    start.elapsed(),
                    format!("tracked={tracked} case {i}"),
                )
            });
        }
    }
    while let Some(run) = runs.join_next().await {
        let (res, took, context) = run.unwrap();
        assert_read_on_time(&res.unwrap_err(), took, &context);
    }
    // Every request reached the server (so the clock ran in the read phase).
    assert_eq!(server.requests(), 6);
}

/// A raw HTTP/1.1 server that answers the first request on each connection
/// with `200 OK` and `ok`, then reads further requests and, depending on
/// `partial`, sends half a response head or nothing at all.
struct AnswerOnceServer {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicU64>,
    /// Requests that came on a connection after its first one.
    reused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AnswerOnceServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AnswerOnceServer {
    async fn start(answer_first: bool, partial: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let reused = Arc::new(AtomicU64::new(0));
        let (r, u) = (requests.clone(), reused.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let (r, u) = (r.clone(), u.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut answered = !answer_first;
                    let mut seen = 0;
                    loop {
                        // Requests here have no body: a head ends the request.
                        let Some(end) = find(&buf, b"\r\n\r\n") else {
                            let mut chunk = [0u8; 4096];
                            match tcp.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        buf.drain(..end + 4);
                        r.fetch_add(1, Ordering::SeqCst);
                        seen += 1;
                        if seen > 1 {
                            u.fetch_add(1, Ordering::SeqCst);
                        }
                        let reply: &[u8] = if !answered {
                            answered = true;
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        } else if partial {
                            PARTIAL_HEAD
                        } else {
                            b""
                        };
                        if tcp.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            reused,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// Half a response head, what [`AnswerOnceServer`] sends when `partial`.
const PARTIAL_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-len";

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Issue 8, case 1, against half a response head (500 ms limit: the error
/// used to come after 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_head_fails_in_the_read_phase_on_time() {
    let server = AnswerOnceServer::start(false, true).await;
    let run = |tracked| {
        let svc = client(
            Duration::from_secs(1),
            PhaseTimeoutLayer::new().read(READ),
            tracked,
        );
        let req = get(&server.url());
        async move {
            let start = Instant::now();
            let err = svc.oneshot(req).await.unwrap_err();
            assert_read_on_time(&err, start.elapsed(), &format!("tracked={tracked}"));
            let e = find_cause::<Elapsed>(err.as_ref()).expect("an Elapsed");
            // Tracked, the half head read from the socket counts; without
            // the tracker only body bytes would, and there are none.
            let partial = PARTIAL_HEAD.len() as u64;
            let expected = if tracked { partial } else { 0 };
            assert_eq!(e.bytes_received(), expected, "tracked={tracked}: {e:?}");
            // The head was sent: on the socket it counts, as body frames
            // (there are none) it does not.
            assert_eq!(e.bytes_sent() > 0, tracked, "{e:?}");
            let sent = e.bytes_sent();
            assert!(
                err.to_string()
                    .ends_with(&format!("({sent} bytes sent, {expected} bytes received)")),
                "{err}"
            );
        }
    };
    tokio::join!(run(false), run(true));
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}

/// Issue 8, case 1, on a pooled connection: the capture is filled at
/// checkout, in the first poll, and the read clock starts there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_read_on_a_reused_connection_fires_on_time() {
    let server = AnswerOnceServer::start(true, false).await;
    let run = |tracked| {
        let svc = client(
            Duration::from_secs(1),
            PhaseTimeoutLayer::new().read(READ),
            tracked,
        );
        let url = server.url();
        async move {
            let res = svc.clone().oneshot(get(&url)).await.unwrap();
            assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
            // Staging, not an assertion: hyper-util puts the connection back
            // in its pool from a spawned task; give it a moment to run.
            tokio::time::sleep(ms(50)).await;
            let start = Instant::now();
            let err = svc.oneshot(get(&url)).await.unwrap_err();
            assert_read_on_time(&err, start.elapsed(), &format!("tracked={tracked}"));
        }
    };
    tokio::join!(run(false), run(true));
    // Both second requests came on their client's first connection (a new
    // connection would have been answered, not timed out).
    assert_eq!(server.requests.load(Ordering::SeqCst), 4);
    assert_eq!(server.reused.load(Ordering::SeqCst), 2);
}

/// Issue 8, case 3, on a live server: a zero limit is already spent, so every
/// request fails at its first poll, in the first phase set to zero, without
/// being tried. (Judging zero by what is ready on the first poll would be a
/// race here: on this multi-threaded runtime a whole loopback exchange is
/// sometimes ready on it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_limits_fail_every_time_before_sending() {
    const TRIES: usize = 20;
    let server = HyperServer::start().await.unwrap();
    let z = Duration::ZERO;
    let s = Duration::from_secs(5);
    let cases = [
        (PhaseTimeoutLayer::new().send(z), Phase::Send),
        (PhaseTimeoutLayer::new().send(s).read(z), Phase::Read),
        (PhaseTimeoutLayer::new().total(z), Phase::Total),
        (
            PhaseTimeoutLayer::new().send(s).read(s).total(z),
            Phase::Total,
        ),
        (
            PhaseTimeoutLayer::new().send(z).read(z).total(z),
            Phase::Send,
        ),
    ];
    for tracked in [false, true] {
        for (phases, phase) in cases {
            for _ in 0..TRIES {
                // A fresh client each time: no pooled connection to reuse.
                let svc = client(Duration::from_secs(1), phases, tracked);
                let start = Instant::now();
                let err = svc.oneshot(get(&server.url())).await.unwrap_err();
                let e = find_cause::<Elapsed>(err.as_ref()).unwrap_or_else(|| panic!("{err}"));
                assert_eq!(e.phase(), phase, "tracked={tracked}: {err}");
                assert_eq!(e.limit(), Duration::ZERO);
                assert!(e.elapsed() <= start.elapsed());
            }
        }
    }
    // Nothing was tried: no connection, no request.
    assert_eq!((server.connections(), server.requests()), (0, 0));
}

/// Issue 8, case 3: `ConnectTimeout` with a zero limit fails every connect,
/// without trying it; it used to let them all through (and a loopback connect
/// is sometimes ready on its first poll, so "not ready at once" would be a
/// race).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_connect_fails_every_time() {
    const TRIES: usize = 40;
    let server = HyperServer::start().await.unwrap();
    for tracked in [false, true] {
        let svc = client(Duration::ZERO, PhaseTimeoutLayer::new(), tracked);
        for _ in 0..TRIES {
            let err = svc.clone().oneshot(get(&server.url())).await.unwrap_err();
            let e = find_cause::<Elapsed>(err.as_ref()).unwrap_or_else(|| panic!("{err:?}"));
            assert_eq!(e.phase(), Phase::Connect, "{err}");
            assert_eq!(e.limit(), Duration::ZERO);
        }
    }
    // `HttpConnector` is lazy: untried means no socket at all.
    assert_eq!((server.connections(), server.requests()), (0, 0));
}

/// When the inner service runs hyper-util's future on another task, the
/// capture is filled there and this layer only sees it at its next timer
/// check: the read clock may start late, but by at most a quarter of the
/// limit (the check cadence), not by a whole limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_read_behind_a_spawning_inner_is_at_most_a_cadence_late() {
    let server = SilentServer::start().await.unwrap();
    let read = ms(800);
    let hyper = Client::builder(TokioExecutor::new()).build::<_, RequestBody>(HttpConnector::new());
    let spawning = tower::service_fn(move |req| {
        let fut = hyper.request(req);
        async move {
            let res = tokio::spawn(fut).await.map_err(BoxError::from)?;
            res.map_err(BoxError::from)
        }
    });
    let svc = ServiceBuilder::new()
        .layer(PhaseTimeoutLayer::new().read(read))
        .service(spawning);
    let start = Instant::now();
    let err = svc.oneshot(get(&server.url())).await.unwrap_err();
    let took = start.elapsed();
    let e = find_cause::<Elapsed>(err.as_ref()).unwrap_or_else(|| panic!("{err}"));
    assert_eq!(e.phase(), Phase::Read, "{err}");
    assert!(
        took >= read && took <= read + read / 4 + LATE,
        "fired after {took:?}"
    );
    assert_eq!(server.requests(), 1);
}

/// Over inner services that never reveal their connection (hyper-util's
/// capture stays empty), a request whose body is empty at the call has its
/// read clock start at the call: a bodiless GET to a silent server fails in
/// the read phase on time, and the server saw the request. Two ways to hide
/// it: a wrapper that rebuilds the request without its extensions (as
/// reqwest does) in front of hyper-util's client, and hyper's own HTTP/1
/// connection (what a composable pool runs), which keeps them until it
/// writes the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_read_over_services_that_hide_the_connection() {
    let server = SilentServer::start().await.unwrap();
    let read = ms(1000);
    let hyper = Client::builder(TokioExecutor::new()).build::<_, RequestBody>(HttpConnector::new());
    let rebuilding = tower::service_fn(move |req: http::Request<RequestBody>| {
        let (parts, body) = req.into_parts();
        let mut fresh = http::Request::new(body);
        *fresh.method_mut() = parts.method;
        *fresh.uri_mut() = parts.uri;
        *fresh.headers_mut() = parts.headers;
        let fut = hyper.request(fresh);
        async move { fut.await.map_err(BoxError::from) }
    });
    let addr = server.addr();
    let own_connection = tower::service_fn(move |req: http::Request<RequestBody>| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(BoxError::from)
    });
    let services: [(&str, TestClient); 2] = [
        (
            "rebuilding",
            BoxCloneService::new(
                ServiceBuilder::new()
                    .layer(PhaseTimeoutLayer::new().read(read))
                    .service(rebuilding),
            ),
        ),
        (
            "own connection",
            BoxCloneService::new(
                ServiceBuilder::new()
                    .layer(PhaseTimeoutLayer::new().read(read))
                    .service(own_connection),
            ),
        ),
    ];
    for (i, (name, svc)) in services.into_iter().enumerate() {
        let start = Instant::now();
        let err = svc.oneshot(get(&server.url())).await.unwrap_err();
        let took = start.elapsed();
        let e = find_cause::<Elapsed>(err.as_ref()).unwrap_or_else(|| panic!("{name}: {err}"));
        assert_eq!((e.phase(), e.limit()), (Phase::Read, read), "{name}: {err}");
        assert!(
            took >= read && took <= read + LATE,
            "{name}: fired after {took:?}"
        );
        assert_eq!(server.requests(), i as u64 + 1, "{name}");
    }
    assert_eq!(server.connections(), 2);
}

/// Kept behaviour: an HTTP/1 upload that times out, or whose caller drops
/// it, abandons its exchange, and the tracker closes the connection at once
/// instead of letting hyper hold it (and the body) until the server gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_http1_upload_closes_its_connection() {
    let server = StopReadingServer::start(MB as u64).await.unwrap();
    for give_up in ["timeout", "drop"] {
        let send = ms(300);
        let phases = match give_up {
            "timeout" => PhaseTimeoutLayer::new().send(send),
            _ => PhaseTimeoutLayer::new().read(Duration::from_secs(60)),
        };
        let svc = client(Duration::from_secs(1), phases, true);
        let mut req = post(&server.url(), 50 * MB);
        let capture = ConnectionCapture::get_or_insert(&mut req);
        let call = svc.oneshot(req);
        match give_up {
            "timeout" => {
                let err = call.await.unwrap_err();
                let e = find_cause::<Elapsed>(err.as_ref()).expect("an Elapsed");
                assert_eq!(e.phase(), Phase::Send);
            }
            _ => {
                // The caller gives up mid-upload: the future is dropped.
                assert!(tokio::time::timeout(ms(500), call).await.is_err());
            }
        }
        let state = capture.state().expect("tracked");
        assert!(state.is_poisoned(), "{give_up}");
        assert_eq!(state.info().outcome(), ExchangeOutcome::Abandoned);
        let closed = format!("{give_up}: the connection to close");
        eventually(LATE, &closed, || state.is_closed()).await;
    }
    assert_eq!(server.connections(), 2);
}

/// With `total` alone no clock watches the connection, yet the request takes
/// its capture (without one of the caller's): an upload stuck when the limit
/// fires is abandoned through it and its connection closed at once (hyper
/// would write on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_upload_under_total_alone_closes_its_connection() {
    let server = StopReadingServer::start(MB as u64).await.unwrap();
    let (inner, stats) =
        tracked_client_with::<RequestBody>(&Client::builder(TokioExecutor::new()), small_buffers());
    let svc = ServiceBuilder::new()
        .layer(PhaseTimeoutLayer::new().total(ms(300)))
        .service(inner);
    let err = svc.oneshot(post(&server.url(), 50 * MB)).await.unwrap_err();
    let e = find_cause::<Elapsed>(err.as_ref()).expect("an Elapsed");
    assert_eq!(e.phase(), Phase::Total);
    eventually(LATE, "the abandoned upload's connection to close", || {
        stats.open_now() == 0
    })
    .await;
    assert!(server.bytes_read() <= MB as u64);
}

/// A bodiless request with only a `total` limit, given up before its
/// response head, by the timeout or by its caller: its connection is closed
/// and never reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_request_given_up_under_total_alone_closes_its_connection() {
    let server = SilentServer::start().await.unwrap();
    let (inner, stats) = tracked_client::<RequestBody>();
    let total = ms(300);
    let svc = ServiceBuilder::new()
        .layer(PhaseTimeoutLayer::new().total(total))
        .service(inner);
    // The timeout.
    let err = svc.clone().oneshot(get(&server.url())).await.unwrap_err();
    let e = find_cause::<Elapsed>(err.as_ref()).expect("an Elapsed");
    assert_eq!(e.phase(), Phase::Total);
    eventually(LATE, "timeout: the connection to close", || {
        stats.open_now() == 0
    })
    .await;
    // The caller drops the future once the server has the request.
    let call = svc.clone().oneshot(get(&server.url()));
    let mut call = Box::pin(call);
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            tokio::select! {
                _ = &mut call => panic!("a silent server answered"),
                _ = tokio::time::sleep(POLL) => if server.requests() == 2 { break },
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "the request never reached the server");
    assert_eq!(stats.open_now(), 1);
    drop(call);
    eventually(LATE, "drop: the connection to close", || {
        stats.open_now() == 0
    })
    .await;
    assert_eq!((server.connections(), stats.opened()), (2, 2));
}

/// Hostile limits: `Duration::MAX` for send and read (in the layer or a
/// per-request override) never fire nor overflow, and leave `total` in
/// charge, on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enormous_limits_leave_total_in_charge() {
    let server = SilentServer::start().await.unwrap();
    let total = ms(400);
    let max = Duration::MAX;
    for tracked in [false, true] {
        for body in [0, 1000] {
            for by_override in [false, true] {
                let phases = if by_override {
                    PhaseTimeoutLayer::new()
                        .send(ms(1))
                        .read(ms(1))
                        .total(total)
                } else {
                    PhaseTimeoutLayer::new().send(max).read(max).total(total)
                };
                let svc = client(Duration::from_secs(1), phases, tracked);
                let mut req = post(&server.url(), body);
                if by_override {
                    req.extensions_mut()
                        .insert(PhaseOverride::new().send(max).read(max));
                }
                let start = Instant::now();
                let err = svc.oneshot(req).await.unwrap_err();
                let took = start.elapsed();
                let e = find_cause::<Elapsed>(err.as_ref()).unwrap_or_else(|| panic!("{err}"));
                let context = format!("tracked={tracked} body={body} override={by_override}");
                assert_eq!(e.phase(), Phase::Total, "{context}: {err}");
                assert!(took >= total && took <= total + LATE, "{context}: {took:?}");
            }
        }
    }
    assert_eq!(server.requests(), 8);
}

/// A server that sends a response head announcing a 5-byte body, then the
/// body `after` later. Returns its URL and the number of bodies it sent.
async fn late_body_server(after: Duration) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let sent = Arc::new(AtomicU64::new(0));
    let count = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut io, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while find(&buf, b"\r\n\r\n").is_none() {
                    match io.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
                if io.write_all(head).await.is_err() {
                    return;
                }
                tokio::time::sleep(after).await;
                if io.write_all(b"hello").await.is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                // Keep the connection until the client closes it.
                let _ = io.read(&mut chunk).await;
            });
        }
    });
    (url, sent)
}

/// The body stall limit counts while the body waits, not while the caller
/// is busy elsewhere: a caller that first polls the body two limits after
/// the head arrived, with nothing there yet, gets the body that comes half a
/// limit later (before this release it failed at that first poll), through
/// a hand-built stack (with and without the tracker) and the one-call client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_busy_before_reading_the_body_is_not_a_stall() {
    const READ: Duration = Duration::from_secs(1);
    // The caller's first body poll, and the body's arrival: the body waits
    // `BODY_AT - CALLER_BUSY` (0.4 s) of its 1 s stall limit.
    const CALLER_BUSY: Duration = Duration::from_secs(2);
    const BODY_AT: Duration = Duration::from_millis(2400);
    let (url, sent) = late_body_server(BODY_AT).await;
    async fn read_late<B>(res: http::Response<B>) -> Bytes
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        tokio::time::sleep(CALLER_BUSY).await;
        match res.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => panic!("the body waited less than its stall limit: {e}"),
        }
    }
    for tracked in [true, false] {
        let svc = client(READ, PhaseTimeoutLayer::new().read(READ), tracked);
        let res = svc.oneshot(get(&url)).await.expect("the head arrives");
        assert_eq!(read_late(res).await, "hello", "tracked: {tracked}");
    }
    let one_call = tower_conn_lifecycle::client::builder()
        .timeouts(PhaseTimeoutLayer::new().read(READ))
        .build::<Full<Bytes>>();
    let res = one_call.oneshot(get(&url)).await.expect("the head arrives");
    assert_eq!(read_late(res).await, "hello");
    // Server side: each of the three bodies was sent, late.
    assert_eq!(sent.load(Ordering::SeqCst), 3);
}
