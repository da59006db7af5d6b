//! The [`SharedTlsConnector`](super::SharedTlsConnector)'s response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use hyper::rt::{Read, Write};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use rustls::pki_types::ServerName;
use tokio_rustls::client::Connect;
use tokio_rustls::TlsConnector;

use super::{MaybeHttpsStream, TlsConnectError, TlsConnectErrorKind};
use crate::BoxError;

pin_project! {
    /// The future returned by [`SharedTlsConnector`](super::SharedTlsConnector):
    /// the inner connector's future, then (for `https://`) the TLS handshake.
    ///
    /// Hand-written rather than boxed, so a connect costs no allocation beyond
    /// the inner connector's and rustls's own.
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
        Connecting {
            #[pin]
            future: F,
            // `None` for `http://`.
            tls: Option<(TlsConnector, ServerName<'static>)>,
        },
        Handshaking {
            handshake: Connect<TokioIo<T>>,
        },
    }
}

impl<F, T> ResponseFuture<F, T> {
    pub(crate) fn failed(error: TlsConnectError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }

    pub(crate) fn connecting(future: F, tls: Option<(TlsConnector, ServerName<'static>)>) -> Self {
        Self {
            state: State::Connecting { future, tls },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    T: Read + Write + Unpin,
{
    type Output = Result<MaybeHttpsStream<T>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Failed { error } => {
                    let error = error.take().expect("polled after completion");
                    return Poll::Ready(Err(error.into()));
                }
                StateProj::Connecting { future, tls } => {
                    let io = match ready!(future.poll(cx)) {
                        Ok(io) => io,
                        Err(e) => {
                            let e = TlsConnectError::with_source(TlsConnectErrorKind::Connect, e);
                            return Poll::Ready(Err(e.into()));
                        }
                    };
                    match tls.take() {
                        None => return Poll::Ready(Ok(MaybeHttpsStream::Http(io))),
                        Some((connector, name)) => {
                            let handshake = connector.connect(name, TokioIo::new(io));
                            state.set(State::Handshaking { handshake });
                        }
                    }
                }
                StateProj::Handshaking { handshake } => {
                    return match ready!(Pin::new(handshake).poll(cx)) {
                        Ok(tls) => {
                            Poll::Ready(Ok(MaybeHttpsStream::Https(Box::new(TokioIo::new(tls)))))
                        }
                        Err(e) => Poll::Ready(Err(TlsConnectError::handshake(e).into())),
                    };
                }
            }
        }
    }
}

impl<F, T> fmt::Debug for ResponseFuture<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Failed { .. } => "failed",
            State::Connecting { .. } => "connecting",
            State::Handshaking { .. } => "handshaking",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
