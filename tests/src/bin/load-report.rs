//! Load and exactness report (issue 6, item 3): plain Envoy vs Envoy + the
//! tenant-guard filter (per feature set) vs Envoy's native `local_ratelimit` +
//! a Lua correlation-id filter, under `wrk` load on loopback; rate-limit
//! exactness under the same load; and the cost of a 10 000-tenant config.
//!
//! ```text
//! sudo apt-get install -y wrk        # Debian's wrk
//! cargo run --release -p tenant-guard-e2e --bin load-report -- \
//!     [--duration S (5)] [--connections C (16)] [--reps R (3)] [--tenants T (10000)] \
//!     [--exact-limit N (2000)] [--skip-10k] [--only-c1] [--compare-wasm FILE]...
//! ```
//!
//! Every configuration is served by its own Envoy (one set with
//! `--concurrency 1`, one with `--concurrency 2`), all started and warmed up
//! first, in front of one in-process keep-alive upstream that answers a fixed
//! 36-byte JSON body (so every scenario is a real proxied request). Then R
//! repetitions: each repetition runs `wrk -t1 -cC -dS --latency` once against
//! every Envoy, in a rotating order, so that noise from other processes on a
//! shared machine is spread over all scenarios. Per run: req/s and p50/p99
//! from wrk; Envoy CPU = `utime + stime` delta of `/proc/<pid>/stat` over the
//! run ÷ requests wrk completed (cross-checked with the per-thread
//! `schedstat` ns); VmRSS after the run. The table shows medians over the
//! repetitions (and the CPU range), and ratios to plain Envoy with the same
//! worker count.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tenant_guard_core::config;
use tenant_guard_core::engine::{self, HostInputs, RequestView};
use tenant_guard_core::store::MemoryStore;
use tenant_guard_e2e::bench::{
    self, clock_ticks_per_second, command_output, file_label, file_size, filter_config, median,
    min_max, rss_kib, with_jwt, BenchEnvoy, Bootstrap, CpuTime, Flags,
};
use tenant_guard_e2e::sidecar::ms;
use tenant_guard_e2e::tempdir::TempDir;
use tenant_guard_e2e::{envoy_binary, probe_wasm_path, wait_until, wasm_path};
use tenant_guard_sidecar::settings::{render, Scope, SettingRow, Validator};

const TENANT: &str = "acme";
const PATH: &str = "/bench";
const WARMUP_SECONDS: u64 = 1;

type Res<T> = Result<T, String>;

struct Args {
    duration: u64,
    connections: u32,
    reps: usize,
    tenants: usize,
    exact_limit: u64,
    skip_10k: bool,
    only_c1: bool,
    /// Other `.wasm` builds, each measured with the "+ rate limit" config.
    compare_wasm: Vec<PathBuf>,
}

