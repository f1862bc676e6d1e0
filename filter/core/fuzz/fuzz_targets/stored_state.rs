//! Shared-data values are input too (another build, a corrupted write): rate-limit
//! state and idempotency records of any shape are treated as absent, never panicked on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenant_guard_core::config::StoreConfig;
use tenant_guard_core::idempotency::{self, Fingerprint, StoreParams};
use tenant_guard_core::ratelimit::{self, RateParams};
use tenant_guard_core::store::{MemoryStore, SharedStore};

const NOW: u64 = 1_700_000_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    let _ = ratelimit::decode_state(data);
    let store = MemoryStore::new();
    let key = ratelimit::state_key("t", "tenant");
    let _ = store.set(&key, data, None);
    let params = RateParams::new(10, 60, 10);
    let _ = ratelimit::check_and_consume(&store, &key, &params, NOW, &StoreConfig::default());

    let (bucket_bytes, response_bytes) = data.split_at(data.len() / 2);
    let _ = store.set(&idempotency::bucket_key(0), bucket_bytes, None);
    for slot in 0..8 {
        let _ = store.set(&idempotency::response_key(0, slot), response_bytes, None);
    }
    let store_params = StoreParams {
        buckets: 1,
        max_cas_retries: 8,
    };
    let fingerprint = Fingerprint::of("POST", "/", Some(b""));
    if let Ok(idempotency::Begin::Claimed(claim)) =
        idempotency::begin(&store, &store_params, "t", "k", fingerprint, 60, NOW, 7)
    {
        let _ = idempotency::seal(&store, &store_params, &claim, data);
        let _ = idempotency::complete(&store, &store_params, &claim, None, 200, 60, NOW);
    }
    let _ = idempotency::begin(&store, &store_params, "t", "k", fingerprint, 60, NOW, 9);
    let _ = idempotency::reclaim(&store, 0..1, NOW + 1_000_000_000_000);
});
