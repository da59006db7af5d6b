//! The bounded replay buffer behind a streamed [`RequestBody`](crate::RequestBody)
//! under the retry layer.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::body::BoxedBody;
use crate::BoxError;

/// The default replay buffer limit: 64 KiB of request body.
pub const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;

/// A handle on a streamed request body that can be sent again: the replay
/// mode of [`RequestBody`](crate::RequestBody).
///
/// The first attempt streams the caller's body through, keeping each frame
/// it passes on (up to the limit) in a buffer shared with the clones made
/// for later attempts. A clone replays the body **from its start**: the
/// buffered frames, then whatever the caller's body has not yielded yet.
///
/// * **At most one copy.** Data is kept as [`Bytes`]: when the caller's
///   body yields `Bytes`, the buffer and every replay share its memory (no
///   copy at all); any other [`Buf`] is copied once, into the `Bytes` that
///   is both sent and kept.
/// * **Bounded.** Once the data would exceed the limit, the buffer is freed
///   and the attempt that read past it goes on unbuffered; the body is then
///   no longer replayable ([`is_replayable`](Self::is_replayable)) and the
///   request is not retried. A body nothing has been read from yet is
///   always replayable, whatever its size (a refusal before the first byte
///   costs no buffering).
/// * Trailers are kept too; a body that failed cannot be replayed.
///
/// Attempts are meant to run one after another. If two clones are polled
/// at the same time, the one that reads past the limit wins and the other
/// fails with an error; while both wait for the caller's body, only the
/// last to poll is woken.
pub(crate) struct Replay {
    shared: Arc<Mutex<Shared>>,
    /// Buffered frames this handle has returned.
    pos: usize,
    /// This handle read past the limit: it alone goes on, unbuffered.
    sole: bool,
    /// Data bytes this handle has returned (for `size_hint`).
    sent: u64,
    /// The caller's body as it was wrapped.
    hint: SizeHint,
    empty: bool,
}

struct Shared {
    /// The caller's body, until it ends or fails.
    body: Option<BoxedBody>,
    frames: Vec<Kept>,
    buffered: usize,
    limit: usize,
    ended: bool,
    overflowed: bool,
    failed: bool,
}

enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Kept {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Kept::Data(data) => Frame::data(data.clone()),
            Kept::Trailers(trailers) => Frame::trailers(trailers.clone()),
        }
    }
}

impl Shared {
    fn release(&mut self) {
        self.frames = Vec::new();
        self.buffered = 0;
    }
}

impl Replay {
    /// Wraps `body`, keeping at most `limit` bytes of data for replays.
    pub(crate) fn new(body: BoxedBody, limit: usize) -> Self {
        let hint = body.size_hint();
        let empty = body.is_end_stream();
        Replay {
            shared: Arc::new(Mutex::new(Shared {
                body: Some(body),
                frames: Vec::new(),
                buffered: 0,
                limit,
                ended: false,
                overflowed: false,
                failed: false,
            })),
            pos: 0,
            sole: false,
            sent: 0,
            hint,
            empty,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a clone of this body can still send the whole body: nothing
    /// went past the limit and the caller's body has not failed.
    pub(crate) fn is_replayable(&self) -> bool {
        let shared = self.lock();
        !shared.overflowed && !shared.failed
    }

    /// The bytes and frames kept (tests).
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> (usize, usize) {
        let shared = self.lock();
        (shared.buffered, shared.frames.len())
    }

    /// The limit, if the body went past it.
    pub(crate) fn overflowed_limit(&self) -> Option<usize> {
        let shared = self.lock();
        shared.overflowed.then_some(shared.limit)
    }
}

impl Clone for Replay {
    /// A handle that replays the body from its start.
    fn clone(&self) -> Self {
        Replay {
            shared: Arc::clone(&self.shared),
            pos: 0,
            sole: false,
            sent: 0,
            hint: self.hint,
            empty: self.empty,
        }
    }
}

/// A copy of a request body was polled that cannot send it.
#[derive(Debug)]
pub(crate) enum CannotReplay {
    /// The body went past the replay buffer's limit.
    Overflowed(usize),
    /// The caller's body failed on an earlier attempt.
    Failed,
    /// A streamed body copied outside the replay buffer.
    NotBuffered,
}

impl fmt::Display for CannotReplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CannotReplay::Overflowed(limit) => write!(
                f,
                "request body cannot be replayed: it went past the {limit}-byte replay buffer"
            ),
            CannotReplay::Failed => {
                f.write_str("request body cannot be replayed: it failed on an earlier attempt")
            }
            CannotReplay::NotBuffered => {
                f.write_str("request body cannot be replayed: it was not kept in a replay buffer")
            }
        }
    }
}

