//! The request decision: correlation id → tenant → If-Match → rate limit.
//! [`screen`] decides everything that needs no store; the rate-limit check is a
//! store operation ([`Screened::rate_limit_op`]); [`admit`] turns its answer
//! into the [`Evaluation`]. [`evaluate`] runs all three against a local store.

use crate::config::{
    Applied, CompiledConfig, CompiledTenant, KeyKind, LimitPolicy, MethodOverride, Mode,
    OnExhausted, OnMissingKey, RateLimitHeaders,
};
use crate::correlation;
use crate::headers::{self, trim_ows};
use crate::idempotency::{self, IdempotencyConfig};
use crate::jwt::{self, Identity, JwtError};
use crate::limits::{Admission, Admitted, Entered, KeyHashes};
use crate::path;
use crate::problem::{Problem, ProblemKind};
use crate::ratelimit::CheckError;
use crate::store::SharedStore;
use crate::store_ops::{self, StoreOp};
use crate::tenant::TenantId;

use super::decision::{method_text, METHOD_OVERRIDE_HEADERS};
use super::decision::{
    Decision, Evaluation, Forward, Headers, HostInputs, Outcome, PendingIdempotency, QuotaUse,
    RequestView, Spent, REVISION_HEADER,
};
use super::reply::{rate_limit_headers, reject};

/// Decides one request against a store that answers at once.
pub fn evaluate(
    config: &CompiledConfig,
    request: &RequestView<'_>,
    host: &HostInputs,
    store: &dyn SharedStore,
) -> Evaluation {
    let screened = match screen(config, request, host) {
        Ok(screened) => screened,
        Err(rejected) => return *rejected,
    };
    let checked = screened
        .rate_limit_op(config, host.now_unix_ns)
        .map(|op| store_ops::execute_local(config, store, op).into_admit());
    admit(config, screened, checked)
}

/// A request that passed every check that needs no store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screened {
    correlation_id: String,
    tenant: Option<TenantId>,
    upstream_headers: Headers,
    removed_upstream_headers: Vec<String>,
    response_headers: Headers,
    idempotency: Option<PendingIdempotency>,
    /// The limits that apply, and the key values they count by.
    applied: Applied,
    keys: KeyHashes,
    /// An honoured method override: the method every rule saw.
    method: Option<String>,
    now_unix_ns: u64,
    /// Names this request's slots in its tenant's in-flight caps.
    token: u64,
    /// Its tenant has in-flight caps.
    capped: bool,
}

impl Screened {
    /// The rate-limit check this request needs from the store, if any.
    pub fn rate_limit_op(&self, _config: &CompiledConfig, now_unix_ns: u64) -> Option<StoreOp> {
        if self.applied.is_empty() && !self.capped {
            return None;
        }
        Some(StoreOp::Admit(Admission {
            tenant: self.tenant.clone()?,
            applied: self.applied,
            keys: self.keys,
            now_unix_ns,
            token: self.token,
        }))
    }

    /// What the request gives back to its tenant's in-flight caps.
    pub fn departure(&self) -> Option<crate::limits::Departure> {
        Some(crate::limits::Departure {
            tenant: self.tenant.clone()?,
            keys: self.keys,
            token: self.token,
        })
    }

    /// The method the rules saw: the request's, or an honoured override.
    pub fn method<'r>(&'r self, request: &RequestView<'r>) -> &'r [u8] {
        self.method.as_deref().map_or(request.method, str::as_bytes)
    }

    /// The request takes part in Idempotency-Key handling once forwarded.
    pub fn is_idempotent(&self) -> bool {
        self.idempotency.is_some()
    }
}

