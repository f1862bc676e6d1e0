//! Command line: typed options (flags and environment, ranges checked) and the
//! subcommands `run` (optionally hosting the store endpoint: `--store-addr`),
//! `store` (the store endpoint alone, no PostgreSQL), `sync [--dry-run]`,
//! `history`, `rollback --to REV`, `migrate`. Read-only commands (`history`, `sync --dry-run`) open read-only
//! sessions and create nothing; output goes through [`emit`], which treats a
//! closed stdout (`| head -1`) as the reader having seen enough.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::daemon::{self, RunConfig, RunError};
use crate::db::{self, DbConfig, DbError};
use crate::dryrun::{self, Against};
use crate::kong::{KongForm, KongLayout, KongMode, KongTarget};
use crate::settings::{self, Rendered};
use crate::sync::{self, EnvoyTarget, SetupError, SyncError, SyncOutcome, Syncer, Target};

use crate::settings_cli::{self, SettingsArgs, SettingsCliError};
use crate::store::{RedisStore, RedisTarget, StoreError, StoreServer};

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
    /// Schema holding the sidecar's tables (`run`, `sync` and `migrate` create
    /// and migrate it; `history` and `sync --dry-run` only read it).
    #[arg(long, env = "TG_SCHEMA", default_value = "tenant_guard", global = true)]
    pub schema: String,
    /// Largest settings value (its JSON text, bytes) accepted; larger ones are
    /// rejected without being read (1 B – 16 MiB).
    #[arg(
        long,
        env = "TG_MAX_VALUE_BYTES",
        default_value_t = settings::DEFAULT_MAX_VALUE_BYTES,
        value_parser = parse_max_value_bytes,
        global = true
    )]
    pub max_value_bytes: usize,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: sync on NOTIFY, on a timer and on POST /sync.
    Run(RunArgs),
    /// Sync once and exit; with --dry-run print the diff against what the gateway has.
    Sync(SyncArgs),
    /// List the recorded revisions, newest first (read-only).
    History(HistoryArgs),
    /// Re-deliver a recorded revision.
    Rollback(RollbackArgs),
    /// Create the schema and its tables (or bring them up to date) and exit.
    Migrate,
    /// Settings as code: list, get, set, unset, export, apply (validated before writing).
    Settings(SettingsArgs),
    /// Serve only the store endpoint (rate limits and idempotency records in
    /// Redis for `store.backend: cluster`); needs no PostgreSQL.
    Store(StoreArgs),
    /// What tenants used of their limits in cluster mode, per limit and key,
    /// read from Redis without changing it.
    Usage(UsageArgs),
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// One tenant (default: every tenant of the document).
    pub tenant: Option<String>,
    /// Print JSON (one object per limit and key) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The plugin document to read the limits from (default: the newest
    /// revision delivered to --gateway, from PostgreSQL).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Whose delivered revision holds the limits (without --config).
    #[arg(long, value_enum, default_value = "envoy")]
    pub gateway: Gateway,
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// Where the store endpoint's Redis is (one of the two).
#[derive(Debug, Args)]
pub struct RedisArgs {
    /// Redis server of the store endpoint (`redis://host:port[/db]`).
    #[arg(
        long,
        env = "TG_REDIS_URL",
        hide_env_values = true,
        conflicts_with = "redis_cluster_url"
    )]
    pub redis_url: Option<String>,
    /// A seed node of the store endpoint's Redis Cluster (`redis://host:port`;
    /// repeat for more nodes).
    #[arg(
        long,
        env = "TG_REDIS_CLUSTER_URL",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub redis_cluster_url: Vec<String>,
}

impl RedisArgs {
    /// The Redis to use; a usage error when none (or both) was given.
    fn target(&self) -> Result<RedisTarget, CliError> {
        match (&self.redis_url, self.redis_cluster_url.is_empty()) {
            (Some(_), false) => Err(CliError::Usage(
                "--redis-url and --redis-cluster-url exclude each other: pass one".to_owned(),
            )),
            (Some(url), true) => Ok(RedisTarget::Standalone(url.clone())),
            (None, false) => Ok(RedisTarget::Cluster(self.redis_cluster_url.clone())),
            (None, true) => Err(CliError::Usage(
                "the store endpoint needs Redis: pass --redis-url redis://HOST:PORT or --redis-cluster-url redis://HOST:PORT (repeatable)"
                    .to_owned(),
            )),
        }
    }

