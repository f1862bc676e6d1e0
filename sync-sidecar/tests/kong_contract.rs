//! CONTRACT TESTS for the Kong delivery. No Kong can be installed here, so the
//! Admin API is played by a local HTTP server (port 0) that records every
//! request, checks method, path, content type and body shape against Kong's
//! documented schema, and answers with Kong's documented responses (success
//! bodies and errors: 400 with Kong's error JSON, 429 + `Retry-After`, 5xx,
//! connection refused). What these tests prove is conformance to the documented
//! contract, not behaviour of a real Kong; sources are cited in
//! `sync-sidecar/src/delivery/kong/`.
//!
//! Revisions are audited in the real PostgreSQL (`DATABASE_URL`), one fresh
//! schema per test. Also here: the committed `kong/` files are exactly what the
//! code renders (`UPDATE_KONG_FILES=1` rewrites them), and the schema is a
//! valid draft-4 `config_schema`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use common::{limit, TestDb};
use serde_json::{json, Value};
use tenant_guard_sidecar::cli::{Cli, Command, Gateway};
use tenant_guard_sidecar::db;
use tenant_guard_sidecar::dryrun::{self, Against};
use tenant_guard_sidecar::kong::{self, KongForm, KongLayout, KongMode, KongTarget, RetryPolicy};
use tenant_guard_sidecar::sync::{DeliveryError, SyncError, SyncOutcome, Syncer, TARGET_KONG};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------
// The fake Admin API
// ---------------------------------------------------------------------------

/// One recorded request.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Answer {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: vec![("Content-Type", "application/json; charset=utf-8".to_owned())],
            body: body.to_string(),
        }
    }

    fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

/// Kong's documented `POST /config` success: 201 with the loaded entities.
fn created_entities() -> Answer {
    Answer::json(
        201,
        json!({"services": [], "routes": [], "filter_chains": []}),
    )
}

/// Kong's documented 400 for an invalid declarative configuration
/// (`kong/db/errors.lua` code 14, with `flatten_errors=1`).
fn invalid_declarative_config() -> Answer {
    Answer::json(
        400,
        json!({
            "code": 14,
            "name": "invalid declarative configuration",
            "message": "declarative config is invalid: {services={{routes={{filter_chains={{filters={{config=\"property version is required\"}}}}}}}}}",
            "fields": {"services": [{"routes": [{"filter_chains": [{"filters": [{"config": "property version is required"}]}]}]}]},
            "flattened_errors": [{
                "entity_type": "filter_chain",
                "entity_name": "tenant-guard",
                "entity_tags": ["tenant-guard"],
                "errors": [{"field": "filters.1.config", "message": "property version is required", "type": "field"}]
            }]
        }),
    )
}

/// Kong's documented 429 while a previous configuration is loading.
fn busy(retry_after: &str) -> Answer {
    Answer::json(
        429,
        json!({"message": "Currently loading previous configuration"}),
    )
    .with_header("Retry-After", retry_after)
}

fn unexpected_error() -> Answer {
    Answer::json(500, json!({"message": "An unexpected error occurred"}))
}

#[derive(Clone)]
struct FakeKong {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    answers: Arc<Mutex<VecDeque<Answer>>>,
}

impl FakeKong {
    fn new(addr: SocketAddr, answers: Vec<Answer>) -> Self {
        Self {
            addr,
            requests: Arc::default(),
            answers: Arc::new(Mutex::new(answers.into())),
        }
    }

    async fn start(answers: Vec<Answer>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, answers)
    }

    /// Serves on `addr` once `delay` has passed (connections before are refused).
    async fn start_later(addr: SocketAddr, delay: Duration, answers: Vec<Answer>) -> Self {
        let fake = Self::new(addr, answers);
        let clone = fake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let listener = TcpListener::bind(addr).await.unwrap();
            clone.accept_loop(listener).await;
        });
        fake
    }

    fn serve(listener: TcpListener, answers: Vec<Answer>) -> Self {
        let fake = Self::new(listener.local_addr().unwrap(), answers);
        let clone = fake.clone();
        tokio::spawn(async move { clone.accept_loop(listener).await });
        fake
    }

    async fn accept_loop(&self, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let this = self.clone();
            tokio::spawn(async move { this.handle(stream).await });
        }
    }

    async fn handle(&self, mut stream: tokio::net::TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let header_end = loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let target = request_line.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[header_end..].to_vec();
        while body.len() < length {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        self.requests.lock().unwrap().push(Recorded {
            method,
            target,
            headers,
            body,
        });
        let answer =
            self.answers.lock().unwrap().pop_front().unwrap_or_else(|| {
                Answer::json(599, json!({"message": "no scripted answer left"}))
            });
        let mut response = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\nServer: kong/3.10.0\r\n",
            answer.status,
            answer.body.len()
        );
        for (name, value) in &answer.headers {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("\r\n");
        response.push_str(&answer.body);
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 6,
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
        max_retry_after: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
    }
}

