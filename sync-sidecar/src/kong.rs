//! Kong delivery (Kong Gateway 3.4–3.10, whose `ngx_wasm_module` runs
//! proxy-wasm filters; Kong 3.11 removed Wasm): the declarative `kong.yml`
//! carrying the filter and its configuration, the filter's `<filter>.meta.json`,
//! and the Admin API client that pushes a revision with retries.
//!
//! Kong facts this module relies on (read in Kong's docs and sources):
//! - A filter is a `.wasm` file in `wasm_filters_path`; its name is the file
//!   name without `.wasm`, and `<name>.meta.json` next to it may carry a JSON
//!   Schema (draft 4 only) under `config_schema`, which makes Kong validate the
//!   filter `config` as JSON instead of an opaque string
//!   (docs.konghq.com/gateway/3.9.x/plugin-development/wasm/filter-configuration).
//! - `filter_chains` entity: `name`, `enabled`, exactly one of `route`/`service`,
//!   `filters: [{name, config, enabled}]` (at least one), `tags`
//!   (Kong/kong `kong/db/schema/entities/filter_chains.lua`); its Admin API name
//!   is `filter-chains`, reachable as `/routes/{route}/filter-chains/{name}`
//!   (Kong/kong `kong/api/routes/filter_chains.lua`).
//! - DB-less `POST /config` takes `{"config": "<YAML or JSON text>"}` with
//!   `Content-Type: application/json`;
//!   `?check_hash=1` answers 304 when the configuration is identical,
//!   `?flatten_errors=1` adds `flattened_errors`; success is 201; a rejected
//!   configuration is 400 `{code: 14, name: "invalid declarative
//!   configuration", message, fields}`; 429 `Retry-After` while a previous
//!   configuration is loading; 503/504/500 otherwise (Kong/kong
//!   `kong/api/routes/config.lua`, `kong/db/errors.lua`; Admin API docs
//!   "Declarative Configuration – Reload").
//! - Kong 3.9+ also exposes every filter as a plugin named after the filter
//!   (Kong/kong PR #13843, `kong/runloop/wasm/plugins.lua`): `plugins:
//!   [{name: tenant_guard, config: {...}}]` on a route; [`KongForm::Plugin`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};

use crate::envoy::{self, EnvoyDeliveryError};
use crate::text::bounded;

/// The filter's name in Kong: the module must be installed as
/// `<wasm_filters_path>/tenant_guard.wasm` with `tenant_guard.meta.json` next to it.
pub const FILTER_NAME: &str = "tenant_guard";
/// Tag put on every entity the sidecar renders, so operators can find them.
pub const TAG: &str = "tenant-guard";

/// Renders `tenant_guard.meta.json`: the filter's draft-4 JSON Schema as `config_schema`.
pub fn render_meta_json() -> Result<String, serde_json::Error> {
    let schema: Value = serde_json::from_str(tenant_guard_core::config::CONFIG_SCHEMA)?;
    let mut text = serde_json::to_string_pretty(&json!({ "config_schema": schema }))?;
    text.push('\n');
    Ok(text)
}

/// How the filter is attached to the route in the rendered declarative config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KongForm {
    /// `filter_chains: [{filters: [{name, config, enabled}]}]` (Kong 3.4–3.10).
    FilterChain,
    /// `plugins: [{name: tenant_guard, config}]` (Kong 3.9+ only).
    Plugin,
}

/// The service and route the filter is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KongLayout {
    pub service_name: String,
    /// Upstream URL of the service (DB-less renders own the whole Kong configuration).
    pub service_url: String,
    pub route_name: String,
    pub route_paths: Vec<String>,
    /// Name of the filter chain entity.
    pub chain_name: String,
    pub form: KongForm,
}

