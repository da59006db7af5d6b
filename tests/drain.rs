//! Graceful shutdown: `Client::drain` on the one-call client, a
//! `DrainHandle` as the layer on hyper-util's legacy client, and the
//! one-call client's retirement of a stalled HTTP/2 connection. Server-side facts decide: a raw-TCP
//! loopback server records every request and how (EOF or reset) and when
//! each connection closed.
//!
//! `cargo test --all-features drain` runs the drain tests, `… retire` the
//! HTTP/2 one.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{bounded, eventually, SLACK, STEP_LIMIT};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tower_conn_lifecycle::drain::{DrainCut, DrainHandle, Draining};
use tower_conn_lifecycle::{client, find_cause, BoxError};

/// How long the slow path takes to answer.
const SLOW: Duration = Duration::from_millis(300);

/// How soon after its last response (or after the drain began, for an idle
/// one) the server must see a connection closed: the 100 ms.
const CLOSE_WITHIN: Duration = Duration::from_millis(100);

/// How late a cut request may fail after its drain's deadline. The issue
/// asks for 50 ms; this is generous for a loaded 2-core CI machine (the
/// cut itself is immediate: the tracker wakes each connection's task).
const CUT_SLACK: Duration = Duration::from_millis(250);

/// How one connection ended, as the server saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// `read` returned `Ok(0)`: the client closed cleanly (FIN).
    Eof,
    /// `read` failed (a reset, RST).
    Reset,
}

#[derive(Debug, Default)]
struct ConnRecord {
    requests: u64,
    last_response: Option<Instant>,
    closed: Option<(Instant, End)>,
}

/// A raw HTTP/1.1 server on 127.0.0.1: `GET /slow` answers after [`SLOW`],
/// `GET /hang` never, `GET /partial` with a head and 1 of 10 body bytes,
/// anything else at once (`200`, body `ok`, keep-alive).
/// It records each connection's requests, last response and close.
struct Server {
    addr: std::net::SocketAddr,
    conns: Arc<Mutex<Vec<ConnRecord>>>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let records = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let index = {
                    let mut records = records.lock().unwrap();
                    records.push(ConnRecord::default());
                    records.len() - 1
                };
                tokio::spawn(serve(tcp, records.clone(), index));
            }
        });
        Server { addr, conns, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> u64 {
        self.conns.lock().unwrap().iter().map(|c| c.requests).sum()
    }

    fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    fn all_closed(&self) -> bool {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .all(|c| c.closed.is_some())
    }

    /// Each connection's last response (if any) and close.
    fn closes(&self) -> Vec<(Option<Instant>, Instant, End)> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| {
                let (at, end) = c.closed.expect("connection still open");
                (c.last_response, at, end)
            })
            .collect()
    }
}

async fn serve(mut tcp: TcpStream, records: Arc<Mutex<Vec<ConnRecord>>>, index: usize) {
    let record = |f: &mut dyn FnMut(&mut ConnRecord)| f(&mut records.lock().unwrap()[index]);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = match tcp.read(&mut chunk).await {
            Ok(0) => End::Eof,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                while let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    buf.drain(..head_end + 4);
                    record(&mut |c| c.requests += 1);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    match path.as_str() {
                        "/hang" => continue,
                        "/partial" => {
                            // The head and 1 of 10 body bytes, then nothing.
                            let head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\no";
                            if tcp.write_all(head).await.is_err() {
                                record(&mut |c| c.closed = Some((Instant::now(), End::Reset)));
                                return;
                            }
                            continue;
                        }
                        "/slow" => tokio::time::sleep(SLOW).await,
                        _ => {}
                    }
                    let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if tcp.write_all(response).await.is_err() {
                        record(&mut |c| c.closed = Some((Instant::now(), End::Reset)));
                        return;
                    }
                    record(&mut |c| c.last_response = Some(Instant::now()));
                }
                continue;
            }
            Err(_) => End::Reset,
        };
        record(&mut |c| c.closed = Some((Instant::now(), end)));
        return;
    }
}

type Body = Empty<Bytes>;

fn get(url: &str) -> Request<Body> {
    Request::get(url).body(Body::new()).unwrap()
}

/// Sends `req` and reads the body: the status and when it ended.
async fn fetch<S, B>(mut service: S, req: Request<Body>) -> Result<(StatusCode, Instant), BoxError>
where
    S: Service<Request<Body>, Response = http::Response<B>, Error = BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let response = service.ready().await?.call(req).await?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(Into::into)?;
    assert_eq!(body.to_bytes(), "ok");
    Ok((status, Instant::now()))
}

