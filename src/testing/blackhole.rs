use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::server::{url, LOOPBACK};

/// How long a filler connect may take before the accept queue is considered
/// full. Loopback connects into a queue with room complete in microseconds.
const FULL_PROBE: Duration = Duration::from_millis(50);

/// The most filler connections tried before giving up.
const MAX_FILLERS: usize = 8;

/// An address on `127.0.0.1` where a TCP connect never completes: for
/// testing a connect timeout without leaving loopback.
///
/// It is a listener with a backlog of 0 that never accepts, whose accept
/// queue it fills itself with connections it holds. Linux then drops every
/// further SYN to that port (it does not answer with a reset), so a
/// client's `connect` keeps retransmitting SYNs and hangs until its own
/// timeout — about two minutes without one. Everything is released when the
/// `Blackhole` is dropped.
///
/// This relies on the Linux behaviour of a full accept queue (with the
/// default `net.ipv4.tcp_abort_on_overflow = 0`). [`Blackhole::start`]
/// checks it: if the queue cannot be filled, it fails instead of returning
/// an address that accepts connections.
#[derive(Debug)]
pub struct Blackhole {
    addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    /// Creates the blackhole. Takes about 50 ms: the time to see a filler
    /// connect hang.
    ///
    /// # Errors
    ///
    /// Fails when binding fails, or with [`io::ErrorKind::Unsupported`] when
    /// the platform accepts connections into a full backlog.
    pub async fn start() -> io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(LOOPBACK)?;
        let listener = socket.listen(0)?;
        let addr = listener.local_addr()?;
        let mut fillers = Vec::new();
        while fillers.len() < MAX_FILLERS {
            match tokio::time::timeout(FULL_PROBE, TcpStream::connect(addr)).await {
                Ok(stream) => fillers.push(stream?),
                Err(_hung) => {
                    return Ok(Self {
                        addr,
                        _listener: listener,
                        _fillers: fillers,
                    })
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a listener that never accepts kept completing connects; no loopback blackhole here",
        ))
    }

    /// The address whose connects hang (always `127.0.0.1`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        url(self.addr)
    }
}
