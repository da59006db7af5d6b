//! A test CA with a `localhost` leaf, and a TLS server on 127.0.0.1 (ALPN
//! `h2` and `http/1.1`) that answers with the HTTP version it served. Shared
//! by `tests/reqwest.rs` and `tests/full_stack.rs`.
#![allow(dead_code)] // each includer uses part of it

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{HandshakeKind, RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// A test CA and a `localhost` leaf it signed.
pub struct Pki {
    pub roots: RootCertStore,
    leaf: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "reqwest test ca");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        Pki {
            roots,
            leaf: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }
}

/// A TLS server on 127.0.0.1 (ALPN `h2` and `http/1.1`, hyper-util's auto
/// server) that reports each handshake's kind and answers with the HTTP
/// version it served.
pub struct TlsServer {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    handshakes: mpsc::UnboundedReceiver<Result<Option<HandshakeKind>, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsServer {
    pub async fn start(pki: &Pki) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The provider the crate's configurations use in this process, so
        // both ends prefer the same key exchange group (no HelloRetryRequest
        // in the handshake kinds the tests check).
        let provider = tower_conn_lifecycle::tls::config_with_roots(RootCertStore::empty())
            .unwrap()
            .crypto_provider()
            .clone();
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(pki.leaf.clone(), pki.key.clone_key())
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let requests = Arc::new(AtomicUsize::new(0));
        let (tx, handshakes) = mpsc::unbounded_channel();
        let counter = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counter, tx) = (acceptor.clone(), counter.clone(), tx.clone());
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(tls.get_ref().1.handshake_kind()));
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let body = Full::new(Bytes::from(format!("{:?}", req.version())));
                        async move { Ok::<_, Infallible>(Response::new(body)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsServer {
            addr,
            requests,
            handshakes,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}/", self.addr.port())
    }

    /// The next handshake's kind (bounded: 20 s).
    pub async fn next_handshake(&mut self) -> Result<Option<HandshakeKind>, String> {
        tokio::time::timeout(std::time::Duration::from_secs(20), self.handshakes.recv())
            .await
            .expect("no handshake within 20 s")
            .expect("server stopped")
    }
}
