//! Which rustls crypto provider the crate's configurations use when the
//! process has **no** default installed. Nothing in this test binary
//! installs one (`tests/tls_process_default.rs` covers that case, in a
//! process of its own): with `--all-features` rustls has both *ring* and
//! aws-lc-rs compiled in here, the state in which rustls's own
//! `ClientConfig::builder()` panics.

mod common;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::NamedGroup;
use tower_conn_lifecycle::tls::{config_with_provider, config_with_roots, shared_config};

use common::tls::{client_with, get, only_group, rustls_provider, TlsServer};

#[tokio::test]
async fn without_a_process_default_the_feature_provider_is_used_and_none_installed() {
    assert!(CryptoProvider::get_default().is_none());
    let feature = shared_config().unwrap().crypto_provider().clone();
    let (mut server, ca) = TlsServer::with_provider(feature.clone()).await;
    let config = Arc::new(config_with_roots(ca.roots()).unwrap());
    assert!(Arc::ptr_eq(config.crypto_provider(), &feature));

    let (_, body) = get(&client_with(config), server.url("127.0.0.1"))
        .await
        .unwrap();
    assert_eq!(body, "HTTP/1.1");
    // The server negotiated the first group the client offered.
    let group = server.next_handshake().await.unwrap().group;
    assert_eq!(group, Some(feature.kx_groups[0].name()));
    // With `aws-lc-rs` (preferred over `ring` when both are on), that is
    // the post-quantum hybrid.
    #[cfg(feature = "aws-lc-rs")]
    assert_eq!(group, Some(NamedGroup::X25519MLKEM768));

    // The crate used its provider without installing it for the process.
    assert!(CryptoProvider::get_default().is_none());
}

#[tokio::test]
async fn an_explicit_provider_is_used_whatever_else_is_there() {
    let full = Arc::new(rustls_provider());
    let (mut server, ca) = TlsServer::with_provider(full.clone()).await;
    let only = Arc::new(only_group(&full, NamedGroup::secp384r1));
    assert_eq!(only.kx_groups.len(), 1);
    let config = Arc::new(config_with_provider(only.clone(), ca.roots()).unwrap());
    assert!(Arc::ptr_eq(config.crypto_provider(), &only));

    let (_, body) = get(&client_with(config), server.url("127.0.0.1"))
        .await
        .unwrap();
    assert_eq!(body, "HTTP/1.1");
    assert_eq!(
        server.next_handshake().await.unwrap().group,
        Some(NamedGroup::secp384r1)
    );
    assert!(CryptoProvider::get_default().is_none());
}

/// The state this binary runs in with `--all-features`: rustls has both
/// providers compiled in and none installed, so rustls's own
/// `ClientConfig::builder()` panics (that panic is expected in this test's
/// output), while the crate's configurations above were built fine.
#[cfg(all(feature = "ring", feature = "aws-lc-rs"))]
#[test]
fn rustls_alone_would_panic_here() {
    assert!(shared_config().is_ok());
    assert!(std::panic::catch_unwind(rustls::ClientConfig::builder).is_err());
    assert!(CryptoProvider::get_default().is_none());
}
