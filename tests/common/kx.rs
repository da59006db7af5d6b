//! For the crypto provider tests (`tests/tls_provider.rs`,
//! `tests/tls_process_default.rs`): a TLS server on 127.0.0.1 on a given
//! rustls crypto provider, with its own rcgen test CA, that reports the key
//! exchange group each handshake negotiated (the server-side fact that tells
//! which provider the client used), and a GET through the crate's connector.
#![allow(dead_code)] // each includer uses part of it

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, NamedGroup, RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower_conn_lifecycle::tls::SharedTlsConnector;
use tower_conn_lifecycle::BoxError;

/// A bound on anything that takes milliseconds, so a broken test fails
/// instead of hanging.
pub const LIMIT: Duration = Duration::from_secs(20);

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

pub struct KxServer {
    pub addr: SocketAddr,
    /// Roots that trust this server's certificate (for 127.0.0.1).
    pub roots: RootCertStore,
    groups: mpsc::UnboundedReceiver<Result<Option<NamedGroup>, String>>,
    task: JoinHandle<()>,
}

impl Drop for KxServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KxServer {
    pub async fn start(provider: Arc<CryptoProvider>) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let key: PrivateKeyDer<'static> = PrivatePkcs8KeyDer::from(key.serialize_der()).into();
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();

        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, groups) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let group = tls.get_ref().1.negotiated_key_exchange_group();
                    let _ = tx.send(Ok(group.map(|g| g.name())));
                    let svc = service_fn(|_: Request<hyper::body::Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            roots,
            groups,
            task,
        }
    }

    pub fn url(&self) -> Uri {
        format!("https://127.0.0.1:{}/", self.addr.port())
            .parse()
            .unwrap()
    }

    /// The key exchange group of the next handshake, as the server saw it.
    pub async fn next_group(&mut self) -> Result<Option<NamedGroup>, String> {
        tokio::time::timeout(LIMIT, self.groups.recv())
            .await
            .expect("the server reported no handshake")
            .expect("server stopped")
    }
}

/// GETs `uri` through a `SharedTlsConnector` on `config`; the body.
pub async fn get(config: Arc<ClientConfig>, uri: Uri) -> Result<Bytes, BoxError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let client = Client::builder(TokioExecutor::new())
        .build::<_, Empty<Bytes>>(SharedTlsConnector::from_config(http, config));
    let res = tokio::time::timeout(LIMIT, client.get(uri)).await??;
    Ok(res.into_body().collect().await?.to_bytes())
}
