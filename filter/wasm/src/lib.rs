//! The proxy-wasm glue: the only code that talks to the host. It reads what
//! `tenant_guard_core::engine` needs from the request, applies the decision,
//! and maps host failures to defined outcomes. Every host call goes through
//! `proxy_wasm::hostcalls` functions that return `Result`; nothing here unwraps.

mod host;

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use tenant_guard_core::config::{self, CompiledConfig};
use tenant_guard_core::engine::{self, Decision, Headers, Outcome, RequestView};

use host::{HostStore, Metrics};

#[allow(unsafe_code)]
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(super::Root::default())
        });
    }}
}

/// One plugin instance: holds the config that `on_configure` accepted last.
#[derive(Default)]
struct Root {
    config: Option<Rc<CompiledConfig>>,
    metrics: Rc<Metrics>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.metrics = Rc::new(Metrics::define());
        let bytes = match host::plugin_configuration() {
            Ok(bytes) => bytes,
            Err(message) => {
                host::log(LogLevel::Error, message);
                self.metrics.count_config_rejected();
                return false;
            }
        };
        match config::parse(&bytes) {
            Ok(compiled) => {
                host::log(
                    LogLevel::Info,
                    &format!(
                        "configuration accepted (revision `{}`, {} tenants)",
                        compiled.revision,
                        compiled.tenants.len()
                    ),
                );
                self.config = Some(Rc::new(compiled));
                true
            }
            Err(err) => {
                host::log(
                    LogLevel::Error,
                    &format!(
                        "rejected configuration, keeping the previous one: {err}"
                    ),
                );
                self.metrics.count_config_rejected();
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(Request {
            config,
            metrics: Rc::clone(&self.metrics),
            response_headers: Vec::new(),
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
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let config = Rc::clone(&self.config);
        let method = host::request_header(":method").unwrap_or_default();
        let path = host::request_header(":path").unwrap_or_default();
        let tenant_header = host::request_header(&config.tenant.header);
        let correlation_header = host::request_header(&config.correlation.header);
        let request = RequestView {
            method: &method,
            path: &path,
            tenant_header: tenant_header.as_deref(),
            correlation_header: correlation_header.as_deref(),
        };
        let evaluation = engine::evaluate(&config, &request, &host::inputs(), &HostStore);
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
            Decision::Forward(forward) => {
                for (name, value) in &forward.upstream_headers {
                    host::set_request_header(name, value);
                }
                self.response_headers = forward.response_headers;
                Action::Continue
            }
            Decision::Reject(reply) => {
                // Kong runs response hooks on local replies: keep only what is safe to set twice.
                self.response_headers = reply
                    .headers
                    .iter()
                    .filter(|(name, _)| name != "content-type")
                    .cloned()
                    .collect();
                host::send_local_reply(&reply);
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in &self.response_headers {
            host::set_response_header(name, value);
        }
        Action::Continue
    }
}
