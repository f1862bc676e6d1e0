//! One sync, in phases: load (the settings and the target's latest revisions,
//! one round trip) → render and hash (`source`) → compare with the deployed
//! revision → validate → check the target ([`Delivery::preflight`]) → record
//! the revision → deliver ([`crate::delivery`]). Every failure that a gateway
//! never saw is recorded once as a failed revision. Also the rollback and the
//! history listing used by the CLI (the dry run is [`crate::dryrun`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::Client;

use crate::db::{self, Change, DbError, Latest, Revision, Status, Trigger};
use crate::delivery::Delivery;
use crate::files::FileError;
use crate::settings::{self, Rendered, SettingsError, Validator};
use crate::text::{bounded, bounded_to, error_text};

mod history;
mod source;

// Callers build a `Syncer` from these.
pub use crate::delivery::{DeliveryError, EnvoyTarget, Target, TARGET_ENVOY, TARGET_KONG};
pub use history::format_history;
use source::Source;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// Settings rejected; `revision` is the failed revision recorded for it
    /// (`None` when the same failure was already recorded).
    #[error("{error}")]
    Invalid {
        revision: Option<i64>,
        error: SettingsError,
    },
    #[error("delivery of revision {revision} failed")]
    Delivery {
        revision: i64,
        #[source]
        source: DeliveryError,
    },
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("revision {0} does not exist (`history` lists the recorded revisions)")]
    NoSuchRevision(i64),
    #[error("revision {id} cannot be rolled back to: {reason}")]
    NotRollbackable { id: i64, reason: String },
    /// What the gateway has could not be read (`sync --dry-run`).
    #[error("{0}")]
    Gateway(String),
}

