//! A private PostgreSQL instance for tests that stop and restart the database
//! (the shared server on `DATABASE_URL` must never be stopped): `initdb` into a
//! temporary directory (trust auth), `pg_ctl start` on a free port of
//! 127.0.0.1 (no Unix socket), readiness by polling `pg_isready`. Stopped with
//! `pg_ctl -m fast` and started again on the same port; removed on drop.
//!
//! Binaries: `initdb`/`pg_ctl`/`pg_isready` from `PATH`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian: the `postgresql` package). Running as
//! root, the server runs as the `postgres` OS user (`runuser`), which owns the
//! data directory.

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::envoy::free_port;
use crate::failure::fail;
use crate::tempdir::TempDir;
use crate::wait::wait_until;

/// How long `start` may take before it is reported as failed.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A PostgreSQL server of its own, on `127.0.0.1:<port>`.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// `Some(uid)` when running as root: the server runs as that (`postgres`) user.
    run_as: Option<u32>,
    running: bool,
    // Declared last: removed after the server is stopped.
    dir: TempDir,
}

impl PrivatePostgres {
    /// `initdb` + start on a free port; panics (with the server log) on failure.
    pub fn start() -> Self {
        let bin = pg_bin_dir();
        let dir =
            TempDir::new("pg").unwrap_or_else(|e| fail(format!("temp dir for PostgreSQL: {e}")));
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)
            .unwrap_or_else(|e| fail(format!("create the data directory: {e}")));
        let run_as = if is_root() {
            let (uid, gid) = postgres_user();
            for path in [dir.path(), data.as_path()] {
                chown(path, Some(uid), Some(gid))
                    .unwrap_or_else(|e| fail(format!("chown {}: {e}", path.display())));
            }
            Some(uid)
        } else {
            None
        };
        let mut pg = Self {
            bin,
            data,
            port: 0,
            run_as,
            running: false,
            dir,
        };
        let initdb = pg.run(
            "initdb",
            &[
                "-D",
                &pg.data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
        );
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let mut last_error = String::new();
        for _attempt in 0..3 {
            pg.port = free_port();
            match pg.try_start() {
                Ok(()) => return pg,
                Err(e) => last_error = e,
            }
        }
        fail(format!("cannot start a private PostgreSQL: {last_error}"));
    }

    /// The port it listens on (the same across stop/start).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        self.url_as("postgres")
    }

    /// The URL for database `postgres` as `user` (trust auth: no password).
    pub fn url_as(&self, user: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/postgres", self.port)
    }

    /// Whether the server was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Stops the server (`pg_ctl -m fast`: sessions are terminated, clean shutdown).
    pub fn stop(&mut self) {
        let output = self.pg_ctl(&["-m", "fast", "-w", "-t", "30", "stop"]);
        assert!(
            output.status.success(),
            "pg_ctl stop failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log_tail(20)
        );
        self.running = false;
        assert!(
            wait_until(Duration::from_secs(10), || !self.accepts_connections()),
            "PostgreSQL still answers after pg_ctl stop"
        );
    }

    /// Starts the stopped server again on the same port.
    pub fn start_again(&mut self) {
        self.try_start().unwrap_or_else(|e| {
            fail(format!(
                "cannot restart PostgreSQL on port {}: {e}",
                self.port
            ))
        });
    }

    /// Whether `pg_isready` reports that the server accepts connections.
    pub fn accepts_connections(&self) -> bool {
        Command::new(self.tool("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-p", &self.port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs `sql` with `psql` as `postgres`; returns trimmed unaligned output.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        crate::sidecar::psql_at(&self.url(), sql)
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all.get(all.len().saturating_sub(lines)..)
            .unwrap_or_default()
            .join("\n")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn try_start(&mut self) -> Result<(), String> {
        let options = format!(
            "-h 127.0.0.1 -p {} -c unix_socket_directories='' -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=50 \
             -c shared_buffers=16MB",
            self.port
        );
        let log = self.log_path().display().to_string();
        let output = self.pg_ctl(&["-l", &log, "-o", &options, "-w", "-t", "30", "start"]);
        if !output.status.success() {
            return Err(format!(
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&output.stderr),
                self.log_tail(20)
            ));
        }
        self.running = true;
        if !wait_until(START_TIMEOUT, || self.accepts_connections()) {
            return Err(format!(
                "not ready in {START_TIMEOUT:?}\n{}",
                self.log_tail(20)
            ));
        }
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data.display().to_string();
        let mut all = vec!["-D", data.as_str()];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    fn tool(&self, name: &str) -> PathBuf {
        let candidate = self.bin.join(name);
        if candidate.is_file() {
            candidate
        } else {
            PathBuf::from(name)
        }
    }

    /// Runs a server tool, as the `postgres` user when we are root.
    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let program = self.tool(tool);
        let mut command = if self.run_as.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| fail(format!("cannot run {}: {e}", program.display())))
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl(&["-m", "immediate", "-w", "-t", "20", "stop"]);
        }
        if std::thread::panicking() {
            eprintln!(
                "---- private PostgreSQL log tail ----\n{}\n----",
                self.log_tail(30)
            );
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// uid and gid of the `postgres` OS user (root only: the server refuses root).
fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap_or_else(|e| fail(format!("cannot run id: {e}")));
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| {
                fail("running as root needs a `postgres` OS user (Debian: the postgresql package)")
            })
    };
    (id("-u"), id("-g"))
}

/// The directory holding `initdb`/`pg_ctl`: next to `initdb` on `PATH`, else
/// the newest `/usr/lib/postgresql/<version>/bin`.
fn pg_bin_dir() -> PathBuf {
    if let Ok(output) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
    {
        let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if let Some(dir) = path.parent().filter(|d| d.join("pg_ctl").is_file()) {
            return dir.to_path_buf();
        }
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| fail("no initdb on PATH or under /usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)"))
}
