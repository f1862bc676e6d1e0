//! The store endpoint against real Redis: a fresh `redis-server` per test
//! ([`RedisServer`], never the shared one) and a 3-node Redis Cluster
//! ([`RedisCluster`]); the endpoint in process on port 0, spoken to over
//! HTTP/1.1, and the `store` subcommand of the built binary.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tenant_guard_core::cluster::wire::{
    self, ClaimAnswer, ClaimRequest, CompleteRequest, LeaseAnswer, LeaseRequest, ReleaseRequest,
    UpdateAnswer, WireResponse,
};
use tenant_guard_sidecar::metrics::{StoreMetrics, StoreOp, StoreOutcome};
use tenant_guard_sidecar::store::{RedisStore, RedisTarget, StoreServer};
use tenant_guard_sidecar::test_support::{RedisCluster, RedisServer};
use tokio::sync::oneshot;

const BIN: &str = env!("CARGO_BIN_EXE_tenant-guard-sidecar");

/// The store endpoint in process, stopped on drop.
struct Endpoint {
    addr: SocketAddr,
    metrics: Arc<StoreMetrics>,
    stop: Option<oneshot::Sender<()>>,
}

impl Endpoint {
    async fn start(target: RedisTarget) -> Self {
        let store = Arc::new(RedisStore::new(&target).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = StoreServer::new(listener, store, Arc::default());
        let addr = server.local_addr().unwrap();
        let metrics = server.metrics();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            metrics,
            stop: Some(stop),
        }
    }

    async fn standalone(redis: &RedisServer) -> Self {
        Self::start(RedisTarget::Standalone(redis.url())).await
    }

    async fn post(&self, path: &str, body: impl Into<Vec<u8>>) -> Answer {
        call(self.addr, "POST", path, body.into()).await
    }

    async fn post_json(&self, path: &str, body: &impl serde::Serialize) -> Answer {
        self.post(path, serde_json::to_vec(body).unwrap()).await
    }

    async fn lease(&self, request: &LeaseRequest) -> LeaseAnswer {
        self.post_json(wire::LEASE_PATH, request).await.ok()
    }

    async fn claim(&self, request: &ClaimRequest) -> ClaimAnswer {
        self.post_json(wire::CLAIM_PATH, request).await.ok()
    }

    async fn complete(&self, request: &CompleteRequest) -> bool {
        let answer: UpdateAnswer = self.post_json(wire::COMPLETE_PATH, request).await.ok();
        answer.updated
    }

    async fn release(&self, request: &ReleaseRequest) -> bool {
        let answer: UpdateAnswer = self.post_json(wire::RELEASE_PATH, request).await.ok();
        answer.updated
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    /// The `200` answer, parsed.
    #[track_caller]
    fn ok<T: serde::de::DeserializeOwned>(&self) -> T {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        assert_eq!(self.content_type, "application/json");
        serde_json::from_slice(&self.body).unwrap()
    }

    /// A problem+json answer with `status`, its body checked and returned.
    #[track_caller]
    fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.content_type, "application/problem+json");
        let problem: Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(problem["status"], json!(status), "{problem}");
        assert!(problem["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:tenant-guard:problem:"));
        assert!(problem["title"].is_string());
        let detail = problem["detail"].as_str().unwrap();
        assert!(!detail.is_empty() && detail.len() <= 512, "{detail}");
        problem
    }
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: Vec<u8>) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", wire::AUTHORITY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        content_type,
        body,
    }
}

/// Polls `probe` until it yields, failing after `within`.
async fn poll<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- requests ----------------------------------------------------------

/// 50 per 60 s with a burst of 50.
fn lease_request(scope: &str, want: u64) -> LeaseRequest {
    LeaseRequest {
        scope: scope.to_owned(),
        limit: "tenant".to_owned(),
        emission_us: 1_200_000,
        capacity_us: 50 * 1_200_000,
        want,
        need: 1,
        returned: 0,
        lease_ttl_ms: 0,
    }
}

fn key(n: u32) -> String {
    format!("{n:032x}")
}

const ROUTE: &str = "0123456789abcdef";
const BODY: &str = "fedcba9876543210";

fn claim_request(scope: &str, key: &str, body: Option<&str>) -> ClaimRequest {
    ClaimRequest {
        scope: scope.to_owned(),
        key: key.to_owned(),
        route: ROUTE.to_owned(),
        body: body.map(str::to_owned),
        in_flight_ms: 30_000,
        scope_limit: 1000,
        ttl_ms: 0,
    }
}

fn stored_response() -> WireResponse {
    WireResponse {
        status: 201,
        headers: vec![
            (
                "content-type".to_owned(),
                "application/octet-stream".to_owned(),
            ),
            ("x-order".to_owned(), "42".to_owned()),
        ],
        body: wire::to_hex(&[0x00, 0xff, 0x7f, b'{', b'"', 0x80, b'\n', 0x00]),
    }
}

