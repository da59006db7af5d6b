//! What every overhead benchmark shares: the one list of client variants,
//! the workloads, and the request loop.
//!
//! A variant is a plain value ([`Variant`]); [`with_client!`] turns it into
//! the concrete client type with a `match`, so each arm is monomorphised and
//! nothing in the measured path is boxed or dynamically dispatched (a boxed
//! service or future would add the same cost to every row, bare included).
//! Likewise a workload is a type ([`Get`], [`Post64k`]) fixing the request
//! body type at compile time.
#![allow(dead_code, unused_macros, unused_imports)]

pub mod composable;
pub mod reqwest_client;

use std::fmt::Debug;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::client::pool::cache;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_conn_lifecycle::connect_timeout::ConnectTimeoutLayer;
use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
use tower_conn_lifecycle::phase_timeout::PhaseTimeoutLayer;
use tower_conn_lifecycle::pool;
use tower_conn_lifecycle::retry::RetryOnStaleConnectionLayer;
use tower_conn_lifecycle::track::{TrackConnections, TrackConnectionsLayer};
use tower_conn_lifecycle::RequestBody;

/// The client variants, in table order. `Bare` is the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// hyper-util's legacy `Client` over `HttpConnector`, as it comes.
    Bare,
    /// hyper-util's composable pool (`client::pool::cache`) over hyper's
    /// HTTP/1 connections, no layers (see [`composable`]).
    BareComposable,
    /// `TrackConnectionsLayer` on the connector, nothing on the request plane.
    Tracker,
    /// `PhaseTimeout` alone (send 5 s, read 5 s, total 10 s), no tracker.
    PhaseTimeout,
    /// `IdleExpiry` (90 s) over a tracked client: it needs the tracker.
    IdleExpiry,
    /// `RetryOnStaleConnection` alone, no tracker.
    Retry,
    /// The one-call client's stack as it was built on hyper-util's legacy
    /// client, assembled by hand (so that it stays measured whatever engine
    /// `client::builder()` uses): Retry → PhaseTimeout (the same limits) →
    /// IdleExpiry 90 s → legacy client with `TokioTimer` over ConnectTimeout
    /// 5 s → Track → HttpConnector (no TLS).
    HandStack,
    /// The same layers stacked by hand on this crate's public `pool` pieces
    /// (hyper-util's composable pool): Retry → PhaseTimeout (the same
    /// limits) → `pool::checkout` (8 attempts) → `pool::cache` of
    /// `pool::connect` (hyper's HTTP/1, IdleExpiry 90 s per connection)
    /// over ConnectTimeout 5 s → Track → HttpConnector: what a user who
    /// stacks the layers by hand can build without the legacy client.
    PoolStack,
    /// The one-call client, `client::builder()`, with connect timeout 5 s
    /// and the same phase limits: every layer, on whatever engine it uses.
    Full,
    /// The one-call client as it comes, `client::builder().build()`: every
    /// layer, no connect timeout and no phase limit (its requests then skip
    /// PhaseTimeout's machinery).
    FullDefault,
    /// `reqwest::Client` 0.13, HTTP/1 only, connect timeout 5 s, total 10 s,
    /// behind a minimal `Service<http::Request>` (see [`reqwest_client`]).
    Reqwest,
    /// Reference, not a layer: bare hyper-util with its own pool timer
    /// (`pool_timer(TokioTimer)`, as reqwest sets it). What any armed tokio
    /// timer costs a runtime (work at every park), which the layers with
    /// timers pay too.
    BareTimer,
    /// Reference, not a layer: bare hyper-util plus a layer that only takes
    /// the connection capture (`ConnectionCapture::get_or_insert`, hyper-util's
    /// `capture_connection`), the part of PhaseTimeout and Retry that lets
    /// them see a request's connection before its response exists.
    Capture,
    /// Reference: [`Variant::Tracker`] with hyper-util's pool timer armed,
    /// the baseline of [`Variant::IdleExpiryTimer`].
    TrackerTimer,
    /// Reference: [`Variant::IdleExpiry`] with hyper-util's pool timer
    /// armed. Its difference from [`Variant::TrackerTimer`] is what
    /// IdleExpiry costs in a runtime that already has a timer armed (most
    /// programs: a pool timer, a `tokio::time` sleep or interval), where the
    /// work tokio does at every park while a timer is armed is paid anyway.
    IdleExpiryTimer,
}

