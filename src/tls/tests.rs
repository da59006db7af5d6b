//! Unit tests: errors, URI checks before any connect, the configuration's
//! session cache (in-memory handshakes, no sockets), and what the connector's
//! IO reports to hyper-util (loopback TLS servers on 127.0.0.1:0).

use std::error::Error as _;
use std::future::{ready, Ready};
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Extensions, Uri};
use hyper_util::client::legacy::connect::{Connection, HttpConnector, HttpInfo};
use hyper_util::rt::TokioIo;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, Connection as TlsConnection, HandshakeKind,
    RootCertStore, ServerConfig, ServerConnection,
};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, Service, ServiceExt};

use super::config::{choose_provider, SESSION_CACHE_SERVERS};
use super::*;
use crate::BoxError;

// ------------------------------------------------------------------ errors

#[test]
fn display_names_each_kind_in_lowercase() {
    let cases = [
        (
            TlsConnectError::unsupported_scheme(Some("ftp")),
            "unsupported uri scheme `ftp`",
        ),
        (
            TlsConnectError::unsupported_scheme(None),
            "uri has no scheme",
        ),
        (
            TlsConnectError::new(TlsConnectErrorKind::MissingHost),
            "https uri has no host",
        ),
        (
            TlsConnectError::new(TlsConnectErrorKind::InvalidServerName),
            "invalid tls server name",
        ),
        (
            TlsConnectError::connect(io::Error::other("refused")),
            "connect failed",
        ),
        (
            TlsConnectError::handshake(Box::new(io::Error::other("reset"))),
            "tls handshake failed",
        ),
    ];
    for (err, expected) in cases {
        assert_eq!(err.to_string(), expected);
    }
}

#[test]
fn connect_error_keeps_the_inner_error_as_source() {
    let err = TlsConnectError::connect(io::Error::new(io::ErrorKind::ConnectionRefused, "no"));
    assert_eq!(err.kind(), TlsConnectErrorKind::Connect);
    let source = err.source().expect("a source");
    let io = source.downcast_ref::<io::Error>().expect("the io::Error");
    assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);
    assert!(err.rustls_error().is_none());
}

/// hyper-rustls reports a rejected certificate as
/// `io::Error::other(tokio-rustls's io::Error(InvalidData, rustls::Error))`.
#[test]
fn handshake_error_peels_the_io_wrappers_down_to_the_rustls_error() {
    let rejected = rustls::Error::InvalidCertificate(CertificateError::Expired);
    let tokio_rustls = io::Error::new(io::ErrorKind::InvalidData, rejected.clone());
    let hyper_rustls: BoxError = Box::new(io::Error::other(tokio_rustls));

    let err = TlsConnectError::handshake(hyper_rustls);
    assert_eq!(err.kind(), TlsConnectErrorKind::Tls);
    assert_eq!(err.rustls_error(), Some(&rejected));
    // It is the direct source, not hidden inside an io::Error.
    let source = err.source().unwrap();
    assert_eq!(source.downcast_ref::<rustls::Error>(), Some(&rejected));
}

#[test]
fn handshake_error_without_rustls_keeps_the_innermost_io_error() {
    let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
    let err = TlsConnectError::handshake(Box::new(io::Error::other(eof)));
    assert_eq!(err.kind(), TlsConnectErrorKind::Tls);
    assert!(err.rustls_error().is_none());
    let io = err.source().unwrap().downcast_ref::<io::Error>().unwrap();
    assert_eq!(io.kind(), io::ErrorKind::UnexpectedEof);
    assert!(io.get_ref().is_none());

    // An io::Error carrying some other payload is kept whole.
    let custom = io::Error::other("peer went away");
    let err = TlsConnectError::handshake(Box::new(custom));
    let io = err.source().unwrap().downcast_ref::<io::Error>().unwrap();
    assert_eq!(io.to_string(), "peer went away");
}

#[test]
fn debug_shows_kind_scheme_and_source() {
    let debug = format!("{:?}", TlsConnectError::unsupported_scheme(Some("ftp")));
    assert!(
        debug.contains("UnsupportedScheme") && debug.contains("ftp"),
        "{debug}"
    );
    let debug = format!(
        "{:?}",
        TlsConnectError::connect(io::Error::other("refused"))
    );
    assert!(
        debug.contains("Connect") && debug.contains("refused"),
        "{debug}"
    );
}

