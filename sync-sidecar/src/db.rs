//! PostgreSQL access: connection (one schema per deployment via `search_path`),
//! idempotent migrations, the settings rows and the revision (audit) records.
//!
//! Tables (in the configured schema):
//! - `tg_settings(scope, tenant, route, key, value jsonb, updated_by, updated_at)`,
//!   primary key `(scope, tenant, route, key)`; `tenant`/`route` are `''` when not
//!   applicable. A statement trigger sends `NOTIFY tenant_guard_settings, '<schema>'`.
//! - `tg_revisions`: every delivery attempt, numbered (see [`Revision`]).
//! - `tg_schema_migrations`: applied migration versions.

use std::error::Error as _;
use std::time::Duration;

use serde_json::Value;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Config, Connection, NoTls, Socket};

use crate::settings::{Scope, SettingRow};

/// The NOTIFY channel; the payload is the schema whose settings changed.
pub const CHANNEL: &str = "tenant_guard_settings";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `url` is redacted (no password).
    #[error("invalid database URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error(
        "invalid schema name `{0}`: use 1-63 characters of [a-z0-9_], not starting with a digit"
    )]
    SchemaName(String),
    /// The session could not be opened; `target` is `host:port` (or the socket directory).
    #[error("cannot connect to PostgreSQL at {target}")]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A read-only command found no (or an outdated) sidecar schema; nothing was created.
    #[error("schema `{schema}` in {location} {problem}")]
    SchemaMissing {
        schema: String,
        location: String,
        problem: String,
    },
    #[error("database error")]
    Postgres(#[source] tokio_postgres::Error),
    #[error("corrupt row in {table}: {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
}

impl From<tokio_postgres::Error> for DbError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Postgres(error)
    }
}

impl DbError {
    /// Errors caused by configuration rather than by the database being away.
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            Self::Url { .. } | Self::SchemaName(_) | Self::SchemaMissing { .. }
        )
    }
}

/// Where to connect and which schema holds the tables.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub url: String,
    pub schema: String,
    /// `application_name` of the session (visible in `pg_stat_activity`).
    pub application_name: String,
    /// Sessions refuse every write (`default_transaction_read_only`): for
    /// `history` and `sync --dry-run`.
    pub read_only: bool,
}

impl DbConfig {
    pub fn new(url: &str, schema: &str) -> Result<Self, DbError> {
        validate_schema_name(schema)?;
        parse_url(url)?;
        Ok(Self {
            url: url.to_owned(),
            schema: schema.to_owned(),
            application_name: format!("tenant-guard-sidecar/{schema}"),
            read_only: false,
        })
    }

    /// `host:port` of every host the URL names (comma-separated).
    pub fn target(&self) -> String {
        parse_url(&self.url)
            .map(|config| describe_hosts(&config))
            .unwrap_or_else(|_| "?".to_owned())
    }

    /// `database `d` at host:port`, for messages.
    pub fn location(&self) -> String {
        let config = parse_url(&self.url).ok();
        let dbname = config
            .as_ref()
            .and_then(|c| c.get_dbname().or(c.get_user()))
            .unwrap_or("postgres")
            .to_owned();
        format!("database `{dbname}` at {}", self.target())
    }

    /// Opens a session with `search_path` set to the schema; the caller drives the connection.
    pub async fn connect(&self) -> Result<(Client, Connection<Socket, NoTlsStream>), DbError> {
        let mut config = parse_url(&self.url)?;
        let mut options = format!(
            "-c search_path={} -c client_min_messages=warning",
            self.schema
        );
        if self.read_only {
            options.push_str(" -c default_transaction_read_only=on");
        }
        config
            .application_name(&self.application_name)
            .options(&options)
            .connect_timeout(Duration::from_secs(5));
        config
            .connect(NoTls)
            .await
            .map_err(|source| DbError::Connect {
                target: describe_hosts(&config),
                source,
            })
    }

