//! What a replica read lately from a KV bucket of settings admins change (per-user
//! limits, the model for everyone): a copy used for [`FRESH`] so that a turn does not
//! pay a KV read, while the value itself lives in KV and a change holds on every
//! replica within [`FRESH`]. Never a count: counts live in KV and the ledger.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How long a value read is used without reading it again.
pub const FRESH: Duration = Duration::from_secs(2);
/// Keys remembered at most; past that the copy starts over.
const KEYS: usize = 10_000;

/// Values read lately, by key.
pub struct Recent<V>(Mutex<HashMap<String, (Instant, V)>>);

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<V: Clone> Recent<V> {
    /// The value of `key` read less than [`FRESH`] ago.
    pub fn fresh(&self, key: &str) -> Option<V> {
        let seen = self.0.lock().ok()?;
        let (at, value) = seen.get(key)?;
        (at.elapsed() < FRESH).then(|| value.clone())
    }

    /// Keeps `value` as just read (or just written) for `key`.
    pub fn remember(&self, key: &str, value: V) {
        if let Ok(mut seen) = self.0.lock() {
            if seen.len() >= KEYS && !seen.contains_key(key) {
                seen.clear();
            }
            seen.insert(key.to_owned(), (Instant::now(), value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_fresh_after_it_was_read_and_unknown_keys_are_not() {
        let recent = Recent::default();
        assert_eq!(recent.fresh("ada"), None);
        recent.remember("ada", 3);
        assert_eq!(recent.fresh("ada"), Some(3));
        recent.remember("ada", 4);
        assert_eq!(recent.fresh("ada"), Some(4));
        assert_eq!(recent.fresh("bob"), None);
    }
}
