//! Where a request ends, whichever way it ends — refused at admission, answered, streamed to the
//! end, abandoned by its client, or failed — in exactly one function, [`Exchange::end`]. It
//! produces the request's [`Outcome`]: the ledger row with its cost and baseline priced by
//! [`Pricing::price`], the attempt rows, what is left to count where the upstream reported no
//! usage, and what the request held of its limits since admission. The calls the gateway makes
//! itself (shadow checks, eval) end here too ([`own`]), their rows built by the same parts.
//!
//! The finished request is handed to its consumers ([`consumers`]): first, on the request path,
//! each registered [`Consumer`] in turn — the limits' settlement, the shadow checks' sampling, the
//! cache fill — each taking what it needs without waiting; then the outcome goes on a queue to a
//! background task ([`dispatch`]) that counts what is left to count and hands outcomes in batches
//! to each [`Recorder`]: the ledger ([`ledger`]: database, spool), then the metrics. The request
//! path never waits on any of them except when that queue is full (backpressure).

pub mod consumers;
mod dispatch;
mod ledger;
mod own;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::cache::{Entry, Fill, Stored, Ticket};
use crate::config::{Route, Tier};
use crate::ledger::{Answer, AttemptRow, Priced, Pricing, Purpose, RequestRow, Tokens, Uncounted};
use crate::limits::{Hold, Used};
use crate::openai::ChoiceTexts;
use crate::openai::{Endpoint, Usage};
use crate::route::chain::{Attempt, Called, ServedBy, Unserved};
use crate::traces::{Finished, RequestTrace, StreamFacts};
use crate::upstream::UpstreamErrorKind;

pub use consumers::{CacheFill, Consumer, Metrics, Recorder, Sampling, Settlement};
pub use dispatch::Dispatcher;
pub use own::OwnCall;

/// How the ledger names a request whose client went away before its answer.
pub const CLIENT_CLOSED: &str = "client_closed";

/// How the ledger names a request still running when `server.shutdown_grace_ms` ran out (its
/// client had left, or is cut off with it): what it cost is unknown.
pub const CUT_AT_SHUTDOWN: &str = "cut_at_shutdown";

/// How the ledger names a request the gateway failed while serving (a bug: see its log).
pub const GATEWAY_FAILED: &str = "gateway_failed";

/// A finished request as everything downstream of the request path receives it.
#[derive(Debug)]
pub struct Outcome {
    pub request: RequestRow,
    /// Every attempt in order when the request was not answered at its first try; empty when it
    /// was, since then the request row says which call served it. That is nearly every request,
    /// and the attempt rows were a third of the ledger's cost per request (docs/benchmarks.md).
    pub attempts: Vec<AttemptRow>,
    /// A stream whose upstream reported no usage: its tokens are counted and priced in the
    /// background before the row is written; until then its tokens and cost are unknown.
    pub to_count: Option<ToCount>,
    /// How long the upstream calls of a whole (non-streamed) answer or a refusal took in all, so
    /// that the rest of its latency is the gateway's own; `None` for streams, whose upstream time
    /// runs on while the gateway relays.
    pub upstream_us: Option<i64>,
    /// What the request held of its limits, until [`Settlement`] settles it: at the request's end,
    /// or once its tokens are counted where they were left to count.
    pub hold: Hold,
}

#[derive(Debug)]
pub struct ToCount {
    uncounted: Uncounted,
    tier: Arc<Tier>,
    baseline: Option<Arc<Tier>>,
    /// Input counts the upstream gave exactly, which win over counting the request.
    prompt: Option<Usage>,
    /// The route's cache missed and the stream was whole: it fills once its tokens are counted,
    /// so that a hit records the counted (estimated) tokens and the cost it avoided.
    fill: Option<(Ticket, Stored)>,
    /// The prices of the config the request was served under: a reload between its start and its
    /// count must not price it at another config's prices, nor leave a tier it added unpriced.
    pricing: Arc<Pricing>,
}