    /// Connects and spawns the connection onto the runtime (for one-shot commands).
    pub async fn connect_spawned(&self) -> Result<Client, DbError> {
        let (client, connection) = self.connect().await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(error = %crate::text::error_text(&error), "database connection closed");
            }
        });
        Ok(client)
    }
}

/// Parses a `postgres://` URL or libpq `key=value` pairs, with a precise
/// reason when it is neither.
fn parse_url(url: &str) -> Result<Config, DbError> {
    let invalid = |reason: String| DbError::Url {
        url: crate::text::bounded_to(&crate::text::redact_url(url), 200).into_owned(),
        reason,
    };
    let trimmed = url.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty".to_owned()));
    }
    match trimmed.split_once("://") {
        Some((scheme, _)) if !matches!(scheme, "postgres" | "postgresql") => {
            return Err(invalid(format!(
                "`{}` is not a PostgreSQL URL scheme; use postgres://USER@HOST:PORT/DATABASE",
                crate::text::bounded_to(scheme, 40)
            )))
        }
        Some(_) => {}
        None if !trimmed.contains('=') => {
            return Err(invalid(
                "not a URL: use postgres://USER@HOST:PORT/DATABASE (or libpq key=value pairs)"
                    .to_owned(),
            ))
        }
        None => {}
    }
    trimmed.parse::<Config>().map_err(|error| {
        // tokio-postgres says "invalid connection string" and puts the
        // detail in the cause; the variant already says it is invalid.
        let detail = error
            .source()
            .map(ToString::to_string)
            .unwrap_or_else(|| error.to_string());
        invalid(detail)
    })
}

/// `host:port[, host:port…]` of a parsed configuration (libpq defaults: port 5432).
fn describe_hosts(config: &Config) -> String {
    let ports = config.get_ports();
    let port_of = |i: usize| {
        ports
            .get(i)
            .or_else(|| ports.first())
            .copied()
            .unwrap_or(5432)
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| match host {
            tokio_postgres::config::Host::Tcp(name) if name.contains(':') => {
                format!("[{name}]:{}", port_of(i))
            }
            tokio_postgres::config::Host::Tcp(name) => format!("{name}:{}", port_of(i)),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => {
                format!("{}/.s.PGSQL.{}", path.display(), port_of(i))
            }
        })
        .collect();
    if hosts.is_empty() {
        "(no host given)".to_owned()
    } else {
        hosts.join(", ")
    }
}

fn validate_schema_name(schema: &str) -> Result<(), DbError> {
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(DbError::SchemaName(schema.to_owned()))
    }
}

const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"
CREATE TABLE tg_settings (
    scope       text        NOT NULL CHECK (scope IN ('global', 'tenant', 'route')),
    tenant      text        NOT NULL DEFAULT '',
    route       text        NOT NULL DEFAULT '',
    key         text        NOT NULL CHECK (key <> ''),
    value       jsonb       NOT NULL,
    updated_by  text        NOT NULL DEFAULT current_user,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, tenant, route, key),
    CHECK ((scope = 'global' AND tenant = '' AND route = '')
        OR (scope = 'tenant' AND tenant <> '' AND route = '')
        OR (scope = 'route'  AND tenant <> '' AND route <> ''))
);

CREATE FUNCTION tg_settings_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    IF TG_OP = 'UPDATE' AND NEW.updated_by IS NOT DISTINCT FROM OLD.updated_by THEN
        NEW.updated_by := coalesce(nullif(current_setting('tenant_guard.actor', true), ''), current_user);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER tg_settings_touch BEFORE INSERT OR UPDATE ON tg_settings
    FOR EACH ROW EXECUTE FUNCTION tg_settings_touch();

CREATE FUNCTION tg_settings_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tenant_guard_settings', TG_TABLE_SCHEMA);
    RETURN NULL;
END $$;

CREATE TRIGGER tg_settings_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tg_settings
    FOR EACH STATEMENT EXECUTE FUNCTION tg_settings_notify();

