//! tenant-guard against what users run today and the peers, natively (no
//! callgrind): CPU per request of Envoy and of the rate limit service beside
//! it, client latency p50/p99, admitted ÷ allowed for one tenant's limit under
//! a storm across 2 workers, and Redis commands per 100 requests where the
//! counters live in Redis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tenant_guard_bench::peers::{Limitador, PeerPaths, Storage};
use tenant_guard_bench::{self as bench, BenchEnvoy, Bootstrap, CpuTime};
use tenant_guard_e2e::Conn;
use tenant_guard_sidecar::test_support::RedisServer;

use super::{tenant_guard, TENANT};

/// Sequential requests over one keep-alive connection for CPU and latency.
const REQUESTS: usize = 2000;
/// The storm: a fresh tenant limited to [`STORM_LIMIT`] per minute gets
/// [`STORM_THREADS`] × [`STORM_PER_THREAD`] requests at once.
const STORM_LIMIT: u64 = 200;
const STORM_THREADS: usize = 8;
const STORM_PER_THREAD: usize = 100;
const WORKERS: u32 = 2;

/// One row: how its Envoy is configured for a limit of `limit` per minute,
/// with the service it needs running.
struct Setup {
    bootstrap: Bootstrap,
    service: Option<Limitador>,
    redis: Option<RedisServer>,
}

type Build = Box<dyn Fn(u64) -> Result<Setup, String>>;

fn rows(peers: &PeerPaths) -> Vec<(&'static str, Build)> {
    let mut rows: Vec<(&'static str, Build)> = vec![
        (
            "tenant-guard, default configuration (local mode)",
            Box::new(|limit| {
                Ok(Setup {
                    bootstrap: tenant_guard(Some(
                        json!([{"name": "tenant", "requests": limit, "per": "minute"}]),
                    )),
                    service: None,
                    redis: None,
                })
            }),
        ),
        (
            "Lua correlation id + native local_ratelimit",
            Box::new(|limit| {
                Ok(Setup {
                    bootstrap: Bootstrap::Lua {
                        tenant: "acme".to_owned(),
                        tokens: limit,
                        fill_seconds: 60,
                    },
                    service: None,
                    redis: None,
                })
            }),
        ),
    ];
    if let Some(limitador) = &peers.limitador {
        for setup in peers.setups() {
            let limitador = limitador.clone();
            rows.push((
                setup.name(),
                Box::new(move |limit| {
                    with_limitador(&limitador, limit, setup.on_redis, |rls_port| {
                        setup.bootstrap(rls_port)
                    })
                }),
            ));
        }
    }
    rows
}

/// limitador (with its own Redis when `on_redis`) and the Envoy that asks it.
fn with_limitador(
    binary: &std::path::Path,
    limit: u64,
    on_redis: bool,
    bootstrap: impl Fn(u16) -> Bootstrap,
) -> Result<Setup, String> {
    let redis = on_redis
        .then(|| RedisServer::try_start().map_err(|e| e.to_string()))
        .transpose()?;
    let storage = match &redis {
        Some(redis) => Storage::Redis(redis.url()),
        None => Storage::Memory,
    };
    let service = Limitador::start(binary, limit, 60, &storage)?;
    Ok(Setup {
        bootstrap: bootstrap(service.rls_port()),
        service: Some(service),
        redis,
    })
}

/// Commands Redis has processed so far (`INFO stats`).
fn redis_commands(redis: &RedisServer) -> Option<u64> {
    redis.command("INFO stats")?.lines().find_map(|line| {
        line.strip_prefix("total_commands_processed:")?
            .trim()
            .parse()
            .ok()
    })
}

struct Figures {
    envoy_us: f64,
    service_us: Option<f64>,
    p50_us: f64,
    p99_us: f64,
    redis_per_100: Option<f64>,
}

