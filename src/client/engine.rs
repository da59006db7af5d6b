//! The one-call client's engine: hyper-util's composable pools
//! (`client::pool`) with this crate's per-connection services.
//!
//! ```text
//! Engine (one boxed future per request)
//!  origin map (keyed by scheme and authority)
//!   http://  → pool::cache of HTTP/1 connections
//!   https:// → TlsOrigin: ALPN h2 → one shared HTTP/2 connection,
//!              otherwise pool::cache (HTTP/1); one new connection at a
//!              time until the origin is known to speak HTTP/1
//!              (see the `tls_origin` module)
//!    per connection: IdleExpiryConnection (the tracker's exchange record,
//!    idle expiry, learning) → Sender (hyper's conn::http1 / conn::http2)
//!     over the connector: ConnectTimeout → TrackConnections → SharedTls →
//!     the user's HttpConnector (or any connector of theirs)
//! ```
//!
//! Every request passes through its connection's own service, so the
//! attempt's record is opened there, as the request is handed to the
//! connection (see [`ConnectionCapture::begin_direct`]): no hyper-util
//! connection capture, no spawned task per request.
//!
//! What hyper's connection API leaves to its caller is done here (the
//! `Host` header and origin-form, authority-form for CONNECT, on HTTP/1:
//! by [`Http1Connection`], shared with the [`pool`](crate::pool) module);
//! absolute URIs are required; a connection goes back to its pool only when
//! its response body has ended (so a request never queues behind another's
//! download); a checked-out connection refused before any byte (expired,
//! closed, abandoned) is dropped and another taken; a checkout that finds
//! nothing idle waits for a connect under way that nobody needs any more
//! rather than starting one (the `spares` module); idle connections are
//! bounded per origin and origins without connections are evicted.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::Connection;
use hyper_util::client::pool::cache;
use hyper_util::rt::TokioExecutor;
use pin_project_lite::pin_project;
use tower::ServiceExt;
use tower_service::Service;

use crate::drain::{DrainHandle, Draining};
use crate::idle_expiry::{ClosedBeforeFirstRequest, IdleExpiryConnection, IdleExpiryLayer};
pub(crate) use crate::pool::Http1Closed;
use crate::pool::Http1Connection;
use crate::track::{ConnectionCapture, ConnectionState, TrackStats, TrackedBody, TrackedIo};
use crate::BoxError;

mod spares;
mod tls_origin;

use spares::{Pace, SpareExecutor, SpareUnderWay, Spares};
use tls_origin::{Divert, TlsConn, TlsOrigin};

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// How many pooled connections one request may find refused (expired,
/// closing, abandoned: nothing was written on them) before it gives up with
/// [`CheckoutsRefused`], which [`retry`](crate::retry) then judges (always
/// safe).
const CHECKOUTS: usize = 8;

/// How many pooled connections whose task had already ended (the server
/// closed them after their last response, `Connection: close` among them)
/// one request may find, apart from [`CHECKOUTS`]: each leaves its pool for
/// good as it refuses, and says nothing of the origin (a burst of requests
/// to a server that closes every connection finds one behind each of its
/// answers), so they do not end the checkout early.
const ENDED_CHECKOUTS: usize = 64;

/// Every connection a request checked out refused it before any byte
/// ([`CHECKOUTS`] of them, or [`ENDED_CHECKOUTS`] whose task had ended):
/// nothing was written. Its source is the last refusal.
#[derive(Debug)]
pub(crate) struct CheckoutsRefused(BoxError);

impl std::fmt::Display for CheckoutsRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("every connection checked out refused the request; nothing was written")
    }
}

impl std::error::Error for CheckoutsRefused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// Whether a connection's refusal says its task has ended (hyper's
/// "channel closed", [`Http1Closed`], [`Http2Closed`]).
fn task_ended(refusal: &(dyn std::error::Error + 'static)) -> bool {
    crate::causes(refusal).any(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_closed)
            || e.is::<Http1Closed>()
            || e.is::<Http2Closed>()
    })
}

/// Above this many origins, origins without a connection are evicted.
pub(crate) const MAX_ORIGINS: usize = 256;

/// A connection could not be established (TCP, TLS or the HTTP/2
/// handshake): nothing of the request was sent.
#[derive(Debug)]
pub(crate) struct ConnectError(BoxError);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client error (Connect)")
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// The request's URI is not absolute (scheme and authority): the one-call
/// client needs both to choose a connection. Nothing was sent.
#[derive(Debug)]
pub(crate) struct NotAbsolute(Uri);

impl std::fmt::Display for NotAbsolute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request URI `{}` is not absolute (it needs a scheme and a host)",
            self.0
        )
    }
}

impl std::error::Error for NotAbsolute {}

/// hyper's send future, boxed (it cannot be named).
type SendFuture = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

/// One connection's sending half: hyper's HTTP/1 or HTTP/2 connection.
pub(crate) enum Sender<B> {
    Http1(Http1Connection<B>),
    Http2(H2Sender<B>),
}

/// hyper's sending half of an HTTP/2 connection, shared by every handle
/// of the connection until its connection task ends (`None` from then on).
type H2Slot<B> = Mutex<Option<hyper::client::conn::http2::SendRequest<B>>>;

