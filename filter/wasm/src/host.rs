//! Thin wrappers over `proxy_wasm::hostcalls`: shared data as a
//! [`SharedStore`], header access, local replies, time, randomness, metrics and
//! logging. Host errors become values (or are logged), never panics.
//!
//! Header values cross the boundary as bytes: the SDK's string-returning
//! `get_map_value` / `get_map` unwrap UTF-8 and would trap on a client's `0xff`,
//! so only the `_bytes` variants are used and the core decides what a value
//! means. `tests/tests/wasm_imports.rs` keeps the list of SDK calls allowed here.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};
use tenant_guard_core::cluster::{wire, Call, CallOutcome, StoreEvent};
use tenant_guard_core::config::CompiledConfig;
use tenant_guard_core::engine::{HostInputs, LocalReply, Outcome, QuotaUse};
use tenant_guard_core::header_map::HeaderMap;
use tenant_guard_core::metrics::{self, CounterKey};
use tenant_guard_core::store::{self, CasOutcome, HostSemantics, SharedStore, StoreError};

/// Logs, ignoring a host that cannot log.
pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

pub fn plugin_configuration() -> Result<Vec<u8>, String> {
    match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err("rejected configuration: the plugin configuration is empty".to_owned()),
        Err(status) => Err(format!(
            "rejected configuration: cannot read it ({status:?})"
        )),
    }
}

/// The first value of request header `name`, as the client sent it.
pub fn request_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

/// The request's whole header map, read in one host call when `whole`
/// (`CompiledConfig::reads_whole_request_map`); `None` when not asked for or
/// when the host cannot answer (logged once per worker): the headers are then
/// read one by one, which answers the same.
pub fn request_header_map(whole: bool) -> Option<Vec<u8>> {
    if !whole {
        return None;
    }
    raw::header_map_pairs(MapType::HttpRequestHeaders)
        .map_err(|status| log_whole_map_problem(&format!("cannot be read ({status:?})")))
        .ok()
}

/// A request's headers: looked up in its whole map, or read one host call each.
pub enum RequestHeaders<'a> {
    Whole(HeaderMap<'a>),
    OneByOne,
}

impl<'a> RequestHeaders<'a> {
    /// Over `map` (from [`request_header_map`]), checked once here; a map that
    /// does not parse (no host has sent one) is logged once per worker and
    /// the headers are read one by one instead.
    pub fn over(map: Option<&'a [u8]>) -> Self {
        let Some(bytes) = map else {
            return Self::OneByOne;
        };
        match HeaderMap::parse(bytes) {
            Some(map) => Self::Whole(map),
            None => {
                log_whole_map_problem(&format!("is not a proxy-wasm map ({} bytes)", bytes.len()));
                Self::OneByOne
            }
        }
    }

    /// The first value of `name`, as the client sent it.
    pub fn get(&self, name: &str) -> Option<Cow<'a, [u8]>> {
        match self {
            Self::Whole(map) => map.get(name).map(Cow::Borrowed),
            Self::OneByOne => request_header(name).map(Cow::Owned),
        }
    }

    /// How many `name` lines the request carries (the single-value read shows the first only).
    pub fn count(&self, name: &str) -> usize {
        match self {
            Self::Whole(map) => map.count(name),
            Self::OneByOne => header_count(MapType::HttpRequestHeaders, name),
        }
    }
}

fn log_whole_map_problem(problem: &str) {
    if !WHOLE_MAP_PROBLEM_LOGGED.with(|logged| logged.replace(true)) {
        log(
            LogLevel::Warn,
            &format!("the request header map {problem}: reading headers one by one"),
        );
    }
}

thread_local! {
    static WHOLE_MAP_PROBLEM_LOGGED: Cell<bool> = const { Cell::new(false) };
}

/// How many `name` lines the host's map `map_type` holds (0 when it cannot be read).
fn header_count(map_type: MapType, name: &str) -> usize {
    raw::header_map_pairs(map_type)
        .ok()
        .and_then(|bytes| HeaderMap::parse(&bytes).map(|map| map.count(name)))
        .unwrap_or(0)
}

