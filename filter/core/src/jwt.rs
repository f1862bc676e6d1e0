//! JWT tenant identity: verify a bearer token against the JWKS carried in the
//! plugin configuration and extract the tenant (and optionally user and org)
//! from configurable claims.
//!
//! The module is self-contained and has no proxy-wasm dependency. It never
//! reads a clock: the caller passes the current Unix time to
//! [`CompiledJwt::verify`], which hands it to jwt-simple as
//! `VerificationOptions::artificial_time`.
//!
//! # Rules
//!
//! * Algorithms: `RS256`, `ES256`, `EdDSA` (Ed25519; the fully specified name
//!   `Ed25519` is accepted too) and `HS256`. `none` and everything else is
//!   [`JwtError::UnsupportedAlgorithm`].
//! * A key's type fixes its algorithm: RSA ↔ RS256, EC P-256 ↔ ES256,
//!   OKP Ed25519 ↔ EdDSA, oct ↔ HS256. A JWK `alg`, when present, must agree
//!   (checked by [`compile`]). The token's `alg` header only ever *selects*
//!   among keys of the matching type, so an HS256 token "signed" with the
//!   bytes of an RSA public key is rejected (algorithm confusion).
//! * Key choice: when the token has a `kid`, only keys with that `kid` are
//!   considered (none → [`JwtError::UnknownKey`]; some, but none of the
//!   token's algorithm → [`JwtError::UnsupportedAlgorithm`]). Without `kid`,
//!   every configured key of the matching type is tried in configuration
//!   order (none → [`JwtError::UnknownKey`]).
//! * Claims: `iss` must be the issuer the verifying key belongs to, `aud` must
//!   contain one of that issuer's audiences, `exp` is **required** (a token
//!   without `exp` is rejected with `MissingClaim("exp")`: a bearer token
//!   that never expires cannot be revoked and cannot be cached safely),
//!   `nbf` and `iat` must not be in the future, all with `leeway_seconds`.
//! * The tenant comes from `tenant_claim` (a string of 1–128 characters of
//!   `[A-Za-z0-9._-]`); user and org from the optional `user_claim` /
//!   `org_claim` (strings of 1–256 printable characters, safe to forward as
//!   header values). Claim names are top-level claim names; `sub`, `iss`,
//!   `jti` and `nonce` work too.
//! * Tokens longer than [`MAX_TOKEN_BYTES`] are [`JwtError::Malformed`].
//!
//! # Cache
//!
//! [`TokenCache`] remembers verified identities keyed by the SHA-256 of the
//! token, so a repeated token does not pay the signature cost again. An entry
//! is served only while `now < exp` (the token's own expiry, without leeway;
//! after that the token goes through full verification again, leeway
//! included). Failures are **not** cached: a rejected token is verified again
//! each time (negative caching would not stop an attacker, who can vary the
//! token for free, and would let junk evict good entries). A cache remembers
//! which [`CompiledJwt`] filled it and empties itself when used with another
//! one, so a reconfiguration (e.g. a removed key) takes effect immediately.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use jwt_simple::prelude::{
    Duration, ECDSAP256PublicKeyLike, ES256PublicKey, Ed25519PublicKey, EdDSAPublicKeyLike,
    HS256Key, JWTClaims, MACLike, RS256PublicKey, RSAPublicKeyLike, Token, UnixTimeStamp,
    VerificationOptions,
};
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Decoder};
use jwt_simple::JWTError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest accepted token (the compact serialization), in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Largest accepted `leeway_seconds`.
pub const MAX_LEEWAY_SECONDS: u64 = 3600;
/// Largest accepted `cache_entries`.
pub const MAX_CACHE_ENTRIES: usize = 65_536;
/// Longest tenant id.
pub const MAX_TENANT_LEN: usize = 128;
/// Longest user / org value.
pub const MAX_SUBJECT_LEN: usize = 256;
/// Smallest HS256 secret (RFC 7518 §3.2: at least the hash size).
pub const MIN_HMAC_KEY_BYTES: usize = 32;

