//! Test-only fault injection (`--features fault-injection`): lets the e2e tests
//! provoke a panic (to prove `FAIL_RELOAD` recovers) and corrupt shared-data
//! values (to prove they are read as absent). Not compiled into the shipped filter.

use proxy_wasm::hostcalls;

/// Header naming the fault: `panic`, `panic-in-response` (the VM dies after
/// upstream answered, mid-flight for an idempotent request), or
/// `corrupt <shared-data key>`.
pub const FAULT_HEADER: &str = "x-tenant-guard-fault";

/// The command that defers the panic to the response headers.
pub const PANIC_IN_RESPONSE: &str = "panic-in-response";

#[allow(clippy::panic)]
pub fn panic_in_response() {
    panic!("tenant-guard fault injection: panic in the response");
}

#[allow(clippy::panic)]
pub fn inject(command: &str) {
    if command == "panic" {
        panic!("tenant-guard fault injection: panic requested");
    }
    if let Some(key) = command.strip_prefix("corrupt ") {
        // The key's own tag with a garbage payload: a corrupt value of this key
        // (a value with another key's tag would be skipped as foreign instead).
        let key = key.trim();
        let value = tenant_guard_core::store::tagged(key, b"\xffcorrupted by fault injection");
        let _ = hostcalls::set_shared_data(key, Some(&value), None);
    }
}
