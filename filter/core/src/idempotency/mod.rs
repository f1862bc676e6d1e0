//! Idempotency-Key (draft-ietf-httpapi-idempotency-key-header): key parsing,
//! request fingerprints, and the bounded record store in shared data.
//!
//! Storage layout (a fixed set of keys, so the store is bounded on every host;
//! every value carries its key's tag, see [`crate::store::locate`]):
//! - `tg:idem:b:<bucket>`: one value per bucket with up to [`SLOTS_PER_BUCKET`]
//!   small entries (owner hash, fingerprint, expiry, state, generation). Every
//!   claim, completion and release is one compare-and-swap on this value, so
//!   exactly one request per key reaches upstream across all workers.
//! - `tg:idem:r:<bucket>:<slot>`: the stored response of a completed entry,
//!   tagged with the entry's generation; removed when the entry expires.
//! - `tg:idem:t:<tenant hash>`: the tenant's share of the store ([`crate::share`]).
//!
//! Memory is bounded by `buckets × SLOTS_PER_BUCKET × (max_body_bytes + MAX_STORED_HEADER_BYTES)`.

mod key;
mod params;
mod record;

#[allow(unused_imports)]
use self::{key::*, params::*, record::*};
pub(crate) use key::owner_hash;
pub use key::{body_hash, parse_key, Fingerprint, KeyError};
pub use params::{tenant_bucket_slots, tenant_slots, IdempotencyConfig, Lifetimes, StoreParams};
pub use record::StoredResponse;

use crate::share;
use crate::store::{self, CasOutcome, Located, SharedStore, StoreError};

pub const KEY_HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
pub const SLOTS_PER_BUCKET: usize = 8;
pub const MAX_KEY_LEN: usize = 255;
/// Stored response headers beyond this make a response "completed, not replayable".
pub const MAX_STORED_HEADER_BYTES: usize = 8 * 1024;

const ENTRY_LEN: usize = 16 + 16 + 8 + 1 + 4 + 2 + 4;
const BUCKET_MAGIC: u8 = 0xB3;
const RESPONSE_MAGIC: u8 = 0xB2;

/// An in-flight claim held by one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub bucket: u32,
    pub slot: u8,
    pub generation: u32,
    owner: [u8; 16],
    /// The tenant's share unit (`crate::share`), given back on release.
    share: Option<([u8; 8], u64)>,
}

impl Claim {
    /// A claim held in the cluster store: it names no local slot.
    pub fn remote(generation: u64) -> Self {
        Self {
            bucket: u32::MAX,
            slot: u8::MAX,
            generation: u32::try_from(generation & u64::from(u32::MAX)).unwrap_or(u32::MAX),
            owner: [0; 16],
            share: None,
        }
    }
}

/// What `begin` found for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// This request owns the key: forward it, then `complete` or `release`.
    Claimed(Claim),
    /// Same key, different request (422).
    FingerprintMismatch,
    /// Same key, first request still running (409).
    InFlight,
    /// Same key and route, finished: the body decides between replay and 422.
    NeedBody,
    /// Same key, finished: replay this response.
    Replay(StoredResponse),
    /// Same key, finished, but its response was too large to store (409).
    NotReplayable { status: u16 },
    /// Every slot of the key's bucket holds a live record (503).
    Full { retry_after_seconds: u64 },
    /// The tenant holds its whole share of the store (503, this tenant only).
    TenantFull { retry_after_seconds: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyError {
    Contention { attempts: u32 },
    Store(StoreError),
}

impl std::fmt::Display for IdempotencyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Contention { attempts } => {
                write!(
                    f,
                    "idempotency record still contended after {attempts} attempts"
                )
            }
            Self::Store(err) => err.fmt(f),
        }
    }
}

impl From<StoreError> for IdempotencyError {
    fn from(err: StoreError) -> Self {
        Self::Store(err)
    }
}

pub fn bucket_key(bucket: u32) -> String {
    format!("tg:idem:b:{bucket}")
}

pub fn response_key(bucket: u32, slot: u8) -> String {
    format!("tg:idem:r:{bucket}:{slot}")
}

fn bucket_of(owner: &[u8; 16], buckets: u32) -> u32 {
    let mut first = [0u8; 4];
    for (slot, byte) in first.iter_mut().zip(owner) {
        *slot = *byte;
    }
    u32::from_le_bytes(first) % buckets.max(1)
}

