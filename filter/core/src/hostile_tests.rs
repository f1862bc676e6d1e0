//! Hostile-input tests of the request decision: every byte value in every
//! header the filter reads, path spellings that must not bypass a route rule,
//! duplicate and malformed headers. The e2e tests repeat these in Envoy.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use crate::config::{self, CompiledConfig};
use crate::engine::{self, Decision, Evaluation, HostInputs, IdempotencyStep, RequestView};
use crate::store::MemoryStore;

const T0: u64 = 1_700_000_000_000_000_000;

const CONFIG: &str = r#"{"version":1,"tenant":{"trust_header_without_jwt":true},
    "if_match":[{"prefix":"/orders"}],
    "defaults":{"rate_limit":{"requests":100,"per_seconds":60},
                "idempotency":{"required":false,"methods":["POST"]}},
    "tenants":{"acme":{"routes":[{"prefix":"/orders","method":"POST","name":"orders",
                                  "rate_limit":{"requests":2,"per_seconds":3600}}]}}}"#;

fn config(document: &str) -> CompiledConfig {
    config::parse(document.as_bytes()).unwrap()
}

fn host() -> HostInputs {
    HostInputs {
        now_unix_ns: T0,
        random: [9; 10],
    }
}

fn view<'a>(method: &'a str, path: &'a [u8]) -> RequestView<'a> {
    RequestView {
        method: method.as_bytes(),
        path,
        tenant_header: Some(b"acme"),
        ..RequestView::default()
    }
}

fn status(evaluation: &Evaluation) -> u32 {
    match &evaluation.decision {
        Decision::Forward(_) => 200,
        Decision::Reject(reply) => reply.status,
    }
}

/// Problem type slug of a reject, "" for a forward.
fn slug(evaluation: &Evaluation) -> String {
    match &evaluation.decision {
        Decision::Forward(_) => String::new(),
        Decision::Reject(reply) => {
            let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            body["type"]
                .as_str()
                .unwrap()
                .trim_start_matches("urn:tenant-guard:problem:")
                .to_owned()
        }
    }
}

/// Response headers of either decision.
fn response_headers(evaluation: &Evaluation) -> &[(String, String)] {
    match &evaluation.decision {
        Decision::Forward(forward) => &forward.response_headers,
        Decision::Reject(reply) => &reply.headers,
    }
}

fn with_byte(prefix: &[u8], byte: u8, suffix: &[u8]) -> Vec<u8> {
    let mut value = prefix.to_vec();
    value.push(byte);
    value.extend_from_slice(suffix);
    value
}

#[test]
fn every_byte_in_the_tenant_header() {
    let config = config(CONFIG);
    for byte in 0..=u8::MAX {
        let value = with_byte(b"ac", byte, b"me");
        let request = RequestView {
            tenant_header: Some(&value),
            ..view("GET", b"/")
        };
        let evaluation = engine::evaluate(&config, &request, &host(), &MemoryStore::new());
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            assert_eq!(status(&evaluation), 200, "{byte:#04x}");
        } else {
            assert_eq!(status(&evaluation), 400, "{byte:#04x}");
            assert_eq!(slug(&evaluation), "invalid-tenant", "{byte:#04x}");
        }
    }
    let lone = RequestView {
        tenant_header: Some(b"\xff"),
        ..view("GET", b"/")
    };
    let evaluation = engine::evaluate(&config, &lone, &host(), &MemoryStore::new());
    assert_eq!(slug(&evaluation), "invalid-tenant");
}

