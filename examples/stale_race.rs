//! The stale keep-alive race: what fails, and what fixes it.
//!
//! ```sh
//! cargo run --release --example stale_race
//! cargo run --release --example stale_race -- --help
//! ```
//!
//! A local server closes keep-alive connections exactly `--idle-ms` after its
//! last response, like Go's `net/http` with `IdleTimeout` (scaled down from
//! 1 s to 200 ms). Ten tasks, each with its own client, send sequential
//! requests with gaps uniform in [0.99, 1.0) × idle (`--gap edge`), so every
//! reuse races the server's close; `--gap mixed` uses [0.1, 1.0). Three
//! clients run it, for GET and for POST:
//!
//! * `bare`: hyper-util's legacy client as it comes;
//! * `pool-idle`: hyper-util's own best setting, `pool_idle_timeout` at half
//!   the server's idle timeout with a pool timer — the fix an experienced
//!   user tries first;
//! * `layered`: this crate's whole stack (`tower_conn_lifecycle::client`):
//!   ConnectTimeout + tracker + SharedTlsConnector on the connector,
//!   IdleExpiry + PhaseTimeout + RetryOnStaleConnection on the client.
//!
//! `--target URL` runs against any HTTP/1.1 server instead (loopback or
//! your own); the layered client's expiry is then 90 s unless
//! `--expiry-ms` says otherwise, so it relies on `Keep-Alive` hints, what it
//! learns from the server's idle closes, and safe retries alone. Every run
//! also prints one `json:` line.

use std::io::IsTerminal;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_conn_lifecycle::client;
use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
use tower_conn_lifecycle::phase_timeout::PhaseTimeoutLayer;
use tower_conn_lifecycle::retry::Retried;
use tower_conn_lifecycle::testing::{IdleClosingServer, SeedReport, SeedWorkload};
use tower_conn_lifecycle::track::{TrackConnectionsLayer, TrackStats};

mod common;

#[derive(Clone, Debug)]
struct Args {
    idle: Duration,
    expiry: Option<Duration>,
    tasks: usize,
    requests: usize,
    gaps: Vec<bool>,
    methods: Vec<Method>,
    clients: Vec<&'static str>,
    target: Option<String>,
}

const USAGE: &str = "usage: stale_race [--idle-ms N] [--expiry-ms N] [--tasks N] [--requests N] \
[--gap edge|mixed] [--method GET|POST] [--client bare|pool-idle|layered|all] [--target URL]";

fn parse() -> Result<Args, String> {
    let mut a = Args {
        idle: Duration::from_millis(200),
        expiry: None,
        tasks: 10,
        requests: 100,
        gaps: vec![false, true],
        methods: vec![Method::GET, Method::POST],
        clients: vec!["bare", "pool-idle", "layered"],
        target: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = it.next().ok_or(format!("{flag} needs a value\n{USAGE}"))?;
        let ms = |v: &str| {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|e| format!("{flag}: {e}"))
        };
        let n = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--idle-ms" => a.idle = ms(&value)?,
            "--expiry-ms" => a.expiry = Some(ms(&value)?),
            "--tasks" => a.tasks = n(&value)?.clamp(1, 1000),
            "--requests" => a.requests = n(&value)?.clamp(1, 100_000),
            "--gap" => match value.as_str() {
                "edge" => a.gaps = vec![false],
                "mixed" => a.gaps = vec![true],
                v => return Err(format!("--gap edge|mixed, not {v}")),
            },
            "--method" => {
                a.methods = vec![match value.to_ascii_uppercase().as_str() {
                    "GET" => Method::GET,
                    "POST" => Method::POST,
                    v => return Err(format!("--method GET|POST, not {v}")),
                }]
            }
            "--client" => {
                a.clients = match value.as_str() {
                    "bare" => vec!["bare"],
                    "pool-idle" => vec!["pool-idle"],
                    "layered" => vec!["layered"],
                    "all" => vec!["bare", "pool-idle", "layered"],
                    v => return Err(format!("--client bare|pool-idle|layered|all, not {v}")),
                }
            }
            "--target" => {
                let uri: http::Uri = value.parse().map_err(|e| format!("--target: {e}"))?;
                if uri.scheme_str() != Some("http") || uri.host().is_none() {
                    return Err("--target must be an http:// URL".into());
                }
                a.target = Some(value);
            }
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(a)
}

