//! Assertions on what a client received from a gateway running the filter: an
//! RFC 9457 problem, or a fresh (not replayed) answer of the test
//! [`Backend`](crate::backend::Backend). The same checks serve Envoy and Kong's
//! engine (which appends `\n` to local-response bodies: still one JSON document).

use serde_json::Value;

use crate::backend::MARKER;
use crate::http::Response;

const CORRELATION: &str = "x-correlation-id";
const REPLAYED: &str = "idempotent-replayed";
const PROBLEM_JSON: &str = "application/problem+json";
const PROBLEM: &str = "urn:tenant-guard:problem:";

/// Asserts an RFC 9457 problem response of `status` and `slug` (type, status,
/// correlation id equal to the echoed header, not marked replayed); returns its body.
pub fn assert_problem(response: &Response, status: u16, slug: &str) -> Value {
    assert_eq!(
        response.status,
        status,
        "expected {status} {slug}; headers {:?} body {}",
        response.headers,
        response.text()
    );
    let content_type = response.header_once("content-type");
    assert!(
        content_type.starts_with(PROBLEM_JSON),
        "content-type {content_type:?} for {slug}"
    );
    let body = response.json();
    assert_eq!(
        body.get("type").and_then(Value::as_str),
        Some(format!("{PROBLEM}{slug}").as_str()),
        "problem body {body}"
    );
    assert_eq!(
        body.get("status").and_then(Value::as_u64),
        Some(u64::from(status)),
        "problem body {body}"
    );
    let echoed = response.header_once(CORRELATION);
    assert_eq!(
        body.get("correlation_id").and_then(Value::as_str),
        Some(echoed),
        "problem body {body}"
    );
    assert!(
        response.header(REPLAYED).is_none(),
        "a problem must not be marked replayed: {response:?}"
    );
    body
}

/// Asserts a fresh (not replayed) upstream answer for `path`; returns its JSON body.
pub fn assert_upstream(response: &Response, path: &str) -> Value {
    assert_eq!(
        response.status,
        200,
        "expected an upstream 200 for {path}; headers {:?} body {}",
        response.headers,
        response.text()
    );
    assert!(
        response.header(REPLAYED).is_none(),
        "a fresh upstream answer must not be marked replayed: {:?}",
        response.headers
    );
    assert!(
        response
            .header_once(MARKER)
            .starts_with(&format!("{path}#")),
        "marker {:?}",
        response.header(MARKER)
    );
    response.json()
}
