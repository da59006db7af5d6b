//! The clients and the request loop shared by the overhead benchmarks.
#![allow(dead_code)]

use std::fmt::Debug;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_conn_lifecycle::phase_timeout::{PhaseTimeoutLayer, RequestBody};
use tower_conn_lifecycle::track::{TrackConnections, TrackConnectionsLayer};

/// The clients compared, all sending `GET` with an empty body.
pub trait GetClient:
    Service<http::Request<Empty<Bytes>>, Response = http::Response<Self::Body>, Error = Self::Err>
    + Clone
    + Send
    + 'static
{
    type Body: http_body::Body<Error: Debug, Data: Send> + Send;
    type Err: Debug;
}

impl<S, B> GetClient for S
where
    S: Service<http::Request<Empty<Bytes>>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Error: Debug,
    B: http_body::Body<Error: Debug, Data: Send> + Send,
{
    type Body = B;
    type Err = S::Error;
}

/// All phases on, with limits that never fire on loopback.
fn phases() -> PhaseTimeoutLayer {
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
pub fn bare() -> impl GetClient<Future: Send> {
    Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(HttpConnector::new())
}

/// The tracker on the connector, nothing on the request plane.
pub fn tracker_only() -> impl GetClient<Future: Send> {
    Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(tracked())
}

/// PhaseTimeout without the tracker.
pub fn phase_timeout_only() -> impl GetClient<Future: Send> {
    ServiceBuilder::new().layer(phases()).service(
        Client::builder(TokioExecutor::new())
            .build::<_, RequestBody<Empty<Bytes>>>(HttpConnector::new()),
    )
}

/// The tracker and PhaseTimeout, all phases on.
pub fn tracker_and_phase_timeout() -> impl GetClient<Future: Send> {
    ServiceBuilder::new().layer(phases()).service(
        Client::builder(TokioExecutor::new()).build::<_, RequestBody<Empty<Bytes>>>(tracked()),
    )
}

/// The tracker and IdleExpiry (a 90 s expiry: never fires on this workload,
/// so the cost measured is the bookkeeping on every response).
pub fn tracker_and_idle_expiry() -> impl GetClient<Future: Send> {
    ServiceBuilder::new()
        .layer(tower_conn_lifecycle::idle_expiry::IdleExpiryLayer::new(
            Duration::from_secs(90),
        ))
        .service(Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(tracked()))
}

/// One keep-alive GET, body read to the end.
pub async fn get<S: GetClient>(svc: &mut S, uri: &http::Uri) {
    let req = http::Request::get(uri.clone()).body(Empty::new()).unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    res.into_body().collect().await.unwrap();
}
