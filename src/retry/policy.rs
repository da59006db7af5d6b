//! The retry policy: tower's [`Policy`] around the classifier, with the
//! limits (body replay, attempts, budget), the per-attempt connection
//! capture, the [`Retried`] record and a tracing event per retry.

use std::fmt;
use std::future::{ready, Ready};
use std::sync::Arc;

use http::{Request, Response};
use tower::retry::budget::Budget;
use tower::retry::Policy;

use super::classify::{self, Wire};
use super::{NotRetried, RetryReason, Rule};
use crate::track::ConnectionCapture;
use crate::{BoxError, RequestBody};

/// How many retry reasons a [`Retried`] keeps; later ones are only counted.
const MAX_RECORDED: usize = 8;

/// A response extension on every response that needed at least one retry:
/// how many, and why.
///
/// ```
/// use tower_conn_lifecycle::retry::Retried;
///
/// fn log_retries<B>(response: &http::Response<B>) {
///     if let Some(r) = response.extensions().get::<Retried>() {
///         eprintln!("succeeded after {} retries: {:?}", r.count(), r.reasons());
///     }
/// }
/// # let _ = log_retries::<()>;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retried {
    count: usize,
    reasons: Vec<RetryReason>,
    /// Of `count`, the streams an HTTP/2 server refused unprocessed
    /// (not counted against `max_retries`, see [`UNPROCESSED_RETRIES`]).
    unprocessed: usize,
}

/// How many retries of streams an HTTP/2 server refused unprocessed
/// ([`RetryReason::RefusedStream`], [`RetryReason::GoAway`]) a request may
/// make beyond [`max_retries`](super::RetryOnStaleConnectionLayer::max_retries).
/// The server said it did nothing with them, so retrying costs it nothing;
/// they come in runs after a `GOAWAY` (the requests still queued are
/// refused, retried together on the next connection, and may be refused
/// again before that connection's stream limit is known), and one retry
/// would not outlast them. Bounded all the same.
pub const UNPROCESSED_RETRIES: usize = 3;

impl Retried {
    /// Retries made before this response (at least 1).
    pub fn count(&self) -> usize {
        self.count
    }

    /// Why each retry was safe, in order (the first eight at most).
    pub fn reasons(&self) -> &[RetryReason] {
        &self.reasons
    }
}

/// A layer's retry settings; clones share the budget.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) max_retries: usize,
    pub(crate) retry_connect_timeouts: bool,
    pub(crate) budget: Option<Arc<dyn Budget + Send + Sync>>,
    /// Captures are filled by the one-call client's engine, not hyper-util
    /// (see `ConnectionCapture::get_or_insert_with`).
    pub(crate) direct_captures: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_retries: 1,
            retry_connect_timeouts: false,
            budget: None,
            direct_captures: false,
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("max_retries", &self.max_retries)
            .field("retry_connect_timeouts", &self.retry_connect_timeouts)
            .field("budget", &self.budget.is_some())
            .finish()
    }
}

/// The policy for one request and its retries.
pub(crate) struct Session {
    settings: Settings,
    /// The replay buffer limit, for the refusal message.
    replay_limit: usize,
    /// The retries made so far (boxed: most requests make none, and the
    /// session lives in every request's response future).
    retried: Option<Box<Retried>>,
}

impl Session {
    /// A session for a new request; deposits it in the budget.
    pub(crate) fn new(settings: &Settings, replay_limit: usize) -> Self {
        if let Some(budget) = &settings.budget {
            budget.deposit();
        }
        Session {
            settings: settings.clone(),
            replay_limit,
            retried: None,
        }
    }

    /// A response arrived: it carries the [`Retried`] record if it needed
    /// retries (what [`Policy::retry`] does with a success, without moving
    /// the response through a `Result`).
    pub(crate) fn succeeded<RB>(&self, response: &mut Response<RB>) {
        if let Some(retried) = &self.retried {
            response.extensions_mut().insert(Retried::clone(retried));
        }
    }

    /// Retries made so far.
    fn retries(&self) -> usize {
        self.retried.as_ref().map_or(0, |r| r.count)
    }

    /// Retries made so far of streams refused unprocessed.
    fn unprocessed(&self) -> usize {
        self.retried.as_ref().map_or(0, |r| r.unprocessed)
    }

    /// Whether a retry for `reason` is one of the [`UNPROCESSED_RETRIES`]
    /// not counted against `max_retries` (a client that never retries
    /// makes none).
    fn uncounted(&self, reason: RetryReason) -> bool {
        matches!(reason, RetryReason::RefusedStream | RetryReason::GoAway)
            && self.settings.max_retries > 0
            && self.unprocessed() < UNPROCESSED_RETRIES
    }

