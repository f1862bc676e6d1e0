//! One request's rate limits in cluster mode: a slot from the lease of every
//! limit that applies, or one call for those the store must answer, all or
//! nothing. A slot taken from one lease goes back when another limit refuses
//! (locally or in Redis), so a refused request consumes nothing.
//!
//! - Every applied limit is a lease in this gateway's shared data
//!   ([`super::lease`]): a GCRA rate (`/v1/lease` semantics) or a calendar
//!   quota (slots of one window, never outliving it).
//! - One limit that needs the store and only rates: `/v1/lease` (the store
//!   sidecar serves joiners from the refill in flight). Several, or a quota:
//!   `/v1/leases`, one atomic script for all of them.

use crate::config::{ClusterStoreConfig, CompiledConfig, LimitPolicy, RateLimitFallback, Window};
use crate::limits::{
    self, calendar, in_flight, Admission, Admitted, Departure, Entered, KeyHashes,
};
use crate::ratelimit::{CheckError, RateKey, RateParams, Verdict};
use crate::store::{SharedStore, StoreError};
use crate::store_ops::StoreAnswer;

use super::client::{Call, CallOutcome, ClusterStore, Route, StoreEvent, Waiting};
use super::lease::{self, Role, Sizing, Taken};
use super::settle::HeldLease;
use super::wire::{self, LeaseAnswer, LeasesAnswer};

const NANOS_PER_MS: u64 = 1_000_000;
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// What one `/v1/lease` call (or item of `/v1/leases`) asks for: `want`
/// slots, `need` of them for the asking request itself, after giving
/// `returned` lapsed slots back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LeaseAsk {
    pub want: u64,
    pub need: u64,
    pub returned: u64,
}

/// How the store counts one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseWindow {
    Rate(RateParams),
    /// A calendar quota: `requests` in the window ending at `window_end_s`.
    Quota {
        requests: u64,
        window_end_s: u64,
    },
}

impl LeaseWindow {
    fn rate_window(rate: &RateParams) -> wire::RateWindow {
        let emission_us = rate.emission_ns().div_ceil(1_000).max(1);
        wire::RateWindow {
            emission_us,
            capacity_us: emission_us.saturating_mul(rate.burst.max(1)),
        }
    }
}

/// One limit's lease, as the filter and the store name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitLease {
    pub key: RateKey,
    pub window: LeaseWindow,
    /// The slots the request takes from it (its cost).
    pub cost: u64,
    /// Its usage is reported after the response: leased one request's
    /// cost at a time, so no gateway holds slots that reported usage, once
    /// in Redis, could no longer take back.
    pub exact: bool,
}

impl LimitLease {
    /// The lease of `policy` for a request of `tenant` with `keys`, at
    /// `now_ns`, that takes `cost` slots.
    pub fn of(
        config: &CompiledConfig,
        tenant: &str,
        policy: &LimitPolicy,
        keys: &KeyHashes,
        now_ns: u64,
        cost: u64,
    ) -> Self {
        let key = RateKey::limit(config, tenant, &policy.name, keys.get(policy.key));
        let window = match policy.window {
            Window::Rate(rate) => LeaseWindow::Rate(rate),
            Window::Calendar { period, requests } => LeaseWindow::Quota {
                requests,
                window_end_s: calendar::span(period, now_ns / NANOS_PER_SECOND).end,
            },
        };
        Self {
            key,
            window,
            cost: cost.max(1),
            exact: policy.usage.is_some(),
        }
    }

    fn sizing(&self, cluster: &ClusterStoreConfig) -> Sizing {
        let timeout_ns = cluster.timeout_ms.saturating_mul(NANOS_PER_MS);
        let ttl_ns = cluster.lease_ttl_ms.saturating_mul(NANOS_PER_MS);
        let lease_max = if self.exact { 1 } else { cluster.lease_max };
        match self.window {
            LeaseWindow::Rate(rate) => Sizing::new(&rate, lease_max, timeout_ns, ttl_ns),
            LeaseWindow::Quota {
                requests,
                window_end_s,
            } => Sizing::quota(
                requests,
                window_end_s.saturating_mul(NANOS_PER_SECOND),
                lease_max,
                timeout_ns,
                ttl_ns,
            ),
        }
    }

