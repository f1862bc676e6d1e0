//! Why a store call or the store endpoint failed. Texts are short and carry
//! no request data; causes stay in `source()` (joined by
//! [`crate::text::error_text`], which bounds them).

/// A Redis call of the store endpoint that gave no usable answer (answered
/// as `503` problem+json), or an endpoint that could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A `--redis-url` / `--redis-cluster-url` the client refuses.
    #[error("invalid Redis address")]
    Config(#[source] redis::RedisError),
    /// Redis answered with an error, or the connection failed.
    #[error("Redis failed")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("Redis did not answer within {0} ms")]
    Timeout(u64),
    /// A script answered something this sidecar does not understand.
    #[error("Redis answered an unexpected reply ({0})")]
    Reply(&'static str),
    /// The HTTP server failed.
    #[error("store endpoint failed")]
    Serve(#[from] std::io::Error),
}
