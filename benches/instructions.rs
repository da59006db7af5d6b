//! Instructions and heap allocations per request, for every client variant
//! and workload: deterministic on a noisy machine (the same binary and inputs
//! give the same counts whatever else the machine is doing).
//!
//! ```sh
//! # needs valgrind (Debian/Ubuntu: apt-get install valgrind)
//! cargo bench --bench instructions
//! ```
//!
//! Each row runs this binary as a child three times, on one current-thread
//! runtime with the kit's `HyperServer` (client and server both count; the
//! server's share is the same in every row):
//!
//! * natively once, `LONG` requests after a warm-up, counting heap
//!   allocations with `stats_alloc` (the child prints the count);
//! * twice under `valgrind --tool=callgrind`, with `SHORT` and `LONG`
//!   requests after the same warm-up. The difference divided by
//!   `LONG - SHORT` is the instruction cost per request with start-up and
//!   warm-up cancelled out. The same difference of the whole exchange's
//!   calls to `clock_gettime` is its clock reads per request: each costs
//!   far more wall-clock time than the few instructions counted for it.
//!
//! After `full` comes a row of `full` with a tracing subscriber
//! installed that is enabled for INFO and above and discards everything:
//! the layers' `debug!` events (on timeout, expiry and retry paths only) are
//! then disabled but a dispatcher exists, which shows what disabled events
//! cost. Without valgrind it says how to install it and exits successfully.
//!
//! The workloads: `get`, `post64k` (see `common`), and `get_x32`, the
//! same `GET` 32 at a time (each request a task with a clone of the client,
//! as in the `overhead` bench's `GET x32`), where the one-call client's
//! wall clock trails most.
//!
//! `cargo bench --bench instructions -- idle_expiry` runs only `bare` (the
//! baseline) and the named variants' rows.
//!
//! `cargo bench --bench instructions -- --cache` adds the whole exchange's
//! first-level cache misses per request (callgrind's cache simulation:
//! instruction and data misses, reads and writes), a count as repeatable
//! as the instructions that tracks wall clock better on machines where
//! each request's kernel work flushes the caches (see `cache()`).
//!
//! `cargo bench --bench instructions -- --keep` keeps the callgrind profiles
//! (paths on stderr): `callgrind_annotate --inclusive=yes FILE` shows where a
//! layer's instructions go (compare a `LONG` profile with bare's).
//!
//! `cargo bench --bench instructions -- --child --variant NAME --workload
//! get|post64k|get_x32 --requests N [--info-subscriber]` runs one child natively and
//! prints its allocation count.

mod common;

use std::process::{Command, Stdio};

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tower_conn_lifecycle::testing::HyperServer;

use common::{with_client, Get, Post64k, Variant, Workload, VARIANTS};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const SHORT: usize = 500;
const LONG: usize = 2500;

/// One row: a variant, maybe with the INFO-level subscriber.
#[derive(Clone, Copy)]
struct Row {
    variant: Variant,
    info_subscriber: bool,
}

impl Row {
    fn label(self) -> String {
        if self.info_subscriber {
            format!("{} + INFO subscriber", self.variant.name())
        } else {
            self.variant.name().to_string()
        }
    }

    fn args(self, workload: &str, requests: usize) -> Vec<String> {
        let mut args = vec![
            "--child".to_string(),
            "--variant".to_string(),
            self.variant.name().to_string(),
            "--workload".to_string(),
            workload.to_string(),
            "--requests".to_string(),
            requests.to_string(),
        ];
        if self.info_subscriber {
            args.push("--info-subscriber".to_string());
        }
        args
    }
}

/// Every row, or (when names are given on the command line, e.g. `cargo
/// bench --bench instructions -- idle_expiry`) `bare` and the named
/// variants' rows.
fn rows() -> Vec<Row> {
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let mut rows = Vec::new();
    for &variant in VARIANTS {
        if !names.is_empty()
            && variant != Variant::Bare
            && !names.iter().any(|n| n == variant.name())
        {
            continue;
        }
        rows.push(Row {
            variant,
            info_subscriber: false,
        });
        if variant == Variant::Full {
            rows.push(Row {
                variant,
                info_subscriber: true,
            });
        }
    }
    rows
}

/// A subscriber enabled for INFO and above that discards everything: what
/// an application logging at INFO has installed.
struct InfoOnly;

