//! One request's store operations in cluster mode: each [`StoreOp`] becomes
//! an answer given at once (a lease slot, a remembered refusal, the fallback
//! while the store is down, a seal) or a [`Call`] to the store sidecar, whose
//! outcome [`ClusterStore::on_answer`] turns into the [`StoreAnswer`] the
//! exchange waits for. On Envoy the response waits until its record is in
//! Redis (so a retry that follows the response can only replay) and a
//! release is sent at once without waiting ([`Route::Send`]).
//! ngx_wasm_module dispatches calls only from request phases and ticks (it
//! traps the instance otherwise), so there completing and releasing are
//! answered at once and handed to the plugin's next tick ([`Route::Queue`]).
//!
//! A claim remembers where it was made (Redis, or this gateway's records when
//! `idempotency_fallback: local` answered it) so it is settled in the same place.

use crate::config::{ClusterStoreConfig, CompiledConfig, IdempotencyFallback};
use crate::idempotency::{
    self, Begin, Fingerprint, IdempotencyError, Lifetimes, StoreParams, StoredResponse,
    MAX_STORED_HEADER_BYTES,
};
use crate::store::{HostSemantics, SharedStore, StoreError};
use crate::store_ops::{self, StoreAnswer, StoreOp};

use super::admission::{settle_entered, Pending};
use super::health::{self, Transition};
use super::settle::{HeldLease, Retry};
use super::wire::{self, ClaimAnswer, LeaseAnswer, UpdateAnswer, WireResponse};
use crate::limits::{in_flight, Admitted, Entered};

const NANOS_PER_MS: u64 = 1_000_000;
const NANOS_PER_SECOND: u64 = 1_000_000_000;
/// Longest store error text carried into a log line or problem detail.
const MAX_DETAIL: usize = 160;

/// An HTTP call to the store sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub upstream: String,
    pub path: &'static str,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
    /// A call that must not be lost (complete, release): if it fails, the
    /// root context sends it again until the store acknowledges it or this
    /// deadline passes (`super::settle::RetryQueue`). `None`: never retried.
    pub retry_until_ns: Option<u64>,
}

/// What to do with one store operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The answer, now.
    Answer(StoreAnswer),
    /// Make the call; the stream waits for [`ClusterStore::on_answer`].
    Await(Call),
    /// Make the call and answer the exchange now; the call's outcome goes to
    /// [`ClusterStore::on_settled`] if it arrives while the request lives.
    Send(Call, StoreAnswer),
    /// Answer the exchange now and make the call from the plugin's next tick
    /// (ngx_wasm_module: no dispatch from response phases or the stream's end).
    Queue(Call, StoreAnswer),
}

/// What became of a call sent without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The store acknowledged it.
    Acknowledged,
    /// The store refused it (4xx), or it is not one to retry.
    Refused,
    /// No usable answer: worth sending again.
    Failed,
}

/// How a call ended, as the host reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// The sidecar answered with this status and body.
    Answered { status: u16, body: Vec<u8> },
    /// No answer: refused, reset, timed out, or the host would not dispatch.
    Failed(String),
}

/// Something the glue counts (and, for transitions, logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A call to the store completed with a usable answer.
    RoundTrip,
    /// A call failed (its reason, bounded).
    Failed(String),
    /// An operation was answered by the fallback.
    FellBack,
    /// This gateway now sees the store as down (logged once per transition).
    WentDown(String),
    /// The store answers again.
    CameBack,
    /// Lapsed lease slots given back to Redis (this many).
    Returned(u64),
    /// A complete or release was sent again after a failure.
    Retried,
    /// A complete or release was given up: its deadline passed, or the retry
    /// queue was full.
    RetryAbandoned,
}

impl StoreEvent {
    /// The log line of a transition.
    pub fn log_line(&self) -> Option<String> {
        match self {
            StoreEvent::WentDown(reason) => Some(format!(
                "cluster store unavailable ({reason}): rate limits and idempotency use the configured fallback until it answers again"
            )),
            StoreEvent::CameBack => Some("cluster store answers again: fallback ended".to_owned()),
            StoreEvent::RetryAbandoned => Some(
                "a complete or release could not be delivered to the cluster store before its deadline: the claim is freed by its in-flight timeout".to_owned(),
            ),
            StoreEvent::RoundTrip
            | StoreEvent::Failed(_)
            | StoreEvent::FellBack
            | StoreEvent::Returned(_)
            | StoreEvent::Retried => None,
        }
    }
}

