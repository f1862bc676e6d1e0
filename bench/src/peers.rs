//! The peers the benchmarks compare with, built by the user from their public
//! sources (BENCHMARKS.md §11; nothing of them is in this repository):
//! limitador-server, Kuadrant's rate limiter, run here as a process on
//! loopback with one limit per tenant, in memory or on Redis; and the
//! plugin configuration of Kuadrant's wasm-shim asking it for every request.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tenant_guard_e2e::envoy::{free_port, log_file_tail};
use tenant_guard_e2e::tempdir::TempDir;
use tenant_guard_e2e::{http, wait_until};

use crate::Bootstrap;

/// The limits' namespace (the rate limit request's `domain`, wasm-shim's `scope`).
pub const NAMESPACE: &str = "tenant_guard_bench";
/// The header the tenant comes from, as in every other scenario.
const TENANT_HEADER: &str = "x-tenant-id";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where limitador keeps its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    Memory,
    /// `redis <URL>`: every check is a Redis round trip.
    Redis(String),
}

/// A running limitador-server (killed on drop).
#[derive(Debug)]
pub struct Limitador {
    child: Child,
    rls_port: u16,
    _dir: TempDir,
}

impl Limitador {
    /// Starts `binary` with one limit: `max_value` requests per `seconds`
    /// for each tenant (a counter per `tenant` descriptor value).
    pub fn start(
        binary: &Path,
        max_value: u64,
        seconds: u64,
        storage: &Storage,
    ) -> Result<Self, String> {
        let dir = TempDir::new("limitador").map_err(|e| format!("temp dir: {e}"))?;
        let limits = dir.path().join("limits.yaml");
        fs::write(&limits, limits_file(max_value, seconds)).map_err(|e| e.to_string())?;
        let rls_port = free_port();
        let http_port = free_port();
        let log = fs::File::create(dir.path().join("limitador.log")).map_err(|e| e.to_string())?;
        let mut command = Command::new(binary);
        command
            .args(["--rls-ip", "127.0.0.1", "--rls-port", &rls_port.to_string()])
            .args([
                "--http-ip",
                "127.0.0.1",
                "--http-port",
                &http_port.to_string(),
            ])
            .arg(&limits);
        match storage {
            Storage::Memory => command.arg("memory"),
            Storage::Redis(url) => command.args(["redis", url]),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut limitador = Self {
            child,
            rls_port,
            _dir: dir,
        };
        let ready = wait_until(STARTUP_TIMEOUT, || {
            matches!(limitador.child.try_wait(), Ok(None))
                && http::try_get(http_port, "/status").is_some_and(|r| r.status == 200)
        });
        if !ready {
            let tail = log_file_tail(&limitador._dir.path().join("limitador.log"), 20);
            return Err(format!("limitador-server did not become ready:\n{tail}"));
        }
        Ok(limitador)
    }

    /// Its gRPC port (Envoy's rate limit service protocol).
    pub fn rls_port(&self) -> u16 {
        self.rls_port
    }

    /// The process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Limitador {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// limitador's limits file: one counter per value of the `tenant` descriptor
/// entry (limitador 2's CEL syntax).
fn limits_file(max_value: u64, seconds: u64) -> String {
    format!(
        "- namespace: {NAMESPACE}\n  max_value: {max_value}\n  seconds: {seconds}\n  \
         conditions: []\n  variables: [\"descriptors[0].tenant\"]\n"
    )
}

/// wasm-shim v0.8.1's plugin configuration: every request with the tenant
/// header asks limitador (cluster `limitador`) with `tenant` = its value;
/// refused when limitador cannot answer (`failureMode: deny`, as
/// tenant-guard by default). Requests without the header skip the call (the
/// shim traps when an expression cannot be evaluated).
pub fn wasm_shim_config() -> String {
    json!({
        "services": {
            "limitador": {
                "type": "ratelimit",
                "endpoint": "limitador",
                "failureMode": "deny",
                "timeout": "100ms"
            }
        },
        "actionSets": [{
            "name": "tenant-limits",
            "routeRuleConditions": {"hostnames": ["*"]},
            "actions": [{
                "service": "limitador",
                "scope": NAMESPACE,
                "predicates": [format!("'{TENANT_HEADER}' in request.headers")],
                "data": [{"expression": {
                    "key": "tenant",
                    "value": format!("request.headers['{TENANT_HEADER}']")
                }}]
            }]
        }]
    })
    .to_string()
}

/// What asks limitador for every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Front {
    /// Kuadrant's wasm-shim (this module) in Envoy's V8.
    WasmShim(PathBuf),
    /// Envoy's own `ratelimit` filter, over gRPC.
    EnvoyRateLimit,
}

/// One peer setup the benchmarks measure: what asks limitador, and where
/// limitador keeps its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSetup {
    pub front: Front,
    pub on_redis: bool,
}

