//! Fleet report: three Envoy replicas (`--concurrency 2` each, started by the
//! e2e harness) in `store.backend: local` (every replica alone), in
//! `store.backend: cluster` (a store sidecar per replica, one fresh
//! standalone Redis), and in cluster mode with that Redis killed after the
//! warm-up — side by side in one table.
//!
//! ```text
//! sudo apt-get install -y wrk        # Debian's wrk
//! cargo run --release -p tenant-guard-bench --bin fleet-report -- \
//!     [--duration S (5)] [--connections C (8)] [--modes local,cluster,down (all)]
//! ```
//!
//! Method, per mode (one mode's processes at a time; all on this machine):
//!
//! 1. **Throughput.** After a 1 s warm-up (and, for "Redis down", the kill and
//!    a second warm-up, so the fallback is engaged), one `wrk -t1 -cC -dS
//!    --latency` per replica, all three started together, for a tenant whose
//!    limit (10 M per hour) never rejects. req/s is the sum of the three;
//!    p50 and p99 are the *worst replica's* (wrk histograms cannot be
//!    merged); Envoy CPU is the sum of the three Envoys' `utime + stime`
//!    deltas ÷ all requests; sidecars + Redis CPU likewise (found in `/proc`
//!    by their command lines); store round trips per 100 requests is the sum of
//!    the `tenant_guard_store_round_trips` deltas (Envoy admin, read once the
//!    workers' once-a-second flush settled) ÷ requests × 100.
//! 2. **Exactness.** A tenant with 200 per 3600 s (burst 200) hammered by the
//!    same wrk load (with a status-counting Lua script) on all three replicas
//!    for S s. Allowed = the burst (GCRA frees one slot every 18 s, so none
//!    within runs shorter than that; longer runs add ⌊t/18 s⌋). With Redis
//!    down every replica enforces its `fallback_share_percent` (34 %) share
//!    alone: allowed = 3 × ⌊200 × 34 %⌋ (+ its refill). LOCAL admits ~3 × the
//!    limit: the problem cluster mode fixes.
//!    **Monthly quota.** The same load on a tenant with 200 per calendar
//!    month (`rate_limits`, `per: month`): allowed = 200 (nothing refills
//!    within a month); with Redis down, 3 × ⌊200 × 34 %⌋.
//! 3. **Executions per key.** K = 50 Idempotency-Keys, each POSTed at the
//!    same moment to every replica (one std TCP client thread per key and
//!    replica, one barrier); key n goes to `/orders/<n>` on the e2e
//!    `Backend`, which answers 201 after 100 ms and counts complete requests
//!    per path: executions of key n = its count.
//! 4. **Traffic shapes** (cluster mode only; `tenant_guard_e2e::shapes`, the
//!    same the e2e suite asserts): a storm over every replica, a storm on one,
//!    a burst on one then steady traffic on the others, two tenants at once,
//!    each for a long window (200 / h) and a short one (100 / 10 s): admitted ÷
//!    allowed (allowed = burst + GCRA refill over the run) and the sidecars'
//!    Redis calls per 100 requests of the shape.
//!
//! Exit status 1 if, in a cluster mode, admitted > allowed (or, for a shape,
//! admitted ÷ allowed is outside 0.95–1.00), a key executed
//! more than once, a throughput answer was not 2xx, an exactness answer was
//! neither 200 nor 429, an idempotent POST got anything but 201 / 409 (Redis
//! up) or anything but 503 (Redis down). The same checks are shown for LOCAL
//! but do not set the exit status (it makes no fleet-wide promise).

mod fleet;
mod measure;
mod wrk;

use std::fmt::Write as _;
use std::fs;
use std::process::ExitCode;
use std::time::Instant;

use tenant_guard_bench::{
    self as bench, clock_ticks_per_second, command_output, Flags, STATUS_SCRIPT,
};
use tenant_guard_e2e::rolling::sidecar_binary;
use tenant_guard_e2e::tempdir::TempDir;
use tenant_guard_e2e::{envoy_binary, wasm_path};

use fleet::{install_cleanup_hook, Fleet, Mode};
use measure::{Exactness, Executions, Throughput};

type Res<T> = Result<T, String>;

