//! The request decision: correlation id → tenant → rate limit, as one pure
//! function of the compiled config, the request, time, randomness and the store.
//! The host glue applies the [`Decision`]; it decides nothing itself.

use crate::config::{CompiledConfig, LimitPolicy, Mode, OnExhausted, RateLimitHeaders};
use crate::correlation;
use crate::headers::{self, trim_ows};
use crate::idempotency::{
    self, Begin, Claim, Fingerprint, IdempotencyConfig, StoreParams, StoredResponse,
};
use crate::jwt::{self, Identity, JwtError};
use crate::path;
use crate::problem::{Problem, ProblemKind, CONTENT_TYPE};
use crate::ratelimit::{self, CheckError, Verdict};
use crate::store::SharedStore;

/// Header the upstream receives with the serving config revision.
pub const REVISION_HEADER: &str = "x-tenant-guard-revision";

/// The parts of a request the policy reads, as the raw bytes the host handed
/// over (never assumed UTF-8): the policy alone decides what a value means.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestView<'a> {
    pub method: &'a [u8],
    /// `:path` including any query string, before normalisation (`crate::path`).
    pub path: &'a [u8],
    pub tenant_header: Option<&'a [u8]>,
    pub correlation_header: Option<&'a [u8]>,
    /// The first `Idempotency-Key` value.
    pub idempotency_key: Option<&'a [u8]>,
    /// The request carries more than one `Idempotency-Key` header (400).
    pub idempotency_key_repeated: bool,
    /// The first `If-Match` value; one that is not RFC 9110 syntax counts as absent.
    pub if_match: Option<&'a [u8]>,
    pub authorization: Option<&'a [u8]>,
}

impl RequestView<'_> {
    /// The method as text; a method that is not an ASCII token matches no rule.
    pub fn method(&self) -> &str {
        let token = !self.method.is_empty()
            && self
                .method
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b));
        if token {
            std::str::from_utf8(self.method).unwrap_or_default()
        } else {
            ""
        }
    }
}

/// What the host provides that the policy may not produce itself.
#[derive(Debug, Clone, Copy)]
pub struct HostInputs {
    pub now_unix_ns: u64,
    pub random: [u8; 10],
}

/// Counted outcome of a request (the glue maps these to metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// Over the limit in shadow mode: allowed, reported.
    ShadowOverLimit,
    /// Store contended or failed and `on_exhausted: allow` let it through.
    AllowedWithoutLimit,
    /// A stored idempotent response was replayed.
    Replayed,
    Rejected(ProblemKind),
}

/// Headers as (lower-case name, value).
pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub correlation_id: String,
    pub tenant: Option<String>,
    /// Set (replacing any incoming value) on the request sent upstream.
    pub upstream_headers: Headers,
    /// Removed from the request sent upstream (identity headers the token did not vouch for).
    pub removed_upstream_headers: Vec<String>,
    /// Set (replacing, never appending) on the response to the client.
    pub response_headers: Headers,
    /// The request takes part in Idempotency-Key handling once its body is read.
    pub idempotency: Option<PendingIdempotency>,
}

/// An idempotent request waiting for its body (the fingerprint needs it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingIdempotency {
    pub tenant: String,
    pub key: String,
    pub settings: IdempotencyConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub correlation_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Forward(Forward),
    Reject(LocalReply),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub decision: Decision,
    pub outcome: Outcome,
    /// Something an operator should see in the gateway log.
    pub log: Option<String>,
}

