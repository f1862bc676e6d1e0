//! The `run` loop: connect (retrying with exponential backoff and jitter),
//! migrate, `LISTEN`, full sync; then sync on debounced NOTIFY, on a timer, on
//! `POST /sync`; after losing the connection, reconnect and resync; retry a
//! failed sync (delivery or database error) with backoff. One sync at a time.
//! On shutdown the in-flight sync gets a grace period to finish and is
//! otherwise abandoned (the ECDS file is only ever replaced by a rename).

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_postgres::{AsyncMessage, Client};

use crate::admin::{self, SyncReply, SyncRequest};
use crate::db::{self, DbConfig, DbError};
use crate::metrics::Metrics;
use crate::sync::{timed, SyncError, SyncOutcome, Syncer};
use crate::text::{bounded, error_text};

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

enum Event {
    Notify,
    Closed(String),
}

/// Exponential backoff with "equal jitter": half fixed, half random.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = base / 2;
        half + half.mul_f64(fastrand::f64())
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// Runs the sidecar until `shutdown` resolves. The admin API is served on `listener`.
pub async fn run(
    config: RunConfig,
    syncer: Syncer,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let metrics = Arc::new(Metrics::new());
    let (requests_tx, mut requests) = mpsc::channel::<SyncRequest>(16);
    let admin = tokio::spawn(admin::serve(
        listener,
        metrics.clone(),
        requests_tx,
        stopped(),
    ));

    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    let mut first_connect = true;
    'connect: loop {
        // Connect, migrate, LISTEN.
        let connected = tokio::select! {
            () = stopped() => break 'connect,
            result = connect(&config.db) => result,
        };
        let (client, mut events) = match connected {
            Ok(pair) => pair,
            Err(error) if error.is_config_error() => return Err(error.into()),
            Err(error) => {
                let delay = backoff.next_delay();
                let error = error_text(&error);
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "database unavailable");
                let wake = Instant::now() + delay;
                loop {
                    tokio::select! {
                        () = stopped() => break 'connect,
                        () = sleep_until(wake) => continue 'connect,
                        Some(request) = requests.recv() => {
                            let _ = request.reply.send(SyncReply {
                                result: "unavailable".to_owned(),
                                revision_id: None,
                                revision: None,
                                error: Some(bounded(&format!("database unavailable: {error}")).into_owned()),
                            });
                        }
                    }
                }
            }
        };
        backoff.reset();
        metrics.set_db_connected(true);
        let trigger = if first_connect {
            "startup"
        } else {
            "reconnect"
        };
        first_connect = false;
        tracing::info!(schema = %config.db.schema, trigger, "connected; listening for settings changes");

        let mut pending: Option<(&str, Option<SyncRequest>)> = Some((trigger, None));
        let mut notify_due: Option<Instant> = None;
        let mut resync_due = Instant::now() + config.resync_interval;
        // A failed sync (delivery or database error, not invalid settings) is
        // retried with backoff until one succeeds; any successful sync clears it.
        let mut retry_due: Option<Instant> = None;
        let mut retry_backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        loop {
            if let Some((trigger, request)) = pending.take() {
                let Some(reply) =
                    sync_once(&syncer, &client, trigger, &metrics, &stopped, &config).await
                else {
                    tracing::info!("shutdown: abandoned the in-flight sync");
                    break 'connect;
                };
                match reply.result.as_str() {
                    "delivered" | "unchanged" => {
                        retry_due = None;
                        retry_backoff.reset();
                    }
                    // The same settings would be rejected again: wait for a change.
                    "invalid" => retry_due = None,
                    _ => {
                        let delay = retry_backoff.next_delay();
                        tracing::warn!(
                            retry_in_ms = delay.as_millis() as u64,
                            "will retry the failed sync"
                        );
                        retry_due = Some(Instant::now() + delay);
                    }
                }
                if let Some(request) = request {
                    let _ = request.reply.send(reply);
                }
                resync_due = Instant::now() + config.resync_interval;
                if client.is_closed() {
                    break;
                }
            }
            tokio::select! {
                () = stopped() => break 'connect,
                event = events.recv() => match event {
                    Some(Event::Notify) => {
                        if notify_due.is_none() {
                            notify_due = Some(Instant::now() + config.debounce);
                        }
                    }
                    Some(Event::Closed(reason)) => {
                        tracing::warn!(reason = %bounded(&reason), "lost the database connection");
                        break;
                    }
                    None => break,
                },
                () = sleep_until(notify_due.unwrap_or_else(Instant::now)), if notify_due.is_some() => {
                    notify_due = None;
                    pending = Some(("notify", None));
                }
                () = sleep_until(retry_due.unwrap_or_else(Instant::now)), if retry_due.is_some() => {
                    retry_due = None;
                    pending = Some(("retry", None));
                }
                () = sleep_until(resync_due) => pending = Some(("timer", None)),
                Some(request) = requests.recv() => pending = Some(("api", Some(request))),
            }
        }
        metrics.set_db_connected(false);
        drop(client);
        // Reconnect after a short, jittered pause.
        let delay = backoff.next_delay();
        tokio::select! {
            () = stopped() => break 'connect,
            () = sleep(delay) => {}
        }
    }
    metrics.set_db_connected(false);
    drop(requests);
    match timeout(Duration::from_secs(5), admin).await {
        Ok(Ok(result)) => result?,
        Ok(Err(error)) => tracing::warn!(%error, "admin server task failed"),
        Err(_) => tracing::warn!("admin server did not stop in time"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// One sync with metrics; `None` when abandoned because of shutdown.
async fn sync_once<F, Fut>(
    syncer: &Syncer,
    client: &Client,
    trigger: &str,
    metrics: &Metrics,
    stopped: &F,
    config: &RunConfig,
) -> Option<SyncReply>
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let work = timed(syncer.sync(client, trigger));
    tokio::pin!(work);
    let (result, duration) = tokio::select! {
        done = &mut work => done,
        () = stopped() => timeout(config.shutdown_grace, work).await.ok()?,
    };
    Some(match result {
        Ok(outcome) => {
            metrics.sync_succeeded(duration, outcome.revision_id());
            match &outcome {
                SyncOutcome::Delivered { revision, .. } => {
                    tracing::info!(%revision, trigger, ms = duration.as_millis() as u64, "sync delivered a new revision");
                }
                SyncOutcome::Unchanged { revision, .. } => {
                    tracing::debug!(%revision, trigger, "sync: unchanged");
                }
            }
            reply_from(&outcome)
        }
        Err(error) => {
            metrics.sync_failed(duration);
            let text = error_text(&error);
            tracing::error!(error = %text, trigger, "sync failed");
            let result = match &error {
                SyncError::Invalid { .. } => "invalid",
                SyncError::Db(_) => "unavailable",
                _ => "failed",
            };
            let revision_id = match &error {
                SyncError::Invalid { revision, .. } => *revision,
                SyncError::Delivery { revision, .. } => Some(*revision),
                _ => None,
            };
            SyncReply {
                result: result.to_owned(),
                revision_id,
                revision: None,
                error: Some(text),
            }
        }
    })
}

fn reply_from(outcome: &SyncOutcome) -> SyncReply {
    match outcome {
        SyncOutcome::Delivered {
            revision_id,
            revision,
        } => SyncReply {
            result: "delivered".to_owned(),
            revision_id: Some(*revision_id),
            revision: Some(revision.clone()),
            error: None,
        },
        SyncOutcome::Unchanged {
            revision_id,
            revision,
            ..
        } => SyncReply {
            result: "unchanged".to_owned(),
            revision_id: Some(*revision_id),
            revision: Some(revision.clone()),
            error: None,
        },
    }
}

/// Connects, drives the connection in a task that forwards notifications for
/// our schema, migrates and subscribes.
async fn connect(config: &DbConfig) -> Result<(Client, mpsc::UnboundedReceiver<Event>), DbError> {
    let (mut client, mut connection) = config.connect().await?;
    let (events_tx, events) = mpsc::unbounded_channel();
    let schema = config.schema.clone();
    tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(note))) => {
                    if note.channel() == db::CHANNEL && note.payload() == schema {
                        let _ = events_tx.send(Event::Notify);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    let _ = events_tx.send(Event::Closed(error_text(&error)));
                    break;
                }
                None => {
                    let _ = events_tx.send(Event::Closed("connection ended".to_owned()));
                    break;
                }
            }
        }
    });
    db::migrate(&mut client, &config.schema).await?;
    client
        .batch_execute(&format!("LISTEN {}", db::CHANNEL))
        .await?;
    Ok((client, events))
}

