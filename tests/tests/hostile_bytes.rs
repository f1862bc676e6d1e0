//! Every byte value 0x00–0xff in every header the filter reads (and in header
//! names, and in an upstream response header), over HTTP/1.1 and HTTP/2, in one
//! real Envoy. Whatever Envoy's codecs let through reaches the filter, which must
//! answer with its defined outcome: never a 503 of its own, the correlation
//! header exactly once, no `panicked` in the log, no VM reload.
//!
//! "Envoy lets it through" is measured, not assumed: the same byte is first sent
//! in a header the filter never reads (`x-other`); a byte Envoy's codec refuses
//! there must be refused identically in every other header.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;
use tenant_guard_e2e::raw_http::{Outcome, RawH1, RawH2, RawResponse};
use tenant_guard_e2e::upstream::Acceptor;
use tenant_guard_e2e::Envoy;

const CORRELATION: &str = "x-correlation-id";
/// Tells the test upstream to answer with `x-odd: a<byte>b` (byte in hex).
const RESPOND_BYTE: &str = "x-respond-byte";
/// The upstream's report of the `x-other` value it received, hex-encoded.
const SEEN_OTHER: &str = "x-seen-other";
const HS_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY";

#[derive(Default)]
struct Hits(AtomicU64);

/// HTTP/1.1 upstream that keeps header bytes raw and can send a hostile response header.
fn serve(stream: TcpStream, hits: &Hits) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let mut respond_byte = None;
        let mut content_length = 0usize;
        let mut seen_other = None;
        loop {
            let mut header = Vec::new();
            if reader.read_until(b'\n', &mut header)? == 0 {
                return Ok(());
            }
            if let Some(value) = header.strip_prefix(b"x-other:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                let value = value.strip_suffix(b"\r\n").unwrap_or(value);
                seen_other = Some(value.iter().map(|b| format!("{b:02x}")).collect::<String>());
            }
            let header = String::from_utf8_lossy(&header)
                .trim_end()
                .to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(value) = header.strip_prefix("content-length:") {
                content_length = value.trim().parse().unwrap_or(0);
            }
            if let Some(value) = header.strip_prefix(&format!("{RESPOND_BYTE}:")) {
                respond_byte = u8::from_str_radix(value.trim(), 16).ok();
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body)?;
        let count = hits.0.fetch_add(1, Ordering::SeqCst) + 1;
        let payload = format!("{{\"hit\":{count}}}");
        let mut response = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n".to_vec();
        if let Some(hex) = seen_other {
            response.extend_from_slice(format!("{SEEN_OTHER}: {hex}\r\n").as_bytes());
        }
        if let Some(byte) = respond_byte {
            response.extend_from_slice(b"x-odd: a");
            response.push(byte);
            response.extend_from_slice(b"b\r\n");
        }
        response.extend_from_slice(format!("content-length: {}\r\n\r\n", payload.len()).as_bytes());
        response.extend_from_slice(payload.as_bytes());
        writer.write_all(&response)?;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// Baseline: a header the filter never reads.
    Other,
    Tenant,
    Correlation,
    IdempotencyKey,
    IfMatch,
    Authorization,
    /// In a header *name* (the filter reads the whole map for duplicate keys).
    HeaderName,
}

const TARGETS: [Target; 7] = [
    Target::Other,
    Target::Tenant,
    Target::Correlation,
    Target::IdempotencyKey,
    Target::IfMatch,
    Target::Authorization,
    Target::HeaderName,
];

fn with_byte(prefix: &str, byte: u8, suffix: &str) -> Vec<u8> {
    let mut value = prefix.as_bytes().to_vec();
    value.push(byte);
    value.extend_from_slice(suffix.as_bytes());
    value
}

struct Request {
    method: &'static str,
    path: String,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
}