CREATE TABLE tg_revisions (
    id            bigint      PRIMARY KEY,
    target        text        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('delivered', 'failed')),
    revision      text        NOT NULL,
    sha256        text        NOT NULL,
    source_sha256 text        NOT NULL,
    document      text,
    error         text,
    actors        text[]      NOT NULL DEFAULT '{}',
    changed_keys  text[]      NOT NULL DEFAULT '{}',
    trigger       text        NOT NULL,
    rollback_of   bigint      REFERENCES tg_revisions (id),
    settings      jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE tg_revisions_id_seq OWNED BY tg_revisions.id;
CREATE INDEX tg_revisions_target_id ON tg_revisions (target, id DESC);
"#,
)];

/// The migration version this sidecar needs.
pub fn latest_migration() -> i32 {
    MIGRATIONS.iter().map(|(v, _)| *v).max().unwrap_or(0)
}

/// For read-only commands: the schema and its tables exist at the version
/// this sidecar needs, otherwise [`DbError::SchemaMissing`] saying what is
/// missing. Creates nothing.
pub async fn check_schema(client: &Client, config: &DbConfig) -> Result<(), DbError> {
    let schema = config.schema.as_str();
    validate_schema_name(schema)?;
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
                    to_regclass(quote_ident($1) || '.tg_schema_migrations') IS NOT NULL,
                    to_regclass(quote_ident($1) || '.tg_settings') IS NOT NULL,
                    to_regclass(quote_ident($1) || '.tg_revisions') IS NOT NULL",
            &[&schema],
        )
        .await?;
    let missing = |problem: String| DbError::SchemaMissing {
        schema: schema.to_owned(),
        location: config.location(),
        problem,
    };
    let (exists, migrations, settings, revisions): (bool, bool, bool, bool) = (
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    );
    if !exists {
        return Err(missing(
            "does not exist: nothing was set up there (`tenant-guard-sidecar migrate` creates it; so do `sync` and `run`)".to_owned(),
        ));
    }
    if !(migrations && settings && revisions) {
        return Err(missing(
            "has no sidecar tables (tg_settings, tg_revisions): is --schema right? (`tenant-guard-sidecar migrate` creates them)".to_owned(),
        ));
    }
    let applied: i32 = client
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM \"{schema}\".tg_schema_migrations"),
            &[],
        )
        .await?
        .try_get(0)?;
    let needed = latest_migration();
    if applied < needed {
        return Err(missing(format!(
            "is at migration {applied}, this sidecar needs {needed}: run `tenant-guard-sidecar migrate`"
        )));
    }
    Ok(())
}

/// Creates the schema and applies pending migrations (idempotent, serialised
/// across sidecars by an advisory lock).
pub async fn migrate(client: &mut Client, schema: &str) -> Result<(), DbError> {
    validate_schema_name(schema)?;
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .await
        .or_else(|error| {
            // Two sidecars racing to create the schema: the loser sees a unique violation.
            if error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(error)
            }
        })?;
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('tenant_guard_migrate:' || $1::text))",
        &[&schema],
    )
    .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tg_schema_migrations (
             version    int PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let applied: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM tg_schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
        tracing::info!(version, schema, "applying migration");
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO tg_schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Loads all settings rows, ordered by scope and identity. A value whose text
/// (`value::text`) is longer than `max_value_bytes` is not transferred: the row
/// comes back with a null value and [`SettingRow::oversized_bytes`] set.
pub async fn load_settings(
    client: &Client,
    max_value_bytes: usize,
) -> Result<Vec<SettingRow>, DbError> {
    let limit = i32::try_from(max_value_bytes).unwrap_or(i32::MAX);
    let rows = client
        .query(
            "SELECT scope, tenant, route, key,
                    CASE WHEN octet_length(value::text) <= $1 THEN value::text END,
                    octet_length(value::text), updated_by, updated_at::text
               FROM tg_settings ORDER BY scope, tenant, route, key",
            &[&limit],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let scope_text: String = row.try_get(0)?;
            let scope = Scope::parse(&scope_text).ok_or_else(|| DbError::Corrupt {
                table: "tg_settings",
                message: format!(
                    "unknown scope `{}`",
                    crate::text::bounded_to(&scope_text, 100)
                ),
            })?;
            let value_text: Option<String> = row.try_get(4)?;
            let size: i32 = row.try_get(5)?;
            let (value, oversized_bytes) = match value_text {
                Some(text) => (
                    serde_json::from_str(&text).map_err(|e| DbError::Corrupt {
                        table: "tg_settings",
                        message: e.to_string(),
                    })?,
                    None,
                ),
                None => (Value::Null, Some(u64::try_from(size).unwrap_or_default())),
            };
            Ok(SettingRow {
                scope,
                tenant: row.try_get(1)?,
                route: row.try_get(2)?,
                key: row.try_get(3)?,
                value,
                updated_by: row.try_get(6)?,
                updated_at: row.try_get(7)?,
                oversized_bytes,
            })
        })
        .collect()
}

