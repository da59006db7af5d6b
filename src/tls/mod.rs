//! One lazily built TLS configuration for every client in the process.
//!
//! Building a TLS context is the expensive part of building an HTTP client
//! (`reqwest::Client::new()` reloads its root certificates every time;
//! milliseconds per client). [`SharedTlsConnector`] instead uses one
//! process-wide rustls [`ClientConfig`](rustls::ClientConfig) — built on
//! first use by [`shared_config`], exactly once — so a client costs about as
//! much as one without TLS, and every client resumes the TLS sessions of the
//! others through one bounded rustls session cache.
//!
//! * The TLS itself is hyper-rustls's [`HttpsConnector`](hyper_rustls::HttpsConnector)
//!   and [`MaybeHttpsStream`] over rustls, and rustls's own
//!   [`ClientSessionMemoryCache`](rustls::client::ClientSessionMemoryCache)
//!   for resumption.
//! * The application's crypto provider: the `tls` feature turns on no
//!   provider in rustls (see [Crypto provider](#crypto-provider) below).
//! * Webpki roots by default; the operating system's with the
//!   `native-roots` feature.
//! * ALPN `h2` and `http/1.1` ([`DEFAULT_ALPN_PROTOCOLS`], configurable):
//!   hyper-util's client uses HTTP/2 when the server selects `h2`.
//! * `http://` passes through; `https://` sends SNI for names and none for IP
//!   literals, which are checked against the certificate's IP addresses.
//! * [`from_config`](SharedTlsConnectorLayer::from_config) for custom roots, client
//!   certificates, a test CA or a given crypto provider
//!   ([`config_with_roots`] and [`config_with_provider`] help).
//!
//! # Crypto provider
//!
//! rustls needs a crypto provider, and cargo turns a rustls feature on for
//! the whole graph: had this crate turned on `ring`, an application whose
//! rustls already has `aws-lc-rs` (reqwest's default) would find both
//! compiled in and rustls's own `ClientConfig::builder()`, called by other
//! crates, would panic. So the `tls` feature brings no provider, and the
//! configurations this crate builds ([`shared_config`],
//! [`config_with_roots`]) use, at the moment they are built:
//!
//! | the process has | this crate uses |
//! |---|---|
//! | a process default ([`CryptoProvider::install_default`](rustls::crypto::CryptoProvider::install_default), or the one rustls installed for an earlier `ClientConfig::builder()`) | the process default, whatever is compiled in |
//! | no process default; this crate's `aws-lc-rs` or `ring` feature on | that provider (`aws-lc-rs` if both are on: it has the post-quantum key exchange `X25519MLKEM768`, preferred; *ring* has none). Used for this crate's configurations only: it is **not** installed as the process default |
//! | no process default and neither feature, whatever rustls has compiled in (one provider, both, none) | no provider: building fails with [`TlsConnectErrorKind::NoCryptoProvider`]; the connector returns that error for each `https://` connect, `http://` keeps working |
//! | a configuration handed in ([`from_config`](SharedTlsConnectorLayer::from_config), [`config_with_provider`]) | the provider it was built with |
//!
//! Nothing here panics for want of a provider, nor calls rustls's
//! `ClientConfig::builder()` (which panics when rustls has no provider or
//! two and none is installed). This crate cannot see which provider another
//! crate compiled into rustls, so with none installed and no feature of its
//! own it does not guess: install that provider as the process default, or
//! turn on this crate's feature of the same name (with rustls already
//! having it, that adds nothing to the build).
//!
//! # What is this crate's own
//!
//! * The process-wide configuration, built lazily: [`SharedTlsConnector::new`]
//!   resolves it at the first `https://` connect, so building a connector or
//!   a client never loads certificates nor needs a crypto provider, and an
//!   `http://`-only program never builds it. A build that fails for want of
//!   a provider is not remembered: the next `https://` connect after one was
//!   installed builds it. A hyper-rustls `HttpsConnector` takes its
//!   configuration when it is built, so this connector builds one per
//!   `https://` connect (an
//!   `Arc` and the connector's boxed future; nothing per client) around the
//!   inner connect, and routes `http://` around it (no allocation, no
//!   configuration).
//! * Typed errors: [`TlsConnectError`] with a [`TlsConnectErrorKind`].
//!   hyper-rustls reports every failure as an untyped `io::Error` or the
//!   inner error as is, so the scheme and host are checked here before
//!   anything connects, the inner connector's errors are marked on the way
//!   in, and the handshake's `io::Error` wrappers are peeled off down to the
//!   [`rustls::Error`].
//!
//! # Where it sits
//!
//! On the connection plane, directly around the TCP connector; the
//! connection tracker and `ConnectTimeout` wrap it from outside (so the
//! connect deadline covers the TLS handshake):
//!
//! ```text
//! ConnectTimeout( Track( SharedTlsConnector( HttpConnector ) ) )
//! ```
//!
//! It serves hyper-util's legacy `Client` directly, and the composable
//! pools as the connector under their HTTP handshake service. reqwest cannot
//! take it (its TLS is internal); with the `reqwest-rustls` feature, give
//! reqwest's builder the shared configuration instead
//! (`ClientBuilderExt::shared_tls` in the `reqwest` module) to skip its
//! per-client root loading.
//!
//! # Example
//!
//! ```no_run
//! use http_body_util::Empty;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower_conn_lifecycle::tls::SharedTlsConnector;
//!
//! # async fn run() -> Result<(), tower_conn_lifecycle::BoxError> {
//! // Cheap: no certificates are loaded here, nor for any later client.
//! let client = Client::builder(TokioExecutor::new())
//!     .build::<_, Empty<bytes::Bytes>>(SharedTlsConnector::tcp());
//! let response = client.get("https://example.com/".parse()?).await?;
//! println!("{:?} {}", response.version(), response.status());
//! # Ok(())
//! # }
//! ```

mod config;
mod error;
mod layer;
mod service;

#[cfg(test)]
mod tests;

pub use config::{
    config_with_provider, config_with_roots, shared_config, shared_config_build_count,
    DEFAULT_ALPN_PROTOCOLS,
};
pub use error::{TlsConnectError, TlsConnectErrorKind};
pub use hyper_rustls::MaybeHttpsStream;
pub use layer::SharedTlsConnectorLayer;
pub use service::SharedTlsConnector;
