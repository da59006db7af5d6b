//! The response future of [`RetryOnStaleConnection`](super::RetryOnStaleConnection).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::retry::Policy;
use tower_service::Service;

use super::policy::{duplicate, Session};
use crate::track::{ConnectionCapture, ExchangeEnd, PendingExchange, TrackedBody};
use crate::{BoxError, RequestBody};

pin_project! {
    /// Response future of [`RetryOnStaleConnection`](super::RetryOnStaleConnection).
    ///
    /// It runs tower's retry loop (call, ask the [`Policy`], `poll_ready`,
    /// call again) itself, rather than through `tower::retry::Retry`,
    /// because it must know the attempt in flight: dropping this future
    /// abandons that attempt's exchange, which closes its connection (the
    /// tracker's poisoning), instead of leaving hyper writing a request
    /// nobody waits for.
    #[derive(Debug)]
    pub struct ResponseFuture<S>
    where
        S: Service<Request<RequestBody>>,
    {
        #[pin]
        state: State<S, S::Future>,
        // The service retries are cloned from.
        spare: Arc<S>,
        // The request for the next attempt.
        backup: Option<Request<RequestBody>>,
        session: Session,
        // The connection capture of the attempt in flight, when it took one
        // (a request with a body, or the caller's capture), which abandons
        // the attempt if this future is dropped before its response.
        pending: PendingExchange,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<S, F> {
        Called {
            #[pin]
            future: F,
        },
        // A clone of the spare, waiting to be ready for the next attempt
        // (boxed: retries are rare, and an inline service would make every
        // request's future larger, and costlier to move, by its size).
        Retrying {
            service: Box<S>,
        },
    }
}

impl<S> ResponseFuture<S>
where
    S: Service<Request<RequestBody>>,
{
    pub(crate) fn new(
        future: S::Future,
        spare: Arc<S>,
        backup: Request<RequestBody>,
        session: Session,
        capture: Option<ConnectionCapture>,
    ) -> Self {
        ResponseFuture {
            state: State::Called { future },
            spare,
            backup: Some(backup),
            pending: PendingExchange::new(capture),
            session,
        }
    }
}

impl<S, RB> Future for ResponseFuture<S>
where
    S: Service<Request<RequestBody>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    RB: Body,
{
    type Output = Result<Response<TrackedBody<RB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let result = ready!(future.poll(cx));
                    // A response or an error: this attempt was not abandoned.
                    this.pending.disarm();
                    // The common case first, moving the response as little
                    // as possible: a success is never retried.
                    let err = match result {
                        Ok(mut response) => {
                            this.session.succeeded(&mut response);
                            return Poll::Ready(Ok(with_exchange_end(
                                response,
                                this.pending.capture(),
                            )));
                        }
                        Err(err) => err.into(),
                    };
                    let mut result = Err(err);
                    let retry = match this.backup.as_mut() {
                        Some(req) => {
                            // The policy judges the failed attempt by its own
                            // connection (and replaces the capture for the
                            // next attempt).
                            if let Some(capture) = this.pending.take_capture() {
                                req.extensions_mut().insert(capture);
                            }
                            this.session.retry(req, &mut result)
                        }
                        None => None,
                    };
                    match retry {
                        // The policy never waits: a stale connection is gone,
                        // the next attempt goes to another one at once.
                        Some(wait) => {
                            let () = wait.into_inner();
                            let service = Box::new(S::clone(this.spare));
                            this.state.set(State::Retrying { service });
                        }
                        None => return Poll::Ready(result.map(|r| with_exchange_end(r, None))),
                    }
                }
                StateProj::Retrying { service } => {
                    ready!(service.poll_ready(cx)).map_err(Into::into)?;
                    let Some(mut req) = this.backup.take() else {
                        // Unreachable: `Retrying` is only entered with a backup.
                        return Poll::Ready(Err("retry without a request".into()));
                    };
                    *this.backup = Some(duplicate(&req));
                    *this.pending =
                        PendingExchange::new(req.extensions().get::<ConnectionCapture>().cloned());
                    // Under PhaseTimeout above this layer, the body reports
                    // this attempt's upload and announces it.
                    req.body_mut().next_attempt(this.pending.capture());
                    let future = service.call(req);
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// Wraps the body with the marker that ends the tracker's exchange (owned
/// only if no layer below this one took the attempt's marker first).
fn with_exchange_end<B: Body>(
    response: Response<B>,
    capture: Option<&ConnectionCapture>,
) -> Response<TrackedBody<B>> {
    let end = ExchangeEnd::for_request(capture, &response, false);
    response.map(|body| TrackedBody::new(body, end))
}
