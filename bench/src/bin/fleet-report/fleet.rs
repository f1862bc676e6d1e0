//! The three replicas of one mode, their upstream and (cluster modes) Redis;
//! what `/proc` and the Envoy admin say about them; and a panic hook that kills
//! them if a harness helper fails (the release profile aborts on panic, so no
//! `Drop` would run).

use std::fs;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use tenant_guard_bench::CpuTime;
use tenant_guard_e2e::backend::Backend;
use tenant_guard_e2e::envoy::counters;
use tenant_guard_e2e::fleet::{start_fleet, RedisTarget, StoreSidecar};
use tenant_guard_e2e::http::Conn;
use tenant_guard_e2e::shapes;
use tenant_guard_e2e::Envoy;
use tenant_guard_sidecar::test_support::RedisServer;

use super::{
    Res, BULK_TENANT, EXACT_LIMIT, EXACT_TENANT, ORDERS_TENANT, QUOTA_LIMIT, QUOTA_TENANT,
    SHARE_PERCENT,
};

/// The store counters the filter exports in cluster mode (`tenant_guard_store_<name>`).
pub(crate) const STORE_COUNTERS: [&str; 5] =
    ["round_trips", "failures", "fallbacks", "down", "recovered"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `store.backend: local`: each replica alone.
    Local,
    /// `store.backend: cluster` on a fresh standalone Redis.
    Cluster,
    /// The same, with Redis killed after the warm-up.
    RedisDown,
}

impl Mode {
    pub(crate) const ALL: [Mode; 3] = [Mode::Local, Mode::Cluster, Mode::RedisDown];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Mode::Local => "LOCAL",
            Mode::Cluster => "CLUSTER",
            Mode::RedisDown => "CLUSTER, Redis down",
        }
    }

    /// Its name for `--modes`.
    pub(crate) fn flag(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Cluster => "cluster",
            Mode::RedisDown => "down",
        }
    }

    pub(crate) fn is_cluster(self) -> bool {
        self != Mode::Local
    }
}

/// The plugin config of every replica in `mode`.
pub(crate) fn plugin_config(mode: Mode) -> Value {
    let store = if mode.is_cluster() {
        json!({
            "backend": "cluster",
            "cluster": {
                "timeout_ms": 500,
                "fallback_share_percent": SHARE_PERCENT,
                "probe_interval_ms": 200
            }
        })
    } else {
        json!({ "backend": "local" })
    };
    let mut config = json!({
        "version": 1,
        "revision": format!("fleet-report-{}", if mode.is_cluster() { "cluster" } else { "local" }),
        "tenant": { "trust_header_without_jwt": true },
        "metrics": true,
        "store": store,
        "tenants": {
            // Never rejects within a run: 10 M per hour, burst 10 M.
            BULK_TENANT: { "rate_limit": { "requests": 10_000_000, "per_seconds": 3600 } },
            EXACT_TENANT: { "rate_limit": { "requests": EXACT_LIMIT, "per_seconds": 3600 } },
            QUOTA_TENANT: { "rate_limits": [
                { "name": "month", "requests": QUOTA_LIMIT, "per": "month" }
            ] },
            ORDERS_TENANT: {
                "idempotency": {
                    "methods": ["POST"],
                    "ttl_seconds": 600,
                    "max_body_bytes": 4096,
                    "in_flight_timeout_seconds": 60
                }
            }
        }
    });
    if let Some(tenants) = config.get_mut("tenants").and_then(Value::as_object_mut) {
        tenants.extend(shapes::tenants_config());
    }
    config
}

// ------------------------------------------------------------------ cleanup on panic

/// Processes to kill if the harness panics (then the process aborts).
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn register(pid: u32) {
    PIDS.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(pid);
}

fn unregister(pids: &[u32]) {
    PIDS.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|pid| !pids.contains(pid));
}

