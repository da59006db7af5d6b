//! Per-connection state shared by the tracking IO and request-plane layers:
//! the state and its counters here, the exchange state machine in
//! `attempt`, the idle expiry mechanism in `expiry`.

mod attempt;
mod expiry;
mod timer;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::exchange::ExchangeOutcome;
use crate::clock::{Origin, Stamp};
pub(crate) use expiry::{Event, Limits, Observer};

pub(super) fn epoch() -> u64 {
    LEARNED_EPOCH.load(Ordering::Acquire)
}

/// Process-wide connection id counter (a counter, not a map: it never grows).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// `u64::MAX` nanoseconds in an expiry field: no expiry.
const NO_EXPIRY: u64 = u64::MAX;

/// Process-wide count of changes to anything learned (a counter, not a map:
/// it never grows). A connection whose observer reported no learned limits
/// at the current count skips asking again: the common case (nothing
/// learned for its origin) costs the expiry checks two loads.
static LEARNED_EPOCH: AtomicU64 = AtomicU64::new(0);

/// Something learned changed (IdleExpiry's learner): connections ask their
/// observers again.
pub(crate) fn learned_changed() {
    LEARNED_EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// Live state of one tracked connection: the connection's own facts
/// (when it connected, its socket's byte counts and last reads and writes,
/// idle since when, its expiry, closed, poisoned, upgraded, HTTP/2), read
/// now; [`info`](Self::info) takes a [`ConnectionInfo`](super::ConnectionInfo)
/// snapshot of its latest request (the connection's id, the request's
/// number, connect duration, the exchange's bytes and outcome).
///
/// Created by [`TrackConnections`](super::TrackConnections) when a connection is
/// established and published through hyper-util's `Connected::extra`, so it can
/// be found in the extensions of every response of hyper-util's client
/// (`response.extensions().get::<ConnectionState>()`), in the one-call
/// client's response body ([`client::Body::connection_state`](crate::client::Body::connection_state)),
/// and through [`ConnectionCapture`](super::ConnectionCapture) while a
/// request is in flight.
///
/// Cloning is cheap (an `Arc`); every clone sees the same live counters. The
/// state is freed when the connection and the last clone are dropped: nothing
/// global keeps it.
///
/// # Exchanges
///
/// An *exchange* is one request and its response on this connection (one
/// attempt). It opens when the request announces itself right before its
/// head is written (or, for a request that does not, at its first write
/// attempt), and records its bytes and how it ended
/// ([`info()`](Self::info)); see the [module docs](super) for the whole
/// lifecycle and what makes a record exact.
///
/// On HTTP/2 connections ([`is_http2`](Self::is_http2)) the socket carries
/// every stream at once: requests open no exchange there, and the counts
/// belong to the connection.
#[derive(Clone)]
pub struct ConnectionState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    id: u64,
    /// When the connect attempt started; all stamps are relative to it.
    origin: Origin,
    /// Time from `origin` until the IO was handed over.
    connect: Duration,
    /// Exchanges opened so far; the number of the current one.
    requests: AtomicU64,
    bytes_written: AtomicU64,
    bytes_read: AtomicU64,
    last_write: Stamp,
    last_read: Stamp,
    last_flush: Stamp,
    exchange_start: Stamp,
    exchange_first_read: Stamp,
    exchange_idle_before: AtomicU64,
    /// `bytes_written` / `bytes_read` when the current exchange opened.
    exchange_written_base: AtomicU64,
    exchange_read_base: AtomicU64,
    outcome: AtomicU8,
    /// When the connection became idle: the last moment the client was
    /// caught up with the server in the exchange that ended (see
    /// [`idle_since`](ConnectionState::idle_since)). Never while an exchange
    /// is in flight.
    idle_since: Stamp,
    /// The last moment the client was caught up with the server: its last
    /// write, or its last read of bytes that arrived while it waited for
    /// them (not bytes that had been sitting in the socket buffer).
    caught_up: Stamp,
    /// Effective idle expiry in nanoseconds, `NO_EXPIRY` when none.
    expiry: AtomicU64,
    /// When the connection retires (maximum age), applied at an idle point.
    retire_at: Stamp,
    /// Where the IO's expiry timer is armed (it fires there at the latest).
    timer_at: Stamp,
    /// Told about expiries, refusals and server idle closes (IdleExpiry).
    observer: OnceLock<Arc<dyn Observer>>,
    /// The [`LEARNED_EPOCH`] at which the observer last reported no learned
    /// limits (`u64::MAX`: not asked yet).
    unlearned_at: AtomicU64,
    poisoned: AtomicBool,
    /// The IO closed the connection itself because its idle expiry passed.
    expired: AtomicBool,
    /// A request has been promised this idle connection (a composable
    /// pool's `poll_ready` said yes): the IO no longer expires it.
    claimed: AtomicBool,
    closed: AtomicBool,
    http2: AtomicBool,
    /// Requests on this connection announce their own attempts (the request
    /// body's hook, [`begin_request`](ConnectionState::begin_request)): the
    /// IO no longer infers exchanges from read→write turns.
    request_defined: AtomicBool,
    /// The current attempt's request body has not ended yet (set only for
    /// attempts announced by their request).
    upload_pending: AtomicBool,
    /// The current attempt's response ended (request side) while its upload
    /// was still pending: it completes when the upload ends.
    response_ended: AtomicBool,
    /// The exchange whose response-end marker is owned already (see
    /// [`claim_end`](ConnectionState::claim_end)); its number's low 32 bits,
    /// which fit in the padding the flags leave.
    end_claimed: AtomicU32,
    /// Bytes were written since the last successful flush. hyper flushes
    /// only once its write buffer is empty, so after the body ended (hyper
    /// took its last bytes) the upload is on the wire at the next flush.
    unflushed: AtomicBool,
    /// The current record may undercount what was written: a write failed
    /// inside an IO that can fail after partial progress, or the exchange
    /// was inferred from a read→write turn while the previous one was still
    /// open.
    inexact: AtomicBool,
    /// The connection became the caller's tunnel (101 Switching Protocols,
    /// a successful CONNECT): no expiry, no poisoning, no learning.
    upgraded: AtomicBool,
    /// Set when an announced attempt began on a connection idle past its
    /// deadline (plus the write grace): the IO refuses its first write.
    /// The idle time and the limit in nanoseconds (`NO_EXPIRY`: none owed).
    refuse_idle: AtomicU64,
    refuse_limit: AtomicU64,
    /// The connection's one timer (idle expiry, and the phase checks of
    /// the request in flight on HTTP/1) and the tasks it wakes.
    timer: Arc<timer::ConnTimer>,
}

