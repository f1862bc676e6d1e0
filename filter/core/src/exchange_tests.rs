//! Whole exchanges driven through [`Exchange`] without any host: every event a
//! gateway would feed, store calls answered at once or late, streams reset
//! mid-way. The driver below is the glue's translation table in miniature.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use crate::config::{self, CompiledConfig};
use crate::engine::{HostInputs, LocalReply, Outcome, RequestView};
use crate::exchange::{Effect, Exchange, Holds, Next, Output};
use crate::idempotency::REPLAYED_HEADER;
use crate::problem::ProblemKind;
use crate::store::{MemoryStore, SharedStore};
use crate::store_ops::{self, StoreAnswer, StoreCall, StoreOp};

const SECOND: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * SECOND;

const CONFIG: &str = r#"{"version":1,"tenant":{"trust_header_without_jwt":true},
    "defaults":{"idempotency":{"ttl_seconds":60,"max_body_bytes":16,"in_flight_timeout_seconds":30}},
    "tenants":{"acme":{"rate_limit":{"requests":3,"per_seconds":3600}}}}"#;

fn config() -> CompiledConfig {
    config::parse(CONFIG.as_bytes()).unwrap()
}

fn host(now: u64) -> HostInputs {
    HostInputs {
        now_unix_ns: now,
        random: [7; 10],
    }
}

/// What a test's upstream answers.
struct Upstream {
    status: u16,
    body: &'static [u8],
}

const CREATED: Upstream = Upstream {
    status: 201,
    body: b"{\"id\":1}",
};

/// Drives one exchange; store calls are answered at once unless held.
struct Driver<'a> {
    config: &'a CompiledConfig,
    store: &'a MemoryStore,
    exchange: Exchange,
    effects: Vec<Effect>,
    request_body: Vec<u8>,
    response_chunk: Vec<u8>,
    /// Hold the next store call instead of answering it (a network store).
    hold: bool,
    held: Option<StoreCall>,
}

impl<'a> Driver<'a> {
    fn new(config: &'a CompiledConfig, store: &'a MemoryStore) -> Self {
        Driver {
            config,
            store,
            // As the glue does: what the host lets it hold.
            exchange: Exchange::holding(Holds::of(config, store.semantics())),
            effects: Vec::new(),
            request_body: Vec::new(),
            response_chunk: Vec::new(),
            hold: false,
            held: None,
        }
    }

    /// Carries out `output` like the glue does; the final continue/pause/held.
    fn drive(&mut self, mut output: Output, end_of_stream: bool) -> Next {
        loop {
            self.effects.append(&mut output.effects);
            output = match output.next {
                Next::Store(call) if self.hold => {
                    self.held = Some(call.clone());
                    return Next::Store(call);
                }
                Next::Store(call) => {
                    let answer = store_ops::execute_local(self.config, self.store, call.op);
                    self.exchange
                        .on_store_answer(self.config, call.token, answer, &host(T0))
                }
                Next::ReadRequestBody(size) => {
                    assert_eq!(size, self.request_body.len());
                    let body = self.request_body.clone();
                    self.exchange
                        .on_request_body_read(self.config, &body, &host(T0))
                }
                Next::ReadResponseHead => self.exchange.on_response_head_read(
                    self.config,
                    CREATED.status,
                    vec![("content-type".into(), b"application/json".to_vec())],
                    end_of_stream,
                    T0,
                ),
                Next::ReadResponseBody { from, to } => {
                    assert_eq!((from, to), (0, self.response_chunk.len()));
                    let chunk = self.response_chunk.clone();
                    self.exchange
                        .on_response_body_read(&chunk, end_of_stream, T0)
                }
                next @ (Next::Continue | Next::Pause) => return next,
            };
        }
    }

    fn headers(&mut self, method: &str, key: Option<&str>, end_of_stream: bool) -> Next {
        let request = RequestView {
            method: method.as_bytes(),
            path: b"/pay",
            tenant_header: Some(b"acme"),
            idempotency_key: key.map(str::as_bytes),
            ..RequestView::default()
        };
        let output =
            self.exchange
                .on_request_headers(self.config, &request, end_of_stream, &host(T0));
        self.drive(output, end_of_stream)
    }

