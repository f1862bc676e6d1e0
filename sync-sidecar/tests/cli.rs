//! The `tenant-guard-sidecar` binary: subcommands, exit codes, SIGTERM.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{delivered_document, http, poll, TestDb};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_tenant-guard-sidecar");

/// The binary with the test's database and schema in its environment.
fn sidecar_command(db: &TestDb) -> Command {
    let mut command = Command::new(BIN);
    command
        .env("DATABASE_URL", common::database_url())
        .env("TG_SCHEMA", db.schema());
    command
}

fn sidecar(db: &TestDb, args: &[&str]) -> Output {
    sidecar_command(db)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// `sidecar` with `args` followed by the options that deliver to the test's ECDS directory.
fn sidecar_delivering(db: &TestDb, args: &[&str]) -> Output {
    let dir = db.ecds_dir().to_str().unwrap();
    let deliver = ["--ecds-dir", dir, "--wasm-path", "/opt/filter.wasm"];
    sidecar(db, &[args, &deliver[..]].concat())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_success(out: &Output) {
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn assert_contains(output: &str, expected: &str) {
    assert!(
        output.contains(expected),
        "{expected:?} missing in\n{output}"
    );
}

/// Exit code `code` with `expected` in stderr.
fn assert_fails_with(out: &Output, code: i32, expected: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
    assert_contains(&text(&out.stderr), expected);
}

/// Names of the files in `dir` that satisfy `keep`.
fn file_names(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| keep(n))
        .collect()
}

#[tokio::test]
async fn sync_dry_run_history_and_rollback() {
    let db = TestDb::new().await;
    db.set_tenant_limit("acme", 100, "alice").await;

    let out = sidecar_delivering(&db, &["sync"]);
    assert_success(&out);
    assert_contains(&text(&out.stdout), "delivered revision 1");
    let out = sidecar_delivering(&db, &["sync"]);
    assert_contains(&text(&out.stdout), "unchanged: revision 1");

    // Dry run: a readable diff, nothing delivered or recorded.
    db.set_tenant_limit("acme", 250, "bob").await;
    let before = std::fs::read(db.ecds_file()).unwrap();
    let out = sidecar(&db, &["sync", "--dry-run"]);
    assert_success(&out);
    let diff = text(&out.stdout);
    for expected in [
        "--- deployed revision 1 (r1-",
        "+++ rendered from current settings",
        "-        \"requests\": 100",
        "+        \"requests\": 250",
    ] {
        assert_contains(&diff, expected);
    }
    assert_eq!(std::fs::read(db.ecds_file()).unwrap(), before);
    assert_eq!(db.revision_count().await, 1);

    // Invalid settings: the dry run says why and exits 1.
    db.set_tenant("acme", "gateway.mode", json!("loud"), "mallory")
        .await;
    let out = sidecar(&db, &["sync", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    assert!(
        report.contains("INVALID") && report.contains("tenant `acme` setting `gateway.mode`"),
        "{report}"
    );
    let out = sidecar_delivering(&db, &["sync"]);
    assert_fails_with(&out, 1, "gateway.mode");

    db.set_tenant("acme", "gateway.mode", json!("shadow"), "alice")
        .await;
    assert_success(&sidecar_delivering(&db, &["sync"]));
    let rollback = ["rollback", "--to", "1", "--actor", "oncall"];
    assert_success(&sidecar_delivering(&db, &rollback));
    assert_eq!(db.delivered_limit("acme"), 100);

    let out = sidecar(&db, &["history"]);
    assert_success(&out);
    let history = text(&out.stdout);
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 5, "header + 4 revisions:\n{history}");
    assert!(
        lines[1].contains("delivered")
            && lines[1].contains("rollback to revision 1")
            && lines[1].contains("oncall"),
        "{history}"
    );
    assert!(
        lines[3].contains("failed") && lines[3].contains("mallory"),
        "{history}"
    );
    assert!(
        lines[4].contains("alice") && lines[4].contains("acme/gateway.rate_limit"),
        "{history}"
    );
    db.drop_schema().await;
}

#[tokio::test]
async fn usage_and_configuration_errors_exit_2() {
    let db = TestDb::new().await;
    let out = Command::new(BIN)
        .args(["history"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_fails_with(&out, 2, "DATABASE_URL");
    let out = sidecar(&db, &["sync"]);
    assert_fails_with(&out, 2, "--ecds-dir");
    let out = sidecar(&db, &["--schema", "Bad-Name", "history"]);
    assert_fails_with(&out, 2, "invalid schema name");
    let out = sidecar(&db, &["run", "--resync-interval", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    let out = sidecar(
        &db,
        &[
            "sync",
            "--ecds-dir",
            "/nonexistent/dir",
            "--wasm-path",
            "/x.wasm",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    db.drop_schema().await;
}

#[tokio::test]
async fn run_publishes_wasm_and_stops_cleanly_on_sigterm() {
    let db = TestDb::new().await;
    db.set_tenant_limit("acme", 100, "alice").await;
    let wasm = db
        .ecds_dir()
        .parent()
        .unwrap()
        .join(format!("{}.wasm", db.schema()));
    std::fs::write(&wasm, b"\0asm\x01\0\0\0").unwrap();
    let mut child = sidecar_command(&db)
        .args([
            "run",
            "--admin-addr",
            "127.0.0.1:0",
            "--debounce",
            "10ms",
            "--ecds-dir",
        ])
        .arg(db.ecds_dir())
        .arg("--wasm")
        .arg(&wasm)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("admin listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    common::wait_ready(addr).await;

    // The module was published content-addressed and the ECDS resource names it.
    let ecds = std::fs::read_to_string(db.ecds_file()).unwrap();
    let published = file_names(db.ecds_dir(), |n| n.ends_with(".wasm"));
    assert_eq!(published.len(), 1, "{published:?}");
    assert!(ecds.contains(&published[0]), "{ecds}");
    let _ = std::fs::remove_file(&wasm);

    let (status, body) = http(addr, "POST", "/sync").await.unwrap();
    assert_eq!(status, 200, "{body}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = poll(Duration::from_secs(10), "an exit after SIGTERM", || {
        std::future::ready(child.try_wait().unwrap())
    })
    .await;
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
    let leftovers = file_names(db.ecds_dir(), |n| n.contains(".tmp"));
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    assert!(
        delivered_document(&db.ecds_file()).is_some(),
        "a complete ECDS file remains"
    );
    assert!(
        http(addr, "GET", "/live").await.is_err(),
        "admin port closed"
    );
    db.drop_schema().await;
}
