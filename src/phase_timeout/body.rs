//! The upload progress record request bodies report to, and the response
//! body that enforces the read stall and total limits.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::error::{Elapsed, Waiting};
use super::Phase;
use crate::clock::{deadline, far_future, Origin, Stamp};
use crate::track::{observe_frame, ExchangeEnd};
use crate::BoxError;

/// Data frames larger than this are split (zero-copy for `Bytes`) so upload
/// progress stays visible while hyper writes them.
pub const MAX_FRAME: usize = 64 * 1024;

/// Upload progress of one request, shared by its body and its future.
///
/// A request the retry layer below `PhaseTimeout` sends again uploads its
/// body again: the record [`restart`](Self::restart)s, and each report
/// carries the generation (the attempt) it is about, so that an earlier
/// attempt's body, dropped late by its connection, cannot end the upload
/// under way.
#[derive(Debug)]
pub(crate) struct Progress {
    origin: Origin,
    last_frame: Stamp,
    body_end: Stamp,
    bytes: AtomicU64,
    generation: AtomicU32,
    /// The record of a `PhaseTimeout` above this one (layers stacked
    /// twice): everything reported here is reported there too, as of the
    /// generation it had then.
    outer: OnceLock<Arc<Progress>>,
    outer_generation: AtomicU32,
}

impl Progress {
    pub(crate) fn new(issued: Instant) -> Self {
        Progress {
            origin: Origin::new(issued),
            last_frame: Stamp::never(),
            body_end: Stamp::never(),
            bytes: AtomicU64::new(0),
            generation: AtomicU32::new(0),
            outer: OnceLock::new(),
            outer_generation: AtomicU32::new(0),
        }
    }

    /// When the request was issued.
    pub(crate) fn issued(&self) -> Instant {
        self.origin.instant()
    }

    /// The current generation: reports about another one are ignored.
    pub(crate) fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reports to `outer` too from now on.
    pub(crate) fn report_to(&self, outer: Arc<Progress>) {
        self.outer_generation
            .store(outer.generation(), Ordering::Release);
        let _ = self.outer.set(outer);
    }

    /// When the last body frame was pulled by the connection.
    pub(crate) fn last_frame(&self) -> Option<Instant> {
        self.last_frame.get(&self.origin)
    }

    /// When the body was known to end (its last frame, or the poll that
    /// returned the end).
    pub(crate) fn body_end(&self) -> Option<Instant> {
        self.body_end.get(&self.origin)
    }

    /// Body bytes pulled so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// A frame of `len` bytes pulled at `now`, by the body of `generation`.
    pub(crate) fn frame(&self, generation: u32, len: usize, now: Instant) {
        if generation != self.generation() {
            return;
        }
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.last_frame.set(&self.origin, now);
        if let Some(outer) = self.outer.get() {
            outer.frame(self.outer_generation.load(Ordering::Acquire), len, now);
        }
    }

    /// The upload of `generation` ended at `at`.
    pub(crate) fn end(&self, generation: u32, at: Instant) {
        if generation != self.generation() {
            return;
        }
        self.body_end.set(&self.origin, at);
        if let Some(outer) = self.outer.get() {
            outer.end(self.outer_generation.load(Ordering::Acquire), at);
        }
    }

    /// A retried attempt (the retry layer below `PhaseTimeout`) uploads the
    /// body again: the upload is under way once more, its bytes counted
    /// from zero, in a new generation (returned).
    pub(crate) fn restart(&self) -> u32 {
        self.body_end.clear();
        self.bytes.store(0, Ordering::Relaxed);
        let generation = self
            .generation
            .fetch_add(1, Ordering::AcqRel)
            .wrapping_add(1);
        if let Some(outer) = self.outer.get() {
            self.outer_generation
                .store(outer.restart(), Ordering::Release);
        }
        generation
    }
}

pin_project! {
    /// The response body of [`PhaseTimeout`](super::PhaseTimeout): fails with
    /// [`Elapsed`] (phase [`Read`](Phase::Read)) after the read stall limit
    /// without a frame, or (phase [`Total`](Phase::Total)) when the total
    /// deadline passes before the body ends. With a zero limit, a body that
    /// has not ended fails at its first poll.
    ///
    /// It is `Unpin` when `B` is: its timer is boxed, and only allocated the
    /// first time the body has to wait for a frame.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        sleep: Option<Pin<Box<Sleep>>>,
        timers: Option<BodyTimers>,
        end: ExchangeEnd,
    }
}

#[derive(Debug)]
struct BodyTimers {
    stall: Option<Duration>,
    total: Option<(Duration, Instant)>,
    /// Where the stall clock runs from: the first poll that found no frame
    /// ready since the last frame was pulled (see [`BodyTimers::waiting`]);
    /// `None` until the body next waits.
    waiting_since: Option<Instant>,
    issued: Instant,
    sent: u64,
    received: u64,
}

