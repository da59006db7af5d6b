//! `PhaseTimeoutLayer` and the per-request override.

use std::time::Duration;

use tower_layer::Layer;

use super::{Phase, PhaseTimeout};
use crate::RequestBodyService;

/// Shortest re-check interval while the connection is not yet known.
const MIN_RECHECK: Duration = Duration::from_millis(1);

/// The resolved limits for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) send: Option<Duration>,
    pub(crate) read: Option<Duration>,
    pub(crate) read_stall: Option<Duration>,
    pub(crate) total: Option<Duration>,
}

impl Limits {
    /// Whether any limit needs to know the request's connection.
    pub(crate) fn watches_connection(&self) -> bool {
        self.send.is_some() || self.read.is_some()
    }

    /// The shortest of `send` and `read`, a quarter of it (at least 1 ms):
    /// the re-check cadence while the phase is not yet known.
    pub(crate) fn cadence(&self) -> Option<Duration> {
        [self.send, self.read]
            .into_iter()
            .flatten()
            .min()
            .map(|d| (d / 4).max(MIN_RECHECK))
    }

    /// When the first timer check comes, after the request is issued: the
    /// first limit, or one cadence in when `send` or `read` is set, so that a
    /// capture filled on another task (not during one of the future's inner
    /// polls) is seen soon enough. `None`: no limit at all.
    pub(crate) fn first_check(&self) -> Option<Duration> {
        [self.send, self.read, self.total, self.cadence()]
            .into_iter()
            .flatten()
            .min()
    }

    pub(crate) fn any(&self) -> bool {
        self.watches_connection() || self.read_stall.is_some() || self.total.is_some()
    }

    /// The first phase, in request order, whose limit bounding the response
    /// head is zero: such a request fails at its first poll, untried. (A zero
    /// body stall limit is the body's business.)
    pub(crate) fn zero(&self) -> Option<Phase> {
        let zero = |limit: Option<Duration>| limit.is_some_and(|d| d.is_zero());
        [
            (Phase::Send, self.send),
            (Phase::Read, self.read),
            (Phase::Total, self.total),
        ]
        .into_iter()
        .find_map(|(phase, limit)| zero(limit).then_some(phase))
    }
}

/// Request-plane layer with separate `send`, `read` and `total` timeouts.
///
/// * `send` — a **stall** limit while the request is written: it fires only
///   after that long without upload progress, so a large upload that keeps
///   moving never fails.
/// * `read` — the wait for the response head, counted from the moment the
///   upload finished (not from when the request was issued); then, by
///   default, a stall limit between response-body frames
///   ([`read_body_stall`](Self::read_body_stall) changes that part alone).
///   Over a service that hides its connection (reqwest, a composable pool),
///   a request without a body counts from the call; see [`read`](Self::read).
///
/// `send` and `read` are most precise with the connection tracker on the
/// connector of hyper-util's client (socket bytes, HTTP/1); without it they
/// follow request-body frames, as the [module docs](super#how-progress-is-observed)
/// describe.
/// * `total` — a deadline from the call through the end of the response body.
///
/// Every limit is off until set. Setters take `Duration` or `None` (switch
/// off). A `Clone` of the layer copies the limits; nothing is shared.
///
/// Bounds: [`Duration::ZERO`] is already spent: a request with a zero `send`,
/// `read` or `total` fails at its first poll without being sent, and a zero
/// body stall fails every body that has not already ended at its first poll;
/// see the [module docs](super#zero-and-enormous-limits). Limits too large to
/// add to the clock (e.g. `Duration::MAX`) never fire. Neither panics.
///
/// ```
/// use std::time::Duration;
/// use tower_conn_lifecycle::phase_timeout::PhaseTimeoutLayer;
///
/// let layer = PhaseTimeoutLayer::new()
///     .send(Duration::from_secs(1))
///     .read(Duration::from_secs(5))
///     .total(None);
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Default)]
pub struct PhaseTimeoutLayer {
    send: Option<Duration>,
    read: Option<Duration>,
    read_stall: Option<Option<Duration>>,
    total: Option<Duration>,
    /// Captures are filled by the one-call client's engine, not hyper-util.
    direct_captures: bool,
}

/// The limits by the names of the builder's methods (the body stall limit
/// as in effect: `read`'s unless set apart).
impl std::fmt::Debug for PhaseTimeoutLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhaseTimeoutLayer")
            .field("send", &self.send)
            .field("read", &self.read)
            .field("read_body_stall", &self.read_stall.unwrap_or(self.read))
            .field("total", &self.total)
            .finish()
    }
}

impl PhaseTimeoutLayer {
    /// A layer with every limit off.
    pub fn new() -> Self {
        Self::default()
    }

