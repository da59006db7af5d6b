//! The one safe-to-retry predicate, and the facts it decides from.
//!
//! [`classify`] reads like the rule table in the [module docs](super): it
//! takes what the error chain says ([`Signal`]) and what the tracker saw on
//! the wire for this attempt ([`Wire`]), plus whether the request may be
//! repeated by its own semantics, and answers with the [`RetryReason`] that
//! makes a retry safe or the [`Rule`] that refuses it. Everything that
//! gathers those facts from real errors and connections sits below it; the
//! policy around it only adds the limits (body replay, attempts, budget).

use std::error::Error;
use std::fmt;
use std::io;

use http::{HeaderName, Method, Request};

use crate::phase_timeout::{Elapsed, Phase};
use crate::track::ConnectionExpired;
use crate::track::{Captured, ConnectionCapture, ConnectionState, Exchange, ExchangeOutcome};

/// The request header that makes a non-idempotent request safe to retry
/// after a stale-connection failure: `Idempotency-Key` (IETF
/// `draft-ietf-httpapi-idempotency-key-header`). Its presence counts; the
/// value is the server's business.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Why a request was retried: the rule that proved it safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryReason {
    /// Nothing of the request had been written: an
    /// [`IdleExpiry`](crate::idle_expiry) refusal, hyper's "canceled", or a
    /// connection that failed before its first byte went out (that last
    /// one is proven by the tracker only: without it such a failure counts
    /// as written).
    NothingWritten,
    /// HTTP/2 `REFUSED_STREAM`: the server did not process the stream
    /// (RFC 9113 §8.7).
    RefusedStream,
    /// HTTP/2 graceful `GOAWAY` whose last stream id is below this stream's:
    /// the server did not process it (RFC 9113 §6.8).
    GoAway,
    /// A reused HTTP/1 connection was reset or closed before any byte of the
    /// response arrived (the stale keep-alive race), and the request is
    /// idempotent or carries an [`Idempotency-Key`](IDEMPOTENCY_KEY).
    /// Decided with the tracker only; without it the same failure is
    /// [`ConnectionClosed`](Self::ConnectionClosed).
    StaleConnection,
    /// Without the tracker: the connection was reset or closed before a
    /// response head, and the request is idempotent or carries an
    /// `Idempotency-Key`. Whether the connection was reused, and whether
    /// part of the response had arrived, were unknown.
    ConnectionClosed,
    /// The connect phase timed out
    /// ([`Phase::Connect`](crate::phase_timeout::Phase::Connect)); only with
    /// [`retry_connect_timeouts`](super::RetryOnStaleConnectionLayer::retry_connect_timeouts).
    ConnectTimeout,
}

impl RetryReason {
    /// A short lowercase description.
    pub fn as_str(&self) -> &'static str {
        match self {
            RetryReason::NothingWritten => "nothing of the request was written",
            RetryReason::RefusedStream => "HTTP/2 REFUSED_STREAM",
            RetryReason::GoAway => "HTTP/2 GOAWAY below this stream",
            RetryReason::StaleConnection => "reused connection closed before any response byte",
            RetryReason::ConnectionClosed => {
                "connection closed before a response head (reuse unknown)"
            }
            RetryReason::ConnectTimeout => "connect timed out",
        }
    }
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rule that refused a retry; see [`NotRetried::rule`](super::NotRetried::rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// A timeout (send, read, total, or any other) is not retried: the
    /// server may still be processing the request. (The one exception: the
    /// tracker saw the attempt write nothing on a connection that is now
    /// closed.)
    Timeout,
    /// A connect timeout, with connect-timeout retries off (the default).
    ConnectTimeout,
    /// The connection could not be established: an error about the origin,
    /// not a stale connection.
    ConnectFailed,
    /// The error is not a connection failure (a protocol, body or user
    /// error, or one this layer does not recognise).
    NotConnectionFailure,
    /// Part of the response had arrived: the server was processing the
    /// request. Decided with the tracker only (any response byte, 1xx and
    /// partial heads included); without it only a complete response head is
    /// seen, and a failure before one falls to the idempotency rule.
    ResponseStarted,
    /// The connection was new: its failure is a real error, not a stale
    /// connection. Decided with the tracker only; without it whether the
    /// connection was new is unknown, and an idempotent or keyed request is
    /// retried ([`RetryReason::ConnectionClosed`]).
    FreshConnection,
    /// The request is not idempotent and carries no
    /// [`Idempotency-Key`](IDEMPOTENCY_KEY): the server may have processed it.
    NotIdempotent,
    /// The failure was retry-safe, but the request body had gone past the
    /// replay buffer and cannot be sent again.
    BodyNotReplayable,
    /// The failure was retry-safe, but the configured number of retries had
    /// been made.
    RetriesExhausted,
    /// The failure was retry-safe, but the retry budget was exhausted.
    BudgetExhausted,
    /// The client is draining ([`Draining`](crate::drain::Draining),
    /// nothing written) or cut the request at its drain's deadline
    /// ([`DrainCut`](crate::drain::DrainCut)): it takes no more requests,
    /// so a retry belongs on another client.
    Draining,
}

