//! The traffic shapes a fleet must serve fairly (`tests/tests/fleet_shapes.rs`
//! asserts them, `fleet-report` prints them): each tenant's admitted requests
//! against what its GCRA limit allows, for a long window (200 per hour:
//! nothing refills during a run) and a short one (100 per 10 s).
//!
//! - (a) a storm spread over every replica;
//! - (b) a storm on one replica;
//! - (c) a burst on one replica, then steady traffic on the others (the
//!   burst's unused slots must come back to Redis for them);
//! - (d) two tenants storming at once.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::backend::Backend;
use crate::failure::fail;

/// A limit of the shapes: `requests` per `per_seconds`, burst = requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: u64,
    pub per_seconds: u64,
}

pub const LONG: Limit = Limit {
    requests: 200,
    per_seconds: 3600,
};
pub const SHORT: Limit = Limit {
    requests: 100,
    per_seconds: 10,
};

impl Limit {
    /// What GCRA allows within `elapsed` from a full bucket.
    pub fn allowed(self, elapsed: Duration) -> u64 {
        let emission_ms = self.per_seconds * 1000 / self.requests;
        self.requests + u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX) / emission_ms
    }
}

/// One traffic shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Spread,
    OneReplica,
    Handover,
    TwoTenants,
}

impl Shape {
    pub const ALL: [Shape; 4] = [
        Shape::Spread,
        Shape::OneReplica,
        Shape::Handover,
        Shape::TwoTenants,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Shape::Spread => "(a) storm over every replica",
            Shape::OneReplica => "(b) storm on one replica",
            Shape::Handover => "(c) burst on one, then the others",
            Shape::TwoTenants => "(d) two tenants at once",
        }
    }

    /// The tenants of this shape, each storming at the same time, with their limits.
    pub fn tenants(self) -> Vec<(String, Limit)> {
        let stem = match self {
            Shape::Spread => "spread",
            Shape::OneReplica => "single",
            Shape::Handover => "handover",
            Shape::TwoTenants => "pair",
        };
        let mut tenants = Vec::new();
        for (window, limit) in [("long", LONG), ("short", SHORT)] {
            if self == Shape::TwoTenants {
                tenants.push((format!("{stem}-a-{window}"), limit));
                tenants.push((format!("{stem}-b-{window}"), limit));
            } else {
                tenants.push((format!("{stem}-{window}"), limit));
            }
        }
        tenants
    }

    /// One tenant's traffic in this shape over `ports` (replica 0 first).
    fn traffic(self, ports: &[u16], tenant: &str) -> Vec<u16> {
        let one = ports.get(..1).unwrap_or(ports);
        match self {
            Shape::Spread => traffic(ports, tenant, 600, 6, Duration::ZERO),
            Shape::OneReplica => traffic(one, tenant, 600, 6, Duration::ZERO),
            Shape::Handover => {
                // A burst of 150 on replica 0, then 5 s at 40 per second on the others.
                let others = ports.get(1..).filter(|p| !p.is_empty()).unwrap_or(ports);
                let mut statuses = traffic(one, tenant, 150, 4, Duration::ZERO);
                statuses.extend(traffic(others, tenant, 200, 2, Duration::from_millis(50)));
                statuses
            }
            Shape::TwoTenants => traffic(ports, tenant, 500, 4, Duration::ZERO),
        }
    }
}

/// Every shape's tenants as plugin-config `tenants` entries.
pub fn tenants_config() -> Map<String, Value> {
    Shape::ALL
        .iter()
        .flat_map(|shape| shape.tenants())
        .map(|(tenant, limit)| {
            let limit = json!({ "requests": limit.requests, "per_seconds": limit.per_seconds });
            (tenant, json!({ "rate_limit": limit }))
        })
        .collect()
}

/// What one tenant got in one shape.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub shape: Shape,
    pub tenant: String,
    pub sent: u64,
    pub admitted: u64,
    pub allowed: u64,
    /// Answers other than 200 and 429 (a 5xx is a bug).
    pub other: Vec<u16>,
    /// Complete requests the upstream saw for the tenant.
    pub upstream: u64,
}

impl Outcome {
    pub fn ratio(&self) -> f64 {
        self.admitted as f64 / self.allowed.max(1) as f64
    }

    /// Within the promise: only 200/429, the upstream saw what was admitted,
    /// admitted ÷ allowed in 0.95–1.00.
    pub fn holds(&self) -> bool {
        self.other.is_empty()
            && self.upstream == self.admitted
            && self.admitted <= self.allowed
            && self.ratio() >= 0.95
    }

    pub fn line(&self) -> String {
        format!(
            "{:<34} {:<15} admitted {:>4} / allowed {:>4} = {:.3}{}",
            self.shape.label(),
            self.tenant,
            self.admitted,
            self.allowed,
            self.ratio(),
            if self.other.is_empty() {
                String::new()
            } else {
                format!(" (other answers: {:?})", self.other)
            }
        )
    }
}

/// Runs `shape` (its tenants at once) against the replicas on `ports`.
pub fn run(shape: Shape, ports: &[u16], backend: &Backend) -> Vec<Outcome> {
    let started = Instant::now();
    let tenants = shape.tenants();
    std::thread::scope(|scope| {
        let handles: Vec<_> = tenants
            .iter()
            .map(|(tenant, _)| {
                scope.spawn(move || {
                    let statuses = shape.traffic(ports, tenant);
                    (statuses, started.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&tenants)
            .map(|(handle, (tenant, limit))| {
                let (statuses, elapsed) = handle
                    .join()
                    .unwrap_or_else(|_| fail("a traffic thread panicked"));
                let admitted = statuses.iter().filter(|s| **s == 200).count() as u64;
                Outcome {
                    shape,
                    tenant: tenant.clone(),
                    sent: statuses.len() as u64,
                    admitted,
                    allowed: limit.allowed(elapsed),
                    other: statuses
                        .iter()
                        .copied()
                        .filter(|s| *s != 200 && *s != 429)
                        .collect(),
                    upstream: backend.completed(&format!("/{tenant}")),
                }
            })
            .collect()
    })
}

/// `total` GETs to `/<tenant>` for `tenant` from `threads` threads,
/// round-robin over `ports`, each thread sending one request per `pace`
/// (load pacing: `Duration::ZERO` sends back to back); the statuses.
pub fn traffic(
    ports: &[u16],
    tenant: &str,
    total: usize,
    threads: usize,
    pace: Duration,
) -> Vec<u16> {
    let path = format!("/{tenant}");
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let path = &path;
                scope.spawn(move || {
                    let mut statuses = Vec::new();
                    let mut next = Instant::now();
                    for index in (thread..total).step_by(threads.max(1)) {
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        next += pace;
                        let Some(&port) = ports.get(index % ports.len().max(1)) else {
                            break;
                        };
                        let response = crate::http::get(port, path, &[("x-tenant-id", tenant)]);
                        statuses.push(response.status);
                    }
                    statuses
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| fail("a traffic thread panicked"))
            })
            .collect()
    })
}
