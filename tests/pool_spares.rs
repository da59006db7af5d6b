//! Connections already on their way: the one-call client's pools do not
//! connect again for a burst while the connects a previous burst no longer
//! needed are still in their handshakes (the engine's `spares` module).
//!
//! hyper-util's `pool::cache` serves a request from a connection that came
//! back idle while that request's own connect was still running; that
//! connect finishes in the background and joins the pool. These servers
//! make the connects slow and the requests fast, so every burst but the
//! first finds those connects still running: each request of it waits for
//! one of them (or for a connection coming back) instead of connecting.
//! Server-side facts decide: TCP connections accepted, TLS handshakes,
//! requests served. Each test runs on one thread, so the order of the
//! checkouts is the order of the requests.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::time::sleep;
use tower_conn_lifecycle::client::{self, Client};

use common::h2::burst;
use common::pki::Ca;
use common::raw::{Conn, RawServer};
use common::{eventually, STEP_LIMIT};

/// Requests in flight at once.
const BURST: usize = 16;
/// Bursts sent one after the other.
const BURSTS: usize = 5;
/// How long a connect takes (far longer than a burst of requests on a
/// connection that is already open).
const SLOW_CONNECT: Duration = Duration::from_millis(300);
/// After the last burst, how long the test waits for a connect that should
/// not have been started to show (one started then would have ended by
/// now): a window in which nothing must happen.
const SETTLE: Duration = Duration::from_millis(400);

/// Sends `rounds` bursts of `BURST` GETs to `url`, one burst after the
/// other; every request must succeed with `body`.
async fn bursts(client: &Client<Full<Bytes>>, url: &str, body: &[u8], rounds: usize) {
    for round in 0..rounds {
        for got in burst(client, url, BURST, &format!("burst {round}")).await {
            assert_eq!(&got[..], body, "burst {round}");
        }
    }
}

/// A keep-alive server answering `ok` to every request at once; after the
/// first `free` requests it holds each answer until `BURST` requests wait
/// for theirs (so those bursts need a connection per request).
async fn ok_server(free: usize) -> RawServer {
    let served = Arc::new(AtomicUsize::new(0));
    let hold = Arc::new(Barrier::new(BURST));
    RawServer::start(move |mut conn: Conn| {
        let (served, hold) = (served.clone(), hold.clone());
        async move {
            // Bounded: every turn reads a head; the server's own limit ends
            // the connection otherwise.
            while conn.read_head().await.is_some() {
                conn.buf.clear();
                if served.fetch_add(1, Ordering::SeqCst) >= free {
                    hold.wait().await;
                }
                if !conn
                    .write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                {
                    return;
                }
            }
        }
    })
    .await
}

/// The first burst's connects: the first quick, the others slow; later
/// ones quick.
fn first_quick(n: usize) -> Duration {
    if (1..BURST).contains(&n) {
        SLOW_CONNECT
    } else {
        Duration::from_millis(10)
    }
}

/// A connector to `server` (on 127.0.0.1, whatever the URI says) whose
/// connect number `n` (from 0) takes `delay(n)` and then fails if
/// `fails(n)`; returns it and its count of calls.
fn slow_connector(
    server: &RawServer,
    delay: fn(usize) -> Duration,
    fails: fn(usize) -> bool,
) -> (
    impl tower::Service<
            http::Uri,
            Response = TokioIo<TcpStream>,
            Error = std::io::Error,
            Future = impl Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static,
    Arc<AtomicUsize>,
) {
    let addr = server.addr;
    assert!(addr.ip().is_loopback());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let connector = tower::service_fn(move |_: http::Uri| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            sleep(delay(n)).await;
            if fails(n) {
                return Err(std::io::Error::other(format!("connect {n} fails")));
            }
            Ok(TokioIo::new(TcpStream::connect(addr).await?))
        }
    });
    (connector, calls)
}

/// `https://`, HTTP/1 only, each TLS handshake 300 ms: the first burst is
/// served by the first connections while the others finish; every later
/// burst waits for those instead of connecting. Exactly `BURST` connections
/// and handshakes for 80 requests (hyper-util's cache alone made 76).
#[tokio::test(flavor = "current_thread")]
async fn later_bursts_wait_for_tls_handshakes_already_under_way() {
    let ca = Ca::new("spares ca");
    let mut server = common::tls::TlsServer::start_slow_handshakes(
        &ca.leaf(&["localhost"]),
        common::tls::Mode::Http1Only,
        SLOW_CONNECT,
    )
    .await;
    let url = format!("https://localhost:{}/", server.addr.port());
    let client = client::builder()
        .tls_config(common::tls::client_config(&ca))
        .build::<Full<Bytes>>();
    bursts(&client, &url, b"HTTP/1.1", BURSTS).await;
    assert_eq!(server.requests(), BURSTS * BURST);
    let stats = client.connection_stats();
    eventually(STEP_LIMIT, "the first burst's connects", || {
        stats.opened() >= BURST as u64
    })
    .await;
    sleep(SETTLE).await;
    let handshakes = server.handshakes_so_far();
    let failed: Vec<_> = handshakes.iter().filter_map(|h| h.as_ref().err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        (stats.opened(), handshakes.len()),
        (BURST as u64, BURST),
        "connections opened, handshakes at the server"
    );
}

/// `http://` through a connector whose first connect takes 10 ms and every
/// other 300 ms: the first connection serves the first burst while the
/// burst's other connects run on; the same, on the engine's fast path
/// (which checks out without `poll_ready`). hyper-util's cache alone made
/// 46 connections here.
#[tokio::test(flavor = "current_thread")]
async fn later_bursts_wait_for_connects_already_under_way() {
    let server = ok_server(usize::MAX).await;
    let (connector, calls) = slow_connector(&server, first_quick, |_| false);
    let client = client::builder()
        .connector(connector)
        .build::<Full<Bytes>>();
    bursts(&client, &server.url("/"), b"ok", BURSTS).await;
    let stats = client.connection_stats();
    eventually(STEP_LIMIT, "the first burst's connects", || {
        stats.opened() >= BURST as u64
    })
    .await;
    sleep(SETTLE).await;
    assert_eq!(server.counters.heads.load(Ordering::SeqCst), BURSTS * BURST);
    assert_eq!(
        (
            calls.load(Ordering::SeqCst),
            stats.opened(),
            server.counters.connections.load(Ordering::SeqCst)
        ),
        (BURST, BURST as u64, BURST),
        "connects, connections opened, connections accepted"
    );
}

/// The connects a burst waits for fail: the requests waiting for them
/// connect on their own then, and none of them fails (a spare's error is
/// nobody's). The first connect is quick and serves the whole first burst;
/// the other fifteen fail after 300 ms; the second burst is held at the
/// server until all sixteen of its requests are in, so it needs sixteen
/// connections: the one that is open and fifteen new ones.
#[tokio::test(flavor = "current_thread")]
async fn requests_waiting_for_connects_that_fail_connect_themselves() {
    let server = ok_server(BURST).await;
    let (connector, calls) = slow_connector(&server, first_quick, |n| (1..BURST).contains(&n));
    let client = client::builder()
        .connector(connector)
        .build::<Full<Bytes>>();
    bursts(&client, &server.url("/"), b"ok", 2).await;
    assert_eq!(server.counters.heads.load(Ordering::SeqCst), 2 * BURST);
    assert_eq!(
        (
            calls.load(Ordering::SeqCst),
            server.counters.connections.load(Ordering::SeqCst)
        ),
        (2 * BURST - 1, BURST),
        "connects (fifteen failed, fifteen to replace them), connections accepted"
    );
}
