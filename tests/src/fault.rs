//! Fault-injection helpers for `tests/faults.rs`:
//!
//! - [`fault_wasm_path`]: the filter built with the test-only `fault-injection`
//!   feature (into `<repo>/target/fault`, so the shipped build is untouched),
//!   and [`FaultEnvoy`], an Envoy (ECDS bootstrap, `FAIL_RELOAD`) running it.
//! - [`FaultStack`]: PostgreSQL (the shared `DATABASE_URL` or a
//!   [`PrivatePostgres`] that can be stopped) + the sync sidecar with tunable
//!   backoff + an Envoy that can be stopped and started again on the same ECDS
//!   directory + the upstream.
//! - [`WriteFault`]: makes the ECDS delivery fail (an immutable/read-only
//!   directory, or a directory standing where the ECDS file should be), repaired
//!   on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tenant_guard_sidecar::daemon::{BackgroundSidecar, RunConfig};
use tenant_guard_sidecar::db::DbConfig;
use tenant_guard_sidecar::envoy::ECDS_FILE_NAME;
use tenant_guard_sidecar::sync::{EnvoyTarget, Syncer};

pub use crate::artifacts::fault_wasm_path;
use crate::artifacts::wasm_path;
use crate::envoy::{write_ecds_file, Envoy};
use crate::http::{self, Response};
use crate::pg::PrivatePostgres;
use crate::sidecar::{self, database_url, SettingsDb};
use crate::tempdir::TempDir;
use crate::upstream::Upstream;
use crate::wait::wait_until;

/// The request header the fault-injection build obeys (`panic`, `corrupt <key>`).
pub const FAULT_HEADER: &str = "x-tenant-guard-fault";

/// An Envoy on the ECDS bootstrap whose filter is the fault-injection build,
/// configured with a plugin config written into its own ECDS directory.
#[derive(Debug)]
pub struct FaultEnvoy {
    pub envoy: Envoy,
    // Declared last: removed after Envoy stopped.
    ecds: TempDir,
}

impl FaultEnvoy {
    /// Starts Envoy with the fault-injection `.wasm` and `plugin_config`.
    pub fn start(plugin_config: &str, upstream_port: u16) -> Self {
        let ecds = TempDir::new("fault-ecds").expect("temp dir for the ECDS file");
        write_ecds_file(ecds.path(), plugin_config, &fault_wasm_path(), "fault-1")
            .unwrap_or_else(|e| panic!("{e}"));
        let envoy = Envoy::start_ecds_watching(ecds.path(), upstream_port);
        Self { envoy, ecds }
    }

    /// The directory holding the ECDS file.
    pub fn ecds_dir(&self) -> &Path {
        self.ecds.path()
    }
}

/// How the [`FaultStack`]'s sidecar runs.
#[derive(Debug, Clone)]
pub struct FaultOptions {
    /// NOTIFY coalescing window.
    pub debounce: Duration,
    /// Reconnect / retry backoff: first delay and cap (jittered, doubling).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long to wait for the first delivery.
    pub ready_timeout: Duration,
}

impl Default for FaultOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(10),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(400),
            ready_timeout: Duration::from_secs(20),
        }
    }
}

/// Where the stack's settings live.
#[derive(Debug)]
enum Store {
    /// A fresh schema on the shared server ([`database_url`]).
    Shared(SettingsDb),
    /// A schema on a private server the test can stop.
    Private { pg: PrivatePostgres, schema: String },
}

/// One `tg_revisions` row (the audit record of a delivery attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionRow {
    pub id: i64,
    pub status: String,
    pub trigger: String,
    pub revision: String,
    pub error: String,
    pub changed_keys: String,
}

/// PostgreSQL + sidecar + a restartable Envoy watching the sidecar's directory + upstream.
#[derive(Debug)]
pub struct FaultStack {
    sidecar: Option<BackgroundSidecar>,
    envoy: Option<Envoy>,
    pub upstream: Upstream,
    store: Store,
    // Declared last: removed once Envoy and the sidecar are gone.
    ecds: TempDir,
}

impl FaultStack {
    /// On a fresh schema of the shared server.
    pub fn shared(options: &FaultOptions) -> Self {
        let settings = SettingsDb::new();
        let url = database_url();
        Self::start(Store::Shared(settings), &url, options)
    }

    /// On schema `tg_faults` of `pg`, the sidecar connecting with `sidecar_url`
    /// (e.g. as a dedicated role, so the test can refuse its logins).
    pub fn private(pg: PrivatePostgres, sidecar_url: &str, options: &FaultOptions) -> Self {
        let store = Store::Private {
            pg,
            schema: "tg_faults".to_owned(),
        };
        Self::start(store, sidecar_url, options)
    }