impl std::error::Error for CannotReplay {}

impl Replay {
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self;
        let shared = Arc::clone(&this.shared);
        let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
        if !this.sole {
            if shared.overflowed {
                let limit = shared.limit;
                return Poll::Ready(Some(Err(Box::new(CannotReplay::Overflowed(limit)))));
            }
            if shared.failed {
                return Poll::Ready(Some(Err(Box::new(CannotReplay::Failed))));
            }
            if let Some(kept) = shared.frames.get(this.pos) {
                this.pos += 1;
                let frame = kept.frame();
                this.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
                return Poll::Ready(Some(Ok(frame)));
            }
        }
        let Some(body) = shared.body.as_mut() else {
            // Ended (a failed body has been reported above, or to the sole
            // reader when it failed).
            return Poll::Ready(None);
        };
        let frame = match ready!(body.as_mut().poll_frame(cx)) {
            None => {
                shared.ended = true;
                shared.body = None;
                return Poll::Ready(None);
            }
            Some(Err(e)) => {
                shared.failed = true;
                shared.body = None;
                shared.release();
                return Poll::Ready(Some(Err(e)));
            }
            Some(Ok(frame)) => frame,
        };
        if !this.sole {
            let kept = match (frame.data_ref(), frame.trailers_ref()) {
                (Some(data), _) => {
                    let buffered = shared.buffered.saturating_add(data.len());
                    if buffered > shared.limit {
                        shared.overflowed = true;
                        shared.release();
                        this.sole = true;
                        None
                    } else {
                        shared.buffered = buffered;
                        Some(Kept::Data(data.clone()))
                    }
                }
                (None, Some(trailers)) => Some(Kept::Trailers(trailers.clone())),
                (None, None) => None,
            };
            if let Some(kept) = kept {
                shared.frames.push(kept);
                this.pos += 1;
            }
        }
        this.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
        Poll::Ready(Some(Ok(frame)))
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        if self.empty {
            return true;
        }
        let shared = self.lock();
        let source_done = shared.ended || shared.body.as_ref().is_some_and(|b| b.is_end_stream());
        if self.sole {
            return source_done;
        }
        !shared.overflowed && !shared.failed && source_done && self.pos >= shared.frames.len()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        let mut hint = SizeHint::new();
        if let Some(upper) = self.hint.upper() {
            hint.set_upper(upper.saturating_sub(self.sent));
        }
        hint.set_lower(self.hint.lower().saturating_sub(self.sent));
        hint
    }
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.lock();
        f.debug_struct("Replay")
            .field("limit", &shared.limit)
            .field("buffered", &shared.buffered)
            .field("replayable", &(!shared.overflowed && !shared.failed))
            .field("pos", &self.pos)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use std::pin::Pin;

    use bytes::Buf;
    use http_body_util::{BodyExt, Full};

    use super::*;
    use crate::RequestBody;

    /// `body` in replay mode, keeping up to `limit` bytes.
    fn replaying<B>(body: B, limit: usize) -> RequestBody
    where
        B: Body + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut body = RequestBody::new(body);
        body.make_replayable(limit);
        body
    }

    /// `B` as a body `RequestBody::new` does not recognise (boxed, not
    /// inline).
    struct Opaque<B>(B);

    impl<B: Body + Unpin> Body for Opaque<B> {
        type Data = B::Data;
        type Error = B::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
            Pin::new(&mut self.0).poll_frame(cx)
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_end_stream()
        }

        fn size_hint(&self) -> SizeHint {
            self.0.size_hint()
        }
    }

    /// A body that yields prepared frames, each ready at once.
    struct Frames<D>(VecDeque<Result<Frame<D>, BoxError>>);

    impl<D: Buf + Unpin> Body for Frames<D> {
        type Data = D;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<D>, BoxError>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn stream_of<D: Buf>(frames: Vec<Result<Frame<D>, BoxError>>) -> Frames<D> {
        Frames(frames.into())
    }

    fn data(n: usize, byte: u8) -> Result<Frame<Bytes>, BoxError> {
        Ok(Frame::data(Bytes::from(vec![byte; n])))
    }

    async fn collect<B>(body: B) -> Result<(Vec<Bytes>, Option<HeaderMap>), BoxError>
    where
        B: Body<Data = Bytes, Error = BoxError> + Unpin,
    {
        let mut body = body;
        let mut chunks = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            match frame.into_data() {
                Ok(d) => chunks.push(d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        Ok((chunks, trailers))
    }

    #[tokio::test]
    async fn replays_data_and_trailers_from_the_start() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "42".parse().unwrap());
        let body = stream_of(vec![
            data(10, 1),
            data(20, 2),
            Ok(Frame::trailers(trailers.clone())),
        ]);
        let first = replaying(body, 100);
        let second = first.retry_copy();
        let (chunks, t) = collect(first).await.unwrap();
        assert_eq!(chunks.iter().map(Bytes::len).collect::<Vec<_>>(), [10, 20]);
        assert_eq!(t.as_ref(), Some(&trailers));
        assert!(second.is_replayable());
        let (again, t) = collect(second).await.unwrap();
        assert_eq!(again, chunks);
        assert_eq!(t, Some(trailers));
    }

    #[tokio::test]
    async fn a_partly_read_body_replays_its_buffer_then_continues() {
        let body = stream_of(vec![data(5, 1), data(5, 2), data(5, 3)]);
        let mut first = replaying(body, 100);
        let second = first.retry_copy();
        // The first attempt fails after one frame.
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), Bytes::from(vec![1; 5]));
        drop(first);
        let (chunks, _) = collect(second.retry_copy()).await.unwrap();
        assert_eq!(chunks.concat(), [[1u8; 5], [2; 5], [3; 5]].concat());
        // And a third attempt still gets all of it.
        let (chunks, _) = collect(second).await.unwrap();
        assert_eq!(chunks.len(), 3);
    }

    #[tokio::test]
    async fn bytes_data_is_never_copied() {
        // 64 KiB in 16 KiB frames: the bytes sent first, the bytes kept and
        // the bytes replayed are the same memory.
        let originals: Vec<Bytes> = (0..4).map(|i| Bytes::from(vec![i; 16 * 1024])).collect();
        let frames = originals
            .iter()
            .map(|b| Ok(Frame::data(b.clone())))
            .collect();
        let first = replaying(stream_of(frames), DEFAULT_REPLAY_LIMIT);
        let second = first.retry_copy();
        let (sent, _) = collect(first).await.unwrap();
        let (replayed, _) = collect(second).await.unwrap();
        for ((o, s), r) in originals.iter().zip(&sent).zip(&replayed) {
            assert_eq!(o.as_ptr(), s.as_ptr());
            assert_eq!(o.as_ptr(), r.as_ptr());
        }
    }

    /// A `Buf` that is not `Bytes` and counts every byte taken out of it.
    struct Counted {
        data: VecDeque<u8>,
        taken: Arc<AtomicUsize>,
    }

    impl Buf for Counted {
        fn remaining(&self) -> usize {
            self.data.len()
        }
        fn chunk(&self) -> &[u8] {
            self.data.as_slices().0
        }
        fn advance(&mut self, n: usize) {
            self.taken.fetch_add(n, Ordering::Relaxed);
            self.data.drain(..n);
        }
    }

    #[tokio::test]
    async fn other_data_is_copied_once_for_every_attempt() {
        let taken = Arc::new(AtomicUsize::new(0));
        let frames: Vec<Result<Frame<Counted>, BoxError>> = (0..4)
            .map(|_| {
                Ok(Frame::data(Counted {
                    data: vec![7u8; 16 * 1024].into(),
                    taken: Arc::clone(&taken),
                }))
            })
            .collect();
        let body = stream_of(frames);
        let first = replaying(body, DEFAULT_REPLAY_LIMIT);
        let second = first.retry_copy();
        let third = first.retry_copy();
        let (sent, _) = collect(first).await.unwrap();
        let (replayed, _) = collect(second).await.unwrap();
        let (again, _) = collect(third).await.unwrap();
        assert_eq!(sent.concat().len(), 64 * 1024);
        assert_eq!(sent, replayed);
        assert_eq!(sent, again);
        // Each byte was taken out of the caller's buffers exactly once.
        assert_eq!(taken.load(Ordering::Relaxed), 64 * 1024);
        for (s, r) in sent.iter().zip(&replayed) {
            assert_eq!(s.as_ptr(), r.as_ptr());
        }
    }

    #[tokio::test]
    async fn past_the_limit_the_body_goes_on_but_is_not_replayable() {
        let body = stream_of(vec![data(60, 1), data(60, 2), data(60, 3)]);
        let first = replaying(body, 100);
        let second = first.retry_copy();
        let probe = first.retry_copy();
        let (chunks, _) = collect(first).await.unwrap();
        // The attempt that went past the limit still sends the whole body.
        assert_eq!(chunks.concat().len(), 180);
        assert!(!second.is_replayable());
        let err = collect(second).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "request body cannot be replayed: it went past the 100-byte replay buffer"
        );
        // Nothing stays buffered.
        assert_eq!(probe.replay_buffered(), Some((0, 0)));
    }

    #[tokio::test]
    async fn exactly_the_limit_is_still_replayable() {
        let first = replaying(Opaque(Full::new(Bytes::from(vec![1; 100]))), 100);
        let second = first.retry_copy();
        collect(first).await.unwrap();
        assert!(second.is_replayable());
        assert_eq!(collect(second).await.unwrap().0.concat().len(), 100);
    }

    #[tokio::test]
    async fn zero_limit_replays_only_what_was_never_read() {
        let empty = replaying(Opaque(http_body_util::Empty::<Bytes>::new()), 0);
        assert!(empty.is_end_stream());
        assert!(empty.retry_copy().is_replayable());
        // A large body nothing has read yet is replayable, whatever the limit.
        let big = replaying(Opaque(Full::new(Bytes::from(vec![1; 1 << 20]))), 0);
        let backup = big.retry_copy();
        assert!(backup.is_replayable());
        assert_eq!(backup.size_hint().exact(), Some(1 << 20));
        // Once one byte is read, it is not.
        collect(big).await.unwrap();
        assert!(!backup.is_replayable());
    }

    #[tokio::test]
    async fn huge_limit_does_not_overflow() {
        let body = stream_of(vec![data(3, 1), data(3, 2)]);
        let first = replaying(body, usize::MAX);
        let second = first.retry_copy();
        collect(first).await.unwrap();
        assert_eq!(collect(second).await.unwrap().0.len(), 2);
    }

    #[tokio::test]
    async fn a_failed_body_is_not_replayable() {
        let body = stream_of(vec![data(3, 1), Err("disk on fire".into())]);
        let first = replaying(body, 100);
        let second = first.retry_copy();
        let err = collect(first).await.unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert!(!second.is_replayable());
        let err = collect(second).await.unwrap_err();
        assert!(
            err.to_string().contains("failed on an earlier attempt"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn size_hint_and_end_stream_follow_each_handle() {
        let first = replaying(Opaque(Full::new(Bytes::from_static(b"hello"))), 100);
        let mut second = first.retry_copy();
        assert_eq!(first.size_hint().exact(), Some(5));
        assert!(!first.is_end_stream());
        let (chunks, _) = collect(first).await.unwrap();
        assert_eq!(chunks.concat(), b"hello");
        // The replaying handle still announces the whole body.
        assert_eq!(second.size_hint().exact(), Some(5));
        assert!(!second.is_end_stream());
        let frame = second.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        assert_eq!(second.size_hint().exact(), Some(0));
        assert!(second.is_end_stream());
        assert!(second.frame().await.is_none());
    }
}
