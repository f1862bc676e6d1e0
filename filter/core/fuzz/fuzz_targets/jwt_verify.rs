//! JWT verification of arbitrary tokens against a fixed JWKS (HS256 + EC + OKP).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tenant_guard_core::jwt::{self, CompiledJwt, JwtConfig};

const JWT: &str = r#"{"issuers":[{"iss":"https://idp","audiences":["api"],"jwks":{"keys":[
  {"kty":"oct","kid":"hs","alg":"HS256","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"},
  {"kty":"OKP","kid":"ed","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
]}}],"user_claim":"sub"}"#;

fn verifier() -> &'static CompiledJwt {
    static VERIFIER: OnceLock<CompiledJwt> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let config: JwtConfig = serde_json::from_str(JWT).expect("fixed JWKS parses");
        jwt::compile(&config).expect("fixed JWKS compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let verifier = verifier();
    let _ = verifier.verify(&token, 1_700_000_000);
    let mut cache = verifier.new_cache();
    let _ = verifier.verify_cached(&mut cache, &token, 1_700_000_000);
    // JWKS documents themselves are input too.
    if let Ok(config) = serde_json::from_slice::<JwtConfig>(data) {
        let _ = jwt::compile(&config);
    }
});
