//! The connector service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, Write};
use hyper_rustls::{
    DefaultServerNameResolver, FixedServerNameResolver, HttpsConnector, ResolveServerName,
};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use rustls::ClientConfig;
use tower::ServiceExt;
use tower_service::Service;

use super::config::Source;
use super::{TlsConnectError, TlsConnectErrorKind};
use crate::BoxError;

/// A connector that adds TLS (hyper-rustls over rustls) to an inner
/// connector for `https://` URIs and passes `http://` through untouched.
///
/// It is a `Service<Uri>` on the connection plane, usable as hyper-util's
/// client connector. The response is hyper-rustls's
/// [`MaybeHttpsStream`](super::MaybeHttpsStream) over the inner connector's
/// IO; its `Connection` impl marks
/// [`negotiated_h2`](hyper_util::client::legacy::connect::Connected::negotiated_h2)
/// when ALPN selected `h2` and keeps the extras the inner IO publishes.
///
/// * `https://host`: the scheme and host are checked first (nothing
///   connects for a URI that cannot succeed), then the inner connector
///   connects (it receives the URI unchanged, so hyper-util's
///   `HttpConnector` needs [`enforce_http(false)`](HttpConnector::enforce_http),
///   as [`SharedTlsConnector::tcp`] sets) and hyper-rustls's
///   [`HttpsConnector`] runs the TLS handshake with the host as server name.
///   Names are sent as SNI and verified against the certificate's DNS names;
///   IP literals (`https://127.0.0.1`, `https://[::1]`) are verified against
///   its IP addresses and send no SNI.
/// * `http://`: the inner IO is returned as `MaybeHttpsStream::Http`; no TLS
///   happens and the TLS configuration is not touched.
/// * Any other scheme fails with [`TlsConnectErrorKind::UnsupportedScheme`].
///
/// # Configuration
///
/// [`new`](Self::new) uses the process-wide [`shared_config`](super::shared_config),
/// resolved at the first `https://` connect (so building a connector or a
/// client never loads certificates, and needs no crypto provider).
/// [`from_config`](Self::from_config) takes any rustls configuration (for
/// example [`config_with_provider`](super::config_with_provider)'s, for a
/// given crypto provider). TLS session resumption is shared by every
/// connector (and every clone) using the same configuration `Arc`.
///
/// # Errors
///
/// For `https://`, the service's error is a [`BoxError`] holding a
/// [`TlsConnectError`]; the inner connector's error and the
/// [`rustls::Error`] are reachable through `source()`. For `http://`, a
/// failed connect is the inner connector's error as it is (no TLS was
/// involved). An error of the inner connector's `poll_ready` (before the
/// scheme is known) is a [`TlsConnectErrorKind::Connect`]. Without a usable
/// crypto provider (see the [`tls`](super) module docs) every `https://`
/// connect fails, before connecting, with
/// [`TlsConnectErrorKind::NoCryptoProvider`], until one is there; the
/// connector never panics for want of one, and `http://` is unaffected.
///
/// # Cloning
///
/// A clone shares the configuration (and so the session cache) and clones
/// the inner connector.
///
/// Its future is boxed: one allocation per connect (hyper-rustls boxes
/// the handshake's too), never per request.
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
#[derive(Clone)]
pub struct SharedTlsConnector<C> {
    inner: C,
    source: Source,
}

impl<C: std::fmt::Debug> std::fmt::Debug for SharedTlsConnector<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTlsConnector")
            .field("inner", &self.inner)
            .field("config", &self.source)
            .finish()
    }
}

impl<C> SharedTlsConnector<C> {
    /// Wraps `inner` with the process-wide [`shared_config`](super::shared_config).
    pub fn new(inner: C) -> Self {
        Self::with_source(inner, Source::Shared)
    }

    pub(crate) fn with_source(inner: C, source: Source) -> Self {
        Self { inner, source }
    }

    /// Wraps `inner` with a given rustls configuration (custom roots, a test
    /// CA, client certificates, ALPN, session cache, ...).
    ///
    /// Its `alpn_protocols` decide HTTP/2: offer `h2` for hyper-util to use
    /// HTTP/2 where the server agrees.
    pub fn from_config(inner: C, config: Arc<ClientConfig>) -> Self {
        Self::with_source(inner, Source::Given(config))
    }

