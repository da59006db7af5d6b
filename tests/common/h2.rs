//! What the one-call client's HTTP/2 probes share (`probe_http2`,
//! `probe_tls_origin`): the record of what a test server saw, its `/hold`
//! and `/hold-first` paths, and the requests they send.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tower::ServiceExt;
use tower_conn_lifecycle::client::Client;
use tower_conn_lifecycle::BoxError;

/// What a test server saw (its server derefs to it).
#[derive(Default)]
pub struct Seen {
    /// TCP connections accepted.
    pub accepted: AtomicUsize,
    /// TLS handshakes completed (where the server counts them).
    pub handshakes: AtomicUsize,
    /// Connections ended.
    pub closed: AtomicUsize,
    /// (connection, method, path, body) per request, at arrival (after its
    /// body was read).
    pub requests: Mutex<Vec<(usize, String, String, Bytes)>>,
    /// `/hold` and `/hold-first` requests waiting now.
    pub holding: AtomicUsize,
}

impl Seen {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    pub fn holding(&self) -> usize {
        self.holding.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<(usize, String, String, Bytes)> {
        self.requests.lock().unwrap().clone()
    }

    /// How many times each POST body arrived.
    pub fn post_counts(&self) -> HashMap<Bytes, usize> {
        let mut counts = HashMap::new();
        for (_, method, _, body) in self.requests() {
            if method == "POST" {
                *counts.entry(body).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Reads `req`'s body and records it as connection `conn`'s; then
    /// `/hold` waits for a permit of `release` (taken for good) and
    /// `/hold-first` on the first connection waits for ever. Its path, or
    /// `None` if its body failed.
    pub async fn arrive(
        &self,
        conn: usize,
        req: Request<hyper::body::Incoming>,
        release: &Semaphore,
    ) -> Option<String> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let body = req.into_body().collect().await.ok()?.to_bytes();
        self.requests
            .lock()
            .unwrap()
            .push((conn, method, path.clone(), body));
        match path.as_str() {
            "/hold" => {
                self.holding.fetch_add(1, Ordering::SeqCst);
                let permit = release.acquire().await;
                self.holding.fetch_sub(1, Ordering::SeqCst);
                if let Ok(p) = permit {
                    p.forget();
                }
            }
            // Held for good on the first connection, answered on the others.
            "/hold-first" if conn == 0 => {
                self.holding.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            _ => {}
        }
        Some(path)
    }
}

pub fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

pub fn post(url: &str, body: String) -> Request<Full<Bytes>> {
    Request::post(url)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// The whole exchange: a 200, and its body.
pub async fn fetch(
    client: &Client<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<Bytes, BoxError> {
    let res = client.clone().oneshot(req).await?;
    assert_eq!(res.status(), StatusCode::OK);
    Ok(res.into_body().collect().await?.to_bytes())
}

/// [`fetch`] as a task of its own.
pub fn spawn_fetch(
    client: &Client<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> JoinHandle<Result<Bytes, BoxError>> {
    let client = client.clone();
    tokio::spawn(async move { fetch(&client, req).await })
}

/// `n` GETs of `url` in flight at once, each a task of its own: every one
/// must succeed (each bounded by [`STEP_LIMIT`](super::STEP_LIMIT)); their
/// bodies, in order. `what` names the burst in a failure.
pub async fn burst(client: &Client<Full<Bytes>>, url: &str, n: usize, what: &str) -> Vec<Bytes> {
    let tasks: Vec<_> = (0..n).map(|_| spawn_fetch(client, get(url))).collect();
    let mut bodies = Vec::with_capacity(n);
    for t in tasks {
        let body = super::bounded(super::STEP_LIMIT, what, t)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"))
            .unwrap_or_else(|e| {
                panic!("{what}: {}", tower_conn_lifecycle::error_chain(e.as_ref()))
            });
        bodies.push(body);
    }
    bodies
}