/// Problems with the sidecar's own configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read the wasm module {path}")]
    ReadWasm {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the ECDS directory {path}: {message}")]
    EcdsDir { path: PathBuf, message: String },
    #[error(transparent)]
    Publish(#[from] FileError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

/// What a successful sync did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum SyncOutcome {
    /// A new revision was delivered.
    Delivered { revision_id: i64, revision: String },
    /// The settings match the deployed revision; `rewrote_file` when the file
    /// on disk was missing or stale and was written again (same revision).
    Unchanged {
        revision_id: i64,
        revision: String,
        rewrote_file: bool,
    },
}

impl SyncOutcome {
    pub fn revision_id(&self) -> i64 {
        match self {
            Self::Delivered { revision_id, .. } | Self::Unchanged { revision_id, .. } => {
                *revision_id
            }
        }
    }
}

/// Renders, validates and delivers; holds the compiled schema validator.
#[derive(Debug)]
pub struct Syncer {
    pub schema: String,
    pub target: Target,
    /// Settings values longer than this (JSON text, bytes) are rejected unread.
    pub max_value_bytes: usize,
    validator: Validator,
}

impl Syncer {
    /// `target`: an [`EnvoyTarget`], a [`crate::kong::KongTarget`] or a [`Target`].
    pub fn new(schema: &str, target: impl Into<Target>) -> Result<Self, SetupError> {
        Ok(Self {
            schema: schema.to_owned(),
            target: target.into(),
            max_value_bytes: settings::DEFAULT_MAX_VALUE_BYTES,
            validator: Validator::new()?,
        })
    }

    /// Sets [`Self::max_value_bytes`].
    pub fn with_max_value_bytes(mut self, max_value_bytes: usize) -> Self {
        self.max_value_bytes = max_value_bytes;
        self
    }

    /// One sync, serialised across processes by an advisory lock. `trigger`
    /// is recorded; a retry of a failed delivery re-delivers the same revision.
    pub async fn sync(
        &self,
        client: &Client,
        trigger: impl Into<Trigger>,
    ) -> Result<SyncOutcome, SyncError> {
        let trigger = trigger.into();
        db::lock_sync(client, &self.schema).await?;
        let result = self.sync_locked(client, trigger).await;
        let unlocked = db::unlock_sync(client, &self.schema).await;
        let outcome = result?;
        unlocked?;
        Ok(outcome)
    }

    async fn sync_locked(
        &self,
        client: &Client,
        trigger: Trigger,
    ) -> Result<SyncOutcome, SyncError> {
        let (mut source, latest) = self.load(client).await?;

        if let Some(deployed) = latest
            .delivered
            .as_ref()
            .filter(|d| d.source_sha256 == source.hash)
        {
            self.preflight(client, &source, &latest, trigger).await?;
            return self.keep(deployed).await;
        }

        let issues = std::mem::take(&mut source.issues);
        let rendered = &source.rendered;
        if let Err(error) =
            self.validator
                .validate_with(rendered, &rendered.with_revision("r0"), issues)
        {
            return Err(self
                .record_invalid(client, &source, &latest, trigger, error)
                .await?);
        }
        for warning in settings::warnings(rendered) {
            tracing::warn!("{}", bounded(&warning));
        }
        self.preflight(client, &source, &latest, trigger).await?;

        // A delivery that failed for these very settings is retried as the same
        // revision, so retries during an outage do not multiply audit rows.
        if let Some(failed) = latest.any.as_ref().filter(|l| {
            l.status == Status::Failed && l.source_sha256 == source.hash && l.document.is_some()
        }) {
            return self.redeliver_failed(client, failed).await;
        }

        let change = source.change_since(latest.delivered.as_ref());
        let id = db::next_revision_id(client).await?;
        let record = Revision::new(id, self.target.name(), trigger, &source.hash, change);
        let document = source.rendered.with_revision(&record.revision);
        self.deliver_and_record(client, record.delivering(document))
            .await
    }

    /// The settings, rendered and hashed, and the target's latest revisions:
    /// one round trip (the client pipelines both queries).
    async fn load(&self, client: &Client) -> Result<(Source, Latest), SyncError> {
        let (rows, latest) = tokio::try_join!(
            db::load_settings(client, self.max_value_bytes),
            db::latest_revisions(client, self.target.name()),
        )?;
        Ok((Source::new(rows, self.max_value_bytes), latest))
    }

    /// The settings still render to the deployed revision: make sure the
    /// gateway has it.
    async fn keep(&self, deployed: &Revision) -> Result<SyncOutcome, SyncError> {
        let document = deployed.document.as_deref().unwrap_or_default();
        let rewrote = self
            .target
            .ensure(document, &deployed.revision)
            .await
            .map_err(|source| SyncError::Delivery {
                revision: deployed.id,
                source,
            })?;
        if rewrote {
            tracing::warn!(revision = %bounded_to(&deployed.revision, 200), target = self.target.name(), "the gateway's copy was missing or stale; delivered it again");
        }
        Ok(SyncOutcome::Unchanged {
            revision_id: deployed.id,
            revision: deployed.revision.clone(),
            rewrote_file: rewrote,
        })
    }

    /// Records settings that failed validation as a failed revision (once:
    /// the same failure is not recorded again) and returns the error to report.
    async fn record_invalid(
        &self,
        client: &Client,
        source: &Source,
        latest: &Latest,
        trigger: Trigger,
        error: SettingsError,
    ) -> Result<SyncError, DbError> {
        if latest
            .any
            .as_ref()
            .is_some_and(|l| l.status == Status::Failed && l.source_sha256 == source.hash)
        {
            return Ok(SyncError::Invalid {
                revision: None,
                error,
            });
        }
        let id = db::next_revision_id(client).await?;
        let change = source.change_since(latest.delivered.as_ref());
        let record = Revision::new(id, self.target.name(), trigger, &source.hash, change)
            .failing(error_text(&error));
        db::insert_revision(client, &record).await?;
        tracing::error!(revision = id, error = %error_text(&error), "settings rejected; the last good revision keeps serving");
        Ok(SyncError::Invalid {
            revision: Some(id),
            error,
        })
    }

    /// Stops the sync when the target refuses every delivery (a corrupt
    /// filter module): recorded as a failed revision without a document
    /// (once per settings and error), nothing delivered.
    async fn preflight(
        &self,
        client: &Client,
        source: &Source,
        latest: &Latest,
        trigger: Trigger,
    ) -> Result<(), SyncError> {
        let Err(refusal) = self.target.preflight() else {
            return Ok(());
        };
        let error = error_text(&refusal);
        let recorded = latest.any.as_ref().filter(|l| {
            l.status == Status::Failed
                && l.source_sha256 == source.hash
                && l.document.is_none()
                && l.error.as_deref() == Some(bounded(&error).as_ref())
        });
        let revision = match recorded {
            Some(recorded) => recorded.id,
            None => {
                let id = db::next_revision_id(client).await?;
                let change = source.change_since(latest.delivered.as_ref());
                let record = Revision::new(id, self.target.name(), trigger, &source.hash, change)
                    .failing(error.clone());
                db::insert_revision(client, &record).await?;
                tracing::error!(revision = id, %error, "the target refused the delivery; the last good revision keeps serving");
                id
            }
        };
        Err(SyncError::Delivery {
            revision,
            source: refusal,
        })
    }

    /// Records the revision, then delivers it: whoever sees a revision in the
    /// gateway finds its record. A crash in between is repaired by the next
    /// sync (same hash → the file is compared and written again).
    async fn deliver_and_record(
        &self,
        client: &Client,
        record: Revision,
    ) -> Result<SyncOutcome, SyncError> {
        db::insert_revision(client, &record).await?;
        let document = record.document.as_deref().unwrap_or_default();
        match self.target.deliver(document, &record.revision).await {
            Ok(_) => {
                let changed = bounded(&record.changed_keys.join(", ")).into_owned();
                let actors = bounded(&record.actors.join(", ")).into_owned();
                tracing::info!(revision = %record.revision, %changed, %actors, "delivered");
                Ok(SyncOutcome::Delivered {
                    revision_id: record.id,
                    revision: record.revision,
                })
            }
            Err(source) => {
                db::mark_failed(client, record.id, &error_text(&source)).await?;
                Err(SyncError::Delivery {
                    revision: record.id,
                    source,
                })
            }
        }
    }

    /// Delivers a recorded revision whose delivery failed again; on success it
    /// becomes `delivered`, keeping the last error it overcame in `error`.
    async fn redeliver_failed(
        &self,
        client: &Client,
        failed: &Revision,
    ) -> Result<SyncOutcome, SyncError> {
        let document = failed.document.as_deref().unwrap_or_default();
        match self.target.deliver(document, &failed.revision).await {
            Ok(_) => {
                let overcame = failed.error.as_deref().unwrap_or("unknown error");
                db::mark_delivered(
                    client,
                    failed.id,
                    &format!("delivered on retry after: {overcame}"),
                )
                .await?;
                tracing::info!(revision = %failed.revision, "delivered on retry");
                Ok(SyncOutcome::Delivered {
                    revision_id: failed.id,
                    revision: failed.revision.clone(),
                })
            }
            Err(source) => {
                db::mark_failed(client, failed.id, &error_text(&source)).await?;
                Err(SyncError::Delivery {
                    revision: failed.id,
                    source,
                })
            }
        }
    }

    /// Re-delivers the document of revision `to` as a new revision marked as
    /// its rollback. It stays deployed until the settings change again.
    pub async fn rollback(
        &self,
        client: &Client,
        to: i64,
        actor: &str,
    ) -> Result<SyncOutcome, SyncError> {
        db::lock_sync(client, &self.schema).await?;
        let result = self.rollback_locked(client, to, actor).await;
        let unlocked = db::unlock_sync(client, &self.schema).await;
        let outcome = result?;
        unlocked?;
        Ok(outcome)
    }

    async fn rollback_locked(
        &self,
        client: &Client,
        to: i64,
        actor: &str,
    ) -> Result<SyncOutcome, SyncError> {
        let old = db::revision(client, to)
            .await?
            .ok_or(SyncError::NoSuchRevision(to))?;
        let restored = self.restorable(&old)?;
        let rows = db::load_settings(client, self.max_value_bytes).await?;
        // The settings as they are now: the next sync compares against them,
        // so the rollback stays until they change.
        let now = Source::new(rows, self.max_value_bytes);
        let change = Change {
            actors: vec![actor.to_owned()],
            changed_keys: vec![format!("rollback to r{to}")],
            settings: now.snapshot(),
        };
        let id = db::next_revision_id(client).await?;
        let record = Revision::new(
            id,
            self.target.name(),
            Trigger::Rollback,
            &restored.content_hash(),
            change,
        )
        .rendered_from(&now.hash)
        .rolling_back(to);
        let document = restored.with_revision(&record.revision);
        self.deliver_and_record(client, record.delivering(document))
            .await
    }

    /// The document of `old` without its revision, validated again (the
    /// filter may have become stricter since).
    fn restorable(&self, old: &Revision) -> Result<Rendered, SyncError> {
        let not_rollbackable = |reason: &str| SyncError::NotRollbackable {
            id: old.id,
            reason: reason.to_owned(),
        };
        if old.status != Status::Delivered {
            return Err(not_rollbackable(&format!(
                "its status is `{}`, only delivered revisions can be restored",
                old.status
            )));
        }
        let old_document = old
            .document
            .as_deref()
            .ok_or_else(|| not_rollbackable("it has no document"))?;
        let mut document: Value = serde_json::from_str(old_document)
            .map_err(|e| not_rollbackable(&format!("its document is not JSON: {e}")))?;
        if let Value::Object(map) = &mut document {
            map.remove("revision");
        }
        let restored = Rendered::from_document(document);
        self.validator
            .validate(&restored, &restored.with_revision("r0"))
            .map_err(|error| SyncError::Invalid {
                revision: None,
                error,
            })?;
        Ok(restored)
    }
}

/// Measures a future's duration.
pub async fn timed<T>(future: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let output = future.await;
    (output, start.elapsed())
}
