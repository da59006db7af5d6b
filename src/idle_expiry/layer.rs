//! `IdleExpiryLayer`: the configuration, the shared learner and stats.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;
use tower_layer::Layer;

use super::hint::{connection_close, keep_alive_timeout, mentions};
use super::learn::{
    learned_limit, probe_rest, Learner, Origin, Verdict, DEFAULT_ORIGINS, DEFAULT_RELEARN_AFTER,
};
use super::IdleExpiry;
use crate::track::{ConnectionState, Event, Limits, Observer};

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
#[derive(Clone)]
pub struct IdleExpiryLayer {
    // Behind one `Arc`: every request's response future carries a clone of
    // the layer (one word and one reference count, not the whole
    // configuration).
    inner: Arc<LayerInner>,
}

/// The configuration and the state shared by clones; the builder methods
/// copy it before a change (the state stays shared).
#[derive(Clone)]
struct LayerInner {
    config: Config,
    shared: Arc<Shared>,
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
            inner: Arc::new(LayerInner {
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
            }),
        }
    }

    /// The configuration.
    fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The learner and the counters, shared by clones.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The configuration, to change (copied first if shared).
    fn config_mut(&mut self) -> &mut Config {
        &mut Arc::make_mut(&mut self.inner).config
    }

    /// The smallest margin kept below an announced or learned idle timeout
    /// (default [`DEFAULT_MARGIN`]). The margin used is the larger of this and
    /// twice the connection's measured round trip (its connect time or, if
    /// shorter, the last exchange's time to first byte).
    pub fn margin(mut self, floor: Duration) -> Self {
        self.config_mut().margin = floor;
        self
    }

    /// Closes a connection at its first idle point after this age (never
    /// mid-response). `None` (the default) for no limit.
    pub fn max_age(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.config_mut().max_age = limit.into();
        self
    }

    /// Closes a connection at the idle point after this many requests. `None`
    /// (the default) for no limit; `0` and `1` both mean one request per
    /// connection.
    pub fn max_requests(mut self, limit: impl Into<Option<u64>>) -> Self {
        self.config_mut().max_requests = limit.into();
        self
    }

    /// Whether to learn origins' idle timeouts from the closes observed on
    /// idle connections (default `true`).
    pub fn learn(mut self, learn: bool) -> Self {
        self.config_mut().learn = learn;
        self
    }

    /// How many origins' learned idle timeouts are kept (default 1024; the
    /// least recently used is evicted), and how long an observation is
    /// trusted (default 5 minutes). Starts a new, empty learner shared by the
    /// clones made from here on.
    pub fn learner(mut self, origins: usize, relearn_after: Duration) -> Self {
        let shared = Arc::new(Shared {
            learner: Learner::new(origins, relearn_after),
            stats: self.shared().stats.clone(),
        });
        Arc::make_mut(&mut self.inner).shared = shared;
        self
    }

    /// How many origins the learner remembers now (never more than its bound).
    pub fn learned_origins(&self) -> usize {
        self.shared().learner.len()
    }

    /// The idle timeout learned for `uri`'s origin (scheme, host, port), if
    /// one is trusted now; connections to it are reused while idle for
    /// less than this minus their margin (never less than half of it).
    pub fn learned_timeout(&self, uri: &http::Uri) -> Option<Duration> {
        let origin = Origin::of(uri)?;
        self.shared().learner.estimate(&origin, Instant::now())
    }

    /// The counters shared by every service this layer (and its clones) make.
    pub fn stats(&self) -> IdleExpiryStats {
        self.shared().stats.clone()
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
        self.shared().stats.untracked(version);
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
        let c = self.config();
        let shared = self.shared();
        let learner = &shared.learner;
        // Read before the check: an estimate learned after it bumps the
        // generation, and the connection looks it up then.
        let generation = learner.generation();
        let learning = c.learn && learner.is_learning();
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
        if (connection && connection_close(headers))
            || c.max_requests.is_some_and(|max| state.requests() >= max)
        {
            limit = Duration::ZERO;
        }
        // The connection's own expiry; what is learned for its origin is
        // applied live by its observer (below), also while it sits idle.
        state.set_expiry(Some(limit));
        if let Some(age) = c.max_age {
            state.set_retire_at(crate::clock::deadline(state.connected_at(), age));
        }
        let observer = state.observe(|| {
            Arc::new(OriginObserver::new(
                Arc::clone(shared),
                origin.copied(),
                c.learn,
                generation,
                margin(),
            ))
        });
        // The clock and the learner's lock only while learning (the common
        // case takes neither).
        if let (true, Some(origin)) = (learning, origin) {
            if let Some(observer) = observer.as_any().downcast_ref::<OriginObserver>() {
                observer.on_response(state, origin, margin(), limit);
            }
        }
    }
}