impl tracing::Subscriber for InfoOnly {
    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if self.enabled(metadata) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::INFO
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::INFO)
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, _: &tracing::Event<'_>) {}

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).map(String::as_str)
}

/// The `get` workload 32 at a time: each request a task of its own with a
/// clone of the client (the bench's spawn and clone are in every row), as
/// `overhead`'s `GET x32`.
const GET_X32: &str = "get_x32";

/// How many requests of `workload` are in flight at once.
fn concurrency_of(workload: &str) -> usize {
    if workload == GET_X32 {
        32
    } else {
        1
    }
}

/// The child: warm up, then `requests` requests; prints the allocations
/// counted during those.
fn child(args: &[String]) {
    let variant = arg(args, "--variant")
        .and_then(Variant::parse)
        .expect("--variant NAME");
    let workload = arg(args, "--workload").unwrap_or(Get::NAME);
    let concurrency = concurrency_of(workload);
    let requests: usize = arg(args, "--requests")
        .and_then(|n| n.parse().ok())
        .unwrap_or(SHORT);
    if args.iter().any(|a| a == "--info-subscriber") {
        tracing::subscriber::set_global_default(InfoOnly).unwrap();
    }
    // `--server-thread`: the server on a thread and runtime of its own, so
    // that callgrind (`--separate-threads=yes`) counts the client alone on
    // the main thread.
    let (stop, server_thread, url) = if args.iter().any(|a| a == "--server-thread") {
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            common::runtime().block_on(async {
                let server = HyperServer::start().await.unwrap();
                url_tx.send(server.url()).unwrap();
                let _ = stop_rx.await;
            })
        });
        let url = url_rx.recv().unwrap();
        (Some(stop_tx), Some(thread), Some(url))
    } else {
        (None, None, None)
    };
    let (allocations, future_size) = common::runtime().block_on(async {
        let server = match url {
            Some(_) => None,
            None => Some(HyperServer::start().await.unwrap()),
        };
        let url = url.unwrap_or_else(|| server.as_ref().unwrap().url());
        let uri: http::Uri = url.parse().unwrap();
        macro_rules! go {
            ($w:ident) => {
                with_client!(variant, <$w as Workload>::Body, |svc| {
                    let mut svc = svc;
                    let size = common::future_size(&mut svc, $w, &uri).await;
                    let allocations = common::count_allocations(
                        GLOBAL,
                        &mut svc,
                        $w,
                        &uri,
                        requests,
                        concurrency,
                    )
                    .await;
                    (allocations, size)
                })
            };
        }
        match workload {
            Get::NAME | GET_X32 => go!(Get),
            Post64k::NAME => go!(Post64k),
            other => panic!("unknown workload {other}"),
        }
    });
    if let (Some(stop), Some(thread)) = (stop, server_thread) {
        let _ = stop.send(());
        thread.join().unwrap();
    }
    println!("allocations {allocations}");
    println!("future_size {future_size}");
}

/// Allocations per request, from one native child run of `LONG` requests,
/// and the size of the client's response future.
fn allocations(row: Row, workload: &str) -> Option<(f64, usize)> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe)
        .args(row.args(workload, LONG))
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| -> Option<usize> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
    };
    let n = value("allocations ")?;
    Some((n as f64 / LONG as f64, value("future_size ")?))
}

/// How a callgrind run counts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Count {
    /// Client and server on one thread: the whole exchange.
    Exchange,
    /// The server on its own thread (`--server-thread`), callgrind with
    /// `--separate-threads=yes`: the main thread's count is the client's.
    Client,
}

/// A callgrind run in progress: the child and its profile's path.
struct Run {
    child: std::process::Child,
    path: String,
    count: Count,
}

