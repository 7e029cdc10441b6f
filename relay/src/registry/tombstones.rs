//! A map whose entries vanish after a fixed time or when it is full (oldest
//! first): what the registry remembers of ended sessions and expired codes, so
//! late clients get `RESUME_EXPIRED`/`EXPIRED_CODE` instead of a bare "unknown".

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// Remembers up to `cap` keys for `ttl` each.
pub struct Tombstones<K, V> {
    map: HashMap<K, (Instant, V)>,
    order: VecDeque<(Instant, K)>,
    ttl: Duration,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Tombstones<K, V> {
    /// An empty map keeping entries `ttl` long, at most `cap` of them.
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Tombstones {
            map: HashMap::new(),
            order: VecDeque::new(),
            ttl,
            cap,
        }
    }

    /// Remembers `key` from now on, replacing an older entry.
    pub fn insert(&mut self, key: K, value: V) {
        let now = Instant::now();
        self.prune(now);
        while self.map.len() >= self.cap {
            let Some((at, old)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|(t, _)| *t == at) {
                self.map.remove(&old);
            }
        }
        self.map.insert(key.clone(), (now, value));
        self.order.push_back((now, key));
    }

    /// The value of `key` if it is still remembered.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v)
    }

    /// Whether `key` is still remembered.
    pub fn contains(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Drops entries older than the ttl.
    pub fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.ttl {
                break;
            }
            if let Some((at, key)) = self.order.pop_front() {
                if self.map.get(&key).is_some_and(|(t, _)| *t == at) {
                    self.map.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_evicts_oldest() {
        let mut t = Tombstones::new(Duration::from_secs(60), 2);
        t.insert(1, 'a');
        t.insert(2, 'b');
        t.insert(3, 'c');
        assert!(!t.contains(&1));
        assert_eq!(t.get(&2), Some(&'b'));
        assert_eq!(t.get(&3), Some(&'c'));
        assert_eq!(t.map.len(), 2);
    }

    #[test]
    fn reinsert_keeps_newest_and_ttl_expires() {
        let mut t = Tombstones::new(Duration::ZERO, 10);
        t.insert(1, 'a');
        assert!(!t.contains(&1));
        t.prune(Instant::now());
        assert!(t.map.is_empty());
        let mut t = Tombstones::new(Duration::from_secs(60), 10);
        t.insert(1, 'a');
        t.insert(1, 'b');
        assert_eq!(t.get(&1), Some(&'b'));
    }
}
