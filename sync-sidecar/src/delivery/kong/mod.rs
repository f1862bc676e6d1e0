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

mod admin;
mod render;

use std::path::PathBuf;

use serde_json::{json, Value};

pub use admin::{kong_message, AdminUrl, RetryPolicy};
pub use render::{
    committed_files, declarative, render, render_meta_json, KongForm, KongLayout, KongRenderError,
    FILTER_NAME, TAG,
};

use super::{Delivery, DeliveryError};
use crate::files::{self, FileError};
use admin::{path_segment, AdminApi};
use render::filter_entry;

/// `tg_revisions.target` of Kong deliveries.
pub const TARGET_KONG: &str = "kong";

/// Kong without a database (`POST /config`) or with one (the `filter_chains` entity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KongMode {
    /// DB-less: `POST /config?check_hash=1&flatten_errors=1` with the rendered configuration.
    Dbless,
    /// Database: `PUT /routes/{route}/filter-chains/{chain}` (the route must exist).
    Db,
}

#[derive(Debug, thiserror::Error)]
pub enum KongDeliveryError {
    #[error(transparent)]
    Render(#[from] KongRenderError),
    #[error("cannot write the rendered kong.yml")]
    File(#[from] FileError),
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

    /// Pushes `plugin_config` through the Admin API (`revision` is recorded as
    /// a tag in DB mode) and writes kong.yml (if configured and different)
    /// unless Kong refused the document: the file is what a restarted node
    /// loads, and a document Kong refused there would stop it from starting.
    /// An unreachable Kong still gets the file, for its next start.
    pub async fn deliver(
        &self,
        plugin_config: &str,
        revision: &str,
    ) -> Result<KongOutcome, KongDeliveryError> {
        let rendered = render(plugin_config, &self.layout)?;
        let pushed = self.push(plugin_config, revision).await;
        if !matches!(pushed, Err(KongDeliveryError::Rejected { .. })) {
            self.write_rendered(&rendered)?;
        }
        pushed
    }

    async fn push(
        &self,
        plugin_config: &str,
        revision: &str,
    ) -> Result<KongOutcome, KongDeliveryError> {
        match self.mode {
            KongMode::Dbless => {
                // The same declarative value as kong.yml, as compact JSON text
                // (Kong accepts YAML or JSON in `config`; JSON is unambiguous and
                // deterministic, so `check_hash=1` recognises a re-sent revision).
                let path = format!("{}/config?check_hash=1&flatten_errors=1", self.admin.prefix);
                let declarative = declarative(plugin_config, &self.layout)?;
                let body = serde_json::to_vec(&json!({ "config": declarative.to_string() }))
                    .map_err(KongRenderError::from)?;
                let reply = self.api().request("POST", &path, body).await?;
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
                self.api().request("PUT", &path, body).await?;
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
        let reply = match self.api().request("GET", &path, Vec::new()).await {
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
        Ok(files::write_if_changed(path, rendered.as_bytes())?)
    }

    fn api(&self) -> AdminApi<'_> {
        AdminApi {
            url: &self.admin,
            retry: &self.retry,
        }
    }
}

impl Delivery for KongTarget {
    fn name(&self) -> &'static str {
        TARGET_KONG
    }

    fn preflight(&self) -> Result<(), DeliveryError> {
        Ok(())
    }

    /// Writes kong.yml unless identical and pushes through the Admin API
    /// (DB-less: Kong answers 304 to an identical configuration).
    async fn deliver(&self, document: &str, revision: &str) -> Result<bool, DeliveryError> {
        Ok(KongTarget::deliver(self, document, revision).await? == KongOutcome::Applied)
    }

    /// DB-less: as [`Delivery::deliver`]. With a database only kong.yml is
    /// rewritten (the entity lives in Kong's database).
    async fn ensure(&self, document: &str, revision: &str) -> Result<bool, DeliveryError> {
        match self.mode {
            KongMode::Db => Ok(self.write_kong_yml(document)?),
            KongMode::Dbless => Delivery::deliver(self, document, revision).await,
        }
    }
}
