//! `RetryOnStaleConnectionLayer` and its body modes.

use std::sync::Arc;

use tower::retry::budget::Budget;
use tower_layer::Layer;

use super::policy::Settings;
use super::replay::DEFAULT_REPLAY_LIMIT;
use super::RetryOnStaleConnection;

/// Request-plane layer that retries a request only when its failure proves
/// the retry safe; see the [module docs](super) for the rules.
///
/// * At most [`max_retries`](Self::max_retries) retries per request (default 1).
/// * An optional [`budget`](Self::budget) (tower's
///   [`TpsBudget`](tower::retry::budget::TpsBudget), or any
///   [`Budget`]) against retry storms: every request deposits, every retry
///   withdraws.
/// * Connect timeouts are not retried unless
///   [`retry_connect_timeouts`](Self::retry_connect_timeouts) is set.
///
/// Request bodies are sent again by cloning (`B: Body + Clone`, the
/// default mode), or through a bounded [`ReplayBody`](super::ReplayBody) with
/// [`replay_buffer`](Self::replay_buffer) for any other body.
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
/// // Clone bodies (`Full<Bytes>`, `Empty<Bytes>`, ...): one retry at most.
/// let layer = RetryOnStaleConnectionLayer::new();
/// # let _ = layer;
///
/// // Any body, replaying up to 256 KiB; at most 2 retries, and no more
/// // than 10 % of requests plus 5 per second.
/// let layer = RetryOnStaleConnectionLayer::new()
///     .replay_buffer()
///     .replay_limit(256 * 1024)
///     .max_retries(2)
///     .budget(TpsBudget::new(Duration::from_secs(10), 5, 0.1));
/// # let _ = layer;
/// ```
#[derive(Clone, Debug, Default)]
pub struct RetryOnStaleConnectionLayer<M = CloneBody> {
    pub(crate) settings: Settings,
    pub(crate) mode: M,
}

/// Body mode of [`RetryOnStaleConnectionLayer::new`]: request bodies are
/// `Clone` and retried by cloning, with no wrapper (`Full<Bytes>`,
/// `Empty<Bytes>`, and other bodies whose clone is cheap).
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneBody {
    _priv: (),
}

/// Body mode of [`RetryOnStaleConnectionLayer::replay_buffer`]: any request
/// body goes through a [`ReplayBody`](super::ReplayBody) that keeps up to
/// the limit for replays.
#[derive(Clone, Copy, Debug)]
pub struct ReplayBuffer {
    pub(crate) limit: usize,
}

impl RetryOnStaleConnectionLayer {
    /// A layer with at most one retry, no budget, connect timeouts not
    /// retried, for `Clone` request bodies. With the tracker on the client's
    /// connector for its exact rules (see the [type docs](Self)).
    pub fn new() -> Self {
        Self::default()
    }

    /// Retries any [`http_body::Body`] through a
    /// [`ReplayBody`](super::ReplayBody) keeping up to
    /// [`DEFAULT_REPLAY_LIMIT`](super::DEFAULT_REPLAY_LIMIT) (64 KiB); the
    /// inner service then receives `Request<ReplayBody<B>>`.
    pub fn replay_buffer(self) -> RetryOnStaleConnectionLayer<ReplayBuffer> {
        RetryOnStaleConnectionLayer {
            settings: self.settings,
            mode: ReplayBuffer {
                limit: DEFAULT_REPLAY_LIMIT,
            },
        }
    }
}

impl RetryOnStaleConnectionLayer<ReplayBuffer> {
    /// The most request-body bytes kept for replays. A body that goes past
    /// it is sent on unbuffered and not retried once any of it was read;
    /// `0` replays only bodies nothing has been read from. Memory is held
    /// per request until its response head arrives.
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.mode.limit = bytes;
        self
    }
}

impl<M> RetryOnStaleConnectionLayer<M> {
    /// The most retries per request (default 1); `0` never retries.
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

impl<S: Clone, M: Clone> Layer<S> for RetryOnStaleConnectionLayer<M> {
    type Service = RetryOnStaleConnection<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryOnStaleConnection::new(inner, self.clone())
    }
}
