//! Overhead of the tracker + PhaseTimeout over a bare hyper-util client:
//! keep-alive GETs on loopback, both measured in the same run.
//!
//! `cargo bench --bench overhead`

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_conn_lifecycle::phase_timeout::{PhaseTimeoutLayer, RequestBody};
use tower_conn_lifecycle::testing::HyperServer;
use tower_conn_lifecycle::track::TrackConnectionsLayer;

/// Concurrent requests per iteration of the throughput benchmark.
const BATCH: usize = 32;

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

fn bench(c: &mut Criterion) {
    // One thread for client and server: the numbers are CPU per exchange,
    // not scheduling noise between cores.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(HyperServer::start()).unwrap();
    let uri: http::Uri = server.url().parse().unwrap();

    let phases = PhaseTimeoutLayer::new()
        .send(Duration::from_secs(5))
        .read(Duration::from_secs(5))
        .total(Duration::from_secs(10));
    let tracked = || {
        ServiceBuilder::new()
            .layer(TrackConnectionsLayer::new())
            .service(HttpConnector::new())
    };
    let bare = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(HttpConnector::new());
    let tracker_only = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(tracked());
    let phases_only = ServiceBuilder::new().layer(phases).service(
        Client::builder(TokioExecutor::new())
            .build::<_, RequestBody<Empty<Bytes>>>(HttpConnector::new()),
    );
    let layered = ServiceBuilder::new().layer(phases).service(
        Client::builder(TokioExecutor::new()).build::<_, RequestBody<Empty<Bytes>>>(tracked()),
    );

    let mut group = c.benchmark_group("keepalive_get");
    group.throughput(Throughput::Elements(1));
    sequential(&mut group, &rt, &uri, "bare_hyper_util", bare.clone());
    sequential(&mut group, &rt, &uri, "tracker_only", tracker_only);
    sequential(&mut group, &rt, &uri, "phase_timeout_only", phases_only);
    sequential(
        &mut group,
        &rt,
        &uri,
        "tracker+phase_timeout",
        layered.clone(),
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
    group.finish();
    drop(server);
}

fn sequential<S, B>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    uri: &http::Uri,
    name: &str,
    svc: S,
) where
    S: Service<http::Request<Empty<Bytes>>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            let mut svc = svc.clone();
            let uri = uri.clone();
            async move { get(&mut svc, &uri).await }
        });
    });
}

async fn batch<S, B>(svc: S, uri: http::Uri)
where
    S: Service<http::Request<Empty<Bytes>>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
    B: http_body::Body + Send,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..BATCH {
        let mut svc = svc.clone();
        let uri = uri.clone();
        set.spawn(async move { get(&mut svc, &uri).await });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
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