/// The cloneable sending half of an HTTP/2 connection (what its origin
/// hands to every request): one hyper `SendRequest`, shared by every
/// clone, and dropped when the connection's task ends
/// ([`release`](Self::release)).
///
/// hyper hands each request to its connection task through a tokio
/// channel, whose receiver the task drops when it ends (the connection
/// failed or closed). A request sent at that very moment can land in the
/// channel after the receiver has dropped what it held (tokio's send
/// reserves its slot, then writes it; the receiver's drain stops at a slot
/// not written yet): its response future is then answered only when the
/// channel itself goes, with its last `SendRequest`. The request's own
/// future holds one (its connection, from the checkout to the response
/// body's end), so it would wait for ever. Dropped as soon as the task
/// ends, the `SendRequest` takes the channel with it: such a request gets
/// hyper's "connection closed" (cancelled: nothing was sent), and every
/// later use [`Http2Closed`].
pub(crate) struct H2Sender<B>(Arc<H2Slot<B>>);

impl<B> H2Sender<B> {
    /// Spawns the connection's task `conn` (hyper's `Connection`), whose
    /// end drops `send`. The task holds no `SendRequest`, so the
    /// connection still closes once its handles are all gone.
    fn spawn<F>(send: hyper::client::conn::http2::SendRequest<B>, conn: F) -> Self
    where
        B: Send + 'static,
        F: Future + Send + 'static,
    {
        let send = H2Sender(Arc::new(Mutex::new(Some(send))));
        let slot = Arc::downgrade(&send.0);
        tokio::spawn(async move {
            // hyper's `Connection` (its end of the request channel) is
            // dropped as it completes.
            let _ = conn.await;
            Self::release(&slot);
        });
        send
    }

    fn slot(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<hyper::client::conn::http2::SendRequest<B>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection's task (hyper's `Connection`, spawned by [`Connect`])
    /// has ended: drops the connection's `SendRequest`, every clone's. A
    /// send holds the lock until its request is in hyper's channel, so
    /// every request sent before is in it, and goes with it.
    fn release(slot: &Weak<H2Slot<B>>) {
        let Some(slot) = slot.upgrade() else {
            return;
        };
        let send = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(send);
    }
}

impl<B> Clone for H2Sender<B> {
    fn clone(&self) -> Self {
        H2Sender(self.0.clone())
    }
}

/// An HTTP/2 connection whose connection task has ended (it failed or
/// closed): nothing of the request was sent.
#[derive(Debug)]
pub(crate) struct Http2Closed;

impl std::fmt::Display for Http2Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HTTP/2 connection closed; nothing was sent")
    }
}

impl std::error::Error for Http2Closed {}

impl<B> std::fmt::Debug for Sender<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sender::Http1(_) => "Sender::Http1",
            Sender::Http2(_) => "Sender::Http2",
        })
    }
}

impl<B> std::fmt::Debug for H2Sender<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H2Sender")
    }
}

impl<B> Service<Request<B>> for Sender<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = SendFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Sender::Http1(send) => send.poll_ready(cx),
            Sender::Http2(send) => send.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self {
            Sender::Http1(send) => match send.send(req) {
                Some(sent) => Box::pin(async move { sent.await.map_err(Into::into) }),
                None => Box::pin(std::future::ready(Err(Box::new(Http1Closed) as BoxError))),
            },
            Sender::Http2(send) => send.call(req),
        }
    }
}

impl<B> Service<Request<B>> for H2Sender<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = SendFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.slot().as_mut() {
            Some(send) => send.poll_ready(cx).map_err(Into::into),
            None => Poll::Ready(Err(Box::new(Http2Closed))),
        }
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        *req.version_mut() = Version::HTTP_2;
        // Into hyper's channel under the lock (see `release`).
        let sent = match self.slot().as_mut() {
            Some(send) => send.send_request(req),
            None => return Box::pin(std::future::ready(Err(Box::new(Http2Closed) as BoxError))),
        };
        Box::pin(async move { sent.await.map_err(Into::into) })
    }
}

/// One connection as the pools hold it.
pub(crate) type Conn<B> = IdleExpiryConnection<Sender<B>>;

/// The HTTP/2 connection as its origin shares it: every request holds a
/// clone from its checkout to its response body's end.
pub(crate) struct H2Conn<B> {
    conn: IdleExpiryConnection<H2Sender<B>>,
    /// With [`Builder::retire_stalled_http2`](super::Builder::retire_stalled_http2).
    stall: Option<Arc<StallWatch>>,
    /// The origin's pool, which a refusal retires the connection from.
    home: Weak<tls_origin::Shared<B>>,
}

impl<B> Clone for H2Conn<B> {
    fn clone(&self) -> Self {
        H2Conn {
            conn: self.conn.clone(),
            stall: self.stall.clone(),
            home: self.home.clone(),
        }
    }
}

impl<B> H2Conn<B> {
    fn new(
        conn: IdleExpiryConnection<H2Sender<B>>,
        stall: Option<Arc<StallWatch>>,
        home: Weak<tls_origin::Shared<B>>,
    ) -> Self {
        H2Conn { conn, stall, home }
    }

    fn is_dead(&self) -> bool {
        self.conn.is_dead()
    }

