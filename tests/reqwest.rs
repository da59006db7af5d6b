//! This crate's layers with reqwest, against real loopback servers: the
//! connect timeout inside `connector_layer` (still `is_timeout()`), the
//! request-plane layers through `ReqwestService`, and the shared TLS
//! configuration in reqwest's builder.
//!
//! These tests run on the real clock (reqwest and real sockets). Each timing
//! assertion allows a named, generous slack; nothing asserts on speed.

mod common;

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use rustls::{ClientConfig, HandshakeKind};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_conn_lifecycle::connect_timeout::ConnectTimeoutLayer;
use tower_conn_lifecycle::find_cause;
use tower_conn_lifecycle::phase_timeout::{Elapsed, Phase, PhaseTimeoutLayer};
use tower_conn_lifecycle::reqwest::{ClientBuilderExt, ReqwestService};
use tower_conn_lifecycle::testing::{
    Blackhole, HyperServer, SilentServer, StalledBodyServer, StopReadingServer,
};
use tower_conn_lifecycle::tls::config_with_roots;

use common::bounded;
use common::pki::Ca;
use common::tls::{Mode, TlsServer};

/// How late a timeout may fire through reqwest: twice [`common::LATE`]
/// (reqwest adds a task hop or two over hyper-util's client).
const LATE: Duration = common::LATE.saturating_mul(2);

/// A bound on anything that should take milliseconds, so a broken test
/// fails instead of hanging.
const HANG: Duration = Duration::from_secs(20);

const KIB: usize = 1 << 10;
const MB: usize = 1 << 20;

/// reqwest's builder as every test here starts it: no system proxy, and the
/// shared TLS configuration (with this crate's `reqwest-rustls` feature
/// reqwest has no crypto provider of its own; see the `reqwest` module docs).
fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().no_proxy().shared_tls().unwrap()
}

/// Sends `req` through `svc`, which must fail (bounded: `HANG`) with an
/// `Elapsed` in its error's chain: that `Elapsed`, the error's display and
/// when it came.
async fn timed_out<S, B>(svc: S, req: Request<B>) -> (Elapsed, String, Instant)
where
    S: tower::Service<Request<B>, Error = tower_conn_lifecycle::BoxError>,
    S::Response: std::fmt::Debug,
{
    let err = bounded(HANG, "the request", svc.oneshot(req))
        .await
        .unwrap_err();
    let failed_at = Instant::now();
    let e = find_cause::<Elapsed>(err.as_ref()).unwrap_or_else(|| panic!("no Elapsed in {err:?}"));
    (e.clone(), err.to_string(), failed_at)
}

// ------------------------------------------------------------ connect phase

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_in_connector_layer_is_a_reqwest_timeout() {
    const CONNECT: Duration = Duration::from_millis(300);
    let hole = Blackhole::start().await.unwrap();
    let client = builder()
        .connector_layer(ConnectTimeoutLayer::new(CONNECT))
        .build()
        .unwrap();

    let start = Instant::now();
    let err = bounded(HANG, "the request", client.get(hole.url()).send())
        .await
        .unwrap_err();
    let took = start.elapsed();

    // What reqwest users already check keeps matching.
    assert!(err.is_timeout(), "is_timeout() false for {err:?}");
    assert!(err.is_connect(), "is_connect() false for {err:?}");
    // And the phase is named.
    let e = tower_conn_lifecycle::find_cause::<Elapsed>(&err)
        .unwrap_or_else(|| panic!("no Elapsed in {err:?}"));
    assert_eq!((e.phase(), e.limit()), (Phase::Connect, CONNECT));
    let io = find_cause::<io::Error>(&err).expect("an io::Error in the chain");
    assert_eq!(io.kind(), io::ErrorKind::TimedOut);
    assert!(took >= CONNECT && took <= CONNECT + LATE, "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_in_connector_layer_lets_connects_through() {
    let server = HyperServer::start().await.unwrap();
    let client = builder()
        .connector_layer(ConnectTimeoutLayer::new(Duration::from_secs(5)))
        .build()
        .unwrap();
    for _ in 0..2 {
        let res = bounded(
            HANG,
            "the request",
            client.post(server.url()).body("hello").send(),
        )
        .await
        .unwrap();
        assert_eq!(res.text().await.unwrap(), "5");
    }
    // reqwest's pool still reuses the connection made through the layer.
    assert_eq!((server.connections(), server.requests()), (1, 2));
}

// ------------------------------------------------------------- the adapter

/// How long hyper-util's spawned task takes, at most, to return a finished
/// connection to its pool (microseconds on an idle machine; generous).
const POOL_RETURN: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_converts_requests_and_responses() {
    let server = HyperServer::start().await.unwrap();
    let svc = ReqwestService::new(builder().build().unwrap());

    let req = Request::post(server.url())
        .header("x-probe", "1")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let res = bounded(HANG, "the request", svc.clone().oneshot(req))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_11);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "5");
    // hyper-util puts a finished connection back into its pool from a
    // spawned task: give it that moment, or a loaded machine opens a
    // second connection and the test says nothing about sharing.
    tokio::time::sleep(POOL_RETURN).await;

    let req = Request::get(server.url())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = bounded(HANG, "the request", svc.clone().oneshot(req))
        .await
        .unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "0");
    assert_eq!((server.requests(), server.bytes_read()), (2, 5));
    // The clone shares the client's pool.
    assert_eq!(server.connections(), 1);

    // reqwest refuses a relative URI; nothing is sent.
    let req = Request::get("/relative")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let err = bounded(HANG, "the request", svc.oneshot(req))
        .await
        .unwrap_err();
    assert!(err.is_builder(), "{err:?}");
    assert_eq!(server.requests(), 2);
}