impl BodyTimers {
    /// Whether a limit is zero (already spent).
    fn has_zero(&self) -> bool {
        self.stall.is_some_and(|s| s.is_zero()) || self.total.is_some_and(|(t, _)| t.is_zero())
    }

    /// When the next check is due, given the stall clock's start `since`.
    fn next_check(&self, since: Instant) -> Instant {
        let stall = self
            .stall
            .map_or_else(|| far_future(since), |s| deadline(since, s));
        self.total.map_or(stall, |(_, dl)| stall.min(dl))
    }

    /// The body found no frame ready: the stall clock runs from now unless
    /// it already runs (no frame pulled since it started). Returns its
    /// start. The clock is read here only, once per wait (none for a body
    /// whose frames were all ready, most responses): the time a caller
    /// takes between polls is its own, not the server's stall.
    fn waiting(&mut self) -> Instant {
        *self.waiting_since.get_or_insert_with(Instant::now)
    }

    /// `(sent, received)` for an error: this exchange's socket bytes when
    /// `end` knows them (tracked HTTP/1), otherwise request-body bytes pulled
    /// and response-body bytes received.
    fn bytes(&self, end: &ExchangeEnd) -> (u64, u64) {
        end.http1_exchange()
            .map_or((self.sent, self.received), |e| {
                (e.bytes_written(), e.bytes_read())
            })
    }

    /// Decides at `now` for a body waiting since `since`.
    fn check(&self, now: Instant, since: Instant, end: &ExchangeEnd) -> Result<Instant, Elapsed> {
        if let Some((limit, dl)) = self.total {
            if now >= dl {
                let (sent, received) = self.bytes(end);
                return Err(Elapsed::new(
                    Phase::Total,
                    Waiting::Completion,
                    limit,
                    now.saturating_duration_since(self.issued),
                    sent,
                    received,
                ));
            }
        }
        if let Some(limit) = self.stall {
            let idle = now.saturating_duration_since(since);
            if idle >= limit {
                let (sent, received) = self.bytes(end);
                return Err(Elapsed::new(
                    Phase::Read,
                    Waiting::BodyProgress,
                    limit,
                    idle,
                    sent,
                    received,
                ));
            }
        }
        Ok(self.next_check(since))
    }
}

impl<B> ResponseBody<B> {
    /// The wrapped body.
    pub(crate) fn get_ref(&self) -> &B {
        &self.inner
    }

    /// A body with no limits at all (what the layer returns when every limit
    /// is off).
    pub(crate) fn unlimited(inner: B, end: ExchangeEnd) -> Self {
        ResponseBody {
            inner,
            sleep: None,
            timers: None,
            end,
        }
    }

    pub(crate) fn new(
        inner: B,
        stall: Option<Duration>,
        total: Option<Duration>,
        issued: Instant,
        sent: u64,
        end: ExchangeEnd,
    ) -> Self {
        if stall.is_none() && total.is_none() {
            return Self::unlimited(inner, end);
        }
        // No clock read: the stall clock starts when the body first waits.
        let timers = BodyTimers {
            stall,
            total: total.map(|t| (t, deadline(issued, t))),
            waiting_since: None,
            issued,
            sent,
            received: 0,
        };
        ResponseBody {
            inner,
            sleep: None,
            timers: Some(timers),
            end,
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        if let Some(timers) = this.timers.as_ref() {
            // A zero limit is already spent: a body that has not ended fails
            // at once, whatever happens to be buffered.
            if timers.has_zero() && !this.inner.is_end_stream() {
                let now = Instant::now();
                if let Err(elapsed) = timers.check(now, now, this.end) {
                    return Poll::Ready(Some(Err(elapsed.into())));
                }
            }
        }
        let polled = this.inner.as_mut().poll_frame(cx);
        observe_frame(this.inner.as_mut(), &polled, this.end);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = this.timers.as_mut() {
                    t.received += frame.data_ref().map_or(0, |d| d.remaining() as u64);
                    // Progress: the stall clock restarts when the body next
                    // waits (no clock read here).
                    t.waiting_since = None;
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        let Some(timers) = this.timers.as_mut() else {
            return Poll::Pending;
        };
        // Only a stall limit needs to know since when the body waits; a
        // total deadline alone is fixed.
        let since = if timers.stall.is_some() {
            timers.waiting()
        } else {
            timers.issued
        };
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(timers.next_check(since))));
        loop {
            ready!(sleep.as_mut().poll(cx));
            match timers.check(Instant::now(), since, this.end) {
                Ok(next) => sleep.as_mut().reset(next),
                Err(elapsed) => {
                    // Fail once; later polls see the same deadline pass again.
                    return Poll::Ready(Some(Err(elapsed.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
