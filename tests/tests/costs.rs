//! End-to-end: a request's cost, usage its upstream reports and caps on
//! requests in flight (README "Limits, quotas and plans") on a real Envoy
//! (`--concurrency 2`) in local mode, and on a fleet of Envoys with their
//! store sidecars on a real Redis, whose counters `tenant-guard-sidecar
//! usage` reads back. The checks are shared with the Kong-engine suite
//! (`tenant_guard_e2e::costs`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

use serde_json::{json, Value};
use tenant_guard_e2e::backend::Backend;
use tenant_guard_e2e::costs;
use tenant_guard_e2e::fleet::{start_fleet, RedisTarget};
use tenant_guard_e2e::rolling::sidecar_binary;
use tenant_guard_e2e::tempdir::TempDir;
use tenant_guard_e2e::wait::wait_until;
use tenant_guard_e2e::Envoy;
use tenant_guard_sidecar::test_support::RedisServer;

const SETTLE: std::time::Duration = std::time::Duration::from_secs(20);

fn counter(envoy: &Envoy, name: &str) -> u64 {
    envoy.stats(name).into_iter().map(|(_, value)| value).sum()
}

#[test]
fn local_mode_takes_costs_reported_usage_and_caps_in_flight() {
    let backend = Backend::start();
    costs::prepare(&backend);
    let envoy = Envoy::start_static(&costs::config(json!({})).to_string(), backend.port());
    let ports = [envoy.port()];
    costs::costly_route(&ports, &backend);
    costs::reported_usage(&ports, &backend);
    costs::garbage_usage_is_ignored(&ports, &backend);
    costs::in_flight_cap(envoy.port(), &backend);
    // Counted (handed to Envoy once a second per worker: polled).
    let counted = wait_until(SETTLE, || {
        counter(&envoy, "tenant_guard_usage_ignored") >= 6
            && counter(&envoy, "tenant_guard_rejected.reason.concurrency") >= 1
    });
    assert!(
        counted,
        "usage ignored {}, concurrency refusals {}",
        counter(&envoy, "tenant_guard_usage_ignored"),
        counter(&envoy, "tenant_guard_rejected.reason.concurrency")
    );
    assert!(
        wait_until(SETTLE, || envoy.log().contains("held no valid usage")),
        "the malformed usage is logged once"
    );
    let logged = envoy.log().matches("held no valid usage").count();
    assert!(
        (1..=2).contains(&logged),
        "once per worker at most: {logged}"
    );
}

/// `tenant-guard-sidecar usage ARGS --config FILE --redis-url URL --json`.
fn usage(config: &Value, redis: &RedisServer, args: &[&str]) -> Value {
    let dir = TempDir::new("usage").unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let out = Command::new(sidecar_binary())
        .arg("usage")
        .args(args)
        .args([
            "--json",
            "--config",
            path.to_str().unwrap(),
            "--redis-url",
            &redis.url(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "usage {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_fleet_takes_costs_and_usage_once_and_reads_them_back() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    costs::prepare(&backend);
    let config = costs::config(json!({
        "backend": "cluster",
        "cluster": { "timeout_ms": 500, "probe_interval_ms": 200 }
    }));
    let fleet = start_fleet(
        2,
        &config.to_string(),
        backend.port(),
        &RedisTarget::Standalone(redis.url()),
    );
    let ports: Vec<u16> = fleet.iter().map(|replica| replica.envoy.port()).collect();
    costs::costly_route(&ports, &backend);
    costs::reported_usage(&ports, &backend);
    costs::garbage_usage_is_ignored(&ports, &backend);
    // In-flight caps hold per gateway: a full cap on one replica leaves the
    // other's free.
    costs::in_flight_cap(ports[0], &backend);

    // The read-out: the quota the usage spent is used up in Redis.
    let rows = usage(&config, &redis, &["llm"]);
    let tokens = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["policy"] == "tokens")
        .unwrap_or_else(|| panic!("no tokens row: {rows}"));
    assert_eq!(tokens["window"], "month");
    assert_eq!(tokens["limit"], 100);
    assert!(tokens["used"].as_u64().unwrap() >= 100, "{tokens}");
    assert_eq!(tokens["remaining"], 0);
    assert!(tokens["reset_seconds"].as_u64().unwrap() > 0);
    // Every tenant, and the hour of `reports` fully used (30 of 30).
    let all = usage(&config, &redis, &[]);
    let hour = all
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["tenant"] == "reports" && row["policy"] == "hour")
        .unwrap_or_else(|| panic!("no reports row: {all}"));
    assert_eq!(hour["limit"], 30);
    assert!(hour["used"].as_u64().unwrap() >= 29, "{hour}");
    // Reading changed nothing.
    let again = usage(&config, &redis, &["llm"]);
    assert_eq!(again[0]["used"], rows[0]["used"], "{again}");
}
