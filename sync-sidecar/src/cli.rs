//! Command line: typed options (flags and environment) and the subcommands
//! `run`, `sync [--dry-run]`, `history`, `rollback --to REV`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::daemon::{self, RunConfig, RunError};
use crate::db::{self, DbConfig, DbError};
use crate::kong::{KongForm, KongLayout, KongMode, KongTarget};
use crate::sync::{self, EnvoyTarget, SetupError, SyncError, SyncOutcome, Syncer, Target};

#[derive(Debug, Parser)]
#[command(
    name = "tenant-guard-sidecar",
    version,
    about = "Delivers tenant settings from PostgreSQL to gateways as tenant-guard plugin configuration"
)]
pub struct Cli {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Schema holding the sidecar's tables (created and migrated at start).
    #[arg(long, env = "TG_SCHEMA", default_value = "tenant_guard", global = true)]
    pub schema: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: sync on NOTIFY, on a timer and on POST /sync.
    Run(RunArgs),
    /// Sync once and exit; with --dry-run print the diff against the deployed revision.
    Sync(SyncArgs),
    /// List the recorded revisions, newest first.
    History(HistoryArgs),
    /// Re-deliver a recorded revision.
    Rollback(RollbackArgs),
}

/// The gateway one sidecar process delivers to (run one sidecar per gateway;
/// they share the schema and record revisions per target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Gateway {
    /// Envoy: the ECDS file in --ecds-dir.
    Envoy,
    /// Kong 3.4–3.10: the Admin API (--kong-admin-url, --kong-mode) and --kong-yml.
    Kong,
}

#[derive(Debug, Args)]
pub struct DeliveryArgs {
    /// Gateway to deliver to.
    #[arg(long, env = "TG_GATEWAY", value_enum, default_value = "envoy")]
    pub gateway: Gateway,
    /// Kong Admin API base URL (http; keep it on a trusted listener).
    #[arg(
        long,
        env = "TG_KONG_ADMIN_URL",
        default_value = "http://127.0.0.1:8001"
    )]
    pub kong_admin_url: String,
    /// Kong without a database (`POST /config`) or with one (`filter_chains` entity).
    #[arg(long, env = "TG_KONG_MODE", value_enum, default_value = "dbless")]
    pub kong_mode: KongMode,
    /// Also write the rendered declarative kong.yml here (atomically; for decK
    /// and for Kong's `declarative_config`).
    #[arg(long, env = "TG_KONG_YML")]
    pub kong_yml: Option<PathBuf>,
    /// How the filter is attached to the route in kong.yml (`plugin`: Kong 3.9+, DB-less only).
    #[arg(long, env = "TG_KONG_FORM", value_enum, default_value = "filter-chain")]
    pub kong_form: KongForm,
    /// Kong route carrying the filter (must exist in --kong-mode db).
    #[arg(long, env = "TG_KONG_ROUTE", default_value = "tenant-guard")]
    pub kong_route: String,
    /// Paths of the rendered route (comma-separated).
    #[arg(
        long,
        env = "TG_KONG_ROUTE_PATHS",
        default_value = "/",
        value_delimiter = ','
    )]
    pub kong_route_paths: Vec<String>,
    /// Name of the rendered Kong service.
    #[arg(long, env = "TG_KONG_SERVICE", default_value = "tenant-guard-upstream")]
    pub kong_service: String,
    /// Upstream URL of the rendered Kong service.
    #[arg(
        long,
        env = "TG_KONG_SERVICE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub kong_service_url: String,
    /// Name of the filter chain entity.
    #[arg(long, env = "TG_KONG_FILTER_CHAIN", default_value = "tenant-guard")]
    pub kong_filter_chain: String,
    /// Directory Envoy watches for the ECDS resource file.
    #[arg(long, env = "TG_ECDS_DIR")]
    pub ecds_dir: Option<PathBuf>,
    /// A filter module to publish (content-addressed) next to the ECDS file.
    #[arg(long, env = "TG_WASM", conflicts_with = "wasm_path")]
    pub wasm: Option<PathBuf>,
    /// Path of an existing filter module to reference in the ECDS resource.
    #[arg(long, env = "TG_WASM_PATH")]
    pub wasm_path: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// Admin listen address (`/live`, `/ready`, `/metrics`, `POST /sync`); port 0 picks one.
    #[arg(long, env = "TG_ADMIN_ADDR", default_value = "127.0.0.1:9911")]
    pub admin_addr: SocketAddr,
    /// Periodic full resync (e.g. 300s, 5m, 1h).
    #[arg(long, env = "TG_RESYNC_INTERVAL", default_value = "300s", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// Coalescing window for NOTIFY (e.g. 100ms).
    #[arg(long, env = "TG_DEBOUNCE", default_value = "100ms", value_parser = parse_duration)]
    pub debounce: Duration,
    /// Time an in-flight sync may take to finish after SIGTERM.
    #[arg(long, env = "TG_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// Print what would change and whether it is valid; deliver nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Number of revisions to list.
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// Revision number to restore (see `history`).
    #[arg(long)]
    pub to: i64,
    /// Who is rolling back (recorded); defaults to $USER.
    #[arg(long, env = "USER", default_value = "cli")]
    pub actor: String,
}

/// Parses `250ms`, `5s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 100ms, 5s, 5m or 1h"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

