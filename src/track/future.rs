//! The response future of [`WithConnectionInfo`](super::WithConnectionInfo).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Context, Poll};

use super::{ConnectionCapture, ConnectionState, ExchangeEnd, PendingExchange, TrackedBody};
use http_body::Body;
use pin_project_lite::pin_project;

pin_project! {
    /// Response future of [`WithConnectionInfo`](super::WithConnectionInfo).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // The capture, abandoning the exchange if dropped before the head.
        pending: PendingExchange,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, capture: ConnectionCapture) -> Self {
        ResponseFuture {
            inner,
            pending: PendingExchange::new(Some(capture)),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Body,
{
    type Output = Result<http::Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        // A response or an error: either way the exchange was not abandoned
        // by this future.
        this.pending.disarm();
        let mut response = result?;
        match response
            .extensions()
            .get::<ConnectionState>()
            .map(ConnectionState::info)
        {
            Some(info) => {
                response.extensions_mut().insert(info);
            }
            None => untracked_info(),
        }
        let end = ExchangeEnd::for_request(this.pending.capture(), &response, false);
        Poll::Ready(Ok(response.map(|body| TrackedBody::new(body, end))))
    }
}

/// `WithConnectionInfo` got a response without the tracker's state: it has
/// nothing to insert. Warned about once per process (the layer keeps no
/// state of its own to warn once per layer); later ones cost one relaxed
/// load.
fn untracked_info() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.load(Ordering::Relaxed) && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "WithConnectionInfoLayer: a response came without a tracked connection, so it carries \
             no ConnectionInfo; wrap the client's connector with TrackConnectionsLayer. \
             Logged once per process"
        );
    }
}