    /// The connection's number (the tracker's).
    fn id(&self) -> u64 {
        self.conn.state().id()
    }

    fn home(&self) -> Weak<tls_origin::Shared<B>> {
        self.home.clone()
    }
}

/// Watches one HTTP/2 connection for a stall: streams in flight and no
/// frame (no byte read) for the limit. Its reference count is the count
/// of the connection's handles: the pool's, and one per request from its
/// checkout to its response body's end.
pub(crate) struct StallWatch {
    state: ConnectionState,
    limit: u64,
    /// The first request sent since the last read (a stamp of `state`):
    /// from then on the connection owes a frame.
    waiting_since: AtomicU64,
    stats: TrackStats,
}

impl StallWatch {
    fn new(state: ConnectionState, limit: Duration, stats: TrackStats) -> Self {
        StallWatch {
            state,
            limit: u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX),
            waiting_since: AtomicU64::new(0),
            stats,
        }
    }

    /// A request is about to be sent.
    fn sent(&self) {
        let now = self.state.stamp(tokio::time::Instant::now());
        let read = self.state.last_read_raw().unwrap_or(0);
        if read >= self.waiting_since.load(Ordering::Relaxed) {
            self.waiting_since.store(now, Ordering::Relaxed);
        }
    }

    /// Whether the connection has stalled, asked by a request that holds
    /// `this` (one of the handles): other requests are in flight on it and
    /// nothing was read since the later of the last read and the first
    /// request sent after it, for the limit.
    fn stalled(this: &Arc<Self>) -> bool {
        // The pool's handle and the asking request's.
        if Arc::strong_count(this) <= 2 {
            return false;
        }
        let state = &this.state;
        let quiet_since = state
            .last_read_raw()
            .unwrap_or(0)
            .max(this.waiting_since.load(Ordering::Relaxed));
        let now = state.stamp(tokio::time::Instant::now());
        now.saturating_sub(quiet_since) >= this.limit
    }
}

/// An HTTP/2 connection retired because it stalled: nothing of the request
/// was written (the engine takes another connection).
#[derive(Debug)]
pub(crate) struct Stalled(Duration);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP/2 connection retired: streams in flight and no frame for {:?}",
            self.0
        )
    }
}

impl std::error::Error for Stalled {}

impl<B> Service<Request<B>> for H2Conn<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = <IdleExpiryConnection<H2Sender<B>> as Service<Request<B>>>::Response;
    type Error = BoxError;
    type Future = <IdleExpiryConnection<H2Sender<B>> as Service<Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let ready = match &self.stall {
            Some(watch) if StallWatch::stalled(watch) => {
                // Refused before any byte: retired from its origin (its
                // streams go on under their own limits) and the next
                // checkout makes a new one.
                let limit = Duration::from_nanos(watch.limit);
                watch.stats.count_stalled_http2_retired();
                tracing::debug!(
                    connection = watch.state.id(),
                    streams = Arc::strong_count(watch) - 2,
                    ?limit,
                    "stalled HTTP/2 connection retired"
                );
                Poll::Ready(Err(Box::new(Stalled(limit)) as BoxError))
            }
            _ => self.conn.poll_ready(cx),
        };
        if let Poll::Ready(Err(_)) = ready {
            // Dead, expired or stalled: out of the slot.
            if let Some(home) = self.home.upgrade() {
                home.retire(self.id());
            }
        }
        ready
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(watch) = &self.stall {
            watch.sent();
        }
        self.conn.call(req)
    }
}

/// What every connection of the engine is made with (shared by its pools):
/// the connector stack `S` and hyper's settings.
pub(crate) struct Parts<S> {
    pub(crate) connector: S,
    pub(crate) http1: hyper::client::conn::http1::Builder,
    /// With tokio's timer.
    pub(crate) http2: hyper::client::conn::http2::Builder<TokioExecutor>,
    pub(crate) idle_expiry: IdleExpiryLayer,
    /// The same for HTTP/1 connections, unless no idle connection is kept
    /// ([`Builder::max_idle_per_origin`](super::Builder::max_idle_per_origin)
    /// `0`): then each retires when its exchange ends (the tracker closes
    /// it), rather than waiting in its pool for the next connect's sweep.
    /// An HTTP/2 connection is not idle while it has streams, and is kept.
    pub(crate) idle_expiry_http1: IdleExpiryLayer,
    /// Responses carry the connection's state in their extensions too.
    pub(crate) state_extension: bool,
}

/// Makes one connection: the connector stack, then hyper's HTTP/1 or (ALPN
/// `h2`) HTTP/2 handshake, its connection task spawned, wrapped in the
/// connection's IdleExpiry service.
pub(crate) struct Connect<B, S> {
    parts: Arc<Parts<S>>,
    /// The origin (scheme and authority) its pool connects to: a checkout
    /// passes nothing (`()`), so a request copies no URI into its pool.
    target: Arc<Uri>,
    _body: PhantomData<fn(B)>,
}

impl<B, S> Clone for Connect<B, S> {
    fn clone(&self) -> Self {
        Connect {
            parts: self.parts.clone(),
            target: self.target.clone(),
            _body: PhantomData,
        }
    }
}

