//! The connector service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, Write};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio_rustls::TlsConnector;
use tower_service::Service;

use super::{
    shared_config, MaybeHttpsStream, ResponseFuture, TlsConnectError, TlsConnectErrorKind,
};
use crate::BoxError;

/// A connector that adds TLS (rustls, `ring`) to an inner connector for
/// `https://` URIs and passes `http://` through untouched.
///
/// It is a `Service<Uri>` on the connection plane, usable as hyper-util's
/// client connector. The response is a [`MaybeHttpsStream`] over the inner
/// connector's IO.
///
/// * `https://host`: the inner connector connects (it receives the URI
///   unchanged, so hyper-util's `HttpConnector` needs
///   [`enforce_http(false)`](HttpConnector::enforce_http), as
///   [`SharedTlsConnector::tcp`] sets), then the TLS handshake runs with the
///   host as server name. Names are sent as SNI and verified against the
///   certificate's DNS names; IP literals (`https://127.0.0.1`,
///   `https://[::1]`) are verified against its IP addresses and send no SNI.
/// * `http://`: the inner IO is returned as [`MaybeHttpsStream::Http`]; no
///   TLS happens.
/// * Any other scheme fails with [`TlsConnectErrorKind::UnsupportedScheme`].
///
/// # Configuration
///
/// [`new`](Self::new) uses the process-wide [`shared_config`], resolved at
/// the first `https://` connect (so building a connector or a client never
/// loads certificates). [`from_config`](Self::from_config) takes any rustls
/// configuration. TLS session resumption is shared by every connector (and
/// every clone) using the same configuration `Arc`.
///
/// # Errors
///
/// The service's error is a [`BoxError`] holding a [`TlsConnectError`]; the
/// inner connector's error and the [`rustls::Error`] are reachable through
/// `source()`.
///
/// # Cloning
///
/// A clone shares the configuration (and so the session store) and clones
/// the inner connector.
///
/// # Example
///
/// ```
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tower_conn_lifecycle::tls::SharedTlsConnector;
///
/// let client = Client::builder(TokioExecutor::new())
///     .build::<_, http_body_util::Empty<bytes::Bytes>>(SharedTlsConnector::tcp());
/// # let _ = client;
/// ```
#[derive(Clone, Debug)]
pub struct SharedTlsConnector<C> {
    inner: C,
    // `None`: the shared configuration, resolved on the first TLS connect.
    config: Option<Arc<ClientConfig>>,
}

impl<C> SharedTlsConnector<C> {
    /// Wraps `inner` with the process-wide [`shared_config`].
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            config: None,
        }
    }

    /// Wraps `inner` with a given rustls configuration (custom roots, a test
    /// CA, client certificates, ALPN, resumption store, ...).
    ///
    /// Its `alpn_protocols` decide HTTP/2: offer `h2` for hyper-util to use
    /// HTTP/2 where the server agrees.
    pub fn from_config(inner: C, config: Arc<ClientConfig>) -> Self {
        Self {
            inner,
            config: Some(config),
        }
    }

    /// Offers these ALPN protocols instead of the configuration's, for
    /// example `[b"http/1.1"]` to never negotiate HTTP/2.
    ///
    /// This clones the configuration once, now (building the shared one if
    /// needed); the clone keeps the same roots, provider and session store,
    /// so resumption is still shared with the original.
    pub fn alpn_protocols<I, P>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        self.config = Some(with_alpn(&self.config(), protocols));
        self
    }

    /// The rustls configuration used for `https://` (building the shared one
    /// if this connector uses it and it is not built yet).
    pub fn config(&self) -> Arc<ClientConfig> {
        match &self.config {
            Some(config) => config.clone(),
            None => shared_config(),
        }
    }

    /// The inner connector.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// The inner connector, mutably.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner connector.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl SharedTlsConnector<HttpConnector> {
    /// A connector over hyper-util's [`HttpConnector`] (with
    /// `enforce_http(false)`, so it accepts `https://` URIs) using the
    /// process-wide [`shared_config`].
    pub fn tcp() -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        Self::new(http)
    }
}

pub(crate) fn with_alpn<I, P>(config: &ClientConfig, protocols: I) -> Arc<ClientConfig>
where
    I: IntoIterator<Item = P>,
    P: AsRef<[u8]>,
{
    let mut config = config.clone();
    config.alpn_protocols = protocols.into_iter().map(|p| p.as_ref().to_vec()).collect();
    Arc::new(config)
}

fn server_name(host: &str) -> Result<ServerName<'static>, TlsConnectError> {
    // `Uri::host` keeps the brackets of an IPv6 literal.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned())
        .map_err(|e| TlsConnectError::with_source(TlsConnectErrorKind::InvalidServerName, e))
}

impl<C> Service<Uri> for SharedTlsConnector<C>
where
    C: Service<Uri>,
    C::Response: Read + Write + Connection + Unpin,
    C::Error: Into<BoxError>,
{
    type Response = MaybeHttpsStream<C::Response>;
    type Error = BoxError;
    type Future = ResponseFuture<C::Future, C::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| TlsConnectError::with_source(TlsConnectErrorKind::Connect, e).into())
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let scheme = uri.scheme_str();
        if scheme.is_some_and(|s| s.eq_ignore_ascii_case("http")) {
            return ResponseFuture::connecting(self.inner.call(uri), None);
        }
        if !scheme.is_some_and(|s| s.eq_ignore_ascii_case("https")) {
            return ResponseFuture::failed(TlsConnectError::unsupported_scheme(scheme));
        }
        let name = match uri.host().filter(|h| !h.is_empty()) {
            None => {
                return ResponseFuture::failed(TlsConnectError::new(
                    TlsConnectErrorKind::MissingHost,
                ))
            }
            Some(host) => match server_name(host) {
                Ok(name) => name,
                Err(e) => return ResponseFuture::failed(e),
            },
        };
        let tls = TlsConnector::from(self.config());
        ResponseFuture::connecting(self.inner.call(uri), Some((tls, name)))
    }
}
