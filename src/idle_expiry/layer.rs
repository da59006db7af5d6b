//! `IdleExpiryLayer`: the configuration, the shared learner and stats.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;
use tower_layer::Layer;

use super::hint::{connection_close, keep_alive_timeout, mentions};
use super::learn::{Learner, Origin, DEFAULT_ORIGINS, DEFAULT_RELEARN_AFTER};
use super::IdleExpiry;
use crate::track::{ConnectionState, Event, Observer};

/// The smallest safety margin kept below an announced or learned idle
/// timeout, by default.
pub const DEFAULT_MARGIN: Duration = Duration::from_millis(50);

/// Request-plane layer that keeps requests off connections the server is
/// about to close. See the [module docs](super) for how it works.
///
/// **It needs the connection tracker.** Everything it does acts on the
/// tracker's per-connection state, so it works only where that state is:
///
/// * hyper-util's legacy `Client` whose connector is wrapped by
///   [`TrackConnectionsLayer`](crate::track::TrackConnectionsLayer) (HTTP/1;
///   on HTTP/2 connections it sets nothing, by design: the server's `GOAWAY`
///   says when it stops);
/// * hyper-util's composable pools, with each connection wrapped by
///   [`connection`](Self::connection) (not the pool as a whole);
/// * not reqwest, whose connections cannot be tracked.
///
/// Around anything else every response passes through untouched and its
/// connection is reused as if the layer were not there. That is never
/// silent: each such response is counted in
/// [`IdleExpiryStats::untracked_responses`], and the first one is logged as
/// a `tracing` warning (once per layer and its clones).
///
/// `expiry` is the longest a connection may sit idle before it is closed
/// instead of reused; announced (`Keep-Alive: timeout=N`) and learned idle
/// timeouts lower it per connection. [`Duration::ZERO`] means no connection
/// is ever reused; limits too large to add to the clock (e.g.
/// [`Duration::MAX`]) mean no configured limit (announced and learned limits
/// still apply).
///
/// Clones of the layer, and every service they make, share one learner (the
/// bounded map of learned idle timeouts) and one [`IdleExpiryStats`], so ten
/// clients built from one layer learn together.
///
/// ```
/// use std::time::Duration;
/// use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
///
/// let layer = IdleExpiryLayer::new(Duration::from_secs(90))
///     .max_age(Duration::from_secs(600))
///     .max_requests(1000);
/// let stats = layer.stats();
/// # let _ = (layer, stats);
/// ```
#[derive(Clone, Debug)]
pub struct IdleExpiryLayer {
    pub(crate) config: Config,
    pub(crate) shared: Arc<Shared>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    expiry: Duration,
    margin: Duration,
    max_age: Option<Duration>,
    max_requests: Option<u64>,
    learn: bool,
}

/// State shared by clones: the learner and the counters.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) learner: Learner,
    pub(crate) stats: IdleExpiryStats,
}

impl IdleExpiryLayer {
    /// A layer that reuses a connection only while it has been idle for less
    /// than `expiry`.
    ///
    /// Put [`TrackConnectionsLayer`](crate::track::TrackConnectionsLayer) on
    /// the client's connector too (or use [`connection`](Self::connection) on
    /// a composable pool): without the tracker the layer cannot expire
    /// anything, and says so (see the [type docs](Self)).
    pub fn new(expiry: Duration) -> Self {
        IdleExpiryLayer {
            config: Config {
                expiry,
                margin: DEFAULT_MARGIN,
                max_age: None,
                max_requests: None,
                learn: true,
            },
            shared: Arc::new(Shared {
                learner: Learner::new(DEFAULT_ORIGINS, DEFAULT_RELEARN_AFTER),
                stats: IdleExpiryStats::default(),
            }),
        }
    }

    /// The smallest margin kept below an announced or learned idle timeout
    /// (default [`DEFAULT_MARGIN`]). The margin used is the larger of this and
    /// twice the connection's measured round trip (its connect time or, if
    /// shorter, the last exchange's time to first byte).
    pub fn margin(mut self, floor: Duration) -> Self {
        self.config.margin = floor;
        self
    }

    /// Closes a connection at its first idle point after this age (never
    /// mid-response). `None` (the default) for no limit.
    pub fn max_age(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.config.max_age = limit.into();
        self
    }

