//! The seed workload: the stale keep-alive race as a repeatable load.

use std::collections::BTreeMap;
use std::error::Error;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::track::ConnectionInfo;
use crate::BoxError;

/// Sequential requests from several tasks, each with its own client, with
/// random gaps scaled to a server's idle timeout: the workload that makes
/// keep-alive connections race the server's idle close.
///
/// The defaults are the seed case: 10 tasks × 100 `GET`s, gaps uniform in
/// [0.99, 1.0) × idle. Every run is bounded by a time limit (default 120 s)
/// and a request count, and stops by itself. Gaps come from a small
/// deterministic generator seeded per task.
///
/// ```
/// use std::time::Duration;
/// use tower_conn_lifecycle::testing::{IdleClosingServer, SeedWorkload};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let server = IdleClosingServer::start(Duration::from_millis(50)).await?;
/// let report = SeedWorkload::new(Duration::from_millis(50))
///     .tasks(2)
///     .requests(3)
///     .gaps(0.1, 0.2)
///     .run(&server.url(), |_task| {
///         hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
///             .build_http::<http_body_util::Full<bytes::Bytes>>()
///     })
///     .await;
/// assert_eq!(report.requests(), 6);
/// assert_eq!(report.errors(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SeedWorkload {
    idle: Duration,
    tasks: usize,
    requests: usize,
    gaps: (f64, f64),
    method: Method,
    body: Bytes,
    idempotency_keys: bool,
    keep_bodies: bool,
    time_limit: Duration,
    request_limit: Duration,
}

/// One request of a [`SeedWorkload`] run.
#[derive(Debug)]
pub struct Sample {
    task: usize,
    index: usize,
    gap: Duration,
    started: Duration,
    latency: Duration,
    outcome: Result<Response<()>, BoxError>,
    body: Option<Bytes>,
}

impl Sample {
    /// The task that sent it.
    pub fn task(&self) -> usize {
        self.task
    }

    /// Its position in its task's sequence (0 for the first).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The pause before it (zero for a task's first request).
    pub fn gap(&self) -> Duration {
        self.gap
    }

    /// When it was sent, since the run started (one clock for every task).
    pub fn started(&self) -> Duration {
        self.started
    }

    /// From the call to the end of the response body.
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// The response's head (status, headers, extensions) with the body read
    /// to the end, or the error.
    pub fn outcome(&self) -> Result<&Response<()>, &BoxError> {
        self.outcome.as_ref()
    }

    /// The response body, if the workload keeps bodies
    /// ([`SeedWorkload::keep_bodies`]) and the request succeeded.
    pub fn body(&self) -> Option<&Bytes> {
        self.body.as_ref()
    }

    /// The connection's story for this request, if it was tracked.
    pub fn info(&self) -> Option<ConnectionInfo> {
        self.outcome.as_ref().ok().and_then(ConnectionInfo::of)
    }
}

/// What a [`SeedWorkload`] run did, request by request.
#[derive(Debug, Default)]
pub struct SeedReport {
    samples: Vec<Sample>,
    took: Duration,
}

impl SeedWorkload {
    /// The seed workload for a server whose idle timeout is `idle`.
    pub fn new(idle: Duration) -> Self {
        SeedWorkload {
            idle,
            tasks: 10,
            requests: 100,
            gaps: (0.99, 1.0),
            method: Method::GET,
            body: Bytes::new(),
            idempotency_keys: false,
            keep_bodies: false,
            time_limit: Duration::from_secs(120),
            request_limit: Duration::from_secs(30),
        }
    }

    /// Concurrent tasks, each with its own client (default 10).
    pub fn tasks(mut self, tasks: usize) -> Self {
        self.tasks = tasks;
        self
    }

    /// Sequential requests per task (default 100).
    pub fn requests(mut self, requests: usize) -> Self {
        self.requests = requests;
        self
    }

    /// Gaps uniform in [`low`, `high`) × idle (default 0.99, 1.0).
    pub fn gaps(mut self, low: f64, high: f64) -> Self {
        let (low, high) = (low.max(0.0), high.max(0.0));
        self.gaps = (low.min(high), low.max(high));
        self
    }

    /// The method of every request (default `GET`); a `POST` carries a small
    /// body unless [`body`](Self::body) says otherwise.
    pub fn method(mut self, method: Method) -> Self {
        if method == Method::POST && self.body.is_empty() {
            self.body = Bytes::from_static(b"seed");
        }
        self.method = method;
        self
    }

    /// The body of every request.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Whether every request carries a unique `Idempotency-Key` header.
    pub fn idempotency_keys(mut self, on: bool) -> Self {
        self.idempotency_keys = on;
        self
    }

    /// Whether every [`Sample`] keeps its response body, for
    /// [`Sample::body`] (default off: a long run would hold every body).
    pub fn keep_bodies(mut self, on: bool) -> Self {
        self.keep_bodies = on;
        self
    }

