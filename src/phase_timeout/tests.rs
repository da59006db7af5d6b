//! Paused-time unit tests of every phase boundary, with `tower-test` mocks.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::{advance, sleep, Instant};
use tower::{Service, ServiceExt};
use tower_test::mock;

use super::future::ResponseFuture;
use super::*;
use crate::connect_timeout::{ConnectTimeout, ConnectTimeoutLayer};
use crate::{BoxError, RequestBody};

type ReqBody = Channel<Bytes>;
type Inner = mock::Mock<Request<RequestBody>, Response<Channel<Bytes>>>;
type Handle = mock::Handle<Request<RequestBody>, Response<Channel<Bytes>>>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn setup(layer: PhaseTimeoutLayer) -> (PhaseTimeout<Inner>, Handle) {
    let (inner, handle) = mock::pair();
    (PhaseTimeout::new(inner, layer), handle)
}

fn elapsed(err: &BoxError) -> &Elapsed {
    err.downcast_ref::<Elapsed>()
        .unwrap_or_else(|| panic!("not an Elapsed: {err}"))
}

/// Calls the service once it is ready.
async fn issue(
    svc: &mut PhaseTimeout<Inner>,
    req: Request<ReqBody>,
) -> ResponseFuture<mock::future::ResponseFuture<Response<Channel<Bytes>>>> {
    ServiceExt::<Request<ReqBody>>::ready(svc)
        .await
        .unwrap()
        .call(req)
}

/// Plays hyper's part: pulls the request body as fast as it is produced and
/// returns how many bytes it got.
fn drain(req: Request<RequestBody>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut body = req.into_body();
        let mut n = 0;
        while let Some(Ok(frame)) = body.frame().await {
            n += frame.data_ref().map_or(0, Bytes::len);
        }
        n
    })
}

async fn feed(mut tx: Sender<Bytes>, frames: usize, every: Duration) {
    for _ in 0..frames {
        tx.send_data(Bytes::from_static(&[7; 1024])).await.unwrap();
        sleep(every).await;
    }
}

#[tokio::test(start_paused = true)]
async fn send_fires_one_limit_after_the_last_progress() {
    let (mut svc, mut handle) = setup(PhaseTimeoutLayer::new().send(Duration::from_secs(1)));
    let (tx, body) = Channel::new(1);
    let start = Instant::now();
    // 3 frames, 500 ms apart, then the sender stalls (kept alive, no end).
    let feeder = tokio::spawn(async move {
        let mut tx = tx;
        for _ in 0..3 {
            tx.send_data(Bytes::from_static(&[7; 1024])).await.unwrap();
            sleep(ms(500)).await;
        }
        sleep(Duration::from_secs(3600)).await;
        drop(tx);
    });
    let fut = issue(&mut svc, Request::post("/").body(body).unwrap()).await;
    let server = tokio::spawn(async move {
        let (req, _send) = handle.next_request().await.unwrap();
        drain(req).await.unwrap()
    });
    let err = fut.await.unwrap_err();
    let e = elapsed(&err);
    assert_eq!(e.phase(), Phase::Send);
    assert_eq!(e.limit(), Duration::from_secs(1));
    assert_eq!(e.bytes_sent(), 3 * 1024);
    // Last frame at 1.0 s, so the stall fires at 2.0 s, not 1.0 s.
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(e.elapsed() >= Duration::from_secs(1));
    feeder.abort();
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn steady_upload_longer_than_send_does_not_time_out() {
    let (mut svc, mut handle) = setup(PhaseTimeoutLayer::new().send(ms(300)).read(ms(300)));
    let (tx, body) = Channel::new(1);
    // 40 frames 100 ms apart: 4 s of upload, far longer than `send`.
    tokio::spawn(feed(tx, 40, ms(100)));
    let fut = issue(&mut svc, Request::post("/").body(body).unwrap()).await;
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        let n = drain(req).await.unwrap();
        send.send_response(Response::new(Channel::new(1).1));
        n
    });
    fut.await.expect("a moving upload never times out");
    assert_eq!(server.await.unwrap(), 40 * 1024);
}

