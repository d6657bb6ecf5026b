//! Where a request ends, whichever way it ends — answered, streamed to the end, abandoned by its
//! client, or failed — in exactly one function, [`Exchange::end`]. It produces the request's
//! [`Outcome`]: the ledger row with its cost and baseline priced by [`Pricing::price`], the attempt
//! rows, and what is left to count where the upstream reported no usage. Outcomes go to a
//! background task ([`dispatch`]) that hands them in batches to the ledger writer and the metrics,
//! and to whatever else wants finished requests; the request path never waits on any of them
//! except when the queue is full (backpressure).

mod dispatch;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::config::{Route, Tier};
use crate::ledger::{Answer, AttemptRow, Priced, Pricing, RequestRow, Tokens, Uncounted};
use crate::openai::chat::ChoiceTexts;
use crate::openai::{Endpoint, Usage};
use crate::route::chain::{Attempt, ServedBy, Unserved};
use crate::upstream::UpstreamErrorKind;

pub use dispatch::Dispatcher;

/// How the ledger names a request whose client went away before its answer.
pub const CLIENT_CLOSED: &str = "client_closed";

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
}

#[derive(Debug)]
pub struct ToCount {
    uncounted: Uncounted,
    tier: Arc<Tier>,
    baseline: Option<Arc<Tier>>,
}

impl Outcome {
    /// Counts and prices what was left to count, if anything. Not on an event loop: a long text
    /// takes milliseconds to count.
    pub fn count(&mut self, pricing: &Pricing) {
        let Some(to_count) = self.to_count.take() else {
            return;
        };
        let tokens = to_count.uncounted.count();
        let priced = pricing.price(&to_count.tier, to_count.baseline.as_deref(), &tokens);
        set_tokens(&mut self.request, tokens, priced);
    }
}

/// The request path's handle: cheap to clone, never touches the database.
#[derive(Clone)]
pub struct Outcomes {
    sender: mpsc::Sender<Outcome>,
    pricing: Arc<Pricing>,
    store_content: bool,
    /// Where requests chosen for a shadow check go once their client has its answer.
    samples: Option<mpsc::Sender<Sample>>,
}

impl Outcomes {
    pub fn new(sender: mpsc::Sender<Outcome>, pricing: Arc<Pricing>, store_content: bool) -> Self {
        Outcomes {
            sender,
            pricing,
            store_content,
            samples: None,
        }
    }

    /// Hands requests begun with `Start::sampled` to `samples` once they end answered.
    pub fn with_samples(self, samples: mpsc::Sender<Sample>) -> Self {
        Outcomes {
            samples: Some(samples),
            ..self
        }
    }

    /// Queues an outcome that no client request produced (a shadow call); waits while the queue is
    /// full, as a request would.
    pub async fn record(&self, outcome: Outcome) {
        if self.sender.send(outcome).await.is_err() {
            tracing::error!("the ledger writer has stopped; a record was lost");
        }
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
    /// The client's body: counted where the upstream reports no usage, stored with
    /// `ledger.store_content = true`.
    pub body: Bytes,
    /// Chosen for the route's shadow check: if it ends answered, its answer is compared.
    pub sampled: bool,
}

/// An answered request chosen for a shadow check: what the client asked and what it was told.
#[derive(Debug)]
pub struct Sample {
    pub request_id: String,
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
    /// A whole chat completion, as the client received it.
    Body(Bytes),
    /// A stream's text, assembled.
    Text(String),
}

/// How a request ended.
pub enum Ending<'a> {
    /// No tier answered, or the request was refused; `status` is what the client was told.
    Unserved { status: u16, failure: &'a Unserved },
    /// A whole answer.
    Answered {
        by: &'a ServedBy,
        tokens: Tokens,
        /// How the output contract judged the answer, where the route has one.
        contract: Option<&'static str>,
        answer: &'a [u8],
    },
    /// A stream ended: to its end (200), broken midway (200 with the reason), or abandoned by its
    /// client (499).
    Streamed {
        by: &'a ServedBy,
        status: u16,
        error_kind: Option<String>,
        usage: Option<Usage>,
        /// The answer's text as relayed, each choice's apart.
        text: ChoiceTexts,
        /// `text` holds all of it (not cut at `server.max_answer_bytes`).
        text_whole: bool,
        ttfb_us: i64,
        /// How the output contract judged the whole text, where the route has one.
        contract: Option<&'static str>,
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
}

impl Exchange {
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

    /// The one place a request ends: its outcome, ready to be delivered.
    pub fn end(self, ending: Ending<'_>) -> Ended {
        let latency_us = self.elapsed_us();
        let store_content = self.outcomes.store_content;
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
        request.prompt = store_content.then(|| stored_text(&start.body));
        let mut sample = None;
        let upstream_us = |attempts: &[Attempt]| {
            Some(attempts.iter().map(|a| a.latency.as_micros() as i64).sum())
        };
        let mut upstream = None;
        let (attempts, to_count) = match ending {
            Ending::Unserved { status, failure } => {
                upstream = upstream_us(&failure.attempts);
                request.status = status;
                request.error_kind = Some(failure.error.reason());
                request.fallback = failure.fallback.clone();
                request.cost_pusd = Some(Default::default());
                (attempt_rows(&start.id, &failure.attempts), None)
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
                sample = self.sample(by, || SampledAnswer::Body(Bytes::copy_from_slice(answer)));
                upstream = upstream_us(&by.attempts);
                (attempt_rows(&start.id, &by.attempts), None)
            }
            Ending::Streamed {
                by,
                status,
                error_kind,
                usage,
                text,
                text_whole,
                ttfb_us,
                contract,
            } => {
                served(&mut request, by);
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
        Ended {
            outcome: Outcome {
                request,
                attempts,
                to_count,
                upstream_us: upstream,
            },
            sample,
            outcomes: self.outcomes,
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

/// An outcome on its way out of the request path.
pub struct Ended {
    pub outcome: Outcome,
    sample: Option<Sample>,
    outcomes: Outcomes,
}

impl Ended {
    /// Queues the outcome; waits only while the queue is full (backpressure).
    pub async fn deliver(mut self) {
        self.hand_over_sample();
        if self.outcomes.sender.send(self.outcome).await.is_err() {
            tracing::error!("the ledger writer has stopped; a request record was lost");
        }
    }

    /// A shadow check never holds a request up: a sample that finds the queue full is skipped.
    fn hand_over_sample(&mut self) {
        let (Some(sample), Some(samples)) = (self.sample.take(), &self.outcomes.samples) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(sample)) = samples.try_send(sample) {
            crate::metrics::shadow_skipped(&sample.route.name, "queue_full");
        }
    }

    /// Queues the outcome from code that cannot wait (a stream dropped by its client).
    pub fn deliver_detached(mut self) {
        self.hand_over_sample();
        let Err(mpsc::error::TrySendError::Full(outcome)) =
            self.outcomes.sender.try_send(self.outcome)
        else {
            return;
        };
        // A full queue: wait for room on a task, if a runtime is still there to run one.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let ended = Ended {
                    outcome,
                    sample: None,
                    outcomes: self.outcomes,
                };
                runtime.spawn(ended.deliver());
            }
            Err(_) => tracing::error!(
                request_id = %outcome.request.id,
                "the ledger queue is full and the runtime is stopping; a request record was lost"
            ),
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
        })
        .collect()
}
