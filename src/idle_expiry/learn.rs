//! Learning an origin's unannounced idle timeout from the closes the tracker
//! observes, robust to closes that are not the idle timeout.
//!
//! # Observations: what counts, and why each is sound
//!
//! Per origin (scheme, host and port) the learner keeps an *estimate* of the
//! server's idle timeout `T`. Two events reveal it, and each is an upper
//! bound of `T`:
//!
//! * **Idle close.** The server closed (EOF or reset) a connection that had
//!   been idle for `d`, with no exchange in flight, that this crate had not
//!   closed itself and that was eligible for reuse (not `Connection: close`,
//!   not at a request limit). A server whose idle timer fired closed it, so
//!   `T ≤ d`.
//! * **Lost race.** A request on a *reused* connection failed (EOF, reset, a
//!   failed write) before any byte of its response arrived, the connection
//!   having been idle for `d` when the request began. The server closed the
//!   connection while the request was on its way: `T ≤ d` plus the request's
//!   flight time, which the margin below the estimate covers. It is the same
//!   evidence as an idle close, bought at a higher price, and the one a
//!   server that closes slightly *after* its nominal timeout mostly gives.
//!
//! Idle is counted from when the server's clock started: the last moment
//! the client was caught up with the server (see
//! [`ConnectionState::idle_since`](crate::track::ConnectionState::idle_since)).
//! A response whose end sat in the socket buffer until a slow reader drained
//! it counts from before the drain, so a late drain can only make `d` larger
//! (a looser bound), never near zero.
//!
//! The learner also records evidence that the server *kept* a connection:
//! a response on a connection reused after idle `k`, and a healing probe
//! (below) that stayed open, unclosed by the server, for `k`. Either shows
//! `T > k`.
//!
//! HTTP/2 connections give no observations: an HTTP/2 server announces its
//! close with GOAWAY, hyper stops using the connection, and streams it did
//! not process are refused, which is safe to retry. Nothing is learned from
//! them and no estimate is applied to them.
//!
//! # The rule
//!
//! Closes that are not the idle timeout happen: a reload or restart, a load
//! balancer's scale-in, a resume from suspend (the monotonic clock does not
//! count the suspension, so the idle looks tiny), a connection limit, a
//! server that resets connections at random. One of them must never
//! collapse reuse, so an observation `d` is *suspect* when
//!
//! * it is below the **floor** of 100 ms (real servers' idle timeouts are
//!   seconds: Node and Apache 5 s, nginx 75 s, load balancers 60 s; a close
//!   after less than 100 ms idle is far more often one of the above), or
//! * it is **far below** the current estimate (less than half), or
//! * it is **contradicted**: the server was seen keeping a connection idle
//!   for clearly longer than `d` (by more than a thirty-second of `d` plus
//!   1 ms of jitter: a reuse that got its response, a probe it did not
//!   close) within the last `relearn_after`.
//!
//! A suspect observation is *held*, not applied. It takes effect only when
//! another suspect observation **agrees** with it:
//!
//! * within the **tolerance**: a quarter of the larger, plus 1 ms of timer
//!   jitter;
//! * seen at least the shorter of the two **apart in time**: the closes of
//!   one reload all arrive at once, each with its connection's own idle, so
//!   they never agree with each other;
//! * with **no reuse in between** that got its response after an idle at
//!   least as long (such a reuse drops the held observations it
//!   contradicts), and, for contradicted observations, none that long for
//!   10 s (or four times that idle): a server that resets connections at
//!   random keeps showing longer reuse, one whose timeout shrank does not.
//!
//! The two then lower the estimate to the smaller. A server whose timeout
//! really is 50 ms is learned at its second idle close; two reloads must
//! close connections idle for the same time, at different moments, with no
//! longer reuse in between, to mislead it.
//!
//! Any other observation applies alone: the estimate becomes `min(estimate,
//! d)` (or `d` for an origin without one). One within the tolerance above
//! the estimate confirms it (trusted for another `relearn_after`); a larger
//! one changes nothing (it is a looser bound).
//!
//! The connection's learned limit is the estimate minus the connection's
//! margin (see [`DEFAULT_MARGIN`](super::DEFAULT_MARGIN)), but never less
//! than half the estimate: **a learned limit is never zero** (only
//! `Connection: close`, `Keep-Alive: timeout=0`, request limits and the
//! configuration may stop reuse). An estimate is shared live by every
//! connection of its origin, including those already idle (each connection
//! reads it through a generation counter, without a lock, and looks it up
//! again only after it changed): the first lost race protects the next
//! request on every other connection.
//!
//! # Healing probes
//!
//! An estimate that is too low costs reuse, not correctness, and nothing
//! would ever contradict it, since the expiry keeps connections from being
//! idle that long. So an origin whose expiry was lowered by learning *probes*:
//! at a response, if no probe started within the last 10 s (or twice the
//! estimate, if longer; 1 s for an estimate below the floor, where reuse is
//! nearly gone), that connection becomes the probe, for as long as it lives:
//!
//! * **Estimate at or above the floor**: each time it goes idle, the probe
//!   is kept open, unused, until twice the estimate. Requests never go to it
//!   past the learned limit (one that would is sent on another connection,
//!   as for any expired connection), so probing risks nothing. If the server
//!   closes it first, that is an idle close like any other (it confirms the
//!   estimate); if it is still open at twice the estimate, the estimate was
//!   wrong.
//! * **Estimate below the floor** (only reachable by agreement): the probe is
//!   *reused* until twice the estimate, at least up to the floor. A response
//!   after an idle beyond the estimate plus the tolerance refutes it, so a
//!   client whose requests come at a steady gap gets its reuse back at the
//!   first probe. Against a server whose timeout really is that short, a
//!   request reaching the probe exactly at the server's close can race it.
//!   A request on the probe *before* that idle proves nothing and restarts
//!   the probe's idle: on a busy origin whose requests come more often than
//!   the estimate plus the tolerance, the probe would be kept busy and never
//!   test the estimate. So a pool that can set a connection aside (the
//!   one-call client's) lets the probe rest until then (see
//!   `IdleExpiryConnection::is_resting`), and its first request tests the
//!   estimate; a pool that cannot (hyper-util's legacy one, where a refusal
//!   closes the connection) reuses it throughout.
//!
//! A refuted estimate is forgotten at once (with its held observations), and
//! the origin is learned again from its next close: a wrong estimate heals
//! within one probe, and a timeout that grows (200 ms to 2 s) is re-learned
//! with one probe and one observation. Estimates, held observations and
//! kept records are also forgotten after `relearn_after` (default five
//! minutes).
//!
//! **Worst case.** Until an origin's first observation (and after it was
//! forgotten) its requests can race the server exactly as without this
//! layer: put `RetryOnStaleConnection` above it, which retries what is safe.
//! An early close within a factor two of the real timeout, that nothing
//! contradicts, lowers reuse for idle times between the two (never
//! correctness) until it is forgotten; so does a wrong estimate at or above
//! the floor while every probe is taken by a request past the learned limit
//! before it is twice the estimate idle.
//!
//! **Bound.** At most `capacity` origins are kept (default
//! [`DEFAULT_ORIGINS`]); inserting one more evicts the least recently used
//! (an intrusive list over one slab: O(1) per lookup and eviction, no scan).
//! Each origin takes about 200 bytes, so the default bound stays under
//! 200 KiB however many hosts a process talks to. A response takes the map's
//! lock at most once (to find its origin, record a reuse and maybe grant a
//! probe), and not at all while nothing has been learned; the expiry checks
//! between responses take it only after an estimate changed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use http::Uri;
use tokio::time::Instant;

