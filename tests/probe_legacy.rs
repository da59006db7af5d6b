//! Probes of the layers stacked by hand on hyper-util's legacy `Client`
//! (`Retry → PhaseTimeout → IdleExpiry → Client (TokioTimer) over
//! ConnectTimeout → TrackConnections → HttpConnector`, as the crate docs
//! and `benches/common` build it) and of the reqwest adapter under the
//! request-plane layers, against hostile raw loopback servers
//! (`common::raw`).
//!
//! Server-side facts decide: request heads per `x-req-id`, connections
//! accepted, bytes read, and when a connection was seen closed. These tests
//! run on the real clock; every loop is bounded in count and time, every
//! await that could hang is under a timeout, timing assertions allow named
//! slack, and no sleep is an assertion. Everything binds `127.0.0.1:0`.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioIo;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_conn_lifecycle::connect_timeout::ConnectTimeoutLayer;
use tower_conn_lifecycle::idle_expiry::{IdleExpiryLayer, IdleExpiryStats};
use tower_conn_lifecycle::phase_timeout::{Phase, PhaseTimeoutLayer};
use tower_conn_lifecycle::reqwest::{ClientBuilderExt, ReqwestService};
use tower_conn_lifecycle::retry::{NotRetried, RetryOnStaleConnectionLayer, Rule};
use tower_conn_lifecycle::track::{TrackConnectionsLayer, TrackStats};
use tower_conn_lifecycle::{error_chain, find_cause, BoxError, LayeredResponse, RequestBody};

use common::bounded;
use common::raw::*;

/// How late an event may be observed on a loaded 2-core CI machine (raw
/// servers under load, as in `hostile.rs`).
const LATE: Duration = Duration::from_millis(400);

/// Upper bound for any one test.
const TEST_LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// The stacks under test.

/// Every setting of the hand stack.
#[derive(Clone, Debug)]
struct HandStack {
    connect: Duration,
    phases: PhaseTimeoutLayer,
    expiry: IdleExpiryLayer,
    retry: RetryOnStaleConnectionLayer,
    /// The connector's kernel send buffer (`None`: the system's).
    send_buffer: Option<usize>,
}

impl Default for HandStack {
    fn default() -> Self {
        HandStack {
            connect: Duration::from_secs(2),
            phases: PhaseTimeoutLayer::new(),
            expiry: IdleExpiryLayer::new(Duration::from_secs(90)),
            retry: RetryOnStaleConnectionLayer::new(),
            send_buffer: None,
        }
    }
}

impl HandStack {
    /// The stack for request bodies `B`, and its tracker's counters.
    fn build<B>(
        &self,
    ) -> (
        impl Service<Request<B>, Response = LayeredResponse, Error = BoxError, Future: Send>
            + Clone
            + Send
            + Sync
            + 'static,
        TrackStats,
    )
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let mut http = HttpConnector::new();
        http.set_send_buffer_size(self.send_buffer);
        let track = TrackConnectionsLayer::new();
        let stats = track.stats();
        let connector = ServiceBuilder::new()
            .layer(ConnectTimeoutLayer::new(self.connect))
            .layer(track)
            .service(http);
        let pool = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .build::<_, RequestBody>(connector);
        let svc = ServiceBuilder::new()
            .layer(self.retry.clone())
            .layer(self.phases)
            .layer(self.expiry.clone())
            .service(pool);
        (svc, stats)
    }

    /// The stack for `Full<Bytes>` bodies.
    fn full(
        &self,
    ) -> impl Service<Request<Full<Bytes>>, Response = LayeredResponse, Error = BoxError, Future: Send>
           + Clone
           + Send
           + Sync
           + 'static {
        self.build::<Full<Bytes>>().0
    }
}

/// The hand stack with its defaults (no phase limit).
fn hand_stack(
) -> impl Service<Request<Full<Bytes>>, Response = LayeredResponse, Error = BoxError, Future: Send>
       + Clone
       + Send
       + Sync
       + 'static {
    HandStack::default().full()
}

/// `Retry → IdleExpiry → legacy Client` over the tracker, without
/// PhaseTimeout (the retry module's example stack, with IdleExpiry): the
/// retry layer's capture announces the attempts with a body.
fn unannounced_stack() -> impl Service<
    Request<Full<Bytes>>,
    Response = http::Response<
        impl http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
    >,
    Error = BoxError,
    Future: Send,
> + Clone
       + Send
       + Sync
       + 'static {
    let connector = ServiceBuilder::new()
        .layer(ConnectTimeoutLayer::new(Duration::from_secs(2)))
        .layer(TrackConnectionsLayer::new())
        .service(HttpConnector::new());
    let pool = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .build::<_, RequestBody>(connector);
    ServiceBuilder::new()
        .layer(RetryOnStaleConnectionLayer::new())
        .layer(IdleExpiryLayer::new(Duration::from_secs(90)))
        .service(pool)
}

/// reqwest (no proxy, the shared TLS configuration, `ConnectTimeoutLayer`
/// in its connector) under `Retry → PhaseTimeout(phases)` through
/// `ReqwestService`: the stacking `tests/reqwest.rs` and the `reqwest`
/// module docs show.
fn reqwest_stack(
    phases: PhaseTimeoutLayer,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = http::Response<
        impl http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
    >,
    Error = BoxError,
    Future: Send,
> + Clone
       + Send
       + Sync
       + 'static {
    let client = reqwest::Client::builder()
        .no_proxy()
        .shared_tls()
        .unwrap()
        .connector_layer(ConnectTimeoutLayer::new(Duration::from_secs(2)))
        .build()
        .unwrap();
    ServiceBuilder::new()
        .layer(RetryOnStaleConnectionLayer::new())
        .layer(phases)
        .service(ReqwestService::new(client))
}

// ---------------------------------------------------------------------------
// 1. The randomized hostile server.

