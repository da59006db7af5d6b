//! A bounded record of request keys, to prove no request was processed twice.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

use super::server::Counter;

/// The most distinct keys remembered; later new keys are only counted as
/// [`KeySet::untracked`], so a long-running server never grows without bound.
pub(crate) const MAX_KEYS: usize = 1 << 16;

/// Distinct keys seen and repeats of a key already seen.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    seen: Mutex<HashSet<Bytes>>,
    duplicates: Counter,
    untracked: Counter,
}

impl KeySet {
    /// Records one processed request carrying `key`.
    pub(crate) fn record(&self, key: &[u8]) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(key) {
            self.duplicates.inc();
        } else if seen.len() < MAX_KEYS {
            seen.insert(Bytes::copy_from_slice(key));
        } else {
            self.untracked.inc();
        }
    }

    /// Distinct keys remembered (at most [`MAX_KEYS`]).
    pub(crate) fn distinct(&self) -> u64 {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64
    }

    /// Requests whose key had been seen before.
    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates.get()
    }

    /// New keys not remembered because [`MAX_KEYS`] was reached.
    pub(crate) fn untracked(&self) -> u64 {
        self.untracked.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_distinct_and_duplicate_keys() {
        let keys = KeySet::default();
        keys.record(b"a");
        keys.record(b"b");
        keys.record(b"a");
        assert_eq!(
            (keys.distinct(), keys.duplicates(), keys.untracked()),
            (2, 1, 0)
        );
    }
}