impl Default for KongLayout {
    fn default() -> Self {
        Self {
            service_name: "tenant-guard-upstream".to_owned(),
            service_url: "http://127.0.0.1:8080".to_owned(),
            route_name: "tenant-guard".to_owned(),
            route_paths: vec!["/".to_owned()],
            chain_name: "tenant-guard".to_owned(),
            form: KongForm::FilterChain,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KongRenderError {
    #[error("the plugin document is not JSON")]
    Document(#[from] serde_json::Error),
}

/// The `filters[]` entry carrying the plugin document.
fn filter_entry(config: &Value) -> Value {
    json!({ "name": FILTER_NAME, "config": config, "enabled": true })
}

/// The declarative configuration (as a JSON value) for `plugin_config`, the
/// exact document the filter receives.
pub fn declarative(plugin_config: &str, layout: &KongLayout) -> Result<Value, KongRenderError> {
    let config: Value = serde_json::from_str(plugin_config)?;
    let mut route = json!({
        "name": layout.route_name,
        "paths": layout.route_paths,
        "tags": [TAG],
    });
    let attachment = match layout.form {
        KongForm::FilterChain => (
            "filter_chains",
            json!([{
                "name": layout.chain_name,
                "enabled": true,
                "filters": [filter_entry(&config)],
                "tags": [TAG],
            }]),
        ),
        KongForm::Plugin => (
            "plugins",
            json!([{
                "name": FILTER_NAME,
                "config": config,
                "enabled": true,
                "tags": [TAG],
            }]),
        ),
    };
    if let Value::Object(map) = &mut route {
        map.insert(attachment.0.to_owned(), attachment.1);
    }
    Ok(json!({
        "_format_version": "3.0",
        "services": [{
            "name": layout.service_name,
            "url": layout.service_url,
            "tags": [TAG],
            "routes": [route],
        }],
    }))
}

/// Renders `kong.yml` (declarative, DB-less and decK compatible) for `plugin_config`.
pub fn render(plugin_config: &str, layout: &KongLayout) -> Result<String, KongRenderError> {
    let value = declarative(plugin_config, layout)?;
    let mut out = String::from(
        "# Rendered by tenant-guard-sidecar from the tenant settings in PostgreSQL.\n\
         # Do not edit: the next sync overwrites it. See kong/README.md.\n",
    );
    yaml_block(&value, 0, &mut out);
    Ok(out)
}

/// Minimal YAML emitter for JSON values: block mappings and sequences, every
/// string double-quoted with JSON escapes (valid YAML 1.2), so the output is
/// unambiguous and round-trips to the same JSON value.
fn yaml_block(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                out.push_str(&" ".repeat(indent));
                out.push_str(&yaml_key(key));
                out.push(':');
                if is_inline(item) {
                    out.push(' ');
                    out.push_str(&yaml_inline(item));
                    out.push('\n');
                } else {
                    out.push('\n');
                    yaml_block(item, indent + 2, out);
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&" ".repeat(indent));
                out.push_str("- ");
                if is_inline(item) {
                    out.push_str(&yaml_inline(item));
                    out.push('\n');
                } else {
                    let mut nested = String::new();
                    yaml_block(item, indent + 2, &mut nested);
                    out.push_str(nested.get(indent + 2..).unwrap_or_default());
                }
            }
        }
        other => {
            out.push_str(&" ".repeat(indent));
            out.push_str(&yaml_inline(other));
            out.push('\n');
        }
    }
}

fn is_inline(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => true,
    }
}

fn yaml_inline(value: &Value) -> String {
    match value {
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        other => other.to_string(),
    }
}

fn yaml_key(key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !matches!(
            key.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain {
        key.to_owned()
    } else {
        Value::String(key.to_owned()).to_string()
    }
}

/// Kong without a database (`POST /config`) or with one (the `filter_chains` entity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KongMode {
    /// DB-less: `POST /config?check_hash=1&flatten_errors=1` with the rendered configuration.
    Dbless,
    /// Database: `PUT /routes/{route}/filter-chains/{chain}` (the route must exist).
    Db,
}

