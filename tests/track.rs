//! The connection tracker against a real hyper server on 127.0.0.1
//! (`testing::HyperServer`).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_conn_lifecycle::testing::HyperServer;
use tower_conn_lifecycle::track::{
    ConnectionCapture, ConnectionInfo, ConnectionState, ExchangeOutcome, WithConnectionInfo,
    WithConnectionInfoLayer,
};

use common::{eventually, small_buffers, tracked_client, tracked_client_with, Tracked};

#[tokio::test]
async fn connection_info_tells_reuse_and_idle_time() {
    let server = HyperServer::start().await.unwrap();
    let addr = server.addr();
    let (client, stats) = tracked_client::<Full<Bytes>>();
    let client = ServiceBuilder::new()
        .layer(WithConnectionInfoLayer::new())
        .service(client);

    let mut infos = Vec::new();
    for (i, size) in [1000usize, 200_000].into_iter().enumerate() {
        if i > 0 {
            // Leave the connection idle for a while so there is idle time to
            // report (the assertion below is on the reported value, > 0).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut req = http::Request::post(format!("http://{addr}/"))
            .body(Full::new(Bytes::from(vec![b'x'; size])))
            .unwrap();
        let capture = ConnectionCapture::get_or_insert(&mut req);
        // A second call shares the same capture instead of replacing it.
        let again = ConnectionCapture::get_or_insert(&mut req);
        let res = client.clone().oneshot(req).await.unwrap();
        let info = *res
            .extensions()
            .get::<ConnectionInfo>()
            .expect("layer inserts it");
        assert_eq!(ConnectionInfo::of(&res), Some(info));
        let state = res.extensions().get::<ConnectionState>().unwrap().clone();
        assert_eq!(
            capture.state().unwrap().info().connection_id(),
            state.info().connection_id()
        );
        assert_eq!(
            again.state().unwrap().info().connection_id(),
            state.info().connection_id()
        );
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, size.to_string());
        infos.push((info, state));
    }
    let (first, state1) = &infos[0];
    let (second, state2) = &infos[1];
    assert!(!first.is_reused());
    assert_eq!(first.request_number(), 1);
    assert_eq!(first.idle_before(), Duration::ZERO);
    assert!(second.is_reused());
    assert_eq!(second.request_number(), 2);
    assert!(
        second.idle_before() >= Duration::from_millis(40),
        "{second:?}"
    );
    assert_eq!(first.connection_id(), second.connection_id());
    assert_eq!(state1.info().connection_id(), state2.info().connection_id());
    assert!(first.time_to_first_byte().is_some());
    assert!(second.upload_duration().unwrap() <= second.time_to_first_byte().unwrap());
    // Socket byte counts include both bodies plus heads.
    assert!(state2.bytes_written() > 201_000);
    assert!(state2.bytes_read() > 0);
    // Server-side facts: one connection, two requests.
    assert_eq!(server.connections(), 1);
    assert_eq!(server.requests(), 2);
    assert_eq!(server.bytes_read(), 201_000);
    assert_eq!(stats.opened(), 1);
    assert_eq!(stats.open_now(), 1);
    drop(client);
    drop(infos);
}

#[tokio::test]
async fn state_is_dropped_with_the_connection() {
    let server = HyperServer::start().await.unwrap();
    let addr = server.addr();
    let (client, stats) = tracked_client_with::<Full<Bytes>>(
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0),
        HttpConnector::new(),
    );
    let res = client
        .get(format!("http://{addr}/").parse().unwrap())
        .await
        .unwrap();
    let state = res.extensions().get::<ConnectionState>().unwrap().clone();
    res.into_body().collect().await.unwrap();
    // With no idle pooling, the connection closes once the exchange ends.
    // The open count drops when the IO is dropped, a moment after the flag.
    eventually(Duration::from_secs(5), "the connection to close", || {
        state.is_closed() && stats.open_now() == 0
    })
    .await;
    assert!(state.is_closed());
    assert_eq!(stats.open_now(), 0);
    assert_eq!(stats.opened(), 1);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn in_flight_ends_with_the_response_body_under_phase_timeout() {
    let server = HyperServer::start().await.unwrap();
    let client = phased_client(Duration::from_secs(5));
    for n in 1..=2u64 {
        let req = http::Request::post(server.url())
            .body(Full::new(Bytes::from_static(b"abc")))
            .unwrap();
        let res = client.clone().oneshot(req).await.unwrap();
        let state = res.extensions().get::<ConnectionState>().unwrap().clone();
        // The head has arrived; the body has not been read yet.
        assert_eq!(state.info().outcome(), ExchangeOutcome::InFlight);
        assert_eq!(state.info().request_number(), n);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "3");
        assert_eq!(
            state.info().outcome(),
            ExchangeOutcome::Completed,
            "request {n}: the body ended"
        );
    }
    assert_eq!(server.connections(), 1);
    assert_eq!(server.requests(), 2);
}