    /// Closes a connection at the idle point after this many requests. `None`
    /// (the default) for no limit; `0` and `1` both mean one request per
    /// connection.
    pub fn max_requests(mut self, limit: impl Into<Option<u64>>) -> Self {
        self.config.max_requests = limit.into();
        self
    }

    /// Whether to learn origins' idle timeouts from the closes observed on
    /// idle connections (default `true`).
    pub fn learn(mut self, learn: bool) -> Self {
        self.config.learn = learn;
        self
    }

    /// How many origins' learned idle timeouts are kept (default 1024; the
    /// least recently used is evicted), and how long an observation is
    /// trusted (default 5 minutes). Starts a new, empty learner shared by the
    /// clones made from here on.
    pub fn learner(mut self, origins: usize, relearn_after: Duration) -> Self {
        self.shared = Arc::new(Shared {
            learner: Learner::new(origins, relearn_after),
            stats: self.shared.stats.clone(),
        });
        self
    }

    /// How many origins the learner remembers now (never more than its bound).
    pub fn learned_origins(&self) -> usize {
        self.shared.learner.len()
    }

    /// The counters shared by every service this layer (and its clones) make.
    pub fn stats(&self) -> IdleExpiryStats {
        self.shared.stats.clone()
    }

    /// Wraps one connection's service, for hyper-util's composable pools
    /// (`client::pool::cache`): see [`IdleExpiryConnection`](super::IdleExpiryConnection).
    /// `state` is the tracker's state of the connection
    /// ([`TrackedIo::state`](crate::track::TrackedIo::state)), `target` the
    /// URI it was made for.
    pub fn connection<S>(
        &self,
        inner: S,
        state: ConnectionState,
        target: &http::Uri,
    ) -> super::IdleExpiryConnection<S> {
        super::IdleExpiryConnection::new(inner, state, Origin::of(target), self.clone())
    }

    /// A response without the tracker's state: counted, and the first one
    /// warned about (see [`IdleExpiryStats::untracked_responses`]).
    pub(crate) fn on_untracked(&self, version: http::Version) {
        self.shared.stats.untracked(version);
    }

    /// Applies what a response says and what was learned to its connection:
    /// the effective expiry, retirement and the observer of idle closes.
    pub(crate) fn on_response(
        &self,
        state: &ConnectionState,
        headers: &HeaderMap,
        origin: Option<&Origin>,
    ) {
        if state.is_http2() {
            return;
        }
        let c = &self.config;
        let shared = &self.shared;
        let learner = &shared.learner;
        let learning = c.learn && learner.is_learning();
        // The clock is read only while learning (the common case reads none).
        let now = learning.then(Instant::now);
        if let (Some(origin), Some(now)) = (origin, now.filter(|_| state.requests() > 1)) {
            learner.reused(origin, state.info().idle_before(), now);
        }
        // The margin below an announced or learned timeout: twice the
        // connection's round trip (its connect time or, if shorter, this
        // exchange's time to first byte), at least the configured floor.
        let margin = || {
            let info = state.info();
            let rtt = info
                .time_to_first_byte()
                .map_or(info.connect_duration(), |t| t.min(info.connect_duration()));
            c.margin.max(rtt.saturating_mul(2))
        };
        let mut limit = c.expiry;
        let (keep_alive, connection) = mentions(headers);
        if let Some(hint) = keep_alive.then(|| keep_alive_timeout(headers)).flatten() {
            limit = limit.min(hint.saturating_sub(margin()));
            shared.stats.inner.hints.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(now) = now {
            if let Some(estimate) = origin.and_then(|o| learner.estimate(o, now)) {
                limit = limit.min(estimate.saturating_sub(margin()));
            }
        }
        if (connection && connection_close(headers))
            || c.max_requests.is_some_and(|max| state.requests() >= max)
        {
            limit = Duration::ZERO;
        }
        state.set_expiry(Some(limit));
        if let Some(age) = c.max_age {
            state.set_retire_at(crate::clock::deadline(state.connected_at(), age));
        }
        state.observe(|| {
            Arc::new(OriginObserver {
                shared: Arc::clone(&self.shared),
                origin: origin.copied(),
                learn: c.learn,
            })
        });
    }
}

impl<S> Layer<S> for IdleExpiryLayer {
    type Service = IdleExpiry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdleExpiry::new(inner, self.clone())
    }
}

