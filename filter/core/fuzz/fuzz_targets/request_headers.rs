//! Header parsers and the whole request decision on arbitrary header bytes
//! (never assumed UTF-8, as the host hands them over): correlation id, tenant,
//! Idempotency-Key, If-Match, Authorization, the path, a method override and
//! the user and API-key values per-key limits count by; and the bytes as a
//! serialized header map (`HeaderMap`), as the host hands a whole map over.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenant_guard_core::config;
use tenant_guard_core::engine::{self, HostInputs, RequestView};
use tenant_guard_core::store::MemoryStore;
use tenant_guard_core::{correlation, header_map, headers, idempotency, jwt, path};

const CONFIG: &str = r#"{"version":1,"tenant":{"trust_header_without_jwt":true},
  "defaults":{"rate_limit":{"requests":5,"per_seconds":60},"idempotency":{"required":false}},
  "if_match":[{"prefix":"/orders"}],
  "method_override":"honor",
  "tenants":{"acme":{"routes":[{"prefix":"/o","rate_limit":{"requests":1,"per_seconds":1}}],
    "rate_limits":[{"name":"user","requests":3,"per":"hour","key":"user"},
                   {"name":"api","requests":3,"per":"day","key":{"header":"x-api-key"},"on_missing":"tenant"}]}}}"#;

fuzz_target!(|data: &[u8]| {
    // Fields are split at 0x00 (any other byte, 0xff included, stays in a value).
    let mut parts = data.split(|&b| b == 0);
    let mut next = || parts.next();
    let (tenant, corr, key, auth, if_match, path_bytes) =
        (next(), next(), next(), next(), next(), next());
    let (method_override, user, api_key) = (next(), next(), next());

    if let Some(map) = header_map::HeaderMap::parse(data) {
        // A map that parses walks to its end, entry by entry, inside the bytes.
        assert_eq!(map.iter().count(), map.len());
        let _ = map.get("x-tenant-id");
        let _ = map.count("idempotency-key");
    }
    let _ = correlation::is_valid_id(data);
    let _ = idempotency::parse_key(data);
    let _ = headers::is_valid_if_match(data);
    let _ = path::normalize(data, false);
    let _ = path::normalize(data, true);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = jwt::bearer_token(Some(text));
    }

    let config = config::parse(CONFIG.as_bytes()).expect("fixed config compiles");
    let store = MemoryStore::new();
    // In the order of `config.key_headers`.
    let key_headers: Vec<Option<&[u8]>> = config
        .key_headers
        .iter()
        .map(|name| if name == "x-api-key" { api_key } else { user })
        .collect();
    let request = RequestView {
        method: b"POST",
        path: path_bytes.unwrap_or(b"/"),
        tenant_header: tenant,
        correlation_header: corr,
        idempotency_key: key,
        idempotency_key_repeated: data.first() == Some(&1),
        if_match,
        authorization: auth,
        method_overrides: [method_override, None, None],
        key_headers: &key_headers,
    };
    let host = HostInputs {
        now_unix_ns: 1_700_000_000_000_000_000,
        random: [3; 10],
    };
    let evaluation = engine::evaluate(&config, &request, &host, &store);
    if let engine::Decision::Forward(forward) = &evaluation.decision {
        if let Some(pending) = &forward.idempotency {
            let _ = engine::begin_idempotent(
                &config,
                pending,
                &request,
                Some(data),
                forward,
                &host,
                &store,
            );
        }
    }
});
