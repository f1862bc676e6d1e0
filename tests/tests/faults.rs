//! Fault injection, end to end (issue 6, item 2): real PostgreSQL, the sync
//! sidecar and real Envoys, with faults provoked on purpose.
//!
//! 1. PostgreSQL stopped and restarted (a private instance, never the shared
//!    server): the last good config keeps serving, the sidecar stays live and
//!    reports the lost session, a change made while it was away is picked up by
//!    the reconnect resync, and the audit trail is complete and contiguous.
//! 2. Envoy restarted: a new Envoy on the same ECDS directory serves the last
//!    delivered revision at once and follows later changes; a deleted ECDS file
//!    is rewritten by the next sync without a new revision.
//! 3. ECDS directory unwritable (and a directory standing where the file goes):
//!    clear error naming the path, error metric and deployment status, retries
//!    with backoff, delivery without a manual step once repaired; Envoy keeps
//!    the old config meanwhile.
//! 4. A filter panic under `FAIL_RELOAD` (the `fault-injection` build): the
//!    request fails, the worker's VM is reloaded, limits are enforced again.
//! 5. Corrupted shared-data values (rate-limit state, idempotency bucket) read
//!    as absent: normal answers, no 5xx, no panic.
//!
//! Every wait is a poll with a deadline.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use serde_json::json;
use tenant_guard_e2e::config::PluginConfig;
use tenant_guard_e2e::fault::{
    FaultEnvoy, FaultOptions, FaultStack, RevisionRow, WriteFault, FAULT_HEADER,
};
use tenant_guard_e2e::http::{Conn, Response};
use tenant_guard_e2e::pg::PrivatePostgres;
use tenant_guard_e2e::sidecar::TENANT_HEADER;
use tenant_guard_e2e::upstream::Upstream;
use tenant_guard_e2e::wait::wait_until;
use tenant_guard_e2e::Envoy;

const PROPAGATION: Duration = Duration::from_secs(10);
const DB_CONNECTED: &str = "settings_database_connected";
const SYNC_ERRORS: &str = "settings_sync_errors_total";
const ENVOY_STATUS: &str = "gateway_deployment_status{gateway=\"envoy\"}";
const CURRENT_REVISION: &str = "settings_current_revision";

fn policy(response: &Response) -> String {
    response
        .header("ratelimit-policy")
        .unwrap_or_default()
        .to_owned()
}

fn assert_policy(response: &Response, requests: u64, per_seconds: u64, context: &str) {
    assert!(
        policy(response).contains(&format!(";q={requests};w={per_seconds}")),
        "{context}: expected policy q={requests};w={per_seconds}, got {response:?}"
    );
}

/// Sends requests as `tenant` until one is answered 429 (at most `max`); returns
/// how many were admitted before it.
fn admitted_until_429(stack: &FaultStack, tenant: &str, max: usize) -> usize {
    for admitted in 0..max {
        let response = stack.get(tenant).expect("Envoy answers");
        match response.status {
            200 => {}
            429 => return admitted,
            other => panic!("unexpected {other} for {tenant}: {response:?}"),
        }
    }
    panic!("{tenant} was never limited within {max} requests");
}

// ------------------------------------------------ 1. PostgreSQL stop / restart

