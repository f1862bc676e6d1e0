//! Cluster mode's work on the plugin's tick, shared by a plugin's root
//! context and its requests (one VM, one thread): the calls that must reach
//! the store (`tenant_guard_core::cluster::settle::RetryQueue`: completes and
//! releases that failed, and on ngx_wasm_module every complete and release,
//! since the engine dispatches only from request phases and ticks) and the
//! leases whose lapsed slots go back to Redis (`LeaseBook`). The root sends
//! them and hands each answer back to the core; nothing here decides.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::types::LogLevel;
use tenant_guard_core::cluster::settle::{LeaseBook, Pending, Retry, RetryQueue};
use tenant_guard_core::cluster::{Call, CallOutcome, ClusterStore, Settled, StoreEvent};
use tenant_guard_core::config::CompiledConfig;
use tenant_guard_core::maintenance;

use crate::host::{self, Metrics};

#[derive(Debug, Default)]
struct State {
    queue: RetryQueue,
    book: LeaseBook,
}

/// The root's queue and lease book; requests hold a clone.
#[derive(Debug, Default, Clone)]
pub struct Settle {
    state: Rc<RefCell<State>>,
}

/// A call the root sent, and what to do with its answer.
#[derive(Debug)]
pub enum Sent {
    /// From the retry queue: back into it if it fails again.
    Queued(Pending),
    /// Lapsed slots given back: lost if it fails (never sent twice).
    Return(Call),
}

impl Settle {
    /// Hands over what `cluster` left for the root: calls to send again,
    /// leases to watch; counts and logs its events.
    pub fn collect(&self, cluster: &mut ClusterStore, metrics: &Metrics) {
        let now = host::now_unix_ns();
        if let Ok(mut state) = self.state.try_borrow_mut() {
            for call in cluster.take_retries() {
                let retry = state.queue.push(call, 1, now);
                cluster.note_retry(retry);
            }
            for lease in cluster.take_refilled() {
                state.book.hold(lease);
            }
        }
        report(cluster, metrics);
    }

    /// Queues `call` for its first attempt at the next tick; `false` when
    /// the queue is full (the call is lost, and counted).
    pub fn queue(&self, call: Call) -> bool {
        let now = host::now_unix_ns();
        self.state
            .try_borrow_mut()
            .is_ok_and(|mut state| state.queue.push(call, 0, now) == Retry::Scheduled)
    }

    /// Whether the tick has anything to do for cluster mode.
    pub fn is_idle(&self) -> bool {
        self.state
            .try_borrow()
            .is_ok_and(|state| state.queue.is_empty() && state.book.is_empty())
    }

    /// From the root's tick: sends the calls due and the lapsed slots of
    /// every lease; the host tokens of what was sent.
    pub fn tick(
        &self,
        config: &CompiledConfig,
        root: &mut ClusterStore,
        metrics: &Metrics,
    ) -> Vec<(u32, Sent)> {
        let Some(cluster) = config.store.cluster.as_ref() else {
            return Vec::new();
        };
        let store = crate::host_store(Some(config));
        let now = host::now_unix_ns();
        let (due, returns) = match self.state.try_borrow_mut() {
            Ok(mut state) => {
                let due = state.queue.due(now);
                // A lease untouched since the last tick goes back whole.
                let idle_ns = maintenance::TICK_SECONDS * 1_000_000_000;
                let returns = state.book.sweep(
                    &store,
                    &cluster.upstream,
                    cluster.timeout_ms,
                    idle_ns,
                    now,
                    config.store.max_cas_retries,
                );
                (due, returns)
            }
            Err(_) => return Vec::new(),
        };
        let mut sent = Vec::with_capacity(due.len() + returns.len());
        for pending in due {
            if pending.attempts() > 1 {
                metrics.count_store(&StoreEvent::Retried);
            }
            match host::dispatch_store_call(&pending.call, None) {
                Ok(token) => sent.push((token, Sent::Queued(pending))),
                Err(reason) => {
                    let call = pending.call.clone();
                    root.on_settled(config, &store, &call, CallOutcome::Failed(reason), now);
                    self.failed(pending, root);
                }
            }
        }
        for (call, slots) in returns {
            metrics.count_store(&StoreEvent::Returned(slots));
            match host::dispatch_store_call(&call, None) {
                Ok(token) => sent.push((token, Sent::Return(call))),
                Err(reason) => {
                    root.on_settled(config, &store, &call, CallOutcome::Failed(reason), now);
                }
            }
        }
        report(root, metrics);
        sent
    }

    /// The answer to a call the root sent.
    pub fn answered(
        &self,
        config: &CompiledConfig,
        root: &mut ClusterStore,
        sent: Sent,
        outcome: CallOutcome,
        metrics: &Metrics,
    ) {
        let store = crate::host_store(Some(config));
        let now = host::now_unix_ns();
        match sent {
            Sent::Queued(pending) => {
                let settled = root.on_settled(config, &store, &pending.call, outcome, now);
                match settled {
                    Settled::Acknowledged => {}
                    Settled::Refused => root.note_retry(Retry::Abandoned),
                    Settled::Failed => self.failed(pending, root),
                }
            }
            Sent::Return(call) => {
                let _ = root.on_settled(config, &store, &call, outcome, now);
            }
        }
        report(root, metrics);
    }

    fn failed(&self, pending: Pending, root: &mut ClusterStore) {
        let now = host::now_unix_ns();
        if let Ok(mut state) = self.state.try_borrow_mut() {
            let retry = state.queue.failed(pending, now);
            root.note_retry(retry);
        }
    }
}

/// Counts and logs what `cluster` saw (once per transition for log lines).
pub fn report(cluster: &mut ClusterStore, metrics: &Metrics) {
    for event in cluster.take_events() {
        metrics.count_store(&event);
        if let Some(line) = event.log_line() {
            host::log(LogLevel::Warn, &line);
        }
    }
}
