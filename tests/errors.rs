//! One error surface: for each way a request fails, through the one-call
//! client and through the same layers stacked by hand, the top-level
//! error's `Display` says what happened (the phase and limit of a timeout,
//! the destination and cause of a failed connect, the rule of a refused
//! retry) and `find_cause` finds the typed error. Every failure is real:
//! the testing kit's misbehaving servers on 127.0.0.1.

mod common;

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_conn_lifecycle::client;
use tower_conn_lifecycle::connect_timeout::ConnectTimeoutLayer;
use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
use tower_conn_lifecycle::phase_timeout::{Elapsed, Phase, PhaseTimeoutLayer};
use tower_conn_lifecycle::retry::{NotRetried, RetryOnStaleConnectionLayer, RetryReason, Rule};
use tower_conn_lifecycle::testing::{
    Blackhole, IdleClosingServer, SilentServer, StalledBodyServer, StopReadingServer,
};
use tower_conn_lifecycle::track::TrackConnectionsLayer;
use tower_conn_lifecycle::RequestBody;
use tower_conn_lifecycle::{error_chain, find_cause, BoxError};

/// The limit every timeout case sets on its phase.
const LIMIT: Duration = Duration::from_millis(300);
/// Bounds each case: generous slack over `LIMIT` for a loaded 2-core box.
const CASE_DEADLINE: Duration = Duration::from_secs(20);

