//! Fault-injection helpers for `tests/faults.rs`:
//!
//! - [`fault_wasm_path`]: the filter built with the test-only `fault-injection`
//!   feature (into `<target>/fault-injection`, so the shipped build is
//!   untouched), and [`FaultEnvoy`], an Envoy (ECDS bootstrap) running it under
//!   the sidecar's `FAIL_RELOAD` or another [`FailurePolicy`].
//! - [`RunningSidecar`]: the sync sidecar on one schema, delivering into its own
//!   ECDS directory, with tunable backoff.
//! - [`FaultStack`]: PostgreSQL (the shared `DATABASE_URL` or a
//!   [`PrivatePostgres`] that can be stopped) + a [`RunningSidecar`] + an Envoy
//!   that can be stopped and started again on the sidecar's directory + the upstream.
//! - [`WriteFault`]: makes the ECDS delivery fail (an immutable/read-only
//!   directory, or a directory standing where the ECDS file should be), repaired
//!   on drop.
//! - [`Client`] and [`classify`]: what a client of an idempotent `POST` sees
//!   while the filter's VM dies and comes back ([`Seen`]).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tenant_guard_sidecar::daemon::{BackgroundSidecar, RunConfig};
use tenant_guard_sidecar::db::DbConfig;
use tenant_guard_sidecar::envoy::{render_ecds_resource, write_atomically, ECDS_FILE_NAME};
use tenant_guard_sidecar::sync::{EnvoyTarget, Syncer};

pub use crate::artifacts::fault_wasm_path;
use crate::artifacts::wasm_path;
use crate::envoy::{write_ecds_file, Envoy};
use crate::expect::{assert_problem, assert_upstream};
use crate::failure::fail;
use crate::http::{self, Response};
use crate::pg::PrivatePostgres;
use crate::raw_http::{Outcome, RawH2};
use crate::sidecar::{self, database_url, SettingsDb};
use crate::tempdir::TempDir;
use crate::upstream::Upstream;
use crate::wait::wait_until;

/// The request header the fault-injection build obeys (`panic`,
/// [`PANIC_IN_RESPONSE`], `corrupt <key>`).
pub const FAULT_HEADER: &str = "x-tenant-guard-fault";

/// The fault command that panics the VM in the response headers, after
/// upstream answered (`filter/wasm/src/fault.rs`).
pub const PANIC_IN_RESPONSE: &str = "panic-in-response";

/// Envoy 1.40's `PluginConfig.failure_policy`: what a worker does with its VM
/// once the filter panicked (the enum also has `UNSPECIFIED`; the deprecated
/// `fail_open` bool is not used here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// What the sidecar renders: a new VM on the next request after a backoff.
    Reload,
    /// The worker's filter stays dead.
    Closed,
    /// The worker's requests skip the dead filter.
    Open,
}

impl FailurePolicy {
    /// The enum value's name in the Wasm filter config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reload => "FAIL_RELOAD",
            Self::Closed => "FAIL_CLOSED",
            Self::Open => "FAIL_OPEN",
        }
    }
}

fn temp_dir(prefix: &str) -> TempDir {
    TempDir::new(prefix).unwrap_or_else(|e| fail(format!("temp dir for the ECDS file: {e}")))
}

/// An Envoy on the ECDS bootstrap whose filter is the fault-injection build,
/// configured with a plugin config written into its own ECDS directory.
#[derive(Debug)]
pub struct FaultEnvoy {
    pub envoy: Envoy,
    // Declared last: removed after Envoy stopped.
    ecds: TempDir,
}

impl FaultEnvoy {
    /// Starts Envoy with the fault-injection `.wasm` and `plugin_config`, in
    /// the ECDS resource exactly as the sidecar renders it (`FAIL_RELOAD`).
    pub fn start(plugin_config: &str, upstream_port: u16) -> Self {
        let ecds = temp_dir("fault-ecds");
        write_ecds_file(ecds.path(), plugin_config, &fault_wasm_path(), "fault-1")
            .unwrap_or_else(|e| fail(e));
        let envoy = Envoy::start_ecds_watching(ecds.path(), upstream_port);
        Self { envoy, ecds }
    }