    /// How long a refusal is remembered at most (one emission, or half a
    /// lease: slots other gateways give back are seen soon).
    fn refusal_ns(&self, lease_ttl_ns: u64) -> u64 {
        match self.window {
            LeaseWindow::Rate(rate) => rate.emission_ns().min(lease_ttl_ns / 2),
            LeaseWindow::Quota { .. } => lease_ttl_ns / 2,
        }
    }

    /// How the store names its window: a rate or a quota, exactly one.
    fn wire_window(&self) -> (Option<wire::RateWindow>, Option<wire::QuotaWindow>) {
        match self.window {
            LeaseWindow::Rate(rate) => (Some(LeaseWindow::rate_window(&rate)), None),
            LeaseWindow::Quota {
                requests,
                window_end_s,
            } => (
                None,
                Some(wire::QuotaWindow {
                    requests,
                    window_end_s,
                }),
            ),
        }
    }

    /// The item of a `/v1/leases` call asking `ask`.
    fn item(&self, ask: LeaseAsk) -> Option<wire::LeaseItem> {
        let (_, limit) = self.key.parts()?;
        let (rate, quota) = self.wire_window();
        Some(wire::LeaseItem {
            limit: limit.to_owned(),
            rate,
            quota,
            want: ask.want,
            need: ask.need,
            returned: ask.returned,
        })
    }
}

/// A call giving `ask` for one lease: `/v1/lease` for a rate (what older
/// store sidecars understand, and where joiners meet the refill in flight),
/// `/v1/leases` with one item for a quota. `None` for a key the store cannot
/// name.
pub(super) fn lease_call(
    upstream: &str,
    timeout_ms: u64,
    lease: &LimitLease,
    ask: LeaseAsk,
    lease_ttl_ms: u64,
) -> Option<Call> {
    let (scope, limit) = lease.key.parts()?;
    let body = match lease.window {
        LeaseWindow::Rate(rate) => {
            let window = LeaseWindow::rate_window(&rate);
            serde_json::to_vec(&wire::LeaseRequest {
                scope: scope.to_owned(),
                limit: limit.to_owned(),
                emission_us: window.emission_us,
                capacity_us: window.capacity_us,
                want: ask.want,
                need: ask.need,
                returned: ask.returned,
                lease_ttl_ms,
            })
        }
        LeaseWindow::Quota { .. } => serde_json::to_vec(&wire::LeasesRequest {
            scope: scope.to_owned(),
            items: vec![lease.item(ask)?],
            lease_ttl_ms,
        }),
    };
    Some(Call {
        upstream: upstream.to_owned(),
        path: match lease.window {
            LeaseWindow::Rate(_) => wire::LEASE_PATH,
            LeaseWindow::Quota { .. } => wire::LEASES_PATH,
        },
        // Serialising plain structs of strings and numbers cannot fail.
        body: body.unwrap_or_default(),
        timeout_ms,
        retry_until_ns: None,
    })
}

/// One limit the store is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Asked {
    /// Its position among the request's applied limits.
    position: usize,
    lease: LimitLease,
    role: Role,
    ask: LeaseAsk,
}

/// A request waiting for the store's answer about its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pending {
    admission: Admission,
    asked: Vec<Asked>,
    /// Slots taken from leases (put back if the request is refused).
    taken: Vec<LimitLease>,
    /// The verdicts of the limits answered from leases.
    admitted: Admitted,
    /// One rate limit asked alone: the answer is `/v1/lease`'s.
    single: bool,
    /// What the request holds of its tenant's in-flight caps (given back
    /// unless it is admitted).
    pub(super) entered: Entered,
}

impl Pending {
    pub(super) fn departure(&self) -> Departure {
        self.admission.departure()
    }
}

/// `answer` to an admission that entered the in-flight caps: an admitted
/// request keeps its slots (and says so), any other gives them back.
pub(super) fn settle_entered(
    config: &CompiledConfig,
    store: &dyn SharedStore,
    answer: StoreAnswer,
    entered: Entered,
    departure: &Departure,
    now: u64,
) -> StoreAnswer {
    match answer {
        StoreAnswer::Admit(Ok(mut admitted)) if admitted.allowed => {
            admitted.in_flight = entered;
            StoreAnswer::Admit(Ok(admitted))
        }
        other => {
            if entered == Entered::Held {
                if let Err(err) = in_flight::leave(config, store, departure, now) {
                    return StoreAnswer::Admit(Err(err));
                }
            }
            other
        }
    }
}

