//! IdleExpiry on hyper-util's composable pool, measured.
//!
//! ```sh
//! cargo run --release --example composable_pool
//! ```
//!
//! An HTTP/1 client on `hyper_util::client::pool::cache` with this crate's
//! [`pool`] pieces (a tracked connection per pooled service, hyper's
//! `conn::http1` handshake, the connection's own IdleExpiry service, and
//! the checkout that drops a refused connection and takes another) runs
//! the seed workload against a local server that closes connections idle
//! for 200 ms (like Go's `net/http` with `IdleTimeout`): 10 tasks, each
//! with its own client, sequential requests with gaps uniform in
//! [0.99, 1.0) x 200 ms.
//!
//! "without": connections are never expired (the pool as hyper-util ships
//! it). "configured": expire after 150 ms idle. "learned": a 90 s expiry,
//! so only what the layer learns from the server's idle closes helps.
//!
//! `tests/examples.rs` runs [`run`] with fewer requests and checks the
//! server's counts.

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::pool::cache;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service};
use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
use tower_conn_lifecycle::pool;
use tower_conn_lifecycle::testing::{IdleClosingServer, SeedReport, SeedWorkload};
use tower_conn_lifecycle::track::{TrackConnectionsLayer, TrackedBody};
use tower_conn_lifecycle::BoxError;

/// How many pooled connections one request may find expired or closed
/// before it gives up (each costs nothing: no byte was written on them).
const ATTEMPTS: usize = 8;

/// The client one task of the workload uses: its own pool of connections
/// to `url`'s origin, made under `track` and expired by `idle_expiry`.
pub fn client(
    idle_expiry: IdleExpiryLayer,
    track: &TrackConnectionsLayer,
) -> impl Service<
    http::Request<Full<Bytes>>,
    Response = http::Response<pool::Body<TrackedBody<Incoming>>>,
    Error = BoxError,
    Future: Send,
> + Clone
       + Send
       + 'static {
    let connect = pool::connect(
        track.layer(HttpConnector::new()),
        hyper::client::conn::http1::Builder::new(),
        idle_expiry,
    );
    let cache = cache::builder()
        .executor(TokioExecutor::new())
        .build(connect);
    pool::checkout(cache, ATTEMPTS)
}

/// One client and method's run, with the server's counts.
pub struct Row {
    /// Which client: without IdleExpiry, configured, learned.
    pub client: &'static str,
    pub method: Method,
    pub report: SeedReport,
    /// Connections the client opened (the tracker's count).
    pub connections: u64,
    /// Connections the server accepted, requests and POSTs it answered,
    /// idle connections it closed.
    pub server_connections: u64,
    pub server_requests: u64,
    pub server_posts: u64,
    pub server_idle_closes: u64,
}

/// Runs the workload (`tasks` tasks of `requests` sequential requests each)
/// for each client and method against a new server closing connections
/// idle for `idle`; "configured" expires connections idle for `expiry`.
pub async fn run(
    idle: Duration,
    expiry: Duration,
    tasks: usize,
    requests: usize,
) -> Result<Vec<Row>, BoxError> {
    let mut rows = Vec::new();
    for (name, layer) in [
        (
            "without IdleExpiry",
            IdleExpiryLayer::new(Duration::MAX).learn(false),
        ),
        (
            "IdleExpiry configured",
            IdleExpiryLayer::new(expiry).learn(false),
        ),
        (
            "IdleExpiry 90 s, learned",
            IdleExpiryLayer::new(Duration::from_secs(90)),
        ),
    ] {
        for method in [Method::GET, Method::POST] {
            let server = IdleClosingServer::start(idle).await?;
            let track = TrackConnectionsLayer::new();
            let report = SeedWorkload::new(idle)
                .tasks(tasks)
                .requests(requests)
                .method(method.clone())
                .run(&server.url(), |_| client(layer.clone(), &track))
                .await;
            rows.push(Row {
                client: name,
                method,
                report,
                connections: track.stats().opened(),
                server_connections: server.connections(),
                server_requests: server.requests(),
                server_posts: server.posts(),
                server_idle_closes: server.idle_closes(),
            });
        }
    }
    Ok(rows)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    const IDLE: Duration = Duration::from_millis(200);
    println!(
        "server: closes connections idle for {IDLE:?}; 10 tasks x 100 sequential requests, \
         gaps uniform in [0.99, 1.0) x {IDLE:?}; client: hyper-util pool::cache + \
         tower_conn_lifecycle::pool\n"
    );
    let rows = run(IDLE, Duration::from_millis(150), 10, 100).await?;
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let report = &row.report;
            vec![
                row.client.to_owned(),
                row.method.to_string(),
                report.requests().to_string(),
                report.errors().to_string(),
                row.connections.to_string(),
                format!(
                    "{:.0} %",
                    100.0 * report.reused() as f64 / report.requests().max(1) as f64
                ),
                row.server_requests.to_string(),
                row.server_idle_closes.to_string(),
            ]
        })
        .collect();
    for row in &rows {
        for (chain, n) in row.report.error_chains() {
            eprintln!("  {} {}: {n} x {chain}", row.client, row.method);
        }
    }
    common::table(
        &[
            "client",
            "method",
            "requests",
            "errors",
            "connections",
            "reused",
            "server requests",
            "server idle closes",
        ],
        &table,
    );
    println!(
        "\nWithout expiry, requests written at the moment the server closes fail. With a \
         configured expiry below the server's idle timeout, no request fails: the pool's \
         poll_ready refuses expired connections before anything is written. With a 90 s \
         expiry the layer learns the 200 ms timeout from the first idle close it sees; only \
         requests before that can race."
    );
    Ok(())
}