impl<B, S> Connect<B, S> {
    /// The connector stack and settings `parts`, for `target`'s pool.
    fn to(parts: &Arc<Parts<S>>, target: Uri) -> Self {
        Connect {
            parts: parts.clone(),
            target: Arc::new(target),
            _body: PhantomData,
        }
    }
}

impl<B, S, T> Service<()> for Connect<B, S>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    S: Service<Uri, Response = TrackedIo<T>, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    T: hyper::rt::Read + hyper::rt::Write + Connection + Unpin + Send + 'static,
{
    type Response = Conn<B>;
    type Error = BoxError;
    type Future = BoxFuture<Conn<B>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        let parts = self.parts.clone();
        let uri = Uri::clone(&self.target);
        // Boxed here, outside the `async` block: a connector stack whose
        // error is a `BoxError` would otherwise defeat the compiler's proof
        // that the block is `Send` (higher-ranked lifetimes in it).
        let connecting: BoxFuture<TrackedIo<T>> =
            Box::pin(parts.connector.clone().oneshot(uri.clone()));
        Box::pin(async move {
            let fail = |e: BoxError| -> BoxError { Box::new(ConnectError(e)) };
            let io = connecting.await.map_err(fail)?;
            let state = io.state().clone();
            let mut layer = &parts.idle_expiry;
            let sender = if io.connected().is_negotiated_h2() {
                let (send, conn) = parts
                    .http2
                    .handshake(io)
                    .await
                    .map_err(|e| fail(e.into()))?;
                Sender::Http2(H2Sender::spawn(send, conn))
            } else {
                let (send, conn) = parts
                    .http1
                    .handshake(io)
                    .await
                    .map_err(|e| fail(e.into()))?;
                layer = &parts.idle_expiry_http1;
                // Upgrades (101, CONNECT) hand the IO to the caller.
                Sender::Http1(Http1Connection::spawn(send, conn.with_upgrades(), &uri))
            };
            let conn = layer.connection(sender, state, &uri);
            Ok(if parts.state_extension {
                conn
            } else {
                conn.without_state_extension()
            })
        })
    }
}

/// Sends `req` on an HTTP/1 connection with hyper's own future, which the
/// engine's request future then holds inline (through the `Service` trait
/// it would have to be boxed: it cannot be named).
fn send_http1<B>(
    conn: &mut Conn<B>,
    req: Request<B>,
) -> impl Future<Output = Result<Response<TrackedBody<Incoming>>, BoxError>> + Send
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    conn.call_with(req, |sender, req| match sender {
        Sender::Http1(send) => match send.send(req) {
            Some(future) => Sent::Http1 { future },
            // The connection's task had ended (rare: boxed).
            None => Sent::Http2 {
                future: Box::pin(std::future::ready(Err(Box::new(Http1Closed) as BoxError))),
            },
        },
        // Never on an `http://` origin (no ALPN), but correct anyway.
        Sender::Http2(send) => Sent::Http2 {
            future: send.call(req),
        },
    })
}

pin_project! {
    /// hyper's HTTP/1 send future inline, or an HTTP/2 one (boxed; also
    /// an HTTP/1 connection's refusal once its task has ended): one
    /// copy of whichever it is (an `async` block awaiting a `match` would
    /// hold the future twice).
    #[project = SentProj]
    enum Sent<F> {
        Http1 { #[pin] future: F },
        Http2 { future: SendFuture },
    }
}

impl<F> Future for Sent<F>
where
    F: Future<Output = Result<Response<Incoming>, hyper::Error>>,
{
    type Output = Result<Response<Incoming>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            SentProj::Http1 { future } => future.poll(cx).map_err(Into::into),
            SentProj::Http2 { future } => future.as_mut().poll(cx),
        }
    }
}

/// An origin's pool: HTTP/1 only (`http://`), or negotiated by ALPN.
#[derive(Clone)]
enum Origin<P, N> {
    Plain(P),
    Tls(N),
}

/// What the engine's origin lookup found for a request: its origin's pool
/// (a handle of its own), or, for an `http://` request that checks out at
/// once, an idle connection, or the pool with a resting connection taken or
/// the checkout under way.
enum Found<O, P, C, F> {
    Origin(O),
    Idle(C),
    Wait(P, Option<C>, Option<F>),
}

/// The engine's origin maps, typed by the pools its closures make.
type OriginMap<P, N> = HashMap<Box<str>, Origin<P, N>>;

fn origin_maps<P, N>(_: &impl Fn(Uri) -> P, _: &impl Fn(Uri) -> N) -> [OriginMap<P, N>; 3] {
    [HashMap::new(), HashMap::new(), HashMap::new()]
}

/// The one-call client's engine: `Service<Request<B>>` over the composable
/// pools; one boxed future per request.
pub(crate) struct Engine<B> {
    send: Arc<dyn Fn(Request<B>) -> BoxFuture<Response<PooledBody>> + Send + Sync>,
    /// How many origins the map holds (for the tests of its bound).
    #[cfg(test)]
    origins: Arc<dyn Fn() -> usize + Send + Sync>,
}

impl<B> Clone for Engine<B> {
    fn clone(&self) -> Self {
        Engine {
            send: self.send.clone(),
            #[cfg(test)]
            origins: self.origins.clone(),
        }
    }
}

