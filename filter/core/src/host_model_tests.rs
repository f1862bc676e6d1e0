//! Tests of the host models: the in-memory store's Envoy and ngx_wasm_module
//! modes, the semantics probe, key tags under CRC32 collisions, eviction
//! detection and the per-tenant idempotency share, plus every store-using test
//! of the parent module rerun with the store modelling ngx_wasm_module.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::cell::Cell;

use super::{forwarded, parsed, reply_of, request, Exchange, IdempotencyStep, SECOND, T0};
use crate::config::StoreConfig;
use crate::engine::{self, Outcome};
use crate::idempotency::{self, Begin, Fingerprint, Lifetimes, StoreParams};
use crate::problem::ProblemKind;
use crate::ratelimit;
use crate::store::{
    self, CasOutcome, Eviction, HostSemantics, Located, MemoryStore, SharedStore, StoreError,
};

/// Two valid tenant ids of equal length and equal CRC32: every key built as
/// `prefix + id + suffix` collides on a host that looks keys up by CRC32.
const COLLIDING_TENANTS: [&str; 2] = ["tpiuh476hp", "tilbeo2p8z"];
/// A tenant whose rate-limit value `tg:rl:yvyv01z` has the CRC32 of `tg:idem:b:0`.
const TENANT_COLLIDING_WITH_BUCKET_0: &str = "yvyv01z";

fn ngx() -> MemoryStore {
    MemoryStore::ngx_wasm(1 << 20, Eviction::None)
}

fn both_hosts() -> [MemoryStore; 2] {
    [MemoryStore::new(), ngx()]
}

macro_rules! under_ngx_wasm {
    ($($name:ident: $path:path),* $(,)?) => {
        /// The parent module's store-using tests, with the store modelling ngx_wasm_module.
        mod under_ngx_wasm {
            #[cfg(target_arch = "wasm32")]
            use wasm_bindgen_test::wasm_bindgen_test as test;
            $(
                #[test]
                fn $name() {
                    super::super::under_host(
                        crate::store::HostSemantics::NgxWasm,
                        $path,
                    );
                }
            )*

            #[test]
            fn tenant_share_keeps_other_tenants_writing() {
                super::super::under_host(
                    crate::store::HostSemantics::NgxWasm,
                    super::tenant_share_keeps_other_tenants_writing,
                );
            }

            #[cfg(not(target_arch = "wasm32"))]
            #[test]
            fn exact_under_thread_contention() {
                super::super::under_host(
                    crate::store::HostSemantics::NgxWasm,
                    super::super::exact_under_thread_contention,
                );
            }

            #[cfg(not(target_arch = "wasm32"))]
            #[test]
            fn one_claim_per_key_under_thread_contention() {
                super::super::under_host(
                    crate::store::HostSemantics::NgxWasm,
                    super::super::one_claim_per_key_under_thread_contention,
                );
            }
        }
    };
}

under_ngx_wasm!(
    raising_a_limit_rescales_the_backlog: crate::tests::raising_a_limit_rescales_the_backlog,
    corrupted_state_is_treated_as_absent: crate::tests::corrupted_state_is_treated_as_absent,
    contention_exhaustion_rejects_by_default: crate::tests::contention_exhaustion_rejects_by_default,
    tenants_are_limited_independently: crate::tests::tenants_are_limited_independently,
    route_limit_replaces_tenant_limit: crate::tests::route_limit_replaces_tenant_limit,
    rejection_carries_the_contract: crate::tests::rejection_carries_the_contract,
    shadow_mode_never_rejects_but_reports: crate::tests::shadow_mode_never_rejects_but_reports,
    tenant_resolution: crate::tests::tenant_resolution,
    forward_sets_upstream_and_response_headers: crate::tests::forward_sets_upstream_and_response_headers,
    informational_headers_can_be_trimmed: crate::tests::informational_headers_can_be_trimmed,
    if_match_required_on_configured_routes: crate::tests::if_match_required_on_configured_routes,
    idempotency_header_rules: crate::tests::idempotency_header_rules,
    idempotent_replay_conflict_and_release: crate::tests::idempotent_replay_conflict_and_release,
    oversized_responses_are_not_replayable: crate::tests::oversized_responses_are_not_replayable,
    abandoned_claims_are_released_and_lapse: crate::tests::abandoned_claims_are_released_and_lapse,
    idempotency_store_is_bounded_and_reclaimed: crate::tests::idempotency_store_is_bounded_and_reclaimed,
    corrupted_idempotency_records_read_as_empty: crate::tests::corrupted_idempotency_records_read_as_empty,
    tenant_comes_from_the_token: crate::tests::identity::tenant_comes_from_the_token,
    missing_or_bad_tokens_get_401: crate::tests::identity::missing_or_bad_tokens_get_401_with_a_challenge,
    optional_tokens_fall_back: crate::tests::identity::optional_tokens_fall_back_to_the_trusted_header,
);

