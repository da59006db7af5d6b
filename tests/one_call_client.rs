//! The one-call client's engine (hyper-util's composable pools) does what a
//! correct HTTP/1 client does and hyper's connection API leaves to its
//! caller: `Host` and origin-form, a connection back in its pool only when
//! its response body has ended, a bound on idle connections per origin, and
//! a typed refusal of a URI it cannot route; and it keeps what its user
//! gives it (an `HttpConnector` with its settings, a connector of their own,
//! hyper's HTTP/1 and HTTP/2 settings). Server-side facts decide.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{sleep, timeout, Instant};
use tower::ServiceExt;
use tower_conn_lifecycle::client::{self, Client};
use tower_conn_lifecycle::retry::{NotRetried, Rule};
use tower_conn_lifecycle::{find_cause, BoxError};

use common::{eventually, POLL, STEP_LIMIT};

/// What the server saw.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    closed: AtomicUsize,
    /// (connection, request line, Host header) per request.
    requests: Mutex<Vec<(usize, String, Option<String>)>>,
    /// Requests of path `/hold` not answered yet.
    holding: AtomicUsize,
    /// Every request head as it arrived (request line and header lines).
    heads: Mutex<Vec<String>>,
}

/// A keep-alive HTTP/1 server on raw sockets. `/slow` sends its head and
/// one byte of a 10-byte body, and the rest once `release` is notified;
/// `/hold` answers once `hold` requests are waiting at the same time (so
/// that many connections are in use at once); anything else answers `ok`.
struct Server {
    url: String,
    seen: Arc<Seen>,
    release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(hold: usize) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let release = Arc::new(Notify::new());
        let (s, r) = (seen.clone(), release.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((io, _)) = listener.accept().await else {
                    return;
                };
                let conn = s.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(io, conn, s.clone(), r.clone(), hold));
            }
        });
        Server {
            url,
            seen,
            release,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.seen.accepted.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.seen.closed.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<(usize, String, Option<String>)> {
        self.seen.requests.lock().unwrap().clone()
    }

    fn heads(&self) -> Vec<String> {
        self.seen.heads.lock().unwrap().clone()
    }
}

async fn serve(mut io: TcpStream, conn: usize, seen: Arc<Seen>, release: Arc<Notify>, hold: usize) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = common::next_head(&mut io, &mut buf).await else {
            seen.closed.fetch_add(1, Ordering::SeqCst);
            return;
        };
        seen.heads.lock().unwrap().push(head.clone());
        let mut lines = head.lines();
        let line = lines.next().unwrap_or_default().to_string();
        let host = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.trim().to_string());
        seen.requests
            .lock()
            .unwrap()
            .push((conn, line.clone(), host));
        let path = line.split(' ').nth(1).unwrap_or_default().to_string();
        let ok = match path.as_str() {
            "/slow" => {
                let first = io
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0")
                    .await;
                release.notified().await;
                first.is_ok() && io.write_all(b"123456789").await.is_ok()
            }
            "/hold" => {
                seen.holding.fetch_add(1, Ordering::SeqCst);
                let deadline = Instant::now() + STEP_LIMIT;
                while seen.holding.load(Ordering::SeqCst) < hold && Instant::now() < deadline {
                    sleep(POLL).await;
                }
                io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .is_ok()
            }
            "/close" => {
                // Answers, then closes the idle connection (no
                // `Connection: close`: the client learns it from the FIN).
                let _ = io
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                seen.closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            "/bighead" => {
                // A 64 KiB response header.
                let head = format!(
                    "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
                    "b".repeat(64 << 10)
                );
                io.write_all(head.as_bytes()).await.is_ok()
            }
            "/never" => {
                // Never answers; waits for the client to give up.
                let mut rest = [0u8; 64];
                while matches!(io.read(&mut rest).await, Ok(n) if n > 0) {}
                seen.closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            _ => io
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .is_ok(),
        };
        if !ok {
            return;
        }
    }
}

fn get(url: &str) -> Request<Empty<Bytes>> {
    Request::get(url).body(Empty::new()).unwrap()
}