#[tokio::test(start_paused = true)]
async fn read_clock_starts_when_the_upload_ends() {
    for (think, ok) in [(ms(900), true), (ms(1100), false)] {
        let (mut svc, mut handle) = setup(
            PhaseTimeoutLayer::new()
                .send(Duration::from_secs(1))
                .read(Duration::from_secs(1)),
        );
        let (tx, body) = Channel::new(1);
        // 2 s upload (20 frames, 100 ms apart); the body ends when `tx` drops.
        tokio::spawn(feed(tx, 20, ms(100)));
        let start = Instant::now();
        let fut = issue(&mut svc, Request::post("/").body(body).unwrap()).await;
        tokio::spawn(async move {
            let (req, send) = handle.next_request().await.unwrap();
            drain(req).await.unwrap();
            sleep(think).await;
            send.send_response(Response::new(Channel::new(1).1));
        });
        let res = fut.await;
        if ok {
            res.expect("900 ms think time is within read=1s after the upload");
        } else {
            let err = res.unwrap_err();
            let e = elapsed(&err);
            assert_eq!(e.phase(), Phase::Read);
            assert!(err
                .to_string()
                .contains("no response head since the upload finished"));
            // The body ended at 2.0 s (last frame at 1.9 s, end 100 ms
            // later): read fires at 3.0 s, not 1 s after the request began.
            assert_eq!(start.elapsed(), ms(3000));
            assert_eq!(e.bytes_sent(), 20 * 1024);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn response_ready_at_the_deadline_wins() {
    let (mut svc, mut handle) = setup(
        PhaseTimeoutLayer::new()
            .send(ms(100))
            .read(ms(100))
            .total(ms(100)),
    );
    let (tx, body) = Channel::new(1);
    drop(tx);
    let mut fut = Box::pin(issue(&mut svc, Request::post("/").body(body).unwrap()).await);
    let (req, send) = handle.next_request().await.unwrap();
    drain(req).await.unwrap();
    // Every deadline passes while the response is already there, unpolled.
    advance(ms(500)).await;
    send.send_response(Response::new(Channel::new(1).1));
    fut.as_mut()
        .await
        .expect("a ready response is never lost to a deadline");
}

#[tokio::test(start_paused = true)]
async fn total_fires_before_the_head() {
    let (mut svc, mut handle) = setup(PhaseTimeoutLayer::new().total(ms(700)));
    let start = Instant::now();
    let fut = issue(&mut svc, Request::get("/").body(Channel::new(1).1).unwrap()).await;
    let _held = tokio::spawn(async move { handle.next_request().await });
    let err = fut.await.unwrap_err();
    assert_eq!(elapsed(&err).phase(), Phase::Total);
    assert_eq!(start.elapsed(), ms(700));
}

/// Sends the response head at once and returns the body's sender.
async fn respond_streaming(handle: &mut Handle) -> Sender<Bytes> {
    let (req, send) = handle.next_request().await.unwrap();
    drain(req).await.unwrap();
    let (tx, body) = Channel::new(1);
    send.send_response(Response::new(body));
    tx
}

#[tokio::test(start_paused = true)]
async fn body_stall_fires_from_the_body() {
    let (mut svc, mut handle) = setup(PhaseTimeoutLayer::new().read(Duration::from_secs(1)));
    let fut = issue(&mut svc, Request::get("/").body(Channel::new(1).1).unwrap()).await;
    let mut tx = {
        let server = tokio::spawn(async move {
            let tx = respond_streaming(&mut handle).await;
            (tx, handle)
        });
        let res = fut.await.expect("head arrives at once");
        let (tx, handle) = server.await.unwrap();
        tokio::spawn(async move {
            let _keep = handle;
            sleep(Duration::from_secs(3600)).await;
        });
        let mut body = res.into_body();
        let mut tx = tx;
        tx.send_data(Bytes::from_static(b"hello")).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        let before = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        let e = elapsed(&err);
        assert_eq!(e.phase(), Phase::Read);
        assert_eq!(e.bytes_received(), 5);
        assert_eq!(before.elapsed(), Duration::from_secs(1));
        tx
    };
    let _ = tx.send_data(Bytes::new()).await;
}

/// The body stall clock runs while the body waits: a caller busy for three
/// stall limits before each poll gets its frames, and the stall still fires
/// one limit after the poll that found nothing.
#[tokio::test(start_paused = true)]
async fn time_the_caller_takes_between_polls_is_not_a_stall() {
    let (mut svc, mut handle) = setup(PhaseTimeoutLayer::new().read(Duration::from_secs(1)));
    let fut = issue(&mut svc, Request::get("/").body(Channel::new(1).1).unwrap()).await;
    let server = tokio::spawn(async move {
        let tx = respond_streaming(&mut handle).await;
        (tx, handle)
    });
    let mut body = fut.await.expect("head arrives at once").into_body();
    let (mut tx, _handle) = server.await.unwrap();
    for chunk in [&b"ab"[..], &b"cde"[..]] {
        // Busy elsewhere for 3 s, then the body waits 500 ms for its frame.
        sleep(Duration::from_secs(3)).await;
        let send = tokio::spawn(async move {
            sleep(ms(500)).await;
            tx.send_data(Bytes::from_static(chunk)).await.unwrap();
            tx
        });
        let polled = Instant::now();
        let frame = body
            .frame()
            .await
            .unwrap()
            .expect("no stall: the body waited 500 ms");
        assert_eq!(frame.into_data().unwrap(), chunk);
        assert_eq!(polled.elapsed(), ms(500));
        tx = send.await.unwrap();
    }
    sleep(Duration::from_secs(3)).await;
    let before = Instant::now();
    let err = body.frame().await.unwrap().unwrap_err();
    let e = elapsed(&err);
    assert_eq!((e.phase(), e.bytes_received()), (Phase::Read, 5));
    assert_eq!(before.elapsed(), Duration::from_secs(1));
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn total_fires_through_a_slow_body() {
    let (mut svc, mut handle) = setup(
        PhaseTimeoutLayer::new()
            .read(Duration::from_secs(1))
            .total(Duration::from_secs(2)),
    );
    let start = Instant::now();
    let fut = issue(&mut svc, Request::get("/").body(Channel::new(1).1).unwrap()).await;
    let server = tokio::spawn(async move {
        let mut tx = respond_streaming(&mut handle).await;
        // A frame every 500 ms: never stalls, but never ends in time.
        for _ in 0..100 {
            if tx.send_data(Bytes::from_static(b"x")).await.is_err() {
                break;
            }
            sleep(ms(500)).await;
        }
    });
    let body = fut.await.unwrap().into_body();
    let err = body.collect().await.unwrap_err();
    let e = elapsed(&err);
    assert_eq!(e.phase(), Phase::Total);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(e.bytes_received() >= 4);
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn override_switches_the_body_stall_off() {
    let (mut svc, mut handle) = setup(PhaseTimeoutLayer::new().read(Duration::from_secs(1)));
    let mut req = Request::get("/").body(Channel::new(1).1).unwrap();
    req.extensions_mut()
        .insert(PhaseOverride::new().read_body_stall(None));
    let fut = issue(&mut svc, req).await;
    let server = tokio::spawn(async move {
        let mut tx = respond_streaming(&mut handle).await;
        // Ten seconds of silence, then one event and the end.
        sleep(Duration::from_secs(10)).await;
        tx.send_data(Bytes::from_static(b"event")).await.unwrap();
    });
    let body = fut.await.unwrap().into_body();
    let bytes = body.collect().await.expect("no stall limit").to_bytes();
    assert_eq!(bytes, "event");
    server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn override_merges_with_the_layer() {
    let layer = PhaseTimeoutLayer::new()
        .send(ms(1))
        .read(ms(2))
        .read_body_stall(ms(3));
    assert_eq!(
        PhaseOverride::new().read(ms(20)).apply(&layer),
        layer::Limits {
            send: Some(ms(1)),
            read: Some(ms(20)),
            read_stall: Some(ms(3)),
            total: None
        }
    );
    let layer = PhaseTimeoutLayer::new().read(ms(2));
    let limits = PhaseOverride::new().read(ms(20)).total(ms(9)).apply(&layer);
    assert_eq!(limits.read_stall, Some(ms(20)));
    assert_eq!(limits.total, Some(ms(9)));
}

#[tokio::test(start_paused = true)]
async fn enormous_limits_never_fire_nor_panic() {
    // Duration::MAX never fires and never overflows the clock.
    let (mut svc, mut handle) = setup(
        PhaseTimeoutLayer::new()
            .send(Duration::MAX)
            .read(Duration::MAX)
            .total(Duration::MAX),
    );
    let fut = issue(&mut svc, Request::get("/").body(Channel::new(1).1).unwrap()).await;
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        sleep(Duration::from_secs(86_400)).await;
        drain(req).await.unwrap();
        let (mut tx, body) = Channel::new(1);
        send.send_response(Response::new(body));
        sleep(Duration::from_secs(86_400)).await;
        tx.send_data(Bytes::from_static(b"late")).await.unwrap();
    });
    let body = fut.await.expect("enormous limits never fire").into_body();
    let bytes = body.collect().await.expect("nor in the body").to_bytes();
    assert_eq!(bytes, "late");
    server.await.unwrap();
}

// ------------------------------------ a service that hides its connection
//
// An inner service other than hyper-util's legacy client never fills the
// connection capture. A body shows the connection by its frames; a request
// whose body was empty at the call shows nothing, so once the layer knows
// the service hides its connection, `read` runs from the call.

/// What the inner service does with a request it got.
#[derive(Clone, Copy, Debug)]
enum Hides {
    /// Drops the request (its extensions, the capture among them): reqwest
    /// does in its `call`.
    DropsIt,
    /// Keeps the request and asks its body for its end, as hyper does right
    /// before writing a head.
    AsksTheBody,
    /// Keeps the request, asks nothing: hyper-util's legacy client while it
    /// waits for a connection.
    Connecting,
}

/// A request body with nothing to send that does not say it has ended (a
/// size hint of exactly 0 is as empty as `is_end_stream`).
#[derive(Debug, Default)]
struct ZeroHint;

impl http_body::Body for ZeroHint {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(None)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(0)
    }
}

/// Issues a bodiless GET through `inner` with `layer` and returns the error
/// and when it came, after the call.
async fn bodiless_over<B>(body: B, inner: Hides, layer: PhaseTimeoutLayer) -> (BoxError, Duration)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mock, mut handle) = mock::pair::<Request<RequestBody>, Response<Empty<Bytes>>>();
    let mut svc = PhaseTimeout::new(mock, layer);
    let start = Instant::now();
    let fut = ServiceExt::<Request<B>>::ready(&mut svc)
        .await
        .unwrap()
        .call(Request::get("/").body(body).unwrap());
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        let kept = match inner {
            Hides::DropsIt => {
                drop(req);
                None
            }
            Hides::AsksTheBody => {
                assert!(req.body().is_end_stream() || req.body().size_hint().exact() == Some(0));
                Some(req)
            }
            Hides::Connecting => Some(req),
        };
        // The response never comes; the sender stays.
        sleep(Duration::from_secs(3600)).await;
        drop((kept, send, handle));
    });
    let err = fut.await.unwrap_err();
    let took = start.elapsed();
    server.abort();
    (err, took)
}

