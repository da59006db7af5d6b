//! Idle expiry: never write a request on a keep-alive connection the server
//! is about to close.
//!
//! A server closes a keep-alive connection after it has been idle for its
//! idle timeout (Go's `IdleTimeout`, Apache's and Node's 5 s, nginx's 75 s,
//! load balancers' 60 s). A client that reuses the connection at nearly that
//! moment writes onto a socket being closed and gets `connection reset by
//! peer` or hyper's `IncompleteMessage`. [`IdleExpiryLayer`] makes the client
//! close such connections first, and only those:
//!
//! * **Idle is measured on the wire**: from the last byte read of the
//!   previous response (the tracker's
//!   [`idle_since`](crate::track::ConnectionState::idle_since)), which is
//!   when the server's idle clock started, not from when the caller finished
//!   reading the body.
//! * **Closed from the read side, before anything is written.** The
//!   tracker's IO arms a timer when its connection becomes known idle and
//!   returns EOF to hyper at the expiry, so hyper closes it and hyper-util's
//!   pool drops it silently; hyper-util transparently retries a request that
//!   was about to use it on a new connection. The same check runs whenever
//!   hyper polls the idle connection. As a last resort, a write on a
//!   connection left unpolled well past its expiry (more than 25 ms: a
//!   request hyper checked a moment before the deadline is still written, the
//!   margin below the server's timeout covers it) is refused before its first
//!   byte with [`ConnectionExpired`], which is always safe to retry.
//! * **A live response is never cut**: only a connection whose previous
//!   response has ended is ever closed, however long a streaming response
//!   pauses between chunks.
//! * **Announced limits**: a response's `Keep-Alive: timeout=N` lowers its
//!   connection's expiry to `N` minus a margin (the larger of
//!   [`DEFAULT_MARGIN`] and twice the connection's measured round trip), so
//!   a `timeout=1` server still gets reuse below about 950 ms. This is safe
//!   although the server's clock starts when it *wrote* its last byte, a
//!   little before the client read it: that head start is at most half a
//!   round trip, and the request needs another half to arrive, both covered
//!   by the margin. `Connection: close` means no reuse. Malformed or absurd
//!   values are ignored by a documented rule (see the `hint` rules below).
//! * **Learned limits**: most servers announce nothing. The tracker sees the
//!   server's FIN on idle pooled connections, and how long they had been
//!   idle; the layer learns each origin's idle timeout from those closes and
//!   expires that origin's connections a margin before it, with no
//!   configuration. The rule, its bound and its worst case are below.
//! * **Optional limits**: [`max_age`](IdleExpiryLayer::max_age) and
//!   [`max_requests`](IdleExpiryLayer::max_requests), applied at the same
//!   idle point (never mid-response).
//!
//! The effective expiry of a connection is the smallest of the configured
//! expiry, the announced timeout minus the margin, and the learned timeout
//! minus the margin; zero means the connection is not reused.
//!
//! # Reading `Keep-Alive`
//!
//! Every `Keep-Alive` header line and every comma-separated parameter is
//! read; names are case-insensitive and whitespace is ignored; a `timeout`
//! value counts only if it is a whole number of seconds (ASCII digits, up to
//! one day); the smallest valid value wins; anything else (`timeout=abc`,
//! `-1`, `1.5`, empty, huge) is ignored, as is `max=`.
//!
//! # Learning
//!
//! Per origin (scheme, host, port) the layer keeps an estimate of the
//! server's idle timeout: the shortest idle after which the server was seen
//! closing a connection that was eligible for reuse. A close after a
//! *shorter* idle than one that was recently reused safely is not an idle
//! timeout (a restart, a connection limit) and is ignored. Observations are
//! trusted for five minutes (configurable with
//! [`learner`](IdleExpiryLayer::learner)), after which they are forgotten and
//! learned again: that is how an estimate recovers upward.
//!
//! *Worst case*: until an origin's first idle close is seen (and again for
//! the first one after an estimate was forgotten), its requests can race the
//! server exactly as without this layer; put `RetryOnStaleConnection` above
//! it for those. A close that was not an idle timeout and that no longer safe
//! reuse contradicts lowers reuse for that origin until it is forgotten,
//! never correctness. *Bound*: at most 1024 origins (configurable), least
//! recently used evicted first; estimates are shared by the clones of one
//! layer, so every client built from it learns together.
//!
//! # Which clients
//!
//! * **hyper-util's legacy `Client`** (HTTP/1.1): put
//!   [`TrackConnectionsLayer`](crate::track::TrackConnectionsLayer) on the
//!   connector and [`IdleExpiryLayer`] around the client. On HTTP/2
//!   connections the layer sets nothing: an HTTP/2 server says when it stops
//!   with GOAWAY, and requests it refused are safe to retry.
//! * **hyper-util's composable pools** (`client::pool::cache`, feature
//!   `client-pool`): wrap each connection's service with
//!   [`IdleExpiryLayer::connection`]; see [`IdleExpiryConnection`] and
//!   `examples/composable_pool.rs`.
//! * **reqwest**: its connections are sealed (no tracker), so idle expiry
//!   cannot be applied; use its `pool_idle_timeout` below the server's idle
//!   timeout and `RetryOnStaleConnection`.
//!
//! Every connection event (expired, refused, server idle close) is a
//! `tracing` debug event and is counted in [`IdleExpiryStats`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http_body_util::Empty;
//! use bytes::Bytes;
//! use hyper_util::client::legacy::{connect::HttpConnector, Client};
//! use hyper_util::rt::TokioExecutor;
//! use tower::ServiceBuilder;
//! use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
//! use tower_conn_lifecycle::track::TrackConnectionsLayer;
//!
//! let connector = ServiceBuilder::new()
//!     .layer(TrackConnectionsLayer::new())
//!     .service(HttpConnector::new());
//! let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
//! // Reuse a connection only while idle for less than 90 s, or less than
//! // what the server announces or is seen to do.
//! let client = ServiceBuilder::new()
//!     .layer(IdleExpiryLayer::new(Duration::from_secs(90)))
//!     .service(client);
//! # let _ = client;
//! ```

mod conn;
pub mod future;
mod hint;
mod layer;
mod learn;
mod service;
#[cfg(test)]
mod tests;

pub use crate::track::ConnectionExpired;
pub use conn::{Http1Connection, IdleExpiryConnection};
pub use layer::{IdleExpiryLayer, IdleExpiryStats, DEFAULT_MARGIN};
pub use service::IdleExpiry;
