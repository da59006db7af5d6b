//! The connector's error type.

use std::{error, fmt, io};

use crate::BoxError;

/// What went wrong while connecting; see [`TlsConnectError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsConnectErrorKind {
    /// The URI's scheme is neither `http` nor `https` (or it has none).
    UnsupportedScheme,
    /// An `https` URI has no host.
    MissingHost,
    /// The host is not a valid TLS server name (DNS name or IP address).
    InvalidServerName,
    /// The inner (TCP) connector failed (its `poll_ready` or its connect);
    /// its error is the source.
    Connect,
    /// The TLS handshake failed; the source is the [`rustls::Error`] when
    /// rustls rejected the peer, otherwise the IO error.
    Tls,
    /// No usable rustls crypto provider for the configuration this crate
    /// builds: none is installed as the process default and neither of this
    /// crate's `ring` and `aws-lc-rs` features is on (no source); or the
    /// provider cannot make a TLS 1.3 or 1.2 client configuration (the
    /// [`rustls::Error`] is the source). Nothing connected; `http://` is
    /// unaffected. See the [`tls`](super) module docs.
    NoCryptoProvider,
}

/// The error of [`SharedTlsConnector`](super::SharedTlsConnector).
///
/// The connector returns it boxed as a [`BoxError`]; downcast with
/// `err.downcast_ref::<TlsConnectError>()`. Its [`source`](error::Error::source)
/// is the inner connector's error ([`TlsConnectErrorKind::Connect`]), the
/// [`rustls::Error`] (for example
/// `InvalidCertificate(NotValidForName)`) or an [`io::Error`] for
/// [`TlsConnectErrorKind::Tls`], and the server-name parse error for
/// [`TlsConnectErrorKind::InvalidServerName`].
///
/// It is also the error of the functions that build a configuration
/// ([`shared_config`](super::shared_config) and its siblings), always of kind
/// [`TlsConnectErrorKind::NoCryptoProvider`].
pub struct TlsConnectError {
    kind: TlsConnectErrorKind,
    scheme: Option<String>,
    source: Option<BoxError>,
}

impl TlsConnectError {
    pub(crate) fn new(kind: TlsConnectErrorKind) -> Self {
        Self {
            kind,
            scheme: None,
            source: None,
        }
    }

    pub(crate) fn unsupported_scheme(scheme: Option<&str>) -> Self {
        Self {
            scheme: scheme.map(str::to_owned),
            ..Self::new(TlsConnectErrorKind::UnsupportedScheme)
        }
    }

    pub(crate) fn with_source(kind: TlsConnectErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            source: Some(source.into()),
            ..Self::new(kind)
        }
    }

    /// No provider: see [`TlsConnectErrorKind::NoCryptoProvider`].
    pub(crate) fn no_provider() -> Self {
        Self::new(TlsConnectErrorKind::NoCryptoProvider)
    }

    /// A provider rustls cannot build a client configuration with.
    pub(crate) fn unusable_provider(source: rustls::Error) -> Self {
        Self::with_source(TlsConnectErrorKind::NoCryptoProvider, source)
    }

    /// A failure of the inner connector (its `poll_ready` or its connect).
    pub(crate) fn connect(source: impl Into<BoxError>) -> Self {
        Self::with_source(TlsConnectErrorKind::Connect, source)
    }

    /// A handshake failure as hyper-rustls reports it: an [`io::Error`]
    /// wrapping tokio-rustls's `io::Error`, which wraps the [`rustls::Error`]
    /// when rustls rejected the peer. The wrappers are peeled off so that the
    /// `rustls::Error` (or the innermost IO error) is the direct source (an
    /// `io::Error`'s own `source()` skips the error it wraps).
    pub(crate) fn handshake(err: BoxError) -> Self {
        let mut source = err;
        loop {
            source = match source.downcast::<io::Error>() {
                Ok(io)
                    if io.get_ref().is_some_and(|inner| {
                        inner.is::<io::Error>() || inner.is::<rustls::Error>()
                    }) =>
                {
                    match io.into_inner() {
                        Some(inner) => inner,
                        None => unreachable!("checked above that the io::Error wraps an error"),
                    }
                }
                Ok(io) => break Self::with_source(TlsConnectErrorKind::Tls, io as BoxError),
                Err(other) => break Self::with_source(TlsConnectErrorKind::Tls, other),
            };
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> TlsConnectErrorKind {
        self.kind
    }

    /// The rustls error that failed the handshake, if that is what happened.
    pub fn rustls_error(&self) -> Option<&rustls::Error> {
        self.source.as_ref()?.downcast_ref::<rustls::Error>()
    }
}

impl fmt::Debug for TlsConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TlsConnectError");
        d.field("kind", &self.kind);
        if let Some(scheme) = &self.scheme {
            d.field("scheme", scheme);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for TlsConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            TlsConnectErrorKind::UnsupportedScheme => match &self.scheme {
                Some(scheme) => write!(f, "unsupported uri scheme `{scheme}`"),
                None => f.write_str("uri has no scheme"),
            },
            TlsConnectErrorKind::MissingHost => f.write_str("https uri has no host"),
            TlsConnectErrorKind::InvalidServerName => f.write_str("invalid tls server name"),
            TlsConnectErrorKind::Connect => f.write_str("connect failed"),
            TlsConnectErrorKind::Tls => f.write_str("tls handshake failed"),
            TlsConnectErrorKind::NoCryptoProvider if self.source.is_some() => {
                f.write_str("unusable rustls crypto provider")
            }
            TlsConnectErrorKind::NoCryptoProvider => f.write_str(
                "no rustls crypto provider: install one as the process default, \
                 or enable the `ring` or `aws-lc-rs` feature of tower-conn-lifecycle",
            ),
        }
    }
}

impl error::Error for TlsConnectError {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| &**e as &(dyn error::Error + 'static))
    }
}
