//! A hostile review of the one-call client over HTTP/2 (TLS, ALPN `h2`,
//! the origin's one shared connection): many streams at once, GOAWAY, a
//! server's stream limit, an abrupt close, stream resets, cancellation,
//! drain, a stalled body under a read limit, and stalled-connection
//! retirement. Server-side facts (connections accepted and closed, each
//! request and each POST body received) decide as well as client results.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tower::ServiceExt;
use tower_conn_lifecycle::client::{self, Client};
use tower_conn_lifecycle::drain::{DrainCut, Draining};
use tower_conn_lifecycle::phase_timeout::{Elapsed, Phase, PhaseTimeoutLayer};
use tower_conn_lifecycle::retry::{NotRetried, Retried, Rule};
use tower_conn_lifecycle::{error_chain, find_cause, BoxError};

use common::h2::{burst, fetch, get, post, spawn_fetch, Seen};
use common::pki::Ca;

/// Any single step that must finish (an exchange, a batch, a drain).
const STEP: Duration = Duration::from_secs(10);
/// How long a server-side fact (a close, a count) may take to show.
const SLACK: Duration = Duration::from_secs(5);

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    common::bounded(STEP, what, f).await
}

async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    common::eventually(SLACK, what, cond).await
}

// ---------------------------------------------------------------------------
// A hyper HTTP/2 server over TLS (ALPN h2) with per-connection control.

enum Ctl {
    /// hyper's graceful shutdown: GOAWAY, the streams below it finish.
    Graceful,
    /// The connection dropped at once (socket closed with RST).
    Abort,
}

#[derive(Clone, Copy, Default)]
struct Options {
    max_concurrent_streams: Option<u32>,
    /// Close aborted sockets with a reset (SO_LINGER 0).
    rst_on_abort: bool,
}

/// Paths: `/hold` waits for a permit of `release`, then answers `ok`;
/// `/slow` answers after 20 ms; `/stall-body` sends its head and one
/// byte of body, then nothing; `/big` answers 1 MiB; anything else `ok`.
struct H2Server {
    ca: Ca,
    port: u16,
    seen: Arc<Seen>,
    release: Arc<Semaphore>,
    ctl: Arc<Mutex<Vec<mpsc::UnboundedSender<Ctl>>>>,
    task: JoinHandle<()>,
}

impl Drop for H2Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type ResBody = BoxBody<Bytes, std::convert::Infallible>;

/// What the server saw: `server.accepted()`, `server.requests()`, ….
impl std::ops::Deref for H2Server {
    type Target = Seen;

    fn deref(&self) -> &Seen {
        &self.seen
    }
}

impl H2Server {
    async fn start(options: Options) -> Self {
        let ca = Ca::new("probe h2 ca");
        let config = ca
            .leaf(&["localhost"])
            .server_config(common::tls::provider(), &[b"h2"]);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let release = Arc::new(Semaphore::new(0));
        let ctl = Arc::new(Mutex::new(Vec::new()));
        let (s, r, c) = (seen.clone(), release.clone(), ctl.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let id = s.accepted.fetch_add(1, Ordering::SeqCst);
                let (tx, mut rx) = mpsc::unbounded_channel();
                c.lock().unwrap().push(tx);
                let (acceptor, seen, release) = (acceptor.clone(), s.clone(), r.clone());
                tokio::spawn(async move {
                    if options.rst_on_abort {
                        // Every close of this server's sockets is a reset
                        // (a zero linger never blocks the drop).
                        #[allow(deprecated)]
                        let _ = tcp.set_linger(Some(Duration::ZERO));
                    }
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        seen.closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let svc_seen = seen.clone();
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (seen, release) = (svc_seen.clone(), release.clone());
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    handle(id, req, seen, release).await,
                                )
                            }
                        });
                    let mut builder =
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    if let Some(n) = options.max_concurrent_streams {
                        builder.max_concurrent_streams(n);
                    }
                    let conn = builder.serve_connection(TokioIo::new(tls), svc);
                    tokio::pin!(conn);
                    let mut ctl_open = true;
                    loop {
                        tokio::select! {
                            _ = conn.as_mut() => break,
                            cmd = rx.recv(), if ctl_open => match cmd {
                                Some(Ctl::Graceful) => conn.as_mut().graceful_shutdown(),
                                Some(Ctl::Abort) => break,
                                None => ctl_open = false,
                            },
                        }
                    }
                    seen.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        H2Server {
            ca,
            port,
            seen,
            release,
            ctl,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    fn client(&self) -> Client<Full<Bytes>> {
        client::builder()
            .tls_config(common::tls::client_config(&self.ca))
            .build::<Full<Bytes>>()
    }

    fn send(&self, conn: usize, cmd: Ctl) {
        let _ = self.ctl.lock().unwrap()[conn].send(cmd);
    }
}

async fn handle(
    conn: usize,
    req: Request<hyper::body::Incoming>,
    seen: Arc<Seen>,
    release: Arc<Semaphore>,
) -> Response<ResBody> {
    let Some(path) = seen.arrive(conn, req, &release).await else {
        return Response::new(Full::new(Bytes::new()).boxed());
    };
    match path.as_str() {
        "/slow" => tokio::time::sleep(Duration::from_millis(20)).await,
        "/stall-body" => {
            let first =
                futures_util::stream::iter([Ok(http_body::Frame::data(Bytes::from_static(b"a")))]);
            let rest = futures_util::stream::pending();
            use futures_util::StreamExt;
            return Response::new(BodyExt::boxed(StreamBody::new(first.chain(rest))));
        }
        "/big" => {
            return Response::new(Full::new(Bytes::from(vec![b'x'; 1 << 20])).boxed());
        }
        _ => {}
    }
    Response::new(Full::new(Bytes::from_static(b"ok")).boxed())
}

/// Asserts that `r` is the servers' `ok` body (its error's chain if not).
fn answered(r: Result<Bytes, BoxError>) {
    assert_eq!(
        &r.unwrap_or_else(|e| panic!("{}", error_chain(e.as_ref())))[..],
        b"ok"
    );
}

// ---------------------------------------------------------------------------

/// The client with its HTTP/2 connection made (one GET answered), so
/// that what follows does not race the first connection (see
/// `a_cold_burst_opens_one_http2_connection`).
async fn warm(server: &H2Server) -> Client<Full<Bytes>> {
    let client = server.client();
    let body = bounded("the warm-up GET", fetch(&client, get(&server.url("/warm"))))
        .await
        .unwrap();
    assert_eq!(&body[..], b"ok");
    assert_eq!(server.accepted(), 1);
    client
}

/// 50 GETs and 20 POSTs at once on a warm client: one connection, every
/// request once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_share_one_connection() {
    let server = H2Server::start(Options::default()).await;
    let client = warm(&server).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        tasks.push(spawn_fetch(&client, get(&server.url(&format!("/g{i}")))));
    }
    for i in 0..20 {
        tasks.push(spawn_fetch(
            &client,
            post(&server.url("/p"), format!("post-{i}")),
        ));
    }
    for t in tasks {
        let body = bounded("a stream", t).await.unwrap().unwrap();
        assert_eq!(&body[..], b"ok");
    }
    assert_eq!(server.accepted(), 1, "one HTTP/2 connection");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 71);
    let counts = server.post_counts();
    assert_eq!(counts.len(), 20);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    let mut paths: Vec<_> = reqs
        .iter()
        .filter(|r| r.1 == "GET")
        .map(|r| r.2.clone())
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 51, "each GET once");
    assert_eq!(
        reqs.iter().filter(|r| r.1 == "GET").count(),
        51,
        "each GET once"
    );
}