/// Every variant, `Bare` first.
pub const VARIANTS: &[Variant] = &[
    Variant::Bare,
    Variant::BareComposable,
    Variant::Tracker,
    Variant::PhaseTimeout,
    Variant::IdleExpiry,
    Variant::Retry,
    Variant::HandStack,
    Variant::PoolStack,
    Variant::Full,
    Variant::FullDefault,
    Variant::Reqwest,
    Variant::BareTimer,
    Variant::Capture,
    Variant::TrackerTimer,
    Variant::IdleExpiryTimer,
];

impl Variant {
    /// The name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Bare => "bare",
            Variant::BareComposable => "bare_composable",
            Variant::Tracker => "tracker",
            Variant::PhaseTimeout => "phase_timeout",
            Variant::IdleExpiry => "idle_expiry",
            Variant::Retry => "retry",
            Variant::HandStack => "hand_stack",
            Variant::PoolStack => "pool_stack",
            Variant::Full => "full",
            Variant::FullDefault => "full_default",
            Variant::Reqwest => "reqwest",
            Variant::BareTimer => "ref_pool_timer",
            Variant::Capture => "ref_capture",
            Variant::TrackerTimer => "ref_tracker_timer",
            Variant::IdleExpiryTimer => "ref_idle_expiry_timer",
        }
    }

    /// What the row is, for the tables.
    pub fn describe(self) -> &'static str {
        match self {
            Variant::Bare => "hyper-util legacy Client, HttpConnector",
            Variant::BareComposable => {
                "hyper-util composable pool (pool::cache) + http1 handshake, no layers"
            }
            Variant::Tracker => "+ TrackConnections on the connector",
            Variant::PhaseTimeout => "+ PhaseTimeout (send 5 s, read 5 s, total 10 s)",
            Variant::IdleExpiry => "+ tracker + IdleExpiry 90 s",
            Variant::Retry => "+ RetryOnStaleConnection",
            Variant::HandStack => {
                "every layer by hand on the legacy Client (today's client::builder() stack)"
            }
            Variant::PoolStack => {
                "every layer by hand on the crate's pool module (composable pool)"
            }
            Variant::Full => "client::builder(): every layer, limits set",
            Variant::FullDefault => "client::builder() as it comes: every layer, no limit set",
            Variant::Reqwest => "reqwest 0.13 Client, HTTP/1 only, connect 5 s, total 10 s",
            Variant::BareTimer => "reference: hyper-util's own pool timer armed",
            Variant::Capture => "reference: hyper-util's capture_connection alone",
            Variant::TrackerTimer => "reference: tracker, hyper-util's pool timer armed",
            Variant::IdleExpiryTimer => {
                "reference: tracker + IdleExpiry 90 s, hyper-util's pool timer armed"
            }
        }
    }

    pub fn parse(name: &str) -> Option<Variant> {
        VARIANTS.iter().copied().find(|v| v.name() == name)
    }
}

/// A request body type the variants can all be built for.
pub trait ReqBody:
    http_body::Body<Data = Bytes, Error = std::convert::Infallible>
    + Clone
    + Send
    + Sync
    + Unpin
    + 'static
{
}
impl<B> ReqBody for B where
    B: http_body::Body<Data = Bytes, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + Unpin
        + 'static
{
}

/// A workload: which request every iteration sends.
pub trait Workload: Copy + Send + 'static {
    type Body: ReqBody;
    /// The name used on the command line and in tables.
    const NAME: &'static str;
    /// One request to `uri`. Must not copy or allocate anything that the
    /// client does not (the 64 KiB payload is a `'static` `Bytes`).
    fn request(self, uri: &http::Uri) -> http::Request<Self::Body>;
}

/// A keep-alive `GET` with an empty body.
#[derive(Clone, Copy, Debug)]
pub struct Get;

impl Workload for Get {
    type Body = Empty<Bytes>;
    const NAME: &'static str = "get";
    fn request(self, uri: &http::Uri) -> http::Request<Empty<Bytes>> {
        http::Request::get(uri.clone()).body(Empty::new()).unwrap()
    }
}