/// The one host call the SDK wraps with panics: its `get_map_bytes`
/// panics on a status other than `Ok` and on a name that is not UTF-8 (a
/// client's byte through a host that passes it on), so the map is read here
/// and parsed by the core (`HeaderMap`), which keeps names as bytes.
#[allow(unsafe_code)]
mod raw {
    use proxy_wasm::types::{MapType, Status};

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: MapType,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> Status;
    }

    /// The serialized map `map_type` (empty when the host has no buffer for
    /// it), or the status of a host that answers otherwise than `Ok`.
    pub fn header_map_pairs(map_type: MapType) -> Result<Vec<u8>, Status> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the import is the one the SDK declares. On `Ok` the host has
        // written `size` bytes into memory it allocated through this module's
        // `proxy_on_memory_allocate`, which the SDK serves with a `Vec<u8>` of
        // exactly that capacity, so the buffer is owned here (as the SDK's
        // `get_map_bytes` takes it).
        unsafe {
            match proxy_get_header_map_pairs(map_type, &mut data, &mut size) {
                Status::Ok if data.is_null() => Ok(Vec::new()),
                Status::Ok => Ok(Vec::from_raw_parts(data, size, size)),
                status => Err(status),
            }
        }
    }
}

pub fn set_request_header(name: &str, value: &str) {
    if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)) {
        log(
            LogLevel::Warn,
            &format!("cannot set request header {name}: {status:?}"),
        );
    }
}

pub fn remove_request_header(name: &str) {
    if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None) {
        log(
            LogLevel::Warn,
            &format!("cannot remove request header {name}: {status:?}"),
        );
    }
}

/// The first value of response header `name`, as the upstream sent it.
pub fn response_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
}

/// How many `name` lines the response carries (read only when one is there).
pub fn response_header_count(name: &str) -> usize {
    header_count(MapType::HttpResponseHeaders, name)
}

pub fn remove_response_header(name: &str) {
    if let Err(status) = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, None) {
        log(
            LogLevel::Warn,
            &format!("cannot remove response header {name}: {status:?}"),
        );
    }
}

pub fn set_response_header(name: &str, value: &str) {
    if let Err(status) = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value)) {
        log(
            LogLevel::Warn,
            &format!("cannot set response header {name}: {status:?}"),
        );
    }
}

pub fn send_local_reply(reply: &LocalReply) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    if let Err(status) = hostcalls::send_http_response(reply.status, headers, Some(&reply.body)) {
        log(
            LogLevel::Error,
            &format!("cannot send local reply: {status:?}"),
        );
    }
}

pub fn request_body(size: usize) -> Vec<u8> {
    body(BufferType::HttpRequestBody, 0, size)
}

/// Bytes `from..to` of the response body the host holds.
pub fn response_body(from: usize, to: usize) -> Vec<u8> {
    body(BufferType::HttpResponseBody, from, to.saturating_sub(from))
}

fn body(buffer: BufferType, from: usize, size: usize) -> Vec<u8> {
    match hostcalls::get_buffer(buffer, from, size) {
        Ok(bytes) => bytes.unwrap_or_default(),
        Err(status) => {
            log(
                LogLevel::Warn,
                &format!("cannot read body buffer: {status:?}"),
            );
            Vec::new()
        }
    }
}

pub fn response_status() -> u16 {
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|status| std::str::from_utf8(&status).ok()?.parse().ok())
        .unwrap_or(0)
}

/// Upstream's response headers with their values as bytes (any byte the host
/// let through); a name that is not UTF-8 (no host passes one on) is kept
/// with U+FFFD where its bytes were, never a panic as in the SDK's reader.
pub fn response_headers() -> Vec<(String, Vec<u8>)> {
    let bytes = raw::header_map_pairs(MapType::HttpResponseHeaders).unwrap_or_else(|status| {
        log(
            LogLevel::Warn,
            &format!("cannot read the response headers ({status:?}): none recorded"),
        );
        Vec::new()
    });
    let Some(map) = HeaderMap::parse(&bytes) else {
        log(
            LogLevel::Warn,
            &format!(
                "the response header map is not a proxy-wasm map ({} bytes): none recorded",
                bytes.len()
            ),
        );
        return Vec::new();
    };
    map.iter()
        .map(|(name, value)| (String::from_utf8_lossy(name).into_owned(), value.to_vec()))
        .collect()
}

pub fn set_tick_period(period: Duration) {
    if let Err(status) = hostcalls::set_tick_period(period) {
        log(
            LogLevel::Warn,
            &format!("cannot set tick period: {status:?}"),
        );
    }
}

