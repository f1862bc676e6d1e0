//! The built `.wasm` only imports what Kong's engine (ngx_wasm_module, Kong
//! 3.4–3.10) provides, and only calls what it implements.
//!
//! The import section is read with a small parser written here (no dependency).
//! The allow-lists come from ngx_wasm_module's host-function tables:
//! - proxy-wasm: `src/common/proxy_wasm/ngx_proxy_wasm_host.c`
//!   (`ngx_proxy_wasm_hfuncs[]`, module `env`). Entries mapped to
//!   `ngx_proxy_wasm_hfuncs_nop` link but trap when called ("host trap (function
//!   not yet implemented)", Kong/ngx_wasm_module#454).
//! - WASI preview 1: `src/wasm/wasi/ngx_wasi_host.c` (`ngx_wasi_hfuncs[]`,
//!   module `wasi_snapshot_preview1`): `args_get`, `args_sizes_get`,
//!   `clock_time_get`, `environ_get`, `environ_sizes_get`, `fd_write`,
//!   `proc_exit` (a nop: traps), `random_get`. Any other WASI import fails to link.
//!
//! `TENANT_GUARD_WASM=<path>` checks a prebuilt module instead of building one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;

/// proxy-wasm functions ngx_wasm_module implements.
const KONG_IMPLEMENTED: &[&str] = &[
    "proxy_log",
    "proxy_set_effective_context",
    "proxy_continue_stream",
    "proxy_send_http_response",
    "proxy_send_local_response",
    "proxy_continue_request",
    "proxy_get_buffer",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer",
    "proxy_set_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_set_header_map_pairs",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_dispatch_http_call",
    "proxy_http_call",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_current_time_nanoseconds",
    "proxy_get_configuration",
    "proxy_get_property",
    "proxy_set_property",
];

/// Resolvable in ngx_wasm_module but not implemented there (calling traps):
/// the proxy-wasm Rust SDK's dispatcher references them, so they are imported,
/// and the filter must never call them. Each with the reason it is harmless.
const KONG_NYI_IMPORTED_NOT_CALLED: &[(&str, &str)] = &[
    (
        "proxy_done",
        "SDK glue for RootContext::done(); the filter never defers a shutdown",
    ),
    (
        "proxy_close_stream",
        "SDK glue; the filter never closes streams",
    ),
    (
        "proxy_get_status",
        "SDK glue for gRPC call responses; the filter reads HTTP call answers with get_map_value_bytes and get_buffer",
    ),
    (
        "proxy_grpc_call",
        "SDK glue; no gRPC dispatch (Kong has none)",
    ),
    ("proxy_grpc_stream", "SDK glue; no gRPC dispatch"),
    ("proxy_grpc_send", "SDK glue; no gRPC dispatch"),
    ("proxy_grpc_cancel", "SDK glue; no gRPC dispatch"),
    ("proxy_grpc_close", "SDK glue; no gRPC dispatch"),
    (
        "proxy_call_foreign_function",
        "SDK glue; no foreign functions",
    ),
    ("proxy_resolve_shared_queue", "SDK glue; no shared queues"),
];

/// Called by the filter; ngx_wasm_module implements them only since the
/// version bundled with Kong 3.9 ("Added support for Proxy-Wasm metrics",
/// Kong 3.9 changelog, Kong/kong#13681). On Kong 3.4–3.8 they trap.
const KONG_3_9_METRICS: &[&str] = &[
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
];

/// WASI preview 1 functions ngx_wasm_module provides.
const KONG_WASI: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "environ_get",
    "environ_sizes_get",
    "fd_write",
    "proc_exit",
    "random_get",
];

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Import {
    module: String,
    name: String,
    kind: u8,
}

/// Reads a LEB128 u32 at `*pos`.
fn uleb(bytes: &[u8], pos: &mut usize) -> u32 {
    let mut result: u32 = 0;
    let mut shift = 0;
    loop {
        let byte = bytes[*pos];
        *pos += 1;
        result |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return result;
        }
        shift += 7;
        assert!(shift < 35, "LEB128 too long at {pos}");
    }
}

