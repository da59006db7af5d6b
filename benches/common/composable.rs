//! The `bare_composable` row: hyper-util's composable pool
//! (`client::pool::cache`) over hyper's `client::conn::http1`, with no layer
//! of this crate. hyper-util ships no client on this pool yet, so this is the
//! least a client on it needs:
//!
//! * [`Connect`]: `HttpConnector`, the HTTP/1 handshake, the connection task
//!   spawned; the pooled service is [`Http1`] over hyper's `SendRequest`.
//! * [`Composable`]: sets `Host` and the origin-form URI as the legacy client
//!   does, checks a connection out of the cache, waits for it to be ready
//!   (a pooled connection that turns out closed is dropped and another taken,
//!   as the legacy pool does silently) and sends.
//! * [`PooledBody`]: the response body holds the checked-out connection and
//!   drops it (back into the pool) when the body ends, so a connection goes
//!   back only once it can take the next request, and concurrent requests
//!   never queue behind a busy one: they open connections of their own.
//!
//! Two boxes per request: the request future (an `async` block) and the
//! `SendRequest` future (its type cannot be named, and the pool's `Cached`
//! service only reaches it through `Service::call`). The legacy client boxes
//! its response future too.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::pool::cache;
use hyper_util::rt::TokioExecutor;
use pin_project_lite::pin_project;
use tower::{Service, ServiceExt};
use tower_conn_lifecycle::BoxError;

use super::ReqBody;

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// How many pooled connections one request may find closed before it gives
/// up (each costs nothing: no byte was written on them).
const CHECKOUTS: usize = 8;

/// hyper-util's composable pool with HTTP/1 connections, no layers.
pub fn client<B: ReqBody>() -> impl super::HttpClient<B, Future: Send> {
    Composable {
        cache: cache::builder()
            .executor(TokioExecutor::new())
            .build::<_, Uri>(Connect::<B> {
                http: HttpConnector::new(),
                body: PhantomData,
            }),
    }
}

/// Opens one HTTP/1 connection: TCP, handshake, connection task spawned.
pub struct Connect<B> {
    http: HttpConnector,
    body: PhantomData<fn() -> B>,
}

impl<B> Clone for Connect<B> {
    fn clone(&self) -> Self {
        Connect {
            http: self.http.clone(),
            body: PhantomData,
        }
    }
}

impl<B: ReqBody> Service<Uri> for Connect<B> {
    type Response = Http1<B>;
    type Error = BoxError;
    type Future = BoxFuture<Http1<B>, BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Http1(send))
        })
    }
}

/// A pooled HTTP/1 connection as a service.
pub struct Http1<B>(SendRequest<B>);

impl<B: ReqBody> Service<Request<B>> for Http1<B> {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future = BoxFuture<Response<Incoming>, hyper::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

/// A `Service<http::Request<B>>` over the composable pool `C`; see the
/// [module docs](self).
#[derive(Clone)]
pub struct Composable<C> {
    cache: C,
}

impl<C, K, B> Service<Request<B>> for Composable<C>
where
    B: ReqBody,
    C: Service<Uri, Response = K, Error = BoxError> + Clone + Send + 'static,
    C::Future: Send,
    K: Service<Request<B>, Response = Response<Incoming>, Error = hyper::Error> + Send + 'static,
    K::Future: Send,
{
    type Response = Response<PooledBody<K>>;
    type Error = BoxError;
    type Future = BoxFuture<Response<PooledBody<K>>, BoxError>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut cache = self.cache.clone();
        Box::pin(async move {
            let target = req.uri().clone();
            // What the legacy client does: `Host` from the URI if missing,
            // then the origin-form request target.
            req.headers_mut().entry(HOST).or_insert_with(|| {
                let host = target.host().expect("absolute URI");
                match target.port() {
                    Some(port) if !default_port(&target, port.as_u16()) => {
                        HeaderValue::from_maybe_shared(Bytes::from(format!("{host}:{port}")))
                    }
                    _ => HeaderValue::from_str(host),
                }
                .expect("URI host is a valid header value")
            });
            *req.uri_mut() = origin_form(&target);
            let mut last = None;
            for _ in 0..CHECKOUTS {
                let mut conn = cache.ready().await?.call(target.clone()).await?;
                match conn.ready().await {
                    Ok(_) => {
                        let res = conn.call(req).await?;
                        return Ok(res.map(|inner| PooledBody {
                            inner,
                            conn: Some(conn),
                        }));
                    }
                    // Closed: nothing written; the pool discards it (its
                    // `poll_ready` failed), take another.
                    Err(e) => last = Some(e),
                }
            }
            Err(last.map_or_else(|| "no connection".into(), Into::into))
        })
    }
}

fn default_port(uri: &Uri, port: u16) -> bool {
    matches!(
        (uri.scheme_str(), port),
        (Some("http"), 80) | (Some("https"), 443)
    )
}

/// The legacy client's `origin_form`.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(path) if path.as_str() != "/" => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(path.clone());
            Uri::from_parts(parts).expect("path is a valid URI")
        }
        _ => Uri::default(),
    }
}

pin_project! {
    /// The response body, holding its connection until the body ends.
    pub struct PooledBody<K> {
        #[pin]
        inner: Incoming,
        conn: Option<K>,
    }
}

impl<K> Body for PooledBody<K> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let frame = ready!(inner.as_mut().poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) || inner.is_end_stream() {
            // Ended (or failed): the connection goes back to the pool (a
            // failed one is found closed at its next checkout).
            this.conn.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
