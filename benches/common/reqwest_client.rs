//! The `reqwest` row: `reqwest::Client` 0.13 as it comes (HTTP/1 only,
//! connect timeout 5 s, total timeout 10 s, no proxy), behind the thinnest
//! `tower::Service<http::Request<B>>` that can call it.
//!
//! What the wrapper adds to reqwest's own work, per request:
//!
//! * the request body becomes a streaming `reqwest::Body`
//!   (`reqwest::Body::wrap`: one box);
//! * `reqwest::Request::try_from(http::Request)` formats the URI to a string
//!   and parses it into a `Url` (reqwest parses a `Url` from a `&str` on its
//!   own API too; the formatting is the extra);
//! * the response becomes an `http::Response<reqwest::Body>` (reqwest's
//!   `From` impl: drops the final URL and wraps the body in
//!   `reqwest::Body::wrap`, one more box).
//!
//! The future is reqwest's own (`Pending`, no box) behind a two-state enum.
//! These are the same conversions as `tower_conn_lifecycle::reqwest::
//! ReqwestService` (which boxes that future: one allocation more), written
//! here so that this row depends on reqwest alone.
//!
//! No TLS is used (`http://`), but the dev-dependencies turn on reqwest's
//! `rustls-no-provider` backend, whose `build()` wants a rustls provider: the
//! ring provider is installed as the process default first (a `build()`-time
//! cost only, nothing per request).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use super::ReqBody;

/// reqwest's response future (nameable only through its `Service` impl).
type Pending = <reqwest::Client as Service<reqwest::Request>>::Future;

/// The reqwest client of the row.
pub fn client<B: ReqBody>() -> impl super::HttpClient<B, Future: Send> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Reqwest(
        reqwest::Client::builder()
            .http1_only()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("reqwest client"),
    )
}

/// `reqwest::Client` as a `Service<http::Request<B>>`; see the
/// [module docs](self).
#[derive(Clone)]
pub struct Reqwest(reqwest::Client);

impl<B: ReqBody> Service<Request<B>> for Reqwest {
    type Response = Response<reqwest::Body>;
    type Error = reqwest::Error;
    type Future = ReqwestFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), reqwest::Error>> {
        Service::<reqwest::Request>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, req: Request<B>) -> ReqwestFuture {
        let state = match reqwest::Request::try_from(req.map(reqwest::Body::wrap)) {
            Ok(req) => State::Sent {
                pending: self.0.call(req),
            },
            Err(err) => State::Refused { err: Some(err) },
        };
        ReqwestFuture { state }
    }
}

pin_project! {
    /// reqwest's future, its response converted to an `http::Response`.
    pub struct ReqwestFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Sent { #[pin] pending: Pending },
        Refused { err: Option<reqwest::Error> },
    }
}

impl Future for ReqwestFuture {
    type Output = Result<Response<reqwest::Body>, reqwest::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Sent { pending } => Poll::Ready(ready!(pending.poll(cx)).map(Into::into)),
            StateProj::Refused { err } => {
                Poll::Ready(Err(err.take().expect("polled after completion")))
            }
        }
    }
}
