//! What the benchmark binaries (`src/bin/filter-bench.rs`, `src/bin/load-report.rs`,
//! `src/bin/propagation-bench.rs`) share: command-line flag parsing; a minimal
//! keep-alive upstream with a fixed body; the bench Envoy ([`BenchEnvoy`]: a chosen
//! `--concurrency`, plain Envoy / the filter / the Lua + `local_ratelimit` baseline,
//! its start-up time, admin stats, CPU time and memory); Envoy's CPU time and
//! memory from `/proc`; median and min/max; the plugin configs and ES256 / RS256
//! tokens the scenarios use; and a few reporting helpers. Errors are `String`s,
//! printed by the binaries.

use std::ffi::OsStr;
use std::fmt::Display;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use serde_json::{json, Value};

use crate::artifacts::{envoy_binary, repo_root, wasm_path};
use crate::config::PluginConfig;
use crate::envoy::{counters, free_port, render_template};
use crate::http;
use crate::tempdir::TempDir;
use crate::wait::wait_until;

// ------------------------------------------------------------------ command line

/// The command-line arguments after the program name, read flag by flag.
#[derive(Debug)]
pub struct Flags {
    args: std::iter::Skip<std::env::Args>,
    current: String,
}

impl Flags {
    /// The next flag (e.g. `--requests`), or `None` at the end.
    pub fn next_flag(&mut self) -> Option<String> {
        self.current = self.args.next()?;
        Some(self.current.clone())
    }

    /// The value following the current flag as the path of an existing file.
    pub fn existing_file(&mut self) -> Result<PathBuf, String> {
        let path = self.value::<PathBuf>()?;
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{}: {} is not a file",
                self.current,
                path.display()
            ))
        }
    }

    /// The value following the current flag, parsed; errors name the flag.
    pub fn value<T>(&mut self) -> Result<T, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        let name = &self.current;
        self.args
            .next()
            .ok_or_else(|| format!("{name} needs a value"))?
            .parse()
            .map_err(|e| format!("{name}: {e}"))
    }
}

/// The file name of `path` for a table row (the whole path if it has none).
pub fn file_label(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// Parses the command line with `parse`; on an error (a bad flag, or the usage
/// text for `--help`) prints it to stderr and returns `None` (exit with code 2).
pub fn parse_command_line<T>(parse: impl FnOnce(&mut Flags) -> Result<T, String>) -> Option<T> {
    let mut flags = Flags {
        args: std::env::args().skip(1),
        current: String::new(),
    };
    parse(&mut flags)
        .map_err(|message| eprintln!("{message}"))
        .ok()
}

// ------------------------------------------------------------------ upstream

/// Starts a minimal keep-alive upstream on 127.0.0.1 that answers every request
/// with 200 and the JSON body `{"ok":true,"upstream":"<name>"}` in one write
/// (`TCP_NODELAY`, so no Nagle / delayed-ACK stalls). Request bodies are read and
/// dropped. Runs until the process exits; returns its port.
pub fn start_upstream(name: &str) -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind upstream: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("upstream addr: {e}"))?
        .port();
    let body = json!({"ok": true, "upstream": name}).to_string();
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body.as_bytes());
    let response: Arc<[u8]> = response.into();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let response = Arc::clone(&response);
            std::thread::spawn(move || {
                let _ = serve(stream, &response);
            });
        }
    });
    Ok(port)
}

fn serve(stream: TcpStream, response: &[u8]) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim_end().is_empty() {
            continue;
        }
        let mut content_length = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.trim().eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut request_body = vec![0; content_length];
        reader.read_exact(&mut request_body)?;
        writer.write_all(response)?;
    }
}

// ------------------------------------------------------------------ Envoy

/// How long a bench Envoy may take to become ready.
const BENCH_STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

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