fn complete_request(
    scope: &str,
    key: &str,
    generation: u64,
    response: Option<WireResponse>,
) -> CompleteRequest {
    CompleteRequest {
        scope: scope.to_owned(),
        key: key.to_owned(),
        generation,
        body: Some(BODY.to_owned()),
        status: response.as_ref().map_or(500, |r| r.status),
        response,
        ttl_ms: 60_000,
    }
}

fn release_request(scope: &str, key: &str, generation: u64) -> ReleaseRequest {
    ReleaseRequest {
        scope: scope.to_owned(),
        key: key.to_owned(),
        generation,
    }
}

fn generation(answer: &ClaimAnswer) -> u64 {
    match answer {
        ClaimAnswer::Claimed { generation } => *generation,
        other => panic!("expected claimed, got {other:?}"),
    }
}

// ---- the cases, against either Redis -----------------------------------

/// Concurrent leases asking 1..8 slots each grant exactly the burst, then refuse.
async fn lease_is_exact(endpoint: &Arc<Endpoint>, scope: &str) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let endpoint = endpoint.clone();
        let scope = scope.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut granted = 0;
            let want = worker + 1;
            loop {
                let answer = endpoint.lease(&lease_request(&scope, want)).await;
                assert!(answer.granted <= want, "{answer:?}");
                if answer.granted == 0 {
                    assert!(answer.retry_after_seconds >= 1, "{answer:?}");
                    return granted;
                }
                assert_eq!(answer.retry_after_seconds, 0, "{answer:?}");
                assert!(answer.reset_seconds >= 1, "{answer:?}");
                granted += answer.granted;
            }
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    // Exactly the burst, unless the calls took longer than one emission
    // (1.2 s) on a loaded machine: then the slots GCRA freed meanwhile, no more.
    let freed = u64::try_from(started.elapsed().as_micros() / 1_200_000).unwrap();
    assert!(
        (50..=50 + freed).contains(&total),
        "a burst of 50 was granted as {total} ({freed} freed meanwhile)"
    );
    let refused = endpoint.lease(&lease_request(scope, 1)).await;
    assert_eq!(refused.granted, 0, "{refused:?}");
    assert_eq!(refused.remaining, 0, "{refused:?}");
    assert!(refused.retry_after_seconds >= 1, "{refused:?}");
    assert!(refused.reset_seconds >= 59, "{refused:?}");
}

/// Claim, in flight, complete, then every kind of retry.
async fn claim_complete_replay(endpoint: &Endpoint, scope: &str) {
    let key = key(1);
    let claimed = endpoint
        .claim(&claim_request(scope, &key, Some(BODY)))
        .await;
    let generation = generation(&claimed);
    assert_eq!(
        endpoint
            .claim(&claim_request(scope, &key, Some(BODY)))
            .await,
        ClaimAnswer::InFlight
    );
    let mut other_route = claim_request(scope, &key, Some(BODY));
    other_route.route = "1111111111111111".to_owned();
    assert_eq!(endpoint.claim(&other_route).await, ClaimAnswer::Mismatch);
    assert!(
        endpoint
            .complete(&complete_request(
                scope,
                &key,
                generation,
                Some(stored_response())
            ))
            .await
    );
    // Completed once: a second complete of the same claim changes nothing.
    assert!(
        !endpoint
            .complete(&complete_request(scope, &key, generation, None))
            .await
    );
    assert_eq!(
        endpoint.claim(&claim_request(scope, &key, None)).await,
        ClaimAnswer::NeedBody
    );
    assert_eq!(
        endpoint
            .claim(&claim_request(scope, &key, Some("0000000000000000")))
            .await,
        ClaimAnswer::Mismatch
    );
    assert_eq!(endpoint.claim(&other_route).await, ClaimAnswer::Mismatch);
    let replay = endpoint
        .claim(&claim_request(scope, &key, Some(BODY)))
        .await;
    let ClaimAnswer::Replay { response } = replay else {
        panic!("expected replay, got {replay:?}");
    };
    assert_eq!(response, stored_response());
    assert_eq!(
        wire::from_hex(&response.body).unwrap(),
        wire::from_hex(&stored_response().body).unwrap()
    );
    // A second replay answers the very same bytes.
    let first = endpoint
        .post_json(wire::CLAIM_PATH, &claim_request(scope, &key, Some(BODY)))
        .await;
    let second = endpoint
        .post_json(wire::CLAIM_PATH, &claim_request(scope, &key, Some(BODY)))
        .await;
    assert_eq!(first.body, second.body);

    // Not replayable: only the status is kept.
    let key = self::key(2);
    let generation = self::generation(&endpoint.claim(&claim_request(scope, &key, None)).await);
    assert!(
        endpoint
            .complete(&complete_request(scope, &key, generation, None))
            .await
    );
    assert_eq!(
        endpoint
            .claim(&claim_request(scope, &key, Some(BODY)))
            .await,
        ClaimAnswer::NotReplayable { status: 500 }
    );
}