/// A burst of requests on a client that has no connection yet opens one
/// connection: one request makes it, the others wait for it and share it.
/// (With hyper-util's `pool::negotiate` over `pool::singleton`, which the
/// engine used before, every request fell back to the origin's HTTP/1
/// cache, which connected once per waiting checkout; each connection that
/// negotiated `h2` overwrote the one before it and was dropped: 20
/// connections for 20 requests.)
#[tokio::test(flavor = "current_thread")]
async fn a_cold_burst_opens_one_http2_connection() {
    let server = H2Server::start(Options::default()).await;
    let client = server.client();
    let tasks: Vec<_> = (0..20)
        .map(|i| spawn_fetch(&client, get(&server.url(&format!("/c{i}")))))
        .collect();
    for t in tasks {
        assert_eq!(&bounded("a stream", t).await.unwrap().unwrap()[..], b"ok");
    }
    assert_eq!(server.requests().len(), 20);
    assert_eq!(server.accepted(), 1, "one HTTP/2 connection for the burst");
}

/// The same cold burst on a multi-threaded runtime never panics, and the
/// origin works after it. (hyper-util's singleton, used before, panicked
/// here: `unreachable!("singleton participant polled after making was
/// canceled")` under its mutex, which poisoned it, so every later request
/// to the origin panicked too: dead for the client's life.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_never_panics() {
    let server = H2Server::start(Options::default()).await;
    for round in 0..6 {
        let client = server.client();
        let tasks: Vec<_> = (0..70)
            .map(|i| spawn_fetch(&client, get(&server.url(&format!("/r{round}-{i}")))))
            .collect();
        let mut panicked = 0;
        for t in tasks {
            if let Err(e) = bounded("a stream", t).await {
                assert!(e.is_panic());
                panicked += 1;
            }
        }
        assert_eq!(
            panicked, 0,
            "round {round}: {panicked} of 70 requests panicked"
        );
        // And the origin still works on this client.
        let after = bounded(
            "a GET after the burst",
            spawn_fetch(&client, get(&server.url("/after"))),
        )
        .await;
        assert!(
            after.is_ok(),
            "round {round}: the request after the burst panicked"
        );
    }
}

