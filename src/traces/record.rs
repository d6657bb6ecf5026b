//! What a traced request leaves for its spans when it ends: taken from its [`Ending`] and its
//! ledger row on the request path (copies of a few names and numbers, no parsing), turned into
//! spans later by the exporter's task (see [`super::span`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{AttemptTrace, RequestTrace};
use crate::config::{Tier, UpstreamServer};
use crate::ledger::RequestRow;
use crate::openai::Endpoint;
use crate::outcome::Ending;
use crate::route::chain::Attempt;

/// A finished request's trace, on its way to the exporter.
pub struct Finished {
    pub(super) trace: Box<RequestTrace>,
    pub(super) ended: SystemTime,
    pub(super) endpoint: Endpoint,
    pub(super) stream: bool,
    /// `hit`, or `miss` where the route's cache was asked and missed.
    pub(super) cache: Option<&'static str>,
    pub(super) attempts: Vec<Called>,
    /// A whole answer as the client got it: its id, model and finish reasons are read from it off
    /// the request path.
    pub(super) answer: Option<Bytes>,
    /// The model a cache hit's answer came from.
    pub(super) cached_model: Option<String>,
    /// With `capture_content`: the client's body, and a stream's text.
    pub(super) input: Option<Bytes>,
    pub(super) streamed_text: Option<String>,
    /// What a stream's events said of the answer.
    pub(super) stream_facts: Option<StreamFacts>,
    pub(super) row: Row,
}

/// What a traced stream's events said of the answer: its id and model (from the first event that
/// names them) and each choice's finish reason. Only the events that can carry them are read
/// again — until the id and model are known, and those that finish a choice — each with one
/// borrowing pass that skips the rest.
#[derive(Debug, Default, Clone)]
pub struct StreamFacts {
    pub(super) id: Option<String>,
    pub(super) model: Option<String>,
    pub(super) finish_reasons: Vec<String>,
}

impl StreamFacts {
    /// Reads an event's `data` that the relay has read as a chunk; `finished` where a choice
    /// finished in it.
    pub fn read(&mut self, data: &str, finished: bool) {
        if !finished && self.id.is_some() && self.model.is_some() {
            return;
        }
        #[derive(serde::Deserialize)]
        struct Event<'a> {
            #[serde(borrow)]
            id: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow)]
            model: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow, default)]
            choices: Vec<Choice<'a>>,
        }
        #[derive(serde::Deserialize)]
        struct Choice<'a> {
            #[serde(borrow)]
            finish_reason: Option<std::borrow::Cow<'a, str>>,
        }
        let Ok(event) = serde_json::from_str::<Event<'_>>(data) else {
            return;
        };
        // Azure's first event names neither (`"id": ""`, `"model": ""`).
        let named = |name: Option<std::borrow::Cow<'_, str>>| {
            name.filter(|name| !name.is_empty())
                .map(|name| name.into_owned())
        };
        if self.id.is_none() {
            self.id = named(event.id);
        }
        if self.model.is_none() {
            self.model = named(event.model);
        }
        self.finish_reasons.extend(
            event
                .choices
                .into_iter()
                .filter_map(|choice| Some(choice.finish_reason?.into_owned())),
        );
    }
}

/// One upstream call of the request.
pub(super) struct Called {
    pub span: AttemptTrace,
    pub latency: Duration,
    pub tier: Arc<Tier>,
    pub server: Arc<UpstreamServer>,
    /// How it failed, in the ledger's words; `None` for the call that answered.
    pub error: Option<String>,
}

/// The ledger row's facts the spans show.
#[derive(Default)]
pub(super) struct Row {
    pub id: String,
    pub route: Option<String>,
    pub tier: Option<String>,
    pub provider: Option<String>,
    pub status: u16,
    pub error_kind: Option<String>,
    pub fallback: Option<String>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_pusd: Option<i64>,
    pub key_name: Option<String>,
}

impl Finished {
    /// The trace of a request ending as `ending`; `None` where it is not sampled.
    pub fn new(
        trace: Box<RequestTrace>,
        ending: &Ending<'_>,
        endpoint: Endpoint,
        stream: bool,
        cache_asked: bool,
        body: &Bytes,
    ) -> Option<Box<Finished>> {
        if !trace.sampled {
            return None;
        }
        let capture = trace.capture_content;
        let mut finished = Finished {
            ended: SystemTime::now(),
            endpoint,
            stream,
            cache: cache_asked.then_some("miss"),
            attempts: Vec::new(),
            answer: None,
            cached_model: None,
            input: capture.then(|| body.clone()),
            streamed_text: None,
            stream_facts: None,
            row: Row::default(),
            trace,
        };
        match ending {
            Ending::Refused { .. } => {}
            Ending::Unserved { failure, .. } => finished.called(&failure.attempts),
            Ending::CacheHit { entry } => {
                finished.cache = Some("hit");
                finished.cached_model = Some(entry.model.clone());
                if let crate::cache::Stored::Body(body) = &entry.answer {
                    finished.answer = Some(body.clone());
                }
            }
            Ending::Answered { by, answer, .. } => {
                finished.called(&by.attempts);
                // The answer's own buffer, shared: its fields are read off the request path.
                finished.answer = Some(Bytes::clone(answer));
            }
            Ending::Streamed {
                by, text, facts, ..
            } => {
                finished.called(&by.attempts);
                finished.stream_facts = facts.clone();
                finished.streamed_text = capture.then(|| text.first().to_string());
            }
        }
        Some(Box::new(finished))
    }

    /// The trace of a request cut off before it ended (at the end of the shutdown grace, or by a
    /// panic): its own span only, since its calls' spans were never closed; `None` where it is not
    /// sampled.
    pub fn cut(
        trace: Box<RequestTrace>,
        endpoint: Endpoint,
        stream: bool,
        body: &Bytes,
    ) -> Option<Box<Finished>> {
        if !trace.sampled {
            return None;
        }
        Some(Box::new(Finished {
            ended: SystemTime::now(),
            endpoint,
            stream,
            cache: None,
            attempts: Vec::new(),
            answer: None,
            cached_model: None,
            input: trace.capture_content.then(|| body.clone()),
            streamed_text: None,
            stream_facts: None,
            row: Row::default(),
            trace,
        }))
    }

    fn called(&mut self, attempts: &[Attempt]) {
        self.attempts = attempts
            .iter()
            .filter_map(|attempt| {
                Some(Called {
                    span: attempt.trace?,
                    latency: attempt.latency,
                    tier: attempt.tier.clone(),
                    server: attempt.server.clone()?,
                    error: attempt.error.as_ref().map(|error| error.reason()),
                })
            })
            .collect();
    }

    /// Takes what the spans show of the request's ledger row, once it is final.
    pub fn read_row(&mut self, row: &RequestRow) {
        self.row = Row {
            id: row.id.clone(),
            route: row.route.clone(),
            tier: row.tier.clone(),
            provider: row.provider.clone(),
            status: row.status,
            error_kind: row.error_kind.clone(),
            fallback: row.fallback.clone(),
            tokens_in: row.tokens_in,
            tokens_out: row.tokens_out,
            cost_pusd: row.cost_pusd.map(|cost| cost.0),
            key_name: row.key_name.clone(),
        };
    }
}