impl BenchEnvoy {
    /// Renders `bootstrap`, starts Envoy with `--concurrency <concurrency>` (log
    /// level `warn`) and waits until its admin `/ready` answers 200; the error
    /// carries the log tail.
    pub fn start(
        bootstrap: &Bootstrap,
        concurrency: u32,
        upstream_port: u16,
    ) -> Result<Self, String> {
        let dir = TempDir::new("bench").map_err(|e| format!("temp dir: {e}"))?;
        let admin_port = free_port();
        let port = free_port();
        let mut values = vec![
            ("ADMIN_PORT", admin_port.to_string()),
            ("LISTENER_PORT", port.to_string()),
            ("UPSTREAM_PORT", upstream_port.to_string()),
        ];
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
        };
        let path = dir.path().join("bootstrap.yaml");
        fs::write(&path, render_template(&template, &values)).map_err(|e| e.to_string())?;
        let log = dir.path().join("envoy.log");
        let out = fs::File::create(dir.path().join("envoy.stdout")).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let started = Instant::now();
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&path)
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--disable-hot-restart", "--log-level", "warn", "--log-path"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("cannot start Envoy: {e}"))?;
        let mut envoy = Self {
            child,
            port,
            admin_port,
            startup: Duration::ZERO,
            _dir: dir,
        };
        let ready = wait_until(BENCH_STARTUP_TIMEOUT, || {
            matches!(envoy.child.try_wait(), Ok(None))
                && http::try_get(admin_port, "/ready").is_some_and(|r| r.status == 200)
        });
        envoy.startup = started.elapsed();
        if !ready {
            return Err(format!(
                "Envoy did not become ready:\n{}",
                log_tail(&log, 20)
            ));
        }
        Ok(envoy)
    }

    /// The HTTP listener port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Envoy process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// From spawning the process to admin `/ready`.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// The sum of all admin stats whose name ends with `suffix` (0 if the admin
    /// port does not answer).
    pub fn stat_suffix_sum(&self, suffix: &str) -> u64 {
        let Some(response) = http::try_get(self.admin_port, "/stats") else {
            return 0;
        };
        counters(&String::from_utf8_lossy(&response.body))
            .filter(|(name, _)| name.ends_with(suffix))
            .map(|(_, value)| value)
            .sum()
    }
}

/// The last `lines` lines of a log file (empty if it cannot be read).
fn log_tail(path: &Path, lines: usize) -> String {
    let log = fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

// ------------------------------------------------------------------ /proc

/// `getconf CLK_TCK` (the unit of `/proc/<pid>/stat` CPU times), 100 if unknown.
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// A process's CPU time so far, read two ways.
#[derive(Debug, Clone, Copy)]
pub struct CpuTime {
    /// `utime + stime` from `/proc/<pid>/stat`, in clock ticks.
    ticks: u64,
    /// The sum of the run time of all its threads (`/proc/<pid>/task/*/schedstat`), in ns.
    ns: u64,
}

impl CpuTime {
    /// Reads the CPU time of process `pid`.
    pub fn of(pid: u32) -> Result<Self, String> {
        Ok(Self {
            ticks: cpu_ticks(pid)?,
            ns: cpu_ns(pid),
        })
    }

    /// CPU µs per request from `before` to `self` over `requests` requests: from
    /// `/proc/<pid>/stat` (with `ticks_per_second`) and from schedstat.
    pub fn us_per_request_since(
        &self,
        before: &Self,
        ticks_per_second: u64,
        requests: f64,
    ) -> (f64, f64) {
        let ticks = self.ticks.saturating_sub(before.ticks);
        let ns = self.ns.saturating_sub(before.ns);
        (
            ticks as f64 * 1e6 / ticks_per_second as f64 / requests,
            ns as f64 / 1e3 / requests,
        )
    }
}

/// `utime + stime` of the process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("bad /proc/pid/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("bad /proc/{pid}/stat field {i}"))
    };
    // After `(comm)`: utime is field 14 and stime 15 of the whole line.
    Ok(field(11)? + field(12)?)
}

/// Sum of the run time (ns) of all threads of the process.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// VmRSS of the process in KiB (0 if unknown).
pub fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

// ------------------------------------------------------------------ statistics

/// The median (the mean of the middle two for an even count; 0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted.get(n / 2).copied().unwrap_or(0.0),
        n => {
            (sorted.get(n / 2 - 1).copied().unwrap_or(0.0)
                + sorted.get(n / 2).copied().unwrap_or(0.0))
                / 2.0
        }
    }
}

/// `(min, max)`; `(∞, 0)` when empty.
pub fn min_max(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
        (lo.min(*v), hi.max(*v))
    })
}

// ------------------------------------------------------------------ configs and tokens