/// Streams held at the server, then hyper's graceful shutdown (GOAWAY):
/// the held streams finish, requests sent meanwhile succeed, no POST
/// arrives twice, and once the old connection has closed the next
/// requests open a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_lets_streams_in_flight_finish_and_later_requests_reconnect() {
    let server = H2Server::start(Options::default()).await;
    let client = warm(&server).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(spawn_fetch(&client, get(&server.url("/hold"))));
    }
    for i in 0..3 {
        held.push(spawn_fetch(
            &client,
            post(&server.url("/hold"), format!("held-{i}")),
        ));
    }
    eventually("8 held streams at the server", || server.holding() == 8).await;
    server.send(0, Ctl::Graceful);
    // (Requests racing the GOAWAY: `requests_racing_a_goaway_succeed`.)
    server.release.add_permits(8);
    for t in held {
        let r = bounded("a held stream", t).await.unwrap();
        answered(r);
    }
    eventually("the GOAWAY'd connection closed", || server.closed() >= 1).await;
    let accepted = server.accepted();
    for i in 0..3 {
        let r = bounded(
            "a GET after the GOAWAY",
            fetch(&client, get(&server.url(&format!("/after{i}")))),
        )
        .await;
        answered(r);
    }
    assert!(server.accepted() >= 2, "a new connection after the GOAWAY");
    assert_eq!(
        server.accepted(),
        accepted.max(2),
        "one new connection for the later requests"
    );
    let counts = server.post_counts();
    assert_eq!(counts.len(), 3);
    assert!(
        counts.values().all(|&n| n == 1),
        "a POST arrived twice: {counts:?}"
    );
    // Every request the server saw once (GETs with unique paths).
    let gets: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.1 == "GET" && r.2 != "/hold")
        .collect();
    assert_eq!(gets.len(), 1 + 3, "{gets:?}");
    assert_eq!(
        server.requests().iter().filter(|r| r.2 == "/hold").count(),
        8
    );
}

/// A server allowing one stream at a time: 10 GETs and 5 POSTs at once
/// queue on the one connection and all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_stream_server_queues_concurrent_requests() {
    let server = H2Server::start(Options {
        max_concurrent_streams: Some(1),
        ..Options::default()
    })
    .await;
    let client = warm(&server).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        tasks.push(spawn_fetch(&client, get(&server.url("/slow"))));
    }
    for i in 0..5 {
        tasks.push(spawn_fetch(
            &client,
            post(&server.url("/slow"), format!("q-{i}")),
        ));
    }
    for t in tasks {
        let r = bounded("a queued stream", t).await.unwrap();
        answered(r);
    }
    assert_eq!(server.accepted(), 1);
    assert_eq!(server.requests().len(), 16);
    assert!(server.post_counts().values().all(|&n| n == 1));
}

/// The server's socket reset with streams in flight: the POSTs fail typed
/// (not retried: not idempotent) and arrived once; the GETs either fail
/// typed or were retried (idempotent); the next requests succeed on a new
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abrupt_close_fails_streams_typed_and_the_next_requests_reconnect() {
    let server = H2Server::start(Options {
        rst_on_abort: true,
        ..Options::default()
    })
    .await;
    let client = warm(&server).await;
    // Three GETs, retried at once after the reset: they share one new
    // connection.
    let gets: Vec<_> = (0..3)
        .map(|_| spawn_fetch(&client, get(&server.url("/hold-first"))))
        .collect();
    let posts: Vec<_> = (0..2)
        .map(|i| {
            spawn_fetch(
                &client,
                post(&server.url("/hold-first"), format!("abort-{i}")),
            )
        })
        .collect();
    eventually("5 held streams", || server.holding() == 5).await;
    server.send(0, Ctl::Abort);
    for t in posts {
        let err = bounded("a POST on the reset connection", t)
            .await
            .unwrap()
            .expect_err("the POST's connection was reset");
        let not = find_cause::<NotRetried>(err.as_ref())
            .unwrap_or_else(|| panic!("untyped: {}", error_chain(err.as_ref())));
        assert_eq!(
            not.rule(),
            Rule::NotIdempotent,
            "{}",
            error_chain(err.as_ref())
        );
    }
    for t in gets {
        match bounded("a GET on the reset connection", t).await.unwrap() {
            Ok(body) => assert_eq!(&body[..], b"ok"),
            Err(err) => assert!(
                find_cause::<NotRetried>(err.as_ref()).is_some(),
                "untyped: {}",
                error_chain(err.as_ref())
            ),
        }
    }
    for i in 0..3 {
        let r = bounded(
            "a GET after the reset",
            fetch(&client, get(&server.url(&format!("/next{i}")))),
        )
        .await;
        answered(r);
    }
    let r = bounded(
        "a POST after the reset",
        fetch(&client, post(&server.url("/next"), "after".into())),
    )
    .await;
    answered(r);
    assert_eq!(server.accepted(), 2, "one new connection after the reset");
    let counts = server.post_counts();
    assert_eq!(counts.len(), 3);
    assert!(
        counts.values().all(|&n| n == 1),
        "a POST arrived twice: {counts:?}"
    );
}

// ---------------------------------------------------------------------------
// Stream resets, from an `h2` crate server (it resets with any reason).

/// What the resetting server saw: (method, path, body) per stream.
type Arrivals = Arc<Mutex<Vec<(String, String, Bytes)>>>;