fn parse_args(flags: &mut Flags) -> Res<Args> {
    let mut args = Args {
        duration: 5,
        connections: 16,
        reps: 3,
        tenants: 10_000,
        exact_limit: 2000,
        skip_10k: false,
        only_c1: false,
        compare_wasm: Vec::new(),
    };
    while let Some(flag) = flags.next_flag() {
        let mut value = || flags.value::<u64>();
        match flag.as_str() {
            "--duration" => args.duration = value()?.clamp(1, 60),
            "--connections" => {
                args.connections = u32::try_from(value()?.clamp(1, 256)).unwrap_or(16)
            }
            "--reps" => args.reps = usize::try_from(value()?.clamp(1, 20)).unwrap_or(3),
            "--tenants" => {
                args.tenants = usize::try_from(value()?.clamp(1, 100_000)).unwrap_or(10_000)
            }
            "--exact-limit" => args.exact_limit = value()?.clamp(1, 1_000_000),
            "--skip-10k" => args.skip_10k = true,
            "--only-c1" => args.only_c1 = true,
            "--compare-wasm" => args.compare_wasm.push(flags.existing_file()?),
            "-h" | "--help" => {
                return Err("usage: load-report [--duration S (5)] [--connections C (16)] [--reps R (3)] \
                            [--tenants T (10000)] [--exact-limit N (2000)] [--skip-10k] [--only-c1] [--compare-wasm FILE]..."
                    .to_owned())
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    Ok(args)
}

// ------------------------------------------------------------------ Envoy

/// The Lua + native `local_ratelimit` baseline: tenant `TENANT` gets `tokens` per `fill_seconds`.
fn lua(tokens: u64, fill_seconds: u64) -> Bootstrap {
    Bootstrap::Lua {
        tenant: TENANT.to_owned(),
        tokens,
        fill_seconds,
    }
}

// ------------------------------------------------------------------ wrk

/// Counts response statuses per wrk thread and prints them in `done()`.
const STATUS_SCRIPT: &str = r#"
counts = {}
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("counts")) do
      io.write(string.format("status %d %d\n", status, n))
    end
  end
end
"#;

/// Sends each request for a different tenant, `t00000` … (the 10k-tenant config).
fn rotating_tenants_script(tenants: usize) -> String {
    format!(
        r#"
local n = 0
function request()
  n = n + 1
  return wrk.format("GET", "{PATH}", {{ ["x-tenant-id"] = string.format("t%05d", n % {tenants}) }})
end
"#
    )
}

#[derive(Debug, Clone, Default)]
struct WrkResult {
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    non_2xx: u64,
    socket_errors: String,
    statuses: BTreeMap<u16, u64>,
}

fn to_us(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        (text, 1.0)
    };
    number.trim().parse::<f64>().ok().map(|n| n * factor)
}

fn parse_wrk(output: &str) -> Res<WrkResult> {
    let mut result = WrkResult::default();
    for line in output.lines() {
        let line = line.trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => result.p50_us = to_us(value).unwrap_or(0.0),
            ["99%", value] => result.p99_us = to_us(value).unwrap_or(0.0),
            [count, "requests", "in", ..] => result.requests = count.parse().unwrap_or(0),
            ["Requests/sec:", value] => result.rps = value.parse().unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", value] => {
                result.non_2xx = value.parse().unwrap_or(0)
            }
            ["status", status, count] => {
                if let (Ok(status), Ok(count)) = (status.parse::<u16>(), count.parse::<u64>()) {
                    *result.statuses.entry(status).or_default() += count;
                }
            }
            _ if line.starts_with("Socket errors:") => line.clone_into(&mut result.socket_errors),
            _ => {}
        }
    }
    if result.requests == 0 {
        return Err(format!("wrk served no requests:\n{output}"));
    }
    Ok(result)
}

struct Load<'a> {
    port: u16,
    seconds: u64,
    connections: u32,
    headers: &'a [(String, String)],
    script: Option<&'a Path>,
}