impl ClusterStore {
    /// The rate limits of `admission`: answered from the leases, or a call.
    pub(super) fn admit(
        &mut self,
        config: &CompiledConfig,
        cluster: &ClusterStoreConfig,
        store: &dyn SharedStore,
        admission: Admission,
        down: bool,
    ) -> Route {
        let now = admission.now_unix_ns;
        let Some(settings) = config.tenant_settings(&admission.tenant) else {
            return Route::Answer(StoreAnswer::Admit(Ok(Admitted::unlimited())));
        };
        if down {
            return Route::Answer(StoreAnswer::Admit(
                self.admit_fallback(config, cluster, store, &admission),
            ));
        }
        let attempts = config.store.max_cas_retries;
        let mut admitted = Admitted::unlimited();
        let mut taken: Vec<LimitLease> = Vec::new();
        let mut asked: Vec<Asked> = Vec::new();
        for (position, policy) in settings.applied_policies(admission.applied).enumerate() {
            let cost = admission.applied.cost_of(policy);
            let lease = LimitLease::of(
                config,
                &admission.tenant,
                policy,
                &admission.keys,
                now,
                cost,
            );
            let took = lease::take(
                store,
                &lease.key,
                &lease.sizing(cluster),
                now,
                attempts,
                lease.cost,
            );
            let (role, ask) = match took {
                Err(err) => {
                    self.give_back(store, &taken, &asked, now, attempts);
                    return Route::Answer(StoreAnswer::Admit(Err(CheckError::Store(err))));
                }
                Ok(Taken::Slot {
                    remaining,
                    reset_seconds,
                }) => {
                    admitted.add(position, allowed(remaining, reset_seconds));
                    taken.push(lease);
                    continue;
                }
                Ok(Taken::Refused {
                    retry_after_seconds,
                }) => {
                    // Refused here: nothing else is asked, nothing kept.
                    self.give_back(store, &taken, &asked, now, attempts);
                    admitted.add(position, refused(retry_after_seconds, retry_after_seconds));
                    return Route::Answer(StoreAnswer::Admit(Ok(admitted)));
                }
                Ok(Taken::SlotAndTopUp {
                    remaining,
                    reset_seconds,
                    want,
                    returned,
                }) => {
                    admitted.add(position, allowed(remaining, reset_seconds));
                    taken.push(lease.clone());
                    let ask = LeaseAsk {
                        want,
                        need: 0,
                        returned,
                    };
                    (Role::TopUp, ask)
                }
                Ok(Taken::Refill { want, returned }) => {
                    let ask = LeaseAsk {
                        want,
                        need: lease.cost,
                        returned,
                    };
                    (Role::Refill, ask)
                }
                Ok(Taken::Join) => {
                    let ask = LeaseAsk {
                        want: lease.cost,
                        need: lease.cost,
                        returned: 0,
                    };
                    (Role::Join, ask)
                }
                Ok(Taken::NoRoom) => {
                    self.give_back(store, &taken, &asked, now, attempts);
                    return Route::Answer(StoreAnswer::Admit(Err(CheckError::KeysExhausted)));
                }
            };
            asked.push(Asked {
                position,
                lease,
                role,
                ask,
            });
        }
        if asked.is_empty() {
            return Route::Answer(StoreAnswer::Admit(Ok(admitted)));
        }
        let single = asked.len() == 1
            && asked
                .iter()
                .all(|one| matches!(one.lease.window, LeaseWindow::Rate(_)));
        let call = match (single, asked.first()) {
            (true, Some(one)) => lease_call(
                &cluster.upstream,
                cluster.timeout_ms,
                &one.lease,
                one.ask,
                cluster.lease_ttl_ms,
            ),
            _ => leases_call(cluster, &admission.tenant, &asked),
        };
        let Some(call) = call else {
            self.give_back(store, &taken, &asked, now, attempts);
            return Route::Answer(StoreAnswer::Admit(Err(CheckError::Store(StoreError(
                "a rate-limit key names no tenant and limit".to_owned(),
            )))));
        };
        self.waiting = Some(Waiting::Admission(Box::new(Pending {
            admission,
            asked,
            taken,
            admitted,
            single,
            entered: Entered::Free,
        })));
        Route::Await(call)
    }

