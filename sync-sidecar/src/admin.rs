//! The admin HTTP server: `GET /live`, `GET /ready`, `GET /metrics`, `POST /sync`.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// The result of a sync requested over the admin API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyncReply {
    /// `delivered`, `unchanged`, `invalid`, `unavailable` or `failed`.
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A sync request from the admin API to the sync loop.
#[derive(Debug)]
pub struct SyncRequest {
    pub reply: oneshot::Sender<SyncReply>,
}

#[derive(Debug, Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    requests: mpsc::Sender<SyncRequest>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin server failed")]
    Io(#[from] std::io::Error),
}

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    requests: mpsc::Sender<SyncRequest>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AdminError> {
    let app = Router::new()
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/sync", post(sync))
        .with_state(AdminState { metrics, requests });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn ready(State(state): State<AdminState>) -> Response {
    if state.metrics.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no successful delivery yet\n",
        )
            .into_response()
    }
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn sync(State(state): State<AdminState>) -> Response {
    let (reply, receive) = oneshot::channel();
    let unavailable = |message: &str| SyncReply {
        result: "unavailable".to_owned(),
        revision_id: None,
        revision: None,
        error: Some(message.to_owned()),
    };
    let outcome = if state.requests.send(SyncRequest { reply }).await.is_err() {
        unavailable("the sync loop has stopped")
    } else {
        receive
            .await
            .unwrap_or_else(|_| unavailable("the sync was abandoned (shutting down)"))
    };
    let status = match outcome.result.as_str() {
        "delivered" | "unchanged" => StatusCode::OK,
        "invalid" => StatusCode::UNPROCESSABLE_ENTITY,
        "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut outcome = outcome;
    // The one place every answer passes: bound the error text here.
    outcome.error = outcome
        .error
        .map(|error| crate::text::bounded(&error).into_owned());
    let body = serde_json::to_string(&outcome).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
