//! Heap allocations per request: bare hyper-util client vs the same client
//! with the tracker on the connector and PhaseTimeout (all phases on).
//!
//! `cargo bench --bench allocs` prints a table. Client and server share one
//! current-thread runtime, so every allocation of the exchange is counted on
//! both sides; the difference between the rows is this crate's cost.

mod common;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower_conn_lifecycle::testing::HyperServer;

use common::GetClient;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const REQUESTS: usize = 2000;

async fn run<S: GetClient>(mut svc: S, uri: &http::Uri) -> f64 {
    // Warm up: connection, pool entry, timer wheel.
    for _ in 0..50 {
        common::get(&mut svc, uri).await;
    }
    let region = Region::new(GLOBAL);
    for _ in 0..REQUESTS {
        common::get(&mut svc, uri).await;
    }
    region.change().allocations as f64 / REQUESTS as f64
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = HyperServer::start().await.unwrap();
        let uri: http::Uri = server.url().parse().unwrap();

        let bare_allocs = run(common::bare(), &uri).await;
        let tracker_allocs = run(common::tracker_only(), &uri).await;
        let phases_allocs = run(common::phase_timeout_only(), &uri).await;
        let layered_allocs = run(common::tracker_and_phase_timeout(), &uri).await;
        let expiry_allocs = run(common::tracker_and_idle_expiry(), &uri).await;

        println!("allocations per keep-alive GET (client + server, {REQUESTS} requests)");
        let rows = [
            ("bare hyper-util", bare_allocs),
            ("tracker only", tracker_allocs),
            ("PhaseTimeout only", phases_allocs),
            ("tracker + PhaseTimeout", layered_allocs),
            ("tracker + IdleExpiry", expiry_allocs),
            (
                "tracker + PhaseTimeout - bare",
                layered_allocs - bare_allocs,
            ),
        ];
        println!("| {:<30} | {:>19} |", "client", "allocations/request");
        println!("|{}|{}|", "-".repeat(32), "-".repeat(21));
        for (name, n) in rows {
            println!("| {name:<30} | {n:>19.2} |");
        }
    });
}