    fn start(store: Store, url: &str, options: &FaultOptions) -> Self {
        let ecds = TempDir::new("fault-stack").expect("temp dir for the ECDS file");
        let schema = match &store {
            Store::Shared(settings) => settings.schema().to_owned(),
            Store::Private { schema, .. } => schema.clone(),
        };
        // The sidecar refuses settings without a tenant identity source, so a
        // private server's empty schema gets the same header-mode row as the shared one.
        crate::sidecar::prepare_schema(url, &schema);
        let db = DbConfig::new(url, &schema).unwrap_or_else(|e| panic!("database URL: {e}"));
        let mut config = RunConfig::new(db);
        config.debounce = options.debounce;
        config.backoff_initial = options.backoff_initial;
        config.backoff_max = options.backoff_max;
        let target = EnvoyTarget::prepare(ecds.path(), None, Some(&wasm_path()))
            .unwrap_or_else(|e| panic!("sidecar target: {e}"));
        let syncer = Syncer::new(&schema, target).unwrap_or_else(|e| panic!("{e}"));
        let sidecar =
            BackgroundSidecar::start(config, syncer, "127.0.0.1:0".parse().expect("address"))
                .unwrap_or_else(|e| panic!("cannot start the sidecar: {e}"));
        let admin = sidecar.admin_addr().port();
        assert!(
            wait_until(options.ready_timeout, || {
                http::try_get(admin, "/ready").is_some_and(|r| r.status == 200)
            }),
            "sidecar not ready within {:?} (database {url})",
            options.ready_timeout
        );
        let upstream = Upstream::start();
        let envoy = Envoy::start_ecds_watching(ecds.path(), upstream.port());
        Self {
            sidecar: Some(sidecar),
            envoy: Some(envoy),
            upstream,
            store,
            ecds,
        }
    }

    /// The private server (panics on a shared-database stack).
    pub fn pg(&mut self) -> &mut PrivatePostgres {
        match &mut self.store {
            Store::Private { pg, .. } => pg,
            Store::Shared(_) => panic!("this stack uses the shared database"),
        }
    }

    /// Runs `sql` as `postgres` with the stack's schema on the search path.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        match &self.store {
            Store::Shared(settings) => {
                crate::sidecar::psql(&format!("SET search_path TO {}; {sql}", settings.schema()))
            }
            Store::Private { pg, schema } => {
                pg.psql(&format!("SET search_path TO {schema}; {sql}"))
            }
        }
    }

    fn psql_ok(&self, sql: &str) -> String {
        self.psql(sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Upserts the tenant-scope `gateway.rate_limit` of `tenant` (NOTIFYs the sidecar).
    pub fn set_tenant_limit(&self, tenant: &str, requests: u64, per_seconds: u64) {
        self.psql_ok(&crate::sidecar::upsert_tenant_limit_sql(
            tenant,
            requests,
            per_seconds,
        ));
    }

    /// All `tg_revisions` rows, oldest first.
    pub fn revisions(&self) -> Vec<RevisionRow> {
        const SEP: char = '\u{1f}';
        self.psql_ok(
            "SELECT concat_ws(chr(31), id, status, trigger, revision, coalesce(error, ''),
                              array_to_string(changed_keys, ','))
             FROM tg_revisions ORDER BY id",
        )
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split(SEP).collect();
            let field = |i: usize| f.get(i).copied().unwrap_or_default().to_owned();
            RevisionRow {
                id: field(0).parse().unwrap_or(-1),
                status: field(1),
                trigger: field(2),
                revision: field(3),
                error: field(4),
                changed_keys: field(5),
            }
        })
        .collect()
    }

    /// The sidecar's admin port.
    pub fn admin_port(&self) -> u16 {
        self.sidecar
            .as_ref()
            .map(|s| s.admin_addr().port())
            .unwrap_or_default()
    }

    /// `GET path` on the sidecar's admin API (`None` on a transport error).
    pub fn admin_get(&self, path: &str) -> Option<Response> {
        http::try_get(self.admin_port(), path)
    }

    /// `POST /sync` on the sidecar's admin API.
    pub fn post_sync(&self) -> Response {
        http::request(self.admin_port(), "POST", "/sync", &[], b"")
    }

    /// The sidecar's `/metrics` text.
    pub fn metrics(&self) -> String {
        self.admin_get("/metrics")
            .map(|r| r.text())
            .unwrap_or_default()
    }

    /// The value of the sample named exactly `name` (labels included) in `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_value(&self.metrics(), name)
    }

    /// The directory the sidecar writes and Envoy watches.
    pub fn ecds_dir(&self) -> &Path {
        self.ecds.path()
    }

    /// The ECDS file.
    pub fn ecds_file(&self) -> PathBuf {
        self.ecds.path().join(ECDS_FILE_NAME)
    }

    /// The running Envoy (panics if stopped).
    pub fn envoy(&self) -> &Envoy {
        self.envoy.as_ref().expect("Envoy is stopped")
    }

    /// Kills Envoy (the ECDS directory and the sidecar stay).
    pub fn stop_envoy(&mut self) {
        self.envoy = None;
    }

    /// Starts a new Envoy on the same ECDS directory (the file must exist).
    pub fn start_envoy(&mut self) {
        assert!(self.envoy.is_none(), "Envoy is already running");
        self.envoy = Some(Envoy::start_ecds_watching(
            self.ecds.path(),
            self.upstream.port(),
        ));
    }

    /// `GET /e2e` as `tenant` on a fresh connection (`None` on a transport error).
    pub fn get(&self, tenant: &str) -> Option<Response> {
        sidecar::get_as(self.envoy().port(), tenant)
    }

    /// Polls until Envoy answers `tenant` under a `requests`/`per_seconds` policy.
    pub fn wait_for_limit(
        &self,
        tenant: &str,
        requests: u64,
        per_seconds: u64,
        timeout: Duration,
    ) -> Option<Response> {
        sidecar::wait_for_limit(self.envoy().port(), tenant, requests, per_seconds, timeout)
    }
}

