//! Tower layers that make HTTP clients survive the real life of connections.
//!
//! Keep-alive connections go stale, uploads outlive connect timeouts, and a
//! request that dies on a reused socket looks like a mystery
//! `connection reset by peer`. This crate's layers each fix one of those
//! with one `.layer()` line around hyper-util's client (or any tower HTTP
//! service):
//!
//! * [`client`] — all of it in one call: every layer below in the right
//!   order, on hyper-util's composable connection pools, for about what
//!   hyper-util's legacy client costs with no layer at all;
//! * [`pool`] — the same on a hyper-util composable pool you assemble
//!   yourself: the connect service (tracked connection, HTTP/1 handshake,
//!   idle expiry per connection) and the checkout that skips a refused
//!   connection before any byte;
//! * [`retry`] — retry a request that died on a stale connection only when
//!   that is provably safe; never duplicate a POST;
//! * [`idle_expiry`] — never write a request on a keep-alive connection the
//!   server is about to close: configured, announced (`Keep-Alive:
//!   timeout=N`) or learned from the server's own idle closes;
//! * [`phase_timeout`] — separate send / read / total timeouts; send and
//!   read are *stall* limits, and every timeout error names its
//!   [`Phase`](phase_timeout::Phase);
//! * [`connect_timeout`] — the connect timeout, on the connector (TCP and
//!   TLS), with the same error ([`Phase::Connect`](phase_timeout::Phase::Connect));
//! * [`drain`] — graceful shutdown: refuse new requests, let those in
//!   flight finish within a deadline, close connections cleanly, report;
//! * [`track`] — the connection tracker the other layers build on: live
//!   per-connection state, and [`ConnectionInfo::of(&response)`](track::ConnectionInfo::of)
//!   (reused? idle time? time to first byte?);
#![cfg_attr(
    feature = "tls",
    doc = "* [`tls`] — one lazily built rustls configuration shared by every client in the process, on the application's crypto provider;"
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
//! compiles neither rustls nor ring. Cargo turns a feature on for the whole
//! graph, so the last column says what each feature enables in *other*
//! crates, which the application's own code then sees too; only the
//! features named after a provider or a reqwest TLS backend turn one on.
//!
//! | feature | enables here | enables in other crates |
//! |---|---|---|
//! | *(none)* | [`phase_timeout`], [`track`], [`idle_expiry`] and the other layers: always compiled | hyper's `client`, `http1`, `http2`; hyper-util's `client-legacy`, `client-pool`, `http1`, `http2`, `tokio`; tokio's `time`, `net`, `rt`, `sync`; tower's `util`, `retry` |
//! | `tls` | the `tls` module: `SharedTlsConnector` on hyper-rustls, webpki roots, and the application's rustls crypto provider (see the `tls` module docs) | rustls's `std` and `tls12`; hyper-rustls's `tls12` and `webpki-tokio` (webpki-roots). **No crypto provider**, no reqwest feature |
//! | `native-roots` | `tls`, with the operating system's root certificates in the shared configuration (webpki's as a fallback) | as `tls`, and hyper-rustls's `native-tokio` (rustls-native-certs) |
//! | `ring` | `tls`, with rustls's *ring* provider for an application that has none installed | as `tls`, and rustls's `ring`. An application whose rustls also has `aws_lc_rs` (reqwest's default features) then has both, and rustls's own `ClientConfig::builder()` in other crates panics unless a process default is installed |
//! | `aws-lc-rs` | `tls`, with rustls's aws-lc-rs provider (post-quantum key exchange) for an application that has none installed; preferred over `ring` if both are on | as `tls`, and rustls's `aws_lc_rs` (a C build; nothing new if the application's rustls or reqwest already has it). With `ring` also in rustls, the same caveat as `ring` |
//! | `testing` | the `testing` module: misbehaving loopback servers for tests | hyper's and hyper-util's `server`; tokio's `io-util`, `macros` |
//! | `reqwest` | the `reqwest` module: `ReqwestService`, which makes a `reqwest::Client` a tower HTTP service | reqwest 0.13's `http2` (reqwest with its default features off: no TLS backend) |
//! | `reqwest-rustls` | `reqwest` and `tls`, and `reqwest::ClientBuilderExt` (the shared configuration in reqwest's builder) | as `reqwest` and `tls`, and reqwest's `rustls-no-provider` for **every** reqwest 0.13 in the graph: a reqwest that had no TLS then needs a process default provider to build its own TLS (`reqwest::Client::new()` panics without one); see the `reqwest` module docs |
//! | `full` | `tls`, `testing` and `reqwest` | as those three: no provider, no root store choice, no reqwest TLS backend |
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
//! hyper-util's `Connected::extra` and, for the requests whose layers need
//! it before a response exists (every request through
//! [`phase_timeout`], one with a body through [`retry`]), one shared
//! connection capture ([`track::ConnectionCapture`]). Every request-plane layer also works
//! without the tracker, observing less (body frames instead of socket bytes);
//! each layer's docs say what changes.
//!
//! # Errors
//!
//! Every layer's error is a [`BoxError`]. Whatever the stack, two things
//! hold: the top-level error's `Display` says what happened (a timeout's
//! phase and limit, a failed connect's destination and cause, the rule of a
//! refused retry), and [`find_cause`] finds the typed facts anywhere in the
//! chain (it looks inside `io::Error`s, which `source()` does not).
//! [`error_chain`] prints the whole chain on one line, each cause once:
//!
//! ```text
//! GET http://10.0.0.7:8080: read timed out after 5s: no response head since the upload finished (41 bytes sent, 0 bytes received)
//! POST http://10.0.0.7:8080: Connection reset by peer (os error 104); not retried: not idempotent, no Idempotency-Key (reused connection): client error (SendRequest): connection error
//! ```
//!
//! Which concrete type is on top depends on the stack, which is why
//! `downcast_ref` on the top is the wrong test and `find_cause` the right
//! one:
//!
//! | failure | with [`retry`] on top (the one-call [`client`]) | [`phase_timeout`] on top, no retry | `find_cause` finds |
//! |---|---|---|---|
//! | connect refused, DNS, TLS handshake | [`NotRetried`](retry::NotRetried) ([`Rule::ConnectFailed`](retry::Rule::ConnectFailed)) | hyper-util's `client::legacy::Error` (`is_connect()`) | `std::io::Error` (the OS error), hyper-util's `ConnectError`, `TlsConnectError` and `rustls::Error` with `tls` |
//! | connect timeout ([`ConnectTimeout`](connect_timeout::ConnectTimeout)) | `NotRetried` (`Rule::ConnectTimeout`) | hyper-util's `Error` | [`Elapsed`](phase_timeout::Elapsed) with `Phase::Connect`, inside an `io::Error` of kind `TimedOut` |
//! | send stall, no head in time, `total` before the head | `NotRetried` (`Rule::Timeout`) | `Elapsed` | `Elapsed` with its phase |
//! | body stall, `total` during the body (from the response body) | `Elapsed` (body errors are never wrapped: nothing is retried once a response was returned) | `Elapsed` | `Elapsed` |
//! | connection lost during the body | hyper's `Error` (from the body) | hyper's `Error` | `std::io::Error` when the OS reported one |
//! | a stale-connection failure that was not retried (or an unrecognised one) | `NotRetried` with the [`Rule`](retry::Rule) | hyper-util's `Error` | hyper's `Error`, `std::io::Error`, `h2::Error` |
//! | write refused on an expired connection | never seen with the defaults: hyper-util retries it (nothing was written), and so does [`retry`]; with both off, `NotRetried` (`Rule::RetriesExhausted`, [`RetryReason::NothingWritten`](retry::RetryReason::NothingWritten)) over hyper-util's `Canceled` | hyper-util's `Error` (`Canceled`) | the `NotRetried`; on a composable pool, [`ConnectionExpired`](track::ConnectionExpired) from the connection's `poll_ready` |
//!
//! A plain `http://` connect failure through the `tls` feature's connector
//! is the inner connector's error, not a `TlsConnectError`. Through the
//! `reqwest` feature's adapter the top is a `reqwest::Error` for what
//! reqwest reports (connect, IO) and `find_cause` finds the same types
//! below it.
//!
//! # Shutting down
//!
//! On SIGTERM (a deploy, a scale-in), drain the client instead of dropping
//! it: [`Client::drain`](client::Client::drain) (or, for a stack built by
//! hand, a [`drain::DrainHandle`], which is also its layer) refuses new
//! requests at once with [`drain::Draining`] (nothing written: send them
//! elsewhere; the retry layer never retries them on this client), closes
//! idle connections cleanly (the server reads EOF, not a reset), closes
//! each connection whose exchange ends instead of pooling it, lets the
//! requests in flight finish until the deadline, cuts the rest there
//! ([`drain::DrainCut`], their connections closed), and returns a
//! [`drain::DrainReport`]:
//!
//! ```no_run
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower_conn_lifecycle::client;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let client = client::builder().build::<Full<Bytes>>();
//! // … clones of `client` serve the application …
//! tokio::signal::ctrl_c().await.unwrap();
//! let report = client.drain(Duration::from_secs(10)).await;
//! assert_eq!(report.connections_still_open(), Some(0));
//! # }
//! ```
//!
//! The drain starts when `drain` is called; dropping its future only stops
//! the waiting (see [`drain`] for the rules, the zero and the enormous
//! deadline). `examples/drain.rs` runs it against local servers. The
//! one-call client can also retire an HTTP/2 connection that stopped
//! answering ([`client::Builder::retire_stalled_http2`], off by default).
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
//! Or layer by layer, on a hyper-util client you build (keeping its
//! settings), with any request body (here a stream, which is not `Clone`):
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body::Frame;
//! use http_body_util::StreamBody;
//! use hyper_util::client::legacy::{connect::HttpConnector, Client};
//! use hyper_util::rt::TokioExecutor;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
//! use tower_conn_lifecycle::connect_timeout::ConnectTimeoutLayer;
//! use tower_conn_lifecycle::phase_timeout::PhaseTimeoutLayer;
//! use tower_conn_lifecycle::retry::RetryOnStaleConnectionLayer;
//! use tower_conn_lifecycle::track::TrackConnectionsLayer;
//! use tower_conn_lifecycle::{LayeredResponse, RequestBody};
//!
//! # async fn run() -> Result<(), tower_conn_lifecycle::BoxError> {
//! let connector = ServiceBuilder::new()
//!     .layer(ConnectTimeoutLayer::new(Duration::from_secs(1)))
//!     .layer(TrackConnectionsLayer::new())
//!     .service(HttpConnector::new());
//! // The inner client takes the crate's one request body type, whatever is
//! // stacked above it.
//! let client = Client::builder(TokioExecutor::new())
//!     .pool_max_idle_per_host(8)
//!     .build::<_, RequestBody>(connector);
//! let client = ServiceBuilder::new()
//!     .layer(RetryOnStaleConnectionLayer::new())
//!     .layer(PhaseTimeoutLayer::new().send(Duration::from_secs(1)).read(Duration::from_secs(5)))
//!     .layer(IdleExpiryLayer::new(Duration::from_secs(90)))
//!     .service(client);
//!
//! let chunks = ["a streamed ", "upload"].map(|c| Ok::<_, std::io::Error>(Frame::data(Bytes::from(c))));
//! let body = StreamBody::new(futures_util::stream::iter(chunks));
//! let req = http::Request::put("http://127.0.0.1:8080/upload").body(body)?;
//! let res: LayeredResponse = client.oneshot(req).await?;
//! # let _ = res;
//! # Ok(())
//! # }
//! ```
//!
//! The layers take requests with any body and hand the client a
//! [`RequestBody`]; a cheap-to-clone body is retried by cloning, a streamed
//! one through the retry layer's replay buffer (64 KiB by default). The
//! order above is the one the layers are documented for; the docs allow:
//!
//! * [`PhaseTimeout`](phase_timeout) above the retry layer: its limits
//!   then bound the request with all its attempts instead of each attempt
//!   (see [`retry`](retry#where-it-goes));
//! * [`IdleExpiry`](idle_expiry) anywhere below the retry layer (which
//!   retries what it refuses), and a [`DrainHandle`](drain::DrainHandle)
//!   on top (or below the retry layer);
//! * on the connector, [`ConnectTimeoutLayer`](connect_timeout::ConnectTimeoutLayer)
//!   outermost and the tracker outside TLS ([`client`] says why).
//!
//! Only the order above has [`LayeredResponse`] for its response type. A
//! stack whose inner client is built for another body type, or with a
//! connector where a client belongs, fails to compile where the layer is
//! applied, with a message that names the fix ([`RequestBodyService`]):
//!
//! ```text
//! error[E0277]: `Client<HttpConnector, Full<Bytes>>` cannot be the service below PhaseTimeout or RetryOnStaleConnection: it must take `http::Request<tower_conn_lifecycle::RequestBody>`
//!    = note: build the inner hyper-util client for the crate's body: `Client::builder(..).build::<_, tower_conn_lifecycle::RequestBody>(connector)`; the layers above it take any body
//! ```
//!
//! One limit of hyper-util's legacy client that no layer can lift: a
//! request handed to a kept-alive HTTP/1 connection at the very moment the
//! connection's task ends (the server closed it right after its last
//! response) can wait for ever, unanswered and never written (about 1 such
//! request in 30 000 under a server that closes every connection at once,
//! `tests/probe_http1_races.rs`): the client's future holds the connection's
//! `SendRequest`, and hyper's request channel answers a request stranded in
//! it only when that goes. Give requests a [`PhaseTimeout`](phase_timeout)
//! `total` limit there, so such a request fails instead. The
//! one-call [`client`] and the [`pool`] pieces let go of the `SendRequest`
//! when the task ends, and do not hang.
//!
//! Because the layers take any body, `ServiceExt::ready` on a stack built
//! by hand needs the request type named
//! (`ServiceExt::<http::Request<B>>::ready(&mut client)`); `oneshot` and
//! `call` infer it from the request.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The error type returned by this crate's layers: tower's
/// `Box<dyn Error + Send + Sync>` (the same type as `tower::BoxError`).
///
/// Each layer documents which concrete errors can be downcast from it.
pub use tower::BoxError;

/// The response of the stack built by hand in the [crate docs](crate#example):
/// [`RetryOnStaleConnection`](retry::RetryOnStaleConnection) →
/// [`PhaseTimeout`](phase_timeout::PhaseTimeout) →
/// [`IdleExpiry`](idle_expiry::IdleExpiry) → hyper-util's legacy client
/// over the tracked connector. Each layer wraps the body it gets (the
/// retry layer's and IdleExpiry's end the tracker's exchange, PhaseTimeout's
/// enforces the read stall and total limits); its data is `Bytes`, its
/// errors [`BoxError`]s.
pub type LayeredResponse = http::Response<
    track::TrackedBody<phase_timeout::ResponseBody<track::TrackedBody<hyper::body::Incoming>>>,
>;

mod body;
pub use body::{RequestBody, RequestBodyService};

mod error;
pub(crate) use error::{causes, is_dispatch_gone};
pub use error::{error_chain, find_cause};

pub mod client;
mod clock;
pub mod connect_timeout;
pub mod drain;
pub mod idle_expiry;
pub mod phase_timeout;
pub mod pool;
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

#[cfg(test)]
mod debug_tests;
