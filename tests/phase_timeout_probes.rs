//! PhaseTimeout on multiplexed HTTP/2 connections (issue 8, case 2), against
//! real loopback hyper servers: over TLS with the test CA (ALPN `h2`, so the
//! tracker learns HTTP/2 from the handshake) and over h2c (prior knowledge,
//! so it learns it from the connection preface).
//!
//! On HTTP/2 the socket's progress belongs to the connection: a stalled
//! stream must fail on time while another stream keeps the socket busy, and
//! a healthy stream must not fail because another one holds the connection.
//!
//! These tests run on the real clock. Each timing assertion allows a named,
//! generous slack; nothing asserts on speed.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tower_conn_lifecycle::phase_timeout::{
    Elapsed, Phase, PhaseOverride, PhaseTimeoutLayer, ResponseBody,
};
use tower_conn_lifecycle::tls::{config_with_roots, SharedTlsConnectorLayer};
use tower_conn_lifecycle::track::{
    ConnectionCapture, ConnectionState, TrackConnectionsLayer, TrackStats,
};
use tower_conn_lifecycle::RequestBody;
use tower_conn_lifecycle::{find_cause, BoxError};

use common::pki::Ca;
use common::tls::provider;
use common::{bounded, LATE};

/// Upper bound for any single test; they take a few seconds.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// The send and read limits under test.
const LIMIT: Duration = Duration::from_millis(500);

const KIB: u32 = 1024;
const MIB: usize = 1 << 20;
/// The healthy upload.
const UPLOAD: usize = 8 * MIB;

// ------------------------------------------------------------------ server

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// TLS with ALPN `h2`.
    Tls,
    /// Cleartext HTTP/2 with prior knowledge.
    H2c,
}

/// Flow-control windows the server advertises, and how fast `/upload` reads.
#[derive(Clone, Copy, Debug)]
struct Windows {
    stream: u32,
    connection: u32,
    /// `/upload` reads at most this many bytes per second (`None`: at once).
    upload_rate: Option<u64>,
}

impl Windows {
    /// A 64 KiB stream window on a 64 MiB connection window (one stalled
    /// stream cannot hold the connection), `/upload` read at `upload_rate`.
    fn per_stream(upload_rate: Option<u64>) -> Self {
        Windows {
            stream: 64 * KIB,
            connection: 64 * MIB as u32,
            upload_rate,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    uploaded: AtomicU64,
}

/// A hyper HTTP/2 server on 127.0.0.1:0 with four routes:
/// * `/stall` never reads its request body and never answers;
/// * `/silent` reads the whole body and never answers;
/// * `/upload` reads the body (throttled to `upload_rate`) and answers with
///   the byte count;
/// * anything else answers `ok`.
struct H2Server {
    addr: SocketAddr,
    counters: Arc<Counters>,
    /// The CA that signed the TLS certificate (TLS only).
    roots: Option<RootCertStore>,
    task: JoinHandle<()>,
}

impl Drop for H2Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Server {
    async fn start(transport: Transport, windows: Windows) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(addr.ip().is_loopback());
        let (roots, acceptor) = match transport {
            Transport::H2c => (None, None),
            Transport::Tls => {
                let ca = Ca::new("test ca");
                let config = ca.leaf(&["127.0.0.1"]).server_config(provider(), &[b"h2"]);
                (Some(ca.roots()), Some(TlsAcceptor::from(Arc::new(config))))
            }
        };
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.connections.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => serve(tcp, windows, c).await,
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                serve(tls, windows, c).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            counters,
            roots,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.roots.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{path}", self.addr)
    }

    fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::SeqCst)
    }

    fn uploaded(&self) -> u64 {
        self.counters.uploaded.load(Ordering::SeqCst)
    }
}

