//! One request's rate-limit decision against shared data: every limit that
//! applies, grouped by what it counts, decided all or nothing.

use crate::config::Applied;
use crate::config::{CompiledConfig, CompiledTenant, KeyKind, LimitPolicy, MAX_KEY_HEADERS};
use crate::ratelimit::{CheckError, RateKey, Verdict};
use crate::store::{self, CasOutcome, Located, SharedStore, StoreError};
use crate::tenant::TenantId;

use super::in_flight::{self, Departure, Entered};

use super::state::{self, Entry};

/// The hashes of the key values a request's limits count by (user, org,
/// each key header); `None` where the request has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyHashes {
    user: Option<[u8; 8]>,
    org: Option<[u8; 8]>,
    headers: [Option<[u8; 8]>; MAX_KEY_HEADERS],
}

impl KeyHashes {
    pub fn get(&self, kind: KeyKind) -> Option<[u8; 8]> {
        match kind {
            KeyKind::Tenant => None,
            KeyKind::User => self.user,
            KeyKind::Org => self.org,
            KeyKind::Header(index) => self.headers.get(usize::from(index)).copied().flatten(),
        }
    }

    /// Records the value of `kind` (hashed: the value itself is never stored).
    pub fn set(&mut self, kind: KeyKind, value: &[u8]) {
        let hash = hash_key(kind, value);
        match kind {
            KeyKind::Tenant => {}
            KeyKind::User => self.user = Some(hash),
            KeyKind::Org => self.org = Some(hash),
            KeyKind::Header(index) => {
                if let Some(slot) = self.headers.get_mut(usize::from(index)) {
                    *slot = Some(hash);
                }
            }
        }
    }
}

/// SHA-256 of the kind's byte and the value (first 8 bytes), through the
/// worker's tag cache: the same users and keys come back request after request.
fn hash_key(kind: KeyKind, value: &[u8]) -> [u8; 8] {
    let kind_tag = match kind {
        KeyKind::Tenant => 0,
        KeyKind::User => 1,
        KeyKind::Org => 2,
        KeyKind::Header(index) => 3u8.saturating_add(index),
    };
    crate::store::cached_tag_of(&[kind_tag], value)
}

/// What one request needs decided, resolved against the config when it is
/// carried out: its tenant, the limits that apply, the key values they count
/// by, and the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub tenant: TenantId,
    pub applied: Applied,
    pub keys: KeyHashes,
    pub now_unix_ns: u64,
    /// Names this request's slots in the tenant's in-flight caps.
    pub token: u64,
}

impl Admission {
    /// What the request gives back to the in-flight caps when it ends.
    pub fn departure(&self) -> Departure {
        Departure {
            tenant: self.tenant.clone(),
            keys: self.keys,
            token: self.token,
        }
    }
}

/// The decision: admitted or not, the limit the `RateLimit` header reports
/// (the closest to exhaustion, or, when refused, the refusing one with the
/// longest wait) by its position among the applied limits, and when every
/// refusing limit admits again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub allowed: bool,
    pub headline: Option<(usize, Verdict)>,
    pub retry_after_seconds: u64,
    /// The request holds slots of its tenant's in-flight caps (give them
    /// back at its end), or was refused by the full cap named here.
    pub in_flight: Entered,
    /// What each applied limit had left after this request, by position
    /// (`u64::MAX`: not decided; the first [`REPORTED_LIMITS`] limits only):
    /// what the quota gauges report.
    pub remaining: [u64; REPORTED_LIMITS],
}

/// Applied limits whose remaining count an [`Admitted`] keeps.
pub const REPORTED_LIMITS: usize = 16;

impl Admitted {
    /// Nothing to decide: no limit applies.
    pub fn unlimited() -> Self {
        Self {
            allowed: true,
            headline: None,
            retry_after_seconds: 0,
            in_flight: Entered::Free,
            remaining: [u64::MAX; REPORTED_LIMITS],
        }
    }

    /// Refused by a full in-flight cap, before any limit was decided.
    pub fn cap_full(entered: Entered) -> Self {
        Self {
            allowed: false,
            headline: None,
            retry_after_seconds: 1,
            in_flight: entered,
            remaining: [u64::MAX; REPORTED_LIMITS],
        }
    }

