//! Graceful shutdown: drain a client's requests in flight, close its
//! connections cleanly, and report what was cut.
//!
//! What Python's `ThreadPoolExecutor` gives submitted work at exit, for an
//! HTTP client. From the moment a drain starts:
//!
//! * **new requests fail at once** with [`Draining`]: nothing of them was
//!   written, so a caller (or an outer retry, or a load balancer) can send
//!   them elsewhere; [`retry`](crate::retry) never retries them on the
//!   same client;
//! * **idle connections close at once**, cleanly (the client closes the
//!   socket: the server reads EOF, not a reset), and a connection whose
//!   exchange ends during the drain closes instead of going back to its
//!   pool;
//! * **requests in flight run to completion**, bounded by the deadline: a
//!   request is in flight from its call until its response body ends (or
//!   the response or body is dropped, or it fails);
//! * **at the deadline** the requests still in flight are cut the way a
//!   timeout abandons a request: their connections are closed (with the
//!   tracker) and they fail with [`DrainCut`] (the server may have
//!   processed them);
//! * the [`DrainReport`] says how many were in flight at the start, how
//!   many ended before the deadline, how many were cut, how many idle
//!   connections were closed, and how many connections were still open
//!   when the drain returned (0 unless the deadline passed).
//!
//! Two ways in:
//!
//! * the one-call client: [`Client::drain`](crate::client::Client::drain)
//!   (the drain belongs to the client's pools: every clone of the client
//!   shares it);
//! * a stack built by hand on hyper-util's legacy client: a
//!   [`DrainHandle`], which is also the layer ([`Drain`]) and drains every
//!   service it wrapped.
//!
//! # The drain future
//!
//! [`DrainHandle::drain`] starts the drain **when it is called** (not when
//! its future is first polled) and returns a future that waits for the
//! requests in flight, cuts the rest at the deadline and resolves to the
//! report. Dropping that future stops only the waiting: the client stays
//! draining (new requests are still refused, connections still close as
//! their exchanges end), and nothing is cut at the deadline; call `drain`
//! again to wait (and cut) again. A drain cannot be undone: build a new
//! client.
//!
//! The deadline: `Duration::ZERO` cuts every request in flight at once;
//! one too far in the future for the clock to represent is clamped to
//! about thirty years (in effect no deadline, never a panic). Several
//! drains of one client (from clones, say) each wait with their own
//! deadline and report; the first deadline to pass cuts.
//!
//! # With tokio's graceful-shutdown patterns
//!
//! ```no_run
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower_conn_lifecycle::client;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let client = client::builder().build::<Full<Bytes>>();
//! // … hand clones of `client` to the application's tasks …
//! tokio::signal::ctrl_c().await.unwrap(); // or SIGTERM
//! let report = client.drain(Duration::from_secs(10)).await;
//! eprintln!("{report}");
//! # }
//! ```
//!
//! # What it costs
//!
//! A request that is not refused costs, at its call, one compare-and-swap
//! of the drain's word (the count of requests in flight and the drain's
//! flags together, so that a request called as a drain begins is either
//! refused or counted) and one reference-count increment, the same two
//! decrements at its end, and one relaxed load on each poll that returns
//! `Pending`; no allocation, no lock. Everything else happens on the
//! drain's side. (A [`DrainHandle::new`] without the tracker has no
//! connection to close to wake a request it cuts: there a request that
//! waits also leaves its waker for the cut, an allocation at its first
//! wait and a lock at each.)

mod error;
mod layer;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Context;
use std::time::Duration;

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use error::{DrainCut, Draining};
pub use layer::{future, Drain, DrainBody};

use crate::track::TrackStats;

/// The drain has begun: requests are refused (a flag of [`Cell::word`]).
const DRAINING: u64 = 1 << 62;
/// The drain cut the requests in flight (a flag of [`Cell::word`]).
const CUT: u64 = 1 << 63;
/// The count of requests in flight (the low bits of [`Cell::word`]).
const COUNT: u64 = DRAINING - 1;

/// How long a drain that cut requests waits for their connections to
/// close (the tracker wakes each one's task; it closes as soon as it runs).
const CLOSE_GRACE: Duration = Duration::from_millis(20);

