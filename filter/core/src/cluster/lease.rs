//! The emission slots one gateway holds for a tenant limit, in its shared data
//! (so every worker of the gateway spends the same lease).
//!
//! A lease is one batch of GCRA slots Redis granted (`/v1/lease`); each admits
//! one request here with no round trip. The gateway holds at most one batch
//! per limit and refills it through one call at a time:
//!
//! - the request that finds the lease empty marks a refill as out (until
//!   `refill_ns` has passed) and asks for the batch;
//! - requests that find it empty while the refill is out *join* it: they ask
//!   the store for their own slot only, which the store sidecar serves from
//!   the refill it is waiting for (a paused proxy-wasm request can only be
//!   woken by the answer to a call of its own);
//! - slots lapse `lease_ttl_ms` after the grant, so a slot is always spent
//!   close to when Redis counted it, and lapsed slots go back to Redis: with
//!   the next refill, or from the tick ([`sweep`]) when traffic stopped;
//! - a refusal is remembered until the next slot can be free, but only while
//!   the lease holds no live slot.
//!
//! The batch size adapts: it doubles when a lease ran out before it lapsed
//! (the gateway is busy) and halves when slots lapsed unused, within `1..=cap`;
//! the store caps each grant at a fair share of what is left.

use crate::ratelimit::{RateKey, RateParams};
use crate::store::{CasOutcome, Located, SharedStore, StoreError};

use super::wire::LeaseAnswer;

const NANOS_PER_SECOND: u64 = 1_000_000_000;
/// Words of a lease as stored; the first seven are the layout of earlier builds.
const WORDS: usize = 13;
const OLD_WORDS: usize = 7;

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
    /// A refill is out until then (its request waits for the store).
    refill_until_ns: u64,
    /// Slots that lapsed unused and have not been given back yet.
    lapsed: u64,
    /// When a slot was last spent (or the lease granted): a lease nobody
    /// spends from is given back before it lapses.
    used_ns: u64,
    /// When the last grant arrived, and the slots spent since: the rate the
    /// next batch is sized from.
    granted_ns: u64,
    spent: u64,
    /// A calendar quota's lease: the end of the window its slots belong to
    /// (0 for a rate limit). Slots never outlive it, nor go back to another.
    window_end_ns: u64,
}

impl Lease {
    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != WORDS * 8 && bytes.len() != OLD_WORDS * 8 {
            return None;
        }
        let mut words = bytes
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
            refill_until_ns: next(),
            lapsed: next(),
            used_ns: next(),
            granted_ns: next(),
            spent: next(),
            window_end_ns: next(),
        })
    }

    fn encode(&self) -> [u8; WORDS * 8] {
        let words = [
            self.slots,
            self.expires_ns,
            self.refused_until_ns,
            self.size,
            self.remaining_hint,
            self.reset_at_ns,
            self.retry_at_ns,
            self.refill_until_ns,
            self.lapsed,
            self.used_ns,
            self.granted_ns,
            self.spent,
            self.window_end_ns,
        ];
        let mut out = [0u8; WORDS * 8];
        for (chunk, word) in out.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    fn live_slots(&self, now_ns: u64) -> u64 {
        if now_ns < self.expires_ns {
            self.slots
        } else {
            0
        }
    }

    /// Moves slots that lapsed into `lapsed`; whether any did.
    fn retire_expired(&mut self, now_ns: u64) -> bool {
        if self.slots > 0 && now_ns >= self.expires_ns {
            self.lapsed = self.lapsed.saturating_add(self.slots);
            self.slots = 0;
            return true;
        }
        false
    }

    /// Nothing held, nothing owed back, nothing remembered: the entry may be
    /// reused by another key of a shared table.
    fn idle(&self, now_ns: u64) -> bool {
        self.live_slots(now_ns) == 0
            && self.slots == 0
            && self.lapsed == 0
            && self.refused_until_ns <= now_ns
            && self.refill_until_ns <= now_ns
    }
}

