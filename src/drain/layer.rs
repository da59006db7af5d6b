//! [`DrainLayer`]: the drain for a stack built by hand.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{DrainCut, DrainHandle, InFlight};
use crate::track::TrackStats;
use crate::BoxError;

/// Drains a hand-built stack on shutdown: refuses new requests with
/// [`Draining`](super::Draining), follows each request to the end of its
/// response body, and at the deadline cuts the rest with
/// [`DrainCut`]; see the [module docs](super).
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::{connect::HttpConnector, Client};
/// use hyper_util::rt::TokioExecutor;
/// use tower::{Layer, ServiceBuilder};
/// use tower_conn_lifecycle::drain::DrainLayer;
/// use tower_conn_lifecycle::track::TrackConnectionsLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let track = TrackConnectionsLayer::new();
/// let drain = DrainLayer::new().tracker(&track.stats());
/// let handle = drain.handle();
/// let client = Client::builder(TokioExecutor::new())
///     .build::<_, Full<Bytes>>(track.layer(HttpConnector::new()));
/// let client = ServiceBuilder::new().layer(drain).service(client);
/// # let _ = client;
/// // On shutdown:
/// let report = handle.drain(Duration::from_secs(10)).await;
/// assert_eq!(report.cut(), 0);
/// # }
/// ```
///
/// # Where it goes
///
/// Outermost (above [`RetryOnStaleConnection`](crate::retry) and
/// [`PhaseTimeout`](crate::phase_timeout)), so a request is in flight
/// from its call to its body's end, retries included. Inside a retry
/// layer it works too: the retry layer never retries a
/// [`Draining`](super::Draining) refusal.
///
/// # Connections: give it the tracker
///
/// hyper-util's legacy client hides its pool: a layer around it cannot
/// take a connection out of the pool or close one by itself. With the
/// connector's [`TrackConnectionsLayer`](crate::track::TrackConnectionsLayer)
/// ([`tracker`](Self::tracker)) the drain closes them through the tracker:
/// idle HTTP/1 connections at once (the tracked IO reads EOF, and hyper
/// closes the socket cleanly), the others when their exchange ends (with
/// [`WithConnectionInfoLayer`](crate::track::WithConnectionInfoLayer),
/// [`PhaseTimeout`](crate::phase_timeout) or
/// [`IdleExpiry`](crate::idle_expiry) in the stack to mark that end;
/// otherwise once nothing is in flight), HTTP/2 ones once nothing is in
/// flight, and at the deadline every connection with a request still on
/// it (the request fails, the connection closes). The tracker should be
/// this client's alone: the drain closes every connection it tracks.
///
/// **Without the tracker** the drain still refuses new requests, waits
/// for the requests in flight and counts them, but closes no connection:
/// the report's connection counts are `None`, and a request cut at the
/// deadline fails with [`DrainCut`] only when it is next polled (hyper
/// still holds it). Drop the client (every clone) after the drain to
/// close its pool's connections.
#[derive(Clone, Debug)]
pub struct DrainLayer {
    handle: DrainHandle,
}

impl Default for DrainLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl DrainLayer {
    /// A layer with its own drain and no tracker (see the type's docs).
    pub fn new() -> Self {
        DrainLayer {
            handle: DrainHandle::new(None),
        }
    }

    /// Closes connections through `stats`' tracker: the
    /// [`TrackStats`] of the [`TrackConnectionsLayer`](crate::track::TrackConnectionsLayer)
    /// in this client's connector. Starts a new drain: take the
    /// [`handle`](Self::handle) after this.
    pub fn tracker(self, stats: &TrackStats) -> Self {
        DrainLayer {
            handle: DrainHandle::new(Some(stats.clone())),
        }
    }