/// One client kind's run: its report and the server-side counts.
struct Run {
    client: &'static str,
    mixed: bool,
    method: Method,
    report: SeedReport,
    connections: u64,
    posts_processed: Option<u64>,
}

async fn run(
    client_kind: &'static str,
    mixed: bool,
    method: Method,
    args: Args,
    url: String,
    server: Option<IdleClosingServer>,
) -> Run {
    let mut plan = SeedWorkload::new(args.idle)
        .tasks(args.tasks)
        .requests(args.requests)
        .method(method.clone())
        .time_limit(Duration::from_secs(100))
        .request_limit(Duration::from_secs(10));
    if mixed {
        plan = plan.gaps(0.1, 1.0);
    }
    let track = TrackConnectionsLayer::new();
    // Every client's connection counters (the bare clients share one
    // tracker; each one-call client has its own).
    let stats: std::sync::Mutex<Vec<TrackStats>> = Default::default();
    let report = match client_kind {
        "bare" | "pool-idle" => {
            stats.lock().unwrap().push(track.stats());
            plan.run(&url, |_| {
                let connector = ServiceBuilder::new()
                    .layer(track.clone())
                    .service(HttpConnector::new());
                let mut builder = Client::builder(TokioExecutor::new());
                if client_kind == "pool-idle" {
                    builder
                        .pool_idle_timeout(args.idle / 2)
                        .pool_timer(TokioTimer::new());
                }
                builder.build::<_, Full<Bytes>>(connector)
            })
            .await
        }
        _ => {
            let expiry = args.expiry.unwrap_or(match args.target {
                Some(_) => Duration::from_secs(90),
                None => args.idle.mul_f64(0.75),
            });
            // One expiry layer for all tasks: they learn together.
            let expiry = IdleExpiryLayer::new(expiry);
            let template = client::builder()
                .connect_timeout(Duration::from_secs(2))
                .idle_expiry(expiry)
                .timeouts(
                    PhaseTimeoutLayer::new()
                        .send(Duration::from_secs(5))
                        .read(Duration::from_secs(10)),
                );
            plan.run(&url, |_| {
                // Each task its own client (own pool and connection
                // counters, summed below).
                let client = template.clone().build::<Full<Bytes>>();
                stats.lock().unwrap().push(client.connection_stats());
                client
            })
            .await
        }
    };
    Run {
        client: client_kind,
        mixed,
        method,
        report,
        connections: stats
            .into_inner()
            .unwrap()
            .iter()
            .map(TrackStats::opened)
            .sum(),
        posts_processed: server.as_ref().map(IdleClosingServer::posts),
    }
}

fn retries(report: &SeedReport) -> usize {
    report
        .samples()
        .iter()
        .filter_map(|s| {
            s.outcome()
                .ok()?
                .extensions()
                .get::<Retried>()
                .map(Retried::count)
        })
        .sum()
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
}

