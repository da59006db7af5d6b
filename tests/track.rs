//! The connection tracker against a real hyper server on 127.0.0.1
//! (`testing::HyperServer`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_conn_lifecycle::testing::HyperServer;
use tower_conn_lifecycle::track::{
    ConnectionCapture, ConnectionInfo, ConnectionInfoLayer, ConnectionState, TrackConnectionsLayer,
};

#[tokio::test]
async fn connection_info_tells_reuse_and_idle_time() {
    let server = HyperServer::start().await.unwrap();
    let addr = server.addr();
    let track = TrackConnectionsLayer::new();
    let stats = track.stats();
    let connector = ServiceBuilder::new()
        .layer(track)
        .service(HttpConnector::new());
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    let client = ServiceBuilder::new()
        .layer(ConnectionInfoLayer::new())
        .service(client);

    let mut infos = Vec::new();
    for (i, size) in [1000usize, 200_000].into_iter().enumerate() {
        if i > 0 {
            // Leave the connection idle for a while so there is idle time to
            // report (the assertion below is on the reported value, > 0).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut req = http::Request::post(format!("http://{addr}/"))
            .body(Full::new(Bytes::from(vec![b'x'; size])))
            .unwrap();
        let capture = ConnectionCapture::get_or_insert(&mut req);
        // A second call shares the same capture instead of replacing it.
        let again = ConnectionCapture::get_or_insert(&mut req);
        let res = client.clone().oneshot(req).await.unwrap();
        let info = *res
            .extensions()
            .get::<ConnectionInfo>()
            .expect("layer inserts it");
        assert_eq!(ConnectionInfo::of(&res), Some(info));
        let state = res.extensions().get::<ConnectionState>().unwrap().clone();
        assert_eq!(capture.state().unwrap().id(), state.id());
        assert_eq!(again.state().unwrap().id(), state.id());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, size.to_string());
        infos.push((info, state));
    }
    let (first, state1) = &infos[0];
    let (second, state2) = &infos[1];
    assert!(!first.is_reused());
    assert_eq!(first.request_number(), 1);
    assert_eq!(first.idle_before(), Duration::ZERO);
    assert!(second.is_reused());
    assert_eq!(second.request_number(), 2);
    assert!(
        second.idle_before() >= Duration::from_millis(40),
        "{second:?}"
    );
    assert_eq!(first.connection_id(), second.connection_id());
    assert_eq!(state1.id(), state2.id());
    assert!(first.time_to_first_byte().is_some());
    assert!(second.upload_duration().unwrap() <= second.time_to_first_byte().unwrap());
    // Socket byte counts include both bodies plus heads.
    assert!(state2.bytes_written() > 201_000);
    assert!(state2.bytes_read() > 0);
    // Server-side facts: one connection, two requests.
    assert_eq!(server.connections(), 1);
    assert_eq!(server.requests(), 2);
    assert_eq!(server.bytes_read(), 201_000);
    assert_eq!(stats.opened(), 1);
    assert_eq!(stats.open_now(), 1);
    drop(client);
    drop(infos);
}

#[tokio::test]
async fn state_is_dropped_with_the_connection() {
    let server = HyperServer::start().await.unwrap();
    let addr = server.addr();
    let track = TrackConnectionsLayer::new();
    let stats = track.stats();
    let connector = ServiceBuilder::new()
        .layer(track)
        .service(HttpConnector::new());
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build::<_, Full<Bytes>>(connector);
    let res = client
        .get(format!("http://{addr}/").parse().unwrap())
        .await
        .unwrap();
    let state = res.extensions().get::<ConnectionState>().unwrap().clone();
    res.into_body().collect().await.unwrap();
    // With no idle pooling, the connection closes once the exchange ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !state.is_closed() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(state.is_closed());
    assert_eq!(stats.open_now(), 0);
    assert_eq!(stats.opened(), 1);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn in_flight_ends_with_the_response_body_under_phase_timeout() {
    use tower_conn_lifecycle::phase_timeout::{PhaseTimeoutLayer, RequestBody};

    let server = HyperServer::start().await.unwrap();
    let connector = ServiceBuilder::new()
        .layer(TrackConnectionsLayer::new())
        .service(HttpConnector::new());
    let client =
        Client::builder(TokioExecutor::new()).build::<_, RequestBody<Full<Bytes>>>(connector);
    let client = ServiceBuilder::new()
        .layer(PhaseTimeoutLayer::new().read(Duration::from_secs(5)))
        .service(client);
    for n in 1..=2u64 {
        let req = http::Request::post(server.url())
            .body(Full::new(Bytes::from_static(b"abc")))
            .unwrap();
        let res = client.clone().oneshot(req).await.unwrap();
        let state = res.extensions().get::<ConnectionState>().unwrap().clone();
        // The head has arrived; the body has not been read yet.
        assert!(state.in_flight());
        assert_eq!(state.requests(), n);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "3");
        assert!(!state.in_flight(), "request {n}: the body ended");
    }
    assert_eq!(server.connections(), 1);
    assert_eq!(server.requests(), 2);
}
