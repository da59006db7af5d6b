//! The one timeout error.

use std::fmt;
use std::time::Duration;

use crate::track::ConnectionCapture;

/// The phase of a request that a timeout belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Establishing the connection (TCP, and TLS when the connector does it).
    Connect,
    /// Writing the request: no upload progress for the `send` limit.
    Send,
    /// Waiting for the response head after the upload finished, or no
    /// response-body progress for the read stall limit.
    Read,
    /// The whole exchange, through the end of the response body.
    Total,
}

impl Phase {
    /// The phase's lowercase name: `connect`, `send`, `read` or `total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Send => "send",
            Phase::Read => "read",
            Phase::Total => "total",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What exactly was being waited for when the timer fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waiting {
    Connection,
    UploadProgress,
    ResponseHead,
    BodyProgress,
    Completion,
}

/// A timeout fired in one of the [`Phase`]s of a request.
///
/// Returned, boxed as [`BoxError`](crate::BoxError), by
/// [`PhaseTimeout`](super::PhaseTimeout)'s response future and by its
/// response body ([`ResponseBody`](super::ResponseBody)).
/// [`ConnectTimeout`](crate::connect_timeout::ConnectTimeout) returns it inside an
/// `io::Error` of kind `TimedOut` (so timeout checks by that kind, such as
/// reqwest's `is_timeout()`, still match), and hyper-util's client, the
/// retry layer and reqwest wrap errors further. Find it with
/// [`find_cause`](crate::find_cause), which looks through all of these,
/// rather than `downcast_ref` (the crate docs' [Errors](crate#errors) table
/// says which type is on top in which stack).
///
/// ```
/// use tower_conn_lifecycle::phase_timeout::{Elapsed, Phase};
/// use tower_conn_lifecycle::{find_cause, BoxError};
///
/// fn is_upload_stall(err: &BoxError) -> bool {
///     find_cause::<Elapsed>(err.as_ref()).is_some_and(|e| e.phase() == Phase::Send)
/// }
/// # let _ = is_upload_stall;
/// ```
#[derive(Clone)]
pub struct Elapsed {
    phase: Phase,
    waiting: Waiting,
    limit: Duration,
    elapsed: Duration,
    bytes_sent: u64,
    bytes_received: u64,
    /// The timed-out attempt's record, when the request took one: how
    /// [`RetryOnStaleConnection`](crate::retry) above judges what the
    /// attempt wrote without taking a capture of its own.
    attempt: Option<ConnectionCapture>,
}

impl PartialEq for Elapsed {
    /// The timeout's facts; the attempt's record is not one of them.
    fn eq(&self, other: &Self) -> bool {
        (
            self.phase,
            self.waiting,
            self.limit,
            self.elapsed,
            self.bytes_sent,
            self.bytes_received,
        ) == (
            other.phase,
            other.waiting,
            other.limit,
            other.elapsed,
            other.bytes_sent,
            other.bytes_received,
        )
    }
}

impl Eq for Elapsed {}

impl fmt::Debug for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Elapsed")
            .field("phase", &self.phase)
            .field("waiting", &self.waiting)
            .field("limit", &self.limit)
            .field("elapsed", &self.elapsed)
            .field("bytes_sent", &self.bytes_sent)
            .field("bytes_received", &self.bytes_received)
            .finish()
    }
}

impl Elapsed {
    pub(crate) fn new(
        phase: Phase,
        waiting: Waiting,
        limit: Duration,
        elapsed: Duration,
        bytes_sent: u64,
        bytes_received: u64,
    ) -> Self {
        // Every `Elapsed` is a timeout that fired: one debug event each
        // (a disabled event costs one relaxed load at its callsite).
        tracing::debug!(
            phase = %phase,
            ?waiting,
            ?limit,
            ?elapsed,
            bytes_sent,
            bytes_received,
            "request timed out"
        );
        Elapsed {
            phase,
            waiting,
            limit,
            elapsed,
            bytes_sent,
            bytes_received,
            attempt: None,
        }
    }

