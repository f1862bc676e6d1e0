//! Tests of [`crate::jwt`] with real signed tokens. Keys are generated here
//! with jwt-simple; their public parts are exported to JWK JSON and loaded
//! through `JwtConfig` exactly as the plugin config would carry them.
//! RSA key generation is native-only (too slow in wasm debug builds).

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use crate::tenant::TenantId;
use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Decoder, Encoder};
use serde_json::{json, Value};

use crate::jwt::{
    self, bearer_token, CompiledJwt, Identity, JwtConfig, JwtConfigError, JwtError, TokenCache,
};

const NOW: u64 = 1_700_000_000;
const ISS: &str = "https://idp.example.com/";
const AUD: &str = "orders-api";
const HS_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-hs256";

fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
}

struct Keys {
    es: ES256KeyPair,
    ed: Ed25519KeyPair,
    hs: HS256Key,
}

fn keys() -> Keys {
    Keys {
        es: ES256KeyPair::generate().with_key_id("es-1"),
        ed: Ed25519KeyPair::generate().with_key_id("ed-1"),
        hs: HS256Key::from_bytes(HS_SECRET).with_key_id("hs-1"),
    }
}

impl Keys {
    fn es_token(&self, claims: JWTClaims<Value>) -> String {
        self.es.sign(claims).unwrap()
    }

    fn ed_token(&self, claims: JWTClaims<Value>) -> String {
        self.ed.sign(claims).unwrap()
    }

    fn hs_token(&self, claims: JWTClaims<Value>) -> String {
        self.hs.authenticate(claims).unwrap()
    }
}

fn es_jwk(key: &ES256KeyPair, kid: &str) -> Value {
    let point = key.public_key().public_key().to_bytes_uncompressed();
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
           "x": b64(&point[1..33]), "y": b64(&point[33..65])})
}

fn ed_jwk(key: &Ed25519KeyPair, kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
           "x": b64(&key.public_key().to_bytes())})
}

fn hs_jwk(secret: &[u8], kid: &str) -> Value {
    json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": b64(secret)})
}

fn config_with(keys: Vec<Value>, extra: Value) -> JwtConfig {
    let mut doc = json!({
        "issuers": [{"iss": ISS, "audiences": [AUD, "other-api"], "jwks": {"keys": keys}}],
        "user_claim": "sub",
        "org_claim": "org_id",
    });
    if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            doc.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(doc).unwrap()
}

fn compile_with(keys: Vec<Value>, extra: Value) -> CompiledJwt {
    jwt::compile(&config_with(keys, extra)).unwrap()
}

fn compile_error(keys: Vec<Value>, extra: Value) -> JwtConfigError {
    jwt::compile(&config_with(keys, extra)).unwrap_err()
}

/// A verifier trusting all three of `k`'s keys.
fn compiled(k: &Keys) -> CompiledJwt {
    compile_with(
        vec![
            es_jwk(&k.es, "es-1"),
            ed_jwk(&k.ed, "ed-1"),
            hs_jwk(HS_SECRET, "hs-1"),
        ],
        json!({}),
    )
}

/// Fresh [`keys`] and the verifier [`compiled`] from them.
fn keys_and_verifier() -> (Keys, CompiledJwt) {
    let k = keys();
    let c = compiled(&k);
    (k, c)
}

/// Claims valid at [`NOW`] for ISS/AUD with tenant/user/org.
fn claims() -> JWTClaims<Value> {
    claims_with(json!({"tenant_id": "acme", "org_id": "acme-eu"}))
}

/// [`claims`] as changed by `edit`.
fn claims_where(edit: impl FnOnce(&mut JWTClaims<Value>)) -> JWTClaims<Value> {
    let mut edited = claims();
    edit(&mut edited);
    edited
}

fn claims_with(custom: Value) -> JWTClaims<Value> {
    JWTClaims {
        issued_at: Some(UnixTimeStamp::from_secs(NOW - 10)),
        expires_at: Some(UnixTimeStamp::from_secs(NOW + 300)),
        invalid_before: Some(UnixTimeStamp::from_secs(NOW - 10)),
        issuer: Some(ISS.to_string()),
        subject: Some("user-42".to_string()),
        audiences: Some(Audiences::AsString(AUD.to_string())),
        jwt_id: None,
        nonce: None,
        custom,
    }
}

fn acme(exp: u64) -> Identity {
    Identity {
        tenant: TenantId::parse("acme").unwrap(),
        user: Some("user-42".to_string()),
        org: Some("acme-eu".to_string()),
        expires_at_unix: Some(exp),
    }
}

/// An HS256 token for `claims` keyed with `secret` (naming `kid`, if any).
fn hs256_token(secret: &[u8], kid: Option<&str>, claims: JWTClaims<Value>) -> String {
    let key = HS256Key::from_bytes(secret);
    let key = match kid {
        Some(kid) => key.with_key_id(kid),
        None => key,
    };
    key.authenticate(claims).unwrap()
}

fn encode_part(value: &Value) -> String {
    b64(serde_json::to_string(value).unwrap().as_bytes())
}

// ---------------------------------------------------------------- accept

