//! The whole stack in one call: every layer of this crate in the right
//! order, on hyper-util's composable connection pools.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower_conn_lifecycle::client;
//! use tower_conn_lifecycle::phase_timeout::PhaseTimeoutLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let client = client::builder()
//!     .connect_timeout(Duration::from_secs(2))
//!     .timeouts(PhaseTimeoutLayer::new().send(Duration::from_secs(5)).read(Duration::from_secs(30)))
//!     .build::<Full<Bytes>>();
//! // `client` is a cloneable `tower::Service<http::Request<Full<Bytes>>>`.
//! # let _ = client;
//! # }
//! ```
//!
//! # The stack, outermost first, and why in this order
//!
//! ```text
//! request plane                          per origin, per connection
//! RetryOnStaleConnection                 http://  pool::cache (HTTP/1)
//!  PhaseTimeout (send / read / total)    https:// by ALPN:
//!   the engine: origin → pool →                   h2 → one shared connection
//!   checkout ───────────────────────────▶         else pool::cache
//!                                         each connection: IdleExpiryConnection
//!                                          → hyper's conn::http1 / conn::http2
//!                                         made by: ConnectTimeout
//!                                          → TrackConnections
//!                                           → SharedTlsConnector (feature `tls`)
//!                                            → HttpConnector, or yours
//! ```
//!
//! * **Retry outermost**, so each attempt has its own timeouts, its own
//!   record of the exchange on the wire, and a retry is judged from what
//!   that attempt did.
//! * **PhaseTimeout next**, so a timeout bounds one attempt (the retry layer
//!   never retries a timeout that may have reached the server). A client
//!   built without any phase limit (the default) leaves it out of its
//!   requests' path: there it would only hand each attempt's record to the
//!   request body, which the client then does alone (a request carrying a
//!   [`PhaseOverride`] still goes through it, with the override's limits).
//! * **The engine** keeps one pool per origin (scheme, host and port) from
//!   hyper-util's composable pools, the design hyper's maintainers recommend
//!   over the legacy client's pool: `pool::cache` for HTTP/1 connections;
//!   for `https://`, a connection that negotiated `h2` is shared by every
//!   request, the others go to a cache. Until the origin is known to speak
//!   HTTP/1, one request at a time makes a new connection and the others
//!   wait for it (a burst of requests on a new client makes one TLS
//!   handshake, not one each; a failed handshake fails the requests that
//!   waited for it). hyper-util's `pool::negotiate` and `pool::singleton`
//!   do this job in principle, but under concurrency connect once per
//!   request and can panic (0.1.21), so the engine has its own.
//! * **Every request passes through its connection's own service**
//!   ([`IdleExpiryConnection`](crate::idle_expiry::IdleExpiryConnection)):
//!   it refuses an expired connection before a byte is written (the engine
//!   then takes another from the pool, up to eight, and opens a new one if
//!   none is left; a connection idle past its reuse but still open, such as
//!   a healing probe, or a probe below the floor not yet idle long enough
//!   for a request on it to test the estimate, is set aside, left open and
//!   given back once the request has its connection), opens the attempt's record on the tracker right there
//!   (no connection capture: the request's connection is known as it is
//!   handed over), and reads each response's `Keep-Alive` before anything
//!   else sees the response.
//! * On the connector, **ConnectTimeout outermost** bounds TCP *and* TLS
//!   (and the HTTP/2 handshake's wait is bounded by `total`), and the
//!   **tracker outside TLS** wraps the TLS stream: it sees the whole
//!   connection set-up and ALPN, and its byte counts are the HTTP bytes
//!   (plaintext), not TLS records. A write that fails inside TLS may have
//!   sent part of itself, so the tracker never counts it as "nothing
//!   written".
//!
//! # What the engine does that hyper's connection API leaves to its caller
//!
//! * HTTP/1 requests get a `Host` header (unless they carry one) and
//!   origin-form (`GET /path?query`; authority-form for `CONNECT`); HTTP/2
//!   requests keep the absolute URI for `:scheme` and `:authority`.
//! * A request's URI must be absolute (scheme and host): anything else is
//!   refused before a connection is looked for, with a typed error (the
//!   retry layer's [`NotRetried`](crate::retry::NotRetried), rule
//!   `NotConnectionFailure`). `https://` needs the `tls` feature (and a
//!   crypto provider); other schemes are the connector's to refuse.
//! * An HTTP/1 connection goes back to its pool when its response body has
//!   ended (read to the end, or at the head for an empty body), not when
//!   the head arrived: a request never queues behind another request's
//!   download. A body dropped before its end abandons the exchange, and
//!   the connection is closed instead of reused.
//! * `101 Switching Protocols` and `CONNECT` hand the connection to the
//!   caller (`hyper::upgrade::on`).
//! * A request that finds no idle connection while a connect to its origin
//!   that nobody waits for any more is under way (one that lost its race
//!   to a connection coming back, still in its TCP or TLS handshake) waits
//!   for that one instead of connecting: a burst that follows another
//!   takes the connections the first one started (hyper-util's pool and
//!   Go's `Transport` connect again; bursts of 16 to a server 300 ms of
//!   handshake away opened 76 connections in five bursts, now 16). If that
//!   connect fails, the request connects itself; it never gets another
//!   request's connect error.
//! * Idle connections are bounded per origin
//!   ([`Builder::max_idle_per_origin`]); expired ones close by themselves
//!   (the tracker) and leave the pool at the next sweep, which runs when
//!   the client next opens a connection. Origins left with no connection
//!   are evicted once there are more than 256.
//!
//! The cost of all of it is about that of hyper-util's legacy client
//! without any layer (the README's Performance section has the numbers):
//! the legacy client's own pool, checkout and per-request task cost more
//! than everything this crate adds. The layers still work on the legacy
//! client for stacks built by hand ([`crate::phase_timeout`],
//! [`crate::retry`], [`crate::idle_expiry`]).
//!
//! Defaults: a 90 s idle expiry with learning (announced and learned server
//! limits lower it per connection), one safe retry, and no connect, send,
//! read or total limit until set. Clones share the pool, the learned idle
//! timeouts and the stats.
//!
//! # What you can change
//!
//! Every layer's settings ([`Builder::timeouts`], [`Builder::idle_expiry`],
//! [`Builder::retry`], [`Builder::connect_timeout`]), the TLS configuration
//! (`Builder::tls_config`, feature `tls`), the pools' bound ([`Builder::max_idle_per_origin`]),
//! and what a hand-built stack on hyper-util would let you configure:
//!
//! * **the transport**: hyper-util's `HttpConnector` with your settings
//!   (nodelay, local address, keep-alive, happy eyeballs, its own connect
//!   timeout per address, buffer sizes: [`Builder::http_connector`]), or
//!   any connector of yours, such as an `HttpConnector` with your resolver
//!   ([`Builder::connector`]);
//! * **hyper's protocol settings**, used for every handshake:
//!   [`Builder::http1`] (`hyper::client::conn::http1::Builder`) and
//!   [`Builder::http2`] (`hyper::client::conn::http2::Builder`: windows,
//!   keep-alive pings, header list size, …).
//!
//! ```
//! use std::time::Duration;
//! use hyper_util::client::legacy::connect::HttpConnector;
//! use tower_conn_lifecycle::client;
//!
//! let mut http = HttpConnector::new();
//! http.set_nodelay(true);
//! http.set_keepalive(Some(Duration::from_secs(60)));
//! let client = client::builder()
//!     .http_connector(http)
//!     .http1(|h1| {
//!         h1.title_case_headers(true);
//!     })
//!     .http2(|h2| {
//!         h2.initial_stream_window_size(1 << 20);
//!     })
//!     .build::<http_body_util::Full<bytes::Bytes>>();
//! # let _ = client;
//! ```
//!
//! # What stays fixed, and why
//!
//! The client is the crate's layers in the order that makes each of them
//! correct; what would break one of them is not a setting:
//!
//! * **The layer order** (Retry → PhaseTimeout → the engine → each
//!   connection's IdleExpiry): the reasons are above. A different order is
//!   a stack built by hand ([`crate::retry`], [`crate::phase_timeout`],
//!   [`crate::idle_expiry`], or the [`pool`](crate::pool) pieces).
//! * **The connector's order**: ConnectTimeout → tracker → TLS → your
//!   transport. The connect timeout bounds your connector too; the tracker
//!   wraps whatever your connector returns (every layer reads its state:
//!   without it nothing expires and no retry is judged safe), and sits
//!   outside TLS so that it sees plaintext HTTP bytes. With the `tls`
//!   feature your connector receives `https://` URIs and returns the plain
//!   stream TLS runs over (an `HttpConnector` given to
//!   [`Builder::http_connector`] gets `enforce_http(false)` for that).
//!   ALPN comes from the TLS configuration: `h2` there means HTTP/2 with
//!   servers that choose it.
//! * **The runtime**: tokio. Connection tasks are spawned on it, and
//!   hyper's HTTP/2 executor and timer are tokio's (the timer is set again
//!   at [`Builder::build`], whatever [`Builder::http2`] set): the layers'
//!   timers are tokio's too, so that paused time in tests moves them all.
//! * **Pooling**: one pool per origin (scheme, host, port), HTTP/1
//!   connections in a cache and an `h2` connection shared, a connection
//!   back in its pool when its response body ends, refused connections
//!   skipped (up to eight) before anything is written. hyper-util's legacy
//!   client's pool settings have no counterpart here except
//!   [`Builder::max_idle_per_origin`]; its idle timeout is the idle expiry
//!   (configured, announced or learned), per connection.
//! * **What hyper leaves to its caller** (`Host`, origin-form, upgrades) is
//!   always done, as listed above.
//!
//! # Request bodies
//!
//! [`Builder::build`] takes any request body type, `Clone` or not: a
//! streamed upload (`StreamBody`, a channel, your own [`http_body::Body`])
//! goes through as it is, pulled frame by frame as the connection writes
//! it. Every body reaches the stack as a [`RequestBody`]: a cheap-to-clone
//! one (`Full<Bytes>`, `Empty<Bytes>`, `String`) is retried by cloning, a
//! streamed one through the retry layer's replay buffer
//! ([`RetryOnStaleConnectionLayer::replay_limit`], 64 KiB by default), so
//! a streamed upload whose connection fails before more than that was read
//! of it is sent again from its start, and one that fails later is not
//! ([`Rule::BodyNotReplayable`](crate::retry::Rule::BodyNotReplayable)).
//! `examples/streamed_upload.rs` streams 100 MB through it and shows the
//! retry.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::connect_timeout::{ConnectTimeout, ConnectTimeoutLayer};
use crate::drain::{DrainBody, DrainHandle, DrainReport};
use crate::idle_expiry::{IdleExpiryLayer, IdleExpiryStats};
use crate::phase_timeout::{PhaseOverride, PhaseTimeout, PhaseTimeoutLayer, ResponseBody};
use crate::retry::{RetryOnStaleConnection, RetryOnStaleConnectionLayer};
use crate::track::{TrackConnections, TrackConnectionsLayer, TrackStats, TrackedBody};
use crate::{BoxError, RequestBody};

