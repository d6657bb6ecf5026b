//! OpenAI's format, which is the gateway's own: the key as a Bearer token, the endpoints under the
//! base URL, the request and the answer passed through as they are. An answer read from another
//! format into the gateway's model ([`super::model`]) is written here in OpenAI's shapes: the
//! chat completion, and the stream's chunks with the usage chunk last.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use serde_json::{Value, json};

use super::super::{SseEvent, UpstreamError, retry_after, uri};
use super::model::{Answer, Delta};
use crate::config::Provider;
use crate::openai::{Endpoint, Usage};

/// `Bearer <key>`, marked sensitive so that no debug output shows it.
pub(super) fn bearer(key: &str) -> HeaderValue {
    let mut value = HeaderValue::try_from(format!("Bearer {key}"))
        .expect("configuration admits only header-safe keys");
    value.set_sensitive(true);
    value
}

pub(super) fn urls(
    provider: &Provider,
    base: &url::Url,
) -> Result<Vec<Option<Uri>>, UpstreamError> {
    Endpoint::ALL
        .iter()
        .map(|endpoint| match endpoint {
            // Served through chat completions unless the provider's server serves Responses.
            Endpoint::Responses if !provider.serves_responses => Ok(None),
            // Anthropic's format in front reaches OpenAI-compatible servers as chat completions.
            Endpoint::Messages => Ok(None),
            _ => uri(base, endpoint.path()).map(Some),
        })
        .collect()
}

/// Checks that a successful body is a JSON object and reads its usage. A local server that answers
/// 200 with a half-written body is a failure of that tier, not an answer; an unreadable usage block
/// is not (its tokens are counted instead).
pub(super) fn answer(
    endpoint: Endpoint,
    body: Bytes,
) -> Result<(Bytes, Option<Usage>), UpstreamError> {
    let usage = (endpoint.spec().answer_usage)(&body)
        .map_err(|err| UpstreamError::malformed(format!("answer is not valid JSON: {err}")))?;
    Ok((body, usage))
}

pub(super) fn refusal(status: StatusCode, body: Bytes, headers: &HeaderMap) -> UpstreamError {
    if quota_spent(status, &body) {
        return UpstreamError::quota_exhausted(status, body, retry_after(headers));
    }
    UpstreamError::status(status, body, retry_after(headers))
}

/// Whether an OpenAI-shaped refusal says the provider account's money is spent: 402 Payment
/// Required (OpenRouter's and other resellers' "insufficient credits"), or OpenAI's 429 whose
/// code is `insufficient_quota` ("You exceeded your current quota"), which no wait ends, unlike
/// its other 429s.
pub(super) fn quota_spent(status: StatusCode, body: &[u8]) -> bool {
    if status == StatusCode::PAYMENT_REQUIRED {
        return true;
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Detail,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        #[serde(default)]
        code: Option<Value>,
        #[serde(rename = "type", default)]
        kind: Option<Value>,
    }
    status == StatusCode::TOO_MANY_REQUESTS
        && serde_json::from_slice::<Envelope>(body).is_ok_and(|envelope| {
            [envelope.error.code, envelope.error.kind]
                .iter()
                .flatten()
                .any(|value| value == "insufficient_quota")
        })
}

/// Seconds since the epoch, as OpenAI dates an answer.
pub(super) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A whole answer as OpenAI's chat completion.
pub(super) fn write_answer(answer: &Answer, created: u64) -> Bytes {
    let mut message = json!({"role": "assistant", "content": answer.text, "refusal": null});
    if !answer.tool_calls.is_empty() {
        message["tool_calls"] = answer
            .tool_calls
            .iter()
            .map(|call| {
                json!({
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                })
            })
            .collect();
    }
    let mut completion = json!({
        "id": answer.id,
        "object": "chat.completion",
        "created": created,
        "model": answer.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": answer.finish.map(|finish| finish.openai()),
        }],
    });
    if let Some(usage) = &answer.usage {
        completion["usage"] = usage_json(usage);
    }
    Bytes::from(completion.to_string())
}

/// Usage in OpenAI's shape, the cache writes as `prompt_tokens_details.cache_write_tokens` (the
/// field OpenAI's SDK reads them from, and where [`Usage`] reads them back).
fn usage_json(usage: &Usage) -> Value {
    let mut details = json!({"cached_tokens": usage.cached_tokens});
    if usage.cache_write_tokens > 0 {
        details["cache_write_tokens"] = usage.cache_write_tokens.into();
    }
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": details,
    })
}

/// Writes a stream's pieces as OpenAI's chunks, each with the answer's id, model and date.
pub(super) struct ChunkWriter {
    id: String,
    model: String,
    created: u64,
}

impl ChunkWriter {
    pub(super) fn new() -> ChunkWriter {
        ChunkWriter {
            id: String::new(),
            model: String::new(),
            created: now(),
        }
    }

    pub(super) fn write(&mut self, delta: Delta) -> SseEvent {
        let choice = |delta: Value, finish: Option<&str>| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        let (choices, usage) = match delta {
            Delta::Start { id, model } => {
                self.id = id;
                self.model = model;
                (
                    choice(json!({"role": "assistant", "content": ""}), None),
                    None,
                )
            }
            Delta::Text(text) => (choice(json!({"content": text}), None), None),
            Delta::ToolCall { index, id, name } => (
                choice(
                    json!({"tool_calls": [{
                        "index": index,
                        "id": id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }]}),
                    None,
                ),
                None,
            ),
            Delta::Arguments { index, fragment } => (
                choice(
                    json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
                    None,
                ),
                None,
            ),
            Delta::Finish(finish) => (choice(json!({}), Some(finish.openai())), None),
            Delta::Usage(usage) => (json!([]), Some(usage_json(&usage))),
            Delta::Error {
                kind,
                code,
                message,
            } => {
                let error = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
                return event(error.to_string());
            }
            Delta::KeepAlive => {
                return SseEvent {
                    raw: Bytes::from_static(b": keep-alive\n\n"),
                    name: None,
                    data: String::new(),
                    keep_alive: true,
                };
            }
            Delta::Done => return event("[DONE]".to_string()),
        };
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        event(chunk.to_string())
    }
}

/// An event of one `data` line, as the gateway writes its own.
fn event(data: String) -> SseEvent {
    SseEvent {
        raw: Bytes::from(format!("data: {data}\n\n")),
        name: None,
        data,
        keep_alive: false,
    }
}

#[cfg(test)]
mod tests {
    /// A 402 and OpenAI's `insufficient_quota` 429 say the account's money is spent; any other
    /// 429 is a rate limit that a wait ends.
    #[test]
    fn spent_quota_is_told_from_a_rate_limit() {
        use http::StatusCode;
        let quota = br#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let limit = br#"{"error":{"message":"Rate limit reached for gpt-4o","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        assert!(super::quota_spent(StatusCode::TOO_MANY_REQUESTS, quota));
        assert!(super::quota_spent(
            StatusCode::PAYMENT_REQUIRED,
            b"Insufficient credits"
        ));
        assert!(!super::quota_spent(StatusCode::TOO_MANY_REQUESTS, limit));
        assert!(!super::quota_spent(StatusCode::BAD_REQUEST, quota));
    }

    proptest::proptest! {
        /// Any bytes as an answer body: an error or a reading of its usage, never a panic.
        #[test]
        fn answer_bodies_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            for endpoint in crate::openai::Endpoint::ALL {
                let _ = super::answer(endpoint, bytes::Bytes::from(body.clone()));
            }
        }
    }
}