#[test]
fn valid_es256_eddsa_hs256_tokens_are_accepted() {
    let (k, c) = keys_and_verifier();
    for token in [
        k.es_token(claims()),
        k.ed_token(claims()),
        k.hs_token(claims()),
    ] {
        assert_eq!(c.verify(&token, NOW), Ok(acme(NOW + 300)));
    }
}

#[test]
fn tokens_without_kid_try_keys_of_the_matching_type() {
    let (k, c) = keys_and_verifier();
    let es = ES256KeyPair::from_bytes(&k.es.to_bytes()).unwrap();
    let token = es.sign(claims()).unwrap();
    assert!(Token::decode_metadata(&token).unwrap().key_id().is_none());
    assert_eq!(c.verify(&token, NOW), Ok(acme(NOW + 300)));

    // Another EC key first in the set: the second one still verifies.
    let other = ES256KeyPair::generate();
    let c = compile_with(
        vec![es_jwk(&other, "other"), es_jwk(&k.es, "es-1")],
        json!({}),
    );
    assert_eq!(c.verify(&token, NOW), Ok(acme(NOW + 300)));
    assert_eq!(c.signature_verifications(), 2);
}

#[test]
fn audience_sets_are_accepted() {
    let (k, c) = keys_and_verifier();
    let token = k.ed_token(claims_where(|cl| {
        cl.audiences = Some(Audiences::AsSet(
            ["someone-else", "other-api"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ));
    }));
    assert_eq!(c.verify(&token, NOW), Ok(acme(NOW + 300)));
}

#[test]
fn claim_names_are_configurable() {
    let k = keys();
    let cfg = config_with(
        vec![es_jwk(&k.es, "es-1")],
        json!({"tenant_claim": "https://example.com/tenant", "user_claim": "email",
               "org_claim": "jti"}),
    );
    let c = jwt::compile(&cfg).unwrap();
    let mut cl = claims_with(json!({"https://example.com/tenant": "globex",
                                    "email": "ann@globex.test"}));
    cl.jwt_id = Some("org-from-jti".to_string());
    let id = c.verify(&k.es_token(cl), NOW).unwrap();
    assert_eq!(id.tenant, "globex");
    assert_eq!(id.user.as_deref(), Some("ann@globex.test"));
    assert_eq!(id.org.as_deref(), Some("org-from-jti"));

    // Optional claims may be absent.
    let id = c
        .verify(
            &k.es_token(claims_with(json!({"https://example.com/tenant": "g"}))),
            NOW,
        )
        .unwrap();
    assert_eq!((id.user, id.org), (None, None));
}

#[test]
fn jwt_simple_exported_jwks_are_accepted() {
    let k = keys();
    let es: Value = serde_json::from_str(&k.es.public_key().to_jwk()).unwrap();
    let ed: Value = serde_json::from_str(&k.ed.public_key().to_jwk()).unwrap();
    let c = compile_with(vec![es, ed], json!({}));
    assert!(c.verify(&k.es_token(claims()), NOW).is_ok());
    assert!(c.verify(&k.ed_token(claims()), NOW).is_ok());
}

// ---------------------------------------------------------------- time

#[test]
fn expiry_honours_the_leeway() {
    let (k, c) = keys_and_verifier(); // leeway 60 by default
    let token = k.es_token(claims()); // exp = NOW + 300
    assert!(c.verify(&token, NOW + 299).is_ok());
    assert!(c.verify(&token, NOW + 300 + 60).is_ok());
    assert_eq!(c.verify(&token, NOW + 300 + 61), Err(JwtError::Expired));

    let strict = compile_with(vec![es_jwk(&k.es, "es-1")], json!({"leeway_seconds": 0}));
    assert!(strict.verify(&token, NOW + 300).is_ok());
    assert_eq!(strict.verify(&token, NOW + 301), Err(JwtError::Expired));
}

#[test]
fn not_before_and_issued_at_in_the_future_are_rejected() {
    let (k, c) = keys_and_verifier();
    let token = k.es_token(claims_where(|cl| {
        cl.invalid_before = Some(UnixTimeStamp::from_secs(NOW + 120));
    }));
    assert_eq!(c.verify(&token, NOW), Err(JwtError::NotYetValid));
    assert!(c.verify(&token, NOW + 60).is_ok(), "within the leeway");

    let token = k.es_token(claims_where(|cl| {
        cl.issued_at = Some(UnixTimeStamp::from_secs(NOW + 3600));
    }));
    assert_eq!(c.verify(&token, NOW), Err(JwtError::NotYetValid));
}

#[test]
fn a_token_without_exp_is_rejected() {
    let (k, c) = keys_and_verifier();
    let token = k.hs_token(claims_where(|cl| cl.expires_at = None));
    assert_eq!(
        c.verify(&token, NOW),
        Err(JwtError::MissingClaim("exp".to_string()))
    );
}

#[test]
fn absurd_times_do_not_panic() {
    let (k, c) = keys_and_verifier();
    let token = k.es_token(claims_where(|cl| {
        cl.expires_at = Some(UnixTimeStamp::from_secs(u64::MAX));
        cl.invalid_before = Some(UnixTimeStamp::from_secs(u64::MAX));
    }));
    assert_eq!(c.verify(&token, u64::MAX), Err(JwtError::NotYetValid));
    assert_eq!(
        c.verify(&k.es_token(claims()), u64::MAX),
        Err(JwtError::Expired)
    );
    assert_eq!(
        c.verify(&k.es_token(claims()), 0),
        Err(JwtError::NotYetValid)
    );
}

// ---------------------------------------------------------------- iss / aud

#[test]
fn wrong_or_missing_issuer_is_rejected() {
    let (k, c) = keys_and_verifier();
    let evil = claims_where(|cl| cl.issuer = Some("https://evil.example.com/".to_string()));
    assert_eq!(c.verify(&k.es_token(evil), NOW), Err(JwtError::WrongIssuer));
    let anonymous = claims_where(|cl| cl.issuer = None);
    assert_eq!(
        c.verify(&k.es_token(anonymous), NOW),
        Err(JwtError::MissingClaim("iss".to_string()))
    );
}

#[test]
fn the_issuer_must_be_the_one_owning_the_key() {
    // Two issuers; a token signed with issuer B's key but claiming issuer A.
    let a = ES256KeyPair::generate().with_key_id("a");
    let b = ES256KeyPair::generate().with_key_id("b");
    let cfg: JwtConfig = serde_json::from_value(json!({"issuers": [
        {"iss": "A", "audiences": [AUD], "jwks": {"keys": [es_jwk(&a, "a")]}},
        {"iss": "B", "audiences": [AUD], "jwks": {"keys": [es_jwk(&b, "b")]}},
    ]}))
    .unwrap();
    let c = jwt::compile(&cfg).unwrap();
    let cl = claims_where(|cl| cl.issuer = Some("A".to_string()));
    assert_eq!(
        c.verify(&a.sign(cl.clone()).unwrap(), NOW).unwrap().tenant,
        "acme"
    );
    assert_eq!(
        c.verify(&b.sign(cl).unwrap(), NOW),
        Err(JwtError::WrongIssuer)
    );
}

#[test]
fn wrong_or_missing_audience_is_rejected() {
    let (k, c) = keys_and_verifier();
    let billing = claims_where(|cl| {
        cl.audiences = Some(Audiences::AsString("billing-api".to_string()));
    });
    assert_eq!(
        c.verify(&k.ed_token(billing), NOW),
        Err(JwtError::WrongAudience)
    );
    let unaddressed = claims_where(|cl| cl.audiences = None);
    assert_eq!(
        c.verify(&k.ed_token(unaddressed), NOW),
        Err(JwtError::MissingClaim("aud".to_string()))
    );
}

// ---------------------------------------------------------------- keys, algs

#[test]
fn a_signature_by_another_key_with_the_same_kid_is_rejected() {
    let (k, c) = keys_and_verifier();
    let impostor_es = ES256KeyPair::generate().with_key_id("es-1");
    let impostor_ed = Ed25519KeyPair::generate().with_key_id("ed-1");
    for token in [
        impostor_es.sign(claims()).unwrap(),
        impostor_ed.sign(claims()).unwrap(),
        hs256_token(&[9u8; 32], Some("hs-1"), claims()),
    ] {
        assert_eq!(c.verify(&token, NOW), Err(JwtError::BadSignature));
    }
    // Tampered payload under a genuine signature.
    let token = k.es_token(claims());
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = claims_where(|cl| cl.custom = json!({"tenant_id": "victim"}));
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        encode_part(&serde_json::to_value(tampered).unwrap()),
        parts[2]
    );
    assert_eq!(c.verify(&forged, NOW), Err(JwtError::BadSignature));
}