pub fn now_unix_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map(|elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

thread_local! {
    static RNG_STATE: Cell<u64> = const { Cell::new(0) };
}

/// Current time and fresh randomness for one request.
pub fn inputs() -> HostInputs {
    let now_unix_ns = now_unix_ns();
    let mut random = [0u8; 10];
    let first = next_random(now_unix_ns).to_le_bytes();
    let second = next_random(now_unix_ns).to_le_bytes();
    for (slot, byte) in random.iter_mut().zip(first.iter().chain(second.iter())) {
        *slot = *byte;
    }
    HostInputs {
        now_unix_ns,
        random,
    }
}

/// splitmix64 seeded once per VM from the host's entropy (WASI `random_get`):
/// ids must be unique, not secret, and one host call per request is avoidable.
fn next_random(now_ns: u64) -> u64 {
    RNG_STATE.with(|state| {
        let mut current = state.get();
        if current == 0 {
            let mut seed = [0u8; 8];
            current = match getrandom::getrandom(&mut seed) {
                Ok(()) => u64::from_le_bytes(seed),
                Err(_) => now_ns,
            } | 1;
        }
        current = current.wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(current);
        let mut z = current;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

thread_local! {
    /// How this host implements shared data, decided once per VM by [`probe_store`].
    static SEMANTICS: Cell<HostSemantics> = const { Cell::new(HostSemantics::Envoy) };
    /// Evictions the core noticed since the last [`take_evictions`].
    static EVICTIONS: Cell<u32> = const { Cell::new(0) };
}

/// Probes the host's shared-data semantics (`tenant_guard_core::store::probe`) and
/// keeps the answer for every [`HostStore`] of this VM.
pub fn probe_store(namespace: Option<&str>) -> Result<HostSemantics, StoreError> {
    let semantics = store::probe(&HostStore { namespace })?;
    SEMANTICS.with(|cell| cell.set(semantics));
    Ok(semantics)
}

pub fn semantics() -> HostSemantics {
    SEMANTICS.with(Cell::get)
}

/// Evictions noticed since the last call.
pub fn take_evictions() -> u32 {
    EVICTIONS.with(|cell| cell.replace(0))
}

/// Shared data of the VM, as the core's store; keys get `<namespace>/` when configured.
///
/// `hostcalls::get_shared_data` / `set_shared_data` panic only on a status other
/// than `Ok`/`NotFound` (get) or `Ok`/`CasMismatch` (set); neither Envoy nor
/// ngx_wasm_module returns another one (ngx_wasm_module traps instead, e.g. on a
/// full zone with `eviction=none`). A NULL value (`None`) deletes on ngx_wasm_module.
#[derive(Debug, Clone, Copy)]
pub struct HostStore<'a> {
    pub namespace: Option<&'a str>,
}

impl HostStore<'_> {
    fn key<'k>(&self, key: &'k str) -> std::borrow::Cow<'k, str> {
        match self.namespace {
            Some(namespace) => format!("{namespace}/{key}").into(),
            None => key.into(),
        }
    }
}

impl SharedStore for HostStore<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        match hostcalls::get_shared_data(&self.key(key)) {
            Ok((None, None)) => Ok(None),
            // An existing key with an empty value: present, to be overwritten by CAS.
            Ok((value, cas)) => Ok(Some((value.unwrap_or_default(), cas.unwrap_or(0)))),
            Err(status) => Err(StoreError(format!("get_shared_data: {status:?}"))),
        }
    }

    fn set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> Result<CasOutcome, StoreError> {
        match hostcalls::set_shared_data(&self.key(key), value, Some(cas)) {
            Ok(()) => Ok(CasOutcome::Written),
            Err(Status::CasMismatch) => Ok(CasOutcome::Conflict),
            Err(status) => Err(StoreError(format!("set_shared_data: {status:?}"))),
        }
    }

    fn semantics(&self) -> HostSemantics {
        semantics()
    }

    fn note_evicted(&self) {
        EVICTIONS.with(|cell| cell.set(cell.get().saturating_add(1)));
    }
}

/// The filter's counters, exposed by Envoy under `wasmcustom.`.
///
/// Request outcomes are counted in the VM and handed to the host by [`Metrics::flush`]
/// (from the root context's tick), not per request: a host call per request costs
/// more than the counter is worth, and a scrape a second late loses nothing.
/// Each outcome counts under its tenant (`tenant_guard_core::metrics`); a counter is
/// defined with the host the first time it has something to report.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `None`: metrics are off (Kong before 3.9), or no configuration yet.
    config: Option<Rc<CompiledConfig>>,
    pending: RefCell<HashMap<CounterKey, u32>>,
    defined: RefCell<HashMap<CounterKey, Option<u32>>>,
    config_rejected: Option<u32>,
    reclaimed: Option<u32>,
    evicted: Option<u32>,
    /// Usage headers ignored (malformed, repeated, over `usage_max`).
    usage_ignored: Option<u32>,
    /// The quota gauges defined so far: (tenant, limit) → the `used` gauge.
    quota_gauges: RefCell<HashMap<(String, String), Option<u32>>>,
    store: Option<StoreCounters>,
}

