//! What a traced request leaves for its spans when it ends: taken from how it ended (by
//! `outcome`, which knows its endings) and its ledger row on the request path (copies of a few names and numbers, no parsing), turned into
//! spans later by the exporter's task (see [`super::span`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{AttemptTrace, RequestTrace};
use crate::config::{Tier, UpstreamServer};
use crate::ledger::RequestRow;
use crate::openai::Endpoint;

/// A finished request's trace, on its way to the exporter.
pub struct Finished {
    pub(super) trace: Box<RequestTrace>,
    pub(super) ended: SystemTime,
    pub(super) endpoint: Endpoint,
    pub(super) stream: bool,
    /// What `x-tierwise-cache` said: `hit`, `miss` or `bypass` (see [`crate::cache::Lookup::word`]).
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
pub struct Called {
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
    /// The trace of a request that ended, before what it was answered with is known (see
    /// [`Finished::hit`], [`Finished::answered`], [`Finished::streamed`]); `None` where it is
    /// not sampled.
    pub fn new(
        trace: Box<RequestTrace>,
        endpoint: Endpoint,
        stream: bool,
        cache: Option<&'static str>,
        body: &Bytes,
    ) -> Option<Box<Finished>> {
        let mut finished = Finished::cut(trace, endpoint, stream, body)?;
        finished.cache = cache;
        Some(finished)
    }

    /// Answered from the route's cache, by an answer that came from `model`.
    pub fn hit(&mut self, model: &str, answer: Option<Bytes>) {
        self.cache = Some("hit");
        self.cached_model = Some(model.to_string());
        self.answer = answer;
    }

    /// Answered whole after `calls`: the answer's own buffer, shared, its fields read off the
    /// request path.
    pub fn answered(&mut self, calls: Vec<Called>, answer: Bytes) {
        self.attempts = calls;
        self.answer = Some(answer);
    }

    /// Streamed after `calls`, its events having said `facts`, its text `text`.
    pub fn streamed(&mut self, calls: Vec<Called>, facts: Option<StreamFacts>, text: &str) {
        self.attempts = calls;
        self.stream_facts = facts;
        self.streamed_text = self.trace.capture_content.then(|| text.to_string());
    }

    /// Failed after `calls`.
    pub fn unserved(&mut self, calls: Vec<Called>) {
        self.attempts = calls;
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
