//! The shared store the rate limiter and idempotency keep state in: the raw
//! proxy-wasm shared-data ABI as a trait, the three operations the core needs
//! (create if missing, compare-and-swap update, remove) encoded once per host
//! flavour ([`HostSemantics`], decided by [`probe`] at VM start), key tags with
//! deterministic alternate keys (hosts that look keys up by hash can hand back
//! another key's value), the eviction canaries, and an in-memory store that
//! models either host exactly for tests and benches.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// How the host implements shared data; the encodings of [`SharedStore::create`],
/// [`SharedStore::update`] and [`SharedStore::remove`] follow from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HostSemantics {
    /// Envoy: a missing key ignores the CAS, CAS 0 is an unconditional write,
    /// a NULL value only empties the entry (there is no delete), keys are exact strings.
    #[default]
    Envoy,
    /// Kong's ngx_wasm_module: a write succeeds only if `cas == (missing ? 0 :
    /// current)`, so CAS 0 creates a missing key and nothing writes unconditionally;
    /// a NULL value deletes; keys are looked up by CRC32 alone; a full zone evicts
    /// (LRU/SLRU) or, with `eviction=none`, traps the VM.
    NgxWasm,
}

/// The CAS Envoy's create-if-missing writes with: Envoy ignores it on a missing
/// key and hands out values counting up from 1, so an existing key never has it.
pub const ENVOY_CREATE_CAS: u32 = u32::MAX;

/// Result of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    Written,
    /// Another writer changed (or created, or removed) the value since it was read.
    Conflict,
}

/// The store failed (host error); the caller decides the outcome from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shared store error: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// Shared key/value storage with compare-and-swap, exactly as the proxy-wasm ABI
/// offers it, plus the operations the core uses (encoded per [`HostSemantics`]).
pub trait SharedStore {
    /// `None` for a missing key; otherwise the value and its CAS.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// The raw write: `value: None` is the ABI's NULL pointer, `cas` is passed as is.
    fn set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> Result<CasOutcome, StoreError>;
    /// Which host this is (decided once, by [`probe`]).
    fn semantics(&self) -> HostSemantics;
    /// The core saw an entry vanish that only eviction removes.
    fn note_evicted(&self) {}

    /// Writes `key` only if it does not exist; `Conflict` when it does.
    fn create(&self, key: &str, value: &[u8]) -> Result<CasOutcome, StoreError> {
        let cas = match self.semantics() {
            HostSemantics::Envoy => ENVOY_CREATE_CAS,
            HostSemantics::NgxWasm => 0,
        };
        self.set(key, Some(value), cas)
    }

    /// Replaces the value read with `cas`; `Conflict` if anyone wrote or removed it since.
    fn update(&self, key: &str, value: &[u8], cas: u32) -> Result<CasOutcome, StoreError> {
        self.set(key, Some(value), cas)
    }

    /// Removes the value read with `cas`: a real delete where the host has one,
    /// else an empty value (which every reader treats as missing).
    fn remove(&self, key: &str, cas: u32) -> Result<CasOutcome, StoreError> {
        match self.semantics() {
            HostSemantics::Envoy => self.set(key, Some(&[]), cas),
            HostSemantics::NgxWasm => self.set(key, None, cas),
        }
    }
}

/// The key [`probe`] writes (under the configured namespace).
pub const PROBE_KEY: &str = "tg:probe";

/// Finds out how the host implements shared data, by behaviour rather than by
/// name: a write with a non-zero CAS to a missing key succeeds on Envoy (which
/// ignores the CAS of missing keys) and fails on ngx_wasm_module (which wants 0);
/// on an existing key, CAS 0 is an unconditional write on Envoy and a conflict
/// on ngx_wasm_module. Only non-NULL values are written, so no host ever sees a
/// NULL pointer from the probe. The probe key is left empty (Envoy) or is never
/// created (ngx_wasm_module).
pub fn probe(store: &dyn SharedStore) -> Result<HostSemantics, StoreError> {
    for _ in 0..8 {
        if store.get(PROBE_KEY)?.is_some() {
            return Ok(match store.set(PROBE_KEY, Some(&[]), 0)? {
                CasOutcome::Written => HostSemantics::Envoy,
                CasOutcome::Conflict => HostSemantics::NgxWasm,
            });
        }
        match store.set(PROBE_KEY, Some(b"probe"), ENVOY_CREATE_CAS)? {
            CasOutcome::Written => {
                if let Some((_, cas)) = store.get(PROBE_KEY)? {
                    store.set(PROBE_KEY, Some(&[]), cas)?;
                }
                return Ok(HostSemantics::Envoy);
            }
            CasOutcome::Conflict if store.get(PROBE_KEY)?.is_none() => {
                return Ok(HostSemantics::NgxWasm)
            }
            // Another worker created it in between: look again.
            CasOutcome::Conflict => {}
        }
    }
    Err(StoreError(
        "could not tell the host's shared-data semantics apart".into(),
    ))
}

