//! Helpers for the tests against the real PostgreSQL of the shared fixture
//! ([`tenant_guard_sidecar::test_support`]: `DATABASE_URL`, a fresh schema per
//! test dropped on drop): settings upserts, a tiny HTTP client, polling with
//! a deadline, and an in-process daemon with its admin server on port 0.
//!
//! The sidecar trusts no tenant header by default; these tests have no JWT
//! issuer, so [`TestDb::new`] turns header mode on explicitly (actor
//! [`SETUP_ACTOR`]); [`TestDb::bare`] leaves the schema empty.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod invalid_settings;
pub mod settings_cli;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tenant_guard_sidecar::daemon::{self, RunConfig};
use tenant_guard_sidecar::db::DbConfig;
use tenant_guard_sidecar::envoy::ECDS_FILE_NAME;
use tenant_guard_sidecar::sync::{EnvoyTarget, Syncer};
use tenant_guard_sidecar::test_support::{self, TestSchema};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_postgres::Client;

/// The database the tests use (the fixture's `DATABASE_URL` or its default).
pub fn database_url() -> String {
    test_support::database_url()
}

/// `updated_by` of the header-mode row [`TestDb::new`] writes.
pub const SETUP_ACTOR: &str = "setup";

/// A fresh schema with the sidecar's tables, and a session on it.
pub struct TestDb {
    pub config: DbConfig,
    pub client: Client,
    pub dir: tempfile::TempDir,
    // Declared last: dropped (with the schema) after the session closed.
    schema: TestSchema,
}

impl TestDb {
    /// A fresh schema with header mode on (`gateway.tenant.trust_header_without_jwt`).
    pub async fn new() -> Self {
        Self::on(TestSchema::with_header_mode(SETUP_ACTOR)).await
    }

    /// A fresh schema without any settings.
    pub async fn bare() -> Self {
        Self::on(TestSchema::create()).await
    }

    async fn on(schema: Result<TestSchema, test_support::FixtureError>) -> Self {
        let schema =
            schema.unwrap_or_else(|e| panic!("{}", tenant_guard_sidecar::text::error_text(&e)));
        let config = schema.config().clone();
        let mut test_session = config.clone();
        test_session.application_name = "tenant-guard-sidecar-tests".to_owned();
        let client = test_session.connect_spawned().await.unwrap();
        Self {
            config,
            client,
            dir: tempfile::tempdir().unwrap(),
            schema,
        }
    }

    pub fn schema(&self) -> &str {
        &self.config.schema
    }

    pub fn ecds_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ecds_file(&self) -> PathBuf {
        self.dir.path().join(ECDS_FILE_NAME)
    }

    pub fn target(&self) -> EnvoyTarget {
        EnvoyTarget::prepare(self.ecds_dir(), None, Some(Path::new("/opt/filter.wasm"))).unwrap()
    }

    pub fn syncer(&self) -> Syncer {
        Syncer::new(self.schema(), self.target()).unwrap()
    }

    /// Upserts one setting (`tenant`/`route` empty when not applicable).
    pub async fn set(
        &self,
        scope: &str,
        tenant: &str,
        route: &str,
        key: &str,
        value: Value,
        actor: &str,
    ) {
        self.client
            .execute(
                "INSERT INTO tg_settings (scope, tenant, route, key, value, updated_by)
                 VALUES ($1, $2, $3, $4, $5::text::jsonb, $6)
                 ON CONFLICT (scope, tenant, route, key)
                 DO UPDATE SET value = EXCLUDED.value, updated_by = EXCLUDED.updated_by",
                &[&scope, &tenant, &route, &key, &value.to_string(), &actor],
            )
            .await
            .unwrap();
    }

    pub async fn set_global(&self, key: &str, value: Value, actor: &str) {
        self.set("global", "", "", key, value, actor).await;
    }

    pub async fn set_tenant(&self, tenant: &str, key: &str, value: Value, actor: &str) {
        self.set("tenant", tenant, "", key, value, actor).await;
    }

