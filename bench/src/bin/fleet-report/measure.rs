//! The three measurements of one mode: throughput, rate-limit exactness and
//! executions per Idempotency-Key.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::Value;
use tenant_guard_bench::WrkResult;
use tenant_guard_e2e::backend::Route;
use tenant_guard_e2e::http::{Conn, Response};
use tenant_guard_e2e::shapes;

use super::fleet::{Fleet, FleetCpu, Mode};
use super::wrk::{run_wrk_all, Load};
use super::{
    Args, Res, BULK_TENANT, EXACT_LIMIT, EXACT_TENANT, KEYS, ORDERS_TENANT, QUOTA_LIMIT,
    QUOTA_TENANT, SHARE_PERCENT,
};

/// The prefix of the filter's problem+json `type`s.
const PROBLEM: &str = "urn:tenant-guard:problem:";

/// Throughput of all replicas under wrk at once.
#[derive(Debug, Default, Clone)]
pub(crate) struct Throughput {
    /// All replicas' wrk reports combined: p50 and p99 the worst replica's.
    pub(crate) wrk: WrkResult,
    pub(crate) envoy_cpu_us: f64,
    /// Store sidecars + Redis, `None` without such processes.
    pub(crate) helper_cpu_us: Option<f64>,
    pub(crate) round_trips_per_100: f64,
    /// Redis calls of the store sidecars per 100 requests.
    pub(crate) redis_per_100: f64,
}

fn cpu_delta(before: &FleetCpu, after: &FleetCpu, ticks: u64, requests: f64) -> (f64, Option<f64>) {
    let envoys = after
        .envoys
        .iter()
        .zip(&before.envoys)
        .map(|(a, b)| a.us_per_request_since(b, ticks, requests).0)
        .sum();
    let helpers: Vec<f64> = after
        .helpers
        .iter()
        .filter_map(|(pid, a)| {
            let (_, b) = before.helpers.iter().find(|(p, _)| p == pid)?;
            Some(a.us_per_request_since(b, ticks, requests).0)
        })
        .collect();
    (envoys, (!helpers.is_empty()).then(|| helpers.iter().sum()))
}

pub(crate) fn throughput(fleet: &Fleet, args: &Args, ticks: u64) -> Res<Throughput> {
    let ports = fleet.ports();
    let load = Load {
        seconds: args.duration,
        connections: args.connections,
        tenant: BULK_TENANT,
        path: "/bench",
        script: None,
    };
    let trips_before = fleet.store_counters()?[0];
    let redis_before = fleet.redis_calls()?;
    let cpu_before = fleet.cpu()?;
    let wrk = run_wrk_all(&ports, &load)?;
    let cpu_after = fleet.cpu()?;
    let redis_after = fleet.redis_calls()?;
    let trips_after = fleet.store_counters()?[0];
    let requests = wrk.requests.max(1) as f64;
    let (envoy_cpu_us, helper_cpu_us) = cpu_delta(&cpu_before, &cpu_after, ticks, requests);
    Ok(Throughput {
        wrk,
        envoy_cpu_us,
        helper_cpu_us,
        round_trips_per_100: trips_after.saturating_sub(trips_before) as f64 * 100.0 / requests,
        redis_per_100: redis_after.saturating_sub(redis_before) as f64 * 100.0 / requests,
    })
}

/// A short run of the throughput load, not measured.
pub(crate) fn warm_up(fleet: &Fleet, args: &Args) -> Res<()> {
    run_wrk_all(
        &fleet.ports(),
        &Load {
            seconds: 1,
            connections: args.connections,
            tenant: BULK_TENANT,
            path: "/warm",
            script: None,
        },
    )
    .map(|_| ())
}

/// Rate-limit exactness across the fleet.
#[derive(Debug, Default, Clone)]
pub(crate) struct Exactness {
    pub(crate) sent: u64,
    pub(crate) admitted: u64,
    pub(crate) limited: u64,
    pub(crate) other: BTreeMap<u16, u64>,
    pub(crate) allowed: u64,
    pub(crate) upstream: u64,
    pub(crate) seconds: f64,
}

/// What the fleet may admit of [`EXACT_LIMIT`] per hour (burst = the limit)
/// over `seconds`: the burst plus the GCRA refill, in LOCAL and CLUSTER the
/// fleet-wide limit; with Redis down each replica's `SHARE_PERCENT` share.
pub(crate) fn allowed(mode: Mode, replicas: u64, seconds: f64) -> u64 {
    let refill = |limit: u64| limit + (seconds * limit as f64 / 3600.0).floor() as u64;
    match mode {
        Mode::Local | Mode::Cluster => refill(EXACT_LIMIT),
        Mode::RedisDown => replicas * refill((EXACT_LIMIT * SHARE_PERCENT / 100).max(1)),
    }
}

/// Which limit an exactness run storms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    /// [`EXACT_LIMIT`] per hour (GCRA).
    Rate,
    /// [`QUOTA_LIMIT`] per calendar month: nothing comes back within a run.
    MonthlyQuota,
}

impl Limited {
    fn tenant_and_path(self) -> (&'static str, &'static str) {
        match self {
            Self::Rate => (EXACT_TENANT, "/exact"),
            Self::MonthlyQuota => (QUOTA_TENANT, "/quota"),
        }
    }