fn kong_target(url: &str, mode: KongMode, kong_yml: Option<PathBuf>) -> KongTarget {
    let mut target = KongTarget::new(url, mode).unwrap();
    target.retry = fast_retries();
    target.kong_yml = kong_yml;
    target
}

async fn seed(db: &TestDb, requests: u64) {
    db.set_global("gateway.rate_limit", limit(requests), "alice")
        .await;
}

/// A fresh schema seeded with a global limit of 100.
async fn seeded_db() -> TestDb {
    let db = TestDb::new().await;
    seed(&db, 100).await;
    db
}

fn syncer(db: &TestDb, target: KongTarget) -> Syncer {
    Syncer::new(db.schema(), target).unwrap()
}

/// A syncer that POSTs to `fake` in DB-less mode.
fn dbless_syncer(db: &TestDb, fake: &FakeKong) -> Syncer {
    syncer(db, kong_target(&fake.url(), KongMode::Dbless, None))
}

/// The first sync through `fake` delivers after Kong saw `requests` requests.
async fn assert_delivered_after(db: &TestDb, fake: &FakeKong, requests: usize, why: &str) {
    let outcome = dbless_syncer(db, fake)
        .sync(&db.client, "cli")
        .await
        .unwrap();
    assert!(
        matches!(outcome, SyncOutcome::Delivered { .. }),
        "{outcome:?}"
    );
    assert_eq!(fake.requests().len(), requests, "{why}");
    assert_eq!(kong_revisions(db).await[0].status, "delivered");
}

fn assert_json_content_type(request: &Recorded) {
    assert!(
        request
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "content type: {:?}",
        request.header("content-type")
    );
}

/// Checks a `POST /config` request against Kong's documented form and returns
/// the declarative configuration it carries.
fn assert_post_config(request: &Recorded) -> Value {
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, "/config?check_hash=1&flatten_errors=1");
    assert_json_content_type(request);
    let body = request.json();
    let object = body.as_object().expect("body is an object");
    assert_eq!(
        object.keys().collect::<Vec<_>>(),
        vec!["config"],
        "documented body: {{\"config\": \"<YAML or JSON text>\"}}"
    );
    let text = object["config"].as_str().expect("config is a string");
    let config: Value = serde_json::from_str(text).expect("config text is JSON");
    assert_declarative_shape(&config);
    config
}

/// The documented declarative shape with a filter chain on the route; returns the filter config.
fn assert_declarative_shape(config: &Value) -> Value {
    assert_eq!(config["_format_version"], "3.0");
    let service = &config["services"][0];
    assert!(service["name"].is_string() && service["url"].is_string());
    let route = &service["routes"][0];
    assert!(route["name"].is_string());
    assert!(route["paths"].is_array());
    let chain = &route["filter_chains"][0];
    assert_eq!(chain["enabled"], true);
    assert_filters_shape(&chain["filters"])
}

/// `filters: [{name, config, enabled}]` (filter_chains.lua), the config an object (meta.json schema).
fn assert_filters_shape(filters: &Value) -> Value {
    let filters = filters.as_array().expect("filters is an array");
    assert_eq!(filters.len(), 1, "len_min = 1; we deliver one filter");
    let filter = filters[0].as_object().unwrap();
    let mut keys: Vec<&String> = filter.keys().collect();
    keys.sort();
    assert_eq!(keys, vec!["config", "enabled", "name"]);
    assert_eq!(filter["name"], kong::FILTER_NAME);
    assert_eq!(filter["enabled"], true);
    assert!(
        filter["config"].is_object(),
        "config is JSON, not a string, when config_schema is present"
    );
    filter["config"].clone()
}

