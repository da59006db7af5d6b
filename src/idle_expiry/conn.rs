//! The per-connection form, for hyper-util's composable pools.

use std::future::Future;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::future::{Attempt, ResponseFuture};
use super::learn::Origin;
use super::IdleExpiryLayer;
use crate::track::{ConnectionCapture, ConnectionState, TrackedBody};
use crate::BoxError;

/// One connection's service with idle expiry, for hyper-util's composable
/// pools (`hyper_util::client::pool::cache`); made by
/// [`IdleExpiryLayer::connection`].
///
/// It sits between the pool and the service that sends requests on one
/// connection (e.g. [`Http1Connection`](crate::pool::Http1Connection) over
/// hyper's `client::conn::http1` handshake, whose IO is a
/// [`TrackedIo`](crate::track::TrackedIo); [`pool::connect`](crate::pool::connect)
/// makes both):
///
/// * `poll_ready` fails with [`ConnectionExpired`](crate::track::ConnectionExpired) once the connection has
///   been idle past its effective expiry (or was closed at it), before
///   anything is written: `pool::cache` then discards it instead of handing
///   it out again, and the caller asks the pool for another;
/// * [`is_expired`](Self::is_expired) is the predicate for
///   `Cache::retain(|c| !c.is_expired())`, to evict expired connections
///   proactively;
/// * each response sets the connection's expiry from `Keep-Alive: timeout=N`
///   and what was learned, exactly as [`IdleExpiry`](super::IdleExpiry) does
///   for the legacy client, carries the tracker's
///   [`ConnectionState`](crate::track::ConnectionState) in its extensions
///   (so `ConnectionInfo::of` works), and its body marks the exchange's end.
///
/// The tracked IO also closes the connection at its expiry by itself, so an
/// idle pooled connection does not linger.
///
/// This is the form of the layer for composable pools: it is given the
/// tracker's state of its connection, so it always has one. An
/// [`IdleExpiry`](super::IdleExpiry) around the pool as a whole sees no
/// connection in hyper's responses and can expire nothing (it counts them in
/// [`IdleExpiryStats::untracked_responses`](super::IdleExpiryStats::untracked_responses)
/// and warns). As everywhere, a connection the tracker knows is HTTP/2 gets
/// no expiry.
///
/// Errors are [`BoxError`]: the inner service's error, or from
/// `poll_ready` (nothing of the next request written):
/// [`ConnectionExpired`](crate::track::ConnectionExpired), or the inner
/// service's refusal wrapped in an error that says so (its `source()`),
/// which [`RetryOnStaleConnection`](crate::retry::RetryOnStaleConnection)
/// takes as proof that the request was not written and resends even a
/// `POST`.
#[derive(Clone)]
pub struct IdleExpiryConnection<S> {
    inner: S,
    state: ConnectionState,
    origin: Option<Origin>,
    layer: IdleExpiryLayer,
    /// Responses carry the state in their extensions (off in the one-call
    /// client, whose response body carries it instead).
    publish: bool,
}

