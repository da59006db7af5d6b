//! The [`RetryOnStaleConnection`] service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::RetryOnStaleConnectionLayer;
use super::policy::{duplicate, Session};
use crate::track::{ConnectionCapture, TrackedBody};
use crate::{BoxError, RequestBody, RequestBodyService};

/// Request-plane service that retries requests whose failure proves a retry
/// safe; made by [`RetryOnStaleConnectionLayer`].
///
/// It takes `http::Request<B>` for any body `B` and passes the request on
/// with its body as a [`RequestBody`] (a `RequestBody` from a layer above
/// is taken as it is), so the inner hyper-util client is a
/// `Client<_, RequestBody>` ([`RequestBodyService`]). A cheap-to-clone body
/// is sent again by cloning; any other through the layer's replay buffer.
///
/// Responses come back with a [`TrackedBody`], which ends the tracker's
/// exchange when the body ends. Errors are [`BoxError`]: always a
/// [`NotRetried`](super::NotRetried) whose source is the last attempt's
/// error, except errors of the inner service's `poll_ready`, passed on as
/// they are.
///
/// The inner service must be `Clone` (hyper-util's client is). The first
/// attempt of every request goes to the service `poll_ready` was called on;
/// a retry goes to a fresh clone of a spare copy kept since construction
/// (shared by clones of this service), so a request that is not retried,
/// nearly all of them, clones nothing. Clones of this service share the
/// layer's budget.
#[derive(Clone, Debug)]
pub struct RetryOnStaleConnection<S> {
    inner: S,
    spare: Arc<S>,
    layer: RetryOnStaleConnectionLayer,
}

impl<S: Clone> RetryOnStaleConnection<S> {
    /// Wraps `inner` with the settings of `layer`.
    pub fn new(inner: S, layer: RetryOnStaleConnectionLayer) -> Self {
        RetryOnStaleConnection {
            spare: Arc::new(inner.clone()),
            inner,
            layer,
        }
    }
}

impl<S> RetryOnStaleConnection<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Sends the first attempt of `req` with the service `poll_ready` was
    /// called on; retries, if any, clone the spare.
    fn start(&mut self, mut req: Request<RequestBody>, session: Session) -> ResponseFuture<S>
    where
        S: Service<Request<RequestBody>> + Clone,
    {
        // Copied before a capture goes in: the next attempt gets its own,
        // and the copy of a request without extensions allocates nothing.
        let backup = duplicate(&req);
        let (capture, future) = if self.layer.settings.direct_captures {
            // The one-call client: every attempt has a capture its engine
            // fills, handed straight to the layer below (no extension map).
            let capture = ConnectionCapture::direct(req.method() == http::Method::CONNECT);
            let handed = Some(capture.clone());
            let future = ConnectionCapture::hand_over(handed, || self.inner.call(req));
            (Some(capture), future)
        } else {
            let capture = needs_capture(&req).then(|| ConnectionCapture::get_or_insert(&mut req));
            if let Some(capture) = &capture {
                // The body announces the attempt to its connection, as
                // under PhaseTimeout (which observes it again, with the
                // same capture): the tracker then knows this request's
                // upload, so an early final response dropped mid-upload
                // abandons it, and its record is exact.
                req.body_mut().observe(None, Some(capture.clone()));
            }
            (capture, self.inner.call(req))
        };
        ResponseFuture::new(future, Arc::clone(&self.spare), backup, session, capture)
    }
}

impl<S, B, RB> Service<Request<B>> for RetryOnStaleConnection<S>
where
    S: RequestBodyService<Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Body,
{
    type Response = Response<TrackedBody<RB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut req = req.map(RequestBody::new);
        let limit = self.layer.replay_limit;
        req.body_mut().make_replayable(limit);
        let session = Session::new(&self.layer.settings, limit);
        self.start(req, session)
    }
}

/// Whether the attempt takes the connection capture (hyper-util's
/// `capture_connection`, the costliest per-request mechanism of the crate;
/// shared with the layers below, which take the same one). Only where it
/// is needed:
///
/// * the request has a body: an upload the caller gives up on (the future
///   dropped) is abandoned through it, poisoning its connection, which is
///   then closed at once (hyper itself would write the abandoned upload on
///   until the server stops reading or closes); a
///   [`PhaseTimeout`](crate::phase_timeout) below shares it rather than
///   take its own;
/// * the caller put one on the request: it is the attempt's record, shared
///   (a fresh one replaces it if an earlier attempt filled it).
///
/// A request without a body needs none. A failure is judged by the record
/// in reach: this capture, the one a PhaseTimeout timeout carries, or the
/// connection hyper-util's error names (the module docs, "What it costs");
/// a bodiless request given up before its response head has its connection
/// closed by hyper's dispatcher (the response future gone), and its
/// response's own connection ends its exchange.
fn needs_capture(req: &Request<RequestBody>) -> bool {
    !req.body().is_empty() || req.extensions().get::<ConnectionCapture>().is_some()
}
