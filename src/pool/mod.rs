//! A client on hyper-util's composable pools (`hyper_util::client::pool`),
//! HTTP/1, with idle expiry per connection: the pieces the one-call
//! [`client`](crate::client) is built from, for a pool you assemble
//! yourself.
//!
//! hyper-util's composable pools cache *services*: `pool::cache` keeps the
//! connections a make service (`Service<Uri>`) returns and hands one out
//! per checkout. This module gives the two pieces around it that are
//! easy to get wrong:
//!
//! * [`connect`]: the make service. Over a tracked connector (any
//!   `Service<Uri>` returning the tracker's [`TrackedIo`]:
//!   [`TrackConnectionsLayer`](crate::track::TrackConnectionsLayer) over
//!   hyper-util's `HttpConnector`, or, with the `tls` feature, over
//!   `SharedTlsConnector`) it runs hyper's HTTP/1 handshake with your
//!   `http1::Builder`, spawns the connection's task on tokio, and returns
//!   the connection as an [`Http1Connection`] wrapped in its own
//!   [`IdleExpiryConnection`],
//!   which refuses the connection once it has been idle past its expiry,
//!   *before* anything is written.
//! * [`checkout`]: the client, a cloneable `Service<http::Request<B>>`.
//!   Per request it checks a connection out of the pool; a connection that
//!   refuses in `poll_ready` (expired, closed by the server, its previous
//!   exchange abandoned: nothing of this request was written) is dropped
//!   and another taken, up to `attempts` connections. The response's
//!   [`Body`] holds the connection until it ends, so the connection goes
//!   back to the pool only when it can take the next request.
//!
//! What hyper's connection API leaves to its caller is done by
//! [`Http1Connection`]: the `Host` header and origin-form request URIs.
//! Requests need absolute URIs (`http://host:port/path`): the pool connects
//! to their origin.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::client::legacy::connect::HttpConnector;
//! use hyper_util::client::pool::cache;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{Layer, ServiceExt};
//! use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
//! use tower_conn_lifecycle::pool;
//! use tower_conn_lifecycle::track::TrackConnectionsLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_conn_lifecycle::BoxError> {
//! # let server = tower_conn_lifecycle::testing::IdleClosingServer::start(Duration::from_secs(1)).await?;
//! # let url = server.url();
//! let track = TrackConnectionsLayer::new();
//! // One pool per origin: hyper-util's cache of this origin's connections.
//! let cache = cache::builder().executor(TokioExecutor::new()).build(pool::connect(
//!     track.layer(HttpConnector::new()),
//!     hyper::client::conn::http1::Builder::new(),
//!     IdleExpiryLayer::new(Duration::from_millis(900)),
//! ));
//! let client = pool::checkout(cache, 8);
//!
//! for _ in 0..2 {
//!     let req = http::Request::get(&url).body(Full::<Bytes>::default())?;
//!     let res = client.clone().oneshot(req).await?;
//!     res.into_body().collect().await?;
//! }
//! assert_eq!(track.stats().opened(), 1); // the second request reused it
//! # assert_eq!(server.connections(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! Around the client, the request-plane layers stack as usual:
//! [`RetryOnStaleConnection`](crate::retry::RetryOnStaleConnection) on
//! top retries what failed on a stale connection (with `attempts = 1`,
//! an expired connection's refusal is the request's error, and Retry sends
//! the request again: always safe, nothing was written);
//! [`PhaseTimeout`](crate::phase_timeout::PhaseTimeout) below it bounds
//! each attempt. `examples/composable_pool.rs` measures the pool with and
//! without idle expiry against a server that closes idle connections.
//!
//! Compared with the one-call [`client`](crate::client): HTTP/1 only (offer
//! only `http/1.1` by ALPN on a TLS connector); one pool per origin is
//! yours to keep (hyper-util's `pool::map` keys them; a connection
//! [`connect`] made refuses a request for another origin with
//! [`WrongOrigin`], nothing written); a request that finds a connection
//! still sending an earlier request's body (its response ended first)
//! waits for it (see [`Body`]); a connection idle
//! past its reuse is dropped when a checkout finds it, so a healing probe
//! of the idle-timeout learner (see [`idle_expiry`](crate::idle_expiry))
//! lasts only until the next request, where the one-call client sets it
//! aside; and nothing bounds the idle connections a pool keeps
//! (`Cache::retain(|c| !c.is_expired())` evicts expired ones).