/// Origins remembered by default.
pub(crate) const DEFAULT_ORIGINS: usize = 1024;

/// How long an observation is trusted by default.
pub(crate) const DEFAULT_RELEARN_AFTER: Duration = Duration::from_secs(300);

/// Below this idle, one close alone never lowers an estimate.
pub(crate) const FLOOR: Duration = Duration::from_millis(100);

/// What the tolerance between two observations adds to a quarter of the
/// larger (timer and scheduling jitter).
const TOLERANCE_JITTER: Duration = Duration::from_millis(1);

/// At most one healing probe per origin per this long (or twice its
/// estimate, if longer).
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(10);

/// The same for an estimate below the floor: reuse is nearly gone there, so
/// a wrong one must heal fast.
pub(crate) const PROBE_EVERY_BELOW_FLOOR: Duration = Duration::from_secs(1);

/// Suspect observations remembered per origin while they wait for one that
/// agrees.
const HELD: usize = 2;

/// Scheme, host and port (case-insensitive): what a learned idle timeout
/// belongs to, as a 64-bit hash so that finding it allocates nothing.
///
/// Two origins whose hashes collide would share an estimate; as an estimate
/// only ever lowers the expiry, that could cost one of them reuse, never a
/// stale request it would not otherwise risk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Origin(u64);

