//! Paused-time unit tests of the layer with `tower-test` mocks (no tracker:
//! the untracked rules, the limits, the bodies and the records).

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Empty, Full};
use tower::retry::budget::TpsBudget;
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

use super::*;
use crate::track::ConnectionExpired;
use crate::{BoxError, RequestBody};

type Body = Full<Bytes>;
type Inner = mock::Mock<Request<RequestBody>, Response<Empty<Bytes>>>;
type Handle = mock::Handle<Request<RequestBody>, Response<Empty<Bytes>>>;

fn reset() -> io::Error {
    io::Error::from(io::ErrorKind::ConnectionReset)
}

fn expired() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        ConnectionExpired {
            idle: Duration::from_secs(2),
            limit: Duration::from_secs(1),
        },
    )
}

fn setup(layer: RetryOnStaleConnectionLayer) -> (RetryOnStaleConnection<Inner>, Handle) {
    let (inner, handle) = mock::pair();
    (layer.layer(inner), handle)
}

fn request(method: http::Method) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri("http://127.0.0.1:1/x")
        .header("x-trace", "t-1")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap()
}

/// Calls `svc` with `req` once it is ready (the layer takes any body, so
/// `ServiceExt::ready` needs the request type named).
async fn issue<S, B>(svc: &mut S, req: Request<B>) -> S::Future
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    ServiceExt::<Request<B>>::ready(svc)
        .await
        .unwrap()
        .call(req)
}

fn not_retried(err: &BoxError) -> &NotRetried {
    err.downcast_ref::<NotRetried>()
        .unwrap_or_else(|| panic!("not a NotRetried: {err}"))
}

/// How long (paused time) the mock server waits for a request that should
/// not come before it stops.
const QUIET: Duration = Duration::from_secs(60);

/// Answers each request in turn with the next of `answers` (an error, or
/// `None` for a response), returning what the server saw; stops early when
/// no request comes within [`QUIET`].
fn serve(
    mut handle: Handle,
    answers: Vec<Option<io::Error>>,
) -> tokio::task::JoinHandle<Vec<(Request<()>, Bytes)>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        for answer in answers {
            let Ok(Some((req, send))) = tokio::time::timeout(QUIET, handle.next_request()).await
            else {
                break;
            };
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            seen.push((Request::from_parts(parts, ()), body));
            match answer {
                Some(e) => send.send_error(e),
                None => send.send_response(Response::new(Empty::new())),
            }
        }
        seen
    })
}

#[tokio::test(start_paused = true)]
async fn idempotent_request_reset_without_tracker_is_retried_once() {
    let (svc, handle) = setup(RetryOnStaleConnectionLayer::new());
    let server = serve(handle, vec![Some(reset()), None]);
    let res = svc.oneshot(request(http::Method::PUT)).await.unwrap();
    let retried = res.extensions().get::<Retried>().expect("marked retried");
    assert_eq!(retried.count(), 1);
    assert_eq!(retried.reasons(), [RetryReason::ConnectionClosed]);
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 2);
    // The retry is the same request: method, URI, headers, body.
    for (req, body) in &seen {
        assert_eq!(req.method(), http::Method::PUT);
        assert_eq!(req.uri(), "http://127.0.0.1:1/x");
        assert_eq!(req.headers()["x-trace"], "t-1");
        assert_eq!(body, "payload");
    }
}

#[tokio::test(start_paused = true)]
async fn a_capture_only_for_a_body_or_the_callers() {
    use crate::track::ConnectionCapture;
    let captured = |seen: &[(Request<()>, Bytes)]| -> Vec<bool> {
        seen.iter()
            .map(|(req, _)| req.extensions().get::<ConnectionCapture>().is_some())
            .collect()
    };
    // A bodiless request: none, on the first attempt or a retry.
    let (svc, handle) = setup(RetryOnStaleConnectionLayer::new());
    let server = serve(handle, vec![Some(reset()), None]);
    let mut bodiless = request(http::Method::GET);
    *bodiless.body_mut() = Full::new(Bytes::new());
    svc.oneshot(bodiless).await.unwrap();
    assert_eq!(captured(&server.await.unwrap()), [false, false]);
    // A body: one per attempt (its upload is abandoned through it).
    let (svc, handle) = setup(RetryOnStaleConnectionLayer::new());
    let server = serve(handle, vec![Some(reset()), None]);
    svc.oneshot(request(http::Method::PUT)).await.unwrap();
    assert_eq!(captured(&server.await.unwrap()), [true, true]);
    // The caller's capture is the first attempt's record; a retry gets a
    // fresh one (the caller's keeps pointing at the first attempt).
    let (svc, handle) = setup(RetryOnStaleConnectionLayer::new());
    let server = serve(handle, vec![Some(reset()), None]);
    let mut req = request(http::Method::GET);
    *req.body_mut() = Full::new(Bytes::new());
    // A flag set on the caller's shows through every clone of it.
    ConnectionCapture::get_or_insert(&mut req).hook();
    svc.oneshot(req).await.unwrap();
    let seen = server.await.unwrap();
    let hooked: Vec<_> = seen
        .iter()
        .map(|(req, _)| {
            req.extensions()
                .get::<ConnectionCapture>()
                .unwrap()
                .is_hooked()
        })
        .collect();
    assert_eq!(hooked, [true, false]);
}