impl Rule {
    /// The rule's name in `snake_case`, for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Rule::Timeout => "timeout",
            Rule::ConnectTimeout => "connect_timeout",
            Rule::ConnectFailed => "connect_failed",
            Rule::NotConnectionFailure => "not_connection_failure",
            Rule::ResponseStarted => "response_started",
            Rule::FreshConnection => "fresh_connection",
            Rule::NotIdempotent => "not_idempotent",
            Rule::BodyNotReplayable => "body_not_replayable",
            Rule::RetriesExhausted => "retries_exhausted",
            Rule::BudgetExhausted => "budget_exhausted",
            Rule::Draining => "draining",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the error chain says about a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Any timeout but the connect phase's.
    Timeout,
    /// [`Elapsed`] in the connect phase.
    ConnectTimeout,
    /// Proof that nothing was written: [`ConnectionExpired`], hyper's
    /// "canceled".
    NotWritten,
    /// HTTP/2 `RST_STREAM(REFUSED_STREAM)` from the server.
    RefusedStream,
    /// HTTP/2 graceful `GOAWAY` from the server, for a stream above its last
    /// processed one.
    GoAway,
    /// hyper-util could not establish a connection.
    ConnectFailed,
    /// The client is draining, or cut the request at its drain's deadline.
    Draining,
    /// The connection was reset or closed: reset, abort, broken pipe, EOF.
    Closed,
    /// Anything else.
    Other,
}

/// What the tracker saw of this attempt on its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wire {
    /// No tracker (or HTTP/2, where its exchange counting is approximate).
    Unknown,
    /// The attempt wrote no byte (its connection is still open).
    NothingWritten,
    /// The attempt wrote no byte and its connection is closed: no byte of
    /// it can ever be written.
    NeverWritten,
    /// The attempt wrote at least one byte.
    Written {
        /// The connection had carried an earlier exchange.
        reused: bool,
        /// At least one byte of the response arrived.
        response_started: bool,
    },
}

/// Everything [`classify`] decides from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Facts {
    pub(crate) signal: Signal,
    pub(crate) wire: Wire,
    /// The method is idempotent or the request carries an `Idempotency-Key`.
    pub(crate) idempotent: bool,
}

/// The safe-to-retry predicate (first match wins):
///
/// 1. timeouts never, except connect timeouts when enabled, and a timeout
///    whose attempt the tracker saw write nothing on a connection now
///    closed (nothing of it can ever reach the server);
/// 2. always when nothing was written, on `REFUSED_STREAM`, and on a
///    graceful `GOAWAY` above the stream;
/// 3. never when the connection could not be established, or the error is
///    not a connection failure;
/// 4. a reset or close: retry-safe when the tracker saw nothing written;
///    never once a response byte arrived or on a new connection; otherwise
///    (reused, or reuse unknown) only for idempotent or keyed requests.
pub(crate) fn classify(facts: &Facts, retry_connect_timeouts: bool) -> Result<RetryReason, Rule> {
    match facts.signal {
        Signal::Timeout if facts.wire == Wire::NeverWritten => Ok(RetryReason::NothingWritten),
        Signal::Timeout => Err(Rule::Timeout),
        Signal::ConnectTimeout if retry_connect_timeouts => Ok(RetryReason::ConnectTimeout),
        Signal::ConnectTimeout => Err(Rule::ConnectTimeout),
        Signal::NotWritten => Ok(RetryReason::NothingWritten),
        Signal::RefusedStream => Ok(RetryReason::RefusedStream),
        Signal::GoAway => Ok(RetryReason::GoAway),
        Signal::ConnectFailed => Err(Rule::ConnectFailed),
        Signal::Draining => Err(Rule::Draining),
        Signal::Other => Err(Rule::NotConnectionFailure),
        Signal::Closed => match facts.wire {
            Wire::NothingWritten | Wire::NeverWritten => Ok(RetryReason::NothingWritten),
            Wire::Written {
                response_started: true,
                ..
            } => Err(Rule::ResponseStarted),
            Wire::Written { reused: false, .. } => Err(Rule::FreshConnection),
            Wire::Written { reused: true, .. } if facts.idempotent => {
                Ok(RetryReason::StaleConnection)
            }
            Wire::Unknown if facts.idempotent => Ok(RetryReason::ConnectionClosed),
            Wire::Written { .. } | Wire::Unknown => Err(Rule::NotIdempotent),
        },
    }
}