    /// Takes one limit's verdict into account.
    pub fn add(&mut self, position: usize, verdict: Verdict) {
        if let Some(slot) = self.remaining.get_mut(position) {
            *slot = verdict.remaining;
        }
        let replaces = match (self.headline, verdict.allowed) {
            (None, _) => true,
            (Some((_, current)), false) => {
                current.allowed || verdict.retry_after_seconds > current.retry_after_seconds
            }
            (Some((_, current)), true) => {
                current.allowed
                    && (verdict.remaining, verdict.reset_seconds)
                        < (current.remaining, current.reset_seconds)
            }
        };
        if replaces {
            self.headline = Some((position, verdict));
        }
        if !verdict.allowed {
            self.allowed = false;
            self.retry_after_seconds = self.retry_after_seconds.max(verdict.retry_after_seconds);
        }
    }
}

/// What a group of limits counts: the tenant, or one key value inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub kind: KeyKind,
    pub hash: Option<[u8; 8]>,
}

impl Group {
    /// The group `policy` spends from for a request with `keys`: its key's
    /// value, or the tenant when the request has none (`on_missing: tenant`).
    pub fn of(policy: &LimitPolicy, keys: &KeyHashes) -> Group {
        match keys.get(policy.key) {
            Some(hash) => Group {
                kind: policy.key,
                hash: Some(hash),
            },
            None => Group {
                kind: KeyKind::Tenant,
                hash: None,
            },
        }
    }
}

/// The groups of a request, in the fixed order they are taken (the tenant,
/// users, orgs, headers): at most one per key kind.
pub const MAX_GROUPS: usize = 3 + MAX_KEY_HEADERS;

pub fn groups(
    settings: &CompiledTenant,
    applied: Applied,
    keys: &KeyHashes,
) -> ([Option<Group>; MAX_GROUPS], usize) {
    let mut groups = [None; MAX_GROUPS];
    let mut count = 0;
    for policy in settings.applied_policies(applied) {
        let group = Group::of(policy, keys);
        if groups.iter().flatten().any(|known| *known == group) {
            continue;
        }
        if let Some(slot) = groups.get_mut(count) {
            *slot = Some(group);
            count += 1;
        }
    }
    let live = groups.get_mut(..count).unwrap_or_default();
    live.sort_by_key(|group| group.map(|g| g.kind));
    (groups, count)
}

/// The shared-data key of one group of `tenant`.
pub fn group_key(config: &CompiledConfig, tenant: &str, group: Group) -> RateKey {
    RateKey::group(config, tenant, group.kind, group.hash)
}

/// One group read and decided.
struct Read {
    group: Group,
    located: Located,
    entries: Vec<Entry>,
}

/// Decides `admission` on shared data: the tenant's in-flight caps are
/// entered, every applicable limit admits, and then each group is written,
/// or none is (a refused request consumes nothing and holds no slot).
/// `store.max_cas_retries` bounds the attempts.
pub fn admit_local(
    config: &CompiledConfig,
    store: &dyn SharedStore,
    admission: &Admission,
) -> Result<Admitted, CheckError> {
    admit_entering(config, store, admission, |config, store, admission| {
        admit_share(config, store, admission, 100)
    })
}

/// Enters the in-flight caps of `admission`'s tenant, then decides its
/// limits with `decide`; the slots go back unless the request is admitted.
pub fn admit_entering(
    config: &CompiledConfig,
    store: &dyn SharedStore,
    admission: &Admission,
    decide: impl FnOnce(&CompiledConfig, &dyn SharedStore, &Admission) -> Result<Admitted, CheckError>,
) -> Result<Admitted, CheckError> {
    let Some(settings) = config.tenant_settings(&admission.tenant) else {
        return Ok(Admitted::unlimited());
    };
    let departure = admission.departure();
    let entered = in_flight::enter(config, store, settings, &departure, admission.now_unix_ns)?;
    if matches!(entered, Entered::Full { .. }) {
        return Ok(Admitted::cap_full(entered));
    }
    let decided = decide(config, store, admission);
    match decided {
        Ok(mut admitted) if admitted.allowed => {
            admitted.in_flight = entered;
            Ok(admitted)
        }
        other => {
            if entered == Entered::Held {
                in_flight::leave(config, store, &departure, admission.now_unix_ns)?;
            }
            other
        }
    }
}