impl ConnectionState {
    pub(crate) fn new(origin: Instant, connected_at: Instant) -> Self {
        ConnectionState {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                origin: Origin::new(origin),
                connect: connected_at.saturating_duration_since(origin),
                requests: AtomicU64::new(0),
                bytes_written: AtomicU64::new(0),
                bytes_read: AtomicU64::new(0),
                last_write: Stamp::never(),
                last_read: Stamp::never(),
                last_flush: Stamp::never(),
                exchange_start: Stamp::never(),
                exchange_first_read: Stamp::never(),
                exchange_idle_before: AtomicU64::new(0),
                exchange_written_base: AtomicU64::new(0),
                exchange_read_base: AtomicU64::new(0),
                outcome: AtomicU8::new(ExchangeOutcome::None as u8),
                idle_since: Stamp::never(),
                caught_up: Stamp::never(),
                expiry: AtomicU64::new(NO_EXPIRY),
                retire_at: Stamp::never(),
                timer_at: Stamp::never(),
                observer: OnceLock::new(),
                unlearned_at: AtomicU64::new(u64::MAX),
                poisoned: AtomicBool::new(false),
                expired: AtomicBool::new(false),
                claimed: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                http2: AtomicBool::new(false),
                request_defined: AtomicBool::new(false),
                upload_pending: AtomicBool::new(false),
                response_ended: AtomicBool::new(false),
                end_claimed: AtomicU32::new(0),
                unflushed: AtomicBool::new(false),
                inexact: AtomicBool::new(false),
                upgraded: AtomicBool::new(false),
                refuse_idle: AtomicU64::new(0),
                refuse_limit: AtomicU64::new(NO_EXPIRY),
                timer: Arc::default(),
            }),
        }
    }

    fn load(&self, stamp: &Stamp) -> Option<Instant> {
        stamp.get(&self.inner.origin)
    }

    /// A process-unique id for this connection (starts at 1): for users,
    /// [`ConnectionInfo::connection_id`](super::ConnectionInfo::connection_id).
    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    /// When the connection was established (the connector's future completed).
    pub fn connected_at(&self) -> Instant {
        self.inner.origin.instant() + self.inner.connect
    }

    /// How long the connector took (TCP, plus TLS when the tracker wraps
    /// it): for users,
    /// [`ConnectionInfo::connect_duration`](super::ConnectionInfo::connect_duration).
    pub(crate) fn connect_duration(&self) -> Duration {
        self.inner.connect
    }

    /// Requests (exchanges) opened on this connection so far: for users,
    /// [`ConnectionInfo::request_number`](super::ConnectionInfo::request_number).
    pub(crate) fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Acquire)
    }

    /// Bytes written to the socket so far, every request's (one request's
    /// are [`ConnectionInfo::bytes_sent`](super::ConnectionInfo::bytes_sent)).
    pub fn bytes_written(&self) -> u64 {
        self.inner.bytes_written.load(Ordering::Relaxed)
    }

    /// Bytes read from the socket so far, every response's (one
    /// response's are
    /// [`ConnectionInfo::bytes_received`](super::ConnectionInfo::bytes_received)).
    pub fn bytes_read(&self) -> u64 {
        self.inner.bytes_read.load(Ordering::Relaxed)
    }

    /// When the last byte was written, if any.
    pub fn last_write(&self) -> Option<Instant> {
        self.load(&self.inner.last_write)
    }

    /// When the last byte was read, if any.
    pub fn last_read(&self) -> Option<Instant> {
        self.load(&self.inner.last_read)
    }

    /// [`last_read`](Self::last_read) in [`stamp`](Self::stamp) units.
    pub(crate) fn last_read_raw(&self) -> Option<u64> {
        self.inner.last_read.raw()
    }

    /// When the client last flushed the connection successfully after
    /// writing (flushes that follow no write are not stamped: the earlier
    /// stamp already covers every byte).
    ///
    /// hyper flushes the IO only after its own write buffer is empty, so a
    /// flush at or after the last write means every queued byte reached the
    /// socket.
    pub fn last_flush(&self) -> Option<Instant> {
        self.load(&self.inner.last_flush)
    }

    /// Whether the connection's IO has been dropped or has seen EOF or an error.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Whether the connection speaks HTTP/2 (ALPN `h2`, or the HTTP/2
    /// preface was written).
    pub fn is_http2(&self) -> bool {
        self.inner.http2.load(Ordering::Relaxed)
    }

    /// Nanoseconds since the connection's origin at `now`: the one clock
    /// conversion the IO shares between the stamps it takes at one instant.
    pub(crate) fn stamp(&self, now: Instant) -> u64 {
        self.inner.origin.stamp(now)
    }

    /// `n` bytes written at `now` (from [`stamp`](Self::stamp)).
    pub(crate) fn on_write(&self, n: usize, now: u64) {
        self.inner
            .bytes_written
            .fetch_add(n as u64, Ordering::Relaxed);
        self.inner.last_write.set_raw(now);
        self.inner.caught_up.set_raw(now);
        self.inner.unflushed.store(true, Ordering::Release);
    }

    /// `n` bytes read; `live`: they arrived while the IO waited for them (its
    /// previous read found nothing), rather than sitting in the socket
    /// buffer until a slow reader came for them.
    pub(crate) fn on_read(&self, n: usize, first_of_response: bool, live: bool) {
        let now = self.stamp(Instant::now());
        let inner = &self.inner;
        if first_of_response {
            inner.exchange_first_read.set_raw(now);
        }
        if live {
            inner.caught_up.set_raw(now);
        }
        inner.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        inner.last_read.set_raw(now);
    }

    /// A flush succeeded after bytes were written (the IO skips flushes
    /// that follow no write: the earlier stamp already covers them).
    /// `at_last_write`: the IO's writes put bytes on the wire themselves (a
    /// plain TCP socket, whose flush does nothing), so the flush is stamped
    /// with the last write's stamp rather than a clock read.
    pub(crate) fn on_flush(&self, at_last_write: bool) {
        let inner = &self.inner;
        match inner.last_write.raw().filter(|_| at_last_write) {
            Some(written) => inner.last_flush.set_raw(written),
            None => inner.last_flush.set(&inner.origin, Instant::now()),
        }
        inner.unflushed.store(false, Ordering::Release);
        // An early final response waiting for its upload to reach the wire.
        if inner.response_ended.load(Ordering::Acquire)
            && !inner.upload_pending.load(Ordering::Acquire)
        {
            self.end_exchange(self.requests());
        }
    }

    /// The IO is gone (dropped) or failed. An exchange still in flight keeps
    /// its outcome: hyper also drops the IO after a complete response it was
    /// told not to keep alive.
    pub(crate) fn on_close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.wake();
    }

    pub(crate) fn set_http2(&self) {
        self.inner.http2.store(true, Ordering::Relaxed);
    }

    /// Stores the waker of the task driving the IO (if it is a new one).
    pub(crate) fn register(&self, waker: &Waker) {
        self.inner.timer.register_io(waker);
    }

    /// Wakes the task driving the IO, so it re-checks expiry and poison.
    pub(crate) fn wake(&self) {
        self.inner.timer.wake_io();
    }
}

/// The connection's id and its latest request's number and outcome (as in
/// [`info`](ConnectionState::info)), then its own facts, by the names of
/// their getters.
impl fmt::Debug for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionState")
            .field("connection_id", &self.id())
            .field("request_number", &self.requests())
            .field("outcome", &self.outcome())
            .field("bytes_written", &self.bytes_written())
            .field("bytes_read", &self.bytes_read())
            .field("is_http2", &self.is_http2())
            .field("is_poisoned", &self.is_poisoned())
            .field("is_closed", &self.is_closed())
            .finish()
    }
}

#[cfg(test)]
#[allow(dead_code)] // used by the tracker's unit tests
pub(crate) fn state_size() -> usize {
    std::mem::size_of::<Inner>()
}