// ---- the ngx_wasm_module model ----

#[test]
fn crc32_matches_zlib_and_the_colliding_ids_collide() {
    assert_eq!(store::crc32(b"123456789"), 0xCBF4_3926);
    let [a, b] = COLLIDING_TENANTS;
    assert_ne!(a, b);
    assert!(crate::config::is_valid_tenant_id(a) && crate::config::is_valid_tenant_id(b));
    let key = |tenant| ratelimit::state_key(tenant, "tenant");
    assert_eq!(store::crc32(key(a).as_bytes()), 0xacc0_7058);
    assert_eq!(store::crc32(key(b).as_bytes()), 0xacc0_7058);
    // Equal length and CRC32: keys built around them collide too.
    let group = |tenant: &str| format!("tg:rl:{tenant}");
    assert_eq!(
        store::crc32(group(a).as_bytes()),
        store::crc32(group(b).as_bytes())
    );
    assert_eq!(
        store::crc32(group(TENANT_COLLIDING_WITH_BUCKET_0).as_bytes()),
        store::crc32(idempotency::bucket_key(0).as_bytes())
    );
}

#[test]
fn ngx_model_follows_ngx_wasm_module() {
    let store = ngx();
    // A missing key needs CAS 0; CAS 0 on an existing key is a conflict (no unconditional write).
    assert_eq!(store.set("k", Some(b"1"), 7).unwrap(), CasOutcome::Conflict);
    assert_eq!(store.get("k").unwrap(), None);
    assert_eq!(store.set("k", Some(b"1"), 0).unwrap(), CasOutcome::Written);
    let (value, cas) = store.get("k").unwrap().unwrap();
    assert_eq!((value.as_slice(), cas), (&b"1"[..], 1));
    assert_eq!(store.set("k", Some(b"2"), 0).unwrap(), CasOutcome::Conflict);
    assert_eq!(store.set("k", Some(b"2"), 1).unwrap(), CasOutcome::Written);
    // NULL deletes, with the CAS too.
    assert_eq!(store.set("k", None, 1).unwrap(), CasOutcome::Conflict);
    assert_eq!(store.set("k", None, 2).unwrap(), CasOutcome::Written);
    assert_eq!(store.get("k").unwrap(), None);
    assert!(store.is_empty());
    // Keys with one CRC32 are one entry.
    let [a, b] = COLLIDING_TENANTS;
    assert_eq!(store.set(a, Some(b"a"), 0).unwrap(), CasOutcome::Written);
    assert_eq!(store.get(b).unwrap().unwrap().0, b"a");
    assert_eq!(store.set(b, Some(b"b"), 0).unwrap(), CasOutcome::Conflict);
}

#[test]
fn ngx_model_evicts_or_fails_when_full() {
    let lru = MemoryStore::ngx_wasm(2, Eviction::Lru);
    for key in ["a", "b"] {
        lru.set(key, Some(b"x"), 0).unwrap();
    }
    lru.get("a").unwrap();
    lru.set("c", Some(b"x"), 0).unwrap();
    assert_eq!(lru.evicted(), 1);
    assert!(
        lru.get("b").unwrap().is_none(),
        "the least recently used goes"
    );
    assert!(lru.get("a").unwrap().is_some());

    let none = MemoryStore::ngx_wasm(1, Eviction::None);
    none.set("a", Some(b"x"), 0).unwrap();
    assert!(none.set("b", Some(b"x"), 0).is_err());
    // Updating in place needs no room.
    assert_eq!(none.set("a", Some(b"y"), 1).unwrap(), CasOutcome::Written);
}

