//! Memory under churn: 100 000 connect / request / server-idle-close cycles
//! through the tracker and IdleExpiry, printing the process's
//! resident set size as it goes. RSS must stay flat.
//!
//! ```sh
//! cargo bench --bench soak            # 100 000 cycles
//! cargo bench --bench soak -- 20000   # fewer
//! ```
//!
//! The server closes connections idle for 1 ms; each task pauses 3 ms
//! between requests, so every cycle opens a connection, sends one GET, and
//! the tracker then observes the server's idle close. Every connection's
//! state, observer, waker and expiry timer is created and dropped once.
//! Bounded in count and in time (5 minutes).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
use tower_conn_lifecycle::testing::IdleClosingServer;
use tower_conn_lifecycle::track::TrackConnectionsLayer;

const TASKS: usize = 32;
const TIME_LIMIT: Duration = Duration::from_secs(300);

/// Resident set size in KiB, from /proc (Linux); 0 elsewhere.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

fn main() {
    let cycles: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let server = IdleClosingServer::start(Duration::from_millis(1))
            .await
            .unwrap();
        let uri: http::Uri = server.url().parse().unwrap();
        let track = TrackConnectionsLayer::new();
        let stats = track.stats();
        // Learning off: a learned 1 ms timeout would make the client close
        // first, and 100 000 client-side TIME_WAITs exhaust the ephemeral
        // ports. The learner's bound is covered by its unit tests.
        let layer = IdleExpiryLayer::new(Duration::from_secs(90)).learn(false);
        let connector = ServiceBuilder::new()
            .layer(track)
            .service(HttpConnector::new());
        let client = ServiceBuilder::new().layer(layer.clone()).service(
            Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector),
        );
        let started = tokio::time::Instant::now();
        println!("| {:>8} | {:>9} | {:>12} | {:>15} | {:>14} |", "cycles", "RSS KiB", "open conns", "learned origins", "server closes");
        let per_task = cycles / TASKS;
        let step = (per_task / 10).max(1);
        for round in 0..10 {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..TASKS {
                let client = client.clone();
                let uri = uri.clone();
                set.spawn(async move {
                    for _ in 0..step {
                        if started.elapsed() > TIME_LIMIT {
                            return;
                        }
                        let req = http::Request::get(uri.clone()).body(Empty::new()).unwrap();
                        if let Ok(res) = client.clone().oneshot(req).await {
                            let _ = res.into_body().collect().await;
                        }
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                });
            }
            while set.join_next().await.is_some() {}
            println!(
                "| {:>8} | {:>9} | {:>12} | {:>15} | {:>14} |",
                (round + 1) * step * TASKS,
                rss_kib(),
                stats.open_now(),
                layer.learned_origins(),
                server.idle_closes()
            );
        }
        println!(
            "\nconnections opened {}, server idle closes {}, observed by the tracker {}, took {:.1} s",
            stats.opened(),
            server.idle_closes(),
            layer.stats().server_idle_closes(),
            started.elapsed().as_secs_f64()
        );
    });
}