mod announce;
mod engine;

use announce::Announce;
pub(crate) use engine::{CheckoutsRefused, ConnectError, Http1Closed, Http2Closed};
use engine::{Engine, PooledBody};

#[cfg(feature = "tls")]
type Transport<C> = crate::tls::SharedTlsConnector<C>;
#[cfg(not(feature = "tls"))]
type Transport<C> = C;

/// The connector stack around a transport connector `C`.
type Stacked<C> = ConnectTimeout<TrackConnections<Transport<C>>>;

type Stack = RetryOnStaleConnection<PhaseTimeout<Engine<RequestBody>>>;
/// The stack of a client without phase limits (see [`announce`]).
type Plain = RetryOnStaleConnection<Announce<Engine<RequestBody>>>;
type InnerBody = DrainBody<TrackedBody<ResponseBody<PooledBody>>>;
/// A request's state machine through PhaseTimeout, boxed in [`ResponseFuture`].
type Timed = crate::drain::future::ResponseFuture<<Stack as Service<Request<RequestBody>>>::Future>;
/// A request's state machine without phase limits, boxed in [`ResponseFuture`].
type Untimed =
    crate::drain::future::ResponseFuture<<Plain as Service<Request<RequestBody>>>::Future>;

/// A builder for the one-call [`Client`]; see the [module docs](self).
///
/// `C` is the transport connector: hyper-util's `HttpConnector` unless
/// [`Builder::connector`] gave another. It is a type parameter (rather than
/// a boxed connector) so that the client's connections cost the same
/// whichever it is; the built [`Client<B>`] does not carry it.
///
/// Each [`build`](Self::build) makes a client of its own: its pools,
/// connections, connection counters and drain are not shared with a client
/// built from a clone of the same builder (draining one leaves the other
/// alone). What the builder's layers share between their clones is shared
/// by such clients too: the [`IdleExpiryLayer`]'s learned limits and
/// counters, the retry layer's budget.
#[derive(Clone, Debug)]
pub struct Builder<C = HttpConnector> {
    connect: Option<Duration>,
    timeouts: PhaseTimeoutLayer,
    idle_expiry: IdleExpiryLayer,
    retry: RetryOnStaleConnectionLayer,
    #[cfg(feature = "tls")]
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    max_idle_per_origin: usize,
    state_extension: bool,
    retire_stalled_http2: Option<Duration>,
    connector: C,
    http1: hyper::client::conn::http1::Builder,
    http2: hyper::client::conn::http2::Builder<TokioExecutor>,
}