impl<S: std::fmt::Debug> std::fmt::Debug for IdleExpiryConnection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleExpiryConnection")
            .field("inner", &self.inner)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<S> IdleExpiryConnection<S> {
    pub(crate) fn new(
        inner: S,
        state: ConnectionState,
        origin: Option<Origin>,
        layer: IdleExpiryLayer,
    ) -> Self {
        IdleExpiryConnection {
            inner,
            state,
            origin,
            layer,
            publish: true,
        }
    }

    /// Responses no longer carry the connection's state in their
    /// extensions (three allocations per response): the one-call client's
    /// response body carries it instead.
    pub(crate) fn without_state_extension(mut self) -> Self {
        self.publish = false;
        self
    }

    /// Whether the connection must not be used any more: it expired (or was
    /// closed at its expiry), or it is closed.
    pub fn is_expired(&self) -> bool {
        self.is_dead() || self.state.expired_now().is_some()
    }

    /// Whether the connection is open but must not take a request now, nor
    /// be closed: idle past the end of its reuse (the tracker closes it at
    /// its own deadline; a healing probe stays open past the estimate on
    /// purpose, to see whether the server closes it), or a healing probe
    /// reused below the floor that has not yet been idle long enough for a
    /// request on it to test the estimate. A pool checkout sets it aside
    /// rather than dropping it.
    pub(crate) fn is_resting(&self) -> bool {
        if self.is_dead() {
            return false;
        }
        self.state.expired_now().is_some() || super::layer::probe_rests(&self.state)
    }

    /// Whether the connection is closed, or closing (poisoned): a pool
    /// drops it.
    pub(crate) fn is_dead(&self) -> bool {
        self.state.is_closed() || self.state.is_poisoned()
    }

    /// Replaces the wrapped service, or fails with `f`'s error (the
    /// engine's HTTP/2 pool keeps the cloneable half of a connection).
    pub(crate) fn try_map_inner<T, E>(
        self,
        f: impl FnOnce(S) -> Result<T, E>,
    ) -> Result<IdleExpiryConnection<T>, E> {
        Ok(IdleExpiryConnection {
            inner: f(self.inner)?,
            state: self.state,
            origin: self.origin,
            layer: self.layer,
            publish: self.publish,
        })
    }

    /// The tracker's state of this connection.
    pub fn state(&self) -> &ConnectionState {
        &self.state
    }

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

impl<S, B, RB> Service<Request<B>> for IdleExpiryConnection<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body,
{
    type Response = Response<TrackedBody<RB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Some(expired) = self.state.expired_now() {
            return Poll::Ready(Err(expired.into()));
        }
        if self.state.is_poisoned() {
            // An abandoned exchange: hyper is closing it.
            return Poll::Ready(Err(crate::track::ConnectionClosing.into()));
        }
        let ready = self.inner.poll_ready(cx).map_err(|e| {
            let e: BoxError = e.into();
            if self.state.requests() == 0 {
                // Not a stale connection: the server closed a new one (or
                // its handshake failed). Another new one would most likely
                // fare the same, so a checkout stops here.
                Box::new(ClosedBeforeFirstRequest(e)) as BoxError
            } else {
                // A reused connection gone since its last exchange: this
                // request was not written (typed, so that Retry resends
                // even a `POST` when no checkout took another for it).
                Box::new(crate::track::ConnectionClosed(e)) as BoxError
            }
        });
        if let Poll::Ready(Ok(())) = ready {
            // Promised to the next `call`: the IO must not expire it between
            // this check and the write.
            self.state.claim();
        }
        ready
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.call_with(req, |inner, req| inner.call(req))
    }
}

impl<S> IdleExpiryConnection<S> {
    /// [`call`](Service::call) with the inner service's send spelled out:
    /// the one-call client's engine sends with hyper's own (unnameable)
    /// future, which then needs no box.
    pub(crate) fn call_with<B, F, RB, E>(
        &mut self,
        req: Request<B>,
        send: impl FnOnce(&mut S, Request<B>) -> F,
    ) -> ResponseFuture<F, BoxError>
    where
        F: Future<Output = Result<Response<RB>, E>>,
    {
        // The request passing through defines the attempt: it opens here,
        // before hyper writes a byte of it. With the one-call client's
        // capture, the attempt is that capture's (its request body reports
        // the upload's end, and the first marker owns the exchange's end);
        // otherwise its upload is not followed, so the response's end
        // completes the exchange.
        let connect = req.method() == http::Method::CONNECT;
        let (number, owner) = match ConnectionCapture::direct_of(&req).as_ref() {
            Some(capture) => {
                // A hooked body reports its upload's end (at its end or drop).
                let empty = !capture.is_hooked();
                (
                    capture.begin_direct(&self.state, empty),
                    capture.take_marker(),
                )
            }
            None => (
                self.state.begin_request(true, std::time::Duration::ZERO),
                true,
            ),
        };
        let inner = send(&mut self.inner, req);
        ResponseFuture::new(
            inner,
            self.layer.clone(),
            self.origin,
            Some(Attempt {
                state: self.state.clone(),
                number,
                owner,
                connect,
                publish: self.publish,
            }),
            None,
        )
    }
}

/// A connection that refused its first request in `poll_ready` (the server
/// closed it as soon as it accepted it, or its handshake failed): nothing
/// was written, but it was never reused either, so a checkout gives up at
/// once instead of connecting again and again (the pieces' rule: only
/// refusals of reused connections take another connection). Its source is
/// the connection's own refusal.
#[derive(Debug)]
pub(crate) struct ClosedBeforeFirstRequest(BoxError);

impl ClosedBeforeFirstRequest {
    /// Whether `err`'s chain says a new connection refused its first request.
    pub(crate) fn is_in(err: &(dyn std::error::Error + 'static)) -> bool {
        crate::find_cause::<ClosedBeforeFirstRequest>(err).is_some()
    }
}

impl std::fmt::Display for ClosedBeforeFirstRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a new connection closed before its first request; nothing was written")
    }
}

impl std::error::Error for ClosedBeforeFirstRequest {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}