/// How long after a request is abandoned the server may see its connection
/// close (issue acceptance: 100 ms).
const CLOSE_SLACK: Duration = Duration::from_millis(100);

/// A raw loopback server: its first connection reads 64 KiB of the request
/// and then stops reading until `resume`, when it drains to EOF and records
/// when the EOF came; later connections answer every request `200` with an
/// empty body.
struct NeverReads {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicU64>,
    eof_at: Arc<Mutex<Option<Instant>>>,
    drained: Arc<AtomicU64>,
    resume: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NeverReads {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NeverReads {
    async fn start() -> NeverReads {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let eof_at = Arc::new(Mutex::new(None));
        let drained = Arc::new(AtomicU64::new(0));
        let resume = Arc::new(Notify::new());
        let (a, e, d, r) = (
            accepted.clone(),
            eof_at.clone(),
            drained.clone(),
            resume.clone(),
        );
        let task = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let n = a.fetch_add(1, Ordering::SeqCst);
                let (e, d, r) = (e.clone(), d.clone(), r.clone());
                conns.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    if n == 0 {
                        let _ = stream.read_exact(&mut buf).await;
                        r.notified().await;
                        loop {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(k) => d.fetch_add(k as u64, Ordering::SeqCst),
                            };
                        }
                        *e.lock().unwrap() = Some(Instant::now());
                    } else {
                        let mut head = Vec::new();
                        while let Ok(k) = stream.read(&mut buf).await {
                            if k == 0 {
                                break;
                            }
                            head.extend_from_slice(&buf[..k]);
                            while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                                head.drain(..end + 4);
                                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                                if stream.write_all(ok).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }));
            }
        });
        NeverReads {
            addr,
            accepted,
            eof_at,
            drained,
            resume,
            task,
        }
    }

    /// Lets the first connection drain; returns when it saw EOF (or `None`
    /// if it did not within `wait`).
    async fn eof_within(&self, wait: Duration) -> Option<Instant> {
        self.resume.notify_one();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(at) = *self.eof_at.lock().unwrap() {
                return Some(at);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    }
}

type InfoClient = WithConnectionInfo<Client<Tracked, Full<Bytes>>>;

/// Tracker + WithConnectionInfoLayer with small socket buffers, so a server that
/// stops reading blocks hyper's writes quickly.
fn info_client() -> InfoClient {
    let (client, _) = tracked_client_with(&Client::builder(TokioExecutor::new()), small_buffers());
    ServiceBuilder::new()
        .layer(WithConnectionInfoLayer::new())
        .service(client)
}

fn big_post(addr: std::net::SocketAddr) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{addr}/"))
        .body(Full::new(Bytes::from(vec![b'u'; 50 << 20])))
        .unwrap()
}

