//! The connection-plane layer and service.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{ConnectionState, TrackedIo};

/// Wraps a connector so every connection it makes is tracked.
///
/// See the [module docs](super) for where it sits in a stack. Clones of the
/// layer (and of the services it makes) share one [`TrackStats`].
#[derive(Clone, Debug, Default)]
pub struct TrackConnectionsLayer {
    stats: TrackStats,
}

impl TrackConnectionsLayer {
    /// A new layer with fresh [`TrackStats`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The counters shared by every connector this layer wraps.
    pub fn stats(&self) -> TrackStats {
        self.stats.clone()
    }
}

impl<C> Layer<C> for TrackConnectionsLayer {
    type Service = TrackConnections<C>;

    fn layer(&self, inner: C) -> Self::Service {
        TrackConnections {
            inner,
            stats: self.stats.clone(),
        }
    }
}

/// Connection counters of a [`TrackConnectionsLayer`] (and of the one-call
/// [`Client`](crate::client::Client), whose
/// [`connection_stats`](crate::client::Client::connection_stats) returns
/// one): a handle shared by clones.
#[derive(Clone, Default)]
pub struct TrackStats {
    // One `Arc`: hyper-util's client clones its connector (this included)
    // for every request.
    pub(super) counters: Arc<Counters>,
}

/// The counters behind [`TrackStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) opened: AtomicU64,
    pub(crate) open: AtomicU64,
    /// HTTP/2 connections the one-call client's engine retired because
    /// they stalled.
    stalled_http2_retired: AtomicU64,
    /// The connections this layer made, for [`drain`](crate::drain) to
    /// close: weak references, so a closed connection's state is freed with
    /// it; pruned as they are added, so the list stays within about twice
    /// the connections open.
    live: Mutex<Live>,
}

#[derive(Debug, Default)]
struct Live {
    conns: Vec<Weak<super::state::Inner>>,
    /// The length at which the next addition first drops the dead ones.
    prune_at: usize,
    /// A [`drain`](crate::drain) began: every connection made from now on
    /// retires at the end of its first exchange (it was opened for a
    /// request in flight when the drain began).
    retiring: bool,
}

impl Counters {
    /// A new connection (once per connection, never per request).
    pub(crate) fn register(&self, state: &ConnectionState) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.conns.len() >= live.prune_at {
            live.conns.retain(|c| c.strong_count() > 0);
            live.prune_at = (live.conns.len() * 2).max(16);
        }
        live.conns.push(Arc::downgrade(&state.inner));
        let retiring = live.retiring;
        drop(live);
        if retiring {
            state.retire_now();
        }
    }
}

/// The counters by the names of their getters.
impl std::fmt::Debug for TrackStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackStats")
            .field("opened", &self.opened())
            .field("open_now", &self.open_now())
            .field("stalled_http2_retired", &self.stalled_http2_retired())
            .finish()
    }
}

impl TrackStats {
    /// Connections established so far.
    pub fn opened(&self) -> u64 {
        self.counters.opened.load(Ordering::Relaxed)
    }

    /// Connections whose IO is still alive (opened and not yet dropped).
    pub fn open_now(&self) -> u64 {
        self.counters.open.load(Ordering::Relaxed)
    }

    /// HTTP/2 connections retired because they stalled (the one-call
    /// client's [`Builder::retire_stalled_http2`](crate::client::Builder::retire_stalled_http2);
    /// always 0 elsewhere).
    pub fn stalled_http2_retired(&self) -> u64 {
        self.counters.stalled_http2_retired.load(Ordering::Relaxed)
    }

    /// The one-call client's engine retired a stalled HTTP/2 connection.
    pub(crate) fn count_stalled_http2_retired(&self) {
        self.counters
            .stalled_http2_retired
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The states of the connections still open (not closed), for
    /// [`drain`](crate::drain) to close: a walk over a list as long as the
    /// connections open, never on a request's path.
    pub(crate) fn live(&self) -> Vec<ConnectionState> {
        self.live_and(|_| {})
    }

    /// A [`drain`](crate::drain) began: every connection made from now on
    /// retires at once (it closes at the end of its first exchange, instead
    /// of going back to its pool). Returns the connections open now, for
    /// the drain to retire (under one lock with the flag, so that every
    /// connection is either in the list or retired when it registers).
    pub(crate) fn retire_from_now(&self) -> Vec<ConnectionState> {
        self.live_and(|live| live.retiring = true)
    }

    fn live_and(&self, f: impl FnOnce(&mut Live)) -> Vec<ConnectionState> {
        let mut live = self.counters.live.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut live);
        live.conns
            .iter()
            .filter_map(Weak::upgrade)
            .map(|inner| ConnectionState { inner })
            .filter(|state| !state.is_closed())
            .collect()
    }
}

/// A connector (`Service<Uri>` or any request type) whose connections are
/// tracked: it returns [`TrackedIo`] around the inner connector's IO.
///
/// Its future is boxed: one allocation per connection, never per request.
#[derive(Clone, Debug)]
pub struct TrackConnections<C> {
    inner: C,
    stats: TrackStats,
}

impl<C> TrackConnections<C> {
    /// Wraps `inner` with fresh [`TrackStats`].
    pub fn new(inner: C) -> Self {
        TrackConnectionsLayer::new().layer(inner)
    }

    /// The counters of this connector (shared with its clones).
    pub fn stats(&self) -> TrackStats {
        self.stats.clone()
    }

    /// The wrapped connector.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// The wrapped connector, mutably.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Consumes `self`, returning the wrapped connector.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<C, R> Service<R> for TrackConnections<C>
where
    C: Service<R>,
    C::Response: Send + 'static,
    C::Future: Send + 'static,
{
    type Response = TrackedIo<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TrackedIo<C::Response>, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let started = Instant::now();
        let connecting = self.inner.call(req);
        let counters = self.stats.counters.clone();
        Box::pin(async move {
            let io = connecting.await?;
            counters.opened.fetch_add(1, Ordering::Relaxed);
            let state = ConnectionState::new(started, Instant::now());
            Ok(TrackedIo::new(io, state, counters))
        })
    }
}