    fn given(&self) -> bool {
        self.redis_url.is_some() || !self.redis_cluster_url.is_empty()
    }
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Store endpoint listen address (`POST /v1/lease|claim|complete|release`,
    /// `GET /metrics`); port 0 picks one.
    #[arg(long, env = "TG_STORE_ADDR")]
    pub store_addr: SocketAddr,
    #[command(flatten)]
    pub redis: RedisArgs,
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
    /// Periodic full resync (e.g. 300s, 5m, 1h; 1 s – 7 days).
    #[arg(long, env = "TG_RESYNC_INTERVAL", default_value = "300s", value_parser = parse_resync_interval)]
    pub resync_interval: Duration,
    /// Coalescing window for NOTIFY (e.g. 100ms; at most 60 s).
    #[arg(long, env = "TG_DEBOUNCE", default_value = "100ms", value_parser = parse_debounce)]
    pub debounce: Duration,
    /// Time an in-flight sync may take to finish after SIGTERM (at most 10 min).
    #[arg(long, env = "TG_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_shutdown_grace)]
    pub shutdown_grace: Duration,
    /// Also serve the store endpoint here (`POST /v1/lease|claim|complete|release`;
    /// needs --redis-url or --redis-cluster-url); port 0 picks one.
    #[arg(long, env = "TG_STORE_ADDR")]
    pub store_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub redis: RedisArgs,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// Print what would change on the gateway (Envoy: the ECDS file in
    /// --ecds-dir; Kong: its Admin API) and whether the settings are valid;
    /// write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Number of revisions to list (1-10000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub limit: i64,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// Revision number to restore (see `history`).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
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

/// [`parse_duration`] within `min..=max`.
fn parse_duration_in(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let value = parse_duration(text)?;
    if value < min || value > max {
        return Err(format!(
            "`{}` is out of range: use {min:?} to {max:?}",
            text.trim()
        ));
    }
    Ok(value)
}

fn parse_resync_interval(text: &str) -> Result<Duration, String> {
    parse_duration_in(
        text,
        Duration::from_secs(1),
        Duration::from_secs(7 * 24 * 3600),
    )
}

fn parse_debounce(text: &str) -> Result<Duration, String> {
    parse_duration_in(text, Duration::ZERO, Duration::from_secs(60))
}

fn parse_shutdown_grace(text: &str) -> Result<Duration, String> {
    parse_duration_in(text, Duration::ZERO, Duration::from_secs(600))
}

/// Upper bound of `--max-value-bytes`.
const MAX_VALUE_BYTES_CEILING: usize = 16 * 1024 * 1024;

fn parse_max_value_bytes(text: &str) -> Result<usize, String> {
    let value: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("`{}` is not a number of bytes", text.trim()))?;
    if value == 0 || value > MAX_VALUE_BYTES_CEILING {
        return Err(format!(
            "{value} is out of range: use 1 to {MAX_VALUE_BYTES_CEILING} bytes"
        ));
    }
    Ok(value)
}

/// Writes `text` to stdout. A closed stdout (`| head -1`) is not an error:
/// the reader has seen what it wanted, the command's outcome stands.
pub fn emit(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::Output(error))
        }
        _ => Ok(()),
    }
}

/// Writes `text` to stderr, ignoring a closed stderr.
pub fn emit_err(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
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
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to stdout")]
    Output(#[source] std::io::Error),
    #[error("settings are invalid (see the findings above)")]
    DryRunInvalid,
    #[error(transparent)]
    Settings(#[from] SettingsCliError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    ReadOut(#[from] crate::usage::UsageError),
    #[error("{0}")]
    Document(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_)
            | Self::Setup(_)
            | Self::Listen { .. }
            | Self::Store(StoreError::Config(_)) => 2,
            Self::Db(error) | Self::Run(RunError::Db(error)) | Self::Sync(SyncError::Db(error))
                if error.is_config_error() =>
            {
                2
            }
            Self::Sync(SyncError::Setup(_) | SyncError::NoSuchRevision(_)) => 2,
            Self::Settings(error) => error.exit_code(),
            _ => 1,
        }
    }
}

impl Cli {
    fn db_config(&self) -> Result<DbConfig, CliError> {
        let url = self.database_url.as_deref().ok_or_else(|| {
            CliError::Usage("no database: set DATABASE_URL or pass --database-url".to_owned())
        })?;
        let mut config = DbConfig::new(url, &self.schema)?;
        config.read_only = match &self.command {
            Command::History(_) => true,
            Command::Sync(args) => args.dry_run,
            Command::Run(_) | Command::Rollback(_) | Command::Migrate => false,
            Command::Settings(args) => args.read_only(),
            Command::Store(_) | Command::Usage(_) => true,
        };
        Ok(config)
    }
}

