//! `RetryOnStaleConnectionLayer`.

use std::sync::Arc;

use tower::retry::budget::Budget;
use tower_layer::Layer;

use super::policy::Settings;
use super::replay::DEFAULT_REPLAY_LIMIT;
use super::RetryOnStaleConnection;
use crate::RequestBodyService;

/// Request-plane layer that retries a request only when its failure proves
/// the retry safe; see the [module docs](super) for the rules.
///
/// * At most [`max_retries`](Self::max_retries) retries per request (default 1),
///   plus up to [`UNPROCESSED_RETRIES`](super::UNPROCESSED_RETRIES) of
///   streams an HTTP/2 server refused unprocessed.
/// * An optional [`budget`](Self::budget) (tower's
///   [`TpsBudget`](tower::retry::budget::TpsBudget), or any
///   [`Budget`]) against retry storms: every request deposits, every retry
///   withdraws.
/// * Connect timeouts are not retried unless
///   [`retry_connect_timeouts`](Self::retry_connect_timeouts) is set.
///
/// Request bodies of any type are sent again: cheap-to-clone ones
/// (`Full<Bytes>`, `Empty<Bytes>`, `String`, …) by cloning, whatever their
/// size, and any other (a streamed upload) through a replay buffer that
/// keeps up to [`replay_limit`](Self::replay_limit) bytes
/// ([`DEFAULT_REPLAY_LIMIT`](super::DEFAULT_REPLAY_LIMIT), 64 KiB); see
/// [`RequestBody`](crate::RequestBody).
///
/// **Its reuse-dependent rules need the connection tracker**
/// ([`TrackConnectionsLayer`](crate::track::TrackConnectionsLayer) on
/// hyper-util's client, with [`PhaseTimeout`](crate::phase_timeout) below
/// this layer for an exact record of each attempt): whether the failed
/// connection was new or reused, whether any response byte had arrived,
/// whether anything of the request was written. Without it (reqwest, a
/// composable pool, an untracked connector, and HTTP/2 connections in any
/// case) the layer still works, from the error chain alone, and errs on the
/// side of not duplicating: a reset or EOF is retried only for idempotent
/// or keyed requests, on new connections too
/// ([`RetryReason::ConnectionClosed`](super::RetryReason::ConnectionClosed)),
/// and a POST without a key never is (its [`NotRetried`](super::NotRetried)
/// says reuse was unknown). See
/// [the module docs](super#without-the-tracker).
///
/// A `Clone` of the layer copies the settings and **shares the budget**.
///
/// ```
/// use std::time::Duration;
/// use tower::retry::budget::TpsBudget;
/// use tower_conn_lifecycle::retry::RetryOnStaleConnectionLayer;
///
/// // One retry at most; streamed bodies replayed up to 64 KiB.
/// let layer = RetryOnStaleConnectionLayer::new();
/// # let _ = layer;
///
/// // Streamed bodies replayed up to 256 KiB; at most 2 retries, and no
/// // more than 10 % of requests plus 5 per second.
/// let layer = RetryOnStaleConnectionLayer::new()
///     .replay_limit(256 * 1024)
///     .max_retries(2)
///     .budget(TpsBudget::new(Duration::from_secs(10), 5, 0.1));
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct RetryOnStaleConnectionLayer {
    pub(crate) settings: Settings,
    pub(crate) replay_limit: usize,
}

impl Default for RetryOnStaleConnectionLayer {
    fn default() -> Self {
        RetryOnStaleConnectionLayer {
            settings: Settings::default(),
            replay_limit: DEFAULT_REPLAY_LIMIT,
        }
    }
}

impl RetryOnStaleConnectionLayer {
    /// A layer with at most one retry, no budget, connect timeouts not
    /// retried, streamed bodies replayed up to
    /// [`DEFAULT_REPLAY_LIMIT`](super::DEFAULT_REPLAY_LIMIT). With the
    /// tracker on the client's connector for its exact rules (see the
    /// [type docs](Self)).
    pub fn new() -> Self {
        Self::default()
    }

    /// The most bytes of a streamed request body kept for replays (default
    /// [`DEFAULT_REPLAY_LIMIT`](super::DEFAULT_REPLAY_LIMIT), 64 KiB). A
    /// body that goes past it is sent on unbuffered and not retried once
    /// any of it was read ([`Rule::BodyNotReplayable`](super::Rule::BodyNotReplayable));
    /// `0` replays only bodies nothing has been read from. Memory is held
    /// per request until its response head arrives. Cheap-to-clone bodies
    /// (`Full<Bytes>`, …) are cloned, not buffered: the limit does not
    /// apply to them.
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
    }

    /// The most retries per request (default 1); `0` never retries. Streams
    /// an HTTP/2 server refused unprocessed may be retried up to
    /// [`UNPROCESSED_RETRIES`](super::UNPROCESSED_RETRIES) more times.
    pub fn max_retries(mut self, retries: usize) -> Self {
        self.settings.max_retries = retries;
        self
    }

    /// Limits retries with `budget`: each request deposits, each retry
    /// withdraws, and a retry the budget refuses fails with
    /// [`Rule::BudgetExhausted`](super::Rule::BudgetExhausted). Shared by
    /// every clone of this layer and the services it makes.
    pub fn budget(mut self, budget: impl Budget + Send + Sync + 'static) -> Self {
        self.settings.budget = Some(Arc::new(budget));
        self
    }

    /// Whether a connect-phase timeout
    /// ([`Elapsed`](crate::phase_timeout::Elapsed) with
    /// [`Phase::Connect`](crate::phase_timeout::Phase::Connect) in the
    /// error chain) is retried. Nothing was written, so it is safe; it is off
    /// by default because a connect timeout usually means an unreachable
    /// origin, where a retry only doubles the wait.
    pub fn retry_connect_timeouts(mut self, retry: bool) -> Self {
        self.settings.retry_connect_timeouts = retry;
        self
    }
}

/// The bound on `S` makes a mistyped or misordered stack fail here, where
/// the layer is applied, with a message that names the fix (see
/// [`RequestBodyService`]).
impl<S: RequestBodyService + Clone> Layer<S> for RetryOnStaleConnectionLayer {
    type Service = RetryOnStaleConnection<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryOnStaleConnection::new(inner, self.clone())
    }
}
