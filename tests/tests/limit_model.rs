//! End-to-end: the limit model (several windows, calendar quotas, counters
//! per user and per header inside a tenant, plans, all-or-nothing decisions,
//! method overrides) on a real Envoy (`--concurrency 2`) in local mode, and
//! on a fleet of three Envoys with their store sidecars on a real Redis,
//! standalone and a Redis Cluster. The checks themselves are shared with the
//! Kong-engine suite (`tenant_guard_e2e::limit_model`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::json;
use tenant_guard_e2e::backend::Backend;
use tenant_guard_e2e::expect::assert_problem;
use tenant_guard_e2e::fleet::{admitted, assert_only, start_fleet, RedisTarget, Replica};
use tenant_guard_e2e::limit_model::{self, get, TENANT};
use tenant_guard_e2e::wait::wait_until;
use tenant_guard_e2e::Envoy;
use tenant_guard_sidecar::test_support::{RedisCluster, RedisServer};

const SETTLE: std::time::Duration = std::time::Duration::from_secs(20);

#[test]
fn local_mode_enforces_plans_windows_user_counters_and_key_tables() {
    let backend = Backend::start();
    let config = limit_model::config(json!({ "key_slots": 1 }));
    let envoy = Envoy::start_static(&config.to_string(), backend.port());
    let ports = [envoy.port()];
    limit_model::plan_windows(&ports, &backend);
    limit_model::per_user(&ports, &backend);
    limit_model::all_or_nothing_under_concurrency(&ports, &backend);
    limit_model::key_table_full(envoy.port(), &backend);

    // Counters reach Envoy once a second per worker: polled.
    let full = || -> u64 {
        envoy
            .stats("tenant_guard_rejected.reason.rate_limit_keys_exhausted")
            .into_iter()
            .map(|(_, value)| value)
            .sum()
    };
    let counted = wait_until(SETTLE, || full() >= 1);
    assert!(
        counted && full() == 1,
        "the full key table has its own counter"
    );
    // The quota gauges of configured tenants: used and size, per limit and plan.
    let gauge = |name: &str| {
        envoy
            .stats(&format!("^wasmcustom\\.{name}$"))
            .first()
            .map(|(_, value)| *value)
    };
    assert_eq!(
        gauge("tenant_guard_quota_used.limit.day.plan.gold.tenant.trial"),
        Some(3)
    );
    assert_eq!(
        gauge("tenant_guard_quota_limit.limit.day.plan.gold.tenant.trial"),
        Some(3)
    );
    assert_eq!(
        gauge("tenant_guard_quota_used.limit.month.plan.gold.tenant.acme"),
        Some(4)
    );
    // Envoy writes its log file asynchronously: polled.
    wait_until(SETTLE, || envoy.log().contains("calendar quotas"));
    let log = envoy.log();
    let warning = "calendar quotas (day, week, month) of 3 tenant(s) (`acme`, `bigger`, `trial`)";
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("calendar quotas"))
        .collect();
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l.contains(warning)),
        "the local-mode quota warning: {lines:?}"
    );
}

#[test]
fn method_overrides_are_refused_by_default_and_count_as_the_method_when_honoured() {
    let backend = Backend::start();
    let refuse = limit_model::method_override_config(None);
    let envoy = Envoy::start_static(&refuse.to_string(), backend.port());
    for header in [
        "x-http-method-override",
        "X-HTTP-Method",
        "x-method-override",
    ] {
        let response = envoy.request(
            "POST",
            "/orders/1",
            &[(TENANT, "acme"), (header, "PUT")],
            b"{}",
        );
        let body = assert_problem(&response, 400, "method-override-refused");
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase()
                .contains(&header.to_ascii_lowercase()),
            "{body}"
        );
    }
    assert_eq!(backend.completed("/orders/1"), 0, "nothing passed unseen");
    let plain = envoy.request("POST", "/orders/1", &[(TENANT, "acme")], b"{}");
    assert_eq!(plain.status, 200, "{plain:?}");

    let honour = limit_model::method_override_config(Some("honor"));
    let envoy = Envoy::start_static(&honour.to_string(), backend.port());
    let overridden = |extra: &[(&str, &str)]| {
        let mut headers = vec![(TENANT, "acme"), ("x-http-method-override", "PUT")];
        headers.extend_from_slice(extra);
        envoy.request("POST", "/orders/2", &headers, b"{}")
    };
    // A POST that is a PUT needs the If-Match a PUT needs.
    assert_problem(&overridden(&[]), 428, "precondition-required");
    // With it, it passes and counts against the PUT-only limit (2).
    for n in 0..2 {
        let response = overridden(&[("if-match", "\"v1\"")]);
        assert_eq!(response.status, 200, "#{n}: {response:?}");
    }
    assert_problem(&overridden(&[("if-match", "\"v1\"")]), 429, "rate-limited");
    // A plain POST is not a PUT: neither rule applies.
    let plain = envoy.request("POST", "/orders/2", &[(TENANT, "acme")], b"{}");
    assert_eq!(plain.status, 200, "{plain:?}");
    assert_eq!(backend.completed("/orders/2"), 3);
}

