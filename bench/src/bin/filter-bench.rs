//! Filter cost benchmark: Envoy CPU time per request and client-side latency for
//! each filter feature, as a ratio against plain Envoy (no filter) in the same run.
//!
//! ```text
//! cargo run --release -p tenant-guard-bench --bin filter-bench -- [--requests N] [--connections C] [--rounds R] [--compare-wasm FILE]...
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
//! - the minimal probe filter (`bench/probe-filter`: correlation id + one CAS
//!   counter, nothing else), the floor any proxy-wasm filter pays;
//! - correlation id + header tenant, no limit;
//! - rate limit (and the same config on each `--compare-wasm` build, e.g. a
//!   different optimisation level or an older commit's filter);
//! - 3 and 6 limits per request (`rate_limits`: rates and a monthly quota of
//!   the tenant, rates of the user and of an API key), the cost of each
//!   extra limit against the one-limit row;
//! - JWT ES256 / RS256 with the verified-token cache;
//! - JWT cold (`cache_entries: 0`);
//! - idempotency replay (same key, same request; without a body it is answered
//!   from the request headers, with a body after the body was read, which resets
//!   the upstream request Envoy had started).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tenant_guard_bench::{
    self as bench, clock_ticks_per_second, file_labels, file_size, filter_config, median, min_max,
    with_jwt, BenchEnvoy, Bootstrap, CpuTime, Flags,
};
use tenant_guard_e2e::config::set_json;
use tenant_guard_e2e::{envoy_binary, probe_wasm_path, wasm_path, Conn};

const TENANT: &str = "x-tenant-id";
const WARMUP: usize = 200;

struct Args {
    requests: usize,
    connections: usize,
    rounds: usize,
    /// Other builds of the filter, each measured with the "+ rate limit" config.
    compare_wasm: Vec<PathBuf>,
}

