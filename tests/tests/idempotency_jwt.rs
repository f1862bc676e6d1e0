//! End-to-end tests of Idempotency-Key (with response replay), JWT tenant
//! identity and If-Match enforcement in a real Envoy (`envoy/static.yaml`,
//! concurrency 2).
//!
//! The upstream here is a local test server ([`Backend`]) rather than the
//! harness echo server because these tests need per-path behaviour (delays,
//! 500s, dropped connections, padded ~8 KiB bodies, a custom response header)
//! and need to tell *complete* requests (headers and the whole body read) from
//! requests Envoy started and then reset. With a request body, Envoy always
//! lets the request headers continue upstream (proxy-wasm turns a pause in the
//! request headers into stop-all, which would withhold the body from the filter),
//! so a replayed request with a body shows up upstream as headers followed by a
//! reset: never as a complete request. "Upstream calls" below are therefore
//! complete requests the backend answered.
//!
//! Every wait is a poll with a deadline; the only place wall time is allowed to
//! pass on purpose is the 1 s idempotency TTL in the memory test, and even there
//! the test polls for the condition (records expired / reclaimed).
#![cfg(test)]

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use jwt_simple::prelude::*;
use serde_json::{json, Value};
use tenant_guard_e2e::backend::{seen, Backend, Route, MARKER};
use tenant_guard_e2e::config::PluginConfig;
use tenant_guard_e2e::expect::{assert_problem, assert_upstream};
use tenant_guard_e2e::http::Response;
use tenant_guard_e2e::tokens::{acme_claims, b64, claims, now_secs, AUD, ISS};
use tenant_guard_e2e::wait::{wait_for, wait_until};
use tenant_guard_e2e::{Conn, Envoy};

const CORRELATION: &str = "x-correlation-id";
const TENANT: &str = "x-tenant-id";
const KEY: &str = "idempotency-key";
const REPLAYED: &str = "idempotent-replayed";

// ------------------------------------------------------------------ helpers

fn idempotency_settings() -> Value {
    json!({
        "methods": ["POST", "PATCH"],
        "required": true,
        "ttl_seconds": 86400,
        "max_body_bytes": 65536,
        "in_flight_timeout_seconds": 60
    })
}

/// A header-trusted config with idempotency on for every tenant.
fn idempotency_config(revision: &str, idempotency: Value) -> Value {
    let mut config = PluginConfig::new(revision)
        .default_limit(1_000_000, 60)
        .value()
        .clone();
    config["defaults"]["idempotency"] = idempotency;
    config
}

fn start(config: &Value, backend: &Backend) -> Envoy {
    Envoy::start_static(&config.to_string(), backend.port())
}

/// An sf-string Idempotency-Key header value.
fn key(k: &str) -> String {
    format!("\"{k}\"")
}

fn post(envoy: &Envoy, path: &str, tenant: &str, idempotency_key: &str, body: &[u8]) -> Response {
    envoy.request(
        "POST",
        path,
        &[(TENANT, tenant), (KEY, idempotency_key)],
        body,
    )
}

fn custom_metric(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat_suffix_sum(name)
}

// ------------------------------------------------------------------ 1. replay

