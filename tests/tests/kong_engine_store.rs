//! Shared data on the real Kong Wasm engine (`TG_NGX_WASM_NGINX`, as in
//! `kong_engine.rs`; without it, one SKIPPED line): the VMs' probe finds
//! ngx_wasm_module's semantics, and keys that share a CRC32 — which the engine
//! looks up as one entry — keep separate state: two tenants' limits, and a
//! tenant's limit next to idempotency bucket 0.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use serde_json::{json, Value};
use tenant_guard_e2e::config::PluginConfig;
use tenant_guard_e2e::http::Response;
use tenant_guard_e2e::nginx::{nginx_or_skip, Nginx};
use tenant_guard_e2e::upstream::Upstream;

const SUITE: &str = "kong_engine_store";
const TENANT: &str = "x-tenant-id";
const KEY: &str = "idempotency-key";

/// Valid tenant ids of equal length and CRC32, so their rate-limit values
/// `tg:rl:<id>` collide (CRC32 0x04cf6330; checked in the core's host-model tests).
const COLLIDING: [&str; 2] = ["tpiuh476hp", "tilbeo2p8z"];
/// `tg:rl:yvyv01z` has the CRC32 of `tg:idem:b:0`.
const COLLIDES_WITH_BUCKET_0: &str = "yvyv01z";
const LIMIT: u64 = 3;

/// The three tenants above limited to [`LIMIT`] per hour, `shop` unlimited;
/// one idempotency bucket, so every record lives in `tg:idem:b:0`.
fn config() -> Value {
    let mut config = PluginConfig::new("r-crc32").value().clone();
    let limited = json!({"rate_limit": {"requests": LIMIT, "per_seconds": 3600}});
    let [a, b] = COLLIDING;
    config["tenants"] = json!({
        a: limited,
        b: limited,
        COLLIDES_WITH_BUCKET_0: limited,
        "shop": {"rate_limit": {"requests": 1000000, "per_seconds": 3600}}
    });
    config["store"] = json!({"idempotency_buckets": 1});
    config["defaults"]["idempotency"] = json!({"methods": ["POST"], "ttl_seconds": 3600});
    config
}

fn statuses(nginx: &Nginx, tenant: &str, count: u64) -> Vec<u16> {
    (0..count)
        .map(|_| nginx.get("/limited", &[(TENANT, tenant)]).status)
        .collect()
}

fn pay(nginx: &Nginx) -> Response {
    nginx.request(
        "POST",
        "/pay",
        &[(TENANT, "shop"), (KEY, "\"order-1\"")],
        b"{\"qty\":1}",
    )
}

#[test]
fn colliding_keys_keep_separate_state_on_the_real_engine() {
    let Some(binary) = nginx_or_skip(SUITE) else {
        return;
    };
    let upstream = Upstream::start();
    let nginx = Nginx::start_one(&binary, &config().to_string(), upstream.port());

    // Both workers probed the host and found ngx_wasm_module's rules.
    assert!(
        nginx.wait_for_log(
            "shared data follows NgxWasm semantics",
            2,
            Duration::from_secs(10)
        ),
        "{}",
        nginx.error_log_tail(40)
    );

    // One idempotent POST completes and replays.
    let first = pay(&nginx);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.header("idempotent-replayed"), None);
    let executions = upstream.hits();
    assert_eq!(executions, 1);

    // Two tenants whose limit keys are one engine entry: each gets its own LIMIT.
    let [a, b] = COLLIDING;
    let expected: Vec<u16> = [200; LIMIT as usize].into_iter().chain([429]).collect();
    assert_eq!(statuses(&nginx, a, LIMIT + 1), expected, "{a}");
    assert_eq!(statuses(&nginx, b, LIMIT + 1), expected, "{b}");

    // A limit key that is bucket 0's entry neither resets nor clobbers the record.
    let tenant = COLLIDES_WITH_BUCKET_0;
    assert_eq!(statuses(&nginx, tenant, LIMIT + 1), expected, "{tenant}");
    let replay = pay(&nginx);
    assert_eq!(replay.status, 200, "{replay:?}");
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        statuses(&nginx, tenant, 1),
        [429],
        "{tenant}'s limit stays spent"
    );
    assert_eq!(statuses(&nginx, a, 1), [429], "{a}'s limit stays spent");

    // Upstream saw the one POST and the admitted GETs, nothing else.
    assert_eq!(upstream.hits(), executions + 3 * LIMIT);
    let errors = nginx.error_lines();
    assert!(errors.is_empty(), "{errors:#?}");
}

/// Clients inventing tenant ids (`unknown: defaults`, a table as large as the
/// configuration allows) push more rate-limit state than the 4 MiB zone holds:
/// the engine's SLRU evicts, and the filter says so once, with the sizing rule,
/// instead of losing state silently.
#[test]
fn a_zone_that_evicts_is_reported_with_the_sizing_rule() {
    let Some(binary) = nginx_or_skip(SUITE) else {
        return;
    };
    let upstream = Upstream::start();
    let mut config = PluginConfig::new("r-evict").value().clone();
    config["store"] = json!({"unknown_tenant_slots": 1_048_576});
    let nginx = Nginx::start_one(&binary, &config.to_string(), upstream.port());
    assert!(
        nginx.wait_for_log(
            "shared data follows NgxWasm semantics",
            2,
            Duration::from_secs(10)
        ),
        "{}",
        nginx.error_log_tail(40)
    );
    assert!(nginx.error_lines().is_empty(), "{:#?}", nginx.error_lines());

    // 4 MiB of 256-byte slab slots hold about 16 000 entries.
    let mut conn = nginx.conn();
    for i in 0..24_000 {
        let tenant = format!("flood-{i}");
        let response = conn.get("/flood", &[(TENANT, tenant.as_str())]);
        assert_eq!(response.status, 200, "{tenant}: {response:?}");
    }
    // The next canary check (once a minute) finds its canary gone.
    let reported = nginx.wait_for_log(
        "the shared-data zone evicted entries",
        1,
        Duration::from_secs(150),
    );
    assert!(reported, "{}", nginx.error_log_tail(20));
    let log = nginx.error_log();
    let line = log
        .lines()
        .find(|l| l.contains("the shared-data zone evicted entries"))
        .unwrap();
    assert!(line.contains("[error]"), "{line}");
    assert!(line.contains("nginx_wasm_shm_kv"), "{line}");
    assert!(line.contains("tenant_guard_store_evicted"), "{line}");
    // Once per worker at most, however much was evicted.
    let count = log.matches("the shared-data zone evicted entries").count();
    assert!((1..=2).contains(&count), "{count} lines");
}
