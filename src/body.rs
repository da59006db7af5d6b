//! The one request body type of the request plane: [`RequestBody`], and the
//! bound the layers put on the service below them ([`RequestBodyService`]).

use std::any::Any;
use std::fmt;
use std::mem;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes};
use http::Request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Empty, Full};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use crate::phase_timeout::body::Progress;
use crate::phase_timeout::MAX_FRAME;
use crate::retry::replay::{CannotReplay, Replay};
use crate::track::ConnectionCapture;
use crate::BoxError;

/// The request body every request-plane layer of this crate hands to the
/// service below it: what the inner hyper-util client is built for
/// (`Client<_, RequestBody>`), whatever layers are stacked above it.
///
/// [`PhaseTimeout`](crate::phase_timeout::PhaseTimeout) and
/// [`RetryOnStaleConnection`](crate::retry::RetryOnStaleConnection) take
/// requests with any body and turn it into a `RequestBody` with
/// [`RequestBody::new`]; a body that already is one is taken as it is, so
/// the layers stack in either order and the type never nests. Data is
/// [`Bytes`], errors are [`BoxError`]s; it is `Send + Sync + Unpin`.
///
/// * **Cheap-to-clone bodies are kept inline**, with no allocation:
///   `Full<Bytes>`, `Full<&'static [u8]>`, `Empty<Bytes>`, `String`, and
///   the [`From`] conversions (`Bytes`, `Vec<u8>`, `String`,
///   `&'static str`, `&'static [u8]`). The retry layer sends them again by
///   cloning, whatever their size.
/// * **Any other body is boxed**, its data turned into [`Bytes`] (no copy
///   when it is `Bytes` already; `copy_to_bytes` otherwise) and its error
///   into a [`BoxError`]. The retry layer replays it through a bounded
///   buffer (see [`retry`](crate::retry#request-bodies)).
///
/// The body is recognised by its exact type: one already type-erased
/// (`UnsyncBoxBody`, `BoxBody`, a wrapper of your own) is boxed, even if it
/// holds a `Full`; make that a `RequestBody` first (`RequestBody::new(full)`)
/// where the type is still known, to keep it inline.
///
/// Whatever the body, data frames larger than
/// [`MAX_FRAME`](crate::phase_timeout::MAX_FRAME) are split into zero-copy
/// pieces so that upload progress stays visible while hyper writes them,
/// and `size_hint` and `is_end_stream` are the caller's body's (so
/// `Content-Length` framing is unchanged).
///
/// Under `PhaseTimeout` the body also reports its upload (for the `send`
/// limit, and to the connection tracker: see
/// [`track`](crate::track)); under the retry layer a streamed body keeps
/// what it sent for a replay. Both modes live on the same value, in either
/// stacking order. A `RequestBody` is four words (inline data, or one box
/// for a streamed body or one that reports its upload), so that the
/// request around it stays cheap to move.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{channel::Channel, Full};
/// use tower_conn_lifecycle::RequestBody;
///
/// // Kept inline, replayed by clone.
/// let small = RequestBody::new(Full::new(Bytes::from_static(b"{}")));
/// assert!(small.is_replayable());
/// // Boxed: replayable only through the retry layer's buffer.
/// let (_tx, chunks) = Channel::<Bytes>::new(8);
/// let streamed = RequestBody::new(chunks);
/// assert!(!streamed.is_replayable());
/// // Wrapping again changes nothing.
/// let same = RequestBody::new(small);
/// assert!(same.is_replayable());
/// ```
pub struct RequestBody {
    // One word of tag and pointer plus a `Bytes`: 32 bytes, so that an
    // `http::Request<RequestBody>` (224 bytes of parts) stays within the
    // 256 bytes that `memcpy` moves without a loop; hyper and the layers
    // move the request many times.
    kind: Kind,
}

