//! The full delivery path for end-to-end tests and the propagation benchmark:
//! a fresh PostgreSQL schema written to with `psql` (as an operator would), the
//! sync sidecar (its library loop on a background thread, admin API on a free
//! port) writing the ECDS file, a real Envoy on the ECDS bootstrap watching that
//! directory, and the in-process upstream. Plus the settings-change → enforced
//! latency measurement shared by `tests/sidecar_e2e.rs` and the propagation
//! benchmark in `bench/`.
//!
//! PostgreSQL and the schemas come from the sidecar's shared test fixture
//! ([`tenant_guard_sidecar::test_support`]: `DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; `bash tests/postgres.sh`
//! starts one and prints its URL).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tenant_guard_sidecar::daemon::{BackgroundSidecar, RunConfig};
use tenant_guard_sidecar::db::DbConfig;
use tenant_guard_sidecar::envoy::ECDS_FILE_NAME;
use tenant_guard_sidecar::sync::{EnvoyTarget, Syncer};
use tenant_guard_sidecar::test_support::{self, TestSchema};
use tenant_guard_sidecar::text::error_text;

use crate::artifacts::wasm_path;
use crate::envoy::Envoy;
use crate::failure::fail;
use crate::http::{self, Response};
use crate::tempdir::TempDir;
use crate::upstream::Upstream;
use crate::wait::wait_until;

pub use tenant_guard_sidecar::test_support::database_url;

/// The tenant header of the plugin configuration the sidecar renders.
pub const TENANT_HEADER: &str = "x-tenant-id";

/// `updated_by` of the header-mode row the stacks write.
const ACTOR: &str = "e2e";

/// `GET /e2e` as `tenant` on a fresh connection to Envoy on `port` (`None` on a transport error).
pub fn get_as(port: u16, tenant: &str) -> Option<Response> {
    http::Conn::new(port)
        .request("GET", "/e2e", &[(TENANT_HEADER, tenant)], b"")
        .ok()
}