/// `/refuse` is reset with `REFUSED_STREAM` (unread) the first time,
/// answered after; `/cancel` and `/internal` are read, then reset with
/// `CANCEL` and `INTERNAL_ERROR`; anything else is answered `ok`.
async fn reset_server(ca: &Ca) -> (u16, Arc<AtomicUsize>, Arrivals, JoinHandle<()>) {
    let config = ca
        .leaf(&["localhost"])
        .server_config(common::tls::provider(), &[b"h2"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let arrivals: Arrivals = Arc::default();
    let refused = Arc::new(AtomicUsize::new(0));
    let (acc, arr) = (accepted.clone(), arrivals.clone());
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            let (acceptor, arr, refused) = (acceptor.clone(), arr.clone(), refused.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let (arr, refused) = (arr.clone(), refused.clone());
                    tokio::spawn(async move {
                        let method = req.method().to_string();
                        let path = req.uri().path().to_string();
                        if path == "/always-refuse"
                            || (path == "/refuse" && refused.fetch_add(1, Ordering::SeqCst) == 0)
                        {
                            arr.lock()
                                .unwrap()
                                .push((method, "refused".into(), Bytes::new()));
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            return;
                        }
                        let mut body = req.into_body();
                        let mut buf = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            buf.extend_from_slice(&chunk);
                        }
                        arr.lock()
                            .unwrap()
                            .push((method, path.clone(), Bytes::from(buf)));
                        match path.as_str() {
                            "/cancel" => respond.send_reset(h2::Reason::CANCEL),
                            "/internal" => respond.send_reset(h2::Reason::INTERNAL_ERROR),
                            _ => {
                                if let Ok(mut send) =
                                    respond.send_response(Response::new(()), false)
                                {
                                    let _ = send.send_data(Bytes::from_static(b"ok"), true);
                                }
                            }
                        }
                    });
                }
            });
        }
    });
    (port, accepted, arrivals, task)
}

/// REFUSED_STREAM on a POST: retried once and answered (the server
/// processed it once). CANCEL / INTERNAL_ERROR on a POST after the server
/// read it: not retried, typed. The connection stays the one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_resets_retry_only_a_refused_stream() {
    let ca = Ca::new("probe reset ca");
    let (port, accepted, arrivals, task) = reset_server(&ca).await;
    let url = |p: &str| format!("https://localhost:{port}{p}");
    let client = client::builder()
        .tls_config(common::tls::client_config(&ca))
        .build::<Full<Bytes>>();
    let r = bounded("warm", fetch(&client, get(&url("/")))).await;
    assert_eq!(&r.unwrap()[..], b"ok");

    let res = bounded(
        "a refused POST",
        client.clone().oneshot(post(&url("/refuse"), "r".into())),
    )
    .await
    .unwrap_or_else(|e| panic!("{}", error_chain(e.as_ref())));
    assert!(res.extensions().get::<Retried>().is_some(), "retried");
    assert_eq!(
        &res.into_body().collect().await.unwrap().to_bytes()[..],
        b"ok"
    );

    for path in ["/cancel", "/internal"] {
        let err = bounded(
            "a reset POST",
            fetch(&client, post(&url(path), path.into())),
        )
        .await
        .expect_err("reset by the server");
        let not = find_cause::<NotRetried>(err.as_ref())
            .unwrap_or_else(|| panic!("untyped: {}", error_chain(err.as_ref())));
        assert!(
            matches!(not.rule(), Rule::NotConnectionFailure | Rule::NotIdempotent),
            "{:?}: {}",
            not.rule(),
            error_chain(err.as_ref())
        );
        let reason = find_cause::<h2::Error>(err.as_ref()).and_then(h2::Error::reason);
        assert!(
            reason.is_some(),
            "the reset's reason is in the chain: {}",
            error_chain(err.as_ref())
        );
    }
    // A GET reset with INTERNAL_ERROR after the server read it: not retried.
    let err = bounded("a reset GET", fetch(&client, get(&url("/internal"))))
        .await
        .expect_err("reset by the server");
    assert!(
        find_cause::<NotRetried>(err.as_ref()).is_some(),
        "{}",
        error_chain(err.as_ref())
    );
    let r = bounded("a GET after the resets", fetch(&client, get(&url("/")))).await;
    assert_eq!(&r.unwrap()[..], b"ok");

    let arrivals = arrivals.lock().unwrap().clone();
    let count = |p: &str| arrivals.iter().filter(|a| a.1 == p).count();
    assert_eq!(count("refused"), 1);
    assert_eq!(count("/refuse"), 1, "processed once after the refusal");
    assert_eq!(count("/cancel"), 1, "a CANCELed POST was not sent again");
    assert_eq!(count("/internal"), 2, "the POST and the GET, once each");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "resets leave the connection to the others"
    );
    task.abort();
}

/// A stream the server refuses every time (`REFUSED_STREAM`: unprocessed)
/// is retried beyond `max_retries`, up to `UNPROCESSED_RETRIES` more, then
/// fails typed (retries exhausted, though retry-safe); with
/// `max_retries(0)` it is never retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_retried_beyond_max_retries_but_bounded() {
    use tower_conn_lifecycle::retry::{RetryOnStaleConnectionLayer, UNPROCESSED_RETRIES};
    let ca = Ca::new("probe refuse ca");
    let (port, accepted, arrivals, task) = reset_server(&ca).await;
    let url = format!("https://localhost:{port}/always-refuse");
    let attempts = || {
        arrivals
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.1 == "refused")
            .count()
    };
    for (max_retries, expected) in [
        (1, 1 + 1 + UNPROCESSED_RETRIES),
        (2, 1 + 2 + UNPROCESSED_RETRIES),
        (0, 1),
    ] {
        let before = attempts();
        let client = client::builder()
            .tls_config(common::tls::client_config(&ca))
            .retry(RetryOnStaleConnectionLayer::new().max_retries(max_retries))
            .build::<Full<Bytes>>();
        let err = bounded(
            "an always-refused POST",
            fetch(&client, post(&url, "r".into())),
        )
        .await
        .expect_err("refused every time");
        let not = find_cause::<NotRetried>(err.as_ref())
            .unwrap_or_else(|| panic!("untyped: {}", error_chain(err.as_ref())));
        assert_eq!(
            not.rule(),
            Rule::RetriesExhausted,
            "{}",
            error_chain(err.as_ref())
        );
        assert_eq!(
            attempts() - before,
            expected,
            "max_retries {max_retries}: {}",
            error_chain(err.as_ref())
        );
    }
    assert!(
        arrivals.lock().unwrap().iter().all(|a| a.1 == "refused"),
        "never processed"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "one connection per client"
    );
    task.abort();
}

