//! End-to-end: a fleet gives a tenant what it pays for — admitted ÷ allowed
//! between 0.95 and 1.00 (never above), the upstream seeing exactly what was
//! admitted — for every traffic shape of `tenant_guard_e2e::shapes` (a storm
//! over every replica, a storm on one, a burst on one then the others, two
//! tenants at once), each with a long and a short window. Three real Envoys
//! (`--concurrency 2`) with their store sidecars and default `store.cluster`
//! settings, on a real Redis (standalone and a 3-node Redis Cluster).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::json;
use tenant_guard_e2e::backend::Backend;
use tenant_guard_e2e::fleet::{start_fleet, RedisTarget};
use tenant_guard_e2e::shapes::{self, Shape};
use tenant_guard_sidecar::test_support::{RedisCluster, RedisServer};

fn shapes_hold(redis: RedisTarget) {
    let config = json!({
        "version": 1,
        "revision": "shapes",
        "tenant": { "trust_header_without_jwt": true },
        "store": { "backend": "cluster" },
        "tenants": shapes::tenants_config()
    })
    .to_string();
    let backend = Backend::start();
    let fleet = start_fleet(3, &config, backend.port(), &redis);
    let ports: Vec<u16> = fleet.iter().map(|replica| replica.envoy.port()).collect();
    let outcomes: Vec<_> = Shape::ALL
        .iter()
        .flat_map(|shape| shapes::run(*shape, &ports, &backend))
        .collect();
    let report: Vec<String> = outcomes.iter().map(shapes::Outcome::line).collect();
    println!("{}", report.join("\n"));
    for outcome in &outcomes {
        assert!(outcome.other.is_empty(), "{}", outcome.line());
        assert_eq!(
            outcome.upstream,
            outcome.admitted,
            "the upstream saw what was admitted: {}",
            outcome.line()
        );
        assert!(
            outcome.admitted <= outcome.allowed,
            "over-admission: {}",
            outcome.line()
        );
        assert!(
            outcome.ratio() >= 0.95,
            "under-admission: {}",
            outcome.line()
        );
    }
}

#[test]
fn every_traffic_shape_gets_what_its_limit_allows_on_standalone_redis() {
    let redis = RedisServer::start();
    shapes_hold(RedisTarget::Standalone(redis.url()));
}

#[test]
fn every_traffic_shape_gets_what_its_limit_allows_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3);
    shapes_hold(RedisTarget::Cluster(cluster.urls()));
}
