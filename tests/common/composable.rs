//! An HTTP/1 client built from hyper-util's composable pool
//! (`client::pool::cache`), hyper's `client::conn::http1` handshake, the
//! tracker and IdleExpiry's per-connection service. Shared by the tests
//! (`common::composable`) and `examples/composable_pool.rs` (through a
//! `#[path]` module).
#![allow(dead_code)] // each includer uses part of it

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::pool::cache;
use tower::{Service, ServiceExt};
use tower_conn_lifecycle::idle_expiry::{Http1Connection, IdleExpiryConnection, IdleExpiryLayer};
use tower_conn_lifecycle::track::{TrackConnections, TrackConnectionsLayer, TrackedBody};
use tower_conn_lifecycle::BoxError;

type Conn = IdleExpiryConnection<Http1Connection<Full<Bytes>>>;
type Response = http::Response<TrackedBody<hyper::body::Incoming>>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// How many pooled connections one request may find expired or closed
/// before it gives up (each costs nothing: no byte was written on them).
const CHECKOUTS: usize = 8;

/// [`client`] with `checkouts` attempts to find a usable pooled
/// connection; with 1, an expired connection's refusal is the request's
/// error (for a retry layer above to handle).
pub fn client_with_checkouts(
    layer: IdleExpiryLayer,
    track: TrackConnectionsLayer,
    checkouts: usize,
) -> impl Service<
    http::Request<Full<Bytes>>,
    Response = Response,
    Error = BoxError,
    Future = BoxFuture<Response>,
> + Clone
       + Send
       + 'static {
    PoolClient {
        cache: cache::builder()
            .executor(hyper_util::rt::TokioExecutor::new())
            .build(Connect {
                tcp: track.layer(HttpConnector::new()),
                layer,
            }),
        checkouts,
    }
}

/// A POST on a pooled connection whose expiry is 50 ms, 150 ms of idleness,
/// and a second POST through `RetryOnStaleConnection` on a pool allowed one
/// checkout per attempt: the expired connection's refusal reaches Retry,
/// which sends the request again. Returns the second response (body unread).
pub async fn post_again_after_expiry(
    url: &str,
) -> http::Response<TrackedBody<TrackedBody<hyper::body::Incoming>>> {
    use http_body_util::BodyExt;
    let layer = IdleExpiryLayer::new(std::time::Duration::from_millis(50)).learn(false);
    let pool = client_with_checkouts(layer, TrackConnectionsLayer::new(), 1);
    // The retry layer hands its inner service a `RequestBody`; this pool
    // sends `Full<Bytes>`.
    let pool = tower::service_fn(
        move |req: http::Request<tower_conn_lifecycle::RequestBody>| {
            let pool = pool.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = Full::new(body.collect().await?.to_bytes());
                pool.oneshot(http::Request::from_parts(parts, body)).await
            }
        },
    );
    let client = tower::ServiceBuilder::new()
        .layer(tower_conn_lifecycle::retry::RetryOnStaleConnectionLayer::new())
        .service(pool);
    let post = || {
        http::Request::post(url)
            .body(Full::new(Bytes::from_static(b"once")))
            .unwrap()
    };
    let res = client.clone().oneshot(post()).await.unwrap();
    res.into_body().collect().await.unwrap();
    // The pooled connection sits idle past its expiry, but stays in the
    // pool (claimed by nothing): its checkout is refused before any byte.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    client.clone().oneshot(post()).await.unwrap()
}

/// Makes one tracked HTTP/1 connection and wraps it with IdleExpiry.
#[derive(Clone)]
pub struct Connect {
    tcp: TrackConnections<HttpConnector>,
    layer: IdleExpiryLayer,
}

impl Service<http::Uri> for Connect {
    type Response = Conn;
    type Error = BoxError;
    type Future = BoxFuture<Conn>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.tcp.call(uri.clone());
        let layer = self.layer.clone();
        Box::pin(async move {
            let io = connecting.await?;
            let state = io.state().clone();
            let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(layer.connection(Http1Connection::new(send), state, &uri))
        })
    }
}

/// A `Service<http::Request<Full<Bytes>>>` over a composable pool: checks a
/// connection out of the cache, and if it turns out expired (or closed) in
/// `poll_ready` — before any byte is written — drops it and takes another.
pub fn client(
    layer: IdleExpiryLayer,
    track: TrackConnectionsLayer,
) -> impl Service<
    http::Request<Full<Bytes>>,
    Response = Response,
    Error = BoxError,
    Future = BoxFuture<Response>,
> + Clone
       + Send
       + 'static {
    client_with_checkouts(layer, track, CHECKOUTS)
}

/// See [`client`].
#[derive(Clone)]
pub struct PoolClient<C> {
    cache: C,
    checkouts: usize,
}

impl<C, S> Service<http::Request<Full<Bytes>>> for PoolClient<C>
where
    C: Service<http::Uri, Response = S, Error = BoxError> + Clone + Send + 'static,
    C::Future: Send,
    S: Service<http::Request<Full<Bytes>>, Response = Response, Error = BoxError> + Send,
    S::Future: Send,
{
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Full<Bytes>>) -> Self::Future {
        let mut cache = self.cache.clone();
        let checkouts = self.checkouts.max(1);
        Box::pin(async move {
            let target = req.uri().clone();
            let mut last = None;
            for _ in 0..checkouts {
                let mut conn = cache.ready().await?.call(target.clone()).await?;
                match conn.ready().await {
                    Ok(_) => return conn.call(req).await,
                    // Expired or closed: nothing was written; the pool
                    // discards it (its `poll_ready` failed), take another.
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| "no connection".into()))
        })
    }
}

use tower::Layer;