#[cfg(test)]
impl<B> Engine<B> {
    /// How many origins the map holds.
    pub(crate) fn origin_count(&self) -> usize {
        (self.origins)()
    }
}

impl<B> Service<Request<B>> for Engine<B> {
    type Response = Response<PooledBody>;
    type Error = BoxError;
    type Future = BoxFuture<Response<PooledBody>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        (self.send)(req)
    }
}

/// A request body that carries its attempt's capture (PhaseTimeout's).
pub(crate) trait AttemptBody {
    fn capture(&self) -> Option<&ConnectionCapture>;
}

impl AttemptBody for crate::RequestBody {
    fn capture(&self) -> Option<&ConnectionCapture> {
        crate::RequestBody::capture(self)
    }
}

/// The settings the engine is built with.
pub(crate) struct Settings<S> {
    /// The client's drain: refuses requests once begun (a retry's
    /// attempt among them), and closes the pools' idle connections.
    pub(crate) drain: DrainHandle,
    /// The connector, hyper's settings, the idle expiry, and whether
    /// responses carry the connection's state in their extensions.
    pub(crate) parts: Parts<S>,
    pub(crate) stats: TrackStats,
    pub(crate) max_idle_per_origin: usize,
    /// Retire an HTTP/2 connection with streams in flight and no frame for
    /// this long (off: `None`).
    pub(crate) retire_stalled_http2: Option<Duration>,
}

