//! One request/response exchange on a tracked connection: how it ended,
//! the crate's record of it, and the request-side marker that ends it.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{Captured, ConnectionCapture, ConnectionState};

/// How an exchange ended, as far as the tracker saw it
/// ([`ConnectionInfo::outcome`](super::ConnectionInfo::outcome)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum ExchangeOutcome {
    /// No exchange has opened on the connection yet.
    None = 0,
    /// The request is being written or its response is arriving.
    InFlight = 1,
    /// The response body ended (or the next exchange opened after it).
    Completed = 2,
    /// Writing the request failed
    /// ([`ConnectionInfo::bytes_sent`](super::ConnectionInfo::bytes_sent)
    /// says how much reached the socket first).
    WriteFailed = 3,
    /// The peer closed or reset the connection before any byte of the
    /// response arrived.
    ClosedBeforeResponse = 4,
    /// The peer closed or reset the connection after part of the response
    /// arrived.
    ClosedDuringResponse = 5,
    /// The request side gave up on the exchange (a timeout, or its response
    /// future or body was dropped before the end): the connection was
    /// poisoned and closed.
    Abandoned = 6,
}

impl ExchangeOutcome {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => ExchangeOutcome::InFlight,
            2 => ExchangeOutcome::Completed,
            3 => ExchangeOutcome::WriteFailed,
            4 => ExchangeOutcome::ClosedBeforeResponse,
            5 => ExchangeOutcome::ClosedDuringResponse,
            6 => ExchangeOutcome::Abandoned,
            _ => ExchangeOutcome::None,
        }
    }
}

/// The crate's record of one exchange (request and response) on a tracked
/// connection, from [`ConnectionState::exchange`]: what the retry
/// classifier and PhaseTimeout's bodies read. Users read the same facts in
/// [`ConnectionInfo`](super::ConnectionInfo).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Exchange {
    pub(super) number: u64,
    pub(super) bytes_written: u64,
    pub(super) bytes_read: u64,
    pub(super) outcome: ExchangeOutcome,
    pub(super) exact: bool,
}

impl Exchange {
    /// Its number on the connection (1 for a new connection; 0 if none has
    /// opened yet).
    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// Whether the connection had carried an earlier exchange.
    pub(crate) fn is_reused(&self) -> bool {
        self.number > 1
    }

    /// Bytes of this exchange written to the socket.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Bytes of this exchange read from the socket.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Whether any byte of the response arrived.
    pub(crate) fn response_started(&self) -> bool {
        self.bytes_read > 0
    }

    /// How it ended, or [`InFlight`](ExchangeOutcome::InFlight).
    pub(crate) fn outcome(&self) -> ExchangeOutcome {
        self.outcome
    }

    /// Whether the byte counts are proof of what reached the wire (see
    /// [`ConnectionInfo::is_exact`](super::ConnectionInfo::is_exact)).
    pub(crate) fn is_exact(&self) -> bool {
        self.exact
    }

    /// Whether the record proves that no byte of this exchange's request
    /// was accepted by the connection.
    pub(crate) fn nothing_written(&self) -> bool {
        self.exact && self.bytes_written == 0
    }
}

/// The request side of the tracker: ends the exchange whose response it
/// follows, or abandons it (poisoning the connection) when dropped first.
///
/// Every response body of this crate's request-plane layers holds one, but
/// only one per attempt *owns* the exchange (the innermost layer's: it sees
/// the response first, see [`ConnectionCapture::take_marker`]); the others
/// only read the record. Marks are keyed by attempt number, so a late mark
/// never touches a later exchange.
#[derive(Debug, Default)]
pub(crate) struct ExchangeEnd {
    target: Option<(ConnectionState, u64)>,
    owner: bool,
}

impl ExchangeEnd {
    /// A marker that does nothing (untracked connection).
    pub(crate) fn none() -> Self {
        ExchangeEnd {
            target: None,
            owner: false,
        }
    }

