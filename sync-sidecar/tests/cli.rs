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
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{delivered_document, http, poll, TestDb};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_tenant-guard-sidecar");

fn sidecar(db: &TestDb, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", common::database_url())
        .env("TG_SCHEMA", db.schema())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn sync_dry_run_history_and_rollback() {
    let db = TestDb::new().await;
    let dir = db.ecds_dir().to_str().unwrap().to_owned();
    let deliver = [
        "--ecds-dir",
        dir.as_str(),
        "--wasm-path",
        "/opt/filter.wasm",
    ];
    db.set(
        "tenant",
        "acme",
        "",
        "gateway.rate_limit",
        json!({"requests": 100, "per_seconds": 60}),
        "alice",
    )
    .await;

    let out = sidecar(&db, &[&["sync"][..], &deliver].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("delivered revision 1"),
        "{}",
        text(&out.stdout)
    );
    let out = sidecar(&db, &[&["sync"][..], &deliver].concat());
    assert!(
        text(&out.stdout).contains("unchanged: revision 1"),
        "{}",
        text(&out.stdout)
    );

    // Dry run: a readable diff, nothing delivered or recorded.
    db.set(
        "tenant",
        "acme",
        "",
        "gateway.rate_limit",
        json!({"requests": 250, "per_seconds": 60}),
        "bob",
    )
    .await;
    let before = std::fs::read(db.ecds_file()).unwrap();
    let out = sidecar(&db, &["sync", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let diff = text(&out.stdout);
    assert!(diff.contains("--- deployed revision 1 (r1-"), "{diff}");
    assert!(
        diff.contains("+++ rendered from current settings"),
        "{diff}"
    );
    assert!(diff.contains("-        \"requests\": 100"), "{diff}");
    assert!(diff.contains("+        \"requests\": 250"), "{diff}");
    assert_eq!(std::fs::read(db.ecds_file()).unwrap(), before);
    assert_eq!(db.revision_count().await, 1);

    // Invalid settings: the dry run says why and exits 1.
    db.set(
        "tenant",
        "acme",
        "",
        "gateway.mode",
        json!("loud"),
        "mallory",
    )
    .await;
    let out = sidecar(&db, &["sync", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    assert!(
        report.contains("INVALID") && report.contains("tenant `acme` setting `gateway.mode`"),
        "{report}"
    );
    let out = sidecar(&db, &[&["sync"][..], &deliver].concat());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("gateway.mode"),
        "{}",
        text(&out.stderr)
    );

    db.set(
        "tenant",
        "acme",
        "",
        "gateway.mode",
        json!("shadow"),
        "alice",
    )
    .await;
    let out = sidecar(&db, &[&["sync"][..], &deliver].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = sidecar(
        &db,
        &[
            &["rollback", "--to", "1", "--actor", "oncall"][..],
            &deliver,
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        delivered_document(&db.ecds_file()).unwrap()["tenants"]["acme"]["rate_limit"]["requests"],
        100
    );

    let out = sidecar(&db, &["history"]);
    assert!(out.status.success());
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
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("DATABASE_URL"),
        "{}",
        text(&out.stderr)
    );
    let out = sidecar(&db, &["sync"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--ecds-dir"),
        "{}",
        text(&out.stderr)
    );
    let out = sidecar(&db, &["--schema", "Bad-Name", "history"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid schema name"),
        "{}",
        text(&out.stderr)
    );
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
    db.set(
        "tenant",
        "acme",
        "",
        "gateway.rate_limit",
        json!({"requests": 100, "per_seconds": 60}),
        "alice",
    )
    .await;
    let wasm = db
        .ecds_dir()
        .parent()
        .unwrap()
        .join(format!("{}.wasm", db.schema()));
    std::fs::write(&wasm, b"\0asm\x01\0\0\0").unwrap();
    let mut child = Command::new(BIN)
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
        .env("DATABASE_URL", common::database_url())
        .env("TG_SCHEMA", db.schema())
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
    poll(Duration::from_secs(15), "/ready", || async {
        (http(addr, "GET", "/ready").await.ok()?.0 == 200).then_some(())
    })
    .await;

    // The module was published content-addressed and the ECDS resource names it.
    let ecds = std::fs::read_to_string(db.ecds_file()).unwrap();
    let published: Vec<String> = std::fs::read_dir(db.ecds_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wasm"))
        .collect();
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
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
    let leftovers: Vec<String> = std::fs::read_dir(db.ecds_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
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
