//! Unit tests of rendering and validation.

use serde_json::json;

use super::*;

fn row(scope: Scope, tenant: &str, route: &str, key: &str, value: Value) -> SettingRow {
    SettingRow::new(scope, tenant, route, key, value, "alice")
}

/// Header mode, explicitly (the default trusts no header).
fn header_mode() -> SettingRow {
    SettingRow::global(TRUST_KEY, json!(true), "alice")
}

fn messages(error: &SettingsError) -> Vec<String> {
    error.lines()
}

#[test]
fn the_header_is_not_trusted_by_default() -> Result<(), SettingsError> {
    let rows = vec![row(
        Scope::Tenant,
        "acme",
        "",
        "gateway.rate_limit",
        json!({"requests": 1, "per_seconds": 60}),
    )];
    let (rendered, issues) = render_parts(&rows, DEFAULT_MAX_VALUE_BYTES);
    assert_eq!(
        rendered.document["tenant"]["trust_header_without_jwt"],
        json!(false)
    );
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(issues[0].message.contains("no tenant identity source"));
    // Explicit header mode: valid, with a warning while unknown tenants get defaults.
    let mut rows = rows;
    rows.push(header_mode());
    let rendered = render(&rows)?;
    Validator::new()?.validate(&rendered, &rendered.with_revision("r1"))?;
    let warnings = warnings(&rendered);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("gateway.tenant.unknown"),
        "{warnings:?}"
    );
    rows.push(SettingRow::global(
        "gateway.tenant.unknown",
        json!("reject"),
        "alice",
    ));
    assert!(super::warnings(&render(&rows)?).is_empty());
    Ok(())
}

#[test]
fn every_finding_is_reported_in_one_pass() -> Result<(), SettingsError> {
    let rows = vec![
        header_mode(),
        row(Scope::Tenant, "acme", "", "gateway.rate_limt", json!(1)),
        row(Scope::Tenant, "acme", "", "gateway.mode", json!("loud")),
        row(
            Scope::Tenant,
            "beta",
            "",
            "gateway.rate_limit",
            json!({"requests": 0, "per_seconds": 60}),
        ),
        row(Scope::Tenant, "gamma", "", "gateway.enabled", json!("yes")),
    ];
    let (rendered, issues) = render_parts(&rows, DEFAULT_MAX_VALUE_BYTES);
    let error = Validator::new()?
        .validate_with(&rendered, &rendered.with_revision("r1"), issues)
        .expect_err("invalid");
    let lines = messages(&error);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    for expected in [
        "tenant `acme` setting `gateway.rate_limt`",
        "tenant `acme` setting `gateway.mode`",
        "tenant `beta` setting `gateway.rate_limit`",
        "tenant `gamma` setting `gateway.enabled`",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(expected)),
            "{expected} missing in {lines:#?}"
        );
    }
    Ok(())
}

#[test]
fn oversized_values_are_named_and_left_out() {
    let big = "x".repeat(70_000);
    let mut rows = vec![
        header_mode(),
        row(Scope::Tenant, "acme", "", "gateway.mode", json!(big)),
    ];
    strip_oversized(&mut rows, DEFAULT_MAX_VALUE_BYTES);
    assert_eq!(rows[1].value, Value::Null);
    assert_eq!(rows[1].oversized_bytes, Some(70_002));
    let (rendered, issues) = render_parts(&rows, DEFAULT_MAX_VALUE_BYTES);
    assert_eq!(issues.len(), 1, "{issues:?}");
    let text = issues[0].to_string();
    assert!(
        text.contains("tenant `acme` setting `gateway.mode`")
            && text.contains("70002 bytes")
            && text.contains("65536"),
        "{text}"
    );
    assert!(text.len() < 300, "{text}");
    assert!(rendered.document.to_string().len() < 1000);
}

