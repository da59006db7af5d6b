//! Paused-time unit tests of learning as the layer applies it to
//! connections: the live estimate, healing probes, HTTP/2, the lock count.

use std::time::Duration;

use http::HeaderMap;
use tokio::time::{advance, Instant};

use super::learn::Origin;
use super::IdleExpiryLayer;
use crate::track::{ConnectionState, Event};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn origin() -> Origin {
    Origin::of(&"http://learn.test:80/".parse().unwrap()).unwrap()
}

/// A tracked connection that has carried one exchange and is now idle.
fn idle_connection() -> ConnectionState {
    let now = Instant::now();
    let state = ConnectionState::new(now, now);
    assert_eq!(state.begin_request(true, Duration::ZERO), 1);
    state.on_read(10, true, true);
    assert!(state.end_exchange(1));
    state
}

fn respond(layer: &IdleExpiryLayer, state: &ConnectionState) {
    layer.on_response(state, &HeaderMap::new(), Some(&origin()));
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_follows_its_origins_new_estimate_at_once() {
    let layer = IdleExpiryLayer::new(Duration::from_secs(90));
    let (a, b) = (idle_connection(), idle_connection());
    respond(&layer, &a);
    respond(&layer, &b);
    assert_eq!(b.expiry(), Some(Duration::from_secs(90)));
    // A lost race on `a` (idle 200 ms when its request began): `b`, idle
    // all along, is capped at once without a response of its own.
    a.notify(Event::LostRace(ms(200)));
    assert_eq!(layer.stats().lost_races(), 1);
    assert_eq!(layer.stats().learned(), 1);
    assert_eq!(b.expiry(), Some(ms(150)));
    let since = b.idle_since().unwrap();
    assert_eq!(b.idle_deadline(), Some(since + ms(150)));
}

#[tokio::test(start_paused = true)]
async fn a_healing_probe_is_kept_open_but_not_reused_and_heals_a_wrong_estimate() {
    let layer = IdleExpiryLayer::new(Duration::from_secs(90));
    let first = idle_connection();
    respond(&layer, &first);
    first.notify(Event::ServerIdleClose(ms(300)));
    // The next response probes: reused up to 250 ms, kept open to 600 ms.
    let probe = idle_connection();
    respond(&layer, &probe);
    assert_eq!(layer.stats().probes(), 1);
    assert_eq!(probe.expiry(), Some(ms(250)));
    let since = probe.idle_since().unwrap();
    let (reuse, close) = probe.idle_deadlines_raw().unwrap();
    assert_eq!(probe.at(reuse), Some(since + ms(250)));
    assert_eq!(probe.at(close), Some(since + ms(600)));
    // Another connection meanwhile is no probe (one per 10 s).
    let other = idle_connection();
    respond(&layer, &other);
    assert_eq!(other.idle_deadlines_raw().map(|(r, c)| c - r), Some(0));
    assert_eq!(layer.stats().probes(), 1);
    // The server had not closed the probe at 600 ms: the estimate was
    // wrong, and is forgotten long before relearn_after.
    advance(ms(600)).await;
    probe.notify(Event::Expired(ms(600)));
    assert_eq!(layer.stats().healed(), 1);
    let uri = "http://learn.test:80/".parse().unwrap();
    assert_eq!(layer.learned_timeout(&uri), None);
    assert_eq!(other.expiry(), Some(Duration::from_secs(90)));
}

#[tokio::test(start_paused = true)]
async fn an_estimate_below_the_floor_probes_by_reuse() {
    let layer = IdleExpiryLayer::new(Duration::from_secs(90));
    let a = idle_connection();
    respond(&layer, &a);
    a.notify(Event::ServerIdleClose(ms(20)));
    assert_eq!(layer.stats().held(), 1);
    assert_eq!(a.expiry(), Some(Duration::from_secs(90)));
    advance(ms(500)).await;
    let b = idle_connection();
    respond(&layer, &b);
    b.notify(Event::ServerIdleClose(ms(22)));
    assert_eq!(layer.stats().agreed(), 1);
    // Learned: half of 20 ms (the margin would leave nothing), never zero.
    let c = idle_connection();
    let d = idle_connection();
    respond(&layer, &c);
    respond(&layer, &d);
    assert_eq!(d.expiry(), Some(ms(10)));
    // `c` probes by reuse, up to the floor.
    assert_eq!(c.expiry(), Some(ms(100)));
}

#[tokio::test(start_paused = true)]
async fn http2_connections_get_no_observer_and_no_estimate() {
    let layer = IdleExpiryLayer::new(Duration::from_secs(90));
    let h1 = idle_connection();
    respond(&layer, &h1);
    h1.notify(Event::ServerIdleClose(ms(300)));
    let h2 = idle_connection();
    h2.set_http2();
    respond(&layer, &h2);
    assert_eq!(h2.expiry(), None);
    h2.notify(Event::ServerIdleClose(ms(5)));
    assert_eq!(layer.stats().server_idle_closes(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_response_takes_at_most_one_lock() {
    let layer = IdleExpiryLayer::new(Duration::from_secs(90));
    let learner = &layer.shared().learner;
    // Nothing learned anywhere: no lock at all.
    let a = idle_connection();
    respond(&layer, &a);
    respond(&layer, &a);
    assert_eq!(learner.locks(), 0);
    a.notify(Event::ServerIdleClose(ms(300)));
    // The origin has an estimate: one lock per response (the expiry checks
    // that follow read the connection's copy).
    let b = idle_connection();
    for _ in 0..3 {
        let before = learner.locks();
        respond(&layer, &b);
        assert_eq!(learner.locks() - before, 1);
        for _ in 0..10 {
            assert!(b.idle_deadline().is_some());
        }
        assert_eq!(learner.locks() - before, 1);
    }
}
