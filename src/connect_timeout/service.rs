//! The connector service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_service::Service;

use crate::clock::deadline;
use crate::phase_timeout::{Elapsed, Phase, Waiting};
use crate::BoxError;

/// Connector made by [`ConnectTimeoutLayer`](super::ConnectTimeoutLayer). Its error is [`BoxError`]: the
/// inner connector's error, or a timeout.
///
/// A timeout is a [`std::io::Error`] of kind
/// [`TimedOut`](std::io::ErrorKind::TimedOut) carrying the [`Elapsed`] (its
/// [`get_ref()`](std::io::Error::get_ref); its `Display` is the `Elapsed`'s),
/// the shape hyper-util's `HttpConnector` gives its own connect timeout. Code
/// that recognises timeouts by that kind keeps working with this layer in
/// place: `reqwest::Error::is_timeout()` is `true` for it inside
/// `ClientBuilder::connector_layer`, where a bare `Elapsed` would only count
/// as a connect error. Find the `Elapsed` with [`crate::find_cause`], which looks
/// inside `io::Error`s; a plain
/// `downcast_ref::<Elapsed>()` on the error does not.
///
/// Its future is boxed (timer included): one allocation per connect, never
/// per request.
#[derive(Clone, Debug)]
pub struct ConnectTimeout<C> {
    inner: C,
    limit: Duration,
}

impl<C> ConnectTimeout<C> {
    /// Wraps `inner`, bounding its connects to `limit`.
    pub fn new(inner: C, limit: Duration) -> Self {
        ConnectTimeout { inner, limit }
    }

    /// The wrapped connector.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// The wrapped connector, mutably.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Consumes `self`, returning the wrapped connector.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<C, R> Service<R> for ConnectTimeout<C>
where
    C: Service<R>,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let started = Instant::now();
        let limit = self.limit;
        let connecting = self.inner.call(req);
        Box::pin(async move {
            // A zero limit is already spent: fail without polling the
            // connect, so the outcome never depends on whether it happens
            // to be ready. Otherwise the connect is polled before the
            // timer, as hyper-util's own connect timeout does.
            if !limit.is_zero() {
                let bounded = tokio::time::timeout_at(deadline(started, limit), connecting);
                if let Ok(connected) = bounded.await {
                    return connected.map_err(Into::into);
                }
            }
            let elapsed = Instant::now().saturating_duration_since(started);
            let timeout = Elapsed::new(Phase::Connect, Waiting::Connection, limit, elapsed, 0, 0);
            Err(timeout.into_timed_out().into())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use tower::ServiceExt;
    use tower_test::mock;

    use super::*;
    use tower_layer::Layer;

    use crate::connect_timeout::ConnectTimeoutLayer;

    const LIMIT: Duration = Duration::from_millis(250);

    /// The shape reqwest's `is_timeout()` and hyper-util's own connect
    /// timeout use: an `io::Error` of kind `TimedOut`, with the `Elapsed`
    /// inside it.
    #[tokio::test(start_paused = true)]
    async fn timeout_is_an_io_timed_out_carrying_elapsed() {
        let (inner, mut handle) = mock::pair::<&'static str, ()>();
        let connect = ConnectTimeoutLayer::new(LIMIT)
            .layer(inner)
            .oneshot("127.0.0.1:1");
        let _held = tokio::spawn(async move { handle.next_request().await });
        let err = connect.await.unwrap_err();
        let io = err
            .downcast_ref::<io::Error>()
            .unwrap_or_else(|| panic!("not an io::Error: {err:?}"));
        assert_eq!(io.kind(), io::ErrorKind::TimedOut);
        let inside = io
            .get_ref()
            .and_then(|e| e.downcast_ref::<Elapsed>())
            .expect("the Elapsed is the io::Error's payload");
        assert_eq!((inside.phase(), inside.limit()), (Phase::Connect, LIMIT));
        assert_eq!(crate::find_cause::<Elapsed>(err.as_ref()), Some(inside));
    }

    /// Only the timeout is wrapped: the connector's own errors pass as they
    /// are, timed-out kind or not.
    #[tokio::test(start_paused = true)]
    async fn connector_errors_are_not_wrapped() {
        let (inner, mut handle) = mock::pair::<&'static str, ()>();
        let mut svc = ConnectTimeoutLayer::new(LIMIT).layer(inner);
        let connect = svc.ready().await.unwrap().call("127.0.0.1:1");
        let (_, send) = handle.next_request().await.unwrap();
        send.send_error(io::Error::new(io::ErrorKind::TimedOut, "kernel said so"));
        let err = connect.await.unwrap_err();
        let io = err
            .downcast_ref::<io::Error>()
            .expect("the connector's error");
        assert_eq!(io.to_string(), "kernel said so");
        assert!(io.get_ref().is_some_and(|e| !e.is::<Elapsed>()));
        assert!(crate::find_cause::<Elapsed>(err.as_ref()).is_none());
    }
}