#[test]
fn postgres_outage_keeps_last_config_and_resyncs_on_reconnect() {
    let pg = PrivatePostgres::start();
    // The sidecar logs in as its own role, so the test can keep it out while
    // PostgreSQL is back and a change is committed (its NOTIFY is then lost).
    pg.psql("CREATE ROLE tg_sidecar LOGIN SUPERUSER").unwrap();
    let sidecar_url = pg.url_as("tg_sidecar");
    let mut stack = FaultStack::private(pg, &sidecar_url, &FaultOptions::default());

    // Revision N: acme at L1 = 1000/60.
    stack.set_tenant_limit("acme", 1000, 60);
    let served = stack
        .wait_for_limit("acme", 1000, 60, PROPAGATION)
        .expect("L1 reaches Envoy");
    assert_eq!(served.status, 200);
    let before = stack.revisions();
    let last = before.last().cloned().expect("revisions");
    assert!(before.iter().all(|r| r.status == "delivered"), "{before:?}");
    assert!(
        stack
            .envoy()
            .wait_for_ecds_version(&last.revision, PROPAGATION),
        "Envoy applied {}",
        last.revision
    );
    assert_eq!(stack.metric(DB_CONNECTED), Some(1.0));
    let file_before = std::fs::read(stack.ecds_file()).unwrap();

    // Outage. Existing sessions survive NOLOGIN; new logins of the sidecar fail.
    stack.psql("ALTER ROLE tg_sidecar NOLOGIN").unwrap();
    let outage = Instant::now();
    stack.pg().stop();
    assert!(
        wait_until(Duration::from_secs(10), || stack.metric(DB_CONNECTED)
            == Some(0.0)),
        "settings_database_connected drops to 0:\n{}",
        stack.metrics()
    );
    eprintln!("db outage noticed after {:?}", outage.elapsed());
    let live = stack.admin_get("/live").expect("admin API answers");
    assert_eq!(live.status, 200, "the sidecar stays live");
    let ready = stack.admin_get("/ready").expect("admin API answers");
    assert_eq!(
        ready.status, 200,
        "still ready: the delivered config is in place"
    );
    let reply = stack.post_sync();
    eprintln!(
        "POST /sync with PostgreSQL down: {} {}",
        reply.status,
        reply.text()
    );
    assert_eq!(reply.status, 503, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["result"], "unavailable");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("database unavailable"),
        "{body}"
    );
    for _ in 0..5 {
        let r = stack.get("acme").expect("Envoy answers during the outage");
        assert_eq!(r.status, 200);
        assert_policy(&r, 1000, 60, "Envoy keeps L1 during the outage");
    }
    assert_eq!(
        std::fs::read(stack.ecds_file()).unwrap(),
        file_before,
        "ECDS file untouched"
    );
    assert_eq!(
        stack.envoy().ecds_version().as_deref(),
        Some(last.revision.as_str())
    );

    // PostgreSQL is back, but the sidecar cannot log in yet: a change committed
    // now sends a NOTIFY nobody hears; only the reconnect resync can find it.
    stack.pg().start_again();
    // While it backs off, `POST /sync` answers with its last attempt's error:
    // poll until that is the refused login (it has tried since the restart).
    let mut last_reply = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let reply = stack.post_sync();
            last_reply = format!("{} {}", reply.status, reply.text());
            reply.status == 503 && last_reply.contains("not permitted to log in")
        }),
        "the sidecar is refused after the restart: {last_reply}"
    );
    eprintln!("POST /sync while the login is refused: {last_reply}");
    stack.set_tenant_limit("acme", 3, 60);
    assert_eq!(stack.metric(DB_CONNECTED), Some(0.0));
    assert_eq!(std::fs::read(stack.ecds_file()).unwrap(), file_before);
    stack.psql("ALTER ROLE tg_sidecar LOGIN").unwrap();

    let reconnect = Instant::now();
    let r = stack
        .wait_for_limit("acme", 3, 60, PROPAGATION)
        .unwrap_or_else(|| panic!("L2 never reached Envoy:\n{}", stack.metrics()));
    eprintln!("login allowed -> L2 enforced in {:?}", reconnect.elapsed());
    // Requests made under L1 count against L2 too (same state key), so this
    // may already be a 429; at most 2 more are admitted under 3/60.
    assert!(matches!(r.status, 200 | 429), "{r:?}");
    let admitted = admitted_until_429(&stack, "acme", 5);
    assert!(
        admitted <= 2,
        "L2 = 3/60 enforced, admitted {admitted} more"
    );
    assert_eq!(stack.metric(DB_CONNECTED), Some(1.0));

    // The audit: everything before the outage intact, one new revision for the
    // change, by the reconnect resync, numbers contiguous, nothing failed.
    let after = stack.revisions();
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "pre-outage audit rows intact"
    );
    let new: Vec<&RevisionRow> = after[before.len()..].iter().collect();
    assert_eq!(new.len(), 1, "exactly one new revision: {after:#?}");
    let delivered = new[0];
    assert_eq!(
        delivered.id,
        last.id + 1,
        "contiguous numbering: {after:#?}"
    );
    assert_eq!(delivered.status, "delivered");
    assert_eq!(
        delivered.trigger, "reconnect",
        "found by the reconnect resync"
    );
    assert!(delivered.changed_keys.contains("acme"), "{delivered:?}");
    let ids: Vec<i64> = after.iter().map(|r| r.id).collect();
    assert_eq!(ids, (1..=after.len() as i64).collect::<Vec<_>>());
    assert!(after.iter().all(|r| r.status == "delivered"), "{after:#?}");
    assert!(stack
        .envoy()
        .wait_for_ecds_version(&delivered.revision, PROPAGATION));
    assert_eq!(stack.metric(CURRENT_REVISION), Some(delivered.id as f64));
    assert_eq!(stack.metric(ENVOY_STATUS), Some(1.0));
}

