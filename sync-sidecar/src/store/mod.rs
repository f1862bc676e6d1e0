//! The store endpoint (`docs/STORE_PROTOCOL.md`): HTTP/1.1 JSON in front of
//! Redis for `store.backend: cluster`. [`StoreServer`] owns the listener and
//! the routes, checks every request before any of it reaches a Redis key
//! name, and answers; [`redis`] owns the connection and the Lua scripts.
//!
//! - `POST /v1/lease`, `/v1/leases`, `/v1/claim`, `/v1/complete`, `/v1/release`: the
//!   [`tenant_guard_core::cluster::wire`] types; `200` with the answer.
//! - `400` problem+json: a body that does not parse, or a field out of range
//!   (names, hex lengths, zero `want`/`emission_us`/`in_flight_ms`/`ttl_ms`,
//!   times past what Lua's doubles hold exactly); `413` past
//!   [`wire::MAX_REQUEST_BYTES`]; `404` other paths; `405` other methods;
//!   `503` problem+json when Redis failed or took longer than
//!   [`redis::DEFAULT_TIMEOUT`].
//! - `GET /metrics`: [`StoreMetrics`] on the store listener itself (the
//!   `store` subcommand has no admin listener; `run` renders them on its
//!   admin `/metrics` too).
//!
//! The `content-type` of a request is not checked: the body must parse as
//! the operation's JSON, whatever it is labelled.

pub mod error;
pub mod flight;
pub mod persistence;
pub mod redis;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tenant_guard_core::cluster::wire::{
    self, ClaimRequest, CompleteRequest, DebitRequest, LeaseRequest, LeasesRequest, ReleaseRequest,
};
use tokio::net::TcpListener;

pub use self::error::StoreError;
use self::flight::{Flights, Served};
pub use self::persistence::Persistence;
pub use self::redis::{RedisStore, RedisTarget};
use crate::metrics::{StoreMetrics, StoreOp, StoreOutcome};
use crate::text::{bounded_to, error_text};

/// Largest microsecond value (`emission_us`, `capacity_us`) accepted: `TIME`
/// in µs plus it stays below 2^53, where Lua's doubles are exact.
pub const MAX_MICROS: u64 = 1 << 52;

/// Largest millisecond value (`in_flight_ms`, `ttl_ms`) accepted (≈ 35 years).
pub const MAX_MILLIS: u64 = 1 << 40;

/// Most slots one lease call may ask for or give back.
pub const MAX_SLOTS: u64 = 1 << 20;

/// Upper bound (bytes) of a problem's `detail`.
pub const MAX_DETAIL_BYTES: usize = 512;

/// The store endpoint on a bound listener.
#[derive(Debug)]
pub struct StoreServer {
    listener: TcpListener,
    state: StoreState,
}

#[derive(Debug, Clone)]
struct StoreState {
    store: Arc<RedisStore>,
    metrics: Arc<StoreMetrics>,
    /// Whether the last Redis call failed (logged on change only).
    down: Arc<AtomicBool>,
    /// One lease call in flight per tenant limit.
    flights: Arc<Flights>,
}

/// How often the Redis persistence settings are read again.
pub const PERSISTENCE_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

impl StoreServer {
    /// Serves `store` on `listener` (bound by the caller: port 0 is fine).
    pub fn new(listener: TcpListener, store: Arc<RedisStore>, metrics: Arc<StoreMetrics>) -> Self {
        Self {
            listener,
            state: StoreState {
                store,
                metrics,
                down: Arc::new(AtomicBool::new(false)),
                flights: Arc::new(Flights::new()),
            },
        }
    }

    /// The endpoint's metrics (also rendered on its `GET /metrics`).
    pub fn metrics(&self) -> Arc<StoreMetrics> {
        self.state.metrics.clone()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers requests until `shutdown` resolves (in-flight requests
    /// finish). Reads Redis's persistence settings at once (and every
    /// [`PERSISTENCE_CHECK`]), logging them when they change.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StoreError> {
        let watcher = tokio::spawn(watch_persistence(
            self.state.store.clone(),
            self.state.metrics.clone(),
        ));
        let app = router(self.state);
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        watcher.abort();
        served?;
        Ok(())
    }
}

/// Reads the persistence settings now and then; logs each change (the first
/// reading too: operators see at start-up whether records survive a restart).
async fn watch_persistence(store: Arc<RedisStore>, metrics: Arc<StoreMetrics>) {
    let mut last = None;
    loop {
        let mode = store.persistence().await;
        metrics.set_persistence(mode);
        if last != Some(mode) {
            match mode {
                Persistence::AofAlways | Persistence::AofEverysec => {
                    tracing::info!(mode = mode.label(), "Redis persistence: {mode}");
                }
                _ => tracing::warn!(mode = mode.label(), "Redis persistence: {mode}"),
            }
            last = Some(mode);
        }
        tokio::time::sleep(PERSISTENCE_CHECK).await;
    }
}

fn router(state: StoreState) -> Router {
    Router::new()
        .route(wire::LEASE_PATH, post(lease))
        .route(wire::LEASES_PATH, post(leases))
        .route(wire::CLAIM_PATH, post(claim))
        .route(wire::COMPLETE_PATH, post(complete))
        .route(wire::RELEASE_PATH, post(release))
        .route(wire::DEBIT_PATH, post(debit))
        .route("/metrics", get(metrics_text))
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not Found",
                "no such path",
            )
        })
        .method_not_allowed_fallback(|| async {
            problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method Not Allowed",
                "this path does not take this method (see Allow)",
            )
        })
        .layer(DefaultBodyLimit::max(wire::MAX_REQUEST_BYTES))
        .with_state(state)
}

