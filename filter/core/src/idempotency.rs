//! Idempotency-Key (draft-ietf-httpapi-idempotency-key-header): key parsing,
//! request fingerprints, and the bounded record store in shared data.
//!
//! Storage layout (the ABI has no delete, so everything lives in a fixed set of keys):
//! - `tg:idem:b:<bucket>`: one value per bucket with up to [`SLOTS_PER_BUCKET`]
//!   small entries (owner hash, fingerprint, expiry, state, generation). Every
//!   claim, completion and release is one compare-and-swap on this value, so
//!   exactly one request per key reaches upstream across all workers.
//! - `tg:idem:r:<bucket>:<slot>`: the stored response of a completed entry,
//!   tagged with the entry's generation; emptied when the entry expires.
//!
//! Memory is bounded by `buckets × SLOTS_PER_BUCKET × (max_body_bytes + MAX_STORED_HEADER_BYTES)`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{CasOutcome, SharedStore, StoreError, CREATE_IF_MISSING_CAS};

pub const KEY_HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
pub const SLOTS_PER_BUCKET: usize = 8;
pub const MAX_KEY_LEN: usize = 255;
/// Stored response headers beyond this make a response "completed, not replayable".
pub const MAX_STORED_HEADER_BYTES: usize = 8 * 1024;

const ENTRY_LEN: usize = 16 + 16 + 8 + 1 + 4 + 2;
const BUCKET_MAGIC: u8 = 0xB1;
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

/// Parses an sf-string (RFC 8941 §3.3.3) into the key it carries.
pub fn parse_key(header: &str) -> Result<String, KeyError> {
    let inner = header
        .trim_matches(' ')
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .ok_or(KeyError::NotQuoted)?;
    let mut key = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ ('"' | '\\')) => key.push(escaped),
                _ => return Err(KeyError::BadCharacter),
            },
            '"' => return Err(KeyError::NotQuoted),
            ' '..='~' => key.push(c),
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

/// A request fingerprint: method and path (with query) in the first half, the
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
}

