//! How much does building an HTTP client cost?
//!
//! Builds clients four ways and prints what each costs:
//!
//! * `reqwest::Client::new()`: reqwest builds a rustls configuration for
//!   every client, with a platform verifier that loads and parses the
//!   operating system's root certificates each time;
//! * reqwest's builder given the shared rustls configuration
//!   (`ClientBuilderExt::shared_tls`, reqwest's `tls_backend_preconfigured`);
//! * hyper-util's client with `SharedTlsConnector`;
//! * hyper-util's client with no TLS at all (the floor).
//!
//! The shared configuration is built once, before the timed rows; that
//! first lazy build is printed too.
//!
//! ```text
//! cargo run --release --example client_build
//! ```
//!
//! `reqwest::Client::new()` costs milliseconds per client, so it is timed
//! over fewer clients and scaled to the same count (marked in the table).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_conn_lifecycle::reqwest::ClientBuilderExt;
use tower_conn_lifecycle::tls::{shared_config, SharedTlsConnector};

/// Clients per row.
const CLIENTS: u32 = 10_000;
/// Clients actually built with `reqwest::Client::new()` (then scaled).
const REQWEST_NEW_CLIENTS: u32 = 300;

fn time(n: u32, mut build: impl FnMut()) -> Duration {
    // Warm up (allocator, caches), then measure.
    for _ in 0..n.min(100) {
        build();
    }
    let start = Instant::now();
    for _ in 0..n {
        build();
    }
    start.elapsed()
}

struct Row {
    name: &'static str,
    measured: u32,
    per_client: Duration,
}

fn main() {
    // The first use builds the shared configuration (loads the roots).
    let start = Instant::now();
    let config = shared_config().expect("a crypto provider (this crate's `ring` feature)");
    let first_build = start.elapsed();
    // With this crate's `reqwest-rustls` feature reqwest has rustls but no
    // crypto provider of its own: `Client::new()` needs a process default.
    // This installs the one the shared configuration uses.
    let _ = config.crypto_provider().as_ref().clone().install_default();

    let reqwest_new = time(REQWEST_NEW_CLIENTS, || {
        black_box(reqwest::Client::new());
    });
    let reqwest_shared = time(CLIENTS, || {
        let client = reqwest::Client::builder()
            .shared_tls()
            .expect("the shared configuration")
            .build()
            .expect("reqwest client");
        black_box(client);
    });
    let shared_tls = time(CLIENTS, || {
        let client = Client::builder(TokioExecutor::new())
            .build::<_, Empty<Bytes>>(SharedTlsConnector::tcp());
        black_box(client);
    });
    let no_tls = time(CLIENTS, || {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        black_box(client);
    });

    let rows = [
        Row {
            name: "reqwest::Client::new() (OS roots)",
            measured: REQWEST_NEW_CLIENTS,
            per_client: reqwest_new / REQWEST_NEW_CLIENTS,
        },
        Row {
            name: "reqwest builder + shared_tls()",
            measured: CLIENTS,
            per_client: reqwest_shared / CLIENTS,
        },
        Row {
            name: "hyper-util + SharedTlsConnector",
            measured: CLIENTS,
            per_client: shared_tls / CLIENTS,
        },
        Row {
            name: "hyper-util, no TLS (floor)",
            measured: CLIENTS,
            per_client: no_tls / CLIENTS,
        },
    ];
    let floor = (no_tls / CLIENTS).as_secs_f64();
    let new = (reqwest_new / REQWEST_NEW_CLIENTS).as_secs_f64();

    println!("first lazy build of the shared rustls config: {first_build:?}");
    println!();
    println!(
        "{:<36} {:>20} {:>12} {:>10} {:>14} {:>9}",
        "client construction",
        format!("{CLIENTS} clients"),
        "per client",
        "vs floor",
        "new() / row",
        "measured"
    );
    println!("{}", "-".repeat(106));
    for row in &rows {
        let total = row.per_client * CLIENTS;
        let scaled = if row.measured < CLIENTS {
            " (scaled)"
        } else {
            ""
        };
        let per_client = row.per_client.as_secs_f64();
        println!(
            "{:<36} {:>20} {:>12} {:>9.1}x {:>13.0}x {:>9}",
            row.name,
            format!("{total:.2?}{scaled}"),
            format!("{:.3?}", row.per_client),
            per_client / floor,
            new / per_client,
            row.measured,
        );
    }
}
