//! The rustls configurations this crate builds, and the crypto provider they
//! use.
//!
//! # Which crypto provider
//!
//! The `tls` feature compiles rustls without a crypto provider (a provider
//! feature turned on here would be turned on in the application's rustls
//! too). A configuration built here ([`shared_config`],
//! [`config_with_roots`]) takes its provider, when it is built, from the
//! first of:
//!
//! 1. the process default, [`CryptoProvider::get_default`];
//! 2. this crate's provider feature: `aws-lc-rs` (rustls's aws-lc-rs
//!    provider, its post-quantum hybrid `X25519MLKEM768` preferred) or
//!    `ring` (no post-quantum key exchange); `aws-lc-rs` if both are on.
//!    Made once, used for this crate's configurations, never installed as
//!    the process default;
//! 3. none: [`TlsConnectError::no_provider`], never a panic. rustls's own
//!    `ClientConfig::builder()` is never called (it panics with two
//!    providers or none compiled in and none installed), and what other
//!    crates compiled into rustls cannot be seen from here.
//!
//! [`config_with_provider`] and a configuration handed to a connector use
//! the provider they were given. The table in the `tls` module docs is the
//! user-facing statement of these rules.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use hyper_rustls::ConfigBuilderExt;
use rustls::client::{Resumption, WantsClientCert};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ConfigBuilder, RootCertStore, WantsVerifier};

use super::TlsConnectError;

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
/// Serialises the builds of [`SHARED`], so it is built exactly once even
/// though a build may fail (and is then tried again by the next caller).
static BUILDING: Mutex<()> = Mutex::new(());
static BUILDS: AtomicUsize = AtomicUsize::new(0);

/// The process-wide client configuration, built on first successful use.
///
/// The first call builds it (loading the root certificates is the expensive
/// part); every later call, from any thread, returns a clone of the same
/// `Arc`. Concurrent first calls block until the one build finishes; the
/// configuration is built exactly once per process.
///
/// It uses the crypto provider chosen as the [`tls`](super) module docs
/// describe
/// (the process default, else this crate's `aws-lc-rs` or `ring` feature),
/// rustls's safe default protocol versions (TLS 1.3 and 1.2), the [webpki
/// root certificates] (or, with the `native-roots` feature, the operating
/// system's; see below), no client certificate, ALPN
/// [`DEFAULT_ALPN_PROTOCOLS`], and one rustls
/// [`ClientSessionMemoryCache`](rustls::client::ClientSessionMemoryCache)
/// shared by every connector built on this configuration, so a client
/// created later resumes the TLS sessions of clients created earlier. The
/// cache remembers at most 128 servers (the oldest is evicted first), each
/// with at most 8 TLS 1.3 tickets and one TLS 1.2 session.
///
/// The provider is chosen when the configuration is built, so an
/// application that installs a process default should do so before its
/// first `https://` request.
///
/// With the `native-roots` feature the roots come from the operating system
/// (hyper-rustls's `with_native_roots`, through `rustls-native-certs`);
/// certificates that fail to parse are skipped and, if none is usable, the
/// webpki roots are used instead (with a `tracing` warning).
///
/// # Errors
///
/// [`TlsConnectErrorKind::NoCryptoProvider`](super::TlsConnectErrorKind::NoCryptoProvider)
/// when there is no provider to use, or the provider cannot make a TLS 1.3
/// or 1.2 client configuration. Nothing is remembered: a later call after a
/// provider was installed succeeds.
///
/// [webpki root certificates]: https://docs.rs/webpki-roots
///
/// # Example
///
/// ```
/// use std::sync::Arc;
///
/// let a = tower_conn_lifecycle::tls::shared_config()?;
/// let b = tower_conn_lifecycle::tls::shared_config()?;
/// assert!(Arc::ptr_eq(&a, &b));
/// assert_eq!(a.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
/// # Ok::<_, tower_conn_lifecycle::tls::TlsConnectError>(())
/// ```
pub fn shared_config() -> Result<Arc<ClientConfig>, TlsConnectError> {
    if let Some(config) = SHARED.get() {
        return Ok(config.clone());
    }
    let _building = BUILDING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(config) = SHARED.get() {
        return Ok(config.clone());
    }
    let config = Arc::new(finish(default_roots(builder(provider()?)?)));
    BUILDS.fetch_add(1, Ordering::Relaxed);
    Ok(SHARED.get_or_init(|| config).clone())
}

