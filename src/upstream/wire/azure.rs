//! Azure OpenAI: OpenAI's format at a deployment's URL. The resource is the provider's `base_url`,
//! each tier names its deployment, and calls go to
//! `{base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version}` (and
//! `…/embeddings?…` for an embedding deployment) with the key in the `api-key` header (or a
//! Bearer token, an Entra ID one, where `auth` says so). Requests and answers pass as they are;
//! the deployment is not the model, so a tier is priced by its `model` (or `base_model`), never by
//! the deployment's name.
//!
//! What differs from OpenAI is read here: a stream opens with a chunk that has no choice and only
//! `prompt_filter_results` (what the content filter found in the prompt), which is dropped, since
//! an OpenAI client reads `choices[0]` of every chunk but the usage chunk; a 429 says how long to
//! wait in `retry-after-ms` as well as `retry-after`; Azure's error bodies (`{"error": {"code",
//! "message"}}`, the type often missing or null) are completed into OpenAI's shape. A prompt its
//! content filter refuses is a 400 (`content_filter`): the request's, passed back as it came
//! (with the filter's findings), never retried on another tier nor counted by the breaker.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::super::{SseEvent, UpstreamError, retry_after, uri};
use crate::config::Provider;
use crate::openai::Endpoint;

/// The URL of each endpoint of one deployment, in [`Endpoint::ALL`] order.
pub(super) fn urls(
    provider: &Provider,
    base: &url::Url,
    deployment: &str,
) -> Result<Vec<Option<Uri>>, UpstreamError> {
    let version = provider.api_version.as_deref().unwrap_or_default();
    Endpoint::ALL
        .iter()
        .map(|endpoint| {
            // Azure serves Responses per resource, not per deployment, and no Messages: through
            // chat here.
            if matches!(endpoint, Endpoint::Responses | Endpoint::Messages) {
                return Ok(None);
            }
            uri(
                base,
                &format!(
                    "openai/deployments/{deployment}/{}?api-version={version}",
                    endpoint.path()
                ),
            )
            .map(Some)
        })
        .collect()
}

/// Whether a stream event is Azure's prompt-filter chunk: no choice, no usage, only what the
/// filter found. Only an event that names `prompt_filter_results` is parsed.
pub(super) fn is_prompt_filter_chunk(event: &SseEvent) -> bool {
    #[derive(Deserialize)]
    struct Chunk {
        #[serde(default)]
        choices: Vec<IgnoredAny>,
        #[serde(default)]
        usage: Option<IgnoredAny>,
        prompt_filter_results: Option<IgnoredAny>,
    }
    event.data.contains("\"prompt_filter_results\"")
        && serde_json::from_str::<Chunk>(&event.data).is_ok_and(|chunk| {
            chunk.choices.is_empty()
                && chunk.usage.is_none()
                && chunk.prompt_filter_results.is_some()
        })
}

/// What a status other than 2xx means. Azure's `retry-after-ms` is read first: it is the exact
/// wait where `retry-after` is rounded to seconds.
pub(super) fn refusal(status: StatusCode, body: Bytes, headers: &HeaderMap) -> UpstreamError {
    let wait = headers
        .get("retry-after-ms")
        .and_then(|value| value.to_str().ok())
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms).min(super::super::MAX_RETRY_AFTER))
        .or_else(|| retry_after(headers));
    if super::openai::quota_spent(status, &body) {
        return UpstreamError::quota_exhausted(status, openai_shaped(body), wait);
    }
    UpstreamError::status(status, openai_shaped(body), wait)
}

/// Azure's error body with what OpenAI's shape has and Azure's may lack (`type`, `param`) filled
/// in; its own fields (`innererror` with the content filter's findings, `status`) kept.
fn openai_shaped(body: Bytes) -> Bytes {
    let Ok(mut value) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    let Some(error) = value.get_mut("error").and_then(Value::as_object_mut) else {
        return body;
    };
    if !error.get("type").is_some_and(Value::is_string) {
        error.insert("type".into(), Value::String("invalid_request_error".into()));
    }
    error.entry("param").or_insert(Value::Null);
    error.entry("code").or_insert(Value::Null);
    error
        .entry("message")
        .or_insert(Value::String(String::new()));
    Bytes::from(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> SseEvent {
        SseEvent {
            raw: Bytes::from(format!("data: {data}\n\n")),
            name: None,
            data: data.to_string(),
            keep_alive: false,
        }
    }

    /// Only the chunk with no choice, no usage and the filter's findings is Azure's own.
    #[test]
    fn only_the_prompt_filter_chunk_is_dropped() {
        let filter = r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}"#;
        assert!(is_prompt_filter_chunk(&event(filter)));
        for kept in [
            r#"{"choices":[{"index":0,"delta":{"content":"hi"},"content_filter_results":{}}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
            r#"{"choices":[{"index":0,"delta":{}}],"prompt_filter_results":[]}"#,
            "[DONE]",
        ] {
            assert!(!is_prompt_filter_chunk(&event(kept)), "{kept}");
        }
    }

    /// A 429's wait is read from `retry-after-ms` first; Azure's error body gains OpenAI's fields
    /// and keeps its own; the content filter's refusal is the request's.
    #[test]
    fn azures_refusals_read_in_openais_terms() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        headers.insert("retry-after-ms", "6500".parse().unwrap());
        let limited = refusal(
            StatusCode::TOO_MANY_REQUESTS,
            Bytes::from_static(br#"{"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation have exceeded token rate limit. Please retry after 7 seconds."}}"#),
            &headers,
        );
        assert_eq!(limited.retry_after, Some(Duration::from_millis(6500)));
        let body: Value = serde_json::from_slice(&limited.body).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "429");
        assert!(body["error"].get("param").is_some());

        let filtered = refusal(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(br#"{"error": {"message": "The response was filtered", "type": null, "param": "prompt", "code": "content_filter", "status": 400, "innererror": {"code": "ResponsibleAIPolicyViolation"}}}"#),
            &HeaderMap::new(),
        );
        assert!(!filtered.is_retryable() && !filtered.counts_against_provider());
        let body: Value = serde_json::from_slice(&filtered.body).unwrap();
        assert_eq!(
            body["error"]["innererror"]["code"],
            "ResponsibleAIPolicyViolation"
        );
        assert_eq!(body["error"]["param"], "prompt");
    }
}
