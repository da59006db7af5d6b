//! An `https://` origin's pool: HTTP/1 connections in a `pool::cache`, and
//! the origin's one shared HTTP/2 connection (ALPN `h2`) beside it.
//!
//! hyper-util's `pool::negotiate` over a `pool::singleton` did this job
//! before, and failed under concurrency in two ways (hyper-util 0.1.21):
//! while no HTTP/2 connection existed, every waiting request fell back to
//! the HTTP/1 cache, which connected once per request (a burst of N cold
//! requests made N TLS handshakes and threw N − 1 HTTP/2 connections away),
//! and the singleton's bookkeeping (waiter numbers reused across attempts,
//! a dead connection's readiness error resetting an attempt in progress)
//! could reach an `unreachable!` under its lock, which poisoned the lock and
//! made every later request to the origin panic.
//!
//! Here, while the origin is not known to speak HTTP/1 only, one request at
//! a time makes a new connection (the *gate*) and the others wait for it:
//! an `h2` connection is put in the shared slot and every waiter takes a
//! handle to it; an HTTP/1 one teaches the origin its protocol, after which
//! requests check HTTP/1 connections out of the cache without waiting for
//! each other (HTTP/1 needs a connection per request in flight). A failed
//! connection attempt fails the requests that waited for it with the same
//! error (they do not each try again, one after another). A connection that
//! refuses a request before any byte (dead, expired, stalled) or whose
//! request was cancelled before it was written (a `GOAWAY` racing it) leaves
//! the slot, so the next checkout, a retry among them, gets a new one.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tower::ServiceExt;
use tower_service::Service;

use super::{BoxFuture, Conn, H2Conn, Sender, StallWatch};
use crate::track::TrackStats;
use crate::BoxError;

/// How many new HTTP/2 connections one checkout sees go to the slot (each
/// found dead by the time it looks) before it gives up.
const ROUNDS: usize = 4;

/// What the origin's pool and its connections share.
pub(crate) struct Shared<B> {
    state: Mutex<State<B>>,
    /// Told when a gated connection attempt ends.
    ended: Notify,
    /// With [`Builder::retire_stalled_http2`](crate::client::Builder::retire_stalled_http2).
    stall: Option<(Duration, TrackStats)>,
}

struct State<B> {
    /// The shared HTTP/2 connection (the pool's handle).
    http2: Option<H2Conn<B>>,
    /// The origin's latest new connection spoke HTTP/1 (none yet, or
    /// `h2`: one new connection at a time).
    http1: bool,
    /// A gated connection attempt is under way.
    connecting: bool,
    /// Gated attempts ended so far.
    round: u64,
    /// The last gated attempt that failed: its round and its error.
    failed: Option<(u64, SharedError)>,
    /// The client is draining: the slot keeps a connection only for the
    /// checkouts waiting for the attempt that made it (admitted before the
    /// drain); once they have their handles it closes after its streams.
    draining: bool,
    /// Checkouts waiting for a gated attempt.
    waiting: usize,
}