    /// The whole body in one chunk, then its end.
    fn body(&mut self, body: &[u8]) -> Next {
        self.request_body = body.to_vec();
        let output = self.exchange.on_request_body(self.config, body.len(), true);
        self.drive(output, true)
    }

    /// Upstream's answer: head, then the body in one chunk.
    fn respond(&mut self, upstream: &Upstream) -> Next {
        let output = self.exchange.on_response_headers();
        assert_eq!(self.drive(output, false), Next::Continue);
        self.response_chunk = upstream.body.to_vec();
        let output = self
            .exchange
            .on_response_body(upstream.body.len(), true, T0);
        self.drive(output, true)
    }

    fn end(&mut self) -> Next {
        let output = self.exchange.on_stream_end();
        self.drive(output, true)
    }

    /// Answers the held store call now.
    fn answer_held(&mut self) -> Next {
        self.hold = false;
        let call = self.held.take().expect("a held store call");
        let answer = store_ops::execute_local(self.config, self.store, call.op);
        let output = self
            .exchange
            .on_store_answer(self.config, call.token, answer, &host(T0));
        self.drive(output, true)
    }

    fn reply(&self) -> Option<&LocalReply> {
        self.effects.iter().find_map(|effect| match effect {
            Effect::Reply(reply) => Some(reply),
            _ => None,
        })
    }

    fn counted(&self) -> Vec<Outcome> {
        self.effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Count(outcome) => Some(*outcome),
                _ => None,
            })
            .collect()
    }
}

fn status(driver: &Driver<'_>) -> Option<u32> {
    driver.reply().map(|reply| reply.status)
}

/// One whole idempotent POST with a body that reaches upstream.
fn executed(config: &CompiledConfig, store: &MemoryStore, key: &str, body: &[u8]) {
    let mut first = Driver::new(config, store);
    assert_eq!(first.headers("POST", Some(key), false), Next::Continue);
    assert_eq!(first.body(body), Next::Continue);
    assert_eq!(first.respond(&CREATED), Next::Continue);
    assert_eq!(first.end(), Next::Continue);
    assert_eq!(status(&first), None, "{:?}", first.effects);
}

#[test]
fn a_retry_replays_the_recorded_response_without_reaching_upstream() {
    let (config, store) = (config(), MemoryStore::new());
    executed(&config, &store, "\"k1\"", b"{\"a\":1}");

    let mut retry = Driver::new(&config, &store);
    assert_eq!(retry.headers("POST", Some("\"k1\""), false), Next::Continue);
    assert_eq!(retry.body(b"{\"a\":1}"), Next::Pause);
    let reply = retry.reply().expect("replayed locally");
    assert_eq!(reply.status, 201);
    assert_eq!(reply.body, CREATED.body);
    assert!(reply
        .headers
        .iter()
        .any(|(name, value)| name == REPLAYED_HEADER && value == "true"));
    assert_eq!(retry.counted(), vec![Outcome::Allowed, Outcome::Replayed]);

    let mut other_body = Driver::new(&config, &store);
    other_body.headers("POST", Some("\"k1\""), false);
    other_body.body(b"{\"a\":2}");
    assert_eq!(status(&other_body), Some(422));
}

#[test]
fn a_duplicate_while_the_first_is_in_flight_gets_409_from_the_headers() {
    let (config, store) = (config(), MemoryStore::new());
    let mut first = Driver::new(&config, &store);
    assert_eq!(first.headers("POST", Some("\"k2\""), true), Next::Continue);
    let mut second = Driver::new(&config, &store);
    assert_eq!(second.headers("POST", Some("\"k2\""), true), Next::Pause);
    assert_eq!(status(&second), Some(409));
    // The reply's headers are set again on the response, never duplicated.
    let output = second.exchange.on_response_headers();
    assert!(output.effects.iter().all(
        |effect| !matches!(effect, Effect::SetResponseHeader(name, _) if name == "content-type")
    ));
}