async fn kong_revisions(db: &TestDb) -> Vec<db::Revision> {
    let mut all: Vec<db::Revision> = db::history(&db.client, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.target == TARGET_KONG)
        .collect();
    all.reverse();
    all
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

// ---------------------------------------------------------------------------
// DB-less: POST /config
// ---------------------------------------------------------------------------

#[tokio::test]
async fn contract_dbless_post_config_then_304_when_unchanged() {
    let db = seeded_db().await;
    let fake = FakeKong::start(vec![created_entities(), Answer::empty(304)]).await;
    let kong_yml = db.dir.path().join("kong.yml");
    let syncer = syncer(
        &db,
        kong_target(&fake.url(), KongMode::Dbless, Some(kong_yml.clone())),
    );

    let outcome = syncer.sync(&db.client, "cli").await.unwrap();
    let SyncOutcome::Delivered {
        revision_id,
        revision,
    } = outcome
    else {
        panic!("expected a delivery, got {outcome:?}");
    };
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let config = assert_post_config(&requests[0]);
    let filter_config = assert_declarative_shape(&config);
    assert_eq!(filter_config["revision"], revision.as_str());
    assert_eq!(filter_config["defaults"]["rate_limit"]["requests"], 100);
    assert!(requests[0]
        .header("host")
        .is_some_and(|h| h == fake.addr.to_string()));

    // Audit: one delivered revision for target 'kong' holding the exact document.
    let revisions = kong_revisions(&db).await;
    assert_eq!(revisions.len(), 1);
    assert_eq!(revisions[0].id, revision_id);
    assert_eq!(revisions[0].status, "delivered");
    let document: Value = serde_json::from_str(revisions[0].document.as_deref().unwrap()).unwrap();
    assert_eq!(
        document, filter_config,
        "Kong gets exactly the recorded document"
    );

    // kong.yml for decK: the same declarative value, written atomically.
    let yaml = std::fs::read_to_string(&kong_yml).unwrap();
    assert_eq!(
        yaml,
        kong::render(
            revisions[0].document.as_deref().unwrap(),
            &KongLayout::default()
        )
        .unwrap()
    );
    assert_yaml_equals(&yaml, &config);

    // Unchanged settings: re-sent with check_hash=1, Kong answers 304, no new revision.
    let outcome = syncer.sync(&db.client, "timer").await.unwrap();
    assert_eq!(
        outcome,
        SyncOutcome::Unchanged {
            revision_id,
            revision: revision.clone(),
            rewrote_file: false
        }
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].body, requests[0].body,
        "identical bytes, so Kong's hash matches"
    );
    assert_eq!(kong_revisions(&db).await.len(), 1);
    db.drop_schema().await;
}

/// When python3 with PyYAML is around, the YAML we write must load to the
/// same value we POST (a cross-check of the tiny emitter; skipped otherwise).
fn assert_yaml_equals(yaml: &str, expected: &Value) {
    let script = "import json,sys,yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))";
    let child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("python3 not available: YAML cross-check skipped");
        return;
    };
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(yaml.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    if !output.status.success() {
        eprintln!("python3 has no PyYAML: YAML cross-check skipped");
        return;
    }
    let loaded: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        &loaded, expected,
        "kong.yml loads to the POSTed configuration"
    );
}

#[tokio::test]
async fn a_document_kong_refuses_never_reaches_kong_yml() {
    let db = seeded_db().await;
    let kong_yml = db.dir.path().join("kong.yml");
    std::fs::write(&kong_yml, "# the last good configuration\n").unwrap();
    let fake = FakeKong::start(vec![invalid_declarative_config()]).await;
    let syncer = syncer(
        &db,
        kong_target(&fake.url(), KongMode::Dbless, Some(kong_yml.clone())),
    );
    syncer.sync(&db.client, "cli").await.unwrap_err();
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(
        std::fs::read_to_string(&kong_yml).unwrap(),
        "# the last good configuration\n",
        "a restarted Kong node must not load what Kong refused"
    );
}