/// Where a bucket lives and what it holds (missing reads as empty).
fn read_bucket(store: &dyn SharedStore, bucket: u32) -> Result<(Located, Vec<Entry>), StoreError> {
    let key = bucket_key(bucket);
    let located = store::locate(store, &key)?
        .ok_or_else(|| StoreError(format!("`{key}` has no usable shared-data key")))?;
    let entries = located.payload().map(decode_bucket).unwrap_or_default();
    Ok((located, entries))
}

/// The share identity of tenants that are not configured (not a valid tenant id).
const POOLED_SHARE: &str = "";

/// Looks the key up and, when it is new (or expired), claims it for this request.
#[allow(clippy::too_many_arguments)]
pub fn begin(
    store: &dyn SharedStore,
    params: &StoreParams,
    tenant: &str,
    key: &str,
    fingerprint: Fingerprint,
    lifetimes: Lifetimes,
    now_ns: u64,
    generation: u32,
) -> Result<Begin, IdempotencyError> {
    let mut share = None;
    let begun = begin_claim(
        store,
        params,
        tenant,
        key,
        fingerprint,
        lifetimes,
        now_ns,
        generation,
        &mut share,
    );
    if let (Some((tenant, expiry)), false) = (share, matches!(begun, Ok(Begin::Claimed(_)))) {
        share::release(store, &tenant, expiry, params.max_cas_retries)?;
    }
    begun
}

#[allow(clippy::too_many_arguments)]
fn begin_claim(
    store: &dyn SharedStore,
    params: &StoreParams,
    tenant: &str,
    key: &str,
    fingerprint: Fingerprint,
    lifetimes: Lifetimes,
    now_ns: u64,
    generation: u32,
    share: &mut Option<([u8; 8], u64)>,
) -> Result<Begin, IdempotencyError> {
    let owner = owner_hash(tenant, key);
    let bucket = bucket_of(&owner, params.buckets);
    let tenant_hash = share::tenant_hash(tenant);
    let [t0, t1, t2, t3, ..] = tenant_hash;
    let tenant_tag = u32::from_le_bytes([t0, t1, t2, t3]);
    for _ in 0..params.max_cas_retries {
        let (located, mut entries) = read_bucket(store, bucket)?;
        if let Some((slot, entry)) = entries
            .iter()
            .enumerate()
            .find(|(_, entry)| entry.owner == owner && entry.is_live(now_ns))
        {
            let stored = Fingerprint::from_bytes(entry.fingerprint);
            if stored.route != fingerprint.route {
                return Ok(Begin::FingerprintMismatch);
            }
            if matches!(entry.state, EntryState::InFlight | EntryState::Free) {
                return Ok(Begin::InFlight);
            }
            let Some(body) = fingerprint.body else {
                return Ok(Begin::NeedBody);
            };
            if stored.body != Some(body) {
                return Ok(Begin::FingerprintMismatch);
            }
            return Ok(match entry.state {
                EntryState::InFlight | EntryState::Free => Begin::InFlight,
                EntryState::NotReplayable => Begin::NotReplayable {
                    status: entry.status,
                },
                EntryState::Completed => {
                    let slot = u8::try_from(slot).unwrap_or(u8::MAX);
                    match stored_response(store, bucket, slot, entry.generation)? {
                        StoredRecord::Found(response) => Begin::Replay(response),
                        StoredRecord::Missing => {
                            // Completed records keep their response until they expire:
                            // only eviction removes it before.
                            if entry.expires_at_ns > now_ns.saturating_add(1_000_000_000) {
                                store.note_evicted();
                            }
                            Begin::NotReplayable {
                                status: entry.status,
                            }
                        }
                        StoredRecord::Other => Begin::NotReplayable {
                            status: entry.status,
                        },
                    }
                }
            });
        }
        let free_slot = entries
            .iter()
            .position(|entry| !entry.is_live(now_ns))
            .or_else(|| (entries.len() < SLOTS_PER_BUCKET).then_some(entries.len()));
        let soonest = |entries: &mut dyn Iterator<Item = &Entry>| {
            let wait = entries
                .map(|entry| entry.expires_at_ns.saturating_sub(now_ns))
                .min()
                .unwrap_or(0);
            wait.div_ceil(1_000_000_000).max(1)
        };
        let Some(slot) = free_slot else {
            return Ok(Begin::Full {
                retry_after_seconds: soonest(&mut entries.iter()),
            });
        };
        let mut held_here = entries
            .iter()
            .filter(|entry| entry.tenant == tenant_tag && entry.is_live(now_ns));
        if held_here.clone().count() >= usize::from(params.tenant_bucket_slots) {
            return Ok(Begin::TenantFull {
                retry_after_seconds: soonest(&mut held_here),
            });
        }
        if share.is_none() && u64::from(params.tenant_slots) < params.capacity() {
            let tenant_hash = if lifetimes.pooled_share {
                share::tenant_hash(POOLED_SHARE)
            } else {
                tenant_hash
            };
            let lifetime = lifetimes
                .in_flight_timeout_seconds
                .saturating_add(lifetimes.ttl_seconds);
            let expiry = share::reservation_expiry(now_ns, lifetime);
            match share::reserve(
                store,
                &tenant_hash,
                params.tenant_slots,
                expiry,
                now_ns,
                params.max_cas_retries,
            )? {
                Some(share::Reserve::Reserved) => *share = Some((tenant_hash, expiry)),
                Some(share::Reserve::AtShare {
                    retry_after_seconds,
                }) => {
                    return Ok(Begin::TenantFull {
                        retry_after_seconds,
                    })
                }
                None => {
                    return Err(IdempotencyError::Contention {
                        attempts: params.max_cas_retries,
                    })
                }
            }
        }
        let claimed = Entry {
            owner,
            fingerprint: fingerprint.to_bytes(),
            expires_at_ns: now_ns.saturating_add(
                lifetimes
                    .in_flight_timeout_seconds
                    .saturating_mul(1_000_000_000),
            ),
            state: EntryState::InFlight,
            generation,
            status: 0,
            tenant: tenant_tag,
        };
        match entries.get_mut(slot) {
            Some(existing) => *existing = claimed,
            None => entries.push(claimed),
        }
        if located.write(store, &encode_bucket(&entries))? == CasOutcome::Written {
            return Ok(Begin::Claimed(Claim {
                bucket,
                slot: u8::try_from(slot).unwrap_or(u8::MAX),
                generation,
                owner,
                share: *share,
            }));
        }
    }
    Err(IdempotencyError::Contention {
        attempts: params.max_cas_retries,
    })
}