#[tokio::test(start_paused = true)]
async fn bodiless_read_over_a_hidden_connection_starts_at_the_call() {
    let read = ms(1000);
    let layer = PhaseTimeoutLayer::new().read(read).total(ms(5000));
    for inner in [Hides::DropsIt, Hides::AsksTheBody] {
        for (body, err_took) in [
            (
                "empty",
                bodiless_over(Empty::<Bytes>::new(), inner, layer).await,
            ),
            ("zero hint", bodiless_over(ZeroHint, inner, layer).await),
        ] {
            let (err, took) = err_took;
            let e = elapsed(&err);
            assert_eq!(e.phase(), Phase::Read, "{inner:?}, {body}: {err}");
            // Exactly one limit after the call, on the paused clock.
            assert_eq!((took, e.elapsed()), (read, read), "{inner:?}, {body}");
            assert_eq!(e.bytes_sent(), 0);
        }
    }
    // A request nobody has taken to write yet (the legacy client still
    // connecting) is in the connect phase: `read` has not started.
    let (err, took) = bodiless_over(Empty::<Bytes>::new(), Hides::Connecting, layer).await;
    assert_eq!(elapsed(&err).phase(), Phase::Total, "{err}");
    assert_eq!(took, ms(5000));
}

/// A request with a body over a hidden connection: `send` starts at the
/// first frame pulled and `read` when the body ends, as without the
/// tracker; the call itself starts neither.
#[tokio::test(start_paused = true)]
async fn body_over_a_hidden_connection_starts_at_its_frames() {
    let (mut svc, mut handle) = setup(PhaseTimeoutLayer::new().send(ms(500)).read(ms(1000)));
    let (tx, body) = Channel::new(1);
    let start = Instant::now();
    let fut = issue(&mut svc, Request::post("/").body(body).unwrap()).await;
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        // 2 s before the connection pulls the body (reqwest connecting):
        // no send stall while nothing was pulled.
        sleep(ms(2000)).await;
        let (parts, body) = req.into_parts();
        drop(parts);
        let n = drain(Request::new(body)).await.unwrap();
        sleep(Duration::from_secs(3600)).await;
        drop((send, handle));
        n
    });
    // Three frames 100 ms apart, then the end.
    tokio::spawn(feed(tx, 3, ms(100)));
    let err = fut.await.unwrap_err();
    let e = elapsed(&err);
    assert_eq!(e.phase(), Phase::Read, "{err}");
    assert_eq!(e.bytes_sent(), 3 * 1024);
    // Pulled from 2.0 s (one frame was queued by then, the others follow
    // 100 ms apart, the end 100 ms after the last, at 2.2 s): read fires 1 s
    // after the end; no send stall during the 2 s nothing was pulled.
    assert_eq!(start.elapsed(), ms(3200));
    server.abort();
}