#[test]
fn a_reset_stream_gives_its_key_back() {
    let (config, store) = (config(), MemoryStore::new());
    let mut reset = Driver::new(&config, &store);
    assert_eq!(reset.headers("POST", Some("\"k3\""), true), Next::Continue);
    assert_eq!(reset.end(), Next::Continue);
    // Nothing is left claimed: the retry executes.
    let mut retry = Driver::new(&config, &store);
    assert_eq!(retry.headers("POST", Some("\"k3\""), true), Next::Continue);
    assert_eq!(status(&retry), None);
}

#[test]
fn an_upstream_failure_releases_the_key_instead_of_recording_it() {
    let (config, store) = (config(), MemoryStore::new());
    let mut failed = Driver::new(&config, &store);
    failed.headers("POST", Some("\"k4\""), true);
    let output = failed.exchange.on_response_headers();
    assert_eq!(output.next, Next::ReadResponseHead);
    failed.effects.extend(output.effects);
    let output = failed
        .exchange
        .on_response_head_read(&config, 503, Vec::new(), false, T0);
    assert_eq!(failed.drive(output, false), Next::Continue);
    // Settled at the head: the body and the end change nothing.
    let output = failed.exchange.on_response_body(4, true, T0);
    assert_eq!(output.next, Next::Continue);
    assert_eq!(failed.end(), Next::Continue);
    let mut retry = Driver::new(&config, &store);
    assert_eq!(retry.headers("POST", Some("\"k4\""), true), Next::Continue);
    assert_eq!(status(&retry), None);
}

#[test]
fn a_body_over_the_limit_releases_the_claim_and_answers_413() {
    let (config, store) = (config(), MemoryStore::new());
    let mut large = Driver::new(&config, &store);
    assert_eq!(large.headers("POST", Some("\"k5\""), false), Next::Continue);
    assert_eq!(large.body(&[b'x'; 17]), Next::Pause);
    assert_eq!(status(&large), Some(413));
    assert!(large
        .counted()
        .contains(&Outcome::Rejected(ProblemKind::BodyTooLarge)));
    let mut retry = Driver::new(&config, &store);
    assert_eq!(retry.headers("POST", Some("\"k5\""), true), Next::Continue);
    assert_eq!(status(&retry), None);
}

#[test]
fn a_claim_answered_after_the_stream_ended_is_given_back() {
    let (config, store) = (config(), MemoryStore::new());
    let mut late = Driver::new(&config, &store);
    late.hold = true;
    // The rate-limit check is the first store call; answer it, hold the claim.
    assert!(matches!(
        late.headers("POST", Some("\"k6\""), true),
        Next::Store(StoreCall {
            op: StoreOp::Admit { .. },
            ..
        })
    ));
    late.hold = true;
    let output = {
        let call = late.held.take().unwrap();
        let answer = store_ops::execute_local(&config, &store, call.op);
        late.exchange
            .on_store_answer(&config, call.token, answer, &host(T0))
    };
    assert!(matches!(
        late.drive(output, true),
        Next::Store(StoreCall {
            op: StoreOp::Claim { .. },
            ..
        })
    ));
    assert!(late.exchange.is_waiting());
    // The client goes away while the claim is on the wire …
    assert_eq!(late.end(), Next::Continue);
    // … then the claim lands: it was won, and must go straight back.
    let held = late.held.take().unwrap();
    let answer = store_ops::execute_local(&config, &store, held.op);
    assert!(matches!(answer, StoreAnswer::Claim(Ok(_))));
    let output = late
        .exchange
        .on_store_answer(&config, held.token, answer, &host(T0));
    assert!(matches!(
        output.next,
        Next::Store(StoreCall {
            op: StoreOp::Release { .. },
            ..
        })
    ));
    late.hold = false;
    assert_eq!(late.drive(output, true), Next::Continue);
    assert_eq!(status(&late), None, "nothing is sent to a gone client");

    let mut retry = Driver::new(&config, &store);
    assert_eq!(retry.headers("POST", Some("\"k6\""), true), Next::Continue);
    assert_eq!(status(&retry), None);
}