impl fmt::Debug for IdleExpiryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.config();
        f.debug_struct("IdleExpiryLayer")
            .field("expiry", &c.expiry)
            .field("margin", &c.margin)
            .field("max_age", &c.max_age)
            .field("max_requests", &c.max_requests)
            .field("learn", &c.learn)
            .field("learned_origins", &self.learned_origins())
            .field("stats", &self.shared().stats)
            .finish()
    }
}

impl<S> Layer<S> for IdleExpiryLayer {
    type Service = IdleExpiry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdleExpiry::new(inner, self.clone())
    }
}

/// Counters of an [`IdleExpiryLayer`], shared by its clones and services.
#[derive(Clone, Default)]
pub struct IdleExpiryStats {
    inner: Arc<Counters>,
}

/// The counters by the names of their getters.
impl fmt::Debug for IdleExpiryStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleExpiryStats")
            .field("expired", &self.expired())
            .field("refused", &self.refused())
            .field("server_idle_closes", &self.server_idle_closes())
            .field("learned", &self.learned())
            .field("hints", &self.hints())
            .field("untracked_responses", &self.untracked_responses())
            .field("lost_races", &self.lost_races())
            .field("held", &self.held())
            .field("agreed", &self.agreed())
            .field("probes", &self.probes())
            .field("healed", &self.healed())
            .finish()
    }
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
    // Learning: observations, estimate changes, healing probes.
    lost_races: AtomicU64,
    held: AtomicU64,
    agreed: AtomicU64,
    probes: AtomicU64,
    healed: AtomicU64,
}

impl IdleExpiryStats {
    /// Idle connections this layer closed at their expiry.
    pub fn expired(&self) -> u64 {
        self.inner.expired.load(Ordering::Relaxed)
    }

    /// Requests refused before their first byte because their connection had
    /// expired (the last resort; each is a [`ConnectionExpired`](crate::track::ConnectionExpired)).
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Idle connections the server closed (observed by the tracker). Each
    /// is counted once the learner has taken it: a count seen here comes
    /// with what the close taught ([`held`](Self::held), an estimate).
    pub fn server_idle_closes(&self) -> u64 {
        self.inner.server_idle_closes.load(Ordering::Acquire)
    }

    /// Observations (server idle closes and lost races) that set or lowered
    /// an origin's learned estimate, [`agreed`](Self::agreed) ones included.
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

// Learning's counters, kept apart from the ones above.
impl IdleExpiryStats {
    /// Requests on reused connections that failed before any byte of their
    /// response arrived (the stale keep-alive race, lost): each is an
    /// observation of the origin's idle timeout, like an idle close, and is
    /// counted once the learner has taken it.
    pub fn lost_races(&self) -> u64 {
        self.inner.lost_races.load(Ordering::Acquire)
    }

    /// Observations held back instead of applied: below the floor, far
    /// below the estimate, or below a longer idle the server kept (a reload,
    /// a scale-in, a resume from suspend), waiting for another that agrees.
    pub fn held(&self) -> u64 {
        self.inner.held.load(Ordering::Relaxed)
    }

    /// Estimates set or lowered by two held observations that agreed (also
    /// counted in [`learned`](Self::learned)).
    pub fn agreed(&self) -> u64 {
        self.inner.agreed.load(Ordering::Relaxed)
    }

    /// Healing probes started: connections of an origin whose expiry
    /// learning lowered, kept open (or, below the floor, reused) past the
    /// learned limit to test the estimate.
    pub fn probes(&self) -> u64 {
        self.inner.probes.load(Ordering::Relaxed)
    }

    /// Estimates forgotten because the server was seen keeping a connection
    /// longer (a probe it did not close, a reuse past the estimate): wrong
    /// estimates healed.
    pub fn healed(&self) -> u64 {
        self.inner.healed.load(Ordering::Relaxed)
    }
}

/// `u64::MAX` in the observer's nanosecond fields: none.
const NONE: u64 = u64::MAX;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(NONE - 1)
}

