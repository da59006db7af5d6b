//! The one place that captures a request's connection, and the record of
//! the attempt that request makes on it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use http::Request;
use hyper_util::client::legacy::connect::{capture_connection, CaptureConnection, Connected};

use super::{ConnectionState, Exchange};

/// The connection a request was (or will be) sent on, shared by every layer
/// of this crate that needs it.
///
/// Users need it for what no response can tell: the connection of a
/// request that failed (a timeout, a reset) or is still on its way, on
/// hyper-util's legacy client. Take it before sending; afterwards
/// [`state`](Self::state) is the connection, and
/// [`ConnectionState::info`] what the request did on it (bytes sent and
/// received, how its exchange ended):
///
/// ```no_run
/// # async fn run<S>(client: S) -> Result<(), tower_conn_lifecycle::BoxError>
/// # where S: tower::Service<http::Request<String>, Error = tower_conn_lifecycle::BoxError>,
/// # {
/// use tower::ServiceExt;
/// use tower_conn_lifecycle::track::ConnectionCapture;
///
/// let mut req = http::Request::post("http://127.0.0.1:8080/upload").body("x".repeat(1 << 20))?;
/// let capture = ConnectionCapture::get_or_insert(&mut req);
/// if let Err(err) = client.oneshot(req).await {
///     if let Some(info) = capture.state().map(|state| state.info()) {
///         eprintln!(
///             "failed on connection {} (request {} on it) after {} bytes sent: {err}",
///             info.connection_id(),
///             info.request_number(),
///             info.bytes_sent()
///         );
///     }
/// }
/// # Ok(())
/// # }
/// ```
///
/// The one-call [`Client`](crate::client::Client) fills its own captures
/// (no watch channel): one a caller puts on its request stays empty; read
/// its responses with [`ConnectionInfo::of`](super::ConnectionInfo::of).
///
/// hyper-util's [`capture_connection`] replaces any earlier capture on the
/// same request, so two layers that each called it would starve one another.
/// [`ConnectionCapture::get_or_insert`] calls it once per request and stores
/// the handle in the request's extensions; later callers get a clone of the
/// same handle. Use it instead of calling `capture_connection` yourself.
///
/// The capture is filled in after hyper-util checks a connection out of its
/// pool, before the request is written, but nothing wakes the request's task
/// when that happens: read it when something else wakes you. After one of
/// hyper-util's transparent retries it points at the newest connection.
///
/// It is the most expensive part of this crate's request plane: a watch
/// channel, two request-extension inserts, a clone of hyper-util's
/// `Connected` and a notification when the pool picks the connection, about
/// 2.7 k instructions and 7 small allocations per request on loopback (the
/// README's Performance section, row `ref_capture`). Taking it once per
/// request, whatever the number of layers, keeps that cost from adding up.
///
/// A capture belongs to one *attempt*: one request handed to one
/// connection. Besides the connection it carries that attempt's record,
/// which the tracker fills in when the request announces itself to its
/// connection (see the [module docs](super) on the lifecycle of an
/// exchange), so every layer reads the same facts about what *this
/// request* did on the wire.
#[derive(Clone)]
pub struct ConnectionCapture {
    // One `Arc`: every layer and body holds a clone, and a clone of
    // hyper-util's capture (a watch receiver) costs two atomic counters.
    attempt: Arc<Attempt>,
}

/// Whether a connection is known yet, and the attempt once it began: the
/// connection's id and the request's number on it.
impl std::fmt::Debug for ConnectionCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionCapture")
            .field("connected", &self.is_filled())
            .field(
                "attempt",
                &self.begun().map(|(state, number)| (state.id(), number)),
            )
            .finish()
    }
}

/// Where a capture learns its connection.
#[derive(Debug)]
enum Source {
    /// hyper-util's legacy client fills its `capture_connection` handle when
    /// it checks a connection out of its pool.
    Hyper(CaptureConnection),
    /// The per-connection service of this crate's composable-pool engine
    /// (the one-call [`Client`](crate::client::Client)) sets it as the
    /// request passes through: no watch channel, no copy of hyper-util's
    /// `Connected`. The connection is the attempt's (`begun`): it becomes
    /// known as the attempt begins on it, in one step.
    Direct,
}