#[test]
fn a_late_rate_limit_answer_decides_and_a_stale_one_is_ignored() {
    let (config, store) = (config(), MemoryStore::new());
    for _ in 0..3 {
        let mut allowed = Driver::new(&config, &store);
        assert_eq!(allowed.headers("GET", None, true), Next::Continue);
    }
    let mut limited = Driver::new(&config, &store);
    limited.hold = true;
    assert!(matches!(limited.headers("GET", None, true), Next::Store(_)));
    let held = limited.held.clone().unwrap();
    // An answer carrying another token is not the one the exchange waits for.
    let stale = limited.exchange.on_store_answer(
        &config,
        held.token.wrapping_add(7),
        StoreAnswer::Update(Ok(true)),
        &host(T0),
    );
    assert_eq!(stale.next, Next::Continue);
    assert!(stale.effects.is_empty());
    assert!(limited.exchange.is_waiting());
    // Body events wait for the answer instead of slipping past the decision.
    let early_body = limited.exchange.on_request_body(&config, 3, false);
    assert_eq!(early_body.next, Next::Pause);
    assert_eq!(limited.answer_held(), Next::Pause);
    assert_eq!(status(&limited), Some(429));
    assert_eq!(
        limited.counted(),
        vec![Outcome::Rejected(ProblemKind::RateLimited)]
    );
}

#[test]
fn a_failed_store_answers_503_for_the_idempotent_request() {
    let (config, store) = (config(), MemoryStore::new());
    let mut unavailable = Driver::new(&config, &store);
    unavailable.hold = true;
    assert!(matches!(
        unavailable.headers("POST", Some("\"k7\""), true),
        Next::Store(_)
    ));
    // Admit at once, then the claim's answer is a store failure.
    let call = unavailable.held.take().unwrap();
    let answer = store_ops::execute_local(&config, &store, call.op);
    let output = unavailable
        .exchange
        .on_store_answer(&config, call.token, answer, &host(T0));
    let Next::Store(claim) = output.next.clone() else {
        panic!("expected the claim, got {output:?}");
    };
    unavailable.effects.extend(output.effects);
    let output = unavailable.exchange.on_store_answer(
        &config,
        claim.token,
        StoreAnswer::Claim(Err(crate::idempotency::IdempotencyError::Store(
            crate::store::StoreError("connection refused".into()),
        ))),
        &host(T0),
    );
    unavailable.hold = false;
    assert_eq!(unavailable.drive(output, true), Next::Pause);
    let reply = unavailable.reply().expect("a local reply");
    assert_eq!(reply.status, 503);
    assert!(reply
        .headers
        .iter()
        .any(|(name, value)| name == "retry-after" && value == "1"));
}