/// The `iss` of the bench tokens.
pub const JWT_ISSUER: &str = "https://idp.bench.test/";
/// The `aud` of the bench tokens.
pub const JWT_AUDIENCE: &str = "bench-api";

/// [`PluginConfig::new`] (header tenants, UUIDv7 correlation ids) with the
/// default rate limit `(requests, per_seconds)`, or none.
pub fn filter_config(revision: &str, limit: Option<(u64, u64)>) -> Value {
    let mut config = PluginConfig::new(revision).value().clone();
    match limit {
        Some((requests, per_seconds)) => {
            config["defaults"]["rate_limit"] =
                json!({ "requests": requests, "per_seconds": per_seconds });
        }
        None => {
            if let Some(defaults) = config["defaults"].as_object_mut() {
                defaults.remove("rate_limit");
            }
        }
    }
    config
}

/// `config` with the tenant taken only from a JWT (`tenant_id` claim, required)
/// of [`JWT_ISSUER`] / [`JWT_AUDIENCE`] signed by `jwk`, with a verified-token
/// cache of `cache_entries`.
pub fn with_jwt(mut config: Value, jwk: Value, cache_entries: u64) -> Value {
    config["tenant"]["trust_header_without_jwt"] = json!(false);
    config["tenant"]["jwt"] = json!({
        "issuers": [{"iss": JWT_ISSUER, "audiences": [JWT_AUDIENCE], "jwks": {"keys": [jwk]}}],
        "tenant_claim": "tenant_id",
        "user_claim": "sub",
        "leeway_seconds": 60,
        "required": true,
        "cache_entries": cache_entries
    });
    config
}

/// A fresh signing key's public JWK and an `authorization` header value
/// (`Bearer <token>`) it signed.
#[derive(Debug, Clone)]
pub struct SignedToken {
    pub jwk: Value,
    pub authorization: String,
}

fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap_or_default()
}

/// Claims for `tenant`, subject `bench-user`, valid for two hours.
fn claims(tenant: &str) -> JWTClaims<Value> {
    Claims::with_custom_claims(
        json!({"tenant_id": tenant}),
        jwt_simple::prelude::Duration::from_hours(2),
    )
    .with_issuer(JWT_ISSUER)
    .with_audience(JWT_AUDIENCE)
    .with_subject("bench-user")
}

/// An ES256 key (`kid` `es-1`) and a token for `tenant`.
pub fn es256_token(tenant: &str) -> Result<SignedToken, String> {
    let key = ES256KeyPair::generate().with_key_id("es-1");
    let point = key.public_key().public_key().to_bytes_uncompressed();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "es-1", "alg": "ES256",
        "x": b64(point.get(1..33).unwrap_or_default()),
        "y": b64(point.get(33..65).unwrap_or_default())});
    let token = key.sign(claims(tenant)).map_err(|e| format!("sign: {e}"))?;
    Ok(SignedToken {
        jwk,
        authorization: format!("Bearer {token}"),
    })
}

/// A 2048-bit RS256 key (`kid` `rsa-1`) and a token for `tenant`.
pub fn rs256_token(tenant: &str) -> Result<SignedToken, String> {
    let key = RS256KeyPair::generate(2048)
        .map_err(|e| format!("RSA key: {e}"))?
        .with_key_id("rsa-1");
    let components = key.public_key().to_components();
    let jwk = json!({"kty": "RSA", "kid": "rsa-1", "alg": "RS256",
        "n": b64(&components.n), "e": b64(&components.e)});
    let token = key.sign(claims(tenant)).map_err(|e| format!("sign: {e}"))?;
    Ok(SignedToken {
        jwk,
        authorization: format!("Bearer {token}"),
    })
}

// ------------------------------------------------------------------ reporting

/// `"<n> bytes (<k> KiB)"`, or `"unknown (<error>)"`.
pub fn file_size(path: &Path) -> String {
    fs::metadata(path).map_or_else(
        |e| format!("unknown ({e})"),
        |m| format!("{} bytes ({:.0} KiB)", m.len(), m.len() as f64 / 1024.0),
    )
}

/// The trimmed stdout of `program args` run in the repository root (empty if it
/// cannot run), e.g. `envoy --version` or `git rev-parse --short HEAD`.
pub fn command_output(program: impl AsRef<OsStr>, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
