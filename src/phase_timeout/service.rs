//! The [`PhaseTimeout`] service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower_service::Service;

use super::body::{Progress, ResponseBody};
use super::future::{Plan, ResponseFuture};
use super::{PhaseOverride, PhaseTimeoutLayer};
use crate::track::ConnectionCapture;
use crate::{BoxError, RequestBody, RequestBodyService};

/// Request-plane service enforcing `send`, `read` and `total` limits; made by
/// [`PhaseTimeoutLayer`].
///
/// It takes `http::Request<B>` for any body `B` and the inner service
/// receives the request with its body as a [`RequestBody`] (a `RequestBody`
/// from a layer above is taken as it is), so the inner hyper-util client is
/// a `Client<_, RequestBody>` ([`RequestBodyService`]); responses come back
/// with a [`ResponseBody`]. Errors are [`BoxError`]: the inner service's
/// error, or [`Elapsed`](super::Elapsed).
///
/// `call` must run inside a tokio runtime with time enabled (it arms a
/// timer). Clones copy the limits and clone the inner service.
#[derive(Clone, Debug)]
pub struct PhaseTimeout<S> {
    inner: S,
    layer: PhaseTimeoutLayer,
    /// The layer's limits and what follows from them, resolved once (a
    /// request with a [`PhaseOverride`] resolves its own).
    plan: Plan,
}

impl<S> PhaseTimeout<S> {
    /// Wraps `inner` with the limits of `layer`.
    pub fn new(inner: S, layer: PhaseTimeoutLayer) -> Self {
        PhaseTimeout {
            inner,
            plan: Plan::new(layer.limits()),
            layer,
        }
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

impl<S, B, RB> Service<Request<B>> for PhaseTimeout<S>
where
    S: RequestBodyService<Response = Response<RB>>,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Body,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut req = req.map(RequestBody::new);
        let plan = match req.extensions().get::<PhaseOverride>() {
            Some(o) => Plan::new(o.apply(&self.layer)),
            None => self.plan,
        };
        let issued = Instant::now();
        // A body that is already at its end, or says it has exactly nothing
        // to send, is empty: its upload is the request head, so it needs no
        // shared progress record. Either way the body announces the attempt
        // to its connection.
        let empty = req.body().is_empty();
        // Taken for every request, whatever its limits (see below). The
        // one-call client hands its own over from the retry layer above
        // (or, for a retry, puts it on the request).
        let capture = if self.layer.direct_captures() {
            ConnectionCapture::handed_or_direct(&mut req)
        } else {
            ConnectionCapture::get_or_insert(&mut req)
        };
        let progress = (!empty).then(|| Arc::new(Progress::new(issued)));
        req.body_mut()
            .observe(progress.clone(), Some(capture.clone()));
        // What the inner service checks during its call (a checkout's
        // expiry check) shares the request's start as its clock reading.
        let inner = crate::clock::scoped_at(issued, || self.inner.call(req));
        ResponseFuture::new(inner, plan, issued, progress, Some(capture))
    }
}

// Why every request takes the connection capture (hyper-util's
// `capture_connection`, the costliest per-request mechanism of the crate),
// even without a `send` or `read` limit:
//
// * its body announces the attempt with it, so the tracker's record is this
//   request's: opened at its head's first write, exact through a `1xx` or
//   an early response during an upload (what Retry above judges a failure
//   by), and numbered, so the response-end marker ends exactly this
//   request's exchange. Without it the marker guesses the exchange from the
//   connection's state, and under concurrency (hyper hands a connection
//   back to its pool as soon as it has read a response, and the next
//   request can be written, and answered, before this caller's marker is
//   made) it can end the next request's exchange while that is in flight:
//   the connection then looks idle, and a close during that request counts
//   as an idle close for IdleExpiry's learning (with bodiless requests
//   taking none, `tests/hostile.rs`'s randomized test learned short idle
//   timeouts from such closes, and lost reuse, several times as often). On
//   a connection whose other requests announce themselves, an unannounced
//   head can even be taken for more of the previous exchange.
// * a timed-out or dropped request's connection is poisoned through it (an
//   upload hyper would otherwise write on).