// ---------------------------------------------------------------------------
// Cancellation.

/// Ten 1 MiB bodies read one frame each and dropped, beside requests in
/// flight: the others are answered, the connection stays the one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_read_bodies_dropped_leave_the_connection_to_the_others() {
    let server = H2Server::start(Options::default()).await;
    let client = warm(&server).await;
    let held: Vec<_> = (0..3)
        .map(|_| spawn_fetch(&client, get(&server.url("/hold"))))
        .collect();
    eventually("3 held", || server.holding() == 3).await;
    for _ in 0..10 {
        let res = bounded(
            "a /big head",
            client.clone().oneshot(get(&server.url("/big"))),
        )
        .await
        .unwrap();
        let mut body = res.into_body();
        let frame = bounded("a /big frame", body.frame())
            .await
            .unwrap()
            .unwrap();
        assert!(frame.data_ref().is_some_and(|d| !d.is_empty()));
        drop(body);
    }
    server.release.add_permits(3);
    for t in held {
        assert_eq!(&bounded("a held GET", t).await.unwrap().unwrap()[..], b"ok");
    }
    for i in 0..5 {
        let r = bounded(
            "a GET after",
            fetch(&client, get(&server.url(&format!("/n{i}")))),
        )
        .await;
        answered(r);
    }
    assert_eq!(server.accepted(), 1);
    assert_eq!(server.closed(), 0);
}

/// POSTs given up on while the server holds them (their bodies fully
/// sent), beside GETs in flight on the same connection: the GETs are
/// answered, the connection stays the one, no POST arrives twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_given_up_on_leave_the_connection_to_the_others() {
    let server = H2Server::start(Options::default()).await;
    let client = warm(&server).await;
    let gets: Vec<_> = (0..3)
        .map(|_| spawn_fetch(&client, get(&server.url("/hold"))))
        .collect();
    let posts: Vec<_> = (0..3)
        .map(|i| spawn_fetch(&client, post(&server.url("/hold"), format!("gone-{i}"))))
        .collect();
    eventually("6 held", || server.holding() == 6).await;
    for p in posts {
        p.abort();
        assert!(bounded("an aborted POST", p)
            .await
            .unwrap_err()
            .is_cancelled());
    }
    server.release.add_permits(6);
    for t in gets {
        let r = bounded("a held GET", t).await.unwrap();
        answered(r);
    }
    let r = bounded(
        "a POST after",
        fetch(&client, post(&server.url("/"), "after".into())),
    )
    .await;
    answered(r);
    assert_eq!(server.accepted(), 1, "the connection was kept");
    assert_eq!(server.closed(), 0);
    assert!(server.post_counts().values().all(|&n| n == 1));
}

/// A streamed upload given up on mid-body (its stream never ends), beside
/// GETs in flight on the same connection: they are answered and the
/// connection stays the one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_upload_given_up_on_leaves_the_connection_to_the_others() {
    use futures_util::StreamExt;
    type Up = BoxBody<Bytes, BoxError>;
    let server = H2Server::start(Options::default()).await;
    let client = client::builder()
        .tls_config(common::tls::client_config(&server.ca))
        .build::<Up>();
    let empty = || Full::new(Bytes::new()).map_err(|e| match e {}).boxed();
    let get_up = |p: &str| Request::get(server.url(p)).body(empty()).unwrap();
    let res = bounded("warm", client.clone().oneshot(get_up("/")))
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
    let gets: Vec<_> = (0..3)
        .map(|_| tokio::spawn(client.clone().oneshot(get_up("/hold"))))
        .collect();
    eventually("3 held", || server.holding() == 3).await;
    let chunks =
        futures_util::stream::iter([Ok(http_body::Frame::data(Bytes::from_static(b"part")))])
            .chain(futures_util::stream::pending());
    let upload = Request::post(server.url("/upload"))
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .unwrap();
    let up = tokio::spawn(client.clone().oneshot(upload));
    // Nothing tells when the first chunk is out; the upload is given up on
    // either way, which is what is under test.
    tokio::time::sleep(Duration::from_millis(50)).await;
    up.abort();
    assert!(bounded("the aborted upload", up)
        .await
        .unwrap_err()
        .is_cancelled());
    server.release.add_permits(3);
    for t in gets {
        let res = bounded("a held GET", t).await.unwrap();
        let res = res.unwrap_or_else(|e| panic!("{}", error_chain(e.as_ref())));
        let body = bounded("its body", res.into_body().collect())
            .await
            .unwrap();
        assert_eq!(&body.to_bytes()[..], b"ok");
    }
    assert_eq!(server.accepted(), 1, "the connection was kept");
    assert_eq!(server.closed(), 0);
}

