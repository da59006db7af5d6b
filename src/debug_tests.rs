//! The `Debug` output of the public handles, settings and reports: their
//! facts by the names of their getters (or builder methods), never the
//! crate's internal types.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use crate::drain::DrainHandle;
use crate::idle_expiry::IdleExpiryLayer;
use crate::phase_timeout::{PhaseOverride, PhaseTimeoutLayer};
use crate::track::{ConnectionCapture, TrackConnectionsLayer};

/// Fails if `debug` names one of the crate's internal types or fields.
fn no_internals(debug: &str) {
    for internal in [
        "Counters",
        "inner:",
        "Arc",
        "Mutex",
        "Config {",
        "Shared {",
        "Learner",
        "Attempt",
        "direct_captures",
        "read_stall:",
    ] {
        assert!(!debug.contains(internal), "{internal} in {debug}");
    }
}

#[test]
fn stats_and_settings_show_their_facts_by_name() {
    let idle = IdleExpiryLayer::new(Duration::from_secs(90)).max_requests(10);
    let stats = format!("{:?}", idle.stats());
    no_internals(&stats);
    assert!(
        stats.starts_with("IdleExpiryStats { expired: 0, refused: 0, server_idle_closes: 0,"),
        "{stats}"
    );
    assert!(stats.contains("untracked_responses: 0"), "{stats}");
    let layer = format!("{idle:?}");
    no_internals(&layer);
    assert!(
        layer.starts_with("IdleExpiryLayer { expiry: 90s, margin: 50ms, max_age: None, max_requests: Some(10), learn: true, learned_origins: 0, stats: IdleExpiryStats {"),
        "{layer}"
    );

    let track = format!("{:?}", TrackConnectionsLayer::new().stats());
    no_internals(&track);
    assert_eq!(
        track,
        "TrackStats { opened: 0, open_now: 0, stalled_http2_retired: 0 }"
    );

    let limits = PhaseTimeoutLayer::new()
        .send(Duration::from_secs(1))
        .read(Duration::from_secs(2));
    assert_eq!(
        format!("{limits:?}"),
        "PhaseTimeoutLayer { send: Some(1s), read: Some(2s), read_body_stall: Some(2s), total: None }"
    );
    let limits = limits.with_direct_captures();
    no_internals(&format!("{limits:?}"));
    assert_eq!(
        format!("{:?}", PhaseOverride::new().read_body_stall(None)),
        "PhaseOverride { send: None, read: None, read_body_stall: Some(None), total: None }"
    );

    let handle = DrainHandle::new();
    assert_eq!(
        format!("{handle:?}"),
        "DrainHandle { draining: false, in_flight: 0, tracked: false }"
    );

    let client = crate::client::builder().build::<Full<Bytes>>();
    let debug = format!("{client:?}");
    no_internals(&debug);
    assert!(
        debug.contains("connections: TrackStats { opened: 0,"),
        "{debug}"
    );
}

#[test]
fn a_capture_shows_its_connection_not_its_channel() {
    let mut req = http::Request::new(());
    let capture = ConnectionCapture::get_or_insert(&mut req);
    assert_eq!(
        format!("{capture:?}"),
        "ConnectionCapture { connected: false, attempt: None }"
    );
}

#[cfg(feature = "tls")]
#[test]
fn a_tls_connector_shows_where_its_configuration_comes_from() {
    use crate::tls::{SharedTlsConnector, SharedTlsConnectorLayer};
    assert_eq!(
        format!("{:?}", SharedTlsConnectorLayer::new()),
        "SharedTlsConnectorLayer { config: shared }"
    );
    let alpn = SharedTlsConnector::new(1u8).alpn_protocols([b"http/1.1"]);
    assert_eq!(
        format!("{alpn:?}"),
        r#"SharedTlsConnector { inner: 1, config: shared, ALPN ["http/1.1"] }"#
    );
}
