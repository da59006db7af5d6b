//! The HTTP/1.1 request reader shared by every raw-socket test server.
//!
//! Request heads and chunk-size lines are parsed by httparse (hyper's own
//! parser), so the kit accepts what hyper's server accepts (bare `LF` line
//! ends included); a head is at most [`MAX_HEAD`] bytes. The body reader is
//! this crate's own, for a measured need: the fault servers decide exactly
//! how many body bytes they take off the socket (a stalled reader must stop
//! at a byte count, not a buffer size), which no body decoder that owns its
//! read buffer offers. It reads the body, framed by `Content-Length` or
//! `Transfer-Encoding: chunked`, in pieces whose size the caller chooses.
//! Bytes that arrive after the end of a request stay buffered for the next
//! one (pipelining). Malformed input is an [`io::ErrorKind::InvalidData`]
//! error, never a panic.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest request head accepted, `\r\n\r\n` included.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// The most header fields accepted in a request head.
const MAX_HEADERS: usize = 128;

/// The largest chunk-size line (with extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// How much is read from the socket at once while looking for framing.
const READ_SIZE: usize = 8 * 1024;

/// The parts of a request head the servers act on.
#[derive(Debug, Clone)]
pub(crate) struct RequestHead {
    pub(crate) method: Method,
    /// Whether the connection may serve another request after this one.
    pub(crate) keep_alive: bool,
    /// The client sent `Expect: 100-continue` and waits for a `100 Continue`.
    pub(crate) expect_continue: bool,
    pub(crate) framing: Framing,
    /// The `Idempotency-Key` header, if the request carried one.
    pub(crate) idempotency_key: Option<HeaderValue>,
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
}

impl RequestHead {
    /// A fresh body reader for this request.
    pub(crate) fn body(&self) -> Body {
        Body {
            state: match self.framing {
                Framing::Length(n) => State::Length(n),
                Framing::Chunked => State::ChunkSize,
            },
        }
    }
}

/// Where a body reader stands; advanced by [`Conn::body_chunk`].
#[derive(Debug)]
pub(crate) struct Body {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers(usize),
    Done,
}

