//! The shared store the rate limiter (and later idempotency) keeps state in:
//! a small get/compare-and-swap trait mirroring proxy-wasm shared data, and an
//! in-memory implementation with Envoy's exact semantics for tests and benches.

use std::collections::HashMap;
use std::sync::Mutex;

/// A CAS value that Envoy never hands out in practice; writing a missing key
/// with it creates the key, and fails once another writer has created it.
pub const CREATE_IF_MISSING_CAS: u32 = u32::MAX;

/// Result of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    Written,
    /// Another writer changed the value since it was read.
    Conflict,
}

/// The store failed (host error); the caller decides the outcome from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shared store error: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// Shared key/value storage with compare-and-swap, as the proxy-wasm ABI offers it.
///
/// Semantics (measured on Envoy, DESIGN.md §5): `get` of a missing key is `None`;
/// `set` with `cas = None` is unconditional; `set` on a missing key ignores `cas`;
/// on an existing key a `cas` different from the current one is a conflict.
pub trait SharedStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<CasOutcome, StoreError>;
}

/// Thread-safe in-memory store with Envoy's shared-data semantics.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    entries: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys ever created (the ABI has no delete).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .map(|inner| inner.entries.len())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let inner = self
            .inner
            .lock()
            .map_err(|_| StoreError("poisoned".into()))?;
        Ok(inner.entries.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<CasOutcome, StoreError> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| StoreError("poisoned".into()))?;
        inner.next_cas = inner.next_cas.wrapping_add(1).max(1);
        let next_cas = inner.next_cas;
        match inner.entries.get_mut(key) {
            Some(entry) => {
                if matches!(cas, Some(expected) if expected != entry.1) {
                    return Ok(CasOutcome::Conflict);
                }
                *entry = (value.to_vec(), next_cas);
            }
            None => {
                inner
                    .entries
                    .insert(key.to_owned(), (value.to_vec(), next_cas));
            }
        }
        Ok(CasOutcome::Written)
    }
}
