//! RetryOnStaleConnection against real loopback servers from the crate's
//! `testing` kit, through hyper-util's client. Server-side counters decide.
//!
//! The seed races run on the real clock: the server's idle timer racing the
//! client's reuse is what is under test. Every loop is bounded in count and
//! time; nothing asserts on speed.

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::time::{sleep, timeout};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_conn_lifecycle::phase_timeout::{PhaseTimeout, PhaseTimeoutLayer};
use tower_conn_lifecycle::retry::{
    NotRetried, Retried, RetryOnStaleConnection, RetryOnStaleConnectionLayer, RetryReason, Rule,
    IDEMPOTENCY_KEY,
};
use tower_conn_lifecycle::testing::{
    Http2FaultServer, IdleClosingServer, ResetServer, SeedWorkload, SilentServer,
};
use tower_conn_lifecycle::track::{
    ConnectionCapture, ConnectionState, TrackConnectionsLayer, TrackStats,
};
use tower_conn_lifecycle::RequestBody;
use tower_conn_lifecycle::{find_cause, BoxError};

use common::{eventually, http2_only, Tracked, POLL, SLACK, STEP_LIMIT};

/// The seed race's server idle timeout (Go's 1 s, scaled down).
const IDLE: Duration = Duration::from_millis(200);
const TASKS: usize = 10;
/// A seed race stops starting requests (and fails its count) after this
/// long.
const RACE_LIMIT: Duration = Duration::from_secs(120);

/// The read limit of the seed-race clients (see `race_client`): far above
/// any loopback answer, far below `STEP_LIMIT`.
const RACE_READ_LIMIT: Duration = Duration::from_secs(2);

type Retrying<S> = RetryOnStaleConnection<S>;
type Plain<C> = Client<C, RequestBody>;
type Phased = PhaseTimeout<Client<Tracked, RequestBody>>;

fn tracked_client(layer: RetryOnStaleConnectionLayer) -> (Retrying<Plain<Tracked>>, TrackStats) {
    let (client, stats) = common::tracked_client();
    (ServiceBuilder::new().layer(layer).service(client), stats)
}

fn untracked_client(layer: RetryOnStaleConnectionLayer) -> Retrying<Plain<HttpConnector>> {
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    ServiceBuilder::new().layer(layer).service(client)
}

fn h2_client() -> Retrying<Plain<Tracked>> {
    let (client, _) = common::tracked_client_with(&http2_only(), HttpConnector::new());
    ServiceBuilder::new()
        .layer(RetryOnStaleConnectionLayer::new())
        .service(client)
}

/// Sends `n` concurrent requests (`method`, distinct bodies) through the
/// HTTP/2 client and returns each one's body and retry record.
async fn h2_batch(
    method: Method,
    url: &str,
    n: usize,
) -> Vec<Result<(Bytes, Option<Retried>), BoxError>> {
    let svc = h2_client();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let svc = svc.clone();
        let req = http::Request::builder()
            .method(method.clone())
            .uri(url)
            .body(Full::new(Bytes::from(format!("request-{i}"))))
            .unwrap();
        tasks.spawn(async move { send(&svc, req).await });
    }
    let mut results = Vec::with_capacity(n);
    while let Some(result) = tasks.join_next().await {
        results.push(result.unwrap());
    }
    results
}

fn request(method: Method, url: &str, body: &'static [u8]) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

/// Sends `req`, reads the whole body; returns it with the retry record.
async fn send<S, B, RB>(
    svc: &S,
    req: http::Request<B>,
) -> Result<(Bytes, Option<Retried>), BoxError>
where
    S: Service<http::Request<B>, Response = http::Response<RB>, Error = BoxError> + Clone,
    RB: http_body::Body<Data = Bytes>,
    RB::Error: Into<BoxError>,
{
    let res = timeout(STEP_LIMIT, svc.clone().oneshot(req))
        .await
        .map_err(|_| "request did not complete")??;
    let retried = res.extensions().get::<Retried>().cloned();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(Into::<BoxError>::into)?
        .to_bytes();
    Ok((body, retried))
}

fn not_retried(err: &BoxError) -> &NotRetried {
    find_cause::<NotRetried>(err.as_ref()).unwrap_or_else(|| panic!("not a NotRetried: {err:?}"))
}

// ---------------------------------------------------------------------------
// The seed race (the kit's `SeedWorkload`): sequential requests, gaps
// uniform in [0.99, 1.0) x IDLE.

#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    ok: u64,
    retries: u64,
    reasons: Vec<RetryReason>,
    errors: Vec<(Rule, String)>,
}

