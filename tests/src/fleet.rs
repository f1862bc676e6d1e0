//! A fleet on this machine: several real Envoys (`--concurrency 2` each),
//! each with its own store sidecar (`tenant-guard-sidecar store`), all on one
//! Redis (standalone or a Redis Cluster, from the sidecar's test fixtures).
//! The store sidecars can be stopped and started again on the same port, as a
//! rolling update does.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::envoy::{free_port, Envoy};
use crate::failure::fail;
use crate::http::Response;
use crate::rolling::sidecar_binary;

/// How long a store sidecar may take to say it listens.
const STORE_STARTUP: Duration = Duration::from_secs(20);

/// Which Redis the store sidecars use.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    Standalone(String),
    Cluster(Vec<String>),
}

impl RedisTarget {
    fn args(&self) -> Vec<String> {
        match self {
            RedisTarget::Standalone(url) => vec!["--redis-url".to_owned(), url.clone()],
            RedisTarget::Cluster(urls) => urls
                .iter()
                .flat_map(|url| ["--redis-cluster-url".to_owned(), url.clone()])
                .collect(),
        }
    }
}

/// One `tenant-guard-sidecar store` process.
#[derive(Debug)]
pub struct StoreSidecar {
    child: Option<Child>,
    port: u16,
    redis: RedisTarget,
    binary: std::path::PathBuf,
}

impl StoreSidecar {
    /// Starts the harness's sidecar build on a free port.
    pub fn start(redis: &RedisTarget) -> Self {
        Self::start_binary(&sidecar_binary(), redis)
    }

    /// Starts the sidecar `binary` (another build, for benchmarks) on a free port.
    pub fn start_binary(binary: &std::path::Path, redis: &RedisTarget) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            match Self::try_start(binary, port, redis) {
                Ok(child) => {
                    return Self {
                        child: Some(child),
                        port,
                        redis: redis.clone(),
                        binary: binary.to_owned(),
                    }
                }
                Err(err) => last = err,
            }
        }
        fail(format!("the store sidecar did not start: {last}"))
    }

    /// Its process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn try_start(
        binary: &std::path::Path,
        port: u16,
        redis: &RedisTarget,
    ) -> Result<Child, String> {
        let mut child = Command::new(binary)
            .arg("store")
            .arg("--store-addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(redis.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|err| format!("cannot start the sidecar: {err}"))?;
        let stdout = child.stdout.take().ok_or_else(|| "no stdout".to_owned())?;
        let (lines, listening) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let expected = format!("store endpoint listening on 127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + STORE_STARTUP;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match listening.recv_timeout(left) {
                Ok(line) if line.trim() == expected => return Ok(child),
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("no `{expected}` within {STORE_STARTUP:?}"));
                }
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the process as a roll does: SIGTERM (it finishes the calls in
    /// flight), SIGKILL only if it has not exited within the deadline.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let exited =
            crate::wait::wait_until(STORE_STARTUP, || matches!(child.try_wait(), Ok(Some(_))));
        if !exited {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Kills the process at once (SIGKILL), as a crash would: calls in
    /// flight get no answer.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(&self.binary, self.port, &self.redis) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(err) => last = err,
            }
        }
        fail(format!(
            "the store sidecar did not restart on {}: {last}",
            self.port
        ))
    }
}

impl Drop for StoreSidecar {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One replica: an Envoy and the store sidecar next to it.
#[derive(Debug)]
pub struct Replica {
    pub envoy: Envoy,
    pub store: StoreSidecar,
}

/// `count` replicas with `plugin_config` (in cluster mode), all forwarding
/// to `upstream_port`.
pub fn start_fleet(
    count: usize,
    plugin_config: &str,
    upstream_port: u16,
    redis: &RedisTarget,
) -> Vec<Replica> {
    (0..count)
        .map(|_| {
            let store = StoreSidecar::start(redis);
            let envoy = Envoy::start_static_with_store(plugin_config, upstream_port, store.port());
            Replica { envoy, store }
        })
        .collect()
}

/// How many of `statuses` were admitted (200).
pub fn admitted(statuses: &[u16]) -> u64 {
    statuses.iter().filter(|status| **status == 200).count() as u64
}

/// Every status is one of `allowed` (a 5xx during a fallback is a bug).
pub fn assert_only(statuses: &[u16], allowed: &[u16]) {
    let other: Vec<_> = statuses.iter().filter(|s| !allowed.contains(s)).collect();
    if !other.is_empty() {
        fail(format!("statuses other than {allowed:?}: {other:?}"));
    }
}

/// The problem type of a problem+json answer, without its URN prefix.
pub fn problem_type(response: &Response) -> String {
    let body: serde_json::Value =
        serde_json::from_slice(&response.body).unwrap_or(serde_json::Value::Null);
    body.get("type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .trim_start_matches("urn:tenant-guard:problem:")
        .to_owned()
}

/// `count` POSTs to `/orders` for tenant `orders` with one Idempotency-Key,
/// all at once, spread round-robin over `ports`: their statuses, and how many
/// executed (201 without `idempotent-replayed`).
pub fn concurrent_same_key_posts(
    ports: &[u16],
    count: usize,
    key: &str,
    body: &'static [u8],
) -> (Vec<u16>, u64) {
    let key = format!("\"{key}\"");
    let handles: Vec<_> = (0..count)
        .filter_map(|index| ports.get(index % ports.len().max(1)).copied())
        .map(|port| {
            let key = key.clone();
            std::thread::spawn(move || {
                let response = crate::http::request(
                    port,
                    "POST",
                    "/orders",
                    &[("x-tenant-id", "orders"), ("idempotency-key", &key)],
                    body,
                );
                let executed =
                    response.status == 201 && response.header("idempotent-replayed").is_none();
                (response.status, executed)
            })
        })
        .collect();
    let mut statuses = Vec::with_capacity(count);
    let mut executed = 0;
    for handle in handles {
        match handle.join() {
            Ok((status, ran)) => {
                statuses.push(status);
                executed += u64::from(ran);
            }
            Err(_) => fail("a POST thread panicked"),
        }
    }
    (statuses, executed)
}
