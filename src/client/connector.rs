//! A connector of the user's, erased: the one-call client keeps its type
//! whatever connector it was built with.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
use tower_service::Service;

use crate::BoxError;

/// A connector given to [`Builder::connector`](super::Builder::connector):
/// its future and its IO boxed (connecting is cold; the IO costs one
/// indirect call per read or write).
pub(crate) type BoxConnector = BoxCloneSyncService<Uri, BoxIo, BoxError>;

/// Erases `connector`.
pub(crate) fn boxed<C>(connector: C) -> BoxConnector
where
    C: Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: Read + Write + Connection + Unpin + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(
        connector
            .map_response(|io| BoxIo(Box::new(io)))
            .map_err(Into::into),
    )
}

/// What the client needs of a connection's IO.
trait Io: Read + Write + Connection + Unpin + Send + 'static {}

impl<T: Read + Write + Connection + Unpin + Send + 'static> Io for T {}

/// A connection of a [`BoxConnector`].
pub(crate) struct BoxIo(Box<dyn Io>);

impl std::fmt::Debug for BoxIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxIo")
    }
}

impl Connection for BoxIo {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}

impl Read for BoxIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl Write for BoxIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}