#[tokio::test]
async fn contract_dbless_400_is_a_failed_revision_with_kongs_message_and_no_retry() {
    let db = seeded_db().await;
    let fake = FakeKong::start(vec![invalid_declarative_config()]).await;
    let syncer = dbless_syncer(&db, &fake);

    let error = syncer.sync(&db.client, "cli").await.unwrap_err();
    let SyncError::Delivery { revision, source } = &error else {
        panic!("expected a delivery error, got {error:?}");
    };
    assert!(matches!(
        source,
        DeliveryError::Kong(kong::KongDeliveryError::Rejected { status: 400, .. })
    ));
    assert_eq!(fake.requests().len(), 1, "a 400 is final: no retry");

    let revisions = kong_revisions(&db).await;
    assert_eq!(revisions.len(), 1);
    assert_eq!(revisions[0].id, *revision);
    assert_eq!(revisions[0].status, "failed");
    let recorded = revisions[0].error.as_deref().unwrap();
    assert!(
        recorded.contains("invalid declarative configuration")
            && recorded.contains(
                "filter_chain tenant-guard: filters.1.config: property version is required"
            ),
        "{recorded}"
    );
    db.drop_schema().await;
}

#[tokio::test]
async fn contract_dbless_429_honours_retry_after_then_201() {
    let db = seeded_db().await;
    let fake = FakeKong::start(vec![busy("1"), created_entities()]).await;
    let syncer = dbless_syncer(&db, &fake);

    let started = Instant::now();
    let outcome = syncer.sync(&db.client, "cli").await.unwrap();
    assert!(matches!(outcome, SyncOutcome::Delivered { .. }));
    // Retry-After: 1 → at least ~0.5 s (equal jitter halves at most), far above the 50 ms backoff.
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].body, requests[1].body,
        "the retry re-sends the same request"
    );
    assert_eq!(kong_revisions(&db).await[0].status, "delivered");
    db.drop_schema().await;
}

#[tokio::test]
async fn contract_dbless_500_then_success() {
    let db = seeded_db().await;
    let fake = FakeKong::start(vec![unexpected_error(), created_entities()]).await;
    assert_delivered_after(&db, &fake, 2, "one 500, then the retry").await;
    db.drop_schema().await;
}

#[tokio::test]
async fn contract_connection_refused_then_success() {
    let db = seeded_db().await;
    let addr = {
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        probe.local_addr().unwrap()
    };
    let fake =
        FakeKong::start_later(addr, Duration::from_millis(300), vec![created_entities()]).await;
    assert_delivered_after(&db, &fake, 1, "refused attempts never reached Kong").await;
    db.drop_schema().await;
}

#[tokio::test]
async fn contract_gives_up_after_the_retry_budget() {
    let db = seeded_db().await;
    let answers = (0..10)
        .map(|_| Answer::json(503, json!({"message": "Kong currently exiting"})))
        .collect();
    let fake = FakeKong::start(answers).await;
    let syncer = dbless_syncer(&db, &fake);

    let error = syncer.sync(&db.client, "cli").await.unwrap_err();
    assert!(matches!(
        error,
        SyncError::Delivery {
            source: DeliveryError::Kong(kong::KongDeliveryError::Unavailable { attempts: 6, .. }),
            ..
        }
    ));
    assert_eq!(fake.requests().len(), 6);
    let revisions = kong_revisions(&db).await;
    assert_eq!(revisions[0].status, "failed");
    assert!(revisions[0]
        .error
        .as_deref()
        .unwrap()
        .contains("503: Kong currently exiting"));
    db.drop_schema().await;
}

// ---------------------------------------------------------------------------
// Database mode: the filter_chains entity
// ---------------------------------------------------------------------------

