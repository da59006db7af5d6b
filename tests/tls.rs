//! SharedTlsConnector against real loopback TLS servers with an rcgen test CA.
//!
//! Every server binds 127.0.0.1:0 (or [::1]:0 when the machine has IPv6) and
//! reports server-side facts: requests its HTTP layer saw, and for every TLS
//! connection the handshake outcome (kind, SNI, ALPN) or failure.

mod common;

use std::error::Error as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::Resumption;
use rustls::HandshakeKind;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower::{Layer, Service, ServiceExt};
use tower_conn_lifecycle::find_cause;
use tower_conn_lifecycle::tls::{
    config_with_roots, shared_config, shared_config_build_count, MaybeHttpsStream,
    SharedTlsConnector, SharedTlsConnectorLayer, TlsConnectError, TlsConnectErrorKind,
};

use common::bounded;
use common::pki::{Ca, Leaf, LOOPBACK};
use common::tls::{
    client_config, client_with, get, tcp, url as server_url, Handshake, Mode, TlsServer,
};

/// Upper bound for any single test; they take milliseconds.
const TEST_LIMIT: Duration = Duration::from_secs(30);

type TestClient<C> = Client<C, Empty<Bytes>>;

const STORE_NAMES: [&str; 6] = [
    "s0.test", "s1.test", "s2.test", "s3.test", "s4.test", "s5.test",
];

/// The usual leaf: valid for `localhost`, both loopback IPs and `s*.test`.
fn good_leaf(ca: &Ca) -> Leaf {
    let mut names = LOOPBACK.to_vec();
    names.extend(STORE_NAMES);
    ca.leaf(&names)
}

/// A new test CA, and a server presenting its [`good_leaf`] in `mode`.
async fn ca_and_server(mode: Mode) -> (Ca, TlsServer) {
    let ca = Ca::new("test ca");
    let server = TlsServer::start(&good_leaf(&ca), mode).await;
    (ca, server)
}

/// GETs `server` by name and checks the HTTP version on both sides and the
/// ALPN protocol the server negotiated.
async fn assert_protocol(
    client: &TestClient<SharedTlsConnector<HttpConnector>>,
    server: &mut TlsServer,
    version: Version,
    server_saw: &str,
    alpn: &[u8],
) {
    let (got, saw) = get(client, server.url("localhost")).await.unwrap();
    assert_eq!(got, version);
    assert_eq!(saw, server_saw);
    let (_, _, negotiated) = expect_done(server.next_handshake().await);
    assert_eq!(negotiated.as_deref(), Some(alpn));
}

fn expect_done(
    handshake: Result<Handshake, String>,
) -> (Option<HandshakeKind>, Option<String>, Option<Vec<u8>>) {
    match handshake {
        Ok(Handshake {
            kind, sni, alpn, ..
        }) => (kind, sni, alpn),
        Err(e) => panic!("server-side handshake failed: {e}"),
    }
}

// -------------------------------------------------------------------- tests

#[tokio::test]
async fn https_by_name_sends_sni_and_succeeds() {
    bounded(TEST_LIMIT, "the test", async {
        let (ca, mut server) = ca_and_server(Mode::Http1Only).await;
        let client = client_with(client_config(&ca));

        let (version, _) = get(&client, server.url("localhost")).await.unwrap();
        assert_eq!(version, Version::HTTP_11);
        assert_eq!(server.requests(), 1);
        let (kind, sni, _) = expect_done(server.next_handshake().await);
        assert_eq!(kind, Some(HandshakeKind::Full));
        assert_eq!(sni.as_deref(), Some("localhost"));
    })
    .await;
}

#[tokio::test]
async fn https_by_ipv4_literal_verifies_ip_san_without_sni() {
    bounded(TEST_LIMIT, "the test", async {
        let (ca, mut server) = ca_and_server(Mode::Http1Only).await;
        let client = client_with(client_config(&ca));

        get(&client, server.url("127.0.0.1")).await.unwrap();
        assert_eq!(server.requests(), 1);
        let (_, sni, _) = expect_done(server.next_handshake().await);
        assert_eq!(sni, None, "an IP literal must not be sent as SNI");

        // The IP SAN is what made it pass: a certificate for names only fails.
        let names_only = ca.leaf(&["localhost"]);
        let other = TlsServer::start(&names_only, Mode::Http1Only).await;
        let err = get(&client, other.url("127.0.0.1")).await.unwrap_err();
        assert!(find_cause::<rustls::Error>(&*err).is_some(), "{err:?}");
        assert_eq!(other.requests(), 0);
    })
    .await;
}

