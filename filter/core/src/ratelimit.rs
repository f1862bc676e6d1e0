//! Per-tenant rate limiting: GCRA arithmetic on one compact value per
//! tenant/limit, updated with compare-and-swap so the limit is exact across
//! every worker sharing the store.
//!
//! The stored payload (after the key tag, see [`crate::store::locate`]) is the
//! theoretical arrival time (TAT) in nanoseconds since the Unix epoch and the
//! emission interval it was computed with, 16 bytes little-endian. When a
//! config change alters the limit, the backlog is rescaled to the new interval
//! (requests already admitted keep counting, in the new limit's units). Anything
//! else is treated as absent.

use crate::config::{CompiledConfig, StoreConfig};
use crate::store::{self, CasOutcome, SharedStore, StoreError};

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// Precomputed GCRA parameters for one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateParams {
    pub requests: u64,
    pub per_seconds: u64,
    pub burst: u64,
    /// Nanoseconds one request "costs": `per_seconds / requests`.
    emission_ns: u64,
    /// Bucket depth in nanoseconds: `burst * emission_ns`.
    capacity_ns: u64,
}

impl RateParams {
    /// `requests` and `per_seconds` must be non-zero (config validation guarantees it).
    pub fn new(requests: u64, per_seconds: u64, burst: u64) -> Self {
        let requests_nz = u128::from(requests.max(1));
        let emission = (u128::from(per_seconds) * NANOS_PER_SECOND).div_ceil(requests_nz);
        let emission_ns = u64::try_from(emission).unwrap_or(u64::MAX).max(1);
        let capacity_ns = emission_ns.saturating_mul(burst.max(1));
        Self {
            requests,
            per_seconds,
            burst,
            emission_ns,
            capacity_ns,
        }
    }

    /// Nanoseconds one request costs.
    pub fn emission_ns(&self) -> u64 {
        self.emission_ns
    }
}

/// What one check decided; carries what the RateLimit headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Requests that could still pass right now.
    pub remaining: u64,
    /// Seconds until the bucket is full again (allowed) or the next request may pass (rejected).
    pub reset_seconds: u64,
    /// Seconds a rejected client should wait (`Retry-After`); 0 when allowed.
    pub retry_after_seconds: u64,
}

/// Stored limiter state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub tat_ns: u64,
    pub emission_ns: u64,
}

/// The TAT expressed in `params`' interval: the backlog of admitted requests is kept.
pub fn rescaled_tat(params: &RateParams, state: State, now_ns: u64) -> u64 {
    if state.emission_ns == params.emission_ns || state.emission_ns == 0 || state.tat_ns <= now_ns {
        return state.tat_ns;
    }
    let backlog = u128::from(state.tat_ns - now_ns);
    let scaled = backlog * u128::from(params.emission_ns) / u128::from(state.emission_ns);
    now_ns.saturating_add(u64::try_from(scaled).unwrap_or(u64::MAX))
}

/// Pure GCRA step: given the stored state, decide and return the new TAT to store.
pub fn decide(params: &RateParams, stored: Option<State>, now_ns: u64) -> (Verdict, u64) {
    decide_cost(params, stored, now_ns, 1)
}

/// [`decide`] for a request that takes `cost` requests' worth at once.
pub fn decide_cost(
    params: &RateParams,
    stored: Option<State>,
    now_ns: u64,
    cost: u64,
) -> (Verdict, u64) {
    let tat = stored
        .map(|state| rescaled_tat(params, state, now_ns))
        .unwrap_or(0)
        .max(now_ns);
    let new_tat = tat.saturating_add(params.emission_ns.saturating_mul(cost.max(1)));
    let backlog = new_tat - now_ns;
    if backlog <= params.capacity_ns {
        let remaining = (params.capacity_ns - backlog) / params.emission_ns;
        let verdict = Verdict {
            allowed: true,
            remaining,
            reset_seconds: ceil_seconds(backlog),
            retry_after_seconds: 0,
        };
        (verdict, new_tat)
    } else {
        let wait = backlog - params.capacity_ns;
        let verdict = Verdict {
            allowed: false,
            remaining: 0,
            reset_seconds: ceil_seconds(wait),
            retry_after_seconds: ceil_seconds(wait).max(1),
        };
        (verdict, tat)
    }
}

