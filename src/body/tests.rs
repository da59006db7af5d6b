//! Unit tests of [`RequestBody`]: how bodies are kept, that wrapping never
//! nests, the frames, hints and ends it passes on, and its two modes
//! (progress observation, replay) on one value in either order.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::Instant;

use super::*;
use crate::phase_timeout::body::Progress;
use crate::BoxError;

/// A body `RequestBody::new` does not recognise, yielding prepared frames
/// (each ready at once) with the size hint it is given.
struct Frames {
    frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
    hint: SizeHint,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = self.frames.pop_front();
        if let Some(Ok(f)) = &frame {
            let n = f.data_ref().map_or(0, |d| d.len() as u64);
            let mut hint = SizeHint::new();
            hint.set_lower(self.hint.lower().saturating_sub(n));
            if let Some(upper) = self.hint.upper() {
                hint.set_upper(upper.saturating_sub(n));
            }
            self.hint = hint;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

fn frames(frames: Vec<Result<Frame<Bytes>, BoxError>>, hint: SizeHint) -> Frames {
    Frames {
        frames: frames.into(),
        hint,
    }
}

fn data(n: usize, byte: u8) -> Result<Frame<Bytes>, BoxError> {
    Ok(Frame::data(Bytes::from(vec![byte; n])))
}

/// Reads `body` to its end: its data frames and trailers, or its error.
async fn read(body: &mut RequestBody) -> Result<(Vec<Bytes>, Option<HeaderMap>), BoxError> {
    let mut chunks = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(d) => chunks.push(d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    Ok((chunks, trailers))
}

#[test]
fn cheap_to_clone_bodies_are_kept_inline_and_others_boxed() {
    let inline = [
        RequestBody::new(Full::new(Bytes::from_static(b"abc"))),
        RequestBody::new(Full::new(&b"abc"[..])),
        RequestBody::new(Empty::<Bytes>::new()),
        RequestBody::new(String::from("abc")),
        RequestBody::from(Bytes::from_static(b"abc")),
        RequestBody::from(vec![1u8, 2, 3]),
        RequestBody::from("abc"),
        RequestBody::from(&b"abc"[..]),
        RequestBody::default(),
    ];
    for body in &inline {
        assert_eq!(body.kind_name(), "inline", "{body:?}");
        assert!(body.is_replayable());
    }
    let (_tx, channel) = Channel::<Bytes>::new(1);
    let streamed = RequestBody::new(channel);
    assert_eq!(streamed.kind_name(), "boxed");
    // Outside the retry layer a streamed body cannot be sent twice.
    assert!(!streamed.is_replayable());
    // `Full` of another data type is not cheap to clone: boxed.
    let other = RequestBody::new(Full::new(std::io::Cursor::new(vec![1u8; 3])));
    assert_eq!(other.kind_name(), "boxed");
}

#[tokio::test]
async fn an_inline_full_is_not_copied() {
    let data = Bytes::from(vec![7u8; 1000]);
    let mut body = RequestBody::new(Full::new(data.clone()));
    let (chunks, _) = read(&mut body).await.unwrap();
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].as_ptr(), data.as_ptr());
}

#[test]
fn wrapping_a_request_body_again_does_not_nest() {
    // Inline stays inline (a nested one would be boxed).
    let inline = RequestBody::new(RequestBody::new(Full::new(Bytes::from_static(b"x"))));
    assert_eq!(inline.kind_name(), "inline");
    // A replay-mode body stays in its replay buffer.
    let mut replay = RequestBody::new(frames(vec![data(3, 1)], SizeHint::with_exact(3)));
    replay.make_replayable(100);
    let replay = RequestBody::new(RequestBody::new(replay));
    assert_eq!(replay.kind_name(), "replay");
    assert!(replay.is_replayable());
    // An observed body keeps its observation.
    let mut observed = RequestBody::new(Full::new(Bytes::from_static(b"x")));
    let capture = ConnectionCapture::direct(false);
    observed.observe(None, Some(capture.clone()));
    let observed = RequestBody::new(observed);
    assert_eq!(observed.kind_name(), "inline");
    assert!(observed.capture().is_some());
}

#[tokio::test]
async fn empty_bodies_end_at_once() {
    let (tx, channel) = Channel::<Bytes>::new(1);
    drop(tx);
    let empties = [
        RequestBody::new(Empty::<Bytes>::new()),
        RequestBody::new(Full::new(Bytes::new())),
        RequestBody::new(String::new()),
        RequestBody::default(),
        RequestBody::new(frames(vec![], SizeHint::with_exact(0))),
    ];
    for mut body in empties {
        assert!(body.is_empty(), "{body:?}");
        assert!(body.is_end_stream(), "{body:?}");
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.frame().await.is_none());
    }
    // A body that cannot tell its end is not empty until it ends.
    let mut channel = RequestBody::new(channel);
    assert!(!channel.is_empty());
    assert!(!channel.is_end_stream());
    assert!(channel.frame().await.is_none());
}

