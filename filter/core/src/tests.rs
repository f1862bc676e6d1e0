//! Unit tests of the core. They run natively (`cargo test`) and compiled to
//! wasm32 under wasm-bindgen-test (`tests/run-all.sh` runs both).

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use crate::config::{self, Mode, OnExhausted, StoreConfig};
use crate::correlation;
use crate::engine::{self, Decision, HostInputs, Outcome, RequestView};
use crate::problem::ProblemKind;
use crate::ratelimit::{self, RateParams};
use crate::store::{CasOutcome, MemoryStore, SharedStore, StoreError};

const SECOND: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * SECOND;

fn config_json(extra_tenants: &str) -> String {
    format!(
        r#"{{"version":1,"revision":"r7-abc",
            "tenant":{{"trust_header_without_jwt":true}},
            "defaults":{{"rate_limit":{{"requests":100,"per_seconds":60}}}},
            "tenants":{{"acme":{{"rate_limit":{{"requests":3,"per_seconds":3600}},
                                "routes":[{{"prefix":"/orders","method":"POST","name":"orders",
                                            "rate_limit":{{"requests":1,"per_seconds":3600}}}}]}},
                        "quiet":{{"rate_limit":{{"requests":2,"per_seconds":3600}},"mode":"shadow"}}
                        {extra_tenants}}}}}"#
    )
}

fn compiled(extra: &str) -> config::CompiledConfig {
    config::parse(config_json(extra).as_bytes()).unwrap()
}

fn host(now: u64) -> HostInputs {
    HostInputs {
        now_unix_ns: now,
        random: [7; 10],
    }
}

