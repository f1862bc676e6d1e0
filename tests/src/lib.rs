//! End-to-end test harness for tenant-guard: builds the filter `.wasm`, finds or
//! installs Envoy, renders the same bootstrap templates users run (`envoy/*.yaml`),
//! starts a real Envoy in front of an in-process upstream, and offers small HTTP,
//! admin-stats and ECDS helpers, and ([`sidecar`]) the full PostgreSQL → sidecar →
//! Envoy stack with the propagation measurement. Synchronisation is always by polling
//! ([`wait::wait_until`]), never by fixed sleeps. The benchmark drivers in
//! `bench/` (crate `tenant-guard-bench`) build on this library.

pub mod artifacts;
pub mod backend;
pub mod bound_ports;
pub mod config;
pub mod costs;
pub mod envoy;
pub mod expect;
pub mod failure;
pub mod fault;
pub mod fleet;
pub mod http;
pub mod limit_model;
pub mod nginx;
pub mod pg;
pub mod raw_http;
pub mod rolling;
pub mod shapes;
pub mod sidecar;
pub mod tempdir;
pub mod tokens;
pub mod upstream;
pub mod wait;

pub use artifacts::{envoy_binary, probe_wasm_path, repo_root, wasm_path};
pub use envoy::{Envoy, EnvoyMode};
pub use http::{Conn, Response};
pub use pg::PrivatePostgres;
pub use sidecar::{SettingsDb, SidecarStack};
pub use upstream::Upstream;
pub use wait::wait_until;