/// How many keys a logical key may occupy: the key itself and `#1`…`#3`.
pub const KEY_ATTEMPTS: u32 = 4;
const TAG_LEN: usize = 8;

/// What every stored value starts with: see [`key_tag`].
pub type Tag = [u8; TAG_LEN];

/// The tag every stored value starts with: the first 8 bytes of SHA-256 of its
/// full logical key (independent of the CRC32 a host may look keys up by).
/// Computed once per key and request (a SHA-256 is a large part of a
/// request's cost in the VM): [`locate_tagged`] takes it precomputed, and
/// keys a worker reads again and again take it from [`cached_key_tag`].
pub fn key_tag(key: &str) -> Tag {
    tag_of(key.as_bytes(), &[])
}

/// The tag of the bytes `head ‖ rest`, as [`key_tag`] computes it for them as
/// one key (a hashed key value is its kind's byte and the value, unjoined).
pub fn tag_of(head: &[u8], rest: &[u8]) -> Tag {
    let digest = Sha256::new()
        .chain_update(head)
        .chain_update(rest)
        .finalize();
    let mut tag = [0u8; TAG_LEN];
    for (slot, byte) in tag.iter_mut().zip(digest.iter()) {
        *slot = *byte;
    }
    tag
}

/// The `attempt`-th storage key of `key` (0 is the key itself).
pub fn alternate_key(key: &str, attempt: u32) -> String {
    if attempt == 0 {
        key.to_owned()
    } else {
        format!("{key}#{attempt}")
    }
}

/// The key tags of the keys a worker used last: a request reads the same
/// few keys again and again, and a SHA-256 per key and request is a large part
/// of a request's cost in the VM. Direct-mapped and fixed in size (whatever
/// keys clients make us build, it holds [`TAG_CACHE_SLOTS`] entries), exact (a
/// hit needs the whole key).
#[derive(Debug)]
pub struct TagCache {
    slots: Vec<Option<(Vec<u8>, Tag)>>,
}

thread_local! {
    /// One per VM (a worker's VM runs on one thread), one per test thread.
    static TAG_CACHE: std::cell::RefCell<TagCache> = std::cell::RefCell::new(TagCache::default());
}

/// [`key_tag`] through this thread's [`TagCache`] (computed directly should
/// the cache be unreachable: in use further up the stack, or torn down).
pub fn cached_key_tag(key: &str) -> Tag {
    cached_tag_of(key.as_bytes(), &[])
}

/// [`tag_of`] through this thread's [`TagCache`] (the same fallback as
/// [`cached_key_tag`]).
pub fn cached_tag_of(head: &[u8], rest: &[u8]) -> Tag {
    TAG_CACHE
        .try_with(|cache| match cache.try_borrow_mut() {
            Ok(mut cache) => cache.tag_of(head, rest),
            Err(_) => tag_of(head, rest),
        })
        .unwrap_or_else(|_| tag_of(head, rest))
}

/// Entries of a [`TagCache`].
pub const TAG_CACHE_SLOTS: usize = 256;
/// Keys longer than this are not cached (their tag is computed each time).
const TAG_CACHE_KEY_MAX: usize = 160;

impl Default for TagCache {
    fn default() -> Self {
        Self {
            slots: vec![None; TAG_CACHE_SLOTS],
        }
    }
}