/// Decides one request.
pub fn evaluate(
    config: &CompiledConfig,
    request: &RequestView<'_>,
    host: &HostInputs,
    store: &dyn SharedStore,
) -> Evaluation {
    let correlation_id = correlation::choose_id(
        request.correlation_header,
        host.now_unix_ns / 1_000_000,
        host.random,
    );
    let mut response_headers = Vec::with_capacity(3);
    response_headers.push((config.correlation.header.clone(), correlation_id.clone()));

    // Always replaced, even when unchanged: a request may carry the header
    // twice, and the host only shows the filter the first value.
    let mut upstream_headers = Vec::with_capacity(3);
    upstream_headers.push((config.correlation.header.clone(), correlation_id.clone()));
    if config.headers.revision {
        upstream_headers.push((REVISION_HEADER.to_owned(), config.revision.clone()));
    }
    let mut removed_upstream_headers = Vec::new();
    let path = match path::normalize(request.path, config.paths.allow_encoded_slashes) {
        Ok(path) => path,
        Err(err) => {
            let problem = Problem::new(ProblemKind::InvalidPath, err.to_string());
            return reject(config, problem, correlation_id, response_headers, None);
        }
    };
    let method = request.method();
    let tenant = match resolve_tenant(config, request, host) {
        Ok(Identified::Token(identity)) => {
            for (name, value) in [
                (&config.tenant.user_header, identity.user),
                (&config.tenant.org_header, identity.org),
            ] {
                match value {
                    Some(value) => upstream_headers.push((name.clone(), value)),
                    None => removed_upstream_headers.push(name.clone()),
                }
            }
            Some(identity.tenant)
        }
        Ok(Identified::Header(tenant)) => tenant,
        Err(problem) => return reject(config, problem, correlation_id, response_headers, None),
    };
    let mut outcome = Outcome::Allowed;
    let mut log = None;
    let mut idempotency_plan = None;

    if let Some(tenant) = tenant.as_deref() {
        upstream_headers.push((config.tenant.header.clone(), tenant.to_owned()));
        let Some(settings) = config.tenant_settings(tenant) else {
            let problem = Problem::new(
                ProblemKind::UnknownTenant,
                format!("tenant `{tenant}` is not configured on this gateway"),
            )
            .for_tenant(tenant);
            return reject(config, problem, correlation_id, response_headers, None);
        };
        let if_match = request.if_match.is_some_and(headers::is_valid_if_match);
        if config.requires_if_match(method, &path.path) && !if_match {
            let problem = Problem::new(
                ProblemKind::PreconditionRequired,
                format!(
                    "{method} {} must be conditional: send If-Match with the ETag you last read (RFC 9110 syntax: `*` or a list of \"entity-tags\")",
                    path.path
                ),
            )
            .for_tenant(tenant);
            return reject(config, problem, correlation_id, response_headers, None);
        }
        match pending_idempotency(tenant, settings.idempotency.as_ref(), method, request) {
            Ok(pending) => idempotency_plan = pending,
            Err(problem) => return reject(config, problem, correlation_id, response_headers, None),
        }
        if let Some(policy) = settings.policy_for(method, &path.path) {
            let key = ratelimit::RateKey::new(config, tenant, &policy.name);
            match ratelimit::check_and_consume(
                store,
                &key,
                &policy.rate,
                host.now_unix_ns,
                &config.store,
            ) {
                Ok(verdict) => {
                    let rejects = !verdict.allowed && settings.mode == Mode::Enforce;
                    if rejects || config.headers.rate_limit == RateLimitHeaders::Always {
                        response_headers.extend(rate_limit_headers(policy, &verdict));
                    }
                    if !verdict.allowed {
                        if settings.mode == Mode::Shadow {
                            outcome = Outcome::ShadowOverLimit;
                        } else {
                            let problem = Problem::new(
                                ProblemKind::RateLimited,
                                format!(
                                    "tenant `{tenant}` exceeded {} requests per {} s on limit `{}`; retry in {} s",
                                    policy.rate.requests,
                                    policy.rate.per_seconds,
                                    policy.name,
                                    verdict.retry_after_seconds
                                ),
                            )
                            .for_tenant(tenant);
                            return reject(
                                config,
                                problem,
                                correlation_id,
                                response_headers,
                                Some(verdict.retry_after_seconds),
                            );
                        }
                    }
                }
                Err(err) => {
                    let message = format!("rate limit for tenant `{tenant}` not checked: {err}");
                    match (config.store.on_exhausted, settings.mode) {
                        (OnExhausted::Allow, _) | (_, Mode::Shadow) => {
                            outcome = Outcome::AllowedWithoutLimit;
                            log = Some(message);
                        }
                        (OnExhausted::Reject, Mode::Enforce) => {
                            let problem = Problem::new(
                                ProblemKind::RateLimitUnavailable,
                                rate_limit_unavailable_detail(&err),
                            )
                            .for_tenant(tenant);
                            let mut evaluation =
                                reject(config, problem, correlation_id, response_headers, Some(1));
                            evaluation.log = Some(message);
                            return evaluation;
                        }
                    }
                }
            }
        }
    }

    if !config.correlation.echo {
        response_headers.retain(|(name, _)| name != &config.correlation.header);
    }
    Evaluation {
        decision: Decision::Forward(Forward {
            correlation_id,
            tenant,
            upstream_headers,
            removed_upstream_headers,
            response_headers,
            idempotency: idempotency_plan,
        }),
        outcome,
        log,
    }
}