/// What the lease says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Admitted from the lease.
    Slot { remaining: u64, reset_seconds: u64 },
    /// Admitted from the lease, which is now at most half full: this request
    /// tops it up (to one batch, `want` more slots, giving `returned` lapsed
    /// ones back) before it goes on, so the others keep finding slots.
    SlotAndTopUp {
        remaining: u64,
        reset_seconds: u64,
        want: u64,
        returned: u64,
    },
    /// Redis refused recently, no slot is held and none can be free yet.
    Refused { retry_after_seconds: u64 },
    /// This request refills the lease: ask for `want` slots (one of them its
    /// own), giving `returned` lapsed slots back first.
    Refill { want: u64, returned: u64 },
    /// A refill is out: ask for this request's own slot, which the store
    /// serves from that refill when it can.
    Join,
    /// The lease counts a key value inside a tenant, and every entry of the
    /// tenant's table (`store.key_slots`) holds another value's live lease.
    NoRoom,
}

/// Who asked the store, and so what its answer changes in the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The refill: the answer becomes the lease.
    Refill,
    /// A top-up: the answer joins the slots still held (the asking request
    /// had its slot already).
    TopUp,
    /// A joining request: the answer is its own slot only.
    Join,
}

/// The largest batch one lease asks for: `lease_max`, and never more than a
/// quarter of the burst, so one gateway cannot hold most of a small limit.
pub fn cap(rate: &RateParams, lease_max: u64) -> u64 {
    lease_max.min(rate.burst / 4).max(1)
}

/// How one limit's lease is sized and refilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// The largest batch ([`cap`]).
    pub cap: u64,
    /// How long a refill counts as out (the call's timeout).
    pub refill_ns: u64,
    /// A batch holds what this gateway spends in this long (half the lease's
    /// lifetime, so it is spent before it lapses).
    pub horizon_ns: u64,
    /// A calendar quota: the end of the current window (slots lapse there,
    /// and slots of an earlier window are not given back to this one).
    pub window_end_ns: Option<u64>,
}

impl Sizing {
    pub fn new(rate: &RateParams, lease_max: u64, timeout_ns: u64, lease_ttl_ns: u64) -> Self {
        Self {
            cap: cap(rate, lease_max),
            refill_ns: timeout_ns,
            horizon_ns: (lease_ttl_ns / 2).max(1),
            window_end_ns: None,
        }
    }

    /// A calendar quota of `requests` whose current window ends at
    /// `window_end_ns`: batches within `lease_max` and a quarter of the quota.
    pub fn quota(
        requests: u64,
        window_end_ns: u64,
        lease_max: u64,
        timeout_ns: u64,
        lease_ttl_ns: u64,
    ) -> Self {
        Self {
            cap: lease_max.min(requests / 4).max(1),
            refill_ns: timeout_ns,
            horizon_ns: (lease_ttl_ns / 2).max(1),
            window_end_ns: Some(window_end_ns),
        }
    }

    /// A quota lease of an earlier window: its slots (lapsed there, since
    /// they never outlive their window) count for nothing in this one.
    fn forget_other_windows(&self, lease: &mut Lease) {
        if let Some(end) = self.window_end_ns {
            if lease.window_end_ns != end {
                lease.slots = 0;
                lease.lapsed = 0;
                lease.window_end_ns = end;
            }
        }
    }

    /// The next batch size: what was spent over the last grant's life,
    /// scaled to the horizon, moving at most ×2 or ÷2 per grant; ×2 when the
    /// lease ran dry while live (the store was too slow for the demand),
    /// ÷2 when slots lapsed unused.
    fn next(&self, lease: &Lease, ran_dry: bool, lapsed: bool, now_ns: u64) -> u64 {
        let size = lease.size.clamp(1, self.cap);
        let (low, high) = ((size / 2).max(1), size.saturating_mul(2));
        let next = if lapsed {
            low
        } else if ran_dry {
            high
        } else {
            let elapsed = now_ns.saturating_sub(lease.granted_ns).max(1);
            let observed =
                u128::from(lease.spent) * u128::from(self.horizon_ns) / u128::from(elapsed);
            u64::try_from(observed).unwrap_or(u64::MAX).clamp(low, high)
        };
        next.clamp(1, self.cap)
    }
}

fn lease_key(key: &RateKey) -> RateKey {
    key.in_family("ls")
}

