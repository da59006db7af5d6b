//! [`ResponseFuture`] of [`ReqwestService`](super::ReqwestService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;
use tower_service::Service;

/// reqwest's own response future (its type is not nameable otherwise).
type Pending = <::reqwest::Client as Service<::reqwest::Request>>::Future;

pin_project! {
    /// Response future of [`ReqwestService`](super::ReqwestService): reqwest's
    /// future, with its response converted to an `http::Response`.
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Sent { #[pin] pending: Pending },
        Refused { err: Option<::reqwest::Error> },
    }
}

impl ResponseFuture {
    pub(super) fn sent(pending: Pending) -> Self {
        ResponseFuture {
            state: State::Sent { pending },
        }
    }

    pub(super) fn refused(err: ::reqwest::Error) -> Self {
        ResponseFuture {
            state: State::Refused { err: Some(err) },
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<::reqwest::Body>, ::reqwest::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Sent { pending } => Poll::Ready(ready!(pending.poll(cx)).map(Into::into)),
            StateProj::Refused { err } => Poll::Ready(Err(err
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Sent { .. } => "sent",
            State::Refused { .. } => "refused",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
