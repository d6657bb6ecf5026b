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