fn request<'a>(tenant: Option<&'a str>, method: &'a str, path: &'a str) -> RequestView<'a> {
    RequestView {
        method,
        path,
        tenant_header: tenant,
        correlation_header: None,
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn status_of(evaluation: &engine::Evaluation) -> u32 {
    match &evaluation.decision {
        Decision::Forward(_) => 200,
        Decision::Reject(reply) => reply.status,
    }
}

// ---- config ----

#[test]
fn config_parses_and_compiles() {
    let config = compiled("");
    assert_eq!(config.revision, "r7-abc");
    assert_eq!(config.tenant.header, "x-tenant-id");
    assert_eq!(config.correlation.header, "x-correlation-id");
    let acme = config.tenant_settings("acme").unwrap();
    assert_eq!(acme.policy_for("POST", "/orders/1").unwrap().name, "orders");
    assert_eq!(acme.policy_for("GET", "/orders/1").unwrap().name, "tenant");
    assert_eq!(config.tenant_settings("quiet").unwrap().mode, Mode::Shadow);
    // Unknown tenants fall back to the defaults by default.
    let other = config.tenant_settings("other").unwrap();
    assert_eq!(other.policy_for("GET", "/").unwrap().rate.requests, 100);
}

#[test]
fn config_errors_name_the_field() {
    let cases: &[(&str, &str)] = &[
        ("", ""),
        ("{", ""),
        (
            r#"{"version":2,"tenant":{"trust_header_without_jwt":true}}"#,
            "version",
        ),
        (r#"{"version":1}"#, "tenant.trust_header_without_jwt"),
        (
            r#"{"version":1,"tenant":{"trust_header_without_jwt":true},"tenants":{"a":{"rate_limit":{"requests":0,"per_seconds":1}}}}"#,
            "tenants.a.rate_limit.requests",
        ),
        (
            r#"{"version":1,"tenant":{"trust_header_without_jwt":true},"tenants":{"a":{"rate_limit":{"requests":-1,"per_seconds":1}}}}"#,
            "tenants.a.rate_limit.requests",
        ),
        (
            r#"{"version":1,"tenant":{"trust_header_without_jwt":true},"tenants":{"a":{"routes":[{"prefix":"orders","rate_limit":{"requests":1,"per_seconds":1}}]}}}"#,
            "tenants.a.routes.0.prefix",
        ),
        (
            r#"{"version":1,"tenant":{"trust_header_without_jwt":true},"tenants":{"a":{"routes":[{"prefix":"/o","method":"post","rate_limit":{"requests":1,"per_seconds":1}}]}}}"#,
            "tenants.a.routes.0.method",
        ),
        (
            r#"{"version":1,"tenant":{"trust_header_without_jwt":true,"header":"X-Tenant"}}"#,
            "tenant.header",
        ),
        (
            r#"{"version":1,"tenant":{"trust_header_without_jwt":true},"surprise":1}"#,
            "",
        ),
        (
            r#"{"version":1,"tenant":{"trust_header_without_jwt":true},"tenants":{"bad id":{}}}"#,
            "tenants.bad id",
        ),
        (
            r#"{"version":1,"tenant":{"trust_header_without_jwt":true},"store":{"max_cas_retries":0}}"#,
            "store.max_cas_retries",
        ),
        (
            r#"{"version":1,"tenant":{"trust_header_without_jwt":true},"defaults":{"mode":"loud"}}"#,
            "defaults.mode",
        ),
    ];
    for (document, path) in cases {
        let err = config::parse(document.as_bytes()).expect_err(document);
        if path.is_empty() {
            assert!(!err.message.is_empty(), "{document}");
            if document.contains("surprise") {
                assert!(err.message.contains("surprise"), "{err}");
            }
        } else {
            assert_eq!(err.path, *path, "{document}: {err}");
        }
    }
}

#[test]
fn duplicate_route_names_are_rejected() {
    let document = r#"{"version":1,"tenant":{"trust_header_without_jwt":true},"tenants":{"a":{"routes":[
        {"prefix":"/a","name":"x","rate_limit":{"requests":1,"per_seconds":1}},
        {"prefix":"/b","name":"x","rate_limit":{"requests":1,"per_seconds":1}}]}}}"#;
    let err = config::parse(document.as_bytes()).unwrap_err();
    assert_eq!(err.path, "tenants.a.routes.1.name");
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn schema_agrees_with_the_parser() {
    let schema: serde_json::Value = serde_json::from_str(config::CONFIG_SCHEMA).unwrap();
    let validator = jsonschema::draft4::new(&schema).unwrap();
    let valid: serde_json::Value = serde_json::from_str(&config_json("")).unwrap();
    assert!(validator.is_valid(&valid));
    for invalid in [
        r#"{"version":1,"tenants":{"a":{"rate_limit":{"requests":0,"per_seconds":1}}}}"#,
        r#"{"version":1,"surprise":true}"#,
        r#"{"version":1,"tenant":{"header":"X-Up"}}"#,
        r#"{"version":1,"tenants":{"a":{"routes":[{"prefix":"x","rate_limit":{"requests":1,"per_seconds":1}}]}}}"#,
    ] {
        let value: serde_json::Value = serde_json::from_str(invalid).unwrap();
        assert!(!validator.is_valid(&value), "schema accepted {invalid}");
        let with_trust = invalid.replacen(
            r#"{"version":1"#,
            r#"{"version":1,"tenant":{"trust_header_without_jwt":true}"#,
            1,
        );
        if !invalid.contains("\"tenant\"") {
            assert!(
                config::parse(with_trust.as_bytes()).is_err(),
                "parser accepted {with_trust}"
            );
        }
    }
    // What the parser accepts, re-serialised, the schema accepts too.
    let document = config::parse_document(config_json("").as_bytes()).unwrap();
    let reserialised = serde_json::to_value(&document).unwrap();
    assert!(validator.is_valid(&reserialised));
}

// ---- correlation ----

#[test]
fn correlation_ids_kept_or_generated() {
    assert!(correlation::is_valid_id("abc-123_x.y:z"));
    assert!(correlation::is_valid_id(&"a".repeat(128)));
    assert!(!correlation::is_valid_id(&"a".repeat(129)));
    assert!(!correlation::is_valid_id(""));
    assert!(!correlation::is_valid_id("has space"));
    assert!(!correlation::is_valid_id("semi;colon"));
    assert_eq!(
        correlation::choose_id(Some("keep-me"), 0, [0; 10]),
        "keep-me"
    );
    let generated = correlation::choose_id(Some("bad id"), 0x0190_0000_0000, [0xff; 10]);
    assert_ne!(generated, "bad id");
}

#[test]
fn uuid_v7_layout() {
    let id = correlation::uuid_v7(0x0123_4567_89ab, [0xff; 10]);
    assert_eq!(id, "01234567-89ab-7fff-bfff-ffffffffffff");
    let id = correlation::uuid_v7(1, [0; 10]);
    assert_eq!(id, "00000000-0001-7000-8000-000000000000");
}

// ---- rate limit arithmetic ----

