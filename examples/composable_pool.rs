//! IdleExpiry on hyper-util's composable pool, measured.
//!
//! ```sh
//! cargo run --release --example composable_pool
//! ```
//!
//! An HTTP/1 client built from `hyper_util::client::pool::cache`, hyper's
//! `client::conn::http1` handshake and the tracker, with and without
//! IdleExpiry's per-connection service in between, runs the seed workload
//! against a local server that closes connections idle for 200 ms (like Go's
//! `net/http` with `IdleTimeout`): 10 tasks, each with its own client,
//! sequential requests with gaps uniform in [0.99, 1.0) x 200 ms.
//!
//! "without": connections are never expired (the pool as hyper-util ships
//! it). "configured": expire after 150 ms idle. "learned": a 90 s expiry,
//! so only what the layer learns from the server's idle closes helps.

mod common;
#[path = "../tests/common/composable.rs"]
mod composable;

use std::time::Duration;

use http::Method;
use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
use tower_conn_lifecycle::testing::{IdleClosingServer, SeedWorkload};
use tower_conn_lifecycle::track::TrackConnectionsLayer;

const IDLE: Duration = Duration::from_millis(200);

#[tokio::main]
async fn main() -> Result<(), tower_conn_lifecycle::BoxError> {
    println!(
        "server: closes connections idle for {IDLE:?}; 10 tasks x 100 sequential requests, \
         gaps uniform in [0.99, 1.0) x {IDLE:?}; client: hyper-util pool::cache + http1\n"
    );
    let mut rows = Vec::new();
    for (name, layer) in [
        (
            "without IdleExpiry",
            IdleExpiryLayer::new(Duration::MAX).learn(false),
        ),
        (
            "IdleExpiry 150 ms",
            IdleExpiryLayer::new(Duration::from_millis(150)).learn(false),
        ),
        (
            "IdleExpiry 90 s, learned",
            IdleExpiryLayer::new(Duration::from_secs(90)),
        ),
    ] {
        for method in [Method::GET, Method::POST] {
            let server = IdleClosingServer::start(IDLE).await?;
            let track = TrackConnectionsLayer::new();
            let stats = track.stats();
            let report = SeedWorkload::new(IDLE)
                .method(method.clone())
                .run(&server.url(), |_| {
                    composable::client(layer.clone(), track.clone())
                })
                .await;
            rows.push(vec![
                name.to_owned(),
                method.to_string(),
                report.requests().to_string(),
                report.errors().to_string(),
                stats.opened().to_string(),
                format!(
                    "{:.0} %",
                    100.0 * report.reused() as f64 / report.requests().max(1) as f64
                ),
                server.requests().to_string(),
                server.idle_closes().to_string(),
            ]);
            for (chain, n) in report.error_chains() {
                eprintln!("  {name} {method}: {n} x {chain}");
            }
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
        &rows,
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
