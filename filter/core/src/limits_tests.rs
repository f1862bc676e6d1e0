//! The limit model through the request decision: several windows per tenant,
//! calendar quotas, counters per user / org / header inside a tenant, plans,
//! all-or-nothing decisions (alone and under thread contention), the
//! RateLimit headers, method overrides; every store-using test also runs
//! with the store modelling ngx_wasm_module (`under_ngx_wasm` below).

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use crate::config::{self, CompiledConfig};
use crate::engine::{self, HostInputs, RequestView};
use crate::limits::calendar;
use crate::store::SharedStore;

use super::{header, new_store, parse_error, status_of, SECOND};

/// 2026-12-06 21:49:52 UTC.
const NOW: u64 = 1_796_593_792 * SECOND;

fn with_tenants(tenants: &str, extra: &str) -> CompiledConfig {
    config::parse(
        format!(
            r#"{{"version":1,"tenant":{{"trust_header_without_jwt":true}}{extra},
            "tenants":{{{tenants}}}}}"#
        )
        .as_bytes(),
    )
    .unwrap()
}

/// A GET of `tenant` (as `user` when given) at `at`.
fn get(
    config: &CompiledConfig,
    store: &dyn SharedStore,
    tenant: &str,
    user: Option<&str>,
    at: u64,
) -> engine::Evaluation {
    let users = [user.map(str::as_bytes)];
    let request = RequestView {
        method: b"GET",
        path: b"/items",
        tenant_header: Some(tenant.as_bytes()),
        key_headers: if config.key_headers.is_empty() {
            &[]
        } else {
            &users
        },
        ..RequestView::default()
    };
    let host = HostInputs {
        now_unix_ns: at,
        random: [7; 10],
    };
    engine::evaluate(config, &request, &host, store)
}

fn statuses(
    config: &CompiledConfig,
    store: &dyn SharedStore,
    tenant: &str,
    user: Option<&str>,
    count: usize,
    at: u64,
) -> Vec<u32> {
    (0..count)
        .map(|_| status_of(&get(config, store, tenant, user, at)))
        .collect()
}

fn headers(evaluation: &engine::Evaluation) -> Vec<(String, String)> {
    match &evaluation.decision {
        engine::Decision::Forward(forward) => forward.response_headers.clone(),
        engine::Decision::Reject(reply) => reply.headers.clone(),
    }
}

fn problem_type(evaluation: &engine::Evaluation) -> String {
    match &evaluation.decision {
        engine::Decision::Reject(reply) => {
            let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            body["type"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("urn:tenant-guard:problem:")
                .to_owned()
        }
        engine::Decision::Forward(_) => String::new(),
    }
}

const BURST_AND_MONTH: &str = r#""acme":{"rate_limits":[
    {"name":"burst","requests":2,"per":"second"},
    {"name":"month","requests":5,"per":"month"}]}"#;

pub(super) fn several_windows_apply_together_and_report_the_closest() {
    let config = with_tenants(BURST_AND_MONTH, "");
    let store = new_store();
    // Two per second: the burst refuses the third, the quota is untouched by it.
    assert_eq!(
        statuses(&config, &store, "acme", None, 3, NOW),
        [200, 200, 429]
    );
    let first = get(&config, &store, "acme", None, NOW + SECOND);
    assert_eq!(status_of(&first), 200);
    let month = calendar::span(config::Calendar::Month, NOW / SECOND);
    assert_eq!(
        header(&headers(&first), "ratelimit-policy"),
        Some(format!("\"burst\";q=2;w=1, \"month\";q=5;w={}", month.length()).as_str())
    );
    // The burst has 1 left, the month 2: the burst is closest to exhaustion.
    assert_eq!(
        header(&headers(&first), "ratelimit"),
        Some("\"burst\";r=1;t=1")
    );
    assert_eq!(
        statuses(&config, &store, "acme", None, 2, NOW + 2 * SECOND),
        [200, 200]
    );
    // The quota is spent: refused until the month ends, whatever the burst says.
    let refused = get(&config, &store, "acme", None, NOW + 3 * SECOND);
    assert_eq!(status_of(&refused), 429);
    let retry = month.seconds_left(NOW / SECOND + 3).to_string();
    assert_eq!(
        header(&headers(&refused), "retry-after"),
        Some(retry.as_str())
    );
    assert!(header(&headers(&refused), "ratelimit")
        .unwrap()
        .starts_with("\"month\";r=0"));
    // A new month: the quota is whole again.
    assert_eq!(
        statuses(&config, &store, "acme", None, 1, month.end * SECOND),
        [200]
    );
}

