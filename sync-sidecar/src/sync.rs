//! One sync: load settings → resolve → validate → compare with the deployed
//! revision → deliver (Envoy: the ECDS file; Kong: kong.yml + Admin API, see
//! [`crate::kong`]) → record the revision per target. Also the rollback and
//! the history listing used by the CLI (the dry run is [`crate::dryrun`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::Client;

use crate::db::{self, DbError, Revision, Status};
use crate::envoy::{self, EnvoyDeliveryError};
use crate::kong::{KongDeliveryError, KongOutcome, KongTarget};
use crate::settings::{self, Issue, Rendered, SettingRow, SettingsError, Validator};
use crate::text::{bounded, bounded_to, error_text};

/// `tg_revisions.target` of Envoy deliveries.
pub const TARGET_ENVOY: &str = "envoy";
/// `tg_revisions.target` of Kong deliveries.
pub const TARGET_KONG: &str = "kong";

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
    Publish(#[from] EnvoyDeliveryError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

/// Where and how the Envoy target is delivered.
#[derive(Debug, Clone)]
pub struct EnvoyTarget {
    /// The directory Envoy watches; the ECDS file is [`envoy::ECDS_FILE_NAME`] in it.
    pub ecds_dir: PathBuf,
    /// The `.wasm` path referenced by the ECDS resource.
    pub wasm_path: PathBuf,
}

impl EnvoyTarget {
    /// `wasm` given: publish it content-addressed into `ecds_dir` and reference
    /// that copy; otherwise reference `wasm_path` as is.
    pub fn prepare(
        ecds_dir: &Path,
        wasm: Option<&Path>,
        wasm_path: Option<&Path>,
    ) -> Result<Self, SetupError> {
        if !ecds_dir.is_dir() {
            return Err(SetupError::EcdsDir {
                path: ecds_dir.to_path_buf(),
                message: "not a directory".to_owned(),
            });
        }
        let wasm_path = match (wasm, wasm_path) {
            (Some(module), _) => {
                let bytes = std::fs::read(module).map_err(|source| SetupError::ReadWasm {
                    path: module.to_path_buf(),
                    source,
                })?;
                let published = envoy::publish_wasm(ecds_dir, &bytes)?;
                tracing::info!(path = %published.display(), "published the filter module");
                published
            }
            (None, Some(path)) => path.to_path_buf(),
            (None, None) => {
                return Err(SetupError::EcdsDir {
                    path: ecds_dir.to_path_buf(),
                    message: "give --wasm (a module to publish) or --wasm-path".to_owned(),
                })
            }
        };
        Ok(Self {
            ecds_dir: ecds_dir.to_path_buf(),
            wasm_path,
        })
    }

    pub fn ecds_file(&self) -> PathBuf {
        self.ecds_dir.join(envoy::ECDS_FILE_NAME)
    }

    fn render(&self, document: &str, revision: &str) -> Result<String, EnvoyDeliveryError> {
        envoy::render_ecds_resource(document, &self.wasm_path, revision)
    }

    /// Writes the ECDS file unless it already holds exactly these bytes.
    /// Returns whether it wrote.
    fn deliver(&self, document: &str, revision: &str) -> Result<bool, EnvoyDeliveryError> {
        let resource = self.render(document, revision)?;
        let file = self.ecds_file();
        if std::fs::read(&file).ok().as_deref() == Some(resource.as_bytes()) {
            return Ok(false);
        }
        envoy::write_atomically(&file, resource.as_bytes())?;
        Ok(true)
    }
}

/// Why delivering to a gateway failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Envoy(#[from] EnvoyDeliveryError),
    #[error(transparent)]
    Kong(#[from] KongDeliveryError),
}

/// The gateway a [`Syncer`] delivers to; revisions are recorded per target
/// (`tg_revisions.target`), so one sidecar per gateway can share a schema.
#[derive(Debug, Clone)]
pub enum Target {
    Envoy(EnvoyTarget),
    Kong(Box<KongTarget>),
}

impl From<EnvoyTarget> for Target {
    fn from(target: EnvoyTarget) -> Self {
        Self::Envoy(target)
    }
}

impl From<KongTarget> for Target {
    fn from(target: KongTarget) -> Self {
        Self::Kong(Box::new(target))
    }
}

impl Target {
    /// The `tg_revisions.target` value.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Envoy(_) => TARGET_ENVOY,
            Self::Kong(_) => TARGET_KONG,
        }
    }

    /// Delivers `document`; returns whether the gateway (or its file) changed.
    /// Envoy: writes the ECDS file unless identical. Kong: writes kong.yml
    /// unless identical and pushes through the Admin API (DB-less: Kong answers
    /// 304 to an identical configuration).
    async fn deliver(&self, document: &str, revision: &str) -> Result<bool, DeliveryError> {
        match self {
            Self::Envoy(envoy) => Ok(envoy.deliver(document, revision)?),
            Self::Kong(kong) => Ok(kong.deliver(document, revision).await? == KongOutcome::Applied),
        }
    }

    /// Re-delivers the deployed revision when the gateway may have lost it:
    /// Envoy and Kong DB-less as [`Target::deliver`]; Kong with a database
    /// only rewrites kong.yml (the entity lives in Kong's database).
    async fn ensure(&self, document: &str, revision: &str) -> Result<bool, DeliveryError> {
        match self {
            Self::Kong(kong) if kong.mode == crate::kong::KongMode::Db => {
                Ok(kong.write_kong_yml(document)?)
            }
            other => other.deliver(document, revision).await,
        }
    }
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
    /// `target`: an [`EnvoyTarget`], a [`KongTarget`] or a [`Target`].
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
    /// (`startup`, `notify`, `timer`, `api`, `cli`, `reconnect`, `retry`) is recorded; a retry of a failed delivery re-delivers the same revision.
    pub async fn sync(&self, client: &Client, trigger: &str) -> Result<SyncOutcome, SyncError> {
        db::lock_sync(client, &self.schema).await?;
        let result = self.sync_locked(client, trigger).await;
        let unlocked = db::unlock_sync(client, &self.schema).await;
        let outcome = result?;
        unlocked?;
        Ok(outcome)
    }

    async fn sync_locked(&self, client: &Client, trigger: &str) -> Result<SyncOutcome, SyncError> {
        let mut rows = db::load_settings(client, self.max_value_bytes).await?;
        settings::strip_oversized(&mut rows, self.max_value_bytes);
        let deployed = db::latest_revision(client, self.target.name(), true).await?;
        let (rendered, issues) = settings::render_parts(&rows, self.max_value_bytes);
        let source_hash = source_hash(&rendered, &issues);

        if let Some(deployed) = &deployed {
            if deployed.source_sha256 == source_hash {
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
                return Ok(SyncOutcome::Unchanged {
                    revision_id: deployed.id,
                    revision: deployed.revision.clone(),
                    rewrote_file: rewrote,
                });
            }
        }

        let (changed_keys, actors) = changes(deployed.as_ref(), &rows);
        let snapshot = serde_json::to_value(&rows).ok();
        let validated =
            self.validator
                .validate_with(&rendered, &rendered.with_revision("r0"), issues);
        match validated {
            Ok(()) => {}
            Err(error) => {
                let latest = db::latest_revision(client, self.target.name(), false).await?;
                if latest.as_ref().is_some_and(|l| {
                    l.status == Status::Failed.as_str() && l.source_sha256 == source_hash
                }) {
                    return Err(SyncError::Invalid {
                        revision: None,
                        error,
                    });
                }
                let id = db::next_revision_id(client).await?;
                let revision = format!("r{id}-{}", short(&source_hash));
                db::insert_revision(
                    client,
                    &Revision {
                        id,
                        target: self.target.name().to_owned(),
                        status: Status::Failed.as_str().to_owned(),
                        revision,
                        sha256: source_hash.clone(),
                        source_sha256: source_hash,
                        document: None,
                        error: Some(error_text(&error)),
                        actors,
                        changed_keys,
                        trigger: trigger.to_owned(),
                        rollback_of: None,
                        settings: snapshot,
                        created_at: String::new(),
                    },
                )
                .await?;
                tracing::error!(revision = id, error = %error_text(&error), "settings rejected; the last good revision keeps serving");
                return Err(SyncError::Invalid {
                    revision: Some(id),
                    error,
                });
            }
        }
        for warning in settings::warnings(&rendered) {
            tracing::warn!("{}", bounded(&warning));
        }

        // A delivery that failed for these very settings is retried as the same
        // revision, so retries during an outage do not multiply audit rows.
        let latest = db::latest_revision(client, self.target.name(), false).await?;
        if let Some(failed) = latest.filter(|l| {
            l.status == Status::Failed.as_str()
                && l.source_sha256 == source_hash
                && l.document.is_some()
        }) {
            return self.redeliver_failed(client, failed).await;
        }

        let id = db::next_revision_id(client).await?;
        let revision = format!("r{id}-{}", short(&source_hash));
        let document = rendered.with_revision(&revision);
        let mut record = Revision {
            id,
            target: self.target.name().to_owned(),
            status: Status::Delivered.as_str().to_owned(),
            revision: revision.clone(),
            sha256: source_hash.clone(),
            source_sha256: source_hash,
            document: Some(document.clone()),
            error: None,
            actors,
            changed_keys,
            trigger: trigger.to_owned(),
            rollback_of: None,
            settings: snapshot,
            created_at: String::new(),
        };
        self.deliver_and_record(client, &mut record, &document)
            .await?;
        Ok(SyncOutcome::Delivered {
            revision_id: id,
            revision,
        })
    }

    /// Records the revision, then writes the file: whoever sees a revision in
    /// Envoy finds its record. A crash in between is repaired by the next sync
    /// (same hash → the file is compared and written again).
    async fn deliver_and_record(
        &self,
        client: &Client,
        record: &mut Revision,
        document: &str,
    ) -> Result<(), SyncError> {
        db::insert_revision(client, record).await?;
        match self.target.deliver(document, &record.revision).await {
            Ok(_) => {
                let changed = bounded(&record.changed_keys.join(", ")).into_owned();
                let actors = bounded(&record.actors.join(", ")).into_owned();
                tracing::info!(revision = %record.revision, %changed, %actors, "delivered");
                Ok(())
            }
            Err(source) => {
                let error = error_text(&source);
                record.status = Status::Failed.as_str().to_owned();
                db::mark_failed(client, record.id, &error).await?;
                record.error = Some(error);
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
        failed: Revision,
    ) -> Result<SyncOutcome, SyncError> {
        let document = failed.document.clone().unwrap_or_default();
        match self.target.deliver(&document, &failed.revision).await {
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
                    revision: failed.revision,
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
        let not_rollbackable = |reason: &str| SyncError::NotRollbackable {
            id: to,
            reason: reason.to_owned(),
        };
        if old.status != Status::Delivered.as_str() {
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
        let rendered_old = Rendered::from_document(document);
        // The filter may have become stricter since: validate again.
        self.validator
            .validate(&rendered_old, &rendered_old.with_revision("r0"))
            .map_err(|error| SyncError::Invalid {
                revision: None,
                error,
            })?;
        let mut rows = db::load_settings(client, self.max_value_bytes).await?;
        settings::strip_oversized(&mut rows, self.max_value_bytes);
        let (rendered_now, issues) = settings::render_parts(&rows, self.max_value_bytes);
        let source = source_hash(&rendered_now, &issues);
        let id = db::next_revision_id(client).await?;
        let hash = rendered_old.content_hash();
        let revision = format!("r{id}-{}", short(&hash));
        let document = rendered_old.with_revision(&revision);
        let mut record = Revision {
            id,
            target: self.target.name().to_owned(),
            status: Status::Delivered.as_str().to_owned(),
            revision: revision.clone(),
            sha256: hash,
            source_sha256: source,
            document: Some(document.clone()),
            error: None,
            actors: vec![actor.to_owned()],
            changed_keys: vec![format!("rollback to r{to}")],
            trigger: "rollback".to_owned(),
            rollback_of: Some(to),
            settings: serde_json::to_value(&rows).ok(),
            created_at: String::new(),
        };
        self.deliver_and_record(client, &mut record, &document)
            .await?;
        Ok(SyncOutcome::Delivered {
            revision_id: id,
            revision,
        })
    }
}

/// Hash identifying what the settings render to (with the findings when they
/// do not render cleanly).
fn source_hash(rendered: &Rendered, issues: &[Issue]) -> String {
    if issues.is_empty() {
        return rendered.content_hash();
    }
    let findings: Vec<String> = issues.iter().map(ToString::to_string).collect();
    envoy::sha256_hex(
        format!(
            "render-error:{}\n{}",
            findings.join("; "),
            rendered.document
        )
        .as_bytes(),
    )
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Keys changed since the deployed revision's settings snapshot, and who changed them.
fn changes(deployed: Option<&Revision>, rows: &[SettingRow]) -> (Vec<String>, Vec<String>) {
    let before: BTreeMap<String, SettingRow> = deployed
        .and_then(|d| d.settings.clone())
        .and_then(|s| serde_json::from_value::<Vec<SettingRow>>(s).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|row| (row.identity(), row))
        .collect();
    let mut changed = Vec::new();
    let mut actors = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for row in rows {
        let identity = row.identity();
        match before.get(&identity) {
            Some(old) if old.value == row.value => {}
            _ => {
                changed.push(identity.clone());
                actors.insert(row.updated_by.clone());
            }
        }
        seen.insert(identity);
    }
    for identity in before.keys().filter(|k| !seen.contains(*k)) {
        changed.push(format!("-{identity}"));
    }
    (changed, actors.into_iter().collect())
}

/// `history` as a text table, newest first.
pub fn format_history(revisions: &[Revision]) -> String {
    let mut out = format!(
        "{:>5}  {:<22}  {:<7}  {:<10}  {:<18}  {:<16}  {}\n",
        "REV", "CREATED", "TARGET", "STATUS", "REVISION", "ACTORS", "CHANGES / NOTE"
    );
    for rev in revisions {
        let mut note = rev.changed_keys.join(", ");
        if let Some(to) = rev.rollback_of {
            note = format!("rollback to revision {to}");
        }
        if let Some(error) = &rev.error {
            // One line per revision: the full text is in tg_revisions.error.
            let error = bounded_to(&error.replace('\n', " "), 300).into_owned();
            note = if note.is_empty() {
                format!("error: {error}")
            } else {
                format!("{note}; error: {error}")
            };
        }
        out.push_str(&format!(
            "{:>5}  {:<22}  {:<7}  {:<10}  {:<18}  {:<16}  {}\n",
            rev.id,
            rev.created_at.get(..22).unwrap_or(&rev.created_at),
            rev.target,
            rev.status,
            rev.revision,
            rev.actors.join(","),
            note
        ));
    }
    out
}

/// Measures a future's duration.
pub async fn timed<T>(future: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let output = future.await;
    (output, start.elapsed())
}
