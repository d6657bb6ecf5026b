//! Token counts as upstreams report them (`usage` in OpenAI's answers and final stream chunks).
//! Read leniently: OpenAI, vLLM, Ollama and llama.cpp disagree on which fields they send, and some
//! send `null` where a number belongs. A usage block tierwise cannot read means the tokens are
//! counted by tierwise's tokenizer, never that a good answer is thrown away.

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Every input token, those read from and written to a prompt cache included.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Input read from the provider's prompt cache (OpenAI's `cached_tokens`).
    pub cached_tokens: u64,
    /// Input written to the provider's prompt cache, which Anthropic bills above the input price:
    /// `prompt_tokens_details.cache_write_tokens`, as OpenAI's own SDK names it.
    pub cache_write_tokens: u64,
}

impl Usage {
    /// Reads a `usage` value; `None` when it is absent, `null` or has no token counts at all.
    pub fn from_raw(raw: &RawValue) -> Option<Usage> {
        let wire: WireUsage = serde_json::from_str(raw.get()).ok()?;
        if wire.prompt_tokens.is_none() && wire.completion_tokens.is_none() {
            return None;
        }
        Some(Usage {
            prompt_tokens: wire.prompt_tokens.unwrap_or(0),
            completion_tokens: wire.completion_tokens.unwrap_or(0),
            cached_tokens: wire
                .prompt_tokens_details
                .as_ref()
                .and_then(|details| details.cached_tokens)
                .unwrap_or(0),
            cache_write_tokens: wire
                .prompt_tokens_details
                .and_then(|details| details.cache_write_tokens)
                .unwrap_or(0),
        })
    }

    /// The usage of a whole JSON answer, or `Err` when the body is not a JSON object at all.
    pub fn of_answer(body: &[u8]) -> Result<Option<Usage>, serde_json::Error> {
        #[derive(Deserialize)]
        struct Answer<'a> {
            #[serde(borrow, default)]
            usage: Option<&'a RawValue>,
        }
        let answer: Answer<'_> = serde_json::from_slice(body)?;
        Ok(answer.usage.and_then(Usage::from_raw))
    }
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default, deserialize_with = "count")]
    prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "details")]
    prompt_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default, deserialize_with = "count")]
    cached_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    cache_write_tokens: Option<u64>,
}

/// A token count: a non-negative integer, or nothing (null, a string, a negative or fractional
/// number all read as absent).
fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(value.as_u64())
}

fn details<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Details>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).ok())
}

#[cfg(test)]
mod tests {
    use super::Usage;

    fn usage(json: &str) -> Option<Usage> {
        Usage::of_answer(json.as_bytes()).unwrap()
    }

    #[test]
    fn every_servers_usage_reads_and_nulls_are_absent_not_fatal() {
        let openai = r#"{"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0}}}"#;
        assert_eq!(
            usage(openai),
            Some(Usage {
                prompt_tokens: 10,
                completion_tokens: 2,
                cached_tokens: 4,
                cache_write_tokens: 0,
            })
        );
        let vllm_null_details =
            r#"{"usage":{"prompt_tokens":10,"completion_tokens":2,"prompt_tokens_details":null}}"#;
        assert_eq!(usage(vllm_null_details).unwrap().cached_tokens, 0);
        let null_cached = r#"{"usage":{"prompt_tokens":10,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":null}}}"#;
        assert_eq!(usage(null_cached).unwrap().prompt_tokens, 10);
        let partial = r#"{"usage":{"completion_tokens":7}}"#;
        assert_eq!(usage(partial).unwrap().completion_tokens, 7);
        assert_eq!(usage(r#"{"usage":null}"#), None);
        assert_eq!(usage(r#"{"usage":{}}"#), None);
        assert_eq!(usage(r#"{"usage":"n/a"}"#), None);
        assert_eq!(
            usage(r#"{"usage":{"prompt_tokens":-1,"completion_tokens":"3"}}"#),
            None
        );
        assert_eq!(usage(r#"{"choices":[]}"#), None);
        assert!(Usage::of_answer(b"{not json").is_err());
        assert!(Usage::of_answer(b"[1,2]").is_err());
    }
}

/// Anthropic's usage (`input_tokens`, `output_tokens`, `cache_creation_input_tokens`,
/// `cache_read_input_tokens`), each count where given: a stream spreads them over its events —
/// `message_start` the input and the cache's reads and writes, `message_delta` the output and,
/// from newer servers, the others again, as totals. Its `input_tokens` counts only the input
/// neither read from nor written to the prompt cache. Read leniently: `null` is absent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct AnthropicUsage {
    #[serde(default, deserialize_with = "count")]
    pub input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    pub output_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    pub cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// A later event's counts over these: each given count replaces the one before, and one left
    /// out (or `null`) keeps it — a `message_delta` without the cache's figures must not zero
    /// `message_start`'s, which would book cached input as uncached (or as free). The anthropic
    /// SDK's stream accumulator merges them the same way.
    pub fn update(&mut self, later: AnthropicUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    /// In the gateway's terms, whose prompt tokens hold the cache's reads and writes. A usage
    /// without both the input and the output is none: a missing count read as 0 would be booked
    /// as exact and bill a call as free, where without usage the gateway counts the tokens itself
    /// and says so.
    pub fn usage(self) -> Option<Usage> {
        let output = self.output_tokens?;
        Some(Usage {
            completion_tokens: output,
            ..self.prompt()?
        })
    }

    /// The input alone (the output left at 0), where the input is given.
    pub fn prompt(self) -> Option<Usage> {
        let input = self.input_tokens?;
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let written = self.cache_creation_input_tokens.unwrap_or(0);
        Some(Usage {
            prompt_tokens: input.saturating_add(read).saturating_add(written),
            completion_tokens: 0,
            cached_tokens: read,
            cache_write_tokens: written,
        })
    }
}
