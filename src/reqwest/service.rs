//! The [`ReqwestService`] adapter.

use std::future::{ready, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::BoxError;

/// A [`reqwest::Client`] as a `tower::Service<http::Request<B>>`, so that
/// this crate's request-plane layers (and any other tower HTTP middleware)
/// can wrap it.
///
/// reqwest already implements `Service<reqwest::Request>`; this adds the
/// conversions around it, and nothing else:
///
/// * **Requests**: any `http::Request<B>` whose body is an
///   [`http_body::Body`] that is `Send + Sync + 'static` with data
///   convertible to [`Bytes`] (`Full<Bytes>`, `Empty<Bytes>`, `String`,
///   this crate's [`RequestBody`](crate::RequestBody), `reqwest::Body` itself …). The URI must
///   be absolute (`http://` or `https://`). The body becomes a streaming
///   [`reqwest::Body`] ([`reqwest::Body::wrap`]), pulled frame by frame as
///   the connection writes it, so upload progress stays visible to
///   `PhaseTimeout`. reqwest cannot clone a streaming body, so it does not
///   replay it: it returns `307`/`308` redirects of requests with a body as
///   they are instead of following them, and its own retries skip them.
///   Method, URI, version, headers and extensions are passed as they are;
///   reqwest reads its own request options from the extensions but does not
///   hand them on to hyper, so hyper-util's connection capture (and with it
///   every per-connection fact) stays empty.
/// * **Responses**: `http::Response<reqwest::Body>`, converted by reqwest
///   (status, version, headers and extensions kept; the final URL after
///   redirects is dropped). The body is read frame by frame, so
///   `PhaseTimeout`'s body stall and total limits apply to it.
/// * **Errors**: [`reqwest::Error`], including a request reqwest refuses to
///   convert (a relative URI, for example), which fails from the returned
///   future without sending anything.
/// * **Future**: a boxed `Send` future (`Pin<Box<dyn Future<Output =
///   Result<Response<reqwest::Body>, reqwest::Error>> + Send>>`), so there is
///   no future type to name. reqwest's own response future already boxes
///   its request state, so this is one more small allocation per request,
///   noise beside what reqwest itself allocates and does per request.
///
/// `poll_ready` is always ready (reqwest queues internally). A `Clone` shares
/// the client: its connection pool, TLS configuration and settings.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder};
/// use tower_conn_lifecycle::phase_timeout::PhaseTimeoutLayer;
/// use tower_conn_lifecycle::reqwest::ReqwestService;
///
/// let client = reqwest::Client::builder().no_proxy();
/// # #[cfg(feature = "reqwest-rustls")]
/// # let client = tower_conn_lifecycle::reqwest::ClientBuilderExt::shared_tls(client).unwrap();
/// let client = client.build().unwrap();
/// let mut svc = ServiceBuilder::new()
///     .layer(
///         PhaseTimeoutLayer::new()
///             .send(Duration::from_secs(1))
///             .read(Duration::from_secs(5)),
///     )
///     .service(ReqwestService::new(client));
/// # fn check<S: Service<http::Request<Full<Bytes>>>>(_: &mut S) {}
/// # check(&mut svc);
/// ```
#[derive(Clone, Debug)]
pub struct ReqwestService {
    client: ::reqwest::Client,
}

impl ReqwestService {
    /// Wraps `client`.
    pub fn new(client: ::reqwest::Client) -> Self {
        ReqwestService { client }
    }

    /// The wrapped client.
    pub fn get_ref(&self) -> &::reqwest::Client {
        &self.client
    }

    /// The wrapped client, mutably.
    pub fn get_mut(&mut self) -> &mut ::reqwest::Client {
        &mut self.client
    }

    /// Unwraps the client.
    pub fn into_inner(self) -> ::reqwest::Client {
        self.client
    }
}

impl From<::reqwest::Client> for ReqwestService {
    fn from(client: ::reqwest::Client) -> Self {
        ReqwestService::new(client)
    }
}

impl<B> Service<Request<B>> for ReqwestService
where
    B: Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<::reqwest::Body>;
    type Error = ::reqwest::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<::reqwest::Body>, ::reqwest::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<::reqwest::Request>::poll_ready(&mut self.client, cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match ::reqwest::Request::try_from(req.map(::reqwest::Body::wrap)) {
            Ok(req) => {
                let pending = self.client.call(req);
                Box::pin(async move { pending.await.map(Into::into) })
            }
            Err(err) => Box::pin(ready(Err(err))),
        }
    }
}
