//! The settings and sizes every operation reads: `idempotency` config, store
//! parameters, per-tenant shares and record lifetimes.

use serde::{Deserialize, Serialize};

use crate::config::StoreConfig;

use super::*;

/// `idempotency` settings (under `defaults` or a tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    pub methods: Vec<String>,
    /// A configured method without the header is rejected (400).
    pub required: bool,
    pub ttl_seconds: u64,
    /// Largest request body buffered (413 above) and largest response body stored for replay.
    pub max_body_bytes: u64,
    /// How long an in-flight claim holds the key if its request never finishes.
    pub in_flight_timeout_seconds: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            methods: vec!["POST".to_owned(), "PATCH".to_owned()],
            required: true,
            ttl_seconds: 86_400,
            max_body_bytes: 65_536,
            in_flight_timeout_seconds: 60,
        }
    }
}

/// The storage parameters shared by every operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreParams {
    pub buckets: u32,
    pub max_cas_retries: u32,
    /// Live records one tenant may hold (`u32::MAX`: no per-tenant limit).
    pub tenant_slots: u32,
    /// Slots of one bucket one tenant may hold, so no tenant alone fills a
    /// bucket other tenants' keys hash to ([`SLOTS_PER_BUCKET`]: no cap).
    pub tenant_bucket_slots: u8,
}

impl StoreParams {
    pub fn of(config: &StoreConfig) -> Self {
        Self {
            buckets: config.idempotency_buckets,
            max_cas_retries: config.max_cas_retries,
            tenant_slots: tenant_slots(
                config.idempotency_buckets,
                config.idempotency_tenant_share_percent,
            ),
            tenant_bucket_slots: tenant_bucket_slots(config.idempotency_tenant_share_percent),
        }
    }

    /// Every record the store can hold.
    pub fn capacity(&self) -> u64 {
        u64::from(self.buckets) * SLOTS_PER_BUCKET as u64
    }
}

/// Records one tenant may hold: `share_percent` of the store, at least one.
pub fn tenant_slots(buckets: u32, share_percent: u8) -> u32 {
    if share_percent >= 100 {
        return u32::MAX;
    }
    let capacity = u64::from(buckets) * SLOTS_PER_BUCKET as u64;
    u32::try_from((capacity * u64::from(share_percent) / 100).max(1)).unwrap_or(u32::MAX)
}

/// Slots of a bucket one tenant may hold: twice its share (half the bucket at
/// the default 25 %), so a tenant at its share still finds room in most buckets.
pub fn tenant_bucket_slots(share_percent: u8) -> u8 {
    let slots = (usize::from(share_percent) * SLOTS_PER_BUCKET * 2).div_ceil(100);
    u8::try_from(slots.clamp(1, SLOTS_PER_BUCKET)).unwrap_or(u8::MAX)
}

/// How long a claimed record lives (until a claim lapses, and after
/// completion), and whose share it counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub in_flight_timeout_seconds: u64,
    pub ttl_seconds: u64,
    /// The tenant is not configured: all such tenants share one share (one
    /// ledger), so clients inventing tenant ids neither grow the store nor
    /// take more than one share together.
    pub pooled_share: bool,
}

impl Lifetimes {
    pub fn of(config: &IdempotencyConfig, pooled_share: bool) -> Self {
        Self {
            in_flight_timeout_seconds: config.in_flight_timeout_seconds,
            ttl_seconds: config.ttl_seconds,
            pooled_share,
        }
    }
}