/// An RFC 9457 problem: `{"type","title","status","detail"}`.
fn problem(status: StatusCode, slug: &str, title: &str, detail: &str) -> Response {
    #[derive(Serialize)]
    struct Problem<'a> {
        #[serde(rename = "type")]
        kind: String,
        title: &'a str,
        status: u16,
        detail: &'a str,
    }
    let body = Problem {
        kind: format!("urn:tenant-guard:problem:{slug}"),
        title,
        status: status.as_u16(),
        detail: &bounded_to(detail, MAX_DETAIL_BYTES),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        serde_json::to_string(&body).unwrap_or_default(),
    )
        .into_response()
}

/// Why a request was refused before it reached Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// `400`: the body does not parse, or a field is out of range.
    BadRequest(String),
    /// `413`: the body is larger than [`wire::MAX_REQUEST_BYTES`].
    TooLarge,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::BadRequest(detail) => problem(
                StatusCode::BAD_REQUEST,
                "store-bad-request",
                "Bad Request",
                &detail,
            ),
            Self::TooLarge => problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "store-payload-too-large",
                "Payload Too Large",
                &format!("the body exceeds {} bytes", wire::MAX_REQUEST_BYTES),
            ),
        }
    }
}

/// The request of `op`, parsed and checked (refusals are counted).
fn parse<T: DeserializeOwned>(
    state: &StoreState,
    op: StoreOp,
    body: Result<Bytes, BytesRejection>,
    check: fn(&T) -> Result<(), String>,
) -> Result<T, Refusal> {
    let parsed = match body {
        Ok(body) => serde_json::from_slice::<T>(&body)
            .map_err(|error| Refusal::BadRequest(format!("unreadable request: {error}")))
            .and_then(|request| {
                check(&request)
                    .map(|()| request)
                    .map_err(Refusal::BadRequest)
            }),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(Refusal::TooLarge)
        }
        Err(rejection) => Err(Refusal::BadRequest(rejection.body_text())),
    };
    if parsed.is_err() {
        state.metrics.request(op, StoreOutcome::BadRequest);
    }
    parsed
}

/// Answers the outcome of a Redis call of `op` that took since `started`.
fn answer<T: Serialize>(
    state: &StoreState,
    op: StoreOp,
    started: Instant,
    result: Result<T, StoreError>,
) -> Response {
    state.metrics.redis_call(started.elapsed());
    match result {
        Ok(answer) => {
            state.metrics.request(op, StoreOutcome::Ok);
            if state.down.swap(false, Ordering::Relaxed) {
                tracing::info!("Redis answers again");
            }
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::to_string(&answer).unwrap_or_default(),
            )
                .into_response()
        }
        Err(error) => {
            state.metrics.request(op, StoreOutcome::RedisError);
            let text = error_text(&error);
            if !state.down.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %text, op = op.as_str(), "Redis unavailable");
            } else {
                tracing::debug!(error = %text, op = op.as_str(), "Redis unavailable");
            }
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Service Unavailable",
                &text,
            )
        }
    }
}

async fn lease(State(state): State<StoreState>, body: Result<Bytes, BytesRejection>) -> Response {
    let op = StoreOp::Lease;
    let request = match parse::<LeaseRequest>(&state, op, body, check_lease) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let started = Instant::now();
    let (result, served) = state
        .flights
        .lease(&request, || state.store.lease(&request))
        .await;
    if served == Served::Joined {
        state.metrics.lease_joined();
    }
    answer(&state, op, started, result)
}

