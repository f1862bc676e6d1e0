//! The proxy-wasm glue: the only code that talks to the host, and a
//! translation table. Host events become calls on the core's
//! [`Exchange`] (per request) and [`Maintenance`] (per plugin instance); their
//! effects become host calls; store calls are answered by the VM's shared data.
//! Every host call goes through `proxy_wasm::hostcalls` functions that return
//! `Result` (`host.rs`); nothing here unwraps and nothing here decides.

#[cfg(feature = "fault-injection")]
mod fault;
mod host;
mod settle;

use std::borrow::Cow;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use tenant_guard_core::cluster::{CallOutcome, ClusterStore, Route};
use tenant_guard_core::config::{self, CompiledConfig};
use tenant_guard_core::engine::{HostInputs, RequestView, METHOD_OVERRIDE_HEADERS};
use tenant_guard_core::exchange::{self, Effect, Exchange, Holds, Next, Output};
use tenant_guard_core::idempotency::KEY_HEADER;
use tenant_guard_core::limits::Reported;
use tenant_guard_core::maintenance::{self, Maintenance};
use tenant_guard_core::store_ops::{self, StoreAnswer, StoreCall, Token};

/// How often each worker flushes its counters and sweeps idempotency records.
const TICK: Duration = Duration::from_secs(maintenance::TICK_SECONDS);
/// Set at compile time (`TENANT_GUARD_BUILD_ID=… cargo build …`) to tell builds
/// apart on the wire: every response then carries it in [`BUILD_HEADER`].
const BUILD_ID: Option<&str> = option_env!("TENANT_GUARD_BUILD_ID");
const BUILD_HEADER: &str = "x-tenant-guard-build";

use host::{HostStore, Metrics};
use settle::{Sent, Settle};

#[allow(unsafe_code)]
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(super::Root {
                context_id,
                ..super::Root::default()
            })
        });
    }}
}

/// The VM's shared data as `config` names it (its namespace), or as the
/// plugin instance sees it before any configuration.
fn host_store(config: Option<&CompiledConfig>) -> HostStore<'_> {
    HostStore {
        namespace: config.and_then(|config| config.store.namespace.as_deref()),
    }
}

/// One plugin instance: holds the config that `on_configure` accepted last.
#[derive(Default)]
struct Root {
    context_id: u32,
    config: Option<Rc<CompiledConfig>>,
    /// Cluster mode: the calls requests left for the tick, the leases to sweep.
    settle: Settle,
    /// Counts and health for the calls the root sends.
    root_store: ClusterStore,
    /// Host tokens of the root's calls in flight.
    sent: Vec<(u32, Sent)>,
    metrics: Rc<Metrics>,
    maintenance: Maintenance,
}

impl Root {
    fn schedule_tick(&self) {
        let cluster_mode = self
            .config
            .as_deref()
            .is_some_and(|config| config.store.cluster.is_some());
        let ticks = cluster_mode
            || self.maintenance.wants_tick(
                self.config.as_deref(),
                self.metrics.enabled(),
                &host_store(self.config.as_deref()),
            );
        host::set_tick_period(if ticks { TICK } else { Duration::ZERO });
    }