    /// Carries the timed-out attempt's record (see [`attempt`](Self::attempt)).
    pub(crate) fn with_attempt(mut self, attempt: Option<ConnectionCapture>) -> Self {
        self.attempt = attempt;
        self
    }

    /// The record of the attempt that timed out, when it took a connection
    /// capture (PhaseTimeout's response future, before the head).
    pub(crate) fn attempt(&self) -> Option<&ConnectionCapture> {
        self.attempt.as_ref()
    }

    /// This timeout as an `io::Error` of kind `TimedOut` that carries it: how
    /// [`ConnectTimeout`](crate::connect_timeout::ConnectTimeout) reports it, so that code
    /// recognising connect timeouts by that kind (reqwest's `is_timeout()`,
    /// hyper-util's own `HttpConnector` timeout) still does.
    pub(crate) fn into_timed_out(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::TimedOut, self)
    }

    /// Which phase timed out.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The configured limit of that phase.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// How long the phase had lasted when the timer fired: since the last
    /// progress for the stall limits (send, read body), since the phase began
    /// otherwise. At least [`limit`](Self::limit).
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Bytes of the request sent before the timeout.
    ///
    /// On an HTTP/1 connection made through the tracker
    /// ([`crate::track`]), the bytes of this exchange written to the socket:
    /// request head, body and framing, as counted by
    /// [`ConnectionInfo::bytes_sent`](crate::track::ConnectionInfo::bytes_sent).
    /// Otherwise (no tracker, or HTTP/2, whose socket carries every stream
    /// of the connection) the request-body bytes the connection pulled,
    /// which hyper may still hold in its write buffer.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Bytes of the response received before the timeout.
    ///
    /// On an HTTP/1 connection made through the tracker, the bytes of this
    /// exchange read from the socket
    /// ([`ConnectionInfo::bytes_received`](crate::track::ConnectionInfo::bytes_received)): a
    /// partial head counts, before the head as after it. Otherwise
    /// response-body bytes received, so 0 before the head.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} timed out after {:?}: ", self.phase, self.limit)?;
        match self.waiting {
            Waiting::Connection => f.write_str("connection not established"),
            Waiting::UploadProgress => {
                write!(f, "no upload progress ({} bytes sent)", self.bytes_sent)
            }
            Waiting::ResponseHead => write!(
                f,
                "no response head since the upload finished ({} bytes sent, {} bytes received)",
                self.bytes_sent, self.bytes_received
            ),
            Waiting::BodyProgress => write!(
                f,
                "no response body progress ({} bytes received)",
                self.bytes_received
            ),
            Waiting::Completion => write!(
                f,
                "response not complete ({} bytes sent, {} bytes received)",
                self.bytes_sent, self.bytes_received
            ),
        }
    }
}

impl std::error::Error for Elapsed {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_lowercase_and_specific() {
        let ms = Duration::from_millis;
        let cases = [
            (
                (
                    Phase::Send,
                    Waiting::UploadProgress,
                    ms(1000),
                    10_485_760,
                    0,
                ),
                "send timed out after 1s: no upload progress (10485760 bytes sent)",
            ),
            (
                (Phase::Read, Waiting::BodyProgress, ms(250), 0, 42),
                "read timed out after 250ms: no response body progress (42 bytes received)",
            ),
            (
                (Phase::Read, Waiting::ResponseHead, ms(500), 1078, 29),
                "read timed out after 500ms: no response head since the upload finished \
                 (1078 bytes sent, 29 bytes received)",
            ),
        ];
        for ((phase, waiting, limit, sent, received), expected) in cases {
            let e = Elapsed::new(phase, waiting, limit, limit + ms(3), sent, received);
            assert_eq!(e.to_string(), expected);
        }
        assert_eq!(Phase::Connect.to_string(), "connect");
    }
}
