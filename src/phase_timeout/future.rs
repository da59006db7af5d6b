//! The future of [`PhaseTimeout`](super::PhaseTimeout): the phase machine
//! before the response head arrives.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::Response;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::body::{Progress, ResponseBody};
use super::error::{Elapsed, Waiting};
use super::layer::Limits;
use super::Phase;
use crate::clock::{deadline, far_future};
use crate::track::{Captured, ConnectionCapture, ConnectionState, ExchangeEnd, PendingExchange};
use crate::BoxError;

pin_project! {
    /// Response future of [`PhaseTimeout`](super::PhaseTimeout).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // The request's own timer, made only when it does not wait on its
        // connection's (see `Watch::timer`).
        #[pin]
        sleep: Option<Sleep>,
        watch: Watch,
    }
}

/// What the future knows about its request.
#[derive(Debug)]
pub(crate) struct Watch {
    limits: Limits,
    /// The first phase whose limit is zero: the request fails untried.
    zero: Option<Phase>,
    issued: Instant,
    /// The body's upload progress; `None` for a body that was empty from the
    /// start (its upload is the request head: ended when issued, no bytes).
    progress: Option<Arc<Progress>>,
    /// When this request could first write (connection known), if known yet,
    /// and the id of that connection (when tracked): hyper-util may retry a
    /// request on a new connection, and the clocks follow it.
    connected: Option<(Instant, Option<u64>)>,
    /// `connected` is the call, because the inner service hides its
    /// connection and the body was empty (see [`Watch::observe`]); a capture
    /// filled later still wins.
    assumed: bool,
    /// When the capture was first seen filled, right after an inner poll:
    /// the instant hyper-util handed the request to its connection.
    handed: Option<Instant>,
    /// The request's connection capture, which abandons the exchange
    /// (poisoning its connection) if this future is dropped or times out
    /// before the head.
    pending: PendingExchange,
    /// When the timer next has to fire: the next check.
    next: Instant,
    /// The tracked HTTP/1 connection the request is in flight on, whose
    /// timer it waits on instead of one of its own (see
    /// `ConnectionState::poll_request_timer`); `None` before the connection
    /// is known, on HTTP/2 (one timer per stream) and untracked.
    timer: Option<ConnectionState>,
    /// `timer` is decided (see [`Watch::decide_timer`]).
    timer_decided: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(state) = &self.timer {
            state.release_request_timer();
        }
    }
}

/// A request's limits with what follows from them, worked out once per
/// layer rather than per request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    limits: Limits,
    /// The first phase whose limit is zero (see [`Limits::zero`]).
    zero: Option<Phase>,
    /// When the first timer check comes after the request is issued.
    first_check: Option<Duration>,
}

impl Plan {
    pub(crate) fn new(limits: Limits) -> Self {
        Plan {
            zero: limits.zero(),
            first_check: limits.first_check(),
            limits,
        }
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: F,
        plan: Plan,
        issued: Instant,
        progress: Option<Arc<Progress>>,
        capture: Option<ConnectionCapture>,
    ) -> Self {
        let first = plan
            .first_check
            .map_or_else(|| far_future(issued), |d| deadline(issued, d));
        let watch = Watch {
            limits: plan.limits,
            zero: plan.zero,
            issued,
            progress,
            pending: PendingExchange::new(capture),
            connected: None,
            assumed: false,
            handed: None,
            next: first,
            timer: None,
            timer_decided: false,
        };
        ResponseFuture {
            inner,
            sleep: None,
            watch,
        }
    }
}

impl Watch {
    /// The request's connection capture.
    fn capture(&self) -> Option<&ConnectionCapture> {
        self.pending.capture()
    }

    /// When the last body frame was pulled by the connection.
    fn last_frame(&self) -> Option<Instant> {
        self.progress.as_ref()?.last_frame()
    }

    /// When the body was known to end.
    fn body_end(&self) -> Option<Instant> {
        match &self.progress {
            Some(progress) => progress.body_end(),
            None => Some(self.issued),
        }
    }

    /// Body bytes pulled so far.
    fn body_bytes(&self) -> u64 {
        self.progress.as_ref().map_or(0, |p| p.bytes())
    }

    fn total_deadline(&self) -> Option<(Duration, Instant)> {
        self.limits.total.map(|t| (t, deadline(self.issued, t)))
    }

    /// The error for a zero limit (see [`Limits::zero`]).
    fn zero_elapsed(&self, phase: Phase) -> Elapsed {
        let waiting = match phase {
            Phase::Send => Waiting::UploadProgress,
            Phase::Read => Waiting::ResponseHead,
            _ => Waiting::Completion,
        };
        self.elapsed(phase, waiting, Duration::ZERO, self.issued)
    }

