//! The store protocol between the filter and the store sidecar: JSON over
//! HTTP/1.1 POST, one path per operation. These types are the one definition
//! both sides use (the sidecar depends on this crate), so the two cannot drift.
//!
//! Every field that reaches Redis key names is checked by [`is_valid_scope`],
//! [`is_valid_limit`] or [`is_valid_key`] on the sidecar before use; hashes are
//! fixed-length lowercase hex. `docs/STORE_PROTOCOL.md` is the prose version.

use serde::{Deserialize, Serialize};

/// `:authority` of every store call (the sidecar ignores it; Envoy wants one).
pub const AUTHORITY: &str = "tenant-guard-store";
pub const LEASE_PATH: &str = "/v1/lease";
pub const LEASES_PATH: &str = "/v1/leases";
pub const CLAIM_PATH: &str = "/v1/claim";
pub const COMPLETE_PATH: &str = "/v1/complete";
pub const RELEASE_PATH: &str = "/v1/release";
pub const DEBIT_PATH: &str = "/v1/debit";
/// The largest request body the sidecar reads (a completed response with its
/// stored body, hex-encoded, fits well inside).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// The largest answer body the filter reads.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;
/// The scope of tenants that are not configured: they share one capacity.
pub const POOLED_SCOPE: &str = "~pooled";
/// Longest scope (tenant id or [`POOLED_SCOPE`]) and limit name.
pub const MAX_NAME_LEN: usize = 128;

/// Take up to `want` emission slots of one tenant limit (GCRA, exact across
/// every replica: a slot granted is a request admitted somewhere).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// The tenant id (Redis hash tag: one tenant's keys on one shard).
    pub scope: String,
    /// The limit's name (`tenant` or a route limit's name).
    pub limit: String,
    /// Microseconds one request costs (`per_seconds / requests`).
    pub emission_us: u64,
    /// Bucket depth in microseconds (`burst × emission_us`).
    pub capacity_us: u64,
    /// Slots asked for, `need` of them for the request that asks (the rest
    /// fill this gateway's lease). 0 only to give slots back (`returned`).
    pub want: u64,
    /// Slots the asking request spends at once: granted all or none. The
    /// rest of `want` is granted up to a fair share of what is left. Absent
    /// (an older filter): 1.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub need: u64,
    /// Unused slots of an earlier lease given back before anything is taken.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub returned: u64,
    /// The lease's lifetime (`store.cluster.lease_ttl_ms`): a gateway that
    /// leased within it counts as active when the fair share is worked out.
    /// Absent: the store's default.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease_ttl_ms: u64,
}

fn one() -> u64 {
    1
}

fn is_one(value: &u64) -> bool {
    *value == 1
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// What a lease granted; `granted == 0` is a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseAnswer {
    pub granted: u64,
    /// Slots still free in Redis after this grant.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_seconds: u64,
    /// When refused: seconds until one slot is free.
    pub retry_after_seconds: u64,
}

/// Slots of several limits of one tenant at once (a request that several
/// limits apply to), all or none: every item's `need` is granted, or no item
/// gets anything (returns still count).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeasesRequest {
    pub scope: String,
    pub items: Vec<LeaseItem>,
    /// As in [`LeaseRequest`]: the fair share's window; absent: the default.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease_ttl_ms: u64,
}

/// Most items of one [`LeasesRequest`].
pub const MAX_LEASE_ITEMS: usize = 16;

/// One limit of a [`LeasesRequest`]: a GCRA rate (`rate`) or a calendar
/// quota (`quota`), exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseItem {
    /// The limit's name, or `<name>~<16 hex>` for one key value inside the tenant.
    pub limit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateWindow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaWindow>,
    pub want: u64,
    pub need: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub returned: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateWindow {
    pub emission_us: u64,
    pub capacity_us: u64,
}

/// `requests` per calendar window ending at `window_end_s` (Unix seconds):
/// counted in Redis key `tg:{scope}:q:<limit>:<window_end_s>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaWindow {
    pub requests: u64,
    pub window_end_s: u64,
}

/// Usage reported after the fact, taken from limits whatever is left
/// (never refused): answered with [`UpdateAnswer`] (`updated: true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebitRequest {
    pub scope: String,
    pub items: Vec<DebitItem>,
}

/// One limit of a [`DebitRequest`]: `units` more of a rate or a quota
/// (exactly one of `rate` and `quota`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebitItem {
    pub limit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateWindow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaWindow>,
    pub units: u64,
}

/// One [`LeaseAnswer`] per item, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeasesAnswer {
    pub items: Vec<LeaseAnswer>,
}

