//! The filter on the real Kong Wasm engine: an nginx built with ngx_wasm_module
//! (`TG_NGX_WASM_NGINX=/path/to/nginx`), two workers sharing one `shm_kv` zone,
//! proxying to a local backend. Without the variable every test returns after
//! one SKIPPED line: the only skip in the project, because no such nginx ships
//! with the repository.
//!
//! The backend counts complete requests per path and can hold a path's requests
//! until the test releases them, so "in flight" is a state the test waits for,
//! not a race it hopes to win.
#![cfg(test)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use jwt_simple::prelude::*;
use serde_json::{json, Value};
use tenant_guard_e2e::backend::{seen, Backend, MARKER};
use tenant_guard_e2e::config::PluginConfig;
use tenant_guard_e2e::expect::{assert_problem, assert_upstream};
use tenant_guard_e2e::http::Response;
use tenant_guard_e2e::nginx::{nginx_or_skip, Nginx, Server};
use tenant_guard_e2e::tokens::{acme_claims, b64, now_secs, AUD, ISS};
use tenant_guard_e2e::wait::wait_until;
use tenant_guard_e2e::Conn;

const SUITE: &str = "kong_engine";
const CORRELATION: &str = "x-correlation-id";
const TENANT: &str = "x-tenant-id";
const KEY: &str = "idempotency-key";
const REPLAYED: &str = "idempotent-replayed";
const WORKER: &str = "x-nginx-worker";

// ------------------------------------------------------------------ helpers

fn nginx(binary: &Path, config: &Value, backend: &Backend) -> Nginx {
    Nginx::start_one(binary, &config.to_string(), backend.port())
}

/// Header-trusted tenants with no rate limit at all (for the cases that must
/// not depend on shared data).
fn unlimited_config(revision: &str) -> Value {
    let mut config = PluginConfig::new(revision).value().clone();
    if let Some(defaults) = config["defaults"].as_object_mut() {
        defaults.remove("rate_limit");
    }
    config
}

fn idempotency_config(revision: &str) -> Value {
    let mut config = PluginConfig::new(revision)
        .default_limit(1_000_000, 3600)
        .value()
        .clone();
    config["defaults"]["idempotency"] = json!({
        "methods": ["POST", "PATCH"],
        "required": true,
        "ttl_seconds": 86400,
        "max_body_bytes": 65536,
        "in_flight_timeout_seconds": 60
    });
    config
}