impl TagCache {
    /// `tag_of(head, rest)`, from the cache when those bytes were seen last
    /// in their slot.
    pub fn tag_of(&mut self, head: &[u8], rest: &[u8]) -> Tag {
        let len = head.len().saturating_add(rest.len());
        if len > TAG_CACHE_KEY_MAX {
            return tag_of(head, rest);
        }
        // FNV-1a picks the slot: cheap, and a collision only costs a SHA-256.
        let slot = head
            .iter()
            .chain(rest)
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
            })
            % TAG_CACHE_SLOTS as u64;
        let Some(entry) = usize::try_from(slot)
            .ok()
            .and_then(|slot| self.slots.get_mut(slot))
        else {
            return tag_of(head, rest);
        };
        match entry {
            Some((cached, tag))
                if cached.len() == len && cached.starts_with(head) && cached.ends_with(rest) =>
            {
                *tag
            }
            _ => {
                let tag = tag_of(head, rest);
                let mut bytes = Vec::with_capacity(len);
                bytes.extend_from_slice(head);
                bytes.extend_from_slice(rest);
                *entry = Some((bytes, tag));
                tag
            }
        }
    }
}

/// `payload` prefixed with the tag of `key`.
pub fn tagged(key: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TAG_LEN + payload.len());
    out.extend_from_slice(&key_tag(key));
    out.extend_from_slice(payload);
    out
}

/// The payload of a value stored under the key tagged `tag`, `None` when the
/// value is another key's.
fn untag<'v>(tag: &Tag, value: &'v [u8]) -> Option<&'v [u8]> {
    let (found, payload) = value.split_at_checked(TAG_LEN)?;
    (found == tag).then_some(payload)
}

/// Where a logical key lives right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The storage key (the logical key or one of its alternates).
    pub key: String,
    /// The logical key's tag, whichever storage key holds it.
    tag: Tag,
    current: Current,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Current {
    Missing,
    /// Present but empty (Envoy's removed value): free for any key.
    Empty(u32),
    Ours(Vec<u8>, u32),
}

impl Located {
    /// Our payload, `None` when nothing is stored yet.
    pub fn payload(&self) -> Option<&[u8]> {
        match &self.current {
            Current::Ours(payload, _) => Some(payload),
            Current::Missing | Current::Empty(_) => None,
        }
    }

    /// Writes `payload` if nobody changed the key since it was located.
    pub fn write(&self, store: &dyn SharedStore, payload: &[u8]) -> Result<CasOutcome, StoreError> {
        self.write_with(store, payload.len(), |value| {
            value.extend_from_slice(payload)
        })
    }

