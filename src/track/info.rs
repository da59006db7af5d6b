//! `ConnectionInfo`: the connection's story for one response.

use std::task::{Context, Poll};
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use http_body::Body;

use super::future::ResponseFuture;
use super::{ConnectionCapture, ConnectionState, ExchangeOutcome, TrackedBody};

/// What happened on the connection for one request, in the spirit of curl's
/// `-w` variables and Go's `httptrace`: which connection, the request's
/// number on it (reused or not), idle before, connect, upload, time to first
/// byte, and what the request did on the wire (bytes sent and received, how
/// its exchange ended, whether that record is exact). The one view of a
/// request on its connection; [`ConnectionState`] is the live connection.
///
/// Get it with [`ConnectionInfo::of(&response)`](ConnectionInfo::of), which
/// works on every response that came over a tracked connection: from the
/// one-call [`client`](crate::client), from hyper-util's client over a
/// [`TrackConnections`](super::TrackConnections) connector, whatever layers
/// are above. It reads the tracker's [`ConnectionState`] (the response's
/// extension, or the one-call client's response body), so take
/// it as soon as the response arrives (the state moves on with the
/// connection's next request). [`WithConnectionInfoLayer`] takes that snapshot
/// for you when the head arrives and stores it as a `ConnectionInfo`
/// response extension, which `of` then returns; without that layer,
/// `response.extensions().get::<ConnectionInfo>()` is `None`. Where the
/// connection's state is in reach without a response (a request that
/// failed, through its [`ConnectionCapture`]),
/// [`ConnectionState::info`] takes the same snapshot of its latest request
/// at any time: after the response body ended it says how the exchange
/// ended.
///
/// Durations are measured on the socket by the tracker's IO, between the
/// socket operations it sees: a request small enough to go out in one write
/// has an [`upload_duration`](Self::upload_duration) of exactly zero.
///
/// On an HTTP/2 connection ([`ConnectionState::is_http2`]) the socket
/// carries every stream at once and requests open no exchange of their
/// own: the connection's facts hold, but the request number, the byte
/// counts and the outcome describe the socket, not one stream.
///
/// ```
/// use tower_conn_lifecycle::track::{ConnectionInfo, ExchangeOutcome};
///
/// /// Whether the record proves the request never reached the server, or
/// /// died on a reused connection before any byte of its response.
/// fn retry_safe_by_wire(info: &ConnectionInfo) -> bool {
///     (info.is_exact() && info.bytes_sent() == 0)
///         || (info.is_reused()
///             && !info.response_started()
///             && info.outcome() == ExchangeOutcome::ClosedBeforeResponse)
/// }
/// # let _ = retry_safe_by_wire;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub(super) connection_id: u64,
    pub(super) request_number: u64,
    pub(super) idle_before: Duration,
    pub(super) connect_duration: Duration,
    pub(super) upload_duration: Option<Duration>,
    pub(super) time_to_first_byte: Option<Duration>,
    pub(super) bytes_sent: u64,
    pub(super) bytes_received: u64,
    pub(super) outcome: ExchangeOutcome,
    pub(super) exact: bool,
}

