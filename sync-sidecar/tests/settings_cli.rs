//! `tenant-guard-sidecar settings …` against the real PostgreSQL, one fresh
//! schema per test: validation before writing, ETags, export/apply.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::invalid_settings::{self, InvalidCase};
use common::settings_cli::{
    assert_contains, assert_ok, assert_refused, command, etag, export_json, insert, settings,
    snapshot, stderr, stored,
};
use common::{limit, poll, TestDb};
use serde_json::{json, Value};
use tenant_guard_sidecar::sync::SyncOutcome;

#[tokio::test]
async fn every_kind_of_invalid_value_is_refused_by_set_and_apply() {
    let db = TestDb::new().await;
    invalid_settings::write_base(&db).await;
    let cases = invalid_settings::cases();
    assert_eq!(cases.len(), 29);
    let before = snapshot(&db).await;
    let file = db.ecds_dir().join("base.json");
    let base = export_json(&db, &file);
    for case in &cases {
        let value = case.value.to_string();
        let set = [
            "set",
            case.target,
            case.key,
            value.as_str(),
            "--actor",
            invalid_settings::ACTOR,
        ];
        assert_refused(&settings(&db, &set), case, "set");
        assert_eq!(
            snapshot(&db).await,
            before,
            "set {}: table changed",
            case.what
        );

        let mut document = base.clone();
        insert(&mut document, case);
        std::fs::write(&file, document.to_string()).unwrap();
        let apply = [
            "apply",
            "-f",
            file.to_str().unwrap(),
            "--actor",
            invalid_settings::ACTOR,
        ];
        assert_refused(&settings(&db, &apply), case, "apply");
        assert_eq!(
            snapshot(&db).await,
            before,
            "apply {}: table changed",
            case.what
        );
    }
    db.drop_schema().await;
}

#[tokio::test]
async fn apply_reports_every_finding_of_a_file_in_one_pass() {
    let db = TestDb::new().await;
    invalid_settings::write_base(&db).await;
    let before = snapshot(&db).await;
    let file = db.ecds_dir().join("settings.json");
    let mut document = export_json(&db, &file);
    // Rows that do not hide each other's findings (the filter's parser only
    // runs on a schema-valid document).
    let picked: Vec<InvalidCase> = invalid_settings::cases()
        .into_iter()
        .filter(|c| {
            [
                "requests 0",
                "unknown key",
                "tenant key at global scope",
                "enabled not a boolean",
                "tenant id with a space",
                "idempotency ttl 0",
                "unknown-tenant policy",
            ]
            .contains(&c.what)
        })
        .collect();
    assert_eq!(picked.len(), 7);
    for case in &picked {
        insert(&mut document, case);
    }
    std::fs::write(&file, document.to_string()).unwrap();
    let out = settings(
        &db,
        &["apply", "-f", file.to_str().unwrap(), "--actor", "mallory"],
    );
    let err = stderr(&out);
    for case in &picked {
        for expected in &case.expect {
            assert_contains(&err, expected);
        }
    }
    assert_contains(
        &err,
        "refused: the resulting settings would be invalid (7 finding(s) above)",
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("invalid: ")).count(),
        7,
        "{err}"
    );
    assert_eq!(snapshot(&db).await, before);
    db.drop_schema().await;
}

