//! Locating the build artifacts the tests need: the filter `.wasm` (built once per
//! test process) and an Envoy binary.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::failure::fail;

/// The workspace root (the parent of this crate's manifest directory).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The workspace target directory (`$CARGO_TARGET_DIR`, relative to the root, else `target/`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        }
        _ => repo_root().join("target"),
    }
}

/// Builds the filter once per test process
/// (`cargo build --release --target wasm32-wasip1 -p tenant-guard-filter`)
/// and returns the path of `tenant_guard_filter.wasm`. Panics with cargo's
/// output if the build fails. `TENANT_GUARD_WASM=<path>` skips the build and
/// uses that file instead (e.g. a CI artifact).
pub fn wasm_path() -> PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| build_wasm("TENANT_GUARD_WASM", "tenant-guard-filter", None))
        .clone()
}

/// Builds the benchmark-only minimal probe filter (`bench/probe-filter`) once
/// per process; `TENANT_GUARD_PROBE_WASM` skips the build.
pub fn probe_wasm_path() -> PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| build_wasm("TENANT_GUARD_PROBE_WASM", "tenant-guard-probe-filter", None))
        .clone()
}

/// Builds the filter with `--features fault-injection` (test-only: the
/// `x-tenant-guard-fault` header can panic it or corrupt shared data) into
/// `<target>/fault`, once per test process. `TENANT_GUARD_FAULT_WASM` skips the build.
pub fn fault_wasm_path() -> PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        build_wasm(
            "TENANT_GUARD_FAULT_WASM",
            "tenant-guard-filter",
            Some("fault-injection"),
        )
    })
    .clone()
}

/// `$override_var` when set, else a release wasm32 build of `package` with
/// `feature` (in its own target subdirectory so builds do not clobber each other).
fn build_wasm(override_var: &str, package: &str, feature: Option<&str>) -> PathBuf {
    if let Some(path) = std::env::var_os(override_var).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{override_var}={} does not exist",
            path.display()
        );
        return path;
    }
    build_wasm_in(feature, package, feature, &[])
}

/// A release wasm32 build of `package` (with `feature`, and `envs` set for
/// cargo) into `<target>/<subdir>` (the workspace target directory itself
/// when `None`); returns the `.wasm` path.
pub fn build_wasm_in(
    subdir: Option<&str>,
    package: &str,
    feature: Option<&str>,
    envs: &[(&str, &OsStr)],
) -> PathBuf {
    let target = match subdir {
        Some(subdir) => target_dir().join(subdir),
        None => target_dir(),
    };
    let mut args = vec![
        "build",
        "--release",
        "--target",
        "wasm32-wasip1",
        "-p",
        package,
    ];
    if let Some(feature) = feature {
        args.extend(["--features", feature]);
    }
    let mut envs = envs.to_vec();
    envs.push(("CARGO_TARGET_DIR", target.as_os_str()));
    cargo_build(&args, &envs, &format!("{package} ({feature:?})"));
    let path = target.join(format!(
        "wasm32-wasip1/release/{}.wasm",
        package.replace('-', "_")
    ));
    assert!(
        path.is_file(),
        "cargo succeeded but {} does not exist",
        path.display()
    );
    path
}

/// Runs `cargo <args>` (with `envs`) in the workspace; fails the test with
/// cargo's output when it fails.
pub fn cargo_build(args: &[&str], envs: &[(&str, &OsStr)], label: &str) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(repo_root()).args(args);
    for (name, value) in envs {
        command.env(name, value);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| fail(format!("cannot run cargo to build {label}: {e}")));
    if !output.status.success() {
        fail(format!(
            "building {label} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
}

/// The Envoy binary: `$ENVOY_BIN`, else `<repo>/.tools/venv/bin/envoy`, else
/// whatever `envoy/install-envoy.sh` installs and prints.
pub fn envoy_binary() -> PathBuf {
    static ENVOY: OnceLock<PathBuf> = OnceLock::new();
    ENVOY
        .get_or_init(|| {
            if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|b| !b.is_empty()) {
                return PathBuf::from(bin);
            }
            let venv = repo_root().join(".tools/venv/bin/envoy");
            if venv.is_file() {
                return venv;
            }
            let script = repo_root().join("envoy/install-envoy.sh");
            let output = Command::new("bash")
                .arg(&script)
                .output()
                .unwrap_or_else(|e| fail(format!("cannot run {}: {e}", script.display())));
            if !output.status.success() {
                fail(format!(
                    "{} failed ({}):\n{}",
                    script.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
            assert!(!path.is_empty(), "install-envoy.sh printed no path");
            PathBuf::from(path)
        })
        .clone()
}
