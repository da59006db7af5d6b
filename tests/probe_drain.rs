//! Hostile probes of the graceful shutdown (`Client::drain`, the
//! `DrainHandle` layer on hyper-util's legacy client): loopback servers that
//! never read an upload, trickle a body, stall before the head, upgrade,
//! speak HTTP/2 over TLS; drains with odd deadlines, twice, dropped; and
//! the report's figures against what the servers saw.
//!
//! Every await that could hang is bounded (`bounded`, `eventually`) so a
//! hang fails the test; every loop is bounded in count and time. Sleeps
//! only set up timing (each one says why), never assert.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::raw::{Conn, RawServer, OK_RESPONSE};
use common::{bounded, eventually, SLACK, STEP_LIMIT};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::{sleep, Instant};
use tower::ServiceExt;
use tower_conn_lifecycle::drain::{DrainCut, DrainReport, Draining};
use tower_conn_lifecycle::{client, find_cause, BoxError};

type Body = Full<Bytes>;

/// How late a cut request may fail, or a drain end, after its deadline on
/// a loaded 2-core machine.
const CUT_SLACK: Duration = Duration::from_millis(400);

/// How long a server connection waits for the client to close it.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// A deadline a drain must never reach in a test that expects it to end
/// early: reaching it shows up as a drain taking that long.
const FAR_DEADLINE: Duration = Duration::from_secs(8);

fn get(url: &str) -> Request<Body> {
    Request::get(url).body(Body::default()).unwrap()
}

/// What the server saw of its connections' ends: "eof", an error kind, or
/// "still open after …".
#[derive(Default)]
struct Ends(Mutex<Vec<String>>);

impl Ends {
    fn push(&self, how: String) {
        self.0.lock().unwrap().push(how);
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Waits for the client to close `conn` and records how.
async fn record_close(mut conn: Conn, ends: &Ends) {
    let closed = conn.wait_closed(CLOSE_LIMIT).await;
    ends.push(closed.how);
}

/// A server answering every request on a connection with `ok`
/// (keep-alive), recording each connection's end.
async fn ok_server(ends: Arc<Ends>) -> RawServer {
    RawServer::start(move |mut conn| {
        let ends = ends.clone();
        async move {
            // Bounded: `read_head` fails on EOF or after its IO limit.
            while conn.read_head().await.is_some() {
                if !conn.write(OK_RESPONSE).await {
                    ends.push("write failed".into());
                    return;
                }
            }
            ends.push("closed".into());
        }
    })
    .await
}

/// The whole exchange on the one-call client.
async fn fetch(client: &client::Client<Body>, req: Request<Body>) -> Result<Bytes, BoxError> {
    let res = client.clone().oneshot(req).await?;
    assert_eq!(res.status(), StatusCode::OK);
    Ok(res.into_body().collect().await?.to_bytes())
}

fn spawn_fetch(
    client: &client::Client<Body>,
    req: Request<Body>,
) -> tokio::task::JoinHandle<Result<Bytes, BoxError>> {
    let client = client.clone();
    tokio::spawn(async move { fetch(&client, req).await })
}

/// The report's request counts: (in flight at its start, completed, cut).
fn counts(report: &DrainReport) -> (u64, u64, u64) {
    (
        report.in_flight_at_start(),
        report.completed(),
        report.cut(),
    )
}

/// `err` carries a `DrainCut`.
fn assert_cut(err: &BoxError) {
    assert!(
        find_cause::<DrainCut>(err.as_ref()).is_some(),
        "not cut: {err}"
    );
}

// ---------------------------------------------------------------------------
// A connection opened after the drain began (its request was in flight,
// connecting).

/// How long the slow connector waits before it connects.
const CONNECT_DELAY: Duration = Duration::from_millis(300);

/// A client whose every connect first waits [`CONNECT_DELAY`].
fn slow_connecting_client() -> client::Client<Body> {
    use hyper_util::client::legacy::connect::HttpConnector;
    use tower::Service;
    let http = HttpConnector::new();
    let slow = tower::service_fn(move |uri: http::Uri| {
        let mut http = http.clone();
        async move {
            sleep(CONNECT_DELAY).await;
            http.call(uri).await.map_err(BoxError::from)
        }
    });
    client::builder().connector(slow).build::<Body>()
}

/// A request in flight at the drain's start, still connecting: its
/// connection opens after the drain began. The request runs to its end;
/// then its connection must close (the drain's promise: "a connection
/// whose exchange ends during the drain closes instead of going back to
/// its pool") and the drain must end then, not at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_opened_during_the_drain_closes_at_its_exchange_end() {
    let ends = Arc::new(Ends::default());
    let server = ok_server(ends.clone()).await;
    let client = slow_connecting_client();
    let task = spawn_fetch(&client, get(&server.url("/")));
    // Set-up: the request is in the connector's delay (a third of it).
    sleep(CONNECT_DELAY / 3).await;
    assert_eq!(server.counters.connections.load(Ordering::SeqCst), 0);

    let started = Instant::now();
    let report = bounded(STEP_LIMIT, "the drain", client.drain(FAR_DEADLINE)).await;
    let took = started.elapsed();
    let body = bounded(STEP_LIMIT, "the request", task).await.unwrap();
    assert_eq!(body.expect("the in-flight request failed"), "ok");
    assert_eq!(counts(&report), (1, 1, 0), "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    assert!(
        took < FAR_DEADLINE / 2,
        "the drain waited for its deadline: {took:?} ({report})"
    );
    eventually(SLACK, "the server sees the connection closed", || {
        ends.len() == 1
    })
    .await;
    assert_eq!(ends.all(), ["closed"]);
    assert_eq!(server.counters.heads.load(Ordering::SeqCst), 1);
}

/// The same with the drain future dropped at once: the client stays
/// draining and "connections still close as their exchanges end".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_opened_during_a_dropped_drain_closes_at_its_exchange_end() {
    let ends = Arc::new(Ends::default());
    let server = ok_server(ends.clone()).await;
    let client = slow_connecting_client();
    let task = spawn_fetch(&client, get(&server.url("/")));
    // Set-up: the request is in the connector's delay.
    sleep(CONNECT_DELAY / 3).await;
    drop(client.drain(FAR_DEADLINE));
    assert!(client.drain_handle().is_draining());
    let body = bounded(STEP_LIMIT, "the request", task).await.unwrap();
    assert_eq!(body.expect("the in-flight request failed"), "ok");
    eventually(SLACK, "the server sees the connection closed", || {
        ends.len() == 1
    })
    .await;
    assert_eq!(ends.all(), ["closed"]);
    // The client's side of the close may trail the server's.
    eventually(SLACK, "the client's connection closed", || {
        client.connection_stats().open_now() == 0
    })
    .await;
}

// ---------------------------------------------------------------------------
// A scripted server: what it does with a request depends on its path.

