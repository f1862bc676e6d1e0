//! The PostgreSQL fixture shared by the sidecar's own tests and the e2e
//! harness (`tests/`), behind the `test-support` feature: the one place that
//! reads `DATABASE_URL` (default [`DEFAULT_DATABASE_URL`]), creates a fresh
//! migrated schema per test ([`TestSchema`], dropped on drop), turns header
//! mode on for tests without a JWT issuer, and sweeps the schemas of runs
//! that were killed before they could drop theirs.
//!
//! Every call works from plain and from async callers alike: the database
//! work runs on a thread and runtime of its own.
//!
//! The Redis fixtures of the store endpoint's tests and the e2e harness:
//! [`RedisServer`] (a throwaway `redis-server` on a free port, which can be
//! killed and restarted on the same port to play an outage) and
//! [`RedisCluster`] (that many cluster-enabled servers joined by `redis-cli
//! --cluster create`). Binaries come from `TG_REDIS_SERVER` / `TG_REDIS_CLI`,
//! else `redis-server` / `redis-cli` on `PATH`. Readiness is polled with a
//! deadline; every server is killed (and its directory removed) on drop.

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
    #[error("Redis fixture: {0}")]
    Redis(String),
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

/// How long a Redis fixture may take to answer `PING` (or a cluster to be `ok`).
const REDIS_STARTUP: std::time::Duration = std::time::Duration::from_secs(20);

/// Pause between two polls of a condition (never a synchronisation by itself).
const POLL_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// `TG_REDIS_SERVER`, else `redis-server` on `PATH`.
pub fn redis_server_binary() -> std::path::PathBuf {
    binary_from_env("TG_REDIS_SERVER", "redis-server")
}

/// `TG_REDIS_CLI`, else `redis-cli` on `PATH`.
pub fn redis_cli_binary() -> std::path::PathBuf {
    binary_from_env("TG_REDIS_CLI", "redis-cli")
}

fn binary_from_env(var: &str, default: &str) -> std::path::PathBuf {
    std::env::var_os(var)
        .filter(|value| !value.is_empty())
        .map_or_else(|| default.into(), std::path::PathBuf::from)
}

/// Fixtures fail the test that asked for them, with the reason.
#[allow(clippy::panic)]
fn fixture_failed(error: &FixtureError) -> ! {
    panic!("{}", crate::text::error_text(error))
}

fn redis_error(text: impl Into<String>) -> FixtureError {
    FixtureError::Redis(crate::text::bounded(&text.into()).into_owned())
}

/// A port that was free a moment ago (bound, then released).
fn free_port() -> Result<u16, FixtureError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|error| redis_error(format!("no free port: {error}")))
}

/// A port `p` with `p` and its cluster bus port `p + 10000` free.
fn free_cluster_port() -> Result<u16, FixtureError> {
    for _ in 0..200 {
        let port = fastrand::u16(20_000..=30_000);
        let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(port) && free(port + 10_000) {
            return Ok(port);
        }
    }
    Err(redis_error("no free port pair for a cluster node"))
}

