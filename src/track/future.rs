//! The futures of [`TrackConnections`](super::TrackConnections) and
//! [`WithConnectionInfo`](super::WithConnectionInfo).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Context, Poll};

use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::{
    ConnectionCapture, ConnectionState, ExchangeEnd, PendingExchange, TrackStats, TrackedBody,
    TrackedIo,
};

pin_project! {
    /// Future of [`TrackConnections`](super::TrackConnections).
    #[derive(Debug)]
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        stats: TrackStats,
    }
}

impl<F> TrackFuture<F> {
    pub(super) fn new(inner: F, stats: TrackStats) -> Self {
        TrackFuture {
            inner,
            started: Instant::now(),
            stats,
        }
    }
}

impl<F, T, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<T, E>>,
    T: 'static,
{
    type Output = Result<TrackedIo<T>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let io = ready!(this.inner.poll(cx))?;
        this.stats.counters.opened.fetch_add(1, Ordering::Relaxed);
        let state = ConnectionState::new(*this.started, Instant::now());
        Poll::Ready(Ok(TrackedIo::new(io, state, this.stats.counters.clone())))
    }
}

pin_project! {
    /// Future of [`WithConnectionInfo`](super::WithConnectionInfo).
    #[derive(Debug)]
    pub struct InfoFuture<F> {
        #[pin]
        inner: F,
        capture: ConnectionCapture,
        pending: PendingExchange,
    }
}

impl<F> InfoFuture<F> {
    pub(super) fn new(inner: F, capture: ConnectionCapture) -> Self {
        InfoFuture {
            inner,
            pending: PendingExchange::new(Some(capture.clone())),
            capture,
        }
    }
}

impl<F, B, E> Future for InfoFuture<F>
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
        let end = ExchangeEnd::for_request(Some(this.capture), &response, false);
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
            "ConnectionInfoLayer: a response came without a tracked connection, so it carries \
             no ConnectionInfo; wrap the client's connector with TrackConnectionsLayer. \
             Logged once per process"
        );
    }
}