#[test]
fn an_unknown_kid_is_rejected() {
    let c = compiled(&keys());
    let stranger = ES256KeyPair::generate().with_key_id("rotated-away");
    assert_eq!(
        c.verify(&stranger.sign(claims()).unwrap(), NOW),
        Err(JwtError::UnknownKey("kid rotated-away".to_string()))
    );
}

#[test]
fn a_token_without_kid_and_no_key_of_its_type_is_rejected() {
    let k = keys();
    let c = compile_with(vec![es_jwk(&k.es, "es-1")], json!({}));
    let ed = Ed25519KeyPair::from_bytes(&k.ed.to_bytes()).unwrap();
    assert!(matches!(
        c.verify(&ed.sign(claims()).unwrap(), NOW),
        Err(JwtError::UnknownKey(_))
    ));
}

#[test]
fn alg_none_and_other_algorithms_are_rejected() {
    let c = compiled(&keys());
    let payload = encode_part(&serde_json::to_value(claims()).unwrap());
    for alg in ["none", "None", "HS512", "RS384", "PS256", "ES384", ""] {
        for header in [
            json!({"alg": alg, "typ": "JWT"}),
            json!({"alg": alg, "kid": "es-1"}),
        ] {
            let token = format!("{}.{payload}.", encode_part(&header));
            assert!(
                matches!(
                    c.verify(&token, NOW),
                    Err(JwtError::UnsupportedAlgorithm(_))
                ),
                "{header}"
            );
        }
    }
    assert_eq!(c.signature_verifications(), 0);
}

