//! Watches the host's shared data for this VM: probes its semantics once (the
//! first accepted configuration names the namespace to probe in), keeps the
//! ring of eviction canaries (`tenant_guard_core::store::check_canary`), and
//! turns evictions the core noticed into the
//! `tenant_guard_store_evicted` counter and one log line with the sizing rule.

use proxy_wasm::types::LogLevel;
use tenant_guard_core::config::CompiledConfig;
use tenant_guard_core::store::{self, Canary, HostSemantics};

use crate::host::{self, HostStore, Metrics};

#[derive(Debug, Default)]
pub struct StoreWatch {
    probed: bool,
    /// Every canary was planted: from now on a missing one means eviction.
    planted: bool,
    /// The canary period last checked (one check per period is enough).
    checked_epoch: Option<u64>,
    eviction_logged: bool,
}

impl StoreWatch {
    /// Probes the host once per VM, with the first accepted configuration's namespace.
    pub fn configured(&mut self, config: &CompiledConfig) {
        if self.probed {
            return;
        }
        self.probed = true;
        let namespace = config.store.namespace.as_deref();
        match host::probe_store(namespace) {
            Ok(semantics) => host::log(
                LogLevel::Info,
                &format!("shared data follows {semantics:?} semantics"),
            ),
            Err(err) => host::log(
                LogLevel::Error,
                &format!("{err}; assuming Envoy's semantics"),
            ),
        }
        if self.wants_tick() {
            let store = HostStore {
                namespace: config.store.namespace.as_deref(),
            };
            match store::plant_canaries(&store, host::now_unix_ns()) {
                Ok(()) => self.planted = true,
                Err(err) => host::log(LogLevel::Warn, &format!("eviction canaries: {err}")),
            }
        }
    }

    /// Only ngx_wasm_module evicts, so only there is there anything to watch.
    pub fn wants_tick(&self) -> bool {
        host::semantics() == HostSemantics::NgxWasm
    }

    /// Counts and reports evictions; checks this period's canary (once per period).
    pub fn tick(&mut self, config: Option<&CompiledConfig>, metrics: &Metrics) {
        let Some(config) = config else {
            return;
        };
        if self.wants_tick() && self.planted {
            self.check_canary(config);
        }
        let evicted = host::take_evictions();
        if evicted == 0 {
            return;
        }
        metrics.count_evicted(evicted);
        if !self.eviction_logged {
            self.eviction_logged = true;
            host::log(LogLevel::Error, &sizing_message(config));
        }
    }

    fn check_canary(&mut self, config: &CompiledConfig) {
        let now_ns = host::now_unix_ns();
        let epoch = store::canary_epoch(now_ns);
        if self.checked_epoch == Some(epoch) {
            return;
        }
        self.checked_epoch = Some(epoch);
        let store = HostStore {
            namespace: config.store.namespace.as_deref(),
        };
        match store::check_canary(&store, now_ns) {
            Ok(Canary::Present) => {}
            Ok(Canary::Evicted) => store::SharedStore::note_evicted(&store),
            Err(err) => host::log(LogLevel::Warn, &format!("eviction canary: {err}")),
        }
    }
}

/// The one eviction log line: what was lost and how large the zone must be.
fn sizing_message(config: &CompiledConfig) -> String {
    let limits: usize = config
        .tenants
        .values()
        .map(|tenant| tenant.routes.len() + usize::from(tenant.tenant_wide.is_some()))
        .sum();
    let buckets = config.store.idempotency_buckets;
    let unknown = config.store.unknown_tenant_slots;
    format!(
        "the shared-data zone evicted entries: rate-limit state and idempotency records were lost (an evicted record can let a retried request execute twice). \
         Size the zone (Kong: nginx_wasm_shm_kv, nginx: shm_kv) to at least 1.25 × (rate-limit keys × 256 B + {buckets} idempotency buckets × (1 KiB + 8 × stored response) + tenants × 1 KiB); \
         this configuration has {limits} limits of configured tenants and {unknown} keys for unknown tenants. Counted in tenant_guard_store_evicted; see kong/README.md \"Sizing\"."
    )
}
