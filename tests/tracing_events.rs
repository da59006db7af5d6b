//! Every timeout, expiry and retry is one `tracing` debug event (target
//! `tower_conn_lifecycle::…`), recorded here by a minimal subscriber against
//! the testing kit's loopback servers.
//!
//! Each test runs its own current-thread runtime inside the subscriber's
//! scope, so events from the connection tasks (the IO's expiry) are seen too.

#[path = "common/composable.rs"]
mod composable;

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
use tower_conn_lifecycle::phase_timeout::{Elapsed, Phase, PhaseTimeoutLayer, RequestBody};
use tower_conn_lifecycle::retry::Retried;
use tower_conn_lifecycle::testing::{IdleClosingServer, SilentServer};
use tower_conn_lifecycle::track::TrackConnectionsLayer;
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
                Client::builder(TokioExecutor::new())
                    .build::<_, RequestBody<Empty<Bytes>>>(HttpConnector::new()),
            );
        let req = http::Request::get(server.url()).body(Empty::new()).unwrap();
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
        let connector = ServiceBuilder::new()
            .layer(TrackConnectionsLayer::new())
            .service(HttpConnector::new());
        let client = ServiceBuilder::new()
            .layer(IdleExpiryLayer::new(Duration::from_millis(50)).learn(false))
            .service(Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector));
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
        let res = composable::post_again_after_expiry(&server.url()).await;
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
