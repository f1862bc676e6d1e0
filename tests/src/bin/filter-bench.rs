//! Filter cost benchmark: Envoy CPU time per request and client-side latency for
//! each filter feature, as a ratio against plain Envoy (no filter) in the same run.
//!
//! ```text
//! cargo run --release -p tenant-guard-e2e --bin filter-bench -- [--requests N] [--connections C] [--rounds R]
//! ```
//!
//! One Envoy (`--concurrency 1`, so one worker does all the work) per scenario,
//! rendered from `envoy/static.yaml` (for plain Envoy with the Wasm filter block
//! removed), in front of an in-process upstream that answers a small JSON body.
//! All Envoys are started and warmed up first; then N requests per scenario
//! (default 10000) are sent in R interleaved rounds (default 5, rotating order,
//! so noise from other processes on a shared machine hits every scenario alike)
//! over C keep-alive connections (default 1). Envoy's CPU time is
//! `utime + stime` from `/proc/<pid>/stat` (clock ticks) around each round,
//! cross-checked with the nanosecond run time of all its threads
//! (`/proc/<pid>/task/*/schedstat`). The table shows the median over rounds
//! for `/proc/<pid>/stat` and the minimum over rounds for schedstat (interference
//! from other processes only ever adds CPU time, so the minimum is the least
//! disturbed estimate).
//! Latency p50/p99 is measured by the client over all requests.
//!
//! Scenarios (each adds to the previous ones):
//! - plain Envoy;
//! - correlation id + header tenant, no limit;
//! - rate limit;
//! - JWT ES256 / RS256 with the verified-token cache;
//! - JWT cold (`cache_entries: 0`);
//! - idempotency replay (same key, same request; without a body it is answered
//!   from the request headers, with a body after the body was read, which resets
//!   the upstream request Envoy had started).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use serde_json::{json, Value};
use tenant_guard_e2e::config::PluginConfig;
use tenant_guard_e2e::envoy::{free_port, render_template};
use tenant_guard_e2e::tempdir::TempDir;
use tenant_guard_e2e::{envoy_binary, http, repo_root, wait_until, wasm_path, Conn};

const TENANT: &str = "x-tenant-id";
const WARMUP: usize = 200;
const ISS: &str = "https://idp.bench.test/";
const AUD: &str = "bench-api";

struct Args {
    requests: usize,
    connections: usize,
    rounds: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        requests: 10_000,
        connections: 1,
        rounds: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<usize, String> {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))?
                .parse()
                .map_err(|e| format!("{name}: {e}"))
        };
        match flag.as_str() {
            "--requests" => args.requests = value("--requests")?.max(100),
            "--connections" => args.connections = value("--connections")?.clamp(1, 64),
            "--rounds" => args.rounds = value("--rounds")?.clamp(1, 100),
            "-h" | "--help" => return Err(
                "usage: filter-bench [--requests N (default 10000)] [--connections C (default 1)] [--rounds R (default 5)]"
                    .to_owned(),
            ),
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    Ok(args)
}

// ------------------------------------------------------------------ Envoy

/// A bench Envoy: `--concurrency 1`, killed on drop.
struct BenchEnvoy {
    child: Child,
    port: u16,
    log: PathBuf,
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
    out.extend(&lines[..start]);
    out.extend(&lines[end..]);
    Ok(out.join("\n") + "\n")
}

