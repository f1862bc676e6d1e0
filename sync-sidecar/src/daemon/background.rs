//! The daemon for callers without an async runtime (test harnesses,
//! benchmarks): [`BackgroundSidecar`] runs [`super::run`] on a thread and
//! runtime of its own, and [`migrate_blocking`] prepares a schema.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::{run, RunConfig, RunError};
use crate::db::{self, DbConfig};
use crate::sync::Syncer;

/// Creates and migrates the schema of `config` on a runtime of its own, for
/// harnesses without one that seed settings before starting a sidecar.
pub fn migrate_blocking(config: &DbConfig) -> Result<(), RunError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut client = config.connect_spawned().await?;
        db::migrate(&mut client, &config.schema).await?;
        Ok(())
    })
}

/// A sidecar running [`run`] on its own thread and runtime, for harnesses and
/// benchmarks that have no async runtime. Stopped (gracefully) on drop.
#[derive(Debug)]
pub struct BackgroundSidecar {
    admin_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), RunError>>>,
}

impl BackgroundSidecar {
    /// Binds the admin API on `admin_addr` (port 0 picks one) and starts the loop.
    pub fn start(
        config: RunConfig,
        syncer: Syncer,
        admin_addr: SocketAddr,
    ) -> Result<Self, RunError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(admin_addr))?;
        let admin_addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tenant-guard-sidecar".to_owned())
            .spawn(move || {
                runtime.block_on(run(config, syncer, listener, async move {
                    let _ = stopped.await;
                }))
            })?;
        Ok(Self {
            admin_addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Requests shutdown and waits for the loop to finish.
    pub fn stop(mut self) -> Result<(), RunError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), RunError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| RunError::Panicked)?,
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundSidecar {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
