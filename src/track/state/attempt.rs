//! The exchange state machine: attempts opened by their request (or
//! inferred by the IO), their upload, their end, abandonment and upgrades.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{ConnectionState, Event, NO_EXPIRY};
use crate::track::{ConnectionInfo, Exchange, ExchangeOutcome};

impl ConnectionState {
    /// Whether an exchange is in flight: from the first write attempt of a
    /// request until its response ends (see the type's docs for who marks
    /// that), or the connection closes.
    pub(crate) fn in_flight(&self) -> bool {
        self.outcome() == ExchangeOutcome::InFlight && !self.is_closed()
    }

    /// Since when the connection has been known idle: the last moment of the
    /// exchange that ended at which the client was caught up with the
    /// server. `None` while an exchange is in flight, before the first
    /// exchange ended, and once closed.
    ///
    /// This is wire time, not when the caller finished reading the body: the
    /// server's idle clock starts when it wrote its last byte. Normally it is
    /// the instant the last response bytes were read, having arrived while
    /// the connection waited for them. When the end of a response sat in
    /// the socket buffer until a slow reader drained it, the server may have
    /// finished writing any time after the connection was last caught up
    /// (its last read of bytes it waited for, or its last write), so the
    /// idle time counts from there: it can only be overestimated, never made
    /// to look near zero by a late drain, and the expiry errs toward closing
    /// early.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.outcome() != ExchangeOutcome::Completed || self.is_closed() {
            return None;
        }
        self.load(&self.inner.idle_since)
    }

    /// Whether the connection was poisoned: an exchange on it was abandoned
    /// (timed out, or its response future or body dropped before the end), so
    /// it is closed and never handed to another request.
    #[inline]
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::Acquire)
    }

    /// The record of the current (latest) exchange.
    pub(crate) fn exchange(&self) -> Exchange {
        let outcome = self.outcome();
        let number = self.requests();
        let written = self
            .bytes_written()
            .saturating_sub(self.inner.exchange_written_base.load(Ordering::Acquire));
        let read = self
            .bytes_read()
            .saturating_sub(self.inner.exchange_read_base.load(Ordering::Acquire));
        Exchange {
            number,
            bytes_written: written,
            bytes_read: read,
            outcome,
            exact: !self.inner.inexact.load(Ordering::Acquire),
        }
    }

    /// Attempt `number`'s exchange while it is the current one on an HTTP/1
    /// connection, where the socket carries it alone; `None` on HTTP/2
    /// (streams share the socket), for attempt 0 and once a later one opened.
    pub(crate) fn exchange_of(&self, number: u64) -> Option<Exchange> {
        let exchange = self.exchange();
        (number != 0 && !self.is_http2() && exchange.number() == number).then_some(exchange)
    }

    /// A snapshot of the connection's latest request, now: what
    /// [`ConnectionInfo::of`] returns for a response that just arrived.
    /// Taken later (after the response body ended, or the request failed),
    /// its outcome and byte counts say how the exchange went on; once a
    /// later request has begun on the connection, it is that request's.
    pub fn info(&self) -> ConnectionInfo {
        let start = self.load(&self.inner.exchange_start);
        let first_read = self.load(&self.inner.exchange_first_read);
        let last_write = self.last_write();
        let since = |end: Option<Instant>| match (start, end) {
            (Some(s), Some(e)) => Some(e.saturating_duration_since(s)),
            _ => None,
        };
        let exchange = self.exchange();
        ConnectionInfo {
            connection_id: self.id(),
            request_number: exchange.number,
            idle_before: Duration::from_nanos(
                self.inner.exchange_idle_before.load(Ordering::Acquire),
            ),
            connect_duration: self.connect_duration(),
            upload_duration: since(last_write.filter(|_| first_read.is_some())),
            time_to_first_byte: since(first_read),
            bytes_sent: exchange.bytes_written,
            bytes_received: exchange.bytes_read,
            outcome: exchange.outcome,
            exact: exchange.exact,
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
        self.begin_request_stamped(body_empty, grace).0
    }

    /// [`begin_request`](Self::begin_request), also returning when the
    /// attempt opened ([`stamp`](Self::stamp) units): the IO stamps the
    /// head's first write with it instead of reading the clock again.
    pub(crate) fn begin_request_stamped(&self, body_empty: bool, grace: Duration) -> (u64, u64) {
        let now = self.stamp(crate::clock::now());
        if self.is_http2() || self.is_upgraded() {
            return (0, now);
        }
        let inner = &self.inner;
        if let Some((idle, limit)) = self.overdue(now, grace) {
            inner.refuse_idle.store(idle, Ordering::Relaxed);
            inner
                .refuse_limit
                .store(limit.min(NO_EXPIRY - 1), Ordering::Release);
        }
        inner.request_defined.store(true, Ordering::Release);
        self.open_exchange(now, false);
        inner.upload_pending.store(!body_empty, Ordering::Release);
        (self.requests(), now)
    }

    /// Whether requests on this connection announce their own attempts.
    pub(crate) fn is_request_defined(&self) -> bool {
        self.inner.request_defined.load(Ordering::Acquire)
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

    /// Whether the current attempt's request is entirely on the wire: its
    /// body ended (or it had none) and every byte hyper took was flushed.
    pub(crate) fn upload_on_wire(&self) -> bool {
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
        self.notify_lost_race();
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
        } else {
            self.notify_lost_race();
        }
        let to = if self.exchange().bytes_read == 0 {
            ExchangeOutcome::ClosedBeforeResponse
        } else {
            ExchangeOutcome::ClosedDuringResponse
        };
        self.transition(ExchangeOutcome::InFlight, to);
        self.on_close();
    }

    /// Tells the observer about a lost race: the current exchange, on a
    /// reused HTTP/1 connection, is failing (EOF, reset, failed write) before
    /// any byte of its response arrived, after the connection had been idle
    /// for the exchange's idle-before time. The server closed the connection
    /// while the request was on its way: like an idle close, an upper bound
    /// of its idle timeout. Not when this crate closed the connection itself
    /// (poisoned, expired, refused) or on a tunnel.
    fn notify_lost_race(&self) {
        if self.outcome() == ExchangeOutcome::InFlight
            && self.requests() > 1
            && !self.exchange().response_started()
            && !self.is_poisoned()
            && !self.was_expired()
            && !self.is_upgraded()
            && !self.is_http2()
        {
            let idle = self.inner.exchange_idle_before.load(Ordering::Acquire);
            self.notify(Event::LostRace(Duration::from_nanos(idle)));
        }
    }

    /// Completes the current exchange if it is still in flight.
    fn complete_current(&self) -> bool {
        if !self.transition(ExchangeOutcome::InFlight, ExchangeOutcome::Completed) {
            return false;
        }
        let inner = &self.inner;
        let at = match (inner.last_read.raw(), inner.caught_up.raw()) {
            (Some(read), Some(caught_up)) => read.min(caught_up),
            (Some(read), None) => read,
            (None, _) => self.stamp(Instant::now()),
        };
        inner.idle_since.set_raw(at);
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
            // The IO needs waking only if the connection's timer would fire
            // too late for this idle period, or between its end of reuse and
            // its close (a healing probe's), or is not armed at all, or fired.
            if let Some((reuse, _)) = self.idle_deadlines_raw() {
                if !self.timer_pending_by(reuse) {
                    self.wake();
                }
            }
        }
        true
    }

    /// Claims the end of exchange `number` for one response-end marker:
    /// `true` for the first claim. The layers of a stack each make a marker
    /// for the same response, innermost first; the first one ends (or
    /// abandons) the exchange, the others only read it, also where no
    /// connection capture is shared between them to tell them apart.
    pub(crate) fn claim_end(&self, number: u64) -> bool {
        // The low 32 bits: consecutive exchanges always differ.
        let number = number as u32;
        self.inner.end_claimed.swap(number, Ordering::AcqRel) != number
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
}