fn start_envoy(plugin_config: Option<&str>, upstream_port: u16) -> Result<BenchEnvoy, String> {
    let dir = TempDir::new("bench").map_err(|e| format!("temp dir: {e}"))?;
    let template_path = repo_root().join("envoy/static.yaml");
    let template = fs::read_to_string(&template_path)
        .map_err(|e| format!("cannot read {}: {e}", template_path.display()))?;
    let admin_port = free_port();
    let port = free_port();
    let mut values = vec![
        ("ADMIN_PORT", admin_port.to_string()),
        ("LISTENER_PORT", port.to_string()),
        ("UPSTREAM_PORT", upstream_port.to_string()),
    ];
    let template = match plugin_config {
        Some(config) => {
            values.push(("WASM_PATH", wasm_path().display().to_string()));
            values.push((
                "PLUGIN_CONFIG_JSON",
                serde_json::to_string(config).map_err(|e| e.to_string())?,
            ));
            template
        }
        None => without_filter(&template)?,
    };
    let bootstrap = dir.path().join("bootstrap.yaml");
    fs::write(&bootstrap, render_template(&template, &values)).map_err(|e| e.to_string())?;
    let log = dir.path().join("envoy.log");
    let out = fs::File::create(dir.path().join("envoy.stdout")).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new(envoy_binary())
        .arg("-c")
        .arg(&bootstrap)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warn",
            "--log-path",
        ])
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| format!("cannot start Envoy: {e}"))?;
    let mut envoy = BenchEnvoy {
        child,
        port,
        log,
        _dir: dir,
    };
    let ready = wait_until(Duration::from_secs(60), || {
        matches!(envoy.child.try_wait(), Ok(None))
            && http::try_get(admin_port, "/ready").is_some_and(|r| r.status == 200)
    });
    if !ready {
        let log = fs::read_to_string(&envoy.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let _ = envoy.child.kill();
        return Err(format!(
            "Envoy did not become ready:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    Ok(envoy)
}

// ------------------------------------------------------------------ upstream

/// A minimal keep-alive upstream answering every request with a small JSON body
/// in one write (`TCP_NODELAY`, so no Nagle / delayed-ACK stalls). Runs until
/// the process exits.
fn start_upstream() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind upstream: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("upstream addr: {e}"))?
        .port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = serve(stream);
            });
        }
    });
    Ok(port)
}

fn serve(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let body = br#"{"ok":true,"upstream":"filter-bench"}"#;
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body);
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
        writer.write_all(&response)?;
    }
}

// ------------------------------------------------------------------ CPU time

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// `utime + stime` of the process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
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

// ------------------------------------------------------------------ scenarios

#[derive(Clone)]
struct Request {
    method: &'static str,
    path: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Responses must carry `idempotent-replayed: true`.
    replay: bool,
}

struct Scenario {
    name: String,
    /// `None`: plain Envoy without the filter.
    config: Option<Value>,
    request: Request,
    /// Sent once before the warm-up (e.g. the request whose response is replayed).
    prime: Option<Request>,
}

struct Measurement {
    name: String,
    requests: usize,
    cpu_us_stat: f64,
    cpu_us_ns: f64,
    p50_us: f64,
    p99_us: f64,
    errors: usize,
    first_error: Option<String>,
    wall: Duration,
}

fn get(headers: &[(&str, &str)]) -> Request {
    Request {
        method: "GET",
        path: "/bench",
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: Vec::new(),
        replay: false,
    }
}

fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap_or_default()
}

fn base_config(revision: &str, rate_limit: bool) -> Value {
    let mut config = PluginConfig::new(revision)
        .default_limit(1_000_000_000, 60)
        .value()
        .clone();
    if !rate_limit {
        if let Some(defaults) = config["defaults"].as_object_mut() {
            defaults.remove("rate_limit");
        }
    }
    config
}

fn jwt_config(jwk: Value, cache_entries: u64) -> Value {
    let mut config = base_config("bench-jwt", true);
    config["tenant"]["trust_header_without_jwt"] = json!(false);
    config["tenant"]["jwt"] = json!({
        "issuers": [{"iss": ISS, "audiences": [AUD], "jwks": {"keys": [jwk]}}],
        "tenant_claim": "tenant_id",
        "user_claim": "sub",
        "leeway_seconds": 60,
        "required": true,
        "cache_entries": cache_entries
    });
    config
}

fn claims() -> JWTClaims<Value> {
    Claims::with_custom_claims(
        json!({"tenant_id": "acme"}),
        jwt_simple::prelude::Duration::from_hours(2),
    )
    .with_issuer(ISS)
    .with_audience(AUD)
    .with_subject("bench-user")
}

