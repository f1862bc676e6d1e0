//! [`ClusterStore`] against hand-written sidecar answers: leases spent
//! locally, refusals remembered, the fallback and its recovery, claims held
//! remotely and settled without waiting, answers that must not be trusted.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use serde_json::Value;

use super::wire;
use super::{CallOutcome, ClusterStore, Route, StoreEvent};
use crate::config::{self, CompiledConfig};
use crate::idempotency::{Begin, Claim, Fingerprint, IdempotencyError, Lifetimes, StoredResponse};
use crate::limits::{Admission, KeyHashes};
use crate::store::{Eviction, MemoryStore};
use crate::store_ops::{StoreAnswer, StoreOp};

const SECOND: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * SECOND;

fn config(idempotency_fallback: &str) -> CompiledConfig {
    let text = format!(
        r#"{{"version":1,"tenant":{{"trust_header_without_jwt":true}},
        "store":{{"backend":"cluster","cluster":{{"upstream":"store","fallback_share_percent":50,
            "probe_interval_ms":1000,"idempotency_fallback":"{idempotency_fallback}"}}}},
        "tenants":{{"acme":{{"rate_limit":{{"requests":40,"per_seconds":60}}}}}}}}"#
    );
    config::parse(text.as_bytes()).unwrap()
}

fn admit(config: &CompiledConfig, now: u64) -> StoreOp {
    let settings = config.tenant_settings("acme").unwrap();
    StoreOp::Admit(Admission {
        tenant: crate::tenant::TenantId::parse("acme").unwrap(),
        applied: settings.applied("GET", "/"),
        keys: KeyHashes::default(),
        now_unix_ns: now,
        token: now,
    })
}

fn claim_op(now: u64) -> StoreOp {
    StoreOp::Claim {
        tenant: crate::tenant::TenantId::parse("acme").unwrap(),
        key: "k-1".to_owned(),
        fingerprint: Fingerprint::of("POST", "/orders", None),
        lifetimes: Lifetimes {
            in_flight_timeout_seconds: 30,
            ttl_seconds: 60,
            pooled_share: false,
        },
        now_unix_ns: now,
        generation: 1,
    }
}

fn ok(body: &str) -> CallOutcome {
    CallOutcome::Answered {
        status: 200,
        body: body.as_bytes().to_vec(),
    }
}

fn awaited(route: Route) -> (String, Value) {
    match route {
        Route::Await(call) => (
            call.path.to_owned(),
            serde_json::from_slice(&call.body).unwrap(),
        ),
        other => panic!("expected a call, got {other:?}"),
    }
}

fn verdict(answer: StoreAnswer) -> (bool, u64) {
    let verdict = answer.into_admit().unwrap();
    (verdict.allowed, verdict.retry_after_seconds)
}