fn name(bytes: &[u8], pos: &mut usize) -> String {
    let len = uleb(bytes, pos) as usize;
    let text = std::str::from_utf8(&bytes[*pos..*pos + len])
        .expect("UTF-8 name")
        .to_owned();
    *pos += len;
    text
}

fn skip_limits(bytes: &[u8], pos: &mut usize) {
    let flags = bytes[*pos];
    *pos += 1;
    uleb(bytes, pos);
    if flags & 0x01 != 0 {
        uleb(bytes, pos);
    }
}

/// The sections of a module: (id, payload range).
fn sections(bytes: &[u8]) -> Vec<(u8, std::ops::Range<usize>)> {
    assert_eq!(&bytes[..4], b"\0asm", "not a wasm module");
    assert_eq!(&bytes[4..8], &[1, 0, 0, 0], "not wasm version 1");
    let mut pos = 8;
    let mut out = Vec::new();
    while pos < bytes.len() {
        let id = bytes[pos];
        pos += 1;
        let size = uleb(bytes, &mut pos) as usize;
        out.push((id, pos..pos + size));
        pos += size;
    }
    out
}

fn imports(bytes: &[u8]) -> Vec<Import> {
    let mut out = Vec::new();
    for (id, range) in sections(bytes) {
        if id != 2 {
            continue;
        }
        let mut pos = range.start;
        let count = uleb(bytes, &mut pos);
        for _ in 0..count {
            let module = name(bytes, &mut pos);
            let field = name(bytes, &mut pos);
            let kind = bytes[pos];
            pos += 1;
            match kind {
                0x00 => {
                    uleb(bytes, &mut pos);
                }
                0x01 => {
                    pos += 1; // reftype
                    skip_limits(bytes, &mut pos);
                }
                0x02 => skip_limits(bytes, &mut pos),
                0x03 => pos += 2, // valtype, mutability
                other => panic!("unknown import kind {other:#x}"),
            }
            out.push(Import {
                module,
                name: field,
                kind,
            });
        }
        assert_eq!(pos, range.end, "import section fully read");
    }
    out
}

fn exports(bytes: &[u8]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (id, range) in sections(bytes) {
        if id != 7 {
            continue;
        }
        let mut pos = range.start;
        let count = uleb(bytes, &mut pos);
        for _ in 0..count {
            out.insert(name(bytes, &mut pos));
            pos += 1;
            uleb(bytes, &mut pos);
        }
    }
    out
}

#[test]
fn every_import_is_provided_by_kongs_ngx_wasm_module() {
    let path = tenant_guard_e2e::wasm_path();
    let bytes = std::fs::read(&path).unwrap();
    let imports = imports(&bytes);
    assert!(!imports.is_empty(), "{} has no imports?", path.display());
    let nyi: BTreeSet<&str> = KONG_NYI_IMPORTED_NOT_CALLED
        .iter()
        .map(|(n, _)| *n)
        .collect();
    let mut report = String::new();
    let mut problems = Vec::new();
    for import in &imports {
        report.push_str(&format!("{}.{}\n", import.module, import.name));
        if import.kind != 0x00 {
            problems.push(format!(
                "{}.{}: only functions may be imported (kind {:#x})",
                import.module, import.name, import.kind
            ));
            continue;
        }
        let known = match import.module.as_str() {
            "env" => {
                KONG_IMPLEMENTED.contains(&import.name.as_str())
                    || nyi.contains(import.name.as_str())
                    || KONG_3_9_METRICS.contains(&import.name.as_str())
            }
            "wasi_snapshot_preview1" => KONG_WASI.contains(&import.name.as_str()),
            _ => false,
        };
        if !known {
            problems.push(format!(
                "{}.{} is not provided by ngx_wasm_module: Kong would refuse to load the filter",
                import.module, import.name
            ));
        }
    }
    println!("imports of {}:\n{report}", path.display());
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // ngx_wasm_module picks the ABI from this export.
    let exports = exports(&bytes);
    assert!(
        exports.contains("proxy_abi_version_0_2_1"),
        "proxy-wasm ABI 0.2.1 export missing: {exports:?}"
    );
    assert!(exports.contains("proxy_on_memory_allocate"));
}

