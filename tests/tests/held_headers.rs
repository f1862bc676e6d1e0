//! End-to-end: with Envoy's `allow_on_headers_stop_iteration` (the shipped
//! bootstraps set it) and the document's `host.allow_on_headers_stop_iteration`,
//! an idempotent request with a body is decided on the whole request before
//! any of it goes upstream: replays, 422s and 413s never start an upstream
//! request (the backend's count of request starts equals its count of
//! executions), in local mode and in cluster mode (a store sidecar on a real
//! Redis). Without the document's flag the filter keeps the behaviour of hosts
//! that cannot hold headers (a replay's headers may start an upstream request
//! that is then reset).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use serde_json::{json, Value};
use tenant_guard_e2e::backend::Backend;
use tenant_guard_e2e::fleet::{problem_type, start_fleet, RedisTarget};
use tenant_guard_e2e::http::Response;
use tenant_guard_e2e::{wait_until, Envoy};
use tenant_guard_sidecar::test_support::RedisServer;

const PATH: &str = "/orders";

fn config(hold: bool, cluster: bool) -> String {
    let mut config = json!({
        "version": 1,
        "revision": "held-headers",
        "tenant": { "trust_header_without_jwt": true },
        "tenants": {
            "acme": {
                "rate_limit": { "requests": 1000, "per_seconds": 60 },
                "idempotency": {
                    "methods": ["POST"],
                    "ttl_seconds": 600,
                    "max_body_bytes": 4096,
                    "in_flight_timeout_seconds": 30
                }
            }
        }
    });
    if hold {
        config["host"] = json!({ "allow_on_headers_stop_iteration": true });
    }
    if cluster {
        config["store"] = json!({ "backend": "cluster", "cluster": { "timeout_ms": 1000 } });
    }
    config.to_string()
}

fn post(envoy: &Envoy, key: &str, body: &[u8]) -> Response {
    envoy.request(
        "POST",
        PATH,
        &[
            ("x-tenant-id", "acme"),
            ("idempotency-key", &format!("\"{key}\"")),
        ],
        body,
    )
}

/// The configure-time log line says which behaviour applies (Envoy flushes
/// its log file every few seconds: polled).
fn assert_logged(envoy: &Envoy, line: &str) {
    let logged = wait_until(Duration::from_secs(30), || envoy.log().contains(line));
    assert!(logged, "no `{line}` in the log:\n{}", envoy.log_tail(20));
}

/// A POST that executes, its replay, a 422 and a 413: every answer as
/// expected and the backend saw exactly one request start, the execution.
fn nothing_answered_locally_starts_upstream(envoy: &Envoy, backend: &Backend) {
    let first = post(envoy, "k-1", br#"{"qty":1}"#);
    assert_eq!(first.status, 200, "{first:?}");
    let replay = post(envoy, "k-1", br#"{"qty":1}"#);
    assert_eq!(replay.status, 200, "{replay:?}\n{}", envoy.log_tail(30));
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, first.body);
    let reused = post(envoy, "k-1", br#"{"qty":2}"#);
    assert_eq!(reused.status, 422, "{reused:?}");
    assert_eq!(problem_type(&reused), "idempotency-key-reused");
    let large = post(envoy, "k-2", &[b'x'; 5000]);
    assert_eq!(large.status, 413, "{large:?}");
    assert_eq!(problem_type(&large), "body-too-large");
    assert_eq!(backend.completed(PATH), 1, "one execution");
    assert_eq!(
        backend.started(PATH),
        backend.completed(PATH),
        "a request answered by the filter never started upstream"
    );
    // The key of the refused 413 was never claimed: it executes now.
    let small = post(envoy, "k-2", b"{}");
    assert_eq!(small.status, 200, "{small:?}");
    assert_eq!((backend.started(PATH), backend.completed(PATH)), (2, 2));
}

#[test]
fn held_headers_keep_replays_422s_and_413s_away_from_the_upstream_in_local_mode() {
    let backend = Backend::start();
    let envoy = Envoy::start_static(&config(true, false), backend.port());
    nothing_answered_locally_starts_upstream(&envoy, &backend);
    assert_logged(
        &envoy,
        "idempotent requests with a body are decided before their headers go upstream",
    );
}

#[test]
fn held_headers_keep_replays_422s_and_413s_away_from_the_upstream_in_cluster_mode() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    let fleet = start_fleet(
        1,
        &config(true, true),
        backend.port(),
        &RedisTarget::Standalone(redis.url()),
    );
    nothing_answered_locally_starts_upstream(&fleet[0].envoy, &backend);
}

/// Without the document's flag the filter does not hold the headers (Envoy
/// without the PluginConfig field would withhold the body from it): a
/// replay still works, and the configure-time log line says which behaviour
/// applies. (Whether the replay's headers then start an upstream request
/// depends on whether Envoy had an upstream connection at hand before the
/// body arrived, so it is not asserted here.)
#[test]
fn without_the_flag_a_replay_works_and_the_log_says_the_headers_go_first() {
    let backend = Backend::start();
    let envoy = Envoy::start_static(&config(false, false), backend.port());
    let first = post(&envoy, "k-1", br#"{"qty":1}"#);
    assert_eq!(first.status, 200, "{first:?}");
    let replay = post(&envoy, "k-1", br#"{"qty":1}"#);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, first.body);
    assert_eq!(backend.completed(PATH), 1);
    assert_logged(&envoy, "headers go upstream before the body is read");
}

/// The rendered static bootstrap carries Envoy's field (the document's flag
/// is what decides whether the filter uses it).
#[test]
fn the_shipped_bootstrap_allows_holding_headers() {
    let bootstrap = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/static.yaml"),
    )
    .unwrap();
    let line = bootstrap
        .lines()
        .find(|line| {
            line.trim_start()
                .starts_with("allow_on_headers_stop_iteration:")
        })
        .expect("envoy/static.yaml sets allow_on_headers_stop_iteration");
    let value: Value = serde_json::from_str(line.split(':').nth(1).unwrap().trim()).unwrap();
    assert_eq!(value, json!(true));
}