/// Where the lease of `key` lives; `None` when it has a table (a key value
/// inside a tenant, an unknown tenant) and every entry of it holds another
/// key's live lease.
fn locate(
    store: &dyn SharedStore,
    key: &RateKey,
    now_ns: u64,
) -> Result<Option<Located>, StoreError> {
    let idle = |payload: &[u8]| Lease::decode(payload).is_none_or(|lease| lease.idle(now_ns));
    key.locate(store, &idle)
}

fn no_room(key: &RateKey) -> StoreError {
    StoreError(format!(
        "`{}` and its alternates hold other keys' values",
        key.logical()
    ))
}

/// Reads, changes and writes one lease with compare-and-swap, at most
/// `attempts` times. `change` returns what to answer and whether to write.
fn update<T>(
    store: &dyn SharedStore,
    key: &RateKey,
    now_ns: u64,
    attempts: u32,
    change: impl FnMut(&mut Lease) -> (T, bool),
) -> Result<T, StoreError> {
    update_or_no_room(store, key, now_ns, attempts, change)?.ok_or_else(|| no_room(key))
}

/// [`update`], or `None` when the lease has no room in its table.
fn update_or_no_room<T>(
    store: &dyn SharedStore,
    key: &RateKey,
    now_ns: u64,
    attempts: u32,
    mut change: impl FnMut(&mut Lease) -> (T, bool),
) -> Result<Option<T>, StoreError> {
    let key = lease_key(key);
    for _ in 0..attempts {
        let Some(located) = locate(store, &key, now_ns)? else {
            return Ok(None);
        };
        let mut lease = located
            .payload()
            .and_then(Lease::decode)
            .unwrap_or_default();
        let (answer, write) = change(&mut lease);
        if !write {
            return Ok(Some(answer));
        }
        match located.write(store, &lease.encode())? {
            CasOutcome::Written => return Ok(Some(answer)),
            CasOutcome::Conflict => continue,
        }
    }
    Err(StoreError(format!(
        "lease `{}` still contended after {attempts} attempts",
        key.logical()
    )))
}

fn seconds_until(at_ns: u64, now_ns: u64) -> u64 {
    at_ns.saturating_sub(now_ns).div_ceil(NANOS_PER_SECOND)
}

/// Spends `cost` slots of the lease (a request's cost: usually one), or
/// says what to ask the store for.
pub fn take(
    store: &dyn SharedStore,
    key: &RateKey,
    sizing: &Sizing,
    now_ns: u64,
    attempts: u32,
    cost: u64,
) -> Result<Taken, StoreError> {
    let cost = cost.max(1);
    let taken = update_or_no_room(store, key, now_ns, attempts, |lease| {
        sizing.forget_other_windows(lease);
        let live = lease.live_slots(now_ns);
        if live >= cost {
            lease.slots = live - cost;
            lease.used_ns = now_ns;
            lease.spent = lease.spent.saturating_add(cost);
            let remaining = lease.slots.saturating_add(lease.remaining_hint);
            let reset_seconds = seconds_until(lease.reset_at_ns, now_ns);
            let size = lease.size.clamp(1, sizing.cap);
            let low = size >= 2 && lease.slots <= size / 2;
            let idle = now_ns >= lease.refill_until_ns && now_ns >= lease.refused_until_ns;
            if low && idle && lease.remaining_hint > 0 {
                lease.size = sizing.next(lease, false, false, now_ns);
                lease.refill_until_ns = now_ns.saturating_add(sizing.refill_ns);
                let taken = Taken::SlotAndTopUp {
                    remaining,
                    reset_seconds,
                    want: lease.size.saturating_sub(lease.slots).max(1),
                    returned: std::mem::take(&mut lease.lapsed),
                };
                return (taken, true);
            }
            return (
                Taken::Slot {
                    remaining,
                    reset_seconds,
                },
                true,
            );
        }
        if now_ns < lease.refused_until_ns {
            let retry_after_seconds =
                seconds_until(lease.retry_at_ns.max(lease.refused_until_ns), now_ns).max(1);
            return (
                Taken::Refused {
                    retry_after_seconds,
                },
                false,
            );
        }
        if now_ns < lease.refill_until_ns {
            return (Taken::Join, false);
        }
        // The previous batch either ran out while live (busy: ask for more)
        // or lapsed with slots left (quiet: ask for fewer).
        let ran_dry = live < cost && lease.expires_ns > now_ns;
        let lapsed = lease.retire_expired(now_ns);
        lease.size = sizing.next(lease, ran_dry, lapsed, now_ns);
        if live > 0 {
            // Too few for this request's cost: they go back with the refill.
            lease.lapsed = lease.lapsed.saturating_add(live);
            lease.slots = 0;
        }
        let returned = std::mem::take(&mut lease.lapsed);
        lease.refill_until_ns = now_ns.saturating_add(sizing.refill_ns);
        let taken = Taken::Refill {
            want: lease.size.max(cost),
            returned,
        };
        (taken, true)
    })?;
    Ok(taken.unwrap_or(Taken::NoRoom))
}

