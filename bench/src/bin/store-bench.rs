//! Store endpoint speed: calls per second, p50 / p99 per call and CPU per
//! call of the store sidecar (`tenant-guard-sidecar store`) in front of a
//! fresh local Redis, for several sidecar builds side by side in one run.
//!
//! ```text
//! cargo run --release -p tenant-guard-bench --bin store-bench -- \
//!     --sidecar target/release/tenant-guard-sidecar \
//!     --sidecar target/sidecar/tenant-guard-sidecar \
//!     [--calls N (20000)] [--connections C (4)] [--rounds R (5)]
//! ```
//!
//! Every build gets its own sidecar process on the same Redis; rounds are
//! interleaved (A B A B …) so that other load on the machine hits every
//! build alike. Each round sends N / R `POST /v1/lease` calls (one slot of a
//! limit with room for all of them, so every call runs the whole lease
//! script) over C keep-alive connections, one thread each. Latency is the
//! client's (all rounds, sorted); CPU is the sidecar's `utime + stime` and
//! schedstat run time per call (median over rounds; Redis's CPU is the same
//! work for every build and is printed once). The first build is the
//! baseline of the ratios.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;
use tenant_guard_bench::{
    self as bench, clock_ticks_per_second, file_labels, median, CpuTime, Flags,
};
use tenant_guard_e2e::fleet::{RedisTarget, StoreSidecar};
use tenant_guard_e2e::Conn;
use tenant_guard_sidecar::test_support::RedisServer;

struct Args {
    sidecars: Vec<PathBuf>,
    calls: usize,
    connections: usize,
    rounds: usize,
}

fn parse_args(flags: &mut Flags) -> Result<Args, String> {
    let mut args = Args {
        sidecars: Vec::new(),
        calls: 20_000,
        connections: 4,
        rounds: 5,
    };
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--sidecar" => args.sidecars.push(flags.existing_file()?),
            "--calls" => args.calls = flags.value::<usize>()?.max(100),
            "--connections" => args.connections = flags.value::<usize>()?.clamp(1, 64),
            "--rounds" => args.rounds = flags.value::<usize>()?.clamp(1, 100),
            "-h" | "--help" => {
                return Err("usage: store-bench --sidecar BIN [--sidecar BIN]... [--calls N (20000)] [--connections C (4)] [--rounds R (5)]".to_owned())
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    if args.sidecars.is_empty() {
        return Err("give at least one --sidecar BIN (see --help)".to_owned());
    }
    Ok(args)
}

/// One build under test and what was measured of it.
struct Measured {
    label: String,
    store: StoreSidecar,
    latencies: Vec<Duration>,
    wall: Duration,
    cpu_stat: Vec<f64>,
    cpu_ns: Vec<f64>,
    errors: usize,
}

/// `calls` lease calls over `connections` connections to `port`.
fn round(port: u16, calls: usize, connections: usize, limit: &str) -> (Vec<Duration>, usize) {
    let body = json!({
        "scope": "bench", "limit": limit,
        "emission_us": 1, "capacity_us": 1_000_000_000_000_u64,
        "want": 1, "need": 1
    })
    .to_string();
    let per_connection = calls.div_ceil(connections);
    let handles: Vec<_> = (0..connections)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::new(port);
                let mut latencies = Vec::with_capacity(per_connection);
                let mut errors = 0;
                for _ in 0..per_connection {
                    let started = Instant::now();
                    let answer = conn.request(
                        "POST",
                        "/v1/lease",
                        &[("content-type", "application/json")],
                        body.as_bytes(),
                    );
                    latencies.push(started.elapsed());
                    if !matches!(answer, Ok(ref response) if response.status == 200) {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|handle| handle.join().unwrap_or_else(|_| (Vec::new(), 1)))
        .fold((Vec::new(), 0), |(mut all, errors), (latencies, more)| {
            all.extend(latencies);
            (all, errors + more)
        })
}

fn main() -> ExitCode {
    let Some(args) = bench::parse_command_line(parse_args) else {
        return ExitCode::from(2);
    };
    let ticks = clock_ticks_per_second();
    let redis = RedisServer::start();
    let target = RedisTarget::Standalone(redis.url());
    let mut measured: Vec<Measured> = args
        .sidecars
        .iter()
        .zip(file_labels(&args.sidecars))
        .map(|(binary, label)| Measured {
            label,
            store: StoreSidecar::start_binary(binary, &target),
            latencies: Vec::new(),
            wall: Duration::ZERO,
            cpu_stat: Vec::new(),
            cpu_ns: Vec::new(),
            errors: 0,
        })
        .collect();
    println!(
        "store-bench: {} calls per build ({} interleaved rounds) over {} keep-alive connection(s); `POST /v1/lease`, one slot each; Redis {}",
        args.calls,
        args.rounds,
        args.connections,
        bench::command_output("redis-server", &["--version"])
    );
    // Warm up: connections, script loading, the limit's key.
    for one in &measured {
        let _ = round(one.store.port(), 200, args.connections, "warm");
    }
    let per_round = args.calls.div_ceil(args.rounds);
    for number in 0..args.rounds {
        for offset in 0..measured.len() {
            let index = (number + offset) % measured.len();
            let Some(one) = measured.get_mut(index) else {
                continue;
            };
            let Some(pid) = one.store.pid() else {
                eprintln!("{}: the sidecar is gone", one.label);
                return ExitCode::FAILURE;
            };
            let before = CpuTime::of(pid);
            let started = Instant::now();
            let (latencies, errors) = round(
                one.store.port(),
                per_round,
                args.connections,
                &format!("l{index}"),
            );
            one.wall += started.elapsed();
            if let (Ok(before), Ok(after)) = (before, CpuTime::of(pid)) {
                let (stat, ns) = after.us_per_request_since(&before, ticks, latencies.len() as f64);
                one.cpu_stat.push(stat);
                one.cpu_ns.push(ns);
            }
            one.latencies.extend(latencies);
            one.errors += errors;
        }
        println!("  round {}/{} done", number + 1, args.rounds);
    }
    println!();
    println!("| sidecar build | calls | calls/s | × first | p50 µs | p99 µs | sidecar CPU µs/call (stat, median) | (schedstat, median) | × first | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut first: Option<(f64, f64)> = None;
    let mut failed = false;
    for one in &mut measured {
        one.latencies.sort_unstable();
        let rate = one.latencies.len() as f64 / one.wall.as_secs_f64().max(1e-9);
        let cpu_ns = median(&one.cpu_ns);
        let (base_rate, base_cpu) = *first.get_or_insert((rate, cpu_ns));
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.0} | {:.0} | {:.1} | {:.1} | {:.2} | {} |",
            one.label,
            one.latencies.len(),
            rate,
            rate / base_rate.max(1e-9),
            bench::percentile_us(&one.latencies, 0.50),
            bench::percentile_us(&one.latencies, 0.99),
            median(&one.cpu_stat),
            cpu_ns,
            cpu_ns / base_cpu.max(1e-9),
            one.errors
        );
        failed |= one.errors > 0;
    }
    for one in &mut measured {
        one.store.stop();
    }
    if failed {
        eprintln!("store-bench: some calls were not answered 200");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