#[tokio::test]
async fn https_by_ipv6_literal_where_available() {
    bounded(TEST_LIMIT, "the test", async {
        let listener = match TcpListener::bind("[::1]:0").await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("skipping: cannot bind [::1] on this machine ({e})");
                return;
            }
        };
        let ca = Ca::new("test ca");
        let mut server = TlsServer::start_on(
            listener,
            &good_leaf(&ca),
            Mode::Http1Only,
            common::tls::provider(),
        );
        let client = client_with(client_config(&ca));

        get(&client, server.url("[::1]")).await.unwrap();
        assert_eq!(server.requests(), 1);
        let (_, sni, _) = expect_done(server.next_handshake().await);
        assert_eq!(sni, None);
    })
    .await;
}

/// Connects to a server presenting `leaf` and checks the rejection: the
/// error chain holds a `TlsConnectError` of kind `Tls` whose source is the
/// rustls error matching `expected`, and the server's HTTP layer saw nothing.
async fn assert_rejected(leaf: Leaf, trusted: &Ca, expected: &str) {
    let mut server = TlsServer::start(&leaf, Mode::Http1Only).await;
    let client = client_with(client_config(trusted));

    let err = get(&client, server.url("localhost")).await.unwrap_err();
    let tls_err = find_cause::<TlsConnectError>(&*err).expect("a TlsConnectError in the chain");
    assert_eq!(tls_err.kind(), TlsConnectErrorKind::Tls);
    assert_eq!(tls_err.to_string(), "tls handshake failed");
    let rustls_err = find_cause::<rustls::Error>(&*err).expect("the rustls error in the chain");
    assert!(
        matches!(rustls_err, rustls::Error::InvalidCertificate(_)),
        "{rustls_err:?}"
    );
    assert!(
        format!("{rustls_err:?}").contains(expected),
        "expected {expected}, got {rustls_err:?}"
    );
    assert!(std::ptr::eq(
        tls_err.rustls_error().unwrap(),
        rustls_err as *const _
    ));

    // Server side: the handshake failed (the client's alert) and no request
    // reached the HTTP layer.
    if let Ok(done) = server.next_handshake().await {
        panic!("server completed a handshake it should not have: {done:?}");
    }
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn certificate_for_another_name_is_rejected() {
    bounded(TEST_LIMIT, "the test", async {
        let ca = Ca::new("test ca");
        assert_rejected(ca.leaf(&["other.test"]), &ca, "NotValidForName").await;
    })
    .await;
}

#[tokio::test]
async fn expired_certificate_is_rejected() {
    bounded(TEST_LIMIT, "the test", async {
        let ca = Ca::new("test ca");
        let mut names = vec!["localhost"];
        names.push("127.0.0.1");
        assert_rejected(ca.expired_leaf(&names), &ca, "Expired").await;
    })
    .await;
}

#[tokio::test]
async fn untrusted_ca_is_rejected() {
    bounded(TEST_LIMIT, "the test", async {
        let trusted = Ca::new("trusted ca");
        let untrusted = Ca::new("untrusted ca");
        assert_rejected(good_leaf(&untrusted), &trusted, "UnknownIssuer").await;
    })
    .await;
}

#[tokio::test]
async fn alpn_h2_server_gets_http2() {
    bounded(TEST_LIMIT, "the test", async {
        let (ca, mut server) = ca_and_server(Mode::H2Capable).await;
        let client = client_with(client_config(&ca));

        assert_protocol(&client, &mut server, Version::HTTP_2, "HTTP/2.0", b"h2").await;
    })
    .await;
}

#[tokio::test]
async fn alpn_http1_only_server_gets_http11() {
    bounded(TEST_LIMIT, "the test", async {
        let (ca, mut server) = ca_and_server(Mode::Http1Only).await;
        let client = client_with(client_config(&ca));

        assert_protocol(
            &client,
            &mut server,
            Version::HTTP_11,
            "HTTP/1.1",
            b"http/1.1",
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn configured_alpn_http1_only_against_h2_server() {
    bounded(TEST_LIMIT, "the test", async {
        let (ca, mut server) = ca_and_server(Mode::H2Capable).await;
        let layer =
            SharedTlsConnectorLayer::from_config(client_config(&ca)).alpn_protocols([b"http/1.1"]);
        let client: TestClient<_> = Client::builder(TokioExecutor::new()).build(layer.layer(tcp()));

        assert_protocol(
            &client,
            &mut server,
            Version::HTTP_11,
            "HTTP/1.1",
            b"http/1.1",
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn second_client_on_the_same_config_resumes_the_session() {
    bounded(TEST_LIMIT, "the test", async {
        let (ca, mut server) = ca_and_server(Mode::H2Capable).await;
        let config = client_config(&ca);

        let first = client_with(config.clone());
        get(&first, server.url("localhost")).await.unwrap();
        let (kind, _, _) = expect_done(server.next_handshake().await);
        assert_eq!(kind, Some(HandshakeKind::Full));

        // A new client (own pool, own connector, built through the layer)
        // sharing only the configuration.
        let layer = SharedTlsConnectorLayer::from_config(config.clone());
        let second: TestClient<_> = Client::builder(TokioExecutor::new()).build(layer.layer(tcp()));
        get(&second, server.url("localhost")).await.unwrap();
        let (kind, _, _) = expect_done(server.next_handshake().await);
        assert_eq!(kind, Some(HandshakeKind::Resumed));

        // Control: a separately built configuration has its own store.
        let third = client_with(client_config(&ca));
        get(&third, server.url("localhost")).await.unwrap();
        let (kind, _, _) = expect_done(server.next_handshake().await);
        assert_eq!(kind, Some(HandshakeKind::Full));
        assert_eq!(server.requests(), 3);
    })
    .await;
}

/// An inner connector sending every host to one loopback address, so the
/// tests can use many server names against one server.
#[derive(Clone)]
struct FixedAddr(SocketAddr);

impl Service<Uri> for FixedAddr {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        assert!(self.0.ip().is_loopback());
        let addr = self.0;
        Box::pin(async move { Ok(TokioIo::new(TcpStream::connect(addr).await?)) })
    }
}

/// rustls's `ClientSessionMemoryCache` is sized in TLS 1.3 tickets and keeps
/// this many per server (so `in_memory_sessions(n * 8)` remembers `n`
/// servers).
const TICKETS_PER_SERVER: usize = 8;

/// The session cache of a configuration is bounded and evicts the oldest
/// server first. rustls's cache does not report its occupancy, so the bound
/// is checked through the server's view: a fresh client resumes exactly the
/// `BOUND` newest names and none older.
#[tokio::test]
async fn session_store_is_bounded() {
    bounded(TEST_LIMIT, "the test", async {
        const BOUND: usize = 3;
        let (ca, mut server) = ca_and_server(Mode::Http1Only).await;
        let mut config = config_with_roots(ca.roots()).unwrap();
        config.resumption = Resumption::in_memory_sessions(BOUND * TICKETS_PER_SERVER);
        let config = Arc::new(config);
        let addr = server.addr;
        let url = |name: &str| server_url(addr, name);

        let first: TestClient<_> = Client::builder(TokioExecutor::new()).build(
            SharedTlsConnector::from_config(FixedAddr(server.addr), config.clone()),
        );
        for name in STORE_NAMES {
            get(&first, url(name)).await.unwrap();
        }
        for name in STORE_NAMES {
            let (kind, sni, _) = expect_done(server.next_handshake().await);
            assert_eq!(sni.as_deref(), Some(name));
            assert_eq!(kind, Some(HandshakeKind::Full));
        }

        // A fresh client sharing only the configuration. Resuming does not
        // reorder the cache, so the `BOUND` newest names all resume (the
        // cache holds at least `BOUND` servers) ...
        let second: TestClient<_> = Client::builder(TokioExecutor::new()).build(
            SharedTlsConnector::from_config(FixedAddr(server.addr), config.clone()),
        );
        let (evicted, kept) = STORE_NAMES.split_at(STORE_NAMES.len() - BOUND);
        for name in kept {
            get(&second, url(name)).await.unwrap();
            let (kind, sni, _) = expect_done(server.next_handshake().await);
            assert_eq!(sni.as_deref(), Some(*name));
            assert_eq!(kind, Some(HandshakeKind::Resumed), "{name} was not kept");
        }
        // ... and the next newest, evicted by the first of them, does not
        // (it holds at most `BOUND`, evicting the oldest first); nor does the
        // oldest.
        for name in [evicted[evicted.len() - 1], evicted[0]] {
            get(&second, url(name)).await.unwrap();
            let (kind, sni, _) = expect_done(server.next_handshake().await);
            assert_eq!(sni.as_deref(), Some(name));
            assert_eq!(kind, Some(HandshakeKind::Full), "evicted {name} resumed");
        }
        assert_eq!(server.requests(), STORE_NAMES.len() + BOUND + 2);
    })
    .await;
}

#[tokio::test]
async fn plain_http_passes_through_without_tls() {
    bounded(TEST_LIMIT, "the test", async {
        let ca = Ca::new("test ca");
        // A server with no TLS at all: a ClientHello would make it fail.
        let server = TlsServer::start(&good_leaf(&ca), Mode::Plain).await;
        let uri: Uri = format!("http://127.0.0.1:{}/", server.addr.port())
            .parse()
            .unwrap();

        let mut connector = SharedTlsConnector::from_config(tcp(), client_config(&ca));
        let io = connector
            .ready()
            .await
            .unwrap()
            .call(uri.clone())
            .await
            .unwrap();
        assert!(matches!(io, MaybeHttpsStream::Http(_)), "{io:?}");
        drop(io);

        let client: TestClient<_> = Client::builder(TokioExecutor::new()).build(connector);
        let (version, _) = get(&client, uri).await.unwrap();
        assert_eq!(version, Version::HTTP_11);
        assert_eq!(server.requests(), 1);
    })
    .await;
}

#[tokio::test]
async fn unusable_uris_give_typed_errors_without_connecting() {
    bounded(TEST_LIMIT, "the test", async {
        let ca = Ca::new("test ca");
        let mut connector = SharedTlsConnector::from_config(tcp(), client_config(&ca));
        let mut kind_of = async |uri: Uri| {
            let err = connector
                .ready()
                .await
                .unwrap()
                .call(uri)
                .await
                .unwrap_err();
            let err = err
                .downcast::<TlsConnectError>()
                .expect("a TlsConnectError");
            (err.kind(), err.to_string())
        };

        let (kind, msg) = kind_of(Uri::from_static("ftp://127.0.0.1:1/")).await;
        assert_eq!(kind, TlsConnectErrorKind::UnsupportedScheme);
        assert_eq!(msg, "unsupported uri scheme `ftp`");
        let (kind, msg) = kind_of(Uri::from_static("/relative")).await;
        assert_eq!(kind, TlsConnectErrorKind::UnsupportedScheme);
        assert_eq!(msg, "uri has no scheme");
        let (kind, _) = kind_of(Uri::from_static("https://bad_host..name:1/")).await;
        assert_eq!(kind, TlsConnectErrorKind::InvalidServerName);
        if let Ok(uri) = "https://:1/".parse::<Uri>() {
            let (kind, _) = kind_of(uri).await;
            assert_eq!(kind, TlsConnectErrorKind::MissingHost);
        }
    })
    .await;
}

#[tokio::test]
async fn connect_failure_is_typed_with_inner_source() {
    bounded(TEST_LIMIT, "the test", async {
        // Bind then drop a listener: the port is very likely closed.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let ca = Ca::new("test ca");
        let mut connector = SharedTlsConnector::from_config(tcp(), client_config(&ca));
        let err = connector
            .ready()
            .await
            .unwrap()
            .call(server_url(addr, "127.0.0.1"))
            .await
            .unwrap_err();
        let err = err.downcast::<TlsConnectError>().unwrap();
        assert_eq!(err.kind(), TlsConnectErrorKind::Connect);
        assert_eq!(err.to_string(), "connect failed");
        assert!(err.source().is_some());
        assert!(err.rustls_error().is_none());
    })
    .await;
}

/// The only test in this binary that touches the process-wide shared
/// configuration, so it observes the first use.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_first_use_builds_the_shared_config_once() {
    bounded(TEST_LIMIT, "the test", async {
        const TASKS: usize = 64;
        assert_eq!(
            shared_config_build_count(),
            0,
            "shared config used before this test"
        );
        // Building connectors and clients does not build the configuration.
        let connector = SharedTlsConnector::tcp();
        let _client: TestClient<_> = Client::builder(TokioExecutor::new()).build(connector.clone());
        assert_eq!(shared_config_build_count(), 0);

        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let barrier = barrier.clone();
                let connector = connector.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    if i % 2 == 0 {
                        shared_config().unwrap()
                    } else {
                        connector.config().unwrap()
                    }
                })
            })
            .collect();
        let mut configs = Vec::new();
        for task in tasks {
            configs.push(task.await.unwrap());
        }
        assert_eq!(shared_config_build_count(), 1);
        assert!(configs.iter().all(|c| Arc::ptr_eq(c, &configs[0])));
        assert_eq!(
            configs[0].alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(Arc::ptr_eq(
            &SharedTlsConnectorLayer::new()
                .layer(tcp())
                .config()
                .unwrap(),
            &configs[0]
        ));
        assert_eq!(shared_config_build_count(), 1);
    })
    .await;
}

// ------------------------------------------------ composition with the crate

mod composition {
    use super::*;
    use tower::ServiceBuilder;
    use tower_conn_lifecycle::connect_timeout::ConnectTimeoutLayer;
    use tower_conn_lifecycle::phase_timeout::{Elapsed, Phase};
    use tower_conn_lifecycle::track::{ConnectionState, TrackConnectionsLayer};

    /// Generous: a loopback TCP + TLS handshake takes milliseconds.
    const CONNECT_LIMIT: Duration = Duration::from_secs(5);

    /// PhaseTimeout (whose request bodies announce their attempts) over
    /// hyper-util's client, with the tracker placed *inside* TLS.
    struct InsideTls {
        client: tower_conn_lifecycle::phase_timeout::PhaseTimeout<InsideTlsPool>,
    }

    type InsideTlsPool =
        Client<SharedTlsConnector<common::Tracked>, tower_conn_lifecycle::RequestBody>;

    impl InsideTls {
        fn new(ca: &Ca) -> Self {
            let connector = ServiceBuilder::new()
                .layer(SharedTlsConnectorLayer::from_config(client_config(ca)))
                .layer(TrackConnectionsLayer::new())
                .service(tcp());
            let client = Client::builder(TokioExecutor::new()).build(connector);
            let client = ServiceBuilder::new()
                .layer(
                    tower_conn_lifecycle::phase_timeout::PhaseTimeoutLayer::new()
                        .read(CONNECT_LIMIT),
                )
                .service(client);
            InsideTls { client }
        }

        /// GETs `server` by name: the HTTP version, the connection's
        /// tracked state and the body (the server's view of the version).
        async fn get(&self, server: &TlsServer) -> (Version, ConnectionState, Bytes) {
            use tower::ServiceExt;
            let req = http::Request::get(server.url("localhost"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = self.client.clone().oneshot(req).await.unwrap();
            let version = response.version();
            let state = response
                .extensions()
                .get::<ConnectionState>()
                .expect("the tracker's state in the response extensions")
                .clone();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (version, state, body)
        }
    }

    /// A tracker placed *inside* TLS (the TLS connector wraps it) sees
    /// ciphertext and never ALPN; the request side tells it the connection
    /// is HTTP/2, so HTTP/1 rules (exchange counting, poisoning) are never
    /// applied to a multiplexed connection.
    #[tokio::test]
    async fn a_tracker_inside_tls_learns_the_connection_is_http2() {
        bounded(TEST_LIMIT, "the test", async {
            let (ca, mut server) = ca_and_server(Mode::H2Capable).await;
            let client = InsideTls::new(&ca);
            for round in 1..=2u64 {
                let (version, state, body) = client.get(&server).await;
                assert_eq!(version, Version::HTTP_2);
                assert!(state.is_http2(), "round {round}");
                assert_eq!(&body[..], b"HTTP/2.0");
                assert!(!state.is_poisoned());
            }
            assert_eq!(server.requests(), 2);
            let (kind, _, alpn) = expect_done(server.next_handshake().await);
            assert_eq!(kind, Some(HandshakeKind::Full));
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        })
        .await;
    }

    /// A tracker inside TLS on HTTP/1: its IO sees the handshake's writes
    /// and reads first, yet each request's attempt opens at its head (the
    /// announcement pairs with the head's first write), so the record of
    /// the exchange is the request's and exact.
    #[tokio::test]
    async fn a_tracker_inside_tls_records_each_http1_request_exactly() {
        use tower_conn_lifecycle::track::ExchangeOutcome;
        bounded(TEST_LIMIT, "the test", async {
            let (ca, mut server) = ca_and_server(Mode::Http1Only).await;
            let client = InsideTls::new(&ca);
            let mut numbers = Vec::new();
            for _ in 0..2 {
                let (version, state, body) = client.get(&server).await;
                assert_eq!(version, Version::HTTP_11);
                assert_eq!(&body[..], b"HTTP/1.1");
                let e = state.info();
                assert!(e.is_exact(), "{e:?}");
                assert_eq!(e.outcome(), ExchangeOutcome::Completed, "{e:?}");
                assert!(!state.is_http2() && !state.is_poisoned());
                numbers.push((state.info().connection_id(), e.request_number()));
                // Let hyper-util put the connection back for the next one.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The same connection, one exchange after the other.
            assert_eq!(numbers[0].0, numbers[1].0);
            assert_eq!(numbers[1].1, numbers[0].1 + 1);
            assert_eq!(server.requests(), 2);
            let (kind, _, alpn) = expect_done(server.next_handshake().await);
            assert_eq!(kind, Some(HandshakeKind::Full));
            assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        })
        .await;
    }

    #[tokio::test]
    async fn connect_timeout_over_tracker_over_shared_tls() {
        bounded(TEST_LIMIT, "the test", async {
            let (ca, mut server) = ca_and_server(Mode::H2Capable).await;
            let track = TrackConnectionsLayer::new();
            let stats = track.stats();
            let connector = ServiceBuilder::new()
                .layer(ConnectTimeoutLayer::new(CONNECT_LIMIT))
                .layer(track)
                .layer(SharedTlsConnectorLayer::from_config(client_config(&ca)))
                .service(tcp());
            let client: TestClient<_> = Client::builder(TokioExecutor::new()).build(connector);

            let response = client.get(server.url("localhost")).await.unwrap();
            // ALPN's h2 survives the tracker's Connection delegation.
            assert_eq!(response.version(), Version::HTTP_2);
            let state = response
                .extensions()
                .get::<ConnectionState>()
                .expect("the tracker's state in the response extensions")
                .clone();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"HTTP/2.0");
            // The tracker sits above TLS: it counts plaintext bytes, and
            // some were written and read.
            assert!(state.bytes_written() > 0 && state.bytes_read() > 0);
            assert_eq!(stats.opened(), 1);
            assert_eq!(server.requests(), 1);
            let (kind, sni, alpn) = expect_done(server.next_handshake().await);
            assert_eq!(kind, Some(HandshakeKind::Full));
            assert_eq!(sni.as_deref(), Some("localhost"));
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        })
        .await;
    }

    /// A server that accepts TCP and never answers the ClientHello: the
    /// connect deadline covers the TLS handshake.
    #[tokio::test]
    async fn connect_timeout_covers_the_tls_handshake() {
        bounded(TEST_LIMIT, "the test", async {
            const LIMIT: Duration = Duration::from_millis(200);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (held_tx, mut held_rx) = mpsc::unbounded_channel();
            let server = tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    // Hold the connection open, silent.
                    let _ = held_tx.send(tcp);
                }
            });

            let ca = Ca::new("test ca");
            let connector = ServiceBuilder::new()
                .layer(ConnectTimeoutLayer::new(LIMIT))
                .layer(TrackConnectionsLayer::new())
                .layer(SharedTlsConnectorLayer::from_config(client_config(&ca)))
                .service(tcp());
            let client: TestClient<_> = Client::builder(TokioExecutor::new()).build(connector);

            let err = get(&client, server_url(addr, "localhost"))
                .await
                .unwrap_err();
            let elapsed = find_cause::<Elapsed>(&*err).expect("an Elapsed in the chain");
            assert_eq!(elapsed.phase(), Phase::Connect);
            // TCP did connect: the timeout hit during the handshake.
            let held = held_rx
                .try_recv()
                .expect("the server accepted the TCP connection");
            drop(held);
            server.abort();
        })
        .await;
    }
}
