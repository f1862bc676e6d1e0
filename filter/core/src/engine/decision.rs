//! What the policy hands the glue: the request view it reads, the decision
//! types (forward with headers, or a local reply) and the counted outcome.

use crate::idempotency::IdempotencyConfig;
use crate::problem::ProblemKind;

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
    /// `X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`
    /// (read only where a rule looks at the method).
    pub method_overrides: [Option<&'a [u8]>; 3],
    /// The values of `CompiledConfig::key_headers`, in its order (what
    /// per-key limits count by; empty where no limit counts by a header).
    pub key_headers: &'a [Option<&'a [u8]>],
}

/// The method-override headers, in the order of [`RequestView::method_overrides`].
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

impl RequestView<'_> {
    /// The method as text; a method that is not an ASCII token matches no rule.
    pub fn method(&self) -> &str {
        method_text(self.method)
    }
}

/// A method as text: an HTTP token, else `""` (which matches no rule).
pub fn method_text(method: &[u8]) -> &str {
    let token = !method.is_empty()
        && method.len() <= 16
        && method
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b));
    if token {
        std::str::from_utf8(method).unwrap_or_default()
    } else {
        ""
    }
}

/// What the host provides that the policy may not produce itself.
#[derive(Debug, Clone, Copy)]
pub struct HostInputs {
    pub now_unix_ns: u64,
    pub random: [u8; 10],
}

/// Counted outcome of a request (the glue maps these to metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    pub tenant: Option<crate::tenant::TenantId>,
    /// Set (replacing any incoming value) on the request sent upstream.
    pub upstream_headers: Headers,
    /// Removed from the request sent upstream (identity headers the token did not vouch for).
    pub removed_upstream_headers: Vec<String>,
    /// Set (replacing, never appending) on the response to the client.
    pub response_headers: Headers,
    /// The request takes part in Idempotency-Key handling once its body is read.
    pub idempotency: Option<PendingIdempotency>,
    /// What the request holds or owes after it is forwarded: in-flight
    /// slots to give back at its end, usage to take when its response
    /// reports it (`None`: neither).
    pub spent: Option<Box<Spent>>,
    /// How much of each calendar quota the tenant (a configured one) has
    /// used, for the quota gauges; empty for most requests.
    pub quota_use: Vec<QuotaUse>,
}

/// One quota's use as of this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaUse {
    pub limit: String,
    pub used: u64,
    pub requests: u64,
}

/// A forwarded request's limits, kept for its response and its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spent {
    pub admission: crate::limits::Admission,
    /// It holds slots of its tenant's in-flight caps.
    pub entered: bool,
    /// Some of its limits take usage its response reports.
    pub reports_usage: bool,
}

/// An idempotent request waiting for its body (the fingerprint needs it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingIdempotency {
    pub tenant: crate::tenant::TenantId,
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
    /// The tenant the request concerns, once known (counted under it).
    pub tenant: Option<String>,
    /// Something an operator should see in the gateway log.
    pub log: Option<String>,
}