impl<B> Shared<B> {
    /// `draining`: the client's drain has begun (an origin first used by
    /// a request admitted before it).
    pub(super) fn new(stall: Option<(Duration, TrackStats)>, draining: bool) -> Arc<Self> {
        Arc::new(Shared {
            state: Mutex::new(State {
                http2: None,
                http1: false,
                connecting: false,
                round: 0,
                failed: None,
                draining,
                waiting: 0,
            }),
            ended: Notify::new(),
            stall,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<B>> {
        // Nothing panics under this lock; a poisoned one is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the HTTP/2 connection `id` out of the slot (it refused a
    /// request, or one was cancelled on it before any byte): the next
    /// checkout makes another. Its streams go on; it closes after them.
    pub(super) fn retire(&self, id: u64) {
        let retired = {
            let mut state = self.lock();
            match &state.http2 {
                Some(conn) if conn.id() == id => state.http2.take(),
                _ => None,
            }
        };
        drop(retired);
    }

    /// Drops the HTTP/2 connection if it is dead; whether the origin then
    /// holds nothing of its own (no HTTP/2 connection, no attempt under way).
    pub(super) fn sweep(&self) -> bool {
        let (dead, empty) = {
            let mut state = self.lock();
            let dead = match &state.http2 {
                Some(conn) if conn.is_dead() => state.http2.take(),
                _ => None,
            };
            (dead, state.http2.is_none() && !state.connecting)
        };
        drop(dead);
        empty
    }

    /// The drain: the HTTP/2 connection stops being shared (it closes when
    /// its last stream ends; one made for a request admitted before the
    /// drain is handed to the checkouts waiting for it, then leaves the
    /// slot too).
    pub(super) fn clear(&self) {
        let conn = {
            let mut state = self.lock();
            state.draining = true;
            state.http2.take()
        };
        drop(conn);
    }
}

/// The end of a gated attempt: the waiters are told (also when the
/// attempt's future is dropped).
struct Gate<'a, B> {
    shared: &'a Shared<B>,
    failed: Option<SharedError>,
}

impl<B> Drop for Gate<'_, B> {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.connecting = false;
            if let Some(err) = self.failed.take() {
                state.failed = Some((state.round, err));
            }
            state.round += 1;
        }
        self.shared.ended.notify_waiters();
    }
}

/// A checkout waiting for a gated attempt (counted in its state) until it
/// looks again, under the lock of that look ([`leave`](Self::leave)), or
/// is dropped. (Counted out before the look, several waiters woken at
/// once could all be out when the first looks, and a draining slot would
/// let the new connection go before the others had it.)
struct Waiter<'a, B>(Option<&'a Shared<B>>);

impl<B> Waiter<'_, B> {
    /// Counts this waiter out, under the lock held as `state`.
    fn leave(mut self, state: &mut State<B>) {
        state.waiting -= 1;
        self.0 = None;
    }
}

impl<B> Drop for Waiter<'_, B> {
    fn drop(&mut self) {
        if let Some(shared) = self.0 {
            shared.lock().waiting -= 1;
        }
    }
}

/// A connection attempt's error, shared by the requests that waited for it
/// (displayed as the error itself, which is its source).
#[derive(Clone, Debug)]
pub(crate) struct SharedError(Arc<BoxError>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&**self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.0)
    }
}

/// A new connection that negotiated `h2`: it went to the shared slot
/// instead of the HTTP/1 cache (the checkout that made it takes a handle
/// from the slot).
#[derive(Debug)]
struct ToShared;

impl std::fmt::Display for ToShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the new connection speaks HTTP/2: shared")
    }
}

impl std::error::Error for ToShared {}

/// The HTTP/1 cache's make service: makes a connection with `M` and
/// teaches the origin its protocol; one that negotiated `h2` goes to the
/// shared slot rather than to the cache.
pub(super) struct Divert<M, B> {
    make: M,
    shared: Arc<Shared<B>>,
}