/// How a body is kept.
enum Kind {
    /// Cheap-to-clone data not yet sent (empty: the body has ended),
    /// unobserved; pieces are split off it in place.
    Inline(Bytes),
    /// Anything else.
    Other(Other),
}

/// The bodies that are not plain inline data (an enum of their own, so that
/// `Kind` keeps to four words: `Bytes` has room for one tag value only).
enum Other {
    /// A streamed body, or a body that reports its upload.
    Heavy(Box<Heavy>),
    /// An empty body that only announces its attempt (a bodiless request
    /// under `PhaseTimeout`, which needs no progress record): no box.
    Announced(Announced),
}

/// The attempt's capture of an empty body: its upload is the request
/// head, and ends (for the tracker) when hyper drops the body, as a
/// [`Heavy`] body's [`Upload`] does.
struct Announced(Option<ConnectionCapture>);

impl Announced {
    /// The capture, without ending the upload.
    fn take(&mut self) -> Option<ConnectionCapture> {
        self.0.take()
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.upload_ended();
        }
    }
}

struct Heavy {
    source: Source,
    /// The unsent part of a streamed frame larger than `MAX_FRAME`.
    rest: Option<Bytes>,
    upload: Upload,
}

/// The caller's body, type-erased.
pub(crate) type BoxedBody = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>;

enum Source {
    /// Cheap-to-clone data not yet sent (as [`Kind::Inline`]).
    Inline(Bytes),
    /// The caller's body. The mutex only makes `RequestBody` `Sync` (which
    /// reqwest needs) without asking the caller's body to be: frames are
    /// pulled through `get_mut`, with no locking.
    Boxed(Mutex<BoxedBody>),
    /// A handle on the retry layer's replay buffer.
    Replay(Replay),
    /// A copy of a streamed body made outside the replay buffer: it cannot
    /// be sent.
    Spent,
}

/// Where a request body reports its upload: `PhaseTimeout`'s progress
/// record and the tracker's attempt record. The upload ends at the first
/// of: the body reports its end, or the body is dropped (hyper drops a
/// `Content-Length` body as soon as it has written that many bytes, whether
/// or not the body ever reports its end; and drops any body whose request
/// failed). Both are let go once the upload ended (which is how it is
/// remembered).
#[derive(Debug)]
struct Upload {
    progress: Option<Arc<Progress>>,
    capture: Option<ConnectionCapture>,
    /// The progress record's generation this body reports about.
    generation: u32,
    /// A copy kept by the retry layer for a later attempt, under
    /// `PhaseTimeout` (the layer above it): it reports nothing until that
    /// attempt starts ([`RequestBody::next_attempt`]).
    dormant: bool,
}

impl Upload {
    const NONE: Upload = Upload {
        progress: None,
        capture: None,
        generation: 0,
        dormant: false,
    };

    fn is_live(&self) -> bool {
        !self.dormant && (self.progress.is_some() || self.capture.is_some())
    }

    fn end(&mut self, at: Instant) {
        if self.dormant {
            return;
        }
        if let Some(p) = self.progress.take() {
            p.end(self.generation, at);
        }
        if let Some(c) = self.capture.take() {
            c.upload_ended();
        }
    }

    fn frame(&self, len: usize, now: Instant) {
        if let Some(p) = &self.progress {
            p.frame(self.generation, len, now);
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.is_live() {
            self.end(Instant::now());
        }
    }
}

/// Takes the body out of `slot` if it is a `T`.
fn take<T: 'static, B: 'static>(slot: &mut Option<B>) -> Option<T> {
    (slot as &mut dyn Any).downcast_mut::<Option<T>>()?.take()
}

/// The data of a `Full` (it is always ready: one poll, no waker needed).
fn data_of<D: Buf + Unpin>(mut full: Full<D>) -> Bytes {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut full).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame
            .into_data()
            .map(|mut d| d.copy_to_bytes(d.remaining()))
            .unwrap_or_default(),
        _ => Bytes::new(),
    }
}

