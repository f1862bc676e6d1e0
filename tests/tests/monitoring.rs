//! The monitoring files (`docs/monitoring/alerts.yml`, `dashboard.json`)
//! against a real scrape: every metric name their PromQL uses exists in the
//! Prometheus output of a running Envoy with the filter (`/stats/prometheus`)
//! or of the sync sidecar (`/metrics`), and the series the alerts fire on move
//! the way the rules assume (429s, a configuration the filter rejects, a
//! failed and then a successful sync). PostgreSQL, the sidecar and Envoy are
//! real ([`SidecarStack`]); every wait is a poll with a deadline. The rules'
//! own logic is unit-tested by promtool (`bash docs/monitoring/check.sh`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use tenant_guard_e2e::http;
use tenant_guard_e2e::repo_root;
use tenant_guard_e2e::sidecar::SidecarStack;
use tenant_guard_e2e::wait::{wait_for, wait_until};

/// PromQL words that look like identifiers but name no metric.
const PROMQL_WORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];

/// The metric names in a PromQL expression: identifiers outside strings,
/// label matchers (`{...}`), ranges (`[...]`) and label lists (`by (...)`
/// etc.), that are not followed by `(` (a function) and are not PromQL words.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |from: usize, close: char| -> usize {
        chars[from..]
            .iter()
            .position(|&c| c == close)
            .map_or(chars.len(), |p| from + p + 1)
    };
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_to(i + 1, c);
        } else if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c.is_ascii_digit() || c == '$' {
            // Numbers, durations (10m), Grafana variables ($__range).
            i += 1;
            while i < chars.len() && (is_part(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if is_start(c) {
            let start = i;
            while i < chars.len() && is_part(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
            let label_list = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ];
            if label_list.contains(&word.as_str()) && next == Some('(') {
                let open = i + chars[i..].iter().position(|&c| c == '(').unwrap_or(0);
                i = skip_to(open + 1, ')');
            } else if next != Some('(') && !PROMQL_WORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The `expr:` values of a Prometheus rule file: inline, or a `|` / `>` block
/// (the lines indented deeper than the `expr:` key).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let indent = line.len() - trimmed.len();
            let block: Vec<&str> = lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .copied()
                .collect();
            exprs.push(block.join("\n"));
        } else {
            exprs.push(value.to_string());
        }
    }
    exprs
}

/// Every `"expr"` string in a Grafana dashboard.
fn dashboard_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => dashboard_exprs(item, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| dashboard_exprs(i, out)),
        _ => {}
    }
}

/// (metric names in alerts.yml, metric names in dashboard.json).
fn referenced_metrics() -> (BTreeSet<String>, BTreeSet<String>) {
    let dir = repo_root().join("docs/monitoring");
    let alerts = fs::read_to_string(dir.join("alerts.yml")).expect("docs/monitoring/alerts.yml");
    let dashboard: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(dir.join("dashboard.json")).expect("docs/monitoring/dashboard.json"),
    )
    .expect("dashboard.json is JSON");
    let alert_exprs = rule_exprs(&alerts);
    assert!(
        alert_exprs.len() >= 6,
        "found only {} expr: in alerts.yml",
        alert_exprs.len()
    );
    let mut panel_exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut panel_exprs);
    assert!(
        panel_exprs.len() >= 10,
        "found {} queries in dashboard.json",
        panel_exprs.len()
    );
    let names = |exprs: &[String]| exprs.iter().flat_map(|e| metric_names(e)).collect();
    (names(&alert_exprs), names(&panel_exprs))
}

