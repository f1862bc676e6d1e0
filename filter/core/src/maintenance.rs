//! What a plugin instance does besides requests, on every worker: whether to
//! tick at all, the idempotency sweep (a cursor over the buckets, a slice per
//! tick), and watching a host that evicts (ngx_wasm_module): the canaries
//! planted once, checked once per period, and the one log line that says how
//! to size the zone. The glue probes the host and counts; every decision is here.

use std::ops::Range;

use crate::config::CompiledConfig;
use crate::engine;
use crate::exchange::LogLevel;
use crate::store::{self, Canary, HostSemantics, SharedStore, StoreError};

/// Idempotency buckets each worker's tick sweeps for expired records.
pub const RECLAIM_BUCKETS_PER_TICK: u32 = 64;
/// How often each worker ticks, when it ticks at all.
pub const TICK_SECONDS: u64 = 1;

/// One log line for the host.
pub type LogLine = (LogLevel, String);

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    pub reclaimed: u32,
    pub logs: Vec<LogLine>,
}

/// The per-instance maintenance state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    reclaim_cursor: u32,
    probed: bool,
    /// Every canary was planted: from now on a missing one means eviction.
    planted: bool,
    /// The canary period last checked (one check per period is enough).
    checked_epoch: Option<u64>,
    eviction_logged: bool,
}

impl Maintenance {
    pub fn new() -> Self {
        Self::default()
    }

    /// The host's shared-data semantics are probed once per VM, with the first
    /// accepted configuration's namespace.
    pub fn needs_probe(&self) -> bool {
        !self.probed
    }

    /// The probe's answer; plants the canaries where the host evicts.
    pub fn probed(
        &mut self,
        probe: Result<HostSemantics, StoreError>,
        store: &dyn SharedStore,
        now_unix_ns: u64,
    ) -> Vec<LogLine> {
        self.probed = true;
        let mut logs = vec![match probe {
            Ok(semantics) => (
                LogLevel::Info,
                format!("shared data follows {semantics:?} semantics"),
            ),
            Err(err) => (
                LogLevel::Error,
                format!("{err}; assuming Envoy's semantics"),
            ),
        }];
        if watches(store) {
            match store::plant_canaries(store, now_unix_ns) {
                Ok(()) => self.planted = true,
                Err(err) => logs.push((LogLevel::Warn, format!("eviction canaries: {err}"))),
            }
        }
        logs
    }

    /// Ticks only when there is something to flush, sweep or watch.
    pub fn wants_tick(
        &self,
        config: Option<&CompiledConfig>,
        metrics_enabled: bool,
        store: &dyn SharedStore,
    ) -> bool {
        config.is_some_and(CompiledConfig::uses_idempotency) || metrics_enabled || watches(store)
    }

    /// Checks this period's canary (noting an eviction in the store) and
    /// sweeps the next slice of idempotency buckets.
    pub fn tick(
        &mut self,
        config: Option<&CompiledConfig>,
        store: &dyn SharedStore,
        now_unix_ns: u64,
    ) -> TickReport {
        let mut report = TickReport::default();
        let Some(config) = config else {
            return report;
        };
        if watches(store) && self.planted {
            if let Err(err) = self.check_canary(store, now_unix_ns) {
                report
                    .logs
                    .push((LogLevel::Warn, format!("eviction canary: {err}")));
            }
        }
        if !config.uses_idempotency() {
            return report;
        }
        match engine::reclaim_idempotency(self.next_sweep(config), now_unix_ns, store) {
            Ok(count) => report.reclaimed = count,
            Err(err) => report
                .logs
                .push((LogLevel::Warn, format!("idempotency reclaim failed: {err}"))),
        }
        report
    }

    /// Evictions the store noticed since the last tick: the sizing rule, logged once per VM.
    pub fn evictions(&mut self, config: Option<&CompiledConfig>, evicted: u32) -> Option<LogLine> {
        let config = config?;
        if evicted == 0 || self.eviction_logged {
            return None;
        }
        self.eviction_logged = true;
        Some((LogLevel::Error, sizing_message(config)))
    }

