//! The shared rustls configuration in reqwest's builder.

use rustls::ClientConfig;

use crate::tls::TlsConnectError;

/// Gives a [`reqwest::ClientBuilder`] an already built rustls configuration,
/// so building the client loads no certificates.
///
/// reqwest builds a rustls configuration (root store, verifier) for every
/// client unless it is handed one through
/// [`tls_backend_preconfigured`](reqwest::ClientBuilder::tls_backend_preconfigured).
/// That method takes `impl Any` and accepts only a `rustls::ClientConfig`
/// by value of the very rustls version reqwest links; anything else (an
/// `Arc<ClientConfig>`, say) builds fine and fails at `build()` with
/// "Unknown TLS backend". These methods take the right type.
///
/// The configuration is cloned into each client. The clone shares the
/// original's certificate verifier and session cache, so every client built
/// from the same configuration resumes the others' TLS sessions. With a
/// preconfigured backend reqwest ignores its own TLS options (`tls_certs_*`,
/// `tls_version_*`, `tls_danger_*`, `tls_sni`): set them on the
/// configuration instead.
///
/// ALPN: [`shared_config`](crate::tls::shared_config) offers `h2` and
/// `http/1.1`. For a client limited to HTTP/1 (`http1_only`), pass a
/// configuration whose `alpn_protocols` is `[b"http/1.1"]` to
/// [`tls_config`](Self::tls_config).
///
/// The trait is sealed: it is implemented for `reqwest::ClientBuilder` only.
///
/// # Example
///
/// ```
/// use tower_conn_lifecycle::reqwest::ClientBuilderExt;
///
/// // Microseconds: the shared configuration is built once per process.
/// let client = reqwest::Client::builder().shared_tls()?.build()?;
/// # let _ = client;
/// # Ok::<_, tower_conn_lifecycle::BoxError>(())
/// ```
#[allow(private_bounds)] // sealed: implemented for reqwest's builder only
pub trait ClientBuilderExt: Sealed {
    /// Uses the process-wide [`shared_config`](crate::tls::shared_config)
    /// (built on first use; webpki roots, or the operating system's with the
    /// `native-roots` feature; the crypto provider as the
    /// [`tls`](crate::tls) module docs describe).
    ///
    /// # Errors
    ///
    /// [`NoCryptoProvider`](crate::tls::TlsConnectErrorKind::NoCryptoProvider)
    /// when the shared configuration cannot be built: no process default and
    /// neither this crate's `ring` nor its `aws-lc-rs` feature.
    fn shared_tls(self) -> Result<::reqwest::ClientBuilder, TlsConnectError>;

    /// Uses `config`, for example one made by
    /// [`config_with_roots`](crate::tls::config_with_roots) for a private or
    /// test CA. Build it once and pass the same one to every builder, so the
    /// clients share its session cache.
    fn tls_config(self, config: &ClientConfig) -> ::reqwest::ClientBuilder;
}

impl ClientBuilderExt for ::reqwest::ClientBuilder {
    fn shared_tls(self) -> Result<::reqwest::ClientBuilder, TlsConnectError> {
        Ok(self.tls_config(&*crate::tls::shared_config()?))
    }

    fn tls_config(self, config: &ClientConfig) -> ::reqwest::ClientBuilder {
        self.tls_backend_preconfigured(config.clone())
    }
}

/// Seals [`ClientBuilderExt`]: no other crate can implement it, so methods
/// can be added to it without a breaking change.
pub(crate) trait Sealed {}

impl Sealed for ::reqwest::ClientBuilder {}
