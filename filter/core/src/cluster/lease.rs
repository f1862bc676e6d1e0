//! The emission slots one gateway holds for a tenant limit, in its shared data
//! (so every worker of the gateway spends the same lease).
//!
//! A lease is a batch of GCRA slots Redis granted (`/v1/lease`); each admits
//! one request here with no round trip. Slots lapse `lease_ttl_ms` after the
//! grant, so a slot is always spent close to when Redis counted it, and a
//! refusal is remembered until the next slot can be free, so a tenant over
//! its limit costs no round trips either. The batch size adapts: it doubles
//! when a lease ran out before it lapsed (the gateway is busy) and halves when
//! slots lapsed unused, within `1..=cap`.

use crate::ratelimit::{RateKey, RateParams};
use crate::store::{self, CasOutcome, Located, SharedStore, StoreError};

use super::wire::LeaseAnswer;

const NANOS_PER_SECOND: u64 = 1_000_000_000;
const LEASE_LEN: usize = 7 * 8;

/// One lease as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Lease {
    slots: u64,
    expires_ns: u64,
    refused_until_ns: u64,
    /// The next batch size to ask for.
    size: u64,
    /// Slots Redis still had free at the last grant (for `RateLimit-Remaining`).
    remaining_hint: u64,
    /// When the bucket is full again, as of the last answer.
    reset_at_ns: u64,
    /// When the refused request may be retried (`Retry-After`), which can be
    /// later than the refusal is remembered.
    retry_at_ns: u64,
}

impl Lease {
    fn decode(bytes: &[u8]) -> Option<Self> {
        let array: [u8; LEASE_LEN] = bytes.try_into().ok()?;
        let mut words = array
            .chunks_exact(8)
            .map(|chunk| chunk.try_into().map(u64::from_le_bytes).unwrap_or(0));
        let mut next = || words.next().unwrap_or(0);
        Some(Self {
            slots: next(),
            expires_ns: next(),
            refused_until_ns: next(),
            size: next(),
            remaining_hint: next(),
            reset_at_ns: next(),
            retry_at_ns: next(),
        })
    }

    fn encode(&self) -> Vec<u8> {
        [
            self.slots,
            self.expires_ns,
            self.refused_until_ns,
            self.size,
            self.remaining_hint,
            self.reset_at_ns,
            self.retry_at_ns,
        ]
        .iter()
        .flat_map(|word| word.to_le_bytes())
        .collect()
    }

    fn live_slots(&self, now_ns: u64) -> u64 {
        if now_ns < self.expires_ns {
            self.slots
        } else {
            0
        }
    }

    fn idle(&self, now_ns: u64) -> bool {
        self.live_slots(now_ns) == 0 && self.refused_until_ns <= now_ns
    }
}

/// What the lease says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Admitted from the lease.
    Slot { remaining: u64, reset_seconds: u64 },
    /// Redis refused recently and no slot can be free yet.
    Refused { retry_after_seconds: u64 },
    /// Nothing held: ask Redis for this many slots.
    Empty { want: u64 },
}

/// The largest batch one lease asks for: `lease_max`, and never more than a
/// quarter of the burst, so one gateway cannot hold most of a small limit.
pub fn cap(rate: &RateParams, lease_max: u64) -> u64 {
    lease_max.min(rate.burst / 4).max(1)
}

fn lease_key(key: &RateKey) -> RateKey {
    key.in_family("ls")
}

fn locate(store: &dyn SharedStore, key: &RateKey, now_ns: u64) -> Result<Located, StoreError> {
    let idle = |payload: &[u8]| Lease::decode(payload).is_none_or(|lease| lease.idle(now_ns));
    let located = match key.table() {
        None => store::locate(store, key.logical())?,
        Some(table) => store::locate_reusable(store, table, key.logical(), &idle)?,
    };
    located.ok_or_else(|| {
        StoreError(format!(
            "`{}` and its alternates hold other keys' values",
            key.logical()
        ))
    })
}