/// Starts a [`Builder`] with the defaults described in the [module docs](self).
pub fn builder() -> Builder {
    Builder {
        connect: None,
        timeouts: PhaseTimeoutLayer::new(),
        idle_expiry: IdleExpiryLayer::new(Duration::from_secs(90)),
        retry: RetryOnStaleConnectionLayer::new(),
        #[cfg(feature = "tls")]
        tls: None,
        max_idle_per_origin: DEFAULT_MAX_IDLE_PER_ORIGIN,
        state_extension: false,
        retire_stalled_http2: None,
        connector: for_tls(HttpConnector::new()),
        http1: hyper::client::conn::http1::Builder::new(),
        http2: hyper::client::conn::http2::Builder::new(TokioExecutor::new()),
    }
}

/// The default of [`Builder::max_idle_per_origin`].
pub const DEFAULT_MAX_IDLE_PER_ORIGIN: usize = 32;

/// `http` with `enforce_http(false)` when the client has TLS, so that
/// `https://` URIs reach it under the TLS connector.
fn for_tls(#[allow(unused_mut)] mut http: HttpConnector) -> HttpConnector {
    #[cfg(feature = "tls")]
    http.enforce_http(false);
    http
}

impl<C> Builder<C> {
    /// The connect timeout (TCP and TLS); `None` (the default) for none.
    pub fn connect_timeout(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.connect = limit.into();
        self
    }