/// Delivery outcome recorded in a revision.
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
}

/// One row of `tg_revisions`.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub id: i64,
    pub target: String,
    pub status: String,
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
    pub trigger: String,
    pub rollback_of: Option<i64>,
    pub settings: Option<Value>,
    pub created_at: String,
}

const REVISION_COLUMNS: &str =
    "id, target, status, revision, sha256, source_sha256, document, error, \
     actors, changed_keys, trigger, rollback_of, settings::text, created_at::text";

fn revision_from_row(row: &tokio_postgres::Row) -> Result<Revision, DbError> {
    let settings: Option<String> = row.try_get(12)?;
    let settings = settings
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| DbError::Corrupt {
            table: "tg_revisions",
            message: e.to_string(),
        })?;
    Ok(Revision {
        id: row.try_get(0)?,
        target: row.try_get(1)?,
        status: row.try_get(2)?,
        revision: row.try_get(3)?,
        sha256: row.try_get(4)?,
        source_sha256: row.try_get(5)?,
        document: row.try_get(6)?,
        error: row.try_get(7)?,
        actors: row.try_get(8)?,
        changed_keys: row.try_get(9)?,
        trigger: row.try_get(10)?,
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
                &rev.status,
                &rev.revision,
                &rev.sha256,
                &rev.source_sha256,
                &rev.document,
                &error,
                &rev.actors,
                &rev.changed_keys,
                &rev.trigger,
                &rev.rollback_of,
                &settings,
            ],
        )
        .await?;
    Ok(())
}

/// Marks a recorded revision as failed (its delivery did not happen).
pub async fn mark_failed(client: &Client, id: i64, error: &str) -> Result<(), DbError> {
    let error = crate::text::bounded(error);
    client
        .execute(
            "UPDATE tg_revisions SET status = 'failed', error = $2 WHERE id = $1",
            &[&id, &error.as_ref()],
        )
        .await?;
    Ok(())
}

/// A failed revision delivered on a later attempt; `note` says what it overcame.
pub async fn mark_delivered(client: &Client, id: i64, note: &str) -> Result<(), DbError> {
    let note = crate::text::bounded(note);
    client
        .execute(
            "UPDATE tg_revisions SET status = 'delivered', error = $2 WHERE id = $1",
            &[&id, &note.as_ref()],
        )
        .await?;
    Ok(())
}

/// Session advisory lock: one sync at a time per schema, across processes.
pub async fn lock_sync(client: &Client, schema: &str) -> Result<(), DbError> {
    client
        .execute(
            "SELECT pg_advisory_lock(hashtext('tenant_guard_sync:' || $1::text))",
            &[&schema],
        )
        .await?;
    Ok(())
}

pub async fn unlock_sync(client: &Client, schema: &str) -> Result<(), DbError> {
    client
        .execute(
            "SELECT pg_advisory_unlock(hashtext('tenant_guard_sync:' || $1::text))",
            &[&schema],
        )
        .await?;
    Ok(())
}
