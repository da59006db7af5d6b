//! Acceptance tests of issue 17: the one-call client against raw loopback
//! servers that behave legally but unusually (1xx responses and early final
//! responses during an upload, partial heads, resets at every point,
//! upgrades, request bodies that never report their end).
//!
//! Server-side facts decide: every server counts the request heads it read
//! (per `x-req-id`), the connections it accepted, the bytes it read and when
//! it saw a connection closed. The servers (`common::raw`) are written on raw tokio
//! sockets (not the `testing` kit) so that each test controls the exact
//! bytes and the exact moment of every reset.
//!
//! These tests run on the real clock: a server's timing against the
//! client's is what is under test. Every loop is bounded in count and time,
//! every await that could hang is under a `timeout`, every timing assertion
//! allows a named slack, and no sleep is an assertion. Everything binds
//! `127.0.0.1:0`.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};
use tower::ServiceExt;
use tower_conn_lifecycle::client;
use tower_conn_lifecycle::error_chain;
use tower_conn_lifecycle::find_cause;
use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
use tower_conn_lifecycle::phase_timeout::{Elapsed, Phase, PhaseTimeoutLayer};

use common::bounded;
use common::raw::*;

/// Upper bound for any one test (the randomized one takes the longest).
const TEST_LIMIT: Duration = Duration::from_secs(180);
/// How late an event may be observed on a loaded 2-core CI machine (more
/// than [`common::LATE`]: these servers are raw sockets under load).
const LATE: Duration = Duration::from_millis(400);

// ---------------------------------------------------------------------------
// 1. A response begins (1xx, partial head) during a large POST, then reset.

/// The one-call client as it comes.
fn one_call() -> client::Client<Full<Bytes>> {
    client::builder().build::<Full<Bytes>>()
}

/// A response byte arrived (a 1xx or the start of an error head) while the
/// POST's body was still being written, then the server reset: the request
/// reached the server, so it is never sent again, whatever its method or
/// key, and the error names `ResponseStarted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_1xx_then_reset_never_duplicates_post() {
    bounded(
        TEST_LIMIT,
        "the test",
        early_table(one_call, false, &EARLY_BYTES, tracked_expect),
    )
    .await;
}

/// The same on a connection that carried a complete exchange first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_1xx_then_reset_on_a_reused_connection_never_duplicates_post() {
    bounded(
        TEST_LIMIT,
        "the test",
        early_table(one_call, true, &EARLY_BYTES, tracked_expect),
    )
    .await;
}

/// The control for the two tests above: the same server resetting with no
/// response byte first. On a fresh connection that is a real error
/// (`FreshConnection`), sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_upload_without_response_bytes_on_a_fresh_connection_is_not_retried() {
    bounded(
        TEST_LIMIT,
        "the test",
        early_table(one_call, false, &[FirstBytes::Nothing], tracked_expect),
    )
    .await;
}

// ---------------------------------------------------------------------------
// 2. An upgraded connection is the caller's tunnel (`common::raw`'s
// `tunnel_server` and `drive_tunnel`).

/// Opens an upgraded stream through the one-call client with `expiry` and
/// keeps it busy for `TUNNEL_RUN`; `Err` says what went wrong. With
/// `drain`, the client is drained (that deadline) once the stream is open,
/// before it is used.
async fn run_tunnel(expiry: IdleExpiryLayer) -> Result<String, String> {
    run_tunnel_drained(expiry, None).await
}

async fn run_tunnel_drained(
    expiry: IdleExpiryLayer,
    drain: Option<Duration>,
) -> Result<String, String> {
    let facts = Arc::new(TunnelFacts::default());
    let server = tunnel_server(facts.clone()).await;
    let client = client::builder().idle_expiry(expiry).build::<Full<Bytes>>();
    let req = Request::get(server.url("/tunnel"))
        .header(header::UPGRADE, "echo")
        .header(header::CONNECTION, "upgrade")
        .header(REQ_ID, "tunnel")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = timeout(STEP_LIMIT, client.clone().oneshot(req))
        .await
        .expect("the upgrade request hung")
        .map_err(|e| format!("upgrade request failed: {}", error_chain(e.as_ref())))?;
    if res.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(format!("status {}", res.status()));
    }
    let upgraded = timeout(STEP_LIMIT, hyper::upgrade::on(res))
        .await
        .expect("the upgrade hung")
        .map_err(|e| format!("upgrade failed: {e}"))?;
    let io = TokioIo::new(upgraded);
    if let Some(deadline) = drain {
        // The tunnel is the caller's: the drain neither waits for it nor
        // closes it, and the client refuses new requests.
        let report = timeout(STEP_LIMIT, client.drain(deadline))
            .await
            .expect("the drain hung");
        if report.cut() != 0 {
            return Err(format!("the drain cut a request: {report}"));
        }
    }
    drive_tunnel(io, &facts).await
}