    /// Undoes what a request did to leases before it was refused or fell
    /// back: slots taken go back, refills it started are given up.
    fn give_back(
        &mut self,
        store: &dyn SharedStore,
        taken: &[LimitLease],
        asked: &[Asked],
        now: u64,
        attempts: u32,
    ) {
        for lease in taken {
            if let Err(err) = lease::put_back(store, &lease.key, now, attempts, lease.cost) {
                self.events
                    .push(StoreEvent::Failed(bounded(err.to_string())));
            }
        }
        for one in asked.iter().filter(|one| one.role != Role::Join) {
            let _ = lease::abandoned(store, &one.lease.key, now, attempts);
        }
    }

    /// The store's answer to a waiting admission.
    pub(super) fn admission_answered(
        &mut self,
        config: &CompiledConfig,
        cluster: &ClusterStoreConfig,
        store: &dyn SharedStore,
        pending: Pending,
        outcome: CallOutcome,
        now: u64,
    ) -> StoreAnswer {
        let attempts = config.store.max_cas_retries;
        let answers = if pending.single {
            self.parse::<LeaseAnswer>(store, cluster, outcome, now)
                .map(|answer| vec![answer])
        } else {
            self.parse::<LeasesAnswer>(store, cluster, outcome, now)
                .map(|answer| answer.items)
                .filter(|items| items.len() == pending.asked.len())
        };
        let Some(answers) = answers else {
            // No usable answer: top-ups need nothing (their slots were
            // taken); anything else is decided by the fallback.
            if pending.asked.iter().all(|one| one.role == Role::TopUp) {
                self.give_back(store, &[], &pending.asked, now, attempts);
                return StoreAnswer::Admit(Ok(pending.admitted));
            }
            self.give_back(store, &pending.taken, &pending.asked, now, attempts);
            return StoreAnswer::Admit(self.admit_fallback(
                config,
                cluster,
                store,
                &pending.admission,
            ));
        };
        let lease_ttl_ns = cluster.lease_ttl_ms.saturating_mul(NANOS_PER_MS);
        let mut admitted = pending.admitted;
        let refused_by_store = pending
            .asked
            .iter()
            .zip(&answers)
            .any(|(one, answer)| answer.granted < one.ask.need);
        for (one, answer) in pending.asked.iter().zip(&answers) {
            let recorded = lease::answered(
                store,
                &one.lease.key,
                one.role,
                answer,
                lease_ttl_ns,
                one.lease.refusal_ns(lease_ttl_ns),
                now,
                attempts,
                one.lease.cost,
            );
            match recorded {
                Ok(()) if one.role != Role::Join && answer.granted > one.ask.need => {
                    self.refilled.push(HeldLease {
                        lease: one.lease.clone(),
                    });
                }
                Ok(()) => {}
                // Slots Redis granted but this gateway cannot hold lapse
                // unused: under-admission, never over-admission.
                Err(err) => self
                    .events
                    .push(StoreEvent::Failed(bounded(err.to_string()))),
            }
            if one.role == Role::TopUp {
                continue;
            }
            let verdict = if answer.granted >= one.ask.need {
                allowed(
                    answer
                        .remaining
                        .saturating_add(answer.granted - one.ask.need),
                    answer.reset_seconds,
                )
            } else if refused_by_store && answer.granted == 0 && answer.retry_after_seconds > 0 {
                refused(answer.retry_after_seconds, answer.reset_seconds)
            } else {
                // Granted here, but another limit refused: not spent.
                continue;
            };
            admitted.add(one.position, verdict);
        }
        if refused_by_store {
            // All or nothing: Redis granted none of the needs; the slots
            // this request took from leases go back.
            for lease in &pending.taken {
                let _ = lease::put_back(store, &lease.key, now, attempts, lease.cost);
            }
            admitted.allowed = false;
            admitted.retry_after_seconds = admitted.retry_after_seconds.max(1);
        }
        StoreAnswer::Admit(Ok(admitted))
    }

