//! Learning an origin's unannounced idle timeout from the closes the tracker
//! observes on idle connections.
//!
//! # The rule
//!
//! Per origin (scheme, host and port) the learner keeps an *estimate* of the
//! server's idle timeout and the *longest idle reused safely*:
//!
//! * When the server closes a connection of this origin that had been idle
//!   for `d` (the tracker saw EOF or a reset with no exchange in flight, the
//!   layer had not closed it itself, and it was eligible for reuse), `d` is an
//!   upper bound of the server's idle timeout: the estimate becomes
//!   `min(estimate, d)`.
//! * Unless a reuse after an idle *longer* than `d` succeeded within the last
//!   `relearn_after`: then the server evidently keeps connections longer, and
//!   the close was for another reason (a restart, a connection limit). It is
//!   ignored, so such a close costs nothing.
//! * An estimate (and a safe-reuse record) older than `relearn_after` is
//!   forgotten, which is how the estimate recovers upward when a server's
//!   timeout grows, or after a close that was not an idle timeout.
//!
//! **Worst case.** Until the first idle close of an origin is observed, and
//! for the first idle close after an estimate was forgotten, requests to it
//! can race the server's close exactly as they would without this layer
//! (combine with `RetryOnStaleConnection` for those). An early close that
//! was not an idle timeout, with no longer safe reuse to contradict it,
//! lowers reuse for that origin (never correctness) until it is forgotten.
//!
//! **Bound.** At most `capacity` origins are kept (default
//! [`DEFAULT_ORIGINS`]); inserting one more evicts the least recently used.
//! Each entry is a few dozen bytes, so the map never grows past a few tens of
//! KiB however many hosts a process talks to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use http::Uri;
use tokio::time::Instant;

/// Origins remembered by default.
pub(crate) const DEFAULT_ORIGINS: usize = 1024;

/// How long an observation is trusted by default.
pub(crate) const DEFAULT_RELEARN_AFTER: Duration = Duration::from_secs(300);

/// Scheme, host and port (case-insensitive): what a learned idle timeout
/// belongs to, as a 64-bit hash so that finding it allocates nothing.
///
/// Two origins whose hashes collide would share an estimate; as an estimate only ever lowers the expiry, that
/// could cost one of them reuse, never a stale request it would not
/// otherwise risk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Origin(u64);

impl Origin {
    /// The origin of a request URI; `None` for a relative URI.
    pub(crate) fn of(uri: &Uri) -> Option<Origin> {
        // FNV-1a over "scheme://authority", host case folded: a few
        // instructions per byte, no allocation.
        fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
            const PRIME: u64 = 0x0000_0100_0000_01b3;
            for &b in bytes {
                h = (h ^ u64::from(b | 0x20)).wrapping_mul(PRIME);
            }
            h
        }
        let authority = uri.authority()?.as_str().as_bytes();
        let scheme = uri.scheme_str().unwrap_or("").as_bytes();
        // `| 0x20` folds ASCII letters' case (and maps a few punctuation
        // bytes onto others, which only adds to the collision argument
        // above); the scheme's length keeps "a" + "bc" apart from "ab" + "c".
        let h = fnv(0xcbf2_9ce4_8422_2325 ^ scheme.len() as u64, scheme);
        Some(Origin(fnv(h, authority)))
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    estimate: Option<(Duration, Instant)>,
    tolerated: Option<(Duration, Instant)>,
    used: Instant,
}

/// The bounded map of per-origin idle-timeout estimates, shared by clones of
/// an `IdleExpiryLayer`.
#[derive(Debug)]
pub(crate) struct Learner {
    map: Mutex<HashMap<Origin, Entry>>,
    /// Origins in the map, readable without the lock: while nothing has been
    /// learned, responses skip the map entirely.
    entries: AtomicUsize,
    capacity: usize,
    relearn_after: Duration,
}

impl Learner {
    pub(crate) fn new(capacity: usize, relearn_after: Duration) -> Self {
        Learner {
            map: Mutex::new(HashMap::new()),
            entries: AtomicUsize::new(0),
            capacity: capacity.max(1),
            relearn_after,
        }
    }

    fn fresh(&self, at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(at) < self.relearn_after
    }

    /// Whether anything has been learned at all (read without the lock).
    pub(crate) fn is_learning(&self) -> bool {
        self.entries.load(Ordering::Relaxed) > 0
    }

    /// The current estimate of `origin`'s idle timeout, if one is trusted.
    pub(crate) fn estimate(&self, origin: &Origin, now: Instant) -> Option<Duration> {
        if self.entries.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.get_mut(origin)?;
        entry.used = now;
        match entry.estimate {
            Some((d, at)) if self.fresh(at, now) => Some(d),
            Some(_) => {
                entry.estimate = None;
                None
            }
            None => None,
        }
    }

