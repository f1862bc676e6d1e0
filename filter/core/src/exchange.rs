//! One request's whole life as a sans-IO state machine.
//!
//! The glue feeds [`Exchange`] the host's events (request headers, body,
//! response headers, body, trailers, stream end) and the answers to the store
//! calls it asked for; each returns an [`Output`]: [`Effect`]s to carry out now
//! and one [`Next`] step: continue, pause, read something the exchange asked
//! for, or carry out a store call. A store call can be answered before the
//! glue returns to the host (shared data) or in a later callback (a store
//! behind the network): the exchange does not know and does not care; until
//! the answer arrives the stream waits, and an answer that arrives after the
//! stream ended still settles what it must (a claim won by a reset stream is
//! given back).
//!
//! ```text
//! headers ─► screen ─► [Admit] ─► admit ─► forward ──────────────────────────► Continue
//!               │                    │        └─ idempotent ─► [Claim] ─► Proceed / AwaitBody
//!               └─ reject ◄──────────┘                            └─► replay / 409 / 422 / 503 ─► Reply
//! body (idempotent, to the end) ─► ReadRequestBody ─► [Seal] (claimed) or [Claim] (the body decides)
//! response head ─► [Debit] (usage its upstream reported) ─► (claimed) ReadResponseHead ─► capture
//!               ─► ReadResponseBody … ─► [Complete] / [Release]
//! stream end before the response ─► [Release]; holding in-flight slots ─► Leave
//! ```

use crate::config::CompiledConfig;
use crate::engine::{
    self, Decision, Evaluation, Headers, HostInputs, IdempotencyStep, LocalReply, Outcome,
    PendingIdempotency, ReplyContext, RequestView, ResponseCapture, Screened, Spent,
};
use crate::idempotency::{Begin, Claim};
use crate::limits::{Admitted, Debit, Departure, Entered, Reported};
use crate::problem::ProblemKind;
use crate::store_ops::{StoreAnswer, StoreCall, StoreOp, Token};

/// What the host lets an exchange hold back (the glue knows the host).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holds {
    /// An idempotent request's headers while its body is read (Envoy with
    /// `allow_on_headers_stop_iteration`; ngx_wasm_module would withhold
    /// the body instead, and reads it before proxying anyway).
    pub request_headers: bool,
    /// A captured response (up to the replay limit) until its record is
    /// stored: a store that answers in a later callback, on a host that can
    /// pause response phases (Envoy), so the client cannot retry before a
    /// replay is possible.
    pub response: bool,
}

impl Holds {
    /// What `config` asks for, on a host with `semantics`.
    pub fn of(config: &CompiledConfig, semantics: crate::store::HostSemantics) -> Self {
        let envoy = semantics == crate::store::HostSemantics::Envoy;
        Self {
            request_headers: envoy && config.host.allow_on_headers_stop_iteration,
            response: envoy && config.store.cluster.is_some(),
        }
    }
}

/// How loud a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

/// Something the glue does right away, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Set (replacing any incoming value) on the request sent upstream.
    SetRequestHeader(String, String),
    RemoveRequestHeader(String),
    /// Set (replacing, never appending) on the response to the client.
    SetResponseHeader(String, String),
    /// Answer the client locally; the request goes no further.
    Reply(LocalReply),
    Count(Outcome),
    Log(LogLevel, String),
    /// Remove from the response to the client (a usage header the upstream set).
    RemoveResponseHeader(String),
    /// Give back the in-flight slots the request held (on this gateway's shared data).
    Leave(Departure),
    /// Usage headers that were malformed or over their maximum: counted.
    UsageIgnored(u8),
    /// A configured tenant's use of one of its calendar quotas (a gauge).
    QuotaUsed(crate::engine::QuotaUse),
}

/// What the exchange waits for after the effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Let the stream go on.
    Continue,
    /// Hold the stream (buffering a body, or after a local reply).
    Pause,
    /// Carry out this call and hand its answer to [`Exchange::on_store_answer`],
    /// now or in a later callback; the stream waits until then.
    Store(StoreCall),
    /// Read the request body buffered so far (this many bytes) and hand it to
    /// [`Exchange::on_request_body_read`].
    ReadRequestBody(usize),
    /// Read the response status and headers and hand them to
    /// [`Exchange::on_response_head_read`].
    ReadResponseHead,
    /// Read bytes `from..to` of the response body the host holds and hand
    /// them to [`Exchange::on_response_body_read`] (`from` is 0 unless the
    /// exchange holds the response: then the host keeps what came before).
    ReadResponseBody { from: usize, to: usize },
}