#[test]
fn completed_request_is_replayed_without_a_second_upstream_call() {
    let backend = Backend::start();
    let envoy = start(
        &idempotency_config("r-replay", idempotency_settings()),
        &backend,
    );
    let body = br#"{"order":"A-1","qty":3}"#;

    let first = envoy.request(
        "POST",
        "/orders",
        &[
            (TENANT, "acme"),
            (KEY, &key("order-1")),
            (CORRELATION, "c-first"),
        ],
        body,
    );
    let echo = assert_upstream(&first, "/orders");
    assert_eq!(echo["hit"], 1);
    assert_eq!(echo["body_len"], body.len());
    assert_eq!(first.header_once(CORRELATION), "c-first");
    assert_eq!(backend.completed("/orders"), 1);
    let marker = first.header_once(MARKER).to_string();

    // Same key, same request, on new connections: the stored response comes back.
    for (attempt, correlation) in [(1, "c-replay-1"), (2, "c-replay-2")] {
        let replay = envoy.request(
            "POST",
            "/orders",
            &[
                (TENANT, "acme"),
                (KEY, &key("order-1")),
                (CORRELATION, correlation),
            ],
            body,
        );
        assert_eq!(replay.status, first.status, "replay {attempt}: {replay:?}");
        assert_eq!(
            replay.body, first.body,
            "replay {attempt} must carry the identical body"
        );
        assert_eq!(replay.header_once(MARKER), marker, "custom upstream header");
        assert_eq!(
            replay.header_once("content-type"),
            first.header_once("content-type")
        );
        assert_eq!(replay.header_once(REPLAYED), "true");
        assert_eq!(
            replay.header_once(CORRELATION),
            correlation,
            "the replay carries this request's correlation id, not the stored one"
        );
        assert_eq!(
            backend.completed("/orders"),
            1,
            "replay {attempt} reached upstream as a complete request"
        );
    }

    // A generated correlation id is fresh too.
    let replay = post(&envoy, "/orders", "acme", &key("order-1"), body);
    assert_eq!(replay.header_once(REPLAYED), "true");
    let generated = replay.header_once(CORRELATION);
    assert!(
        !generated.is_empty() && generated != "c-first" && generated != "c-replay-2",
        "correlation id {generated:?}"
    );
    assert_eq!(replay.body, first.body);

    // A body-less POST is replayed straight from the request headers: nothing
    // at all reaches upstream the second time.
    let first_empty = post(&envoy, "/ping", "acme", &key("ping-1"), b"");
    assert_upstream(&first_empty, "/ping");
    let replay_empty = post(&envoy, "/ping", "acme", &key("ping-1"), b"");
    assert_eq!(replay_empty.header_once(REPLAYED), "true");
    assert_eq!(replay_empty.body, first_empty.body);
    assert_eq!(
        backend.started("/ping"),
        1,
        "no upstream request was started"
    );

    // Keys are scoped by tenant: the same key for another tenant is a new request.
    let other = post(&envoy, "/orders", "globex", &key("order-1"), body);
    let echo = assert_upstream(&other, "/orders");
    assert_eq!(echo["hit"], 2);
    assert_eq!(backend.completed("/orders"), 2);

    let replayed = wait_for(Duration::from_secs(5), || {
        let n = custom_metric(&envoy, "tenant_guard_idempotent_replayed");
        (n >= 4).then_some(n)
    });
    assert_eq!(
        replayed,
        Some(4),
        "tenant_guard_idempotent_replayed: {:?}",
        envoy.stats("tenant_guard")
    );
    println!(
        "replay: /orders started {} completed {} (replays with a body are reset upstream); /ping started {}",
        backend.started("/orders"),
        backend.completed("/orders"),
        backend.started("/ping")
    );
}

// ------------------------------------------------------------------ 2. storm

#[test]
fn storm_of_fifty_concurrent_duplicates_makes_exactly_one_upstream_call() {
    const CLIENTS: usize = 50;
    let backend = Backend::start();
    // The first request stays in flight for a while, so the duplicates overlap it.
    backend.route(
        "/storm",
        Route {
            delay: Duration::from_millis(400),
            ..Route::default()
        },
    );
    let envoy = start(
        &idempotency_config("r-storm", idempotency_settings()),
        &backend,
    );
    let port = envoy.port();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut conn = Conn::new(port);
                barrier.wait();
                conn.request(
                    "POST",
                    "/storm",
                    &[(TENANT, "acme"), (KEY, "\"storm-1\"")],
                    br#"{"charge":100}"#,
                )
                .unwrap_or_else(|e| panic!("storm request failed: {e}"))
            })
        })
        .collect();
    let responses: Vec<Response> = handles
        .into_iter()
        .map(|h| h.join().expect("storm client panicked"))
        .collect();

    let mut fresh = Vec::new();
    let mut replays = Vec::new();
    let mut in_flight = 0;
    let mut unexpected = Vec::new();
    for response in &responses {
        match (response.status, response.header(REPLAYED)) {
            (200, Some("true")) => replays.push(response),
            (200, None) => fresh.push(response),
            (409, _) => {
                assert_problem(response, 409, "idempotency-key-in-flight");
                assert_eq!(response.header("retry-after"), Some("1"));
                in_flight += 1;
            }
            _ => unexpected.push(response),
        }
    }
    println!(
        "storm: {} fresh upstream answers, {in_flight} × 409 in flight, {} replays, {} unexpected; upstream started {} completed {}",
        fresh.len(),
        replays.len(),
        unexpected.len(),
        backend.started("/storm"),
        backend.completed("/storm")
    );
    assert!(
        unexpected.is_empty(),
        "unexpected responses: {unexpected:?}"
    );
    assert_eq!(fresh.len(), 1, "exactly one request may reach upstream");
    assert_eq!(fresh.len() + in_flight + replays.len(), CLIENTS);
    assert!(
        in_flight > 0,
        "with a 400 ms upstream some duplicates must have overlapped the first"
    );
    let original = fresh[0];
    for replay in &replays {
        assert_eq!(
            replay.body, original.body,
            "replay differs from the original"
        );
    }
    assert_eq!(backend.completed("/storm"), 1, "upstream calls");

    // After the storm, the key replays.
    let after = post(
        &envoy,
        "/storm",
        "acme",
        "\"storm-1\"",
        br#"{"charge":100}"#,
    );
    assert_eq!(after.header_once(REPLAYED), "true");
    assert_eq!(after.body, original.body);
    assert_eq!(backend.completed("/storm"), 1);
}

