//! What a request costs beyond one, end to end (README "Limits, quotas and
//! plans": `cost`, `usage_header`, `max_in_flight`): one plugin document and
//! the checks Envoy in local mode, a fleet on Redis and Kong's engine must
//! all pass. Each check takes the gateways' ports (used round-robin).
//!
//! - a costly route (`POST /reports` costs 20 of a tenant's 30 per hour);
//! - usage the upstream reports in `x-tokens` spending a monthly quota of
//!   100 (the backend answers back what the request's `x-report` says);
//! - a cap of two requests in flight (the backend holds them).

use std::time::Duration;

use serde_json::{json, Value};

use crate::backend::{Backend, Route};
use crate::expect::assert_problem;
use crate::http::{self, Response};
use crate::wait::wait_until;

pub const TENANT: &str = "x-tenant-id";
/// What the test asks the backend to report as usage.
pub const REPORT: &str = "x-report";
/// Where the backend reports it, and the filter reads it.
pub const USAGE: &str = "x-tokens";
const SETTLE: Duration = Duration::from_secs(20);

/// The plugin document of the checks, with `store` as its `store` section.
pub fn config(store: Value) -> Value {
    json!({
        "version": 1,
        "revision": "costs",
        "tenant": { "trust_header_without_jwt": true },
        "metrics": true,
        "store": store,
        "tenants": {
            "reports": {
                "rate_limits": [{ "name": "hour", "requests": 30, "per": "hour" }],
                "routes": [{ "prefix": "/reports", "method": "POST", "cost": 20 }]
            },
            "llm": { "rate_limits": [{
                "name": "tokens", "requests": 100, "per": "month",
                "usage_header": USAGE, "usage_max": 1000
            }] },
            "junk": { "rate_limits": [{
                "name": "tokens", "requests": 100, "per": "month",
                "usage_header": USAGE, "usage_max": 1000
            }] },
            "slow": { "max_in_flight": 2 }
        }
    })
}

/// The backend answers `/llm` and `/junk` with `x-tokens` set to the
/// request's `x-report`.
pub fn prepare(backend: &Backend) {
    for path in ["/llm", "/junk"] {
        backend.route(
            path,
            Route {
                echo: vec![(REPORT.to_owned(), USAGE.to_owned())],
                ..Route::default()
            },
        );
    }
}

fn send(
    ports: &[u16],
    n: usize,
    method: &str,
    path: &str,
    tenant: &str,
    extra: &[(&str, &str)],
) -> Response {
    let mut headers = vec![(TENANT, tenant)];
    headers.extend_from_slice(extra);
    let port = ports.get(n % ports.len().max(1)).copied().unwrap_or(0);
    http::request(port, method, path, &headers, b"")
}

/// `POST /reports` takes 20 of 30: after 5 GETs one report passes, the next
/// is refused (and takes nothing), 5 more GETs pass, then the hour is spent.
/// With several gateways, slots a gateway leased come back within a second
/// or two: counts that must end exact are polled there.
pub fn costly_route(ports: &[u16], backend: &Backend) {
    let get = |n: usize| send(ports, n, "GET", "/a", "reports", &[]).status;
    let report = |n: usize| send(ports, n, "POST", "/reports", "reports", &[]);
    assert_eq!(report(0).status, 200, "a report with the whole hour left");
    let refused = report(1);
    assert_problem(&refused, 429, "rate-limited");
    // 10 of 30 left: exactly 10 GETs pass in the end, never more.
    let mut n = 0;
    let settled = wait_until(SETTLE, || {
        n += 1;
        get(n);
        backend.completed("/a") >= 10
    });
    assert!(settled, "only {} GETs passed", backend.completed("/a"));
    for n in 0..4 {
        assert_eq!(get(n), 429, "#{n}");
    }
    assert_eq!(backend.completed("/a"), 10);
    assert_eq!(backend.completed("/reports"), 1);
}

/// Reported usage spends the quota: 60, then 39 (each beyond the request's
/// cost of 1), then the last unit; the header never reaches the client.
pub fn reported_usage(ports: &[u16], backend: &Backend) {
    let call = |n: usize, report: &str| send(ports, n, "POST", "/llm", "llm", &[(REPORT, report)]);
    for (n, report) in ["60", "39"].into_iter().enumerate() {
        let response = call(n, report);
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(
            response.header(USAGE),
            None,
            "usage header removed: {response:?}"
        );
    }
    // 1 unit left (2 + 59 + 38 taken): the next request passes, then the
    // quota is spent (usage lands in Redis a moment after the response).
    let mut statuses = Vec::new();
    let spent = wait_until(SETTLE, || {
        let status = call(statuses.len() + 2, "1").status;
        statuses.push(status);
        status == 429
    });
    assert!(spent, "never refused: {statuses:?}");
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        (1..=2).contains(&admitted),
        "the last unit (and a gateway's lease of it) only: {statuses:?}"
    );
    let refused = call(0, "1");
    let body = assert_problem(&refused, 429, "rate-limited");
    assert!(
        body.get("detail")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .contains("tokens"),
        "{body}"
    );
    assert_eq!(backend.completed("/llm"), 2 + admitted as u64);
}

/// Usage that is not a plain integer (or over `usage_max`) takes nothing
/// and never crashes: `junk`'s 100 cover the 6 requests and 94 more.
pub fn garbage_usage_is_ignored(ports: &[u16], backend: &Backend) {
    let garbage = ["-5", "5 5", "0x10", "99999999999999999999", "1001", "abc"];
    for (n, value) in garbage.into_iter().enumerate() {
        let response = send(ports, n, "POST", "/junk", "junk", &[(REPORT, value)]);
        assert_eq!(response.status, 200, "{value}: {response:?}");
        assert_eq!(response.header(USAGE), None, "{value}: removed");
    }
    let reported = send(ports, 0, "POST", "/junk", "junk", &[(REPORT, "94")]);
    assert_eq!(reported.status, 200);
    let mut statuses = Vec::new();
    let spent = wait_until(SETTLE, || {
        let status = send(ports, statuses.len(), "POST", "/junk", "junk", &[]).status;
        statuses.push(status);
        status == 429
    });
    assert!(spent, "{statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s == 200).count() <= 1,
        "garbage took nothing, 94 + 7 admissions spent it: {statuses:?}"
    );
    assert!(backend.completed("/junk") >= 7);
}

/// Two requests of `slow` held at the upstream fill its cap on one gateway:
/// a third there is refused with 429 `concurrency` and `Retry-After: 1`;
/// released, the next passes.
pub fn in_flight_cap(port: u16, backend: &Backend) {
    backend.hold("/slow");
    let held: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || http::get(port, "/slow", &[(TENANT, "slow")]).status))
        .collect();
    assert!(
        wait_until(SETTLE, || backend.completed("/slow") >= 2),
        "the two requests did not reach the upstream"
    );
    let third = http::get(port, "/slow", &[(TENANT, "slow")]);
    let body = assert_problem(&third, 429, "concurrency");
    assert_eq!(third.header("retry-after"), Some("1"), "{third:?}");
    assert!(
        body.get("detail")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .contains("in flight"),
        "{body}"
    );
    backend.release("/slow");
    for handle in held {
        assert_eq!(handle.join().unwrap_or(0), 200);
    }
    // Their slots came back at the streams' end.
    let after = http::get(port, "/slow", &[(TENANT, "slow")]);
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(backend.completed("/slow"), 3);
}
