//! The request-plane service for hyper-util's legacy `Client`.

use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::future::ResponseFuture;
use super::learn::Origin;
use super::IdleExpiryLayer;
use crate::track::{ConnectionCapture, TrackedBody};

/// Request-plane service made by [`IdleExpiryLayer`], for hyper-util's legacy
/// `Client` over a [`TrackConnections`](crate::track::TrackConnections)
/// connector.
///
/// It passes requests through unchanged. On each response it sets the
/// connection's effective expiry (configured, announced, learned) on the
/// tracker's state, and its response body ([`TrackedBody`]) marks the end of
/// the exchange, from which the tracker's IO counts the idle time and closes
/// the connection at its expiry. Errors are the inner service's.
///
/// **It needs the tracker.** A response that carries no
/// [`ConnectionState`](crate::track::ConnectionState) (an untracked
/// connector, a composable pool wrapped as a whole, reqwest) passes through
/// untouched and its connection gets no expiry; it is counted in
/// [`IdleExpiryStats::untracked_responses`](super::IdleExpiryStats::untracked_responses)
/// and the first one is logged as a `tracing` warning (once per layer and
/// its clones), so a stack that misses the tracker does not go unnoticed.
#[derive(Clone, Debug)]
pub struct IdleExpiry<S> {
    inner: S,
    layer: IdleExpiryLayer,
}

impl<S> IdleExpiry<S> {
    /// Wraps `inner` with the settings and shared state of `layer`.
    pub fn new(inner: S, layer: IdleExpiryLayer) -> Self {
        IdleExpiry { inner, layer }
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

impl<S, B, RB> Service<Request<B>> for IdleExpiry<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: Body,
{
    type Response = Response<TrackedBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let origin = Origin::of(req.uri());
        // The attempt record a layer above captured (PhaseTimeout, Retry):
        // read, never created here.
        let capture = req.extensions().get::<ConnectionCapture>().cloned();
        ResponseFuture::new(
            self.inner.call(req),
            self.layer.clone(),
            origin,
            None,
            capture,
        )
    }
}