    /// The send / read / total limits (default: none).
    ///
    /// Without any limit the client's requests skip PhaseTimeout altogether
    /// (a request carrying a [`PhaseOverride`] still takes it); with one,
    /// every request runs its phase machine: about 2 k instructions and 3
    /// clock reads per keep-alive `GET` on loopback, client and server
    /// together (the README's Performance section, rows `full` and
    /// `full_default`).
    pub fn timeouts(mut self, timeouts: PhaseTimeoutLayer) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The idle expiry (default: 90 s, learning on). Pass a clone of one
    /// layer to several builders to share what it learns.
    pub fn idle_expiry(mut self, layer: IdleExpiryLayer) -> Self {
        self.idle_expiry = layer;
        self
    }

    /// The retry settings (default: one safe retry).
    pub fn retry(mut self, layer: RetryOnStaleConnectionLayer) -> Self {
        self.retry = layer;
        self
    }

    /// The rustls configuration for `https://` (default: the process-wide
    /// [`shared_config`](crate::tls::shared_config)).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_config(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// The most idle connections kept per origin (scheme, host and port;
    /// default [`DEFAULT_MAX_IDLE_PER_ORIGIN`]). The surplus, and every
    /// expired connection, is closed when the client next opens a
    /// connection. `0` keeps none: every request opens an HTTP/1
    /// connection, which closes when its exchange ends (an HTTP/2
    /// connection is shared by the requests in flight and kept).
    pub fn max_idle_per_origin(mut self, max: usize) -> Self {
        self.max_idle_per_origin = max;
        self
    }

    /// Whether each response also carries the tracker's
    /// [`ConnectionState`](crate::track::ConnectionState) in its extensions
    /// (default: no). It is always in the response [`Body`]
    /// ([`Body::connection_state`], which
    /// [`ConnectionInfo::of`](crate::track::ConnectionInfo::of) reads); the
    /// extension survives replacing the body (`response.map(..)`), and
    /// costs three allocations per response.
    pub fn connection_state_extension(mut self, on: bool) -> Self {
        self.state_extension = on;
        self
    }

    /// Retires a stalled HTTP/2 connection (default: off): one with
    /// streams in flight that has received nothing (no frame, not a byte)
    /// for `limit` since the later of its last read and the first request
    /// sent after it gets no new request; the next request opens a new
    /// connection, while the streams already on the stalled one keep their
    /// own limits (set a `read` or `total` limit in
    /// [`timeouts`](Self::timeouts) to end them). Each retirement counts in
    /// [`TrackStats::stalled_http2_retired`] (the client's
    /// [`connection_stats`](Client::connection_stats)) and is a `tracing`
    /// debug event.
    ///
    /// Off by default because silence is not proof of a stall: a long poll
    /// or a slow response sends no frame for as long as the server thinks,
    /// and retiring its connection costs every later request a new
    /// connection (a TCP and TLS handshake) for nothing. Turn it on with a
    /// limit above the slowest answer the origin legitimately gives
    /// (HTTP/2 PING keep-alive would tell for certain, but many gRPC
    /// servers reject pings, which is why hyper leaves it off too).
    /// `Duration::ZERO` retires a connection as soon as a second request
    /// finds a stream waiting on it (one connection per request in flight);
    /// `None` turns it off.
    pub fn retire_stalled_http2(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.retire_stalled_http2 = limit.into();
        self
    }

