//! The Idempotency-Key steps of one request: claim (from the headers, or once
//! the body is known), seal, capture the response, complete or release. Each
//! step is a store operation ([`StoreOp`]) built here and an answer
//! interpreted here; `begin_idempotent`, `seal_idempotent`, `finish_idempotent`
//! and `abandon_idempotent` run a step against a store that answers at once.

use crate::config::CompiledConfig;
use crate::idempotency::{self, Begin, Claim, Fingerprint, IdempotencyError, StoredResponse};
use crate::path;
use crate::problem::{Problem, ProblemKind};
use crate::store::{SharedStore, StoreError};
use crate::store_ops::{self, StoreAnswer, StoreOp};
use crate::tenant::TenantId;

use super::decision::{
    Forward, Headers, HostInputs, LocalReply, Outcome, PendingIdempotency, RequestView,
};
use super::reply::local_reply;

/// What to do with an idempotent request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyStep {
    /// First use of the key: forward upstream (seal the body hash if the body
    /// was still to come), then capture and complete.
    Proceed(Claim),
    /// The key is known for this route: the body decides (call again with it).
    AwaitBody,
    /// Replay, conflict or failure: answer locally.
    Reply(LocalReply, Outcome),
}

/// What a local reply to a forwarded request carries from its forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyContext {
    pub correlation_id: String,
    pub response_headers: Headers,
}

impl ReplyContext {
    pub fn of(forward: &Forward) -> Self {
        ReplyContext {
            correlation_id: forward.correlation_id.clone(),
            response_headers: forward.response_headers.clone(),
        }
    }
}

/// Why an idempotency record could not be updated as the request's life required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyFailure {
    /// `in_flight_timeout_seconds` passed while the body was still arriving.
    LapsedBeforeBody,
    /// `in_flight_timeout_seconds` passed before upstream answered.
    LapsedBeforeResponse {
        tenant: TenantId,
        in_flight_timeout_seconds: u64,
    },
    NotSealed(IdempotencyError),
    NotRecorded(IdempotencyError),
    NotReleased(IdempotencyError),
}

impl std::fmt::Display for IdempotencyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LapsedBeforeBody => {
                f.write_str("idempotency claim lapsed before the request body was complete")
            }
            Self::LapsedBeforeResponse {
                tenant,
                in_flight_timeout_seconds,
            } => write!(
                f,
                "idempotency claim for tenant `{tenant}` lapsed before the response arrived (in_flight_timeout_seconds = {in_flight_timeout_seconds})"
            ),
            Self::NotSealed(err) => write!(f, "idempotency fingerprint not sealed: {err}"),
            Self::NotRecorded(err) => write!(f, "idempotency record not updated: {err}"),
            Self::NotReleased(err) => write!(f, "idempotency key not released: {err}"),
        }
    }
}

impl std::error::Error for IdempotencyFailure {}

/// The claim of `pending`'s key; `body` is `None` while the body is still to come.
pub fn claim_op(
    config: &CompiledConfig,
    pending: &PendingIdempotency,
    request: &RequestView<'_>,
    body: Option<&[u8]>,
    host: &HostInputs,
) -> StoreOp {
    // Already validated by `screen`; a path that no longer normalises hashes raw.
    let route = path::normalize(request.path, config.paths.allow_encoded_slashes).map_or_else(
        |_| String::from_utf8_lossy(request.path).into_owned(),
        |path| path.with_query(),
    );
    let [.., g0, g1, g2, g3] = host.random;
    StoreOp::Claim {
        tenant: pending.tenant.clone(),
        key: pending.key.clone(),
        fingerprint: Fingerprint::of(request.method(), &route, body),
        lifetimes: idempotency::Lifetimes::of(
            &pending.settings,
            !config.tenants.contains_key(pending.tenant.as_str()),
        ),
        now_unix_ns: host.now_unix_ns,
        generation: u32::from_le_bytes([g0, g1, g2, g3]) | 1,
    }
}

