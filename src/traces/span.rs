//! A finished request's spans, following the OpenTelemetry GenAI semantic conventions: one of kind
//! SERVER for the request (`{gen_ai.operation.name} {gen_ai.request.model}`, the model the client
//! asked for, which may be a route) and one of kind CLIENT per upstream call (named for the tier's
//! model), each with its real start and end. Built on the exporter's task, never on the request
//! path.

use std::borrow::Cow;

use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::record::{Called, Finished};
use crate::config::{Api, Provider, UpstreamServer};
use crate::openai::Endpoint;

/// The request's span first, then its calls'.
pub(super) fn spans(finished: Finished, scope: &InstrumentationScope) -> Vec<SpanData> {
    let Finished {
        trace,
        ended,
        endpoint,
        stream,
        cache,
        attempts,
        answer,
        cached_model,
        input,
        streamed_text,
        stream_facts,
        row,
    } = finished;
    let operation = operation(endpoint);
    let answer = answer.as_deref().and_then(Answer::read);
    let (streamed_id, streamed_model, streamed_reasons) = match stream_facts {
        Some(facts) => (facts.id, facts.model, Some(facts.finish_reasons)),
        None => (None, None, None),
    };
    let response_model = answer
        .as_ref()
        .and_then(|answer| answer.model.as_deref().map(str::to_string))
        .or(streamed_model)
        .or(cached_model);
    let response_id = answer
        .as_ref()
        .and_then(|answer| answer.id.as_deref().map(str::to_string))
        .or(streamed_id);
    let finish_reasons = answer.as_ref().map(Answer::finish_reasons).or_else(|| {
        streamed_reasons.map(|reasons| reasons.into_iter().map(StringValue::from).collect())
    });
    let failed = row.status >= 400 || row.error_kind.is_some();
    let error_type = failed.then(|| {
        row.error_kind
            .clone()
            .unwrap_or_else(|| row.status.to_string())
    });
    let context = |span_id| {
        SpanContext::new(
            trace.trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        )
    };

    let mut attributes = vec![
        KeyValue::new("gen_ai.operation.name", operation),
        KeyValue::new("gen_ai.request.model", trace.requested_model.clone()),
        KeyValue::new("tierwise.request_id", row.id.clone()),
        KeyValue::new("http.response.status_code", i64::from(row.status)),
    ];
    let served_by = attempts.iter().rev().find(|called| called.error.is_none());
    if let Some(called) = served_by {
        attributes.push(KeyValue::new(
            "gen_ai.provider.name",
            provider_name(&called.tier.provider, &called.server),
        ));
    } else if let Some(provider) = &row.provider {
        attributes.push(KeyValue::new("gen_ai.provider.name", provider.clone()));
    }
    let mut response = Vec::new();
    if let Some(model) = &response_model {
        response.push(KeyValue::new("gen_ai.response.model", model.clone()));
    }
    if let Some(id) = response_id {
        response.push(KeyValue::new("gen_ai.response.id", id));
    }
    if let Some(reasons) = finish_reasons.filter(|reasons| !reasons.is_empty()) {
        response.push(KeyValue::new(
            "gen_ai.response.finish_reasons",
            Value::Array(reasons.into()),
        ));
    }
    // Tokens a stream without usage has yet to count are unknown here: none rather than zero.
    if row.tokens_in > 0 || row.tokens_out > 0 {
        response.push(KeyValue::new(
            "gen_ai.usage.input_tokens",
            row.tokens_in as i64,
        ));
        response.push(KeyValue::new(
            "gen_ai.usage.output_tokens",
            row.tokens_out as i64,
        ));
    }
    attributes.extend(response.iter().cloned());
    let optional = [
        ("tierwise.route", row.route.clone()),
        ("tierwise.tier", row.tier.clone()),
        ("tierwise.fallback_reason", row.fallback.clone()),
        ("tierwise.cache", cache.map(str::to_string)),
        ("tierwise.key_name", row.key_name.clone()),
        ("error.type", error_type.clone()),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            attributes.push(KeyValue::new(key, value));
        }
    }
    if let Some(cost) = row.cost_pusd {
        attributes.push(KeyValue::new("tierwise.cost_usd", cost as f64 / 1e12));
    }
    attributes.push(KeyValue::new("tierwise.stream", stream));
    if let Some(input) = input
        .as_deref()
        .and_then(|body| input_messages(endpoint, body))
    {
        attributes.push(KeyValue::new("gen_ai.input.messages", input));
    }
    if trace.capture_content {
        let output = match (&streamed_text, &answer) {
            (Some(text), _) => Some(output_messages(&[(text.as_str(), None)])),
            (None, Some(answer)) => answer.output(),
            _ => None,
        };
        if let Some(output) = output {
            attributes.push(KeyValue::new("gen_ai.output.messages", output));
        }
    }

    let mut spans = Vec::with_capacity(1 + attempts.len());
    spans.push(SpanData {
        span_context: context(trace.span_id),
        parent_span_id: trace
            .parent
            .unwrap_or(opentelemetry::trace::SpanId::INVALID),
        parent_span_is_remote: trace.parent.is_some(),
        span_kind: SpanKind::Server,
        name: Cow::Owned(format!("{operation} {}", trace.requested_model)),
        start_time: trace.started,
        end_time: ended,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: status(error_type),
        instrumentation_scope: scope.clone(),
    });
    let last = attempts.len().saturating_sub(1);
    for (index, called) in attempts.iter().enumerate() {
        // A stream's call lasts until its last chunk, not until its first.
        let end_time = if stream && index == last && called.error.is_none() {
            ended
        } else {
            called.span.started + called.latency
        };
        let mut attributes = attempt_attributes(operation, called);
        if called.error.is_none() {
            attributes.extend(response.iter().cloned());
        }
        spans.push(SpanData {
            span_context: context(called.span.span_id),
            parent_span_id: trace.span_id,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: Cow::Owned(format!("{operation} {}", called.tier.model)),
            start_time: called.span.started,
            end_time: end_time.max(called.span.started),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: status(called.error.clone()),
            instrumentation_scope: scope.clone(),
        });
    }
    spans
}

