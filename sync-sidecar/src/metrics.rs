//! Prometheus metrics of the sync loop and of the store endpoint
//! ([`StoreMetrics`]), rendered in the text exposition format.
//!
//! The store endpoint's metrics are served on its own listener (`GET
//! /metrics`); a `run` that hosts the endpoint also [`register_store`]s them,
//! so the admin API's `/metrics` carries them too.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::store::Persistence;

const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Counters and gauges shared by the sync loop and the admin server.
#[derive(Debug, Default)]
pub struct Metrics {
    success: AtomicU64,
    errors: AtomicU64,
    current_revision: AtomicI64,
    /// The `gateway` label of `gateway_deployment_status` (the delivery target's name).
    gateway: &'static str,
    /// 1 when the last sync left the gateway on the current settings, 0 after a failure.
    deployment_status: AtomicI64,
    db_connected: AtomicBool,
    ready: AtomicBool,
    histogram: Mutex<Histogram>,
}

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    /// The metrics of a sidecar delivering to `gateway` (`envoy`, `kong`).
    pub fn for_gateway(gateway: &'static str) -> Self {
        Self {
            gateway,
            ..Self::default()
        }
    }

    /// Records a successful sync that left `revision_id` deployed.
    pub fn sync_succeeded(&self, duration: Duration, revision_id: i64) {
        self.observe(duration);
        self.success.fetch_add(1, Ordering::Relaxed);
        self.current_revision.store(revision_id, Ordering::Relaxed);
        self.deployment_status.store(1, Ordering::Relaxed);
        self.ready.store(true, Ordering::Release);
    }

    pub fn sync_failed(&self, duration: Duration) {
        self.observe(duration);
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.deployment_status.store(0, Ordering::Relaxed);
    }

    pub fn set_db_connected(&self, connected: bool) {
        self.db_connected.store(connected, Ordering::Relaxed);
    }

    /// Ready once a sync has left a delivered revision in place.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        if let Ok(mut h) = self.histogram.lock() {
            for (count, bound) in h.counts.iter_mut().zip(BUCKETS) {
                if seconds <= bound {
                    *count += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP settings_sync_duration_seconds Duration of settings syncs."
        );
        let _ = writeln!(out, "# TYPE settings_sync_duration_seconds histogram");
        if let Ok(h) = self.histogram.lock() {
            for (count, bound) in h.counts.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "settings_sync_duration_seconds_bucket{{le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "settings_sync_duration_seconds_bucket{{le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "settings_sync_duration_seconds_sum {}", h.sum);
            let _ = writeln!(out, "settings_sync_duration_seconds_count {}", h.count);
        }
        let gauge = |out: &mut String, name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(
                out,
                "# TYPE {} {kind}",
                name.split('{').next().unwrap_or(name)
            );
            let _ = writeln!(out, "{name} {value}");
        };
        gauge(
            &mut out,
            "settings_sync_success_total",
            "counter",
            "Syncs that left the current settings deployed.",
            self.success.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "settings_sync_errors_total",
            "counter",
            "Syncs that failed (invalid settings, database or delivery errors).",
            self.errors.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            &format!("gateway_deployment_status{{gateway=\"{}\"}}", self.gateway),
            "gauge",
            "1 when the gateway runs the current settings, 0 after a failed sync.",
            self.deployment_status.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "settings_current_revision",
            "gauge",
            "Number of the revision deployed to the gateway.",
            self.current_revision.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "settings_database_connected",
            "gauge",
            "1 while the sidecar holds a database session.",
            u8::from(self.db_connected.load(Ordering::Relaxed)).to_string(),
        );
        if let Some(store) = REGISTERED_STORE.get() {
            store.render_into(&mut out);
        }
        out
    }
}

/// The store metrics the admin API renders next to the sync loop's.
static REGISTERED_STORE: OnceLock<Arc<StoreMetrics>> = OnceLock::new();

/// Has the admin API's `/metrics` render `store` too (the first registration
/// of the process stands: one `run` hosts at most one store endpoint).
pub fn register_store(store: Arc<StoreMetrics>) {
    let _ = REGISTERED_STORE.set(store);
}

/// Buckets of `tenant_guard_store_redis_seconds`.
const STORE_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
];

/// An operation of the store endpoint (the `op` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Lease,
    Leases,
    Claim,
    Complete,
    Release,
    Debit,
}

impl StoreOp {
    pub const ALL: [Self; 6] = [
        Self::Lease,
        Self::Leases,
        Self::Claim,
        Self::Complete,
        Self::Release,
        Self::Debit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lease => "lease",
            Self::Leases => "leases",
            Self::Claim => "claim",
            Self::Complete => "complete",
            Self::Debit => "debit",
            Self::Release => "release",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Lease => 0,
            Self::Leases => 1,
            Self::Claim => 2,
            Self::Complete => 3,
            Self::Release => 4,
            Self::Debit => 5,
        }
    }
}

/// How a store request ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Answered `200`.
    Ok,
    /// Refused with `400`/`413`.
    BadRequest,
    /// Redis failed or timed out: `503`.
    RedisError,
}

impl StoreOutcome {
    pub const ALL: [Self; 3] = [Self::Ok, Self::BadRequest, Self::RedisError];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::BadRequest => "bad_request",
            Self::RedisError => "redis_error",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Ok => 0,
            Self::BadRequest => 1,
            Self::RedisError => 2,
        }
    }
}