pin_project! {
    /// The caller's body with `Bytes` data and boxed errors.
    struct Mapped<B> {
        #[pin]
        inner: B,
    }
}

impl<B> Body for Mapped<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(match ready!(self.project().inner.poll_frame(cx)) {
            Some(Ok(frame)) => Some(Ok(frame.map_data(|mut d| d.copy_to_bytes(d.remaining())))),
            Some(Err(e)) => Some(Err(e.into())),
            None => None,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl RequestBody {
    /// Turns any body into a `RequestBody`: a `RequestBody` as it is, the
    /// cheap-to-clone bodies inline, anything else boxed (see the
    /// [type docs](Self)).
    pub fn new<B>(body: B) -> Self
    where
        B: Body + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut slot = Some(body);
        if let Some(body) = take::<RequestBody, B>(&mut slot) {
            return body;
        }
        if let Some(full) = take::<Full<Bytes>, B>(&mut slot) {
            return Self::inline(data_of(full));
        }
        if let Some(full) = take::<Full<&'static [u8]>, B>(&mut slot) {
            return Self::inline(data_of(full));
        }
        if take::<Empty<Bytes>, B>(&mut slot).is_some() {
            return Self::default();
        }
        if let Some(text) = take::<String, B>(&mut slot) {
            return Self::from(text);
        }
        match slot {
            Some(body) => Self::boxed(Box::pin(Mapped { inner: body })),
            None => Self::default(),
        }
    }

    fn inline(data: Bytes) -> Self {
        RequestBody {
            kind: Kind::Inline(data),
        }
    }

    fn boxed(body: BoxedBody) -> Self {
        RequestBody {
            kind: Kind::Other(Other::Heavy(Box::new(Heavy {
                source: Source::Boxed(Mutex::new(body)),
                rest: None,
                upload: Upload::NONE,
            }))),
        }
    }

    fn heavy(&self) -> Option<&Heavy> {
        match &self.kind {
            Kind::Other(Other::Heavy(heavy)) => Some(heavy),
            Kind::Inline(_) | Kind::Other(Other::Announced(_)) => None,
        }
    }

    /// Whether the retry layer can send this body again from its start: an
    /// inline body always (by cloning); a streamed one while it is in the
    /// retry layer's replay buffer and nothing of it went past the buffer's
    /// limit, and it has not failed. A streamed body outside the retry
    /// layer is not.
    pub fn is_replayable(&self) -> bool {
        match self.heavy().map(|h| &h.source) {
            None | Some(Source::Inline(_)) => true,
            Some(Source::Replay(replay)) => replay.is_replayable(),
            Some(Source::Boxed(_) | Source::Spent) => false,
        }
    }

    /// The replay buffer's limit, when a streamed body went past it (for
    /// the retry layer's refusal).
    pub(crate) fn overflowed_limit(&self) -> Option<usize> {
        match self.heavy().map(|h| &h.source) {
            Some(Source::Replay(replay)) => replay.overflowed_limit(),
            _ => None,
        }
    }

    /// Whether the body has nothing (more) to send, by its end or an exact
    /// size hint of 0. Unlike `is_end_stream`, it never announces the
    /// attempt: for the layers' decisions before the request is sent.
    pub(crate) fn is_empty(&self) -> bool {
        self.ends_now() || self.size_hint().exact() == Some(0)
    }

    #[inline]
    fn ends_now(&self) -> bool {
        match &self.kind {
            Kind::Inline(data) => data.is_empty(),
            Kind::Other(Other::Heavy(heavy)) => heavy.ends_now(),
            Kind::Other(Other::Announced(_)) => true,
        }
    }

    /// The attempt's capture, until the upload has ended.
    #[inline]
    pub(crate) fn capture(&self) -> Option<&ConnectionCapture> {
        if let Kind::Other(Other::Announced(announced)) = &self.kind {
            return announced.0.as_ref();
        }
        let upload = &self.heavy()?.upload;
        if upload.dormant {
            return None;
        }
        upload.capture.as_ref()
    }

    /// Progress observation (`PhaseTimeout`): the body reports its upload
    /// to `progress` (the send limit) and announces its attempt through
    /// `capture` (the tracker). A body observed already (two `PhaseTimeout`
    /// layers) reports to the earlier record through the new one.
    pub(crate) fn observe(
        &mut self,
        progress: Option<Arc<Progress>>,
        capture: Option<ConnectionCapture>,
    ) {
        if let Some(c) = &capture {
            c.hook();
        }
        let generation = progress.as_ref().map_or(0, |p| p.generation());
        let mut upload = Upload {
            progress,
            capture,
            generation,
            dormant: false,
        };
        if let Kind::Other(Other::Announced(announced)) = &mut self.kind {
            // Observed again (a second `PhaseTimeout`): as a boxed empty
            // body, whose upload the new record takes over.
            let earlier = Upload {
                progress: None,
                capture: announced.take(),
                generation: 0,
                dormant: false,
            };
            self.kind = Kind::Other(Other::Heavy(Box::new(Heavy {
                source: Source::Inline(Bytes::new()),
                rest: None,
                upload: earlier,
            })));
        }
        let heavy = match &mut self.kind {
            Kind::Other(Other::Announced(_)) => unreachable!("boxed above"),
            Kind::Inline(data) => {
                if !upload.is_live() {
                    return;
                }
                if data.is_empty() && upload.progress.is_none() {
                    // Only the attempt to announce: no box.
                    self.kind = Kind::Other(Other::Announced(Announced(upload.capture.take())));
                    return;
                }
                if data.is_empty() {
                    // hyper never polls an empty body: its upload is the
                    // request head (the attempt learns it when it begins).
                    if let Some(p) = upload.progress.take() {
                        p.end(generation, p.issued());
                    }
                }
                let source = Source::Inline(mem::take(data));
                self.kind = Kind::Other(Other::Heavy(Box::new(Heavy {
                    source,
                    rest: None,
                    upload,
                })));
                return;
            }
            Kind::Other(Other::Heavy(heavy)) => heavy,
        };
        if let (Some(new), Some(old)) = (&upload.progress, &heavy.upload.progress) {
            new.report_to(Arc::clone(old));
        }
        let mut earlier = mem::replace(&mut heavy.upload, upload);
        // Reported through the new record (or replaced by it): it must not
        // end anything when dropped.
        earlier.dormant = true;
        drop(earlier);
        if heavy.ends_now() {
            if let Some(p) = heavy.upload.progress.take() {
                p.end(heavy.upload.generation, p.issued());
            }
        }
    }

    /// Replay mode (the retry layer): a streamed body goes through a replay
    /// buffer keeping up to `limit` bytes; an inline one needs none.
    pub(crate) fn make_replayable(&mut self, limit: usize) {
        let Kind::Other(Other::Heavy(heavy)) = &mut self.kind else {
            return;
        };
        if heavy.rest.is_some() {
            // Partly read already: what was read cannot be replayed.
            return;
        }
        heavy.source = match mem::replace(&mut heavy.source, Source::Spent) {
            Source::Boxed(body) => Source::Replay(Replay::new(
                body.into_inner().unwrap_or_else(PoisonError::into_inner),
                limit,
            )),
            other => other,
        };
    }

    /// A copy of this body, not yet sent, for a later attempt: inline data
    /// cloned, a replay handle that starts from the beginning (a streamed
    /// body outside the replay buffer cannot be copied: its copy is not
    /// replayable). The copy's progress observation, if the body has one
    /// (`PhaseTimeout` above the retry layer), waits for
    /// [`next_attempt`](Self::next_attempt).
    pub(crate) fn retry_copy(&self) -> RequestBody {
        let heavy = match &self.kind {
            Kind::Inline(data) => return Self::inline(data.clone()),
            Kind::Other(Other::Heavy(heavy)) => heavy,
            // Observed (`PhaseTimeout` above the retry layer): as the boxed
            // empty body it stands for, the copy waits for its attempt.
            Kind::Other(Other::Announced(_)) => {
                return RequestBody {
                    kind: Kind::Other(Other::Heavy(Box::new(Heavy {
                        source: Source::Inline(Bytes::new()),
                        rest: None,
                        upload: Upload {
                            progress: None,
                            capture: None,
                            generation: 0,
                            dormant: true,
                        },
                    }))),
                }
            }
        };
        let upload = &heavy.upload;
        let observed = upload.dormant || upload.progress.is_some() || upload.capture.is_some();
        let source = match &heavy.source {
            Source::Inline(data) if !observed => return Self::inline(data.clone()),
            Source::Inline(data) => Source::Inline(data.clone()),
            Source::Replay(replay) => Source::Replay(replay.clone()),
            Source::Boxed(_) | Source::Spent => Source::Spent,
        };
        RequestBody {
            kind: Kind::Other(Other::Heavy(Box::new(Heavy {
                source,
                rest: None,
                upload: Upload {
                    progress: upload.progress.clone(),
                    capture: None,
                    generation: upload.generation,
                    dormant: observed,
                },
            }))),
        }
    }

    /// The retry layer sends this copy as the next attempt, with that
    /// attempt's `capture`: under `PhaseTimeout` (above the retry layer)
    /// the copy's upload now reports to its progress record, which starts
    /// over, and announces the new attempt.
    pub(crate) fn next_attempt(&mut self, capture: Option<&ConnectionCapture>) {
        let Kind::Other(Other::Heavy(heavy)) = &mut self.kind else {
            return;
        };
        let upload = &mut heavy.upload;
        if !upload.dormant {
            return;
        }
        upload.dormant = false;
        if let Some(p) = &upload.progress {
            // An earlier attempt's body, dropped later, reports about an
            // older generation: ignored.
            upload.generation = p.restart();
        }
        upload.capture = capture.cloned();
        if let Some(c) = &upload.capture {
            c.hook();
        }
        if heavy.ends_now() {
            if let Some(p) = heavy.upload.progress.take() {
                p.end(heavy.upload.generation, Instant::now());
            }
        }
    }

    /// The replay buffer's bytes and frames kept (tests).
    #[cfg(test)]
    pub(crate) fn replay_buffered(&self) -> Option<(usize, usize)> {
        match self.heavy().map(|h| &h.source) {
            Some(Source::Replay(replay)) => Some(replay.buffered()),
            _ => None,
        }
    }

    /// Whether the body is an empty one that only announces its attempt
    /// (tests).
    #[cfg(test)]
    pub(crate) fn is_announced_only(&self) -> bool {
        matches!(self.kind, Kind::Other(Other::Announced(_)))
    }

    /// How the body is kept (tests).
    #[cfg(test)]
    pub(crate) fn kind_name(&self) -> &'static str {
        match self.heavy().map(|h| &h.source) {
            None | Some(Source::Inline(_)) => "inline",
            Some(Source::Boxed(_)) => "boxed",
            Some(Source::Replay(_)) => "replay",
            Some(Source::Spent) => "spent",
        }
    }
}