fn attempt_attributes(operation: &'static str, called: &Called) -> Vec<KeyValue> {
    let url = &called.server.base_url;
    let mut attributes = vec![
        KeyValue::new("gen_ai.operation.name", operation),
        KeyValue::new("gen_ai.request.model", called.tier.model.clone()),
        KeyValue::new(
            "gen_ai.provider.name",
            provider_name(&called.tier.provider, &called.server),
        ),
        KeyValue::new("tierwise.tier", called.tier.name.clone()),
        KeyValue::new("tierwise.server", called.server.name.clone()),
    ];
    if let Some(host) = url.host_str() {
        attributes.push(KeyValue::new("server.address", host.to_string()));
    }
    if let Some(port) = url.port_or_known_default() {
        attributes.push(KeyValue::new("server.port", i64::from(port)));
    }
    if let Some(error) = &called.error {
        attributes.push(KeyValue::new("error.type", error.clone()));
    }
    attributes
}

fn status(error_type: Option<String>) -> Status {
    match error_type {
        Some(error) => Status::error(error),
        None => Status::Unset,
    }
}

/// `gen_ai.operation.name`'s well-known value for the endpoint.
fn operation(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Messages => "chat",
        Endpoint::Embeddings => "embeddings",
    }
}

/// `gen_ai.provider.name`: the conventions' well-known value where the provider is one (OpenAI's
/// own API, Azure OpenAI, Anthropic); for a server that only speaks OpenAI's format (vLLM, Ollama,
/// llama.cpp, another gateway) the provider's name in the config, since "openai" would claim calls
/// that never reached OpenAI.
fn provider_name(provider: &Provider, server: &UpstreamServer) -> String {
    match provider.api {
        Api::Anthropic => "anthropic".into(),
        Api::Azure => "azure.ai.openai".into(),
        Api::OpenAi if server.base_url.host_str() == Some("api.openai.com") => "openai".into(),
        Api::OpenAi => provider.name.clone(),
    }
}