impl Outcome {
    /// Counts and prices what was left to count, if anything. Not on an event loop: a long text
    /// takes milliseconds to count.
    pub fn count(&mut self) {
        let Some(to_count) = self.to_count.take() else {
            return;
        };
        let endpoint = to_count.uncounted.endpoint;
        let mut tokens = to_count.uncounted.count();
        if let Some(prompt) = to_count.prompt {
            let exact = Tokens::from(prompt);
            tokens.input = exact.input;
            tokens.cached = exact.cached;
            tokens.cache_write = exact.cache_write;
        }
        let priced = to_count
            .pricing
            .price(&to_count.tier, to_count.baseline.as_deref(), &tokens);
        set_tokens(&mut self.request, tokens, priced);
        if let Some((ticket, stored)) = to_count.fill
            && crate::cache::fillable(endpoint, &stored)
        {
            Fill::new(
                ticket,
                stored,
                crate::cache::Served::of(&self.request, tokens),
            )
            .keep();
        }
        if let Some(used) = self.used() {
            std::mem::take(&mut self.hold).settle(used);
        }
    }

    /// What the request used, once known: `None` while its tokens are left to count. A cache hit
    /// used nothing: no tokens of any upstream's capacity, no money; nor did a request whose
    /// client left while it waited for one.
    pub fn used(&self) -> Option<Used> {
        if self.to_count.is_some() {
            return None;
        }
        let row = &self.request;
        if matches!(row.purpose, Purpose::CacheHit | Purpose::CacheWait) {
            return Some(Used::default());
        }
        Some(Used {
            tokens: row.tokens_in.saturating_add(row.tokens_out),
            picodollars: row.cost_pusd.map_or(0, |cost| cost.0.max(0) as u64),
        })
    }
}

/// Where finished requests go to the ledger writer. Most wait for room in the bounded queue
/// (backpressure); a record that cannot wait — its request dropped by a client that left, or cut
/// off at the end of the shutdown grace, while the queue is full — goes on `late`, which the
/// writer drains with every batch and before it stops. It is unbounded, but only requests that
/// were in flight can land there, so it holds at most the connections the gateway admits.
pub struct Queue {
    pub sender: mpsc::Sender<Outcome>,
    pub late: mpsc::UnboundedSender<Outcome>,
}

