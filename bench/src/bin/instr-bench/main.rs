//! Instructions per proxied request, counted by callgrind: a figure that
//! does not move with the machine's load, for plain Envoy, the minimal probe
//! filter, tenant-guard's configurations and the Lua + native
//! `local_ratelimit` setup users run today, side by side in one run.
//!
//! ```text
//! apt-get install -y valgrind                     # Debian's valgrind (callgrind, callgrind_control)
//! cargo run --release -p tenant-guard-bench --bin instr-bench -- [--requests N (100)] [--runs R (3)]
//! ```
//!
//! Each scenario is one Envoy (`--concurrency 1`) under `valgrind
//! --tool=callgrind`, in front of the in-process upstream, warmed up with 300
//! requests (V8 compiles the filter's hot code by then). A run counts the
//! instructions of N requests and of 2 N requests (callgrind's counters
//! dumped and zeroed around each batch, one keep-alive connection) and
//! reports (I(2N) − I(N)) / N: what one more request costs, with start-up,
//! warm-up and the batch's fixed costs cancelled. R runs per scenario show
//! the spread (the goal is ±2 %). All of Envoy's threads are counted; the
//! client and the upstream run outside valgrind.

mod memory;

use std::process::ExitCode;

use serde_json::{json, Value};
use tenant_guard_bench::{self as bench, filter_config, BenchEnvoy, Bootstrap, Flags, Launch};
use tenant_guard_e2e::config::set_json;
use tenant_guard_e2e::{probe_wasm_path, Conn};

const TENANT: &str = "x-tenant-id";
const WARMUP: usize = 300;
const USAGE: &str =
    "usage: instr-bench [--requests N (100)] [--runs R (3; 0: memory only)] [--only TEXT]... [--keep-dumps DIR] [--skip-memory]";

struct Args {
    requests: usize,
    runs: usize,
    /// Only the scenarios whose name contains one of these.
    only: Vec<String>,
    /// Keep each scenario's last callgrind dump here (for `callgrind_annotate`).
    keep_dumps: Option<std::path::PathBuf>,
    /// No memory table.
    skip_memory: bool,
}

fn parse_args(flags: &mut Flags) -> Result<Args, String> {
    let mut args = Args {
        requests: 100,
        runs: 3,
        only: Vec::new(),
        keep_dumps: None,
        skip_memory: false,
    };
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--requests" => args.requests = flags.value::<usize>()?.clamp(10, 100_000),
            "--runs" => args.runs = flags.value::<usize>()?.min(20),
            "--only" => args.only.push(flags.value::<String>()?),
            "--skip-memory" => args.skip_memory = true,
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

/// tenant-guard with header tenants; `limits`: the defaults' `rate_limits`.
fn tenant_guard(limits: Option<Value>) -> Bootstrap {
    let mut config = filter_config("instr", None);
    if let Some(limits) = limits {
        set_json(&mut config, &["defaults", "rate_limits"], limits);
    }
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
    let mut ten_thousand = filter_config("instr", None);
    set_json(&mut ten_thousand, &["defaults", "rate_limits"], one.clone());
    let ten_thousand = memory::with_tenants(ten_thousand, 10_000);
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
            lean(tenant_guard(Some(one))),
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
    println!(
        "instr-bench: {}; {} runs per scenario of N = {} and 2N requests, one keep-alive connection, Envoy --concurrency 1 under callgrind\n",
        bench::command_output("valgrind", &["--version"]),
        args.runs,
        args.requests
    );
    println!(
        "| scenario | instructions / request (runs) | median | spread | × plain | over plain |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    let mut plain = None;
    let chosen: Vec<(usize, Scenario)> = scenarios()
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
