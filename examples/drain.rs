//! Graceful shutdown with the one-call client: what to put in a SIGTERM
//! handler.
//!
//! Starts two local servers (a slow one that answers in about 300 ms, and
//! one that never answers), puts 20 requests in flight on the slow one and
//! 3 on the silent one, then "receives SIGTERM" (a timer here, so the
//! example stops by itself) and drains the client with a 1 s deadline:
//! the 20 finish, the 3 are cut at the deadline, a request issued during
//! the drain is refused at once, and the report says so.
//!
//! ```text
//! cargo run --release --example drain
//! ```

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tower::ServiceExt;
use tower_conn_lifecycle::drain::{DrainCut, Draining};
use tower_conn_lifecycle::testing::{SilentServer, SlowBodyServer};
use tower_conn_lifecycle::{client, error_chain, find_cause};

type Body = Empty<Bytes>;

async fn get(client: client::Client<Body>, url: String) -> Result<usize, String> {
    let req = http::Request::get(url).body(Body::new()).unwrap();
    let response = client.oneshot(req).await.map_err(|e| describe(&*e))?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| describe(&*e))?;
    Ok(body.to_bytes().len())
}

fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    if find_cause::<Draining>(err).is_some() {
        format!("refused (draining; nothing written): {}", error_chain(err))
    } else if find_cause::<DrainCut>(err).is_some() {
        format!("cut at the deadline: {}", error_chain(err))
    } else {
        format!("failed: {}", error_chain(err))
    }
}

#[tokio::main]
async fn main() {
    // Three 1-byte chunks, 100 ms apart: about 300 ms per response.
    let slow = SlowBodyServer::start(3, 1, Duration::from_millis(100))
        .await
        .unwrap();
    let silent = SilentServer::start().await.unwrap();
    let client = client::builder()
        .connect_timeout(Duration::from_secs(1))
        .build::<Body>();

    // The application at work: requests in flight on clones of the client.
    let mut work = Vec::new();
    for _ in 0..20 {
        work.push(tokio::spawn(get(client.clone(), slow.url())));
    }
    for _ in 0..3 {
        work.push(tokio::spawn(get(client.clone(), silent.url())));
    }

    // In a service, wait for the signal instead:
    //
    //     tokio::signal::ctrl_c().await?;            // SIGINT, or
    //     let mut term = tokio::signal::unix::signal(
    //         tokio::signal::unix::SignalKind::terminate())?;
    //     term.recv().await;                          // SIGTERM
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("shutting down: draining the client (deadline 1 s)");

    // The drain starts here; awaiting it waits for the requests in flight.
    let drain = client.drain(Duration::from_secs(1));
    // A request issued now is refused at once: send it elsewhere.
    println!(
        "a new request: {}",
        get(client.clone(), slow.url()).await.unwrap_err()
    );
    let report = drain.await;
    println!("{report}");

    let (mut ok, mut failed) = (0, Vec::new());
    for task in work {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => failed.push(e),
        }
    }
    println!("{ok} requests completed");
    for e in failed {
        println!("  {e}");
    }
    println!(
        "server side: {} responses completed; connections still open: {:?}",
        slow.responses(),
        report.connections_still_open()
    );
}
