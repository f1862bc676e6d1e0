//! fleet-report's `wrk` runs: one process per replica, all spawned before any
//! is waited for, and their reports combined into one ([`run_wrk_all`]). The
//! command line, the status-counting script and the report parser are the
//! library's (`tenant_guard_bench::wrk`).

use std::path::Path;
use std::process::Child;

use tenant_guard_bench::{cannot_run_wrk, wrk_command, wrk_output, WrkResult};

use super::Res;

/// What the wrk processes of one run do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load<'a> {
    pub(crate) seconds: u64,
    pub(crate) connections: u32,
    pub(crate) tenant: &'a str,
    pub(crate) path: &'a str,
    pub(crate) script: Option<&'a Path>,
}

fn spawn(port: u16, load: &Load<'_>) -> Res<Child> {
    wrk_command(load.connections, load.seconds, load.script)
        .arg("-H")
        .arg(format!("x-tenant-id: {}", load.tenant))
        .arg(format!("http://127.0.0.1:{port}{}", load.path))
        .spawn()
        .map_err(cannot_run_wrk)
}

/// The reports of processes run at once, as one: requests, req/s, non-2xx
/// and statuses summed; p50 and p99 the worst process's (wrk histograms
/// cannot be merged); the socket-error lines one per line.
fn combine(results: &[WrkResult]) -> WrkResult {
    let mut all = WrkResult::default();
    for result in results {
        all.requests += result.requests;
        all.rps += result.rps;
        all.p50_us = all.p50_us.max(result.p50_us);
        all.p99_us = all.p99_us.max(result.p99_us);
        all.non_2xx += result.non_2xx;
        if !result.socket_errors.is_empty() {
            if !all.socket_errors.is_empty() {
                all.socket_errors.push('\n');
            }
            all.socket_errors.push_str(&result.socket_errors);
        }
        for (status, count) in &result.statuses {
            *all.statuses.entry(*status).or_default() += count;
        }
    }
    all
}

/// Runs `load` against every port at once; their reports [`combine`]d.
pub(crate) fn run_wrk_all(ports: &[u16], load: &Load<'_>) -> Res<WrkResult> {
    let mut children = Vec::new();
    for &port in ports {
        match spawn(port, load) {
            Ok(child) => children.push((port, child)),
            Err(e) => {
                for (_, mut child) in children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(e);
            }
        }
    }
    // Wait for every process before judging any, so none is left running.
    let outputs: Vec<_> = children
        .into_iter()
        .map(|(port, child)| (port, child.wait_with_output()))
        .collect();
    let results = outputs
        .into_iter()
        .map(|(port, output)| {
            let output = output.map_err(|e| format!("wrk on port {port}: {e}"))?;
            wrk_output(&output).map_err(|e| format!("port {port}: {e}"))
        })
        .collect::<Res<Vec<_>>>()?;
    Ok(combine(&results))
}