async fn fetch(
    client: &Client<Empty<Bytes>>,
    req: Request<Empty<Bytes>>,
) -> Result<Bytes, BoxError> {
    let res = timeout(STEP_LIMIT, client.clone().oneshot(req))
        .await
        .expect("request hung")?;
    Ok(timeout(STEP_LIMIT, res.into_body().collect())
        .await
        .expect("body hung")?
        .to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_and_origin_form_on_one_reused_connection() {
    let server = Server::start(0).await;
    let client = client::builder().build::<Empty<Bytes>>();
    let body = fetch(&client, get(&format!("{}/a/b?c=d", server.url)))
        .await
        .unwrap();
    assert_eq!(&body[..], b"ok");
    // A Host the caller set is kept; a URI without a path asks for `/`.
    let mut req = get(&server.url);
    req.headers_mut()
        .insert(http::header::HOST, "example.test".parse().unwrap());
    fetch(&client, req).await.unwrap();
    let authority = server.url.trim_start_matches("http://").to_string();
    assert_eq!(
        server.requests(),
        vec![
            (0, "GET /a/b?c=d HTTP/1.1".to_string(), Some(authority)),
            (
                0,
                "GET / HTTP/1.1".to_string(),
                Some("example.test".to_string())
            ),
        ]
    );
    assert_eq!(server.accepted(), 1, "the connection was reused");
    assert_eq!(client.connection_stats().opened(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_still_arriving_keeps_its_connection_out_of_the_pool() {
    let server = Server::start(0).await;
    let client = client::builder().build::<Empty<Bytes>>();
    // The head of /slow arrives; its body stays open.
    let slow = timeout(
        STEP_LIMIT,
        client.clone().oneshot(get(&format!("{}/slow", server.url))),
    )
    .await
    .expect("head hung")
    .unwrap();
    // Another request meanwhile gets its own connection instead of queueing
    // behind the unread body.
    let body = fetch(&client, get(&format!("{}/next", server.url)))
        .await
        .unwrap();
    assert_eq!(&body[..], b"ok");
    assert_eq!(server.accepted(), 2);
    // Once the slow body has ended, its connection serves the next request.
    server.release.notify_one();
    let rest = timeout(STEP_LIMIT, slow.into_body().collect())
        .await
        .expect("slow body hung")
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"0123456789");
    for _ in 0..3 {
        fetch(&client, get(&format!("{}/again", server.url)))
            .await
            .unwrap();
    }
    assert_eq!(server.accepted(), 2, "both connections were reused");
    assert_eq!(server.requests().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_bound_are_closed() {
    const BURST: usize = 4;
    let server = Server::start(BURST).await;
    let client = client::builder()
        .max_idle_per_origin(1)
        .build::<Empty<Bytes>>();
    // BURST requests in flight at once: the server answers none until all
    // have arrived, so each has its own connection.
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        let client = client.clone();
        let url = format!("{}/hold", server.url);
        burst.spawn(async move { fetch(&client, get(&url)).await.map(|_| ()) });
    }
    while let Some(done) = burst.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(server.accepted(), BURST);
    // The next request finds the pool over its bound: all but one idle
    // connection are closed (the server reads EOF), and it uses the one kept.
    fetch(&client, get(&format!("{}/next", server.url)))
        .await
        .unwrap();
    eventually(STEP_LIMIT, "surplus idle connections closed", || {
        server.closed() == BURST - 1
    })
    .await;
    assert_eq!(server.accepted(), BURST, "no new connection");
    // The client's side of a closed connection is dropped right after its
    // FIN went out (hyper's connection task ends then).
    eventually(STEP_LIMIT, "one connection open on the client", || {
        client.connection_stats().open_now() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uri_without_scheme_or_host_is_refused_typed_and_nothing_is_sent() {
    let server = Server::start(0).await;
    let client = client::builder().build::<Empty<Bytes>>();
    for uri in ["/relative", "127.0.0.1:1"] {
        let err = fetch(&client, get(uri)).await.unwrap_err();
        let refused = find_cause::<NotRetried>(err.as_ref()).unwrap_or_else(|| panic!("{err}"));
        assert_eq!(refused.rule(), Rule::NotConnectionFailure, "{err}");
        assert!(err.to_string().contains("not absolute"), "{err}");
    }
    assert_eq!(client.connection_stats().opened(), 0);
    assert_eq!(server.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_server_closed_is_skipped_without_a_retry() {
    let server = Server::start(0).await;
    let client = client::builder().build::<Empty<Bytes>>();
    fetch(&client, get(&format!("{}/close", server.url)))
        .await
        .unwrap();
    eventually(STEP_LIMIT, "the server closed its end", || {
        server.closed() == 1
    })
    .await;
    // Give the client's connection task a moment to read the FIN (the
    // checkout skips the connection either way; this makes the path taken
    // the closed one rather than a write race).
    sleep(Duration::from_millis(50)).await;
    let res = timeout(
        STEP_LIMIT,
        client.clone().oneshot(get(&format!("{}/next", server.url))),
    )
    .await
    .expect("request hung")
    .unwrap();
    assert!(
        res.extensions()
            .get::<tower_conn_lifecycle::retry::Retried>()
            .is_none(),
        "the closed connection was skipped at checkout, not retried"
    );
    assert_eq!(server.accepted(), 2);
    assert_eq!(
        server.requests().len(),
        2,
        "nothing was sent on the closed one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_given_up_on_closes_its_connection_and_the_next_gets_another() {
    let server = Server::start(0).await;
    let client = client::builder().build::<Empty<Bytes>>();
    // The caller gives up (drops the response future) before any answer.
    let given_up = timeout(
        Duration::from_millis(100),
        client
            .clone()
            .oneshot(get(&format!("{}/never", server.url))),
    )
    .await;
    assert!(given_up.is_err(), "the server never answers");
    // Its connection is closed, not handed to the next request.
    eventually(STEP_LIMIT, "the abandoned connection closed", || {
        server.closed() == 1
    })
    .await;
    let body = fetch(&client, get(&format!("{}/next", server.url)))
        .await
        .unwrap();
    assert_eq!(&body[..], b"ok");
    assert_eq!(server.accepted(), 2);
    assert_eq!(
        server.requests().iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![0, 1]
    );
}

/// A healing probe (a connection kept open past a learned estimate, unused,
/// to see whether the server really closes that early) must survive the
/// requests sent meanwhile: the checkout sets it aside instead of closing
/// it, and the pool's sweep keeps open connections. Found by
/// `tests/hostile.rs`'s randomized server: with probes closed at checkout,
/// a wrongly short estimate was never healed and reuse collapsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healing_probe_survives_the_requests_sent_while_it_rests() {
    use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
    use tower_conn_lifecycle::testing::IdleClosingServer;
    const IDLE: Duration = Duration::from_millis(200);
    const MARGIN: Duration = Duration::from_millis(80);
    let server = IdleClosingServer::start(IDLE).await.unwrap();
    let layer = IdleExpiryLayer::new(Duration::from_secs(90)).margin(MARGIN);
    let stats = layer.stats();
    let client = client::builder()
        .idle_expiry(layer.clone())
        .build::<Empty<Bytes>>();
    let url = server.url();
    let uri: http::Uri = url.parse().unwrap();
    let state_of =
        |res: &http::Response<client::Body>| res.body().connection_state().unwrap().clone();
    let res = client.clone().oneshot(get(&url)).await.unwrap();
    res.into_body().collect().await.unwrap();
    eventually(STEP_LIMIT, "the 200 ms idle close", || {
        stats.server_idle_closes() >= 1
    })
    .await;
    let first = layer.learned_timeout(&uri).expect("learned");
    // The server's timeout grows: the next connection is the probe.
    server.set_idle_timeout(Duration::from_secs(2));
    let res = client.clone().oneshot(get(&url)).await.unwrap();
    let probe = state_of(&res);
    res.into_body().collect().await.unwrap();
    assert_eq!(stats.probes(), 1);
    // Past its reuse, while it rests: a request gets another connection
    // (a new one: the sweep runs too) and leaves the probe open.
    sleep(first - MARGIN + Duration::from_millis(30)).await;
    let res = client.clone().oneshot(get(&url)).await.unwrap();
    let other = state_of(&res);
    res.into_body().collect().await.unwrap();
    assert_ne!(
        other.info().connection_id(),
        probe.info().connection_id(),
        "the probe is not reused past its limit"
    );
    assert!(!probe.is_closed(), "the probe is still open");
    eventually(STEP_LIMIT, "the probe closed and healed", || {
        probe.is_closed() && stats.healed() == 1
    })
    .await;
    assert!(
        probe.was_expired(),
        "closed at its probe deadline, not by a checkout"
    );
    assert_eq!(
        layer.learned_timeout(&uri),
        None,
        "the estimate was forgotten"
    );
}

/// The connection's story is on every response: in its body by default
/// (no extension, so no allocation for it), where `ConnectionInfo::of`
/// finds it; in the extensions too when asked, where it survives
/// replacing the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_info_from_the_body_and_the_extension_on_request() {
    use tower_conn_lifecycle::track::{ConnectionInfo, ConnectionState};
    let server = Server::start(0).await;
    for extension in [false, true] {
        let client = client::builder()
            .connection_state_extension(extension)
            .build::<Empty<Bytes>>();
        let mut ids = Vec::new();
        for n in 1..=2u64 {
            let res = common::bounded(
                STEP_LIMIT,
                "request",
                client.clone().oneshot(get(&server.url)),
            )
            .await
            .unwrap();
            let info = ConnectionInfo::of(&res).expect("the one-call client tracks");
            assert_eq!(info.is_reused(), n == 2, "request {n}");
            let state = res.body().connection_state().expect("in the body").clone();
            assert_eq!(state.info().connection_id(), info.connection_id());
            assert_eq!(
                res.extensions().get::<ConnectionState>().is_some(),
                extension,
                "extension asked for: {extension}"
            );
            // Replacing the body keeps the extension, and only it.
            let mapped = res.map(|body| body.boxed());
            assert_eq!(ConnectionInfo::of(&mapped).is_some(), extension);
            mapped.into_body().collect().await.unwrap();
            ids.push(info.connection_id());
        }
        assert_eq!(ids[0], ids[1], "the second request reused the connection");
    }
    // Server-side: two connections (one per client), two requests each.
    assert_eq!(server.accepted(), 2);
    assert_eq!(server.seen.requests.lock().unwrap().len(), 4);
}

/// A healing probe of an estimate below the floor (only ever agreed by two
/// short closes) is reused once it has rested past the estimate plus its
/// tolerance, never before: a request on it sooner proves nothing and
/// restarts its idle, so on a busy origin whose requests come more often
/// than that, the probe never tested the estimate and reuse stayed
/// collapsed for as long as the estimate was trusted (minutes). Found by
/// `tests/hostile.rs`'s randomized server (gaps of a few ms, an estimate of
/// a few ms agreed early: reuse fell below a quarter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_below_the_floor_rests_until_a_request_on_it_tests_the_estimate() {
    use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
    use tower_conn_lifecycle::testing::IdleClosingServer;
    // Below the learner's 100 ms floor: learned only when two closes agree.
    const IDLE: Duration = Duration::from_millis(90);
    // Between the learned limit (half the estimate: about 45 ms) and the
    // estimate plus its tolerance (about 114 ms); twice it is past that
    // tolerance and before the probe's close (180 ms).
    const GAP: Duration = Duration::from_millis(70);
    const TASKS: usize = 2;
    const ROUNDS: usize = 12;
    let server = IdleClosingServer::start(IDLE).await.unwrap();
    let layer = IdleExpiryLayer::new(Duration::from_secs(90));
    let stats = layer.stats();
    let client = client::builder()
        .idle_expiry(layer.clone())
        .build::<Empty<Bytes>>();
    let url = server.url();
    let uri: http::Uri = url.parse().unwrap();
    // Two idle closes of 90 ms, one connection each, more than 90 ms apart.
    for closes in 1..=2 {
        fetch(&client, get(&url)).await.unwrap();
        eventually(STEP_LIMIT, "the 90 ms idle close", || {
            server.idle_closes() >= closes
        })
        .await;
        eventually(STEP_LIMIT, "the client saw it", || {
            stats.server_idle_closes() >= closes
        })
        .await;
    }
    let estimate = layer.learned_timeout(&uri).expect("the two closes agreed");
    assert!(estimate < Duration::from_millis(100), "{estimate:?}");
    // The server now keeps idle connections for 10 s: the estimate is wrong.
    server.set_idle_timeout(Duration::from_secs(10));
    let before = server.connections();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            for _ in 0..ROUNDS {
                fetch(&client, get(&url)).await.unwrap();
                sleep(GAP).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(
        server.requests(),
        before + (TASKS * ROUNDS) as u64,
        "every request reached the server once"
    );
    // Healed by the probe's first reuse (in the third round), then each task
    // keeps its connection. Without the rest, every round but the first
    // reused the probe after 70 ms (no test of the estimate) and the other
    // task opened a new connection (its last one expired at 45 ms).
    let opened = server.connections() - before;
    assert!(
        opened <= 6,
        "{opened} connections for {} requests",
        TASKS * ROUNDS
    );
    assert_eq!(stats.healed(), 1, "the probe refuted the estimate");
    assert_eq!(
        layer.learned_timeout(&uri),
        None,
        "the estimate was forgotten"
    );
}

/// A raw keep-alive server that answers the first `answer` requests of each
/// connection with `ok` (reading their bodies: `content-length` only) and
/// then never answers again: it reads on (`keep_reading`) or stops reading
/// altogether; the connection stays open. Counts connections and requests.
async fn stalling_after(
    answer: usize,
    keep_reading: bool,
) -> (String, Arc<Seen>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut io, _)) = listener.accept().await {
            let conn = s.accepted.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = 0;
                loop {
                    let mut chunk = [0u8; 4096];
                    let n = match io.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let length = head
                            .lines()
                            .filter_map(|l| l.split_once(':'))
                            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        let line = head.lines().next().unwrap_or("").to_string();
                        s.requests.lock().unwrap().push((conn, line, None));
                        if answered == answer && !keep_reading {
                            // Holds the connection open, reading nothing.
                            std::future::pending::<()>().await;
                        }
                        while buf.len() < end + 4 + length && answered < answer {
                            match io.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..(end + 4 + length).min(buf.len()));
                        if answered < answer {
                            answered += 1;
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if io.write_all(ok).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                s.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (url, seen, task)
}

/// Awaits `call`, which must fail by its `phase` limit `limit`: named, not
/// early, and within [`common::SLACK`] of it.
async fn fails_by<T: std::fmt::Debug>(
    call: impl std::future::Future<Output = Result<T, BoxError>>,
    phase: tower_conn_lifecycle::phase_timeout::Phase,
    limit: Duration,
) {
    use tower_conn_lifecycle::phase_timeout::Elapsed;
    let started = Instant::now();
    let err = common::bounded(STEP_LIMIT, "the stalled request", call)
        .await
        .expect_err("the server stalls");
    let took = started.elapsed();
    let elapsed = find_cause::<Elapsed>(err.as_ref()).expect("a phase timeout");
    assert_eq!(elapsed.phase(), phase, "{err}");
    assert!(took >= limit, "fired early: {took:?}");
    assert!(took < limit + common::SLACK, "fired late: {took:?}");
}

/// A request sent on a reused connection waits on that connection's timer
/// (the one-call client's requests make no timer of their own there): a
/// response head that never comes still fails by the `read` limit, named,
/// on time, not retried; and the connection, abandoned, is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_head_on_a_reused_connection_times_out_by_its_read_limit() {
    use tower_conn_lifecycle::phase_timeout::{Phase, PhaseTimeoutLayer};
    const READ: Duration = Duration::from_millis(300);
    let (url, seen, task) = stalling_after(3, true).await;
    let client = client::builder()
        .timeouts(
            PhaseTimeoutLayer::new()
                .read(READ)
                .total(Duration::from_secs(30)),
        )
        .build::<Empty<Bytes>>();
    for _ in 0..3 {
        assert_eq!(fetch(&client, get(&url)).await.unwrap(), "ok");
    }
    fails_by(client.clone().oneshot(get(&url)), Phase::Read, READ).await;
    // Server side: one connection carried all four requests; nothing was
    // retried; the abandoned connection is closed.
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(seen.requests.lock().unwrap().len(), 4);
    eventually(STEP_LIMIT, "the abandoned connection closed", || {
        seen.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    task.abort();
}

/// A client built without phase limits runs its requests without
/// PhaseTimeout's machinery, yet a request carrying a `PhaseOverride` is
/// still bounded by it: on a reused connection whose server stops
/// answering, the overridden request fails by its `read` limit (named, on
/// time, not retried, its connection closed), while the same request
/// without the override is not timed at all (still waiting well past the
/// limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_limits_still_honours_a_requests_phase_override() {
    use tower_conn_lifecycle::phase_timeout::{Phase, PhaseOverride};
    const READ: Duration = Duration::from_millis(300);
    let (url, seen, task) = stalling_after(2, true).await;
    let client = client::builder().build::<Empty<Bytes>>();
    for _ in 0..2 {
        assert_eq!(fetch(&client, get(&url)).await.unwrap(), "ok");
    }
    let mut overridden = get(&url);
    overridden
        .extensions_mut()
        .insert(PhaseOverride::new().read(READ));
    fails_by(client.clone().oneshot(overridden), Phase::Read, READ).await;
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1, "one connection");
    assert_eq!(seen.requests.lock().unwrap().len(), 3, "never retried");
    eventually(STEP_LIMIT, "the abandoned connection closed", || {
        seen.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    task.abort();
    // Without the override nothing bounds the wait: a server that never
    // answers still has the request pending at four times the limit.
    let (url, seen, task) = stalling_after(0, true).await;
    let unbounded = timeout(READ * 4, client.clone().oneshot(get(&url))).await;
    assert!(unbounded.is_err(), "no limit, no timeout: {unbounded:?}");
    assert_eq!(seen.requests.lock().unwrap().len(), 1, "it was sent");
    task.abort();
}

/// The same for an upload on a reused connection the server stops reading:
/// it fails by its `send` stall limit, named, on time, not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_on_a_reused_connection_times_out_by_its_send_limit() {
    use http_body_util::Full;
    use tower_conn_lifecycle::phase_timeout::{Phase, PhaseTimeoutLayer};
    const SEND: Duration = Duration::from_millis(300);
    let (url, seen, task) = stalling_after(2, false).await;
    let client = client::builder()
        .timeouts(
            PhaseTimeoutLayer::new()
                .send(SEND)
                .total(Duration::from_secs(30)),
        )
        .build::<Full<Bytes>>();
    let post = |len: usize| {
        Request::post(url.as_str())
            .body(Full::new(Bytes::from(vec![7u8; len])))
            .unwrap()
    };
    for _ in 0..2 {
        let res = common::bounded(
            STEP_LIMIT,
            "a small upload",
            client.clone().oneshot(post(10)),
        )
        .await
        .unwrap();
        res.into_body().collect().await.unwrap();
    }
    // Far more than loopback's socket buffers hold.
    fails_by(client.clone().oneshot(post(64 << 20)), Phase::Send, SEND).await;
    assert_eq!(
        seen.accepted.load(Ordering::SeqCst),
        1,
        "on the reused connection"
    );
    assert_eq!(seen.requests.lock().unwrap().len(), 3, "never retried");
    task.abort();
}

// ---------------------------------------------------------------------------
// What the user keeps: hyper-util's connector with its settings, or a
// connector of their own, and hyper's HTTP/1 and HTTP/2 settings; the
// client still puts TLS, the tracker and the connect timeout around it.

/// A connector of the user's makes every connection: here one that sends
/// every name to the test server (what a custom resolver does), counting
/// its connects. The tracker wraps it (the client counts the connection),
/// and requests keep the name they were made for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_connector_makes_the_connections_under_the_tracker() {
    use hyper_util::rt::TokioIo;
    let server = Server::start(0).await;
    let addr: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let connects = Arc::new(AtomicUsize::new(0));
    let counted = connects.clone();
    let connector = tower::service_fn(move |_: http::Uri| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { TcpStream::connect(addr).await.map(TokioIo::new) }
    });
    let client = client::builder()
        .connector(connector)
        .build::<Empty<Bytes>>();
    for _ in 0..2 {
        let body = fetch(&client, get("http://service.invalid/x"))
            .await
            .unwrap();
        assert_eq!(&body[..], b"ok");
    }
    assert_eq!(connects.load(Ordering::SeqCst), 1);
    assert_eq!(client.connection_stats().opened(), 1);
    // Server side: the connector's one connection, reused; the requests
    // name the origin they were made for.
    assert_eq!(server.accepted(), 1);
    let request = (
        0,
        "GET /x HTTP/1.1".to_string(),
        Some("service.invalid".to_string()),
    );
    assert_eq!(server.requests(), vec![request.clone(), request]);
}

/// The client's connect timeout is outside the user's connector: a
/// connector that never connects fails by the `connect` limit, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_timeout_bounds_a_custom_connector() {
    use hyper_util::rt::TokioIo;
    use tower_conn_lifecycle::phase_timeout::Phase;
    const CONNECT: Duration = Duration::from_millis(200);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let never = tower::service_fn(move |_: http::Uri| {
        counted.fetch_add(1, Ordering::SeqCst);
        // A `BoxError` error type, as a boxed connector has.
        std::future::pending::<Result<TokioIo<TcpStream>, BoxError>>()
    });
    let client = client::builder()
        .connector(never)
        .connect_timeout(CONNECT)
        .build::<Empty<Bytes>>();
    fails_by(
        client.clone().oneshot(get("http://nowhere.invalid/")),
        Phase::Connect,
        CONNECT,
    )
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a connect timeout is not retried"
    );
}

/// hyper-util's `HttpConnector` with the user's settings: its own connect
/// timeout (per address) ends a connect into a blackhole, with the client's
/// connect timeout unset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_connectors_own_settings_are_kept() {
    use hyper_util::client::legacy::connect::HttpConnector;
    use tower_conn_lifecycle::phase_timeout::Elapsed;
    use tower_conn_lifecycle::testing::Blackhole;
    const LIMIT: Duration = Duration::from_millis(300);
    let hole = Blackhole::start().await.unwrap();
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(LIMIT));
    http.set_nodelay(true);
    let client = client::builder()
        .http_connector(http)
        .build::<Empty<Bytes>>();
    let started = Instant::now();
    let err = common::bounded(
        STEP_LIMIT,
        "a connect into the blackhole",
        client.clone().oneshot(get(&hole.url())),
    )
    .await
    .expect_err("nothing accepts");
    let took = started.elapsed();
    assert!(took >= LIMIT, "early: {took:?}");
    assert!(took < LIMIT + common::SLACK, "late: {took:?}");
    let io = find_cause::<std::io::Error>(err.as_ref()).expect("an IO error");
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(
        find_cause::<Elapsed>(err.as_ref()).is_none(),
        "the connector's own timeout, not the client's: {err}"
    );
}

/// A user's `HttpConnector` (which refuses `https://` by default) still
/// gets `https://` URIs under the TLS connector: the client turns
/// `enforce_http(false)` on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_http_connector_carries_tls() {
    use common::tls::{Mode, TlsServer};
    use hyper_util::client::legacy::connect::HttpConnector;
    let ca = common::pki::Ca::new("test ca");
    let mut server = TlsServer::start(&ca.leaf(&["localhost"]), Mode::Http1Only).await;
    let client = client::builder()
        .http_connector(HttpConnector::new())
        .tls_config(common::tls::client_config(&ca))
        .build::<Empty<Bytes>>();
    let body = fetch(&client, get(&server.url("localhost").to_string()))
        .await
        .unwrap();
    assert_eq!(&body[..], b"HTTP/1.1");
    let handshake = server.next_handshake().await.unwrap();
    assert_eq!(handshake.sni.as_deref(), Some("localhost"));
    assert_eq!(server.requests(), 1);
}

/// hyper's HTTP/1 settings apply to the client's connections: with
/// `title_case_headers`, the server reads `Host:` and `X-Custom-Thing:`,
/// where the default client writes them in lower case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_settings_apply_to_every_connection() {
    let server = Server::start(0).await;
    let titled = client::builder()
        .http1(|h1| {
            h1.title_case_headers(true);
        })
        .build::<Empty<Bytes>>();
    let plain = client::builder().build::<Empty<Bytes>>();
    for client in [&titled, &plain] {
        let mut req = get(&format!("{}/t", server.url));
        req.headers_mut()
            .insert("x-custom-thing", http::HeaderValue::from_static("1"));
        fetch(client, req).await.unwrap();
    }
    let heads = server.heads();
    assert_eq!(heads.len(), 2);
    assert!(heads[0].contains("\r\nHost: "), "{:?}", heads[0]);
    assert!(heads[0].contains("\r\nX-Custom-Thing: 1"), "{:?}", heads[0]);
    assert!(heads[1].contains("\r\nhost: "), "{:?}", heads[1]);
    assert!(heads[1].contains("\r\nx-custom-thing: 1"), "{:?}", heads[1]);
    assert_eq!(server.accepted(), 2, "one connection per client");
}

/// A test CA, a TLS acceptor for `localhost` offering only `h2`, and a
/// loopback listener with its port: an HTTP/2 server's set-up.
async fn h2_tls_listener() -> (common::pki::Ca, tokio_rustls::TlsAcceptor, TcpListener, u16) {
    let ca = common::pki::Ca::new("test ca");
    let config =
        common::pki::Ca::leaf(&ca, &["localhost"]).server_config(common::tls::provider(), &[b"h2"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (ca, acceptor, listener, port)
}

/// hyper's HTTP/2 settings apply to the client's HTTP/2 connections: a
/// `max_header_list_size` below the size of the server's response headers
/// makes the client refuse the response, which the default client takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_settings_apply_to_every_http2_connection() {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (ca, acceptor, listener, port) = h2_tls_listener().await;
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // Every response carries 8 KiB of headers.
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let version = format!("{:?}", req.version());
                    async move {
                        http::Response::builder()
                            .header("x-big", "b".repeat(8 << 10))
                            .body(Full::new(Bytes::from(version)))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let url = format!("https://localhost:{port}/");
    let build = |small: bool| {
        client::builder()
            .tls_config(common::tls::client_config(&ca))
            .http2(move |h2| {
                if small {
                    h2.max_header_list_size(4 << 10);
                }
            })
            .build::<Empty<Bytes>>()
    };
    let body = fetch(&build(false), get(&url)).await.unwrap();
    assert_eq!(&body[..], b"HTTP/2.0");
    let err = fetch(&build(true), get(&url))
        .await
        .expect_err("headers above the client's limit");
    // Server side: both requests arrived over HTTP/2 and were answered;
    // the limited client refused the second answer.
    assert_eq!(answered.load(Ordering::SeqCst), 2, "{err}");
    server.abort();
}

/// HTTP/2, several streams on one connection, one of them given up on:
/// dropping the stalled stream's future ends that stream only. The requests
/// in flight beside it and those sent after it are answered on the same
/// connection (server side: one TLS connection accepted, every request
/// answered, the stalled one seen and never answered). Without limits (the
/// requests skip PhaseTimeout) and with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_given_up_on_leaves_its_connection_to_the_others() {
    use tower_conn_lifecycle::phase_timeout::PhaseTimeoutLayer;
    http2_stream_given_up_on(|config| client::builder().tls_config(config).build::<Empty<Bytes>>())
        .await;
    http2_stream_given_up_on(|config| {
        client::builder()
            .tls_config(config)
            .timeouts(
                PhaseTimeoutLayer::new()
                    .send(Duration::from_secs(30))
                    .read(Duration::from_secs(30))
                    .total(Duration::from_secs(60)),
            )
            .build::<Empty<Bytes>>()
    })
    .await;
}

async fn http2_stream_given_up_on(
    build: impl FnOnce(Arc<rustls::ClientConfig>) -> Client<Empty<Bytes>>,
) {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (ca, acceptor, listener, port) = h2_tls_listener().await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let stalled = Arc::new(AtomicUsize::new(0));
    let (a, n, st) = (accepted.clone(), answered.clone(), stalled.clone());
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let (acceptor, n, st) = (acceptor.clone(), n.clone(), st.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (n, st) = (n.clone(), st.clone());
                    async move {
                        if req.uri().path() == "/stall" {
                            st.fetch_add(1, Ordering::SeqCst);
                            std::future::pending::<()>().await;
                        }
                        n.fetch_add(1, Ordering::SeqCst);
                        http::Response::builder().body(Full::new(Bytes::from_static(b"ok")))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let url = format!("https://localhost:{port}/");
    let client = build(common::tls::client_config(&ca));
    assert_eq!(&fetch(&client, get(&url)).await.unwrap()[..], b"ok");
    let stall = tokio::spawn(client.clone().oneshot(get(&format!("{url}stall"))));
    eventually(STEP_LIMIT, "the stalled stream reached the server", || {
        stalled.load(Ordering::SeqCst) == 1
    })
    .await;
    // Three more streams beside it, then the stalled one given up on while
    // they may still be in flight.
    let beside: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move { fetch(&client, get(&url)).await })
        })
        .collect();
    stall.abort();
    assert!(stall.await.unwrap_err().is_cancelled());
    for task in beside {
        assert_eq!(&task.await.unwrap().unwrap()[..], b"ok");
    }
    for _ in 0..3 {
        assert_eq!(&fetch(&client, get(&url)).await.unwrap()[..], b"ok");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for every stream"
    );
    assert_eq!(answered.load(Ordering::SeqCst), 7);
    assert_eq!(stalled.load(Ordering::SeqCst), 1);
    server.abort();
}

/// hyper's HTTP/1 `max_buf_size` through `Builder::http1`: a 64 KiB
/// response header against an 8 KiB buffer fails the request at once with
/// hyper's "message head is too large", and its connection is not reused
/// (server side: the next request arrives on a new connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_above_max_buf_size_fails_and_its_connection_is_not_reused() {
    let server = Server::start(0).await;
    let client = client::builder()
        .http1(|h1| {
            h1.max_buf_size(8192);
        })
        .build::<Empty<Bytes>>();
    let err = fetch(&client, get(&format!("{}/bighead", server.url)))
        .await
        .expect_err("a head above the buffer");
    let hyper = find_cause::<hyper::Error>(err.as_ref()).expect("hyper's error");
    assert!(hyper.is_parse_too_large(), "{err}");
    assert_eq!(&fetch(&client, get(&server.url)).await.unwrap()[..], b"ok");
    let requests: Vec<_> = server.requests().into_iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(
        requests,
        vec![
            (0, "GET /bighead HTTP/1.1".to_string()),
            (1, "GET / HTTP/1.1".to_string())
        ],
        "no retry of the refused head; the next request on a new connection"
    );
}

/// A user's connector that fails: the request fails with the connector's
/// own error in its chain, at once, and the connector is asked once per
/// request (a failed connect is not a stale connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_custom_connector_is_the_requests_error() {
    use hyper_util::rt::TokioIo;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let failing = tower::service_fn(move |_: http::Uri| {
        counted.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err::<TokioIo<TcpStream>, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused by the test connector",
        )))
    });
    let client = client::builder().connector(failing).build::<Empty<Bytes>>();
    let err = fetch(&client, get("http://nowhere.invalid/"))
        .await
        .expect_err("the connector fails");
    let io = find_cause::<std::io::Error>(err.as_ref()).expect("the connector's error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{err}");
    assert_eq!(client.connection_stats().opened(), 0);
}

