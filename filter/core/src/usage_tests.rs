//! What a request costs beyond one: a limit's or a route's `cost`, usage the
//! upstream reports after the response (`usage_header`), and caps on
//! requests in flight at once (`max_in_flight`), through whole exchanges
//! (the glue's translation table in miniature); every store-using test also
//! runs with the store modelling ngx_wasm_module.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use crate::config::{self, CompiledConfig};
use crate::engine::{HostInputs, RequestView};
use crate::exchange::{Effect, Exchange, Next, Output};
use crate::limits::Reported;
use crate::store::MemoryStore;
use crate::store_ops;

use super::{new_store, SECOND};

/// 2026-12-06 21:49:52 UTC.
const NOW: u64 = 1_796_593_792 * SECOND;

fn document(tenant: &str) -> CompiledConfig {
    config::parse(
        format!(
            r#"{{"version":1,"tenant":{{"trust_header_without_jwt":true}},"tenants":{{"acme":{tenant}}}}}"#
        )
        .as_bytes(),
    )
    .unwrap()
}

thread_local! {
    static DRAWN: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// One request in flight: its exchange and what it has done so far.
struct Flight<'a> {
    config: &'a CompiledConfig,
    store: &'a MemoryStore,
    exchange: Exchange,
    effects: Vec<Effect>,
    status: u32,
}

impl<'a> Flight<'a> {
    /// Sends the request headers of `method path` (as `user`) and carries
    /// out every store call at once, like the glue on shared data.
    fn start(
        config: &'a CompiledConfig,
        store: &'a MemoryStore,
        method: &str,
        path: &str,
        user: Option<&str>,
        at: u64,
    ) -> Self {
        let users = [user.map(str::as_bytes)];
        let request = RequestView {
            method: method.as_bytes(),
            path: path.as_bytes(),
            tenant_header: Some(b"acme"),
            key_headers: if config.key_headers.is_empty() {
                &[]
            } else {
                &users
            },
            ..RequestView::default()
        };
        // Every request draws its own random bytes (its in-flight token).
        let drawn = DRAWN.with(|drawn| {
            drawn.set(drawn.get().wrapping_add(1));
            drawn.get()
        });
        let host = HostInputs {
            now_unix_ns: at,
            random: [drawn; 10],
        };
        let mut flight = Flight {
            config,
            store,
            exchange: Exchange::new(),
            effects: Vec::new(),
            status: 200,
        };
        let output = flight
            .exchange
            .on_request_headers(config, &request, true, &host);
        flight.drive(output, at);
        flight
    }

    fn drive(&mut self, mut output: Output, at: u64) {
        loop {
            for effect in output.effects.drain(..) {
                match &effect {
                    Effect::Reply(reply) => self.status = reply.status,
                    Effect::Leave(departure) => {
                        store_ops::leave(self.config, self.store, departure, at).unwrap()
                    }
                    _ => {}
                }
                self.effects.push(effect);
            }
            output = match output.next {
                Next::Store(call) => {
                    let answer = store_ops::execute_local(self.config, self.store, call.op);
                    let host = HostInputs {
                        now_unix_ns: at,
                        random: [1; 10],
                    };
                    self.exchange
                        .on_store_answer(self.config, call.token, answer, &host)
                }
                _ => return,
            };
        }
    }

    /// The response arrives with `usage` in the usage headers (raw values).
    fn respond(&mut self, usage: &[(Option<&[u8]>, bool)], at: u64) {
        let reported = Reported::parse(usage);
        let output = self
            .exchange
            .on_response_headers_reporting(self.config, &reported, at);
        self.drive(output, at);
    }

    /// The stream ends (done, reset or after a local reply).
    fn end(&mut self, at: u64) {
        let output = self.exchange.on_stream_end();
        self.drive(output, at);
    }
}

/// Starts and ends `count` requests at once; their statuses.
fn statuses(
    config: &CompiledConfig,
    store: &MemoryStore,
    method: &str,
    path: &str,
    count: usize,
    at: u64,
) -> Vec<u32> {
    (0..count)
        .map(|n| {
            let mut flight = Flight::start(config, store, method, path, None, at + n as u64);
            flight.end(at + n as u64);
            flight.status
        })
        .collect()
}

fn problem_of(flight: &Flight<'_>) -> Option<(u32, String, String)> {
    flight.effects.iter().find_map(|effect| match effect {
        Effect::Reply(reply) => {
            let body: serde_json::Value = serde_json::from_slice(&reply.body).ok()?;
            let retry = reply
                .headers
                .iter()
                .find(|(name, _)| name == "retry-after")
                .map(|(_, value)| value.clone())
                .unwrap_or_default();
            Some((reply.status, body["type"].as_str()?.to_owned(), retry))
        }
        _ => None,
    })
}