/// Polls (every 2 ms) until Envoy on `port` answers `tenant` with a policy of
/// `requests`/`per_seconds`; returns that response.
pub fn wait_for_limit(
    port: u16,
    tenant: &str,
    requests: u64,
    per_seconds: u64,
    timeout: Duration,
) -> Option<Response> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(response) = get_as(port, tenant) {
            if has_policy(&response, requests, per_seconds) {
                return Some(response);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `sql` with `psql` against [`database_url`]; returns trimmed unaligned output.
pub fn psql(sql: &str) -> Result<String, String> {
    psql_at(&database_url(), sql)
}

/// Runs `sql` with `psql` against `url`; returns trimmed unaligned output.
pub fn psql_at(url: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
        .output()
        .map_err(|e| format!("cannot run psql (Debian: postgresql-client): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Creates (migrates) `schema` at `url` and turns header mode on
/// (`gateway.tenant.trust_header_without_jwt` = true, actor `e2e`): the
/// sidecar trusts no tenant header by default, and these stacks identify
/// tenants by `x-tenant-id` without a JWT issuer. Call before starting a
/// sidecar on a fresh schema, so its first sync is valid.
pub fn prepare_schema(url: &str, schema: &str) {
    let config = DbConfig::new(url, schema).unwrap_or_else(|e| fail(format!("database URL: {e}")));
    test_support::prepare(&config, ACTOR)
        .unwrap_or_else(|e| fail(format!("cannot create schema {schema}: {}", error_text(&e))));
}

/// A fresh schema for the sidecar's tables, header mode on (see
/// [`prepare_schema`]), dropped on drop.
#[derive(Debug)]
pub struct SettingsDb {
    schema: TestSchema,
}

impl SettingsDb {
    /// Creates a fresh schema with header mode on (the fixture also drops the
    /// schemas of earlier runs whose process is gone).
    pub fn new() -> Self {
        let schema = TestSchema::with_header_mode(ACTOR).unwrap_or_else(|e| fail(error_text(&e)));
        Self { schema }
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        self.schema.name()
    }

    /// Runs `sql` with this schema first on the search path; fails the test on error.
    pub fn psql(&self, sql: &str) -> String {
        psql(&format!("SET search_path TO {}; {sql}", self.schema())).unwrap_or_else(|e| fail(e))
    }

    /// Upserts the tenant-scope `gateway.rate_limit` of `tenant` (one committed
    /// transaction, whose trigger NOTIFYs the sidecar).
    pub fn set_tenant_limit(&self, tenant: &str, requests: u64, per_seconds: u64) {
        self.psql(&upsert_tenant_limit_sql(tenant, requests, per_seconds));
    }

    /// The `revision` of the newest delivered revision (empty if none).
    pub fn deployed_revision(&self) -> String {
        self.psql(
            "SELECT revision FROM tg_revisions WHERE status = 'delivered' ORDER BY id DESC LIMIT 1",
        )
    }
}

impl Default for SettingsDb {
    fn default() -> Self {
        Self::new()
    }
}

/// How the stack's sidecar runs.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// NOTIFY coalescing window of the sidecar (`run --debounce`; its default is 100 ms).
    pub debounce: Duration,
    /// How long to wait for the sidecar's first delivery (`/ready`).
    pub ready_timeout: Duration,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(10),
            ready_timeout: Duration::from_secs(20),
        }
    }
}

/// PostgreSQL schema + sidecar + Envoy (ECDS bootstrap on the sidecar's
/// directory) + upstream. The sidecar is stopped before the schema is dropped.
#[derive(Debug)]
pub struct SidecarStack {
    sidecar: Option<BackgroundSidecar>,
    pub envoy: Envoy,
    pub settings: SettingsDb,
    pub upstream: Upstream,
    // Declared last: removed once Envoy and the sidecar are gone.
    ecds: TempDir,
}

impl SidecarStack {
    /// [`SidecarStack::start_with`] default options (10 ms debounce).
    pub fn start() -> Self {
        Self::start_with(&StackOptions::default())
    }

    /// Starts the sidecar on a fresh schema, waits for its first delivery
    /// (header mode only), then starts Envoy watching its directory.
    pub fn start_with(options: &StackOptions) -> Self {
        let ecds = TempDir::new("ecds")
            .unwrap_or_else(|e| fail(format!("temp dir for the ECDS file: {e}")));
        let settings = SettingsDb::new();
        let mut config = RunConfig::new(settings.schema.config().clone());
        config.debounce = options.debounce;
        let target = EnvoyTarget::prepare(ecds.path(), None, Some(&wasm_path()))
            .unwrap_or_else(|e| fail(format!("sidecar target: {e}")));
        let syncer = Syncer::new(settings.schema(), target).unwrap_or_else(|e| fail(e));
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let sidecar = BackgroundSidecar::start(config, syncer, admin)
            .unwrap_or_else(|e| fail(format!("cannot start the sidecar: {e}")));
        let admin = sidecar.admin_addr().port();
        assert!(
            wait_until(options.ready_timeout, || {
                http::try_get(admin, "/ready").is_some_and(|r| r.status == 200)
            }),
            "sidecar not ready within {:?} (is PostgreSQL at {} reachable? \
             `export DATABASE_URL=$(bash tests/postgres.sh)`)",
            options.ready_timeout,
            database_url()
        );
        assert!(ecds.path().join(ECDS_FILE_NAME).is_file());
        let upstream = Upstream::start();
        let envoy = Envoy::start_ecds_watching(ecds.path(), upstream.port());
        Self {
            sidecar: Some(sidecar),
            envoy,
            settings,
            upstream,
            ecds,
        }
    }

    /// The sidecar's admin port (`/ready`, `/metrics`, `POST /sync`).
    pub fn admin_port(&self) -> u16 {
        self.sidecar
            .as_ref()
            .map(|s| s.admin_addr().port())
            .unwrap_or_default()
    }

    /// The directory the sidecar writes and Envoy watches.
    pub fn ecds_dir(&self) -> &Path {
        self.ecds.path()
    }

    /// The ECDS file the sidecar writes.
    pub fn ecds_file(&self) -> PathBuf {
        self.ecds.path().join(ECDS_FILE_NAME)
    }

    /// `GET /e2e` as `tenant` on a fresh connection (`None` on a transport error).
    pub fn get(&self, tenant: &str) -> Option<Response> {
        get_as(self.envoy.port(), tenant)
    }

    /// Polls until Envoy answers `tenant` with a policy of `requests`/`per_seconds`.
    pub fn wait_for_limit(
        &self,
        tenant: &str,
        requests: u64,
        per_seconds: u64,
        timeout: Duration,
    ) -> Option<Response> {
        wait_for_limit(self.envoy.port(), tenant, requests, per_seconds, timeout)
    }

    /// Stops the sidecar (gracefully); Envoy keeps serving its last config.
    pub fn stop_sidecar(&mut self) {
        if let Some(sidecar) = self.sidecar.take() {
            let _ = sidecar.stop();
        }
    }
}

impl Drop for SidecarStack {
    fn drop(&mut self) {
        self.stop_sidecar();
    }
}

/// Whether `response` carries `RateLimit-Policy` for `requests` per `per_seconds`.
pub fn has_policy(response: &Response, requests: u64, per_seconds: u64) -> bool {
    let wanted = format!(";q={requests};w={per_seconds}");
    response
        .header("ratelimit-policy")
        .is_some_and(|p| p.contains(&wanted))
}

/// One settings change, timed from the commit (the `psql` client has exited).
#[derive(Debug, Clone, Copy)]
pub struct PropagationSample {
    /// Commit → the sidecar has renamed the new ECDS file into place.
    pub to_file: Duration,
    /// Commit → the first request Envoy answers under the new limit.
    pub to_enforced: Duration,
    /// Like `to_enforced`, including the `psql` client's own start-up and commit.
    pub with_client: Duration,
}

/// p50 / p99 / max by the nearest-rank method.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (all zero when empty).
    pub fn of(samples: &[Duration]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort();
        let rank = |p: f64| {
            if sorted.is_empty() {
                return Duration::ZERO;
            }
            let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted.get(index).copied().unwrap_or_default()
        };
        Self {
            p50: rank(0.50),
            p99: rank(0.99),
            max: sorted.last().copied().unwrap_or_default(),
        }
    }
}

/// Milliseconds as a float, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The result of [`measure_propagation`].
#[derive(Debug, Clone)]
pub struct PropagationReport {
    pub samples: Vec<PropagationSample>,
}

impl PropagationReport {
    /// Percentiles of commit → enforced.
    pub fn enforced(&self) -> Percentiles {
        Percentiles::of(
            &self
                .samples
                .iter()
                .map(|s| s.to_enforced)
                .collect::<Vec<_>>(),
        )
    }

    /// Percentiles of commit → ECDS file written.
    pub fn to_file(&self) -> Percentiles {
        Percentiles::of(&self.samples.iter().map(|s| s.to_file).collect::<Vec<_>>())
    }

    /// Percentiles of client start → enforced.
    pub fn with_client(&self) -> Percentiles {
        Percentiles::of(
            &self
                .samples
                .iter()
                .map(|s| s.with_client)
                .collect::<Vec<_>>(),
        )
    }

    /// A one-paragraph summary.
    pub fn summary(&self) -> String {
        let (e, f, c) = (self.enforced(), self.to_file(), self.with_client());
        format!(
            "propagation over {} changes, commit -> first request under the new limit: \
             p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (commit -> ECDS file written: p50 {:.1} ms, \
             p99 {:.1} ms; including the psql client's own start-up: p50 {:.1} ms, p99 {:.1} ms)",
            self.samples.len(),
            ms(e.p50),
            ms(e.p99),
            ms(e.max),
            ms(f.p50),
            ms(f.p99),
            ms(c.p50),
            ms(c.p99)
        )
    }
}

/// Changes `tenant`'s limit `changes` times in PostgreSQL and times each change
/// until Envoy enforces it (polling Envoy and the ECDS file every 1 ms, with a
/// `timeout` per change). The limits used are `base + 1 ..= base + changes`
/// per 60 s; `on_sample` sees each sample as it is taken.
pub fn measure_propagation(
    stack: &SidecarStack,
    tenant: &str,
    base: u64,
    changes: u64,
    timeout: Duration,
    mut on_sample: impl FnMut(u64, &PropagationSample),
) -> Result<PropagationReport, String> {
    const WINDOW: u64 = 60;
    stack.settings.set_tenant_limit(tenant, base, WINDOW);
    stack
        .wait_for_limit(tenant, base, WINDOW, timeout)
        .ok_or_else(|| format!("the initial limit of `{tenant}` never reached Envoy"))?;

    let ecds_file = stack.ecds_file();
    let mut samples = Vec::new();
    for i in 1..=changes {
        let requests = base + i;
        let before_client = Instant::now();
        stack.settings.set_tenant_limit(tenant, requests, WINDOW);
        // psql has exited: the transaction (and its NOTIFY) is committed.
        let start = Instant::now();
        let marker = format!("\\\"requests\\\":{requests}");
        let deadline = start + timeout;
        let mut to_file = None;
        let enforced = |r: &Response| has_policy(r, requests, WINDOW);
        let to_enforced = loop {
            if to_file.is_none()
                && fs::read_to_string(&ecds_file).is_ok_and(|t| t.contains(&marker))
            {
                to_file = Some(start.elapsed());
            }
            if stack.get(tenant).is_some_and(|r| enforced(&r)) {
                break start.elapsed();
            }
            if Instant::now() >= deadline {
                let file = if to_file.is_some() {
                    "written"
                } else {
                    "not written"
                };
                return Err(format!(
                    "change {i} ({tenant}: {requests}/{WINDOW}s) not enforced within \
                     {timeout:?} (ECDS file {file})"
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let sample = PropagationSample {
            to_file: to_file.unwrap_or(to_enforced),
            to_enforced,
            with_client: before_client.elapsed(),
        };
        on_sample(i, &sample);
        samples.push(sample);
    }
    Ok(PropagationReport { samples })
}

/// SQL that upserts the tenant-scope `gateway.rate_limit` of `tenant` as actor `e2e`.
pub(crate) fn upsert_tenant_limit_sql(tenant: &str, requests: u64, per_seconds: u64) -> String {
    format!(
        "INSERT INTO tg_settings (scope, tenant, key, value, updated_by)
         VALUES ('tenant', '{tenant}', 'gateway.rate_limit',
                 '{{\"requests\": {requests}, \"per_seconds\": {per_seconds}}}', 'e2e')
         ON CONFLICT (scope, tenant, route, key)
         DO UPDATE SET value = EXCLUDED.value, updated_by = EXCLUDED.updated_by"
    )
}