mod body;
mod checkout;
mod conn;
mod connect;

use http::{Request, Response, Uri};
use hyper::client::conn::http1;
use tower_service::Service;

pub use body::Body;
pub(crate) use conn::Http1Closed;
pub use conn::{Http1Connection, WrongOrigin};

use crate::idle_expiry::{IdleExpiryConnection, IdleExpiryLayer};
use crate::track::TrackedIo;
use crate::BoxError;

/// The make service for a composable pool (`Service<Uri>`): a connection
/// from `connector` (which the tracker wraps: it returns
/// [`TrackedIo`]), hyper's HTTP/1 handshake with `http1`'s settings, the
/// connection's task spawned on tokio (upgrades allowed), and the sending
/// half as an [`Http1Connection`] in the connection's
/// [`IdleExpiryConnection`] made by `idle_expiry` (whose learning and stats
/// the clones of the layer share).
///
/// Connecting is cold, so its future is boxed. Its error is the
/// connector's or hyper's handshake error, boxed. Clones share the
/// connector (cloned for each connect) and the settings.
///
/// See the [module docs](self) for a pool built with it.
pub fn connect<C, T, B>(
    connector: C,
    http1: http1::Builder,
    idle_expiry: IdleExpiryLayer,
) -> impl Service<
    Uri,
    Response = IdleExpiryConnection<Http1Connection<B>>,
    Error = BoxError,
    Future: Send + Unpin + 'static,
> + Clone
       + Send
       + Sync
       + 'static
where
    C: Service<Uri, Response = TrackedIo<T>> + Clone + Send + Sync + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    connect::Connect::new(connector, http1, idle_expiry)
}

/// The client over a composable pool: a cloneable
/// `Service<http::Request<B>>` that checks a connection out of `pool` (any
/// `Service<Uri>` handing out connection services, such as hyper-util's
/// `pool::cache` over [`connect`]) and sends the request on it.
///
/// A connection that refuses in `poll_ready` (expired, closed, its last
/// exchange abandoned: nothing of the request was written) is dropped by
/// the pool and another checked out, up to `attempts` connections in all
/// (`0` counts as `1`); then the last refusal is the request's error. A
/// *new* connection that refuses its first request (the server closed it
/// as soon as it accepted it) is not stale: its refusal is the request's
/// error at once, whatever `attempts` says, so a server that closes every
/// connection is not stormed with connects. With
/// `attempts = 1` every refusal reaches the layer above, for
/// [`RetryOnStaleConnection`](crate::retry::RetryOnStaleConnection) to
/// send the request again (always safe). A connect error is the request's
/// error at once. A connection that fails under a request (its send
/// failed) leaves the pool, so a retry does not find it refusing.
///
/// The response [`Body`] holds the connection until it ends. The request's
/// future is hand-written (no box); `poll_ready` is always ready (each
/// request makes a clone of `pool` ready). Errors are [`BoxError`]s: the
/// pool's, the refusal, or the connection's.
///
/// See the [module docs](self) for an example.
pub fn checkout<P, S, B, RB>(
    pool: P,
    attempts: usize,
) -> impl Service<Request<B>, Response = Response<Body<RB>>, Error = BoxError, Future: Send + 'static>
       + Clone
       + Send
       + 'static
where
    P: Service<Uri, Response = S> + Clone + Send + 'static,
    P::Error: Into<BoxError>,
    P::Future: Send + 'static,
    S: Service<Request<B>, Response = Response<RB>> + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: http_body::Body,
{
    checkout::Checkout::new(pool, attempts)
}
