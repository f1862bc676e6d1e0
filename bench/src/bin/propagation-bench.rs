//! Propagation benchmark: settings change committed in PostgreSQL → enforced by
//! a running Envoy, through the sync sidecar and the ECDS file.
//!
//! ```text
//! export DATABASE_URL="$(bash tests/postgres.sh)"   # optional: default 127.0.0.1:5432
//! cargo run --release -p tenant-guard-bench --bin propagation-bench -- [--changes N] [--debounce-ms MS]
//! ```
//!
//! Starts the same stack as `tests/sidecar_e2e.rs` (fresh schema, the sidecar
//! loop, a real Envoy on `envoy/ecds.yaml`, an echo upstream), changes one
//! tenant's limit N times (default 20) and prints each latency and p50/p99/max in
//! ms. `--debounce-ms` is the sidecar's NOTIFY coalescing window (default 100,
//! the `run` default). Exits 1 if p99 is not under the 1 s goal.

use std::process::ExitCode;
use std::time::Duration;

use tenant_guard_bench::{self as bench, Flags};
use tenant_guard_e2e::sidecar::{
    database_url, measure_propagation, ms, SidecarStack, StackOptions,
};

const GOAL: Duration = Duration::from_secs(1);

struct Args {
    changes: u64,
    debounce: Duration,
}

fn parse_args(flags: &mut Flags) -> Result<Args, String> {
    let mut args = Args {
        changes: 20,
        debounce: Duration::from_millis(100),
    };
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--changes" => args.changes = flags.value::<u64>()?.max(1),
            "--debounce-ms" => args.debounce = Duration::from_millis(flags.value()?),
            "-h" | "--help" => {
                return Err(
                    "usage: propagation-bench [--changes N (default 20)] [--debounce-ms MS (default 100)]"
                        .to_owned(),
                )
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let Some(args) = bench::parse_command_line(parse_args) else {
        return ExitCode::from(2);
    };
    let url = database_url();
    let shown = url.split('@').next_back().unwrap_or(&url);
    println!(
        "propagation-bench: {} changes, sidecar debounce {} ms, PostgreSQL at {shown}",
        args.changes,
        args.debounce.as_millis()
    );
    println!("starting sidecar + Envoy (building the filter if needed)...");
    let stack = SidecarStack::start_with(&StackOptions {
        debounce: args.debounce,
        ..StackOptions::default()
    });
    println!(
        "schema {}, ECDS dir {}, Envoy pid {}\n",
        stack.settings.schema(),
        stack.ecds_dir().display(),
        stack.envoy.pid()
    );
    println!("change  commit->file  commit->enforced  (incl. psql client)");
    let report = measure_propagation(
        &stack,
        "bench",
        100_000,
        args.changes,
        Duration::from_secs(10),
        |i, s| {
            println!(
                "{i:>6}  {:>9.1} ms  {:>13.1} ms  {:>12.1} ms",
                ms(s.to_file),
                ms(s.to_enforced),
                ms(s.with_client)
            );
        },
    );
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            eprintln!("propagation-bench: {e}\n{}", stack.envoy.log_tail(40));
            return ExitCode::FAILURE;
        }
    };
    let (enforced, file, client) = (report.enforced(), report.to_file(), report.with_client());
    println!();
    println!("                      p50        p99        max");
    for (label, p) in [
        ("commit -> ECDS file", file),
        ("commit -> enforced", enforced),
        ("incl. psql client", client),
    ] {
        println!(
            "{label:<20} {:>7.1} ms {:>7.1} ms {:>7.1} ms",
            ms(p.p50),
            ms(p.p99),
            ms(p.max)
        );
    }
    if enforced.p99 < GOAL {
        println!(
            "\nOK: p99 {:.1} ms < {} ms goal",
            ms(enforced.p99),
            GOAL.as_millis()
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "\nFAIL: p99 {:.1} ms is not under the {} ms goal",
            ms(enforced.p99),
            GOAL.as_millis()
        );
        ExitCode::FAILURE
    }
}