/// Why a command failed; [`CliError::exit_code`] maps it to 2 (usage/config) or 1 (runtime).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("settings are invalid (see above)")]
    DryRunInvalid,
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Setup(_) | Self::Listen { .. } => 2,
            Self::Db(error) | Self::Run(RunError::Db(error)) | Self::Sync(SyncError::Db(error))
                if error.is_config_error() =>
            {
                2
            }
            Self::Sync(SyncError::Setup(_)) => 2,
            _ => 1,
        }
    }
}

impl Cli {
    fn db_config(&self) -> Result<DbConfig, CliError> {
        let url = self.database_url.as_deref().ok_or_else(|| {
            CliError::Usage("no database: set DATABASE_URL or pass --database-url".to_owned())
        })?;
        Ok(DbConfig::new(url, &self.schema)?)
    }
}

fn target(args: &DeliveryArgs) -> Result<Target, CliError> {
    match args.gateway {
        Gateway::Envoy => Ok(envoy_target(args)?.into()),
        Gateway::Kong => Ok(kong_target(args)?.into()),
    }
}

fn kong_target(args: &DeliveryArgs) -> Result<KongTarget, CliError> {
    if args.kong_mode == KongMode::Db && args.kong_form == KongForm::Plugin {
        return Err(CliError::Usage(
            "--kong-form plugin is only rendered for DB-less Kong; use --kong-form filter-chain with --kong-mode db"
                .to_owned(),
        ));
    }
    let mut target =
        KongTarget::new(&args.kong_admin_url, args.kong_mode).map_err(CliError::Usage)?;
    target.kong_yml = args.kong_yml.clone();
    target.layout = KongLayout {
        service_name: args.kong_service.clone(),
        service_url: args.kong_service_url.clone(),
        route_name: args.kong_route.clone(),
        route_paths: args.kong_route_paths.clone(),
        chain_name: args.kong_filter_chain.clone(),
        form: args.kong_form,
    };
    Ok(target)
}

fn envoy_target(args: &DeliveryArgs) -> Result<EnvoyTarget, CliError> {
    let dir = args.ecds_dir.as_deref().ok_or_else(|| {
        CliError::Usage("no ECDS directory: pass --ecds-dir or set TG_ECDS_DIR".to_owned())
    })?;
    if args.wasm.is_none() && args.wasm_path.is_none() {
        return Err(CliError::Usage(
            "no filter module: pass --wasm FILE (published next to the ECDS file) or --wasm-path PATH"
                .to_owned(),
        ));
    }
    Ok(EnvoyTarget::prepare(
        dir,
        args.wasm.as_deref(),
        args.wasm_path.as_deref(),
    )?)
}

/// Executes the parsed command. `shutdown` ends `run`.
pub async fn execute(
    cli: Cli,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), CliError> {
    let db_config = cli.db_config()?;
    match &cli.command {
        Command::Run(args) => {
            let syncer = Syncer::new(&db_config.schema, target(&args.delivery)?)?;
            let listener = tokio::net::TcpListener::bind(args.admin_addr)
                .await
                .map_err(|source| CliError::Listen {
                    addr: args.admin_addr,
                    source,
                })?;
            let bound = listener.local_addr().map_err(|source| CliError::Listen {
                addr: args.admin_addr,
                source,
            })?;
            tracing::info!(%bound, "admin API listening");
            println!("admin listening on http://{bound}");
            let mut config = RunConfig::new(db_config);
            config.resync_interval = args.resync_interval;
            config.debounce = args.debounce;
            config.shutdown_grace = args.shutdown_grace;
            daemon::run(config, syncer, listener, shutdown).await?;
        }
        Command::Sync(args) => {
            let mut client = db_config.connect_spawned().await?;
            db::migrate(&mut client, &db_config.schema).await?;
            if args.dry_run {
                let gateway = match args.delivery.gateway {
                    Gateway::Envoy => sync::TARGET_ENVOY,
                    Gateway::Kong => sync::TARGET_KONG,
                };
                let report = sync::dry_run_for(&client, gateway).await?;
                print!("{}", report.text);
                if !report.valid {
                    return Err(CliError::DryRunInvalid);
                }
            } else {
                let syncer = Syncer::new(&db_config.schema, target(&args.delivery)?)?;
                match syncer.sync(&client, "cli").await? {
                    SyncOutcome::Delivered {
                        revision_id,
                        revision,
                    } => {
                        println!("delivered revision {revision_id} ({revision})");
                    }
                    SyncOutcome::Unchanged {
                        revision_id,
                        revision,
                        rewrote_file,
                    } => {
                        println!(
                            "unchanged: revision {revision_id} ({revision}) is deployed{}",
                            if rewrote_file {
                                "; delivered it again (the gateway's copy was missing or stale)"
                            } else {
                                ""
                            }
                        );
                    }
                }
            }
        }
        Command::History(args) => {
            let mut client = db_config.connect_spawned().await?;
            db::migrate(&mut client, &db_config.schema).await?;
            let revisions = db::history(&client, args.limit).await?;
            print!("{}", sync::format_history(&revisions));
        }
        Command::Rollback(args) => {
            let mut client = db_config.connect_spawned().await?;
            db::migrate(&mut client, &db_config.schema).await?;
            let syncer = Syncer::new(&db_config.schema, target(&args.delivery)?)?;
            let outcome = syncer.rollback(&client, args.to, &args.actor).await?;
            println!(
                "rolled back to revision {}: delivered revision {}",
                args.to,
                outcome.revision_id()
            );
        }
    }
    Ok(())
}
