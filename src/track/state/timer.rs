//! The connection's one timer, shared by the tracking IO (the idle expiry of
//! a known-idle connection) and the request in flight on an HTTP/1
//! connection (PhaseTimeout's phase checks).
//!
//! A tokio timer costs a wheel insertion at its first poll and a removal
//! when it is dropped; a request that brings its own pays both, every
//! time. The connection's timer instead stays registered and is moved
//! lazily: a deadline later than where it is armed leaves it there (it
//! fires early, and whoever is waiting moves it on), so a busy connection
//! costs one wheel operation per limit period, not two per request.
//!
//! The timer is always polled with one waker of the connection's own,
//! [`ConnTimer`] itself, which wakes both the task driving the IO and the request
//! waiting on the timer, if any. Which of the two last polled it does not
//! matter, and a request and the IO never take each other's wake-up.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use tokio::time::{Instant, Sleep};

use super::ConnectionState;

/// The timer and the tasks it wakes: the one driving the connection's IO
/// and the request waiting on the timer. Polled with a waker made of
/// itself, so a wake-up reaches both.
#[derive(Debug, Default)]
pub(super) struct ConnTimer {
    /// Created at the first use, then kept for the connection's life.
    sleep: Mutex<Option<Pin<Box<Sleep>>>>,
    /// The timer was polled (with this timer's own waker) since it was last
    /// armed, and has not fired: tokio holds the wake-up, and a request
    /// whose deadline is no earlier needs only to register its own waker
    /// (no poll). Changed under `sleep`'s lock.
    registered: AtomicBool,
    /// The task that last found the IO pending (kept: it is re-registered
    /// only when it changes).
    io: Mutex<Option<Waker>>,
    /// The request waiting on the timer (taken by a wake: it registers
    /// again when it polls the timer again).
    request: Mutex<Option<Waker>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn register(slot: &Mutex<Option<Waker>>, waker: &Waker) {
    let mut slot = lock(slot);
    match slot.as_ref() {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

impl Wake for ConnTimer {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_io();
        let request = lock(&self.request).take();
        if let Some(w) = request {
            w.wake();
        }
    }
}

impl ConnTimer {
    pub(super) fn register_io(&self, waker: &Waker) {
        register(&self.io, waker);
    }

    pub(super) fn wake_io(&self) {
        let waker = lock(&self.io).clone();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Whether the timer in `slot`, armed at `armed`, is armed no later than
/// `reuse_raw` and has not fired.
fn pending_by(slot: &Option<Pin<Box<Sleep>>>, armed: Option<u64>, reuse_raw: u64) -> bool {
    match (slot, armed) {
        (Some(sleep), Some(armed)) => armed <= reuse_raw && !sleep.is_elapsed(),
        _ => false,
    }
}

/// Polls the connection's timer with the connection's own waker (the
/// caller holds `sleep`'s lock).
fn poll(timer: &Arc<ConnTimer>, sleep: Pin<&mut Sleep>) -> Poll<()> {
    let polled = sleep.poll(&mut Context::from_waker(&Waker::from(timer.clone())));
    timer
        .registered
        .store(polled.is_pending(), Ordering::Relaxed);
    polled
}

/// Moves the connection's timer to `at` (the caller holds `sleep`'s lock):
/// it is polled again before anyone relies on its wake-up.
fn reset(timer: &ConnTimer, sleep: Pin<&mut Sleep>, at: Instant) {
    timer.registered.store(false, Ordering::Relaxed);
    sleep.reset(at);
}

impl ConnectionState {
    /// Waits, for the request in flight on this HTTP/1 connection, until
    /// `at`: `Ready` once the connection's timer has passed it, otherwise
    /// `cx` is woken when it does (or earlier, spuriously).
    ///
    /// The timer is moved to `at` only when it is armed later, or has fired
    /// before it; armed earlier, it is left there and moved on when it
    /// fires, the next time the request polls it.
    pub(crate) fn poll_request_timer(&self, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let timer = &self.inner.timer;
        register(&timer.request, cx.waker());
        let mut slot = lock(&timer.sleep);
        let sleep = match &mut *slot {
            Some(sleep) => {
                let armed = sleep.deadline();
                if armed > at || (armed < at && sleep.is_elapsed()) {
                    reset(timer, sleep.as_mut(), at);
                    self.timer_armed(at);
                } else if timer.registered.load(Ordering::Relaxed) && !sleep.is_elapsed() {
                    // Armed no later than `at`, and tokio holds its wake-up
                    // (the connection's waker, which wakes the request
                    // registered above): nothing to poll.
                    return Poll::Pending;
                }
                sleep
            }
            None => {
                self.timer_armed(at);
                slot.insert(Box::pin(tokio::time::sleep_until(at)))
            }
        };
        poll(timer, sleep.as_mut())
    }

    /// The request no longer waits on the timer (its response head
    /// arrived, it timed out, or it was dropped).
    pub(crate) fn release_request_timer(&self) {
        let waker = lock(&self.inner.timer.request).take();
        drop(waker);
    }

    /// Whether the connection's timer is armed no later than `reuse_raw`
    /// ([`stamp`](Self::stamp) units) and has not fired yet: it will then
    /// wake the IO's task in time for an idle period ending there. No clock
    /// read (a timer that has not fired is one whose deadline is still
    /// ahead, or is being processed and wakes the IO anyway).
    pub(super) fn timer_pending_by(&self, reuse_raw: u64) -> bool {
        pending_by(
            &lock(&self.inner.timer.sleep),
            self.timer_at_raw(),
            reuse_raw,
        )
    }

    /// Whether the idle connection's expiry has passed (it must not be
    /// reused any more); otherwise makes sure the timer wakes the IO's task
    /// by the time the IO should close it. Called by the IO when a read
    /// finds nothing, after registering its task.
    ///
    /// A connection IdleExpiry keeps open past the end of its reuse (a
    /// healing probe, see `idle_expiry`) closes at the later instant: the
    /// timer is moved there, and any poll in between (a request about to use
    /// it) finds it expired.
    pub(crate) fn idle_expired(&self) -> bool {
        let Some((reuse_raw, close_raw)) = self.idle_deadlines_raw() else {
            return false;
        };
        let timer = &self.inner.timer;
        let mut slot = lock(&timer.sleep);
        // The fast path of a busy connection: the timer is armed no later
        // than the end of reuse and has not fired, so now is before it; no
        // clock read.
        if pending_by(&slot, self.timer_at_raw(), reuse_raw) {
            return false;
        }
        let now = Instant::now();
        if self.stamp(now) >= reuse_raw {
            return true;
        }
        let (Some(reuse), Some(close)) = (self.at(reuse_raw), self.at(close_raw)) else {
            return false;
        };
        let sleep = match &mut *slot {
            Some(sleep) => {
                // Moved when it would fire too late, or (lingering past the
                // end of reuse) between the end of reuse and the close, where
                // it would close the connection early; never later than a
                // request waiting on it needs.
                let armed = sleep.deadline();
                let waited = lock(&timer.request).is_some() && !sleep.is_elapsed();
                if close < armed || (!waited && armed >= reuse && armed != close) {
                    reset(timer, sleep.as_mut(), close);
                    self.timer_armed(close);
                }
                sleep
            }
            None => {
                self.timer_armed(close);
                slot.insert(Box::pin(tokio::time::sleep_until(close)))
            }
        };
        if poll(timer, sleep.as_mut()).is_ready() {
            // Fired at an earlier deadline: move it to this one.
            reset(timer, sleep.as_mut(), close);
            self.timer_armed(close);
            if poll(timer, sleep.as_mut()).is_ready() {
                return Instant::now() >= reuse;
            }
        }
        false
    }
}