impl Metrics {
    /// Defines the counters; `enabled: false` (Kong before 3.9) makes every count a no-op.
    pub fn define(enabled: bool, config: Option<Rc<CompiledConfig>>) -> Self {
        if !enabled {
            return Self::default();
        }
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        let cluster_mode = config
            .as_deref()
            .is_some_and(|config| config.store.cluster.is_some());
        let reports_usage = config
            .as_deref()
            .is_some_and(|config| !config.usage_headers.is_empty());
        let defined = config.as_deref().map_or_else(HashMap::new, |config| {
            metrics::every_outcome()
                .map(|outcome| {
                    let key = metrics::counter_key(config, None, outcome);
                    (key, counter(&metrics::counter_name(config, key)))
                })
                .collect()
        });
        Self {
            config,
            pending: RefCell::default(),
            defined: RefCell::new(defined),
            config_rejected: counter("tenant_guard_config_rejected"),
            reclaimed: counter("tenant_guard_idempotency_reclaimed"),
            evicted: counter("tenant_guard_store_evicted"),
            quota_gauges: RefCell::default(),
            usage_ignored: reports_usage
                .then(|| counter("tenant_guard_usage_ignored"))
                .flatten(),
            store: cluster_mode.then(|| StoreCounters {
                round_trips: counter("tenant_guard_store_round_trips"),
                failures: counter("tenant_guard_store_failures"),
                fallbacks: counter("tenant_guard_store_fallbacks"),
                down: counter("tenant_guard_store_down"),
                recovered: counter("tenant_guard_store_recovered"),
                returned: counter("tenant_guard_store_lease_returned"),
                retries: counter("tenant_guard_store_retries"),
                abandoned: counter("tenant_guard_store_retries_abandoned"),
            }),
        }
    }

    /// Counts one cluster-store event (defined only in cluster mode).
    pub fn count_store(&self, event: &StoreEvent) {
        let Some(counters) = &self.store else {
            return;
        };
        let (metric, by) = match event {
            StoreEvent::RoundTrip => (counters.round_trips, 1),
            StoreEvent::Failed(_) => (counters.failures, 1),
            StoreEvent::FellBack => (counters.fallbacks, 1),
            StoreEvent::WentDown(_) => (counters.down, 1),
            StoreEvent::CameBack => (counters.recovered, 1),
            StoreEvent::Returned(slots) => {
                (counters.returned, i64::try_from(*slots).unwrap_or(i64::MAX))
            }
            StoreEvent::Retried => (counters.retries, 1),
            StoreEvent::RetryAbandoned => (counters.abandoned, 1),
        };
        increment(metric, by);
    }

    pub fn enabled(&self) -> bool {
        self.config_rejected.is_some()
    }

    /// Counts one request outcome of `tenant`; the host sees it at the next [`Metrics::flush`].
    pub fn count(&self, tenant: Option<&str>, outcome: Outcome) {
        let Some(config) = self.config.as_deref() else {
            return;
        };
        let key = metrics::counter_key(config, tenant, outcome);
        if let Ok(mut pending) = self.pending.try_borrow_mut() {
            let count = pending.entry(key).or_insert(0);
            *count = count.saturating_add(1);
        }
    }

    /// Hands the outcomes counted since the last flush to the host.
    pub fn flush(&self) {
        let Some(config) = self.config.as_deref() else {
            return;
        };
        let (Ok(mut pending), Ok(mut defined)) =
            (self.pending.try_borrow_mut(), self.defined.try_borrow_mut())
        else {
            return;
        };
        for (key, count) in pending.drain() {
            let metric = *defined.entry(key).or_insert_with(|| {
                let name = metrics::counter_name(config, key);
                hostcalls::define_metric(MetricType::Counter, &name).ok()
            });
            increment(metric, i64::from(count));
        }
    }

    pub fn count_config_rejected(&self) {
        increment(self.config_rejected, 1);
    }

    pub fn count_reclaimed(&self, count: u32) {
        increment(self.reclaimed, i64::from(count));
    }