// ----------------------------------------------------------- test PKI

/// The integration tests' test PKI (`tests/common/pki.rs`).
#[path = "../../tests/common/pki.rs"]
#[allow(unreachable_pub)] // public for the integration tests
mod pki;

use pki::Ca;

/// A client configuration trusting `ca`, with the crate's defaults.
fn client_config(ca: &Ca) -> ClientConfig {
    config_with_roots(ca.roots()).unwrap()
}

/// A server configuration for `names` signed by `ca`, offering `alpn`.
/// Stateless tickets, so the server never forgets a session the client kept.
fn server_config(ca: &Ca, names: &[&str], alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let mut config = ca.leaf(names).server_config(some_provider(), alpn);
    config.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    Arc::new(config)
}

// ------------------------------------------- configuration (in memory)

/// Moves everything `from` wants to write into `to`; whether anything moved.
fn pump(from: &mut TlsConnection, to: &mut TlsConnection) -> bool {
    let mut moved = false;
    while from.wants_write() {
        let mut wire = Vec::new();
        from.write_tls(&mut wire).unwrap();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
            to.process_new_packets().unwrap();
        }
        moved = true;
    }
    moved
}

/// One complete handshake in memory (tickets included), as the client saw it.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>, name: &str) -> HandshakeKind {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut c = TlsConnection::from(ClientConnection::new(client.clone(), name).unwrap());
    let mut s = TlsConnection::from(ServerConnection::new(server.clone()).unwrap());
    while pump(&mut c, &mut s) | pump(&mut s, &mut c) {}
    assert!(!c.is_handshaking() && !s.is_handshaking());
    c.handshake_kind().unwrap()
}

/// The cache of [`config_with_roots`] (and so of [`shared_config`], built by
/// the same code) remembers exactly `SESSION_CACHE_SERVERS` servers and
/// evicts the oldest first.
#[test]
fn config_session_cache_remembers_128_servers_oldest_first() {
    assert_eq!(SESSION_CACHE_SERVERS, 128);
    let ca = Ca::new("test ca");
    let server = server_config(&ca, &["*.cache.test"], &[]);
    let client = Arc::new(client_config(&ca));
    let names: Vec<String> = (0..=SESSION_CACHE_SERVERS)
        .map(|i| format!("h{i}.cache.test"))
        .collect();
    for name in &names {
        assert_eq!(handshake(&client, &server, name), HandshakeKind::Full);
    }
    // The oldest still remembered resumes (so it holds 128 servers; resuming
    // does not reorder) ...
    assert_eq!(
        handshake(&client, &server, &names[1]),
        HandshakeKind::Resumed
    );
    // ... and the 129th newest was evicted (so it holds no more).
    assert_eq!(handshake(&client, &server, &names[0]), HandshakeKind::Full);
}