// ------------------------------------------------------------ the zero rule
//
// A zero limit is already spent, in every phase: what it bounds fails at its
// first poll without being tried, however ready it is, and no time passes on
// the paused clock.

/// Moves the paused clock to the middle of a millisecond, where a timer due
/// "now" only fires at the next tick (as on the real clock): the zero rule
/// must not depend on timers.
async fn mid_tick() {
    advance(Duration::from_micros(500)).await;
}

/// Polls `fut` exactly once.
async fn poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

/// A service whose futures are ready with `value` on their first poll (or
/// never, when `ready` is false) and count how often they were polled.
fn counted<R, T: Clone>(
    value: T,
    ready: bool,
    polls: Arc<AtomicUsize>,
) -> impl Service<
    R,
    Response = T,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<T, BoxError>>,
> {
    tower::service_fn(move |_: R| {
        let (value, polls) = (value.clone(), polls.clone());
        std::future::poll_fn(move |_| {
            polls.fetch_add(1, Ordering::SeqCst);
            if ready {
                Poll::Ready(Ok(value.clone()))
            } else {
                Poll::Pending
            }
        })
    })
}

fn ready_response(body: &'static str) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(body.as_bytes())))
}

#[tokio::test(start_paused = true)]
async fn zero_connect_fails_untried_even_when_ready() {
    mid_tick().await;
    for ready in [false, true] {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut svc = ConnectTimeoutLayer::new(Duration::ZERO).layer(counted::<&str, u8>(
            1,
            ready,
            polls.clone(),
        ));
        let start = Instant::now();
        let mut fut = Box::pin(svc.ready().await.unwrap().call("x"));
        let Poll::Ready(Err(err)) = poll_once(&mut fut).await else {
            panic!("a zero connect limit fails at the first poll (ready={ready})");
        };
        // ConnectTimeout's Elapsed sits inside an io::Error of kind TimedOut.
        let e =
            crate::find_cause::<Elapsed>(err.as_ref()).expect("an Elapsed inside the io::Error");
        assert_eq!(e.phase(), Phase::Connect);
        assert_eq!((e.limit(), e.elapsed()), (Duration::ZERO, Duration::ZERO));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(polls.load(Ordering::SeqCst), 0, "the connector was tried");
    }
    // The smallest non-zero limit is a real limit: a ready connect wins.
    let polls = Arc::new(AtomicUsize::new(0));
    let mut svc = ConnectTimeoutLayer::new(Duration::from_nanos(1))
        .layer(counted::<&str, u8>(7, true, polls));
    let mut fut = Box::pin(svc.ready().await.unwrap().call("x"));
    assert!(matches!(poll_once(&mut fut).await, Poll::Ready(Ok(7))));
}