impl<B> Engine<B>
where
    B: AttemptBody + Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new<S, T>(settings: Settings<S>) -> Self
    where
        S: Service<Uri, Response = TrackedIo<T>, Error = BoxError> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        T: hyper::rt::Read + hyper::rt::Write + Connection + Unpin + Send + 'static,
    {
        let Settings {
            drain,
            parts,
            stats,
            max_idle_per_origin,
            retire_stalled_http2,
        } = settings;
        let stall = retire_stalled_http2.map(|limit| (limit, stats.clone()));
        let parts = Arc::new(parts);
        let plain = {
            let parts = parts.clone();
            move |target: Uri| {
                let spares = Arc::new(Spares::default());
                cache::builder()
                    .executor(SpareExecutor(spares.clone()))
                    .build::<_, ()>(Pace::new(Connect::<B, S>::to(&parts, target), spares))
            }
        };
        let draining = drain.clone();
        let tls = move |target: Uri| {
            // An origin first used during the drain (by a request admitted
            // before it) drains from the start: the sweep ran before it.
            let shared = tls_origin::Shared::new(stall.clone(), draining.is_draining());
            let spares = Arc::new(Spares::default());
            let http1 = cache::builder()
                .executor(SpareExecutor(spares.clone()))
                .build::<_, ()>(Pace::new(
                    Divert::new(Connect::<B, S>::to(&parts, target), &shared),
                    spares,
                ));
            TlsOrigin::new(http1, shared)
        };
        // Per scheme (http, https, anything else: the connector's to
        // refuse), keyed by the authority as written: looked up by `&str`,
        // so a request allocates nothing and hashes a few bytes.
        let origins = Arc::new(Mutex::new(origin_maps(&plain, &tls)));
        #[cfg(test)]
        let counted = origins.clone();
        // The drain's sweep: every pool drops its idle connections (hyper
        // closes a connection once its last handle is gone); the HTTP/2
        // one stops being shared and closes when its last stream ends.
        drain.on_close_idle(Box::new({
            let origins = Arc::downgrade(&origins);
            move || {
                let Some(origins) = origins.upgrade() else {
                    return;
                };
                let mut origins = origins.lock().unwrap_or_else(|e| e.into_inner());
                for map in origins.iter_mut() {
                    for origin in map.values_mut() {
                        match origin {
                            Origin::Plain(cache) => cache.retain(|_| false),
                            Origin::Tls(tls) => {
                                tls.http1_mut().retain(|_| false);
                                tls.shared().clear();
                            }
                        }
                    }
                }
            }
        }));
        // The connection count when the pools were last swept.
        let swept = AtomicU64::new(0);
        let keep = max_idle_per_origin;
        // The request's origin pool (made at its first request): a clone of
        // it, or with `checkout`, for `http://`, an idle connection checked
        // out of it under the lock (the pool handle is cloned only when the
        // request has to wait for a connection).
        let lookup = move |req: &Request<B>,
                           checkout: bool|
              -> Result<Found<_, _, _, _>, BoxError> {
            let uri = req.uri();
            let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
                return Err(Box::new(NotAbsolute(uri.clone())));
            };
            let other;
            let (slot, name) = match scheme.as_str() {
                "http" => (0, authority.as_str()),
                "https" => (1, authority.as_str()),
                scheme => {
                    other = format!("{scheme}://{authority}");
                    (2, other.as_str())
                }
            };
            // Under the lock from here on (the guard goes with the closure's
            // return).
            let mut origins = origins.lock().unwrap_or_else(|e| e.into_inner());
            // Drops dead and surplus idle connections (this origin's, or
            // every origin's with `all`, evicting those left with none).
            // A macro, like `found!` below: expanded where the pools'
            // types are known.
            macro_rules! sweep {
                ($all:expr) => {
                    let all = $all;
                    for (i, map) in origins.iter_mut().enumerate() {
                        map.retain(|k, origin| {
                            let this = i == slot && **k == *name;
                            if !this && !all {
                                return true;
                            }
                            let mut kept = 0;
                            // Dead connections go; expired ones that are
                            // still open stay (the tracker closes them at
                            // their deadline; a healing probe is one).
                            let mut idle = |conn: &mut Conn<B>| {
                                kept += 1;
                                kept <= keep && !conn.is_dead()
                            };
                            let empty = match origin {
                                Origin::Plain(cache) => {
                                    cache.retain(&mut idle);
                                    cache.is_empty()
                                }
                                Origin::Tls(tls) => {
                                    tls.http1_mut().retain(&mut idle);
                                    let shared_empty = tls.shared().sweep();
                                    tls.http1_mut().is_empty() && shared_empty
                                }
                            };
                            // Evicted only when there are too many
                            // origins: an origin's pool looks empty while
                            // all of its connections are checked out.
                            this || !empty
                        });
                    }
                };
            }
            let origin_count =
                |origins: &[HashMap<_, _>; 3]| -> usize { origins.iter().map(HashMap::len).sum() };
            // After a new connection, the cold path. (A load first:
            // under the lock, and the common case needs no
            // read-modify-write.)
            let opened = stats.opened();
            if swept.load(Ordering::Relaxed) != opened {
                swept.store(opened, Ordering::Relaxed);
                sweep!(origin_count(&origins) > MAX_ORIGINS);
            }
            // A macro, not a closure: expanded where the pool's type is
            // known.
            macro_rules! found {
                ($origin:expr) => {
                    match $origin {
                        Origin::Plain(pool) if checkout => {
                            let mut checkout = pool.call(());
                            let polled = Pin::new(&mut checkout)
                                .poll(&mut Context::from_waker(Waker::noop()));
                            match polled {
                                Poll::Ready(Ok(conn)) if !conn.inner().is_resting() => {
                                    Ok(Found::Idle(conn))
                                }
                                // The checkout loop, from a resting connection
                                // already taken or the checkout under way.
                                Poll::Ready(Ok(conn)) => {
                                    Ok(Found::Wait(pool.clone(), Some(conn), None))
                                }
                                // A connection is on its way (see the
                                // `spares` module): the checkout loop waits
                                // for it.
                                Poll::Ready(Err(e)) if e.is::<SpareUnderWay>() => {
                                    Ok(Found::Wait(pool.clone(), None, None))
                                }
                                Poll::Ready(Err(e)) => Err(e),
                                Poll::Pending => {
                                    Ok(Found::Wait(pool.clone(), None, Some(checkout)))
                                }
                            }
                        }
                        origin => Ok(Found::Origin(origin.clone())),
                    }
                };
            }
            if let Some(origin) = origins[slot].get_mut(name) {
                return found!(origin);
            }
            // Also before a new origin goes in past the bound: origins
            // whose connections all failed open none, and would
            // otherwise stay until some connection opens.
            if origin_count(&origins) >= MAX_ORIGINS {
                sweep!(true);
            }
            // Scheme and authority: what the connector needs.
            let target = Uri::builder()
                .scheme(scheme.clone())
                .authority(authority.clone())
                .path_and_query("/")
                .build();
            let target = target?;
            let mut origin = if slot == 1 {
                Origin::Tls(tls(target))
            } else {
                Origin::Plain(plain(target))
            };
            let result = found!(&mut origin);
            origins[slot].insert(Box::from(name), origin);
            result
        };
        let lookup = Arc::new(lookup);
        // The checkout loop (see `send_on`) from the start: for `https://`,
        // and for a request whose idle connection refused it.
        let slow = {
            let lookup = lookup.clone();
            move |req: Request<B>| -> BoxFuture<Response<PooledBody>> {
                match lookup(&req, false) {
                    // HTTP/1 only: hyper's own future, inline (no box).
                    Ok(Found::Origin(Origin::Plain(pool))) => Box::pin(send_on(
                        pool,
                        req,
                        None,
                        None,
                        |conn| conn.inner().is_resting(),
                        |conn, req| send_http1(conn.inner_mut(), req),
                    )),
                    Ok(Found::Origin(Origin::Tls(pool))) => Box::pin(send_on(
                        pool,
                        req,
                        None,
                        None,
                        |conn: &TlsConn<_, B>| conn.http1().is_some_and(|c| c.inner().is_resting()),
                        Service::call,
                    )),
                    // Not asked to check out: never found.
                    Ok(Found::Idle(_) | Found::Wait(..)) => Box::pin(std::future::ready(Err(
                        "the engine's origin lookup checked a connection out unasked".into(),
                    ))),
                    Err(e) => Box::pin(std::future::ready(Err(e))),
                }
            }
        };
        let slow = Arc::new(slow);
        let send = move |req: Request<B>| -> BoxFuture<Response<PooledBody>> {
            if drain.is_draining() {
                // A retry's attempt after the drain began: nothing written.
                return Box::pin(std::future::ready(Err(Box::new(Draining) as BoxError)));
            }
            // The fast path: an idle connection, checked out at the call
            // (the pool hands it over without waiting); the request's
            // future then holds only it and the send, not the pool and the
            // checkout loop (a future half the size).
            let (pool, aside, checkout) = match lookup(&req, true) {
                Ok(Found::Idle(conn)) => {
                    return Box::pin(send_idle(conn, req, slow.clone(), |conn, req| {
                        send_ready(conn, req, |conn, req| send_http1(conn.inner_mut(), req))
                    }));
                }
                Ok(Found::Wait(pool, aside, checkout)) => (pool, aside, checkout),
                Ok(Found::Origin(_)) => return slow(req),
                Err(e) => return Box::pin(std::future::ready(Err(e))),
            };
            Box::pin(send_on(
                pool,
                req,
                aside,
                checkout,
                |conn| conn.inner().is_resting(),
                |conn, req| send_http1(conn.inner_mut(), req),
            ))
        };
        Engine {
            send: Arc::new(send),
            #[cfg(test)]
            origins: Arc::new(move || {
                let origins = counted.lock().unwrap_or_else(|e| e.into_inner());
                origins.iter().map(HashMap::len).sum()
            }),
        }
    }
}

