//! OpenAI's wire format, as every other module may use it: which endpoint a body is for, the
//! request fields routing reads, usage as upstreams report it, and OpenAI's tokenizers. Each
//! endpoint owns its whole life in one file — what its body must hold, what a tier changes in it,
//! how its prompt and answer are counted, how its answer's usage and its stream's events are read,
//! what it needs of a tier, its answer budget, whether it can be shadowed, what its warm-up call
//! is, how its errors are written and which header may carry the client's key — so that a new
//! endpoint is a new file and one line in [`Endpoint::spec`] (the server registers its routes from
//! [`Endpoint::ALL`]).

pub mod chat;
pub mod embeddings;
mod media;
pub mod messages;
mod request;
pub mod responses;
pub mod tokens;
mod usage;

use bytes::Bytes;
use serde_json::Value;

use crate::config::{Abilities, ChainTier};

pub use chat::{ChoiceTexts, Chunk};
pub use request::{Edits, MAX_DEPTH, RequestBody, RequestError};
pub use usage::{AnthropicUsage, Usage};

/// Which OpenAI endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
    Responses,
    Messages,
}

/// What differs between endpoints, as data: every module asks this instead of matching on the
/// endpoint itself.
pub struct EndpointSpec {
    /// The path under a provider's base URL.
    pub path: &'static str,
    /// How the ledger names the endpoint.
    pub ledger_name: &'static str,
    /// Checks the fields this endpoint requires, once `model` and `stream` have been read.
    pub validate: fn(&RequestBody<'_>) -> Result<(), RequestError>,
    /// Checks the prompt itself (every message and block, the tools, the system prompt), reading
    /// all of it: apart from `validate` because its work grows with the prompt, so the server runs
    /// it on the blocking pool for a large body, and because the endpoint's `…/count_tokens`
    /// refuses what it refuses (without the fields only sending needs, `max_tokens`); `None`
    /// where `validate` checks all there is.
    pub check_prompt: Option<CheckPrompt>,
    /// What `step`'s tier changes in the body besides `model`.
    pub rewrite: fn(&RequestBody<'_>, &ChainTier, &mut Edits),
    /// Input tokens of a request body, for upstreams that report no usage.
    pub count_prompt: fn(model: &str, body: &[u8]) -> u64,
    /// Output tokens of a whole (non-streamed) answer.
    pub count_answer: fn(model: &str, body: &[u8]) -> u64,
    /// The smallest request the model answers, to load it before traffic depends on it.
    pub warmup: fn(model: &str) -> Value,
    /// The texts of a whole answer a route's output contract (labels) reads and rewrites: one
    /// entry per answer the body holds (chat's choices), each the strings its text is made of, in
    /// order; `None` where the endpoint's answers have no text to hold to a contract.
    pub answer_texts: Option<AnswerTexts>,
    /// What a whole answer said, for the scorers of a route's shadow check, which sends the
    /// request again, through this endpoint, to the tier that did not answer it; `None` where
    /// the endpoint's requests are never sampled.
    pub said: Option<fn(&Value) -> Said>,
    /// What a request needs of a tier beyond plain chat (tools, a JSON schema, images).
    pub needs: fn(&RequestBody<'_>) -> Abilities,
    /// The fields that bound an answer's length, the usual one first.
    pub answer_limits: &'static [&'static str],
    /// The answer budget the client asked for, in tokens; `Some(0)` for an endpoint whose answer
    /// has no output tokens; `None` when the client left it to the tier.
    pub answer_budget: fn(&RequestBody<'_>) -> Option<u64>,
    /// The usage of a whole answer, or `Err` when the body is not a JSON object at all.
    pub answer_usage: fn(&[u8]) -> Result<Option<Usage>, serde_json::Error>,
    /// Reads one stream event's data; `None` when it is not one of the endpoint's JSON events
    /// (it is relayed as it came).
    pub read_event: fn(&str) -> Option<Chunk>,
    /// The event data that ends a stream (chat's `[DONE]`); `None` where the last event says so.
    pub done: Option<&'static str>,
    /// The event (its name, its data) that ends a stream broken after the client saw events.
    pub interrupted: fn(&StreamMarks, message: &str) -> (Option<&'static str>, String),
    /// How a tier whose server does not serve this endpoint is served through chat completions;
    /// `None` where such a tier cannot take the request.
    pub via_chat: Option<ViaChat>,
    /// An error as the endpoint's clients read it (OpenAI's shape, or Anthropic's on its
    /// endpoint); the status stays the caller's.
    pub error_body: fn(ErrorReply<'_>) -> Bytes,
    /// A header besides `Authorization: Bearer` that carries the client's key on this endpoint
    /// (Anthropic's SDKs send `x-api-key`).
    pub key_header: Option<&'static str>,
    /// Estimates a request's input tokens as `step`'s tier would get it (its prompt already
    /// checked), for the endpoint's `…/count_tokens` route; `None` where the endpoint has none.
    pub count_tokens: Option<CountTokens>,
    /// The status that tells this endpoint's clients its upstreams were overloaded (the last
    /// tier tried answered 503, or Anthropic's 529, or was at its `max_in_flight`), where its
    /// clients read one of their own; `None` keeps the gateway's status.
    pub overloaded_status: Option<u16>,
    /// The client's headers that reach a tier given the request as it came (not translated), in
    /// the endpoint's own format: its version and feature flags, never the client's key. A
    /// client's value replaces the provider's (`anthropic-version`); a repeated header goes on
    /// repeated.
    pub passed_headers: &'static [&'static str],
}

/// Checks a request body's prompt (see [`EndpointSpec::check_prompt`]).
pub type CheckPrompt = fn(&[u8]) -> Result<(), RequestError>;

/// Estimates a request body's input tokens as a chain step's tier would get them.
pub type CountTokens = fn(&[u8], &ChainTier) -> u64;

/// What the client is told of a failure, before its endpoint writes it.
pub struct ErrorReply<'a> {
    pub status: u16,
    pub kind: &'a str,
    pub message: &'a str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
    /// An upstream's own refusal, OpenAI-shaped, passed back as it came where the endpoint can.
    pub upstream_body: Option<&'a Bytes>,
}

/// OpenAI's error shape (`{"error": {"message", "type", "param", "code"}}`); an upstream's own
/// refusal as it came.
pub fn openai_error(reply: ErrorReply<'_>) -> Bytes {
    if let Some(body) = reply.upstream_body {
        return body.clone();
    }
    Bytes::from(
        serde_json::json!({
            "error": {
                "message": reply.message,
                "type": reply.kind,
                "param": reply.param,
                "code": reply.code,
            }
        })
        .to_string(),
    )
}

/// See [`EndpointSpec::answer_texts`].
pub type AnswerTexts = fn(&mut Value) -> Vec<Vec<&mut String>>;

/// What a whole answer said, as the shadow check's scorers compare it: the text of its first
/// answer and each tool call's name and arguments (as sent, JSON or not).
#[derive(Debug, Default, PartialEq)]
pub struct Said {
    pub text: String,
    pub tool_calls: Vec<(String, String)>,
}

/// What a relay has read of a stream so far, for the event that ends it when it breaks.
#[derive(Debug, Default)]
pub struct StreamMarks {
    /// The id the stream's events gave the answer.
    pub response_id: Option<String>,
    /// The last event's sequence number, where events are numbered.
    pub sequence: Option<u64>,
}

/// An endpoint served through chat completions: its request written as one, and the chat answer
/// written back in the endpoint's shapes.
#[derive(Clone, Copy)]
pub struct ViaChat {
    /// The endpoint's request (as the tier gets it) as a chat completion for `model`; an error
    /// names what chat cannot carry.
    pub request: fn(body: &[u8], model: &str) -> Result<Vec<u8>, RequestError>,
    /// A whole chat completion as the endpoint's answer to `request`.
    pub answer: AnswerFromChat,
    /// A writer of the endpoint's stream events from chat chunks, for `request`, whose prompt
    /// the gateway estimated as `prompt_tokens` (the endpoint's `count_prompt`, in a bounded
    /// time: [`tokens::estimate_off_the_loop`], for an endpoint whose events say the input before
    /// the upstream reports it: Messages' `message_start`).
    pub stream: fn(request: &[u8], prompt_tokens: u64) -> Box<dyn StreamTranslator>,
    /// The stream's first event says the prompt's tokens (Messages' `message_start`): the
    /// gateway estimates them for it; 0 is passed where it does not.
    pub prompt_first: bool,
}

/// Writes a whole chat completion (`chat`) as another endpoint's answer to `request`; an error
/// says why the chat completion cannot be read.
pub type AnswerFromChat = fn(chat: &[u8], request: &[u8]) -> Result<Vec<u8>, String>;

/// Writes a stream of chat chunks as another endpoint's events (each its name and its data).
pub trait StreamTranslator: Send {
    /// One chat event's data (`[DONE]` included); an error when it is not a chat chunk, or the
    /// upstream's own error event.
    fn read(&mut self, data: &str, out: &mut Vec<(&'static str, String)>) -> Result<(), String>;
    /// The chat stream closed without `[DONE]`: the closing events, if its answer finished; an
    /// error when what it said cannot end as the endpoint's answer.
    fn close(&mut self, out: &mut Vec<(&'static str, String)>) -> Result<(), String>;
    /// The usage the chat stream reported, once it has, for an endpoint whose events the relay
    /// does not read the upstream's usage from (Messages' say the gateway's estimates);
    /// `None` where the endpoint's events carry the upstream's usage as it came.
    fn usage(&self) -> Option<Usage> {
        None
    }
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Endpoint::ChatCompletions,
        Endpoint::Embeddings,
        Endpoint::Responses,
        Endpoint::Messages,
    ];

    pub fn spec(self) -> &'static EndpointSpec {
        match self {
            Endpoint::ChatCompletions => &chat::SPEC,
            Endpoint::Embeddings => &embeddings::SPEC,
            Endpoint::Responses => &responses::SPEC,
            Endpoint::Messages => &messages::SPEC,
        }
    }

    /// The endpoint whose path `path` is, or lies under (`/v1/messages/count_tokens`).
    pub fn at(path: &str) -> Option<Endpoint> {
        let path = path.strip_prefix("/v1/")?;
        Endpoint::ALL.into_iter().find(|endpoint| {
            path.strip_prefix(endpoint.path())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    pub fn path(self) -> &'static str {
        self.spec().path
    }
}

/// For the translations' property tests: any JSON value, its strings and object keys often the
/// endpoint's own words (`words`, `keys`) so that the generated bodies reach deep into its
/// translation, otherwise short random text.
#[cfg(test)]
pub(crate) fn any_json_of(
    words: &'static [&'static str],
    keys: &'static [&'static str],
) -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![prop::sample::select(words).prop_map(String::from), ".{0,8}",]
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(keys).prop_map(String::from),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..6,
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}
