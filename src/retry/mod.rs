//! Retry a request only when its failure proves the retry safe — never
//! duplicate a POST.
//!
//! A keep-alive connection the server is closing fails the next request
//! written on it with `connection reset by peer` or hyper's
//! `IncompleteMessage` (the stale keep-alive race). hyper-util retries only
//! requests it never wrote; retrying everything else blindly duplicates any
//! request the server did process. [`RetryOnStaleConnectionLayer`] retries
//! by the rules of Go's `Transport` and RFC 9113 §8.7, deciding from what
//! the connection tracker ([`crate::track`]) saw on the wire for *this*
//! attempt: whether the connection was reused, and how many bytes of the
//! request and of the response crossed it.
//!
//! # The rules
//!
//! First match wins (the predicate is `classify.rs`, tested row by row):
//!
//! | The failure | Retried? |
//! |---|---|
//! | any timeout (send, read, total, hyper's, `io::ErrorKind::TimedOut`) | never ([`Rule::Timeout`]), unless the tracker saw the attempt write nothing on a connection that is now closed |
//! | connect-phase [`Elapsed`](crate::phase_timeout::Elapsed) | only with [`retry_connect_timeouts`](RetryOnStaleConnectionLayer::retry_connect_timeouts) |
//! | nothing written: [`ConnectionExpired`](crate::track::ConnectionExpired), hyper's "canceled" | always, any method |
//! | HTTP/2 `REFUSED_STREAM`; graceful `GOAWAY` above the stream | always, any method |
//! | the client is draining ([`Draining`](crate::drain::Draining), nothing written) or cut the request at its deadline ([`DrainCut`](crate::drain::DrainCut)) | never on this client ([`Rule::Draining`]): send it elsewhere |
//! | the connection could not be established | never ([`Rule::ConnectFailed`]) |
//! | not a connection failure (protocol, body, user errors) | never ([`Rule::NotConnectionFailure`]) |
//! | reset / EOF / broken pipe, and the tracker proves no byte of this request was written | always, any method |
//! | … after any response byte arrived since this request began (a `100 Continue`, a `103 Early Hints`, part of a head or an early final response count) | never ([`Rule::ResponseStarted`]) |
//! | … on a new connection | never ([`Rule::FreshConnection`]: a real error) |
//! | … on a reused connection, before any response byte | idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) or an [`Idempotency-Key`](IDEMPOTENCY_KEY) header; otherwise never ([`Rule::NotIdempotent`]) |
//!
//! A failure the rules allow is then retried only if the body can be sent
//! again ([`Rule::BodyNotReplayable`]), fewer than
//! [`max_retries`](RetryOnStaleConnectionLayer::max_retries) retries were
//! made (default 1, [`Rule::RetriesExhausted`]) and the optional budget
//! allows it ([`Rule::BudgetExhausted`]). A stream an HTTP/2 server refused
//! unprocessed (`REFUSED_STREAM`, or above a graceful `GOAWAY`'s last
//! stream) is retried beyond `max_retries`, up to [`UNPROCESSED_RETRIES`]
//! more (they come in runs after a `GOAWAY`; `max_retries(0)` still never
//! retries). A retry is sent at once (with a
//! fresh connection capture if the failed attempt had one), and logged as a
//! `tracing` debug event; a
//! response that needed retries carries a [`Retried`] extension (how many,
//! and each [`RetryReason`]). Every error of the response future is a
//! [`NotRetried`]: its [`rule()`](NotRetried::rule) says why no retry was
//! made, its `source()` is the last attempt's error, and its display says
//! what happened first and why it was not retried only where a retry was in
//! question, e.g. `POST http://10.0.0.7:8080: connection closed before
//! message completed; not retried: not idempotent, no Idempotency-Key
//! (reused connection)` or `GET http://10.0.0.7:8080: read timed out after
//! 5s: …`. Errors of the response *body* are not wrapped (nothing can be
//! retried once a response was returned).
//!
//! # What the tracker's record proves
//!
//! Each attempt is one request handed to one connection. When the stack has
//! [`PhaseTimeout`](crate::phase_timeout) below this layer (the one-call
//! client does), its request body announces the attempt on hyper's
//! connection task, right before hyper writes the request head, and the
//! connection's tracker opens it at the head's first write (the pairing is
//! checked against the request's connection capture before the layer
//! trusts it), so the record holds exactly what *this* request did on the wire, however
//! its reads and writes interleave (a 1xx or an early answer during an
//! upload is the same attempt). "No byte written" is trusted only when:
//!
//! * the request was announced and its record shows no byte accepted by
//!   the connection, with no write that failed inside an IO that can fail
//!   after partial progress (a TLS stream: such a record is *inexact* and
//!   proves nothing; a plain TCP socket's failed write wrote nothing);
//! * or hyper-util handed the request to a connection and it never
//!   announced itself (hyper never took it to write).
//!
//! Without PhaseTimeout, this layer's own capture makes a request **with a
//! body** announce its attempt the same way. Without the announcing body
//! (a bodiless request with the tracker alone under this layer) the
//! tracker infers exchanges from the order of reads and writes; a record
//! inferred while the previous exchange was still open is inexact and the
//! layer then treats the wire as unknown (below).
//!
//! # Without the tracker
//!
//! Around reqwest (whose connections the tracker cannot wrap), around
//! hyper-util's composable pools (which fill no connection capture), or
//! with a connector that is not tracked, the layer sees only the error
//! chain. The timeout, nothing-written, HTTP/2, connect and
//! not-a-connection-failure rows stay exact. For a reset / EOF / broken
//! pipe, what is lost:
//!
//! * **reuse**: a failure on a *new* connection is retried too (once, for
//!   an idempotent or keyed request) instead of being returned as a real
//!   error ([`RetryReason::ConnectionClosed`]);
//! * **response bytes**: "before any response byte" becomes "before a
//!   complete response head" (a failure inside the body always reaches the
//!   caller through the body, never this layer);
//! * **nothing written**: a write that failed before its first byte counts
//!   as written, so a POST without a key is not retried
//!   ([`Rule::NotIdempotent`], its message says reuse was unknown).
//!
//! HTTP/2 connections are treated the same way even with the tracker (its
//! exchange counting there is approximate: bytes belong to the connection,
//! not the stream); on HTTP/2 the exact rules are `REFUSED_STREAM`,
//! `GOAWAY` and "canceled".
//!
//! # Request bodies
//!
//! The layer takes requests with any body and hands the service below it a
//! [`RequestBody`](crate::RequestBody) (hyper-util's client below it is a
//! `Client<_, RequestBody>`, whatever else is stacked):
//!
//! * a cheap-to-clone body (`Full<Bytes>`, `Empty<Bytes>`, `String`, …) is
//!   sent again by cloning, whatever its size;
//! * any other body (a streamed upload: `StreamBody`, a channel, your own
//!   [`Body`](http_body::Body)) goes through a replay buffer that keeps at
//!   most one copy of up to [`DEFAULT_REPLAY_LIMIT`] (64 KiB,
//!   [configurable](RetryOnStaleConnectionLayer::replay_limit)) for
//!   replays. A body that goes past the limit is sent on unbuffered and is
//!   not retried once read ([`Rule::BodyNotReplayable`]); one nothing has
//!   been read from yet (a refusal before the first byte) is replayed
//!   whatever its size. A body that failed is never replayed.
//!
//! # Where it goes
//!
//! Outermost on the request plane, so each attempt gets its own timeouts
//! and tracking:
//!
//! ```text
//! RetryOnStaleConnection → PhaseTimeout → hyper_util Client(TrackConnections(HttpConnector))
//! ```
//!
//! [`PhaseTimeout`](crate::phase_timeout) *above* this layer works too
//! (both take any body and hand a [`RequestBody`](crate::RequestBody)
//! on): its limits then bound the request with all its attempts rather
//! than each attempt, so a timeout never reaches this layer and is never
//! retried, and a retried attempt's upload is judged by its body frames
//! (the socket it watches is the first attempt's).
//!
//! * **hyper-util's legacy `Client`**: everything above, with
//!   [`TrackConnectionsLayer`](crate::track::TrackConnectionsLayer) on its
//!   connector.
//! * **hyper-util's composable pools** or any other `Clone` HTTP service:
//!   works, with the untracked rules.
//! * **reqwest**: through an adapter to `tower::Service<http::Request<_>>`,
//!   with the untracked rules.
//!
//! Dropping the response future abandons the attempt in flight: with the
//! tracker, its connection is closed rather than left writing a request
//! nobody waits for (through the attempt's connection capture, which every
//! request with a body takes; a bodiless request's connection is closed by
//! hyper itself once its response future is gone). The layer drives tower's [`Policy`](tower::retry::Policy)
//! with its own future instead of `tower::retry::Retry` for that reason:
//! tower's future hides the attempt in flight.
//!
//! # What it costs
//!
//! The layer keeps a copy of the request for a retry (an extension-less
//! `GET` copies only its URI), runs tower's retry policy and marks the end
//! of the response's exchange: about 1.1 k instructions and no allocation
//! per request (but, for a request with a body, a streamed body's replay
//! buffer and the box its announcing record lives in, which a PhaseTimeout
//! below would make anyway) on loopback (`cargo bench --bench instructions -- retry`,
//! about +5 % over a bare hyper-util client for a `GET`; the README's Performance
//! section).
//!
//! hyper-util's connection capture (about 2.8 k instructions and 8 small
//! allocations, [`ConnectionCapture`](crate::track::ConnectionCapture)) is
//! taken only where it is needed, and shared with the layers below:
//!
//! * for a request **with a body**: the body announces the attempt to its
//!   connection through it, as under PhaseTimeout (the tracker's exact
//!   record), and an upload the caller gives up on is abandoned through it
//!   (with the tracker, its connection is closed at once; hyper alone would
//!   write the rest), also without PhaseTimeout, and also when the caller
//!   drops an early final response (a `413` mid-upload);
//! * when the caller put one on the request: it is the first attempt's
//!   record (and each retry gets a fresh one).
//!
//! A **bodiless** request takes none here. With PhaseTimeout below (which
//! takes one for every request and announces the attempt with it) nothing
//! is lost: a timeout carries that capture, and a failure of hyper-util's
//! client is judged by the connection the error names (hyper-util's
//! `connect_info`, which carries the tracker's state), whose latest exchange
//! is the attempt's own record whenever it wrote anything, as hyper writes
//! one request at a time on an HTTP/1 connection and the tracker opens an
//! exchange at a request's first write. Alone over the client, the layer
//! judged bodiless requests that way before too (a capture no request body
//! announces adds nothing to the error's connection), and a bodiless
//! request given up before its response head has its connection closed by
//! hyper itself (its dispatcher sees the response future gone).
//!
//! # Example
//!
//! ```
//! use hyper_util::client::legacy::{connect::HttpConnector, Client};
//! use hyper_util::rt::TokioExecutor;
//! use tower::ServiceBuilder;
//! use tower_conn_lifecycle::retry::RetryOnStaleConnectionLayer;
//! use tower_conn_lifecycle::track::TrackConnectionsLayer;
//! use tower_conn_lifecycle::RequestBody;
//!
//! let connector = ServiceBuilder::new()
//!     .layer(TrackConnectionsLayer::new())
//!     .service(HttpConnector::new());
//! let client = Client::builder(TokioExecutor::new()).build::<_, RequestBody>(connector);
//! let client = ServiceBuilder::new()
//!     .layer(RetryOnStaleConnectionLayer::new())
//!     .service(client);
//! # let _ = client;
//! ```
//!
//! Telling a refused retry from the rest:
//!
//! ```no_run
//! # use bytes::Bytes;
//! # use http_body_util::Full;
//! # use hyper_util::client::legacy::{connect::HttpConnector, Client};
//! # use hyper_util::rt::TokioExecutor;
//! use tower::ServiceExt;
//! use tower_conn_lifecycle::find_cause;
//! use tower_conn_lifecycle::retry::{NotRetried, Retried, RetryOnStaleConnectionLayer, Rule};
//! # async fn run() -> Result<(), tower_conn_lifecycle::BoxError> {
//! # let client = Client::builder(TokioExecutor::new()).build::<_, tower_conn_lifecycle::RequestBody>(HttpConnector::new());
//! # let client = tower::ServiceBuilder::new().layer(RetryOnStaleConnectionLayer::new()).service(client);
//!
//! let req = http::Request::post("http://127.0.0.1:8080/orders")
//!     .header("Idempotency-Key", "order-7f3a")
//!     .body(Full::new(Bytes::from_static(b"{}")))?;
//! match client.oneshot(req).await {
//!     Ok(res) => {
//!         if let Some(r) = res.extensions().get::<Retried>() {
//!             println!("ok after {} retries", r.count());
//!         }
//!     }
//!     Err(e) => match find_cause::<NotRetried>(e.as_ref()) {
//!         Some(n) if n.rule() == Rule::ResponseStarted => eprintln!("server failed mid-response: {e}"),
//!         _ => eprintln!("{e}"),
//!     },
//! }
//! # Ok(())
//! # }
//! ```

mod classify;
mod error;
pub mod future;
mod layer;
mod policy;
pub(crate) mod replay;
mod service;

pub use classify::{RetryReason, Rule, IDEMPOTENCY_KEY};
pub use error::NotRetried;
pub use layer::RetryOnStaleConnectionLayer;
pub use policy::{Retried, UNPROCESSED_RETRIES};
pub use replay::DEFAULT_REPLAY_LIMIT;
pub use service::RetryOnStaleConnection;

#[cfg(test)]
mod tests;
