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

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::{Service, ServiceBuilder};
use tower_conn_lifecycle::connect_timeout::ConnectTimeoutLayer;
use tower_conn_lifecycle::idle_expiry::{IdleExpiryLayer, IdleExpiryStats};
use tower_conn_lifecycle::phase_timeout::PhaseTimeoutLayer;
use tower_conn_lifecycle::reqwest::{ClientBuilderExt, ReqwestService};
use tower_conn_lifecycle::retry::{RetryOnStaleConnectionLayer, Rule};
use tower_conn_lifecycle::track::{TrackConnectionsLayer, TrackStats};
use tower_conn_lifecycle::{BoxError, LayeredResponse, RequestBody};

use common::bounded;
use common::raw::*;

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

fn seed() -> u64 {
    match std::env::var("HOSTILE_SEED") {
        Ok(s) => s.parse().expect("HOSTILE_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
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
        let report = run.check();
        print_expiry(&expiry.stats(), &track);
        assert_eq!(run.all.len(), RANDOM_REQUESTS, "the run stopped early");
        assert!(
            report.reused_ok * 4 >= report.ok,
            "seed {seed}: only {} of {} successes reused a connection",
            report.reused_ok,
            report.ok
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
        let report = run.check();
        assert_eq!(run.all.len(), RANDOM_REQUESTS, "the run stopped early");
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {} violations:\n{}",
            report.violations.len(),
            report.violations.join("\n")
        );
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
fn reqwest_expect(_early: FirstBytes, kind: Kind) -> Expect {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_bytes_then_reset_through_reqwest() {
    bounded(TEST_LIMIT, "the test", async {
        let make = || reqwest_stack(PhaseTimeoutLayer::new());
        early_table(make, false, &EARLY_BYTES, reqwest_expect).await;
        early_table(make, true, &EARLY_BYTES, reqwest_expect).await;
        early_table(make, false, &[FirstBytes::Nothing], reqwest_expect).await;
    })
    .await;
}