/// Times past this are clamped (jwt-simple keeps timestamps as 32.32 fixed
/// point; this keeps `now + leeway` far from overflow). It is in 2106.
const MAX_NOW_UNIX: u64 = (1 << 32) - 2 * MAX_LEEWAY_SECONDS - 1;
/// Longest piece of untrusted text (kid, alg, ...) echoed in an error.
const MAX_ECHO_CHARS: usize = 64;

fn default_tenant_claim() -> String {
    "tenant_id".to_string()
}
fn default_leeway() -> u64 {
    60
}
fn default_true() -> bool {
    true
}
fn default_cache_entries() -> usize {
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

fn config_error(path: impl Into<String>, message: impl Into<String>) -> JwtConfigError {
    JwtConfigError {
        path: path.into(),
        message: message.into(),
    }
}

/// Who the token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant: String,
    pub user: Option<String>,
    pub org: Option<String>,
    /// The token's `exp` (always present on a verified token).
    pub expires_at_unix: Option<u64>,
}

/// Why a request has no verified identity. Strings carry (truncated,
/// sanitised) details; [`fmt::Display`] is meant for the problem+json
/// `detail`, [`JwtError::www_authenticate`] for the 401 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// No token at all.
    Missing,
    /// Not a parseable bearer token / JWT.
    Malformed(String),
    /// `alg` is not one we accept, or does not fit the selected key.
    UnsupportedAlgorithm(String),
    /// No configured key for the token's `kid` (or algorithm).
    UnknownKey(String),
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// A required claim (named) is absent.
    MissingClaim(String),
    /// The tenant claim is not a valid tenant id.
    InvalidTenant(String),
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Missing => f.write_str("a bearer token is required"),
            JwtError::Malformed(why) => write!(f, "malformed token: {why}"),
            JwtError::UnsupportedAlgorithm(why) => write!(f, "unsupported algorithm: {why}"),
            JwtError::UnknownKey(why) => write!(f, "unknown signing key: {why}"),
            JwtError::BadSignature => f.write_str("the token signature is invalid"),
            JwtError::Expired => f.write_str("the token has expired"),
            JwtError::NotYetValid => f.write_str("the token is not valid yet (nbf or iat)"),
            JwtError::WrongIssuer => f.write_str("the token issuer (iss) is not accepted"),
            JwtError::WrongAudience => f.write_str("the token audience (aud) is not accepted"),
            JwtError::MissingClaim(claim) => write!(f, "the token has no {claim} claim"),
            JwtError::InvalidTenant(why) => write!(f, "invalid tenant claim: {why}"),
        }
    }
}

impl std::error::Error for JwtError {}

impl JwtError {
    /// The `WWW-Authenticate` value for a 401 (RFC 6750 §3).
    pub fn www_authenticate(&self) -> String {
        match self {
            JwtError::Missing => "Bearer realm=\"tenant-guard\"".to_string(),
            other => {
                // RFC 6750 error_description: %x20-21 / %x23-5B / %x5D-7E.
                let description: String = other
                    .to_string()
                    .chars()
                    .map(|c| match c {
                        '"' | '\\' => '\'',
                        ' '..='~' => c,
                        _ => '?',
                    })
                    .take(256)
                    .collect();
                format!(
                    "Bearer realm=\"tenant-guard\", error=\"invalid_token\", error_description=\"{description}\""
                )
            }
        }
    }
}

