//! Other spellings of a path must not escape its rules (issue rows 3–4):
//! `PUT //orders/1`, `/./orders/1`, `/%6Frders/1` … without If-Match → 428
//! under an `if_match` rule on `/orders`; `POST //orders` … after the route
//! limit `POST /orders` is spent → 429. Run twice: with the shipped bootstrap
//! (`envoy/static.yaml`, which normalises paths itself) and with the same
//! bootstrap minus Envoy's normalisation, to prove the filter holds on its own.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tenant_guard_e2e::bound_ports::{ephemeral_port_values, wait_until_ready};
use tenant_guard_e2e::envoy::render_template;
use tenant_guard_e2e::raw_http::{Outcome, RawH1, RawResponse};
use tenant_guard_e2e::tempdir::TempDir;
use tenant_guard_e2e::{envoy_binary, repo_root, wasm_path, Upstream};

const CORRELATION: &str = "x-correlation-id";

/// An Envoy on a given bootstrap text (a variant of `envoy/static.yaml`).
struct BootstrapEnvoy {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl BootstrapEnvoy {
    fn start(template: &str, plugin_config: &str, upstream_port: u16) -> Self {
        let dir = TempDir::new("path-bypass").unwrap();
        let bootstrap = dir.path().join("bootstrap.yaml");
        let [admin_port, listener_port] = ephemeral_port_values();
        let values = [
            admin_port,
            listener_port,
            ("UPSTREAM_PORT", upstream_port.to_string()),
            ("WASM_PATH", wasm_path().display().to_string()),
            (
                "PLUGIN_CONFIG_JSON",
                serde_json::to_string(plugin_config).unwrap(),
            ),
        ];
        fs::write(&bootstrap, render_template(template, &values)).unwrap();
        let log = dir.path().join("envoy.log");
        let admin_address = dir.path().join("admin.address");
        let out = fs::File::create(dir.path().join("envoy.stdout")).unwrap();
        let mut child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&bootstrap)
            .args(["--concurrency", "2", "--disable-hot-restart"])
            .arg("--admin-address-path")
            .arg(&admin_address)
            .arg("--log-path")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        let ready = wait_until_ready(&mut child, &admin_address, Duration::from_secs(30));
        let envoy = Self {
            child,
            port: ready.as_ref().map_or(0, |ports| ports.listener),
            log,
            _dir: dir,
        };
        if let Err(e) = ready {
            panic!("{e}: {}", envoy.log_text());
        }
        envoy
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for BootstrapEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shipped_template() -> String {
    fs::read_to_string(repo_root().join("envoy/static.yaml")).unwrap()
}

/// The shipped bootstrap with Envoy's own path normalisation switched off.
fn unnormalised_template() -> String {
    let mut template = shipped_template();
    for (on, off) in [
        ("normalize_path: true", "normalize_path: false"),
        ("merge_slashes: true", "merge_slashes: false"),
    ] {
        assert!(
            template.contains(on),
            "envoy/static.yaml no longer sets `{on}`"
        );
        template = template.replace(on, off);
    }
    template
}

fn plugin_config() -> String {
    json!({
        "version": 1,
        "revision": "path-bypass",
        "tenant": {"trust_header_without_jwt": true},
        "if_match": [{"prefix": "/orders"}],
        "defaults": {"rate_limit": {"requests": 1000, "per_seconds": 3600}},
        "tenants": {"acme": {"routes": [{"prefix": "/orders", "method": "POST", "name": "orders",
                                         "rate_limit": {"requests": 2, "per_seconds": 3600}}]}}
    })
    .to_string()
}

fn send(conn: &mut RawH1, method: &str, path: &str, extra: &[(&str, &str)]) -> RawResponse {
    let mut headers: Vec<(&[u8], &[u8])> = vec![(b"x-tenant-id", b"acme")];
    headers.extend(extra.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    match conn.request(method, path.as_bytes(), &headers, b"") {
        Ok(Outcome::Response(response)) => response,
        other => panic!("{method} {path}: {other:?}"),
    }
}

fn problem_type(response: &RawResponse) -> String {
    serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|body| body["type"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// PUT spellings of `/orders/1` (no If-Match).
const PUT_SPELLINGS: &[&str] = &[
    "/orders/1",
    "//orders/1",
    "/./orders/1",
    "/%6Frders/1",
    "/%6frders/1",
    "/x/../orders/1",
    "/orders//1",
    "/%2E/orders/1",
    "/a/%2e%2e/orders/1",
    "///orders/1?x=1",
];

/// POST spellings of `/orders`, tried after the route limit is spent.
const POST_SPELLINGS: &[&str] = &[
    "/orders",
    "//orders",
    "/./orders",
    "/%6Frders",
    "/x/../orders",
    "//orders//",
    "/%2e/orders?x=1",
];

/// Runs every bypass against `envoy`; returns how many were tried.
fn assert_no_bypass(envoy: &BootstrapEnvoy, label: &str) -> usize {
    let mut conn = RawH1::new(envoy.port);
    for path in PUT_SPELLINGS {
        let response = send(&mut conn, "PUT", path, &[]);
        assert_eq!(response.status, 428, "[{label}] PUT {path}: {response:?}");
        assert!(problem_type(&response).ends_with("precondition-required"));
        assert_eq!(response.header_all(CORRELATION).len(), 1);
        for garbage in ["garbage", "\"unterminated", "W/abc"] {
            let response = send(&mut conn, "PUT", path, &[("if-match", garbage)]);
            assert_eq!(
                response.status, 428,
                "[{label}] PUT {path} If-Match {garbage}"
            );
        }
        let response = send(&mut conn, "PUT", path, &[("if-match", "W/\"v1\"")]);
        assert_eq!(
            response.status, 200,
            "[{label}] PUT {path} with If-Match: {response:?}"
        );
    }
    for _ in 0..2 {
        assert_eq!(
            send(&mut conn, "POST", "/orders", &[]).status,
            200,
            "[{label}]"
        );
    }
    for path in POST_SPELLINGS {
        let response = send(&mut conn, "POST", path, &[]);
        assert_eq!(response.status, 429, "[{label}] POST {path}: {response:?}");
        let ratelimit = response.header_all("ratelimit");
        assert!(
            ratelimit
                .first()
                .is_some_and(|v| v.starts_with(b"\"orders\"")),
            "[{label}] POST {path} counted against the route limit: {ratelimit:?}"
        );
    }
    for path in ["/orders%2F1", "/orders%2f1", "/a%5Cb", "/a%5cb/orders"] {
        let response = send(&mut conn, "GET", path, &[]);
        assert_eq!(response.status, 400, "[{label}] GET {path}: {response:?}");
        assert!(
            problem_type(&response).ends_with("invalid-path"),
            "[{label}] {path}"
        );
        assert_eq!(
            response.header_all(CORRELATION).len(),
            1,
            "[{label}] {path}"
        );
    }
    assert!(!envoy.log_text().contains("panicked"));
    PUT_SPELLINGS.len() * 5 + POST_SPELLINGS.len() + 4
}

#[test]
fn no_path_spelling_bypasses_route_rules() {
    let upstream = Upstream::start();
    let config = plugin_config();
    let shipped = BootstrapEnvoy::start(&shipped_template(), &config, upstream.port());
    let tried = assert_no_bypass(&shipped, "shipped bootstrap");
    drop(shipped);
    let raw = BootstrapEnvoy::start(&unnormalised_template(), &config, upstream.port());
    let tried_raw = assert_no_bypass(&raw, "bootstrap without Envoy normalisation");
    eprintln!(
        "bypass attempts: {tried} with the shipped bootstrap, {tried_raw} without normalisation"
    );
}
