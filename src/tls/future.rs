//! The [`SharedTlsConnector`](super::SharedTlsConnector)'s response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use hyper_rustls::MaybeHttpsStream;
use pin_project_lite::pin_project;

use super::TlsConnectError;
use crate::BoxError;

/// hyper-rustls's `HttpsConnector` future.
type HttpsFuture<T> = Pin<Box<dyn Future<Output = Result<MaybeHttpsStream<T>, BoxError>> + Send>>;

pin_project! {
    /// The future returned by [`SharedTlsConnector`](super::SharedTlsConnector).
    ///
    /// For `http://`, the inner connector's future, unboxed; for `https://`,
    /// hyper-rustls's (boxed) connect-and-handshake future. Either way its
    /// errors become [`TlsConnectError`]s.
    pub struct ResponseFuture<F, T> {
        #[pin]
        state: State<F, T>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, T> {
        Failed {
            error: Option<TlsConnectError>,
        },
        Http {
            #[pin]
            future: F,
        },
        Https {
            future: HttpsFuture<T>,
        },
    }
}

impl<F, T> ResponseFuture<F, T> {
    pub(crate) fn failed(error: TlsConnectError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }

    pub(crate) fn http(future: F) -> Self {
        Self {
            state: State::Http { future },
        }
    }

    pub(crate) fn https(future: HttpsFuture<T>) -> Self {
        Self {
            state: State::Https { future },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<MaybeHttpsStream<T>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match self.project().state.project() {
            StateProj::Failed { error } => {
                Err(error.take().expect("polled after completion").into())
            }
            // Plain http: the inner connector's error as it is, not a TLS
            // error.
            StateProj::Http { future } => ready!(future.poll(cx))
                .map(MaybeHttpsStream::Http)
                .map_err(Into::into),
            StateProj::Https { future } => ready!(future.as_mut().poll(cx)).map_err(|e| {
                // The inner connector's errors were typed on the way in;
                // anything else is the handshake's.
                match e.downcast::<TlsConnectError>() {
                    Ok(typed) => typed as BoxError,
                    Err(e) => TlsConnectError::handshake(e).into(),
                }
            }),
        })
    }
}

impl<F, T> fmt::Debug for ResponseFuture<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Failed { .. } => "failed",
            State::Http { .. } => "connecting (http)",
            State::Https { .. } => "connecting (https)",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
