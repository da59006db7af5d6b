//! The response future of [`IdleExpiry`](super::IdleExpiry) and
//! [`IdleExpiryConnection`](super::IdleExpiryConnection).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use super::learn::Origin;
use super::IdleExpiryLayer;
use crate::track::{ConnectionCapture, ConnectionState, ExchangeEnd, TrackedBody};

/// The attempt a per-connection service opened: its connection, its
/// number there, whether this future owns the exchange's end, whether it
/// is a CONNECT, and whether the response carries the connection's state in
/// its extensions (see [`IdleExpiryConnection`](super::IdleExpiryConnection)).
#[derive(Debug)]
pub(crate) struct Attempt {
    pub(crate) state: ConnectionState,
    pub(crate) number: u64,
    pub(crate) owner: bool,
    pub(crate) connect: bool,
    pub(crate) publish: bool,
}

pin_project! {
    /// Response future of [`IdleExpiry`](super::IdleExpiry) and
    /// [`IdleExpiryConnection`](super::IdleExpiryConnection). `E` is its
    /// error: the inner service's for `IdleExpiry`, [`BoxError`](crate::BoxError) for
    /// `IdleExpiryConnection` (the inner error converted with `Into`).
    pub struct ResponseFuture<F, E> {
        #[pin]
        inner: F,
        layer: IdleExpiryLayer,
        origin: Option<Origin>,
        // The connection and the attempt's number on it, when known up
        // front (composable pools); otherwise read from the response's
        // extensions.
        state: Option<Attempt>,
        // The request's attempt record, when a layer above captured it.
        capture: Option<ConnectionCapture>,
        error: PhantomData<fn() -> E>,
    }
}

impl<F, E> std::fmt::Debug for ResponseFuture<F, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, E> ResponseFuture<F, E> {
    pub(crate) fn new(
        inner: F,
        layer: IdleExpiryLayer,
        origin: Option<Origin>,
        state: Option<Attempt>,
        capture: Option<ConnectionCapture>,
    ) -> Self {
        ResponseFuture {
            inner,
            layer,
            origin,
            state,
            capture,
            error: PhantomData,
        }
    }
}

impl<F, B, FE, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response<B>, FE>>,
    FE: Into<E>,
    B: Body,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx)).map_err(Into::into)?;
        let (end, state) = match this.state.take() {
            Some(Attempt {
                state,
                number,
                owner,
                connect,
                publish,
            }) => {
                // hyper's own connections do not copy extras into responses.
                if publish {
                    response.extensions_mut().insert(state.clone());
                }
                let end =
                    ExchangeEnd::for_attempt(state.clone(), number, owner, connect, &response);
                (end, Some(state))
            }
            None => {
                let end = ExchangeEnd::for_request(this.capture.as_ref(), &response, false);
                (end, response.extensions().get::<ConnectionState>().cloned())
            }
        };
        match state {
            Some(state) => {
                if !state.is_upgraded() {
                    this.layer
                        .on_response(&state, response.headers(), this.origin.as_ref());
                }
            }
            // Nothing to expire: not silently (a misconfigured stack).
            None => this.layer.on_untracked(response.version()),
        }
        Poll::Ready(Ok(response.map(|body| TrackedBody::new(body, end))))
    }
}
