//! The plugin configs and the ES256 / RS256 tokens the scenarios use.

use jwt_simple::prelude::*;
use serde_json::{json, Value};
use tenant_guard_e2e::config::{set_json, PluginConfig};
use tenant_guard_e2e::tokens::b64;

/// The `iss` of the bench tokens.
pub const JWT_ISSUER: &str = "https://idp.bench.test/";
/// The `aud` of the bench tokens.
pub const JWT_AUDIENCE: &str = "bench-api";

/// [`PluginConfig::new`] (header tenants, UUIDv7 correlation ids) with the
/// default rate limit `(requests, per_seconds)`, or none.
pub fn filter_config(revision: &str, limit: Option<(u64, u64)>) -> Value {
    let config = PluginConfig::new(revision);
    match limit {
        Some((requests, per_seconds)) => {
            config.default_limit(requests, per_seconds).value().clone()
        }
        None => {
            let mut config = config.value().clone();
            if let Some(defaults) = config.get_mut("defaults").and_then(Value::as_object_mut) {
                defaults.remove("rate_limit");
            }
            config
        }
    }
}

/// `config` with the tenant taken only from a JWT (`tenant_id` claim, required)
/// of [`JWT_ISSUER`] / [`JWT_AUDIENCE`] signed by `jwk`, with a verified-token
/// cache of `cache_entries`.
pub fn with_jwt(mut config: Value, jwk: Value, cache_entries: u64) -> Value {
    set_json(
        &mut config,
        &["tenant", "trust_header_without_jwt"],
        json!(false),
    );
    set_json(
        &mut config,
        &["tenant", "jwt"],
        json!({
            "issuers": [{"iss": JWT_ISSUER, "audiences": [JWT_AUDIENCE], "jwks": {"keys": [jwk]}}],
            "tenant_claim": "tenant_id",
            "user_claim": "sub",
            "leeway_seconds": 60,
            "required": true,
            "cache_entries": cache_entries
        }),
    );
    config
}

/// A fresh signing key's public JWK and an `authorization` header value
/// (`Bearer <token>`) it signed.
#[derive(Debug, Clone)]
pub struct SignedToken {
    pub jwk: Value,
    pub authorization: String,
}

/// Claims for `tenant`, subject `bench-user`, valid for two hours.
fn claims(tenant: &str) -> JWTClaims<Value> {
    Claims::with_custom_claims(
        json!({"tenant_id": tenant}),
        jwt_simple::prelude::Duration::from_hours(2),
    )
    .with_issuer(JWT_ISSUER)
    .with_audience(JWT_AUDIENCE)
    .with_subject("bench-user")
}

/// An ES256 key (`kid` `es-1`) and a token for `tenant`.
pub fn es256_token(tenant: &str) -> Result<SignedToken, String> {
    let key = ES256KeyPair::generate().with_key_id("es-1");
    let point = key.public_key().public_key().to_bytes_uncompressed();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "es-1", "alg": "ES256",
        "x": b64(point.get(1..33).unwrap_or_default()),
        "y": b64(point.get(33..65).unwrap_or_default())});
    let token = key.sign(claims(tenant)).map_err(|e| format!("sign: {e}"))?;
    Ok(SignedToken {
        jwk,
        authorization: format!("Bearer {token}"),
    })
}

/// A 2048-bit RS256 key (`kid` `rsa-1`) and a token for `tenant`.
pub fn rs256_token(tenant: &str) -> Result<SignedToken, String> {
    let key = RS256KeyPair::generate(2048)
        .map_err(|e| format!("RSA key: {e}"))?
        .with_key_id("rsa-1");
    let components = key.public_key().to_components();
    let jwk = json!({"kty": "RSA", "kid": "rsa-1", "alg": "RS256",
        "n": b64(&components.n), "e": b64(&components.e)});
    let token = key.sign(claims(tenant)).map_err(|e| format!("sign: {e}"))?;
    Ok(SignedToken {
        jwk,
        authorization: format!("Bearer {token}"),
    })
}
