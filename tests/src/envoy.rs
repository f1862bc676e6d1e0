//! A real Envoy process started from the repository's bootstrap templates
//! (`envoy/static.yaml` or `envoy/ecds.yaml`), with helpers for requests, admin
//! stats and ECDS updates. Killed on drop; if the test is panicking, the Envoy
//! log tail is printed to stderr.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tenant_guard_sidecar::envoy::{render_ecds_resource, write_atomically, ECDS_FILE_NAME};

use crate::artifacts::{envoy_binary, repo_root, wasm_path};
use crate::bound_ports::{ephemeral_port_values, wait_until_ready};
use crate::failure::fail;
use crate::http::{self, Conn, Response};
use crate::tempdir::TempDir;
use crate::wait::wait_until;

/// How long Envoy may take to become ready.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The admin stat holding the `version_info` of the ECDS resource Envoy applied
/// (the sidecar puts the revision there), e.g. `"r3-1a2b3c4d5e6f"` with the quotes.
pub const ECDS_VERSION_STAT: &str =
    "extension_config_discovery.http_filter.tenant-guard.version_text";
/// Envoy's count of ECDS updates of the filter it applied.
pub const ECDS_RELOAD_STAT: &str =
    "extension_config_discovery.http_filter.tenant-guard.config_reload";
/// Envoy's count of ECDS updates of the filter it rejected (the previous one keeps serving).
pub const ECDS_FAIL_STAT: &str = "extension_config_discovery.http_filter.tenant-guard.config_fail";

/// Which bootstrap template to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvoyMode {
    /// `envoy/static.yaml`: the plugin config is inline in the bootstrap.
    Static,
    /// `envoy/ecds.yaml`: the filter comes from a watched ECDS file.
    Ecds,
}

/// A running Envoy.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    mode: EnvoyMode,
    admin_port: u16,
    listener_port: u16,
    wasm: PathBuf,
    log_path: PathBuf,
    stdout_path: PathBuf,
    ecds_dir: PathBuf,
    /// Whether `ecds_dir` was given by the caller (and is written by someone else).
    external_ecds: bool,
    // Declared last: removed after the paths above are no longer needed.
    _dir: TempDir,
}

/// The store sidecar's port when a test does not name one (`envoy/lib.sh` too).
pub const DEFAULT_STORE_PORT: u16 = 9912;

/// Ports [`free_port`] handed out in this process.
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A free TCP port on 127.0.0.1 (bind to port 0 and release it), never one
/// handed out before in this process: once released, the kernel may give the
/// same port to the next caller, and two servers of parallel tests would
/// then race for it (with `reuseport`, even share it without an error).
/// Envoys do not need one: they bind port 0 themselves (`bound_ports`).
pub fn free_port() -> u16 {
    for _ in 0..64 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| fail(format!("cannot pick a free port: {e}")));
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if handed_out.insert(port) {
            return port;
        }
    }
    fail("cannot pick a free port: the kernel keeps offering ports already handed out")
}

/// Renders a template by plain string substitution of `__KEY__` placeholders and
/// checks that none is left outside comments.
pub fn render_template(template: &str, values: &[(&str, String)]) -> String {
    let mut text = template.to_string();
    for (key, value) in values {
        text = text.replace(&format!("__{key}__"), value);
    }
    // The store sidecar's port matters in cluster mode only; local-mode
    // tests leave it at its default.
    text = text.replace("__STORE_PORT__", &DEFAULT_STORE_PORT.to_string());
    for line in text.lines() {
        let code = line.trim_start();
        if !code.starts_with('#') {
            for key in [
                "ADMIN_PORT",
                "LISTENER_PORT",
                "UPSTREAM_PORT",
                "WASM_PATH",
                "PLUGIN_CONFIG_JSON",
                "ECDS_DIR",
            ] {
                assert!(
                    !code.contains(&format!("__{key}__")),
                    "unreplaced placeholder __{key}__ in: {line}"
                );
            }
        }
    }
    text
}

/// Percent-encodes a query parameter value.
fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The last `lines` lines of a log file (empty if it cannot be read), without
/// Envoy's long start-up inventory lines.
pub fn log_file_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("server.cc:467]") && !l.contains("server.cc:547]"))
        .collect();
    all.get(all.len().saturating_sub(lines)..)
        .unwrap_or_default()
        .join("\n")
}

