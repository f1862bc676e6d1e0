//! [`TokenCache`]: the bounded per-worker cache of verified tokens.

use std::collections::{BTreeMap, VecDeque};

use super::*;

/// Bounded cache of verified tokens: SHA-256(token) → identity, served while
/// `now < exp`; when full the oldest insertion is evicted first.
#[derive(Debug)]
pub struct TokenCache {
    pub(super) capacity: usize,
    /// The [`CompiledJwt`] whose results are stored (0: none yet).
    pub(super) owner: u64,
    pub(super) entries: BTreeMap<[u8; 32], CacheEntry>,
    /// Insertion order; records whose sequence no longer matches are stale.
    pub(super) order: VecDeque<([u8; 32], u64)>,
    pub(super) next_seq: u64,
    pub(super) hits: u64,
    pub(super) misses: u64,
}

#[derive(Debug)]
pub(super) struct CacheEntry {
    pub(super) identity: Identity,
    pub(super) expires_at: u64,
    pub(super) seq: u64,
}

pub(super) fn cache_key(token: &str) -> [u8; 32] {
    hmac_sha256::Hash::hash(token.as_bytes())
}

impl TokenCache {
    /// An empty cache holding at most `capacity` tokens (0: caches nothing).
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            capacity: capacity.min(MAX_CACHE_ENTRIES),
            owner: 0,
            entries: BTreeMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            hits: 0,
            misses: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that were not.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    /// The identity of a previously inserted `token`, if it has not expired
    /// (`now < exp`). An expired entry is dropped.
    pub fn get(&mut self, token: &str, now: u64) -> Option<Identity> {
        let key = cache_key(token);
        let fresh = self.entries.get(&key).map(|entry| now < entry.expires_at);
        match fresh {
            Some(true) => {
                self.hits += 1;
                self.entries.get(&key).map(|entry| entry.identity.clone())
            }
            Some(false) => {
                self.entries.remove(&key);
                self.misses += 1;
                None
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Remember a verified `token`. Identities without an expiry are not
    /// cached. Evicts the oldest entries when full.
    pub fn insert(&mut self, token: &str, identity: Identity) {
        self.insert_at(token, identity, 0);
    }

    pub(super) fn insert_at(&mut self, token: &str, identity: Identity, now: u64) {
        let Some(expires_at) = identity.expires_at_unix else {
            return;
        };
        if self.capacity == 0 || expires_at <= now {
            return;
        }
        let key = cache_key(token);
        self.entries.remove(&key);
        while self.entries.len() >= self.capacity {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|entry| entry.seq == seq) {
                self.entries.remove(&old);
            }
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.entries.insert(
            key,
            CacheEntry {
                identity,
                expires_at,
                seq,
            },
        );
        self.order.push_back((key, seq));
        // Drop stale order records (from replaced/expired entries) so the
        // queue stays proportional to the capacity.
        if self.order.len() > self.capacity.saturating_mul(2).saturating_add(16) {
            let entries = &self.entries;
            self.order
                .retain(|(key, seq)| entries.get(key).is_some_and(|entry| entry.seq == *seq));
        }
    }
}