    fn elapsed(&self, phase: Phase, waiting: Waiting, limit: Duration, since: Instant) -> Elapsed {
        let now = Instant::now();
        let (sent, received) = self.socket_bytes().unwrap_or((self.body_bytes(), 0));
        Elapsed::new(
            phase,
            waiting,
            limit,
            now.saturating_duration_since(since),
            sent,
            received,
        )
        .with_attempt(self.capture().cloned())
    }

    /// This request's bytes on the socket, `(written, read)`, when its
    /// connection is tracked and HTTP/1 (the socket carries this exchange
    /// alone); `None` otherwise, and the body frames tell instead.
    fn socket_bytes(&self) -> Option<(u64, u64)> {
        // The attempt's own record, from the moment the request announced
        // itself to its connection (before that, nothing of it is on the
        // wire and the body frames say as much).
        let exchange = self.capture()?.exchange()?;
        Some((exchange.bytes_written(), exchange.bytes_read()))
    }

    /// Decides at `now`: the timeout that has fired, or when to look again.
    fn check(&mut self, now: Instant) -> Result<Instant, Elapsed> {
        let total = self.total_deadline();
        if let Some((limit, dl)) = total {
            if now >= dl {
                return Err(self.elapsed(Phase::Total, Waiting::Completion, limit, self.issued));
            }
        }
        let next = self.check_phases(now)?;
        Ok(total.map_or(next, |(_, dl)| next.min(dl)))
    }

    /// Notes when the capture is first filled. hyper-util fills it inside a
    /// poll of the inner future and wakes nobody, so [`ResponseFuture::poll`]
    /// asks right after every inner poll until it is: the instant is then
    /// when the request was handed to its connection, not a later timer
    /// tick. (A cheap check: the connection itself is read at the next timer
    /// check, if the request lasts that long.)
    fn note_hand_over(&mut self) {
        // Only an untracked connection's clocks start at the hand-over; a
        // direct capture's connection is always tracked (its own record
        // says when), so it needs no clock read.
        if self.handed.is_none()
            && self
                .capture()
                .is_some_and(|c| !c.is_direct() && c.is_filled())
        {
            self.handed = Some(Instant::now());
        }
    }

    /// Decided once, at the first poll that finds the request pending: a
    /// request already begun on a tracked HTTP/1 connection (the one-call
    /// client's, whose connection opens the attempt as the request is
    /// handed over) waits on that connection's timer, which carries this
    /// exchange alone; any other (still connecting, HTTP/2, untracked, or
    /// handed to hyper-util's connection task) makes its own.
    fn decide_timer(&mut self) {
        self.timer_decided = true;
        if let Some((state, _)) = self.capture().and_then(ConnectionCapture::begun) {
            if !state.is_http2() {
                self.timer = Some(state.clone());
            }
        }
    }

    /// Notes the request's connection if it has just become known (or, when
    /// tracked, changed after one of hyper-util's transparent retries), and
    /// returns what the capture says.
    ///
    /// An inner service that hides its connection
    /// ([`ConnectionCapture::is_hidden`]: reqwest, hyper's own connections)
    /// never fills the capture. There the body shows the connection: its
    /// first frame pulled, or its end. A body that was empty at the call
    /// shows nothing, so the request counts as handed over at the call:
    /// `read` then runs from the call (the rule in the module docs).
    fn observe(&mut self, now: Instant) -> Captured {
        let captured = self
            .capture()
            .map_or(Captured::Pending, ConnectionCapture::get);
        let id = match &captured {
            Captured::Tracked(state) => Some(state.id()),
            _ => None,
        };
        let moved = matches!((self.connected, id), (Some((_, Some(old))), Some(new)) if old != new);
        let revealed = self.assumed && !matches!(captured, Captured::Pending);
        if self.connected.is_none() || moved || revealed {
            self.assumed = false;
            let shown = self
                .last_frame()
                .or_else(|| self.progress.as_ref()?.body_end());
            self.connected = match (&captured, shown) {
                (Captured::Tracked(s), _) => Some(s.connected_at().max(self.issued)),
                (Captured::Untracked, _) => Some(self.handed.or(shown).unwrap_or(now)),
                (Captured::Pending, Some(shown)) => Some(shown),
                (Captured::Pending, None) => {
                    let hidden = self.progress.is_none()
                        && self.capture().is_some_and(ConnectionCapture::is_hidden);
                    self.assumed = hidden;
                    hidden.then_some(self.issued)
                }
            }
            .map(|at| (at, id));
        }
        captured
    }