/// The one-call client's requests, spawned.
fn spawn_fetches(
    client: &client::Client<Body>,
    url: &str,
    n: usize,
) -> Vec<JoinHandle<Result<(StatusCode, Instant), BoxError>>> {
    (0..n)
        .map(|_| tokio::spawn(fetch(client.clone(), get(url))))
        .collect()
}

/// Every connection closed cleanly (the server read EOF, not a reset),
/// each within [`CLOSE_WITHIN`] of its last response, or of `idle_since`
/// for connections idle when the drain began.
fn assert_closed_cleanly(server: &Server, idle_since: Option<Instant>) {
    for (last, closed, end) in server.closes() {
        assert_eq!(end, End::Eof, "a connection was reset, not closed");
        let from = idle_since.or(last).expect("no response on a connection");
        let after = closed.saturating_duration_since(from);
        assert!(after <= CLOSE_WITHIN, "a connection closed {after:?} late");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let server = Server::start().await;
    let client = client::builder().build::<Body>();
    let url = server.url("/slow");
    let tasks = spawn_fetches(&client, &url, 50);
    eventually(STEP_LIMIT, "50 requests at the server", || {
        server.requests() == 50
    })
    .await;

    let drain = client.drain(Duration::from_secs(2));
    // Issued after the drain began: refused, typed, never sent.
    for _ in 0..5 {
        let err = fetch(client.clone(), get(&url)).await.unwrap_err();
        assert!(find_cause::<Draining>(err.as_ref()).is_some(), "{err}");
    }
    let report = bounded(STEP_LIMIT, "the drain", drain).await;
    for task in tasks {
        let (status, _) = task.await.unwrap().expect("an in-flight request failed");
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(report.in_flight_at_start(), 50, "{report}");
    assert_eq!(report.completed(), 50, "{report}");
    assert_eq!(report.cut(), 0, "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    assert_eq!(
        server.requests(),
        50,
        "a request issued after the drain reached the server"
    );
    eventually(SLACK, "every connection closed", || server.all_closed()).await;
    assert_eq!(server.connections(), 50);
    assert_closed_cleanly(&server, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_cuts_requests_still_waiting_at_the_deadline() {
    let server = Server::start().await;
    let client = client::builder().build::<Body>();
    let tasks = spawn_fetches(&client, &server.url("/hang"), 10);
    eventually(STEP_LIMIT, "10 requests at the server", || {
        server.requests() == 10
    })
    .await;

    let deadline = Duration::from_millis(300);
    let started = Instant::now();
    let report = bounded(STEP_LIMIT, "the drain", client.drain(deadline)).await;
    assert_eq!(report.in_flight_at_start(), 10, "{report}");
    assert_eq!(report.cut(), 10, "{report}");
    assert_eq!(report.completed(), 0, "{report}");
    for task in tasks {
        let err = bounded(STEP_LIMIT, "a cut request", task)
            .await
            .unwrap()
            .unwrap_err();
        assert!(find_cause::<DrainCut>(err.as_ref()).is_some(), "{err}");
    }
    // Every task had ended by now: the last one within the slack.
    let late = started.elapsed().saturating_sub(deadline);
    println!("the last cut request failed {late:?} after the deadline");
    assert!(
        late <= CUT_SLACK,
        "cut requests failed {late:?} after the deadline"
    );
    eventually(SLACK, "the cut connections closed", || server.all_closed()).await;
    assert_eq!(server.connections(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_idle_connections_at_once() {
    let server = Server::start().await;
    let client = client::builder().build::<Body>();
    for task in spawn_fetches(&client, &server.url("/slow"), 5) {
        task.await.unwrap().unwrap();
    }
    assert_eq!(server.connections(), 5);
    assert!(!server.all_closed());

    let started = Instant::now();
    let report = bounded(
        STEP_LIMIT,
        "the drain",
        client.drain(Duration::from_secs(1)),
    )
    .await;
    assert_eq!(report.in_flight_at_start(), 0, "{report}");
    assert_eq!(report.idle_connections_closed(), Some(5), "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    eventually(SLACK, "the idle connections closed", || server.all_closed()).await;
    assert_closed_cleanly(&server, Some(started));
}

/// hyper-util's legacy client over a tracked connector, under
/// `WithConnectionInfoLayer` (which marks each response's end for the tracker)
/// and a `DrainHandle` with the tracker as the layer; and that handle.
fn legacy_client() -> (
    impl Service<
            Request<Body>,
            Response = http::Response<impl http_body::Body<Data = Bytes, Error = BoxError>>,
            Error = BoxError,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
    DrainHandle,
) {
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    use hyper_util::rt::TokioExecutor;
    use tower::{Layer, ServiceBuilder};
    use tower_conn_lifecycle::track::{TrackConnectionsLayer, WithConnectionInfoLayer};

    let track = TrackConnectionsLayer::new();
    let handle = DrainHandle::with_tracker(&track.stats());
    let legacy = Client::builder(TokioExecutor::new()).build(track.layer(HttpConnector::new()));
    let client = ServiceBuilder::new()
        .layer(handle.clone())
        .layer(WithConnectionInfoLayer::new())
        .service(legacy);
    (client, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_layer_on_the_legacy_client() {
    let server = Server::start().await;
    let (client, handle) = legacy_client();
    let (slow, hang) = (server.url("/slow"), server.url("/hang"));
    let slow: Vec<_> = (0..10)
        .map(|_| tokio::spawn(fetch(client.clone(), get(&slow))))
        .collect();
    let hung: Vec<_> = (0..3)
        .map(|_| tokio::spawn(fetch(client.clone(), get(&hang))))
        .collect();
    eventually(STEP_LIMIT, "13 requests at the server", || {
        server.requests() == 13
    })
    .await;

    let deadline = Duration::from_secs(1);
    let started = Instant::now();
    let drain = handle.drain(deadline);
    let err = fetch(client.clone(), get(&server.url("/")))
        .await
        .unwrap_err();
    assert!(find_cause::<Draining>(err.as_ref()).is_some(), "{err}");
    let report = bounded(STEP_LIMIT, "the drain", drain).await;
    assert_eq!(report.in_flight_at_start(), 13, "{report}");
    assert_eq!(report.completed(), 10, "{report}");
    assert_eq!(report.cut(), 3, "{report}");
    for task in slow {
        task.await.unwrap().expect("an in-flight request failed");
    }
    for task in hung {
        let err = task.await.unwrap().unwrap_err();
        assert!(find_cause::<DrainCut>(err.as_ref()).is_some(), "{err}");
    }
    let late = started.elapsed().saturating_sub(deadline);
    println!("the last cut request failed {late:?} after the deadline");
    assert!(
        late <= CUT_SLACK,
        "cut requests failed {late:?} after the deadline"
    );
    assert_eq!(server.requests(), 13);
    eventually(SLACK, "every connection closed", || server.all_closed()).await;
    // The connections whose exchange ended during the drain closed cleanly
    // at its end.
    for (last, closed, end) in server.closes() {
        if let Some(last) = last {
            assert_eq!(end, End::Eof, "a drained connection was reset, not closed");
            let after = closed.saturating_duration_since(last);
            assert!(
                after <= CLOSE_WITHIN,
                "closed {after:?} after its last response"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_layer_closes_idle_legacy_connections_through_the_tracker() {
    let server = Server::start().await;
    let (client, handle) = legacy_client();
    let url = server.url("/slow");
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(fetch(client.clone(), get(&url))))
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(server.connections(), 4);

    let started = Instant::now();
    let report = bounded(
        STEP_LIMIT,
        "the drain",
        handle.drain(Duration::from_secs(1)),
    )
    .await;
    assert_eq!(report.idle_connections_closed(), Some(4), "{report}");
    assert_eq!(report.connections_still_open(), Some(0), "{report}");
    eventually(SLACK, "the idle connections closed", || server.all_closed()).await;
    assert_closed_cleanly(&server, Some(started));
}

/// An IO that stops dead once `frozen` is set: every read and write is
/// pending forever (nothing wakes it), so its peer receives no frame while
/// the connection stays open.
struct Freezable<T> {
    inner: T,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl<T> Freezable<T> {
    fn is_frozen(&self) -> bool {
        self.frozen.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Freezable<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.is_frozen() {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Freezable<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.is_frozen() {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.is_frozen() {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TLS (ALPN `h2`) HTTP/2 server on 127.0.0.1: `/long` freezes its
/// connection (no frame is sent or read on it any more, the socket stays
/// open) and never answers; anything else answers `ok`. Counts connections
/// and requests.
struct StallingH2Server {
    addr: std::net::SocketAddr,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for StallingH2Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StallingH2Server {
    async fn start(leaf: &common::pki::Leaf) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = leaf.server_config(common::tls::provider(), &[b"h2"]);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (conns, reqs) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let (acceptor, reqs) = (acceptor.clone(), reqs.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let frozen = Arc::new(AtomicBool::new(false));
                    let io = Freezable {
                        inner: tls,
                        frozen: frozen.clone(),
                    };
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            reqs.fetch_add(1, Ordering::SeqCst);
                            let frozen = frozen.clone();
                            async move {
                                if req.uri().path() == "/long" {
                                    frozen.store(true, Ordering::SeqCst);
                                    std::future::pending::<()>().await;
                                }
                                let body = http_body_util::Full::new(Bytes::from_static(b"ok"));
                                Ok::<_, std::convert::Infallible>(http::Response::new(body))
                            }
                        });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
                });
            }
        });
        StallingH2Server {
            addr,
            connections,
            requests,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_stalled_http2_connection() {
    use tower_conn_lifecycle::phase_timeout::{Elapsed, Phase, PhaseTimeoutLayer};

    const STALL: Duration = Duration::from_millis(200);
    const READ_LIMIT: Duration = Duration::from_secs(1);
    let ca = common::pki::Ca::new("drain test ca");
    let server = StallingH2Server::start(&ca.leaf(&["127.0.0.1"])).await;
    let client = client::builder()
        .tls_config(common::tls::client_config(&ca))
        .timeouts(PhaseTimeoutLayer::new().read(READ_LIMIT))
        .retire_stalled_http2(STALL)
        .build::<Body>();

    let response = bounded(
        STEP_LIMIT,
        "a GET",
        client.clone().oneshot(get(&server.url("/"))),
    )
    .await;
    assert_eq!(response.unwrap().version(), http::Version::HTTP_2);
    assert_eq!(server.connections(), 1);

    let long = tokio::spawn(client.clone().oneshot(get(&server.url("/long"))));
    eventually(STEP_LIMIT, "the long request at the server", || {
        server.requests() == 2
    })
    .await;
    // The connection must stay silent for the stall limit before it counts
    // as stalled: a precondition, not an assertion.
    tokio::time::sleep(STALL + STALL / 2).await;

    let (status, _) = bounded(
        STEP_LIMIT,
        "a GET after the stall",
        fetch(client.clone(), get(&server.url("/"))),
    )
    .await
    .expect("the request after the stall failed");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        server.connections(),
        2,
        "the request did not open a new connection"
    );
    assert_eq!(server.requests(), 3);
    assert_eq!(client.connection_stats().stalled_http2_retired(), 1);

    // The stalled stream ends by its own limit.
    let err = bounded(STEP_LIMIT, "the stalled request", long)
        .await
        .unwrap()
        .unwrap_err();
    let elapsed = find_cause::<Elapsed>(err.as_ref()).unwrap_or_else(|| panic!("{err}"));
    assert_eq!(elapsed.phase(), Phase::Read);
}

/// A response whose body the caller holds unread is in flight until the
/// deadline: the drain waits for it, then cuts it (the body's next poll
/// fails with `DrainCut`) and closes its connection (the server sees it
/// closed, its body never finished).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_cuts_a_response_body_held_unread() {
    use tower_conn_lifecycle::drain::DrainCut;
    const DEADLINE: Duration = Duration::from_millis(300);
    let server = Server::start().await;
    let client = client::builder().build::<Body>();
    let response = common::bounded(
        STEP_LIMIT,
        "the partial response head",
        client.clone().oneshot(get(&server.url("/partial"))),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let report = common::bounded(STEP_LIMIT, "the drain", client.drain(DEADLINE)).await;
    let took = started.elapsed();
    assert!(
        took >= DEADLINE,
        "the drain did not wait for the body: {took:?}"
    );
    assert!(
        took < DEADLINE + CUT_SLACK,
        "the drain ended late: {took:?}"
    );
    assert_eq!(report.in_flight_at_start(), 1, "{report}");
    assert_eq!(report.cut(), 1, "{report}");
    let err = common::bounded(STEP_LIMIT, "the held body", response.into_body().collect())
        .await
        .expect_err("the body was cut");
    assert!(
        tower_conn_lifecycle::find_cause::<DrainCut>(err.as_ref()).is_some(),
        "{err}"
    );
    common::eventually(STEP_LIMIT, "the server sees the connection closed", || {
        server.all_closed()
    })
    .await;
    assert_eq!(server.requests(), 1);
}
