//! The tracking IO wrapper.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::service::Counters;
use super::ConnectionExpired;
use super::{ConnectionState, ExchangeOutcome};
use std::any::TypeId;

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
        // The waker last handed to the state, to skip re-registering the
        // same task (hyper's connection task) on every pending read.
        registered: Option<Waker>,
        // Bytes were written since the last successful flush: only such a
        // flush is stamped (hyper flushes several times per request).
        unflushed: bool,
        // The last read found nothing: bytes the next one returns arrived
        // while the connection waited for them (see `ConnectionState::idle_since`).
        read_pending: bool,
        // A failed write of the inner IO wrote nothing of that call (a
        // plain TCP socket: one `send` that either reports bytes or fails).
        // Any other IO (TLS) may fail after part of the call went out.
        atomic_writes: bool,
        guard: CloseGuard,
    }
}

/// Marks the state closed and updates the layer's gauges when the IO drops.
#[derive(Debug)]
struct CloseGuard {
    state: ConnectionState,
    counters: Arc<Counters>,
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.state.on_close();
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long after its idle deadline a request may still be written on a
/// connection. hyper checks an idle connection (reads it, where an expired
/// one reads EOF and the request is retried by hyper-util) just before it
/// writes; a request that passed that check a moment before the deadline is
/// written a moment after it, which the margin below the server's idle
/// timeout covers. Refusing it would fail a request hyper-util does not
/// retry. Only a connection left unpolled well past its deadline is refused.
pub(super) const WRITE_GRACE: std::time::Duration = std::time::Duration::from_millis(25);

/// The error a write refused on an expired connection fails with (nothing
/// of it was written), told to the observer.
fn refuse(state: &ConnectionState, refused: ConnectionExpired) -> io::Error {
    state.on_refused();
    io::Error::new(io::ErrorKind::ConnectionAborted, refused)
}

/// The error a poisoned connection's IO fails with.
fn poisoned() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, Poisoned)
}

/// The tracker closed the connection because an exchange on it was
/// abandoned (found inside the `io::Error` hyper reports, if any).
#[derive(Debug)]
pub(crate) struct Poisoned;

impl std::fmt::Display for Poisoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed: an exchange on it was abandoned")
    }
}

impl std::error::Error for Poisoned {}

impl<T: AsyncRead> AsyncRead for Counting<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let state = &this.guard.state;
        if state.is_poisoned() {
            return Poll::Ready(Err(poisoned()));
        }
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
                    state.on_read(n, first, std::mem::take(this.read_pending));
                } else if buf.remaining() > 0 {
                    // EOF: the peer closed its side.
                    state.on_peer_close();
                }
            }
            Poll::Ready(Err(_)) => state.on_peer_close(),
            Poll::Pending => {
                *this.read_pending = true;
                if !this
                    .registered
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.register(cx.waker());
                    *this.registered = Some(cx.waker().clone());
                }
                // Checked after registering, so a poison or an end of
                // exchange that raced with this poll still wakes the task.
                if state.is_poisoned() {
                    return Poll::Ready(Err(poisoned()));
                }
                if state.idle_expired() {
                    // EOF on an idle connection: hyper closes it and its pool
                    // drops it without an error; a request about to use it is
                    // retried by hyper-util on a new connection.
                    state.on_expired();
                    return Poll::Ready(Ok(()));
                }
            }
        }
        res
    }
}

impl<T: AsyncWrite> Counting<T> {
    /// Opens an exchange at a request's first write attempt; refuses to write
    /// at all on a poisoned connection.
    fn before_write(
        turn: &mut Turn,
        state: &ConnectionState,
        buf: &[u8],
    ) -> io::Result<Option<u64>> {
        if state.is_poisoned() {
            return Err(poisoned());
        }
        if state.is_upgraded() {
            // The caller's tunnel: nothing to count as exchanges.
            return Ok(None);
        }
        // If the request hyper is about to write announced itself on this
        // task, this is its head's first write (asked at every write: the
        // head may follow the connection's own writes, a TLS handshake's
        // when the tracker sits inside TLS): its attempt opens here.
        let paired = super::capture::pair_announcement(state);
        if *turn != Turn::Writing || paired.is_some() {
            if state.is_request_defined() {
                return Self::before_announced_write(turn, state).map(|opened| opened.or(paired));
            }
            let now = state.stamp(Instant::now());
            // The last resort of idle expiry: a request about to be written
            // on an expired connection is refused before its first byte.
            if let Some((idle, limit)) = state.overdue(now, WRITE_GRACE) {
                return Err(refuse(state, ConnectionExpired::from_nanos(idle, limit)));
            }
            if state.requests() == 0 && buf.starts_with(b"PRI * HTTP/2.0") {
                state.set_http2();
            }
            *turn = Turn::Writing;
            // A read→write turn while the previous exchange is still open
            // (no request-side end seen) may be the same request going on
            // (after a 1xx or an early response): the new record cannot
            // prove what this request wrote.
            let inexact = state.requests() > 0 && state.outcome() == ExchangeOutcome::InFlight;
            state.open_exchange(now, inexact);
            return Ok(Some(now));
        }
        Ok(None)
    }