fn cluster_store() -> serde_json::Value {
    json!({
        "backend": "cluster",
        "key_slots": 1,
        "cluster": { "timeout_ms": 500, "probe_interval_ms": 200 }
    })
}

/// A monthly quota of 30 held across the replicas: a storm over all of
/// them admits no more than 30, and the slots leases still hold come back
/// so that exactly 30 are admitted in the end.
fn monthly_quota_holds_across_the_fleet(fleet: &[Replica], backend: &Backend) {
    let ports: Vec<u16> = fleet.iter().map(|replica| replica.envoy.port()).collect();
    let mut statuses: Vec<u16> = (0..120)
        .map(|n| get(&ports, n, "/month", "monthly", &[]).status)
        .collect();
    let mut n = 0;
    let settled = wait_until(SETTLE, || {
        n += 1;
        statuses.push(get(&ports, n, "/month", "monthly", &[]).status);
        backend.completed("/month") >= 30
    });
    assert!(settled, "only {} admitted", backend.completed("/month"));
    for n in 0..9 {
        statuses.push(get(&ports, n, "/month", "monthly", &[]).status);
    }
    assert_only(&statuses, &[200, 429]);
    assert_eq!(admitted(&statuses), 30);
    assert_eq!(backend.completed("/month"), 30);
}

fn fleet_enforces_the_limit_model(redis: RedisTarget) -> (Backend, Vec<Replica>) {
    let backend = Backend::start();
    let mut config = limit_model::config(cluster_store());
    config["tenants"]["monthly"] = json!({ "rate_limits": [
        { "name": "month", "requests": 30, "per": "month" }
    ] });
    let fleet = start_fleet(3, &config.to_string(), backend.port(), &redis);
    let ports: Vec<u16> = fleet.iter().map(|replica| replica.envoy.port()).collect();
    limit_model::plan_windows(&ports, &backend);
    limit_model::per_user(&ports, &backend);
    limit_model::all_or_nothing_under_concurrency(&ports, &backend);
    monthly_quota_holds_across_the_fleet(&fleet, &backend);
    (backend, fleet)
}

/// The `tg:*` keys matching `pattern` and their TTLs in seconds.
fn keys_with_ttl(redis: &RedisServer, pattern: &str) -> Vec<(String, i64)> {
    let reply = redis
        .command(&format!("KEYS {pattern}"))
        .unwrap_or_default();
    reply
        .lines()
        .filter(|line| line.starts_with("tg:"))
        .map(|key| {
            let ttl = redis
                .command(&format!("TTL {key}"))
                .and_then(|r| r.lines().next()?.trim_start_matches(':').parse().ok())
                .unwrap_or(-3);
            (key.to_owned(), ttl)
        })
        .collect()
}

#[test]
fn a_fleet_on_standalone_redis_enforces_the_limit_model() {
    let redis = RedisServer::start();
    let _fleet = fleet_enforces_the_limit_model(RedisTarget::Standalone(redis.url()));
    // Per-user counters in Redis: one per user seen, each expiring when
    // its window is full again (2 per hour: at most an hour).
    let users = keys_with_ttl(&redis, "tg:{users}:rl:user~*");
    assert_eq!(users.len(), 3, "{users:?}");
    assert!(
        users.iter().all(|(_, ttl)| (1..=3600).contains(ttl)),
        "{users:?}"
    );
    // A daily quota's counter expires an hour after midnight UTC (late
    // returns still find it), never later.
    let day = keys_with_ttl(&redis, "tg:{trial}:q:day:*");
    assert_eq!(day.len(), 1, "{day:?}");
    let limit = i64::try_from(limit_model::seconds_to_midnight()).unwrap() + 3600;
    assert!(
        day.iter().all(|(_, ttl)| (1..=limit + 5).contains(ttl)),
        "{day:?} (midnight + 1 h is {limit} s away)"
    );
}

#[test]
fn a_fleet_on_a_redis_cluster_enforces_the_limit_model() {
    let cluster = RedisCluster::start(3);
    let _fleet = fleet_enforces_the_limit_model(RedisTarget::Cluster(cluster.urls()));
}