/// `usage`: the document from PostgreSQL (the newest delivered revision).
async fn usage(args: &UsageArgs, db_config: &DbConfig) -> Result<(), CliError> {
    let client = db_config.connect_spawned().await?;
    db::check_schema(&client, db_config).await?;
    let target = match args.gateway {
        Gateway::Envoy => crate::delivery::envoy::TARGET_ENVOY,
        Gateway::Kong => crate::delivery::kong::TARGET_KONG,
    };
    let revision = db::latest_revision(&client, target, true).await?;
    let document = revision
        .and_then(|revision| revision.document)
        .ok_or_else(|| {
            CliError::Document(format!(
                "no revision was delivered to {target} yet: run the sidecar, or pass --config FILE"
            ))
        })?;
    usage_of(args, Some(document)).await
}

/// `usage` on `document` (else `--config`).
async fn usage_of(args: &UsageArgs, document: Option<String>) -> Result<(), CliError> {
    let text = match (document, &args.config) {
        (Some(text), _) => text,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|err| CliError::Usage(format!("cannot read {}: {err}", path.display())))?,
        (None, None) => return Err(CliError::Usage("no plugin document".to_owned())),
    };
    let config = tenant_guard_core::config::parse(text.as_bytes())
        .map_err(|err| CliError::Document(format!("the plugin document is invalid: {err}")))?;
    let store = RedisStore::new(&args.redis.target()?)?;
    let rows = crate::usage::read(&store, &config, args.tenant.as_deref()).await?;
    if args.json {
        let json = serde_json::to_string_pretty(&rows)
            .map_err(|err| CliError::Document(err.to_string()))?;
        emit(&format!("{json}\n"))
    } else {
        emit(&crate::usage::table(&rows))
    }
}

fn target(args: &DeliveryArgs) -> Result<Target, CliError> {
    match args.gateway {
        Gateway::Envoy => Ok(envoy_target(args)?.into()),
        Gateway::Kong => Ok(kong_target(args)?.into()),
    }
}

