//! `ConnectTimeout`: the connect phase, on the connection plane.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::error::{Elapsed, Waiting};
use super::Phase;
use crate::clock::deadline;
use crate::BoxError;

/// Bounds how long a connector may take (TCP, plus TLS when the connector
/// does it) with an [`Elapsed`] error of phase [`Phase::Connect`].
///
/// It is generic over the connector's request type, so it wraps hyper-util's
/// `HttpConnector` (`Service<Uri>`) and also fits inside
/// `reqwest::ClientBuilder::connector_layer`, whose request type is private.
///
/// [`Duration::ZERO`] fails every connect at its first poll, without polling
/// the connector (so no connection is attempted through a lazy connector
/// like `HttpConnector`); see the [module docs](super#zero-and-enormous-limits).
/// A limit too large for the clock never fires. A `Clone` copies the limit.
///
/// ```
/// use std::time::Duration;
/// use hyper_util::client::legacy::connect::HttpConnector;
/// use tower::ServiceBuilder;
/// use tower_conn_lifecycle::phase_timeout::ConnectTimeoutLayer;
///
/// let connector = ServiceBuilder::new()
///     .layer(ConnectTimeoutLayer::new(Duration::from_secs(1)))
///     .service(HttpConnector::new());
/// # let _ = connector;
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ConnectTimeoutLayer {
    limit: Duration,
}

impl ConnectTimeoutLayer {
    /// A layer bounding connects to `limit`.
    pub fn new(limit: Duration) -> Self {
        ConnectTimeoutLayer { limit }
    }
}

impl<C> Layer<C> for ConnectTimeoutLayer {
    type Service = ConnectTimeout<C>;

    fn layer(&self, inner: C) -> Self::Service {
        ConnectTimeout {
            inner,
            limit: self.limit,
        }
    }
}

/// Connector made by [`ConnectTimeoutLayer`]. Its error is [`BoxError`]: the
/// inner connector's error, or [`Elapsed`].
#[derive(Clone, Debug)]
pub struct ConnectTimeout<C> {
    inner: C,
    limit: Duration,
}

impl<C, R> Service<R> for ConnectTimeout<C>
where
    C: Service<R>,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = ConnectFuture<C::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let started = Instant::now();
        ConnectFuture {
            inner: self.inner.call(req),
            sleep: Box::pin(tokio::time::sleep_until(deadline(started, self.limit))),
            started,
            limit: self.limit,
        }
    }
}

pin_project! {
    /// Future of [`ConnectTimeout`]. `Unpin` when the inner future is (as
    /// hyper-util's client requires of connector futures): the timer is boxed,
    /// one allocation per connect.
    #[derive(Debug)]
    pub struct ConnectFuture<F> {
        #[pin]
        inner: F,
        sleep: Pin<Box<Sleep>>,
        started: Instant,
        limit: Duration,
    }
}

impl<F, T, E> Future for ConnectFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // A zero limit is already spent: fail without trying, so the outcome
        // never depends on whether the connect happens to be ready.
        let spent = this.limit.is_zero();
        if !spent {
            if let Poll::Ready(result) = this.inner.poll(cx) {
                return Poll::Ready(result.map_err(Into::into));
            }
        }
        if spent || this.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Elapsed::new(
                Phase::Connect,
                Waiting::Connection,
                *this.limit,
                Instant::now().saturating_duration_since(*this.started),
                0,
                0,
            )
            .into()));
        }
        Poll::Pending
    }
}
