//! The checkout: a connection from the pool, another if it refuses.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response, Uri};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::Body;
use crate::idle_expiry::ClosedBeforeFirstRequest;
use crate::BoxError;

/// See [`checkout`](super::checkout).
#[derive(Clone, Debug)]
pub(super) struct Checkout<P> {
    pool: P,
    attempts: usize,
}

impl<P> Checkout<P> {
    pub(super) fn new(pool: P, attempts: usize) -> Self {
        Checkout {
            pool,
            attempts: attempts.max(1),
        }
    }
}

impl<P, S, B, RB> Service<Request<B>> for Checkout<P>
where
    P: Service<Uri, Response = S> + Clone,
    P::Error: Into<BoxError>,
    S: Service<Request<B>, Response = Response<RB>> + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    RB: http_body::Body,
{
    type Response = Response<Body<RB>>;
    type Error = BoxError;
    type Future = CheckoutFuture<P, S, B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The pool is made ready in the request's future (a clone of it),
        // once per connection it checks out.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        CheckoutFuture {
            pool: self.pool.clone(),
            req: Some(req),
            attempts: self.attempts,
            state: State::PoolReady,
        }
    }
}

pin_project! {
    /// The request's future: checks connections out until one is ready
    /// (or `attempts` refused), sends on it, and puts the connection in
    /// the response body.
    pub(super) struct CheckoutFuture<P, S, B>
    where
        P: Service<Uri, Response = S>,
        S: Service<Request<B>>,
    {
        pool: P,
        req: Option<Request<B>>,
        // Connections this request may still check out.
        attempts: usize,
        #[pin]
        state: State<P::Future, S, S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<C, S, F> {
        PoolReady,
        Checkout { #[pin] future: C },
        ConnReady { conn: Option<S> },
        Sending { #[pin] future: F, conn: Option<S> },
        Failed { error: Option<BoxError> },
        Done,
    }
}

impl<P, S, B> std::fmt::Debug for CheckoutFuture<P, S, B>
where
    P: Service<Uri, Response = S>,
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckoutFuture")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

fn completed() -> BoxError {
    "pool checkout future polled after completion".into()
}

impl<P, S, B, RB> Future for CheckoutFuture<P, S, B>
where
    P: Service<Uri, Response = S>,
    P::Error: Into<BoxError>,
    S: Service<Request<B>, Response = Response<RB>> + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    RB: http_body::Body,
{
    type Output = Result<Response<Body<RB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::PoolReady => match ready!(this.pool.poll_ready(cx)) {
                    Ok(()) => match this.req.as_ref() {
                        // The pool connects to the request's origin (a URI
                        // clone: reference counts).
                        Some(req) => State::Checkout {
                            future: this.pool.call(req.uri().clone()),
                        },
                        None => State::Failed {
                            error: Some(completed()),
                        },
                    },
                    Err(e) => State::Failed {
                        error: Some(e.into()),
                    },
                },
                StateProj::Checkout { future } => match ready!(future.poll(cx)) {
                    Ok(conn) => State::ConnReady { conn: Some(conn) },
                    Err(e) => State::Failed {
                        error: Some(e.into()),
                    },
                },
                StateProj::ConnReady { conn } => {
                    let ready = match conn.as_mut() {
                        Some(c) => ready!(c.poll_ready(cx)),
                        None => Ok(()),
                    };
                    match (ready, conn.take(), this.req.take()) {
                        (Ok(()), Some(mut c), Some(req)) => State::Sending {
                            future: c.call(req),
                            conn: Some(c),
                        },
                        // Refused before any byte (expired, closed,
                        // abandoned): the pool drops it (its `poll_ready`
                        // failed); take another, or give up with this
                        // refusal.
                        // A new connection's refusal (the server closed it
                        // at once) ends the checkout: connecting again would
                        // most likely fare the same.
                        (Err(refusal), _, req) => {
                            let refusal: BoxError = refusal.into();
                            *this.attempts = this.attempts.saturating_sub(1);
                            *this.req = req;
                            if *this.attempts == 0
                                || ClosedBeforeFirstRequest::is_in(refusal.as_ref())
                            {
                                State::Failed {
                                    error: Some(refusal),
                                }
                            } else {
                                State::PoolReady
                            }
                        }
                        _ => State::Failed {
                            error: Some(completed()),
                        },
                    }
                }
                StateProj::Sending { future, conn } => {
                    let sent = ready!(future.poll(cx));
                    let conn = conn.take();
                    this.state.set(State::Done);
                    return Poll::Ready(match (sent, conn) {
                        (Ok(response), Some(conn)) => {
                            Ok(response.map(|body| Body::new(body, conn)))
                        }
                        (Err(e), conn) => {
                            if let Some(conn) = conn {
                                discard(conn, cx);
                            }
                            Err(e.into())
                        }
                        (Ok(_), None) => Err(completed()),
                    });
                }
                StateProj::Failed { error } => {
                    let error = error.take().unwrap_or_else(completed);
                    this.req.take();
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
                StateProj::Done => return Poll::Ready(Err(completed())),
            };
            this.state.set(next);
        }
    }
}

/// Keeps a connection that failed under a request out of the pool: a
/// failed `poll_ready` has the pool drop it (as a refusal does), instead of
/// taking it back for the next request (a retry's) to find refusing.
/// hyper answers the failed request before its connection's task has shut
/// the connection down, so `poll_ready` may still be pending here: then a
/// task waits for it (the connection stays out of the pool meanwhile) and
/// drops it once it refuses, or gives it back if it turns out ready.
fn discard<S, B>(mut conn: S, cx: &mut Context<'_>)
where
    S: Service<Request<B>> + Send + 'static,
{
    if conn.poll_ready(cx).is_ready() {
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(std::future::poll_fn(move |cx| {
            conn.poll_ready(cx).map(|_| ())
        }));
    }
}
