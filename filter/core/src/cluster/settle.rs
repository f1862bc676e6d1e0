//! What a gateway's root context does for cluster mode between requests, on
//! its tick: the store calls that must not be lost, and the leased slots that
//! must not lapse unused for good.
//!
//! - [`RetryQueue`]: a complete or release whose call failed (the sidecar was
//!   gone, Redis was down at that instant) is sent again, with backoff, until
//!   the store acknowledges it or its deadline passes (a complete: the record's
//!   TTL; a release: the claim's in-flight timeout). On ngx_wasm_module every
//!   complete and release starts here (the engine dispatches only from request
//!   phases and ticks). Bounded, every outcome counted.
//! - [`LeaseBook`]: the leases this worker refilled. Each tick sweeps them
//!   ([`lease::sweep`]) and gives back to Redis the slots that lapsed, and
//!   those of a lease nobody spent from since the last tick, so a gateway
//!   whose traffic stopped does not keep what other replicas need.
//!
//! A worker whose VM dies loses both: its retries are not sent (the claim is
//! then freed by its in-flight timeout), its lapsed slots go back with the
//! next refill of that lease by any worker.

use std::collections::VecDeque;

use crate::store::SharedStore;

use super::admission::{lease_call, LeaseAsk, LimitLease};
use super::client::Call;
use super::lease;

const NANOS_PER_SECOND: u64 = 1_000_000_000;
/// Calls one worker keeps for retrying at most.
pub const MAX_RETRIES_QUEUED: usize = 4096;
/// Leases one worker watches at most.
pub const MAX_BOOK: usize = 4096;
/// The longest pause between two attempts of one call.
const MAX_BACKOFF_SECONDS: u64 = 30;
/// Calls one tick sends at most (the rest wait for the next tick).
pub const MAX_SENT_PER_TICK: usize = 256;

/// A call waiting for the tick, with its attempts so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub call: Call,
    attempts: u32,
    next_ns: u64,
}

impl Pending {
    /// Attempts made so far (0 before the first).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// What happened to a call that failed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// It will be sent again.
    Scheduled,
    /// Its deadline passed (or it was never retryable): given up.
    Abandoned,
    /// The queue is full: dropped.
    Dropped,
}

/// The calls one worker sends from its tick.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryQueue {
    pending: VecDeque<Pending>,
}

impl RetryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Queues `call` for the next tick (its first attempt there, or a retry
    /// of one that failed elsewhere: `attempts` made already).
    pub fn push(&mut self, call: Call, attempts: u32, now_ns: u64) -> Retry {
        if call
            .retry_until_ns
            .is_none_or(|deadline| now_ns >= deadline)
            && attempts > 0
        {
            return Retry::Abandoned;
        }
        if self.pending.len() >= MAX_RETRIES_QUEUED {
            return Retry::Dropped;
        }
        let next_ns = now_ns.saturating_add(backoff_ns(attempts));
        self.pending.push_back(Pending {
            call,
            attempts,
            next_ns: if attempts == 0 { now_ns } else { next_ns },
        });
        Retry::Scheduled
    }

    /// The calls due now (at most [`MAX_SENT_PER_TICK`]), taken out of the
    /// queue; each counts one attempt. Hand a failed one back to [`Self::failed`].
    pub fn due(&mut self, now_ns: u64) -> Vec<Pending> {
        let mut due = Vec::new();
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for mut pending in self.pending.drain(..) {
            if due.len() < MAX_SENT_PER_TICK && pending.next_ns <= now_ns {
                pending.attempts = pending.attempts.saturating_add(1);
                due.push(pending);
            } else {
                kept.push_back(pending);
            }
        }
        self.pending = kept;
        due
    }

    /// A call from [`Self::due`] failed again: retried after a backoff unless
    /// its deadline passed.
    pub fn failed(&mut self, pending: Pending, now_ns: u64) -> Retry {
        self.push(pending.call, pending.attempts.max(1), now_ns)
    }
}

/// 1 s, 2 s, 4 s … after the `attempts`-th failure, at most 30 s.
fn backoff_ns(attempts: u32) -> u64 {
    let seconds = 1u64
        .checked_shl(attempts.saturating_sub(1))
        .unwrap_or(MAX_BACKOFF_SECONDS)
        .min(MAX_BACKOFF_SECONDS);
    seconds * NANOS_PER_SECOND
}

/// A lease this worker refilled, and what a call giving its slots back needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    pub lease: LimitLease,
}

/// The leases this worker refilled, swept from its tick.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseBook {
    held: VecDeque<HeldLease>,
}