async fn serve<T>(io: T, windows: Windows, counters: Arc<Counters>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let counters = counters.clone();
        async move {
            counters.requests.fetch_add(1, Ordering::SeqCst);
            let path = req.uri().path().to_owned();
            let mut body = req.into_body();
            match path.as_str() {
                "/stall" => {
                    // Hold the body unread until the client resets the stream
                    // (hyper then drops this future).
                    std::future::pending::<()>().await;
                    drop(body);
                }
                "/silent" => {
                    while let Some(Ok(_)) = body.frame().await {}
                    std::future::pending::<()>().await;
                }
                "/upload" => {
                    let start = Instant::now();
                    let mut n = 0u64;
                    while let Some(Ok(frame)) = body.frame().await {
                        let len = frame.data_ref().map_or(0, |d| d.remaining() as u64);
                        n += len;
                        counters.uploaded.fetch_add(len, Ordering::SeqCst);
                        if let Some(rate) = windows.upload_rate {
                            let due = Duration::from_secs_f64(n as f64 / rate as f64);
                            tokio::time::sleep_until(start + due).await;
                        }
                    }
                    return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                        n.to_string(),
                    ))));
                }
                _ => {}
            }
            Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(windows.stream)
        .initial_connection_window_size(windows.connection)
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

// ------------------------------------------------------------------ client

type TestClient = BoxCloneService<Request<Full<Bytes>>, Response<ResponseBody<Incoming>>, BoxError>;

/// PhaseTimeout over hyper-util's client over the tracker (over TLS with the
/// test CA, or h2c with prior knowledge).
fn client(server: &H2Server, phases: PhaseTimeoutLayer) -> (TestClient, TrackStats) {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let track = TrackConnectionsLayer::new();
    let stats = track.stats();
    let mut builder = Client::builder(TokioExecutor::new());
    let inner: BoxCloneService<_, _, BoxError> = match &server.roots {
        Some(roots) => {
            let tls = SharedTlsConnectorLayer::from_config(Arc::new(
                config_with_roots(roots.clone()).unwrap(),
            ));
            let connector = ServiceBuilder::new().layer(track).layer(tls).service(http);
            BoxCloneService::new(
                builder
                    .build::<_, RequestBody>(connector)
                    .map_err(BoxError::from),
            )
        }
        None => {
            let connector = ServiceBuilder::new().layer(track).service(http);
            BoxCloneService::new(
                builder
                    .http2_only(true)
                    .build::<_, RequestBody>(connector)
                    .map_err(BoxError::from),
            )
        }
    };
    let svc = BoxCloneService::new(ServiceBuilder::new().layer(phases).service(inner));
    (svc, stats)
}

fn post(url: &str, bytes: usize) -> Request<Full<Bytes>> {
    Request::post(url)
        .body(Full::new(Bytes::from(vec![b'u'; bytes])))
        .unwrap()
}

/// One request on the client's HTTP/2 connection; returns that connection.
async fn warm_up(svc: &TestClient, server: &H2Server) -> ConnectionState {
    let req = Request::get(server.url("/")).body(Full::default()).unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    let state = res
        .extensions()
        .get::<ConnectionState>()
        .expect("tracked")
        .clone();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    assert!(
        state.is_http2(),
        "the tracker knows the connection is HTTP/2"
    );
    state
}

/// Sends `req` and returns the result, when it came (from `start`), and the
/// connection it used.
async fn timed(
    svc: &TestClient,
    mut req: Request<Full<Bytes>>,
) -> (Result<String, BoxError>, Instant, Option<ConnectionState>) {
    let capture = ConnectionCapture::get_or_insert(&mut req);
    let result = match svc.clone().oneshot(req).await {
        Ok(res) => res
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned()),
        Err(e) => Err(e),
    };
    (result, Instant::now(), capture.state())
}

fn expect_timeout(result: &Result<String, BoxError>, phase: Phase) -> &Elapsed {
    let err = result.as_ref().expect_err("a timeout");
    let e = find_cause::<Elapsed>(err.as_ref()).unwrap_or_else(|| panic!("not a timeout: {err}"));
    assert_eq!(e.phase(), phase, "{err}");
    e
}

// -------------------------------------------------------------- scenarios

