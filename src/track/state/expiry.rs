//! The idle expiry mechanism: the effective expiry, the idle deadline, the
//! promise of an idle connection to a request, the refusal owed to one
//! begun past the deadline, and the events told to IdleExpiry.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{ConnectionState, NO_EXPIRY};
use crate::track::{ConnectionExpired, ExchangeOutcome};

impl ConnectionState {
    /// The connection's effective idle expiry (configured, announced by the
    /// server, or learned from its origin's idle closes), if
    /// [`IdleExpiry`](crate::idle_expiry) set one: the longest idle after
    /// which it is still reused.
    pub fn expiry(&self) -> Option<Duration> {
        match self.limits().reuse {
            NO_EXPIRY => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// The expiry IdleExpiry set on this connection itself (configured,
    /// announced, limits), without what its origin's learned idle timeout
    /// adds.
    pub(crate) fn own_expiry(&self) -> Option<Duration> {
        match self.inner.expiry.load(Ordering::Acquire) {
            NO_EXPIRY => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// The connection's own expiry combined with the learned limits its
    /// observer reports (the origin's estimate, shared live by all its
    /// connections, and a healing probe's longer close).
    #[inline]
    fn limits(&self) -> Limits {
        let inner = &self.inner;
        let own = inner.expiry.load(Ordering::Acquire);
        // The common case, two loads: the observer had nothing learned for
        // this connection and nothing learned changed since.
        if inner.unlearned_at.load(Ordering::Relaxed) == super::epoch() {
            return Limits {
                reuse: own,
                close: own,
            };
        }
        self.limits_asked(own)
    }

    /// [`limits`](Self::limits), asking the observer.
    #[cold]
    fn limits_asked(&self, own: u64) -> Limits {
        let inner = &self.inner;
        let epoch = super::epoch();
        let learned = match inner.observer.get() {
            Some(observer) => observer.learned(),
            None => Limits::NONE,
        };
        if learned == Limits::NONE {
            inner.unlearned_at.store(epoch, Ordering::Relaxed);
            return Limits {
                reuse: own,
                close: own,
            };
        }
        let reuse = own.min(learned.reuse);
        Limits {
            reuse,
            close: reuse.max(own.min(learned.close)),
        }
    }

    /// Sets the connection's own idle expiry and wakes the IO so a
    /// known-idle connection re-arms its timer.
    pub(crate) fn set_expiry(&self, expiry: Option<Duration>) {
        let nanos = expiry.map_or(NO_EXPIRY, |d| {
            u64::try_from(d.as_nanos()).unwrap_or(NO_EXPIRY - 1)
        });
        let old = self.inner.expiry.swap(nanos, Ordering::AcqRel);
        // Only a known-idle connection has a timer to re-arm; one in flight
        // arms it when its exchange ends.
        if old != nanos && self.idle_since().is_some() {
            self.inner.timer_at.clear();
            self.wake();
        }
    }

    /// When the known-idle connection expires (is no longer reused):
    /// [`idle_since`](Self::idle_since) plus [`expiry`](Self::expiry), or its
    /// retirement (maximum age) if that comes first. `None` unless the
    /// connection is known idle and has one, and while a request has been
    /// promised the connection (see
    /// [`IdleExpiryConnection`](crate::idle_expiry::IdleExpiryConnection)).
    pub fn idle_deadline(&self) -> Option<Instant> {
        self.idle_deadlines_raw()
            .and_then(|(reuse, _)| self.inner.origin.at(reuse))
    }

    /// The end of reuse and the close of the known-idle connection, in
    /// nanoseconds since the origin: the IO's hot path compares them with its
    /// timer without converting instants.
    pub(crate) fn idle_deadlines_raw(&self) -> Option<(u64, u64)> {
        let inner = &self.inner;
        // The common case, checked with three loads: nothing to expire.
        let expiry = inner.expiry.load(Ordering::Relaxed);
        let retire = inner.retire_at.raw();
        if expiry == NO_EXPIRY && retire.is_none() && inner.observer.get().is_none() {
            return None;
        }
        if inner.claimed.load(Ordering::Acquire)
            || self.outcome() != ExchangeOutcome::Completed
            || self.is_closed()
            || self.is_upgraded()
        {
            return None;
        }
        let since = inner.idle_since.raw()?;
        let limits = self.limits();
        let reuse = deadline_raw(since, limits.reuse, retire)?;
        if limits.close == limits.reuse {
            return Some((reuse, reuse));
        }
        let close = deadline_raw(since, limits.close, retire).unwrap_or(reuse);
        Some((reuse, close.max(reuse)))
    }

    /// Where the IO's expiry timer is armed, in nanoseconds since the origin.
    pub(crate) fn timer_at_raw(&self) -> Option<u64> {
        self.inner.timer_at.raw()
    }

    /// An instant from nanoseconds since the origin.
    pub(crate) fn at(&self, raw: u64) -> Option<Instant> {
        self.inner.origin.at(raw)
    }

    /// Promises the idle connection to a request that is about to be written:
    /// from now until that request's exchange opens, the IO neither closes
    /// it at its expiry nor refuses the write, so a request accepted just
    /// before the deadline is not failed just after it (the margin below the
    /// server's timeout covers the difference).
    pub(crate) fn claim(&self) {
        self.inner.claimed.store(true, Ordering::Release);
    }

    /// The refusal error if the connection has expired: it was closed at its
    /// expiry, or it is known idle past its deadline. The clock is read only
    /// if the connection is idle with a deadline: a clock read takes about
    /// 25 ns on a VM (some 75 instructions' time), and a request makes
    /// several such checks.
    pub(crate) fn expired_now(&self) -> Option<ConnectionExpired> {
        if self.is_upgraded() {
            return None;
        }
        // On stamps (nanoseconds since the origin) rather than instants:
        // this runs twice for every request.
        let inner = &self.inner;
        let since = inner.idle_since.raw()?;
        let closed_at_expiry = self.was_expired();
        // Whether claimed or not: a promise that was never used does not
        // make a stale connection fresh.
        if !closed_at_expiry && (self.outcome() != ExchangeOutcome::Completed || self.is_closed()) {
            return None;
        }
        let deadline = deadline_raw(since, self.limits().reuse, inner.retire_at.raw())?;
        let now = self.stamp(crate::clock::now());
        if !closed_at_expiry && now < deadline {
            return None;
        }
        Some(ConnectionExpired::from_nanos(
            now.saturating_sub(since),
            deadline.saturating_sub(since),
        ))
    }

    /// Sets when the connection retires (its maximum age): it is closed at
    /// the first idle point after that instant.
    pub(crate) fn set_retire_at(&self, at: Instant) {
        self.inner.retire_at.set(&self.inner.origin, at);
    }

    /// Retires the connection now (a [`drain`](crate::drain)): closed at
    /// once if it is known idle (EOF to hyper, which closes the socket
    /// cleanly), otherwise at the end of its exchange in flight, instead of
    /// going back to its pool. Nothing on an upgraded connection (the
    /// caller's tunnel) or on HTTP/2 (no exchanges: its pool drops it).
    /// Returns whether it was known idle.
    pub(crate) fn retire_now(&self) -> bool {
        if self.is_upgraded() || self.is_http2() {
            return false;
        }
        let idle = self.idle_since().is_some();
        self.set_retire_at(Instant::now());
        self.wake();
        idle
    }

    /// Installs the observer told about this connection's expiry events
    /// (the first one installed stays) and returns the one installed.
    pub(crate) fn observe(&self, make: impl FnOnce() -> Arc<dyn Observer>) -> &Arc<dyn Observer> {
        self.inner.observer.get_or_init(make)
    }

    /// The observer installed, if any.
    pub(crate) fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.inner.observer.get()
    }

    pub(crate) fn notify(&self, event: Event) {
        if let Some(observer) = self.inner.observer.get() {
            observer.event(event, self);
        }
    }

    /// Whether the tracker closed the connection itself because it stayed
    /// idle past its expiry, or refused a request on it for that reason
    /// (rather than the server closing it).
    pub fn was_expired(&self) -> bool {
        self.inner.expired.load(Ordering::Acquire)
    }

    /// The IO closed the known-idle connection at its expiry (the server had
    /// not closed it).
    pub(crate) fn on_expired(&self) {
        let idle = self.idle_since().map_or(Duration::ZERO, |since| {
            Instant::now().saturating_duration_since(since)
        });
        self.inner.expired.store(true, Ordering::Release);
        self.inner.closed.store(true, Ordering::Release);
        self.notify(Event::Expired(idle));
    }

    /// The IO refused a request's write because the connection had expired.
    pub(crate) fn on_refused(&self) {
        self.inner.expired.store(true, Ordering::Release);
        self.notify(Event::Refused);
    }

    /// How far the known-idle connection is past its deadline plus `grace`
    /// at `now` ([`stamp`](Self::stamp) units): `(idle, limit)` in
    /// nanoseconds, `None` while it is not (or has no deadline). What both
    /// the IO's last-resort refusal and an attempt announced on an expired
    /// connection go by.
    pub(crate) fn overdue(&self, now: u64, grace: Duration) -> Option<(u64, u64)> {
        let (deadline, _) = self.idle_deadlines_raw()?;
        if now < deadline.saturating_add(nanos(grace)) {
            return None;
        }
        let since = self
            .inner
            .idle_since
            .raw()
            .unwrap_or(deadline)
            .min(deadline);
        Some((now.saturating_sub(since), deadline - since))
    }

    /// The refusal the IO owes the current attempt's first write, if its
    /// connection had expired when it began.
    pub(crate) fn take_refusal(&self) -> Option<ConnectionExpired> {
        let inner = &self.inner;
        if inner.refuse_limit.load(Ordering::Relaxed) == NO_EXPIRY {
            return None;
        }
        let limit = inner.refuse_limit.swap(NO_EXPIRY, Ordering::AcqRel);
        (limit != NO_EXPIRY).then(|| {
            ConnectionExpired::from_nanos(inner.refuse_idle.load(Ordering::Relaxed), limit)
        })
    }

    /// The IO armed its expiry timer at `at`.
    pub(crate) fn timer_armed(&self, at: Instant) {
        self.inner.timer_at.set(&self.inner.origin, at);
    }
}

/// A duration in nanoseconds, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The idle deadline in nanoseconds since the origin: `since` plus the
/// expiry (`NO_EXPIRY` for none), or the retirement if that comes first
/// (never before `since`); `None` when there is neither.
fn deadline_raw(since: u64, expiry: u64, retire: Option<u64>) -> Option<u64> {
    // Below `u64::MAX`, which reads back as "never".
    let by_idle = (expiry != NO_EXPIRY).then(|| since.saturating_add(expiry).min(NO_EXPIRY - 1));
    let retire = retire.map(|r| r.max(since));
    match (by_idle, retire) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What the IO tells an [`Observer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// The IO closed the idle connection at its expiry, after it had been
    /// idle this long (the server had not closed it by then).
    Expired(Duration),
    /// A write was refused because the connection had expired.
    Refused,
    /// The server closed the connection after it had been idle this long.
    ServerIdleClose(Duration),
    /// A request on the reused connection failed (EOF, reset, failed write)
    /// before any byte of its response arrived; the connection had been
    /// idle this long when the request began.
    LostRace(Duration),
}

/// Limits on a connection's idle time in nanoseconds (`NO_EXPIRY`: none):
/// it is reused while idle for less than `reuse`, and the IO closes it at
/// `close` (never before `reuse`; later only for a healing probe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) reuse: u64,
    pub(crate) close: u64,
}

impl Limits {
    /// No limit.
    pub(crate) const NONE: Limits = Limits {
        reuse: NO_EXPIRY,
        close: NO_EXPIRY,
    };
}

/// Told about a connection's expiry events, and asked for the limits it
/// learned (IdleExpiry's learner and stats).
pub(crate) trait Observer: Send + Sync + 'static {
    fn event(&self, event: Event, state: &ConnectionState);

    /// The learned limits on the connection's idle time, consulted live at
    /// every expiry check (so a connection already idle follows its origin's
    /// estimate as soon as it changes).
    fn learned(&self) -> Limits;

    /// The observer, for the layer that installed it.
    fn as_any(&self) -> &dyn std::any::Any;
}
