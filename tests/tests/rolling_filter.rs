//! Rolling the sidecar rolls the filter, end to end: a real Envoy on the ECDS
//! bootstrap (`envoy/ecds.yaml`), real PostgreSQL and the real
//! `tenant-guard-sidecar` binary (`run`). The sidecar is started with filter
//! build A, stopped and started again with build B (same ECDS directory, same
//! database): the same Envoy process serves B within a bound while a client
//! loop running throughout (a fresh connection per request, and one
//! keep-alive connection) sees no failed request. Then the sidecar is rolled
//! to a corrupt `.wasm`: Envoy keeps serving B, still with no failed request,
//! and the refusal is visible (the sidecar refuses the module, or records a
//! failed revision and says so in `/ready` and `/metrics`, or — as long as the
//! sidecar does not check the module — Envoy's ECDS rejection counter rises).
//! Every wait is a poll with a deadline.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tenant_guard_e2e::rolling::{
    self, envoy_counter, envoy_uptime, ClientKind, ClientLoop, Sample, SidecarProcess,
    ECDS_FAIL_STAT, ECDS_RELOAD_STAT, ENVOY_CLOSED_CX_STAT,
};
use tenant_guard_e2e::sidecar::{get_as, SettingsDb};
use tenant_guard_e2e::tempdir::TempDir;
use tenant_guard_e2e::wait::{wait_for, wait_until};
use tenant_guard_e2e::{Envoy, Upstream};
use tenant_guard_sidecar::envoy::{sha256_hex, ECDS_FILE_NAME};

const TENANT: &str = "rolling";
/// The bound within which the running Envoy must serve a newly rolled build.
const ROLL_BOUND: Duration = Duration::from_secs(30);
const KINDS: [ClientKind; 2] = [ClientKind::Fresh, ClientKind::KeepAlive];

/// How a roll to a corrupt module was refused.
#[derive(Debug)]
enum Refusal {
    /// The sidecar exited without delivering (it checks the module at start-up).
    SidecarExited(ExitStatus),
    /// The sidecar recorded a failed revision and delivered nothing.
    FailedRevision,
    /// The sidecar delivered it and Envoy rejected the ECDS update.
    EnvoyRejected,
}

fn failed_revisions(db: &SettingsDb) -> i64 {
    db.psql("SELECT count(*) FROM tg_revisions WHERE status = 'failed'")
        .parse()
        .unwrap()
}

/// Requests of `samples` that did not get a 200 carrying one of `builds`.
fn failures<'a>(samples: &'a [Sample], builds: &[&str]) -> Vec<&'a Sample> {
    samples.iter().filter(|s| !s.is_ok_with(builds)).collect()
}

/// Polls until every client has made `more` requests beyond `counts`.
fn wait_for_requests(clients: &ClientLoop, counts: &[usize; 2], more: usize) -> bool {
    wait_until(Duration::from_secs(20), || {
        KINDS
            .iter()
            .zip(counts)
            .all(|(&kind, &count)| clients.count(kind) >= count + more)
    })
}