/// Lower-case UUIDv7 (8-4-4-4-12 hex, version 7, RFC 9562 variant).
fn is_uuidv7(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
        && b[14] == b'7'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

/// `(remaining, reset)` from the RateLimit header, asserting RateLimit and
/// RateLimit-Policy are each present exactly once with the expected quota.
fn assert_ratelimit_headers(response: &Response, quota: u64, window: u64) -> (u64, u64) {
    let policy = response.header_once("ratelimit-policy");
    assert_eq!(
        policy,
        format!("\"tenant\";q={quota};w={window}"),
        "{response:?}"
    );
    let limit = response.header_once("ratelimit");
    let param = |key: &str| {
        limit
            .split(';')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .and_then(|(_, v)| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("ratelimit {limit:?}: no {key}"))
    };
    assert!(limit.starts_with("\"tenant\";"), "ratelimit {limit:?}");
    (param("r"), param("t"))
}

// ------------------------------------------------------------------ correlation, tenant

#[test]
fn correlation_id_is_kept_generated_forwarded_and_echoed_once() {
    let Some(bin) = nginx_or_skip(SUITE) else {
        return;
    };
    let backend = Backend::start();
    let nginx = nginx(&bin, &unlimited_config("r-corr"), &backend);

    for valid in ["abc-123.X:y_z", "0", &"a".repeat(128)] {
        let response = nginx.get("/corr", &[(TENANT, "acme"), (CORRELATION, valid)]);
        assert_upstream(&response, "/corr");
        assert_eq!(response.header_once(CORRELATION), valid);
        assert_eq!(
            seen(&backend.last_headers("/corr"), CORRELATION),
            vec![valid]
        );
    }
    let mut generated = HashSet::new();
    for invalid in [
        None,
        Some("has space"),
        Some("semi;colon"),
        Some(&*"b".repeat(129)),
    ] {
        let mut headers = vec![(TENANT, "acme")];
        headers.extend(invalid.map(|v| (CORRELATION, v)));
        let response = nginx.get("/corr", &headers);
        assert_upstream(&response, "/corr");
        let echoed = response.header_once(CORRELATION).to_string();
        assert!(is_uuidv7(&echoed), "{invalid:?} → {echoed:?}");
        assert_eq!(
            seen(&backend.last_headers("/corr"), CORRELATION),
            vec![echoed.clone()]
        );
        assert!(generated.insert(echoed), "a generated id repeated");
    }
    // A local reply (400) echoes a kept id once and a generated one once.
    let kept = nginx.get("/corr", &[(CORRELATION, "corr-400")]);
    assert_eq!(
        assert_problem(&kept, 400, "tenant-required")["correlation_id"],
        "corr-400"
    );
    let fresh = nginx.get("/corr", &[]);
    assert_problem(&fresh, 400, "tenant-required");
    assert!(is_uuidv7(fresh.header_once(CORRELATION)));
    assert_eq!(backend.completed("/corr"), 7);
}

#[test]
fn missing_or_malformed_tenant_is_a_400_problem() {
    let Some(bin) = nginx_or_skip(SUITE) else {
        return;
    };
    let backend = Backend::start();
    let nginx = nginx(&bin, &unlimited_config("r-tenant"), &backend);

    let response = nginx.get("/t", &[(TENANT, "acme")]);
    assert_upstream(&response, "/t");
    assert_eq!(seen(&backend.last_headers("/t"), TENANT), vec!["acme"]);
    assert_eq!(
        seen(&backend.last_headers("/t"), "x-tenant-guard-revision"),
        vec!["r-tenant"]
    );
    let missing = nginx.get("/t", &[]);
    let body = assert_problem(&missing, 400, "tenant-required");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    for malformed in ["acme/evil", "has space", &"t".repeat(129)] {
        assert_problem(
            &nginx.get("/t", &[(TENANT, malformed)]),
            400,
            "invalid-tenant",
        );
    }
    assert_eq!(
        backend.completed("/t"),
        1,
        "rejected requests reached upstream"
    );
}

// ------------------------------------------------------------------ rate limits

#[test]
fn the_limit_model_holds_across_workers_plans_windows_users_and_key_tables() {
    let Some(bin) = nginx_or_skip(SUITE) else {
        return;
    };
    let backend = Backend::start();
    let config = tenant_guard_e2e::limit_model::config(json!({ "key_slots": 1 }));
    let nginx = nginx(&bin, &config, &backend);
    let ports = [nginx.port()];
    tenant_guard_e2e::limit_model::plan_windows(&ports, &backend);
    tenant_guard_e2e::limit_model::per_user(&ports, &backend);
    tenant_guard_e2e::limit_model::all_or_nothing_under_concurrency(&ports, &backend);
    tenant_guard_e2e::limit_model::key_table_full(nginx.port(), &backend);
    assert!(
        nginx.wait_for_log(
            "calendar quotas (day, week, month) of 3 tenant(s)",
            1,
            Duration::from_secs(10)
        ),
        "the local-mode quota warning: {}",
        nginx.error_log_tail(20)
    );
}

#[test]
fn costs_reported_usage_and_in_flight_caps_hold_on_the_engine() {
    let Some(bin) = nginx_or_skip(SUITE) else {
        return;
    };
    let backend = Backend::start();
    tenant_guard_e2e::costs::prepare(&backend);
    let config = tenant_guard_e2e::costs::config(json!({}));
    let nginx = nginx(&bin, &config, &backend);
    let ports = [nginx.port()];
    tenant_guard_e2e::costs::costly_route(&ports, &backend);
    tenant_guard_e2e::costs::reported_usage(&ports, &backend);
    tenant_guard_e2e::costs::garbage_usage_is_ignored(&ports, &backend);
    tenant_guard_e2e::costs::in_flight_cap(nginx.port(), &backend);
    assert!(
        nginx.wait_for_log("held no valid usage", 1, Duration::from_secs(10)),
        "the malformed usage is logged: {}",
        nginx.error_log_tail(20)
    );
}

#[test]
fn over_limit_is_429_with_ratelimit_headers_exactly_once() {
    let Some(bin) = nginx_or_skip(SUITE) else {
        return;
    };
    let backend = Backend::start();
    let config = PluginConfig::new("r-429")
        .tenant_limit("alpha", 3, 3600)
        .tenant_limit("beta", 1000, 3600);
    let nginx = nginx(&bin, config.value(), &backend);
    let mut conn = nginx.conn();

    let mut remaining = Vec::new();
    for _ in 0..3 {
        let response = conn.get("/a", &[(TENANT, "alpha")]);
        assert_upstream(&response, "/a");
        remaining.push(assert_ratelimit_headers(&response, 3, 3600).0);
    }
    assert_eq!(remaining, vec![2, 1, 0]);
    for _ in 0..2 {
        let limited = conn.get("/a", &[(TENANT, "alpha"), (CORRELATION, "corr-429")]);
        let body = assert_problem(&limited, 429, "rate-limited");
        assert_eq!(body["correlation_id"], "corr-429");
        let retry_after: u64 = limited
            .header_once("retry-after")
            .parse()
            .unwrap_or_else(|e| panic!("retry-after: {e}: {limited:?}"));
        assert!(
            (1..=3600).contains(&retry_after),
            "retry-after {retry_after}"
        );
        let (r, t) = assert_ratelimit_headers(&limited, 3, 3600);
        assert_eq!(r, 0);
        assert!((1..=3600).contains(&t), "t={t}");
        let beta = conn.get("/b", &[(TENANT, "beta")]);
        assert_upstream(&beta, "/b");
        assert!(assert_ratelimit_headers(&beta, 1000, 3600).0 >= 990);
    }
    assert_eq!(
        backend.completed("/a"),
        3,
        "only admitted requests reach upstream"
    );
    assert_eq!(backend.completed("/b"), 2);
}

#[test]
fn limit_is_exact_across_two_workers() {
    const LIMIT: u64 = 20;
    const CLIENTS: usize = 32;
    const TOTAL: usize = 200;
    let Some(bin) = nginx_or_skip(SUITE) else {
        return;
    };
    let backend = Backend::start();
    let config = PluginConfig::new("r-exact").tenant_limit("hammer", LIMIT, 3600);
    let server = Server::root(&config.to_json()).reuseport();
    let nginx = Nginx::start(&bin, &[server], backend.port()).unwrap_or_else(|e| panic!("{e}"));

    let port = nginx.port();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let barrier = Arc::clone(&barrier);
            // 200 over 32 clients: the first 8 send 7, the rest 6.
            let count = TOTAL / CLIENTS + usize::from(client < TOTAL % CLIENTS);
            std::thread::spawn(move || {
                let mut conn = Conn::new(port);
                barrier.wait();
                (0..count)
                    .map(|_| {
                        let r = conn
                            .request("GET", "/hammer", &[(TENANT, "hammer")], b"")
                            .unwrap_or_else(|e| panic!("request failed: {e}"));
                        (r.status, r.header(WORKER).map(str::to_string))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<(u16, Option<String>)> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread panicked"))
        .collect();
    let admitted = results.iter().filter(|(s, _)| *s == 200).count() as u64;
    let limited = results.iter().filter(|(s, _)| *s == 429).count() as u64;
    let mut per_worker: HashMap<String, u64> = HashMap::new();
    for (_, worker) in &results {
        *per_worker
            .entry(worker.clone().unwrap_or_default())
            .or_default() += 1;
    }
    println!(
        "kong exactness: admitted {admitted} of limit {LIMIT}, {limited} × 429, from {} requests \
         ({CLIENTS} clients); per worker pid {per_worker:?}; upstream {}",
        results.len(),
        backend.completed("/hammer")
    );
    assert_eq!(results.len(), TOTAL);
    assert_eq!(
        admitted + limited,
        TOTAL as u64,
        "unexpected statuses: {results:?}"
    );
    assert_eq!(admitted, LIMIT, "admitted must equal the limit exactly");
    assert_eq!(backend.completed("/hammer"), LIMIT);
    assert!(
        per_worker.len() >= 2 && !per_worker.contains_key(""),
        "both workers must have answered: {per_worker:?}"
    );
}

// ------------------------------------------------------------------ idempotency

fn post(nginx: &Nginx, path: &str, key: &str, body: &[u8]) -> Response {
    nginx.request("POST", path, &[(TENANT, "acme"), (KEY, key)], body)
}

/// nginx reads the whole request body before it proxies (proxy_request_buffering
/// on, Kong's default): a replay or a 422 never starts an upstream request, with
/// or without `host.allow_on_headers_stop_iteration` — which the filter ignores
/// here (holding request headers on ngx_wasm_module withholds the body) and says so.
#[test]
fn nothing_answered_by_the_filter_starts_upstream_with_or_without_held_headers() {
    let Some(bin) = nginx_or_skip(SUITE) else {
        return;
    };
    for hold in [false, true] {
        let backend = Backend::start();
        let mut config = idempotency_config("r-held");
        config["host"] = json!({ "allow_on_headers_stop_iteration": hold });
        let nginx = nginx(&bin, &config, &backend);
        let first = post(&nginx, "/orders", "\"held-1\"", br#"{"qty":1}"#);
        assert_upstream(&first, "/orders");
        let replay = post(&nginx, "/orders", "\"held-1\"", br#"{"qty":1}"#);
        assert_eq!(
            replay.header_once(REPLAYED),
            "true",
            "hold {hold}: {replay:?}"
        );
        let reused = post(&nginx, "/orders", "\"held-1\"", br#"{"qty":2}"#);
        assert_problem(&reused, 422, "idempotency-key-reused");
        assert_eq!(
            (backend.started("/orders"), backend.completed("/orders")),
            (1, 1),
            "hold {hold}: only the execution reached upstream"
        );
        let expected = if hold {
            "host.allow_on_headers_stop_iteration is ignored on ngx_wasm_module"
        } else {
            "nginx reads the whole body before it proxies"
        };
        assert!(
            wait_until(Duration::from_secs(10), || nginx
                .error_log()
                .contains(expected)),
            "hold {hold}: no `{expected}` in the log:\n{}",
            nginx.error_log_tail(10)
        );
    }
}

#[test]
fn idempotent_replay_in_flight_409_and_reuse_422() {
    let Some(bin) = nginx_or_skip(SUITE) else {
        return;
    };
    let backend = Backend::start();
    let nginx = nginx(&bin, &idempotency_config("r-idem"), &backend);
    let body = br#"{"order":"A-1","qty":3}"#;

    let first = post(&nginx, "/orders", "\"order-1\"", body);
    let echo = assert_upstream(&first, "/orders");
    assert_eq!(echo["body_len"], body.len());
    for correlation in ["c-replay-1", "c-replay-2"] {
        let replay = nginx.request(
            "POST",
            "/orders",
            &[
                (TENANT, "acme"),
                (KEY, "\"order-1\""),
                (CORRELATION, correlation),
            ],
            body,
        );
        assert_eq!(replay.status, first.status, "{replay:?}");
        assert_eq!(replay.header_once(REPLAYED), "true", "{replay:?}");
        assert_eq!(
            replay.text(),
            first.text(),
            "a replay must be byte-identical"
        );
        assert_eq!(replay.header_once(MARKER), first.header_once(MARKER));
        assert_eq!(replay.header_once(CORRELATION), correlation);
    }
    assert_eq!(backend.completed("/orders"), 1, "a replay reached upstream");

    // Reusing the key for a different body: 422, upstream untouched.
    let reused = post(
        &nginx,
        "/orders",
        "\"order-1\"",
        br#"{"order":"A-1","qty":99}"#,
    );
    assert_problem(&reused, 422, "idempotency-key-reused");
    assert_eq!(backend.completed("/orders"), 1);

    // A duplicate while the first is held upstream: 409 with Retry-After.
    backend.hold("/slow");
    let port = nginx.port();
    let original = std::thread::spawn(move || {
        tenant_guard_e2e::http::request(
            port,
            "POST",
            "/slow",
            &[(TENANT, "acme"), (KEY, "\"slow-1\"")],
            br#"{"n":1}"#,
        )
    });
    let reached = wait_until(Duration::from_secs(10), || backend.completed("/slow") == 1);
    let duplicate = post(&nginx, "/slow", "\"slow-1\"", br#"{"n":1}"#);
    backend.release("/slow");
    let original = original.join().expect("original request thread");
    assert!(reached, "the original never reached upstream: {original:?}");
    assert_problem(&duplicate, 409, "idempotency-key-in-flight");
    assert_eq!(duplicate.header_once("retry-after"), "1");
    assert_upstream(&original, "/slow");
    let after = post(&nginx, "/slow", "\"slow-1\"", br#"{"n":1}"#);
    assert_eq!(after.header_once(REPLAYED), "true", "{after:?}");
    assert_eq!(after.text(), original.text());
    assert_eq!(backend.completed("/slow"), 1);
    // This config reads its headers as one map (`reads_whole_request_map`),
    // which the engine serves: never the one-by-one fallback.
    let log = nginx.error_log();
    assert!(!log.contains("the request header map"), "{log}");
}

#[test]
fn fifty_concurrent_same_key_posts_make_exactly_one_upstream_call() {
    const CLIENTS: usize = 50;
    let Some(bin) = nginx_or_skip(SUITE) else {
        return;
    };
    let backend = Backend::start();
    let server = Server::root(&idempotency_config("r-storm").to_string()).reuseport();
    let nginx = Nginx::start(&bin, &[server], backend.port()).unwrap_or_else(|e| panic!("{e}"));
    // The one admitted request stays upstream until every duplicate has been answered.
    backend.hold("/storm");
    let port = nginx.port();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let (done, answered) = mpsc::channel();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let done = done.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::new(port);
                barrier.wait();
                let response = conn
                    .request(
                        "POST",
                        "/storm",
                        &[(TENANT, "acme"), (KEY, "\"storm-1\"")],
                        br#"{"charge":100}"#,
                    )
                    .unwrap_or_else(|e| panic!("storm request failed: {e}"));
                let _ = done.send(());
                response
            })
        })
        .collect();
    drop(done);
    let mut count = 0;
    let all_but_one = wait_until(Duration::from_secs(30), || {
        while answered.try_recv().is_ok() {
            count += 1;
        }
        count >= CLIENTS - 1
    });
    let upstream_while_held = backend.completed("/storm");
    backend.release("/storm");
    let responses: Vec<Response> = handles
        .into_iter()
        .map(|h| h.join().expect("storm client panicked"))
        .collect();
    let fresh: Vec<&Response> = responses
        .iter()
        .filter(|r| r.status == 200 && r.header(REPLAYED).is_none())
        .collect();
    let in_flight = responses.iter().filter(|r| r.status == 409).count();
    let other: Vec<&Response> = responses
        .iter()
        .filter(|r| r.status != 409 && !(r.status == 200 && r.header(REPLAYED).is_none()))
        .collect();
    println!(
        "kong idempotency storm: {} fresh, {in_flight} × 409, {} other; upstream executions for the key: {}",
        fresh.len(),
        other.len(),
        backend.completed("/storm")
    );
    assert!(other.is_empty(), "unexpected responses: {other:?}");
    assert!(
        all_but_one,
        "{count} of {} duplicates answered while one was held",
        CLIENTS - 1
    );
    assert_eq!(upstream_while_held, 1, "upstream executions while held");
    assert_eq!(fresh.len(), 1);
    assert_eq!(in_flight, CLIENTS - 1);
    for response in responses.iter().filter(|r| r.status == 409) {
        assert_problem(response, 409, "idempotency-key-in-flight");
    }
    let after = post(&nginx, "/storm", "\"storm-1\"", br#"{"charge":100}"#);
    assert_eq!(after.header_once(REPLAYED), "true", "{after:?}");
    assert_eq!(after.text(), fresh[0].text());
    assert_eq!(
        backend.completed("/storm"),
        1,
        "upstream executions for the key"
    );
}

// ------------------------------------------------------------------ JWT, If-Match

#[test]
fn jwt_es256_is_accepted_and_forged_or_expired_tokens_are_rejected() {
    let Some(bin) = nginx_or_skip(SUITE) else {
        return;
    };
    let key = ES256KeyPair::generate().with_key_id("es-1");
    let point = key.public_key().public_key().to_bytes_uncompressed();
    let mut config = unlimited_config("r-jwt");
    config["tenant"] = json!({
        "header": TENANT, "required": true, "trust_header_without_jwt": false,
        "unknown": "defaults",
        "jwt": {
            "issuers": [{"iss": ISS, "audiences": [AUD], "jwks": {"keys": [
                {"kty": "EC", "crv": "P-256", "kid": "es-1", "alg": "ES256",
                 "x": b64(&point[1..33]), "y": b64(&point[33..65])}]}}],
            "tenant_claim": "tenant_id", "user_claim": "sub", "org_claim": "org",
            "leeway_seconds": 60, "required": true, "cache_entries": 64
        }
    });
    let backend = Backend::start();
    let nginx = nginx(&bin, &config, &backend);

    let token = key.sign(acme_claims("user-es")).expect("sign");
    let auth = format!("Bearer {token}");
    for _ in 0..2 {
        let response = nginx.get(
            "/jwt",
            &[("authorization", &auth), ("x-user-id", "mallory")],
        );
        assert_upstream(&response, "/jwt");
        let headers = backend.last_headers("/jwt");
        assert_eq!(seen(&headers, TENANT), vec!["acme"]);
        assert_eq!(seen(&headers, "x-user-id"), vec!["user-es"]);
        assert_eq!(seen(&headers, "x-org-id"), vec!["acme-eu"]);
    }
    let mut expired = acme_claims("user-x");
    expired.issued_at = Some(UnixTimeStamp::from_secs(now_secs() - 3600));
    expired.invalid_before = expired.issued_at;
    expired.expires_at = Some(UnixTimeStamp::from_secs(now_secs() - 600));
    let payload = b64(serde_json::to_string(&acme_claims("user-x"))
        .expect("claims")
        .as_bytes());
    let alg_none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    let stranger = ES256KeyPair::generate().with_key_id("es-1");
    for (case, token) in [
        ("expired", key.sign(expired).expect("sign")),
        ("alg none", alg_none),
        (
            "wrong key",
            stranger.sign(acme_claims("user-x")).expect("sign"),
        ),
    ] {
        let auth = format!("Bearer {token}");
        let response = nginx.get("/jwt/rejected", &[("authorization", &auth)]);
        assert_problem(&response, 401, "unauthenticated");
        assert!(
            response
                .header_once("www-authenticate")
                .contains("error=\"invalid_token\""),
            "{case}: {response:?}"
        );
    }
    let mismatch = nginx.get(
        "/jwt/mismatch",
        &[("authorization", &auth), (TENANT, "globex")],
    );
    assert_problem(&mismatch, 403, "tenant-mismatch");
    assert_eq!(
        backend.completed("/jwt/rejected") + backend.completed("/jwt/mismatch"),
        0
    );
}

#[test]
fn missing_if_match_is_428_on_configured_routes() {
    let Some(bin) = nginx_or_skip(SUITE) else {
        return;
    };
    let mut config = unlimited_config("r-if-match");
    config["if_match"] = json!([{"prefix": "/orders", "methods": ["PUT", "PATCH", "DELETE"]}]);
    let backend = Backend::start();
    let nginx = nginx(&bin, &config, &backend);

    let put = nginx.request("PUT", "/orders/1", &[(TENANT, "acme")], br#"{"qty":2}"#);
    assert_problem(&put, 428, "precondition-required");
    assert_problem(
        &nginx.request("DELETE", "/orders/1", &[(TENANT, "acme")], b""),
        428,
        "precondition-required",
    );
    assert_eq!(backend.completed_total(), 0);
    let put = nginx.request(
        "PUT",
        "/orders/1",
        &[(TENANT, "acme"), ("if-match", "\"v1\"")],
        br#"{"qty":2}"#,
    );
    assert_eq!(
        assert_upstream(&put, "/orders/1")["headers"]["if-match"],
        "\"v1\""
    );
    assert_upstream(&nginx.get("/orders/1", &[(TENANT, "acme")]), "/orders/1");
    assert_eq!(backend.completed_total(), 2);
}

// ------------------------------------------------------------------ metrics, bad config

#[test]
fn metrics_are_defined_and_flushed_without_errors_in_the_error_log() {
    let Some(bin) = nginx_or_skip(SUITE) else {
        return;
    };
    let backend = Backend::start();
    let config = PluginConfig::new("r-metrics")
        .tenant_limit("alpha", 1, 3600)
        .set("metrics", json!(true));
    let mut nginx = nginx(&bin, config.value(), &backend);
    // One of each outcome: allowed, rate limited, rejected (400).
    assert_upstream(&nginx.get("/m", &[(TENANT, "alpha")]), "/m");
    assert_problem(&nginx.get("/m", &[(TENANT, "alpha")]), 429, "rate-limited");
    assert_problem(&nginx.get("/m", &[]), 400, "tenant-required");
    // A graceful quit runs the root contexts' on_done (a last flush of the counters),
    // so every metric call has been made by the time the master is gone.
    let status = nginx.quit();
    assert!(
        status.is_some_and(|s| s.success()),
        "nginx quit: {status:?}"
    );
    let log = nginx.error_log();
    assert_eq!(
        log.matches("configuration accepted (revision `r-metrics`")
            .count(),
        2,
        "each worker configures the filter once:\n{log}"
    );
    let errors = nginx.error_lines();
    assert!(
        errors.is_empty(),
        "error-log lines at [error] or worse: {errors:#?}"
    );
    assert!(
        !log.contains("NYI"),
        "an unimplemented host call was made:\n{log}"
    );
}

/// What the engine does with a config the filter refuses at start-up: unlike
/// Envoy (which keeps the previous config), ngx_wasm_module treats a failed
/// `on_configure` in a worker's init as fatal, so that worker exits with code 2
/// and the master does not respawn it. Every server of that nginx goes dark,
/// including one whose own config is valid. This is why Kong's `config_schema`
/// must refuse everything the filter's parser refuses (the schema-parity test of
/// the sidecar proves that part); this test pins the engine behaviour itself.
#[test]
fn bad_config_at_start_up_is_refused_by_the_filter_and_fatal_to_the_workers() {
    let Some(bin) = nginx_or_skip(SUITE) else {
        return;
    };
    let backend = Backend::start();
    let good = unlimited_config("r-good").to_string();
    let mut bad = unlimited_config("r-bad");
    bad["defaults"]["rate_limit"] = json!({"requests": 0, "per_seconds": 60});
    let servers = [Server::root(&good), Server::root(&bad.to_string())];
    let mut nginx = Nginx::spawn(&bin, &servers, backend.port()).unwrap_or_else(|e| panic!("{e}"));
    let exited = "exited with fatal code 2 and cannot be respawned";
    assert!(
        nginx.wait_for_log(exited, 2, Duration::from_secs(60)),
        "both workers exit on the refused config:\n{}",
        nginx.error_log_tail(40)
    );
    let log = nginx.error_log();
    let refusal = log
        .lines()
        .find(|l| l.contains("rejected configuration, keeping the previous one:"))
        .unwrap_or_else(|| panic!("the filter names its reason:\n{log}"));
    assert!(
        refusal.len() < 1024,
        "the refusal line is bounded: {refusal}"
    );
    assert!(
        log.contains("failed initializing \"tenant_guard\" filter"),
        "the engine reports the failed filter init:\n{log}"
    );
    assert!(
        nginx.exit_status().is_none(),
        "the master itself stays up (holding the listeners)"
    );
    for port in nginx.ports() {
        assert!(
            !tenant_guard_e2e::nginx::answers(*port),
            "server on {port} answers although no worker is left"
        );
    }
    assert_eq!(backend.completed_total(), 0);
}