/// Untrusted text (from a token) made safe and short for an error message.
fn echo(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_ECHO_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(MAX_ECHO_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Extract the token from an `Authorization` header value.
///
/// `None` (no header) → `Ok(None)`. `Bearer <token>` (scheme
/// case-insensitive, token in RFC 6750 `b64token` syntax) → `Ok(Some(token))`.
/// Any other scheme, an empty value or an empty/ill-formed token →
/// [`JwtError::Malformed`].
pub fn bearer_token(authorization_header: Option<&str>) -> Result<Option<&str>, JwtError> {
    let Some(header) = authorization_header else {
        return Ok(None);
    };
    let header = header.trim_matches(|c| c == ' ' || c == '\t');
    if header.is_empty() {
        return Err(JwtError::Malformed(
            "empty Authorization header".to_string(),
        ));
    }
    let (scheme, rest) = match header.find([' ', '\t']) {
        Some(at) => header.split_at(at),
        None => (header, ""),
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(JwtError::Malformed(format!(
            "Authorization scheme {} is not Bearer",
            echo(scheme)
        )));
    }
    let token = rest.trim_matches(|c| c == ' ' || c == '\t');
    if token.is_empty() {
        return Err(JwtError::Malformed("empty bearer token".to_string()));
    }
    let body = token.trim_end_matches('=');
    let b64token = !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if !b64token {
        return Err(JwtError::Malformed(
            "the bearer token contains characters outside RFC 6750 b64token".to_string(),
        ));
    }
    Ok(Some(token))
}

/// The four algorithms, one per key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    Es256,
    EdDsa,
    Hs256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
            Alg::Hs256 => "HS256",
        }
    }

    /// The algorithm named by a token header or a JWK `alg`.
    fn from_name(name: &str) -> Option<Alg> {
        match name {
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            "EdDSA" | "Ed25519" => Some(Alg::EdDsa),
            "HS256" => Some(Alg::Hs256),
            _ => None,
        }
    }
}

enum KeyMaterial {
    Rs256(Box<RS256PublicKey>),
    Es256(ES256PublicKey),
    EdDsa(Ed25519PublicKey),
    Hs256(HS256Key),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material (HS256 secrets in particular).
        f.write_str(self.alg().name())
    }
}

impl KeyMaterial {
    fn alg(&self) -> Alg {
        match self {
            KeyMaterial::Rs256(_) => Alg::Rs256,
            KeyMaterial::Es256(_) => Alg::Es256,
            KeyMaterial::EdDsa(_) => Alg::EdDsa,
            KeyMaterial::Hs256(_) => Alg::Hs256,
        }
    }

    fn verify(
        &self,
        token: &str,
        options: VerificationOptions,
    ) -> Result<JWTClaims<Map<String, Value>>, jwt_simple::Error> {
        match self {
            KeyMaterial::Rs256(key) => key.verify_token(token, Some(options)),
            KeyMaterial::Es256(key) => key.verify_token(token, Some(options)),
            KeyMaterial::EdDsa(key) => key.verify_token(token, Some(options)),
            KeyMaterial::Hs256(key) => key.verify_token(token, Some(options)),
        }
    }
}

#[derive(Debug)]
struct CompiledKey {
    kid: Option<String>,
    issuer: usize,
    material: KeyMaterial,
}

#[derive(Debug)]
struct CompiledIssuer {
    iss: String,
    audiences: HashSet<String>,
}

/// Source of [`CompiledJwt::id`]: lets a [`TokenCache`] notice a new config.
static NEXT_COMPILED_ID: AtomicU64 = AtomicU64::new(1);

/// A validated `tenant.jwt` configuration with every key decoded once.
#[derive(Debug)]
pub struct CompiledJwt {
    id: u64,
    issuers: Vec<CompiledIssuer>,
    keys: Vec<CompiledKey>,
    tenant_claim: String,
    user_claim: Option<String>,
    org_claim: Option<String>,
    leeway_seconds: u64,
    required: bool,
    cache_entries: usize,
    verifications: AtomicU64,
}