thread_local! {
    /// This serving thread was stopped at the end of the shutdown grace: what is dropped on it now
    /// was cut off, not left by its client.
    static CUTTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this serving thread as cutting off what still runs on it (the grace has ended).
pub fn cutting_off_this_thread() {
    CUTTING.set(true);
}

/// Whether a request dropped on this thread now is being cut off at shutdown.
pub fn cut_off() -> bool {
    CUTTING.get()
}

/// The request path's handle: cheap to clone, never touches the database.
#[derive(Clone)]
pub struct Outcomes {
    /// The queue to the ledger and the metrics.
    sender: mpsc::Sender<Outcome>,
    /// Beside it, for a record that cannot wait for room in `sender` (see [`Queue`]).
    late: mpsc::UnboundedSender<Outcome>,
    pricing: Arc<Pricing>,
    store_content: bool,
    /// Who is handed each finished request before it is queued, in order.
    consumers: Arc<[Arc<dyn Consumer>]>,
}

impl Outcomes {
    /// Finished requests go to the limits' [`Settlement`], then to `sender`.
    pub fn new(queue: Queue, pricing: Arc<Pricing>, store_content: bool) -> Self {
        Outcomes {
            sender: queue.sender,
            late: queue.late,
            pricing,
            store_content,
            consumers: Arc::new([Arc::new(Settlement) as Arc<dyn Consumer>]),
        }
    }

    /// The same queue and consumers, pricing at `pricing` (a reloaded config's prices).
    pub fn with_pricing(self, pricing: Arc<Pricing>) -> Self {
        Outcomes { pricing, ..self }
    }

    /// Hands every finished request to `consumer` too, after those registered before it.
    pub fn with_consumer(self, consumer: Arc<dyn Consumer>) -> Self {
        let consumers: Vec<Arc<dyn Consumer>> = self
            .consumers
            .iter()
            .cloned()
            .chain(std::iter::once(consumer))
            .collect();
        Outcomes {
            consumers: consumers.into(),
            ..self
        }
    }

    /// Ends a call the gateway made itself ([`OwnCall`]: a shadow check's) where a request ends:
    /// its consumers, then the queue; waits while the queue is full, as a request would.
    pub async fn record(&self, outcome: Outcome) {
        Ended {
            outcome,
            sample: None,
            fill: None,
            // The gateway's own calls are not traced: no client asked for them.
            trace: None,
            outcomes: self.clone(),
        }
        .deliver()
        .await;
    }

    /// What is known of a request once routing has read it.
    pub fn begin(&self, start: Start) -> Exchange {
        Exchange {
            outcomes: self.clone(),
            ts_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            started: Instant::now(),
            start,
            client_left: false,
            called: Called::default(),
            ended: false,
        }
    }
}

/// A request as it starts: who asked, for what, and the body they sent.
pub struct Start {
    pub id: String,
    pub endpoint: Endpoint,
    pub stream: bool,
    /// The route the request's cost is attributed to.
    pub route: Option<Arc<Route>>,
    /// The client key's fingerprint, never the key.
    pub client_key: Option<String>,
    /// The client key's name (`keys.NAME`), never the key.
    pub key_name: Option<String>,
    /// The client's body: counted where the upstream reports no usage, stored with
    /// `ledger.store_content = true`.
    pub body: Bytes,
    /// Chosen for the route's shadow check: if it ends answered, its answer is compared.
    pub sampled: bool,
    /// What admission reserved for the request; settled when it ends, and counted in full if it
    /// never does (see [`crate::limits::Reservation`]).
    pub hold: Hold,
    /// The route's cache missed (or was not read, after `no-cache`): a whole answer fills it.
    pub cache: Option<Ticket>,
    /// What `x-tierwise-cache` says of the request (`hit`, `miss`, `bypass`), which its trace
    /// says too; `None` for a request refused before the cache was a question.
    pub cache_word: Option<&'static str>,
    /// Its trace, where traces are exported (`[telemetry]`).
    pub trace: Option<Box<RequestTrace>>,
}

/// An answered request chosen for a shadow check: what the client asked and what it was told.
#[derive(Debug)]
pub struct Sample {
    pub request_id: String,
    /// The endpoint the client called, which the check calls too.
    pub endpoint: Endpoint,
    pub route: Arc<Route>,
    /// The client's body, as it came.
    pub body: Bytes,
    pub served_by: Arc<Tier>,
    /// The route had demoted its primary when this request was served, so the primary was passed
    /// over: the sample checks it in reverse, whatever the route's state when the check runs.
    pub primary_demoted: bool,
    pub answer: SampledAnswer,
}

#[derive(Debug)]
pub enum SampledAnswer {
    /// A whole answer, as the client received it.
    Body(Bytes),
    /// A stream's text, assembled.
    Text(String),
}

/// How a request ended.
pub enum Ending<'a> {
    /// Admission answered it (a limit); no tier was called.
    Refused {
        status: u16,
        /// The short reason the ledger's `error_kind` keeps.
        reason: &'static str,
    },
    /// No tier answered, or the request was refused; `status` is what the client was told.
    Unserved { status: u16, failure: &'a Unserved },
    /// The route's cache answered; no tier was called.
    CacheHit { entry: &'a Entry },
    /// The client left while the request waited on an identical request's answer (the cache's
    /// single flight): no tier was called, nothing was answered or charged. It is recorded (499
    /// `client_closed`) apart from product traffic, so that it is neither a call of its route
    /// nor an error of it ([`Purpose::CacheWait`]).
    LeftWaiting,
    /// A whole answer.
    Answered {
        by: &'a ServedBy,
        tokens: Tokens,
        /// How the output contract judged the answer, where the route has one.
        contract: Option<&'static str>,
        answer: &'a Bytes,
    },
    /// A stream ended: to its end (200), broken midway (200 with the reason), or abandoned by its
    /// client (499).
    Streamed {
        by: &'a ServedBy,
        status: u16,
        error_kind: Option<String>,
        usage: Option<Usage>,
        /// Without `usage`: the input counts the upstream gave exactly, the output left to count.
        prompt: Option<Usage>,
        /// The answer's text as relayed, each choice's apart.
        text: ChoiceTexts,
        /// `text` holds all of it (not cut at `server.max_answer_bytes`).
        text_whole: bool,
        ttfb_us: i64,
        /// How the output contract judged the whole text, where the route has one.
        contract: Option<&'static str>,
        /// The upstream's events, for the cache, where the request holds a ticket and they fit.
        recorded: Option<Vec<Bytes>>,
        /// What the events said of the answer, where the request is traced.
        facts: Option<StreamFacts>,
    },
}

/// One request between its start and its end.
pub struct Exchange {
    outcomes: Outcomes,
    ts_ms: i64,
    started: Instant,
    start: Start,
    /// The client went away before its answer was ready.
    client_left: bool,
    called: Called,
    /// [`Exchange::end`] ran: dropped before it, the request was cut off (see `Drop`).
    ended: bool,
}

impl Exchange {
    /// The request arrived at `at` (and `wall`), before it was begun: the time it spent before
    /// (waiting on the answer of an identical request in flight) counts in its latency.
    pub fn arrived(&mut self, (at, wall): (Instant, SystemTime)) {
        self.started = at;
        self.ts_ms = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
    }

    /// What `tokens` cost on `tier` and on the route's baseline.
    pub fn price(&self, tier: &Tier, tokens: &Tokens) -> Priced {
        let baseline = self
            .start
            .route
            .as_ref()
            .and_then(|r| r.baseline.as_deref());
        self.outcomes.pricing.price(tier, baseline, tokens)
    }

    /// This request's tokens, for counting where `tier`'s upstream reported no usage.
    pub fn uncounted(&self, tier: &Tier, answer: Answer) -> Uncounted {
        Uncounted {
            endpoint: self.start.endpoint,
            model: tier.model.clone(),
            request: self.start.body.clone(),
            answer,
        }
    }

    /// The client stopped waiting (499 in nginx's words): the request still ends with whatever
    /// the upstream did and charged.
    pub fn client_left(&mut self) {
        self.client_left = true;
    }

    pub fn route_name(&self) -> Option<&str> {
        self.start.route.as_ref().map(|route| route.name.as_str())
    }

    /// The request id the client sees in `x-tierwise-request-id`.
    pub fn id(&self) -> &str {
        &self.start.id
    }

    pub fn elapsed_us(&self) -> i64 {
        self.started.elapsed().as_micros() as i64
    }

    /// Where the chain notes each tier it calls.
    pub fn called(&self) -> &Called {
        &self.called
    }

    /// The request's trace, where it is traced: the chain's calls are its spans.
    pub fn trace(&self) -> Option<&RequestTrace> {
        self.start.trace.as_deref()
    }

    /// The row as far as the request's start and its latency tell it.
    fn row(&self, latency_us: i64) -> RequestRow {
        let start = &self.start;
        let mut request = RequestRow::new(
            start.id.clone(),
            self.ts_ms,
            Cow::Borrowed(start.endpoint.spec().ledger_name),
        );
        request.route = start.route.as_ref().map(|route| route.name.clone());
        request.stream = start.stream;
        request.latency_us = latency_us;
        request.client_key = start.client_key.clone();
        request.key_name = start.key_name.clone();
        request.prompt = self
            .outcomes
            .store_content
            .then(|| stored_text(&start.body));
        request
    }

    /// The one place a request ends: its outcome, ready to be delivered.
    pub fn end(mut self, ending: Ending<'_>) -> Ended {
        self.ended = true;
        let hold = std::mem::take(&mut self.start.hold);
        let latency_us = self.elapsed_us();
        let store_content = self.outcomes.store_content;
        let mut ticket = self.start.cache.take();
        let trace = self.start.trace.take().and_then(|trace| {
            let start = &self.start;
            let mut finished = Finished::new(
                trace,
                start.endpoint,
                start.stream,
                start.cache_word,
                &start.body,
            )?;
            traced(&mut finished, &ending);
            Some(finished)
        });
        let start = &self.start;
        let mut request = self.row(latency_us);
        let mut sample = None;
        let mut fill = None;
        let upstream_us = |attempts: &[Attempt]| {
            Some(attempts.iter().map(|a| a.latency.as_micros() as i64).sum())
        };
        let mut upstream = None;
        let (attempts, to_count) = match ending {
            Ending::Refused { status, reason } => {
                request.status = status;
                request.error_kind = Some(reason.to_string());
                request.cost_pusd = Some(Default::default());
                (Vec::new(), None)
            }
            Ending::Unserved { status, failure } => {
                upstream = upstream_us(&failure.attempts);
                request.status = status;
                request.error_kind = Some(failure.error.reason());
                request.fallback = failure.fallback.clone();
                request.cost_pusd = Some(Default::default());
                // The server of its last call (a 504's timed-out one), for the operator to find.
                if let Some(last) = failure.attempts.iter().rev().find(|a| a.server.is_some()) {
                    request.provider = Some(last.tier.provider.name.clone());
                    request.server = last.server.as_ref().map(|s| s.name.clone());
                }
                (attempt_rows(&start.id, &failure.attempts), None)
            }
            Ending::LeftWaiting => {
                request.purpose = Purpose::CacheWait;
                request.status = 499;
                request.error_kind = Some(CLIENT_CLOSED.to_string());
                request.cost_pusd = Some(Default::default());
                (Vec::new(), None)
            }
            Ending::CacheHit { entry } => {
                request.purpose = Purpose::CacheHit;
                request.tier = Some(entry.tier.clone());
                request.provider = Some(entry.provider.clone());
                request.model = Some(entry.model.clone());
                request.local = entry.local;
                let tokens = entry.tokens;
                request.tokens_in = tokens.input;
                request.tokens_cached = tokens.cached;
                request.tokens_cache_write = tokens.cache_write;
                request.tokens_out = tokens.output;
                request.tokens_estimated = tokens.estimated;
                request.cost_pusd = Some(Default::default());
                request.avoided_pusd = entry.cost;
                request.ttfb_us = Some(latency_us);
                (Vec::new(), None)
            }
            Ending::Answered {
                by,
                tokens,
                contract,
                answer,
            } => {
                served(&mut request, by);
                set_tokens(&mut request, tokens, self.price(&by.tier, &tokens));
                request.ttfb_us = Some(latency_us);
                request.contract = contract.map(Cow::Borrowed);
                request.answer = store_content.then(|| stored_text(answer));
                sample = self.sample(by, || SampledAnswer::Body(answer.clone()));
                if contract != Some("violated")
                    && let Some(ticket) = ticket.take()
                {
                    let stored = Stored::Body(answer.clone());
                    fill = Some((ticket, stored, tokens));
                }
                upstream = upstream_us(&by.attempts);
                (attempt_rows(&start.id, &by.attempts), None)
            }
            Ending::Streamed {
                by,
                status,
                error_kind,
                usage,
                prompt,
                text,
                text_whole,
                ttfb_us,
                contract,
                recorded,
                facts: _,
            } => {
                served(&mut request, by);
                // A stream cut, broken or refused by its contract is not an answer to keep. One
                // without usage fills once its tokens are counted (see `ToCount::fill`).
                let mut pending = None;
                if status == 200
                    && error_kind.is_none()
                    && contract != Some("violated")
                    && let Some(recorded) = recorded
                    && let Some(ticket) = ticket.take()
                {
                    let stored = Stored::Events(recorded);
                    match usage {
                        Some(usage) => fill = Some((ticket, stored, Tokens::from(usage))),
                        None => pending = Some((ticket, stored)),
                    }
                }
                request.contract = contract.map(Cow::Borrowed);
                if status == 200 && error_kind.is_none() && text_whole {
                    // Choice 0, as a whole answer's scorers read its first choice.
                    sample = self.sample(by, || SampledAnswer::Text(text.first().to_string()));
                }
                request.status = status;
                request.error_kind = error_kind;
                request.ttfb_us = Some(ttfb_us);
                let to_count = match usage {
                    Some(usage) => {
                        let tokens = Tokens::from(usage);
                        set_tokens(&mut request, tokens, self.price(&by.tier, &tokens));
                        request.answer =
                            store_content.then(|| stored_text(text.stored().as_bytes()));
                        None
                    }
                    None => {
                        request.answer =
                            store_content.then(|| stored_text(text.stored().as_bytes()));
                        Some(ToCount {
                            uncounted: self.uncounted(&by.tier, Answer::Text(text.into_texts())),
                            tier: by.tier.clone(),
                            baseline: start.route.as_ref().and_then(|r| r.baseline.clone()),
                            prompt,
                            fill: pending,
                            pricing: self.outcomes.pricing.clone(),
                        })
                    }
                };
                (attempt_rows(&start.id, &by.attempts), to_count)
            }
        };
        if self.client_left {
            request.status = 499;
            request
                .error_kind
                .get_or_insert_with(|| CLIENT_CLOSED.to_string());
        }
        let fill = fill
            .filter(|(_, stored, _)| crate::cache::fillable(self.start.endpoint, stored))
            .map(|(ticket, stored, tokens)| {
                Fill::new(ticket, stored, crate::cache::Served::of(&request, tokens))
            });
        Ended {
            outcome: Outcome {
                request,
                attempts,
                to_count,
                upstream_us: upstream,
                hold,
            },
            sample,
            fill,
            trace,
            outcomes: self.outcomes.clone(),
        }
    }

    /// The sample this request gives its route's shadow check, if it was chosen for one.
    fn sample(&self, by: &ServedBy, answer: impl FnOnce() -> SampledAnswer) -> Option<Sample> {
        let start = &self.start;
        if !start.sampled || self.client_left {
            return None;
        }
        Some(Sample {
            request_id: start.id.clone(),
            endpoint: start.endpoint,
            route: start.route.clone()?,
            body: start.body.clone(),
            served_by: by.tier.clone(),
            primary_demoted: by.attempts.first().is_some_and(|attempt| {
                attempt
                    .error
                    .as_ref()
                    .is_some_and(|error| error.kind == UpstreamErrorKind::Demoted)
            }),
            answer: answer(),
        })
    }
}

/// A request dropped before its end: its serving thread was stopped at the end of
/// `server.shutdown_grace_ms` (a request whose client had left, still waiting on its upstream), or
/// the gateway failed it (a panic, answered 500). It is recorded with what is known — who asked,
/// for what, how long it ran, and the tier it last called, whose cost is unknown (the report counts
/// it unpriced) — rather than vanish from the ledger.
impl Drop for Exchange {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let mut request = self.row(self.elapsed_us());
        let (status, kind) = if std::thread::panicking() && !cut_off() {
            (500, GATEWAY_FAILED)
        } else {
            (499, CUT_AT_SHUTDOWN)
        };
        request.status = status;
        request.error_kind = Some(kind.to_string());
        let hold = std::mem::take(&mut self.start.hold);
        let hold = match self.called.last() {
            Some((tier, server)) => {
                request.tier = Some(tier.name.clone());
                request.provider = Some(tier.provider.name.clone());
                request.server = Some(server.name.clone());
                request.model = Some(tier.model.clone());
                request.local = tier.is_local();
                // What the call used is unknown: its reservations count in full, as dropped.
                drop(hold);
                Hold::default()
            }
            None => {
                request.cost_pusd = Some(Default::default());
                hold
            }
        };
        tracing::warn!(
            request_id = %request.id,
            tier = request.tier.as_deref().unwrap_or("-"),
            "request recorded as {kind}: it ended before its answer"
        );
        Ended {
            outcome: Outcome {
                request,
                attempts: Vec::new(),
                to_count: None,
                upstream_us: None,
                hold,
            },
            sample: None,
            fill: None,
            trace: self.start.trace.take().and_then(|trace| {
                Finished::cut(
                    trace,
                    self.start.endpoint,
                    self.start.stream,
                    &self.start.body,
                )
            }),
            outcomes: self.outcomes.clone(),
        }
        .deliver_detached();
    }
}

/// An outcome on its way out of the request path.
pub struct Ended {
    pub outcome: Outcome,
    /// The shadow check's sample, for [`Sampling`] to take.
    pub sample: Option<Sample>,
    /// The answer the route's cache keeps, for [`CacheFill`] to take.
    pub fill: Option<Fill>,
    /// The request's trace, for [`crate::traces::Traces`] to take.
    pub trace: Option<Box<Finished>>,
    outcomes: Outcomes,
}

impl Ended {
    /// Hands the request to each consumer in turn.
    fn hand_to_consumers(&mut self) {
        let consumers = self.outcomes.consumers.clone();
        for consumer in consumers.iter() {
            consumer.finished(self);
        }
    }

    /// Hands the request to its consumers and queues the outcome; waits only while the queue is
    /// full (backpressure). Dropped while it waits (its serving thread cut off at shutdown), it
    /// puts the outcome on the late queue rather than lose it.
    pub async fn deliver(mut self) {
        self.hand_to_consumers();
        let mut unsent = Unsent {
            outcome: Some(self.outcome),
            late: &self.outcomes.late,
        };
        match self.outcomes.sender.reserve().await {
            Ok(permit) => {
                if let Some(outcome) = unsent.outcome.take() {
                    permit.send(outcome);
                }
            }
            Err(_) => {
                unsent.outcome = None;
                tracing::error!("the ledger writer has stopped; a request record was lost");
            }
        }
    }

    /// The same from code that cannot wait (a stream dropped by its client, a request cut off).
    pub fn deliver_detached(mut self) {
        self.hand_to_consumers();
        match self.outcomes.sender.try_send(self.outcome) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(outcome)) => {
                if self.outcomes.late.send(outcome).is_err() {
                    tracing::error!("the ledger writer has stopped; a request record was lost");
                }
            }
            Err(mpsc::error::TrySendError::Closed(outcome)) => tracing::error!(
                request_id = %outcome.request.id,
                "the ledger writer has stopped; a request record was lost"
            ),
        }
    }
}