impl ConnectionInfo {
    /// The [`ConnectionInfo`] of a response: the extension if a
    /// [`WithConnectionInfoLayer`] put one there, otherwise a snapshot of the
    /// tracked connection's state (accurate when taken as soon as the response
    /// head arrives). `None` when the connection was not tracked.
    pub fn of<B: 'static>(response: &http::Response<B>) -> Option<ConnectionInfo> {
        let ext = response.extensions();
        ext.get::<ConnectionInfo>().copied().or_else(|| {
            let state = ext.get::<ConnectionState>().or_else(|| {
                // The one-call client's responses carry it in their body.
                let body: &dyn std::any::Any = response.body();
                body.downcast_ref::<crate::client::Body>()?
                    .connection_state()
            });
            state.map(ConnectionState::info)
        })
    }

    /// The connection's process-unique id (starts at 1).
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }

    /// The number of this request on its connection: 1 for a new
    /// connection (0 in a snapshot of a connection no request has begun
    /// on yet).
    pub fn request_number(&self) -> u64 {
        self.request_number
    }

    /// Whether the connection had carried an earlier request.
    pub fn is_reused(&self) -> bool {
        self.request_number > 1
    }

    /// How long the connection sat idle (since the previous response's last
    /// byte, or, if that response was drained late from the socket buffer,
    /// since the connection was last caught up with the server: see
    /// [`ConnectionState::idle_since`](super::ConnectionState::idle_since))
    /// before this request's first byte; zero on a new connection.
    pub fn idle_before(&self) -> Duration {
        self.idle_before
    }

    /// How long the connector took to establish the connection (TCP, plus TLS
    /// when tracked outside it). Reused connections report their original
    /// connect time.
    pub fn connect_duration(&self) -> Duration {
        self.connect_duration
    }

    /// From this request's first byte written to its last byte written before
    /// the response started: `Some(0ns)` when the whole request went out in
    /// one socket write (any small request), `None` when nothing of it was
    /// written before the response started.
    pub fn upload_duration(&self) -> Option<Duration> {
        self.upload_duration
    }

    /// From this request's first byte written to the response's first byte.
    pub fn time_to_first_byte(&self) -> Option<Duration> {
        self.time_to_first_byte
    }

    /// Bytes of this request (head and body) written to the socket, as of
    /// the snapshot: the same count as a timeout's
    /// [`Elapsed::bytes_sent`](crate::phase_timeout::Elapsed::bytes_sent).
    /// The connection's totals are [`ConnectionState::bytes_written`].
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Bytes of this request's response read from the socket (a `1xx` head
    /// included), as of the snapshot. The connection's totals are
    /// [`ConnectionState::bytes_read`].
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Whether any byte of the response had arrived.
    pub fn response_started(&self) -> bool {
        self.bytes_received > 0
    }

    /// How the request's exchange ended, or
    /// [`InFlight`](ExchangeOutcome::InFlight) (a snapshot taken when the
    /// response head arrived: the body is still to come).
    pub fn outcome(&self) -> ExchangeOutcome {
        self.outcome
    }

    /// Whether the byte counts are proof of what reached the wire. `false`
    /// when a write failed inside an IO that can fail after part of the
    /// same call went out (a TLS stream: what was written is unknown), or
    /// when the exchange's start was inferred from the order of reads and
    /// writes while the previous exchange was still open (a client stack
    /// whose requests do not announce themselves, see the
    /// [module docs](super)). Nothing about an inexact record proves that
    /// nothing was written.
    pub fn is_exact(&self) -> bool {
        self.exact
    }
}

/// The tracker's request-side layer: inserts a [`ConnectionInfo`] into every
/// response that came over a tracked connection, and marks the exchange's
/// end for the tracker.
///
/// Its response body is a [`TrackedBody`], which ends the connection's
/// exchange when the body ends (at once for an empty body), so the
/// connection is known idle from the last byte on the wire. A request whose
/// response future or body is dropped before the end poisons its HTTP/1
/// connection, which is then closed at once and never handed to another
/// request. Every other request-plane layer of this crate does the same
/// marking itself; this layer is for stacks that use none of them.
///
/// **It needs the tracker.** Over a client whose connector is not wrapped
/// by [`TrackConnectionsLayer`](super::TrackConnectionsLayer) (or one that
/// hides its connections, such as reqwest) responses pass through without a
/// `ConnectionInfo`; the first such response is logged once per process as
/// a `tracing` warning.
#[derive(Clone, Copy, Debug, Default)]
pub struct WithConnectionInfoLayer {
    _priv: (),
}

impl WithConnectionInfoLayer {
    /// A new layer; the client below it needs a tracked connector (see
    /// above).
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for WithConnectionInfoLayer {
    type Service = WithConnectionInfo<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithConnectionInfo { inner }
    }
}

/// Service made by [`WithConnectionInfoLayer`].
#[derive(Clone, Debug)]
pub struct WithConnectionInfo<S> {
    inner: S,
}

impl<S> WithConnectionInfo<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, B> Service<http::Request<ReqB>> for WithConnectionInfo<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<B>>,
    B: Body,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqB>) -> Self::Future {
        let capture = ConnectionCapture::get_or_insert(&mut req);
        ResponseFuture::new(self.inner.call(req), capture)
    }
}
