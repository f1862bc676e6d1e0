//! Sync, validation, audit and daemon behaviour against the real PostgreSQL
//! (`DATABASE_URL`), one fresh schema per test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{limit, poll, Daemon, TestDb};
use serde_json::{json, Value};
use tenant_guard_core::config::CompiledConfig;
use tenant_guard_sidecar::db::{self, Revision};
use tenant_guard_sidecar::sync::{SyncError, SyncOutcome, Syncer, TARGET_ENVOY};

/// The filter's own parser over a delivered document.
fn compile(document: &Value) -> CompiledConfig {
    tenant_guard_core::config::parse(document.to_string().as_bytes()).unwrap()
}

/// The revision Envoy has now (the last delivered one), if any.
async fn deployed_revision(db: &TestDb) -> Option<Revision> {
    db::latest_revision(&db.client, TARGET_ENVOY, true)
        .await
        .unwrap()
}

fn assert_mentions(message: &str, expected: &[&str]) {
    for part in expected {
        assert!(message.contains(part), "{part:?} missing in\n{message}");
    }
}

/// Syncs, expecting a failure whose message names every one of `expected`.
async fn assert_sync_fails(syncer: &Syncer, db: &TestDb, expected: &[&str]) {
    let error = syncer.sync(&db.client, "test").await.unwrap_err();
    assert_mentions(&error.to_string(), expected);
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[tokio::test]
async fn resolution_precedence_global_tenant_route() {
    let db = TestDb::new().await;
    for (key, value) in [
        ("gateway.rate_limit", limit(100)),
        ("gateway.mode", json!("shadow")),
        ("gateway.tenant.unknown", json!("reject")),
    ] {
        db.set_global(key, value, "alice").await;
    }
    for (key, value) in [
        (
            "gateway.rate_limit",
            json!({"requests": 1000, "per_seconds": 60, "burst": 50}),
        ),
        ("gateway.mode", json!("enforce")),
    ] {
        db.set_tenant("acme", key, value, "bob").await;
    }
    for (route, key, value) in [
        ("orders", "gateway.route.prefix", json!("/orders")),
        ("orders", "gateway.route.method", json!("POST")),
        ("orders", "gateway.rate_limit", limit(5)),
        ("search", "gateway.route.prefix", json!("/search")),
    ] {
        db.set_route("acme", route, key, value, "carol").await;
    }
    db.set_route("beta", "x", "gateway.route.prefix", json!("/x"), "dave")
        .await;
    db.set_tenant_limit("gone", 7, "erin").await;
    db.set_tenant("gone", "gateway.enabled", json!(false), "erin")
        .await;

    let outcome = db.syncer().sync(&db.client, "test").await.unwrap();
    assert!(
        matches!(outcome, SyncOutcome::Delivered { revision_id: 1, .. }),
        "{outcome:?}"
    );

    let document = db.document();
    assert!(document["revision"].as_str().unwrap().starts_with("r1-"));
    // The filter's own parser accepts it and resolves the precedence.
    let compiled = compile(&document);
    let acme = compiled.tenants.get("acme").expect("acme");
    assert_eq!(
        acme.mode,
        tenant_guard_core::config::Mode::Enforce,
        "tenant mode overrides global"
    );
    let orders = acme.policy_for("POST", "/orders/42").unwrap();
    assert_eq!(
        (orders.name.as_str(), orders.requests()),
        ("orders", 5),
        "route wins"
    );
    let get_orders = acme.policy_for("GET", "/orders/42").unwrap();
    assert_eq!(
        get_orders.requests(),
        1000,
        "method-specific route does not match GET"
    );
    let search = acme.policy_for("GET", "/search").unwrap();
    assert_eq!(
        (
            search.name.as_str(),
            search.requests(),
            search.rate().unwrap().burst
        ),
        ("search", 1000, 50),
        "route inherits the tenant limit"
    );
    let beta = compiled.tenants.get("beta").expect("beta");
    assert_eq!(
        beta.mode,
        tenant_guard_core::config::Mode::Shadow,
        "global mode applies"
    );
    assert_eq!(
        beta.policy_for("GET", "/x/1").unwrap().requests(),
        100,
        "route inherits the global limit"
    );
    assert!(
        !compiled.tenants.contains_key("gone"),
        "gateway.enabled=false drops the tenant"
    );
    assert!(
        compiled.tenant_settings("stranger").is_none(),
        "unknown tenants rejected"
    );
    assert!(compiled.tenant.trust_header_without_jwt);

    let record = deployed_revision(&db).await.expect("a deployed revision");
    assert_eq!(
        record.actors,
        vec!["alice", "bob", "carol", "dave", "erin", common::SETUP_ACTOR]
    );
    assert!(record
        .changed_keys
        .contains(&"acme/orders/gateway.rate_limit".to_owned()));
    db.drop_schema().await;
}

#[tokio::test]
async fn the_tenant_header_is_trusted_only_when_a_setting_says_so() {
    let db = TestDb::bare().await;
    let syncer = db.syncer();
    db.set_tenant_limit("acme", 10, "alice").await;
    assert_sync_fails(
        &syncer,
        &db,
        &[
            "no tenant identity source",
            "gateway.tenant.trust_header_without_jwt",
            "gateway.tenant.jwt",
        ],
    )
    .await;
    assert!(!db.ecds_file().exists(), "nothing delivered");
    // `false` explicitly is the same.
    db.set_global(
        "gateway.tenant.trust_header_without_jwt",
        json!(false),
        "alice",
    )
    .await;
    assert_sync_fails(&syncer, &db, &["no tenant identity source"]).await;
    // Header mode is a setting.
    db.set_global(
        "gateway.tenant.trust_header_without_jwt",
        json!(true),
        "alice",
    )
    .await;
    syncer.sync(&db.client, "test").await.unwrap();
    assert_eq!(
        db.document()["tenant"]["trust_header_without_jwt"],
        json!(true)
    );
    db.drop_schema().await;
}

#[tokio::test]
async fn idempotency_settings_global_and_per_tenant() {
    let db = TestDb::new().await;
    let syncer = db.syncer();
    db.set_global(
        "gateway.idempotency",
        json!({"methods": ["POST"], "required": false, "ttl_seconds": 600,
               "max_body_bytes": 4096, "in_flight_timeout_seconds": 30}),
        "alice",
    )
    .await;
    db.set_tenant(
        "acme",
        "gateway.idempotency",
        json!({"methods": ["POST", "PATCH"], "required": true}),
        "bob",
    )
    .await;
    db.set_tenant_limit("beta", 10, "bob").await;
    syncer.sync(&db.client, "test").await.unwrap();

    let document = db.document();
    assert_eq!(document["defaults"]["idempotency"]["ttl_seconds"], 600);
    assert_eq!(
        document["tenants"]["acme"]["idempotency"]["methods"],
        json!(["POST", "PATCH"])
    );
    let compiled = compile(&document);
    let acme = compiled.tenants["acme"].idempotency.as_ref().expect("acme");
    assert!(acme.required, "the tenant object replaces the global one");
    assert_eq!(acme.methods, ["POST", "PATCH"]);
    assert_eq!(
        acme.ttl_seconds, 86_400,
        "omitted fields take the filter's defaults"
    );
    let beta = compiled.tenants["beta"].idempotency.as_ref().expect("beta");
    assert_eq!(
        (beta.methods.as_slice(), beta.required, beta.max_body_bytes),
        (["POST".to_owned()].as_slice(), false, 4096),
        "tenants without their own object inherit the global one"
    );
    let defaults = compiled.defaults.idempotency.as_ref().expect("defaults");
    assert_eq!(defaults.in_flight_timeout_seconds, 30);

    // An invalid object is rejected with the row named; nothing is delivered.
    db.set_tenant(
        "acme",
        "gateway.idempotency",
        json!({"methods": ["POST"], "ttl_seconds": 0}),
        "mallory",
    )
    .await;
    assert_sync_fails(
        &syncer,
        &db,
        &[
            "tenant `acme` setting `gateway.idempotency` (updated by mallory)",
            "tenants.acme.idempotency.ttl_seconds",
        ],
    )
    .await;
    let still = db.document();
    assert_eq!(still["tenants"]["acme"]["idempotency"]["required"], true);

    // Not a route-scope key.
    db.set_tenant(
        "acme",
        "gateway.idempotency",
        json!({"methods": ["POST"]}),
        "bob",
    )
    .await;
    db.set_route(
        "acme",
        "orders",
        "gateway.idempotency",
        json!({"methods": ["POST"]}),
        "bob",
    )
    .await;
    assert_sync_fails(
        &syncer,
        &db,
        &[
            "route `orders` setting `gateway.idempotency`",
            "not allowed at route scope",
        ],
    )
    .await;
    db.drop_schema().await;
}

#[tokio::test]
async fn invalid_settings_are_recorded_and_never_delivered() {
    let db = TestDb::new().await;
    let syncer = db.syncer();

    // Invalid from the start: nothing is written at all.
    db.set_tenant_limit("acme", 0, "mallory").await;
    let error = syncer.sync(&db.client, "test").await.unwrap_err();
    let SyncError::Invalid {
        revision: Some(failed),
        error,
    } = error
    else {
        panic!("expected a recorded invalid revision, got {error:?}");
    };
    assert_mentions(
        &error.to_string(),
        &[
            "tenant `acme` setting `gateway.rate_limit`",
            "updated by mallory",
            "tenants.acme.rate_limit.requests",
        ],
    );
    assert!(
        !db.ecds_file().exists(),
        "an invalid document must not be delivered"
    );
    let record = db::revision(&db.client, failed).await.unwrap().unwrap();
    assert_eq!(record.status, "failed");
    assert!(record.error.unwrap().contains("gateway.rate_limit"));
    // The same failure again is not recorded twice.
    assert!(matches!(
        syncer.sync(&db.client, "test").await,
        Err(SyncError::Invalid { revision: None, .. })
    ));
    assert_eq!(db.revision_count().await, 1);

    // Fix it: delivered.
    db.set_tenant_limit("acme", 10, "alice").await;
    let good = syncer.sync(&db.client, "test").await.unwrap();
    let before = std::fs::read(db.ecds_file()).unwrap();

    // Schema-valid but rejected by the filter's parser (same header twice).
    db.set_global("gateway.tenant.header", json!("x-id"), "alice")
        .await;
    db.set_global("gateway.correlation.header", json!("x-id"), "bob")
        .await;
    assert_sync_fails(
        &syncer,
        &db,
        &[
            "global setting `gateway.correlation.header` (updated by bob)",
            "[filter]",
        ],
    )
    .await;
    assert_eq!(
        std::fs::read(db.ecds_file()).unwrap(),
        before,
        "last good file untouched"
    );

    // Unknown keys and wrong scopes name the row too.
    db.set_global(
        "gateway.correlation.header",
        json!("x-correlation-id"),
        "bob",
    )
    .await;
    db.set_tenant("acme", "gateway.rate_limt", limit(1), "typo")
        .await;
    assert_sync_fails(
        &syncer,
        &db,
        &[
            "tenant `acme` setting `gateway.rate_limt`",
            "unknown setting key",
        ],
    )
    .await;
    assert_eq!(std::fs::read(db.ecds_file()).unwrap(), before);

    let deployed = deployed_revision(&db).await.expect("a deployed revision");
    assert_eq!(
        deployed.id,
        good.revision_id(),
        "the last good revision stays deployed"
    );
    db.drop_schema().await;
}

#[tokio::test]
async fn unchanged_settings_deliver_nothing() {
    let db = TestDb::new().await;
    let syncer = db.syncer();
    db.set_global("gateway.rate_limit", limit(100), "alice")
        .await;
    let first = syncer.sync(&db.client, "test").await.unwrap();
    let written = modified(&db.ecds_file());

    // Rewriting a row with the same value changes nothing.
    db.set_global("gateway.rate_limit", limit(100), "bob").await;
    let second = syncer.sync(&db.client, "test").await.unwrap();
    assert!(
        matches!(
            second,
            SyncOutcome::Unchanged {
                rewrote_file: false,
                ..
            }
        ),
        "{second:?}"
    );
    assert_eq!(second.revision_id(), first.revision_id());
    assert_eq!(db.revision_count().await, 1);
    assert_eq!(modified(&db.ecds_file()), written);

    // A lost file is written again, without a new revision.
    std::fs::remove_file(db.ecds_file()).unwrap();
    let third = syncer.sync(&db.client, "test").await.unwrap();
    assert!(
        matches!(
            third,
            SyncOutcome::Unchanged {
                rewrote_file: true,
                ..
            }
        ),
        "{third:?}"
    );
    assert_eq!(db.document()["defaults"]["rate_limit"]["requests"], 100);
    assert_eq!(db.revision_count().await, 1);
    db.drop_schema().await;
}

#[tokio::test]
async fn rollback_redelivers_a_recorded_revision() {
    let db = TestDb::new().await;
    let syncer = db.syncer();
    db.set_tenant_limit("acme", 100, "alice").await;
    let one = syncer.sync(&db.client, "test").await.unwrap().revision_id();
    db.set_tenant_limit("acme", 200, "bob").await;
    syncer.sync(&db.client, "test").await.unwrap();
    assert_eq!(db.delivered_limit("acme"), 200);

    let rolled = syncer.rollback(&db.client, one, "oncall").await.unwrap();
    let document = db.document();
    assert_eq!(document["tenants"]["acme"]["rate_limit"]["requests"], 100);
    assert!(document["revision"]
        .as_str()
        .unwrap()
        .starts_with(&format!("r{}-", rolled.revision_id())));
    let record = db::revision(&db.client, rolled.revision_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.rollback_of, Some(one));
    assert_eq!(record.actors, vec!["oncall"]);

    // The rollback holds until the settings change again.
    assert!(matches!(
        syncer.sync(&db.client, "test").await.unwrap(),
        SyncOutcome::Unchanged { .. }
    ));
    db.set_tenant_limit("acme", 300, "carol").await;
    assert!(matches!(
        syncer.sync(&db.client, "test").await.unwrap(),
        SyncOutcome::Delivered { .. }
    ));
    assert_eq!(db.delivered_limit("acme"), 300);

    // Failed or unknown revisions cannot be restored.
    db.set_tenant_limit("acme", 0, "mallory").await;
    let Err(SyncError::Invalid {
        revision: Some(failed),
        ..
    }) = syncer.sync(&db.client, "test").await
    else {
        panic!("expected a failed revision");
    };
    assert!(matches!(
        syncer.rollback(&db.client, failed, "oncall").await,
        Err(SyncError::NotRollbackable { .. })
    ));
    assert!(matches!(
        syncer.rollback(&db.client, 999, "oncall").await,
        Err(SyncError::NoSuchRevision(999))
    ));
    db.drop_schema().await;
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let mut db = TestDb::new().await;
    let schema = db.schema().to_owned();
    db::migrate(&mut db.client, &schema).await.unwrap();
    db::migrate(&mut db.client, &schema).await.unwrap();
    let versions: i64 = db
        .client
        .query_one("SELECT count(*) FROM tg_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, i64::from(db::latest_migration()));
    db.drop_schema().await;
}

#[tokio::test]
async fn notify_delivers_and_admin_endpoints_report() {
    let db = TestDb::new().await;
    db.set_tenant_limit("acme", 100, "alice").await;
    let daemon = Daemon::start(&db, None).await;
    daemon.wait_ready().await;
    assert_eq!(daemon.get("/live").await.0, 200);

    // A change reaches the file through NOTIFY (the periodic resync is an hour away).
    db.set_tenant_limit("acme", 250, "bob").await;
    db.wait_for_tenant_limit("acme", 250, Duration::from_secs(10))
        .await;
    // The file is renamed into place just before the revision is recorded.
    let latest = poll(Duration::from_secs(10), "the revision record", || async {
        deployed_revision(&db).await.filter(|r| r.id >= 2)
    })
    .await;
    assert_eq!(latest.trigger, "notify");
    assert_eq!(latest.actors, vec!["bob"]);

    // POST /sync answers with the result.
    let (status, body) = daemon.post("/sync").await;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["result"], "unchanged");
    assert_eq!(reply["revision_id"], latest.id);

    let (status, metrics) = daemon.get("/metrics").await;
    assert_eq!(status, 200);
    assert_mentions(
        &metrics,
        &[
            "settings_sync_duration_seconds_count",
            "settings_sync_success_total",
            "settings_sync_errors_total 0",
            "gateway_deployment_status{gateway=\"envoy\"} 1",
            "settings_database_connected 1",
        ],
    );
    assert_eq!(
        daemon.metric("settings_current_revision").await,
        Some(latest.id as f64)
    );
    assert!(daemon.metric("settings_sync_success_total").await.unwrap() >= 3.0);
    daemon.stop().await;
    db.drop_schema().await;
}

#[tokio::test]
async fn ready_only_after_a_successful_delivery() {
    let db = TestDb::new().await;
    db.set_tenant_limit("acme", 0, "mallory").await;
    let daemon = Daemon::start(&db, None).await;
    poll(Duration::from_secs(10), "a failed sync", || async {
        (daemon.metric("settings_sync_errors_total").await? >= 1.0).then_some(())
    })
    .await;
    assert_eq!(daemon.get("/live").await.0, 200);
    assert_eq!(daemon.get("/ready").await.0, 503);
    assert!(daemon
        .get("/metrics")
        .await
        .1
        .contains("gateway_deployment_status{gateway=\"envoy\"} 0"));
    let (status, body) = daemon.post("/sync").await;
    assert_eq!(status, 422, "{body}");
    assert_mentions(&body, &["tenant `acme` setting `gateway.rate_limit`"]);
    assert!(!db.ecds_file().exists());

    db.set_tenant_limit("acme", 5, "alice").await;
    daemon.wait_ready().await;
    assert!(db.ecds_file().exists());
    daemon.stop().await;
    db.drop_schema().await;
}

#[tokio::test]
async fn reconnects_and_resyncs_after_losing_the_database() {
    let db = TestDb::new().await;
    db.set_tenant_limit("acme", 100, "alice").await;
    let daemon = Daemon::start(&db, None).await;
    daemon.wait_ready().await;
    let app = format!("tenant-guard-sidecar/{}", db.schema());
    let sessions = backends(&db.client, &app).await;
    assert_eq!(sessions.len(), 1, "one sidecar session: {sessions:?}");
    let old_pid = sessions[0];
    let terminated: bool = db
        .client
        .query_one("SELECT pg_terminate_backend($1)", &[&old_pid])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    db.set_tenant_limit("acme", 333, "bob").await;

    // The change arrives after reconnecting.
    db.wait_for_tenant_limit("acme", 333, Duration::from_secs(15))
        .await;
    let sessions = backends(&db.client, &app).await;
    assert!(
        sessions.iter().any(|pid| *pid != old_pid),
        "a new sidecar session: {sessions:?}"
    );
    daemon.stop().await;
    db.drop_schema().await;
}

#[tokio::test]
async fn unreachable_database_is_retried_and_reported() {
    let db = TestDb::new().await;
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let daemon = Daemon::start(&db, Some(&url)).await;
    assert_eq!(daemon.get("/live").await.0, 200);
    assert_eq!(daemon.get("/ready").await.0, 503);
    let (status, body) = daemon.post("/sync").await;
    assert_eq!(status, 503, "{body}");
    assert_mentions(&body, &["database unavailable"]);
    assert_eq!(
        daemon.metric("settings_database_connected").await,
        Some(0.0)
    );
    daemon.stop().await;
    db.drop_schema().await;
}

async fn backends(client: &tokio_postgres::Client, app: &str) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<_, i32>(0))
        .collect()
}