#[test]
fn a_lease_admits_locally_until_spent() {
    let config = config("reject");
    let store = MemoryStore::new();
    let mut client = ClusterStore::new();
    let (path, body) = awaited(client.begin(&config, &store, admit(&config, T0), T0));
    assert_eq!(path, wire::LEASE_PATH);
    assert_eq!(body["scope"], "acme");
    assert_eq!(body["limit"], "tenant");
    assert_eq!(body["want"], 1);
    assert_eq!(body["emission_us"], 1_500_000);
    assert_eq!(body["capacity_us"], 60_000_000);
    let answer = client
        .on_answer(
            &config,
            &store,
            ok(r#"{"granted":3,"remaining":37,"reset_seconds":5,"retry_after_seconds":0}"#),
            T0,
        )
        .unwrap();
    assert_eq!(verdict(answer), (true, 0));
    assert_eq!(client.take_events(), vec![StoreEvent::RoundTrip]);
    // Two slots left: answered without a call, by any request of this gateway.
    for _ in 0..2 {
        let mut other = ClusterStore::new();
        match other.begin(&config, &store, admit(&config, T0), T0) {
            Route::Answer(answer) => assert_eq!(verdict(answer), (true, 0)),
            route => panic!("expected a local answer, got {route:?}"),
        }
    }
    let (path, _) = awaited(ClusterStore::new().begin(&config, &store, admit(&config, T0), T0));
    assert_eq!(path, wire::LEASE_PATH);
}

#[test]
fn a_refusal_is_answered_locally_while_it_holds() {
    let config = config("reject");
    let store = MemoryStore::new();
    let mut client = ClusterStore::new();
    let _ = awaited(client.begin(&config, &store, admit(&config, T0), T0));
    let answer = client
        .on_answer(
            &config,
            &store,
            ok(r#"{"granted":0,"remaining":0,"reset_seconds":60,"retry_after_seconds":2}"#),
            T0,
        )
        .unwrap();
    assert_eq!(verdict(answer), (false, 2));
    match ClusterStore::new().begin(&config, &store, admit(&config, T0), T0) {
        Route::Answer(answer) => assert!(!verdict(answer).0),
        route => panic!("expected a local refusal, got {route:?}"),
    }
    // The refusal lasts no longer than one emission interval (1.5 s).
    let later = T0 + 2 * SECOND;
    let _ = awaited(ClusterStore::new().begin(&config, &store, admit(&config, later), later));
}

#[test]
fn a_failed_call_falls_back_to_the_share_and_recovers_on_a_probe() {
    let config = config("reject");
    let store = MemoryStore::new();
    let mut client = ClusterStore::new();
    let _ = awaited(client.begin(&config, &store, admit(&config, T0), T0));
    let answer = client
        .on_answer(
            &config,
            &store,
            CallOutcome::Failed("refused".to_owned()),
            T0,
        )
        .unwrap();
    assert_eq!(verdict(answer), (true, 0));
    let events = client.take_events();
    assert!(
        events.contains(&StoreEvent::WentDown("refused".to_owned())),
        "{events:?}"
    );
    assert!(events.contains(&StoreEvent::FellBack));
    // Down: the share (20 of 40) is enforced locally, with no calls.
    let mut admitted = 1;
    for _ in 0..40 {
        match ClusterStore::new().begin(&config, &store, admit(&config, T0), T0) {
            Route::Answer(answer) => admitted += u32::from(verdict(answer).0),
            route => panic!("down: expected the fallback, got {route:?}"),
        }
    }
    assert_eq!(admitted, 20);
    // After the probe interval one request calls; its success ends the fallback.
    let later = T0 + 2 * SECOND;
    let mut probe = ClusterStore::new();
    let _ = awaited(probe.begin(&config, &store, admit(&config, later), later));
    let _ = probe.on_answer(
        &config,
        &store,
        ok(r#"{"granted":1,"remaining":0,"reset_seconds":1,"retry_after_seconds":0}"#),
        later,
    );
    assert!(probe.take_events().contains(&StoreEvent::CameBack));
}

#[test]
fn a_remote_claim_is_sealed_here_and_completed_without_waiting() {
    let config = config("reject");
    let store = MemoryStore::new();
    let mut client = ClusterStore::new();
    let (path, body) = awaited(client.begin(&config, &store, claim_op(T0), T0));
    assert_eq!(path, wire::CLAIM_PATH);
    assert_eq!(body["scope"], "acme");
    assert!(wire::is_valid_key(body["key"].as_str().unwrap()));
    assert!(body.get("body").is_none());
    assert_eq!(body["in_flight_ms"], 30_000);
    let answer = client
        .on_answer(
            &config,
            &store,
            ok(r#"{"result":"claimed","generation":9}"#),
            T0,
        )
        .unwrap();
    let Ok(Begin::Claimed(claim)) = answer.into_claim() else {
        panic!("not claimed");
    };
    let seal = StoreOp::Seal {
        claim,
        body_hash: [7; 8],
    };
    assert_eq!(
        client.begin(&config, &store, seal, T0),
        Route::Answer(StoreAnswer::Update(Ok(true)))
    );
    let complete = StoreOp::Complete {
        claim,
        response: Some(StoredResponse {
            status: 201,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: b"{}".to_vec(),
        }),
        status: 201,
        ttl_seconds: 60,
        now_unix_ns: T0,
    };
    // Envoy: the response waits until its record is in Redis.
    let (path, body) = awaited(client.begin(&config, &store, complete.clone(), T0));
    assert_eq!(path, wire::COMPLETE_PATH);
    assert_eq!(body["generation"], 9);
    assert_eq!(body["body"], "0707070707070707");
    assert_eq!(body["response"]["body"], "7b7d");
    assert_eq!(body["ttl_ms"], 60_000);
    let answer = client.on_answer(&config, &store, ok(r#"{"updated":false}"#), T0);
    assert_eq!(answer, Some(StoreAnswer::Update(Ok(false))));

    // ngx_wasm_module cannot pause response phases: sent, answered at once.
    let ngx = MemoryStore::ngx_wasm(1 << 20, Eviction::None);
    let mut client = ClusterStore::new();
    let _ = awaited(client.begin(&config, &ngx, claim_op(T0), T0));
    let _ = client.on_answer(
        &config,
        &ngx,
        ok(r#"{"result":"claimed","generation":9}"#),
        T0,
    );
    // ngx_wasm_module dispatches only from request phases and ticks: queued.
    match client.begin(&config, &ngx, complete, T0) {
        Route::Queue(call, StoreAnswer::Update(Ok(true))) => {
            assert_eq!(call.path, wire::COMPLETE_PATH)
        }
        route => panic!("expected a queued call, got {route:?}"),
    }
}

#[test]
fn with_the_store_down_claims_are_refused_or_kept_local_as_configured() {
    for (fallback, local) in [("reject", false), ("local", true)] {
        let config = config(fallback);
        let store = MemoryStore::new();
        let mut client = ClusterStore::new();
        let _ = awaited(client.begin(&config, &store, claim_op(T0), T0));
        let answer = client
            .on_answer(
                &config,
                &store,
                CallOutcome::Answered {
                    status: 503,
                    body: Vec::new(),
                },
                T0,
            )
            .unwrap();
        match (answer.into_claim(), local) {
            (Err(IdempotencyError::Store(_)), false) => {}
            (Ok(Begin::Claimed(claim)), true) => {
                // Settled where it was made: in this gateway's records.
                let release = StoreOp::Release { claim };
                assert_eq!(
                    client.begin(&config, &store, release, T0),
                    Route::Answer(StoreAnswer::Update(Ok(true)))
                );
            }
            (other, _) => panic!("{fallback}: unexpected {other:?}"),
        }
    }
}

#[test]
fn replays_the_filter_would_not_have_stored_are_refused() {
    let config = config("reject");
    let store = MemoryStore::new();
    for response in [
        r#"{"status":201,"headers":[["a b","2"]],"body":"7b7d"}"#,
        r#"{"status":201,"headers":[["x-a","b\r\nc"]],"body":"7b7d"}"#,
        r#"{"status":201,"headers":[],"body":"zz"}"#,
        r#"{"status":42,"headers":[],"body":""}"#,
    ] {
        let mut client = ClusterStore::new();
        let _ = awaited(client.begin(&config, &store, claim_op(T0), T0));
        let text = format!(r#"{{"result":"replay","response":{response}}}"#);
        let answer = client.on_answer(&config, &store, ok(&text), T0).unwrap();
        assert!(
            matches!(answer.into_claim(), Err(IdempotencyError::Store(_))),
            "{response}"
        );
    }
    let mut client = ClusterStore::new();
    let _ = awaited(client.begin(&config, &store, claim_op(T0), T0));
    let good = r#"{"result":"replay","response":{"status":201,"headers":[["content-type","application/json"]],"body":"7b7d"}}"#;
    let answer = client.on_answer(&config, &store, ok(good), T0).unwrap();
    assert!(matches!(answer.into_claim(), Ok(Begin::Replay(stored)) if stored.body == b"{}"));
}

#[test]
fn unreadable_answers_count_as_failures() {
    let config = config("reject");
    let store = MemoryStore::new();
    let mut client = ClusterStore::new();
    let _ = awaited(client.begin(&config, &store, admit(&config, T0), T0));
    let answer = client.on_answer(&config, &store, ok("{\"granted\":\"many\"}"), T0);
    assert!(answer.is_some());
    assert!(client
        .take_events()
        .iter()
        .any(|event| matches!(event, StoreEvent::WentDown(_))));
    // An answer nobody waits for is ignored.
    assert_eq!(client.on_answer(&config, &store, ok("{}"), T0), None);
    let _ = Claim::remote(1);
}

#[test]
fn cluster_config_is_validated() {
    let bad = [
        r#"{"backend":"local","cluster":{}}"#,
        r#"{"backend":"cluster","cluster":{"fallback_share_percent":0}}"#,
        r#"{"backend":"cluster","cluster":{"timeout_ms":0}}"#,
        r#"{"backend":"cluster","cluster":{"upstream":"a b"}}"#,
        r#"{"backend":"cluster","cluster":{"nope":1}}"#,
        r#"{"backend":"sharded"}"#,
    ];
    for store in bad {
        let text = format!(
            r#"{{"version":1,"tenant":{{"trust_header_without_jwt":true}},"store":{store}}}"#
        );
        assert!(config::parse(text.as_bytes()).is_err(), "{store} accepted");
    }
    let text =
        r#"{"version":1,"tenant":{"trust_header_without_jwt":true},"store":{"backend":"cluster"}}"#;
    let compiled = config::parse(text.as_bytes()).unwrap();
    assert_eq!(
        compiled.store.cluster.unwrap().upstream,
        "tenant_guard_store"
    );
}

/// acme: 100 per second, 3 per month, 2 per hour per user (header mode).
fn plan_config() -> CompiledConfig {
    config::parse(
        br#"{"version":1,"tenant":{"trust_header_without_jwt":true},
        "store":{"backend":"cluster","cluster":{"upstream":"store"}},
        "tenants":{"acme":{"rate_limits":[
            {"name":"second","requests":100,"per":"second"},
            {"name":"month","requests":3,"per":"month"},
            {"name":"user","requests":2,"per":"hour","key":"user"}]}}}"#,
    )
    .unwrap()
}

fn plan_admit(config: &CompiledConfig, user: &str, now: u64) -> StoreOp {
    let settings = config.tenant_settings("acme").unwrap();
    let mut keys = KeyHashes::default();
    keys.set(crate::config::KeyKind::User, user.as_bytes());
    StoreOp::Admit(Admission {
        tenant: crate::tenant::TenantId::parse("acme").unwrap(),
        applied: settings.applied("GET", "/"),
        keys,
        now_unix_ns: now,
        token: now,
    })
}

#[test]
fn several_limits_go_to_the_store_in_one_call_and_a_refusal_takes_nothing() {
    let config = plan_config();
    let store = MemoryStore::new();
    let mut client = ClusterStore::new();
    let (path, body) = awaited(client.begin(&config, &store, plan_admit(&config, "u1", T0), T0));
    assert_eq!(path, wire::LEASES_PATH);
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["limit"], "second");
    assert!(items[1]["quota"]["window_end_s"].as_u64().unwrap() > T0 / SECOND);
    assert!(items[2]["limit"].as_str().unwrap().starts_with("user~"));
    assert!(items.iter().all(|item| item["need"] == 1));
    // Granted: 4 slots of the second, 1 of the month, 1 of the user.
    let granted = r#"{"items":[
        {"granted":4,"remaining":96,"reset_seconds":1,"retry_after_seconds":0},
        {"granted":1,"remaining":2,"reset_seconds":99,"retry_after_seconds":0},
        {"granted":1,"remaining":1,"reset_seconds":9,"retry_after_seconds":0}]}"#;
    let answer = client.on_answer(&config, &store, ok(granted), T0).unwrap();
    assert_eq!(verdict(answer), (true, 0));
    // The next request of another user: the second's lease answers at once,
    // the month's and the user's need the store; the store refuses the month.
    let mut next = ClusterStore::new();
    let (_, body) = awaited(next.begin(&config, &store, plan_admit(&config, "u2", T0), T0));
    let items = body["items"].as_array().unwrap();
    assert_eq!(
        items
            .iter()
            .map(|item| item["limit"].as_str().unwrap().split('~').next().unwrap())
            .collect::<Vec<_>>(),
        ["month", "user"]
    );
    let refused = r#"{"items":[
        {"granted":0,"remaining":0,"reset_seconds":99,"retry_after_seconds":99},
        {"granted":0,"remaining":0,"reset_seconds":0,"retry_after_seconds":0}]}"#;
    let answer = next.on_answer(&config, &store, ok(refused), T0).unwrap();
    assert_eq!(verdict(answer), (false, 99));
    // The slot of the second taken for it went back: three are still held.
    assert_eq!(live_slots(&config, &store, "second", T0), 3);
}

/// Takes slots from acme's lease of `limit` until it has none: how many.
fn live_slots(config: &CompiledConfig, store: &MemoryStore, limit: &str, now: u64) -> u64 {
    let key = crate::ratelimit::RateKey::limit(config, "acme", limit, None);
    let sizing = super::lease::Sizing {
        cap: 1,
        refill_ns: SECOND,
        horizon_ns: SECOND,
        window_end_ns: None,
    };
    (0..100)
        .take_while(|_| {
            matches!(
                super::lease::take(store, &key, &sizing, now, 8, 1),
                Ok(super::lease::Taken::Slot { .. })
            )
        })
        .count() as u64
}

#[test]
fn a_quota_lease_never_outlives_its_window() {
    let config = plan_config();
    let store = MemoryStore::new();
    let month = crate::limits::calendar::span(crate::config::Calendar::Month, T0 / SECOND);
    // Leased two seconds before the month ends.
    let now = (month.end - 2) * SECOND;
    let mut client = ClusterStore::new();
    let _ = awaited(client.begin(&config, &store, plan_admit(&config, "u1", now), now));
    let granted = r#"{"items":[
        {"granted":4,"remaining":96,"reset_seconds":1,"retry_after_seconds":0},
        {"granted":3,"remaining":0,"reset_seconds":2,"retry_after_seconds":0},
        {"granted":2,"remaining":0,"reset_seconds":9,"retry_after_seconds":0}]}"#;
    assert_eq!(
        verdict(client.on_answer(&config, &store, ok(granted), now).unwrap()),
        (true, 0)
    );
    // In the new month the old month's slots are gone: the store is asked.
    let after = month.end * SECOND + 1;
    let (_, body) = awaited(ClusterStore::new().begin(
        &config,
        &store,
        plan_admit(&config, "u1", after),
        after,
    ));
    let items = body["items"].as_array().unwrap();
    let month_item = items.iter().find(|item| item["limit"] == "month").unwrap();
    assert_eq!(
        month_item["quota"]["window_end_s"].as_u64().unwrap(),
        crate::limits::calendar::span(crate::config::Calendar::Month, month.end).end
    );
    assert_eq!(
        month_item["returned"],
        serde_json::Value::Null,
        "nothing goes back to a month that is over"
    );
}