/// Starts one callgrind run of a child.
fn callgrind(row: Row, workload: &str, requests: usize, count: Count) -> Option<Run> {
    let exe = std::env::current_exe().ok()?;
    let path = std::env::temp_dir()
        .join(format!(
            "callgrind.tcl.{}.{workload}.{}{}.{}.{requests}",
            std::process::id(),
            row.variant.name(),
            if row.info_subscriber { "+info" } else { "" },
            match count {
                Count::Exchange => "exchange",
                Count::Client => "client",
            },
        ))
        .display()
        .to_string();
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={path}"));
    if count == Count::Client {
        cmd.arg("--separate-threads=yes");
    }
    if count == Count::Exchange && cache() {
        cmd.arg("--cache-sim=yes");
    }
    cmd.arg(exe).args(row.args(workload, requests));
    if count == Count::Client {
        cmd.arg("--server-thread");
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    Some(Run { child, path, count })
}

/// Calls to `clock_gettime` in a callgrind profile: the clock reads. Each
/// costs far more time than its few counted instructions (about 25 ns on
/// the VM these numbers come from, as much as ~100 instructions), so the
/// count is reported beside the instructions.
///
/// Callgrind names a function in full the first time it appears (`fn=(id)
/// name` or `cfn=(id) name`) and by its id after that; each `calls=N` line
/// follows the `cfn=` line of the function it calls.
fn clock_reads(profile: &str) -> u64 {
    let mut id: Option<&str> = None;
    let mut calling = false;
    let mut reads = 0;
    for line in profile.lines() {
        let (callee, rest) = match (line.strip_prefix("cfn="), line.strip_prefix("fn=")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => {
                if let Some(calls) = line.strip_prefix("calls=") {
                    if calling {
                        reads += calls
                            .split_whitespace()
                            .next()
                            .and_then(|n| n.parse::<u64>().ok())
                            .unwrap_or(0);
                    }
                    calling = false;
                }
                continue;
            }
        };
        let (tag, name) = rest
            .split_once(' ')
            .map_or((rest, None), |(t, n)| (t, Some(n)));
        if id.is_none() && name.is_some_and(|n| n.starts_with("clock_gettime")) {
            id = Some(tag);
        }
        calling = callee && id == Some(tag);
    }
    reads
}

/// What one callgrind run counted.
#[derive(Clone, Copy)]
struct Counted {
    instructions: u64,
    clock_reads: u64,
    /// First-level cache misses, instruction and data (`--cache`).
    l1_misses: Option<u64>,
}

/// The sum of the named events in a profile's summary (`summary:`, else
/// `totals:`), each found by its place in the `events:` line; `None` if
/// one is missing (a cache event without `--cache-sim=yes`).
fn events_total(profile: &str, names: &[&str]) -> Option<u64> {
    let field = |prefix: &str| {
        profile
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
    };
    let events = field("events:")?;
    let values = field("summary:").or_else(|| field("totals:"))?;
    names.iter().try_fold(0, |sum, name| {
        let i = events.iter().position(|e| e == name)?;
        Some(sum + values.get(i)?.parse::<u64>().ok()?)
    })
}

/// Waits for a callgrind run and reads its total instruction count (the
/// main thread's for [`Count::Client`]), its clock reads and, with
/// `--cache`, its first-level cache misses.
fn instructions_of(run: Option<Run>) -> Option<Counted> {
    let Run { child, path, count } = run?;
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    // With separate threads callgrind appends the thread number; thread 1
    // is the main thread (the client's runtime).
    let files: Vec<String> = match count {
        Count::Exchange => vec![path.clone()],
        Count::Client => vec![path.clone(), format!("{path}-01"), format!("{path}-02")],
    };
    let profile = match count {
        Count::Exchange => path.clone(),
        Count::Client => format!("{path}-01"),
    };
    let text = std::fs::read_to_string(&profile).ok();
    for file in files {
        if keep() {
            if std::path::Path::new(&file).exists() {
                eprintln!("kept {file}");
            }
        } else {
            let _ = std::fs::remove_file(&file);
        }
    }
    let text = text?;
    Some(Counted {
        instructions: events_total(&text, &["Ir"])?,
        clock_reads: clock_reads(&text),
        // First-level misses, instruction and data, reads and writes.
        l1_misses: events_total(&text, &["I1mr", "D1mr", "D1mw"]),
    })
}

/// Instructions per request, client alone and whole exchange, the whole
/// exchange's clock reads per request and (with `--cache`) its first-level
/// cache misses per request: `SHORT` and `LONG` under callgrind (two at a
/// time: the counts do not depend on timing), difference over
/// `LONG - SHORT`.
fn instructions(row: Row, workload: &str) -> [Option<f64>; 4] {
    let per = |short: Option<u64>, long: Option<u64>| {
        Some(long?.saturating_sub(short?) as f64 / (LONG - SHORT) as f64)
    };
    let mut result = [None; 4];
    for (i, count) in [Count::Client, Count::Exchange].into_iter().enumerate() {
        let short = instructions_of(callgrind(row, workload, SHORT, count));
        let long = instructions_of(callgrind(row, workload, LONG, count));
        result[i] = per(short.map(|s| s.instructions), long.map(|l| l.instructions));
        if count == Count::Exchange {
            result[2] = per(short.map(|s| s.clock_reads), long.map(|l| l.clock_reads));
            result[3] = per(
                short.and_then(|s| s.l1_misses),
                long.and_then(|l| l.l1_misses),
            );
        }
    }
    result
}

/// `--cache`: the exchange's callgrind runs simulate the caches
/// (`--cache-sim=yes`, about twice as slow), and a column gives the
/// first-level cache misses per request (instruction and data, read and
/// write). On a machine whose caches the kernel's share of each request
/// flushes (the README's "This VM"), each touched cache line costs about as
/// much wall-clock time as 50 instructions, so this count says more about
/// throughput there than the instructions do.
fn cache() -> bool {
    std::env::args().any(|a| a == "--cache")
}

/// `--keep`: leave the callgrind profiles in the temporary directory (their
/// paths go to stderr) for `callgrind_annotate`.
fn keep() -> bool {
    std::env::args().any(|a| a == "--keep")
}

fn percent(value: f64, base: f64) -> String {
    format!("{:+.1} %", 100.0 * (value - base) / base)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--child") {
        child(&args);
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!(
            "valgrind not found: install it to count instructions \
             (Debian/Ubuntu: apt-get install valgrind), then run \
             `cargo bench --bench instructions` again"
        );
        return;
    }
    println!(
        "Per request: instructions counted by callgrind ({LONG} - {SHORT} requests, \
         after {} warm-up requests) for the client alone (server on its own thread) and \
         for the whole exchange (client + server on one current-thread runtime); heap \
         allocations of the whole exchange ({LONG} requests, natively); \
         the whole exchange's clock reads (calls to clock_gettime); \
         the size of the client's response future. get_x32: the same GET, 32 at \
         a time, each a task with a clone of the client.\n",
        common::WARM_UP
    );
    let (misses_head, misses_rule) = if cache() {
        (" L1 misses | vs bare |", "--:|--:|")
    } else {
        ("", "")
    };
    println!(
        "| workload | client | client instructions | vs bare | exchange instructions \
         | vs bare | allocations | vs bare | clock reads | future bytes |{misses_head}"
    );
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|{misses_rule}");
    for workload in [Get::NAME, Post64k::NAME, GET_X32] {
        let mut base: Option<[f64; 3]> = None;
        let mut base_misses: Option<f64> = None;
        for row in rows() {
            let (allocs, size) = match allocations(row, workload) {
                Some((a, size)) => (Some(a), size.to_string()),
                None => (None, "failed".to_string()),
            };
            let [client, exchange, clock, misses] = instructions(row, workload);
            let values = [client, exchange, allocs];
            let mut cells = Vec::new();
            for (i, value) in values.into_iter().enumerate() {
                let allocation = i == 2;
                match (value, base) {
                    (Some(v), Some(b)) if allocation => {
                        cells.push(format!("{v:.2}"));
                        cells.push(format!("{:+.2}", v - b[i]));
                    }
                    (Some(v), Some(b)) => {
                        cells.push(format!("{v:.0}"));
                        cells.push(percent(v, b[i]));
                    }
                    (Some(v), None) => {
                        cells.push(if allocation {
                            format!("{v:.2}")
                        } else {
                            format!("{v:.0}")
                        });
                        cells.push("—".to_string());
                    }
                    (None, _) => {
                        cells.push("failed".to_string());
                        cells.push(String::new());
                    }
                }
            }
            let bare = row.variant == Variant::Bare && !row.info_subscriber;
            if bare {
                if let [Some(c), Some(e), Some(a)] = values {
                    base = Some([c, e, a]);
                }
                base_misses = misses;
            }
            let clock = clock.map_or_else(|| "failed".to_string(), |c| format!("{c:.1}"));
            let misses = match (cache(), misses, base_misses) {
                (false, ..) => String::new(),
                (true, Some(m), Some(b)) if !bare => format!(" {m:.0} | {} |", percent(m, b)),
                (true, Some(m), _) => format!(" {m:.0} | — |"),
                (true, None, _) => " failed | |".to_string(),
            };
            println!(
                "| {workload} | {} | {} | {clock} | {size} |{misses}",
                row.label(),
                cells.join(" | ")
            );
        }
    }
}
