//! The error returned when a failed request is not retried.

use std::error::Error;
use std::fmt;

use http::Method;

use super::{RetryReason, Rule};
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
/// Display: `not retried: POST without Idempotency-Key on a reused
/// connection`.
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
            retries: 0,
            safe: None,
            replay_limit: None,
            reuse_known: true,
            source,
        }
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
        f.write_str("not retried: ")?;
        match self.rule {
            Rule::Timeout => write!(f, "{m} timed out"),
            Rule::ConnectTimeout => {
                f.write_str("connect timed out (connect-timeout retries are off)")
            }
            Rule::ConnectFailed => f.write_str("the connection could not be established"),
            Rule::NotConnectionFailure => write!(f, "{m} failed, not by a connection failure"),
            Rule::ResponseStarted => write!(f, "{m} failed after part of the response arrived"),
            Rule::FreshConnection => write!(f, "{m} failed on a new connection"),
            Rule::NotIdempotent if self.reuse_known => {
                write!(f, "{m} without Idempotency-Key on a reused connection")
            }
            Rule::NotIdempotent => write!(
                f,
                "{m} without Idempotency-Key; connection reuse unknown (untracked)"
            ),
            Rule::BodyNotReplayable => match self.replay_limit {
                Some(limit) => write!(f, "{m} body went past the {limit}-byte replay buffer"),
                None => write!(f, "{m} body cannot be replayed"),
            },
            Rule::RetriesExhausted => match self.retries {
                1 => f.write_str("retry limit reached after 1 retry"),
                n => write!(f, "retry limit reached after {n} retries"),
            },
            Rule::BudgetExhausted => f.write_str("retry budget exhausted"),
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
    fn display_names_the_rule_and_keeps_the_cause() {
        let e = NotRetried::new(Rule::NotIdempotent, Method::POST, reset());
        assert_eq!(
            e.to_string(),
            "not retried: POST without Idempotency-Key on a reused connection"
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
            "not retried: PATCH without Idempotency-Key; connection reuse unknown (untracked)"
        );
        let e = NotRetried::new(Rule::BodyNotReplayable, Method::PUT, reset())
            .replay_limit(Some(65536))
            .otherwise_safe(RetryReason::StaleConnection);
        assert_eq!(
            e.to_string(),
            "not retried: PUT body went past the 65536-byte replay buffer"
        );
        assert_eq!(e.retry_safe_reason(), Some(RetryReason::StaleConnection));
        let e = NotRetried::new(Rule::RetriesExhausted, Method::GET, reset()).retries_made(2);
        assert_eq!(
            e.to_string(),
            "not retried: retry limit reached after 2 retries"
        );
        assert_eq!(e.retries(), 2);
        let e = NotRetried::new(Rule::FreshConnection, Method::GET, reset());
        assert_eq!(e.to_string(), "not retried: GET failed on a new connection");
        // Found through wrappers; the display never repeats the source.
        let boxed: BoxError = Box::new(e);
        assert!(crate::find_cause::<NotRetried>(boxed.as_ref()).is_some());
        assert!(!boxed.to_string().contains("reset"));
    }
}
