//! Lock-free timestamps and saturating deadlines on tokio's clock.
//!
//! Everything uses `tokio::time::Instant`, so paused-time tests are exact.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const NEVER: u64 = u64::MAX;

/// About 30 years: what "no deadline" and overflowing deadlines become.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `base + limit`, saturating to a far-future instant instead of panicking on
/// enormous limits.
pub(crate) fn deadline(base: Instant, limit: Duration) -> Instant {
    base.checked_add(limit).unwrap_or_else(|| far_future(base))
}

/// An instant so far ahead that it never fires in practice.
pub(crate) fn far_future(base: Instant) -> Instant {
    base.checked_add(FAR).unwrap_or(base)
}

/// The instant timestamps are measured from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Origin(Instant);

impl Origin {
    pub(crate) fn new(at: Instant) -> Self {
        Origin(at)
    }

    pub(crate) fn instant(&self) -> Instant {
        self.0
    }

    /// Nanoseconds since the origin; saturates (584 years) rather than wraps.
    fn stamp(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.0).as_nanos()).unwrap_or(NEVER - 1)
    }

    fn at(&self, stamp: u64) -> Option<Instant> {
        (stamp != NEVER).then(|| self.0 + Duration::from_nanos(stamp))
    }
}

/// An optional instant, stored in one atomic relative to an [`Origin`].
#[derive(Debug)]
pub(crate) struct Stamp(AtomicU64);

impl Stamp {
    pub(crate) const fn never() -> Self {
        Stamp(AtomicU64::new(NEVER))
    }

    pub(crate) fn set(&self, origin: &Origin, t: Instant) {
        self.0.store(origin.stamp(t), Ordering::Release);
    }

    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed) != NEVER
    }

    pub(crate) fn clear(&self) {
        self.0.store(NEVER, Ordering::Release);
    }

    pub(crate) fn get(&self, origin: &Origin) -> Option<Instant> {
        origin.at(self.0.load(Ordering::Acquire))
    }
}
