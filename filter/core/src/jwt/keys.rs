//! Key material: the four algorithms, JWKs decoded once into verifying keys.

use std::collections::HashSet;
use std::fmt;

use jwt_simple::prelude::{
    ECDSAP256PublicKeyLike, ES256PublicKey, Ed25519PublicKey, EdDSAPublicKeyLike, HS256Key,
    JWTClaims, MACLike, RS256PublicKey, RSAPublicKeyLike, VerificationOptions,
};
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Decoder};
use serde_json::{Map, Value};

use super::*;

/// The four algorithms, one per key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Alg {
    Rs256,
    Es256,
    EdDsa,
    Hs256,
}

impl Alg {
    pub(super) fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
            Alg::Hs256 => "HS256",
        }
    }

    /// The algorithm named by a token header or a JWK `alg`.
    pub(super) fn from_name(name: &str) -> Option<Alg> {
        match name {
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            "EdDSA" | "Ed25519" => Some(Alg::EdDsa),
            "HS256" => Some(Alg::Hs256),
            _ => None,
        }
    }
}

pub(super) enum KeyMaterial {
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
    pub(super) fn alg(&self) -> Alg {
        match self {
            KeyMaterial::Rs256(_) => Alg::Rs256,
            KeyMaterial::Es256(_) => Alg::Es256,
            KeyMaterial::EdDsa(_) => Alg::EdDsa,
            KeyMaterial::Hs256(_) => Alg::Hs256,
        }
    }

    pub(super) fn verify(
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
pub(super) struct CompiledKey {
    pub(super) kid: Option<String>,
    pub(super) issuer: usize,
    pub(super) material: KeyMaterial,
}

#[derive(Debug)]
pub(super) struct CompiledIssuer {
    pub(super) iss: String,
    pub(super) audiences: HashSet<String>,
}

pub(super) fn check_claim_name(path: &str, name: &str) -> Result<(), JwtConfigError> {
    if name.is_empty() {
        return Err(config_error(path, "must not be empty"));
    }
    if name.len() > 256 {
        return Err(config_error(path, "must be at most 256 bytes"));
    }
    Ok(())
}

/// Decode one base64url member (padding tolerated).
pub(super) fn member<'a>(
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

pub(super) fn base64url(
    path: &str,
    name: &str,
    value: &Option<String>,
) -> Result<Vec<u8>, JwtConfigError> {
    let text = member(path, name, value)?;
    Base64UrlSafeNoPadding::decode_to_vec(text.trim_end_matches('='), None).map_err(|_| {
        config_error(
            format!("{path}.{name}"),
            "not valid base64url (RFC 7515 §2, no padding)",
        )
    })
}

pub(super) fn fixed_len(
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

pub(super) fn compile_key(path: &str, jwk: &Jwk) -> Result<KeyMaterial, JwtConfigError> {
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