fn request_for(target: Target, byte: u8, protocol: &str) -> Request {
    let tenant = (b"x-tenant-id".to_vec(), b"acme".to_vec());
    let unique = format!("{protocol}-{byte:02x}");
    let (method, path, headers) = match target {
        Target::Other => (
            "GET",
            "/plain".to_owned(),
            vec![tenant, (b"x-other".to_vec(), with_byte("a", byte, "b"))],
        ),
        Target::Tenant => (
            "GET",
            "/plain".to_owned(),
            vec![(b"x-tenant-id".to_vec(), with_byte("ac", byte, "me"))],
        ),
        Target::Correlation => (
            "GET",
            "/plain".to_owned(),
            vec![
                tenant,
                (
                    CORRELATION.as_bytes().to_vec(),
                    with_byte("id-", byte, "-1"),
                ),
            ],
        ),
        Target::IdempotencyKey => (
            "POST",
            format!("/carts/{unique}"),
            vec![
                tenant,
                (
                    b"idempotency-key".to_vec(),
                    with_byte("\"k", byte, &format!("-{unique}\"")),
                ),
            ],
        ),
        Target::IfMatch => (
            "PUT",
            "/orders/1".to_owned(),
            vec![
                tenant,
                (b"if-match".to_vec(), with_byte("\"v", byte, "1\"")),
            ],
        ),
        Target::Authorization => (
            "GET",
            "/plain".to_owned(),
            vec![
                tenant,
                (
                    b"authorization".to_vec(),
                    with_byte("Bearer eyJhbGciOiJIUzI1NiJ9.e30", byte, ".c2ln"),
                ),
            ],
        ),
        Target::HeaderName => (
            "POST",
            format!("/names/{unique}"),
            vec![
                tenant,
                (
                    b"idempotency-key".to_vec(),
                    format!("\"n-{unique}\"").into_bytes(),
                ),
                (with_byte("x-a", byte, "b"), b"1".to_vec()),
            ],
        ),
    };
    Request {
        method,
        path,
        headers,
    }
}

/// Sends on `client` (H1 or H2); `None` when Envoy's codec refused it.
trait Client: Send {
    fn send(&mut self, request: &Request, body: &[u8]) -> Outcome;
}

impl Client for RawH1 {
    fn send(&mut self, request: &Request, body: &[u8]) -> Outcome {
        let headers: Vec<(&[u8], &[u8])> = request
            .headers
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        match self.request(request.method, request.path.as_bytes(), &headers, body) {
            Ok(Outcome::Response(r)) if r.status == 400 && r.header_all(CORRELATION).is_empty() => {
                Outcome::Refused(format!("HTTP/1 400 from the codec: {}", r.text()))
            }
            Ok(outcome) => outcome,
            Err(e) => Outcome::Refused(format!("I/O: {e}")),
        }
    }
}

impl Client for RawH2 {
    fn send(&mut self, request: &Request, body: &[u8]) -> Outcome {
        let headers: Vec<(&[u8], &[u8])> = request
            .headers
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        match self.request(request.method, request.path.as_bytes(), &headers, body) {
            Ok(Outcome::Response(r)) if r.status == 400 && r.header_all(CORRELATION).is_empty() => {
                Outcome::Refused(format!("HTTP/2 400 from the codec: {}", r.text()))
            }
            Ok(outcome) => outcome,
            Err(e) => Outcome::Refused(format!("I/O: {e}")),
        }
    }
}

fn problem_type(response: &RawResponse) -> String {
    serde_json::from_slice::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|body| body["type"].as_str().map(str::to_owned))
        .unwrap_or_default()
        .trim_start_matches("urn:tenant-guard:problem:")
        .to_owned()
}