    /// Like [`FaultEnvoy::start`], with the sidecar's resource changed only in
    /// its `failure_policy` (checked to be `FAIL_RELOAD` as rendered).
    pub fn start_with_policy(
        plugin_config: &str,
        upstream_port: u16,
        policy: FailurePolicy,
    ) -> Self {
        let ecds = temp_dir("fault-ecds");
        let rendered = render_ecds_resource(plugin_config, &fault_wasm_path(), "fault-1")
            .unwrap_or_else(|e| fail(format!("render ECDS resource: {e}")));
        let mut resource: Value = serde_json::from_str(&rendered)
            .unwrap_or_else(|e| fail(format!("rendered ECDS resource: {e}")));
        let Some(slot) = resource.pointer_mut("/resources/0/typed_config/config/failure_policy")
        else {
            fail(format!("no failure_policy in {rendered}"))
        };
        assert_eq!(
            slot.as_str(),
            Some(FailurePolicy::Reload.as_str()),
            "the sidecar renders FAIL_RELOAD: {rendered}"
        );
        *slot = Value::String(policy.as_str().to_owned());
        let file = ecds.path().join(ECDS_FILE_NAME);
        write_atomically(&file, resource.to_string().as_bytes())
            .unwrap_or_else(|e| fail(format!("write ECDS resource: {e}")));
        let envoy = Envoy::start_ecds_watching(ecds.path(), upstream_port);
        Self { envoy, ecds }
    }

    /// The directory holding the ECDS file.
    pub fn ecds_dir(&self) -> &Path {
        self.ecds.path()
    }
}

/// How a [`RunningSidecar`] runs.
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

/// The sync sidecar (its library loop on a background thread, admin API on a
/// free port) on `schema` at `url`, delivering the shipped `.wasm` into an
/// ECDS directory of its own; stopped on drop. It is what `SidecarStack`
/// builds inline too, so it is meant to move to `sidecar.rs` for both stacks.
#[derive(Debug)]
pub struct RunningSidecar {
    sidecar: Option<BackgroundSidecar>,
    // Declared last: removed once the sidecar is gone.
    ecds: TempDir,
}

impl RunningSidecar {
    /// Starts the sidecar and waits for its first delivery (`/ready`).
    pub fn start(url: &str, schema: &str, options: &FaultOptions) -> Self {
        let ecds = temp_dir("sidecar-ecds");
        let db = DbConfig::new(url, schema).unwrap_or_else(|e| fail(format!("database URL: {e}")));
        let mut config = RunConfig::new(db);
        config.debounce = options.debounce;
        config.backoff_initial = options.backoff_initial;
        config.backoff_max = options.backoff_max;
        let target = EnvoyTarget::prepare(ecds.path(), None, Some(&wasm_path()))
            .unwrap_or_else(|e| fail(format!("sidecar target: {e}")));
        let syncer = Syncer::new(schema, target).unwrap_or_else(|e| fail(e));
        let admin = SocketAddr::from(([127, 0, 0, 1], 0));
        let sidecar = BackgroundSidecar::start(config, syncer, admin)
            .unwrap_or_else(|e| fail(format!("cannot start the sidecar: {e}")));
        let port = sidecar.admin_addr().port();
        assert!(
            wait_until(options.ready_timeout, || {
                http::try_get(port, "/ready").is_some_and(|r| r.status == 200)
            }),
            "sidecar not ready within {:?} (is PostgreSQL at {url} reachable? \
             `export DATABASE_URL=$(bash tests/postgres.sh)`)",
            options.ready_timeout
        );
        let running = Self {
            sidecar: Some(sidecar),
            ecds,
        };
        assert!(running.ecds_file().is_file(), "ready without an ECDS file");
        running
    }

    /// The admin port (`/ready`, `/metrics`, `POST /sync`); 0 once stopped.
    pub fn admin_port(&self) -> u16 {
        self.sidecar
            .as_ref()
            .map(|s| s.admin_addr().port())
            .unwrap_or_default()
    }

    /// `GET path` on the admin API (`None` on a transport error).
    pub fn admin_get(&self, path: &str) -> Option<Response> {
        http::try_get(self.admin_port(), path)
    }

    /// `POST /sync` on the admin API.
    pub fn post_sync(&self) -> Response {
        http::request(self.admin_port(), "POST", "/sync", &[], b"")
    }

    /// The `/metrics` text (empty on a transport error).
    pub fn metrics(&self) -> String {
        self.admin_get("/metrics")
            .map(|r| r.text())
            .unwrap_or_default()
    }

    /// The value of the sample named exactly `name` (labels included) in `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_value(&self.metrics(), name)
    }

    /// The directory the sidecar writes (and an Envoy watches).
    pub fn ecds_dir(&self) -> &Path {
        self.ecds.path()
    }

    /// The ECDS file the sidecar writes.
    pub fn ecds_file(&self) -> PathBuf {
        self.ecds.path().join(ECDS_FILE_NAME)
    }

    /// Stops the sidecar gracefully (an Envoy keeps serving the last file).
    pub fn stop(&mut self) {
        if let Some(sidecar) = self.sidecar.take() {
            let _ = sidecar.stop();
        }
    }
}

