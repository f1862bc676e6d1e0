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

/// `tenant-guard-sidecar settings ARGS` on the stack's schema; its stdout.
fn settings(stack: &SidecarStack, args: &[&str]) -> String {
    let out = std::process::Command::new(tenant_guard_e2e::rolling::sidecar_binary())
        .arg("settings")
        .args(args)
        .args(["--schema", stack.settings.schema(), "--actor", "e2e"])
        .env(
            "DATABASE_URL",
            tenant_guard_sidecar::test_support::database_url(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "settings {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls until `tenant`'s answer lists the policies `expected` (`name;q=N`).
fn wait_for_policies(stack: &SidecarStack, tenant: &str, expected: &str) -> http::Response {
    wait_for(Duration::from_secs(10), || {
        stack.get(tenant).filter(|response| {
            response
                .header("ratelimit-policy")
                .is_some_and(|policy| policy.starts_with(expected))
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "{tenant} never answered with {expected}: {:?}",
            stack.get(tenant).map(|r| r.headers)
        )
    })
}

#[test]
fn plans_set_in_postgres_are_enforced_and_moving_a_tenant_is_one_set() {
    let stack = SidecarStack::start();
    let gold = r#"[{"name":"burst","requests":50,"per_seconds":1,"burst":100},{"name":"month","requests":1000000,"per":"month"}]"#;
    let trial = r#"[{"name":"day","requests":2,"per":"day"}]"#;
    settings(&stack, &["set", "@plan:gold", "gateway.rate_limits", gold]);
    settings(
        &stack,
        &["set", "@plan:trial", "gateway.rate_limits", trial],
    );
    settings(&stack, &["set", "acme", "gateway.plan", "\"gold\""]);
    let first = wait_for_policies(
        &stack,
        "acme",
        "\"burst\";q=50;w=1;burst=100, \"month\";q=1000000",
    );
    assert_eq!(first.status, 200);

    // One set moves acme to the trial plan: its daily quota of 2 applies.
    let dry = settings(
        &stack,
        &["set", "acme", "gateway.plan", "\"trial\"", "--dry-run"],
    );
    assert!(
        dry.contains("~ gateway.plan: \"gold\" -> \"trial\""),
        "{dry}"
    );
    settings(&stack, &["set", "acme", "gateway.plan", "\"trial\""]);
    wait_for_policies(&stack, "acme", "\"day\";q=2");
    let statuses: Vec<u16> = (0..4)
        .map(|_| stack.get("acme").expect("Envoy answers").status)
        .collect();
    assert!(
        statuses.iter().filter(|s| **s == 200).count() <= 2 && statuses.contains(&429),
        "{statuses:?}"
    );
    // The audit trail names the plan rows and the move.
    let changed = stack.settings.psql(
        "SELECT string_agg(array_to_string(changed_keys, ','), ' ' ORDER BY id) FROM tg_revisions WHERE status = 'delivered'",
    );
    for key in ["@plan:gold/gateway.rate_limits", "acme/gateway.plan"] {
        assert!(changed.contains(key), "{changed}");
    }
}
