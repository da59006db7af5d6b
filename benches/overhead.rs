//! Wall-clock overhead of each layered client over a bare hyper-util client,
//! interleaved so that machine drift (frequency, other processes, thermal)
//! hits both sides equally.
//!
//! ```sh
//! cargo bench --bench overhead             # every variant
//! cargo bench --bench overhead -- full     # only the named variants
//! ```
//!
//! For each layered variant and scenario, `ROUNDS` rounds each time one
//! batch on the bare client and one on the layered client, alternating
//! which goes first. A batch is `SEQUENTIAL` keep-alive requests one after
//! the other, or `CONCURRENT_BATCHES` × `CONCURRENCY` requests at once (a
//! `JoinSet`). Client and server share one current-thread runtime, so a
//! batch's time is the CPU the whole exchange costs. The table gives the
//! median time per request of each side and the median over rounds of
//! `bare time / layered time`: the throughput of the layered client relative
//! to bare (1.000 = the same, 0.970 = 3 % fewer requests per second), with
//! the middle half of the per-round ratios as a noise gauge. The last
//! column counts minor page faults per 1 000 requests of each side (Linux,
//! `/proc/self/stat`): memory the allocator gave back to the kernel and
//! touched again, which costs wall clock no instruction count shows.
//!
//! One run measures one address-space layout (the kernel randomises where
//! code, heap and stacks go, and with them which cache lines collide): on
//! the README's "This VM" the ratios of one binary move by about ±3 points
//! from run to run, and by under 1 with randomisation off (`setarch -R`),
//! which fixes one layout per binary. Compare two builds over several runs
//! of each, alternated, with randomisation on.
//!
//! `cargo bench --bench overhead -- --runs 5 [NAMES]` does that sampling
//! itself: it runs the bench as five child processes, one after another
//! (each a fresh layout), and prints for each row the mean over the runs
//! of their median ratios, with the runs' lowest and highest.

mod common;

use std::time::{Duration, Instant};

use tower_conn_lifecycle::testing::HyperServer;

use common::{with_client, Get, HttpClient, Post64k, Variant, Workload, VARIANTS};

const ROUNDS: usize = 100;
const SEQUENTIAL: usize = 200;
const CONCURRENCY: usize = 32;
const CONCURRENT_BATCHES: usize = 16;

#[derive(Clone, Copy)]
enum Mode {
    Sequential,
    Concurrent,
}

impl Mode {
    fn requests(self) -> usize {
        match self {
            Mode::Sequential => SEQUENTIAL,
            Mode::Concurrent => CONCURRENCY * CONCURRENT_BATCHES,
        }
    }

    /// Requests in flight at once (batches of it, one after another).
    fn concurrency(self) -> usize {
        match self {
            Mode::Sequential => 1,
            Mode::Concurrent => CONCURRENCY,
        }
    }
}

/// Minor page faults of this process so far (Linux: field 10 of
/// `/proc/self/stat`, the seventh after the command name); `None` elsewhere.
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, fields) = stat.rsplit_once(')')?;
    fields.split_whitespace().nth(7)?.parse().ok()
}

/// One timed batch; returns the time per request and the minor page faults
/// during the batch (read outside the timed part).
async fn batch<W, S>(svc: &mut S, w: W, uri: &http::Uri, mode: Mode) -> (Duration, Option<u64>)
where
    W: Workload,
    S: HttpClient<W::Body, Future: Send>,
{
    let faults = minor_faults();
    let start = Instant::now();
    common::run(svc, w, uri, mode.requests(), mode.concurrency()).await;
    let time = start.elapsed() / mode.requests() as u32;
    (
        time,
        minor_faults()
            .zip(faults)
            .map(|(after, before)| after - before),
    )
}

/// Faults per 1 000 requests over `rounds` batches of `mode`.
fn per_k(faults: Option<u64>, mode: Mode) -> String {
    faults.map_or_else(
        || "–".to_owned(),
        |f| {
            format!(
                "{:.0}",
                f as f64 * 1000.0 / (ROUNDS * mode.requests()) as f64
            )
        },
    )
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Interleaved rounds of `bare` and `layered`; prints one table row.
async fn compare<W, A, L>(
    name: &str,
    scenario: &str,
    mut bare: A,
    mut layered: L,
    w: W,
    uri: &http::Uri,
    mode: Mode,
) where
    W: Workload,
    A: HttpClient<W::Body, Future: Send>,
    L: HttpClient<W::Body, Future: Send>,
{
    // Warm up both: connections, pool entries, timers.
    batch(&mut bare, w, uri, mode).await;
    batch(&mut layered, w, uri, mode).await;
    let (mut b, mut l, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let (mut fb, mut fl) = (Some(0), Some(0));
    for round in 0..ROUNDS {
        let ((tb, faults_b), (tl, faults_l)) = if round % 2 == 0 {
            let tb = batch(&mut bare, w, uri, mode).await;
            (tb, batch(&mut layered, w, uri, mode).await)
        } else {
            let tl = batch(&mut layered, w, uri, mode).await;
            (batch(&mut bare, w, uri, mode).await, tl)
        };
        fb = fb.zip(faults_b).map(|(a, b)| a + b);
        fl = fl.zip(faults_l).map(|(a, b)| a + b);
        b.push(tb.as_secs_f64() * 1e6);
        l.push(tl.as_secs_f64() * 1e6);
        ratio.push(tb.as_secs_f64() / tl.as_secs_f64());
    }
    let (b, l, ratio) = (sorted(b), sorted(l), sorted(ratio));
    println!(
        "| {scenario} | {name} | {:.1} | {:.1} | {:.3} | {:.3}–{:.3} | {} / {} |",
        quantile(&b, 0.5),
        quantile(&l, 0.5),
        quantile(&ratio, 0.5),
        quantile(&ratio, 0.25),
        quantile(&ratio, 0.75),
        per_k(fb, mode),
        per_k(fl, mode),
    );
}

/// `--runs N`: the number of child processes to sample layouts with.
fn runs() -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == "--runs")?;
    args.get(i + 1)?.parse().ok().filter(|n| *n > 0)
}