    /// hyper-util's `HttpConnector` with your settings (`set_nodelay`,
    /// `set_local_address`, `set_keepalive`, `set_happy_eyeballs_timeout`,
    /// its own `set_connect_timeout` per address, buffer sizes, …) instead
    /// of `HttpConnector::new()`. The client still wraps it as usual (see
    /// [What stays fixed](self#what-stays-fixed-and-why)): with the `tls`
    /// feature it turns `enforce_http(false)` on, so that `https://` URIs
    /// reach it under the TLS connector.
    ///
    /// ```
    /// use std::time::Duration;
    /// use hyper_util::client::legacy::connect::HttpConnector;
    /// use tower_conn_lifecycle::client;
    ///
    /// let mut http = HttpConnector::new();
    /// http.set_nodelay(true);
    /// http.set_happy_eyeballs_timeout(Some(Duration::from_millis(250)));
    /// let client = client::builder()
    ///     .http_connector(http)
    ///     .build::<http_body_util::Full<bytes::Bytes>>();
    /// # let _ = client;
    /// ```
    pub fn http_connector(self, connector: HttpConnector) -> Builder<HttpConnector> {
        self.with_connector(for_tls(connector))
    }

    /// Any connector instead of hyper-util's `HttpConnector`: a
    /// `tower::Service<Uri>` whose connections are hyper IO
    /// (`hyper::rt::Read + Write`) and hyper-util `Connection`s, such as
    /// an `HttpConnector<R>` with your own resolver, a Unix socket or an
    /// in-memory transport. It connects in place of TCP: the client still
    /// puts the TLS connector (feature `tls`; `https://` URIs reach your
    /// connector, which returns the plain stream TLS runs over), the
    /// tracker and the connect timeout around it. The client's type stays
    /// [`Client<B>`] (the connector is erased inside it; connecting is
    /// cold, so its future is boxed), and its connections' IO is your
    /// connector's, with no indirection. (An `HttpConnector<R>` accepts
    /// `https://` URIs only with `enforce_http(false)`.) A connection
    /// whose `Connection::connected()` says `negotiated_h2` is spoken
    /// HTTP/2 to, over `http://` too (prior knowledge, h2c); such an
    /// `http://` connection sits in the origin's HTTP/1 pool, so it
    /// carries one request at a time. A connection that refuses its first
    /// request (the server closed it at once) fails the request at once.
    ///
    /// ```
    /// use hyper_util::client::legacy::connect::HttpConnector;
    /// use tower_conn_lifecycle::client;
    ///
    /// // Any `Service<Uri>` returning hyper IO; here one that counts its
    /// // connects around hyper-util's connector.
    /// let connects = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    /// let counted = {
    ///     let connects = connects.clone();
    ///     tower::ServiceBuilder::new()
    ///         .map_request(move |uri: http::Uri| {
    ///             connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ///             uri
    ///         })
    ///         .service(HttpConnector::new())
    /// };
    /// let client = client::builder()
    ///     .connector(counted)
    ///     .build::<http_body_util::Full<bytes::Bytes>>();
    /// # let _ = client;
    /// ```
    pub fn connector<D>(self, connector: D) -> Builder<D>
    where
        D: Service<http::Uri> + Clone + Send + Sync + 'static,
        D::Response: hyper::rt::Read + hyper::rt::Write + Connection + Unpin + Send + 'static,
        D::Future: Send + 'static,
        D::Error: Into<BoxError>,
    {
        self.with_connector(connector)
    }

    /// This builder with the transport connector `connector`.
    fn with_connector<D>(self, connector: D) -> Builder<D> {
        Builder {
            connect: self.connect,
            timeouts: self.timeouts,
            idle_expiry: self.idle_expiry,
            retry: self.retry,
            #[cfg(feature = "tls")]
            tls: self.tls,
            max_idle_per_origin: self.max_idle_per_origin,
            state_extension: self.state_extension,
            retire_stalled_http2: self.retire_stalled_http2,
            connector,
            http1: self.http1,
            http2: self.http2,
        }
    }

