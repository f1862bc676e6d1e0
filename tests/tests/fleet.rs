//! End-to-end: a fleet of three real Envoys (`--concurrency 2` each), each
//! with its own store sidecar, on one real Redis — standalone and a 3-node
//! Redis Cluster — in `store.backend: cluster` mode (README "Running a fleet").
//!
//! - a storm of 600 requests spread over the replicas for a limit of 50
//!   admits at most 50 (and at least 45);
//! - 100 concurrent POSTs with one Idempotency-Key spread over the replicas
//!   reach the upstream once, and every replica replays the same bytes;
//! - Redis killed mid-storm: rate limits fall back to each replica's share, idempotency
//!   answers 503 `idempotency-unavailable`, and both recover when Redis is back;
//! - a store sidecar restarted: its Envoy falls back, then recovers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use serde_json::json;
use tenant_guard_e2e::backend::{Backend, Route};
use tenant_guard_e2e::fleet::{
    admitted, assert_only, concurrent_same_key_posts, problem_type, start_fleet, RedisTarget,
    Replica,
};
use tenant_guard_e2e::http::Response;
use tenant_guard_e2e::wait_until;
use tenant_guard_sidecar::test_support::{RedisCluster, RedisServer};

const TENANT: &str = "x-tenant-id";
const KEY: &str = "idempotency-key";
const REPLICAS: usize = 3;
/// The storm tenant's limit: 50 per hour, so no slot frees during a test.
const LIMIT: u64 = 50;
/// Each replica's share while the store is away.
const SHARE_PERCENT: u64 = 34;
const RECOVERY: Duration = Duration::from_secs(30);

fn fleet_config() -> String {
    json!({
        "version": 1,
        "revision": "fleet",
        "tenant": { "trust_header_without_jwt": true },
        "metrics": true,
        "store": {
            "backend": "cluster",
            "cluster": {
                "timeout_ms": 500,
                "fallback_share_percent": SHARE_PERCENT,
                "probe_interval_ms": 200
            }
        },
        "tenants": {
            "storm": { "rate_limit": { "requests": LIMIT, "per_seconds": 3600 } },
            "calm": { "rate_limit": { "requests": 30, "per_seconds": 3600 } },
            "hoard": { "rate_limit": { "requests": 400, "per_seconds": 3600 } },
            "after": { "rate_limit": { "requests": LIMIT, "per_seconds": 3600 } },
            "orders": {
                "idempotency": {
                    "methods": ["POST"],
                    "ttl_seconds": 600,
                    "max_body_bytes": 4096,
                    "in_flight_timeout_seconds": 60
                }
            }
        }
    })
    .to_string()
}

/// `total` GETs for `tenant`, round-robin over the replicas from several
/// threads at once; the statuses seen.
fn storm(fleet: &[Replica], tenant: &str, path: &str, total: usize) -> Vec<u16> {
    let ports: Vec<u16> = fleet.iter().map(|replica| replica.envoy.port()).collect();
    let threads = 2 * fleet.len();
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let ports = ports.clone();
            let tenant = tenant.to_owned();
            let path = path.to_owned();
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                let mut index = thread;
                while index < total {
                    let port = ports[index % ports.len()];
                    let response = tenant_guard_e2e::http::get(port, &path, &[(TENANT, &tenant)]);
                    statuses.push(response.status);
                    index += threads;
                }
                statuses
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|handle| handle.join().unwrap())
        .collect()
}

fn post(replica: &Replica, key: &str, body: &[u8]) -> Response {
    replica.envoy.request(
        "POST",
        "/orders",
        &[(TENANT, "orders"), (KEY, &format!("\"{key}\""))],
        body,
    )
}

fn store_counter(replica: &Replica, name: &str) -> u64 {
    replica
        .envoy
        .stats(&format!("tenant_guard_store_{name}"))
        .into_iter()
        .map(|(_, value)| value)
        .sum()
}