#[tokio::test(start_paused = true)]
async fn post_reset_is_not_retried_and_says_why() {
    let (svc, handle) = setup(RetryOnStaleConnectionLayer::new());
    let server = serve(handle, vec![Some(reset()), None]);
    let err = svc.oneshot(request(http::Method::POST)).await.unwrap_err();
    let e = not_retried(&err);
    assert_eq!(e.rule(), Rule::NotIdempotent);
    assert_eq!(e.retries(), 0);
    assert_eq!(
        err.to_string(),
        "POST http://127.0.0.1:1: connection reset; \
         not retried: not idempotent, no Idempotency-Key (connection reuse unknown: untracked)"
    );
    let source = std::error::Error::source(e).unwrap();
    assert_eq!(
        source.downcast_ref::<io::Error>().unwrap().kind(),
        io::ErrorKind::ConnectionReset
    );
    assert_eq!(server.await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn post_with_idempotency_key_is_retried() {
    let (svc, handle) = setup(RetryOnStaleConnectionLayer::new());
    let server = serve(handle, vec![Some(reset()), None]);
    let mut req = request(http::Method::POST);
    req.headers_mut()
        .insert(IDEMPOTENCY_KEY, http::HeaderValue::from_static("k-1"));
    svc.oneshot(req).await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].0.headers()[IDEMPOTENCY_KEY], "k-1");
}