/// How long `/slow` waits before it answers.
const SLOW: Duration = Duration::from_millis(200);

/// How long `/trickle` waits between its body's bytes (100 of them).
const TRICKLE_EVERY: Duration = Duration::from_millis(50);

/// A raw HTTP/1.1 server: `/` answers `ok` at once, `/slow` after
/// [`SLOW`], `/hang` never (it waits for the client to close), `/trickle`
/// sends a 100-byte body a byte every [`TRICKLE_EVERY`], `/partial` a head
/// and 1 of 10 body bytes, `/stuck` never reads the request's body (until
/// a permit of `release`, then waits for the close), `/held` answers `ok`
/// once it takes a permit of `release`. Every connection's end is
/// recorded in `ends` ("closed" once the client closed it, "write failed").
struct Scripted {
    server: RawServer,
    ends: Arc<Ends>,
    release: Arc<tokio::sync::Semaphore>,
}

impl Scripted {
    async fn start() -> Self {
        let ends = Arc::new(Ends::default());
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (e, r) = (ends.clone(), release.clone());
        let server = RawServer::start(move |conn| script(conn, e.clone(), r.clone())).await;
        Scripted {
            server,
            ends,
            release,
        }
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    fn heads(&self) -> usize {
        self.server.counters.heads.load(Ordering::SeqCst)
    }

    fn connections(&self) -> usize {
        self.server.counters.connections.load(Ordering::SeqCst)
    }

    /// Waits until the server saw `n` request heads.
    async fn heads_reach(&self, n: usize) {
        eventually(STEP_LIMIT, "the requests at the server", || {
            self.heads() >= n
        })
        .await;
        assert_eq!(self.heads(), n);
    }

    /// Waits until every connection ended, as the server saw it.
    async fn all_closed(&self) {
        eventually(SLACK + CLOSE_LIMIT, "every connection closed", || {
            self.ends.len() == self.connections()
        })
        .await;
    }
}

async fn script(mut conn: Conn, ends: Arc<Ends>, release: Arc<tokio::sync::Semaphore>) {
    // Bounded: every turn needs a new request head (each read is bounded).
    while let Some(head) = conn.read_head().await {
        let response: &[u8] = match head.path.as_str() {
            "/hang" => return record_close(conn, &ends).await,
            "/stuck" => {
                if let Ok(permit) = release.acquire().await {
                    permit.forget();
                }
                return record_close(conn, &ends).await;
            }
            "/partial" => {
                conn.skip_body(head.content_length()).await;
                if !conn
                    .write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\no")
                    .await
                {
                    ends.push("write failed".into());
                    return;
                }
                return record_close(conn, &ends).await;
            }
            "/trickle" => {
                conn.skip_body(head.content_length()).await;
                if !conn
                    .write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
                    .await
                {
                    ends.push("write failed".into());
                    return;
                }
                for _ in 0..100 {
                    sleep(TRICKLE_EVERY).await;
                    if !conn.write(b"t").await {
                        ends.push("write failed".into());
                        return;
                    }
                }
                continue;
            }
            "/slow" => {
                conn.skip_body(head.content_length()).await;
                sleep(SLOW).await;
                OK_RESPONSE
            }
            "/held" => {
                conn.skip_body(head.content_length()).await;
                if let Ok(permit) = release.acquire().await {
                    permit.forget();
                }
                OK_RESPONSE
            }
            _ => {
                conn.skip_body(head.content_length()).await;
                OK_RESPONSE
            }
        };
        if !conn.write(response).await {
            ends.push("write failed".into());
            return;
        }
    }
    ends.push("closed".into());
}

/// A client whose kernel send buffers are small (an upload to a server
/// that does not read blocks soon).
fn small_buffer_client() -> client::Client<Body> {
    client::builder()
        .http_connector(common::small_buffers())
        .build::<Body>()
}

/// An upload stuck in a full socket buffer (the server never reads it) at
/// the drain: cut at the deadline, its connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_cuts_an_upload_stuck_in_a_full_socket_buffer() {
    const DEADLINE: Duration = Duration::from_millis(300);
    let server = Scripted::start().await;
    let client = small_buffer_client();
    let big = Request::post(server.url("/stuck"))
        .body(common::raw::body_of(16 * common::raw::MIB))
        .unwrap();
    let task = spawn_fetch(&client, big);
    server.heads_reach(1).await;
    // Set-up: the upload fills the buffers (the server reads nothing).
    sleep(common::raw::FILL_WAIT).await;