impl Envoy {
    /// Starts Envoy with `envoy/static.yaml`, the filter configured with `plugin_config` (JSON text).
    pub fn start_static(plugin_config: &str, upstream_port: u16) -> Self {
        Self::start(EnvoyMode::Static, plugin_config, upstream_port)
    }

    /// Starts Envoy with `envoy/ecds.yaml`; the initial ECDS file carries `plugin_config`.
    pub fn start_ecds(plugin_config: &str, upstream_port: u16) -> Self {
        Self::start(EnvoyMode::Ecds, plugin_config, upstream_port)
    }

    /// Starts Envoy with `envoy/ecds.yaml` watching an existing directory whose
    /// ECDS file ([`ECDS_FILE_NAME`]) someone else writes, e.g. the sync sidecar.
    /// The file should exist before the call (Envoy waits for its first config).
    /// [`Envoy::write_ecds`] still works (it writes into that directory).
    pub fn start_ecds_watching(ecds_dir: &Path, upstream_port: u16) -> Self {
        Self::start_with(EnvoyMode::Ecds, "", upstream_port, Some(ecds_dir))
    }

    /// Starts Envoy in `mode` on ports it binds itself (`bound_ports`).
    pub fn start(mode: EnvoyMode, plugin_config: &str, upstream_port: u16) -> Self {
        Self::start_with(mode, plugin_config, upstream_port, None)
    }

    /// The static bootstrap whose `tenant_guard_store` cluster points at
    /// `store_port` (a store sidecar, for `store.backend: cluster`).
    pub fn start_static_with_store(
        plugin_config: &str,
        upstream_port: u16,
        store_port: u16,
    ) -> Self {
        Self::start_ports(
            EnvoyMode::Static,
            plugin_config,
            upstream_port,
            None,
            Some(store_port),
        )
    }

    fn start_with(
        mode: EnvoyMode,
        plugin_config: &str,
        upstream_port: u16,
        external_ecds: Option<&Path>,
    ) -> Self {
        Self::start_ports(mode, plugin_config, upstream_port, external_ecds, None)
    }

    fn start_ports(
        mode: EnvoyMode,
        plugin_config: &str,
        upstream_port: u16,
        external_ecds: Option<&Path>,
        store_port: Option<u16>,
    ) -> Self {
        Self::try_start(
            mode,
            plugin_config,
            upstream_port,
            external_ecds,
            store_port,
        )
        .unwrap_or_else(|e| fail(e))
    }

