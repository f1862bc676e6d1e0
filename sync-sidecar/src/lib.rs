//! tenant-guard sync sidecar: Postgres settings → validated plugin config → gateways.
//!
//! - [`db`]: connection, migrations, settings rows, revision records.
//! - [`settings`]: scope resolution into the plugin document and its validation.
//! - [`sync`]: one sync (render → validate → diff → deliver → record), rollback.
//! - [`dryrun`]: `sync --dry-run` against what the gateway has.
//! - [`envoy`]: the ECDS resource file and its atomic delivery.
//! - [`kong`]: the declarative `kong.yml`, `tenant_guard.meta.json` and the Kong Admin API client.
//! - [`daemon`]: the `run` loop (LISTEN/NOTIFY, timer, reconnect, shutdown).
//! - [`admin`], [`metrics`]: `/live`, `/ready`, `/metrics`, `POST /sync`.
//! - [`cli`]: the command line.
//! - [`text`]: bounded error texts, each cause printed once.

pub mod admin;
pub mod cli;
pub mod daemon;
pub mod db;
pub mod dryrun;
pub mod envoy;
pub mod kong;
pub mod metrics;
pub mod settings;
pub mod sync;
pub mod text;