/// Everything up to the rate-limit check: a rejection, or what the check needs.
pub fn screen(
    config: &CompiledConfig,
    request: &RequestView<'_>,
    host: &HostInputs,
) -> Result<Screened, Box<Evaluation>> {
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
    let refuse = |problem: Problem| {
        Err(rejected(
            config,
            problem,
            correlation_id.clone(),
            response_headers.clone(),
            None,
        ))
    };
    let path = match path::normalize(request.path, config.paths.allow_encoded_slashes) {
        Ok(path) => path,
        Err(err) => {
            let problem = Problem::new(ProblemKind::InvalidPath, err.to_string());
            return refuse(problem);
        }
    };
    let overridden = match method_override(config, request) {
        Ok(overridden) => overridden,
        Err(problem) => return refuse(problem),
    };
    let method = overridden.as_deref().unwrap_or_else(|| request.method());
    let mut claims = (None, None);
    let tenant = match resolve_tenant(config, request, host) {
        Ok(Identified::Token(identity)) => {
            for (name, value) in [
                (&config.tenant.user_header, &identity.user),
                (&config.tenant.org_header, &identity.org),
            ] {
                match value {
                    Some(value) => upstream_headers.push((name.clone(), value.clone())),
                    None => removed_upstream_headers.push(name.clone()),
                }
            }
            claims = (identity.user, identity.org);
            Some(identity.tenant)
        }
        Ok(Identified::Header(tenant)) => tenant,
        Err(problem) => return refuse(problem),
    };
    let mut idempotency = None;
    let mut applied = Applied::default();
    let mut keys = KeyHashes::default();
    let mut capped = false;
    if let Some(tenant) = tenant.as_ref() {
        upstream_headers.push((config.tenant.header.clone(), tenant.to_string()));
        let Some(settings) = config.tenant_settings(tenant) else {
            let problem = Problem::new(
                ProblemKind::UnknownTenant,
                format!("tenant `{tenant}` is not configured on this gateway"),
            )
            .for_tenant(tenant);
            return refuse(problem);
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
            return refuse(problem);
        }
        match pending_idempotency(tenant, settings.idempotency.as_ref(), method, request) {
            Ok(pending) => idempotency = pending,
            Err(problem) => return refuse(problem),
        }
        applied = settings.applied(method, &path.path);
        let identity = Claims {
            user: claims.0.as_deref(),
            org: claims.1.as_deref(),
            token: config.jwt.is_some(),
        };
        match key_hashes(config, settings, applied, request, &identity) {
            Ok(hashes) => keys = hashes,
            Err(problem) => return refuse(problem.for_tenant(tenant)),
        }
        capped = !settings.in_flight.is_empty();
    }
    Ok(Screened {
        correlation_id,
        tenant,
        upstream_headers,
        removed_upstream_headers,
        response_headers,
        idempotency,
        applied,
        keys,
        method: overridden,
        now_unix_ns: host.now_unix_ns,
        token: in_flight_token(host),
        capped,
    })
}

/// The method every rule sees when the request carries a method override:
/// refused (400, the default), or honoured (the override's method). `None`
/// without one, or where no rule looks at the method.
fn method_override(
    config: &CompiledConfig,
    request: &RequestView<'_>,
) -> Result<Option<String>, Problem> {
    let mut seen: Option<(&str, &[u8])> = None;
    for (name, value) in METHOD_OVERRIDE_HEADERS
        .iter()
        .zip(request.method_overrides)
        .filter_map(|(name, value)| Some((*name, trim_ows(value?))))
    {
        if let Some((first, earlier)) = seen {
            if earlier != value {
                return Err(Problem::new(
                    ProblemKind::MethodOverrideRefused,
                    format!("`{first}` and `{name}` name different methods: send one method"),
                ));
            }
        }
        seen = Some((name, value));
    }
    let Some((name, value)) = seen else {
        return Ok(None);
    };
    match config.method_override {
        MethodOverride::Reject => Err(Problem::new(
            ProblemKind::MethodOverrideRefused,
            format!("`{name}` is not accepted here: send the request with its real method"),
        )),
        MethodOverride::Honor => {
            let method = method_text(value).to_ascii_uppercase();
            if method.is_empty() {
                return Err(Problem::new(
                    ProblemKind::MethodOverrideRefused,
                    format!("`{name}` must name an HTTP method"),
                ));
            }
            Ok(Some(method))
        }
    }
}

