//! `ConnectTimeoutLayer` inside reqwest, with a timeout that names its phase.
//!
//! ```sh
//! cargo run --release --example reqwest
//! ```
//!
//! reqwest's own `connect_timeout` fails with the same opaque "operation
//! timed out" as every other reqwest timeout. Put this crate's
//! `ConnectTimeoutLayer` in `ClientBuilder::connector_layer` instead and the
//! error chain carries an `Elapsed` whose `phase()` is `Connect`.
//!
//! The example connects to a local `Blackhole` (a port on 127.0.0.1 whose
//! connects never complete) and then to a local server that answers.

mod common;

use std::time::Duration;

use tower_conn_lifecycle::phase_timeout::{ConnectTimeoutLayer, Elapsed};
use tower_conn_lifecycle::testing::{Blackhole, HyperServer};

#[tokio::main]
async fn main() -> Result<(), tower_conn_lifecycle::BoxError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .connector_layer(ConnectTimeoutLayer::new(Duration::from_millis(500)))
        .build()?;

    let hole = Blackhole::start().await?;
    let started = tokio::time::Instant::now();
    match client.get(hole.url()).send().await {
        Ok(res) => println!("unexpected answer: {}", res.status()),
        Err(err) => {
            println!(
                "blackhole: failed after {} ms: {}",
                started.elapsed().as_millis(),
                common::chain(&err)
            );
            match Elapsed::find(&err) {
                Some(e) => println!("  -> phase={} limit={:?}", e.phase(), e.limit()),
                None => println!("  -> not a phase timeout"),
            }
        }
    }

    let server = HyperServer::start().await?;
    let res = client.post(server.url()).body("hello").send().await?;
    println!(
        "server: {} {:?}, body bytes counted by the server: {}",
        res.status(),
        res.version(),
        res.text().await?
    );
    Ok(())
}
