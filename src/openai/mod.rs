//! OpenAI's wire format, as every other module may use it: which endpoint a body is for, the
//! request fields routing reads, usage as upstreams report it, and OpenAI's tokenizers. Each
//! endpoint owns its whole life in one file — what its body must hold, what a tier changes in it,
//! how its prompt and answer are counted, what its warm-up call is and how its stream is read — so
//! that a new endpoint is a new file and one line in [`Endpoint::spec`].

pub mod chat;
pub mod embeddings;
mod request;
pub mod tokens;
mod usage;

use serde_json::Value;

use crate::config::ChainTier;

pub use request::{Edits, RequestBody, RequestError};
pub use usage::Usage;

/// Which OpenAI endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
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
    /// What `step`'s tier changes in the body besides `model`.
    pub rewrite: fn(&RequestBody<'_>, &ChainTier, &mut Edits),
    /// Input tokens of a request body, for upstreams that report no usage.
    pub count_prompt: fn(model: &str, body: &[u8]) -> u64,
    /// Output tokens of a whole (non-streamed) answer.
    pub count_answer: fn(model: &str, body: &[u8]) -> u64,
    /// The smallest request the model answers, to load it before traffic depends on it.
    pub warmup: fn(model: &str) -> Value,
    /// Whether a route's output contract (labels) reads this endpoint's answers.
    pub has_contract: bool,
}

impl Endpoint {
    pub const ALL: [Endpoint; 2] = [Endpoint::ChatCompletions, Endpoint::Embeddings];

    pub fn spec(self) -> &'static EndpointSpec {
        match self {
            Endpoint::ChatCompletions => &chat::SPEC,
            Endpoint::Embeddings => &embeddings::SPEC,
        }
    }

    pub fn path(self) -> &'static str {
        self.spec().path
    }
}