/// The filter's answer for `byte` in `target`, checked against the core's rules.
/// `exact`: Envoy delivered the byte unchanged (learnt from the `x-other` echo);
/// otherwise only the invariants and the header's possible outcomes are checked.
fn check(
    target: Target,
    byte: u8,
    response: &RawResponse,
    sent: &Request,
    exact: bool,
    context: &str,
) {
    assert_ne!(response.status, 503, "{context}: {response:?}");
    let ids = response.header_all(CORRELATION);
    assert_eq!(
        ids.len(),
        1,
        "{context}: correlation header count: {response:?}"
    );
    let status = response.status;
    let kind = problem_type(response);
    if !exact {
        let possible: &[u16] = match target {
            Target::Other | Target::HeaderName | Target::Correlation => &[200],
            Target::Tenant | Target::IdempotencyKey => &[200, 400],
            Target::IfMatch => &[200, 428],
            Target::Authorization => &[401],
        };
        assert!(possible.contains(&status), "{context}: {response:?}");
        return;
    }
    match target {
        Target::Other | Target::HeaderName => assert_eq!(status, 200, "{context}: {response:?}"),
        Target::Tenant => {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
                assert_eq!(status, 200, "{context}: {response:?}");
            } else {
                assert_eq!(
                    (status, kind.as_str()),
                    (400, "invalid-tenant"),
                    "{context}"
                );
            }
        }
        Target::Correlation => {
            assert_eq!(status, 200, "{context}");
            let sent_id = &sent.headers[1].1;
            if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b':' | b'-') {
                assert_eq!(ids[0], sent_id.as_slice(), "{context}");
            } else {
                assert_eq!(
                    ids[0].len(),
                    36,
                    "{context}: a fresh UUIDv7, got {:?}",
                    ids[0]
                );
            }
        }
        Target::IdempotencyKey => {
            if (0x20..=0x7e).contains(&byte) && !matches!(byte, b'"' | b'\\') {
                assert_eq!(status, 200, "{context}: {response:?}");
            } else {
                assert_eq!(
                    (status, kind.as_str()),
                    (400, "idempotency-key-malformed"),
                    "{context}"
                );
            }
        }
        Target::IfMatch => {
            let etagc = byte == 0x21 || (0x23..=0x7e).contains(&byte) || byte >= 0x80;
            assert_eq!(
                status,
                if etagc { 200 } else { 428 },
                "{context}: {response:?}"
            );
        }
        Target::Authorization => {
            assert_eq!(
                (status, kind.as_str()),
                (401, "unauthenticated"),
                "{context}"
            );
        }
    }
}

/// Per target: bytes that reached the filter, bytes Envoy refused.
type Tally = BTreeMap<(String, Target), (u32, u32)>;

/// Which byte values Envoy refused, or delivered altered, in `x-other`.
#[derive(Clone, Copy)]
struct Baseline {
    refused: [bool; 256],
    altered: [bool; 256],
}

/// Worker threads per target: a request Envoy's HTTP/2 codec refuses costs a
/// connection that Envoy closes only after its delayed-close timeout (1 s), so
/// the refused (control) bytes are spread one per connection.
const WORKERS: usize = 32;

/// Byte values split into [`WORKERS`] sets, worker `i` taking `i, i + WORKERS, …`.
fn strided(all: &[u8]) -> Vec<Vec<u8>> {
    (0..WORKERS)
        .map(|first| all.iter().copied().skip(first).step_by(WORKERS).collect())
        .collect()
}

fn new_client(port: u16, protocol: &str) -> Box<dyn Client> {
    if protocol == "h1" {
        Box::new(RawH1::new(port))
    } else {
        Box::new(RawH2::new(port))
    }
}