// ------------------------------------------------------------ 2. Envoy restart

#[test]
fn restarted_envoy_serves_the_file_and_follows_new_revisions() {
    let mut stack = FaultStack::shared(&FaultOptions::default());
    stack.set_tenant_limit("acme", 1000, 60);
    stack
        .wait_for_limit("acme", 1000, 60, PROPAGATION)
        .expect("acme's limit reaches Envoy");
    let n = stack.revisions().last().cloned().unwrap();
    let file = std::fs::read(stack.ecds_file()).unwrap();

    // A new Envoy on the same directory serves revision N from its first request.
    stack.stop_envoy();
    stack.start_envoy();
    let first = stack.get("acme").expect("new Envoy answers");
    assert_eq!(first.status, 200);
    assert_policy(&first, 1000, 60, "the first request of the new Envoy");
    assert_eq!(
        first.json()["headers"]["x-tenant-guard-revision"].as_str(),
        Some(n.revision.as_str())
    );
    assert_eq!(
        stack.envoy().ecds_version().as_deref(),
        Some(n.revision.as_str())
    );
    assert_eq!(
        stack.revisions().last(),
        Some(&n),
        "no re-delivery was needed"
    );
    assert_eq!(std::fs::read(stack.ecds_file()).unwrap(), file);

    // A change reaches the new Envoy as revision N+1.
    stack.set_tenant_limit("acme", 7, 60);
    stack
        .wait_for_limit("acme", 7, 60, PROPAGATION)
        .expect("the change reaches the new Envoy");
    let n1 = stack.revisions().last().cloned().unwrap();
    assert_eq!(n1.id, n.id + 1);
    assert!(stack
        .envoy()
        .wait_for_ecds_version(&n1.revision, PROPAGATION));

    // The file is lost while Envoy is down: the next sync rewrites it (same
    // revision, no new audit row), and a new Envoy serves N+1 at once.
    stack.stop_envoy();
    std::fs::remove_file(stack.ecds_file()).unwrap();
    let reply = stack.post_sync();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["result"], "unchanged", "{body}");
    assert_eq!(body["revision_id"], n1.id);
    let rewritten = std::fs::read_to_string(stack.ecds_file()).expect("file rewritten");
    assert!(rewritten.contains(&n1.revision));
    assert_eq!(stack.revisions().last(), Some(&n1), "no new revision");
    stack.start_envoy();
    let r = stack.get("acme").expect("Envoy answers");
    assert_policy(&r, 7, 60, "restarted Envoy on the rewritten file");
    assert_eq!(
        stack.envoy().ecds_version().as_deref(),
        Some(n1.revision.as_str())
    );
}

