//! RFC 9457 problem details: the one shape every rejection takes.

use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// Every kind of rejection the filter produces, with its status and title.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    TenantRequired,
    InvalidTenant,
    InvalidPath,
    UnknownTenant,
    Unauthenticated,
    TenantMismatch,
    RateLimited,
    RateLimitUnavailable,
    PreconditionRequired,
    IdempotencyKeyMissing,
    IdempotencyKeyMalformed,
    IdempotencyKeyReused,
    IdempotencyInFlight,
    IdempotencyNotReplayable,
    IdempotencyUnavailable,
    BodyTooLarge,
    RateLimitKeyMissing,
    InvalidRateLimitKey,
    RateLimitKeysExhausted,
    MethodOverrideRefused,
    /// A `max_in_flight` cap is full.
    Concurrency,
}

impl ProblemKind {
    /// Every kind, in declaration order.
    pub const ALL: [ProblemKind; 21] = [
        Self::TenantRequired,
        Self::InvalidTenant,
        Self::InvalidPath,
        Self::UnknownTenant,
        Self::Unauthenticated,
        Self::TenantMismatch,
        Self::RateLimited,
        Self::RateLimitUnavailable,
        Self::PreconditionRequired,
        Self::IdempotencyKeyMissing,
        Self::IdempotencyKeyMalformed,
        Self::IdempotencyKeyReused,
        Self::IdempotencyInFlight,
        Self::IdempotencyNotReplayable,
        Self::IdempotencyUnavailable,
        Self::BodyTooLarge,
        Self::RateLimitKeyMissing,
        Self::InvalidRateLimitKey,
        Self::RateLimitKeysExhausted,
        Self::MethodOverrideRefused,
        Self::Concurrency,
    ];

    pub fn status(self) -> u32 {
        match self {
            Self::TenantRequired
            | Self::InvalidTenant
            | Self::InvalidPath
            | Self::IdempotencyKeyMissing
            | Self::IdempotencyKeyMalformed
            | Self::RateLimitKeyMissing
            | Self::InvalidRateLimitKey
            | Self::MethodOverrideRefused => 400,
            Self::Unauthenticated => 401,
            Self::UnknownTenant | Self::TenantMismatch => 403,
            Self::IdempotencyInFlight | Self::IdempotencyNotReplayable => 409,
            Self::BodyTooLarge => 413,
            Self::IdempotencyKeyReused => 422,
            Self::PreconditionRequired => 428,
            Self::RateLimited | Self::Concurrency => 429,
            Self::RateLimitUnavailable
            | Self::IdempotencyUnavailable
            | Self::RateLimitKeysExhausted => 503,
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Self::TenantRequired => "tenant-required",
            Self::InvalidTenant => "invalid-tenant",
            Self::InvalidPath => "invalid-path",
            Self::UnknownTenant => "unknown-tenant",
            Self::Unauthenticated => "unauthenticated",
            Self::TenantMismatch => "tenant-mismatch",
            Self::RateLimited => "rate-limited",
            Self::RateLimitUnavailable => "rate-limit-unavailable",
            Self::PreconditionRequired => "precondition-required",
            Self::IdempotencyKeyMissing => "idempotency-key-missing",
            Self::IdempotencyKeyMalformed => "idempotency-key-malformed",
            Self::IdempotencyKeyReused => "idempotency-key-reused",
            Self::IdempotencyInFlight => "idempotency-key-in-flight",
            Self::IdempotencyNotReplayable => "idempotency-response-not-replayable",
            Self::IdempotencyUnavailable => "idempotency-unavailable",
            Self::BodyTooLarge => "body-too-large",
            Self::RateLimitKeyMissing => "rate-limit-key-missing",
            Self::InvalidRateLimitKey => "invalid-rate-limit-key",
            Self::RateLimitKeysExhausted => "rate-limit-keys-exhausted",
            Self::MethodOverrideRefused => "method-override-refused",
            Self::Concurrency => "concurrency",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::TenantRequired => "Tenant required",
            Self::InvalidTenant => "Invalid tenant",
            Self::InvalidPath => "Invalid request path",
            Self::UnknownTenant => "Unknown tenant",
            Self::Unauthenticated => "Authentication required",
            Self::TenantMismatch => "Tenant does not match the token",
            Self::RateLimited => "Too many requests",
            Self::RateLimitUnavailable => "Rate limit unavailable",
            Self::PreconditionRequired => "Precondition required",
            Self::IdempotencyKeyMissing => "Idempotency-Key required",
            Self::IdempotencyKeyMalformed => "Malformed Idempotency-Key",
            Self::IdempotencyKeyReused => "Idempotency-Key reused for a different request",
            Self::IdempotencyInFlight => "Request with this Idempotency-Key in progress",
            Self::IdempotencyNotReplayable => "Stored response cannot be replayed",
            Self::IdempotencyUnavailable => "Idempotency store unavailable",
            Self::BodyTooLarge => "Request body too large",
            Self::RateLimitKeyMissing => "Rate-limit key required",
            Self::InvalidRateLimitKey => "Invalid rate-limit key",
            Self::RateLimitKeysExhausted => "Rate-limit keys exhausted",
            Self::MethodOverrideRefused => "Method override refused",
            Self::Concurrency => "Too many requests in flight",
        }
    }
}

/// A rejection ready to be sent as a local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub detail: String,
    pub tenant: Option<String>,
    /// `WWW-Authenticate` value for 401s.
    pub challenge: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u32,
    detail: &'a str,
    correlation_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
}

impl Problem {
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            tenant: None,
            challenge: None,
        }
    }

    pub fn with_challenge(mut self, challenge: String) -> Self {
        self.challenge = Some(challenge);
        self
    }

    pub fn for_tenant(mut self, tenant: &str) -> Self {
        self.tenant = Some(tenant.to_owned());
        self
    }

    pub fn type_uri(&self) -> String {
        format!("urn:tenant-guard:problem:{}", self.kind.slug())
    }

    /// The JSON body, carrying the correlation id.
    pub fn body(&self, correlation_id: &str) -> Vec<u8> {
        let body = Body {
            kind: self.type_uri(),
            title: self.kind.title(),
            status: self.kind.status(),
            detail: &self.detail,
            correlation_id,
            tenant: self.tenant.as_deref(),
        };
        // Serializing plain strings and integers cannot fail; keep a valid body regardless.
        serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec())
    }
}