/// Sends `bytes` in `target` on one fresh connection; checks each answer.
fn run_chunk(
    port: u16,
    protocol: &str,
    target: Target,
    bytes: &[u8],
    baseline: Option<&Baseline>,
) -> (Baseline, u32, u32) {
    let mut client = new_client(port, protocol);
    let mut seen = Baseline {
        refused: [false; 256],
        altered: [false; 256],
    };
    let (mut reached, mut refused) = (0, 0);
    for &byte in bytes {
        let index = usize::from(byte);
        let request = request_for(target, byte, protocol);
        let body: &[u8] = if request.method == "GET" { b"" } else { b"x" };
        let context = format!("{protocol} {target:?} byte {byte:#04x}");
        match client.send(&request, body) {
            Outcome::Response(response) => {
                let exact = match baseline {
                    None => {
                        let echoed = response.header_all(SEEN_OTHER);
                        let expected: String = request.headers[1]
                            .1
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect();
                        seen.altered[index] =
                            echoed.first().is_none_or(|hex| *hex != expected.as_bytes());
                        !seen.altered[index]
                    }
                    Some(baseline) => {
                        if target != Target::HeaderName {
                            assert!(
                                !baseline.refused[index],
                                "{context}: Envoy refused this byte in x-other but let it through here"
                            );
                        }
                        !baseline.altered[index]
                    }
                };
                check(target, byte, &response, &request, exact, &context);
                reached += 1;
            }
            Outcome::Refused(why) => {
                match baseline {
                    None => seen.refused[index] = true,
                    Some(baseline) if target != Target::HeaderName => assert!(
                        baseline.refused[index],
                        "{context}: refused ({why}) although Envoy let it through in x-other"
                    ),
                    Some(_) => {}
                }
                refused += 1;
            }
        }
    }
    (seen, reached, refused)
}

