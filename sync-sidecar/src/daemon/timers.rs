//! When the daemon syncs next, by cause: the debounced NOTIFY, the periodic
//! full resync and the retry of a failed sync (with its own backoff), plus
//! the jittered exponential [`Backoff`] that reconnecting uses too.

use std::time::Duration;

use tokio::time::Instant;

use crate::admin::SyncResult;

/// Exponential backoff with "equal jitter": half fixed, half random.
#[derive(Debug)]
pub(super) struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = base / 2;
        half + half.mul_f64(fastrand::f64())
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// The deadlines of one database session.
#[derive(Debug)]
pub(super) struct Timers {
    debounce: Duration,
    resync_interval: Duration,
    /// A NOTIFY arrived; the ones arriving until then are coalesced.
    pub notify: Option<Instant>,
    /// The next full resync, even without NOTIFY.
    pub resync: Instant,
    /// A failed sync (delivery or database error, not invalid settings) is
    /// retried with backoff until one succeeds; any successful sync clears it.
    pub retry: Option<Instant>,
    retry_backoff: Backoff,
}

impl Timers {
    pub fn new(debounce: Duration, resync_interval: Duration, retry_backoff: Backoff) -> Self {
        Self {
            debounce,
            resync_interval,
            notify: None,
            resync: Instant::now() + resync_interval,
            retry: None,
            retry_backoff,
        }
    }

    /// A NOTIFY: sync after the debounce window (already open: no change).
    pub fn notified(&mut self) {
        if self.notify.is_none() {
            self.notify = Some(Instant::now() + self.debounce);
        }
    }

    /// A sync ended with `result`: schedule (or clear) its retry and restart
    /// the resync period.
    pub fn synced(&mut self, result: SyncResult) {
        match result {
            SyncResult::Delivered | SyncResult::Unchanged => {
                self.retry = None;
                self.retry_backoff.reset();
            }
            // The same settings would be rejected again: wait for a change.
            SyncResult::Invalid => self.retry = None,
            SyncResult::Unavailable | SyncResult::Failed => {
                let delay = self.retry_backoff.next_delay();
                tracing::warn!(
                    retry_in_ms = delay.as_millis() as u64,
                    "will retry the failed sync"
                );
                self.retry = Some(Instant::now() + delay);
            }
        }
        self.resync = Instant::now() + self.resync_interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_within_the_jitter_band() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
        let delays: Vec<Duration> = (0..4).map(|_| backoff.next_delay()).collect();
        for (delay, base) in delays.iter().zip([100, 200, 300, 300]) {
            let base = Duration::from_millis(base);
            assert!(
                *delay >= base / 2 && *delay <= base,
                "{delay:?} for {base:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