/// Creates and migrates the schema of `config` on a runtime of its own, for
/// harnesses without one that seed settings before starting a sidecar.
pub fn migrate_blocking(config: &DbConfig) -> Result<(), RunError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut client = config.connect_spawned().await?;
        db::migrate(&mut client, &config.schema).await?;
        Ok(())
    })
}

/// A sidecar running [`run`] on its own thread and runtime, for harnesses and
/// benchmarks that have no async runtime. Stopped (gracefully) on drop.
#[derive(Debug)]
pub struct BackgroundSidecar {
    admin_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), RunError>>>,
}

impl BackgroundSidecar {
    /// Binds the admin API on `admin_addr` (port 0 picks one) and starts the loop.
    pub fn start(
        config: RunConfig,
        syncer: Syncer,
        admin_addr: SocketAddr,
    ) -> Result<Self, RunError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(admin_addr))?;
        let admin_addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tenant-guard-sidecar".to_owned())
            .spawn(move || {
                runtime.block_on(run(config, syncer, listener, async move {
                    let _ = stopped.await;
                }))
            })?;
        Ok(Self {
            admin_addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Requests shutdown and waits for the loop to finish.
    pub fn stop(mut self) -> Result<(), RunError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), RunError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| RunError::Panicked)?,
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundSidecar {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
