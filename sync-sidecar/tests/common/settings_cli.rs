//! Driving `tenant-guard-sidecar settings …` in tests: the binary on a
//! [`TestDb`] schema, its output, and the table as PostgreSQL holds it (row
//! versions included, so "nothing was written" can be asserted exactly).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

use super::invalid_settings::InvalidCase;
use super::TestDb;

pub const BIN: &str = env!("CARGO_BIN_EXE_tenant-guard-sidecar");

pub fn command(schema: &str, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .env("DATABASE_URL", super::database_url())
        .env("TG_SCHEMA", schema)
        .env("RUST_LOG", "warn")
        .arg("settings")
        .args(args);
    command
}

/// `settings ARGS` on the test's schema.
pub fn settings(db: &TestDb, args: &[&str]) -> Output {
    command(db.schema(), args).output().unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
pub fn assert_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

#[track_caller]
pub fn assert_contains(text: &str, expected: &str) {
    assert!(text.contains(expected), "{expected:?} missing in\n{text}");
}

/// Every row with its version (`xmin`) and `updated_at`: equal snapshots mean
/// no row was written.
pub async fn snapshot(db: &TestDb) -> Vec<String> {
    db.client
        .query(
            "SELECT concat_ws(' | ', scope, tenant, route, key, value::text, updated_by,
                              updated_at::text, xmin::text)
               FROM tg_settings ORDER BY scope, tenant, route, key",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// `(value::text, updated_by)` of one row.
pub async fn stored(
    db: &TestDb,
    scope: &str,
    tenant: &str,
    route: &str,
    key: &str,
) -> Option<(String, String)> {
    db.client
        .query_opt(
            "SELECT value::text, updated_by FROM tg_settings
              WHERE scope = $1 AND tenant = $2 AND route = $3 AND key = $4",
            &[&scope, &tenant, &route, &key],
        )
        .await
        .unwrap()
        .map(|row| (row.get(0), row.get(1)))
}

/// The `etag:` line of `settings get`.
pub fn etag(db: &TestDb, target: &str, key: &str) -> String {
    let out = assert_ok(&settings(db, &["get", target, key]));
    out.lines()
        .find_map(|line| line.strip_prefix("etag: "))
        .unwrap_or_else(|| panic!("no etag in\n{out}"))
        .to_owned()
}

pub fn export_json(db: &TestDb, path: &Path) -> Value {
    let out = settings(db, &["export", "-o", path.to_str().unwrap()]);
    assert_ok(&out);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Puts `value` at `case`'s row in a settings file document.
pub fn insert(file: &mut Value, case: &InvalidCase) {
    let slot = match case.columns() {
        ("global", _, _) => &mut file["global"],
        ("plan", plan, _) => &mut file["plans"][plan],
        ("tenant", tenant, _) => &mut file["tenants"][tenant]["settings"],
        (_, tenant, route) => &mut file["tenants"][tenant]["routes"][route],
    };
    if slot.is_null() {
        *slot = json!({});
    }
    slot[case.key] = case.value.clone();
}

#[track_caller]
pub fn assert_refused(out: &Output, case: &InvalidCase, how: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{how} {}: {err}", case.what);
    for expected in &case.expect {
        assert!(
            err.contains(expected.as_str()),
            "{how} {}: {expected:?} missing in\n{err}",
            case.what
        );
    }
    assert_contains(&err, "nothing was written");
}