#[tokio::test]
async fn size_hints_are_the_callers_exact_or_unknown() {
    let exact = RequestBody::new(frames(
        vec![data(10, 1), data(5, 2)],
        SizeHint::with_exact(15),
    ));
    assert_eq!(exact.size_hint().exact(), Some(15));
    let (_tx, chunked) = Channel::<Bytes>::new(1);
    let chunked = RequestBody::new(chunked);
    assert_eq!(chunked.size_hint().exact(), None);
    assert_eq!(chunked.size_hint().upper(), None);
    // Replay mode keeps them.
    let mut replay = RequestBody::new(frames(vec![data(10, 1)], SizeHint::with_exact(10)));
    replay.make_replayable(0);
    assert_eq!(replay.size_hint().exact(), Some(10));
    assert_eq!(replay.retry_copy().size_hint().exact(), Some(10));
}

#[tokio::test]
async fn a_large_streamed_frame_is_split_without_copying_and_the_hint_follows() {
    let big = Bytes::from(vec![3u8; 2 * MAX_FRAME + 7]);
    let base = big.as_ptr() as usize;
    let total = big.len() as u64;
    let mut body = RequestBody::new(frames(
        vec![Ok(Frame::data(big))],
        SizeHint::with_exact(total),
    ));
    let mut offset = 0;
    while let Some(frame) = body.frame().await {
        let piece = frame.unwrap().into_data().unwrap();
        assert!(piece.len() <= MAX_FRAME);
        assert_eq!(piece.as_ptr() as usize, base + offset);
        offset += piece.len();
        // What is left of the frame counts in the hint.
        assert_eq!(body.size_hint().exact(), Some(total - offset as u64));
    }
    assert_eq!(offset as u64, total);
    assert!(body.is_end_stream());
}

#[tokio::test]
async fn other_data_is_copied_into_bytes_once() {
    let cursor = std::io::Cursor::new(vec![9u8; 100]);
    let mut body = RequestBody::new(Full::new(cursor));
    let (chunks, _) = read(&mut body).await.unwrap();
    assert_eq!(chunks.concat(), vec![9u8; 100]);
}

#[tokio::test]
async fn trailers_pass_through_and_end_the_upload() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "42".parse().unwrap());
    let (mut tx, channel) = Channel::<Bytes>::new(2);
    tx.send_data(Bytes::from_static(b"abc")).await.unwrap();
    tx.send_trailers(trailers.clone()).await.unwrap();
    drop(tx);
    let mut body = RequestBody::new(channel);
    let progress = Arc::new(Progress::new(Instant::now()));
    body.observe(Some(progress.clone()), None);
    let (chunks, got) = read(&mut body).await.unwrap();
    assert_eq!(chunks.concat(), b"abc");
    assert_eq!(got, Some(trailers));
    assert_eq!(progress.bytes(), 3);
    assert!(progress.body_end().is_some());
}

#[tokio::test]
async fn an_error_mid_body_is_passed_on_and_the_body_is_not_replayable() {
    let mut body = RequestBody::new(frames(
        vec![data(4, 1), Err("disk on fire".into())],
        SizeHint::default(),
    ));
    body.make_replayable(100);
    let copy = body.retry_copy();
    let err = read(&mut body).await.unwrap_err();
    assert_eq!(err.to_string(), "disk on fire");
    assert!(!copy.is_replayable());
    assert_eq!(copy.overflowed_limit(), None);
}

