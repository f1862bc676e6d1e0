//! The Kong Admin API client: where it listens ([`AdminUrl`]), one HTTP/1.1
//! exchange per call, retries with backoff and `Retry-After`
//! ([`RetryPolicy`]), and the human part of Kong's error bodies.

use std::fmt::Write as _;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;

use super::KongDeliveryError;
use crate::text::bounded;

/// Retries for the Admin API: exponential backoff with jitter on transport
/// errors and 5xx, `Retry-After` (capped) on 429; other 4xx are final.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    /// Upper bound for an honoured `Retry-After`.
    pub max_retry_after: Duration,
    /// Per-request timeout (connect + response).
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Where the Admin API listens: `http://host:port[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUrl {
    pub host: String,
    pub port: u16,
    /// Path prefix without the trailing slash (empty for the root).
    pub prefix: String,
}

impl AdminUrl {
    /// Parses an `http://` URL (the Admin API is expected on a trusted,
    /// usually loopback, listener; TLS is not supported by this client).
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("`{url}`: the Kong Admin URL must start with http:// (https is not supported)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("`{url}`: invalid port `{port}`"))?;
                (host, port)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{url}`: no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    pub(super) fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// An answer of the Admin API.
pub(super) struct Reply {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

/// The Admin API of one Kong: where it listens and how calls are retried.
pub(super) struct AdminApi<'a> {
    pub url: &'a AdminUrl,
    pub retry: &'a RetryPolicy,
}

impl AdminApi<'_> {
    /// One Admin API call with the retry policy.
    pub(super) async fn request(
        &self,
        method: &'static str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Reply, KongDeliveryError> {
        let policy = &self.retry;
        let mut backoff = policy.initial;
        let mut last = String::new();
        let attempts = policy.attempts.max(1);
        for attempt in 1..=attempts {
            let delay = match self.send(method, path, body.clone()).await {
                Ok(reply) if (200..300).contains(&reply.status) || reply.status == 304 => {
                    return Ok(reply)
                }
                Ok(reply) if reply.status == 429 => {
                    last = format!("429: {}", bounded(&kong_message(&reply.body)));
                    reply
                        .retry_after
                        .map(|d| d.min(policy.max_retry_after))
                        .unwrap_or(backoff)
                }
                Ok(reply) if reply.status >= 500 => {
                    last = format!("{}: {}", reply.status, bounded(&kong_message(&reply.body)));
                    backoff
                }
                Ok(reply) => {
                    return Err(KongDeliveryError::Rejected {
                        method,
                        path: path.to_owned(),
                        status: reply.status,
                        message: bounded(&kong_message(&reply.body)).into_owned(),
                    })
                }
                Err(error) => {
                    last = bounded(&error).into_owned();
                    backoff
                }
            };
            if attempt < attempts {
                tracing::warn!(method, path, attempt, error = %last, retry_in_ms = delay.as_millis() as u64, "Kong Admin API call failed; retrying");
                tokio::time::sleep(jitter(delay)).await;
                backoff = (backoff * 2).min(policy.max);
            }
        }
        Err(KongDeliveryError::Unavailable {
            method,
            path: path.to_owned(),
            attempts,
            last,
        })
    }

    /// One HTTP/1.1 exchange (new connection each time: syncs are rare).
    async fn send(&self, method: &str, path: &str, body: Vec<u8>) -> Result<Reply, String> {
        let exchange = async {
            let stream = tokio::net::TcpStream::connect((self.url.host.as_str(), self.url.port))
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.url.authority()))?;
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP handshake with {}: {e}", self.url.authority()))?;
            let driver = tokio::spawn(connection);
            let request = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, self.url.authority())
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(hyper::header::ACCEPT, "application/json")
                .header(
                    hyper::header::USER_AGENT,
                    concat!("tenant-guard-sidecar/", env!("CARGO_PKG_VERSION")),
                )
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| format!("cannot build the request: {e}"))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("{method} {path}: {e}"))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64);
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the response to {method} {path}: {e}"))?
                .to_bytes()
                .to_vec();
            driver.abort();
            Ok(Reply {
                status,
                retry_after,
                body,
            })
        };
        match tokio::time::timeout(self.retry.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "{method} {path}: no answer within {:?}",
                self.retry.request_timeout
            )),
        }
    }
}

/// Half fixed, half random ("equal jitter").
fn jitter(delay: Duration) -> Duration {
    let half = delay / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Percent-encodes a path segment (names are `[A-Za-z0-9._~-]` in practice).
pub(super) fn path_segment(segment: &str) -> String {
    let mut out = String::new();
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The human part of a Kong error body: `name: message` of Kong's
/// `{code, name, message, fields}` (plus the flattened entity errors of
/// `/config?flatten_errors=1`), or the raw body when it is not Kong's JSON.
pub fn kong_message(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        return if text.is_empty() {
            "(empty body)".to_owned()
        } else {
            text.chars().take(500).collect()
        };
    };
    let mut parts = Vec::new();
    if let Some(name) = value.get("name").and_then(Value::as_str) {
        parts.push(name.to_owned());
    }
    if let Some(message) = value.get("message").and_then(Value::as_str) {
        parts.push(message.to_owned());
    }
    let mut text = parts.join(": ");
    if let Some(entities) = value.get("flattened_errors").and_then(Value::as_array) {
        for entity in entities {
            let kind = entity
                .get("entity_type")
                .and_then(Value::as_str)
                .unwrap_or("entity");
            let name = entity
                .get("entity_name")
                .and_then(Value::as_str)
                .unwrap_or("?");
            for error in entity
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let field = error
                    .get("field")
                    .and_then(Value::as_str)
                    .unwrap_or("@entity");
                let message = error.get("message").and_then(Value::as_str).unwrap_or("");
                let _ = write!(text, "; {kind} {name}: {field}: {message}");
            }
        }
    }
    if text.is_empty() {
        value.to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn admin_urls() {
        let url = AdminUrl::parse("http://127.0.0.1:8001").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.prefix.as_str()),
            ("127.0.0.1", 8001, "")
        );
        let url = AdminUrl::parse("http://kong/admin/").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.prefix.as_str()),
            ("kong", 80, "/admin")
        );
        let url = AdminUrl::parse("http://[::1]:8001").unwrap();
        assert_eq!(
            (url.host.as_str(), url.authority()),
            ("::1", "[::1]:8001".to_owned())
        );
        assert!(AdminUrl::parse("https://kong:8444").is_err());
    }

    #[test]
    fn kong_error_messages() {
        let body = br#"{"code":14,"name":"invalid declarative configuration","message":"declarative config is invalid: {}","flattened_errors":[{"entity_type":"filter_chain","entity_name":"tenant-guard","errors":[{"field":"filters.1.config","message":"property version is required","type":"field"}]}],"fields":{}}"#;
        let text = kong_message(body);
        assert!(
            text.starts_with("invalid declarative configuration: declarative config is invalid")
        );
        assert!(text
            .contains("filter_chain tenant-guard: filters.1.config: property version is required"));
        assert_eq!(kong_message(b"oops"), "oops");
    }
}
