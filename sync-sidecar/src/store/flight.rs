//! One lease call to Redis in flight per tenant limit (`POST /v1/lease`): a
//! request that arrives while one is out waits for its answer and is served
//! from the batch it brings back, instead of sending its own.
//!
//! The filter refills a gateway's lease with one request at a time; requests
//! that find the lease empty meanwhile ask for their own slot (a paused
//! proxy-wasm request can only be woken by the answer to a call of its own).
//! Here those joiners meet the refill: when its answer arrives, each joiner
//! (in arrival order) gets its slots out of what the refill was granted beyond
//! its own, and the refill keeps the rest. A refusal answers every joiner at
//! once. A joiner the batch cannot serve sends its own call, as does every
//! joiner when the refill failed, so nothing waits longer than one Redis call
//! plus its own.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use tenant_guard_core::cluster::wire::{LeaseAnswer, LeaseRequest};
use tokio::sync::oneshot;

use super::error::StoreError;

/// A request waiting for the flight of its limit.
#[derive(Debug)]
struct Joiner {
    need: u64,
    want: u64,
    /// `None`: not served, make your own call.
    answer: oneshot::Sender<Option<LeaseAnswer>>,
}

/// How a lease request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// By its own Redis call.
    Called,
    /// Out of another request's call.
    Joined,
}

/// The flights in progress, by scope and limit.
#[derive(Debug, Default)]
pub struct Flights {
    open: Mutex<HashMap<(String, String), Vec<Joiner>>>,
}

impl Flights {
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `request` by `call` (one Redis call), or out of the call
    /// already in flight for its limit.
    pub async fn lease<F, Fut>(
        &self,
        request: &LeaseRequest,
        call: F,
    ) -> (Result<LeaseAnswer, StoreError>, Served)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<LeaseAnswer, StoreError>>,
    {
        if request.want == 0 {
            // Slots given back only: nothing to share.
            return (call().await, Served::Called);
        }
        let key = (request.scope.clone(), request.limit.clone());
        let joined = {
            let Ok(mut open) = self.open.lock() else {
                return (call().await, Served::Called);
            };
            match open.get_mut(&key) {
                Some(joiners) => {
                    let (sender, receiver) = oneshot::channel();
                    joiners.push(Joiner {
                        need: request.need,
                        want: request.want,
                        answer: sender,
                    });
                    Some(receiver)
                }
                None => {
                    open.insert(key.clone(), Vec::new());
                    None
                }
            }
        };
        if let Some(receiver) = joined {
            return match receiver.await {
                Ok(Some(answer)) => (Ok(answer), Served::Joined),
                _ => (call().await, Served::Called),
            };
        }
        let result = call().await;
        let joiners = self
            .open
            .lock()
            .ok()
            .and_then(|mut open| open.remove(&key))
            .unwrap_or_default();
        match result {
            Ok(answer) => (Ok(share(request, answer, joiners)), Served::Called),
            Err(error) => {
                for joiner in joiners {
                    let _ = joiner.answer.send(None);
                }
                (Err(error), Served::Called)
            }
        }
    }
}