/// The filter's own code never calls what Kong traps on (the imports above
/// are SDK glue), dispatches HTTP only to the store sidecar (cluster mode:
/// `store.cluster.upstream` is an Envoy cluster there and `host:port` on
/// Kong; Kong has no gRPC dispatch), and never pauses in a response phase
/// (ngx_wasm_module cannot: there the core sends completing and releasing a
/// claim without waiting; only on Envoy does a response wait for its record). A source-level guard: if it fails,
/// read kong/README.md "Behaviour on Kong's engine" before changing it.
#[test]
fn filter_source_avoids_what_kong_cannot_do() {
    let dir = tenant_guard_e2e::repo_root().join("filter/wasm/src");
    let mut sources = String::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            sources.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    assert_eq!(
        sources.matches("dispatch_http_call").count(),
        1,
        "filter/wasm/src dispatches HTTP calls outside `host::dispatch_store_call`"
    );
    for forbidden in [
        "dispatch_grpc_call",
        "open_grpc_stream",
        "call_foreign_function",
        "resolve_shared_queue",
        "close_stream",
        "get_log_level",
        "get_metric",
        "done()",
    ] {
        assert!(
            !sources.contains(forbidden),
            "filter/wasm/src uses `{forbidden}`, which Kong's ngx_wasm_module does not implement"
        );
    }
    for hook in [
        "fn on_http_response_headers",
        "fn on_http_response_body",
        "fn on_http_response_trailers",
    ] {
        let Some(start) = sources.find(hook) else {
            continue;
        };
        let rest = &sources[start + hook.len()..];
        let end = rest.find("\n    fn ").unwrap_or(rest.len());
        assert!(
            !rest[..end].contains("Action::Pause"),
            "{hook} pauses: ngx_wasm_module cannot pause in response phases"
        );
    }
}

/// The `proxy_wasm::hostcalls` functions the glue may call, each with why it
/// cannot panic on input. Every SDK call also panics on a host status it does
/// not expect; these are only called where both hosts answer `Ok`/`NotFound`.
const SDK_CALLS_ALLOWED: &[(&str, &str)] = &[
    ("log", "text in, status out"),
    ("get_buffer", "bytes out (plugin configuration, bodies)"),
    ("get_map_value_bytes", "header value as bytes, never UTF-8-unwrapped"),
    ("set_map_value", "only values the filter produced (ASCII)"),
    ("send_http_response", "only headers the filter produced or stored as text"),
    ("set_tick_period", "no input"),
    ("get_current_time", "no input"),
    ("get_shared_data", "bytes out; corrupt values are decoded by the core as absent"),
    ("set_shared_data", "bytes in"),
    ("define_metric", "fixed names"),
    (
        "dispatch_http_call",
        "store calls only (host::dispatch_store_call): headers and body the filter produced; Envoy and ngx_wasm_module answer Ok, BadArgument or InternalFailure, the statuses it maps to Err",
    ),
    (
        "set_effective_context",
        "only ids the host gave (the plugin's root and this request); Ok or BadArgument, both mapped",
    ),
    (
        "resume_http_request",
        "no input; called only after a paused request callback, where both hosts answer Ok",
    ),
    (
        "resume_http_response",
        "no input; Envoy only (a response waiting for its idempotency record), which answers Ok",
    ),

    ("increment_metric", "ids from define_metric"),
    (
        "record_metric",
        "gauge ids from define_metric(Gauge) only (the quota gauges): Ok; ngx_wasm_module traps only for an unknown id or a counter",
    ),
];