/// The connection is reset under ten GETs; each is retried (idempotent) at
/// once, and the retries share one new connection, with no panic (with
/// hyper-util's singleton the retries raced to reconnect: several
/// connections, and sometimes its panic, which poisoned the origin). Five
/// rounds on one client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_after_a_reset_never_panic() {
    let server = H2Server::start(Options {
        rst_on_abort: true,
        ..Options::default()
    })
    .await;
    let client = warm(&server).await;
    for round in 0..5 {
        let conn = server.accepted() - 1;
        let base = server.holding();
        let gets: Vec<_> = (0..10)
            .map(|_| spawn_fetch(&client, get(&server.url("/hold-first"))))
            .collect();
        if round == 0 {
            eventually("10 held streams", || server.holding() == base + 10).await;
            server.send(conn, Ctl::Abort);
        } else {
            // Only the first connection holds; later rounds are answered.
        }
        for t in gets {
            let joined = bounded("a GET", t).await;
            assert!(
                joined.is_ok(),
                "round {round}: a request panicked: {joined:?}"
            );
        }
        let after = bounded(
            "a GET after",
            spawn_fetch(&client, get(&server.url("/after"))),
        )
        .await;
        assert!(after.is_ok(), "round {round}: the origin is poisoned");
    }
    assert_eq!(server.accepted(), 2, "one new connection for the retries");
}

// ---------------------------------------------------------------------------
// Drain.

/// Three streams held, then a drain: new requests are refused with
/// `Draining`, the held streams finish when released, the report counts
/// them, and the server sees the connection close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_http2_streams_finish_and_closes_the_connection() {
    let server = H2Server::start(Options::default()).await;
    let client = warm(&server).await;
    let held: Vec<_> = (0..3)
        .map(|_| spawn_fetch(&client, get(&server.url("/hold"))))
        .collect();
    eventually("3 held", || server.holding() == 3).await;
    let drain = tokio::spawn(client.drain(STEP));
    let err = bounded(
        "a request after the drain",
        fetch(&client, get(&server.url("/late"))),
    )
    .await
    .expect_err("refused");
    assert!(
        find_cause::<Draining>(err.as_ref()).is_some(),
        "{}",
        error_chain(err.as_ref())
    );
    server.release.add_permits(3);
    for t in held {
        let r = bounded("a held GET", t).await.unwrap();
        answered(r);
    }
    let report = bounded("the drain", drain).await.unwrap();
    assert_eq!(report.in_flight_at_start(), 3, "{report}");
    assert_eq!(report.completed(), 3, "{report}");
    assert_eq!(report.cut(), 0, "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    eventually("the server sees the connection closed", || {
        server.closed() == 1
    })
    .await;
    assert!(server.requests().iter().all(|r| r.2 != "/late"));
    assert_eq!(server.accepted(), 1);
}

/// A zero deadline cuts the streams in flight at once (`DrainCut`), the
/// connection closes, a second drain reports nothing left, and requests
/// stay refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_deadline_drain_cuts_http2_streams_and_a_second_drain_finds_nothing() {
    let server = H2Server::start(Options::default()).await;
    let client = warm(&server).await;
    let held: Vec<_> = (0..2)
        .map(|_| spawn_fetch(&client, get(&server.url("/hold"))))
        .collect();
    let partial = bounded(
        "a /stall-body head",
        client.clone().oneshot(get(&server.url("/stall-body"))),
    )
    .await
    .unwrap();
    eventually("2 held", || server.holding() == 2).await;
    let report = bounded("the drain", client.drain(Duration::ZERO)).await;
    assert_eq!(report.in_flight_at_start(), 3, "{report}");
    assert_eq!(report.cut(), 3, "{report}");
    for t in held {
        let err = bounded("a cut GET", t).await.unwrap().expect_err("cut");
        assert!(
            find_cause::<DrainCut>(err.as_ref()).is_some(),
            "{}",
            error_chain(err.as_ref())
        );
    }
    let err = bounded("the cut body", partial.into_body().collect())
        .await
        .expect_err("cut");
    assert!(
        find_cause::<DrainCut>(err.as_ref()).is_some(),
        "{}",
        error_chain(err.as_ref())
    );
    eventually("the server sees the connection closed", || {
        server.closed() == 1
    })
    .await;
    let again = bounded("a second drain", client.drain(STEP)).await;
    assert_eq!((again.in_flight_at_start(), again.cut()), (0, 0), "{again}");
    assert_eq!(again.connections_still_open(), Some(0), "{again}");
    let err = bounded("a request after", fetch(&client, get(&server.url("/late"))))
        .await
        .expect_err("refused");
    assert!(
        find_cause::<Draining>(err.as_ref()).is_some(),
        "{}",
        error_chain(err.as_ref())
    );
    assert_eq!(server.accepted(), 1);
}

/// An idle HTTP/2 connection closes at the drain (the server sees it
/// close); a client that never sent anything drains at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_an_idle_http2_connection_and_an_unused_client_drains_at_once() {
    let server = H2Server::start(Options::default()).await;
    let client = warm(&server).await;
    let report = bounded("the drain", client.drain(STEP)).await;
    assert_eq!(
        (report.in_flight_at_start(), report.cut()),
        (0, 0),
        "{report}"
    );
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    assert!(report.elapsed() < Duration::from_secs(1), "{report}");
    eventually("the server sees the connection closed", || {
        server.closed() == 1
    })
    .await;

    let unused = server.client();
    let report = bounded("the unused client's drain", unused.drain(STEP)).await;
    assert_eq!(
        (report.in_flight_at_start(), report.cut()),
        (0, 0),
        "{report}"
    );
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    assert!(report.elapsed() < Duration::from_secs(1), "{report}");
    assert_eq!(server.accepted(), 1);
}

