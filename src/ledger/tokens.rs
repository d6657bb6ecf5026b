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
    /// Every input token, cache reads and writes included.
    pub input: u64,
    /// Input read from the provider's prompt cache.
    pub cached: u64,
    /// Input written to the provider's prompt cache.
    pub cache_write: u64,
    pub output: u64,
    /// Counted by tierwise's tokenizer because the upstream reported no usage.
    pub estimated: bool,
}

/// More tokens than any call can have: the largest context windows are a few million tokens. A
/// count over this is an upstream's bug, and priced as reported it could bill millions of dollars.
pub const MAX_PLAUSIBLE_TOKENS: u64 = 1_000_000_000;

impl From<Usage> for Tokens {
    /// The upstream's counts; an implausible one is clamped to [`MAX_PLAUSIBLE_TOKENS`] and the
    /// tokens are marked estimated, since they are no longer what the upstream said.
    fn from(usage: Usage) -> Tokens {
        let counts = [
            usage.prompt_tokens,
            usage.cached_tokens,
            usage.cache_write_tokens,
            usage.completion_tokens,
        ];
        let implausible = counts.iter().any(|&n| n > MAX_PLAUSIBLE_TOKENS);
        if implausible {
            tracing::warn!(
                prompt_tokens = usage.prompt_tokens,
                completion_tokens = usage.completion_tokens,
                "an upstream reported an implausible token count; clamped to {MAX_PLAUSIBLE_TOKENS} and marked estimated"
            );
        }
        let clamp = |n: u64| n.min(MAX_PLAUSIBLE_TOKENS);
        Tokens {
            input: clamp(usage.prompt_tokens),
            cached: clamp(usage.cached_tokens),
            cache_write: clamp(usage.cache_write_tokens),
            output: clamp(usage.completion_tokens),
            estimated: implausible,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implausible_counts_are_clamped_and_flagged() {
        let usage = Usage {
            prompt_tokens: 10,
            completion_tokens: 10_000_000_000_000,
            cached_tokens: 0,
            cache_write_tokens: 0,
        };
        let tokens = Tokens::from(usage);
        assert_eq!((tokens.input, tokens.output), (10, MAX_PLAUSIBLE_TOKENS));
        assert!(tokens.estimated);
        let plain = Tokens::from(Usage {
            completion_tokens: 7,
            ..usage
        });
        assert_eq!((plain.output, plain.estimated), (7, false));
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
    /// The text a stream carried, each choice's apart.
    Text(Vec<String>),
}

impl Uncounted {
    /// Counts here and now: for background tasks and the blocking pool, not for an event loop.
    pub fn count(&self) -> Tokens {
        let spec = self.endpoint.spec();
        Tokens {
            input: (spec.count_prompt)(&self.model, &self.request),
            cached: 0,
            cache_write: 0,
            output: match &self.answer {
                Answer::Text(texts) => texts
                    .iter()
                    .map(|text| crate::openai::tokens::count(&self.model, text))
                    .sum(),
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