/// Waits (bounded) until the capture points at a tracked connection whose
/// upload has stalled, and returns its state.
async fn stalled_state(capture: &ConnectionCapture) -> ConnectionState {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(state) = capture.state() {
            let written = state.bytes_written();
            tokio::time::sleep(Duration::from_millis(50)).await;
            if written > 0 && state.bytes_written() == written {
                return state;
            }
        }
        assert!(Instant::now() < deadline, "upload never stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_timeout_closes_the_connection_at_once() {
    use tower_conn_lifecycle::phase_timeout::{Elapsed, Phase, PhaseTimeoutLayer};
    use tower_conn_lifecycle::RequestBody;

    let server = NeverReads::start().await;
    let (client, _) =
        tracked_client_with::<RequestBody>(&Client::builder(TokioExecutor::new()), small_buffers());
    let client = ServiceBuilder::new()
        .layer(PhaseTimeoutLayer::new().send(Duration::from_millis(300)))
        .service(client);
    let mut req = big_post(server.addr);
    let capture = ConnectionCapture::get_or_insert(&mut req);
    let err = client.clone().oneshot(req).await.unwrap_err();
    let failed_at = Instant::now();
    let elapsed = tower_conn_lifecycle::find_cause::<Elapsed>(err.as_ref()).expect("Elapsed");
    assert_eq!(elapsed.phase(), Phase::Send);
    let state = capture.state().expect("tracked");
    assert!(state.is_poisoned());
    assert_eq!(state.info().outcome(), ExchangeOutcome::Abandoned);
    let eof = server.eof_within(Duration::from_secs(3)).await;
    let eof = eof.expect("the server saw the connection close");
    assert!(
        eof.saturating_duration_since(failed_at) <= CLOSE_SLACK,
        "closed {:?} after the error",
        eof.saturating_duration_since(failed_at)
    );
    // The server got the part of the 50 MB body that was in flight, not the rest.
    assert!(server.drained.load(Ordering::SeqCst) < 10 << 20);
    // The next request never gets the poisoned connection.
    let req = http::Request::get(format!("http://{}/", server.addr))
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = client.oneshot(req).await.unwrap();
    let next = res.extensions().get::<ConnectionState>().unwrap();
    assert_ne!(next.info().connection_id(), state.info().connection_id());
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_future_dropped_mid_upload_closes_the_connection_at_once() {
    let server = NeverReads::start().await;
    let client = info_client();
    let mut req = big_post(server.addr);
    let capture = ConnectionCapture::get_or_insert(&mut req);
    let call = tokio::spawn(client.clone().oneshot(req));
    let state = stalled_state(&capture).await;
    assert_eq!(state.info().outcome(), ExchangeOutcome::InFlight);
    call.abort();
    let _ = call.await;
    let dropped_at = Instant::now();
    assert!(state.is_poisoned());
    let eof = server.eof_within(Duration::from_secs(3)).await;
    let eof = eof.expect("the server saw the connection close");
    assert!(
        eof.saturating_duration_since(dropped_at) <= CLOSE_SLACK,
        "closed {:?} after the drop",
        eof.saturating_duration_since(dropped_at)
    );
    let req = http::Request::get(format!("http://{}/", server.addr))
        .body(Full::default())
        .unwrap();
    let res = client.oneshot(req).await.unwrap();
    let info = ConnectionInfo::of(&res).unwrap();
    assert_ne!(info.connection_id(), state.info().connection_id());
    assert!(!info.is_reused());
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

/// Three requests on one connection, reading `ConnectionInfo` and the
/// exchange record from the response alone (`read_end` = whether a layer of
/// this crate marks body ends).
async fn check_exchanges<S, B>(client: S, server: &HyperServer, marks_end: bool)
where
    S: tower::Service<http::Request<Full<Bytes>>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body + 'static,
    B::Error: std::fmt::Debug,
{
    let mut previous: Option<ConnectionState> = None;
    for n in 1..=3u64 {
        if let Some(prev) = &previous {
            let e = prev.info();
            assert_eq!(e.request_number(), n - 1);
            if marks_end {
                assert_eq!(e.outcome(), ExchangeOutcome::Completed);
                assert!(prev.idle_since().is_some());
            } else {
                // Nothing marked the end: it completes when the next opens.
                assert_eq!(e.outcome(), ExchangeOutcome::InFlight);
            }
        }
        let body = Bytes::from(vec![b'b'; 10 * n as usize]);
        let req = http::Request::post(server.url())
            .body(Full::new(body))
            .unwrap();
        let res = client.clone().oneshot(req).await.unwrap();
        let info = ConnectionInfo::of(&res).expect("tracked");
        let state = res.extensions().get::<ConnectionState>().unwrap().clone();
        assert_eq!(info.request_number(), n);
        assert_eq!(info.is_reused(), n > 1);
        // The snapshot taken at the head: this request's bytes, in flight.
        assert!(info.bytes_sent() >= 10 * n, "{info:?}");
        assert!(info.response_started(), "{info:?}");
        assert_eq!(info.outcome(), ExchangeOutcome::InFlight);
        let e = state.info();
        assert_eq!(e.request_number(), n);
        assert_eq!(e.is_reused(), n > 1);
        assert_eq!(e.outcome(), ExchangeOutcome::InFlight);
        assert!(e.bytes_sent() >= 10 * n, "{e:?}");
        assert!(e.response_started());
        if let Some(prev) = &previous {
            assert_eq!(prev.info().connection_id(), state.info().connection_id());
            // Exchange bytes are this exchange's, not the connection's.
            assert!(e.bytes_sent() < state.bytes_written());
        }
        res.into_body().collect().await.unwrap();
        previous = Some(state);
    }
    assert_eq!(server.connections(), 1);
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn exchange_record_without_any_request_plane_layer() {
    let server = HyperServer::start().await.unwrap();
    let (client, _) = tracked_client::<Full<Bytes>>();
    check_exchanges(client, &server, false).await;
}

#[tokio::test]
async fn exchange_record_under_phase_timeout_alone() {
    use tower_conn_lifecycle::phase_timeout::PhaseTimeoutLayer;
    use tower_conn_lifecycle::RequestBody;

    let server = HyperServer::start().await.unwrap();
    let (client, _) = tracked_client::<RequestBody>();
    let client = ServiceBuilder::new()
        .layer(PhaseTimeoutLayer::new().total(Duration::from_secs(30)))
        .service(client);
    check_exchanges(client, &server, true).await;
}

#[tokio::test]
async fn exchange_record_under_stacked_layers_in_either_order() {
    use tower_conn_lifecycle::phase_timeout::PhaseTimeoutLayer;
    use tower_conn_lifecycle::RequestBody;

    let server = HyperServer::start().await.unwrap();
    let (client, _) = tracked_client::<RequestBody>();
    let layered = ServiceBuilder::new()
        .layer(PhaseTimeoutLayer::new().read(Duration::from_secs(30)))
        .layer(WithConnectionInfoLayer::new())
        .service(client.clone());
    check_exchanges(layered, &server, true).await;
    let server = HyperServer::start().await.unwrap();
    let layered = ServiceBuilder::new()
        .layer(WithConnectionInfoLayer::new())
        .layer(PhaseTimeoutLayer::new().read(Duration::from_secs(30)))
        .service(client);
    check_exchanges(layered, &server, true).await;
}

#[tokio::test]
async fn a_reissued_request_gets_a_fresh_capture() {
    let server = HyperServer::start().await.unwrap();
    let (client, _) = tracked_client_with::<Full<Bytes>>(
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0),
        HttpConnector::new(),
    );
    let mut first = http::Request::get(server.url())
        .body(Full::default())
        .unwrap();
    let capture1 = ConnectionCapture::get_or_insert(&mut first);
    let (parts, body) = first.into_parts();
    let template = parts.clone();
    let res = client
        .clone()
        .oneshot(http::Request::from_parts(parts, body))
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
    let id1 = capture1
        .state()
        .expect("first attempt captured")
        .info()
        .connection_id();
    // Re-issue from the cloned parts, as a retry does.
    let mut second = http::Request::from_parts(template, Full::default());
    let capture2 = ConnectionCapture::get_or_insert(&mut second);
    assert!(
        capture2.state().is_none(),
        "must not inherit attempt 1's connection"
    );
    let res = client.oneshot(second).await.unwrap();
    res.into_body().collect().await.unwrap();
    let id2 = capture2
        .state()
        .expect("second attempt captured")
        .info()
        .connection_id();
    assert_ne!(id1, id2);
    // The first attempt's capture still describes the first attempt.
    assert_eq!(capture1.state().unwrap().info().connection_id(), id1);
    assert_eq!(server.connections(), 2);
}

/// Through `PhaseTimeout` (whose request body announces each attempt) the
/// tracker's record of an exchange is the request's: a `100 Continue` read
/// in the middle of a large upload does not split it, on a new connection
/// and on a reused one. (Without the announcement the read→write turn
/// would open a second, inexact exchange.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_attempt_spans_a_1xx_in_the_middle_of_its_upload() {
    const BODY: usize = 4 << 20;
    const LIMIT: Duration = Duration::from_secs(20);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(AtomicU64::new(0));
    let server_heads = heads.clone();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        for _ in 0..2 {
            // The head, then a little of the body, then a 1xx while the
            // client is still writing, then the rest and the answer.
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            server_heads.fetch_add(1, Ordering::SeqCst);
            let mut body = vec![0u8; BODY];
            stream.read_exact(&mut body[..16 << 10]).await.unwrap();
            stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .unwrap();
            stream.read_exact(&mut body[16 << 10..]).await.unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
        }
        // Keep the connection open until the client lets it go.
        let _ = stream.read(&mut [0u8; 1]).await;
    });

    let client = phased_client(LIMIT);
    for round in 1..=2u64 {
        let req = http::Request::post(format!("http://{addr}/"))
            .body(Full::new(Bytes::from(vec![b'x'; BODY])))
            .unwrap();
        let res = tokio::time::timeout(LIMIT, client.clone().oneshot(req))
            .await
            .expect("bounded")
            .unwrap();
        let state = res.extensions().get::<ConnectionState>().unwrap().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        let e = state.info();
        assert_eq!(e.request_number(), round, "one exchange per request: {e:?}");
        assert!(e.is_exact(), "{e:?}");
        assert!(e.bytes_sent() > BODY as u64, "{e:?}");
        assert!(e.response_started());
        assert_eq!(e.is_reused(), round > 1);
        assert_eq!(e.outcome(), ExchangeOutcome::Completed);
        assert!(!state.is_poisoned());
        // Let hyper-util put the connection back before the next round.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(heads.load(Ordering::SeqCst), 2);
    drop(client);
    tokio::time::timeout(LIMIT, server)
        .await
        .expect("server done")
        .unwrap();
}

/// PhaseTimeout (`read` limit) over hyper-util's client on a tracked
/// connector: the stack whose request bodies announce their attempts.
fn phased_client(
    read: Duration,
) -> tower_conn_lifecycle::phase_timeout::PhaseTimeout<
    Client<Tracked, tower_conn_lifecycle::RequestBody>,
> {
    use tower_conn_lifecycle::phase_timeout::PhaseTimeoutLayer;
    let (client, _) = tracked_client();
    ServiceBuilder::new()
        .layer(PhaseTimeoutLayer::new().read(read))
        .service(client)
}