#[test]
fn every_byte_in_the_correlation_header() {
    let config = config(CONFIG);
    for byte in 0..=u8::MAX {
        let value = with_byte(b"id-", byte, b"-1");
        let request = RequestView {
            correlation_header: Some(&value),
            ..view("GET", b"/")
        };
        let evaluation = engine::evaluate(&config, &request, &host(), &MemoryStore::new());
        assert_eq!(status(&evaluation), 200, "{byte:#04x}");
        let ids: Vec<&str> = response_headers(&evaluation)
            .iter()
            .filter(|(name, _)| name == "x-correlation-id")
            .map(|(_, value)| value.as_str())
            .collect();
        assert_eq!(ids.len(), 1, "{byte:#04x}: {ids:?}");
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b':' | b'-') {
            assert_eq!(ids[0].as_bytes(), value.as_slice(), "{byte:#04x}");
        } else {
            assert_eq!(ids[0].len(), 36, "{byte:#04x}: fresh UUIDv7 expected");
        }
    }
}

#[test]
fn every_byte_in_the_idempotency_key() {
    let config = config(CONFIG);
    for byte in 0..=u8::MAX {
        let value = with_byte(b"\"k", byte, b"1\"");
        let request = RequestView {
            idempotency_key: Some(&value),
            ..view("POST", b"/carts")
        };
        let evaluation = engine::evaluate(&config, &request, &host(), &MemoryStore::new());
        let printable = (0x20..=0x7e).contains(&byte) && !matches!(byte, b'"' | b'\\');
        if printable {
            assert_eq!(status(&evaluation), 200, "{byte:#04x}");
        } else {
            assert_eq!(status(&evaluation), 400, "{byte:#04x}");
            assert_eq!(
                slug(&evaluation),
                "idempotency-key-malformed",
                "{byte:#04x}"
            );
        }
    }
}

#[test]
fn every_byte_in_if_match() {
    let config = config(CONFIG);
    for byte in 0..=u8::MAX {
        let value = with_byte(b"\"v", byte, b"1\"");
        let request = RequestView {
            if_match: Some(&value),
            ..view("PUT", b"/orders/1")
        };
        let evaluation = engine::evaluate(&config, &request, &host(), &MemoryStore::new());
        let etagc = byte == 0x21 || (0x23..=0x7e).contains(&byte) || byte >= 0x80;
        let expected = if etagc { 200 } else { 428 };
        assert_eq!(status(&evaluation), expected, "{byte:#04x}");
    }
}