#[tokio::test]
async fn a_copy_outside_the_replay_buffer_fails_instead_of_sending_part() {
    let streamed = RequestBody::new(frames(vec![data(4, 1)], SizeHint::with_exact(4)));
    let mut copy = streamed.retry_copy();
    assert_eq!(copy.kind_name(), "spent");
    assert!(!copy.is_replayable());
    let err = read(&mut copy).await.unwrap_err();
    assert!(
        err.to_string().contains("not kept in a replay buffer"),
        "{err}"
    );
}

#[tokio::test]
async fn inline_bodies_replay_by_clone_whatever_the_limit() {
    let data = Bytes::from(vec![5u8; 3 * MAX_FRAME]);
    let mut body = RequestBody::new(Full::new(data.clone()));
    body.make_replayable(0);
    assert_eq!(body.kind_name(), "inline");
    let mut copy = body.retry_copy();
    let (sent, _) = read(&mut body).await.unwrap();
    assert_eq!(sent.len(), 3);
    assert!(copy.is_replayable());
    let (again, _) = read(&mut copy).await.unwrap();
    assert_eq!(again, sent);
    assert_eq!(again[0].as_ptr(), data.as_ptr());
}

/// Observation, then replay (PhaseTimeout above the retry layer): the
/// first attempt reports to the progress record; the copy for a retry is
/// silent until its attempt starts, then starts the record over.
#[tokio::test(start_paused = true)]
async fn observed_then_replayable_reports_each_attempt() {
    let progress = Arc::new(Progress::new(Instant::now()));
    let mut body = RequestBody::new(frames(
        vec![data(10, 1), data(20, 2)],
        SizeHint::with_exact(30),
    ));
    let first_capture = ConnectionCapture::direct(false);
    body.observe(Some(progress.clone()), Some(first_capture.clone()));
    body.make_replayable(100);
    assert_eq!(body.kind_name(), "replay");
    let mut copy = body.retry_copy();
    assert!(copy.capture().is_none(), "a copy waits for its attempt");
    read(&mut body).await.unwrap();
    assert_eq!(progress.bytes(), 30);
    assert!(progress.body_end().is_some());
    drop(body);
    // The copy, dropped or not, reported nothing so far.
    assert_eq!(progress.bytes(), 30);
    let second_capture = ConnectionCapture::direct(false);
    copy.next_attempt(Some(&second_capture));
    assert!(second_capture.is_hooked());
    assert!(
        progress.body_end().is_none(),
        "the upload is under way again"
    );
    assert_eq!(progress.bytes(), 0);
    let (chunks, _) = read(&mut copy).await.unwrap();
    assert_eq!(chunks.concat().len(), 30);
    assert_eq!(progress.bytes(), 30);
    assert!(progress.body_end().is_some());
}

/// Replay, then observation (the retry layer above PhaseTimeout, the
/// documented order): each attempt's body is observed by its own record.
#[tokio::test(start_paused = true)]
async fn replayable_then_observed_reports_to_each_attempts_record() {
    let mut body = RequestBody::new(frames(
        vec![data(10, 1), data(20, 2)],
        SizeHint::with_exact(30),
    ));
    body.make_replayable(100);
    let mut copy = body.retry_copy();
    let first = Arc::new(Progress::new(Instant::now()));
    body.observe(Some(first.clone()), None);
    read(&mut body).await.unwrap();
    assert_eq!(first.bytes(), 30);
    // Not observed from above: `next_attempt` changes nothing.
    copy.next_attempt(None);
    let second = Arc::new(Progress::new(Instant::now()));
    copy.observe(Some(second.clone()), None);
    let (chunks, _) = read(&mut copy).await.unwrap();
    assert_eq!(chunks.concat().len(), 30);
    assert_eq!((first.bytes(), second.bytes()), (30, 30));
}

#[tokio::test(start_paused = true)]
async fn two_observers_both_see_the_upload() {
    let outer = Arc::new(Progress::new(Instant::now()));
    let inner = Arc::new(Progress::new(Instant::now()));
    let mut body = RequestBody::new(frames(vec![data(8, 1)], SizeHint::with_exact(8)));
    body.observe(Some(outer.clone()), None);
    body.observe(Some(inner.clone()), None);
    read(&mut body).await.unwrap();
    assert_eq!((outer.bytes(), inner.bytes()), (8, 8));
    assert!(outer.body_end().is_some() && inner.body_end().is_some());
}

