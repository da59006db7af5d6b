use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::http1::Conn;
use super::keys::KeySet;
use super::seed::Rng;
use super::server::{impl_addr, ok_response, start, without_body, Counter, Running};

/// An HTTP/1.1 keep-alive server that closes idle connections exactly like
/// Go's `net/http` server with `IdleTimeout` set.
///
/// After writing a response it waits `idle_timeout` for the first byte of the
/// next request; if none arrives it shuts the connection down and drops it.
/// A client that writes a request at that instant sees a reset or EOF: the
/// stale keep-alive race this crate exists to survive. As in Go, the idle
/// timer only runs between requests, not before a connection's first one.
/// A request with `Connection: close` is answered and the connection closed.
///
/// It can also close *slightly after* its nominal idle timeout, like an
/// event loop whose timer runs late ([`close_delay`](IdleClosingServerBuilder::close_delay)),
/// close every idle connection at once, like a reload
/// ([`close_idle`](IdleClosingServer::close_idle)), and change its idle
/// timeout while running ([`set_idle_timeout`](IdleClosingServer::set_idle_timeout)).
///
/// Every request body is read completely before the response is written.
/// Answered requests that carry an `Idempotency-Key` header are counted by
/// key ([`distinct_keys`](Self::distinct_keys),
/// [`duplicate_keys`](Self::duplicate_keys)), so a test can prove no keyed
/// request was processed twice.
#[derive(Debug)]
pub struct IdleClosingServer {
    running: Running,
    counters: Arc<Counters>,
}

/// Configures and starts an [`IdleClosingServer`].
#[derive(Debug, Clone)]
pub struct IdleClosingServerBuilder {
    idle_timeout: Duration,
    keep_alive_header: Option<Duration>,
    response_body: Bytes,
    think_time: Duration,
    max_requests: Option<u64>,
    close_delay: Duration,
}

#[derive(Debug, Default)]
struct Counters {
    connections: Counter,
    requests: Counter,
    responses: Counter,
    idle_closes: Counter,
    by_method: [Counter; METHODS.len()],
    other_methods: Counter,
    keys: KeySet,
    /// The idle timeout set while running, in nanoseconds (0: the
    /// builder's).
    idle_timeout: AtomicU64,
    /// Wakes every connection waiting idle, to close it.
    reload: Notify,
    /// Reloads so far: a connection whose response went out before the
    /// latest is idle at it, even if its task has not begun waiting yet.
    reloads: AtomicU64,
    reload_closes: Counter,
}

/// The methods counted one by one; any other method is counted together.
const METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
    Method::CONNECT,
    Method::PATCH,
    Method::TRACE,
];

impl Counters {
    fn method(&self, method: &Method) -> &Counter {
        METHODS
            .iter()
            .position(|m| m == method)
            .map_or(&self.other_methods, |i| &self.by_method[i])
    }
}

impl IdleClosingServer {
    /// Starts a server with default options that closes connections idle for
    /// `idle_timeout`.
    pub async fn start(idle_timeout: Duration) -> io::Result<Self> {
        Self::builder(idle_timeout).start().await
    }

    /// A builder for a server that closes connections idle for
    /// `idle_timeout`; see [`IdleClosingServerBuilder`] for the options.
    pub fn builder(idle_timeout: Duration) -> IdleClosingServerBuilder {
        IdleClosingServerBuilder {
            idle_timeout,
            keep_alive_header: None,
            response_body: Bytes::from_static(b"ok"),
            think_time: Duration::ZERO,
            max_requests: None,
            close_delay: Duration::ZERO,
        }
    }

    /// Closes every connection that is idle now (between requests), at
    /// once, like a server reload; counted in
    /// [`reload_closes`](Self::reload_closes), not
    /// [`idle_closes`](Self::idle_closes). A connection busy with a request
    /// finishes it and is closed once idle; one still reading a request
    /// head is left alone.
    pub fn close_idle(&self) {
        self.counters.reloads.fetch_add(1, Ordering::SeqCst);
        self.counters.reload.notify_waiters();
    }

    /// Changes the idle timeout for every idle period that starts from now
    /// on (one already running keeps its timer).
    pub fn set_idle_timeout(&self, idle_timeout: Duration) {
        let nanos = u64::try_from(idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        self.counters
            .idle_timeout
            .store(nanos.max(1), Ordering::Relaxed);
    }

    /// Connections closed by [`close_idle`](Self::close_idle).
    pub fn reload_closes(&self) -> u64 {
        self.counters.reload_closes.get()
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.counters.connections.get()
    }

    /// Request heads read completely.
    pub fn requests(&self) -> u64 {
        self.counters.requests.get()
    }

    /// Responses written completely (each after its request body was read
    /// completely).
    pub fn responses(&self) -> u64 {
        self.counters.responses.get()
    }

    /// Requests with `method` whose bodies were read completely and that the
    /// server then answered (counted just before the answer is written, so a
    /// client holding its response always finds its request counted). Methods other than the nine standard ones are not counted
    /// one by one: for them this returns the total over all of them.
    pub fn requests_by_method(&self, method: &Method) -> u64 {
        self.counters.method(method).get()
    }

    /// POST requests whose bodies were read completely and that the server
    /// answered (counted as for [`requests_by_method`](Self::requests_by_method)).
    pub fn posts(&self) -> u64 {
        self.requests_by_method(&Method::POST)
    }

    /// Connections closed by the idle timer.
    pub fn idle_closes(&self) -> u64 {
        self.counters.idle_closes.get()
    }

    /// Distinct `Idempotency-Key` values among the requests processed. The
    /// server remembers at most 65536 keys; see
    /// [`untracked_keys`](Self::untracked_keys).
    pub fn distinct_keys(&self) -> u64 {
        self.counters.keys.distinct()
    }

    /// Answered requests whose `Idempotency-Key` had already been answered:
    /// each one is a request processed twice.
    pub fn duplicate_keys(&self) -> u64 {
        self.counters.keys.duplicates()
    }

    /// Answered requests with a new key that was not remembered because the
    /// server already held 65536 keys (0 in any test of a sane size).
    pub fn untracked_keys(&self) -> u64 {
        self.counters.keys.untracked()
    }
}

impl_addr!(IdleClosingServer);

impl IdleClosingServerBuilder {
    /// How long a connection may sit idle after a response before the server
    /// closes it.
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// When `Some(d)`, responses carry `Keep-Alive: timeout=<whole seconds
    /// of d>` and `Connection: keep-alive`, like Apache. Default `None`.
    ///
    /// The header only advertises a limit; the connection is still closed
    /// after `idle_timeout`, so the two can be set to disagree on purpose.
    pub fn keep_alive_header(mut self, hint: Option<Duration>) -> Self {
        self.keep_alive_header = hint;
        self
    }