/// The answer to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub effects: Vec<Effect>,
    pub next: Next,
}

impl Output {
    fn then(effects: Vec<Effect>, next: Next) -> Self {
        Output { effects, next }
    }

    fn proceed() -> Self {
        Output::then(Vec::new(), Next::Continue)
    }
}

/// The store call an exchange waits for, and what its answer is for.
#[derive(Debug, Clone, PartialEq, Eq)]
// One per request, inside the host's boxed context: boxing would add an allocation, not save one.
#[allow(clippy::large_enum_variant)]
enum Waiting {
    /// The rate-limit check of the request headers.
    Admit {
        screened: Screened,
        end_of_stream: bool,
        /// Method and path, kept for the claim of an idempotent request.
        request_line: Option<(Vec<u8>, Vec<u8>)>,
    },
    /// The claim of the key; `body_known` when it carried the body.
    Claim {
        body_known: bool,
    },
    Seal,
    /// Complete (or release after an upstream failure).
    Record,
    /// Release of a claim whose request body was too large, then the 413.
    ReleaseThenReply(LocalReply),
    /// Release after the stream ended.
    Release,
    /// Usage taken from the limits, then the response goes on.
    Debit,
}

/// Where an idempotent request is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Idempotent {
    pending: PendingIdempotency,
    context: ReplyContext,
    method: Vec<u8>,
    path: Vec<u8>,
    claim: Option<Claim>,
    /// The request body is being buffered: to seal the claim's fingerprint, or
    /// (no claim) to decide between replay and 422.
    reading_body: bool,
    capture: Option<ResponseCapture>,
    /// Recorded or released: nothing left to do at the end of the stream.
    settled: bool,
}

/// One HTTP request/response exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exchange {
    /// Set on the response, local replies included (replace, so never duplicated).
    response_headers: Headers,
    idempotent: Option<Idempotent>,
    waiting: Option<(Token, Waiting)>,
    last_token: Token,
    /// The stream ended (reset, timeout, done) while a store call was out.
    ended: bool,
    /// The tenant the request concerns, once decided (what `Effect::Count` counts under).
    tenant: Option<String>,
    /// Request body that arrived while a store call was out: its size so far
    /// and whether it is complete (a host that delivers the body while the
    /// headers are held: Envoy with `allow_on_headers_stop_iteration`).
    held_body: Option<(usize, bool)>,
    /// What the host lets this exchange hold.
    holds: Holds,
    /// Bytes of a held response body read so far.
    response_read: usize,
    /// In-flight slots to give back at the end, usage to take from the response.
    spent: Option<Box<Spent>>,
}

impl Exchange {
    pub fn new() -> Self {
        Self::default()
    }

    /// An exchange on a host that lets it hold what `holds` says.
    pub fn holding(holds: Holds) -> Self {
        Self {
            holds,
            ..Self::default()
        }
    }

    /// The tenant the request concerns, once the headers are decided.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// A store call is out and its answer has not arrived.
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// Request headers: decide the request.
    pub fn on_request_headers(
        &mut self,
        config: &CompiledConfig,
        request: &RequestView<'_>,
        end_of_stream: bool,
        host: &HostInputs,
    ) -> Output {
        let screened = match engine::screen(config, request, host) {
            Ok(screened) => screened,
            Err(rejected) => return self.decided(config, *rejected, end_of_stream, None, host),
        };
        // The method every rule saw (an honoured override included).
        let request_line = screened
            .is_idempotent()
            .then(|| (screened.method(request).to_vec(), request.path.to_vec()));
        match screened.rate_limit_op(config, host.now_unix_ns) {
            Some(op) => self.call(
                Vec::new(),
                Waiting::Admit {
                    screened,
                    end_of_stream,
                    request_line,
                },
                op,
            ),
            None => {
                let evaluation = engine::admit(config, screened, None);
                self.decided(config, evaluation, end_of_stream, request_line, host)
            }
        }
    }