/// How often a drain whose requests have all ended checks that its
/// connections have closed (they close as soon as their tasks run).
const CLOSE_POLL: Duration = Duration::from_millis(1);

/// The farthest deadline: about thirty years.
const MAX_DEADLINE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// The drain's state, referenced by its [`Shared`] and by every request in
/// flight.
#[derive(Debug)]
pub(crate) struct Cell {
    /// The count of requests in flight and the flags ([`DRAINING`],
    /// [`CUT`]) in one word: a request is admitted (counted) only while
    /// the word says open, and a drain reads the count exactly as it sets
    /// a flag, so that a request called as the drain begins is either
    /// refused or counted in flight (never sent unseen), and the count at
    /// the cut is what was cut.
    word: AtomicU64,
    /// How many requests the cut cut (set under the lock, with [`CUT`]).
    cut: Mutex<u64>,
    /// Woken when a request ends during a drain, and at the cut.
    notify: Notify,
    /// Without the tracker (which wakes a cut request by closing its
    /// connection): woken at the cut, for the requests waiting on it.
    cut_wake: Option<Arc<Notify>>,
}

/// A request in flight: holds one reference to the drain's [`Cell`] until
/// the request ends.
pub(crate) struct InFlight {
    cell: Option<Arc<Cell>>,
    /// Without the tracker: the request's registration for the cut's
    /// wake-up, made at its first wait.
    cut_wait: Option<Pin<Box<OwnedNotified>>>,
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InFlight")
    }
}

impl InFlight {
    /// Whether the drain cut the requests still in flight.
    #[inline]
    pub(crate) fn is_cut(&self) -> bool {
        self.cell
            .as_ref()
            .is_some_and(|c| c.word.load(Ordering::Relaxed) & CUT != 0)
    }

    /// Takes `guard` if the drain cut its request: the request ends there.
    pub(crate) fn take_cut(guard: &mut Option<InFlight>) -> bool {
        guard.take_if(|g| g.is_cut()).is_some()
    }

    /// [`take_cut`](Self::take_cut) for a request about to wait (its inner
    /// future or body returned `Pending`). Without the tracker, nothing
    /// else would wake a request cut while it waits (hyper still holds
    /// it, and the server may never answer): it leaves `cx`'s waker for
    /// the cut first, then looks.
    pub(crate) fn pending_cut(guard: &mut Option<InFlight>, cx: &mut Context<'_>) -> bool {
        if let Some(g) = guard {
            if let Some(notify) = g.cell.as_ref().and_then(|c| c.cut_wake.as_ref()) {
                let wait = g
                    .cut_wait
                    .get_or_insert_with(|| Box::pin(notify.clone().notified_owned()));
                // Registered before the look below: a cut after it (the
                // flag set, then the wake-up) wakes this task.
                let _ = wait.as_mut().poll(cx);
            }
        }
        Self::take_cut(guard)
    }