impl Origin {
    /// The origin of a request URI; `None` for a relative URI.
    pub(crate) fn of(uri: &Uri) -> Option<Origin> {
        // A multiply-rotate hash over "scheme" and "authority", eight bytes
        // at a time, host case folded: a few instructions per word (it runs
        // for every request), no allocation.
        fn mix(mut h: u64, bytes: &[u8]) -> u64 {
            const K: u64 = 0x9e37_79b9_7f4a_7c15;
            // `| 0x20` on every byte folds ASCII letters' case (and maps a
            // few punctuation bytes onto others, which only adds to the
            // collision argument above).
            const FOLD: u64 = 0x2020_2020_2020_2020;
            let mut words = bytes.chunks_exact(8);
            for word in &mut words {
                let mut w = [0u8; 8];
                w.copy_from_slice(word);
                h = (h ^ (u64::from_le_bytes(w) | FOLD))
                    .wrapping_mul(K)
                    .rotate_left(31);
            }
            let rest = words.remainder();
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length, so that "ab" and "ab" + padding never meet.
            h = (h ^ (u64::from_le_bytes(w) | FOLD) ^ ((bytes.len() as u64) << 56))
                .wrapping_mul(K)
                .rotate_left(31);
            h ^ (h >> 29)
        }
        let authority = uri.authority()?.as_str().as_bytes();
        let scheme = uri.scheme_str().unwrap_or("").as_bytes();
        Some(Origin(mix(mix(0xcbf2_9ce4_8422_2325, scheme), authority)))
    }
}

/// Hashes an [`Origin`] (already a 64-bit hash) by passing it through.
#[derive(Default)]
struct OriginHasher(u64);

impl Hasher for OriginHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The tolerance between two observations around `d`: a quarter, plus
/// [`TOLERANCE_JITTER`].
fn tolerance(d: Duration) -> Duration {
    d / 4 + TOLERANCE_JITTER
}

/// How much longer than a close after `d` a kept idle must be to contradict
/// it: a server's timer jitter (a thirty-second) plus
/// [`TOLERANCE_JITTER`]. Below a real idle timeout, reuse succeeds up to it
/// and races are lost from about it; a server that kept connections
/// clearly longer did not close this one for being idle.
fn slack(d: Duration) -> Duration {
    d / 32 + TOLERANCE_JITTER
}

/// The idle limit an estimate puts on a connection whose margin is
/// `margin`: the estimate minus the margin, never less than half the
/// estimate, never zero.
pub(crate) fn learned_limit(estimate: Duration, margin: Duration) -> Duration {
    estimate
        .saturating_sub(margin)
        .max(estimate / 2)
        .max(Duration::from_nanos(1))
}

/// The idle a healing probe of an estimate below the floor first rests
/// for (kept open, no request): the estimate plus its tolerance. A reuse
/// after longer refutes the estimate if it gets its response; one before it
/// would prove nothing and only restart the probe's idle.
pub(crate) fn probe_rest(estimate: Duration) -> Duration {
    estimate + tolerance(estimate)
}

/// Whether the server keeping a connection idle for `kept` refutes
/// `estimate` (see the module docs: twice the estimate, or beyond the
/// tolerance for an estimate below the floor, which probes reuse).
fn refutes(estimate: Duration, kept: Duration) -> bool {
    if estimate < FLOOR {
        kept > probe_rest(estimate)
    } else {
        kept >= estimate.saturating_mul(2)
    }
}

/// Why an observation was held back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Suspect {
    /// Below [`FLOOR`].
    BelowFloor,
    /// Below half the estimate.
    FarBelow,
    /// Below a longer idle the server was seen to keep.
    Contradicted,
}

/// What an observation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The estimate was set (`from: None`) or lowered; `agreed` when two
    /// suspect observations agreed.
    Lowered {
        from: Option<Duration>,
        to: Duration,
        agreed: bool,
    },
    /// Within the tolerance of the estimate: trusted for longer.
    Confirmed,
    /// Above the estimate: a looser bound, nothing learned.
    Unchanged,
    /// Suspect: held until another agrees.
    Held(Suspect),
}

/// A healing probe granted to a connection for its next idle period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    /// How long the probe stays open while idle.
    pub(crate) reach: Duration,
    /// Whether it is reused until then (an estimate below the floor), or
    /// only kept open.
    pub(crate) reused: bool,
    /// Whether it starts now (rather than going on on the same connection).
    pub(crate) started: bool,
}

/// What a response learns about its origin (one lock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OnResponse {
    /// The origin's trusted estimate, if any.
    pub(crate) estimate: Option<Duration>,
    /// The learner's generation the estimate belongs to.
    pub(crate) generation: u64,
    /// A probe for this connection, if it was granted one.
    pub(crate) probe: Option<Probe>,
    /// The reuse this response reports refuted the estimate (forgotten).
    pub(crate) refuted: Option<Duration>,
}

#[derive(Clone, Copy, Debug)]
struct Dated {
    idle: Duration,
    at: Instant,
}

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    estimate: Option<Dated>,
    held: [Option<Dated>; HELD],
    /// The longest idle the server was seen to keep a connection.
    kept: Option<Dated>,
    /// No probe starts before this instant.
    next_probe: Option<Instant>,
}

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Node {
    origin: Origin,
    entry: Entry,
    /// Towards the most recently used.
    prev: usize,
    /// Towards the least recently used.
    next: usize,
}