/// A slot's stored response as [`stored_response`] found it.
enum StoredRecord {
    Found(StoredResponse),
    /// No record at all.
    Missing,
    /// A record of another generation, or unreadable.
    Other,
}

fn stored_response(
    store: &dyn SharedStore,
    bucket: u32,
    slot: u8,
    generation: u32,
) -> Result<StoredRecord, StoreError> {
    let Some(located) = store::locate(store, &response_key(bucket, slot))? else {
        return Ok(StoredRecord::Other);
    };
    let Some(payload) = located.payload() else {
        return Ok(StoredRecord::Missing);
    };
    Ok(match decode_response(payload) {
        Some((stored, response)) if stored == generation => StoredRecord::Found(response),
        _ => StoredRecord::Other,
    })
}

/// Applies `change` to the claim's entry if it still belongs to the claim.
fn update_claim(
    store: &dyn SharedStore,
    params: &StoreParams,
    claim: &Claim,
    change: impl Fn(&mut Entry),
) -> Result<bool, IdempotencyError> {
    for _ in 0..params.max_cas_retries {
        let (located, mut entries) = read_bucket(store, claim.bucket)?;
        if located.payload().is_none() {
            // The claim wrote this bucket: only eviction (or corruption) removes it.
            store.note_evicted();
            return Ok(false);
        }
        let Some(entry) = entries.get_mut(usize::from(claim.slot)) else {
            return Ok(false);
        };
        if entry.owner != claim.owner
            || entry.generation != claim.generation
            || entry.state != EntryState::InFlight
        {
            return Ok(false);
        }
        change(entry);
        if located.write(store, &encode_bucket(&entries))? == CasOutcome::Written {
            return Ok(true);
        }
    }
    Err(IdempotencyError::Contention {
        attempts: params.max_cas_retries,
    })
}

/// Seals the body half of a claim's fingerprint once the body is complete.
pub fn seal(
    store: &dyn SharedStore,
    params: &StoreParams,
    claim: &Claim,
    body: &[u8],
) -> Result<bool, IdempotencyError> {
    seal_hash(store, params, claim, body_hash(body))
}

/// [`seal`] with the body's hash computed already (a store operation carries
/// the hash, not the body).
pub fn seal_hash(
    store: &dyn SharedStore,
    params: &StoreParams,
    claim: &Claim,
    sealed: [u8; 8],
) -> Result<bool, IdempotencyError> {
    update_claim(store, params, claim, |entry| {
        let mut fingerprint = Fingerprint::from_bytes(entry.fingerprint);
        fingerprint.body = Some(sealed);
        entry.fingerprint = fingerprint.to_bytes();
    })
}

