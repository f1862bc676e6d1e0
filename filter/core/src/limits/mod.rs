//! The limit model's decision: the limits one request spends from (several
//! windows, per tenant or per a key inside it), grouped by what they count,
//! decided all or nothing.
//!
//! - `calendar`: UTC day, week and month windows;
//! - `state`: one stored value per group, the state of each of its limits;
//! - `admit`: what a request needs decided ([`Admission`]), the local
//!   decision on shared data ([`admit_local`]) and its answer ([`Admitted`]);
//! - `in_flight`: caps on requests in flight at once, entered before the
//!   limits are decided and left at the stream's end;
//! - `usage`: usage the upstream reports after the response, parsed
//!   strictly and taken from the limits that asked for it.
//!
//! Limits that count the same thing share one stored value (one CAS admits
//! or refuses them together); a request's groups are taken in one fixed order
//! (the tenant, then users, orgs, headers), all decided before any is written,
//! and a write that loses its CAS undoes the groups written before it and
//! retries the whole decision: a refused request consumes nothing.

pub mod admit;
pub mod calendar;
pub mod in_flight;
pub mod state;
pub mod usage;

pub use admit::{admit_local, admit_share, Admission, Admitted, KeyHashes};
pub use in_flight::{Departure, Entered};
pub use usage::{Debit, Reported};