// ------------------------------------------------------------------ 3. 422

#[test]
fn reusing_a_key_for_a_different_request_is_422() {
    let backend = Backend::start();
    let envoy = start(
        &idempotency_config("r-reuse", idempotency_settings()),
        &backend,
    );
    let original = post(
        &envoy,
        "/payments",
        "acme",
        &key("pay-1"),
        br#"{"amount":10}"#,
    );
    assert_upstream(&original, "/payments");
    let completed = backend.completed_total();

    // Changed body.
    let changed_body = post(
        &envoy,
        "/payments",
        "acme",
        &key("pay-1"),
        br#"{"amount":99}"#,
    );
    assert_problem(&changed_body, 422, "idempotency-key-reused");
    // Changed path.
    let changed_path = post(
        &envoy,
        "/refunds",
        "acme",
        &key("pay-1"),
        br#"{"amount":10}"#,
    );
    assert_problem(&changed_path, 422, "idempotency-key-reused");
    // Changed query string.
    let changed_query = post(
        &envoy,
        "/payments?currency=eur",
        "acme",
        &key("pay-1"),
        br#"{"amount":10}"#,
    );
    assert_problem(&changed_query, 422, "idempotency-key-reused");
    // Changed method.
    let changed_method = envoy.request(
        "PATCH",
        "/payments",
        &[(TENANT, "acme"), (KEY, &key("pay-1"))],
        br#"{"amount":10}"#,
    );
    assert_problem(&changed_method, 422, "idempotency-key-reused");
    // An empty body is a different body too.
    let empty = post(&envoy, "/payments", "acme", &key("pay-1"), b"");
    assert_problem(&empty, 422, "idempotency-key-reused");

    assert_eq!(
        backend.completed_total(),
        completed,
        "no mismatched request may reach upstream"
    );
    assert_eq!(backend.completed("/refunds"), 0);

    // The original still replays afterwards.
    let replay = post(
        &envoy,
        "/payments",
        "acme",
        &key("pay-1"),
        br#"{"amount":10}"#,
    );
    assert_eq!(replay.header_once(REPLAYED), "true");
    assert_eq!(replay.body, original.body);
    assert_eq!(backend.completed("/payments"), 1);
}

// ------------------------------------------------------------------ 4. release

#[test]
fn upstream_failure_releases_the_key_for_a_retry() {
    let backend = Backend::start();
    let envoy = start(
        &idempotency_config("r-release", idempotency_settings()),
        &backend,
    );
    let body = br#"{"transfer":5}"#;

    // Upstream 500: passed through, and the key is given back.
    backend.route(
        "/flaky",
        Route {
            status: 500,
            ..Route::default()
        },
    );
    let failed = post(&envoy, "/flaky", "acme", &key("xfer-1"), body);
    assert_eq!(failed.status, 500, "{failed:?}");
    assert!(failed.header(REPLAYED).is_none());
    assert_eq!(backend.completed("/flaky"), 1);

    // A retry of the same key reaches upstream again and succeeds.
    backend.route("/flaky", Route::default());
    let retried = post(&envoy, "/flaky", "acme", &key("xfer-1"), body);
    let echo = assert_upstream(&retried, "/flaky");
    assert_eq!(echo["hit"], 2);
    assert_eq!(
        backend.completed("/flaky"),
        2,
        "the retry must reach upstream"
    );

    // Now it is recorded: the next one is a replay of the successful answer.
    let replay = post(&envoy, "/flaky", "acme", &key("xfer-1"), body);
    assert_eq!(replay.header_once(REPLAYED), "true");
    assert_eq!(replay.body, retried.body);
    assert_eq!(backend.completed("/flaky"), 2);

    // A reset (upstream closes the connection without answering) releases it too.
    backend.route(
        "/dropped",
        Route {
            drop: true,
            ..Route::default()
        },
    );
    let reset = post(&envoy, "/dropped", "acme", &key("xfer-2"), body);
    assert!(
        reset.status >= 500 && reset.header(REPLAYED).is_none(),
        "expected Envoy's 5xx for the reset, got {reset:?}"
    );
    assert_eq!(backend.completed("/dropped"), 1);
    backend.route("/dropped", Route::default());
    let retried = post(&envoy, "/dropped", "acme", &key("xfer-2"), body);
    let echo = assert_upstream(&retried, "/dropped");
    assert_eq!(echo["hit"], 2);
    assert_eq!(backend.completed("/dropped"), 2);
}