#[test]
fn every_byte_in_the_authorization_header() {
    let config = config(
        r#"{"version":1,"tenant":{"jwt":{"issuers":[{"iss":"https://idp.example",
        "audiences":["api"],"jwks":{"keys":[{"kty":"oct","kid":"hs","alg":"HS256",
        "k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}}]}}}"#,
    );
    for byte in 0..=u8::MAX {
        let value = with_byte(b"Bearer eyJhbGciOiJIUzI1NiJ9.e30", byte, b".c2ln");
        let request = RequestView {
            authorization: Some(&value),
            ..view("GET", b"/")
        };
        let evaluation = engine::evaluate(&config, &request, &host(), &MemoryStore::new());
        assert_eq!(status(&evaluation), 401, "{byte:#04x}");
        assert_eq!(slug(&evaluation), "unauthenticated", "{byte:#04x}");
    }
}

#[test]
fn every_byte_in_the_path() {
    let config = config(CONFIG);
    for byte in 0..=u8::MAX {
        let value = with_byte(b"/a", byte, b"b");
        let evaluation =
            engine::evaluate(&config, &view("GET", &value), &host(), &MemoryStore::new());
        let accepted = (0x21..=0x7e).contains(&byte) && !matches!(byte, b'#' | b'\\' | b'%');
        if accepted {
            assert_eq!(status(&evaluation), 200, "{byte:#04x}");
        } else {
            assert_eq!(slug(&evaluation), "invalid-path", "{byte:#04x}");
            assert_eq!(status(&evaluation), 400, "{byte:#04x}");
        }
    }
}

/// Issue rows 3–4: other spellings of `/orders/...` get the `/orders` rules.
#[test]
fn path_spellings_do_not_bypass_if_match_or_route_limits() {
    let config = config(CONFIG);
    let store = MemoryStore::new();
    let spellings: [&[u8]; 8] = [
        b"/orders/1",
        b"//orders/1",
        b"/./orders/1",
        b"/%6Frders/1",
        b"/%6frders/1",
        b"/x/../orders/1",
        b"/orders//1",
        b"/%2E/orders/1",
    ];
    for path in spellings {
        let evaluation = engine::evaluate(&config, &view("PUT", path), &host(), &store);
        assert_eq!(
            status(&evaluation),
            428,
            "{}",
            String::from_utf8_lossy(path)
        );
        assert_eq!(slug(&evaluation), "precondition-required");
    }
    for _ in 0..2 {
        let evaluation = engine::evaluate(&config, &view("POST", b"/orders"), &host(), &store);
        assert_eq!(status(&evaluation), 200);
    }
    let posts: [&[u8]; 6] = [
        b"/orders",
        b"//orders",
        b"/./orders",
        b"/%6Frders",
        b"/x/../orders?a=b",
        b"///orders/",
    ];
    for path in posts {
        let evaluation = engine::evaluate(&config, &view("POST", path), &host(), &store);
        assert_eq!(
            status(&evaluation),
            429,
            "{}",
            String::from_utf8_lossy(path)
        );
        let headers = response_headers(&evaluation);
        assert!(
            headers
                .iter()
                .any(|(name, value)| name == "ratelimit" && value.starts_with("\"orders\"")),
            "{headers:?}"
        );
    }
}

#[test]
fn encoded_slashes_are_400_unless_configured() {
    let strict = config(CONFIG);
    for path in [&b"/orders%2F1"[..], b"/orders%2f1", b"/a%5Cb", b"/a\\b"] {
        let evaluation =
            engine::evaluate(&strict, &view("GET", path), &host(), &MemoryStore::new());
        assert_eq!(status(&evaluation), 400);
        assert_eq!(slug(&evaluation), "invalid-path");
    }
    let lax = config(&CONFIG.replacen(
        r#"{"version":1,"#,
        r#"{"version":1,"paths":{"allow_encoded_slashes":true},"#,
        1,
    ));
    let evaluation = engine::evaluate(
        &lax,
        &view("GET", b"/orders%2F1"),
        &host(),
        &MemoryStore::new(),
    );
    assert_eq!(status(&evaluation), 200);
    // Still a path under /orders: the rule applies.
    let evaluation = engine::evaluate(
        &lax,
        &view("PUT", b"/orders%2F1"),
        &host(),
        &MemoryStore::new(),
    );
    assert_eq!(status(&evaluation), 428);
}

#[test]
fn if_match_garbage_counts_as_missing() {
    let config = config(CONFIG);
    for (value, expected) in [
        (&b"garbage"[..], 428),
        (b"", 428),
        (b"\"v1", 428),
        (b"\"v1\"", 200),
        (b"W/\"v1\", \"v2\"", 200),
        (b"*", 200),
    ] {
        let request = RequestView {
            if_match: Some(value),
            ..view("PUT", b"/orders/1")
        };
        let evaluation = engine::evaluate(&config, &request, &host(), &MemoryStore::new());
        assert_eq!(status(&evaluation), expected, "{value:?}");
    }
}

#[test]
fn duplicate_idempotency_keys_are_400() {
    let config = config(CONFIG);
    let request = RequestView {
        idempotency_key: Some(b"\"k1\""),
        idempotency_key_repeated: true,
        ..view("POST", b"/carts")
    };
    let evaluation = engine::evaluate(&config, &request, &host(), &MemoryStore::new());
    assert_eq!(status(&evaluation), 400);
    assert_eq!(slug(&evaluation), "idempotency-key-malformed");
    // Methods the key does not apply to are not refused for it.
    let get = RequestView {
        method: b"GET",
        ..request
    };
    let evaluation = engine::evaluate(&config, &get, &host(), &MemoryStore::new());
    assert_eq!(status(&evaluation), 200);
}

/// The fingerprint hashes the normalised path: another spelling of the same
/// request is the same request (409 in flight), not a different one (422).
#[test]
fn fingerprint_uses_the_normalised_path() {
    let config = config(CONFIG);
    let store = MemoryStore::new();
    let begin = |path: &'static [u8]| {
        let request = RequestView {
            idempotency_key: Some(b"\"same\""),
            ..view("POST", path)
        };
        let Decision::Forward(forward) =
            engine::evaluate(&config, &request, &host(), &store).decision
        else {
            panic!("forward expected");
        };
        let pending = forward.idempotency.clone().unwrap();
        engine::begin_idempotent(
            &config,
            &pending,
            &request,
            Some(b""),
            &forward,
            &host(),
            &store,
        )
    };
    assert!(matches!(begin(b"/carts/1"), IdempotencyStep::Proceed(_)));
    for path in [&b"//carts/1"[..], b"/./carts/1", b"/%63arts/1"] {
        let IdempotencyStep::Reply(reply, _) = begin(path) else {
            panic!("reply expected");
        };
        assert_eq!(reply.status, 409, "{}", String::from_utf8_lossy(path));
    }
    let IdempotencyStep::Reply(reply, _) = begin(b"/carts/2") else {
        panic!("reply expected");
    };
    assert_eq!(reply.status, 422);
}

#[test]
fn rule_prefixes_must_be_normalised() {
    for prefix in [
        "/orders//1",
        "/./orders",
        "/%6Frders",
        "/a/..",
        "/o?x",
        "/o#x",
    ] {
        let document = format!(
            r#"{{"version":1,"tenant":{{"trust_header_without_jwt":true}},"if_match":[{{"prefix":"{prefix}"}}]}}"#
        );
        let err = config::parse(document.as_bytes()).expect_err(prefix);
        assert_eq!(err.path, "if_match.0.prefix", "{prefix}");
    }
    let document = r#"{"version":1,"tenant":{"trust_header_without_jwt":true},"if_match":[{"prefix":"/orders/"}]}"#;
    assert!(config::parse(document.as_bytes()).is_ok());
}

/// Upstream header values are never altered: a replay re-sends text, so a
/// response with a value it could not carry exactly is not replayable (409).
#[test]
fn response_header_bytes_decide_replayability() {
    let config = config(CONFIG);
    for (value, replayed) in [
        (&b"caf\xc3\xa9 \t ok"[..], true),
        (b"a\xffb", false),
        (b"a\x01b", false),
    ] {
        let store = MemoryStore::new();
        let request = RequestView {
            idempotency_key: Some(b"\"resp\""),
            ..view("POST", b"/carts")
        };
        let run = || {
            let Decision::Forward(forward) =
                engine::evaluate(&config, &request, &host(), &store).decision
            else {
                panic!("forward expected");
            };
            let pending = forward.idempotency.clone().unwrap();
            let step = engine::begin_idempotent(
                &config,
                &pending,
                &request,
                Some(b""),
                &forward,
                &host(),
                &store,
            );
            (pending, step)
        };
        let (pending, IdempotencyStep::Proceed(claim)) = run() else {
            panic!("first use must proceed");
        };
        let capture = engine::ResponseCapture::new(
            &config,
            &pending,
            201,
            vec![("x-odd".to_owned(), value.to_vec())],
        );
        engine::finish_idempotent(&config, &pending, &claim, capture, T0, &store).unwrap();
        let (_, IdempotencyStep::Reply(reply, _)) = run() else {
            panic!("retry must be answered locally");
        };
        if replayed {
            assert_eq!(reply.status, 201);
            let odd = reply.headers.iter().find(|(name, _)| name == "x-odd");
            assert_eq!(odd.map(|(_, v)| v.as_bytes()), Some(value));
        } else {
            assert_eq!(reply.status, 409, "{value:?}");
            let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(
                body["type"],
                "urn:tenant-guard:problem:idempotency-response-not-replayable"
            );
        }
    }
}
