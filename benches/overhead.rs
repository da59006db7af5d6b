//! Overhead of the tracker + PhaseTimeout over a bare hyper-util client:
//! keep-alive GETs on loopback, both measured in the same run.
//!
//! `cargo bench --bench overhead`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_conn_lifecycle::phase_timeout::{PhaseTimeoutLayer, RequestBody};
use tower_conn_lifecycle::track::TrackConnectionsLayer;

/// Concurrent requests per iteration of the throughput benchmark.
const BATCH: usize = 32;

async fn server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                        b"hello world",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
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

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(server());
    let uri: http::Uri = format!("http://{addr}/").parse().unwrap();

    let bare = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(HttpConnector::new());
    let connector = ServiceBuilder::new()
        .layer(TrackConnectionsLayer::new())
        .service(HttpConnector::new());
    let inner =
        Client::builder(TokioExecutor::new()).build::<_, RequestBody<Empty<Bytes>>>(connector);
    let layered = ServiceBuilder::new()
        .layer(
            PhaseTimeoutLayer::new()
                .send(Duration::from_secs(5))
                .read(Duration::from_secs(5))
                .total(Duration::from_secs(10)),
        )
        .service(inner);

    let mut group = c.benchmark_group("keepalive_get");
    group.throughput(Throughput::Elements(1));
    group.bench_function("bare_hyper_util", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = bare.clone();
            let uri = uri.clone();
            async move { get(&mut svc, &uri).await }
        });
    });
    group.bench_function("tracker+phase_timeout", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = layered.clone();
            let uri = uri.clone();
            async move { get(&mut svc, &uri).await }
        });
    });
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
