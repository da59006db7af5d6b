//! This crate's layers with a `reqwest::Client`.
//!
//! ```sh
//! cargo run --release --example reqwest
//! ```
//!
//! 1. `ConnectTimeoutLayer` in `ClientBuilder::connector_layer`: a connect
//!    deadline of its own whose error is still `is_timeout()` for reqwest,
//!    and names its phase.
//! 2. The shared rustls configuration in reqwest's builder (`shared_tls()`):
//!    building the client loads no certificates.
//! 3. `ReqwestService`: the client as a tower service, so `PhaseTimeout`
//!    can bound an upload by its progress (a `send` stall limit), which
//!    reqwest's own timeouts cannot express.
//!
//! Every server here is local (127.0.0.1): a `Blackhole` whose connects
//! never complete, a server that stops reading uploads, and one that
//! answers.
//!
//! What reqwest cannot get: its connection IO is sealed, so there is no
//! connection tracker and no `IdleExpiry` under it. Keep reqwest's
//! `pool_idle_timeout` below the server's idle timeout, and retry stale
//! connections from error chains (see the `reqwest` module docs).

mod common;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_conn_lifecycle::connect_timeout::ConnectTimeoutLayer;
use tower_conn_lifecycle::find_cause;
use tower_conn_lifecycle::phase_timeout::{Elapsed, PhaseTimeoutLayer};
use tower_conn_lifecycle::reqwest::{ClientBuilderExt, ReqwestService};
use tower_conn_lifecycle::testing::{Blackhole, HyperServer, StopReadingServer};

const MB: usize = 1 << 20;

#[tokio::main]
async fn main() -> Result<(), tower_conn_lifecycle::BoxError> {
    let started = std::time::Instant::now();
    let client = reqwest::Client::builder()
        .no_proxy()
        .shared_tls()?
        .connector_layer(ConnectTimeoutLayer::new(Duration::from_millis(500)))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()?;
    println!(
        "built a reqwest client with the shared TLS config in {:?}",
        started.elapsed()
    );

    // 1. A connect that never completes.
    let hole = Blackhole::start().await?;
    let started = tokio::time::Instant::now();
    match client.get(hole.url()).send().await {
        Ok(res) => println!("blackhole: unexpected answer {}", res.status()),
        Err(err) => {
            println!(
                "blackhole: failed after {} ms: {}",
                started.elapsed().as_millis(),
                tower_conn_lifecycle::error_chain(&err)
            );
            println!(
                "  is_timeout()={} is_connect()={}",
                err.is_timeout(),
                err.is_connect()
            );
            match find_cause::<Elapsed>(&err) {
                Some(e) => println!("  phase={} limit={:?}", e.phase(), e.limit()),
                None => println!("  not a phase timeout"),
            }
        }
    }

    // 3. The same client as a tower service, under PhaseTimeout.
    let svc = PhaseTimeoutLayer::new()
        .send(Duration::from_millis(500))
        .read(Duration::from_secs(5))
        .layer(ReqwestService::new(client));

    let stops = StopReadingServer::start(MB as u64).await?;
    let upload = Full::new(Bytes::from(vec![b'u'; 64 * MB]));
    let req = http::Request::post(stops.url()).body(upload.clone())?;
    let started = tokio::time::Instant::now();
    match svc.clone().oneshot(req).await {
        Ok(res) => println!("stalled upload: unexpected answer {}", res.status()),
        Err(err) => {
            println!(
                "stalled upload: failed after {} ms: {err}",
                started.elapsed().as_millis()
            );
            println!("  the server read {} bytes", stops.bytes_read());
        }
    }

    let server = HyperServer::start().await?;
    let req = http::Request::post(server.url()).body(upload)?;
    let started = tokio::time::Instant::now();
    let res = svc.oneshot(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    println!(
        "moving upload: {status} after {} ms, the server counted {} bytes",
        started.elapsed().as_millis(),
        String::from_utf8_lossy(&body)
    );
    Ok(())
}
