//! Test-only fault injection (`--features fault-injection`): lets the e2e tests
//! provoke a panic (to prove `FAIL_RELOAD` recovers) and corrupt shared-data
//! values (to prove they are read as absent). Not compiled into the shipped filter.

use proxy_wasm::hostcalls;

/// Header naming the fault: `panic`, or `corrupt <shared-data key>`.
pub const FAULT_HEADER: &str = "x-tenant-guard-fault";

#[allow(clippy::panic)]
pub fn inject(command: &str) {
    if command == "panic" {
        panic!("tenant-guard fault injection: panic requested");
    }
    if let Some(key) = command.strip_prefix("corrupt ") {
        let _ =
            hostcalls::set_shared_data(key.trim(), Some(b"\xffcorrupted by fault injection"), None);
    }
}
