//! Per-tenant share of the idempotency store: one small ledger value per tenant
//! (`tg:idem:t:<tenant hash>`) counting the records the tenant may still hold,
//! so one tenant filling the store cannot refuse another tenant's new keys.
//!
//! A claim reserves one unit that expires when the claimed record must have
//! expired (claim time + in-flight timeout + TTL); completing the record moves
//! the unit to the record's real expiry, releasing the claim gives it back. Units are grouped by expiry (rounded up to 1/16 of that lifetime),
//! so the ledger stays a few hundred bytes whatever the tenant's volume, and a
//! unit never given back (a crash between the steps) lapses by itself.

use sha2::{Digest, Sha256};

use crate::store::{self, CasOutcome, SharedStore, StoreError};

const LEDGER_MAGIC: u8 = 0xB4;
const MAX_GROUPS: usize = 32;
const GROUP_LEN: usize = 12;

/// The tenant's ledger hash (carried by a claim, so releasing needs no tenant id).
pub fn tenant_hash(tenant: &str) -> [u8; 8] {
    let digest = Sha256::digest(tenant.as_bytes());
    let mut out = [0u8; 8];
    for (slot, byte) in out.iter_mut().zip(digest.iter()) {
        *slot = *byte;
    }
    out
}

pub fn ledger_key(tenant: &[u8; 8]) -> String {
    format!("tg:idem:t:{:016x}", u64::from_be_bytes(*tenant))
}

/// Units by expiry (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Ledger {
    groups: Vec<(u64, u32)>,
}

impl Ledger {
    fn decode(payload: Option<&[u8]>) -> Self {
        let groups = payload
            .and_then(|bytes| {
                let (&magic, rest) = bytes.split_first()?;
                if magic != LEDGER_MAGIC || rest.len() % GROUP_LEN != 0 {
                    return None;
                }
                rest.chunks_exact(GROUP_LEN)
                    .map(|chunk| {
                        let (expiry, count) = chunk.split_at(8);
                        Some((
                            u64::from_le_bytes(expiry.try_into().ok()?),
                            u32::from_le_bytes(count.try_into().ok()?),
                        ))
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .unwrap_or_default();
        Self { groups }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.groups.len() * GROUP_LEN);
        out.push(LEDGER_MAGIC);
        for (expiry, count) in &self.groups {
            out.extend_from_slice(&expiry.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        out
    }

    fn live(&mut self, now_s: u64) -> u64 {
        self.groups
            .retain(|(expiry, count)| *expiry > now_s && *count > 0);
        self.groups.iter().map(|(_, count)| u64::from(*count)).sum()
    }

    fn add(&mut self, expiry: u64) {
        if let Some(group) = self.groups.iter_mut().find(|(e, _)| *e == expiry) {
            group.1 = group.1.saturating_add(1);
        } else if self.groups.len() < MAX_GROUPS {
            self.groups.push((expiry, 1));
        } else if let Some(latest) = self.groups.iter_mut().max_by_key(|(e, _)| *e) {
            // Merged into the latest group: held a little longer, never shorter.
            latest.0 = latest.0.max(expiry);
            latest.1 = latest.1.saturating_add(1);
        }
    }

    fn take(&mut self, expiry: u64) {
        let group = self
            .groups
            .iter_mut()
            .filter(|(e, count)| *e >= expiry && *count > 0)
            .min_by_key(|(e, _)| *e);
        if let Some(group) = group {
            group.1 -= 1;
        }
    }
}

/// When a unit reserved now for records of this lifetime lapses.
pub fn reservation_expiry(now_ns: u64, lifetime_seconds: u64) -> u64 {
    let granularity = (lifetime_seconds / 16).max(1);
    let until = now_ns
        .div_ceil(1_000_000_000)
        .saturating_add(lifetime_seconds);
    until.div_ceil(granularity).saturating_mul(granularity)
}

/// What [`reserve`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    Reserved,
    /// The tenant holds `limit` units already; the soonest lapses in this many seconds.
    AtShare {
        retry_after_seconds: u64,
    },
}

/// Reserves one unit for `tenant` unless it holds `limit` already.
pub fn reserve(
    store: &dyn SharedStore,
    tenant: &[u8; 8],
    limit: u32,
    expiry: u64,
    now_ns: u64,
    max_cas_retries: u32,
) -> Result<Option<Reserve>, StoreError> {
    let now_s = now_ns / 1_000_000_000;
    let key = ledger_key(tenant);
    for _ in 0..max_cas_retries {
        let Some(located) = store::locate(store, &key)? else {
            return Err(StoreError(format!("`{key}` has no usable shared-data key")));
        };
        let mut ledger = Ledger::decode(located.payload());
        if ledger.live(now_s) >= u64::from(limit) {
            let soonest = ledger.groups.iter().map(|(e, _)| *e).min().unwrap_or(now_s);
            return Ok(Some(Reserve::AtShare {
                retry_after_seconds: soonest.saturating_sub(now_s).max(1),
            }));
        }
        ledger.add(expiry);
        if located.write(store, &ledger.encode())? == CasOutcome::Written {
            return Ok(Some(Reserve::Reserved));
        }
    }
    Ok(None)
}

/// Gives back a unit reserved with `expiry` (best effort: an unreturned unit lapses).
pub fn release(
    store: &dyn SharedStore,
    tenant: &[u8; 8],
    expiry: u64,
    max_cas_retries: u32,
) -> Result<(), StoreError> {
    amend(store, tenant, max_cas_retries, |ledger| ledger.take(expiry))
}

/// Moves a unit reserved with `from` to `to` (a completed record's real expiry),
/// so the share frees when the record does; best effort like [`release`].
pub fn retime(
    store: &dyn SharedStore,
    tenant: &[u8; 8],
    from: u64,
    to: u64,
    max_cas_retries: u32,
) -> Result<(), StoreError> {
    amend(store, tenant, max_cas_retries, |ledger| {
        ledger.take(from);
        ledger.add(to);
    })
}

/// Applies `change` to the tenant's existing ledger with compare-and-swap; a
/// missing or empty ledger has nothing to give back, and losing every retry
/// leaves the unit to lapse at its expiry.
fn amend(
    store: &dyn SharedStore,
    tenant: &[u8; 8],
    max_cas_retries: u32,
    change: impl Fn(&mut Ledger),
) -> Result<(), StoreError> {
    let key = ledger_key(tenant);
    for _ in 0..max_cas_retries {
        let Some(located) = store::locate(store, &key)? else {
            return Ok(());
        };
        if located.payload().is_none() {
            return Ok(());
        }
        let mut ledger = Ledger::decode(located.payload());
        change(&mut ledger);
        if located.write(store, &ledger.encode())? == CasOutcome::Written {
            return Ok(());
        }
    }
    Ok(())
}

/// Live units the tenant holds (for tests and diagnostics).
pub fn held(store: &dyn SharedStore, tenant: &str, now_ns: u64) -> Result<u64, StoreError> {
    let key = ledger_key(&tenant_hash(tenant));
    let located = store::locate(store, &key)?;
    let mut ledger = Ledger::decode(located.as_ref().and_then(|found| found.payload()));
    Ok(ledger.live(now_ns / 1_000_000_000))
}
