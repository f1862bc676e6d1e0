//! Load and exactness report (issue 6, item 3): plain Envoy vs Envoy + the
//! tenant-guard filter (per feature set) vs Envoy's native `local_ratelimit` +
//! a Lua correlation-id filter, under `wrk` load on loopback; rate-limit
//! exactness under the same load; and the cost of a 10 000-tenant config.
//!
//! ```text
//! sudo apt-get install -y wrk        # Debian's wrk
//! cargo run --release -p tenant-guard-bench --bin load-report -- \
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

mod exactness;
mod tenants;
mod wrk;

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use serde_json::json;
use tenant_guard_bench::{
    self as bench, clock_ticks_per_second, command_output, file_labels, file_size, filter_config,
    median, min_max, rss_kib, with_jwt, BenchEnvoy, Bootstrap, CpuTime, Flags, STATUS_SCRIPT,
};
use tenant_guard_core::config;
use tenant_guard_core::engine::{self, HostInputs, RequestView};
use tenant_guard_core::store::MemoryStore;
use tenant_guard_e2e::config::set_json;
use tenant_guard_e2e::tempdir::TempDir;
use tenant_guard_e2e::{envoy_binary, probe_wasm_path, wasm_path};

use exactness::exactness;
use tenants::ten_thousand;
use wrk::{run_wrk, Load};

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

/// The Lua + native `local_ratelimit` baseline: tenant `TENANT` gets `tokens` per `fill_seconds`.
fn lua(tokens: u64, fill_seconds: u64) -> Bootstrap {
    Bootstrap::Lua {
        tenant: TENANT.to_owned(),
        tokens,
        fill_seconds,
    }
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
    set_json(
        &mut lean,
        &["headers"],
        json!({ "revision": false, "rate_limit": "on_reject" }),
    );
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
    for (wasm, file) in compare_wasm.iter().zip(file_labels(compare_wasm)) {
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