/// What the answer to [`claim_op`] means for the request; `body_known` says
/// whether the claim carried the body (else `NeedBody` asks for it).
pub fn claim_answered(
    config: &CompiledConfig,
    pending: &PendingIdempotency,
    context: &ReplyContext,
    body_known: bool,
    answer: Result<Begin, IdempotencyError>,
) -> IdempotencyStep {
    let (problem, retry_after) = match answer {
        Ok(Begin::Claimed(claim)) => return IdempotencyStep::Proceed(claim),
        Ok(Begin::NeedBody) if !body_known => return IdempotencyStep::AwaitBody,
        Ok(Begin::NeedBody) => (
            Problem::new(
                ProblemKind::IdempotencyUnavailable,
                "the idempotency record could not be compared with this request",
            ),
            Some(1),
        ),
        Ok(Begin::Replay(stored)) => {
            return IdempotencyStep::Reply(replay(config, stored, context), Outcome::Replayed)
        }
        Ok(Begin::FingerprintMismatch) => (
            Problem::new(
                ProblemKind::IdempotencyKeyReused,
                "this Idempotency-Key was used for a request with a different method, path or body",
            ),
            None,
        ),
        Ok(Begin::InFlight) => (
            Problem::new(
                ProblemKind::IdempotencyInFlight,
                "a request with this Idempotency-Key is still being processed; retry later",
            ),
            Some(1),
        ),
        Ok(Begin::NotReplayable { status }) => (
            Problem::new(
                ProblemKind::IdempotencyNotReplayable,
                format!(
                    "the request with this Idempotency-Key completed with status {status}, but its response was larger than {} bytes and was not stored",
                    pending.settings.max_body_bytes
                ),
            ),
            None,
        ),
        Ok(Begin::Full {
            retry_after_seconds,
        }) => (
            Problem::new(
                ProblemKind::IdempotencyUnavailable,
                "no free idempotency record for this key right now",
            ),
            Some(retry_after_seconds),
        ),
        Ok(Begin::TenantFull {
            retry_after_seconds,
        }) => (
            Problem::new(
                ProblemKind::IdempotencyUnavailable,
                "this tenant holds its share of the idempotency store; its new keys are refused until some of its records expire",
            ),
            Some(retry_after_seconds),
        ),
        Err(err) => (
            Problem::new(
                ProblemKind::IdempotencyUnavailable,
                format!("the idempotency record could not be claimed: {err}"),
            ),
            Some(1),
        ),
    };
    let problem = problem.for_tenant(&pending.tenant);
    let reply = local_reply(
        config,
        &problem,
        context.correlation_id.clone(),
        context.response_headers.clone(),
        retry_after,
    );
    IdempotencyStep::Reply(reply, Outcome::Rejected(problem.kind))
}

/// Claims the key, or answers from what is stored under it, against a store
/// that answers at once. `body` is `None` while the body is still to come.
pub fn begin_idempotent(
    config: &CompiledConfig,
    pending: &PendingIdempotency,
    request: &RequestView<'_>,
    body: Option<&[u8]>,
    forward: &Forward,
    host: &HostInputs,
    store: &dyn SharedStore,
) -> IdempotencyStep {
    let op = claim_op(config, pending, request, body, host);
    let answer = store_ops::execute_local(config, store, op).into_claim();
    claim_answered(
        config,
        pending,
        &ReplyContext::of(forward),
        body.is_some(),
        answer,
    )
}

fn replay(config: &CompiledConfig, stored: StoredResponse, context: &ReplyContext) -> LocalReply {
    let mut headers: Headers = stored
        .headers
        .into_iter()
        .filter(|(name, _)| name != &config.correlation.header)
        .collect();
    headers.extend(context.response_headers.iter().cloned());
    headers.push((idempotency::REPLAYED_HEADER.to_owned(), "true".to_owned()));
    if !headers
        .iter()
        .any(|(name, _)| name == &config.correlation.header)
    {
        headers.push((
            config.correlation.header.clone(),
            context.correlation_id.clone(),
        ));
    }
    LocalReply {
        status: u32::from(stored.status),
        headers,
        body: stored.body,
        correlation_id: context.correlation_id.clone(),
    }
}

/// 413 for a request body over the idempotency buffering limit.
pub fn body_too_large(
    config: &CompiledConfig,
    pending: &PendingIdempotency,
    context: &ReplyContext,
) -> LocalReply {
    let problem = Problem::new(
        ProblemKind::BodyTooLarge,
        format!(
            "idempotent requests may carry at most {} bytes of body",
            pending.settings.max_body_bytes
        ),
    )
    .for_tenant(&pending.tenant);
    local_reply(
        config,
        &problem,
        context.correlation_id.clone(),
        context.response_headers.clone(),
        None,
    )
}

/// The upstream response of a claimed request, captured up to the replay limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseCapture {
    status: u16,
    headers: Headers,
    body: Vec<u8>,
    limit: usize,
    replayable: bool,
}

impl ResponseCapture {
    /// Starts a capture from upstream's raw header values; they are filtered to
    /// what may be replayed. The client always gets upstream's bytes untouched;
    /// a replay re-sends stored values as text, so a stored header whose value
    /// is not UTF-8 without control characters (HTAB aside) makes the response
    /// not replayable (a retry gets 409), rather than replaying it altered.
    pub fn new(
        config: &CompiledConfig,
        pending: &PendingIdempotency,
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
    ) -> Self {
        let mut replayable = true;
        let headers: Headers = headers
            .into_iter()
            .filter(|(name, _)| {
                idempotency::is_stored_header(name) && name != &config.correlation.header
            })
            .filter_map(|(name, value)| match replayable_text(value) {
                Some(value) => Some((name, value)),
                None => {
                    replayable = false;
                    None
                }
            })
            .collect();
        let header_bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        Self {
            status,
            headers,
            body: Vec::new(),
            limit: usize::try_from(pending.settings.max_body_bytes).unwrap_or(usize::MAX),
            replayable: replayable && header_bytes <= idempotency::MAX_STORED_HEADER_BYTES,
        }
    }

