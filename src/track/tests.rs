//! Paused-time unit tests of the tracker's state machine, with hyper's HTTP/1
//! client connection driving a [`TrackedIo`] over `tokio::io::duplex` and a
//! scripted server on the other end.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::{advance, Instant};

use super::exchange::ExchangeEnd;
use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

type Io = TrackedIo<TokioIo<DuplexStream>>;

/// A tracked client IO and the server's end of the pipe.
fn pipe(capacity: usize) -> (Io, ConnectionState, DuplexStream) {
    let (client, server) = tokio::io::duplex(capacity);
    let now = Instant::now();
    let state = ConnectionState::new(now, now);
    let io = TrackedIo::new(TokioIo::new(client), state.clone(), Default::default());
    (io, state, server)
}

/// Reads one request head (and a `Content-Length` body) from the server end.
async fn read_request(server: &mut DuplexStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(server.read(&mut byte).await.unwrap(), 1, "request head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        let mut body = vec![0u8; len];
        server.read_exact(&mut body).await.unwrap();
    }
    buf
}

/// Puts the tracker's state into a response, as hyper-util does with
/// `Connected::extra`.
fn with_state<B>(mut res: http::Response<B>, state: &ConnectionState) -> http::Response<B> {
    res.extensions_mut().insert(state.clone());
    res
}