fn scenarios() -> Result<Vec<Scenario>, String> {
    let es = ES256KeyPair::generate().with_key_id("es-1");
    let rsa = RS256KeyPair::generate(2048)
        .map_err(|e| format!("RSA key: {e}"))?
        .with_key_id("rsa-1");
    let point = es.public_key().public_key().to_bytes_uncompressed();
    let es_jwk = json!({"kty": "EC", "crv": "P-256", "kid": "es-1", "alg": "ES256",
        "x": b64(point.get(1..33).unwrap_or_default()),
        "y": b64(point.get(33..65).unwrap_or_default())});
    let components = rsa.public_key().to_components();
    let rsa_jwk = json!({"kty": "RSA", "kid": "rsa-1", "alg": "RS256",
        "n": b64(&components.n), "e": b64(&components.e)});
    let es_token = format!(
        "Bearer {}",
        es.sign(claims()).map_err(|e| format!("sign: {e}"))?
    );
    let rsa_token = format!(
        "Bearer {}",
        rsa.sign(claims()).map_err(|e| format!("sign: {e}"))?
    );

    let mut idempotent = base_config("bench-idem", true);
    idempotent["defaults"]["idempotency"] = json!({
        "methods": ["POST"], "required": true, "ttl_seconds": 3600,
        "max_body_bytes": 65536, "in_flight_timeout_seconds": 60
    });
    let replay = |key: &str, body: &[u8]| Request {
        method: "POST",
        path: "/bench",
        headers: vec![
            (TENANT.to_string(), "acme".to_string()),
            ("idempotency-key".to_string(), format!("\"{key}\"")),
        ],
        body: body.to_vec(),
        replay: true,
    };
    let prime = |request: &Request| Request {
        replay: false,
        ..request.clone()
    };
    let replay_empty = replay("bench-empty", b"");
    let replay_body = replay("bench-body", br#"{"order":"bench","qty":1}"#);

    let tenant = [(TENANT, "acme")];
    Ok(vec![
        Scenario {
            name: "plain Envoy (no filter)".into(),
            config: None,
            request: get(&tenant),
            prime: None,
        },
        Scenario {
            name: "correlation + tenant header, no limit".into(),
            config: Some(base_config("bench-corr", false)),
            request: get(&tenant),
            prime: None,
        },
        Scenario {
            name: "+ rate limit".into(),
            config: Some(base_config("bench-rl", true)),
            request: get(&tenant),
            prime: None,
        },
        Scenario {
            name: "+ JWT ES256, cached".into(),
            config: Some(jwt_config(es_jwk.clone(), 1024)),
            request: get(&[("authorization", &es_token)]),
            prime: None,
        },
        Scenario {
            name: "+ JWT RS256, cached".into(),
            config: Some(jwt_config(rsa_jwk.clone(), 1024)),
            request: get(&[("authorization", &rsa_token)]),
            prime: None,
        },
        Scenario {
            name: "+ JWT ES256, cold (cache 0)".into(),
            config: Some(jwt_config(es_jwk, 0)),
            request: get(&[("authorization", &es_token)]),
            prime: None,
        },
        Scenario {
            name: "+ JWT RS256, cold (cache 0)".into(),
            config: Some(jwt_config(rsa_jwk, 0)),
            request: get(&[("authorization", &rsa_token)]),
            prime: None,
        },
        Scenario {
            name: "+ idempotency replay, POST no body".into(),
            config: Some(idempotent.clone()),
            prime: Some(prime(&replay_empty)),
            request: replay_empty,
        },
        Scenario {
            name: "+ idempotency replay, POST with body".into(),
            config: Some(idempotent),
            prime: Some(prime(&replay_body)),
            request: replay_body,
        },
    ])
}

/// Sends one request; `Err` describes a failed or unexpected response.
fn send(conn: &mut Conn, request: &Request) -> Result<(), String> {
    let headers: Vec<(&str, &str)> = request
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let response = conn
        .request(request.method, request.path, &headers, &request.body)
        .map_err(|e| e.to_string())?;
    let replayed = response.header("idempotent-replayed") == Some("true");
    if response.status != 200 || replayed != request.replay {
        return Err(format!(
            "status {} replayed {replayed}: {}",
            response.status,
            response.text().chars().take(200).collect::<String>()
        ));
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted
        .get(index.min(sorted.len() - 1))
        .map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// One scenario's Envoy with its warmed-up client connections.
struct Prepared {
    envoy: BenchEnvoy,
    conns: Vec<Conn>,
    /// Per-round CPU µs/request from `/proc/<pid>/stat` and from schedstat.
    cpu_stat: Vec<f64>,
    cpu_ns: Vec<f64>,
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
    wall: Duration,
}

fn prepare(scenario: &Scenario, upstream_port: u16, args: &Args) -> Result<Prepared, String> {
    let config = scenario.config.as_ref().map(Value::to_string);
    let envoy = start_envoy(config.as_deref(), upstream_port)?;
    if let Some(prime) = &scenario.prime {
        send(&mut Conn::new(envoy.port), prime).map_err(|e| format!("priming: {e}"))?;
    }
    let mut conns: Vec<Conn> = (0..args.connections)
        .map(|_| Conn::new(envoy.port))
        .collect();
    for conn in &mut conns {
        for _ in 0..WARMUP.div_ceil(args.connections) {
            send(conn, &scenario.request).map_err(|e| format!("warm-up: {e}"))?;
        }
    }
    Ok(Prepared {
        envoy,
        conns,
        cpu_stat: Vec::new(),
        cpu_ns: Vec::new(),
        latencies: Vec::with_capacity(args.requests),
        errors: 0,
        first_error: None,
        wall: Duration::ZERO,
    })
}

/// Sends `requests` requests over the prepared connections and records Envoy's CPU time.
fn measure_round(
    scenario: &Scenario,
    prepared: &mut Prepared,
    requests: usize,
    ticks_per_second: u64,
) -> Result<(), String> {
    let pid = prepared.envoy.child.id();
    let per_connection = requests.div_ceil(prepared.conns.len());
    let ticks_before = cpu_ticks(pid)?;
    let ns_before = cpu_ns(pid);
    let started = Instant::now();
    let results: Vec<(Vec<Duration>, usize, Option<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = prepared
            .conns
            .iter_mut()
            .map(|conn| {
                let request = &scenario.request;
                scope.spawn(move || {
                    let mut latencies = Vec::with_capacity(per_connection);
                    let mut errors = 0;
                    let mut first_error = None;
                    for _ in 0..per_connection {
                        let t = Instant::now();
                        let result = send(conn, request);
                        latencies.push(t.elapsed());
                        if let Err(e) = result {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                    (latencies, errors, first_error)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (Vec::new(), 1, Some("client thread panicked".into())))
            })
            .collect()
    });
    prepared.wall += started.elapsed();
    let ticks = cpu_ticks(pid)? - ticks_before;
    let ns = cpu_ns(pid).saturating_sub(ns_before);
    let mut sent = 0;
    for (latencies, errors, first_error) in results {
        sent += latencies.len();
        prepared.latencies.extend(latencies);
        prepared.errors += errors;
        if prepared.first_error.is_none() {
            prepared.first_error = first_error;
        }
    }
    let sent = sent.max(1) as f64;
    prepared
        .cpu_stat
        .push(ticks as f64 * 1e6 / ticks_per_second as f64 / sent);
    prepared.cpu_ns.push(ns as f64 / 1e3 / sent);
    Ok(())
}

fn median(values: &[f64]) -> f64 {
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

fn summarize(scenario: &Scenario, mut prepared: Prepared) -> Measurement {
    prepared.latencies.sort_unstable();
    Measurement {
        name: scenario.name.clone(),
        requests: prepared.latencies.len(),
        cpu_us_stat: median(&prepared.cpu_stat),
        cpu_us_ns: prepared
            .cpu_ns
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min),
        p50_us: percentile(&prepared.latencies, 0.50),
        p99_us: percentile(&prepared.latencies, 0.99),
        errors: prepared.errors,
        first_error: prepared.first_error,
        wall: prepared.wall,
    }
}

fn wasm_size(path: &Path) -> String {
    fs::metadata(path).map_or_else(
        |e| format!("unknown ({e})"),
        |m| format!("{} bytes ({:.0} KiB)", m.len(), m.len() as f64 / 1024.0),
    )
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let total = Instant::now();
    println!("filter-bench: building the filter if needed...");
    let wasm = wasm_path();
    let envoy = envoy_binary();
    let version = Command::new(&envoy)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let ticks_per_second = clock_ticks_per_second();
    println!("wasm: {} — {}", wasm.display(), wasm_size(&wasm));
    println!(
        "envoy: {} {}",
        envoy.display(),
        version.lines().last().unwrap_or("")
    );
    println!(
        "{} requests per scenario ({} interleaved rounds) over {} keep-alive connection(s) after \
         {WARMUP} warm-up requests; one Envoy --concurrency 1 per scenario; CPU = Envoy utime+stime \
         ({ticks_per_second} ticks/s) per request, median over rounds; schedstat = ns run \
         time of all Envoy threads, min over rounds (least disturbed by other load)\n",
        args.requests, args.rounds, args.connections
    );
    let scenarios = match scenarios() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let upstream = match start_upstream() {
        Ok(port) => port,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // One Envoy per scenario, all started up front; then ROUNDS interleaved
    // rounds (rotating order) so that background noise on a shared machine
    // hits every scenario alike. CPU per request is the median over rounds.
    let mut prepared = Vec::with_capacity(scenarios.len());
    for scenario in &scenarios {
        match prepare(scenario, upstream, &args) {
            Ok(p) => prepared.push(p),
            Err(e) => {
                eprintln!("scenario `{}` failed to start: {e}", scenario.name);
                return ExitCode::FAILURE;
            }
        }
    }
    let per_round = args.requests.div_ceil(args.rounds);
    for round in 0..args.rounds {
        for offset in 0..scenarios.len() {
            let i = (round + offset) % scenarios.len();
            let (Some(scenario), Some(p)) = (scenarios.get(i), prepared.get_mut(i)) else {
                continue;
            };
            if let Err(e) = measure_round(scenario, p, per_round, ticks_per_second) {
                eprintln!("scenario `{}` failed: {e}", scenario.name);
                return ExitCode::FAILURE;
            }
        }
        println!("  round {}/{} done", round + 1, args.rounds);
    }
    let results: Vec<Measurement> = scenarios
        .iter()
        .zip(prepared)
        .map(|(scenario, p)| summarize(scenario, p))
        .collect();
    let Some(plain) = results.first() else {
        return ExitCode::FAILURE;
    };
    let (base_stat, base_ns, base_p50) = (plain.cpu_us_stat, plain.cpu_us_ns, plain.p50_us);
    println!();
    println!(
        "| scenario | requests | Envoy CPU µs/req | × plain | filter µs/req | CPU µs/req (schedstat, min of rounds) | × plain | filter µs/req (min) | p50 µs | p99 µs | p50 × plain | req/s | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ratio = |v: f64, base: f64| if base > 0.0 { v / base } else { 0.0 };
    for m in &results {
        println!(
            "| {} | {} | {:.1} | {:.2} | {:+.1} | {:.1} | {:.2} | {:+.1} | {:.0} | {:.0} | {:.2} | {:.0} | {} |",
            m.name,
            m.requests,
            m.cpu_us_stat,
            ratio(m.cpu_us_stat, base_stat),
            m.cpu_us_stat - base_stat,
            m.cpu_us_ns,
            ratio(m.cpu_us_ns, base_ns),
            m.cpu_us_ns - base_ns,
            m.p50_us,
            m.p99_us,
            ratio(m.p50_us, base_p50),
            m.requests as f64 / m.wall.as_secs_f64().max(1e-9),
            m.errors
        );
    }
    println!("\nwasm size: {}", wasm_size(&wasm));
    println!("total bench time: {:.1} s", total.elapsed().as_secs_f64());
    let failed: Vec<&Measurement> = results.iter().filter(|m| m.errors > 0).collect();
    for m in &failed {
        eprintln!(
            "scenario `{}`: {} unexpected responses, first: {}",
            m.name,
            m.errors,
            m.first_error.as_deref().unwrap_or("?")
        );
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