    /// [`Self::write`] of a payload built in place: `fill` appends it to the
    /// tag (one allocation for the whole value).
    pub fn write_with(
        &self,
        store: &dyn SharedStore,
        len: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<CasOutcome, StoreError> {
        let mut value = Vec::with_capacity(TAG_LEN + len);
        value.extend_from_slice(&self.tag);
        fill(&mut value);
        self.write_value(store, &value)
    }

    fn write_value(&self, store: &dyn SharedStore, value: &[u8]) -> Result<CasOutcome, StoreError> {
        match &self.current {
            Current::Missing => store.create(&self.key, value),
            Current::Empty(cas) | Current::Ours(_, cas) => store.update(&self.key, value, *cas),
        }
    }

    /// Removes our value if nobody changed it since it was located.
    pub fn remove(&self, store: &dyn SharedStore) -> Result<CasOutcome, StoreError> {
        match &self.current {
            Current::Ours(_, cas) => store.remove(&self.key, *cas),
            Current::Missing | Current::Empty(_) => Ok(CasOutcome::Written),
        }
    }
}

/// Finds `key`: the first of its storage keys that holds our tag or is free.
/// Values carrying another key's tag (a hash collision on the host, or garbage)
/// are skipped, never used. `None` when every alternate belongs to someone else.
pub fn locate(store: &dyn SharedStore, key: &str) -> Result<Option<Located>, StoreError> {
    locate_tagged(store, key, key_tag(key))
}

/// [`locate`] with `key`'s tag already computed.
pub fn locate_tagged(
    store: &dyn SharedStore,
    key: &str,
    tag: Tag,
) -> Result<Option<Located>, StoreError> {
    for attempt in 0..KEY_ATTEMPTS {
        let storage_key = alternate_key(key, attempt);
        let current = match store.get(&storage_key)? {
            None => Current::Missing,
            Some((value, cas)) if value.is_empty() => Current::Empty(cas),
            Some((value, cas)) => match untag(&tag, &value) {
                Some(payload) => Current::Ours(payload.to_vec(), cas),
                None => continue,
            },
        };
        return Ok(Some(Located {
            key: storage_key,
            tag,
            current,
        }));
    }
    Ok(None)
}

/// [`locate_tagged`] for keys shared by many logical keys (a fixed table, so
/// the key count stays bounded; `tag` is the logical key's): a value of another logical key may be taken over when
/// `idle` says it no longer matters (for rate-limit state: its bucket is full
/// again, which reads the same as no state). Our own value is preferred wherever
/// it is among the alternates, so a key never ends up with two states.
pub fn locate_reusable(
    store: &dyn SharedStore,
    storage_key: &str,
    tag: Tag,
    idle: &dyn Fn(&[u8]) -> bool,
) -> Result<Option<Located>, StoreError> {
    let mut free: Option<Located> = None;
    for attempt in 0..KEY_ATTEMPTS {
        let key = alternate_key(storage_key, attempt);
        let found = |current| Located {
            key: key.clone(),
            tag,
            current,
        };
        match store.get(&key)? {
            None => return Ok(Some(free.unwrap_or_else(|| found(Current::Missing)))),
            Some((value, cas)) => match untag(&tag, &value) {
                Some(payload) => return Ok(Some(found(Current::Ours(payload.to_vec(), cas)))),
                None if free.is_none()
                    && (value.is_empty() || idle(value.get(TAG_LEN..).unwrap_or_default())) =>
                {
                    free = Some(found(Current::Empty(cas)));
                }
                None => {}
            },
        }
    }
    Ok(free)
}

/// Canaries: entries only eviction removes. An LRU zone evicts the entries read
/// least recently first, so a canary read every second would outlive nearly
/// everything; instead there is a ring of [`CANARY_SLOTS`] canaries, one read
/// (and planted again) per [`CANARY_PERIOD_SECONDS`], so each is read once a
/// round and is among the least recently used entries when it is read.
pub const CANARY_SLOTS: u64 = 60;
pub const CANARY_PERIOD_SECONDS: u64 = 60;
/// Pads a canary entry (node + key + value) into the slab size class of
/// rate-limit state (129–256 bytes), the class ngx_wasm_module's SLRU evicts from
/// when state for new tenants needs room.
const CANARY_VALUE_LEN: usize = 64;

pub fn canary_key(slot: u64) -> String {
    format!("tg:canary:{slot}")
}

/// The period a time falls in (canaries carry it).
pub fn canary_epoch(now_ns: u64) -> u64 {
    now_ns / 1_000_000_000 / CANARY_PERIOD_SECONDS
}

fn canary_payload(epoch: u64) -> Vec<u8> {
    let mut payload = epoch.to_le_bytes().to_vec();
    payload.resize(CANARY_VALUE_LEN, 0);
    payload
}

/// What [`check_canary`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canary {
    Present,
    /// This period's canary was gone (it has been planted again).
    Evicted,
}

/// Plants every missing canary (at VM start; a canary already there is left
/// alone, so workers starting later do not count as evictions).
pub fn plant_canaries(store: &dyn SharedStore, now_ns: u64) -> Result<(), StoreError> {
    let payload = canary_payload(canary_epoch(now_ns));
    for slot in 0..CANARY_SLOTS {
        match locate(store, &canary_key(slot))? {
            Some(found) if found.payload().is_none() => {
                // A lost race means another worker planted it.
                found.write(store, &payload)?;
            }
            Some(_) | None => {}
        }
    }
    Ok(())
}

/// Reads this period's canary (once per period and worker is enough) and plants
/// it again for the next round. Only meaningful after [`plant_canaries`].
pub fn check_canary(store: &dyn SharedStore, now_ns: u64) -> Result<Canary, StoreError> {
    let epoch = canary_epoch(now_ns);
    let key = canary_key(epoch % CANARY_SLOTS);
    let found = locate(store, &key)?
        .ok_or_else(|| StoreError(format!("`{key}` is taken by other values")))?;
    let Some(payload) = found.payload() else {
        found.write(store, &canary_payload(epoch))?;
        return Ok(Canary::Evicted);
    };
    let written = payload
        .first_chunk::<8>()
        .map(|stamp| u64::from_le_bytes(*stamp));
    // `written == epoch`: another worker already checked it this period.
    if written != Some(epoch) {
        found.write(store, &canary_payload(epoch))?;
    }
    Ok(Canary::Present)
}

/// CRC32 (IEEE 802.3, as zlib and nginx's `ngx_crc32_long` compute it).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// What a full [`MemoryStore`] in ngx_wasm_module mode does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Evict the least recently used entry (ngx_wasm_module's `lru`/`slru`).
    Lru,
    /// Fail the write (ngx_wasm_module's `eviction=none` traps the VM).
    None,
}

