//! Instructions per request, counted by valgrind's callgrind: deterministic
//! on a noisy machine (the same binary and inputs give the same count
//! whatever else the machine is doing).
//!
//! ```sh
//! # needs valgrind (Debian/Ubuntu: apt-get install valgrind)
//! cargo bench --bench instructions
//! ```
//!
//! Each client variant runs twice under `valgrind --tool=callgrind`, with
//! `SHORT` and `LONG` keep-alive GETs, on one current-thread runtime with the
//! server (client and server instructions both count; the server's are the
//! same in every row). The difference divided by `LONG - SHORT` is the cost
//! per request with start-up and warm-up cancelled out. Without valgrind it
//! says so and exits successfully.
//!
//! `cargo bench --bench instructions -- --variant NAME --requests N` runs one
//! variant natively (what valgrind is pointed at).

mod common;

use std::process::Command;

use tower_conn_lifecycle::testing::HyperServer;

const SHORT: usize = 500;
const LONG: usize = 2500;

const VARIANTS: &[&str] = &[
    "bare",
    "tracker",
    "phase_timeout",
    "tracker+phase_timeout",
    "tracker+idle_expiry",
];

fn run_variant(variant: &str, requests: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = HyperServer::start().await.unwrap();
        let uri: http::Uri = server.url().parse().unwrap();
        macro_rules! go {
            ($svc:expr) => {{
                let mut svc = $svc;
                for _ in 0..requests {
                    common::get(&mut svc, &uri).await;
                }
            }};
        }
        match variant {
            "bare" => go!(common::bare()),
            "tracker" => go!(common::tracker_only()),
            "phase_timeout" => go!(common::phase_timeout_only()),
            "tracker+phase_timeout" => go!(common::tracker_and_phase_timeout()),
            "tracker+idle_expiry" => go!(common::tracker_and_idle_expiry()),
            other => panic!("unknown variant {other}"),
        }
    });
}

/// Instructions callgrind counted for one run, or `None` if valgrind failed.
fn count(variant: &str, requests: usize) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let out = std::env::temp_dir().join(format!(
        "callgrind.tcl.{}.{}.{requests}",
        std::process::id(),
        variant.replace('+', "_")
    ));
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .args(["--variant", variant, "--requests", &requests.to_string()])
        .output()
        .ok()?;
    if !status.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&status.stderr));
        return None;
    }
    let text = std::fs::read_to_string(&out).ok()?;
    let _ = std::fs::remove_file(&out);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--variant") {
        let variant = &args[i + 1];
        let requests = args
            .iter()
            .position(|a| a == "--requests")
            .and_then(|j| args.get(j + 1)?.parse().ok())
            .unwrap_or(SHORT);
        run_variant(variant, requests);
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("valgrind not found: install it to count instructions (see the docs at the top)");
        return;
    }
    println!(
        "instructions per keep-alive GET (client + server), callgrind, {LONG} - {SHORT} requests"
    );
    println!(
        "| {:<24} | {:>14} | {:>8} |",
        "client", "instructions", "vs bare"
    );
    println!("|{}|{}|{}|", "-".repeat(26), "-".repeat(16), "-".repeat(10));
    let mut bare = None;
    for variant in VARIANTS {
        let (Some(short), Some(long)) = (count(variant, SHORT), count(variant, LONG)) else {
            println!("| {variant:<24} | {:>14} | {:>8} |", "failed", "");
            continue;
        };
        let per = long.saturating_sub(short) as f64 / (LONG - SHORT) as f64;
        let base = *bare.get_or_insert(per);
        println!(
            "| {variant:<24} | {per:>14.0} | {:>7.1}% |",
            100.0 * (per - base) / base
        );
    }
}