// ------------------------------------------------------------------ 5. 400/413/409

#[test]
fn missing_malformed_oversized_and_unreplayable_are_rejected() {
    let backend = Backend::start();
    let envoy = start(
        &idempotency_config("r-reject", idempotency_settings()),
        &backend,
    );

    // Missing key on a configured method.
    let missing = envoy.request("POST", "/orders", &[(TENANT, "acme")], b"{}");
    assert_problem(&missing, 400, "idempotency-key-missing");
    let missing = envoy.request("PATCH", "/orders/1", &[(TENANT, "acme")], b"{}");
    assert_problem(&missing, 400, "idempotency-key-missing");

    // Malformed keys.
    let too_long = format!("\"{}\"", "k".repeat(256));
    for malformed in [
        "order-1",
        "\"unterminated",
        "\"\"",
        "\"a\"b\"",
        "\"tab\there\"",
        &too_long,
    ] {
        let response = post(&envoy, "/orders", "acme", malformed, b"{}");
        assert_problem(&response, 400, "idempotency-key-malformed");
    }
    // The longest valid key is fine.
    let longest = format!("\"{}\"", "k".repeat(255));
    assert_upstream(&post(&envoy, "/orders", "acme", &longest, b"{}"), "/orders");
    assert_eq!(backend.completed("/orders"), 1);

    // Methods outside the configured ones need no key.
    assert_upstream(&envoy.get("/orders", &[(TENANT, "acme")]), "/orders");
    let put = envoy.request("PUT", "/orders", &[(TENANT, "acme")], b"{}");
    assert_upstream(&put, "/orders");

    // A request body over max_body_bytes → 413, and nothing completes upstream.
    let big = vec![b'x'; 65_536 + 1024];
    let too_large = post(&envoy, "/upload", "acme", &key("upload-1"), &big);
    assert_problem(&too_large, 413, "body-too-large");
    assert_eq!(backend.completed("/upload"), 0);
    // The key was not consumed: a proper request with it goes through.
    let ok = post(&envoy, "/upload", "acme", &key("upload-1"), b"small");
    assert_upstream(&ok, "/upload");
    assert_eq!(backend.completed("/upload"), 1);

    // A response over max_body_bytes completes but cannot be replayed → 409.
    backend.route(
        "/big",
        Route {
            pad_to: 70_000,
            ..Route::default()
        },
    );
    let first = post(&envoy, "/big", "acme", &key("big-1"), b"{}");
    assert_upstream(&first, "/big");
    assert!(
        first.body.len() >= 70_000,
        "body {} bytes",
        first.body.len()
    );
    let again = post(&envoy, "/big", "acme", &key("big-1"), b"{}");
    assert_problem(&again, 409, "idempotency-response-not-replayable");
    assert_eq!(
        backend.completed("/big"),
        1,
        "an unreplayable record must not be re-run"
    );
}

// ------------------------------------------------------------------ 6. JWT

const HS_SECRET: &[u8] = b"tenant-guard-e2e-hs256-secret-0123456789";

struct SigningKeys {
    rsa: RS256KeyPair,
    es: ES256KeyPair,
    ed: Ed25519KeyPair,
    hs: HS256Key,
}

impl SigningKeys {
    fn generate() -> Self {
        Self {
            rsa: RS256KeyPair::generate(2048)
                .expect("RSA key")
                .with_key_id("rsa-1"),
            es: ES256KeyPair::generate().with_key_id("es-1"),
            ed: Ed25519KeyPair::generate().with_key_id("ed-1"),
            hs: HS256Key::from_bytes(HS_SECRET).with_key_id("hs-1"),
        }
    }