/// The bounded map: origins to slab slots, the slab's nodes linked from the
/// most to the least recently used.
#[derive(Debug)]
struct Lru {
    index: HashMap<Origin, usize, BuildHasherDefault<OriginHasher>>,
    nodes: Vec<Node>,
    head: usize,
    tail: usize,
}

impl Lru {
    fn new() -> Self {
        Lru {
            index: HashMap::default(),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.nodes[i].prev, self.nodes[i].next);
        match prev {
            NIL => self.head = next,
            p => self.nodes[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n].prev = prev,
        }
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        match self.head {
            NIL => self.tail = i,
            h => self.nodes[h].prev = i,
        }
        self.head = i;
    }

    fn touch(&mut self, i: usize) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    /// The entry of `origin`, marked most recently used.
    fn get(&mut self, origin: &Origin) -> Option<&mut Entry> {
        let i = *self.index.get(origin)?;
        self.touch(i);
        Some(&mut self.nodes[i].entry)
    }

    /// The entry of `origin`, without marking it used.
    fn peek(&self, origin: &Origin) -> Option<&Entry> {
        self.index.get(origin).map(|&i| &self.nodes[i].entry)
    }

    /// The entry of `origin`, inserted if new (evicting the least recently
    /// used at `capacity`, whose entry is returned), marked most recently
    /// used.
    fn get_or_insert(&mut self, origin: Origin, capacity: usize) -> (&mut Entry, Option<Entry>) {
        if let Some(&i) = self.index.get(&origin) {
            self.touch(i);
            return (&mut self.nodes[i].entry, None);
        }
        let mut evicted = None;
        let i = if self.nodes.len() < capacity {
            self.nodes.push(Node {
                origin,
                entry: Entry::default(),
                prev: NIL,
                next: NIL,
            });
            self.nodes.len() - 1
        } else {
            let i = self.tail;
            self.unlink(i);
            let node = &mut self.nodes[i];
            self.index.remove(&node.origin);
            evicted = Some(std::mem::take(&mut node.entry));
            node.origin = origin;
            i
        };
        self.index.insert(origin, i);
        self.push_front(i);
        (&mut self.nodes[i].entry, evicted)
    }
}

/// The bounded map of per-origin idle-timeout estimates, shared by clones of
/// an `IdleExpiryLayer`.
#[derive(Debug)]
pub(crate) struct Learner {
    map: Mutex<Lru>,
    /// Origins in the map, readable without the lock: while nothing has been
    /// learned, responses skip the map entirely.
    entries: AtomicUsize,
    /// Bumped whenever an estimate changes (set, lowered, forgotten,
    /// evicted): connections holding an older one look it up again.
    generation: AtomicU64,
    capacity: usize,
    relearn_after: Duration,
    /// Times the map was locked (tests count them).
    #[cfg(test)]
    locks: AtomicUsize,
}

