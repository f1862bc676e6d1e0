//! `settings list|get|set|unset|export|apply`: settings as code.
//!
//! Every write is checked before anything is written: the whole settings set
//! the change would produce goes through the sync's own render and validation
//! path, and a single finding refuses the change (all findings printed, the
//! transaction rolled back). `--dry-run` prints the row changes and the
//! plugin-document diff in a read-only session. `--if-match ETAG` writes only
//! while the row's ETag (its `xmin`, see [`store`]) is unchanged. `apply` makes
//! the table equal to a file exported by `export` in one transaction; values
//! equal to the stored ones are not written, so applying a file twice changes
//! no row and makes no new revision.
//!
//! - [`args`]: the subcommands and options.
//! - [`address`]: `@global`, `TENANT`, `TENANT/ROUTE`.
//! - [`file`]: the YAML/JSON settings file.
//! - [`plan`]: row changes, validation, document diff.
//! - [`store`]: rows with ETags, normalised values, writes.
//! - [`commands`]: the subcommands themselves.

pub mod address;
pub mod args;
pub mod commands;
pub mod file;
pub mod plan;
pub mod store;

pub use args::{SettingsArgs, SettingsCommand};

use crate::cli::CliError;
use crate::db::{self, DbConfig};

/// Why a settings command refused or failed (database errors are [`db::DbError`]).
#[derive(Debug, thiserror::Error)]
pub enum SettingsCliError {
    #[error("{0}")]
    Usage(String),
    #[error("{path}")]
    File {
        path: String,
        #[source]
        source: file::FileError,
    },
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", invalid_text(*.count, *.dry_run))]
    Invalid { count: usize, dry_run: bool },
    /// `--if-match` named another row version than the stored one.
    #[error(
        "stale ETag: {target} `{key}` {now}, not at ETag {expected} (changed since it was read); \
         nothing was written: read it again (`settings get {target} {key}`) and retry"
    )]
    Stale {
        target: String,
        key: String,
        expected: String,
        /// `is at ETag N` or `does not exist`.
        now: String,
    },
    #[error("no setting `{key}` at {target}")]
    NotFound { target: String, key: String },
    #[error("the published JSON Schema does not compile: {0}")]
    Schema(String),
}

fn invalid_text(count: usize, dry_run: bool) -> String {
    if dry_run {
        format!("the resulting settings would be invalid ({count} finding(s) above)")
    } else {
        format!(
            "refused: the resulting settings would be invalid ({count} finding(s) above); \
             nothing was written"
        )
    }
}

impl SettingsCliError {
    /// 2 for what the caller typed or supplied, 1 otherwise (as [`CliError::exit_code`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::File { .. } | Self::Read { .. } => 2,
            _ => 1,
        }
    }
}

/// Runs a `settings` subcommand. The schema must exist (`migrate` creates it):
/// no settings command creates or migrates it.
pub async fn execute(
    args: &SettingsArgs,
    db_config: &DbConfig,
    max_value_bytes: usize,
) -> Result<(), CliError> {
    let mut client = db_config.connect_spawned().await?;
    db::check_schema(&client, db_config).await?;
    match &args.command {
        SettingsCommand::List(args) => commands::list(&client, args).await,
        SettingsCommand::Get(args) => commands::get(&client, args).await,
        SettingsCommand::Export(args) => commands::export(&client, args, &db_config.schema).await,
        SettingsCommand::Set(args) => commands::set(&mut client, args, max_value_bytes).await,
        SettingsCommand::Unset(args) => commands::unset(&mut client, args, max_value_bytes).await,
        SettingsCommand::Apply(args) => commands::apply(&mut client, args, max_value_bytes).await,
    }
}