/// A connector whose IO claims `negotiated_h2` (a user's h2c transport).
mod claims_h2 {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use hyper_util::client::legacy::connect::{Connected, Connection};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpStream;

    pub struct ClaimsH2(TokioIo<TcpStream>);

    impl Connection for ClaimsH2 {
        fn connected(&self) -> Connected {
            Connected::new().negotiated_h2()
        }
    }

    impl hyper::rt::Read for ClaimsH2 {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: hyper::rt::ReadBufCursor<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl hyper::rt::Write for ClaimsH2 {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    /// A connector to `addr` whose connections claim `negotiated_h2`.
    pub fn to(
        addr: std::net::SocketAddr,
    ) -> impl tower::Service<
        http::Uri,
        Response = ClaimsH2,
        Error = std::io::Error,
        Future = impl std::future::Future<Output = std::io::Result<ClaimsH2>> + Send,
    > + Clone
           + Send
           + Sync
           + 'static {
        tower::service_fn(move |_: http::Uri| async move {
            TcpStream::connect(addr)
                .await
                .map(|tcp| ClaimsH2(TokioIo::new(tcp)))
        })
    }
}

/// A connector whose IO claims `negotiated_h2` over `http://`: the client
/// speaks HTTP/2 on it (prior knowledge, h2c), as hyper-util's legacy
/// client does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_claiming_h2_over_http_is_spoken_http2() {
    use hyper_util::rt::TokioIo;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    let counted = streams.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from(format!("{:?}", req.version()))),
                        ))
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
            });
        }
    });
    let client = client::builder()
        .connector(claims_h2::to(addr))
        .build::<Empty<Bytes>>();
    for _ in 0..2 {
        let body = fetch(&client, get(&format!("http://{addr}/")))
            .await
            .unwrap();
        assert_eq!(&body[..], b"HTTP/2.0");
    }
    // Server side: two HTTP/2 streams on one connection.
    assert_eq!(streams.load(Ordering::SeqCst), 2);
    assert_eq!(client.connection_stats().opened(), 1);
    task.abort();
}