/// Retries for the Admin API: exponential backoff with jitter on transport
/// errors and 5xx, `Retry-After` (capped) on 429; other 4xx are final.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    /// Upper bound for an honoured `Retry-After`.
    pub max_retry_after: Duration,
    /// Per-request timeout (connect + response).
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KongDeliveryError {
    #[error(transparent)]
    Render(#[from] KongRenderError),
    #[error("cannot write the rendered kong.yml")]
    File(#[from] EnvoyDeliveryError),
    /// A final answer from Kong (4xx other than 429): the configuration or the
    /// request is wrong; retrying would not help.
    #[error("Kong rejected {method} {path} with {status}: {message}")]
    Rejected {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    /// Kong stayed unreachable or kept failing (429/5xx) through every attempt.
    #[error("Kong Admin API {method} {path} failed after {attempts} attempts: {last}")]
    Unavailable {
        method: &'static str,
        path: String,
        attempts: u32,
        last: String,
    },
}

/// Where the Admin API listens: `http://host:port[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUrl {
    pub host: String,
    pub port: u16,
    /// Path prefix without the trailing slash (empty for the root).
    pub prefix: String,
}

impl AdminUrl {
    /// Parses an `http://` URL (the Admin API is expected on a trusted,
    /// usually loopback, listener; TLS is not supported by this client).
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("`{url}`: the Kong Admin URL must start with http:// (https is not supported)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("`{url}`: invalid port `{port}`"))?;
                (host, port)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{url}`: no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Where and how the Kong target is delivered.
#[derive(Debug, Clone)]
pub struct KongTarget {
    pub admin: AdminUrl,
    pub mode: KongMode,
    pub layout: KongLayout,
    /// Also write the rendered kong.yml here (atomically), for decK users and
    /// for `declarative_config` so a restarted DB-less Kong comes back with it.
    pub kong_yml: Option<PathBuf>,
    pub retry: RetryPolicy,
}

/// What a delivery did on the Kong side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KongOutcome {
    /// Kong loaded the configuration (201 / 200).
    Applied,
    /// Kong already had exactly this configuration (304 with `check_hash=1`).
    Unchanged,
}

struct Reply {
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl KongTarget {
    pub fn new(admin_url: &str, mode: KongMode) -> Result<Self, String> {
        Ok(Self {
            admin: AdminUrl::parse(admin_url)?,
            mode,
            layout: KongLayout::default(),
            kong_yml: None,
            retry: RetryPolicy::default(),
        })
    }

    /// Writes kong.yml (if configured and different) and pushes `plugin_config`
    /// through the Admin API; `revision` is recorded as a tag in DB mode.
    pub async fn deliver(
        &self,
        plugin_config: &str,
        revision: &str,
    ) -> Result<KongOutcome, KongDeliveryError> {
        let rendered = render(plugin_config, &self.layout)?;
        self.write_rendered(&rendered)?;
        match self.mode {
            KongMode::Dbless => {
                // The same declarative value as kong.yml, as compact JSON text
                // (Kong accepts YAML or JSON in `config`; JSON is unambiguous and
                // deterministic, so `check_hash=1` recognises a re-sent revision).
                let path = format!("{}/config?check_hash=1&flatten_errors=1", self.admin.prefix);
                let declarative = declarative(plugin_config, &self.layout)?;
                let body = serde_json::to_vec(&json!({ "config": declarative.to_string() }))
                    .map_err(KongRenderError::from)?;
                let reply = self.request("POST", &path, body).await?;
                Ok(if reply.status == 304 {
                    KongOutcome::Unchanged
                } else {
                    KongOutcome::Applied
                })
            }
            KongMode::Db => {
                let config: Value =
                    serde_json::from_str(plugin_config).map_err(KongRenderError::from)?;
                let path = format!(
                    "{}/routes/{}/filter-chains/{}",
                    self.admin.prefix,
                    path_segment(&self.layout.route_name),
                    path_segment(&self.layout.chain_name)
                );
                let body = serde_json::to_vec(&json!({
                    "name": self.layout.chain_name,
                    "enabled": true,
                    "filters": [filter_entry(&config)],
                    "tags": [TAG, format!("tenant-guard-revision:{revision}")],
                }))
                .map_err(KongRenderError::from)?;
                self.request("PUT", &path, body).await?;
                Ok(KongOutcome::Applied)
            }
        }
    }

    /// `http://host:port[/prefix]` of the Admin API, for messages.
    pub fn admin_label(&self) -> String {
        format!("http://{}{}", self.admin.authority(), self.admin.prefix)
    }

    /// The plugin document Kong has now on the configured route, as its Admin
    /// API reports it (`GET /routes/{route}/filter-chains/{chain}`, or the
    /// route's plugins for [`KongForm::Plugin`]; both readable in DB-less mode
    /// too). `Ok(None)`: the route or the filter is not there.
    pub async fn current_document(&self) -> Result<Option<Value>, KongDeliveryError> {
        let route = path_segment(&self.layout.route_name);
        let path = match self.layout.form {
            KongForm::FilterChain => format!(
                "{}/routes/{route}/filter-chains/{}",
                self.admin.prefix,
                path_segment(&self.layout.chain_name)
            ),
            KongForm::Plugin => format!("{}/routes/{route}/plugins", self.admin.prefix),
        };
        let reply = match self.request("GET", &path, Vec::new()).await {
            Ok(reply) => reply,
            Err(KongDeliveryError::Rejected { status: 404, .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        let body: Value = serde_json::from_slice(&reply.body).map_err(KongRenderError::from)?;
        let entries = match self.layout.form {
            KongForm::FilterChain => body.get("filters"),
            KongForm::Plugin => body.get("data"),
        };
        let config = entries
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|entry| entry.get("name").and_then(Value::as_str) == Some(FILTER_NAME))
            .and_then(|entry| entry.get("config"));
        Ok(match config {
            // Without `tenant_guard.meta.json` Kong keeps the config as a string.
            Some(Value::String(text)) => {
                Some(serde_json::from_str(text).map_err(KongRenderError::from)?)
            }
            Some(config) => Some(config.clone()),
            None => None,
        })
    }

    /// Writes the rendered kong.yml (when `--kong-yml` is set) unless it
    /// already holds exactly these bytes; returns whether it wrote.
    pub fn write_kong_yml(&self, plugin_config: &str) -> Result<bool, KongDeliveryError> {
        let rendered = render(plugin_config, &self.layout)?;
        self.write_rendered(&rendered)
    }

    fn write_rendered(&self, rendered: &str) -> Result<bool, KongDeliveryError> {
        let Some(path) = &self.kong_yml else {
            return Ok(false);
        };
        if std::fs::read(path).ok().as_deref() == Some(rendered.as_bytes()) {
            return Ok(false);
        }
        envoy::write_atomically(path, rendered.as_bytes())?;
        Ok(true)
    }

    /// One Admin API call with the retry policy.
    async fn request(
        &self,
        method: &'static str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Reply, KongDeliveryError> {
        let policy = &self.retry;
        let mut backoff = policy.initial;
        let mut last = String::new();
        let attempts = policy.attempts.max(1);
        for attempt in 1..=attempts {
            let delay = match self.send(method, path, body.clone()).await {
                Ok(reply) if (200..300).contains(&reply.status) || reply.status == 304 => {
                    return Ok(reply)
                }
                Ok(reply) if reply.status == 429 => {
                    last = format!("429: {}", bounded(&kong_message(&reply.body)));
                    reply
                        .retry_after
                        .map(|d| d.min(policy.max_retry_after))
                        .unwrap_or(backoff)
                }
                Ok(reply) if reply.status >= 500 => {
                    last = format!("{}: {}", reply.status, bounded(&kong_message(&reply.body)));
                    backoff
                }
                Ok(reply) => {
                    return Err(KongDeliveryError::Rejected {
                        method,
                        path: path.to_owned(),
                        status: reply.status,
                        message: bounded(&kong_message(&reply.body)).into_owned(),
                    })
                }
                Err(error) => {
                    last = bounded(&error).into_owned();
                    backoff
                }
            };
            if attempt < attempts {
                tracing::warn!(method, path, attempt, error = %last, retry_in_ms = delay.as_millis() as u64, "Kong Admin API call failed; retrying");
                tokio::time::sleep(jitter(delay)).await;
                backoff = (backoff * 2).min(policy.max);
            }
        }
        Err(KongDeliveryError::Unavailable {
            method,
            path: path.to_owned(),
            attempts,
            last,
        })
    }

    /// One HTTP/1.1 exchange (new connection each time: syncs are rare).
    async fn send(&self, method: &str, path: &str, body: Vec<u8>) -> Result<Reply, String> {
        let exchange = async {
            let stream =
                tokio::net::TcpStream::connect((self.admin.host.as_str(), self.admin.port))
                    .await
                    .map_err(|e| format!("cannot connect to {}: {e}", self.admin.authority()))?;
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP handshake with {}: {e}", self.admin.authority()))?;
            let driver = tokio::spawn(connection);
            let request = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, self.admin.authority())
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(hyper::header::ACCEPT, "application/json")
                .header(
                    hyper::header::USER_AGENT,
                    concat!("tenant-guard-sidecar/", env!("CARGO_PKG_VERSION")),
                )
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| format!("cannot build the request: {e}"))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("{method} {path}: {e}"))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64);
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the response to {method} {path}: {e}"))?
                .to_bytes()
                .to_vec();
            driver.abort();
            Ok(Reply {
                status,
                retry_after,
                body,
            })
        };
        match tokio::time::timeout(self.retry.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "{method} {path}: no answer within {:?}",
                self.retry.request_timeout
            )),
        }
    }
}

