//! The `run` loop: connect (retrying with exponential backoff and jitter,
//! answering `POST /sync` as unavailable meanwhile), migrate, `LISTEN`, full
//! sync; then sync on debounced NOTIFY, on a timer, on `POST /sync`; after
//! losing the connection, reconnect and resync; retry a failed sync (delivery
//! or database error) with backoff. One sync at a time. On shutdown the
//! in-flight sync gets a grace period to finish and is otherwise abandoned
//! (the ECDS file is only ever replaced by a rename).
//!
//! `SyncLoop` owns the loop's state; its deadlines are `timers::Timers`,
//! shutdown is [`Shutdown`], the database session is `listen`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_postgres::Client;

use crate::admin::{self, SyncReply, SyncRequest, SyncResult};
use crate::db::{DbConfig, DbError, Trigger};
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::sync::{timed, SyncError, SyncOutcome, Syncer};
use crate::text::{bounded, error_text};

mod background;
mod listen;
mod shutdown;
mod timers;

pub use background::{migrate_blocking, BackgroundSidecar};
use listen::Event;
pub use shutdown::Shutdown;
use timers::{Backoff, Timers};

/// Timing of the loop.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub db: DbConfig,
    /// Full resync period even without NOTIFY (default 5 min).
    pub resync_interval: Duration,
    /// NOTIFYs arriving within this window after the first one are coalesced.
    pub debounce: Duration,
    /// How long an in-flight sync may run on after shutdown was requested.
    pub shutdown_grace: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl RunConfig {
    pub fn new(db: DbConfig) -> Self {
        Self {
            db,
            resync_interval: Duration::from_secs(300),
            debounce: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_initial, self.backoff_max)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot start the sidecar")]
    Io(#[from] std::io::Error),
    #[error("the sidecar thread panicked")]
    Panicked,
}

/// Runs the sidecar until `shutdown` resolves. The admin API is served on `listener`.
pub async fn run(
    config: RunConfig,
    syncer: Syncer,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let shutdown = Shutdown::on(shutdown);
    let metrics = Arc::new(Metrics::for_gateway(syncer.target.name()));
    let (requests_tx, requests) = mpsc::channel::<SyncRequest>(16);
    let admin = tokio::spawn(admin::serve(
        listener,
        metrics.clone(),
        requests_tx,
        shutdown.clone().wait(),
    ));
    SyncLoop {
        backoff: config.backoff(),
        config,
        syncer,
        metrics: metrics.clone(),
        requests,
        shutdown,
        first_connect: true,
    }
    .run()
    .await?;
    metrics.set_db_connected(false);
    match timeout(Duration::from_secs(5), admin).await {
        Ok(Ok(result)) => result?,
        Ok(Err(error)) => tracing::warn!(%error, "admin server task failed"),
        Err(_) => tracing::warn!("admin server did not stop in time"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// How a database session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    /// Shutdown was requested.
    Shutdown,
    /// The connection was lost: reconnect.
    Lost,
}

/// A sync to run and who waits for its answer.
#[derive(Debug)]
struct Pending {
    trigger: Trigger,
    request: Option<SyncRequest>,
}

impl From<Trigger> for Pending {
    fn from(trigger: Trigger) -> Self {
        Self {
            trigger,
            request: None,
        }
    }
}

/// The state of the `run` loop across database sessions.
struct SyncLoop {
    config: RunConfig,
    syncer: Syncer,
    metrics: Arc<Metrics>,
    /// `POST /sync` requests from the admin server.
    requests: mpsc::Receiver<SyncRequest>,
    shutdown: Shutdown,
    /// Between connection attempts; reset once connected.
    backoff: Backoff,
    /// The next session starts with [`Trigger::Startup`], later ones with [`Trigger::Reconnect`].
    first_connect: bool,
}

impl SyncLoop {
    /// Sessions until shutdown; `Err` only for a configuration error.
    async fn run(mut self) -> Result<(), RunError> {
        while let Some((client, mut events)) = self.connect().await? {
            self.metrics.set_db_connected(true);
            let trigger = if std::mem::take(&mut self.first_connect) {
                Trigger::Startup
            } else {
                Trigger::Reconnect
            };
            tracing::info!(schema = %self.config.db.schema, %trigger, "connected; listening for settings changes");
            let ended = self.session(&client, &mut events, trigger).await;
            self.metrics.set_db_connected(false);
            drop(client);
            if ended == SessionEnd::Shutdown {
                break;
            }
            // Reconnect after a short, jittered pause.
            let delay = self.backoff.next_delay();
            tokio::select! {
                () = self.shutdown.recv() => break,
                () = sleep(delay) => {}
            }
        }
        Ok(())
    }

    /// Connects, retrying with backoff; `None` on shutdown. Meanwhile every
    /// `POST /sync` is answered as unavailable.
    async fn connect(
        &mut self,
    ) -> Result<Option<(Client, mpsc::UnboundedReceiver<Event>)>, RunError> {
        loop {
            let connected = tokio::select! {
                () = self.shutdown.recv() => return Ok(None),
                result = listen::connect(&self.config.db) => result,
            };
            let error = match connected {
                Ok(session) => {
                    self.backoff.reset();
                    return Ok(Some(session));
                }
                Err(error) if error.is_config_error() => return Err(error.into()),
                Err(error) => error_text(&error),
            };
            let delay = self.backoff.next_delay();
            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "database unavailable");
            let wake = Instant::now() + delay;
            loop {
                tokio::select! {
                    () = self.shutdown.recv() => return Ok(None),
                    () = sleep_until(wake) => break,
                    Some(request) = self.requests.recv() => {
                        let _ = request.reply.send(SyncReply::unavailable(
                            &bounded(&format!("database unavailable: {error}")),
                        ));
                    }
                }
            }
        }
    }

    /// Syncs on `client` (first for `trigger`, then as events and timers
    /// say) until the connection is lost or shutdown is requested.
    async fn session(
        &mut self,
        client: &Client,
        events: &mut mpsc::UnboundedReceiver<Event>,
        trigger: Trigger,
    ) -> SessionEnd {
        let mut timers = Timers::new(
            self.config.debounce,
            self.config.resync_interval,
            self.config.backoff(),
        );
        let mut pending = Some(Pending::from(trigger));
        loop {
            if let Some(Pending { trigger, request }) = pending.take() {
                let Some(reply) = self.sync_once(client, trigger).await else {
                    tracing::info!("shutdown: abandoned the in-flight sync");
                    return SessionEnd::Shutdown;
                };
                timers.synced(reply.result);
                if let Some(request) = request {
                    let _ = request.reply.send(reply);
                }
                if client.is_closed() {
                    return SessionEnd::Lost;
                }
            }
            pending = tokio::select! {
                () = self.shutdown.recv() => return SessionEnd::Shutdown,
                event = events.recv() => match event {
                    Some(Event::Notify) => {
                        timers.notified();
                        None
                    }
                    Some(Event::Closed(reason)) => {
                        tracing::warn!(reason = %bounded(&reason), "lost the database connection");
                        return SessionEnd::Lost;
                    }
                    None => return SessionEnd::Lost,
                },
                () = sleep_until(timers.notify.unwrap_or_else(Instant::now)), if timers.notify.is_some() => {
                    timers.notify = None;
                    Some(Trigger::Notify.into())
                }
                () = sleep_until(timers.retry.unwrap_or_else(Instant::now)), if timers.retry.is_some() => {
                    timers.retry = None;
                    Some(Trigger::Retry.into())
                }
                () = sleep_until(timers.resync) => Some(Trigger::Timer.into()),
                Some(request) = self.requests.recv() => Some(Pending {
                    trigger: Trigger::Api,
                    request: Some(request),
                }),
            };
        }
    }

    /// One sync with metrics; `None` when abandoned because of shutdown.
    async fn sync_once(&mut self, client: &Client, trigger: Trigger) -> Option<SyncReply> {
        let work = timed(self.syncer.sync(client, trigger));
        tokio::pin!(work);
        let (result, duration) = tokio::select! {
            done = &mut work => done,
            () = self.shutdown.recv() => timeout(self.config.shutdown_grace, work).await.ok()?,
        };
        Some(match result {
            Ok(outcome) => {
                self.metrics.sync_succeeded(duration, outcome.revision_id());
                match &outcome {
                    SyncOutcome::Delivered { revision, .. } => {
                        tracing::info!(%revision, %trigger, ms = duration.as_millis() as u64, "sync delivered a new revision");
                    }
                    SyncOutcome::Unchanged { revision, .. } => {
                        tracing::debug!(%revision, %trigger, "sync: unchanged");
                    }
                }
                reply_from(&outcome)
            }
            Err(error) => {
                self.metrics.sync_failed(duration);
                let text = error_text(&error);
                tracing::error!(error = %text, %trigger, "sync failed");
                reply_from_error(&error, text)
            }
        })
    }
}

fn reply_from(outcome: &SyncOutcome) -> SyncReply {
    let (result, revision_id, revision) = match outcome {
        SyncOutcome::Delivered {
            revision_id,
            revision,
        } => (SyncResult::Delivered, revision_id, revision),
        SyncOutcome::Unchanged {
            revision_id,
            revision,
            ..
        } => (SyncResult::Unchanged, revision_id, revision),
    };
    SyncReply {
        result,
        revision_id: Some(*revision_id),
        revision: Some(revision.clone()),
        error: None,
    }
}

fn reply_from_error(error: &SyncError, text: String) -> SyncReply {
    let (result, revision_id) = match error {
        SyncError::Invalid { revision, .. } => (SyncResult::Invalid, *revision),
        SyncError::Db(_) => (SyncResult::Unavailable, None),
        SyncError::Delivery { revision, .. } => (SyncResult::Failed, Some(*revision)),
        _ => (SyncResult::Failed, None),
    };
    SyncReply {
        result,
        revision_id,
        revision: None,
        error: Some(text),
    }
}