/// Spends one slot of the lease, or says why not. `attempts` bounds the CAS loop.
pub fn take(
    store: &dyn SharedStore,
    key: &RateKey,
    cap: u64,
    now_ns: u64,
    attempts: u32,
) -> Result<Taken, StoreError> {
    let key = lease_key(key);
    for _ in 0..attempts {
        let located = locate(store, &key, now_ns)?;
        let mut lease = located
            .payload()
            .and_then(Lease::decode)
            .unwrap_or_default();
        let live = lease.live_slots(now_ns);
        if live == 0 {
            if now_ns < lease.refused_until_ns {
                return Ok(Taken::Refused {
                    retry_after_seconds: lease
                        .retry_at_ns
                        .max(lease.refused_until_ns)
                        .saturating_sub(now_ns)
                        .div_ceil(NANOS_PER_SECOND)
                        .max(1),
                });
            }
            return Ok(Taken::Empty {
                want: lease.size.clamp(1, cap),
            });
        }
        lease.slots = live - 1;
        match located.write(store, &lease.encode())? {
            CasOutcome::Written => {
                return Ok(Taken::Slot {
                    remaining: lease.slots.saturating_add(lease.remaining_hint),
                    reset_seconds: lease
                        .reset_at_ns
                        .saturating_sub(now_ns)
                        .div_ceil(NANOS_PER_SECOND),
                })
            }
            CasOutcome::Conflict => continue,
        }
    }
    Err(StoreError(format!(
        "lease `{}` still contended after {attempts} attempts",
        key.logical()
    )))
}