/// A row of [`sample_layouts`]: (scenario, client), in first-seen order,
/// with each run's bare µs, layered µs and ratio.
type Sampled = ((String, String), Vec<[f64; 3]>);

/// Runs the bench `n` times as child processes and prints, per row, the
/// mean of the runs' median ratios and their range.
fn sample_layouts(n: usize) {
    let exe = std::env::current_exe().expect("the bench's own path");
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--runs") {
        args.drain(i..(i + 2).min(args.len()));
    }
    let mut rows: Vec<Sampled> = Vec::new();
    for run in 0..n {
        let out = std::process::Command::new(&exe)
            .args(&args)
            .output()
            .expect("a child run of the bench");
        assert!(out.status.success(), "child run {run} failed");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // "| scenario | client | bare | layered | ratio | q1–q3 | faults |"
            let [_, scenario, client, bare, layered, ratio, ..] = cells[..] else {
                continue;
            };
            let (Ok(bare), Ok(layered), Ok(ratio)) = (
                bare.parse::<f64>(),
                layered.parse::<f64>(),
                ratio.parse::<f64>(),
            ) else {
                continue;
            };
            let key = (scenario.to_string(), client.to_string());
            match rows.iter_mut().find(|(k, _)| *k == key) {
                Some((_, values)) => values.push([bare, layered, ratio]),
                None => rows.push((key, vec![[bare, layered, ratio]])),
            }
        }
    }
    println!(
        "Wall clock per request over {n} runs of this bench (each its own process, so its \
         own address-space layout): the means of the runs' medians, and the runs' range \
         of the ratio.\n"
    );
    println!(
        "| scenario | client | bare µs | layered µs | throughput vs bare (mean) | runs' range |"
    );
    println!("|---|---|--:|--:|--:|--:|");
    for ((scenario, client), values) in rows {
        let mean = |i: usize| values.iter().map(|v| v[i]).sum::<f64>() / values.len() as f64;
        let ratios = sorted(values.iter().map(|v| v[2]).collect());
        println!(
            "| {scenario} | {client} | {:.1} | {:.1} | {:.3} | {:.3}–{:.3} |",
            mean(0),
            mean(1),
            mean(2),
            ratios[0],
            ratios[ratios.len() - 1],
        );
    }
}

fn main() {
    if let Some(n) = runs() {
        sample_layouts(n);
        return;
    }
    if std::env::args().any(|a| a == "--runs") {
        eprintln!("--runs takes a number of runs, 1 or more: `-- --runs 5 [NAMES]`");
        std::process::exit(2);
    }
    // Variant names on the command line restrict the run (cargo's own
    // `--bench` flag is ignored).
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let variants: Vec<Variant> = VARIANTS
        .iter()
        .copied()
        .filter(|v| *v != Variant::Bare)
        .filter(|v| only.is_empty() || only.iter().any(|o| o == v.name()))
        .collect();
    let started = Instant::now();
    common::runtime().block_on(async {
        let server = HyperServer::start().await.unwrap();
        let uri: http::Uri = server.url().parse().unwrap();
        println!(
            "Wall clock per request, bare vs layered interleaved: {ROUNDS} rounds, \
             {SEQUENTIAL} sequential or {CONCURRENT_BATCHES} x {CONCURRENCY} concurrent \
             requests per batch; client and server on one current-thread runtime.\n"
        );
        println!(
            "| scenario | client | bare µs | layered µs | throughput vs bare | middle half \
             | page faults / 1k requests (bare / layered) |"
        );
        println!("|---|---|--:|--:|--:|--:|--:|");
        macro_rules! scenario {
            ($label:expr, $w:ident, $mode:expr) => {
                for &variant in &variants {
                    with_client!(variant, <$w as Workload>::Body, |layered| {
                        compare(
                            variant.name(),
                            $label,
                            common::bare::<<$w as Workload>::Body>(),
                            layered,
                            $w,
                            &uri,
                            $mode,
                        )
                        .await
                    })
                }
            };
        }
        scenario!("GET", Get, Mode::Sequential);
        scenario!("GET x32", Get, Mode::Concurrent);
        scenario!("POST 64 KiB", Post64k, Mode::Sequential);
    });
    println!("\n(took {:.0} s)", started.elapsed().as_secs_f64());
}