    let started = Instant::now();
    let report = bounded(STEP_LIMIT, "the drain", client.drain(DEADLINE)).await;
    let err = bounded(STEP_LIMIT, "the stuck upload", task)
        .await
        .unwrap()
        .expect_err("the stuck upload succeeded");
    let late = started.elapsed().saturating_sub(DEADLINE);
    assert_cut(&err);
    assert!(late <= CUT_SLACK, "cut {late:?} after the deadline");
    assert_eq!(counts(&report), (1, 0, 1), "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    server.release.add_permits(1);
    server.all_closed().await;
    assert_eq!(server.ends.all(), ["eof"]);
    assert_eq!(server.heads(), 1);
}

/// A response body trickling a byte at a time at the deadline: the reader
/// gets `DrainCut`, the server sees its writes fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_cuts_a_trickling_response_body() {
    const DEADLINE: Duration = Duration::from_millis(300);
    let server = Scripted::start().await;
    let client = client::builder().build::<Body>();
    let res = bounded(
        STEP_LIMIT,
        "the trickle's head",
        client.clone().oneshot(get(&server.url("/trickle"))),
    )
    .await
    .unwrap();
    let reader = tokio::spawn(async move {
        let mut body = res.into_body();
        let mut bytes = 0;
        // Bounded: 100 body bytes at most, then the end or an error.
        loop {
            match body.frame().await {
                Some(Ok(frame)) => bytes += frame.data_ref().map_or(0, |d| d.len()),
                Some(Err(e)) => return (bytes, Some(e)),
                None => return (bytes, None),
            }
        }
    });
    // Set-up: a few bytes trickle before the drain.
    sleep(TRICKLE_EVERY * 3).await;
    let started = Instant::now();
    let report = bounded(STEP_LIMIT, "the drain", client.drain(DEADLINE)).await;
    let (bytes, err) = bounded(STEP_LIMIT, "the reader", reader).await.unwrap();
    let late = started.elapsed().saturating_sub(DEADLINE);
    assert_cut(&err.expect("the trickle ended"));
    assert!(bytes > 0 && bytes < 100, "{bytes} bytes read");
    assert!(late <= CUT_SLACK, "cut {late:?} after the deadline");
    assert_eq!(report.in_flight_at_start(), 1, "{report}");
    assert_eq!(report.cut(), 1, "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    server.all_closed().await;
    assert_eq!(server.ends.all(), ["write failed"]);
}

/// The caller drops its request future while the drain waits for it: the
/// request ends there (completed, not cut), its connection closes, and
/// the drain ends at once rather than at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_future_dropped_during_the_drain_ends_it_early() {
    let server = Scripted::start().await;
    let client = client::builder().build::<Body>();
    let task = spawn_fetch(&client, get(&server.url("/hang")));
    server.heads_reach(1).await;
    let started = Instant::now();
    let drain = tokio::spawn(client.drain(FAR_DEADLINE));
    // Set-up: the drain is waiting.
    sleep(Duration::from_millis(50)).await;
    task.abort();
    let report = bounded(STEP_LIMIT, "the drain", drain).await.unwrap();
    let took = started.elapsed();
    assert!(took < FAR_DEADLINE / 2, "the drain took {took:?}");
    assert_eq!(counts(&report), (1, 1, 0), "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    server.all_closed().await;
    assert_eq!(server.heads(), 1);
}

/// A response body held unread through the drain's cut, dropped after the
/// drain resolved: nothing panics, the request is no longer in flight, the
/// connection closed at the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_held_unread_is_cut_then_dropped() {
    const DEADLINE: Duration = Duration::from_millis(200);
    let server = Scripted::start().await;
    let client = client::builder().build::<Body>();
    let res = bounded(
        STEP_LIMIT,
        "the partial head",
        client.clone().oneshot(get(&server.url("/partial"))),
    )
    .await
    .unwrap();
    let report = bounded(STEP_LIMIT, "the drain", client.drain(DEADLINE)).await;
    assert_eq!(report.cut(), 1, "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    server.all_closed().await;
    drop(res);
    assert_eq!(client.drain_handle().in_flight(), 0);
    // A second drain finds nothing to wait for.
    let again = bounded(STEP_LIMIT, "a second drain", client.drain(FAR_DEADLINE)).await;
    assert_eq!(again.in_flight_at_start(), 0, "{again}");
    assert_eq!(again.cut(), 0, "{again}");
    assert!(again.elapsed() < FAR_DEADLINE / 2, "{again}");
}

/// `Duration::ZERO` cuts at once; the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_deadline_cuts_at_once() {
    let server = Scripted::start().await;
    let client = client::builder().build::<Body>();
    let task = spawn_fetch(&client, get(&server.url("/hang")));
    server.heads_reach(1).await;
    let report = bounded(STEP_LIMIT, "the drain", client.drain(Duration::ZERO)).await;
    assert!(report.elapsed() < CUT_SLACK, "{report}");
    assert_eq!(counts(&report), (1, 0, 1), "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    let err = bounded(STEP_LIMIT, "the request", task)
        .await
        .unwrap()
        .unwrap_err();
    assert_cut(&err);
    server.all_closed().await;
}

/// `Duration::MAX` neither panics nor waits past the last request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maximal_deadline_waits_for_the_requests_only() {
    let server = Scripted::start().await;
    let client = client::builder().build::<Body>();
    let tasks: Vec<_> = (0..3)
        .map(|_| spawn_fetch(&client, get(&server.url("/slow"))))
        .collect();
    server.heads_reach(3).await;
    let report = bounded(STEP_LIMIT, "the drain", client.drain(Duration::MAX)).await;
    assert_eq!(counts(&report), (3, 3, 0), "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "ok");
    }
    server.all_closed().await;
}

/// The drain future dropped before its deadline: the client stays
/// draining (new requests refused, nothing written), nothing is cut at the
/// deadline, the request in flight ends normally past it, and its
/// connection closes at its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_drain_cuts_nothing_and_keeps_refusing() {
    const DEADLINE: Duration = Duration::from_millis(100);
    let server = Scripted::start().await;
    let client = client::builder().build::<Body>();
    let task = spawn_fetch(&client, get(&server.url("/held")));
    server.heads_reach(1).await;
    drop(client.drain(DEADLINE));
    // Set-up: well past the dropped drain's deadline.
    sleep(DEADLINE * 3).await;
    assert!(!task.is_finished(), "the request was cut");
    let err = bounded(
        STEP_LIMIT,
        "a new request",
        fetch(&client, get(&server.url("/"))),
    )
    .await
    .unwrap_err();
    assert!(find_cause::<Draining>(err.as_ref()).is_some(), "{err}");
    server.release.add_permits(1);
    let body = bounded(STEP_LIMIT, "the held request", task).await.unwrap();
    assert_eq!(body.expect("the held request failed"), "ok");
    server.all_closed().await;
    assert_eq!(server.ends.all(), ["closed"]);
    assert_eq!(server.heads(), 1);
}

/// Two drains at once (two clones): the first deadline cuts; each report
/// adds up (completed + cut == in flight at its start) and the later one
/// ends with the cut, not at its own deadline. A third, after, finds
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_drains_each_report_what_was_cut() {
    const SHORT: Duration = Duration::from_millis(300);
    let server = Scripted::start().await;
    let client = client::builder().build::<Body>();
    let tasks: Vec<_> = (0..3)
        .map(|_| spawn_fetch(&client, get(&server.url("/hang"))))
        .collect();
    let quick = spawn_fetch(&client, get(&server.url("/slow")));
    server.heads_reach(4).await;
    let other = client.clone();
    let (long, short) = tokio::join!(
        bounded(STEP_LIMIT, "the long drain", other.drain(FAR_DEADLINE)),
        bounded(STEP_LIMIT, "the short drain", client.drain(SHORT)),
    );
    for report in [&long, &short] {
        assert_eq!(report.in_flight_at_start(), 4, "{report}");
        assert_eq!(
            report.completed() + report.cut(),
            report.in_flight_at_start(),
            "{report}"
        );
        assert_eq!(report.completed(), 1, "{report}");
        assert_eq!(report.cut(), 3, "{report}");
        assert!(report.elapsed() < SHORT + CUT_SLACK, "{report}");
    }
    for task in tasks {
        assert_cut(&task.await.unwrap().unwrap_err());
    }
    assert_eq!(quick.await.unwrap().unwrap(), "ok");
    let after = bounded(STEP_LIMIT, "a later drain", client.drain(FAR_DEADLINE)).await;
    assert_eq!(after.in_flight_at_start(), 0, "{after}");
    assert!(after.elapsed() < FAR_DEADLINE / 2, "{after}");
    server.all_closed().await;
}

/// Two drains at once with the request's response body held unread (so
/// nothing of the request runs at the cut): the later-deadline drain must
/// end with the other's cut, not wait for its own deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_with_another_drains_cut_of_a_held_body() {
    const SHORT: Duration = Duration::from_millis(200);
    let server = Scripted::start().await;
    let client = client::builder().build::<Body>();
    let res = bounded(
        STEP_LIMIT,
        "the partial head",
        client.clone().oneshot(get(&server.url("/partial"))),
    )
    .await
    .unwrap();
    let (long, short) = tokio::join!(
        bounded(STEP_LIMIT, "the long drain", client.drain(FAR_DEADLINE)),
        bounded(STEP_LIMIT, "the short drain", client.drain(SHORT)),
    );
    for report in [&long, &short] {
        assert_eq!(report.in_flight_at_start(), 1, "{report}");
        assert_eq!(report.cut(), 1, "{report}");
        assert_eq!(report.connections_still_open(), Some(0), "{report}");
        assert!(report.elapsed() < SHORT + CUT_SLACK, "{report}");
    }
    let err = bounded(STEP_LIMIT, "the held body", res.into_body().collect())
        .await
        .unwrap_err();
    assert_cut(&err);
    server.all_closed().await;
}

