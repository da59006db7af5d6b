//! Per-phase timeouts against misbehaving local servers, or against any
//! server you name.
//!
//! ```sh
//! cargo run --release --example upload_timeouts
//! cargo run --release --example upload_timeouts -- \
//!     --url http://127.0.0.1:8080/upload --size-mb 100 --connect-ms 1000 --send-ms 1000 --read-ms 5000
//! ```
//!
//! The demo runs four scenarios with connect = 1 s and send = 1 s:
//! (a) a 100 MB upload to a reader throttled so it takes over 3 s — succeeds;
//! (b) a reader that stops mid-upload — phase send, about 1 s after the last
//!     progress; (c) a server that never answers — phase read, timed from the
//!     end of the upload; (d) a connect that never completes — phase connect.
//!
//! With `--url`, it does one POST of `--size-mb` and prints, as its last
//! line, `result: ok status=<code> sent=<bytes>` or
//! `result: error phase=<connect|send|read|total|other> elapsed_ms=<n> sent=<bytes>`.

mod common;

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tower_conn_lifecycle::connect_timeout::ConnectTimeoutLayer;
use tower_conn_lifecycle::phase_timeout::{Elapsed, PhaseTimeoutLayer, ResponseBody};
use tower_conn_lifecycle::testing::{Blackhole, SilentServer, StopReadingServer, ThrottledReader};
use tower_conn_lifecycle::track::{ConnectionCapture, TrackConnectionsLayer};
use tower_conn_lifecycle::RequestBody;
use tower_conn_lifecycle::{find_cause, BoxError};

const MB: usize = 1 << 20;

type Svc =
    BoxCloneService<http::Request<Full<Bytes>>, http::Response<ResponseBody<Incoming>>, BoxError>;

#[derive(Debug)]
struct Limits {
    connect: Duration,
    send: Option<Duration>,
    read: Option<Duration>,
    total: Option<Duration>,
}

fn client(limits: &Limits) -> Svc {
    let connector = ServiceBuilder::new()
        .layer(ConnectTimeoutLayer::new(limits.connect))
        .layer(TrackConnectionsLayer::new())
        .service(HttpConnector::new());
    let client = Client::builder(TokioExecutor::new())
        .build::<_, RequestBody>(connector)
        .map_err(BoxError::from);
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(
                PhaseTimeoutLayer::new()
                    .send(limits.send)
                    .read(limits.read)
                    .total(limits.total),
            )
            .service(client),
    )
}

/// What one POST did, seen from the client.
struct Outcome {
    status: Result<u16, BoxError>,
    took: Duration,
    /// From the last byte the tracker saw written to the end of the attempt.
    after_last_write: Option<Duration>,
    sent: u64,
}

