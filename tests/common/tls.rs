//! The TLS tests' loopback server (certificates from [`super::pki`]), the
//! crypto providers they choose between, and a GET through the crate's
//! connector.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, HandshakeKind, NamedGroup, RootCertStore};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower_conn_lifecycle::tls::{config_with_roots, SharedTlsConnector};
use tower_conn_lifecycle::BoxError;

use super::pki::{Ca, Leaf};
use super::{bounded, STEP_LIMIT};

/// The crypto provider the crate's configurations use in this test binary
/// (found without touching the shared configuration, and without installing
/// a process default). Servers use it too, so both ends prefer the same key
/// exchange group and a handshake is `Full`, not
/// `FullWithHelloRetryRequest`, whichever provider that is.
pub fn provider() -> Arc<CryptoProvider> {
    config_with_roots(RootCertStore::empty())
        .unwrap()
        .crypto_provider()
        .clone()
}

/// A client configuration trusting `ca`, with the crate's defaults.
pub fn client_config(ca: &Ca) -> Arc<ClientConfig> {
    Arc::new(config_with_roots(ca.roots()).unwrap())
}

/// rustls's own constructor for the provider of this build: aws-lc-rs when
/// the crate's `aws-lc-rs` feature is on, else *ring* (the tests always
/// have it).
pub fn rustls_provider() -> CryptoProvider {
    #[cfg(feature = "aws-lc-rs")]
    {
        rustls::crypto::aws_lc_rs::default_provider()
    }
    #[cfg(not(feature = "aws-lc-rs"))]
    {
        // Deprecated from rustls 0.23.48 (no post-quantum key exchange),
        // with no other constructor for *ring*.
        #[allow(deprecated)]
        rustls::crypto::ring::default_provider()
    }
}