#[tokio::test(start_paused = true)]
async fn dropping_an_observed_body_ends_its_upload() {
    let progress = Arc::new(Progress::new(Instant::now()));
    let mut body = RequestBody::new(frames(
        vec![data(8, 1), data(8, 2)],
        SizeHint::with_exact(16),
    ));
    body.observe(Some(progress.clone()), None);
    body.frame().await.unwrap().unwrap();
    assert!(progress.body_end().is_none());
    drop(body);
    assert!(progress.body_end().is_some());
    assert_eq!(progress.bytes(), 8);
}

#[test]
fn an_observed_empty_body_has_ended_its_upload_at_the_call() {
    let issued = Instant::now();
    let progress = Arc::new(Progress::new(issued));
    let mut body = RequestBody::new(Empty::<Bytes>::new());
    body.observe(Some(progress.clone()), None);
    assert_eq!(progress.body_end(), Some(issued));
}

/// A bodiless request under `PhaseTimeout` (a capture, no progress record)
/// is kept without a box, yet does what a boxed observed body does: it
/// hands its capture on, has ended at once, ends its upload when dropped,
/// and a second observer or a retry copy still works.
#[test]
fn an_empty_body_that_only_announces_its_attempt_is_not_boxed() {
    let capture = ConnectionCapture::direct(false);
    let mut body = RequestBody::new(Empty::<Bytes>::new());
    body.observe(None, Some(capture.clone()));
    assert!(body.is_announced_only());
    assert!(body.capture().is_some());
    assert!(format!("{body:?}").contains("observed: true"));
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));
    // A retry copy waits for its own attempt, with no capture yet.
    let copy = body.retry_copy();
    assert!(copy.capture().is_none());
    assert!(!capture.is_upload_done());
    drop(body);
    assert!(capture.is_upload_done());

    // Observed twice: the second record takes over, and the first
    // capture's upload is not ended by the hand-over.
    let first = ConnectionCapture::direct(false);
    let second = ConnectionCapture::direct(false);
    let mut body = RequestBody::new(Empty::<Bytes>::new());
    body.observe(None, Some(first.clone()));
    body.observe(None, Some(second.clone()));
    assert!(!body.is_announced_only());
    assert!(!first.is_upload_done());
    drop(body);
    assert!(second.is_upload_done());
}

#[test]
fn it_is_send_sync_unpin_and_static() {
    fn check<T: Send + Sync + Unpin + 'static>() {}
    check::<RequestBody>();
}

#[test]
fn the_debug_output_says_how_it_is_kept() {
    let inline = format!("{:?}", RequestBody::from("abc"));
    assert_eq!(inline, "RequestBody { inline: 3, observed: false }");
    let mut replay = RequestBody::new(frames(vec![data(3, 1)], SizeHint::with_exact(3)));
    replay.make_replayable(10);
    let replay = format!("{replay:?}");
    assert!(
        replay.starts_with("RequestBody { replay: Replay { limit: 10,"),
        "{replay}"
    );
}

/// The retry layer below `PhaseTimeout`: the failed attempt's body may be
/// dropped by its connection after the retry has started; its end belongs
/// to an older generation and must not end the upload under way.
#[tokio::test(start_paused = true)]
async fn a_failed_attempts_body_dropped_late_does_not_end_the_retry() {
    let progress = Arc::new(Progress::new(Instant::now()));
    let mut first = RequestBody::new(frames(
        vec![data(10, 1), data(20, 2)],
        SizeHint::with_exact(30),
    ));
    first.observe(Some(progress.clone()), None);
    first.make_replayable(100);
    let mut copy = first.retry_copy();
    first.frame().await.unwrap().unwrap();
    copy.next_attempt(None);
    // The first attempt's body goes only now.
    drop(first);
    assert!(progress.body_end().is_none());
    assert_eq!(progress.bytes(), 0);
    copy.frame().await.unwrap().unwrap();
    assert_eq!(progress.bytes(), 10);
    read(&mut copy).await.unwrap();
    assert_eq!(progress.bytes(), 30);
    assert!(progress.body_end().is_some());
}

/// An `http::Request<RequestBody>` is moved many times between the layers
/// and hyper: with http 1's 224 bytes of parts, a 32-byte body keeps it
/// within the 256 bytes `memcpy` moves without a loop (a 56-byte body cost
/// the one-call client about 850 instructions per GET).
#[test]
fn it_is_four_words() {
    assert_eq!(std::mem::size_of::<RequestBody>(), 32);
}
