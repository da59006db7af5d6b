//! A hostile review of the engine's `https://` origin pool (`TlsOrigin`:
//! the gate, the shared HTTP/2 slot, the HTTP/1 cache beside it): servers
//! that switch ALPN between connections, close every HTTP/1 connection
//! after one response, never finish TLS, stall, or refuse queued streams
//! with a GOAWAY; checkouts cancelled or timed out at the gate; many
//! origins. Server-side facts (TCP accepts, TLS handshakes, requests and
//! POST bodies received) decide as well as client results.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tower_conn_lifecycle::client::{self, Client};
use tower_conn_lifecycle::phase_timeout::PhaseOverride;
use tower_conn_lifecycle::retry::NotRetried;
use tower_conn_lifecycle::{error_chain, find_cause, BoxError};

use common::h2::{fetch, get, post, spawn_fetch, Seen};
use common::pki::Ca;

/// Any single step that must finish (an exchange, a batch).
const STEP: Duration = Duration::from_secs(20);
/// How long a server-side fact (an accept, a count) may take to show.
const SLACK: Duration = Duration::from_secs(5);

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    common::bounded(STEP, what, f).await
}

async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    common::eventually(SLACK, what, cond).await
}

// ---------------------------------------------------------------------------
// A TLS server on 127.0.0.1 whose connections speak what `Kind` says.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// ALPN `h2` only, hyper's HTTP/2 server.
    H2,
    /// ALPN `http/1.1` only, every response `Connection: close`.
    Http1Close,
    /// Even connections (0, 2, …) ALPN `h2`, odd ones `http/1.1`.
    Alternate,
    /// Accepts TCP, never answers the TLS handshake.
    NoTls,
    /// ALPN `h2`, then closes the connection once TLS is up.
    H2Dies,
    /// ALPN `h2`, hyper's HTTP/2 server shutting down gracefully at once
    /// (its `SETTINGS`, then `GOAWAY` with no stream processed).
    H2GoesAway,
}

enum Ctl {
    /// hyper's graceful shutdown: GOAWAY, the streams below it finish.
    Graceful,
}

struct Server {
    ca: Ca,
    port: u16,
    seen: Arc<Seen>,
    release: Arc<Semaphore>,
    ctl: Arc<Mutex<Vec<mpsc::UnboundedSender<Ctl>>>>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the server saw: `server.accepted()`, `server.requests()`, ….
impl std::ops::Deref for Server {
    type Target = Seen;

