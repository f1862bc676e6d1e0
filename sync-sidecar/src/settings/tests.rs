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
        let rows = vec![
            header_mode(),
            SettingRow::global(key, marker.clone(), "alice"),
        ];
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