/// The same connector against an HTTP/1 server: every request fails at
/// once (`frame with invalid size`, after Retry's one retry), the server
/// having seen only HTTP/2's preface. About 1 request in 30,000 (1 in 1,200
/// on a loaded machine; 1 run of this test in 12) used to hang for ever:
/// sent as its HTTP/2 connection's task ended, it was left in hyper's
/// request channel, which the request's own connection handle kept open
/// (the engine's `H2Sender` now lets go of it when the task ends; its unit
/// test pins that). About 6 s in a debug build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_claiming_h2_against_an_http1_server_never_hangs() {
    for round in 0..3000 {
        let server = Server::start(0).await;
        let addr = server.url.trim_start_matches("http://").parse().unwrap();
        let client = client::builder()
            .connector(claims_h2::to(addr))
            .build::<Empty<Bytes>>();
        let sent = timeout(
            Duration::from_secs(2),
            client.clone().oneshot(get(&format!("{}/x", server.url))),
        )
        .await;
        let err = match sent {
            Err(_) => panic!("round {round}: hung; server saw {:?}", server.requests()),
            Ok(res) => res.expect_err("HTTP/2 against an HTTP/1 server"),
        };
        let lines: Vec<_> = server.requests().into_iter().map(|r| r.1).collect();
        assert!(
            lines.iter().all(|l| l == "PRI * HTTP/2.0" || l == "SM"),
            "{lines:?}: {err}"
        );
    }
}