impl Drop for RunningSidecar {
    fn drop(&mut self) {
        self.stop();
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

/// PostgreSQL, the sidecar, a restartable Envoy watching the sidecar's
/// directory, and the upstream. Fields drop in order: Envoy, the sidecar (and
/// its directory), then the settings.
#[derive(Debug)]
pub struct FaultStack {
    envoy: Option<Envoy>,
    pub sidecar: RunningSidecar,
    pub upstream: Upstream,
    store: Store,
}

impl FaultStack {
    /// On a fresh schema of the shared server.
    pub fn shared(options: &FaultOptions) -> Self {
        let settings = SettingsDb::new();
        let sidecar = RunningSidecar::start(&database_url(), settings.schema(), options);
        Self::with(sidecar, Store::Shared(settings))
    }

    /// On schema `tg_faults` of `pg`, the sidecar connecting with `sidecar_url`
    /// (e.g. as a dedicated role, so the test can refuse its logins).
    pub fn private(pg: PrivatePostgres, sidecar_url: &str, options: &FaultOptions) -> Self {
        let schema = "tg_faults".to_owned();
        // The sidecar refuses settings without a tenant identity source, so the
        // private server's empty schema gets the same header-mode row as a shared one.
        sidecar::prepare_schema(sidecar_url, &schema);
        let sidecar = RunningSidecar::start(sidecar_url, &schema, options);
        Self::with(sidecar, Store::Private { pg, schema })
    }

    fn with(sidecar: RunningSidecar, store: Store) -> Self {
        let upstream = Upstream::start();
        let envoy = Envoy::start_ecds_watching(sidecar.ecds_dir(), upstream.port());
        Self {
            envoy: Some(envoy),
            sidecar,
            upstream,
            store,
        }
    }

    /// The private server (fails the test on a shared-database stack).
    pub fn pg(&mut self) -> &mut PrivatePostgres {
        match &mut self.store {
            Store::Private { pg, .. } => pg,
            Store::Shared(_) => fail("this stack uses the shared database"),
        }
    }

    /// Runs `sql` as `postgres` with the stack's schema on the search path.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        match &self.store {
            Store::Shared(settings) => {
                sidecar::psql(&format!("SET search_path TO {}; {sql}", settings.schema()))
            }
            Store::Private { pg, schema } => {
                pg.psql(&format!("SET search_path TO {schema}; {sql}"))
            }
        }
    }

    fn psql_ok(&self, sql: &str) -> String {
        self.psql(sql).unwrap_or_else(|e| fail(e))
    }

