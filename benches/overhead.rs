//! Overhead of the tracker, PhaseTimeout and RetryOnStaleConnection over a
//! bare hyper-util client: keep-alive GETs on loopback against a healthy
//! server (so Retry never retries), all variants measured in the same run.
//!
//! `cargo bench --bench overhead`

mod common;

use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use http_body_util::Empty;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Runtime;
use tower::ServiceBuilder;
use tower_conn_lifecycle::phase_timeout::{PhaseTimeoutLayer, RequestBody};
use tower_conn_lifecycle::retry::RetryOnStaleConnectionLayer;
use tower_conn_lifecycle::testing::HyperServer;
use tower_conn_lifecycle::track::TrackConnectionsLayer;

use common::GetClient;

/// RetryOnStaleConnection around a client with no tracker.
fn retry_only() -> impl GetClient<Future: Send> {
    ServiceBuilder::new()
        .layer(RetryOnStaleConnectionLayer::new())
        .service(
            Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(HttpConnector::new()),
        )
}

/// The recommended stack: Retry over PhaseTimeout over a tracked client (the
/// two layers share one connection capture per request).
fn tracker_retry_and_phase_timeout() -> impl GetClient<Future: Send> {
    let connector = ServiceBuilder::new()
        .layer(TrackConnectionsLayer::new())
        .service(HttpConnector::new());
    ServiceBuilder::new()
        .layer(RetryOnStaleConnectionLayer::new())
        .layer(
            PhaseTimeoutLayer::new()
                .send(Duration::from_secs(5))
                .read(Duration::from_secs(5))
                .total(Duration::from_secs(10)),
        )
        .service(
            Client::builder(TokioExecutor::new()).build::<_, RequestBody<Empty<Bytes>>>(connector),
        )
}

/// RetryOnStaleConnection around a client whose connector is tracked: the
/// stack the retry rules are exact for.
fn tracker_and_retry() -> impl GetClient<Future: Send> {
    let connector = ServiceBuilder::new()
        .layer(TrackConnectionsLayer::new())
        .service(HttpConnector::new());
    ServiceBuilder::new()
        .layer(RetryOnStaleConnectionLayer::new())
        .service(Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector))
}

/// Concurrent requests per iteration of the throughput benchmark.
const BATCH: usize = 32;

fn sequential<S: GetClient>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    uri: &http::Uri,
    name: &str,
    svc: S,
) {
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            let mut svc = svc.clone();
            let uri = uri.clone();
            async move { common::get(&mut svc, &uri).await }
        });
    });
}

async fn batch<S>(svc: S, uri: http::Uri)
where
    S: GetClient<Future: Send>,
{
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..BATCH {
        let mut svc = svc.clone();
        let uri = uri.clone();
        set.spawn(async move { common::get(&mut svc, &uri).await });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

fn bench(c: &mut Criterion) {
    // One thread for client and server: the numbers are CPU per exchange,
    // not scheduling noise between cores.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(HyperServer::start()).unwrap();
    let uri: http::Uri = server.url().parse().unwrap();
    let (bare, layered, retry) = rt.block_on(async {
        (
            common::bare(),
            common::tracker_and_phase_timeout(),
            tracker_and_retry(),
        )
    });

    let mut group = c.benchmark_group("keepalive_get");
    group.throughput(Throughput::Elements(1));
    sequential(&mut group, &rt, &uri, "bare_hyper_util", bare.clone());
    sequential(
        &mut group,
        &rt,
        &uri,
        "tracker_only",
        common::tracker_only(),
    );
    sequential(
        &mut group,
        &rt,
        &uri,
        "tracker+idle_expiry",
        common::tracker_and_idle_expiry(),
    );
    sequential(
        &mut group,
        &rt,
        &uri,
        "phase_timeout_only",
        common::phase_timeout_only(),
    );
    sequential(
        &mut group,
        &rt,
        &uri,
        "tracker+phase_timeout",
        layered.clone(),
    );
    sequential(&mut group, &rt, &uri, "retry_only", retry_only());
    sequential(&mut group, &rt, &uri, "tracker+retry", retry.clone());
    sequential(
        &mut group,
        &rt,
        &uri,
        "tracker+retry+phase_timeout",
        tracker_retry_and_phase_timeout(),
    );
    group.finish();

    let mut group = c.benchmark_group("keepalive_get_x32");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("bare_hyper_util", |b| {
        b.to_async(&rt).iter(|| batch(bare.clone(), uri.clone()));
    });
    group.bench_function("tracker+phase_timeout", |b| {
        b.to_async(&rt).iter(|| batch(layered.clone(), uri.clone()));
    });
    group.bench_function("tracker+retry", |b| {
        b.to_async(&rt).iter(|| batch(retry.clone(), uri.clone()));
    });
    group.finish();
    drop(server);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
