//! Whether the store answers, as one gateway sees it, in its shared data (so
//! every worker agrees and each transition is logged once).
//!
//! Up: every store operation is a call. Down: operations take the fallback at
//! once, except one call per `probe_interval_ms` (whichever request wins the
//! compare-and-swap), whose success brings the store back up.

use crate::store::{self, CasOutcome, SharedStore, StoreError};

const HEALTH_KEY: &str = "tg:cluster:health";
const UP: u8 = 1;
const DOWN: u8 = 2;

/// What a request should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Make the call.
    Call,
    /// The store is down and it is not this request's turn to probe: fall back.
    FallBack,
}

/// A change this gateway's view went through (counted and logged once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    WentDown,
    CameBack,
}

fn read(store: &dyn SharedStore) -> Result<(store::Located, u8, u64), StoreError> {
    let located = store::locate(store, HEALTH_KEY)?
        .ok_or_else(|| StoreError(format!("`{HEALTH_KEY}` holds another key's value")))?;
    let (state, next_probe_ns) = match located.payload() {
        Some([state, rest @ ..]) => {
            let next = rest.try_into().map(u64::from_le_bytes).unwrap_or_default();
            (*state, next)
        }
        _ => (UP, 0),
    };
    Ok((located, state, next_probe_ns))
}

fn encode(state: u8, next_probe_ns: u64) -> Vec<u8> {
    let mut out = vec![state];
    out.extend_from_slice(&next_probe_ns.to_le_bytes());
    out
}

/// Call or fall back; while down, the request that moves the probe time
/// forward is the one that calls.
pub fn route(store: &dyn SharedStore, now_ns: u64, probe_interval_ns: u64) -> Route {
    let Ok((located, state, next_probe_ns)) = read(store) else {
        return Route::Call;
    };
    if state != DOWN {
        return Route::Call;
    }
    if now_ns < next_probe_ns {
        return Route::FallBack;
    }
    let probe = encode(DOWN, now_ns.saturating_add(probe_interval_ns));
    match located.write(store, &probe) {
        Ok(CasOutcome::Written) => Route::Call,
        Ok(CasOutcome::Conflict) | Err(_) => Route::FallBack,
    }
}

/// A call failed: the store is down from now on (the transition, once).
pub fn failed(store: &dyn SharedStore, now_ns: u64, probe_interval_ns: u64) -> Option<Transition> {
    let (located, state, _) = read(store).ok()?;
    if state == DOWN {
        return None;
    }
    let down = encode(DOWN, now_ns.saturating_add(probe_interval_ns));
    match located.write(store, &down) {
        Ok(CasOutcome::Written) => Some(Transition::WentDown),
        Ok(CasOutcome::Conflict) | Err(_) => None,
    }
}

/// A call succeeded: the store is up (the transition, once).
pub fn succeeded(store: &dyn SharedStore) -> Option<Transition> {
    let (located, state, _) = read(store).ok()?;
    if state != DOWN {
        return None;
    }
    match located.write(store, &encode(UP, 0)) {
        Ok(CasOutcome::Written) => Some(Transition::CameBack),
        Ok(CasOutcome::Conflict) | Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn down_falls_back_with_one_probe_per_interval_and_recovers_once() {
        let store = MemoryStore::new();
        assert_eq!(route(&store, 0, 10), Route::Call);
        assert_eq!(failed(&store, 0, 10), Some(Transition::WentDown));
        assert_eq!(failed(&store, 1, 10), None);
        assert_eq!(route(&store, 5, 10), Route::FallBack);
        assert_eq!(route(&store, 10, 10), Route::Call);
        assert_eq!(route(&store, 11, 10), Route::FallBack);
        assert_eq!(succeeded(&store), Some(Transition::CameBack));
        assert_eq!(succeeded(&store), None);
        assert_eq!(route(&store, 12, 10), Route::Call);
    }
}
