//! Tower layers that make HTTP clients survive the real life of connections.
//!
//! Keep-alive connections go stale, uploads outlive connect timeouts, and a
//! request that dies on a reused socket looks like a mystery
//! `connection reset by peer`. This crate's layers each fix one of those
//! with one `.layer()` line around hyper-util's client (or any tower HTTP
//! service):
//!
//! * [`client`] — all of it in one call: hyper-util's client with every
//!   layer below in the right order;
//! * [`retry`] — retry a request that died on a stale connection only when
//!   that is provably safe; never duplicate a POST;
//! * [`idle_expiry`] — never write a request on a keep-alive connection the
//!   server is about to close: configured, announced (`Keep-Alive:
//!   timeout=N`) or learned from the server's own idle closes;
//! * [`phase_timeout`] — separate connect / send / read / total timeouts;
//!   send and read are *stall* limits, and every timeout error names its
//!   [`Phase`](phase_timeout::Phase);
//! * [`track`] — the connection tracker the other layers build on: live
//!   per-connection state, and [`ConnectionInfo::of(&response)`](track::ConnectionInfo::of)
//!   (reused? idle time? time to first byte?);
#![cfg_attr(
    feature = "tls",
    doc = "* [`tls`] — one lazily built rustls configuration shared by every client in the process;"
)]
#![cfg_attr(
    feature = "reqwest",
    doc = "* [`reqwest`](mod@reqwest) — the layers with a `reqwest::Client`: `ConnectTimeoutLayer` in its connector, the request-plane layers through an adapter, and what reqwest cannot get;"
)]
#![cfg_attr(
    feature = "testing",
    doc = "* [`testing`] — real loopback servers that misbehave on purpose, for your tests."
)]
//!
//! # Features
//!
//! Like tower-http's, the optional parts are cargo features, and the default
//! pulls in no TLS stack: a crate that adds this one for its timeouts
//! compiles neither rustls nor ring.
//!
//! | feature | enables |
//! |---|---|
//! | *(none)* | [`phase_timeout`], [`track`], [`idle_expiry`] and the other layers: always compiled |
//! | `tls` | the `tls` module: `SharedTlsConnector` on hyper-rustls (rustls with the `ring` provider, webpki roots; no aws-lc) |
//! | `native-roots` | `tls`, with the operating system's root certificates in the shared configuration (webpki's as a fallback) |
//! | `testing` | the `testing` module: misbehaving loopback servers for tests |
//! | `reqwest` | the `reqwest` module: `ReqwestService`, which makes a `reqwest::Client` a tower HTTP service (reqwest with its default features off) |
//! | `tls` + `reqwest` | `reqwest::ClientBuilderExt` (the shared configuration in reqwest's builder), and reqwest's `rustls-no-provider` backend: ring, no aws-lc; see the `reqwest` module's docs |
//! | `full` | `tls`, `testing` and `reqwest` (not `native-roots`: which roots to trust is a choice, not a capability) |
//!
//! The layers have no feature of their own: they need no dependency beyond
//! the crate's core (hyper, hyper-util, tokio, tower), and they use each
//! other's types (every layer reads the [`track`]er's state; the retry
//! layer classifies [`phase_timeout`]'s and [`idle_expiry`]'s errors), so
//! switching one off would save little build time and cost a `cfg` on every
//! cross-reference. Items behind a feature carry a badge in these docs.
//!
//! # Two planes
//!
//! ```text
//!  request plane: Service<http::Request<B>>      connection plane: Service<Uri>
//!  ┌────────────────────────────────────┐        ┌──────────────────────────────┐
//!  │ RetryOnStaleConnection             │        │ ConnectTimeout               │
//!  │  PhaseTimeout (send / read / total)│        │  TrackConnections            │
//!  │   IdleExpiry (hints, learning)     │ client │   SharedTlsConnector         │
//!  │    hyper_util::client::legacy::Client──uses─▶│    HttpConnector (TCP)       │
//!  └────────────────────────────────────┘        └──────────────────────────────┘
//!                  ▲
//!                  └──── per-connection state (Arc) via Connected::extra ────┘
//! ```
//!
//! Connection-plane layers wrap the connector; request-plane layers wrap the
//! client. The tracker's per-connection state crosses between them through
//! hyper-util's `Connected::extra` and one shared connection capture
//! ([`track::ConnectionCapture`]). Every request-plane layer also works
//! without the tracker, observing less (body frames instead of socket bytes);
//! each layer's docs say what changes.
//!
//! # Example
//!
//! The whole stack in one call ([`client`] documents its order and why):
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower_conn_lifecycle::{client, phase_timeout::PhaseTimeoutLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let client = client::builder()
//!     .connect_timeout(Duration::from_secs(1))
//!     .timeouts(PhaseTimeoutLayer::new().send(Duration::from_secs(1)).read(Duration::from_secs(5)))
//!     .build::<Full<Bytes>>();
//! # let _ = client;
//! # }
//! ```
//!
//! Or layer by layer:
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::{connect::HttpConnector, Client};
//! use hyper_util::rt::TokioExecutor;
//! use tower::ServiceBuilder;
//! use tower_conn_lifecycle::phase_timeout::{ConnectTimeoutLayer, PhaseTimeoutLayer, RequestBody};
//! use tower_conn_lifecycle::track::{ConnectionInfoLayer, TrackConnectionsLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let connector = ServiceBuilder::new()
//!     .layer(ConnectTimeoutLayer::new(Duration::from_secs(1)))
//!     .layer(TrackConnectionsLayer::new())
//!     .service(HttpConnector::new());
//! let client = Client::builder(TokioExecutor::new())
//!     .build::<_, RequestBody<Full<Bytes>>>(connector);
//! let client = ServiceBuilder::new()
//!     .layer(PhaseTimeoutLayer::new().send(Duration::from_secs(1)).read(Duration::from_secs(5)))
//!     .layer(ConnectionInfoLayer::new())
//!     .service(client);
//! # let _ = client;
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The error type returned by this crate's layers: `Box<dyn Error + Send + Sync>`.
///
/// Each layer documents which concrete errors can be downcast from it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

mod error;
pub(crate) use error::causes;
pub use error::{find_cause, ErrorChain};

pub mod client;
mod clock;
pub mod idle_expiry;
pub mod phase_timeout;
pub mod retry;
pub mod track;

#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;