// ---------------------------------------------------------------------------
// Upgrades (101 Switching Protocols).
//
// What the crate does elsewhere: the tracker marks an upgraded connection
// and from then on neither expires nor poisons it; the drain skips it when
// it cuts and does not count it as still open ("tunnels of upgraded
// connections are the caller's"). The 101's body is empty, so the request
// ends (for the drain) at its head. Decided here: that is right — a drain
// neither waits for nor cuts a tunnel the caller took; the caller shuts its
// tunnels down itself. These tests pin it: the tunnel keeps working through
// and after the drain, and the drain ends without waiting for it.

/// How long `/up-slow` waits before its 101.
const UPGRADE_DELAY: Duration = Duration::from_millis(200);

/// Answers `101` (after [`UPGRADE_DELAY`] for `/up-slow`), then echoes
/// until the client closes; records the end in `ends`.
async fn upgrade_server(ends: Arc<Ends>) -> RawServer {
    RawServer::start(move |mut conn| {
        let ends = ends.clone();
        async move {
            let Some(head) = conn.read_head().await else {
                return;
            };
            if head.path == "/up-slow" {
                sleep(UPGRADE_DELAY).await;
            }
            if !conn
                .write(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
                .await
            {
                ends.push("write failed".into());
                return;
            }
            // Bounded: every turn reads (each read bounded) or ends.
            loop {
                if !conn.buf.is_empty() {
                    let data = std::mem::take(&mut conn.buf);
                    if !conn.write(&data).await {
                        ends.push("echo failed".into());
                        return;
                    }
                }
                match conn.read_more(CLOSE_LIMIT).await {
                    common::raw::Read::Data(_) => {}
                    other => {
                        ends.push(format!("{other:?}"));
                        return;
                    }
                }
            }
        }
    })
    .await
}

fn upgrade_request(url: &str) -> Request<Body> {
    Request::get(url)
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Body::default())
        .unwrap()
}

/// Sends `msg` on the tunnel and reads it back.
async fn echo<T>(io: &mut T, msg: &[u8]) -> Result<(), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        io.write_all(msg).await?;
        let mut back = vec![0; msg.len()];
        io.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    match tokio::time::timeout(STEP_LIMIT, exchange).await {
        Ok(Ok(back)) if back == msg => Ok(()),
        Ok(Ok(back)) => Err(format!("echoed {back:?}")),
        Ok(Err(e)) => Err(format!("{e}")),
        Err(_) => Err("no echo".into()),
    }
}

/// A tunnel open at the drain: the drain neither waits for it nor cuts it
/// (not even at its deadline) nor counts it; the tunnel keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_open_at_the_drain_is_the_callers() {
    const DEADLINE: Duration = Duration::from_millis(200);
    let ends = Arc::new(Ends::default());
    let server = upgrade_server(ends.clone()).await;
    let client = client::builder().build::<Body>();
    let res = bounded(
        STEP_LIMIT,
        "the 101",
        client.clone().oneshot(upgrade_request(&server.url("/up"))),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    let upgraded = bounded(STEP_LIMIT, "the upgrade", hyper::upgrade::on(res))
        .await
        .unwrap();
    let mut tunnel = hyper_util::rt::TokioIo::new(upgraded);
    echo(&mut tunnel, b"before").await.unwrap();

    let report = bounded(STEP_LIMIT, "the drain", client.drain(DEADLINE)).await;
    assert_eq!(report.in_flight_at_start(), 0, "{report}");
    assert_eq!(report.cut(), 0, "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    assert!(report.elapsed() < DEADLINE, "{report}");
    // Set-up: past the deadline, in case anything cuts it late.
    sleep(DEADLINE * 2).await;
    echo(&mut tunnel, b"after the drain").await.unwrap();
    assert!(ends.all().is_empty(), "{:?}", ends.all());
    drop(tunnel);
    eventually(SLACK, "the tunnel closed by its owner", || ends.len() == 1).await;
    assert_eq!(ends.all(), ["Eof"]);
}

/// An upgrade in flight at the drain (the 101 comes after it began): the
/// request ends at its 101 (completed), the drain then ends without
/// waiting for the tunnel, and the tunnel, opened during the drain, works
/// past the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_completing_during_the_drain_keeps_its_tunnel() {
    const DEADLINE: Duration = Duration::from_millis(600);
    let ends = Arc::new(Ends::default());
    let server = upgrade_server(ends.clone()).await;
    let client = client::builder().build::<Body>();
    let pending = tokio::spawn(
        client
            .clone()
            .oneshot(upgrade_request(&server.url("/up-slow"))),
    );
    eventually(STEP_LIMIT, "the upgrade request at the server", || {
        server.counters.heads.load(Ordering::SeqCst) == 1
    })
    .await;
    let drain = tokio::spawn(client.drain(DEADLINE));
    let res = bounded(STEP_LIMIT, "the 101", pending)
        .await
        .unwrap()
        .expect("the upgrade in flight failed");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    let upgraded = bounded(STEP_LIMIT, "the upgrade", hyper::upgrade::on(res))
        .await
        .unwrap();
    let mut tunnel = hyper_util::rt::TokioIo::new(upgraded);
    let report = bounded(STEP_LIMIT, "the drain", drain).await.unwrap();
    assert_eq!(counts(&report), (1, 1, 0), "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    assert!(report.elapsed() < DEADLINE, "{report}");
    // Set-up: past the deadline.
    sleep(DEADLINE.saturating_sub(report.elapsed()) + Duration::from_millis(100)).await;
    echo(&mut tunnel, b"after the deadline").await.unwrap();
    assert!(ends.all().is_empty(), "{:?}", ends.all());
}

// ---------------------------------------------------------------------------
// Phase limits in flight.

/// A request with its own read limit (the client's, or a `PhaseOverride`
/// on a client without limits) fails by that limit during the drain: it
/// ended by an error of its own (completed, not cut) and the drain ends
/// then, not at its deadline; the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phase_limit_ending_a_request_during_the_drain() {
    use tower_conn_lifecycle::phase_timeout::{Elapsed, Phase, PhaseOverride, PhaseTimeoutLayer};
    const READ: Duration = Duration::from_millis(300);
    for with_override in [false, true] {
        let server = Scripted::start().await;
        let client = if with_override {
            client::builder().build::<Body>()
        } else {
            client::builder()
                .timeouts(PhaseTimeoutLayer::new().read(READ))
                .build::<Body>()
        };
        let mut req = get(&server.url("/hang"));
        if with_override {
            req.extensions_mut().insert(PhaseOverride::new().read(READ));
        }
        let task = spawn_fetch(&client, req);
        server.heads_reach(1).await;
        let report = bounded(STEP_LIMIT, "the drain", client.drain(FAR_DEADLINE)).await;
        let err = bounded(STEP_LIMIT, "the request", task)
            .await
            .unwrap()
            .unwrap_err();
        let elapsed = find_cause::<Elapsed>(err.as_ref()).unwrap_or_else(|| panic!("{err}"));
        assert_eq!(elapsed.phase(), Phase::Read);
        assert!(find_cause::<DrainCut>(err.as_ref()).is_none(), "{err}");
        assert_eq!(counts(&report), (1, 1, 0), "{report}");
        assert_eq!(report.connections_still_open(), Some(0), "{report}");
        assert!(report.elapsed() < FAR_DEADLINE / 2, "{report}");
        server.all_closed().await;
    }
}