impl LeaseBook {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Watches `lease` from now on (once; the oldest is forgotten when full:
    /// its lapsed slots then go back with its next refill instead).
    pub fn hold(&mut self, lease: HeldLease) {
        if let Some(held) = self
            .held
            .iter_mut()
            .find(|held| held.lease.key == lease.lease.key)
        {
            // A quota lease of a new window: its slots go back to that window.
            *held = lease;
            return;
        }
        if self.held.len() >= MAX_BOOK {
            self.held.pop_front();
        }
        self.held.push_back(lease);
    }

    /// Takes lapsed slots out of every lease and returns the calls that give
    /// them back (and how many slots they carry); forgets leases that hold
    /// nothing any more.
    #[allow(clippy::too_many_arguments)]
    pub fn sweep(
        &mut self,
        store: &dyn SharedStore,
        upstream: &str,
        timeout_ms: u64,
        idle_ns: u64,
        now_ns: u64,
        attempts: u32,
    ) -> Vec<(Call, u64)> {
        let mut calls = Vec::new();
        self.held.retain(|held| {
            let Ok(swept) = lease::sweep(store, &held.lease.key, idle_ns, now_ns, attempts) else {
                return true;
            };
            if swept.returned > 0 {
                let ask = LeaseAsk {
                    want: 0,
                    need: 0,
                    returned: swept.returned,
                };
                if let Some(call) = lease_call(upstream, timeout_ms, &held.lease, ask, 0) {
                    calls.push((call, swept.returned));
                }
            }
            swept.held
        });
        calls
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::wire::{self, LeaseAnswer};
    use crate::ratelimit::{RateKey, RateParams};
    use crate::store::MemoryStore;

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const SECOND: u64 = NANOS_PER_SECOND;

    fn call(deadline: Option<u64>) -> Call {
        Call {
            upstream: "store".to_owned(),
            path: wire::COMPLETE_PATH,
            body: b"{}".to_vec(),
            timeout_ms: 200,
            retry_until_ns: deadline,
        }
    }

    #[test]
    fn a_failed_call_is_retried_with_backoff_until_its_deadline() {
        let mut queue = RetryQueue::new();
        assert_eq!(queue.push(call(Some(20 * SECOND)), 1, 0), Retry::Scheduled);
        // Its first retry waits one second.
        assert!(queue.due(0).is_empty());
        let due = queue.due(SECOND);
        assert_eq!(due.len(), 1);
        let pending = due.into_iter().next().unwrap();
        assert_eq!(pending.attempts(), 2);
        assert_eq!(queue.failed(pending, SECOND), Retry::Scheduled);
        // Then two seconds, four, …
        assert!(queue.due(2 * SECOND).is_empty());
        let pending = queue.due(3 * SECOND).into_iter().next().unwrap();
        assert_eq!(queue.failed(pending, 3 * SECOND), Retry::Scheduled);
        assert!(queue.due(6 * SECOND).is_empty());
        let pending = queue.due(7 * SECOND).into_iter().next().unwrap();
        // Past the deadline it is given up.
        assert_eq!(queue.failed(pending, 20 * SECOND), Retry::Abandoned);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_first_attempt_is_sent_at_the_next_tick_and_the_queue_is_bounded() {
        let mut queue = RetryQueue::new();
        for _ in 0..MAX_RETRIES_QUEUED {
            assert_eq!(queue.push(call(Some(SECOND)), 0, 0), Retry::Scheduled);
        }
        assert_eq!(queue.push(call(Some(SECOND)), 0, 0), Retry::Dropped);
        assert_eq!(queue.due(0).len(), MAX_SENT_PER_TICK);
        assert_eq!(queue.len(), MAX_RETRIES_QUEUED - MAX_SENT_PER_TICK);
        // A call that may not be retried is given up after its one attempt.
        assert_eq!(queue.push(call(None), 1, 0), Retry::Abandoned);
    }

    #[test]
    fn the_book_gives_lapsed_slots_back_once_and_forgets_empty_leases() {
        let store = MemoryStore::new();
        let config = crate::config::parse(
            br#"{"version":1,"tenant":{"trust_header_without_jwt":true},
                "tenants":{"acme":{"rate_limit":{"requests":60,"per_seconds":60}}}}"#,
        )
        .unwrap();
        let key = RateKey::new(&config, "acme", "tenant");
        let rate = RateParams::new(60, 60, 60);
        let held = HeldLease {
            lease: LimitLease {
                key: key.clone(),
                window: crate::cluster::admission::LeaseWindow::Rate(rate),
                cost: 1,
                exact: false,
            },
        };
        assert!(matches!(
            lease::take(
                &store,
                &key,
                &lease::Sizing::new(&rate, 8, SECOND, 2 * SECOND),
                SECOND,
                8,
                1
            ),
            Ok(lease::Taken::Refill { .. })
        ));
        let grant = LeaseAnswer {
            granted: 4,
            remaining: 0,
            reset_seconds: 4,
            retry_after_seconds: 0,
        };
        lease::answered(
            &store,
            &key,
            lease::Role::Refill,
            &grant,
            2 * SECOND,
            SECOND,
            SECOND,
            8,
            1,
        )
        .unwrap();
        let mut book = LeaseBook::new();
        book.hold(held.clone());
        book.hold(held);
        assert_eq!(book.len(), 1);
        assert!(book
            .sweep(&store, "store", 200, SECOND, SECOND, 8)
            .is_empty());
        let calls = book.sweep(&store, "store", 200, SECOND, 3 * SECOND, 8);
        assert_eq!(calls.len(), 1);
        let (call, returned) = &calls[0];
        assert_eq!(*returned, 3);
        let body: serde_json::Value = serde_json::from_slice(&call.body).unwrap();
        assert_eq!(body["returned"], 3);
        assert_eq!(body["want"], 0);
        assert_eq!(body["need"], 0);
        assert!(book.is_empty());
    }
}