/// Counters and the Redis latency histogram of the store endpoint.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// `[op][outcome]`.
    requests: [[AtomicU64; 3]; StoreOp::ALL.len()],
    redis: Mutex<StoreHistogram>,
    /// Lease requests served out of another request's call.
    lease_joined: AtomicU64,
    /// What Redis keeps across a restart, as last read.
    persistence: Mutex<Option<Persistence>>,
}

#[derive(Debug, Default)]
struct StoreHistogram {
    counts: [u64; STORE_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl StoreMetrics {
    /// Counts one request of `op` that ended as `outcome`.
    pub fn request(&self, op: StoreOp, outcome: StoreOutcome) {
        if let Some(counter) = self
            .requests
            .get(op.index())
            .and_then(|row| row.get(outcome.index()))
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests of `op` that ended as `outcome` so far.
    pub fn requests(&self, op: StoreOp, outcome: StoreOutcome) -> u64 {
        self.requests
            .get(op.index())
            .and_then(|row| row.get(outcome.index()))
            .map_or(0, |counter| counter.load(Ordering::Relaxed))
    }

    /// Counts one lease request served out of another request's call.
    pub fn lease_joined(&self) {
        self.lease_joined.fetch_add(1, Ordering::Relaxed);
    }

    /// Lease requests served out of another request's call so far.
    pub fn leases_joined(&self) -> u64 {
        self.lease_joined.load(Ordering::Relaxed)
    }

    /// Redis's persistence settings, as just read.
    pub fn set_persistence(&self, mode: Persistence) {
        if let Ok(mut slot) = self.persistence.lock() {
            *slot = Some(mode);
        }
    }

    /// Records how long one Redis call took (answered or not).
    pub fn redis_call(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        if let Ok(mut h) = self.redis.lock() {
            for (count, bound) in h.counts.iter_mut().zip(STORE_BUCKETS) {
                if seconds <= bound {
                    *count += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        }
    }

    /// The Prometheus text exposition of the store endpoint alone.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP tenant_guard_store_requests_total Store endpoint requests by operation and outcome."
        );
        let _ = writeln!(out, "# TYPE tenant_guard_store_requests_total counter");
        for op in StoreOp::ALL {
            for outcome in StoreOutcome::ALL {
                let _ = writeln!(
                    out,
                    "tenant_guard_store_requests_total{{op=\"{}\",outcome=\"{}\"}} {}",
                    op.as_str(),
                    outcome.as_str(),
                    self.requests(op, outcome)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP tenant_guard_store_redis_seconds Duration of the store endpoint's Redis calls."
        );
        let _ = writeln!(out, "# TYPE tenant_guard_store_redis_seconds histogram");
        if let Ok(h) = self.redis.lock() {
            for (count, bound) in h.counts.iter().zip(STORE_BUCKETS) {
                let _ = writeln!(
                    out,
                    "tenant_guard_store_redis_seconds_bucket{{le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "tenant_guard_store_redis_seconds_bucket{{le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "tenant_guard_store_redis_seconds_sum {}", h.sum);
            let _ = writeln!(out, "tenant_guard_store_redis_seconds_count {}", h.count);
        }
        let _ = writeln!(
            out,
            "# HELP tenant_guard_store_lease_joined_total Lease requests served out of another request's Redis call (one call in flight per tenant limit)."
        );
        let _ = writeln!(out, "# TYPE tenant_guard_store_lease_joined_total counter");
        let _ = writeln!(
            out,
            "tenant_guard_store_lease_joined_total {}",
            self.leases_joined()
        );
        let current = self.persistence.lock().ok().and_then(|slot| *slot);
        let _ = writeln!(
            out,
            "# HELP tenant_guard_store_redis_persistence What the store's Redis keeps across a restart (1 for the mode read last; unknown until read)."
        );
        let _ = writeln!(out, "# TYPE tenant_guard_store_redis_persistence gauge");
        for mode in Persistence::ALL {
            let value = u8::from(current.unwrap_or(Persistence::Unknown) == mode);
            let _ = writeln!(
                out,
                "tenant_guard_store_redis_persistence{{mode=\"{}\"}} {value}",
                mode.label()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_requests_are_counted_by_operation_and_outcome() {
        let metrics = StoreMetrics::default();
        metrics.request(StoreOp::Claim, StoreOutcome::RedisError);
        metrics.request(StoreOp::Claim, StoreOutcome::RedisError);
        metrics.redis_call(Duration::from_micros(700));
        let text = metrics.render();
        let series = "tenant_guard_store_requests_total{op=\"claim\",outcome=\"redis_error\"} 2";
        assert!(text.lines().any(|line| line == series), "{text}");
        assert!(text
            .lines()
            .any(|line| line == "tenant_guard_store_redis_seconds_bucket{le=\"0.0005\"} 0"));
        assert!(text
            .lines()
            .any(|line| line == "tenant_guard_store_redis_seconds_bucket{le=\"0.001\"} 1"));
    }

    #[test]
    fn the_deployment_status_names_the_gateway_it_delivers_to() {
        for gateway in ["envoy", "kong"] {
            let metrics = Metrics::for_gateway(gateway);
            metrics.sync_succeeded(Duration::from_millis(3), 7);
            let text = metrics.render();
            let series = format!("gateway_deployment_status{{gateway=\"{gateway}\"}} 1");
            assert!(text.lines().any(|line| line == series), "{text}");
            metrics.sync_failed(Duration::from_millis(3));
            let series = format!("gateway_deployment_status{{gateway=\"{gateway}\"}} 0");
            assert!(metrics.render().lines().any(|line| line == series));
        }
    }
}