/// SDK calls that unwrap host bytes as UTF-8 (`0xff` in a header traps the VM).
/// `get_map_bytes` unwraps the names (a whole map is read with the raw import
/// in `host.rs` and parsed by the core's `HeaderMap`).
const SDK_CALLS_PANICKING: &[&str] = &[
    "get_map_value",
    "get_map",
    "get_map_bytes",
    "get_grpc_status",
];

/// `Context`/`HttpContext`/`RootContext` helper methods of proxy-wasm 0.2.5:
/// each wraps a hostcall in `.unwrap()`, so the glue calls `hostcalls` instead.
const SDK_TRAIT_HELPERS: &[&str] = &[
    "get_http_request_header",
    "get_http_request_headers",
    "get_http_response_header",
    "get_http_response_headers",
    "get_http_request_header_bytes",
    "get_http_request_headers_bytes",
    "get_http_response_header_bytes",
    "get_http_response_headers_bytes",
    "set_http_request_header",
    "set_http_response_header",
    "add_http_request_header",
    "add_http_response_header",
    "remove_http_request_header",
    "remove_http_response_header",
    "get_http_request_body",
    "get_http_response_body",
    "set_http_request_body",
    "set_http_response_body",
    "get_http_request_trailer",
    "get_http_response_trailer",
    "send_http_response",
    "resume_http_request",
    "resume_http_response",
    "reset_http_request",
    "reset_http_response",
    "get_property",
    "set_property",
    "get_shared_data",
    "set_shared_data",
    "get_plugin_configuration",
    "get_vm_configuration",
    "get_current_time",
    "set_tick_period",
    "get_http_call_response_header",
    "get_http_call_response_headers",
    "get_http_call_response_body",
];

fn glue_sources() -> Vec<(String, String)> {
    let dir = tenant_guard_e2e::repo_root().join("filter/wasm/src");
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            sources.push((name, std::fs::read_to_string(&path).unwrap()));
        }
    }
    assert!(
        sources.iter().any(|(name, _)| name == "host.rs"),
        "glue sources not found in {}",
        dir.display()
    );
    sources
}

/// Every `hostcalls::NAME` in filter/wasm/src is on [`SDK_CALLS_ALLOWED`]; a new
/// SDK call must be audited (read its source in proxy-wasm's `hostcalls.rs`)
/// before it is added there.
#[test]
fn glue_calls_only_audited_sdk_functions() {
    let allowed: BTreeSet<&str> = SDK_CALLS_ALLOWED.iter().map(|(name, _)| *name).collect();
    for panicking in SDK_CALLS_PANICKING {
        assert!(!allowed.contains(panicking), "{panicking} is allowed");
    }
    let mut called = BTreeSet::new();
    for (file, text) in glue_sources() {
        let mut rest = text.as_str();
        while let Some(at) = rest.find("hostcalls::") {
            rest = &rest[at + "hostcalls::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() || name.chars().next().unwrap().is_ascii_uppercase() {
                continue;
            }
            assert!(
                allowed.contains(name.as_str()),
                "filter/wasm/src/{file} calls hostcalls::{name}, which is not on the audited list{}",
                if SDK_CALLS_PANICKING.contains(&name.as_str()) {
                    " (it unwraps UTF-8 and traps on hostile bytes: use the _bytes variant)"
                } else {
                    ""
                }
            );
            called.insert(name);
        }
        for helper in SDK_TRAIT_HELPERS {
            for pattern in [format!(".{helper}("), format!("self.{helper}(")] {
                assert!(
                    !text.contains(&pattern),
                    "filter/wasm/src/{file} calls the SDK helper `{helper}`, which unwraps: call hostcalls instead"
                );
            }
        }
    }
    // The scan itself works: the calls the filter is known to make are seen.
    for expected in [
        "get_map_value_bytes",
        "get_shared_data",
        "send_http_response",
    ] {
        assert!(
            called.contains(expected),
            "scan missed {expected}: {called:?}"
        );
    }
}
