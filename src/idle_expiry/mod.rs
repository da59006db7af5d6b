//! Idle expiry: never write a request on a keep-alive connection the server
//! is about to close.
//!
//! A server closes a keep-alive connection after it has been idle for its
//! idle timeout (Go's `IdleTimeout`, Apache's and Node's 5 s, nginx's 75 s,
//! load balancers' 60 s). A client that reuses the connection at nearly that
//! moment writes onto a socket being closed and gets `connection reset by
//! peer` or hyper's `IncompleteMessage`. [`IdleExpiryLayer`] makes the client
//! close such connections first, and only those:
//!
//! * **Idle is measured on the wire**: from the last byte read of the
//!   previous response (the tracker's
//!   [`idle_since`](crate::track::ConnectionState::idle_since)), which is
//!   when the server's idle clock started, not from when the caller finished
//!   reading the body (nor, when the end of a response sat in the socket
//!   buffer until a slow reader drained it, from the drain).
//! * **Closed from the read side, before anything is written.** The
//!   tracker's IO arms a timer when its connection becomes known idle and
//!   returns EOF to hyper at the expiry, so hyper closes it and hyper-util's
//!   pool drops it silently; hyper-util transparently retries a request that
//!   was about to use it on a new connection. The same check runs whenever
//!   hyper polls the idle connection. As a last resort, a write on a
//!   connection left unpolled well past its expiry (more than 25 ms: a
//!   request hyper checked a moment before the deadline is still written, the
//!   margin below the server's timeout covers it) is refused before its first
//!   byte with [`ConnectionExpired`](crate::track::ConnectionExpired), which is always safe to retry.
//! * **A live response is never cut**: only a connection whose previous
//!   response has ended is ever closed, however long a streaming response
//!   pauses between chunks.
//! * **Announced limits**: a response's `Keep-Alive: timeout=N` lowers its
//!   connection's expiry to `N` minus a margin (the larger of
//!   [`DEFAULT_MARGIN`] and twice the connection's measured round trip), so
//!   a `timeout=1` server still gets reuse below about 950 ms. This is safe
//!   although the server's clock starts when it *wrote* its last byte, a
//!   little before the client read it: that head start is at most half a
//!   round trip, and the request needs another half to arrive, both covered
//!   by the margin. `Connection: close` means no reuse. Malformed or absurd
//!   values are ignored by a documented rule (see the `hint` rules below).
//! * **Learned limits**: most servers announce nothing. The tracker sees the
//!   server's FIN on idle pooled connections, and the requests on reused
//!   connections that fail before any response byte (the race, lost), with
//!   how long the connection had been idle; the layer learns each origin's
//!   idle timeout from those closes and expires that origin's connections a
//!   margin before it, with no configuration. A close that is not the idle
//!   timeout (a reload, a scale-in, a resume from suspend) never collapses
//!   reuse. The rule, its bound and its worst case are below.
//! * **Optional limits**: [`max_age`](IdleExpiryLayer::max_age) and
//!   [`max_requests`](IdleExpiryLayer::max_requests), applied at the same
//!   idle point (never mid-response).
//!
//! The effective expiry of a connection is the smallest of the configured
//! expiry, the announced timeout minus the margin, and the learned timeout
//! minus the margin (never less than half the learned timeout); zero means
//! the connection is not reused, and only the configuration, `Connection:
//! close`, `Keep-Alive: timeout=0` and request limits can make it zero.
//!
//! # Reading `Keep-Alive`
//!
//! Every `Keep-Alive` header line and every comma-separated parameter is
//! read; names are case-insensitive and whitespace is ignored; a `timeout`
//! value counts only if it is a whole number of seconds (ASCII digits, up to
//! one day); the smallest valid value wins; anything else (`timeout=abc`,
//! `-1`, `1.5`, empty, huge) is ignored, as is `max=`.
//!
//! # Learning
//!
//! Per origin (scheme, host, port) the layer keeps an estimate of the
//! server's idle timeout, shared by the clones of the layer and applied
//! live to every connection of the origin, idle ones included (the first
//! lost race protects the next request on every other connection).
//!
//! * **Observations.** An *idle close* after `d` (the server closed a
//!   connection idle for `d` that this layer had not closed and that was
//!   eligible for reuse) and a *lost race* after `d` (a request on a
//!   connection reused after idle `d` failed before any byte of its
//!   response) both bound the timeout from above: the server closed the
//!   connection by `d` (plus the request's flight time, which the margin
//!   covers). A server that closes slightly after its nominal timeout
//!   rarely shows an idle close; its lost races teach the same thing.
//! * **Robust to closes that are not the idle timeout.** An observation
//!   below the floor of 100 ms, below half the estimate, or below an idle
//!   the server was recently seen to keep is *held*: it applies only when a
//!   second one agrees (within a quarter plus 1 ms, seen apart in time, with
//!   no longer reuse in between, and, below a kept idle, only once the server
//!   has not kept one that long for a while). Any other observation lowers the estimate
//!   to itself at once. A learned limit is the estimate minus the margin,
//!   never less than half the estimate: never zero.
//! * **Healing probes.** An origin whose expiry learning lowered lets one
//!   connection at a time (at most one new one every 10 s, every 1 s below
//!   the floor) test the estimate: kept open, unused, until twice the estimate (below the floor:
//!   reused until then, at least up to the floor). A server that keeps it
//!   that long, or answers it after an idle beyond the estimate plus its
//!   tolerance (the one-call client lets a probe below the floor rest until
//!   then, so that its first request tests the estimate), refutes the
//!   estimate, which is forgotten at once and learned again from the next
//!   close: a timeout that grows from 200 ms to 2 s is re-learned with one
//!   probe and one observation.
//! * **HTTP/2** teaches nothing and gets no learned expiry: an HTTP/2 server
//!   closes an idle connection with GOAWAY, hyper stops using it, and the
//!   streams it did not process are refused, which is safe to retry.
//! * Estimates, held observations and the longest idle kept are trusted for
//!   five minutes (configurable with [`learner`](IdleExpiryLayer::learner)),
//!   then forgotten and learned again.
//!
//! The whole rule and why each observation is sound are in the `learn`
//! module's source docs.
//!
//! *Worst case*: until an origin's first observation (and after it was
//! forgotten) its requests can race the server exactly as without this
//! layer; put `RetryOnStaleConnection` above it for those. An early close
//! within a factor two of the real timeout that nothing contradicts lowers
//! reuse for idle times between the two (never correctness) until it is
//! forgotten. *Bound*: at most 1024 origins (configurable), least recently
//! used evicted first in O(1); a response takes the learner's lock at most
//! once, and not at all while nothing has been learned.
//! Every observation, estimate change and probe is a `tracing` debug event
//! and is counted in [`IdleExpiryStats`]
//! ([`server_idle_closes`](IdleExpiryStats::server_idle_closes),
//! [`lost_races`](IdleExpiryStats::lost_races),
//! [`held`](IdleExpiryStats::held), [`learned`](IdleExpiryStats::learned),
//! [`agreed`](IdleExpiryStats::agreed), [`probes`](IdleExpiryStats::probes),
//! [`healed`](IdleExpiryStats::healed));
//! [`learned_timeout`](IdleExpiryLayer::learned_timeout) tells what is
//! learned for an origin.
//!
//! # Which clients
//!
//! The layer needs the connection tracker ([`crate::track`]): every decision
//! acts on the tracker's state of the response's connection.
//!
//! * **hyper-util's legacy `Client`** (HTTP/1.1): put
//!   [`TrackConnectionsLayer`](crate::track::TrackConnectionsLayer) on the
//!   connector and [`IdleExpiryLayer`] around the client. On HTTP/2
//!   connections the layer sets nothing: an HTTP/2 server says when it stops
//!   with GOAWAY, and requests it refused are safe to retry.
//! * **hyper-util's composable pools** (`client::pool::cache`, feature
//!   `client-pool`): wrap each connection's service with
//!   [`IdleExpiryLayer::connection`]; see [`IdleExpiryConnection`], the
//!   [`pool`](crate::pool) module (which does it for you) and
//!   `examples/composable_pool.rs`. (The layer around the pool as a whole
//!   sees no connection: hyper's own connections publish no tracker state.)
//! * **reqwest**: its connections are sealed (no tracker), so idle expiry
//!   cannot be applied; use its `pool_idle_timeout` below the server's idle
//!   timeout and `RetryOnStaleConnection`.
//!
//! A response that arrives without the tracker's state (any of the stacks
//! the layer does not fit) passes through untouched, its connection reused
//! as if the layer were not there; so that a missing tracker never goes
//! unnoticed, it is counted in [`IdleExpiryStats::untracked_responses`] and
//! the first one is logged as a `tracing` warning (once per layer and its
//! clones; later ones cost one relaxed atomic add).
//!
//! Every connection event (expired, refused, server idle close, lost race)
//! is a `tracing` debug event and is counted in [`IdleExpiryStats`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http_body_util::Empty;
//! use bytes::Bytes;
//! use hyper_util::client::legacy::{connect::HttpConnector, Client};
//! use hyper_util::rt::TokioExecutor;
//! use tower::ServiceBuilder;
//! use tower_conn_lifecycle::idle_expiry::IdleExpiryLayer;
//! use tower_conn_lifecycle::track::TrackConnectionsLayer;
//!
//! let connector = ServiceBuilder::new()
//!     .layer(TrackConnectionsLayer::new())
//!     .service(HttpConnector::new());
//! let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
//! // Reuse a connection only while idle for less than 90 s, or less than
//! // what the server announces or is seen to do.
//! let client = ServiceBuilder::new()
//!     .layer(IdleExpiryLayer::new(Duration::from_secs(90)))
//!     .service(client);
//! # let _ = client;
//! ```

mod conn;
pub mod future;
mod hint;
mod layer;
mod learn;
mod service;
#[cfg(test)]
mod tests;

pub(crate) use conn::ClosedBeforeFirstRequest;
pub use conn::IdleExpiryConnection;
pub use layer::{IdleExpiryLayer, IdleExpiryStats, DEFAULT_MARGIN};
pub use service::IdleExpiry;