    fn deref(&self) -> &Seen {
        &self.seen
    }
}

impl Server {
    async fn start(kind: Kind, max_streams: Option<u32>) -> Self {
        let ca = Ca::new("probe tls origin ca");
        let leaf = ca.leaf(&["localhost"]);
        let h2 = tokio_rustls::TlsAcceptor::from(Arc::new(
            leaf.server_config(common::tls::provider(), &[b"h2"]),
        ));
        let h1 = tokio_rustls::TlsAcceptor::from(Arc::new(
            leaf.server_config(common::tls::provider(), &[b"http/1.1"]),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let release = Arc::new(Semaphore::new(0));
        let ctl = Arc::new(Mutex::new(Vec::new()));
        let (s, r, c) = (seen.clone(), release.clone(), ctl.clone());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let id = s.accepted.fetch_add(1, Ordering::SeqCst);
                let (tx, rx) = mpsc::unbounded_channel();
                c.lock().unwrap().push(tx);
                if kind == Kind::NoTls {
                    held.push(tcp);
                    continue;
                }
                let speaks_h2 = match kind {
                    Kind::H2 | Kind::H2Dies | Kind::H2GoesAway => true,
                    Kind::Alternate => id % 2 == 0,
                    _ => false,
                };
                let acceptor = if speaks_h2 { h2.clone() } else { h1.clone() };
                tokio::spawn(serve(
                    id,
                    tcp,
                    acceptor,
                    speaks_h2,
                    kind == Kind::Http1Close,
                    kind == Kind::H2Dies,
                    kind == Kind::H2GoesAway,
                    max_streams,
                    s.clone(),
                    r.clone(),
                    rx,
                ));
            }
        });
        Server {
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

    fn builder(&self) -> client::Builder {
        client::builder().tls_config(common::tls::client_config(&self.ca))
    }

    fn client(&self) -> Client<Full<Bytes>> {
        self.builder().build::<Full<Bytes>>()
    }

    fn send(&self, conn: usize, cmd: Ctl) {
        let _ = self.ctl.lock().unwrap()[conn].send(cmd);
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    id: usize,
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    speaks_h2: bool,
    close: bool,
    dies: bool,
    goes_away: bool,
    max_streams: Option<u32>,
    seen: Arc<Seen>,
    release: Arc<Semaphore>,
    mut rx: mpsc::UnboundedReceiver<Ctl>,
) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        seen.closed.fetch_add(1, Ordering::SeqCst);
        return;
    };
    seen.handshakes.fetch_add(1, Ordering::SeqCst);
    if dies {
        drop(tls);
        seen.closed.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let svc_seen = seen.clone();
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (seen, release) = (svc_seen.clone(), release.clone());
        async move { Ok::<_, std::convert::Infallible>(handle(id, req, seen, release, close).await) }
    });
    if speaks_h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        if let Some(n) = max_streams {
            builder.max_concurrent_streams(n);
        }
        let conn = builder.serve_connection(TokioIo::new(tls), svc);
        tokio::pin!(conn);
        if goes_away {
            conn.as_mut().graceful_shutdown();
        }
        let mut ctl_open = true;
        loop {
            tokio::select! {
                _ = conn.as_mut() => break,
                cmd = rx.recv(), if ctl_open => match cmd {
                    Some(Ctl::Graceful) => conn.as_mut().graceful_shutdown(),
                    None => ctl_open = false,
                },
            }
        }
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tls), svc)
            .await;
    }
    seen.closed.fetch_add(1, Ordering::SeqCst);
}

/// `/hold` waits for a permit of `release`; `/hold-first` never answers
/// on connection 0; anything else answers `ok` at once.
async fn handle(
    conn: usize,
    req: Request<hyper::body::Incoming>,
    seen: Arc<Seen>,
    release: Arc<Semaphore>,
    close: bool,
) -> Response<Full<Bytes>> {
    if seen.arrive(conn, req, &release).await.is_none() {
        return Response::new(Full::new(Bytes::new()));
    }
    let mut res = Response::new(Full::new(Bytes::from_static(b"ok")));
    if close {
        res.headers_mut()
            .insert(http::header::CONNECTION, "close".parse().unwrap());
    }
    res
}

async fn all_ok(what: &str, tasks: Vec<JoinHandle<Result<Bytes, BoxError>>>) {
    for (i, t) in tasks.into_iter().enumerate() {
        let body = bounded(what, t)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{what} #{i}: {}", error_chain(e.as_ref())));
        assert_eq!(&body[..], b"ok", "{what} #{i}");
    }
}

/// How long the slow proxy below waits before it connects a client.
const PROXY_DELAY: Duration = Duration::from_millis(400);

/// A TCP proxy to `port` that waits [`PROXY_DELAY`] before it connects
/// each client; counts the connections it accepted.
async fn slow_proxy(port: u16) -> (u16, Arc<AtomicUsize>, JoinHandle<()>) {
    common::slow_proxy(port, PROXY_DELAY).await
}

// ---------------------------------------------------------------------------