pub(super) fn a_refused_request_consumes_nothing_from_any_limit() {
    // The tenant may make 10 per hour, each user 2.
    let config = with_tenants(
        r#""acme":{"rate_limits":[
            {"name":"tenant-hour","requests":10,"per":"hour"},
            {"name":"user-hour","requests":2,"per":"hour","key":"user"}]}"#,
        "",
    );
    let store = new_store();
    assert_eq!(
        statuses(&config, &store, "acme", Some("alice"), 5, NOW),
        [200, 200, 429, 429, 429]
    );
    // Alice's three refusals took nothing from the tenant: 8 are left.
    let mut others = Vec::new();
    for user in ["bob", "carol", "dave", "erin", "frank"] {
        others.extend(statuses(&config, &store, "acme", Some(user), 2, NOW));
    }
    assert_eq!(others.iter().filter(|s| **s == 200).count(), 8);
    assert_eq!(others.iter().filter(|s| **s == 429).count(), 2);
}

#[cfg(not(target_arch = "wasm32"))]
pub(super) fn no_interleaving_over_admits_across_workers() {
    use std::sync::Arc;
    // 40 per hour for the tenant, 6 per user: 12 users × 6 = 72 would fit
    // the users, 40 the tenant.
    let config = Arc::new(with_tenants(
        r#""acme":{"rate_limits":[
            {"name":"tenant-hour","requests":40,"per":"hour"},
            {"name":"user-hour","requests":6,"per":"hour","key":"user"}]}"#,
        r#","store":{"max_cas_retries":1000}"#,
    ));
    let store = Arc::new(new_store());
    let per_user: Vec<(String, usize)> = (0..12)
        .map(|user| {
            let (config, store) = (Arc::clone(&config), Arc::clone(&store));
            std::thread::spawn(move || {
                let user = format!("user-{user}");
                let admitted = statuses(&config, &*store, "acme", Some(&user), 10, NOW)
                    .iter()
                    .filter(|status| **status == 200)
                    .count();
                (user, admitted)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect();
    let total: usize = per_user.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 40, "the tenant's limit, exactly: {per_user:?}");
    assert!(per_user.iter().all(|(_, n)| *n <= 6), "{per_user:?}");
    // Nothing refused was consumed: every user can still take what the
    // tenant limit lets through, which is nothing, and the counters agree.
    assert_eq!(
        statuses(&config, &*store, "acme", Some("late"), 1, NOW),
        [429]
    );
}

pub(super) fn keys_inside_a_tenant_are_bounded_and_checked() {
    let limits = |on_missing: &str| {
        format!(
            r#""acme":{{"rate_limits":[{{"name":"per-user","requests":1,"per":"hour","key":"user"{on_missing}}}]}}"#
        )
    };
    // One slot (with its three alternates): a fifth active user finds no room.
    let config = with_tenants(&limits(""), r#","store":{"key_slots":1}"#);
    let store = new_store();
    for user in ["u1", "u2", "u3", "u4"] {
        assert_eq!(statuses(&config, &store, "acme", Some(user), 1, NOW), [200]);
    }
    let full = get(&config, &store, "acme", Some("u5"), NOW);
    assert_eq!(status_of(&full), 503);
    assert_eq!(problem_type(&full), "rate-limit-keys-exhausted");
    // An idle entry (its window over) is taken over.
    assert_eq!(
        statuses(&config, &store, "acme", Some("u5"), 1, NOW + 3601 * SECOND),
        [200]
    );
    // No key: refused by default, or counted as the tenant when asked.
    let missing = get(&config, &store, "acme", None, NOW);
    assert_eq!(
        (status_of(&missing), problem_type(&missing).as_str()),
        (400, "rate-limit-key-missing")
    );
    let lenient = with_tenants(&limits(r#","on_missing":"tenant""#), "");
    assert_eq!(statuses(&lenient, &store, "acme", None, 2, NOW), [200, 429]);
    // A malformed value is a 400 of its own, never a crash.
    for bad in ["a\u{1}b", &"x".repeat(257)] {
        let malformed = get(&config, &store, "acme", Some(bad), NOW);
        assert_eq!(problem_type(&malformed), "invalid-rate-limit-key");
    }
}

pub(super) fn plans_give_tenants_their_limits_and_tenants_override_by_name() {
    let config = with_tenants(
        r#""acme":{"plan":"gold"},
           "beta":{"plan":"gold","rate_limits":[{"name":"month","requests":1,"per":"month"}]},
           "free":{}"#,
        r#","plans":{"gold":{"rate_limits":[
            {"name":"second","requests":100,"per":"second"},
            {"name":"month","requests":3,"per":"month"}]}},
           "defaults":{"rate_limit":{"requests":1,"per_seconds":60}}"#,
    );
    let store = new_store();
    assert_eq!(
        statuses(&config, &store, "acme", None, 4, NOW),
        [200, 200, 200, 429]
    );
    assert_eq!(statuses(&config, &store, "beta", None, 2, NOW), [200, 429]);
    // Without a plan, the defaults.
    assert_eq!(statuses(&config, &store, "free", None, 2, NOW), [200, 429]);
    let acme = config.tenant_settings("acme").unwrap();
    let names: Vec<&str> = acme.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["second", "month"]);
}

pub(super) fn shadow_mode_reports_every_limit_and_refuses_none() {
    let tenants = BURST_AND_MONTH.replacen(
        "{\"rate_limits\"",
        "{\"mode\":\"shadow\",\"rate_limits\"",
        1,
    );
    let config = with_tenants(&tenants, "");
    let store = new_store();
    let all = statuses(&config, &store, "acme", None, 8, NOW);
    assert!(all.iter().all(|status| *status == 200), "{all:?}");
    let last = get(&config, &store, "acme", None, NOW);
    assert_eq!(last.outcome, engine::Outcome::ShadowOverLimit);
}

/// Store-free: what the document itself says.
#[test]
fn the_limit_model_refuses_bad_documents_with_their_paths() {
    let document = |tenants: &str, extra: &str| {
        format!(
            r#"{{"version":1,"tenant":{{"trust_header_without_jwt":true}}{extra},"tenants":{{{tenants}}}}}"#
        )
    };
    let limit = |fields: &str| {
        document(
            &format!(r#""a":{{"rate_limits":[{{"name":"x","requests":5{fields}}}]}}"#),
            "",
        )
    };
    let cases = [
        (limit(""), "tenants.a.rate_limits.0"),
        (
            limit(r#","per":"hour","per_seconds":60"#),
            "tenants.a.rate_limits.0",
        ),
        (
            limit(r#","per":"hour","burst":0"#),
            "tenants.a.rate_limits.0.burst",
        ),
        (
            limit(r#","per":"day","burst":5"#),
            "tenants.a.rate_limits.0.burst",
        ),
        (
            limit(r#","per":"hour","key":"ip""#),
            "tenants.a.rate_limits.0.key",
        ),
        (
            limit(r#","per":"hour","key":{"header":"X Bad"}"#),
            "tenants.a.rate_limits.0.key.header",
        ),
        (
            limit(r#","per":"hour","key":{"header":"x-tenant-id"}"#),
            "tenants.a.rate_limits.0.key.header",
        ),
        (
            limit(r#","per":"hour","on_missing":"tenant""#),
            "tenants.a.rate_limits.0.on_missing",
        ),
        (
            limit(r#","per":"hour","methods":[]"#),
            "tenants.a.rate_limits.0.methods",
        ),
        (
            limit(r#","per":"hour","prefix":"x""#),
            "tenants.a.rate_limits.0.prefix",
        ),
        (
            limit(r#","per":"fortnight""#),
            "tenants.a.rate_limits.0.per",
        ),
        (
            document(
                r#""a":{"rate_limits":[{"name":"x","requests":1,"per":"hour"},{"name":"x","requests":2,"per":"day"}]}"#,
                "",
            ),
            "tenants.a.rate_limits.1.name",
        ),
        (
            document(
                r#""a":{"rate_limit":{"requests":1,"per":"hour"},"rate_limits":[{"name":"tenant","requests":2,"per":"day"}]}"#,
                "",
            ),
            "tenants.a.rate_limits.0.name",
        ),
        (document(r#""a":{"plan":"gold"}"#, ""), "tenants.a.plan"),
        (
            document(
                r#""a":{}"#,
                r#","plans":{"gold":{"rate_limits":[{"name":"b b","requests":1,"per":"hour"}]}}"#,
            ),
            "plans.gold.rate_limits.0.name",
        ),
        (
            document(
                r#""a":{"routes":[{"prefix":"/r","rate_limits":[{"name":"x","requests":1,"per":"hour","prefix":"/q"}]}]}"#,
                "",
            ),
            "tenants.a.routes.0.rate_limits.0.prefix",
        ),
        (
            document(r#""a":{"routes":[{"prefix":"/r"}]}"#, ""),
            "tenants.a.routes.0",
        ),
        (
            document(r#""a":{}"#, r#","method_override":"maybe""#),
            "method_override",
        ),
        (
            document(r#""a":{}"#, r#","store":{"key_slots":0}"#),
            "store.key_slots",
        ),
    ];
    for (document, path) in cases {
        assert_eq!(parse_error(&document).path, path, "{document}");
    }
    // The existing single `rate_limit` accepts a named window too.
    let day = document(r#""a":{"rate_limit":{"requests":50,"per":"day"}}"#, "");
    let config = config::parse(day.as_bytes()).unwrap();
    let a = config.tenant_settings("a").unwrap();
    assert_eq!(a.policy_for("GET", "/").unwrap().requests(), 50);
}

pub(super) fn routes_replace_the_tenant_limit_or_add_their_own() {
    let config = with_tenants(
        r#""acme":{"rate_limit":{"requests":100,"per_seconds":60},
            "routes":[
              {"prefix":"/items","method":"GET","name":"reads","rate_limit":{"requests":2,"per_seconds":60}},
              {"prefix":"/reports","rate_limits":[{"name":"reports-day","requests":1,"per":"day"}]}]}"#,
        "",
    );
    let store = new_store();
    // GET /items: the route's `rate_limit` replaces the tenant's.
    let first = get(&config, &store, "acme", None, NOW);
    assert_eq!(
        header(&headers(&first), "ratelimit-policy"),
        Some("\"reads\";q=2;w=60")
    );
    assert_eq!(statuses(&config, &store, "acme", None, 2, NOW), [200, 429]);
}

pub(super) fn method_overrides_are_refused_or_honoured_never_unseen() {
    let rules = r#","if_match":[{"prefix":"/items","methods":["PUT"]}]"#;
    let override_to_put = |config: &CompiledConfig| {
        let request = RequestView {
            method: b"POST",
            path: b"/items",
            tenant_header: Some(b"acme"),
            method_overrides: [Some(b"put"), None, None],
            ..RequestView::default()
        };
        let host = HostInputs {
            now_unix_ns: NOW,
            random: [7; 10],
        };
        let store = new_store();
        let evaluation = engine::evaluate(config, &request, &host, &store);
        (status_of(&evaluation), problem_type(&evaluation))
    };
    let refusing = with_tenants(r#""acme":{}"#, rules);
    assert_eq!(
        override_to_put(&refusing),
        (400, "method-override-refused".to_owned())
    );
    // Honoured: the POST is a PUT for every rule, so it needs If-Match.
    let honoring = with_tenants(
        r#""acme":{}"#,
        &format!(r#"{rules},"method_override":"honor""#),
    );
    assert_eq!(
        override_to_put(&honoring),
        (428, "precondition-required".to_owned())
    );
}

#[test]
fn calendar_quotas_reset_at_the_utc_boundary() {
    let config = with_tenants(
        r#""acme":{"rate_limits":[{"name":"day","requests":2,"per":"day"}]}"#,
        "",
    );
    let store = new_store();
    let day = calendar::span(config::Calendar::Day, NOW / SECOND);
    let last_second = (day.end - 1) * SECOND;
    assert_eq!(
        statuses(&config, &store, "acme", None, 3, last_second),
        [200, 200, 429]
    );
    let refused = get(&config, &store, "acme", None, last_second);
    assert_eq!(header(&headers(&refused), "retry-after"), Some("1"));
    assert_eq!(
        statuses(&config, &store, "acme", None, 3, day.end * SECOND),
        [200, 200, 429]
    );
}

mod under_hosts {
    //! The tests above with the store modelling each host.
    under_host_models!(envoy: Envoy:
        several_windows_apply_together_and_report_the_closest,
        a_refused_request_consumes_nothing_from_any_limit,
        keys_inside_a_tenant_are_bounded_and_checked,
        plans_give_tenants_their_limits_and_tenants_override_by_name,
        shadow_mode_reports_every_limit_and_refuses_none,
        routes_replace_the_tenant_limit_or_add_their_own,
        method_overrides_are_refused_or_honoured_never_unseen,
    );
    under_host_models!(ngx_wasm: NgxWasm:
        several_windows_apply_together_and_report_the_closest,
        a_refused_request_consumes_nothing_from_any_limit,
        keys_inside_a_tenant_are_bounded_and_checked,
        plans_give_tenants_their_limits_and_tenants_override_by_name,
        shadow_mode_reports_every_limit_and_refuses_none,
        routes_replace_the_tenant_limit_or_add_their_own,
        method_overrides_are_refused_or_honoured_never_unseen,
    );

    // Threads: native only.
    #[cfg(not(target_arch = "wasm32"))]
    under_host_models!(envoy_threads: Envoy: no_interleaving_over_admits_across_workers);
    #[cfg(not(target_arch = "wasm32"))]
    under_host_models!(ngx_wasm_threads: NgxWasm: no_interleaving_over_admits_across_workers);
}

#[test]
fn local_calendar_quotas_are_warned_about_once_per_document() {
    let month = r#"{"name":"m","requests":9,"per":"month"}"#;
    let second = r#"{"name":"s","requests":9,"per":"second"}"#;
    let cases = [
        (format!(r#""a":{{"rate_limits":[{second}]}}"#), "", None),
        (
            format!(r#""b":{{"rate_limits":[{month}]}},"a":{{"rate_limits":[{second}]}}"#),
            "",
            Some("of 1 tenant(s) (`b`)"),
        ),
        (
            format!(r#""a":{{"routes":[{{"prefix":"/r","rate_limits":[{month}]}}]}}"#),
            "",
            Some("(`a`)"),
        ),
        (
            r#""a":{"plan":"p"}"#.to_owned(),
            &*format!(r#","plans":{{"p":{{"rate_limits":[{month}]}}}}"#),
            Some("(`a`)"),
        ),
        (
            format!(r#""b":{{"rate_limits":[{month}]}}"#),
            r#","store":{"backend":"cluster","cluster":{"upstream":"s"}}"#,
            None,
        ),
    ];
    for (tenants, extra, expected) in cases {
        let warning = with_tenants(&tenants, extra).local_quota_warning();
        match expected {
            None => assert_eq!(warning, None, "{tenants}"),
            Some(fragment) => {
                let warning = warning.unwrap();
                assert!(warning.contains(fragment), "{warning}");
                assert!(warning.contains("appendonly"), "{warning}");
            }
        }
    }
}

#[test]
fn key_value_hashes_stay_what_stored_state_is_keyed_by() {
    use sha2::{Digest, Sha256};
    // Per-key state (shared data, Redis) is named by these hashes: the
    // worker's cache must give what SHA-256 of the kind's byte and the value
    // gives, first time and after, or counters would restart on an upgrade.
    let cases: [(config::KeyKind, u8, &[u8]); 4] = [
        (config::KeyKind::User, 1, b"alice"),
        (config::KeyKind::Org, 2, b"org-7"),
        (config::KeyKind::Header(0), 3, b"key-\xff"),
        (config::KeyKind::Header(2), 5, &[b'x'; 300]),
    ];
    for round in 0..2 {
        for (kind, kind_byte, value) in cases {
            let digest = Sha256::new()
                .chain_update([kind_byte])
                .chain_update(value)
                .finalize();
            let mut keys = crate::limits::KeyHashes::default();
            keys.set(kind, value);
            assert_eq!(
                keys.get(kind).map(|hash| hash.to_vec()),
                Some(digest.get(..8).unwrap_or_default().to_vec()),
                "{kind:?} (round {round})"
            );
        }
    }
}