    /// hyper's HTTP/1 settings for every HTTP/1 connection
    /// (`hyper::client::conn::http1::Builder`: `title_case_headers`,
    /// `max_buf_size`, `writev`, the response parser's leniencies, …):
    /// `configure` changes the client's builder, which starts as
    /// `http1::Builder::new()`.
    ///
    /// ```
    /// use tower_conn_lifecycle::client;
    ///
    /// let client = client::builder()
    ///     .http1(|h1| {
    ///         h1.title_case_headers(true).max_buf_size(64 * 1024);
    ///     })
    ///     .build::<http_body_util::Full<bytes::Bytes>>();
    /// # let _ = client;
    /// ```
    pub fn http1(
        mut self,
        configure: impl FnOnce(&mut hyper::client::conn::http1::Builder),
    ) -> Self {
        configure(&mut self.http1);
        self
    }

    /// hyper's HTTP/2 settings for every HTTP/2 connection (`https://`
    /// where the server chose `h2` by ALPN;
    /// `hyper::client::conn::http2::Builder`: window sizes, keep-alive
    /// pings, `max_concurrent_reset_streams`, header list size, …):
    /// `configure` changes the client's builder, which starts as
    /// `http2::Builder::new(TokioExecutor::new())`. Its executor and its
    /// timer stay tokio's (the timer is set again when the client is
    /// built).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_conn_lifecycle::client;
    ///
    /// let client = client::builder()
    ///     .http2(|h2| {
    ///         h2.keep_alive_interval(Duration::from_secs(20))
    ///             .keep_alive_timeout(Duration::from_secs(5))
    ///             .initial_stream_window_size(1 << 20);
    ///     })
    ///     .build::<http_body_util::Full<bytes::Bytes>>();
    /// # let _ = client;
    /// ```
    pub fn http2(
        mut self,
        configure: impl FnOnce(&mut hyper::client::conn::http2::Builder<TokioExecutor>),
    ) -> Self {
        configure(&mut self.http2);
        self
    }

    /// ConnectTimeout → tracker → TLS (feature `tls`) → `transport`.
    fn stack<D>(&self, track: &TrackConnectionsLayer, transport: D) -> Stacked<D> {
        #[cfg(feature = "tls")]
        let transport = match &self.tls {
            Some(config) => crate::tls::SharedTlsConnector::from_config(transport, config.clone()),
            None => crate::tls::SharedTlsConnector::new(transport),
        };
        ConnectTimeoutLayer::new(self.connect.unwrap_or(Duration::MAX))
            .layer(track.layer(transport))
    }

    /// Builds the client for request bodies of type `B`: any
    /// [`http_body::Body`] that is `Send + 'static` with errors convertible
    /// to [`BoxError`], `Clone` or not. A cheap-to-clone body (`Full<Bytes>`,
    /// `Empty<Bytes>`, `String`) is retried by cloning; a streamed one
    /// (`StreamBody`, a channel, your own) through the retry layer's replay
    /// buffer ([`RetryOnStaleConnectionLayer::replay_limit`], 64 KiB by
    /// default): see [`RequestBody`]. Every body reaches the engine as a
    /// [`RequestBody`].
    pub fn build<B>(self) -> Client<B>
    where
        B: http_body::Body + Send + 'static,
        B::Error: Into<BoxError>,
        C: Service<http::Uri> + Clone + Send + Sync + 'static,
        C::Response: hyper::rt::Read + hyper::rt::Write + Connection + Unpin + Send + 'static,
        C::Future: Send + 'static,
        C::Error: Into<BoxError>,
    {
        // The client's own tracker (not the builder's: clients built from
        // clones of one builder are separate clients, and a drain closes
        // connections through its client's tracker).
        let track = TrackConnectionsLayer::new();
        let connector = self.stack(&track, self.connector.clone());
        let mut http2 = self.http2;
        http2.timer(TokioTimer::new());
        let drain = DrainHandle::with_tracker(&track.stats());
        let engine = Engine::new(engine::Settings {
            drain: drain.clone(),
            parts: engine::Parts {
                connector,
                http1: self.http1,
                http2,
                idle_expiry: self.idle_expiry.clone(),
                idle_expiry_http1: if self.max_idle_per_origin == 0 {
                    self.idle_expiry.clone().max_requests(1)
                } else {
                    self.idle_expiry.clone()
                },
                state_extension: self.state_extension,
            },
            stats: track.stats(),
            max_idle_per_origin: self.max_idle_per_origin,
            retire_stalled_http2: self.retire_stalled_http2,
        });
        let mut retry = self.retry;
        retry.settings.direct_captures = true;
        // Without a limit, PhaseTimeout would only announce each attempt:
        // the plain stack does that alone (requests with a `PhaseOverride`
        // still take the timed one).
        let plain =
            (!self.timeouts.limits().any()).then(|| retry.clone().layer(Announce(engine.clone())));
        let stack = retry.layer(self.timeouts.with_direct_captures().layer(engine));
        Client {
            inner: stack,
            plain,
            handles: Arc::new(Handles {
                connections: track.stats(),
                expiry: self.idle_expiry.stats(),
                drain,
            }),
            body: PhantomData,
        }
    }
}