// ------------------------------------------------- 3. ECDS path unwritable

fn what_path(stack: &FaultStack) -> String {
    stack.ecds_file().display().to_string()
}

/// Breaks delivery with `fault`, changes acme's limit to `requests`, and checks
/// error, metrics, retries, the old config serving, then repairs and checks the
/// automatic delivery. `served` is the limit Envoy serves before.
fn unwritable_round(stack: &FaultStack, mut fault: WriteFault, served: u64, requests: u64) {
    let what = fault.describe();
    let errors_before = stack.metric(SYNC_ERRORS).unwrap();
    let audit_before = stack.revisions();
    stack.set_tenant_limit("acme", requests, 60);

    // The NOTIFY-triggered sync fails; so does a manual one, naming the path.
    let reply = stack.post_sync();
    eprintln!("[{what}] POST /sync: {} {}", reply.status, reply.text());
    assert_eq!(reply.status, 500, "[{what}] {}", reply.text());
    let body = reply.json();
    assert_eq!(body["result"], "failed");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&stack.ecds_file().display().to_string()),
        "[{what}] the error names the ECDS file: {error}"
    );
    assert_eq!(stack.metric(ENVOY_STATUS), Some(0.0), "[{what}]");
    let errors = stack.metric(SYNC_ERRORS).unwrap();
    assert!(
        errors >= errors_before + 1.0,
        "[{what}] errors {errors_before} -> {errors}"
    );
    // Retries on their own (backoff), each failing while the fault lasts.
    assert!(
        wait_until(Duration::from_secs(10), || {
            stack.metric(SYNC_ERRORS).unwrap_or_default() >= errors + 2.0
        }),
        "[{what}] the sidecar retries the failed delivery:\n{}",
        stack.metrics()
    );
    // Retries re-deliver the one recorded revision: the audit does not grow per attempt.
    let failed: Vec<RevisionRow> = stack.revisions()[audit_before.len()..].to_vec();
    assert!(
        failed.len() == 1 && failed[0].status == "failed",
        "one failed revision for these settings: {failed:#?}"
    );
    assert!(
        failed[0]
            .error
            .contains(&stack.ecds_file().display().to_string()),
        "the audit records the error: {:?}",
        failed[0]
    );
    // Envoy keeps the old config meanwhile.
    let r = stack.get("acme").expect("Envoy answers");
    assert_policy(
        &r,
        served,
        60,
        &format!("[{what}] old config keeps serving"),
    );

    // Repaired: the next retry delivers, without any trigger from us.
    fault.repair();
    let repaired = Instant::now();
    stack
        .wait_for_limit("acme", requests, 60, PROPAGATION)
        .unwrap_or_else(|| panic!("[{what}] not delivered after repair:\n{}", stack.metrics()));
    eprintln!("[{what}] repaired -> enforced in {:?}", repaired.elapsed());
    assert!(wait_until(Duration::from_secs(5), || stack
        .metric(ENVOY_STATUS)
        == Some(1.0)));
    let last = stack.revisions().last().cloned().unwrap();
    assert_eq!(last.status, "delivered");
    assert_eq!(
        last.id, failed[0].id,
        "the failed revision itself was re-delivered"
    );
    assert!(
        last.error.contains("delivered on retry after") && last.error.contains(&what_path(stack)),
        "the audit keeps what the retry overcame: {last:?}"
    );
    assert_eq!(stack.metric(CURRENT_REVISION), Some(last.id as f64));
    assert!(stack
        .envoy()
        .wait_for_ecds_version(&last.revision, PROPAGATION));
}