/// Records what Redis answered to a lease call, one slot of a grant already
/// spent by the request that asked. A refusal is remembered for at most
/// `refusal_ns` (so a changed limit or a freed slot is seen soon).
#[allow(clippy::too_many_arguments)]
pub fn answered(
    store: &dyn SharedStore,
    key: &RateKey,
    answer: &LeaseAnswer,
    cap: u64,
    lease_ttl_ns: u64,
    refusal_ns: u64,
    now_ns: u64,
    attempts: u32,
) -> Result<(), StoreError> {
    let key = lease_key(key);
    for _ in 0..attempts {
        let located = locate(store, &key, now_ns)?;
        let old = located
            .payload()
            .and_then(Lease::decode)
            .unwrap_or_default();
        let mut lease = old;
        let reset_at_ns =
            now_ns.saturating_add(answer.reset_seconds.saturating_mul(NANOS_PER_SECOND));
        if answer.granted == 0 {
            let retry_after = answer.retry_after_seconds.saturating_mul(NANOS_PER_SECOND);
            lease.refused_until_ns = now_ns.saturating_add(retry_after.min(refusal_ns));
            lease.retry_at_ns = now_ns.saturating_add(retry_after);
            lease.reset_at_ns = reset_at_ns;
            lease.remaining_hint = 0;
        } else {
            let ran_out_early = old.slots == 0 && now_ns < old.expires_ns;
            let lapsed_unused = old.slots > 0 && now_ns >= old.expires_ns;
            let size = old.size.clamp(1, cap);
            lease.size = if ran_out_early {
                size.saturating_mul(2).min(cap)
            } else if lapsed_unused {
                (size / 2).max(1)
            } else {
                size
            };
            lease.slots = old.live_slots(now_ns) + answer.granted - 1;
            lease.expires_ns = now_ns.saturating_add(lease_ttl_ns);
            lease.refused_until_ns = 0;
            lease.remaining_hint = answer.remaining;
            lease.reset_at_ns = reset_at_ns;
        }
        match located.write(store, &lease.encode())? {
            CasOutcome::Written => return Ok(()),
            CasOutcome::Conflict => continue,
        }
    }
    Err(StoreError(format!(
        "lease `{}` still contended after {attempts} attempts",
        key.logical()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const SECOND: u64 = NANOS_PER_SECOND;

    fn grant(granted: u64) -> LeaseAnswer {
        LeaseAnswer {
            granted,
            remaining: 10,
            reset_seconds: 3,
            retry_after_seconds: 0,
        }
    }

    fn key() -> RateKey {
        RateKey::from("tg:rl:acme:tenant")
    }

    #[test]
    fn an_empty_lease_asks_for_one_slot_first() {
        let store = MemoryStore::new();
        assert_eq!(
            take(&store, &key(), 8, SECOND, 8),
            Ok(Taken::Empty { want: 1 })
        );
    }

    #[test]
    fn granted_slots_admit_until_spent_then_ask_for_more() {
        let store = MemoryStore::new();
        assert_eq!(
            answered(&store, &key(), &grant(3), 8, 2 * SECOND, SECOND, SECOND, 8),
            Ok(())
        );
        // One slot went to the request that asked: two are left.
        assert!(matches!(
            take(&store, &key(), 8, SECOND, 8),
            Ok(Taken::Slot { remaining: 11, .. })
        ));
        assert!(matches!(
            take(&store, &key(), 8, SECOND, 8),
            Ok(Taken::Slot { remaining: 10, .. })
        ));
        // Ran out before it lapsed: the next batch is twice as large.
        assert_eq!(
            answered(&store, &key(), &grant(1), 8, 2 * SECOND, SECOND, SECOND, 8),
            Ok(())
        );
        assert_eq!(
            take(&store, &key(), 8, SECOND, 8),
            Ok(Taken::Empty { want: 2 })
        );
    }

    #[test]
    fn slots_lapse_after_the_lease_ttl_and_the_size_shrinks() {
        let store = MemoryStore::new();
        for _ in 0..4 {
            // Grow the size to 8 (each grant spent at once: 1, 2, 4, 8).
            let _ = answered(&store, &key(), &grant(1), 8, 2 * SECOND, SECOND, SECOND, 8);
        }
        assert_eq!(
            take(&store, &key(), 8, SECOND, 8),
            Ok(Taken::Empty { want: 8 })
        );
        let _ = answered(&store, &key(), &grant(8), 8, 2 * SECOND, SECOND, SECOND, 8);
        // Past the TTL, the seven unused slots are gone.
        assert_eq!(
            take(&store, &key(), 8, 4 * SECOND, 8),
            Ok(Taken::Empty { want: 8 })
        );
        let _ = answered(
            &store,
            &key(),
            &grant(1),
            8,
            2 * SECOND,
            SECOND,
            4 * SECOND,
            8,
        );
        assert_eq!(
            take(&store, &key(), 8, 4 * SECOND, 8),
            Ok(Taken::Empty { want: 4 })
        );
    }

    #[test]
    fn a_refusal_is_remembered_no_longer_than_allowed() {
        let store = MemoryStore::new();
        let refused = LeaseAnswer {
            granted: 0,
            remaining: 0,
            reset_seconds: 60,
            retry_after_seconds: 30,
        };
        let _ = answered(&store, &key(), &refused, 8, 2 * SECOND, SECOND, SECOND, 8);
        // Remembered for one second, but the client is told the real wait.
        assert_eq!(
            take(&store, &key(), 8, SECOND, 8),
            Ok(Taken::Refused {
                retry_after_seconds: 30
            })
        );
        assert_eq!(
            take(&store, &key(), 8, 2 * SECOND, 8),
            Ok(Taken::Empty { want: 1 })
        );
    }

    #[test]
    fn the_cap_keeps_small_limits_spread() {
        assert_eq!(cap(&RateParams::new(50, 60, 50), 16), 12);
        assert_eq!(cap(&RateParams::new(2, 60, 2), 16), 1);
        assert_eq!(cap(&RateParams::new(1000, 1, 1000), 16), 16);
    }
}