/// Half fixed, half random ("equal jitter").
fn jitter(delay: Duration) -> Duration {
    let half = delay / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Percent-encodes a path segment (names are `[A-Za-z0-9._~-]` in practice).
fn path_segment(segment: &str) -> String {
    let mut out = String::new();
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The human part of a Kong error body: `name: message` of Kong's
/// `{code, name, message, fields}` (plus the flattened entity errors of
/// `/config?flatten_errors=1`), or the raw body when it is not Kong's JSON.
pub fn kong_message(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        return if text.is_empty() {
            "(empty body)".to_owned()
        } else {
            text.chars().take(500).collect()
        };
    };
    let mut parts = Vec::new();
    if let Some(name) = value.get("name").and_then(Value::as_str) {
        parts.push(name.to_owned());
    }
    if let Some(message) = value.get("message").and_then(Value::as_str) {
        parts.push(message.to_owned());
    }
    let mut text = parts.join(": ");
    if let Some(entities) = value.get("flattened_errors").and_then(Value::as_array) {
        for entity in entities {
            let kind = entity
                .get("entity_type")
                .and_then(Value::as_str)
                .unwrap_or("entity");
            let name = entity
                .get("entity_name")
                .and_then(Value::as_str)
                .unwrap_or("?");
            for error in entity
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let field = error
                    .get("field")
                    .and_then(Value::as_str)
                    .unwrap_or("@entity");
                let message = error.get("message").and_then(Value::as_str).unwrap_or("");
                let _ = write!(text, "; {kind} {name}: {field}: {message}");
            }
        }
    }
    if text.is_empty() {
        value.to_string()
    } else {
        text
    }
}