fn pending_idempotency(
    tenant: &str,
    settings: Option<&IdempotencyConfig>,
    method: &str,
    request: &RequestView<'_>,
) -> Result<Option<PendingIdempotency>, Problem> {
    let Some(settings) = settings else {
        return Ok(None);
    };
    if !settings.methods.iter().any(|m| m == method) {
        return Ok(None);
    }
    if request.idempotency_key_repeated {
        // Which copy would the upstream act on? Refuse rather than guess.
        return Err(Problem::new(
            ProblemKind::IdempotencyKeyMalformed,
            "send exactly one Idempotency-Key header",
        )
        .for_tenant(tenant));
    }
    let key = match request.idempotency_key {
        None if settings.required => {
            return Err(Problem::new(
                ProblemKind::IdempotencyKeyMissing,
                format!(
                    "{method} requests need an Idempotency-Key header, e.g. Idempotency-Key: \"<uuid>\""
                ),
            )
            .for_tenant(tenant))
        }
        None => return Ok(None),
        Some(header) => idempotency::parse_key(header).map_err(|err| {
            Problem::new(ProblemKind::IdempotencyKeyMalformed, err.to_string()).for_tenant(tenant)
        })?,
    };
    Ok(Some(PendingIdempotency {
        tenant: tenant.to_owned(),
        key,
        settings: settings.clone(),
    }))
}

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

fn store_params(config: &CompiledConfig) -> StoreParams {
    StoreParams::of(&config.store)
}