/// Claim an Idempotency-Key, or learn what is stored under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// Tenant id, or [`POOLED_SCOPE`] for tenants that are not configured.
    pub scope: String,
    /// 32 hex digits: the hash of tenant and key (the key itself never leaves the gateway).
    pub key: String,
    /// 16 hex digits: method and normalised path.
    pub route: String,
    /// 16 hex digits: the body's hash, when the body is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// A claim lapses after this long without complete or release.
    pub in_flight_ms: u64,
    /// Live records the scope may hold (its share of the store).
    pub scope_limit: u64,
    /// How long the record will be kept once completed: a claim stays
    /// completable this long past `in_flight_ms` (a late complete, retried
    /// after a failure, still records the response unless the key was
    /// claimed again). Absent (an older filter): 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ttl_ms: u64,
}

/// A response as stored for replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Lowercase hex of the body bytes.
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClaimAnswer {
    /// This request owns the key; `generation` names the claim in complete/release.
    Claimed {
        generation: u64,
    },
    InFlight,
    Mismatch,
    NeedBody,
    Replay {
        response: WireResponse,
    },
    NotReplayable {
        status: u16,
    },
    TenantFull {
        retry_after_seconds: u64,
    },
}

impl ClaimAnswer {
    /// The claim's generation when this request owns the key.
    pub fn generation(&self) -> Option<u64> {
        match self {
            ClaimAnswer::Claimed { generation } => Some(*generation),
            _ => None,
        }
    }
}

/// Record the response of a claim (`response: None`: not replayable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub scope: String,
    pub key: String,
    pub generation: u64,
    /// 16 hex digits: the request body's hash (a retry's body must match it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<WireResponse>,
    /// The record is kept this long.
    pub ttl_ms: u64,
}

/// Give a claim back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    pub scope: String,
    pub key: String,
    pub generation: u64,
}

/// The answer to complete and release: `false` when the claim had lapsed
/// (another request may own the key now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateAnswer {
    pub updated: bool,
}

/// A tenant id or [`POOLED_SCOPE`]: nothing that could break a Redis hash tag.
pub fn is_valid_scope(scope: &str) -> bool {
    scope == POOLED_SCOPE || (scope.len() <= MAX_NAME_LEN && crate::tenant::is_valid(scope))
}

/// A limit name as the config allows it, or `<name>~<16 hex>` (one key
/// value inside a tenant).
pub fn is_valid_limit(limit: &str) -> bool {
    let (name, key) = match limit.split_once('~') {
        Some((name, key)) => (name, Some(key)),
        None => (limit, None),
    };
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && key.is_none_or(|key| is_hex(key, 16))
}

/// `len` lowercase hex digits.
pub fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An idempotency key hash (32 hex digits).
pub fn is_valid_key(key: &str) -> bool {
    is_hex(key, 32)
}

pub fn to_hex(bytes: &[u8]) -> String {
    fn digit(nibble: u8) -> char {
        char::from_digit(u32::from(nibble), 16).unwrap_or('0')
    }
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(digit(byte >> 4));
        out.push(digit(byte & 0x0f));
    }
    out
}

/// Lowercase or uppercase hex to bytes; `None` for anything else.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    fn digit(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| match pair {
            [high, low] => Some(digit(*high)? << 4 | digit(*low)?),
            _ => None,
        })
        .collect()
}

/// A fixed-size hash from hex.
pub fn hash_from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    from_hex(text)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(to_hex(&bytes), "0001abff");
        assert_eq!(from_hex("0001abff"), Some(bytes.to_vec()));
        assert_eq!(from_hex("0g"), None);
        assert_eq!(from_hex("abc"), None);
        assert_eq!(hash_from_hex::<2>("0001"), Some([0, 1]));
        assert_eq!(hash_from_hex::<2>("000102"), None);
    }

    #[test]
    fn names_that_could_break_a_hash_tag_are_refused() {
        assert!(is_valid_scope("acme"));
        assert!(is_valid_scope(POOLED_SCOPE));
        assert!(!is_valid_scope("a}b"));
        assert!(!is_valid_scope("a{b"));
        assert!(!is_valid_scope(""));
        assert!(is_valid_limit("tenant"));
        assert!(!is_valid_limit("a:b"));
        assert!(is_valid_limit(&format!("per-user~{}", "0a".repeat(8))));
        assert!(!is_valid_limit("per-user~0a"));
        assert!(!is_valid_limit(&format!("~{}", "0a".repeat(8))));
        assert!(!is_valid_limit(&format!(
            "a~{}~{}",
            "0a".repeat(8),
            "0a".repeat(8)
        )));
        assert!(is_valid_key(&"ab".repeat(16)));
        assert!(!is_valid_key(&"AB".repeat(16)));
    }

    #[test]
    fn claim_answers_are_tagged() {
        let answer: ClaimAnswer = serde_json::from_str(r#"{"result":"claimed","generation":7}"#)
            .unwrap_or(ClaimAnswer::Mismatch);
        assert_eq!(answer, ClaimAnswer::Claimed { generation: 7 });
        assert!(serde_json::from_str::<ClaimAnswer>(r#"{"result":"nope"}"#).is_err());
    }
}
