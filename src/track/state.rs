//! Per-connection state shared by the tracking IO and request-plane layers.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::exchange::{Exchange, ExchangeOutcome};
use super::ConnectionExpired;
use crate::clock::{Origin, Stamp};

/// Process-wide connection id counter (a counter, not a map: it never grows).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// `u64::MAX` nanoseconds in an expiry field: no expiry.
const NO_EXPIRY: u64 = u64::MAX;

/// Live state of one tracked connection.
///
/// Created by [`TrackConnections`](super::TrackConnections) when a connection is
/// established and published through hyper-util's `Connected::extra`, so it can
/// be found in every response's extensions
/// (`response.extensions().get::<ConnectionState>()`) and through
/// [`ConnectionCapture`](super::ConnectionCapture) while a request is in flight.
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
/// ([`exchange()`](Self::exchange)); see the [module docs](super) for the
/// whole lifecycle and what makes a record exact.
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
    /// When the connection became idle: the last byte read for the exchange
    /// that ended. Never while an exchange is in flight.
    idle_since: Stamp,
    /// Effective idle expiry in nanoseconds, `NO_EXPIRY` when none.
    expiry: AtomicU64,
    /// When the connection retires (maximum age), applied at an idle point.
    retire_at: Stamp,
    /// Where the IO's expiry timer is armed (it fires there at the latest).
    timer_at: Stamp,
    /// Told about expiries, refusals and server idle closes (IdleExpiry).
    observer: OnceLock<Arc<dyn Observer>>,
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
    /// The waker of the task that last found the IO pending.
    waker: Mutex<Option<Waker>>,
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
                expiry: AtomicU64::new(NO_EXPIRY),
                retire_at: Stamp::never(),
                timer_at: Stamp::never(),
                observer: OnceLock::new(),
                poisoned: AtomicBool::new(false),
                expired: AtomicBool::new(false),
                claimed: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                http2: AtomicBool::new(false),
                request_defined: AtomicBool::new(false),
                upload_pending: AtomicBool::new(false),
                response_ended: AtomicBool::new(false),
                unflushed: AtomicBool::new(false),
                inexact: AtomicBool::new(false),
                upgraded: AtomicBool::new(false),
                refuse_idle: AtomicU64::new(0),
                refuse_limit: AtomicU64::new(NO_EXPIRY),
                waker: Mutex::new(None),
            }),
        }
    }

    fn load(&self, stamp: &Stamp) -> Option<Instant> {
        stamp.get(&self.inner.origin)
    }

    /// A process-unique id for this connection (starts at 1).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// When the connection was established (the connector's future completed).
    pub fn connected_at(&self) -> Instant {
        self.inner.origin.instant() + self.inner.connect
    }

    /// How long the connector took (TCP, plus TLS when the tracker wraps it).
    pub fn connect_duration(&self) -> Duration {
        self.inner.connect
    }

    /// Requests (exchanges) opened on this connection so far.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Acquire)
    }

    /// Bytes written to the socket so far.
    pub fn bytes_written(&self) -> u64 {
        self.inner.bytes_written.load(Ordering::Relaxed)
    }

    /// Bytes read from the socket so far.
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

    /// Whether an exchange is in flight: from the first write attempt of a
    /// request until its response ends (see the type's docs for who marks
    /// that), or the connection closes.
    pub fn in_flight(&self) -> bool {
        self.outcome() == ExchangeOutcome::InFlight && !self.is_closed()
    }

    /// Since when the connection has been known idle: the instant of the last
    /// byte read for the exchange that ended. `None` while an exchange is in
    /// flight, before the first exchange ended, and once closed.
    ///
    /// This is the wire time, not when the caller finished reading the body:
    /// the server's idle clock starts when it wrote its last byte.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.outcome() != ExchangeOutcome::Completed || self.is_closed() {
            return None;
        }
        self.load(&self.inner.idle_since)
    }

    /// The connection's effective idle expiry (configured, or learned from
    /// the server), if one was set by [`IdleExpiry`](crate::idle_expiry).
    pub fn expiry(&self) -> Option<Duration> {
        match self.inner.expiry.load(Ordering::Acquire) {
            NO_EXPIRY => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Sets the effective idle expiry and wakes the IO so a known-idle
    /// connection re-arms its timer.
    pub(crate) fn set_expiry(&self, expiry: Option<Duration>) {
        let nanos = expiry.map_or(NO_EXPIRY, |d| {
            u64::try_from(d.as_nanos()).unwrap_or(NO_EXPIRY - 1)
        });
        let old = self.inner.expiry.swap(nanos, Ordering::AcqRel);
        // Only a known-idle connection has a timer to re-arm; one in flight
        // arms it when its exchange ends.
        if old != nanos && self.idle_since().is_some() {
            self.inner.timer_at.clear();
            self.wake();
        }
    }

    /// When the known-idle connection expires: [`idle_since`](Self::idle_since)
    /// plus [`expiry`](Self::expiry), or its retirement (maximum age) if that
    /// comes first. `None` unless the connection is known idle and has one,
    /// and while a request has been promised the connection (see
    /// [`IdleExpiryConnection`](crate::idle_expiry::IdleExpiryConnection)).
    pub fn idle_deadline(&self) -> Option<Instant> {
        self.idle_deadline_raw()
            .and_then(|raw| self.inner.origin.at(raw))
    }

    /// [`idle_deadline`](Self::idle_deadline) in nanoseconds since the
    /// origin: the IO's hot path compares it with its timer without
    /// converting instants.
    pub(crate) fn idle_deadline_raw(&self) -> Option<u64> {
        let inner = &self.inner;
        // The common case, checked with two loads: nothing to expire.
        let expiry = inner.expiry.load(Ordering::Relaxed);
        let retire = inner.retire_at.raw();
        if expiry == NO_EXPIRY && retire.is_none() {
            return None;
        }
        if inner.claimed.load(Ordering::Acquire)
            || self.outcome() != ExchangeOutcome::Completed
            || self.is_closed()
            || self.is_upgraded()
        {
            return None;
        }
        deadline_raw(inner.idle_since.raw()?, expiry, retire)
    }

    /// Where the IO's expiry timer is armed, in nanoseconds since the origin.
    pub(crate) fn timer_at_raw(&self) -> Option<u64> {
        self.inner.timer_at.raw()
    }

    /// An instant from nanoseconds since the origin.
    pub(crate) fn at(&self, raw: u64) -> Option<Instant> {
        self.inner.origin.at(raw)
    }

    /// Promises the idle connection to a request that is about to be written:
    /// from now until that request's exchange opens, the IO neither closes
    /// it at its expiry nor refuses the write, so a request accepted just
    /// before the deadline is not failed just after it (the margin below the
    /// server's timeout covers the difference).
    pub(crate) fn claim(&self) {
        self.inner.claimed.store(true, Ordering::Release);
    }

    fn idle_deadline_from(&self, idle_since: Instant) -> Option<Instant> {
        let inner = &self.inner;
        let raw = deadline_raw(
            inner.origin.stamp(idle_since),
            inner.expiry.load(Ordering::Acquire),
            inner.retire_at.raw(),
        )?;
        inner.origin.at(raw)
    }

    /// The refusal error if the connection expired by `now`: it was closed
    /// at its expiry, or it is known idle past its deadline.
    pub(crate) fn expired_at(&self, now: Instant) -> Option<ConnectionExpired> {
        if self.is_upgraded() {
            return None;
        }
        let since = self.load(&self.inner.idle_since)?;
        let deadline = if self.was_expired() {
            self.idle_deadline_from(since)?
        } else {
            // Whether claimed or not: a promise that was never used does
            // not make a stale connection fresh.
            self.idle_since()?;
            let deadline = self.idle_deadline_from(since)?;
            if now < deadline {
                return None;
            }
            deadline
        };
        Some(ConnectionExpired {
            idle: now.saturating_duration_since(since),
            limit: deadline.saturating_duration_since(since),
        })
    }

    /// Sets when the connection retires (its maximum age): it is closed at
    /// the first idle point after that instant.
    pub(crate) fn set_retire_at(&self, at: Instant) {
        self.inner.retire_at.set(&self.inner.origin, at);
    }

    /// Installs the observer told about this connection's expiry events
    /// (the first one installed stays).
    pub(crate) fn observe(&self, make: impl FnOnce() -> Arc<dyn Observer>) {
        if self.inner.observer.get().is_none() {
            let _ = self.inner.observer.set(make());
        }
    }

    pub(crate) fn notify(&self, event: Event) {
        if let Some(observer) = self.inner.observer.get() {
            observer.event(event, self);
        }
    }

    /// Whether the tracker closed the connection itself because it stayed
    /// idle past its expiry (rather than the server closing it).
    pub fn was_expired(&self) -> bool {
        self.inner.expired.load(Ordering::Acquire)
    }

    pub(crate) fn on_expired(&self) {
        self.inner.expired.store(true, Ordering::Release);
        self.inner.closed.store(true, Ordering::Release);
        self.notify(Event::Expired);
    }

    /// Whether the connection was poisoned: an exchange on it was abandoned
    /// (timed out, or its response future or body dropped before the end), so
    /// it is closed and never handed to another request.
    #[inline]
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::Acquire)
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

    /// A snapshot of the current (latest) exchange.
    pub fn exchange(&self) -> Exchange {
        let outcome = self.outcome();
        let number = self.requests();
        let written = self
            .bytes_written()
            .saturating_sub(self.inner.exchange_written_base.load(Ordering::Acquire));
        let read = self
            .bytes_read()
            .saturating_sub(self.inner.exchange_read_base.load(Ordering::Acquire));
        Exchange {
            connection_id: self.id(),
            number,
            bytes_written: written,
            bytes_read: read,
            outcome,
            exact: !self.inner.inexact.load(Ordering::Acquire),
        }
    }

    /// Snapshot of the current exchange, for a response that just arrived.
    pub(crate) fn info(&self) -> super::ConnectionInfo {
        let start = self.load(&self.inner.exchange_start);
        let first_read = self.load(&self.inner.exchange_first_read);
        let last_write = self.last_write();
        let since = |end: Option<Instant>| match (start, end) {
            (Some(s), Some(e)) => Some(e.saturating_duration_since(s)),
            _ => None,
        };
        super::ConnectionInfo {
            id: self.id(),
            request_number: self.requests(),
            idle_before: Duration::from_nanos(
                self.inner.exchange_idle_before.load(Ordering::Acquire),
            ),
            connect: self.connect_duration(),
            upload: since(last_write.filter(|_| first_read.is_some())),
            first_byte: since(first_read),
        }
    }

    pub(crate) fn outcome(&self) -> ExchangeOutcome {
        ExchangeOutcome::from_u8(self.inner.outcome.load(Ordering::Acquire))
    }

    /// Moves the outcome from `from` to `to`; false if it was not `from`.
    fn transition(&self, from: ExchangeOutcome, to: ExchangeOutcome) -> bool {
        self.inner
            .outcome
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Nanoseconds since the connection's origin at `now`: the one clock
    /// conversion the IO shares between the stamps it takes at one instant.
    pub(crate) fn stamp(&self, now: Instant) -> u64 {
        self.inner.origin.stamp(now)
    }

    /// Opens a new exchange at a request's first write attempt (`now` from
    /// [`stamp`](Self::stamp)). An exchange still in flight (no request-side
    /// marker saw its end) is completed now.
    pub(crate) fn open_exchange(&self, now: u64, inexact: bool) {
        self.complete_current();
        let inner = &self.inner;
        inner.upload_pending.store(false, Ordering::Relaxed);
        inner.response_ended.store(false, Ordering::Relaxed);
        inner.inexact.store(inexact, Ordering::Release);
        let idle = inner
            .idle_since
            .raw()
            .or_else(|| inner.last_read.raw())
            .map_or(0, |r| now.saturating_sub(r));
        inner.exchange_idle_before.store(idle, Ordering::Release);
        inner.exchange_first_read.clear();
        inner.exchange_start.set_raw(now);
        inner
            .exchange_written_base
            .store(self.bytes_written(), Ordering::Release);
        inner
            .exchange_read_base
            .store(self.bytes_read(), Ordering::Release);
        inner.idle_since.clear();
        inner.claimed.store(false, Ordering::Release);
        inner.requests.fetch_add(1, Ordering::AcqRel);
        inner
            .outcome
            .store(ExchangeOutcome::InFlight as u8, Ordering::Release);
    }

    /// A request announces itself on this connection right before hyper
    /// writes its head (the request body's hook, on the connection's own
    /// task): a new attempt opens, the previous exchange (if still open)
    /// completes, and the IO stops inferring exchanges from byte turns.
    /// Returns the attempt's number. On HTTP/2 (streams share the socket) and
    /// on an upgraded connection nothing opens: `0`.
    ///
    /// If the connection had been idle past its deadline (plus the write
    /// grace), the IO refuses the attempt's first write with
    /// [`ConnectionExpired`]: nothing of it is written.
    pub(crate) fn begin_request(&self, body_empty: bool, grace: Duration) -> u64 {
        if self.is_http2() || self.is_upgraded() {
            return 0;
        }
        let inner = &self.inner;
        let now = Instant::now();
        if let Some(deadline) = self.idle_deadline() {
            if now >= crate::clock::deadline(deadline, grace) {
                let since = self.idle_since().unwrap_or(deadline);
                let idle = now.saturating_duration_since(since);
                let limit = deadline.saturating_duration_since(since);
                inner.refuse_idle.store(nanos(idle), Ordering::Relaxed);
                inner
                    .refuse_limit
                    .store(nanos(limit).min(NO_EXPIRY - 1), Ordering::Release);
            }
        }
        inner.request_defined.store(true, Ordering::Release);
        self.open_exchange(self.stamp(now), false);
        inner.upload_pending.store(!body_empty, Ordering::Release);
        self.requests()
    }

    /// Whether requests on this connection announce their own attempts.
    pub(crate) fn is_request_defined(&self) -> bool {
        self.inner.request_defined.load(Ordering::Acquire)
    }

    /// The refusal the IO owes the current attempt's first write, if its
    /// connection had expired when it began.
    pub(crate) fn take_refusal(&self) -> Option<ConnectionExpired> {
        let inner = &self.inner;
        if inner.refuse_limit.load(Ordering::Relaxed) == NO_EXPIRY {
            return None;
        }
        let limit = inner.refuse_limit.swap(NO_EXPIRY, Ordering::AcqRel);
        (limit != NO_EXPIRY).then(|| ConnectionExpired {
            idle: Duration::from_nanos(inner.refuse_idle.load(Ordering::Relaxed)),
            limit: Duration::from_nanos(limit),
        })
    }

    /// The request body of attempt `number` ended (it reported its end, or
    /// hyper dropped it once written). If its response had already ended
    /// (an early final response), the exchange completes now.
    pub(crate) fn upload_ended(&self, number: u64) {
        if number == 0 || self.requests() != number {
            return;
        }
        let inner = &self.inner;
        if inner.upload_pending.swap(false, Ordering::AcqRel)
            && inner.response_ended.load(Ordering::Acquire)
        {
            // Completes now if the last bytes were flushed, else at the flush.
            self.end_exchange(number);
        }
    }

    /// The connection became the caller's tunnel (a `101 Switching
    /// Protocols` or a successful `CONNECT` answered attempt `number`): the
    /// exchange is over for this crate, which from now on neither expires,
    /// poisons nor learns from the connection.
    pub(crate) fn set_upgraded(&self) {
        self.inner.upgraded.store(true, Ordering::Release);
        self.inner.upload_pending.store(false, Ordering::Release);
        self.complete_current();
    }

    /// Whether the connection was upgraded (`101 Switching Protocols`, or a
    /// successful `CONNECT`): it is the caller's tunnel, which this crate
    /// never expires, closes or learns from.
    pub fn is_upgraded(&self) -> bool {
        self.inner.upgraded.load(Ordering::Acquire)
    }

    /// `n` bytes written at `now` (from [`stamp`](Self::stamp)).
    pub(crate) fn on_write(&self, n: usize, now: u64) {
        self.inner
            .bytes_written
            .fetch_add(n as u64, Ordering::Relaxed);
        self.inner.last_write.set_raw(now);
        self.inner.unflushed.store(true, Ordering::Release);
    }

    pub(crate) fn on_read(&self, n: usize, first_of_response: bool) {
        let now = self.stamp(Instant::now());
        let inner = &self.inner;
        if first_of_response {
            inner.exchange_first_read.set_raw(now);
        }
        inner.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        inner.last_read.set_raw(now);
    }

    /// A flush succeeded after bytes were written (the IO skips flushes
    /// that follow no write: the earlier stamp already covers them).
    pub(crate) fn on_flush(&self) {
        let inner = &self.inner;
        inner.last_flush.set(&inner.origin, Instant::now());
        inner.unflushed.store(false, Ordering::Release);
        // An early final response waiting for its upload to reach the wire.
        if inner.response_ended.load(Ordering::Acquire)
            && !inner.upload_pending.load(Ordering::Acquire)
        {
            self.end_exchange(self.requests());
        }
    }

    /// Whether the current attempt's request is entirely on the wire: its
    /// body ended (or it had none) and every byte hyper took was flushed.
    fn upload_on_wire(&self) -> bool {
        !self.inner.upload_pending.load(Ordering::Acquire)
            && !self.inner.unflushed.load(Ordering::Acquire)
    }

    /// A write of the current exchange failed. `inexact`: the IO that failed
    /// may have put part of the refused bytes on the wire first (a TLS
    /// stream), so the record no longer proves how much was written.
    pub(crate) fn on_write_error(&self, inexact: bool) {
        if inexact {
            self.inner.inexact.store(true, Ordering::Release);
        }
        self.transition(ExchangeOutcome::InFlight, ExchangeOutcome::WriteFailed);
        self.on_close();
    }

    /// EOF or a read error: the peer closed (or reset) the connection.
    pub(crate) fn on_peer_close(&self) {
        if let Some(since) = self.idle_since() {
            if !self.is_poisoned() && !self.was_expired() && !self.is_upgraded() {
                let idle = Instant::now().saturating_duration_since(since);
                self.notify(Event::ServerIdleClose(idle));
            }
        }
        let to = if self.exchange().bytes_read == 0 {
            ExchangeOutcome::ClosedBeforeResponse
        } else {
            ExchangeOutcome::ClosedDuringResponse
        };
        self.transition(ExchangeOutcome::InFlight, to);
        self.on_close();
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

    /// Completes the current exchange if it is still in flight.
    fn complete_current(&self) -> bool {
        if !self.transition(ExchangeOutcome::InFlight, ExchangeOutcome::Completed) {
            return false;
        }
        let at = self
            .inner
            .last_read
            .raw()
            .unwrap_or_else(|| self.stamp(Instant::now()));
        self.inner.idle_since.set_raw(at);
        true
    }

    /// Marks exchange `number`'s response ended (its body ended). The
    /// exchange completes unless its request's upload is still running (an
    /// early final response): then it completes when the upload ends, and
    /// `false` says so. Does nothing if a later exchange has opened since,
    /// or it already ended.
    pub(crate) fn end_exchange(&self, number: u64) -> bool {
        if self.requests() != number {
            return true;
        }
        if self.is_request_defined() && !self.upload_on_wire() {
            self.inner.response_ended.store(true, Ordering::Release);
            // The upload may have reached the wire in between: then
            // complete here.
            if !self.upload_on_wire() {
                return false;
            }
        }
        if self.complete_current() {
            // The IO needs waking only if its expiry timer would fire too
            // late for this idle period (or is not armed at all, or fired).
            if let Some(deadline) = self.idle_deadline_raw() {
                match self.inner.timer_at.raw() {
                    Some(armed) if armed <= deadline && armed > self.stamp(Instant::now()) => {}
                    _ => self.wake(),
                }
            }
        }
        true
    }

    /// The IO armed its expiry timer at `at`.
    pub(crate) fn timer_armed(&self, at: Instant) {
        self.inner.timer_at.set(&self.inner.origin, at);
    }

    /// Poisons the connection because exchange `number` was abandoned: the
    /// IO fails its next read or write and hyper closes it. Does nothing if
    /// that exchange already ended normally or a later one has opened.
    pub(crate) fn abandon(&self, number: u64) -> bool {
        if self.requests() != number || self.is_http2() || self.is_upgraded() {
            return false;
        }
        if self.transition(ExchangeOutcome::InFlight, ExchangeOutcome::Abandoned) {
            self.poison();
            return true;
        }
        false
    }

    /// Poisons the connection unconditionally and wakes its IO.
    pub(crate) fn poison(&self) {
        if self.is_upgraded() {
            return;
        }
        self.inner.poisoned.store(true, Ordering::Release);
        self.wake();
    }

    /// Stores the waker of the task driving the IO (if it is a new one).
    pub(crate) fn register(&self, waker: &Waker) {
        let mut slot = self.inner.waker.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    /// Wakes the task driving the IO, so it re-checks expiry and poison.
    pub(crate) fn wake(&self) {
        let waker = self
            .inner
            .waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A duration in nanoseconds, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The idle deadline in nanoseconds since the origin: `since` plus the
/// expiry (`NO_EXPIRY` for none), or the retirement if that comes first
/// (never before `since`); `None` when there is neither.
fn deadline_raw(since: u64, expiry: u64, retire: Option<u64>) -> Option<u64> {
    // Below `u64::MAX`, which reads back as "never".
    let by_idle = (expiry != NO_EXPIRY).then(|| since.saturating_add(expiry).min(NO_EXPIRY - 1));
    let retire = retire.map(|r| r.max(since));
    match (by_idle, retire) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What the IO tells an [`Observer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// The IO closed the idle connection at its expiry.
    Expired,
    /// A write was refused because the connection had expired.
    Refused,
    /// The server closed the connection after it had been idle this long.
    ServerIdleClose(Duration),
}

/// Told about a connection's expiry events (IdleExpiry's learner and stats).
pub(crate) trait Observer: Send + Sync {
    fn event(&self, event: Event, state: &ConnectionState);
}

impl fmt::Debug for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionState")
            .field("id", &self.id())
            .field("connect", &self.connect_duration())
            .field("requests", &self.requests())
            .field("bytes_written", &self.bytes_written())
            .field("bytes_read", &self.bytes_read())
            .field("outcome", &self.outcome())
            .field("poisoned", &self.is_poisoned())
            .field("closed", &self.is_closed())
            .finish()
    }
}

#[cfg(test)]
#[allow(dead_code)] // used by the tracker's unit tests
pub(crate) fn state_size() -> usize {
    std::mem::size_of::<Inner>()
}