#[tokio::main]
async fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    match &args.target {
        Some(t) => println!("target: {t}; gaps scaled to {:?}", args.idle),
        None => println!(
            "server: closes connections idle for {:?} (like Go's net/http IdleTimeout); \
             {} tasks x {} sequential requests per client",
            args.idle, args.tasks, args.requests
        ),
    }
    println!(
        "gaps: edge = uniform in [0.99, 1.0) x idle (every reuse races the close), \
         mixed = uniform in [0.1, 1.0) x idle"
    );
    let started = Instant::now();
    // Every client kind and method at once, each against its own server.
    let mut set = tokio::task::JoinSet::new();
    for &mixed in &args.gaps {
        for client_kind in &args.clients {
            for method in &args.methods {
                let (url, server) = match &args.target {
                    Some(t) => (t.clone(), None),
                    None => {
                        let server = IdleClosingServer::start(args.idle)
                            .await
                            .expect("bind 127.0.0.1");
                        (server.url(), Some(server))
                    }
                };
                set.spawn(run(
                    client_kind,
                    mixed,
                    method.clone(),
                    args.clone(),
                    url,
                    server,
                ));
            }
        }
    }
    let progress = std::io::stderr().is_terminal().then(|| {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                eprint!("\r  running... {:.0} s ", started.elapsed().as_secs_f64());
            }
        })
    });
    let mut runs = Vec::new();
    while let Some(r) = set.join_next().await {
        runs.push(r.expect("run"));
    }
    if let Some(p) = progress {
        p.abort();
        eprint!("\r{}\r", " ".repeat(30));
    }
    runs.sort_by_key(|r| {
        (
            r.mixed,
            args.clients.iter().position(|c| *c == r.client),
            r.method.to_string(),
        )
    });
    let mut rows = Vec::new();
    for r in &runs {
        let rep = &r.report;
        rows.push(vec![
            if r.mixed { "mixed" } else { "edge" }.to_owned(),
            r.client.to_owned(),
            r.method.to_string(),
            rep.requests().to_string(),
            rep.errors().to_string(),
            r.connections.to_string(),
            format!(
                "{:.0} %",
                100.0 * rep.reused() as f64 / rep.requests().max(1) as f64
            ),
            retries(rep).to_string(),
            match (r.method == Method::POST, r.posts_processed) {
                (true, Some(p)) => format!("{p} / {}", rep.successes()),
                (true, None) => format!("? / {}", rep.successes()),
                _ => "-".into(),
            },
            ms(rep.latency_quantile(0.5)),
            ms(rep.latency_quantile(0.99)),
        ]);
    }
    println!();
    common::table(
        &[
            "gaps",
            "client",
            "method",
            "requests",
            "errors",
            "connections",
            "reused",
            "retries",
            "POSTs processed / ok",
            "p50 ms",
            "p99 ms",
        ],
        &rows,
    );
    for r in &runs {
        println!(
            "json: {{\"gaps\":\"{}\",\"client\":\"{}\",\"method\":\"{}\",\"requests\":{},\"errors\":{},\"connections\":{},\"reused\":{},\"retries\":{}}}",
            if r.mixed { "mixed" } else { "edge" },
            r.client,
            r.method,
            r.report.requests(),
            r.report.errors(),
            r.connections,
            r.report.reused(),
            retries(&r.report)
        );
    }
    println!("\ndistinct errors:");
    let mut any = false;
    for r in &runs {
        for (chain, n) in r.report.error_chains() {
            any = true;
            let gaps = if r.mixed { "mixed" } else { "edge" };
            println!("  {gaps} {} {}: {n} x {chain}", r.client, r.method);
        }
    }
    if !any {
        println!("  (none)");
    }
    println!("\n{}", summary(&runs));
    println!("took {:.1} s", started.elapsed().as_secs_f64());
}

/// What happened, in words, from the numbers themselves.
fn summary(runs: &[Run]) -> String {
    let find = |c: &'static str| runs.iter().filter(move |r| r.client == c);
    let errors = |c: &'static str| find(c).map(|r| r.report.errors()).sum::<usize>();
    let reuse = |c: &'static str| {
        let (reused, total) = find(c).filter(|r| r.mixed).fold((0, 0), |(a, b), r| {
            (a + r.report.reused(), b + r.report.requests())
        });
        100.0 * reused as f64 / total.max(1) as f64
    };
    let duplicated: u64 = runs
        .iter()
        .filter(|r| r.method == Method::POST)
        .filter_map(|r| {
            r.posts_processed
                .map(|p| p.saturating_sub(r.report.successes() as u64))
        })
        .sum();
    let mut out = Vec::new();
    if find("bare").next().is_some() {
        out.push(if errors("bare") > 0 {
            format!(
                "The bare client lost {} requests to connections the server closed as they were reused.",
                errors("bare")
            )
        } else {
            "The bare client happened to lose no request in this run (the race is timing-dependent; rerun or use --gap edge).".to_owned()
        });
    }
    if find("pool-idle").next().is_some() {
        out.push(format!(
            "pool_idle_timeout at half the server's idle: {} errors, but only {:.0} % of requests reused a connection with mixed gaps.",
            errors("pool-idle"),
            reuse("pool-idle")
        ));
    }
    if find("layered").next().is_some() {
        out.push(format!(
            "The layered stack: {} errors, {:.0} % reused with mixed gaps (connections idle below the expiry are kept; with edge gaps every connection is past it, so none is reused), {} retries.",
            errors("layered"),
            reuse("layered"),
            find("layered").map(|r| retries(&r.report)).sum::<usize>()
        ));
    }
    if runs
        .iter()
        .any(|r| r.posts_processed.is_some() && r.method == Method::POST)
    {
        out.push(format!(
            "POSTs the server processed beyond the successes clients saw (lost replies, never duplicates from retries): {duplicated}."
        ));
    }
    out.join("\n")
}
