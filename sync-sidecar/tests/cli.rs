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
    // Header mode (TestDb) with unknown tenants on defaults: warned about.
    assert_contains(
        &text(&out.stderr),
        "warning: header mode (`gateway.tenant.trust_header_without_jwt` = true) with `gateway.tenant.unknown` = \"defaults\"",
    );
    let out = sidecar_delivering(&db, &["sync"]);
    assert_contains(&text(&out.stdout), "unchanged: revision 1");

    // Dry run: a readable diff against the ECDS file, nothing delivered or recorded.
    db.set_tenant_limit("acme", 250, "bob").await;
    let before = std::fs::read(db.ecds_file()).unwrap();
    let dir = db.ecds_dir().to_str().unwrap();
    let out = sidecar(&db, &["sync", "--dry-run", "--ecds-dir", dir]);
    assert_success(&out);
    let diff = text(&out.stdout);
    for expected in [
        &format!("compared against: the ECDS file {dir}/tenant-guard.ecds.json (revision r1-"),
        "+++ rendered from current settings",
        "-        \"requests\": 100",
        "+        \"requests\": 250",
    ] {
        assert_contains(&diff, expected);
    }
    // Without --ecds-dir: the sidecar's record, and it says so.
    let out = sidecar(&db, &["sync", "--dry-run"]);
    assert_success(&out);
    assert_contains(
        &text(&out.stdout),
        "compared against: the sidecar's record of revision 1 delivered to envoy (no --ecds-dir given",
    );
    assert_eq!(std::fs::read(db.ecds_file()).unwrap(), before);
    assert_eq!(db.revision_count().await, 1);

    // Invalid settings: every finding, a diff of only what changes, exit 1.
    db.set_tenant("acme", "gateway.mode", json!("loud"), "mallory")
        .await;
    db.set_tenant("acme", "gateway.rate_limt", json!(1), "typo")
        .await;
    let out = sidecar(&db, &["sync", "--dry-run", "--ecds-dir", dir]);
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    for expected in [
        "INVALID: 2 finding(s)",
        "  - tenant `acme` setting `gateway.mode` (updated by mallory)",
        "  - tenant `acme` setting `gateway.rate_limt` (updated by typo): unknown setting key",
        "+        \"requests\": 250",
        "+      \"mode\": \"loud\"",
    ] {
        assert_contains(&report, expected);
    }
    let removed = report
        .lines()
        .filter(|l| l.starts_with('-') && !l.starts_with("---"))
        .count();
    assert_eq!(removed, 1, "only the old limit line is removed:\n{report}");
    assert_contains(&text(&out.stderr), "settings are invalid");
    db.client
        .execute(
            "DELETE FROM tg_settings WHERE key = 'gateway.rate_limt'",
            &[],
        )
        .await
        .unwrap();
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

/// A port nothing listens on.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `error:` lines of stderr (exactly one expected).
fn error_line(out: &Output) -> String {
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{stderr}");
    lines[0].to_owned()
}

fn assert_once(line: &str, part: &str) {
    assert_eq!(line.matches(part).count(), 1, "{part:?} once in\n{line}");
}

