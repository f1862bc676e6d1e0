//! The Redis side of the store endpoint: one connection (a standalone
//! server through [`ConnectionManager`], or a Redis Cluster through
//! [`ClusterConnection`]) and one Lua script per operation (`scripts/*.lua`).
//!
//! Every script touches only keys of one scope, all passed in `KEYS` and all
//! carrying the scope as hash tag (`tg:{<scope>}:…`), so each call runs on one
//! shard; every timestamp is Redis `TIME`. Calls never wait longer than
//! [`RedisStore::timeout`]: a slow or absent Redis is an error for the caller
//! to answer, never a stall.
//!
//! Connections are made lazily and remade after failures: the endpoint
//! starts while Redis is down and recovers once it is back (the connection
//! manager reconnects a standalone server; a cluster connection that failed
//! is dropped and built again on the next call).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Script, ScriptInvocation, Value};
use tenant_guard_core::cluster::wire::{
    self, ClaimAnswer, ClaimRequest, CompleteRequest, DebitRequest, LeaseAnswer, LeaseRequest,
    LeasesAnswer, LeasesRequest, ReleaseRequest, UpdateAnswer, WireResponse,
};
use tokio::sync::Mutex;

use super::error::StoreError;
use super::persistence::Persistence;

/// How long one call may take before it is answered as unavailable.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (`redis://host:port[/db]`).
    Standalone(String),
    /// Seed nodes of a Redis Cluster (`redis://host:port` each).
    Cluster(Vec<String>),
}

/// The scripts, loaded (`SCRIPT LOAD`) on first use and again after a
/// restart of Redis (`NOSCRIPT`).
struct Scripts {
    lease: Script,
    leases: Script,
    claim: Script,
    complete: Script,
    release: Script,
    debit: Script,
    usage: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            lease: Script::new(concat!(
                include_str!("scripts/tat.lua"),
                include_str!("scripts/lease.lua")
            )),
            leases: Script::new(concat!(
                include_str!("scripts/tat.lua"),
                include_str!("scripts/leases.lua")
            )),
            claim: Script::new(include_str!("scripts/claim.lua")),
            complete: Script::new(include_str!("scripts/complete.lua")),
            release: Script::new(include_str!("scripts/release.lua")),
            debit: Script::new(concat!(
                include_str!("scripts/tat.lua"),
                include_str!("scripts/debit.lua")
            )),
            usage: Script::new(include_str!("scripts/usage.lua")),
        }
    }
}

enum Backend {
    Standalone(ConnectionManager),
    Cluster(Box<ClusterBackend>),
}

struct ClusterBackend {
    client: ClusterClient,
    /// The seed nodes, each asked on its own for its persistence settings.
    seeds: Vec<String>,
    /// `None` until connected, and again after a failure.
    connection: Mutex<Option<ClusterConnection>>,
}

/// Redis for the store endpoint: safe to share between requests.
pub struct RedisStore {
    backend: Backend,
    scripts: Scripts,
    timeout: Duration,
    /// This endpoint as a lease holder (random, per process): the fair share
    /// of a limit counts the holders that leased it lately.
    holder: String,
}