impl Drop for FaultStack {
    fn drop(&mut self) {
        if let Some(sidecar) = self.sidecar.take() {
            let _ = sidecar.stop();
        }
        self.envoy = None;
    }
}

/// The value of the sample named exactly `name` in a Prometheus text exposition.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// A broken ECDS delivery path, repaired by [`WriteFault::repair`] or on drop.
#[derive(Debug)]
pub struct WriteFault {
    kind: WriteFaultKind,
    repaired: bool,
}

#[derive(Debug)]
enum WriteFaultKind {
    /// `chattr +i` on the directory (root: permission bits do not stop root).
    Immutable(PathBuf),
    /// Mode 0555 on the directory (non-root).
    ReadOnly(PathBuf),
    /// A directory stands where the ECDS file should be (rename onto it fails).
    DirectoryAsFile(PathBuf),
}

impl WriteFault {
    /// Makes `dir` refuse new entries: mode 0555 when not root, `chattr +i`
    /// as root. `None` when that is impossible here (e.g. `chattr` unsupported
    /// by the file system or no `CAP_LINUX_IMMUTABLE`).
    pub fn unwritable_dir(dir: &Path) -> Option<Self> {
        use std::os::unix::fs::PermissionsExt;
        let probe = dir.join(".write-probe");
        let kind = if is_root() {
            let ok = Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                return None;
            }
            WriteFaultKind::Immutable(dir.to_path_buf())
        } else {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).ok()?;
            WriteFaultKind::ReadOnly(dir.to_path_buf())
        };
        let fault = Self {
            kind,
            repaired: false,
        };
        // It must really refuse writes, or the test would prove nothing.
        if fs::write(&probe, b"x").is_ok() {
            let _ = fs::remove_file(&probe);
            return None;
        }
        Some(fault)
    }

    /// Replaces `file` by a non-empty directory of the same name.
    pub fn directory_as_file(file: &Path) -> Self {
        if file.exists() {
            fs::remove_file(file).unwrap_or_else(|e| panic!("remove {}: {e}", file.display()));
        }
        fs::create_dir(file).unwrap_or_else(|e| panic!("mkdir {}: {e}", file.display()));
        fs::write(file.join("placeholder"), b"not an ECDS resource").expect("placeholder");
        Self {
            kind: WriteFaultKind::DirectoryAsFile(file.to_path_buf()),
            repaired: false,
        }
    }

    /// What was broken, for messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            WriteFaultKind::Immutable(p) => format!("chattr +i {}", p.display()),
            WriteFaultKind::ReadOnly(p) => format!("chmod 0555 {}", p.display()),
            WriteFaultKind::DirectoryAsFile(p) => format!("directory at {}", p.display()),
        }
    }

    /// Undoes the fault.
    pub fn repair(&mut self) {
        if self.repaired {
            return;
        }
        self.repaired = true;
        match &self.kind {
            WriteFaultKind::Immutable(dir) => {
                let _ = Command::new("chattr").arg("-i").arg(dir).output();
            }
            WriteFaultKind::ReadOnly(dir) => {
                use std::os::unix::fs::PermissionsExt;
                let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
            }
            WriteFaultKind::DirectoryAsFile(file) => {
                let _ = fs::remove_dir_all(file);
            }
        }
    }
}

impl Drop for WriteFault {
    fn drop(&mut self) {
        self.repair();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
