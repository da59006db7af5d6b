//! The layer form of [`SharedTlsConnector`].

use std::sync::Arc;

use rustls::ClientConfig;
use tower_layer::Layer;

use super::config::Source;
use super::SharedTlsConnector;

/// Wraps a connector in a [`SharedTlsConnector`].
///
/// [`new`](Self::new) uses the process-wide [`shared_config`](super::shared_config)
/// (built lazily, at the first `https://` connect, with the crypto provider
/// the [`tls`](super) module docs describe); [`from_config`](Self::from_config)
/// a given configuration (for example [`config_with_provider`](super::config_with_provider)'s,
/// for a given provider). A `Clone` of the layer, and every connector it makes,
/// shares the configuration `Arc` and so its TLS session cache.
///
/// The inner connector receives `https://` URIs unchanged: hyper-util's
/// `HttpConnector` needs `enforce_http(false)`.
///
/// # Example
///
/// ```
/// use hyper_util::client::legacy::{connect::HttpConnector, Client};
/// use hyper_util::rt::TokioExecutor;
/// use tower::ServiceBuilder;
/// use tower_conn_lifecycle::tls::SharedTlsConnectorLayer;
///
/// let mut http = HttpConnector::new();
/// http.enforce_http(false);
/// let connector = ServiceBuilder::new().layer(SharedTlsConnectorLayer::new()).service(http);
/// let client = Client::builder(TokioExecutor::new())
///     .build::<_, http_body_util::Empty<bytes::Bytes>>(connector);
/// # let _ = client;
/// ```
#[derive(Clone, Default)]
pub struct SharedTlsConnectorLayer {
    source: Source,
}

impl std::fmt::Debug for SharedTlsConnectorLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTlsConnectorLayer")
            .field("config", &self.source)
            .finish()
    }
}

impl SharedTlsConnectorLayer {
    /// A layer using the process-wide [`shared_config`](super::shared_config).
    pub fn new() -> Self {
        Self {
            source: Source::Shared,
        }
    }

    /// A layer using `config` (custom roots, a test CA, client certificates,
    /// ...). See [`config_with_roots`](super::config_with_roots).
    pub fn from_config(config: Arc<ClientConfig>) -> Self {
        Self {
            source: Source::Given(config),
        }
    }

    /// Offers these ALPN protocols instead of the configuration's (default
    /// [`DEFAULT_ALPN_PROTOCOLS`](super::DEFAULT_ALPN_PROTOCOLS)).
    ///
    /// Clones the configuration once (a given one now, the shared one at
    /// the first `https://` connect), for every connector this layer makes;
    /// roots, provider and session cache stay shared with the original.
    pub fn alpn_protocols<I, P>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        self.source = self.source.with_alpn(protocols);
        self
    }
}

impl<C> Layer<C> for SharedTlsConnectorLayer {
    type Service = SharedTlsConnector<C>;

    fn layer(&self, inner: C) -> Self::Service {
        SharedTlsConnector::with_source(inner, self.source.clone())
    }
}