#[test]
fn alpn_override_shares_the_session_cache_but_not_the_alpn() {
    let ca = Ca::new("test ca");
    let server = server_config(&ca, &["a.test"], &[b"h2", b"http/1.1"]);
    let base = Arc::new(client_config(&ca));
    let layer = SharedTlsConnectorLayer::from_config(base.clone()).alpn_protocols([b"http/1.1"]);
    let http1 = layer.layer(()).config().unwrap();

    assert!(!Arc::ptr_eq(&base, &http1));
    assert_eq!(base.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(http1.alpn_protocols, [b"http/1.1".to_vec()]);
    assert!(Arc::ptr_eq(base.crypto_provider(), http1.crypto_provider()));

    assert_eq!(handshake(&base, &server, "a.test"), HandshakeKind::Full);
    assert_eq!(handshake(&http1, &server, "a.test"), HandshakeKind::Resumed);
}

#[test]
fn separately_built_configs_do_not_share_sessions() {
    let ca = Ca::new("test ca");
    let server = server_config(&ca, &["a.test"], &[]);
    let one = Arc::new(client_config(&ca));
    let other = Arc::new(client_config(&ca));
    assert_eq!(handshake(&one, &server, "a.test"), HandshakeKind::Full);
    assert_eq!(handshake(&other, &server, "a.test"), HandshakeKind::Full);
    assert_eq!(handshake(&one, &server, "a.test"), HandshakeKind::Resumed);

    let mut off = client_config(&ca);
    off.resumption = Resumption::disabled();
    let off = Arc::new(off);
    assert_eq!(handshake(&off, &server, "a.test"), HandshakeKind::Full);
    assert_eq!(handshake(&off, &server, "a.test"), HandshakeKind::Full);
}

#[test]
fn shared_config_is_built_once_and_used_by_default() {
    let config = shared_config().unwrap();
    assert!(Arc::ptr_eq(&config, &shared_config().unwrap()));
    assert_eq!(shared_config_build_count(), 1);
    assert_eq!(
        config.alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let of = |connector: SharedTlsConnector<_>| connector.config().unwrap();
    assert!(Arc::ptr_eq(&of(SharedTlsConnector::new(())), &config));
    assert!(Arc::ptr_eq(
        &of(SharedTlsConnectorLayer::new().layer(())),
        &config
    ));
    assert!(Arc::ptr_eq(
        &SharedTlsConnector::tcp().config().unwrap(),
        &config
    ));
    assert_eq!(shared_config_build_count(), 1);
}

/// The shared configuration with other ALPN protocols is cloned once, at
/// first use, for every clone of the connector (and every connector of the
/// layer), and keeps the shared session cache and provider.
#[test]
fn alpn_override_of_the_shared_config_is_cloned_once_lazily() {
    let layer = SharedTlsConnectorLayer::new().alpn_protocols([b"http/1.1"]);
    let one = layer.layer(());
    let other = one.clone();
    let third = layer.layer(());
    let config = one.config().unwrap();
    assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
    assert!(Arc::ptr_eq(&other.config().unwrap(), &config));
    assert!(Arc::ptr_eq(&third.config().unwrap(), &config));
    let shared = shared_config().unwrap();
    assert!(!Arc::ptr_eq(&shared, &config));
    assert!(Arc::ptr_eq(
        shared.crypto_provider(),
        config.crypto_provider()
    ));
    assert_eq!(shared_config_build_count(), 1);
}

// ------------------------------------------------------- crypto provider

/// A provider every rustls build here has: the crate's feature provider
/// (the tests always have `ring`).
fn some_provider() -> Arc<CryptoProvider> {
    super::config::feature_provider().expect("tests run with the `ring` feature")
}

#[test]
fn no_provider_is_a_typed_error_naming_the_fixes() {
    let err = choose_provider(None, || None).unwrap_err();
    assert_eq!(err.kind(), TlsConnectErrorKind::NoCryptoProvider);
    assert!(err.source().is_none());
    let message = err.to_string();
    for fix in ["process default", "`ring`", "`aws-lc-rs`"] {
        assert!(message.contains(fix), "{message}");
    }
}

#[test]
fn the_process_default_comes_before_the_feature_provider() {
    let installed = Arc::new(CryptoProvider {
        kx_groups: some_provider().kx_groups[..1].to_vec(),
        ..(*some_provider()).clone()
    });
    let feature = some_provider();
    let chosen = choose_provider(Some(&installed), || Some(feature.clone())).unwrap();
    assert!(Arc::ptr_eq(&chosen, &installed));
    let chosen = choose_provider(None, || Some(feature.clone())).unwrap();
    assert!(Arc::ptr_eq(&chosen, &feature));
}

#[test]
fn the_feature_provider_is_made_once_and_shared_by_configurations() {
    let a = config_with_roots(RootCertStore::empty()).unwrap();
    let b = config_with_roots(RootCertStore::empty()).unwrap();
    // Nothing in this test binary installs a process default.
    assert!(CryptoProvider::get_default().is_none());
    assert!(Arc::ptr_eq(a.crypto_provider(), b.crypto_provider()));
    assert!(Arc::ptr_eq(a.crypto_provider(), &some_provider()));
}

/// With `aws-lc-rs`, the post-quantum hybrid key exchange comes first (so
/// its key share is the one sent), whatever rustls version or features.
#[cfg(feature = "aws-lc-rs")]
#[test]
fn the_aws_lc_rs_feature_provider_prefers_post_quantum_key_exchange() {
    let provider = some_provider();
    assert_eq!(
        provider.kx_groups[0].name(),
        rustls::NamedGroup::X25519MLKEM768
    );
    // Nothing lost: the same groups as rustls's own provider.
    let mut ours: Vec<_> = provider.kx_groups.iter().map(|g| g.name()).collect();
    let mut theirs: Vec<_> = rustls::crypto::aws_lc_rs::default_provider()
        .kx_groups
        .iter()
        .map(|g| g.name())
        .collect();
    ours.sort_by_key(|g| u16::from(*g));
    theirs.sort_by_key(|g| u16::from(*g));
    assert_eq!(ours, theirs);
}

#[test]
fn a_provider_that_cannot_make_a_client_config_is_a_typed_error() {
    let useless = Arc::new(CryptoProvider {
        cipher_suites: Vec::new(),
        ..(*some_provider()).clone()
    });
    let err = config_with_provider(useless, None).unwrap_err();
    assert_eq!(err.kind(), TlsConnectErrorKind::NoCryptoProvider);
    assert!(err.rustls_error().is_some(), "{err:?}");
    assert_eq!(err.to_string(), "unusable rustls crypto provider");
}

#[test]
fn config_with_provider_uses_that_provider_and_the_crate_defaults() {
    let provider = Arc::new((*some_provider()).clone());
    let config = config_with_provider(provider.clone(), None).unwrap();
    assert!(Arc::ptr_eq(config.crypto_provider(), &provider));
    assert_eq!(
        config.alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let with_roots = config_with_provider(provider.clone(), RootCertStore::empty()).unwrap();
    assert!(Arc::ptr_eq(with_roots.crypto_provider(), &provider));
}

// ---------------------------------------- URI checks before any connect

/// An inner connector that records every URI it is asked for and fails
/// them all without touching the network.
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<Uri>>>,
    not_ready: bool,
}

impl Recorder {
    fn calls(&self) -> Vec<Uri> {
        self.calls.lock().unwrap().clone()
    }
}

impl Service<Uri> for Recorder {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Ready<io::Result<TokioIo<TcpStream>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.not_ready {
            Poll::Ready(Err(io::Error::other("inner not ready")))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        self.calls.lock().unwrap().push(uri);
        ready(Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "recorded",
        )))
    }
}

