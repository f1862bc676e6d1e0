//! What every report that drives `wrk` (Debian's, `apt-get install -y wrk`)
//! shares: the command line (`wrk -t1 -cC -dS --latency [-s SCRIPT]`), the
//! status-counting Lua script [`STATUS_SCRIPT`], and parsing a finished run's
//! report into a [`WrkResult`]. What is sent (headers, URL, other scripts) and
//! how many processes run at once stay with the binaries.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Counts response statuses per wrk thread and prints them in `done()`
/// (`status <code> <count>` lines, read into [`WrkResult::statuses`]).
pub const STATUS_SCRIPT: &str = r#"
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
pub struct WrkResult {
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub non_2xx: u64,
    /// wrk's `Socket errors: …` line, empty without one.
    pub socket_errors: String,
    /// Only with [`STATUS_SCRIPT`].
    pub statuses: BTreeMap<u16, u64>,
}

/// `wrk -t1 -c<connections> -d<seconds>s --latency [-s <script>]`, stdin
/// closed and output captured; the caller adds any `-H` and then the URL.
pub fn wrk_command(connections: u32, seconds: u64, script: Option<&Path>) -> Command {
    let mut command = Command::new("wrk");
    command.args([
        "-t1".to_owned(),
        format!("-c{connections}"),
        format!("-d{seconds}s"),
        "--latency".to_owned(),
    ]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// The error for a [`wrk_command`] that could not be started.
pub fn cannot_run_wrk(error: std::io::Error) -> String {
    format!("cannot run wrk (apt-get install -y wrk): {error}")
}

/// A finished wrk process's report: an error if it failed (with its output)
/// or served no requests, else [`parse_wrk`] of its stdout.
pub fn wrk_output(output: &Output) -> Result<WrkResult, String> {
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "wrk failed ({}): {text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse_wrk(&text)
}

/// A wrk latency (`812.00us`, `1.20ms`, `2.01s`) in µs.
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

/// Parses wrk's `--latency` report (and [`STATUS_SCRIPT`]'s lines); an error
/// if it served no requests.
pub fn parse_wrk(output: &str) -> Result<WrkResult, String> {
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