/// Checks a connection out of `pool` and sends `req` on it: a connection
/// refused before any byte (its `poll_ready` failed: expired, closed,
/// abandoned) is dropped by the pool and another taken, up to
/// [`CHECKOUTS`] (and [`ENDED_CHECKOUTS`] whose task had ended). `aside`:
/// a resting connection already taken; `checkout`: a checkout already
/// under way.
async fn send_on<P, C, B, F>(
    mut pool: P,
    req: Request<B>,
    aside: Option<C>,
    mut checkout: Option<P::Future>,
    resting: impl Fn(&C) -> bool,
    send: impl FnOnce(&mut C, Request<B>) -> F,
) -> Result<Response<PooledBody>, BoxError>
where
    B: AttemptBody,
    P: Service<(), Response = C>,
    P::Error: Into<BoxError>,
    C: Service<Request<B>, Error = BoxError> + Send + Sync + 'static,
    F: Future<Output = Result<Response<TrackedBody<Incoming>>, BoxError>>,
{
    // Open connections idle past their reuse (a healing probe among them),
    // kept out of the way until this request has its connection, then
    // given back to the pool (no allocation unless there is one). Each one
    // leaves the pool, so the loop ends: at worst with a new connection.
    let mut aside = Vec::from_iter(aside);
    let (mut refused, mut ended) = (0, 0);
    loop {
        let mut conn = match checkout.take() {
            Some(checkout) => checkout.await,
            None => pool.ready().await.map_err(Into::into)?.call(()).await,
        }
        .map_err(Into::into)?;
        if resting(&conn) {
            aside.push(conn);
            continue;
        }
        if let Err(refusal) = conn.ready().await {
            // A new connection's refusal (closed at once) ends it too:
            // connecting again would most likely fare the same.
            if ClosedBeforeFirstRequest::is_in(refusal.as_ref()) {
                return Err(refusal);
            }
            let exhausted = if task_ended(refusal.as_ref()) {
                ended += 1;
                ended == ENDED_CHECKOUTS
            } else {
                refused += 1;
                refused == CHECKOUTS
            };
            if exhausted {
                return Err(Box::new(CheckoutsRefused(refusal)));
            }
            continue;
        }
        // This request has its connection: the ones set aside go back to
        // the pool now, for the requests that come while this one is sent
        // (a probe done resting meanwhile is theirs to take).
        drop(aside);
        return send_ready(conn, req, send).await;
    }
}

/// Sends `req` on `conn`, which said it is ready: hands the request over
/// now and returns the rest (the response, then the body's connection).
fn send_ready<C, B, F>(
    mut conn: C,
    req: Request<B>,
    send: impl FnOnce(&mut C, Request<B>) -> F,
) -> impl Future<Output = Result<Response<PooledBody>, BoxError>>
where
    B: AttemptBody,
    C: Send + Sync + 'static,
    F: Future<Output = Result<Response<TrackedBody<Incoming>>, BoxError>>,
{
    // The attempt's capture goes to the connection's service with the
    // request (it opens the attempt's record there).
    let capture = req.body().capture().cloned();
    let response = ConnectionCapture::hand_over(capture.clone(), || send(&mut conn, req));
    async move {
        let response = response.await?;
        // The connection's state, for the response body to carry.
        let state = capture
            .as_ref()
            .and_then(ConnectionCapture::begun)
            .map(|(state, _)| state.clone());
        Ok(response.map(|body| PooledBody::new(body, conn, state)))
    }
}

