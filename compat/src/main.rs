//! An application's uses of rustls, reqwest and tower-conn-lifecycle in one
//! dependency graph, the graph chosen by this crate's features (see
//! `Cargo.toml`; `compat/run` builds and runs every configuration). Every
//! server is on 127.0.0.1. Exit status 0 means nothing panicked and every
//! step gave the result the configuration calls for; a panic exits 101, any
//! other failure 1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_conn_lifecycle::tls::{self, SharedTlsConnector, TlsConnectError, TlsConnectErrorKind};
use tower_conn_lifecycle::{client, find_cause};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// This crate's own provider feature is on.
const CRATE_PROVIDER: bool = cfg!(any(
    feature = "lifecycle-ring",
    feature = "lifecycle-aws-lc-rs"
));
/// The providers rustls has compiled in, whoever turned them on.
const RUSTLS_AWS_LC: bool = cfg!(any(
    feature = "reqwest-default-tls",
    feature = "rustls-aws-lc",
    feature = "lifecycle-aws-lc-rs"
));
const RUSTLS_RING: bool = cfg!(any(feature = "rustls-ring", feature = "lifecycle-ring"));

/// A bound on every request: they take milliseconds on loopback.
const LIMIT: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> ExitCode {
    println!(
        "compat: rustls providers compiled in: aws-lc-rs {RUSTLS_AWS_LC}, ring {RUSTLS_RING}; \
         tower-conn-lifecycle provider feature: {CRATE_PROVIDER}"
    );
    match run().await {
        Ok(()) => {
            println!("compat: ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("compat: FAILED: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn check(ok: bool, what: impl std::fmt::Display) -> Result<(), Error> {
    if ok {
        println!("  ok: {what}");
        Ok(())
    } else {
        Err(format!("expected: {what}").into())
    }
}

fn is_no_provider(err: &(dyn std::error::Error + 'static)) -> bool {
    find_cause::<TlsConnectError>(err)
        .is_some_and(|e| e.kind() == TlsConnectErrorKind::NoCryptoProvider)
}

async fn run() -> Result<(), Error> {
    let plain = start_plain().await?;
    let plain_url = format!("http://{plain}/");

    println!("1. reqwest::Client::new() and an http:// request");
    let body = reqwest::Client::new()
        .get(&plain_url)
        .timeout(LIMIT)
        .send()
        .await?
        .text()
        .await?;
    check(body == "plain", "reqwest's own client works")?;

    println!("2. tower-conn-lifecycle before any process default provider");
    check(
        CryptoProvider::get_default().is_none(),
        "no process default yet",
    )?;
    let early = match tls::shared_config() {
        Ok(shared) => {
            check(
                CRATE_PROVIDER,
                "shared_config() built on the crate's provider",
            )?;
            Some(shared)
        }
        Err(e) => {
            check(
                !CRATE_PROVIDER && e.kind() == TlsConnectErrorKind::NoCryptoProvider,
                format_args!("shared_config() without a provider: a typed error ({e})"),
            )?;
            None
        }
    };
    let one_call = client::builder().build::<Empty<Bytes>>();
    let res = one_call
        .clone()
        .oneshot(http::Request::get(&plain_url).body(Empty::new())?)
        .await?;
    let body = res.into_body().collect().await?.to_bytes();
    check(&body[..] == b"plain", "client::builder() over http://")?;
    if !CRATE_PROVIDER {
        // Nothing connects: the provider is resolved before the TCP connect.
        let https = format!("https://{plain}/");
        let err = one_call
            .clone()
            .oneshot(http::Request::get(&https).body(Empty::new())?)
            .await
            .expect_err("https:// without a provider");
        check(
            is_no_provider(&*err),
            "client::builder() over https:// without a provider: NoCryptoProvider",
        )?;
        let err = get(SharedTlsConnector::tcp(), &https)
            .await
            .expect_err("https:// without a provider");
        check(
            is_no_provider(&*err),
            "SharedTlsConnector over https:// without a provider: NoCryptoProvider",
        )?;
    }

    println!("3. rustls::ClientConfig::builder()");
    if RUSTLS_AWS_LC != RUSTLS_RING {
        // With exactly one provider compiled in, rustls installs it as the
        // process default here (rustls's own rule, not this crate's).
        let _ = ClientConfig::builder();
        check(
            CryptoProvider::get_default().is_some(),
            "rustls chose its one provider",
        )?;
    } else {
        println!(
            "  skipped: rustls has {} compiled in, so it panics here by its own rule \
             (no configuration of compat/run has two; with none, this graph would have \
             no rustls at all without tower-conn-lifecycle)",
            if RUSTLS_AWS_LC {
                "two providers"
            } else {
                "no provider"
            }
        );
    }

    println!("4. tower-conn-lifecycle's shared TLS, real https:// requests");
    let shared = match tls::shared_config() {
        Ok(shared) => shared,
        Err(e) => {
            check(
                !CRATE_PROVIDER && CryptoProvider::get_default().is_none(),
                format_args!("no provider anywhere: https:// stays a typed error ({e})"),
            )?;
            return again_reqwest(&plain_url).await;
        }
    };
    match (&early, CryptoProvider::get_default()) {
        // Built once, before rustls installed a default: it keeps the
        // crate's provider.
        (Some(early), _) => check(
            Arc::ptr_eq(&shared, early),
            "the shared configuration was built once, on the crate's provider",
        )?,
        // Built now, after the install.
        (None, Some(default)) => check(
            Arc::ptr_eq(shared.crypto_provider(), default),
            "the shared configuration uses the process default",
        )?,
        (None, None) => check(false, "a provider behind the shared configuration")?,
    }
    let (tls_addr, roots) = start_tls(shared.crypto_provider().clone()).await?;
    let https = format!("https://{tls_addr}/");
    let config = Arc::new(tls::config_with_roots(roots)?);
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let body = get(
        SharedTlsConnector::from_config(http, config.clone()),
        &https,
    )
    .await?;
    check(&body[..] == b"tls", "SharedTlsConnector over https://")?;
    let res = client::builder()
        .tls_config(config.clone())
        .build::<Empty<Bytes>>()
        .oneshot(http::Request::get(&https).body(Empty::new())?)
        .await?;
    let body = res.into_body().collect().await?.to_bytes();
    check(&body[..] == b"tls", "client::builder() over https://")?;
    #[cfg(feature = "lifecycle-reqwest-rustls")]
    {
        use tower_conn_lifecycle::reqwest::ClientBuilderExt;

        let body = reqwest::Client::builder()
            .tls_config(&config)
            .build()?
            .get(&https)
            .timeout(LIMIT)
            .send()
            .await?
            .text()
            .await?;
        check(body == "tls", "reqwest with the crate's configuration")?;
        reqwest::Client::builder().shared_tls()?.build()?;
        check(true, "reqwest with shared_tls()")?;
    }
    again_reqwest(&plain_url).await
}

async fn again_reqwest(plain_url: &str) -> Result<(), Error> {
    println!("5. reqwest::Client::new() again");
    let body = reqwest::Client::new()
        .get(plain_url)
        .timeout(LIMIT)
        .send()
        .await?
        .text()
        .await?;
    check(body == "plain", "reqwest's own client still works")
}

/// A GET through `connector`; the response body.
async fn get(connector: SharedTlsConnector<HttpConnector>, url: &str) -> Result<Bytes, Error> {
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let res = tokio::time::timeout(LIMIT, client.get(url.parse()?)).await??;
    Ok(res.into_body().collect().await?.to_bytes())
}

/// An HTTP/1 server on 127.0.0.1 that answers every request with `body`,
/// over TLS if `tls` is given.
fn serve(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, body: &'static [u8]) {
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_: http::Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(body))))
                });
                let http1 = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => drop(http1.serve_connection(TokioIo::new(tcp), svc).await),
                    Some(tls) => {
                        if let Ok(tls) = tls.accept(tcp).await {
                            drop(http1.serve_connection(TokioIo::new(tls), svc).await);
                        }
                    }
                }
            });
        }
    });
}

async fn start_plain() -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    serve(listener, None, b"plain");
    Ok(addr)
}

/// A TLS server on `provider` with an rcgen certificate for 127.0.0.1; its
/// address and the roots that trust it.
async fn start_tls(provider: Arc<CryptoProvider>) -> Result<(SocketAddr, RootCertStore), Error> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &ca)?;
    let key: PrivateKeyDer<'static> = PrivatePkcs8KeyDer::from(key.serialize_der()).into();
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone())?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    serve(
        listener,
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        b"tls",
    );
    Ok((addr, roots))
}