/// What one request did on its connection (shared by the clones of its
/// [`ConnectionCapture`]).
#[derive(Debug)]
struct Attempt {
    /// How the connection becomes known.
    inner: Source,
    /// hyper took the request to write (the body's hook ran with the
    /// capture filled).
    announced: AtomicBool,
    /// The body's hook ran while the capture was still empty: whatever is
    /// writing the request never filled it (see
    /// [`ConnectionCapture::is_hidden`]).
    asked_unfilled: AtomicBool,
    /// The body had nothing to send when the request was announced.
    body_empty: AtomicBool,
    /// The connection and the attempt's number on it, from the moment the
    /// tracked IO paired the announcement with its next write (the request
    /// head); `0` on HTTP/2.
    begun: OnceLock<(ConnectionState, u64)>,
    /// A request body with this capture's hook was built: the request will
    /// announce itself before its head is written.
    hooked: AtomicBool,
    /// The request's body ended before (or without) the attempt beginning.
    upload_done: AtomicBool,
    /// A response-end marker owns this attempt's exchange already.
    marker_taken: AtomicBool,
    /// The request's method is CONNECT (a success turns the connection into
    /// a tunnel).
    connect: bool,
}

thread_local! {
    /// A capture handed to the layer below (see
    /// [`ConnectionCapture::hand_over`]).
    static HANDED: std::cell::Cell<Option<ConnectionCapture>> =
        const { std::cell::Cell::new(None) };
}

thread_local! {
    /// The request hyper is about to write on this thread, and the task
    /// (hyper's connection task) that announced it.
    static ANNOUNCED: std::cell::RefCell<Option<(tokio::task::Id, ConnectionCapture)>> =
        const { std::cell::RefCell::new(None) };
}

/// Pairs the announcement of the request hyper is about to write with the
/// tracked IO `state` of the connection writing it: called by the IO at the
/// first write of a turn. hyper announces a request (the body's hook) and
/// writes its head in the same poll of the connection's task, so the
/// announcement is this task's, and this write is the head's. It pairs only
/// where a new request can begin: never while the previous one's upload is
/// still on its way (then the announcement is dropped, and the attempt's
/// record stays unknown rather than risk pairing with a later write). The
/// decisions that must never rest on a wrong pairing check it against the
/// capture ([`ConnectionCapture::verified_begun`]).
///
/// Returns when the attempt opened (the stamp of the head's first write).
pub(crate) fn pair_announcement(state: &ConnectionState) -> Option<u64> {
    ANNOUNCED
        .try_with(|slot| {
            let mut slot = slot.try_borrow_mut().ok()?;
            let (task, _) = slot.as_ref()?;
            if Some(*task) != tokio::task::try_id() {
                return None;
            }
            // This task's announcement is taken here whether it pairs or
            // not: this write is the head's, and a declined announcement
            // must never pair with a later write of the same task.
            let (_, capture) = slot.take()?;
            drop(slot);
            if !state.upload_on_wire() {
                return None;
            }
            capture.begin_on(state)
        })
        .ok()
        .flatten()
}

/// The tracker's state in hyper-util's connection extras: the one decoder
/// of `Connected::extra`.
///
/// hyper-util hands extras out only through an `http::Extensions`; one per
/// thread is kept (emptied after each use) so that reading them costs one
/// boxed value, not a new map each time.
pub(crate) fn state_of(connected: &Connected) -> Option<ConnectionState> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<http::Extensions> =
            std::cell::RefCell::new(http::Extensions::new());
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut extensions) => {
            connected.get_extras(&mut extensions);
            let state = extensions.remove::<ConnectionState>();
            // Another connector's extras (a proxy's, say) must not stay.
            extensions.clear();
            state
        }
        // Re-entered from inside a `Clone` of some extra: a fresh map.
        Err(_) => {
            let mut extensions = http::Extensions::new();
            connected.get_extras(&mut extensions);
            extensions.remove::<ConnectionState>()
        }
    })
}

/// What a [`ConnectionCapture`] knows right now (crate-internal: the public
/// way is [`ConnectionCapture::state`]).
#[derive(Clone, Debug)]
pub(crate) enum Captured {
    /// No connection yet: still waiting for the pool or the connector (or the
    /// inner service is not hyper-util's client and never fills captures).
    Pending,
    /// Connected, but the connector is not wrapped by
    /// [`TrackConnections`](super::TrackConnections).
    Untracked,
    /// Connected through a tracked connector.
    Tracked(ConnectionState),
}

impl ConnectionCapture {
    /// Returns the request's capture, creating it on first use.
    ///
    /// A capture belongs to one attempt: if the request carries one that
    /// already points at a connection (it was cloned from an earlier attempt,
    /// `http::request::Parts` is `Clone`), a fresh one replaces it, so a
    /// retried or re-issued request never reads an earlier attempt's
    /// connection.
    pub fn get_or_insert<B>(req: &mut Request<B>) -> Self {
        Self::get_or_insert_with(req, false)
    }