#[test]
fn operations_are_encoded_per_host() {
    for store in both_hosts() {
        let host = store.semantics();
        assert_eq!(
            store.create("k", b"1").unwrap(),
            CasOutcome::Written,
            "{host:?}"
        );
        assert_eq!(
            store.create("k", b"2").unwrap(),
            CasOutcome::Conflict,
            "{host:?}"
        );
        let (_, cas) = store.get("k").unwrap().unwrap();
        assert_eq!(store.update("k", b"3", cas).unwrap(), CasOutcome::Written);
        assert_eq!(store.update("k", b"4", cas).unwrap(), CasOutcome::Conflict);
        let (value, cas) = store.get("k").unwrap().unwrap();
        assert_eq!(value, b"3");
        assert_eq!(store.remove("k", cas).unwrap(), CasOutcome::Written);
        let after = store.get("k").unwrap();
        match host {
            HostSemantics::Envoy => assert_eq!(after.unwrap().0, b""),
            HostSemantics::NgxWasm => assert_eq!(after, None),
        }
        // A removed key can be created again on both.
        let recreated = match store.get("k").unwrap() {
            None => store.create("k", b"5").unwrap(),
            Some((_, cas)) => store.update("k", b"5", cas).unwrap(),
        };
        assert_eq!(recreated, CasOutcome::Written);
    }
}

#[test]
fn the_probe_tells_the_hosts_apart() {
    for store in both_hosts() {
        let host = store.semantics();
        assert_eq!(store::probe(&store).unwrap(), host);
        // Again, with whatever the first probe left behind.
        assert_eq!(store::probe(&store).unwrap(), host);
        match host {
            HostSemantics::Envoy => {
                assert_eq!(store.get(store::PROBE_KEY).unwrap().unwrap().0, b"")
            }
            HostSemantics::NgxWasm => assert!(store.is_empty(), "the probe leaves nothing"),
        }
    }
    // A value already under the probe key (another key's, by CRC32) does not fool it.
    let store = ngx();
    store.set(store::PROBE_KEY, Some(b"old"), 0).unwrap();
    assert_eq!(store::probe(&store).unwrap(), HostSemantics::NgxWasm);
    assert_eq!(store.get(store::PROBE_KEY).unwrap().unwrap().0, b"old");
}

// ---- collisions ----

#[test]
fn foreign_values_are_never_used_as_ours() {
    for store in both_hosts() {
        store
            .set("key", Some(&store::tagged("other", b"theirs")), 0)
            .unwrap();
        let located = store::locate(&store, "key").unwrap().unwrap();
        assert_eq!(located.key, "key#1");
        assert_eq!(located.payload(), None);
        assert_eq!(located.write(&store, b"ours").unwrap(), CasOutcome::Written);
        let again: Located = store::locate(&store, "key").unwrap().unwrap();
        assert_eq!(
            (again.key.as_str(), again.payload()),
            ("key#1", Some(&b"ours"[..]))
        );
        assert_eq!(
            store.get("key").unwrap().unwrap().0,
            store::tagged("other", b"theirs")
        );
        for attempt in 1..store::KEY_ATTEMPTS {
            let key = store::alternate_key("full", attempt);
            store.set(&key, Some(b"garbage"), 0).unwrap();
        }
        store.set("full", Some(b"garbage"), 0).unwrap();
        assert_eq!(store::locate(&store, "full").unwrap(), None);
    }
}

/// Rate limits for the colliding tenants only; idempotency (one bucket) for everyone.
fn limits_config() -> crate::config::CompiledConfig {
    let limit = r#"{"rate_limit":{"requests":3,"per_seconds":3600}}"#;
    let [a, b] = COLLIDING_TENANTS;
    let c = TENANT_COLLIDING_WITH_BUCKET_0;
    parsed(&format!(
        r#"{{"version":1,"tenant":{{"trust_header_without_jwt":true}},
            "store":{{"idempotency_buckets":1}},
            "defaults":{{"idempotency":{{"methods":["POST"],"ttl_seconds":600}}}},
            "tenants":{{"{a}":{limit},"{b}":{limit},"{c}":{limit}}}}}"#
    ))
}