/// Validate `config` and decode its keys.
pub fn compile(config: &JwtConfig) -> Result<CompiledJwt, JwtConfigError> {
    if config.issuers.is_empty() {
        return Err(config_error("issuers", "at least one issuer is required"));
    }
    check_claim_name("tenant_claim", &config.tenant_claim)?;
    if let Some(claim) = &config.user_claim {
        check_claim_name("user_claim", claim)?;
    }
    if let Some(claim) = &config.org_claim {
        check_claim_name("org_claim", claim)?;
    }
    if config.leeway_seconds > MAX_LEEWAY_SECONDS {
        return Err(config_error(
            "leeway_seconds",
            format!("must be at most {MAX_LEEWAY_SECONDS}"),
        ));
    }
    if config.cache_entries > MAX_CACHE_ENTRIES {
        return Err(config_error(
            "cache_entries",
            format!("must be at most {MAX_CACHE_ENTRIES}"),
        ));
    }

    let mut issuers = Vec::with_capacity(config.issuers.len());
    let mut keys = Vec::new();
    for (i, issuer) in config.issuers.iter().enumerate() {
        let base = format!("issuers.{i}");
        if issuer.iss.is_empty() {
            return Err(config_error(format!("{base}.iss"), "must not be empty"));
        }
        if config.issuers.iter().take(i).any(|o| o.iss == issuer.iss) {
            return Err(config_error(
                format!("{base}.iss"),
                format!("issuer {:?} is configured twice", issuer.iss),
            ));
        }
        if issuer.audiences.is_empty() {
            return Err(config_error(
                format!("{base}.audiences"),
                "at least one audience is required",
            ));
        }
        for (a, audience) in issuer.audiences.iter().enumerate() {
            if audience.is_empty() {
                return Err(config_error(
                    format!("{base}.audiences.{a}"),
                    "must not be empty",
                ));
            }
        }
        if issuer.jwks.keys.is_empty() {
            return Err(config_error(
                format!("{base}.jwks.keys"),
                "at least one key is required",
            ));
        }
        for (k, jwk) in issuer.jwks.keys.iter().enumerate() {
            let path = format!("{base}.jwks.keys.{k}");
            if let Some(kid) = &jwk.kid {
                if kid.is_empty() {
                    return Err(config_error(format!("{path}.kid"), "must not be empty"));
                }
                if issuer
                    .jwks
                    .keys
                    .iter()
                    .take(k)
                    .any(|o| o.kid.as_deref() == Some(kid.as_str()))
                {
                    return Err(config_error(
                        format!("{path}.kid"),
                        format!("kid {kid:?} is used twice in this key set"),
                    ));
                }
            }
            keys.push(CompiledKey {
                kid: jwk.kid.clone(),
                issuer: i,
                material: compile_key(&path, jwk)?,
            });
        }
        issuers.push(CompiledIssuer {
            iss: issuer.iss.clone(),
            audiences: issuer.audiences.iter().cloned().collect(),
        });
    }

    Ok(CompiledJwt {
        id: NEXT_COMPILED_ID.fetch_add(1, Ordering::Relaxed),
        issuers,
        keys,
        tenant_claim: config.tenant_claim.clone(),
        user_claim: config.user_claim.clone(),
        org_claim: config.org_claim.clone(),
        leeway_seconds: config.leeway_seconds,
        required: config.required,
        cache_entries: config.cache_entries,
        verifications: AtomicU64::new(0),
    })
}

fn check_claim_name(path: &str, name: &str) -> Result<(), JwtConfigError> {
    if name.is_empty() {
        return Err(config_error(path, "must not be empty"));
    }
    if name.len() > 256 {
        return Err(config_error(path, "must be at most 256 bytes"));
    }
    Ok(())
}

/// Decode one base64url member (padding tolerated).
fn member<'a>(
    path: &str,
    name: &str,
    value: &'a Option<String>,
) -> Result<&'a str, JwtConfigError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err(config_error(format!("{path}.{name}"), "must not be empty")),
        None => Err(config_error(
            format!("{path}.{name}"),
            "missing (required for this kty)",
        )),
    }
}

fn base64url(path: &str, name: &str, value: &Option<String>) -> Result<Vec<u8>, JwtConfigError> {
    let text = member(path, name, value)?;
    Base64UrlSafeNoPadding::decode_to_vec(text.trim_end_matches('='), None).map_err(|_| {
        config_error(
            format!("{path}.{name}"),
            "not valid base64url (RFC 7515 §2, no padding)",
        )
    })
}

