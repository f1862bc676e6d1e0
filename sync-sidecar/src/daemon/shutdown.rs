//! Shutdown as a value: every part of the daemon holds a [`Shutdown`] and
//! waits on it next to its own work (the model is tokio's mini-redis). It
//! fires once, when the future given to [`crate::daemon::run`] resolves, and
//! stays fired.

use std::future::Future;

use tokio::sync::watch;

/// Listens for the shutdown request.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// Set once the request was seen, so later waits return at once.
    seen: bool,
    requested: watch::Receiver<bool>,
}

impl Shutdown {
    /// Fires when `signal` resolves (awaited on a task of its own).
    pub fn on(signal: impl Future<Output = ()> + Send + 'static) -> Self {
        let (request, requested) = watch::channel(false);
        tokio::spawn(async move {
            signal.await;
            let _ = request.send(true);
        });
        Self {
            seen: false,
            requested,
        }
    }

    /// Whether shutdown was requested.
    pub fn is_shutdown(&self) -> bool {
        self.seen || *self.requested.borrow()
    }

    /// Resolves once shutdown is requested (at once if it was already). A
    /// signal task that ended without sending (its runtime is going away)
    /// counts as a request.
    pub async fn recv(&mut self) {
        if self.seen {
            return;
        }
        let _ = self.requested.wait_for(|requested| *requested).await;
        self.seen = true;
    }

    /// A future resolving on shutdown, for servers that take one.
    pub async fn wait(mut self) {
        self.recv().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_once_the_signal_resolves_and_stays_fired() {
        let (fire, fired) = tokio::sync::oneshot::channel::<()>();
        let mut shutdown = Shutdown::on(async move {
            let _ = fired.await;
        });
        let mut other = shutdown.clone();
        assert!(!shutdown.is_shutdown());
        let _ = fire.send(());
        shutdown.recv().await;
        assert!(shutdown.is_shutdown());
        shutdown.recv().await;
        other.recv().await;
        assert!(other.is_shutdown());
    }
}
