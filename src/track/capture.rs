//! The one place that captures a request's connection.

use http::Request;
use hyper_util::client::legacy::connect::{capture_connection, CaptureConnection};

use super::ConnectionState;

/// The connection a request was (or will be) sent on, shared by every layer
/// of this crate that needs it.
///
/// hyper-util's [`capture_connection`] replaces any earlier capture on the
/// same request, so two layers that each called it would starve one another.
/// [`ConnectionCapture::get_or_insert`] calls it once per request and stores
/// the handle in the request's extensions; later callers get a clone of the
/// same handle. Use it instead of calling `capture_connection` yourself.
///
/// The capture is filled in after hyper-util checks a connection out of its
/// pool, before the request is written, but nothing wakes the request's task
/// when that happens: read it when something else wakes you. After one of
/// hyper-util's transparent retries it points at the newest connection.
///
/// It is the most expensive part of this crate's request plane: a watch
/// channel, two request-extension inserts, a clone of hyper-util's
/// `Connected` and a notification when the pool picks the connection, about
/// 2.7 k instructions and 7 small allocations per request on loopback (the
/// README's Performance section, row `ref_capture`). Taking it once per
/// request, whatever the number of layers, keeps that cost from adding up.
#[derive(Clone, Debug)]
pub struct ConnectionCapture {
    inner: CaptureConnection,
}

/// What a [`ConnectionCapture`] knows right now (crate-internal: the public
/// way is [`ConnectionCapture::state`]).
#[derive(Clone, Debug)]
pub(crate) enum Captured {
    /// No connection yet: still waiting for the pool or the connector (or the
    /// inner service is not hyper-util's client and never fills captures).
    Pending,
    /// Connected, but the connector is not wrapped by
    /// [`TrackConnections`](super::TrackConnections).
    Untracked,
    /// Connected through a tracked connector.
    Tracked(ConnectionState),
}

impl ConnectionCapture {
    /// Returns the request's capture, creating it on first use.
    ///
    /// A capture belongs to one attempt: if the request carries one that
    /// already points at a connection (it was cloned from an earlier attempt,
    /// `http::request::Parts` is `Clone`), a fresh one replaces it, so a
    /// retried or re-issued request never reads an earlier attempt's
    /// connection.
    pub fn get_or_insert<B>(req: &mut Request<B>) -> Self {
        if let Some(existing) = req.extensions().get::<ConnectionCapture>() {
            if existing.inner.connection_metadata().is_none() {
                return existing.clone();
            }
        }
        let capture = ConnectionCapture {
            inner: capture_connection(req),
        };
        req.extensions_mut().insert(capture.clone());
        capture
    }

    /// The connection as far as it is known now.
    pub(crate) fn get(&self) -> Captured {
        let meta = self.inner.connection_metadata();
        match meta.as_ref() {
            None => Captured::Pending,
            Some(connected) => {
                let mut extensions = http::Extensions::new();
                connected.get_extras(&mut extensions);
                match extensions.remove::<ConnectionState>() {
                    Some(state) => Captured::Tracked(state),
                    None => Captured::Untracked,
                }
            }
        }
    }

    /// Whether a connection is known yet, without building its extras (no
    /// allocation): cheap enough to ask after every poll.
    pub(crate) fn is_filled(&self) -> bool {
        self.inner.connection_metadata().is_some()
    }

    /// Marks the captured connection poisoned in hyper-util's pool, so it is
    /// never handed to another request (no effect before a connection is
    /// known).
    pub(crate) fn poison(&self) {
        if let Some(connected) = self.inner.connection_metadata().as_ref() {
            connected.poison();
        }
    }

    /// The tracked connection's state, once the request has a connection
    /// made through a tracker; `None` while it has none yet, or when its
    /// connector is not wrapped by
    /// [`TrackConnections`](super::TrackConnections).
    pub fn state(&self) -> Option<ConnectionState> {
        match self.get() {
            Captured::Tracked(state) => Some(state),
            _ => None,
        }
    }
}
