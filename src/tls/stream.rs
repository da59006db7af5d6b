//! The connector's IO: plain or TLS over the inner connector's IO.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::ClientConnection;
use tokio_rustls::client::TlsStream;

/// The IO returned by [`SharedTlsConnector`](super::SharedTlsConnector):
/// the inner connector's IO as is for `http://`, or a TLS stream over it for
/// `https://`.
///
/// It implements hyper's [`Read`] and [`Write`] by delegation and
/// hyper-util's [`Connection`]: the inner IO's [`Connected`], marked
/// [`negotiated_h2`](Connected::negotiated_h2) when ALPN selected `h2`, so
/// hyper-util's client speaks HTTP/2 on it. Extras the inner IO publishes
/// (`Connected::extra`) are kept.
pub enum MaybeHttpsStream<T> {
    /// A plain connection (`http://`), untouched.
    Http(T),
    /// A TLS connection (`https://`) over the inner IO (boxed: the rustls
    /// state is about a kilobyte, and one allocation per connection keeps the
    /// plain variant small).
    Https(Box<TokioIo<TlsStream<TokioIo<T>>>>),
}

impl<T> MaybeHttpsStream<T> {
    /// Whether this is a TLS connection.
    pub fn is_https(&self) -> bool {
        matches!(self, Self::Https(_))
    }

    /// The inner connector's IO (under TLS, for `https://`).
    pub fn get_ref(&self) -> &T {
        match self {
            Self::Http(io) => io,
            Self::Https(tls) => tls.inner().get_ref().0.inner(),
        }
    }

    /// The rustls connection state of a TLS connection (negotiated protocol
    /// version, cipher suite, ALPN protocol, peer certificates, ...).
    pub fn tls_connection(&self) -> Option<&ClientConnection> {
        match self {
            Self::Http(_) => None,
            Self::Https(tls) => Some(tls.inner().get_ref().1),
        }
    }

    /// The ALPN protocol the server selected, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.tls_connection()?.alpn_protocol()
    }
}

impl<T> From<T> for MaybeHttpsStream<T> {
    fn from(io: T) -> Self {
        Self::Http(io)
    }
}

impl<T> fmt::Debug for MaybeHttpsStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http(_) => f.debug_tuple("Http").finish_non_exhaustive(),
            Self::Https(tls) => {
                let conn = tls.inner().get_ref().1;
                f.debug_struct("Https")
                    .field("protocol_version", &conn.protocol_version())
                    .field(
                        "alpn_protocol",
                        &conn.alpn_protocol().map(String::from_utf8_lossy),
                    )
                    .finish_non_exhaustive()
            }
        }
    }
}

impl<T> Connection for MaybeHttpsStream<T>
where
    T: Connection,
{
    fn connected(&self) -> Connected {
        match self {
            Self::Http(io) => io.connected(),
            Self::Https(tls) => {
                let (io, conn) = tls.inner().get_ref();
                let connected = io.inner().connected();
                if conn.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl<T> Read for MaybeHttpsStream<T>
where
    T: Read + Write + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Http(io) => Pin::new(io).poll_read(cx, buf),
            Self::Https(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl<T> Write for MaybeHttpsStream<T>
where
    T: Read + Write + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Http(io) => Pin::new(io).poll_write(cx, buf),
            Self::Https(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Http(io) => Pin::new(io).poll_flush(cx),
            Self::Https(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Http(io) => Pin::new(io).poll_shutdown(cx),
            Self::Https(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Http(io) => io.is_write_vectored(),
            Self::Https(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Http(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Self::Https(tls) => Pin::new(&mut **tls).poll_write_vectored(cx, bufs),
        }
    }
}
