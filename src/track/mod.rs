//! Connection tracking: per-connection state shared between the connection
//! plane and the request plane.
//!
//! [`TrackConnectionsLayer`] wraps a connector (for example hyper-util's
//! `HttpConnector`). Every connection it makes gets a [`ConnectionState`]:
//! an id, when it connected, requests started, bytes written and read, the
//! instants of the last read, write and flush, and whether a response is in
//! flight. The IO ([`TrackedIo`]) publishes that state with hyper-util's
//! `Connected::extra`, so hyper-util copies it into every response's
//! extensions and into the request's connection capture.
//!
//! Request-plane layers find the state of a request's connection through
//! [`ConnectionCapture::get_or_insert`], the single place in this crate that
//! captures connections (so several layers can share one capture), and
//! responses carry a [`ConnectionInfo`] snapshot when wrapped in
//! [`ConnectionInfoLayer`].
//!
//! The state lives in an `Arc` owned by the connection; it is dropped with the
//! connection and the last response that refers to it. Nothing global grows:
//! the only process-wide item is the id counter.
//!
//! Which clients: the tracker wraps any connector (`Service<Uri>` returning
//! hyper IO), so it fits hyper-util's legacy `Client` and its composable
//! pools. Only the legacy `Client` copies the state into responses and
//! connection captures; elsewhere read it from [`TrackedIo::state`] where the
//! IO is in reach. It does not fit reqwest's `connector_layer`, whose
//! connection type is sealed (it must stay reqwest's own).
//!
//! Counting costs one clock read and a few relaxed atomic operations per
//! successful socket read or write.
//!
//! # Example
//!
//! ```
//! use hyper_util::client::legacy::{connect::HttpConnector, Client};
//! use hyper_util::rt::TokioExecutor;
//! use tower::ServiceBuilder;
//! use tower_conn_lifecycle::track::{ConnectionInfoLayer, TrackConnectionsLayer};
//!
//! let track = TrackConnectionsLayer::new();
//! let stats = track.stats();
//! let connector = ServiceBuilder::new().layer(track).service(HttpConnector::new());
//! let client = Client::builder(TokioExecutor::new())
//!     .build::<_, http_body_util::Empty<bytes::Bytes>>(connector);
//! let client = ServiceBuilder::new().layer(ConnectionInfoLayer::new()).service(client);
//! # let _ = client;
//! assert_eq!(stats.opened(), 0);
//! ```

mod capture;
mod exchange;
mod info;
mod io;
mod service;
mod state;

pub use capture::{Captured, ConnectionCapture};
pub(crate) use exchange::{observe_frame, ExchangeEnd, PendingExchange};
pub use exchange::{Exchange, ExchangeOutcome, TrackedBody};
pub use info::{ConnectionInfo, ConnectionInfoLayer, InfoFuture, WithConnectionInfo};
pub use io::TrackedIo;
pub use service::{TrackConnections, TrackConnectionsLayer, TrackFuture, TrackStats};
pub use state::ConnectionState;
