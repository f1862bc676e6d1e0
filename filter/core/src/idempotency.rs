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

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::StoreConfig;
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

/// `idempotency` settings (under `defaults` or a tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    pub methods: Vec<String>,
    /// A configured method without the header is rejected (400).
    pub required: bool,
    pub ttl_seconds: u64,
    /// Largest request body buffered (413 above) and largest response body stored for replay.
    pub max_body_bytes: u64,
    /// How long an in-flight claim holds the key if its request never finishes.
    pub in_flight_timeout_seconds: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            methods: vec!["POST".to_owned(), "PATCH".to_owned()],
            required: true,
            ttl_seconds: 86_400,
            max_body_bytes: 65_536,
            in_flight_timeout_seconds: 60,
        }
    }
}

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

    fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let (route, body) = out.split_at_mut(8);
        route.copy_from_slice(&self.route);
        body.copy_from_slice(&self.body.unwrap_or([0; 8]));
        out
    }

    fn from_bytes(bytes: [u8; 16]) -> Self {
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

fn owner_hash(tenant: &str, key: &str) -> [u8; 16] {
    let mut hasher = Sha256::new();
    hasher.update(tenant.as_bytes());
    hasher.update([0]);
    hasher.update(key.as_bytes());
    truncate(&hasher.finalize())
}

fn truncate<const N: usize>(digest: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (slot, byte) in out.iter_mut().zip(digest) {
        *slot = *byte;
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    Free = 0,
    InFlight = 1,
    Completed = 2,
    NotReplayable = 3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    owner: [u8; 16],
    fingerprint: [u8; 16],
    expires_at_ns: u64,
    state: EntryState,
    generation: u32,
    status: u16,
    /// Which tenant holds it (the first bytes of its share hash), for the per-bucket cap.
    tenant: u32,
}

impl Entry {
    const FREE: Entry = Entry {
        owner: [0; 16],
        fingerprint: [0; 16],
        expires_at_ns: 0,
        state: EntryState::Free,
        generation: 0,
        status: 0,
        tenant: 0,
    };

    fn is_live(&self, now_ns: u64) -> bool {
        self.state != EntryState::Free && self.expires_at_ns > now_ns
    }
}

fn encode_bucket(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + entries.len() * ENTRY_LEN);
    out.push(BUCKET_MAGIC);
    out.push(u8::try_from(entries.len()).unwrap_or(0));
    for entry in entries {
        out.extend_from_slice(&entry.owner);
        out.extend_from_slice(&entry.fingerprint);
        out.extend_from_slice(&entry.expires_at_ns.to_le_bytes());
        out.push(entry.state as u8);
        out.extend_from_slice(&entry.generation.to_le_bytes());
        out.extend_from_slice(&entry.status.to_le_bytes());
        out.extend_from_slice(&entry.tenant.to_le_bytes());
    }
    out
}

/// Decodes a bucket; anything malformed reads as an empty bucket.
fn decode_bucket(bytes: &[u8]) -> Vec<Entry> {
    decode_bucket_strict(bytes).unwrap_or_default()
}

fn decode_bucket_strict(bytes: &[u8]) -> Option<Vec<Entry>> {
    let mut reader = Reader::new(bytes);
    if reader.u8()? != BUCKET_MAGIC {
        return None;
    }
    let count = usize::from(reader.u8()?);
    if count > SLOTS_PER_BUCKET {
        return None;
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let owner = reader.array16()?;
        let fingerprint = reader.array16()?;
        let expires_at_ns = reader.u64()?;
        let state = match reader.u8()? {
            0 => EntryState::Free,
            1 => EntryState::InFlight,
            2 => EntryState::Completed,
            3 => EntryState::NotReplayable,
            _ => return None,
        };
        entries.push(Entry {
            owner,
            fingerprint,
            expires_at_ns,
            state,
            generation: reader.u32()?,
            status: reader.u16()?,
            tenant: reader.u32()?,
        });
    }
    reader.is_done().then_some(entries)
}

/// A response as stored for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn encode_response(generation: u32, response: &StoredResponse) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + response.body.len());
    out.push(RESPONSE_MAGIC);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&response.status.to_le_bytes());
    out.extend_from_slice(
        &u16::try_from(response.headers.len())
            .unwrap_or(0)
            .to_le_bytes(),
    );
    for (name, value) in &response.headers {
        for part in [name, value] {
            out.extend_from_slice(&u16::try_from(part.len()).unwrap_or(0).to_le_bytes());
            out.extend_from_slice(part.as_bytes());
        }
    }
    out.extend_from_slice(&response.body);
    out
}

