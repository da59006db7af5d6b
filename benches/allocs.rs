//! Heap allocations per request for every client variant and workload,
//! natively (no valgrind needed): the allocation columns of
//! `cargo bench --bench instructions`, on their own.
//!
//! `cargo bench --bench allocs` prints a table. Client and server share one
//! current-thread runtime, so every allocation of the exchange is counted on
//! both sides; the difference between the rows is this crate's cost.

mod common;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tower_conn_lifecycle::testing::HyperServer;

use common::{with_client, Get, Post64k, Workload, VARIANTS};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const REQUESTS: usize = 2000;

fn main() {
    common::runtime().block_on(async {
        let server = HyperServer::start().await.unwrap();
        let uri: http::Uri = server.url().parse().unwrap();
        println!(
            "Heap allocations per request (client + server, {REQUESTS} requests after {} warm-up)\n",
            common::WARM_UP
        );
        println!("| client | {} | vs bare | {} | vs bare |", Get::NAME, Post64k::NAME);
        println!("|---|--:|--:|--:|--:|");
        let mut base = None;
        for &variant in VARIANTS {
            macro_rules! count {
                ($w:ident) => {
                    with_client!(variant, <$w as Workload>::Body, |svc| {
                        let mut svc = svc;
                        common::count_allocations(GLOBAL, &mut svc, $w, &uri, REQUESTS, 1).await
                            as f64
                            / REQUESTS as f64
                    })
                };
            }
            let (get, post) = (count!(Get), count!(Post64k));
            let (bg, bp) = *base.get_or_insert((get, post));
            println!(
                "| {} | {get:.2} | {:+.2} | {post:.2} | {:+.2} |",
                variant.name(),
                get - bg,
                post - bp
            );
        }
    });
}