fn fixed_len(
    path: &str,
    name: &str,
    bytes: Vec<u8>,
    len: usize,
) -> Result<Vec<u8>, JwtConfigError> {
    if bytes.len() == len {
        Ok(bytes)
    } else {
        Err(config_error(
            format!("{path}.{name}"),
            format!("must decode to {len} bytes, got {}", bytes.len()),
        ))
    }
}

fn compile_key(path: &str, jwk: &Jwk) -> Result<KeyMaterial, JwtConfigError> {
    if jwk.d.is_some() {
        return Err(config_error(
            format!("{path}.d"),
            "private key material must not be configured (public keys only)",
        ));
    }
    if let Some(use_) = &jwk.use_ {
        if use_ != "sig" {
            return Err(config_error(
                format!("{path}.use"),
                format!("must be \"sig\", got {use_:?}"),
            ));
        }
    }
    if let Some(ops) = &jwk.key_ops {
        if !ops.iter().any(|op| op == "verify") {
            return Err(config_error(
                format!("{path}.key_ops"),
                "must contain \"verify\"",
            ));
        }
    }
    let (alg, allowed): (Alg, &[&str]) = match jwk.kty.as_str() {
        "RSA" => (Alg::Rs256, &["n", "e"]),
        "EC" => (Alg::Es256, &["crv", "x", "y"]),
        "OKP" => (Alg::EdDsa, &["crv", "x"]),
        "oct" => (Alg::Hs256, &["k"]),
        other => {
            return Err(config_error(
                format!("{path}.kty"),
                format!("unsupported key type {other:?} (expected RSA, EC, OKP or oct)"),
            ))
        }
    };
    // Material of another key type is a mistake (and a confusion hazard).
    let present = [
        ("crv", jwk.crv.is_some()),
        ("x", jwk.x.is_some()),
        ("y", jwk.y.is_some()),
        ("n", jwk.n.is_some()),
        ("e", jwk.e.is_some()),
        ("k", jwk.k.is_some()),
    ];
    for (name, is_present) in present {
        if is_present && !allowed.contains(&name) {
            return Err(config_error(
                format!("{path}.{name}"),
                format!("not a member of a {} key", jwk.kty),
            ));
        }
    }
    if let Some(declared) = &jwk.alg {
        if Alg::from_name(declared) != Some(alg) {
            return Err(config_error(
                format!("{path}.alg"),
                format!(
                    "a {} key can only be used with {}, not {declared:?}",
                    jwk.kty,
                    alg.name()
                ),
            ));
        }
    }

    match alg {
        Alg::Rs256 => {
            let n = base64url(path, "n", &jwk.n)?;
            let e = base64url(path, "e", &jwk.e)?;
            let e_trimmed: Vec<u8> = e.iter().copied().skip_while(|b| *b == 0).collect();
            if e_trimmed != [1, 0, 1] {
                return Err(config_error(
                    format!("{path}.e"),
                    "the public exponent must be 65537 (AQAB)",
                ));
            }
            let bits = n
                .iter()
                .position(|b| *b != 0)
                .and_then(|first| {
                    let top = n.get(first)?;
                    Some((n.len() - first - 1) * 8 + (8 - top.leading_zeros() as usize))
                })
                .unwrap_or(0);
            if !(2048..=4096).contains(&bits) {
                return Err(config_error(
                    format!("{path}.n"),
                    format!("the RSA modulus must be 2048 to 4096 bits, got {bits}"),
                ));
            }
            RS256PublicKey::from_components(&n, &e)
                .map(|key| KeyMaterial::Rs256(Box::new(key)))
                .map_err(|err| config_error(format!("{path}.n"), format!("invalid RSA key: {err}")))
        }
        Alg::Es256 => {
            let crv = member(path, "crv", &jwk.crv)?;
            if crv != "P-256" {
                return Err(config_error(
                    format!("{path}.crv"),
                    format!("an EC key must use curve P-256, not {crv:?}"),
                ));
            }
            let x = fixed_len(path, "x", base64url(path, "x", &jwk.x)?, 32)?;
            let y = fixed_len(path, "y", base64url(path, "y", &jwk.y)?, 32)?;
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ES256PublicKey::from_bytes(&point)
                .map(KeyMaterial::Es256)
                .map_err(|_| config_error(format!("{path}.x"), "(x, y) is not a point on P-256"))
        }
        Alg::EdDsa => {
            let crv = member(path, "crv", &jwk.crv)?;
            if crv != "Ed25519" {
                return Err(config_error(
                    format!("{path}.crv"),
                    format!("an OKP key must use curve Ed25519, not {crv:?}"),
                ));
            }
            let x = fixed_len(path, "x", base64url(path, "x", &jwk.x)?, 32)?;
            Ed25519PublicKey::from_bytes(&x)
                .map(KeyMaterial::EdDsa)
                .map_err(|_| config_error(format!("{path}.x"), "not a valid Ed25519 public key"))
        }
        Alg::Hs256 => {
            let k = base64url(path, "k", &jwk.k)?;
            if k.len() < MIN_HMAC_KEY_BYTES {
                return Err(config_error(
                    format!("{path}.k"),
                    format!(
                        "an HS256 secret must be at least {MIN_HMAC_KEY_BYTES} bytes, got {}",
                        k.len()
                    ),
                ));
            }
            Ok(KeyMaterial::Hs256(HS256Key::from_bytes(&k)))
        }
    }
}