impl Entry {
    const FREE: Entry = Entry {
        owner: [0; 16],
        fingerprint: [0; 16],
        expires_at_ns: 0,
        state: EntryState::Free,
        generation: 0,
        status: 0,
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
}

/// An in-flight claim held by one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub bucket: u32,
    pub slot: u8,
    pub generation: u32,
    owner: [u8; 16],
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

/// Reads a bucket, creating it if missing; returns entries and the CAS to write with.
fn read_bucket(
    store: &dyn SharedStore,
    key: &str,
) -> Result<Option<(Vec<Entry>, u32)>, StoreError> {
    match store.get(key)? {
        Some((bytes, cas)) => Ok(Some((decode_bucket(&bytes), cas))),
        None => {
            store.set(key, &encode_bucket(&[]), Some(CREATE_IF_MISSING_CAS))?;
            Ok(None)
        }
    }
}

/// Looks the key up and, when it is new (or expired), claims it for this request.
#[allow(clippy::too_many_arguments)]
pub fn begin(
    store: &dyn SharedStore,
    params: &StoreParams,
    tenant: &str,
    key: &str,
    fingerprint: Fingerprint,
    in_flight_timeout_seconds: u64,
    now_ns: u64,
    generation: u32,
) -> Result<Begin, IdempotencyError> {
    let owner = owner_hash(tenant, key);
    let bucket = bucket_of(&owner, params.buckets);
    let storage_key = bucket_key(bucket);
    for _ in 0..params.max_cas_retries {
        let Some((mut entries, cas)) = read_bucket(store, &storage_key)? else {
            continue;
        };
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
                        Some(response) => Begin::Replay(response),
                        None => Begin::NotReplayable {
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
        let Some(slot) = free_slot else {
            let soonest = entries
                .iter()
                .map(|entry| entry.expires_at_ns.saturating_sub(now_ns))
                .min()
                .unwrap_or(0);
            return Ok(Begin::Full {
                retry_after_seconds: soonest.div_ceil(1_000_000_000).max(1),
            });
        };
        let claimed = Entry {
            owner,
            fingerprint: fingerprint.to_bytes(),
            expires_at_ns: now_ns
                .saturating_add(in_flight_timeout_seconds.saturating_mul(1_000_000_000)),
            state: EntryState::InFlight,
            generation,
            status: 0,
        };
        match entries.get_mut(slot) {
            Some(existing) => *existing = claimed,
            None => entries.push(claimed),
        }
        if store.set(&storage_key, &encode_bucket(&entries), Some(cas))? == CasOutcome::Written {
            return Ok(Begin::Claimed(Claim {
                bucket,
                slot: u8::try_from(slot).unwrap_or(u8::MAX),
                generation,
                owner,
            }));
        }
    }
    Err(IdempotencyError::Contention {
        attempts: params.max_cas_retries,
    })
}

fn stored_response(
    store: &dyn SharedStore,
    bucket: u32,
    slot: u8,
    generation: u32,
) -> Result<Option<StoredResponse>, StoreError> {
    Ok(store
        .get(&response_key(bucket, slot))?
        .and_then(|(bytes, _)| decode_response(&bytes))
        .and_then(|(stored_generation, response)| {
            (stored_generation == generation).then_some(response)
        }))
}

/// Applies `change` to the claim's entry if it still belongs to the claim.
fn update_claim(
    store: &dyn SharedStore,
    params: &StoreParams,
    claim: &Claim,
    change: impl Fn(&mut Entry),
) -> Result<bool, IdempotencyError> {
    let storage_key = bucket_key(claim.bucket);
    for _ in 0..params.max_cas_retries {
        let Some((mut entries, cas)) = read_bucket(store, &storage_key)? else {
            return Ok(false);
        };
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
        if store.set(&storage_key, &encode_bucket(&entries), Some(cas))? == CasOutcome::Written {
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
    let sealed = body_hash(body);
    update_claim(store, params, claim, |entry| {
        let mut fingerprint = Fingerprint::from_bytes(entry.fingerprint);
        fingerprint.body = Some(sealed);
        entry.fingerprint = fingerprint.to_bytes();
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
        store.set(
            &response_key(claim.bucket, claim.slot),
            &encode_response(claim.generation, response),
            None,
        )?;
    }
    let expires_at_ns = now_ns.saturating_add(ttl_seconds.saturating_mul(1_000_000_000));
    update_claim(store, params, claim, |entry| {
        entry.state = if response.is_some() {
            EntryState::Completed
        } else {
            EntryState::NotReplayable
        };
        entry.status = status;
        entry.expires_at_ns = expires_at_ns;
    })
}

/// Gives the key back (upstream 5xx, reset, timeout) so a retry can go through.
pub fn release(
    store: &dyn SharedStore,
    params: &StoreParams,
    claim: &Claim,
) -> Result<bool, IdempotencyError> {
    update_claim(store, params, claim, |entry| *entry = Entry::FREE)
}

/// Frees expired entries of `buckets` and empties their stored responses.
/// Idempotent: every worker's tick may run it over the same buckets.
pub fn reclaim(
    store: &dyn SharedStore,
    buckets: std::ops::Range<u32>,
    now_ns: u64,
) -> Result<ReclaimStats, StoreError> {
    let mut stats = ReclaimStats::default();
    for bucket in buckets {
        let storage_key = bucket_key(bucket);
        let Some((bytes, cas)) = store.get(&storage_key)? else {
            continue;
        };
        let mut entries = decode_bucket(&bytes);
        let mut changed = decode_bucket_strict(&bytes).is_none() && !bytes.is_empty();
        for (slot, entry) in entries.iter_mut().enumerate() {
            if entry.state == EntryState::Free || entry.expires_at_ns > now_ns {
                continue;
            }
            let slot = u8::try_from(slot).unwrap_or(u8::MAX);
            empty_response(store, bucket, slot, entry.generation)?;
            *entry = Entry::FREE;
            changed = true;
            stats.reclaimed += 1;
        }
        if changed {
            // A lost race means another worker changed the bucket; the next pass retries.
            store.set(&storage_key, &encode_bucket(&entries), Some(cas))?;
        }
    }
    Ok(stats)
}

fn empty_response(
    store: &dyn SharedStore,
    bucket: u32,
    slot: u8,
    generation: u32,
) -> Result<(), StoreError> {
    let key = response_key(bucket, slot);
    if let Some((bytes, cas)) = store.get(&key)? {
        let belongs = decode_response(&bytes).is_none_or(|(stored, _)| stored == generation);
        if belongs && !bytes.is_empty() {
            store.set(&key, &[], Some(cas))?;
        }
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
