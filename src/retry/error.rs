//! The error returned when a failed request is not retried.

use std::error::Error;
use std::fmt;

use http::{Method, Uri};

use super::{RetryReason, Rule};
use crate::error::WhatHappened;
use crate::BoxError;

/// A request failed and was not retried; [`rule()`](Self::rule) says which
/// rule refused, [`source()`](Error::source) is the failure itself.
///
/// Every error from [`RetryOnStaleConnection`](super::RetryOnStaleConnection)'s
/// response future is a `NotRetried` (boxed as [`BoxError`]); the inner
/// service's own error types are found in its source chain, for example
/// with [`find_cause`](crate::find_cause), which also finds the
/// `NotRetried` itself when another layer wraps it.
///
/// Its display says what happened first, then, only where a retry was in
/// question (the failure was a connection failure), why none was made:
///
/// ```text
/// GET http://10.0.0.7:8080: read timed out after 5s: no response head since the upload finished (0 bytes sent, 0 bytes received)
/// GET http://10.0.0.7:8080: connect failed: Connection refused (os error 111)
/// POST http://10.0.0.7:8080: connection closed before message completed; not retried: not idempotent, no Idempotency-Key (reused connection)
/// ```
///
/// The destination is the URI's scheme, host and port (never its user
/// info, path or query). What happened is the first typed fact of this
/// crate in the chain ([`Elapsed`](crate::phase_timeout::Elapsed) with its
/// phase and limit, [`ConnectionExpired`](crate::track::ConnectionExpired),
/// a TLS failure), else the chain's root cause; the whole chain is
/// [`error_chain`](crate::error_chain)'s to print.
///
/// ```
/// use tower_conn_lifecycle::retry::{NotRetried, Rule};
/// use tower_conn_lifecycle::{find_cause, BoxError};
///
/// fn duplicate_risk(err: &BoxError) -> bool {
///     find_cause::<NotRetried>(err.as_ref()).is_some_and(|e| e.rule() == Rule::NotIdempotent)
/// }
/// # let _ = duplicate_risk;
/// ```
#[derive(Debug)]
pub struct NotRetried {
    rule: Rule,
    method: Method,
    uri: Option<Uri>,
    retries: usize,
    safe: Option<RetryReason>,
    replay_limit: Option<usize>,
    reuse_known: bool,
    source: BoxError,
}

impl NotRetried {
    pub(crate) fn new(rule: Rule, method: Method, source: BoxError) -> Self {
        NotRetried {
            rule,
            method,
            uri: None,
            retries: 0,
            safe: None,
            replay_limit: None,
            reuse_known: true,
            source,
        }
    }

    /// The request's URI, for the display (scheme, host and port only).
    pub(crate) fn uri(mut self, uri: &Uri) -> Self {
        self.uri = Some(uri.clone());
        self
    }

    pub(crate) fn retries_made(mut self, retries: usize) -> Self {
        self.retries = retries;
        self
    }

    /// The failure was retry-safe for `reason`, but a limit refused it.
    pub(crate) fn otherwise_safe(mut self, reason: RetryReason) -> Self {
        self.safe = Some(reason);
        self
    }

    pub(crate) fn replay_limit(mut self, limit: Option<usize>) -> Self {
        self.replay_limit = limit;
        self
    }

    pub(crate) fn reuse_unknown(mut self) -> Self {
        self.reuse_known = false;
        self
    }

    /// The rule that refused the retry.
    pub fn rule(&self) -> Rule {
        self.rule
    }

    /// The request's method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// How many retries were made before this final failure.
    pub fn retries(&self) -> usize {
        self.retries
    }

    /// When a limit refused ([`Rule::BodyNotReplayable`],
    /// [`Rule::RetriesExhausted`], [`Rule::BudgetExhausted`]): the reason the
    /// failure itself was safe to retry.
    pub fn retry_safe_reason(&self) -> Option<RetryReason> {
        self.safe
    }

    /// The failure, giving up the wrapper.
    pub fn into_source(self) -> BoxError {
        self.source
    }
}

impl fmt::Display for NotRetried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.method;
        write!(f, "{m}")?;
        if let Some((uri, host)) = self.uri.as_ref().and_then(|u| Some((u, u.host()?))) {
            // Scheme, host and port only: no user info, path or query (they
            // may carry credentials).
            f.write_str(" ")?;
            if let Some(scheme) = uri.scheme_str() {
                write!(f, "{scheme}://")?;
            }
            f.write_str(host)?;
            if let Some(port) = uri.port_u16() {
                write!(f, ":{port}")?;
            }
        }
        f.write_str(": ")?;
        if self.rule == Rule::ConnectFailed {
            f.write_str("connect failed: ")?;
        }
        write!(f, "{}", WhatHappened(self.source.as_ref()))?;
        // Only where a retry was in question does the display say why none
        // was made: a timeout, a failed connect or an error that is not a
        // connection failure is never a stale connection.
        match self.rule {
            Rule::Timeout
            | Rule::ConnectTimeout
            | Rule::ConnectFailed
            | Rule::NotConnectionFailure => {
                return match self.retries {
                    0 => Ok(()),
                    1 => f.write_str(" (after 1 retry)"),
                    n => write!(f, " (after {n} retries)"),
                }
            }
            _ => f.write_str("; not retried: ")?,
        }
        self.why_not(f)?;
        match self.safe {
            Some(reason) => write!(f, ", though retry-safe: {reason}"),
            None => Ok(()),
        }
    }
}

