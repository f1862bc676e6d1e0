//! Caps on the requests of a tenant (or of one user, org or header value of
//! it) that are in flight at once (`max_in_flight`). Each cap keeps one
//! shared-data value: the slots of the requests holding it, each a token
//! (random per request) and a deadline. A request enters every cap before
//! its limits are decided and leaves at its stream's end; a slot whose
//! request never left (its worker's VM died) is free again after its
//! deadline, so none leaks for good.
//!
//! In cluster mode the caps are this gateway's, kept in its shared data like
//! here: a cap holds per gateway (README "Running a fleet" says why).

use crate::config::{CompiledConfig, CompiledTenant, InFlightPolicy, KeyKind};
use crate::ratelimit::{CheckError, RateKey};
use crate::store::{CasOutcome, Located, SharedStore, StoreError};
use crate::tenant::TenantId;

use super::admit::KeyHashes;

const SLOT_LEN: usize = 16;

/// One request's place in the caps of its tenant: what it must give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    pub tenant: TenantId,
    pub keys: KeyHashes,
    pub token: u64,
}

/// What entering the caps decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entered {
    /// No cap applies.
    Free,
    /// A slot of every cap is held: give them back with [`leave`].
    Held,
    /// This cap is full (the request holds nothing).
    Full { cap: String, max: u32 },
}

/// One slot: a request's token and when it stops counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    token: u64,
    deadline_ns: u64,
}

fn decode(payload: &[u8]) -> Option<Vec<Slot>> {
    if !payload.len().is_multiple_of(SLOT_LEN) {
        return None;
    }
    let word = |bytes: &[u8]| bytes.try_into().map(u64::from_le_bytes).ok();
    payload
        .chunks_exact(SLOT_LEN)
        .map(|chunk| {
            let (token, deadline) = chunk.split_at(8);
            Some(Slot {
                token: word(token)?,
                deadline_ns: word(deadline)?,
            })
        })
        .collect()
}

fn encode_into(slots: &[Slot], out: &mut Vec<u8>) {
    for slot in slots {
        out.extend_from_slice(&slot.token.to_le_bytes());
        out.extend_from_slice(&slot.deadline_ns.to_le_bytes());
    }
}

/// Where `cap`'s slots live for a request with `keys`: the tenant's value,
/// or (a key value) an entry of the tenant's key table.
fn cap_key(
    config: &CompiledConfig,
    tenant: &str,
    cap: &InFlightPolicy,
    keys: &KeyHashes,
) -> RateKey {
    let hash = keys.get(cap.key);
    let kind = if hash.is_some() {
        cap.key
    } else {
        KeyKind::Tenant
    };
    RateKey::group(config, tenant, kind, hash).in_family("if")
}

fn locate(store: &dyn SharedStore, key: &RateKey, now_ns: u64) -> Result<Located, CheckError> {
    let idle = |payload: &[u8]| {
        decode(payload).is_none_or(|slots| slots.iter().all(|slot| slot.deadline_ns <= now_ns))
    };
    let located = key.locate(store, &idle)?;
    located.ok_or(CheckError::KeysExhausted)
}

/// Enters every cap of `settings` for a request with `keys`, holding
/// `token`: all of them, or none (a full cap gives back what was taken).
pub fn enter(
    config: &CompiledConfig,
    store: &dyn SharedStore,
    settings: &CompiledTenant,
    departure: &Departure,
    now_ns: u64,
) -> Result<Entered, CheckError> {
    if settings.in_flight.is_empty() {
        return Ok(Entered::Free);
    }
    for (index, cap) in settings.in_flight.iter().enumerate() {
        let entered = enter_one(config, store, cap, departure, now_ns);
        let full = match entered {
            Ok(true) => continue,
            Ok(false) => None,
            Err(err) => Some(err),
        };
        for earlier in settings.in_flight.iter().take(index) {
            leave_one(config, store, earlier, departure, now_ns)?;
        }
        return match full {
            Some(err) => Err(err),
            None => Ok(Entered::Full {
                cap: cap.name.clone(),
                max: cap.max,
            }),
        };
    }
    Ok(Entered::Held)
}

/// One cap: `false` when it is full.
fn enter_one(
    config: &CompiledConfig,
    store: &dyn SharedStore,
    cap: &InFlightPolicy,
    departure: &Departure,
    now_ns: u64,
) -> Result<bool, CheckError> {
    let key = cap_key(config, departure.tenant.as_str(), cap, &departure.keys);
    for _ in 0..config.store.max_cas_retries {
        let located = locate(store, &key, now_ns)?;
        let mut slots = located.payload().and_then(decode).unwrap_or_default();
        slots.retain(|slot| slot.deadline_ns > now_ns && slot.token != departure.token);
        if slots.len() >= usize::try_from(cap.max).unwrap_or(usize::MAX) {
            return Ok(false);
        }
        slots.push(Slot {
            token: departure.token,
            deadline_ns: now_ns.saturating_add(cap.timeout_ns),
        });
        let written = located.write_with(store, slots.len() * SLOT_LEN, |out| {
            encode_into(&slots, out)
        })?;
        if written == CasOutcome::Written {
            return Ok(true);
        }
    }
    Err(CheckError::Contention {
        attempts: config.store.max_cas_retries,
    })
}

/// Gives back the slots `departure` holds (at its stream's end, or when its
/// limits refused it). A slot already past its deadline is simply gone.
pub fn leave(
    config: &CompiledConfig,
    store: &dyn SharedStore,
    departure: &Departure,
    now_ns: u64,
) -> Result<(), CheckError> {
    let Some(settings) = config.tenant_settings(&departure.tenant) else {
        return Ok(());
    };
    for cap in &settings.in_flight {
        leave_one(config, store, cap, departure, now_ns)?;
    }
    Ok(())
}

fn leave_one(
    config: &CompiledConfig,
    store: &dyn SharedStore,
    cap: &InFlightPolicy,
    departure: &Departure,
    now_ns: u64,
) -> Result<(), CheckError> {
    let key = cap_key(config, departure.tenant.as_str(), cap, &departure.keys);
    for _ in 0..config.store.max_cas_retries {
        let located = locate(store, &key, now_ns)?;
        let Some(mut slots) = located.payload().and_then(decode) else {
            return Ok(());
        };
        let before = slots.len();
        slots.retain(|slot| slot.deadline_ns > now_ns && slot.token != departure.token);
        if slots.len() == before {
            return Ok(());
        }
        let written = located.write_with(store, slots.len() * SLOT_LEN, |out| {
            encode_into(&slots, out)
        })?;
        if written == CasOutcome::Written {
            return Ok(());
        }
    }
    Err(CheckError::Store(StoreError(format!(
        "in-flight slots of tenant `{}` still contended after {} attempts",
        departure.tenant, config.store.max_cas_retries
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn slots_round_trip_and_garbage_reads_as_absent() {
        let slots = vec![
            Slot {
                token: 1,
                deadline_ns: u64::MAX,
            },
            Slot {
                token: u64::MAX,
                deadline_ns: 0,
            },
        ];
        let mut bytes = Vec::new();
        encode_into(&slots, &mut bytes);
        assert_eq!(decode(&bytes), Some(slots));
        assert_eq!(decode(&bytes[..15]), None);
        assert_eq!(decode(&[]), Some(Vec::new()));
    }
}