/// A connection: the IO plus the bytes read from it but not yet consumed.
#[derive(Debug)]
pub(crate) struct Conn<S> {
    io: S,
    buf: BytesMut,
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl<S: AsyncRead + Unpin> Conn<S> {
    pub(crate) fn new(io: S) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_SIZE),
        }
    }

    /// The IO, for socket options.
    pub(crate) fn get_ref(&self) -> &S {
        &self.io
    }

    /// The IO of a connection nothing has been read from yet, for servers
    /// that speak HTTP with hyper instead of this reader.
    pub(crate) fn into_fresh_io(self) -> S {
        debug_assert!(self.buf.is_empty(), "bytes were already read");
        self.io
    }

    /// Reads at most `limit` more bytes into the buffer; `Ok(0)` is EOF.
    async fn read_more(&mut self, limit: usize) -> io::Result<usize> {
        let limit = limit.max(1);
        self.buf.reserve(limit);
        (&mut self.io)
            .take(limit as u64)
            .read_buf(&mut self.buf)
            .await
    }

    /// Waits until at least one byte of a next request is available.
    /// Returns `false` on EOF.
    pub(crate) async fn wait_for_byte(&mut self) -> io::Result<bool> {
        if !self.buf.is_empty() {
            return Ok(true);
        }
        Ok(self.read_more(READ_SIZE).await? > 0)
    }

    /// Reads until at least `n` bytes (of the next request) are buffered, or
    /// EOF. Returns how many are buffered.
    pub(crate) async fn fill(&mut self, n: usize) -> io::Result<usize> {
        while self.buf.len() < n {
            if self.read_more(READ_SIZE).await? == 0 {
                break;
            }
        }
        Ok(self.buf.len())
    }

    /// Reads and discards everything until EOF or an error.
    pub(crate) async fn drain_to_eof(&mut self) {
        self.buf.clear();
        while let Ok(n) = self.read_more(READ_SIZE).await {
            if n == 0 {
                return;
            }
            self.buf.clear();
        }
    }

    /// Reads the next request head. `Ok(None)` means the peer closed the
    /// connection cleanly between requests.
    pub(crate) async fn read_head(&mut self) -> io::Result<Option<RequestHead>> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            // httparse skips the empty lines allowed before a request line
            // (RFC 9112 §2.2) and counts them in the head's length.
            if let httparse::Status::Complete(len) = req.parse(&self.buf).map_err(malformed)? {
                let head = RequestHead::parse(&req)?;
                self.buf.advance(len);
                return Ok(Some(head));
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(invalid("request head too large"));
            }
            if self.read_more(READ_SIZE).await? == 0 {
                return if self.buf.iter().all(|b| matches!(b, b'\r' | b'\n')) {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Reads a chunk-size line (with any extensions) and returns the size.
    async fn chunk_size(&mut self) -> io::Result<u64> {
        loop {
            match httparse::parse_chunk_size(&self.buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    self.buf.advance(used);
                    return Ok(size);
                }
                Ok(httparse::Status::Partial) => {}
                Err(httparse::InvalidChunkSize) => return Err(invalid("bad chunk size")),
            }
            if self.buf.len() > MAX_CHUNK_LINE {
                return Err(invalid("chunk-size line too long"));
            }
            if self.read_more(READ_SIZE).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads one line ending in `\r\n` (returned without it) whose content
    /// is at most `max` bytes.
    async fn read_line(&mut self, max: usize) -> io::Result<Bytes> {
        let mut searched = 0;
        loop {
            let from = searched.min(self.buf.len()).saturating_sub(1);
            if let Some(end) = find(&self.buf[from..], b"\r\n") {
                let line = self.buf.split_to(from + end).freeze();
                self.buf.advance(2);
                return Ok(line);
            }
            if self.buf.len() > max + 2 {
                return Err(invalid("line too long in chunked body"));
            }
            searched = self.buf.len();
            if self.read_more(READ_SIZE).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Up to `want` data bytes of a body part with `remaining` bytes left,
    /// reading at most that many from the socket if nothing is buffered.
    async fn data(&mut self, remaining: u64, want: usize) -> io::Result<Bytes> {
        let want = usize::try_from(remaining).unwrap_or(usize::MAX).min(want);
        if self.buf.is_empty() && self.read_more(want).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = self.buf.len().min(want);
        Ok(self.buf.split_to(n).freeze())
    }

    /// Returns the next 1..=`max` decoded body bytes, or `None` once the body
    /// has ended. When nothing is buffered it reads at most `max` data bytes
    /// from the socket, so the caller controls the pace.
    pub(crate) async fn body_chunk(
        &mut self,
        body: &mut Body,
        max: usize,
    ) -> io::Result<Option<Bytes>> {
        let max = max.max(1);
        loop {
            match body.state {
                State::Done | State::Length(0) => {
                    body.state = State::Done;
                    return Ok(None);
                }
                State::Length(rem) => {
                    let data = self.data(rem, max).await?;
                    body.state = State::Length(rem - data.len() as u64);
                    return Ok(Some(data));
                }
                State::ChunkSize => {
                    let size = self.chunk_size().await?;
                    body.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkData(rem) => {
                    let data = self.data(rem, max).await?;
                    let rem = rem - data.len() as u64;
                    body.state = if rem == 0 {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(rem)
                    };
                    return Ok(Some(data));
                }
                State::ChunkDataEnd => {
                    if !self.read_line(0).await?.is_empty() {
                        return Err(invalid("chunk data longer than its size"));
                    }
                    body.state = State::ChunkSize;
                }
                State::Trailers(seen) => {
                    let line = self.read_line(MAX_HEAD - seen).await?;
                    body.state = if line.is_empty() {
                        State::Done
                    } else if seen + line.len() + 2 > MAX_HEAD {
                        return Err(invalid("trailers too large"));
                    } else {
                        State::Trailers(seen + line.len() + 2)
                    };
                }
            }
        }
    }

    /// Reads the whole body, calling `on_data` with the size of each piece as
    /// it arrives. Returns the body's length.
    pub(crate) async fn read_body(
        &mut self,
        body: &mut Body,
        mut on_data: impl FnMut(usize),
    ) -> io::Result<u64> {
        let mut total = 0;
        while let Some(data) = self.body_chunk(body, 64 * 1024).await? {
            on_data(data.len());
            total += data.len() as u64;
        }
        Ok(total)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Reads the next request head like [`Conn::read_head`] and, when the
    /// client expects it, answers `100 Continue` so that it sends the body.
    pub(crate) async fn next_request(&mut self) -> io::Result<Option<RequestHead>> {
        let head = self.read_head().await?;
        if let Some(head) = &head {
            if head.expect_continue && head.framing != Framing::Length(0) {
                self.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
        }
        Ok(head)
    }
}

impl<S: AsyncWrite + Unpin> Conn<S> {
    /// Writes all of `bytes` and flushes.
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Shuts down the write side (sends FIN).
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        self.io.shutdown().await
    }
}

impl RequestHead {
    /// The parts the servers act on, from a complete head parsed by httparse.
    fn parse(req: &httparse::Request<'_, '_>) -> io::Result<RequestHead> {
        let method = req.method.ok_or_else(|| invalid("no method"))?;
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| invalid("bad method"))?;
        let version = match req.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        let mut headers = HeaderMap::new();
        for header in req.headers.iter() {
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|_| invalid("bad header name"))?;
            let value = HeaderValue::from_bytes(header.value.trim_ascii())
                .map_err(|_| invalid("bad header value"))?;
            headers.append(name, value);
        }
        head_from(method, version, &headers)
    }
}

fn malformed(e: httparse::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// What the servers act on, from a request's method, version and headers.
fn head_from(method: Method, version: Version, headers: &HeaderMap) -> io::Result<RequestHead> {
    let has_token = |name: &HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let keep_alive = if has_token(&CONNECTION, "close") {
        false
    } else {
        version == Version::HTTP_11 || has_token(&CONNECTION, "keep-alive")
    };

    let expect_continue = version == Version::HTTP_11 && has_token(&EXPECT, "100-continue");

    let framing = if headers.contains_key(TRANSFER_ENCODING) {
        // RFC 9112 §6.3: chunked must be the final coding of a request.
        let mut last = None;
        for value in headers.get_all(TRANSFER_ENCODING) {
            let value = value
                .to_str()
                .map_err(|_| invalid("bad transfer-encoding"))?;
            last = value
                .split(',')
                .map(str::trim)
                .rfind(|t| !t.is_empty())
                .or(last);
        }
        match last {
            Some(t) if t.eq_ignore_ascii_case("chunked") => Framing::Chunked,
            _ => return Err(invalid("request transfer-encoding is not chunked")),
        }
    } else {
        let mut length = None;
        for value in headers.get_all(CONTENT_LENGTH) {
            for part in value
                .to_str()
                .map_err(|_| invalid("bad content-length"))?
                .split(',')
            {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid("bad content-length"));
                }
                let n: u64 = part.parse().map_err(|_| invalid("bad content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(invalid("conflicting content-length"));
                }
                length = Some(n);
            }
        }
        Framing::Length(length.unwrap_or(0))
    };

    let idempotency_key = headers.get("idempotency-key").cloned();
    Ok(RequestHead {
        method,
        keep_alive,
        expect_continue,
        framing,
        idempotency_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(conn: &mut Conn<impl AsyncRead + Unpin>, head: &RequestHead) -> Vec<u8> {
        let mut body = head.body();
        let mut out = Vec::new();
        while let Some(data) = conn.body_chunk(&mut body, 7).await.unwrap() {
            assert!(!data.is_empty() && data.len() <= 7);
            out.extend_from_slice(&data);
        }
        out
    }

    #[tokio::test]
    async fn content_length_and_pipelining() {
        let input: &[u8] =
            b"\r\nPOST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello worldGET /b HTTP/1.1\r\n\r\n";
        let mut conn = Conn::new(input);
        let head = conn.read_head().await.unwrap().unwrap();
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.framing, Framing::Length(11));
        assert_eq!(head.idempotency_key, None);
        assert!(head.keep_alive);
        assert_eq!(read_all(&mut conn, &head).await, b"hello world");

        let head = conn.read_head().await.unwrap().unwrap();
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.framing, Framing::Length(0));
        assert!(read_all(&mut conn, &head).await.is_empty());
        assert!(conn.read_head().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn chunked_with_extensions_and_trailers() {
        let input: &[u8] = b"PUT / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n0B\r\n worldwide!\r\n0\r\nX-Trailer: y\r\n\r\n";
        let mut conn = Conn::new(input);
        let head = conn.read_head().await.unwrap().unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        assert_eq!(read_all(&mut conn, &head).await, b"hello worldwide!");
        assert!(conn.read_head().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn blank_lines_then_eof_is_a_clean_close() {
        assert!(Conn::new(&b"\r\n\r\n"[..])
            .read_head()
            .await
            .unwrap()
            .is_none());
        let err = Conn::new(&b"\r\nGET / HT"[..])
            .read_head()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn one_byte_at_a_time() {
        let (mut client, server) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            client
                .write_all(
                    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                )
                .await
                .unwrap();
            client
        });
        let mut conn = Conn::new(server);
        let head = conn.read_head().await.unwrap().unwrap();
        assert_eq!(read_all(&mut conn, &head).await, b"abc");
        drop(writer.await.unwrap());
        assert!(conn.read_head().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn body_reads_take_only_what_is_asked() {
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
            .await
            .unwrap();
        let mut conn = Conn::new(server);
        let head = conn.read_head().await.unwrap().unwrap();
        client.write_all(&[b'x'; 100]).await.unwrap();
        let mut body = head.body();
        assert_eq!(
            conn.body_chunk(&mut body, 10).await.unwrap().unwrap().len(),
            10
        );
        assert_eq!(conn.buf.len(), 0, "read more than asked from the socket");
    }

    #[tokio::test]
    async fn expect_continue_is_answered() {
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            .await
            .unwrap();
        let mut conn = Conn::new(server);
        let head = conn.next_request().await.unwrap().unwrap();
        assert!(head.expect_continue);
        assert_eq!(head.idempotency_key, None);
        let mut interim = [0; 25];
        client.read_exact(&mut interim).await.unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[tokio::test]
    async fn idempotency_key_and_fill() {
        let input: &[u8] = b"POST / HTTP/1.1\r\nIdempotency-Key: k-1\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let mut conn = Conn::new(input);
        assert_eq!(conn.fill(10).await.unwrap(), input.len());
        let head = conn.read_head().await.unwrap().unwrap();
        assert_eq!(head.idempotency_key.unwrap(), "k-1");
        // Asking for more than there is stops at EOF.
        assert_eq!(conn.fill(1000).await.unwrap(), 18);
    }

    #[tokio::test]
    async fn connection_tokens() {
        for (input, keep_alive) in [
            (&b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"[..], false),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
            (
                b"GET / HTTP/1.1\r\nConnection: upgrade, keep-alive\r\n\r\n",
                true,
            ),
        ] {
            let head = Conn::new(input).read_head().await.unwrap().unwrap();
            assert_eq!(
                head.keep_alive,
                keep_alive,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[tokio::test]
    async fn rejects_bad_input_without_panicking() {
        let too_long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let cases: Vec<&[u8]> = vec![
            b"GET /\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x",
            too_long.as_bytes(),
        ];
        for input in cases {
            let result = Conn::new(input).read_head().await;
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(input));
        }

        for body in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"3\r\nabcdef\r\n0\r\n\r\n",
            b"ffffffffffffffffffff\r\n",
            b"5\r\nhel",
        ] {
            let mut input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            input.extend_from_slice(body);
            let mut conn = Conn::new(&input[..]);
            let head = conn.read_head().await.unwrap().unwrap();
            let mut state = head.body();
            let result = async {
                while conn.body_chunk(&mut state, 64).await?.is_some() {}
                io::Result::Ok(())
            }
            .await;
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(body));
        }

        let mut conn = Conn::new(&b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort"[..]);
        let head = conn.read_head().await.unwrap().unwrap();
        let err = conn.read_body(&mut head.body(), |_| {}).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
