//! `tg_revisions`, the audit trail: one [`Revision`] per delivery attempt,
//! numbered by a sequence, with its [`Status`] and the [`Trigger`] that caused
//! it, and the queries a sync, a rollback and `history` make on it.

use std::fmt;

use serde_json::Value;
use tokio_postgres::Client;

use super::DbError;

/// Delivery outcome recorded in a revision (`tg_revisions.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Delivered,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// Parses the `status` column.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for Status {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Why a sync ran (`tg_revisions.trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The daemon's first sync after it connected.
    Startup,
    /// The first sync after the daemon lost its database session and got it back.
    Reconnect,
    /// A (debounced) NOTIFY: the settings changed.
    Notify,
    /// The periodic full resync.
    Timer,
    /// `POST /sync` on the admin API.
    Api,
    /// The daemon retrying a sync that failed (delivery or database error).
    Retry,
    /// A sync requested from outside the daemon (`tenant-guard-sidecar sync`, a library caller).
    Cli,
    /// `tenant-guard-sidecar rollback`.
    Rollback,
}

impl Trigger {
    const ALL: [Self; 8] = [
        Self::Startup,
        Self::Reconnect,
        Self::Notify,
        Self::Timer,
        Self::Api,
        Self::Retry,
        Self::Cli,
        Self::Rollback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Reconnect => "reconnect",
            Self::Notify => "notify",
            Self::Timer => "timer",
            Self::Api => "api",
            Self::Retry => "retry",
            Self::Cli => "cli",
            Self::Rollback => "rollback",
        }
    }

    /// Parses the `trigger` column.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for Trigger {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A caller naming its own reason: a trigger's name is that trigger, any
/// other name is a sync requested from outside the daemon ([`Trigger::Cli`]).
impl From<&str> for Trigger {
    fn from(name: &str) -> Self {
        Self::parse(name).unwrap_or(Self::Cli)
    }
}

/// What changed since the deployed revision, as recorded with a new one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Change {
    /// Who changed it (`updated_by` of the changed rows, or the rollback's actor).
    pub actors: Vec<String>,
    /// Identities of the changed rows (`-identity` for a removed one), or a note.
    pub changed_keys: Vec<String>,
    /// The settings rows the revision was made from.
    pub settings: Option<Value>,
}

/// One row of `tg_revisions`.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub id: i64,
    pub target: String,
    pub status: Status,
    /// The label carried in the document, `r<id>-<sha256 prefix>`.
    pub revision: String,
    /// Hash of the document without its `revision` field.
    pub sha256: String,
    /// Hash of what the settings rendered to when this revision was made
    /// (differs from `sha256` for rollbacks); unchanged → nothing to deliver.
    pub source_sha256: String,
    pub document: Option<String>,
    pub error: Option<String>,
    pub actors: Vec<String>,
    pub changed_keys: Vec<String>,
    pub trigger: Trigger,
    pub rollback_of: Option<i64>,
    pub settings: Option<Value>,
    pub created_at: String,
}

impl Revision {
    /// A revision about to be recorded for `target`: number `id`, labelled
    /// [`Revision::label`], `sha256` the hash of its document and of the
    /// settings it was rendered from (see [`Self::rendered_from`]). Complete
    /// it with [`Self::delivering`] or [`Self::failing`].
    pub fn new(id: i64, target: &str, trigger: Trigger, sha256: &str, change: Change) -> Self {
        Self {
            id,
            target: target.to_owned(),
            status: Status::Delivered,
            revision: Self::label(id, sha256),
            sha256: sha256.to_owned(),
            source_sha256: sha256.to_owned(),
            document: None,
            error: None,
            actors: change.actors,
            changed_keys: change.changed_keys,
            trigger,
            rollback_of: None,
            settings: change.settings,
            created_at: String::new(),
        }
    }

    /// `r<id>-<first 12 hex digits of sha256>`.
    pub fn label(id: i64, sha256: &str) -> String {
        format!("r{id}-{}", sha256.get(..12).unwrap_or(sha256))
    }

    /// The settings rendered to `source_sha256`, not to this document (a rollback).
    pub fn rendered_from(mut self, source_sha256: &str) -> Self {
        source_sha256.clone_into(&mut self.source_sha256);
        self
    }

    /// Restores revision `to`.
    pub fn rolling_back(mut self, to: i64) -> Self {
        self.rollback_of = Some(to);
        self
    }

    /// Carries `document` (its `revision` is [`Self::revision`]) to the gateway.
    pub fn delivering(mut self, document: String) -> Self {
        self.status = Status::Delivered;
        self.document = Some(document);
        self
    }

    /// Records a revision that was never delivered, and why.
    pub fn failing(mut self, error: String) -> Self {
        self.status = Status::Failed;
        self.error = Some(error);
        self
    }
}

const REVISION_COLUMNS: &str =
    "id, target, status, revision, sha256, source_sha256, document, error, \
     actors, changed_keys, trigger, rollback_of, settings::text, created_at::text";

