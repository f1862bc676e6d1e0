//! The plugin configuration parser: any bytes give a config or a ConfigError, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenant_guard_core::config;

fuzz_target!(|data: &[u8]| {
    if let Ok(compiled) = config::parse(data) {
        // A config that compiles answers route and tenant lookups without panicking.
        for tenant in compiled.tenants.keys() {
            if let Some(settings) = compiled.tenant_settings(tenant) {
                let _ = settings.policy_for("POST", "/orders/1");
                let applied = settings.applied("POST", "/orders/1");
                let _ = settings.applied_policies(applied).count();
            }
        }
        let _ = compiled.requires_if_match("PUT", "/");
        let _ = compiled.local_quota_warning();
    }
});
