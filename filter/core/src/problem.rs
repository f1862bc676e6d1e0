//! RFC 9457 problem details: the one shape every rejection takes.

use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// Every kind of rejection the filter produces, with its status and title.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    TenantRequired,
    InvalidTenant,
    UnknownTenant,
    RateLimited,
    RateLimitUnavailable,
}

impl ProblemKind {
    pub fn status(self) -> u32 {
        match self {
            Self::TenantRequired | Self::InvalidTenant => 400,
            Self::UnknownTenant => 403,
            Self::RateLimited => 429,
            Self::RateLimitUnavailable => 503,
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Self::TenantRequired => "tenant-required",
            Self::InvalidTenant => "invalid-tenant",
            Self::UnknownTenant => "unknown-tenant",
            Self::RateLimited => "rate-limited",
            Self::RateLimitUnavailable => "rate-limit-unavailable",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::TenantRequired => "Tenant required",
            Self::InvalidTenant => "Invalid tenant",
            Self::UnknownTenant => "Unknown tenant",
            Self::RateLimited => "Too many requests",
            Self::RateLimitUnavailable => "Rate limit unavailable",
        }
    }
}

/// A rejection ready to be sent as a local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub detail: String,
    pub tenant: Option<String>,
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
        }
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