    /// The server closed a connection of `origin` idle for `idle`. Returns
    /// whether the estimate changed.
    pub(crate) fn idle_close(&self, origin: &Origin, idle: Duration, now: Instant) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let entry = self.entry(&mut map, origin, now);
        if let Some((tolerated, at)) = entry.tolerated {
            if self.fresh(at, now) && tolerated > idle {
                return false;
            }
        }
        let estimate = match entry.estimate {
            Some((d, at)) if self.fresh(at, now) => d.min(idle),
            _ => idle,
        };
        entry.estimate = Some((estimate, now));
        entry.tolerated = entry.tolerated.filter(|(t, _)| *t <= estimate);
        true
    }

    /// A request on a connection of `origin` idle for `idle` got its
    /// response: the server kept that connection at least that long.
    pub(crate) fn reused(&self, origin: &Origin, idle: Duration, now: Instant) {
        if self.entries.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Only worth remembering for an origin already being learned, and
        // only when it beats the current record.
        let Some(entry) = map.get_mut(origin) else {
            return;
        };
        entry.used = now;
        match entry.tolerated {
            Some((t, at)) if self.fresh(at, now) && t >= idle => {}
            _ => entry.tolerated = Some((idle, now)),
        }
    }

    fn entry<'m>(
        &self,
        map: &'m mut HashMap<Origin, Entry>,
        origin: &Origin,
        now: Instant,
    ) -> &'m mut Entry {
        if !map.contains_key(origin) && map.len() >= self.capacity {
            let oldest = map.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        let entry = map.entry(*origin).or_insert(Entry {
            estimate: None,
            tolerated: None,
            used: now,
        });
        entry.used = now;
        self.entries.store(map.len(), Ordering::Relaxed);
        map.get_mut(origin).expect("just inserted")
    }

    /// Origins currently remembered.
    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn origin(host: &str) -> Origin {
        Origin::of(&format!("http://{host}/x").parse().unwrap()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn closes_observed_set_the_estimate_to_the_shortest() {
        let l = Learner::new(8, Duration::from_secs(60));
        let o = origin("a:80");
        assert_eq!(l.estimate(&o, Instant::now()), None);
        assert!(l.idle_close(&o, ms(1000), Instant::now()));
        assert_eq!(l.estimate(&o, Instant::now()), Some(ms(1000)));
        l.idle_close(&o, ms(990), Instant::now());
        l.idle_close(&o, ms(1010), Instant::now());
        assert_eq!(l.estimate(&o, Instant::now()), Some(ms(990)));
        // Other origins (and other ports, schemes) are separate.
        assert_eq!(l.estimate(&origin("a:81"), Instant::now()), None);
        let https = Origin::of(&"https://a:80/".parse().unwrap()).unwrap();
        assert_eq!(l.estimate(&https, Instant::now()), None);
        // Host names compare case-insensitively.
        assert_eq!(l.estimate(&origin("A:80"), Instant::now()), Some(ms(990)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_like_early_close_is_ignored_after_longer_safe_reuse() {
        let l = Learner::new(8, Duration::from_secs(60));
        let o = origin("a:80");
        l.idle_close(&o, ms(1000), Instant::now());
        l.reused(&o, ms(900), Instant::now());
        // A restart closes an idle connection after only 50 ms: a longer
        // idle was reused safely, so this is not the idle timeout.
        assert!(!l.idle_close(&o, ms(50), Instant::now()));
        assert_eq!(l.estimate(&o, Instant::now()), Some(ms(1000)));
        // A close beyond the safe record still counts.
        assert!(l.idle_close(&o, ms(950), Instant::now()));
        assert_eq!(l.estimate(&o, Instant::now()), Some(ms(950)));
    }

    #[tokio::test(start_paused = true)]
    async fn estimates_recover_upward_once_forgotten() {
        let l = Learner::new(8, Duration::from_secs(60));
        let o = origin("a:80");
        // An early close nothing contradicts lowers the estimate...
        l.idle_close(&o, ms(50), Instant::now());
        assert_eq!(l.estimate(&o, Instant::now()), Some(ms(50)));
        advance(Duration::from_secs(59)).await;
        assert_eq!(l.estimate(&o, Instant::now()), Some(ms(50)));
        // ...until it is forgotten; the next idle close is the real one.
        advance(Duration::from_secs(2)).await;
        assert_eq!(l.estimate(&o, Instant::now()), None);
        l.idle_close(&o, ms(1000), Instant::now());
        assert_eq!(l.estimate(&o, Instant::now()), Some(ms(1000)));
        // A stale safe-reuse record no longer shields against a close.
        l.reused(&o, ms(900), Instant::now());
        advance(Duration::from_secs(61)).await;
        assert!(l.idle_close(&o, ms(300), Instant::now()));
        assert_eq!(l.estimate(&o, Instant::now()), Some(ms(300)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_map_is_bounded_and_evicts_the_least_recently_used() {
        let l = Learner::new(3, Duration::from_secs(60));
        for (i, host) in ["a:1", "b:1", "c:1"].into_iter().enumerate() {
            l.idle_close(&origin(host), ms(100 + i as u64), Instant::now());
            advance(ms(1)).await;
        }
        // Touch "a" so "b" is the least recently used.
        assert!(l.estimate(&origin("a:1"), Instant::now()).is_some());
        advance(ms(1)).await;
        l.idle_close(&origin("d:1"), ms(200), Instant::now());
        assert_eq!(l.len(), 3);
        assert_eq!(l.estimate(&origin("b:1"), Instant::now()), None);
        assert!(l.estimate(&origin("a:1"), Instant::now()).is_some());
        assert!(l.estimate(&origin("d:1"), Instant::now()).is_some());
        // Thousands of origins never grow it past the bound.
        for i in 0..5000 {
            l.idle_close(&origin(&format!("h{i}:1")), ms(10), Instant::now());
        }
        assert_eq!(l.len(), 3);
        // Reuse reports for unknown origins add nothing.
        l.reused(&origin("zzz:1"), ms(10), Instant::now());
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn relative_uris_have_no_origin() {
        assert!(Origin::of(&"/only/a/path".parse().unwrap()).is_none());
    }
}
