//! Cost per request, side by side in one run: tenant-guard's configurations,
//! plain Envoy, the minimal probe filter, the Lua + native `local_ratelimit`
//! setup users run today, and the peers (Kuadrant's wasm-shim and Envoy's
//! `ratelimit` filter, both asking limitador-server, in memory or on Redis).
//!
//! ```text
//! apt-get install -y valgrind                     # Debian's valgrind (callgrind, callgrind_control)
//! cargo run --release -p tenant-guard-bench --bin instr-bench -- \
//!     [--requests N (100)] [--runs R (3; 0: no instruction counts)] [--only TEXT]... \
//!     [--limitador PATH] [--wasm-shim PATH] [--skip-compare] [--skip-memory] [--keep-dumps DIR]
//! ```
//!
//! Three tables, in this order:
//! 1. natively (`compare.rs`): CPU per request of Envoy and of the rate limit
//!    service beside it, latency p50/p99, admitted ÷ allowed under a storm
//!    across 2 workers, Redis commands per 100 requests — first, because CPU
//!    time is the one figure that moves with the machine's load;
//! 2. instructions per proxied request, counted by callgrind: a figure that
//!    does not move with the load. Each scenario is one Envoy
//!    (`--concurrency 1`) under `valgrind --tool=callgrind`, warmed up with
//!    300 requests (V8 compiles the hot code by then). A run counts the
//!    instructions of N requests and of 2 N requests (callgrind's counters
//!    dumped and zeroed around each batch, one keep-alive connection) and
//!    reports (I(2N) − I(N)) / N: what one more request costs, with start-up,
//!    warm-up and the batch's fixed costs cancelled. R runs per scenario show
//!    the spread (the goal is ±2 %). All of Envoy's threads are counted; the
//!    client, the upstream and a peer's limitador run outside valgrind;
//! 3. memory (`memory.rs`): Envoy's RSS at 1, 2 and 4 workers against the
//!    probe's, and with a 10 000-tenant config.
//!
//! The peers are built by the user from their public sources (BENCHMARKS.md
//! §11); without `--limitador` / `--wasm-shim` one line says they were not
//! measured.

mod compare;
mod memory;

use std::process::ExitCode;

use serde_json::{json, Value};
use tenant_guard_bench::peers::{Limitador, PeerPaths, PeerSetup, Storage};
use tenant_guard_bench::{self as bench, filter_config, BenchEnvoy, Bootstrap, Flags, Launch};
use tenant_guard_e2e::config::set_json;
use tenant_guard_e2e::{probe_wasm_path, Conn};
use tenant_guard_sidecar::test_support::RedisServer;

const TENANT: &str = "x-tenant-id";
const WARMUP: usize = 300;
const USAGE: &str =
    "usage: instr-bench [--requests N (100)] [--runs R (3; 0: memory only)] [--only TEXT]... [--keep-dumps DIR] [--skip-memory] [--skip-compare] [--limitador PATH] [--wasm-shim PATH]";

struct Args {
    requests: usize,
    runs: usize,
    /// Only the scenarios whose name contains one of these.
    only: Vec<String>,
    /// Keep each scenario's last callgrind dump here (for `callgrind_annotate`).
    keep_dumps: Option<std::path::PathBuf>,
    /// No memory table.
    skip_memory: bool,
    /// No native comparison table.
    skip_compare: bool,
    peers: PeerPaths,
}

