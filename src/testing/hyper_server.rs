use std::convert::Infallible;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::http1::Conn;
use super::server::{impl_addr, start, Counters, Running};

/// A well-behaved HTTP/1.1 keep-alive server built on hyper itself: the
/// baseline peer for tests and benchmarks that need a real, fast server.
///
/// Every request's body is read completely; the response is `200 OK` with the
/// decimal count of body bytes read. Connections stay open as long as the
/// client keeps them.
#[derive(Debug)]
pub struct HyperServer {
    running: Running,
    counters: Arc<Counters>,
}

impl HyperServer {
    /// Starts the server on `127.0.0.1:0`.
    ///
    /// # Errors
    ///
    /// Fails when binding fails.
    pub async fn start() -> io::Result<Self> {
        let (running, counters) = start((), serve).await?;
        Ok(Self { running, counters })
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.counters.connections.get()
    }

    /// Requests received.
    pub fn requests(&self) -> u64 {
        self.counters.requests.get()
    }

    /// Request-body bytes read, over all requests.
    pub fn bytes_read(&self) -> u64 {
        self.counters.bytes_read.get()
    }
}

impl_addr!(HyperServer);

async fn serve(conn: Conn<TcpStream>, _config: Arc<()>, counters: Arc<Counters>) -> io::Result<()> {
    counters.connections.inc();
    let svc = service_fn(move |req: http::Request<Incoming>| {
        let counters = counters.clone();
        async move {
            counters.requests.inc();
            let n = match req.into_body().collect().await {
                Ok(body) => body.to_bytes().len(),
                Err(_) => 0,
            };
            counters.bytes_read.add(n as u64);
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(n.to_string()))))
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(conn.into_fresh_io()), svc)
        .await
        .map_err(io::Error::other)
}