/// How many times [`shared_config`] has built the configuration in this
/// process: `0` before its first use, `1` afterwards, never more.
///
/// For an application's own tests of what this module promises: that
/// building connectors and clients (also reqwest's, through
/// `ClientBuilderExt::shared_tls`) loads no certificates, and that every
/// client shares one configuration.
///
/// ```
/// use tower_conn_lifecycle::tls::{shared_config_build_count, SharedTlsConnector};
///
/// let before = shared_config_build_count();
/// let _connector = SharedTlsConnector::tcp();
/// assert_eq!(shared_config_build_count(), before, "built lazily, at the first https:// connect");
/// ```
pub fn shared_config_build_count() -> usize {
    BUILDS.load(Ordering::Relaxed)
}

/// A configuration like [`shared_config`]'s (the same provider rule),
/// trusting `roots` instead, with its own new session cache (of the same
/// size).
///
/// Use it with `SharedTlsConnectorLayer::from_config` for a private or test CA. Build
/// it once and share the `Arc` between connectors: session resumption is
/// shared exactly as far as the configuration is. The fields can be changed
/// before wrapping it in an `Arc` (client certificates need rustls's builder
/// instead).
///
/// # Errors
///
/// As [`shared_config`]'s: no usable crypto provider.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use rustls::client::Resumption;
/// use rustls::RootCertStore;
/// use tower_conn_lifecycle::tls::config_with_roots;
///
/// let mut config = config_with_roots(RootCertStore::empty())?;
/// config.alpn_protocols = vec![b"http/1.1".to_vec()];
/// config.resumption = Resumption::in_memory_sessions(64);
/// let config = Arc::new(config);
/// # let _ = config;
/// # Ok::<_, tower_conn_lifecycle::tls::TlsConnectError>(())
/// ```
pub fn config_with_roots(roots: RootCertStore) -> Result<ClientConfig, TlsConnectError> {
    Ok(finish(builder(provider()?)?.with_root_certificates(roots)))
}

/// A configuration like [`shared_config`]'s on the crypto provider
/// `provider`, whatever the process default and this crate's features: with
/// `roots`, or the default roots (webpki's, or the operating system's with
/// `native-roots`) for `None`. It has its own new session cache.
///
/// For an application that has several providers, or wants a different one
/// for HTTP than its process default (a FIPS provider, a custom one).
///
/// # Errors
///
/// [`TlsConnectErrorKind::NoCryptoProvider`](super::TlsConnectErrorKind::NoCryptoProvider),
/// with the [`rustls::Error`] as its source, if `provider` cannot make a
/// TLS 1.3 or 1.2 client configuration.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use tower_conn_lifecycle::tls::{config_with_provider, SharedTlsConnectorLayer};
///
/// # #[cfg(feature = "aws-lc-rs")] {
/// let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
/// let config = Arc::new(config_with_provider(provider, None)?);
/// let layer = SharedTlsConnectorLayer::from_config(config);
/// # let _ = layer;
/// # }
/// # Ok::<_, tower_conn_lifecycle::tls::TlsConnectError>(())
/// ```
pub fn config_with_provider(
    provider: Arc<CryptoProvider>,
    roots: impl Into<Option<RootCertStore>>,
) -> Result<ClientConfig, TlsConnectError> {
    let builder = builder(provider)?;
    Ok(finish(match roots.into() {
        Some(roots) => builder.with_root_certificates(roots),
        None => default_roots(builder),
    }))
}

/// Where a connector's (or a layer's) configuration comes from.
#[derive(Clone, Default)]
pub(crate) enum Source {
    /// [`shared_config`], resolved at the first `https://` connect.
    #[default]
    Shared,
    /// [`shared_config`] with other ALPN protocols: cloned at the first
    /// `https://` connect, once for every clone of the connector.
    SharedWithAlpn(Arc<SharedWithAlpn>),
    /// A configuration handed in.
    Given(Arc<ClientConfig>),
}

#[derive(Debug)]
pub(crate) struct SharedWithAlpn {
    protocols: Vec<Vec<u8>>,
    config: OnceLock<Arc<ClientConfig>>,
}

/// What a connector's `Debug` shows of its configuration: `shared`, or
/// `given`, and the ALPN protocols when overridden.
impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Shared => f.write_str("shared"),
            Source::SharedWithAlpn(alpn) => {
                let protocols: Vec<_> = alpn
                    .protocols
                    .iter()
                    .map(|p| String::from_utf8_lossy(p))
                    .collect();
                write!(f, "shared, ALPN {protocols:?}")
            }
            Source::Given(_) => f.write_str("given"),
        }
    }
}