// ---------------------------------------------------------------------------
// Timeouts.

/// A body that stalls after its head under a read limit fails by the read
/// phase; the streams beside it on the same connection, one held across
/// the timeout, are answered, and the connection stays the one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_body_times_out_by_read_and_spares_its_neighbours() {
    const READ: Duration = Duration::from_millis(300);
    let server = H2Server::start(Options::default()).await;
    let client = client::builder()
        .tls_config(common::tls::client_config(&server.ca))
        .timeouts(PhaseTimeoutLayer::new().read(READ))
        .build::<Full<Bytes>>();
    let r = bounded("warm", fetch(&client, get(&server.url("/")))).await;
    assert_eq!(&r.unwrap()[..], b"ok");
    let stalled = spawn_fetch(&client, get(&server.url("/stall-body")));
    // Streams beside it while it stalls (each well within the read limit).
    let mut during = 0;
    while !stalled.is_finished() && during < 100 {
        let r = bounded(
            "a GET beside the stall",
            fetch(&client, get(&server.url("/slow"))),
        )
        .await;
        answered(r);
        during += 1;
    }
    assert!(during >= 2, "{during} streams beside the stall");
    let err = bounded("the stalled body", stalled)
        .await
        .unwrap()
        .expect_err("the body stalls");
    let elapsed = find_cause::<Elapsed>(err.as_ref())
        .unwrap_or_else(|| panic!("untyped: {}", error_chain(err.as_ref())));
    assert_eq!(
        elapsed.phase(),
        Phase::Read,
        "{}",
        error_chain(err.as_ref())
    );
    for i in 0..3 {
        let r = bounded(
            "a GET after",
            fetch(&client, get(&server.url(&format!("/t{i}")))),
        )
        .await;
        answered(r);
    }
    assert_eq!(
        server.accepted(),
        1,
        "the timeout closed the shared connection"
    );
    assert_eq!(server.closed(), 0);
}

/// Requests sent while the server's GOAWAY arrives all succeed. Some are
/// refused by the GOAWAY or cancelled before any byte (retry-safe) and
/// retried at once: the going-away connection has left its origin's slot,
/// so the retry gets a new one. (Before, the retry went to the same
/// connection, was cancelled too, and the request failed: `not retried:
/// retry limit reached after 1 retry, though retry-safe`.) Several rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_racing_a_goaway_succeed() {
    for round in 0..8 {
        // A fresh server and client per round: the racing requests may
        // open a new connection.
        let server = H2Server::start(Options::default()).await;
        let client = warm(&server).await;
        let held = spawn_fetch(&client, get(&server.url("/hold")));
        eventually("1 held", || server.holding() == 1).await;
        server.send(0, Ctl::Graceful);
        let racing: Vec<_> = (0..10)
            .map(|i| spawn_fetch(&client, get(&server.url(&format!("/race{i}")))))
            .collect();
        for t in racing {
            let r = bounded("a request racing the GOAWAY", t).await.unwrap();
            assert_eq!(
                &r.unwrap_or_else(|e| panic!("round {round}: {}", error_chain(e.as_ref())))[..],
                b"ok"
            );
        }
        server.release.add_permits(1);
        assert_eq!(
            &bounded("the held GET", held).await.unwrap().unwrap()[..],
            b"ok"
        );
    }
}

/// A response body already received whole when a zero-deadline drain cuts
/// it, and that the report counts `cut`, fails with `DrainCut` as the docs
/// say (it read to the end before: `DrainBody` judged only errors and
/// pending polls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_counted_cut_fails_with_drain_cut() {
    let server = H2Server::start(Options::default()).await;
    let client = warm(&server).await;
    let big = bounded(
        "a /big head",
        client.clone().oneshot(get(&server.url("/big"))),
    )
    .await
    .unwrap();
    // Let the 1 MiB arrive (it fits hyper's default windows): a
    // precondition, not an assertion.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = bounded("the drain", client.drain(Duration::ZERO)).await;
    assert_eq!(report.cut(), 1, "{report}");
    let read = bounded("the cut body", big.into_body().collect()).await;
    assert!(
        read.is_err(),
        "the report counts it cut, the caller read it whole"
    );
}

// ---------------------------------------------------------------------------
// The origin's first connection, shared by the requests waiting for it.

/// A cold burst against a server whose certificate the client does not
/// trust: one handshake, whose failure every waiting request shares (typed,
/// not retried), rather than one handshake per request. The origin works
/// for a client that trusts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_shares_one_failed_handshake() {
    let server = H2Server::start(Options::default()).await;
    let stranger = Ca::new("a CA the server does not use");
    let client = client::builder()
        .tls_config(common::tls::client_config(&stranger))
        .build::<Full<Bytes>>();
    let tasks: Vec<_> = (0..20)
        .map(|i| spawn_fetch(&client, get(&server.url(&format!("/t{i}")))))
        .collect();
    for t in tasks {
        let err = bounded("a request to an untrusted server", t)
            .await
            .unwrap()
            .expect_err("the certificate is not trusted");
        let not = find_cause::<NotRetried>(err.as_ref())
            .unwrap_or_else(|| panic!("untyped: {}", error_chain(err.as_ref())));
        assert_eq!(
            not.rule(),
            Rule::ConnectFailed,
            "{}",
            error_chain(err.as_ref())
        );
        assert!(
            find_cause::<rustls::Error>(err.as_ref()).is_some(),
            "the handshake's error inside: {}",
            error_chain(err.as_ref())
        );
    }
    // The failed handshakes: one for the burst (a request whose wait began
    // after that attempt ended makes its own: a few at most).
    let failed = server.accepted();
    assert!(
        (1..=3).contains(&failed),
        "{failed} handshakes for 20 requests"
    );
    assert!(server.requests().is_empty());
    let body = bounded(
        "a trusting client",
        fetch(&server.client(), get(&server.url("/ok"))),
    )
    .await
    .unwrap();
    assert_eq!(&body[..], b"ok");
}