/// The 64 KiB upload's payload: static, so cloning it neither copies nor
/// allocates.
static PAYLOAD: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// A keep-alive `POST` with a 64 KiB `Full<Bytes>` body (read completely by
/// the server, which answers with its length).
#[derive(Clone, Copy, Debug)]
pub struct Post64k;

impl Workload for Post64k {
    type Body = Full<Bytes>;
    const NAME: &'static str = "post64k";
    fn request(self, uri: &http::Uri) -> http::Request<Full<Bytes>> {
        http::Request::post(uri.clone())
            .body(Full::new(Bytes::from_static(&PAYLOAD)))
            .unwrap()
    }
}

/// The clients compared, for request bodies `B`.
pub trait HttpClient<B>:
    Service<http::Request<B>, Response = http::Response<Self::Body>, Error = Self::Err>
    + Clone
    + Send
    + 'static
{
    type Body: http_body::Body<Error: Debug, Data: Send> + Send;
    type Err: Debug;
}

impl<S, B, RB> HttpClient<B> for S
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Error: Debug,
    RB: http_body::Body<Error: Debug, Data: Send> + Send,
{
    type Body = RB;
    type Err = S::Error;
}

/// All phases on, with limits that never fire on loopback.
pub fn phases() -> PhaseTimeoutLayer {
    PhaseTimeoutLayer::new()
        .send(Duration::from_secs(5))
        .read(Duration::from_secs(5))
        .total(Duration::from_secs(10))
}

fn tracked() -> TrackConnections<HttpConnector> {
    ServiceBuilder::new()
        .layer(TrackConnectionsLayer::new())
        .service(HttpConnector::new())
}

/// hyper-util's client as it comes.
pub fn bare<B: ReqBody>() -> impl HttpClient<B, Future: Send> {
    Client::builder(TokioExecutor::new()).build::<_, B>(HttpConnector::new())
}

/// hyper-util's client over the tracked connector, with its pool timer
/// armed or not.
fn tracked_client<B: ReqBody>(pool_timer: bool) -> Client<TrackConnections<HttpConnector>, B> {
    let mut builder = Client::builder(TokioExecutor::new());
    if pool_timer {
        builder.pool_timer(TokioTimer::new());
    }
    builder.build(tracked())
}

/// IdleExpiry (a 90 s expiry: never fires on these workloads, so the cost
/// measured is the bookkeeping on every response) over [`tracked_client`].
fn idle_expiry_over<B: ReqBody>(pool_timer: bool) -> impl HttpClient<B, Future: Send> {
    ServiceBuilder::new()
        .layer(IdleExpiryLayer::new(Duration::from_secs(90)))
        .service(tracked_client::<B>(pool_timer))
}

/// The tracker on the connector, nothing on the request plane.
pub fn tracker<B: ReqBody>() -> impl HttpClient<B, Future: Send> {
    tracked_client::<B>(false)
}

/// PhaseTimeout without the tracker.
pub fn phase_timeout<B: ReqBody>() -> impl HttpClient<B, Future: Send> {
    ServiceBuilder::new().layer(phases()).service(
        Client::builder(TokioExecutor::new()).build::<_, RequestBody>(HttpConnector::new()),
    )
}

/// [`tracker`] with hyper-util's pool timer armed (a reference row).
pub fn tracker_timer<B: ReqBody>() -> impl HttpClient<B, Future: Send> {
    tracked_client::<B>(true)
}

/// [`idle_expiry`] with hyper-util's pool timer armed (a reference row).
pub fn idle_expiry_timer<B: ReqBody>() -> impl HttpClient<B, Future: Send> {
    idle_expiry_over::<B>(true)
}

/// The tracker and IdleExpiry.
pub fn idle_expiry<B: ReqBody>() -> impl HttpClient<B, Future: Send> {
    idle_expiry_over::<B>(false)
}

/// RetryOnStaleConnection around a client with no tracker (a healthy server:
/// it never retries, so the cost is the per-request bookkeeping).
pub fn retry<B: ReqBody>() -> impl HttpClient<B, Future: Send> {
    ServiceBuilder::new()
        .layer(RetryOnStaleConnectionLayer::new())
        .service(
            Client::builder(TokioExecutor::new()).build::<_, RequestBody>(HttpConnector::new()),
        )
}

/// hyper-util's composable pool, no layers.
pub fn bare_composable<B: ReqBody>() -> impl HttpClient<B, Future: Send> {
    composable::client::<B>()
}

