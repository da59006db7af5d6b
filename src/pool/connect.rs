//! The connect service: a tracked connection, hyper's HTTP/1 handshake, and
//! the connection's IdleExpiry service.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use http_body::Body;
use hyper::client::conn::http1;
use tower::ServiceExt;
use tower_service::Service;

use super::Http1Connection;
use crate::idle_expiry::{IdleExpiryConnection, IdleExpiryLayer};
use crate::track::TrackedIo;
use crate::BoxError;

/// The connection [`connect`](super::connect) makes.
type Conn<B> = IdleExpiryConnection<Http1Connection<B>>;

/// See [`connect`](super::connect).
pub(super) struct Connect<C, B> {
    /// The connector is cloned only to connect (a pool clones its connect
    /// service with every clone of itself).
    parts: Arc<(C, http1::Builder, IdleExpiryLayer)>,
    _body: PhantomData<fn(B)>,
}

impl<C, B> Connect<C, B> {
    pub(super) fn new(connector: C, http1: http1::Builder, idle_expiry: IdleExpiryLayer) -> Self {
        Connect {
            parts: Arc::new((connector, http1, idle_expiry)),
            _body: PhantomData,
        }
    }
}

impl<C, B> Clone for Connect<C, B> {
    fn clone(&self) -> Self {
        Connect {
            parts: self.parts.clone(),
            _body: PhantomData,
        }
    }
}

impl<C, T, B> Service<Uri> for Connect<C, B>
where
    C: Service<Uri, Response = TrackedIo<T>> + Clone + Send + Sync + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Conn<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn<B>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The connector is made ready in the connect itself (a clone of it).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: Uri) -> Self::Future {
        let parts = self.parts.clone();
        Box::pin(async move {
            let (connector, http1, idle_expiry) = &*parts;
            let io = connector
                .clone()
                .oneshot(target.clone())
                .await
                .map_err(Into::into)?;
            let state = io.state().clone();
            let (send, conn) = http1.handshake(io).await?;
            // Upgrades (101, CONNECT) hand the IO to the caller.
            let send = Http1Connection::spawn(send, conn.with_upgrades(), &target);
            Ok(idle_expiry.connection(send, state, &target))
        })
    }
}

impl<C, B> std::fmt::Debug for Connect<C, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect").finish_non_exhaustive()
    }
}
