//! Client construction cost: `reqwest::Client::new()` (OS roots loaded per
//! client), reqwest's builder with the shared rustls config
//! (`ClientBuilderExt::shared_tls`), hyper-util + SharedTlsConnector (after
//! the first lazy build of the shared config), hyper-util with no TLS (floor).
//!
//! `cargo bench --bench client_build`

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_conn_lifecycle::reqwest::ClientBuilderExt;
use tower_conn_lifecycle::tls::{shared_config, SharedTlsConnector};

fn client_build(c: &mut Criterion) {
    let config = shared_config().expect("a crypto provider (this crate's `ring` feature)");
    // With this crate's `reqwest-rustls` feature reqwest has rustls but no
    // crypto provider of its own: `Client::new()` needs a process default.
    // This installs the one the shared configuration uses.
    let _ = config.crypto_provider().as_ref().clone().install_default();
    let mut group = c.benchmark_group("client_build");

    group.bench_function("hyper_util_no_tls", |b| {
        b.iter(|| black_box(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>()))
    });
    group.bench_function("hyper_util_shared_tls", |b| {
        b.iter(|| {
            black_box(
                Client::builder(TokioExecutor::new())
                    .build::<_, Empty<Bytes>>(SharedTlsConnector::tcp()),
            )
        })
    });
    group.bench_function("reqwest_shared_tls", |b| {
        b.iter(|| {
            black_box(
                reqwest::Client::builder()
                    .shared_tls()
                    .unwrap()
                    .build()
                    .unwrap(),
            )
        })
    });
    // `Client::new()` loads the OS roots (reqwest's platform verifier):
    // milliseconds per iteration, so fewer samples.
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("reqwest_default", |b| {
        b.iter(|| black_box(reqwest::Client::new()))
    });
    group.finish();
}

criterion_group!(benches, client_build);
criterion_main!(benches);