/// A server that switches ALPN between `h2` and `http/1.1` on every new
/// connection: bursts and single requests all succeed, nothing hangs, and
/// the connections made stay within the requests in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_switching_alpn_between_connections_serves_every_request() {
    let server = Server::start(Kind::Alternate, None).await;
    let client = server.client();
    let mut sent = 0;
    for round in 0..6 {
        let tasks: Vec<_> = (0..12)
            .map(|i| spawn_fetch(&client, get(&server.url(&format!("/r{round}/{i}")))))
            .collect();
        sent += tasks.len();
        all_ok("a request to a switching origin", tasks).await;
        // A single request between the bursts, on whatever is left.
        all_ok(
            "a single request",
            vec![spawn_fetch(&client, get(&server.url("/one")))],
        )
        .await;
        sent += 1;
    }
    assert_eq!(server.requests().len(), sent);
    let made = server.accepted();
    assert!(made <= sent, "{made} connections for {sent} requests");
    assert_eq!(server.handshakes(), made);
}

/// An HTTP/1-only origin that closes every connection after one response
/// (`Connection: close`), under concurrent load: every request succeeds,
/// each is received once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_on_every_response_under_load() {
    let server = Server::start(Kind::Http1Close, None).await;
    let client = server.client();
    let mut sent = 0;
    for round in 0..4 {
        let tasks: Vec<_> = (0..24)
            .map(|i| {
                if i % 3 == 0 {
                    spawn_fetch(&client, post(&server.url("/p"), format!("r{round}-{i}")))
                } else {
                    spawn_fetch(&client, get(&server.url(&format!("/r{round}/{i}"))))
                }
            })
            .collect();
        sent += tasks.len();
        all_ok("a request to a closing origin", tasks).await;
    }
    assert_eq!(server.requests().len(), sent);
    assert!(server.post_counts().values().all(|&n| n == 1));
    assert!(
        server.accepted() <= 2 * sent,
        "{} connections for {sent} requests",
        server.accepted()
    );
}

/// Twenty requests wait at the gate while its connection is being made;
/// all of them, the gated one included, are given up on (their tasks
/// aborted): the next request makes one connection and is answered; the
/// aborted ones reached nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_whose_every_checkout_is_cancelled_lets_the_next_request_connect() {
    let server = Server::start(Kind::H2, None).await;
    let (proxy, accepted, proxy_task) = slow_proxy(server.port).await;
    let client = server.client();
    let url = format!("https://localhost:{proxy}/c");
    let tasks: Vec<_> = (0..20).map(|_| spawn_fetch(&client, get(&url))).collect();
    eventually("the gated connection reached the proxy", || {
        accepted.load(Ordering::SeqCst) == 1
    })
    .await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        assert!(bounded("an aborted request", t).await.is_err());
    }
    let body = bounded("the next request", fetch(&client, get(&url)))
        .await
        .unwrap_or_else(|e| panic!("{}", error_chain(e.as_ref())));
    assert_eq!(&body[..], b"ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "one connection each");
    assert_eq!(server.requests().len(), 1);
    proxy_task.abort();
}

/// A gated request given up on by its own `total` limit while twenty
/// others wait (no limit): the gate passes on, one of them connects, all
/// twenty are answered on one new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_checkout_timed_out_by_total_hands_the_gate_to_the_waiters() {
    let server = Server::start(Kind::H2, None).await;
    let (proxy, accepted, proxy_task) = slow_proxy(server.port).await;
    let client = server.client();
    let url = format!("https://localhost:{proxy}/t");
    let mut first = get(&url);
    first
        .extensions_mut()
        .insert(PhaseOverride::new().total(Duration::from_millis(100)));
    let first = spawn_fetch(&client, first);
    eventually("the gated connection reached the proxy", || {
        accepted.load(Ordering::SeqCst) == 1
    })
    .await;
    let waiters: Vec<_> = (0..20).map(|_| spawn_fetch(&client, get(&url))).collect();
    let err = bounded("the gated request", first)
        .await
        .unwrap()
        .expect_err("its total limit");
    assert!(
        tower_conn_lifecycle::find_cause::<tower_conn_lifecycle::phase_timeout::Elapsed>(
            err.as_ref()
        )
        .is_some(),
        "{}",
        error_chain(err.as_ref())
    );
    all_ok("a waiter", waiters).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(server.requests().len(), 20);
    proxy_task.abort();
}

