//! The [`PhaseTimeout`] service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower_service::Service;

use super::body::{Progress, RequestBody, ResponseBody};
use super::future::{Plan, ResponseFuture};
use super::{PhaseOverride, PhaseTimeoutLayer};
use crate::track::ConnectionCapture;
use crate::BoxError;

/// Request-plane service enforcing `send`, `read` and `total` limits; made by
/// [`PhaseTimeoutLayer`].
///
/// The inner service receives requests whose body is [`RequestBody<B>`];
/// responses come back with a [`ResponseBody`]. Errors are [`BoxError`]: the
/// inner service's error, or [`Elapsed`](super::Elapsed).
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
    S: Service<Request<RequestBody<B>>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    B: Body,
    RB: Body,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let plan = match req.extensions().get::<PhaseOverride>() {
            Some(o) => Plan::new(o.apply(&self.layer)),
            None => self.plan,
        };
        let issued = Instant::now();
        // A body that is already at its end, or says it has exactly nothing
        // to send, is empty: its upload is the request head, so it needs no
        // shared progress record.
        let body = req.body();
        let empty = body.is_end_stream() || body.size_hint().exact() == Some(0);
        let capture = if self.layer.direct_captures() {
            // The one-call client: the capture handed over by the retry
            // layer above (or, for a retry, the one on the request).
            Some(
                ConnectionCapture::take_handed()
                    .unwrap_or_else(|| ConnectionCapture::get_or_insert_with(&mut req, true)),
            )
        } else {
            needs_capture(&req, &plan, empty).then(|| ConnectionCapture::get_or_insert(&mut req))
        };
        let progress = (!empty).then(|| Arc::new(Progress::new(issued)));
        let req = req.map(|b| RequestBody::tracked(b, progress.clone(), capture.clone()));
        ResponseFuture::new(self.inner.call(req), plan, issued, progress, capture)
    }
}

/// Whether the request takes the connection capture (its attempt's record,
/// [`ConnectionCapture::get_or_insert`]: hyper-util's `capture_connection`,
/// the costliest per-request mechanism of the crate), which its body then
/// announces to its connection. Only where something reads it:
///
/// * the `send` and `read` clocks watch the request's connection (when it
///   was handed over, its socket progress) and poison it on a timeout;
/// * a request with a body announces its attempt, so that the tracker's
///   record of it stays exact through a `1xx` or an early response during
///   the upload (what [`RetryOnStaleConnection`](crate::retry) above judges
///   a failure by: "a response byte arrived", "nothing was written"), and an
///   upload given up on (a `total` timeout, the future dropped) poisons its
///   connection rather than leave hyper writing it;
/// * the request already carries one (a layer above, or the caller, took
///   it): it is shared, as before.
///
/// A request without a body and without those limits needs none: its
/// record is the head alone, which the tracker infers exactly, its
/// connection is closed by hyper itself if the request is given up before
/// its response head (hyper's dispatcher sees the response future gone),
/// and the response's own connection ends its exchange.
fn needs_capture<B>(req: &Request<B>, plan: &Plan, empty: bool) -> bool {
    plan.watches_connection() || !empty || req.extensions().get::<ConnectionCapture>().is_some()
}