    fn try_start(
        mode: EnvoyMode,
        plugin_config: &str,
        upstream_port: u16,
        external_ecds: Option<&Path>,
        store_port: Option<u16>,
    ) -> Result<Self, String> {
        let wasm = wasm_path();
        let envoy = envoy_binary();
        let dir = TempDir::new("envoy").map_err(|e| format!("temp dir: {e}"))?;
        let ecds_dir = match external_ecds {
            Some(path) => {
                if !path.is_dir() {
                    return Err(format!("ECDS directory {} does not exist", path.display()));
                }
                path.to_path_buf()
            }
            None => {
                let path = dir.path().join("ecds");
                fs::create_dir_all(&path).map_err(|e| format!("ecds dir: {e}"))?;
                path
            }
        };

        let mut values = Vec::from(ephemeral_port_values());
        values.extend([
            ("UPSTREAM_PORT", upstream_port.to_string()),
            (
                "STORE_PORT",
                store_port.unwrap_or(DEFAULT_STORE_PORT).to_string(),
            ),
        ]);
        let template_name = match mode {
            EnvoyMode::Static => {
                values.push(("WASM_PATH", wasm.display().to_string()));
                values.push((
                    "PLUGIN_CONFIG_JSON",
                    serde_json::to_string(plugin_config).map_err(|e| e.to_string())?,
                ));
                "static.yaml"
            }
            EnvoyMode::Ecds => {
                values.push(("ECDS_DIR", ecds_dir.display().to_string()));
                "ecds.yaml"
            }
        };
        let template_path = repo_root().join("envoy").join(template_name);
        let template = fs::read_to_string(&template_path)
            .map_err(|e| format!("cannot read {}: {e}", template_path.display()))?;
        let bootstrap = dir.path().join(template_name);
        fs::write(&bootstrap, render_template(&template, &values))
            .map_err(|e| format!("write bootstrap: {e}"))?;
        if mode == EnvoyMode::Ecds && external_ecds.is_none() {
            write_ecds_file(&ecds_dir, plugin_config, &wasm, "initial")?;
        }

        let log_path = dir.path().join("envoy.log");
        let stdout_path = dir.path().join("envoy.stdout");
        let admin_address_path = dir.path().join("admin.address");
        let stdout = fs::File::create(&stdout_path).map_err(|e| e.to_string())?;
        let stderr = stdout.try_clone().map_err(|e| e.to_string())?;
        let mut child = Command::new(&envoy)
            .arg("-c")
            .arg(&bootstrap)
            .args([
                "--concurrency",
                "2",
                "--disable-hot-restart",
                "--log-level",
                "info",
                "--admin-address-path",
            ])
            .arg(&admin_address_path)
            .arg("--log-path")
            .arg(&log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", envoy.display()))?;
        match wait_until_ready(&mut child, &admin_address_path, STARTUP_TIMEOUT) {
            Ok(ports) => Ok(Self {
                child,
                mode,
                admin_port: ports.admin,
                listener_port: ports.listener,
                wasm,
                log_path,
                stdout_path,
                ecds_dir,
                external_ecds: external_ecds.is_some(),
                _dir: dir,
            }),
            Err(e) => Err(format!(
                "{e}:\n{}\n{}",
                log_file_tail(&log_path, 60),
                log_file_tail(&stdout_path, 20)
            )),
        }
    }

    /// Which bootstrap this Envoy runs.
    pub fn mode(&self) -> EnvoyMode {
        self.mode
    }

    /// The directory Envoy watches for [`ECDS_FILE_NAME`] (ECDS bootstrap only):
    /// a fresh one owned by this Envoy, or the one given to
    /// [`Envoy::start_ecds_watching`].
    pub fn ecds_dir(&self) -> Option<&Path> {
        (self.mode == EnvoyMode::Ecds).then_some(self.ecds_dir.as_path())
    }

    /// The ECDS file Envoy watches (ECDS bootstrap only).
    pub fn ecds_file(&self) -> Option<PathBuf> {
        self.ecds_dir().map(|dir| dir.join(ECDS_FILE_NAME))
    }

    /// Whether the ECDS directory was supplied by the caller.
    pub fn watches_external_ecds_dir(&self) -> bool {
        self.external_ecds
    }

    /// The `version_info` of the ECDS resource Envoy has applied, unquoted
    /// (the sidecar's revision, e.g. `r3-1a2b3c4d5e6f`); `None` before the
    /// first one or on the static bootstrap.
    pub fn ecds_version(&self) -> Option<String> {
        let text = self.stat_text(ECDS_VERSION_STAT)?;
        let version = text.trim_matches('"');
        (!version.is_empty()).then(|| version.to_string())
    }

    /// Polls until Envoy has applied the ECDS resource with `version_info == version`.
    pub fn wait_for_ecds_version(&self, version: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.ecds_version().as_deref() == Some(version))
    }

    /// The HTTP listener port.
    pub fn port(&self) -> u16 {
        self.listener_port
    }

    /// The admin port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The Envoy process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A new keep-alive client connection to the listener.
    pub fn conn(&self) -> Conn {
        Conn::new(self.listener_port)
    }

