//! Envoy's memory per worker for each scenario: VmRSS after start-up and
//! traffic at 1, 2 and 4 workers, against the minimal probe filter at the same
//! worker count (the goal: tenant-guard ≤ the probe + 8 MiB per worker), and
//! with a 10 000-tenant plugin config.

use serde_json::{json, Map, Value};
use tenant_guard_bench::{file_size, rss_kib, BenchEnvoy};
use tenant_guard_e2e::{wasm_path, Conn};

use super::Scenario;

/// Requests each Envoy gets (over [`CONNECTIONS`] connections, so that both
/// workers serve some) before its RSS is read.
const REQUESTS: usize = 400;
const CONNECTIONS: usize = 4;
/// Worker counts measured (`--concurrency`).
const WORKERS: [u32; 3] = [1, 2, 4];
/// The goal of issue 24 item 6, per worker.
const GOAL_MIB_PER_WORKER: f64 = 8.0;

/// `config` with `tenants` configured tenants (`t00000`…), each with its own
/// rate limit (high enough never to refuse here): the size of the largest
/// configs users run.
pub fn with_tenants(mut config: Value, tenants: usize) -> Value {
    let entries: Map<String, Value> = (0..tenants)
        .map(|i| {
            (
                format!("t{i:05}"),
                json!({"rate_limit": {"requests": 1_000_000 + i, "per_seconds": 60}}),
            )
        })
        .collect();
    if let Some(object) = config.as_object_mut() {
        object.insert("tenants".to_owned(), Value::Object(entries));
    }
    config
}

/// RSS in MiB of one Envoy running `scenario` with `workers` workers, after traffic.
fn rss_mib(scenario: &Scenario, workers: u32, upstream: u16) -> Result<f64, String> {
    let envoy = BenchEnvoy::start(&scenario.bootstrap, workers, upstream)?;
    let mut conns: Vec<Conn> = (0..CONNECTIONS).map(|_| Conn::new(envoy.port())).collect();
    for i in 0..REQUESTS {
        if let Some(conn) = conns.get_mut(i % CONNECTIONS) {
            let response = conn
                .request("GET", "/memory", &scenario.headers, b"")
                .map_err(|e| e.to_string())?;
            if response.status != 200 {
                return Err(format!("status {}: {}", response.status, response.text()));
            }
        }
    }
    Ok(rss_kib(envoy.pid()) as f64 / 1024.0)
}

/// Prints the memory table for `scenarios` (the probe among them is the
/// reference; rows before it have no "over the probe" figure).
pub fn report(scenarios: &[&Scenario], upstream: u16) -> Result<(), String> {
    println!(
        "\nMemory (VmRSS after {REQUESTS} requests over {CONNECTIONS} connections; tenant-guard's module {}):\n",
        file_size(&wasm_path())
    );
    println!(
        "| scenario | RSS, {} | each further worker | over the probe per worker ({}) |",
        WORKERS.map(|n| format!("{n} worker(s)")).join(" | RSS, "),
        WORKERS.map(|n| n.to_string()).join(" / ")
    );
    println!("|---|{}---:|---:|", "---:|".repeat(WORKERS.len()));
    let mut probe: Option<[f64; WORKERS.len()]> = None;
    for scenario in scenarios {
        let mut rss = [0.0; WORKERS.len()];
        for (slot, workers) in rss.iter_mut().zip(WORKERS) {
            *slot = rss_mib(scenario, workers, upstream)?;
        }
        if scenario.is_probe {
            probe = Some(rss);
        }
        let over = match probe {
            Some(probe) if !scenario.is_probe => {
                let per_worker: Vec<f64> = rss
                    .iter()
                    .zip(probe)
                    .zip(WORKERS)
                    .map(|((own, probe), workers)| (own - probe) / f64::from(workers))
                    .collect();
                let worst = per_worker.iter().copied().fold(f64::MIN, f64::max);
                let verdict = if worst <= GOAL_MIB_PER_WORKER {
                    "≤ 8 MiB"
                } else {
                    "> 8 MiB somewhere"
                };
                let figures: Vec<String> = per_worker.iter().map(|v| format!("{v:+.1}")).collect();
                format!("{} MiB ({verdict})", figures.join(" / "))
            }
            _ => String::new(),
        };
        let [first, .., last] = rss;
        let [fewest, .., most] = WORKERS;
        let further = (last - first) / f64::from(most - fewest);
        let cells: Vec<String> = rss.iter().map(|v| format!("{v:.1} MiB")).collect();
        println!(
            "| {} | {} | {further:+.1} MiB | {over} |",
            scenario.name,
            cells.join(" | ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_tenants_each_with_a_limit() {
        let config = with_tenants(json!({"version": 1}), 10_000);
        let tenants = config["tenants"].as_object().map(Map::len);
        assert_eq!(tenants, Some(10_000));
        assert_eq!(config["tenants"]["t09999"]["rate_limit"]["per_seconds"], 60);
    }
}