async fn connect_err<C>(connector: &mut SharedTlsConnector<C>, uri: &str) -> TlsConnectError
where
    SharedTlsConnector<C>: Service<Uri, Error = BoxError>,
    <SharedTlsConnector<C> as Service<Uri>>::Response: std::fmt::Debug,
{
    let uri: Uri = uri.parse().unwrap();
    let err = connector
        .ready()
        .await
        .unwrap()
        .call(uri)
        .await
        .unwrap_err();
    *err.downcast::<TlsConnectError>()
        .expect("a TlsConnectError")
}

#[tokio::test]
async fn unusable_uris_fail_before_the_inner_connector_is_called() {
    let inner = Recorder::default();
    let mut connector = SharedTlsConnector::from_config(
        inner.clone(),
        Arc::new(client_config(&Ca::new("test ca"))),
    );
    for (uri, kind) in [
        ("ftp://127.0.0.1:1/", TlsConnectErrorKind::UnsupportedScheme),
        ("ws://127.0.0.1:1/", TlsConnectErrorKind::UnsupportedScheme),
        ("/relative", TlsConnectErrorKind::UnsupportedScheme),
        (
            "https://bad_host..name:1/",
            TlsConnectErrorKind::InvalidServerName,
        ),
        ("https://:1/", TlsConnectErrorKind::MissingHost),
    ] {
        assert_eq!(connect_err(&mut connector, uri).await.kind(), kind, "{uri}");
    }
    assert!(
        inner.calls().is_empty(),
        "connected for {:?}",
        inner.calls()
    );
}