    /// The body of every response. Default `ok`.
    pub fn response_body(mut self, body: impl Into<Bytes>) -> Self {
        self.response_body = body.into();
        self
    }

    /// How long to wait after reading a request before responding. Default
    /// zero.
    pub fn think_time(mut self, think_time: Duration) -> Self {
        self.think_time = think_time;
        self
    }

    /// Serve at most this many requests per connection: the last one is
    /// answered with `Connection: close` and the connection closed, like
    /// Apache's `MaxKeepAliveRequests` or nginx's `keepalive_requests`.
    /// Default `None` (no limit).
    pub fn max_requests(mut self, max: impl Into<Option<u64>>) -> Self {
        self.max_requests = max.into();
        self
    }

    /// Closes each idle connection up to this much *after* `idle_timeout`: a
    /// delay drawn uniformly from `[0, max)` for every idle period (default
    /// zero: exactly at the timeout). A server whose close is scheduled
    /// slightly late, like an event loop's timer: a client reusing a
    /// connection right at the nominal timeout mostly wins the race, so
    /// idle closes are rarely observed and the races it loses are the
    /// evidence.
    pub fn close_delay(mut self, max: Duration) -> Self {
        self.close_delay = max;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(self) -> io::Result<IdleClosingServer> {
        let (running, counters) = start(self, serve).await?;
        Ok(IdleClosingServer { running, counters })
    }
}

async fn serve(
    mut conn: Conn<TcpStream>,
    config: Arc<IdleClosingServerBuilder>,
    counters: Arc<Counters>,
) -> io::Result<()> {
    let mut rng = Rng::new(counters.connections.next());
    let mut extra = Vec::new();
    if let Some(hint) = config.keep_alive_header {
        extra.push(format!("Keep-Alive: timeout={}", hint.as_secs()));
        extra.push("Connection: keep-alive".to_owned());
    }
    let keep_alive = ok_response(&config.response_body, &extra);
    let close = ok_response(&config.response_body, &["Connection: close".to_owned()]);

    let mut first = true;
    let mut served = 0u64;
    let mut reloads = counters.reloads.load(Ordering::SeqCst);
    loop {
        if !first {
            let idle = match counters.idle_timeout.load(Ordering::Relaxed) {
                0 => config.idle_timeout,
                nanos => Duration::from_nanos(nanos),
            };
            let idle = idle + config.close_delay.mul_f64(rng.unit());
            // Registered before the check, so a reload from now on reaches
            // it; one since the response went out closes it at once.
            let reload = counters.reload.notified();
            tokio::pin!(reload);
            reload.as_mut().enable();
            if counters.reloads.load(Ordering::SeqCst) != reloads {
                counters.reload_closes.inc();
                return conn.shutdown().await;
            }
            tokio::select! {
                waited = tokio::time::timeout(idle, conn.wait_for_byte()) => match waited {
                    Err(_idle) => {
                        counters.idle_closes.inc();
                        return conn.shutdown().await;
                    }
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => return Ok(()),
                    Ok(Err(e)) => return Err(e),
                },
                () = reload => {
                    counters.reload_closes.inc();
                    return conn.shutdown().await;
                }
            }
        }
        first = false;

        let Some(head) = conn.next_request().await? else {
            return Ok(());
        };
        counters.requests.inc();
        conn.read_body(&mut head.body(), |_| {}).await?;
        if !config.think_time.is_zero() {
            tokio::time::sleep(config.think_time).await;
        }
        served += 1;
        let last = !head.keep_alive || config.max_requests.is_some_and(|max| served >= max);
        let response = if last { &close } else { &keep_alive };
        // Counted as processed before the answer goes out: a client that has
        // its response must find its request counted, however the server
        // task is scheduled.
        counters.method(&head.method).inc();
        if let Some(key) = &head.idempotency_key {
            counters.keys.record(key.as_bytes());
        }
        // A reload from here on closes the connection once it is idle.
        reloads = counters.reloads.load(Ordering::SeqCst);
        conn.write_all(without_body(response, config.response_body.len(), &head))
            .await?;
        counters.responses.inc();
        if last {
            return conn.shutdown().await;
        }
    }
}