pub(super) fn a_cost_takes_that_many_from_each_limit() {
    let config = document(
        r#"{"rate_limits":[{"name":"hour","requests":30,"per":"hour"},
            {"name":"exports","requests":10,"per":"day","prefix":"/exports","cost":5}],
           "routes":[{"prefix":"/reports","method":"POST","cost":20}]}"#,
    );
    let store = new_store();
    // 5 GETs (1 each) and a report (20): 25 of 30 taken.
    assert_eq!(statuses(&config, &store, "GET", "/a", 5, NOW), [200; 5]);
    assert_eq!(statuses(&config, &store, "POST", "/reports", 1, NOW), [200]);
    // Another report needs 20 of the 5 left: refused, and takes nothing.
    assert_eq!(statuses(&config, &store, "POST", "/reports", 1, NOW), [429]);
    assert_eq!(statuses(&config, &store, "GET", "/a", 5, NOW), [200; 5]);
    assert_eq!(statuses(&config, &store, "GET", "/a", 1, NOW), [429]);

    // A limit's own cost: 5 of `exports` (and, as a route cost would not
    // apply, 1 of `hour`) per request.
    let store = new_store();
    assert_eq!(
        statuses(&config, &store, "GET", "/exports/1", 3, NOW),
        [200, 200, 429]
    );
    assert_eq!(statuses(&config, &store, "GET", "/a", 28, NOW), [200; 28]);
    assert_eq!(statuses(&config, &store, "GET", "/a", 1, NOW), [429]);
}

pub(super) fn reported_usage_is_taken_after_the_response() {
    let config = document(
        r#"{"rate_limits":[{"name":"tokens","requests":100,"per":"month",
            "usage_header":"x-tokens","usage_max":80}]}"#,
    );
    let store = new_store();
    // Admitted for its cost (1); the upstream reports 60: 59 more taken.
    let mut first = Flight::start(&config, &store, "POST", "/llm", None, NOW);
    assert_eq!(first.status, 200);
    first.respond(&[(Some(b"60"), false)], NOW);
    assert!(first
        .effects
        .contains(&Effect::RemoveResponseHeader("x-tokens".to_owned())));
    first.end(NOW);
    // 40 left: admitted, reports 39 (38 more): 1 left.
    let mut second = Flight::start(&config, &store, "POST", "/llm", None, NOW);
    assert_eq!(second.status, 200);
    second.respond(&[(Some(b"39"), false)], NOW);
    let mut third = Flight::start(&config, &store, "POST", "/llm", None, NOW);
    assert_eq!(third.status, 200, "the last unit");
    // Usage past what is left is still taken: the quota is spent.
    third.respond(&[(Some(b"50"), false)], NOW);
    let refused = Flight::start(&config, &store, "POST", "/llm", None, NOW);
    assert_eq!(refused.status, 429);
}

pub(super) fn malformed_usage_takes_nothing_and_is_counted_once_logged() {
    let config = document(
        r#"{"rate_limits":[{"name":"tokens","requests":10,"per":"day",
            "usage_header":"x-tokens","usage_max":100}]}"#,
    );
    let store = new_store();
    let garbage: [(&[u8], bool); 8] = [
        (b"-5", false),
        (b"5 5", false),
        (b"\xff\xfe", false),
        (b"99999999999999999999", false),
        (b"101", false),
        (b"3", true),
        (b"", false),
        (b"0x10", false),
    ];
    let mut logs = 0;
    for (value, repeated) in garbage {
        let mut flight = Flight::start(&config, &store, "GET", "/", None, NOW);
        flight.respond(&[(Some(value), repeated)], NOW);
        assert!(
            flight.effects.contains(&Effect::UsageIgnored(1)),
            "{value:?}: {:?}",
            flight.effects
        );
        assert!(flight
            .effects
            .contains(&Effect::RemoveResponseHeader("x-tokens".to_owned())));
        logs += flight
            .effects
            .iter()
            .filter(|effect| matches!(effect, Effect::Log(..)))
            .count();
        flight.end(NOW);
    }
    assert_eq!(logs, 1, "logged once per document");
    // Nothing was taken beyond the 8 admissions: 2 of 10 left.
    assert_eq!(
        statuses(&config, &store, "GET", "/", 3, NOW),
        [200, 200, 429]
    );
}