/// How long a holder counts as active when the filter does not say (its
/// default `lease_ttl_ms`).
pub const DEFAULT_LEASE_WINDOW_MS: u64 = 2_000;

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backend {
            Backend::Standalone(_) => "standalone",
            Backend::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("backend", &kind)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Connection timeouts below the call timeout, so a dead server fails the
/// connection attempt rather than the whole call.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(400);

/// Keys of one scope: `tg:{<scope>}:…`.
fn key(scope: &str, rest: &str) -> String {
    format!("tg:{{{scope}}}:{rest}")
}

impl RedisStore {
    /// A store on `target`. Connects lazily: nothing is sent before the
    /// first call, so this succeeds while Redis is down. Needs a Tokio runtime.
    pub fn new(target: &RedisTarget) -> Result<Self, StoreError> {
        let backend = match target {
            RedisTarget::Standalone(url) => {
                let client = redis::Client::open(url.as_str()).map_err(StoreError::Config)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(Duration::from_millis(200));
                Backend::Standalone(
                    ConnectionManager::new_lazy_with_config(client, config)
                        .map_err(StoreError::Config)?,
                )
            }
            RedisTarget::Cluster(urls) => {
                let client = ClusterClient::builder(urls.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(CONNECT_TIMEOUT)
                    .retries(3)
                    .build()
                    .map_err(StoreError::Config)?;
                Backend::Cluster(Box::new(ClusterBackend {
                    client,
                    seeds: urls.clone(),
                    connection: Mutex::new(None),
                }))
            }
        };
        Ok(Self {
            backend,
            scripts: Scripts::new(),
            timeout: DEFAULT_TIMEOUT,
            holder: format!("{:016x}", fastrand::u64(..)),
        })
    }

    /// The same store with another call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest a call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `POST /v1/lease` (the request is valid: see `super::validate`).
    pub async fn lease(&self, request: &LeaseRequest) -> Result<LeaseAnswer, StoreError> {
        let mut invocation = self
            .scripts
            .lease
            .key(key(&request.scope, &format!("rl:{}", request.limit)));
        let window_ms = match request.lease_ttl_ms {
            0 => DEFAULT_LEASE_WINDOW_MS,
            ttl => ttl,
        };
        invocation
            .key(key(&request.scope, &format!("lh:{}", request.limit)))
            .arg(request.emission_us)
            .arg(request.capacity_us)
            .arg(request.want)
            .arg(request.need)
            .arg(request.returned)
            .arg(&self.holder)
            .arg(window_ms);
        let reply = self.invoke(&invocation).await?;
        match ints(&reply).as_deref() {
            Some(&[granted, remaining, reset_seconds, retry_after_seconds]) => Ok(LeaseAnswer {
                granted,
                remaining,
                reset_seconds,
                retry_after_seconds,
            }),
            _ => Err(StoreError::Reply("lease")),
        }
    }

    /// `POST /v1/leases` (the request is valid: see `super::check_leases`).
    pub async fn leases(&self, request: &LeasesRequest) -> Result<LeasesAnswer, StoreError> {
        let mut invocation = self.scripts.leases.prepare_invoke();
        let window_ms = match request.lease_ttl_ms {
            0 => DEFAULT_LEASE_WINDOW_MS,
            ttl => ttl,
        };
        invocation.arg(&self.holder).arg(window_ms);
        for item in &request.items {
            let window = (item.rate.as_ref(), item.quota.as_ref());
            push_window(&mut invocation, &request.scope, &item.limit, window)?;
            invocation
                .key(key(&request.scope, &format!("lh:{}", item.limit)))
                .arg(item.want)
                .arg(item.need)
                .arg(item.returned);
        }
        let reply = self.invoke(&invocation).await?;
        let numbers = ints(&reply).ok_or(StoreError::Reply("leases"))?;
        if numbers.len() != request.items.len() * 4 {
            return Err(StoreError::Reply("leases"));
        }
        let items = numbers
            .chunks_exact(4)
            .map(|item| match item {
                &[granted, remaining, reset_seconds, retry_after_seconds] => LeaseAnswer {
                    granted,
                    remaining,
                    reset_seconds,
                    retry_after_seconds,
                },
                _ => LeaseAnswer {
                    granted: 0,
                    remaining: 0,
                    reset_seconds: 0,
                    retry_after_seconds: 0,
                },
            })
            .collect();
        Ok(LeasesAnswer { items })
    }

    /// `POST /v1/debit` (the request is valid: see `super::check_debit`).
    pub async fn debit(&self, request: &DebitRequest) -> Result<UpdateAnswer, StoreError> {
        let mut invocation = self.scripts.debit.prepare_invoke();
        for item in &request.items {
            let window = (item.rate.as_ref(), item.quota.as_ref());
            push_window(&mut invocation, &request.scope, &item.limit, window)?;
            invocation.arg(item.units);
        }
        let reply = self.invoke(&invocation).await?;
        match updated(&reply) {
            Some(answer) if answer.updated => Ok(answer),
            _ => Err(StoreError::Reply("debit")),
        }
    }

    /// What Redis holds for `scope`'s limits (`tenant-guard-sidecar usage`),
    /// read without changing it: Redis's time (s, µs), then per item the
    /// `(key, value)` pairs found (at most `most` per keyed item).
    pub async fn read_usage(
        &self,
        scope: &str,
        items: &[UsageItem],
        most: u64,
    ) -> Result<RawUsage, StoreError> {
        let mut invocation = self.scripts.usage.key(key(scope, "rl:tenant"));
        invocation.arg(key(scope, "")).arg(most);
        for item in items {
            invocation
                .arg(if item.quota { "quota" } else { "rate" })
                .arg(&item.name)
                .arg(if item.keyed { "1" } else { "0" })
                .arg(item.window_end_s);
        }
        let reply = self.invoke(&invocation).await?;
        raw_usage(&reply, items.len()).ok_or(StoreError::Reply("usage"))
    }

    /// `POST /v1/claim`.
    pub async fn claim(&self, request: &ClaimRequest) -> Result<ClaimAnswer, StoreError> {
        let mut invocation = self
            .scripts
            .claim
            .key(key(&request.scope, &format!("idem:{}", request.key)));
        invocation
            .key(key(&request.scope, "idem:live"))
            .key(key(&request.scope, "idem:gen"))
            .arg(&request.key)
            .arg(&request.route)
            .arg(request.body.as_deref().unwrap_or_default())
            .arg(request.in_flight_ms)
            .arg(request.scope_limit)
            .arg(request.ttl_ms);
        let reply = self.invoke(&invocation).await?;
        claim_answer(&reply).ok_or(StoreError::Reply("claim"))
    }

    /// `POST /v1/complete`.
    pub async fn complete(&self, request: &CompleteRequest) -> Result<UpdateAnswer, StoreError> {
        let response = match &request.response {
            Some(response) => {
                serde_json::to_string(response).map_err(|_| StoreError::Reply("response"))?
            }
            None => String::new(),
        };
        let mut invocation = self
            .scripts
            .complete
            .key(key(&request.scope, &format!("idem:{}", request.key)));
        invocation
            .key(key(&request.scope, "idem:live"))
            .arg(&request.key)
            .arg(request.generation)
            .arg(request.body.as_deref().unwrap_or_default())
            .arg(request.status)
            .arg(response)
            .arg(request.ttl_ms);
        let reply = self.invoke(&invocation).await?;
        updated(&reply).ok_or(StoreError::Reply("complete"))
    }

    /// `POST /v1/release`.
    pub async fn release(&self, request: &ReleaseRequest) -> Result<UpdateAnswer, StoreError> {
        let mut invocation = self
            .scripts
            .release
            .key(key(&request.scope, &format!("idem:{}", request.key)));
        invocation
            .key(key(&request.scope, "idem:live"))
            .arg(&request.key)
            .arg(request.generation);
        let reply = self.invoke(&invocation).await?;
        updated(&reply).ok_or(StoreError::Reply("release"))
    }

    /// Whether Redis keeps its data across a restart (every seed node of a
    /// cluster asked; the weakest counts). Never fails: an unanswered or
    /// refused `CONFIG GET` reads as [`Persistence::Unknown`].
    pub async fn persistence(&self) -> Persistence {
        match &self.backend {
            Backend::Standalone(manager) => {
                let mut manager = manager.clone();
                self.node_persistence(&mut manager).await
            }
            Backend::Cluster(cluster) => {
                let mut weakest = None;
                for seed in &cluster.seeds {
                    let node = match redis::Client::open(seed.as_str()) {
                        Ok(client) => {
                            let connect = client.get_multiplexed_async_connection();
                            match tokio::time::timeout(self.timeout, connect).await {
                                Ok(Ok(mut connection)) => {
                                    self.node_persistence(&mut connection).await
                                }
                                _ => Persistence::Unknown,
                            }
                        }
                        Err(_) => Persistence::Unknown,
                    };
                    weakest = Some(weakest.map_or(node, |seen: Persistence| seen.weakest(node)));
                }
                weakest.unwrap_or(Persistence::Unknown)
            }
        }
    }

    async fn node_persistence(
        &self,
        connection: &mut impl redis::aio::ConnectionLike,
    ) -> Persistence {
        let mut values = Vec::with_capacity(3);
        for name in ["appendonly", "appendfsync", "save"] {
            let mut command = redis::cmd("CONFIG");
            command.arg("GET").arg(name);
            let get = command.query_async::<Vec<String>>(connection);
            match tokio::time::timeout(self.timeout, get).await {
                Ok(Ok(pair)) => values.push(pair.get(1).cloned().unwrap_or_default()),
                _ => return Persistence::Unknown,
            }
        }
        match values.as_slice() {
            [appendonly, appendfsync, save] => {
                Persistence::from_config(appendonly, appendfsync, save)
            }
            _ => Persistence::Unknown,
        }
    }

    /// Runs `invocation` within [`Self::timeout`].
    async fn invoke(&self, invocation: &ScriptInvocation<'_>) -> Result<Value, StoreError> {
        let millis = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        match tokio::time::timeout(self.timeout, self.invoke_untimed(invocation)).await {
            Ok(result) => result,
            Err(_) => {
                // A cluster connection that stalls is rebuilt, like one that failed.
                self.forget_cluster_connection().await;
                Err(StoreError::Timeout(millis))
            }
        }
    }

    async fn invoke_untimed(&self, invocation: &ScriptInvocation<'_>) -> Result<Value, StoreError> {
        match &self.backend {
            Backend::Standalone(manager) => {
                let mut manager = manager.clone();
                Ok(invocation.invoke_async(&mut manager).await?)
            }
            Backend::Cluster(cluster) => {
                let mut held = {
                    let mut slot = cluster.connection.lock().await;
                    match slot.as_ref() {
                        Some(connection) => connection.clone(),
                        None => {
                            let fresh = cluster.client.get_async_connection().await?;
                            *slot = Some(fresh.clone());
                            fresh
                        }
                    }
                };
                let result = invocation.invoke_async(&mut held).await;
                if let Err(error) = &result {
                    if is_connection_error(error) {
                        *cluster.connection.lock().await = None;
                    }
                }
                Ok(result?)
            }
        }
    }

    async fn forget_cluster_connection(&self) {
        if let Backend::Cluster(cluster) = &self.backend {
            *cluster.connection.lock().await = None;
        }
    }
}

/// Errors after which a cluster connection is not trusted any more.
fn is_connection_error(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_unrecoverable_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_cluster_error()
}

fn int(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// A limit's counter key and its window's three arguments (`rate`,
/// emission, capacity, or `quota`, requests, window end), as the lease,
/// leases and debit scripts read them.
fn push_window(
    invocation: &mut ScriptInvocation<'_>,
    scope: &str,
    limit: &str,
    window: (Option<&wire::RateWindow>, Option<&wire::QuotaWindow>),
) -> Result<(), StoreError> {
    match window {
        (Some(rate), _) => {
            invocation
                .key(key(scope, &format!("rl:{limit}")))
                .arg("rate")
                .arg(rate.emission_us)
                .arg(rate.capacity_us);
        }
        (None, Some(quota)) => {
            invocation
                .key(key(scope, &format!("q:{limit}:{}", quota.window_end_s)))
                .arg("quota")
                .arg(quota.requests)
                .arg(quota.window_end_s);
        }
        (None, None) => return Err(StoreError::Reply("an item without a window")),
    }
    Ok(())
}

/// One limit [`RedisStore::read_usage`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageItem {
    pub name: String,
    pub quota: bool,
    /// Counted per user, org or header value: every `name~<hash>` key.
    pub keyed: bool,
    /// A quota's current window end (Unix s); 0 for a rate.
    pub window_end_s: u64,
}

/// What [`RedisStore::read_usage`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawUsage {
    pub now_s: u64,
    pub now_us: u64,
    /// Per item: `(key, value)`.
    pub found: Vec<Vec<(String, String)>>,
}

fn owned_text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(number) => Some(number.to_string()),
        _ => None,
    }
}

