//! The proxy-wasm glue: the only code that talks to the host. It reads what
//! `tenant_guard_core::engine` needs from the request, applies the decision,
//! and maps host failures to defined outcomes. Every host call goes through
//! `proxy_wasm::hostcalls` functions that return `Result`; nothing here unwraps.

#[cfg(feature = "fault-injection")]
mod fault;
mod host;
mod store_watch;

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use tenant_guard_core::config::{self, CompiledConfig};
use tenant_guard_core::engine::{
    self, Decision, Forward, Headers, IdempotencyStep, LocalReply, Outcome, PendingIdempotency,
    RequestView, ResponseCapture,
};
use tenant_guard_core::idempotency::{Claim, KEY_HEADER};

/// Idempotency buckets each worker's tick sweeps for expired records.
const RECLAIM_BUCKETS_PER_TICK: u32 = 64;
/// How often each worker flushes its counters and sweeps idempotency records.
const TICK: Duration = Duration::from_secs(1);
/// Set at compile time (`TENANT_GUARD_BUILD_ID=… cargo build …`) to tell builds
/// apart on the wire: every response then carries it in [`BUILD_HEADER`].
const BUILD_ID: Option<&str> = option_env!("TENANT_GUARD_BUILD_ID");
const BUILD_HEADER: &str = "x-tenant-guard-build";

use host::{HostStore, Metrics};

#[allow(unsafe_code)]
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(super::Root::default())
        });
    }}
}

fn host_store(config: &CompiledConfig) -> HostStore<'_> {
    HostStore {
        namespace: config.store.namespace.as_deref(),
    }
}

/// One plugin instance: holds the config that `on_configure` accepted last.
#[derive(Default)]
struct Root {
    config: Option<Rc<CompiledConfig>>,
    metrics: Rc<Metrics>,
    reclaim_cursor: u32,
    store_watch: store_watch::StoreWatch,
}