/// An HTTP/1-only TLS origin under concurrent bursts: the first connection
/// teaches the origin its protocol, then each request in flight has an
/// HTTP/1 connection of its own, reused by the next burst; nothing panics
/// (hyper-util's singleton, which every checkout of a TLS origin went
/// through before, could panic under concurrency here too).
///
/// The server holds every response until the whole burst waits for its
/// own, so each burst has all its requests in flight at once: the first
/// needs a connection per request, the later ones find them all idle.
/// (Without the hold a connection done early serves a later request of the
/// same burst while that request's own connection is still in its
/// handshake; that connection joins the pool when done, and a burst that
/// starts before it is done opens its own: more connections than requests
/// in flight under load, as hyper-util's and Go's pools do.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_bursts_reuse_their_connections() {
    const BURST: usize = 16;
    let ca = Ca::new("probe http/1 tls ca");
    let mut server = common::tls::TlsServer::start_in_bursts(
        &ca.leaf(&["localhost"]),
        common::tls::Mode::Http1Only,
        BURST,
    )
    .await;
    let url = format!("https://localhost:{}/", server.addr.port());
    let client = client::builder()
        .tls_config(common::tls::client_config(&ca))
        .build::<Full<Bytes>>();
    for round in 0..5 {
        let what = format!("round {round}: an HTTP/1 request over TLS");
        for body in burst(&client, &url, BURST, &what).await {
            assert_eq!(&body[..], b"HTTP/1.1");
        }
        // One connection per request in flight, made in the first burst.
        let opened = client.connection_stats().opened();
        assert_eq!(opened, BURST as u64, "after burst {round}");
    }
    assert_eq!(server.requests(), 5 * BURST);
    for _ in 0..BURST {
        let handshake = server.next_handshake().await.unwrap();
        assert_eq!(handshake.alpn.as_deref(), Some(&b"http/1.1"[..]));
    }
}

/// `max_idle_per_origin(0)` keeps no idle HTTP/1 connection, but the
/// shared HTTP/2 connection is not idle while it carries streams: a burst
/// and the requests after it share one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_idle_connections_still_share_one_http2_connection() {
    let server = H2Server::start(Options::default()).await;
    let client = client::builder()
        .tls_config(common::tls::client_config(&server.ca))
        .max_idle_per_origin(0)
        .build::<Full<Bytes>>();
    let tasks: Vec<_> = (0..10)
        .map(|i| spawn_fetch(&client, get(&server.url(&format!("/m{i}")))))
        .collect();
    for t in tasks {
        assert_eq!(&bounded("a stream", t).await.unwrap().unwrap()[..], b"ok");
    }
    for i in 0..3 {
        let body = bounded(
            "a later GET",
            fetch(&client, get(&server.url(&format!("/l{i}")))),
        )
        .await
        .unwrap();
        assert_eq!(&body[..], b"ok");
    }
    assert_eq!(server.requests().len(), 13);
    assert_eq!(server.accepted(), 1, "one HTTP/2 connection");
}

/// How long the slow proxy below waits before it connects a client to the
/// server.
const PROXY_DELAY: Duration = Duration::from_millis(300);

/// A TCP proxy to `port` that waits [`PROXY_DELAY`] before it connects
/// each client; counts the connections it accepted.
async fn slow_proxy(port: u16) -> (u16, Arc<AtomicUsize>, JoinHandle<()>) {
    common::slow_proxy(port, PROXY_DELAY).await
}

/// A request admitted before a drain whose HTTP/2 connection is still
/// being made when the drain begins: it is answered on that connection,
/// which is then closed (not kept for requests the drain refuses), and the
/// drain reports nothing left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_made_during_a_drain_closes_after_its_request() {
    let server = H2Server::start(Options::default()).await;
    let (proxy, accepted, proxy_task) = slow_proxy(server.port).await;
    let client = server.client();
    let url = format!("https://localhost:{proxy}/during");
    let request = spawn_fetch(&client, get(&url));
    eventually("the proxy accepted the connection", || {
        accepted.load(Ordering::SeqCst) == 1
    })
    .await;
    let drain = tokio::spawn(client.drain(STEP));
    let body = bounded("the admitted request", request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&body[..], b"ok");
    let report = bounded("the drain", drain).await.unwrap();
    assert_eq!(
        (report.in_flight_at_start(), report.cut()),
        (1, 0),
        "{report}"
    );
    eventually("the server sees the connection closed", || {
        server.closed() == 1
    })
    .await;
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    assert_eq!(server.accepted(), 1);
    proxy_task.abort();
}