fn parse_args(flags: &mut Flags) -> Result<Args, String> {
    let mut args = Args {
        requests: 10_000,
        connections: 1,
        rounds: 5,
        compare_wasm: Vec::new(),
    };
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--requests" => args.requests = flags.value::<usize>()?.max(100),
            "--connections" => args.connections = flags.value::<usize>()?.clamp(1, 64),
            "--rounds" => args.rounds = flags.value::<usize>()?.clamp(1, 100),
            "--compare-wasm" => args.compare_wasm.push(flags.existing_file()?),
            "-h" | "--help" => return Err(
                "usage: filter-bench [--requests N (default 10000)] [--connections C (default 1)] [--rounds R (default 5)] [--compare-wasm FILE]..."
                    .to_owned(),
            ),
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    Ok(args)
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
    /// Load this `.wasm` instead of the filter.
    wasm: Option<PathBuf>,
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

/// Header tenants; `rate_limit`: a default limit that never rejects (10⁹ per minute).
fn base_config(revision: &str, rate_limit: bool) -> Value {
    filter_config(revision, rate_limit.then_some((1_000_000_000, 60)))
}

/// Header tenants with the first `count` of six limits that never reject
/// (`rate_limits` at the defaults): three counting the tenant (a rate of a
/// second, one of an hour, a monthly quota), two each user, one each API key.
fn limits_config(count: usize) -> Value {
    let most = 1_000_000_000_u64;
    let limits = [
        json!({"name": "second", "requests": most, "per": "second"}),
        json!({"name": "hour", "requests": most, "per": "hour"}),
        json!({"name": "month", "requests": most, "per": "month"}),
        json!({"name": "user-second", "requests": most, "per": "second", "key": "user"}),
        json!({"name": "user-day", "requests": most, "per": "day", "key": "user"}),
        json!({"name": "api-key", "requests": most, "per": "minute", "key": {"header": "x-api-key"}}),
    ];
    let mut config = base_config("bench-limits", false);
    set_json(
        &mut config,
        &["defaults", "rate_limits"],
        Value::Array(limits.into_iter().take(count).collect()),
    );
    config
}

fn jwt_config(jwk: Value, cache_entries: u64) -> Value {
    with_jwt(base_config("bench-jwt", true), jwk, cache_entries)
}

fn scenarios(compare_wasm: &[PathBuf]) -> Result<Vec<Scenario>, String> {
    let es = bench::es256_token("acme")?;
    let rsa = bench::rs256_token("acme")?;

    let mut idempotent = base_config("bench-idem", true);
    set_json(
        &mut idempotent,
        &["defaults", "idempotency"],
        json!({
            "methods": ["POST"], "required": true, "ttl_seconds": 3600,
            "max_body_bytes": 65536, "in_flight_timeout_seconds": 60
        }),
    );
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
    let keyed = [(TENANT, "acme"), ("x-user-id", "u-1"), ("x-api-key", "k-1")];
    let mut scenarios = vec![
        Scenario {
            name: "plain Envoy (no filter)".into(),
            config: None,
            wasm: None,
            request: get(&tenant),
            prime: None,
        },
        Scenario {
            name: "minimal probe filter (bench/probe-filter)".into(),
            config: Some(json!({})),
            wasm: Some(probe_wasm_path()),
            request: get(&tenant),
            prime: None,
        },
        Scenario {
            name: "correlation + tenant header, no limit".into(),
            config: Some(base_config("bench-corr", false)),
            wasm: None,
            request: get(&tenant),
            prime: None,
        },
        Scenario {
            name: "+ rate limit".into(),
            config: Some(base_config("bench-rl", true)),
            wasm: None,
            request: get(&tenant),
            prime: None,
        },
        Scenario {
            name: "+ 3 limits (second, hour, month)".into(),
            config: Some(limits_config(3)),
            wasm: None,
            request: get(&keyed),
            prime: None,
        },
        Scenario {
            name: "+ 6 limits (3 per tenant, 2 per user, 1 per API key)".into(),
            config: Some(limits_config(6)),
            wasm: None,
            request: get(&keyed),
            prime: None,
        },
        Scenario {
            name: "+ JWT ES256, cached".into(),
            config: Some(jwt_config(es.jwk.clone(), 1024)),
            wasm: None,
            request: get(&[("authorization", &es.authorization)]),
            prime: None,
        },
        Scenario {
            name: "+ JWT RS256, cached".into(),
            config: Some(jwt_config(rsa.jwk.clone(), 1024)),
            wasm: None,
            request: get(&[("authorization", &rsa.authorization)]),
            prime: None,
        },
        Scenario {
            name: "+ JWT ES256, cold (cache 0)".into(),
            config: Some(jwt_config(es.jwk, 0)),
            wasm: None,
            request: get(&[("authorization", &es.authorization)]),
            prime: None,
        },
        Scenario {
            name: "+ JWT RS256, cold (cache 0)".into(),
            config: Some(jwt_config(rsa.jwk, 0)),
            wasm: None,
            request: get(&[("authorization", &rsa.authorization)]),
            prime: None,
        },
        Scenario {
            name: "+ idempotency replay, POST no body".into(),
            config: Some(idempotent.clone()),
            wasm: None,
            prime: Some(prime(&replay_empty)),
            request: replay_empty,
        },
        Scenario {
            name: "+ idempotency replay, POST with body".into(),
            config: Some(idempotent),
            wasm: None,
            prime: Some(prime(&replay_body)),
            request: replay_body,
        },
    ];
    for ((position, wasm), name) in (4..).zip(compare_wasm).zip(file_labels(compare_wasm)) {
        scenarios.insert(
            position,
            Scenario {
                name: format!("+ rate limit, --compare-wasm {name}"),
                config: Some(base_config("bench-rl", true)),
                wasm: Some(wasm.clone()),
                request: get(&tenant),
                prime: None,
            },
        );
    }
    Ok(scenarios)
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
    let bootstrap = match (&scenario.config, &scenario.wasm) {
        (Some(config), None) => Bootstrap::Filter(config.to_string()),
        (Some(config), Some(wasm)) => Bootstrap::OtherWasm {
            wasm: wasm.clone(),
            config: config.to_string(),
        },
        (None, _) => Bootstrap::Plain,
    };
    // `--concurrency 1`: one worker does all the work.
    let envoy = BenchEnvoy::start(&bootstrap, 1, upstream_port)?;
    if let Some(prime) = &scenario.prime {
        send(&mut Conn::new(envoy.port()), prime).map_err(|e| format!("priming: {e}"))?;
    }
    let mut conns: Vec<Conn> = (0..args.connections)
        .map(|_| Conn::new(envoy.port()))
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
    let pid = prepared.envoy.pid();
    let per_connection = requests.div_ceil(prepared.conns.len());
    let before = CpuTime::of(pid)?;
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
    let after = CpuTime::of(pid)?;
    let mut sent = 0;
    for (latencies, errors, first_error) in results {
        sent += latencies.len();
        prepared.latencies.extend(latencies);
        prepared.errors += errors;
        if prepared.first_error.is_none() {
            prepared.first_error = first_error;
        }
    }
    let (cpu_stat, cpu_ns) =
        after.us_per_request_since(&before, ticks_per_second, sent.max(1) as f64);
    prepared.cpu_stat.push(cpu_stat);
    prepared.cpu_ns.push(cpu_ns);
    Ok(())
}

fn summarize(scenario: &Scenario, mut prepared: Prepared) -> Measurement {
    prepared.latencies.sort_unstable();
    Measurement {
        name: scenario.name.clone(),
        requests: prepared.latencies.len(),
        cpu_us_stat: median(&prepared.cpu_stat),
        cpu_us_ns: min_max(&prepared.cpu_ns).0,
        p50_us: bench::percentile_us(&prepared.latencies, 0.50),
        p99_us: bench::percentile_us(&prepared.latencies, 0.99),
        errors: prepared.errors,
        first_error: prepared.first_error,
        wall: prepared.wall,
    }
}

/// The cost of each extra limit: the 3- and 6-limit rows against the
/// one-limit row of the same run (goal: at most +1 µs of Envoy CPU each).
fn print_limit_costs(results: &[Measurement]) {
    let row = |prefix: &str| results.iter().find(|m| m.name.starts_with(prefix));
    let Some(one) = row("+ rate limit") else {
        return;
    };
    println!("\nper extra limit (against the one-limit row, schedstat min / stat median):");
    for (count, prefix) in [(3.0, "+ 3 limits"), (6.0, "+ 6 limits")] {
        if let Some(m) = row(prefix) {
            println!(
                "  {count:.0} limits: {:+.2} / {:+.2} µs per extra limit",
                (m.cpu_us_ns - one.cpu_us_ns) / (count - 1.0),
                (m.cpu_us_stat - one.cpu_us_stat) / (count - 1.0)
            );
        }
    }
}

fn main() -> ExitCode {
    let Some(args) = bench::parse_command_line(parse_args) else {
        return ExitCode::from(2);
    };
    let total = Instant::now();
    println!("filter-bench: building the filter if needed...");
    let wasm = wasm_path();
    let envoy = envoy_binary();
    let version = bench::command_output(&envoy, &["--version"]);
    let ticks_per_second = clock_ticks_per_second();
    println!("wasm: {} — {}", wasm.display(), file_size(&wasm));
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
    let scenarios = match scenarios(&args.compare_wasm) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let upstream = match bench::start_upstream("filter-bench") {
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
    print_limit_costs(&results);
    println!("\nwasm size: {}", file_size(&wasm));
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
