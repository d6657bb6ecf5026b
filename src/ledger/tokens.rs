//! A request's token counts, and counting them where the upstream reported none (some local
//! servers, some streams). Counts made here are marked estimated in the ledger.
//!
//! Counting never runs on a serving thread's event loop (see [`crate::openai::tokens`]): a
//! non-streamed answer is counted on tokio's blocking pool while its request waits; a stream's
//! tokens are counted in the background before its record is written.

use bytes::Bytes;

use crate::openai::{Endpoint, Usage};

/// Token counts of one answered request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub cached: u64,
    pub output: u64,
    /// Counted by tierwise's tokenizer because the upstream reported no usage.
    pub estimated: bool,
}

impl From<Usage> for Tokens {
    fn from(usage: Usage) -> Tokens {
        Tokens {
            input: usage.prompt_tokens,
            cached: usage.cached_tokens,
            output: usage.completion_tokens,
            estimated: false,
        }
    }
}

/// A call whose upstream reported no usage: what it was asked and what it answered.
#[derive(Debug, Clone)]
pub struct Uncounted {
    pub endpoint: Endpoint,
    pub model: String,
    /// The request body as the client sent it.
    pub request: Bytes,
    pub answer: Answer,
}

#[derive(Debug, Clone)]
pub enum Answer {
    /// A whole JSON answer.
    Body(Bytes),
    /// The text a stream carried.
    Text(String),
}

impl Uncounted {
    /// Counts here and now: for background tasks and the blocking pool, not for an event loop.
    pub fn count(&self) -> Tokens {
        let spec = self.endpoint.spec();
        Tokens {
            input: (spec.count_prompt)(&self.model, &self.request),
            cached: 0,
            output: match &self.answer {
                Answer::Text(text) => crate::openai::tokens::count(&self.model, text),
                Answer::Body(body) => (spec.count_answer)(&self.model, body),
            },
            estimated: true,
        }
    }

    /// Counts on tokio's blocking pool, so the caller's event loop goes on serving meanwhile.
    pub async fn count_off_loop(self) -> Tokens {
        let fallback = self.clone();
        match tokio::task::spawn_blocking(move || self.count()).await {
            Ok(tokens) => tokens,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // The pool is shutting down with the runtime: counting here beats a silent zero cost.
            Err(_) => fallback.count(),
        }
    }
}
