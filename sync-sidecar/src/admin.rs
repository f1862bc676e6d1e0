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

/// How a sync ended, as `POST /sync` answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncResult {
    /// A new revision was delivered.
    Delivered,
    /// The deployed revision is current.
    Unchanged,
    /// The settings were rejected: the same settings would be rejected again.
    Invalid,
    /// The database could not be reached.
    Unavailable,
    /// Delivery (or anything else) failed: worth retrying.
    Failed,
}

impl SyncResult {
    /// The gateway runs the current settings.
    pub fn is_success(self) -> bool {
        matches!(self, Self::Delivered | Self::Unchanged)
    }

    /// The HTTP status `POST /sync` answers with.
    fn status_code(self) -> StatusCode {
        match self {
            Self::Delivered | Self::Unchanged => StatusCode::OK,
            Self::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The result of a sync requested over the admin API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyncReply {
    pub result: SyncResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SyncReply {
    /// No sync ran: the database (or the loop) is not there; `message` says why.
    pub fn unavailable(message: &str) -> Self {
        Self {
            result: SyncResult::Unavailable,
            revision_id: None,
            revision: None,
            error: Some(message.to_owned()),
        }
    }
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
    let unavailable = |message: &str| SyncReply::unavailable(message);
    let outcome = if state.requests.send(SyncRequest { reply }).await.is_err() {
        unavailable("the sync loop has stopped")
    } else {
        receive
            .await
            .unwrap_or_else(|_| unavailable("the sync was abandoned (shutting down)"))
    };
    let status = outcome.result.status_code();
    let mut outcome = outcome;
    // The one place every answer passes: bound the error text here.
    outcome.error = outcome
        .error
        .map(|error| crate::text::bounded(&error).into_owned());
    let body = serde_json::to_string(&outcome).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
