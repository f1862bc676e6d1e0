//! The request decision: correlation id → tenant → rate limit, as one pure
//! function of the compiled config, the request, time, randomness and the store.
//! The host glue applies the [`Decision`]; it decides nothing itself.

use crate::config::{CompiledConfig, LimitPolicy, Mode, OnExhausted};
use crate::correlation;
use crate::problem::{Problem, ProblemKind, CONTENT_TYPE};
use crate::ratelimit::{self, CheckError, Verdict};
use crate::store::SharedStore;

/// Header the upstream receives with the serving config revision.
pub const REVISION_HEADER: &str = "x-tenant-guard-revision";

/// The parts of a request the policy reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// `:path` including any query string.
    pub path: &'a str,
    pub tenant_header: Option<&'a str>,
    pub correlation_header: Option<&'a str>,
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
    /// Set (replacing, never appending) on the response to the client.
    pub response_headers: Headers,
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

    let tenant = match resolve_tenant(config, request) {
        Ok(tenant) => tenant,
        Err(problem) => return reject(config, problem, correlation_id, response_headers, None),
    };

    let mut upstream_headers = vec![
        (config.correlation.header.clone(), correlation_id.clone()),
        (REVISION_HEADER.to_owned(), config.revision.clone()),
    ];
    let mut outcome = Outcome::Allowed;
    let mut log = None;

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
        let path = request.path.split('?').next().unwrap_or_default();
        if let Some(policy) = settings.policy_for(request.method, path) {
            let key = ratelimit::state_key(tenant, &policy.name);
            match ratelimit::check_and_consume(
                store,
                &key,
                &policy.rate,
                host.now_unix_ns,
                &config.store,
            ) {
                Ok(verdict) => {
                    response_headers.extend(rate_limit_headers(policy, &verdict));
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
            response_headers,
        }),
        outcome,
        log,
    }
}

fn rate_limit_unavailable_detail(err: &CheckError) -> String {
    match err {
        CheckError::Contention { .. } => {
            "the rate-limit state is under heavy contention; retry shortly".to_owned()
        }
        CheckError::Store(_) => "the rate-limit state could not be read; retry shortly".to_owned(),
    }
}

fn resolve_tenant(
    config: &CompiledConfig,
    request: &RequestView<'_>,
) -> Result<Option<String>, Problem> {
    match request.tenant_header.map(str::trim) {
        None | Some("") if config.tenant.required => Err(Problem::new(
            ProblemKind::TenantRequired,
            format!(
                "this API needs a tenant: send the `{}` header",
                config.tenant.header
            ),
        )),
        None | Some("") => Ok(None),
        Some(value) if crate::config::is_valid_tenant_id(value) => Ok(Some(value.to_owned())),
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
    mut headers: Headers,
    retry_after: Option<u64>,
) -> Evaluation {
    headers.push(("content-type".to_owned(), CONTENT_TYPE.to_owned()));
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
    Evaluation {
        outcome: Outcome::Rejected(problem.kind),
        decision: Decision::Reject(LocalReply {
            status: problem.kind.status(),
            body: problem.body(&correlation_id),
            headers,
            correlation_id,
        }),
        log: None,
    }
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub fn rate_limit_headers(policy: &LimitPolicy, verdict: &Verdict) -> [(String, String); 2] {
    let rate = &policy.rate;
    let mut policy_value = format!(
        "\"{}\";q={};w={}",
        policy.name, rate.requests, rate.per_seconds
    );
    if rate.burst != rate.requests {
        policy_value.push_str(&format!(";burst={}", rate.burst));
    }
    [
        ("ratelimit-policy".to_owned(), policy_value),
        (
            "ratelimit".to_owned(),
            format!(
                "\"{}\";r={};t={}",
                policy.name, verdict.remaining, verdict.reset_seconds
            ),
        ),
    ]
}