fn statuses(config: &crate::config::CompiledConfig, store: &MemoryStore, tenant: &str) -> Vec<u32> {
    (0..4)
        .map(|_| {
            super::status_of(&super::evaluate(
                config,
                &request(Some(tenant), "GET", "/"),
                store,
            ))
        })
        .collect()
}

#[test]
fn colliding_tenants_keep_separate_limits() {
    let config = limits_config();
    let store = ngx();
    let [a, b] = COLLIDING_TENANTS;
    assert_eq!(statuses(&config, &store, a), [200, 200, 200, 429]);
    assert_eq!(statuses(&config, &store, b), [200, 200, 200, 429]);
    assert_eq!(
        store.len(),
        2,
        "one entry each: `{a}`'s key and `{b}`'s first alternate"
    );
    // A tenant's limits live in one value, `tg:rl:<tenant>`.
    let b_key = format!("tg:rl:{b}");
    assert_eq!(
        store::locate(&store, &b_key).unwrap().unwrap().key,
        format!("{b_key}#1")
    );
}

#[test]
fn colliding_tenants_keep_separate_idempotency_records() {
    let [a, b] = COLLIDING_TENANTS;
    let config = parsed(&format!(
        r#"{{"version":1,"tenant":{{"trust_header_without_jwt":true}},
            "store":{{"idempotency_buckets":1}},
            "defaults":{{"idempotency":{{"methods":["POST"],"ttl_seconds":600}}}},
            "tenants":{{"{a}":{{}},"{b}":{{}}}}}}"#
    ));
    let store = ngx();
    let (first, second) = (
        Exchange::new(&config, &store).for_tenant(a),
        Exchange::new(&config, &store).for_tenant(b),
    );
    // One key, two tenants: two records, neither a conflict nor a replay of the other.
    let claimed_a = first.send("\"order-1\"", "POST", "/pay", b"a");
    super::assert_proceeds(&claimed_a);
    let claimed_b = second.send("\"order-1\"", "POST", "/pay", b"b");
    super::assert_proceeds(&claimed_b);
    first.respond("\"order-1\"", &claimed_a, 201, b"{\"id\":\"A\"}");
    second.respond("\"order-1\"", &claimed_b, 201, b"{\"id\":\"B\"}");
    for (exchange, body, stored) in [
        (first, b"a", &b"{\"id\":\"A\"}"[..]),
        (second, b"b", b"{\"id\":\"B\"}"),
    ] {
        let (replayed, outcome) = reply_of(exchange.send("\"order-1\"", "POST", "/pay", body));
        assert_eq!(
            (outcome, replayed.body.as_slice()),
            (Outcome::Replayed, stored)
        );
    }
    // Their share ledgers (whose keys are SHA-256 based) are separate too.
    for tenant in COLLIDING_TENANTS {
        assert_eq!(
            crate::share::held(&store, tenant, T0).unwrap(),
            1,
            "{tenant}"
        );
    }
}

/// Completes one idempotent POST of tenant `shop` and checks it replays.
fn complete_and_replay(exchange: Exchange<'_>, key: &str) {
    let first = exchange.send(key, "POST", "/pay", b"one");
    exchange.respond(key, &first, 201, b"{\"id\":1}");
    let (replayed, outcome) = reply_of(exchange.send(key, "POST", "/pay", b"one"));
    assert_eq!(
        (outcome, replayed.body.as_slice()),
        (Outcome::Replayed, &b"{\"id\":1}"[..])
    );
}

