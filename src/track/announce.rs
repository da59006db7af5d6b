//! The announcement of a request that carries no connection capture.
//!
//! A request with a connection capture announces its attempt through it
//! ([`ConnectionCapture`](super::ConnectionCapture), `capture.rs`). A
//! request that took none (PhaseTimeout's request body for a bodiless
//! request with no `send` or `read` limit, see `phase_timeout::service`)
//! still tells its connection where it begins, the same way: hyper asks the
//! body `is_end_stream` on the connection's task right before it writes the
//! request head, and the tracked IO takes the announcement at its next write
//! on that task. Without it, a connection whose other requests announce
//! themselves would take this request's head, written before the previous
//! response's end was marked (hyper hands a connection back to its pool as
//! soon as it has read a response, before the caller has), for more of the
//! previous exchange: that exchange would then end, and the connection look
//! idle, while this request is in flight.
//!
//! Only a request whose body is empty at its head announces itself this
//! way: its upload is the head, so no end of upload has to be reported (the
//! capture's record does that for a body). Nothing verifies the pairing (no
//! capture to check it against): it only opens the request's own exchange,
//! never proves what was written or decides what to poison.

use std::cell::Cell;

use super::ConnectionState;

thread_local! {
    /// The task (hyper's connection task) that announced a bodiless request
    /// on this thread and has not written its head yet.
    static BODILESS: Cell<Option<tokio::task::Id>> = const { Cell::new(None) };
}

/// A bodiless request without a capture is about to be written on this
/// task (its body's `is_end_stream`, asked by hyper right before the head).
pub(crate) fn announce_bodiless() {
    let task = tokio::task::try_id();
    let _ = BODILESS.try_with(|slot| slot.set(task));
}

/// A request with a capture announces itself on this task: a bodiless
/// announcement left over (its request never written) must not pair with
/// this request's writes.
pub(crate) fn clear_bodiless() {
    let _ = BODILESS.try_with(|slot| slot.set(None));
}

/// Called by the tracked IO at a write: if a bodiless request announced
/// itself on this task, this write is its head's, and its attempt opens on
/// `state` (taken whether it opens or not, like a capture's announcement;
/// declined while the previous request's upload is still on its way).
/// Returns when the attempt opened.
pub(crate) fn pair_bodiless(state: &ConnectionState) -> Option<u64> {
    let announced = BODILESS
        .try_with(|slot| match slot.get() {
            Some(task) if Some(task) == tokio::task::try_id() => {
                slot.set(None);
                true
            }
            _ => false,
        })
        .unwrap_or(false);
    if !announced || !state.upload_on_wire() {
        return None;
    }
    let (_, at) = state.begin_request_stamped(true, super::io::WRITE_GRACE);
    Some(at)
}
