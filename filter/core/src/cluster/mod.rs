//! `store.backend: cluster`: rate limits and idempotency shared by every
//! gateway replica, in Redis behind the store sidecar.
//!
//! The core still never does IO: [`ClusterStore`] turns a [`StoreOp`] into an
//! answer it can give at once (a slot of a lease it holds, a refusal it
//! remembers, the fallback while the store is away) or an HTTP call for the
//! glue to make, and turns the call's outcome into the [`StoreAnswer`] the
//! exchange waits for. `wire` is the protocol, `lease` the slots a gateway
//! holds, `health` whether the store is up, `settle` what the root context
//! does on its tick (calls retried until acknowledged, lapsed slots given back).

pub mod admission;
pub mod client;
pub mod health;
pub mod lease;
pub mod settle;
pub mod wire;
pub use client::{Call, CallOutcome, ClusterStore, Route, Settled, StoreEvent};

#[cfg(test)]
mod tests;