#[test]
fn rate_limit_state_cannot_clobber_idempotency_records() {
    let config = limits_config();
    let tenant = TENANT_COLLIDING_WITH_BUCKET_0;
    // Records first, then the colliding rate-limit key; and the other way round.
    for records_first in [true, false] {
        let store = ngx();
        let shop = Exchange::new(&config, &store).for_tenant("shop");
        if records_first {
            complete_and_replay(shop, "\"order-1\"");
        }
        assert_eq!(statuses(&config, &store, tenant), [200, 200, 200, 429]);
        if !records_first {
            complete_and_replay(shop, "\"order-1\"");
        }
        // Both keep working: the replay still replays, the limit stays spent.
        let (replayed, outcome) = reply_of(shop.send("\"order-1\"", "POST", "/pay", b"one"));
        assert_eq!((outcome, replayed.status), (Outcome::Replayed, 201));
        assert_eq!(statuses(&config, &store, tenant)[0], 429);
    }
}

// ---- eviction ----

/// A store that counts what the core reports as evicted.
struct Counting<'a> {
    store: &'a MemoryStore,
    evicted: Cell<u32>,
}

impl SharedStore for Counting<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.store.get(key)
    }
    fn set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> Result<CasOutcome, StoreError> {
        self.store.set(key, value, cas)
    }
    fn semantics(&self) -> HostSemantics {
        self.store.semantics()
    }
    fn note_evicted(&self) {
        self.evicted.set(self.evicted.get() + 1);
    }
}

#[test]
fn eviction_is_detected() {
    let slots = store::CANARY_SLOTS as usize;
    let zone = MemoryStore::ngx_wasm(slots + 2, Eviction::Lru);
    let store = Counting {
        store: &zone,
        evicted: Cell::new(0),
    };
    store::plant_canaries(&store, T0).unwrap();
    assert_eq!(zone.len(), slots);
    // A worker starting later plants nothing new; the round finds every canary.
    store::plant_canaries(&store, T0).unwrap();
    let period = store::CANARY_PERIOD_SECONDS * SECOND;
    for round in 0..store::CANARY_SLOTS {
        let now = T0 + round * period;
        assert_eq!(
            store::check_canary(&store, now).unwrap(),
            store::Canary::Present
        );
        assert_eq!(
            store::check_canary(&store, now).unwrap(),
            store::Canary::Present
        );
    }
    assert_eq!(zone.len(), slots);
    let params = StoreParams {
        buckets: 1,
        max_cas_retries: 8,
        tenant_slots: u32::MAX,
        tenant_bucket_slots: 8,
    };
    let lifetimes = Lifetimes {
        in_flight_timeout_seconds: 60,
        ttl_seconds: 60,
        pooled_share: false,
    };
    let fingerprint = Fingerprint::of("POST", "/", Some(b""));
    let Begin::Claimed(claim) =
        idempotency::begin(&store, &params, "t", "k", fingerprint, lifetimes, T0, 3).unwrap()
    else {
        panic!("not claimed")
    };
    // Other writers fill the zone, reading a hot key all along: the least recently
    // read go first, the canaries (each read once a round), then the claim's bucket.
    zone.set("hot", Some(b"x"), 0).unwrap();
    for i in 0..=slots {
        zone.set(&format!("other-{i}"), Some(b"x"), 0).unwrap();
        assert!(zone.get("hot").unwrap().is_some());
    }
    assert_eq!(zone.evicted(), slots as u64 + 1);
    assert!(!idempotency::complete(&store, &params, &claim, None, 200, 60, T0).unwrap());
    assert_eq!(store.evicted.get(), 1, "the vanished bucket is reported");
    // The next check finds its canary gone (and plants it again).
    let next = T0 + store::CANARY_SLOTS * period;
    assert_eq!(
        store::check_canary(&store, next).unwrap(),
        store::Canary::Evicted
    );
    assert_eq!(
        store::check_canary(&store, next).unwrap(),
        store::Canary::Present
    );
}

#[test]
fn envoy_never_reports_evictions() {
    let store = MemoryStore::new();
    store::plant_canaries(&store, T0).unwrap();
    for i in 0..10_000u64 {
        store.create(&format!("other-{i}"), b"x").unwrap();
    }
    let period = store::CANARY_PERIOD_SECONDS * SECOND;
    for round in 0..2 * store::CANARY_SLOTS {
        let check = store::check_canary(&store, T0 + round * period).unwrap();
        assert_eq!(check, store::Canary::Present, "round {round}");
    }
}