    /// A request body chunk arrived; `body_size` is everything buffered so far.
    pub fn on_request_body(
        &mut self,
        config: &CompiledConfig,
        body_size: usize,
        end_of_stream: bool,
    ) -> Output {
        if self.waiting.is_some() {
            // The headers' store call is still out: hold the body until it is answered.
            self.held_body = Some((body_size, end_of_stream));
            return Output::then(Vec::new(), Next::Pause);
        }
        self.held_body = None;
        let Some(state) = self.idempotent.as_mut() else {
            return Output::proceed();
        };
        if !state.reading_body || state.settled {
            return Output::proceed();
        }
        let limit = usize::try_from(state.pending.settings.max_body_bytes).unwrap_or(usize::MAX);
        if body_size > limit {
            state.settled = true;
            let reply = engine::body_too_large(config, &state.pending, &state.context);
            return match state.claim {
                Some(claim) => self.call(
                    Vec::new(),
                    Waiting::ReleaseThenReply(reply),
                    StoreOp::Release { claim },
                ),
                None => self.reply(vec![Effect::Count(too_large())], reply),
            };
        }
        if !end_of_stream {
            // Buffer (bounded above) until the body is complete.
            return Output::then(Vec::new(), Next::Pause);
        }
        Output::then(Vec::new(), Next::ReadRequestBody(body_size))
    }

    /// The complete request body, as asked for by [`Next::ReadRequestBody`].
    pub fn on_request_body_read(
        &mut self,
        config: &CompiledConfig,
        body: &[u8],
        host: &HostInputs,
    ) -> Output {
        let Some(state) = self.idempotent.as_mut() else {
            return Output::proceed();
        };
        state.reading_body = false;
        match state.claim {
            Some(claim) => self.call(Vec::new(), Waiting::Seal, engine::seal_op(&claim, body)),
            None => self.claim(config, Some(body), host, Vec::new()),
        }
    }

    /// Response headers, with the usage headers the upstream set (parsed by
    /// the glue from [`CompiledConfig::usage_headers`]): they are removed,
    /// what they report is taken from the request's limits, then as
    /// [`Exchange::on_response_headers`].
    pub fn on_response_headers_reporting(
        &mut self,
        config: &CompiledConfig,
        reported: &Reported,
        now_unix_ns: u64,
    ) -> Output {
        if reported.is_empty() {
            return self.on_response_headers();
        }
        let mut effects: Vec<Effect> = config
            .usage_headers
            .iter()
            .enumerate()
            .filter(|(index, _)| reported.present & (1u8 << index) != 0)
            .map(|(_, name)| Effect::RemoveResponseHeader(name.clone()))
            .collect();
        let debit = self
            .spent
            .as_ref()
            .filter(|spent| spent.reports_usage)
            .map(|spent| Debit {
                tenant: spent.admission.tenant.clone(),
                applied: spent.admission.applied,
                keys: spent.admission.keys,
                reported: *reported,
                now_unix_ns,
            });
        let over_max = debit.as_ref().is_some_and(|debit| debit.over_max(config));
        let ignored = reported.malformed.saturating_add(u8::from(over_max));
        if ignored > 0 {
            effects.push(Effect::UsageIgnored(ignored));
            if config.note_usage_ignored() {
                effects.push(Effect::Log(
                    LogLevel::Warn,
                    format!(
                        "a usage header ({}) held no valid usage (a decimal integer up to the limit's `usage_max`, sent once): ignored and counted in tenant_guard_usage_ignored; logged once per configuration",
                        crate::headers::truncated(&config.usage_headers.join(", "), 200)
                    ),
                ));
            }
        }
        match debit {
            Some(debit) if debit.reported.values.iter().any(Option::is_some) => {
                self.call(effects, Waiting::Debit, StoreOp::Debit(Box::new(debit)))
            }
            _ => {
                let mut output = self.on_response_headers();
                effects.append(&mut output.effects);
                Output::then(effects, output.next)
            }
        }
    }

    /// Response headers: the headers the decision set, and the capture of a claimed request.
    pub fn on_response_headers(&mut self) -> Output {
        let effects = self
            .response_headers
            .iter()
            .map(|(name, value)| Effect::SetResponseHeader(name.clone(), value.clone()))
            .collect();
        let captures = self.idempotent.as_ref().is_some_and(|state| {
            state.claim.is_some() && !state.settled && state.capture.is_none()
        });
        let next = if captures {
            Next::ReadResponseHead
        } else {
            Next::Continue
        };
        Output::then(effects, next)
    }

