//! End-to-end: an idempotent POST executes once across a fleet even when the
//! store fails at the worst moment (README "Running a fleet", "When the store
//! fails"). Real Envoys (`--concurrency 2`), their store sidecars, real Redis.
//!
//! - the store sidecar of the replica whose POST is at the upstream is
//!   SIGKILLed, the response cannot be recorded, a new sidecar starts: the
//!   gateway sends the record again until the store takes it, so a retry on
//!   another replica after `in_flight_timeout_seconds` is a replay;
//! - Redis with an append-only file is SIGKILLed after a POST completed and
//!   restarted on the same data: the retry is a replay; without persistence
//!   the record is gone with it and the retry executes again (the limit
//!   README "Running a fleet" states).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use serde_json::json;
use tenant_guard_e2e::backend::{Backend, Route};
use tenant_guard_e2e::fleet::{start_fleet, RedisTarget, Replica};
use tenant_guard_e2e::http::Response;
use tenant_guard_e2e::wait_until;
use tenant_guard_sidecar::test_support::RedisServer;

const PATH: &str = "/orders";
/// Short, so the tests can wait it out.
const IN_FLIGHT_SECONDS: u64 = 4;
const RECOVERY: Duration = Duration::from_secs(30);

fn config() -> String {
    json!({
        "version": 1,
        "revision": "durability",
        "tenant": { "trust_header_without_jwt": true },
        "metrics": true,
        "host": { "allow_on_headers_stop_iteration": true },
        "store": {
            "backend": "cluster",
            "cluster": { "timeout_ms": 500, "probe_interval_ms": 200 }
        },
        "tenants": {
            "orders": {
                "idempotency": {
                    "methods": ["POST"],
                    "ttl_seconds": 600,
                    "max_body_bytes": 4096,
                    "in_flight_timeout_seconds": IN_FLIGHT_SECONDS
                }
            }
        }
    })
    .to_string()
}

fn post(replica: &Replica, key: &str) -> Response {
    post_to(replica.envoy.port(), key)
}

fn post_to(port: u16, key: &str) -> Response {
    tenant_guard_e2e::http::request(
        port,
        "POST",
        PATH,
        &[
            ("x-tenant-id", "orders"),
            ("idempotency-key", &format!("\"{key}\"")),
        ],
        br#"{"qty":1}"#,
    )
}

fn counter(replica: &Replica, name: &str) -> u64 {
    replica
        .envoy
        .stats(&format!("tenant_guard_store_{name}"))
        .into_iter()
        .map(|(_, value)| value)
        .sum()
}

/// The state of the one idempotency record in `redis` (`claimed`, `done`).
fn record_state(redis: &RedisServer) -> Option<String> {
    let keys = redis.command("KEYS tg:{orders}:idem:*")?;
    // RESP: `*3`, then `$<len>` and the key, line by line.
    let record = keys
        .lines()
        .map(str::trim)
        .find(|line| {
            line.starts_with("tg:") && !line.ends_with(":live") && !line.ends_with(":gen")
        })?
        .to_owned();
    let state = redis.command(&format!("HGET {record} state"))?;
    state.lines().nth(1).map(|line| line.trim().to_owned())
}

/// Retries `key` on `replica` until it is neither 409 (in flight) nor 503
/// (store recovering), past `not_before`; the answer.
fn retry_until_settled(replica: &Replica, key: &str, not_before: Instant) -> Response {
    let mut last = None;
    let settled = wait_until(RECOVERY, || {
        if Instant::now() < not_before {
            return false;
        }
        let response = post(replica, key);
        let done = !matches!(response.status, 409 | 503);
        last = Some(response);
        done
    });
    let response = last.unwrap();
    assert!(settled, "never settled: {response:?}");
    response
}

#[test]
fn a_record_lost_with_its_store_sidecar_is_sent_again_and_the_retry_replays() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    backend.hold(PATH);
    let mut fleet = start_fleet(
        2,
        &config(),
        backend.port(),
        &RedisTarget::Standalone(redis.url()),
    );
    let claimed_at = Instant::now();
    let port = fleet[0].envoy.port();
    let first = std::thread::scope(|scope| {
        let first = scope.spawn(move || post_to(port, "k-kill"));
        // The POST is at the upstream: its sidecar dies, the response follows.
        assert!(wait_until(RECOVERY, || backend.started(PATH) == 1));
        fleet[0].store.kill();
        backend.release(PATH);
        first.join().unwrap()
    });
    assert_eq!(
        first.status, 200,
        "the client still gets the response: {first:?}"
    );
    assert_eq!(record_state(&redis).as_deref(), Some("claimed"));
    fleet[0].store.restart();
    // The gateway sends the record again until the new sidecar takes it.
    let recorded = wait_until(RECOVERY, || record_state(&redis).as_deref() == Some("done"));
    assert!(recorded, "the record never reached Redis");
    assert!(counter(&fleet[0], "retries") >= 1);
    // Past the in-flight time, on the other replica: a replay, not a second run.
    let not_before = claimed_at + Duration::from_secs(IN_FLIGHT_SECONDS + 1);
    let retry = retry_until_settled(&fleet[1], "k-kill", not_before);
    assert_eq!(
        retry.header("idempotent-replayed"),
        Some("true"),
        "{retry:?}"
    );
    assert_eq!(retry.body, first.body);
    assert_eq!(backend.completed(PATH), 1, "one execution");
}

#[test]
fn records_in_a_redis_with_an_append_only_file_survive_its_crash() {
    let mut redis = RedisServer::start_persistent();
    let backend = Backend::start();
    backend.route(PATH, Route::default());
    let fleet = start_fleet(
        2,
        &config(),
        backend.port(),
        &RedisTarget::Standalone(redis.url()),
    );
    let first = post(&fleet[0], "k-aof");
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(record_state(&redis).as_deref(), Some("done"));
    redis.kill();
    redis.restart();
    let retry = retry_until_settled(&fleet[1], "k-aof", Instant::now());
    assert_eq!(
        retry.header("idempotent-replayed"),
        Some("true"),
        "{retry:?}"
    );
    assert_eq!(retry.body, first.body);
    assert_eq!(backend.completed(PATH), 1, "one execution");
}

/// The limit the README states: without persistence a Redis restart loses
/// the records, and a retry executes again (once Redis answers).
#[test]
fn records_in_a_redis_without_persistence_are_lost_with_it() {
    let mut redis = RedisServer::start();
    let backend = Backend::start();
    backend.route(PATH, Route::default());
    let fleet = start_fleet(
        2,
        &config(),
        backend.port(),
        &RedisTarget::Standalone(redis.url()),
    );
    let first = post(&fleet[0], "k-volatile");
    assert_eq!(first.status, 200, "{first:?}");
    redis.kill();
    redis.restart();
    let retry = retry_until_settled(&fleet[1], "k-volatile", Instant::now());
    assert_eq!(retry.status, 200, "{retry:?}");
    assert_eq!(retry.header("idempotent-replayed"), None, "{retry:?}");
    assert_eq!(
        backend.completed(PATH),
        2,
        "the record was lost: executed again"
    );
}