#[test]
fn gcra_admits_burst_then_paces() {
    let params = RateParams::new(2, 10, 2);
    let mut tat = None;
    let mut admitted = 0;
    for _ in 0..5 {
        let (verdict, new_tat) = ratelimit::decide(&params, tat, T0);
        if verdict.allowed {
            admitted += 1;
        }
        tat = Some(new_tat);
    }
    assert_eq!(admitted, 2);
    let (rejected, _) = ratelimit::decide(&params, tat, T0);
    assert!(!rejected.allowed);
    assert_eq!(rejected.retry_after_seconds, 5);
    assert_eq!(rejected.remaining, 0);
    // One emission interval later exactly one more passes.
    let (verdict, new_tat) = ratelimit::decide(&params, tat, T0 + 5 * SECOND);
    assert!(verdict.allowed);
    assert_eq!(verdict.remaining, 0);
    let (verdict, _) = ratelimit::decide(&params, Some(new_tat), T0 + 5 * SECOND);
    assert!(!verdict.allowed);
}

#[test]
fn gcra_reports_remaining_and_reset() {
    let params = RateParams::new(10, 60, 10);
    let (first, tat) = ratelimit::decide(&params, None, T0);
    assert!(first.allowed);
    assert_eq!(first.remaining, 9);
    assert_eq!(first.reset_seconds, 6);
    let (second, _) = ratelimit::decide(&params, Some(tat), T0);
    assert_eq!(second.remaining, 8);
    assert_eq!(second.reset_seconds, 12);
}

#[test]
fn burst_larger_than_rate() {
    let params = RateParams::new(1, 1, 5);
    let mut tat = None;
    let admitted = (0..10)
        .filter(|_| {
            let (verdict, new_tat) = ratelimit::decide(&params, tat, T0);
            tat = Some(new_tat);
            verdict.allowed
        })
        .count();
    assert_eq!(admitted, 5);
}

#[test]
fn state_codec_rejects_garbage() {
    assert_eq!(
        ratelimit::decode_state(&ratelimit::encode_state(42)),
        Some(42)
    );
    assert_eq!(ratelimit::decode_state(b""), None);
    assert_eq!(ratelimit::decode_state(b"not-a-tat"), None);
    assert_eq!(ratelimit::decode_state(&[1, 2, 3]), None);
}

#[test]
fn corrupted_state_is_treated_as_absent() {
    let store = MemoryStore::new();
    let key = ratelimit::state_key("acme", "tenant");
    store.set(&key, b"garbage!!", None).unwrap();
    let params = RateParams::new(1, 3600, 1);
    let options = StoreConfig::default();
    let verdict = ratelimit::check_and_consume(&store, &key, &params, T0, &options).unwrap();
    assert!(verdict.allowed);
    let verdict = ratelimit::check_and_consume(&store, &key, &params, T0, &options).unwrap();
    assert!(!verdict.allowed);
}

// ---- store semantics and CAS loop ----

#[test]
fn memory_store_follows_envoy_semantics() {
    let store = MemoryStore::new();
    assert_eq!(store.get("k").unwrap(), None);
    // A missing key ignores CAS.
    assert_eq!(
        store.set("k", b"1", Some(12345)).unwrap(),
        CasOutcome::Written
    );
    let (value, cas) = store.get("k").unwrap().unwrap();
    assert_eq!(value, b"1");
    assert_eq!(
        store.set("k", b"2", Some(cas + 1)).unwrap(),
        CasOutcome::Conflict
    );
    assert_eq!(
        store.set("k", b"2", Some(cas)).unwrap(),
        CasOutcome::Written
    );
    assert_eq!(store.set("k", b"3", None).unwrap(), CasOutcome::Written);
    assert_eq!(store.get("k").unwrap().unwrap().0, b"3");
}

/// A store whose every write loses the race.
struct AlwaysContended(MemoryStore);

impl SharedStore for AlwaysContended {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.0.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<CasOutcome, StoreError> {
        match self.0.get(key)? {
            None => self.0.set(key, value, cas),
            Some(_) => Ok(CasOutcome::Conflict),
        }
    }
}

struct Broken;

impl SharedStore for Broken {
    fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Err(StoreError("host said no".into()))
    }
    fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<CasOutcome, StoreError> {
        Err(StoreError("host said no".into()))
    }
}

#[test]
fn contention_exhaustion_rejects_by_default() {
    let config = compiled("");
    let store = AlwaysContended(MemoryStore::new());
    let evaluation = engine::evaluate(
        &config,
        &request(Some("acme"), "GET", "/"),
        &host(T0),
        &store,
    );
    assert_eq!(status_of(&evaluation), 503);
    assert_eq!(
        evaluation.outcome,
        Outcome::Rejected(ProblemKind::RateLimitUnavailable)
    );
    assert!(evaluation.log.unwrap().contains("64 attempts"));
    let Decision::Reject(reply) = evaluation.decision else {
        panic!("expected a reject")
    };
    assert_eq!(header(&reply.headers, "retry-after"), Some("1"));
}