/// Where this request's claim lives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    Remote {
        scope: String,
        key: String,
        generation: u64,
        body: Option<[u8; 8]>,
        /// When the claim lapses in Redis: a release is pointless after it.
        in_flight_until_ns: u64,
    },
    Local,
}

/// The call this request waits for, and what its answer is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Waiting {
    /// The request's rate limits.
    Admission(Box<Pending>),
    Claim {
        op: StoreOp,
        scope: String,
        key: String,
        body: Option<[u8; 8]>,
        in_flight_until_ns: u64,
    },
    /// The call, kept to be retried from the root context if it fails.
    Complete(Call),
}

/// The per-request side of cluster mode.
#[derive(Debug, Default)]
pub struct ClusterStore {
    pub(super) waiting: Option<Waiting>,
    held: Option<Held>,
    pub(super) events: Vec<StoreEvent>,
    /// Leases this request refilled, for the root's [`super::settle::LeaseBook`].
    pub(super) refilled: Vec<HeldLease>,
    /// Calls that failed and must be sent again from the root context.
    retries: Vec<Call>,
}

pub(super) fn bounded(mut text: String) -> String {
    if text.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn call(cluster: &ClusterStoreConfig, path: &'static str, body: &impl serde::Serialize) -> Call {
    Call {
        upstream: cluster.upstream.clone(),
        path,
        // Serialising plain structs of strings and numbers cannot fail.
        body: serde_json::to_vec(body).unwrap_or_default(),
        timeout_ms: cluster.timeout_ms,
        retry_until_ns: None,
    }
}

impl ClusterStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// What happened since the last call (counted and logged by the glue).
    pub fn take_events(&mut self) -> Vec<StoreEvent> {
        std::mem::take(&mut self.events)
    }

    /// Leases refilled since the last call, for the root's lease book.
    pub fn take_refilled(&mut self) -> Vec<HeldLease> {
        std::mem::take(&mut self.refilled)
    }

    /// Calls that failed and must be sent again, for the root's retry queue.
    pub fn take_retries(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.retries)
    }

    /// Counts what the root's retry queue did with a call.
    pub fn note_retry(&mut self, retry: Retry) {
        match retry {
            Retry::Scheduled => {}
            Retry::Abandoned | Retry::Dropped => self.events.push(StoreEvent::RetryAbandoned),
        }
    }

    /// Routes one operation. `config` must be in cluster mode (`store.cluster`).
    pub fn begin(
        &mut self,
        config: &CompiledConfig,
        store: &dyn SharedStore,
        op: StoreOp,
        now_ns: u64,
    ) -> Route {
        let Some(cluster) = config.store.cluster.as_ref() else {
            return Route::Answer(store_ops::execute_local(config, store, op));
        };
        // Only admits and claims consult the store's health: a seal, complete
        // or release must neither fall back nor take the probe's turn.
        let down = || {
            health::route(store, now_ns, cluster.probe_interval_ms * NANOS_PER_MS)
                == health::Route::FallBack
        };
        match op {
            StoreOp::Admit(admission) => {
                let Some(settings) = config.tenant_settings(&admission.tenant) else {
                    return Route::Answer(StoreAnswer::Admit(Ok(Admitted::unlimited())));
                };
                // In-flight caps hold per gateway: entered in shared data first.
                let departure = admission.departure();
                let entered = match in_flight::enter(config, store, settings, &departure, now_ns) {
                    Ok(full @ Entered::Full { .. }) => {
                        return Route::Answer(StoreAnswer::Admit(Ok(Admitted::cap_full(full))))
                    }
                    Ok(entered) => entered,
                    Err(err) => return Route::Answer(StoreAnswer::Admit(Err(err))),
                };
                match self.admit(config, cluster, store, admission, down()) {
                    Route::Answer(answer) => Route::Answer(settle_entered(
                        config, store, answer, entered, &departure, now_ns,
                    )),
                    awaited => {
                        if let Some(Waiting::Admission(pending)) = self.waiting.as_mut() {
                            pending.entered = entered;
                        }
                        awaited
                    }
                }
            }
            StoreOp::Debit(debit) => self.debit(config, cluster, store, debit),
            StoreOp::Claim {
                ref tenant,
                ref key,
                fingerprint,
                lifetimes,
                ..
            } => {
                let scope = if lifetimes.pooled_share {
                    wire::POOLED_SCOPE.to_owned()
                } else {
                    tenant.to_string()
                };
                let key = wire::to_hex(&idempotency::owner_hash(tenant, key));
                if down() {
                    return Route::Answer(self.claim_fallback(config, cluster, store, op));
                }
                let request = claim_request(config, &scope, &key, fingerprint, lifetimes);
                let in_flight_until_ns = now_ns.saturating_add(
                    lifetimes
                        .in_flight_timeout_seconds
                        .saturating_mul(NANOS_PER_SECOND),
                );
                self.waiting = Some(Waiting::Claim {
                    op,
                    scope,
                    key,
                    body: fingerprint.body,
                    in_flight_until_ns,
                });
                Route::Await(call(cluster, wire::CLAIM_PATH, &request))
            }
            StoreOp::Seal { body_hash, .. } => match &mut self.held {
                Some(Held::Remote { body, .. }) => {
                    *body = Some(body_hash);
                    Route::Answer(StoreAnswer::Update(Ok(true)))
                }
                Some(Held::Local) | None => {
                    Route::Answer(store_ops::execute_local(config, store, op))
                }
            },
            StoreOp::Complete {
                ref response,
                status,
                ttl_seconds,
                ..
            } => match self.held.take() {
                Some(Held::Remote {
                    scope,
                    key,
                    generation,
                    body,
                    ..
                }) => {
                    let request = wire::CompleteRequest {
                        scope,
                        key,
                        generation,
                        body: body.map(|hash| wire::to_hex(&hash)),
                        status,
                        response: response.as_ref().map(|stored| WireResponse {
                            status: stored.status,
                            headers: stored.headers.clone(),
                            body: wire::to_hex(&stored.body),
                        }),
                        ttl_ms: ttl_seconds.saturating_mul(1_000),
                    };
                    let mut call = call(cluster, wire::COMPLETE_PATH, &request);
                    // The upstream answered: the record must reach Redis, for
                    // as long as it would be kept there.
                    call.retry_until_ns =
                        Some(now_ns.saturating_add(ttl_seconds.saturating_mul(NANOS_PER_SECOND)));
                    match store.semantics() {
                        HostSemantics::Envoy => {
                            self.waiting = Some(Waiting::Complete(call.clone()));
                            Route::Await(call)
                        }
                        HostSemantics::NgxWasm => Route::Queue(call, StoreAnswer::Update(Ok(true))),
                    }
                }
                Some(Held::Local) | None => {
                    Route::Answer(store_ops::execute_local(config, store, op))
                }
            },
            StoreOp::Release { .. } => match self.held.take() {
                Some(Held::Remote {
                    scope,
                    key,
                    generation,
                    in_flight_until_ns,
                    ..
                }) => {
                    let request = wire::ReleaseRequest {
                        scope,
                        key,
                        generation,
                    };
                    let mut call = call(cluster, wire::RELEASE_PATH, &request);
                    call.retry_until_ns = Some(in_flight_until_ns);
                    let answer = StoreAnswer::Update(Ok(true));
                    match store.semantics() {
                        HostSemantics::Envoy => Route::Send(call, answer),
                        HostSemantics::NgxWasm => Route::Queue(call, answer),
                    }
                }
                Some(Held::Local) | None => {
                    Route::Answer(store_ops::execute_local(config, store, op))
                }
            },
        }
    }

    fn claim_fallback(
        &mut self,
        config: &CompiledConfig,
        cluster: &ClusterStoreConfig,
        store: &dyn SharedStore,
        op: StoreOp,
    ) -> StoreAnswer {
        self.events.push(StoreEvent::FellBack);
        match cluster.idempotency_fallback {
            IdempotencyFallback::Reject => StoreAnswer::Claim(Err(IdempotencyError::Store(
                StoreError("the cluster store is unavailable".to_owned()),
            ))),
            IdempotencyFallback::Local => {
                let answer = store_ops::execute_local(config, store, op);
                if matches!(answer, StoreAnswer::Claim(Ok(Begin::Claimed(_)))) {
                    self.held = Some(Held::Local);
                }
                answer
            }
        }
    }

    /// The outcome of the [`Route::Await`] call; `None` when no call was awaited.
    pub fn on_answer(
        &mut self,
        config: &CompiledConfig,
        store: &dyn SharedStore,
        outcome: CallOutcome,
        now_ns: u64,
    ) -> Option<StoreAnswer> {
        let waiting = self.waiting.take()?;
        let cluster = config.store.cluster.as_ref()?;
        let answer = match waiting {
            Waiting::Admission(pending) => {
                let (entered, departure) = (pending.entered.clone(), pending.departure());
                let answer =
                    self.admission_answered(config, cluster, store, *pending, outcome, now_ns);
                settle_entered(config, store, answer, entered, &departure, now_ns)
            }
            Waiting::Claim {
                op,
                scope,
                key,
                body,
                in_flight_until_ns,
            } => match self
                .parse::<ClaimAnswer>(store, cluster, outcome, now_ns)
                .map(|answer| (answer.generation(), begin_of(answer)))
            {
                Some((generation, Ok(begun))) => {
                    if let Some(generation) = generation {
                        self.held = Some(Held::Remote {
                            scope,
                            key,
                            generation,
                            body,
                            in_flight_until_ns,
                        });
                    }
                    StoreAnswer::Claim(Ok(begun))
                }
                Some((_, Err(err))) => {
                    self.events
                        .push(StoreEvent::Failed(bounded(err.to_string())));
                    StoreAnswer::Claim(Err(err))
                }
                None => self.claim_fallback(config, cluster, store, op),
            },
            Waiting::Complete(call) => {
                match self.parse::<UpdateAnswer>(store, cluster, outcome, now_ns) {
                    Some(answer) => StoreAnswer::Update(Ok(answer.updated)),
                    None => {
                        self.retries.push(call);
                        StoreAnswer::Update(Err(IdempotencyError::Store(StoreError(
                            "the cluster store did not record the response yet: the gateway sends it again until the store acknowledges it".to_owned(),
                        ))))
                    }
                }
            }
        };
        Some(answer)
    }

    /// The outcome of a [`Route::Send`] or [`Route::Queue`] call (if it
    /// arrives while its context lives): only the store's health and the
    /// counters learn from it.
    ///
    /// Returns whether the call was acknowledged. A failed `call` that must
    /// not be lost goes to [`Self::take_retries`], unless `retrying` says the
    /// caller (the root's retry queue) takes care of it.
    pub fn on_settled(
        &mut self,
        config: &CompiledConfig,
        store: &dyn SharedStore,
        call: &Call,
        outcome: CallOutcome,
        now_ns: u64,
    ) -> Settled {
        let Some(cluster) = config.store.cluster.as_ref() else {
            return Settled::Failed;
        };
        let permanent =
            matches!(outcome, CallOutcome::Answered { status, .. } if (400..500).contains(&status));
        let acknowledged = if call.path == wire::LEASE_PATH {
            self.parse::<LeaseAnswer>(store, cluster, outcome, now_ns)
                .is_some()
        } else if call.path == wire::LEASES_PATH {
            self.parse::<wire::LeasesAnswer>(store, cluster, outcome, now_ns)
                .is_some()
        } else {
            self.parse::<UpdateAnswer>(store, cluster, outcome, now_ns)
                .is_some()
        };
        if acknowledged {
            Settled::Acknowledged
        } else if permanent || call.retry_until_ns.is_none() {
            // The store refused the call itself: sending it again cannot help.
            Settled::Refused
        } else {
            Settled::Failed
        }
    }

    /// Hands a failed call that must not be lost to the root's retry queue.
    pub fn retry_later(&mut self, call: &Call) {
        if call.retry_until_ns.is_some() {
            self.retries.push(call.clone());
        }
    }

    /// A usable answer, or `None` after marking the store down.
    pub(super) fn parse<T: serde::de::DeserializeOwned>(
        &mut self,
        store: &dyn SharedStore,
        cluster: &ClusterStoreConfig,
        outcome: CallOutcome,
        now_ns: u64,
    ) -> Option<T> {
        let parsed = match outcome {
            CallOutcome::Answered { status: 200, body } => serde_json::from_slice::<T>(&body)
                .map_err(|err| format!("the store answered an unreadable body: {err}")),
            CallOutcome::Answered { status, .. } => {
                Err(format!("the store answered status {status}"))
            }
            CallOutcome::Failed(reason) => Err(reason),
        };
        match parsed {
            Ok(answer) => {
                self.events.push(StoreEvent::RoundTrip);
                if health::succeeded(store) == Some(Transition::CameBack) {
                    self.events.push(StoreEvent::CameBack);
                }
                Some(answer)
            }
            Err(reason) => {
                let reason = bounded(reason);
                self.events.push(StoreEvent::Failed(reason.clone()));
                let interval = cluster.probe_interval_ms * NANOS_PER_MS;
                if health::failed(store, now_ns, interval) == Some(Transition::WentDown) {
                    self.events.push(StoreEvent::WentDown(reason));
                }
                None
            }
        }
    }
}