// ---------------------------------------------------------------------------
// A stale-connection retry as the drain begins.
//
// Decided: the retry's attempt is refused (`Draining`), never written: it
// would need a new connection after the drain began, and the drain's
// promise is that nothing new goes out. The request was in flight, so it
// counts as completed (it failed by an error of its own making). Caveat
// (found; only the message fixed, the rest is the retry layer's error
// design): its error carries `Draining`, whose `nothing_written()` says
// `true` and whose message says "nothing was written" while the first
// attempt was written (the server read its head); the first attempt's
// error (the reset) is not in the chain; only `NotRetried::retries() == 1`
// told, and its message said nothing (now it says "1 earlier attempt was
// sent"). The retry layer had judged that attempt safe to send again, so
// sending it elsewhere is as safe as the retry would have been: the
// refusal's "nothing written" misleads, it does not endanger.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_drain_began_is_never_written() {
    use tower_conn_lifecycle::retry::{NotRetried, Rule};
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let server = RawServer::start(move |mut conn| {
        let gate = gate.clone();
        async move {
            // The first request on each connection answered; the second
            // reset once the test says so (a connection gone stale).
            if conn.read_head().await.is_none() || !conn.write(OK_RESPONSE).await {
                return;
            }
            if conn.read_head().await.is_none() {
                return;
            }
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
            conn.reset();
        }
    })
    .await;
    let client = client::builder().build::<Body>();
    let url = server.url("/");
    assert_eq!(
        bounded(STEP_LIMIT, "the first request", fetch(&client, get(&url)))
            .await
            .unwrap(),
        "ok"
    );
    let task = spawn_fetch(&client, get(&url));
    eventually(STEP_LIMIT, "the second request at the server", || {
        server.counters.heads.load(Ordering::SeqCst) == 2
    })
    .await;
    let drain = client.drain(FAR_DEADLINE);
    release.add_permits(1);
    let err = bounded(STEP_LIMIT, "the stale request", task)
        .await
        .unwrap()
        .unwrap_err();
    let report = bounded(STEP_LIMIT, "the drain", drain).await;
    println!("{}", tower_conn_lifecycle::error_chain(err.as_ref()));
    assert!(find_cause::<Draining>(err.as_ref()).is_some(), "{err}");
    let not_retried = find_cause::<NotRetried>(err.as_ref()).unwrap_or_else(|| panic!("{err}"));
    assert_eq!(not_retried.rule(), Rule::Draining);
    // The traces of the written first attempt: its error (the reset) is
    // not in the chain, whose refusal reads "request refused, nothing was
    // written"; `NotRetried` counts the retry and says it.
    assert_eq!(not_retried.retries(), 1, "{err}");
    assert!(
        err.to_string().contains("1 earlier attempt was sent"),
        "the error hides the written attempt: {err}"
    );
    assert_eq!(counts(&report), (1, 1, 0), "{report}");
    assert!(report.elapsed() < FAR_DEADLINE / 2, "{report}");
    // Set-up: time for a retry's connection to arrive, if one were sent.
    sleep(Duration::from_millis(100)).await;
    assert_eq!(server.counters.connections.load(Ordering::SeqCst), 1);
    assert_eq!(server.counters.heads.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------
// HTTP/2 over TLS: several streams on one connection at the drain.

/// A TLS (ALPN `h2` only) HTTP/2 server on 127.0.0.1: `/slow` answers
/// after [`SLOW`], `/hang` never, anything else at once. Counts
/// connections accepted, connections ended (its `serve_connection`
/// returned: the client closed or reset it) and requests.
struct H2Server {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Server {
    async fn start(ca: &common::pki::Ca) -> Self {
        Self::start_with(ca, None).await
    }

    /// With at most `max_streams` concurrent streams per connection.
    async fn start_with(ca: &common::pki::Ca, max_streams: Option<u32>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = ca
            .leaf(&["127.0.0.1"])
            .server_config(common::tls::provider(), &[b"h2"]);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (acc, end, reqs) = (accepted.clone(), ended.clone(), requests.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            // Ends with the server (aborted on drop).
            while let Ok((tcp, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let (acceptor, end, reqs) = (acceptor.clone(), end.clone(), reqs.clone());
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        end.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            reqs.fetch_add(1, Ordering::SeqCst);
                            async move {
                                match req.uri().path() {
                                    "/hang" => std::future::pending::<()>().await,
                                    "/slow" => sleep(SLOW).await,
                                    _ => {}
                                }
                                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                    Bytes::from_static(b"ok"),
                                )))
                            }
                        });
                    let served = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .max_concurrent_streams(max_streams)
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
                    let _ = tokio::time::timeout(CLOSE_LIMIT * 4, served).await;
                    end.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        H2Server {
            addr,
            accepted,
            ended,
            requests,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// An HTTP/2 server over TLS (at most `streams` concurrent streams) and a
/// one-call client trusting it whose connection is already up (one `GET`
/// answered), so that every later stream shares it.
async fn warm_h2(streams: Option<u32>) -> (H2Server, client::Client<Body>) {
    let ca = common::pki::Ca::new("probe drain ca");
    let server = H2Server::start_with(&ca, streams).await;
    let client = client::builder()
        .tls_config(common::tls::client_config(&ca))
        .build::<Body>();
    let warm = bounded(
        STEP_LIMIT,
        "a first GET",
        fetch(&client, get(&server.url("/"))),
    )
    .await
    .unwrap();
    assert_eq!(warm, "ok");
    (server, client)
}

/// Four streams on one HTTP/2 connection at the drain: two end before the
/// deadline, two are cut at it; the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_some_finished_some_cut_at_the_deadline() {
    const DEADLINE: Duration = Duration::from_millis(500);
    // One connection first, so that every stream shares it.
    let (server, client) = warm_h2(None).await;
    let slow: Vec<_> = (0..2)
        .map(|_| spawn_fetch(&client, get(&server.url("/slow"))))
        .collect();
    let hung: Vec<_> = (0..2)
        .map(|_| spawn_fetch(&client, get(&server.url("/hang"))))
        .collect();
    eventually(STEP_LIMIT, "the streams at the server", || {
        server.requests() == 5
    })
    .await;
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);

    let report = bounded(STEP_LIMIT, "the drain", client.drain(DEADLINE)).await;
    for task in slow {
        assert_eq!(task.await.unwrap().expect("a slow stream failed"), "ok");
    }
    for task in hung {
        let err = bounded(STEP_LIMIT, "a hung stream", task)
            .await
            .unwrap()
            .unwrap_err();
        assert_cut(&err);
    }
    assert_eq!(counts(&report), (4, 2, 2), "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    assert!(report.elapsed() < DEADLINE + CUT_SLACK, "{report}");
    eventually(SLACK, "the server sees the connection end", || {
        server.ended.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(server.requests(), 5);
}

/// Every stream of the HTTP/2 connection ends before the deadline: the
/// drain ends with them (not at the deadline) and the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_all_finished_close_the_connection_early() {
    let (server, client) = warm_h2(None).await;
    let slow: Vec<_> = (0..3)
        .map(|_| spawn_fetch(&client, get(&server.url("/slow"))))
        .collect();
    eventually(STEP_LIMIT, "the streams at the server", || {
        server.requests() == 4
    })
    .await;
    let report = bounded(STEP_LIMIT, "the drain", client.drain(FAR_DEADLINE)).await;
    for task in slow {
        assert_eq!(task.await.unwrap().expect("a slow stream failed"), "ok");
    }
    assert_eq!(counts(&report), (3, 3, 0), "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    assert!(report.elapsed() < FAR_DEADLINE / 2, "{report}");
    eventually(SLACK, "the server sees the connection end", || {
        server.ended.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

/// An HTTP/2 (TLS) connection opened after the drain began, for requests
/// in flight that were still connecting (one makes it, two wait for it),
/// with the drain future dropped at once: the client stays draining, so
/// the connection, shared by the three, must close once its streams end
/// (nothing will ever use it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_opened_during_a_dropped_drain_closes_after_its_stream() {
    use hyper_util::client::legacy::connect::HttpConnector;
    use tower::Service;
    let ca = common::pki::Ca::new("probe drain ca");
    let server = H2Server::start(&ca).await;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let slow = tower::service_fn(move |uri: http::Uri| {
        let mut http = http.clone();
        async move {
            sleep(CONNECT_DELAY).await;
            http.call(uri).await.map_err(BoxError::from)
        }
    });
    let client = client::builder()
        .connector(slow)
        .tls_config(common::tls::client_config(&ca))
        .build::<Body>();
    // One request makes the connection, the others wait for it.
    let tasks: Vec<_> = (0..3)
        .map(|_| spawn_fetch(&client, get(&server.url("/slow"))))
        .collect();
    // Set-up: the requests are in the connector's delay.
    sleep(CONNECT_DELAY / 3).await;
    assert_eq!(server.accepted.load(Ordering::SeqCst), 0);
    drop(client.drain(FAR_DEADLINE));
    for task in tasks {
        let body = bounded(STEP_LIMIT, "a request", task).await.unwrap();
        assert_eq!(body.expect("an in-flight request failed"), "ok");
    }
    assert_eq!(server.requests(), 3);
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        1,
        "the waiting requests did not share the connection"
    );
    eventually(SLACK, "the server sees the connection end", || {
        server.ended.load(Ordering::SeqCst) == 1
    })
    .await;
    // The client's side of the close may trail the server's.
    eventually(SLACK, "the client's connection closed", || {
        client.connection_stats().open_now() == 0
    })
    .await;
}

// ---------------------------------------------------------------------------
// The admission race: a request called exactly as the drain begins.

/// A request is either refused or counted in the drain's
/// `in_flight_at_start`: never admitted unseen. `DrainHandle::enter` looked
/// at the state, then took its reference (the count of requests in
/// flight): a drain that began in between counted its requests without
/// this one (and could resolve with nothing in flight) while it went on to
/// be sent after the drain began.
///
/// In memory (the race is in the counting, not the network): one thread
/// calls the layer in a loop, holding each admitted request a moment and
/// noting whether the drain had begun (its call returned) while it held
/// it; another begins the drain. Such a request must have been counted.
/// Many rounds, bounded in count and time.
#[test]
fn a_request_is_refused_or_counted_by_the_drain() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Barrier;
    use tower::{Layer, Service};
    use tower_conn_lifecycle::drain::DrainHandle;
    const ROUNDS: usize = 2_000;
    const TIME_LIMIT: Duration = Duration::from_secs(8);
    /// How long the caller holds each admitted request (spins).
    const HOLD: usize = 200;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let mut violations = Vec::new();
    for round in 0..ROUNDS {
        if started.elapsed() > TIME_LIMIT || violations.len() >= 4 {
            break;
        }
        let handle = DrainHandle::new();
        let mut svc = handle.layer(tower::service_fn(|_req: Request<()>| async {
            Ok::<_, BoxError>(http::Response::new(Body::default()))
        }));
        let barrier = Barrier::new(2);
        let began = AtomicBool::new(false);
        let (report, held_past_start) = std::thread::scope(|scope| {
            let caller = scope.spawn(|| {
                barrier.wait();
                // Bounded: the drain begins within microseconds.
                for _ in 0..1_000_000 {
                    let future = svc.call(Request::new(()));
                    if handle.in_flight() == 0 {
                        // Refused (a refused future holds nothing).
                        return false;
                    }
                    for _ in 0..HOLD {
                        std::hint::spin_loop();
                    }
                    let past = began.load(Ordering::SeqCst);
                    drop(future);
                    if past {
                        return true;
                    }
                }
                false
            });
            barrier.wait();
            // Set-up: let the caller loop a varying while.
            for _ in 0..(round % 64) {
                std::hint::spin_loop();
            }
            let drain = handle.drain(Duration::from_secs(5));
            began.store(true, Ordering::SeqCst);
            let report = runtime.block_on(drain);
            (report, caller.join().unwrap())
        });
        // A request held when the drain had begun was admitted before it
        // (or slipped past it): the drain must have counted it.
        if held_past_start && report.in_flight_at_start() == 0 {
            violations.push(format!("round {round}: admitted unseen: {report}"));
        }
        // And the report adds up (a request ending as the drain began
        // was counted in flight and not completed).
        if report.completed() + report.cut() != report.in_flight_at_start() {
            violations.push(format!("round {round}: does not add up: {report}"));
        }
    }
    assert!(
        violations.is_empty(),
        "the drain miscounted a request called or ending as it began: {violations:?}"
    );
}

// ---------------------------------------------------------------------------
// The `DrainHandle` layer on hyper-util's legacy client, same servers.

/// The legacy client's response body, boxed.
type LegacyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// hyper-util's legacy client over `http` under the tracker, with
/// `WithConnectionInfoLayer` (marks each response's end for the tracker)
/// and the drain's layer (with the tracker) outermost; and that handle.
fn legacy_client_over<C>(
    http: C,
) -> (
    tower::util::BoxCloneService<Request<Body>, http::Response<LegacyBody>, BoxError>,
    tower_conn_lifecycle::drain::DrainHandle,
)
where
    C: tower::Service<http::Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper::rt::Read
        + hyper::rt::Write
        + hyper_util::client::legacy::connect::Connection
        + Unpin
        + Send
        + 'static,
    C::Future: Send + Unpin + 'static,
    C::Error: Into<BoxError>,
{
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower::{Layer, ServiceBuilder};
    use tower_conn_lifecycle::drain::DrainHandle;
    use tower_conn_lifecycle::track::{TrackConnectionsLayer, WithConnectionInfoLayer};

    let track = TrackConnectionsLayer::new();
    let handle = DrainHandle::with_tracker(&track.stats());
    let legacy = Client::builder(TokioExecutor::new()).build(track.layer(http));
    let client = ServiceBuilder::new()
        .layer(handle.clone())
        .layer(WithConnectionInfoLayer::new())
        .service(legacy)
        .map_response(|res: http::Response<_>| res.map(|body| body.boxed_unsync()));
    (tower::util::BoxCloneService::new(client), handle)
}

type Legacy = tower::util::BoxCloneService<Request<Body>, http::Response<LegacyBody>, BoxError>;

fn spawn_legacy(
    client: &Legacy,
    req: Request<Body>,
) -> tokio::task::JoinHandle<Result<Bytes, BoxError>> {
    let client = client.clone();
    tokio::spawn(async move {
        let res = client.oneshot(req).await?;
        Ok(res.into_body().collect().await?.to_bytes())
    })
}

/// On the legacy client: an upload stuck in a full socket buffer and a
/// trickling body at the drain are cut at the deadline, their connections
/// closed; a slow request completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_drain_cuts_a_stuck_upload_and_a_trickle() {
    const DEADLINE: Duration = Duration::from_millis(400);
    let server = Scripted::start().await;
    let (client, handle) = legacy_client_over(common::small_buffers());
    let stuck = spawn_legacy(
        &client,
        Request::post(server.url("/stuck"))
            .body(common::raw::body_of(16 * common::raw::MIB))
            .unwrap(),
    );
    let trickle = spawn_legacy(&client, get(&server.url("/trickle")));
    let slow = spawn_legacy(&client, get(&server.url("/slow")));
    server.heads_reach(3).await;
    // Set-up: the upload fills the buffers, the trickle starts.
    sleep(common::raw::FILL_WAIT).await;
    let started = Instant::now();
    let report = bounded(STEP_LIMIT, "the drain", handle.drain(DEADLINE)).await;
    for task in [stuck, trickle] {
        let err = bounded(STEP_LIMIT, "a cut request", task)
            .await
            .unwrap()
            .unwrap_err();
        assert_cut(&err);
    }
    let late = started.elapsed().saturating_sub(DEADLINE);
    assert!(late <= CUT_SLACK, "cut {late:?} after the deadline");
    assert_eq!(slow.await.unwrap().expect("the slow request failed"), "ok");
    assert_eq!(counts(&report), (3, 1, 2), "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    server.release.add_permits(1);
    server.all_closed().await;
    assert_eq!(server.heads(), 3);
}

/// On the legacy client: a connection opened after the drain began (its
/// request was connecting), the drain future dropped: it closes at its
/// exchange's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_connection_opened_during_a_dropped_drain_closes() {
    use hyper_util::client::legacy::connect::HttpConnector;
    use tower::Service;
    let server = Scripted::start().await;
    let http = HttpConnector::new();
    let slow = tower::service_fn(move |uri: http::Uri| {
        let mut http = http.clone();
        Box::pin(async move {
            sleep(CONNECT_DELAY).await;
            http.call(uri).await.map_err(BoxError::from)
        })
    });
    let (client, handle) = legacy_client_over(slow);
    let task = spawn_legacy(&client, get(&server.url("/")));
    // Set-up: the request is in the connector's delay.
    sleep(CONNECT_DELAY / 3).await;
    assert_eq!(server.connections(), 0);
    drop(handle.drain(FAR_DEADLINE));
    let body = bounded(STEP_LIMIT, "the request", task).await.unwrap();
    assert_eq!(body.expect("the in-flight request failed"), "ok");
    server.all_closed().await;
    assert_eq!(server.ends.all(), ["closed"]);
}

/// Clones keep sending while another clone drains: every request is
/// either refused (`Draining`, never at the server) or answered; the
/// server saw exactly the answered ones; the report adds up and cuts
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_sending_while_another_drains() {
    const SENDERS: usize = 8;
    const MAX_PER_SENDER: usize = 500;
    let server = Scripted::start().await;
    let client = client::builder().build::<Body>();
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let client = client.clone();
            let url = server.url("/");
            tokio::spawn(async move {
                let mut answered = 0;
                // Bounded in count; ends at the first refusal.
                for _ in 0..MAX_PER_SENDER {
                    match fetch(&client, get(&url)).await {
                        Ok(_) => answered += 1,
                        Err(e) => {
                            assert!(find_cause::<Draining>(e.as_ref()).is_some(), "{e}");
                            return (answered, true);
                        }
                    }
                }
                (answered, false)
            })
        })
        .collect();
    eventually(STEP_LIMIT, "some traffic", || server.heads() >= 50).await;
    let report = bounded(STEP_LIMIT, "the drain", client.drain(FAR_DEADLINE)).await;
    let mut answered = 0;
    for sender in senders {
        let (n, refused) = bounded(STEP_LIMIT, "a sender", sender).await.unwrap();
        assert!(refused, "a sender was never refused");
        answered += n;
    }
    assert_eq!(report.cut(), 0, "{report}");
    assert_eq!(report.completed(), report.in_flight_at_start(), "{report}");
    assert!(report.in_flight_at_start() <= SENDERS as u64, "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    assert_eq!(
        server.heads(),
        answered,
        "a refused request reached the server"
    );
    server.all_closed().await;
}

/// An idle HTTP/2 connection at the drain closes at once (its slot's
/// handle dropped: hyper closes it) and the drain ends at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_closes_at_the_drain() {
    let ca = common::pki::Ca::new("probe drain ca");
    let server = H2Server::start(&ca).await;
    let client = client::builder()
        .tls_config(common::tls::client_config(&ca))
        .build::<Body>();
    for _ in 0..3 {
        let body = bounded(STEP_LIMIT, "a GET", fetch(&client, get(&server.url("/"))))
            .await
            .unwrap();
        assert_eq!(body, "ok");
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    let report = bounded(STEP_LIMIT, "the drain", client.drain(FAR_DEADLINE)).await;
    assert_eq!(report.in_flight_at_start(), 0, "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    assert!(report.elapsed() < FAR_DEADLINE / 2, "{report}");
    eventually(SLACK, "the server sees the connection end", || {
        server.ended.load(Ordering::SeqCst) == 1
    })
    .await;
}

/// A request queued behind the server's stream limit (one stream per
/// connection, taken by a request that hangs) at the drain: it was in
/// flight, so it may still go out while the drain waits; at the deadline
/// both are cut, and the queued one never reached the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_request_queued_behind_the_stream_limit_is_cut() {
    const DEADLINE: Duration = Duration::from_millis(400);
    let (server, client) = warm_h2(Some(1)).await;
    let hung = spawn_fetch(&client, get(&server.url("/hang")));
    eventually(STEP_LIMIT, "the hanging stream at the server", || {
        server.requests() == 2
    })
    .await;
    let queued = spawn_fetch(&client, get(&server.url("/")));
    // Set-up: the second request reaches the stream limit's queue.
    sleep(Duration::from_millis(100)).await;
    let report = bounded(STEP_LIMIT, "the drain", client.drain(DEADLINE)).await;
    for task in [hung, queued] {
        let err = bounded(STEP_LIMIT, "a cut request", task)
            .await
            .unwrap()
            .unwrap_err();
        assert_cut(&err);
    }
    assert_eq!(report.in_flight_at_start(), 2, "{report}");
    assert_eq!(report.cut(), 2, "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    assert_eq!(
        server.requests(),
        2,
        "the queued request reached the server"
    );
    eventually(SLACK, "the server sees the connection end", || {
        server.ended.load(Ordering::SeqCst) == server.accepted.load(Ordering::SeqCst)
    })
    .await;
}

/// Without the tracker (`DrainHandle::new`), a request cut at the deadline
/// while hyper holds it (the server never answers, or stops in the middle
/// of the body) fails with `DrainCut` at the cut, although nothing else
/// polls it: its task waits on the cut too. (It used to fail only when
/// next polled, and nothing polled it: the caller waited for ever after
/// the drain reported it cut.) Both waits: before the head (`/hang`) and
/// in the body (`/partial`: one byte of ten).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untracked_cut_request_fails_without_being_polled_again() {
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    use hyper_util::rt::TokioExecutor;
    use tower::Layer;
    use tower_conn_lifecycle::drain::DrainHandle;
    const DEADLINE: Duration = Duration::from_millis(200);
    let server = Scripted::start().await;
    let handle = DrainHandle::new();
    let legacy: Client<_, Body> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let client = handle.layer(legacy);
    let head = tokio::spawn(client.clone().oneshot(get(&server.url("/hang"))));
    let partial = get(&server.url("/partial"));
    let body = tokio::spawn(async move {
        let res = client.oneshot(partial).await?;
        res.into_body().collect().await.map(|_| ())
    });
    server.heads_reach(2).await;
    let report = bounded(STEP_LIMIT, "the drain", handle.drain(DEADLINE)).await;
    assert_eq!(report.in_flight_at_start(), 2, "{report}");
    assert_eq!(report.cut(), 2, "{report}");
    let err = bounded(SLACK, "the request cut before its head", head)
        .await
        .unwrap()
        .unwrap_err();
    assert_cut(&err);
    let err = bounded(SLACK, "the request cut in its body", body)
        .await
        .unwrap()
        .unwrap_err();
    assert_cut(&err);
    assert_eq!(server.heads(), 2, "no request after the drain began");
}