    /// Upstream's status and raw headers, as asked for by [`Next::ReadResponseHead`].
    pub fn on_response_head_read(
        &mut self,
        config: &CompiledConfig,
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        end_of_stream: bool,
        now_unix_ns: u64,
    ) -> Output {
        let Some(state) = self.idempotent.as_mut() else {
            return Output::proceed();
        };
        let capture = ResponseCapture::new(config, &state.pending, status, headers);
        let failed = capture.is_failure();
        state.capture = Some(capture);
        if failed || end_of_stream {
            return self.finish(now_unix_ns);
        }
        Output::proceed()
    }

    /// A response body chunk of `body_size` bytes arrived.
    pub fn on_response_body(
        &mut self,
        body_size: usize,
        end_of_stream: bool,
        now_unix_ns: u64,
    ) -> Output {
        let Some(capture) = self
            .idempotent
            .as_ref()
            .and_then(|state| state.capture.as_ref())
        else {
            return Output::proceed();
        };
        if capture.wants_body() {
            let from = if self.holds.response {
                self.response_read.min(body_size)
            } else {
                0
            };
            return Output::then(
                Vec::new(),
                Next::ReadResponseBody {
                    from,
                    to: body_size,
                },
            );
        }
        if end_of_stream {
            return self.finish(now_unix_ns);
        }
        Output::proceed()
    }

    /// The chunk asked for by [`Next::ReadResponseBody`].
    pub fn on_response_body_read(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        now_unix_ns: u64,
    ) -> Output {
        self.response_read = self.response_read.saturating_add(chunk.len());
        let mut still_capturing = false;
        if let Some(capture) = self
            .idempotent
            .as_mut()
            .and_then(|state| state.capture.as_mut())
        {
            capture.push_body(chunk);
            still_capturing = capture.wants_body();
        }
        if end_of_stream {
            return self.finish(now_unix_ns);
        }
        if self.holds.response && still_capturing {
            // Keep the body with the host until the record is stored.
            return Output::then(Vec::new(), Next::Pause);
        }
        Output::proceed()
    }

    /// Response trailers: the body is complete.
    pub fn on_response_trailers(&mut self, now_unix_ns: u64) -> Output {
        self.finish(now_unix_ns)
    }

    /// The stream is over: completed, reset or timed out. A key still
    /// claimed goes back, and so do the in-flight slots the request held.
    pub fn on_stream_end(&mut self) -> Output {
        self.ended = true;
        let effects: Vec<Effect> = self
            .spent
            .as_mut()
            .filter(|spent| spent.entered)
            .map(|spent| {
                spent.entered = false;
                Effect::Leave(spent.admission.departure())
            })
            .into_iter()
            .collect();
        if self.waiting.is_some() {
            // The answer decides what to give back.
            return Output::then(effects, Next::Continue);
        }
        let Some(state) = self.idempotent.as_mut() else {
            return Output::then(effects, Next::Continue);
        };
        if state.settled {
            return Output::then(effects, Next::Continue);
        }
        state.settled = true;
        match state.claim {
            Some(claim) => self.call(effects, Waiting::Release, StoreOp::Release { claim }),
            None => Output::then(effects, Next::Continue),
        }
    }

    /// The answer to the [`Next::Store`] call named `token`.
    pub fn on_store_answer(
        &mut self,
        config: &CompiledConfig,
        token: Token,
        answer: StoreAnswer,
        host: &HostInputs,
    ) -> Output {
        let Some((expected, waiting)) = self.waiting.take() else {
            return Output::proceed();
        };
        if expected != token {
            // Not the call this exchange waits for: keep waiting.
            self.waiting = Some((expected, waiting));
            return Output::proceed();
        }
        if self.ended {
            return self.answered_after_end(waiting, answer);
        }
        match waiting {
            Waiting::Admit {
                screened,
                end_of_stream,
                request_line,
            } => {
                let evaluation = engine::admit(config, screened, Some(answer.into_admit()));
                self.decided(config, evaluation, end_of_stream, request_line, host)
            }
            Waiting::Claim { body_known } => self.claim_answered(config, body_known, answer),
            Waiting::Seal => Output::then(logged(engine::sealed(answer)), Next::Continue),
            Waiting::Record => {
                let effects = match self.idempotent.as_ref() {
                    Some(state) => logged(engine::recorded(&state.pending, answer)),
                    None => Vec::new(),
                };
                Output::then(effects, Next::Continue)
            }
            Waiting::ReleaseThenReply(reply) => {
                let mut effects = logged(engine::released(answer));
                effects.push(Effect::Count(too_large()));
                self.reply(effects, reply)
            }
            Waiting::Release => Output::then(logged(engine::released(answer)), Next::Continue),
            Waiting::Debit => {
                let mut effects = match answer.into_debited() {
                    Ok(()) => Vec::new(),
                    Err(err) => vec![Effect::Log(
                        LogLevel::Warn,
                        format!("usage the upstream reported was not taken: {err}"),
                    )],
                };
                let mut output = self.on_response_headers();
                effects.append(&mut output.effects);
                Output::then(effects, output.next)
            }
        }
    }

