//! Connections already on their way: a checkout that finds no idle
//! connection waits for a connect that another checkout started and no
//! longer needs, instead of starting one of its own.
//!
//! hyper-util's `pool::cache` races: a checkout that finds nothing idle
//! connects, and takes an idle connection instead if one comes back first;
//! its connect then finishes in the background and joins the pool (Go's
//! `Transport` does the same). Those background connects are the origin's
//! *spares*. With handshakes slower than requests (a TLS origin far away, a
//! loaded machine), a burst's requests are served by the first connections
//! while the others are still in their handshakes; a burst that came next
//! found few idle and connected once per request again, although as many
//! connections were on their way: measured, bursts of 16 opened 29
//! connections, and with each handshake 300 ms and five bursts 76.
//!
//! Here each checkout that would connect first *claims* a spare if one is
//! unclaimed, and waits for the pool instead (a claim is a count, not a
//! particular connect: whichever connection comes back first serves the
//! first waiter). When a spare ends (connected: it went to the pool and
//! served a waiter; failed: it served nobody) every claim is void, and the
//! waiting checkouts look again: claim another, or connect. So a checkout
//! never waits for a connect that nobody started, nor for one that will
//! serve somebody else, and at most as long as the spare it claimed takes.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tower_service::Service;

use super::BoxFuture;
use crate::BoxError;

/// An origin's spares (see the [module docs](self)).
#[derive(Debug, Default)]
pub(super) struct Spares {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Connects under way in the background (their checkout took another
    /// connection).
    spare: usize,
    /// Checkouts waiting for one of them.
    claimed: usize,
    /// Spares ended so far: a claim of an earlier epoch is void.
    epoch: u64,
    /// The waiting checkouts (one entry per live claim of this epoch, by
    /// claim number; at most `spare` of them).
    waiting: Vec<(u64, Waker)>,
    /// The next claim's number.
    next: u64,
}

impl State {
    /// Gives `claim` up, if it is of this epoch.
    fn release(&mut self, claim: Option<(u64, u64)>) {
        if let Some((epoch, id)) = claim {
            if epoch == self.epoch {
                self.claimed -= 1;
                self.waiting.retain(|(waiting, _)| *waiting != id);
            }
        }
    }
}

impl Spares {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics under this lock; a poisoned one is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A spare ended: every claim is void, the waiting checkouts look again.
    fn ended(&self) {
        let waiting = {
            let mut state = self.lock();
            state.spare -= 1;
            state.claimed = 0;
            state.epoch += 1;
            std::mem::take(&mut state.waiting)
        };
        for (_, waker) in waiting {
            waker.wake();
        }
    }
}

/// The cache's executor: a connect whose checkout took another connection
/// is spawned on the tokio runtime, counted as a spare until it ends.
#[derive(Clone, Debug)]
pub(super) struct SpareExecutor(pub(super) Arc<Spares>);

impl<F> hyper::rt::Executor<F> for SpareExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, connect: F) {
        self.0.lock().spare += 1;
        // Counted out when the connect ends, or is dropped unfinished (the
        // runtime shutting down).
        let ended = Ended(self.0.clone());
        tokio::spawn(async move {
            let _ended = ended;
            connect.await;
        });
    }
}

struct Ended(Arc<Spares>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.ended();
    }
}

/// A checkout's connect was refused because a spare is unclaimed: the
/// engine's fast path (which calls the cache without `poll_ready`) takes
/// the checkout loop, whose `poll_ready` claims it and waits.
#[derive(Debug)]
pub(super) struct SpareUnderWay;

impl std::fmt::Display for SpareUnderWay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a connection to the origin is already on its way")
    }
}

impl std::error::Error for SpareUnderWay {}

/// The cache's make service: `M`, behind the claim (see the [module
/// docs](self)). Each clone (one per checkout) holds its own claim.
pub(super) struct Pace<M> {
    inner: M,
    spares: Arc<Spares>,
    /// `poll_ready` let this checkout connect.
    admitted: bool,
    /// This checkout's claim: epoch and number.
    claim: Option<(u64, u64)>,
}

impl<M> Pace<M> {
    pub(super) fn new(inner: M, spares: Arc<Spares>) -> Self {
        Pace {
            inner,
            spares,
            admitted: false,
            claim: None,
        }
    }
}

impl<M: Clone> Clone for Pace<M> {
    fn clone(&self) -> Self {
        Pace::new(self.inner.clone(), self.spares.clone())
    }
}

impl<M> Drop for Pace<M> {
    fn drop(&mut self) {
        if self.claim.is_some() {
            self.spares.lock().release(self.claim.take());
        }
    }
}

