//! Command line of `settings`: its subcommands and their options. The
//! database options (`--database-url`, `--schema`, `--max-value-bytes`) are the
//! global ones of [`crate::cli::Cli`].

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::file::Format;

#[derive(Debug, Args)]
pub struct SettingsArgs {
    #[command(subcommand)]
    pub command: SettingsCommand,
}

impl SettingsArgs {
    /// Commands that write nothing run in read-only sessions.
    pub fn read_only(&self) -> bool {
        match &self.command {
            SettingsCommand::List(_) | SettingsCommand::Get(_) | SettingsCommand::Export(_) => true,
            SettingsCommand::Set(args) => args.write.dry_run,
            SettingsCommand::Unset(args) => args.write.dry_run,
            SettingsCommand::Apply(args) => args.write.dry_run,
        }
    }
}

/// TARGET is `@global` (global scope), `TENANT` (tenant scope) or
/// `TENANT/ROUTE` (route scope).
#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    /// List the rows (target, key, ETag, updated_by, value), global first (read-only).
    List(ListArgs),
    /// Print one row: its value, ETag and who changed it last (read-only).
    Get(GetArgs),
    /// Set one value (JSON) after validating the whole resulting settings set.
    Set(SetArgs),
    /// Remove one row after validating the whole resulting settings set.
    Unset(UnsetArgs),
    /// Write all settings as one YAML or JSON file (read-only).
    Export(ExportArgs),
    /// Make the table equal to a file, in one transaction, after validating the result.
    Apply(ApplyArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this tenant's rows (tenant and route scope).
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// `@global`, TENANT or TENANT/ROUTE.
    pub target: String,
    pub key: String,
}

/// Options of every writing command.
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// Validate and print what would change (rows and plugin-document diff); write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Who makes the change (recorded as `updated_by`); defaults to $USER.
    #[arg(long, env = "USER", default_value = "cli")]
    pub actor: String,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// `@global`, TENANT or TENANT/ROUTE.
    pub target: String,
    pub key: String,
    /// The value as JSON (a string needs its quotes: '"shadow"').
    pub value: String,
    /// Write only if the row's ETag (from `get`/`list`) is still this one.
    #[arg(long, value_name = "ETAG")]
    pub if_match: Option<String>,
    #[command(flatten)]
    pub write: WriteArgs,
}

#[derive(Debug, Args)]
pub struct UnsetArgs {
    /// `@global`, TENANT or TENANT/ROUTE.
    pub target: String,
    pub key: String,
    /// Remove only if the row's ETag (from `get`/`list`) is still this one.
    #[arg(long, value_name = "ETAG")]
    pub if_match: Option<String>,
    #[command(flatten)]
    pub write: WriteArgs,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Write to this file instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// File format (default: json for a `.json` file, else yaml).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The settings file (`-`: stdin), as written by `export`.
    #[arg(short, long, value_name = "FILE")]
    pub file: PathBuf,
    /// File format (default: json for a `.json` file, else yaml).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Also remove rows that are not in the file (without it they are kept).
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub write: WriteArgs,
}