fn revision_from_row(row: &tokio_postgres::Row) -> Result<Revision, DbError> {
    let corrupt = |message: String| DbError::Corrupt {
        table: "tg_revisions",
        message,
    };
    let settings: Option<String> = row.try_get(12)?;
    let settings = settings
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| corrupt(e.to_string()))?;
    let status: String = row.try_get(2)?;
    let status = Status::parse(&status).ok_or_else(|| {
        corrupt(format!(
            "unknown status `{}`",
            crate::text::bounded_to(&status, 100)
        ))
    })?;
    let trigger: String = row.try_get(10)?;
    let trigger = Trigger::parse(&trigger).ok_or_else(|| {
        corrupt(format!(
            "unknown trigger `{}`",
            crate::text::bounded_to(&trigger, 100)
        ))
    })?;
    Ok(Revision {
        id: row.try_get(0)?,
        target: row.try_get(1)?,
        status,
        revision: row.try_get(3)?,
        sha256: row.try_get(4)?,
        source_sha256: row.try_get(5)?,
        document: row.try_get(6)?,
        error: row.try_get(7)?,
        actors: row.try_get(8)?,
        changed_keys: row.try_get(9)?,
        trigger,
        rollback_of: row.try_get(11)?,
        settings,
        created_at: row.try_get(13)?,
    })
}

/// The newest revision for `target`, optionally only delivered ones.
pub async fn latest_revision(
    client: &Client,
    target: &str,
    delivered_only: bool,
) -> Result<Option<Revision>, DbError> {
    let sql = format!(
        "SELECT {REVISION_COLUMNS} FROM tg_revisions
          WHERE target = $1 AND ($2 = false OR status = 'delivered')
          ORDER BY id DESC LIMIT 1"
    );
    client
        .query_opt(&sql, &[&target, &delivered_only])
        .await?
        .as_ref()
        .map(revision_from_row)
        .transpose()
}

/// The newest revisions of a target, as a sync compares against them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latest {
    /// The newest delivered one: what the gateway runs.
    pub delivered: Option<Revision>,
    /// The newest of any status (the same as `delivered` unless the last attempt failed).
    pub any: Option<Revision>,
}

/// [`Latest`] for `target`, in one query.
pub async fn latest_revisions(client: &Client, target: &str) -> Result<Latest, DbError> {
    let sql = format!(
        "SELECT {REVISION_COLUMNS} FROM tg_revisions
          WHERE id IN ((SELECT max(id) FROM tg_revisions WHERE target = $1),
                       (SELECT max(id) FROM tg_revisions
                         WHERE target = $1 AND status = 'delivered'))
          ORDER BY id DESC"
    );
    let rows = client
        .query(&sql, &[&target])
        .await?
        .iter()
        .map(revision_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Latest {
        delivered: rows.iter().find(|r| r.status == Status::Delivered).cloned(),
        any: rows.into_iter().next(),
    })
}

pub async fn revision(client: &Client, id: i64) -> Result<Option<Revision>, DbError> {
    let sql = format!("SELECT {REVISION_COLUMNS} FROM tg_revisions WHERE id = $1");
    client
        .query_opt(&sql, &[&id])
        .await?
        .as_ref()
        .map(revision_from_row)
        .transpose()
}

/// The newest `limit` revisions, newest first.
pub async fn history(client: &Client, limit: i64) -> Result<Vec<Revision>, DbError> {
    let sql = format!("SELECT {REVISION_COLUMNS} FROM tg_revisions ORDER BY id DESC LIMIT $1");
    client
        .query(&sql, &[&limit])
        .await?
        .iter()
        .map(revision_from_row)
        .collect()
}

/// Reserves the next revision number.
pub async fn next_revision_id(client: &Client) -> Result<i64, DbError> {
    Ok(client
        .query_one("SELECT nextval('tg_revisions_id_seq')", &[])
        .await?
        .try_get(0)?)
}

/// Inserts a revision record (`created_at` is set by the database).
pub async fn insert_revision(client: &Client, rev: &Revision) -> Result<(), DbError> {
    let settings = rev.settings.as_ref().map(Value::to_string);
    let error = rev
        .error
        .as_deref()
        .map(|e| crate::text::bounded(e).into_owned());
    client
        .execute(
            "INSERT INTO tg_revisions (id, target, status, revision, sha256, source_sha256,
                 document, error, actors, changed_keys, trigger, rollback_of, settings)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::text::jsonb)",
            &[
                &rev.id,
                &rev.target,
                &rev.status.as_str(),
                &rev.revision,
                &rev.sha256,
                &rev.source_sha256,
                &rev.document,
                &error,
                &rev.actors,
                &rev.changed_keys,
                &rev.trigger.as_str(),
                &rev.rollback_of,
                &settings,
            ],
        )
        .await?;
    Ok(())
}

/// Marks a recorded revision as failed (its delivery did not happen).
pub async fn mark_failed(client: &Client, id: i64, error: &str) -> Result<(), DbError> {
    set_status(client, id, Status::Failed, error).await
}

/// A failed revision delivered on a later attempt; `note` says what it overcame.
pub async fn mark_delivered(client: &Client, id: i64, note: &str) -> Result<(), DbError> {
    set_status(client, id, Status::Delivered, note).await
}

/// Sets a recorded revision's status and its (bounded) error or note.
async fn set_status(client: &Client, id: i64, status: Status, text: &str) -> Result<(), DbError> {
    let text = crate::text::bounded(text);
    client
        .execute(
            "UPDATE tg_revisions SET status = $3, error = $2 WHERE id = $1",
            &[&id, &text.as_ref(), &status.as_str()],
        )
        .await?;
    Ok(())
}