impl Learner {
    pub(crate) fn new(capacity: usize, relearn_after: Duration) -> Self {
        Learner {
            map: Mutex::new(Lru::new()),
            entries: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            capacity: capacity.max(1),
            relearn_after,
            #[cfg(test)]
            locks: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lru> {
        #[cfg(test)]
        self.locks.fetch_add(1, Ordering::Relaxed);
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self, at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(at) < self.relearn_after
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        crate::track::learned_changed();
    }

    /// Whether anything has been learned at all (read without the lock).
    pub(crate) fn is_learning(&self) -> bool {
        self.entries.load(Ordering::Relaxed) > 0
    }

    /// Changes whenever an estimate changes (read without the lock).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Forgets what `relearn_after` has made stale; whether the estimate
    /// went.
    fn age(&self, entry: &mut Entry, now: Instant) -> bool {
        let fresh = |d: &Option<Dated>| d.filter(|d| self.fresh(d.at, now));
        entry.kept = fresh(&entry.kept);
        for held in &mut entry.held {
            *held = fresh(held);
        }
        let had = entry.estimate.is_some();
        entry.estimate = fresh(&entry.estimate);
        had && entry.estimate.is_none()
    }

    /// Forgets a refuted estimate: the origin is learned again.
    fn forget(&self, entry: &mut Entry) {
        entry.estimate = None;
        entry.held = [None; HELD];
        entry.next_probe = None;
        self.changed();
    }

    /// The trusted estimate of `origin`'s idle timeout (not marking it
    /// used).
    pub(crate) fn estimate(&self, origin: &Origin, now: Instant) -> Option<Duration> {
        if !self.is_learning() {
            return None;
        }
        let map = self.lock();
        let estimate = map.peek(origin)?.estimate?;
        self.fresh(estimate.at, now).then_some(estimate.idle)
    }

    /// An idle close or a lost race of a connection of `origin` idle for
    /// `idle` (see the module docs for the rule).
    pub(crate) fn observe(&self, origin: &Origin, idle: Duration, now: Instant) -> Verdict {
        let mut map = self.lock();
        let (entry, evicted) = map.get_or_insert(*origin, self.capacity);
        // An evicted estimate's connections look again and find none.
        let evicted = evicted.is_some_and(|e| e.estimate.is_some());
        if self.age(entry, now) || evicted {
            self.changed();
        }
        let estimate = entry.estimate.map(|e| e.idle);
        let contradicted = entry.kept.filter(|k| k.idle > idle + slack(idle));
        let suspect = if idle < FLOOR {
            Some(Suspect::BelowFloor)
        } else if estimate.is_some_and(|e| idle < e / 2) {
            Some(Suspect::FarBelow)
        } else if contradicted.is_some() {
            Some(Suspect::Contradicted)
        } else {
            None
        };
        // While the server keeps showing it keeps connections longer, closes
        // below that never agree (a server that resets at random); once it
        // has not for a while, two that agree say its timeout shrank.
        let agreeable = contradicted.is_none_or(|k| {
            now.saturating_duration_since(k.at) >= PROBE_EVERY.max(k.idle.saturating_mul(4))
        });
        let verdict = match suspect {
            None => self.accept(entry, idle, now, false),
            Some(why) => {
                let agreeing = entry.held.iter().flatten().filter(|_| agreeable).find(|h| {
                    let (a, b) = (h.idle.min(idle), h.idle.max(idle));
                    b - a <= tolerance(b) && now.saturating_duration_since(h.at) >= a
                });
                match agreeing.map(|h| h.idle.min(idle)) {
                    Some(agreed) => {
                        entry.held = [None; HELD];
                        // The server's behaviour changed since the longer
                        // idle was kept (or that was not its idle timeout).
                        if entry.kept.is_some_and(|k| k.idle > agreed) {
                            entry.kept = None;
                        }
                        self.accept(entry, agreed, now, true)
                    }
                    None => {
                        // Replaces the older slot (an empty one first).
                        let slot = entry
                            .held
                            .iter_mut()
                            .min_by_key(|h| h.map(|h| h.at))
                            .expect("HELD > 0");
                        *slot = Some(Dated { idle, at: now });
                        Verdict::Held(why)
                    }
                }
            }
        };
        self.entries.store(map.len(), Ordering::Relaxed);
        verdict
    }

    fn accept(&self, entry: &mut Entry, idle: Duration, now: Instant, agreed: bool) -> Verdict {
        let lowered = Verdict::Lowered {
            from: entry.estimate.map(|e| e.idle),
            to: idle,
            agreed,
        };
        match &mut entry.estimate {
            Some(e) if idle >= e.idle => {
                if idle <= e.idle + tolerance(e.idle) {
                    e.at = now;
                    Verdict::Confirmed
                } else {
                    Verdict::Unchanged
                }
            }
            slot => {
                *slot = Some(Dated { idle, at: now });
                // A new (or lower) estimate may be probed at once.
                entry.next_probe = None;
                self.changed();
                lowered
            }
        }
    }

    /// A connection of `origin` was seen kept idle for `kept` by the server
    /// (a probe the server did not close). Returns the estimate it refuted
    /// (now forgotten), if any.
    pub(crate) fn kept(&self, origin: &Origin, kept: Duration, now: Instant) -> Option<Duration> {
        let mut map = self.lock();
        let entry = map.get(origin)?;
        if self.age(entry, now) {
            self.changed();
        }
        self.keep(entry, kept, now)
    }

    fn keep(&self, entry: &mut Entry, kept: Duration, now: Instant) -> Option<Duration> {
        // A new longest, or one close to it, says the server still keeps
        // connections that long.
        match &mut entry.kept {
            Some(k) if kept + tolerance(kept) < k.idle => {}
            slot => {
                let idle = slot.map_or(kept, |k| k.idle.max(kept));
                *slot = Some(Dated { idle, at: now });
            }
        }
        // A close after an idle no longer than this, seen before it, was not
        // the idle timeout (a server that resets connections at random, not
        // by idle time).
        for held in &mut entry.held {
            if held.is_some_and(|h| h.idle <= kept) {
                *held = None;
            }
        }
        let estimate = entry.estimate?.idle;
        if refutes(estimate, kept) {
            self.forget(entry);
            return Some(estimate);
        }
        None
    }

    /// A response of `origin` on a connection whose margin is `margin` and
    /// own expiry (configured, announced) `own`, reused after `reused_after`
    /// if reused: records the reuse, and returns the origin's estimate and
    /// whether this connection probes (`probing`: it already does, and goes
    /// on while it lives). One lock; `None` for an origin with nothing
    /// learned.
    pub(crate) fn on_response(
        &self,
        origin: &Origin,
        reused_after: Option<Duration>,
        margin: Duration,
        own: Duration,
        probing: bool,
        now: Instant,
    ) -> Option<OnResponse> {
        let mut map = self.lock();
        let entry = map.get(origin)?;
        if self.age(entry, now) {
            self.changed();
        }
        let refuted = reused_after.and_then(|k| self.keep(entry, k, now));
        let estimate = entry.estimate.map(|e| e.idle);
        let probe = estimate.and_then(|estimate| {
            let start = !probing;
            if start && entry.next_probe.is_some_and(|at| now < at) {
                return None;
            }
            let limit = learned_limit(estimate, margin);
            let reused = estimate < FLOOR;
            let wanted = if reused {
                estimate.saturating_mul(2).max(FLOOR)
            } else {
                estimate.saturating_mul(2)
            };
            let reach = wanted.min(own);
            // Only where learning lowered this connection's expiry.
            if reach <= limit {
                return None;
            }
            if start {
                let every = if reused {
                    PROBE_EVERY_BELOW_FLOOR
                } else {
                    PROBE_EVERY.max(estimate.saturating_mul(2))
                };
                entry.next_probe = Some(crate::clock::deadline(now, every));
            }
            Some(Probe {
                reach,
                reused,
                started: start,
            })
        });
        Some(OnResponse {
            estimate,
            // Read under the lock, where every change happens: it belongs to
            // `estimate`.
            generation: self.generation(),
            probe,
            refuted,
        })
    }

    /// Origins currently remembered.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Times the map was locked so far.
    #[cfg(test)]
    pub(crate) fn locks(&self) -> usize {
        self.locks.load(Ordering::Relaxed)
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

    fn now() -> Instant {
        Instant::now()
    }

    fn lowered(to: Duration) -> impl Fn(Verdict) -> bool {
        move |v| matches!(v, Verdict::Lowered { to: t, .. } if t == to)
    }

    #[tokio::test(start_paused = true)]
    async fn closes_at_or_above_the_floor_set_the_estimate_to_the_shortest() {
        let l = Learner::new(8, Duration::from_secs(60));
        let o = origin("a:80");
        assert_eq!(l.estimate(&o, now()), None);
        let v = l.observe(&o, ms(1000), now());
        assert_eq!(
            v,
            Verdict::Lowered {
                from: None,
                to: ms(1000),
                agreed: false
            }
        );
        assert_eq!(l.estimate(&o, now()), Some(ms(1000)));
        assert!(lowered(ms(990))(l.observe(&o, ms(990), now())));
        // Within the tolerance above: confirms; far above: a looser bound.
        assert_eq!(l.observe(&o, ms(1010), now()), Verdict::Confirmed);
        assert_eq!(l.observe(&o, ms(5000), now()), Verdict::Unchanged);
        assert_eq!(l.estimate(&o, now()), Some(ms(990)));
        // Other origins (and other ports, schemes) are separate.
        assert_eq!(l.estimate(&origin("a:81"), now()), None);
        let https = Origin::of(&"https://a:80/".parse().unwrap()).unwrap();
        assert_eq!(l.estimate(&https, now()), None);
        // Host names compare case-insensitively.
        assert_eq!(l.estimate(&origin("A:80"), now()), Some(ms(990)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_one_close_below_it_is_held_and_never_collapses_reuse() {
        let l = Learner::new(8, Duration::from_secs(60));
        let o = origin("reload:80");
        // A reload closes an idle connection after 5 ms: held, not applied.
        assert_eq!(
            l.observe(&o, ms(5), now()),
            Verdict::Held(Suspect::BelowFloor)
        );
        assert_eq!(l.estimate(&o, now()), None);
        // Its other idle connections close at the same instant, each with
        // its own idle: none agrees (they are not apart in time).
        for idle in [5, 6, 7, 40] {
            assert!(matches!(l.observe(&o, ms(idle), now()), Verdict::Held(_)));
        }
        assert_eq!(l.estimate(&o, now()), None);
        // Just above the floor, one close applies alone.
        let p = origin("short:80");
        assert!(lowered(ms(100))(l.observe(&p, ms(100), now())));
        assert_eq!(learned_limit(ms(100), ms(50)), ms(50));
    }

    #[tokio::test(start_paused = true)]
    async fn agreement_two_observations_within_the_tolerance_and_apart_in_time() {
        let l = Learner::new(8, Duration::from_secs(60));
        let o = origin("fifty:80");
        // A server whose idle timeout really is 50 ms.
        assert!(matches!(l.observe(&o, ms(51), now()), Verdict::Held(_)));
        advance(ms(120)).await;
        assert_eq!(
            l.observe(&o, ms(50), now()),
            Verdict::Lowered {
                from: None,
                to: ms(50),
                agreed: true
            }
        );
        assert_eq!(l.estimate(&o, now()), Some(ms(50)));
        // The learned limit is never zero, whatever the margin.
        assert_eq!(learned_limit(ms(50), ms(80)), ms(25));
        assert!(learned_limit(Duration::ZERO, ms(80)) > Duration::ZERO);
        // Observations that do not agree (beyond the tolerance) wait.
        let p = origin("noise:80");
        assert!(matches!(l.observe(&p, ms(10), now()), Verdict::Held(_)));
        advance(ms(100)).await;
        assert!(matches!(l.observe(&p, ms(40), now()), Verdict::Held(_)));
        advance(ms(100)).await;
        // The third agrees with the second (the older slot is kept too).
        assert!(lowered(ms(40))(l.observe(&p, ms(44), now())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_far_below_the_estimate_or_below_longer_reuse_needs_agreement() {
        let l = Learner::new(8, Duration::from_secs(60));
        let o = origin("a:80");
        l.observe(&o, ms(1000), now());
        // A restart-like close at 300 ms: far below 1 s.
        assert_eq!(
            l.observe(&o, ms(300), now()),
            Verdict::Held(Suspect::FarBelow)
        );
        assert_eq!(l.estimate(&o, now()), Some(ms(1000)));
        // A longer idle reused safely makes a close at 600 ms suspect.
        let r = l.on_response(&o, Some(ms(900)), ms(50), ms(90_000), false, now());
        assert_eq!(r.unwrap().estimate, Some(ms(1000)));
        assert_eq!(
            l.observe(&o, ms(600), now()),
            Verdict::Held(Suspect::Contradicted)
        );
        assert_eq!(l.estimate(&o, now()), Some(ms(1000)));
        // While the server has recently kept a connection that long, closes
        // below it never agree (a server resetting at random)...
        advance(ms(700)).await;
        assert_eq!(
            l.observe(&o, ms(590), now()),
            Verdict::Held(Suspect::Contradicted)
        );
        // ...and a reuse after an idle at least as long drops them.
        l.on_response(&o, Some(ms(650)), ms(50), ms(90_000), false, now());
        assert!(matches!(l.observe(&o, ms(600), now()), Verdict::Held(_)));
        // The server really changed: it has not kept one that long for 10 s,
        // and a second close agrees; the kept record that contradicted it
        // goes.
        advance(Duration::from_secs(10)).await;
        assert!(lowered(ms(590))(l.observe(&o, ms(590), now())));
        assert!(lowered(ms(580))(l.observe(&o, ms(580), now())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_race_is_an_observation_like_an_idle_close() {
        // The learner does not tell them apart: a lost race after idle d is
        // an upper bound like an idle close at d (the layer counts them
        // separately).
        let l = Learner::new(8, Duration::from_secs(60));
        let o = origin("race:80");
        assert!(lowered(ms(201))(l.observe(&o, ms(201), now())));
        let r = l
            .on_response(&o, None, ms(50), ms(90_000), false, now())
            .unwrap();
        assert_eq!(r.estimate, Some(ms(201)));
    }

    #[tokio::test(start_paused = true)]
    async fn healing_probe_a_strong_estimate_is_refuted_when_kept_twice_as_long() {
        let l = Learner::new(8, Duration::from_secs(300));
        let o = origin("grow:80");
        l.observe(&o, ms(200), now());
        // The first response after learning probes: kept open to 400 ms,
        // not reused (the estimate is above the floor).
        let r = l
            .on_response(&o, None, ms(50), ms(90_000), false, now())
            .unwrap();
        assert_eq!(
            r.probe,
            Some(Probe {
                reach: ms(400),
                reused: false,
                started: true
            })
        );
        // At most one probe per 10 s.
        let r = l
            .on_response(&o, None, ms(50), ms(90_000), false, now())
            .unwrap();
        assert_eq!(r.probe, None);
        // A close before twice the estimate confirms it...
        assert_eq!(l.kept(&o, ms(399), now()), None);
        assert_eq!(l.estimate(&o, now()), Some(ms(200)));
        // ...the server keeping the probe to 400 ms refutes it: forgotten,
        // long before relearn_after.
        let generation = l.generation();
        assert_eq!(l.kept(&o, ms(400), now()), Some(ms(200)));
        assert_eq!(l.estimate(&o, now()), None);
        assert_ne!(l.generation(), generation);
        // The next close is learned again, and the kept record makes a close
        // below it suspect.
        assert!(lowered(ms(2000))(l.observe(&o, ms(2000), now())));
        advance(Duration::from_secs(10)).await;
        let r = l
            .on_response(&o, None, ms(50), ms(90_000), false, now())
            .unwrap();
        assert_eq!(r.probe.map(|p| p.reach), Some(ms(4000)));
        // No probe where learning does not lower the expiry.
        let p = origin("low-config:80");
        l.observe(&p, ms(1000), now());
        assert_eq!(
            l.on_response(&p, None, ms(50), ms(500), false, now())
                .unwrap()
                .probe,
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn healing_probe_an_estimate_below_the_floor_is_reused_and_refuted_by_reuse() {
        let l = Learner::new(8, Duration::from_secs(300));
        let o = origin("reloads:80");
        // Two reloads, a minute apart, each closing a connection idle 3 ms.
        l.observe(&o, ms(3), now());
        advance(Duration::from_secs(60)).await;
        assert!(lowered(ms(3))(l.observe(&o, ms(3), now())));
        // Reused up to the floor.
        let r = l
            .on_response(&o, None, ms(50), ms(90_000), false, now())
            .unwrap();
        assert_eq!(
            r.probe,
            Some(Probe {
                reach: FLOOR,
                reused: true,
                started: true
            })
        );
        // The probe's next request, 20 ms later, gets its response: the
        // server keeps connections longer; reuse is back at once.
        let r = l
            .on_response(&o, Some(ms(20)), ms(50), ms(90_000), false, now())
            .unwrap();
        assert_eq!(r.refuted, Some(ms(3)));
        assert_eq!(r.estimate, None);
        assert_eq!(l.estimate(&o, now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn estimates_and_held_observations_are_forgotten_after_relearn_after() {
        let l = Learner::new(8, Duration::from_secs(60));
        let o = origin("a:80");
        l.observe(&o, ms(500), now());
        advance(Duration::from_secs(59)).await;
        assert_eq!(l.estimate(&o, now()), Some(ms(500)));
        advance(Duration::from_secs(2)).await;
        assert_eq!(l.estimate(&o, now()), None);
        assert!(lowered(ms(1000))(l.observe(&o, ms(1000), now())));
        // A held observation that waited too long agrees with nothing.
        l.observe(&o, ms(20), now());
        advance(Duration::from_secs(61)).await;
        assert!(matches!(l.observe(&o, ms(20), now()), Verdict::Held(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_at_the_bound_drops_the_least_recently_used() {
        let l = Learner::new(3, Duration::from_secs(60));
        for (i, host) in ["a:1", "b:1", "c:1"].into_iter().enumerate() {
            l.observe(&origin(host), ms(100 + i as u64), now());
            advance(ms(1)).await;
        }
        // A response for "a" marks it used, so "b" is the least recently
        // used.
        assert!(l
            .on_response(&origin("a:1"), None, ms(50), ms(90_000), false, now())
            .is_some());
        l.observe(&origin("d:1"), ms(200), now());
        assert_eq!(l.len(), 3);
        assert_eq!(l.estimate(&origin("b:1"), now()), None);
        assert!(l.estimate(&origin("a:1"), now()).is_some());
        assert!(l.estimate(&origin("c:1"), now()).is_some());
        assert!(l.estimate(&origin("d:1"), now()).is_some());
        // Thousands of origins never grow it past the bound.
        for i in 0..5000 {
            l.observe(&origin(&format!("h{i}:1")), ms(150), now());
        }
        assert_eq!(l.len(), 3);
        // The most recent three survive.
        for i in 4997..5000 {
            assert!(l.estimate(&origin(&format!("h{i}:1")), now()).is_some());
        }
        // Responses for unknown origins add nothing.
        assert!(l
            .on_response(
                &origin("zzz:1"),
                Some(ms(10)),
                ms(50),
                ms(90_000),
                false,
                now()
            )
            .is_none());
        assert_eq!(l.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_takes_one_lock() {
        let l = Learner::new(8, Duration::from_secs(60));
        let o = origin("a:80");
        l.observe(&o, ms(500), now());
        let before = l.locks();
        let r = l.on_response(&o, Some(ms(100)), ms(50), ms(90_000), false, now());
        assert_eq!(r.unwrap().estimate, Some(ms(500)));
        assert_eq!(l.locks() - before, 1);
    }

    #[test]
    fn origins_are_scheme_host_and_port_with_the_host_case_folded() {
        let of = |s: &str| Origin::of(&s.parse().unwrap()).unwrap();
        assert_eq!(
            of("http://Example.COM:8080/a"),
            of("http://example.com:8080/b?q")
        );
        let distinct = [
            "http://example.com:8080/",
            "http://example.com:8081/",
            "https://example.com:8080/",
            "http://example.co:8080/",
            "http://exampl.ecom:8080/",
            "http://a/",
            "http://ab/",
            "http://abcdefgh/",
            "http://abcdefghi/",
            "http://abcdefgh:1/",
            "http://10.0.0.7:80/",
            "http://10.0.0.8:80/",
        ];
        let hashes: std::collections::HashSet<_> = distinct.iter().map(|s| of(s)).collect();
        assert_eq!(hashes.len(), distinct.len());
    }

    #[test]
    fn relative_uris_have_no_origin() {
        assert!(Origin::of(&"/only/a/path".parse().unwrap()).is_none());
    }
}
