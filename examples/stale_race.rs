//! The stale keep-alive race, measured.
//!
//! ```sh
//! cargo run --release --example stale_race
//! ```
//!
//! A local server closes keep-alive connections exactly `IDLE` after its last
//! response, like Go's `net/http` with `IdleTimeout`. Ten tasks, each with
//! its own client, send sequential requests with gaps uniform in
//! [0.99, 1.0) × `IDLE`: every request races the server's close. The table
//! shows what a bare hyper-util client does: how many requests fail, how
//! many connections it opened and reused, and the distinct errors.
//!
//! The tracker on the connector only observes (it counts connections and
//! gives `ConnectionInfo`); it does not change the client's behaviour.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_conn_lifecycle::testing::IdleClosingServer;
use tower_conn_lifecycle::track::{ConnectionInfo, TrackConnectionsLayer};

/// The server's idle timeout, scaled down from Go's 1 s so the run is short.
const IDLE: Duration = Duration::from_millis(200);
const TASKS: usize = 10;
const REQUESTS_PER_TASK: usize = 100;
/// Stop early if a run somehow takes this long.
const TIME_LIMIT: Duration = Duration::from_secs(90);

#[derive(Default)]
struct Tally {
    requests: u64,
    ok: u64,
    reused: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.reused += other.reused;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

async fn run_task(
    url: http::Uri,
    seed: u64,
    track: TrackConnectionsLayer,
    stop_at: Instant,
) -> Tally {
    let connector = ServiceBuilder::new()
        .layer(track)
        .service(HttpConnector::new());
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let mut rng = common::Rng::new(seed);
    let mut tally = Tally::default();
    for i in 0..REQUESTS_PER_TASK {
        if Instant::now() >= stop_at {
            break;
        }
        if i > 0 {
            tokio::time::sleep(IDLE.mul_f64(0.99 + 0.01 * rng.unit())).await;
        }
        tally.requests += 1;
        let result = async {
            let res = client.get(url.clone()).await?;
            let info = ConnectionInfo::of(&res);
            res.into_body().collect().await?;
            Ok::<_, tower_conn_lifecycle::BoxError>(info)
        }
        .await;
        match result {
            Ok(info) => {
                tally.ok += 1;
                if info.is_some_and(|i| i.is_reused()) {
                    tally.reused += 1;
                }
            }
            Err(e) => *tally.errors.entry(common::chain(e.as_ref())).or_default() += 1,
        }
    }
    tally
}

#[tokio::main]
async fn main() -> Result<(), tower_conn_lifecycle::BoxError> {
    let server = IdleClosingServer::start(IDLE).await?;
    let url: http::Uri = server.url().parse()?;
    println!(
        "server: closes connections idle for {IDLE:?}; {TASKS} tasks x {REQUESTS_PER_TASK} \
         sequential GETs, gaps uniform in [0.99, 1.0) x {IDLE:?}\n"
    );
    let track = TrackConnectionsLayer::new();
    let stats = track.stats();
    let start = Instant::now();
    let stop_at = start + TIME_LIMIT;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        tasks.spawn(run_task(url.clone(), t as u64 + 1, track.clone(), stop_at));
    }
    let mut tally = Tally::default();
    while let Some(t) = tasks.join_next().await {
        tally.merge(t?);
    }
    let errors: u64 = tally.errors.values().sum();
    common::table(
        &[
            "client",
            "requests",
            "errors",
            "error rate",
            "connections opened",
            "reused",
            "server connections",
            "server idle closes",
        ],
        &[vec![
            "hyper-util (bare)".into(),
            tally.requests.to_string(),
            errors.to_string(),
            format!(
                "{:.1} %",
                100.0 * errors as f64 / tally.requests.max(1) as f64
            ),
            stats.opened().to_string(),
            tally.reused.to_string(),
            server.connections().to_string(),
            server.idle_closes().to_string(),
        ]],
    );
    println!("\ndistinct errors:");
    if tally.errors.is_empty() {
        println!("  (none)");
    }
    for (chain, n) in &tally.errors {
        println!("  {n:>5} x {chain}");
    }
    println!("\ntook {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