#[test]
fn a_token_alg_that_does_not_fit_the_kid_key_is_rejected() {
    // An HS256 token that names the Ed25519 key's kid, "signed" with its
    // public key bytes.
    let (k, c) = keys_and_verifier();
    let forged = hs256_token(&k.ed.public_key().to_bytes(), Some("ed-1"), claims());
    assert_eq!(
        c.verify(&forged, NOW),
        Err(JwtError::UnsupportedAlgorithm(
            "HS256 does not match key ed-1 (EdDSA)".to_string()
        ))
    );
    assert_eq!(c.signature_verifications(), 0);
}

#[test]
fn malformed_tokens_are_rejected() {
    let (k, c) = keys_and_verifier();
    let good = k.es_token(claims());
    let too_long = format!("{good}{}", "A".repeat(jwt::MAX_TOKEN_BYTES));
    for token in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.",
        "e30.e30.", // header without alg
        too_long.as_str(),
    ] {
        assert!(
            matches!(c.verify(token, NOW), Err(JwtError::Malformed(_))),
            "{token:.40}"
        );
    }
    // Signed, but the tenant claim is of the wrong type / user not a string.
    let token = k.es_token(claims_with(json!({"tenant_id": 42})));
    assert!(matches!(
        c.verify(&token, NOW),
        Err(JwtError::InvalidTenant(_))
    ));
    let org_list = claims_where(|cl| cl.custom = json!({"tenant_id": "acme", "org_id": ["x"]}));
    assert!(matches!(
        c.verify(&k.es_token(org_list), NOW),
        Err(JwtError::Malformed(_))
    ));
    let injected = claims_where(|cl| cl.subject = Some("ann\r\nx-tenant-id: victim".to_string()));
    assert!(matches!(
        c.verify(&k.es_token(injected), NOW),
        Err(JwtError::Malformed(_))
    ));
}

// ---------------------------------------------------------------- tenant

#[test]
fn tenant_claim_missing_or_invalid_is_rejected() {
    let (k, c) = keys_and_verifier();
    assert_eq!(
        c.verify(&k.hs_token(claims_with(json!({}))), NOW),
        Err(JwtError::MissingClaim("tenant_id".to_string()))
    );
    for bad in [
        json!(""),
        json!("acme corp"),
        json!("a/b"),
        json!("x".repeat(129)),
        json!(null),
    ] {
        let token = k.hs_token(claims_with(json!({"tenant_id": bad})));
        assert!(
            matches!(c.verify(&token, NOW), Err(JwtError::InvalidTenant(_))),
            "{bad}"
        );
    }
    let ok = "A-z_0.9".to_string() + &"x".repeat(121);
    let token = k.hs_token(claims_with(json!({"tenant_id": ok})));
    assert_eq!(c.verify(&token, NOW).unwrap().tenant, ok);
}

// ---------------------------------------------------------------- header / errors