/// A drain future first polled after its deadline passed: the drain began
/// at the call (new requests refused at once), a request that ended in
/// between counts as completed, and the first poll cuts the rest at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_first_polled_after_its_deadline_cuts_at_once() {
    const DEADLINE: Duration = Duration::from_millis(100);
    let server = Scripted::start().await;
    let client = client::builder().build::<Body>();
    let hung = spawn_fetch(&client, get(&server.url("/hang")));
    let slow = spawn_fetch(&client, get(&server.url("/slow")));
    server.heads_reach(2).await;
    let drain = client.drain(DEADLINE);
    let err = fetch(&client, get(&server.url("/"))).await.unwrap_err();
    assert!(find_cause::<Draining>(err.as_ref()).is_some(), "{err}");
    assert_eq!(
        bounded(STEP_LIMIT, "the slow request", slow)
            .await
            .unwrap()
            .expect("the slow request failed"),
        "ok"
    );
    // Set-up: past the deadline before the first poll.
    sleep(DEADLINE * 2).await;
    let polled = Instant::now();
    let report = bounded(STEP_LIMIT, "the drain", drain).await;
    assert!(polled.elapsed() < CUT_SLACK, "{report}");
    assert_eq!(counts(&report), (2, 1, 1), "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    assert_cut(
        &bounded(STEP_LIMIT, "the hung request", hung)
            .await
            .unwrap()
            .unwrap_err(),
    );
    server.all_closed().await;
    assert_eq!(server.heads(), 2);
}