/// Records what the store answered to a refill or a joining request (`cost`
/// slots of a grant are the asking request's own). A refusal is remembered
/// for at most `refusal_ns`, so a changed limit or a freed slot is seen soon.
#[allow(clippy::too_many_arguments)]
pub fn answered(
    store: &dyn SharedStore,
    key: &RateKey,
    role: Role,
    answer: &LeaseAnswer,
    lease_ttl_ns: u64,
    refusal_ns: u64,
    now_ns: u64,
    attempts: u32,
    cost: u64,
) -> Result<(), StoreError> {
    if role == Role::Join && answer.granted > 0 {
        // The store served this request alone: the lease is not changed.
        return Ok(());
    }
    update(store, key, now_ns, attempts, |lease| {
        let reset_at_ns =
            now_ns.saturating_add(answer.reset_seconds.saturating_mul(NANOS_PER_SECOND));
        if role != Role::Join {
            lease.refill_until_ns = 0;
        }
        // A refill's own slots are the asking request's; a top-up's were taken before.
        let own = if role == Role::TopUp { 0 } else { cost.max(1) };
        if answer.granted == 0 && role == Role::TopUp {
            // Nothing more for now: the slots held stay; Redis has none left.
            lease.remaining_hint = 0;
        } else if answer.granted == 0 {
            let retry_after = answer.retry_after_seconds.saturating_mul(NANOS_PER_SECOND);
            lease.refused_until_ns = now_ns.saturating_add(retry_after.min(refusal_ns));
            lease.retry_at_ns = now_ns.saturating_add(retry_after);
            lease.reset_at_ns = reset_at_ns;
            lease.remaining_hint = 0;
        } else {
            lease.retire_expired(now_ns);
            lease.slots = lease
                .live_slots(now_ns)
                .saturating_add(answer.granted.saturating_sub(own));
            lease.expires_ns = now_ns.saturating_add(lease_ttl_ns);
            if lease.window_end_ns > 0 {
                // A quota's slots belong to their window: they never outlive it.
                lease.expires_ns = lease.expires_ns.min(lease.window_end_ns);
            }
            lease.used_ns = now_ns;
            lease.granted_ns = now_ns;
            lease.spent = 0;
            lease.refused_until_ns = 0;
            lease.remaining_hint = answer.remaining;
            lease.reset_at_ns = reset_at_ns;
        }
        ((), true)
    })
}

/// The refill's call failed: others may refill at once. Slots it was giving
/// back are not restored (Redis may have taken them): lost, never doubled.
pub fn abandoned(
    store: &dyn SharedStore,
    key: &RateKey,
    now_ns: u64,
    attempts: u32,
) -> Result<(), StoreError> {
    update(store, key, now_ns, attempts, |lease| {
        let pending = lease.refill_until_ns != 0;
        lease.refill_until_ns = 0;
        ((), pending)
    })
}

/// What [`sweep`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Lapsed slots taken out of the lease, to give back to Redis now.
    pub returned: u64,
    /// The lease still holds live slots (or has a refill out): sweep it again later.
    pub held: bool,
}

