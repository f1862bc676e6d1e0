//! Header parsers and the whole request decision on arbitrary header values:
//! correlation id, tenant, Idempotency-Key, Authorization.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenant_guard_core::config;
use tenant_guard_core::engine::{self, HostInputs, RequestView};
use tenant_guard_core::store::MemoryStore;
use tenant_guard_core::{correlation, idempotency, jwt};

const CONFIG: &str = r#"{"version":1,"tenant":{"trust_header_without_jwt":true},
  "defaults":{"rate_limit":{"requests":5,"per_seconds":60},"idempotency":{"required":false}},
  "if_match":[{"prefix":"/orders"}],
  "tenants":{"acme":{"routes":[{"prefix":"/o","rate_limit":{"requests":1,"per_seconds":1}}]}}}"#;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let mut next = || parts.next();
    let (tenant, corr, key, auth, path) = (next(), next(), next(), next(), next());

    let _ = correlation::is_valid_id(&text);
    let _ = idempotency::parse_key(&text);
    let _ = jwt::bearer_token(Some(&text));

    let config = config::parse(CONFIG.as_bytes()).expect("fixed config compiles");
    let store = MemoryStore::new();
    let request = RequestView {
        method: "POST",
        path: path.unwrap_or("/"),
        tenant_header: tenant,
        correlation_header: corr,
        idempotency_key: key,
        if_match_present: false,
        authorization: auth,
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
