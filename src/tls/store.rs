//! A bounded, process-shareable TLS session-resumption store.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

/// A bounded in-memory [`ClientSessionStore`] for TLS session resumption.
///
/// # Bound
///
/// The store remembers at most [`max_servers`](Self::max_servers) servers
/// (keyed by the TLS server name: a DNS name or an IP address). For each
/// server it keeps at most [`TLS13_TICKETS_PER_SERVER`](Self::TLS13_TICKETS_PER_SERVER)
/// TLS 1.3 tickets (the oldest is dropped first), at most one TLS 1.2 session
/// and one key-exchange hint. When a new server would exceed the bound, the
/// server that was *added* first is evicted (first in, first out).
///
/// A ticket holds the server's certificate chain, so one entry is typically a
/// few kilobytes; the default bound of
/// [`DEFAULT_MAX_SERVERS`](Self::DEFAULT_MAX_SERVERS) servers therefore caps
/// the store at roughly a few megabytes in the worst case. Nothing in the
/// store grows beyond these limits, whatever the number of connectors or
/// clients sharing it.
///
/// Unlike rustls's `ClientSessionMemoryCache`, the current occupancy is
/// observable through [`len`](Self::len), so the bound can be monitored and
/// tested.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use tower_conn_lifecycle::tls::SessionStore;
///
/// let store = Arc::new(SessionStore::new(16));
/// assert_eq!(store.max_servers(), 16);
/// assert!(store.is_empty());
/// // Install it in a rustls config:
/// // config.resumption = rustls::client::Resumption::store(store);
/// ```
pub struct SessionStore {
    max_servers: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    servers: HashMap<ServerName<'static>, ServerData>,
    /// Insertion order of the keys of `servers`, oldest first.
    order: VecDeque<ServerName<'static>>,
}

#[derive(Default)]
struct ServerData {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    /// Oldest first; at most `TLS13_TICKETS_PER_SERVER`.
    tls13: VecDeque<Tls13ClientSessionValue>,
}

impl SessionStore {
    /// The number of servers the shared configuration's store remembers.
    pub const DEFAULT_MAX_SERVERS: usize = 128;

    /// The number of TLS 1.3 tickets kept per server.
    pub const TLS13_TICKETS_PER_SERVER: usize = 4;

    /// A store remembering at most `max_servers` servers (`0` remembers
    /// nothing, which disables resumption).
    pub fn new(max_servers: usize) -> Self {
        Self {
            max_servers,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The maximum number of servers remembered.
    pub fn max_servers(&self) -> usize {
        self.max_servers
    }

    /// The number of servers currently remembered; never more than
    /// [`max_servers`](Self::max_servers).
    pub fn len(&self) -> usize {
        self.lock().servers.len()
    }

    /// Whether no server is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of TLS 1.3 tickets currently held for all servers; never
    /// more than `max_servers() * TLS13_TICKETS_PER_SERVER`.
    pub fn tls13_tickets(&self) -> usize {
        self.lock().servers.values().map(|d| d.tls13.len()).sum()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The data stays consistent even if a holder panicked: every update
        // below is a single insert/remove.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the entry for `name`, creating it (and evicting the oldest
    /// server if the store is full) when needed.
    fn edit(&self, name: ServerName<'static>, f: impl FnOnce(&mut ServerData)) {
        if self.max_servers == 0 {
            return;
        }
        let mut inner = self.lock();
        if !inner.servers.contains_key(&name) {
            while inner.servers.len() >= self.max_servers {
                match inner.order.pop_front() {
                    Some(oldest) => {
                        inner.servers.remove(&oldest);
                    }
                    None => break,
                }
            }
            inner.order.push_back(name.clone());
            inner.servers.insert(name.clone(), ServerData::default());
        }
        if let Some(data) = inner.servers.get_mut(&name) {
            f(data);
        }
    }
}

impl Default for SessionStore {
    /// A store with [`DEFAULT_MAX_SERVERS`](Self::DEFAULT_MAX_SERVERS).
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_SERVERS)
    }
}

impl fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStore")
            .field("max_servers", &self.max_servers)
            .field("len", &self.len())
            .finish()
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.edit(server_name, |d| d.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        let inner = self.lock();
        // `HashMap` is covariant in its key type, so the `'static`-keyed map
        // can be searched with a shorter-lived name without allocating.
        let servers: &HashMap<ServerName<'_>, ServerData> = &inner.servers;
        servers.get(server_name).and_then(|d| d.kx_hint)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.edit(server_name, |d| d.tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        let inner = self.lock();
        let servers: &HashMap<ServerName<'_>, ServerData> = &inner.servers;
        servers.get(server_name).and_then(|d| d.tls12.clone())
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        if let Some(d) = self.lock().servers.get_mut(server_name) {
            d.tls12 = None;
        }
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.edit(server_name, |d| {
            while d.tls13.len() >= Self::TLS13_TICKETS_PER_SERVER {
                d.tls13.pop_front();
            }
            d.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.lock()
            .servers
            .get_mut(server_name)
            .and_then(|d| d.tls13.pop_back())
    }
}
