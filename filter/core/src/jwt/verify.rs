//! [`CompiledJwt`]: a validated configuration, and token verification against it
//! (key choice, claims, tenant/user/org extraction).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use jwt_simple::prelude::{Duration, JWTClaims, Token, UnixTimeStamp, VerificationOptions};
use jwt_simple::JWTError;
use serde_json::{Map, Value};

use super::*;
use crate::tenant::TenantId;

/// Source of [`CompiledJwt::id`]: lets a [`TokenCache`] notice a new config.
pub(super) static NEXT_COMPILED_ID: AtomicU64 = AtomicU64::new(1);

/// A validated `tenant.jwt` configuration with every key decoded once.
#[derive(Debug)]
pub struct CompiledJwt {
    pub(super) id: u64,
    pub(super) issuers: Vec<CompiledIssuer>,
    pub(super) keys: Vec<CompiledKey>,
    pub(super) tenant_claim: String,
    pub(super) user_claim: Option<String>,
    pub(super) org_claim: Option<String>,
    pub(super) leeway_seconds: u64,
    pub(super) required: bool,
    pub(super) cache_entries: usize,
    pub(super) verifications: AtomicU64,
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

/// jwt-simple's error, as ours.
pub(super) fn map_error(err: &jwt_simple::Error) -> JwtError {
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

    pub(super) fn identity(
        &self,
        claims: JWTClaims<Map<String, Value>>,
    ) -> Result<Identity, JwtError> {
        let Some(expires_at) = claims.expires_at else {
            return Err(JwtError::MissingClaim("exp".to_string()));
        };
        let tenant = match claim(&claims, &self.tenant_claim) {
            None => return Err(JwtError::MissingClaim(echo(&self.tenant_claim))),
            Some(Value::String(tenant)) => match TenantId::parse(&tenant) {
                Some(tenant) => tenant,
                None => {
                    return Err(JwtError::InvalidTenant(format!(
                        "{} must be {}",
                        echo(&self.tenant_claim),
                        crate::tenant::RULE
                    )))
                }
            },
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

/// A claim by name: registered string claims first, then custom ones.
pub(super) fn claim(claims: &JWTClaims<Map<String, Value>>, name: &str) -> Option<Value> {
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

pub(super) fn optional_claim(
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
