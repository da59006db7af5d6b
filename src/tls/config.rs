//! The process-wide rustls configuration.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use hyper_rustls::ConfigBuilderExt;
use rustls::client::{Resumption, WantsClientCert};
use rustls::{ClientConfig, ConfigBuilder, RootCertStore, WantsVerifier};

/// The ALPN protocols offered by default: `h2`, then `http/1.1`.
///
/// With these, hyper-util's client speaks HTTP/2 to servers that choose `h2`
/// (the IO reports it through `Connected::negotiated_h2`) and HTTP/1.1 to the
/// others.
pub const DEFAULT_ALPN_PROTOCOLS: &[&[u8]] = &[b"h2", b"http/1.1"];

/// How many servers' TLS sessions a configuration of this crate remembers.
pub(crate) const SESSION_CACHE_SERVERS: usize = 128;

/// rustls's `ClientSessionMemoryCache` is sized in TLS 1.3 tickets and keeps
/// up to this many per server.
const TICKETS_PER_SERVER: usize = 8;

static SHARED: OnceLock<Arc<ClientConfig>> = OnceLock::new();
static BUILDS: AtomicUsize = AtomicUsize::new(0);

/// The process-wide client configuration, built on first use.
///
/// The first call builds it (loading the root certificates is the expensive
/// part); every later call, from any thread, returns a clone of the same
/// `Arc`. Concurrent first calls block until the one build finishes; the
/// configuration is built exactly once per process.
///
/// It uses the `ring` crypto provider, rustls's safe default protocol
/// versions (TLS 1.3 and 1.2), the [webpki root certificates] (or, with the
/// `native-roots` feature, the operating system's; see below), no client
/// certificate, ALPN [`DEFAULT_ALPN_PROTOCOLS`], and one rustls
/// [`ClientSessionMemoryCache`](rustls::client::ClientSessionMemoryCache)
/// shared by every connector built on this configuration, so a client
/// created later resumes the TLS sessions of clients created earlier. The
/// cache remembers at most 128 servers (the oldest is evicted first), each
/// with at most 8 TLS 1.3 tickets and one TLS 1.2 session.
///
/// With the `native-roots` feature the roots come from the operating system
/// (hyper-rustls's `with_native_roots`, through `rustls-native-certs`);
/// certificates that fail to parse are skipped and, if none is usable, the
/// webpki roots are used instead (with a `tracing` warning).
///
/// [webpki root certificates]: https://docs.rs/webpki-roots
///
/// # Example
///
/// ```
/// use std::sync::Arc;
///
/// let a = tower_conn_lifecycle::tls::shared_config();
/// let b = tower_conn_lifecycle::tls::shared_config();
/// assert!(Arc::ptr_eq(&a, &b));
/// assert_eq!(a.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
/// ```
pub fn shared_config() -> Arc<ClientConfig> {
    SHARED
        .get_or_init(|| {
            BUILDS.fetch_add(1, Ordering::Relaxed);
            Arc::new(finish(default_roots(builder())))
        })
        .clone()
}

/// How many times [`shared_config`] has built the configuration in this
/// process: `0` before first use, `1` afterwards, never more.
///
/// A diagnostic for this crate's tests, not part of the public API.
#[doc(hidden)]
pub fn shared_config_build_count() -> usize {
    BUILDS.load(Ordering::Relaxed)
}

/// A configuration like [`shared_config`]'s, trusting `roots` instead, with
/// its own new session cache (of the same size).
///
/// Use it with `SharedTlsLayer::from_config` for a private or test CA. Build
/// it once and share the `Arc` between connectors: session resumption is
/// shared exactly as far as the configuration is. The fields can be changed
/// before wrapping it in an `Arc` (client certificates need rustls's builder
/// instead).
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use rustls::client::Resumption;
/// use rustls::RootCertStore;
/// use tower_conn_lifecycle::tls::config_with_roots;
///
/// let mut config = config_with_roots(RootCertStore::empty());
/// config.alpn_protocols = vec![b"http/1.1".to_vec()];
/// config.resumption = Resumption::in_memory_sessions(64);
/// let config = Arc::new(config);
/// # let _ = config;
/// ```
pub fn config_with_roots(roots: RootCertStore) -> ClientConfig {
    finish(builder().with_root_certificates(roots))
}

fn builder() -> ConfigBuilder<ClientConfig, WantsVerifier> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        // The ring provider supports every default protocol version.
        .expect("ring supports rustls's default protocol versions")
}

fn finish(builder: ConfigBuilder<ClientConfig, WantsClientCert>) -> ClientConfig {
    let mut config = builder.with_no_client_auth();
    config.alpn_protocols = DEFAULT_ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    config.resumption = Resumption::in_memory_sessions(SESSION_CACHE_SERVERS * TICKETS_PER_SERVER);
    config
}

#[cfg(not(feature = "native-roots"))]
fn default_roots(
    builder: ConfigBuilder<ClientConfig, WantsVerifier>,
) -> ConfigBuilder<ClientConfig, WantsClientCert> {
    builder.with_webpki_roots()
}

#[cfg(feature = "native-roots")]
fn default_roots(
    builder: ConfigBuilder<ClientConfig, WantsVerifier>,
) -> ConfigBuilder<ClientConfig, WantsClientCert> {
    match builder.clone().with_native_roots() {
        Ok(with_roots) => with_roots,
        Err(error) => {
            tracing::warn!(%error, "no usable native root certificates; using the webpki roots");
            builder.with_webpki_roots()
        }
    }
}