    /// `err`, as a [`DrainCut`] if the drain cut this request.
    pub(crate) fn judge(&self, err: crate::BoxError) -> crate::BoxError {
        if self.is_cut() {
            Box::new(DrainCut::new(Some(err)))
        } else {
            err
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(cell) = self.cell.take() else {
            return;
        };
        if cell.word.fetch_sub(1, Ordering::AcqRel) & DRAINING != 0 {
            cell.notify.notify_waiters();
        }
    }
}

/// What a drain closes connections with.
struct Shared {
    cell: Arc<Cell>,
    tracker: Option<TrackStats>,
    /// The one-call client's pools: drops every idle connection.
    close_idle: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// A client's drain: start it with [`drain`](Self::drain). Clones share
/// the drain.
///
/// The one-call client has its own
/// ([`Client::drain`](crate::client::Client::drain),
/// [`Client::drain_handle`](crate::client::Client::drain_handle)). For a
/// stack built by hand, the handle is also the layer
/// ([`tower_layer::Layer`], making a [`Drain`]): put a clone of it on the
/// stack and keep it. Every service it wraps then refuses new requests
/// with [`Draining`] once the drain begins, follows each request to the
/// end of its response body, and at the deadline cuts the rest with
/// [`DrainCut`]; see the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::{connect::HttpConnector, Client};
/// use hyper_util::rt::TokioExecutor;
/// use tower::{Layer, ServiceBuilder};
/// use tower_conn_lifecycle::drain::DrainHandle;
/// use tower_conn_lifecycle::track::TrackConnectionsLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let track = TrackConnectionsLayer::new();
/// let drain = DrainHandle::with_tracker(&track.stats());
/// let client = Client::builder(TokioExecutor::new())
///     .build::<_, Full<Bytes>>(track.layer(HttpConnector::new()));
/// let client = ServiceBuilder::new().layer(drain.clone()).service(client);
/// # let _ = client;
/// // On shutdown:
/// let report = drain.drain(Duration::from_secs(10)).await;
/// assert_eq!(report.cut(), 0);
/// # }
/// ```
///
/// # Where it goes
///
/// Outermost (above [`RetryOnStaleConnection`](crate::retry) and
/// [`PhaseTimeout`](crate::phase_timeout)), so a request is in flight
/// from its call to its body's end, retries included. Inside a retry
/// layer it works too: the retry layer never retries a [`Draining`]
/// refusal.
///
/// # Connections: give it the tracker
///
/// hyper-util's legacy client hides its pool: a layer around it cannot
/// take a connection out of the pool or close one by itself. Built with
/// the connector's [`TrackConnectionsLayer`](crate::track::TrackConnectionsLayer)
/// ([`with_tracker`](Self::with_tracker)) the drain closes them through
/// the tracker: idle HTTP/1 connections at once (the tracked IO reads EOF,
/// and hyper closes the socket cleanly), the others when their exchange
/// ends (with
/// [`WithConnectionInfoLayer`](crate::track::WithConnectionInfoLayer),
/// [`PhaseTimeout`](crate::phase_timeout) or
/// [`IdleExpiry`](crate::idle_expiry) in the stack to mark that end;
/// otherwise once nothing is in flight), HTTP/2 ones once nothing is in
/// flight, and at the deadline every connection with a request still on
/// it (the request fails, the connection closes). The tracker should be
/// this client's alone: the drain closes every connection it tracks.
///
/// **Without the tracker** ([`new`](Self::new)) the drain still refuses
/// new requests, waits for the requests in flight and counts them, but
/// closes no connection: the report's connection counts are `None`, and a
/// request cut at the deadline fails with [`DrainCut`] while hyper still
/// holds it (its connection stays open; each waiting request then leaves
/// its waker for the cut, one allocation per request). Drop the client
/// (every clone) after the drain to close its pool's connections.
#[derive(Clone)]
pub struct DrainHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for DrainHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainHandle")
            .field("draining", &self.is_draining())
            .field("in_flight", &self.in_flight())
            .field("tracked", &self.shared.tracker.is_some())
            .finish()
    }
}

impl Default for DrainHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl DrainHandle {
    /// A new drain without the tracker: it closes no connection (see
    /// [the type's docs](Self#connections-give-it-the-tracker)).
    pub fn new() -> Self {
        Self::from_tracker(None)
    }

    /// A new drain that closes connections through `stats`' tracker: the
    /// [`TrackStats`] of the
    /// [`TrackConnectionsLayer`](crate::track::TrackConnectionsLayer) in
    /// this client's connector. The drain closes every connection that
    /// tracker has made or makes: give each client its own tracker (a
    /// tracker shared by several clients is drained with all of them).
    pub fn with_tracker(stats: &TrackStats) -> Self {
        Self::from_tracker(Some(stats.clone()))
    }

    fn from_tracker(tracker: Option<TrackStats>) -> Self {
        DrainHandle {
            shared: Arc::new(Shared {
                cell: Arc::new(Cell {
                    word: AtomicU64::new(0),
                    cut: Mutex::new(0),
                    notify: Notify::new(),
                    cut_wake: tracker.is_none().then(|| Arc::new(Notify::new())),
                }),
                tracker,
                close_idle: OnceLock::new(),
            }),
        }
    }

    /// Installs how the pools drop their idle connections (once).
    pub(crate) fn on_close_idle(&self, close: Box<dyn Fn() + Send + Sync>) {
        let _ = self.shared.close_idle.set(close);
    }