/// Series (`name` or `name{labels}`, with Envoy's empty `{}` dropped) and
/// values of a Prometheus text exposition.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.trim().rsplit_once(' ')?;
            let series = series.trim().trim_end_matches("{}");
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn metric_name(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

/// The sum over every series of metric `name`, whatever its labels.
fn total(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = samples(text)
        .into_iter()
        .filter(|(series, _)| metric_name(series) == name)
        .map(|(_, v)| v)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn value(text: &str, series: &str) -> Option<f64> {
    samples(text)
        .into_iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| v)
}

struct Scrapes {
    envoy: String,
    sidecar: String,
}

fn scrape(stack: &SidecarStack) -> Scrapes {
    let envoy = stack.envoy.admin("/stats/prometheus");
    assert_eq!(envoy.status, 200, "Envoy /stats/prometheus");
    let sidecar = http::get(stack.admin_port(), "/metrics", &[]);
    assert_eq!(sidecar.status, 200, "sidecar /metrics");
    Scrapes {
        envoy: envoy.text(),
        sidecar: sidecar.text(),
    }
}

#[test]
fn the_scanner_finds_metric_names_and_skips_functions_labels_and_durations() {
    let found = metric_names(
        "(increase(settings_sync_success_total[10m]) == 0 \
         and on (job, instance) settings_sync_success_total offset 10m) \
         or absent_over_time(x_total{job=\"a:b\", le=\"0.5\"}[$__range]) \
         / sum without (tenant) (rate(tenant_guard_allowed[$__rate_interval])) > 0.10 \
         unless histogram_quantile(0.99, sum by (le) (rate(d_bucket[5m]))) * 60",
    );
    let expected: BTreeSet<String> = [
        "settings_sync_success_total",
        "x_total",
        "tenant_guard_allowed",
        "d_bucket",
    ]
    .map(String::from)
    .into();
    assert_eq!(found, expected);

    let exprs = rule_exprs("  - alert: A\n    expr: |\n      a_total\n      and b\n    for: 5m\n  - alert: B\n    expr: c == 0\n");
    assert_eq!(exprs, ["      a_total\n      and b", "c == 0"]);
}

#[test]
fn every_metric_of_the_alerts_and_the_dashboard_is_in_a_real_scrape_and_moves() {
    let (alert_metrics, dashboard_metrics) = referenced_metrics();
    // The scan must see both sources, or an empty set would pass trivially.
    for name in [
        "settings_sync_success_total",
        "settings_sync_errors_total",
        "gateway_deployment_status",
        "tenant_guard_config_rejected",
        "tenant_guard_rate_limited",
        "tenant_guard_store_evicted",
    ] {
        assert!(alert_metrics.contains(name), "alerts.yml uses {name}");
    }
    for name in [
        "settings_current_revision",
        "settings_sync_duration_seconds_bucket",
        "tenant_guard_rate_limited",
        "tenant_guard_idempotent_replayed",
    ] {
        assert!(
            dashboard_metrics.contains(name),
            "dashboard.json uses {name}"
        );
    }
    let wanted: BTreeSet<String> = alert_metrics.union(&dashboard_metrics).cloned().collect();

    let stack = SidecarStack::start();
    stack.settings.set_tenant_limit("acme", 1, 60);
    stack
        .wait_for_limit("acme", 1, 60, Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "acme's limit never reached Envoy:\n{}",
                stack.envoy.log_tail(40)
            )
        });
    wait_for(Duration::from_secs(5), || {
        stack.get("acme").filter(|r| r.status == 429)
    })
    .expect("acme is rate limited at 1/min");

    // 1. Every name is in one of the two scrapes.
    let mut missing = BTreeSet::new();
    let all_present = wait_until(Duration::from_secs(10), || {
        let s = scrape(&stack);
        let names: BTreeSet<String> = samples(&s.envoy)
            .into_iter()
            .chain(samples(&s.sidecar))
            .map(|(series, _)| metric_name(&series).to_string())
            .collect();
        missing = wanted.difference(&names).cloned().collect();
        missing.is_empty()
    });
    assert!(
        all_present,
        "metrics used by docs/monitoring but absent from the Envoy and sidecar scrapes: {missing:?}"
    );

    // 2. RateLimitedSustained's series: 429s and allowed requests are counted
    //    (handed to Envoy once a second per worker, hence the poll).
    assert!(
        wait_until(Duration::from_secs(10), || {
            let envoy = scrape(&stack).envoy;
            total(&envoy, "tenant_guard_rate_limited").is_some_and(|v| v >= 1.0)
                && total(&envoy, "tenant_guard_allowed").is_some_and(|v| v >= 1.0)
        }),
        "tenant_guard_rate_limited / tenant_guard_allowed did not count the requests"
    );

    // 2b. Per tenant, with bounded labels: acme's 429s under tenant="acme"; a
    //     request naming a tenant that is not configured, and one naming none
    //     validly, under tenant="_other_" with the rejection's reason.
    let invalid = stack.get("not a tenant").expect("Envoy answers");
    assert_eq!(invalid.status, 400, "{}", invalid.text());
    let mut envoy = String::new();
    let labelled = wait_until(Duration::from_secs(10), || {
        envoy = scrape(&stack).envoy;
        value(&envoy, "tenant_guard_rate_limited{tenant=\"acme\"}").is_some_and(|v| v >= 1.0)
            && samples(&envoy).iter().any(|(series, v)| {
                metric_name(series) == "tenant_guard_rejected"
                    && series.contains("reason=\"invalid_tenant\"")
                    && series.contains("tenant=\"_other_\"")
                    && *v >= 1.0
            })
    });
    assert!(
        labelled,
        "per-tenant series missing from the scrape:\n{envoy}"
    );
    let tenants: BTreeSet<String> = samples(&envoy)
        .iter()
        .filter(|(series, _)| series.starts_with("tenant_guard_"))
        .filter_map(|(series, _)| {
            let (_, rest) = series.split_once("tenant=\"")?;
            Some(rest.split('"').next()?.to_string())
        })
        .collect();
    assert!(
        tenants.iter().all(|t| t == "acme" || t == "_other_"),
        "only configured tenants get a label of their own: {tenants:?}"
    );

    // 3. ConfigRejected's series: a plugin config the filter refuses (written
    //    past the sidecar, which would have refused it first).
    let before = total(&scrape(&stack).envoy, "tenant_guard_config_rejected").unwrap_or(0.0);
    stack
        .envoy
        .write_ecds(r#"{"version":1,"no_such_field":true}"#, "rejected-1");
    assert!(
        wait_until(Duration::from_secs(10), || {
            total(&scrape(&stack).envoy, "tenant_guard_config_rejected").is_some_and(|v| v > before)
        }),
        "tenant_guard_config_rejected did not move:\n{}",
        stack.envoy.log_tail(20)
    );
    let still = stack.get("acme").expect("Envoy answers");
    assert!(
        still
            .header("ratelimit-policy")
            .is_some_and(|p| p.contains(";q=1;w=60")),
        "the previous config keeps serving: {:?}",
        still.header("ratelimit-policy")
    );

    // 4. SyncFailing / DeploymentDown's series: an invalid setting fails the
    //    sync and sets the gateway's status to 0 ...
    let status = "gateway_deployment_status{gateway=\"envoy\"}";
    let sidecar = scrape(&stack).sidecar;
    assert_eq!(value(&sidecar, status), Some(1.0), "{sidecar}");
    let errors_before = value(&sidecar, "settings_sync_errors_total").expect("errors counter");
    stack.settings.set_tenant_limit("acme", 0, 60);
    let reply = http::request(stack.admin_port(), "POST", "/sync", &[], b"");
    assert_eq!(reply.status, 422, "{}", reply.text());
    let sidecar = scrape(&stack).sidecar;
    assert!(
        value(&sidecar, "settings_sync_errors_total").is_some_and(|v| v > errors_before),
        "{sidecar}"
    );
    assert_eq!(value(&sidecar, status), Some(0.0), "{sidecar}");

    // ... and the next good sync sets it back to 1 (the alerts clear), with
    // the new revision replacing the rejected file in Envoy.
    let revision_before = value(&sidecar, "settings_current_revision").expect("revision gauge");
    let success_before = value(&sidecar, "settings_sync_success_total").expect("success counter");
    stack.settings.set_tenant_limit("acme", 5, 60);
    let reply = http::request(stack.admin_port(), "POST", "/sync", &[], b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sidecar = scrape(&stack).sidecar;
    assert_eq!(value(&sidecar, status), Some(1.0), "{sidecar}");
    assert!(value(&sidecar, "settings_sync_success_total").is_some_and(|v| v > success_before));
    assert!(value(&sidecar, "settings_current_revision").is_some_and(|v| v > revision_before));
    stack
        .wait_for_limit("acme", 5, 60, Duration::from_secs(10))
        .expect("the sidecar's next revision replaced the rejected config");
}