async fn upload(svc: Svc, url: &str, bytes: usize) -> Outcome {
    let mut req = match http::Request::post(url).body(Full::new(Bytes::from(vec![b'x'; bytes]))) {
        Ok(req) => req,
        Err(e) => {
            return Outcome {
                status: Err(e.into()),
                took: Duration::ZERO,
                after_last_write: None,
                sent: 0,
            }
        }
    };
    let capture = ConnectionCapture::get_or_insert(&mut req);
    let start = Instant::now();
    let result = async {
        let res = svc.oneshot(req).await?;
        let status = res.status().as_u16();
        res.into_body().collect().await?;
        Ok::<_, BoxError>(status)
    }
    .await;
    let end = Instant::now();
    let state = capture.state();
    let elapsed = result
        .as_ref()
        .err()
        .and_then(|e| find_cause::<Elapsed>(e.as_ref()));
    let sent = match (&result, elapsed) {
        (Ok(_), _) => bytes as u64,
        (Err(_), Some(e)) => e.bytes_sent(),
        (Err(_), None) => state.as_ref().map_or(0, |s| s.bytes_written()),
    };
    Outcome {
        after_last_write: state
            .and_then(|s| s.last_write())
            .map(|w| end.saturating_duration_since(w)),
        status: result,
        took: end - start,
        sent,
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

async fn demo() -> Result<(), BoxError> {
    let limits = Limits {
        connect: Duration::from_secs(1),
        send: Some(Duration::from_secs(1)),
        read: Some(Duration::from_secs(1)),
        total: None,
    };
    println!("limits: connect=1s send=1s (stall) read=1s (from the end of the upload)\n");
    let mut rows = Vec::new();
    let mut row = |name: &str, expect: &str, o: &Outcome, server: String| {
        let (result, phase) = match &o.status {
            Ok(code) => (format!("ok {code}"), "-".to_string()),
            Err(e) => (
                "error".to_string(),
                find_cause::<Elapsed>(e.as_ref()).map_or("other".into(), |e| e.phase().to_string()),
            ),
        };
        rows.push(vec![
            name.to_string(),
            expect.to_string(),
            result,
            phase,
            ms(o.took),
            o.after_last_write.map_or("-".into(), ms),
            o.sent.to_string(),
            server,
        ]);
        if let Err(e) = &o.status {
            println!("{name}: {}", tower_conn_lifecycle::error_chain(e.as_ref()));
        }
    };

    // (a) 100 MB through a reader throttled to 30 MiB/s: > 3 s of upload.
    let throttled = ThrottledReader::start(30 * MB as u64).await?;
    let a = upload(client(&limits), &throttled.url(), 100 * MB).await;
    row(
        "a: 100 MB, throttled reader",
        "ok",
        &a,
        format!("read {} B", throttled.bytes_read()),
    );

    // (b) The reader stops after 8 MiB.
    let stop = StopReadingServer::start(8 * MB as u64).await?;
    let b = upload(client(&limits), &stop.url(), 100 * MB).await;
    row(
        "b: reader stops mid-upload",
        "send",
        &b,
        format!("read {} B", stop.bytes_read()),
    );

    // (c) The server reads everything and never answers.
    let silent = SilentServer::start().await?;
    let c = upload(client(&limits), &silent.url(), 10 * MB).await;
    row(
        "c: server never answers",
        "read",
        &c,
        format!("read {} B", silent.bytes_read()),
    );

    // (d) The connect never completes.
    let hole = Blackhole::start().await?;
    let d = upload(client(&limits), &hole.url(), MB).await;
    row("d: connect never completes", "connect", &d, "-".into());

    println!();
    common::table(
        &[
            "scenario",
            "expected",
            "result",
            "phase",
            "took",
            "after last write",
            "client sent",
            "server",
        ],
        &rows,
    );
    println!(
        "\n'after last write' is the time from the last byte the tracker saw written to the \
         error: about send (1 s) for (b) and about read (1 s) for (c), whatever the upload took."
    );
    Ok(())
}

fn parse_ms(v: &str) -> Result<Option<Duration>, String> {
    let n: u64 = v
        .parse()
        .map_err(|_| format!("not a number of milliseconds: {v}"))?;
    Ok((n > 0).then(|| Duration::from_millis(n)))
}

/// `--url URL --size-mb N --connect-ms X --send-ms Y --read-ms Z [--total-ms T]`;
/// a value of 0 switches a limit off (connect falls back to 30 s).
fn parse(args: &[String]) -> Result<(String, usize, Limits), String> {
    let mut url = None;
    let mut size_mb = 1usize;
    let mut limits = Limits {
        connect: Duration::from_secs(30),
        send: None,
        read: None,
        total: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => url = Some(value.clone()),
            "--size-mb" => {
                size_mb = value
                    .parse()
                    .ok()
                    .filter(|n| *n <= 4096)
                    .ok_or_else(|| format!("--size-mb must be 0..=4096, got {value}"))?
            }
            "--connect-ms" => limits.connect = parse_ms(value)?.unwrap_or(Duration::from_secs(30)),
            "--send-ms" => limits.send = parse_ms(value)?,
            "--read-ms" => limits.read = parse_ms(value)?,
            "--total-ms" => limits.total = parse_ms(value)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let url = url.ok_or("--url is required")?;
    Ok((url, size_mb, limits))
}

async fn external(args: &[String]) -> ExitCode {
    let (url, size_mb, limits) = match parse(args) {
        Ok(parsed) => parsed,
        Err(msg) => {
            eprintln!("error: {msg}");
            eprintln!(
                "usage: upload_timeouts [--url URL --size-mb N --connect-ms X --send-ms Y --read-ms Z [--total-ms T]]"
            );
            return ExitCode::from(2);
        }
    };
    println!("POST {url}: {size_mb} MiB, {limits:?}");
    let o = upload(client(&limits), &url, size_mb * MB).await;
    match &o.status {
        Ok(code) => {
            println!("result: ok status={code} sent={}", o.sent);
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error: {}", tower_conn_lifecycle::error_chain(e.as_ref()));
            let phase =
                find_cause::<Elapsed>(e.as_ref()).map_or("other".into(), |e| e.phase().to_string());
            println!(
                "result: error phase={phase} elapsed_ms={} sent={}",
                o.took.as_millis(),
                o.sent
            );
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        match demo().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", tower_conn_lifecycle::error_chain(e.as_ref()));
                ExitCode::FAILURE
            }
        }
    } else {
        external(&args).await
    }
}