impl NotRetried {
    /// The rule, for the display.
    fn why_not(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rule {
            Rule::ResponseStarted => f.write_str("part of the response had arrived"),
            Rule::FreshConnection => f.write_str("the connection was new, not a stale one"),
            Rule::NotIdempotent if self.reuse_known => {
                f.write_str("not idempotent, no Idempotency-Key (reused connection)")
            }
            Rule::NotIdempotent => f.write_str(
                "not idempotent, no Idempotency-Key (connection reuse unknown: untracked)",
            ),
            Rule::BodyNotReplayable => match self.replay_limit {
                Some(limit) => write!(f, "the body went past the {limit}-byte replay buffer"),
                None => f.write_str("the body cannot be replayed"),
            },
            Rule::RetriesExhausted => match self.retries {
                0 => f.write_str("retries are off (limit 0)"),
                1 => f.write_str("retry limit reached after 1 retry"),
                n => write!(f, "retry limit reached after {n} retries"),
            },
            Rule::BudgetExhausted => f.write_str("retry budget exhausted"),
            // After a retry the refusal is the retry's: an earlier attempt
            // was written (whatever the refusal says of itself).
            Rule::Draining => match self.retries {
                0 => f.write_str("the client is draining"),
                1 => f.write_str(
                    "the client is draining (refused the retry: 1 earlier attempt was sent)",
                ),
                n => write!(
                    f,
                    "the client is draining (refused a retry: {n} earlier attempts were sent)"
                ),
            },
            Rule::Timeout
            | Rule::ConnectTimeout
            | Rule::ConnectFailed
            | Rule::NotConnectionFailure => Ok(()),
        }
    }
}

impl Error for NotRetried {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.source.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset() -> BoxError {
        Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
    }

    #[test]
    fn display_says_what_happened_then_why_no_retry() {
        let uri = Uri::from_static("http://user:secret@10.0.0.7:8080/upload?token=t");
        let e = NotRetried::new(Rule::NotIdempotent, Method::POST, reset()).uri(&uri);
        assert_eq!(
            e.to_string(),
            "POST http://10.0.0.7:8080: connection reset; \
             not retried: not idempotent, no Idempotency-Key (reused connection)"
        );
        assert_eq!(e.rule(), Rule::NotIdempotent);
        let source = e.source().unwrap();
        assert_eq!(
            source.downcast_ref::<std::io::Error>().unwrap().kind(),
            std::io::ErrorKind::ConnectionReset
        );
        let e = NotRetried::new(Rule::NotIdempotent, Method::PATCH, reset()).reuse_unknown();
        assert_eq!(
            e.to_string(),
            "PATCH: connection reset; \
             not retried: not idempotent, no Idempotency-Key (connection reuse unknown: untracked)"
        );
        let e = NotRetried::new(Rule::BodyNotReplayable, Method::PUT, reset())
            .replay_limit(Some(65536))
            .otherwise_safe(RetryReason::StaleConnection);
        assert_eq!(
            e.to_string(),
            "PUT: connection reset; not retried: the body went past the 65536-byte replay buffer, \
             though retry-safe: reused connection closed before any response byte"
        );
        assert_eq!(e.retry_safe_reason(), Some(RetryReason::StaleConnection));
        let e = NotRetried::new(Rule::RetriesExhausted, Method::GET, reset()).retries_made(2);
        assert_eq!(
            e.to_string(),
            "GET: connection reset; not retried: retry limit reached after 2 retries"
        );
        assert_eq!(e.retries(), 2);
        let e = NotRetried::new(Rule::FreshConnection, Method::GET, reset());
        assert_eq!(
            e.to_string(),
            "GET: connection reset; not retried: the connection was new, not a stale one"
        );
        // No retry was in question: no "not retried"; retries made before
        // the final failure are still told.
        let refused: BoxError = Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        let e = NotRetried::new(Rule::ConnectFailed, Method::GET, refused)
            .uri(&Uri::from_static("https://example.com/x"));
        assert_eq!(
            e.to_string(),
            "GET https://example.com: connect failed: Connection refused (os error 111)"
        );
        let e = NotRetried::new(Rule::NotConnectionFailure, Method::GET, reset()).retries_made(1);
        assert_eq!(e.to_string(), "GET: connection reset (after 1 retry)");
        // Found through wrappers; the chain printer shows the cause once.
        let boxed: BoxError = Box::new(e);
        assert!(crate::find_cause::<NotRetried>(boxed.as_ref()).is_some());
        assert_eq!(
            crate::error_chain(boxed.as_ref()).to_string(),
            "GET: connection reset (after 1 retry)"
        );
    }
}