fn take_piece(data: &mut Bytes) -> Bytes {
    if data.len() > MAX_FRAME {
        data.split_to(MAX_FRAME)
    } else {
        mem::take(data)
    }
}

impl Source {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            Source::Inline(data) if data.is_empty() => Poll::Ready(None),
            Source::Inline(data) => Poll::Ready(Some(Ok(Frame::data(mem::take(data))))),
            Source::Boxed(body) => body
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
                .poll_frame(cx),
            Source::Replay(replay) => replay.poll_frame(cx),
            Source::Spent => Poll::Ready(Some(Err(Box::new(CannotReplay::NotBuffered)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Inline(data) => data.is_empty(),
            Source::Boxed(body) => body
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_end_stream(),
            Source::Replay(replay) => replay.is_end_stream(),
            Source::Spent => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Inline(data) => SizeHint::with_exact(data.len() as u64),
            Source::Boxed(body) => body
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .size_hint(),
            Source::Replay(replay) => replay.size_hint(),
            Source::Spent => SizeHint::default(),
        }
    }
}

impl Heavy {
    #[inline]
    fn ends_now(&self) -> bool {
        self.rest.is_none()
            && match &self.source {
                Source::Inline(data) => data.is_empty(),
                source => source.is_end_stream(),
            }
    }