    /// Upstream failed: 5xx responses release the key instead of recording it.
    pub fn is_failure(&self) -> bool {
        self.status >= 500
    }

    pub fn push_body(&mut self, chunk: &[u8]) {
        if !self.replayable {
            return;
        }
        if self.body.len().saturating_add(chunk.len()) > self.limit {
            self.replayable = false;
            self.body = Vec::new();
        } else {
            self.body.extend_from_slice(chunk);
        }
    }

    /// How many more body bytes are worth reading.
    pub fn wants_body(&self) -> bool {
        self.replayable
    }

    fn into_stored(self) -> (u16, Option<StoredResponse>) {
        let status = self.status;
        let stored = self.replayable.then_some(StoredResponse {
            status,
            headers: self.headers,
            body: self.body,
        });
        (status, stored)
    }
}

/// A header value a local reply can carry again exactly as received.
fn replayable_text(value: Vec<u8>) -> Option<String> {
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return None;
    }
    String::from_utf8(value).ok()
}

/// Seals the claim's fingerprint with the now complete body.
pub fn seal_op(claim: &Claim, body: &[u8]) -> StoreOp {
    StoreOp::Seal {
        claim: *claim,
        body_hash: idempotency::body_hash(body),
    }
}

/// What the answer to [`seal_op`] means.
pub fn sealed(answer: StoreAnswer) -> Result<(), IdempotencyFailure> {
    match answer.into_update() {
        Ok(true) => Ok(()),
        Ok(false) => Err(IdempotencyFailure::LapsedBeforeBody),
        Err(err) => Err(IdempotencyFailure::NotSealed(err)),
    }
}

/// Records the captured response under the claim, or releases it when upstream failed.
pub fn finish_op(
    pending: &PendingIdempotency,
    claim: &Claim,
    capture: ResponseCapture,
    now_unix_ns: u64,
) -> StoreOp {
    if capture.is_failure() {
        return StoreOp::Release { claim: *claim };
    }
    let (status, response) = capture.into_stored();
    StoreOp::Complete {
        claim: *claim,
        response,
        status,
        ttl_seconds: pending.settings.ttl_seconds,
        now_unix_ns,
    }
}

/// What the answer to [`finish_op`] means.
pub fn recorded(
    pending: &PendingIdempotency,
    answer: StoreAnswer,
) -> Result<(), IdempotencyFailure> {
    match answer.into_update() {
        Ok(true) => Ok(()),
        Ok(false) => Err(IdempotencyFailure::LapsedBeforeResponse {
            tenant: pending.tenant.clone(),
            in_flight_timeout_seconds: pending.settings.in_flight_timeout_seconds,
        }),
        Err(err) => Err(IdempotencyFailure::NotRecorded(err)),
    }
}

/// What the answer to a release after a reset means (a lapsed claim is fine).
pub fn released(answer: StoreAnswer) -> Result<(), IdempotencyFailure> {
    answer
        .into_update()
        .map(|_| ())
        .map_err(IdempotencyFailure::NotReleased)
}

/// [`seal_op`] against a store that answers at once.
pub fn seal_idempotent(
    config: &CompiledConfig,
    claim: &Claim,
    body: &[u8],
    store: &dyn SharedStore,
) -> Result<(), IdempotencyFailure> {
    sealed(store_ops::execute_local(
        config,
        store,
        seal_op(claim, body),
    ))
}

/// [`finish_op`] against a store that answers at once.
pub fn finish_idempotent(
    config: &CompiledConfig,
    pending: &PendingIdempotency,
    claim: &Claim,
    capture: ResponseCapture,
    now_unix_ns: u64,
    store: &dyn SharedStore,
) -> Result<(), IdempotencyFailure> {
    let op = finish_op(pending, claim, capture, now_unix_ns);
    recorded(pending, store_ops::execute_local(config, store, op))
}

/// Gives the key back after a reset, against a store that answers at once.
pub fn abandon_idempotent(
    config: &CompiledConfig,
    claim: &Claim,
    store: &dyn SharedStore,
) -> Result<(), IdempotencyFailure> {
    released(store_ops::execute_local(
        config,
        store,
        StoreOp::Release { claim: *claim },
    ))
}

/// Frees expired idempotency records in `buckets` (run from the host's tick).
pub fn reclaim_idempotency(
    buckets: std::ops::Range<u32>,
    now_unix_ns: u64,
    store: &dyn SharedStore,
) -> Result<u32, StoreError> {
    idempotency::reclaim(store, buckets, now_unix_ns).map(|stats| stats.reclaimed)
}