    /// The first write of a turn on a connection whose requests announce
    /// themselves: the attempt is already open (a read→write turn inside it
    /// is the same request going on, after a 1xx or an early response).
    /// Refuses the write if the attempt began on an expired connection.
    fn before_announced_write(turn: &mut Turn, state: &ConnectionState) -> io::Result<Option<u64>> {
        if let Some(refused) = state.take_refusal() {
            return Err(refuse(state, refused));
        }
        *turn = Turn::Writing;
        if state.outcome() == ExchangeOutcome::InFlight {
            return Ok(None);
        }
        // A request that did not announce itself (its body has no hook)
        // after a completed exchange: it opens its own.
        let now = state.stamp(Instant::now());
        state.open_exchange(now, false);
        Ok(Some(now))
    }

    fn wrote(
        state: &ConnectionState,
        res: &Poll<io::Result<usize>>,
        opened: Option<u64>,
        unflushed: &mut bool,
        atomic: bool,
    ) {
        match res {
            Poll::Ready(Ok(n)) if *n > 0 => {
                let now = opened.unwrap_or_else(|| state.stamp(Instant::now()));
                state.on_write(*n, now);
                *unflushed = true;
            }
            Poll::Ready(Err(_)) => state.on_write_error(!atomic),
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
        let state = &this.guard.state;
        let opened = Self::before_write(this.turn, state, buf)?;
        let res = this.inner.poll_write(cx, buf);
        Self::wrote(state, &res, opened, this.unflushed, *this.atomic_writes);
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let state = &this.guard.state;
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        let opened = Self::before_write(this.turn, state, first)?;
        let res = this.inner.poll_write_vectored(cx, bufs);
        Self::wrote(state, &res, opened, this.unflushed, *this.atomic_writes);
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.guard.state.is_poisoned() {
            return Poll::Ready(Err(poisoned()));
        }
        let res = this.inner.poll_flush(cx);
        if let Poll::Ready(Ok(())) = res {
            if std::mem::take(this.unflushed) {
                this.guard.state.on_flush(*this.atomic_writes);
            }
        }
        res
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for Counting<T> {
    fn connected(&self) -> Connected {
        let connected = self.inner.connected();
        if connected.is_negotiated_h2() {
            self.guard.state.set_http2();
        }
        connected.extra(self.guard.state.clone())
    }
}

/// The IO returned by [`TrackConnections`](super::TrackConnections): the
/// connector's IO, unchanged on the wire, recording progress into its
/// [`ConnectionState`].
///
/// It implements hyper's `Read`/`Write` and hyper-util's `Connection` (adding
/// the [`ConnectionState`] as an extra), so hyper-util's client uses it like
/// the IO it wraps.
pub struct TrackedIo<T> {
    io: TokioIo<Counting<TokioIo<T>>>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for TrackedIo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counting = self.io.inner();
        f.debug_struct("TrackedIo")
            .field("inner", counting.inner.inner())
            .field("state", &counting.guard.state)
            .finish()
    }
}

/// Whether `io` is a plain TCP socket (hyper-util's `TokioIo` around
/// tokio's, bare or as the `http://` side of the TLS connector's stream),
/// whose writes put bytes on the wire themselves and whose flush does
/// nothing: its flushes are stamped with the last write's stamp instead of
/// a clock read (one clock read less per request).
fn writes_are_atomic<T: 'static>(io: &T) -> bool {
    type Tcp = TokioIo<tokio::net::TcpStream>;
    if TypeId::of::<T>() == TypeId::of::<Tcp>()
        || TypeId::of::<T>() == TypeId::of::<tokio::net::TcpStream>()
    {
        return true;
    }
    #[cfg(feature = "tls")]
    if let Some(stream) =
        (io as &dyn std::any::Any).downcast_ref::<crate::tls::MaybeHttpsStream<Tcp>>()
    {
        return matches!(stream, crate::tls::MaybeHttpsStream::Http(_));
    }
    let _ = io;
    false
}

impl<T: 'static> TrackedIo<T> {
    pub(crate) fn new(inner: T, state: ConnectionState, counters: Arc<Counters>) -> Self {
        let atomic_writes = writes_are_atomic(&inner);
        counters.open.fetch_add(1, Ordering::Relaxed);
        counters.register(&state);
        TrackedIo {
            io: TokioIo::new(Counting {
                inner: TokioIo::new(inner),
                turn: Turn::Idle,
                registered: None,
                unflushed: false,
                read_pending: false,
                atomic_writes,
                guard: CloseGuard { state, counters },
            }),
        }
    }
}

impl<T> TrackedIo<T> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain TCP socket is recognised bare, in hyper-util's `TokioIo`,
    /// and as the `http://` side of the TLS connector's stream (its flushes
    /// are then stamped without a clock read); an in-memory stream is not.
    #[tokio::test]
    async fn plain_tcp_writes_are_atomic_through_the_tls_connectors_stream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tcp, _accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let tcp = TokioIo::new(tcp.unwrap());
        assert!(writes_are_atomic(&tcp));
        #[cfg(feature = "tls")]
        assert!(writes_are_atomic(&crate::tls::MaybeHttpsStream::Http(tcp)));
        let (duplex, _other) = tokio::io::duplex(64);
        assert!(!writes_are_atomic(&TokioIo::new(duplex)));
    }
}
