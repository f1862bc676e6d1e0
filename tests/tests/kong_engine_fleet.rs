//! Cluster mode (`store.backend: cluster`, README "Running a fleet") on the
//! real Kong Wasm engine: two nginx instances built with ngx_wasm_module
//! (`TG_NGX_WASM_NGINX`, as in `kong_engine.rs`; without it every test prints
//! one SKIPPED line and returns), two workers each, each instance with its own
//! store sidecar (`tenant-guard-sidecar store`), both on one real Redis. On
//! Kong's engine `store.cluster.upstream` is the sidecar's `host:port`; the
//! filter reaches it with `dispatch_http_call`.
//!
//! - a limit of 10 per hour, 60 GETs alternating over the instances: at most
//!   10 admitted (and at least 8);
//! - an Idempotency-Key POST executed on one instance replays byte for byte on
//!   the other; 20 concurrent same-key POSTs over both reach upstream once;
//! - Redis killed: GETs are answered from each instance's share, POSTs get 503
//!   `idempotency-unavailable`; Redis restarted: both recover.
//!
//! **What ngx_wasm_module allows.** It dispatches calls only from
//! `on_request_headers`, `on_request_body`, `on_tick`, `on_dispatch_response`
//! and `on_foreign_function`; anywhere else `proxy_dispatch_http_call` traps
//! the instance ("host trap (bad usage): can only send HTTP dispatch during …",
//! prerelease-0.6.0, the release in Kong 3.9/3.10), and
//! `proxy_set_effective_context` does not lift that. So on this engine the
//! filter answers completing and releasing a claim at once and its plugin
//! sends them from the next tick (`filter/wasm/src/settle.rs`): a retry within
//! that second may get 409, then it replays. These tests require the replay,
//! the release, and not one trap.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tenant_guard_e2e::backend::{Backend, Route};
use tenant_guard_e2e::fleet::{
    admitted, assert_only, concurrent_same_key_posts, problem_type, RedisTarget, StoreSidecar,
};
use tenant_guard_e2e::http::Response;
use tenant_guard_e2e::nginx::{nginx_or_skip, Nginx};
use tenant_guard_e2e::wait_until;
use tenant_guard_sidecar::test_support::RedisServer;

const SUITE: &str = "kong_engine_fleet";
const TENANT: &str = "x-tenant-id";
const KEY: &str = "idempotency-key";
const REPLAYED: &str = "idempotent-replayed";
const INSTANCES: usize = 2;
/// The limited tenant's limit: 10 per hour, so no slot frees during a test.
const LIMIT: u64 = 10;
/// Each instance's share while the store is away (100 / instances).
const SHARE_PERCENT: u64 = 50;
/// The fallback tenant's limit.
const CALM: u64 = 20;
const RECOVERY: Duration = Duration::from_secs(30);
/// The first line of every wasm trap in nginx's error log.
const TRAP: &str = "[wasm] error while executing";

/// One gateway: an nginx (two workers) and the store sidecar next to it.
struct Instance {
    nginx: Nginx,
    // Declared after nginx: the sidecar outlives the gateway that calls it.
    _store: StoreSidecar,
}