#[test]
fn unwritable_ecds_path_is_reported_retried_and_recovered() {
    let options = FaultOptions {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
        ..FaultOptions::default()
    };
    let stack = FaultStack::shared(&options);
    stack.set_tenant_limit("acme", 1000, 60);
    stack
        .wait_for_limit("acme", 1000, 60, PROPAGATION)
        .expect("acme's limit reaches Envoy");

    // (a) The directory refuses new files (chattr +i as root, mode 0555 otherwise).
    let mut served = 1000;
    match WriteFault::unwritable_dir(stack.ecds_dir()) {
        Some(fault) => {
            unwritable_round(&stack, fault, served, 500);
            served = 500;
        }
        None => eprintln!("cannot make the ECDS directory unwritable here; skipping (a)"),
    }
    // (b) A directory stands where the ECDS file goes (the rename fails).
    let fault = WriteFault::directory_as_file(&stack.ecds_file());
    unwritable_round(&stack, fault, served, 250);
}

// ------------------------------------------------ 4. panic under FAIL_RELOAD

/// Wasm VM stats (`wasm.*`, `wasm_filter.*`) as name → value.
const RELOAD_SUCCESS: &str = "wasm.tenant-guard.vm_reload_success";
const RELOAD_BACKOFF: &str = "wasm.tenant-guard.vm_reload_backoff";
const RELOAD_FAILURE: &str = "wasm.tenant-guard.vm_reload_failure";
const VMS_CREATED: &str = "wasm.envoy.wasm.runtime.v8.created";

fn wasm_stats(envoy: &Envoy) -> Vec<(String, u64)> {
    envoy.stats("^wasm")
}

fn stat(stats: &[(String, u64)], name: &str) -> u64 {
    stats
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or_default()
}

#[test]
fn filter_panic_recovers_under_fail_reload() {
    let upstream = Upstream::start();
    let config = PluginConfig::new("r-panic")
        .tenant_limit("after", 3, 60)
        .to_json();
    let fault = FaultEnvoy::start(&config, upstream.port());
    let envoy = &fault.envoy;
    let warm = envoy.get("/warm", &[(TENANT_HEADER, "warm")]);
    assert_eq!(warm.status, 200);
    let before = wasm_stats(envoy);

    // On one keep-alive connection (one worker): the panic, then recovery.
    let mut conn = Conn::new(envoy.port());
    let panicked = conn.request(
        "GET",
        "/panic",
        &[(TENANT_HEADER, "warm"), (FAULT_HEADER, "panic")],
        b"",
    );
    eprintln!("panic request: {panicked:?}");
    // A reset connection would also be a failure of that request; a response must be 5xx.
    if let Ok(r) = &panicked {
        assert!(r.status >= 500, "the panicking request fails: {r:?}");
    }
    let hits_after_panic = upstream.hits();
    let started = Instant::now();
    let mut statuses = Vec::new();
    let recovered = wait_until(Duration::from_secs(15), || {
        let status = conn
            .request("GET", "/again", &[(TENANT_HEADER, "warm")], b"")
            .map(|r| r.status)
            .unwrap_or(0);
        if statuses.last() != Some(&status) {
            statuses.push(status);
        }
        status == 200
    });
    eprintln!(
        "after the panic: statuses {statuses:?}, recovered in {:?}",
        started.elapsed()
    );
    assert!(
        recovered,
        "requests succeed again after the reload: {statuses:?}"
    );
    assert!(upstream.hits() > hits_after_panic);

    // The reloaded filter enforces limits: 3/60 → the 4th is 429, on every worker.
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(envoy.get("/after", &[(TENANT_HEADER, "after")]).status);
    }
    assert_eq!(seen, [200, 200, 200, 429], "limit enforced after recovery");
    let mut conn = Conn::new(envoy.port());
    let r = conn.get("/after", &[(TENANT_HEADER, "after")]);
    assert_eq!(r.status, 429);

    // Envoy's own account: one VM reloaded successfully (requests that came
    // during the reload backoff were refused), a new V8 VM created.
    let after = wasm_stats(envoy);
    let delta = |name: &str| stat(&after, name) as i64 - stat(&before, name) as i64;
    assert!(delta(RELOAD_SUCCESS) >= 1, "{RELOAD_SUCCESS}: {after:?}");
    assert!(delta(RELOAD_BACKOFF) >= 1, "{RELOAD_BACKOFF}: {after:?}");
    assert_eq!(delta(RELOAD_FAILURE), 0, "{RELOAD_FAILURE}: {after:?}");
    assert!(delta(VMS_CREATED) >= 1, "{VMS_CREATED}: {after:?}");
    eprintln!(
        "reload stats: success +{}, backoff +{}, v8 created +{}",
        delta(RELOAD_SUCCESS),
        delta(RELOAD_BACKOFF),
        delta(VMS_CREATED)
    );
}

