//! The policy's steps, each a pure function of the compiled config, the request,
//! time, randomness and (for the synchronous conveniences) a store:
//!
//! - [`decision`]: what the policy reads and what it answers (types only);
//! - [`evaluate`](mod@evaluate): correlation id → tenant → If-Match → rate limit, split at
//!   the one store call ([`screen`] before it, [`admit`] after it);
//! - [`idempotent`]: the Idempotency-Key steps, each split into the store
//!   operation it needs and the interpretation of the answer;
//! - [`reply`]: problem+json local replies and the RateLimit headers.
//!
//! The request lifecycle that strings these steps together, with store calls
//! that may answer now or later, is [`crate::exchange::Exchange`].

mod decision;
mod evaluate;
mod idempotent;
mod reply;

pub use decision::{
    Decision, Evaluation, Forward, Headers, HostInputs, LocalReply, Outcome, PendingIdempotency,
    QuotaUse, RequestView, Spent, METHOD_OVERRIDE_HEADERS, REVISION_HEADER,
};
pub use evaluate::{admit, evaluate, screen, Screened};
pub use idempotent::{
    abandon_idempotent, begin_idempotent, body_too_large, claim_answered, claim_op,
    finish_idempotent, finish_op, reclaim_idempotency, recorded, released, seal_idempotent,
    seal_op, sealed, IdempotencyFailure, IdempotencyStep, ReplyContext, ResponseCapture,
};
pub use reply::rate_limit_headers;