#[test]
fn a_full_table_of_key_leases_is_its_own_refusal_and_takes_nothing() {
    let config = config::parse(
        br#"{"version":1,"tenant":{"trust_header_without_jwt":true},
        "store":{"backend":"cluster","key_slots":1,"cluster":{"upstream":"store"}},
        "tenants":{"acme":{"rate_limits":[
            {"name":"tenant","requests":100,"per":"hour"},
            {"name":"user","requests":2,"per":"hour","key":"user"}]}}}"#,
    )
    .unwrap();
    let store = MemoryStore::new();
    let grant = |granted: u64| {
        format!(
            r#"{{"granted":{granted},"remaining":90,"reset_seconds":9,"retry_after_seconds":0}}"#
        )
    };
    // One table entry and its alternates: four users hold live leases.
    for user in ["u1", "u2", "u3", "u4"] {
        let mut client = ClusterStore::new();
        let (path, body) =
            awaited(client.begin(&config, &store, plan_admit(&config, user, T0), T0));
        let answer = if path == wire::LEASES_PATH {
            let items: Vec<String> = body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| grant(if item["limit"] == "tenant" { 8 } else { 2 }))
                .collect();
            format!(r#"{{"items":[{}]}}"#, items.join(","))
        } else {
            grant(2)
        };
        let answer = client.on_answer(&config, &store, ok(&answer), T0).unwrap();
        assert_eq!(verdict(answer), (true, 0), "{user}");
    }
    let route = ClusterStore::new().begin(&config, &store, plan_admit(&config, "u5", T0), T0);
    let Route::Answer(answer) = route else {
        panic!("expected an answer, got {route:?}");
    };
    assert!(matches!(
        answer.into_admit(),
        Err(crate::ratelimit::CheckError::KeysExhausted)
    ));
    // u5's slot of the tenant's lease went back: 8 granted, 4 spent.
    assert_eq!(live_slots(&config, &store, "tenant", T0), 4);
}