/// Claims the key, or answers from what is stored under it. `body` is `None`
/// while the body is still to come (called from the request headers).
pub fn begin_idempotent(
    config: &CompiledConfig,
    pending: &PendingIdempotency,
    request: &RequestView<'_>,
    body: Option<&[u8]>,
    forward: &Forward,
    host: &HostInputs,
    store: &dyn SharedStore,
) -> IdempotencyStep {
    // Already validated by `evaluate`; a path that no longer normalises hashes raw.
    let route = path::normalize(request.path, config.paths.allow_encoded_slashes).map_or_else(
        |_| String::from_utf8_lossy(request.path).into_owned(),
        |path| path.with_query(),
    );
    let fingerprint = Fingerprint::of(request.method(), &route, body);
    let [.., g0, g1, g2, g3] = host.random;
    let generation = u32::from_le_bytes([g0, g1, g2, g3]) | 1;
    let begun = idempotency::begin(
        store,
        &store_params(config),
        &pending.tenant,
        &pending.key,
        fingerprint,
        idempotency::Lifetimes::of(
            &pending.settings,
            !config.tenants.contains_key(&pending.tenant),
        ),
        host.now_unix_ns,
        generation,
    );
    let (problem, retry_after) = match begun {
        Ok(Begin::Claimed(claim)) => return IdempotencyStep::Proceed(claim),
        Ok(Begin::NeedBody) if body.is_none() => return IdempotencyStep::AwaitBody,
        Ok(Begin::NeedBody) => (
            Problem::new(
                ProblemKind::IdempotencyUnavailable,
                "the idempotency record could not be compared with this request",
            ),
            Some(1),
        ),
        Ok(Begin::Replay(stored)) => {
            return IdempotencyStep::Reply(replay(config, stored, forward), Outcome::Replayed)
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
        forward.correlation_id.clone(),
        forward.response_headers.clone(),
        retry_after,
    );
    IdempotencyStep::Reply(reply, Outcome::Rejected(problem.kind))
}

fn replay(config: &CompiledConfig, stored: StoredResponse, forward: &Forward) -> LocalReply {
    let mut headers: Headers = stored
        .headers
        .into_iter()
        .filter(|(name, _)| name != &config.correlation.header)
        .collect();
    headers.extend(forward.response_headers.iter().cloned());
    headers.push((idempotency::REPLAYED_HEADER.to_owned(), "true".to_owned()));
    if !headers
        .iter()
        .any(|(name, _)| name == &config.correlation.header)
    {
        headers.push((
            config.correlation.header.clone(),
            forward.correlation_id.clone(),
        ));
    }
    LocalReply {
        status: u32::from(stored.status),
        headers,
        body: stored.body,
        correlation_id: forward.correlation_id.clone(),
    }
}

/// 413 for a request body over the idempotency buffering limit.
pub fn body_too_large(
    config: &CompiledConfig,
    pending: &PendingIdempotency,
    forward: &Forward,
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
        forward.correlation_id.clone(),
        forward.response_headers.clone(),
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
pub fn seal_idempotent(
    config: &CompiledConfig,
    claim: &Claim,
    body: &[u8],
    store: &dyn SharedStore,
) -> Result<(), String> {
    match idempotency::seal(store, &store_params(config), claim, body) {
        Ok(true) => Ok(()),
        Ok(false) => Err("idempotency claim lapsed before the request body was complete".into()),
        Err(err) => Err(format!("idempotency fingerprint not sealed: {err}")),
    }
}

/// Records the captured response under the claim (or releases it on failure).
pub fn finish_idempotent(
    config: &CompiledConfig,
    pending: &PendingIdempotency,
    claim: &Claim,
    capture: ResponseCapture,
    now_unix_ns: u64,
    store: &dyn SharedStore,
) -> Result<(), String> {
    let params = store_params(config);
    let recorded = if capture.is_failure() {
        idempotency::release(store, &params, claim)
    } else {
        let (status, stored) = capture.into_stored();
        idempotency::complete(
            store,
            &params,
            claim,
            stored.as_ref(),
            status,
            pending.settings.ttl_seconds,
            now_unix_ns,
        )
    };
    match recorded {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "idempotency claim for tenant `{}` lapsed before the response arrived (in_flight_timeout_seconds = {})",
            pending.tenant, pending.settings.in_flight_timeout_seconds
        )),
        Err(err) => Err(format!("idempotency record not updated: {err}")),
    }
}

/// Gives the key back after a reset or a request that never got a response.
pub fn abandon_idempotent(
    config: &CompiledConfig,
    claim: &Claim,
    store: &dyn SharedStore,
) -> Result<(), String> {
    idempotency::release(store, &store_params(config), claim)
        .map(|_| ())
        .map_err(|err| format!("idempotency key not released: {err}"))
}

/// Frees expired idempotency records in `buckets` (run from the host's tick).
pub fn reclaim_idempotency(
    buckets: std::ops::Range<u32>,
    now_unix_ns: u64,
    store: &dyn SharedStore,
) -> Result<u32, String> {
    idempotency::reclaim(store, buckets, now_unix_ns)
        .map(|stats| stats.reclaimed)
        .map_err(|err| err.to_string())
}

fn rate_limit_unavailable_detail(err: &CheckError) -> String {
    match err {
        CheckError::Contention { .. } => {
            "the rate-limit state is under heavy contention; retry shortly".to_owned()
        }
        CheckError::Store(_) => "the rate-limit state could not be read; retry shortly".to_owned(),
    }
}

/// Where the tenant came from.
enum Identified {
    Token(Identity),
    /// From the tenant header (trusted by config), or none where none is required.
    Header(Option<String>),
}