#[test]
fn contention_exhaustion_can_be_configured_to_allow() {
    let mut config = compiled("");
    config.store.on_exhausted = OnExhausted::Allow;
    let evaluation = engine::evaluate(
        &config,
        &request(Some("acme"), "GET", "/"),
        &host(T0),
        &Broken,
    );
    assert_eq!(status_of(&evaluation), 200);
    assert_eq!(evaluation.outcome, Outcome::AllowedWithoutLimit);
    assert!(evaluation.log.unwrap().contains("host said no"));
}

#[test]
fn store_failure_rejects_by_default() {
    let config = compiled("");
    let evaluation = engine::evaluate(
        &config,
        &request(Some("acme"), "GET", "/"),
        &host(T0),
        &Broken,
    );
    assert_eq!(status_of(&evaluation), 503);
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn exact_under_thread_contention() {
    use std::sync::Arc;
    let store = Arc::new(MemoryStore::new());
    let params = RateParams::new(50, 3600, 50);
    let options = StoreConfig {
        max_cas_retries: 1000,
        ..StoreConfig::default()
    };
    let admitted: usize = (0..64)
        .map(|_| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                (0..8)
                    .filter(|_| {
                        ratelimit::check_and_consume(
                            &*store,
                            "tg:rl:t:tenant",
                            &params,
                            T0,
                            &options,
                        )
                        .unwrap()
                        .allowed
                    })
                    .count()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .sum();
    assert_eq!(admitted, 50);
}

// ---- the request decision ----

#[test]
fn tenants_are_limited_independently() {
    let config = compiled("");
    let store = MemoryStore::new();
    let statuses: Vec<u32> = (0..5)
        .map(|_| {
            status_of(&engine::evaluate(
                &config,
                &request(Some("acme"), "GET", "/x"),
                &host(T0),
                &store,
            ))
        })
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let other = engine::evaluate(
        &config,
        &request(Some("globex"), "GET", "/x"),
        &host(T0),
        &store,
    );
    assert_eq!(status_of(&other), 200);
}

#[test]
fn route_limit_replaces_tenant_limit() {
    let config = compiled("");
    let store = MemoryStore::new();
    let post = |store: &MemoryStore| {
        status_of(&engine::evaluate(
            &config,
            &request(Some("acme"), "POST", "/orders?x=1"),
            &host(T0),
            store,
        ))
    };
    assert_eq!(post(&store), 200);
    assert_eq!(post(&store), 429);
    // The tenant-wide bucket is untouched by the route.
    let get = engine::evaluate(
        &config,
        &request(Some("acme"), "GET", "/orders"),
        &host(T0),
        &store,
    );
    assert_eq!(status_of(&get), 200);
    let Decision::Forward(forward) = get.decision else {
        panic!("expected forward")
    };
    assert_eq!(
        header(&forward.response_headers, "ratelimit"),
        Some("\"tenant\";r=2;t=1200")
    );
}

#[test]
fn rejection_carries_the_contract() {
    let config = compiled("");
    let store = MemoryStore::new();
    for _ in 0..3 {
        engine::evaluate(
            &config,
            &request(Some("acme"), "GET", "/"),
            &host(T0),
            &store,
        );
    }
    let evaluation = engine::evaluate(
        &config,
        &RequestView {
            correlation_header: Some("corr-1"),
            ..request(Some("acme"), "GET", "/")
        },
        &host(T0),
        &store,
    );
    assert_eq!(
        evaluation.outcome,
        Outcome::Rejected(ProblemKind::RateLimited)
    );
    let Decision::Reject(reply) = evaluation.decision else {
        panic!("expected a reject")
    };
    assert_eq!(reply.status, 429);
    assert_eq!(header(&reply.headers, "retry-after"), Some("1200"));
    assert_eq!(header(&reply.headers, "x-correlation-id"), Some("corr-1"));
    assert_eq!(
        header(&reply.headers, "content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        header(&reply.headers, "ratelimit-policy"),
        Some("\"tenant\";q=3;w=3600")
    );
    assert_eq!(
        header(&reply.headers, "ratelimit"),
        Some("\"tenant\";r=0;t=1200")
    );
    let count = |name: &str| reply.headers.iter().filter(|(n, _)| n == name).count();
    assert_eq!(count("x-correlation-id"), 1);
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["type"], "urn:tenant-guard:problem:rate-limited");
    assert_eq!(body["status"], 429);
    assert_eq!(body["correlation_id"], "corr-1");
    assert_eq!(body["tenant"], "acme");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("3 requests per 3600 s"));
}

#[test]
fn shadow_mode_never_rejects_but_reports() {
    let config = compiled("");
    let store = MemoryStore::new();
    let outcomes: Vec<Outcome> = (0..4)
        .map(|_| {
            engine::evaluate(
                &config,
                &request(Some("quiet"), "GET", "/"),
                &host(T0),
                &store,
            )
            .outcome
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Allowed,
            Outcome::Allowed,
            Outcome::ShadowOverLimit,
            Outcome::ShadowOverLimit
        ]
    );
    let evaluation = engine::evaluate(
        &config,
        &request(Some("quiet"), "GET", "/"),
        &host(T0),
        &store,
    );
    let Decision::Forward(forward) = evaluation.decision else {
        panic!("shadow mode rejected")
    };
    assert!(header(&forward.response_headers, "ratelimit")
        .unwrap()
        .contains("r=0"));
}

#[test]
fn tenant_resolution() {
    let config = compiled("");
    let store = MemoryStore::new();
    let status = |tenant: Option<&str>| {
        status_of(&engine::evaluate(
            &config,
            &request(tenant, "GET", "/"),
            &host(T0),
            &store,
        ))
    };
    assert_eq!(status(None), 400);
    assert_eq!(status(Some("")), 400);
    assert_eq!(status(Some("bad tenant")), 400);
    assert_eq!(status(Some(&"a".repeat(129))), 400);
    assert_eq!(status(Some("newcomer")), 200);

    let mut strict = compiled("");
    strict.tenant.unknown = config::UnknownTenant::Reject;
    let evaluation = engine::evaluate(
        &strict,
        &request(Some("newcomer"), "GET", "/"),
        &host(T0),
        &store,
    );
    assert_eq!(status_of(&evaluation), 403);
    assert_eq!(
        evaluation.outcome,
        Outcome::Rejected(ProblemKind::UnknownTenant)
    );

    let mut optional = compiled("");
    optional.tenant.required = false;
    let evaluation = engine::evaluate(&optional, &request(None, "GET", "/"), &host(T0), &store);
    assert_eq!(status_of(&evaluation), 200);
}

#[test]
fn forward_sets_upstream_and_response_headers() {
    let config = compiled("");
    let store = MemoryStore::new();
    let evaluation = engine::evaluate(
        &config,
        &RequestView {
            correlation_header: Some("bad id with spaces"),
            ..request(Some("acme"), "GET", "/")
        },
        &host(T0),
        &store,
    );
    let Decision::Forward(forward) = evaluation.decision else {
        panic!("expected forward")
    };
    let id = forward.correlation_id.clone();
    assert_eq!(id.len(), 36);
    assert_eq!(id.as_bytes()[14], b'7');
    assert_eq!(
        header(&forward.upstream_headers, "x-correlation-id"),
        Some(id.as_str())
    );
    assert_eq!(
        header(&forward.upstream_headers, "x-tenant-id"),
        Some("acme")
    );
    assert_eq!(
        header(&forward.upstream_headers, engine::REVISION_HEADER),
        Some("r7-abc")
    );
    assert_eq!(
        header(&forward.response_headers, "x-correlation-id"),
        Some(id.as_str())
    );
    assert_eq!(
        header(&forward.response_headers, "ratelimit-policy"),
        Some("\"tenant\";q=3;w=3600")
    );

    let mut quiet = compiled("");
    quiet.correlation.echo = false;
    let evaluation = engine::evaluate(
        &quiet,
        &request(Some("acme"), "GET", "/"),
        &host(T0),
        &store,
    );
    let Decision::Forward(forward) = evaluation.decision else {
        panic!("expected forward")
    };
    assert_eq!(header(&forward.response_headers, "x-correlation-id"), None);
    // Local replies carry the id even when echo is off.
    let evaluation = engine::evaluate(&quiet, &request(None, "GET", "/"), &host(T0), &store);
    let Decision::Reject(reply) = evaluation.decision else {
        panic!("expected a reject")
    };
    assert!(header(&reply.headers, "x-correlation-id").is_some());
}