/// An outcome on its way into the queue: if the wait for room is dropped, it goes on the late
/// queue instead of being lost.
struct Unsent<'a> {
    outcome: Option<Outcome>,
    late: &'a mpsc::UnboundedSender<Outcome>,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if let Some(outcome) = self.outcome.take()
            && self.late.send(outcome).is_err()
        {
            tracing::error!("the ledger writer has stopped; a request record was lost");
        }
    }
}

/// Content as the ledger keeps it: UTF-8, without NUL characters, which PostgreSQL refuses in text
/// (a client or model that sends one must not make the batch it is in unwritable).
fn stored_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.contains('\0') {
        text.replace('\0', "")
    } else {
        text.into_owned()
    }
}

fn served(request: &mut RequestRow, by: &ServedBy) {
    request.tier = Some(by.tier.name.clone());
    request.provider = Some(by.tier.provider.name.clone());
    request.server = Some(by.server.name.clone());
    request.model = Some(by.tier.model.clone());
    request.local = by.tier.is_local();
    request.fallback = by.fallback.clone();
}

fn set_tokens(request: &mut RequestRow, tokens: Tokens, priced: Priced) {
    request.tokens_in = tokens.input;
    request.tokens_cached = tokens.cached;
    request.tokens_cache_write = tokens.cache_write;
    request.tokens_out = tokens.output;
    request.tokens_estimated = tokens.estimated;
    request.cost_pusd = priced.cost;
    request.baseline_pusd = priced.baseline;
}