/// Paths of the files in `kong/` that are rendered from the code (see the
/// `kong_files_are_rendered` test; `UPDATE_KONG_FILES=1` rewrites them).
pub fn committed_files(repo_root: &Path) -> [(PathBuf, &'static str); 3] {
    let kong = repo_root.join("kong");
    [
        (kong.join("tenant_guard.meta.json"), "meta"),
        (kong.join("kong.yml"), "filter-chain"),
        (kong.join("kong.plugin.yml"), "plugin"),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn yaml_round_trips_through_json_semantics() {
        let layout = KongLayout::default();
        let doc = r#"{"version":1,"tenants":{"a b":{"mode":"shadow"},"on":{}},"list":[[1,2],[],{"x":"q\"\n"}]}"#;
        let yaml = render(doc, &layout).unwrap();
        assert!(yaml.contains("_format_version: \"3.0\""));
        assert!(yaml.contains("\"a b\":"));
        assert!(yaml.contains("\"on\": {}"));
        assert!(yaml.contains("name: \"tenant_guard\"\n"));
        assert!(yaml.contains("- - 1\n"), "{yaml}");
    }

    #[test]
    fn admin_urls() {
        let url = AdminUrl::parse("http://127.0.0.1:8001").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.prefix.as_str()),
            ("127.0.0.1", 8001, "")
        );
        let url = AdminUrl::parse("http://kong/admin/").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.prefix.as_str()),
            ("kong", 80, "/admin")
        );
        let url = AdminUrl::parse("http://[::1]:8001").unwrap();
        assert_eq!(
            (url.host.as_str(), url.authority()),
            ("::1", "[::1]:8001".to_owned())
        );
        assert!(AdminUrl::parse("https://kong:8444").is_err());
    }

    #[test]
    fn kong_error_messages() {
        let body = br#"{"code":14,"name":"invalid declarative configuration","message":"declarative config is invalid: {}","flattened_errors":[{"entity_type":"filter_chain","entity_name":"tenant-guard","errors":[{"field":"filters.1.config","message":"property version is required","type":"field"}]}],"fields":{}}"#;
        let text = kong_message(body);
        assert!(
            text.starts_with("invalid declarative configuration: declarative config is invalid")
        );
        assert!(text
            .contains("filter_chain tenant-guard: filters.1.config: property version is required"));
        assert_eq!(kong_message(b"oops"), "oops");
    }
}
