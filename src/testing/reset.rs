use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::http1::Conn;
use super::server::{impl_addr, ok_head, ok_response, start, without_body, Counter, Running};

/// How long the server waits after writing part of a response head before
/// resetting, so the bytes reach the client first (a reset discards data
/// still in the sender's socket buffer). Loopback delivers in microseconds.
const PARTIAL_HEAD_GRACE: Duration = Duration::from_millis(50);

/// A keep-alive HTTP/1.1 server that resets chosen requests' connections
/// (TCP RST, not FIN): for testing what a client does when a connection
/// dies under a request.
///
/// Which requests fail is chosen by connection and request number
/// ([`on_request`](ResetServerBuilder::on_request),
/// [`fault_on`](ResetServerBuilder::fault_on)); how they fail by one of:
///
/// * [`reset_after_bytes(n)`](ResetServerBuilder::reset_after_bytes): reset
///   once `n` bytes of the request (head and body) have arrived — the
///   request is never processed;
/// * [`partial_head(n)`](ResetServerBuilder::partial_head): read the whole
///   request, write the first `n` bytes of the response head, then reset.
///
/// Every other request is read completely and answered `200 OK` with the
/// decimal count of body bytes read.
#[derive(Debug)]
pub struct ResetServer {
    running: Running,
    counters: Arc<Counters>,
}

/// Chooses the failing requests: `(connection, request)`, both numbered
/// from 1 in the order the server accepted or read them.
type FaultOn = Arc<dyn Fn(u64, u64) -> bool + Send + Sync>;

/// Configures and starts a [`ResetServer`].
#[derive(Clone)]
pub struct ResetServerBuilder {
    fault_on: FaultOn,
    fault: Fault,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    AfterBytes(usize),
    PartialHead(usize),
}

#[derive(Debug, Default)]
struct Counters {
    connections: Counter,
    attempts: Counter,
    requests: Counter,
    responses: Counter,
    resets: Counter,
    bytes_read: Counter,
}

impl ResetServer {
    /// A builder for a server that resets the first request of every
    /// connection as soon as its first byte arrives.
    pub fn builder() -> ResetServerBuilder {
        ResetServerBuilder {
            fault_on: Arc::new(|_, request| request == 1),
            fault: Fault::AfterBytes(1),
        }
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.counters.connections.get()
    }

    /// Requests that began to arrive (at least one byte), including the ones
    /// reset before their head was complete: every attempt a client made.
    pub fn attempts(&self) -> u64 {
        self.counters.attempts.get()
    }

    /// Request heads read completely.
    pub fn requests(&self) -> u64 {
        self.counters.requests.get()
    }

    /// Requests answered: the requests the server processed (counted just
    /// before the answer is written, so a client holding its response always
    /// finds it counted).
    pub fn responses(&self) -> u64 {
        self.counters.responses.get()
    }

    /// Connections reset on purpose.
    pub fn resets(&self) -> u64 {
        self.counters.resets.get()
    }

    /// Request body bytes read from requests that were answered or whose
    /// response head was cut.
    pub fn bytes_read(&self) -> u64 {
        self.counters.bytes_read.get()
    }
}

impl_addr!(ResetServer);

impl ResetServerBuilder {
    /// Fails request number `request` (from 1) of every connection.
    pub fn on_request(self, request: u64) -> Self {
        self.fault_on(move |_, r| r == request)
    }

    /// Fails the requests for which `choose(connection, request)` is true;
    /// both are numbered from 1, connections in the order accepted.
    pub fn fault_on(mut self, choose: impl Fn(u64, u64) -> bool + Send + Sync + 'static) -> Self {
        self.fault_on = Arc::new(choose);
        self
    }

    /// Resets a failing request's connection once `bytes` bytes of it (head
    /// and body) have arrived, or at its first byte for 0 or 1. Default 1.
    pub fn reset_after_bytes(mut self, bytes: usize) -> Self {
        self.fault = Fault::AfterBytes(bytes);
        self
    }

    /// Reads a failing request completely, writes the first `bytes` bytes
    /// of a `200 OK` response head (at most all but its last byte), then
    /// resets the connection.
    pub fn partial_head(mut self, bytes: usize) -> Self {
        self.fault = Fault::PartialHead(bytes);
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(self) -> io::Result<ResetServer> {
        let (running, counters) = start(self, serve).await?;
        Ok(ResetServer { running, counters })
    }
}

impl fmt::Debug for ResetServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResetServerBuilder")
            .field("fault", &self.fault)
            .finish_non_exhaustive()
    }
}

/// Closes with a TCP RST: a zero linger makes `close` abort the connection.
fn reset(conn: Conn<TcpStream>, counters: &Counters) -> io::Result<()> {
    // `set_linger` is deprecated because a non-zero linger blocks the
    // thread on close; a zero linger never blocks.
    #[allow(deprecated)]
    conn.get_ref().set_linger(Some(Duration::ZERO))?;
    counters.resets.inc();
    drop(conn);
    Ok(())
}

async fn serve(
    mut conn: Conn<TcpStream>,
    config: Arc<ResetServerBuilder>,
    counters: Arc<Counters>,
) -> io::Result<()> {
    let connection = counters.connections.next();
    let mut number = 0;
    while conn.wait_for_byte().await? {
        number += 1;
        counters.attempts.inc();
        let faulty = (config.fault_on)(connection, number);
        if let (true, Fault::AfterBytes(n)) = (faulty, config.fault) {
            conn.fill(n).await?;
            return reset(conn, &counters);
        }
        let Some(head) = conn.next_request().await? else {
            return Ok(());
        };
        counters.requests.inc();
        let n = conn.read_body(&mut head.body(), |_| {}).await?;
        counters.bytes_read.add(n);
        let body = n.to_string();
        if let (true, Fault::PartialHead(cut)) = (faulty, config.fault) {
            let head = ok_head(body.len() as u64, &[]);
            let cut = cut.min(head.len() - 1);
            conn.write_all(&head[..cut]).await?;
            tokio::time::sleep(PARTIAL_HEAD_GRACE).await;
            return reset(conn, &counters);
        }
        let close = ["Connection: close".to_owned()];
        let extra: &[String] = if head.keep_alive { &[] } else { &close };
        let response = ok_response(body.as_bytes(), extra);
        // Counted before the answer goes out, so a client holding its
        // response always finds it counted.
        counters.responses.inc();
        conn.write_all(without_body(&response, body.len(), &head))
            .await?;
        if !head.keep_alive {
            return conn.shutdown().await;
        }
    }
    Ok(())
}