/// On a panic (a harness helper failing), SIGKILLs every Envoy, store sidecar
/// and Redis still registered before the process aborts.
pub(crate) fn install_cleanup_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let pids: Vec<String> = PIDS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(u32::to_string)
            .collect();
        if !pids.is_empty() {
            eprintln!("fleet-report: killing {} started processes", pids.len());
            let _ = std::process::Command::new("kill")
                .arg("-9")
                .args(&pids)
                .status();
        }
    }));
}

/// The pid of the process whose command line (NUL-separated) satisfies `matches`.
fn find_pid(matches: impl Fn(&[&str]) -> bool) -> Option<u32> {
    fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                let text = String::from_utf8_lossy(&raw);
                let args: Vec<&str> = text.split('\0').filter(|a| !a.is_empty()).collect();
                matches(&args)
            })
        })
}

fn store_sidecar_pid(port: u16) -> Option<u32> {
    let addr = format!("127.0.0.1:{port}");
    find_pid(|args| {
        args.first()
            .is_some_and(|a| a.ends_with("tenant-guard-sidecar"))
            && args.contains(&"store")
            && args.contains(&addr.as_str())
    })
}

fn redis_pid(port: u16) -> Option<u32> {
    // Redis rewrites its title to `redis-server 127.0.0.1:<port>` (spaces, not NULs).
    let port = port.to_string();
    let suffix = format!(":{port}");
    find_pid(|args| {
        let words: Vec<&str> = args.iter().flat_map(|a| a.split_whitespace()).collect();
        words.first().is_some_and(|a| a.ends_with("redis-server"))
            && words.iter().any(|w| *w == port || w.ends_with(&suffix))
    })
}

// ------------------------------------------------------------------ the fleet

/// CPU time so far of a fleet's processes.
pub(crate) struct FleetCpu {
    /// Every Envoy, in replica order.
    pub(crate) envoys: Vec<CpuTime>,
    /// The store sidecars and Redis still alive, by pid.
    pub(crate) helpers: Vec<(u32, CpuTime)>,
}

/// One mode's replicas. Fields drop in order: Envoys, sidecars, Redis, upstream.
pub(crate) struct Fleet {
    mode: Mode,
    pub(crate) envoys: Vec<Envoy>,
    stores: Vec<StoreSidecar>,
    redis: Option<RedisServer>,
    redis_pid: Option<u32>,
    pub(crate) backend: Backend,
    /// Store sidecars' and Redis's pids (for their CPU), when found.
    helper_pids: Vec<u32>,
    registered: Vec<u32>,
}

impl Fleet {
    pub(crate) fn start(mode: Mode, replicas: usize) -> Res<Self> {
        let config = plugin_config(mode).to_string();
        let backend = Backend::start();
        let mut fleet = Fleet {
            mode,
            envoys: Vec::new(),
            stores: Vec::new(),
            redis: None,
            redis_pid: None,
            backend,
            helper_pids: Vec::new(),
            registered: Vec::new(),
        };
        if mode.is_cluster() {
            let redis =
                RedisServer::try_start().map_err(|e| format!("Redis did not start: {e}"))?;
            let target = RedisTarget::Standalone(redis.url());
            if let Some(pid) = redis_pid(redis.port()) {
                fleet.track(pid, true);
                fleet.redis_pid = Some(pid);
            }
            fleet.redis = Some(redis);
            // One replica at a time, so that a failing start leaks no earlier one.
            for _ in 0..replicas {
                for replica in start_fleet(1, &config, fleet.backend.port(), &target) {
                    let pid = replica.envoy.pid();
                    fleet.track(pid, false);
                    if let Some(pid) = store_sidecar_pid(replica.store.port()) {
                        fleet.track(pid, true);
                    }
                    fleet.envoys.push(replica.envoy);
                    fleet.stores.push(replica.store);
                }
            }
        } else {
            for _ in 0..replicas {
                let envoy = Envoy::start_static(&config, fleet.backend.port());
                fleet.track(envoy.pid(), false);
                fleet.envoys.push(envoy);
            }
        }
        if fleet.envoys.len() != replicas {
            return Err(format!(
                "{} replicas started, {replicas} wanted",
                fleet.envoys.len()
            ));
        }
        Ok(fleet)
    }