    fn allowed(self, mode: Mode, replicas: u64, seconds: f64) -> u64 {
        match (self, mode) {
            (Self::Rate, _) => allowed(mode, replicas, seconds),
            (Self::MonthlyQuota, Mode::Local | Mode::Cluster) => QUOTA_LIMIT,
            (Self::MonthlyQuota, Mode::RedisDown) => {
                replicas * (QUOTA_LIMIT * SHARE_PERCENT / 100).max(1)
            }
        }
    }
}

pub(crate) fn exactness(
    fleet: &Fleet,
    mode: Mode,
    args: &Args,
    script: &Path,
    which: Limited,
) -> Res<Exactness> {
    let (tenant, path) = which.tenant_and_path();
    let started = Instant::now();
    let mut statuses = run_wrk_all(
        &fleet.ports(),
        &Load {
            seconds: args.duration,
            connections: args.connections,
            tenant,
            path,
            script: Some(script),
        },
    )?
    .statuses;
    let seconds = started.elapsed().as_secs_f64();
    let admitted = statuses.remove(&200).unwrap_or(0);
    let limited = statuses.remove(&429).unwrap_or(0);
    Ok(Exactness {
        sent: admitted + limited + statuses.values().sum::<u64>(),
        admitted,
        limited,
        other: statuses,
        allowed: which.allowed(mode, fleet.envoys.len() as u64, seconds),
        upstream: fleet.backend.completed(path),
        seconds,
    })
}

/// `"201"`, `"201 replayed"`, or the status and the problem type
/// (`"503 idempotency-unavailable"`).
fn answer_label(response: &Response) -> String {
    let mut label = response.status.to_string();
    if response.header("idempotent-replayed") == Some("true") {
        label.push_str(" replayed");
    }
    if response.status >= 400 {
        let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if let Some(kind) = body.get("type").and_then(Value::as_str) {
            label.push(' ');
            label.push_str(kind.trim_start_matches(PROBLEM));
        }
    }
    label
}

/// Executions per Idempotency-Key.
#[derive(Debug, Default, Clone)]
pub(crate) struct Executions {
    pub(crate) keys: usize,
    pub(crate) total: u64,
    pub(crate) max_per_key: u64,
    /// Answer ([`answer_label`]) → count.
    pub(crate) statuses: BTreeMap<String, u64>,
}

/// [`KEYS`] keys, each POSTed once to every replica at the same moment
/// (one thread per key and replica, all released by one barrier); key `n`
/// goes to `/orders/<n>`, which the upstream answers 201 after 100 ms.
pub(crate) fn executions(fleet: &Fleet, mode: Mode) -> Res<Executions> {
    let ports = fleet.ports();
    for n in 0..KEYS {
        fleet.backend.route(
            &format!("/orders/{n}"),
            Route {
                status: 201,
                delay: Duration::from_millis(100),
                ..Route::default()
            },
        );
    }
    let barrier = Arc::new(Barrier::new(KEYS * ports.len()));
    let mut handles = Vec::new();
    for n in 0..KEYS {
        for &port in &ports {
            let barrier = Arc::clone(&barrier);
            let key = format!(
                "\"fleet-report-{}-{n}\"",
                mode.label().replace([' ', ','], "")
            );
            handles.push(std::thread::spawn(move || {
                let mut conn = Conn::new(port);
                barrier.wait();
                conn.request(
                    "POST",
                    &format!("/orders/{n}"),
                    &[("x-tenant-id", ORDERS_TENANT), ("idempotency-key", &key)],
                    b"{\"qty\":1}",
                )
                .map(|response| answer_label(&response))
                .map_err(|e| e.to_string())
            }));
        }
    }
    let mut statuses = BTreeMap::<String, u64>::new();
    let mut errors = Vec::new();
    for handle in handles {
        match handle.join() {
            Ok(Ok(status)) => *statuses.entry(status).or_default() += 1,
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a client thread panicked".to_owned()),
        }
    }
    if let Some(first) = errors.first() {
        return Err(format!(
            "{} of {} idempotent POSTs failed, first: {first}",
            errors.len(),
            KEYS * ports.len()
        ));
    }
    let per_key: Vec<u64> = (0..KEYS)
        .map(|n| fleet.backend.completed(&format!("/orders/{n}")))
        .collect();
    Ok(Executions {
        keys: KEYS,
        total: per_key.iter().sum(),
        max_per_key: per_key.iter().copied().max().unwrap_or(0),
        statuses,
    })
}

/// One traffic shape in cluster mode: each tenant's outcome, and the Redis
/// calls the sidecars made for it.
#[derive(Debug, Clone)]
pub(crate) struct ShapeRun {
    pub(crate) outcomes: Vec<shapes::Outcome>,
    pub(crate) redis_per_100: f64,
}

/// Every shape of [`shapes::Shape::ALL`], one after the other.
pub(crate) fn shapes(fleet: &Fleet) -> Res<Vec<ShapeRun>> {
    let ports = fleet.ports();
    let mut runs = Vec::new();
    for shape in shapes::Shape::ALL {
        let before = fleet.redis_calls()?;
        let outcomes = shapes::run(shape, &ports, &fleet.backend);
        let calls = fleet.redis_calls()?.saturating_sub(before);
        let sent: u64 = outcomes.iter().map(|o| o.sent).sum();
        runs.push(ShapeRun {
            outcomes,
            redis_per_100: calls as f64 * 100.0 / sent.max(1) as f64,
        });
    }
    Ok(runs)
}