#[tokio::test]
async fn contract_db_mode_puts_the_filter_chain_on_the_route() {
    let db = seeded_db().await;
    let entity = json!({
        "id": "c1a2f1a0-6d6e-4a53-9e0c-3f0d2e9b6a11",
        "name": "tenant-guard",
        "enabled": true,
        "route": {"id": "0f3c3f0e-1d55-4e0c-9b7a-7d4f7f2a9c10"},
        "service": null,
        "filters": [{"name": "tenant_guard", "config": {}, "enabled": true}],
        "tags": ["tenant-guard"],
        "created_at": 1_700_000_000,
        "updated_at": 1_700_000_000
    });
    let schema_violation = Answer::json(
        400,
        json!({
            "code": 2,
            "name": "schema violation",
            "message": "schema violation (filters.1.config: property version is required)",
            "fields": {"filters": [{"config": "property version is required"}]}
        }),
    );
    let fake = FakeKong::start(vec![Answer::json(200, entity), schema_violation]).await;
    let mut target = kong_target(&fake.url(), KongMode::Db, None);
    target.layout.route_name = "orders api".to_owned();
    let syncer = syncer(&db, target);

    let SyncOutcome::Delivered { revision, .. } = syncer.sync(&db.client, "cli").await.unwrap()
    else {
        panic!("expected a delivery");
    };
    let request = &fake.requests()[0];
    assert_eq!(request.method, "PUT");
    assert_eq!(
        request.target,
        "/routes/orders%20api/filter-chains/tenant-guard"
    );
    assert_json_content_type(request);
    let body = request.json();
    assert_eq!(body["name"], "tenant-guard");
    assert_eq!(body["enabled"], true);
    assert!(body.get("route").is_none(), "the route comes from the path");
    let config = assert_filters_shape(&body["filters"]);
    assert_eq!(config["revision"], revision.as_str());
    assert!(body["tags"]
        .as_array()
        .unwrap()
        .contains(&json!(format!("tenant-guard-revision:{revision}"))));

    // A schema violation from Kong: failed revision with Kong's message, no retry.
    seed(&db, 5).await;
    let error = syncer.sync(&db.client, "cli").await.unwrap_err();
    assert!(matches!(error, SyncError::Delivery { .. }));
    assert_eq!(fake.requests().len(), 2);
    let revisions = kong_revisions(&db).await;
    assert_eq!(
        revisions
            .iter()
            .map(|r| r.status.as_str())
            .collect::<Vec<_>>(),
        vec!["delivered", "failed"]
    );
    assert!(revisions[1].error.as_deref().unwrap().contains(
        "schema violation: schema violation (filters.1.config: property version is required)"
    ));
    db.drop_schema().await;
}

// ---------------------------------------------------------------------------
// Rollback re-delivers to Kong
// ---------------------------------------------------------------------------

#[tokio::test]
async fn contract_rollback_redelivers_to_kong_and_is_audited() {
    let db = seeded_db().await;
    let fake = FakeKong::start(vec![
        created_entities(),
        created_entities(),
        created_entities(),
    ])
    .await;
    let syncer = dbless_syncer(&db, &fake);

    let first = syncer.sync(&db.client, "cli").await.unwrap().revision_id();
    seed(&db, 7).await;
    syncer.sync(&db.client, "cli").await.unwrap();
    let outcome = syncer.rollback(&db.client, first, "ops").await.unwrap();

    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    let restored = assert_declarative_shape(&assert_post_config(&requests[2]));
    assert_eq!(restored["defaults"]["rate_limit"]["requests"], 100);
    let revisions = kong_revisions(&db).await;
    let last = revisions.last().unwrap();
    assert_eq!(last.id, outcome.revision_id());
    assert_eq!(last.rollback_of, Some(first));
    assert_eq!(last.target, TARGET_KONG);
    assert_eq!(last.status, "delivered");
    assert_eq!(restored["revision"], last.revision.as_str());
    db.drop_schema().await;
}