impl<M: Clone, B> Clone for Divert<M, B> {
    fn clone(&self) -> Self {
        Divert {
            make: self.make.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<M, B> Divert<M, B> {
    pub(super) fn new(make: M, shared: &Arc<Shared<B>>) -> Self {
        Divert {
            make,
            shared: shared.clone(),
        }
    }
}

impl<M, B> Service<()> for Divert<M, B>
where
    M: Service<(), Response = Conn<B>, Error = BoxError, Future = BoxFuture<Conn<B>>>,
    B: Send + 'static,
{
    type Response = Conn<B>;
    type Error = BoxError;
    type Future = BoxFuture<Conn<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.make.poll_ready(cx)
    }

    fn call(&mut self, (): ()) -> Self::Future {
        let making = self.make.call(());
        let shared = self.shared.clone();
        // The connection goes where it belongs inside this future, whoever
        // awaits it (the cache finishes a connect its caller no longer
        // waits for in the background).
        Box::pin(async move {
            let conn = making.await?;
            if !matches!(conn.get_ref(), Sender::Http2(_)) {
                shared.lock().http1 = true;
                return Ok(conn);
            }
            let conn = conn.try_map_inner(|sender| match sender {
                Sender::Http2(send) => Ok(send),
                Sender::Http1(_) => Err(BoxError::from("an HTTP/2 connection changed protocol")),
            })?;
            let stall = shared.stall.clone().map(|(limit, stats)| {
                Arc::new(StallWatch::new(conn.state().clone(), limit, stats))
            });
            let conn = H2Conn::new(conn, stall, Arc::downgrade(&shared));
            let replaced = {
                let mut state = shared.lock();
                state.http1 = false;
                state.http2.replace(conn)
            };
            drop(replaced);
            Err(Box::new(ToShared) as BoxError)
        })
    }
}

/// An `https://` origin's pool (`P`: the HTTP/1 cache over [`Divert`]).
pub(super) struct TlsOrigin<P, B> {
    http1: P,
    shared: Arc<Shared<B>>,
}

impl<P: Clone, B> Clone for TlsOrigin<P, B> {
    fn clone(&self) -> Self {
        TlsOrigin {
            http1: self.http1.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<P, B> TlsOrigin<P, B> {
    pub(super) fn new(http1: P, shared: Arc<Shared<B>>) -> Self {
        TlsOrigin { http1, shared }
    }

    /// The HTTP/1 cache.
    pub(super) fn http1_mut(&mut self) -> &mut P {
        &mut self.http1
    }

    pub(super) fn shared(&self) -> &Shared<B> {
        &self.shared
    }
}

impl<P, C, B> Service<()> for TlsOrigin<P, B>
where
    P: Service<(), Response = C, Error = BoxError> + Clone + Send + 'static,
    P::Future: Send,
    C: Send + 'static,
    B: Send + 'static,
{
    type Response = TlsConn<C, B>;
    type Error = BoxError;
    type Future = BoxFuture<TlsConn<C, B>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The cache is made ready in the checkout, when one is needed.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        let http1 = self.http1.clone();
        let shared = self.shared.clone();
        Box::pin(checkout(http1, shared))
    }
}

/// One checkout of an `https://` origin; see the [module docs](self).
async fn checkout<P, C, B>(mut http1: P, shared: Arc<Shared<B>>) -> Result<TlsConn<C, B>, BoxError>
where
    P: Service<(), Response = C, Error = BoxError>,
{
    // The round of the gated attempt this checkout waited for.
    let mut waited = None;
    // New HTTP/2 connections this checkout saw go to the slot.
    let mut shared_new = 0;
    // Counted as waiting for a gated attempt, until the next look.
    let mut waiter = None;
    loop {
        let gated = {
            let mut state = shared.lock();
            if let Some(waiter) = waiter.take() {
                Waiter::leave(waiter, &mut state);
            }
            match state.http2.take() {
                Some(conn) if !conn.is_dead() => {
                    // Draining: kept only for the checkouts still waiting
                    // for the attempt that made it.
                    if !state.draining || state.waiting > 0 {
                        state.http2 = Some(conn.clone());
                    }
                    return Ok(TlsConn::Http2(conn));
                }
                // A dead one is dropped.
                _ => {}
            }
            if let (Some(round), Some((failed, err))) = (waited, &state.failed) {
                if *failed == round {
                    return Err(Box::new(err.clone()));
                }
            }
            if state.http1 {
                Next::Http1
            } else if state.connecting {
                // Registered under the lock: the attempt's end cannot slip
                // between this look and the wait.
                waited = Some(state.round);
                state.waiting += 1;
                waiter = Some(Waiter(Some(&*shared)));
                Next::Wait(shared.ended.notified())
            } else {
                state.connecting = true;
                Next::Connect
            }
        };
        let gated = match gated {
            Next::Wait(ended) => {
                ended.await;
                continue;
            }
            Next::Http1 => false,
            Next::Connect => true,
        };
        let mut gate = gated.then(|| Gate {
            shared: &shared,
            failed: None,
        });
        match http1.ready().await?.call(()).await {
            Ok(conn) => return Ok(TlsConn::Http1(conn)),
            // The new connection is in the slot: the next round takes it.
            Err(e) if crate::find_cause::<ToShared>(e.as_ref()).is_some() => {
                shared_new += 1;
                if shared_new == ROUNDS {
                    return Err(
                        "no usable connection: new HTTP/2 connections died as they were made"
                            .into(),
                    );
                }
            }
            Err(e) => {
                return Err(match gate.as_mut() {
                    Some(gate) => {
                        let shared = SharedError(Arc::new(e));
                        gate.failed = Some(shared.clone());
                        Box::new(shared)
                    }
                    None => e,
                });
            }
        }
    }
}

/// What a checkout does after its look at the origin.
enum Next<'a> {
    /// Wait for the gated attempt under way.
    Wait(tokio::sync::futures::Notified<'a>),
    /// Check an HTTP/1 connection out of the cache.
    Http1,
    /// Make the next connection (through the cache), gated.
    Connect,
}

/// A connection checked out of an `https://` origin.
pub(crate) enum TlsConn<C, B> {
    Http1(C),
    Http2(H2Conn<B>),
}

impl<C, B> TlsConn<C, B> {
    /// The HTTP/1 connection, if it is one.
    pub(super) fn http1(&self) -> Option<&C> {
        match self {
            TlsConn::Http1(conn) => Some(conn),
            TlsConn::Http2(_) => None,
        }
    }
}

impl<C, B, R> Service<Request<B>> for TlsConn<C, B>
where
    C: Service<Request<B>, Response = Response<R>, Error = BoxError>,
    H2Conn<B>: Service<Request<B>, Response = Response<R>, Error = BoxError>,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = TlsSent<C::Future, <H2Conn<B> as Service<Request<B>>>::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            TlsConn::Http1(conn) => conn.poll_ready(cx),
            TlsConn::Http2(conn) => conn.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self {
            TlsConn::Http1(conn) => TlsSent::Http1 {
                future: conn.call(req),
            },
            TlsConn::Http2(conn) => TlsSent::Http2 {
                future: conn.call(req),
                home: conn.home(),
                id: conn.id(),
            },
        }
    }
}

pin_project! {
    /// A request sent on a [`TlsConn`]: on HTTP/2, a request refused
    /// because its connection is going away (see [`going_away`]) retires
    /// the connection from the slot.
    #[project = TlsSentProj]
    pub(crate) enum TlsSent<F1, F2, B> {
        Http1 { #[pin] future: F1 },
        Http2 { #[pin] future: F2, home: Weak<Shared<B>>, id: u64 },
    }
}

impl<F1, F2, B, R> Future for TlsSent<F1, F2, B>
where
    F1: Future<Output = Result<R, BoxError>>,
    F2: Future<Output = Result<R, BoxError>>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            TlsSentProj::Http1 { future } => future.poll(cx),
            TlsSentProj::Http2 { future, home, id } => {
                let result = std::task::ready!(future.poll(cx));
                if let Err(e) = &result {
                    if going_away(e.as_ref()) {
                        if let Some(shared) = home.upgrade() {
                            shared.retire(*id);
                        }
                    }
                }
                Poll::Ready(result)
            }
        }
    }
}

/// Whether a request's error on an HTTP/2 connection says the connection
/// is going away (its `GOAWAY` refused the stream, hyper cancelled the
/// request before writing it because the connection is closing, or its
/// task ended without answering): a retry must not get it again. A reset
/// of the stream alone leaves it shared.
fn going_away(err: &(dyn std::error::Error + 'static)) -> bool {
    crate::causes(err).any(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(|e| e.is_canceled() || crate::is_dispatch_gone(e))
            || e.downcast_ref::<h2::Error>()
                .is_some_and(h2::Error::is_go_away)
            || e.is::<super::Http2Closed>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::oneshot;

    type Outcome = oneshot::Receiver<Result<u32, BoxError>>;

    /// A stand-in for the HTTP/1 cache: each call takes the next of the
    /// test's pending outcomes, and counts.
    #[derive(Clone)]
    struct Pending {
        outcomes: Arc<Mutex<Vec<Outcome>>>,
        calls: Arc<AtomicUsize>,
    }

    impl Service<()> for Pending {
        type Response = u32;
        type Error = BoxError;
        type Future = BoxFuture<u32>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, (): ()) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let outcome = self.outcomes.lock().unwrap().remove(0);
            Box::pin(async move { outcome.await.unwrap_or_else(|_| Err("dropped".into())) })
        }
    }

    type Origin = TlsOrigin<Pending, ()>;

    fn origin(n: usize) -> (Origin, Vec<oneshot::Sender<Result<u32, BoxError>>>, Pending) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| oneshot::channel()).unzip();
        let pending = Pending {
            outcomes: Arc::new(Mutex::new(receivers)),
            calls: Arc::new(AtomicUsize::new(0)),
        };
        (
            TlsOrigin::new(pending.clone(), Shared::new(None, false)),
            senders,
            pending,
        )
    }

    fn conn(checked: Result<TlsConn<u32, ()>, BoxError>) -> u32 {
        match checked {
            Ok(TlsConn::Http1(n)) => n,
            Ok(TlsConn::Http2(_)) => panic!("no HTTP/2 here"),
            Err(e) => panic!("{e}"),
        }
    }

    /// While the origin's protocol is unknown, one checkout connects and
    /// the others wait for it (the cache is not called for them); each
    /// then makes its own in turn (an HTTP/1 result, which `Divert` would
    /// have learned from, is not seen by this stand-in).
    #[tokio::test]
    async fn checkouts_wait_for_the_gated_attempt() {
        let (mut origin, mut senders, pending) = origin(2);
        let first = tokio::spawn(origin.call(()));
        let second = tokio::spawn(origin.call(()));
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(
            pending.calls.load(Ordering::SeqCst),
            1,
            "one attempt at a time"
        );
        senders.remove(0).send(Ok(1)).unwrap();
        assert_eq!(conn(first.await.unwrap()), 1);
        tokio::task::yield_now().await;
        assert_eq!(pending.calls.load(Ordering::SeqCst), 2);
        senders.remove(0).send(Ok(2)).unwrap();
        assert_eq!(conn(second.await.unwrap()), 2);
    }

    /// A failed gated attempt fails the checkouts that waited for it with
    /// its error (they do not connect again); a later checkout tries anew.
    #[tokio::test]
    async fn waiters_share_the_gated_attempts_failure() {
        let (mut origin, mut senders, pending) = origin(2);
        let first = tokio::spawn(origin.call(()));
        let waiters: Vec<_> = (0..3).map(|_| tokio::spawn(origin.call(()))).collect();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        senders.remove(0).send(Err("refused".into())).unwrap();
        let err = first.await.unwrap().err().expect("the attempt failed");
        assert_eq!(err.to_string(), "refused");
        for waiter in waiters {
            let err = waiter.await.unwrap().err().expect("shared failure");
            assert_eq!(err.to_string(), "refused");
            assert!(crate::find_cause::<SharedError>(err.as_ref()).is_some());
        }
        assert_eq!(pending.calls.load(Ordering::SeqCst), 1);
        let later = tokio::spawn(origin.call(()));
        tokio::task::yield_now().await;
        senders.remove(0).send(Ok(7)).unwrap();
        assert_eq!(conn(later.await.unwrap()), 7);
        assert_eq!(pending.calls.load(Ordering::SeqCst), 2);
    }

    /// A gated checkout given up on (its future dropped mid-connect)
    /// hands the gate on: a waiter connects, nothing hangs.
    #[tokio::test]
    async fn a_cancelled_gated_checkout_hands_the_gate_on() {
        let (mut origin, mut senders, pending) = origin(2);
        let first = tokio::spawn(origin.call(()));
        let second = tokio::spawn(origin.call(()));
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(pending.calls.load(Ordering::SeqCst), 1);
        first.abort();
        assert!(first.await.is_err_and(|e| e.is_cancelled()));
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(
            pending.calls.load(Ordering::SeqCst),
            2,
            "the waiter connects"
        );
        drop(senders.remove(0));
        senders.remove(0).send(Ok(3)).unwrap();
        assert_eq!(conn(second.await.unwrap()), 3);
    }
}