#[test]
fn bearer_token_parsing() {
    assert_eq!(bearer_token(None), Ok(None));
    assert_eq!(
        bearer_token(Some("Bearer abc.def.ghi")),
        Ok(Some("abc.def.ghi"))
    );
    assert_eq!(
        bearer_token(Some("bearer   abc.def.ghi ")),
        Ok(Some("abc.def.ghi"))
    );
    assert_eq!(bearer_token(Some("BEARER\tabc")), Ok(Some("abc")));
    assert_eq!(bearer_token(Some("Bearer a+b/c==")), Ok(Some("a+b/c==")));
    for bad in [
        "",
        "   ",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token abc",
        "Bearerabc",
        "Bearer abc def",
        "Bearer a\"b",
        "Bearer ====",
    ] {
        assert!(
            matches!(bearer_token(Some(bad)), Err(JwtError::Malformed(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn www_authenticate_values() {
    assert_eq!(
        JwtError::Missing.www_authenticate(),
        r#"Bearer realm="tenant-guard""#
    );
    assert_eq!(
        JwtError::Expired.www_authenticate(),
        r#"Bearer realm="tenant-guard", error="invalid_token", error_description="the token has expired""#
    );
    let nasty = JwtError::UnknownKey("kid \"x\\\"\r\nSet-Cookie: a=b é".to_string());
    let header = nasty.www_authenticate();
    let description = header
        .split_once("error_description=\"")
        .unwrap()
        .1
        .strip_suffix('"')
        .unwrap();
    assert!(!description.contains(['"', '\\', '\r', '\n']), "{header}");
    assert!(
        description.bytes().all(|b| (0x20..=0x7e).contains(&b)),
        "{header}"
    );
    for err in [
        JwtError::Malformed("x".into()),
        JwtError::UnsupportedAlgorithm("none".into()),
        JwtError::BadSignature,
        JwtError::NotYetValid,
        JwtError::WrongIssuer,
        JwtError::WrongAudience,
        JwtError::MissingClaim("exp".into()),
        JwtError::InvalidTenant("x".into()),
    ] {
        assert!(err.www_authenticate().contains("error=\"invalid_token\""));
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn error_text_does_not_echo_long_untrusted_input() {
    let c = compiled(&keys());
    let kid = "k".repeat(500);
    let stranger = ES256KeyPair::generate().with_key_id(&kid);
    let err = c
        .verify(&stranger.sign(claims()).unwrap(), NOW)
        .unwrap_err();
    assert!(err.to_string().len() < 150, "{err}");
}

// ---------------------------------------------------------------- cache

#[test]
fn cache_hits_skip_signature_verification() {
    let (k, c) = keys_and_verifier();
    let mut cache = c.new_cache();
    assert_eq!(cache.capacity(), 1024);
    let token = k.es_token(claims());
    assert_eq!(
        c.verify_cached(&mut cache, &token, NOW),
        Ok(acme(NOW + 300))
    );
    assert_eq!(c.signature_verifications(), 1);
    for t in 0..10 {
        assert_eq!(
            c.verify_cached(&mut cache, &token, NOW + t),
            Ok(acme(NOW + 300))
        );
    }
    assert_eq!(c.signature_verifications(), 1);
    assert_eq!((cache.hits(), cache.misses()), (10, 1));
}

#[test]
fn cache_entries_never_outlive_the_token() {
    let (k, c) = keys_and_verifier();
    let mut cache = c.new_cache();
    let token = k.es_token(claims()); // exp = NOW + 300
    c.verify_cached(&mut cache, &token, NOW).unwrap();
    assert!(cache.get(&token, NOW + 299).is_some());
    assert!(cache.get(&token, NOW + 300).is_none(), "expired at exp");
    assert!(cache.is_empty(), "the expired entry was dropped");
    // Past exp (but within the leeway): verified again, and not re-cached.
    assert!(c.verify_cached(&mut cache, &token, NOW + 330).is_ok());
    assert!(cache.is_empty());
    assert_eq!(
        c.verify_cached(&mut cache, &token, NOW + 400),
        Err(JwtError::Expired)
    );
    assert_eq!(c.signature_verifications(), 3);
}

#[test]
fn failures_are_not_cached() {
    let (k, c) = keys_and_verifier();
    let mut cache = c.new_cache();
    let token = k.es_token(claims_with(json!({"tenant_id": "bad tenant"})));
    for _ in 0..3 {
        assert!(matches!(
            c.verify_cached(&mut cache, &token, NOW),
            Err(JwtError::InvalidTenant(_))
        ));
    }
    assert!(cache.is_empty());
    assert_eq!(c.signature_verifications(), 3);
}

#[test]
fn the_cache_is_bounded_and_evicts_oldest_first() {
    let k = keys();
    let c = compile_with(vec![hs_jwk(HS_SECRET, "hs-1")], json!({"cache_entries": 3}));
    let mut cache = c.new_cache();
    let tokens: Vec<String> = (0..5)
        .map(|i| k.hs_token(claims_with(json!({"tenant_id": format!("t{i}")}))))
        .collect();
    for token in &tokens {
        c.verify_cached(&mut cache, token, NOW).unwrap();
    }
    assert_eq!(cache.len(), 3);
    assert!(cache.get(&tokens[0], NOW).is_none());
    assert!(cache.get(&tokens[1], NOW).is_none());
    for token in &tokens[2..] {
        assert!(cache.get(token, NOW).is_some());
    }
    // Many more inserts keep it bounded (and its bookkeeping too).
    for i in 0..200 {
        let token = k.hs_token(claims_with(json!({"tenant_id": format!("u{i}")})));
        c.verify_cached(&mut cache, &token, NOW).unwrap();
        c.verify_cached(&mut cache, &token, NOW).unwrap();
    }
    assert_eq!(cache.len(), 3);

    let mut off = TokenCache::new(0);
    c.verify_cached(&mut off, &tokens[0], NOW).unwrap();
    assert!(off.is_empty());
}

#[test]
fn a_cache_is_emptied_when_used_with_a_new_config() {
    let k = keys();
    let old = compiled(&k);
    let mut cache = old.new_cache();
    let token = k.es_token(claims());
    old.verify_cached(&mut cache, &token, NOW).unwrap();
    // The key was removed from the config: the cached identity must go.
    let new = compile_with(vec![ed_jwk(&k.ed, "ed-1")], json!({}));
    assert!(matches!(
        new.verify_cached(&mut cache, &token, NOW),
        Err(JwtError::UnknownKey(_))
    ));
    assert!(cache.is_empty());
}

#[test]
fn cache_insert_and_get_directly() {
    let mut cache = TokenCache::new(2);
    cache.insert("a", acme(NOW + 10));
    cache.insert(
        "no-exp",
        Identity {
            expires_at_unix: None,
            ..acme(0)
        },
    );
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.get("a", NOW), Some(acme(NOW + 10)));
    assert_eq!(cache.get("b", NOW), None);
    cache.insert("a", acme(NOW + 20)); // replace
    cache.insert("b", acme(NOW + 20));
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.get("a", NOW + 15), Some(acme(NOW + 20)));
}

// ---------------------------------------------------------------- config

#[test]
fn config_defaults() {
    let cfg: JwtConfig = serde_json::from_value(json!({"issuers": []})).unwrap();
    assert_eq!(cfg.tenant_claim, "tenant_id");
    assert_eq!(cfg.user_claim, None);
    assert_eq!(cfg.org_claim, None);
    assert_eq!(cfg.leeway_seconds, 60);
    assert!(cfg.required);
    assert_eq!(cfg.cache_entries, 1024);
    assert!(serde_json::from_value::<JwtConfig>(json!({"issuers": [], "bogus": 1})).is_err());
    // Round trip.
    let k = keys();
    let cfg = config_with(
        vec![es_jwk(&k.es, "es-1"), hs_jwk(HS_SECRET, "h")],
        json!({}),
    );
    let again: JwtConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(cfg, again);
    let c = jwt::compile(&cfg).unwrap();
    assert!(c.required());
    assert_eq!(c.cache_entries(), 1024);
    // Unknown JWK members (x5c, ...) are ignored.
    let mut jwk = es_jwk(&k.es, "es-1");
    jwk["x5t"] = json!("abc");
    assert!(jwt::compile(&config_with(vec![jwk], json!({}))).is_ok());
}

#[test]
fn debug_output_redacts_secrets() {
    let cfg = config_with(vec![hs_jwk(HS_SECRET, "hs-1")], json!({}));
    let text = format!("{cfg:?}");
    assert!(!text.contains(&b64(HS_SECRET)), "{text}");
    assert!(text.contains("<redacted>"));
    let compiled = format!("{:?}", jwt::compile(&cfg).unwrap());
    assert!(!compiled.contains(&b64(HS_SECRET)), "{compiled}");
}

#[test]
fn config_errors_name_the_offending_field() {
    let k = keys();
    let es = es_jwk(&k.es, "es-1");
    let ed = ed_jwk(&k.ed, "ed-1");
    let with = |base: &Value, key: &str, value: Value| {
        let mut jwk = base.clone();
        if value.is_null() {
            jwk.as_object_mut().unwrap().remove(key);
        } else {
            jwk[key] = value;
        }
        jwk
    };

    // (the key set, the path of the error it gets)
    let key_sets = [
        (
            vec![
                es.clone(),
                with(&with(&es, "kid", json!("es-2")), "x", json!("***")),
            ],
            "issuers.0.jwks.keys.1.x",
        ),
        (
            vec![with(&es, "crv", json!("P-384"))],
            "issuers.0.jwks.keys.0.crv",
        ),
        (vec![with(&es, "y", Value::Null)], "issuers.0.jwks.keys.0.y"),
        (
            vec![with(&es, "y", json!(b64(&[1u8; 31])))],
            "issuers.0.jwks.keys.0.y",
        ),
        (
            vec![with(&es, "y", json!(b64(&[1u8; 32])))],
            "issuers.0.jwks.keys.0.x",
        ),
        (
            vec![with(&es, "alg", json!("HS256"))],
            "issuers.0.jwks.keys.0.alg",
        ),
        (
            vec![with(&es, "use", json!("enc"))],
            "issuers.0.jwks.keys.0.use",
        ),
        (
            vec![with(&es, "key_ops", json!(["sign"]))],
            "issuers.0.jwks.keys.0.key_ops",
        ),
        (
            vec![with(&es, "d", json!("AAAA"))],
            "issuers.0.jwks.keys.0.d",
        ),
        (
            vec![with(&es, "k", json!("AAAA"))],
            "issuers.0.jwks.keys.0.k",
        ),
        (
            vec![with(&es, "kty", json!("PS"))],
            "issuers.0.jwks.keys.0.kty",
        ),
        (
            vec![with(&es, "kid", json!(""))],
            "issuers.0.jwks.keys.0.kid",
        ),
        (
            vec![es.clone(), with(&ed, "kid", json!("es-1"))],
            "issuers.0.jwks.keys.1.kid",
        ),
        (
            vec![with(&ed, "crv", json!("X25519"))],
            "issuers.0.jwks.keys.0.crv",
        ),
        (
            vec![with(&ed, "x", json!(b64(&[0u8; 16])))],
            "issuers.0.jwks.keys.0.x",
        ),
        (
            vec![with(&ed, "alg", json!("ES256"))],
            "issuers.0.jwks.keys.0.alg",
        ),
        (vec![hs_jwk(&[1u8; 16], "h")], "issuers.0.jwks.keys.0.k"),
        (vec![json!({"kty": "oct"})], "issuers.0.jwks.keys.0.k"),
        (
            vec![json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"})],
            "issuers.0.jwks.keys.0.n",
        ),
        (
            vec![json!({"kty": "RSA", "n": b64(&[0xffu8; 256]), "e": "Aw"})],
            "issuers.0.jwks.keys.0.e",
        ),
        (
            vec![json!({"kty": "RSA", "e": "AQAB"})],
            "issuers.0.jwks.keys.0.n",
        ),
        (vec![], "issuers.0.jwks.keys"),
    ];
    for (keys, expected) in key_sets {
        let described = format!("{keys:?}");
        assert_eq!(compile_error(keys, json!({})).path, expected, "{described}");
    }

    for (extra, expected) in [
        (json!({"leeway_seconds": 86_400}), "leeway_seconds"),
        (json!({"tenant_claim": ""}), "tenant_claim"),
        (json!({"user_claim": ""}), "user_claim"),
        (json!({"cache_entries": 1_000_000}), "cache_entries"),
    ] {
        assert_eq!(compile_error(vec![es.clone()], extra).path, expected);
    }

    for (issuers, expected) in [
        (json!([]), "issuers"),
        (
            json!([{"iss": "", "audiences": [AUD], "jwks": {"keys": [es]}}]),
            "issuers.0.iss",
        ),
        (
            json!([{"iss": "a", "audiences": [], "jwks": {"keys": [es]}}]),
            "issuers.0.audiences",
        ),
        (
            json!([{"iss": "a", "audiences": [""], "jwks": {"keys": [es]}}]),
            "issuers.0.audiences.0",
        ),
        (
            json!([{"iss": "a", "audiences": [AUD], "jwks": {"keys": [es]}},
                   {"iss": "a", "audiences": [AUD], "jwks": {"keys": [ed]}}]),
            "issuers.1.iss",
        ),
    ] {
        let config: JwtConfig = serde_json::from_value(json!({"issuers": issuers})).unwrap();
        assert_eq!(
            jwt::compile(&config).unwrap_err().path,
            expected,
            "{issuers}"
        );
    }
    let err = compile_error(vec![with(&es, "crv", json!("P-384"))], json!({}));
    assert_eq!(
        err.to_string(),
        "issuers.0.jwks.keys.0.crv: an EC key must use curve P-256, not \"P-384\""
    );
}

// ---------------------------------------------------------------- RSA (fixed vector, all targets)

/// A published RS256 test vector (jwt-simple's `very_old_artificial_time`):
/// public key only, token with iat 200, nbf 300, exp 500, kid "1",
/// iss "https://chronogears.com/test", aud "test", sub "sbu123",
/// user_id "uid123". Lets RS256 verification run on wasm32 too, where key
/// generation is too slow.
const VECTOR_N: &str = "t5N44H1mpb5Wlx_0e7CdoKTY8xt-3yMby8BgNdagVNkeCkZ4pRbmQXRWNC7qn__Zaxx9dnzHbzGCul5W0RLfd3oB3PESwsrQh-oiXVEPTYhvUPQkX0vBfCXJtg_zY2mY1DxKOIiXnZ8PaK_7Sx0aMmvR__0Yy2a5dIAWCmjPsxn-PcGZOkVUm-D5bH1-ZStcA_68r4ZSPix7Szhgl1RoHb9Q6JSekyZqM0Qfwhgb7srZVXC_9_m5PEx9wMVNYpYJBrXhD5IQm9RzE9oJS8T-Ai-4_5mNTNXI8f1rrYgffWS4wf9cvsEihrvEg9867B2f98L7ux9Llle7jsHCtwgV1w";
const VECTOR_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjEifQ.eyJuYW1lIjoiQWRhIExvdmVsYWNlIiwiaXNzIjoiaHR0cHM6Ly9jaHJvbm9nZWFycy5jb20vdGVzdCIsImF1ZCI6InRlc3QiLCJhdXRoX3RpbWUiOjEwMCwidXNlcl9pZCI6InVpZDEyMyIsInN1YiI6InNidTEyMyIsImlhdCI6MjAwLCJleHAiOjUwMCwibmJmIjozMDAsImVtYWlsIjoiYWxvdmVsYWNlQGNocm9ub2dlYXJzLmNvbSJ9.eTQnwXrri_uY55fS4IygseBzzbosDM1hP153EZXzNlLH5s29kdlGt2mL_KIjYmQa8hmptt9RwKJHBtw6l4KFHvIcuif86Ix-iI2fCpqNnKyGZfgERV51NXk1THkgWj0GQB6X5cvOoFIdHa9XvgPl_rVmzXSUYDgkhd2t01FOjQeeT6OL2d9KdlQHJqAsvvKVc3wnaYYoSqv2z0IluvK93Tk1dUBU2yWXH34nX3GAVGvIoFoNRiiFfZwFlnz78G0b2fQV7B5g5F8XlNRdD1xmVZXU8X2-xh9LqRpnEakdhecciFHg0u6AyC4c00rlo_HBb69wlXajQ3R4y26Kpxn7HA";

fn vector_config(leeway: u64) -> CompiledJwt {
    let cfg: JwtConfig = serde_json::from_value(json!({
        "issuers": [{"iss": "https://chronogears.com/test", "audiences": ["test"],
                     "jwks": {"keys": [{"kty": "RSA", "kid": "1", "n": VECTOR_N, "e": "AQAB"}]}}],
        "tenant_claim": "user_id", "user_claim": "sub", "leeway_seconds": leeway,
    }))
    .unwrap();
    jwt::compile(&cfg).unwrap()
}

#[test]
fn rs256_test_vector_verifies() {
    let c = vector_config(0);
    assert_eq!(
        c.verify(VECTOR_TOKEN, 400),
        Ok(Identity {
            tenant: TenantId::parse("uid123").unwrap(),
            user: Some("sbu123".to_string()),
            org: None,
            expires_at_unix: Some(500),
        })
    );
    assert_eq!(c.verify(VECTOR_TOKEN, 299), Err(JwtError::NotYetValid));
    assert_eq!(c.verify(VECTOR_TOKEN, 501), Err(JwtError::Expired));
    assert!(vector_config(100).verify(VECTOR_TOKEN, 600).is_ok());
    let mut cache = c.new_cache();
    for _ in 0..3 {
        assert!(c.verify_cached(&mut cache, VECTOR_TOKEN, 400).is_ok());
    }
    assert_eq!(c.signature_verifications(), 4);
    // A flipped signature bit.
    let forged = VECTOR_TOKEN.replacen(".eTQnwX", ".fTQnwX", 1);
    assert_ne!(forged, VECTOR_TOKEN);
    assert_eq!(c.verify(&forged, 400), Err(JwtError::BadSignature));
    // HS256 "signed" with the RSA public key, naming its kid.
    let n = Base64UrlSafeNoPadding::decode_to_vec(VECTOR_N, None).unwrap();
    let cl = claims_where(|cl| {
        cl.issuer = Some("https://chronogears.com/test".to_string());
        cl.audiences = Some(Audiences::AsString("test".to_string()));
    });
    let forged = hs256_token(&n, Some("1"), cl);
    assert_eq!(
        c.verify(&forged, NOW),
        Err(JwtError::UnsupportedAlgorithm(
            "HS256 does not match key 1 (RS256)".to_string()
        ))
    );
}

// ---------------------------------------------------------------- RSA (native)

#[cfg(not(target_arch = "wasm32"))]
mod rsa {
    use super::*;
    use std::sync::OnceLock;

    fn rsa_key() -> &'static RS256KeyPair {
        static KEY: OnceLock<RS256KeyPair> = OnceLock::new();
        KEY.get_or_init(|| RS256KeyPair::generate(2048).unwrap().with_key_id("rsa-1"))
    }

    fn rsa_token(claims: JWTClaims<Value>) -> String {
        rsa_key().sign(claims).unwrap()
    }

    fn rsa_jwk(key: &RS256KeyPair, kid: &str) -> Value {
        let c = key.public_key().to_components();
        json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
               "n": b64(&c.n), "e": b64(&c.e)})
    }

    fn rsa_config() -> CompiledJwt {
        let k = keys();
        compile_with(
            vec![
                rsa_jwk(rsa_key(), "rsa-1"),
                hs_jwk(HS_SECRET, "hs-1"),
                es_jwk(&k.es, "es-1"),
            ],
            json!({}),
        )
    }

    #[test]
    fn valid_rs256_is_accepted() {
        let c = rsa_config();
        let token = rsa_token(claims());
        assert_eq!(c.verify(&token, NOW), Ok(acme(NOW + 300)));
        let exported: Value = serde_json::from_str(&rsa_key().public_key().to_jwk()).unwrap();
        let c = compile_with(vec![exported], json!({}));
        assert_eq!(c.verify(&token, NOW), Ok(acme(NOW + 300)));
    }

    #[test]
    fn rs256_rejections() {
        let c = rsa_config();
        let expired = claims_where(|cl| cl.expires_at = Some(UnixTimeStamp::from_secs(NOW - 100)));
        assert_eq!(c.verify(&rsa_token(expired), NOW), Err(JwtError::Expired));
        // Signed by the right key, claims altered.
        let token = rsa_token(claims());
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] =
            encode_part(&serde_json::to_value(claims_with(json!({"tenant_id": "x"}))).unwrap());
        assert_eq!(c.verify(&parts.join("."), NOW), Err(JwtError::BadSignature));
    }

    /// The classic algorithm confusion: an attacker takes the RSA *public*
    /// key and uses its bytes as an HMAC secret for an HS256 token.
    #[test]
    fn hs256_signed_with_the_rsa_public_key_is_rejected() {
        let c = rsa_config();
        let public = rsa_key().public_key();
        let secrets = [
            public.to_pem().unwrap().into_bytes(),
            public.to_der().unwrap(),
            public.to_components().n,
            rsa_key().public_key().to_jwk().into_bytes(),
        ];
        for secret in secrets {
            // Naming the RSA kid: the key's type fixes RS256.
            let forged = hs256_token(&secret, Some("rsa-1"), claims());
            assert_eq!(
                c.verify(&forged, NOW),
                Err(JwtError::UnsupportedAlgorithm(
                    "HS256 does not match key rsa-1 (RS256)".to_string()
                ))
            );
            // Without kid: only oct keys are tried, and they do not match.
            let forged = hs256_token(&secret, None, claims());
            assert_eq!(c.verify(&forged, NOW), Err(JwtError::BadSignature));
        }
        // An RSA-only config has no HS256 key at all.
        let only_rsa = compile_with(vec![rsa_jwk(rsa_key(), "rsa-1")], json!({}));
        let forged = hs256_token(&public.to_pem().unwrap().into_bytes(), None, claims());
        assert!(matches!(
            only_rsa.verify(&forged, NOW),
            Err(JwtError::UnknownKey(_))
        ));
        // And an RSA JWK cannot be declared as an HS256 key.
        let mut jwk = rsa_jwk(rsa_key(), "rsa-1");
        jwk["alg"] = json!("HS256");
        assert_eq!(
            compile_error(vec![jwk], json!({})).path,
            "issuers.0.jwks.keys.0.alg"
        );
    }

    #[test]
    fn rs256_through_the_cache() {
        let c = rsa_config();
        let mut cache = c.new_cache();
        let token = rsa_token(claims());
        for _ in 0..5 {
            assert_eq!(
                c.verify_cached(&mut cache, &token, NOW),
                Ok(acme(NOW + 300))
            );
        }
        assert_eq!(c.signature_verifications(), 1);
    }
}
