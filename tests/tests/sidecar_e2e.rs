//! End to end with real PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; `bash tests/postgres.sh`
//! provides one), the sync sidecar and a real Envoy running the ECDS bootstrap
//! (`envoy/ecds.yaml`) on the sidecar's directory: a tenant's limit changed in
//! Postgres is enforced by the running Envoy without a restart, and the
//! settings-change → enforced latency is measured over 20 changes (printed as
//! p50/p99; run with `--nocapture`; the `propagation-bench` binary runs the
//! same measurement standalone). Every wait is a poll with a deadline.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use tenant_guard_e2e::http;
use tenant_guard_e2e::sidecar::{measure_propagation, SidecarStack};
use tenant_guard_e2e::wait::wait_for;

#[test]
fn limit_change_in_postgres_is_enforced_by_running_envoy() {
    let mut stack = SidecarStack::start();
    let pid = stack.envoy.pid();
    assert!(
        stack.envoy.watches_external_ecds_dir(),
        "Envoy watches the sidecar's directory"
    );
    assert_eq!(stack.envoy.ecds_dir(), Some(stack.ecds_dir()));

    stack.settings.set_tenant_limit("acme", 1000, 60);
    let first = stack
        .wait_for_limit("acme", 1000, 60, Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "acme's limit never reached Envoy:\n{}",
                stack.envoy.log_tail(40)
            )
        });
    assert_eq!(first.status, 200);
    let deployed = stack.settings.deployed_revision();
    let echo = first.json();
    assert_eq!(
        echo["headers"]["x-tenant-guard-revision"].as_str(),
        Some(deployed.as_str()),
        "the upstream sees the revision the sidecar recorded"
    );
    assert!(
        stack
            .envoy
            .wait_for_ecds_version(&deployed, Duration::from_secs(5)),
        "Envoy reports the revision as its ECDS version: {:?}",
        stack.envoy.ecds_version()
    );

    // Tighten the limit: the same Envoy process enforces it.
    stack.settings.set_tenant_limit("acme", 3, 60);
    stack
        .wait_for_limit("acme", 3, 60, Duration::from_secs(10))
        .expect("the new limit reached Envoy");
    let rejected = wait_for(Duration::from_secs(5), || {
        stack.get("acme").filter(|r| r.status == 429)
    })
    .expect("acme is rate limited at 3/min");
    assert!(rejected.header("retry-after").is_some());
    assert!(stack.envoy.is_running());
    assert_eq!(stack.envoy.pid(), pid, "no restart");

    // Invalid settings are rejected by the sidecar; Envoy keeps the last good config.
    stack.settings.set_tenant_limit("acme", 0, 60);
    let reply = http::request(stack.admin_port(), "POST", "/sync", &[], b"");
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert!(
        reply
            .text()
            .contains("tenant `acme` setting `gateway.rate_limit`"),
        "{}",
        reply.text()
    );
    let still = stack.get("acme").expect("Envoy answers");
    assert!(
        still
            .header("ratelimit-policy")
            .is_some_and(|p| p.contains(";q=3;w=60")),
        "{:?}",
        still.header("ratelimit-policy")
    );
}

#[test]
fn propagation_latency_settings_change_to_enforced() {
    let stack = SidecarStack::start();
    let report = measure_propagation(
        &stack,
        "bench",
        100_000,
        20,
        Duration::from_secs(10),
        |_, _| {},
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.envoy.log_tail(40)));
    println!("{}", report.summary());
    let p99 = report.enforced().p99;
    assert!(
        p99 < Duration::from_secs(1),
        "p99 {p99:?} exceeds the 1 s goal"
    );
}
