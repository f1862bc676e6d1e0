//! Store operations as values. The policy never calls the store itself: it
//! names the one atomic operation it needs ([`StoreOp`]) and is handed the
//! [`StoreAnswer`] later. Who answers is the host's business: shared data
//! answers at once ([`execute_local`], the CAS loops of `ratelimit` and
//! `idempotency`), a store reached over the network answers in a later callback.
//! Either way the policy code is the same.

use crate::config::CompiledConfig;
use crate::idempotency::{
    self, Begin, Claim, Fingerprint, IdempotencyError, Lifetimes, StoreParams, StoredResponse,
};
use crate::limits::{self, Admission, Admitted, Debit, Departure};
use crate::ratelimit::CheckError;
use crate::store::{SharedStore, StoreError};
use crate::tenant::TenantId;

/// Names one outstanding store call of an exchange; an answer with another
/// token is stale (a call the exchange no longer waits for) and is ignored.
pub type Token = u32;

/// A store operation and the token its answer must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreCall {
    pub token: Token,
    pub op: StoreOp,
}

/// One atomic operation on the shared state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Every rate limit and quota that applies to a request, all or nothing.
    Admit(Admission),
    /// Claim an Idempotency-Key, or report what is stored under it.
    Claim {
        tenant: TenantId,
        key: String,
        fingerprint: Fingerprint,
        lifetimes: Lifetimes,
        now_unix_ns: u64,
        generation: u32,
    },
    /// Seal a claim's fingerprint with the hash of the now complete body.
    Seal { claim: Claim, body_hash: [u8; 8] },
    /// Record a claimed request's response (or that it was not replayable).
    Complete {
        claim: Claim,
        response: Option<StoredResponse>,
        status: u16,
        ttl_seconds: u64,
        now_unix_ns: u64,
    },
    /// Give a claimed key back (upstream failed, the stream was reset).
    Release { claim: Claim },
    /// Take the usage a response reported from the limits that asked for it.
    Debit(Box<Debit>),
}

/// The answer to a [`StoreOp`], one variant per kind of result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreAnswer {
    /// To [`StoreOp::Admit`].
    Admit(Result<Admitted, CheckError>),
    /// To [`StoreOp::Claim`].
    Claim(Result<Begin, IdempotencyError>),
    /// To [`StoreOp::Seal`], [`StoreOp::Complete`] and [`StoreOp::Release`]:
    /// `Ok(false)` when the claim had lapsed.
    Update(Result<bool, IdempotencyError>),
    /// To [`StoreOp::Debit`].
    Debited(Result<(), CheckError>),
}

impl StoreAnswer {
    /// The answer to an [`StoreOp::Admit`]; an answer of another kind is a store error.
    pub fn into_admit(self) -> Result<Admitted, CheckError> {
        match self {
            StoreAnswer::Admit(checked) => checked,
            StoreAnswer::Claim(_) | StoreAnswer::Update(_) | StoreAnswer::Debited(_) => {
                Err(CheckError::Store(mismatched()))
            }
        }
    }

    /// The answer to a [`StoreOp::Claim`]; an answer of another kind is a store error.
    pub fn into_claim(self) -> Result<Begin, IdempotencyError> {
        match self {
            StoreAnswer::Claim(begun) => begun,
            StoreAnswer::Admit(_) | StoreAnswer::Update(_) | StoreAnswer::Debited(_) => {
                Err(IdempotencyError::Store(mismatched()))
            }
        }
    }

    /// The answer to a seal, complete or release; an answer of another kind is a store error.
    pub fn into_update(self) -> Result<bool, IdempotencyError> {
        match self {
            StoreAnswer::Update(updated) => updated,
            StoreAnswer::Admit(_) | StoreAnswer::Claim(_) | StoreAnswer::Debited(_) => {
                Err(IdempotencyError::Store(mismatched()))
            }
        }
    }

    /// The answer to a [`StoreOp::Debit`]; an answer of another kind is a store error.
    pub fn into_debited(self) -> Result<(), CheckError> {
        match self {
            StoreAnswer::Debited(debited) => debited,
            StoreAnswer::Admit(_) | StoreAnswer::Claim(_) | StoreAnswer::Update(_) => {
                Err(CheckError::Store(mismatched()))
            }
        }
    }
}

/// A store that answers an operation with the answer to another kind.
fn mismatched() -> StoreError {
    StoreError("the store answered another operation".to_owned())
}

/// Gives back the in-flight slots a request held (at its end): always on
/// this gateway's shared data, in local and cluster mode alike.
pub fn leave(
    config: &CompiledConfig,
    store: &dyn SharedStore,
    departure: &Departure,
    now_unix_ns: u64,
) -> Result<(), CheckError> {
    limits::in_flight::leave(config, store, departure, now_unix_ns)
}

/// Carries out `op` on shared data in the calling thread (Envoy's and
/// ngx_wasm_module's shared data): the answer is there at once.
pub fn execute_local(config: &CompiledConfig, store: &dyn SharedStore, op: StoreOp) -> StoreAnswer {
    let params = StoreParams::of(&config.store);
    match op {
        StoreOp::Admit(admission) => {
            StoreAnswer::Admit(limits::admit_local(config, store, &admission))
        }
        StoreOp::Claim {
            tenant,
            key,
            fingerprint,
            lifetimes,
            now_unix_ns,
            generation,
        } => StoreAnswer::Claim(idempotency::begin(
            store,
            &params,
            &tenant,
            &key,
            fingerprint,
            lifetimes,
            now_unix_ns,
            generation,
        )),
        StoreOp::Seal { claim, body_hash } => {
            StoreAnswer::Update(idempotency::seal_hash(store, &params, &claim, body_hash))
        }
        StoreOp::Complete {
            claim,
            response,
            status,
            ttl_seconds,
            now_unix_ns,
        } => StoreAnswer::Update(idempotency::complete(
            store,
            &params,
            &claim,
            response.as_ref(),
            status,
            ttl_seconds,
            now_unix_ns,
        )),
        StoreOp::Release { claim } => {
            StoreAnswer::Update(idempotency::release(store, &params, &claim))
        }
        StoreOp::Debit(debit) => {
            StoreAnswer::Debited(limits::usage::debit_local(config, store, &debit))
        }
    }
}
