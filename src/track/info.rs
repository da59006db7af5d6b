//! `ConnectionInfo`: the connection's story for one response.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::ConnectionState;

/// What happened on the connection for one request: a response extension, in
/// the spirit of curl's `-w` variables and Go's `httptrace`.
///
/// Inserted by [`ConnectionInfoLayer`]; [`ConnectionInfo::of`] also derives it
/// from a response that only carries the tracker's [`ConnectionState`] (any
/// response from hyper-util's client over a
/// [`TrackConnections`](super::TrackConnections) connector does).
///
/// Durations are measured on the socket by the tracker's IO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub(super) id: u64,
    pub(super) request_number: u64,
    pub(super) idle_before: Duration,
    pub(super) connect: Duration,
    pub(super) upload: Option<Duration>,
    pub(super) first_byte: Option<Duration>,
}

impl ConnectionInfo {
    /// The [`ConnectionInfo`] of a response: the extension if a
    /// [`ConnectionInfoLayer`] put one there, otherwise a snapshot of the
    /// tracked connection's state (accurate when taken as soon as the response
    /// head arrives). `None` when the connection was not tracked.
    pub fn of<B>(response: &http::Response<B>) -> Option<ConnectionInfo> {
        let ext = response.extensions();
        ext.get::<ConnectionInfo>()
            .copied()
            .or_else(|| ext.get::<ConnectionState>().map(ConnectionState::info))
    }

    /// The connection's process-unique id.
    pub fn connection_id(&self) -> u64 {
        self.id
    }

    /// Whether the connection had carried an earlier request.
    pub fn is_reused(&self) -> bool {
        self.request_number > 1
    }

    /// The number of this request on its connection (1 for a new connection).
    pub fn request_number(&self) -> u64 {
        self.request_number
    }

    /// How long the connection sat idle (since the previous response's last
    /// byte) before this request's first byte; zero on a new connection.
    pub fn idle_before(&self) -> Duration {
        self.idle_before
    }

    /// How long the connector took to establish the connection (TCP, plus TLS
    /// when tracked outside it). Reused connections report their original
    /// connect time.
    pub fn connect_duration(&self) -> Duration {
        self.connect
    }

    /// From this request's first byte written to its last byte written before
    /// the response started.
    pub fn upload_duration(&self) -> Option<Duration> {
        self.upload
    }

    /// From this request's first byte written to the response's first byte.
    pub fn time_to_first_byte(&self) -> Option<Duration> {
        self.first_byte
    }
}

/// Request-plane layer that inserts a [`ConnectionInfo`] into every response
/// that came over a tracked connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectionInfoLayer {
    _priv: (),
}

impl ConnectionInfoLayer {
    /// A new layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ConnectionInfoLayer {
    type Service = WithConnectionInfo<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithConnectionInfo { inner }
    }
}

/// Service made by [`ConnectionInfoLayer`].
#[derive(Clone, Debug)]
pub struct WithConnectionInfo<S> {
    inner: S,
}

impl<S, R, B> Service<R> for WithConnectionInfo<S>
where
    S: Service<R, Response = http::Response<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = InfoFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        InfoFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// Future of [`WithConnectionInfo`].
    #[derive(Debug)]
    pub struct InfoFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for InfoFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = ready!(self.project().inner.poll(cx))?;
        if let Some(info) = response
            .extensions()
            .get::<ConnectionState>()
            .map(ConnectionState::info)
        {
            response.extensions_mut().insert(info);
        }
        Poll::Ready(Ok(response))
    }
}