/// The storm and the same-key POSTs, on whichever Redis `fleet` uses.
fn limits_and_idempotency_hold_across_the_fleet(fleet: &[Replica], backend: &Backend) {
    // Rate limit: exact across replicas.
    let statuses = storm(fleet, "storm", "/storm", 600);
    assert_only(&statuses, &[200, 429]);
    let passed = admitted(&statuses);
    assert!(
        passed <= LIMIT,
        "{passed} admitted for a limit of {LIMIT} across the fleet"
    );
    assert!(
        passed >= LIMIT - 5,
        "only {passed} admitted for a limit of {LIMIT}"
    );
    assert_eq!(
        backend.completed("/storm"),
        passed,
        "upstream saw what was admitted"
    );
    // One replica busy, then concurrent: it never hoards what the others
    // need (the case that took all 400 slots of this limit before).
    let sequential = storm(&fleet[..1], "hoard", "/hoard", 31);
    let concurrent = storm(&fleet[..1], "hoard", "/hoard", 48);
    assert_eq!(admitted(&sequential) + admitted(&concurrent), 79);
    let others = storm(&fleet[1..], "hoard", "/hoard", 40);
    assert_eq!(admitted(&others), 40, "the other replicas are served too");

    // Redis answered the slots; each replica spent slots of its own leases.
    let round_trips: u64 = fleet.iter().map(|r| store_counter(r, "round_trips")).sum();
    assert!(
        round_trips > 0 && round_trips < 600,
        "{round_trips} store round trips for 600 requests"
    );

    // Idempotency: 100 concurrent same-key POSTs over the replicas.
    backend.route(
        "/orders",
        Route {
            status: 201,
            delay: Duration::from_millis(300),
            ..Route::default()
        },
    );
    let ports: Vec<u16> = fleet.iter().map(|r| r.envoy.port()).collect();
    let key = "fleet-order-1";
    let (statuses, created) = concurrent_same_key_posts(&ports, 100, key, b"{\"qty\":1}");
    assert_only(&statuses, &[201, 409]);
    assert_eq!(created, 1, "exactly one POST executed: {statuses:?}");
    assert_eq!(
        backend.completed("/orders"),
        1,
        "the upstream ran the write once"
    );

    // Every replica replays the same bytes, once the first response is recorded.
    let mut replays = Vec::new();
    for replica in fleet {
        let mut last = None;
        let replayed = wait_until(RECOVERY, || {
            let response = post(replica, key, b"{\"qty\":1}");
            let done = response.header("idempotent-replayed") == Some("true");
            last = Some(response);
            done
        });
        let response = last.unwrap();
        assert!(replayed, "replica never replayed: {response:?}");
        assert_eq!(response.status, 201);
        replays.push(response.body.clone());
    }
    assert!(
        replays.windows(2).all(|pair| pair[0] == pair[1]),
        "replays differ"
    );
    assert_eq!(
        backend.completed("/orders"),
        1,
        "replays never reach the upstream"
    );

    // Another body under the same key is refused on every replica.
    for replica in fleet {
        let response = post(replica, key, b"{\"qty\":2}");
        assert_eq!(response.status, 422, "{response:?}");
        assert_eq!(problem_type(&response), "idempotency-key-reused");
    }
}

/// `replicas` replicas on `redis`, in front of a fresh backend.
fn fleet_on(replicas: usize, redis: RedisTarget) -> (Backend, Vec<Replica>) {
    let backend = Backend::start();
    let fleet = start_fleet(replicas, &fleet_config(), backend.port(), &redis);
    (backend, fleet)
}

#[test]
fn a_fleet_on_standalone_redis_enforces_one_limit_and_executes_once() {
    let redis = RedisServer::start();
    let (backend, fleet) = fleet_on(REPLICAS, RedisTarget::Standalone(redis.url()));
    limits_and_idempotency_hold_across_the_fleet(&fleet, &backend);
}

#[test]
fn a_fleet_on_a_redis_cluster_enforces_one_limit_and_executes_once() {
    let cluster = RedisCluster::start(3);
    let (backend, fleet) = fleet_on(REPLICAS, RedisTarget::Cluster(cluster.urls()));
    limits_and_idempotency_hold_across_the_fleet(&fleet, &backend);
}