/// From the tick: takes the slots that lapsed unused out of the lease, and
/// the live ones of a lease nobody spent from for `idle_ns`, so they go back
/// to Redis when traffic stopped.
pub fn sweep(
    store: &dyn SharedStore,
    key: &RateKey,
    idle_ns: u64,
    now_ns: u64,
    attempts: u32,
) -> Result<Swept, StoreError> {
    update(store, key, now_ns, attempts, |lease| {
        if lease.window_end_ns > 0 && now_ns >= lease.window_end_ns {
            // A quota's window is over: its slots count for nothing now.
            let forgot = lease.slots > 0 || lease.lapsed > 0;
            lease.slots = 0;
            lease.lapsed = 0;
            let held = now_ns < lease.refill_until_ns;
            return (Swept { returned: 0, held }, forgot);
        }
        if lease.live_slots(now_ns) > 0 && now_ns.saturating_sub(lease.used_ns) >= idle_ns {
            lease.expires_ns = now_ns;
        }
        lease.retire_expired(now_ns);
        let returned = std::mem::take(&mut lease.lapsed);
        let held = lease.live_slots(now_ns) > 0 || now_ns < lease.refill_until_ns;
        (Swept { returned, held }, returned > 0)
    })
}

/// Puts back the `slots` a request took but did not spend (its decision
/// was refused by another limit); a lapsed lease takes them as lapsed.
pub fn put_back(
    store: &dyn SharedStore,
    key: &RateKey,
    now_ns: u64,
    attempts: u32,
    slots: u64,
) -> Result<(), StoreError> {
    update(store, key, now_ns, attempts, |lease| {
        if now_ns < lease.expires_ns {
            lease.slots = lease.slots.saturating_add(slots);
        } else {
            lease.lapsed = lease.lapsed.saturating_add(slots);
        }
        ((), true)
    })
}