    fn track(&mut self, pid: u32, helper: bool) {
        register(pid);
        self.registered.push(pid);
        if helper {
            self.helper_pids.push(pid);
        }
    }

    pub(crate) fn ports(&self) -> Vec<u16> {
        self.envoys.iter().map(Envoy::port).collect()
    }

    /// Kills Redis (SIGKILL through the fixture); the sidecars stay up.
    pub(crate) fn kill_redis(&mut self) -> Res<()> {
        let redis = self
            .redis
            .as_mut()
            .ok_or_else(|| "no Redis to kill in this mode".to_owned())?;
        redis.kill();
        if let Some(pid) = self.redis_pid.take() {
            unregister(&[pid]);
            self.registered.retain(|p| *p != pid);
            self.helper_pids.retain(|p| *p != pid);
        }
        Ok(())
    }

    /// CPU so far of every Envoy, and of every sidecar + Redis (dead ones skipped).
    pub(crate) fn cpu(&self) -> Res<FleetCpu> {
        let envoys = self
            .envoys
            .iter()
            .map(|envoy| CpuTime::of(envoy.pid()))
            .collect::<Res<Vec<_>>>()?;
        let helpers = self
            .helper_pids
            .iter()
            .filter_map(|&pid| CpuTime::of(pid).ok().map(|cpu| (pid, cpu)))
            .collect();
        Ok(FleetCpu { envoys, helpers })
    }

    /// Whether sidecar/Redis CPU can be reported (all their processes found).
    pub(crate) fn helpers_found(&self) -> usize {
        self.helper_pids.len()
    }

    /// The sum over the replicas of each of [`STORE_COUNTERS`].
    fn store_counters_once(&self) -> Res<[u64; 5]> {
        let mut sums = [0u64; 5];
        for envoy in &self.envoys {
            let response = Conn::new(envoy.admin_port())
                .request("GET", "/stats?filter=tenant_guard_store_", &[], b"")
                .map_err(|e| format!("Envoy admin /stats: {e}"))?;
            if response.status != 200 {
                return Err(format!("Envoy admin /stats: status {}", response.status));
            }
            let text = response.text();
            for (name, value) in counters(&text) {
                for (sum, counter) in sums.iter_mut().zip(STORE_COUNTERS) {
                    if name.contains(&format!("tenant_guard_store_{counter}")) {
                        *sum += value;
                    }
                }
            }
        }
        Ok(sums)
    }

    /// [`Self::store_counters_once`] once it stopped changing: each worker
    /// hands its counters to Envoy once a second.
    pub(crate) fn store_counters(&self) -> Res<[u64; 5]> {
        if !self.mode.is_cluster() {
            return Ok([0; 5]);
        }
        let mut last = self.store_counters_once()?;
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(1100));
            let now = self.store_counters_once()?;
            if now == last {
                break;
            }
            last = now;
        }
        Ok(last)
    }
}

impl Fleet {
    /// Redis calls the store sidecars made so far (their
    /// `tenant_guard_store_redis_seconds_count`); 0 without sidecars.
    pub(crate) fn redis_calls(&self) -> Res<u64> {
        let mut calls = 0;
        for store in &self.stores {
            let response = Conn::new(store.port())
                .request("GET", "/metrics", &[], b"")
                .map_err(|e| format!("store sidecar /metrics: {e}"))?;
            let text = response.text();
            let count = text
                .lines()
                .find_map(|line| line.strip_prefix("tenant_guard_store_redis_seconds_count "))
                .and_then(|value| value.trim().parse::<u64>().ok())
                .ok_or_else(|| "no tenant_guard_store_redis_seconds_count".to_owned())?;
            calls += count;
        }
        Ok(calls)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.envoys.clear();
        self.stores.clear();
        self.redis = None;
        unregister(&self.registered);
    }
}