/// [`CONFIG`] on a host that delivers the body while the headers are held.
fn holding_config() -> CompiledConfig {
    let text = CONFIG
        .replacen(
            r#"{"version":1,"#,
            r#"{"version":1,"host":{"allow_on_headers_stop_iteration":true},"#,
            1,
        )
        .replacen(r#""requests":3"#, r#""requests":100"#, 1);
    config::parse(text.as_bytes()).unwrap()
}

#[test]
fn with_held_headers_replays_and_422s_are_decided_before_anything_goes_upstream() {
    let (config, store) = (holding_config(), MemoryStore::new());
    // The first POST: the headers wait for the body, then both go on together.
    let mut first = Driver::new(&config, &store);
    assert_eq!(first.headers("POST", Some("\"h1\""), false), Next::Pause);
    assert_eq!(first.body(b"{\"a\":1}"), Next::Continue);
    assert_eq!(first.respond(&CREATED), Next::Continue);
    assert_eq!(first.end(), Next::Continue);
    // Its retry and a different body: answered while the headers are still held.
    for (body, expected) in [(&b"{\"a\":1}"[..], 201), (&b"{\"a\":2}"[..], 422)] {
        let mut retry = Driver::new(&config, &store);
        assert_eq!(retry.headers("POST", Some("\"h1\""), false), Next::Pause);
        assert_eq!(retry.body(body), Next::Pause);
        assert_eq!(status(&retry), Some(expected));
    }
    // A body over the limit: 413, and the key was never claimed.
    let mut large = Driver::new(&config, &store);
    assert_eq!(large.headers("POST", Some("\"h2\""), false), Next::Pause);
    let output = large.exchange.on_request_body(&config, 17, false);
    assert_eq!(large.drive(output, false), Next::Pause);
    assert_eq!(status(&large), Some(413));
    let mut after = Driver::new(&config, &store);
    assert_eq!(after.headers("POST", Some("\"h2\""), false), Next::Pause);
    assert_eq!(after.body(b"{}"), Next::Continue);
}

#[test]
fn a_body_that_arrives_while_a_store_call_is_out_is_read_when_it_is_answered() {
    let (config, store) = (holding_config(), MemoryStore::new());
    let mut request = Driver::new(&config, &store);
    // The rate-limit call of the headers is out (a store behind the network)…
    request.hold = true;
    assert!(matches!(
        request.headers("POST", Some("\"h3\""), false),
        Next::Store(_)
    ));
    // …while the host already delivered the whole body: held, not lost.
    request.request_body = b"{\"a\":3}".to_vec();
    let output = request.exchange.on_request_body(&config, 7, true);
    assert_eq!(request.drive(output, true), Next::Pause);
    // The answer reads it, claims with it and lets the request go on.
    assert_eq!(request.answer_held(), Next::Continue);
    assert!(request
        .effects
        .iter()
        .all(|effect| !matches!(effect, Effect::Reply(_))));
    // A retry with the same body replays.
    executed_replays(&config, &store, "\"h3\"", b"{\"a\":3}", &mut request);

    // A held body over the limit is refused when the answer comes (413).
    let mut large = Driver::new(&config, &store);
    large.hold = true;
    assert!(matches!(
        large.headers("POST", Some("\"h4\""), false),
        Next::Store(_)
    ));
    let output = large.exchange.on_request_body(&config, 17, true);
    assert_eq!(large.drive(output, true), Next::Pause);
    assert_eq!(large.answer_held(), Next::Pause);
    assert_eq!(status(&large), Some(413));
}

/// Finishes `first` (upstream answers 201), then a retry of `key` with
/// `body` is replayed on the held headers.
fn executed_replays(
    config: &CompiledConfig,
    store: &MemoryStore,
    key: &str,
    body: &[u8],
    first: &mut Driver<'_>,
) {
    assert_eq!(first.respond(&CREATED), Next::Continue);
    assert_eq!(first.end(), Next::Continue);
    let mut retry = Driver::new(config, store);
    assert_eq!(retry.headers("POST", Some(key), false), Next::Pause);
    assert_eq!(retry.body(body), Next::Pause);
    assert_eq!(status(&retry), Some(201));
}

#[test]
fn a_held_response_waits_for_its_record_and_is_read_once() {
    let (config, store) = (config(), MemoryStore::new());
    let mut request = Driver::new(&config, &store);
    request.exchange = Exchange::holding(Holds {
        request_headers: false,
        response: true,
    });
    assert_eq!(
        request.headers("POST", Some("\"r1\""), true),
        Next::Continue
    );
    let output = request.exchange.on_response_headers();
    assert_eq!(request.drive(output, false), Next::Continue);
    // The host keeps what the filter holds: the second callback sees both chunks.
    let output = request.exchange.on_response_body(3, false, T0);
    assert_eq!(output.next, Next::ReadResponseBody { from: 0, to: 3 });
    let output = request.exchange.on_response_body_read(b"{\"i", false, T0);
    assert_eq!(output.next, Next::Pause, "held until the record is stored");
    let output = request.exchange.on_response_body(8, true, T0);
    assert_eq!(output.next, Next::ReadResponseBody { from: 3, to: 8 });
    let output = request.exchange.on_response_body_read(b"d\":1}", true, T0);
    let Next::Store(call) = output.next else {
        panic!("the record is stored before the response goes on: {output:?}");
    };
    let answer = store_ops::execute_local(&config, &store, call.op);
    let output = request
        .exchange
        .on_store_answer(&config, call.token, answer, &host(T0));
    assert_eq!(output.next, Next::Continue);
    // The stored body is the whole body, once.
    let mut retry = Driver::new(&config, &store);
    assert_eq!(retry.headers("POST", Some("\"r1\""), true), Next::Pause);
    assert_eq!(
        retry.reply().map(|reply| reply.body.clone()),
        Some(b"{\"id\":1}".to_vec())
    );
}
