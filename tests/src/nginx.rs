//! A real nginx built with Kong's ngx_wasm_module (the Wasm engine inside Kong
//! 3.4–3.10) running the filter `.wasm`: renders an `nginx.conf` into a temp
//! directory (two workers, `wasm { module …; shm_kv * …; }`, one `proxy_wasm`
//! per location in front of a local upstream), starts nginx with `-p <tmp>`, polls
//! until it answers, and stops it (and its workers) on drop. The binary comes from
//! `TG_NGX_WASM_NGINX`; there is no default, because no such nginx ships with the
//! repository (ngx_wasm_module's own install docs say how to build one).

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::Duration;

use crate::artifacts::wasm_path;
use crate::envoy::free_port;
use crate::failure::fail;
use crate::http::{self, Conn, Response};
use crate::tempdir::TempDir;
use crate::wait::wait_until;

/// The variable naming the nginx binary built with ngx_wasm_module.
pub const NGINX_ENV: &str = "TG_NGX_WASM_NGINX";

/// How long nginx may take to answer (the workers compile the module at start-up).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// nginx reads a configuration token into a 4 KiB buffer: a longer quoted
/// `proxy_wasm` argument is a start-up error ("too long parameter").
pub const MAX_CONFIG_ARGUMENT: usize = 4000;

/// The filter's module name in `wasm {}` (the name Kong gives it too).
pub const MODULE: &str = "tenant_guard";

