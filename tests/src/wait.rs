//! Polling with a deadline: the only synchronisation primitive the tests use.

use std::time::{Duration, Instant};

/// Default poll interval.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` until it returns true or `timeout` elapses; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Polls `probe` until it yields `Some`, or returns `None` once `timeout` elapses.
pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}