    /// The handle that drains every service this layer (and its clones)
    /// made.
    pub fn handle(&self) -> DrainHandle {
        self.handle.clone()
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = Drain<S>;

    fn layer(&self, inner: S) -> Drain<S> {
        Drain {
            inner,
            handle: self.handle.clone(),
        }
    }
}

/// The service of [`DrainLayer`]. Clones share the drain.
#[derive(Clone, Debug)]
pub struct Drain<S> {
    inner: S,
    handle: DrainHandle,
}

impl<S> Drain<S> {
    /// The handle that drains this service.
    pub fn handle(&self) -> DrainHandle {
        self.handle.clone()
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Drain<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body,
{
    type Response = Response<DrainBody<ResBody>>;
    type Error = BoxError;
    type Future = future::ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match self.handle.enter() {
            Ok(guard) => future::ResponseFuture::running(self.inner.call(req), guard),
            Err(_) => future::ResponseFuture::refused(),
        }
    }
}

/// The futures of [`Drain`].
pub mod future {
    use super::*;
    use crate::drain::Draining;

    pin_project! {
        /// Response future of [`Drain`].
        #[derive(Debug)]
        pub struct ResponseFuture<F> {
            #[pin]
            inner: Option<F>,
            guard: Option<InFlight>,
        }
    }

    impl<F> ResponseFuture<F> {
        /// In flight with `guard`, sending with `inner`.
        pub(crate) fn running(inner: F, guard: InFlight) -> Self {
            ResponseFuture {
                inner: Some(inner),
                guard: Some(guard),
            }
        }

        /// Refused: the drain had begun.
        pub(crate) fn refused() -> Self {
            ResponseFuture {
                inner: None,
                guard: None,
            }
        }
    }

    impl<F, B, E> Future for ResponseFuture<F>
    where
        F: Future<Output = Result<Response<B>, E>>,
        B: Body,
        E: Into<BoxError>,
    {
        type Output = Result<Response<DrainBody<B>>, BoxError>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            let Some(inner) = this.inner.as_pin_mut() else {
                return Poll::Ready(Err(Box::new(Draining)));
            };
            match inner.poll(cx) {
                Poll::Ready(Ok(response)) => {
                    let guard = this.guard.take();
                    Poll::Ready(Ok(response.map(|inner| DrainBody::new(inner, guard))))
                }
                Poll::Ready(Err(e)) => {
                    let e = e.into();
                    Poll::Ready(Err(match this.guard.take() {
                        Some(guard) => guard.judge(e),
                        None => e,
                    }))
                }
                Poll::Pending => {
                    if this.guard.as_ref().is_some_and(InFlight::is_cut) {
                        // Cut at the deadline while hyper still holds it
                        // (no tracker to close its connection): it ends
                        // here; dropping it abandons the exchange.
                        this.guard.take();
                        return Poll::Ready(Err(Box::new(DrainCut::new(None))));
                    }
                    Poll::Pending
                }
            }
        }
    }
}

pin_project! {
    /// The response body of [`Drain`] (and of the one-call client): the
    /// request is in flight until it ends, fails or is dropped. Errors are
    /// [`BoxError`]s: the inner body's, or a [`DrainCut`] (the cause inside)
    /// once the drain cut it.
    #[derive(Debug)]
    pub struct DrainBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B: Body> DrainBody<B> {
    /// `inner`, in flight with `guard` until it ends (now, if it is empty).
    pub(crate) fn new(inner: B, guard: Option<InFlight>) -> Self {
        let guard = guard.filter(|_| !inner.is_end_stream());
        DrainBody { inner, guard }
    }
}

impl<B> DrainBody<B> {
    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Consumes `self`, returning the wrapped body (the request is no
    /// longer followed: it ends for the drain now).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for DrainBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.guard.take();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e = e.into();
                Poll::Ready(Some(Err(match this.guard.take() {
                    Some(guard) => guard.judge(e),
                    None => e,
                })))
            }
            Poll::Ready(None) => {
                this.guard.take();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.guard.as_ref().is_some_and(InFlight::is_cut) {
                    this.guard.take();
                    return Poll::Ready(Some(Err(Box::new(DrainCut::new(None)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