fn resolve_tenant(
    config: &CompiledConfig,
    request: &RequestView<'_>,
    host: &HostInputs,
) -> Result<Identified, Problem> {
    let Some(verifier) = &config.jwt else {
        return tenant_from_header(config, request).map(Identified::Header);
    };
    let unauthenticated = |err: JwtError| {
        Problem::new(ProblemKind::Unauthenticated, err.to_string())
            .with_challenge(err.www_authenticate())
    };
    let authorization = request
        .authorization
        .map(|value| {
            headers::printable_ascii(value).ok_or_else(|| {
                JwtError::Malformed("the Authorization header is not printable ASCII".to_owned())
            })
        })
        .transpose()
        .map_err(unauthenticated)?;
    let token = jwt::bearer_token(authorization).map_err(unauthenticated)?;
    let Some(token) = token else {
        if verifier.required() || !config.tenant.trust_header_without_jwt {
            return Err(unauthenticated(JwtError::Missing));
        }
        return tenant_from_header(config, request).map(Identified::Header);
    };
    let now_seconds = host.now_unix_ns / 1_000_000_000;
    let verified = match config.token_cache.lock() {
        Ok(mut cache) => verifier.verify_cached(&mut cache, token, now_seconds),
        Err(_) => verifier.verify(token, now_seconds),
    };
    let identity = verified.map_err(unauthenticated)?;
    if let Some(claimed) = request.tenant_header.map(trim_ows) {
        if !claimed.is_empty() && claimed != identity.tenant.as_bytes() {
            return Err(Problem::new(
                ProblemKind::TenantMismatch,
                format!(
                    "the `{}` header names a different tenant than the token",
                    config.tenant.header
                ),
            )
            .for_tenant(&identity.tenant));
        }
    }
    Ok(Identified::Token(identity))
}

fn tenant_from_header(
    config: &CompiledConfig,
    request: &RequestView<'_>,
) -> Result<Option<String>, Problem> {
    let claimed = request.tenant_header.map(trim_ows);
    match claimed.map(std::str::from_utf8) {
        None | Some(Ok("")) if config.tenant.required => Err(Problem::new(
            ProblemKind::TenantRequired,
            format!(
                "this API needs a tenant: send the `{}` header",
                config.tenant.header
            ),
        )),
        None | Some(Ok("")) => Ok(None),
        Some(Ok(value)) if crate::config::is_valid_tenant_id(value) => Ok(Some(value.to_owned())),
        // Non-UTF-8 included: the tenant names storage keys and upstream headers.
        Some(_) => Err(Problem::new(
            ProblemKind::InvalidTenant,
            format!(
                "the `{}` header must be 1-128 characters of [A-Za-z0-9._-]",
                config.tenant.header
            ),
        )),
    }
}

fn reject(
    config: &CompiledConfig,
    problem: Problem,
    correlation_id: String,
    headers: Headers,
    retry_after: Option<u64>,
) -> Evaluation {
    let kind = problem.kind;
    Evaluation {
        outcome: Outcome::Rejected(kind),
        decision: Decision::Reject(local_reply(
            config,
            &problem,
            correlation_id,
            headers,
            retry_after,
        )),
        log: None,
    }
}

/// A problem+json local reply carrying `headers` (correlation, rate limit) and the id.
fn local_reply(
    config: &CompiledConfig,
    problem: &Problem,
    correlation_id: String,
    mut headers: Headers,
    retry_after: Option<u64>,
) -> LocalReply {
    headers.push(("content-type".to_owned(), CONTENT_TYPE.to_owned()));
    if let Some(challenge) = &problem.challenge {
        headers.push(("www-authenticate".to_owned(), challenge.clone()));
    }
    if let Some(seconds) = retry_after {
        headers.push(("retry-after".to_owned(), seconds.to_string()));
    }
    // Local replies always carry the correlation id, whatever `echo` says.
    if !headers
        .iter()
        .any(|(name, _)| name == &config.correlation.header)
    {
        headers.push((config.correlation.header.clone(), correlation_id.clone()));
    }
    LocalReply {
        status: problem.kind.status(),
        body: problem.body(&correlation_id),
        headers,
        correlation_id,
    }
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub fn rate_limit_headers(policy: &LimitPolicy, verdict: &Verdict) -> [(String, String); 2] {
    [
        ("ratelimit-policy".to_owned(), policy.policy_header.clone()),
        (
            "ratelimit".to_owned(),
            format!(
                "\"{}\";r={};t={}",
                policy.name, verdict.remaining, verdict.reset_seconds
            ),
        ),
    ]
}