/// The plugin config of the instance whose sidecar listens on `store_port`.
fn config(store_port: u16) -> String {
    json!({
        "version": 1,
        "revision": "kong-fleet",
        "tenant": { "trust_header_without_jwt": true },
        "store": {
            "backend": "cluster",
            "cluster": {
                "upstream": format!("127.0.0.1:{store_port}"),
                "timeout_ms": 500,
                "fallback_share_percent": SHARE_PERCENT,
                "probe_interval_ms": 200
            }
        },
        "tenants": {
            "storm": { "rate_limit": { "requests": LIMIT, "per_seconds": 3600 } },
            "calm": { "rate_limit": { "requests": CALM, "per_seconds": 3600 } },
            "after": { "rate_limit": { "requests": 1000, "per_seconds": 3600 } },
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

/// [`INSTANCES`] gateways on `redis`, all proxying to `backend`.
fn start_instances(binary: &Path, backend: &Backend, redis: &str) -> Vec<Instance> {
    let target = RedisTarget::Standalone(redis.to_owned());
    (0..INSTANCES)
        .map(|_| {
            let store = StoreSidecar::start(&target);
            let nginx = Nginx::start_one(binary, &config(store.port()), backend.port());
            Instance {
                nginx,
                _store: store,
            }
        })
        .collect()
}

fn get(instance: &Instance, tenant: &str, path: &str) -> Response {
    instance.nginx.get(path, &[(TENANT, tenant)])
}

fn post(instance: &Instance, key: &str, body: &[u8]) -> Response {
    instance.nginx.request(
        "POST",
        "/orders",
        &[(TENANT, "orders"), (KEY, &format!("\"{key}\""))],
        body,
    )
}

/// `total` GETs for `tenant`, alternating over the instances.
fn alternate(fleet: &[Instance], tenant: &str, path: &str, total: usize) -> Vec<u16> {
    (0..total)
        .map(|index| get(&fleet[index % fleet.len()], tenant, path).status)
        .collect()
}

/// Error-log lines at `[error]` or worse of every instance.
fn error_lines(fleet: &[Instance]) -> Vec<String> {
    fleet
        .iter()
        .flat_map(|instance| instance.nginx.error_lines())
        .collect()
}

/// `[error]` lines, traps included, after checking there is no trap at all.
fn errors_and_traps(fleet: &[Instance]) -> Vec<String> {
    for instance in fleet {
        assert!(
            !instance.nginx.error_log().contains(TRAP),
            "the instance trapped:\n{}",
            instance.nginx.error_log_tail(40)
        );
    }
    error_lines(fleet)
}

/// Polls `settled` until it holds; fails with `instance`'s log otherwise.
fn settles(instance: &Instance, what: &str, settled: impl FnMut() -> bool) {
    assert!(
        wait_until(RECOVERY, settled),
        "{what} within {RECOVERY:?}:\n{}",
        instance.nginx.error_log_tail(40)
    );
}

#[test]
fn one_limit_holds_across_two_kong_engine_instances() {
    let Some(binary) = nginx_or_skip(SUITE) else {
        return;
    };
    let redis = RedisServer::start();
    let backend = Backend::start();
    let fleet = start_instances(&binary, &backend, &redis.url());

    let statuses = alternate(&fleet, "storm", "/storm", 60);
    assert_only(&statuses, &[200, 429]);
    let passed = admitted(&statuses);
    assert!(
        passed <= LIMIT,
        "{passed} admitted for a limit of {LIMIT} across two instances: {statuses:?}"
    );
    assert!(
        passed >= LIMIT - 2,
        "only {passed} admitted for a limit of {LIMIT}: {statuses:?}"
    );
    assert_eq!(
        backend.completed("/storm"),
        passed,
        "upstream saw what was admitted"
    );
    // Both instances admitted from the one limit (each alone would admit 10).
    for index in 0..INSTANCES {
        let own: Vec<u16> = statuses
            .iter()
            .skip(index)
            .step_by(INSTANCES)
            .copied()
            .collect();
        assert!(
            admitted(&own) >= 1,
            "instance {index} admitted nothing: {statuses:?}"
        );
    }
    let errors = error_lines(&fleet);
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn an_idempotent_post_executes_once_across_two_kong_engine_instances() {
    let Some(binary) = nginx_or_skip(SUITE) else {
        return;
    };
    let redis = RedisServer::start();
    let backend = Backend::start();
    backend.route(
        "/orders",
        Route {
            status: 201,
            ..Route::default()
        },
    );
    let fleet = start_instances(&binary, &backend, &redis.url());

    // Executed on A.
    let first = post(&fleet[0], "order-a", b"{\"qty\":1}");
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.header(REPLAYED), None);
    assert_eq!(backend.completed("/orders"), 1);

    // Replayed on B, byte for byte, once A's tick sent the complete (B may
    // first see the claim in flight).
    let mut last = None;
    settles(&fleet[0], "B never replayed", || {
        let response = post(&fleet[1], "order-a", b"{\"qty\":1}");
        let done = response.header(REPLAYED) == Some("true");
        last = Some(response);
        done
    });
    let on_b = last.unwrap();
    assert_eq!(on_b.status, 201, "{on_b:?}");
    assert_eq!(on_b.body, first.body, "replayed bytes differ");
    assert_eq!(backend.completed("/orders"), 1, "B reached upstream");

    // 20 concurrent same-key POSTs over both instances: one execution.
    backend.route(
        "/orders",
        Route {
            status: 201,
            delay: Duration::from_millis(300),
            ..Route::default()
        },
    );
    let ports: Vec<u16> = fleet.iter().map(|i| i.nginx.port()).collect();
    let (statuses, created) = concurrent_same_key_posts(&ports, 20, "order-storm", b"{\"qty\":2}");
    assert_only(&statuses, &[201, 409]);
    assert_eq!(created, 1, "exactly one POST executed: {statuses:?}");
    assert_eq!(backend.completed("/orders"), 2, "the upstream ran it once");
    let errors = errors_and_traps(&fleet);
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn redis_down_falls_back_on_kong_engine_instances_and_recovers() {
    let Some(binary) = nginx_or_skip(SUITE) else {
        return;
    };
    let mut redis = RedisServer::start();
    let backend = Backend::start();
    backend.route(
        "/orders",
        Route {
            status: 201,
            ..Route::default()
        },
    );
    let fleet = start_instances(&binary, &backend, &redis.url());
    // Up: a first request per instance goes through Redis.
    for instance in &fleet {
        assert_eq!(get(instance, "after", "/warm").status, 200);
    }
    redis.kill();

    // Down: every GET is answered (200 or 429, never a 5xx), within the shares.
    let statuses = alternate(&fleet, "calm", "/calm", 60);
    assert_only(&statuses, &[200, 429]);
    let share = CALM * SHARE_PERCENT / 100;
    let passed = admitted(&statuses);
    assert!(
        passed <= share * INSTANCES as u64,
        "{passed} admitted with Redis down; shares allow {}",
        share * INSTANCES as u64
    );
    assert!(passed >= share, "the fallback admitted only {passed}");
    for (index, instance) in fleet.iter().enumerate() {
        assert!(
            instance
                .nginx
                .error_log()
                .contains("cluster store unavailable"),
            "instance {index} never logged the store down:\n{}",
            instance.nginx.error_log_tail(20)
        );
        // Idempotency refuses rather than risking a second execution.
        let response = post(instance, "while-down", b"{}");
        assert_eq!(response.status, 503, "{response:?}");
        assert_eq!(problem_type(&response), "idempotency-unavailable");
        assert!(response.header("retry-after").is_some(), "{response:?}");
    }
    assert_eq!(backend.completed("/orders"), 0);

    // Back: each instance probes, recovers, and idempotency works again.
    redis.restart();
    for (index, instance) in fleet.iter().enumerate() {
        let key = format!("after-recovery-{index}");
        let mut last = None;
        let recovered = wait_until(RECOVERY, || {
            let response = post(instance, &key, b"{}");
            let done = response.status == 201;
            last = Some(response);
            done
        });
        assert!(recovered, "instance {index} did not recover: {last:?}");
        assert!(
            instance
                .nginx
                .error_log()
                .contains("cluster store answers again"),
            "instance {index} never logged the recovery"
        );
    }
    let errors = errors_and_traps(&fleet);
    assert!(errors.is_empty(), "{errors:#?}");
}

/// A claim that must be given back — the upstream answered 500 (released from
/// the response headers), the client went away mid-request (released from
/// `on_log`) — lets a retry on the other instance execute, once.
#[test]
fn a_released_claim_frees_the_key_on_the_other_kong_engine_instance() {
    let Some(binary) = nginx_or_skip(SUITE) else {
        return;
    };
    let redis = RedisServer::start();
    let backend = Backend::start();
    backend.route(
        "/orders",
        Route {
            status: 500,
            ..Route::default()
        },
    );
    let fleet = start_instances(&binary, &backend, &redis.url());

    // Not recordable: A releases the claim from its response headers.
    let failed = post(&fleet[0], "fails", b"{}");
    assert_eq!(failed.status, 500, "{failed:?}");
    assert_eq!(backend.completed("/orders"), 1);
    settles(&fleet[0], "the release never freed the key", || {
        post(&fleet[1], "fails", b"{}").status == 500
    });
    assert_eq!(backend.completed("/orders"), 2, "one retry executed");

    // The client leaves while upstream holds the request: B gives the claim
    // back when the stream ends (`on_log`).
    backend.route(
        "/orders",
        Route {
            status: 201,
            ..Route::default()
        },
    );
    backend.hold("/orders");
    let before = backend.completed("/orders");
    {
        let mut client =
            std::net::TcpStream::connect(("127.0.0.1", fleet[1].nginx.port())).unwrap();
        client
            .write_all(
                b"POST /orders HTTP/1.1\r\nhost: tenant-guard.test\r\nx-tenant-id: orders\r\n\
                  idempotency-key: \"abandoned\"\r\ncontent-length: 2\r\n\r\n{}",
            )
            .unwrap();
        assert!(
            wait_until(RECOVERY, || backend.completed("/orders") > before),
            "the abandoned POST never reached upstream"
        );
        // Dropped here: the client is gone while upstream still holds it.
    }
    assert!(
        fleet[1]
            .nginx
            .wait_for_log("client prematurely closed connection", 1, RECOVERY),
        "{}",
        fleet[1].nginx.error_log_tail(20)
    );
    backend.release("/orders");
    let executed = backend.completed("/orders");
    settles(&fleet[1], "the abandoned claim was never released", || {
        post(&fleet[0], "abandoned", b"{}").status == 201
    });
    assert_eq!(
        backend.completed("/orders"),
        executed + 1,
        "one retry executed"
    );
    let errors = errors_and_traps(&fleet);
    assert!(errors.is_empty(), "{errors:#?}");
}
