//! Shared-data values are input too (another build, a corrupted write, another
//! key's value under a hash collision): rate-limit state, idempotency records
//! and tenant share ledgers of any shape are treated as absent or foreign,
//! never panicked on, on either host model.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenant_guard_core::config::StoreConfig;
use tenant_guard_core::idempotency::{self, Fingerprint, Lifetimes, StoreParams};
use tenant_guard_core::ratelimit::{self, RateParams};
use tenant_guard_core::share;
use tenant_guard_core::store::{self, Eviction, MemoryStore, SharedStore};

const NOW: u64 = 1_700_000_000_000_000_000;

fn run(store: &MemoryStore, data: &[u8]) {
    let _ = ratelimit::decode_state(data);
    let key = ratelimit::state_key("t", "tenant");
    // Raw (a foreign value) and tagged (our key, garbage payload).
    let _ = store.set(&key, Some(data), 0);
    let _ = store.set(&store::alternate_key(&key, 1), Some(&store::tagged(&key, data)), 0);
    let params = RateParams::new(10, 60, 10);
    let _ = ratelimit::check_and_consume(store, &key, &params, NOW, &StoreConfig::default());

    let (bucket_bytes, response_bytes) = data.split_at(data.len() / 2);
    let bucket = idempotency::bucket_key(0);
    let _ = store.set(&bucket, Some(&store::tagged(&bucket, bucket_bytes)), 0);
    for slot in 0..8 {
        let response = idempotency::response_key(0, slot);
        let _ = store.set(&response, Some(&store::tagged(&response, response_bytes)), 0);
    }
    let ledger = share::ledger_key(&share::tenant_hash("t"));
    let _ = store.set(&ledger, Some(&store::tagged(&ledger, data)), 0);
    let store_params = StoreParams {
        buckets: 1,
        max_cas_retries: 8,
        tenant_slots: 4,
        tenant_bucket_slots: 4,
    };
    let lifetimes = Lifetimes {
        in_flight_timeout_seconds: 60,
        ttl_seconds: 60,
        pooled_share: false,
    };
    let fingerprint = Fingerprint::of("POST", "/", Some(b""));
    if let Ok(idempotency::Begin::Claimed(claim)) =
        idempotency::begin(store, &store_params, "t", "k", fingerprint, lifetimes, NOW, 7)
    {
        let _ = idempotency::seal(store, &store_params, &claim, data);
        let _ = idempotency::complete(store, &store_params, &claim, None, 200, 60, NOW);
        let _ = idempotency::release(store, &store_params, &claim);
    }
    let _ = idempotency::begin(store, &store_params, "t", "k", fingerprint, lifetimes, NOW, 9);
    let _ = idempotency::reclaim(store, 0..1, NOW + 1_000_000_000_000);
    let _ = share::held(store, "t", NOW);
}

fuzz_target!(|data: &[u8]| {
    run(&MemoryStore::new(), data);
    run(&MemoryStore::ngx_wasm(64, Eviction::Lru), data);
});