/// The token's user and org claims, when a token identified the caller.
struct Claims<'a> {
    user: Option<&'a str>,
    org: Option<&'a str>,
    /// A token identifies callers here (user and org come from its claims).
    token: bool,
}

/// A token unique to this request among those in flight: the host's
/// random bytes and the time.
fn in_flight_token(host: &HostInputs) -> u64 {
    let mut bytes = [0u8; 8];
    for (slot, byte) in bytes.iter_mut().zip(host.random.iter()) {
        *slot = *byte;
    }
    u64::from_le_bytes(bytes) ^ host.now_unix_ns.rotate_left(17)
}

/// The longest key value a limit counts by (longer is refused, 400).
pub const MAX_KEY_VALUE: usize = 256;

/// The hashes of the key values the applied limits count by; a missing key
/// whose limit says `on_missing: reject`, or a malformed value, is refused.
fn key_hashes(
    config: &CompiledConfig,
    settings: &CompiledTenant,
    applied: Applied,
    request: &RequestView<'_>,
    claims: &Claims<'_>,
) -> Result<KeyHashes, Problem> {
    let mut keys = KeyHashes::default();
    let counted = settings
        .applied_policies(applied)
        .map(|policy| (policy.key, policy.on_missing, policy.name.as_str()))
        .chain(
            settings
                .in_flight
                .iter()
                .map(|cap| (cap.key, cap.on_missing, cap.name.as_str())),
        );
    for (kind, on_missing, name) in counted {
        if kind == KeyKind::Tenant || keys.get(kind).is_some() {
            continue;
        }
        let (value, source) = key_value(config, kind, request, claims);
        match value.map(trim_ows).filter(|value| !value.is_empty()) {
            Some(value) => {
                if value.len() > MAX_KEY_VALUE || headers::printable_ascii(value).is_none() {
                    return Err(Problem::new(
                        ProblemKind::InvalidRateLimitKey,
                        format!(
                            "{source} (what limit `{name}` counts by) must be at most {MAX_KEY_VALUE} visible ASCII characters",
                        ),
                    ));
                }
                keys.set(kind, value);
            }
            None if on_missing == OnMissingKey::Reject => {
                return Err(missing_key(name, &source));
            }
            None => {}
        }
    }
    Ok(keys)
}

/// Where `kind` comes from for this request, and how to name it.
fn key_value<'r>(
    config: &'r CompiledConfig,
    kind: KeyKind,
    request: &RequestView<'r>,
    claims: &Claims<'r>,
) -> (Option<&'r [u8]>, String) {
    let header = |name: &str| {
        config
            .key_headers
            .iter()
            .position(|known| known == name)
            .and_then(|index| request.key_headers.get(index).copied().flatten())
    };
    match kind {
        KeyKind::Tenant => (None, String::new()),
        KeyKind::User if claims.token => (
            claims.user.map(str::as_bytes),
            "the token's user claim".to_owned(),
        ),
        KeyKind::Org if claims.token => (
            claims.org.map(str::as_bytes),
            "the token's org claim".to_owned(),
        ),
        KeyKind::User => (
            header(&config.tenant.user_header),
            format!("the `{}` header", config.tenant.user_header),
        ),
        KeyKind::Org => (
            header(&config.tenant.org_header),
            format!("the `{}` header", config.tenant.org_header),
        ),
        KeyKind::Header(index) => {
            let name = config
                .key_headers
                .get(usize::from(index))
                .map(String::as_str)
                .unwrap_or_default();
            (
                request
                    .key_headers
                    .get(usize::from(index))
                    .copied()
                    .flatten(),
                format!("the `{name}` header"),
            )
        }
    }
}

fn missing_key(name: &str, source: &str) -> Problem {
    Problem::new(
        ProblemKind::RateLimitKeyMissing,
        format!("limit `{name}` counts requests per {source}: send it"),
    )
}