/// Counters of an [`IdleExpiryLayer`], shared by its clones and services.
#[derive(Clone, Debug, Default)]
pub struct IdleExpiryStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    expired: AtomicU64,
    refused: AtomicU64,
    server_idle_closes: AtomicU64,
    learned: AtomicU64,
    hints: AtomicU64,
    untracked: AtomicU64,
    /// The warning about untracked responses was logged.
    warned: AtomicBool,
}

impl IdleExpiryStats {
    /// Idle connections this layer closed at their expiry.
    pub fn expired(&self) -> u64 {
        self.inner.expired.load(Ordering::Relaxed)
    }

    /// Requests refused before their first byte because their connection had
    /// expired (the last resort; each is a [`ConnectionExpired`](super::ConnectionExpired)).
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Idle connections the server closed (observed by the tracker).
    pub fn server_idle_closes(&self) -> u64 {
        self.inner.server_idle_closes.load(Ordering::Relaxed)
    }

    /// Server idle closes that changed a learned estimate.
    pub fn learned(&self) -> u64 {
        self.inner.learned.load(Ordering::Relaxed)
    }

    /// Responses whose `Keep-Alive: timeout=N` was applied.
    pub fn hints(&self) -> u64 {
        self.inner.hints.load(Ordering::Relaxed)
    }

    /// Responses that came without the tracker's
    /// [`ConnectionState`](crate::track::ConnectionState), on which the
    /// layer could do nothing: their connections are reused, and may go
    /// stale, as if the layer were not there. Anything but `0` is a
    /// misconfiguration: the client's connector is not wrapped by
    /// [`TrackConnectionsLayer`](crate::track::TrackConnectionsLayer) (or
    /// something between them hides its `Connected` extras), the layer wraps
    /// a composable pool instead of each of its connections
    /// ([`IdleExpiryLayer::connection`]), or the client is reqwest, which
    /// cannot be tracked. The first such response is also logged as a
    /// `tracing` warning.
    pub fn untracked_responses(&self) -> u64 {
        self.inner.untracked.load(Ordering::Relaxed)
    }

    /// Counts a response without the tracker's state, and warns about the
    /// first one (once per set of stats: per layer and its clones).
    fn untracked(&self, version: http::Version) {
        let c = &*self.inner;
        c.untracked.fetch_add(1, Ordering::Relaxed);
        // The flag is read first: after the first warning, untracked
        // responses cost one relaxed load and the add above.
        if !c.warned.load(Ordering::Relaxed) && !c.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                ?version,
                "IdleExpiryLayer: a response came without a tracked connection, so its \
                 connection gets no idle expiry; wrap the client's connector with \
                 TrackConnectionsLayer (or, on a composable pool, each connection with \
                 IdleExpiryLayer::connection). Logged once; IdleExpiryStats::untracked_responses \
                 counts them all"
            );
        }
    }
}

/// Told by a connection's IO about its expiry events.
#[derive(Debug)]
struct OriginObserver {
    shared: Arc<Shared>,
    origin: Option<Origin>,
    learn: bool,
}

impl Observer for OriginObserver {
    fn event(&self, event: Event, state: &ConnectionState) {
        let stats = &self.shared.stats.inner;
        match event {
            Event::Expired => {
                stats.expired.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    connection = state.id(),
                    expiry = ?state.expiry(),
                    "idle connection expired; closed"
                );
            }
            Event::Refused => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    connection = state.id(),
                    "request refused on an expired connection; nothing written"
                );
            }
            Event::ServerIdleClose(idle) => {
                stats.server_idle_closes.fetch_add(1, Ordering::Relaxed);
                // A connection that was not to be reused (expiry zero:
                // `Connection: close`, a request limit) says nothing about
                // the server's idle timeout.
                let reusable = state.expiry().is_some_and(|e| !e.is_zero());
                let learned = match (&self.origin, self.learn && reusable) {
                    (Some(origin), true) => {
                        self.shared.learner.idle_close(origin, idle, Instant::now())
                    }
                    _ => false,
                };
                if learned {
                    stats.learned.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(
                    connection = state.id(),
                    ?idle,
                    learned,
                    "server closed an idle connection"
                );
            }
        }
    }
}
