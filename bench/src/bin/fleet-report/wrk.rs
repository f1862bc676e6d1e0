//! Driving `wrk` against every replica at once: one `wrk -t1 -cC -dS --latency`
//! process per replica, all spawned before any is waited for, and their
//! reports parsed (a minimal copy of `load-report/wrk.rs`'s parser, plus the
//! status-counting Lua script).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::Res;

/// Counts response statuses per wrk thread and prints them in `done()`.
pub(crate) const STATUS_SCRIPT: &str = r#"
counts = {}
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("counts")) do
      io.write(string.format("status %d %d\n", status, n))
    end
  end
end
"#;

/// One wrk report.
#[derive(Debug, Clone, Default)]
pub(crate) struct WrkResult {
    pub(crate) requests: u64,
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) non_2xx: u64,
    pub(crate) socket_errors: String,
    /// Only with [`STATUS_SCRIPT`].
    pub(crate) statuses: BTreeMap<u16, u64>,
}

/// What the wrk processes of one run do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load<'a> {
    pub(crate) seconds: u64,
    pub(crate) connections: u32,
    pub(crate) tenant: &'a str,
    pub(crate) path: &'a str,
    pub(crate) script: Option<&'a Path>,
}

fn to_us(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        (text, 1.0)
    };
    number.trim().parse::<f64>().ok().map(|n| n * factor)
}

fn parse_wrk(output: &str) -> Res<WrkResult> {
    let mut result = WrkResult::default();
    for line in output.lines() {
        let line = line.trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => result.p50_us = to_us(value).unwrap_or(0.0),
            ["99%", value] => result.p99_us = to_us(value).unwrap_or(0.0),
            [count, "requests", "in", ..] => result.requests = count.parse().unwrap_or(0),
            ["Requests/sec:", value] => result.rps = value.parse().unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", value] => {
                result.non_2xx = value.parse().unwrap_or(0)
            }
            ["status", status, count] => {
                if let (Ok(status), Ok(count)) = (status.parse::<u16>(), count.parse::<u64>()) {
                    *result.statuses.entry(status).or_default() += count;
                }
            }
            _ if line.starts_with("Socket errors:") => line.clone_into(&mut result.socket_errors),
            _ => {}
        }
    }
    if result.requests == 0 {
        return Err(format!("wrk served no requests:\n{output}"));
    }
    Ok(result)
}

fn spawn(port: u16, load: &Load<'_>) -> Res<Child> {
    let mut command = Command::new("wrk");
    command.args([
        "-t1".to_owned(),
        format!("-c{}", load.connections),
        format!("-d{}s", load.seconds),
        "--latency".to_owned(),
        "-H".to_owned(),
        format!("x-tenant-id: {}", load.tenant),
    ]);
    if let Some(script) = load.script {
        command.arg("-s").arg(script);
    }
    command
        .arg(format!("http://127.0.0.1:{port}{}", load.path))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run wrk (apt-get install -y wrk): {e}"))
}

/// Runs `load` against every port at once; one result per port, in order.
pub(crate) fn run_wrk_all(ports: &[u16], load: &Load<'_>) -> Res<Vec<WrkResult>> {
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
    outputs
        .into_iter()
        .map(|(port, output)| {
            let output = output.map_err(|e| format!("wrk on port {port}: {e}"))?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            if !output.status.success() {
                return Err(format!(
                    "wrk on port {port} failed ({}): {text}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            parse_wrk(&text).map_err(|e| format!("port {port}: {e}"))
        })
        .collect()
}