impl Root {
    /// Ticks only when there is something to flush or sweep.
    fn schedule_tick(&self) {
        let sweeps = self
            .config
            .as_ref()
            .is_some_and(|config| config.uses_idempotency());
        let period = if sweeps || self.metrics.enabled() || self.store_watch.wants_tick() {
            TICK
        } else {
            Duration::ZERO
        };
        host::set_tick_period(period);
    }
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        self.metrics.flush();
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match host::plugin_configuration() {
            Ok(bytes) => bytes,
            Err(message) => {
                host::log(LogLevel::Error, &message);
                self.metrics.count_config_rejected();
                return false;
            }
        };
        match config::parse(&bytes) {
            Ok(compiled) => {
                self.metrics.flush();
                self.metrics = Rc::new(Metrics::define(compiled.metrics));
                host::log(
                    LogLevel::Info,
                    &format!(
                        "configuration accepted (revision `{}`, {} tenants)",
                        compiled.revision,
                        compiled.tenants.len()
                    ),
                );
                self.store_watch.configured(&compiled);
                self.config = Some(Rc::new(compiled));
                self.schedule_tick();
                true
            }
            Err(err) => {
                self.metrics.flush();
                self.metrics = Rc::new(Metrics::define(config::metrics_requested(&bytes)));
                host::log(
                    LogLevel::Error,
                    &format!("rejected configuration, keeping the previous one: {err}"),
                );
                self.metrics.count_config_rejected();
                self.schedule_tick();
                false
            }
        }
    }

    /// Ticks fire on every worker: reclaiming is idempotent, so each sweeps its own cursor.
    fn on_tick(&mut self) {
        self.store_watch.tick(self.config.as_deref(), &self.metrics);
        self.metrics.flush();
        let Some(config) = self.config.as_ref().filter(|c| c.uses_idempotency()) else {
            return;
        };
        let buckets = config.store.idempotency_buckets;
        let start = self.reclaim_cursor % buckets;
        let end = start.saturating_add(RECLAIM_BUCKETS_PER_TICK).min(buckets);
        self.reclaim_cursor = if end >= buckets { 0 } else { end };
        let store = host_store(config);
        match engine::reclaim_idempotency(start..end, host::now_unix_ns(), &store) {
            Ok(0) => {}
            Ok(count) => self.metrics.count_reclaimed(count),
            Err(message) => host::log(
                LogLevel::Warn,
                &format!("idempotency reclaim failed: {message}"),
            ),
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(Request {
            config,
            metrics: Rc::clone(&self.metrics),
            response_headers: Vec::new(),
            idempotent: None,
            #[cfg(feature = "fault-injection")]
            panic_in_response: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP request/response exchange.
struct Request {
    config: Rc<CompiledConfig>,
    metrics: Rc<Metrics>,
    /// Set on the response, local replies included (replace, so never duplicated).
    response_headers: Headers,
    idempotent: Option<Idempotent>,
    #[cfg(feature = "fault-injection")]
    panic_in_response: bool,
}

/// Where an idempotent request is in its life.
struct Idempotent {
    pending: PendingIdempotency,
    forward: Forward,
    method: Vec<u8>,
    path: Vec<u8>,
    claim: Option<Claim>,
    /// The request body is being buffered: to seal the claim's fingerprint, or
    /// (no claim) to decide between replay and 422.
    reading_body: bool,
    capture: Option<ResponseCapture>,
    /// Recorded or released: nothing left to do at the end of the stream.
    settled: bool,
}

impl Request {
    fn reply_locally(&mut self, reply: &LocalReply) -> Action {
        // Kong runs response hooks on local replies: keep only what is safe to set twice.
        self.response_headers = reply
            .headers
            .iter()
            .filter(|(name, _)| name != "content-type" && name != "content-length")
            .cloned()
            .collect();
        host::send_local_reply(reply);
        Action::Pause
    }

    /// Claims the key or answers from the record; `body` is `None` while it is still to come.
    ///
    /// Request headers always continue when a body follows: proxy-wasm hosts turn a
    /// pause in request headers into "stop all iteration", which would withhold the
    /// body from this filter too. New keys are therefore claimed from the headers,
    /// so concurrent duplicates are refused before they reach upstream.
    fn begin_idempotent(&mut self, body: Option<&[u8]>) -> Action {
        let Some(state) = self.idempotent.as_mut() else {
            return Action::Continue;
        };
        let request = RequestView {
            method: &state.method,
            path: &state.path,
            ..RequestView::default()
        };
        let step = engine::begin_idempotent(
            &self.config,
            &state.pending,
            &request,
            body,
            &state.forward,
            &host::inputs(),
            &host_store(&self.config),
        );
        match step {
            IdempotencyStep::Proceed(claim) => {
                state.claim = Some(claim);
                state.reading_body = body.is_none();
                Action::Continue
            }
            IdempotencyStep::AwaitBody => {
                state.reading_body = true;
                Action::Continue
            }
            IdempotencyStep::Reply(reply, outcome) => {
                state.settled = true;
                self.metrics.count(outcome);
                self.reply_locally(&reply)
            }
        }
    }

    /// Records (or, on upstream failure, releases) the claim once.
    fn finish_idempotent(&mut self) {
        let Some(state) = self.idempotent.as_mut() else {
            return;
        };
        if state.settled {
            return;
        }
        let (Some(claim), Some(capture)) = (state.claim, state.capture.take()) else {
            return;
        };
        state.settled = true;
        if let Err(message) = engine::finish_idempotent(
            &self.config,
            &state.pending,
            &claim,
            capture,
            host::now_unix_ns(),
            &host_store(&self.config),
        ) {
            host::log(LogLevel::Warn, &message);
        }
    }
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "fault-injection")]
        if let Some(command) = host::request_header(fault::FAULT_HEADER) {
            let command = String::from_utf8_lossy(&command);
            self.panic_in_response = command == fault::PANIC_IN_RESPONSE;
            fault::inject(&command);
        }
        let config = Rc::clone(&self.config);
        let (method, path) = if config.reads_method_and_path {
            (
                host::request_header(":method").unwrap_or_default(),
                host::request_header(":path").unwrap_or_default(),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let tenant_header = host::request_header(&config.tenant.header);
        let correlation_header = host::request_header(&config.correlation.header);
        // Headers nothing in this config looks at are not read (each read is a host call).
        let idempotency_key = config
            .uses_idempotency()
            .then(|| host::request_header(KEY_HEADER))
            .flatten();
        // Only a present key can be repeated: the whole-map read stays off the common path.
        let idempotency_key_repeated =
            idempotency_key.is_some() && host::request_header_count(KEY_HEADER) > 1;
        let authorization = config
            .jwt
            .as_ref()
            .and_then(|_| host::request_header("authorization"));
        let if_match = (!config.if_match.is_empty())
            .then(|| host::request_header("if-match"))
            .flatten();
        let request = RequestView {
            method: &method,
            path: &path,
            tenant_header: tenant_header.as_deref(),
            correlation_header: correlation_header.as_deref(),
            idempotency_key: idempotency_key.as_deref(),
            idempotency_key_repeated,
            if_match: if_match.as_deref(),
            authorization: authorization.as_deref(),
        };
        let evaluation = engine::evaluate(
            &config,
            &request,
            &host::inputs(),
            &host_store(&self.config),
        );
        if let Some(message) = &evaluation.log {
            host::log(LogLevel::Warn, message);
        }
        self.metrics.count(evaluation.outcome);
        if evaluation.outcome == Outcome::ShadowOverLimit {
            host::log(
                LogLevel::Info,
                "shadow mode: request over the limit let through",
            );
        }
        match evaluation.decision {
            Decision::Forward(mut forward) => {
                for (name, value) in &forward.upstream_headers {
                    host::set_request_header(name, value);
                }
                for name in &forward.removed_upstream_headers {
                    host::remove_request_header(name);
                }
                self.response_headers = forward.response_headers.clone();
                let Some(pending) = forward.idempotency.take() else {
                    return Action::Continue;
                };
                self.idempotent = Some(Idempotent {
                    pending,
                    forward,
                    method,
                    path,
                    claim: None,
                    reading_body: false,
                    capture: None,
                    settled: false,
                });
                let empty: &[u8] = &[];
                self.begin_idempotent(end_of_stream.then_some(empty))
            }
            Decision::Reject(reply) => self.reply_locally(&reply),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(state) = self.idempotent.as_mut() else {
            return Action::Continue;
        };
        if !state.reading_body || state.settled {
            return Action::Continue;
        }
        let limit = usize::try_from(state.pending.settings.max_body_bytes).unwrap_or(usize::MAX);
        if body_size > limit {
            state.settled = true;
            let reply = engine::body_too_large(&self.config, &state.pending, &state.forward);
            if let Some(claim) = state.claim {
                if let Err(message) =
                    engine::abandon_idempotent(&self.config, &claim, &host_store(&self.config))
                {
                    host::log(LogLevel::Warn, &message);
                }
            }
            self.metrics.count(Outcome::Rejected(
                tenant_guard_core::problem::ProblemKind::BodyTooLarge,
            ));
            return self.reply_locally(&reply);
        }
        if !end_of_stream {
            // Buffer (bounded above) until the body is complete.
            return Action::Pause;
        }
        state.reading_body = false;
        let body = host::request_body(body_size);
        match state.claim {
            Some(claim) => {
                if let Err(message) =
                    engine::seal_idempotent(&self.config, &claim, &body, &host_store(&self.config))
                {
                    host::log(LogLevel::Warn, &message);
                }
                Action::Continue
            }
            None => self.begin_idempotent(Some(&body)),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "fault-injection")]
        if self.panic_in_response {
            fault::panic_in_response();
        }
        for (name, value) in &self.response_headers {
            host::set_response_header(name, value);
        }
        if let Some(build) = BUILD_ID {
            host::set_response_header(BUILD_HEADER, build);
        }
        if let Some(state) = self.idempotent.as_mut() {
            if state.claim.is_some() && !state.settled && state.capture.is_none() {
                let status = host::response_status();
                state.capture = Some(ResponseCapture::new(
                    &self.config,
                    &state.pending,
                    status,
                    host::response_headers(),
                ));
                let failed = state
                    .capture
                    .as_ref()
                    .is_some_and(ResponseCapture::is_failure);
                if failed || end_of_stream {
                    self.finish_idempotent();
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(capture) = self
            .idempotent
            .as_mut()
            .and_then(|state| state.capture.as_mut())
        {
            if capture.wants_body() {
                capture.push_body(&host::response_body(body_size));
            }
            if end_of_stream {
                self.finish_idempotent();
            }
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.finish_idempotent();
        Action::Continue
    }

    fn on_log(&mut self) {
        // Reset, timeout or a stream that never completed: give the key back.
        let Some(state) = self.idempotent.as_mut() else {
            return;
        };
        if state.settled {
            return;
        }
        state.settled = true;
        if let Some(claim) = state.claim {
            if let Err(message) =
                engine::abandon_idempotent(&self.config, &claim, &host_store(&self.config))
            {
                host::log(LogLevel::Warn, &message);
            }
        }
    }
}
