//! Rolling a filter build through the real sidecar binary, for
//! `tests/rolling_filter.rs`: builds of the filter that differ on the wire
//! (compile-time `TENANT_GUARD_BUILD_ID`, answered in `x-tenant-guard-build`),
//! the `tenant-guard-sidecar` binary run as a process (`run`; SIGTERM stops
//! it), a client loop that records every response while a build is rolled,
//! and small readers for what Envoy and the sidecar report about a roll.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::artifacts::{build_wasm_in, cargo_build, target_dir};
use crate::envoy::Envoy;
use crate::failure::fail;
use crate::http::{self, Conn};
use crate::sidecar::{database_url, TENANT_HEADER};
use crate::tempdir::TempDir;
use crate::wait::{wait_for, wait_until};

/// The response header carrying the filter's compile-time build id.
pub const BUILD_HEADER: &str = "x-tenant-guard-build";

pub use crate::envoy::{ECDS_FAIL_STAT, ECDS_RELOAD_STAT};
/// Client connections Envoy closed itself (a roll must not close any).
pub const ENVOY_CLOSED_CX_STAT: &str = "http.ingress.downstream_cx_destroy_local";

/// A release build of the filter with `TENANT_GUARD_BUILD_ID=<id>`, in
/// `<target>/rolling-<id>` so builds of different ids (and the main `.wasm`)
/// do not invalidate each other. Returns the `.wasm` path.
pub fn filter_build(id: &str) -> PathBuf {
    let subdir = format!("rolling-{}", id.to_ascii_lowercase());
    build_wasm_in(
        Some(&subdir),
        "tenant-guard-filter",
        None,
        &[("TENANT_GUARD_BUILD_ID", OsStr::new(id))],
    )
}

/// The `tenant-guard-sidecar` binary: `$TENANT_GUARD_SIDECAR_BIN`, else a
/// debug build (`cargo build -p tenant-guard-sidecar --bin tenant-guard-sidecar`).
pub fn sidecar_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("TENANT_GUARD_SIDECAR_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    cargo_build(
        &[
            "build",
            "-p",
            "tenant-guard-sidecar",
            "--bin",
            "tenant-guard-sidecar",
        ],
        &[],
        "the sidecar",
    );
    let path = target_dir().join("debug/tenant-guard-sidecar");
    assert!(
        path.is_file(),
        "cargo succeeded but {} is missing",
        path.display()
    );
    path
}

/// The last `lines` lines of `text`.
pub fn text_tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all.get(all.len().saturating_sub(lines)..)
        .unwrap_or_default()
        .join("\n")
}

/// One `tenant-guard-sidecar run` process delivering to an ECDS directory.
/// Killed on drop if still running.
#[derive(Debug)]
pub struct SidecarProcess {
    child: Child,
    admin_port: Option<u16>,
    stderr_path: PathBuf,
    _dir: TempDir,
}

impl SidecarProcess {
    /// Starts `bin run` on `schema` (of [`database_url`]) publishing `wasm`
    /// into `ecds_dir`, and waits (up to 20 s) for it to print its admin
    /// address. A process that exits first (e.g. it refuses its
    /// configuration) is returned too: see [`Self::exit_status`].
    pub fn spawn(bin: &Path, schema: &str, ecds_dir: &Path, wasm: &Path) -> Self {
        let dir = TempDir::new("sidecar")
            .unwrap_or_else(|e| fail(format!("temp dir for the sidecar log: {e}")));
        let stderr_path = dir.path().join("sidecar.stderr");
        let stderr = fs::File::create(&stderr_path)
            .unwrap_or_else(|e| fail(format!("sidecar log file: {e}")));
        let mut command = Command::new(bin);
        // The sidecar reads TG_* from the environment; only the flags below count.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TG_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .env("DATABASE_URL", database_url())
            .env("TG_SCHEMA", schema)
            .env("RUST_LOG", "info")
            .arg("run")
            .arg("--ecds-dir")
            .arg(ecds_dir)
            .arg("--wasm")
            .arg(wasm)
            .args([
                "--admin-addr",
                "127.0.0.1:0",
                "--debounce",
                "10ms",
                "--shutdown-grace",
                "5s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| fail(format!("cannot start {}: {e}", bin.display())));
        let (port_tx, port_rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                // Drained to the end so the sidecar never writes into a closed pipe.
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let port = line
                        .strip_prefix("admin listening on http://")
                        .and_then(|addr| addr.rsplit(':').next())
                        .and_then(|port| port.trim().parse::<u16>().ok());
                    if let Some(port) = port {
                        let _ = port_tx.send(port);
                    }
                }
            });
        }
        // Disconnected (stdout closed without the line) means the process ended.
        let admin_port = port_rx.recv_timeout(Duration::from_secs(20)).ok();
        Self {
            child,
            admin_port,
            stderr_path,
            _dir: dir,
        }
    }

    /// The admin port (`None`: the process exited before listening).
    pub fn admin_port(&self) -> Option<u16> {
        self.admin_port
    }

    /// The exit status, once the process has ended.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Polls `/ready` until it answers 200; false on timeout or if the process exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        let Some(port) = self.admin_port else {
            return false;
        };
        let mut exited = false;
        let ready = wait_until(timeout, || {
            if self.exit_status().is_some() {
                exited = true;
                return true;
            }
            http::try_get(port, "/ready").is_some_and(|r| r.status == 200)
        });
        ready && !exited
    }

    /// The `/ready` status code (`None` when the admin API does not answer).
    pub fn ready_status(&self) -> Option<u16> {
        http::try_get(self.admin_port?, "/ready").map(|r| r.status)
    }

    /// The value of the sample named exactly `name` (labels included) in `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = http::try_get(self.admin_port?, "/metrics")?.text();
        text.lines().find_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            (sample == name).then(|| value.parse().ok()).flatten()
        })
    }

    /// SIGTERM, then waits up to `timeout` for the process to exit.
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exit_status() {
            return status;
        }
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "cannot send SIGTERM to the sidecar"
        );
        let status = wait_for(timeout, || self.exit_status());
        status.unwrap_or_else(|| {
            fail(format!(
                "the sidecar did not stop within {timeout:?} of SIGTERM:\n{}",
                self.stderr_tail(20)
            ))
        })
    }

    /// The last `lines` lines of its stderr (its log).
    pub fn stderr_tail(&self, lines: usize) -> String {
        text_tail(
            &fs::read_to_string(&self.stderr_path).unwrap_or_default(),
            lines,
        )
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        if self.exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- sidecar log tail ----\n{}\n----", self.stderr_tail(40));
        }
    }
}

