//! The layers stacked by hand on a hyper-util client you already have,
//! keeping its settings.
//!
//! ```sh
//! cargo run --release --example hand_stack
//! ```
//!
//! [`your_builder`] is the `hyper_util::client::legacy::Client` builder an
//! application already has, with its own settings (pool size and idle
//! timeout, timer, HTTP/1 options). Adding the layers changes two things
//! about the client and nothing else:
//!
//! 1. its connector goes under the tracker (and the connect timeout), so
//!    every layer knows each connection's story;
//! 2. it is built for the crate's one request body type,
//!    [`RequestBody`](tower_conn_lifecycle::RequestBody), whatever layers
//!    are stacked above it and whatever body the caller sends.
//!
//! Then the layers go around it, in the documented order: Retry →
//! PhaseTimeout → IdleExpiry → your client. The same settings built the
//! plain way (a bare `HttpConnector`, `Full<Bytes>` bodies) are the
//! comparison.
//!
//! Both run the seed race against a local server that closes connections
//! idle for 200 ms (like Go's `net/http` with `IdleTimeout`), while the
//! application's pool keeps idle connections for 30 s: 10 tasks sharing
//! one client, sequential requests with gaps uniform in [0.99, 1.0) x
//! 200 ms, GET and then POST.
//!
//! `tests/examples.rs` runs [`run`] with fewer requests and checks the
//! server's counts.

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Builder, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::ServiceBuilder;
use tower_conn_lifecycle::connect_timeout::ConnectTimeoutLayer;
use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
use tower_conn_lifecycle::phase_timeout::PhaseTimeoutLayer;
use tower_conn_lifecycle::retry::RetryOnStaleConnectionLayer;
use tower_conn_lifecycle::testing::{IdleClosingServer, SeedReport, SeedWorkload};
use tower_conn_lifecycle::track::TrackConnectionsLayer;
use tower_conn_lifecycle::{BoxError, RequestBody};

/// The builder of the client the application already has, with its
/// settings. Nothing here changes when the layers are added.
pub fn your_builder() -> Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_max_idle_per_host(16)
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(TokioTimer::new())
        .http1_title_case_headers(true);
    builder
}

/// One client and method's run, with the server's counts.
pub struct Row {
    /// "your client" or "+ layers".
    pub client: &'static str,
    pub method: Method,
    pub report: SeedReport,
    /// Connections the server accepted, requests and POSTs it answered,
    /// idle connections it closed.
    pub server_connections: u64,
    pub server_requests: u64,
    pub server_posts: u64,
    pub server_idle_closes: u64,
}

/// Runs the workload (`tasks` tasks sharing one client, `requests`
/// sequential requests each) with the client as it is and with the layers
/// stacked on it, GET and POST, each against a new server that closes
/// connections idle for `idle`; IdleExpiry expires connections idle for
/// `expiry`.
pub async fn run(
    idle: Duration,
    expiry: Duration,
    tasks: usize,
    requests: usize,
) -> Result<Vec<Row>, BoxError> {
    let mut rows = Vec::new();
    for method in [Method::GET, Method::POST] {
        for layered in [false, true] {
            let server = IdleClosingServer::start(idle).await?;
            let workload = SeedWorkload::new(idle)
                .tasks(tasks)
                .requests(requests)
                .method(method.clone());
            let report = if layered {
                // 1. The connector under the connect timeout and the tracker.
                let connector = ServiceBuilder::new()
                    .layer(ConnectTimeoutLayer::new(Duration::from_secs(1)))
                    .layer(TrackConnectionsLayer::new())
                    .service(HttpConnector::new());
                // 2. Your builder, built for the crate's request body.
                let client = your_builder().build::<_, RequestBody>(connector);
                // 3. The layers around it.
                let client = ServiceBuilder::new()
                    .layer(RetryOnStaleConnectionLayer::new())
                    .layer(
                        PhaseTimeoutLayer::new()
                            .send(Duration::from_secs(1))
                            .read(Duration::from_secs(5)),
                    )
                    .layer(IdleExpiryLayer::new(expiry))
                    .service(client);
                workload.run(&server.url(), |_| client.clone()).await
            } else {
                let client = your_builder().build::<_, Full<Bytes>>(HttpConnector::new());
                workload.run(&server.url(), |_| client.clone()).await
            };
            rows.push(Row {
                client: if layered { "+ layers" } else { "your client" },
                method: method.clone(),
                report,
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
        "server: closes connections idle for {IDLE:?}; your client: hyper-util's legacy \
         client, 16 idle per host kept 30 s, title-case headers; 10 tasks x 100 sequential \
         requests, gaps uniform in [0.99, 1.0) x {IDLE:?}\n"
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
                row.server_connections.to_string(),
                row.server_requests.to_string(),
                row.server_posts.to_string(),
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
            "server connections",
            "server requests",
            "server POSTs",
            "server idle closes",
        ],
        &table,
    );
    println!(
        "\nYour client as it is loses the requests it writes onto connections the server is \
         closing (its pool keeps them 30 s; the server, 200 ms). With the layers stacked on \
         the same builder, IdleExpiry retires each connection before the server's timeout, \
         so nothing is written onto a closing connection; Retry would resend what provably \
         never reached the server, and never a POST that might have."
    );
    Ok(())
}