#[test]
fn redis_down_falls_back_to_shares_and_recovers() {
    let mut redis = RedisServer::start();
    let (backend, fleet) = fleet_on(REPLICAS, RedisTarget::Standalone(redis.url()));
    // Redis killed mid-storm: every request is still answered, and what is
    // admitted stays within what Redis granted plus each replica's share.
    let storm_fleet: Vec<u16> = fleet.iter().map(|replica| replica.envoy.port()).collect();
    let storming = std::thread::spawn(move || {
        let mut statuses = Vec::new();
        for index in 0..300 {
            let port = storm_fleet[index % storm_fleet.len()];
            statuses.push(tenant_guard_e2e::http::get(port, "/mid", &[(TENANT, "after")]).status);
        }
        statuses
    });
    assert!(
        wait_until(RECOVERY, || backend.completed("/mid") >= 10),
        "the storm did not start"
    );
    redis.kill();
    let statuses = storming.join().unwrap();
    assert_only(&statuses, &[200, 429]);
    let mid_share = (LIMIT * SHARE_PERCENT / 100).max(1);
    let passed = admitted(&statuses);
    assert!(
        passed <= LIMIT + mid_share * REPLICAS as u64,
        "{passed} admitted: more than Redis granted plus the shares"
    );

    // Down: every request is answered (200 or 429, never a 5xx), and no more
    // than each replica's share of the limit is admitted.
    let statuses = storm(&fleet, "calm", "/calm", 300);
    assert_only(&statuses, &[200, 429]);
    let share = (30 * SHARE_PERCENT / 100).max(1);
    let passed = admitted(&statuses);
    assert!(
        passed <= share * REPLICAS as u64,
        "{passed} admitted with Redis down; shares allow {}",
        share * REPLICAS as u64
    );
    assert!(passed >= share, "the fallback admitted only {passed}");
    for replica in &fleet {
        assert!(
            store_counter(replica, "down") >= 1,
            "each replica saw the store go down"
        );
        assert!(store_counter(replica, "fallbacks") >= 1);
        // Idempotency refuses rather than risking a second execution.
        let response = post(replica, "while-down", b"{}");
        assert_eq!(response.status, 503, "{response:?}");
        assert_eq!(problem_type(&response), "idempotency-unavailable");
        assert!(response.header("retry-after").is_some());
    }
    assert_eq!(backend.completed("/orders"), 0);

    // Back: each replica probes, recovers, and idempotency works again.
    redis.restart();
    for (index, replica) in fleet.iter().enumerate() {
        let key = format!("after-recovery-{index}");
        let mut last = None;
        let recovered = wait_until(RECOVERY, || {
            let response = post(replica, &key, b"{}");
            let done = response.status == 201 || response.status == 200;
            last = Some(response);
            done
        });
        assert!(recovered, "replica {index} did not recover: {:?}", last);
        assert!(store_counter(replica, "recovered") >= 1);
    }
}

#[test]
fn a_restarted_store_sidecar_falls_back_then_recovers() {
    let redis = RedisServer::start();
    let (_backend, mut fleet) = fleet_on(2, RedisTarget::Standalone(redis.url()));
    let first = post(&fleet[0], "before-restart", b"{}");
    assert!(matches!(first.status, 200 | 201), "{first:?}");

    fleet[0].store.stop();
    // Its Envoy answers from the fallback: no 5xx for rate limits, a
    // precise 503 for idempotency; the other replica is unaffected.
    let statuses = storm(&fleet[..1], "calm", "/calm", 40);
    assert_only(&statuses, &[200, 429]);
    let response = post(&fleet[0], "during-restart", b"{}");
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(problem_type(&response), "idempotency-unavailable");
    let other = post(&fleet[1], "other-replica", b"{}");
    assert!(matches!(other.status, 200 | 201), "{other:?}");

    fleet[0].store.restart();
    let mut last = None;
    let recovered = wait_until(RECOVERY, || {
        let response = post(&fleet[0], "after-restart", b"{}");
        let done = matches!(response.status, 200 | 201);
        last = Some(response);
        done
    });
    assert!(recovered, "no recovery after the sidecar restart: {last:?}");
    // What was recorded before the restart is still there, on either replica.
    let replay = post(&fleet[1], "before-restart", b"{}");
    assert_eq!(
        replay.header("idempotent-replayed"),
        Some("true"),
        "{replay:?}"
    );
    assert_eq!(replay.body, first.body);
}