    fn log_all(logs: Vec<maintenance::LogLine>) {
        for (level, message) in logs {
            host::log(log_level(level), &message);
        }
    }
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        self.metrics.flush();
        true
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(index) = self.sent.iter().position(|(token, _)| *token == token_id) else {
            return;
        };
        let (_, sent) = self.sent.swap_remove(index);
        let Some(config) = self.config.clone() else {
            return;
        };
        let outcome = host::store_call_outcome(body_size);
        self.settle
            .answered(&config, &mut self.root_store, sent, outcome, &self.metrics);
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
                let compiled = Rc::new(compiled);
                self.metrics = Rc::new(Metrics::define(
                    compiled.metrics,
                    Some(Rc::clone(&compiled)),
                ));
                if self.maintenance.needs_probe() {
                    let store = host_store(Some(&compiled));
                    let probe = host::probe_store(store.namespace);
                    let logs = self.maintenance.probed(probe, &store, host::now_unix_ns());
                    Self::log_all(logs);
                }
                host::log(
                    LogLevel::Info,
                    &compiled.accepted_message(host::semantics()),
                );
                if let Some(warning) = compiled.local_quota_warning() {
                    host::log(LogLevel::Warn, &warning);
                }
                self.config = Some(compiled);
                self.schedule_tick();
                true
            }
            Err(err) => {
                self.metrics.flush();
                self.metrics = Rc::new(Metrics::define(
                    config::metrics_requested(&bytes),
                    self.config.clone(),
                ));
                host::log(LogLevel::Error, &config::rejected_message(&err));
                self.metrics.count_config_rejected();
                self.schedule_tick();
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let config = self.config.clone();
        if let Some(config) = config.as_deref() {
            if !self.settle.is_idle() {
                let sent = self
                    .settle
                    .tick(config, &mut self.root_store, &self.metrics);
                self.sent.extend(sent);
            }
        }
        let report = self.maintenance.tick(
            config.as_deref(),
            &host_store(config.as_deref()),
            host::now_unix_ns(),
        );
        let evicted = host::take_evictions();
        if evicted > 0 {
            self.metrics.count_evicted(evicted);
        }
        let sizing = self.maintenance.evictions(config.as_deref(), evicted);
        Self::log_all(report.logs.into_iter().chain(sizing).collect());
        if report.reclaimed > 0 {
            self.metrics.count_reclaimed(report.reclaimed);
        }
        self.metrics.flush();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        let holds = Holds::of(&config, host::semantics());
        Some(Box::new(Request {
            config,
            metrics: Rc::clone(&self.metrics),
            exchange: Exchange::holding(holds),
            cluster: ClusterStore::new(),
            settle: self.settle.clone(),
            awaited: None,
            sent: Vec::new(),
            context_id,
            root_context_id: self.context_id,
            in_response: false,
            #[cfg(feature = "fault-injection")]
            panic_in_response: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP request/response exchange: the host's events in, the core's
/// [`Exchange`] decides, its effects carried out here.
struct Request {
    config: Rc<CompiledConfig>,
    metrics: Rc<Metrics>,
    exchange: Exchange,
    /// Cluster mode: how store operations reach the store sidecar.
    cluster: ClusterStore,
    /// Calls left for the plugin's tick, leases for it to sweep.
    settle: Settle,
    /// The store call the stream waits for.
    awaited: Option<Awaited>,
    /// Calls sent without waiting (release on Envoy), by host token.
    sent: Vec<(u32, tenant_guard_core::cluster::Call)>,
    context_id: u32,
    root_context_id: u32,
    /// The host is delivering the response (set from its first callback).
    in_response: bool,
    #[cfg(feature = "fault-injection")]
    panic_in_response: bool,
}

/// A store call in flight that the stream waits for.
#[derive(Debug, Clone, Copy)]
struct Awaited {
    host_token: u32,
    store_token: Token,
    end_of_stream: bool,
    /// Paused in a response callback (Envoy only: a completed claim's record).
    response_phase: bool,
}

impl Request {
    /// Carries out one store call: answered by shared data at once (local
    /// mode, and cluster mode when the core can answer itself), or sent to the
    /// store sidecar. `None`: the stream waits for `on_http_call_response`.
    fn store_call(&mut self, call: StoreCall, end_of_stream: bool) -> Option<StoreAnswer> {
        let config = Rc::clone(&self.config);
        let store = host_store(Some(&config));
        if config.store.cluster.is_none() {
            return Some(store_ops::execute_local(&config, &store, call.op));
        }
        let route = self
            .cluster
            .begin(&config, &store, call.op, host::now_unix_ns());
        let answer = match route {
            Route::Answer(answer) => Some(answer),
            Route::Await(request) => match host::dispatch_store_call(&request, None) {
                Ok(host_token) => {
                    self.awaited = Some(Awaited {
                        host_token,
                        store_token: call.token,
                        end_of_stream,
                        response_phase: self.in_response,
                    });
                    None
                }
                Err(reason) => self.cluster.on_answer(
                    &config,
                    &store,
                    CallOutcome::Failed(reason),
                    host::now_unix_ns(),
                ),
            },
            Route::Send(request, answer) => {
                let owner = Some((self.root_context_id, self.context_id));
                match host::dispatch_store_call(&request, owner) {
                    Ok(host_token) => self.sent.push((host_token, request)),
                    Err(reason) => self.settled(&request, CallOutcome::Failed(reason)),
                }
                Some(answer)
            }
            Route::Queue(request, answer) => {
                if !self.settle.queue(request) {
                    self.cluster
                        .note_retry(tenant_guard_core::cluster::settle::Retry::Dropped);
                }
                Some(answer)
            }
        };
        self.report_store_events();
        answer
    }

    /// The outcome of a call sent without waiting: a failure that must not
    /// be lost goes to the root's retry queue.
    fn settled(&mut self, call: &tenant_guard_core::cluster::Call, outcome: CallOutcome) {
        let config = Rc::clone(&self.config);
        let store = host_store(Some(&config));
        let settled = self
            .cluster
            .on_settled(&config, &store, call, outcome, host::now_unix_ns());
        if settled == tenant_guard_core::cluster::Settled::Failed {
            self.cluster.retry_later(call);
        }
    }

    fn report_store_events(&mut self) {
        self.settle.collect(&mut self.cluster, &self.metrics);
    }

    /// Carries out `output` and every step it leads to; returns what the host
    /// callback answers.
    fn drive(
        &mut self,
        mut output: Output,
        end_of_stream: bool,
        mut inputs: Option<HostInputs>,
    ) -> Action {
        let config = Rc::clone(&self.config);
        loop {
            for effect in output.effects {
                self.apply(effect);
            }
            output = match output.next {
                Next::Continue => return Action::Continue,
                Next::Pause => return Action::Pause,
                Next::Store(call) => {
                    let token = call.token;
                    let Some(answer) = self.store_call(call, end_of_stream) else {
                        return Action::Pause;
                    };
                    let inputs = *inputs.get_or_insert_with(host::inputs);
                    self.exchange
                        .on_store_answer(&config, token, answer, &inputs)
                }
                Next::ReadRequestBody(size) => {
                    let inputs = *inputs.get_or_insert_with(host::inputs);
                    let body = host::request_body(size);
                    self.exchange.on_request_body_read(&config, &body, &inputs)
                }
                Next::ReadResponseHead => self.exchange.on_response_head_read(
                    &config,
                    host::response_status(),
                    host::response_headers(),
                    end_of_stream,
                    host::now_unix_ns(),
                ),
                Next::ReadResponseBody { from, to } => self.exchange.on_response_body_read(
                    &host::response_body(from, to),
                    end_of_stream,
                    host::now_unix_ns(),
                ),
            };
        }
    }

    fn apply(&self, effect: Effect) {
        match effect {
            Effect::SetRequestHeader(name, value) => host::set_request_header(&name, &value),
            Effect::RemoveRequestHeader(name) => host::remove_request_header(&name),
            Effect::SetResponseHeader(name, value) => host::set_response_header(&name, &value),
            Effect::RemoveResponseHeader(name) => host::remove_response_header(&name),
            Effect::Reply(reply) => host::send_local_reply(&reply),
            Effect::Count(outcome) => self.metrics.count(self.exchange.tenant(), outcome),
            Effect::Log(level, message) => host::log(log_level(level), &message),
            Effect::Leave(departure) => {
                let store = host_store(Some(&self.config));
                let left = store_ops::leave(&self.config, &store, &departure, host::now_unix_ns());
                if let Err(err) = left {
                    host::log(
                        LogLevel::Warn,
                        &format!(
                            "in-flight slots not given back (they lapse at their deadline): {err}"
                        ),
                    );
                }
            }
            Effect::UsageIgnored(count) => self.metrics.count_usage_ignored(count),
            Effect::QuotaUsed(quota) => self.metrics.quota_used(self.exchange.tenant(), &quota),
        }
    }
}

fn log_level(level: exchange::LogLevel) -> LogLevel {
    match level {
        exchange::LogLevel::Info => LogLevel::Info,
        exchange::LogLevel::Warn => LogLevel::Warn,
        exchange::LogLevel::Error => LogLevel::Error,
    }
}

impl Context for Request {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let config = Rc::clone(&self.config);
        let store = host_store(Some(&config));
        let outcome = host::store_call_outcome(body_size);
        let now = host::now_unix_ns();
        if let Some(index) = self.sent.iter().position(|(token, _)| *token == token_id) {
            let (_, call) = self.sent.swap_remove(index);
            self.settled(&call, outcome);
            self.report_store_events();
            return;
        }
        let Some(awaited) = self
            .awaited
            .take_if(|awaited| awaited.host_token == token_id)
        else {
            return;
        };
        let answer = self.cluster.on_answer(&config, &store, outcome, now);
        self.report_store_events();
        let Some(answer) = answer else {
            return;
        };
        let inputs = host::inputs();
        let output = self
            .exchange
            .on_store_answer(&config, awaited.store_token, answer, &inputs);
        if self.drive(output, awaited.end_of_stream, Some(inputs)) == Action::Continue {
            host::resume(awaited.response_phase);
        }
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "fault-injection")]
        if let Some(command) = host::request_header(fault::FAULT_HEADER) {
            let command = String::from_utf8_lossy(&command);
            self.panic_in_response = command == fault::PANIC_IN_RESPONSE;
            fault::inject(&command);
        }
        let config = Rc::clone(&self.config);
        // One host call for the whole map when this config reads several headers.
        let whole_map = host::request_header_map(config.reads_whole_request_map());
        let headers = host::RequestHeaders::over(whole_map.as_deref());
        let (method, path) = if config.reads_method_and_path {
            (
                headers.get(":method").unwrap_or_default(),
                headers.get(":path").unwrap_or_default(),
            )
        } else {
            (Cow::default(), Cow::default())
        };
        let tenant_header = headers.get(&config.tenant.header);
        let correlation_header = headers.get(&config.correlation.header);
        // Headers nothing in this config looks at are not read (each read is a host call).
        let idempotency_key = config
            .uses_idempotency()
            .then(|| headers.get(KEY_HEADER))
            .flatten();
        // Only a present key can be repeated (read one by one, counting reads the whole map).
        let idempotency_key_repeated = idempotency_key.is_some() && headers.count(KEY_HEADER) > 1;
        let authorization = config
            .jwt
            .as_ref()
            .and_then(|_| headers.get("authorization"));
        let if_match = (!config.if_match.is_empty())
            .then(|| headers.get("if-match"))
            .flatten();
        // Method overrides matter only where a rule looks at the method.
        let overrides = if config.reads_method_and_path {
            METHOD_OVERRIDE_HEADERS.map(|name| headers.get(name))
        } else {
            [None, None, None]
        };
        // What per-key limits count by (nothing is read without such limits).
        let key_values: Vec<Option<Cow<'_, [u8]>>> = config
            .key_headers
            .iter()
            .map(|name| headers.get(name))
            .collect();
        let key_headers: Vec<Option<&[u8]>> = key_values.iter().map(Option::as_deref).collect();
        let request = RequestView {
            method: &method,
            path: &path,
            tenant_header: tenant_header.as_deref(),
            correlation_header: correlation_header.as_deref(),
            idempotency_key: idempotency_key.as_deref(),
            idempotency_key_repeated,
            if_match: if_match.as_deref(),
            authorization: authorization.as_deref(),
            method_overrides: [
                overrides[0].as_deref(),
                overrides[1].as_deref(),
                overrides[2].as_deref(),
            ],
            key_headers: &key_headers,
        };
        let inputs = host::inputs();
        let output = self
            .exchange
            .on_request_headers(&config, &request, end_of_stream, &inputs);
        self.drive(output, end_of_stream, Some(inputs))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let output = self
            .exchange
            .on_request_body(&self.config, body_size, end_of_stream);
        self.drive(output, end_of_stream, None)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "fault-injection")]
        if self.panic_in_response {
            fault::panic_in_response();
        }
        self.in_response = true;
        if let Some(build) = BUILD_ID {
            host::set_response_header(BUILD_HEADER, build);
        }
        let output = if self.config.usage_headers.is_empty() {
            self.exchange.on_response_headers()
        } else {
            // What the upstream reports; a header sent twice is not usage.
            let raw: Vec<(Option<Vec<u8>>, bool)> = self
                .config
                .usage_headers
                .iter()
                .map(|name| {
                    let value = host::response_header(name);
                    let repeated = value.is_some() && host::response_header_count(name) > 1;
                    (value, repeated)
                })
                .collect();
            let views: Vec<(Option<&[u8]>, bool)> = raw
                .iter()
                .map(|(value, repeated)| (value.as_deref(), *repeated))
                .collect();
            let reported = Reported::parse(&views);
            let config = Rc::clone(&self.config);
            self.exchange
                .on_response_headers_reporting(&config, &reported, host::now_unix_ns())
        };
        self.drive(output, end_of_stream, None)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let output = self
            .exchange
            .on_response_body(body_size, end_of_stream, host::now_unix_ns());
        self.drive(output, end_of_stream, None)
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        let output = self.exchange.on_response_trailers(host::now_unix_ns());
        self.drive(output, true, None)
    }

    fn on_log(&mut self) {
        // Reset, timeout or a stream that never completed: give the key back.
        let output = self.exchange.on_stream_end();
        self.drive(output, true, None);
    }
}