/// A request body of `chunks` pieces of `chunk` bytes that records when the
/// connection last pulled a frame: the progress the adapter exposes.
struct RecordedBody {
    chunk: Bytes,
    left: usize,
    last_pull: Arc<Mutex<Option<Instant>>>,
}

impl RecordedBody {
    fn new(chunk: usize, chunks: usize) -> (Self, Arc<Mutex<Option<Instant>>>) {
        let last_pull = Arc::new(Mutex::new(None));
        let body = RecordedBody {
            chunk: Bytes::from(vec![b'u'; chunk]),
            left: chunks,
            last_pull: Arc::clone(&last_pull),
        };
        (body, last_pull)
    }
}

impl Body for RecordedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        *self.last_pull.lock().unwrap() = Some(Instant::now());
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.chunk.len() * self.left) as u64)
    }
}

fn last_pull(at: &Mutex<Option<Instant>>) -> Instant {
    at.lock().unwrap().expect("the body was pulled")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_stall_through_reqwest_fails_in_the_send_phase() {
    const SEND: Duration = Duration::from_millis(500);
    // 64 MiB: far more than the loopback socket buffers hold, so the upload
    // stalls for good once the server stops reading after 1 MiB.
    let (chunk, chunks) = (64 * KIB, 1024);
    let server = StopReadingServer::start(MB as u64).await.unwrap();
    let svc = PhaseTimeoutLayer::new()
        .send(SEND)
        .read(Duration::from_secs(30))
        .layer(ReqwestService::new(builder().build().unwrap()));

    let (body, pulled) = RecordedBody::new(chunk, chunks);
    let req = Request::post(server.url()).body(body).unwrap();
    let (e, err, failed_at) = timed_out(svc, req).await;

    assert_eq!(e.phase(), Phase::Send, "{err}");
    let total = (chunk * chunks) as u64;
    assert!(e.bytes_sent() > 0 && e.bytes_sent() < total, "{e:?}");
    // Fired one limit after the last progress reqwest showed, not later.
    let after = failed_at.saturating_duration_since(last_pull(&pulled));
    assert!(
        after >= SEND && after <= SEND + LATE,
        "{after:?} after the last pull"
    );
    assert!(e.elapsed() >= SEND && e.elapsed() <= SEND + LATE, "{e:?}");
    // The server really stopped reading early, on the one request.
    assert!(server.bytes_read() <= MB as u64);
    assert_eq!(server.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_clock_through_reqwest_starts_when_the_body_is_sent() {
    const READ: Duration = Duration::from_millis(400);
    let server = SilentServer::start().await.unwrap();
    let svc = PhaseTimeoutLayer::new()
        .send(Duration::from_secs(30))
        .read(READ)
        .layer(ReqwestService::new(builder().build().unwrap()));

    let (body, pulled) = RecordedBody::new(KIB, 4);
    let req = Request::post(server.url()).body(body).unwrap();
    let (e, err, failed_at) = timed_out(svc, req).await;

    assert_eq!(e.phase(), Phase::Read, "{err}");
    assert_eq!(e.bytes_sent(), 4 * KIB as u64);
    let after = failed_at.saturating_duration_since(last_pull(&pulled));
    assert!(
        after >= READ && after <= READ + LATE,
        "{after:?} after the last pull"
    );
    assert_eq!(
        (server.requests(), server.bytes_read()),
        (1, 4 * KIB as u64)
    );
}

/// A request without a body never shows reqwest's connection; reqwest drops
/// the request's extensions in its `call`, so the layer knows the service
/// hides it and starts `read` at the call (it used to wait for `total`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_bounds_a_bodyless_request_through_reqwest() {
    const READ: Duration = Duration::from_millis(1000);
    let server = SilentServer::start().await.unwrap();
    let client = builder().build().unwrap();
    for total in [None, Some(Duration::from_secs(10))] {
        let requests = server.requests();
        let svc = PhaseTimeoutLayer::new()
            .read(READ)
            .total(total)
            .layer(ReqwestService::new(client.clone()));

        let start = Instant::now();
        let req = Request::get(server.url())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (e, err, failed_at) = timed_out(svc, req).await;
        let took = failed_at - start;
        assert_eq!((e.phase(), e.limit()), (Phase::Read, READ), "{err}");
        assert!(took >= READ && took <= READ + LATE, "{took:?}");
        assert!(e.elapsed() >= READ && e.elapsed() <= took, "{e:?}");
        assert_eq!(e.bytes_sent(), 0);
        // The server read the one request, and was still silent.
        assert_eq!(server.requests(), requests + 1, "total = {total:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_stall_through_reqwest_fails_from_the_body() {
    const STALL: Duration = Duration::from_millis(400);
    let server = StalledBodyServer::builder()
        .first_bytes(10)
        .start()
        .await
        .unwrap();
    let svc = PhaseTimeoutLayer::new()
        .read(STALL)
        .layer(ReqwestService::new(builder().build().unwrap()));

    let req = Request::get(server.url())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = bounded(HANG, "the request", svc.oneshot(req))
        .await
        .unwrap();
    let mut body = res.into_body();
    let mut received = 0;
    let err = loop {
        match bounded(HANG, "a body frame", body.frame()).await {
            Some(Ok(frame)) => received += frame.into_data().map_or(0, |d| d.len()),
            Some(Err(err)) => break err,
            None => panic!("the stalled body ended"),
        }
    };
    let e = tower_conn_lifecycle::find_cause::<Elapsed>(err.as_ref())
        .unwrap_or_else(|| panic!("no Elapsed in {err:?}"));
    assert_eq!(e.phase(), Phase::Read, "{err}");
    assert_eq!((received, e.bytes_received()), (10, 10));
    assert!(e.elapsed() >= STALL && e.elapsed() <= STALL + LATE, "{e:?}");
    assert_eq!(server.requests(), 1);
}

// ----------------------------------------------- stale connections (retry)
//
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_get_through_reqwest_is_retried_and_post_is_not() {
    use tower_conn_lifecycle::retry::{NotRetried, Retried, RetryOnStaleConnectionLayer, Rule};
    use tower_conn_lifecycle::testing::{IdleClosingServer, SeedWorkload};

    // reqwest's pool keeps connections for 90 s; the server closes them
    // after 200 ms; every request comes right at that moment.
    let idle = Duration::from_millis(200);
    for method in [http::Method::GET, http::Method::POST] {
        let server = IdleClosingServer::start(idle).await.unwrap();
        let plan = SeedWorkload::new(idle)
            .tasks(5)
            .requests(40)
            .method(method.clone());
        let report = plan
            .run(&server.url(), |_| {
                tower::ServiceBuilder::new()
                    .layer(RetryOnStaleConnectionLayer::new())
                    .layer(PhaseTimeoutLayer::new().total(Duration::from_secs(10)))
                    .service(ReqwestService::new(builder().build().unwrap()))
            })
            .await;
        let retried = report
            .samples()
            .iter()
            .filter(|s| {
                s.outcome()
                    .is_ok_and(|r| r.extensions().get::<Retried>().is_some())
            })
            .count();
        // KNOWN DEFECT, not yet explained: in about one run in five to
        // eight (about one request in 10 000), one request hangs until
        // `total` cuts it (a `Total` timeout, never retried). Already so at
        // d185f03. A traced repro showed a *first* attempt that hyper-util
        // handed to a reused idle connection just as the server closed it,
        // then nothing more in that request until `total`: the server never
        // saw it, and it waited on hyper's response channel, not on one of
        // this crate's futures (over reqwest the crate's code on hyper's
        // connection task is one `is_end_stream` call on an empty capture).
        // Not reproduced with bare reqwest in 9 600 requests, which at that
        // rate proves nothing either way. Tolerated here, at most
        // `KNOWN_HANGS` and each exactly that shape, so the rest of what
        // this test proves stays enforced.
        const KNOWN_HANGS: usize = 2;
        let mut hangs = 0;
        for s in report.samples() {
            let Err(e) = s.outcome() else { continue };
            let refused = tower_conn_lifecycle::find_cause::<NotRetried>(e.as_ref())
                .unwrap_or_else(|| panic!("{e}"));
            let elapsed = tower_conn_lifecycle::find_cause::<Elapsed>(e.as_ref());
            if refused.rule() == Rule::Timeout
                && elapsed.is_some_and(|t| t.phase() == Phase::Total && t.bytes_sent() == 0)
            {
                hangs += 1;
                continue;
            }
            // Without the tracker a POST without a key is never retried:
            // every other failure names that rule. A GET has no other.
            assert_eq!(method, http::Method::POST, "{e}");
            assert_eq!(refused.rule(), Rule::NotIdempotent, "{e}");
        }
        assert!(hangs <= KNOWN_HANGS, "{:?}", report.error_chains());
        if method == http::Method::GET {
            assert!(retried > 0, "the race never happened: no retry recorded");
            assert_eq!(report.errors(), hangs, "{:?}", report.error_chains());
            // Every GET that succeeded reached the server; the cut ones may
            // never have been written.
            assert!(server.requests_by_method(&method) as usize >= report.successes());
        } else {
            assert_eq!(retried, 0);
            // Nothing was duplicated.
            assert_eq!(server.posts() as usize, report.successes());
        }
    }
}

// ------------------------------------------------------------------- TLS

/// A reqwest client for `server` (its name pinned to the loopback address).
fn tls_client(config: &ClientConfig, server: &TlsServer) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .resolve("localhost", server.addr)
        .tls_config(config)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preconfigured_tls_config_is_what_reqwest_uses() {
    let ca = Ca::new("reqwest test ca");
    let mut server = TlsServer::start(&ca.leaf(&["localhost"]), Mode::H2Capable).await;
    let url = server.url("localhost").to_string();
    // Built once, like the shared configuration; every client clones it.
    let config = config_with_roots(ca.roots()).unwrap();

    let first = tls_client(&config, &server);
    let res = bounded(HANG, "the request", first.get(&url).send())
        .await
        .unwrap();
    // The configuration's ALPN (`h2` first) reached the server.
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(res.text().await.unwrap(), "HTTP/2.0");
    assert_eq!(
        server.next_handshake().await.map(|h| h.kind),
        Ok(Some(HandshakeKind::Full))
    );

    // A second client built from the same configuration shares its session
    // cache: its first connection resumes the first client's session.
    let second = tls_client(&config, &server);
    let res = bounded(HANG, "the request", second.get(&url).send())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        server.next_handshake().await.map(|h| h.kind),
        Ok(Some(HandshakeKind::Resumed))
    );

    // The process-wide configuration does not trust the test CA: the same
    // request fails the certificate check, so the roots above were used.
    let shared = reqwest::Client::builder()
        .no_proxy()
        .resolve("localhost", server.addr)
        .shared_tls()
        .unwrap()
        .build()
        .unwrap();
    let err = bounded(HANG, "the request", shared.get(&url).send())
        .await
        .unwrap_err();
    let tls = find_cause::<rustls::Error>(&err).unwrap_or_else(|| panic!("{err:?}"));
    assert!(
        matches!(tls, rustls::Error::InvalidCertificate(_)),
        "{tls:?}"
    );
    assert!(server.next_handshake().await.is_err());
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn shared_tls_builds_clients_from_one_configuration() {
    for _ in 0..3 {
        builder().build().unwrap();
    }
    assert_eq!(tower_conn_lifecycle::tls::shared_config_build_count(), 1);
    // reqwest rejects anything but a `rustls::ClientConfig` by value at
    // `build()`; the extension trait passes exactly that.
    let err = reqwest::Client::builder()
        .tls_backend_preconfigured(tower_conn_lifecycle::tls::shared_config().unwrap())
        .build()
        .unwrap_err();
    assert!(err.is_builder(), "{err:?}");
}
