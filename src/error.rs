//! Walking and printing error chains: [`find_cause`], [`error_chain`].

use std::error::Error;
use std::fmt::{self, Write as _};

use crate::phase_timeout::Elapsed;
use crate::track::ConnectionExpired;

/// The first `T` in `err` or its [`source()`](std::error::Error::source)
/// chain, also looking inside `std::io::Error`s (whose `source()` skips the
/// custom error they carry).
///
/// hyper-util, hyper and reqwest wrap the errors of connectors and IO, so
/// this crate's typed errors are usually found a few causes down. This is
/// the way to ask an error from any stack of this crate's layers what
/// happened; the crate docs' [Errors](crate#errors) table says which types
/// can be found for which failure.
///
/// ```
/// use tower_conn_lifecycle::{find_cause, phase_timeout::Elapsed, BoxError};
///
/// let io = std::io::Error::other("reset");
/// let err: BoxError = Box::new(io);
/// assert!(find_cause::<std::io::Error>(err.as_ref()).is_some());
/// assert!(find_cause::<Elapsed>(err.as_ref()).is_none());
/// ```
pub fn find_cause<'a, T>(err: &'a (dyn Error + 'static)) -> Option<&'a T>
where
    T: Error + 'static,
{
    causes(err).find_map(|e| e.downcast_ref::<T>())
}

/// The longest error chain looked at (a guard against cyclic or
/// pathological chains).
const MAX_CHAIN: usize = 32;

/// `err` and its causes: the one chain walker of the crate (used by
/// [`find_cause`], [`error_chain`], the retry classifier and
/// [`NotRetried`](crate::retry::NotRetried)'s display). It looks inside
/// `io::Error` and `h2::Error`, whose `source()` skips the error they carry.
pub(crate) fn causes<'a>(
    err: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(err), |&e| {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.get_ref().map(|inner| inner as &(dyn Error + 'static));
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            if let Some(io) = h2.get_io() {
                return Some(io as &(dyn Error + 'static));
            }
        }
        e.source()
    })
    .take(MAX_CHAIN)
}

/// An error and all of its causes on one line, joined by `": "` (like
/// `anyhow`'s `{:#}`), looking inside `io::Error`s as [`find_cause`] does:
/// a value to `Display` (`println!("{}", error_chain(&err))`, `.to_string()`).
///
/// A cause whose text the line already contains is left out: wrappers that
/// repeat their cause (an `io::Error` around a custom error) and this
/// crate's errors, whose own text already names the cause that matters, are
/// shown once.
///
/// ```
/// use std::io;
/// use tower_conn_lifecycle::error_chain;
///
/// let inner = io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by peer");
/// let err = io::Error::other(Wrapped(inner));
/// assert_eq!(
///     error_chain(&err).to_string(),
///     "request failed: connection reset by peer"
/// );
///
/// # #[derive(Debug)]
/// # struct Wrapped(io::Error);
/// # impl std::fmt::Display for Wrapped {
/// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
/// #         f.write_str("request failed")
/// #     }
/// # }
/// # impl std::error::Error for Wrapped {
/// #     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
/// #         Some(&self.0)
/// #     }
/// # }
/// ```
pub fn error_chain<'a>(err: &'a (dyn Error + 'static)) -> impl fmt::Display + 'a {
    Chain(err)
}

/// What [`error_chain`] returns.
struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = String::new();
        let mut text = String::new();
        for e in causes(self.0) {
            text.clear();
            write!(text, "{e}")?;
            if text.is_empty() || line.contains(text.as_str()) {
                continue;
            }
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        f.write_str(&line)
    }
}

/// What happened, in one phrase, for the top of an error that wraps
/// `err`: the first fact of this crate's own in the chain (a timeout with
/// its phase and limit, an expired connection, a TLS failure with its
/// cause), otherwise the chain's root cause (the OS error, hyper's
/// "connection closed before message completed").
pub(crate) struct WhatHappened<'a>(pub(crate) &'a (dyn Error + 'static));

impl fmt::Display for WhatHappened<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut root = self.0;
        for e in causes(self.0) {
            if let Some(elapsed) = e.downcast_ref::<Elapsed>() {
                return write!(f, "{elapsed}");
            }
            if let Some(expired) = e.downcast_ref::<ConnectionExpired>() {
                return write!(f, "{expired}");
            }
            // A failed inner connect is the root's to tell.
            #[cfg(feature = "tls")]
            if let Some(tls) = e
                .downcast_ref::<crate::tls::TlsConnectError>()
                .filter(|tls| tls.kind() != crate::tls::TlsConnectErrorKind::Connect)
            {
                // Its own text is the kind; its cause says why.
                return match causes(e).last().filter(|root| !std::ptr::addr_eq(*root, e)) {
                    Some(root) => write!(f, "{tls}: {root}"),
                    None => write!(f, "{tls}"),
                };
            }
            root = e;
        }
        write!(f, "{root}")
    }
}

/// Whether `err` is hyper's "dispatch task is gone": the connection's task
/// ended without answering the request (hyper has no predicate for it;
/// its kind is told by its description, stable across hyper 1.x). On an
/// HTTP/2 connection shut down by a graceful `GOAWAY` it is what the
/// request hyper held waiting for a stream of its own gets (nothing of it
/// sent); otherwise a runtime dropping the task, whatever had been sent.
pub(crate) fn is_dispatch_gone(err: &hyper::Error) -> bool {
    err.is_user() && err.to_string() == "dispatch task is gone"
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::BoxError;

    #[derive(Debug)]
    struct Wrap(&'static str, BoxError);

    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(self.1.as_ref())
        }
    }

    #[test]
    fn chain_joins_every_cause_once() {
        let root = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        let err = Wrap(
            "client error (Connect)",
            Box::new(Wrap("tcp connect error", Box::new(root))),
        );
        assert_eq!(
            error_chain(&err).to_string(),
            "client error (Connect): tcp connect error: refused"
        );
        // An io::Error around a custom error repeats its text: shown once.
        let err = io::Error::other(Wrap("stalled", Box::new(io::Error::other("deep"))));
        assert_eq!(error_chain(&err).to_string(), "stalled: deep");
    }

    #[test]
    fn what_happened_is_the_first_fact_or_the_root() {
        let root = io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by peer");
        let err = Wrap("client error (SendRequest)", Box::new(root));
        assert_eq!(WhatHappened(&err).to_string(), "connection reset by peer");
        let single = io::Error::other("alone");
        assert_eq!(WhatHappened(&single).to_string(), "alone");
    }
}
