//! Reply building: every rejection as a problem+json local reply carrying the
//! correlation id, and the RateLimit headers.

use crate::config::{Applied, CompiledConfig, CompiledTenant, Window};
use crate::limits::{calendar, Admitted};
use crate::problem::{Problem, CONTENT_TYPE};

use super::decision::{Decision, Evaluation, Headers, LocalReply, Outcome};

pub(super) fn reject(
    config: &CompiledConfig,
    problem: Problem,
    correlation_id: String,
    headers: Headers,
    retry_after: Option<u64>,
) -> Evaluation {
    let kind = problem.kind;
    Evaluation {
        outcome: Outcome::Rejected(kind),
        tenant: problem.tenant.clone(),
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
pub(super) fn local_reply(
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

/// `RateLimit-Policy` (every applied limit) and `RateLimit` (the one the
/// decision reports: the closest to exhaustion, or the refusing one)
/// (draft-ietf-httpapi-ratelimit-headers). A calendar quota's `w` is the
/// length of its current window.
pub fn rate_limit_headers(
    settings: &CompiledTenant,
    applied: Applied,
    admitted: &Admitted,
    now_unix_ns: u64,
) -> impl Iterator<Item = (String, String)> {
    let mut policies = String::new();
    let mut headline = None;
    for (position, policy) in settings.applied_policies(applied).enumerate() {
        if !policies.is_empty() {
            policies.push_str(", ");
        }
        policies.push_str(&policy.policy_header);
        if let Window::Calendar { period, .. } = policy.window {
            let span = calendar::span(period, now_unix_ns / 1_000_000_000);
            policies.push_str(&format!(";w={}", span.length()));
        }
        if let Some((at, verdict)) = admitted.headline {
            if at == position {
                headline = Some((policy, verdict));
            }
        }
    }
    let policy = (!policies.is_empty()).then(|| ("ratelimit-policy".to_owned(), policies));
    let current = headline.map(|(policy, verdict)| {
        (
            "ratelimit".to_owned(),
            format!(
                "\"{}\";r={};t={}",
                policy.name, verdict.remaining, verdict.reset_seconds
            ),
        )
    });
    policy.into_iter().chain(current)
}