/// Every layer assembled by hand on hyper-util's legacy client: what
/// `client::Builder::build` did on that engine, minus TLS.
pub fn hand_stack<B: ReqBody>() -> impl HttpClient<B, Future: Send> {
    let connector = ServiceBuilder::new()
        .layer(ConnectTimeoutLayer::new(Duration::from_secs(5)))
        .layer(TrackConnectionsLayer::new())
        .service(HttpConnector::new());
    let pool = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .build::<_, RequestBody>(connector);
    ServiceBuilder::new()
        .layer(RetryOnStaleConnectionLayer::new())
        .layer(phases())
        .layer(IdleExpiryLayer::new(Duration::from_secs(90)))
        .service(pool)
}

/// Every layer assembled by hand on this crate's `pool` pieces, which run on
/// hyper-util's composable pool (see [`Variant::PoolStack`]).
pub fn pool_stack<B: ReqBody>() -> impl HttpClient<B, Future: Send> {
    let connector = ServiceBuilder::new()
        .layer(ConnectTimeoutLayer::new(Duration::from_secs(5)))
        .layer(TrackConnectionsLayer::new())
        .service(HttpConnector::new());
    let connect = pool::connect(
        connector,
        hyper::client::conn::http1::Builder::new(),
        IdleExpiryLayer::new(Duration::from_secs(90)),
    );
    let cache = cache::builder()
        .executor(TokioExecutor::new())
        .build(connect);
    ServiceBuilder::new()
        .layer(RetryOnStaleConnectionLayer::new())
        .layer(phases())
        .service(pool::checkout(cache, 8))
}

/// reqwest 0.13 as it comes.
pub fn reqwest<B: ReqBody>() -> impl HttpClient<B, Future: Send> {
    reqwest_client::client::<B>()
}

/// The one-call client with every layer.
pub fn full<B: ReqBody>() -> impl HttpClient<B, Future: Send> {
    tower_conn_lifecycle::client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeouts(phases())
        .build::<B>()
}

/// The one-call client as it comes (no connect timeout, no phase limit).
pub fn full_default<B: ReqBody>() -> impl HttpClient<B, Future: Send> {
    tower_conn_lifecycle::client::builder().build::<B>()
}

/// Bare hyper-util with its pool timer (a reference row).
pub fn bare_timer<B: ReqBody>() -> impl HttpClient<B, Future: Send> {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build::<_, B>(HttpConnector::new())
}

/// Takes the request's connection capture and passes the request on: the
/// capture's cost alone (a reference row).
#[derive(Clone, Debug)]
pub struct CaptureOnly<S>(S);

impl<S, B> Service<http::Request<B>> for CaptureOnly<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> S::Future {
        tower_conn_lifecycle::track::ConnectionCapture::get_or_insert(&mut req);
        self.0.call(req)
    }
}

/// Bare hyper-util behind [`CaptureOnly`] (a reference row).
pub fn capture<B: ReqBody>() -> impl HttpClient<B, Future: Send> {
    CaptureOnly(Client::builder(TokioExecutor::new()).build::<_, B>(HttpConnector::new()))
}

/// Binds `$svc` to the client of `$variant` for the body type `$body` and
/// evaluates `$run` with it: one monomorphised arm per variant, no boxing.
macro_rules! with_client {
    ($variant:expr, $body:ty, |$svc:ident| $run:expr) => {
        match $variant {
            $crate::common::Variant::Bare => {
                let $svc = $crate::common::bare::<$body>();
                $run
            }
            $crate::common::Variant::BareComposable => {
                let $svc = $crate::common::bare_composable::<$body>();
                $run
            }
            $crate::common::Variant::Tracker => {
                let $svc = $crate::common::tracker::<$body>();
                $run
            }
            $crate::common::Variant::PhaseTimeout => {
                let $svc = $crate::common::phase_timeout::<$body>();
                $run
            }
            $crate::common::Variant::IdleExpiry => {
                let $svc = $crate::common::idle_expiry::<$body>();
                $run
            }
            $crate::common::Variant::Retry => {
                let $svc = $crate::common::retry::<$body>();
                $run
            }
            $crate::common::Variant::HandStack => {
                let $svc = $crate::common::hand_stack::<$body>();
                $run
            }
            $crate::common::Variant::PoolStack => {
                let $svc = $crate::common::pool_stack::<$body>();
                $run
            }
            $crate::common::Variant::Full => {
                let $svc = $crate::common::full::<$body>();
                $run
            }
            $crate::common::Variant::FullDefault => {
                let $svc = $crate::common::full_default::<$body>();
                $run
            }
            $crate::common::Variant::Reqwest => {
                let $svc = $crate::common::reqwest::<$body>();
                $run
            }
            $crate::common::Variant::BareTimer => {
                let $svc = $crate::common::bare_timer::<$body>();
                $run
            }
            $crate::common::Variant::Capture => {
                let $svc = $crate::common::capture::<$body>();
                $run
            }
            $crate::common::Variant::TrackerTimer => {
                let $svc = $crate::common::tracker_timer::<$body>();
                $run
            }
            $crate::common::Variant::IdleExpiryTimer => {
                let $svc = $crate::common::idle_expiry_timer::<$body>();
                $run
            }
        }
    };
}
pub(crate) use with_client;

