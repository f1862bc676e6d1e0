//! Reply building: every rejection as a problem+json local reply carrying the
//! correlation id, and the RateLimit headers.

use crate::config::{CompiledConfig, LimitPolicy};
use crate::problem::{Problem, CONTENT_TYPE};
use crate::ratelimit::Verdict;

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
