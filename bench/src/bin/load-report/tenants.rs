//! The cost of a 10 000-tenant config: sidecar render + validate, the filter's
//! native parse, and Envoy's memory per worker against a tiny config.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tenant_guard_bench::{filter_config, median, min_max, rss_kib, BenchEnvoy, Bootstrap};
use tenant_guard_core::config;
use tenant_guard_e2e::sidecar::ms;
use tenant_guard_sidecar::settings::{render, Scope, SettingRow, Validator};

use super::wrk::{rotating_tenants_script, run_wrk, Load};
use super::{Args, Res};

const ACTOR: &str = "load-report";

fn row(scope: Scope, tenant: &str, route: &str, key: &str, value: Value) -> SettingRow {
    SettingRow::new(scope, tenant, route, key, value, ACTOR)
}

fn settings_rows(tenants: usize) -> Vec<SettingRow> {
    let mut rows = vec![
        SettingRow::global("gateway.tenant.header", json!("x-tenant-id"), ACTOR),
        SettingRow::global(
            "gateway.tenant.trust_header_without_jwt",
            json!(true),
            ACTOR,
        ),
        SettingRow::global("gateway.tenant.unknown", json!("reject"), ACTOR),
        SettingRow::global(
            "gateway.rate_limit",
            json!({"requests": 100, "per_seconds": 60}),
            ACTOR,
        ),
    ];
    for i in 0..tenants {
        let tenant = format!("t{i:05}");
        rows.push(row(
            Scope::Tenant,
            &tenant,
            "",
            "gateway.rate_limit",
            json!({"requests": 1000 + i, "per_seconds": 60}),
        ));
        rows.push(row(
            Scope::Route,
            &tenant,
            "orders",
            "gateway.route.prefix",
            json!("/orders"),
        ));
        rows.push(row(
            Scope::Route,
            &tenant,
            "orders",
            "gateway.route.method",
            json!("POST"),
        ));
        rows.push(row(
            Scope::Route,
            &tenant,
            "orders",
            "gateway.rate_limit",
            json!({"requests": 10 + i % 100, "per_seconds": 1}),
        ));
    }
    rows
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let value = f();
    (value, started.elapsed())
}

pub(crate) fn ten_thousand(args: &Args, upstream: u16, dir: &Path, out: &mut String) -> Res<()> {
    let tenants = args.tenants;
    let rows = settings_rows(tenants);
    // (a) sidecar: render + validate (JSON Schema + the filter's parser).
    let mut render_ms = Vec::new();
    let mut validate_ms = Vec::new();
    let mut document = String::new();
    let (validator, validator_new) = timed(Validator::new);
    let validator = validator.map_err(|e| e.to_string())?;
    for _ in 0..5 {
        let (rendered, t) = timed(|| render(&rows));
        let rendered = rendered.map_err(|e| e.to_string())?;
        render_ms.push(ms(t));
        document = rendered.with_revision("r1-load-report");
        let (valid, t) = timed(|| validator.validate(&rendered, &document));
        valid.map_err(|e| e.to_string())?;
        validate_ms.push(ms(t));
    }
    // (b) the filter's parse + compile, natively.
    let mut parse_ms = Vec::new();
    for _ in 0..20 {
        let (compiled, t) = timed(|| config::parse(document.as_bytes()));
        let compiled = compiled.map_err(|e| e.to_string())?;
        if compiled.tenants.len() != tenants {
            return Err(format!("parsed {} tenants", compiled.tenants.len()));
        }
        parse_ms.push(ms(t));
    }
    let _ = writeln!(
        out,
        "{tenants} tenants, each with a tenant rate limit and one route (`POST /orders`, own limit): \
         {} settings rows → a {:.0} KiB plugin document.\n",
        rows.len(),
        document.len() as f64 / 1024.0
    );
    let _ = writeln!(out, "| step | median | min |");
    let _ = writeln!(out, "|---|---:|---:|");
    for (name, values) in [
        ("sidecar `settings::render` (rows → document)", &render_ms),
        (
            "sidecar `Validator::validate` (JSON Schema + filter parser)",
            &validate_ms,
        ),
        (
            "filter `config::parse` natively (parse + compile)",
            &parse_ms,
        ),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {:.1} ms | {:.1} ms |",
            median(values),
            min_max(values).0
        );
    }
    let _ = writeln!(
        out,
        "| sidecar `Validator::new` (compile the schema, once) | {:.1} ms | |",
        ms(validator_new)
    );
    // (c) Envoy memory per worker: tiny vs 10k config, 1 vs 2 workers; each
    // Envoy then gets one request per tenant id (creating the shared-data keys
    // in both configs alike) before RSS is read.
    let tiny = filter_config("load-tiny", Some((100, 60))).to_string();
    let script = dir.join("rotate.lua");
    fs::write(&script, rotating_tenants_script(tenants)).map_err(|e| e.to_string())?;
    let mut rss = BTreeMap::new();
    let _ = writeln!(
        out,
        "\n| Envoy | workers | start → ready | RSS after start | RSS after {tenants}-tenant traffic |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for (label, config) in [("tiny config", &tiny), ("10k-tenant config", &document)] {
        for concurrency in [1u32, 2] {
            let envoy =
                BenchEnvoy::start(&Bootstrap::Filter(config.clone()), concurrency, upstream)?;
            let after_start = rss_kib(envoy.pid());
            run_wrk(&Load {
                port: envoy.port(),
                seconds: 2,
                connections: args.connections,
                headers: &[],
                script: Some(&script),
            })?;
            let after = rss_kib(envoy.pid());
            rss.insert((label, concurrency), after);
            let _ = writeln!(
                out,
                "| {label} | {concurrency} | {:.0} ms | {:.1} MiB | {:.1} MiB |",
                ms(envoy.startup()),
                after_start as f64 / 1024.0,
                after as f64 / 1024.0
            );
        }
    }
    let get =
        |label: &'static str, c: u32| rss.get(&(label, c)).copied().unwrap_or(0) as f64 / 1024.0;
    let per_worker_tiny = get("tiny config", 2) - get("tiny config", 1);
    let per_worker_10k = get("10k-tenant config", 2) - get("10k-tenant config", 1);
    let _ = writeln!(
        out,
        "\nPer extra worker: {per_worker_10k:.1} MiB with the 10k config vs {per_worker_tiny:.1} MiB \
         with the tiny one → the 10k-tenant config costs ≈ {:.1} MiB per worker. At 1 worker the \
         10k config costs {:.1} MiB more in total (main-thread VM + worker VM + the config held by \
         Envoy).",
        per_worker_10k - per_worker_tiny,
        get("10k-tenant config", 1) - get("tiny config", 1)
    );
    Ok(())
}