    /// Upserts the tenant-scope `gateway.rate_limit` of `tenant` (NOTIFYs the sidecar).
    pub fn set_tenant_limit(&self, tenant: &str, requests: u64, per_seconds: u64) {
        self.psql_ok(&sidecar::upsert_tenant_limit_sql(
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

    /// The running Envoy (fails the test if stopped).
    pub fn envoy(&self) -> &Envoy {
        self.envoy
            .as_ref()
            .unwrap_or_else(|| fail("Envoy is stopped"))
    }

    /// Kills Envoy (the ECDS directory and the sidecar stay).
    pub fn stop_envoy(&mut self) {
        self.envoy = None;
    }

    /// Starts a new Envoy on the sidecar's directory (the file must exist).
    pub fn start_envoy(&mut self) {
        assert!(self.envoy.is_none(), "Envoy is already running");
        self.envoy = Some(Envoy::start_ecds_watching(
            self.sidecar.ecds_dir(),
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
            fs::remove_file(file)
                .unwrap_or_else(|e| fail(format!("remove {}: {e}", file.display())));
        }
        fs::create_dir(file).unwrap_or_else(|e| fail(format!("mkdir {}: {e}", file.display())));
        fs::write(file.join("placeholder"), b"not an ECDS resource")
            .unwrap_or_else(|e| fail(format!("placeholder in {}: {e}", file.display())));
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

// ------------------------------------------- a VM crash mid-flight, client side

const CORRELATION: &str = "x-correlation-id";
const REPLAYED: &str = "idempotent-replayed";
/// What the filter adds to every request it lets through to upstream.
const REVISION: &str = "x-tenant-guard-revision";

/// What one answer to an idempotent `POST` was, as the client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Envoy's own 503: empty body, none of the filter's headers (its VM is dead or reloading).
    Unavailable,
    /// The filter's 409 `idempotency-key-in-flight` (`Retry-After: 1`).
    InFlight,
    /// A fresh upstream answer through the filter: the key executed.
    Executed,
    /// A fresh upstream answer that skipped the filter (no correlation id, no revision upstream).
    Unfiltered,
    /// The stored answer, replayed.
    Replayed,
}

/// Classifies `response` to `POST path`, asserting each kind's shape; panics on anything else.
pub fn classify(response: &Response, path: &str) -> Seen {
    match response.status {
        503 => {
            assert_envoy_unavailable(response);
            Seen::Unavailable
        }
        409 => {
            assert_problem(response, 409, "idempotency-key-in-flight");
            assert_eq!(response.header("retry-after"), Some("1"), "{response:?}");
            Seen::InFlight
        }
        200 if response.header(REPLAYED).is_some() => {
            assert_eq!(response.header_once(REPLAYED), "true");
            Seen::Replayed
        }
        200 => {
            let echoed = assert_upstream(response, path);
            let revision = echoed.pointer(&format!("/headers/{REVISION}"));
            match response.header_all(CORRELATION).len() {
                1 => {
                    assert!(
                        revision.is_some_and(Value::is_string),
                        "upstream saw {REVISION}: {echoed}"
                    );
                    Seen::Executed
                }
                0 => {
                    assert!(revision.is_none(), "no filter, no {REVISION}: {echoed}");
                    Seen::Unfiltered
                }
                _ => fail(format!("correlation id more than once: {response:?}")),
            }
        }
        other => fail(format!("unexpected {other} for POST {path}: {response:?}")),
    }
}

/// Whether `response` is Envoy's answer for a request whose filter VM failed:
/// 503, empty body, no header the filter would have set.
pub fn is_envoy_unavailable(response: &Response) -> bool {
    response.status == 503
        && response.body.is_empty()
        && [CORRELATION, "content-type", "ratelimit-policy", REPLAYED]
            .iter()
            .all(|name| response.header(name).is_none())
}

/// Asserts [`is_envoy_unavailable`].
pub fn assert_envoy_unavailable(response: &Response) {
    assert!(
        is_envoy_unavailable(response),
        "expected Envoy's bare 503 (failed filter VM): {response:?}"
    );
}

/// One attempt of a retry loop, timed from when the first request was sent.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub sent: Duration,
    pub answered: Duration,
    pub seen: Seen,
}

/// Runs of equal answers: (what, how many in a row).
pub fn phases(attempts: &[Attempt]) -> Vec<(Seen, usize)> {
    let mut runs: Vec<(Seen, usize)> = Vec::new();
    for attempt in attempts {
        match runs.last_mut() {
            Some((seen, count)) if *seen == attempt.seen => *count += 1,
            _ => runs.push((attempt.seen, 1)),
        }
    }
    runs
}

/// How a test client reaches Envoy.
#[derive(Debug)]
pub enum Client {
    /// One HTTP/2 connection: every request on the same worker (a lost
    /// connection fails the test instead of silently moving worker).
    H2(RawH2),
    /// A fresh HTTP/1.1 connection per request (Envoy closes one anyway after
    /// a local reply sent before the request body): any worker.
    H1(u16),
}

impl Client {
    /// Sends one request.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        match self {
            Self::H1(port) => http::request(*port, method, path, headers, body),
            Self::H2(h2) => {
                let raw: Vec<(&[u8], &[u8])> = headers
                    .iter()
                    .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
                    .collect();
                match h2.request(method, path.as_bytes(), &raw, body) {
                    Ok(Outcome::Response(r)) => Response {
                        status: r.status,
                        headers: r
                            .headers
                            .iter()
                            .map(|(n, v)| {
                                let name = String::from_utf8_lossy(n).to_ascii_lowercase();
                                (name, String::from_utf8_lossy(v).into_owned())
                            })
                            .collect(),
                        body: r.body,
                    },
                    other => fail(format!(
                        "{method} {path} on the one HTTP/2 connection: {other:?}"
                    )),
                }
            }
        }
    }

    /// Sends `attempt()` until it is answered [`Seen::Executed`] or
    /// [`Seen::Unfiltered`] (at most `timeout`), calling `check` on each answer.
    pub fn retry_until_executed(
        &mut self,
        since: Instant,
        timeout: Duration,
        mut attempt: impl FnMut(&mut Self) -> Response,
        path: &str,
        mut check: impl FnMut(&Attempt),
    ) -> Vec<Attempt> {
        let mut attempts = Vec::new();
        let executed = wait_until(timeout, || {
            let sent = since.elapsed();
            let response = attempt(self);
            let seen = classify(&response, path);
            let one = Attempt {
                sent,
                answered: since.elapsed(),
                seen,
            };
            check(&one);
            attempts.push(one);
            matches!(seen, Seen::Executed | Seen::Unfiltered)
        });
        assert!(
            executed,
            "no execution within {timeout:?}: {:?}",
            phases(&attempts)
        );
        attempts
    }
}
