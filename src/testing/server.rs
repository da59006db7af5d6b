//! Plumbing shared by every test server: binding, the accept loop, shutdown
//! on drop, counters and response heads.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::http1::{Conn, RequestHead};

/// The only address any server in this module binds or connects to.
pub(crate) const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// A monotonically increasing counter, readable from any thread.
#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Increments and returns the new value (1 for the first call).
    pub(crate) fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

/// The counters most servers keep, shared by them instead of a copy each
/// (servers with more to count keep their own).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections: Counter,
    pub(crate) requests: Counter,
    pub(crate) responses: Counter,
    /// Request-body bytes read.
    pub(crate) bytes_read: Counter,
    /// Response-body bytes written.
    pub(crate) bytes_written: Counter,
}

/// `http://ADDR/`
pub(crate) fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

/// A running accept loop. Dropping it aborts the loop, which drops the
/// listener and the [`JoinSet`] holding every connection task, so all of
/// them stop (on the runtime, right after the drop).
#[derive(Debug)]
pub(crate) struct Running {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Running {
    /// Binds `127.0.0.1:0` and serves each accepted connection with
    /// `handler`. A handler's error ends only its own connection.
    pub(crate) async fn start<H, F>(handler: H) -> io::Result<Self>
    where
        H: Fn(Conn<TcpStream>) -> F + Send + 'static,
        F: Future<Output = io::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind(LOOPBACK).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, handler));
        Ok(Self { addr, task })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop<H, F>(listener: TcpListener, handler: H)
where
    H: Fn(Conn<TcpStream>) -> F,
    F: Future<Output = io::Result<()>> + Send + 'static,
{
    let addr = listener.local_addr().ok();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Small responses must not wait for Nagle + delayed ACK.
                    let _ = stream.set_nodelay(true);
                    let conn = handler(Conn::new(stream));
                    conns.spawn(async move {
                        if let Err(error) = conn.await {
                            tracing::debug!(?addr, %peer, %error, "test server connection ended");
                        }
                    });
                }
                Err(error) => {
                    tracing::debug!(?addr, %error, "test server accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            // Reap finished connections so the set only holds live ones.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Starts a server whose connections run `serve` with a shared `config` and
/// fresh, shared `counters`.
pub(crate) async fn start<C, K, F>(
    config: C,
    serve: fn(Conn<TcpStream>, Arc<C>, Arc<K>) -> F,
) -> io::Result<(Running, Arc<K>)>
where
    C: Send + Sync + 'static,
    K: Default + Send + Sync + 'static,
    F: std::future::Future<Output = io::Result<()>> + Send + 'static,
{
    let counters = Arc::<K>::default();
    let config = Arc::new(config);
    let running = Running::start({
        let counters = counters.clone();
        move |conn| serve(conn, config.clone(), counters.clone())
    })
    .await?;
    Ok((running, counters))
}

/// Implements `addr()` and `url()` for a server type with a `running` field.
macro_rules! impl_addr {
    ($ty:ty) => {
        impl $ty {
            /// The address the server listens on (always `127.0.0.1`).
            pub fn addr(&self) -> std::net::SocketAddr {
                self.running.addr()
            }

            /// `http://127.0.0.1:PORT/`
            pub fn url(&self) -> String {
                $crate::testing::server::url(self.addr())
            }
        }
    };
}
pub(crate) use impl_addr;

/// A `200 OK` response head with a `Content-Length` and extra header lines
/// (each without its `\r\n`).
pub(crate) fn ok_head(content_length: u64, extra: &[String]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 200 OK\r\nContent-Length: {content_length}\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// A complete `200 OK` response with `body`.
pub(crate) fn ok_response(body: &[u8], extra: &[String]) -> Vec<u8> {
    let mut response = ok_head(body.len() as u64, extra);
    response.extend_from_slice(body);
    response
}

/// `response` as is, or only its head when answering a `HEAD` request.
pub(crate) fn without_body<'a>(
    response: &'a [u8],
    body_len: usize,
    request: &RequestHead,
) -> &'a [u8] {
    if request.method == http::Method::HEAD {
        &response[..response.len() - body_len]
    } else {
        response
    }
}