/// Serves `joiners` out of what `request`'s call was granted beyond its own
/// need; the rest stays `request`'s.
fn share(request: &LeaseRequest, answer: LeaseAnswer, joiners: Vec<Joiner>) -> LeaseAnswer {
    if answer.granted == 0 {
        for joiner in joiners {
            let _ = joiner.answer.send(Some(answer));
        }
        return answer;
    }
    let mut surplus = answer.granted.saturating_sub(request.need);
    for joiner in joiners {
        if surplus < joiner.need.max(1) {
            let _ = joiner.answer.send(None);
            continue;
        }
        let granted = joiner.want.clamp(joiner.need.max(1), surplus);
        surplus -= granted;
        let served = LeaseAnswer {
            granted,
            remaining: answer.remaining.saturating_add(surplus),
            ..answer
        };
        if joiner.answer.send(Some(served)).is_err() {
            // The joiner gave up (its connection closed): its slots stay here.
            surplus += granted;
        }
    }
    LeaseAnswer {
        granted: request.need.saturating_add(surplus),
        ..answer
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Notify;

    fn request(want: u64) -> LeaseRequest {
        LeaseRequest {
            scope: "acme".to_owned(),
            limit: "tenant".to_owned(),
            emission_us: 1_000,
            capacity_us: 100_000,
            want,
            need: 1,
            returned: 0,
            lease_ttl_ms: 0,
        }
    }

    fn granted(granted: u64) -> LeaseAnswer {
        LeaseAnswer {
            granted,
            remaining: 50,
            reset_seconds: 1,
            retry_after_seconds: 0,
        }
    }

    /// Polls until `flights` holds `joiners` waiting requests in one flight.
    async fn queued(flights: &Flights, joiners: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let open = flights
                .open
                .lock()
                .map(|open| open.values().next().map(Vec::len))
                .unwrap_or(None);
            if open == Some(joiners) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "never queued");
            tokio::task::yield_now().await;
        }
    }

    /// A refill (want 8) whose Redis call answers `redis_grants` once
    /// `joiners` requests (want 1) wait for it: (the refill's answer, the
    /// joiners' answers, Redis calls made).
    async fn flight(
        redis_grants: u64,
        joiners: usize,
    ) -> (LeaseAnswer, Vec<(LeaseAnswer, Served)>, u64) {
        let flights = Arc::new(Flights::new());
        let calls = Arc::new(AtomicU64::new(0));
        let release = Arc::new(Notify::new());
        let leader = {
            let (flights, calls, release) = (flights.clone(), calls.clone(), release.clone());
            tokio::spawn(async move {
                flights
                    .lease(&request(8), || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let release = release.clone();
                        async move {
                            release.notified().await;
                            Ok(granted(redis_grants))
                        }
                    })
                    .await
            })
        };
        queued(&flights, 0).await;
        let waiting: Vec<_> = (0..joiners)
            .map(|_| {
                let (flights, calls) = (flights.clone(), calls.clone());
                tokio::spawn(async move {
                    flights
                        .lease(&request(1), || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            async { Ok(granted(1)) }
                        })
                        .await
                })
            })
            .collect();
        queued(&flights, joiners).await;
        release.notify_one();
        let (answer, served) = leader.await.unwrap();
        assert_eq!(served, Served::Called);
        let mut answers = Vec::new();
        for handle in waiting {
            let (answer, served) = handle.await.unwrap();
            answers.push((answer.unwrap(), served));
        }
        (answer.unwrap(), answers, calls.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn joiners_are_served_from_the_refill_in_flight() {
        let (refill, joiners, calls) = flight(8, 3).await;
        assert_eq!(calls, 1, "one Redis call for four requests");
        assert_eq!(refill.granted, 5, "the refill keeps what the joiners left");
        assert_eq!(joiners.len(), 3);
        for (answer, served) in &joiners {
            assert_eq!((answer.granted, *served), (1, Served::Joined));
        }
    }

    #[tokio::test]
    async fn joiners_the_batch_cannot_serve_make_their_own_call() {
        let (refill, joiners, calls) = flight(2, 3).await;
        assert_eq!(refill.granted, 1, "the refill's own slot only");
        assert_eq!(calls, 3, "the refill and two joiners called Redis");
        let joined = joiners
            .iter()
            .filter(|(_, served)| *served == Served::Joined)
            .count();
        assert_eq!(joined, 1);
    }

    #[tokio::test]
    async fn a_refusal_answers_every_joiner() {
        let (refill, joiners, calls) = flight(0, 2).await;
        assert_eq!((refill.granted, calls), (0, 1));
        assert!(joiners.iter().all(|(answer, _)| answer.granted == 0));
    }
}
