//! Per-connection state shared by the tracking IO and request-plane layers.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::{Origin, Stamp};

/// Process-wide connection id counter (a counter, not a map: it never grows).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

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
/// Exchange counting (requests, idle time, upload and first-byte times) is
/// exact for HTTP/1.1, where a request's first write follows the previous
/// response's reads. For HTTP/2 connections it counts bursts of writes that
/// follow reads, which is only an approximation of streams.
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
    requests: AtomicU64,
    bytes_written: AtomicU64,
    bytes_read: AtomicU64,
    last_write: Stamp,
    last_read: Stamp,
    last_flush: Stamp,
    exchange_start: Stamp,
    exchange_first_read: Stamp,
    exchange_idle_before: AtomicU64,
    in_flight: AtomicBool,
    closed: AtomicBool,
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
                in_flight: AtomicBool::new(false),
                closed: AtomicBool::new(false),
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

    /// Requests (exchanges) started on this connection so far.
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

    /// When the client last flushed the connection successfully.
    ///
    /// hyper flushes the IO only after its own write buffer is empty, so a
    /// flush at or after the last write means every queued byte reached the
    /// socket.
    pub fn last_flush(&self) -> Option<Instant> {
        self.load(&self.inner.last_flush)
    }

    /// Whether an exchange is in flight: set when a request's first byte is
    /// written; cleared when the connection closes, or when the response body
    /// ends under a request-plane layer of this crate
    /// ([`PhaseTimeout`](crate::phase_timeout::PhaseTimeout)). Without such a
    /// layer it stays set after the first request.
    pub fn in_flight(&self) -> bool {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Whether the connection's IO has been dropped or has seen EOF or an error.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Snapshot of the current exchange, for a response that just arrived.
    pub fn info(&self) -> super::ConnectionInfo {
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

    pub(crate) fn on_write(&self, n: usize, new_exchange: bool) {
        let now = Instant::now();
        let origin = &self.inner.origin;
        if new_exchange {
            let idle = self
                .last_read()
                .map_or(Duration::ZERO, |r| now.saturating_duration_since(r));
            self.inner.exchange_idle_before.store(
                u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Release,
            );
            self.inner.exchange_first_read.clear();
            self.inner.exchange_start.set(origin, now);
            self.inner.in_flight.store(true, Ordering::Release);
            self.inner.requests.fetch_add(1, Ordering::AcqRel);
        }
        self.inner
            .bytes_written
            .fetch_add(n as u64, Ordering::Relaxed);
        self.inner.last_write.set(origin, now);
    }

    pub(crate) fn on_read(&self, n: usize, first_of_response: bool) {
        let now = Instant::now();
        let origin = &self.inner.origin;
        if first_of_response {
            self.inner.exchange_first_read.set(origin, now);
        }
        self.inner.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        self.inner.last_read.set(origin, now);
    }

    pub(crate) fn on_flush(&self) {
        self.inner
            .last_flush
            .set(&self.inner.origin, Instant::now());
    }

    pub(crate) fn on_close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.in_flight.store(false, Ordering::Release);
    }

    /// Marks the current exchange finished (the response body ended).
    pub(crate) fn mark_idle(&self) {
        self.inner.in_flight.store(false, Ordering::Release);
    }
}

impl fmt::Debug for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionState")
            .field("id", &self.id())
            .field("connect", &self.connect_duration())
            .field("requests", &self.requests())
            .field("bytes_written", &self.bytes_written())
            .field("bytes_read", &self.bytes_read())
            .field("in_flight", &self.in_flight())
            .field("closed", &self.is_closed())
            .finish()
    }
}