    /// The JWKS the gateway trusts: public parts only (plus the HS256 secret).
    fn jwks(&self) -> Value {
        let rsa = self.rsa.public_key().to_components();
        let point = self.es.public_key().public_key().to_bytes_uncompressed();
        json!({"keys": [
            {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
             "n": b64(&rsa.n), "e": b64(&rsa.e)},
            {"kty": "EC", "crv": "P-256", "kid": "es-1", "alg": "ES256",
             "x": b64(&point[1..33]), "y": b64(&point[33..65])},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed-1",
             "x": b64(&self.ed.public_key().to_bytes())},
            {"kty": "oct", "kid": "hs-1", "alg": "HS256", "k": b64(HS_SECRET)},
        ]})
    }
}

fn jwt_config(keys: &SigningKeys, cache_entries: u64) -> Value {
    let mut config = PluginConfig::new("r-jwt")
        .default_limit(1_000_000, 60)
        .value()
        .clone();
    config["tenant"] = json!({
        "header": TENANT,
        "required": true,
        "trust_header_without_jwt": false,
        "unknown": "defaults",
        "jwt": {
            "issuers": [{"iss": ISS, "audiences": [AUD], "jwks": keys.jwks()}],
            "tenant_claim": "tenant_id",
            "user_claim": "sub",
            "org_claim": "org",
            "leeway_seconds": 60,
            "required": true,
            "cache_entries": cache_entries
        }
    });
    config
}