/// One request of workload `w`, response body read to the end.
pub async fn exchange<W: Workload, S: HttpClient<W::Body>>(svc: &mut S, w: W, uri: &http::Uri) {
    let req = w.request(uri);
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    res.into_body().collect().await.unwrap();
}

/// One request like [`exchange`], returning the size in bytes of the
/// client's response future (moved at least once by whoever awaits it).
pub async fn future_size<W: Workload, S: HttpClient<W::Body>>(
    svc: &mut S,
    w: W,
    uri: &http::Uri,
) -> usize {
    let req = w.request(uri);
    let fut = svc.ready().await.unwrap().call(req);
    let size = std::mem::size_of_val(&fut);
    let res = fut.await.unwrap();
    res.into_body().collect().await.unwrap();
    size
}

/// `n` sequential requests on one client (keep-alive: one connection).
pub async fn sequential<W: Workload, S: HttpClient<W::Body>>(
    svc: &mut S,
    w: W,
    uri: &http::Uri,
    n: usize,
) {
    for _ in 0..n {
        exchange(svc, w, uri).await;
    }
}

/// `concurrency` requests at once (a `JoinSet` of tasks, each with a clone
/// of the client), waited for together.
pub async fn concurrent<W, S>(svc: &S, w: W, uri: &http::Uri, concurrency: usize)
where
    W: Workload,
    S: HttpClient<W::Body, Future: Send>,
{
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let mut svc = svc.clone();
        let uri = uri.clone();
        set.spawn(async move { exchange(&mut svc, w, &uri).await });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

/// Requests sent before anything is counted: the connection, the pool entry,
/// the timer wheel and every lazily built structure exist afterwards.
pub const WARM_UP: usize = 50;

/// `n` requests on `svc`: one after another (`concurrency` 1), or in
/// batches of `concurrency` at once ([`concurrent`]; the last batch takes
/// what is left).
pub async fn run<W, S>(svc: &mut S, w: W, uri: &http::Uri, n: usize, concurrency: usize)
where
    W: Workload,
    S: HttpClient<W::Body, Future: Send>,
{
    if concurrency <= 1 {
        return sequential(svc, w, uri, n).await;
    }
    let mut left = n;
    while left > 0 {
        let batch = left.min(concurrency);
        concurrent(svc, w, uri, batch).await;
        left -= batch;
    }
}

/// Heap allocations (client and server: they share the thread) during `n`
/// requests on `svc` ([`run`] with `concurrency`), after [`WARM_UP`]
/// requests (at least two batches, so that every connection a batch needs
/// exists). `alloc` is the bench's `#[global_allocator]`.
pub async fn count_allocations<W, S>(
    alloc: &'static stats_alloc::StatsAlloc<std::alloc::System>,
    svc: &mut S,
    w: W,
    uri: &http::Uri,
    n: usize,
    concurrency: usize,
) -> usize
where
    W: Workload,
    S: HttpClient<W::Body, Future: Send>,
{
    run(svc, w, uri, WARM_UP.max(2 * concurrency), concurrency).await;
    let region = stats_alloc::Region::new(alloc);
    run(svc, w, uri, n, concurrency).await;
    region.change().allocations
}

/// A current-thread runtime: client and server on one thread, so the numbers
/// are CPU per exchange, not scheduling between cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