#[test]
fn a_vanished_response_is_reported() {
    let zone = ngx();
    let config = limits_config();
    let exchange = Exchange::new(&config, &zone).for_tenant("shop");
    let first = exchange.send("\"k\"", "POST", "/pay", b"");
    exchange.respond("\"k\"", &first, 200, b"ok");
    let response_key = idempotency::response_key(0, 0);
    let (_, cas) = zone.get(&response_key).unwrap().unwrap();
    zone.set(&response_key, None, cas).unwrap();
    let store = Counting {
        store: &zone,
        evicted: Cell::new(0),
    };
    let forward = forwarded(exchange.headers(Some("\"k\""), "POST", "/pay"));
    let pending = forward.idempotency.clone().unwrap();
    let step = engine::begin_idempotent(
        &config,
        &pending,
        &request(Some("shop"), "POST", "/pay"),
        Some(b""),
        &forward,
        &super::host(T0),
        &store,
    );
    let (reply, _) = reply_of(step);
    assert_eq!(
        reply.status, 409,
        "completed, response gone: not replayable"
    );
    assert_eq!(store.evicted.get(), 1);
}

// ---- per-tenant share ----

const SHARED: &str = r#"{"version":1,"tenant":{"trust_header_without_jwt":true},
    "store":{"idempotency_buckets":64},
    "defaults":{"idempotency":{"methods":["POST"],"ttl_seconds":60}},
    "tenants":{"greedy":{},"polite":{}}}"#;

fn is_tenant_full(step: &IdempotencyStep) -> bool {
    matches!(step, IdempotencyStep::Reply(reply, Outcome::Rejected(ProblemKind::IdempotencyUnavailable)) if reply.status == 503)
}