/// jwt-simple's error, as ours.
fn map_error(err: &jwt_simple::Error) -> JwtError {
    match err.downcast_ref::<JWTError>() {
        Some(JWTError::InvalidSignature | JWTError::InvalidAuthenticationTag) => {
            JwtError::BadSignature
        }
        Some(JWTError::TokenHasExpired) => JwtError::Expired,
        Some(JWTError::TokenNotValidYet | JWTError::ClockDrift) => JwtError::NotYetValid,
        Some(JWTError::RequiredIssuerMismatch) => JwtError::WrongIssuer,
        Some(JWTError::RequiredIssuerMissing) => JwtError::MissingClaim("iss".to_string()),
        Some(JWTError::RequiredAudienceMismatch) => JwtError::WrongAudience,
        Some(JWTError::RequiredAudienceMissing) => JwtError::MissingClaim("aud".to_string()),
        Some(JWTError::AlgorithmMismatch) => {
            JwtError::UnsupportedAlgorithm("algorithm does not match the key".to_string())
        }
        Some(JWTError::NotJWT) => JwtError::Malformed("typ is not JWT".to_string()),
        Some(JWTError::UnknownCriticalExtension) => {
            JwtError::Malformed("unsupported critical header (crit)".to_string())
        }
        Some(other) => JwtError::Malformed(echo(&other.to_string())),
        // base64 / JSON errors from decoding the header or the claims.
        None => JwtError::Malformed(echo(&err.to_string())),
    }
}

impl CompiledJwt {
    /// Whether a request without a token is rejected.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The configured cache size (`cache_entries`).
    pub fn cache_entries(&self) -> usize {
        self.cache_entries
    }

    /// A cache sized from the configuration.
    pub fn new_cache(&self) -> TokenCache {
        TokenCache::new(self.cache_entries)
    }