fn raw_usage(value: &Value, items: usize) -> Option<RawUsage> {
    let Value::Array(parts) = value else {
        return None;
    };
    let (head, rest) = parts.split_first()?;
    let times = ints(head)?;
    let (&now_s, &now_us) = (times.first()?, times.get(1)?);
    if rest.len() != items {
        return None;
    }
    let found = rest
        .iter()
        .map(|item| match item {
            Value::Array(flat) => flat
                .chunks_exact(2)
                .map(|pair| Some((owned_text(pair.first()?)?, owned_text(pair.get(1)?)?)))
                .collect::<Option<Vec<_>>>(),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(RawUsage {
        now_s,
        now_us,
        found,
    })
}

fn ints(value: &Value) -> Option<Vec<u64>> {
    match value {
        Value::Array(items) => items.iter().map(int).collect(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

fn updated(value: &Value) -> Option<UpdateAnswer> {
    match int(value)? {
        0 => Some(UpdateAnswer { updated: false }),
        1 => Some(UpdateAnswer { updated: true }),
        _ => None,
    }
}

/// The claim script's reply: `[result, value?]`.
fn claim_answer(value: &Value) -> Option<ClaimAnswer> {
    let Value::Array(items) = value else {
        return None;
    };
    let (result, rest) = items.split_first()?;
    let argument = rest.first();
    Some(match text(result)? {
        b"claimed" => ClaimAnswer::Claimed {
            generation: int(argument?)?,
        },
        b"in_flight" => ClaimAnswer::InFlight,
        b"mismatch" => ClaimAnswer::Mismatch,
        b"need_body" => ClaimAnswer::NeedBody,
        b"replay" => ClaimAnswer::Replay {
            response: serde_json::from_slice::<WireResponse>(text(argument?)?).ok()?,
        },
        b"not_replayable" => ClaimAnswer::NotReplayable {
            status: u16::try_from(int(argument?)?).ok()?,
        },
        b"tenant_full" => ClaimAnswer::TenantFull {
            retry_after_seconds: int(argument?)?,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_scope_as_hash_tag() {
        assert_eq!(key("acme", "rl:tenant"), "tg:{acme}:rl:tenant");
        assert_eq!(key("~pooled", "idem:live"), "tg:{~pooled}:idem:live");
    }

    #[test]
    fn claim_replies_are_read_and_garbage_is_refused() {
        let reply = |items: Vec<Value>| Value::Array(items);
        let word = |w: &str| Value::BulkString(w.as_bytes().to_vec());
        assert_eq!(
            claim_answer(&reply(vec![word("claimed"), Value::Int(3)])),
            Some(ClaimAnswer::Claimed { generation: 3 })
        );
        assert_eq!(
            claim_answer(&reply(vec![word("need_body")])),
            Some(ClaimAnswer::NeedBody)
        );
        assert_eq!(claim_answer(&reply(vec![word("claimed")])), None);
        assert_eq!(claim_answer(&reply(vec![word("what")])), None);
        assert_eq!(
            claim_answer(&reply(vec![word("not_replayable"), Value::Int(70_000)])),
            None
        );
        assert_eq!(
            updated(&Value::Int(1)),
            Some(UpdateAnswer { updated: true })
        );
        assert_eq!(updated(&Value::Int(2)), None);
    }
}