/// A server that accepts TCP and never answers the TLS handshake, under a
/// connect timeout: twenty requests at once share one timed-out attempt (a
/// few at most), a later wave tries again, and another origin of the same
/// client works all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_connect_timing_out_is_shared_and_later_requests_try_again() {
    let hole = Server::start(Kind::NoTls, None).await;
    let good = Server::start(Kind::H2, None).await;
    // One CA for both: the good server's.
    let client = good
        .builder()
        .connect_timeout(Duration::from_millis(300))
        .build::<Full<Bytes>>();
    let mut before = 0;
    for wave in 0..2 {
        let tasks: Vec<_> = (0..20)
            .map(|i| spawn_fetch(&client, get(&hole.url(&format!("/w{wave}/{i}")))))
            .collect();
        // Another origin meanwhile.
        all_ok(
            "a request to another origin",
            vec![spawn_fetch(&client, get(&good.url("/good")))],
        )
        .await;
        for t in tasks {
            let err = bounded("a request to a silent TLS server", t)
                .await
                .unwrap()
                .expect_err("the connect timeout");
            let chain = error_chain(err.as_ref()).to_string();
            assert!(
                chain.contains("timed out") || chain.contains("timeout"),
                "{chain}"
            );
        }
        let now = hole.accepted();
        assert!(
            (before + 1..=before + 3).contains(&now),
            "wave {wave}: {} attempts for 20 requests",
            now - before
        );
        before = now;
    }
    assert_eq!(hole.handshakes(), 0);
    assert_eq!(good.accepted(), 1);
}

/// `retire_stalled_http2`: a connection with a stream in flight that sends
/// nothing for the limit gets no new request; the next one opens a new
/// connection, and the one after reuses that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_connection_is_retired_and_replaced_once() {
    const LIMIT: Duration = Duration::from_millis(200);
    let server = Server::start(Kind::H2, None).await;
    let client = server
        .builder()
        .retire_stalled_http2(LIMIT)
        .build::<Full<Bytes>>();
    let stuck = spawn_fetch(&client, get(&server.url("/hold-first")));
    eventually("the stuck stream arrives", || server.holding() == 1).await;
    // Past the limit with the stream in flight and nothing read.
    tokio::time::sleep(LIMIT * 2).await;
    all_ok(
        "a request after the stall",
        vec![spawn_fetch(&client, get(&server.url("/after")))],
    )
    .await;
    assert_eq!(server.accepted(), 2, "a new connection for it");
    all_ok(
        "a second request after the stall",
        (0..5)
            .map(|i| spawn_fetch(&client, get(&server.url(&format!("/again{i}")))))
            .collect(),
    )
    .await;
    assert_eq!(server.accepted(), 2, "the new connection reused");
    assert!(server.requests().iter().skip(1).all(|(c, ..)| *c == 1));
    assert_eq!(client.connection_stats().stalled_http2_retired(), 1);
    stuck.abort();
}