// ---------------------------------------------------------------------------
// Gathering the facts.

/// The facts about a failed attempt of `req` (the request as it will be
/// re-sent, whose [`ConnectionCapture`] belongs to the failed attempt).
pub(crate) fn facts<B>(req: &Request<B>, err: &(dyn Error + 'static)) -> Facts {
    Facts {
        signal: signal(err),
        wire: wire(req.extensions().get::<ConnectionCapture>(), err),
        idempotent: is_idempotent(req.method()) || req.headers().contains_key(IDEMPOTENCY_KEY),
    }
}

/// GET, HEAD, OPTIONS, TRACE, PUT and DELETE (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The connection hyper-util reports on its error, which is exactly the one
/// the error happened on (the capture may have moved on after one of its
/// transparent retries).
fn connection_of(err: &(dyn Error + 'static)) -> Option<Captured> {
    let client = crate::find_cause::<hyper_util::client::legacy::Error>(err)?;
    let connected = client.connect_info()?;
    Some(match crate::track::state_of(connected) {
        Some(state) => Captured::Tracked(state),
        None => Captured::Untracked,
    })
}

/// What the tracker saw of the failed attempt on the wire. Each answer
/// names the fact it trusts:
///
/// | fact | wire |
/// |---|---|
/// | the attempt announced itself on a tracked HTTP/1 connection, and its exact record shows 0 bytes accepted | nothing written (never, once the connection is closed) |
/// | … its record shows bytes, or is inexact (a write failed inside TLS) | written: reused? any response byte (1xx and partial heads included) since it began? |
/// | the request carries the announcing hook, hyper-util gave it a connection, and it never announced itself | nothing written: hyper never took it to write |
/// | no capture in reach (a bodiless request takes none in this layer; PhaseTimeout's comes with its timeouts only): the latest exchange of the connection hyper-util's error names | as above: an exchange that ended before (or none) is nothing written by this attempt, which opens its own at its first write |
/// | … on a connection whose requests do not announce themselves, the exchange inferred from the order of reads and writes (exact only) | as above |
/// | HTTP/2, no tracker, or an inexact inferred record | unknown |
///
/// The latest exchange of the error's connection is the attempt's own
/// record whenever the attempt wrote anything: hyper writes one request at
/// a time on an HTTP/1 connection, and the tracked IO opens an exchange at
/// a request's first write (at its announcement when it has one); a write
/// the tracker cannot pair with a new attempt counts for the exchange in
/// flight, whose record then shows bytes (written, never "nothing").
pub(crate) fn wire(capture: Option<&ConnectionCapture>, err: &(dyn Error + 'static)) -> Wire {
    // The attempt's record: the request's own capture (the caller's), or
    // the one a PhaseTimeout timeout carries (its request took one).
    // Without either, the error's connection tells (below).
    let capture = capture.or_else(|| crate::find_cause::<Elapsed>(err)?.attempt());
    if let Some(capture) = capture {
        if let Some((state, number)) = capture.verified_begun() {
            return attempt_wire(state, number);
        }
        if capture.is_announced() {
            // hyper took it to write, and no tracked IO (confirmed by the
            // capture) opened its record: an untracked or HTTP/2
            // connection.
            return Wire::Unknown;
        }
        if capture.is_hooked() {
            // hyper-util fills the capture before it hands the request to
            // its connection, and hyper announces a request before writing
            // its head: filled but never announced is never written. Only
            // the capture itself counts, not the error's connection: a
            // client that never fills captures (reqwest) proves nothing, and
            // reports connections of its own this capture never saw.
            return match capture.get() {
                Captured::Tracked(state) if state.is_closed() => Wire::NeverWritten,
                Captured::Tracked(_) | Captured::Untracked => Wire::NothingWritten,
                Captured::Pending => Wire::Unknown,
            };
        }
    }
    let captured = connection_of(err)
        .unwrap_or_else(|| capture.map_or(Captured::Pending, ConnectionCapture::get));
    inferred_wire(&captured)
}

/// The record of attempt `number` on `state`.
fn attempt_wire(state: &ConnectionState, number: u64) -> Wire {
    match state.exchange_of(number) {
        Some(exchange) => record_wire(&exchange, exchange.nothing_written(), state.is_closed()),
        None => Wire::Unknown,
    }
}

/// A record's answer: `nothing_written` is what the caller could prove
/// from it; a connection now `closed` can never write the rest.
fn record_wire(exchange: &Exchange, nothing_written: bool, closed: bool) -> Wire {
    match (nothing_written, closed) {
        (true, true) => Wire::NeverWritten,
        (true, false) => Wire::NothingWritten,
        (false, _) => Wire::Written {
            reused: exchange.is_reused(),
            response_started: exchange.response_started(),
        },
    }
}

/// What the tracker inferred of the latest exchange on `captured`, for a
/// request that does not announce itself.
///
/// The IO opens an exchange at a request's first write attempt, so an
/// attempt that never tried to write leaves the previous exchange current
/// (its outcome `Completed`), or none at all on a new connection.
fn inferred_wire(captured: &Captured) -> Wire {
    let Captured::Tracked(state) = captured else {
        return Wire::Unknown;
    };
    if state.is_http2() {
        return Wire::Unknown;
    }
    let exchange = state.exchange();
    // Where requests announce themselves (a request body's hook: every
    // exchange is one request's, opened at its head's first write, and a
    // read→write turn inside it is the same request going on), an inexact
    // record only undercounts its bytes (a write failed inside TLS): like
    // an announced attempt's own record, it never proves nothing written,
    // and still tells reuse and response bytes. Elsewhere an inexact record
    // may be another request's, and proves nothing.
    if !exchange.is_exact() && !state.is_request_defined() {
        return Wire::Unknown;
    }
    let nothing_written = match exchange.outcome() {
        ExchangeOutcome::None | ExchangeOutcome::Completed => true,
        _ => exchange.nothing_written(),
    };
    record_wire(&exchange, nothing_written, state.is_closed())
}

/// What the error chain says, strongest signal first.
pub(crate) fn signal(err: &(dyn Error + 'static)) -> Signal {
    #[derive(Default)]
    struct Seen {
        timeout: bool,
        connect_timeout: bool,
        not_written: bool,
        refused: bool,
        go_away: bool,
        connect: bool,
        closed: bool,
        draining: bool,
    }
    let mut seen = Seen::default();
    for e in crate::causes(err) {
        if e.is::<crate::drain::Draining>() || e.is::<crate::drain::DrainCut>() {
            seen.draining = true;
        } else if e.is::<ConnectionExpired>()
            || e.is::<crate::track::ConnectionClosing>()
            || e.is::<crate::track::ConnectionClosed>()
            || e.is::<crate::client::Http2Closed>()
            || e.is::<crate::client::CheckoutsRefused>()
            || e.is::<crate::client::Http1Closed>()
        {
            seen.not_written = true;
        } else if let Some(elapsed) = e.downcast_ref::<Elapsed>() {
            if elapsed.phase() == Phase::Connect {
                seen.connect_timeout = true;
            } else {
                seen.timeout = true;
            }
        } else if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            seen.not_written |= hyper.is_canceled();
            seen.timeout |= hyper.is_timeout();
            // The connection's task ended without answering: the
            // connection is gone, as for a close (which proves nothing of
            // what was sent: only an idempotent request is retried).
            seen.closed |= hyper.is_incomplete_message()
                || hyper.is_closed()
                || crate::is_dispatch_gone(hyper);
        } else if let Some(h2) = e.downcast_ref::<h2::Error>() {
            let remote = h2.is_remote();
            seen.refused |=
                remote && h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            // Only a graceful GOAWAY proves the stream unprocessed: h2 gives
            // a GOAWAY with an error code to every open stream when the
            // connection then fails, processed or not.
            seen.go_away |= remote && h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR);
        } else if let Some(client) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            seen.connect |= client.is_connect();
        } else if e.is::<crate::client::ConnectError>() {
            seen.connect = true;
        } else if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.kind() {
                // `ConnectTimeout`'s own shape: the `Elapsed` inside (next in
                // the chain) says which phase.
                io::ErrorKind::TimedOut if io.get_ref().is_some_and(|e| e.is::<Elapsed>()) => {}
                io::ErrorKind::TimedOut => seen.timeout = true,
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::NotConnected => seen.closed = true,
                _ => {}
            }
        }
    }
    if seen.draining {
        Signal::Draining
    } else if seen.timeout {
        Signal::Timeout
    } else if seen.connect_timeout {
        Signal::ConnectTimeout
    } else if seen.not_written {
        Signal::NotWritten
    } else if seen.refused {
        Signal::RefusedStream
    } else if seen.go_away {
        Signal::GoAway
    } else if seen.connect {
        Signal::ConnectFailed
    } else if seen.closed {
        Signal::Closed
    } else {
        Signal::Other
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::BoxError;

    const W: Wire = Wire::NothingWritten;
    /// Nothing written, connection closed.
    const NW: Wire = Wire::NeverWritten;
    const U: Wire = Wire::Unknown;
    /// Written on a reused connection, nothing of the response yet.
    const STALE: Wire = Wire::Written {
        reused: true,
        response_started: false,
    };
    const FRESH: Wire = Wire::Written {
        reused: false,
        response_started: false,
    };
    const STARTED: Wire = Wire::Written {
        reused: true,
        response_started: true,
    };
    const FRESH_STARTED: Wire = Wire::Written {
        reused: false,
        response_started: true,
    };

    fn facts(signal: Signal, wire: Wire, idempotent: bool) -> Facts {
        Facts {
            signal,
            wire,
            idempotent,
        }
    }

    /// (signal, wire, idempotent or keyed, connect-timeout retries, expected)
    type Row = (Signal, Wire, bool, bool, Result<RetryReason, Rule>);

    #[test]
    fn the_rule_table() {
        use RetryReason as R;
        use Signal::*;
        #[rustfmt::skip]
        let table: &[Row] = &[
            // Timeouts: never, whatever was written, unless nothing was and
            // the connection is gone (no late write can happen).
            (Timeout, W, true, true, Err(Rule::Timeout)),
            (Timeout, STALE, true, true, Err(Rule::Timeout)),
            (Timeout, U, true, true, Err(Rule::Timeout)),
            (Timeout, FRESH, false, false, Err(Rule::Timeout)),
            (Timeout, NW, false, false, Ok(R::NothingWritten)),
            // Connect timeouts: only when enabled.
            (ConnectTimeout, U, false, false, Err(Rule::ConnectTimeout)),
            (ConnectTimeout, U, false, true, Ok(R::ConnectTimeout)),
            // Nothing written, REFUSED_STREAM, GOAWAY: always, any method.
            (NotWritten, U, false, false, Ok(R::NothingWritten)),
            (NotWritten, FRESH, false, false, Ok(R::NothingWritten)),
            (NotWritten, STARTED, false, false, Ok(R::NothingWritten)),
            (RefusedStream, U, false, false, Ok(R::RefusedStream)),
            (GoAway, U, false, false, Ok(R::GoAway)),
            // Could not connect; not a connection failure: never.
            (ConnectFailed, U, true, true, Err(Rule::ConnectFailed)),
            (Other, W, true, true, Err(Rule::NotConnectionFailure)),
            (Other, NW, true, true, Err(Rule::NotConnectionFailure)),
            (Other, STALE, true, true, Err(Rule::NotConnectionFailure)),
            // Reset / EOF, tracker present.
            (Closed, W, false, false, Ok(R::NothingWritten)),
            (Closed, NW, false, false, Ok(R::NothingWritten)),
            (Closed, STALE, true, false, Ok(R::StaleConnection)),
            (Closed, STALE, false, false, Err(Rule::NotIdempotent)),
            (Closed, FRESH, true, false, Err(Rule::FreshConnection)),
            (Closed, FRESH, false, false, Err(Rule::FreshConnection)),
            (Closed, STARTED, true, false, Err(Rule::ResponseStarted)),
            (Closed, FRESH_STARTED, true, false, Err(Rule::ResponseStarted)),
            // Reset / EOF without the tracker: idempotency alone.
            (Closed, U, true, false, Ok(R::ConnectionClosed)),
            (Closed, U, false, false, Err(Rule::NotIdempotent)),
        ];
        for &(signal, wire, idempotent, connect, expected) in table {
            let f = facts(signal, wire, idempotent);
            assert_eq!(
                classify(&f, connect),
                expected,
                "{f:?}, connect timeouts {connect}"
            );
        }
    }

    #[test]
    fn idempotent_methods_and_the_key() {
        for (method, idempotent) in [
            (Method::GET, true),
            (Method::HEAD, true),
            (Method::OPTIONS, true),
            (Method::TRACE, true),
            (Method::PUT, true),
            (Method::DELETE, true),
            (Method::POST, false),
            (Method::PATCH, false),
            (Method::CONNECT, false),
            (Method::from_bytes(b"PURGE").unwrap(), false),
        ] {
            assert_eq!(is_idempotent(&method), idempotent, "{method}");
        }
        let err = io::Error::from(io::ErrorKind::ConnectionReset);
        let post = Request::post("/").body(()).unwrap();
        assert!(!super::facts(&post, &err).idempotent);
        let keyed = Request::post("/")
            .header("Idempotency-Key", "k-1")
            .body(())
            .unwrap();
        assert!(super::facts(&keyed, &err).idempotent);
        // No capture, no hyper-util error: reuse unknown.
        assert_eq!(super::facts(&keyed, &err).wire, Wire::Unknown);
    }

    fn boxed(e: impl Error + Send + Sync + 'static) -> BoxError {
        Box::new(e)
    }

    /// An error whose `source()` is another error, like hyper-util's.
    #[derive(Debug)]
    struct Wrap(BoxError);
    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapper")
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(self.0.as_ref())
        }
    }

    /// Real timeouts from this crate's layers around services that never
    /// answer: `(connect, total)`.
    async fn timeouts() -> (Elapsed, Elapsed) {
        use tower::{service_fn, Layer, ServiceExt};
        let never = service_fn(|_: ()| std::future::pending::<Result<(), BoxError>>());
        let connect = crate::connect_timeout::ConnectTimeoutLayer::new(Duration::from_secs(1))
            .layer(never)
            .oneshot(())
            .await
            .unwrap_err();
        let never = service_fn(|_: Request<crate::RequestBody>| {
            std::future::pending::<
                Result<http::Response<http_body_util::Empty<bytes::Bytes>>, BoxError>,
            >()
        });
        let total = crate::phase_timeout::PhaseTimeoutLayer::new()
            .total(Duration::from_secs(1))
            .layer(never)
            .oneshot(Request::new(http_body_util::Empty::<bytes::Bytes>::new()))
            .await
            .unwrap_err();
        let get = |e: &BoxError| crate::find_cause::<Elapsed>(e.as_ref()).cloned().unwrap();
        (get(&connect), get(&total))
    }

    #[tokio::test(start_paused = true)]
    async fn signals_from_error_chains() {
        let (connect, total) = timeouts().await;
        assert_eq!(
            (connect.phase(), total.phase()),
            (Phase::Connect, Phase::Total)
        );
        let expired = ConnectionExpired {
            idle: Duration::from_secs(2),
            limit: Duration::from_secs(1),
        };
        let cases: Vec<(BoxError, Signal)> = vec![
            (
                boxed(io::Error::from(io::ErrorKind::ConnectionReset)),
                Signal::Closed,
            ),
            (
                boxed(io::Error::from(io::ErrorKind::BrokenPipe)),
                Signal::Closed,
            ),
            (
                boxed(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Signal::Closed,
            ),
            (
                boxed(io::Error::from(io::ErrorKind::ConnectionAborted)),
                Signal::Closed,
            ),
            (
                boxed(io::Error::from(io::ErrorKind::TimedOut)),
                Signal::Timeout,
            ),
            (
                boxed(io::Error::from(io::ErrorKind::ConnectionRefused)),
                Signal::Other,
            ),
            (boxed(io::Error::other("boom")), Signal::Other),
            ("plain message".into(), Signal::Other),
            // The typed refusal, found inside an io::Error of kind
            // ConnectionAborted, which alone would only say "closed".
            (
                boxed(Wrap(boxed(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    expired.clone(),
                )))),
                Signal::NotWritten,
            ),
            (boxed(Wrap(boxed(expired))), Signal::NotWritten),
            // The engine's HTTP/2 connection whose task has ended.
            (
                boxed(Wrap(boxed(crate::client::Http2Closed))),
                Signal::NotWritten,
            ),
            // ConnectTimeout's shape: an io::Error of kind TimedOut around
            // the Elapsed, which decides (a connect timeout, not any timeout).
            (
                boxed(Wrap(boxed(connect.clone().into_timed_out()))),
                Signal::ConnectTimeout,
            ),
            (boxed(Wrap(boxed(connect))), Signal::ConnectTimeout),
            (boxed(total.clone()), Signal::Timeout),
            (boxed(Wrap(boxed(total.clone()))), Signal::Timeout),
            // A timeout wins over the reset it caused.
            (
                boxed(Wrap(boxed(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    total,
                )))),
                Signal::Timeout,
            ),
            // A locally made h2 error is neither a refusal nor a GOAWAY.
            (
                boxed(h2::Error::from(h2::Reason::REFUSED_STREAM)),
                Signal::Other,
            ),
        ];
        for (err, expected) in cases {
            assert_eq!(signal(err.as_ref()), expected, "{err:?}");
        }
    }

    /// A PhaseTimeout timeout carries its attempt's capture: the layer
    /// above, which took none for a bodiless request, judges the attempt by
    /// it (here: hooked, and hyper never took it to write).
    #[cfg(feature = "testing")]
    #[tokio::test]
    async fn a_timeout_is_judged_by_the_capture_it_carries() {
        use http_body_util::{BodyExt, Empty};
        use hyper_util::client::legacy::{connect::HttpConnector, Client};
        use hyper_util::rt::TokioExecutor;
        use tower::{service_fn, Layer, ServiceExt};

        let server = crate::testing::HyperServer::start().await.unwrap();
        let connector = crate::track::TrackConnectionsLayer::new().layer(HttpConnector::new());
        let client =
            Client::builder(TokioExecutor::new()).build::<_, Empty<bytes::Bytes>>(connector);
        let mut req = Request::get(server.url()).body(Empty::new()).unwrap();
        let capture = ConnectionCapture::get_or_insert(&mut req);
        // As PhaseTimeout's request body does; this one never announces.
        capture.hook();
        let res = client.request(req).await.unwrap();
        res.into_body().collect().await.unwrap();
        let state = capture.state().expect("tracked");

        let never = service_fn(|_: Request<crate::RequestBody>| {
            std::future::pending::<Result<http::Response<Empty<bytes::Bytes>>, BoxError>>()
        });
        let err = crate::phase_timeout::PhaseTimeoutLayer::new()
            .total(Duration::from_millis(1))
            .layer(never)
            .oneshot(Request::new(Empty::<bytes::Bytes>::new()))
            .await
            .unwrap_err();
        let elapsed = crate::find_cause::<Elapsed>(err.as_ref()).unwrap().clone();
        assert_eq!(wire(None, &elapsed), Wire::Unknown);
        let carried = elapsed.with_attempt(Some(capture));
        assert_eq!(
            carried,
            *crate::find_cause::<Elapsed>(err.as_ref()).unwrap()
        );
        assert_eq!(
            wire(None, &Wrap(boxed(carried.clone()))),
            Wire::NothingWritten
        );
        // Once the connection is gone nothing of it can ever be written:
        // the one timeout that is retried.
        drop(client);
        for _ in 0..400 {
            if state.is_closed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(state.is_closed());
        let f = Facts {
            signal: signal(&carried),
            wire: wire(None, &carried),
            idempotent: true,
        };
        assert_eq!(f.wire, Wire::NeverWritten);
        assert_eq!(classify(&f, false), Ok(RetryReason::NothingWritten));
    }

    #[test]
    fn wire_without_a_tracked_connection_is_unknown() {
        assert_eq!(inferred_wire(&Captured::Pending), Wire::Unknown);
        assert_eq!(inferred_wire(&Captured::Untracked), Wire::Unknown);
    }

    #[test]
    fn names_are_stable() {
        assert_eq!(Rule::NotIdempotent.to_string(), "not_idempotent");
        assert_eq!(
            RetryReason::StaleConnection.to_string(),
            "reused connection closed before any response byte"
        );
    }
}