/// The decision, given the answer to [`Screened::rate_limit_op`] (`None` when
/// no limit applies).
pub fn admit(
    config: &CompiledConfig,
    screened: Screened,
    checked: Option<Result<Admitted, CheckError>>,
) -> Evaluation {
    let Screened {
        correlation_id,
        tenant,
        upstream_headers,
        removed_upstream_headers,
        mut response_headers,
        idempotency,
        applied,
        keys,
        now_unix_ns,
        token,
        ..
    } = screened;
    let mut outcome = Outcome::Allowed;
    let mut log = None;
    let mut quota_use = Vec::new();
    let entered = matches!(
        checked,
        Some(Ok(Admitted {
            in_flight: Entered::Held,
            ..
        }))
    );
    let limited = tenant
        .as_deref()
        .and_then(|tenant| Some((tenant, config.tenant_settings(tenant)?)));
    if let (Some((tenant, settings)), Some(checked)) = (limited, checked) {
        let mode = settings.mode;
        match checked {
            Ok(Admitted {
                in_flight: Entered::Full { cap, max },
                ..
            }) if mode == Mode::Enforce => {
                let problem = Problem::new(
                    ProblemKind::Concurrency,
                    format!(
                        "tenant `{tenant}` has {max} requests in flight (cap `{cap}`); retry when one is done"
                    ),
                )
                .for_tenant(tenant);
                return reject(config, problem, correlation_id, response_headers, Some(1));
            }
            Ok(Admitted {
                in_flight: Entered::Full { .. },
                ..
            }) => {
                outcome = Outcome::ShadowOverLimit;
            }
            Ok(admitted) => {
                if admitted.allowed && config.tenants.contains_key(tenant) {
                    quota_use = quotas_used(settings, applied, &admitted);
                }
                let rejects = !admitted.allowed && mode == Mode::Enforce;
                if rejects || config.headers.rate_limit == RateLimitHeaders::Always {
                    response_headers.extend(rate_limit_headers(
                        settings,
                        applied,
                        &admitted,
                        now_unix_ns,
                    ));
                }
                if !admitted.allowed {
                    if mode == Mode::Shadow {
                        outcome = Outcome::ShadowOverLimit;
                    } else {
                        let refusing = admitted.headline.and_then(|(position, _)| {
                            settings.applied_policies(applied).nth(position)
                        });
                        let problem = Problem::new(
                            ProblemKind::RateLimited,
                            refused_detail(tenant, refusing, admitted.retry_after_seconds),
                        )
                        .for_tenant(tenant);
                        return reject(
                            config,
                            problem,
                            correlation_id,
                            response_headers,
                            Some(admitted.retry_after_seconds.max(1)),
                        );
                    }
                }
            }
            Err(err) => {
                let message = format!("rate limit for tenant `{tenant}` not checked: {err}");
                match (config.store.on_exhausted, mode) {
                    (OnExhausted::Allow, _) | (_, Mode::Shadow) => {
                        outcome = Outcome::AllowedWithoutLimit;
                        log = Some(message);
                    }
                    (OnExhausted::Reject, Mode::Enforce) => {
                        let kind = match err {
                            CheckError::KeysExhausted => ProblemKind::RateLimitKeysExhausted,
                            CheckError::Contention { .. } | CheckError::Store(_) => {
                                ProblemKind::RateLimitUnavailable
                            }
                        };
                        let problem = Problem::new(kind, rate_limit_unavailable_detail(&err))
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

    if !config.correlation.echo {
        response_headers.retain(|(name, _)| name != &config.correlation.header);
    }
    let spent = spent(
        config,
        tenant.as_ref(),
        applied,
        keys,
        now_unix_ns,
        token,
        entered,
    );
    Evaluation {
        tenant: tenant.as_ref().map(|tenant| tenant.to_string()),
        decision: Decision::Forward(Forward {
            correlation_id,
            tenant,
            upstream_headers,
            removed_upstream_headers,
            response_headers,
            idempotency,
            spent,
            quota_use,
        }),
        outcome,
        log,
    }
}

/// The use of every calendar quota among `applied` (what each had left
/// after this request, subtracted from its requests).
fn quotas_used(
    settings: &crate::config::CompiledTenant,
    applied: Applied,
    admitted: &Admitted,
) -> Vec<QuotaUse> {
    settings
        .applied_policies(applied)
        .zip(admitted.remaining.iter())
        .filter_map(|(policy, remaining)| match policy.window {
            crate::config::Window::Calendar { requests, .. } if *remaining != u64::MAX => {
                Some(QuotaUse {
                    limit: policy.name.clone(),
                    used: requests.saturating_sub(*remaining),
                    requests,
                })
            }
            _ => None,
        })
        .collect()
}

/// What a forwarded request must settle later, if anything (built only
/// then: most requests hold no slot and report no usage).
fn spent(
    config: &CompiledConfig,
    tenant: Option<&TenantId>,
    applied: Applied,
    keys: KeyHashes,
    now_unix_ns: u64,
    token: u64,
    entered: bool,
) -> Option<Box<Spent>> {
    let tenant = tenant?;
    let reports_usage = !config.usage_headers.is_empty()
        && config
            .tenant_settings(tenant)?
            .applied_policies(applied)
            .any(|policy| policy.usage.is_some());
    (entered || reports_usage).then(|| {
        Box::new(Spent {
            admission: Admission {
                tenant: tenant.clone(),
                applied,
                keys,
                now_unix_ns,
                token,
            },
            entered,
            reports_usage,
        })
    })
}

/// Why a request was refused, naming the limit that refused it.
fn refused_detail(tenant: &str, policy: Option<&LimitPolicy>, retry_after: u64) -> String {
    let Some(policy) = policy else {
        return format!("tenant `{tenant}` is over its limit; retry in {retry_after} s");
    };
    let window = match policy.window {
        crate::config::Window::Rate(rate) => {
            format!("{} requests per {} s", rate.requests, rate.per_seconds)
        }
        crate::config::Window::Calendar { period, requests } => {
            let period = match period {
                crate::config::Calendar::Day => "day",
                crate::config::Calendar::Week => "week",
                crate::config::Calendar::Month => "month",
            };
            format!("{requests} requests per calendar {period} (UTC)")
        }
    };
    format!(
        "tenant `{tenant}` exceeded {window} on limit `{}`; retry in {retry_after} s",
        policy.name
    )
}

fn pending_idempotency(
    tenant: &TenantId,
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
        tenant: tenant.clone(),
        key,
        settings: settings.clone(),
    }))
}

fn rate_limit_unavailable_detail(err: &CheckError) -> String {
    match err {
        CheckError::Contention { .. } => {
            "the rate-limit state is under heavy contention; retry shortly".to_owned()
        }
        CheckError::KeysExhausted => {
            "too many keys of this tenant are counted at once; retry shortly".to_owned()
        }
        CheckError::Store(_) => "the rate-limit state could not be read; retry shortly".to_owned(),
    }
}

/// Where the tenant came from.
enum Identified {
    Token(Identity),
    /// From the tenant header (trusted by config), or none where none is required.
    Header(Option<TenantId>),
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
) -> Result<Option<TenantId>, Problem> {
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
        Some(Ok(value)) => match TenantId::parse(value) {
            Some(tenant) => Ok(Some(tenant)),
            None => Err(invalid_tenant(config)),
        },
        // Non-UTF-8 included: the tenant names storage keys and upstream headers.
        Some(Err(_)) => Err(invalid_tenant(config)),
    }
}

/// A rejection from [`screen`] (boxed: it is the rare, large side of the result).
fn rejected(
    config: &CompiledConfig,
    problem: Problem,
    correlation_id: String,
    headers: Headers,
    retry_after: Option<u64>,
) -> Box<Evaluation> {
    Box::new(reject(
        config,
        problem,
        correlation_id,
        headers,
        retry_after,
    ))
}

/// The tenant header names no valid tenant (non-UTF-8 included: the tenant
/// names storage keys and upstream headers).
fn invalid_tenant(config: &CompiledConfig) -> Problem {
    Problem::new(
        ProblemKind::InvalidTenant,
        format!(
            "the `{}` header must be {}",
            config.tenant.header,
            crate::tenant::RULE
        ),
    )
}
