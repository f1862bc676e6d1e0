//! JWT material for the end-to-end suites: the issuer and audience the test
//! configs trust, base64url, and claims valid now for tenant `acme`.

use std::time::{SystemTime, UNIX_EPOCH};

use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use serde_json::{json, Value};

pub const ISS: &str = "https://idp.tenant-guard.test/";
pub const AUD: &str = "orders-api";

pub fn b64(bytes: &[u8]) -> String {
    // Encoding fails only if the output length overflows `usize`.
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap_or_default()
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Claims valid now for [`ISS`]/[`AUD`] with subject `sub` and `custom` claims.
pub fn claims(sub: Option<&str>, custom: Value) -> JWTClaims<Value> {
    let now = now_secs();
    JWTClaims {
        issued_at: Some(UnixTimeStamp::from_secs(now - 5)),
        expires_at: Some(UnixTimeStamp::from_secs(now + 600)),
        invalid_before: Some(UnixTimeStamp::from_secs(now - 5)),
        issuer: Some(ISS.to_string()),
        subject: sub.map(str::to_string),
        audiences: Some(Audiences::AsString(AUD.to_string())),
        jwt_id: None,
        nonce: None,
        custom,
    }
}

/// Claims valid now for tenant `acme`, org `acme-eu`, subject `sub`.
pub fn acme_claims(sub: &str) -> JWTClaims<Value> {
    claims(Some(sub), json!({"tenant_id": "acme", "org": "acme-eu"}))
}