    /// The marker for the response to the attempt `capture` records (or,
    /// without one, the response's own connection). Ends the exchange at
    /// once when the body is already complete (HEAD, 204, 304,
    /// `Content-Length: 0`) and the upload is over; marks the connection
    /// upgraded on `101 Switching Protocols` or a successful `CONNECT`.
    ///
    /// A marker that does not own the exchange does nothing unless `reads`:
    /// then it keeps the exchange for [`http1_exchange`](Self::http1_exchange).
    pub(crate) fn for_request<B: Body>(
        capture: Option<&ConnectionCapture>,
        response: &http::Response<B>,
        reads: bool,
    ) -> Self {
        let owner = capture.is_none_or(ConnectionCapture::take_marker);
        if !owner && !reads {
            return Self::none();
        }
        let connect = capture.is_some_and(ConnectionCapture::is_connect);
        // The paired attempt, confirmed by the response's own connection
        // (hyper-util puts a tracked connection's state in the extensions:
        // a cheap check that the pairing was right). A direct capture's
        // attempt was opened by the connection's service as this request
        // passed: it needs no confirmation.
        let paired = capture.and_then(|capture| {
            let direct = capture.is_direct();
            capture.begun().filter(|(state, _)| {
                direct
                    || response
                        .extensions()
                        .get::<ConnectionState>()
                        .is_some_and(|r| r.id() == state.id())
            })
        });
        let (state, number) = match paired {
            Some((state, number)) => (state.clone(), number),
            None => {
                let Some(state) = response.extensions().get::<ConnectionState>() else {
                    return Self::none();
                };
                // Without an announced attempt: hyper returns a connection
                // whose response had no body to the pool right away; if
                // another request has already opened exchange `number`, it
                // has not read a byte yet, while ours has.
                let mut number = state.requests();
                if number > 1 && !state.exchange().response_started() {
                    number -= 1;
                }
                (state.clone(), number)
            }
        };
        // One owner per exchange, also among layers that share no capture
        // (a layer took none): the first marker made, the innermost layer's.
        // Claimed by a capture's owner too, for the capture-less layers
        // above it.
        let owner = owner && (number == 0 || state.is_http2() || state.claim_end(number));
        if !owner && !reads {
            return Self::none();
        }
        Self::for_attempt(state, number, owner, connect, response)
    }

    /// The marker for attempt `number` on `state` (`owner`: this marker
    /// ends or abandons it; `connect`: the request was a CONNECT).
    pub(crate) fn for_attempt<B: Body>(
        state: ConnectionState,
        number: u64,
        owner: bool,
        connect: bool,
        response: &http::Response<B>,
    ) -> Self {
        if response.version() == http::Version::HTTP_2 {
            // A tracker inside TLS learns it here at the latest.
            state.set_http2();
        }
        let status = response.status();
        if status == http::StatusCode::SWITCHING_PROTOCOLS || (connect && status.is_success()) {
            if owner {
                state.set_upgraded();
            }
            return Self::none();
        }
        if number == 0 || state.is_http2() {
            return Self::none();
        }
        let mut end = ExchangeEnd {
            target: Some((state, number)),
            owner,
        };
        if response.body().is_end_stream() {
            end.end();
        }
        end
    }

    /// This exchange's snapshot while the response is still arriving on an
    /// HTTP/1 connection, where the socket carries only this exchange (on
    /// HTTP/2 it carries every stream: `None`, as for an untracked or ended
    /// exchange).
    pub(crate) fn http1_exchange(&self) -> Option<Exchange> {
        let (state, number) = self.target.as_ref()?;
        state.exchange_of(*number)
    }

    /// The response ended normally. The owner ends the exchange; if the
    /// request's upload is still running (the server answered early), the
    /// exchange stays open until the upload ends, and dropping the marker
    /// first abandons it (hyper would otherwise upload on to a server that
    /// has already answered).
    pub(crate) fn end(&mut self) {
        if let Some((state, number)) = self.target.take() {
            if self.owner && !state.end_exchange(number) {
                self.target = Some((state, number));
            }
        }
    }

    /// Poisons the connection if the owned exchange has not ended yet.
    pub(crate) fn abandon(&mut self) {
        if let Some((state, number)) = self.target.take() {
            if self.owner {
                state.abandon(number);
            }
        }
    }
}

impl Drop for ExchangeEnd {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// A request's attempt record (its connection capture) while its response
/// future waits, which abandons the exchange when the future is dropped (or
/// times out) before the response head: the request side of the tracker for
/// the time before a response exists. The future reads the capture through
/// it ([`capture`](Self::capture)): one handle, not a second reference count.
#[derive(Debug)]
pub(crate) struct PendingExchange {
    capture: Option<ConnectionCapture>,
    /// Nothing to abandon any more (the head arrived, or the abandon ran).
    disarmed: bool,
}

impl PendingExchange {
    pub(crate) fn new(capture: Option<ConnectionCapture>) -> Self {
        PendingExchange {
            capture,
            disarmed: false,
        }
    }