/// [`admit_local`] with every limit at `percent` of its size: what one
/// gateway enforces alone while the cluster store is away.
pub fn admit_share(
    config: &CompiledConfig,
    store: &dyn SharedStore,
    admission: &Admission,
    percent: u8,
) -> Result<Admitted, CheckError> {
    let Some(settings) = config.tenant_settings(&admission.tenant) else {
        return Ok(Admitted::unlimited());
    };
    let (groups, count) = groups(settings, admission.applied, &admission.keys);
    let now = admission.now_unix_ns;
    for _ in 0..config.store.max_cas_retries {
        let mut admitted = Admitted::unlimited();
        let mut reads: [Option<Read>; MAX_GROUPS] = Default::default();
        for (slot, group) in reads.iter_mut().zip(groups.iter().flatten()) {
            let key = group_key(config, &admission.tenant, *group);
            let located = locate_group(store, &key, now)?;
            let mut entries = located
                .payload()
                .and_then(state::decode)
                .unwrap_or_default();
            for (position, policy) in settings.applied_policies(admission.applied).enumerate() {
                if Group::of(policy, &admission.keys) != *group {
                    continue;
                }
                let stored = entries.iter().find(|entry| entry.id == policy.id).copied();
                let cost = admission.applied.cost_of(policy);
                let (verdict, entry) = state::decide(policy, stored, now, percent, cost);
                admitted.add(position, verdict);
                if !state::upsert(&mut entries, entry, now) {
                    return Err(CheckError::Store(StoreError(format!(
                        "`{}` holds {} live limits",
                        key.logical(),
                        state::MAX_ENTRIES
                    ))));
                }
            }
            *slot = Some(Read {
                group: *group,
                located,
                entries,
            });
        }
        let reads = reads.get(..count).unwrap_or_default();
        if !admitted.allowed {
            // Refused: nothing is written, nothing consumed.
            return Ok(admitted);
        }
        match commit(config, store, settings, admission, reads)? {
            true => return Ok(admitted),
            false => continue,
        }
    }
    Err(CheckError::Contention {
        attempts: config.store.max_cas_retries,
    })
}

/// Writes every group in order; on a lost compare-and-swap undoes the ones
/// written and reports `false` (decide again).
fn commit(
    config: &CompiledConfig,
    store: &dyn SharedStore,
    settings: &CompiledTenant,
    admission: &Admission,
    reads: &[Option<Read>],
) -> Result<bool, CheckError> {
    for (index, read) in reads.iter().flatten().enumerate() {
        let written = read
            .located
            .write_with(store, state::encoded_len(&read.entries), |out| {
                state::encode_into(&read.entries, out)
            })?;
        if written == CasOutcome::Conflict {
            for earlier in reads.iter().flatten().take(index) {
                undo(config, store, settings, admission, earlier.group)?;
            }
            return Ok(false);
        }
    }
    Ok(true)
}

/// Gives back what an admitted request took from `group` (its other groups
/// could not be written).
fn undo(
    config: &CompiledConfig,
    store: &dyn SharedStore,
    settings: &CompiledTenant,
    admission: &Admission,
    group: Group,
) -> Result<(), CheckError> {
    let key = group_key(config, &admission.tenant, group);
    let now = admission.now_unix_ns;
    for _ in 0..config.store.max_cas_retries {
        let located = locate_group(store, &key, now)?;
        let Some(mut entries) = located.payload().and_then(state::decode) else {
            return Ok(());
        };
        for policy in settings.applied_policies(admission.applied) {
            if Group::of(policy, &admission.keys) != group {
                continue;
            }
            if let Some(entry) = entries.iter_mut().find(|entry| entry.id == policy.id) {
                state::undo(policy, entry, admission.applied.cost_of(policy));
            }
        }
        if located.write(store, &state::encode(&entries))? == CasOutcome::Written {
            return Ok(());
        }
    }
    Err(CheckError::Contention {
        attempts: config.store.max_cas_retries,
    })
}

/// Where a group's value lives; a keyed group whose table has no room is
/// [`CheckError::KeysExhausted`].
pub(super) fn locate_group(
    store: &dyn SharedStore,
    key: &RateKey,
    now_ns: u64,
) -> Result<Located, CheckError> {
    let idle = |payload: &[u8]| {
        state::decode(payload).is_none_or(|entries| entries.iter().all(|e| e.idle(now_ns)))
    };
    let located = key.locate(store, &idle)?;
    located.ok_or_else(|| {
        if key.is_keyed() {
            CheckError::KeysExhausted
        } else {
            CheckError::Store(StoreError(format!(
                "`{}` and its {} alternates hold other keys' values",
                key.storage_key(),
                store::KEY_ATTEMPTS - 1
            )))
        }
    })
}
