//! A `--wasm` module that is not valid WebAssembly is refused before anything
//! reaches Envoy: the sync records one failed revision naming the file and
//! the reason, the ECDS directory stays as it was (no ECDS file, no published
//! module), the deployed revision keeps serving, and the daemon's metrics and
//! `/ready` say the sync failed. Against the real PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{poll, Daemon, TestDb};
use tenant_guard_sidecar::db::{self, Status};
use tenant_guard_sidecar::delivery::{DeliveryError, EnvoyDeliveryError};
use tenant_guard_sidecar::sync::{EnvoyTarget, SyncError, SyncOutcome, Syncer, TARGET_ENVOY};
use tenant_guard_sidecar::text::MAX_ERROR_BYTES;

/// The smallest valid module: the header, no sections.
const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";
/// A module cut inside its type section (announces 7 bytes, carries 3).
const TRUNCATED_MODULE: &[u8] = b"\0asm\x01\0\0\0\x01\x07\x01\x60\x02";

/// Writes `bytes` as a module next to (not inside) the ECDS directory.
fn module(db: &TestDb, name: &str, bytes: &[u8]) -> PathBuf {
    let path = db
        .ecds_dir()
        .parent()
        .unwrap()
        .join(format!("{}-{name}.wasm", db.schema()));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The entries of `dir`, sorted, with their contents.
fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut entries: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).unwrap(),
            )
        })
        .collect();
    entries.sort();
    entries
}

fn refused_syncer(db: &TestDb, corrupt: &Path) -> Syncer {
    let target = EnvoyTarget::prepare(db.ecds_dir(), Some(corrupt), None).unwrap();
    Syncer::new(db.schema(), target).unwrap()
}

/// The error of a refused sync: a delivery error carrying the module check.
fn assert_refused(error: &SyncError, corrupt: &Path) -> i64 {
    let SyncError::Delivery {
        revision,
        source: DeliveryError::Envoy(EnvoyDeliveryError::Module(module)),
    } = error
    else {
        panic!("not a refused module: {error:?}");
    };
    assert_eq!(module.path, corrupt);
    let text = tenant_guard_sidecar::text::error_text(error);
    assert!(
        text.contains(&corrupt.display().to_string())
            && text.contains("not a valid WebAssembly module")
            && text.contains("end-of-file"),
        "{text}"
    );
    *revision
}

#[tokio::test]
async fn a_corrupt_module_is_refused_and_nothing_is_written() {
    let db = TestDb::new().await;
    db.set_tenant_limit("acme", 100, "alice").await;
    let corrupt = module(&db, "corrupt", TRUNCATED_MODULE);
    let syncer = refused_syncer(&db, &corrupt);

    let error = syncer.sync(&db.client, "test").await.unwrap_err();
    let revision = assert_refused(&error, &corrupt);
    assert!(
        listing(db.ecds_dir()).is_empty(),
        "nothing in the ECDS directory: {:?}",
        listing(db.ecds_dir())
            .iter()
            .map(|(name, _)| name)
            .collect::<Vec<_>>()
    );
    let record = db::revision(&db.client, revision).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.document, None, "no document: nothing was delivered");
    let stored = record.error.unwrap_or_default();
    assert!(
        stored.contains(&corrupt.display().to_string()) && stored.len() <= MAX_ERROR_BYTES,
        "{stored}"
    );

    // Retrying (the daemon does, with backoff) records nothing new.
    let again = syncer.sync(&db.client, "test").await.unwrap_err();
    assert_eq!(assert_refused(&again, &corrupt), revision);
    assert_eq!(db.revision_count().await, 1);
    assert!(listing(db.ecds_dir()).is_empty());
    let _ = std::fs::remove_file(&corrupt);
    db.drop_schema().await;
}

#[tokio::test]
async fn a_corrupt_module_leaves_the_deployed_revision_serving() {
    let db = TestDb::new().await;
    db.set_tenant_limit("acme", 100, "alice").await;
    let good = module(&db, "good", EMPTY_MODULE);
    let target = EnvoyTarget::prepare(db.ecds_dir(), Some(&good), None).unwrap();
    let delivered = Syncer::new(db.schema(), target)
        .unwrap()
        .sync(&db.client, "test")
        .await
        .unwrap();
    assert!(matches!(delivered, SyncOutcome::Delivered { .. }));
    let before = listing(db.ecds_dir());
    assert_eq!(before.len(), 3, "ECDS file, module and its digest");

    // The same settings with a corrupt module: refused, recorded, nothing changed.
    let corrupt = module(&db, "corrupt", TRUNCATED_MODULE);
    let error = refused_syncer(&db, &corrupt)
        .sync(&db.client, "test")
        .await
        .unwrap_err();
    let revision = assert_refused(&error, &corrupt);
    assert!(revision > delivered.revision_id());
    assert_eq!(
        listing(db.ecds_dir()),
        before,
        "the ECDS directory is untouched"
    );
    let deployed = db::latest_revision(&db.client, TARGET_ENVOY, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        deployed.id,
        delivered.revision_id(),
        "still the deployed one"
    );
    assert_eq!(db.delivered_limit("acme"), 100);
    for path in [good, corrupt] {
        let _ = std::fs::remove_file(path);
    }
    db.drop_schema().await;
}

#[tokio::test]
async fn the_daemon_reports_a_refused_module_as_a_failed_sync() {
    let db = TestDb::new().await;
    db.set_tenant_limit("acme", 100, "alice").await;
    let corrupt = module(&db, "corrupt", TRUNCATED_MODULE);
    let daemon = Daemon::start_syncer(db.config.clone(), refused_syncer(&db, &corrupt)).await;

    poll(
        Duration::from_secs(15),
        "the failed sync in /metrics",
        || async {
            let errors = daemon.metric("settings_sync_errors_total").await?;
            (errors >= 1.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        daemon
            .metric("gateway_deployment_status{gateway=\"envoy\"}")
            .await,
        Some(0.0)
    );
    let (status, body) = daemon.get("/ready").await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = daemon.post("/sync").await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("\"result\":\"failed\"") && body.contains("not a valid WebAssembly module"),
        "{body}"
    );
    assert!(listing(db.ecds_dir()).is_empty());
    let failed: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM tg_revisions WHERE status = 'failed' AND document IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 1, "recorded once, however often it is retried");
    daemon.stop().await;
    let _ = std::fs::remove_file(&corrupt);
    db.drop_schema().await;
}

#[tokio::test]
async fn sync_with_a_corrupt_module_exits_non_zero_naming_the_file() {
    let db = TestDb::new().await;
    db.set_tenant_limit("acme", 100, "alice").await;
    let corrupt = module(&db, "corrupt", b"PK\x03\x04 not a module");
    let out = Command::new(env!("CARGO_BIN_EXE_tenant-guard-sidecar"))
        .env("DATABASE_URL", common::database_url())
        .env("TG_SCHEMA", db.schema())
        .env("RUST_LOG", "off")
        .args(["sync", "--ecds-dir"])
        .arg(db.ecds_dir())
        .arg("--wasm")
        .arg(&corrupt)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&corrupt.display().to_string()) && stderr.contains("magic"),
        "{stderr}"
    );
    assert!(listing(db.ecds_dir()).is_empty());
    let _ = std::fs::remove_file(&corrupt);
    db.drop_schema().await;
}
