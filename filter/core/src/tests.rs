//! Unit tests of the core. They run natively (`cargo test`) and compiled to
//! wasm32 under wasm-bindgen-test (`tests/run-all.sh` runs both).

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use crate::config::{self, Mode, OnExhausted, StoreConfig};
use crate::correlation;
use crate::engine::{self, Decision, HostInputs, Outcome, RequestView};
use crate::problem::ProblemKind;
use crate::ratelimit::{self, RateParams, State};
use crate::store::{CasOutcome, HostSemantics, MemoryStore, SharedStore, StoreError};

const SECOND: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * SECOND;

thread_local! {
    /// The host [`new_store`] models; `crate::host_model_tests` reruns tests under ngx_wasm_module.
    static HOST: std::cell::Cell<HostSemantics> = const { std::cell::Cell::new(HostSemantics::Envoy) };
}

/// An empty store with the semantics of the host this test runs under.
pub(crate) fn new_store() -> MemoryStore {
    match HOST.with(std::cell::Cell::get) {
        HostSemantics::Envoy => MemoryStore::new(),
        HostSemantics::NgxWasm => MemoryStore::ngx_wasm(1 << 20, crate::store::Eviction::None),
    }
}

/// Runs `test` with [`new_store`] modelling `host`.
pub(crate) fn under_host(host: HostSemantics, test: fn()) {
    HOST.with(|cell| cell.set(host));
    test();
    HOST.with(|cell| cell.set(HostSemantics::Envoy));
}

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

/// [`config_json`] with `"headers":{"revision":false,"rate_limit":"on_reject"}`.
fn lean_config_json() -> String {
    config_json("").replacen(
        r#"{"version":1,"#,
        r#"{"version":1,"headers":{"revision":false,"rate_limit":"on_reject"},"#,
        1,
    )
}

fn parsed(document: &str) -> config::CompiledConfig {
    config::parse(document.as_bytes()).unwrap()
}

#[track_caller]
fn parse_error(document: &str) -> config::ConfigError {
    config::parse(document.as_bytes()).expect_err(document)
}

fn compiled(extra: &str) -> config::CompiledConfig {
    parsed(&config_json(extra))
}

fn host(now: u64) -> HostInputs {
    HostInputs {
        now_unix_ns: now,
        random: [7; 10],
    }
}

