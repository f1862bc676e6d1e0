//! `tenant-guard-sidecar`: parses the command line, sets up logging and the
//! runtime, and hands over to [`tenant_guard_sidecar::cli::execute`].
//! Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
//! Errors are printed as one bounded line, each cause once; a closed stdout
//! or stderr is never a panic.

use std::process::ExitCode;

use clap::Parser;
use tenant_guard_sidecar::cli::{self, Cli};
use tenant_guard_sidecar::text::error_text;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            cli::emit_err(&format!(
                "error: cannot start the runtime: {}\n",
                error_text(&error)
            ));
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::execute(cli, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = error.exit_code();
            cli::emit_err(&format!("error: {}\n", error_text(&error)));
            ExitCode::from(code)
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested");
}