async fn leases(State(state): State<StoreState>, body: Result<Bytes, BytesRejection>) -> Response {
    let op = StoreOp::Leases;
    let request = match parse::<LeasesRequest>(&state, op, body, check_leases) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let started = Instant::now();
    let result = state.store.leases(&request).await;
    answer(&state, op, started, result)
}

async fn claim(State(state): State<StoreState>, body: Result<Bytes, BytesRejection>) -> Response {
    let op = StoreOp::Claim;
    let request = match parse::<ClaimRequest>(&state, op, body, check_claim) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let started = Instant::now();
    let result = state.store.claim(&request).await;
    answer(&state, op, started, result)
}

async fn complete(
    State(state): State<StoreState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let op = StoreOp::Complete;
    let request = match parse::<CompleteRequest>(&state, op, body, check_complete) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let started = Instant::now();
    let result = state.store.complete(&request).await;
    answer(&state, op, started, result)
}

async fn release(State(state): State<StoreState>, body: Result<Bytes, BytesRejection>) -> Response {
    let op = StoreOp::Release;
    let request = match parse::<ReleaseRequest>(&state, op, body, check_release) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let started = Instant::now();
    let result = state.store.release(&request).await;
    answer(&state, op, started, result)
}

async fn debit(State(state): State<StoreState>, body: Result<Bytes, BytesRejection>) -> Response {
    let op = StoreOp::Debit;
    let request = match parse::<DebitRequest>(&state, op, body, check_debit) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let started = Instant::now();
    let result = state.store.debit(&request).await;
    answer(&state, op, started, result)
}

async fn metrics_text(State(state): State<StoreState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

fn check_scope_and_key(scope: &str, key: Option<&str>) -> Result<(), String> {
    if !wire::is_valid_scope(scope) {
        return Err(format!(
            "`scope` must be a tenant id ([A-Za-z0-9._-], at most {} bytes) or `{}`",
            wire::MAX_NAME_LEN,
            wire::POOLED_SCOPE
        ));
    }
    if let Some(key) = key {
        if !wire::is_valid_key(key) {
            return Err("`key` must be 32 lowercase hex digits".to_owned());
        }
    }
    Ok(())
}

fn check_range(name: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!("`{name}` must be {min} to {max}"));
    }
    Ok(())
}

fn check_hash16(name: &str, value: Option<&str>) -> Result<(), String> {
    match value {
        Some(value) if !wire::is_hex(value, 16) => {
            Err(format!("`{name}` must be 16 lowercase hex digits"))
        }
        _ => Ok(()),
    }
}

fn check_limit(limit: &str) -> Result<(), String> {
    if !wire::is_valid_limit(limit) {
        return Err(format!(
            "`limit` must be a limit name ([A-Za-z0-9._-], 1 to {} bytes), optionally `~` and 16 hex digits",
            wire::MAX_NAME_LEN
        ));
    }
    Ok(())
}

fn check_lease(request: &LeaseRequest) -> Result<(), String> {
    check_scope_and_key(&request.scope, None)?;
    check_limit(&request.limit)?;
    check_range("emission_us", request.emission_us, 1, MAX_MICROS)?;
    check_range("capacity_us", request.capacity_us, 0, MAX_MICROS)?;
    // Slot counts times `emission_us` stay below 2^53 as well.
    check_range("want", request.want, 0, MAX_SLOTS)?;
    check_range("need", request.need, 0, request.want)?;
    check_range("returned", request.returned, 0, MAX_SLOTS)?;
    check_range("lease_ttl_ms", request.lease_ttl_ms, 0, MAX_MILLIS)?;
    if request.want == 0 && request.returned == 0 {
        return Err("`want` is 0 and nothing is `returned`: nothing to do".to_owned());
    }
    Ok(())
}

/// Largest request count of a quota (Lua's doubles stay exact).
pub const MAX_QUOTA: u64 = 1 << 52;

fn check_leases(request: &LeasesRequest) -> Result<(), String> {
    check_scope_and_key(&request.scope, None)?;
    check_range("lease_ttl_ms", request.lease_ttl_ms, 0, MAX_MILLIS)?;
    if request.items.is_empty() || request.items.len() > wire::MAX_LEASE_ITEMS {
        return Err(format!(
            "`items` must hold 1 to {} limits",
            wire::MAX_LEASE_ITEMS
        ));
    }
    for (index, item) in request.items.iter().enumerate() {
        check_item(item).map_err(|error| format!("items[{index}]: {error}"))?;
    }
    Ok(())
}

