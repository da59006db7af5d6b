//! Request and response bodies that report progress and enforce the read
//! stall and total limits.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::error::{Elapsed, Waiting};
use super::Phase;
use crate::clock::{deadline, far_future, Origin, Stamp};
use crate::track::{observe_frame, ConnectionCapture, ExchangeEnd};
use crate::BoxError;

/// Data frames larger than this are split (zero-copy for `Bytes`) so upload
/// progress stays visible while hyper writes them.
pub const MAX_FRAME: usize = 64 * 1024;

/// Upload progress of one request, shared by its body and its future.
#[derive(Debug)]
pub(crate) struct Progress {
    origin: Origin,
    last_frame: Stamp,
    body_end: Stamp,
    bytes: AtomicU64,
}

impl Progress {
    pub(crate) fn new(issued: Instant) -> Self {
        Progress {
            origin: Origin::new(issued),
            last_frame: Stamp::never(),
            body_end: Stamp::never(),
            bytes: AtomicU64::new(0),
        }
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

    fn frame(&self, len: usize, now: Instant) {
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.last_frame.set(&self.origin, now);
    }

    fn end(&self, at: Instant) {
        self.body_end.set(&self.origin, at);
    }
}

pin_project! {
    /// The request body [`PhaseTimeout`](super::PhaseTimeout) hands to the
    /// inner service: the caller's body, with data as [`Bytes`], frames larger
    /// than [`MAX_FRAME`] split into zero-copy pieces (for `Bytes` data), and
    /// upload progress recorded for the send limit.
    ///
    /// `size_hint` and `is_end_stream` are preserved, so `Content-Length`
    /// framing is unchanged.
    #[derive(Debug)]
    pub struct RequestBody<B: Body> {
        #[pin]
        inner: B,
        // The unsent part of a frame larger than `MAX_FRAME` (boxed: rare,
        // and the request, body included, is moved several times inside
        // hyper, so every byte of it costs on every request).
        rest: Option<Box<B::Data>>,
        upload: Upload,
    }
}

/// Where a request body reports its upload: the layer's progress record
/// and the tracker's attempt record. The upload ends at the first of: the
/// body reports its end, or the body is dropped (hyper drops a
/// `Content-Length` body as soon as it has written that many bytes, whether
/// or not the body ever reports its end; and drops any body whose request
/// failed).
///
/// Both are let go once the upload ended (which is how it is remembered).
#[derive(Debug)]
struct Upload {
    progress: Option<Arc<Progress>>,
    capture: Option<ConnectionCapture>,
}

impl Upload {
    fn end(&mut self, at: Instant) {
        if let Some(p) = self.progress.take() {
            p.end(at);
        }
        if let Some(c) = self.capture.take() {
            c.upload_ended();
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.progress.is_some() || self.capture.is_some() {
            self.end(Instant::now());
        }
    }
}

impl<B: Body> RequestBody<B> {
    /// The attempt's capture, until the upload has ended.
    pub(crate) fn capture(&self) -> Option<&ConnectionCapture> {
        self.upload.capture.as_ref()
    }

    /// Wraps a body without progress reporting (frames are still split).
    pub fn new(inner: B) -> Self {
        Self::tracked(inner, None, None)
    }

    /// A body that reports its upload to `progress` (the send limit) and
    /// announces its attempt through `capture` (the tracker).
    pub(crate) fn tracked(
        inner: B,
        progress: Option<Arc<Progress>>,
        capture: Option<ConnectionCapture>,
    ) -> Self {
        if let Some(c) = &capture {
            c.hook();
        }
        let mut upload = Upload { progress, capture };
        if inner.is_end_stream() {
            // hyper never polls an empty body: its upload is the request
            // head (the attempt learns it when it begins).
            if let Some(p) = &upload.progress {
                p.end(p.origin.instant());
            }
            upload.progress = None;
        }
        RequestBody {
            inner,
            rest: None,
            upload,
        }
    }
}

fn take_piece<D: Buf>(data: &mut D) -> Bytes {
    let n = data.remaining().min(MAX_FRAME);
    data.copy_to_bytes(n)
}

impl<B: Body> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = if let Some(rest) = this.rest.as_mut() {
            let piece = take_piece(rest);
            if !rest.has_remaining() {
                *this.rest = None;
            }
            Frame::data(piece)
        } else {
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        let piece = take_piece(&mut data);
                        if data.has_remaining() {
                            *this.rest = Some(Box::new(data));
                        }
                        Frame::data(piece)
                    }
                    Err(frame) => {
                        // Trailers (or an unknown frame): pass through as is.
                        let frame = frame.map_data(|mut d| d.copy_to_bytes(d.remaining()));
                        this.upload.end(Instant::now());
                        return Poll::Ready(Some(Ok(frame)));
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.upload.end(Instant::now());
                    return Poll::Ready(None);
                }
            }
        };
        let upload = this.upload;
        if upload.progress.is_some() || upload.capture.is_some() {
            let now = Instant::now();
            if let Some(p) = &upload.progress {
                p.frame(frame.data_ref().map_or(0, Buf::remaining), now);
            }
            if this.rest.is_none() && this.inner.is_end_stream() {
                upload.end(now);
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        let end = self.rest.is_none() && self.inner.is_end_stream();
        // hyper asks this on the connection's task right before it writes
        // the request head: the moment the attempt begins on the wire.
        if let Some(c) = &self.upload.capture {
            c.begin(end);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(rest) = &self.rest {
            let extra = rest.remaining() as u64;
            // The upper bound first: `set_lower` refuses a lower bound above
            // the current upper one.
            match hint.upper() {
                Some(upper) => {
                    let lower = hint.lower().saturating_add(extra);
                    let upper = upper.saturating_add(extra);
                    hint = SizeHint::new();
                    hint.set_upper(upper);
                    hint.set_lower(lower);
                }
                None => hint.set_lower(hint.lower().saturating_add(extra)),
            }
        }
        hint
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
    last_frame: Instant,
    issued: Instant,
    sent: u64,
    received: u64,
}

impl BodyTimers {
    /// Whether a limit is zero (already spent).
    fn has_zero(&self) -> bool {
        self.stall.is_some_and(|s| s.is_zero()) || self.total.is_some_and(|(t, _)| t.is_zero())
    }

    fn next_check(&self) -> Instant {
        let stall = self.stall.map_or_else(
            || far_future(self.last_frame),
            |s| deadline(self.last_frame, s),
        );
        self.total.map_or(stall, |(_, dl)| stall.min(dl))
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

    fn check(&self, now: Instant, end: &ExchangeEnd) -> Result<Instant, Elapsed> {
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
            let idle = now.saturating_duration_since(self.last_frame);
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
        Ok(self.next_check())
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
        // The stall clock starts now; without a stall limit no clock read.
        let last_frame = if stall.is_some() {
            Instant::now()
        } else {
            issued
        };
        let timers = BodyTimers {
            stall,
            total: total.map(|t| (t, deadline(issued, t))),
            last_frame,
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
                if let Err(elapsed) = timers.check(Instant::now(), this.end) {
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
                    if t.stall.is_some() {
                        t.last_frame = Instant::now();
                    }
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        let Some(timers) = this.timers.as_ref() else {
            return Poll::Pending;
        };
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(timers.next_check())));
        loop {
            ready!(sleep.as_mut().poll(cx));
            match timers.check(Instant::now(), this.end) {
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