/// Stores the response of `claim` for replay (create or compare-and-swap, never blind).
fn write_response(
    store: &dyn SharedStore,
    params: &StoreParams,
    claim: &Claim,
    response: &StoredResponse,
) -> Result<(), IdempotencyError> {
    let key = response_key(claim.bucket, claim.slot);
    let value = encode_response(claim.generation, response);
    for _ in 0..params.max_cas_retries {
        let located = store::locate(store, &key)?
            .ok_or_else(|| StoreError(format!("`{key}` has no usable shared-data key")))?;
        if located.write(store, &value)? == CasOutcome::Written {
            return Ok(());
        }
    }
    Err(IdempotencyError::Contention {
        attempts: params.max_cas_retries,
    })
}

/// Records the finished response; `None` body means "completed, not replayable".
/// Returns false when the claim had already lapsed (its in-flight timeout passed).
pub fn complete(
    store: &dyn SharedStore,
    params: &StoreParams,
    claim: &Claim,
    response: Option<&StoredResponse>,
    status: u16,
    ttl_seconds: u64,
    now_ns: u64,
) -> Result<bool, IdempotencyError> {
    if let Some(response) = response {
        write_response(store, params, claim, response)?;
    }
    let expires_at_ns = now_ns.saturating_add(ttl_seconds.saturating_mul(1_000_000_000));
    let completed = update_claim(store, params, claim, |entry| {
        entry.state = if response.is_some() {
            EntryState::Completed
        } else {
            EntryState::NotReplayable
        };
        entry.status = status;
        entry.expires_at_ns = expires_at_ns;
    })?;
    if let (true, Some((tenant, reserved))) = (completed, claim.share) {
        let expiry = share::reservation_expiry(now_ns, ttl_seconds);
        share::retime(store, &tenant, reserved, expiry, params.max_cas_retries)?;
    }
    Ok(completed)
}

/// Gives the key back (upstream 5xx, reset, timeout) so a retry can go through,
/// and the tenant's share unit with it.
pub fn release(
    store: &dyn SharedStore,
    params: &StoreParams,
    claim: &Claim,
) -> Result<bool, IdempotencyError> {
    let released = update_claim(store, params, claim, |entry| *entry = Entry::FREE)?;
    if let (true, Some((tenant, expiry))) = (released, claim.share) {
        share::release(store, &tenant, expiry, params.max_cas_retries)?;
    }
    Ok(released)
}

/// Frees expired entries of `buckets` and removes their stored responses.
/// Idempotent: every worker's tick may run it over the same buckets.
pub fn reclaim(
    store: &dyn SharedStore,
    buckets: std::ops::Range<u32>,
    now_ns: u64,
) -> Result<ReclaimStats, StoreError> {
    let mut stats = ReclaimStats::default();
    for bucket in buckets {
        let (located, mut entries) = read_bucket(store, bucket)?;
        let Some(payload) = located.payload() else {
            continue;
        };
        let mut changed = decode_bucket_strict(payload).is_none();
        let mut freed = Vec::new();
        for (slot, entry) in entries.iter_mut().enumerate() {
            if entry.state == EntryState::Free || entry.expires_at_ns > now_ns {
                continue;
            }
            freed.push((u8::try_from(slot).unwrap_or(u8::MAX), entry.generation));
            *entry = Entry::FREE;
            changed = true;
        }
        // Only the worker whose bucket write wins removes the old responses, so a
        // remove never races another remover (a deleted key restarts its CAS on
        // ngx_wasm_module, and a stale remove could hit a newer record).
        if !changed || located.write(store, &encode_bucket(&entries))? == CasOutcome::Conflict {
            continue;
        }
        for (slot, generation) in freed {
            remove_response(store, bucket, slot, generation)?;
            stats.reclaimed += 1;
        }
    }
    Ok(stats)
}

fn remove_response(
    store: &dyn SharedStore,
    bucket: u32,
    slot: u8,
    generation: u32,
) -> Result<(), StoreError> {
    let Some(located) = store::locate(store, &response_key(bucket, slot))? else {
        return Ok(());
    };
    let belongs = located
        .payload()
        .is_some_and(|payload| decode_response(payload).is_none_or(|(g, _)| g == generation));
    if belongs {
        // A lost race means a newer record was written there: keep it.
        located.remove(store)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReclaimStats {
    pub reclaimed: u32,
}

/// Response headers that are not stored for replay: hop-by-hop (RFC 9110 §7.6.1),
/// framing the host recomputes, and per-request headers the filter sets anew.
pub fn is_stored_header(name: &str) -> bool {
    !matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "date"
            | "server"
            | "ratelimit"
            | "ratelimit-policy"
            | "retry-after"
            | REPLAYED_HEADER
    ) && !name.starts_with(':')
        && !name.starts_with("x-envoy-")
}