    /// The limits a retry-safe failure must also pass.
    fn allow(&self, req: &Request<RequestBody>, reason: RetryReason) -> Result<RetryReason, Rule> {
        if !req.body().is_replayable() {
            return Err(Rule::BodyNotReplayable);
        }
        if !self.uncounted(reason)
            && self.retries() - self.unprocessed() >= self.settings.max_retries
        {
            return Err(Rule::RetriesExhausted);
        }
        if let Some(budget) = &self.settings.budget {
            if !budget.withdraw() {
                return Err(Rule::BudgetExhausted);
            }
        }
        Ok(reason)
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("settings", &self.settings)
            .field("replay_limit", &self.replay_limit)
            .field("retried", &self.retried)
            .finish()
    }
}

/// Stands in for an error while it is moved into a [`NotRetried`]; a
/// zero-sized box does not allocate.
#[derive(Debug)]
struct Taken;

impl fmt::Display for Taken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("error moved")
    }
}

impl std::error::Error for Taken {}

impl<RB> Policy<Request<RequestBody>, Response<RB>, BoxError> for Session {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        req: &mut Request<RequestBody>,
        result: &mut Result<Response<RB>, BoxError>,
    ) -> Option<Ready<()>> {
        let err = match result {
            Ok(response) => {
                self.succeeded(response);
                return None;
            }
            Err(err) => err,
        };
        let facts = classify::facts(req, err.as_ref());
        let safe = classify::classify(&facts, self.settings.retry_connect_timeouts);
        match safe.and_then(|reason| self.allow(req, reason)) {
            Ok(reason) => {
                let uncounted = self.uncounted(reason);
                let retried = self.retried.get_or_insert_with(|| {
                    Box::new(Retried {
                        count: 0,
                        reasons: Vec::new(),
                        unprocessed: 0,
                    })
                });
                retried.count += 1;
                retried.unprocessed += usize::from(uncounted);
                if retried.reasons.len() < MAX_RECORDED {
                    retried.reasons.push(reason);
                }
                tracing::debug!(
                    method = %req.method(),
                    uri = %req.uri(),
                    retry = self.retries(),
                    %reason,
                    error = %err,
                    "retrying request after a stale-connection failure"
                );
                // The next attempt gets its own capture if this one had one
                // (a body, the caller's, or the one-call client's): it points
                // at the failed attempt's connection, and the copy of
                // hyper-util's capture on the request would fill it again.
                let direct = self.settings.direct_captures;
                if req.extensions_mut().remove::<ConnectionCapture>().is_some() || direct {
                    ConnectionCapture::get_or_insert_with(req, direct);
                }
                Some(ready(()))
            }
            Err(rule) => {
                let source = std::mem::replace(err, Box::new(Taken));
                let mut refused = NotRetried::new(rule, req.method().clone(), source)
                    .uri(req.uri())
                    .retries_made(self.retries());
                if let Ok(reason) = safe {
                    refused = refused.otherwise_safe(reason);
                }
                if rule == Rule::BodyNotReplayable {
                    // The limit when the body went past it; a body that
                    // failed, or was never buffered, says so otherwise.
                    let limit = req.body().overflowed_limit();
                    debug_assert!(limit.is_none() || limit == Some(self.replay_limit));
                    refused = refused.replay_limit(limit);
                }
                if facts.wire == Wire::Unknown {
                    refused = refused.reuse_unknown();
                }
                *err = Box::new(refused);
                None
            }
        }
    }

    fn clone_request(&mut self, req: &Request<RequestBody>) -> Option<Request<RequestBody>> {
        Some(duplicate(req))
    }
}

/// A copy of `req` for the next attempt (extensions are cloned; a
/// connection capture among them is replaced before the copy is sent; the
/// body is a copy that replays it from the start, see
/// [`RequestBody::retry_copy`]). Empty header and extension maps are not
/// cloned (the new request's own are empty already): a request without
/// headers or extensions, the common `GET`, costs only its URI's and
/// body's clones.
pub(crate) fn duplicate(req: &Request<RequestBody>) -> Request<RequestBody> {
    let mut clone = Request::new(req.body().retry_copy());
    *clone.method_mut() = req.method().clone();
    *clone.uri_mut() = req.uri().clone();
    *clone.version_mut() = req.version();
    if !req.headers().is_empty() {
        *clone.headers_mut() = req.headers().clone();
    }
    if !req.extensions().is_empty() {
        *clone.extensions_mut() = req.extensions().clone();
    }
    clone
}