    /// `GET path` through Envoy on a fresh connection.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        http::get(self.listener_port, path, headers)
    }

    /// A request through Envoy on a fresh connection.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        http::request(self.listener_port, method, path, headers, body)
    }

    /// `GET path` on the admin port.
    pub fn admin(&self, path: &str) -> Response {
        http::get(self.admin_port, path, &[])
    }

    /// Counters and gauges whose name matches the regex `filter` (`/stats?filter=`).
    pub fn stats(&self, filter: &str) -> Vec<(String, u64)> {
        let response = self.admin(&format!("/stats?filter={}", encode_query(filter)));
        assert_eq!(response.status, 200, "admin /stats: {}", response.text());
        counters(&response.text())
            .map(|(name, value)| (name.to_string(), value))
            .collect()
    }

    /// The raw text value of the stat named exactly `name` (e.g. `version_text`).
    pub fn stat_text(&self, name: &str) -> Option<String> {
        let filter = format!("^{}$", name.replace('.', "\\."));
        let response = self.admin(&format!("/stats?filter={}", encode_query(&filter)));
        response.text().lines().find_map(|line| {
            let (n, v) = line.split_once(": ")?;
            (n.trim() == name).then(|| v.trim().to_string())
        })
    }

    /// The value of the stat named exactly `name`, if it exists.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let filter = format!("^{}$", name.replace('.', "\\."));
        self.stats(&filter)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// The sum of all stats named `suffix` after a host-specific prefix (custom
    /// Wasm metrics get `wasmcustom.`), whatever labels follow it.
    pub fn stat_suffix_sum(&self, suffix: &str) -> u64 {
        self.stats(&suffix.replace('.', "\\."))
            .into_iter()
            .filter(|(n, _)| is_stat_named(n, suffix))
            .map(|(_, v)| v)
            .sum()
    }

    /// Polls [`Envoy::stat_suffix_sum`] until it reaches `expected` (the filter
    /// hands its counters to the host once a second per worker), then returns the
    /// last value read, which may exceed `expected` or, at the deadline, fall short.
    pub fn wait_for_stat_suffix_sum(&self, suffix: &str, expected: u64) -> u64 {
        let mut last = 0;
        crate::wait_until(Duration::from_secs(10), || {
            last = self.stat_suffix_sum(suffix);
            last >= expected
        });
        last
    }

    /// Replaces the ECDS resource file (atomically) with one carrying `plugin_config`.
    pub fn write_ecds(&self, plugin_config: &str, version_info: &str) {
        assert_eq!(
            self.mode,
            EnvoyMode::Ecds,
            "write_ecds needs the ECDS bootstrap"
        );
        write_ecds_file(&self.ecds_dir, plugin_config, &self.wasm, version_info)
            .unwrap_or_else(|e| fail(e));
    }

    /// The last `lines` lines of the Envoy log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_file_tail(&self.log_path, lines)
    }

    /// The whole Envoy log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// Renders the ECDS resource with the sidecar's renderer and writes it with the
/// sidecar's atomic write (temp + rename), exactly as the sidecar delivers it.
pub fn write_ecds_file(
    ecds_dir: &Path,
    plugin_config: &str,
    wasm: &Path,
    version_info: &str,
) -> Result<(), String> {
    let resource = render_ecds_resource(plugin_config, wasm, version_info)
        .map_err(|e| format!("render ECDS resource: {e}"))?;
    write_atomically(&ecds_dir.join(ECDS_FILE_NAME), resource.as_bytes())
        .map_err(|e| format!("write ECDS resource: {e}"))
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- Envoy log tail ({}) ----\n{}\n---- Envoy stdout/stderr ----\n{}\n----",
                self.log_path.display(),
                self.log_tail(80),
                log_file_tail(&self.stdout_path, 20)
            );
        }
    }
}

/// Whether stat `name` is the one named `suffix` after a host-specific prefix
/// (custom Wasm metrics get `wasmcustom.`), whatever labels follow it: the
/// filter's counters carry them after their base name
/// (`tenant_guard_allowed.tenant.acme`), and all of them count.
pub fn is_stat_named(name: &str, suffix: &str) -> bool {
    name.ends_with(suffix)
        || [".tenant.", ".reason."]
            .iter()
            .any(|label| name.contains(&format!("{suffix}{label}")))
}

/// The numeric stats of an admin `/stats` text body, as (name, value).
pub fn counters(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|line| {
        let (name, value) = line.split_once(": ")?;
        Some((name.trim(), value.trim().parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::{free_port, is_stat_named};

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let port = free_port();
            assert!(seen.insert(port), "port {port} handed out twice");
        }
    }

    #[test]
    fn stats_are_named_whatever_labels_follow() {
        for (name, suffix, expected) in [
            (
                "wasmcustom.tenant_guard_allowed",
                "tenant_guard_allowed",
                true,
            ),
            (
                "wasmcustom.tenant_guard_allowed.tenant.acme",
                "tenant_guard_allowed",
                true,
            ),
            (
                "wasmcustom.tenant_guard_rejected.reason.rate_limited.tenant._other_",
                "tenant_guard_rejected",
                true,
            ),
            (
                "wasmcustom.tenant_guard_allowed_without_limit",
                "tenant_guard_allowed",
                false,
            ),
            (
                "wasmcustom.tenant_guard_allowed_without_limit.tenant.acme",
                "tenant_guard_allowed",
                false,
            ),
            (
                "tenant_rate_limit.http_local_rate_limit.ok",
                "http_local_rate_limit.ok",
                true,
            ),
        ] {
            assert_eq!(is_stat_named(name, suffix), expected, "{name} ~ {suffix}");
        }
    }
}