const REPLICAS: usize = 3;
const BULK_TENANT: &str = "bulk";
const EXACT_TENANT: &str = "exact";
const ORDERS_TENANT: &str = "orders";
/// The exactness tenant's limit per 3600 s (burst the same).
const EXACT_LIMIT: u64 = 200;
const QUOTA_TENANT: &str = "quota";
/// The quota tenant's limit per calendar month (UTC).
const QUOTA_LIMIT: u64 = 200;
/// Each replica's share of a limit while the store is away.
const SHARE_PERCENT: u64 = 34;
/// Idempotency-Keys in the executions-per-key measurement.
const KEYS: usize = 50;

#[derive(Debug)]
struct Args {
    duration: u64,
    connections: u32,
    /// The modes to run (all by default).
    modes: Vec<Mode>,
}

fn parse_args(flags: &mut Flags) -> Res<Args> {
    let mut args = Args {
        duration: 5,
        connections: 8,
        modes: Mode::ALL.to_vec(),
    };
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--duration" => args.duration = flags.value::<u64>()?.clamp(1, 60),
            "--connections" => {
                args.connections = u32::try_from(flags.value::<u64>()?.clamp(1, 256)).unwrap_or(8)
            }
            "--modes" => {
                args.modes = flags
                    .value::<String>()?
                    .split(',')
                    .map(|name| match name.trim() {
                        "local" => Ok(Mode::Local),
                        "cluster" => Ok(Mode::Cluster),
                        "down" => Ok(Mode::RedisDown),
                        other => Err(format!("--modes: unknown mode `{other}` (local, cluster, down)")),
                    })
                    .collect::<Res<Vec<_>>>()?;
            }
            "-h" | "--help" => {
                return Err(
                    "usage: fleet-report [--duration S (5)] [--connections C (8)] [--modes local,cluster,down (all)]".to_owned(),
                )
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    Ok(args)
}

/// Everything measured in one mode.
struct Outcome {
    mode: Mode,
    throughput: Throughput,
    exactness: Exactness,
    quota: Exactness,
    executions: Executions,
    /// [`STORE_COUNTERS`] totals at the end of the mode.
    counters: [u64; 5],
    /// The sidecar / Redis processes whose CPU was found.
    helpers: usize,
    /// Cluster mode: every traffic shape.
    shapes: Vec<measure::ShapeRun>,
}

fn run_mode(mode: Mode, args: &Args, ticks: u64, script: &std::path::Path) -> Res<Outcome> {
    eprintln!(
        "fleet-report: {}: starting {REPLICAS} replicas...",
        mode.label()
    );
    let mut fleet = Fleet::start(mode, REPLICAS)?;
    measure::warm_up(&fleet, args).map_err(|e| format!("warm-up: {e}"))?;
    if mode == Mode::RedisDown {
        fleet.kill_redis()?;
        measure::warm_up(&fleet, args).map_err(|e| format!("warm-up after the kill: {e}"))?;
    }
    eprintln!("fleet-report: {}: throughput...", mode.label());
    let throughput =
        measure::throughput(&fleet, args, ticks).map_err(|e| format!("throughput: {e}"))?;
    eprintln!("fleet-report: {}: exactness...", mode.label());
    let exactness = measure::exactness(&fleet, mode, args, script, measure::Limited::Rate)
        .map_err(|e| format!("exactness: {e}"))?;
    eprintln!("fleet-report: {}: monthly quota...", mode.label());
    let quota = measure::exactness(&fleet, mode, args, script, measure::Limited::MonthlyQuota)
        .map_err(|e| format!("monthly quota: {e}"))?;
    eprintln!("fleet-report: {}: executions per key...", mode.label());
    let executions = measure::executions(&fleet, mode).map_err(|e| format!("idempotency: {e}"))?;
    let shapes = if mode == Mode::Cluster {
        eprintln!("fleet-report: {}: traffic shapes...", mode.label());
        measure::shapes(&fleet).map_err(|e| format!("shapes: {e}"))?
    } else {
        Vec::new()
    };
    let counters = fleet.store_counters()?;
    Ok(Outcome {
        mode,
        throughput,
        exactness,
        quota,
        executions,
        counters,
        helpers: fleet.helpers_found(),
        shapes,
    })
}

/// What must hold in `outcome`'s mode; the violations.
fn violations(outcome: &Outcome) -> Vec<String> {
    let mut bad = Vec::new();
    let (t, e, x) = (
        &outcome.throughput.wrk,
        &outcome.exactness,
        &outcome.executions,
    );
    if t.non_2xx > 0 {
        bad.push(format!(
            "{} non-2xx answers in the throughput run",
            t.non_2xx
        ));
    }
    let q = &outcome.quota;
    for (what, run) in [("exactness", e), ("monthly quota", q)] {
        if !run.other.is_empty() {
            bad.push(format!(
                "{what} statuses other than 200/429: {:?}",
                run.other
            ));
        }
    }
    match outcome.mode {
        Mode::Local => {}
        Mode::Cluster => {
            if e.admitted > e.allowed {
                bad.push(format!("{} admitted, {} allowed", e.admitted, e.allowed));
            }
            if q.admitted != q.allowed {
                bad.push(format!(
                    "monthly quota: {} admitted, {} allowed",
                    q.admitted, q.allowed
                ));
            }
            if x.max_per_key > 1 {
                bad.push(format!("a key executed {} times", x.max_per_key));
            }
            for outcome in outcome.shapes.iter().flat_map(|run| &run.outcomes) {
                if !outcome.holds() {
                    bad.push(format!("shape outside 0.95–1.00: {}", outcome.line()));
                }
            }
            let unexpected: Vec<_> = x
                .statuses
                .keys()
                .filter(|s| !s.starts_with("201") && !s.starts_with("409"))
                .collect();
            if !unexpected.is_empty() {
                bad.push(format!("idempotent POST statuses {unexpected:?}"));
            }
        }
        Mode::RedisDown => {
            for (what, run) in [("rate", e), ("monthly quota", q)] {
                if run.admitted > run.allowed {
                    bad.push(format!(
                        "{what}: {} admitted, the shares allow {}",
                        run.admitted, run.allowed
                    ));
                }
            }
            if x.max_per_key > 1 {
                bad.push(format!("a key executed {} times", x.max_per_key));
            }
            let not_503: u64 = x
                .statuses
                .iter()
                .filter(|(s, _)| !s.starts_with("503"))
                .map(|(_, n)| n)
                .sum();
            if not_503 > 0 || x.total > 0 {
                bad.push(format!(
                    "idempotent POSTs with Redis down: {not_503} not 503, {} executed",
                    x.total
                ));
            }
        }
    }
    bad
}

fn statuses_text(statuses: &std::collections::BTreeMap<String, u64>) -> String {
    statuses
        .iter()
        .map(|(status, n)| format!("{status} × {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn table(outcomes: &[Outcome], out: &mut String) {
    let header: Vec<&str> = outcomes.iter().map(|o| o.mode.label()).collect();
    let _ = writeln!(out, "| | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(outcomes.len()));
    let row = |out: &mut String, name: &str, cell: &dyn Fn(&Outcome) -> String| {
        let cells: Vec<String> = outcomes.iter().map(cell).collect();
        let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
    };
    row(out, "**1. throughput** req/s (3 replicas)", &|o| {
        format!(
            "{:.0} ({} requests)",
            o.throughput.wrk.rps, o.throughput.wrk.requests
        )
    });
    row(out, "p50 µs (worst replica)", &|o| {
        format!("{:.0}", o.throughput.wrk.p50_us)
    });
    row(out, "p99 µs (worst replica)", &|o| {
        format!("{:.0}", o.throughput.wrk.p99_us)
    });
    row(out, "Envoy CPU µs/request (3 Envoys)", &|o| {
        format!("{:.1}", o.throughput.envoy_cpu_us)
    });
    row(out, "sidecars + Redis CPU µs/request", &|o| {
        o.throughput.helper_cpu_us.map_or_else(
            || "–".to_owned(),
            |cpu| format!("{cpu:.1} ({} proc.)", o.helpers),
        )
    });
    row(
        out,
        "store round trips / 100 requests (filter → sidecar)",
        &|o| format!("{:.2}", o.throughput.round_trips_per_100),
    );
    row(
        out,
        "Redis calls / 100 requests (sidecars → Redis)",
        &|o| format!("{:.2}", o.throughput.redis_per_100),
    );
    row(out, "non-2xx", &|o| o.throughput.wrk.non_2xx.to_string());
    row(out, "**2. exactness** requests sent", &|o| {
        format!("{} in {:.1} s", o.exactness.sent, o.exactness.seconds)
    });
    row(out, "admitted (200)", &|o| o.exactness.admitted.to_string());
    row(out, "429 / other", &|o| {
        let other: u64 = o.exactness.other.values().sum();
        format!("{} / {other}", o.exactness.limited)
    });
    row(out, "allowed", &|o| match o.mode {
        Mode::RedisDown => format!("{} (3 × {SHARE_PERCENT} %)", o.exactness.allowed),
        _ => o.exactness.allowed.to_string(),
    });
    row(out, "admitted ÷ allowed", &|o| {
        format!(
            "**{:.2}**",
            o.exactness.admitted as f64 / o.exactness.allowed.max(1) as f64
        )
    });
    row(out, "upstream saw", &|o| o.exactness.upstream.to_string());
    row(
        out,
        &format!("**2b. monthly quota** ({QUOTA_LIMIT} per calendar month) sent"),
        &|o| format!("{} in {:.1} s", o.quota.sent, o.quota.seconds),
    );
    row(out, "admitted (200) / allowed", &|o| {
        format!("{} / {}", o.quota.admitted, o.quota.allowed)
    });
    row(out, "admitted ÷ allowed (quota)", &|o| {
        format!(
            "**{:.2}**",
            o.quota.admitted as f64 / o.quota.allowed.max(1) as f64
        )
    });
    row(out, "**3. executions per key** (K = 50, mean)", &|o| {
        format!(
            "**{:.2}**",
            o.executions.total as f64 / o.executions.keys.max(1) as f64
        )
    });
    row(out, "max executions of one key", &|o| {
        o.executions.max_per_key.to_string()
    });
    row(out, "POST answers", &|o| {
        statuses_text(&o.executions.statuses)
    });
    row(
        out,
        "store counters at the end: round trips / failures / fallbacks / down / recovered",
        &|o| {
            if o.mode.is_cluster() {
                o.counters
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" / ")
            } else {
                "–".to_owned()
            }
        },
    );
    row(out, "check", &|o| {
        let bad = violations(o);
        if bad.is_empty() {
            if o.mode.is_cluster() {
                "ok".to_owned()
            } else {
                "(no guarantee)".to_owned()
            }
        } else {
            format!("**FAIL**: {}", bad.join("; "))
        }
    });
}

/// Section 4: admitted ÷ allowed per traffic shape and window, with the
/// Redis calls per 100 requests of each shape.
fn shapes_table(outcomes: &[Outcome], out: &mut String) {
    let Some(cluster) = outcomes.iter().find(|o| !o.shapes.is_empty()) else {
        return;
    };
    let _ = writeln!(
        out,
        "\n**4. traffic shapes** ({}; long window 200 / h, short 100 / 10 s; allowed = burst + GCRA refill over the run)\n",
        cluster.mode.label()
    );
    let _ = writeln!(
        out,
        "| shape | tenant | sent | admitted | allowed | admitted ÷ allowed | upstream saw | Redis calls / 100 requests (shape) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|");
    for run in &cluster.shapes {
        for outcome in &run.outcomes {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | **{:.3}**{} | {} | {:.2} |",
                outcome.shape.label(),
                outcome.tenant,
                outcome.sent,
                outcome.admitted,
                outcome.allowed,
                outcome.ratio(),
                if outcome.holds() { "" } else { " **FAIL**" },
                outcome.upstream,
                run.redis_per_100
            );
        }
    }
}

fn run(args: &Args) -> Res<bool> {
    let total = Instant::now();
    eprintln!("fleet-report: building the filter and the sidecar if needed...");
    let wasm = wasm_path();
    let sidecar = sidecar_binary();
    let ticks = clock_ticks_per_second();
    let envoy_version = command_output(envoy_binary(), &["--version"]);
    let redis_version = command_output("redis-server", &["--version"]);
    let dirty = command_output(
        "git",
        &["status", "--porcelain", "--", "filter", "sync-sidecar"],
    );
    let dir = TempDir::new("fleet-report").map_err(|e| e.to_string())?;
    let script = dir.path().join("statuses.lua");
    fs::write(&script, STATUS_SCRIPT).map_err(|e| e.to_string())?;

    let mut out = String::new();
    let _ = writeln!(out, "## fleet-report\n");
    let _ = writeln!(
        out,
        "- command: `cargo run --release -p tenant-guard-bench --bin fleet-report -- --duration {} --connections {}{}`",
        args.duration,
        args.connections,
        if args.modes == Mode::ALL {
            String::new()
        } else {
            let names: Vec<&str> = args.modes.iter().map(|m| m.flag()).collect();
            format!(" --modes {}", names.join(","))
        }
    );
    let _ = writeln!(
        out,
        "- date: {}; git {}{}",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        command_output("git", &["rev-parse", "--short", "HEAD"]),
        if dirty.is_empty() {
            ""
        } else {
            " + uncommitted changes under filter/, sync-sidecar/"
        },
    );
    let _ = writeln!(
        out,
        "- machine: {} CPUs (`nproc`), Linux {}; everything below shares them",
        std::thread::available_parallelism().map_or(0, usize::from),
        command_output("uname", &["-r"]),
    );
    let _ = writeln!(
        out,
        "- Envoy: {}; {REPLICAS} replicas, `--concurrency 2` each",
        envoy_version.lines().last().map_or("?", |line| line
            .split_once("version: ")
            .map_or(line, |(_, v)| v))
    );
    let _ = writeln!(
        out,
        "- filter: `{}`; store sidecar: `{}`; Redis: {}",
        wasm.display(),
        sidecar.display(),
        if redis_version.is_empty() {
            "?"
        } else {
            &redis_version
        }
    );
    let _ = writeln!(
        out,
        "- load: one `wrk -t1 -c{} -d{}s --latency` per replica, all started together; upstream: the e2e `Backend`\n",
        args.connections, args.duration
    );
    print!("{out}");
    out.clear();

    let mut outcomes = Vec::new();
    for &mode in &args.modes {
        outcomes.push(
            run_mode(mode, args, ticks, &script).map_err(|e| format!("{}: {e}", mode.label()))?,
        );
    }
    table(&outcomes, &mut out);
    shapes_table(&outcomes, &mut out);
    let by_mode = |mode: Mode| outcomes.iter().find(|o| o.mode == mode);
    if let (Some(local), Some(cluster)) = (by_mode(Mode::Local), by_mode(Mode::Cluster)) {
        let _ = writeln!(
            out,
            "\nSummary: cluster mode adds {:+.0} µs to the p99 (worst replica: {:.0} vs {:.0} µs local), \
             {:+.1} Envoy CPU µs/request, and makes {:.2} store round trips per 100 requests; \
             exactness {:.2} × the limit (local {:.2} ×), {:.2} executions per key (local {:.2}).",
            cluster.throughput.wrk.p99_us - local.throughput.wrk.p99_us,
            cluster.throughput.wrk.p99_us,
            local.throughput.wrk.p99_us,
            cluster.throughput.envoy_cpu_us - local.throughput.envoy_cpu_us,
            cluster.throughput.round_trips_per_100,
            cluster.exactness.admitted as f64 / cluster.exactness.allowed.max(1) as f64,
            local.exactness.admitted as f64 / local.exactness.allowed.max(1) as f64,
            cluster.executions.total as f64 / cluster.executions.keys.max(1) as f64,
            local.executions.total as f64 / local.executions.keys.max(1) as f64,
        );
    }
    for outcome in &outcomes {
        for errors in outcome.throughput.wrk.socket_errors.lines() {
            let _ = writeln!(out, "<!-- {}: {errors} -->", outcome.mode.label());
        }
    }
    let _ = writeln!(
        out,
        "\ntotal fleet-report time: {:.0} s",
        total.elapsed().as_secs_f64()
    );
    print!("{out}");
    Ok(outcomes
        .iter()
        .filter(|o| o.mode.is_cluster())
        .all(|o| violations(o).is_empty()))
}

fn main() -> ExitCode {
    let Some(args) = bench::parse_command_line(parse_args) else {
        return ExitCode::from(2);
    };
    install_cleanup_hook();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("fleet-report: cluster mode broke a guarantee (see the table)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fleet-report: {e}");
            ExitCode::FAILURE
        }
    }
}
