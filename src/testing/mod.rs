//! Real loopback servers that misbehave on purpose, for testing HTTP
//! clients and this crate's layers against real sockets and real TCP.
//!
//! Every server binds `127.0.0.1:0` (and never any other address), starts
//! with an async constructor returning [`std::io::Result`], exposes its
//! `addr()` and `url()`, and keeps server-side counters (connections,
//! requests, bytes) that a test can read at any time to assert what really
//! reached the server. Dropping a server stops its accept loop and every
//! connection it is serving; the sockets close on the runtime right after
//! the drop. Servers never panic on bad input: a malformed request just
//! ends its connection.
//!
//! | Server | What it does | Use it to test |
//! |---|---|---|
//! | [`IdleClosingServer`] | keep-alive, closes a connection idle for exactly `idle_timeout` (Go's `IdleTimeout`) or slightly after it, optional `Keep-Alive: timeout=N` header; closes every idle connection on demand (a reload); its timeout can change while running | the stale keep-alive race, idle expiry and learning, retries; counts requests by method and `Idempotency-Key` |
//! | [`ThrottledReader`] | reads request bodies at N bytes/s, answers with the count | send/stall timeouts against slow but moving uploads |
//! | [`StopReadingServer`] | stops reading after N body bytes, never answers | send timeouts against a zero window |
//! | [`SilentServer`] | reads each request completely, never answers | waiting for the response head |
//! | [`StalledBodyServer`] | sends a head with a large `Content-Length`, maybe a few bytes, then stalls | read stall timeouts on the body |
//! | [`SlowBodyServer`] | trickles a body in chunks at an interval | stall timeouts that must not fire, total deadlines that must |
//! | [`Blackhole`] | a port whose TCP connects never complete | connect timeouts |
//! | [`HyperServer`] | a well-behaved hyper HTTP/1.1 server that answers with the body's byte count | baselines: reuse, tracking, benchmarks |
//! | [`ResetServer`] | resets (TCP RST) chosen requests' connections after N bytes of the request, or after part of the response head | fresh-connection failures, stale reused connections, "response started" |
//! | [`Http2FaultServer`] | cleartext HTTP/2; refuses the first N streams with `REFUSED_STREAM`, or sends `GOAWAY` after the k-th stream of its first connection | HTTP/2 retry rules; counts request bodies as keys |
//!
//! [`SeedWorkload`] drives the stale keep-alive race itself: tasks with their
//! own clients sending sequential requests with gaps scaled to a server's idle
//! timeout, reporting every request's outcome and connection.
//!
//! Requests are read with a small HTTP/1.1 reader (heads up to 64 KiB,
//! bodies by `Content-Length` or chunked); responses are `200 OK` with a
//! `Content-Length`. [`HyperServer`] is hyper's own server, for a baseline
//! peer; [`Http2FaultServer`] speaks HTTP/2 frames (prior knowledge, no
//! TLS); every other server speaks only HTTP/1.1 (and 1.0).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tower_conn_lifecycle::testing::IdleClosingServer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let server = IdleClosingServer::start(Duration::from_millis(100)).await?;
//! assert!(server.url().starts_with("http://127.0.0.1:"));
//!
//! let mut stream = tokio::net::TcpStream::connect(server.addr()).await?;
//! stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").await?;
//! let mut response = Vec::new();
//! // The server answers, then closes the idle connection after 100 ms.
//! stream.read_to_end(&mut response).await?;
//! assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"));
//! assert_eq!((server.requests(), server.idle_closes()), (1, 1));
//! # Ok(())
//! # }
//! ```

mod blackhole;
mod faults;
mod http1;
mod http2;
mod hyper_server;
mod idle;
mod keys;
mod reset;
mod seed;
mod server;
mod throttle;

pub use blackhole::Blackhole;
pub use faults::{
    SilentServer, SlowBodyServer, StalledBodyServer, StalledBodyServerBuilder, StopReadingServer,
};
pub use http2::{Http2FaultServer, Http2FaultServerBuilder};
pub use hyper_server::HyperServer;
pub use idle::{IdleClosingServer, IdleClosingServerBuilder};
pub use reset::{ResetServer, ResetServerBuilder};
pub use seed::{Rng, Sample, SeedReport, SeedTimeout, SeedWorkload};
pub use throttle::{ThrottledReader, ThrottledReaderBuilder};