impl<M, R> Service<()> for Pace<M>
where
    M: Service<(), Response = R, Error = BoxError, Future = BoxFuture<R>>,
    R: Send + 'static,
{
    type Response = R;
    type Error = BoxError;
    type Future = BoxFuture<R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        {
            let mut state = self.spares.lock();
            state.release(self.claim.take());
            if state.spare > state.claimed {
                let id = state.next;
                state.next += 1;
                state.claimed += 1;
                state.waiting.push((id, cx.waker().clone()));
                self.claim = Some((state.epoch, id));
                return Poll::Pending;
            }
        }
        std::task::ready!(self.inner.poll_ready(cx))?;
        self.admitted = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        if !std::mem::take(&mut self.admitted) {
            let state = self.spares.lock();
            if state.spare > state.claimed {
                return Box::pin(std::future::ready(Err(Box::new(SpareUnderWay) as BoxError)));
            }
        }
        self.inner.call(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    /// A make service that counts its calls.
    #[derive(Clone, Default)]
    struct Make(Arc<AtomicUsize>);

    impl Service<()> for Make {
        type Response = ();
        type Error = BoxError;
        type Future = BoxFuture<()>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, (): ()) -> Self::Future {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
    }

    /// Counts its wakes.
    struct Woken(AtomicUsize);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn ready(pace: &mut Pace<Make>, waker: &Waker) -> bool {
        match pace.poll_ready(&mut Context::from_waker(waker)) {
            Poll::Ready(ready) => {
                ready.unwrap();
                true
            }
            Poll::Pending => false,
        }
    }

    /// A spare until `ended` is told (or dropped).
    fn spare(executor: &SpareExecutor) -> tokio::sync::oneshot::Sender<()> {
        let (ended, end) = tokio::sync::oneshot::channel::<()>();
        hyper::rt::Executor::execute(executor, async move {
            let _ = end.await;
        });
        ended
    }

    /// The claims counted, and the checkouts waiting.
    fn claims(spares: &Spares) -> (usize, usize) {
        let state = spares.lock();
        (state.claimed, state.waiting.len())
    }

    /// Lets the spawned spares run until `spares` has `left` of them.
    async fn until_left(spares: &Spares, left: usize) {
        for _ in 0..100 {
            if spares.lock().spare == left {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{:?}", spares.lock());
    }

    #[tokio::test]
    async fn each_spare_is_claimed_once_and_its_end_voids_the_claims() {
        let spares = Arc::new(Spares::default());
        let executor = SpareExecutor(spares.clone());
        let first = spare(&executor);
        let second = spare(&executor);
        let make = Make::default();
        let pace = Pace::new(make.clone(), spares.clone());
        let woken = Arc::new(Woken(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let (mut a, mut b, mut c) = (pace.clone(), pace.clone(), pace.clone());
        // Two spares: two checkouts wait, the third connects.
        assert!(!ready(&mut a, &waker));
        assert!(!ready(&mut b, &waker));
        assert!(ready(&mut c, &waker));
        c.call(()).await.unwrap();
        assert_eq!(make.0.load(Ordering::SeqCst), 1);
        // Polled again, a checkout keeps one claim, not two.
        assert!(!ready(&mut a, &waker));
        assert_eq!(claims(&spares), (2, 2));
        // A checkout dropped while it waits gives its claim up.
        drop(b);
        assert_eq!(claims(&spares), (1, 1));
        // The fast path (no `poll_ready`) is refused while one is unclaimed.
        let mut fast = pace.clone();
        let refused = fast.call(()).await.unwrap_err();
        assert!(refused.is::<SpareUnderWay>(), "{refused}");
        assert_eq!(make.0.load(Ordering::SeqCst), 1);
        // A spare ends: the claims are void, the waiting checkout is woken.
        first.send(()).unwrap();
        until_left(&spares, 1).await;
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert_eq!(claims(&spares), (0, 0));
        // Its void claim given up (dropped) counts nothing.
        let mut d = pace.clone();
        assert!(!ready(&mut d, &waker));
        drop(a);
        assert_eq!(spares.lock().claimed, 1);
        // The last spare, dropped unfinished, ends too: everyone connects.
        drop(second);
        until_left(&spares, 0).await;
        assert!(ready(&mut d, &waker));
        d.call(()).await.unwrap();
        assert!(fast.call(()).await.is_ok());
        assert_eq!(make.0.load(Ordering::SeqCst), 3);
        assert_eq!(spares.lock().claimed, 0);
    }
}