    /// The head arrived: nothing to abandon any more (the capture stays
    /// readable).
    pub(crate) fn disarm(&mut self) {
        self.disarmed = true;
    }

    /// The attempt's capture, if it has one.
    pub(crate) fn capture(&self) -> Option<&ConnectionCapture> {
        self.capture.as_ref()
    }

    /// Takes the capture away (disarmed: nothing left to abandon).
    pub(crate) fn take_capture(&mut self) -> Option<ConnectionCapture> {
        self.disarmed = true;
        self.capture.take()
    }
}

impl PendingExchange {
    /// The request gave up (timed out) before its head: poisons its
    /// connection if its exchange is in flight. Never an HTTP/2 connection:
    /// hyper resets the abandoned stream alone, and the connection's other
    /// streams (and later requests) carry on. Once.
    pub(crate) fn abandon(&mut self) {
        if std::mem::replace(&mut self.disarmed, true) {
            return;
        }
        let Some(capture) = &self.capture else {
            return;
        };
        if let Some((state, number)) = capture.verified_begun() {
            // The attempt announced itself: abandon exactly it.
            if state.abandon(number) {
                capture.poison();
            }
            return;
        }
        if capture.is_hooked() && !capture.is_announced() {
            // The request would have announced itself before its head was
            // written: it was not, so hyper drops it unwritten.
            return;
        }
        if let Captured::Tracked(state) = capture.get() {
            // HTTP/2 streams are abandoned by hyper itself (RST_STREAM); the
            // connection is shared and stays.
            if state.in_flight() && !state.is_http2() {
                state.abandon(state.requests());
                capture.poison();
            }
        }
    }
}

impl Drop for PendingExchange {
    fn drop(&mut self) {
        self.abandon();
    }
}

pin_project! {
    /// The response body of [`WithConnectionInfoLayer`](super::WithConnectionInfoLayer):
    /// the inner body unchanged, ending the tracker's exchange when it ends
    /// and poisoning the connection when dropped before its end.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        end: ExchangeEnd,
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for TrackedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<B: Body> TrackedBody<B> {
    pub(crate) fn new(inner: B, end: ExchangeEnd) -> Self {
        TrackedBody { inner, end }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

/// Ends `end`'s exchange if `frame` (just returned by `body`) was its last.
pub(crate) fn observe_frame<B: Body, T, E>(
    body: Pin<&mut B>,
    frame: &Poll<Option<Result<T, E>>>,
    end: &mut ExchangeEnd,
) {
    if end.target.is_none() {
        // Nothing to mark (untracked, not the owner, or already ended).
        return;
    }
    match frame {
        Poll::Ready(None) => end.end(),
        Poll::Ready(Some(Ok(_))) if body.is_end_stream() => end.end(),
        // An error from the body is the connection failing: the IO records
        // how; nothing to mark here.
        Poll::Ready(Some(Err(_))) => end.target = None,
        _ => {}
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = this.inner.as_mut().poll_frame(cx);
        observe_frame(this.inner, &frame, this.end);
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    /// Markers made by layers that share no capture: the first (the
    /// innermost layer's) owns the exchange, the others only read it (or do
    /// nothing, when they do not read).
    #[test]
    fn one_owner_per_exchange_without_a_shared_capture() {
        let now = Instant::now();
        let state = ConnectionState::new(now, now);
        state.open_exchange(state.stamp(now), false);
        let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from("ok")));
        response.extensions_mut().insert(state.clone());
        let inner = ExchangeEnd::for_request(None, &response, false);
        let reader = ExchangeEnd::for_request(None, &response, true);
        let outer = ExchangeEnd::for_request(None, &response, false);
        assert!(inner.owner && inner.target.is_some());
        assert!(!reader.owner && reader.http1_exchange().is_some());
        assert!(outer.target.is_none());
        let mut inner = inner;
        inner.end();
        drop((inner, reader, outer));
        assert_eq!(state.exchange().outcome(), ExchangeOutcome::Completed);
        // The next exchange (a byte of its response read) has an owner of
        // its own.
        state.open_exchange(state.stamp(Instant::now()), false);
        state.on_read(1, true, true);
        let next = ExchangeEnd::for_request(None, &response, false);
        assert!(next.owner && next.target.is_some());
        assert!(!state.is_poisoned());
    }
}