    /// [`get_or_insert`](Self::get_or_insert); a capture created here is
    /// filled by the engine's per-connection service (`direct`) instead of
    /// hyper-util's `capture_connection`. A request already carrying an
    /// unfilled capture keeps it, whatever its kind.
    pub(crate) fn get_or_insert_with<B>(req: &mut Request<B>, direct: bool) -> Self {
        if let Some(existing) = req.extensions().get::<ConnectionCapture>() {
            if !existing.is_filled() {
                return existing.clone();
            }
        }
        let inner = if direct {
            Source::Direct
        } else {
            Source::Hyper(capture_connection(req))
        };
        let capture = Self::new(inner, req.method() == http::Method::CONNECT);
        req.extensions_mut().insert(capture.clone());
        capture
    }

    /// A capture the one-call client's engine fills (see
    /// [`begin_direct`](Self::begin_direct)), for a request that is not put
    /// on the request's extensions but handed from layer to layer
    /// ([`hand_over`](Self::hand_over)): no extension map per request.
    pub(crate) fn direct(connect: bool) -> Self {
        Self::new(Source::Direct, connect)
    }

    fn new(inner: Source, connect: bool) -> Self {
        ConnectionCapture {
            attempt: Arc::new(Attempt {
                inner,
                announced: AtomicBool::new(false),
                asked_unfilled: AtomicBool::new(false),
                body_empty: AtomicBool::new(false),
                begun: OnceLock::new(),
                upload_done: AtomicBool::new(false),
                hooked: AtomicBool::new(false),
                marker_taken: AtomicBool::new(false),
                connect,
            }),
        }
    }

