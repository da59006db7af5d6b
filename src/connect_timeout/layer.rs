//! The layer of [`ConnectTimeout`].

use std::time::Duration;

use tower_layer::Layer;

use super::ConnectTimeout;

/// Bounds how long a connector may take (TCP, plus TLS when the connector
/// does it) with an [`Elapsed`](crate::phase_timeout::Elapsed) error of phase
/// [`Phase::Connect`](crate::phase_timeout::Phase::Connect).
///
/// It is generic over the connector's request type, so it wraps hyper-util's
/// `HttpConnector` (`Service<Uri>`) and also fits inside
/// `reqwest::ClientBuilder::connector_layer`, whose request type is private.
///
/// [`Duration::ZERO`] fails every connect at its first poll, without polling
/// the connector (so no connection is attempted through a lazy connector
/// like `HttpConnector`); see the [module docs](super#a-zero-or-an-enormous-limit).
/// A limit too large for the clock never fires. A `Clone` copies the limit.
///
/// ```
/// use std::time::Duration;
/// use hyper_util::client::legacy::connect::HttpConnector;
/// use tower::ServiceBuilder;
/// use tower_conn_lifecycle::connect_timeout::ConnectTimeoutLayer;
///
/// let connector = ServiceBuilder::new()
///     .layer(ConnectTimeoutLayer::new(Duration::from_secs(1)))
///     .service(HttpConnector::new());
/// # let _ = connector;
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ConnectTimeoutLayer {
    limit: Duration,
}

impl ConnectTimeoutLayer {
    /// A layer bounding connects to `limit`.
    pub fn new(limit: Duration) -> Self {
        ConnectTimeoutLayer { limit }
    }
}

impl<C> Layer<C> for ConnectTimeoutLayer {
    type Service = ConnectTimeout<C>;

    fn layer(&self, inner: C) -> Self::Service {
        ConnectTimeout::new(inner, self.limit)
    }
}