/// `$TG_NGX_WASM_NGINX`, or `None` when it is unset or empty.
pub fn nginx_binary() -> Option<PathBuf> {
    std::env::var_os(NGINX_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The binary, or `None` after printing the SKIPPED line for `suite` (once per
/// process however many tests ask, and straight to stdout so the test harness's
/// output capture does not swallow it).
pub fn nginx_or_skip(suite: &str) -> Option<PathBuf> {
    static SKIPPED: Once = Once::new();
    let binary = nginx_binary();
    if binary.is_none() {
        SKIPPED.call_once(|| {
            let line = format!(
                "SKIPPED {suite}: set {NGINX_ENV}=/path/to/nginx built with ngx_wasm_module to run the Kong-engine suite\n"
            );
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(line.as_bytes());
            let _ = stdout.flush();
        });
    }
    binary
}

/// One `server {}`: its locations, each with the filter config it runs.
#[derive(Debug, Clone, Default)]
pub struct Server {
    /// `(location prefix, plugin config JSON)`.
    pub locations: Vec<(String, String)>,
    /// `listen … reuseport`: the kernel spreads connections over both workers
    /// by hash, so a burst from many connections reaches both of them.
    pub reuseport: bool,
}

impl Server {
    /// A server whose `location /` runs `config`.
    pub fn root(config: &str) -> Self {
        Self {
            locations: vec![("/".to_string(), config.to_string())],
            reuseport: false,
        }
    }

    /// Sets `reuseport` on the listener.
    pub fn reuseport(mut self) -> Self {
        self.reuseport = true;
        self
    }
}

/// A running nginx master with its workers.
#[derive(Debug)]
pub struct Nginx {
    binary: PathBuf,
    child: Option<Child>,
    ports: Vec<u16>,
    error_log: PathBuf,
    conf: PathBuf,
    // Declared last: removed once nothing above needs its files.
    dir: TempDir,
}

/// Quotes `value` as one nginx configuration token (single quotes; nginx turns
/// `\\` and `\'` back into `\` and `'`).
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The effective user id (`/proc/self/status`), to decide whether nginx needs
/// a `user` directive: as root it would otherwise run workers as `nobody`,
/// who cannot write the temp directories created here.
fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Renders the whole `nginx.conf`.
fn render_conf(
    dir: &Path,
    wasm: &Path,
    servers: &[(u16, &Server)],
    upstream_port: u16,
) -> Result<String, String> {
    let tmp = dir.display();
    let mut conf = String::new();
    if running_as_root() {
        conf.push_str("user root;\n");
    }
    conf.push_str(&format!(
        "worker_processes 2;\ndaemon off;\nmaster_process on;\n\
         error_log {tmp}/error.log info;\npid {tmp}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         wasm {{\n    module {MODULE} {};\n    shm_kv * 4m;\n}}\n\
         http {{\n    access_log off;\n\
         \x20   client_body_temp_path {tmp}/client_body;\n    proxy_temp_path {tmp}/proxy;\n\
         \x20   fastcgi_temp_path {tmp}/fastcgi;\n    uwsgi_temp_path {tmp}/uwsgi;\n\
         \x20   scgi_temp_path {tmp}/scgi;\n",
        quote(&wasm.display().to_string())
    ));
    for (port, server) in servers {
        let reuseport = if server.reuseport { " reuseport" } else { "" };
        conf.push_str(&format!(
            "    server {{\n        listen 127.0.0.1:{port}{reuseport};\n"
        ));
        for (prefix, config) in &server.locations {
            if config.len() > MAX_CONFIG_ARGUMENT {
                return Err(format!(
                    "plugin config of {} bytes exceeds nginx's token limit ({MAX_CONFIG_ARGUMENT})",
                    config.len()
                ));
            }
            conf.push_str(&format!(
                "        location {prefix} {{\n\
                 \x20           proxy_wasm {MODULE} {};\n\
                 \x20           proxy_pass http://127.0.0.1:{upstream_port};\n\
                 \x20           add_header x-nginx-worker $pid always;\n\
                 \x20       }}\n",
                quote(config)
            ));
        }
        conf.push_str("    }\n");
    }
    conf.push_str("}\n");
    Ok(conf)
}

/// An HTTP probe with short timeouts (a worker that never accepts must not
/// block the start-up poll for the client's long I/O timeout): `true` once
/// something on `port` answers with an HTTP status line.
pub fn answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(2));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return false;
    }
    let probe = b"GET /__tg_probe HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n";
    if stream.write_all(probe).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

impl Nginx {
    /// Starts `binary` with one listener per server, all proxying to
    /// `upstream_port`, and waits until every listener answers. `Err` carries
    /// the error log when nginx exits or never answers.
    pub fn start(binary: &Path, servers: &[Server], upstream_port: u16) -> Result<Self, String> {
        let mut nginx = Self::spawn(binary, servers, upstream_port)?;
        let ports = nginx.ports.clone();
        let mut exited = None;
        let ready = wait_until(STARTUP_TIMEOUT, || {
            if let Some(status) = nginx.exit_status() {
                exited = Some(status);
                return true;
            }
            ports.iter().all(|port| answers(*port))
        });
        if let Some(status) = exited {
            return Err(format!(
                "nginx exited during start-up ({status}):\n{}",
                nginx.error_log_tail(40)
            ));
        }
        if !ready {
            return Err(format!(
                "nginx not answering within {STARTUP_TIMEOUT:?}:\n{}",
                nginx.error_log_tail(40)
            ));
        }
        Ok(nginx)
    }

    /// Starts a single server whose `location /` runs `config`; panics with the
    /// error log if it does not come up.
    pub fn start_one(binary: &Path, config: &str, upstream_port: u16) -> Self {
        Self::start(binary, &[Server::root(config)], upstream_port).unwrap_or_else(|e| fail(e))
    }

    /// Writes the configuration and starts the master without waiting for it.
    pub fn spawn(binary: &Path, servers: &[Server], upstream_port: u16) -> Result<Self, String> {
        let wasm = wasm_path();
        let dir = TempDir::new("nginx").map_err(|e| format!("temp dir: {e}"))?;
        let ports: Vec<u16> = servers.iter().map(|_| free_port()).collect();
        let listeners: Vec<(u16, &Server)> = ports.iter().copied().zip(servers).collect();
        let conf_text = render_conf(dir.path(), &wasm, &listeners, upstream_port)?;
        let conf = dir.path().join("nginx.conf");
        fs::write(&conf, conf_text).map_err(|e| format!("write nginx.conf: {e}"))?;
        let stderr_path = dir.path().join("stderr.log");
        let stderr = fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        Ok(Self {
            binary: binary.to_path_buf(),
            child: Some(child),
            ports,
            error_log: dir.path().join("error.log"),
            conf,
            dir,
        })
    }

    /// The port of the first server.
    pub fn port(&self) -> u16 {
        self.ports.first().copied().unwrap_or(0)
    }

    /// The ports of all servers, in the order given.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The rendered `nginx.conf`.
    pub fn conf_text(&self) -> String {
        fs::read_to_string(&self.conf).unwrap_or_default()
    }

    /// The master's exit status once it has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// A new keep-alive client connection to the first server.
    pub fn conn(&self) -> Conn {
        Conn::new(self.port())
    }

    /// `GET path` on a fresh connection to the first server.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        http::get(self.port(), path, headers)
    }

    /// A request on a fresh connection to the first server.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        http::request(self.port(), method, path, headers, body)
    }

    /// The whole error log so far (master and workers, `info` and above).
    pub fn error_log(&self) -> String {
        fs::read_to_string(&self.error_log).unwrap_or_default()
    }

    /// The last `lines` lines of the error log.
    pub fn error_log_tail(&self, lines: usize) -> String {
        let text = self.error_log();
        let all: Vec<&str> = text.lines().collect();
        all.get(all.len().saturating_sub(lines)..)
            .unwrap_or_default()
            .join("\n")
    }

    /// Error-log lines at `[error]` or worse (`[crit]`, `[alert]`, `[emerg]`).
    pub fn error_lines(&self) -> Vec<String> {
        self.error_log()
            .lines()
            .filter(|l| {
                ["[error]", "[crit]", "[alert]", "[emerg]"]
                    .iter()
                    .any(|s| l.contains(s))
            })
            .map(str::to_string)
            .collect()
    }

    /// Polls until `needle` occurs at least `count` times in the error log.
    pub fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.error_log().matches(needle).count() >= count
        })
    }

    /// Worker pids the master logged as started (`start worker process N`).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.error_log()
            .lines()
            .filter_map(|l| l.split("start worker process ").nth(1))
            .filter_map(|rest| rest.trim().parse().ok())
            .collect()
    }

    /// Graceful shutdown (`-s quit`): the workers finish their requests and run
    /// the filter's `on_done`, so everything the filter would log is in the
    /// error log once this returns. `None` if the master did not exit in time.
    pub fn quit(&mut self) -> Option<std::process::ExitStatus> {
        let _ = self.control("quit");
        let mut status = None;
        wait_until(Duration::from_secs(20), || {
            status = self.exit_status();
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    fn control(&self, signal: &str) -> std::io::Result<std::process::ExitStatus> {
        Command::new(&self.binary)
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(&self.conf)
            .args(["-s", signal])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    }

    fn signal(pid: u32, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let workers = self.worker_pids();
        if let Some(mut child) = self.child.take() {
            // `-s stop` (SIGTERM via the pid file) lets the master take its
            // workers down; a SIGKILLed master would orphan them on the port.
            let _ = self.control("stop");
            Self::signal(child.id(), "-TERM");
            let stopped = wait_until(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !stopped {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        for pid in workers {
            // Only a worker that outlived its master is still ours to end.
            if fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.starts_with("nginx: worker"))
            {
                Self::signal(pid, "-KILL");
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "---- nginx error log tail ({}) ----\n{}\n----",
                self.error_log.display(),
                self.error_log_tail(80)
            );
        }
    }
}
