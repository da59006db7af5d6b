//! What the integration tests share (`mod common;` in each): bounded waits
//! and their limits, the tracked client they build on, the stale-on-reuse
//! server, the one test PKI and its TLS server, and a retry through the
//! composable pool.
//!
//! Cargo builds every `tests/*.rs` as its own crate, and each uses part of
//! this module.
#![allow(dead_code)]

pub mod h2;
pub mod pki;
pub mod raw;
pub mod tls;

use std::future::Future;
use std::time::Duration;

use hyper_util::client::legacy::{connect::HttpConnector, Builder, Client};
use hyper_util::rt::TokioExecutor;
use tokio::time::{sleep, timeout, Instant};
use tower::Layer;
use tower_conn_lifecycle::testing::ResetServer;
use tower_conn_lifecycle::track::{TrackConnections, TrackConnectionsLayer, TrackStats};

/// Reads the next request head from a raw test server's connection
/// (without its blank line), keeping what follows it in `buf`; `None` once
/// the client closed the connection or it failed.
pub async fn next_head(io: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Upper bound for any single step that must complete (an exchange, a
/// handshake, a counter catching up after a close), so a broken test fails
/// instead of hanging.
pub const STEP_LIMIT: Duration = Duration::from_secs(10);

/// Generous margin for the scheduler on a loaded 2-core CI machine: how late
/// an expected event (a close, a counter update) may be before a test fails.
pub const SLACK: Duration = Duration::from_secs(2);

/// How late a timeout may fire on a loaded 2-core CI machine (hyper-util's
/// client on loopback).
pub const LATE: Duration = Duration::from_millis(250);

/// How often a wait polls what it waits for.
pub const POLL: Duration = Duration::from_millis(5);

/// `f`'s output; panics naming `what` if it takes longer than `limit`.
pub async fn bounded<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// Waits, polling every [`POLL`], until `cond` holds; panics naming `what`
/// if it still does not after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(POLL).await;
    }
}

/// The kit's [`ResetServer`] resetting the second request of every
/// connection once its first byte has arrived: a reused connection gone
/// stale under its next request, a new one never.
pub async fn stale_on_reuse() -> ResetServer {
    ResetServer::builder()
        .on_request(2)
        .reset_after_bytes(1)
        .start()
        .await
        .unwrap()
}

/// hyper-util's connector under the tracker.
pub type Tracked = TrackConnections<HttpConnector>;

/// hyper-util's client (default settings) over `HttpConnector` under a new
/// tracker, and the tracker's counters.
pub fn tracked_client<B>() -> (Client<Tracked, B>, TrackStats)
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    tracked_client_with(&Client::builder(TokioExecutor::new()), HttpConnector::new())
}

/// [`tracked_client`] built by `builder` over `http`.
pub fn tracked_client_with<B>(
    builder: &Builder,
    http: HttpConnector,
) -> (Client<Tracked, B>, TrackStats)
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    let track = TrackConnectionsLayer::new();
    let stats = track.stats();
    (builder.build(track.layer(http)), stats)
}

/// hyper-util's client builder speaking HTTP/2 only (prior knowledge).
pub fn http2_only() -> Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(true);
    builder
}

/// An `HttpConnector` with small kernel send buffers (64 KiB), so "written
/// to the socket" is close to "read by the server" and a server that stops
/// reading blocks the client's writes quickly.
pub fn small_buffers() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_send_buffer_size(Some(64 * 1024));
    http
}

/// A POST on a composable pool (the crate's [`pool`](tower_conn_lifecycle::pool)
/// pieces) whose connections expire after 50 ms, 150 ms of idleness, and a
/// second POST through `RetryOnStaleConnection` on the pool allowed one
/// checkout per attempt: the expired connection's refusal reaches Retry,
/// which sends the request again. Returns the second response (body
/// unread).
pub async fn post_again_after_expiry(
    url: &str,
) -> http::Response<
    tower_conn_lifecycle::track::TrackedBody<
        tower_conn_lifecycle::pool::Body<
            tower_conn_lifecycle::track::TrackedBody<hyper::body::Incoming>,
        >,
    >,
> {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::pool::cache;
    use tower::ServiceExt;
    use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
    use tower_conn_lifecycle::pool;
    use tower_conn_lifecycle::retry::RetryOnStaleConnectionLayer;

    let connect = pool::connect(
        TrackConnectionsLayer::new().layer(HttpConnector::new()),
        hyper::client::conn::http1::Builder::new(),
        IdleExpiryLayer::new(Duration::from_millis(50)).learn(false),
    );
    let cache = cache::builder()
        .executor(TokioExecutor::new())
        .build(connect);
    let client = RetryOnStaleConnectionLayer::new().layer(pool::checkout(cache, 1));
    let post = || {
        http::Request::post(url)
            .body(Full::new(Bytes::from_static(b"once")))
            .unwrap()
    };
    let res = client.clone().oneshot(post()).await.unwrap();
    res.into_body().collect().await.unwrap();
    // The pooled connection sits idle past its expiry, but stays in the
    // pool (claimed by nothing): its checkout is refused before any byte.
    sleep(Duration::from_millis(150)).await;
    client.oneshot(post()).await.unwrap()
}

/// A TCP proxy on 127.0.0.1 to `port` (on 127.0.0.1) that waits `delay`
/// before it connects each client (a slow connection set-up); counts the
/// connections it accepted.
pub async fn slow_proxy(
    port: u16,
    delay: Duration,
) -> (
    u16,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                sleep(delay).await;
                let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (proxy_port, accepted, task)
}