fn ceil_seconds(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

/// Decodes a stored value; corrupt or foreign values read as absent.
pub fn decode_state(bytes: &[u8]) -> Option<State> {
    let array: [u8; 16] = bytes.try_into().ok()?;
    let (tat, emission) = array.split_at(8);
    Some(State {
        tat_ns: u64::from_le_bytes(tat.try_into().ok()?),
        emission_ns: u64::from_le_bytes(emission.try_into().ok()?),
    })
}

pub fn encode_state(state: State) -> [u8; 16] {
    let mut out = [0u8; 16];
    let (tat, emission) = out.split_at_mut(8);
    tat.copy_from_slice(&state.tat_ns.to_le_bytes());
    emission.copy_from_slice(&state.emission_ns.to_le_bytes());
    out
}

/// The storage key for one tenant's limit.
pub fn state_key(tenant: &str, policy_name: &str) -> String {
    format!("tg:rl:{tenant}:{policy_name}")
}

/// Where one tenant's limit is stored. Configured tenants have their own key;
/// unknown tenants (`tenant.unknown: defaults`, any id a client sends) share a
/// fixed table of `store.unknown_tenant_slots` keys (`tg:rl:u:<n>`), taking over
/// an entry whose state is idle, so the number of keys stays bounded whatever
/// ids clients send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateKey {
    logical: String,
    /// `logical`'s tag, computed once (`store::cached_key_tag`).
    tag: store::Tag,
    table: Option<String>,
    /// Tenant and limit name, for the cluster store (`None` for a raw key).
    parts: Option<(String, String)>,
    /// Counts a key value inside a tenant (a per-tenant table of
    /// `store.key_slots`): no room there is its own refusal.
    keyed: bool,
}

impl RateKey {
    pub fn new(config: &CompiledConfig, tenant: &str, policy_name: &str) -> Self {
        let logical = state_key(tenant, policy_name);
        let parts = Some((tenant.to_owned(), policy_name.to_owned()));
        let tag = store::cached_key_tag(&logical);
        if config.tenants.contains_key(tenant) {
            return Self {
                logical,
                tag,
                table: None,
                parts,
                keyed: false,
            };
        }
        let slot = u64::from_le_bytes(tag) % u64::from(config.store.unknown_tenant_slots.max(1));
        Self {
            logical,
            tag,
            table: Some(format!("tg:rl:u:{slot}")),
            parts,
            keyed: false,
        }
    }

    /// Where the limits of `tenant` that count `kind` (with value `hash`)
    /// keep their state together (`crate::limits::state`): the tenant's own
    /// value (`tg:rl:<tenant>`, unknown tenants in their shared table), or,
    /// for a key value, a slot of the tenant's table of `store.key_slots`
    /// keys (`tg:rk:<tenant>:<n>`; unknown tenants share `tg:rk:u:<n>`).
    pub fn group(
        config: &CompiledConfig,
        tenant: &str,
        kind: crate::config::KeyKind,
        hash: Option<[u8; 8]>,
    ) -> Self {
        let configured = config.tenants.contains_key(tenant);
        let Some(hash) = hash else {
            let logical = format!("tg:rl:{tenant}");
            let tag = store::cached_key_tag(&logical);
            let table = (!configured).then(|| {
                let slots = u64::from(config.store.unknown_tenant_slots.max(1));
                format!("tg:rl:u:{}", u64::from_le_bytes(tag) % slots)
            });
            return Self {
                logical,
                tag,
                table,
                parts: None,
                keyed: false,
            };
        };
        let kind = match kind {
            crate::config::KeyKind::Tenant => "t".to_owned(),
            crate::config::KeyKind::User => "u".to_owned(),
            crate::config::KeyKind::Org => "o".to_owned(),
            crate::config::KeyKind::Header(index) => format!("h{index}"),
        };
        let hex = crate::cluster::wire::to_hex(&hash);
        let logical = format!("tg:rk:{tenant}:{kind}:{hex}");
        let tag = store::cached_key_tag(&logical);
        let slot = u64::from_le_bytes(tag) % u64::from(config.store.key_slots.max(1));
        let table = if configured {
            format!("tg:rk:{tenant}:{slot}")
        } else {
            format!("tg:rk:u:{slot}")
        };
        Self {
            logical,
            tag,
            table: Some(table),
            parts: None,
            keyed: true,
        }
    }

    /// One limit of `tenant` as the cluster store names it: `policy`, or
    /// `policy~<16 hex>` for one key value inside the tenant (bounded like the
    /// key groups: a per-tenant table of `store.key_slots` keys). Its lease
    /// lives in [`RateKey::in_family`] `ls`.
    pub fn limit(
        config: &CompiledConfig,
        tenant: &str,
        policy: &str,
        hash: Option<[u8; 8]>,
    ) -> Self {
        let Some(hash) = hash else {
            return Self::new(config, tenant, policy);
        };
        let name = format!("{policy}~{}", crate::cluster::wire::to_hex(&hash));
        let logical = state_key(tenant, &name);
        let tag = store::cached_key_tag(&logical);
        let slot = u64::from_le_bytes(tag) % u64::from(config.store.key_slots.max(1));
        let table = if config.tenants.contains_key(tenant) {
            format!("tg:rl:k:{tenant}:{slot}")
        } else {
            format!("tg:rl:k:u:{slot}")
        };
        Self {
            logical,
            tag,
            table: Some(table),
            parts: Some((tenant.to_owned(), name)),
            keyed: true,
        }
    }

