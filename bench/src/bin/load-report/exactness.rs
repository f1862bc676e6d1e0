//! Rate-limit exactness under load: one tenant with a limit of N per day, hit by
//! `wrk`, on the filter (shared-data CAS) and on Envoy's native `local_ratelimit`;
//! admitted requests must not exceed what the limit allows.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tenant_guard_bench::{filter_config, BenchEnvoy, Bootstrap};
use tenant_guard_e2e::config::set_json;
use tenant_guard_e2e::wait_until;

use super::wrk::{run_wrk, Load};
use super::{lua, Args, Res, TENANT};

pub(crate) fn exactness(args: &Args, upstream: u16, script: &Path, out: &mut String) -> Res<bool> {
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
    set_json(
        &mut config,
        &["tenants", tenant],
        json!({"rate_limit": {"requests": n, "per_seconds": window}}),
    );
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