fn run_wrk(load: &Load<'_>) -> Res<WrkResult> {
    let mut command = Command::new("wrk");
    command.args([
        "-t1".to_owned(),
        format!("-c{}", load.connections),
        format!("-d{}s", load.seconds),
        "--latency".to_owned(),
    ]);
    for (name, value) in load.headers {
        command.arg("-H").arg(format!("{name}: {value}"));
    }
    if let Some(script) = load.script {
        command.arg("-s").arg(script);
    }
    command.arg(format!("http://127.0.0.1:{}{PATH}", load.port));
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run wrk (apt-get install -y wrk): {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "wrk failed ({}): {text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse_wrk(&text)
}

// ------------------------------------------------------------------ scenarios

struct Scenario {
    name: String,
    bootstrap: Bootstrap,
    headers: Vec<(String, String)>,
    /// The run is expected to be answered mostly with 429.
    rejects: bool,
}

fn scenarios(compare_wasm: &[PathBuf]) -> Res<Vec<Scenario>> {
    let token = bench::es256_token(TENANT)?;
    let jwt = with_jwt(
        filter_config("load-jwt", Some((1_000_000_000, 60))),
        token.jwk,
        1024,
    );
    let tenant = vec![("x-tenant-id".to_owned(), TENANT.to_owned())];
    // No upstream revision header, RateLimit headers only on the 429.
    let mut lean = filter_config("load-lean", Some((1_000_000_000, 60)));
    lean["headers"] = json!({ "revision": false, "rate_limit": "on_reject" });
    let mut scenarios = vec![
        Scenario {
            name: "plain Envoy (no filter)".into(),
            bootstrap: Bootstrap::Plain,
            headers: tenant.clone(),
            rejects: false,
        },
        Scenario {
            name: "minimal probe filter (bench/probe-filter)".into(),
            bootstrap: Bootstrap::OtherWasm {
                wasm: probe_wasm_path(),
                config: "{}".to_owned(),
            },
            headers: tenant.clone(),
            rejects: false,
        },
        Scenario {
            name: "filter: correlation + header tenant".into(),
            bootstrap: Bootstrap::Filter(filter_config("load-corr", None).to_string()),
            headers: tenant.clone(),
            rejects: false,
        },
        Scenario {
            name: "filter: + rate limit (never rejects)".into(),
            bootstrap: Bootstrap::Filter(
                filter_config("load-rl", Some((1_000_000_000, 60))).to_string(),
            ),
            headers: tenant.clone(),
            rejects: false,
        },
        Scenario {
            name: "filter: + rate limit, lean headers".into(),
            bootstrap: Bootstrap::Filter(lean.to_string()),
            headers: tenant.clone(),
            rejects: false,
        },
        Scenario {
            name: "filter: + rate limit, 429 path (100/60 s)".into(),
            bootstrap: Bootstrap::Filter(filter_config("load-429", Some((100, 60))).to_string()),
            headers: tenant.clone(),
            rejects: true,
        },
        Scenario {
            name: "filter: + JWT ES256 (cached) + rate limit".into(),
            bootstrap: Bootstrap::Filter(jwt.to_string()),
            headers: vec![("authorization".to_owned(), token.authorization)],
            rejects: false,
        },
        Scenario {
            name: "native local_ratelimit + Lua correlation".into(),
            bootstrap: lua(1_000_000_000, 60),
            headers: tenant.clone(),
            rejects: false,
        },
        Scenario {
            name: "native local_ratelimit + Lua, 429 path (100/60 s)".into(),
            bootstrap: lua(100, 60),
            headers: tenant,
            rejects: true,
        },
    ];
    let rate_limited = filter_config("load-compare", Some((1_000_000_000, 60))).to_string();
    for wasm in compare_wasm {
        let file = file_label(wasm);
        scenarios.push(Scenario {
            name: format!("--compare-wasm {file} (rate-limit config)"),
            bootstrap: Bootstrap::OtherWasm {
                wasm: wasm.clone(),
                config: rate_limited.clone(),
            },
            headers: vec![("x-tenant-id".to_owned(), TENANT.to_owned())],
            rejects: false,
        });
    }
    Ok(scenarios)
}

#[derive(Default)]
struct Samples {
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    cpu: Vec<f64>,
    cpu_ns: Vec<f64>,
    rss_kib: u64,
    requests: u64,
    non_2xx: u64,
    socket_errors: Vec<String>,
}

fn measure_once(
    envoy: &BenchEnvoy,
    scenario: &Scenario,
    args: &Args,
    ticks_per_second: u64,
    samples: &mut Samples,
) -> Res<()> {
    let pid = envoy.pid();
    let before = CpuTime::of(pid)?;
    let result = run_wrk(&Load {
        port: envoy.port(),
        seconds: args.duration,
        connections: args.connections,
        headers: &scenario.headers,
        script: None,
    })?;
    let (cpu, cpu_ns) = CpuTime::of(pid)?.us_per_request_since(
        &before,
        ticks_per_second,
        result.requests.max(1) as f64,
    );
    samples.rps.push(result.rps);
    samples.p50.push(result.p50_us);
    samples.p99.push(result.p99_us);
    samples.cpu.push(cpu);
    samples.cpu_ns.push(cpu_ns);
    samples.rss_kib = rss_kib(pid);
    samples.requests += result.requests;
    samples.non_2xx += result.non_2xx;
    if !result.socket_errors.is_empty() {
        samples.socket_errors.push(result.socket_errors);
    }
    Ok(())
}

fn load_table(
    scenarios: &[Scenario],
    args: &Args,
    upstream: u16,
    ticks_per_second: u64,
    out: &mut String,
) -> Res<bool> {
    let concurrencies: &[u32] = if args.only_c1 { &[1] } else { &[1, 2] };
    let mut envoys = Vec::new();
    for &concurrency in concurrencies {
        for scenario in scenarios {
            let envoy = BenchEnvoy::start(&scenario.bootstrap, concurrency, upstream)
                .map_err(|e| format!("{} (--concurrency {concurrency}): {e}", scenario.name))?;
            // Warm-up: V8 compilation, connection pools, the JWT cache.
            run_wrk(&Load {
                port: envoy.port(),
                seconds: WARMUP_SECONDS,
                connections: args.connections,
                headers: &scenario.headers,
                script: None,
            })
            .map_err(|e| format!("{} warm-up: {e}", scenario.name))?;
            envoys.push((concurrency, scenario, envoy, Samples::default()));
        }
    }
    eprintln!(
        "{} Envoys up; {} repetitions x {} runs of {} s",
        envoys.len(),
        args.reps,
        envoys.len(),
        args.duration
    );
    let count = envoys.len();
    for rep in 0..args.reps {
        for offset in 0..count {
            let index = (rep * 3 + offset) % count;
            let Some((_, scenario, envoy, samples)) = envoys.get_mut(index) else {
                continue;
            };
            measure_once(envoy, scenario, args, ticks_per_second, samples)
                .map_err(|e| format!("{}: {e}", scenario.name))?;
        }
        eprintln!("  repetition {}/{} done", rep + 1, args.reps);
    }

    let mut ok = true;
    let _ = writeln!(
        out,
        "| scenario | Envoy workers | req/s | p50 µs | p99 µs | Envoy CPU µs/req (min–max) | Δ CPU vs plain µs | CPU × plain | req/s × plain | p99 × plain | RSS MiB | non-2xx | CPU µs/req (schedstat) |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for &concurrency in concurrencies {
        let rows: Vec<&(u32, &Scenario, BenchEnvoy, Samples)> = envoys
            .iter()
            .filter(|(c, _, _, _)| *c == concurrency)
            .collect();
        let Some((_, _, _, plain)) = rows.first() else {
            continue;
        };
        let (base_cpu, base_rps, base_p99) =
            (median(&plain.cpu), median(&plain.rps), median(&plain.p99));
        for (_, scenario, _, s) in rows {
            let (lo, hi) = min_max(&s.cpu);
            let cpu = median(&s.cpu);
            let share = s.non_2xx as f64 * 100.0 / s.requests.max(1) as f64;
            let _ = writeln!(
                out,
                "| {} | {concurrency} | {:.0} | {:.0} | {:.0} | {:.1} ({:.1}–{:.1}) | {:+.1} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} % | {:.1} |",
                scenario.name,
                median(&s.rps),
                median(&s.p50),
                median(&s.p99),
                cpu,
                lo,
                hi,
                cpu - base_cpu,
                cpu / base_cpu.max(f64::MIN_POSITIVE),
                median(&s.rps) / base_rps.max(f64::MIN_POSITIVE),
                median(&s.p99) / base_p99.max(f64::MIN_POSITIVE),
                s.rss_kib as f64 / 1024.0,
                share,
                median(&s.cpu_ns),
            );
            let expected = if scenario.rejects {
                share > 50.0
            } else {
                s.non_2xx == 0
            };
            if !expected {
                ok = false;
                let _ = writeln!(
                    out,
                    "\n**unexpected status mix for `{}` ({} non-2xx of {})**\n",
                    scenario.name, s.non_2xx, s.requests
                );
            }
            for errors in &s.socket_errors {
                let _ = writeln!(out, "<!-- {}: {errors} -->", scenario.name);
            }
        }
    }
    Ok(ok)
}

// ------------------------------------------------------------------ exactness

fn exactness(args: &Args, upstream: u16, script: &Path, out: &mut String) -> Res<bool> {
    let n = args.exact_limit;
    let window = 86_400u64;
    let emission_s = window as f64 / n as f64;
    let mut ok = true;
    let _ = writeln!(
        out,
        "Limit N = {n} per {window} s (burst N) on one tenant, Envoy `--concurrency 2`, \
         `wrk -t1 -c{} -d{}s` with a status-counting Lua script. Allowed = N + \
         ⌊run time / {emission_s:.1} s⌋ (GCRA refill), i.e. N for runs shorter than one \
         emission interval.\n",
        args.connections, args.duration
    );
    let _ = writeln!(
        out,
        "| limiter | requests | 200 (admitted) | 429 | other | allowed | admitted − allowed | filter stats allowed / rate_limited |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let tenant = "exact";
    let mut config = filter_config("load-exact", Some((1_000_000_000, 60)));
    config["tenants"][tenant] = json!({"rate_limit": {"requests": n, "per_seconds": window}});
    let cases = [
        (
            "tenant-guard filter (shared-data CAS)",
            Bootstrap::Filter(config.to_string()),
            tenant,
        ),
        (
            "native local_ratelimit (descriptor bucket)",
            lua(n, window),
            TENANT,
        ),
    ];
    for (name, bootstrap, tenant) in cases {
        let envoy = BenchEnvoy::start(&bootstrap, 2, upstream)?;
        let headers = vec![("x-tenant-id".to_owned(), tenant.to_owned())];
        let started = Instant::now();
        let result = run_wrk(&Load {
            port: envoy.port(),
            seconds: args.duration,
            connections: args.connections,
            headers: &headers,
            script: Some(script),
        })?;
        let elapsed = started.elapsed().as_secs_f64();
        let admitted = result.statuses.get(&200).copied().unwrap_or(0);
        let limited = result.statuses.get(&429).copied().unwrap_or(0);
        let total: u64 = result.statuses.values().sum();
        let other = total - admitted - limited;
        let allowed = n + (elapsed / emission_s).floor() as u64;
        let stats = match bootstrap {
            Bootstrap::Filter(_) => {
                // Each worker hands its counters to Envoy once a second.
                let counted = || {
                    (
                        envoy.stat_suffix_sum("tenant_guard_allowed"),
                        envoy.stat_suffix_sum("tenant_guard_rate_limited"),
                    )
                };
                wait_until(Duration::from_secs(5), || {
                    let (allowed, rejected) = counted();
                    allowed >= admitted && rejected >= limited
                });
                let (allowed, rejected) = counted();
                format!("{allowed} / {rejected}")
            }
            _ => format!(
                "(native: ok {} / limited {})",
                envoy.stat_suffix_sum("tenant_rate_limit.http_local_rate_limit.ok"),
                envoy.stat_suffix_sum("tenant_rate_limit.http_local_rate_limit.rate_limited")
            ),
        };
        let _ = writeln!(
            out,
            "| {name} | {total} | {admitted} | {limited} | {other} | {allowed} | {:+} | {stats} |",
            admitted as i64 - allowed as i64
        );
        if admitted > allowed || other > 0 {
            ok = false;
        }
    }
    Ok(ok)
}

// ------------------------------------------------------------------ 10k tenants

const ACTOR: &str = "load-report";

fn row(scope: Scope, tenant: &str, route: &str, key: &str, value: Value) -> SettingRow {
    SettingRow::new(scope, tenant, route, key, value, ACTOR)
}

fn settings_rows(tenants: usize) -> Vec<SettingRow> {
    let mut rows = vec![
        SettingRow::global("gateway.tenant.header", json!("x-tenant-id"), ACTOR),
        SettingRow::global(
            "gateway.tenant.trust_header_without_jwt",
            json!(true),
            ACTOR,
        ),
        SettingRow::global("gateway.tenant.unknown", json!("reject"), ACTOR),
        SettingRow::global(
            "gateway.rate_limit",
            json!({"requests": 100, "per_seconds": 60}),
            ACTOR,
        ),
    ];
    for i in 0..tenants {
        let tenant = format!("t{i:05}");
        rows.push(row(
            Scope::Tenant,
            &tenant,
            "",
            "gateway.rate_limit",
            json!({"requests": 1000 + i, "per_seconds": 60}),
        ));
        rows.push(row(
            Scope::Route,
            &tenant,
            "orders",
            "gateway.route.prefix",
            json!("/orders"),
        ));
        rows.push(row(
            Scope::Route,
            &tenant,
            "orders",
            "gateway.route.method",
            json!("POST"),
        ));
        rows.push(row(
            Scope::Route,
            &tenant,
            "orders",
            "gateway.rate_limit",
            json!({"requests": 10 + i % 100, "per_seconds": 1}),
        ));
    }
    rows
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let value = f();
    (value, started.elapsed())
}

fn ten_thousand(args: &Args, upstream: u16, dir: &Path, out: &mut String) -> Res<()> {
    let tenants = args.tenants;
    let rows = settings_rows(tenants);
    // (a) sidecar: render + validate (JSON Schema + the filter's parser).
    let mut render_ms = Vec::new();
    let mut validate_ms = Vec::new();
    let mut document = String::new();
    let (validator, validator_new) = timed(Validator::new);
    let validator = validator.map_err(|e| e.to_string())?;
    for _ in 0..5 {
        let (rendered, t) = timed(|| render(&rows));
        let rendered = rendered.map_err(|e| e.to_string())?;
        render_ms.push(ms(t));
        document = rendered.with_revision("r1-load-report");
        let (valid, t) = timed(|| validator.validate(&rendered, &document));
        valid.map_err(|e| e.to_string())?;
        validate_ms.push(ms(t));
    }
    // (b) the filter's parse + compile, natively.
    let mut parse_ms = Vec::new();
    for _ in 0..20 {
        let (compiled, t) = timed(|| config::parse(document.as_bytes()));
        let compiled = compiled.map_err(|e| e.to_string())?;
        if compiled.tenants.len() != tenants {
            return Err(format!("parsed {} tenants", compiled.tenants.len()));
        }
        parse_ms.push(ms(t));
    }
    let _ = writeln!(
        out,
        "{tenants} tenants, each with a tenant rate limit and one route (`POST /orders`, own limit): \
         {} settings rows → a {:.0} KiB plugin document.\n",
        rows.len(),
        document.len() as f64 / 1024.0
    );
    let _ = writeln!(out, "| step | median | min |");
    let _ = writeln!(out, "|---|---:|---:|");
    for (name, values) in [
        ("sidecar `settings::render` (rows → document)", &render_ms),
        (
            "sidecar `Validator::validate` (JSON Schema + filter parser)",
            &validate_ms,
        ),
        (
            "filter `config::parse` natively (parse + compile)",
            &parse_ms,
        ),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {:.1} ms | {:.1} ms |",
            median(values),
            min_max(values).0
        );
    }
    let _ = writeln!(
        out,
        "| sidecar `Validator::new` (compile the schema, once) | {:.1} ms | |",
        ms(validator_new)
    );
    // (c) Envoy memory per worker: tiny vs 10k config, 1 vs 2 workers; each
    // Envoy then gets one request per tenant id (creating the shared-data keys
    // in both configs alike) before RSS is read.
    let tiny = filter_config("load-tiny", Some((100, 60))).to_string();
    let script = dir.join("rotate.lua");
    fs::write(&script, rotating_tenants_script(tenants)).map_err(|e| e.to_string())?;
    let mut rss = BTreeMap::new();
    let _ = writeln!(
        out,
        "\n| Envoy | workers | start → ready | RSS after start | RSS after {tenants}-tenant traffic |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for (label, config) in [("tiny config", &tiny), ("10k-tenant config", &document)] {
        for concurrency in [1u32, 2] {
            let envoy =
                BenchEnvoy::start(&Bootstrap::Filter(config.clone()), concurrency, upstream)?;
            let after_start = rss_kib(envoy.pid());
            run_wrk(&Load {
                port: envoy.port(),
                seconds: 2,
                connections: args.connections,
                headers: &[],
                script: Some(&script),
            })?;
            let after = rss_kib(envoy.pid());
            rss.insert((label, concurrency), after);
            let _ = writeln!(
                out,
                "| {label} | {concurrency} | {:.0} ms | {:.1} MiB | {:.1} MiB |",
                ms(envoy.startup()),
                after_start as f64 / 1024.0,
                after as f64 / 1024.0
            );
        }
    }
    let get =
        |label: &'static str, c: u32| rss.get(&(label, c)).copied().unwrap_or(0) as f64 / 1024.0;
    let per_worker_tiny = get("tiny config", 2) - get("tiny config", 1);
    let per_worker_10k = get("10k-tenant config", 2) - get("10k-tenant config", 1);
    let _ = writeln!(
        out,
        "\nPer extra worker: {per_worker_10k:.1} MiB with the 10k config vs {per_worker_tiny:.1} MiB \
         with the tiny one → the 10k-tenant config costs ≈ {:.1} MiB per worker. At 1 worker the \
         10k config costs {:.1} MiB more in total (main-thread VM + worker VM + the config held by \
         Envoy).",
        per_worker_10k - per_worker_tiny,
        get("10k-tenant config", 1) - get("tiny config", 1)
    );
    Ok(())
}

// ------------------------------------------------------------------ native policy cost

/// Native cost of `engine::evaluate` (no host, in-memory store) per request.
fn native_policy(out: &mut String) -> Res<()> {
    let _ = writeln!(out, "| config | ns/request (native, `engine::evaluate`) |");
    let _ = writeln!(out, "|---|---:|");
    for (name, limit) in [
        ("correlation + header tenant", None),
        ("+ rate limit", Some((1_000_000_000, 60))),
    ] {
        let compiled = config::parse(filter_config("native", limit).to_string().as_bytes())
            .map_err(|e| e.to_string())?;
        let store = MemoryStore::new();
        let iterations = 200_000u64;
        let started = Instant::now();
        for i in 0..iterations {
            let request = RequestView {
                method: b"GET",
                path: PATH.as_bytes(),
                tenant_header: Some(TENANT.as_bytes()),
                ..RequestView::default()
            };
            let inputs = HostInputs {
                now_unix_ns: 1_800_000_000_000_000_000 + i * 1000,
                random: [i as u8; 10],
            };
            std::hint::black_box(engine::evaluate(&compiled, &request, &inputs, &store));
        }
        let ns = started.elapsed().as_nanos() as f64 / iterations as f64;
        let _ = writeln!(out, "| {name} | {ns:.0} |");
    }
    Ok(())
}

// ------------------------------------------------------------------ main

fn run(args: &Args) -> Res<bool> {
    let total = Instant::now();
    eprintln!("load-report: building the filter if needed...");
    let wasm = wasm_path();
    let envoy = envoy_binary();
    let ticks_per_second = clock_ticks_per_second();
    let version = command_output(&envoy, &["--version"]);
    let dirty = command_output("git", &["status", "--porcelain", "--", "filter"]);
    let mut out = String::new();
    let _ = writeln!(out, "## load-report");
    let _ = writeln!(
        out,
        "\n- date: {}\n- machine: {} CPUs (`nproc`), {}\n- Envoy: {}\n- filter: `{}`, {}; git {}{}\n- load: `wrk -t1 -c{} -d{}s --latency` per run, {} repetitions (rotating order), {WARMUP_SECONDS} s warm-up per Envoy\n- upstream: in-process Rust keep-alive server, fixed 36-byte JSON body (all scenarios proxy to it)\n- CPU: Envoy `utime+stime` ({ticks_per_second} ticks/s) over the run ÷ requests completed; median (min–max) over repetitions\n",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        std::thread::available_parallelism().map_or(0, usize::from),
        command_output("uname", &["-r"]),
        version.lines().last().unwrap_or("?"),
        wasm.display(),
        file_size(&wasm),
        command_output("git", &["rev-parse", "--short", "HEAD"]),
        if dirty.is_empty() { "" } else { " + uncommitted changes under filter/" },
        args.connections,
        args.duration,
        args.reps,
    );
    let upstream = bench::start_upstream("load-report")?;
    let dir = TempDir::new("load-report").map_err(|e| e.to_string())?;
    let status_script = dir.path().join("statuses.lua");
    fs::write(&status_script, STATUS_SCRIPT).map_err(|e| e.to_string())?;

    let scenarios = scenarios(&args.compare_wasm)?;
    let _ = writeln!(out, "### Throughput, latency, CPU and memory\n");
    let mut ok = load_table(&scenarios, args, upstream, ticks_per_second, &mut out)?;
    print!("{out}");
    out.clear();

    let _ = writeln!(out, "\n### Rate-limit exactness under load\n");
    ok &= exactness(args, upstream, &status_script, &mut out)?;
    print!("{out}");
    out.clear();

    let _ = writeln!(out, "\n### Native policy cost (no host, no V8)\n");
    native_policy(&mut out)?;
    print!("{out}");
    out.clear();

    if !args.skip_10k {
        let _ = writeln!(out, "\n### {} tenants\n", args.tenants);
        ten_thousand(args, upstream, dir.path(), &mut out)?;
        print!("{out}");
        out.clear();
    }
    println!(
        "\ntotal load-report time: {:.0} s",
        total.elapsed().as_secs_f64()
    );
    Ok(ok)
}

fn main() -> ExitCode {
    let Some(args) = bench::parse_command_line(parse_args) else {
        return ExitCode::from(2);
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("load-report: some results were not as expected (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("load-report: {e}");
            ExitCode::FAILURE
        }
    }
}
