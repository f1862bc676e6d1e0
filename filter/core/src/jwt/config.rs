//! The `tenant.jwt` configuration as written in the plugin document (serde types)
//! and the error that names the offending path.

use std::fmt;

use serde::{Deserialize, Serialize};

pub(super) fn default_tenant_claim() -> String {
    "tenant_id".to_string()
}
pub(super) fn default_leeway() -> u64 {
    60
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_cache_entries() -> usize {
    1024
}

/// The `tenant.jwt` object of the plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Trusted issuers, each with its audiences and keys. At least one.
    pub issuers: Vec<IssuerConfig>,
    /// Claim holding the tenant id.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// Claim holding the user (e.g. `sub`), forwarded when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_claim: Option<String>,
    /// Claim holding the organisation, forwarded when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_claim: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (0–3600).
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// A request without a token is rejected (401) when true.
    #[serde(default = "default_true")]
    pub required: bool,
    /// Verified tokens remembered per worker (0 disables the cache).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

/// One trusted issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exact value of the `iss` claim.
    pub iss: String,
    /// Accepted `aud` values (the token must carry at least one). At least one.
    pub audiences: Vec<String>,
    /// The issuer's keys.
    pub jwks: Jwks,
}

/// A JWK Set (RFC 7517 §5). Unknown members are ignored, so an identity
/// provider's document can be carried verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// One JSON Web Key (RFC 7517/7518/8037), public material only.
///
/// Unknown members (`x5c`, `x5t`, ...) are ignored. Private material (`d`) is
/// refused by [`compile`].
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `RSA`, `EC`, `OKP` or `oct`.
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// When present, must be the algorithm the key type implies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// When present, must be `sig`.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// When present, must contain `verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ops: Option<Vec<String>>,
    /// EC: `P-256`; OKP: `Ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RSA modulus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// oct: the HMAC secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<String>,
    /// Private key material: always refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
}

/// Secrets (`k`, `d`) are redacted so a logged config never leaks them.
impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("Jwk")
            .field("kty", &self.kty)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("use", &self.use_)
            .field("key_ops", &self.key_ops)
            .field("crv", &self.crv)
            .field("x", &self.x)
            .field("y", &self.y)
            .field("n", &self.n)
            .field("e", &self.e)
            .field("k", &redacted(&self.k))
            .field("d", &redacted(&self.d))
            .finish()
    }
}

/// Invalid `tenant.jwt` configuration. `path` is relative to the `tenant.jwt`
/// object, e.g. `issuers.0.jwks.keys.2.n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for JwtConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for JwtConfigError {}

pub(super) fn config_error(path: impl Into<String>, message: impl Into<String>) -> JwtConfigError {
    JwtConfigError {
        path: path.into(),
        message: message.into(),
    }
}
