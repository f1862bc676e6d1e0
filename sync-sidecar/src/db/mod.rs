//! PostgreSQL access: connection (one schema per deployment via `search_path`),
//! idempotent migrations, the settings rows and the revision (audit) records.
//!
//! Tables (in the configured schema):
//! - `tg_settings(scope, tenant, route, key, value jsonb, updated_by, updated_at)`,
//!   primary key `(scope, tenant, route, key)`; `tenant`/`route` are `''` when not
//!   applicable. A statement trigger sends `NOTIFY tenant_guard_settings, '<schema>'`.
//! - `tg_revisions`: every delivery attempt, numbered (see [`Revision`], in
//!   `revisions`).
//! - `tg_schema_migrations`: applied migration versions (`migrations`).

use std::error::Error as _;
use std::time::Duration;

use serde_json::Value;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Config, Connection, NoTls, Socket};

use crate::settings::{Scope, SettingRow};

mod migrations;
mod revisions;

pub use migrations::{check_schema, latest_migration, migrate};
pub use revisions::{
    history, insert_revision, latest_revision, latest_revisions, mark_delivered, mark_failed,
    next_revision_id, revision, Change, Latest, Revision, Status, Trigger,
};

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

pub(crate) fn validate_schema_name(schema: &str) -> Result<(), DbError> {
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