/// Every byte in every request header on `protocol`; returns how many byte
/// values Envoy delivered altered (the baseline shows which).
fn run_request_headers(port: u16, protocol: &str, tally: &mut Tally) -> u32 {
    let all: Vec<u8> = (0..=u8::MAX).collect();
    let mut baseline = Baseline {
        refused: [false; 256],
        altered: [false; 256],
    };
    let results: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = strided(&all)
            .into_iter()
            .map(|bytes| {
                scope.spawn(move || run_chunk(port, protocol, Target::Other, &bytes, None))
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let entry = tally
        .entry((protocol.to_owned(), Target::Other))
        .or_default();
    for (seen, reached, refused) in results {
        for index in 0..256 {
            baseline.refused[index] |= seen.refused[index];
            baseline.altered[index] |= seen.altered[index];
        }
        entry.0 += reached;
        entry.1 += refused;
    }
    let baseline_ref = &baseline;
    let results: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = TARGETS
            .iter()
            .filter(|t| **t != Target::Other)
            .flat_map(|&target| strided(&all).into_iter().map(move |bytes| (target, bytes)))
            .map(|(target, bytes)| {
                scope.spawn(move || {
                    (
                        target,
                        run_chunk(port, protocol, target, &bytes, Some(baseline_ref)),
                    )
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for (target, (_, reached, refused)) in results {
        let entry = tally.entry((protocol.to_owned(), target)).or_default();
        entry.0 += reached;
        entry.1 += refused;
    }
    let altered: Vec<u8> = (0..=u8::MAX)
        .filter(|b| baseline.altered[usize::from(*b)])
        .collect();
    eprintln!("{protocol}: byte values Envoy delivered altered: {altered:?}");
    u32::try_from(altered.len()).unwrap()
}

/// Upstream answers `x-odd: a<byte>b` to an idempotent POST: the client gets the
/// bytes untouched, and the retry is a replay (same bytes) or a 409 when the
/// value cannot be replayed exactly (not UTF-8, or a control character).
fn run_response_headers(client: &mut dyn Client, protocol: &str, tally: &mut Tally) -> u32 {
    let mut replayed = 0;
    for byte in 0..=u8::MAX {
        let hex = format!("{byte:02x}");
        let request = Request {
            method: "POST",
            path: format!("/resp/{protocol}/{hex}"),
            headers: vec![
                (b"x-tenant-id".to_vec(), b"acme".to_vec()),
                (
                    b"idempotency-key".to_vec(),
                    format!("\"r-{protocol}-{hex}\"").into_bytes(),
                ),
                (RESPOND_BYTE.as_bytes().to_vec(), hex.clone().into_bytes()),
            ],
        };
        let context = format!("{protocol} response header byte {byte:#04x}");
        let entry = tally
            .entry((format!("{protocol} response"), Target::Other))
            .or_default();
        let Outcome::Response(first) = client.send(&request, b"x") else {
            panic!("{context}: the request itself was refused");
        };
        assert_eq!(
            first.header_all(CORRELATION).len(),
            1,
            "{context}: {first:?}"
        );
        if matches!(first.status, 502 | 503) {
            // Envoy's upstream codec refused the response before any filter saw it.
            assert!(
                first.text().contains("protocol error"),
                "{context}: {first:?}"
            );
            entry.1 += 1;
            continue;
        }
        entry.0 += 1;
        assert_eq!(first.status, 200, "{context}: {first:?}");
        let sent = with_byte("a", byte, "b");
        let received = first.header_all("x-odd");
        // Envoy's HTTP/1 codec drops a bare CR from upstream values; the filter changes nothing.
        let sent = if byte == b'\r' && received == [&b"ab"[..]] {
            b"ab".to_vec()
        } else {
            sent
        };
        assert_eq!(
            received,
            [sent.as_slice()],
            "{context}: passed through untouched"
        );
        let Outcome::Response(retry) = client.send(&request, b"x") else {
            panic!("{context}: the retry was refused");
        };
        assert_eq!(
            retry.header_all(CORRELATION).len(),
            1,
            "{context}: {retry:?}"
        );
        let exact_text = std::str::from_utf8(&sent).is_ok()
            && !sent.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f);
        if exact_text {
            assert_eq!(retry.status, 200, "{context}: replay expected: {retry:?}");
            assert_eq!(
                retry.header_all("idempotent-replayed"),
                [&b"true"[..]],
                "{context}"
            );
            assert_eq!(
                retry.header_all("x-odd"),
                [sent.as_slice()],
                "{context}: replayed bytes"
            );
            assert_eq!(retry.body, first.body, "{context}: replayed body");
            replayed += 1;
        } else {
            assert_eq!(
                (retry.status, problem_type(&retry).as_str()),
                (409, "idempotency-response-not-replayable"),
                "{context}: {retry:?}"
            );
        }
    }
    replayed
}

#[test]
fn every_byte_in_every_header_over_http1_and_http2() {
    let hits = Arc::new(Hits::default());
    let upstream = Acceptor::start(Arc::clone(&hits), serve);
    let config = json!({
        "version": 1,
        "revision": "hostile-bytes",
        "tenant": {
            "trust_header_without_jwt": true,
            "jwt": {"required": false, "issuers": [{"iss": "https://idp.example", "audiences": ["api"],
                "jwks": {"keys": [{"kty": "oct", "kid": "hs", "alg": "HS256", "k": HS_KEY}]}}]}
        },
        // Room for every test key without bucket collisions deciding anything.
        "store": {"idempotency_buckets": 65536},
        "if_match": [{"prefix": "/orders"}],
        "defaults": {"idempotency": {"required": false, "methods": ["POST"]}},
        "tenants": {"acme": {}}
    });
    let envoy = Envoy::start_static(&config.to_string(), upstream.port());
    let reloads_before = reload_stats(&envoy);

    let mut tally = Tally::new();
    let mut h1 = RawH1::new(envoy.port());
    let mut h2 = RawH2::new(envoy.port());
    let altered_h1 = run_request_headers(envoy.port(), "h1", &mut tally);
    let altered_h2 = run_request_headers(envoy.port(), "h2", &mut tally);
    // Only a handful of control bytes may be rewritten by a codec.
    assert!(
        altered_h1 < 8 && altered_h2 < 8,
        "{altered_h1} / {altered_h2} altered"
    );
    let replayed_h1 = run_response_headers(&mut h1, "h1", &mut tally);
    let replayed_h2 = run_response_headers(&mut h2, "h2", &mut tally);

    let mut tried = 0;
    for ((protocol, target), (reached, refused)) in &tally {
        tried += reached + refused;
        eprintln!("{protocol:>12} {target:?}: {reached} bytes reached the filter, {refused} refused by Envoy");
        // Visible ASCII (94 bytes) and obs-text (128) always get through a value.
        if *target != Target::HeaderName {
            assert!(
                *reached >= 94,
                "{protocol} {target:?}: only {reached} bytes got through"
            );
        }
    }
    eprintln!(
        "{tried} requests; replayed with identical bytes: h1 {replayed_h1}, h2 {replayed_h2}"
    );
    assert!(replayed_h1 >= 94 && replayed_h2 >= 94);

    let log = envoy.log();
    assert!(
        !log.contains("panicked"),
        "the filter panicked:\n{}",
        envoy.log_tail(40)
    );
    assert_eq!(
        reload_stats(&envoy),
        reloads_before,
        "a VM was reloaded or created"
    );
}

/// `wasm.*vm_reload*` and V8 VM creations (absent counts as 0).
fn reload_stats(envoy: &Envoy) -> Vec<(String, u64)> {
    envoy
        .stats("^wasm\\.")
        .into_iter()
        .filter(|(name, _)| name.contains("vm_reload") || name.ends_with("runtime.v8.created"))
        .collect()
}

/// Two `Idempotency-Key` headers (issue row 7): 400 problem+json, nothing
/// reaches upstream, on HTTP/1 and HTTP/2; one key still works.
#[test]
fn duplicate_idempotency_keys_are_refused() {
    let hits = Arc::new(Hits::default());
    let upstream = Acceptor::start(Arc::clone(&hits), serve);
    let config = json!({
        "version": 1,
        "tenant": {"trust_header_without_jwt": true},
        "defaults": {"idempotency": {"required": false, "methods": ["POST"]}},
        "tenants": {"acme": {}}
    });
    let envoy = Envoy::start_static(&config.to_string(), upstream.port());
    for protocol in ["h1", "h2"] {
        let mut client = new_client(envoy.port(), protocol);
        for (first, second) in [("\"a\"", "\"b\""), ("\"same\"", "\"same\"")] {
            let request = Request {
                method: "POST",
                path: format!("/dup/{protocol}"),
                headers: vec![
                    (b"x-tenant-id".to_vec(), b"acme".to_vec()),
                    (b"idempotency-key".to_vec(), first.as_bytes().to_vec()),
                    (b"idempotency-key".to_vec(), second.as_bytes().to_vec()),
                ],
            };
            let before = hits.0.load(Ordering::SeqCst);
            let Outcome::Response(response) = client.send(&request, b"x") else {
                panic!("{protocol}: refused");
            };
            assert_eq!(response.status, 400, "{protocol}: {response:?}");
            assert_eq!(problem_type(&response), "idempotency-key-malformed");
            assert_eq!(response.header_all(CORRELATION).len(), 1);
            assert_eq!(
                hits.0.load(Ordering::SeqCst),
                before,
                "{protocol}: reached upstream"
            );
        }
        let single = Request {
            method: "POST",
            path: format!("/dup/{protocol}"),
            headers: vec![
                (b"x-tenant-id".to_vec(), b"acme".to_vec()),
                (
                    b"idempotency-key".to_vec(),
                    format!("\"one-{protocol}\"").into_bytes(),
                ),
            ],
        };
        let Outcome::Response(response) = client.send(&single, b"x") else {
            panic!("{protocol}: refused");
        };
        assert_eq!(response.status, 200, "{protocol}: {response:?}");
    }
    // The duplicates were counted in the whole map this config reads its
    // headers from (`reads_whole_request_map`), never the one-by-one fallback.
    let log = envoy.log();
    assert!(!log.contains("the request header map"), "{log}");
}