pub(super) fn in_flight_caps_refuse_beyond_the_cap_and_free_at_the_end() {
    let config =
        document(r#"{"max_in_flight":[{"max":2},{"max":1,"key":"user","timeout_seconds":5}]}"#);
    let store = new_store();
    let mut a = Flight::start(&config, &store, "GET", "/", Some("u1"), NOW);
    let mut b = Flight::start(&config, &store, "GET", "/", Some("u2"), NOW);
    assert_eq!((a.status, b.status), (200, 200));
    // The tenant's cap (2) is full.
    let mut c = Flight::start(&config, &store, "GET", "/", Some("u3"), NOW);
    let (status, kind, retry) = problem_of(&c).unwrap();
    assert_eq!(
        (status, kind.as_str(), retry.as_str()),
        (429, "urn:tenant-guard:problem:concurrency", "1")
    );
    c.end(NOW);
    // One ends: room for one more, but not a second request of u2 (1 per user).
    a.end(NOW);
    let mut d = Flight::start(&config, &store, "GET", "/", Some("u2"), NOW);
    assert_eq!(d.status, 429, "u2 already has a request in flight");
    d.end(NOW);
    let mut e = Flight::start(&config, &store, "GET", "/", Some("u3"), NOW);
    assert_eq!(e.status, 200);
    // b's VM dies: b never ends. Its slot of the per-user cap frees at the
    // deadline (5 s); the tenant's cap (300 s) still counts it.
    let later = NOW + 6 * SECOND;
    e.end(later);
    let mut f = Flight::start(&config, &store, "GET", "/", Some("u2"), later);
    assert_eq!(f.status, 200, "u2's lost slot came back");
    f.end(later);
    b.end(later);
    let g = Flight::start(&config, &store, "GET", "/", Some("u4"), later);
    assert_eq!(g.status, 200);
}

pub(super) fn a_limit_refusal_gives_the_in_flight_slot_back() {
    let config = document(
        r#"{"max_in_flight":1,"rate_limits":[{"name":"hour","requests":1,"per":"hour"}]}"#,
    );
    let store = new_store();
    let mut first = Flight::start(&config, &store, "GET", "/", None, NOW);
    first.end(NOW);
    // Refused by the limit: holds no slot even before its stream ends.
    let refused = Flight::start(&config, &store, "GET", "/", None, NOW);
    assert_eq!(
        problem_of(&refused).unwrap().1,
        "urn:tenant-guard:problem:rate-limited"
    );
    let config = document(r#"{"max_in_flight":1}"#);
    let held = Flight::start(&config, &store, "GET", "/", None, NOW);
    assert_eq!(held.status, 200, "the refused request left nothing behind");
}

mod under_hosts {
    //! The tests above on both host models.
    under_host_models!(envoy: Envoy:
        a_cost_takes_that_many_from_each_limit,
        reported_usage_is_taken_after_the_response,
        malformed_usage_takes_nothing_and_is_counted_once_logged,
        in_flight_caps_refuse_beyond_the_cap_and_free_at_the_end,
        a_limit_refusal_gives_the_in_flight_slot_back,
    );
    under_host_models!(ngx_wasm: NgxWasm:
        a_cost_takes_that_many_from_each_limit,
        reported_usage_is_taken_after_the_response,
        malformed_usage_takes_nothing_and_is_counted_once_logged,
        in_flight_caps_refuse_beyond_the_cap_and_free_at_the_end,
        a_limit_refusal_gives_the_in_flight_slot_back,
    );
}

#[test]
fn the_new_fields_are_checked_with_their_paths() {
    let cases = [
        (
            r#"{"rate_limits":[{"name":"a","requests":5,"per":"hour","cost":6}]}"#,
            "tenants.acme.rate_limits.0.cost",
        ),
        (
            r#"{"rate_limit":{"requests":5,"per_seconds":60},"routes":[{"prefix":"/r","cost":6}]}"#,
            "tenants.acme.routes.0.cost",
        ),
        (
            r#"{"rate_limits":[{"name":"a","requests":5,"per":"hour","usage_header":"x-tenant-id"}]}"#,
            "tenants.acme.rate_limits.0.usage_header",
        ),
        (
            r#"{"rate_limits":[{"name":"a","requests":5,"per":"hour","usage_header":"x-u","usage_max":9007199254740993}]}"#,
            "tenants.acme.rate_limits.0.usage_max",
        ),
        (
            r#"{"rate_limits":[{"name":"a","requests":5,"per":"hour","usage_max":3}]}"#,
            "tenants.acme.rate_limits.0.usage_max",
        ),
        (r#"{"max_in_flight":0}"#, "tenants.acme.max_in_flight"),
        (
            r#"{"max_in_flight":[{"max":1},{"max":3,"key":"tenant"}]}"#,
            "tenants.acme.max_in_flight.1.key",
        ),
        (
            r#"{"max_in_flight":[{"max":1,"timeout_seconds":0}]}"#,
            "tenants.acme.max_in_flight.timeout_seconds",
        ),
    ];
    for (tenant, path) in cases {
        let text = format!(
            r#"{{"version":1,"tenant":{{"trust_header_without_jwt":true}},"tenants":{{"acme":{tenant}}}}}"#
        );
        let err = config::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(err.contains(&format!("`{path}`")), "{tenant}: {err}");
    }
}