fn decode_response(bytes: &[u8]) -> Option<(u32, StoredResponse)> {
    let mut reader = Reader::new(bytes);
    if reader.u8()? != RESPONSE_MAGIC {
        return None;
    }
    let generation = reader.u32()?;
    let status = reader.u16()?;
    let count = reader.u16()?;
    let mut headers = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        let name = reader.string()?;
        let value = reader.string()?;
        headers.push((name, value));
    }
    let body = reader.rest().to_vec();
    Some((
        generation,
        StoredResponse {
            status,
            headers,
            body,
        },
    ))
}

/// A bounds-checked little-endian reader: running out of bytes is `None`, never a panic.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn array16(&mut self) -> Option<[u8; 16]> {
        self.take(16)?.try_into().ok()
    }
    fn string(&mut self) -> Option<String> {
        let len = usize::from(self.u16()?);
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
    fn is_done(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The storage parameters shared by every operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreParams {
    pub buckets: u32,
    pub max_cas_retries: u32,
    /// Live records one tenant may hold (`u32::MAX`: no per-tenant limit).
    pub tenant_slots: u32,
    /// Slots of one bucket one tenant may hold, so no tenant alone fills a
    /// bucket other tenants' keys hash to ([`SLOTS_PER_BUCKET`]: no cap).
    pub tenant_bucket_slots: u8,
}

impl StoreParams {
    pub fn of(config: &StoreConfig) -> Self {
        Self {
            buckets: config.idempotency_buckets,
            max_cas_retries: config.max_cas_retries,
            tenant_slots: tenant_slots(
                config.idempotency_buckets,
                config.idempotency_tenant_share_percent,
            ),
            tenant_bucket_slots: tenant_bucket_slots(config.idempotency_tenant_share_percent),
        }
    }

    /// Every record the store can hold.
    pub fn capacity(&self) -> u64 {
        u64::from(self.buckets) * SLOTS_PER_BUCKET as u64
    }
}

/// Records one tenant may hold: `share_percent` of the store, at least one.
pub fn tenant_slots(buckets: u32, share_percent: u8) -> u32 {
    if share_percent >= 100 {
        return u32::MAX;
    }
    let capacity = u64::from(buckets) * SLOTS_PER_BUCKET as u64;
    u32::try_from((capacity * u64::from(share_percent) / 100).max(1)).unwrap_or(u32::MAX)
}

/// Slots of a bucket one tenant may hold: twice its share (half the bucket at
/// the default 25 %), so a tenant at its share still finds room in most buckets.
pub fn tenant_bucket_slots(share_percent: u8) -> u8 {
    let slots = (usize::from(share_percent) * SLOTS_PER_BUCKET * 2).div_ceil(100);
    u8::try_from(slots.clamp(1, SLOTS_PER_BUCKET)).unwrap_or(u8::MAX)
}

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

/// How long a claimed record lives (until a claim lapses, and after
/// completion), and whose share it counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub in_flight_timeout_seconds: u64,
    pub ttl_seconds: u64,
    /// The tenant is not configured: all such tenants share one share (one
    /// ledger), so clients inventing tenant ids neither grow the store nor
    /// take more than one share together.
    pub pooled_share: bool,
}

impl Lifetimes {
    pub fn of(config: &IdempotencyConfig, pooled_share: bool) -> Self {
        Self {
            in_flight_timeout_seconds: config.in_flight_timeout_seconds,
            ttl_seconds: config.ttl_seconds,
            pooled_share,
        }
    }
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