/// A 101 turns the connection into the caller's stream: a 500 ms idle
/// expiry must not cut it, neither while data flows every 100 ms nor during
/// a 700 ms pause, whichever side speaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_stream_survives_idle_expiry() {
    let got = bounded(
        TEST_LIMIT,
        "the test",
        run_tunnel(IdleExpiryLayer::new(TUNNEL_EXPIRY)),
    )
    .await;
    println!("500 ms expiry: {got:?}");
    if let Err(e) = got {
        panic!("the upgraded stream was cut: {e}");
    }
}

/// A drain does not cut an upgraded stream: the tunnel is the caller's
/// (not a request in flight, not a pooled connection), and it goes on
/// through the pause after the drain has finished; the server never sees
/// it closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_leaves_an_upgraded_stream_alone() {
    let got = bounded(
        TEST_LIMIT,
        "the test",
        run_tunnel_drained(
            IdleExpiryLayer::new(TUNNEL_EXPIRY),
            Some(Duration::from_millis(200)),
        ),
    )
    .await;
    println!("drained: {got:?}");
    if let Err(e) = got {
        panic!("the upgraded stream was cut by the drain: {e}");
    }
}

/// The same with an expiry of zero: `max_requests(1)` and a zero idle
/// expiry (what a learned zero amounts to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_stream_survives_zero_expiry() {
    let table = vec![
        (
            "max_requests(1)",
            IdleExpiryLayer::new(TUNNEL_EXPIRY).max_requests(1),
        ),
        ("expiry 0", IdleExpiryLayer::new(Duration::ZERO)),
    ];
    assert_tunnels_survive(table, |layer| {
        bounded(TEST_LIMIT, "the test", run_tunnel(layer))
    })
    .await;
}

// ---------------------------------------------------------------------------
// 3. An early final response during an upload, then dropped.

const BIG_UPLOAD: usize = 32 * MIB;
/// How long the server reads the upload before it answers 413.
const READ_BEFORE_ANSWER: Duration = Duration::from_millis(100);
/// The server reads the upload slowly before answering (at most one chunk
/// per pause: about 13 MiB/s) so the upload is surely still going.
const THROTTLE_PAUSE: Duration = Duration::from_millis(5);
/// The bound on closing an abandoned connection.
const CLOSE_WITHIN: Duration = Duration::from_millis(100);
/// How long the server waits for the close at most.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// "Far below 32 MiB": what socket buffers can hold at the drop, with room.
const MAX_BYTES_AFTER_ANSWER: u64 = 8 * MIB as u64;

#[derive(Debug)]
struct UploadReport {
    content_length: u64,
    read_before_answer: u64,
    answered: Instant,
    closed: Closed,
}