/// A directory of its own under the system temp dir, removed on drop.
#[derive(Debug)]
struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    fn create(what: &str) -> Result<Self, FixtureError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "tg-{what}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|error| redis_error(format!("cannot create {}: {error}", dir.display())))?;
        Ok(Self(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends one inline command and returns the reply as text (`None`: no reply).
fn redis_command(port: u16, command: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let timeout = std::time::Duration::from_millis(500);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream
        .write_all(format!("{command}\r\nQUIT\r\n").as_bytes())
        .ok()?;
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    (!reply.is_empty()).then(|| String::from_utf8_lossy(&reply).into_owned())
}

/// A `redis-server` of the tests on 127.0.0.1: no persistence (unless
/// [`RedisServer::start_persistent`]), a directory of its own, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// Extra options (the cluster's).
    extra: Vec<String>,
    child: Option<std::process::Child>,
    dir: ScratchDir,
}

impl RedisServer {
    /// Starts a server on a free port; fails the calling test when it cannot.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|error| fixture_failed(&error))
    }

    /// [`Self::start`], as a `Result`.
    pub fn try_start() -> Result<Self, FixtureError> {
        Self::try_start_with(&[])
    }

    /// A server that keeps its data in an append-only file fsynced on every
    /// write (`appendonly yes`, `appendfsync always`), in its own directory:
    /// after [`Self::kill`], [`Self::restart`] finds every acknowledged write.
    pub fn start_persistent() -> Self {
        Self::try_start_with(&["--appendonly", "yes", "--appendfsync", "always"])
            .unwrap_or_else(|error| fixture_failed(&error))
    }

    fn try_start_with(extra: &[&str]) -> Result<Self, FixtureError> {
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut server = Self {
                port,
                extra: extra.iter().map(|arg| (*arg).to_owned()).collect(),
                child: None,
                dir: ScratchDir::create("redis")?,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| redis_error("redis-server did not start")))
    }

    /// A cluster-enabled server on `port` (see [`RedisCluster`]).
    fn start_cluster_node(port: u16) -> Result<Self, FixtureError> {
        let dir = ScratchDir::create("redis-cluster")?;
        let nodes = dir.0.join(format!("nodes-{port}.conf"));
        let mut server = Self {
            port,
            extra: vec![
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                nodes.display().to_string(),
                "--cluster-node-timeout".to_owned(),
                "5000".to_owned(),
            ],
            child: None,
            dir,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends one inline command (e.g. `KEYS tg:*`) and returns the raw
    /// RESP reply; `None` when the server does not answer.
    pub fn command(&self, command: &str) -> Option<String> {
        redis_command(self.port, command)
    }

    /// Whether the server process runs (it may still be starting).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Stops the server at once (SIGKILL), as an outage would; the port
    /// stays this server's for [`Self::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty, unless it persists: then with
    /// what its append-only file holds); fails the calling test when it cannot.
    pub fn restart(&mut self) {
        self.try_restart()
            .unwrap_or_else(|error| fixture_failed(&error));
    }

    /// [`Self::restart`], as a `Result` (retried while the port is still held).
    pub fn try_restart(&mut self) -> Result<(), FixtureError> {
        self.kill();
        let deadline = std::time::Instant::now() + REDIS_STARTUP;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(error) if std::time::Instant::now() >= deadline => return Err(error),
                Err(_) => std::thread::sleep(POLL_PAUSE),
            }
        }
    }

    /// Spawns `redis-server` on `self.port` and waits for `PING`.
    fn spawn(&mut self) -> Result<(), FixtureError> {
        let binary = redis_server_binary();
        let log = self.dir.0.join("redis.log");
        let mut child = std::process::Command::new(&binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir.0)
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|error| {
                redis_error(format!(
                    "cannot run {} ({error}): install Redis (apt-get install redis-server) or set TG_REDIS_SERVER",
                    binary.display()
                ))
            })?;
        let deadline = std::time::Instant::now() + REDIS_STARTUP;
        loop {
            // Ours, not another test's server that took the port we picked:
            // then ours exits, and a PING alone would still be answered.
            let ours = format!("process_id:{}\r\n", child.id());
            if redis_command(self.port, "INFO server").is_some_and(|reply| reply.contains(&ours)) {
                self.child = Some(child);
                return Ok(());
            }
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited || std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: String = tail.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                return Err(redis_error(format!(
                    "redis-server on port {} {} ({tail})",
                    self.port,
                    if exited {
                        "exited"
                    } else {
                        "did not answer PING in time"
                    }
                )));
            }
            std::thread::sleep(POLL_PAUSE);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of the tests: that many masters on 127.0.0.1, no replicas.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` (at least 3) nodes and joins them; fails the calling
    /// test when it cannot.
    pub fn start(masters: usize) -> Self {
        Self::try_start(masters).unwrap_or_else(|error| fixture_failed(&error))
    }

    /// [`Self::start`], as a `Result`.
    pub fn try_start(masters: usize) -> Result<Self, FixtureError> {
        let mut nodes = Vec::with_capacity(masters);
        while nodes.len() < masters {
            let mut last = None;
            for _ in 0..5 {
                match RedisServer::start_cluster_node(free_cluster_port()?) {
                    Ok(node) => {
                        nodes.push(node);
                        last = None;
                        break;
                    }
                    Err(error) => last = Some(error),
                }
            }
            if let Some(error) = last {
                return Err(error);
            }
        }
        let cluster = Self { nodes };
        cluster.create()?;
        cluster.wait_ok()?;
        Ok(cluster)
    }

    fn create(&self) -> Result<(), FixtureError> {
        let cli = redis_cli_binary();
        let output = std::process::Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(
                self.nodes
                    .iter()
                    .map(|node| format!("127.0.0.1:{}", node.port)),
            )
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|error| {
                redis_error(format!(
                    "cannot run {} ({error}): install Redis (apt-get install redis-tools) or set TG_REDIS_CLI",
                    cli.display()
                ))
            })?;
        if !output.status.success() {
            return Err(redis_error(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(())
    }

    /// Polls every node until it reports `cluster_state:ok`.
    fn wait_ok(&self) -> Result<(), FixtureError> {
        let deadline = std::time::Instant::now() + REDIS_STARTUP;
        for node in &self.nodes {
            loop {
                let info = redis_command(node.port, "CLUSTER INFO").unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    return Err(redis_error(format!(
                        "node 127.0.0.1:{} is not `cluster_state:ok` in time",
                        node.port
                    )));
                }
                std::thread::sleep(POLL_PAUSE);
            }
        }
        Ok(())
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }
}