pub(super) fn tenant_share_keeps_other_tenants_writing() {
    let config = parsed(SHARED);
    assert_eq!(config.store.idempotency_tenant_share_percent, 25);
    let share = StoreParams::of(&config.store).tenant_slots;
    assert_eq!(share, 128, "a quarter of 64 × 8 records");
    let store = super::new_store();
    let greedy = Exchange::new(&config, &store).for_tenant("greedy");
    let mut claimed = Vec::new();
    let mut refused = 0;
    for i in 0..400 {
        let key = format!("\"g-{i}\"");
        let step = greedy.send(&key, "POST", "/pay", b"x");
        match step {
            IdempotencyStep::Proceed(_) => claimed.push((key, step)),
            ref other => {
                assert!(is_tenant_full(other), "{other:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((claimed.len(), refused), (128, 272));
    let (reply, _) = reply_of(greedy.send("\"g-more\"", "POST", "/pay", b"x"));
    let detail = super::problem_body(&reply)["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.contains("share"), "{detail}");
    assert!(super::header(&reply.headers, "retry-after").is_some());
    // Another tenant's new keys all succeed.
    let polite = Exchange::new(&config, &store).for_tenant("polite");
    for i in 0..50 {
        super::assert_proceeds(&polite.send(&format!("\"p-{i}\""), "POST", "/pay", b"y"));
    }
    // Completing keeps the share held; an upstream failure gives a unit back.
    let (key, step) = claimed.swap_remove(0);
    greedy.respond(&key, &step, 200, b"done");
    assert!(is_tenant_full(&greedy.send(
        "\"g-after-200\"",
        "POST",
        "/pay",
        b"x"
    )));
    let (key, step) = claimed.swap_remove(0);
    greedy.respond(&key, &step, 503, b"down");
    super::assert_proceeds(&greedy.send("\"g-after-503\"", "POST", "/pay", b"x"));
    // A completed record's unit lapses with the record (its TTL), not at claim +
    // in-flight timeout + TTL: one unit is free once the completed record expired.
    let at_ttl = greedy.after(60 + 4);
    super::assert_proceeds(&at_ttl.send("\"g-ttl-1\"", "POST", "/pay", b"x"));
    assert!(is_tenant_full(&at_ttl.send(
        "\"g-ttl-2\"",
        "POST",
        "/pay",
        b"x"
    )));
    // Once the records must have expired (in-flight timeout + TTL), the share is free again.
    let later = greedy.after(60 + 60 + 8);
    super::assert_proceeds(&later.send("\"g-later\"", "POST", "/pay", b"x"));
}

/// Tenants not under `tenants` share one share: inventing tenant ids buys nothing.
#[test]
fn unknown_tenants_share_one_share() {
    let config = parsed(SHARED);
    for store in both_hosts() {
        let mut claimed = 0;
        for i in 0..300 {
            let tenant = format!("invented-{i}");
            let exchange = Exchange::new(&config, &store).for_tenant(&tenant);
            match exchange.send("\"k\"", "POST", "/pay", b"x") {
                IdempotencyStep::Proceed(_) => claimed += 1,
                other => assert!(is_tenant_full(&other), "{other:?}"),
            }
        }
        assert_eq!(claimed, 128, "{:?}", store.semantics());
        let polite = Exchange::new(&config, &store).for_tenant("polite");
        super::assert_proceeds(&polite.send("\"p\"", "POST", "/pay", b"y"));
        // One ledger for all of them, plus buckets and nothing else.
        assert!(store.len() <= 64 + 2, "{} keys", store.len());
    }
}

/// Rate-limit state of unknown tenants lives in a fixed table, whatever ids clients send.
#[test]
fn unknown_tenants_cannot_grow_the_store() {
    let config = parsed(
        r#"{"version":1,"tenant":{"trust_header_without_jwt":true},
            "store":{"unknown_tenant_slots":16},
            "defaults":{"rate_limit":{"requests":2,"per_seconds":1}},
            "tenants":{"known":{"rate_limit":{"requests":1,"per_seconds":3600}}}}"#,
    );
    for store in both_hosts() {
        let status = |tenant: &str, now: u64| {
            super::status_of(&engine::evaluate(
                &config,
                &request(Some(tenant), "GET", "/"),
                &super::host(now),
                &store,
            ))
        };
        // Each new id gets its own exact limit while its state is live.
        for i in 0..8 {
            let tenant = format!("u-{i}");
            let statuses: Vec<u32> = (0..3).map(|_| status(&tenant, T0)).collect();
            assert_eq!(statuses, [200, 200, 429], "{tenant}");
        }
        // Thousands of ids later (four a second, at most one key's alternates'
        // worth; a second later their states are idle again), the table holds at
        // most 16 × 4 keys.
        for i in 0..2000u64 {
            assert_eq!(status(&format!("n-{i}"), T0 + (2 + i / 4) * SECOND), 200);
        }
        assert!(store.len() <= 16 * 4, "{} keys", store.len());
        assert_eq!(status("known", T0), 200);
        assert_eq!(status("known", T0), 429);
    }
}

#[test]
fn tenant_share_keeps_other_tenants_writing_under_envoy() {
    tenant_share_keeps_other_tenants_writing();
}

#[test]
fn tenant_share_is_configurable_and_validated() {
    let all = parsed(&SHARED.replace(
        r#""idempotency_buckets":64"#,
        r#""idempotency_buckets":64,"idempotency_tenant_share_percent":100"#,
    ));
    assert_eq!(StoreParams::of(&all.store).tenant_slots, u32::MAX);
    assert_eq!(idempotency::tenant_slots(1, 1), 1, "at least one record");
    for bad in ["0", "101", "-1", "\"25\""] {
        let document = SHARED.replace(
            r#""idempotency_buckets":64"#,
            &format!(r#""idempotency_buckets":64,"idempotency_tenant_share_percent":{bad}"#),
        );
        let err = super::parse_error(&document);
        assert_eq!(
            err.path, "store.idempotency_tenant_share_percent",
            "{bad}: {err}"
        );
    }
    assert_eq!(StoreConfig::default().idempotency_tenant_share_percent, 25);
    assert_eq!(idempotency::tenant_bucket_slots(25), 4, "half a bucket");
    assert_eq!(idempotency::tenant_bucket_slots(100), 8);
}