#[tokio::test(start_paused = true)]
async fn zero_send_read_total_fail_untried_even_when_ready() {
    let z = Duration::ZERO;
    let s = Duration::from_secs(1);
    let by_layer = |layer: PhaseTimeoutLayer| (layer, None);
    let by_override =
        |o: PhaseOverride| (PhaseTimeoutLayer::new().send(s).read(s).total(s), Some(o));
    let cases = [
        (by_layer(PhaseTimeoutLayer::new().send(z)), Phase::Send),
        (by_layer(PhaseTimeoutLayer::new().read(z)), Phase::Read),
        (by_layer(PhaseTimeoutLayer::new().total(z)), Phase::Total),
        (
            by_layer(PhaseTimeoutLayer::new().send(s).read(z).total(z)),
            Phase::Read,
        ),
        (
            by_layer(PhaseTimeoutLayer::new().send(z).read(z).total(z)),
            Phase::Send,
        ),
        (by_override(PhaseOverride::new().send(z)), Phase::Send),
        (by_override(PhaseOverride::new().total(z)), Phase::Total),
    ];
    mid_tick().await;
    for (i, ((layer, over), phase)) in cases.into_iter().enumerate() {
        for ready in [false, true] {
            let polls = Arc::new(AtomicUsize::new(0));
            let inner = counted(ready_response("ok"), ready, polls.clone());
            let mut svc = PhaseTimeout::new(inner, layer);
            let mut req = Request::post("/")
                .body(Full::new(Bytes::from_static(b"up")))
                .unwrap();
            if let Some(o) = over {
                req.extensions_mut().insert(o);
            }
            let start = Instant::now();
            let svc = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc);
            let mut fut = Box::pin(svc.await.unwrap().call(req));
            let Poll::Ready(Err(err)) = poll_once(&mut fut).await else {
                panic!("case {i}: a zero limit fails at the first poll (ready={ready})");
            };
            let e = elapsed(&err);
            assert_eq!(e.phase(), phase, "case {i}: {err}");
            assert_eq!((e.limit(), e.elapsed()), (z, z), "case {i}");
            assert_eq!(start.elapsed(), z, "case {i}");
            assert_eq!(
                polls.load(Ordering::SeqCst),
                0,
                "case {i}: the inner future was polled"
            );
        }
    }
    let mut svc = PhaseTimeout::new(
        counted(ready_response("ok"), true, Arc::default()),
        PhaseTimeoutLayer::new().total(z),
    );
    let err = ServiceExt::<Request<Empty<Bytes>>>::ready(&mut svc)
        .await
        .unwrap()
        .call(Request::new(Empty::<Bytes>::new()))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "total timed out after 0ns: response not complete (0 bytes sent, 0 bytes received)"
    );
}