fn kong_target(args: &DeliveryArgs) -> Result<KongTarget, CliError> {
    // Flags Kong delivery would silently not use: refuse them instead.
    let envoy_only = [
        ("--wasm", args.wasm.is_some()),
        ("--wasm-path", args.wasm_path.is_some()),
        ("--ecds-dir", args.ecds_dir.is_some()),
    ];
    if let Some((flag, _)) = envoy_only.iter().find(|(_, given)| *given) {
        return Err(CliError::Usage(format!(
            "{flag} is for --gateway envoy: Kong loads the filter module from its wasm_filters_path at start (kong/README.md, \"Rolling out a new filter build on Kong\")"
        )));
    }
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
    if let Command::Store(args) = &cli.command {
        let store = bind_store(args.store_addr, &args.redis).await?;
        return Ok(store.serve(shutdown).await?);
    }
    if let Command::Usage(
        args @ UsageArgs {
            config: Some(_), ..
        },
    ) = &cli.command
    {
        // A document from a file needs no PostgreSQL.
        return usage_of(args, None).await;
    }
    let db_config = cli.db_config()?;
    let max_value_bytes = cli.max_value_bytes;
    match &cli.command {
        Command::Run(args) => {
            // Usage errors first: nothing is bound or connected before they are.
            let store_target = match args.store_addr {
                Some(_) => Some(args.redis.target()?),
                None if args.redis.given() => {
                    return Err(CliError::Usage(
                        "--redis-url / --redis-cluster-url are for the store endpoint: pass --store-addr too"
                            .to_owned(),
                    ))
                }
                None => None,
            };
            let syncer = Syncer::new(&db_config.schema, target(&args.delivery)?)?
                .with_max_value_bytes(max_value_bytes);
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
            emit(&format!("admin listening on http://{bound}\n"))?;
            let mut config = RunConfig::new(db_config);
            config.resync_interval = args.resync_interval;
            config.debounce = args.debounce;
            config.shutdown_grace = args.shutdown_grace;
            match (args.store_addr, store_target) {
                (Some(addr), Some(redis)) => {
                    let store = bind_store_on(addr, &redis).await?;
                    crate::metrics::register_store(store.metrics());
                    // One shutdown for both: the signal ends the sync loop and
                    // the store endpoint; a sync loop that ends early (a
                    // configuration error) ends the store endpoint too.
                    let (stop, stopped) = tokio::sync::watch::channel(false);
                    let stop = std::sync::Arc::new(stop);
                    let store_shutdown = async move {
                        let mut stopped = stopped;
                        let _ = stopped.wait_for(|stopped| *stopped).await;
                    };
                    let store_task = tokio::spawn(store.serve(store_shutdown));
                    let signal_stop = stop.clone();
                    let sync_shutdown = async move {
                        shutdown.await;
                        let _ = signal_stop.send(true);
                    };
                    let ran = daemon::run(config, syncer, listener, sync_shutdown).await;
                    let _ = stop.send(true);
                    match tokio::time::timeout(Duration::from_secs(5), store_task).await {
                        Ok(Ok(result)) => result?,
                        Ok(Err(error)) => tracing::warn!(%error, "store endpoint task failed"),
                        Err(_) => tracing::warn!("store endpoint did not stop in time"),
                    }
                    ran?;
                }
                _ => daemon::run(config, syncer, listener, shutdown).await?,
            }
        }
        Command::Store(_) => {}
        Command::Sync(args) if args.dry_run => {
            let kong;
            let against = match args.delivery.gateway {
                Gateway::Envoy => match &args.delivery.ecds_dir {
                    Some(dir) => Against::EcdsDir(dir),
                    None => Against::Record(sync::TARGET_ENVOY),
                },
                Gateway::Kong => {
                    kong = kong_target(&args.delivery)?;
                    Against::Kong(&kong)
                }
            };
            let client = db_config.connect_spawned().await?;
            db::check_schema(&client, &db_config).await?;
            let report = dryrun::dry_run(&client, against, max_value_bytes).await?;
            print_warnings(&report.warnings);
            emit(&report.text)?;
            if !report.valid {
                return Err(CliError::DryRunInvalid);
            }
        }
        Command::Sync(args) => {
            let syncer = Syncer::new(&db_config.schema, target(&args.delivery)?)?
                .with_max_value_bytes(max_value_bytes);
            let mut client = db_config.connect_spawned().await?;
            db::migrate(&mut client, &db_config.schema).await?;
            let outcome = syncer.sync(&client, db::Trigger::Cli).await?;
            print_revision_warnings(&client, outcome.revision_id()).await;
            match outcome {
                SyncOutcome::Delivered {
                    revision_id,
                    revision,
                } => emit(&format!("delivered revision {revision_id} ({revision})\n"))?,
                SyncOutcome::Unchanged {
                    revision_id,
                    revision,
                    rewrote_file,
                } => emit(&format!(
                    "unchanged: revision {revision_id} ({revision}) is deployed{}\n",
                    if rewrote_file {
                        "; delivered it again (the gateway's copy was missing or stale)"
                    } else {
                        ""
                    }
                ))?,
            }
        }
        Command::History(args) => {
            let client = db_config.connect_spawned().await?;
            db::check_schema(&client, &db_config).await?;
            let revisions = db::history(&client, args.limit).await?;
            emit(&sync::format_history(&revisions))?;
        }
        Command::Rollback(args) => {
            // The revision first: a wrong number is the likelier mistake than a flag.
            let client = db_config.connect_spawned().await?;
            db::check_schema(&client, &db_config).await?;
            if db::revision(&client, args.to).await?.is_none() {
                return Err(SyncError::NoSuchRevision(args.to).into());
            }
            let syncer = Syncer::new(&db_config.schema, target(&args.delivery)?)?
                .with_max_value_bytes(max_value_bytes);
            let outcome = syncer.rollback(&client, args.to, &args.actor).await?;
            emit(&format!(
                "rolled back to revision {}: delivered revision {}\n",
                args.to,
                outcome.revision_id()
            ))?;
        }
        Command::Settings(args) => {
            settings_cli::execute(args, &db_config, max_value_bytes).await?;
        }
        Command::Usage(args) => usage(args, &db_config).await?,
        Command::Migrate => {
            let mut client = db_config.connect_spawned().await?;
            db::migrate(&mut client, &db_config.schema).await?;
            emit(&format!(
                "schema `{}` in {} is at migration {}\n",
                db_config.schema,
                db_config.location(),
                db::latest_migration()
            ))?;
        }
    }
    Ok(())
}

/// Binds the store endpoint on `addr` (Redis from `redis`) and prints its
/// listening line.
async fn bind_store(addr: SocketAddr, redis: &RedisArgs) -> Result<StoreServer, CliError> {
    bind_store_on(addr, &redis.target()?).await
}

async fn bind_store_on(addr: SocketAddr, redis: &RedisTarget) -> Result<StoreServer, CliError> {
    let store = std::sync::Arc::new(RedisStore::new(redis)?);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| CliError::Listen { addr, source })?;
    let server = StoreServer::new(listener, store, std::sync::Arc::default());
    let bound = server
        .local_addr()
        .map_err(|source| CliError::Listen { addr, source })?;
    tracing::info!(%bound, "store endpoint listening");
    emit(&format!("store endpoint listening on {bound}\n"))?;
    Ok(server)
}

fn print_warnings(warnings: &[String]) {
    for warning in warnings {
        emit_err(&format!("warning: {}\n", crate::text::bounded(warning)));
    }
}

/// Warnings about the document of revision `id` (best effort: the sync is done).
async fn print_revision_warnings(client: &tokio_postgres::Client, id: i64) {
    let document = db::revision(client, id)
        .await
        .ok()
        .flatten()
        .and_then(|revision| revision.document)
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
    if let Some(document) = document {
        print_warnings(&settings::warnings(&Rendered::from_document(document)));
    }
}