#[tokio::test]
async fn set_get_unset_with_etags_actor_and_dry_run() {
    let db = TestDb::new().await;
    db.set_tenant_limit("acme", 100, "alice").await;
    let list = assert_ok(&settings(&db, &["list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert!(
        lines[0].starts_with("TARGET") && lines[0].contains("ETAG"),
        "{list}"
    );
    assert!(
        lines[1].starts_with("@global") && lines[2].starts_with("acme"),
        "{list}"
    );
    let first = etag(&db, "acme", "gateway.rate_limit");
    assert_contains(lines[2], &first);

    // Dry run: the plugin-document diff, nothing written.
    let before = snapshot(&db).await;
    let new = limit(250).to_string();
    let out = settings(
        &db,
        &["set", "acme", "gateway.rate_limit", &new, "--dry-run"],
    );
    let text = assert_ok(&out);
    for expected in [
        "dry run, nothing written",
        "  ~ gateway.rate_limit:",
        "--- plugin document now",
        "+++ plugin document after the change",
        "-        \"requests\": 100",
        "+        \"requests\": 250",
    ] {
        assert_contains(&text, expected);
    }
    assert_eq!(snapshot(&db).await, before);

    // A write with the current ETag: recorded with the actor, new ETag.
    let set = [
        "set",
        "acme",
        "gateway.rate_limit",
        &new,
        "--if-match",
        &first,
        "--actor",
        "bob",
    ];
    assert_contains(
        &assert_ok(&settings(&db, &set)),
        "changed acme `gateway.rate_limit`",
    );
    assert_eq!(
        stored(&db, "tenant", "acme", "", "gateway.rate_limit").await,
        Some((
            r#"{"requests": 250, "per_seconds": 60}"#.to_owned(),
            "bob".to_owned()
        ))
    );
    let second = etag(&db, "acme", "gateway.rate_limit");
    assert_ne!(first, second, "every write changes the ETag");
    // The same actor again is still recorded as itself (not as the session user).
    let third_value = limit(300).to_string();
    let again = [
        "set",
        "acme",
        "gateway.rate_limit",
        &third_value,
        "--actor",
        "bob",
    ];
    assert_ok(&settings(&db, &again));
    assert_eq!(
        stored(&db, "tenant", "acme", "", "gateway.rate_limit")
            .await
            .unwrap()
            .1,
        "bob"
    );

    // The first ETag is stale now: refused, nothing written.
    let before = snapshot(&db).await;
    let stale = [
        "set",
        "acme",
        "gateway.rate_limit",
        &new,
        "--if-match",
        &first,
        "--actor",
        "carol",
    ];
    let out = settings(&db, &stale);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_contains(
        &stderr(&out),
        "stale ETag: acme `gateway.rate_limit` is at ETag",
    );
    assert_contains(&stderr(&out), &format!("not at ETag {first}"));
    assert_eq!(snapshot(&db).await, before);
    let dry = settings(
        &db,
        &[
            "unset",
            "acme",
            "gateway.rate_limit",
            "--if-match",
            &first,
            "--dry-run",
        ],
    );
    assert_contains(&stderr(&dry), "stale ETag");

    // The same value is no write at all.
    assert_contains(&assert_ok(&settings(&db, &again)), "already has this value");
    assert_eq!(snapshot(&db).await, before);

    // A key outside `gateway.` passes every check (the sidecar ignores it): warned about.
    let out = settings(&db, &["set", "acme", "gatway.mode", "\"shadow\""]);
    assert_ok(&out);
    assert_contains(
        &stderr(&out),
        "`gatway.mode` does not start with `gateway.`",
    );

    // Global and route targets; a non-JSON value is a usage error.
    let out = settings(&db, &["set", "@global", "gateway.mode", "shadow"]);
    assert_eq!(out.status.code(), Some(2));
    assert_contains(&stderr(&out), "is not JSON");
    assert_ok(&settings(
        &db,
        &[
            "set",
            "@global",
            "gateway.mode",
            "\"shadow\"",
            "--actor",
            "dave",
        ],
    ));
    assert_ok(&settings(
        &db,
        &[
            "set",
            "acme/orders",
            "gateway.route.prefix",
            "\"/orders\"",
            "--actor",
            "dave",
        ],
    ));
    assert_eq!(
        stored(&db, "route", "acme", "orders", "gateway.route.prefix").await,
        Some(("\"/orders\"".to_owned(), "dave".to_owned()))
    );
    assert_eq!(
        stored(&db, "global", "", "", "gateway.mode")
            .await
            .unwrap()
            .0,
        "\"shadow\""
    );

    // Unset: validated too (the route would lose its prefix while keeping a method).
    assert_ok(&settings(
        &db,
        &["set", "acme/orders", "gateway.route.method", "\"POST\""],
    ));
    let before = snapshot(&db).await;
    let out = settings(&db, &["unset", "acme/orders", "gateway.route.prefix"]);
    assert_eq!(out.status.code(), Some(1));
    assert_contains(&stderr(&out), "has no `gateway.route.prefix`");
    assert_eq!(snapshot(&db).await, before);
    let method_etag = etag(&db, "acme/orders", "gateway.route.method");
    let unset = [
        "unset",
        "acme/orders",
        "gateway.route.method",
        "--if-match",
        &method_etag,
    ];
    assert_contains(
        &assert_ok(&settings(&db, &unset)),
        "removed acme/orders `gateway.route.method`",
    );
    assert_eq!(
        stored(&db, "route", "acme", "orders", "gateway.route.method").await,
        None
    );
    let out = settings(&db, &["get", "acme/orders", "gateway.route.method"]);
    assert_eq!(out.status.code(), Some(1));
    assert_contains(
        &stderr(&out),
        "no setting `gateway.route.method` at acme/orders",
    );
    db.drop_schema().await;
}

#[tokio::test]
async fn concurrent_if_match_writes_exactly_one_wins() {
    let db = TestDb::new().await;
    db.set_tenant_limit("acme", 100, "alice").await;
    let tag = etag(&db, "acme", "gateway.rate_limit");

    // Hold the writers' lock so that both clients are in flight at once, then let go.
    let holder = db.config.connect_spawned().await.unwrap();
    holder
        .batch_execute("BEGIN; LOCK TABLE tg_settings IN SHARE ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    let spawn = |requests: u64, actor: &str| {
        let value = limit(requests).to_string();
        let args = [
            "set",
            "acme",
            "gateway.rate_limit",
            &value,
            "--if-match",
            &tag,
            "--actor",
            actor,
        ];
        command(db.schema(), &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let one = spawn(111, "one");
    let two = spawn(222, "two");
    let app = format!("tenant-guard-sidecar/{}", db.schema());
    poll(
        Duration::from_secs(20),
        "both clients waiting for the lock",
        || {
            let client = &db.client;
            let app = app.clone();
            async move {
                let waiting: i64 = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                      WHERE application_name = $1 AND wait_event_type = 'Lock'",
                        &[&app],
                    )
                    .await
                    .unwrap()
                    .get(0);
                (waiting == 2).then_some(())
            }
        },
    )
    .await;
    holder.batch_execute("COMMIT").await.unwrap();
    let outs = [
        one.wait_with_output().unwrap(),
        two.wait_with_output().unwrap(),
    ];

    let winners: Vec<usize> = (0..2).filter(|&i| outs[i].status.success()).collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one wins:\n{}\n{}",
        stderr(&outs[0]),
        stderr(&outs[1])
    );
    let (winner, loser) = (winners[0], 1 - winners[0]);
    assert_eq!(outs[loser].status.code(), Some(1));
    let err = stderr(&outs[loser]);
    assert_contains(&err, "stale ETag: acme `gateway.rate_limit` is at ETag");
    assert_contains(&err, &format!("not at ETag {tag}"));
    let (requests, actor) = [(111, "one"), (222, "two")][winner];
    assert_eq!(
        stored(&db, "tenant", "acme", "", "gateway.rate_limit").await,
        Some((
            format!(r#"{{"requests": {requests}, "per_seconds": 60}}"#),
            actor.to_owned()
        ))
    );
    db.drop_schema().await;
}

#[tokio::test]
async fn export_then_apply_is_a_no_op_in_both_formats() {
    let db = TestDb::new().await;
    invalid_settings::write_base(&db).await;
    db.set_tenant("acme", "gateway.mode", json!("shadow"), "bob")
        .await;
    db.set_route(
        "acme",
        "orders",
        "gateway.route.prefix",
        json!("/orders"),
        "bob",
    )
    .await;
    db.set_route("acme", "orders", "gateway.rate_limit", limit(5), "bob")
        .await;
    // Keys outside `gateway.` are not the sidecar's, but the table's: exported
    // and applied like the others (numbers and look-alike strings intact).
    db.set_global(
        "ops.note",
        json!({"ratio": 1.0, "big": 12_345_678_901_234_567_890_u64, "answer": "yes", "none": null}),
        "bob",
    )
    .await;
    db.set_global(
        "gateway.idempotency",
        json!({"methods": ["POST"], "ttl_seconds": 600}),
        "bob",
    )
    .await;
    let syncer = db.syncer();
    assert!(matches!(
        syncer.sync(&db.client, "test").await.unwrap(),
        SyncOutcome::Delivered { .. }
    ));
    let before = snapshot(&db).await;

    for name in ["settings.yaml", "settings.json"] {
        let path = db.ecds_dir().join(name);
        assert_ok(&settings(&db, &["export", "-o", path.to_str().unwrap()]));
        let text = std::fs::read_to_string(&path).unwrap();
        // Stable: a second export is byte-identical (same for stdout).
        let again = assert_ok(&settings(
            &db,
            &[
                "export",
                "--format",
                if name.ends_with("json") {
                    "json"
                } else {
                    "yaml"
                },
            ],
        ));
        assert_eq!(again, text);
        for extra in [&[][..], &["--prune"]] {
            let args = [
                &["apply", "-f", path.to_str().unwrap(), "--actor", "eve"][..],
                extra,
            ]
            .concat();
            let out = assert_ok(&settings(&db, &args));
            assert_contains(&out, "no changes: the table already matches");
            assert_eq!(out.lines().count(), 1, "{out}");
            assert_eq!(
                snapshot(&db).await,
                before,
                "{name} {extra:?}: a row was written"
            );
        }
    }
    assert!(
        matches!(
            syncer.sync(&db.client, "test").await.unwrap(),
            SyncOutcome::Unchanged { .. }
        ),
        "nothing new to deliver"
    );
    assert_eq!(db.revision_count().await, 1);
    db.drop_schema().await;
}

#[tokio::test]
async fn apply_changes_per_tenant_prunes_only_when_asked_and_dry_run_writes_nothing() {
    let db = TestDb::new().await;
    db.set_tenant_limit("acme", 100, "alice").await;
    db.set_tenant("acme", "gateway.mode", json!("shadow"), "alice")
        .await;
    db.set_tenant_limit("gone", 7, "alice").await;
    let path = db.ecds_dir().join("settings.yaml");
    std::fs::write(
        &path,
        "version: 1\n\
         global:\n  gateway.tenant.trust_header_without_jwt: true\n  gateway.tenant.unknown: reject\n\
         tenants:\n  acme:\n    settings:\n      gateway.rate_limit: {requests: 200, per_seconds: 60}\n\
         \x20   routes:\n      orders:\n        gateway.route.prefix: /orders\n",
    )
    .unwrap();
    let file = path.to_str().unwrap();

    // Without --prune: acme's mode and tenant `gone` are kept.
    let before = snapshot(&db).await;
    let out = assert_ok(&settings(&db, &["apply", "-f", file, "--dry-run"]));
    for expected in [
        "@global\n  + gateway.tenant.unknown = \"reject\"\n",
        "acme\n  ~ gateway.rate_limit: {\"requests\": 100, \"per_seconds\": 60} -> {\"requests\": 200, \"per_seconds\": 60}\n  + orders/gateway.route.prefix = \"/orders\"\n",
        "dry run, nothing written: 2 to add, 1 to change, 0 to remove; 2 row(s) not in the file kept (--prune removes them)",
        "+++ plugin document after the change",
    ] {
        assert_contains(&out, expected);
    }
    assert!(!out.contains("  - "), "{out}");
    assert_eq!(snapshot(&db).await, before, "--dry-run wrote");

    // --prune --dry-run names the removals, still writes nothing.
    let out = assert_ok(&settings(
        &db,
        &["apply", "-f", file, "--prune", "--dry-run"],
    ));
    assert_contains(&out, "  - gateway.mode (was \"shadow\")");
    assert_contains(
        &out,
        "gone\n  - gateway.rate_limit (was {\"requests\": 7, \"per_seconds\": 60})",
    );
    assert_contains(&out, "2 to add, 1 to change, 2 to remove");
    assert_eq!(snapshot(&db).await, before, "--prune --dry-run wrote");

    // Applied without --prune, then with it.
    let out = assert_ok(&settings(&db, &["apply", "-f", file, "--actor", "ci"]));
    assert_contains(
        &out,
        "2 added, 1 changed, 0 removed; 2 row(s) not in the file kept",
    );
    assert_eq!(
        stored(&db, "tenant", "acme", "", "gateway.mode")
            .await
            .unwrap()
            .0,
        "\"shadow\""
    );
    assert_eq!(
        stored(&db, "global", "", "", "gateway.tenant.unknown")
            .await
            .unwrap()
            .1,
        "ci"
    );
    let out = assert_ok(&settings(
        &db,
        &["apply", "-f", file, "--prune", "--actor", "ci"],
    ));
    assert_contains(&out, "0 added, 0 changed, 2 removed");
    assert_eq!(
        stored(&db, "tenant", "acme", "", "gateway.mode").await,
        None
    );
    assert_eq!(
        stored(&db, "tenant", "gone", "", "gateway.rate_limit").await,
        None
    );
    // The table now is the file.
    let export = assert_ok(&settings(&db, &["export"]));
    let reread: Value = serde_norway::from_str(&export).unwrap();
    let written: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(reread, written);
    let out = assert_ok(&settings(&db, &["apply", "-f", file, "--prune"]));
    assert_contains(&out, "no changes");

    // A file that is not a settings file is a usage error naming it.
    std::fs::write(&path, "version: 1\nglobal:\n  a: 1\n  a: 2\n").unwrap();
    let out = settings(&db, &["apply", "-f", file]);
    assert_eq!(out.status.code(), Some(2));
    assert_contains(&stderr(&out), "duplicate key `a`");
    assert_contains(&stderr(&out), file);
    db.drop_schema().await;
}

#[tokio::test]
async fn commands_on_a_database_without_the_schema_create_nothing() {
    let db = TestDb::bare().await;
    let fresh = format!("{}_none", db.schema());
    let file = db.ecds_dir().join("settings.yaml");
    std::fs::write(&file, "version: 1\n").unwrap();
    let file = file.to_str().unwrap();
    for args in [
        &["list"][..],
        &["get", "acme", "gateway.mode"],
        &["export"],
        &["export", "-o", "/dev/null"],
        &["set", "acme", "gateway.mode", "\"shadow\"", "--dry-run"],
        &["set", "acme", "gateway.mode", "\"shadow\""],
        &["unset", "acme", "gateway.mode"],
        &["apply", "-f", file, "--dry-run"],
        &["apply", "-f", file],
    ] {
        let out = command(&fresh, args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert_contains(&stderr(&out), &format!("schema `{fresh}`"));
        assert_contains(&stderr(&out), "does not exist");
        let exists: i64 = db
            .client
            .query_one(
                "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
                &[&fresh],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(exists, 0, "{args:?} created the schema");
    }
    db.drop_schema().await;
}

#[tokio::test]
async fn plans_are_a_scope_and_moving_a_tenant_is_one_set() {
    let db = TestDb::new().await;
    invalid_settings::write_base(&db).await;
    let gold = r#"[{"name":"burst","requests":50,"per_seconds":1,"burst":100},{"name":"month","requests":1000000,"per":"month"}]"#;
    let silver = r#"[{"name":"month","requests":1000,"per":"month"},{"name":"user","requests":5,"per":"second","key":"user"}]"#;
    for (plan, limits) in [("@plan:gold", gold), ("@plan:silver", silver)] {
        let set = ["set", plan, "gateway.rate_limits", limits, "--actor", "pat"];
        assert_contains(
            &assert_ok(&settings(&db, &set)),
            &format!("added {plan} `gateway.rate_limits`"),
        );
    }
    assert_eq!(
        stored(&db, "plan", "gold", "", "gateway.rate_limits")
            .await
            .unwrap()
            .1,
        "pat"
    );
    let set = ["set", "acme", "gateway.plan", "\"gold\"", "--actor", "pat"];
    assert_ok(&settings(&db, &set));
    let list = assert_ok(&settings(&db, &["list"]));
    assert_contains(&list, "@plan:gold");
    assert_contains(&list, "@plan:silver");
    let got = assert_ok(&settings(
        &db,
        &["get", "@plan:silver", "gateway.rate_limits"],
    ));
    assert_contains(&got, "\"per\": \"month\"");

    let syncer = db.syncer();
    assert!(matches!(
        syncer.sync(&db.client, "test").await.unwrap(),
        SyncOutcome::Delivered { .. }
    ));
    let document = db.document();
    assert_eq!(document["tenants"]["acme"]["plan"], "gold");
    assert_eq!(document["plans"]["gold"]["rate_limits"][1]["per"], "month");
    assert_eq!(document["plans"]["silver"]["rate_limits"][1]["key"], "user");

    // Moving the tenant: the dry run shows the one line that changes, then one set.
    let before = snapshot(&db).await;
    let move_to = ["set", "acme", "gateway.plan", "\"silver\"", "--dry-run"];
    let text = assert_ok(&settings(&db, &move_to));
    for expected in [
        "  ~ gateway.plan: \"gold\" -> \"silver\"",
        "-      \"plan\": \"gold\"",
        "+      \"plan\": \"silver\"",
    ] {
        assert_contains(&text, expected);
    }
    assert_eq!(snapshot(&db).await, before);
    assert_ok(&settings(&db, &move_to[..4]));
    let outcome = syncer.sync(&db.client, "test").await.unwrap();
    assert!(
        matches!(outcome, SyncOutcome::Delivered { .. }),
        "{outcome:?}"
    );
    assert_eq!(db.document()["tenants"]["acme"]["plan"], "silver");
    let changed: Vec<String> = db
        .client
        .query_one(
            "SELECT changed_keys FROM tg_revisions ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(changed, ["acme/gateway.plan"]);

    // A plan a tenant uses cannot be removed; an unused one can.
    let before = snapshot(&db).await;
    let out = settings(&db, &["unset", "@plan:silver", "gateway.rate_limits"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_contains(&stderr(&out), "`tenants.acme.plan`");
    assert_eq!(snapshot(&db).await, before);
    assert_ok(&settings(
        &db,
        &["unset", "@plan:gold", "gateway.rate_limits"],
    ));

    // Export carries the plans section; applying it back changes nothing.
    let path = db.ecds_dir().join("plans.yaml");
    assert_ok(&settings(&db, &["export", "-o", path.to_str().unwrap()]));
    let text = std::fs::read_to_string(&path).unwrap();
    assert_contains(&text, "plans:\n  silver:\n    gateway.rate_limits:");
    let out = assert_ok(&settings(
        &db,
        &["apply", "-f", path.to_str().unwrap(), "--prune"],
    ));
    assert_contains(&out, "no changes");

    // A plan target names the plan.
    for (target, expected) in [
        ("@plan:", "a plan target is @plan:NAME"),
        ("@plan:a/b", "a plan target is @plan:NAME"),
        ("@plan:a b", "plan"),
    ] {
        let out = settings(&db, &["set", target, "gateway.mode", "\"shadow\""]);
        assert_ne!(out.status.code(), Some(0), "{target}");
        assert_contains(&stderr(&out), expected);
    }
    db.drop_schema().await;
}
