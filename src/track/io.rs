//! The tracking IO wrapper.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ConnectionState;

/// Where the connection is in its request/response cycle, as seen by the IO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    /// Nothing written since the last response started arriving.
    Idle,
    /// A request is being written.
    Writing,
    /// The response to the last request is arriving.
    Reading,
}

pin_project! {
    /// Tokio-side IO that records progress into a [`ConnectionState`].
    #[derive(Debug)]
    struct Counting<T> {
        #[pin]
        inner: T,
        turn: Turn,
        guard: CloseGuard,
    }
}

/// Marks the state closed and updates the layer's gauges when the IO drops.
#[derive(Debug)]
struct CloseGuard {
    state: ConnectionState,
    open: Arc<AtomicU64>,
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.state.on_close();
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T: AsyncRead> AsyncRead for Counting<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        match &res {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    let first = *this.turn == Turn::Writing;
                    if first {
                        *this.turn = Turn::Reading;
                    }
                    this.guard.state.on_read(n, first);
                } else if buf.remaining() > 0 {
                    // EOF: the peer closed its side.
                    this.guard.state.on_close();
                }
            }
            Poll::Ready(Err(_)) => this.guard.state.on_close(),
            Poll::Pending => {}
        }
        res
    }
}

impl<T: AsyncWrite> Counting<T> {
    fn wrote(turn: &mut Turn, state: &ConnectionState, res: &Poll<io::Result<usize>>) {
        match res {
            Poll::Ready(Ok(n)) if *n > 0 => {
                let new_exchange = *turn != Turn::Writing;
                *turn = Turn::Writing;
                state.on_write(*n, new_exchange);
            }
            Poll::Ready(Err(_)) => state.on_close(),
            _ => {}
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for Counting<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write(cx, buf);
        Self::wrote(this.turn, &this.guard.state, &res);
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write_vectored(cx, bufs);
        Self::wrote(this.turn, &this.guard.state, &res);
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let res = this.inner.poll_flush(cx);
        if let Poll::Ready(Ok(())) = res {
            this.guard.state.on_flush();
        }
        res
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for Counting<T> {
    fn connected(&self) -> Connected {
        self.inner.connected().extra(self.guard.state.clone())
    }
}

/// The IO returned by [`TrackConnections`](super::TrackConnections): the
/// connector's IO, unchanged on the wire, recording progress into its
/// [`ConnectionState`].
///
/// It implements hyper's `Read`/`Write` and hyper-util's `Connection` (adding
/// the [`ConnectionState`] as an extra), so hyper-util's client uses it like
/// the IO it wraps.
#[derive(Debug)]
pub struct TrackedIo<T> {
    io: TokioIo<Counting<TokioIo<T>>>,
}

impl<T> TrackedIo<T> {
    pub(crate) fn new(inner: T, state: ConnectionState, open: Arc<AtomicU64>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        TrackedIo {
            io: TokioIo::new(Counting {
                inner: TokioIo::new(inner),
                turn: Turn::Idle,
                guard: CloseGuard { state, open },
            }),
        }
    }

    /// The live state of this connection.
    pub fn state(&self) -> &ConnectionState {
        &self.io.inner().guard.state
    }

    /// The wrapped connector IO.
    pub fn get_ref(&self) -> &T {
        self.io.inner().inner.inner()
    }
}

impl<T> hyper::rt::Read for TrackedIo<T>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T> hyper::rt::Write for TrackedIo<T>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.io)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for TrackedIo<T> {
    fn connected(&self) -> Connected {
        self.io.inner().connected()
    }
}
