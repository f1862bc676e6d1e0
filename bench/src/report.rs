//! Report lines about the run itself: file sizes and the output of a command
//! (`envoy --version`, `git rev-parse`, `date`).

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;

use tenant_guard_e2e::repo_root;

/// `"<n> bytes (<k> KiB)"`, or `"unknown (<error>)"`.
pub fn file_size(path: &Path) -> String {
    fs::metadata(path).map_or_else(
        |e| format!("unknown ({e})"),
        |m| format!("{} bytes ({:.0} KiB)", m.len(), m.len() as f64 / 1024.0),
    )
}

/// The trimmed stdout of `program args` run in the repository root (empty if it
/// cannot run), e.g. `envoy --version` or `git rev-parse --short HEAD`.
pub fn command_output(program: impl AsRef<OsStr>, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
