//! End-to-end: one tenant cannot starve another's idempotency records in a real
//! Envoy (`envoy/static.yaml`, concurrency 2). A tenant holds at most
//! `store.idempotency_tenant_share_percent` (default 25 %) of the records and
//! at most half of any bucket; at its share it gets 503 `idempotency-unavailable`
//! for its own new keys, while another tenant's new keys all go through.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use serde_json::json;
use tenant_guard_e2e::config::PluginConfig;
use tenant_guard_e2e::upstream::Upstream;
use tenant_guard_e2e::{wait_until, Envoy};

const TENANT: &str = "x-tenant-id";
const KEY: &str = "idempotency-key";
const PROBLEM: &str = "urn:tenant-guard:problem:";

/// 16 buckets × 8 records: a quarter is 32 records per tenant.
const BUCKETS: u64 = 16;
const SHARE: usize = 32;

fn post(envoy: &Envoy, tenant: &str, key: &str) -> tenant_guard_e2e::http::Response {
    let key = format!("\"{key}\"");
    envoy.request(
        "POST",
        "/orders",
        &[(TENANT, tenant), (KEY, key.as_str())],
        b"{\"qty\":1}",
    )
}

#[test]
fn a_tenant_at_its_share_cannot_refuse_another_tenants_keys() {
    let upstream = Upstream::start();
    let config = PluginConfig::new("r-fair")
        .set(
            "store",
            json!({ "idempotency_buckets": BUCKETS, "max_cas_retries": 256 }),
        )
        .value()
        .clone();
    let mut config = config;
    // Configured tenants each have their own share (unknown ones share one).
    config["tenants"] = json!({"greedy": {}, "polite": {}});
    config["defaults"]["idempotency"] = json!({
        "methods": ["POST"],
        "required": true,
        "ttl_seconds": 3600,
        "max_body_bytes": 4096
    });
    let envoy = Envoy::start_static(&config.to_string(), upstream.port());

    // The greedy tenant sends many new keys: SHARE of them are stored, the rest refused.
    let mut stored = 0;
    let mut refused = Vec::new();
    for i in 0..(SHARE * 3) {
        let response = post(&envoy, "greedy", &format!("g-{i}"));
        match response.status {
            200 => stored += 1,
            503 => refused.push(response),
            other => panic!("greedy key {i}: unexpected {other}: {response:?}"),
        }
    }
    assert_eq!(stored, SHARE, "greedy holds exactly its share");
    assert_eq!(upstream.hits(), SHARE as u64);
    for response in &refused {
        assert_eq!(
            response.json()["type"],
            format!("{PROBLEM}idempotency-unavailable"),
            "{response:?}"
        );
        let retry: u64 = response.header_once("retry-after").parse().unwrap();
        assert!(retry >= 1, "{response:?}");
        assert!(
            response.json()["detail"]
                .as_str()
                .unwrap()
                .contains("share"),
            "{response:?}"
        );
    }

    // Another tenant's new keys all succeed, and each reaches upstream once.
    for i in 0..10 {
        let response = post(&envoy, "polite", &format!("p-{i}"));
        assert_eq!(response.status, 200, "polite key {i}: {response:?}");
        assert_eq!(response.header("idempotent-replayed"), None);
    }
    assert_eq!(upstream.hits(), SHARE as u64 + 10);

    // Greedy's stored keys still replay (refusing new keys loses nothing).
    let replay = post(&envoy, "greedy", "g-0");
    assert_eq!(replay.status, 200, "{replay:?}");
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(upstream.hits(), SHARE as u64 + 10);

    // The VMs probed the host's shared-data semantics and found Envoy's (a wrong
    // answer would encode "create" as CAS 0, which Envoy treats as a blind write).
    // Envoy flushes its log file every few seconds: poll for the line.
    let probed = wait_until(Duration::from_secs(30), || {
        envoy.log().contains("shared data follows Envoy semantics")
    });
    assert!(
        probed,
        "no probe result in the log:\n{}",
        envoy.log_tail(40)
    );
    assert!(
        !envoy.log().contains("NgxWasm semantics"),
        "{}",
        envoy.log_tail(40)
    );
    // Envoy never evicts: the counter exists and stays 0.
    let evicted = envoy.stats("tenant_guard_store_evicted$");
    assert!(
        !evicted.is_empty(),
        "tenant_guard_store_evicted is not defined"
    );
    assert!(evicted.iter().all(|(_, n)| *n == 0), "{evicted:?}");
}
