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

/// What [`now`] answers on this thread: outside a [`scoped`] section the
/// clock; inside one, the section's one clock reading, taken at its first
/// [`now`].
#[derive(Clone, Copy)]
enum Scope {
    Outside,
    Unread,
    Read(Instant),
}

thread_local! {
    static SCOPE: std::cell::Cell<Scope> = const { std::cell::Cell::new(Scope::Outside) };
}

/// Runs `f`, a short synchronous section of the request path (a `call`, or
/// one poll of the engine's request future), with every [`now`] in it
/// answered by one clock reading. A clock read takes about 25 ns on a VM
/// (some 75 instructions' time), and such a section makes several checks in the
/// same microseconds (PhaseTimeout's start, the connection's expiry at
/// checkout; the expiry at `poll_ready` and the attempt's start). Sections
/// nest (the outermost reading holds); nothing awaits inside one.
pub(crate) fn scoped<R>(f: impl FnOnce() -> R) -> R {
    section(Scope::Unread, f)
}

/// [`scoped`], with the section's reading already taken: `now`.
pub(crate) fn scoped_at<R>(now: Instant, f: impl FnOnce() -> R) -> R {
    section(Scope::Read(now), f)
}

fn section<R>(scope: Scope, f: impl FnOnce() -> R) -> R {
    // Restores the thread's state however `f` ends (a panic included).
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPE.with(|s| s.set(Scope::Outside));
        }
    }
    let entered = SCOPE.with(|s| {
        let outside = matches!(s.get(), Scope::Outside);
        if outside {
            s.set(scope);
        }
        outside
    });
    if !entered {
        return f();
    }
    let _restore = Restore;
    f()
}

/// Now, on tokio's clock: the [`scoped`] section's reading inside one.
pub(crate) fn now() -> Instant {
    SCOPE.with(|s| match s.get() {
        Scope::Outside => Instant::now(),
        Scope::Read(at) => at,
        Scope::Unread => {
            let at = Instant::now();
            s.set(Scope::Read(at));
            at
        }
    })
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
    pub(crate) fn stamp(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.0).as_nanos()).unwrap_or(NEVER - 1)
    }

    pub(crate) fn at(&self, stamp: u64) -> Option<Instant> {
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

    /// Stores a value already converted by [`Origin::stamp`] (one clock
    /// conversion shared by several stamps taken at the same instant).
    pub(crate) fn set_raw(&self, nanos: u64) {
        self.0.store(nanos, Ordering::Release);
    }

    /// The stored nanoseconds since the origin, if set.
    pub(crate) fn raw(&self) -> Option<u64> {
        let v = self.0.load(Ordering::Acquire);
        (v != NEVER).then_some(v)
    }

    pub(crate) fn clear(&self) {
        self.0.store(NEVER, Ordering::Release);
    }

    pub(crate) fn get(&self, origin: &Origin) -> Option<Instant> {
        origin.at(self.0.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::advance;

    use super::*;

    /// Inside a scoped section every `now` is the section's one reading
    /// (nested sections keep the outer one); outside, the clock.
    #[test]
    fn a_scoped_section_reads_the_clock_once() {
        let pause = std::time::Duration::from_millis(2);
        let (first, second, nested, unwound) = scoped(|| {
            let first = now();
            std::thread::sleep(pause);
            let nested = scoped(|| {
                std::thread::sleep(pause);
                now()
            });
            let unwound = std::panic::catch_unwind(|| scoped(|| panic!("inner")));
            (first, now(), nested, unwound.is_err())
        });
        assert_eq!(first, second);
        assert_eq!(first, nested);
        assert!(unwound);
        let after = now();
        assert!(after >= first + 2 * pause, "{:?}", after - first);
        std::thread::sleep(pause);
        assert!(now() >= after + pause, "outside a section, the clock");
        // A section given its reading answers with it.
        assert_eq!(scoped_at(first, now), first);
        // A section that never asks reads nothing, and leaves no reading.
        scoped(|| ());
        let later = scoped(now);
        assert!(later >= after + pause);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_adds_the_limit_on_tokios_clock() {
        let base = Instant::now();
        let at = deadline(base, Duration::from_millis(1500));
        assert_eq!(at - base, Duration::from_millis(1500));
        assert!(Instant::now() < at);
        advance(Duration::from_millis(1500)).await;
        assert_eq!(Instant::now(), at);
        assert_eq!(deadline(base, Duration::ZERO), base);
    }

    #[tokio::test(start_paused = true)]
    async fn enormous_limits_saturate_to_the_far_future_instead_of_panicking() {
        let base = Instant::now();
        let far = far_future(base);
        assert_eq!(far - base, FAR);
        assert_eq!(deadline(base, Duration::MAX), far);
        assert_eq!(deadline(base, FAR), far);
        // Below the overflow a limit is kept as given, even beyond FAR.
        assert_eq!(deadline(base, FAR * 2) - base, FAR * 2);
    }

    #[test]
    fn never_until_set_and_after_clear() {
        let origin = Origin::new(Instant::now());
        let stamp = Stamp::never();
        assert_eq!(stamp.get(&origin), None);
        stamp.set(&origin, origin.instant());
        assert_eq!(stamp.get(&origin), Some(origin.instant()));
        stamp.clear();
        assert_eq!(stamp.get(&origin), None);
    }

    #[tokio::test(start_paused = true)]
    async fn stamps_round_trip_to_the_nanosecond() {
        let origin = Origin::new(Instant::now());
        let stamp = Stamp::never();
        for step in [1, 999_999_999, 1_000_000_007, 3_600_000_000_000] {
            advance(Duration::from_nanos(step)).await;
            let now = Instant::now();
            stamp.set(&origin, now);
            assert_eq!(stamp.get(&origin), Some(now));
        }
        // Setting again overwrites.
        stamp.set(&origin, origin.instant());
        assert_eq!(stamp.get(&origin), Some(origin.instant()));
    }

    #[tokio::test(start_paused = true)]
    async fn instants_before_the_origin_read_back_as_the_origin() {
        let early = Instant::now();
        advance(Duration::from_secs(5)).await;
        let origin = Origin::new(Instant::now());
        let stamp = Stamp::never();
        stamp.set(&origin, early);
        assert_eq!(stamp.get(&origin), Some(origin.instant()));
    }

    #[test]
    fn instants_beyond_584_years_saturate_and_never_read_as_never() {
        let origin = Origin::new(Instant::now());
        // `u64::MAX` nanoseconds is about 584 years; 600 years is beyond it.
        let Some(beyond) = origin
            .instant()
            .checked_add(Duration::from_secs(86_400 * 365 * 600))
        else {
            return; // This platform's Instant cannot represent it at all.
        };
        assert_eq!(origin.stamp(beyond), NEVER - 1);
        let stamp = Stamp::never();
        stamp.set(&origin, beyond);
        let read = stamp.get(&origin).expect("a saturated stamp is still set");
        assert_eq!(read - origin.instant(), Duration::from_nanos(NEVER - 1));
    }
}