    /// The limits of `admission` while the store is away: this gateway's
    /// exact local limiter at `fallback_share_percent`, or none at all.
    pub(super) fn admit_fallback(
        &mut self,
        config: &CompiledConfig,
        cluster: &ClusterStoreConfig,
        store: &dyn SharedStore,
        admission: &Admission,
    ) -> Result<Admitted, CheckError> {
        self.events.push(StoreEvent::FellBack);
        match cluster.rate_limit_fallback {
            RateLimitFallback::Unlimited => Ok(Admitted::unlimited()),
            RateLimitFallback::Share => {
                limits::admit_share(config, store, admission, cluster.fallback_share_percent)
            }
        }
    }
}

impl ClusterStore {
    /// Usage a response reported: taken from this gateway's leases first
    /// (slots Redis already counted), the rest sent to Redis (`/v1/debit`)
    /// without waiting, again until acknowledged for a minute.
    pub(super) fn debit(
        &mut self,
        config: &CompiledConfig,
        cluster: &ClusterStoreConfig,
        store: &dyn SharedStore,
        debit: Box<crate::limits::Debit>,
    ) -> Route {
        let done = || Route::Answer(StoreAnswer::Debited(Ok(())));
        let Some(settings) = config.tenant_settings(&debit.tenant) else {
            return done();
        };
        let now = debit.now_unix_ns;
        let attempts = config.store.max_cas_retries;
        let mut items = Vec::new();
        for policy in settings.applied_policies(debit.applied) {
            let Some(units) = debit.units(policy).filter(|units| *units > 0) else {
                continue;
            };
            let lease = LimitLease::of(config, &debit.tenant, policy, &debit.keys, now, 1);
            let rest = match lease::spend(store, &lease.key, now, attempts, units) {
                Ok(rest) => rest,
                Err(err) => {
                    self.events
                        .push(StoreEvent::Failed(bounded(err.to_string())));
                    units
                }
            };
            if rest == 0 {
                continue;
            }
            let Some((_, limit)) = lease.key.parts() else {
                continue;
            };
            let (rate, quota) = lease.wire_window();
            items.push(wire::DebitItem {
                limit: limit.to_owned(),
                rate,
                quota,
                units: rest,
            });
        }
        if items.is_empty() {
            return done();
        }
        let request = wire::DebitRequest {
            scope: debit.tenant.to_string(),
            items,
        };
        let mut call = Call {
            upstream: cluster.upstream.clone(),
            path: wire::DEBIT_PATH,
            // Serialising plain structs of strings and numbers cannot fail.
            body: serde_json::to_vec(&request).unwrap_or_default(),
            timeout_ms: cluster.timeout_ms,
            retry_until_ns: None,
        };
        call.retry_until_ns = Some(now.saturating_add(60 * NANOS_PER_SECOND));
        let answer = StoreAnswer::Debited(Ok(()));
        match store.semantics() {
            crate::store::HostSemantics::Envoy => Route::Send(call, answer),
            crate::store::HostSemantics::NgxWasm => Route::Queue(call, answer),
        }
    }
}

/// A `/v1/leases` call for every limit of `asked`.
fn leases_call(cluster: &ClusterStoreConfig, tenant: &str, asked: &[Asked]) -> Option<Call> {
    let items = asked
        .iter()
        .map(|one| one.lease.item(one.ask))
        .collect::<Option<Vec<_>>>()?;
    let request = wire::LeasesRequest {
        scope: tenant.to_owned(),
        items,
        lease_ttl_ms: cluster.lease_ttl_ms,
    };
    Some(Call {
        upstream: cluster.upstream.clone(),
        path: wire::LEASES_PATH,
        body: serde_json::to_vec(&request).unwrap_or_default(),
        timeout_ms: cluster.timeout_ms,
        retry_until_ns: None,
    })
}

fn allowed(remaining: u64, reset_seconds: u64) -> Verdict {
    Verdict {
        allowed: true,
        remaining,
        reset_seconds,
        retry_after_seconds: 0,
    }
}

fn refused(retry_after_seconds: u64, reset_seconds: u64) -> Verdict {
    Verdict {
        allowed: false,
        remaining: 0,
        reset_seconds: reset_seconds.max(1),
        retry_after_seconds: retry_after_seconds.max(1),
    }
}

fn bounded(text: String) -> String {
    super::client::bounded(text)
}