    /// Signature verifications performed so far (for tests, metrics, benches).
    pub fn signature_verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Verify `token` (the compact JWS, without `Bearer `) at time
    /// `now_unix_seconds` and extract the identity.
    pub fn verify(&self, token: &str, now_unix_seconds: u64) -> Result<Identity, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed(format!(
                "the token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        if token.split('.').count() != 3 {
            return Err(JwtError::Malformed(
                "a JWT has three dot-separated parts".to_string(),
            ));
        }
        let metadata = Token::decode_metadata(token)
            .map_err(|err| JwtError::Malformed(format!("header: {}", echo(&err.to_string()))))?;
        let alg_name = metadata.algorithm();
        let Some(alg) = Alg::from_name(alg_name) else {
            return Err(JwtError::UnsupportedAlgorithm(echo(alg_name)));
        };

        let candidates: Vec<&CompiledKey> = match metadata.key_id() {
            Some(kid) => {
                let with_kid: Vec<&CompiledKey> = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if with_kid.is_empty() {
                    return Err(JwtError::UnknownKey(format!("kid {}", echo(kid))));
                }
                let fitting: Vec<&CompiledKey> = with_kid
                    .iter()
                    .copied()
                    .filter(|k| k.material.alg() == alg)
                    .collect();
                if fitting.is_empty() {
                    let key_algs: Vec<&str> =
                        with_kid.iter().map(|k| k.material.alg().name()).collect();
                    return Err(JwtError::UnsupportedAlgorithm(format!(
                        "{} does not match key {} ({})",
                        alg.name(),
                        echo(kid),
                        key_algs.join(", ")
                    )));
                }
                fitting
            }
            None => {
                let fitting: Vec<&CompiledKey> = self
                    .keys
                    .iter()
                    .filter(|k| k.material.alg() == alg)
                    .collect();
                if fitting.is_empty() {
                    return Err(JwtError::UnknownKey(format!(
                        "no {} key is configured",
                        alg.name()
                    )));
                }
                fitting
            }
        };

        let now = now_unix_seconds.min(MAX_NOW_UNIX);
        let mut last = JwtError::BadSignature;
        for key in candidates {
            let Some(issuer) = self.issuers.get(key.issuer) else {
                continue;
            };
            let options = VerificationOptions {
                allowed_issuers: Some(HashSet::from([issuer.iss.clone()])),
                allowed_audiences: Some(issuer.audiences.clone()),
                time_tolerance: Some(Duration::from_secs(self.leeway_seconds)),
                max_token_length: Some(MAX_TOKEN_BYTES),
                artificial_time: Some(UnixTimeStamp::from_secs(now)),
                ..VerificationOptions::default()
            };
            self.verifications.fetch_add(1, Ordering::Relaxed);
            match key.material.verify(token, options) {
                Ok(claims) => return self.identity(claims),
                Err(err) => match map_error(&err) {
                    JwtError::BadSignature => last = JwtError::BadSignature,
                    other => return Err(other),
                },
            }
        }
        Err(last)
    }

    /// [`CompiledJwt::verify`] through `cache`: a token verified before (and
    /// not expired, `now < exp`) is answered from the cache without checking
    /// its signature again. Failures are not cached.
    pub fn verify_cached(
        &self,
        cache: &mut TokenCache,
        token: &str,
        now: u64,
    ) -> Result<Identity, JwtError> {
        if cache.owner != self.id {
            cache.clear();
            cache.owner = self.id;
        }
        if token.len() > MAX_TOKEN_BYTES {
            return self.verify(token, now);
        }
        if let Some(identity) = cache.get(token, now) {
            return Ok(identity);
        }
        let identity = self.verify(token, now)?;
        cache.insert_at(token, identity.clone(), now);
        Ok(identity)
    }

    fn identity(&self, claims: JWTClaims<Map<String, Value>>) -> Result<Identity, JwtError> {
        let Some(expires_at) = claims.expires_at else {
            return Err(JwtError::MissingClaim("exp".to_string()));
        };
        let tenant = match claim(&claims, &self.tenant_claim) {
            None => return Err(JwtError::MissingClaim(echo(&self.tenant_claim))),
            Some(Value::String(tenant)) => {
                if !is_valid_tenant(&tenant) {
                    return Err(JwtError::InvalidTenant(format!(
                        "{} must be 1-{MAX_TENANT_LEN} characters of A-Z a-z 0-9 . _ -",
                        echo(&self.tenant_claim)
                    )));
                }
                tenant
            }
            Some(_) => {
                return Err(JwtError::InvalidTenant(format!(
                    "{} must be a string",
                    echo(&self.tenant_claim)
                )))
            }
        };
        let user = optional_claim(&claims, self.user_claim.as_deref())?;
        let org = optional_claim(&claims, self.org_claim.as_deref())?;
        Ok(Identity {
            tenant,
            user,
            org,
            expires_at_unix: Some(expires_at.as_secs()),
        })
    }
}