fn cost(setup: &Setup, upstream: u16) -> Result<Figures, String> {
    let envoy = BenchEnvoy::start(&setup.bootstrap, WORKERS, upstream)?;
    let headers = [(TENANT, "acme")];
    let mut conn = Conn::new(envoy.port());
    for _ in 0..200 {
        let _ = conn.request("GET", "/warm", &headers, b"");
    }
    let ticks = bench::clock_ticks_per_second();
    let service_pid = setup.service.as_ref().map(Limitador::pid);
    let envoy_before = CpuTime::of(envoy.pid())?;
    let service_before = service_pid.map(CpuTime::of).transpose()?;
    let redis_before = setup.redis.as_ref().and_then(redis_commands);
    let mut latencies = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let started = Instant::now();
        let response = conn
            .request("GET", "/compare", &headers, b"")
            .map_err(|e| e.to_string())?;
        latencies.push(started.elapsed());
        if response.status != 200 {
            return Err(format!("status {}: {}", response.status, response.text()));
        }
    }
    let n = REQUESTS as f64;
    let (_, envoy_us) = CpuTime::of(envoy.pid())?.us_per_request_since(&envoy_before, ticks, n);
    let service_us = match (service_pid, service_before) {
        (Some(pid), Some(before)) => {
            Some(CpuTime::of(pid)?.us_per_request_since(&before, ticks, n).1)
        }
        _ => None,
    };
    let redis_per_100 = match (setup.redis.as_ref().and_then(redis_commands), redis_before) {
        (Some(after), Some(before)) => Some(after.saturating_sub(before) as f64 * 100.0 / n),
        _ => None,
    };
    latencies.sort();
    Ok(Figures {
        envoy_us,
        service_us,
        p50_us: bench::percentile_us(&latencies, 0.50),
        p99_us: bench::percentile_us(&latencies, 0.99),
        redis_per_100,
    })
}

/// Admitted requests of the storm and how long it took.
fn storm(setup: &Setup, upstream: u16) -> Result<(u64, Duration), String> {
    let envoy = BenchEnvoy::start(&setup.bootstrap, WORKERS, upstream)?;
    let admitted = Arc::new(AtomicU64::new(0));
    let port = envoy.port();
    let started = Instant::now();
    let threads: Vec<_> = (0..STORM_THREADS)
        .map(|_| {
            let admitted = Arc::clone(&admitted);
            std::thread::spawn(move || {
                let mut conn = Conn::new(port);
                for _ in 0..STORM_PER_THREAD {
                    if let Ok(response) = conn.request("GET", "/storm", &[(TENANT, "acme")], b"") {
                        if response.status == 200 {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| "a storm thread panicked".to_owned())?;
    }
    Ok((admitted.load(Ordering::Relaxed), started.elapsed()))
}

/// Prints the comparison table.
pub fn report(peers: &PeerPaths, upstream: u16) -> Result<(), String> {
    println!(
        "\nNatively, Envoy --concurrency {WORKERS}: CPU per request over {REQUESTS} sequential requests \
         (schedstat; the rate limit service's own CPU beside Envoy's), client latency, a storm of \
         {} requests ({STORM_THREADS} connections) for one tenant limited to {STORM_LIMIT} per minute, \
         Redis commands per 100 requests:\n",
        STORM_THREADS * STORM_PER_THREAD
    );
    if let Some(line) = peers.missing() {
        println!("{line}\n");
    }
    println!("| setup | Envoy CPU µs/request | service CPU µs/request | p50 µs | p99 µs | storm: admitted / allowed | Redis commands / 100 requests |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, build) in rows(peers) {
        let figures = cost(&build(1_000_000_000)?, upstream)?;
        let (admitted, took) = storm(&build(STORM_LIMIT)?, upstream)?;
        // Every limiter here may admit the limit at once; a token bucket or
        // GCRA also what refills while the storm lasts.
        let refilled = (took.as_secs_f64() * STORM_LIMIT as f64 / 60.0).floor() as u64;
        let allowed = STORM_LIMIT + refilled;
        println!(
            "| {name} | {:.1} | {} | {:.0} | {:.0} | {admitted} / {allowed} = {:.2} | {} |",
            figures.envoy_us,
            figures
                .service_us
                .map_or_else(|| "–".to_owned(), |us| format!("{us:.1}")),
            figures.p50_us,
            figures.p99_us,
            admitted as f64 / allowed as f64,
            figures
                .redis_per_100
                .map_or_else(|| "–".to_owned(), |n| format!("{n:.0}")),
        );
    }
    Ok(())
}