fn parse_args(flags: &mut Flags) -> Result<Args, String> {
    let mut args = Args {
        requests: 100,
        runs: 3,
        only: Vec::new(),
        keep_dumps: None,
        skip_memory: false,
        skip_compare: false,
        peers: PeerPaths::default(),
    };
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--requests" => args.requests = flags.value::<usize>()?.clamp(10, 100_000),
            "--runs" => args.runs = flags.value::<usize>()?.min(20),
            "--only" => args.only.push(flags.value::<String>()?),
            "--skip-memory" => args.skip_memory = true,
            "--skip-compare" => args.skip_compare = true,
            "--limitador" => args.peers.limitador = Some(flags.existing_file()?),
            "--wasm-shim" => args.peers.wasm_shim = Some(flags.existing_file()?),
            "--keep-dumps" => args.keep_dumps = Some(flags.value::<std::path::PathBuf>()?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    Ok(args)
}

/// One scenario: its bootstrap and the headers of its requests.
struct Scenario {
    name: &'static str,
    bootstrap: Bootstrap,
    headers: Vec<(&'static str, &'static str)>,
    /// The minimal probe filter: the floor the memory table compares with.
    is_probe: bool,
    /// Also in the memory table.
    memory: bool,
}

/// tenant-guard's plugin config with header tenants; `limits`: the
/// defaults' `rate_limits`.
fn tenant_guard_config(limits: Option<Value>) -> Value {
    let mut config = filter_config("instr", None);
    if let Some(limits) = limits {
        set_json(&mut config, &["defaults", "rate_limits"], limits);
    }
    config
}

/// [`tenant_guard_config`] in Envoy.
fn tenant_guard(limits: Option<Value>) -> Bootstrap {
    Bootstrap::Filter(tenant_guard_config(limits).to_string())
}

/// `config` with idempotency for POSTs and If-Match for PUTs under `/instr`:
/// a GET then reads the method, the path, the three method overrides, the
/// Idempotency-Key and If-Match besides the tenant and the correlation id.
fn idempotent_and_if_match(mut config: Value) -> Bootstrap {
    set_json(
        &mut config,
        &["defaults", "idempotency"],
        json!({"required": false, "methods": ["POST"]}),
    );
    set_json(
        &mut config,
        &["if_match"],
        json!([{"prefix": "/instr", "methods": ["PUT"]}]),
    );
    Bootstrap::Filter(config.to_string())
}

/// `bootstrap`'s plugin config with the informational headers trimmed.
fn lean(bootstrap: Bootstrap) -> Bootstrap {
    match bootstrap {
        Bootstrap::Filter(text) => {
            let mut config: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            set_json(
                &mut config,
                &["headers"],
                json!({"rate_limit": "on_reject", "revision": false}),
            );
            Bootstrap::Filter(config.to_string())
        }
        other => other,
    }
}

/// The peers' rate limit services while the instruction counts run.
struct RunningPeers {
    /// limitador in memory, and on Redis (with its own Redis).
    memory: Limitador,
    on_redis: Limitador,
    _redis: RedisServer,
    setups: Vec<PeerSetup>,
}

impl RunningPeers {
    fn start(paths: &PeerPaths, limit: u64) -> Result<Option<Self>, String> {
        let Some(binary) = &paths.limitador else {
            return Ok(None);
        };
        let memory = Limitador::start(binary, limit, 60, &Storage::Memory)?;
        let redis = RedisServer::try_start().map_err(|e| e.to_string())?;
        let on_redis = Limitador::start(binary, limit, 60, &Storage::Redis(redis.url()))?;
        Ok(Some(Self {
            memory,
            on_redis,
            _redis: redis,
            setups: paths.setups(),
        }))
    }

    /// Their scenarios (tenant limit from the header, as everywhere else);
    /// the in-memory ones also in the memory table.
    fn scenarios(&self) -> Vec<Scenario> {
        self.setups
            .iter()
            .map(|setup| {
                let service = if setup.on_redis {
                    &self.on_redis
                } else {
                    &self.memory
                };
                Scenario {
                    name: setup.name(),
                    bootstrap: setup.bootstrap(service.rls_port()),
                    headers: vec![(TENANT, "acme")],
                    is_probe: false,
                    memory: !setup.on_redis,
                }
            })
            .collect()
    }
}

fn scenarios() -> Vec<Scenario> {
    let most = 1_000_000_000_u64;
    let one = json!([{"name": "tenant", "requests": most, "per": "minute"}]);
    let three = json!([
        {"name": "second", "requests": most, "per": "second"},
        {"name": "hour", "requests": most, "per": "hour"},
        {"name": "month", "requests": most, "per": "month"}]);
    let mut six = three.clone();
    if let Some(list) = six.as_array_mut() {
        list.extend([
            json!({"name": "user-second", "requests": most, "per": "second", "key": "user"}),
            json!({"name": "user-day", "requests": most, "per": "day", "key": "user"}),
            json!({"name": "api-key", "requests": most, "per": "minute", "key": {"header": "x-api-key"}}),
        ]);
    }
    let tenant = vec![(TENANT, "acme")];
    let scenario = |name, bootstrap, headers| Scenario {
        name,
        bootstrap,
        headers,
        is_probe: false,
        memory: false,
    };
    let in_memory_table = |scenario: Scenario| Scenario {
        memory: true,
        ..scenario
    };
    let ten_thousand = memory::with_tenants(tenant_guard_config(Some(one.clone())), 10_000);
    vec![
        in_memory_table(scenario(
            "plain Envoy (no filter)",
            Bootstrap::Plain,
            tenant.clone(),
        )),
        Scenario {
            is_probe: true,
            ..in_memory_table(scenario(
                "minimal probe filter",
                Bootstrap::OtherWasm {
                    wasm: probe_wasm_path(),
                    config: "{}".to_owned(),
                },
                tenant.clone(),
            ))
        },
        scenario(
            "tenant-guard: correlation + header tenant, no limit",
            tenant_guard(None),
            tenant.clone(),
        ),
        in_memory_table(scenario(
            "tenant-guard: + one rate limit (the default configuration)",
            tenant_guard(Some(one.clone())),
            tenant.clone(),
        )),
        scenario(
            "tenant-guard: + lean headers (RateLimit on 429 only, no revision upstream)",
            lean(tenant_guard(Some(one.clone()))),
            tenant.clone(),
        ),
        scenario(
            "tenant-guard: + idempotency (POST) and If-Match (PUT) configured, a GET (9 headers read)",
            idempotent_and_if_match(tenant_guard_config(Some(one.clone()))),
            tenant.clone(),
        ),
        scenario(
            "tenant-guard: + 3 limits of the tenant",
            tenant_guard(Some(three.clone())),
            tenant.clone(),
        ),
        scenario(
            "tenant-guard: + 6 limits (3 of the tenant, 2 per user, 1 per API key)",
            tenant_guard(Some(six)),
            vec![(TENANT, "acme"), ("x-user-id", "u-1"), ("x-api-key", "k-1")],
        ),
        in_memory_table(scenario(
            "tenant-guard: default configuration, 10 000 configured tenants",
            Bootstrap::Filter(ten_thousand.to_string()),
            vec![(TENANT, "t00042")],
        )),
        in_memory_table(scenario(
            "Lua correlation id + native local_ratelimit",
            Bootstrap::Lua {
                tenant: "acme".to_owned(),
                tokens: most,
                fill_seconds: 60,
            },
            tenant,
        )),
    ]
}

/// Instructions per request, one run: (I(2N) − I(N)) / N.
fn one_run(
    envoy: &BenchEnvoy,
    conn: &mut Conn,
    scenario: &Scenario,
    n: usize,
) -> Result<f64, String> {
    let mut batch = |count: usize| -> Result<u64, String> {
        envoy.instructions_since_last()?;
        for _ in 0..count {
            let response = conn
                .request("GET", "/instr", &scenario.headers, b"")
                .map_err(|e| e.to_string())?;
            if response.status != 200 {
                return Err(format!("status {}: {}", response.status, response.text()));
            }
        }
        envoy.instructions_since_last()
    };
    let single = batch(n)?;
    let double = batch(2 * n)?;
    Ok(double.saturating_sub(single) as f64 / n as f64)
}

fn main() -> ExitCode {
    let Some(args) = bench::parse_command_line(parse_args) else {
        return ExitCode::from(2);
    };
    if bench::command_output("valgrind", &["--version"]).is_empty() {
        eprintln!("instr-bench: valgrind is not installed (Debian: apt-get install -y valgrind)");
        return ExitCode::from(2);
    }
    let upstream = match bench::start_upstream("instr-bench") {
        Ok(port) => port,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // First, while nothing else of this run loads the machine: CPU time is
    // the one figure here that moves with the load.
    if !args.skip_compare {
        if let Err(e) = compare::report(&args.peers, upstream) {
            eprintln!("comparison: {e}");
            return ExitCode::FAILURE;
        }
    }
    let peers = match RunningPeers::start(&args.peers, 1_000_000_000) {
        Ok(peers) => peers,
        Err(e) => {
            eprintln!("peers: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.skip_compare {
        if let Some(line) = args.peers.missing() {
            println!("{line}\n");
        }
    }
    println!(
        "\nInstructions per request ({}); {} runs per scenario of N = {} and 2N requests, one keep-alive connection, Envoy --concurrency 1 under callgrind (the rate limit service of a peer runs outside callgrind)\n",
        bench::command_output("valgrind", &["--version"]),
        args.runs,
        args.requests
    );
    println!(
        "| scenario | instructions / request (runs) | median | spread | × plain | over plain |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    let mut plain = None;
    let mut all = scenarios();
    all.extend(peers.iter().flat_map(RunningPeers::scenarios));
    let chosen: Vec<(usize, Scenario)> = all
        .into_iter()
        .enumerate()
        .filter(|(_, scenario)| {
            args.only.is_empty()
                || args
                    .only
                    .iter()
                    .any(|text| scenario.name.contains(text.as_str()))
        })
        .collect();
    // `--runs 0`: the memory table only.
    for (index, scenario) in chosen.iter().filter(|_| args.runs > 0) {
        let envoy = match BenchEnvoy::launch(&scenario.bootstrap, 1, upstream, &Launch::Callgrind) {
            Ok(envoy) => envoy,
            Err(e) => {
                eprintln!("{}: {e}", scenario.name);
                return ExitCode::FAILURE;
            }
        };
        let mut conn = Conn::new(envoy.port());
        for _ in 0..WARMUP {
            let _ = conn.request("GET", "/warm", &scenario.headers, b"");
        }
        let mut runs = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            match one_run(&envoy, &mut conn, scenario, args.requests) {
                Ok(per_request) => runs.push(per_request),
                Err(e) => {
                    eprintln!("{}: {e}", scenario.name);
                    return ExitCode::FAILURE;
                }
            }
        }
        if let Some(dir) = &args.keep_dumps {
            let dest = dir.join(format!("callgrind.scenario-{index}"));
            if let Err(e) = std::fs::create_dir_all(dir)
                .map_err(|e| e.to_string())
                .and_then(|()| envoy.copy_last_dump(&dest))
            {
                eprintln!("{}: {e}", scenario.name);
            }
        }
        let median = bench::median(&runs);
        let (low, high) = bench::min_max(&runs);
        let base = *plain.get_or_insert(median);
        println!(
            "| {} | {} | {:.0} | ±{:.1} % | {:.2} | {:+.0} |",
            scenario.name,
            runs.iter()
                .map(|run| format!("{run:.0}"))
                .collect::<Vec<_>>()
                .join(" / "),
            median,
            (high - low) / 2.0 / median.max(1.0) * 100.0,
            median / base.max(1.0),
            median - base
        );
    }
    if !args.skip_memory {
        let measured: Vec<&Scenario> = chosen
            .iter()
            .map(|(_, scenario)| scenario)
            .filter(|scenario| scenario.memory)
            .collect();
        if let Err(e) = memory::report(&measured, upstream) {
            eprintln!("memory: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