/// Release frees the key for a new claim (a new generation); the old
/// generation can neither complete nor release any more.
async fn release_and_reclaim(endpoint: &Endpoint, scope: &str) {
    let key = key(3);
    let first = generation(
        &endpoint
            .claim(&claim_request(scope, &key, Some(BODY)))
            .await,
    );
    assert!(
        !endpoint
            .release(&release_request(scope, &key, first + 1))
            .await
    );
    assert!(endpoint.release(&release_request(scope, &key, first)).await);
    assert!(!endpoint.release(&release_request(scope, &key, first)).await);
    let second = generation(
        &endpoint
            .claim(&claim_request(scope, &key, Some(BODY)))
            .await,
    );
    assert!(second > first, "{second} after {first}");
    assert!(
        !endpoint
            .complete(&complete_request(
                scope,
                &key,
                first,
                Some(stored_response())
            ))
            .await,
        "a stale generation completed"
    );
    assert_eq!(
        endpoint
            .claim(&claim_request(scope, &key, Some(BODY)))
            .await,
        ClaimAnswer::InFlight
    );
    assert!(
        endpoint
            .complete(&complete_request(
                scope,
                &key,
                second,
                Some(stored_response())
            ))
            .await
    );
    // A done record is not released.
    assert!(
        !endpoint
            .release(&release_request(scope, &key, second))
            .await
    );
}

/// A scope holds at most `scope_limit` live records; other scopes are not affected.
async fn tenant_full(endpoint: &Endpoint, scope: &str, other_scope: &str) {
    let limited = |key: &str, scope: &str| ClaimRequest {
        scope_limit: 2,
        ..claim_request(scope, key, None)
    };
    // Any records the scope holds from other cases count too: use a fresh scope.
    generation(&endpoint.claim(&limited(&key(100), scope)).await);
    generation(&endpoint.claim(&limited(&key(101), scope)).await);
    match endpoint.claim(&limited(&key(102), scope)).await {
        ClaimAnswer::TenantFull {
            retry_after_seconds,
        } => assert!(
            (1..=30).contains(&retry_after_seconds),
            "{retry_after_seconds}"
        ),
        other => panic!("expected tenant_full, got {other:?}"),
    }
    // A key the scope already holds is still answered.
    assert_eq!(
        endpoint.claim(&limited(&key(100), scope)).await,
        ClaimAnswer::InFlight
    );
    generation(&endpoint.claim(&limited(&key(102), other_scope)).await);
}