/// The server answers `413` (keep-alive) after `READ_BEFORE_ANSWER` of the
/// 32 MiB upload, then the client drops the response: the connection must
/// close at once and the upload stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_413_then_dropped_response_stops_upload() {
    bounded(TEST_LIMIT, "the test", async {
        let (tx, mut rx) = mpsc::unbounded_channel::<UploadReport>();
        // Told right after the caller dropped the response.
        let gave_up = Arc::new(tokio::sync::Notify::new());
        let told = gave_up.clone();
        let server = RawServer::start(move |mut conn| {
            let (tx, told) = (tx.clone(), told.clone());
            async move {
                let Some(head) = conn.read_head().await else {
                    return;
                };
                let started = Instant::now();
                let mut before = conn.buf.len() as u64;
                conn.buf.clear();
                // Bounded by READ_BEFORE_ANSWER.
                while started.elapsed() < READ_BEFORE_ANSWER {
                    match conn.read_more(READ_BEFORE_ANSWER).await {
                        Read::Data(n) => before += n as u64,
                        _ => break,
                    }
                    conn.buf.clear();
                    sleep(THROTTLE_PAUSE).await;
                }
                conn.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                    .await;
                let answered = Instant::now();
                let closed = conn.wait_closed_after(&told, CLOSE_WAIT).await;
                let _ = tx.send(UploadReport {
                    content_length: head.content_length(),
                    read_before_answer: before,
                    answered,
                    closed,
                });
            }
        })
        .await;
        let client = client::builder().build::<Full<Bytes>>();
        let req = Request::post(server.url("/upload"))
            .header(REQ_ID, "upload")
            .body(body_of(BIG_UPLOAD))
            .unwrap();
        let res = timeout(STEP_LIMIT, client.clone().oneshot(req))
            .await
            .expect("no response within the step limit")
            .unwrap_or_else(|e| panic!("{}", error_chain(e.as_ref())));
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let dropped = Instant::now();
        drop(res);
        gave_up.notify_one();
        let report = timeout(CLOSE_WAIT + STEP_LIMIT, rx.recv())
            .await
            .expect("the server never reported")
            .expect("the server task ended without a report");
        let closed_after_drop = report
            .closed
            .at
            .map(|at| at.saturating_duration_since(dropped));
        println!(
            "content-length {}, read before the 413: {}, response reached the caller {:?} \
             after the 413 was written; after the drop the server read {} bytes and saw {} \
             ({:?} after the drop)",
            report.content_length,
            report.read_before_answer,
            dropped.saturating_duration_since(report.answered),
            report.closed.bytes,
            report.closed.how,
            closed_after_drop,
        );
        assert_eq!(report.content_length, BIG_UPLOAD as u64);
        assert_eq!(server.counters.heads_of("upload"), 1, "a 413 is final");
        assert!(
            closed_after_drop.is_some_and(|d| d <= CLOSE_WITHIN + LATE),
            "the abandoned connection was not closed within {CLOSE_WITHIN:?} (+{LATE:?}): \
             {} after the drop; the server read {} bytes of the upload after the drop",
            report.closed.how,
            report.closed.bytes,
        );
        assert!(
            report.closed.bytes < MAX_BYTES_AFTER_ANSWER,
            "the upload went on after the 413 was dropped: {} bytes",
            report.closed.bytes
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// 4. A Content-Length body that never reports its end.

/// The body's length.
const NEVER_ENDING_LEN: usize = 1024;
const SEND_LIMIT: Duration = Duration::from_millis(300);
const READ_LIMIT: Duration = Duration::from_millis(800);
/// How long the test waits for the timeout before calling it a hang.
const HANG_LIMIT: Duration = Duration::from_secs(6);

/// Exactly `len` bytes with an exact size hint, then `Pending` forever:
/// never `None`, never `is_end_stream()` (like a channel body whose sender
/// is kept alive). hyper stops polling it once it wrote `len` bytes.
#[derive(Clone, Debug)]
struct NeverEnding {
    data: Option<Bytes>,
    len: u64,
}

impl NeverEnding {
    fn new(len: usize) -> Self {
        NeverEnding {
            data: Some(Bytes::from(vec![b'n'; len])),
            len: len as u64,
        }
    }
}

impl Body for NeverEnding {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut().data.take() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

/// Reads the head and the whole body, never answers; reports the body
/// bytes and how the connection ended.
async fn silent_server(tx: mpsc::UnboundedSender<(u64, u64, Closed)>) -> RawServer {
    RawServer::start(move |mut conn| {
        let tx = tx.clone();
        async move {
            let Some(head) = conn.read_head().await else {
                return;
            };
            let length = head.content_length();
            let got = conn.skip_body(length).await;
            let closed = conn.wait_closed(CLOSE_WAIT + HANG_LIMIT).await;
            let _ = tx.send((length, got, closed));
        }
    })
    .await
}

/// Sends the never-ending body with `timeouts`; returns the typed timeout,
/// the wall time to the error, and the server's view.
async fn never_ending(timeouts: PhaseTimeoutLayer) -> (Result<Elapsed, String>, Duration, String) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = silent_server(tx).await;
    let client = client::builder().timeouts(timeouts).build::<NeverEnding>();
    let req = Request::post(server.url("/never-ends"))
        .header(REQ_ID, "never-ends")
        .body(NeverEnding::new(NEVER_ENDING_LEN))
        .unwrap();
    let started = Instant::now();
    let got = timeout(HANG_LIMIT, client.clone().oneshot(req)).await;
    let took = started.elapsed();
    let result = match got {
        Err(_) => Err(format!(
            "hung: no error within {HANG_LIMIT:?} (the upload's end was never recorded)"
        )),
        Ok(Ok(res)) => Err(format!("unexpected response {}", res.status())),
        Ok(Err(e)) => match find_cause::<Elapsed>(e.as_ref()) {
            Some(elapsed) => {
                println!("error chain: {}", error_chain(e.as_ref()));
                Ok(elapsed.clone())
            }
            None => Err(format!("untyped: {}", error_chain(e.as_ref()))),
        },
    };
    drop(client);
    let server_view = match timeout(CLOSE_WAIT + HANG_LIMIT + STEP_LIMIT, rx.recv()).await {
        Ok(Some((length, got, closed))) => format!(
            "server: content-length {length}, read {got} body bytes, then {} ({} more bytes), heads {}",
            closed.how,
            closed.bytes,
            server.counters.heads_of("never-ends")
        ),
        _ => "server: no report".into(),
    };
    (result, took, server_view)
}

fn check_read_timeout(result: Result<Elapsed, String>, took: Duration, server: &str) {
    println!("{result:?} after {took:?}; {server}");
    let elapsed = result.unwrap_or_else(|e| panic!("{e}; {server}"));
    assert_eq!(
        elapsed.phase(),
        Phase::Read,
        "the upload had finished, so only a Read timeout is right: `{elapsed}` after {took:?}; {server}"
    );
    assert_eq!(elapsed.limit(), READ_LIMIT, "{elapsed}");
    assert!(
        elapsed.elapsed() >= READ_LIMIT && elapsed.elapsed() < READ_LIMIT + LATE,
        "{elapsed}: elapsed {:?}",
        elapsed.elapsed()
    );
    assert!(
        took >= READ_LIMIT && took < READ_LIMIT + LATE,
        "{elapsed} after {took:?}"
    );
}

/// hyper writes exactly `Content-Length` bytes and stops polling the body:
/// the upload is over there, so the read clock starts and a send limit can
/// no longer fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_body_that_never_ends_times_out_in_read() {
    let (result, took, server) = bounded(
        TEST_LIMIT,
        "the test",
        never_ending(PhaseTimeoutLayer::new().send(SEND_LIMIT).read(READ_LIMIT)),
    )
    .await;
    check_read_timeout(result, took, &server);
}

/// The same with only `read` set: it must fire, not hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_body_that_never_ends_with_only_read_does_not_hang() {
    let (result, took, server) = bounded(
        TEST_LIMIT,
        "the test",
        never_ending(PhaseTimeoutLayer::new().read(READ_LIMIT)),
    )
    .await;
    check_read_timeout(result, took, &server);
}

// ---------------------------------------------------------------------------
// 5. A randomized hostile server (`common::raw::hostile_conn`).

/// Requests driven through the client.
const RANDOM_REQUESTS: usize = 2000;
/// Concurrent tasks sharing one client (one pool).
const RANDOM_TASKS: usize = 4;
/// The randomized run stops early (and fails its count) after this.
const RANDOM_RUN_LIMIT: Duration = Duration::from_secs(120);
/// The client's total limit per attempt.
const RANDOM_TOTAL: Duration = Duration::from_secs(10);

/// A server that, per request, answers normally, sends a 1xx first, sends
/// a partial head and resets, answers early and resets mid-upload, resets
/// before any response byte, resets new connections, or closes idle
/// connections: no POST without a key is ever seen twice, every error is
/// typed, and every duplicate the server saw is a retry the client counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_hostile_server() {
    let seed = seed();
    println!("HOSTILE_SEED={seed}");
    bounded(TEST_LIMIT, "the test", async move {
        // Learning on: the server's idle closes after a few ms and its
        // resets before any response byte (lost races, to the learner) are
        // below the floor and keep being contradicted by longer reuse, so
        // they are held, never agreed on often enough to stop reuse: the
        // faults on reused connections stay tested.
        let client = client::builder()
            .connect_timeout(Duration::from_secs(2))
            .idle_expiry(IdleExpiryLayer::new(Duration::from_secs(90)))
            .timeouts(PhaseTimeoutLayer::new().total(RANDOM_TOTAL))
            .build::<Full<Bytes>>();
        let plan = RandomPlan {
            requests: RANDOM_REQUESTS,
            tasks: RANDOM_TASKS,
            run_limit: RANDOM_RUN_LIMIT,
        };
        let run = randomized_run(client.clone(), seed, plan).await;
        let report = run.check();
        let expiry = client.expiry_stats();
        println!(
            "client               {:?}; expiry: {} expired, {} refused, {} server idle closes",
            client.connection_stats(),
            expiry.expired(),
            expiry.refused(),
            expiry.server_idle_closes()
        );
        println!(
            "learning             {} lost races, {} held, {} agreed, {} learned, {} probes, {} healed",
            expiry.lost_races(),
            expiry.held(),
            expiry.agreed(),
            expiry.learned(),
            expiry.probes(),
            expiry.healed()
        );
        assert_eq!(
            run.all.len(),
            RANDOM_REQUESTS / RANDOM_TASKS * RANDOM_TASKS,
            "the run stopped at {RANDOM_RUN_LIMIT:?}"
        );
        // Learning never collapsed reuse (about two thirds of successes go
        // over reused connections on this workload; with every close
        // trusted it was a few percent).
        let (ok, reused_ok) = (report.ok, report.reused_ok);
        assert!(
            reused_ok * 4 >= ok,
            "seed {seed}: only {reused_ok} of {ok} successes reused a connection"
        );
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {} violations:\n{}",
            report.violations.len(),
            report.violations.join("\n")
        );
    })
    .await;
}