/// `sync --dry-run --gateway kong` reads what Kong has on the route through
/// the Admin API (readable in DB-less mode too) and diffs against it.
#[tokio::test]
async fn contract_dry_run_reads_the_filter_chain_kong_has() {
    let db = seeded_db().await;
    // Kong's filter chain entity, config as JSON (meta.json present) with an older limit.
    let chain = |config: Value| {
        Answer::json(
            200,
            json!({
                "id": "6f1c2a9e-0000-4000-8000-000000000001",
                "name": "tenant-guard",
                "enabled": true,
                "route": {"id": "6f1c2a9e-0000-4000-8000-000000000002"},
                "service": null,
                "filters": [{"name": "tenant_guard", "config": config, "enabled": true}],
                "tags": ["tenant-guard"]
            }),
        )
    };
    let older = json!({"version": 1, "revision": "r7-abc",
        "tenant": {"trust_header_without_jwt": true},
        "defaults": {"rate_limit": {"requests": 50, "per_seconds": 60}}, "tenants": {}});
    let not_found = Answer::json(404, json!({"message": "Not found"}));
    let fake = FakeKong::start(vec![
        chain(older.clone()),
        // Without tenant_guard.meta.json Kong keeps the config as a string.
        chain(Value::String(older.to_string())),
        not_found,
    ])
    .await;
    let target = kong_target(&fake.url(), KongMode::Dbless, None);
    let against = Against::Kong(&target);
    for _ in 0..2 {
        let report = dryrun::dry_run(&db.client, against, 65536).await.unwrap();
        assert!(report.valid && report.changed, "{}", report.text);
        for expected in [
            &format!(
                "compared against: Kong at {} (route `tenant-guard`) (revision r7-abc)",
                fake.url()
            ),
            "-      \"requests\": 50",
            "+      \"requests\": 100",
        ] {
            assert!(
                report.text.contains(expected),
                "{expected}:\n{}",
                report.text
            );
        }
    }
    let report = dryrun::dry_run(&db.client, against, 65536).await.unwrap();
    assert!(
        report.text.contains(&format!(
            "nothing deployed on Kong at {} (route `tenant-guard`); would write:",
            fake.url()
        )),
        "{}",
        report.text
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    for request in &requests {
        assert_eq!(request.method, "GET");
        assert_eq!(
            request.target,
            "/routes/tenant-guard/filter-chains/tenant-guard"
        );
    }
    assert!(
        kong_revisions(&db).await.is_empty(),
        "a dry run records nothing"
    );
    db.drop_schema().await;
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

#[test]
fn cli_accepts_the_kong_flags() {
    let cli = Cli::try_parse_from([
        "tenant-guard-sidecar",
        "sync",
        "--gateway",
        "kong",
        "--kong-admin-url",
        "http://127.0.0.1:8001",
        "--kong-mode",
        "db",
        "--kong-yml",
        "/tmp/kong.yml",
        "--kong-route",
        "orders",
    ])
    .unwrap();
    let Command::Sync(args) = cli.command else {
        panic!("expected sync");
    };
    assert_eq!(args.delivery.gateway, Gateway::Kong);
    assert_eq!(args.delivery.kong_mode, KongMode::Db);
    assert_eq!(args.delivery.kong_form, KongForm::FilterChain);
    assert_eq!(args.delivery.kong_route, "orders");
    assert_eq!(
        args.delivery.kong_yml.as_deref(),
        Some(Path::new("/tmp/kong.yml"))
    );
}

// ---------------------------------------------------------------------------
// Committed kong/ files
// ---------------------------------------------------------------------------

/// The sample plugin document the committed kong.yml files are rendered from.
fn sample_document() -> String {
    std::fs::read_to_string(repo_root().join("envoy/sample-config.json")).unwrap()
}

fn expected_file(kind: &str) -> String {
    match kind {
        "meta" => kong::render_meta_json().unwrap(),
        "filter-chain" => kong::render(&sample_document(), &KongLayout::default()).unwrap(),
        "plugin" => kong::render(
            &sample_document(),
            &KongLayout {
                form: KongForm::Plugin,
                ..KongLayout::default()
            },
        )
        .unwrap(),
        other => panic!("unknown kind {other}"),
    }
}

#[test]
fn kong_files_are_rendered() {
    let update = std::env::var_os("UPDATE_KONG_FILES").is_some_and(|v| v == "1");
    for (path, kind) in kong::committed_files(&repo_root()) {
        let expected = expected_file(kind);
        if update {
            std::fs::write(&path, &expected).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == expected,
            "{} is stale: run `UPDATE_KONG_FILES=1 cargo test -p tenant-guard-sidecar --test kong_contract kong_files_are_rendered`",
            path.display()
        );
    }
}

#[test]
fn meta_json_is_a_draft4_config_schema_that_accepts_the_samples() {
    let meta: Value = serde_json::from_str(&kong::render_meta_json().unwrap()).unwrap();
    let schema = &meta["config_schema"];
    assert_eq!(
        meta.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["config_schema"]
    );
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-04/schema#");
    // draft4::new checks the schema against the draft-4 meta-schema.
    let validator = jsonschema::draft4::new(schema).expect("a valid draft-4 schema");
    let sample: Value = serde_json::from_str(&sample_document()).unwrap();
    assert!(validator.is_valid(&sample), "envoy/sample-config.json");
    // The parser refuses a document without a tenant identity source, so the schema does too.
    let minimal = json!({"version": 1, "tenant": {"trust_header_without_jwt": true}});
    assert!(validator.is_valid(&minimal));
    assert!(!validator.is_valid(&json!({"version": 1})));
    let wrong = json!({"version": 1, "defaults": {"rate_limit": {"requests": "many"}}});
    assert!(!validator.is_valid(&wrong));

    // The rendered kong.yml carries a config the schema accepts, as Kong will check.
    let declarative = kong::declarative(&sample_document(), &KongLayout::default()).unwrap();
    let config = assert_declarative_shape(&declarative);
    assert!(validator.is_valid(&config));
}