/// A warm one-stream server (`max_concurrent_streams(1)`): one `/hold`
/// stream in flight, nine requests queued behind it (every third a POST,
/// with `posts`), then a graceful GOAWAY and the held stream released.
/// The queued requests' failures, as (method, error chain); each POST
/// arrived at most once.
async fn goaway_mid_queue(posts: bool) -> (Server, Vec<(Method, String)>) {
    let server = Server::start(Kind::H2, Some(1)).await;
    let client = server.client();
    all_ok(
        "the warm-up",
        vec![spawn_fetch(&client, get(&server.url("/warm")))],
    )
    .await;
    let held = spawn_fetch(&client, get(&server.url("/hold")));
    eventually("the held stream", || server.holding() == 1).await;
    let queued: Vec<_> = (0..9)
        .map(|i| {
            if posts && i % 3 == 0 {
                (
                    Method::POST,
                    spawn_fetch(&client, post(&server.url("/p"), format!("post-{i}"))),
                )
            } else {
                (
                    Method::GET,
                    spawn_fetch(&client, get(&server.url(&format!("/q{i}")))),
                )
            }
        })
        .collect();
    // Let the queued requests reach the connection (not an assertion).
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.send(0, Ctl::Graceful);
    server.release.add_permits(1);
    all_ok("the held stream", vec![held]).await;
    let mut failed = Vec::new();
    for (method, t) in queued {
        match bounded("a queued request", t).await.unwrap() {
            Ok(body) => assert_eq!(&body[..], b"ok"),
            Err(e) => {
                assert!(
                    find_cause::<NotRetried>(e.as_ref()).is_some(),
                    "untyped: {}",
                    error_chain(e.as_ref())
                );
                failed.push((method, error_chain(e.as_ref()).to_string()));
            }
        }
    }
    assert!(server.post_counts().values().all(|&n| n == 1));
    (server, failed)
}

/// Every GET queued behind a one-stream server's limit when its graceful
/// GOAWAY arrives is answered. The one hyper holds "pending open" (its
/// stream waits for the limit; nothing of it was sent) fails with hyper's
/// "dispatch task is gone" as the connection's task ends: a closed
/// connection for the retry layer (an idempotent request is retried) and
/// for its origin (retired). Those still in hyper's queue are cancelled
/// (retried); their retries go out together on the next connection before
/// its SETTINGS arrive and all but one are refused (`REFUSED_STREAM`),
/// which is retried beyond `max_retries` (up to `UNPROCESSED_RETRIES`).
/// Several rounds: the interleavings vary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goaway_fails_no_get_queued_behind_a_stream_limit() {
    for round in 0..4 {
        let (_server, failed) = goaway_mid_queue(false).await;
        assert!(failed.is_empty(), "round {round}: {failed:#?}");
    }
}

/// The same with POSTs among the queued requests: the GETs are all
/// answered; a POST fails (typed) only where nothing proves it was not
/// sent, the one hyper held pending open ("dispatch task is gone" is also
/// what a runtime dropping the connection's task after sending gives),
/// and arrives at most once (asserted in `goaway_mid_queue`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goaway_fails_only_a_post_pending_open_and_never_twice() {
    for round in 0..4 {
        let (_server, failed) = goaway_mid_queue(true).await;
        assert!(
            failed.iter().all(|(method, _)| method == Method::POST),
            "round {round}: {failed:#?}"
        );
        assert!(failed.len() <= 1, "round {round}: {failed:#?}");
    }
}

/// 300 `https://` origins (distinct ports), each asked twice: no panic,
/// one connection per origin, and the first origin still answers on its
/// connection afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_origins() {
    const ORIGINS: usize = 300;
    let ca = Ca::new("probe many origins ca");
    let leaf = ca.leaf(&["localhost"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        leaf.server_config(common::tls::provider(), &[b"h2", b"http/1.1"]),
    ));
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let mut ports = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..ORIGINS {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        ports.push(listener.local_addr().unwrap().port());
        let (acceptor, accepted, requests) = (acceptor.clone(), accepted.clone(), requests.clone());
        tasks.push(tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (acceptor, requests) = (acceptor.clone(), requests.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |_req| {
                        requests.fetch_add(1, Ordering::SeqCst);
                        async {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        }));
    }
    let client = client::builder()
        .tls_config(common::tls::client_config(&ca))
        .build::<Full<Bytes>>();
    for chunk in ports.chunks(25) {
        let batch: Vec<_> = chunk
            .iter()
            .flat_map(|p| {
                let url = format!("https://localhost:{p}/");
                [
                    spawn_fetch(&client, get(&url)),
                    spawn_fetch(&client, get(&url)),
                ]
            })
            .collect();
        all_ok("a request to one of many origins", batch).await;
    }
    all_ok(
        "the first origin again",
        vec![spawn_fetch(
            &client,
            get(&format!("https://localhost:{}/", ports[0])),
        )],
    )
    .await;
    assert_eq!(requests.load(Ordering::SeqCst), 2 * ORIGINS + 1);
    assert_eq!(accepted.load(Ordering::SeqCst), ORIGINS);
    for t in tasks {
        t.abort();
    }
}