    /// The run stops starting requests after this long (default 120 s).
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = limit;
        self
    }

    /// Each request (through the end of its body) fails as timed out after
    /// this long (default 30 s), so a client that hangs cannot hang the run.
    pub fn request_limit(mut self, limit: Duration) -> Self {
        self.request_limit = limit;
        self
    }

    /// Runs the workload against `url`; `client(task)` makes each task's
    /// client.
    pub async fn run<S, B, F>(&self, url: &str, client: F) -> SeedReport
    where
        F: Fn(usize) -> S,
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        let stop_at = crate::clock::deadline(start, self.time_limit);
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..self.tasks {
            let svc = client(task);
            let plan = self.clone();
            let url = url.to_owned();
            tasks.spawn(async move { plan.task(task, svc, url, start, stop_at).await });
        }
        let mut samples = Vec::new();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(mut s) => samples.append(&mut s),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            }
        }
        SeedReport {
            samples,
            took: start.elapsed(),
        }
    }

    async fn task<S, B>(
        &self,
        task: usize,
        mut svc: S,
        url: String,
        run_start: Instant,
        stop_at: Instant,
    ) -> Vec<Sample>
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>>,
        S::Error: Into<BoxError>,
        B: Body + 'static,
        B::Error: Into<BoxError>,
    {
        let mut rng = Rng::new(task as u64 + 1);
        let mut samples = Vec::with_capacity(self.requests);
        for i in 0..self.requests {
            if Instant::now() >= stop_at {
                break;
            }
            let gap = if i == 0 {
                Duration::ZERO
            } else {
                let (lo, hi) = self.gaps;
                self.idle.mul_f64(lo + (hi - lo) * rng.unit())
            };
            tokio::time::sleep(gap).await;
            let mut req = Request::builder()
                .method(self.method.clone())
                .uri(url.as_str());
            if self.idempotency_keys {
                req = req.header("idempotency-key", format!("seed-{task}-{i}"));
            }
            let req = match req.body(Full::new(self.body.clone())) {
                Ok(req) => req,
                Err(e) => {
                    samples.push(Sample {
                        task,
                        index: i,
                        gap,
                        started: run_start.elapsed(),
                        latency: Duration::ZERO,
                        outcome: Err(e.into()),
                        body: None,
                    });
                    break;
                }
            };
            let started = Instant::now();
            let outcome = tokio::time::timeout(self.request_limit, async {
                let res = svc.ready().await.map_err(Into::into)?.call(req).await;
                let res = res.map_err(Into::into)?;
                // The connection's story as of the head (the live state
                // moves on with later requests), wherever the response
                // carries it: an extension, or the one-call client's body.
                let info = ConnectionInfo::of(&res);
                let (mut parts, body) = res.into_parts();
                if let Some(info) = info {
                    parts.extensions.insert(info);
                }
                let body = body.collect().await.map_err(Into::into)?;
                let body = self.keep_bodies.then(|| body.to_bytes());
                Ok::<_, BoxError>((Response::from_parts(parts, ()), body))
            })
            .await
            .unwrap_or_else(|_| Err(SeedTimeout(self.request_limit).into()));
            let latency = started.elapsed();
            let (outcome, body) = match outcome {
                Ok((head, body)) => (Ok(head), body),
                Err(e) => (Err(e), None),
            };
            samples.push(Sample {
                task,
                index: i,
                gap,
                started: started.duration_since(run_start),
                latency,
                outcome,
                body,
            });
        }
        samples
    }
}

impl SeedReport {
    /// Every request, grouped by task.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Requests sent.
    pub fn requests(&self) -> usize {
        self.samples.len()
    }

    /// Requests that failed.
    pub fn errors(&self) -> usize {
        self.samples.iter().filter(|s| s.outcome.is_err()).count()
    }

    /// Requests that got a whole response.
    pub fn successes(&self) -> usize {
        self.requests() - self.errors()
    }

    /// Successful requests that went over a reused connection (tracked
    /// clients only).
    pub fn reused(&self) -> usize {
        self.samples
            .iter()
            .filter(|s| s.info().is_some_and(|i| i.is_reused()))
            .count()
    }

    /// Distinct errors (each as its `source()` chain) and how often each came.
    pub fn error_chains(&self) -> BTreeMap<String, usize> {
        let mut chains = BTreeMap::new();
        for s in &self.samples {
            if let Err(e) = &s.outcome {
                *chains
                    .entry(crate::error_chain(e.as_ref()).to_string())
                    .or_default() += 1;
            }
        }
        chains
    }

    /// The `p`-quantile (0.0–1.0) of successful requests' latency.
    pub fn latency_quantile(&self, p: f64) -> Option<Duration> {
        let mut l: Vec<Duration> = self
            .samples
            .iter()
            .filter(|s| s.outcome.is_ok())
            .map(|s| s.latency)
            .collect();
        if l.is_empty() {
            return None;
        }
        l.sort();
        let i = ((l.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize;
        Some(l[i])
    }

    /// How long the run took.
    pub fn took(&self) -> Duration {
        self.took
    }
}

/// A [`SeedWorkload`] request that did not complete within its
/// [`request_limit`](SeedWorkload::request_limit).
#[derive(Debug, Clone, Copy)]
pub struct SeedTimeout(Duration);

impl std::fmt::Display for SeedTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seed request did not complete within {:?}", self.0)
    }
}

impl Error for SeedTimeout {}

/// A tiny xorshift generator: deterministic per seed, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}