    pub async fn set_route(&self, tenant: &str, route: &str, key: &str, value: Value, actor: &str) {
        self.set("route", tenant, route, key, value, actor).await;
    }

    /// `gateway.rate_limit` of `tenant` set to `requests` per minute.
    pub async fn set_tenant_limit(&self, tenant: &str, requests: u64, actor: &str) {
        self.set_tenant(tenant, "gateway.rate_limit", limit(requests), actor)
            .await;
    }

    /// The plugin document in the ECDS file; panics when there is none.
    pub fn document(&self) -> Value {
        delivered_document(&self.ecds_file()).expect("ECDS file with a document")
    }

    /// The requests of `tenant`'s rate limit in the ECDS file.
    pub fn delivered_limit(&self, tenant: &str) -> Value {
        tenant_limit(&self.document(), tenant).clone()
    }

    /// Polls until the ECDS file delivers `requests` as the rate limit of `tenant`.
    pub async fn wait_for_tenant_limit(&self, tenant: &str, requests: u64, timeout: Duration) {
        let file = self.ecds_file();
        let what = format!("rate limit {requests} for `{tenant}` in the ECDS file");
        poll(timeout, &what, || {
            let delivered = delivered_document(&file)
                .is_some_and(|document| *tenant_limit(&document, tenant) == requests);
            std::future::ready(delivered.then_some(()))
        })
        .await;
    }

    pub async fn revision_count(&self) -> i64 {
        self.client
            .query_one("SELECT count(*) FROM tg_revisions", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Drops the schema now (it is also dropped when the `TestDb` is).
    pub async fn drop_schema(self) {
        drop(self);
    }
}

/// `{"requests": requests, "per_seconds": 60}`.
pub fn limit(requests: u64) -> Value {
    serde_json::json!({"requests": requests, "per_seconds": 60})
}

/// The requests of `tenant`'s rate limit in a plugin document (`Null` when absent).
pub fn tenant_limit<'a>(document: &'a Value, tenant: &str) -> &'a Value {
    &document["tenants"][tenant]["rate_limit"]["requests"]
}

/// The plugin document inside the ECDS file, if the file exists.
pub fn delivered_document(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    let ecds: Value = serde_json::from_str(&text).ok()?;
    let inner =
        ecds["resources"][0]["typed_config"]["config"]["configuration"]["value"].as_str()?;
    serde_json::from_str(inner).ok()
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Minimal HTTP/1.1 client: returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `GET /ready` on an admin server until it answers 200 (15 s at most).
pub async fn wait_ready(addr: SocketAddr) {
    poll(Duration::from_secs(15), "/ready", || async {
        (http(addr, "GET", "/ready").await.ok()?.0 == 200).then_some(())
    })
    .await;
}

/// A daemon running in this process.
pub struct Daemon {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), daemon::RunError>>,
}

impl Daemon {
    pub async fn start(db: &TestDb, url: Option<&str>) -> Self {
        let db_config = match url {
            Some(url) => DbConfig::new(url, db.schema()).unwrap(),
            None => db.config.clone(),
        };
        Self::start_syncer(db_config, db.syncer()).await
    }

    /// A daemon on `db_config` running `syncer`.
    pub async fn start_syncer(db_config: DbConfig, syncer: Syncer) -> Self {
        let mut config = RunConfig::new(db_config);
        config.resync_interval = Duration::from_secs(3600);
        config.debounce = Duration::from_millis(20);
        config.backoff_max = Duration::from_millis(500);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(daemon::run(config, syncer, listener, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            handle,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path).await.unwrap()
    }

    pub async fn post(&self, path: &str) -> (u16, String) {
        http(self.addr, "POST", path).await.unwrap()
    }

    /// Value of a metric line `name value`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await;
        body.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    pub async fn wait_ready(&self) {
        wait_ready(self.addr).await;
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("daemon did not stop within 10 s")
            .unwrap();
        result.unwrap();
    }
}
