//! Connection tracking: per-connection state shared between the connection
//! plane and the request plane.
//!
//! [`TrackConnectionsLayer`] wraps a connector (for example hyper-util's
//! `HttpConnector`). Every connection it makes gets a [`ConnectionState`],
//! the live connection: when it connected, bytes written and read, the
//! instants of the last read, write and flush, since when it has been idle,
//! its idle expiry, whether it was poisoned, and a record of its current
//! request/response exchange. The IO ([`TrackedIo`]) publishes that state
//! with hyper-util's `Connected::extra`, so hyper-util copies it into every
//! response's extensions and into the request's connection capture.
//!
//! What users read about one request is its [`ConnectionInfo`]: the
//! connection's id, the request's number on it (reused or not), idle
//! before, connect, upload and time to first byte, and the exchange's
//! bytes, outcome and exactness, from
//! [`ConnectionInfo::of(&response)`](ConnectionInfo::of) or, at any time,
//! [`ConnectionState::info`].
//!
//! # The lifecycle of an exchange
//!
//! An exchange (an *attempt*) is one request handed to one connection. Its
//! boundaries are defined by the request, never guessed from the order of
//! reads and writes:
//!
//! * **Begin.** When [`PhaseTimeout`](crate::phase_timeout) is in the stack,
//!   its request body announces the attempt (its [`ConnectionCapture`]'s
//!   record) when hyper asks it `is_end_stream` on the connection's task,
//!   right before it writes the request head; the connection's tracked IO
//!   takes the announcement at the head's first write, in the same poll of
//!   the same task, and opens the attempt there (never while the previous
//!   request's upload is still on its way). Every decision that must not
//!   rest on a wrong pairing — that nothing was written, which connection to
//!   poison, which exchange a response ends — checks it against the
//!   capture or the response's own connection first; an announcement no
//!   tracked IO took (an untracked or HTTP/2 connection) proves only that
//!   hyper took the request to write. From
//!   then on every byte written and read on that HTTP/1 connection belongs
//!   to this attempt until the next one is announced: the rest of an upload
//!   that continues after a `100 Continue`, a `103 Early Hints` or an early
//!   final response is the same attempt, and any response byte (1xx
//!   included) counts as "the response started". On hyper-util's
//!   composable pools the per-connection service
//!   ([`IdleExpiryConnection`](crate::idle_expiry::IdleExpiryConnection))
//!   opens the attempt as the request passes through it. Without either
//!   (the tracker alone, or under layers that do not wrap the request
//!   body), the IO opens an exchange at a request's first write attempt
//!   after reads; one opened while the previous exchange was still open is
//!   marked inexact ([`ConnectionInfo::is_exact`]), because it may be the same
//!   request going on.
//! * **Upload end.** The request's upload is over when its body reports its
//!   end, or when hyper drops it (hyper stops polling a `Content-Length` body
//!   once it has that many bytes, whether or not the body ever says it
//!   ended), and its bytes are on the wire at hyper's next flush.
//! * **End.** The response side ends the exchange as
//!   [`Completed`](ExchangeOutcome::Completed) when the response body ends
//!   — at head time for an empty body (HEAD, 204, 304, `Content-Length: 0`)
//!   — and the upload is on the wire. An early final response (a `413`
//!   while the upload runs) leaves the exchange open until the upload ends;
//!   dropping that response first abandons it (below), so hyper does not
//!   upload on to a server that already answered. One marker per attempt
//!   owns the end (the innermost of this crate's layers, whether or not
//!   the layers share a capture; the others only read), keyed by the
//!   attempt's number, so the late end of response A never ends request
//!   B's exchange.
//! * EOF or a reset while an exchange is in flight ends it as
//!   [`ClosedBeforeResponse`](ExchangeOutcome::ClosedBeforeResponse) or
//!   [`ClosedDuringResponse`](ExchangeOutcome::ClosedDuringResponse); a
//!   failed write as [`WriteFailed`](ExchangeOutcome::WriteFailed). A write
//!   that fails inside an IO that may fail after part of the same call went
//!   out (anything but a plain TCP socket, TLS in particular) makes the
//!   record inexact: it no longer proves what was written.
//! * The connection is idle from the last byte read for the completed
//!   exchange ([`ConnectionState::idle_since`]): the wire time, which is when
//!   the server's idle clock started, not when a slow caller reached the end
//!   of the body. When the end of the response sat in the socket buffer
//!   until a slow reader drained it, the server may have finished long
//!   before the last read: idle then counts from the last moment the
//!   connection was caught up (its last read of bytes it waited for, or its
//!   last write), which can only overestimate it, never make it look near
//!   zero.
//! * A request on a reused connection that fails (EOF, reset, failed write)
//!   before any byte of its response is a *lost race*: the tracker tells
//!   IdleExpiry how long the connection had been idle, which bounds the
//!   server's idle timeout like an idle close.
//! * When a request-plane layer of this crate gives up on an HTTP/1 exchange
//!   (a timeout, or the response future or body dropped before the end), it
//!   poisons the connection ([`ExchangeOutcome::Abandoned`]): the IO fails
//!   its next read or write at once (it stores the waker of hyper's
//!   connection task and wakes it), hyper closes the socket, and hyper-util's
//!   pool never hands the connection out again. Without this, hyper keeps
//!   writing an abandoned upload until the server closes the connection.
//! * **Upgrades.** A `101 Switching Protocols` (or a successful `CONNECT`)
//!   turns the connection into the caller's tunnel
//!   ([`ConnectionState::is_upgraded`]): from then on the tracker neither
//!   expires it, poisons it, nor reports its closes for learning, and its
//!   reads and writes open no exchange.
//!
//! The tracker also owns the idle expiry mechanism: the deadline, the EOF
//! that closes a known-idle connection at its expiry, the promise of an
//! idle connection to a request ([`IdleExpiryConnection`](crate::idle_expiry::IdleExpiryConnection)
//! claims it) and the last-resort refusal, [`ConnectionExpired`], of a
//! request written well past the deadline. [`IdleExpiry`](crate::idle_expiry)
//! only decides the expiry.
//!
//! Request-plane layers find the state of a request's connection through
//! [`ConnectionCapture::get_or_insert`], the single place in this crate that
//! captures connections (so several layers can share one capture), where
//! they need it before a response exists (PhaseTimeout's announcement and
//! clocks, an upload to abandon); otherwise through the response's own
//! connection, or the connection hyper-util's error names.
//! [`ConnectionInfo::of`] tells any response's connection story;
//! [`WithConnectionInfoLayer`] stores it as a response extension.
//!
//! # Layers that need the tracker
//!
//! [`WithConnectionInfoLayer`] (its service [`WithConnectionInfo`]) and
//! [`IdleExpiryLayer`](crate::idle_expiry::IdleExpiryLayer) do nothing
//! without it: over a connector that is not wrapped by
//! [`TrackConnectionsLayer`] (or a client that hides its connections:
//! reqwest, a composable pool wrapped as a whole) their responses pass
//! through untouched. Neither stays silent about it: the first such
//! response is logged as a `tracing` warning (`IdleExpiryLayer` once per
//! layer and its clones, and it counts them all in
//! [`IdleExpiryStats::untracked_responses`](crate::idle_expiry::IdleExpiryStats::untracked_responses);
//! `WithConnectionInfoLayer`, which keeps no state, once per process).
//! [`PhaseTimeout`](crate::phase_timeout) and
//! [`RetryOnStaleConnection`](crate::retry) work without the tracker, on
//! what they can observe (body frames; error chains), as their docs say.
//!
//! The state lives in an `Arc` owned by the connection; it is dropped with the
//! connection and the last response (or PhaseTimeout timeout error, which
//! carries its attempt's capture) that refers to it. Nothing global grows:
//! the only process-wide item is the id counter.
//!
//! Which clients: the tracker wraps any connector (`Service<Uri>` returning
//! hyper IO), so it fits hyper-util's legacy `Client` and its composable
//! pools. Only the legacy `Client` copies the state into responses and
//! connection captures; elsewhere read it from [`TrackedIo::state`] where the
//! IO is in reach. It does not fit reqwest's `connector_layer`, whose
//! connection type is sealed (it must stay reqwest's own).
//!
//! Counting costs one clock read and a few relaxed atomic operations per
//! successful socket read and per write turn (a flush of a plain TCP
//! socket reuses its last write's stamp), plus storing the connection
//! task's waker when the socket is not ready: about 1.4 k instructions and
//! one allocation per keep-alive request on loopback (the README's
//! Performance section). The per-connection state is under 256 bytes.
//!
//! # Example
//!
//! ```
//! use hyper_util::client::legacy::{connect::HttpConnector, Client};
//! use hyper_util::rt::TokioExecutor;
//! use tower::ServiceBuilder;
//! use tower_conn_lifecycle::track::{TrackConnectionsLayer, WithConnectionInfoLayer};
//!
//! let track = TrackConnectionsLayer::new();
//! let stats = track.stats();
//! let connector = ServiceBuilder::new().layer(track).service(HttpConnector::new());
//! let client = Client::builder(TokioExecutor::new())
//!     .build::<_, http_body_util::Empty<bytes::Bytes>>(connector);
//! let client = ServiceBuilder::new().layer(WithConnectionInfoLayer::new()).service(client);
//! # let _ = client;
//! assert_eq!(stats.opened(), 0);
//! ```

mod capture;
mod exchange;
mod expired;
pub mod future;
mod info;
mod io;
mod service;
mod state;

pub use capture::ConnectionCapture;
pub(crate) use capture::{state_of, Captured};
pub(crate) use exchange::Exchange;
pub(crate) use exchange::{observe_frame, ExchangeEnd, PendingExchange};
pub use exchange::{ExchangeOutcome, TrackedBody};
pub use expired::ConnectionExpired;
pub(crate) use expired::{ConnectionClosed, ConnectionClosing};
pub use info::{ConnectionInfo, WithConnectionInfo, WithConnectionInfoLayer};
pub use io::TrackedIo;
pub use service::{TrackConnections, TrackConnectionsLayer, TrackStats};
pub use state::ConnectionState;
pub(crate) use state::{learned_changed, Event, Limits, Observer};

#[cfg(test)]
mod tests;