fn check_item(item: &wire::LeaseItem) -> Result<(), String> {
    check_limit(&item.limit)?;
    check_window(item.rate.as_ref(), item.quota.as_ref())?;
    check_range("want", item.want, 0, MAX_SLOTS)?;
    check_range("need", item.need, 0, item.want)?;
    check_range("returned", item.returned, 0, MAX_SLOTS)?;
    if item.want == 0 && item.returned == 0 {
        return Err("`want` is 0 and nothing is `returned`: nothing to do".to_owned());
    }
    Ok(())
}

fn check_debit(request: &DebitRequest) -> Result<(), String> {
    check_scope_and_key(&request.scope, None)?;
    if request.items.is_empty() || request.items.len() > wire::MAX_LEASE_ITEMS {
        return Err(format!(
            "`items` must hold 1 to {} limits",
            wire::MAX_LEASE_ITEMS
        ));
    }
    for (index, item) in request.items.iter().enumerate() {
        let checked = check_limit(&item.limit)
            .and_then(|()| check_window(item.rate.as_ref(), item.quota.as_ref()))
            .and_then(|()| check_range("units", item.units, 1, MAX_SLOTS));
        checked.map_err(|error| format!("items[{index}]: {error}"))?;
    }
    Ok(())
}

/// A rate or a quota, exactly one, within what Lua's doubles hold exactly.
fn check_window(
    rate: Option<&wire::RateWindow>,
    quota: Option<&wire::QuotaWindow>,
) -> Result<(), String> {
    match (rate, quota) {
        (Some(rate), None) => {
            check_range("rate.emission_us", rate.emission_us, 1, MAX_MICROS)?;
            check_range("rate.capacity_us", rate.capacity_us, 0, MAX_MICROS)
        }
        (None, Some(quota)) => {
            check_range("quota.requests", quota.requests, 1, MAX_QUOTA)?;
            check_range("quota.window_end_s", quota.window_end_s, 1, MAX_MILLIS)
        }
        _ => Err("set exactly one of `rate` and `quota`".to_owned()),
    }
}

fn check_claim(request: &ClaimRequest) -> Result<(), String> {
    check_scope_and_key(&request.scope, Some(&request.key))?;
    check_hash16("route", Some(&request.route))?;
    check_hash16("body", request.body.as_deref())?;
    check_range("in_flight_ms", request.in_flight_ms, 1, MAX_MILLIS)?;
    check_range("ttl_ms", request.ttl_ms, 0, MAX_MILLIS)
}

fn check_complete(request: &CompleteRequest) -> Result<(), String> {
    check_scope_and_key(&request.scope, Some(&request.key))?;
    check_hash16("body", request.body.as_deref())?;
    check_range("ttl_ms", request.ttl_ms, 1, MAX_MILLIS)?;
    if let Some(response) = &request.response {
        if !wire::is_hex(&response.body, response.body.len()) || response.body.len() % 2 != 0 {
            return Err("`response.body` must be lowercase hex of the body bytes".to_owned());
        }
    }
    Ok(())
}

fn check_release(request: &ReleaseRequest) -> Result<(), String> {
    check_scope_and_key(&request.scope, Some(&request.key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease_request() -> LeaseRequest {
        LeaseRequest {
            scope: "acme".to_owned(),
            limit: "tenant".to_owned(),
            emission_us: 1_200_000,
            capacity_us: 60_000_000,
            want: 1,
            need: 1,
            returned: 0,
            lease_ttl_ms: 0,
        }
    }

    #[test]
    fn fields_that_reach_key_names_or_lua_numbers_are_checked() {
        assert_eq!(check_lease(&lease_request()), Ok(()));
        let mut request = lease_request();
        request.scope = "a}b".to_owned();
        assert!(check_lease(&request).is_err());
        let mut request = lease_request();
        request.limit = "a:b".to_owned();
        assert!(check_lease(&request).is_err());
        let mut request = lease_request();
        request.want = 0;
        assert!(check_lease(&request).is_err());
        request.need = 0;
        assert!(check_lease(&request).is_err(), "nothing to do");
        request.returned = 3;
        assert_eq!(check_lease(&request), Ok(()), "slots given back only");
        let mut request = lease_request();
        request.need = 2;
        assert!(check_lease(&request).is_err(), "need over want");
        let mut request = lease_request();
        request.emission_us = MAX_MICROS + 1;
        assert!(check_lease(&request).is_err());
        let claim = ClaimRequest {
            scope: "acme".to_owned(),
            key: "ab".repeat(16),
            route: "cd".repeat(8),
            body: Some("EF".repeat(8)),
            in_flight_ms: 1000,
            scope_limit: 10,
            ttl_ms: 0,
        };
        assert!(check_claim(&claim).is_err());
        assert_eq!(
            check_claim(&ClaimRequest {
                body: None,
                ..claim
            }),
            Ok(())
        );
    }
}