#[tokio::test(start_paused = true)]
async fn zero_body_stall_fails_every_body_not_ended() {
    let z = Duration::ZERO;
    let stall_zero = [
        (
            PhaseTimeoutLayer::new()
                .read(Duration::from_secs(1))
                .read_body_stall(z),
            None,
        ),
        (
            PhaseTimeoutLayer::new().read(Duration::from_secs(1)),
            Some(PhaseOverride::new().read_body_stall(z)),
        ),
    ];
    mid_tick().await;
    for (i, (layer, over)) in stall_zero.into_iter().enumerate() {
        // The head is not bounded by the body stall: it is delivered.
        let polls = Arc::new(AtomicUsize::new(0));
        let mut svc =
            PhaseTimeout::new(counted(ready_response("data"), true, polls.clone()), layer);
        let mut req = Request::new(Empty::<Bytes>::new());
        if let Some(o) = over {
            req.extensions_mut().insert(o);
        }
        let ready = ServiceExt::<Request<Empty<Bytes>>>::ready(&mut svc);
        let res = ready.await.unwrap().call(req).await.unwrap();
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // Its body is all there, but not ended: it fails at once.
        let start = Instant::now();
        let mut body = res.into_body();
        let err = body.frame().await.unwrap().unwrap_err();
        let e = elapsed(&err);
        assert_eq!(e.phase(), Phase::Read, "case {i}: {err}");
        assert_eq!((e.limit(), e.bytes_received()), (z, 0), "case {i}");
        assert_eq!(start.elapsed(), z);

        // A body that has already ended (204, HEAD, empty) just ends.
        let empty = Response::new(Full::new(Bytes::new()));
        let mut svc = PhaseTimeout::new(counted(empty, true, Arc::default()), layer);
        let mut req = Request::new(Empty::<Bytes>::new());
        if let Some(o) = over {
            req.extensions_mut().insert(o);
        }
        let ready = ServiceExt::<Request<Empty<Bytes>>>::ready(&mut svc);
        let res = ready.await.unwrap().call(req).await.unwrap();
        assert!(res.into_body().frame().await.is_none(), "case {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn connect_timeout_names_its_phase() {
    let (inner, mut handle) = mock::pair::<&'static str, ()>();
    let mut svc = ConnectTimeoutLayer::new(ms(250)).layer(inner);
    let start = Instant::now();
    let fut = svc.ready().await.unwrap().call("127.0.0.1:1");
    let _held = tokio::spawn(async move { handle.next_request().await });
    let err = fut.await.unwrap_err();
    let e = crate::find_cause::<Elapsed>(err.as_ref()).expect("an Elapsed inside the io::Error");
    assert_eq!(e.phase(), Phase::Connect);
    assert_eq!(start.elapsed(), ms(250));
    assert_eq!(
        err.to_string(),
        "connect timed out after 250ms: connection not established"
    );
}

#[tokio::test(start_paused = true)]
async fn connect_ready_at_the_deadline_wins() {
    let (inner, mut handle) = mock::pair::<&'static str, u8>();
    let mut svc = ConnectTimeoutLayer::new(ms(250)).layer(inner);
    let mut fut = Box::pin(svc.ready().await.unwrap().call("x"));
    let (_, send) = handle.next_request().await.unwrap();
    advance(ms(400)).await;
    send.send_response(9);
    assert_eq!(fut.as_mut().await.unwrap(), 9);
}

#[tokio::test]
async fn large_frames_are_split_without_copying() {
    let data = Bytes::from(vec![1u8; 10 * MAX_FRAME + 5]);
    let base = data.as_ptr() as usize;
    let mut body = RequestBody::new(Full::new(data));
    assert_eq!(body.size_hint().exact(), Some(10 * MAX_FRAME as u64 + 5));
    let mut pieces = Vec::new();
    while let Some(frame) = body.frame().await {
        let piece = frame.unwrap().into_data().unwrap();
        assert!(piece.len() <= MAX_FRAME);
        pieces.push(piece);
    }
    assert_eq!(pieces.len(), 11);
    let mut offset = 0;
    for p in &pieces {
        // Zero-copy: every piece points into the original allocation.
        assert_eq!(p.as_ptr() as usize, base + offset);
        offset += p.len();
    }
    assert_eq!(offset, 10 * MAX_FRAME + 5);
    assert!(body.is_end_stream());
    let empty = RequestBody::new(Empty::<Bytes>::new());
    assert!(empty.is_end_stream());
}

use http_body::Body as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use tower_layer::Layer as _;

#[test]
fn services_give_back_their_inner_service() {
    let mut svc = PhaseTimeout::new(7u32, PhaseTimeoutLayer::new());
    assert_eq!(*svc.get_ref(), 7);
    *svc.get_mut() = 8;
    assert_eq!(svc.into_inner(), 8);

    let mut connect = ConnectTimeoutLayer::new(Duration::from_secs(1)).layer(1u8);
    assert_eq!(*connect.get_ref(), 1);
    *connect.get_mut() = 2;
    assert_eq!(connect.into_inner(), 2);
    assert_eq!(ConnectTimeout::new(3u8, Duration::ZERO).into_inner(), 3);
}