    /// The upload stall limit: fails after this long without upload
    /// progress.
    ///
    /// Progress is bytes written to the socket when the connection is
    /// tracked ([`TrackConnectionsLayer`](crate::track::TrackConnectionsLayer)
    /// on hyper-util's client, HTTP/1), request-body frames pulled otherwise.
    /// The clock starts when the request has a connection: when hyper-util
    /// hands it over, or, over a service that hides its connection (reqwest,
    /// a composable pool), at the first body frame pulled. A request without
    /// a body has nothing to upload: `send` never fires for it.
    pub fn send(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.send = limit.into();
        self
    }

    /// The response-head limit after the upload, and (unless
    /// [`read_body_stall`](Self::read_body_stall) is set) the stall limit
    /// between response-body frames.
    ///
    /// The head limit starts when the upload finished:
    ///
    /// * with the tracker on an HTTP/1 connection, when hyper flushed the
    ///   request's last byte to the socket;
    /// * otherwise when the request body ended (its last frame pulled), and
    ///   for a request without a body when hyper-util handed it to its
    ///   connection;
    /// * over a service that hides its connection (reqwest through
    ///   `ReqwestService`, a composable pool, anything that never fills
    ///   hyper-util's connection capture), a request whose body is empty at
    ///   the call (`is_end_stream()`, or a size hint of exactly 0) starts it
    ///   **at the call**, so a `GET` always has its limit; it then includes
    ///   that service's own wait for a connection. A request with a body
    ///   there starts it when the body ended. See the
    ///   [module docs](super#over-a-service-that-hides-its-connection).
    pub fn read(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.read = limit.into();
        self
    }

    /// The stall limit between response-body frames alone; `None` switches it
    /// off (server-sent events, long polls) while keeping the head limit.
    ///
    /// It counts while the body waits: from a poll that finds no frame
    /// ready, restarting at the next such poll after a frame arrived. The
    /// time a caller takes before or between its polls (busy with the
    /// frames it has) is not the server's stall and never counts.
    pub fn read_body_stall(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.read_stall = Some(limit.into());
        self
    }

    /// The deadline through the end of the response body.
    pub fn total(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.total = limit.into();
        self
    }

    /// The one-call client's engine fills this layer's captures itself.
    pub(crate) fn with_direct_captures(mut self) -> Self {
        self.direct_captures = true;
        self
    }

    pub(crate) fn direct_captures(&self) -> bool {
        self.direct_captures
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            send: self.send,
            read: self.read,
            read_stall: self.read_stall.unwrap_or(self.read),
            total: self.total,
        }
    }
}

/// The bound on `S` makes a mistyped or misordered stack fail here, where
/// the layer is applied, with a message that names the fix (see
/// [`RequestBodyService`]).
impl<S: RequestBodyService> Layer<S> for PhaseTimeoutLayer {
    type Service = PhaseTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PhaseTimeout::new(inner, *self)
    }
}

/// Per-request override of [`PhaseTimeoutLayer`]'s limits, put in the
/// request's extensions. Fields left unset keep the layer's value.
///
/// ```
/// use std::time::Duration;
/// use tower_conn_lifecycle::phase_timeout::PhaseOverride;
///
/// // A server-sent-events request: wait 10 s for the head, then no stall limit.
/// let mut req = http::Request::get("http://127.0.0.1:8080/events").body(()).unwrap();
/// req.extensions_mut().insert(
///     PhaseOverride::new().read(Duration::from_secs(10)).read_body_stall(None),
/// );
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseOverride {
    send: Option<Option<Duration>>,
    read: Option<Option<Duration>>,
    read_stall: Option<Option<Duration>>,
    total: Option<Option<Duration>>,
}

/// The overrides by the names of the builder's methods: `None` for a limit
/// not overridden, `Some(None)` for one switched off.
impl std::fmt::Debug for PhaseOverride {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhaseOverride")
            .field("send", &self.send)
            .field("read", &self.read)
            .field("read_body_stall", &self.read_stall)
            .field("total", &self.total)
            .finish()
    }
}

impl PhaseOverride {
    /// An override that changes nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Overrides the upload stall limit (`None` switches it off).
    pub fn send(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.send = Some(limit.into());
        self
    }

    /// Overrides the response-head limit, and the body stall limit unless
    /// that is overridden too.
    pub fn read(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.read = Some(limit.into());
        self
    }

    /// Overrides the stall limit between response-body frames alone.
    pub fn read_body_stall(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.read_stall = Some(limit.into());
        self
    }

    /// Overrides the total deadline.
    pub fn total(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.total = Some(limit.into());
        self
    }

    pub(crate) fn apply(&self, layer: &PhaseTimeoutLayer) -> Limits {
        let read = self.read.unwrap_or(layer.read);
        Limits {
            send: self.send.unwrap_or(layer.send),
            read,
            read_stall: self
                .read_stall
                .unwrap_or_else(|| layer.read_stall.unwrap_or(read)),
            total: self.total.unwrap_or(layer.total),
        }
    }
}