    fn check_canary(
        &mut self,
        store: &dyn SharedStore,
        now_unix_ns: u64,
    ) -> Result<(), StoreError> {
        let epoch = store::canary_epoch(now_unix_ns);
        if self.checked_epoch == Some(epoch) {
            return Ok(());
        }
        self.checked_epoch = Some(epoch);
        if store::check_canary(store, now_unix_ns)? == Canary::Evicted {
            store.note_evicted();
        }
        Ok(())
    }

    /// Ticks fire on every worker: reclaiming is idempotent, so each sweeps its own cursor.
    fn next_sweep(&mut self, config: &CompiledConfig) -> Range<u32> {
        let buckets = config.store.idempotency_buckets;
        let start = self.reclaim_cursor % buckets.max(1);
        let end = start.saturating_add(RECLAIM_BUCKETS_PER_TICK).min(buckets);
        self.reclaim_cursor = if end >= buckets { 0 } else { end };
        start..end
    }
}

/// Only ngx_wasm_module evicts, so only there is there anything to watch.
fn watches(store: &dyn SharedStore) -> bool {
    store.semantics() == HostSemantics::NgxWasm
}

/// The one eviction log line: what was lost and how large the zone must be.
fn sizing_message(config: &CompiledConfig) -> String {
    // One value per tenant holds its limits that count the tenant (and its
    // routes'); per-key limits add up to `store.key_slots` values per tenant.
    let limits: usize = config
        .tenants
        .values()
        .map(|tenant| usize::from(!tenant.policies.is_empty() || !tenant.routes.is_empty()))
        .sum();
    let buckets = config.store.idempotency_buckets;
    let unknown = config.store.unknown_tenant_slots;
    format!(
        "the shared-data zone evicted entries: rate-limit state and idempotency records were lost (an evicted record can let a retried request execute twice). \
         Size the zone (Kong: nginx_wasm_shm_kv, nginx: shm_kv) to at least 1.25 × (rate-limit keys × 256 B + {buckets} idempotency buckets × (1 KiB + 8 × stored response) + tenants × 1 KiB); \
         this configuration has {limits} limits of configured tenants and {unknown} keys for unknown tenants. Counted in tenant_guard_store_evicted; see kong/README.md \"Sizing\"."
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Eviction, MemoryStore};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const T0: u64 = 1_700_000_000_000_000_000;

    fn config(document: &str) -> CompiledConfig {
        crate::config::parse(document.as_bytes()).unwrap()
    }

    #[test]
    fn the_sweep_walks_every_bucket_and_wraps() {
        let config = config(
            r#"{"version":1,"tenant":{"trust_header_without_jwt":true},"store":{"idempotency_buckets":150},
                "defaults":{"idempotency":{}}}"#,
        );
        let mut maintenance = Maintenance::new();
        let slices: Vec<_> = (0..4).map(|_| maintenance.next_sweep(&config)).collect();
        assert_eq!(slices, vec![0..64, 64..128, 128..150, 0..64]);
    }

    #[test]
    fn an_evicting_host_is_watched_and_its_eviction_logged_once() {
        let config = config(r#"{"version":1,"tenant":{"trust_header_without_jwt":true}}"#);
        let store = MemoryStore::ngx_wasm(4096, Eviction::Lru);
        let mut maintenance = Maintenance::new();
        assert!(maintenance.needs_probe());
        let logs = maintenance.probed(Ok(HostSemantics::NgxWasm), &store, T0);
        assert!(!maintenance.needs_probe());
        assert!(logs[0].1.contains("NgxWasm"), "{logs:?}");
        assert!(maintenance.wants_tick(Some(&config), false, &store));
        assert!(maintenance.evictions(Some(&config), 0).is_none());
        let line = maintenance.evictions(Some(&config), 3).expect("logged");
        assert_eq!(line.0, LogLevel::Error);
        assert!(line.1.contains("nginx_wasm_shm_kv"), "{}", line.1);
        assert!(maintenance.evictions(Some(&config), 5).is_none());
    }

    #[test]
    fn envoy_without_metrics_or_idempotency_does_not_tick() {
        let config = config(r#"{"version":1,"tenant":{"trust_header_without_jwt":true}}"#);
        let store = MemoryStore::new();
        let maintenance = Maintenance::new();
        assert!(!maintenance.wants_tick(Some(&config), false, &store));
        assert!(maintenance.wants_tick(Some(&config), true, &store));
    }
}
