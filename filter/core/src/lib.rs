//! tenant-guard policy core: every decision the filter makes, as plain Rust
//! with no proxy-wasm dependency. Time, randomness and shared storage are
//! passed in, so the same code runs natively, in wasm-bindgen tests and in the
//! gateway.

pub mod cluster;
pub mod config;
pub mod correlation;
pub mod engine;
pub mod exchange;
pub mod header_map;
pub mod headers;
pub mod idempotency;
pub mod jwt;
pub mod limits;
pub mod maintenance;
pub mod metrics;
pub mod path;
pub mod problem;
pub mod ratelimit;
pub mod share;
pub mod store;
pub mod store_ops;
pub mod tenant;

#[cfg(test)]
mod exchange_tests;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod jwt_tests;
#[cfg(test)]
mod tests;