#[tokio::test]
async fn jwt_if_match_headers_and_kong_switches_are_global_settings() {
    let db = TestDb::new().await;
    let syncer = db.syncer();
    let jwt = json!({
        "issuers": [{"iss": "https://idp.example", "audiences": ["api"],
                     "jwks": {"keys": [{"kty": "oct", "kid": "hs", "alg": "HS256",
                                        "k": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}}],
        "user_claim": "sub"
    });
    for (key, value) in [
        ("gateway.tenant.jwt", jwt),
        (
            "gateway.if_match",
            json!([{"prefix": "/orders", "methods": ["PUT", "DELETE"]}]),
        ),
        ("gateway.metrics", json!(false)),
        ("gateway.store.namespace", json!("tenant_guard")),
        ("gateway.store.idempotency_tenant_share_percent", json!(50)),
        ("gateway.headers.revision", json!(false)),
        ("gateway.headers.rate_limit", json!("on_reject")),
    ] {
        db.set_global(key, value, "alice").await;
    }
    db.set_tenant_limit("acme", 10, "bob").await;
    syncer.sync(&db.client, "test").await.unwrap();

    let document = db.document();
    let compiled = compile(&document);
    assert!(compiled.jwt.is_some(), "{document}");
    assert!(!compiled.headers.revision);
    assert_eq!(
        compiled.headers.rate_limit,
        tenant_guard_core::config::RateLimitHeaders::OnReject
    );
    assert!(compiled.requires_if_match("PUT", "/orders/1"));
    assert!(!compiled.requires_if_match("PATCH", "/orders/1"));
    assert!(!compiled.metrics);
    assert_eq!(compiled.store.namespace.as_deref(), Some("tenant_guard"));
    assert_eq!(compiled.store.idempotency_tenant_share_percent, 50);

    // A JWKS the filter would refuse (private key material) never reaches the gateway.
    db.set_global(
        "gateway.tenant.jwt",
        json!({"issuers": [{"iss": "x", "audiences": ["a"],
               "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "d": "private"}]}}]}),
        "mallory",
    )
    .await;
    assert_sync_fails(
        &syncer,
        &db,
        &["setting `gateway.tenant.jwt` (updated by mallory)"],
    )
    .await;
    let still = db.document();
    assert_eq!(still["tenant"]["jwt"]["user_claim"], "sub");
    db.drop_schema().await;
}

#[tokio::test]
async fn a_fleet_switches_to_the_cluster_store_from_postgres() {
    use tenant_guard_core::config::{RateLimitFallback, StoreBackend};
    let db = TestDb::new().await;
    let syncer = db.syncer();
    db.set_tenant_limit("acme", 10, "bob").await;
    db.set_global("gateway.store.backend", json!("cluster"), "carol")
        .await;
    db.set_global(
        "gateway.store.cluster",
        json!({"upstream": "tenant_guard_store", "timeout_ms": 150,
               "rate_limit_fallback": "unlimited", "fallback_share_percent": 34}),
        "carol",
    )
    .await;
    syncer.sync(&db.client, "test").await.unwrap();
    let compiled = compile(&db.document());
    assert_eq!(compiled.store.backend, StoreBackend::Cluster);
    let cluster = compiled.store.cluster.clone().unwrap();
    assert_eq!(cluster.timeout_ms, 150);
    assert_eq!(cluster.rate_limit_fallback, RateLimitFallback::Unlimited);
    assert_eq!(cluster.fallback_share_percent, 34);
    assert_eq!(
        cluster.lease_max, 256,
        "omitted fields take the filter's defaults"
    );
    let before = std::fs::read(db.ecds_file()).unwrap();
    let good = deployed_revision(&db).await.unwrap().id;

    // A share of 0 never reaches the gateway.
    db.set_global(
        "gateway.store.cluster",
        json!({"fallback_share_percent": 0}),
        "mallory",
    )
    .await;
    assert_sync_fails(
        &syncer,
        &db,
        &[
            "global setting `gateway.store.cluster` (updated by mallory)",
            "store.cluster.fallback_share_percent",
        ],
    )
    .await;
    assert_eq!(std::fs::read(db.ecds_file()).unwrap(), before);

    // Nor does a cluster object while the backend is `local`.
    db.set_global("gateway.store.cluster", json!({}), "dave")
        .await;
    db.set_global("gateway.store.backend", json!("local"), "dave")
        .await;
    assert_sync_fails(
        &syncer,
        &db,
        &[
            "global setting `gateway.store.cluster` (updated by dave)",
            "only allowed with global `gateway.store.backend` = \"cluster\"",
        ],
    )
    .await;
    assert_eq!(std::fs::read(db.ecds_file()).unwrap(), before);
    assert_eq!(deployed_revision(&db).await.unwrap().id, good);
    db.drop_schema().await;
}