// ------------------------------------------------ 5. corrupted shared data

#[test]
fn corrupted_shared_data_reads_as_absent() {
    let upstream = Upstream::start();
    let mut config = PluginConfig::new("r-corrupt")
        .tenant_limit("acme", 3, 60)
        .value()
        .clone();
    config["tenants"]["shop"] = json!({});
    config["defaults"]["idempotency"] = json!({
        "methods": ["POST"],
        "required": true,
        "ttl_seconds": 3600,
        "max_body_bytes": 4096
    });
    config["store"] = json!({ "idempotency_buckets": 1 });
    let fault = FaultEnvoy::start(&config.to_string(), upstream.port());
    let envoy = &fault.envoy;
    assert_eq!(envoy.get("/warm", &[(TENANT_HEADER, "warm")]).status, 200);
    let before = wasm_stats(envoy);
    let get = |extra: &[(&str, &str)]| {
        let mut headers = vec![(TENANT_HEADER, "acme")];
        headers.extend_from_slice(extra);
        envoy.get("/rl", &headers).status
    };

    // Rate-limit state: exhaust, corrupt, the bucket reads as fresh.
    let exhausted: Vec<u16> = (0..4).map(|_| get(&[])).collect();
    assert_eq!(exhausted, [200, 200, 200, 429]);
    let corrupt = get(&[(FAULT_HEADER, "corrupt tg:rl:acme:tenant")]);
    let rest: Vec<u16> = (0..3).map(|_| get(&[])).collect();
    assert_eq!(
        (corrupt, rest.as_slice()),
        (200, &[200, 200, 429][..]),
        "a corrupted state reads as a fresh bucket"
    );

    // Idempotency bucket: a completed key is replayed, then corrupted away.
    let key = "\"order-1\"";
    let post = |extra: &[(&str, &str)]| {
        let mut headers = vec![(TENANT_HEADER, "shop"), ("idempotency-key", key)];
        headers.extend_from_slice(extra);
        envoy.request("POST", "/orders", &headers, b"{\"qty\":1}")
    };
    let hits = upstream.hits();
    let first = post(&[]);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(upstream.hits(), hits + 1);
    let replay = post(&[]);
    assert_eq!(
        replay.header("idempotent-replayed"),
        Some("true"),
        "{replay:?}"
    );
    assert_eq!(upstream.hits(), hits + 1, "replayed without upstream");
    let fresh = post(&[(FAULT_HEADER, "corrupt tg:idem:b:0")]);
    assert_eq!(fresh.status, 200, "{fresh:?}");
    assert_eq!(fresh.header("idempotent-replayed"), None, "{fresh:?}");
    assert_eq!(
        upstream.hits(),
        hits + 2,
        "treated as a new key: reached upstream"
    );
    let replay = post(&[]);
    assert_eq!(
        replay.header("idempotent-replayed"),
        Some("true"),
        "{replay:?}"
    );
    assert_eq!(upstream.hits(), hits + 2);

    // No panic: no VM was reloaded or created, nothing answered 5xx above.
    let after = wasm_stats(envoy);
    for name in [RELOAD_SUCCESS, RELOAD_BACKOFF, RELOAD_FAILURE, VMS_CREATED] {
        assert_eq!(stat(&after, name), stat(&before, name), "{name}: {after:?}");
    }
}
