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

mod cache;
mod config;
mod keys;
mod verify;

use std::fmt;

#[allow(unused_imports)]
use self::{cache::*, config::*, keys::*, verify::*};
pub use cache::TokenCache;
pub use config::{IssuerConfig, Jwk, Jwks, JwtConfig, JwtConfigError};
pub use verify::{compile, CompiledJwt};

/// Longest accepted token (the compact serialization), in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Largest accepted `leeway_seconds`.
pub const MAX_LEEWAY_SECONDS: u64 = 3600;
/// Largest accepted `cache_entries`.
pub const MAX_CACHE_ENTRIES: usize = 65_536;
/// Longest tenant id.
/// Longest user / org value.
pub const MAX_SUBJECT_LEN: usize = 256;
/// Smallest HS256 secret (RFC 7518 §3.2: at least the hash size).
pub const MIN_HMAC_KEY_BYTES: usize = 32;

/// Times past this are clamped (jwt-simple keeps timestamps as 32.32 fixed
/// point; this keeps `now + leeway` far from overflow). It is in 2106.
const MAX_NOW_UNIX: u64 = (1 << 32) - 2 * MAX_LEEWAY_SECONDS - 1;
/// Longest piece of untrusted text (kid, alg, ...) echoed in an error.
const MAX_ECHO_CHARS: usize = 64;

/// Who the token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant: crate::tenant::TenantId,
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
