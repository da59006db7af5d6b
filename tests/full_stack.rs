//! The whole stack as users meet it (`tower_conn_lifecycle::client`) against
//! the testing kit's servers on 127.0.0.1: the seed race for GET and POST,
//! a server that resets connections at random points, uploads, and
//! IdleExpiry + Retry together on a composable pool.

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_conn_lifecycle::client;
use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
use tower_conn_lifecycle::phase_timeout::{Elapsed, Phase, PhaseTimeoutLayer};
use tower_conn_lifecycle::retry::{NotRetried, Retried, RetryReason};
use tower_conn_lifecycle::testing::{
    IdleClosingServer, ResetServer, SeedWorkload, StopReadingServer, ThrottledReader,
};
use tower_conn_lifecycle::{find_cause, BoxError};

const IDLE: Duration = Duration::from_millis(200);

fn layered(expiry: Duration) -> client::Builder {
    client::builder()
        .connect_timeout(Duration::from_secs(2))
        .idle_expiry(IdleExpiryLayer::new(expiry))
        .timeouts(
            PhaseTimeoutLayer::new()
                .send(Duration::from_secs(5))
                .read(Duration::from_secs(10)),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_race_get_and_post_through_the_whole_stack() {
    for (expiry, label) in [
        (Duration::from_millis(120), "configured"),
        (Duration::from_secs(90), "90 s: learned + retries"),
    ] {
        for method in [Method::GET, Method::POST] {
            let server = IdleClosingServer::start(IDLE).await.unwrap();
            let builder = layered(expiry);
            let report = SeedWorkload::new(IDLE)
                .requests(40)
                .method(method.clone())
                .run(&server.url(), |_| builder.clone().build::<Full<Bytes>>())
                .await;
            let chains = report.error_chains();
            if method == Method::GET {
                assert_eq!(report.errors(), 0, "{label} GET: {chains:?}");
                assert_eq!(server.requests_by_method(&Method::GET), 400);
            } else {
                // Never a duplicated POST; a POST that failed says why.
                assert_eq!(server.posts() as usize, report.successes(), "{label}");
                for s in report.samples() {
                    if let Err(e) = s.outcome() {
                        assert!(
                            tower_conn_lifecycle::find_cause::<NotRetried>(e.as_ref()).is_some(),
                            "{label}: {e}"
                        );
                    }
                }
                if label == "configured" {
                    assert_eq!(report.errors(), 0, "{label} POST: {chains:?}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_resets_never_duplicate_a_post_and_every_error_is_typed() {
    // Resets chosen pseudo-randomly by (connection, request): some before
    // the request arrives, on fresh and reused connections alike.
    let server = ResetServer::builder()
        .fault_on(|conn, req| (conn * 7 + req * 13) % 5 == 0)
        .reset_after_bytes(1)
        .start()
        .await
        .unwrap();
    let builder = layered(Duration::from_secs(90));
    for method in [Method::GET, Method::POST] {
        let before = server.responses();
        let report = SeedWorkload::new(Duration::from_millis(10))
            .tasks(4)
            .requests(25)
            .gaps(0.5, 1.0)
            .method(method.clone())
            .run(&server.url(), |_| builder.clone().build::<Full<Bytes>>())
            .await;
        // Every answered request is a success the client saw: nothing
        // processed twice, nothing processed and reported failed.
        assert_eq!(
            (server.responses() - before) as usize,
            report.successes(),
            "{method}"
        );
        for s in report.samples() {
            if let Err(e) = s.outcome() {
                assert!(
                    tower_conn_lifecycle::find_cause::<NotRetried>(e.as_ref()).is_some(),
                    "{method}: untyped {e}"
                );
            }
        }
        if method == Method::GET {
            assert!(report.successes() > 50, "{:?}", report.error_chains());
        }
    }
    assert!(server.resets() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_through_the_whole_stack() {
    let client = layered(Duration::from_secs(90))
        .timeouts(PhaseTimeoutLayer::new().send(Duration::from_millis(500)))
        .build::<Full<Bytes>>();
    // A 20 MB upload that keeps moving (4 MB/s) outlives a 500 ms send limit.
    let slow = ThrottledReader::start(4 << 20).await.unwrap();
    let body = Full::new(Bytes::from(vec![b'u'; 20 << 20]));
    let req = http::Request::post(slow.url()).body(body).unwrap();
    let res = client.clone().oneshot(req).await.unwrap();
    let n = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(n, (20u64 << 20).to_string());
    assert_eq!(slow.bytes_read(), 20 << 20);
    // A server that stops reading: a typed send timeout, never retried.
    let stop = StopReadingServer::start(1 << 20).await.unwrap();
    let body = Full::new(Bytes::from(vec![b'u'; 50 << 20]));
    let req = http::Request::post(stop.url()).body(body).unwrap();
    let err: BoxError = client.oneshot(req).await.unwrap_err();
    let elapsed = find_cause::<Elapsed>(err.as_ref()).unwrap_or_else(|| panic!("{err}"));
    assert_eq!(elapsed.phase(), Phase::Send);
    assert_eq!(stop.connections(), 1, "a timeout is never retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_expiry_refusal_is_retried_and_the_server_sees_no_byte_of_it() {
    let server = IdleClosingServer::start(Duration::from_secs(30))
        .await
        .unwrap();
    let res = common::post_again_after_expiry(&server.url()).await;
    let retried = res
        .extensions()
        .get::<Retried>()
        .expect("the refused attempt was retried");
    assert_eq!(retried.count(), 1);
    assert_eq!(retried.reasons(), &[RetryReason::NothingWritten]);
    res.into_body().collect().await.unwrap();
    // Server side: two POSTs, each processed once, on two connections; the
    // refused attempt never reached it.
    assert_eq!(server.posts(), 2);
    assert_eq!(server.requests(), 2);
    assert_eq!(server.connections(), 2);
}

/// The composable pool's pieces over the shared TLS connector: the
/// tracker wraps the TLS stream, one handshake serves both requests, and
/// each request reaches the server once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_pieces_run_over_tls() {
    use common::tls::{Mode, TlsServer};
    use hyper_util::client::pool::cache;
    use hyper_util::rt::TokioExecutor;
    use tower::Layer;
    use tower_conn_lifecycle::pool;
    use tower_conn_lifecycle::tls::SharedTlsConnector;
    use tower_conn_lifecycle::track::{ConnectionInfo, TrackConnectionsLayer};

    let ca = common::pki::Ca::new("test ca");
    let mut server = TlsServer::start(&ca.leaf(&["localhost"]), Mode::H2Capable).await;
    let track = TrackConnectionsLayer::new();
    // HTTP/1 only: the pool's connections speak HTTP/1.1.
    let tls = SharedTlsConnector::from_config(common::tls::tcp(), common::tls::client_config(&ca))
        .alpn_protocols([b"http/1.1"]);
    let connect = pool::connect(
        track.layer(tls),
        hyper::client::conn::http1::Builder::new(),
        IdleExpiryLayer::new(Duration::from_secs(90)),
    );
    let client = pool::checkout(
        cache::builder()
            .executor(TokioExecutor::new())
            .build(connect),
        8,
    );
    for reused in [false, true] {
        let req = http::Request::get(server.url("localhost"))
            .body(Full::<Bytes>::default())
            .unwrap();
        let res = common::bounded(common::STEP_LIMIT, "a GET", client.clone().oneshot(req))
            .await
            .unwrap();
        assert_eq!(ConnectionInfo::of(&res).unwrap().is_reused(), reused);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"HTTP/1.1");
    }
    assert_eq!(track.stats().opened(), 1);
    // Server side: one TLS handshake (ALPN http/1.1, SNI), two requests.
    let handshake = server.next_handshake().await.unwrap();
    assert_eq!(handshake.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(handshake.sni.as_deref(), Some("localhost"));
    assert_eq!(server.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca_through_the_whole_stack() {
    use common::tls::{Mode, TlsServer};
    use tower_conn_lifecycle::track::ConnectionInfo;

    let ca = common::pki::Ca::new("test ca");
    let mut server = TlsServer::start(&ca.leaf(&["localhost"]), Mode::H2Capable).await;
    let config = common::tls::client_config(&ca);
    let client = layered(Duration::from_secs(90))
        .tls_config(config)
        .build::<Full<Bytes>>();
    let url = server.url("localhost");
    let get = || {
        http::Request::get(url.clone())
            .body(Full::default())
            .unwrap()
    };
    let mut ids = Vec::new();
    for _ in 0..2 {
        let res = client.clone().oneshot(get()).await.unwrap();
        // Over HTTP/2 the tracker's exchange numbers are approximate (the
        // preface counts); the connection is what matters here.
        let info = ConnectionInfo::of(&res).expect("tracked over TLS");
        ids.push(info.connection_id());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        // ALPN h2 through SharedTlsConnector, tracked.
        assert_eq!(&body[..], b"HTTP/2.0");
    }
    assert_eq!(ids[0], ids[1], "one multiplexed connection, reused");
    // Several streams at once share that connection (the engine's HTTP/2
    // singleton): no second connection, every response whole.
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, req) = (client.clone(), get());
        streams.spawn(async move {
            let res = client.oneshot(req).await.unwrap();
            let id = ConnectionInfo::of(&res).unwrap().connection_id();
            (id, res.into_body().collect().await.unwrap().to_bytes())
        });
    }
    while let Some(done) = streams.join_next().await {
        let (id, body) = done.unwrap();
        assert_eq!((id, &body[..]), (ids[0], &b"HTTP/2.0"[..]));
    }
    assert!(server.next_handshake().await.is_ok());
    assert_eq!(server.requests(), 10);
    assert_eq!(client.connection_stats().opened(), 1);
    // The same stack refuses a server its roots do not trust, typed.
    let untrusted = client::builder().build::<Full<Bytes>>();
    let err = untrusted.oneshot(get()).await.unwrap_err();
    assert!(
        find_cause::<tower_conn_lifecycle::tls::TlsConnectError>(err.as_ref()).is_some(),
        "{err:?}"
    );
    assert!(
        find_cause::<NotRetried>(err.as_ref()).is_some(),
        "typed: {err}"
    );
    assert_eq!(
        server.requests(),
        10,
        "no request reached the server over an untrusted connection"
    );
}
