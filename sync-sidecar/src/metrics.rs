//! Prometheus metrics of the sync loop, rendered in the text exposition format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

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
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