/// `provider` with one key exchange group, `group`: a provider whose use the
/// server can see.
pub fn only_group(provider: &CryptoProvider, group: NamedGroup) -> CryptoProvider {
    CryptoProvider {
        kx_groups: provider
            .kx_groups
            .iter()
            .copied()
            .filter(|g| g.name() == group)
            .collect(),
        ..provider.clone()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// TLS, ALPN `h2` + `http/1.1`, hyper-util's auto server.
    H2Capable,
    /// TLS, ALPN `http/1.1` only, hyper's HTTP/1 server.
    Http1Only,
    /// No TLS at all; hyper's HTTP/1 server.
    Plain,
}

/// What the server saw of one TLS connection it completed a handshake on.
#[derive(Debug, PartialEq)]
pub struct Handshake {
    pub kind: Option<HandshakeKind>,
    pub sni: Option<String>,
    pub alpn: Option<Vec<u8>>,
    /// The key exchange group negotiated (the server-side fact that tells
    /// which provider the client used).
    pub group: Option<NamedGroup>,
}

/// A loopback server that answers every request with the HTTP version it
/// served (`HTTP/1.1`, `HTTP/2.0`), counts the requests its HTTP layer saw,
/// and reports every TLS connection's handshake, or its failure.
pub struct TlsServer {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    handshakes: mpsc::UnboundedReceiver<Result<Handshake, String>>,
    task: JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsServer {
    /// On 127.0.0.1, presenting `leaf`, on [`provider`].
    pub async fn start(leaf: &Leaf, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, leaf, mode, provider())
    }

    /// On `listener` (a loopback one), presenting `leaf`, on `provider`.
    pub fn start_on(
        listener: TcpListener,
        leaf: &Leaf,
        mode: Mode,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self::serve(listener, leaf, mode, provider, None, Duration::ZERO)
    }

    /// On 127.0.0.1, presenting `leaf`, holding each response until
    /// `burst` requests wait for theirs (each group of `burst` requests is
    /// in flight at once: one connection each, on HTTP/1).
    pub async fn start_in_bursts(leaf: &Leaf, mode: Mode, burst: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hold = Arc::new(tokio::sync::Barrier::new(burst));
        Self::serve(listener, leaf, mode, provider(), Some(hold), Duration::ZERO)
    }

    /// On 127.0.0.1, presenting `leaf`, starting each TLS handshake
    /// `delay` after the TCP accept (a far server; its requests are
    /// answered at once).
    pub async fn start_slow_handshakes(leaf: &Leaf, mode: Mode, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, leaf, mode, provider(), None, delay)
    }

    fn serve(
        listener: TcpListener,
        leaf: &Leaf,
        mode: Mode,
        provider: Arc<CryptoProvider>,
        hold: Option<Arc<tokio::sync::Barrier>>,
        handshake_delay: Duration,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        assert!(addr.ip().is_loopback());
        let alpn: &[&[u8]] = match mode {
            Mode::H2Capable => &[b"h2", b"http/1.1"],
            _ => &[b"http/1.1"],
        };
        let acceptor = TlsAcceptor::from(Arc::new(leaf.server_config(provider, alpn)));
        let requests = Arc::new(AtomicUsize::new(0));
        let (tx, handshakes) = mpsc::unbounded_channel();
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counter, tx) = (acceptor.clone(), counter.clone(), tx.clone());
                let hold = hold.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let body = Full::new(Bytes::from(format!("{:?}", req.version())));
                        let hold = hold.clone();
                        async move {
                            if let Some(hold) = hold {
                                hold.wait().await;
                            }
                            Ok::<_, Infallible>(Response::new(body))
                        }
                    });
                    if mode == Mode::Plain {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                        return;
                    }
                    tokio::time::sleep(handshake_delay).await;
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let conn = tls.get_ref().1;
                    let _ = tx.send(Ok(Handshake {
                        kind: conn.handshake_kind(),
                        sni: conn.server_name().map(str::to_owned),
                        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                        group: conn.negotiated_key_exchange_group().map(|g| g.name()),
                    }));
                    if mode == Mode::H2Capable {
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            handshakes,
            task,
        }
    }

    /// On 127.0.0.1 on `provider`, HTTP/1.1, presenting a certificate of a
    /// new CA for `127.0.0.1`; and that CA.
    pub async fn with_provider(provider: Arc<CryptoProvider>) -> (Self, Ca) {
        let ca = Ca::new("test ca");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let leaf = ca.leaf(&["127.0.0.1"]);
        (
            Self::start_on(listener, &leaf, Mode::Http1Only, provider),
            ca,
        )
    }

    /// The TLS handshakes reported so far (none waited for).
    pub fn handshakes_so_far(&mut self) -> Vec<Result<Handshake, String>> {
        std::iter::from_fn(|| self.handshakes.try_recv().ok()).collect()
    }

    /// Requests the server's HTTP layer saw.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The next TLS connection's handshake as the server saw it, or why it
    /// failed (bounded: [`STEP_LIMIT`]).
    pub async fn next_handshake(&mut self) -> Result<Handshake, String> {
        bounded(STEP_LIMIT, "a handshake report", self.handshakes.recv())
            .await
            .expect("server stopped")
    }

    /// `https://{host}:{port}/`.
    pub fn url(&self, host: &str) -> Uri {
        url(self.addr, host)
    }
}

/// `https://{host}:{port of addr}/`.
pub fn url(addr: SocketAddr, host: &str) -> Uri {
    format!("https://{host}:{}/", addr.port()).parse().unwrap()
}

/// hyper-util's client over a `SharedTlsConnector` on `config`.
pub fn client_with(
    config: Arc<ClientConfig>,
) -> Client<SharedTlsConnector<HttpConnector>, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build(SharedTlsConnector::from_config(tcp(), config))
}

/// An `HttpConnector` that lets `https` URIs through to the TLS layer.
pub fn tcp() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http
}

/// GETs `uri` through `client` (bounded: [`STEP_LIMIT`]): the HTTP version
/// and the body (the server's view of the version).
pub async fn get<C>(
    client: &Client<C, Empty<Bytes>>,
    uri: Uri,
) -> Result<(Version, String), BoxError>
where
    C: tower::Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper::rt::Read
        + hyper::rt::Write
        + hyper_util::client::legacy::connect::Connection
        + Unpin
        + Send
        + 'static,
    C::Future: Send + Unpin + 'static,
    C::Error: Into<BoxError>,
{
    bounded(STEP_LIMIT, "a GET", async {
        let response = client.get(uri).await?;
        let version = response.version();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((version, String::from_utf8(body.to_vec()).unwrap()))
    })
    .await
}