/// The one-call client: a cloneable `tower::Service<http::Request<B>>`
/// whose responses carry a [`Body`]. Errors are [`BoxError`]s: a
/// [`NotRetried`](crate::retry::NotRetried) wrapping the last attempt's
/// error (a [`phase_timeout::Elapsed`](crate::phase_timeout::Elapsed), a
/// hyper-util error, …) — use [`find_cause`](crate::find_cause).
///
/// Responses also carry the tracker's
/// [`ConnectionState`](crate::track::ConnectionState) in their [`Body`]
/// (read it with [`Body::connection_state`] or
/// [`ConnectionInfo::of`](crate::track::ConnectionInfo::of); in the
/// extensions too with [`Builder::connection_state_extension`]) and, after
/// a retry, a [`Retried`](crate::retry::Retried) extension.
pub struct Client<B> {
    inner: Stack,
    // The same engine without PhaseTimeout, when the client has no phase
    // limit (see [`announce`]).
    plain: Option<Plain>,
    // The handles in one `Arc`: a clone of the client (one per spawned
    // request, in many programs) then costs one reference count, not three.
    handles: Arc<Handles>,
    /// The request body type (every body reaches the stack as a
    /// [`RequestBody`]).
    body: PhantomData<fn(B)>,
}

/// What every clone of a [`Client`] shares besides its stack.
struct Handles {
    connections: TrackStats,
    expiry: IdleExpiryStats,
    drain: DrainHandle,
}

impl<B> Clone for Client<B> {
    fn clone(&self) -> Self {
        Client {
            inner: self.inner.clone(),
            plain: self.plain.clone(),
            handles: Arc::clone(&self.handles),
            body: PhantomData,
        }
    }
}

impl<B> std::fmt::Debug for Client<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("connections", &self.handles.connections)
            .field("expiry", &self.handles.expiry)
            .finish_non_exhaustive()
    }
}

impl<B> Client<B> {
    /// The connection counters (opened, open now, stalled HTTP/2
    /// connections retired): a handle shared with the client and its
    /// clones, like the layers' `stats()`.
    pub fn connection_stats(&self) -> TrackStats {
        self.handles.connections.clone()
    }

    /// Idle expiry's counters (expired, refused, learned, …): a handle
    /// shared with the client and its clones, like
    /// [`IdleExpiryLayer::stats`].
    pub fn expiry_stats(&self) -> IdleExpiryStats {
        self.handles.expiry.clone()
    }

    /// Shuts the client down gracefully: from this call on, new requests
    /// fail at once with [`Draining`](crate::drain::Draining) (nothing
    /// written), idle connections close (cleanly: the server reads EOF),
    /// connections whose exchange ends close instead of going back to
    /// their pool, and requests in flight run until their response body
    /// ends, or until `deadline`, when the rest are cut
    /// ([`DrainCut`](crate::drain::DrainCut)) and their connections
    /// closed. The future resolves to the [`DrainReport`].
    ///
    /// The drain belongs to the client's pools: every clone of the client
    /// is draining too. Dropping the future stops only the waiting (the
    /// client stays draining; nothing is cut at the deadline). A zero
    /// deadline cuts at once; one too far for the clock is clamped. See
    /// [`crate::drain`] for the details.
    ///
    /// ```
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::ServiceExt;
    /// use tower_conn_lifecycle::{client, drain::Draining, find_cause};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let client = client::builder().build::<Full<Bytes>>();
    /// let report = client.drain(Duration::from_secs(5)).await;
    /// assert_eq!(report.cut(), 0);
    /// let req = http::Request::get("http://127.0.0.1:9/").body(Full::default()).unwrap();
    /// let err = client.oneshot(req).await.unwrap_err();
    /// assert!(find_cause::<Draining>(err.as_ref()).is_some());
    /// # }
    /// ```
    pub fn drain(&self, deadline: Duration) -> impl Future<Output = DrainReport> + Send + 'static {
        self.handles.drain.drain(deadline)
    }

    /// The client's drain: [`drain`](Self::drain), and whether it has
    /// begun ([`DrainHandle::is_draining`]), from a handle that does not
    /// keep the client's request type.
    pub fn drain_handle(&self) -> DrainHandle {
        self.handles.drain.clone()
    }
}