    fn check_phases(&mut self, now: Instant) -> Result<Instant, Elapsed> {
        let never = far_future(now);
        if !self.limits.watches_connection() {
            return Ok(never);
        }
        let captured = self.observe(now);
        let tracked = match &captured {
            Captured::Tracked(state) => Some(state),
            _ => None,
        };
        // On HTTP/2 the socket carries every stream of the connection: its
        // progress says nothing about this request's, so a multiplexed
        // request is judged by its own body frames, like an untracked one.
        let socket = tracked.filter(|state| !state.is_http2());
        let last_frame = self.last_frame();
        let cadence = self.limits.cadence().unwrap_or(Duration::MAX);
        let Some((connected, _)) = self.connected else {
            // Still waiting for a connection: that is the connect phase,
            // bounded by `ConnectTimeout` and `total`, not by send or read.
            return Ok(deadline(now, cadence));
        };

        match self.upload_done(socket) {
            None => {
                let Some(limit) = self.limits.send else {
                    return Ok(deadline(now, cadence));
                };
                let socket = socket
                    .and_then(ConnectionState::last_write)
                    .filter(|w| *w >= self.issued);
                let last = [Some(connected), last_frame, socket]
                    .into_iter()
                    .flatten()
                    .max()
                    .unwrap_or(connected);
                if now.saturating_duration_since(last) >= limit {
                    return Err(self.elapsed(Phase::Send, Waiting::UploadProgress, limit, last));
                }
                // Come back when the stall could expire, or sooner to notice
                // the end of the upload and start the read clock.
                Ok(deadline(last, limit).min(deadline(now, cadence)))
            }
            Some(done) => {
                let Some(limit) = self.limits.read else {
                    return Ok(never);
                };
                let done = done.max(connected);
                if now.saturating_duration_since(done) >= limit {
                    return Err(self.elapsed(Phase::Read, Waiting::ResponseHead, limit, done));
                }
                Ok(deadline(done, limit))
            }
        }
    }

    /// When the whole request was on the wire, if it is: judged on the socket
    /// when `socket` is this request's own connection, otherwise when its body
    /// ended.
    fn upload_done(&self, socket: Option<&ConnectionState>) -> Option<Instant> {
        let body_end = self.body_end()?;
        let Some(state) = socket else {
            return Some(body_end);
        };
        // hyper flushes the IO only once its write buffer is empty: a flush
        // at or after the last write means every queued byte reached the
        // socket, and the body has ended, so nothing more is coming.
        let last_write = state.last_write()?;
        match state.last_flush() {
            Some(flush) if flush >= last_write => Some(last_write.max(body_end)),
            _ => None,
        }
    }

    fn wrap_response<B: http_body::Body>(
        &mut self,
        response: Response<B>,
    ) -> Response<ResponseBody<B>> {
        self.pending.disarm();
        let end = ExchangeEnd::for_request(
            self.capture(),
            &response,
            self.limits.read_stall.is_some() || self.limits.total.is_some(),
        );
        let sent = self.body_bytes();
        response.map(|body| {
            ResponseBody::new(
                body,
                self.limits.read_stall,
                self.limits.total,
                self.issued,
                sent,
                end,
            )
        })
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(phase) = this.watch.zero {
            // A zero limit is already spent: fail without trying, so the
            // outcome never depends on what happens to be ready.
            return Poll::Ready(Err(this.watch.zero_elapsed(phase).into()));
        }
        // The inner future first: a response ready at the deadline wins.
        if let Poll::Ready(result) = this.inner.poll(cx) {
            // Whatever happened, this future did not abandon the exchange.
            this.watch.pending.disarm();
            let response = result.map_err(Into::into)?;
            return Poll::Ready(Ok(this.watch.wrap_response(response)));
        }
        let watch = this.watch;
        if !watch.limits.any() {
            return Poll::Pending;
        }
        if watch.limits.watches_connection() {
            watch.note_hand_over();
        }
        if !watch.timer_decided {
            watch.decide_timer();
        }
        loop {
            match &watch.timer {
                Some(state) => ready!(state.poll_request_timer(watch.next, cx)),
                None => {
                    let Some(mut sleep) = this.sleep.as_mut().as_pin_mut() else {
                        this.sleep.set(Some(tokio::time::sleep_until(watch.next)));
                        continue;
                    };
                    if sleep.deadline() != watch.next {
                        sleep.as_mut().reset(watch.next);
                    }
                    ready!(sleep.poll(cx));
                }
            }
            match watch.check(Instant::now()) {
                Ok(next) => watch.next = next,
                Err(elapsed) => {
                    watch.pending.abandon();
                    return Poll::Ready(Err(elapsed.into()));
                }
            }
        }
    }
}
