//! How much does building an HTTP client cost?
//!
//! Builds clients five ways and prints a table: reqwest's default builder
//! (which, with reqwest's `rustls-tls-native-roots` feature as in this
//! crate's dev-dependencies, loads and parses the operating system's root
//! certificates for every client), reqwest with only the webpki roots
//! (copied from a static table for every client), reqwest given an
//! already built rustls configuration, hyper-util's client with
//! `SharedTlsConnector` (after the one lazy build of the shared
//! configuration) and hyper-util's client with no TLS at all (the floor).
//! Also prints the time of that first lazy build.
//!
//! ```text
//! cargo run --release --example client_build
//! ```
//!
//! reqwest's default builder costs milliseconds per client, so it is timed
//! over fewer clients and scaled to the same count (marked in the table).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_conn_lifecycle::tls::{shared_config, SharedTlsConnector};

/// Clients per row.
const CLIENTS: u32 = 10_000;
/// Clients actually built with reqwest's default builder (then scaled).
const REQWEST_DEFAULT_CLIENTS: u32 = 300;

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
    let config = shared_config();
    let first_build = start.elapsed();

    let reqwest_default = time(REQWEST_DEFAULT_CLIENTS, || {
        black_box(reqwest::Client::new());
    });
    let reqwest_webpki = time(CLIENTS, || {
        let client = reqwest::Client::builder()
            .tls_built_in_native_certs(false)
            .build()
            .expect("reqwest client");
        black_box(client);
    });
    let reqwest_preconfigured = time(CLIENTS, || {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*config).clone())
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
            measured: REQWEST_DEFAULT_CLIENTS,
            per_client: reqwest_default / REQWEST_DEFAULT_CLIENTS,
        },
        Row {
            name: "reqwest builder, webpki roots only",
            measured: CLIENTS,
            per_client: reqwest_webpki / CLIENTS,
        },
        Row {
            name: "reqwest + use_preconfigured_tls",
            measured: CLIENTS,
            per_client: reqwest_preconfigured / CLIENTS,
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
    let floor = no_tls / CLIENTS;

    println!("first lazy build of the shared rustls config: {first_build:?}");
    println!();
    println!(
        "{:<36} {:>20} {:>12} {:>10} {:>9}",
        "client construction",
        format!("{CLIENTS} clients"),
        "per client",
        "vs floor",
        "measured"
    );
    println!("{}", "-".repeat(91));
    for row in &rows {
        let total = row.per_client * CLIENTS;
        let scaled = if row.measured < CLIENTS {
            " (scaled)"
        } else {
            ""
        };
        println!(
            "{:<36} {:>20} {:>12} {:>9.1}x {:>9}",
            row.name,
            format!("{total:.2?}{scaled}"),
            format!("{:.3?}", row.per_client),
            row.per_client.as_secs_f64() / floor.as_secs_f64(),
            row.measured,
        );
    }
    println!();
    let shared = shared_tls.as_secs_f64() / f64::from(CLIENTS);
    let default = reqwest_default.as_secs_f64() / f64::from(REQWEST_DEFAULT_CLIENTS);
    println!(
        "SharedTlsConnector vs reqwest::Client::new(): {:.0}x faster (goal: >= 1000x)",
        default / shared
    );
    let webpki = reqwest_webpki.as_secs_f64() / f64::from(CLIENTS);
    println!(
        "SharedTlsConnector vs reqwest with webpki roots only: {:.0}x faster",
        webpki / shared
    );
    println!(
        "SharedTlsConnector vs no-TLS floor: {:.2}x (goal: <= 2x)",
        shared / floor.as_secs_f64()
    );
}
