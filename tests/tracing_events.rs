//! Every timeout, expiry and retry is one `tracing` debug event (target
//! `tower_conn_lifecycle::…`), and a layer that cannot work in its stack
//! (no tracker) says so once, as a warning; recorded here by a minimal
//! subscriber against the testing kit's loopback servers.
//!
//! Each test runs its own current-thread runtime inside the subscriber's
//! scope, so events from the connection tasks (the IO's expiry) are seen too.

mod common;

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_conn_lifecycle::find_cause;
use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
use tower_conn_lifecycle::phase_timeout::{Elapsed, Phase, PhaseTimeoutLayer};
use tower_conn_lifecycle::retry::Retried;
use tower_conn_lifecycle::testing::{IdleClosingServer, SilentServer};
use tower_conn_lifecycle::RequestBody;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Records this crate's events at debug level and above as
/// `"message field=value …"` lines.
#[derive(Clone, Default)]
struct Recorder {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The recorded lines that start with `message`.
    fn with_message(&self, message: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.starts_with(message))
            .collect()
    }

    /// Runs `test` on a current-thread runtime with this recorder as the
    /// thread's subscriber.
    fn run<F: std::future::Future<Output = ()>>(&self, test: F) {
        let _guard = tracing::subscriber::set_default(self.clone());
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test);
    }
}

struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::DEBUG && metadata.target().starts_with("tower_conn_lifecycle")
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line {
            message: String::new(),
            fields: String::new(),
        };
        event.record(&mut line);
        let _ = write!(line.fields, " level={}", event.metadata().level());
        self.lines
            .lock()
            .unwrap()
            .push(format!("{}{}", line.message, line.fields));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[test]
fn a_timeout_is_one_debug_event_naming_its_phase() {
    let recorder = Recorder::default();
    recorder.run(async {
        let server = SilentServer::start().await.unwrap();
        let client = ServiceBuilder::new()
            .layer(PhaseTimeoutLayer::new().read(Duration::from_millis(100)))
            .service(
                Client::builder(TokioExecutor::new()).build::<_, RequestBody>(HttpConnector::new()),
            );
        let req = http::Request::get(server.url())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let err = client.oneshot(req).await.unwrap_err();
        let elapsed = find_cause::<Elapsed>(err.as_ref()).expect("a read timeout");
        assert_eq!(elapsed.phase(), Phase::Read);
        assert_eq!(server.requests(), 1, "the server got the request");
    });
    let events = recorder.with_message("request timed out");
    assert_eq!(events.len(), 1, "{:?}", recorder.lines());
    assert!(events[0].contains("phase=read"), "{events:?}");
    assert!(events[0].contains("limit=100ms"), "{events:?}");
}

