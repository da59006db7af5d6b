//! The connect timeout: how long a connector may take to set a connection
//! up (TCP, plus TLS when the connector does it), on the connection plane.
//!
//! [`ConnectTimeoutLayer`] wraps the **connector** (any `Service<R>`:
//! hyper-util's `HttpConnector`, this crate's
//! [`TrackConnections`](crate::track::TrackConnections) and
//! `SharedTlsConnector`), so it fits hyper-util's legacy client, its
//! composable pools, and `reqwest::ClientBuilder::connector_layer`, whose
//! request type is private. The other phases (send, read, total) are
//! bounded on the request plane by [`phase_timeout`](crate::phase_timeout).
//!
//! A timeout is that module's [`Elapsed`](crate::phase_timeout::Elapsed)
//! with [`Phase::Connect`](crate::phase_timeout::Phase::Connect), inside a
//! [`std::io::Error`] of kind [`TimedOut`](std::io::ErrorKind::TimedOut),
//! the shape hyper-util's own connect timeout has (so
//! `reqwest::Error::is_timeout()` holds for it); find it with
//! [`find_cause`](crate::find_cause).
//!
//! Put it outermost on the connector, so it bounds the whole set-up (TCP
//! *and* TLS) and the tracker inside it sees the connection as it is handed
//! over:
//!
//! ```text
//! ConnectTimeout( TrackConnections( SharedTlsConnector( HttpConnector ) ) )
//! ```
//!
//! # A zero or an enormous limit
//!
//! [`Duration::ZERO`](std::time::Duration::ZERO) is already spent: every
//! connect fails at its first poll without polling the connector (so a lazy
//! connector like `HttpConnector` opens no socket), the rule every phase of
//! [`phase_timeout`](crate::phase_timeout#zero-and-enormous-limits)
//! follows. A limit too large for the clock (`Duration::MAX`) never fires.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use hyper_util::client::legacy::{connect::HttpConnector, Client};
//! use hyper_util::rt::TokioExecutor;
//! use tower::ServiceBuilder;
//! use tower_conn_lifecycle::connect_timeout::ConnectTimeoutLayer;
//! use tower_conn_lifecycle::track::TrackConnectionsLayer;
//!
//! let connector = ServiceBuilder::new()
//!     .layer(ConnectTimeoutLayer::new(Duration::from_secs(1)))
//!     .layer(TrackConnectionsLayer::new())
//!     .service(HttpConnector::new());
//! let client = Client::builder(TokioExecutor::new())
//!     .build::<_, http_body_util::Empty<bytes::Bytes>>(connector);
//! # let _ = client;
//! ```

mod layer;
mod service;

pub use layer::ConnectTimeoutLayer;
pub use service::ConnectTimeout;