#[tokio::test]
async fn inner_failures_are_connect_errors_for_https_and_untouched_for_http() {
    let inner = Recorder::default();
    let mut connector = SharedTlsConnector::from_config(
        inner.clone(),
        Arc::new(client_config(&Ca::new("test ca"))),
    );
    for uri in ["https://localhost:1/", "HTTPS://[::1]:1/"] {
        let err = connect_err(&mut connector, uri).await;
        assert_eq!(err.kind(), TlsConnectErrorKind::Connect, "{uri}");
        let io = err.source().unwrap().downcast_ref::<io::Error>().unwrap();
        assert_eq!(io.to_string(), "recorded");
    }
    // A plain http:// connect failure is not a TLS error: the inner
    // connector's error comes back as it is.
    let err = connector
        .ready()
        .await
        .unwrap()
        .call(Uri::from_static("http://localhost:1/"))
        .await
        .unwrap_err();
    assert!(!err.is::<TlsConnectError>(), "{err:?}");
    assert_eq!(
        err.downcast_ref::<io::Error>().unwrap().to_string(),
        "recorded"
    );
    // The inner connector got each URI unchanged.
    let calls: Vec<String> = inner.calls().iter().map(Uri::to_string).collect();
    assert_eq!(
        calls,
        [
            "https://localhost:1/",
            "https://[::1]:1/",
            "http://localhost:1/"
        ]
    );

    let mut not_ready = SharedTlsConnector::new(Recorder {
        not_ready: true,
        ..Recorder::default()
    });
    let err = std::future::poll_fn(|cx| not_ready.poll_ready(cx))
        .await
        .unwrap_err();
    let err = err.downcast::<TlsConnectError>().unwrap();
    assert_eq!(err.kind(), TlsConnectErrorKind::Connect);
    assert_eq!(err.source().unwrap().to_string(), "inner not ready");
}

// ----------------------------------------- the IO (loopback TLS servers)

type ServerTask = tokio::task::JoinHandle<io::Result<Option<Vec<u8>>>>;

/// Accepts one TLS connection on 127.0.0.1; the task ends with the ALPN
/// protocol the server negotiated, or the handshake's error.
async fn tls_server_once(config: Arc<ServerConfig>) -> (u16, ServerTask) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
        Ok(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
    });
    (port, task)
}

fn tcp() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http
}

#[tokio::test]
async fn connected_reports_h2_only_when_alpn_selected_it_and_keeps_inner_extras() {
    let ca = Ca::new("test ca");
    let client = Arc::new(client_config(&ca));
    for (offered, negotiated_h2) in [
        (&[&b"h2"[..], b"http/1.1"][..], true),
        (&[&b"http/1.1"[..]][..], false),
    ] {
        let (port, server) = tls_server_once(server_config(&ca, &["localhost"], offered)).await;
        let mut connector = SharedTlsConnector::from_config(tcp(), client.clone());
        let uri: Uri = format!("https://localhost:{port}/").parse().unwrap();
        let io = connector.ready().await.unwrap().call(uri).await.unwrap();
        assert!(matches!(io, MaybeHttpsStream::Https(_)));

        let alpn = server.await.unwrap().unwrap();
        assert_eq!(alpn.as_deref(), Some(offered[0]));
        let connected = io.connected();
        assert_eq!(connected.is_negotiated_h2(), negotiated_h2);
        // The TCP connector's extra (its HttpInfo) survives the TLS layer.
        let mut extensions = Extensions::new();
        connected.get_extras(&mut extensions);
        let info = extensions
            .get::<HttpInfo>()
            .expect("the inner IO's HttpInfo");
        assert_eq!(info.remote_addr().port(), port);
        assert!(info.remote_addr().ip().is_loopback());
    }
}

#[tokio::test]
async fn rejected_certificate_is_a_typed_tls_error_with_the_rustls_cause() {
    let ca = Ca::new("test ca");
    let (port, server) = tls_server_once(server_config(&ca, &["other.test"], &[])).await;
    let mut connector = SharedTlsConnector::from_config(tcp(), Arc::new(client_config(&ca)));
    let err = connect_err(&mut connector, &format!("https://localhost:{port}/")).await;
    assert_eq!(err.kind(), TlsConnectErrorKind::Tls);
    let rejected = err.rustls_error().expect("the rustls error");
    assert!(
        matches!(rejected, rustls::Error::InvalidCertificate(_))
            && format!("{rejected:?}").contains("NotValidForName"),
        "{err:?}"
    );
    // The server's side of the handshake failed too (the client's alert).
    assert!(server.await.unwrap().is_err());
}