/// A server that closes every connection as soon as it accepts it: the
/// one-call client's request fails at once, after a few connections (a new
/// connection's refusal ends its checkout; Retry may try once more; under
/// load hyper-util's cache may finish a connect it raced in the
/// background), where it used to connect again up to eight times per
/// attempt (12 to 16 connections per request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closing_every_connection_at_once_is_not_stormed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(io);
        }
    });
    let client = client::builder().build::<Empty<Bytes>>();
    for round in 0..5 {
        let before = accepted.load(Ordering::SeqCst);
        let err = common::bounded(
            common::SLACK,
            "a request",
            client.clone().oneshot(get(&url)),
        )
        .await
        .expect_err("the server closes everything");
        let used = accepted.load(Ordering::SeqCst) - before;
        assert!(
            (1..=4).contains(&used),
            "round {round}: {used} connections: {err}"
        );
    }
    task.abort();
}

/// A request's checkout happens at the call, its connection's last check at
/// its first poll: a future created on a connection that was fresh then but
/// first polled after that connection's expiry does not send on it (the
/// tracker closes the connection at its deadline, or the check at the first
/// poll refuses it), and takes a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_first_polled_after_its_connections_expiry_takes_another() {
    const EXPIRY: Duration = Duration::from_millis(150);
    let server = Server::start(0).await;
    let client = client::builder()
        .idle_expiry(tower_conn_lifecycle::idle_expiry::IdleExpiryLayer::new(
            EXPIRY,
        ))
        .build::<Empty<Bytes>>();
    fetch(&client, get(&server.url)).await.unwrap();
    assert_eq!(server.accepted(), 1);
    // Checked out now, while fresh; first polled after its expiry.
    let mut svc = client.clone();
    let ready = ServiceExt::<Request<Empty<Bytes>>>::ready(&mut svc)
        .await
        .unwrap();
    let pending = tower::Service::call(ready, get(&server.url));
    sleep(EXPIRY * 2).await;
    let res = timeout(STEP_LIMIT, pending)
        .await
        .expect("request hung")
        .unwrap();
    res.into_body().collect().await.unwrap();
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].0, 1,
        "the second request went on a new connection: {requests:?}"
    );
    assert_eq!(server.accepted(), 2);
}
