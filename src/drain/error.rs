//! The drain's errors.

use std::fmt;

/// A request refused because its client is draining
/// ([`DrainHandle::drain`](super::DrainHandle::drain),
/// [`client::Client::drain`](crate::client::Client::drain)): **nothing of
/// it was written** (no connection was even looked for), so it is always
/// safe to send it elsewhere — another client, another instance behind the
/// load balancer.
///
/// [`retry`](crate::retry) never retries it on the same client (rule
/// [`Rule::Draining`](crate::retry::Rule::Draining)): the client will not
/// take another request. Find it anywhere in an error chain with
/// [`find_cause`](crate::find_cause).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Draining;

impl Draining {
    /// Always `true`: the request never reached a connection.
    pub fn nothing_written(&self) -> bool {
        true
    }
}

impl fmt::Display for Draining {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("client is draining: request refused, nothing was written")
    }
}

impl std::error::Error for Draining {}

/// A request (or its response body) cut at its drain's deadline: it was in
/// flight when the drain began and had not ended by then. Like a timeout,
/// the server may have received and processed it; its connection was
/// closed (with the tracker). The error it was cut with, if any, is its
/// [`source`](std::error::Error::source).
#[derive(Debug)]
pub struct DrainCut {
    source: Option<crate::BoxError>,
}

impl DrainCut {
    pub(crate) fn new(source: Option<crate::BoxError>) -> Self {
        DrainCut { source }
    }
}

impl fmt::Display for DrainCut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request cut at the drain deadline")
    }
}

impl std::error::Error for DrainCut {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