    /// Runs `call` (a service's synchronous `call` of the layer below) with
    /// `capture` handed to it: the layer below takes it with
    /// [`take_handed`](Self::take_handed). Only the one-call client's
    /// stack, whose layers call each other directly, hands captures over;
    /// whatever is not taken is dropped when `call` returns.
    pub(crate) fn hand_over<R>(capture: Option<Self>, call: impl FnOnce() -> R) -> R {
        struct Restore(Option<ConnectionCapture>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                let _ = HANDED.try_with(|slot| slot.replace(previous));
            }
        }
        let previous = HANDED.try_with(|slot| slot.replace(capture)).ok().flatten();
        let _restore = Restore(previous);
        call()
    }

    /// The capture the layer above handed over (see
    /// [`hand_over`](Self::hand_over)), if it is still unfilled.
    pub(crate) fn take_handed() -> Option<Self> {
        HANDED
            .try_with(|slot| slot.take())
            .ok()
            .flatten()
            .filter(|c| matches!(c.attempt.inner, Source::Direct) && !c.is_filled())
    }

    /// The attempt's capture on the one-call client's request plane: the
    /// one the retry layer handed over for a first attempt
    /// ([`take_handed`](Self::take_handed)), or the one its policy put on a
    /// retry (an unfilled one on the request, else a new direct one).
    pub(crate) fn handed_or_direct<B>(req: &mut Request<B>) -> Self {
        Self::take_handed().unwrap_or_else(|| Self::get_or_insert_with(req, true))
    }

    /// The request's capture if the engine's per-connection service is to
    /// fill it (see [`begin_direct`](Self::begin_direct)): the one handed
    /// over, or the one on the request.
    pub(crate) fn direct_of<B>(req: &Request<B>) -> Option<Self> {
        Self::take_handed().or_else(|| {
            req.extensions()
                .get::<ConnectionCapture>()
                .filter(|c| matches!(c.attempt.inner, Source::Direct))
                .cloned()
        })
    }

    /// The engine's per-connection service hands the request to `state`'s
    /// connection, which is idle and ready for it (hyper's HTTP/1
    /// connection takes a request only once the previous exchange is over):
    /// fills the capture and opens the attempt there, before hyper writes a
    /// byte. `body_empty`: nothing to upload, or nobody reports the upload's
    /// end (no request body of this crate carries the capture). Returns the
    /// attempt's number (`0` on HTTP/2, or if it had begun already).
    pub(crate) fn begin_direct(&self, state: &ConnectionState, body_empty: bool) -> u64 {
        let attempt = &*self.attempt;
        if !matches!(attempt.inner, Source::Direct) || attempt.begun.get().is_some() {
            return 0;
        }
        let empty = body_empty || attempt.upload_done.load(Ordering::Acquire);
        // The attempt begins once on its connection, whoever else tries.
        let mut began = false;
        let &(_, number) = attempt.begun.get_or_init(|| {
            began = true;
            (
                state.clone(),
                state.begin_request(empty, std::time::Duration::ZERO),
            )
        });
        if !began {
            return 0;
        }
        attempt.body_empty.store(empty, Ordering::Relaxed);
        // The body's hook finds the attempt announced and does nothing.
        attempt.announced.store(true, Ordering::Release);
        number
    }

    /// The connection as far as it is known now.
    pub(crate) fn get(&self) -> Captured {
        let hyper = match &self.attempt.inner {
            Source::Hyper(hyper) => hyper,
            Source::Direct => {
                return match self.attempt.begun.get() {
                    Some((state, _)) => Captured::Tracked(state.clone()),
                    None => Captured::Pending,
                }
            }
        };
        let meta = hyper.connection_metadata();
        match meta.as_ref() {
            None => Captured::Pending,
            Some(connected) => match state_of(connected) {
                Some(state) => Captured::Tracked(state),
                None => Captured::Untracked,
            },
        }
    }

    /// The request announces itself: called by the request body's hook on
    /// the connection's task, right before hyper writes the request head
    /// (hyper asks the body `is_end_stream` there), when hyper-util has
    /// already filled the capture. The connection's tracked IO pairs the
    /// announcement with its next write in the same poll of the same task
    /// ([`pair_announcement`]) and opens the attempt there. Once per attempt.
    /// `body_empty`: the body has nothing to send (its upload is the head).
    pub(crate) fn begin(&self, body_empty: bool) {
        let attempt = &*self.attempt;
        if attempt.announced.load(Ordering::Acquire) {
            return;
        }
        if !self.is_filled() {
            // Asked with no connection captured: hyper-util's legacy client
            // fills the capture before its connection ever sees the body, so
            // this request is being written by something that hides its
            // connection (reqwest, a composable pool, hyper's own
            // connections). Nothing to pair; remembered for `is_hidden`.
            attempt.asked_unfilled.store(true, Ordering::Relaxed);
            return;
        }
        attempt.body_empty.store(body_empty, Ordering::Relaxed);
        attempt.announced.store(true, Ordering::Release);
        let Some(task) = tokio::task::try_id() else {
            return;
        };
        let announced = (task, self.clone());
        // A stale announcement (one no tracked IO took: an untracked or
        // HTTP/2 connection) is replaced.
        let _ = ANNOUNCED.try_with(|slot| {
            if let Ok(mut slot) = slot.try_borrow_mut() {
                *slot = Some(announced);
            }
        });
    }

    /// Opens this attempt on `state` (the tracked IO paired it with its
    /// next write); returns when, in [`ConnectionState::stamp`] units.
    fn begin_on(&self, state: &ConnectionState) -> Option<u64> {
        let attempt = &*self.attempt;
        if attempt.begun.get().is_some() {
            return None;
        }
        let empty = attempt.body_empty.load(Ordering::Relaxed)
            || attempt.upload_done.load(Ordering::Acquire);
        let (number, at) = state.begin_request_stamped(empty, super::io::WRITE_GRACE);
        let _ = attempt.begun.set((state.clone(), number));
        Some(at)
    }

    /// A request body that calls [`begin`](Self::begin) and
    /// [`upload_ended`](Self::upload_ended) carries this capture: until the
    /// attempt begins, nothing of the request has been written.
    pub(crate) fn hook(&self) {
        self.attempt.hooked.store(true, Ordering::Release);
    }

    /// Whether hyper took the request to write (it announced itself), on
    /// whatever connection.
    pub(crate) fn is_announced(&self) -> bool {
        self.attempt.announced.load(Ordering::Acquire)
    }

    /// The attempt's connection and number when the tracker paired it, and
    /// the capture (read now, off the hot path) confirms that connection;
    /// `None` otherwise. For decisions that must never rest on a wrong
    /// pairing: whether nothing was written, whether to poison.
    pub(crate) fn verified_begun(&self) -> Option<(&ConnectionState, u64)> {
        let (state, number) = self.begun()?;
        match self.get() {
            Captured::Tracked(captured) if captured.id() == state.id() => Some((state, number)),
            _ => None,
        }
    }

    /// Whether the service this request was handed to hides its
    /// connection: the request left with its capture still empty. That is
    /// known when
    ///
    /// * its body was asked for its end (hyper asks right before writing
    ///   the request head; see [`begin`](Self::begin)) before any connection
    ///   was captured, or
    /// * the request's copy of hyper-util's capture was dropped unfilled:
    ///   the inner service let the request's extensions go (reqwest does in
    ///   its `call`; hyper's own connections once the head is encoded).
    ///
    /// hyper-util's legacy client carries the request, extensions included,
    /// until it has a connection and fills the capture before writing, so
    /// over it this stays `false` (a request it drops unfilled has failed,
    /// and its error is on the way). Not for the hot path: the second check
    /// clones the capture's receiver and polls it once.
    pub(crate) fn is_hidden(&self) -> bool {
        let attempt = &*self.attempt;
        if attempt.asked_unfilled.load(Ordering::Relaxed) {
            return true;
        }
        let Source::Hyper(hyper) = &attempt.inner else {
            // The engine fills it before its connection asks the body.
            return false;
        };
        // hyper-util's receiver says "closed" only through
        // `wait_for_connection_metadata`, ready at once (with `None`) when
        // the request's end of the capture is gone unfilled (hyper-util's
        // own tests pin that; a version whose future stayed pending would
        // leave only the check above). Polled once on a clone (the original
        // stays untouched), with a waker nobody needs; tokio's cooperative
        // budget may make it pending now and then: the next check asks again.
        let mut receiver = hyper.clone();
        let wait = std::pin::pin!(receiver.wait_for_connection_metadata());
        let released = match wait.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(connected) => connected.is_none(),
            Poll::Pending => false,
        };
        released
    }

    /// Whether a request body announces this attempt (see [`hook`](Self::hook)).
    pub(crate) fn is_hooked(&self) -> bool {
        self.attempt.hooked.load(Ordering::Acquire)
    }

    /// The request body ended (it reported its end, or hyper dropped it once
    /// it was written): the attempt's upload is over.
    /// Whether the attempt's upload ended ([`upload_ended`](Self::upload_ended)).
    #[cfg(test)]
    pub(crate) fn is_upload_done(&self) -> bool {
        self.attempt.upload_done.load(Ordering::Acquire)
    }

    pub(crate) fn upload_ended(&self) {
        let attempt = &*self.attempt;
        if attempt.upload_done.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some((state, number)) = attempt.begun.get() {
            state.upload_ended(*number);
        }
    }

    /// The connection and number of this attempt, once it has begun on a
    /// tracked connection (`number` is 0 on HTTP/2).
    pub(crate) fn begun(&self) -> Option<(&ConnectionState, u64)> {
        self.attempt
            .begun
            .get()
            .map(|(state, number)| (state, *number))
    }

    /// This attempt's exchange on an HTTP/1 connection, while it is the
    /// connection's current one.
    pub(crate) fn exchange(&self) -> Option<Exchange> {
        let (state, number) = self.begun()?;
        state.exchange_of(number)
    }

    /// Takes the right to own the attempt's response-end marker: `true` for
    /// the first caller (the innermost layer sees the response first).
    pub(crate) fn take_marker(&self) -> bool {
        !self.attempt.marker_taken.swap(true, Ordering::AcqRel)
    }

    /// Whether the request's method is CONNECT.
    pub(crate) fn is_connect(&self) -> bool {
        self.attempt.connect
    }

    /// Whether the connection's own service opens this attempt as the
    /// request is handed over (the one-call client's captures): the attempt
    /// it records is then this request's by construction.
    pub(crate) fn is_direct(&self) -> bool {
        matches!(self.attempt.inner, Source::Direct)
    }

    /// Whether a connection is known yet, without building its extras (no
    /// allocation): cheap enough to ask after every poll.
    pub(crate) fn is_filled(&self) -> bool {
        match &self.attempt.inner {
            Source::Hyper(hyper) => hyper.connection_metadata().is_some(),
            Source::Direct => self.attempt.begun.get().is_some(),
        }
    }

    /// Marks the captured connection poisoned in hyper-util's pool, so it is
    /// never handed to another request (no effect before a connection is
    /// known).
    pub(crate) fn poison(&self) {
        // The engine's connections are poisoned through their state (the
        // abandoned exchange), which its per-connection service checks.
        if let Source::Hyper(hyper) = &self.attempt.inner {
            if let Some(connected) = hyper.connection_metadata().as_ref() {
                connected.poison();
            }
        }
    }

    /// The tracked connection's state, once the request has a connection
    /// made through a tracker; `None` while it has none yet, or when its
    /// connector is not wrapped by
    /// [`TrackConnections`](super::TrackConnections).
    pub fn state(&self) -> Option<ConnectionState> {
        match self.get() {
            Captured::Tracked(state) => Some(state),
            _ => None,
        }
    }
}