    /// Counts a key value inside a tenant.
    pub fn is_keyed(&self) -> bool {
        self.keyed
    }

    /// Tenant and limit name (what the cluster store keys on).
    pub fn parts(&self) -> Option<(&str, &str)> {
        self.parts
            .as_ref()
            .map(|(tenant, limit)| (tenant.as_str(), limit.as_str()))
    }

    /// The same key in another family of shared-data keys (`tg:<family>:…`
    /// instead of `tg:rl:…`), bounded the same way.
    pub fn in_family(&self, family: &str) -> RateKey {
        let rename = |key: &str| match key.strip_prefix("tg:rl:") {
            Some(rest) => format!("tg:{family}:{rest}"),
            None => format!("tg:{family}:{key}"),
        };
        let logical = rename(&self.logical);
        RateKey {
            tag: store::cached_key_tag(&logical),
            logical,
            table: self.table.as_deref().map(rename),
            parts: self.parts.clone(),
            keyed: self.keyed,
        }
    }

    /// The logical key (what a stored value is tagged with).
    pub fn logical(&self) -> &str {
        &self.logical
    }

    /// Where this key's value lives right now (`store::locate_tagged`, or
    /// `store::locate_reusable` in its table, where `idle` says which of
    /// another key's values may be taken over); the tag is not computed again.
    pub fn locate(
        &self,
        store: &dyn SharedStore,
        idle: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Option<store::Located>, StoreError> {
        match &self.table {
            None => store::locate_tagged(store, &self.logical, self.tag),
            Some(table) => store::locate_reusable(store, table, self.tag, idle),
        }
    }

    /// The first storage key tried.
    pub fn storage_key(&self) -> &str {
        self.table.as_deref().unwrap_or(&self.logical)
    }
}

impl From<&str> for RateKey {
    fn from(key: &str) -> Self {
        Self {
            tag: store::cached_key_tag(key),
            logical: key.to_owned(),
            table: None,
            parts: None,
            keyed: false,
        }
    }
}

impl From<&String> for RateKey {
    fn from(key: &String) -> Self {
        Self::from(key.as_str())
    }
}

impl From<&RateKey> for RateKey {
    fn from(key: &RateKey) -> Self {
        key.clone()
    }
}

/// Why a check could not be completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// Every CAS attempt lost to another writer.
    Contention {
        attempts: u32,
    },
    /// A key value inside a tenant found no room in its bounded table (the
    /// tenant has that many other keys active at once).
    KeysExhausted,
    Store(StoreError),
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Contention { attempts } => {
                write!(
                    f,
                    "rate-limit state still contended after {attempts} attempts"
                )
            }
            Self::KeysExhausted => write!(
                f,
                "the tenant's table of rate-limit keys has no room for another active key"
            ),
            Self::Store(err) => err.fmt(f),
        }
    }
}

impl From<StoreError> for CheckError {
    fn from(err: StoreError) -> Self {
        Self::Store(err)
    }
}

/// Checks and (when allowed) consumes one request against `key`, exactly,
/// whatever other workers do concurrently.
pub fn check_and_consume(
    store: &dyn SharedStore,
    key: impl Into<RateKey>,
    params: &RateParams,
    now_ns: u64,
    options: &StoreConfig,
) -> Result<Verdict, CheckError> {
    let key: RateKey = key.into();
    let idle = |payload: &[u8]| decode_state(payload).is_none_or(|state| state.tat_ns <= now_ns);
    for _ in 0..options.max_cas_retries {
        let located = key.locate(store, &idle)?;
        let Some(located) = located else {
            return Err(CheckError::Store(StoreError(format!(
                "`{}` and its {} alternates hold other keys' values",
                key.storage_key(),
                store::KEY_ATTEMPTS - 1
            ))));
        };
        let stored = located.payload().and_then(decode_state);
        let (verdict, new_tat) = decide(params, stored, now_ns);
        if !verdict.allowed && stored.is_some() {
            return Ok(verdict);
        }
        let state = State {
            tat_ns: new_tat,
            emission_ns: params.emission_ns,
        };
        // Creating a missing key is a create-if-missing, so two first requests
        // cannot both start from an empty bucket.
        match located.write(store, &encode_state(state))? {
            CasOutcome::Written => return Ok(verdict),
            CasOutcome::Conflict => continue,
        }
    }
    Err(CheckError::Contention {
        attempts: options.max_cas_retries,
    })
}
