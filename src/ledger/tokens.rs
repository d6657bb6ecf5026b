//! Token counts for upstreams that report no usage (some local servers, some streams). Counted with
//! OpenAI's own tokenizers (o200k for the gpt-4o, gpt-4.1, gpt-5 and o-series families, cl100k
//! otherwise) and always marked as estimated in the ledger.
//!
//! Counting never runs on a serving thread's event loop: the first use of o200k takes ~90 ms and
//! ~45 MB to load it (cl100k ~30 ms, ~25 MB), and counting an 800-token prompt takes ~40 µs after
//! that, all of which would stall every other request on that thread (docs/benchmarks.md). A
//! non-streamed answer is counted on tokio's blocking pool while its request waits; a stream's
//! tokens are counted by the ledger writer.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use tiktoken_rs::CoreBPE;

use super::record::Tokens;
use crate::route::request::Endpoint;

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
    /// Counts here and now: for the ledger writer and the blocking pool, not for an event loop.
    pub fn count(&self) -> Tokens {
        Tokens {
            input: prompt(self.endpoint, &self.model, &self.request),
            cached: 0,
            output: match (&self.answer, self.endpoint) {
                (Answer::Text(text), _) => count(&self.model, text),
                (Answer::Body(body), Endpoint::ChatCompletions) => completion(&self.model, body),
                (Answer::Body(_), Endpoint::Embeddings) => 0,
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

fn tokenizer(model: &str) -> &'static CoreBPE {
    let o200k = ["gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4", "chatgpt-4o"];
    if o200k.iter().any(|family| model.starts_with(family)) {
        tiktoken_rs::o200k_base_singleton()
    } else {
        tiktoken_rs::cl100k_base_singleton()
    }
}

pub fn count(model: &str, text: &str) -> u64 {
    tokenizer(model).encode_with_special_tokens(text).len() as u64
}

/// Input tokens of a request body, counted the way OpenAI's cookbook does for chat: each message's
/// text plus 3 tokens of framing, plus 3 that prime the answer.
pub fn prompt(endpoint: Endpoint, model: &str, body: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct Chat {
        #[serde(default)]
        messages: Vec<Value>,
    }
    #[derive(Deserialize)]
    struct Embed {
        input: Value,
    }
    match endpoint {
        Endpoint::ChatCompletions => {
            let Ok(chat) = serde_json::from_slice::<Chat>(body) else {
                return 0;
            };
            let text: u64 = chat
                .messages
                .iter()
                .map(|message| 3 + count(model, &text_of(&message["content"])))
                .sum();
            text + 3
        }
        Endpoint::Embeddings => match serde_json::from_slice::<Embed>(body).map(|e| e.input) {
            Ok(Value::String(text)) => count(model, &text),
            Ok(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => count(model, text),
                    // Already tokens: a number or an array of numbers.
                    Value::Array(tokens) => tokens.len() as u64,
                    _ => 1,
                })
                .sum(),
            _ => 0,
        },
    }
}

/// The text of a message's `content`: a string, or the text parts of a list of parts.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Output tokens of a non-streamed chat answer: the text of every choice.
pub fn completion(model: &str, answer: &[u8]) -> u64 {
    let Ok(answer) = serde_json::from_slice::<Value>(answer) else {
        return 0;
    };
    answer["choices"]
        .as_array()
        .map(|choices| {
            choices
                .iter()
                .map(|choice| count(model, &text_of(&choice["message"]["content"])))
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_with_the_model_family_tokenizer() {
        assert_eq!(count("gpt-4o", "hello world"), 2);
        assert_eq!(count("mistral-7b", "hello world"), 2);
        let body = br#"{"model":"x","messages":[{"role":"user","content":"hello world"}]}"#;
        assert_eq!(prompt(Endpoint::ChatCompletions, "gpt-4o", body), 3 + 2 + 3);
        let parts =
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"hello world"}]}]}"#;
        assert_eq!(prompt(Endpoint::ChatCompletions, "gpt-4o", parts), 8);
        let embed = br#"{"input":["hello world","hello"]}"#;
        assert_eq!(
            prompt(Endpoint::Embeddings, "text-embedding-3-small", embed),
            3
        );
        let answer = br#"{"choices":[{"message":{"content":"hello world"}}]}"#;
        assert_eq!(completion("gpt-4o", answer), 2);
    }
}