/// Told by a connection's IO about its expiry events, and asked by it for
/// the limits learned for its origin.
#[derive(Debug)]
struct OriginObserver {
    shared: Arc<Shared>,
    origin: Option<Origin>,
    learn: bool,
    // Learning: the origin's estimate as of the learner's `generation`, this
    // connection's margin, and its healing probe for this idle period.
    generation: AtomicU64,
    estimate: AtomicU64,
    margin: AtomicU64,
    probe: AtomicU64,
    probe_reused: AtomicBool,
}

impl OriginObserver {
    fn new(
        shared: Arc<Shared>,
        origin: Option<Origin>,
        learn: bool,
        generation: u64,
        margin: Duration,
    ) -> Self {
        OriginObserver {
            shared,
            origin,
            learn,
            generation: AtomicU64::new(generation),
            estimate: AtomicU64::new(NONE),
            margin: AtomicU64::new(nanos(margin)),
            probe: AtomicU64::new(NONE),
            probe_reused: AtomicBool::new(false),
        }
    }

    /// A response on the connection, while learning: one lock on the
    /// learner records the reuse, reads the estimate and maybe grants a
    /// probe.
    fn on_response(
        &self,
        state: &ConnectionState,
        origin: &Origin,
        margin: Duration,
        own: Duration,
    ) {
        let stats = &self.shared.stats.inner;
        let reused_after = (state.requests() > 1).then(|| state.info().idle_before());
        let probing = self.probe.load(Ordering::Acquire) != NONE;
        let Some(learned) = self.shared.learner.on_response(
            origin,
            reused_after,
            margin,
            own,
            probing,
            Instant::now(),
        ) else {
            self.probe.store(NONE, Ordering::Relaxed);
            return;
        };
        self.margin.store(nanos(margin), Ordering::Relaxed);
        self.estimate
            .store(learned.estimate.map_or(NONE, nanos), Ordering::Relaxed);
        self.generation.store(learned.generation, Ordering::Release);
        if let Some(estimate) = learned.refuted {
            stats.healed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                connection = state.id(),
                ?estimate,
                reused_after = ?reused_after.unwrap_or_default(),
                "reuse after a longer idle refuted the learned idle timeout; forgotten"
            );
        }
        match learned.probe {
            Some(probe) => {
                self.probe_reused.store(probe.reused, Ordering::Relaxed);
                self.probe.store(nanos(probe.reach), Ordering::Release);
                if probe.started {
                    stats.probes.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        connection = state.id(),
                        estimate = ?learned.estimate.unwrap_or_default(),
                        reach = ?probe.reach,
                        reused = probe.reused,
                        "healing probe: the connection stays open past the learned limit"
                    );
                }
            }
            None => self.probe.store(NONE, Ordering::Release),
        }
    }

    /// Looks the origin's estimate up again (it changed since the last
    /// look).
    fn refresh(&self, generation: u64) {
        let estimate = self
            .origin
            .and_then(|o| self.shared.learner.estimate(&o, Instant::now()));
        self.estimate
            .store(estimate.map_or(NONE, nanos), Ordering::Relaxed);
        self.generation.store(generation, Ordering::Release);
    }

    /// An observation of the origin's idle timeout (idle close, lost race).
    fn observe(&self, state: &ConnectionState, idle: Duration, kind: &'static str) {
        let stats = &self.shared.stats.inner;
        // A connection that was not to be reused (own expiry zero:
        // `Connection: close`, a request limit) says nothing about the
        // server's idle timeout.
        let reusable = state.own_expiry().is_some_and(|e| !e.is_zero());
        let verdict = match (&self.origin, self.learn && reusable) {
            (Some(origin), true) => self.shared.learner.observe(origin, idle, Instant::now()),
            _ => {
                tracing::debug!(connection = state.id(), ?idle, kind, "not learned from");
                return;
            }
        };
        match verdict {
            Verdict::Lowered { from, to, agreed } => {
                stats.learned.fetch_add(1, Ordering::Relaxed);
                if agreed {
                    stats.agreed.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(
                    connection = state.id(),
                    ?idle,
                    kind,
                    ?from,
                    ?to,
                    agreed,
                    "learned idle timeout lowered"
                );
            }
            Verdict::Held(why) => {
                stats.held.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    connection = state.id(),
                    ?idle,
                    kind,
                    ?why,
                    "observation held until another agrees"
                );
            }
            Verdict::Confirmed | Verdict::Unchanged => {
                tracing::debug!(
                    connection = state.id(),
                    ?idle,
                    kind,
                    ?verdict,
                    "learned idle timeout kept"
                );
            }
        }
    }

    /// Whether the connection, idle for `idle`, is a healing probe reused
    /// below the floor that is still resting: a request would prove nothing
    /// on it before the estimate plus its tolerance, and would restart its
    /// idle (on a busy origin the probe would never be idle long enough to
    /// heal the estimate).
    fn probe_rests(&self, idle: Duration) -> bool {
        if !self.learn
            || self.probe.load(Ordering::Acquire) == NONE
            || !self.probe_reused.load(Ordering::Relaxed)
        {
            return false;
        }
        let generation = self.shared.learner.generation();
        if generation != self.generation.load(Ordering::Acquire) {
            self.refresh(generation);
        }
        match self.estimate.load(Ordering::Relaxed) {
            NONE => false,
            estimate => idle <= probe_rest(Duration::from_nanos(estimate)),
        }
    }
}