fn attempt_rows(request_id: &str, attempts: &[Attempt]) -> Vec<AttemptRow> {
    if matches!(attempts, [only] if only.error.is_none()) {
        return Vec::new();
    }
    attempts
        .iter()
        .enumerate()
        .map(|(seq, attempt)| AttemptRow {
            request_id: request_id.to_string(),
            seq: seq as i32,
            tier: attempt.tier.name.clone(),
            provider: attempt.tier.provider.name.clone(),
            model: attempt.tier.model.clone(),
            outcome: attempt
                .error
                .as_ref()
                .map_or_else(|| "ok".to_string(), |e| e.reason()),
            latency_us: attempt.latency.as_micros() as i64,
            server: attempt.server.as_ref().map(|server| server.name.clone()),
            // As the call's lease was settled (`Lease::failed`, `Lease::answered_before_retry`).
            answered: attempt.server.as_ref().map(|_| {
                attempt
                    .error
                    .as_ref()
                    .is_none_or(|error| !error.counts_against_provider())
            }),
        })
        .collect()
}

/// What a traced request's spans show of how it ended: the calls it made, and the answer (whole,
/// streamed, or from the cache).
fn traced(finished: &mut Finished, ending: &Ending<'_>) {
    let calls = |attempts: &[Attempt]| -> Vec<crate::traces::Called> {
        attempts
            .iter()
            .filter_map(|attempt| {
                Some(crate::traces::Called {
                    span: attempt.trace?,
                    latency: attempt.latency,
                    tier: attempt.tier.clone(),
                    server: attempt.server.clone()?,
                    error: attempt.error.as_ref().map(|error| error.reason()),
                })
            })
            .collect()
    };
    match ending {
        Ending::Refused { .. } | Ending::LeftWaiting => {}
        Ending::Unserved { failure, .. } => finished.unserved(calls(&failure.attempts)),
        Ending::CacheHit { entry } => {
            let answer = match &entry.answer {
                crate::cache::Stored::Body(body) => Some(body.clone()),
                crate::cache::Stored::Events(_) => None,
            };
            finished.hit(&entry.model, answer);
        }
        Ending::Answered { by, answer, .. } => {
            finished.answered(calls(&by.attempts), Bytes::clone(answer));
        }
        Ending::Streamed {
            by, text, facts, ..
        } => finished.streamed(calls(&by.attempts), facts.clone(), text.first()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config() -> Config {
        Config::parse(
            include_str!("../../examples/tierwise.toml"),
            std::path::Path::new("examples/tierwise.toml"),
            &|_| None,
        )
        .unwrap()
    }

    fn outcomes() -> (Outcomes, mpsc::Receiver<Outcome>) {
        let (outcomes, receiver, _) = queued(4);
        (outcomes, receiver)
    }

    fn queued(
        capacity: usize,
    ) -> (
        Outcomes,
        mpsc::Receiver<Outcome>,
        mpsc::UnboundedReceiver<Outcome>,
    ) {
        let (sender, receiver) = mpsc::channel(capacity);
        let (late, late_receiver) = mpsc::unbounded_channel();
        let pricing = Arc::new(Pricing::new(&config()));
        let outcomes = Outcomes::new(Queue { sender, late }, pricing, false);
        (outcomes, receiver, late_receiver)
    }

    fn start_as(id: &str) -> Start {
        Start {
            id: id.into(),
            ..start()
        }
    }

    fn refused(exchange: Exchange) -> Ended {
        exchange.end(Ending::Refused {
            status: 429,
            reason: "rate_limit_exceeded",
        })
    }

    #[test]
    fn a_record_that_cannot_wait_for_room_in_a_full_queue_is_not_lost() {
        let (outcomes, mut queue, mut late) = queued(1);
        refused(outcomes.begin(start_as("fills-the-queue"))).deliver_detached();
        // Cut off (or left by its client) while the queue is full.
        drop(outcomes.begin(start_as("cut")));
        refused(outcomes.begin(start_as("left"))).deliver_detached();
        assert_eq!(queue.try_recv().unwrap().request.id, "fills-the-queue");
        let late: Vec<String> = std::iter::from_fn(|| late.try_recv().ok())
            .map(|outcome| outcome.request.id)
            .collect();
        assert_eq!(late, ["cut", "left"]);
    }

    #[test]
    fn a_delivery_dropped_while_it_waits_for_room_keeps_its_record() {
        use futures_util::FutureExt;
        let (outcomes, _queue, mut late) = queued(1);
        refused(outcomes.begin(start_as("fills-the-queue"))).deliver_detached();
        let mut waiting = Box::pin(refused(outcomes.begin(start_as("waiting"))).deliver());
        assert!(
            waiting.as_mut().now_or_never().is_none(),
            "the queue is full"
        );
        // Its serving thread is cut off at shutdown: the wait is dropped.
        drop(waiting);
        assert_eq!(late.try_recv().unwrap().request.id, "waiting");
    }

    fn start() -> Start {
        Start {
            id: "req-1".into(),
            endpoint: Endpoint::ChatCompletions,
            stream: false,
            route: None,
            client_key: None,
            key_name: None,
            body: Bytes::from_static(b"{}"),
            sampled: false,
            hold: Hold::default(),
            cache: None,
            cache_word: None,
            trace: None,
        }
    }

    #[test]
    fn a_request_the_gateway_fails_is_recorded_as_failed_not_lost() {
        let (outcomes, mut receiver) = outcomes();
        let exchange = outcomes.begin(start());
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _exchange = exchange;
            panic!("a bug in the request path");
        }));
        assert!(failed.is_err());
        let outcome = receiver.try_recv().expect("the failed request is recorded");
        assert_eq!(
            (
                outcome.request.status,
                outcome.request.error_kind.as_deref()
            ),
            (500, Some(GATEWAY_FAILED))
        );
        // No upstream call was made: nothing can have been charged.
        assert_eq!(outcome.request.cost_pusd, Some(Default::default()));
    }

    #[test]
    fn a_request_that_ends_is_recorded_once() {
        let (outcomes, mut receiver) = outcomes();
        let exchange = outcomes.begin(start());
        let failure = Unserved {
            tier: config().tiers[0].clone(),
            error: crate::upstream::UpstreamError::new_detail(
                UpstreamErrorKind::BreakerOpen,
                "open".into(),
            ),
            attempts: Vec::new(),
            fallback: None,
        };
        let ended = exchange.end(Ending::Unserved {
            status: 503,
            failure: &failure,
        });
        ended.deliver_detached();
        assert_eq!(receiver.try_recv().unwrap().request.status, 503);
        assert!(
            receiver.try_recv().is_err(),
            "an ended request is not cut too"
        );
    }
}