#[tokio::test(start_paused = true)]
async fn nothing_written_is_retried_for_any_method() {
    let (svc, handle) = setup(RetryOnStaleConnectionLayer::new());
    let server = serve(handle, vec![Some(expired()), None]);
    let res = svc.oneshot(request(http::Method::POST)).await.unwrap();
    assert_eq!(
        res.extensions().get::<Retried>().unwrap().reasons(),
        [RetryReason::NothingWritten]
    );
    assert_eq!(server.await.unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn attempts_are_bounded() {
    // Default: one retry, then the second failure is returned.
    let (svc, handle) = setup(RetryOnStaleConnectionLayer::new());
    let server = serve(handle, vec![Some(reset()), Some(reset()), None]);
    let err = svc.oneshot(request(http::Method::GET)).await.unwrap_err();
    let e = not_retried(&err);
    assert_eq!(e.rule(), Rule::RetriesExhausted);
    assert_eq!(e.retries(), 1);
    assert_eq!(e.retry_safe_reason(), Some(RetryReason::ConnectionClosed));
    assert_eq!(
        err.to_string(),
        "GET http://127.0.0.1:1: connection reset; not retried: retry limit reached after 1 retry, \
         though retry-safe: connection closed before a response head (reuse unknown)"
    );
    assert_eq!(server.await.unwrap().len(), 2);

    // Zero never retries.
    let (svc, handle) = setup(RetryOnStaleConnectionLayer::new().max_retries(0));
    let server = serve(handle, vec![Some(reset()), None]);
    let err = svc.oneshot(request(http::Method::GET)).await.unwrap_err();
    assert_eq!(not_retried(&err).rule(), Rule::RetriesExhausted);
    assert_eq!(server.await.unwrap().len(), 1);

    // A huge limit still stops when the failures stop being safe.
    let (svc, handle) = setup(RetryOnStaleConnectionLayer::new().max_retries(usize::MAX));
    let mut answers: Vec<_> = (0..20).map(|_| Some(reset())).collect();
    answers.push(Some(io::Error::from(io::ErrorKind::TimedOut)));
    let server = serve(handle, answers);
    let err = svc.oneshot(request(http::Method::GET)).await.unwrap_err();
    let e = not_retried(&err);
    assert_eq!((e.rule(), e.retries()), (Rule::Timeout, 20));
    assert_eq!(server.await.unwrap().len(), 21);
}

#[tokio::test(start_paused = true)]
async fn retried_keeps_the_first_reasons_and_counts_all() {
    let (svc, handle) = setup(RetryOnStaleConnectionLayer::new().max_retries(12));
    let mut answers: Vec<_> = (0..12).map(|_| Some(reset())).collect();
    answers.push(None);
    let server = serve(handle, answers);
    let res = svc.oneshot(request(http::Method::GET)).await.unwrap();
    let retried = res.extensions().get::<Retried>().unwrap();
    assert_eq!(retried.count(), 12);
    assert_eq!(retried.reasons().len(), 8);
    assert_eq!(server.await.unwrap().len(), 13);
}

#[tokio::test(start_paused = true)]
async fn budget_is_shared_by_clones_and_refuses_storms() {
    // One retry in reserve, nothing earned by deposits.
    let layer =
        RetryOnStaleConnectionLayer::new().budget(TpsBudget::new(Duration::from_secs(1), 1, 0.0));
    let (svc, handle) = setup(layer);
    let server = serve(handle, vec![Some(reset()), None, Some(reset())]);
    svc.clone()
        .oneshot(request(http::Method::GET))
        .await
        .expect("the reserve pays for one retry");
    let err = svc.oneshot(request(http::Method::GET)).await.unwrap_err();
    let e = not_retried(&err);
    assert_eq!(e.rule(), Rule::BudgetExhausted);
    assert_eq!(
        err.to_string(),
        "GET http://127.0.0.1:1: connection reset; not retried: retry budget exhausted, \
         though retry-safe: connection closed before a response head (reuse unknown)"
    );
    assert_eq!(server.await.unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn responses_are_never_retried_and_unmarked() {
    let (svc, handle) = setup(RetryOnStaleConnectionLayer::new());
    let server = serve(handle, vec![None]);
    let res = svc.oneshot(request(http::Method::POST)).await.unwrap();
    assert!(res.extensions().get::<Retried>().is_none());
    assert_eq!(server.await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn errors_that_are_not_connection_failures_are_not_retried() {
    let (svc, handle) = setup(RetryOnStaleConnectionLayer::new());
    let server = serve(
        handle,
        vec![Some(io::Error::other("bad certificate")), None],
    );
    let err = svc.oneshot(request(http::Method::GET)).await.unwrap_err();
    assert_eq!(not_retried(&err).rule(), Rule::NotConnectionFailure);
    assert_eq!(server.await.unwrap().len(), 1);
}

// ---------------------------------------------------------------------------
// The replay buffer mode.

/// A streamed (non-`Clone`) body of `frames` frames of `size` bytes.
fn streamed(frames: usize, size: usize) -> Channel<Bytes> {
    let (mut tx, body) = Channel::new(1);
    tokio::spawn(async move {
        for i in 0..frames {
            if tx
                .send_data(Bytes::from(vec![i as u8; size]))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    body
}

#[tokio::test(start_paused = true)]
async fn streamed_body_within_the_limit_is_replayed() {
    let (mut svc, mut handle) = setup(RetryOnStaleConnectionLayer::new());
    let req = Request::put("/").body(streamed(4, 1000)).unwrap();
    let fut = issue(&mut svc, req).await;
    let server = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for answer in [Some(reset()), None] {
            let (req, send) = handle.next_request().await.unwrap();
            bodies.push(req.into_body().collect().await.unwrap().to_bytes());
            match answer {
                Some(e) => send.send_error(e),
                None => send.send_response(Response::new(Empty::new())),
            }
        }
        bodies
    });
    fut.await.unwrap();
    let bodies = server.await.unwrap();
    assert_eq!(bodies[0].len(), 4000);
    assert_eq!(bodies[0], bodies[1]);
}

#[tokio::test(start_paused = true)]
async fn streamed_body_past_the_limit_is_not_retried() {
    let layer = RetryOnStaleConnectionLayer::new().replay_limit(2500);
    let (mut svc, mut handle) = setup(layer);
    let req = Request::put("/").body(streamed(4, 1000)).unwrap();
    let fut = issue(&mut svc, req).await;
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        // The attempt sends the whole body, past the limit, unbuffered.
        let body = req.into_body().collect().await.unwrap().to_bytes();
        send.send_error(reset());
        let more = tokio::time::timeout(Duration::from_secs(60), handle.next_request()).await;
        (body.len(), more.is_ok())
    });
    let err = fut.await.unwrap_err();
    let e = not_retried(&err);
    assert_eq!(e.rule(), Rule::BodyNotReplayable);
    assert_eq!(e.retry_safe_reason(), Some(RetryReason::ConnectionClosed));
    assert_eq!(
        err.to_string(),
        "PUT: connection reset; not retried: the body went past the 2500-byte replay buffer, \
         though retry-safe: connection closed before a response head (reuse unknown)"
    );
    assert_eq!(server.await.unwrap(), (4000, false));
}

#[tokio::test(start_paused = true)]
async fn unread_body_is_replayed_whatever_its_size() {
    // The first attempt fails before reading any of it (nothing written).
    let layer = RetryOnStaleConnectionLayer::new().replay_limit(0);
    let (mut svc, mut handle) = setup(layer);
    let req = Request::post("/").body(streamed(3, 1000)).unwrap();
    let fut = issue(&mut svc, req).await;
    let server = tokio::spawn(async move {
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_error(expired());
        let (req, send) = handle.next_request().await.unwrap();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        send.send_response(Response::new(Empty::new()));
        body.len()
    });
    fut.await.unwrap();
    assert_eq!(server.await.unwrap(), 3000);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_mid_attempt_stops_retrying() {
    let (mut svc, mut handle) = setup(RetryOnStaleConnectionLayer::new());
    let fut = issue(&mut svc, request(http::Method::GET)).await;
    let mut fut = Box::pin(fut);
    // Poll once so the first attempt is in flight, then drop the future.
    assert!(futures_poll_once(fut.as_mut()).await.is_none());
    let (_req, send) = handle.next_request().await.unwrap();
    drop(fut);
    // The answer goes nowhere, and no retry is ever sent.
    send.send_error(reset());
    let next = tokio::time::timeout(Duration::from_secs(60), handle.next_request()).await;
    assert!(next.is_err(), "a dropped request was retried");
}

/// Polls `fut` once.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut fut: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut fut).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// An inner service that counts its clones and fails its first `fail` calls
/// with a reset that wrote nothing (retry-safe for any method).
#[derive(Debug)]
struct Counting {
    clones: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    fail: usize,
}

impl Clone for Counting {
    fn clone(&self) -> Self {
        self.clones
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Counting {
            clones: self.clones.clone(),
            calls: self.calls.clone(),
            fail: self.fail,
        }
    }
}

impl Service<Request<RequestBody>> for Counting {
    type Response = Response<Empty<Bytes>>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<Empty<Bytes>>, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<RequestBody>) -> Self::Future {
        let n = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::future::ready(if n < self.fail {
            Err(Box::new(expired()) as BoxError)
        } else {
            Ok(Response::new(Empty::new()))
        })
    }
}

#[tokio::test]
async fn a_request_that_is_not_retried_clones_no_service_and_a_retry_clones_one() {
    use std::sync::atomic::Ordering::Relaxed;
    let inner = Counting {
        clones: Default::default(),
        calls: Default::default(),
        fail: 1,
    };
    let (clones, calls) = (inner.clones.clone(), inner.calls.clone());
    let mut svc = RetryOnStaleConnectionLayer::new().layer(inner);
    let at_construction = clones.load(Relaxed);
    // The first request fails once (nothing written) and is retried: one
    // clone of the spare for the retry.
    let res = issue(&mut svc, request(http::Method::POST))
        .await
        .await
        .unwrap();
    assert_eq!(
        res.extensions().get::<Retried>().map(Retried::count),
        Some(1)
    );
    assert_eq!(calls.load(Relaxed), 2);
    assert_eq!(clones.load(Relaxed), at_construction + 1);
    // Requests that succeed at once clone nothing.
    for _ in 0..10 {
        let res = issue(&mut svc, request(http::Method::GET))
            .await
            .await
            .unwrap();
        assert!(res.extensions().get::<Retried>().is_none());
    }
    assert_eq!(calls.load(Relaxed), 12);
    assert_eq!(clones.load(Relaxed), at_construction + 1);
}