/// The settings of one case, built into either stack.
#[derive(Clone)]
struct Settings {
    connect: Duration,
    timeouts: PhaseTimeoutLayer,
    expiry: IdleExpiryLayer,
    retry: RetryOnStaleConnectionLayer,
    /// hyper-util's own `retry_canceled_requests` (by-hand stack only).
    retry_canceled: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect: Duration::from_secs(5),
            timeouts: PhaseTimeoutLayer::new(),
            expiry: IdleExpiryLayer::new(Duration::from_secs(90)),
            retry: RetryOnStaleConnectionLayer::new(),
            retry_canceled: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stack {
    /// `client::builder()`.
    OneCall,
    /// Retry, PhaseTimeout and IdleExpiry over hyper-util's client with
    /// ConnectTimeout and the tracker on its connector, stacked by hand.
    ByHand,
}

/// Where the failure surfaced.
#[derive(Debug, PartialEq)]
enum At {
    Head,
    Body,
}

/// Sends the requests in order on one client; the last one must fail, the
/// ones before it must succeed (they set the stage: a pooled connection).
/// `between` runs after each of those.
async fn fail(
    stack: Stack,
    settings: Settings,
    requests: Vec<Request<Full<Bytes>>>,
    between: fn(),
) -> (At, BoxError) {
    match stack {
        Stack::OneCall => {
            let client = client::builder()
                .connect_timeout(settings.connect)
                .timeouts(settings.timeouts)
                .idle_expiry(settings.expiry)
                .retry(settings.retry)
                .build::<Full<Bytes>>();
            run(client, requests, between).await
        }
        Stack::ByHand => {
            let connector = ServiceBuilder::new()
                .layer(ConnectTimeoutLayer::new(settings.connect))
                .layer(TrackConnectionsLayer::new())
                .service(HttpConnector::new());
            let pool = Client::builder(TokioExecutor::new())
                .retry_canceled_requests(settings.retry_canceled)
                .build::<_, RequestBody>(connector);
            let svc = ServiceBuilder::new()
                .layer(settings.retry)
                .layer(settings.timeouts)
                .layer(settings.expiry)
                .service(pool);
            run(svc, requests, between).await
        }
    }
}

async fn run<S, RB>(
    mut svc: S,
    requests: Vec<Request<Full<Bytes>>>,
    between: fn(),
) -> (At, BoxError)
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>, Error = BoxError>,
    RB: Body,
    RB::Error: Into<BoxError>,
{
    let last = requests.len() - 1;
    for (i, req) in requests.into_iter().enumerate() {
        let step = async {
            let ready = svc.ready().await.map_err(|e| (At::Head, e))?;
            let res = ready.call(req).await.map_err(|e| (At::Head, e))?;
            let body = res.into_body().collect().await;
            body.map(drop).map_err(|e| (At::Body, e.into()))
        };
        let outcome = tokio::time::timeout(CASE_DEADLINE, step)
            .await
            .expect("the case hung");
        match (outcome, i == last) {
            (Ok(()), false) => between(),
            (Ok(()), true) => panic!("the failing request succeeded"),
            (Err(failure), true) => return failure,
            (Err((_, e)), false) => {
                panic!("setup request {i} failed: {}", error_chain(e.as_ref()))
            }
        }
    }
    unreachable!("at least one request")
}

fn nothing() {}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

fn post(url: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(url).body(Full::new(body)).unwrap()
}

/// The defaults with `timeouts`.
fn limited(timeouts: PhaseTimeoutLayer) -> Settings {
    Settings {
        timeouts,
        ..Settings::default()
    }
}

/// The retry layer's `NotRetried` is in the chain, refused by `rule`.
fn refused_by(err: &BoxError, rule: Rule) {
    let refused = find_cause::<NotRetried>(err.as_ref()).unwrap_or_else(|| panic!("{err}"));
    assert_eq!(refused.rule(), rule, "{err}");
}

fn elapsed(err: &BoxError, phase: Phase) {
    let e = find_cause::<Elapsed>(err.as_ref()).unwrap_or_else(|| panic!("no Elapsed: {err}"));
    assert_eq!((e.phase(), e.limit()), (phase, LIMIT), "{err}");
}

/// Checks one failure: where it surfaced, that the top-level display
/// contains every fragment, and whatever `typed` asserts with `find_cause`.
fn check(
    stack: Stack,
    case: &str,
    (at, err): (At, BoxError),
    want_at: At,
    fragments: &[&str],
    typed: impl Fn(&BoxError),
) {
    let top = err.to_string();
    println!(
        "{stack:?} {case}: {top}\n    chain: {}",
        error_chain(err.as_ref())
    );
    assert_eq!(at, want_at, "{stack:?} {case}: {top}");
    for fragment in fragments {
        assert!(
            top.contains(fragment),
            "{stack:?} {case}: {top:?} lacks {fragment:?}"
        );
    }
    // Where no retry was in question, the display does not pretend one was.
    if find_cause::<NotRetried>(err.as_ref()).is_none_or(|e| {
        matches!(
            e.rule(),
            Rule::Timeout | Rule::ConnectTimeout | Rule::ConnectFailed
        )
    }) {
        assert!(!top.contains("not retried"), "{stack:?} {case}: {top}");
    }
    typed(&err);
    // The chain printer shows every link once and starts with the top.
    let chain = error_chain(err.as_ref()).to_string();
    assert!(chain.starts_with(&top), "{chain}");
}

const STACKS: [Stack; 2] = [Stack::OneCall, Stack::ByHand];

#[tokio::test(flavor = "current_thread")]
async fn connect_refused_names_the_destination_and_the_os_error() {
    for stack in STACKS {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/");
        let outcome = fail(stack, Settings::default(), vec![get(&url)], nothing).await;
        check(
            stack,
            "connect refused",
            outcome,
            At::Head,
            &[
                &format!("GET http://127.0.0.1:{port}: connect failed: "),
                "refused",
            ],
            |err| {
                let io = find_cause::<io::Error>(err.as_ref()).unwrap();
                // The first io::Error down the chain is the OS's.
                assert!(
                    tower_conn_lifecycle::find_cause::<io::Error>(err.as_ref())
                        .is_some_and(|e| e.kind() == io::ErrorKind::ConnectionRefused
                            || e.get_ref().is_some()),
                    "{io:?}"
                );
                refused_by(err, Rule::ConnectFailed);
                assert!(find_cause::<Elapsed>(err.as_ref()).is_none());
            },
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn connect_timeout_names_the_phase_and_limit() {
    for stack in STACKS {
        let hole = match Blackhole::start().await {
            Ok(hole) => hole,
            Err(e) if e.kind() == io::ErrorKind::Unsupported => return,
            Err(e) => panic!("{e}"),
        };
        let settings = Settings {
            connect: LIMIT,
            ..Settings::default()
        };
        let url = format!("http://{}/", hole.addr());
        let outcome = fail(stack, settings, vec![get(&url)], nothing).await;
        check(
            stack,
            "connect timeout",
            outcome,
            At::Head,
            &["connect timed out after 300ms"],
            |err| {
                elapsed(err, Phase::Connect);
                refused_by(err, Rule::ConnectTimeout);
            },
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn send_stall_names_the_phase_and_the_bytes_sent() {
    for stack in STACKS {
        let server = StopReadingServer::start(1024).await.unwrap();
        let settings = limited(PhaseTimeoutLayer::new().send(LIMIT));
        let body = Bytes::from(vec![7u8; 32 << 20]);
        let outcome = fail(stack, settings, vec![post(&server.url(), body)], nothing).await;
        check(
            stack,
            "send stall",
            outcome,
            At::Head,
            &["send timed out after 300ms: no upload progress"],
            |err| {
                elapsed(err, Phase::Send);
                refused_by(err, Rule::Timeout);
            },
        );
        assert_eq!(server.connections(), 1, "{stack:?}: one attempt");
        assert!(server.bytes_read() < 32 << 20);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn head_timeout_names_the_phase_and_limit() {
    for stack in STACKS {
        let server = SilentServer::start().await.unwrap();
        let settings = limited(PhaseTimeoutLayer::new().read(LIMIT));
        let outcome = fail(stack, settings, vec![get(&server.url())], nothing).await;
        check(
            stack,
            "head timeout",
            outcome,
            At::Head,
            &[
                "GET http://127.0.0.1:",
                "read timed out after 300ms: no response head",
            ],
            |err| {
                elapsed(err, Phase::Read);
                refused_by(err, Rule::Timeout);
            },
        );
        assert_eq!(server.requests(), 1, "{stack:?}: never retried");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn body_stall_is_the_elapsed_itself() {
    for stack in STACKS {
        let server = StalledBodyServer::builder()
            .content_length(1 << 20)
            .first_bytes(10)
            .start()
            .await
            .unwrap();
        let settings = limited(PhaseTimeoutLayer::new().read(LIMIT));
        let outcome = fail(stack, settings, vec![get(&server.url())], nothing).await;
        check(
            stack,
            "body stall",
            outcome,
            At::Body,
            &["read timed out after 300ms: no response body progress ("],
            |err| {
                elapsed(err, Phase::Read);
                // A body error is never wrapped: nothing can be retried once
                // a response was returned.
                assert!(err.is::<Elapsed>(), "{err:?}");
                assert!(find_cause::<NotRetried>(err.as_ref()).is_none());
            },
        );
        assert_eq!(server.requests(), 1);
    }
}

/// Blocks the (current-thread) runtime well past a 50 ms expiry between two
/// requests: no timer can close the idle connection first, so the pool
/// hands it out and the tracker refuses to write on it.
fn block_past_expiry() {
    std::thread::sleep(Duration::from_millis(300));
}

fn expiring() -> IdleExpiryLayer {
    IdleExpiryLayer::new(Duration::from_millis(50)).learn(false)
}

#[tokio::test(flavor = "current_thread")]
async fn expired_connection_is_refused_unwritten_then_retried_or_typed() {
    // The one-call client: the refused request goes out again on a new
    // connection (hyper-util's retry of canceled requests, then this
    // crate's `NothingWritten` rule); the caller never sees the refusal.
    let server = IdleClosingServer::start(Duration::from_secs(30))
        .await
        .unwrap();
    let client = client::builder()
        .idle_expiry(expiring())
        .build::<Full<Bytes>>();
    for i in 0..2 {
        let res = client.clone().oneshot(get(&server.url())).await.unwrap();
        res.into_body().collect().await.unwrap();
        if i == 0 {
            block_past_expiry();
        }
    }
    assert_eq!((server.requests(), server.connections()), (2, 2));

    // By hand with every retry off, the refusal reaches the caller: hyper
    // reports the request canceled before it was written, and the retry
    // layer's display says so.
    let server = IdleClosingServer::start(Duration::from_secs(30))
        .await
        .unwrap();
    let settings = Settings {
        expiry: expiring(),
        retry: RetryOnStaleConnectionLayer::new().max_retries(0),
        retry_canceled: false,
        ..Settings::default()
    };
    let url = server.url();
    let outcome = fail(
        Stack::ByHand,
        settings,
        vec![get(&url), get(&url)],
        block_past_expiry,
    )
    .await;
    check(
        Stack::ByHand,
        "expired connection, retries off",
        outcome,
        At::Head,
        &[
            "GET http://127.0.0.1:",
            "; not retried: retries are off (limit 0), though retry-safe: nothing of the request was written",
        ],
        |err| {
            let e = find_cause::<NotRetried>(err.as_ref()).unwrap();
            assert_eq!(e.rule(), Rule::RetriesExhausted);
            assert_eq!(e.retry_safe_reason(), Some(RetryReason::NothingWritten));
        },
    );
    assert_eq!(server.requests(), 1, "the refused request never arrived");
}

#[tokio::test(flavor = "current_thread")]
async fn refused_retry_says_what_happened_and_why_not() {
    for stack in STACKS {
        // The second request of every connection is reset before the
        // server reads it: a stale-looking failure on a reused connection.
        let server = common::stale_on_reuse().await;
        let url = server.url();
        let body = Bytes::from_static(b"order");
        let outcome = fail(
            stack,
            Settings::default(),
            vec![post(&url, body.clone()), post(&url, body)],
            nothing,
        )
        .await;
        check(
            stack,
            "refused retry",
            outcome,
            At::Head,
            &[
                "POST http://127.0.0.1:",
                "; not retried: not idempotent, no Idempotency-Key (reused connection)",
            ],
            |err| {
                refused_by(err, Rule::NotIdempotent);
            },
        );
        assert_eq!(
            (server.attempts(), server.responses()),
            (2, 1),
            "{stack:?}: no duplicate"
        );
    }
}
