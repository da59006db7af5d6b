//! The process-wide rustls configuration.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::{ClientConfig, RootCertStore};

use super::SessionStore;

/// The ALPN protocols offered by default: `h2`, then `http/1.1`.
///
/// With these, hyper-util's client speaks HTTP/2 to servers that choose `h2`
/// (the IO reports it through `Connected::negotiated_h2`) and HTTP/1.1 to the
/// others.
pub const DEFAULT_ALPN_PROTOCOLS: &[&[u8]] = &[b"h2", b"http/1.1"];

static SHARED: OnceLock<Arc<ClientConfig>> = OnceLock::new();
static BUILDS: AtomicUsize = AtomicUsize::new(0);

/// The process-wide client configuration, built on first use.
///
/// The first call builds it (loading the root certificates is the expensive
/// part: about a millisecond); every later call, from any thread, returns a
/// clone of the same `Arc`. Concurrent first calls block until the one
/// build finishes; the configuration is built exactly once per process.
///
/// It uses the `ring` crypto provider, rustls's safe default protocol
/// versions (TLS 1.3 and 1.2), the [webpki root certificates] (or, with the
/// `native-roots` feature, the operating system's; see below), no client
/// certificate, ALPN [`DEFAULT_ALPN_PROTOCOLS`], and one bounded
/// [`SessionStore`] (with [`SessionStore::DEFAULT_MAX_SERVERS`]) shared by
/// every connector built on this configuration, so a client created later
/// resumes the TLS sessions of clients created earlier.
///
/// With the `native-roots` feature the roots come from
/// `rustls-native-certs`; certificates that fail to parse are skipped and, if
/// the operating system yields none at all, the webpki roots are used instead
/// (with a `tracing` warning).
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
            Arc::new(config_with_roots(default_roots()))
        })
        .clone()
}

/// How many times [`shared_config`] has built the configuration in this
/// process: `0` before first use, `1` afterwards, never more.
///
/// Meant for diagnostics and tests (for example, to check that building
/// clients does not rebuild the TLS configuration).
pub fn shared_config_build_count() -> usize {
    BUILDS.load(Ordering::Relaxed)
}

/// A configuration like [`shared_config`]'s, trusting `roots` instead, with
/// its own new [`SessionStore`].
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
/// use rustls::RootCertStore;
/// use tower_conn_lifecycle::tls::{config_with_roots, SessionStore};
///
/// let mut config = config_with_roots(RootCertStore::empty());
/// config.alpn_protocols = vec![b"http/1.1".to_vec()];
/// config.resumption = rustls::client::Resumption::store(Arc::new(SessionStore::new(8)));
/// let config = Arc::new(config);
/// # let _ = config;
/// ```
pub fn config_with_roots(roots: RootCertStore) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // The ring provider supports every default protocol version.
        .expect("ring supports rustls's default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = DEFAULT_ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    config.resumption = Resumption::store(Arc::new(SessionStore::default()));
    config
}

fn webpki_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

#[cfg(not(feature = "native-roots"))]
fn default_roots() -> RootCertStore {
    webpki_roots()
}

#[cfg(feature = "native-roots")]
fn default_roots() -> RootCertStore {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        tracing::warn!(%error, "loading a native root certificate failed");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "skipped native root certificates that failed to parse"
        );
    }
    if added == 0 {
        tracing::warn!("no usable native root certificates; using the webpki roots");
        return webpki_roots();
    }
    roots
}