    /// The stream is gone; settle what the answer left claimed.
    fn answered_after_end(&mut self, waiting: Waiting, answer: StoreAnswer) -> Output {
        // Admitted after the stream ended: its in-flight slots go back at once.
        let left = match (&waiting, &answer) {
            (
                Waiting::Admit { screened, .. },
                StoreAnswer::Admit(Ok(Admitted {
                    in_flight: Entered::Held,
                    ..
                })),
            ) => screened.departure(),
            _ => None,
        };
        let claim = match (&waiting, &answer) {
            (Waiting::Claim { .. }, StoreAnswer::Claim(Ok(Begin::Claimed(claim)))) => Some(*claim),
            // Sealed or not, the claimed request never got its response.
            (Waiting::Seal, _) => self.idempotent.as_ref().and_then(|state| state.claim),
            _ => None,
        };
        let effects = match waiting {
            Waiting::Seal => logged(engine::sealed(answer)),
            Waiting::Record => match self.idempotent.as_ref() {
                Some(state) => logged(engine::recorded(&state.pending, answer)),
                None => Vec::new(),
            },
            Waiting::Release | Waiting::ReleaseThenReply(_) => logged(engine::released(answer)),
            Waiting::Admit { .. } | Waiting::Claim { .. } | Waiting::Debit => Vec::new(),
        };
        let mut effects = effects;
        effects.extend(left.map(Effect::Leave));
        if let Some(state) = self.idempotent.as_mut() {
            state.settled = true;
        }
        match claim {
            Some(claim) => self.call(effects, Waiting::Release, StoreOp::Release { claim }),
            None => Output::then(effects, Next::Continue),
        }
    }

    /// Carries out a decision: headers for upstream, or a local reply.
    fn decided(
        &mut self,
        config: &CompiledConfig,
        evaluation: Evaluation,
        end_of_stream: bool,
        request_line: Option<(Vec<u8>, Vec<u8>)>,
        host: &HostInputs,
    ) -> Output {
        let mut effects = Vec::new();
        self.tenant = evaluation.tenant;
        if let Some(message) = evaluation.log {
            effects.push(Effect::Log(LogLevel::Warn, message));
        }
        effects.push(Effect::Count(evaluation.outcome));
        if evaluation.outcome == Outcome::ShadowOverLimit {
            effects.push(Effect::Log(
                LogLevel::Info,
                "shadow mode: request over the limit let through".to_owned(),
            ));
        }
        let mut forward = match evaluation.decision {
            Decision::Forward(forward) => forward,
            Decision::Reject(reply) => return self.reply(effects, reply),
        };
        self.spent = forward.spent.take();
        effects.extend(forward.quota_use.drain(..).map(Effect::QuotaUsed));
        effects.extend(
            forward
                .upstream_headers
                .drain(..)
                .map(|(name, value)| Effect::SetRequestHeader(name, value)),
        );
        effects.extend(
            forward
                .removed_upstream_headers
                .drain(..)
                .map(Effect::RemoveRequestHeader),
        );
        let (Some(pending), Some((method, path))) = (forward.idempotency.take(), request_line)
        else {
            self.response_headers = forward.response_headers;
            return Output::then(effects, Next::Continue);
        };
        self.idempotent = Some(Idempotent {
            pending,
            context: ReplyContext::of(&forward),
            method,
            path,
            claim: None,
            reading_body: false,
            capture: None,
            settled: false,
        });
        self.response_headers = forward.response_headers;
        if !end_of_stream && self.holds.request_headers {
            // The host delivers the body while the headers are held: decide
            // on the whole request before any of it goes upstream.
            if let Some(state) = self.idempotent.as_mut() {
                state.reading_body = true;
            }
            return self.read_held_body(config, effects);
        }
        let empty: &[u8] = &[];
        self.claim(config, end_of_stream.then_some(empty), host, effects)
    }

