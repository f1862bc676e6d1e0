//! The PostgreSQL fixture shared by the sidecar's own tests and the e2e
//! harness (`tests/`), behind the `test-support` feature: the one place that
//! reads `DATABASE_URL` (default [`DEFAULT_DATABASE_URL`]), creates a fresh
//! migrated schema per test ([`TestSchema`], dropped on drop), turns header
//! mode on for tests without a JWT issuer, and sweeps the schemas of runs
//! that were killed before they could drop theirs.
//!
//! Every call works from plain and from async callers alike: the database
//! work runs on a thread and runtime of its own.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::db::{self, DbConfig, DbError};
use crate::settings::{Scope, SettingRow};

/// The PostgreSQL the tests use when `DATABASE_URL` is unset (trust auth).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Prefix of the fixture's schemas: `tgt_<pid>_<n>_<nanos>`.
pub const SCHEMA_PREFIX: &str = "tgt_";

/// `application_name` of the fixture's own sessions (not the sidecar's).
const APPLICATION_NAME: &str = "tenant-guard-test-fixture";

/// `DATABASE_URL` when set and not empty, else [`DEFAULT_DATABASE_URL`].
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
}

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("PostgreSQL at {url} is not usable (`export DATABASE_URL=$(bash tests/postgres.sh)` starts one)")]
    Db {
        url: String,
        #[source]
        source: DbError,
    },
    #[error("cannot start a runtime for the fixture")]
    Runtime(#[from] std::io::Error),
    #[error("the fixture's thread panicked")]
    Panicked,
}

/// A fresh schema holding the sidecar's tables; dropped (with everything in
/// it) on drop.
#[derive(Debug)]
pub struct TestSchema {
    config: DbConfig,
}

impl TestSchema {
    /// Creates and migrates a fresh schema on [`database_url`], after
    /// dropping (once per process) the schemas of runs whose process is gone.
    pub fn create() -> Result<Self, FixtureError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let schema = format!(
            "{SCHEMA_PREFIX}{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let url = database_url();
        let config = DbConfig::new(&url, &schema).map_err(|source| FixtureError::Db {
            url: url.clone(),
            source,
        })?;
        on_own_runtime(&config, |client, config| async move {
            sweep_stale_schemas(&client).await;
            let mut client = client;
            db::migrate(&mut client, &config.schema).await
        })?;
        Ok(Self { config })
    }

    /// [`Self::create`] with header mode on ([`enable_header_mode`], as `actor`).
    pub fn with_header_mode(actor: &str) -> Result<Self, FixtureError> {
        let schema = Self::create()?;
        enable_header_mode(&schema.config, actor)?;
        Ok(schema)
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.config.schema
    }

    /// How the sidecar connects to it.
    pub fn config(&self) -> &DbConfig {
        &self.config
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let schema = self.config.schema.clone();
        let _ = on_own_runtime(&self.config, |client, _| async move {
            // A session left holding a lock by a failed test must not hang the
            // drop: the schema is then swept by a later run.
            client
                .batch_execute(&format!(
                    "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                ))
                .await
                .map_err(DbError::from)
        });
    }
}

/// Creates (migrates) the schema of `config` and turns header mode on as
/// `actor`, for harnesses that name their own schema or server.
pub fn prepare(config: &DbConfig, actor: &str) -> Result<(), FixtureError> {
    on_own_runtime(config, |mut client, config| async move {
        db::migrate(&mut client, &config.schema).await
    })?;
    enable_header_mode(config, actor)
}

/// Sets `gateway.tenant.trust_header_without_jwt` to true (written by
/// `actor`): the sidecar trusts no tenant header by default, and the test
/// stacks identify tenants by header without a JWT issuer.
pub fn enable_header_mode(config: &DbConfig, actor: &str) -> Result<(), FixtureError> {
    let row = SettingRow::global(
        "gateway.tenant.trust_header_without_jwt",
        serde_json::Value::Bool(true),
        actor,
    );
    on_own_runtime(config, |client, _| async move {
        client
            .execute(
                "INSERT INTO tg_settings (scope, tenant, route, key, value, updated_by)
                 VALUES ($1, $2, $3, $4, $5::text::jsonb, $6)
                 ON CONFLICT (scope, tenant, route, key)
                 DO UPDATE SET value = EXCLUDED.value, updated_by = EXCLUDED.updated_by",
                &[
                    &Scope::Global.as_str(),
                    &row.tenant,
                    &row.route,
                    &row.key,
                    &row.value.to_string(),
                    &row.updated_by,
                ],
            )
            .await?;
        Ok(())
    })
}

/// Runs `work` with a session on the schema of `config`, on a thread and
/// runtime of its own.
fn on_own_runtime<W, F>(config: &DbConfig, work: W) -> Result<(), FixtureError>
where
    W: FnOnce(tokio_postgres::Client, DbConfig) -> F + Send,
    F: std::future::Future<Output = Result<(), DbError>>,
{
    let mut session = config.clone();
    APPLICATION_NAME.clone_into(&mut session.application_name);
    let url = crate::text::redact_url(&config.url);
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime
                    .block_on(async {
                        let client = session.connect_spawned().await?;
                        work(client, session).await
                    })
                    .map_err(|source| FixtureError::Db { url, source })
            })
            .join()
            .map_err(|_| FixtureError::Panicked)?
    })
}

/// Drops `tgt_<pid>_…` schemas of processes that no longer exist (once per process).
async fn sweep_stale_schemas(client: &tokio_postgres::Client) {
    static SWEPT: AtomicBool = AtomicBool::new(false);
    if SWEPT.swap(true, Ordering::SeqCst) {
        return;
    }
    let pattern = format!("{}%", SCHEMA_PREFIX.replace('_', "\\_"));
    let Ok(rows) = client
        .query(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1",
            &[&pattern],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let Ok(name) = row.try_get::<_, String>(0) else {
            continue;
        };
        let pid = name
            .strip_prefix(SCHEMA_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .await;
        }
    }
}