/// Whether `state`'s connection is a healing probe that rests now
/// (see [`OriginObserver::probe_rests`]): not to be handed a request, not
/// to be closed either. For the one-call client's checkout, which sets it
/// aside; the tracker itself still lets a request use it (a pool that
/// cannot set connections aside would otherwise refuse, and so close, the
/// probe).
pub(crate) fn probe_rests(state: &ConnectionState) -> bool {
    let Some(observer) = state
        .observer()
        .and_then(|o| o.as_any().downcast_ref::<OriginObserver>())
    else {
        return false;
    };
    if observer.probe.load(Ordering::Acquire) == NONE {
        return false;
    }
    state
        .idle_since()
        .is_some_and(|since| observer.probe_rests(Instant::now().saturating_duration_since(since)))
}

impl Observer for OriginObserver {
    fn event(&self, event: Event, state: &ConnectionState) {
        let stats = &self.shared.stats.inner;
        match event {
            Event::Expired(idle) => {
                stats.expired.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    connection = state.id(),
                    expiry = ?state.expiry(),
                    ?idle,
                    "idle connection expired; closed"
                );
                // A probe the server did not close: kept at least this long.
                if self.probe.load(Ordering::Acquire) != NONE {
                    let refuted = self
                        .origin
                        .filter(|_| self.learn)
                        .and_then(|o| self.shared.learner.kept(&o, idle, Instant::now()));
                    if let Some(estimate) = refuted {
                        stats.healed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            connection = state.id(),
                            ?estimate,
                            ?idle,
                            "healing probe outlived the learned idle timeout; forgotten"
                        );
                    }
                }
            }
            Event::Refused => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    connection = state.id(),
                    "request refused on an expired connection; nothing written"
                );
            }
            // Counted after the learner took the observation: whoever sees
            // the count sees what it taught (an estimate, a held
            // observation), not a moment before.
            Event::ServerIdleClose(idle) => {
                tracing::debug!(
                    connection = state.id(),
                    ?idle,
                    "server closed an idle connection"
                );
                self.observe(state, idle, "idle close");
                stats.server_idle_closes.fetch_add(1, Ordering::Release);
            }
            Event::LostRace(idle) => {
                tracing::debug!(
                    connection = state.id(),
                    ?idle,
                    "request on a reused connection failed before any response byte"
                );
                self.observe(state, idle, "lost race");
                stats.lost_races.fetch_add(1, Ordering::Release);
            }
        }
    }

    fn learned(&self) -> Limits {
        if !self.learn {
            return Limits::NONE;
        }
        let generation = self.shared.learner.generation();
        if generation != self.generation.load(Ordering::Acquire) {
            self.refresh(generation);
        }
        let estimate = self.estimate.load(Ordering::Relaxed);
        if estimate == NONE {
            return Limits::NONE;
        }
        let limit = learned_limit(
            Duration::from_nanos(estimate),
            Duration::from_nanos(self.margin.load(Ordering::Relaxed)),
        );
        let reuse = nanos(limit);
        match self.probe.load(Ordering::Acquire) {
            NONE => Limits {
                reuse,
                close: reuse,
            },
            reach if self.probe_reused.load(Ordering::Relaxed) => Limits {
                reuse: reuse.max(reach),
                close: reuse.max(reach),
            },
            reach => Limits {
                reuse,
                close: reuse.max(reach),
            },
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