/// acme: 40 per hour, a route `/reports` costing 5, a monthly usage quota
/// reported in `x-tokens`, and at most one request in flight.
fn costly_config() -> CompiledConfig {
    config::parse(
        br#"{"version":1,"tenant":{"trust_header_without_jwt":true},
        "store":{"backend":"cluster","cluster":{"upstream":"store"}},
        "tenants":{"acme":{"max_in_flight":1,
            "rate_limits":[{"name":"hour","requests":40,"per":"hour"},
                           {"name":"tokens","requests":1000,"per":"month","usage_header":"x-tokens"}],
            "routes":[{"prefix":"/reports","cost":5}]}}}"#,
    )
    .unwrap()
}

fn costly_admit(config: &CompiledConfig, path: &str, token: u64, now: u64) -> StoreOp {
    let settings = config.tenant_settings("acme").unwrap();
    StoreOp::Admit(Admission {
        tenant: crate::tenant::TenantId::parse("acme").unwrap(),
        applied: settings.applied("POST", path),
        keys: KeyHashes::default(),
        now_unix_ns: now,
        token,
    })
}

#[test]
fn a_cost_is_asked_of_the_store_and_held_in_flight_per_gateway() {
    let config = costly_config();
    let store = MemoryStore::new();
    let mut client = ClusterStore::new();
    let (path, body) = awaited(client.begin(
        &config,
        &store,
        costly_admit(&config, "/reports/1", 1, T0),
        T0,
    ));
    assert_eq!(path, wire::LEASES_PATH);
    let items = body["items"].as_array().unwrap();
    assert!(items.iter().all(|item| item["need"] == 5), "{body}");
    assert!(items.iter().all(|item| item["want"].as_u64() >= Some(5)));
    // While it waits, its in-flight slot is held here: a second request is
    // refused at once, without a call.
    let second =
        match ClusterStore::new().begin(&config, &store, costly_admit(&config, "/a", 2, T0), T0) {
            Route::Answer(answer) => answer.into_admit().unwrap(),
            other => panic!("expected an answer, got {other:?}"),
        };
    assert!(matches!(
        second.in_flight,
        crate::limits::Entered::Full { max: 1, .. }
    ));
    let granted = r#"{"items":[
        {"granted":7,"remaining":30,"reset_seconds":9,"retry_after_seconds":0},
        {"granted":5,"remaining":900,"reset_seconds":99,"retry_after_seconds":0}]}"#;
    let admitted = client
        .on_answer(&config, &store, ok(granted), T0)
        .unwrap()
        .into_admit()
        .unwrap();
    assert!(admitted.allowed);
    assert_eq!(admitted.in_flight, crate::limits::Entered::Held);
    // 7 granted, 5 its own: 2 left in the hour's lease.
    assert_eq!(live_slots(&config, &store, "hour", T0), 2);
}

