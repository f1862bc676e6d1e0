//! Store calls a request hands to its plugin's next tick: on ngx_wasm_module
//! a call may only be dispatched from request phases and ticks (anything else
//! traps the instance), so completing and releasing a claim wait here and
//! the root context sends them (`ClusterStore` decides which calls come here:
//! `Route::Queue`). Bounded: a full outbox refuses the call, counted and
//! logged, rather than growing without limit.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use proxy_wasm::types::LogLevel;
use tenant_guard_core::cluster::{Call, CallOutcome, ClusterStore};
use tenant_guard_core::config::CompiledConfig;

use crate::host::{self, Metrics};

/// Calls one worker holds at most between two ticks.
const MAX_QUEUED: usize = 4096;

/// The calls waiting for the next tick; shared by a plugin's root and requests.
#[derive(Debug, Default, Clone)]
pub struct Outbox {
    queued: Rc<RefCell<VecDeque<Call>>>,
}

impl Outbox {
    /// Queues `call`; `false` when the outbox is full (the call is dropped).
    pub fn push(&self, call: Call) -> bool {
        let mut queued = self.queued.borrow_mut();
        if queued.len() >= MAX_QUEUED {
            return false;
        }
        queued.push_back(call);
        true
    }

    pub fn is_empty(&self) -> bool {
        self.queued.borrow().is_empty()
    }

    /// Sends everything queued from the root context; the host tokens of the
    /// calls sent (their answers come to the root).
    pub fn flush(
        &self,
        config: &CompiledConfig,
        settle: &mut ClusterStore,
        metrics: &Metrics,
    ) -> Vec<u32> {
        let calls: Vec<Call> = self.queued.borrow_mut().drain(..).collect();
        let store = crate::host_store(Some(config));
        let mut sent = Vec::with_capacity(calls.len());
        for call in calls {
            match host::dispatch_store_call(&call, None) {
                Ok(token) => sent.push(token),
                Err(reason) => settle.on_settled(
                    config,
                    &store,
                    CallOutcome::Failed(reason),
                    host::now_unix_ns(),
                ),
            }
        }
        report(settle, metrics);
        sent
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