/// A tenant id as carried in a token: 1–128 characters of `[A-Za-z0-9._-]`.
pub fn is_valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= MAX_TENANT_LEN
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A claim by name: registered string claims first, then custom ones.
fn claim(claims: &JWTClaims<Map<String, Value>>, name: &str) -> Option<Value> {
    let registered = match name {
        "sub" => Some(&claims.subject),
        "iss" => Some(&claims.issuer),
        "jti" => Some(&claims.jwt_id),
        "nonce" => Some(&claims.nonce),
        _ => None,
    };
    match registered {
        Some(value) => value.clone().map(Value::String),
        None => claims.custom.get(name).cloned(),
    }
}

fn optional_claim(
    claims: &JWTClaims<Map<String, Value>>,
    name: Option<&str>,
) -> Result<Option<String>, JwtError> {
    let Some(name) = name else {
        return Ok(None);
    };
    match claim(claims, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => {
            let printable = !value.is_empty()
                && value.len() <= MAX_SUBJECT_LEN
                && value.chars().all(|c| !c.is_control());
            if printable {
                Ok(Some(value))
            } else {
                Err(JwtError::Malformed(format!(
                    "claim {} must be 1-{MAX_SUBJECT_LEN} bytes without control characters",
                    echo(name)
                )))
            }
        }
        Some(_) => Err(JwtError::Malformed(format!(
            "claim {} must be a string",
            echo(name)
        ))),
    }
}

/// Bounded cache of verified tokens: SHA-256(token) → identity, served while
/// `now < exp`; when full the oldest insertion is evicted first.
#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    /// The [`CompiledJwt`] whose results are stored (0: none yet).
    owner: u64,
    entries: BTreeMap<[u8; 32], CacheEntry>,
    /// Insertion order; records whose sequence no longer matches are stale.
    order: VecDeque<([u8; 32], u64)>,
    next_seq: u64,
    hits: u64,
    misses: u64,
}

#[derive(Debug)]
struct CacheEntry {
    identity: Identity,
    expires_at: u64,
    seq: u64,
}

fn cache_key(token: &str) -> [u8; 32] {
    hmac_sha256::Hash::hash(token.as_bytes())
}

impl TokenCache {
    /// An empty cache holding at most `capacity` tokens (0: caches nothing).
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            capacity: capacity.min(MAX_CACHE_ENTRIES),
            owner: 0,
            entries: BTreeMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            hits: 0,
            misses: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that were not.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    /// The identity of a previously inserted `token`, if it has not expired
    /// (`now < exp`). An expired entry is dropped.
    pub fn get(&mut self, token: &str, now: u64) -> Option<Identity> {
        let key = cache_key(token);
        let fresh = self.entries.get(&key).map(|entry| now < entry.expires_at);
        match fresh {
            Some(true) => {
                self.hits += 1;
                self.entries.get(&key).map(|entry| entry.identity.clone())
            }
            Some(false) => {
                self.entries.remove(&key);
                self.misses += 1;
                None
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Remember a verified `token`. Identities without an expiry are not
    /// cached. Evicts the oldest entries when full.
    pub fn insert(&mut self, token: &str, identity: Identity) {
        self.insert_at(token, identity, 0);
    }

    fn insert_at(&mut self, token: &str, identity: Identity, now: u64) {
        let Some(expires_at) = identity.expires_at_unix else {
            return;
        };
        if self.capacity == 0 || expires_at <= now {
            return;
        }
        let key = cache_key(token);
        self.entries.remove(&key);
        while self.entries.len() >= self.capacity {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|entry| entry.seq == seq) {
                self.entries.remove(&old);
            }
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.entries.insert(
            key,
            CacheEntry {
                identity,
                expires_at,
                seq,
            },
        );
        self.order.push_back((key, seq));
        // Drop stale order records (from replaced/expired entries) so the
        // queue stays proportional to the capacity.
        if self.order.len() > self.capacity.saturating_mul(2).saturating_add(16) {
            let entries = &self.entries;
            self.order
                .retain(|(key, seq)| entries.get(key).is_some_and(|entry| entry.seq == *seq));
        }
    }
}