/// Thread-safe in-memory store with either host's exact shared-data semantics.
#[derive(Debug)]
pub struct MemoryStore {
    semantics: HostSemantics,
    /// Entries an ngx_wasm_module zone holds before it evicts (or fails).
    capacity: usize,
    eviction: Eviction,
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// By key (Envoy) or by the key's CRC32 (ngx_wasm_module).
    entries: HashMap<String, Node>,
    /// Envoy hands out CAS values from one counter.
    next_cas: u32,
    clock: u64,
    evicted: u64,
}

#[derive(Debug, Clone)]
struct Node {
    value: Vec<u8>,
    cas: u32,
    used: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// Envoy's semantics, unbounded.
    pub fn new() -> Self {
        Self::with(HostSemantics::Envoy, usize::MAX, Eviction::Lru)
    }

    /// ngx_wasm_module's semantics with a zone of `capacity` entries.
    pub fn ngx_wasm(capacity: usize, eviction: Eviction) -> Self {
        Self::with(HostSemantics::NgxWasm, capacity, eviction)
    }

    fn with(semantics: HostSemantics, capacity: usize, eviction: Eviction) -> Self {
        Self {
            semantics,
            capacity,
            eviction,
            inner: Mutex::new(MemoryInner::default()),
        }
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .map(|inner| inner.entries.len())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries the zone evicted to make room.
    pub fn evicted(&self) -> u64 {
        self.inner.lock().map(|inner| inner.evicted).unwrap_or(0)
    }

    fn map_key(&self, key: &str) -> String {
        match self.semantics {
            HostSemantics::Envoy => key.to_owned(),
            HostSemantics::NgxWasm => format!("{:08x}", crc32(key.as_bytes())),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, MemoryInner>, StoreError> {
        self.inner.lock().map_err(|_| StoreError("poisoned".into()))
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let map_key = self.map_key(key);
        let mut inner = self.lock()?;
        inner.clock += 1;
        let clock = inner.clock;
        Ok(inner.entries.get_mut(&map_key).map(|node| {
            node.used = clock;
            (node.value.clone(), node.cas)
        }))
    }

    fn set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> Result<CasOutcome, StoreError> {
        let map_key = self.map_key(key);
        let mut inner = self.lock()?;
        inner.clock += 1;
        let clock = inner.clock;
        match self.semantics {
            HostSemantics::Envoy => {
                inner.next_cas = inner.next_cas.wrapping_add(1).max(1);
                let next_cas = inner.next_cas;
                let value = value.unwrap_or_default().to_vec();
                match inner.entries.get_mut(&map_key) {
                    Some(node) if cas != 0 && cas != node.cas => return Ok(CasOutcome::Conflict),
                    Some(node) => {
                        node.value = value;
                        node.cas = next_cas;
                        node.used = clock;
                    }
                    None => {
                        inner.entries.insert(
                            map_key,
                            Node {
                                value,
                                cas: next_cas,
                                used: clock,
                            },
                        );
                    }
                }
            }
            HostSemantics::NgxWasm => {
                let current = inner.entries.get(&map_key).map(|node| node.cas);
                if cas != current.unwrap_or(0) {
                    return Ok(CasOutcome::Conflict);
                }
                let Some(value) = value else {
                    return Ok(match inner.entries.remove(&map_key) {
                        Some(_) => CasOutcome::Written,
                        None => CasOutcome::Conflict,
                    });
                };
                if let Some(node) = inner.entries.get_mut(&map_key) {
                    node.value = value.to_vec();
                    node.cas = node.cas.wrapping_add(1);
                    node.used = clock;
                    return Ok(CasOutcome::Written);
                }
                if inner.entries.len() >= self.capacity {
                    if self.eviction == Eviction::None {
                        return Err(StoreError(
                            "the shm_kv zone is full (eviction=none traps the VM)".into(),
                        ));
                    }
                    let oldest = inner
                        .entries
                        .iter()
                        .min_by_key(|(_, node)| node.used)
                        .map(|(key, _)| key.clone());
                    if let Some(oldest) = oldest {
                        inner.entries.remove(&oldest);
                        inner.evicted += 1;
                    }
                }
                inner.entries.insert(
                    map_key,
                    Node {
                        value: value.to_vec(),
                        cas: 1,
                        used: clock,
                    },
                );
            }
        }
        Ok(CasOutcome::Written)
    }

    fn semantics(&self) -> HostSemantics {
        self.semantics
    }
}