pin_project! {
    /// The request future of an idle connection checked out at the call:
    /// it waits for the connection to say it is ready, then sends; if the
    /// connection refuses before any byte, the checkout loop (`slow`) takes
    /// over. Hand-written so that it holds the connection and the request,
    /// or the send, never both (an `async fn` would keep its arguments for
    /// its whole life).
    #[project = IdleProj]
    enum SendIdle<C, B, M, F, S> {
        Checking {
            conn: Option<C>,
            req: Option<Request<B>>,
            make: Option<M>,
            slow: Arc<S>,
        },
        Sending { #[pin] future: F },
        Slow { future: BoxFuture<Response<PooledBody>> },
    }
}

/// [`SendIdle`] for `conn`, sending with `make` once it is ready.
fn send_idle<C, B, M, F, S>(
    conn: C,
    req: Request<B>,
    slow: Arc<S>,
    make: M,
) -> SendIdle<C, B, M, F, S>
where
    M: FnOnce(C, Request<B>) -> F,
{
    SendIdle::Checking {
        conn: Some(conn),
        req: Some(req),
        make: Some(make),
        slow,
    }
}

impl<C, B, M, F, S> Future for SendIdle<C, B, M, F, S>
where
    C: Service<Request<B>, Error = BoxError>,
    M: FnOnce(C, Request<B>) -> F,
    F: Future<Output = Result<Response<PooledBody>, BoxError>>,
    S: Fn(Request<B>) -> BoxFuture<Response<PooledBody>>,
{
    type Output = Result<Response<PooledBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The checkout loop (which may connect, and spend a TLS handshake's
        // CPU in one poll) reads the clock at each check.
        if let IdleProj::Slow { future } = self.as_mut().project() {
            return future.as_mut().poll(cx);
        }
        // Otherwise one clock reading for the connection's expiry check at
        // `poll_ready` and the attempt's start when the request is handed
        // over right after it (a checkout loop taking over in the same poll
        // starts inside it: it has not connected yet, and a connection only
        // completes in a later poll).
        crate::clock::scoped(|| self.poll_scoped(cx))
    }
}

impl<C, B, M, F, S> SendIdle<C, B, M, F, S>
where
    C: Service<Request<B>, Error = BoxError>,
    M: FnOnce(C, Request<B>) -> F,
    F: Future<Output = Result<Response<PooledBody>, BoxError>>,
    S: Fn(Request<B>) -> BoxFuture<Response<PooledBody>>,
{
    fn poll_scoped(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<PooledBody>, BoxError>> {
        loop {
            let next = match self.as_mut().project() {
                IdleProj::Checking {
                    conn,
                    req,
                    make,
                    slow,
                } => {
                    let ready = match conn.as_mut() {
                        Some(c) => std::task::ready!(c.poll_ready(cx)),
                        None => {
                            return Poll::Ready(Err("engine future polled after completion".into()))
                        }
                    };
                    let (Some(c), Some(r), Some(m)) = (conn.take(), req.take(), make.take()) else {
                        return Poll::Ready(Err("engine future polled after completion".into()));
                    };
                    match ready {
                        Ok(()) => SendIdle::Sending { future: m(c, r) },
                        // Refused before any byte: dropped by its pool (the
                        // refusal marked it closed); the checkout loop takes
                        // another.
                        Err(_) => {
                            drop(c);
                            SendIdle::Slow { future: slow(r) }
                        }
                    }
                }
                IdleProj::Sending { future } => return future.poll(cx),
                IdleProj::Slow { future } => return future.as_mut().poll(cx),
            };
            self.set(next);
        }
    }
}

pin_project! {
    /// The engine's response body: holds its connection's pool checkout
    /// until the body has ended (the [`pool`](crate::pool) module's body),
    /// so the connection goes back to its pool only when it can take the
    /// next request.
    pub(crate) struct PooledBody {
        #[pin]
        inner: crate::pool::Body<TrackedBody<Incoming>>,
        // The response's connection (see `client::Body::connection_state`).
        state: Option<ConnectionState>,
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl PooledBody {
    /// Holds `checkout` until `inner` ends (boxed only then: a body that
    /// has already ended gives its connection back at once).
    fn new<C: Send + Sync + 'static>(
        inner: TrackedBody<Incoming>,
        checkout: C,
        state: Option<ConnectionState>,
    ) -> Self {
        PooledBody {
            inner: crate::pool::Body::new(inner, checkout),
            state,
        }
    }

    /// The connection the response came over.
    pub(crate) fn connection_state(&self) -> Option<&ConnectionState> {
        self.state.as_ref()
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncWriteExt;

    /// When an HTTP/2 connection's task ends, every handle lets go of
    /// hyper's `SendRequest` (and with it hyper's request channel): a
    /// request that reached the channel as its receiver was dropped (tokio
    /// leaves such a message in the channel until the channel itself goes)
    /// is then answered, where its future, which holds a handle, used to
    /// wait for ever. Later uses fail at once, nothing sent.
    #[tokio::test]
    async fn the_end_of_an_http2_connections_task_drops_its_send_request() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Empty<Bytes>>(TokioIo::new(client))
            .await
            .unwrap();
        let mut sender = H2Sender::spawn(send, conn);
        let mut other = sender.clone();
        std::future::poll_fn(|cx| sender.poll_ready(cx))
            .await
            .unwrap();
        // An HTTP/1 server's answer to the preface: no frame hyper can read.
        server
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while sender.slot().is_some() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the connection's task ended and dropped its SendRequest");
        assert!(
            other.slot().is_none(),
            "one SendRequest, shared by the clones"
        );
        let refused = std::future::poll_fn(|cx| other.poll_ready(cx))
            .await
            .unwrap_err();
        assert!(refused.is::<Http2Closed>(), "{refused}");
        let req = Request::get("http://example.test/")
            .body(Empty::new())
            .unwrap();
        let err = other.call(req).await.unwrap_err();
        assert!(err.is::<Http2Closed>(), "{err}");
    }
}