    /// Offers these ALPN protocols instead of the configuration's, for
    /// example `[b"http/1.1"]` to never negotiate HTTP/2.
    ///
    /// This clones the configuration once: a configuration given to
    /// [`from_config`](Self::from_config) now, the shared one at the first
    /// `https://` connect (shared by every clone of this connector). The
    /// clone keeps the same roots, provider and session cache, so
    /// resumption is still shared with the original.
    pub fn alpn_protocols<I, P>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        self.source = self.source.with_alpn(protocols);
        self
    }

    /// The rustls configuration used for `https://` (building the shared one
    /// if this connector uses it and it is not built yet).
    ///
    /// # Errors
    ///
    /// [`TlsConnectErrorKind::NoCryptoProvider`] if the shared configuration
    /// cannot be built (see [`shared_config`](super::shared_config)).
    pub fn config(&self) -> Result<Arc<ClientConfig>, TlsConnectError> {
        self.source.resolve()
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
    /// process-wide [`shared_config`](super::shared_config).
    pub fn tcp() -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        Self::new(http)
    }
}

impl<C> Service<Uri> for SharedTlsConnector<C>
where
    C: Service<Uri>,
    C::Response: Read + Write + Connection + Send + Unpin + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = super::MaybeHttpsStream<C::Response>;
    type Error = BoxError;
    type Future = Pin<
        Box<dyn Future<Output = Result<super::MaybeHttpsStream<C::Response>, BoxError>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| TlsConnectError::connect(e).into())
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let scheme = uri.scheme_str();
        if scheme.is_some_and(|s| s.eq_ignore_ascii_case("http")) {
            // Plain http: the inner connector's error as it is, not a TLS
            // error.
            let connecting = self.inner.call(uri);
            return Box::pin(async move {
                connecting
                    .await
                    .map(super::MaybeHttpsStream::Http)
                    .map_err(Into::into)
            });
        }
        if !scheme.is_some_and(|s| s.eq_ignore_ascii_case("https")) {
            return failed(TlsConnectError::unsupported_scheme(scheme));
        }
        if uri.host().is_none_or(str::is_empty) {
            return failed(TlsConnectError::new(TlsConnectErrorKind::MissingHost));
        }
        // hyper-rustls's own mapping: a DNS name, or an IP literal (without
        // the brackets `Uri::host` keeps around IPv6).
        let name = match DefaultServerNameResolver::default().resolve(&uri) {
            Ok(name) => name,
            Err(e) => {
                return failed(TlsConnectError::with_source(
                    TlsConnectErrorKind::InvalidServerName,
                    e,
                ))
            }
        };
        let config = match self.source.resolve() {
            Ok(config) => config,
            Err(e) => return failed(e),
        };
        // This connector's own `poll_ready` drove the inner one ready, so it
        // is called here; hyper-rustls gets the connect already under way and
        // the name already checked.
        let connect = Started(Some(self.inner.call(uri.clone())))
            .map_err(|e: C::Error| TlsConnectError::connect(e));
        let mut https = HttpsConnector::new(
            connect,
            config,
            false,
            Arc::new(FixedServerNameResolver::new(name)),
        );
        let handshake = https.call(uri);
        Box::pin(async move {
            handshake.await.map_err(|e| {
                // The inner connector's errors were typed on the way in;
                // anything else is the handshake's.
                match e.downcast::<TlsConnectError>() {
                    Ok(typed) => typed as BoxError,
                    Err(e) => TlsConnectError::handshake(e).into(),
                }
            })
        })
    }
}

/// A connect refused before anything connected.
fn failed<T>(error: TlsConnectError) -> Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>
where
    T: Send + 'static,
{
    Box::pin(std::future::ready(Err(error.into())))
}

/// The inner connector's call, already made: the inner service of the
/// per-connect [`HttpsConnector`], which calls it exactly once.
///
/// A `HttpsConnector` holds its configuration from construction, and this
/// connector resolves the shared one only at the first `https://` connect;
/// so it builds one per connect around the connect already started.
struct Started<F>(Option<F>);

impl<F, T, E> Service<Uri> for Started<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Response = T;
    type Error = E;
    type Future = F;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> F {
        self.0
            .take()
            .expect("hyper-rustls calls its inner connector once per connect")
    }
}