/// How a client of the loop talks to Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// A new TCP connection for every request (never retried).
    Fresh,
    /// One keep-alive connection for the whole run.
    KeepAlive,
}

/// What one request of the loop got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The status, `None` on a transport error.
    pub status: Option<u16>,
    /// The `x-tenant-guard-build` value.
    pub build: Option<String>,
    /// The transport error, if any.
    pub error: Option<String>,
}

impl Sample {
    /// A 200 carrying one of `builds`.
    pub fn is_ok_with(&self, builds: &[&str]) -> bool {
        self.status == Some(200) && self.build.as_deref().is_some_and(|b| builds.contains(&b))
    }
}

type Log = Arc<Mutex<Vec<Sample>>>;

/// Clients sending `GET /e2e` as one tenant continuously (one per [`ClientKind`]),
/// recording every response, until stopped.
#[derive(Debug)]
pub struct ClientLoop {
    stop: Arc<AtomicBool>,
    logs: Vec<(ClientKind, Log)>,
    threads: Vec<JoinHandle<()>>,
}

/// Pause between two requests of one client: pacing, so the loop does not
/// starve Envoy and the sidecar of the shared cores (never synchronisation).
const PACE: Duration = Duration::from_millis(2);

impl ClientLoop {
    /// Starts the clients against Envoy's listener `port`.
    pub fn start(port: u16, tenant: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut logs = Vec::new();
        let mut threads = Vec::new();
        for kind in [ClientKind::Fresh, ClientKind::KeepAlive] {
            let log: Log = Arc::default();
            let (stop, sink, tenant) = (Arc::clone(&stop), Arc::clone(&log), tenant.to_owned());
            threads.push(std::thread::spawn(move || {
                let mut kept = Conn::new(port);
                while !stop.load(Ordering::SeqCst) {
                    let headers = [(TENANT_HEADER, tenant.as_str())];
                    let result = match kind {
                        ClientKind::Fresh => Conn::new(port).request("GET", "/e2e", &headers, b""),
                        ClientKind::KeepAlive => kept.request("GET", "/e2e", &headers, b""),
                    };
                    let sample = match result {
                        Ok(response) => Sample {
                            status: Some(response.status),
                            build: response.header(BUILD_HEADER).map(str::to_owned),
                            error: None,
                        },
                        Err(error) => Sample {
                            status: None,
                            build: None,
                            error: Some(error.to_string()),
                        },
                    };
                    if let Ok(mut log) = sink.lock() {
                        log.push(sample);
                    }
                    std::thread::sleep(PACE);
                }
            }));
            logs.push((kind, log));
        }
        Self {
            stop,
            logs,
            threads,
        }
    }

    /// A copy of what `kind` has recorded so far.
    pub fn samples(&self, kind: ClientKind) -> Vec<Sample> {
        self.logs
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, log)| log.lock().ok().map(|l| l.clone()))
            .unwrap_or_default()
    }

    /// How many requests `kind` has made so far.
    pub fn count(&self, kind: ClientKind) -> usize {
        self.logs
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, log)| log.lock().ok().map(|l| l.len()))
            .unwrap_or_default()
    }

    /// Whether the newest response of every client carries `build`.
    pub fn all_latest_are(&self, build: &str) -> bool {
        [ClientKind::Fresh, ClientKind::KeepAlive]
            .iter()
            .all(|&kind| {
                self.logs
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .and_then(|(_, log)| {
                        log.lock()
                            .ok()
                            .and_then(|l| l.last().map(|s| s.build.as_deref() == Some(build)))
                    })
                    .unwrap_or(false)
            })
    }

    /// Stops the clients and waits for them (as on drop).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The `.wasm` the ECDS file references (`vm_config.code.local.filename`).
pub fn ecds_module(ecds_file: &Path) -> Option<PathBuf> {
    let text = fs::read_to_string(ecds_file).ok()?;
    let resource: serde_json::Value = serde_json::from_str(&text).ok()?;
    resource
        .pointer("/resources/0/typed_config/config/vm_config/code/local/filename")
        .and_then(serde_json::Value::as_str)
        .map(PathBuf::from)
}

/// Envoy's uptime in seconds (admin `/server_info`, `uptime_all_epochs`).
pub fn envoy_uptime(envoy: &Envoy) -> Option<u64> {
    let info = http::try_get(envoy.admin_port(), "/server_info")?;
    let value: serde_json::Value = serde_json::from_slice(&info.body).ok()?;
    value
        .get("uptime_all_epochs")?
        .as_str()?
        .trim_end_matches('s')
        .parse()
        .ok()
}

/// A counter of Envoy, 0 while it does not exist yet.
pub fn envoy_counter(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(name).unwrap_or(0)
}
