//! Separate send, read and total timeouts, where send and read are *stall*
//! limits, and every timeout says which phase it was.
//!
//! The connect phase is bounded on the connection plane, by
//! [`ConnectTimeoutLayer`](crate::connect_timeout::ConnectTimeoutLayer)
//! around the **connector** (its timeout is this module's [`Elapsed`] with
//! [`Phase::Connect`]). The rest of a request's life is bounded here:
//!
//! * [`PhaseTimeoutLayer`] wraps the **client** (`Service<http::Request<B>>`):
//!   - `send`: fires only after that long with no upload progress, so a
//!     100 MB upload that keeps moving never fails;
//!   - `read`: the wait for the response head, starting when the upload has
//!     finished, then a stall limit between response-body frames, counted
//!     while the body waits for one (errors surface from the body);
//!   - `total`: a deadline through the end of the response body.
//!
//!   A request can change its own limits with a [`PhaseOverride`] extension
//!   (for example, no body stall for server-sent events).
//!
//! Every timeout is an [`Elapsed`] error whose [`phase()`](Elapsed::phase) is
//! a [`Phase`], with the limit, the time elapsed, and the bytes sent and
//! received: counted on the socket when the tracker is on an HTTP/1
//! connection (head and body, a partial response head included), from body
//! frames otherwise (see [`Elapsed::bytes_sent`] and
//! [`Elapsed::bytes_received`]).
//!
//! # How progress is observed
//!
//! With the connection tracker ([`crate::track`]) on the connector, upload
//! progress is real socket bytes written, and the upload counts as finished
//! when hyper has flushed its last byte to the socket. Without it, progress is
//! request-body frames pulled by the connection (frames over [`MAX_FRAME`]
//! are split, zero-copy, so progress stays visible) and the upload counts as
//! finished when the body's last frame was pulled; hyper may still hold up to
//! its write buffer (a few hundred KiB) at that point. A request without a
//! body has finished its upload, without the tracker, when it is handed to
//! its connection.
//!
//! On HTTP/2 (the tracker's [`is_http2`](crate::track::ConnectionState::is_http2))
//! the socket carries every stream of the connection, so its progress says
//! nothing about one request's: a request on a multiplexed connection is
//! judged by its own body frames and its upload ends with its last frame, as
//! without the tracker; one stalled stream neither fails nor hides another.
//! HTTP/1 connections keep the socket-level precision.
//!
//! The send and read clocks start once the request has a connection (known
//! from hyper-util's connection capture, or from the first body frame being
//! pulled); waiting for the pool or the connector is the connect phase,
//! bounded by [`ConnectTimeoutLayer`](crate::connect_timeout::ConnectTimeoutLayer)
//! and `total`. hyper-util fills the
//! capture while its response future is being polled, and wakes nobody, so
//! the layer reads it after every poll of the inner future until it is
//! filled: the clocks start when the request is handed to its connection.
//! An inner service that spawns hyper-util's future onto another task is
//! seen at the layer's next check instead, up to a quarter of the shortest
//! `send`/`read` limit later. Inner services other than hyper-util's client
//! never fill the capture: see the next section.
//!
//! # Over a service that hides its connection
//!
//! Only hyper-util's legacy client fills the connection capture. reqwest
//! (through the `reqwest` module's `ReqwestService`), hyper-util's composable
//! pools, hyper's own connections and wrappers that rebuild the request
//! never do, so the layer cannot see when such a service got its
//! connection. It recognises one when the request leaves with its capture
//! still empty: the request body is asked for its end (hyper asks right
//! before it writes the request head) before any connection was captured,
//! or the inner service lets go of the request's extensions without filling
//! the capture (reqwest drops them in its `call`, hyper's connections once
//! the head is written). hyper-util's client keeps the request until it has
//! a connection and fills the capture before writing, so it is never taken
//! for one: there, waiting for a connection stays the connect phase. Then:
//!
//! * **A request whose body is empty at the call** (`is_end_stream()`, or a
//!   size hint of exactly 0: a `GET`, a `HEAD`) counts as handed to its
//!   connection *at the call*. It has nothing to upload, and its `read`
//!   clock runs from the call, so a bodiless request always has its `read`
//!   limit. That limit then also covers the service's own wait for a
//!   connection (its pool, TCP and TLS), which the layer cannot tell apart:
//!   set `read` above that service's connect timeout.
//! * **A request with a body** shows its connection by its frames: `send`
//!   starts at the first frame the connection pulls (the service's wait for
//!   a connection before that is bounded by its own connect timeout and by
//!   `total`, not by `send`), and `read` when the body has ended (its last
//!   frame pulled; hyper may still hold part of it in its write buffer).
//! * A service that keeps the request, never asks its body and never lets
//!   it go is not recognised (nothing in hyper, hyper-util or reqwest does
//!   that): a bodiless request there is bounded by `total` alone.
//!
//! The layer looks for this only while the capture is empty, at its timer
//! checks: nothing is added to a request on hyper-util's client.
//!
//! # Zero and enormous limits
//!
//! One rule for every phase: a limit of
//! [`Duration::ZERO`](std::time::Duration::ZERO) is already spent, so what it
//! bounds fails at its first poll, without being tried:
//!
//! * `connect`: every connect fails without polling the connector (so a lazy
//!   connector like hyper-util's `HttpConnector` opens no socket);
//! * `send`, `read`, `total`: every request fails without polling the inner
//!   service's future (hyper-util's client sends nothing), with the first
//!   zero phase in request order: send, read, total;
//! * a zero body stall limit (`read_body_stall`): every response body that
//!   has not already ended fails at its first poll.
//!
//! This is deliberate. "Only what is ready on the first poll succeeds" is not
//! deterministic against a live peer: on a multi-threaded runtime a loopback
//! connect was ready on its first poll in about one try in ten, and a whole
//! exchange in about one in eleven, depending on which thread ran first.
//! Like an expired gRPC deadline, a zero computed from a spent budget fails
//! fast and never means "no limit" (that is `None`). Limits too large for the
//! clock (for example `Duration::MAX`) never fire. Neither panics.
//!
//! The per-request path arms one timer and reads atomics when it fires,
//! re-arming if progress happened meanwhile; nothing wakes per byte. Its cost
//! per request is one connection capture (hyper-util's `capture_connection`
//! and the attempt's record, shared with [`retry`](crate::retry) when both
//! are stacked: about 2.8 k instructions and 8 small allocations on
//! loopback, about half of the layer's cost), one tokio timer, one
//! allocation for the request body's side of the watch (its
//! [`RequestBody`](crate::RequestBody) then reports the upload), and one
//! more for a request with a body (its upload progress). The capture
//! is taken for every request, also without a `send` or `read` limit: the
//! request body announces the attempt with it, which makes the tracker's
//! record of the exchange this request's own (and its end this request's
//! end, also while other requests share the connection), and a timed-out
//! or dropped request's connection is poisoned through it. The README's
//! Performance section has the numbers and `cargo bench --bench
//! instructions` measures them.
//!
//! # Which clients
//!
//! [`PhaseTimeoutLayer`] takes requests with any body and hands the service
//! below it the crate's one request body type,
//! [`RequestBody`](crate::RequestBody), which reports the upload's
//! progress (a `RequestBody` from the retry layer above is taken as it is):
//! the service below is a `Service<http::Request<RequestBody>>`.
//!
//! * **hyper-util's legacy `Client`**: everything above. Build it as
//!   `Client<_, RequestBody>`, put
//!   [`ConnectTimeoutLayer`](crate::connect_timeout::ConnectTimeoutLayer)
//!   (and the tracker) around its connector and [`PhaseTimeoutLayer`] around the
//!   client.
//! * **hyper-util's composable pools** (`client::pool`) or any other
//!   `Service<http::Request<B>>`: [`PhaseTimeoutLayer`] wraps them the same
//!   way, but they do not fill hyper-util's connection capture, so progress
//!   comes from request-body frames and a bodiless request's `read` runs
//!   from the call (see above); `ConnectTimeoutLayer` wraps whatever makes
//!   their connections.
//! * **reqwest**: `ConnectTimeoutLayer` goes into
//!   `ClientBuilder::connector_layer` (its timeout stays
//!   `reqwest::Error::is_timeout()`); [`PhaseTimeoutLayer`] wraps the client
//!   through the `reqwest` module's `ReqwestService` (feature `reqwest`),
//!   with progress from request-body frames and the rules of a service
//!   that hides its connection (above). See that module's docs and
//!   `examples/reqwest.rs`.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::client::legacy::{connect::HttpConnector, Client};
//! use hyper_util::rt::TokioExecutor;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_conn_lifecycle::connect_timeout::ConnectTimeoutLayer;
//! use tower_conn_lifecycle::phase_timeout::{Elapsed, Phase, PhaseTimeoutLayer};
//! use tower_conn_lifecycle::track::TrackConnectionsLayer;
//! use tower_conn_lifecycle::{error_chain, find_cause, RequestBody};
//!
//! # async fn run() -> Result<(), tower_conn_lifecycle::BoxError> {
//! let connector = ServiceBuilder::new()
//!     .layer(ConnectTimeoutLayer::new(Duration::from_secs(1)))
//!     .layer(TrackConnectionsLayer::new())
//!     .service(HttpConnector::new());
//! let client = Client::builder(TokioExecutor::new())
//!     .build::<_, RequestBody>(connector);
//! let client = ServiceBuilder::new()
//!     .layer(
//!         PhaseTimeoutLayer::new()
//!             .send(Duration::from_secs(1))
//!             .read(Duration::from_secs(5)),
//!     )
//!     .service(client);
//!
//! let body = Full::new(Bytes::from(vec![0u8; 100 << 20]));
//! let req = http::Request::post("http://127.0.0.1:8080/upload").body(body)?;
//! match client.oneshot(req).await {
//!     Ok(res) => println!("{}", res.into_body().collect().await?.to_bytes().len()),
//!     // `find_cause`, not `downcast_ref`: whatever wraps the timeout (the
//!     // retry layer, hyper-util, an `io::Error`), it finds it.
//!     Err(e) => match find_cause::<Elapsed>(e.as_ref()) {
//!         Some(t) if t.phase() == Phase::Send => eprintln!("upload stalled: {t}"),
//!         _ => eprintln!("{}", error_chain(e.as_ref())),
//!     },
//! }
//! # Ok(())
//! # }
//! ```

pub(crate) mod body;
mod error;
pub mod future;
mod layer;
mod service;

pub use body::{ResponseBody, MAX_FRAME};
pub(crate) use error::Waiting;
pub use error::{Elapsed, Phase};
pub use layer::{PhaseOverride, PhaseTimeoutLayer};
pub use service::PhaseTimeout;

#[cfg(test)]
mod tests;