#[tokio::test]
async fn closed_stdout_is_a_quiet_exit_for_every_printing_command() {
    let db = TestDb::new().await;
    db.set_tenant_limit("acme", 100, "alice").await;
    assert_success(&sidecar_delivering(&db, &["sync"]));
    db.set_tenant_limit("acme", 200, "bob").await;
    let dir = db.ecds_dir().to_str().unwrap().to_owned();
    let deliver = ["--ecds-dir", &dir, "--wasm-path", "/opt/filter.wasm"];
    let commands: Vec<Vec<&str>> = vec![
        vec!["history"],
        vec!["sync", "--dry-run", "--ecds-dir", &dir],
        vec!["sync", "--dry-run"],
        [&["sync"][..], &deliver].concat(),
        [&["rollback", "--to", "1"][..], &deliver].concat(),
        vec!["migrate"],
        vec!["--help"],
    ];
    for args in commands {
        let mut child = sidecar_command(&db)
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Nobody reads: the first write meets a closed pipe (EPIPE).
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = text(&out.stderr);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            None,
            "{args:?} killed by a signal: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
    db.drop_schema().await;
}

#[tokio::test]
async fn errors_name_what_was_tried_and_print_each_cause_once() {
    let db = TestDb::new().await;
    let port = free_port();
    let refused = sidecar_command(&db)
        .env(
            "DATABASE_URL",
            format!("postgres://postgres:hunter2@127.0.0.1:{port}/postgres"),
        )
        .args(["history"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let line = error_line(&refused);
    assert_contains(
        &line,
        &format!("cannot connect to PostgreSQL at 127.0.0.1:{port}"),
    );
    assert_once(&line, "Connection refused");
    assert!(!line.contains("hunter2"), "{line}");

    for (url, expected) in [
        (
            "not-a-url",
            "error: invalid database URL `not-a-url`: not a URL: use postgres://USER@HOST:PORT/DATABASE",
        ),
        (
            "mysql://root@localhost/db",
            "error: invalid database URL `mysql://root@localhost/db`: `mysql` is not a PostgreSQL URL scheme",
        ),
        (
            "postgres://u:hunter2@127.0.0.1/db?sslmode=sometimes",
            "error: invalid database URL `postgres://u:***@127.0.0.1/db?sslmode=sometimes`: invalid value for option `sslmode`",
        ),
    ] {
        let out = sidecar_command(&db)
            .env("DATABASE_URL", url)
            .args(["history"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{url}: {}", text(&out.stderr));
        let line = error_line(&out);
        assert!(line.starts_with(expected), "{url}:\n{line}");
        assert_once(&line, "invalid database URL");
        assert!(!line.contains("connection string"), "{line}");
        assert!(!line.contains("hunter2"), "{line}");
    }

    // A missing module: the path and the cause, once.
    let out = sidecar(
        &db,
        &[
            "sync",
            "--ecds-dir",
            db.ecds_dir().to_str().unwrap(),
            "--wasm",
            "/nonexistent/filter.wasm",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let line = error_line(&out);
    assert_contains(
        &line,
        "cannot read the wasm module /nonexistent/filter.wasm: ",
    );
    assert_once(&line, "No such file or directory");

    // Kong unreachable: the revision, the call, the address and the cause, once.
    db.set_tenant_limit("acme", 100, "alice").await;
    let kong = free_port();
    let out = sidecar_command(&db)
        .args(["sync", "--gateway", "kong", "--kong-admin-url"])
        .arg(format!("http://127.0.0.1:{kong}"))
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert_contains(
        &line,
        "error: delivery of revision 1 failed: Kong Admin API POST /config",
    );
    assert_contains(&line, &format!("cannot connect to 127.0.0.1:{kong}"));
    assert_once(&line, "failed after 5 attempts");
    assert_once(&line, "Connection refused");
    db.drop_schema().await;
}

#[tokio::test]
async fn envoy_only_flags_are_refused_with_kong() {
    let db = TestDb::new().await;
    for flags in [
        &["--wasm", "filter.wasm"][..],
        &["--wasm-path", "/x/filter.wasm"],
        &["--ecds-dir", "/tmp"],
    ] {
        let out = sidecar_command(&db)
            .args(["sync", "--dry-run", "--gateway", "kong"])
            .args(flags)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        let line = error_line(&out);
        assert_contains(&line, &format!("{} is for --gateway envoy", flags[0]));
    }
    db.drop_schema().await;
}

#[tokio::test]
async fn dry_run_compares_against_what_envoy_has() {
    let db = TestDb::new().await;
    db.set_tenant_limit("acme", 100, "alice").await;
    let dir = db.ecds_dir().to_str().unwrap().to_owned();
    let file = format!("{dir}/tenant-guard.ecds.json");

    // Nothing deployed: says so and what it would write; writes nothing.
    let out = sidecar(&db, &["sync", "--dry-run", "--ecds-dir", &dir]);
    assert_success(&out);
    let report = text(&out.stdout);
    assert_contains(
        &report,
        &format!("nothing deployed at {file}; would write:"),
    );
    assert_contains(&report, "+        \"requests\": 100");
    assert!(!report.contains("no changes"), "{report}");
    assert!(file_names(db.ecds_dir(), |_| true).is_empty());
    assert_eq!(db.revision_count().await, 0);

    assert_success(&sidecar_delivering(&db, &["sync"]));
    let out = sidecar(&db, &["sync", "--dry-run", "--ecds-dir", &dir]);
    assert_success(&out);
    assert_contains(
        &text(&out.stdout),
        &format!("no changes: the settings render to what the ECDS file {file} (revision r1-"),
    );

    // Envoy lost its file: the record still says revision 1, the dry run sees the gateway.
    std::fs::remove_file(&file).unwrap();
    let out = sidecar(&db, &["sync", "--dry-run", "--ecds-dir", &dir]);
    assert_contains(&text(&out.stdout), &format!("nothing deployed at {file}"));
    let out = sidecar(&db, &["sync", "--dry-run"]);
    assert_contains(
        &text(&out.stdout),
        "no changes: the settings render to what the sidecar's record of revision 1",
    );

    // Someone edited the file: the diff is against the edit.
    assert_success(&sidecar_delivering(&db, &["sync"]));
    let edited = std::fs::read_to_string(&file)
        .unwrap()
        .replace("\\\"requests\\\":100", "\\\"requests\\\":7");
    std::fs::write(&file, edited).unwrap();
    let out = sidecar(&db, &["sync", "--dry-run", "--ecds-dir", &dir]);
    let report = text(&out.stdout);
    assert_contains(&report, "-        \"requests\": 7");
    assert_contains(&report, "+        \"requests\": 100");

    // Header mode with unknown tenants on defaults: a warning on stderr.
    assert_contains(&text(&out.stderr), "warning: header mode");
    db.set_global("gateway.tenant.unknown", json!("reject"), "alice")
        .await;
    let out = sidecar(&db, &["sync", "--dry-run", "--ecds-dir", &dir]);
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    db.drop_schema().await;
}

#[tokio::test]
async fn read_only_commands_create_nothing() {
    let db = TestDb::new().await;
    let fresh = format!("{}_x", db.schema());
    let exists = |schema: String| {
        let client = &db.client;
        async move {
            client
                .query_one(
                    "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
                    &[&schema],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    for args in [&["history"][..], &["sync", "--dry-run"]] {
        let out = sidecar_command(&db)
            .env("TG_SCHEMA", &fresh)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let line = error_line(&out);
        assert_contains(
            &line,
            &format!("schema `{fresh}` in database `postgres` at 127.0.0.1:5432 does not exist"),
        );
        assert_eq!(
            exists(fresh.clone()).await,
            0,
            "{args:?} created the schema"
        );
    }
    // A schema without the sidecar's tables is named as such, and left alone.
    db.client
        .batch_execute(&format!("CREATE SCHEMA \"{fresh}\""))
        .await
        .unwrap();
    let out = sidecar_command(&db)
        .env("TG_SCHEMA", &fresh)
        .arg("history")
        .output()
        .unwrap();
    assert_contains(&error_line(&out), "has no sidecar tables");
    let tables: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1",
            &[&fresh],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);
    // `migrate` creates it; then `history` reads it.
    let out = sidecar_command(&db)
        .env("TG_SCHEMA", &fresh)
        .arg("migrate")
        .output()
        .unwrap();
    assert_success(&out);
    assert_contains(&text(&out.stdout), &format!("schema `{fresh}`"));
    let out = sidecar_command(&db)
        .env("TG_SCHEMA", &fresh)
        .arg("history")
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(text(&out.stdout).lines().count(), 1, "just the header");
    db.client
        .batch_execute(&format!("DROP SCHEMA \"{fresh}\" CASCADE"))
        .await
        .unwrap();
    db.drop_schema().await;
}

#[tokio::test]
async fn argument_ranges_are_checked() {
    let db = TestDb::new().await;
    for (args, expected) in [
        (&["history", "--limit", "0"][..], "0 is not in 1..=10000"),
        (
            &["history", "--limit", "100000"],
            "100000 is not in 1..=10000",
        ),
        (&["rollback", "--to", "0"], "0 is not in 1.."),
        (&["run", "--resync-interval", "0s"], "out of range"),
        (&["run", "--debounce", "2h"], "out of range"),
        (&["--max-value-bytes", "0", "history"], "out of range"),
        (
            &["--max-value-bytes", "lots", "history"],
            "not a number of bytes",
        ),
    ] {
        let out = sidecar(&db, args);
        assert_fails_with(&out, 2, expected);
    }
    // The revision is checked before the delivery flags.
    let out = sidecar(&db, &["rollback", "--to", "999"]);
    assert_eq!(out.status.code(), Some(2));
    let line = error_line(&out);
    assert_contains(&line, "revision 999 does not exist");
    assert!(
        !line.contains("--ecds-dir") && !line.contains("--wasm"),
        "{line}"
    );
    db.drop_schema().await;
}

#[tokio::test]
async fn oversized_values_and_long_errors_are_bounded_everywhere() {
    let db = TestDb::new().await;
    db.set_tenant_limit("acme", 100, "alice").await;
    // A 10 MB jsonb string.
    let huge = json!("x".repeat(10 * 1024 * 1024));
    db.set_tenant("acme", "gateway.mode", huge, "mallory").await;

    let out = sidecar_command(&db)
        .args(["sync", "--ecds-dir"])
        .arg(db.ecds_dir())
        .args(["--wasm-path", "/opt/filter.wasm"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert_contains(
        &line,
        "tenant `acme` setting `gateway.mode` (updated by mallory): value is 10485762 bytes, over the limit of 65536 bytes",
    );
    assert!(line.len() < 1000, "{} bytes", line.len());
    let stderr = text(&out.stderr);
    assert!(stderr.len() < 16 * 1024, "stderr {} bytes", stderr.len());
    assert!(
        stderr.lines().all(|l| l.len() < 4096 + 200),
        "a log line over the bound"
    );
    let stored: (i32, i32) = {
        let row = db
            .client
            .query_one(
                "SELECT octet_length(error), octet_length(settings::text) FROM tg_revisions WHERE status = 'failed'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(stored.0 < 1000, "stored error {} bytes", stored.0);
    assert!(stored.1 < 4096, "settings snapshot {} bytes", stored.1);

    // The limit is configurable (flag or TG_MAX_VALUE_BYTES).
    db.set_tenant("acme", "gateway.mode", json!("shadow"), "alice")
        .await;
    let out = sidecar_command(&db)
        .args(["sync", "--dry-run"])
        .env("TG_MAX_VALUE_BYTES", "10")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_contains(
        &text(&out.stdout),
        "tenant `acme` setting `gateway.rate_limit` (updated by alice): value is 36 bytes, over the limit of 10 bytes",
    );

    // The 10 MB value again plus many findings: the stored error, the log and
    // POST /sync are cut with a marker and still name the oversized row first.
    db.set_tenant(
        "acme",
        "gateway.mode",
        json!("x".repeat(10 * 1024 * 1024)),
        "mallory",
    )
    .await;
    for i in 0..200 {
        db.set_tenant(
            "acme",
            &format!("gateway.unknown_key_{i:03}"),
            json!(1),
            "mallory",
        )
        .await;
    }
    let mut child = sidecar_command(&db)
        .args(["run", "--admin-addr", "127.0.0.1:0", "--ecds-dir"])
        .arg(db.ecds_dir())
        .args(["--wasm-path", "/opt/filter.wasm"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let addr: SocketAddr = first
        .trim()
        .strip_prefix("admin listening on http://")
        .unwrap()
        .parse()
        .unwrap();
    let (status, body) = http(addr, "POST", "/sync").await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(
        body.len() <= 4096 + 100,
        "POST /sync answered {} bytes",
        body.len()
    );
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.ends_with(" bytes]") && error.contains("… [truncated, "),
        "{error}"
    );
    assert_contains(
        error,
        "tenant `acme` setting `gateway.mode` (updated by mallory): value is 10485762 bytes",
    );
    let stored: String = db
        .client
        .query_one(
            "SELECT error FROM tg_revisions WHERE status = 'failed' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.len() <= 4096, "{}", stored.len());
    assert!(stored.contains("… [truncated, "), "{stored}");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let log = text(&out.stderr);
    assert_contains(&log, "settings rejected");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 4096 + 300, "a log line of {longest} bytes");
    db.drop_schema().await;
}
