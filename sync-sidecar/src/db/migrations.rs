//! The sidecar's tables, created and upgraded by numbered, idempotent
//! migrations (serialised across sidecars by an advisory lock), and the
//! read-only check that they are there at the version this sidecar needs.

use tokio_postgres::Client;

use super::{validate_schema_name, DbConfig, DbError};

const MIGRATIONS: &[(i32, &str)] = &[
    (
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
    ),
    (
        2,
        // Plans (issue 22): scope `plan`, the plan's name in `tenant`.
        r#"
ALTER TABLE tg_settings DROP CONSTRAINT IF EXISTS tg_settings_scope_check;
ALTER TABLE tg_settings DROP CONSTRAINT IF EXISTS tg_settings_check;
ALTER TABLE tg_settings ADD CONSTRAINT tg_settings_scope_check
    CHECK (scope IN ('global', 'tenant', 'route', 'plan'));
ALTER TABLE tg_settings ADD CONSTRAINT tg_settings_check
    CHECK ((scope = 'global' AND tenant = '' AND route = '')
        OR (scope IN ('tenant', 'plan') AND tenant <> '' AND route = '')
        OR (scope = 'route' AND tenant <> '' AND route <> ''));
"#,
    ),
];

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
