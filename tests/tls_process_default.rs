//! The process default crypto provider comes first. This binary installs
//! one (a provider with a single key exchange group, so the server can tell
//! it was used); it is a process of its own so no other test sees it.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rustls::crypto::CryptoProvider;
use rustls::NamedGroup;
use tower::ServiceExt;
use tower_conn_lifecycle::client;
use tower_conn_lifecycle::tls::{config_with_roots, shared_config, SharedTlsConnector};

use common::tls::{client_with, get, only_group, rustls_provider, TlsServer};
use common::STEP_LIMIT;

#[tokio::test]
async fn the_process_default_is_used_for_every_configuration_built_after_it() {
    let full = Arc::new(rustls_provider());
    only_group(&full, NamedGroup::secp256r1)
        .install_default()
        .expect("the only test in this binary installs the default");
    let installed = CryptoProvider::get_default().unwrap();
    assert_eq!(installed.kx_groups.len(), 1);

    // The shared configuration (built lazily, after the install) and a
    // configuration with other roots both take it.
    let shared = SharedTlsConnector::tcp().config().unwrap();
    assert!(Arc::ptr_eq(shared.crypto_provider(), installed));
    assert!(Arc::ptr_eq(&shared, &shared_config().unwrap()));
    let (mut server, ca) = TlsServer::with_provider(full).await;
    let config = Arc::new(config_with_roots(ca.roots()).unwrap());
    assert!(Arc::ptr_eq(config.crypto_provider(), installed));

    // On the wire: the server negotiated the default's only group, through
    // the connector and through the one-call client.
    let (_, body) = get(&client_with(config.clone()), server.url("127.0.0.1"))
        .await
        .unwrap();
    assert_eq!(body, "HTTP/1.1");
    assert_eq!(
        server.next_handshake().await.unwrap().group,
        Some(NamedGroup::secp256r1)
    );
    let client = client::builder().tls_config(config).build::<Empty<Bytes>>();
    let req = http::Request::get(server.url("127.0.0.1"))
        .body(Empty::new())
        .unwrap();
    let res = tokio::time::timeout(STEP_LIMIT, client.oneshot(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &res.into_body().collect().await.unwrap().to_bytes()[..],
        b"HTTP/1.1"
    );
    assert_eq!(
        server.next_handshake().await.unwrap().group,
        Some(NamedGroup::secp256r1)
    );
}