impl Source {
    /// The configuration (building the shared one if needed).
    pub(crate) fn resolve(&self) -> Result<Arc<ClientConfig>, TlsConnectError> {
        match self {
            Source::Shared => shared_config(),
            Source::Given(config) => Ok(config.clone()),
            Source::SharedWithAlpn(alpn) => {
                if let Some(config) = alpn.config.get() {
                    return Ok(config.clone());
                }
                // Two first connects racing clone it twice; both clones share
                // the shared configuration's session cache, one is kept.
                let config = with_alpn(&*shared_config()?, &alpn.protocols);
                Ok(alpn.config.get_or_init(|| config).clone())
            }
        }
    }

    /// The same configuration offering `protocols` for ALPN: a configuration
    /// handed in is cloned now, the shared one at its first use.
    pub(crate) fn with_alpn<I, P>(self, protocols: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        match self {
            Source::Given(config) => Source::Given(with_alpn(&config, protocols)),
            Source::Shared | Source::SharedWithAlpn(_) => {
                Source::SharedWithAlpn(Arc::new(SharedWithAlpn {
                    protocols: protocols.into_iter().map(|p| p.as_ref().to_vec()).collect(),
                    config: OnceLock::new(),
                }))
            }
        }
    }
}

/// A clone of `config` offering `protocols`; it keeps the roots, provider
/// and session cache of `config`.
fn with_alpn<I, P>(config: &ClientConfig, protocols: I) -> Arc<ClientConfig>
where
    I: IntoIterator<Item = P>,
    P: AsRef<[u8]>,
{
    let mut config = config.clone();
    config.alpn_protocols = protocols.into_iter().map(|p| p.as_ref().to_vec()).collect();
    Arc::new(config)
}

/// The provider for a configuration that is not given one: see the module
/// docs.
fn provider() -> Result<Arc<CryptoProvider>, TlsConnectError> {
    choose_provider(CryptoProvider::get_default(), feature_provider)
}

/// The provider rule, with its inputs passed in so it can be tested apart
/// from the process-wide state.
pub(crate) fn choose_provider(
    process_default: Option<&Arc<CryptoProvider>>,
    feature: impl FnOnce() -> Option<Arc<CryptoProvider>>,
) -> Result<Arc<CryptoProvider>, TlsConnectError> {
    match process_default {
        Some(provider) => Ok(provider.clone()),
        None => feature().ok_or_else(TlsConnectError::no_provider),
    }
}

/// The provider of this crate's `aws-lc-rs` or `ring` feature (`aws-lc-rs`
/// if both are on), made once.
pub(crate) fn feature_provider() -> Option<Arc<CryptoProvider>> {
    #[cfg(any(feature = "aws-lc-rs", feature = "ring"))]
    {
        static FEATURE: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
        Some(
            FEATURE
                .get_or_init(|| Arc::new(make_feature_provider()))
                .clone(),
        )
    }
    #[cfg(not(any(feature = "aws-lc-rs", feature = "ring")))]
    {
        None
    }
}

/// rustls's aws-lc-rs provider, preferring its post-quantum hybrid key
/// exchange: rustls's own default from 0.23.48 on (and with its
/// `prefer-post-quantum` feature before); done here so that this crate never
/// has to turn that feature on in the application's rustls.
#[cfg(feature = "aws-lc-rs")]
fn make_feature_provider() -> CryptoProvider {
    use rustls::crypto::aws_lc_rs;

    let mut provider = aws_lc_rs::default_provider();
    let hybrid = rustls::NamedGroup::X25519MLKEM768;
    if let Some(at) = provider.kx_groups.iter().position(|g| g.name() == hybrid) {
        let group = provider.kx_groups.remove(at);
        provider.kx_groups.insert(0, group);
    }
    provider
}

/// rustls's *ring* provider. rustls 0.23.48 deprecated its constructor
/// because *ring* has no post-quantum key exchange, and offers no other for
/// *ring*: this is the provider an application that chose *ring* gets (the
/// `aws-lc-rs` feature is the one with post-quantum key exchange).
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
fn make_feature_provider() -> CryptoProvider {
    #[allow(deprecated)]
    rustls::crypto::ring::default_provider()
}

fn builder(
    provider: Arc<CryptoProvider>,
) -> Result<ConfigBuilder<ClientConfig, WantsVerifier>, TlsConnectError> {
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsConnectError::unusable_provider)
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