    /// Sets a configured tenant's quota gauges (defined, with the quota's
    /// size, the first time): one host call per quota and request.
    pub fn quota_used(&self, tenant: Option<&str>, quota: &QuotaUse) {
        let (Some(config), Some(tenant)) = (self.config.as_deref(), tenant) else {
            return;
        };
        if self.config_rejected.is_none() {
            return;
        }
        let Ok(mut gauges) = self.quota_gauges.try_borrow_mut() else {
            return;
        };
        let used = *gauges
            .entry((tenant.to_owned(), quota.limit.clone()))
            .or_insert_with(|| {
                let [used, limit] = metrics::quota_gauge_names(config, tenant, &quota.limit);
                if let Ok(id) = hostcalls::define_metric(MetricType::Gauge, &limit) {
                    let _ = hostcalls::record_metric(id, quota.requests);
                }
                hostcalls::define_metric(MetricType::Gauge, &used).ok()
            });
        if let Some(id) = used {
            let _ = hostcalls::record_metric(id, quota.used);
        }
    }

    pub fn count_usage_ignored(&self, count: u8) {
        increment(self.usage_ignored, i64::from(count));
    }

    /// Shared-data entries the host evicted (a canary or a record that vanished).
    pub fn count_evicted(&self, count: u32) {
        increment(self.evicted, i64::from(count));
    }
}

/// The cluster-store counters of one configuration.
#[derive(Debug, Default)]
struct StoreCounters {
    round_trips: Option<u32>,
    failures: Option<u32>,
    fallbacks: Option<u32>,
    down: Option<u32>,
    recovered: Option<u32>,
    /// Lapsed lease slots given back to Redis.
    returned: Option<u32>,
    /// Completes and releases sent again after a failure.
    retries: Option<u32>,
    /// Completes and releases given up (deadline passed, queue full).
    abandoned: Option<u32>,
}

/// Sends `call` to the store sidecar; the host token its answer will carry.
/// `on_behalf_of` makes another context (the plugin's root, which outlives
/// the request) own the call, so Envoy does not cancel it when the request
/// ends; `back_to` is the context to return to.
pub fn dispatch_store_call(call: &Call, on_behalf_of: Option<(u32, u32)>) -> Result<u32, String> {
    let timeout = Duration::from_millis(call.timeout_ms);
    let headers = vec![
        (":method", "POST"),
        (":path", call.path),
        (":authority", wire::AUTHORITY),
        ("content-type", "application/json"),
    ];
    if let Some((owner, _)) = on_behalf_of {
        let _ = hostcalls::set_effective_context(owner);
    }
    let dispatched = hostcalls::dispatch_http_call(
        &call.upstream,
        headers,
        Some(&call.body),
        Vec::new(),
        timeout,
    );
    if let Some((_, back_to)) = on_behalf_of {
        let _ = hostcalls::set_effective_context(back_to);
    }
    dispatched.map_err(|status| {
        format!(
            "the host refused the call to `{}` ({status:?})",
            call.upstream
        )
    })
}

/// What the store answered to a call (read in `on_http_call_response`).
pub fn store_call_outcome(body_size: usize) -> CallOutcome {
    let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|value| std::str::from_utf8(&value).ok()?.parse::<u16>().ok());
    let Some(status) = status else {
        return CallOutcome::Failed(
            "no answer from the store (refused, reset or timed out)".to_owned(),
        );
    };
    if body_size > wire::MAX_ANSWER_BYTES {
        return CallOutcome::Failed(format!("the store answered {body_size} bytes"));
    }
    let body = match hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size) {
        Ok(body) => body.unwrap_or_default(),
        Err(status) => {
            return CallOutcome::Failed(format!("the answer body could not be read ({status:?})"))
        }
    };
    CallOutcome::Answered { status, body }
}

/// Lets a stream that waited for a store answer go on. A response waits only
/// on Envoy (ngx_wasm_module cannot pause response phases; the core sends
/// instead of waiting there).
pub fn resume(response_phase: bool) {
    let resumed = if response_phase {
        hostcalls::resume_http_response()
    } else {
        hostcalls::resume_http_request()
    };
    if let Err(status) = resumed {
        log(
            LogLevel::Error,
            &format!("could not resume the stream after a store answer ({status:?})"),
        );
    }
}

fn increment(metric: Option<u32>, by: i64) {
    if let Some(id) = metric {
        let _ = hostcalls::increment_metric(id, by);
    }
}