impl<B> Service<Request<B>> for Client<B>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        ready!(Service::<Request<RequestBody>>::poll_ready(
            &mut self.inner,
            cx
        ))?;
        match &mut self.plain {
            Some(plain) => Service::<Request<RequestBody>>::poll_ready(plain, cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        use crate::drain::future::ResponseFuture as Guarded;
        let inner = match (self.handles.drain.enter(), &mut self.plain) {
            (Err(_), _) => Machine::Timed(Box::pin(Guarded::refused())),
            (Ok(guard), Some(plain)) if req.extensions().get::<PhaseOverride>().is_none() => {
                Machine::Untimed(Box::pin(Guarded::running(plain.call(req), guard)))
            }
            (Ok(guard), _) => {
                Machine::Timed(Box::pin(Guarded::running(self.inner.call(req), guard)))
            }
        };
        ResponseFuture {
            inner,
            body: PhantomData,
        }
    }
}

/// Response future of [`Client`]: two words, like hyper-util's and
/// reqwest's (the request's state machine is boxed once, at the call, so
/// that whatever awaits, spawns or moves the future copies 16 bytes rather
/// than the whole machine), and `Unpin`.
pub struct ResponseFuture<B> {
    inner: Machine,
    body: PhantomData<fn(B)>,
}

/// The request's state machine, through PhaseTimeout or not.
enum Machine {
    Timed(Pin<Box<Timed>>),
    Untimed(Pin<Box<Untimed>>),
}

impl<B> std::fmt::Debug for ResponseFuture<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<B> Future for ResponseFuture<B> {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match &mut self.inner {
            Machine::Timed(timed) => ready!(timed.as_mut().poll(cx)),
            Machine::Untimed(untimed) => ready!(untimed.as_mut().poll(cx)),
        }?;
        Poll::Ready(Ok(response.map(|inner| Body { inner })))
    }
}

pin_project! {
    /// The response body of [`Client`]: `Bytes` data, [`BoxError`] errors
    /// (a read-stall or total [`Elapsed`](crate::phase_timeout::Elapsed),
    /// the connection's error, or a [`DrainCut`](crate::drain::DrainCut)).
    /// Its request is in flight for [`Client::drain`] until it ends or is
    /// dropped.
    pub struct Body {
        #[pin]
        inner: InnerBody,
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("connection_state", &self.connection_state())
            .finish_non_exhaustive()
    }
}

impl Body {
    /// The tracker's state of the connection this response came over (the
    /// one-call client's responses carry it in their body rather than in
    /// their extensions, which would cost three allocations per response;
    /// [`ConnectionInfo::of`](crate::track::ConnectionInfo::of) finds it
    /// here). Take a snapshot as soon as the response arrives: the state
    /// moves on with the connection's next request.
    pub fn connection_state(&self) -> Option<&crate::track::ConnectionState> {
        self.inner.get_ref().get_ref().get_ref().connection_state()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// Origins whose connections all fail (nothing listens) open no
    /// connection, which is what used to trigger the sweep: the origin
    /// map still stays within its bound.
    #[tokio::test]
    async fn origins_that_never_connect_are_evicted_past_the_bound() {
        let client = builder().build::<http_body_util::Empty<Bytes>>();
        let engine = &client.plain.as_ref().expect("no phase limit").get_ref().0;
        // A port held on 127.0.0.1 (so no other test's server takes it),
        // asked on 300 other loopback addresses, where nothing listens.
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        for i in 2..302u32 {
            let [_, _, b, c] = (0x7f00_0000 + i).to_be_bytes();
            let req = Request::get(format!("http://127.0.{b}.{c}:{port}/"))
                .body(http_body_util::Empty::new())
                .unwrap();
            let sent = tokio::time::timeout(Duration::from_secs(10), client.clone().oneshot(req));
            let err = sent.await.expect("a refused connect is quick").unwrap_err();
            assert!(
                crate::find_cause::<engine::ConnectError>(err.as_ref()).is_some(),
                "{}",
                crate::error_chain(err.as_ref())
            );
        }
        drop(held);
        assert_eq!(client.connection_stats().opened(), 0);
        let origins = engine.origin_count();
        assert!(
            origins <= engine::MAX_ORIGINS + 1,
            "{origins} origins kept for 300 that never connected"
        );
    }

    /// The request's machine stays boxed: the future every caller awaits,
    /// spawns and moves is two words (which machine, and where), and
    /// `Unpin`.
    #[test]
    fn response_future_is_two_unpin_words() {
        fn unpin<T: Unpin>() {}
        unpin::<ResponseFuture<http_body_util::Full<Bytes>>>();
        assert_eq!(
            std::mem::size_of::<ResponseFuture<http_body_util::Full<Bytes>>>(),
            2 * std::mem::size_of::<usize>()
        );
    }
}