    /// Once a store call is answered and the body is needed: take a body
    /// that arrived meanwhile as if it arrived now (its size checked), or
    /// wait for it.
    fn read_held_body(&mut self, config: &CompiledConfig, mut effects: Vec<Effect>) -> Output {
        let Some((size, end_of_stream)) = self.held_body.take() else {
            return Output::then(effects, Next::Pause);
        };
        let mut output = self.on_request_body(config, size, end_of_stream);
        effects.append(&mut output.effects);
        Output::then(effects, output.next)
    }

    /// Claims the key; `body` is `None` while it is still to come.
    ///
    /// Request headers always continue when a body follows: proxy-wasm hosts
    /// turn a pause in request headers into "stop all iteration", which would
    /// withhold the body from this filter too. New keys are therefore claimed
    /// from the headers, so concurrent duplicates are refused before they
    /// reach upstream.
    fn claim(
        &mut self,
        config: &CompiledConfig,
        body: Option<&[u8]>,
        host: &HostInputs,
        effects: Vec<Effect>,
    ) -> Output {
        let Some(state) = self.idempotent.as_ref() else {
            return Output::then(effects, Next::Continue);
        };
        let request = RequestView {
            method: &state.method,
            path: &state.path,
            ..RequestView::default()
        };
        let op = engine::claim_op(config, &state.pending, &request, body, host);
        let body_known = body.is_some();
        self.call(effects, Waiting::Claim { body_known }, op)
    }

    fn claim_answered(
        &mut self,
        config: &CompiledConfig,
        body_known: bool,
        answer: StoreAnswer,
    ) -> Output {
        let Some(state) = self.idempotent.as_mut() else {
            return Output::proceed();
        };
        let step = engine::claim_answered(
            config,
            &state.pending,
            &state.context,
            body_known,
            answer.into_claim(),
        );
        match step {
            IdempotencyStep::Proceed(claim) => {
                state.claim = Some(claim);
                state.reading_body = !body_known;
                if self.held_body.is_some() && !body_known {
                    // Body came while the claim was out: seal it once complete.
                    return self.read_held_body(config, Vec::new());
                }
                Output::proceed()
            }
            IdempotencyStep::AwaitBody => {
                state.reading_body = true;
                if self.held_body.is_some() {
                    return self.read_held_body(config, Vec::new());
                }
                Output::proceed()
            }
            IdempotencyStep::Reply(reply, outcome) => {
                state.settled = true;
                self.reply(vec![Effect::Count(outcome)], reply)
            }
        }
    }

    /// Records (or, on upstream failure, releases) the claim, once.
    fn finish(&mut self, now_unix_ns: u64) -> Output {
        let Some(state) = self.idempotent.as_mut() else {
            return Output::proceed();
        };
        if state.settled {
            return Output::proceed();
        }
        let (Some(claim), Some(capture)) = (state.claim, state.capture.take()) else {
            return Output::proceed();
        };
        state.settled = true;
        let op = engine::finish_op(&state.pending, &claim, capture, now_unix_ns);
        self.call(Vec::new(), Waiting::Record, op)
    }

    fn reply(&mut self, mut effects: Vec<Effect>, reply: LocalReply) -> Output {
        // Kong runs response hooks on local replies: keep only what is safe to set twice.
        self.response_headers = reply
            .headers
            .iter()
            .filter(|(name, _)| name != "content-type" && name != "content-length")
            .cloned()
            .collect();
        effects.push(Effect::Reply(reply));
        Output::then(effects, Next::Pause)
    }

    fn call(&mut self, effects: Vec<Effect>, waiting: Waiting, op: StoreOp) -> Output {
        self.last_token = self.last_token.wrapping_add(1);
        let token = self.last_token;
        self.waiting = Some((token, waiting));
        Output::then(effects, Next::Store(StoreCall { token, op }))
    }
}

fn too_large() -> Outcome {
    Outcome::Rejected(ProblemKind::BodyTooLarge)
}

/// A failed record update is the operator's business, not the client's.
fn logged(result: Result<(), engine::IdempotencyFailure>) -> Vec<Effect> {
    match result {
        Ok(()) => Vec::new(),
        Err(failure) => vec![Effect::Log(LogLevel::Warn, failure.to_string())],
    }
}