impl PeerSetup {
    /// Its row in every table.
    pub fn name(&self) -> &'static str {
        match (&self.front, self.on_redis) {
            (Front::WasmShim(_), false) => "peer: Kuadrant wasm-shim + limitador (in memory)",
            (Front::WasmShim(_), true) => "peer: Kuadrant wasm-shim + limitador (Redis)",
            (Front::EnvoyRateLimit, false) => {
                "peer: Envoy ratelimit filter (gRPC) + limitador (in memory)"
            }
            (Front::EnvoyRateLimit, true) => {
                "peer: Envoy ratelimit filter (gRPC) + limitador (Redis)"
            }
        }
    }

    /// The Envoy that asks the limitador listening on `rls_port`.
    pub fn bootstrap(&self, rls_port: u16) -> Bootstrap {
        match &self.front {
            Front::WasmShim(wasm) => Bootstrap::WasmShim {
                wasm: wasm.clone(),
                rls_port,
            },
            Front::EnvoyRateLimit => Bootstrap::NativeRateLimit { rls_port },
        }
    }
}

/// The peers' binaries, from the benchmark's flags (`None`: not measured).
#[derive(Debug, Clone, Default)]
pub struct PeerPaths {
    pub limitador: Option<PathBuf>,
    pub wasm_shim: Option<PathBuf>,
}

impl PeerPaths {
    /// The setups whose binaries were given (wasm-shim's need limitador
    /// too), in the order the tables print them.
    pub fn setups(&self) -> Vec<PeerSetup> {
        if self.limitador.is_none() {
            return Vec::new();
        }
        let fronts = self
            .wasm_shim
            .iter()
            .map(|wasm| Front::WasmShim(wasm.clone()))
            .chain([Front::EnvoyRateLimit]);
        fronts
            .flat_map(|front| {
                [false, true].map(|on_redis| PeerSetup {
                    front: front.clone(),
                    on_redis,
                })
            })
            .collect()
    }

    /// The one line printed when a peer is not measured, `None` when all are.
    pub fn missing(&self) -> Option<String> {
        let missing: Vec<&str> = [
            (
                "--limitador PATH (limitador-server)",
                self.limitador.is_none(),
            ),
            (
                "--wasm-shim PATH (wasm_shim.wasm)",
                self.wasm_shim.is_none(),
            ),
        ]
        .into_iter()
        .filter_map(|(flag, absent)| absent.then_some(flag))
        .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "peers not measured: {} not given (how to build them: BENCHMARKS.md §11)",
                missing.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_counter_per_tenant_in_the_namespace() {
        let file = limits_file(1000, 60);
        assert!(file.contains("namespace: tenant_guard_bench"), "{file}");
        assert!(file.contains("max_value: 1000"), "{file}");
        assert!(file.contains("seconds: 60"), "{file}");
        assert!(file.contains("descriptors[0].tenant"), "{file}");
    }

    #[test]
    fn the_shim_asks_with_the_tenant_header() {
        let config: serde_json::Value =
            serde_json::from_str(&wasm_shim_config()).unwrap_or_default();
        let action = &config["actionSets"][0]["actions"][0];
        assert_eq!(action["scope"], NAMESPACE);
        assert_eq!(
            action["data"][0]["expression"]["value"],
            "request.headers['x-tenant-id']"
        );
        assert_eq!(config["services"]["limitador"]["failureMode"], "deny");
    }

    #[test]
    fn missing_peers_are_named_in_one_line() {
        let none = PeerPaths::default().missing().unwrap_or_default();
        assert!(
            none.contains("--limitador") && none.contains("--wasm-shim"),
            "{none}"
        );
        assert!(!none.contains('\n'));
        let all = PeerPaths {
            limitador: Some(PathBuf::from("l")),
            wasm_shim: Some(PathBuf::from("w")),
        };
        assert_eq!(all.missing(), None);
    }

    #[test]
    fn setups_are_those_whose_binaries_were_given() {
        let names = |paths: &PeerPaths| -> Vec<&str> {
            paths.setups().iter().map(PeerSetup::name).collect()
        };
        let shim_only = PeerPaths {
            limitador: None,
            wasm_shim: Some(PathBuf::from("w")),
        };
        assert!(names(&shim_only).is_empty());
        let limitador_only = PeerPaths {
            limitador: Some(PathBuf::from("l")),
            wasm_shim: None,
        };
        assert_eq!(
            names(&limitador_only),
            [
                "peer: Envoy ratelimit filter (gRPC) + limitador (in memory)",
                "peer: Envoy ratelimit filter (gRPC) + limitador (Redis)"
            ]
        );
        let both = PeerPaths {
            wasm_shim: Some(PathBuf::from("w")),
            ..limitador_only
        };
        assert_eq!(names(&both).len(), 4);
        let bootstrap = both.setups().get(1).map(|setup| setup.bootstrap(7));
        assert!(
            matches!(&bootstrap, Some(Bootstrap::WasmShim { wasm, rls_port: 7 }) if wasm == Path::new("w")),
            "{bootstrap:?}"
        );
    }
}