/// Requests per randomized run (fewer than `hostile.rs`: two runs here).
const RANDOM_REQUESTS: usize = 1000;
const RANDOM_TASKS: usize = 4;
const RANDOM_RUN_LIMIT: Duration = Duration::from_secs(60);
/// The total limit per attempt.
const RANDOM_TOTAL: Duration = Duration::from_secs(10);

fn random_plan() -> RandomPlan {
    RandomPlan {
        requests: RANDOM_REQUESTS,
        tasks: RANDOM_TASKS,
        run_limit: RANDOM_RUN_LIMIT,
    }
}

fn print_expiry(expiry: &IdleExpiryStats, track: &TrackStats) {
    println!(
        "client               {} connections opened, {} open; expiry: {} expired, {} refused, \
         {} server idle closes; learning: {} lost races, {} held, {} agreed, {} learned",
        track.opened(),
        track.open_now(),
        expiry.expired(),
        expiry.refused(),
        expiry.server_idle_closes(),
        expiry.lost_races(),
        expiry.held(),
        expiry.agreed(),
        expiry.learned(),
    );
}

/// The randomized hostile server of `hostile.rs` against the hand stack:
/// no POST without a key seen twice, every error typed, every duplicate a
/// counted retry, and learning does not collapse reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_hostile_server_against_the_legacy_hand_stack() {
    let seed = seed();
    println!("HOSTILE_SEED={seed}");
    bounded(TEST_LIMIT, "the test", async move {
        let expiry = IdleExpiryLayer::new(Duration::from_secs(90));
        let stack = HandStack {
            phases: PhaseTimeoutLayer::new().total(RANDOM_TOTAL),
            expiry: expiry.clone(),
            ..HandStack::default()
        };
        let (client, track) = stack.build::<Full<Bytes>>();
        let run = randomized_run(client, seed, random_plan()).await;
        print_expiry(&expiry.stats(), &track);
        let report = checked(&run, seed);
        assert!(
            report.reused_ok * 4 >= report.ok,
            "seed {seed}: only {} of {} successes reused a connection",
            report.reused_ok,
            report.ok
        );
    })
    .await;
}

/// The randomized run's verdict: every request sent, and no violation.
fn checked(run: &RandomRun, seed: u64) -> RandomReport {
    let report = run.check();
    assert_eq!(run.all.len(), RANDOM_REQUESTS, "the run stopped early");
    assert!(
        report.violations.is_empty(),
        "seed {seed}: {} violations:\n{}",
        report.violations.len(),
        report.violations.join("\n")
    );
    report
}

/// The same without PhaseTimeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_hostile_server_against_retry_without_phase_timeout() {
    let seed = seed();
    println!("HOSTILE_SEED={seed}");
    bounded(TEST_LIMIT, "the test", async move {
        let run = randomized_run(unannounced_stack(), seed, random_plan()).await;
        checked(&run, seed);
    })
    .await;
}

/// The same server against reqwest under `Retry → PhaseTimeout`: the
/// untracked rules (a keyed POST or a GET may be retried after a 1xx, which
/// is documented), but never a POST without a key twice, and every error
/// typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_hostile_server_against_reqwest() {
    let seed = seed();
    println!("HOSTILE_SEED={seed}");
    bounded(TEST_LIMIT, "the test", async move {
        let client = reqwest_stack(PhaseTimeoutLayer::new().total(RANDOM_TOTAL));
        let run = randomized_run(client, seed, random_plan()).await;
        checked(&run, seed);
    })
    .await;
}

// ---------------------------------------------------------------------------
// 2. Response bytes during a large upload, then a reset.

/// The hand stack is tracked: the rules of the one-call client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_bytes_then_reset_on_the_legacy_hand_stack() {
    bounded(TEST_LIMIT, "the test", async {
        early_table(hand_stack, false, &EARLY_BYTES, tracked_expect).await;
        early_table(hand_stack, true, &EARLY_BYTES, tracked_expect).await;
        early_table(hand_stack, false, &[FirstBytes::Nothing], tracked_expect).await;
    })
    .await;
}

/// Through reqwest the retry layer sees only error chains: "before any
/// response byte" becomes "before a complete response head", and reuse is
/// unknown, so an idempotent or keyed request is retried once (and fails
/// the same way on the second connection); a POST without a key never is.
fn untracked_expect(_early: FirstBytes, kind: Kind) -> Expect {
    match kind {
        Kind::PostNoKey => Expect {
            heads: 1,
            rule: Rule::NotIdempotent,
        },
        Kind::PostWithKey | Kind::GetWithBody => Expect {
            heads: 2,
            rule: Rule::RetriesExhausted,
        },
    }
}

