//! The key and the request fingerprint: parsing the `Idempotency-Key` header
//! (an RFC 8941 sf-string, as raw bytes) and hashing method, path and body.

use sha2::{Digest, Sha256};

use super::*;

/// Why an `Idempotency-Key` header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    Empty,
    NotQuoted,
    BadCharacter,
    TooLong,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Empty => "the Idempotency-Key is empty",
            Self::NotQuoted => {
                "the Idempotency-Key must be a Structured Field string in double quotes, e.g. \"8e03978e-40d5-43e8-bc93-6894a57f9324\""
            }
            Self::BadCharacter => {
                "the Idempotency-Key may contain only printable ASCII; escape only \\\" and \\\\"
            }
            Self::TooLong => "the Idempotency-Key is longer than 255 characters",
        })
    }
}

/// Parses an sf-string (RFC 8941 §3.3.3), as raw header bytes, into the key it
/// carries; any byte outside printable ASCII (non-UTF-8 included) is `BadCharacter`.
pub fn parse_key(header: &[u8]) -> Result<String, KeyError> {
    let inner = crate::headers::trim_ows(header)
        .strip_prefix(b"\"")
        .and_then(|rest| rest.strip_suffix(b"\""))
        .ok_or(KeyError::NotQuoted)?;
    let mut key = String::with_capacity(inner.len());
    let mut bytes = inner.iter().copied();
    while let Some(byte) = bytes.next() {
        match byte {
            b'\\' => match bytes.next() {
                Some(escaped @ (b'"' | b'\\')) => key.push(char::from(escaped)),
                _ => return Err(KeyError::BadCharacter),
            },
            b'"' => return Err(KeyError::NotQuoted),
            b' '..=b'~' => key.push(char::from(byte)),
            _ => return Err(KeyError::BadCharacter),
        }
        if key.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong);
        }
    }
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    Ok(key)
}

/// A request fingerprint: method and normalised path (`crate::path`, with the
/// query) in the first half, the
/// body in the second. Keys are claimed from the headers alone (so concurrent
/// duplicates are refused before they reach upstream); the body half is sealed
/// once the body is complete. An all-zero body half means "not sealed yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub route: [u8; 8],
    pub body: Option<[u8; 8]>,
}

impl Fingerprint {
    pub fn of(method: &str, path: &str, body: Option<&[u8]>) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(method.as_bytes());
        hasher.update([0]);
        hasher.update(path.as_bytes());
        Self {
            route: truncate(&hasher.finalize()),
            body: body.map(body_hash),
        }
    }

    pub(super) fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let (route, body) = out.split_at_mut(8);
        route.copy_from_slice(&self.route);
        body.copy_from_slice(&self.body.unwrap_or([0; 8]));
        out
    }

    pub(super) fn from_bytes(bytes: [u8; 16]) -> Self {
        let (route, body) = bytes.split_at(8);
        let body: [u8; 8] = truncate(body);
        Self {
            route: truncate(route),
            body: (body != [0; 8]).then_some(body),
        }
    }
}

/// The body half of a fingerprint (never all zero, which marks "unsealed").
pub fn body_hash(body: &[u8]) -> [u8; 8] {
    let mut hash: [u8; 8] = truncate(&Sha256::digest(body));
    if hash == [0; 8] {
        hash[7] = 1;
    }
    hash
}

pub(crate) fn owner_hash(tenant: &str, key: &str) -> [u8; 16] {
    let mut hasher = Sha256::new();
    hasher.update(tenant.as_bytes());
    hasher.update([0]);
    hasher.update(key.as_bytes());
    truncate(&hasher.finalize())
}

pub(super) fn truncate<const N: usize>(digest: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (slot, byte) in out.iter_mut().zip(digest) {
        *slot = *byte;
    }
    out
}
