//! Row access for the settings commands: every row of `tg_settings` with its
//! ETag, values normalised the way PostgreSQL stores them, and the writes.
//!
//! The ETag is the row version's `xmin` (as text): PostgreSQL gives every
//! written row version a new one, so no column or migration is needed. Writes
//! with `--if-match` carry `AND xmin::text = $etag` in their `WHERE`, so a
//! concurrent writer is detected by PostgreSQL itself.
//!
//! A writing command first takes `SHARE ROW EXCLUSIVE` on the table (writers
//! queue behind it, the sync's reads do not) and only then reads the rows, so
//! the whole set it validated is the set its commit produces.

use serde_json::Value;
use tokio_postgres::GenericClient;

use super::address::Address;
use crate::db::DbError;
use crate::settings::{Scope, SettingRow};

/// How long a writing command waits for the table lock before giving up.
const LOCK_TIMEOUT: &str = "10s";

/// One stored row.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub address: Address,
    pub key: String,
    /// `value::text`: PostgreSQL's canonical text of the jsonb value.
    pub text: String,
    pub value: Value,
    pub updated_by: String,
    pub updated_at: String,
    pub etag: String,
}

impl Stored {
    pub fn to_row(&self) -> SettingRow {
        let mut row = SettingRow::new(
            self.address.scope(),
            &self.address.tenant,
            &self.address.route,
            &self.key,
            self.value.clone(),
            &self.updated_by,
        );
        row.updated_at.clone_from(&self.updated_at);
        row
    }
}

fn corrupt(message: String) -> DbError {
    DbError::Corrupt {
        table: "tg_settings",
        message,
    }
}

/// Every row, in [`Address`] order then key.
pub async fn load(client: &impl GenericClient) -> Result<Vec<Stored>, DbError> {
    let rows = client
        .query(
            "SELECT tenant, route, key, value::text, updated_by, updated_at::text, xmin::text, scope
               FROM tg_settings ORDER BY tenant, route, key",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let text: String = row.try_get(3)?;
            let value = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
            let scope: String = row.try_get(7)?;
            let scope =
                Scope::parse(&scope).ok_or_else(|| corrupt(format!("unknown scope `{scope}`")))?;
            Ok(Stored {
                address: Address::of_columns(
                    scope,
                    &row.try_get::<_, String>(0)?,
                    &row.try_get::<_, String>(1)?,
                ),
                key: row.try_get(2)?,
                text,
                value,
                updated_by: row.try_get(4)?,
                updated_at: row.try_get(5)?,
                etag: row.try_get(6)?,
            })
        })
        .collect()
}

/// The values as PostgreSQL would store them (`jsonb` text), parsed back:
/// what the sync will read, and the form equality is decided on (`1.0` and
/// `1` stay different, key order and spacing do not matter).
pub async fn normalize(
    client: &impl GenericClient,
    values: &[Value],
) -> Result<Vec<(String, Value)>, DbError> {
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let texts: Vec<String> = values.iter().map(Value::to_string).collect();
    let rows = client
        .query(
            "SELECT v::jsonb::text FROM unnest($1::text[]) WITH ORDINALITY AS u(v, i) ORDER BY i",
            &[&texts],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let text: String = row.try_get(0)?;
            let value = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
            Ok((text, value))
        })
        .collect()
}

/// Prepares a writing transaction: bounded lock wait, the table lock, and
/// `tenant_guard.actor` for the touch trigger (which otherwise replaces an
/// unchanged `updated_by` by the session user).
pub async fn prepare_write(client: &impl GenericClient, actor: &str) -> Result<(), DbError> {
    client
        .execute(
            "SELECT set_config('lock_timeout', $1, true), set_config('tenant_guard.actor', $2, true)",
            &[&LOCK_TIMEOUT, &actor],
        )
        .await?;
    client
        .batch_execute("LOCK TABLE tg_settings IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    Ok(())
}

/// Inserts a row; returns its ETag.
pub async fn insert(
    client: &impl GenericClient,
    address: &Address,
    key: &str,
    text: &str,
    actor: &str,
) -> Result<String, DbError> {
    let scope = address.scope().as_str();
    Ok(client
        .query_one(
            "INSERT INTO tg_settings (scope, tenant, route, key, value, updated_by)
             VALUES ($1, $2, $3, $4, $5::text::jsonb, $6) RETURNING xmin::text",
            &[&scope, &address.tenant, &address.route, &key, &text, &actor],
        )
        .await?
        .try_get(0)?)
}

/// Updates a row's value (only while its ETag is `if_match`, when given);
/// returns the new ETag, `None` when no row matched.
pub async fn update(
    client: &impl GenericClient,
    address: &Address,
    key: &str,
    text: &str,
    actor: &str,
    if_match: Option<&str>,
) -> Result<Option<String>, DbError> {
    let scope = address.scope().as_str();
    let row = client
        .query_opt(
            "UPDATE tg_settings SET value = $5::text::jsonb, updated_by = $6
              WHERE scope = $1 AND tenant = $2 AND route = $3 AND key = $4
                AND ($7::text IS NULL OR xmin::text = $7)
             RETURNING xmin::text",
            &[
                &scope,
                &address.tenant,
                &address.route,
                &key,
                &text,
                &actor,
                &if_match,
            ],
        )
        .await?;
    Ok(row.map(|row| row.try_get(0)).transpose()?)
}

/// Deletes a row (only while its ETag is `if_match`, when given); `false`
/// when no row matched.
pub async fn delete(
    client: &impl GenericClient,
    address: &Address,
    key: &str,
    if_match: Option<&str>,
) -> Result<bool, DbError> {
    let scope = address.scope().as_str();
    let deleted = client
        .execute(
            "DELETE FROM tg_settings
              WHERE scope = $1 AND tenant = $2 AND route = $3 AND key = $4
                AND ($5::text IS NULL OR xmin::text = $5)",
            &[&scope, &address.tenant, &address.route, &key, &if_match],
        )
        .await?;
    Ok(deleted == 1)
}