fn claim_request(
    config: &CompiledConfig,
    scope: &str,
    key: &str,
    fingerprint: Fingerprint,
    lifetimes: Lifetimes,
) -> wire::ClaimRequest {
    wire::ClaimRequest {
        scope: scope.to_owned(),
        key: key.to_owned(),
        route: wire::to_hex(&fingerprint.route),
        body: fingerprint.body.map(|hash| wire::to_hex(&hash)),
        in_flight_ms: lifetimes
            .in_flight_timeout_seconds
            .saturating_mul(1_000)
            .max(1),
        scope_limit: u64::from(StoreParams::of(&config.store).tenant_slots),
        ttl_ms: lifetimes.ttl_seconds.saturating_mul(1_000),
    }
}

/// A claim answer as the policy reads it; a replay that is not what this
/// filter stores is a store error, never replayed.
fn begin_of(answer: ClaimAnswer) -> Result<Begin, IdempotencyError> {
    Ok(match answer {
        ClaimAnswer::Claimed { generation } => {
            Begin::Claimed(idempotency::Claim::remote(generation))
        }
        ClaimAnswer::InFlight => Begin::InFlight,
        ClaimAnswer::Mismatch => Begin::FingerprintMismatch,
        ClaimAnswer::NeedBody => Begin::NeedBody,
        ClaimAnswer::NotReplayable { status } => Begin::NotReplayable { status },
        ClaimAnswer::TenantFull {
            retry_after_seconds,
        } => Begin::TenantFull {
            retry_after_seconds: retry_after_seconds.max(1),
        },
        ClaimAnswer::Replay { response } => Begin::Replay(stored_of(response)?),
    })
}

fn stored_of(response: WireResponse) -> Result<StoredResponse, IdempotencyError> {
    let unusable = |what: &str| {
        IdempotencyError::Store(StoreError(format!(
            "the store returned an unusable response to replay: {what}"
        )))
    };
    if !(100..=599).contains(&response.status) {
        return Err(unusable("status"));
    }
    let header_bytes: usize = response
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    if header_bytes > MAX_STORED_HEADER_BYTES {
        return Err(unusable("headers too large"));
    }
    // Names as the host captured them (ngx_wasm_module keeps the upstream's
    // spelling); what matters is that nothing can split a header.
    for (name, value) in &response.headers {
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let value_ok = value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
        if !name_ok || !value_ok {
            return Err(unusable("header"));
        }
    }
    let body = wire::from_hex(&response.body).ok_or_else(|| unusable("body"))?;
    Ok(StoredResponse {
        status: response.status,
        headers: response.headers,
        body,
    })
}