#[test]
fn an_expiry_is_one_debug_event() {
    let recorder = Recorder::default();
    recorder.run(async {
        let server = IdleClosingServer::start(Duration::from_secs(30))
            .await
            .unwrap();
        let (tracked, _) = common::tracked_client::<Empty<Bytes>>();
        let client = ServiceBuilder::new()
            .layer(IdleExpiryLayer::new(Duration::from_millis(50)).learn(false))
            .service(tracked);
        let req = http::Request::get(server.url()).body(Empty::new()).unwrap();
        let res = client.clone().oneshot(req).await.unwrap();
        res.into_body().collect().await.unwrap();
        // Bounded wait (2 s) for the IO to close the idle connection at its
        // expiry.
        for _ in 0..100 {
            if !recorder.with_message("idle connection expired").is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(server.connections(), 1);
        assert_eq!(server.requests(), 1);
    });
    let events = recorder.with_message("idle connection expired; closed");
    assert_eq!(events.len(), 1, "{:?}", recorder.lines());
    assert!(events[0].contains("expiry=Some(50ms)"), "{events:?}");
}

#[test]
fn a_retry_is_one_debug_event_naming_its_reason() {
    let recorder = Recorder::default();
    recorder.run(async {
        let server = IdleClosingServer::start(Duration::from_secs(30))
            .await
            .unwrap();
        let res = common::post_again_after_expiry(&server.url()).await;
        assert_eq!(
            res.extensions().get::<Retried>().map(Retried::count),
            Some(1)
        );
        res.into_body().collect().await.unwrap();
        assert_eq!(server.posts(), 2);
    });
    let retries = recorder.with_message("retrying request after a stale-connection failure");
    assert_eq!(retries.len(), 1, "{:?}", recorder.lines());
    assert!(retries[0].contains("method=POST"), "{retries:?}");
    assert!(
        retries[0].contains("reason=nothing of the request was written"),
        "{retries:?}"
    );
}

/// How long hyper-util's spawned task may take to return a finished
/// connection to its pool.
const POOL_RETURN: Duration = Duration::from_millis(200);

/// IdleExpiry over hyper-util's client whose connector is *not* tracked can
/// expire nothing: connections are reused past the expiry. It says so: every
/// such response is counted, and the first one per layer (clones included)
/// is one warning.
#[test]
fn idle_expiry_without_the_tracker_warns_once_per_layer_and_counts() {
    const EXPIRY: Duration = Duration::from_millis(50);
    let recorder = Recorder::default();
    let layer = IdleExpiryLayer::new(EXPIRY).learn(false);
    let other = IdleExpiryLayer::new(EXPIRY).learn(false);
    recorder.run(async {
        let server = IdleClosingServer::start(Duration::from_secs(30))
            .await
            .unwrap();
        // One bare client (no tracker on its connector), wrapped by two
        // clones of `layer` and by an unrelated layer.
        let bare =
            Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(HttpConnector::new());
        let first = ServiceBuilder::new()
            .layer(layer.clone())
            .service(bare.clone());
        let second = ServiceBuilder::new()
            .layer(layer.clone())
            .service(bare.clone());
        let third = ServiceBuilder::new().layer(other.clone()).service(bare);
        let get = || http::Request::get(server.url()).body(Empty::new()).unwrap();
        for _ in 0..2 {
            let res = first.clone().oneshot(get()).await.unwrap();
            res.into_body().collect().await.unwrap();
            // Idle well past the expiry: a tracked connection would be
            // closed by now.
            tokio::time::sleep(EXPIRY * 3).await;
        }
        let res = second.oneshot(get()).await.unwrap();
        res.into_body().collect().await.unwrap();
        // hyper-util puts a finished connection back into its pool from a
        // spawned task: give it that moment (generous; microseconds when
        // idle), or the next request opens a second connection.
        tokio::time::sleep(POOL_RETURN).await;
        let res = third.oneshot(get()).await.unwrap();
        res.into_body().collect().await.unwrap();
        // Server side: one connection served all four requests, reused past
        // the expiry every time.
        assert_eq!((server.connections(), server.requests()), (1, 4));
    });
    assert_eq!(layer.stats().untracked_responses(), 3);
    assert_eq!(other.stats().untracked_responses(), 1);
    assert_eq!((layer.stats().expired(), layer.stats().refused()), (0, 0));
    let warnings =
        recorder.with_message("IdleExpiryLayer: a response came without a tracked connection");
    assert_eq!(warnings.len(), 2, "one per layer: {:?}", recorder.lines());
    for w in &warnings {
        assert!(w.contains("level=WARN"), "{w}");
        assert!(w.contains("TrackConnectionsLayer"), "{w}");
    }
}

/// The same stack with the tracker warns about nothing and counts nothing
/// untracked.
#[test]
fn idle_expiry_with_the_tracker_does_not_warn() {
    let recorder = Recorder::default();
    let layer = IdleExpiryLayer::new(Duration::from_secs(30)).learn(false);
    recorder.run(async {
        let server = IdleClosingServer::start(Duration::from_secs(30))
            .await
            .unwrap();
        let (tracked, _) = common::tracked_client::<Empty<Bytes>>();
        let client = ServiceBuilder::new().layer(layer.clone()).service(tracked);
        for _ in 0..2 {
            let req = http::Request::get(server.url()).body(Empty::new()).unwrap();
            let res = client.clone().oneshot(req).await.unwrap();
            res.into_body().collect().await.unwrap();
            tokio::time::sleep(POOL_RETURN).await;
        }
        assert_eq!((server.connections(), server.requests()), (1, 2));
    });
    assert_eq!(layer.stats().untracked_responses(), 0);
    let warnings: Vec<_> = recorder
        .lines()
        .into_iter()
        .filter(|l| l.contains("level=WARN"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
}

/// `WithConnectionInfoLayer` over an untracked connector has nothing to insert:
/// it says so once (per process: the layer keeps no state).
#[test]
fn connection_info_without_the_tracker_warns_once() {
    use tower_conn_lifecycle::track::{ConnectionInfo, WithConnectionInfoLayer};

    let recorder = Recorder::default();
    recorder.run(async {
        let server = IdleClosingServer::start(Duration::from_secs(30))
            .await
            .unwrap();
        let client = ServiceBuilder::new()
            .layer(WithConnectionInfoLayer::new())
            .service(
                Client::builder(TokioExecutor::new())
                    .build::<_, Empty<Bytes>>(HttpConnector::new()),
            );
        for _ in 0..3 {
            let req = http::Request::get(server.url()).body(Empty::new()).unwrap();
            let res = client.clone().oneshot(req).await.unwrap();
            assert!(ConnectionInfo::of(&res).is_none());
            res.into_body().collect().await.unwrap();
        }
        assert_eq!(server.requests(), 3);
    });
    let warnings = recorder
        .with_message("WithConnectionInfoLayer: a response came without a tracked connection");
    assert_eq!(warnings.len(), 1, "{:?}", recorder.lines());
    assert!(warnings[0].contains("level=WARN"), "{warnings:?}");
}
