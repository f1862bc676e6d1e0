//! tenant-guard sync sidecar: Postgres settings → validated plugin config → gateways.
//!
//! - [`db`]: connection, migrations, settings rows, revision records (status, trigger).
//! - [`settings`]: scope resolution into the plugin document and its validation.
//! - [`sync`]: one sync in phases (load → render → hash → validate → record → deliver), rollback.
//! - [`dryrun`]: `sync --dry-run` against what the gateway has.
//! - [`delivery`]: the [`delivery::Delivery`] contract and one module per gateway:
//!   [`envoy`] (the ECDS file, the checked and published filter module) and
//!   [`kong`] (`kong.yml`, `tenant_guard.meta.json`, the Admin API client).
//! - [`files`]: atomic file replacement and content hashes.
//! - [`daemon`]: the `run` loop (LISTEN/NOTIFY, timer, reconnect, shutdown).
//! - [`admin`], [`metrics`]: `/live`, `/ready`, `/metrics`, `POST /sync`.
//! - [`store`]: the store endpoint (HTTP → Redis) of `store.backend: cluster`.
//! - [`cli`]: the command line.
//! - [`settings_cli`]: `settings list|get|set|unset|export|apply` (settings as code).
//! - [`text`]: bounded error texts, each cause printed once.
//! - `test_support` (feature `test-support`): the PostgreSQL and Redis
//!   fixtures of the sidecar's tests and the e2e harness.

pub mod admin;
pub mod cli;
pub mod daemon;
pub mod db;
pub mod delivery;
pub mod dryrun;
pub mod files;
pub mod metrics;
pub mod settings;
pub mod settings_cli;
pub mod store;
pub mod sync;
pub mod text;
pub mod usage;

pub use delivery::{envoy, kong};

#[cfg(feature = "test-support")]
pub mod test_support;