fn module_digest(path: &Path) -> String {
    sha256_hex(&fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

#[test]
fn rolling_the_sidecar_rolls_the_filter_with_no_failed_request() {
    let build_a = rolling::filter_build("A");
    let build_b = rolling::filter_build("B");
    let (digest_a, digest_b) = (module_digest(&build_a), module_digest(&build_b));
    assert_ne!(digest_a, digest_b, "builds A and B must differ");
    // Envoy's harness resolves the main `.wasm` even for an ECDS directory
    // someone else writes (it only uses it for `write_ecds`, not called here):
    // point it at A rather than building a third module. No other thread runs yet.
    if std::env::var_os("TENANT_GUARD_WASM").is_none() {
        std::env::set_var("TENANT_GUARD_WASM", &build_a);
    }
    let bin = rolling::sidecar_binary();

    let db = SettingsDb::new();
    db.set_tenant_limit(TENANT, 1_000_000, 60);
    let ecds = TempDir::new("rolling-ecds").unwrap();
    let ecds_file = ecds.path().join(ECDS_FILE_NAME);

    // Build A: sidecar, then Envoy on its directory.
    let mut sidecar = SidecarProcess::spawn(&bin, db.schema(), ecds.path(), &build_a);
    assert!(
        sidecar.wait_ready(Duration::from_secs(20)),
        "the sidecar with build A never became ready:\n{}",
        sidecar.stderr_tail(20)
    );
    let upstream = Upstream::start();
    let mut envoy = Envoy::start_ecds_watching(ecds.path(), upstream.port());
    let port = envoy.port();
    let pid = envoy.pid();
    let first = wait_for(ROLL_BOUND, || {
        get_as(port, TENANT)
            .filter(|r| r.status == 200 && r.header(rolling::BUILD_HEADER) == Some("A"))
    });
    assert!(
        first.is_some(),
        "Envoy never served build A:\n{}",
        envoy.log_tail(30)
    );
    let uptime_before = envoy_uptime(&envoy).expect("Envoy /server_info uptime");
    let reloads_before = envoy_counter(&envoy, ECDS_RELOAD_STAT);
    let failed_updates_before = envoy_counter(&envoy, ECDS_FAIL_STAT);
    let closed_before = envoy
        .stat(ENVOY_CLOSED_CX_STAT)
        .unwrap_or_else(|| panic!("Envoy has no {ENVOY_CLOSED_CX_STAT}"));

    let clients = ClientLoop::start(port, TENANT);
    assert!(
        wait_for_requests(&clients, &[0, 0], 20),
        "the client loop does not get through"
    );

    // Roll A → B by restarting the sidecar with the new module.
    let stopped = sidecar.stop(Duration::from_secs(15));
    assert!(
        stopped.success(),
        "the sidecar stops cleanly on SIGTERM: {stopped}"
    );
    let during_gap = [
        clients.count(ClientKind::Fresh),
        clients.count(ClientKind::KeepAlive),
    ];
    assert!(
        wait_for_requests(&clients, &during_gap, 20),
        "the client loop stalled while no sidecar ran"
    );
    for (&kind, &gap) in KINDS.iter().zip(&during_gap) {
        let down = &clients.samples(kind)[gap..];
        assert!(
            failures(down, &["A"]).is_empty(),
            "{kind:?}: Envoy keeps serving A while no sidecar runs: {:?}",
            failures(down, &["A"]).first()
        );
    }
    let rolled = Instant::now();
    let mut sidecar = SidecarProcess::spawn(&bin, db.schema(), ecds.path(), &build_b);
    assert!(
        sidecar.wait_ready(Duration::from_secs(20)),
        "the sidecar with build B never became ready:\n{}",
        sidecar.stderr_tail(20)
    );
    assert!(
        wait_until(ROLL_BOUND, || clients.all_latest_are("B")),
        "Envoy did not serve build B within {ROLL_BOUND:?} of the sidecar restart:\n{}",
        envoy.log_tail(30)
    );
    let switch = rolled.elapsed();
    println!("sidecar restarted with build B -> every client served by B after {switch:?}");
    let module_b = rolling::ecds_module(&ecds_file).expect("the ECDS file names a module");
    assert_eq!(
        module_digest(&module_b),
        digest_b,
        "the ECDS file references build B"
    );
    assert!(envoy.is_running(), "Envoy still runs");
    assert_eq!(envoy.pid(), pid, "the same Envoy process");
    let uptime = envoy_uptime(&envoy).expect("Envoy /server_info uptime");
    assert!(
        uptime >= uptime_before,
        "Envoy's uptime was reset: {uptime_before}s -> {uptime}s"
    );
    // `config_reload` counts every update Envoy started, `config_fail` the ones it refused.
    assert!(
        envoy_counter(&envoy, ECDS_RELOAD_STAT) > reloads_before,
        "B arrived as an ECDS update, not a restart"
    );
    assert_eq!(
        envoy_counter(&envoy, ECDS_FAIL_STAT),
        failed_updates_before,
        "Envoy refused no update while rolling to B"
    );
    let settled = [
        clients.count(ClientKind::Fresh),
        clients.count(ClientKind::KeepAlive),
    ];
    for kind in KINDS {
        let samples = clients.samples(kind);
        let failed = failures(&samples, &["A", "B"]);
        assert!(
            failed.is_empty(),
            "{kind:?}: {} failed requests during the roll, first {:?}",
            failed.len(),
            failed.first()
        );
        assert!(
            samples.iter().any(|s| s.build.as_deref() == Some("A")),
            "{kind:?} saw A"
        );
        assert!(
            samples.iter().any(|s| s.build.as_deref() == Some("B")),
            "{kind:?} saw B"
        );
    }
    // One connection is served by one worker: once it has seen B, it never sees A again.
    let kept = clients.samples(ClientKind::KeepAlive);
    let first_b = kept
        .iter()
        .position(|s| s.build.as_deref() == Some("B"))
        .unwrap();
    assert!(
        kept[first_b..]
            .iter()
            .all(|s| s.build.as_deref() == Some("B")),
        "the keep-alive connection went back to A after B"
    );

    // Roll to a corrupt module: B's bytes cut in half (an interrupted copy).
    let bad = TempDir::new("rolling-corrupt").unwrap();
    let corrupt: PathBuf = bad.path().join("tenant_guard_filter.wasm");
    let bytes = fs::read(&build_b).unwrap();
    fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    let failed_before = failed_revisions(&db);
    let rejected_before = envoy_counter(&envoy, ECDS_FAIL_STAT);
    let stopped = sidecar.stop(Duration::from_secs(15));
    assert!(
        stopped.success(),
        "the sidecar stops cleanly on SIGTERM: {stopped}"
    );
    let mut sidecar = SidecarProcess::spawn(&bin, db.schema(), ecds.path(), &corrupt);
    let refusal = wait_for(ROLL_BOUND, || {
        if let Some(status) = sidecar.exit_status() {
            Some(Refusal::SidecarExited(status))
        } else if failed_revisions(&db) > failed_before {
            Some(Refusal::FailedRevision)
        } else if envoy_counter(&envoy, ECDS_FAIL_STAT) > rejected_before {
            Some(Refusal::EnvoyRejected)
        } else {
            None
        }
    })
    .unwrap_or_else(|| {
        panic!(
            "nothing refused the corrupt module within {ROLL_BOUND:?}:\n{}\n{}",
            sidecar.stderr_tail(20),
            envoy.log_tail(30)
        )
    });
    println!("corrupt module refused: {refusal:?}");
    let delivered = rolling::ecds_module(&ecds_file).expect("the ECDS file names a module");
    match &refusal {
        Refusal::SidecarExited(status) => {
            assert!(
                !status.success(),
                "the sidecar exits with an error on a corrupt module"
            );
            assert_eq!(delivered, module_b, "nothing was delivered");
            let log = sidecar.stderr_tail(10).to_ascii_lowercase();
            assert!(
                log.contains("wasm") || log.contains("module"),
                "the error names the module: {log}"
            );
        }
        Refusal::FailedRevision => {
            assert_eq!(delivered, module_b, "nothing was delivered");
            assert!(
                wait_until(Duration::from_secs(10), || {
                    sidecar
                        .metric("settings_sync_errors_total")
                        .is_some_and(|v| v >= 1.0)
                        && sidecar.metric("gateway_deployment_status{gateway=\"envoy\"}")
                            == Some(0.0)
                }),
                "the sidecar's metrics show the failed sync"
            );
            assert_ne!(
                sidecar.ready_status(),
                Some(200),
                "not ready on a module it refused"
            );
        }
        Refusal::EnvoyRejected => {
            assert_eq!(
                module_digest(&delivered),
                sha256_hex(&bytes[..bytes.len() / 2]),
                "the sidecar delivered the corrupt module"
            );
            // The sidecar does not check the module: only Envoy's counter says so
            // (`config_reload` rises too, and `/config_dump` shows the rejected
            // resource: Envoy records an update before it fails to build it).
            println!(
                "note: the sidecar reports /ready {:?} and deployment status {:?} for a module Envoy rejected",
                sidecar.ready_status(),
                sidecar.metric("gateway_deployment_status{gateway=\"envoy\"}")
            );
        }
    }
    if !matches!(refusal, Refusal::EnvoyRejected) {
        assert_eq!(
            envoy_counter(&envoy, ECDS_FAIL_STAT),
            rejected_before,
            "nothing reached Envoy"
        );
    }
    let refused = [
        clients.count(ClientKind::Fresh),
        clients.count(ClientKind::KeepAlive),
    ];
    assert!(
        wait_for_requests(&clients, &refused, 50),
        "the client loop stalled after the corrupt roll"
    );
    for (&kind, &from) in KINDS.iter().zip(&settled) {
        let samples = clients.samples(kind);
        let failed = failures(&samples, &["A", "B"]);
        assert!(
            failed.is_empty(),
            "{kind:?}: {} failed requests, first {:?}",
            failed.len(),
            failed.first()
        );
        let after = failures(&samples[from..], &["B"]);
        assert!(
            after.is_empty(),
            "{kind:?}: not served by B after the roll: {:?}",
            after.first()
        );
    }
    assert!(envoy.is_running(), "Envoy still runs");
    assert_eq!(envoy.pid(), pid, "the same Envoy process");
    assert_eq!(
        envoy_counter(&envoy, ENVOY_CLOSED_CX_STAT),
        closed_before,
        "Envoy closed no client connection during the rolls"
    );
    let total: usize = KINDS.iter().map(|&k| clients.count(k)).sum();
    clients.stop();
    println!("{total} requests through two rolls, 0 failed");
    drop(sidecar);
}