/// Two clients built from clones of one builder are two clients: draining
/// one neither closes the other's idle connection nor stops the other from
/// reusing its connections afterwards (they used to share the builder's
/// tracker, through which the drain closes connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_one_client_leaves_a_client_built_from_the_same_builder_alone() {
    const REQUESTS: usize = 5;
    let ends = Arc::new(Ends::default());
    let server = ok_server(ends.clone()).await;
    let builder = client::builder();
    let drained = builder.clone().build::<Body>();
    let other = builder.build::<Body>();
    bounded(
        STEP_LIMIT,
        "the other client's first request",
        fetch(&other, get(&server.url("/"))),
    )
    .await
    .unwrap();
    bounded(
        STEP_LIMIT,
        "a request of the drained client",
        fetch(&drained, get(&server.url("/"))),
    )
    .await
    .unwrap();
    let report = bounded(STEP_LIMIT, "the drain", drained.drain(FAR_DEADLINE)).await;
    assert_eq!(report.idle_connections_closed(), Some(1), "{report}");
    for _ in 0..REQUESTS {
        bounded(
            STEP_LIMIT,
            "the other client's request",
            fetch(&other, get(&server.url("/"))),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        other.connection_stats().opened(),
        1,
        "the other client lost its reuse"
    );
    assert_eq!(drained.connection_stats().opened(), 1);
    assert_eq!(
        server.counters.connections.load(Ordering::SeqCst),
        2,
        "one connection per client: {:?}",
        ends.all()
    );
    // Only the drained client's connection was closed.
    eventually(
        STEP_LIMIT,
        "the drained client's connection to close",
        || ends.len() == 1,
    )
    .await;
    assert_eq!(ends.all(), ["closed"]);
}