/// `retire_stalled_http2` with a connection whose set-up (TCP and TLS)
/// takes longer than the limit: a cold burst waiting for it at the gate
/// shares it; nothing is sent on it yet, so nothing has stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_new_connection_is_not_retired_as_stalled_before_its_first_request() {
    const LIMIT: Duration = Duration::from_millis(150);
    let server = Server::start(Kind::H2, None).await;
    let (proxy, accepted, proxy_task) = slow_proxy(server.port).await;
    let client = server
        .builder()
        .retire_stalled_http2(LIMIT)
        .build::<Full<Bytes>>();
    let url = format!("https://localhost:{proxy}/b");
    let tasks: Vec<_> = (0..10).map(|_| spawn_fetch(&client, get(&url))).collect();
    let mut failed = Vec::new();
    for t in tasks {
        match bounded("a request of the burst", t).await.unwrap() {
            Ok(body) => assert_eq!(&body[..], b"ok"),
            Err(e) => failed.push(error_chain(e.as_ref()).to_string()),
        }
    }
    let retired = client.connection_stats().stalled_http2_retired();
    let made = accepted.load(Ordering::SeqCst);
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!((made, retired), (1, 0), "connections made, stalled retired");
    proxy_task.abort();
}

/// A cold burst against a one-stream server: the streams sent before the
/// server's SETTINGS arrive are refused and retried once on the same
/// connection (which now queues them): all answered, one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_against_a_one_stream_server() {
    let server = Server::start(Kind::H2, Some(1)).await;
    let client = server.client();
    let tasks: Vec<_> = (0..10)
        .map(|i| spawn_fetch(&client, get(&server.url(&format!("/c{i}")))))
        .collect();
    all_ok("a request of the cold burst", tasks).await;
    assert_eq!(server.accepted(), 1);
}

/// A server whose every new HTTP/2 connection dies as it is made (TLS and
/// ALPN `h2`, then closed): a burst of twenty requests fails, typed, within
/// a few connections for all of them (the checkouts waiting at the gate
/// count the rounds they saw too), and never hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_http2_connections_that_die_as_made_cost_a_burst_a_few_connections() {
    for kind in [Kind::H2Dies, Kind::H2GoesAway] {
        dying_connections(kind).await;
    }
}

async fn dying_connections(kind: Kind) {
    let server = Server::start(kind, None).await;
    let client = server.client();
    for wave in 0..2 {
        let before = server.accepted();
        let tasks: Vec<_> = (0..20)
            .map(|i| spawn_fetch(&client, get(&server.url(&format!("/w{wave}/{i}")))))
            .collect();
        let mut ok = 0;
        for t in tasks {
            match bounded("a request to a server killing its connections", t)
                .await
                .unwrap()
            {
                Ok(body) => {
                    assert_eq!(&body[..], b"ok");
                    ok += 1;
                }
                // Typed: the retry layer's verdict on a retry-safe GET.
                Err(err) => assert!(
                    find_cause::<NotRetried>(err.as_ref()).is_some(),
                    "{kind:?}: {}",
                    error_chain(err.as_ref())
                ),
            }
        }
        let made = server.accepted() - before;
        println!("{kind:?} wave {wave}: {made} connections for 20 requests, {ok} ok");
        assert!(
            (1..=12).contains(&made),
            "{kind:?} wave {wave}: {made} connections for 20 requests"
        );
        if kind == Kind::H2Dies {
            assert_eq!(ok, 0);
        }
    }
    if kind == Kind::H2Dies {
        assert!(server.requests().is_empty());
    }
}