#[test]
fn reported_usage_is_spent_from_the_lease_then_sent_to_the_store() {
    let config = costly_config();
    let store = MemoryStore::new();
    let mut client = ClusterStore::new();
    let _ = awaited(client.begin(&config, &store, costly_admit(&config, "/a", 1, T0), T0));
    let granted = r#"{"items":[
        {"granted":4,"remaining":30,"reset_seconds":9,"retry_after_seconds":0},
        {"granted":4,"remaining":900,"reset_seconds":99,"retry_after_seconds":0}]}"#;
    let _ = client.on_answer(&config, &store, ok(granted), T0).unwrap();
    // The month's lease holds 3; the upstream reports 10 (9 beyond the cost).
    let settings = config.tenant_settings("acme").unwrap();
    let reported = crate::limits::Reported::parse(&[(Some(b"10".as_slice()), false)]);
    let debit = StoreOp::Debit(Box::new(crate::limits::Debit {
        tenant: crate::tenant::TenantId::parse("acme").unwrap(),
        applied: settings.applied("POST", "/a"),
        keys: KeyHashes::default(),
        reported,
        now_unix_ns: T0,
    }));
    match client.begin(&config, &store, debit, T0) {
        Route::Send(call, answer) => {
            assert_eq!(call.path, wire::DEBIT_PATH);
            let body: Value = serde_json::from_slice(&call.body).unwrap();
            assert_eq!(body["items"][0]["limit"], "tokens");
            assert_eq!(body["items"][0]["units"], 6, "9 minus the 3 the lease held");
            assert!(call.retry_until_ns.is_some());
            assert!(answer.into_debited().is_ok());
        }
        other => panic!("expected a call sent without waiting, got {other:?}"),
    }
    assert_eq!(live_slots(&config, &store, "tokens", T0), 0);
}
