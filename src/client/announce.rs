//! The one-call client's request plane when no phase limit is set.
//!
//! Under the retry layer, [`PhaseTimeout`](crate::phase_timeout::PhaseTimeout)
//! does two things for every attempt: it enforces the limits, and it hands
//! the attempt's connection capture to the request body, which announces
//! the attempt to its connection (the tracker's exact record, what the
//! retry layer judges a failure by). Without a limit, the first is nothing
//! and the second is all that is left, so a client built without limits
//! runs [`Announce`] in its place: the same announcement and the same
//! response type (a [`ResponseBody`] with no timer), without the phase
//! machine's per-request state, clock reading and wrapper future. A
//! request that carries a [`PhaseOverride`](crate::phase_timeout::PhaseOverride)
//! still goes through PhaseTimeout (the client keeps both).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::phase_timeout::ResponseBody;
use crate::track::{ConnectionCapture, ExchangeEnd};
use crate::RequestBody;

/// Announces each attempt through its capture; see the [module docs](self).
#[derive(Clone, Debug)]
pub(crate) struct Announce<S>(pub(crate) S);

impl<S, RB> Service<Request<RequestBody>> for Announce<S>
where
    S: Service<Request<RequestBody>, Response = Response<RB>>,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = S::Error;
    type Future = AnnounceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<RequestBody>) -> Self::Future {
        // The attempt's capture, as PhaseTimeout takes it.
        let capture = ConnectionCapture::handed_or_direct(&mut req);
        req.body_mut().observe(None, Some(capture));
        AnnounceFuture {
            inner: self.0.call(req),
        }
    }
}

pin_project! {
    /// [`Announce`]'s future: the response with its body in a
    /// [`ResponseBody`] without timers. The exchange's end marker is the
    /// connection's own (the engine's connection service takes it) and, for
    /// anything else, the retry layer's above, which holds the same capture.
    #[derive(Debug)]
    pub(crate) struct AnnounceFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, RB, E> Future for AnnounceFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<ResponseBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(self.project().inner.poll(cx))?;
        Poll::Ready(Ok(
            response.map(|body| ResponseBody::unlimited(body, ExchangeEnd::none()))
        ))
    }
}