/// 100 concurrent claims of one key: exactly one wins.
async fn one_winner_of_many(endpoint: &Arc<Endpoint>, scope: &str) {
    let key = key(7);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let endpoint = endpoint.clone();
        let request = claim_request(scope, &key, Some(BODY));
        tasks.push(tokio::spawn(async move { endpoint.claim(&request).await }));
    }
    let mut claimed = 0;
    for task in tasks {
        match task.await.unwrap() {
            ClaimAnswer::Claimed { .. } => claimed += 1,
            ClaimAnswer::InFlight => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(claimed, 1);
}

// ---- standalone ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_grant_exactly_the_burst_to_concurrent_callers() {
    let redis = RedisServer::start();
    let endpoint = Arc::new(Endpoint::standalone(&redis).await);
    lease_is_exact(&endpoint, "acme").await;
    // Another limit of the same tenant, and another tenant, have their own buckets.
    let mut other = lease_request("acme", 3);
    other.limit = "orders".to_owned();
    assert_eq!(endpoint.lease(&other).await.granted, 3);
    assert_eq!(
        endpoint
            .lease(&lease_request(wire::POOLED_SCOPE, 8))
            .await
            .granted,
        8
    );
    assert_eq!(
        endpoint
            .metrics
            .requests(StoreOp::Lease, StoreOutcome::RedisError),
        0
    );
    assert!(endpoint.metrics.requests(StoreOp::Lease, StoreOutcome::Ok) >= 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_limit_keeps_its_backlog() {
    let redis = RedisServer::start();
    let endpoint = Endpoint::standalone(&redis).await;
    // 10 of 50 taken at 1.2 s each…
    assert_eq!(endpoint.lease(&lease_request("acme", 10)).await.granted, 10);
    // …is a backlog of 10 slots at 0.6 s each after the limit doubles: 90 of 100 left.
    let doubled = LeaseRequest {
        emission_us: 600_000,
        capacity_us: 100 * 600_000,
        ..lease_request("acme", 1000)
    };
    let answer = endpoint.lease(&doubled).await;
    assert!((90..=91).contains(&answer.granted), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_get_a_fair_share_and_unused_slots_come_back() {
    let redis = RedisServer::start();
    // Two store sidecars: two lease holders on one limit of 400 per hour.
    let (a, b) = (
        Endpoint::standalone(&redis).await,
        Endpoint::standalone(&redis).await,
    );
    let limit = |want: u64, returned: u64| LeaseRequest {
        emission_us: 9_000_000,
        capacity_us: 400 * 9_000_000,
        need: want.min(1),
        returned,
        ..lease_request("acme", want)
    };
    // Alone, a gateway may take what it asks for.
    assert_eq!(a.lease(&limit(100, 0)).await.granted, 100);
    // With two holders, each batch is at most half of what is left beyond
    // the asking request's own slot: 1 + ⌊(300 - 1) / 2⌋.
    let answer = b.lease(&limit(400, 0)).await;
    assert_eq!((answer.granted, answer.remaining), (150, 150), "{answer:?}");
    assert_eq!(a.lease(&limit(400, 0)).await.granted, 75);
    // A request that needs a slot gets it even when its share is nothing more.
    let answer = b.lease(&limit(1, 0)).await;
    assert_eq!(answer.granted, 1, "{answer:?}");
    // Unused slots given back are free again, never more than the burst.
    let answer = a.lease(&limit(0, 60)).await;
    assert_eq!((answer.granted, answer.remaining), (0, 134), "{answer:?}");
    let answer = b.lease(&limit(0, 10_000)).await;
    assert_eq!(answer.remaining, 400, "{answer:?}");
    let answer = a.lease(&limit(1, 0)).await;
    assert_eq!((answer.granted, answer.remaining), (1, 399), "{answer:?}");
    // A top-up (the asking request was served from its lease already)
    // needs nothing for itself: it gets its share, or nothing, never a refusal.
    let top_up = LeaseRequest {
        need: 0,
        ..limit(500, 0)
    };
    let answer = b.lease(&top_up).await;
    assert_eq!(
        (answer.granted, answer.retry_after_seconds),
        (199, 0),
        "{answer:?}"
    );
    let answer = a.lease(&top_up).await;
    assert_eq!((answer.granted, answer.remaining), (100, 100), "{answer:?}");
}

/// Claims `key` for 200 ms (kept completable for 60 s) and waits until its
/// in-flight time is over; its generation.
async fn claim_and_let_lapse(endpoint: &Endpoint, key: &str) -> u64 {
    let started = Instant::now();
    let claimed = generation(&endpoint.claim(&short_claim(key)).await);
    poll(Duration::from_secs(5), "the in-flight time", || async {
        (started.elapsed() > Duration::from_millis(300)).then_some(())
    })
    .await;
    claimed
}

fn short_claim(key: &str) -> ClaimRequest {
    ClaimRequest {
        in_flight_ms: 200,
        ttl_ms: 60_000,
        ..claim_request("acme", key, Some(BODY))
    }
}

fn leases_item(limit: &str, quota_end: Option<u64>, want: u64, need: u64) -> wire::LeaseItem {
    wire::LeaseItem {
        limit: limit.to_owned(),
        // 10 per second, burst 10.
        rate: quota_end.is_none().then_some(wire::RateWindow {
            emission_us: 100_000,
            capacity_us: 1_000_000,
        }),
        // 5 per window.
        quota: quota_end.map(|window_end_s| wire::QuotaWindow {
            requests: 5,
            window_end_s,
        }),
        want,
        need,
        returned: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_limits_are_granted_all_or_none() {
    let redis = RedisServer::start();
    let endpoint = Endpoint::standalone(&redis).await;
    let window_end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let leases = |items: Vec<wire::LeaseItem>| wire::LeasesRequest {
        scope: "acme".to_owned(),
        items,
        lease_ttl_ms: 0,
    };
    let both = || {
        leases(vec![
            leases_item("burst", None, 1, 1),
            leases_item("month", Some(window_end), 1, 1),
        ])
    };
    for _ in 0..5 {
        let answer: wire::LeasesAnswer = endpoint.post_json(wire::LEASES_PATH, &both()).await.ok();
        assert_eq!(
            answer
                .items
                .iter()
                .map(|item| item.granted)
                .collect::<Vec<_>>(),
            [1, 1]
        );
    }
    // The quota is spent: neither limit grants anything, and the rate's
    // slot is not taken (it still has 5 of its 10).
    let answer: wire::LeasesAnswer = endpoint.post_json(wire::LEASES_PATH, &both()).await.ok();
    assert_eq!(answer.items[0].granted, 0);
    assert_eq!(
        answer.items[0].retry_after_seconds, 0,
        "the rate did not refuse"
    );
    assert_eq!(answer.items[1].granted, 0);
    assert!(answer.items[1].retry_after_seconds >= 3599, "{answer:?}");
    let rate: wire::LeasesAnswer = endpoint
        .post_json(
            wire::LEASES_PATH,
            &leases(vec![leases_item("burst", None, 10, 1)]),
        )
        .await
        .ok();
    assert!((5..=6).contains(&rate.items[0].granted), "{rate:?}");
    // Slots given back to the quota's window count again.
    let mut back = leases_item("month", Some(window_end), 0, 0);
    back.returned = 2;
    let answer: wire::LeasesAnswer = endpoint
        .post_json(wire::LEASES_PATH, &leases(vec![back]))
        .await
        .ok();
    assert_eq!((answer.items[0].granted, answer.items[0].remaining), (0, 2));
    // A quota item of another window is another counter.
    let next = leases(vec![leases_item("month", Some(window_end + 86_400), 5, 5)]);
    let answer: wire::LeasesAnswer = endpoint.post_json(wire::LEASES_PATH, &next).await.ok();
    assert_eq!(answer.items[0].granted, 5);
    // Malformed: no window, both windows, too many items.
    let mut neither = leases_item("x", None, 1, 1);
    neither.rate = None;
    let mut two = leases_item("x", Some(window_end), 1, 1);
    two.rate = Some(wire::RateWindow {
        emission_us: 1,
        capacity_us: 1,
    });
    let many: Vec<_> = (0..17)
        .map(|n| leases_item(&format!("l{n}"), None, 1, 1))
        .collect();
    for bad in [
        leases(vec![neither]),
        leases(vec![two]),
        leases(many),
        leases(vec![]),
    ] {
        endpoint
            .post_json(wire::LEASES_PATH, &bad)
            .await
            .problem(400);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_usage_is_taken_whatever_is_left() {
    let redis = RedisServer::start();
    let endpoint = Endpoint::standalone(&redis).await;
    let window_end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let item = |limit: &str, quota: Option<u64>, units: u64| {
        let lease = leases_item(limit, quota, 1, 1);
        wire::DebitItem {
            limit: lease.limit,
            rate: lease.rate,
            quota: lease.quota,
            units,
        }
    };
    let debit = |items| wire::DebitRequest {
        scope: "acme".to_owned(),
        items,
    };
    // 4 of the quota's 5 and 8 of the rate's 10 reported at once…
    let answer: wire::UpdateAnswer = endpoint
        .post_json(
            wire::DEBIT_PATH,
            &debit(vec![
                item("month", Some(window_end), 4),
                item("burst", None, 8),
            ]),
        )
        .await
        .ok();
    assert!(answer.updated);
    // …leave 1 of the quota and about 2 of the rate.
    let leases = |items| wire::LeasesRequest {
        scope: "acme".to_owned(),
        items,
        lease_ttl_ms: 0,
    };
    let answer: wire::LeasesAnswer = endpoint
        .post_json(
            wire::LEASES_PATH,
            &leases(vec![leases_item("month", Some(window_end), 5, 1)]),
        )
        .await
        .ok();
    assert_eq!(answer.items[0].granted, 1, "{answer:?}");
    let answer: wire::LeasesAnswer = endpoint
        .post_json(
            wire::LEASES_PATH,
            &leases(vec![leases_item("burst", None, 10, 1)]),
        )
        .await
        .ok();
    assert!((2..=3).contains(&answer.items[0].granted), "{answer:?}");
    // Usage past what is left is still taken: the quota is overdrawn.
    let _: wire::UpdateAnswer = endpoint
        .post_json(
            wire::DEBIT_PATH,
            &debit(vec![item("month", Some(window_end), 50)]),
        )
        .await
        .ok();
    let overdrawn = redis
        .command(&format!("GET tg:{{acme}}:q:month:{window_end}"))
        .unwrap_or_default();
    assert!(overdrawn.contains("55"), "{overdrawn:?}");
    // Malformed: zero units, no window, no items.
    let mut neither = item("x", None, 1);
    neither.rate = None;
    for bad in [
        debit(vec![item("x", None, 0)]),
        debit(vec![neither]),
        debit(vec![]),
    ] {
        endpoint
            .post_json(wire::DEBIT_PATH, &bad)
            .await
            .problem(400);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_after_the_in_flight_time_still_records_unless_claimed_again() {
    let redis = RedisServer::start();
    let endpoint = Endpoint::standalone(&redis).await;
    // Nobody claimed the key again: the late complete records the response.
    let first = claim_and_let_lapse(&endpoint, &key(40)).await;
    let done = complete_request("acme", &key(40), first, Some(stored_response()));
    assert!(endpoint.complete(&done).await);
    assert!(matches!(
        endpoint.claim(&short_claim(&key(40))).await,
        ClaimAnswer::Replay { .. }
    ));
    // Claimed again after the lapse: the first claim cannot complete any more.
    let first = claim_and_let_lapse(&endpoint, &key(41)).await;
    let second = generation(&endpoint.claim(&short_claim(&key(41))).await);
    assert_ne!(first, second);
    let late = complete_request("acme", &key(41), first, Some(stored_response()));
    assert!(!endpoint.complete(&late).await);
    let done = complete_request("acme", &key(41), second, Some(stored_response()));
    assert!(endpoint.complete(&done).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_reports_whether_redis_persists() {
    let volatile = RedisServer::start();
    let persistent = RedisServer::start_persistent();
    for (redis, mode) in [(&volatile, "none"), (&persistent, "aof_always")] {
        let endpoint = Endpoint::standalone(redis).await;
        let series = format!("tenant_guard_store_redis_persistence{{mode=\"{mode}\"}} 1");
        poll(Duration::from_secs(10), &series, || async {
            let text = endpoint.metrics.render();
            text.lines().any(|line| line == series).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_complete_and_replay_the_stored_response() {
    let redis = RedisServer::start();
    let endpoint = Endpoint::standalone(&redis).await;
    claim_complete_replay(&endpoint, "acme").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_claims_are_claimed_again_with_a_new_generation() {
    let redis = RedisServer::start();
    let endpoint = Endpoint::standalone(&redis).await;
    release_and_reclaim(&endpoint, "acme").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_at_its_limit_is_full() {
    let redis = RedisServer::start();
    let endpoint = Endpoint::standalone(&redis).await;
    tenant_full(&endpoint, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_a_hundred_concurrent_claims_wins() {
    let redis = RedisServer::start();
    let endpoint = Arc::new(Endpoint::standalone(&redis).await);
    one_winner_of_many(&endpoint, "acme").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_as_problems() {
    let redis = RedisServer::start();
    let endpoint = Endpoint::standalone(&redis).await;
    for path in [
        wire::LEASE_PATH,
        wire::CLAIM_PATH,
        wire::COMPLETE_PATH,
        wire::RELEASE_PATH,
    ] {
        endpoint.post(path, "{not json").await.problem(400);
        endpoint.post(path, "").await.problem(400);
        endpoint.post(path, "[]").await.problem(400);
    }
    let mut bad_scope = lease_request("a}b", 1);
    endpoint
        .post_json(wire::LEASE_PATH, &bad_scope)
        .await
        .problem(400);
    bad_scope.scope = "x".repeat(129);
    endpoint
        .post_json(wire::LEASE_PATH, &bad_scope)
        .await
        .problem(400);
    endpoint
        .post_json(wire::LEASE_PATH, &lease_request("acme", 0))
        .await
        .problem(400);
    let mut bad_limit = lease_request("acme", 1);
    bad_limit.limit = "a:b".to_owned();
    endpoint
        .post_json(wire::LEASE_PATH, &bad_limit)
        .await
        .problem(400);
    let mut zero_emission = lease_request("acme", 1);
    zero_emission.emission_us = 0;
    endpoint
        .post_json(wire::LEASE_PATH, &zero_emission)
        .await
        .problem(400);
    let mut unknown_field = serde_json::to_value(lease_request("acme", 1)).unwrap();
    unknown_field["extra"] = json!(1);
    endpoint
        .post_json(wire::LEASE_PATH, &unknown_field)
        .await
        .problem(400);

    for bad_key in ["AB".repeat(16), "ab".repeat(15), "zz".repeat(16)] {
        let request = claim_request("acme", &bad_key, None);
        endpoint
            .post_json(wire::CLAIM_PATH, &request)
            .await
            .problem(400);
        let request = release_request("acme", &bad_key, 1);
        endpoint
            .post_json(wire::RELEASE_PATH, &request)
            .await
            .problem(400);
    }
    let mut bad_route = claim_request("acme", &key(1), None);
    bad_route.route = "0123".to_owned();
    endpoint
        .post_json(wire::CLAIM_PATH, &bad_route)
        .await
        .problem(400);
    let bad_body = claim_request("acme", &key(1), Some("XYZ"));
    endpoint
        .post_json(wire::CLAIM_PATH, &bad_body)
        .await
        .problem(400);
    let mut zero_in_flight = claim_request("acme", &key(1), None);
    zero_in_flight.in_flight_ms = 0;
    endpoint
        .post_json(wire::CLAIM_PATH, &zero_in_flight)
        .await
        .problem(400);
    let mut zero_ttl = complete_request("acme", &key(1), 1, None);
    zero_ttl.ttl_ms = 0;
    endpoint
        .post_json(wire::COMPLETE_PATH, &zero_ttl)
        .await
        .problem(400);
    let mut bad_response = stored_response();
    bad_response.body = "abc".to_owned();
    let request = complete_request("acme", &key(1), 1, Some(bad_response));
    endpoint
        .post_json(wire::COMPLETE_PATH, &request)
        .await
        .problem(400);

    // A huge unparsable body gets a bounded detail.
    let long = format!("{{\"scope\":\"{}\"", "a".repeat(100_000));
    endpoint.post(wire::LEASE_PATH, long).await.problem(400);

    call(endpoint.addr, "POST", "/v1/nope", b"{}".to_vec())
        .await
        .problem(404);
    call(endpoint.addr, "GET", "/", Vec::new())
        .await
        .problem(404);
    call(endpoint.addr, "GET", wire::LEASE_PATH, Vec::new())
        .await
        .problem(405);
    call(endpoint.addr, "PUT", wire::CLAIM_PATH, b"{}".to_vec())
        .await
        .problem(405);
    let too_big = vec![b' '; wire::MAX_REQUEST_BYTES + 1];
    endpoint
        .post(wire::COMPLETE_PATH, too_big)
        .await
        .problem(413);
    // Exactly the limit is read (and refused as JSON, not as size).
    let at_limit = vec![b' '; wire::MAX_REQUEST_BYTES];
    endpoint
        .post(wire::COMPLETE_PATH, at_limit)
        .await
        .problem(400);

    // Nothing reached Redis, and the refusals were counted.
    assert_eq!(
        endpoint.metrics.requests(StoreOp::Lease, StoreOutcome::Ok),
        0
    );
    assert!(
        endpoint
            .metrics
            .requests(StoreOp::Lease, StoreOutcome::BadRequest)
            >= 9
    );
    let metrics = call(endpoint.addr, "GET", "/metrics", Vec::new()).await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.lines().any(|line| line.starts_with(
            "tenant_guard_store_requests_total{op=\"claim\",outcome=\"bad_request\"} "
        )),
        "{text}"
    );
    assert!(text.contains("# TYPE tenant_guard_store_redis_seconds histogram"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_503_and_redis_back_is_200() {
    let mut redis = RedisServer::start();
    let endpoint = Endpoint::standalone(&redis).await;
    assert_eq!(endpoint.lease(&lease_request("acme", 1)).await.granted, 1);

    redis.kill();
    let started = Instant::now();
    let answer = endpoint
        .post_json(wire::LEASE_PATH, &lease_request("acme", 1))
        .await;
    answer.problem(503);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "503 took {:?}",
        started.elapsed()
    );
    // Every call while Redis is away is a bounded 503.
    for _ in 0..3 {
        let started = Instant::now();
        endpoint
            .post_json(wire::CLAIM_PATH, &claim_request("acme", &key(1), None))
            .await
            .problem(503);
        assert!(started.elapsed() < Duration::from_millis(1500));
    }
    assert!(
        endpoint
            .metrics
            .requests(StoreOp::Claim, StoreOutcome::RedisError)
            >= 3
    );

    redis.restart();
    let answer = poll(
        Duration::from_secs(15),
        "the endpoint answering again",
        || async {
            let answer = endpoint
                .post_json(wire::LEASE_PATH, &lease_request("acme", 1))
                .await;
            (answer.status == 200).then_some(answer)
        },
    )
    .await;
    // Redis came back empty: the bucket is full again.
    let answer: LeaseAnswer = answer.ok();
    assert_eq!(answer.granted, 1);
    assert_eq!(answer.remaining, 49);
    // And the scripts were loaded again.
    generation(&endpoint.claim(&claim_request("acme", &key(1), None)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_starts_while_redis_is_down() {
    let mut redis = RedisServer::start();
    redis.kill();
    let endpoint = Endpoint::standalone(&redis).await;
    endpoint
        .post_json(wire::LEASE_PATH, &lease_request("acme", 1))
        .await
        .problem(503);
    redis.restart();
    poll(
        Duration::from_secs(15),
        "the endpoint answering",
        || async {
            let answer = endpoint
                .post_json(wire::LEASE_PATH, &lease_request("acme", 1))
                .await;
            (answer.status == 200).then_some(())
        },
    )
    .await;
}

// ---- cluster -------------------------------------------------------------

/// CRC16/XMODEM, as Redis Cluster maps keys to slots.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in bytes {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn slot_of_scope(scope: &str) -> u16 {
    crc16(scope.as_bytes()) % 16384
}

/// Scopes `prefix-N` whose slots lie on each of the three default masters
/// (0–5460, 5461–10922, 10923–16383).
fn scopes_on_every_master(prefix: &str) -> Vec<String> {
    let mut found: [Option<String>; 3] = [None, None, None];
    for n in 0.. {
        let scope = format!("{prefix}-{n}");
        let index = match slot_of_scope(&scope) {
            0..=5460 => 0,
            5461..=10922 => 1,
            _ => 2,
        };
        found[index].get_or_insert(scope);
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_cases_hold_on_a_three_node_cluster() {
    let cluster = RedisCluster::start(3);
    let endpoint = Arc::new(Endpoint::start(RedisTarget::Cluster(cluster.urls())).await);
    let scopes = scopes_on_every_master("tenant");
    let slots: Vec<u16> = scopes.iter().map(|scope| slot_of_scope(scope)).collect();
    assert!(slots[0] <= 5460 && (5461..=10922).contains(&slots[1]) && slots[2] >= 10923);
    for scope in &scopes {
        lease_is_exact(&endpoint, scope).await;
        claim_complete_replay(&endpoint, scope).await;
        release_and_reclaim(&endpoint, scope).await;
        one_winner_of_many(&endpoint, scope).await;
    }
    let full = scopes_on_every_master("full");
    tenant_full(&endpoint, &full[0], &full[1]).await;
    assert_eq!(
        endpoint
            .metrics
            .requests(StoreOp::Claim, StoreOutcome::RedisError),
        0
    );
}

// ---- the binary ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_subcommand_prints_its_address_and_serves() {
    use std::io::{BufRead as _, BufReader};
    let redis = RedisServer::start();
    let mut child = Command::new(BIN)
        .args(["store", "--store-addr", "127.0.0.1:0", "--redis-url"])
        .arg(redis.url())
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = line_tx.send(lines.next());
        // Anything more on stdout is a failure.
        let _ = line_tx.send(lines.next());
    });
    let line = line_rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap()
        .unwrap()
        .unwrap();
    let addr: SocketAddr = line
        .strip_prefix("store endpoint listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0);
    let answer: LeaseAnswer = call(
        addr,
        "POST",
        wire::LEASE_PATH,
        serde_json::to_vec(&lease_request("acme", 2)).unwrap(),
    )
    .await
    .ok();
    assert_eq!(answer.granted, 2);
    let metrics = call(addr, "GET", "/metrics", Vec::new()).await;
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.lines()
            .any(|line| line == "tenant_guard_store_requests_total{op=\"lease\",outcome=\"ok\"} 1"),
        "{text}"
    );

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = poll(Duration::from_secs(10), "the store sidecar exiting", || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "{status:?}");
    // Exactly one line was printed.
    assert!(matches!(
        line_rx.recv_timeout(Duration::from_secs(5)),
        Ok(None)
    ));
}

#[test]
fn the_store_endpoint_needs_exactly_one_redis() {
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env_remove("TG_REDIS_URL")
            .env_remove("TG_REDIS_CLUSTER_URL")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let cases: [&[&str]; 4] = [
        &["store", "--store-addr", "127.0.0.1:0"],
        &[
            "store",
            "--store-addr",
            "127.0.0.1:0",
            "--redis-url",
            "redis://127.0.0.1:1",
            "--redis-cluster-url",
            "redis://127.0.0.1:2",
        ],
        &[
            "run",
            "--store-addr",
            "127.0.0.1:0",
            "--ecds-dir",
            "/nonexistent",
            "--wasm-path",
            "/x.wasm",
        ],
        &[
            "run",
            "--redis-url",
            "redis://127.0.0.1:1",
            "--ecds-dir",
            "/nonexistent",
            "--wasm-path",
            "/x.wasm",
        ],
    ];
    for args in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("redis"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = run(&[
        "store",
        "--store-addr",
        "127.0.0.1:0",
        "--redis-url",
        "nope://x",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_hosts_the_store_endpoint_next_to_sync() {
    use std::io::{BufRead as _, BufReader};
    use tenant_guard_sidecar::test_support::{self, TestSchema};
    let redis = RedisServer::start();
    let schema = TestSchema::with_header_mode("store-test").unwrap();
    let ecds = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--admin-addr",
            "127.0.0.1:0",
            "--store-addr",
            "127.0.0.1:0",
        ])
        .args(["--redis-url", &redis.url()])
        .arg("--ecds-dir")
        .arg(ecds.path())
        .args(["--wasm-path", "/opt/filter.wasm"])
        .env("DATABASE_URL", test_support::database_url())
        .env("TG_SCHEMA", schema.name())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let mut admin = None;
    let mut store = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin.is_none() || store.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = line_rx.recv_timeout(left).unwrap();
        if let Some(addr) = line.strip_prefix("admin listening on http://") {
            admin = Some(addr.parse::<SocketAddr>().unwrap());
        } else if let Some(addr) = line.strip_prefix("store endpoint listening on ") {
            store = Some(addr.parse::<SocketAddr>().unwrap());
        } else {
            panic!("unexpected line {line:?}");
        }
    }
    let (admin, store) = (admin.unwrap(), store.unwrap());
    let answer: LeaseAnswer = call(
        store,
        "POST",
        wire::LEASE_PATH,
        serde_json::to_vec(&lease_request("acme", 5)).unwrap(),
    )
    .await
    .ok();
    assert_eq!(answer.granted, 5);
    let metrics = call(admin, "GET", "/metrics", Vec::new()).await;
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.lines()
            .any(|line| line == "tenant_guard_store_requests_total{op=\"lease\",outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(text.contains("settings_sync_success_total"), "{text}");

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = poll(Duration::from_secs(15), "the sidecar exiting", || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "{status:?}");
}
