//! Heap allocations per request: bare hyper-util client vs the same client
//! with the tracker on the connector and PhaseTimeout (all phases on).
//!
//! `cargo bench --bench allocs` prints a table. Client and server share one
//! current-thread runtime, so every allocation of the exchange is counted on
//! both sides; the difference between the rows is this crate's cost.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_conn_lifecycle::phase_timeout::{PhaseTimeoutLayer, RequestBody};
use tower_conn_lifecycle::testing::HyperServer;
use tower_conn_lifecycle::track::TrackConnectionsLayer;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const REQUESTS: usize = 2000;

async fn run<S, B>(mut svc: S, uri: &http::Uri) -> f64
where
    S: Service<http::Request<Empty<Bytes>>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    // Warm up: connection, pool entry, timer wheel.
    for _ in 0..50 {
        get(&mut svc, uri).await;
    }
    let region = Region::new(GLOBAL);
    for _ in 0..REQUESTS {
        get(&mut svc, uri).await;
    }
    region.change().allocations as f64 / REQUESTS as f64
}

async fn get<S, B>(svc: &mut S, uri: &http::Uri)
where
    S: Service<http::Request<Empty<Bytes>>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let req = http::Request::get(uri.clone()).body(Empty::new()).unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    res.into_body().collect().await.unwrap();
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = HyperServer::start().await.unwrap();
        let uri: http::Uri = server.url().parse().unwrap();

        let bare =
            Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(HttpConnector::new());
        let bare_allocs = run(bare, &uri).await;

        let phases = PhaseTimeoutLayer::new()
            .send(Duration::from_secs(5))
            .read(Duration::from_secs(5))
            .total(Duration::from_secs(10));
        let tracked = || {
            ServiceBuilder::new()
                .layer(TrackConnectionsLayer::new())
                .service(HttpConnector::new())
        };

        let tracker_only =
            Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(tracked());
        let tracker_allocs = run(tracker_only, &uri).await;

        let phases_only = ServiceBuilder::new().layer(phases).service(
            Client::builder(TokioExecutor::new())
                .build::<_, RequestBody<Empty<Bytes>>>(HttpConnector::new()),
        );
        let phases_allocs = run(phases_only, &uri).await;

        let layered = ServiceBuilder::new().layer(phases).service(
            Client::builder(TokioExecutor::new()).build::<_, RequestBody<Empty<Bytes>>>(tracked()),
        );
        let layered_allocs = run(layered, &uri).await;

        println!("allocations per keep-alive GET (client + server, {REQUESTS} requests)");
        let rows = [
            ("bare hyper-util", bare_allocs),
            ("tracker only", tracker_allocs),
            ("PhaseTimeout only", phases_allocs),
            ("tracker + PhaseTimeout", layered_allocs),
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