async fn handshake(io: Io) -> http1::SendRequest<Full<Bytes>> {
    let (send, conn) = http1::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One whole GET exchange: the request out, `response` back, its body read
/// to the end and the exchange's end marked, as a request-plane layer does.
async fn complete_exchange(
    send: &mut http1::SendRequest<Full<Bytes>>,
    server: &mut DuplexStream,
    state: &ConnectionState,
    response: &[u8],
) {
    let res = tokio::spawn(send.send_request(get()));
    read_request(server).await;
    server.write_all(response).await.unwrap();
    let res = with_state(res.await.unwrap().unwrap(), state);
    let mut end = ExchangeEnd::for_request(None, &res, false);
    res.into_body().collect().await.unwrap();
    end.end();
}

fn get() -> http::Request<Full<Bytes>> {
    http::Request::get("/").body(Full::default()).unwrap()
}

#[test]
fn state_fits_in_256_bytes() {
    let size = super::state::state_size();
    assert!(size <= 256, "per-connection state is {size} bytes");
}

#[tokio::test(start_paused = true)]
async fn exchanges_are_numbered_and_counted_per_exchange() {
    let (io, state, mut server) = pipe(1 << 16);
    let mut send = handshake(io).await;
    assert_eq!(state.exchange().outcome(), ExchangeOutcome::None);
    for n in 1..=2u64 {
        let res = tokio::spawn(send.send_request(get()));
        let head = read_request(&mut server).await;
        assert_eq!(state.exchange().number(), n);
        assert_eq!(state.exchange().bytes_written(), head.len() as u64);
        assert!(!state.exchange().response_started());
        assert!(state.in_flight());
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        let res = with_state(res.await.unwrap().unwrap(), &state);
        let mut end = ExchangeEnd::for_request(None, &res, false);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        end.end();
        let e = state.exchange();
        assert_eq!((e.number(), e.is_reused()), (n, n > 1));
        assert_eq!(e.bytes_read(), 40);
        assert_eq!(e.outcome(), ExchangeOutcome::Completed);
        assert!(!state.in_flight());
        assert_eq!(state.idle_since(), state.last_read());
        advance(ms(30)).await;
        send.ready().await.unwrap();
    }
    assert_eq!(state.requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn late_body_end_of_an_earlier_exchange_leaves_the_next_in_flight() {
    let (io, state, mut server) = pipe(1 << 16);
    let mut send = handshake(io).await;
    let a = tokio::spawn(send.send_request(get()));
    read_request(&mut server).await;
    let a = answer(
        &mut server,
        a,
        &state,
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na",
    )
    .await;
    // Response A's marker is taken at head time (exchange 1)...
    let mut end_a = ExchangeEnd::for_request(None, &a, false);
    // ...but its caller is slow: hyper has the whole body off the wire and
    // hands the connection to request B first.
    let body_a = a.into_body();
    let mut body_a = Box::pin(body_a);
    let frame = body_a.frame().await.unwrap().unwrap();
    assert_eq!(frame.data_ref().map(|d| &d[..]), Some(&b"a"[..]));
    send.ready().await.unwrap();
    let b = tokio::spawn(send.send_request(get()));
    read_request(&mut server).await;
    assert_eq!(state.requests(), 2);
    assert!(state.in_flight());
    // Now A's body end is seen: it must not mark B's exchange idle.
    end_a.end();
    assert!(state.in_flight(), "{state:?}");
    assert_eq!(state.exchange().number(), 2);
    assert_eq!(state.exchange().outcome(), ExchangeOutcome::InFlight);
    let b = answer(
        &mut server,
        b,
        &state,
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb",
    )
    .await;
    let mut end_b = ExchangeEnd::for_request(None, &b, false);
    b.into_body().collect().await.unwrap();
    end_b.end();
    assert!(!state.in_flight());
}

#[tokio::test(start_paused = true)]
async fn empty_bodies_end_the_exchange_at_head_time() {
    let (io, state, mut server) = pipe(1 << 16);
    let mut send = handshake(io).await;
    let heads: [&[u8]; 3] = [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    ];
    for (i, head) in heads.into_iter().enumerate() {
        send.ready().await.unwrap();
        let res = tokio::spawn(send.send_request(get()));
        read_request(&mut server).await;
        server.write_all(head).await.unwrap();
        let res = with_state(res.await.unwrap().unwrap(), &state);
        // The body is never polled.
        let _end = ExchangeEnd::for_request(None, &res, false);
        assert!(!state.in_flight(), "response {i}: {state:?}");
        assert_eq!(state.exchange().outcome(), ExchangeOutcome::Completed);
        assert!(state.idle_since().is_some());
    }
    // HEAD: the response announces a length but has no body.
    send.ready().await.unwrap();
    let head = http::Request::head("/").body(Full::default()).unwrap();
    let res = tokio::spawn(send.send_request(head));
    read_request(&mut server).await;
    let res = answer(
        &mut server,
        res,
        &state,
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
    )
    .await;
    let _end = ExchangeEnd::for_request(None, &res, false);
    assert!(!state.in_flight(), "HEAD: {state:?}");
}

pin_project_lite::pin_project! {
    /// An IO whose writes can be made to fail, with reads left open.
    struct FailingWrites {
        #[pin]
        inner: DuplexStream,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }
}

impl tokio::io::AsyncRead for FailingWrites {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for FailingWrites {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.project();
        if this.fail.load(std::sync::atomic::Ordering::Relaxed) {
            let err = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
            return std::task::Poll::Ready(Err(err));
        }
        this.inner.poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_first_write_opens_its_own_exchange() {
    let (client, mut server) = tokio::io::duplex(1 << 16);
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let now = Instant::now();
    let state = ConnectionState::new(now, now);
    let io = TrackedIo::new(
        TokioIo::new(FailingWrites {
            inner: client,
            fail: fail.clone(),
        }),
        state.clone(),
        Default::default(),
    );
    let (mut send, conn) = http1::handshake::<_, Full<Bytes>>(io).await.unwrap();
    tokio::spawn(conn);
    complete_exchange(
        &mut send,
        &mut server,
        &state,
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx",
    )
    .await;
    assert!(state.exchange().response_started());
    send.ready().await.unwrap();
    // The next request's first write fails.
    fail.store(true, std::sync::atomic::Ordering::Relaxed);
    let err = send.send_request(get()).await.unwrap_err();
    let e = state.exchange();
    assert_eq!(e.number(), 2, "{err}");
    assert!(e.is_reused());
    assert_eq!(e.bytes_written(), 0);
    assert!(
        !e.response_started(),
        "must not look like a response byte arrived"
    );
    assert_eq!(e.outcome(), ExchangeOutcome::WriteFailed);
    assert!(state.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_request_hyper_never_wrote_opens_no_exchange() {
    let (io, state, mut server) = pipe(1 << 16);
    let mut send = handshake(io).await;
    complete_exchange(
        &mut send,
        &mut server,
        &state,
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx",
    )
    .await;
    send.ready().await.unwrap();
    // The server closes while the connection is idle: hyper reads EOF before
    // it writes the next request, which fails as canceled.
    drop(server);
    let err = send.send_request(get()).await.unwrap_err();
    assert!(err.is_canceled(), "{err}");
    let e = state.exchange();
    assert_eq!((e.number(), e.outcome()), (1, ExchangeOutcome::Completed));
    assert!(state.is_closed());
}

#[tokio::test(start_paused = true)]
async fn eof_before_and_during_a_response_are_told_apart() {
    // Before any response byte.
    let (io, state, mut server) = pipe(1 << 16);
    let mut send = handshake(io).await;
    let res = tokio::spawn(send.send_request(get()));
    read_request(&mut server).await;
    drop(server);
    assert!(res.await.unwrap().is_err());
    assert_eq!(
        state.exchange().outcome(),
        ExchangeOutcome::ClosedBeforeResponse
    );
    // After part of the head.
    let (io, state, mut server) = pipe(1 << 16);
    let mut send = handshake(io).await;
    let res = tokio::spawn(send.send_request(get()));
    read_request(&mut server).await;
    server.write_all(b"HTTP/1.1 200 O").await.unwrap();
    tokio::task::yield_now().await;
    drop(server);
    assert!(res.await.unwrap().is_err());
    let e = state.exchange();
    assert_eq!(e.outcome(), ExchangeOutcome::ClosedDuringResponse);
    assert_eq!(e.bytes_read(), 14);
}

#[tokio::test(start_paused = true)]
async fn abandoning_an_upload_closes_the_connection_at_once() {
    // A tiny pipe: the server never reads, so hyper's write blocks.
    let (io, state, mut server) = pipe(1024);
    let (mut send, conn) = http1::handshake::<_, Full<Bytes>>(io).await.unwrap();
    let conn = tokio::spawn(conn);
    let body = Full::new(Bytes::from(vec![b'x'; 1 << 20]));
    let req = http::Request::post("/").body(body).unwrap();
    let res = tokio::spawn(send.send_request(req));
    advance(ms(10)).await;
    assert!(state.in_flight());
    let written = state.exchange().bytes_written();
    assert!(written > 0 && written < 1 << 20, "{written}");
    res.abort();
    // What a request-side marker does when its request is dropped or times
    // out: poison the exchange's connection.
    state.abandon(state.requests());
    assert!(state.is_poisoned());
    assert_eq!(state.exchange().outcome(), ExchangeOutcome::Abandoned);
    // hyper's connection task fails at once and drops the IO: the server
    // end sees EOF after the bytes already in the pipe.
    let result = tokio::time::timeout(ms(1), conn).await;
    assert!(result.is_ok(), "the connection task ended at once");
    assert!(state.is_closed());
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.unwrap();
    assert!(rest.len() as u64 <= written);
}

#[tokio::test(start_paused = true)]
async fn abandon_of_an_ended_exchange_does_nothing() {
    let (io, state, mut server) = pipe(1 << 16);
    let mut send = handshake(io).await;
    complete_exchange(
        &mut send,
        &mut server,
        &state,
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx",
    )
    .await;
    // (the helper has dropped its ended marker: that never poisons either)
    state.abandon(1);
    assert!(!state.is_poisoned());
    send.ready().await.unwrap();
    assert!(!state.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_body_dropped_before_its_end_poisons_the_connection() {
    let (io, state, mut server) = pipe(1 << 16);
    let mut send = handshake(io).await;
    let res = tokio::spawn(send.send_request(get()));
    read_request(&mut server).await;
    let res = answer(
        &mut server,
        res,
        &state,
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nx",
    )
    .await;
    let end = ExchangeEnd::for_request(None, &res, false);
    drop(res);
    drop(end);
    assert!(state.is_poisoned());
    tokio::task::yield_now().await;
    let mut rest = Vec::new();
    tokio::time::timeout(ms(1), server.read_to_end(&mut rest))
        .await
        .expect("closed at once")
        .unwrap();
    assert!(state.is_closed());
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_past_its_expiry_reads_eof_and_closes() {
    let (io, state, mut server) = pipe(1 << 16);
    let (mut send, conn) = http1::handshake::<_, Empty<Bytes>>(io).await.unwrap();
    let conn = tokio::spawn(conn);
    let res = tokio::spawn(send.send_request(http::Request::get("/").body(Empty::new()).unwrap()));
    read_request(&mut server).await;
    let res = answer(
        &mut server,
        res,
        &state,
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    let _end = ExchangeEnd::for_request(None, &res, false);
    let idle_since = state.idle_since().expect("known idle");
    state.set_expiry(Some(ms(500)));
    assert_eq!(state.idle_deadline(), Some(idle_since + ms(500)));
    advance(ms(499)).await;
    assert!(!state.is_closed(), "not before the expiry");
    advance(ms(2)).await;
    // The IO's timer fired: hyper saw EOF on an idle connection and ended
    // cleanly; the server end sees the close.
    let result = tokio::time::timeout(ms(1), conn).await.expect("closed");
    assert!(result.unwrap().is_ok());
    assert!(state.was_expired());
    assert!(state.is_closed());
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_slow_response_is_never_expired() {
    let (io, state, mut server) = pipe(1 << 16);
    state.set_expiry(Some(ms(100)));
    let mut send = handshake(io).await;
    let res = tokio::spawn(send.send_request(get()));
    read_request(&mut server).await;
    let res = answer(
        &mut server,
        res,
        &state,
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await;
    let mut end = ExchangeEnd::for_request(None, &res, false);
    let mut body = Box::pin(res.into_body());
    for _ in 0..3 {
        // Gaps twice the expiry between chunks.
        advance(ms(200)).await;
        server.write_all(b"1\r\nz\r\n").await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().map(|d| &d[..]), Some(&b"z"[..]));
    }
    server.write_all(b"0\r\n\r\n").await.unwrap();
    assert!(body.frame().await.is_none());
    end.end();
    assert!(!state.is_closed());
    assert!(!state.was_expired());
}

#[tokio::test(start_paused = true)]
async fn a_claimed_connection_is_not_expired_under_its_request() {
    let (io, state, mut server) = pipe(1 << 16);
    let (mut send, conn) = http1::handshake::<_, Empty<Bytes>>(io).await.unwrap();
    tokio::spawn(conn);
    let get = || http::Request::get("/").body(Empty::<Bytes>::new()).unwrap();
    let res = tokio::spawn(send.send_request(get()));
    read_request(&mut server).await;
    let res = answer(
        &mut server,
        res,
        &state,
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    let _end = ExchangeEnd::for_request(None, &res, false);
    state.set_expiry(Some(ms(100)));
    advance(ms(99)).await;
    send.ready().await.unwrap();
    // A pool's poll_ready said yes just before the deadline...
    state.claim();
    advance(ms(5)).await;
    // ...so the IO neither closed it nor refuses the request written now,
    assert!(!state.is_closed());
    // (a pool asking again would still be told it is stale: an unused
    // promise does not make a connection fresh)
    assert!(state.expired_now().is_some());
    let res = tokio::spawn(send.send_request(get()));
    read_request(&mut server).await;
    server
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    assert!(res.await.unwrap().is_ok());
    assert_eq!(state.exchange().number(), 2);
}

#[test]
fn tracker_gives_back_its_inner_connector() {
    let mut track = TrackConnections::new(7u32);
    assert_eq!(*track.get_ref(), 7);
    *track.get_mut() = 8;
    assert_eq!(track.into_inner(), 8);
}

#[tokio::test(start_paused = true)]
async fn a_write_well_past_the_deadline_is_refused_before_any_byte() {
    let (io, state, mut server) = pipe(1 << 16);
    let mut io = TokioIo::new(io);
    // One exchange: a request out, a response in, its end marked.
    io.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    read_request(&mut server).await;
    server
        .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::io::AsyncReadExt::read(&mut io, &mut buf)
        .await
        .unwrap();
    assert!(n > 0);
    state.end_exchange(1);
    state.set_expiry(Some(ms(100)));
    let written = state.bytes_written();
    // Just past the deadline (hyper checked it a moment before): allowed.
    advance(ms(110)).await;
    io.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(state.exchange().number(), 2);
    read_request(&mut server).await;
    server
        .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        .await
        .unwrap();
    let _ = tokio::io::AsyncReadExt::read(&mut io, &mut buf)
        .await
        .unwrap();
    state.end_exchange(2);
    let written_2 = state.bytes_written();
    assert!(written_2 > written);
    // Left unpolled well past it: refused, typed, nothing written.
    advance(ms(200)).await;
    let err = io.write_all(b"GET /b HTTP/1.1\r\n\r\n").await.unwrap_err();
    let expired = crate::find_cause::<ConnectionExpired>(&err).unwrap_or_else(|| panic!("{err}"));
    assert_eq!(expired.limit(), ms(100));
    assert!(expired.idle() >= ms(200));
    assert_eq!(state.bytes_written(), written_2, "nothing written");
    assert_eq!(state.exchange().number(), 2, "no exchange opened");
}

// ---------------------------------------------------------------------------
// Attempts announced by their request (what PhaseTimeout's request body does
// through the connection capture: announce right before hyper writes the
// head, report the upload's end when the body ends or is dropped), driven
// here straight against the state.

/// A request body that announces its attempt to `state` when hyper asks
/// `is_end_stream` before writing the head, sends `data` in one frame, then
/// either ends or (`hang`) stays pending forever, and reports its upload's
/// end when it ends or is dropped.
struct Announcing {
    data: Option<Bytes>,
    len: u64,
    hang: bool,
    state: ConnectionState,
    number: Arc<AtomicU64>,
}

impl Announcing {
    fn new(state: &ConnectionState, data: Bytes, hang: bool) -> (Self, Arc<AtomicU64>) {
        let number = Arc::new(AtomicU64::new(0));
        let body = Announcing {
            len: data.len() as u64,
            data: Some(data).filter(|d| !d.is_empty()),
            hang,
            state: state.clone(),
            number: number.clone(),
        };
        (body, number)
    }

    fn upload_ended(&self) {
        let n = self.number.load(std::sync::atomic::Ordering::Acquire);
        self.state.upload_ended(n);
    }
}

impl http_body::Body for Announcing {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        match self.data.take() {
            Some(d) => Poll::Ready(Some(Ok(http_body::Frame::data(d)))),
            None if self.hang => Poll::Pending,
            None => {
                self.upload_ended();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self.data.is_none() && !self.hang;
        if self.number.load(std::sync::atomic::Ordering::Acquire) == 0 {
            let n = self.state.begin_request(end, ms(25));
            self.number.store(n, std::sync::atomic::Ordering::Release);
        }
        end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

impl Drop for Announcing {
    fn drop(&mut self) {
        self.upload_ended();
    }
}

async fn announcing_handshake(io: Io) -> http1::SendRequest<Announcing> {
    let (send, conn) = http1::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Reads exactly one request head from the server end.
async fn read_head(server: &mut DuplexStream) -> usize {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(server.read(&mut byte).await.unwrap(), 1, "request head");
        buf.push(byte[0]);
    }
    buf.len()
}

async fn drain(server: &mut DuplexStream, n: usize) {
    let mut body = vec![0u8; n];
    server.read_exact(&mut body).await.unwrap();
}

fn post(body: Announcing) -> http::Request<Announcing> {
    http::Request::post("/").body(body).unwrap()
}

/// An announced POST with an empty body, answered `204 No Content`: the
/// response, its marker not created yet.
async fn announced_204(
    send: &mut http1::SendRequest<Announcing>,
    server: &mut DuplexStream,
    state: &ConnectionState,
) -> http::Response<hyper::body::Incoming> {
    let (body, _) = Announcing::new(state, Bytes::new(), false);
    let res = tokio::spawn(send.send_request(post(body)));
    read_head(server).await;
    answer(server, res, state, b"HTTP/1.1 204 No Content\r\n\r\n").await
}

/// The server writes `response`; the client's response to come (`res`)
/// then arrives, carrying the tracker's state as hyper-util's would.
async fn answer(
    server: &mut DuplexStream,
    res: Pending,
    state: &ConnectionState,
    response: &[u8],
) -> http::Response<hyper::body::Incoming> {
    server.write_all(response).await.unwrap();
    with_state(res.await.unwrap().unwrap(), state)
}

type Pending = tokio::task::JoinHandle<hyper::Result<http::Response<hyper::body::Incoming>>>;

/// An announced POST of `len` bytes on a fresh connection whose pipe holds
/// 16 KiB, up to the server having read its head: the state, the server's
/// end, the response to come, the sender and the attempt's number.
async fn start_upload(
    len: usize,
) -> (
    ConnectionState,
    DuplexStream,
    Pending,
    http1::SendRequest<Announcing>,
    Arc<AtomicU64>,
) {
    let (io, state, mut server) = pipe(16 << 10);
    let mut send = announcing_handshake(io).await;
    let (body, number) = Announcing::new(&state, Bytes::from(vec![b'x'; len]), false);
    let res = tokio::spawn(send.send_request(post(body)));
    read_head(&mut server).await;
    (state, server, res, send, number)
}

#[tokio::test(start_paused = true)]
async fn a_1xx_during_an_upload_is_the_same_attempt() {
    // The pipe holds 16 KiB: the 256 KiB upload is written in many turns,
    // with response bytes (a 100 Continue, a 103) read in between.
    let (state, mut server, res, _send, number) = start_upload(256 << 10).await;
    drain(&mut server, 32 << 10).await;
    server
        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        .await
        .unwrap();
    drain(&mut server, 32 << 10).await;
    server
        .write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n")
        .await
        .unwrap();
    drain(&mut server, 32 << 10).await;
    assert_eq!(number.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Then the server goes away mid-upload.
    drop(server);
    assert!(res.await.unwrap().is_err());
    let e = state.exchange();
    assert_eq!(e.number(), 1, "the rest of the upload opened no exchange");
    assert_eq!(state.requests(), 1);
    assert!(e.bytes_written() > 96 << 10, "{e:?}");
    assert!(
        e.response_started(),
        "the 1xx bytes count as response bytes"
    );
    assert!(!e.nothing_written());
    assert!(!e.is_reused());
}

#[tokio::test(start_paused = true)]
async fn an_early_final_response_then_drop_closes_the_connection() {
    let (state, mut server, res, _send, _) = start_upload(1 << 20).await;
    drain(&mut server, 8 << 10).await;
    let res = answer(
        &mut server,
        res,
        &state,
        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(res.status(), 413);
    let end = ExchangeEnd::for_attempt(state.clone(), 1, true, false, &res);
    // The response is complete, the upload is not: still in flight.
    assert!(state.in_flight());
    assert!(!state.is_poisoned());
    drop(end);
    drop(res);
    assert!(
        state.is_poisoned(),
        "dropping the early answer stops the upload"
    );
    assert_eq!(state.exchange().outcome(), ExchangeOutcome::Abandoned);
    // hyper's connection task fails and drops the IO: the server sees EOF
    // after at most what the pipe held.
    let mut rest = Vec::new();
    tokio::time::timeout(ms(10), server.read_to_end(&mut rest))
        .await
        .expect("closed at once")
        .unwrap();
    assert!(rest.len() < 1 << 20, "{}", rest.len());
    assert!(state.is_closed());
}

#[tokio::test(start_paused = true)]
async fn an_early_final_response_completes_when_the_upload_ends() {
    let len = 64 << 10;
    let (state, mut server, res, _send, _) = start_upload(len).await;
    server
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let res = tokio::time::timeout(ms(100), res)
        .await
        .expect("early response");
    let res = with_state(res.unwrap().unwrap(), &state);
    let end = ExchangeEnd::for_attempt(state.clone(), 1, true, false, &res);
    assert!(state.in_flight(), "the upload is still running");
    // The server reads the rest: the body ends, the exchange completes.
    tokio::time::timeout(ms(100), drain(&mut server, len))
        .await
        .expect("drained");
    for _ in 0..10 {
        advance(ms(1)).await;
    }
    assert_eq!(state.exchange().outcome(), ExchangeOutcome::Completed);
    drop(end);
    assert!(!state.is_poisoned());
    assert!(state.idle_since().is_some());
}

#[tokio::test(start_paused = true)]
async fn an_upgraded_connection_is_never_expired_nor_poisoned() {
    let (io, state, mut server) = pipe(1 << 16);
    let (mut send, conn) = http1::handshake(io).await.unwrap();
    tokio::spawn(conn.with_upgrades());
    let (body, _) = Announcing::new(&state, Bytes::new(), false);
    let req = http::Request::get("/")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(body)
        .unwrap();
    let res = tokio::spawn(send.send_request(req));
    read_head(&mut server).await;
    server
        .write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let res = with_state(res.await.unwrap().unwrap(), &state);
    let end = ExchangeEnd::for_attempt(state.clone(), 1, true, false, &res);
    assert!(state.is_upgraded());
    drop(end);
    // An expiry of zero, and a long silence: the tunnel stays.
    state.set_expiry(Some(Duration::ZERO));
    let upgraded = hyper::upgrade::on(res).await.unwrap();
    let mut tunnel = TokioIo::new(upgraded);
    for round in 0..5u8 {
        advance(ms(700)).await;
        tunnel.write_all(&[round; 3]).await.unwrap();
        let mut got = [0u8; 3];
        server.read_exact(&mut got).await.unwrap();
        server.write_all(&got).await.unwrap();
        let mut back = [0u8; 3];
        tunnel.read_exact(&mut back).await.unwrap();
        assert_eq!(back, [round; 3]);
    }
    assert!(!state.is_closed() && !state.was_expired());
    assert_eq!(state.idle_deadline(), None);
    // A late abandon of the upgrading exchange does nothing either.
    state.abandon(1);
    state.poison();
    assert!(!state.is_poisoned());
    tunnel.write_all(b"end").await.unwrap();
    let mut got = [0u8; 3];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(state.requests(), 1, "tunnel writes open no exchange");
}

#[tokio::test(start_paused = true)]
async fn a_late_end_of_an_empty_response_never_ends_the_next_attempt() {
    let (io, state, mut server) = pipe(1 << 16);
    let mut send = announcing_handshake(io).await;
    let first = announced_204(&mut send, &mut server, &state).await;
    // hyper hands the connection on before the first response's marker
    // exists: the next attempt begins.
    send.ready().await.unwrap();
    let (body, _) = Announcing::new(&state, Bytes::new(), false);
    let second = tokio::spawn(send.send_request(post(body)));
    read_head(&mut server).await;
    assert_eq!(state.requests(), 2);
    // The first response's marker, late: keyed to attempt 1, it touches
    // nothing of attempt 2.
    let end = ExchangeEnd::for_attempt(state.clone(), 1, true, false, &first);
    drop(end);
    assert!(state.in_flight());
    assert!(!state.is_poisoned());
    assert_eq!(state.exchange().outcome(), ExchangeOutcome::InFlight);
    let second = answer(
        &mut server,
        second,
        &state,
        b"HTTP/1.1 204 No Content\r\n\r\n",
    )
    .await;
    let _end = ExchangeEnd::for_attempt(state.clone(), 2, true, false, &second);
    assert_eq!(state.exchange().outcome(), ExchangeOutcome::Completed);
}

#[tokio::test(start_paused = true)]
async fn a_content_length_body_that_never_ends_ends_its_upload_when_hyper_drops_it() {
    let (io, state, mut server) = pipe(1 << 16);
    let mut send = announcing_handshake(io).await;
    let (body, _) = Announcing::new(&state, Bytes::from_static(b"0123456789"), true);
    let res = tokio::spawn(send.send_request(post(body)));
    read_head(&mut server).await;
    drain(&mut server, 10).await;
    tokio::task::yield_now().await;
    // hyper wrote the ten bytes and dropped the body (it never polls a
    // `Content-Length` body past its length): the upload is over.
    let res = answer(
        &mut server,
        res,
        &state,
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    let _end = ExchangeEnd::for_attempt(state.clone(), 1, true, false, &res);
    assert_eq!(state.exchange().outcome(), ExchangeOutcome::Completed);
}

#[tokio::test(start_paused = true)]
async fn a_write_error_inside_a_non_socket_io_is_inexact() {
    // A duplex pipe is not a plain TCP socket: a failed write may (for all
    // the tracker knows) have sent part of itself, as TLS can.
    let (client, _server) = tokio::io::duplex(1 << 16);
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let now = Instant::now();
    let state = ConnectionState::new(now, now);
    let io = TrackedIo::new(
        TokioIo::new(FailingWrites {
            inner: client,
            fail: fail.clone(),
        }),
        state.clone(),
        Default::default(),
    );
    let (mut send, conn) = http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let (body, _) = Announcing::new(&state, Bytes::from(vec![b'x'; 4096]), false);
    let err = send.send_request(post(body)).await.unwrap_err();
    let e = state.exchange();
    assert_eq!(e.number(), 1, "{err}");
    assert_eq!(e.bytes_written(), 0);
    assert!(!e.is_exact());
    assert!(
        !e.nothing_written(),
        "an inexact record never proves nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn an_attempt_begun_on_an_expired_connection_is_refused_before_a_byte() {
    let now = Instant::now();
    let state = ConnectionState::new(now, now);
    assert_eq!(state.begin_request(true, ms(25)), 1);
    state.on_read(10, true, true);
    assert!(state.end_exchange(1));
    state.set_expiry(Some(ms(100)));
    // Announced within the grace: written.
    advance(ms(110)).await;
    assert_eq!(state.begin_request(true, ms(25)), 2);
    assert!(state.take_refusal().is_none());
    state.on_read(10, true, true);
    assert!(state.end_exchange(2));
    // Announced well past it: the IO owes a refusal, once.
    advance(ms(300)).await;
    assert_eq!(state.begin_request(true, ms(25)), 3);
    let refused = state.take_refusal().expect("refused");
    assert_eq!(refused.limit(), ms(100));
    assert!(refused.idle() >= ms(300));
    assert!(state.take_refusal().is_none());
    assert!(state.exchange().nothing_written());
}

#[tokio::test(start_paused = true)]
async fn a_poison_before_an_announced_write_writes_nothing() {
    let (io, state, mut server) = pipe(1 << 16);
    let mut send = announcing_handshake(io).await;
    let first = announced_204(&mut send, &mut server, &state).await;
    let _end = ExchangeEnd::for_attempt(state.clone(), 1, true, false, &first);
    send.ready().await.unwrap();
    // A poison lands between hyper's read and its next write.
    state.poison();
    let (body, _) = Announcing::new(&state, Bytes::new(), false);
    let err = send.send_request(post(body)).await.unwrap_err();
    let e = state.exchange();
    // hyper reads first: the poisoned read closes the connection and the
    // request is canceled unannounced; if it had been announced, its
    // record proves nothing was written.
    match e.number() {
        1 => assert!(err.is_canceled(), "{err}"),
        _ => assert!(e.nothing_written(), "{err}: {e:?}"),
    }
}

/// Records what the IO tells its observer.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<Event>>);

impl Observer for Recorder {
    fn event(&self, event: Event, _: &ConnectionState) {
        self.0.lock().unwrap().push(event);
    }

    fn learned(&self) -> Limits {
        Limits::NONE
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn record(state: &ConnectionState) -> Arc<Recorder> {
    let recorder = Arc::new(Recorder::default());
    let installed = recorder.clone();
    state.observe(|| installed);
    recorder
}

/// Lets the spawned connection task run until `done` or 1 s of paused time.
async fn settle(mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(ms(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_late_drain_counts_idle_from_before_the_drain() {
    // The pipe holds the whole response: the server is done writing at t0,
    // its idle clock starts there; the client's reader comes for most of
    // the body 150 ms later.
    let (mut send, mut server, state, events) = recorded(1 << 20).await;
    let res = tokio::spawn(send.send_request(get()));
    read_request(&mut server).await;
    let t0 = Instant::now();
    let body = vec![b'x'; 256 * 1024];
    let mut response =
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    response.extend_from_slice(&body);
    server.write_all(&response).await.unwrap();
    let res = with_state(res.await.unwrap().unwrap(), &state);
    let mut end = ExchangeEnd::for_request(None, &res, false);
    let mut body = Box::pin(res.into_body());
    body.frame().await.unwrap().unwrap();
    advance(ms(150)).await;
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(!rest.is_empty(), "most of the body was read late");
    end.end();
    assert!(!state.in_flight());
    let (last_read, idle_since) = (state.last_read().unwrap(), state.idle_since().unwrap());
    assert!(last_read >= t0 + ms(150), "drained late");
    assert!(
        idle_since < t0 + ms(10),
        "idle from before the drain: {:?}",
        idle_since - t0
    );
    // The server closes 200 ms after it finished writing: the observed idle
    // is 200 ms, not the 50 ms since the drain.
    advance(ms(50)).await;
    drop(server);
    settle(|| !events.0.lock().unwrap().is_empty()).await;
    let events = events.0.lock().unwrap().clone();
    match events[..] {
        [Event::ServerIdleClose(idle)] => assert!(idle >= ms(199), "{idle:?}"),
        _ => panic!("{events:?}"),
    }
}

/// A tracked HTTP/1 connection over a pipe of `capacity` bytes whose
/// events are recorded: the request sender, the server side, the state and
/// the events.
async fn recorded(
    capacity: usize,
) -> (
    http1::SendRequest<Full<Bytes>>,
    DuplexStream,
    ConnectionState,
    Arc<Recorder>,
) {
    let (io, state, server) = pipe(capacity);
    let events = record(&state);
    (handshake(io).await, server, state, events)
}

/// [`recorded`], with one exchange completed on it.
async fn after_one_exchange() -> (
    http1::SendRequest<Full<Bytes>>,
    DuplexStream,
    ConnectionState,
    Arc<Recorder>,
) {
    let (mut send, mut server, state, events) = recorded(1 << 16).await;
    complete_exchange(
        &mut send,
        &mut server,
        &state,
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    (send, server, state, events)
}

#[tokio::test(start_paused = true)]
async fn a_response_read_as_it_arrives_is_idle_from_its_last_byte() {
    let (_send, server, state, events) = after_one_exchange().await;
    assert_eq!(state.idle_since(), state.last_read());
    advance(ms(120)).await;
    drop(server);
    settle(|| !events.0.lock().unwrap().is_empty()).await;
    assert_eq!(
        events.0.lock().unwrap()[..],
        [Event::ServerIdleClose(ms(120))]
    );
}

/// A connection that completed one exchange and sat idle for `idle`, with a
/// second GET now in flight on it: the request's task, the server side and
/// the connection's recorded events.
async fn second_request_after(
    idle: Duration,
) -> (
    tokio::task::JoinHandle<hyper::Result<http::Response<hyper::body::Incoming>>>,
    DuplexStream,
    Arc<Recorder>,
) {
    let (mut send, server, _, events) = after_one_exchange().await;
    advance(idle).await;
    send.ready().await.unwrap();
    (tokio::spawn(send.send_request(get())), server, events)
}

#[tokio::test(start_paused = true)]
async fn a_reused_connection_closed_before_its_response_is_a_lost_race() {
    let (res, mut server, events) = second_request_after(ms(300)).await;
    // The server's idle timer fired as the request arrived: it closes
    // without a byte of response.
    read_request(&mut server).await;
    drop(server);
    assert!(res.await.unwrap().is_err());
    let events = events.0.lock().unwrap().clone();
    assert_eq!(events[..], [Event::LostRace(ms(300))], "{events:?}");
}

#[tokio::test(start_paused = true)]
async fn fresh_connections_and_started_responses_are_no_lost_race() {
    // A new connection's first request: a real error, not the idle timeout.
    let (mut send, mut server, _, events) = recorded(1 << 16).await;
    let res = tokio::spawn(send.send_request(get()));
    read_request(&mut server).await;
    drop(server);
    assert!(res.await.unwrap().is_err());
    assert!(events.0.lock().unwrap().is_empty());
    // A reused connection whose response had started.
    let (res, mut server, events) = second_request_after(ms(50)).await;
    read_request(&mut server).await;
    server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
    drop(server);
    assert!(res.await.unwrap().is_err());
    assert!(
        events.0.lock().unwrap().is_empty(),
        "{:?}",
        events.0.lock().unwrap()
    );
}

/// A direct capture (the one-call client's) learns its connection as its
/// attempt begins there, once: a second begin, on the same connection or
/// another, opens nothing and leaves the first record.
#[tokio::test]
async fn a_direct_capture_begins_its_attempt_once() {
    let now = Instant::now();
    let (first, second) = (
        ConnectionState::new(now, now),
        ConnectionState::new(now, now),
    );
    let capture = ConnectionCapture::direct(false);
    assert!(!capture.is_filled());
    assert!(matches!(capture.get(), Captured::Pending));
    assert_eq!(capture.begin_direct(&first, true), 1);
    assert!(capture.is_filled());
    assert!(matches!(capture.get(), Captured::Tracked(s) if s.id() == first.id()));
    assert_eq!(capture.begin_direct(&first, true), 0);
    assert_eq!(capture.begin_direct(&second, true), 0);
    assert_eq!((first.requests(), second.requests()), (1, 0));
    assert_eq!(
        capture.begun().map(|(s, n)| (s.id(), n)),
        Some((first.id(), 1))
    );
}

/// The connection's timer serves the requests in flight on it one after the
/// other: a request whose deadline is later than where the one before it
/// armed the timer registers its waker without polling the timer (tokio
/// already holds the connection's wake-up), and is still woken (by the
/// earlier deadline, which moves the timer on, then by its own): ready at
/// its own deadline, not before, and never left waiting.
#[tokio::test(start_paused = true)]
async fn a_request_waits_on_a_timer_armed_earlier_for_another() {
    use std::task::Poll;
    let now = Instant::now();
    let state = ConnectionState::new(now, now);
    // The first request arms the timer at +100 ms, then its head arrives.
    let first = now + ms(100);
    let polled = std::future::poll_fn(|cx| Poll::Ready(state.poll_request_timer(first, cx))).await;
    assert!(polled.is_pending());
    state.release_request_timer();
    // The second waits on the same timer until +250 ms.
    let second = now + ms(250);
    let waiting = state.clone();
    let woke = tokio::time::timeout(ms(1000), async move {
        std::future::poll_fn(|cx| waiting.poll_request_timer(second, cx)).await;
        Instant::now()
    })
    .await
    .expect("the request waiting on the connection's timer was woken");
    assert_eq!(woke, second);
}