/// What a whole answer says about itself: chat's and the Responses API's fields, and Anthropic's.
/// Read in one pass over the answer's bytes, borrowing its strings where they have no escapes and
/// skipping everything else (a message is kept as its raw text, read only to capture content).
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Vec<Choice<'a>>,
    /// Anthropic's Messages and the Responses API.
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

impl<'a> Answer<'a> {
    fn read(body: &'a [u8]) -> Option<Answer<'a>> {
        serde_json::from_slice(body).ok()
    }

    fn finish_reasons(&self) -> Vec<StringValue> {
        if self.choices.is_empty() {
            return self
                .stop_reason
                .iter()
                .chain(&self.status)
                .take(1)
                .map(|reason| StringValue::from(reason.to_string()))
                .collect();
        }
        self.choices
            .iter()
            .filter_map(|choice| choice.finish_reason.as_deref())
            .map(|reason| StringValue::from(reason.to_string()))
            .collect()
    }

    fn output(&self) -> Option<String> {
        let messages: Vec<(Message, Option<&str>)> = self
            .choices
            .iter()
            .filter_map(|choice| {
                let message = serde_json::from_str(choice.message?.get()).ok()?;
                Some((message, choice.finish_reason.as_deref()))
            })
            .collect();
        let texts: Vec<(&str, Option<&str>)> = messages
            .iter()
            .filter_map(|(message, finish)| Some((message.content.as_deref()?, *finish)))
            .collect();
        (!texts.is_empty()).then(|| output_messages(&texts))
    }
}

/// `gen_ai.output.messages`: the answer's texts as the conventions' assistant messages.
fn output_messages(texts: &[(&str, Option<&str>)]) -> String {
    let messages: Vec<serde_json::Value> = texts
        .iter()
        .map(|(text, finish)| {
            let mut message = serde_json::json!({
                "role": "assistant",
                "parts": [{"type": "text", "content": text}],
            });
            if let Some(finish) = finish {
                message["finish_reason"] = (*finish).into();
            }
            message
        })
        .collect();
    serde_json::Value::Array(messages).to_string()
}

/// `gen_ai.input.messages`: a chat request's messages (or a Responses request's input) as the
/// conventions' role-and-parts messages; text parts only, other parts named by type.
fn input_messages(endpoint: Endpoint, body: &[u8]) -> Option<String> {
    use serde_json::{Value as Json, json};
    let body: Json = serde_json::from_slice(body).ok()?;
    let part = |content: &Json| -> Vec<Json> {
        match content {
            Json::String(text) => vec![json!({"type": "text", "content": text})],
            Json::Array(parts) => parts
                .iter()
                .map(|part| match part.get("text").and_then(Json::as_str) {
                    Some(text) => json!({"type": "text", "content": text}),
                    None => json!({"type": part.get("type").cloned().unwrap_or(Json::Null)}),
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let messages: Vec<Json> = match endpoint {
        // Anthropic's messages are chat's in shape: a role, and text or parts with text.
        Endpoint::ChatCompletions | Endpoint::Messages => body
            .get("messages")?
            .as_array()?
            .iter()
            .map(|message| {
                json!({
                    "role": message.get("role").cloned().unwrap_or(Json::Null),
                    "parts": message.get("content").map(part).unwrap_or_default(),
                })
            })
            .collect(),
        Endpoint::Responses => match body.get("input")? {
            Json::String(text) => {
                vec![json!({"role": "user", "parts": part(&Json::String(text.clone()))})]
            }
            Json::Array(items) => items
                .iter()
                .map(|item| {
                    json!({
                        "role": item.get("role").cloned().unwrap_or(Json::Null),
                        "parts": item.get("content").map(part).unwrap_or_default(),
                    })
                })
                .collect(),
            _ => return None,
        },
        Endpoint::Embeddings => return None,
    };
    Some(Json::Array(messages).to_string())
}