    /// A new request: in flight until the returned guard drops, or refused
    /// if the drain has begun.
    #[inline]
    pub(crate) fn enter(&self) -> Result<InFlight, Draining> {
        let cell = &self.shared.cell;
        // Counted only if the word still says open when the count goes up:
        // a drain setting its flag in between makes this compare fail.
        // (Looking at the state, then counting, let a request slip past a
        // drain that had just counted its requests without it.)
        let mut word = cell.word.load(Ordering::Relaxed);
        loop {
            if word & DRAINING != 0 {
                return Err(Draining);
            }
            match cell.word.compare_exchange_weak(
                word,
                word + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => word = now,
            }
        }
        Ok(InFlight {
            cell: Some(cell.clone()),
            cut_wait: None,
        })
    }

    /// Whether a drain has begun (new requests are refused).
    pub fn is_draining(&self) -> bool {
        self.shared.cell.word.load(Ordering::Relaxed) & DRAINING != 0
    }

    /// Requests in flight now: called and not yet ended.
    pub fn in_flight(&self) -> u64 {
        self.shared.cell.word.load(Ordering::Relaxed) & COUNT
    }

    /// Starts draining now and returns a future that resolves to the
    /// report once every request in flight has ended and the connections
    /// have closed, or at `deadline` (from now), when the requests still in
    /// flight are cut. See the [module docs](self) for what happens from
    /// the call on, what dropping the future does, and the deadline's
    /// bounds.
    pub fn drain(&self, deadline: Duration) -> impl Future<Output = DrainReport> + Send + 'static {
        let shared = self.shared.clone();
        let started = Instant::now();
        let at = started
            .checked_add(deadline.min(MAX_DEADLINE))
            .unwrap_or(started);
        let cell = &shared.cell;
        // From here on every request is refused; the count is exact.
        let in_flight = cell.word.fetch_or(DRAINING, Ordering::AcqRel) & COUNT;
        // Idle connections close now: the tracker retires every connection
        // (closed now if idle, else when its exchange ends; counted before
        // anything closes), and every one opened from now on (for a request
        // in flight that was still connecting) at the end of its first
        // exchange; the pools drop theirs (hyper closes a connection whose
        // last handle is gone).
        let idle_closed = shared.tracker.as_ref().map(|tracker| {
            tracker
                .retire_from_now()
                .iter()
                .filter(|state| state.retire_now())
                .count() as u64
        });
        if let Some(close) = shared.close_idle.get() {
            close();
        }
        tracing::debug!(in_flight, ?idle_closed, ?deadline, "drain started");
        async move {
            let cell = &shared.cell;
            loop {
                let notified = cell.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                // What came back to a pool since: closed.
                if let Some(close) = shared.close_idle.get() {
                    close();
                }
                let word = cell.word.load(Ordering::Acquire);
                if word & COUNT == 0 || word & CUT != 0 {
                    // All ended, or another drain of this client cut them.
                    break;
                }
                // The notification first: a request that ends at the
                // deadline counts as completed.
                if tokio::time::timeout_at(at, notified.as_mut())
                    .await
                    .is_err()
                {
                    {
                        let mut cut = cell.cut.lock().unwrap_or_else(|e| e.into_inner());
                        let before = cell.word.fetch_or(CUT, Ordering::AcqRel);
                        if before & CUT == 0 {
                            *cut = before & COUNT;
                        }
                    }
                    // The client's other drains end with this cut, even if
                    // no request runs (a body held unread) to tell them;
                    // without the tracker, the requests waiting fail now.
                    cell.notify.notify_waiters();
                    if let Some(wake) = &cell.cut_wake {
                        wake.notify_waiters();
                    }
                    if let Some(tracker) = &shared.tracker {
                        for state in tracker.live() {
                            if !state.is_upgraded() {
                                state.poison();
                            }
                        }
                    }
                    if let Some(close) = shared.close_idle.get() {
                        close();
                    }
                    break;
                }
            }
            // What was in flight at the cut (this drain's or another's) was
            // cut: every request this drain saw in flight and still in
            // flight then (requests were refused from this drain's start on,
            // or earlier). The rest completed.
            let cut = if cell.word.load(Ordering::Acquire) & CUT != 0 {
                // Set with the flag, under this lock.
                let at_cut = *cell.cut.lock().unwrap_or_else(|e| e.into_inner());
                in_flight.min(at_cut)
            } else {
                0
            };
            let ended = in_flight - cut;
            let still_open = match &shared.tracker {
                Some(tracker) => Some(wait_closed(tracker, at, cut > 0).await),
                None => None,
            };
            let report = DrainReport {
                in_flight,
                completed: ended,
                cut,
                idle_closed,
                still_open,
                elapsed: started.elapsed(),
            };
            tracing::debug!(%report, "drain finished");
            report
        }
    }
}