/// The case `$case` over TLS (ALPN `h2`) as the test `h2_tls_$case` and over
/// h2c as `h2c_$case`, each bounded by `TEST_LIMIT`.
macro_rules! over_tls_and_h2c {
    ($case:ident, $tls:ident, $h2c:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $tls() {
            bounded(TEST_LIMIT, stringify!($tls), $case(Transport::Tls)).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $h2c() {
            bounded(TEST_LIMIT, stringify!($h2c), $case(Transport::H2c)).await;
        }
    };
}

/// A stream whose handler never reads stalls after its stream window while a
/// second stream uploads for seconds: the stalled one fails `send` on time
/// (it used to count the other stream's socket writes as its own progress
/// and fail only after that upload ended), and the upload succeeds.
async fn stalled_stream_fails_on_time_beside_a_busy_one(transport: Transport) {
    // ~2 s for the healthy upload: the socket stays busy far beyond the
    // stalled stream's deadline.
    let server = H2Server::start(transport, Windows::per_stream(Some(4 * MIB as u64))).await;
    let (svc, stats) = client(&server, PhaseTimeoutLayer::new().send(LIMIT).read(LIMIT));
    let conn = warm_up(&svc, &server).await;

    let start = Instant::now();
    let stalled = timed(&svc, post(&server.url("/stall"), MIB));
    let healthy = timed(&svc, post(&server.url("/upload"), UPLOAD));
    let ((stalled, stalled_at, s_conn), (healthy, healthy_at, h_conn)) =
        tokio::join!(stalled, healthy);

    let e = expect_timeout(&stalled, Phase::Send);
    let took = stalled_at - start;
    assert!(
        took >= LIMIT && took <= LIMIT + LATE,
        "{transport:?}: the stalled stream failed after {took:?}"
    );
    assert!(e.bytes_sent() < MIB as u64, "{e:?}");
    assert_eq!(healthy.unwrap(), UPLOAD.to_string(), "{transport:?}");
    assert_eq!(server.uploaded(), UPLOAD as u64);
    // The socket really stayed busy past the stalled stream's deadline.
    assert!(
        healthy_at - start > LIMIT + LATE,
        "{:?}",
        healthy_at - start
    );
    // One connection carried all three streams.
    assert_eq!(
        s_conn.unwrap().info().connection_id(),
        conn.info().connection_id()
    );
    assert_eq!(
        h_conn.unwrap().info().connection_id(),
        conn.info().connection_id()
    );
    assert_eq!((stats.opened(), server.connections()), (1, 1));
    assert_eq!(server.requests(), 3);
    // One stream's timeout resets that stream alone: the connection stays
    // pooled, and the next request reuses it (it used to be poisoned).
    let again = warm_up(&svc, &server).await;
    assert_eq!(
        again.info().connection_id(),
        conn.info().connection_id(),
        "a new connection after one stream timed out"
    );
    assert_eq!((stats.opened(), server.connections()), (1, 1));
}

over_tls_and_h2c!(
    stalled_stream_fails_on_time_beside_a_busy_one,
    h2_tls_stalled_stream_fails_on_time_beside_a_busy_one,
    h2c_stalled_stream_fails_on_time_beside_a_busy_one
);

/// A stream whose handler never reads takes the whole connection window, so
/// a healthy upload that starts later is blocked until the stalled stream is
/// reset. The stalled stream must fail `send` on time (judged by its own
/// frames, not by the healthy stream's writes), which frees the window, and
/// the healthy upload must then succeed rather than time out.
async fn healthy_stream_survives_a_stream_holding_the_window(transport: Transport) {
    const WINDOW: u32 = 256 * KIB;
    /// The healthy stream starts this long after the stalled one, as in the
    /// probe that found the defect; not an assertion.
    const OFFSET: Duration = Duration::from_millis(300);
    let server = H2Server::start(
        transport,
        Windows {
            stream: WINDOW,
            connection: WINDOW,
            upload_rate: None,
        },
    )
    .await;
    let (svc, stats) = client(&server, PhaseTimeoutLayer::new().send(LIMIT).read(LIMIT));
    let conn = warm_up(&svc, &server).await;

    let start = Instant::now();
    let stalled = timed(&svc, post(&server.url("/stall"), MIB));
    let healthy = async {
        // Wait until the stalled stream has used the connection window.
        while conn.bytes_written() < u64::from(WINDOW) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep_until(start + OFFSET).await;
        let issued = Instant::now();
        let (result, at, c) = timed(&svc, post(&server.url("/upload"), UPLOAD)).await;
        (result, issued, at, c)
    };
    let ((stalled, stalled_at, s_conn), (healthy, _issued, healthy_at, h_conn)) =
        tokio::join!(stalled, healthy);

    let e = expect_timeout(&stalled, Phase::Send);
    let took = stalled_at - start;
    assert!(
        took >= LIMIT && took <= LIMIT + LATE,
        "{transport:?}: the stalled stream failed after {took:?}"
    );
    assert!(e.bytes_sent() < MIB as u64, "{e:?}");
    match &healthy {
        Ok(body) => assert_eq!(body, &UPLOAD.to_string()),
        Err(e) => panic!("{transport:?}: the healthy upload failed: {e}"),
    }
    assert_eq!(server.uploaded(), UPLOAD as u64);
    // The healthy upload really waited for the stalled stream's reset.
    assert!(healthy_at > stalled_at);
    assert_eq!(
        s_conn.unwrap().info().connection_id(),
        conn.info().connection_id()
    );
    assert_eq!(
        h_conn.unwrap().info().connection_id(),
        conn.info().connection_id()
    );
    assert_eq!((stats.opened(), server.connections()), (1, 1));
}

over_tls_and_h2c!(
    healthy_stream_survives_a_stream_holding_the_window,
    h2_tls_healthy_stream_survives_a_stream_holding_the_window,
    h2c_healthy_stream_survives_a_stream_holding_the_window
);

/// A request to a handler that reads its body and never answers, while
/// another stream uploads for seconds: its `read` clock starts when its own
/// body ended (it used to wait for the connection's last write and flush,
/// i.e. for the other upload to end).
async fn read_fires_on_time_beside_a_busy_stream(transport: Transport) {
    let server = H2Server::start(transport, Windows::per_stream(Some(4 * MIB as u64))).await;
    let (svc, stats) = client(
        &server,
        PhaseTimeoutLayer::new()
            .send(Duration::from_secs(5))
            .read(Duration::from_secs(5)),
    );
    warm_up(&svc, &server).await;

    let start = Instant::now();
    let healthy = timed(&svc, post(&server.url("/upload"), UPLOAD));
    let silent = async {
        let mut req = post(&server.url("/silent"), 1000);
        req.extensions_mut()
            .insert(PhaseOverride::new().read(LIMIT));
        let issued = Instant::now();
        let (result, at, _) = timed(&svc, req).await;
        (result, at - issued)
    };
    let ((healthy, healthy_at, _), (silent, took)) = tokio::join!(healthy, silent);

    let e = expect_timeout(&silent, Phase::Read);
    assert!(
        took >= LIMIT && took <= LIMIT + LATE,
        "{transport:?}: read fired after {took:?}"
    );
    assert!(e.elapsed() >= LIMIT && e.elapsed() <= took, "{e:?}");
    assert_eq!(e.bytes_sent(), 1000);
    assert_eq!(healthy.unwrap(), UPLOAD.to_string());
    assert!(
        healthy_at - start > LIMIT + LATE,
        "{:?}",
        healthy_at - start
    );
    assert_eq!((stats.opened(), server.connections()), (1, 1));
}

over_tls_and_h2c!(
    read_fires_on_time_beside_a_busy_stream,
    h2_tls_read_fires_on_time_beside_a_busy_stream,
    h2c_read_fires_on_time_beside_a_busy_stream
);

/// A caller that gives up on (drops) an upload mid-way on HTTP/2 resets that
/// stream only: the connection stays pooled and the next request reuses it.
async fn dropped_request_keeps_its_connection(transport: Transport) {
    let server = H2Server::start(transport, Windows::per_stream(None)).await;
    let (svc, stats) = client(
        &server,
        PhaseTimeoutLayer::new().read(Duration::from_secs(60)),
    );
    let conn = warm_up(&svc, &server).await;
    let call = svc.clone().oneshot(post(&server.url("/stall"), MIB));
    assert!(tokio::time::timeout(LIMIT, call).await.is_err());
    assert_eq!(
        warm_up(&svc, &server).await.info().connection_id(),
        conn.info().connection_id()
    );
    assert_eq!((stats.opened(), server.connections()), (1, 1));
    assert_eq!(server.requests(), 3);
}

over_tls_and_h2c!(
    dropped_request_keeps_its_connection,
    h2_tls_dropped_request_keeps_its_connection,
    h2c_dropped_request_keeps_its_connection
);