/// A seed-race client: Retry over PhaseTimeout over a tracked client, as
/// the module docs stack them.
///
/// The read limit bounds a hang that is not this crate's: without
/// PhaseTimeout in the stack, about once in 10^4 stale-race requests hyper
/// hands a request to a connection whose task is ending, and the request is
/// neither written nor failed — forever (the bare hyper-util client does it
/// too). The limit turns it into a timeout, which the tracker proves safe to
/// retry: nothing of it was written on a connection that is now closed.
fn race_client() -> Retrying<Phased> {
    let (client, _) = common::tracked_client();
    ServiceBuilder::new()
        .layer(RetryOnStaleConnectionLayer::new())
        // `total` as well: a request hyper never writes (see the rule table's
        // timeout exception) must end in a timeout the retry layer can judge,
        // whatever the read clock saw.
        .layer(
            PhaseTimeoutLayer::new()
                .read(RACE_READ_LIMIT)
                .total(RACE_READ_LIMIT * 2),
        )
        .service(client)
}

/// A seed race on the kit's [`SeedWorkload`]: `TASKS` tasks of `requests`
/// sequential requests (`method`, body `seed`, an `Idempotency-Key` each if
/// `keyed`), each task on its own [`race_client`]; every success answered
/// `ok`, every failure the retry layer's [`NotRetried`].
async fn seed_race(
    server: &IdleClosingServer,
    requests: usize,
    method: Method,
    keyed: bool,
) -> Tally {
    let report = SeedWorkload::new(IDLE)
        .tasks(TASKS)
        .requests(requests)
        .method(method)
        .body("seed")
        .idempotency_keys(keyed)
        .keep_bodies(true)
        .time_limit(RACE_LIMIT)
        .request_limit(STEP_LIMIT)
        .run(&server.url(), |_| race_client())
        .await;
    let mut total = Tally {
        sent: report.requests() as u64,
        ..Tally::default()
    };
    for sample in report.samples() {
        match sample.outcome() {
            Ok(res) => {
                assert_eq!(sample.body(), Some(&Bytes::from("ok")));
                total.ok += 1;
                if let Some(r) = res.extensions().get::<Retried>() {
                    total.retries += r.count() as u64;
                    total.reasons.extend_from_slice(r.reasons());
                }
            }
            Err(e) => total
                .errors
                .push((not_retried(e).rule(), format!("{e} <- {:?}", e.source()))),
        }
    }
    assert_eq!(
        total.sent,
        (TASKS * requests) as u64,
        "the race hit its time limit"
    );
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_seed_race_has_no_errors_and_records_retries() {
    let server = IdleClosingServer::start(IDLE).await.unwrap();
    let tally = seed_race(&server, 100, Method::GET, false).await;
    assert!(tally.errors.is_empty(), "{:?}", tally.errors);
    assert_eq!(tally.ok, 1000);
    assert!(tally.retries > 0, "the race never happened: {tally:?}");
    // Every GET was processed exactly once: retried attempts never reached
    // the server's request handling.
    assert_eq!(server.requests_by_method(&Method::GET), 1000);
    eprintln!(
        "GET seed race: {} ok, {} retries ({:?}), {} idle closes",
        tally.ok,
        tally.retries,
        count(&tally.reasons),
        server.idle_closes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_seed_race_never_duplicates_and_names_the_rule() {
    let server = IdleClosingServer::start(IDLE).await.unwrap();
    let tally = seed_race(&server, 50, Method::POST, false).await;
    // Nothing duplicated, nothing lost: the server processed exactly the
    // POSTs the clients saw succeed.
    assert_eq!(server.posts(), tally.ok);
    assert_eq!(tally.ok + tally.errors.len() as u64, 500);
    // The race did fail some POSTs, and each says why it was not retried.
    assert!(!tally.errors.is_empty(), "the race never happened");
    for (rule, text) in &tally.errors {
        assert_eq!(*rule, Rule::NotIdempotent, "{text}");
        assert!(
            text.starts_with("POST http://127.0.0.1:")
                && text.contains(
                    "; not retried: not idempotent, no Idempotency-Key (reused connection)"
                ),
            "{text}"
        );
    }
    // A POST without a key is only ever retried when nothing was written.
    assert!(tally
        .reasons
        .iter()
        .all(|r| *r == RetryReason::NothingWritten));
    eprintln!(
        "POST seed race: {} ok, {} not retried, {} retries ({:?})",
        tally.ok,
        tally.errors.len(),
        tally.retries,
        count(&tally.reasons)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_post_seed_race_has_no_errors_and_no_duplicates() {
    let server = IdleClosingServer::start(IDLE).await.unwrap();
    let tally = seed_race(&server, 50, Method::POST, true).await;
    assert!(tally.errors.is_empty(), "{:?}", tally.errors);
    assert_eq!(tally.ok, 500);
    assert_eq!(server.posts(), 500);
    assert_eq!(server.distinct_keys(), 500);
    assert_eq!(server.duplicate_keys(), 0);
    assert!(tally.retries > 0, "the race never happened: {tally:?}");
    eprintln!(
        "keyed POST seed race: {} ok, {} retries ({:?})",
        tally.ok,
        tally.retries,
        count(&tally.reasons)
    );
}

fn count(reasons: &[RetryReason]) -> Vec<(RetryReason, usize)> {
    let mut out: Vec<(RetryReason, usize)> = Vec::new();
    for r in reasons {
        match out.iter_mut().find(|(k, _)| k == r) {
            Some((_, n)) => *n += 1,
            None => out.push((*r, 1)),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Deterministic failures.

#[tokio::test]
async fn reset_on_a_fresh_connection_is_returned_after_one_attempt() {
    let server = ResetServer::builder().start().await.unwrap();
    let (svc, _) = tracked_client(RetryOnStaleConnectionLayer::new().max_retries(3));
    let err = send(&svc, request(Method::GET, &server.url(), b""))
        .await
        .unwrap_err();
    let e = not_retried(&err);
    assert_eq!(e.rule(), Rule::FreshConnection);
    assert_eq!(e.retries(), 0);
    let text = err.to_string();
    assert!(
        text.starts_with("GET http://127.0.0.1:")
            && text.ends_with("; not retried: the connection was new, not a stale one"),
        "{text}"
    );
    assert_eq!(server.attempts(), 1);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn stale_reused_connection_is_retried_on_a_new_one() {
    // The second request of every connection is reset before it is read.
    let server = common::stale_on_reuse().await;
    let (svc, stats) = tracked_client(RetryOnStaleConnectionLayer::new());
    let (body, retried) = send(&svc, request(Method::PUT, &server.url(), b"abc"))
        .await
        .unwrap();
    assert_eq!((body, retried), ("3".into(), None));
    let (body, retried) = send(&svc, request(Method::PUT, &server.url(), b"abcd"))
        .await
        .unwrap();
    assert_eq!(body, "4");
    assert_eq!(retried.unwrap().reasons(), [RetryReason::StaleConnection]);
    assert_eq!(
        (server.attempts(), server.responses(), server.resets()),
        (3, 2, 1)
    );
    assert_eq!(stats.opened(), 2);
}

#[tokio::test]
async fn each_attempt_is_judged_by_its_own_connection() {
    // Connection 1 fails its second request (reused: retried); connection 2
    // fails its first (new: a real error). Were the retry judged by the
    // first attempt's connection, it would be retried again on a third.
    let server = ResetServer::builder()
        .fault_on(|connection, request| {
            (connection, request) == (1, 2) || (connection, request) == (2, 1)
        })
        .start()
        .await
        .unwrap();
    let (svc, _) = tracked_client(RetryOnStaleConnectionLayer::new().max_retries(3));
    send(&svc, request(Method::GET, &server.url(), b""))
        .await
        .unwrap();
    let mut req = request(Method::GET, &server.url(), b"");
    let first = ConnectionCapture::get_or_insert(&mut req);
    let err = send(&svc, req).await.unwrap_err();
    let e = not_retried(&err);
    assert_eq!((e.rule(), e.retries()), (Rule::FreshConnection, 1));
    assert_eq!((server.attempts(), server.connections()), (3, 2));
    // The caller's capture still shows the first attempt's connection.
    let state = first.state().expect("tracked");
    assert_eq!(state.info().request_number(), 2);
}

#[tokio::test]
async fn part_of_the_response_head_then_reset_is_not_retried() {
    let server = ResetServer::builder()
        .on_request(2)
        .partial_head(12)
        .start()
        .await
        .unwrap();
    let (svc, _) = tracked_client(RetryOnStaleConnectionLayer::new());
    send(&svc, request(Method::GET, &server.url(), b""))
        .await
        .unwrap();
    let err = send(&svc, request(Method::GET, &server.url(), b""))
        .await
        .unwrap_err();
    assert_eq!(not_retried(&err).rule(), Rule::ResponseStarted);
    let text = err.to_string();
    assert!(
        text.ends_with("; not retried: part of the response had arrived"),
        "{text}"
    );
    assert_eq!((server.attempts(), server.connections()), (2, 1));
}

type Replaying = RetryOnStaleConnection<Client<Tracked, RequestBody>>;

fn replaying_client() -> Replaying {
    let (client, _) = common::tracked_client();
    ServiceBuilder::new()
        .layer(RetryOnStaleConnectionLayer::new())
        .service(client)
}

/// A streamed (not `Clone`) body of `len` bytes in 16 KiB frames.
fn streamed(len: usize) -> Channel<Bytes> {
    let (mut tx, body) = Channel::new(1);
    tokio::spawn(async move {
        let mut left = len;
        while left > 0 {
            let n = left.min(16 * 1024);
            if tx.send_data(Bytes::from(vec![b'x'; n])).await.is_err() {
                return;
            }
            left -= n;
        }
    });
    body
}

fn put(url: &str, len: usize) -> http::Request<Channel<Bytes>> {
    http::Request::put(url)
        .header(http::header::CONTENT_LENGTH, len)
        .body(streamed(len))
        .unwrap()
}

#[tokio::test]
async fn body_past_the_replay_limit_is_not_retried() {
    // The second request is reset after 128 KiB of it arrived: the client
    // has read more than the 64 KiB it may buffer.
    let server = ResetServer::builder()
        .on_request(2)
        .reset_after_bytes(128 * 1024)
        .start()
        .await
        .unwrap();
    let svc = replaying_client();
    let (body, _) = send(&svc, put(&server.url(), 10)).await.unwrap();
    assert_eq!(body, "10");
    let err = send(&svc, put(&server.url(), 256 * 1024))
        .await
        .unwrap_err();
    let e = not_retried(&err);
    assert_eq!(e.rule(), Rule::BodyNotReplayable);
    assert_eq!(e.retry_safe_reason(), Some(RetryReason::StaleConnection));
    let text = err.to_string();
    assert!(
        text.contains("; not retried: the body went past the 65536-byte replay buffer, "),
        "{text}"
    );
    // One attempt of the large request, none processed.
    assert_eq!((server.attempts(), server.responses()), (2, 1));
}

#[tokio::test]
async fn body_within_the_replay_limit_is_replayed_whole() {
    let server = ResetServer::builder()
        .on_request(2)
        .reset_after_bytes(16 * 1024)
        .start()
        .await
        .unwrap();
    let svc = replaying_client();
    send(&svc, put(&server.url(), 10)).await.unwrap();
    let (body, retried) = send(&svc, put(&server.url(), 48 * 1024)).await.unwrap();
    assert_eq!(body, (48 * 1024).to_string());
    assert_eq!(retried.unwrap().reasons(), [RetryReason::StaleConnection]);
    assert_eq!((server.attempts(), server.responses()), (3, 2));
    assert_eq!(server.bytes_read(), 10 + 48 * 1024);
}

// ---------------------------------------------------------------------------
// Without the tracker.

#[tokio::test]
async fn untracked_stale_get_is_retried_and_post_is_not() {
    let server = common::stale_on_reuse().await;
    let svc = untracked_client(RetryOnStaleConnectionLayer::new());
    send(&svc, request(Method::GET, &server.url(), b""))
        .await
        .unwrap();
    let (_, retried) = send(&svc, request(Method::GET, &server.url(), b""))
        .await
        .unwrap();
    assert_eq!(retried.unwrap().reasons(), [RetryReason::ConnectionClosed]);
    // The retry's connection is now on its second request too.
    let err = send(&svc, request(Method::POST, &server.url(), b"x"))
        .await
        .unwrap_err();
    assert_eq!(not_retried(&err).rule(), Rule::NotIdempotent);
    assert!(err.to_string().contains("reuse unknown"), "{err}");
    assert_eq!((server.attempts(), server.responses()), (4, 2));
}

#[tokio::test]
async fn untracked_fresh_connection_failure_is_retried_once() {
    // What the tracker's reuse fact buys: without it, a new connection's
    // failure looks like a stale one (documented in the module docs).
    let server = ResetServer::builder().start().await.unwrap();
    let svc = untracked_client(RetryOnStaleConnectionLayer::new());
    let err = send(&svc, request(Method::GET, &server.url(), b""))
        .await
        .unwrap_err();
    assert_eq!(not_retried(&err).rule(), Rule::RetriesExhausted);
    assert_eq!(server.attempts(), 2);
    let (svc, _) = tracked_client(RetryOnStaleConnectionLayer::new());
    send(&svc, request(Method::GET, &server.url(), b""))
        .await
        .unwrap_err();
    assert_eq!(server.attempts(), 3);
}

// ---------------------------------------------------------------------------
// HTTP/2.

#[tokio::test]
async fn h2_refused_stream_is_retried() {
    let server = Http2FaultServer::builder()
        .refuse_streams(1)
        .start()
        .await
        .unwrap();
    let svc = h2_client();
    let (body, retried) = send(&svc, request(Method::POST, &server.url(), b"once"))
        .await
        .unwrap();
    assert_eq!(body, "ok");
    assert_eq!(retried.unwrap().reasons(), [RetryReason::RefusedStream]);
    assert_eq!((server.refused(), server.processed()), (1, 1));
    assert_eq!(server.streams(), 2);
    assert_eq!(server.distinct_keys(), 1);
}

#[tokio::test]
async fn h2_goaway_in_a_batch_every_request_succeeds_once() {
    const BATCH: usize = 50;
    let server = Http2FaultServer::builder()
        .go_away_after(5)
        .start()
        .await
        .unwrap();
    let mut retries = 0;
    for result in h2_batch(Method::PUT, &server.url(), BATCH).await {
        let (body, retried) = result.unwrap();
        assert_eq!(body, "ok");
        retries += retried.map_or(0, |r| {
            assert!(r
                .reasons()
                .iter()
                .all(|r| matches!(r, RetryReason::GoAway | RetryReason::NothingWritten)));
            r.count()
        });
    }
    // Every request processed exactly once.
    assert_eq!(server.processed(), BATCH as u64);
    assert_eq!(server.distinct_keys(), BATCH as u64);
    assert_eq!(server.duplicate_keys(), 0);
    // And the GOAWAY really cut the batch.
    assert_eq!(server.go_aways(), 1);
    assert!(server.ignored() > 0, "no stream was above the GOAWAY");
    assert!(retries > 0);
    assert_eq!(server.connections(), 2);
}

// ---------------------------------------------------------------------------
// A hostile caller.

#[tokio::test]
async fn dropping_the_future_abandons_the_attempt_and_closes_its_connection() {
    let server = SilentServer::start().await.unwrap();
    let (svc, stats) = tracked_client(RetryOnStaleConnectionLayer::new());
    let mut req = request(Method::GET, &server.url(), b"");
    let capture = ConnectionCapture::get_or_insert(&mut req);
    let mut fut = Box::pin(svc.clone().oneshot(req));
    // Drive the request until the server has it, then drop it.
    let seen = timeout(STEP_LIMIT, async {
        loop {
            tokio::select! {
                _ = &mut fut => panic!("a silent server answered"),
                _ = sleep(POLL) => if server.requests() == 1 { break },
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "the request never reached the server");
    drop(fut);
    let state: ConnectionState = capture.state().expect("tracked");
    assert!(state.is_poisoned());
    eventually(SLACK, "the abandoned connection to close", || {
        stats.open_now() == 0
    })
    .await;
    eventually(SLACK, "the server to see the close", || {
        server.connections() == 1
    })
    .await;
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn connection_refused_is_not_retried() {
    // A port that was just bound and released on 127.0.0.1: nothing listens.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (svc, stats) = tracked_client(RetryOnStaleConnectionLayer::new());
    let err = send(&svc, request(Method::GET, &format!("http://{addr}/"), b""))
        .await
        .unwrap_err();
    assert_eq!(not_retried(&err).rule(), Rule::ConnectFailed);
    assert_eq!(stats.opened(), 0);
}

/// Counts the connector's calls: connect attempts, successful or not.
fn counting_connector(
    connect: Duration,
) -> (
    impl Service<
            http::Uri,
            Response = impl hyper::rt::Read
                           + hyper::rt::Write
                           + hyper_util::client::legacy::connect::Connection
                           + Unpin
                           + Send
                           + 'static,
            Error = BoxError,
            Future = impl Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let connector = ServiceBuilder::new()
        .map_request(move |uri: http::Uri| {
            counted.fetch_add(1, Ordering::Relaxed);
            uri
        })
        .layer(tower_conn_lifecycle::connect_timeout::ConnectTimeoutLayer::new(connect))
        .layer(TrackConnectionsLayer::new())
        .service(HttpConnector::new());
    (connector, calls)
}

#[tokio::test]
async fn connect_timeouts_are_retried_only_when_enabled() {
    use std::sync::atomic::Ordering;
    let hole = tower_conn_lifecycle::testing::Blackhole::start()
        .await
        .unwrap();
    for (enabled, attempts, rule) in [
        (false, 1, Rule::ConnectTimeout),
        (true, 2, Rule::RetriesExhausted),
    ] {
        let (connector, calls) = counting_connector(Duration::from_millis(100));
        let client = Client::builder(TokioExecutor::new()).build::<_, RequestBody>(connector);
        let svc = ServiceBuilder::new()
            .layer(RetryOnStaleConnectionLayer::new().retry_connect_timeouts(enabled))
            .service(client);
        let err = send(&svc, request(Method::POST, &hole.url(), b"x"))
            .await
            .unwrap_err();
        let e = not_retried(&err);
        assert_eq!(e.rule(), rule, "{err}");
        assert_eq!(calls.load(Ordering::Relaxed), attempts);
        let elapsed = find_cause::<tower_conn_lifecycle::phase_timeout::Elapsed>(err.as_ref());
        assert_eq!(
            elapsed.map(|e| e.phase()),
            Some(tower_conn_lifecycle::phase_timeout::Phase::Connect)
        );
    }
}

// ---------------------------------------------------------------------------
// Under PhaseTimeout, as the module docs stack it.

type PhasedReplay = RetryOnStaleConnection<Phased>;

fn phased_client(phases: PhaseTimeoutLayer) -> PhasedReplay {
    let (client, _) = common::tracked_client();
    ServiceBuilder::new()
        .layer(RetryOnStaleConnectionLayer::new())
        .layer(phases)
        .service(client)
}

#[tokio::test]
async fn read_timeout_under_retry_is_never_retried() {
    let server = SilentServer::start().await.unwrap();
    let svc = phased_client(PhaseTimeoutLayer::new().read(Duration::from_millis(100)));
    // Chunked, so hyper reads the body to its end and PhaseTimeout sees the
    // upload finish (with a `Content-Length` and a body that cannot tell its
    // own end, the read clock would not start).
    let req = http::Request::put(server.url()).body(streamed(10)).unwrap();
    let res = timeout(STEP_LIMIT, svc.oneshot(req)).await.unwrap();
    let err = res.map(|_| ()).unwrap_err();
    assert_eq!(not_retried(&err).rule(), Rule::Timeout);
    // The display names the phase and limit; no retry was in question.
    let text = err.to_string();
    assert!(
        text.starts_with("PUT http://127.0.0.1:")
            && text.contains(": read timed out after ")
            && !text.contains("not retried"),
        "{text}"
    );
    eventually(SLACK, "the server to read the request", || {
        server.requests() == 1
    })
    .await;
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn stale_connection_under_phase_timeout_is_retried_with_a_replayed_body() {
    let server = common::stale_on_reuse().await;
    let svc = phased_client(
        PhaseTimeoutLayer::new()
            .send(Duration::from_secs(5))
            .read(Duration::from_secs(5)),
    );
    for (i, len) in [100usize, 20_000].into_iter().enumerate() {
        let res = timeout(STEP_LIMIT, svc.clone().oneshot(put(&server.url(), len)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.extensions().get::<Retried>().is_some(), i == 1);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, len.to_string());
    }
    assert_eq!((server.attempts(), server.responses()), (3, 2));
}

/// Retry over PhaseTimeout over a tracked client, stacked by hand, with
/// `phases`: the layer takes no connection capture of its own; the
/// attempt's record is PhaseTimeout's (when it took one) or the error's
/// connection.
fn hand_stack(phases: PhaseTimeoutLayer) -> Retrying<Phased> {
    let (client, _) = common::tracked_client();
    ServiceBuilder::new()
        .layer(RetryOnStaleConnectionLayer::new())
        .layer(phases)
        .service(client)
}

type HandStack = tower::util::BoxCloneService<
    http::Request<Full<Bytes>>,
    http::Response<http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>>,
    BoxError,
>;

/// `svc` with its response body boxed, for a list of stacks.
fn boxed<S, RB>(svc: S) -> HandStack
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<RB>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    tower::util::BoxCloneService::new(
        svc.map_response(|r: http::Response<RB>| r.map(|b| b.map_err(Into::into).boxed_unsync())),
    )
}

/// A POST reset on a reused connection after part of it was written, on
/// every hand stack (with and without PhaseTimeout's `send`/`read` clocks,
/// and Retry alone): never sent twice, refused as not idempotent on a
/// connection known to be reused; the same request with an
/// `Idempotency-Key`, and a GET, are retried as stale.
#[tokio::test]
async fn post_on_a_stale_connection_through_hand_stacks_is_never_duplicated() {
    let limits = PhaseTimeoutLayer::new()
        .send(Duration::from_secs(5))
        .read(Duration::from_secs(5));
    let stacks: Vec<(&str, HandStack)> = vec![
        ("send/read", boxed(hand_stack(limits))),
        (
            "total",
            boxed(hand_stack(
                PhaseTimeoutLayer::new().total(Duration::from_secs(10)),
            )),
        ),
        ("no limits", boxed(hand_stack(PhaseTimeoutLayer::new()))),
        (
            "retry alone",
            boxed(tracked_client(RetryOnStaleConnectionLayer::new()).0),
        ),
    ];
    for (name, svc) in stacks {
        // The second request of every connection is reset after its first
        // byte was read.
        let server = common::stale_on_reuse().await;
        let body: &'static [u8] = &[b'p'; 20_000];
        send(&svc, request(Method::POST, &server.url(), body))
            .await
            .unwrap();
        let err = send(&svc, request(Method::POST, &server.url(), body))
            .await
            .unwrap_err();
        let e = not_retried(&err);
        assert_eq!((e.rule(), e.retries()), (Rule::NotIdempotent, 0), "{name}");
        assert!(
            err.to_string().ends_with("(reused connection)"),
            "{name}: {err}"
        );
        assert_eq!((server.attempts(), server.resets()), (2, 1), "{name}");
        // Keyed, and a GET: stale, retried once on a new connection.
        let mut keyed = request(Method::POST, &server.url(), body);
        keyed
            .headers_mut()
            .insert(IDEMPOTENCY_KEY, "k-1".parse().unwrap());
        send(&svc, request(Method::GET, &server.url(), b""))
            .await
            .unwrap();
        let (_, retried) = send(&svc, keyed).await.unwrap();
        assert_eq!(
            retried.map(|r| r.reasons().to_vec()),
            Some(vec![RetryReason::StaleConnection]),
            "{name}"
        );
        // The keyed retry was the new connection's first request.
        let (_, retried) = send(&svc, request(Method::GET, &server.url(), b""))
            .await
            .unwrap();
        assert_eq!(
            retried.map(|r| r.reasons().to_vec()),
            Some(vec![RetryReason::StaleConnection]),
            "{name}"
        );
        assert_eq!((server.resets(), server.responses()), (3, 4), "{name}");
    }
}

/// A request without a body takes no capture: dropping its future with the
/// request in flight still closes the connection (hyper's dispatcher closes
/// it when the response future is gone once the request is written), and it
/// is never reused.
#[tokio::test]
async fn dropping_a_bodiless_request_without_a_capture_closes_its_connection() {
    let server = SilentServer::start().await.unwrap();
    let (svc, stats) = tracked_client(RetryOnStaleConnectionLayer::new());
    for (i, method) in [Method::GET, Method::DELETE].into_iter().enumerate() {
        let mut fut = Box::pin(svc.clone().oneshot(request(method, &server.url(), b"")));
        let seen = timeout(STEP_LIMIT, async {
            loop {
                tokio::select! {
                    _ = &mut fut => panic!("a silent server answered"),
                    _ = sleep(POLL) => if server.requests() == i as u64 + 1 { break },
                }
            }
        })
        .await;
        assert!(seen.is_ok(), "the request never reached the server");
        assert_eq!(stats.open_now(), 1);
        drop(fut);
        eventually(SLACK, "the abandoned connection to close", || {
            stats.open_now() == 0
        })
        .await;
    }
    assert_eq!((server.connections(), stats.opened()), (2, 2));
}

/// Mid-upload: a POST whose upload is stuck on a server that stopped
/// reading, dropped by its caller, has its connection closed at once. hyper
/// would write on (its dispatcher does not stop an upload whose response
/// future is gone): the layer takes a capture for every request with a
/// body, and abandons the attempt through it, without PhaseTimeout too.
#[tokio::test]
async fn dropping_the_future_mid_upload_closes_its_connection() {
    let server = tower_conn_lifecycle::testing::StopReadingServer::start(64 * 1024)
        .await
        .unwrap();
    let (svc, stats) = tracked_client(RetryOnStaleConnectionLayer::new());
    let req = http::Request::post(server.url())
        .body(Full::new(Bytes::from(vec![b'u'; 32 << 20])))
        .unwrap();
    let mut fut = Box::pin(svc.oneshot(req));
    let stuck = timeout(STEP_LIMIT, async {
        loop {
            tokio::select! {
                _ = &mut fut => panic!("a server that stopped reading answered"),
                _ = sleep(POLL) => if server.bytes_read() >= 64 * 1024 { break },
            }
        }
    })
    .await;
    assert!(stuck.is_ok(), "the upload never reached the server");
    // Let the socket buffers fill: the upload is stuck, not finished.
    let _ = timeout(Duration::from_millis(200), &mut fut).await;
    assert_eq!(stats.open_now(), 1);
    drop(fut);
    eventually(SLACK, "the abandoned upload's connection to close", || {
        stats.open_now() == 0
    })
    .await;
}

#[tokio::test]
async fn h2_several_refused_streams_in_a_batch_are_each_retried_once() {
    const BATCH: usize = 10;
    let server = Http2FaultServer::builder()
        .refuse_streams(3)
        .start()
        .await
        .unwrap();
    let mut retried = 0;
    for result in h2_batch(Method::POST, &server.url(), BATCH).await {
        let (_, r) = result.unwrap();
        if let Some(r) = r {
            assert_eq!(r.reasons(), [RetryReason::RefusedStream]);
            retried += 1;
        }
    }
    assert_eq!(retried, 3);
    assert_eq!((server.refused(), server.processed()), (3, BATCH as u64));
    assert_eq!(server.distinct_keys(), BATCH as u64);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn h2_refused_stream_replays_a_streamed_body() {
    let server = Http2FaultServer::builder()
        .refuse_streams(1)
        .start()
        .await
        .unwrap();
    let (client, _) =
        common::tracked_client_with::<RequestBody>(&http2_only(), HttpConnector::new());
    let svc = ServiceBuilder::new()
        .layer(RetryOnStaleConnectionLayer::new())
        .service(client);
    // 200 bytes: the server keys bodies of up to 256 bytes.
    let req = http::Request::post(server.url())
        .body(streamed(200))
        .unwrap();
    let (body, retried) = send(&svc, req).await.unwrap();
    assert_eq!(body, "ok");
    assert_eq!(retried.unwrap().reasons(), [RetryReason::RefusedStream]);
    assert_eq!((server.refused(), server.processed()), (1, 1));
    assert_eq!(server.distinct_keys(), 1);
}