/// Waits until the tracker's connections have closed, or the deadline (a
/// short grace after a cut); returns how many are still open (tunnels of
/// upgraded connections are the caller's and not counted).
async fn wait_closed(tracker: &TrackStats, at: Instant, was_cut: bool) -> u64 {
    // Closes take a moment (each connection's task must run): at least
    // the grace, even past the deadline.
    let grace = Instant::now() + CLOSE_GRACE;
    let until = if was_cut { grace } else { at.max(grace) };
    // After a short grace (connections retired at their exchange's end
    // close as soon as their tasks run; an HTTP/2 one whose last handle is
    // gone closes with a GOAWAY), what is left is closed by the tracker.
    let rest_at = Instant::now() + CLOSE_GRACE;
    let mut closed_rest = false;
    loop {
        let open: Vec<_> = tracker
            .live()
            .into_iter()
            .filter(|state| !state.is_upgraded())
            .collect();
        if open.is_empty() {
            return 0;
        }
        if !closed_rest && Instant::now() >= rest_at {
            // Nothing of this client is in flight any more: what has not
            // closed by itself (an HTTP/2 connection the legacy pool still
            // holds, an HTTP/1 one whose exchange no layer ended) is closed
            // by the tracker.
            closed_rest = true;
            for state in &open {
                if state.is_http2() || state.idle_since().is_none() {
                    state.poison();
                }
            }
        }
        if Instant::now() >= until {
            return open.len() as u64;
        }
        tokio::time::sleep(CLOSE_POLL).await;
    }
}

/// What a drain did: see [`DrainHandle::drain`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    in_flight: u64,
    completed: u64,
    cut: u64,
    idle_closed: Option<u64>,
    still_open: Option<u64>,
    elapsed: Duration,
}

impl DrainReport {
    /// Requests in flight when the drain began (called, response body not
    /// yet ended).
    pub fn in_flight_at_start(&self) -> u64 {
        self.in_flight
    }

    /// Requests that ended during the drain, before the deadline: their
    /// response body ended or was dropped, or they failed (an error of
    /// their own, not the drain's).
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Requests still in flight at the deadline, cut (they fail with
    /// [`DrainCut`]).
    pub fn cut(&self) -> u64 {
        self.cut
    }

    /// HTTP/1 connections that were idle when the drain began and were
    /// closed at once; `None` without the tracker (a [`DrainHandle::new`]
    /// rather than [`DrainHandle::with_tracker`]). HTTP/2 connections are
    /// not counted: they close when their last stream ends.
    pub fn idle_connections_closed(&self) -> Option<u64> {
        self.idle_closed
    }

    /// Connections still open when the drain returned: 0 unless the
    /// deadline passed (a cut connection still closing, one held by a
    /// response the caller keeps without reading it); `None` without the
    /// tracker.
    pub fn connections_still_open(&self) -> Option<u64> {
        self.still_open
    }

    /// How long the drain took.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
}

/// The figures by the names of their getters.
impl fmt::Debug for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainReport")
            .field("in_flight_at_start", &self.in_flight)
            .field("completed", &self.completed)
            .field("cut", &self.cut)
            .field("idle_connections_closed", &self.idle_closed)
            .field("connections_still_open", &self.still_open)
            .field("elapsed", &self.elapsed)
            .finish()
    }
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "drained in {:?}: {} in flight, {} completed, {} cut",
            self.elapsed, self.in_flight, self.completed, self.cut
        )?;
        if let Some(idle) = self.idle_closed {
            write!(f, ", {idle} idle connections closed")?;
        }
        if let Some(open) = self.still_open {
            write!(f, ", {open} connections still open")?;
        }
        Ok(())
    }
}