/// Spends up to `units` of the lease's live slots for usage reported after
/// the fact; what it could not cover, to take from Redis.
pub fn spend(
    store: &dyn SharedStore,
    key: &RateKey,
    now_ns: u64,
    attempts: u32,
    units: u64,
) -> Result<u64, StoreError> {
    update(store, key, now_ns, attempts, |lease| {
        let live = lease.live_slots(now_ns);
        let covered = live.min(units);
        lease.slots = live - covered;
        lease.spent = lease.spent.saturating_add(covered);
        (units - covered, covered > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const SECOND: u64 = NANOS_PER_SECOND;
    const TTL: u64 = 2 * SECOND;
    const REFILL: u64 = SECOND / 5;

    fn grant(granted: u64) -> LeaseAnswer {
        LeaseAnswer {
            granted,
            remaining: 10,
            reset_seconds: 3,
            retry_after_seconds: 0,
        }
    }

    fn refused(retry_after_seconds: u64) -> LeaseAnswer {
        LeaseAnswer {
            granted: 0,
            remaining: 0,
            reset_seconds: 60,
            retry_after_seconds,
        }
    }

    fn key() -> RateKey {
        RateKey::from("tg:rl:acme:tenant")
    }

    /// Batches of at most 8; sized for what is spent in a second.
    const SIZING: Sizing = Sizing {
        cap: 8,
        refill_ns: REFILL,
        horizon_ns: SECOND,
        window_end_ns: None,
    };

    fn take_at(store: &MemoryStore, now: u64) -> Taken {
        take(store, &key(), &SIZING, now, 8, 1).unwrap()
    }

    fn answer_at(store: &MemoryStore, role: Role, answer: LeaseAnswer, now: u64) {
        answered(store, &key(), role, &answer, TTL, SECOND, now, 8, 1).unwrap();
    }

    #[test]
    fn an_empty_lease_is_refilled_by_one_request_while_the_others_join() {
        let store = MemoryStore::new();
        assert_eq!(
            take_at(&store, SECOND),
            Taken::Refill {
                want: 1,
                returned: 0
            }
        );
        // The refill is out: everyone else joins it instead of asking for a batch.
        assert_eq!(take_at(&store, SECOND), Taken::Join);
        assert_eq!(take_at(&store, SECOND + REFILL - 1), Taken::Join);
        // A joiner's own slot leaves the lease alone.
        answer_at(&store, Role::Join, grant(1), SECOND);
        assert_eq!(take_at(&store, SECOND), Taken::Join);
        // The refill's answer fills it; the refill's own slot is spent.
        answer_at(&store, Role::Refill, grant(3), SECOND);
        assert!(matches!(
            take_at(&store, SECOND),
            Taken::Slot { remaining: 11, .. }
        ));
        assert!(matches!(
            take_at(&store, SECOND),
            Taken::Slot { remaining: 10, .. }
        ));
        // Ran out before it lapsed: the next batch is twice as large.
        assert_eq!(
            take_at(&store, SECOND),
            Taken::Refill {
                want: 2,
                returned: 0
            }
        );
    }

    #[test]
    fn a_refill_that_never_answers_stops_holding_the_others_back() {
        let store = MemoryStore::new();
        let _ = take_at(&store, SECOND);
        assert_eq!(
            take_at(&store, SECOND + REFILL),
            Taken::Refill {
                want: 1,
                returned: 0
            }
        );
        abandoned(&store, &key(), SECOND + REFILL, 8).unwrap();
        assert!(matches!(
            take_at(&store, SECOND + REFILL),
            Taken::Refill { .. }
        ));
    }

    #[test]
    fn lapsed_slots_go_back_with_the_next_refill_and_the_size_shrinks() {
        let store = MemoryStore::new();
        for _ in 0..4 {
            // Grow the size to 8 (each grant spent at once: 1, 2, 4, 8).
            let _ = take_at(&store, SECOND);
            answer_at(&store, Role::Refill, grant(1), SECOND);
        }
        assert_eq!(
            take_at(&store, SECOND),
            Taken::Refill {
                want: 8,
                returned: 0
            }
        );
        answer_at(&store, Role::Refill, grant(8), SECOND);
        // Past the TTL the seven unused slots lapse: the refill gives them back.
        assert_eq!(
            take_at(&store, SECOND + TTL),
            Taken::Refill {
                want: 4,
                returned: 7
            }
        );
    }

    #[test]
    fn the_tick_gives_lapsed_slots_back_once() {
        let store = MemoryStore::new();
        let _ = take_at(&store, SECOND);
        answer_at(&store, Role::Refill, grant(5), SECOND);
        let idle = 10 * SECOND;
        assert_eq!(
            sweep(&store, &key(), idle, SECOND, 8).unwrap(),
            Swept {
                returned: 0,
                held: true
            }
        );
        assert_eq!(
            sweep(&store, &key(), idle, SECOND + TTL, 8).unwrap(),
            Swept {
                returned: 4,
                held: false
            }
        );
        assert_eq!(
            sweep(&store, &key(), idle, SECOND + TTL, 8).unwrap(),
            Swept {
                returned: 0,
                held: false
            }
        );
        // Nothing is given back twice by the next refill either.
        assert!(matches!(
            take_at(&store, SECOND + TTL),
            Taken::Refill { returned: 0, .. }
        ));
    }

    #[test]
    fn a_lease_half_spent_is_topped_up_to_one_batch_by_one_request() {
        let store = MemoryStore::new();
        for _ in 0..3 {
            // Grow the size to 8 (each grant spent at once: 1, 2, 4).
            let _ = take_at(&store, SECOND);
            answer_at(&store, Role::Refill, grant(1), SECOND);
        }
        assert!(matches!(
            take_at(&store, SECOND),
            Taken::Refill { want: 8, .. }
        ));
        answer_at(&store, Role::Refill, grant(8), SECOND);
        // Seven held: spending three leaves four, half a batch: a top-up of four.
        for _ in 0..2 {
            assert!(matches!(take_at(&store, SECOND), Taken::Slot { .. }));
        }
        assert!(matches!(
            take_at(&store, SECOND),
            Taken::SlotAndTopUp {
                want: 4,
                returned: 0,
                ..
            }
        ));
        // Only one top-up at a time; the others keep spending.
        assert!(matches!(take_at(&store, SECOND), Taken::Slot { .. }));
        answer_at(&store, Role::TopUp, grant(4), SECOND);
        // 3 held + 4 granted (the top-up's own slot was spent before it asked).
        for _ in 0..7 {
            assert!(matches!(
                take_at(&store, SECOND),
                Taken::Slot { .. } | Taken::SlotAndTopUp { .. }
            ));
        }
        // A top-up Redis cannot serve leaves what is held alone.
        let store = MemoryStore::new();
        let _ = take_at(&store, SECOND);
        answer_at(&store, Role::Refill, grant(3), SECOND);
        let mut none = refused(0);
        none.retry_after_seconds = 0;
        answer_at(&store, Role::TopUp, none, SECOND);
        assert!(matches!(take_at(&store, SECOND), Taken::Slot { .. }));
    }

    #[test]
    fn a_lease_nobody_spends_from_goes_back_before_it_lapses() {
        let store = MemoryStore::new();
        let _ = take_at(&store, SECOND);
        answer_at(&store, Role::Refill, grant(5), SECOND);
        assert!(matches!(take_at(&store, SECOND + 100), Taken::Slot { .. }));
        let idle = SECOND / 2;
        // Spent from half a second ago: kept.
        assert_eq!(
            sweep(&store, &key(), idle, SECOND + idle, 8)
                .unwrap()
                .returned,
            0
        );
        // Untouched for longer: its three live slots go back, the lease is empty.
        assert_eq!(
            sweep(&store, &key(), idle, SECOND + idle + 100, 8).unwrap(),
            Swept {
                returned: 3,
                held: false
            }
        );
        assert!(matches!(
            take_at(&store, SECOND + idle + 100),
            Taken::Refill { returned: 0, .. }
        ));
    }

    #[test]
    fn a_refusal_is_remembered_only_while_nothing_is_held() {
        let store = MemoryStore::new();
        let _ = take_at(&store, SECOND);
        answer_at(&store, Role::Refill, refused(30), SECOND);
        // Remembered for one second, but the client is told the real wait.
        assert_eq!(
            take_at(&store, SECOND),
            Taken::Refused {
                retry_after_seconds: 30
            }
        );
        assert!(matches!(take_at(&store, 2 * SECOND), Taken::Refill { .. }));
        answer_at(&store, Role::Refill, grant(3), 2 * SECOND);
        // A joiner refused meanwhile does not refuse while slots are held.
        answer_at(&store, Role::Join, refused(30), 2 * SECOND);
        assert!(matches!(take_at(&store, 2 * SECOND), Taken::Slot { .. }));
        assert!(matches!(take_at(&store, 2 * SECOND), Taken::Slot { .. }));
        assert_eq!(
            take_at(&store, 2 * SECOND),
            Taken::Refused {
                retry_after_seconds: 30
            }
        );
    }

    #[test]
    fn a_slot_put_back_is_spent_again() {
        let store = MemoryStore::new();
        let _ = take_at(&store, SECOND);
        answer_at(&store, Role::Refill, grant(2), SECOND);
        assert!(matches!(take_at(&store, SECOND), Taken::Slot { .. }));
        put_back(&store, &key(), SECOND, 8, 1).unwrap();
        assert!(matches!(take_at(&store, SECOND), Taken::Slot { .. }));
        assert!(matches!(take_at(&store, SECOND), Taken::Refill { .. }));
    }

    /// A gateway's clock only times its own leases (differences of its own
    /// readings): a clock hours off decides exactly as a right one.
    #[test]
    fn a_skewed_gateway_clock_changes_nothing() {
        let run = |offset: u64| {
            let store = MemoryStore::new();
            let at = |t: u64| offset + SECOND + t;
            let mut seen = vec![take_at(&store, at(0))];
            answer_at(&store, Role::Refill, grant(6), at(0));
            for t in [0, 1, 2, TTL / 2, TTL, TTL + 1] {
                seen.push(take_at(&store, at(t)));
            }
            seen.push(Taken::Refill {
                want: sweep(&store, &key(), SECOND, at(3 * TTL), 8)
                    .unwrap()
                    .returned,
                returned: 0,
            });
            seen
        };
        assert_eq!(run(0), run(3 * 3600 * SECOND));
    }

    #[test]
    fn leases_of_earlier_builds_still_read() {
        let mut old = Vec::new();
        for word in [3u64, 10 * SECOND, 0, 4, 7, 0, 0] {
            old.extend_from_slice(&word.to_le_bytes());
        }
        let lease = Lease::decode(&old).unwrap();
        assert_eq!((lease.slots, lease.size, lease.lapsed), (3, 4, 0));
        assert_eq!(Lease::decode(&old[..8]), None);
    }

    #[test]
    fn the_cap_keeps_small_limits_spread() {
        assert_eq!(cap(&RateParams::new(50, 60, 50), 16), 12);
        assert_eq!(cap(&RateParams::new(2, 60, 2), 16), 1);
        assert_eq!(cap(&RateParams::new(1000, 1, 1000), 16), 16);
    }
}