fn request<'a>(tenant: Option<&'a str>, method: &'a str, path: &'a str) -> RequestView<'a> {
    RequestView {
        method: method.as_bytes(),
        path: path.as_bytes(),
        tenant_header: tenant.map(str::as_bytes),
        ..RequestView::default()
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Asserts one header's value (`None`: the header is absent).
#[track_caller]
fn assert_header(headers: &[(String, String)], name: &str, expected: Option<&str>) {
    assert_eq!(header(headers, name), expected, "header {name}");
}

/// The RateLimit headers of acme's tenant bucket once its 3 requests are spent.
#[track_caller]
fn assert_acme_exhausted_headers(headers: &[(String, String)]) {
    assert_header(headers, "ratelimit-policy", Some("\"tenant\";q=3;w=3600"));
    assert_header(headers, "ratelimit", Some("\"tenant\";r=0;t=1200"));
}

fn status_of(evaluation: &engine::Evaluation) -> u32 {
    match &evaluation.decision {
        Decision::Forward(_) => 200,
        Decision::Reject(reply) => reply.status,
    }
}

/// [`engine::evaluate`] at [`T0`].
fn evaluate(
    config: &config::CompiledConfig,
    request: &RequestView<'_>,
    store: &dyn SharedStore,
) -> engine::Evaluation {
    engine::evaluate(config, request, &host(T0), store)
}

#[track_caller]
fn forwarded(evaluation: engine::Evaluation) -> engine::Forward {
    match evaluation.decision {
        Decision::Forward(forward) => forward,
        Decision::Reject(reply) => panic!("expected a forward, got {reply:?}"),
    }
}

#[track_caller]
fn rejected(evaluation: engine::Evaluation) -> engine::LocalReply {
    match evaluation.decision {
        Decision::Reject(reply) => reply,
        Decision::Forward(forward) => panic!("expected a reject, got {forward:?}"),
    }
}

fn problem_body(reply: &engine::LocalReply) -> serde_json::Value {
    serde_json::from_slice(&reply.body).unwrap()
}

fn problem_type(reply: &engine::LocalReply) -> String {
    problem_body(reply)["type"].as_str().unwrap().to_owned()
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
    assert_eq!(other.policy_for("GET", "/").unwrap().requests(), 100);
}

#[test]
fn a_config_reading_several_request_headers_reads_the_whole_map() {
    let limit = r#""rate_limit":{"requests":5,"per_seconds":60}"#;
    let header_mode = r#""tenant":{"trust_header_without_jwt":true}"#;
    let cases = [
        // Tenant and correlation headers only: two single reads are cheaper.
        (
            format!(r#"{{"version":1,{header_mode},"defaults":{{{limit}}}}}"#),
            2,
            false,
        ),
        // Plus a user and an API-key header that limits count by.
        (
            r#"{"version":1,"tenant":{"trust_header_without_jwt":true,"user_header":"x-user-id"},
                "defaults":{"rate_limits":[{"name":"u","requests":5,"per":"second","key":"user"},
                {"name":"k","requests":5,"per":"second","key":{"header":"x-api-key"}}]}}"#
                .to_owned(),
            4,
            true,
        ),
        // A route: the method, the path and the three method overrides.
        (
            format!(
                r#"{{"version":1,{header_mode},"tenants":{{"acme":{{{limit},"routes":[{{"prefix":"/o",{limit}}}]}}}}}}"#
            ),
            7,
            true,
        ),
    ];
    for (document, reads, whole) in cases {
        let config = parsed(&document);
        assert_eq!(config.request_header_reads(), reads, "{document}");
        assert_eq!(config.reads_whole_request_map(), whole, "{document}");
    }
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
        let err = parse_error(document);
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
    assert_eq!(parse_error(document).path, "tenants.a.routes.1.name");
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
        r#"{"version":1,"headers":{"rate_limit":"sometimes"}}"#,
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
    let jwt_sample = r#"{"version":1,"tenant":{"jwt":{"user_claim":"sub","leeway_seconds":30,
        "issuers":[{"iss":"https://idp","audiences":["api"],"jwks":{"keys":[
          {"kty":"oct","kid":"hs","alg":"HS256","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}}]}}}"#;
    let private = jwt_sample.replace(r#""alg":"HS256","#, r#""alg":"HS256","d":"secret","#);
    assert!(!validator.is_valid(&serde_json::from_str(&private).unwrap()));
    for sample in [
        config_json(""),
        lean_config_json(),
        IDEMPOTENT.to_owned(),
        IF_MATCH.to_owned(),
        jwt_sample.to_owned(),
    ] {
        let raw: serde_json::Value = serde_json::from_str(&sample).unwrap();
        assert!(validator.is_valid(&raw), "{sample}");
        let document = config::parse_document(sample.as_bytes()).unwrap();
        let reserialised = serde_json::to_value(&document).unwrap();
        assert!(validator.is_valid(&reserialised), "{reserialised}");
    }
}

// ---- correlation ----

#[test]
fn correlation_ids_kept_or_generated() {
    assert!(correlation::is_valid_id("abc-123_x.y:z".as_bytes()));
    assert!(correlation::is_valid_id("a".repeat(128).as_bytes()));
    assert!(!correlation::is_valid_id("a".repeat(129).as_bytes()));
    assert!(!correlation::is_valid_id("".as_bytes()));
    assert!(!correlation::is_valid_id("has space".as_bytes()));
    assert!(!correlation::is_valid_id("semi;colon".as_bytes()));
    assert_eq!(
        correlation::choose_id(Some(b"keep-me"), 0, [0; 10]),
        "keep-me"
    );
    let generated = correlation::choose_id(Some(b"bad id"), 0x0190_0000_0000, [0xff; 10]);
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
        let (verdict, new_tat) = ratelimit::decide(&params, tat.map(|t| state(&params, t)), T0);
        if verdict.allowed {
            admitted += 1;
        }
        tat = Some(new_tat);
    }
    assert_eq!(admitted, 2);
    let stored = tat.map(|t| state(&params, t));
    let (rejected, _) = ratelimit::decide(&params, stored, T0);
    assert!(!rejected.allowed);
    assert_eq!(rejected.retry_after_seconds, 5);
    assert_eq!(rejected.remaining, 0);
    // One emission interval later exactly one more passes.
    let (verdict, new_tat) = ratelimit::decide(&params, stored, T0 + 5 * SECOND);
    assert!(verdict.allowed);
    assert_eq!(verdict.remaining, 0);
    let (verdict, _) = ratelimit::decide(&params, Some(state(&params, new_tat)), T0 + 5 * SECOND);
    assert!(!verdict.allowed);
}

#[test]
fn gcra_reports_remaining_and_reset() {
    let params = RateParams::new(10, 60, 10);
    let (first, tat) = ratelimit::decide(&params, None, T0);
    assert!(first.allowed);
    assert_eq!(first.remaining, 9);
    assert_eq!(first.reset_seconds, 6);
    let (second, _) = ratelimit::decide(&params, Some(state(&params, tat)), T0);
    assert_eq!(second.remaining, 8);
    assert_eq!(second.reset_seconds, 12);
}

#[test]
fn burst_larger_than_rate() {
    let params = RateParams::new(1, 1, 5);
    let mut tat = None;
    let admitted = (0..10)
        .filter(|_| {
            let (verdict, new_tat) = ratelimit::decide(&params, tat.map(|t| state(&params, t)), T0);
            tat = Some(new_tat);
            verdict.allowed
        })
        .count();
    assert_eq!(admitted, 5);
}

fn state(params: &RateParams, tat_ns: u64) -> State {
    State {
        tat_ns,
        emission_ns: params.emission_ns(),
    }
}

/// Whether one request at [`T0`] passes `params` (and is counted).
fn admit(store: &dyn SharedStore, key: &str, params: &RateParams, options: &StoreConfig) -> bool {
    ratelimit::check_and_consume(store, key, params, T0, options)
        .unwrap()
        .allowed
}

#[test]
fn raising_a_limit_rescales_the_backlog() {
    let store = new_store();
    let key = ratelimit::state_key("acme", "tenant");
    let options = StoreConfig::default();
    let check = |params: &RateParams| admit(&store, &key, params, &options);
    let strict = RateParams::new(1, 3600, 1);
    assert!(check(&strict));
    assert!(!check(&strict));
    // The new limit counts the one request already admitted: 99 more pass, then 429.
    let generous = RateParams::new(100, 3600, 100);
    assert_eq!((0..150).filter(|_| check(&generous)).count(), 99);
    // Lowering it again keeps the tenant limited.
    assert!(!check(&strict));
}

#[test]
fn state_codec_rejects_garbage() {
    let sample = State {
        tat_ns: 42,
        emission_ns: 7,
    };
    assert_eq!(
        ratelimit::decode_state(&ratelimit::encode_state(sample)),
        Some(sample)
    );
    assert_eq!(ratelimit::decode_state(b""), None);
    assert_eq!(ratelimit::decode_state(b"not-a-tat"), None);
    assert_eq!(ratelimit::decode_state(&42u64.to_le_bytes()), None);
    assert_eq!(ratelimit::decode_state(&[1, 2, 3]), None);
}

#[test]
fn corrupted_state_is_treated_as_absent() {
    let store = new_store();
    let key = ratelimit::state_key("acme", "tenant");
    store.set(&key, Some(b"garbage!!"), 0).unwrap();
    let params = RateParams::new(1, 3600, 1);
    let options = StoreConfig::default();
    assert!(admit(&store, &key, &params, &options));
    assert!(!admit(&store, &key, &params, &options));
}

// ---- store semantics and CAS loop ----

#[test]
fn tag_cache_answers_what_key_tag_computes() {
    let mut cache = crate::store::TagCache::default();
    let long = "k".repeat(400);
    // Far more keys than slots, each asked twice (a miss, then a hit or a
    // miss after its slot was taken over), a long key that is never cached.
    let keys: Vec<String> = (0..3 * crate::store::TAG_CACHE_SLOTS)
        .map(|i| format!("tg:rl:tenant-{i}"))
        .chain([long, String::new()])
        .collect();
    for round in 0..2 {
        for key in &keys {
            let expected = crate::store::key_tag(key);
            assert_eq!(
                cache.tag_of(key.as_bytes(), &[]),
                expected,
                "{key} (round {round})"
            );
            // The same bytes given in two parts are the same key.
            let (head, rest) = key.as_bytes().split_at(key.len() / 2);
            assert_eq!(
                cache.tag_of(head, rest),
                expected,
                "{key} in two parts (round {round})"
            );
            // The thread's cache, which the request path uses, the same.
            assert_eq!(
                crate::store::cached_key_tag(key),
                expected,
                "{key} (round {round}, thread cache)"
            );
        }
    }
}

#[test]
fn memory_store_follows_envoy_semantics() {
    let store = MemoryStore::new();
    assert_eq!(store.get("k").unwrap(), None);
    // A missing key ignores CAS.
    assert_eq!(
        store.set("k", Some(b"1"), 12345).unwrap(),
        CasOutcome::Written
    );
    let (value, cas) = store.get("k").unwrap().unwrap();
    assert_eq!(value, b"1");
    assert_eq!(
        store.set("k", Some(b"2"), cas + 1).unwrap(),
        CasOutcome::Conflict
    );
    assert_eq!(
        store.set("k", Some(b"2"), cas).unwrap(),
        CasOutcome::Written
    );
    // CAS 0 is unconditional; a NULL value only empties.
    assert_eq!(store.set("k", Some(b"3"), 0).unwrap(), CasOutcome::Written);
    assert_eq!(store.get("k").unwrap().unwrap().0, b"3");
    assert_eq!(store.set("k", None, 0).unwrap(), CasOutcome::Written);
    assert_eq!(store.get("k").unwrap().unwrap().0, b"");
}

/// A store whose every write loses the race.
struct AlwaysContended(MemoryStore);

impl SharedStore for AlwaysContended {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.0.get(key)
    }
    fn set(&self, _: &str, _: Option<&[u8]>, _: u32) -> Result<CasOutcome, StoreError> {
        Ok(CasOutcome::Conflict)
    }
    fn semantics(&self) -> HostSemantics {
        self.0.semantics()
    }
}

struct Broken;

impl SharedStore for Broken {
    fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Err(StoreError("host said no".into()))
    }
    fn set(&self, _: &str, _: Option<&[u8]>, _: u32) -> Result<CasOutcome, StoreError> {
        Err(StoreError("host said no".into()))
    }
    fn semantics(&self) -> HostSemantics {
        HostSemantics::Envoy
    }
}

#[test]
fn contention_exhaustion_rejects_by_default() {
    let config = compiled("");
    let store = AlwaysContended(new_store());
    let evaluation = evaluate(&config, &request(Some("acme"), "GET", "/"), &store);
    assert_eq!(status_of(&evaluation), 503);
    assert_eq!(
        evaluation.outcome,
        Outcome::Rejected(ProblemKind::RateLimitUnavailable)
    );
    assert!(evaluation.log.as_deref().unwrap().contains("64 attempts"));
    assert_header(&rejected(evaluation).headers, "retry-after", Some("1"));
}

#[test]
fn contention_exhaustion_can_be_configured_to_allow() {
    let mut config = compiled("");
    config.store.on_exhausted = OnExhausted::Allow;
    let evaluation = evaluate(&config, &request(Some("acme"), "GET", "/"), &Broken);
    assert_eq!(status_of(&evaluation), 200);
    assert_eq!(evaluation.outcome, Outcome::AllowedWithoutLimit);
    assert!(evaluation.log.unwrap().contains("host said no"));
}

#[test]
fn store_failure_rejects_by_default() {
    let config = compiled("");
    let evaluation = evaluate(&config, &request(Some("acme"), "GET", "/"), &Broken);
    assert_eq!(status_of(&evaluation), 503);
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn exact_under_thread_contention() {
    use std::sync::Arc;
    let store = Arc::new(new_store());
    let params = RateParams::new(50, 3600, 50);
    let options = StoreConfig {
        max_cas_retries: 1000,
        ..StoreConfig::default()
    };
    let admitted: usize = (0..64)
        .map(|_| {
            let store = Arc::clone(&store);
            let options = options.clone();
            std::thread::spawn(move || {
                (0..8)
                    .filter(|_| admit(&*store, "tg:rl:t:tenant", &params, &options))
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
    let store = new_store();
    let status = |tenant| {
        status_of(&evaluate(
            &config,
            &request(Some(tenant), "GET", "/x"),
            &store,
        ))
    };
    let statuses: Vec<u32> = (0..5).map(|_| status("acme")).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(status("globex"), 200);
}

#[test]
fn route_limit_replaces_tenant_limit() {
    let config = compiled("");
    let store = new_store();
    let post = || {
        status_of(&evaluate(
            &config,
            &request(Some("acme"), "POST", "/orders?x=1"),
            &store,
        ))
    };
    assert_eq!(post(), 200);
    assert_eq!(post(), 429);
    // The tenant-wide bucket is untouched by the route.
    let get = evaluate(&config, &request(Some("acme"), "GET", "/orders"), &store);
    assert_eq!(status_of(&get), 200);
    assert_header(
        &forwarded(get).response_headers,
        "ratelimit",
        Some("\"tenant\";r=2;t=1200"),
    );
}

#[test]
fn rejection_carries_the_contract() {
    let config = compiled("");
    let store = new_store();
    for _ in 0..3 {
        evaluate(&config, &request(Some("acme"), "GET", "/"), &store);
    }
    let evaluation = evaluate(
        &config,
        &RequestView {
            correlation_header: Some(b"corr-1"),
            ..request(Some("acme"), "GET", "/")
        },
        &store,
    );
    assert_eq!(
        evaluation.outcome,
        Outcome::Rejected(ProblemKind::RateLimited)
    );
    let reply = rejected(evaluation);
    assert_eq!(reply.status, 429);
    assert_header(&reply.headers, "retry-after", Some("1200"));
    assert_header(&reply.headers, "x-correlation-id", Some("corr-1"));
    assert_header(
        &reply.headers,
        "content-type",
        Some("application/problem+json"),
    );
    assert_acme_exhausted_headers(&reply.headers);
    let count = |name: &str| reply.headers.iter().filter(|(n, _)| n == name).count();
    assert_eq!(count("x-correlation-id"), 1);
    let body = problem_body(&reply);
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
    let store = new_store();
    let quiet = || evaluate(&config, &request(Some("quiet"), "GET", "/"), &store);
    let outcomes: Vec<Outcome> = (0..4).map(|_| quiet().outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Allowed,
            Outcome::Allowed,
            Outcome::ShadowOverLimit,
            Outcome::ShadowOverLimit
        ]
    );
    let forward = forwarded(quiet());
    assert!(header(&forward.response_headers, "ratelimit")
        .unwrap()
        .contains("r=0"));
}

#[test]
fn tenant_resolution() {
    let config = compiled("");
    let store = new_store();
    let status =
        |tenant: Option<&str>| status_of(&evaluate(&config, &request(tenant, "GET", "/"), &store));
    assert_eq!(status(None), 400);
    assert_eq!(status(Some("")), 400);
    assert_eq!(status(Some("bad tenant")), 400);
    assert_eq!(status(Some(&"a".repeat(129))), 400);
    assert_eq!(status(Some("newcomer")), 200);

    let mut strict = compiled("");
    strict.tenant.unknown = config::UnknownTenant::Reject;
    let evaluation = evaluate(&strict, &request(Some("newcomer"), "GET", "/"), &store);
    assert_eq!(status_of(&evaluation), 403);
    assert_eq!(
        evaluation.outcome,
        Outcome::Rejected(ProblemKind::UnknownTenant)
    );

    let mut optional = compiled("");
    optional.tenant.required = false;
    let evaluation = evaluate(&optional, &request(None, "GET", "/"), &store);
    assert_eq!(status_of(&evaluation), 200);
}

#[test]
fn forward_sets_upstream_and_response_headers() {
    let config = compiled("");
    let store = new_store();
    let forward = forwarded(evaluate(
        &config,
        &RequestView {
            correlation_header: Some(b"bad id with spaces"),
            ..request(Some("acme"), "GET", "/")
        },
        &store,
    ));
    let id = forward.correlation_id.as_str();
    assert_eq!(id.len(), 36);
    assert_eq!(id.as_bytes()[14], b'7');
    let upstream = &forward.upstream_headers;
    assert_header(upstream, "x-correlation-id", Some(id));
    assert_header(upstream, "x-tenant-id", Some("acme"));
    assert_header(upstream, engine::REVISION_HEADER, Some("r7-abc"));
    let response = &forward.response_headers;
    assert_header(response, "x-correlation-id", Some(id));
    assert_header(response, "ratelimit-policy", Some("\"tenant\";q=3;w=3600"));

    let mut quiet = compiled("");
    quiet.correlation.echo = false;
    let forward = forwarded(evaluate(&quiet, &request(Some("acme"), "GET", "/"), &store));
    assert_header(&forward.response_headers, "x-correlation-id", None);
    // Local replies carry the id even when echo is off.
    let reply = rejected(evaluate(&quiet, &request(None, "GET", "/"), &store));
    assert!(header(&reply.headers, "x-correlation-id").is_some());
}

#[test]
fn informational_headers_can_be_trimmed() {
    let lean = parsed(&lean_config_json());
    let store = new_store();
    let responses: Vec<_> = ["acme", "acme", "acme", "acme", "quiet", "quiet", "quiet"]
        .into_iter()
        .map(|tenant| evaluate(&lean, &request(Some(tenant), "GET", "/"), &store))
        .collect();
    for (index, evaluation) in responses.iter().enumerate() {
        match &evaluation.decision {
            Decision::Forward(forward) => {
                assert_header(&forward.upstream_headers, engine::REVISION_HEADER, None);
                assert!(header(&forward.upstream_headers, "x-correlation-id").is_some());
                // Allowed and shadowed-over-limit responses carry no RateLimit headers.
                assert_header(&forward.response_headers, "ratelimit", None);
                assert_header(&forward.response_headers, "ratelimit-policy", None);
                assert!(index != 3, "the 4th acme request must be rejected");
            }
            Decision::Reject(reply) => {
                assert_eq!((index, reply.status), (3, 429));
                assert_acme_exhausted_headers(&reply.headers);
            }
        }
    }
    assert_eq!(responses[6].outcome, Outcome::ShadowOverLimit);
    assert!(config::parse(br#"{"version":1,"headers":{"rate_limit":"sometimes"}}"#).is_err());
}

// ---- If-Match ----

const IF_MATCH: &str = r#"{"version":1,"tenant":{"trust_header_without_jwt":true},
        "if_match":[{"prefix":"/orders"}]}"#;

#[test]
fn if_match_required_on_configured_routes() {
    let config = parsed(IF_MATCH);
    let store = new_store();
    let run = |method: &str, path: &str, if_match: bool| {
        evaluate(
            &config,
            &RequestView {
                if_match: if_match.then_some(&b"\"v1\""[..]),
                ..request(Some("acme"), method, path)
            },
            &store,
        )
    };
    let evaluation = run("PUT", "/orders/1", false);
    assert_eq!(status_of(&evaluation), 428);
    assert_eq!(
        problem_type(&rejected(evaluation)),
        "urn:tenant-guard:problem:precondition-required"
    );
    assert_eq!(status_of(&run("DELETE", "/orders/1", false)), 428);
    assert_eq!(status_of(&run("PUT", "/orders/1", true)), 200);
    assert_eq!(status_of(&run("GET", "/orders/1", false)), 200);
    assert_eq!(status_of(&run("PUT", "/carts/1", false)), 200);
    let bad = r#"{"version":1,"tenant":{"trust_header_without_jwt":true},"if_match":[{"prefix":"/o","methods":[]}]}"#;
    assert_eq!(parse_error(bad).path, "if_match.0.methods");
}

// ---- Idempotency-Key ----

use crate::engine::{IdempotencyStep, ResponseCapture};
use crate::idempotency::{self, Begin, Fingerprint, KeyError, StoreParams};

const IDEMPOTENT: &str = r#"{"version":1,"tenant":{"trust_header_without_jwt":true},
    "defaults":{"idempotency":{"ttl_seconds":60,"max_body_bytes":16}},
    "tenants":{"lax":{"idempotency":{"required":false}}}}"#;

#[test]
fn idempotency_key_parsing() {
    assert_eq!(idempotency::parse_key(b"\"abc-123\"").unwrap(), "abc-123");
    assert_eq!(idempotency::parse_key(b" \"a b\" ").unwrap(), "a b");
    assert_eq!(idempotency::parse_key(br#""q\"\\x""#).unwrap(), "q\"\\x");
    let long = format!("\"{}\"", "k".repeat(256));
    for (value, error) in [
        ("abc", KeyError::NotQuoted),
        ("\"\"", KeyError::Empty),
        ("\"a\"b\"", KeyError::NotQuoted),
        ("\"a\\nb\"", KeyError::BadCharacter),
        ("\"é\"", KeyError::BadCharacter),
        ("\"a\tb\"", KeyError::BadCharacter),
        (long.as_str(), KeyError::TooLong),
    ] {
        assert_eq!(
            idempotency::parse_key(value.as_bytes()),
            Err(error),
            "{value:?}"
        );
    }
    let max = format!("\"{}\"", "k".repeat(255));
    assert!(idempotency::parse_key(max.as_bytes()).is_ok());
}

/// The [`IDEMPOTENT`] config and an empty store, for [`Exchange::new`].
fn idempotent_setup() -> (config::CompiledConfig, MemoryStore) {
    (parsed(IDEMPOTENT), new_store())
}

/// Runs one idempotent request through the engine's steps one by one, each
/// against a store that answers at once (`crate::exchange_tests` drives the
/// same through the lifecycle state machine).
#[derive(Clone, Copy)]
struct Exchange<'a> {
    config: &'a config::CompiledConfig,
    store: &'a MemoryStore,
    tenant: &'a str,
    now: u64,
}

impl<'a> Exchange<'a> {
    /// Requests of tenant acme at [`T0`].
    fn new(config: &'a config::CompiledConfig, store: &'a MemoryStore) -> Self {
        Exchange {
            config,
            store,
            tenant: "acme",
            now: T0,
        }
    }

    /// The same requests, from another tenant.
    fn for_tenant(self, tenant: &'a str) -> Self {
        Exchange { tenant, ..self }
    }

    /// The same requests, `seconds` later.
    fn after(self, seconds: u64) -> Self {
        Exchange {
            now: self.now + seconds * SECOND,
            ..self
        }
    }

    fn headers(&self, key: Option<&str>, method: &str, path: &str) -> engine::Evaluation {
        engine::evaluate(
            self.config,
            &RequestView {
                idempotency_key: key.map(str::as_bytes),
                ..request(Some(self.tenant), method, path)
            },
            &host(self.now),
            self.store,
        )
    }

    /// Returns the step after headers and (if needed) body.
    fn send(&self, key: &str, method: &str, path: &str, body: &[u8]) -> IdempotencyStep {
        let forward = forwarded(self.headers(Some(key), method, path));
        let pending = forward.idempotency.clone().expect("idempotent request");
        let view = request(Some(self.tenant), method, path);
        let begin = |body: Option<&[u8]>| {
            engine::begin_idempotent(
                self.config,
                &pending,
                &view,
                body,
                &forward,
                &host(self.now),
                self.store,
            )
        };
        match begin(body.is_empty().then_some(&[][..])) {
            IdempotencyStep::Proceed(claim) if !body.is_empty() => {
                engine::seal_idempotent(self.config, &claim, body, self.store).unwrap();
                IdempotencyStep::Proceed(claim)
            }
            IdempotencyStep::AwaitBody => begin(Some(body)),
            other => other,
        }
    }

    fn respond(&self, key: &str, step: &IdempotencyStep, status: u16, body: &[u8]) {
        let claim = claim_of(step);
        let pending = forwarded(self.headers(Some(key), "POST", "/pay"))
            .idempotency
            .unwrap();
        let mut capture = ResponseCapture::new(
            self.config,
            &pending,
            status,
            vec![
                ("content-type".into(), "application/json".into()),
                ("x-correlation-id".into(), "old".into()),
                ("transfer-encoding".into(), "chunked".into()),
                ("etag".into(), "\"v1\"".into()),
            ],
        );
        capture.push_body(body);
        engine::finish_idempotent(self.config, &pending, claim, capture, self.now, self.store)
            .unwrap();
    }
}

#[track_caller]
fn claim_of(step: &IdempotencyStep) -> &idempotency::Claim {
    match step {
        IdempotencyStep::Proceed(claim) => claim,
        other => panic!("expected a claim, got {other:?}"),
    }
}

#[track_caller]
fn assert_proceeds(step: &IdempotencyStep) {
    assert!(
        matches!(step, IdempotencyStep::Proceed(_)),
        "expected a claim, got {step:?}"
    );
}

#[track_caller]
fn reply_of(step: IdempotencyStep) -> (engine::LocalReply, Outcome) {
    match step {
        IdempotencyStep::Reply(reply, outcome) => (reply, outcome),
        other => panic!("expected a local reply, got {other:?}"),
    }
}

#[test]
fn idempotency_header_rules() {
    let (config, store) = idempotent_setup();
    let exchange = Exchange::new(&config, &store);
    assert_eq!(status_of(&exchange.headers(None, "POST", "/pay")), 400);
    let malformed = exchange.headers(Some("unquoted"), "POST", "/pay");
    assert_eq!(status_of(&malformed), 400);
    assert_eq!(
        problem_type(&rejected(malformed)),
        "urn:tenant-guard:problem:idempotency-key-malformed"
    );
    // Methods outside the configured set are untouched.
    assert!(forwarded(exchange.headers(None, "GET", "/pay"))
        .idempotency
        .is_none());
    // Tenants where the key is optional pass without one.
    let optional = exchange.for_tenant("lax").headers(None, "POST", "/pay");
    assert_eq!(status_of(&optional), 200);
}

#[test]
fn idempotent_replay_conflict_and_release() {
    let (config, store) = idempotent_setup();
    let exchange = Exchange::new(&config, &store);

    let first = exchange.send("\"k1\"", "POST", "/pay", b"amount=1");
    assert_proceeds(&first);
    // While in flight: 409 from the headers alone, whatever the body.
    let (reply, _) = reply_of(exchange.send("\"k1\"", "POST", "/pay", b"amount=1"));
    assert_eq!(reply.status, 409);
    assert_eq!(
        problem_type(&reply),
        "urn:tenant-guard:problem:idempotency-key-in-flight"
    );

    exchange.respond("\"k1\"", &first, 201, b"{\"id\":7}");
    let (replayed, outcome) = reply_of(exchange.send("\"k1\"", "POST", "/pay", b"amount=1"));
    assert_eq!(outcome, Outcome::Replayed);
    assert_eq!(replayed.status, 201);
    assert_eq!(replayed.body, b"{\"id\":7}");
    assert_eq!(
        header(&replayed.headers, "idempotent-replayed"),
        Some("true")
    );
    assert_eq!(header(&replayed.headers, "etag"), Some("\"v1\""));
    assert_eq!(header(&replayed.headers, "transfer-encoding"), None);
    // The replay carries this request's correlation id, once.
    let ids: Vec<_> = replayed
        .headers
        .iter()
        .filter(|(n, _)| n == "x-correlation-id")
        .collect();
    assert_eq!(ids.len(), 1);
    assert_ne!(ids[0].1, "old");

    // Same key, different body or path: 422.
    let (reply, _) = reply_of(exchange.send("\"k1\"", "POST", "/pay", b"amount=2"));
    assert_eq!(reply.status, 422);
    let (reply, _) = reply_of(exchange.send("\"k1\"", "POST", "/other", b"amount=1"));
    assert_eq!(reply.status, 422);

    // Keys are scoped by tenant.
    let globex = exchange.for_tenant("globex");
    assert_proceeds(&globex.send("\"k1\"", "POST", "/pay", b"amount=1"));

    // Upstream 5xx releases the key: the retry goes through.
    let failing = exchange.send("\"k2\"", "POST", "/pay", b"x");
    exchange.respond("\"k2\"", &failing, 503, b"down");
    assert_proceeds(&exchange.send("\"k2\"", "POST", "/pay", b"x"));

    // After the TTL the key is new again.
    let later = exchange.after(61);
    assert_proceeds(&later.send("\"k1\"", "POST", "/pay", b"amount=2"));
}

#[test]
fn oversized_responses_are_not_replayable() {
    let (config, store) = idempotent_setup();
    let exchange = Exchange::new(&config, &store);
    let first = exchange.send("\"big\"", "POST", "/pay", b"");
    exchange.respond("\"big\"", &first, 200, &[b'x'; 17]);
    let (reply, _) = reply_of(exchange.send("\"big\"", "POST", "/pay", b""));
    assert_eq!(reply.status, 409);
    assert_eq!(
        problem_type(&reply),
        "urn:tenant-guard:problem:idempotency-response-not-replayable"
    );
}

#[test]
fn abandoned_claims_are_released_and_lapse() {
    let (config, store) = idempotent_setup();
    let exchange = Exchange::new(&config, &store);
    let first = exchange.send("\"r\"", "POST", "/pay", b"");
    engine::abandon_idempotent(&config, claim_of(&first), &store).unwrap();
    assert_proceeds(&exchange.send("\"r\"", "POST", "/pay", b""));
    // A claim whose request never finishes lapses after the in-flight timeout (60 s).
    assert_proceeds(&exchange.after(61).send("\"r\"", "POST", "/pay", b""));
}

fn store_params(buckets: u32, max_cas_retries: u32) -> StoreParams {
    StoreParams {
        buckets,
        max_cas_retries,
        tenant_slots: u32::MAX,
        tenant_bucket_slots: idempotency::SLOTS_PER_BUCKET as u8,
    }
}

/// [`idempotency::begin`] for tenant "t" with a 60 s in-flight timeout.
fn begin(
    store: &dyn SharedStore,
    params: &StoreParams,
    key: &str,
    fingerprint: Fingerprint,
    now: u64,
    generation: u32,
) -> Begin {
    let lifetimes = idempotency::Lifetimes {
        in_flight_timeout_seconds: 60,
        ttl_seconds: 60,
        pooled_share: false,
    };
    idempotency::begin(
        store,
        params,
        "t",
        key,
        fingerprint,
        lifetimes,
        now,
        generation,
    )
    .unwrap()
}

#[test]
fn idempotency_store_is_bounded_and_reclaimed() {
    let store = new_store();
    let params = store_params(2, 64);
    let fingerprint = Fingerprint::of("POST", "/", Some(b""));
    let mut claimed = 0;
    let mut full = 0;
    for i in 0..64 {
        match begin(&store, &params, &format!("k{i}"), fingerprint, T0, i + 1) {
            Begin::Claimed(claim) => {
                claimed += 1;
                let response = idempotency::StoredResponse {
                    status: 200,
                    headers: vec![],
                    body: vec![b'x'; 100],
                };
                idempotency::complete(&store, &params, &claim, Some(&response), 200, 10, T0)
                    .unwrap();
            }
            Begin::Full {
                retry_after_seconds,
            } => {
                full += 1;
                assert_eq!(retry_after_seconds, 10);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(claimed, 2 * idempotency::SLOTS_PER_BUCKET);
    assert_eq!(full, 64 - claimed);
    let keys_after_fill = store.len();
    // Buckets, responses and the tenant's share ledger.
    assert!(keys_after_fill <= 3 + 2 * idempotency::SLOTS_PER_BUCKET);

    // Expired: reclaim empties the stored responses and frees the slots.
    let later = T0 + 11 * SECOND;
    let freed = idempotency::reclaim(&store, 0..2, later).unwrap();
    assert_eq!(freed.reclaimed, u32::try_from(claimed).unwrap());
    for bucket in 0..2 {
        for slot in 0..8u8 {
            if let Some((value, _)) = store.get(&idempotency::response_key(bucket, slot)).unwrap() {
                assert!(value.is_empty(), "response {bucket}/{slot} not emptied");
            }
        }
    }
    // New keys reuse the same storage keys: nothing grows.
    for i in 100..116 {
        let begun = begin(&store, &params, &format!("k{i}"), fingerprint, later, i);
        assert!(matches!(begun, Begin::Claimed(_) | Begin::Full { .. }));
    }
    assert!(store.len() <= keys_after_fill);
    // Reclaim is idempotent.
    assert_eq!(
        idempotency::reclaim(&store, 0..2, later).unwrap().reclaimed,
        0
    );
}

#[test]
fn corrupted_idempotency_records_read_as_empty() {
    let store = new_store();
    let params = store_params(1, 64);
    store
        .set(&idempotency::bucket_key(0), Some(b"\xB1\x09garbage"), 0)
        .unwrap();
    let fingerprint = Fingerprint::of("POST", "/", Some(b""));
    assert!(matches!(
        begin(&store, &params, "k", fingerprint, T0, 5),
        Begin::Claimed(_)
    ));
    store
        .set(&idempotency::response_key(0, 0), Some(b"\xB2\x01"), 0)
        .unwrap();
    // A completed entry whose response record is corrupt is reported as not replayable.
    let Begin::Claimed(claim) = begin(&store, &params, "k2", fingerprint, T0, 9) else {
        panic!()
    };
    idempotency::complete(&store, &params, &claim, None, 200, 60, T0).unwrap();
    assert!(matches!(
        begin(&store, &params, "k2", fingerprint, T0, 11),
        Begin::NotReplayable { status: 200 }
    ));
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn one_claim_per_key_under_thread_contention() {
    use std::sync::Arc;
    let store = Arc::new(new_store());
    let params = store_params(4, 1000);
    let fingerprint = Fingerprint::of("POST", "/", Some(b"same"));
    let claims: usize = (0..50)
        .map(|i| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let begun = begin(&*store, &params, "storm", fingerprint, T0, i + 1);
                usize::from(matches!(begun, Begin::Claimed(_)))
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .sum();
    assert_eq!(claims, 1);
}

// ---- JWT identity in the request decision ----

mod identity {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::{
        assert_header, evaluate, forwarded, header, new_store, parse_error, parsed, problem_type,
        request, status_of, T0,
    };
    use crate::config;
    use crate::engine::{self, Decision, RequestView};
    use jwt_simple::prelude::*;
    use jwt_simple::reexports::ct_codecs::Encoder;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-tenant-guard";

    fn config(required: bool) -> config::CompiledConfig {
        let k = jwt_simple::reexports::ct_codecs::Base64UrlSafeNoPadding::encode_to_string(SECRET)
            .unwrap();
        let document = format!(
            r#"{{"version":1,"tenant":{{"jwt":{{"required":{required},"user_claim":"sub",
                "issuers":[{{"iss":"https://idp.example","audiences":["api"],
                "jwks":{{"keys":[{{"kty":"oct","kid":"hs","alg":"HS256","k":"{k}"}}]}}}}]}}}},
              "tenants":{{"acme":{{"rate_limit":{{"requests":5,"per_seconds":60}}}}}}}}"#
        );
        parsed(&document)
    }

    /// An `Authorization` value carrying a token for `tenant` (and user `sub`).
    fn bearer(tenant: &str, sub: Option<&str>) -> String {
        let key = HS256Key::from_bytes(SECRET).with_key_id("hs");
        let mut custom = serde_json::Map::new();
        custom.insert("tenant_id".into(), tenant.into());
        if let Some(sub) = sub {
            custom.insert("sub".into(), sub.into());
        }
        let claims = Claims::with_custom_claims(custom, Duration::from_secs(600))
            .with_issuer("https://idp.example")
            .with_audience("api");
        let mut claims = claims;
        claims.issued_at = Some(UnixTimeStamp::from_secs(T0 / 1_000_000_000));
        claims.expires_at = Some(UnixTimeStamp::from_secs(T0 / 1_000_000_000 + 600));
        claims.invalid_before = None;
        format!("Bearer {}", key.authenticate(claims).unwrap())
    }

    fn run(
        config: &config::CompiledConfig,
        authorization: Option<&str>,
        tenant_header: Option<&str>,
    ) -> engine::Evaluation {
        evaluate(
            config,
            &RequestView {
                authorization: authorization.map(str::as_bytes),
                ..request(tenant_header, "GET", "/")
            },
            &new_store(),
        )
    }

    #[test]
    pub(super) fn tenant_comes_from_the_token() {
        let config = config(true);
        let alice = bearer("acme", Some("alice"));
        let forward = forwarded(run(&config, Some(&alice), None));
        assert_eq!(forward.tenant.as_deref(), Some("acme"));
        assert_header(&forward.upstream_headers, "x-tenant-id", Some("acme"));
        assert_header(&forward.upstream_headers, "x-user-id", Some("alice"));
        assert_eq!(forward.removed_upstream_headers, ["x-org-id"]);
        // The matching tenant header is fine; a different one is refused.
        assert_eq!(status_of(&run(&config, Some(&alice), Some("acme"))), 200);
        let mismatch = run(&config, Some(&alice), Some("globex"));
        assert_eq!(status_of(&mismatch), 403);
        // Without a user claim, an incoming user header cannot survive.
        let anonymous = bearer("acme", None);
        let forward = forwarded(run(&config, Some(&anonymous), None));
        assert!(forward
            .removed_upstream_headers
            .contains(&"x-user-id".to_owned()));
    }

    #[test]
    pub(super) fn missing_or_bad_tokens_get_401_with_a_challenge() {
        let config = config(true);
        for (authorization, expect_error) in [
            (None, false),
            (Some("Basic abc"), true),
            (Some("Bearer not.a.jwt"), true),
        ] {
            let evaluation = run(&config, authorization, Some("acme"));
            let Decision::Reject(reply) = evaluation.decision else {
                panic!("{authorization:?} accepted")
            };
            assert_eq!(reply.status, 401);
            let challenge = header(&reply.headers, "www-authenticate").unwrap();
            assert!(challenge.starts_with("Bearer realm=\"tenant-guard\""));
            assert_eq!(
                challenge.contains("error=\"invalid_token\""),
                expect_error,
                "{challenge}"
            );
            assert_eq!(
                problem_type(&reply),
                "urn:tenant-guard:problem:unauthenticated"
            );
        }
    }

    #[test]
    pub(super) fn optional_tokens_fall_back_to_the_trusted_header() {
        let mut lax = config(false);
        assert_eq!(status_of(&run(&lax, None, Some("acme"))), 401);
        lax.tenant.trust_header_without_jwt = true;
        assert_eq!(status_of(&run(&lax, None, Some("acme"))), 200);
    }

    #[test]
    fn jwt_config_errors_carry_the_full_path() {
        let document = r#"{"version":1,"tenant":{"jwt":{"issuers":[{"iss":"x","audiences":["a"],
            "jwks":{"keys":[{"kty":"oct","k":"c2hvcnQ"}]}}]}}}"#;
        let err = parse_error(document);
        assert!(
            err.path.starts_with("tenant.jwt.issuers.0.jwks.keys.0"),
            "{err}"
        );
    }
}

#[test]
fn metrics_switch_and_store_namespace() {
    let on = compiled("");
    assert!(on.metrics);
    let document = r#"{"version":1,"metrics":false,"tenant":{"trust_header_without_jwt":true},
        "store":{"namespace":"tenant_guard"}}"#;
    let off = parsed(document);
    assert!(!off.metrics);
    assert_eq!(off.store.namespace.as_deref(), Some("tenant_guard"));
    // A rejected document still says whether metrics may be touched.
    assert!(!config::metrics_requested(
        br#"{"version":9,"metrics":false}"#
    ));
    assert!(config::metrics_requested(br#"{"version":9}"#));
    assert!(config::metrics_requested(b"garbage"));
    let bad = r#"{"version":1,"tenant":{"trust_header_without_jwt":true},"store":{"namespace":"Bad/Zone"}}"#;
    assert_eq!(parse_error(bad).path, "store.namespace");
}

/// Runs each named test function of the invoking module's parent under
/// one host model: `under_host_models!(envoy: Envoy: test_a, test_b);`
/// inside a `mod under_hosts` of the test file.
macro_rules! under_host_models {
    ($module:ident: $host:ident: $($name:ident),* $(,)?) => {
        mod $module {
            #[cfg(target_arch = "wasm32")]
            use wasm_bindgen_test::wasm_bindgen_test as test;
            $(
                #[test]
                fn $name() {
                    crate::tests::under_host(
                        crate::store::HostSemantics::$host,
                        super::super::$name,
                    );
                }
            )*
        }
    };
}

#[path = "host_model_tests.rs"]
mod host_model;

#[path = "limits_tests.rs"]
mod limits_model;

#[path = "usage_tests.rs"]
mod usage;