    /// The next piece: of the rest of a large frame, or of the next frame
    /// (split if larger than `MAX_FRAME`).
    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(rest) = self.rest.as_mut() {
            let piece = take_piece(rest);
            if rest.is_empty() {
                self.rest = None;
            }
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        let frame = match ready!(self.source.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        Poll::Ready(Some(Ok(match frame.into_data() {
            Ok(mut data) => {
                let piece = take_piece(&mut data);
                if !data.is_empty() {
                    self.rest = Some(data);
                }
                Frame::data(piece)
            }
            // Trailers (or an unknown frame): passed on as they are.
            Err(frame) => frame,
        })))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match ready!(self.poll_piece(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            None => {
                self.upload.end(Instant::now());
                return Poll::Ready(None);
            }
        };
        if self.upload.is_live() {
            let now = Instant::now();
            match frame.data_ref() {
                Some(data) => {
                    self.upload.frame(data.len(), now);
                    if self.ends_now() {
                        self.upload.end(now);
                    }
                }
                // Trailers end the body.
                None => self.upload.end(now),
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.source.size_hint();
        if let Some(rest) = &self.rest {
            let extra = rest.len() as u64;
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

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Inline(data) if data.is_empty() => Poll::Ready(None),
            Kind::Inline(data) => Poll::Ready(Some(Ok(Frame::data(take_piece(data))))),
            Kind::Other(Other::Heavy(heavy)) => heavy.poll_frame(cx),
            Kind::Other(Other::Announced(_)) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self.ends_now();
        // hyper asks this on the connection's task right before it writes
        // the request head: the moment the attempt begins on the wire.
        if let Some(c) = self.capture() {
            c.begin(end);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inline(data) => SizeHint::with_exact(data.len() as u64),
            Kind::Other(Other::Heavy(heavy)) => heavy.size_hint(),
            Kind::Other(Other::Announced(_)) => SizeHint::with_exact(0),
        }
    }
}

impl Default for RequestBody {
    /// An empty body.
    fn default() -> Self {
        Self::inline(Bytes::new())
    }
}

impl From<Bytes> for RequestBody {
    fn from(data: Bytes) -> Self {
        Self::inline(data)
    }
}

impl From<Vec<u8>> for RequestBody {
    fn from(data: Vec<u8>) -> Self {
        Self::inline(Bytes::from(data))
    }
}

impl From<String> for RequestBody {
    fn from(text: String) -> Self {
        Self::inline(Bytes::from(text))
    }
}

impl From<&'static str> for RequestBody {
    fn from(text: &'static str) -> Self {
        Self::inline(Bytes::from_static(text.as_bytes()))
    }
}

impl From<&'static [u8]> for RequestBody {
    fn from(data: &'static [u8]) -> Self {
        Self::inline(Bytes::from_static(data))
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RequestBody");
        match self.heavy() {
            None => d.field("inline", &self.size_hint().lower()),
            Some(heavy) => match &heavy.source {
                Source::Inline(data) => d.field("inline", &data.len()),
                Source::Replay(replay) => d.field("replay", replay),
                Source::Boxed(_) | Source::Spent => d.field("streamed", &true),
            },
        };
        let observed = matches!(self.kind, Kind::Other(Other::Announced(_)))
            || self.heavy().is_some_and(|h| h.upload.is_live());
        d.field("observed", &observed).finish()
    }
}

/// The bound [`PhaseTimeout`](crate::phase_timeout::PhaseTimeout) and
/// [`RetryOnStaleConnection`](crate::retry::RetryOnStaleConnection) put on
/// the service below them: it takes `http::Request<RequestBody>`.
///
/// Implemented for every such service (hyper-util's
/// `Client<_, RequestBody>`, this crate's request-plane layers over one,
/// `ReqwestService`, …); it exists so that a stack built with the wrong
/// body type, or in the wrong order, fails where the layer is applied with
/// a message that names the fix:
///
/// ```compile_fail,E0277
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::{connect::HttpConnector, Client};
/// use hyper_util::rt::TokioExecutor;
/// use tower::ServiceBuilder;
/// use tower_conn_lifecycle::phase_timeout::PhaseTimeoutLayer;
///
/// // The inner client must be built for `RequestBody`, not `Full<Bytes>`.
/// let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(HttpConnector::new());
/// let client = ServiceBuilder::new().layer(PhaseTimeoutLayer::new()).service(client);
/// ```
///
/// rustc 1.95 then says (abridged: the candidate impls and the chain of
/// "required for" notes left out):
///
/// ```text
/// error[E0277]: `hyper_util::client::legacy::Client<HttpConnector, http_body_util::Full<bytes::Bytes>>` cannot be the service below PhaseTimeout or RetryOnStaleConnection: it must take `http::Request<tower_conn_lifecycle::RequestBody>`
///    |
///    |     let client = ServiceBuilder::new().layer(PhaseTimeoutLayer::new()).service(client);
///    |                                                                        ^^^^^^^ this service does not take `http::Request<tower_conn_lifecycle::RequestBody>`
///    |
///    = help: the trait `Service<http::request::Request<RequestBody>>` is not implemented for `hyper_util::client::legacy::Client<HttpConnector, http_body_util::Full<bytes::Bytes>>`
///    = note: build the inner hyper-util client for the crate's body: `Client::builder(..).build::<_, tower_conn_lifecycle::RequestBody>(connector)`; the layers above it take any body
///    = note: stack by hand in this order: RetryOnStaleConnectionLayer, PhaseTimeoutLayer, IdleExpiryLayer, then the client; ConnectTimeoutLayer and TrackConnectionsLayer go on the client's connector (crate docs, "Layer by layer")
/// ```
///
/// A connector where the client belongs (`.layer(PhaseTimeoutLayer::new())`
/// on the connector's `ServiceBuilder`) gets the same message, naming
/// `HttpConnector`. With [`IdleExpiry`](crate::idle_expiry::IdleExpiry)
/// (which takes any body) between the layer and a mistyped client, rustc
/// reports the client's missing
/// `Service<http::request::Request<RequestBody>>` itself, with a note that
/// it is "required for `IdleExpiry<Client<..>>` to implement
/// `RequestBodyService`".
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the service below PhaseTimeout or RetryOnStaleConnection: it must take `http::Request<tower_conn_lifecycle::RequestBody>`",
    label = "this service does not take `http::Request<tower_conn_lifecycle::RequestBody>`",
    note = "build the inner hyper-util client for the crate's body: `Client::builder(..).build::<_, tower_conn_lifecycle::RequestBody>(connector)`; the layers above it take any body",
    note = "stack by hand in this order: RetryOnStaleConnectionLayer, PhaseTimeoutLayer, IdleExpiryLayer, then the client; ConnectTimeoutLayer and TrackConnectionsLayer go on the client's connector (crate docs, \"Layer by layer\")"
)]
pub trait RequestBodyService: Service<Request<RequestBody>> {}

impl<S> RequestBodyService for S where S: Service<Request<RequestBody>> + ?Sized {}

#[cfg(test)]
mod tests;
