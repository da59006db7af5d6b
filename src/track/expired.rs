//! The refusal error of an expired connection (the tracker's IO owns the
//! expiry mechanism; [`IdleExpiry`](crate::idle_expiry) sets the expiry).

use std::fmt;
use std::time::Duration;

/// A request was refused because its connection had been idle past its
/// expiry. **Nothing of the request was written**, so it is always safe to
/// retry, whatever its method.
///
/// The tracker's IO returns it (inside an `io::Error` of kind
/// `ConnectionAborted`) when a write is attempted on an expired connection,
/// which is the last resort: normally an expired connection is closed from
/// the read side first and hyper-util retries the request on a new
/// connection by itself. Find it in any error's chain with
/// [`find_cause`](crate::find_cause).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionExpired {
    pub(crate) idle: Duration,
    pub(crate) limit: Duration,
}

impl ConnectionExpired {
    /// The refusal of a connection idle for `idle` nanoseconds against a
    /// limit of `limit` nanoseconds (the tracker's raw units).
    pub(crate) fn from_nanos(idle: u64, limit: u64) -> Self {
        ConnectionExpired {
            idle: Duration::from_nanos(idle),
            limit: Duration::from_nanos(limit),
        }
    }

    /// How long the connection had been idle when the write was refused.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// The connection's effective expiry.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

impl fmt::Display for ConnectionExpired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connection expired after {:?} idle (limit {:?}); nothing was written",
            self.idle, self.limit
        )
    }
}

impl std::error::Error for ConnectionExpired {}

/// A pooled connection was refused before anything of a request was
/// written because an earlier exchange on it was abandoned (a timeout, a
/// dropped response): hyper is closing it. Like [`ConnectionExpired`], it
/// makes a request always safe to retry; the one-call client's checkout
/// simply takes another connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnectionClosing;

impl fmt::Display for ConnectionClosing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "connection closing (an earlier exchange on it was abandoned); nothing was written",
        )
    }
}

impl std::error::Error for ConnectionClosing {}

/// A pooled connection that had served a request refused the next one
/// before anything of it was written: it closed since its last exchange
/// (the server closed it, or that exchange failed and hyper shut it down).
/// Like [`ConnectionExpired`], it makes a request always safe to retry. Its
/// source is the connection's own refusal (hyper's "connection closed").
#[derive(Debug)]
pub(crate) struct ConnectionClosed(pub(crate) crate::BoxError);

impl fmt::Display for ConnectionClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("pooled connection closed since its last exchange; nothing was written")
    }
}

impl std::error::Error for ConnectionClosed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}
