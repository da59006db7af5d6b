//! This crate's layers with [reqwest](https://docs.rs/reqwest): what fits,
//! where, and what does not.
//!
//! reqwest runs hyper-util's legacy client inside, but seals it: a
//! `connector_layer` service must return reqwest's own connection type, and
//! the IO inside it cannot be wrapped or replaced. So a reqwest client gets
//! three things from this crate:
//!
//! 1. **[`ConnectTimeoutLayer`](crate::connect_timeout::ConnectTimeoutLayer)
//!    in `ClientBuilder::connector_layer`**: a connect deadline (TCP, proxy
//!    and TLS handshake) separate from the request's. Its timeout is an
//!    `io::Error` of kind `TimedOut` carrying an
//!    [`Elapsed`](crate::phase_timeout::Elapsed), so
//!    `reqwest::Error::is_timeout()` (and `is_connect()`) stay `true` and
//!    [`find_cause::<Elapsed>`](crate::find_cause) names the phase.
//! 2. **The shared rustls configuration**
//!    (`ClientBuilderExt::shared_tls`, with the `reqwest-rustls` feature):
//!    building a client loads no certificates, and every client resumes the
//!    others' TLS sessions.
//! 3. **Request-plane layers through [`ReqwestService`]**, which makes a
//!    `reqwest::Client` a `tower::Service<http::Request<B>>`:
//!    [`PhaseTimeoutLayer`](crate::phase_timeout::PhaseTimeoutLayer) works
//!    over it in body-progress mode (see below).
//!
//! # What reqwest users cannot get
//!
//! Because the connection IO is sealed, neither the connection tracker
//! ([`TrackConnectionsLayer`](crate::track::TrackConnectionsLayer)) nor
//! anything built on it can see reqwest's connections:
//!
//! * **No [`IdleExpiry`](crate::idle_expiry)**: nothing can refuse or close
//!   a pooled reqwest connection that is about to go stale, learn
//!   `Keep-Alive: timeout=N`, or learn a server's idle timeout. Instead set
//!   reqwest's `pool_idle_timeout` below the server's idle timeout (it costs
//!   the reuse of connections idle for longer), and put
//!   [`RetryOnStaleConnectionLayer`](crate::retry::RetryOnStaleConnectionLayer)
//!   over [`ReqwestService`], where it decides from error chains alone (see
//!   [its docs](crate::retry#without-the-tracker)): a request that failed on
//!   a closed connection before a complete response head is retried only if
//!   it is idempotent or carries an `Idempotency-Key`, since without the
//!   tracker it cannot know whether the connection was reused or whether
//!   anything was written; a POST without a key is never retried.
//! * **No [`ConnectionInfo`](crate::track::ConnectionInfo)** and no socket
//!   byte counts: reqwest also drops request extensions before they reach
//!   hyper, so hyper-util's connection capture stays empty.
//! * **PhaseTimeout measures body frames, not the socket.** Upload progress
//!   is request-body frames pulled by the connection, and the upload counts
//!   as finished when its last frame was pulled (hyper may still be writing
//!   its buffer): `send` starts at the first frame pulled and `read` when
//!   the body ended. A request **without a body** never shows when it got
//!   its connection, so its `read` (response-head) limit runs from the call
//!   (the layer knows reqwest hides the connection: it drops the request's
//!   extensions): it then includes reqwest's wait for a connection, so set
//!   it above the connect timeout. The body stall limit and `total` work as
//!   everywhere. See
//!   [PhaseTimeout over a service that hides its connection](crate::phase_timeout#over-a-service-that-hides-its-connection).
//!
//! reqwest's own `timeout`, `read_timeout` and `connect_timeout` can stay
//! set alongside; they fail with reqwest's unnamed timeout error.
//!
//! # Features
//!
//! This module needs the `reqwest` feature, which adds reqwest with its
//! default features off (no TLS, no system proxy lookup, no charset
//! decoding; `http2` on): whatever TLS your own reqwest has is unchanged,
//! also with this crate's `tls` feature.
//!
//! `ClientBuilderExt` (the shared configuration in reqwest's builder) needs
//! reqwest's rustls backend, so it comes with its own feature,
//! `reqwest-rustls`, which turns on reqwest's `rustls-no-provider` for every
//! reqwest 0.13 in the graph. If your reqwest keeps its default `rustls`
//! feature, that changes nothing (aws-lc-rs stays its provider). If your
//! reqwest had no TLS, it now has rustls without a provider: a client that
//! builds its **own** TLS configuration (`reqwest::Client::new()`, even for
//! `http://`) then needs a process default, and reqwest's `build()` panics
//! without one. So with `reqwest-rustls`, give every builder
//! `shared_tls` or `tls_config`, or install a provider once at start-up
//! (`rustls::crypto::aws_lc_rs::default_provider().install_default()`).
#![cfg_attr(
    feature = "reqwest-rustls",
    doc = r#"
# Example

```no_run
use std::time::Duration;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_conn_lifecycle::connect_timeout::ConnectTimeoutLayer;
use tower_conn_lifecycle::phase_timeout::{Elapsed, PhaseTimeoutLayer};
use tower_conn_lifecycle::reqwest::{ClientBuilderExt, ReqwestService};

# async fn run() -> Result<(), tower_conn_lifecycle::BoxError> {
let client = reqwest::Client::builder()
    .shared_tls()?
    .connector_layer(ConnectTimeoutLayer::new(Duration::from_secs(1)))
    .pool_idle_timeout(Duration::from_secs(30))
    .build()?;

// reqwest's own API: a connect timeout is still `is_timeout()`.
match client.get("https://example.com/").send().await {
    Err(err) if err.is_timeout() => match tower_conn_lifecycle::find_cause::<Elapsed>(&err) {
        Some(e) => eprintln!("{} phase timed out", e.phase()),
        None => eprintln!("reqwest's own timeout"),
    },
    other => println!("{:?}", other.map(|res| res.status())),
}

// The tower API, with separate send and read limits for uploads.
let svc = ServiceBuilder::new()
    .layer(PhaseTimeoutLayer::new().send(Duration::from_secs(2)).read(Duration::from_secs(10)))
    .service(ReqwestService::new(client));
let req = http::Request::post("https://example.com/upload")
    .body(Full::new(Bytes::from(vec![0u8; 10 << 20])))?;
let res = svc.oneshot(req).await?;
println!("{} {:?}", res.status(), res.into_body().collect().await?.to_bytes());
# Ok(())
# }
```
"#
)]

mod service;
#[cfg(feature = "reqwest-rustls")]
mod tls;

pub use service::ReqwestService;
#[cfg(feature = "reqwest-rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest-rustls")))]
pub use tls::ClientBuilderExt;