/// Without PhaseTimeout the retry layer's own capture announces each
/// attempt with a body (its record is exact): the tracked rules, as on the
/// hand stack. (Before, the upload's next write after a 1xx opened a second
/// inferred exchange, inexact, and the layer fell back to the untracked
/// rules: a keyed POST or a GET was sent again after response bytes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_bytes_then_reset_on_retry_without_phase_timeout() {
    bounded(TEST_LIMIT, "the test", async {
        let make = unannounced_stack;
        early_table(make, false, &EARLY_BYTES, tracked_expect).await;
        early_table(make, true, &EARLY_BYTES, tracked_expect).await;
        early_table(make, false, &[FirstBytes::Nothing], tracked_expect).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_bytes_then_reset_through_reqwest() {
    bounded(TEST_LIMIT, "the test", async {
        let make = || reqwest_stack(PhaseTimeoutLayer::new());
        early_table(make, false, &EARLY_BYTES, untracked_expect).await;
        early_table(make, true, &EARLY_BYTES, untracked_expect).await;
        early_table(make, false, &[FirstBytes::Nothing], untracked_expect).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// 3. The caller gives up during an upload.

/// The upload: far more than socket buffers hold.
const ABANDON_UPLOAD: usize = 32 * MIB;
/// The client's kernel send buffer (Linux doubles it), so that what is
/// still buffered when the caller gives up is small beside the upload.
const ABANDON_SNDBUF: usize = 64 * KIB;
/// The server reads the body slowly (one read per pause, at most 64 KiB:
/// about 6 MiB/s) so the upload is surely still going when the caller
/// gives up.
const ABANDON_PAUSE: Duration = Duration::from_millis(10);
/// How much of the body the server reads before the caller gives up.
const ABANDON_AT: u64 = 512 * KIB as u64;
/// The crate's bound on closing an abandoned connection (as in
/// `hostile.rs`).
const ABANDON_CLOSE_WITHIN: Duration = Duration::from_millis(100);
/// How long the server waits for the close at most.
const ABANDON_CLOSE_WAIT: Duration = Duration::from_secs(5);
/// What the buffers on the way can still hold after the caller gave up,
/// with room: far below the 32 MiB upload.
const ABANDON_MAX_BYTES_AFTER: u64 = 4 * MIB as u64;

/// How the caller gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GiveUp {
    /// Drops the response future while the body is being written.
    DropFuture,
    /// The server answers `413` (keep-alive) mid-upload; the caller drops
    /// the response.
    DropEarlyResponse,
}

/// What the server saw.
#[derive(Debug)]
struct Abandoned {
    heads: usize,
    read_before: u64,
    /// When the server signalled the test (the caller gives up right then).
    signalled: Instant,
    closed: Closed,
}

/// The server's two channels: its signal that the caller should give up
/// now, and its report once the connection closed.
struct AbandonServer {
    server: RawServer,
    signals: mpsc::UnboundedReceiver<()>,
    reports: mpsc::UnboundedReceiver<Abandoned>,
    /// Told by the test right after the caller gave up.
    gave_up: Arc<tokio::sync::Notify>,
}

/// Reads the head, then the body slowly; after `ABANDON_AT` bytes answers
/// `413` (`DropEarlyResponse`) and signals the test; once the test says
/// the caller gave up, reads at full speed until the close.
async fn abandon_server(give_up: GiveUp) -> AbandonServer {
    let (report, reports) = mpsc::unbounded_channel();
    let (signal, signals) = mpsc::unbounded_channel();
    let gave_up = Arc::new(tokio::sync::Notify::new());
    let told = gave_up.clone();
    let server = RawServer::start(move |mut conn| {
        let (report, signal, told) = (report.clone(), signal.clone(), told.clone());
        async move {
            if conn.read_head().await.is_none() {
                return;
            }
            let mut before = conn.buf.len() as u64;
            conn.buf.clear();
            // Bounded: every turn reads, and ABANDON_AT ends it.
            while before < ABANDON_AT {
                match conn.read_more(SERVER_IO_LIMIT).await {
                    Read::Data(n) => before += n as u64,
                    _ => break,
                }
                conn.buf.clear();
                sleep(ABANDON_PAUSE).await;
            }
            if give_up == GiveUp::DropEarlyResponse {
                conn.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
            let signalled = Instant::now();
            let _ = signal.send(());
            let closed = conn.wait_closed_after(&told, ABANDON_CLOSE_WAIT).await;
            let _ = report.send(Abandoned {
                heads: conn.counters.heads.load(Ordering::SeqCst),
                read_before: before,
                signalled,
                closed,
            });
        }
    })
    .await;
    AbandonServer {
        server,
        signals,
        reports,
        gave_up,
    }
}

type Boxed<B> = BoxCloneService<Request<B>, http::Response<()>, BoxError>;

/// `svc` with its response body discarded, boxed: the variants below differ
/// only in their layers.
fn boxed<S, B, RB>(svc: S) -> Boxed<B>
where
    S: Service<Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: 'static,
{
    BoxCloneService::new(svc.map_response(|r| r.map(|_| ())).map_err(Into::into))
}

/// Which of the crate's request-plane layers are stacked on the legacy
/// client (always over the tracker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layers {
    /// The whole hand stack.
    HandStack,
    /// `RetryOnStaleConnection` alone: its docs say an upload the caller
    /// gives up on is abandoned through it, also without PhaseTimeout.
    RetryOnly,
    /// `PhaseTimeout` alone (no limit set).
    PhaseTimeoutOnly,
}

/// The legacy client (TokioTimer) over the tracker and a connector with a
/// small send buffer, under `layers`.
fn legacy<B>(layers: Layers) -> Boxed<B>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let mut http = HttpConnector::new();
    http.set_send_buffer_size(Some(ABANDON_SNDBUF));
    let connector = TrackConnectionsLayer::new().layer(http);
    let mut builder = Client::builder(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    match layers {
        Layers::HandStack => boxed(
            HandStack {
                send_buffer: Some(ABANDON_SNDBUF),
                ..HandStack::default()
            }
            .build::<B>()
            .0,
        ),
        Layers::RetryOnly => boxed(
            RetryOnStaleConnectionLayer::new().layer(builder.build::<_, RequestBody>(connector)),
        ),
        Layers::PhaseTimeoutOnly => {
            boxed(PhaseTimeoutLayer::new().layer(builder.build::<_, RequestBody>(connector)))
        }
    }
}

/// A streamed upload of `len` bytes in 64 KiB frames (not `Clone`: the
/// retry layer's replay buffer path).
type Streamed = StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
>;

fn streamed(len: usize) -> Streamed {
    let all = Bytes::from(vec![b's'; len]);
    let frames: Vec<_> = (0..len)
        .step_by(64 * KIB)
        .map(|at| Ok(Frame::data(all.slice(at..(at + 64 * KIB).min(len)))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames))
}

/// One upload through `svc` that the caller gives up on; `Err` says what
/// broke the claim (the connection closed at once, the upload stopped).
async fn abandon_case<B>(svc: Boxed<B>, body: B, give_up: GiveUp) -> Result<String, String>
where
    B: 'static,
{
    let mut srv = abandon_server(give_up).await;
    let req = Request::post(srv.server.url("/upload"))
        .header(REQ_ID, "upload")
        .body(body)
        .unwrap();
    let mut fut = Box::pin(svc.oneshot(req));
    let dropped = match give_up {
        GiveUp::DropFuture => {
            tokio::select! {
                got = &mut fut => {
                    return Err(format!("the request ended before the caller gave up: {:?}",
                        got.map(|r| r.status()).map_err(|e| error_chain(e.as_ref()).to_string())));
                }
                _ = srv.signals.recv() => {}
                _ = sleep(STEP_LIMIT) => panic!("the server never signalled"),
            }
            drop(fut);
            Instant::now()
        }
        GiveUp::DropEarlyResponse => {
            let res = bounded(STEP_LIMIT, "the early response", fut)
                .await
                .map_err(|e| format!("no response: {}", error_chain(e.as_ref())))?;
            if res.status() != StatusCode::PAYLOAD_TOO_LARGE {
                return Err(format!("status {}", res.status()));
            }
            drop(res);
            Instant::now()
        }
    };
    // The server reads on from now (what it counts is what the upload
    // wrote from here, and what the buffers held).
    srv.gave_up.notify_one();
    let report = bounded(
        ABANDON_CLOSE_WAIT + STEP_LIMIT,
        "the server's report",
        srv.reports.recv(),
    )
    .await
    .expect("the server ended without a report");
    let closed_after = report
        .closed
        .at
        .map(|at| at.saturating_duration_since(dropped));
    let summary = format!(
        "heads {}, {} body bytes read before the caller gave up ({:?} after the server's signal), \
         then {} more bytes and {} ({closed_after:?} after the drop)",
        report.heads,
        report.read_before,
        dropped.saturating_duration_since(report.signalled),
        report.closed.bytes,
        report.closed.how,
    );
    if report.heads != 1 {
        return Err(format!("the server saw {} heads: {summary}", report.heads));
    }
    if closed_after.is_none_or(|d| d > ABANDON_CLOSE_WITHIN + LATE) {
        return Err(format!(
            "not closed within {ABANDON_CLOSE_WITHIN:?} (+{LATE:?}): {summary}"
        ));
    }
    if report.closed.bytes >= ABANDON_MAX_BYTES_AFTER {
        return Err(format!("the upload went on: {summary}"));
    }
    Ok(summary)
}

/// Runs `abandon_case` for each of `cases` with a full and a streamed
/// body; returns the failures.
async fn abandon_matrix(cases: &[(GiveUp, Layers)]) -> Vec<String> {
    let mut failures = Vec::new();
    for &(give_up, layers) in cases {
        let full = abandon_case(legacy(layers), body_of(ABANDON_UPLOAD), give_up).await;
        let stream = abandon_case(legacy(layers), streamed(ABANDON_UPLOAD), give_up).await;
        for (body, got) in [("full", full), ("streamed", stream)] {
            println!("{give_up:?} {layers:?} {body}: {got:?}");
            if let Err(e) = got {
                failures.push(format!("{give_up:?} {layers:?} {body}: {e}"));
            }
        }
    }
    failures
}

/// The caller drops the response future mid-upload: through the hand
/// stack, Retry alone or PhaseTimeout alone (each over the tracker) the
/// connection is closed at once and the upload stops (hyper alone writes
/// all 32 MiB of a `Full` body). An early `413` dropped by the caller
/// does the same through the hand stack and PhaseTimeout alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_upload_on_the_legacy_stack_stops_at_once() {
    bounded(TEST_LIMIT, "the test", async {
        let failures = abandon_matrix(&[
            (GiveUp::DropFuture, Layers::HandStack),
            (GiveUp::DropFuture, Layers::RetryOnly),
            (GiveUp::DropFuture, Layers::PhaseTimeoutOnly),
            (GiveUp::DropEarlyResponse, Layers::HandStack),
            (GiveUp::DropEarlyResponse, Layers::PhaseTimeoutOnly),
        ])
        .await;
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .await;
}

/// Regression: `Retry` alone over the tracked legacy client (the retry
/// module's own example stack) left the upload of an early final response
/// (`413`, keep-alive) the caller dropped running: hyper wrote all 32 MiB
/// to a server that had answered. Nothing announced the attempt without
/// PhaseTimeout, so the tracker did not know the upload was still running:
/// it completed the exchange at the 413's end, and the dropped response's
/// marker found nothing in flight to abandon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_early_response_through_retry_alone_stops_the_upload() {
    bounded(TEST_LIMIT, "the test", async {
        let failures = abandon_matrix(&[(GiveUp::DropEarlyResponse, Layers::RetryOnly)]).await;
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .await;
}

// ---------------------------------------------------------------------------
// 4. Slow but moving, and stalled, HTTP/1 exchanges against PhaseTimeout.

/// The send and read stall limits of these tests.
const STALL_SEND: Duration = Duration::from_millis(500);
const STALL_READ: Duration = Duration::from_millis(500);
/// The upload of the send-phase tests: far more than the buffers on the
/// way hold (the client's send buffer is `ABANDON_SNDBUF`, the server's
/// receive buffer `SERVER_RCVBUF`).
const TRICKLE_UPLOAD: usize = 3 * MIB;
/// The trickling server reads at most this much per read …
const TRICKLE_READ: usize = 64 * KIB;
/// … once per tick (about 1.3 MiB/s): every tick is progress, far inside
/// the stall limits, and the upload lasts well over a stall limit.
const TRICKLE_TICK: Duration = Duration::from_millis(50);
/// The response body of the response-trickle test: one byte per tick.
const TRICKLE_RESPONSE: usize = 30;
/// The stalling server reads this much of the upload, then stops reading.
const STALL_AFTER: u64 = 256 * KIB as u64;
/// How long a stalling server holds the connection open, silent: well
/// past every stall limit, so the client's timer decides.
const STALL_HOLD: Duration = Duration::from_secs(5);

/// What a pacing server does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pace {
    /// Reads the upload slowly (this many bytes per `TRICKLE_TICK`), then
    /// answers `200` at once.
    TrickleUpload(usize),
    /// Reads the upload at once, then sends the response body one byte per
    /// tick.
    TrickleResponse,
    /// Reads `STALL_AFTER` bytes of the upload, then stops reading.
    StallUpload,
    /// Reads the upload, then sends nothing.
    StallHead,
    /// Reads the upload, sends the head and 2 of 10 body bytes, then
    /// nothing.
    StallBody,
}

/// A server that paces every connection's first request by `pace`.
async fn pacing_server(pace: Pace) -> RawServer {
    RawServer::start(move |mut conn| async move {
        let Some(head) = conn.read_head().await else {
            return;
        };
        let len = head.content_length();
        match pace {
            Pace::TrickleUpload(per_tick) => {
                // A streamed body without a length comes chunked: its end
                // is the last chunk (the bodies here are all one letter,
                // so the pattern is unambiguous).
                let chunked = head
                    .header("transfer-encoding")
                    .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
                let done = |got: u64, tail: &[u8]| {
                    if chunked {
                        tail.ends_with(b"\r\n0\r\n\r\n")
                    } else {
                        got >= len
                    }
                };
                conn.scratch.truncate(TRICKLE_READ.min(per_tick));
                let mut got = conn.buf.len() as u64;
                let mut tail = std::mem::take(&mut conn.buf);
                let mut this_tick = 0;
                // Bounded: every turn reads, and the body's end ends it.
                while !done(got, &tail) {
                    if this_tick >= per_tick {
                        sleep(TRICKLE_TICK).await;
                        this_tick = 0;
                    }
                    match conn.read_more(SERVER_IO_LIMIT).await {
                        Read::Data(n) => {
                            got += n as u64;
                            this_tick += n;
                        }
                        _ => return,
                    }
                    tail.extend_from_slice(&conn.buf);
                    conn.buf.clear();
                    let keep = tail.len().saturating_sub(8);
                    tail.drain(..keep);
                }
                conn.write(OK_RESPONSE).await;
            }
            Pace::TrickleResponse => {
                if conn.skip_body(len).await < len {
                    return;
                }
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {TRICKLE_RESPONSE}\r\n\r\n");
                if !conn.write(head.as_bytes()).await {
                    return;
                }
                for _ in 0..TRICKLE_RESPONSE {
                    sleep(TRICKLE_TICK).await;
                    if !conn.write(b"t").await {
                        return;
                    }
                }
            }
            Pace::StallUpload => {
                conn.skip_body(STALL_AFTER).await;
                sleep(STALL_HOLD).await;
            }
            Pace::StallHead => {
                conn.skip_body(len).await;
                sleep(STALL_HOLD).await;
            }
            Pace::StallBody => {
                conn.skip_body(len).await;
                conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab")
                    .await;
                sleep(STALL_HOLD).await;
            }
        }
        // Keep the connection until the client closes it.
        conn.wait_closed(STALL_HOLD).await;
    })
    .await
}

/// The hand stack with the stall limits (and a small send buffer).
fn stall_stack(
) -> impl Service<Request<Full<Bytes>>, Response = LayeredResponse, Error = BoxError, Future: Send>
       + Clone
       + Send
       + Sync
       + 'static {
    HandStack {
        phases: PhaseTimeoutLayer::new()
            .send(STALL_SEND)
            .read(STALL_READ)
            .read_body_stall(STALL_READ),
        send_buffer: Some(ABANDON_SNDBUF),
        ..HandStack::default()
    }
    .full()
}

/// One POST of `len` bytes to a `pace` server through the stall stack:
/// the result, how long it took, and the server's counters.
async fn paced(pace: Pace, len: usize) -> (Result<Answer, Failure>, Duration, RawServer) {
    let server = pacing_server(pace).await;
    let req = Request::post(server.url("/paced"))
        .header(REQ_ID, "paced")
        .body(body_of(len))
        .unwrap();
    let started = Instant::now();
    let got = send(&stall_stack(), req).await;
    (got, started.elapsed(), server)
}

/// An upload (or a response body) that keeps moving slowly never fails by
/// a stall limit, however long it lasts in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_but_moving_exchanges_pass_the_stall_limits() {
    bounded(TEST_LIMIT, "the test", async {
        for (pace, len) in [
            (Pace::TrickleUpload(TRICKLE_READ), TRICKLE_UPLOAD),
            (Pace::TrickleResponse, KIB),
        ] {
            let (got, took, server) = paced(pace, len).await;
            let c = &server.counters;
            println!(
                "{pace:?}: {got:?} after {took:?}; server read {} bytes",
                c.bytes_read.load(Ordering::SeqCst)
            );
            let answer = got.unwrap_or_else(|f| panic!("{pace:?} failed: {}", f.chain));
            assert_eq!(answer.status, StatusCode::OK);
            assert!(answer.retried.is_none(), "{answer:?}");
            assert_eq!(c.heads_of("paced"), 1);
            assert!(c.bytes_read.load(Ordering::SeqCst) >= len as u64);
            // The exchange outlasted the stall limits by far: they were
            // tested, not dodged.
            assert!(
                took >= 2 * STALL_SEND.max(STALL_READ),
                "{pace:?} took only {took:?}"
            );
        }
    })
    .await;
}

/// A stalled exchange fails with the phase it stalled in, once, never
/// retried, after about its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_exchanges_fail_in_their_phase() {
    bounded(TEST_LIMIT, "the test", async {
        for (pace, len, phase, in_body) in [
            (Pace::StallUpload, TRICKLE_UPLOAD, Phase::Send, false),
            (Pace::StallHead, KIB, Phase::Read, false),
            (Pace::StallBody, KIB, Phase::Read, true),
        ] {
            let (got, took, server) = paced(pace, len).await;
            let c = &server.counters;
            println!(
                "{pace:?}: {got:?} after {took:?}; server read {} bytes",
                c.bytes_read.load(Ordering::SeqCst)
            );
            let failure = match got {
                Ok(answer) => panic!("{pace:?} succeeded: {answer:?}"),
                Err(f) => f,
            };
            assert_eq!(failure.phase, Some(phase), "{pace:?}: {}", failure.chain);
            assert_eq!(failure.in_body, in_body, "{pace:?}: {}", failure.chain);
            if !in_body {
                assert_eq!(failure.rule, Some(Rule::Timeout), "{}", failure.chain);
            }
            assert_eq!(c.heads_of("paced"), 1, "{pace:?}");
            assert_eq!(c.connections.load(Ordering::SeqCst), 1, "{pace:?}");
            // The stall limit decided, not the server's hold.
            assert!(took < STALL_HOLD, "{pace:?} took {took:?}");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 5. Zero and enormous limits on every layer of the hand stack.

/// Requests per configuration: GET, POST, GET, POST (no key).
const LIMIT_REQUESTS: usize = 4;

/// What a configuration must do with `LIMIT_REQUESTS` requests to a
/// well-behaved keep-alive server.
#[derive(Clone, Copy, Debug)]
enum Limits {
    /// Every request succeeds; with `reuse`, on fewer connections than
    /// requests, without, on one connection each.
    Ok { reuse: bool },
    /// Every request succeeds (reused or not); the server announces
    /// `Keep-Alive: timeout=5`.
    OkAnnounced,
    /// Every request fails with an `Elapsed` of this phase before anything
    /// is sent: the server sees no connection.
    Untried(Phase),
    /// Every response body fails with an `Elapsed` of this phase.
    BodyFails(Phase),
}

/// A keep-alive server answering every request `200` (with `announce`, a
/// `Keep-Alive: timeout=5` header too).
async fn answering_server(announce: bool) -> RawServer {
    RawServer::start(move |mut conn| async move {
        let answer: &[u8] = if announce {
            b"HTTP/1.1 200 OK\r\nkeep-alive: timeout=5\r\ncontent-length: 2\r\n\r\nok"
        } else {
            OK_RESPONSE
        };
        // Bounded: every turn reads a head or ends.
        while let Some(head) = conn.read_head().await {
            let len = head.content_length();
            if conn.skip_body(len).await < len || !conn.write(answer).await {
                return;
            }
        }
    })
    .await
}

async fn limits_case(label: &str, stack: HandStack, expect: Limits) -> Result<(), String> {
    let server = answering_server(matches!(expect, Limits::OkAnnounced)).await;
    let client = stack.full();
    let mut results = Vec::new();
    for i in 0..LIMIT_REQUESTS {
        let id = format!("{label}-{i}");
        let req = if i % 2 == 0 {
            Request::get(server.url("/limits")).body(Full::new(Bytes::new()))
        } else {
            Request::post(server.url("/limits")).body(body_of(KIB))
        };
        let mut req = req.unwrap();
        req.headers_mut().insert(REQ_ID, id.parse().unwrap());
        results.push(send(&client, req).await);
        // Lets the pool take the connection back (not an assertion: the
        // reuse checks below allow a missed reuse or two).
        sleep(POOL_SETTLE).await;
    }
    let c = &server.counters;
    let (conns, heads) = (
        c.connections.load(Ordering::SeqCst),
        c.heads.load(Ordering::SeqCst),
    );
    let summary = format!("{conns} connections, {heads} heads: {results:?}");
    let ok = match expect {
        Limits::Ok { reuse } => {
            results
                .iter()
                .all(|r| matches!(r, Ok(a) if a.status == StatusCode::OK))
                && heads == LIMIT_REQUESTS
                && if reuse {
                    conns < LIMIT_REQUESTS
                } else {
                    conns == LIMIT_REQUESTS
                }
        }
        Limits::Untried(phase) => results.iter().all(
            |r| matches!(r, Err(f) if f.phase == Some(phase) && !f.in_body && f.retries == Some(0)),
        ) && conns == 0,
        Limits::BodyFails(phase) => {
            results
                .iter()
                .all(|r| matches!(r, Err(f) if f.phase == Some(phase) && f.in_body))
                && heads == LIMIT_REQUESTS
        }
        Limits::OkAnnounced => {
            results
                .iter()
                .all(|r| matches!(r, Ok(a) if a.status == StatusCode::OK))
                && heads == LIMIT_REQUESTS
        }
    };
    println!("{label}: {expect:?}: {summary}");
    if ok {
        Ok(())
    } else {
        Err(format!("{label}: expected {expect:?}, got {summary}"))
    }
}

/// `Duration::ZERO` is spent (a typed error, nothing sent, or a body that
/// fails at once), `Duration::MAX` never fires, on every layer of the
/// hand stack: no panic, no hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_and_enormous_limits_on_the_hand_stack() {
    let d = HandStack::default;
    let expiry = || IdleExpiryLayer::new(Duration::from_secs(90));
    let cases: Vec<(&str, HandStack, Limits)> = vec![
        (
            "connect 0",
            HandStack {
                connect: Duration::ZERO,
                ..d()
            },
            Limits::Untried(Phase::Connect),
        ),
        (
            "connect MAX",
            HandStack {
                connect: Duration::MAX,
                ..d()
            },
            Limits::Ok { reuse: true },
        ),
        (
            "send 0",
            HandStack {
                phases: PhaseTimeoutLayer::new().send(Duration::ZERO),
                ..d()
            },
            Limits::Untried(Phase::Send),
        ),
        (
            "read 0",
            HandStack {
                phases: PhaseTimeoutLayer::new().read(Duration::ZERO),
                ..d()
            },
            Limits::Untried(Phase::Read),
        ),
        (
            "total 0",
            HandStack {
                phases: PhaseTimeoutLayer::new().total(Duration::ZERO),
                ..d()
            },
            Limits::Untried(Phase::Total),
        ),
        (
            "read_body_stall 0",
            HandStack {
                phases: PhaseTimeoutLayer::new().read_body_stall(Duration::ZERO),
                ..d()
            },
            Limits::BodyFails(Phase::Read),
        ),
        (
            "every phase MAX",
            HandStack {
                phases: PhaseTimeoutLayer::new()
                    .send(Duration::MAX)
                    .read(Duration::MAX)
                    .read_body_stall(Duration::MAX)
                    .total(Duration::MAX),
                ..d()
            },
            Limits::Ok { reuse: true },
        ),
        (
            "idle expiry 0",
            HandStack {
                expiry: IdleExpiryLayer::new(Duration::ZERO),
                ..d()
            },
            Limits::Ok { reuse: false },
        ),
        (
            "idle expiry MAX",
            HandStack {
                expiry: IdleExpiryLayer::new(Duration::MAX),
                ..d()
            },
            Limits::Ok { reuse: true },
        ),
        (
            "max_age 0",
            HandStack {
                expiry: expiry().max_age(Duration::ZERO),
                ..d()
            },
            Limits::Ok { reuse: false },
        ),
        (
            "max_age MAX, margin MAX, max_requests MAX, learner(1, MAX)",
            HandStack {
                expiry: expiry()
                    .max_age(Duration::MAX)
                    .margin(Duration::MAX)
                    .max_requests(u64::MAX)
                    .learner(1, Duration::MAX),
                ..d()
            },
            Limits::Ok { reuse: true },
        ),
        (
            "margin MAX, announced timeout",
            HandStack {
                expiry: expiry().margin(Duration::MAX),
                ..d()
            },
            Limits::OkAnnounced,
        ),
        (
            "idle expiry MAX, margin 0, announced timeout",
            HandStack {
                expiry: IdleExpiryLayer::new(Duration::MAX).margin(Duration::ZERO),
                ..d()
            },
            Limits::OkAnnounced,
        ),
        (
            "max_requests 0",
            HandStack {
                expiry: expiry().max_requests(0),
                ..d()
            },
            Limits::Ok { reuse: false },
        ),
        (
            "margin 0, learner(0, 0)",
            HandStack {
                expiry: expiry().margin(Duration::ZERO).learner(0, Duration::ZERO),
                ..d()
            },
            Limits::Ok { reuse: true },
        ),
        (
            "max_retries 0, replay_limit 0",
            HandStack {
                retry: RetryOnStaleConnectionLayer::new()
                    .max_retries(0)
                    .replay_limit(0),
                ..d()
            },
            Limits::Ok { reuse: true },
        ),
        (
            "max_retries MAX, replay_limit MAX",
            HandStack {
                retry: RetryOnStaleConnectionLayer::new()
                    .max_retries(usize::MAX)
                    .replay_limit(usize::MAX),
                ..d()
            },
            Limits::Ok { reuse: true },
        ),
    ];
    bounded(TEST_LIMIT, "the test", async {
        let mut failures = Vec::new();
        for (label, stack, expect) in cases {
            if let Err(e) = limits_case(label, stack, expect).await {
                failures.push(e);
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .await;
}

// ---------------------------------------------------------------------------
// 6. An upgraded stream through the hand stack is the caller's.

/// Phase limits far below the tunnel's run (`TUNNEL_RUN`) and its pauses:
/// they bound the `101` exchange, never the stream after it.
fn tunnel_phases() -> PhaseTimeoutLayer {
    PhaseTimeoutLayer::new()
        .send(Duration::from_millis(300))
        .read(Duration::from_secs(1))
        .read_body_stall(Duration::from_millis(300))
        .total(Duration::from_secs(1))
}

/// Opens an upgraded stream through the hand stack with `expiry` and
/// [`tunnel_phases`], and keeps it busy (`drive_tunnel`).
async fn hand_stack_tunnel(expiry: IdleExpiryLayer) -> Result<String, String> {
    let facts = Arc::new(TunnelFacts::default());
    let server = tunnel_server(facts.clone()).await;
    let client = HandStack {
        phases: tunnel_phases(),
        expiry,
        ..HandStack::default()
    }
    .full();
    let req = Request::get(server.url("/tunnel"))
        .header(http::header::UPGRADE, "echo")
        .header(http::header::CONNECTION, "upgrade")
        .header(REQ_ID, "tunnel")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = bounded(STEP_LIMIT, "the upgrade request", client.oneshot(req))
        .await
        .map_err(|e| format!("upgrade request failed: {}", error_chain(e.as_ref())))?;
    if res.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(format!("status {}", res.status()));
    }
    let upgraded = bounded(STEP_LIMIT, "the upgrade", hyper::upgrade::on(res))
        .await
        .map_err(|e| format!("upgrade failed: {e}"))?;
    let got = drive_tunnel(TokioIo::new(upgraded), &facts).await;
    assert_eq!(server.counters.heads_of("tunnel"), 1);
    assert_eq!(server.counters.connections.load(Ordering::SeqCst), 1);
    got
}

/// Neither an idle expiry (500 ms, zero, one request per connection) nor
/// phase limits shorter than the stream's pauses and its whole run cut an
/// upgraded stream through the hand stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_stream_through_the_hand_stack_survives_expiry_and_phase_limits() {
    let table = vec![
        ("expiry 500 ms", IdleExpiryLayer::new(TUNNEL_EXPIRY)),
        ("expiry 0", IdleExpiryLayer::new(Duration::ZERO)),
        (
            "max_requests(1)",
            IdleExpiryLayer::new(TUNNEL_EXPIRY).max_requests(1),
        ),
    ];
    bounded(
        TEST_LIMIT,
        "the test",
        assert_tunnels_survive(table, hand_stack_tunnel),
    )
    .await;
}

// ---------------------------------------------------------------------------
// 7. The stale keep-alive race (the kit's seed workload) on the hand stack.

/// The server's idle timeout; every request comes right at it.
const SEED_IDLE: Duration = Duration::from_millis(200);
/// The total limit per attempt: far above an exchange on loopback, so a
/// `Total` timeout is a request that hung.
const SEED_TOTAL: Duration = Duration::from_secs(5);
/// Requests per task (5 tasks), one idle timeout apart.
const SEED_REQUESTS: usize = 20;

/// GETs are retried (never an error), a POST without a key is never
/// duplicated and fails only with a typed refusal, and no request hangs
/// until `total` (the shape `tests/reqwest.rs` tolerates through reqwest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_race_on_the_hand_stack_never_hangs_or_duplicates() {
    use tower_conn_lifecycle::testing::{IdleClosingServer, SeedWorkload};
    bounded(TEST_LIMIT, "the test", async {
        // Learning off: every reuse meets the race, and the retry layer
        // alone handles it.
        for (method, learn) in [
            (http::Method::GET, true),
            (http::Method::POST, true),
            (http::Method::GET, false),
            (http::Method::POST, false),
        ] {
            let server = IdleClosingServer::start(SEED_IDLE).await.unwrap();
            let stack = HandStack {
                phases: PhaseTimeoutLayer::new().total(SEED_TOTAL),
                expiry: IdleExpiryLayer::new(Duration::from_secs(90)).learn(learn),
                ..HandStack::default()
            };
            let report = SeedWorkload::new(SEED_IDLE)
                .tasks(5)
                .requests(SEED_REQUESTS)
                .method(method.clone())
                .run(&server.url(), |_| stack.full())
                .await;
            let chains = report.error_chains();
            println!(
                "{method} (learning {learn}): {} requests, {} errors, {} reused; server {} requests: {chains:?}",
                report.requests(),
                report.errors(),
                report.reused(),
                server.requests_by_method(&method)
            );
            for s in report.samples() {
                let Err(e) = s.outcome() else { continue };
                let refused = find_cause::<NotRetried>(e.as_ref())
                    .unwrap_or_else(|| panic!("untyped: {}", error_chain(e.as_ref())));
                assert_ne!(refused.rule(), Rule::Timeout, "a request hung: {e}");
                assert_eq!(method, http::Method::POST, "a GET failed: {e}");
            }
            if method == http::Method::GET {
                assert_eq!(report.errors(), 0, "{chains:?}");
            } else {
                assert_eq!(server.posts() as usize, report.successes(), "{chains:?}");
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 8. Slow but moving uploads through reqwest (PhaseTimeout measures body
// frames there).

/// The upload through reqwest, whose socket send buffer cannot be set:
/// loopback autotunes it up to `tcp_wmem`'s maximum (4 MiB by default), so
/// the upload must be far larger to still be moving after the buffers
/// filled.
const REQWEST_UPLOAD: usize = 32 * MIB;
/// The server reads it at about 20 MB/s: moving all the time, and in all
/// longer than the stall limits.
const REQWEST_TRICKLE_PER_TICK: usize = MIB;

/// One POST to a `TrickleUpload` server through reqwest under the stall
/// limits: the result, how long it took, and the server.
async fn paced_reqwest<B>(body: B) -> (Result<Answer, Failure>, Duration, RawServer)
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let server = pacing_server(Pace::TrickleUpload(REQWEST_TRICKLE_PER_TICK)).await;
    let client = ServiceBuilder::new()
        .layer(RetryOnStaleConnectionLayer::new())
        .layer(
            PhaseTimeoutLayer::new()
                .send(STALL_SEND)
                .read(STALL_READ)
                .read_body_stall(STALL_READ),
        )
        .service(ReqwestService::new(
            reqwest::Client::builder()
                .no_proxy()
                .shared_tls()
                .unwrap()
                .build()
                .unwrap(),
        ));
    let req = Request::post(server.url("/paced"))
        .header(REQ_ID, "paced")
        .body(body)
        .unwrap();
    let started = Instant::now();
    let got = match bounded(STEP_LIMIT, "the request", client.oneshot(req)).await {
        Ok(res) => {
            let status = res.status();
            bounded(STEP_LIMIT, "the body", res.into_body().collect())
                .await
                .map(|_| Answer {
                    status,
                    retried: None,
                    reused: false,
                })
                .map_err(|e| Failure {
                    in_body: true,
                    ..Failure::of(&e)
                })
        }
        Err(e) => Err(Failure::of(&e)),
    };
    (got, started.elapsed(), server)
}

/// An upload that keeps moving slowly passes the send and read stall
/// limits through reqwest, as one `Full` frame or streamed in 64 KiB
/// frames: PhaseTimeout splits frames and hyper pulls them only as its
/// write buffer drains, so the progress it sees tracks the socket (behind
/// it by the kernel's send buffer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_but_moving_upload_through_reqwest_passes() {
    bounded(TEST_LIMIT, "the test", async {
        for label in ["full", "streamed"] {
            let (got, took, server) = if label == "full" {
                paced_reqwest(body_of(REQWEST_UPLOAD)).await
            } else {
                paced_reqwest(streamed(REQWEST_UPLOAD)).await
            };
            let c = &server.counters;
            println!(
                "{label}: {got:?} after {took:?}; server read {}",
                c.bytes_read.load(Ordering::SeqCst)
            );
            let answer = got.unwrap_or_else(|f| panic!("{label}: {}", f.chain));
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(c.heads_of("paced"), 1);
            assert!(c.bytes_read.load(Ordering::SeqCst) >= REQWEST_UPLOAD as u64);
            assert!(
                took >= 2 * STALL_SEND.max(STALL_READ),
                "{label} took only {took:?}"
            );
        }
    })
    .await;
}