fn encode_json(value: &Value) -> String {
    b64(value.to_string().as_bytes())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn assert_unauthenticated(response: &Response, case: &str, invalid_token: bool) {
    assert_eq!(response.status, 401, "{case}: {response:?}");
    assert_problem(response, 401, "unauthenticated");
    let challenge = response.header_once("www-authenticate");
    assert!(
        challenge.starts_with("Bearer realm=\"tenant-guard\""),
        "{case}: WWW-Authenticate {challenge:?}"
    );
    if invalid_token {
        assert!(
            challenge.contains("error=\"invalid_token\"")
                && challenge.contains("error_description=\""),
            "{case}: WWW-Authenticate {challenge:?}"
        );
    } else {
        assert_eq!(challenge, "Bearer realm=\"tenant-guard\"", "{case}");
    }
}

#[test]
fn jwt_accept_and_reject_matrix_with_real_signed_tokens() {
    let started = Instant::now();
    let keys = SigningKeys::generate();
    println!("jwt: keys generated in {:?}", started.elapsed());
    let backend = Backend::start();
    let envoy = start(&jwt_config(&keys, 1024), &backend);

    // ---- accepted: every algorithm, identity forwarded, spoofed headers replaced.
    let accepted = [
        (
            "RS256",
            keys.rsa.sign(acme_claims("user-rs")).expect("sign"),
            "user-rs",
        ),
        (
            "ES256",
            keys.es.sign(acme_claims("user-es")).expect("sign"),
            "user-es",
        ),
        (
            "EdDSA",
            keys.ed.sign(acme_claims("user-ed")).expect("sign"),
            "user-ed",
        ),
        (
            "HS256",
            keys.hs.authenticate(acme_claims("user-hs")).expect("sign"),
            "user-hs",
        ),
    ];
    for (alg, token, user) in &accepted {
        let path = format!("/jwt/{alg}");
        for round in 0..2 {
            // Round 1 is served from the verified-token cache.
            let auth = bearer(token);
            let response = envoy.get(
                &path,
                &[
                    ("authorization", &auth),
                    (TENANT, "acme"),
                    ("x-user-id", "mallory"),
                    ("x-org-id", "evil-corp"),
                ],
            );
            assert_upstream(&response, &path);
            let headers = backend.last_headers(&path);
            assert_eq!(seen(&headers, TENANT), vec!["acme"], "{alg} round {round}");
            assert_eq!(
                seen(&headers, "x-user-id"),
                vec![*user],
                "{alg} round {round}"
            );
            assert_eq!(
                seen(&headers, "x-org-id"),
                vec!["acme-eu"],
                "{alg} round {round}"
            );
        }
    }
    assert_eq!(backend.completed_total(), 8);

    // Without an incoming tenant header the token's tenant is forwarded; a token
    // without sub/org removes the spoofed user/org headers.
    let bare = keys
        .es
        .sign(claims(None, json!({"tenant_id": "globex"})))
        .expect("sign");
    let auth = bearer(&bare);
    let response = envoy.get(
        "/jwt/bare",
        &[
            ("authorization", &auth),
            ("x-user-id", "mallory"),
            ("x-org-id", "evil-corp"),
        ],
    );
    assert_upstream(&response, "/jwt/bare");
    let headers = backend.last_headers("/jwt/bare");
    assert_eq!(seen(&headers, TENANT), vec!["globex"]);
    assert!(seen(&headers, "x-user-id").is_empty(), "{headers:?}");
    assert!(seen(&headers, "x-org-id").is_empty(), "{headers:?}");
    let upstream_calls = backend.completed_total();

    // ---- rejected with 401.
    let now = now_secs();
    let payload = encode_json(&serde_json::to_value(acme_claims("user-x")).expect("claims"));
    let mut expired = acme_claims("user-x");
    expired.issued_at = Some(UnixTimeStamp::from_secs(now - 3600));
    expired.invalid_before = Some(UnixTimeStamp::from_secs(now - 3600));
    expired.expires_at = Some(UnixTimeStamp::from_secs(now - 600));
    let mut not_yet = acme_claims("user-x");
    not_yet.invalid_before = Some(UnixTimeStamp::from_secs(now + 600));
    let mut no_exp = acme_claims("user-x");
    no_exp.expires_at = None;
    let mut wrong_aud = acme_claims("user-x");
    wrong_aud.audiences = Some(Audiences::AsString("billing-api".to_string()));
    let wrong_iss = acme_claims("user-x").with_issuer("https://evil.test/");
    let no_tenant = claims(Some("user-x"), json!({"org": "acme-eu"}));
    let stranger = ES256KeyPair::generate().with_key_id("es-unknown");
    let stranger_same_kid = ES256KeyPair::generate().with_key_id("es-1");
    let rsa_public = keys.rsa.public_key();
    let rsa_pem = rsa_public.to_pem().expect("pem");
    let confused_kid = HS256Key::from_bytes(rsa_pem.as_bytes())
        .with_key_id("rsa-1")
        .authenticate(acme_claims("user-x"))
        .expect("sign");
    let confused_no_kid = HS256Key::from_bytes(rsa_pem.as_bytes())
        .authenticate(acme_claims("user-x"))
        .expect("sign");
    let confused_der = HS256Key::from_bytes(&rsa_public.to_der().expect("der"))
        .with_key_id("rsa-1")
        .authenticate(acme_claims("user-x"))
        .expect("sign");
    let tampered = {
        let token = keys.es.sign(acme_claims("user-x")).expect("sign");
        let parts: Vec<&str> = token.split('.').collect();
        let forged = encode_json(
            &serde_json::to_value(claims(Some("user-x"), json!({"tenant_id": "globex"})))
                .expect("claims"),
        );
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    let alg_none = format!(
        "{}.{payload}.",
        encode_json(&json!({"alg": "none", "typ": "JWT"}))
    );
    let alg_none_kid = format!(
        "{}.{payload}.",
        encode_json(&json!({"alg": "none", "kid": "es-1"}))
    );
    let rejected: Vec<(&str, String)> = vec![
        ("expired", bearer(&keys.es.sign(expired).expect("sign"))),
        (
            "not yet valid",
            bearer(&keys.ed.sign(not_yet).expect("sign")),
        ),
        ("no exp", bearer(&keys.rsa.sign(no_exp).expect("sign"))),
        ("wrong iss", bearer(&keys.es.sign(wrong_iss).expect("sign"))),
        (
            "wrong aud",
            bearer(&keys.rsa.sign(wrong_aud).expect("sign")),
        ),
        (
            "no tenant claim",
            bearer(&keys.es.sign(no_tenant).expect("sign")),
        ),
        (
            "unknown kid",
            bearer(&stranger.sign(acme_claims("user-x")).expect("sign")),
        ),
        (
            "known kid, wrong key",
            bearer(&stranger_same_kid.sign(acme_claims("user-x")).expect("sign")),
        ),
        ("alg none", bearer(&alg_none)),
        ("alg none with kid", bearer(&alg_none_kid)),
        ("HS256 with the RSA public key (kid)", bearer(&confused_kid)),
        (
            "HS256 with the RSA public key (no kid)",
            bearer(&confused_no_kid),
        ),
        ("HS256 with the RSA public key (DER)", bearer(&confused_der)),
        ("tampered payload", bearer(&tampered)),
        ("garbage", "Bearer not-a-jwt".to_string()),
        ("three garbage parts", "Bearer a.b.c".to_string()),
        ("basic auth", "Basic dXNlcjpwYXNz".to_string()),
        ("empty bearer", "Bearer".to_string()),
    ];
    for (case, authorization) in &rejected {
        let response = envoy.get("/jwt/rejected", &[("authorization", authorization)]);
        assert_unauthenticated(&response, case, true);
        // Twice: a rejection is never cached as a success.
        let response = envoy.get(
            "/jwt/rejected",
            &[("authorization", authorization), (TENANT, "acme")],
        );
        assert_unauthenticated(&response, case, true);
    }
    let missing = envoy.get("/jwt/rejected", &[(TENANT, "acme")]);
    assert_unauthenticated(&missing, "missing token", false);
    assert_eq!(
        backend.completed_total(),
        upstream_calls,
        "rejected requests must not reach upstream"
    );

    // ---- tenant header disagreeing with the token → 403.
    let auth = bearer(&accepted[1].1);
    let mismatch = envoy.get(
        "/jwt/mismatch",
        &[("authorization", &auth), (TENANT, "globex")],
    );
    assert_problem(&mismatch, 403, "tenant-mismatch");
    assert_eq!(backend.completed("/jwt/mismatch"), 0);
    println!(
        "jwt: {} accepted algorithms, {} rejection cases, total {:?}",
        accepted.len(),
        rejected.len() + 1,
        started.elapsed()
    );
}

// ------------------------------------------------------------------ 7. 428

#[test]
fn if_match_is_required_on_configured_routes() {
    let backend = Backend::start();
    let mut config = PluginConfig::new("r-if-match").value().clone();
    config["if_match"] = json!([{"prefix": "/orders", "methods": ["PUT", "PATCH", "DELETE"]}]);
    let envoy = start(&config, &backend);

    let put = envoy.request("PUT", "/orders/1", &[(TENANT, "acme")], br#"{"qty":2}"#);
    let body = assert_problem(&put, 428, "precondition-required");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("If-Match")),
        "{body}"
    );
    let delete = envoy.request("DELETE", "/orders/1", &[(TENANT, "acme")], b"");
    assert_problem(&delete, 428, "precondition-required");
    assert_eq!(backend.completed_total(), 0);

    let put = envoy.request(
        "PUT",
        "/orders/1",
        &[(TENANT, "acme"), ("if-match", "\"v1\"")],
        br#"{"qty":2}"#,
    );
    let echo = assert_upstream(&put, "/orders/1");
    assert_eq!(echo["headers"]["if-match"], "\"v1\"");
    // Other methods and other paths are not affected.
    assert_upstream(&envoy.get("/orders/1", &[(TENANT, "acme")]), "/orders/1");
    let other = envoy.request("PUT", "/customers/1", &[(TENANT, "acme")], b"{}");
    assert_upstream(&other, "/customers/1");
    assert_eq!(backend.completed_total(), 3);
}

// ------------------------------------------------------------------ 8. memory

/// `allocated` bytes from Envoy's admin `/memory`.
fn allocated(envoy: &Envoy) -> u64 {
    let response = envoy.admin("/memory");
    assert_eq!(response.status, 200, "/memory: {}", response.text());
    let body = response.json();
    match &body["allocated"] {
        Value::String(s) => s.parse().expect("allocated"),
        Value::Number(n) => n.as_u64().expect("allocated"),
        other => panic!("/memory has no allocated: {other} in {body}"),
    }
}

#[derive(Debug, Default)]
struct Round {
    stored: u64,
    full_503: u64,
}

#[test]
fn idempotency_memory_stays_bounded_and_records_are_reclaimed() {
    const BUCKETS: u64 = 16;
    const SLOTS: u64 = BUCKETS * 8;
    const KEYS_PER_ROUND: usize = 400;
    const ROUNDS: usize = 3;
    const BODY: usize = 8 * 1024;
    const MARGIN: u64 = 3 * 1024 * 1024;
    let backend = Backend::start();
    backend.route(
        "/mem",
        Route {
            pad_to: BODY,
            ..Route::default()
        },
    );
    let mut config = idempotency_config(
        "r-mem",
        json!({
            "methods": ["POST"],
            "required": true,
            "ttl_seconds": 1,
            "max_body_bytes": 16384,
            "in_flight_timeout_seconds": 10
        }),
    );
    config["store"] = json!({"idempotency_buckets": BUCKETS});
    let envoy = start(&config, &backend);
    let mut conn = envoy.conn();
    let mut rounds = Vec::new();
    let mut after_round = Vec::new();
    let reclaimed_start = custom_metric(&envoy, "tenant_guard_idempotency_reclaimed");
    let baseline = allocated(&envoy);
    let round_started = Instant::now();

    for round in 0..ROUNDS {
        let mut stats = Round::default();
        for i in 0..KEYS_PER_ROUND {
            let k = key(&format!("mem-{round}-{i}"));
            let body = format!("{{\"round\":{round},\"i\":{i}}}");
            // All 8 slots of the key's bucket may be live: 503 until one expires (1 s TTL).
            let response = wait_for(Duration::from_secs(10), || {
                let response = conn
                    .request(
                        "POST",
                        "/mem",
                        &[(TENANT, "acme"), (KEY, &k)],
                        body.as_bytes(),
                    )
                    .unwrap_or_else(|e| panic!("POST /mem failed: {e}"));
                if response.status == 503 {
                    assert_problem(&response, 503, "idempotency-unavailable");
                    stats.full_503 += 1;
                    None
                } else {
                    Some(response)
                }
            })
            .unwrap_or_else(|| panic!("key {k} never found a free record within 10 s"));
            assert_upstream(&response, "/mem");
            assert!(response.body.len() >= BODY);
            stats.stored += 1;
        }
        let bytes = allocated(&envoy);
        println!(
            "memory round {} ({:?}): {} responses of ~{} KiB stored (+{} × 503 idempotency-unavailable while the bucket was full), allocated {} KiB, reclaimed so far {}",
            round + 1,
            round_started.elapsed(),
            stats.stored,
            BODY / 1024,
            stats.full_503,
            bytes / 1024,
            custom_metric(&envoy, "tenant_guard_idempotency_reclaimed") - reclaimed_start
        );
        after_round.push(bytes);
        rounds.push(stats);

        // Let the 1 s TTL pass: poll until this round's last key is claimed anew
        // (a fresh upstream answer, not a replay) and the reclaim tick has run.
        let last_key = key(&format!("mem-{round}-{}", KEYS_PER_ROUND - 1));
        let last_body = format!("{{\"round\":{round},\"i\":{}}}", KEYS_PER_ROUND - 1);
        let expired = wait_until(Duration::from_secs(10), || {
            let response = conn
                .request(
                    "POST",
                    "/mem",
                    &[(TENANT, "acme"), (KEY, &last_key)],
                    last_body.as_bytes(),
                )
                .unwrap_or_else(|e| panic!("POST /mem failed: {e}"));
            response.status == 200 && response.header(REPLAYED).is_none()
        });
        assert!(expired, "round {round}: the record never expired");
        let reclaimed_now = custom_metric(&envoy, "tenant_guard_idempotency_reclaimed");
        let reclaimed = wait_until(Duration::from_secs(10), || {
            custom_metric(&envoy, "tenant_guard_idempotency_reclaimed") > reclaimed_now
        });
        assert!(
            reclaimed,
            "round {round}: tenant_guard_idempotency_reclaimed did not rise: {:?}",
            envoy.stats("tenant_guard")
        );
    }

    let reclaimed = custom_metric(&envoy, "tenant_guard_idempotency_reclaimed") - reclaimed_start;
    let stored_later: u64 = rounds.iter().skip(1).map(|r| r.stored).sum();
    let stored_total: u64 = rounds.iter().map(|r| r.stored).sum();
    let unbounded_growth = stored_later * BODY as u64;
    let bound = SLOTS * (16384 + 8192);
    let growth = after_round
        .iter()
        .skip(1)
        .map(|b| b.saturating_sub(after_round[0]))
        .max()
        .unwrap_or(0);
    println!(
        "memory: allocated before {} KiB, after rounds {:?} KiB; growth after round 1 {} KiB (margin {} KiB); \
         without reclaiming, rounds 2-{ROUNDS} would add ≥ {} KiB ({stored_later} × {} KiB); \
         store bound {SLOTS} records ≤ {} KiB; {stored_total} stored, {reclaimed} reclaimed",
        baseline / 1024,
        after_round.iter().map(|b| b / 1024).collect::<Vec<_>>(),
        growth / 1024,
        MARGIN / 1024,
        unbounded_growth / 1024,
        BODY / 1024,
        bound / 1024
    );
    assert!(
        unbounded_growth > 2 * MARGIN,
        "the test would not detect unbounded growth: only {stored_later} responses stored after round 1"
    );
    assert!(
        stored_total > SLOTS * 2,
        "records were not reused: {stored_total} stored with {SLOTS} slots"
    );
    for (round, bytes) in after_round.iter().enumerate().skip(1) {
        assert!(
            *bytes < after_round[0] + MARGIN,
            "allocated grew from {} KiB after round 1 to {} KiB after round {}",
            after_round[0] / 1024,
            bytes / 1024,
            round + 1
        );
    }
    assert!(
        reclaimed >= SLOTS,
        "expected at least {SLOTS} reclaimed records, got {reclaimed}"
    );
}
