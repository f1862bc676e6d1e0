//! Benchmark reference, never shipped: the least a proxy-wasm filter can do and
//! still do tenant-guard's per-request work — keep or generate a correlation id,
//! forward and echo it, and count the request in one shared-data key per tenant
//! with compare-and-swap. `filter-bench` runs it beside the real filter so the
//! fixed cost of a Wasm filter in Envoy (context creation, stream hooks, host
//! calls) is measured in the same run as the filter's own cost.

use std::cell::Cell;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType, Status};

const CORRELATION: &str = "x-correlation-id";
const TENANT: &str = "x-tenant-id";
const CAS_ATTEMPTS: usize = 8;

#[allow(unsafe_code)]
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(super::Root)
        });
    }}
}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            correlation_id: String::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

thread_local! {
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
}

struct Probe {
    correlation_id: String,
}

impl Context for Probe {}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let incoming = hostcalls::get_map_value(MapType::HttpRequestHeaders, CORRELATION)
            .ok()
            .flatten();
        self.correlation_id = incoming.unwrap_or_else(|| {
            let id = NEXT_ID.with(|next| next.replace(next.get().wrapping_add(1)));
            format!("{id:032x}")
        });
        let _ = hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            CORRELATION,
            Some(&self.correlation_id),
        );
        let tenant = hostcalls::get_map_value(MapType::HttpRequestHeaders, TENANT)
            .ok()
            .flatten()
            .unwrap_or_default();
        count(&format!("probe:{tenant}"));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let _ = hostcalls::set_map_value(
            MapType::HttpResponseHeaders,
            CORRELATION,
            Some(&self.correlation_id),
        );
        Action::Continue
    }
}

/// Increments a little-endian u64 counter under `key` with compare-and-swap.
fn count(key: &str) {
    for _ in 0..CAS_ATTEMPTS {
        let Ok((value, cas)) = hostcalls::get_shared_data(key) else {
            return;
        };
        let current = value
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map_or(0, u64::from_le_bytes);
        // A missing key ignores CAS; a non-zero dummy makes creation atomic.
        let cas = Some(cas.unwrap_or(1));
        match hostcalls::set_shared_data(key, Some(&current.wrapping_add(1).to_le_bytes()), cas) {
            Err(Status::CasMismatch) => continue,
            _ => return,
        }
    }
}