#[test]
fn precedence_and_validation() -> Result<(), SettingsError> {
    let rows = vec![
        SettingRow::global(
            "gateway.rate_limit",
            json!({"requests": 100, "per_seconds": 60}),
            "alice",
        ),
        row(
            Scope::Tenant,
            "acme",
            "",
            "gateway.rate_limit",
            json!({"requests": 1000, "per_seconds": 60}),
        ),
        row(
            Scope::Route,
            "acme",
            "orders",
            "gateway.route.prefix",
            json!("/orders"),
        ),
        row(
            Scope::Route,
            "beta",
            "x",
            "gateway.route.prefix",
            json!("/x"),
        ),
        header_mode(),
    ];
    let rendered = render(&rows)?;
    let doc = &rendered.document;
    assert_eq!(
        doc["tenants"]["acme"]["routes"][0]["rate_limit"]["requests"],
        1000
    );
    assert_eq!(
        doc["tenants"]["beta"]["routes"][0]["rate_limit"]["requests"],
        100
    );
    Validator::new()?.validate(&rendered, &rendered.with_revision("r1-x"))?;
    Ok(())
}

#[test]
fn schema_error_names_the_row() -> Result<(), SettingsError> {
    let rows = vec![
        row(
            Scope::Tenant,
            "acme",
            "",
            "gateway.rate_limit",
            json!({"requests": 0, "per_seconds": 60}),
        ),
        header_mode(),
    ];
    let rendered = render(&rows)?;
    let err = Validator::new()?
        .validate(&rendered, &rendered.with_revision("r1"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("tenant `acme` setting `gateway.rate_limit`"),
        "{err}"
    );
    assert!(err.contains("tenants.acme.rate_limit.requests"), "{err}");
    Ok(())
}

#[test]
fn every_global_key_lands_where_its_provenance_says() {
    for (key, slot) in resolve::GLOBAL_KEYS {
        let marker = json!({"marker": *key});
        let mut rows = vec![
            header_mode(),
            SettingRow::global(key, marker.clone(), "alice"),
        ];
        if *key == "gateway.store.cluster" {
            rows.push(SettingRow::global(
                "gateway.store.backend",
                json!("cluster"),
                "alice",
            ));
        }
        let (rendered, _) = render_parts(&rows, DEFAULT_MAX_VALUE_BYTES);
        let pointer = format!("/{}", slot.path().join("/"));
        assert_eq!(
            rendered.document.pointer(&pointer),
            Some(&marker),
            "{key} at {pointer}"
        );
        let origin = rendered.origin_of(&slot.path()).map(|o| o.key);
        assert_eq!(origin.as_deref(), Some(*key), "{key}");
    }
}

fn cluster_rows(backend: Option<Value>, cluster: Value) -> Vec<SettingRow> {
    let mut rows = vec![
        header_mode(),
        row(
            Scope::Tenant,
            "acme",
            "",
            "gateway.rate_limit",
            json!({"requests": 10, "per_seconds": 1}),
        ),
        SettingRow::global("gateway.store.cluster", cluster, "carol"),
    ];
    rows.extend(backend.map(|b| SettingRow::global("gateway.store.backend", b, "carol")));
    rows
}

#[test]
fn a_fleet_switches_to_the_cluster_store_by_two_global_settings() -> Result<(), SettingsError> {
    use tenant_guard_core::config::{IdempotencyFallback, RateLimitFallback, StoreBackend};
    let rows = cluster_rows(
        Some(json!("cluster")),
        json!({"upstream": "store.internal:9912", "timeout_ms": 150, "lease_max": 32,
               "lease_ttl_ms": 1500, "rate_limit_fallback": "unlimited",
               "fallback_share_percent": 25, "idempotency_fallback": "local",
               "probe_interval_ms": 500}),
    );
    let rendered = render(&rows)?;
    let text = rendered.with_revision("r1");
    Validator::new()?.validate(&rendered, &text)?;
    let compiled =
        tenant_guard_core::config::parse(text.as_bytes()).expect("the filter accepts it");
    assert_eq!(compiled.store.backend, StoreBackend::Cluster);
    let cluster = compiled.store.cluster.expect("store.cluster");
    assert_eq!(cluster.upstream, "store.internal:9912");
    assert_eq!(
        (cluster.timeout_ms, cluster.lease_max, cluster.lease_ttl_ms),
        (150, 32, 1500)
    );
    assert_eq!(cluster.rate_limit_fallback, RateLimitFallback::Unlimited);
    assert_eq!(cluster.fallback_share_percent, 25);
    assert_eq!(cluster.idempotency_fallback, IdempotencyFallback::Local);
    assert_eq!(cluster.probe_interval_ms, 500);

    // Omitted fields and an omitted object take the filter's defaults.
    for cluster in [json!({}), json!({"fallback_share_percent": 100})] {
        let rendered = render(&cluster_rows(Some(json!("cluster")), cluster))?;
        Validator::new()?.validate(&rendered, &rendered.with_revision("r2"))?;
    }
    let rows = vec![
        header_mode(),
        SettingRow::global("gateway.store.backend", json!("cluster"), "carol"),
    ];
    let rendered = render(&rows)?;
    let text = rendered.with_revision("r3");
    Validator::new()?.validate(&rendered, &text)?;
    let compiled =
        tenant_guard_core::config::parse(text.as_bytes()).expect("the filter accepts it");
    assert_eq!(compiled.store.backend, StoreBackend::Cluster);
    Ok(())
}

#[test]
fn invalid_cluster_store_settings_are_findings_naming_the_row() -> Result<(), SettingsError> {
    let validator = Validator::new()?;
    let refused = |rows: Vec<SettingRow>| -> Result<Vec<String>, SettingsError> {
        let (rendered, issues) = render_parts(&rows, DEFAULT_MAX_VALUE_BYTES);
        let document = rendered.with_revision("r1");
        Ok(validator
            .validate_with(&rendered, &document, issues)
            .map(|()| vec![format!("accepted: {document}")])
            .unwrap_or_else(|error| messages(&error)))
    };
    let cluster_row = "global setting `gateway.store.cluster` (updated by carol)";
    for (what, rows, expected) in [
        (
            "fallback share 0",
            cluster_rows(Some(json!("cluster")), json!({"fallback_share_percent": 0})),
            vec![
                cluster_row,
                "`store.cluster.fallback_share_percent` 0 is less than the minimum of 1 [schema]",
            ],
        ),
        (
            "lease ttl over a minute",
            cluster_rows(Some(json!("cluster")), json!({"lease_ttl_ms": 60_001})),
            vec![cluster_row, "`store.cluster.lease_ttl_ms`", "[schema]"],
        ),
        (
            "unknown cluster field",
            cluster_rows(Some(json!("cluster")), json!({"redis_url": "redis://x"})),
            vec![cluster_row, "`store.cluster`", "redis_url", "[schema]"],
        ),
        (
            "cluster with backend local",
            cluster_rows(Some(json!("local")), json!({})),
            vec![
                cluster_row,
                "`store.cluster` is only allowed with global `gateway.store.backend` = \"cluster\"",
                "is \"local\"",
                "[settings]",
            ],
        ),
        (
            "cluster without backend",
            cluster_rows(None, json!({"timeout_ms": 100})),
            vec![cluster_row, "is not set (`local`)", "[settings]"],
        ),
        (
            "unknown backend",
            vec![
                header_mode(),
                SettingRow::global("gateway.store.backend", json!("redis"), "carol"),
            ],
            vec![
                "global setting `gateway.store.backend` (updated by carol)",
                "`store.backend` \"redis\" is not one of",
            ],
        ),
    ] {
        let lines = refused(rows)?;
        assert_eq!(lines.len(), 1, "{what}: {lines:#?}");
        for fragment in expected {
            assert!(
                lines[0].contains(fragment),
                "{what}: {fragment} missing in {lines:#?}"
            );
        }
    }
    // A refused cluster row is left out: the document shows what the valid rows would do.
    let (rendered, _) = render_parts(
        &cluster_rows(Some(json!("local")), json!({})),
        DEFAULT_MAX_VALUE_BYTES,
    );
    assert_eq!(rendered.document["store"], json!({"backend": "local"}));
    Ok(())
}
