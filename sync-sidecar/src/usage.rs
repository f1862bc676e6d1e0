//! `tenant-guard-sidecar usage [TENANT] [--json]`: what each tenant has used
//! of its limits in cluster mode, per limit and (for limits counted per
//! user, org or header value) per key, read from Redis without changing it.
//!
//! The limits come from the plugin document the gateways run (the newest
//! delivered revision, or `--config FILE`); what is used comes from the
//! counters the store endpoint keeps (`docs/STORE_PROTOCOL.md`). Slots a
//! gateway leased and has not spent yet count as used: at most a lease
//! batch per gateway and limit, given back within `lease_ttl_ms`.

use serde::Serialize;
use tenant_guard_core::config::{CompiledConfig, KeyKind, LimitPolicy, Window};
use tenant_guard_core::limits::calendar;

use crate::store::redis::{RawUsage, UsageItem};
use crate::store::{RedisStore, StoreError};

/// Keys read at most per limit counted per key (the busiest are not
/// singled out: Redis's scan order decides which appear).
pub const MOST_KEYS: u64 = 100;

/// One row of the read-out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub tenant: String,
    pub policy: String,
    /// `rate` or the quota's window (`day`, `week`, `month`).
    pub window: &'static str,
    /// The key value's hash (16 hex digits) for a limit counted per key;
    /// `None` for the tenant as a whole.
    pub key: Option<String>,
    pub used: u64,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the limit is full again (a rate) or its window ends (a quota).
    pub reset_seconds: u64,
}

/// Why the read-out cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("tenant `{0}` is not in the plugin document the gateways run")]
    UnknownTenant(String),
    #[error("the plugin document is not in cluster mode (store.backend \"cluster\"): its counters live in each gateway's shared data, not in Redis")]
    NotCluster,
    #[error("Redis: {0}")]
    Store(#[from] StoreError),
}

/// The rows of `tenant` (or of every configured tenant), in the document's order.
pub async fn read(
    store: &RedisStore,
    config: &CompiledConfig,
    tenant: Option<&str>,
) -> Result<Vec<UsageRow>, UsageError> {
    if config.store.cluster.is_none() {
        return Err(UsageError::NotCluster);
    }
    let tenants: Vec<&String> = match tenant {
        Some(wanted) => vec![config
            .tenant_ids
            .iter()
            .find(|known| *known == wanted)
            .ok_or_else(|| UsageError::UnknownTenant(wanted.to_owned()))?],
        None => config.tenant_ids.iter().collect(),
    };
    let mut rows = Vec::new();
    for tenant in tenants {
        let Some(settings) = config.tenants.get(tenant) else {
            continue;
        };
        let policies: Vec<&LimitPolicy> = settings
            .policies
            .iter()
            .chain(
                settings
                    .routes
                    .iter()
                    .flat_map(|route| route.policy.iter().chain(route.policies.iter())),
            )
            .collect();
        if policies.is_empty() {
            continue;
        }
        let clock = store.read_usage(tenant, &[], MOST_KEYS).await?;
        let items: Vec<UsageItem> = policies
            .iter()
            .map(|policy| UsageItem {
                name: policy.name.clone(),
                quota: matches!(policy.window, Window::Calendar { .. }),
                keyed: policy.key != KeyKind::Tenant,
                window_end_s: match policy.window {
                    Window::Calendar { period, .. } => calendar::span(period, clock.now_s).end,
                    Window::Rate(_) => 0,
                },
            })
            .collect();
        let raw = store.read_usage(tenant, &items, MOST_KEYS).await?;
        rows.extend(rows_of(tenant, &policies, &raw));
    }
    Ok(rows)
}

fn rows_of(tenant: &str, policies: &[&LimitPolicy], raw: &RawUsage) -> Vec<UsageRow> {
    let mut rows = Vec::new();
    for (policy, found) in policies.iter().zip(&raw.found) {
        let row = |key: Option<String>, used: u64, limit: u64, reset_seconds: u64| UsageRow {
            tenant: tenant.to_owned(),
            policy: policy.name.clone(),
            window: window_name(&policy.window),
            key,
            used,
            limit,
            remaining: limit.saturating_sub(used),
            reset_seconds,
        };
        if policy.key == KeyKind::Tenant && found.is_empty() {
            // Nothing counted yet: all of it is left.
            let (limit, reset) = match policy.window {
                Window::Rate(rate) => (rate.burst, 0),
                Window::Calendar { period, requests } => (
                    requests,
                    calendar::span(period, raw.now_s).seconds_left(raw.now_s),
                ),
            };
            rows.push(row(None, 0, limit, reset));
            continue;
        }
        for (key, value) in found {
            let label = key_label(key);
            match policy.window {
                Window::Rate(rate) => {
                    let emission_us = rate.emission_ns().div_ceil(1_000).max(1);
                    let capacity_us = emission_us.saturating_mul(rate.burst.max(1));
                    let tat_us = value
                        .split_once(':')
                        .and_then(|(tat, _)| tat.parse::<u64>().ok())
                        .unwrap_or(0);
                    let free = raw
                        .now_us
                        .saturating_add(capacity_us)
                        .saturating_sub(tat_us)
                        / emission_us;
                    let used = rate.burst.saturating_sub(free.min(rate.burst));
                    let reset = tat_us.saturating_sub(raw.now_us).div_ceil(1_000_000);
                    rows.push(row(label, used, rate.burst, reset));
                }
                Window::Calendar { period, requests } => {
                    let used = value.parse::<u64>().unwrap_or(0);
                    let reset = calendar::span(period, raw.now_s).seconds_left(raw.now_s);
                    rows.push(row(label, used, requests, reset));
                }
            }
        }
    }
    rows
}

/// The key value's hash of a `…:<name>~<hex>[:<end>]` key.
fn key_label(key: &str) -> Option<String> {
    let (_, tail) = key.split_once('~')?;
    Some(tail.split(':').next().unwrap_or(tail).to_owned())
}

fn window_name(window: &Window) -> &'static str {
    match window {
        Window::Rate(_) => "rate",
        Window::Calendar { period, .. } => match period {
            tenant_guard_core::config::Calendar::Day => "day",
            tenant_guard_core::config::Calendar::Week => "week",
            tenant_guard_core::config::Calendar::Month => "month",
        },
    }
}

/// The rows as an aligned table.
pub fn table(rows: &[UsageRow]) -> String {
    let mut lines = vec![[
        "TENANT".to_owned(),
        "LIMIT".to_owned(),
        "WINDOW".to_owned(),
        "KEY".to_owned(),
        "USED".to_owned(),
        "OF".to_owned(),
        "REMAINING".to_owned(),
        "RESET_S".to_owned(),
    ]];
    for row in rows {
        lines.push([
            row.tenant.clone(),
            row.policy.clone(),
            row.window.to_owned(),
            row.key.clone().unwrap_or_else(|| "-".to_owned()),
            row.used.to_string(),
            row.limit.to_string(),
            row.remaining.to_string(),
            row.reset_seconds.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|column| {
            lines
                .iter()
                .map(|line| line.get(column).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    lines
        .iter()
        .map(|line| {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_labels_are_the_hash_only() {
        assert_eq!(
            key_label("tg:{a}:rl:user~0123456789abcdef"),
            Some("0123456789abcdef".to_owned())
        );
        assert_eq!(
            key_label("tg:{a}:q:user~0123456789abcdef:1798761600"),
            Some("0123456789abcdef".to_owned())
        );
        assert_eq!(key_label("tg:{a}:rl:tenant"), None);
    }
}
