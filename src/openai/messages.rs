//! `/v1/messages`, Anthropic's Messages API in front: a body must hold `messages` and
//! `max_tokens` (Anthropic requires it), and only fields of Anthropic's API; a tier sets its system
//! prompt as `system` and fills in its `temperature` where the client gave none; prompts and
//! answers are counted block by block; stream events are read for the text, the end and the usage;
//! errors are written in Anthropic's shape (`{"type": "error", "error": {"type", "message"}}`).
//!
//! A tier whose provider speaks Anthropic's format gets the request as it came (with the tier's
//! changes) and its answer goes back as it came. Any other tier gets it as a chat completion
//! ([`VIA_CHAT`]), and its answer — whole, or a stream of chat chunks — is written back in
//! Anthropic's shapes by the gateway: one message with a `msg_…` id, and the stream events in the
//! order Anthropic documents them: `message_start`, per content block `content_block_start` (the
//! first followed by a `ping`), its `content_block_delta`s (`text_delta` or `input_json_delta`) and
//! `content_block_stop`, then `message_delta` with the stop reason and the usage, and
//! `message_stop`.
//!
//! What is carried to chat: `system` (a string or text blocks) as the system message; user and
//! assistant turns with text and image blocks (base64 as a data URL, a URL source as it is);
//! `tool_use` blocks as the assistant's tool calls, `tool_result` blocks as tool messages (before
//! the turn's other blocks, as chat wants them right after the call); `thinking` blocks of earlier
//! turns are left out (chat servers take no thinking back). Custom `tools`, `tool_choice` (its
//! `disable_parallel_tool_use` as `parallel_tool_calls: false`), `max_tokens`, `stop_sequences` as
//! `stop`, `temperature`, `top_p`, `metadata.user_id` as `user`; `top_k` to every server but
//! OpenAI's, which has no such parameter. What only Anthropic's servers can do (server tools,
//! documents, enabled `thinking`, `container`, `mcp_servers`…) makes a translated tier pass the
//! request on, as does any field the gateway does not know: a tier of Anthropic's format takes
//! every field, a translated tier drops none.

mod prompt;

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::request::raw;
use super::tokens::{bounded_count, count};
use super::{
    AnthropicUsage, Chunk, Edits, EndpointSpec, ErrorReply, RequestBody, RequestError, StreamMarks,
    StreamTranslator, Usage, ViaChat,
};
use crate::config::{Abilities, ChainTier, takes_max_completion_tokens};

pub use prompt::validate_prompt;

pub const SPEC: EndpointSpec = EndpointSpec {
    path: "messages",
    ledger_name: "messages",
    validate,
    check_prompt: Some(validate_prompt),
    rewrite,
    count_prompt,
    count_answer,
    warmup,
    answer_texts: Some(answer_texts),
    // Never sampled: a shadow check's scorers read chat's and Responses' answers.
    said: None,
    needs,
    answer_limits: &["max_tokens"],
    answer_budget,
    answer_usage,
    read_event,
    done: None,
    interrupted,
    via_chat: Some(VIA_CHAT),
    error_body,
    key_header: Some("x-api-key"),
    count_tokens: Some(count_tokens),
    // Anthropic's own overload status: its SDKs raise `OverloadedError` for it (and retry it).
    overloaded_status: Some(529),
    // What an Anthropic tier reads of the client's request besides its body: the API version it
    // was written for and the beta features it uses (prompt caching, long context, tool betas).
    passed_headers: &["anthropic-version", "anthropic-beta"],
};

/// A message is one answer: its text is its `text` blocks in order (what the SDKs join).
fn answer_texts(answer: &mut Value) -> Vec<Vec<&mut String>> {
    let parts = answer
        .get_mut("content")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter(|block| block["type"] == "text")
        .filter_map(|block| match block.get_mut("text") {
            Some(Value::String(text)) => Some(text),
            _ => None,
        })
        .collect();
    vec![parts]
}

/// How a tier that serves only chat completions is spoken to.
pub const VIA_CHAT: ViaChat = ViaChat {
    request: to_chat,
    prompt_first: true,
    answer: from_chat,
    stream: |request, prompt_tokens| Box::new(ChatEvents::new(request, prompt_tokens)),
};

/// Fields of Anthropic's API that a chat completions server has no way to honour: a translated
/// tier passes the request on to the next, and a tier of Anthropic's format takes them as they are.
const ANTHROPIC_ONLY: [&str; 5] = [
    "container",
    "mcp_servers",
    "context_management",
    "service_tier",
    "output_format",
];

/// Fields of Anthropic's API that every tier is given (translated for chat); any other field
/// reaches only a tier of Anthropic's format.
const KNOWN: [&str; 13] = [
    "model",
    "messages",
    "system",
    "max_tokens",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "metadata",
    "tools",
    "tool_choice",
    "thinking",
];

/// Any top-level field is taken: Anthropic adds fields often (`output_config`, `inference_geo`,
/// `speed`, a top-level `cache_control`…), and a tier of Anthropic's format passes them on as they
/// are. A translated tier refuses what it does not know ([`to_chat`]), so the request moves to a
/// tier that can take it, or the client gets a 400 naming the field. The prompt itself is checked
/// apart, by [`validate_prompt`] (the spec's `check_prompt`), which `count_tokens` shares.
fn validate(body: &RequestBody<'_>) -> Result<(), RequestError> {
    match body.field("max_tokens") {
        None => Err(RequestError::field("max_tokens", "Field required")),
        Some(value) if serde_json::from_str::<u64>(value.get()).is_ok_and(|n| n > 0) => Ok(()),
        Some(_) => Err(RequestError::field(
            "max_tokens",
            "must be a whole number of tokens, at least 1",
        )),
    }
}

fn rewrite(body: &RequestBody<'_>, step: &ChainTier, edits: &mut Edits) {
    if let Some(prompt) = &step.system_prompt {
        edits.set("system", raw(prompt));
    }
    if let Some(temperature) = step.tier.temperature
        && !body.gives("temperature")
    {
        // Anthropic's range is 0–1.
        edits.set("temperature", raw(&temperature.min(1.0)));
    }
}

/// Custom tools, image blocks in any message.
fn needs(body: &RequestBody<'_>) -> Abilities {
    let tools = body
        .field("tools")
        .is_some_and(|tools| !matches!(tools.get().trim(), "null" | "[]"));
    let vision = body
        .field("messages")
        .is_some_and(|messages| prompt::has_image(messages.get()));
    Abilities {
        tools,
        json_schema: false,
        vision,
    }
}

fn answer_budget(body: &RequestBody<'_>) -> Option<u64> {
    serde_json::from_str::<u64>(body.field("max_tokens")?.get()).ok()
}

/// Anthropic's usage in the gateway's terms: its `input_tokens` leaves out the cache's reads and
/// writes, which the gateway's prompt tokens hold.
fn usage_of(usage: &Value) -> Option<Usage> {
    AnthropicUsage::deserialize(usage).ok()?.usage()
}

/// Usage in Anthropic's shape.
fn usage_json(usage: Option<&Usage>) -> Value {
    let usage = usage.copied().unwrap_or_default();
    json!({
        "input_tokens": usage
            .prompt_tokens
            .saturating_sub(usage.cached_tokens.saturating_add(usage.cache_write_tokens)),
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
    })
}

fn answer_usage(body: &[u8]) -> Result<Option<Usage>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        usage: Value,
    }
    let answer: Answer = serde_json::from_slice(body)?;
    Ok(usage_of(&answer.usage))
}

/// The text of a block list or string.
fn blocks_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .map(|block| match block["type"].as_str() {
                Some("tool_use") => block["input"].to_string(),
                Some("tool_result") => blocks_text(&block["content"]),
                _ => block["text"].as_str().unwrap_or_default().to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The prompt's estimate ([`prompt::estimate`]).
fn count_prompt(model: &str, body: &[u8]) -> u64 {
    prompt::estimate(model, body, None)
}

/// Every text block and every tool call's input.
fn count_answer(model: &str, body: &[u8]) -> u64 {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    count(model, &blocks_text(&answer["content"]))
}

/// The estimate `/v1/messages/count_tokens` answers with where no provider counts: the request as
/// `step`'s tier would get it (its system prompt in place of the client's), counted with the
/// tier's tokenizer.
fn count_tokens(body: &[u8], step: &ChainTier) -> u64 {
    prompt::estimate(&step.tier.model, body, step.system_prompt.as_deref())
}

fn warmup(model: &str) -> Value {
    json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]})
}

/// A stream event: its text, the message's id, the end, the usage, an error.
fn read_event(data: &str) -> Option<Chunk> {
    #[derive(Deserialize)]
    struct Event {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        message: Value,
        #[serde(default)]
        delta: Value,
        #[serde(default)]
        usage: Value,
        #[serde(default)]
        content_block: Value,
    }
    let event: Event = serde_json::from_str(data).ok()?;
    let mut chunk = Chunk {
        has_choices: true,
        ..Chunk::default()
    };
    match event.kind.as_str() {
        "message_start" => {
            chunk.response_id = event.message["id"].as_str().map(str::to_string);
            // The input exactly; the output is the few tokens written so far, its count to come
            // in `message_delta`.
            chunk.counts = AnthropicUsage::deserialize(&event.message["usage"])
                .ok()
                .map(|counts| AnthropicUsage {
                    output_tokens: None,
                    ..counts
                });
        }
        "content_block_delta" if event.delta["type"] == "text_delta" => {
            if let Some(text) = event.delta["text"].as_str().filter(|t| !t.is_empty()) {
                chunk.texts.push((0, text.to_string()));
            }
        }
        "content_block_delta" => {
            if let Some(json) = event.delta["partial_json"].as_str() {
                chunk.tool_text.push_str(json);
            }
        }
        "content_block_start" => {
            if let Some(name) = event.content_block["name"].as_str() {
                chunk.tool_text.push_str(name);
            }
        }
        // The output's total and, from newer servers, the input's again: merged over
        // `message_start`'s by the relay, each count left out keeping the one before.
        "message_delta" => chunk.counts = AnthropicUsage::deserialize(&event.usage).ok(),
        "message_stop" => chunk.finished = true,
        "error" => chunk.error = true,
        _ => {}
    }
    Some(chunk)
}

/// A stream broken after the client saw events ends with an `error` event, as Anthropic ends a
/// stream that failed while it was generated.
fn interrupted(_marks: &StreamMarks, message: &str) -> (Option<&'static str>, String) {
    let event = json!({"type": "error", "error": {"type": "api_error", "message": message}});
    (Some("error"), event.to_string())
}

/// An error in Anthropic's shape, its type read from the status as Anthropic's SDKs read it. An
/// upstream's own refusal (OpenAI-shaped by then, Anthropic's type as its `code` where it came
/// from Anthropic) gives its message and, where it has one, its type.
fn error_body(reply: ErrorReply<'_>) -> bytes::Bytes {
    let upstream = reply
        .upstream_body
        .and_then(|body| serde_json::from_slice::<Value>(body).ok());
    let upstream_error = upstream.as_ref().map(|body| &body["error"]);
    let message = upstream_error
        .and_then(|error| error["message"].as_str())
        .map_or_else(
            || reply.message.to_string(),
            |said| format!("{}: {said}", reply.message),
        );
    let kind = upstream_error
        .and_then(|error| error["code"].as_str().or(error["type"].as_str()))
        .filter(|kind| ANTHROPIC_TYPES.contains(kind))
        .unwrap_or(match reply.status {
            400 | 413 | 415 | 422 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            408 | 504 => "timeout_error",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            _ => "api_error",
        });
    let kind = match (reply.status, kind) {
        (413, _) => "request_too_large",
        (_, kind) => kind,
    };
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    bytes::Bytes::from(body.to_string())
}

/// The error types Anthropic's API answers with.
const ANTHROPIC_TYPES: [&str; 10] = [
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "timeout_error",
    "api_error",
    "overloaded_error",
];

/// Why a request cannot be written as a chat completion.
fn cannot(param: &'static str, problem: &'static str) -> RequestError {
    RequestError::field(param, problem)
}

/// OpenAI's own models take no `top_k`; other chat servers (vLLM, llama.cpp, Ollama) do.
fn takes_top_k(model: &str) -> bool {
    !(model.starts_with("gpt-")
        || model.starts_with("chatgpt-")
        || takes_max_completion_tokens(model))
}

/// The Messages request (as the tier gets it) as a chat completion for `model`.
fn to_chat(body: &[u8], model: &str) -> Result<Vec<u8>, RequestError> {
    let request: Map<String, Value> =
        serde_json::from_slice(body).map_err(|_| cannot("messages", "is not a JSON object"))?;
    let field = |name: &str| request.get(name).filter(|value| !value.is_null());
    for name in ANTHROPIC_ONLY {
        if field(name).is_some() {
            return Err(RequestError::field(
                name,
                "is served only by Anthropic's own API",
            ));
        }
    }
    if let Some(name) = request
        .iter()
        .find(|(name, value)| !value.is_null() && !KNOWN.contains(&name.as_str()))
        .map(|(name, _)| name)
    {
        return Err(RequestError::Unknown(format!(
            "'{name}' is served only by Anthropic's own API (a chat completions server has no such field): send it to a route with a tier of Anthropic's format, or leave it out"
        )));
    }
    if let Some(thinking) = field("thinking")
        && thinking["type"] != "disabled"
    {
        return Err(cannot(
            "thinking",
            "is served only by Anthropic's own API (a chat server returns no thinking blocks)",
        ));
    }
    let mut chat = Map::new();
    chat.insert("model".into(), model.into());
    let mut messages = Vec::new();
    if let Some(system) = field("system") {
        messages.push(json!({"role": "system", "content": system_text(system)?}));
    }
    for message in field("messages")
        .and_then(Value::as_array)
        .ok_or(cannot("messages", "must be an array"))?
    {
        turn(message, &mut messages)?;
    }
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = field("tools").and_then(Value::as_array) {
        let tools = tools.iter().map(tool).collect::<Result<Vec<_>, _>>()?;
        if !tools.is_empty() {
            chat.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(choice) = field("tool_choice") {
        let mapped = match choice["type"].as_str() {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({"type": "function", "function": {"name": choice["name"]}}),
            _ => return Err(cannot("tool_choice", "must be auto, any, tool or none")),
        };
        chat.insert("tool_choice".into(), mapped);
        if choice["disable_parallel_tool_use"] == true && chat.contains_key("tools") {
            chat.insert("parallel_tool_calls".into(), false.into());
        }
    }
    if let Some(limit) = field("max_tokens") {
        let name = if takes_max_completion_tokens(model) {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        chat.insert(name.into(), limit.clone());
    }
    if let Some(stops) = field("stop_sequences") {
        chat.insert("stop".into(), stops.clone());
    }
    for name in ["temperature", "top_p"] {
        if let Some(value) = field(name) {
            chat.insert(name.into(), value.clone());
        }
    }
    if let Some(top_k) = field("top_k")
        && takes_top_k(model)
    {
        chat.insert("top_k".into(), top_k.clone());
    }
    if let Some(user) = field("metadata").and_then(|metadata| metadata.get("user_id"))
        && user.is_string()
    {
        chat.insert("user".into(), user.clone());
    }
    if field("stream").and_then(Value::as_bool) == Some(true) {
        chat.insert("stream".into(), Value::Bool(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(serde_json::to_vec(&chat).expect("JSON values always serialize"))
}

/// `system` as one text: a string, or its text blocks joined.
fn system_text(system: &Value) -> Result<String, RequestError> {
    match system {
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => blocks
            .iter()
            .map(
                |block| match (block["type"].as_str(), block["text"].as_str()) {
                    (Some("text"), Some(text)) => Ok(text),
                    _ => Err(cannot("system", "has a block other than text")),
                },
            )
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.join("\n\n")),
        _ => Err(cannot(
            "system",
            "must be a string or an array of text blocks",
        )),
    }
}

/// One turn as chat messages, appended to `messages`: a user turn's tool results first, as tool
/// messages, then its other blocks as a user message; an assistant turn's text and tool uses as
/// one assistant message.
fn turn(message: &Value, messages: &mut Vec<Value>) -> Result<(), RequestError> {
    let assistant = message["role"] == "assistant";
    let blocks = match &message["content"] {
        Value::String(text) => {
            let role = if assistant { "assistant" } else { "user" };
            messages.push(json!({"role": role, "content": text}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(cannot(
                "messages",
                "has a message whose content is neither text nor blocks",
            ));
        }
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block["type"].as_str() {
            Some("text") => parts.push(json!({"type": "text", "text": block["text"].as_str().unwrap_or_default()})),
            Some("image") if !assistant => parts.push(json!({"type": "image_url", "image_url": {"url": image_url(&block["source"])?}})),
            Some("tool_use") if assistant => calls.push(json!({
                "id": block["id"].as_str().ok_or(cannot("messages", "has a tool_use block without an id"))?,
                "type": "function",
                "function": {
                    "name": block["name"].as_str().ok_or(cannot("messages", "has a tool_use block without a name"))?,
                    "arguments": match &block["input"] {
                        Value::Null => "{}".to_string(),
                        input => input.to_string(),
                    },
                },
            })),
            Some("tool_result") if !assistant => {
                let mut content = tool_result_text(&block["content"])?;
                // Chat has no flag for a failed tool: the model reads it in the text.
                if block["is_error"] == true {
                    content = format!("Error: {content}");
                }
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": block["tool_use_id"].as_str().ok_or(cannot("messages", "has a tool_result block without a tool_use_id"))?,
                    "content": content,
                }));
            }
            // The model's own thinking from an earlier turn: chat servers take none back.
            Some("thinking" | "redacted_thinking") if assistant => {}
            _ => {
                return Err(cannot(
                    "messages",
                    "has a block a chat server cannot take (only text, image, tool_use, tool_result and thinking are carried)",
                ));
            }
        }
    }
    if assistant {
        let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        let mut out = json!({"role": "assistant", "content": text});
        if !calls.is_empty() {
            if text.is_empty() {
                out["content"] = Value::Null;
            }
            out["tool_calls"] = Value::Array(calls);
        }
        messages.push(out);
    } else if !parts.is_empty() {
        let content = if parts.iter().all(|part| part["type"] == "text") {
            Value::String(parts.iter().filter_map(|p| p["text"].as_str()).collect())
        } else {
            Value::Array(parts)
        };
        messages.push(json!({"role": "user", "content": content}));
    }
    Ok(())
}

/// An image block's source as a URL chat takes: base64 as a data URL.
fn image_url(source: &Value) -> Result<String, RequestError> {
    match source["type"].as_str() {
        Some("base64") => match (source["media_type"].as_str(), source["data"].as_str()) {
            (Some(media_type), Some(data)) => Ok(format!("data:{media_type};base64,{data}")),
            _ => Err(cannot(
                "messages",
                "has a base64 image without media_type or data",
            )),
        },
        Some("url") => source["url"]
            .as_str()
            .map(str::to_string)
            .ok_or(cannot("messages", "has a URL image without a url")),
        _ => Err(cannot(
            "messages",
            "has an image whose source is not base64 or a URL (files live on Anthropic's servers)",
        )),
    }
}

/// A tool result's content as text: a string, or its text blocks.
fn tool_result_text(content: &Value) -> Result<String, RequestError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => blocks
            .iter()
            .map(|block| match (block["type"].as_str(), block["text"].as_str()) {
                (Some("text"), Some(text)) => Ok(text),
                _ => Err(cannot(
                    "messages",
                    "has a tool_result with a block other than text (a chat tool message holds text)",
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.join("\n")),
        _ => Err(cannot("messages", "has a tool_result whose content is not text")),
    }
}

/// A custom tool as chat's function; Anthropic's server tools run on its servers.
fn tool(tool: &Value) -> Result<Value, RequestError> {
    if !matches!(tool["type"].as_str(), None | Some("custom")) {
        return Err(cannot(
            "tools",
            "has a server tool (it runs on Anthropic's servers)",
        ));
    }
    let mut function = json!({
        "name": tool["name"].as_str().ok_or(cannot("tools", "has a tool without a name"))?,
        "parameters": match &tool["input_schema"] {
            Value::Null => json!({"type": "object", "properties": {}}),
            schema => schema.clone(),
        },
    });
    if let Some(description) = tool["description"].as_str() {
        function["description"] = description.into();
    }
    Ok(json!({"type": "function", "function": function}))
}

/// An id of the gateway's making, `msg_` and 32 hex digits, time-ordered.
fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Chat's finish reason as Anthropic's stop reason; `stop` is a stop sequence where the server
/// says which one matched (vLLM's `stop_reason`) and it is one the client asked for.
fn stop_reason(finish: Option<&str>, matched: &Value, stops: &[String]) -> (Value, Value) {
    match finish {
        Some("length") => (json!("max_tokens"), Value::Null),
        Some("tool_calls" | "function_call") => (json!("tool_use"), Value::Null),
        Some("content_filter") => (json!("refusal"), Value::Null),
        _ => match matched.as_str().filter(|m| stops.iter().any(|s| s == m)) {
            Some(stop) => (json!("stop_sequence"), json!(stop)),
            None => (json!("end_turn"), Value::Null),
        },
    }
}

/// The stop sequences a request asked for.
fn stop_sequences(request: &[u8]) -> Vec<String> {
    #[derive(Deserialize)]
    struct Stops {
        #[serde(default)]
        stop_sequences: Option<Vec<String>>,
    }
    serde_json::from_slice::<Stops>(request)
        .ok()
        .and_then(|stops| stops.stop_sequences)
        .unwrap_or_default()
}

/// A tool call's arguments as a `tool_use` block's input; arguments that are not a JSON object
/// are the tier's failure (another tier may answer).
fn tool_input(arguments: &str) -> Result<Value, String> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(input @ Value::Object(_)) => Ok(input),
        _ => Err("a tool call whose arguments are not a JSON object".into()),
    }
}

/// A whole chat completion (choice 0) as a message answering `request`.
fn from_chat(chat: &[u8], request: &[u8]) -> Result<Vec<u8>, String> {
    let chat: Value =
        serde_json::from_slice(chat).map_err(|err| format!("the answer is not JSON: {err}"))?;
    let choice = &chat["choices"][0];
    let message = &choice["message"];
    let mut content = Vec::new();
    if let Some(text) = message["content"].as_str().filter(|text| !text.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let function = &call["function"];
        content.push(json!({
            "type": "tool_use",
            "id": call["id"].as_str().filter(|id| !id.is_empty()).map_or_else(|| new_id("toolu"), str::to_string),
            "name": function["name"].as_str().unwrap_or_default(),
            "input": tool_input(function["arguments"].as_str().unwrap_or_default())?,
        }));
    }
    let (reason, sequence) = stop_reason(
        choice["finish_reason"].as_str(),
        &choice["stop_reason"],
        &stop_sequences(request),
    );
    let usage = chat
        .get("usage")
        .and_then(|usage| Usage::from_raw(&raw(usage)));
    let message = json!({
        "id": new_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": chat["model"].as_str().unwrap_or_default(),
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_json(usage.as_ref()),
    });
    Ok(serde_json::to_vec(&message).expect("JSON values always serialize"))
}

/// The most a translated stream holds back behind a tool call whose arguments have not ended.
const MAX_HELD: usize = 4 << 20;

/// The content block being streamed: Anthropic's events allow one open at a time.
enum Open {
    None,
    Text,
    /// The tool call at this place in [`ChatEvents::calls`].
    Tool(usize),
}

/// Where a tool call stands in the message's content blocks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CallState {
    /// No block yet: its arguments are kept until its turn.
    Waiting,
    /// Its block is the open one: its fragments go out as they come.
    Open,
    /// Its block was written and closed.
    Closed,
}

/// A tool call of the chat stream.
struct Call {
    id: String,
    name: String,
    /// Its arguments that came while it waited, written when its block opens.
    unwritten: String,
    end: JsonEnd,
    state: CallState,
}

/// Reads a tool call's arguments fragment by fragment for the end of their JSON value (an object,
/// as tool inputs are), without parsing them again at every fragment.
/// Arguments that do not begin as an object, or go on after it ended, are `broken`, as the
/// plain path's parse would find them.
#[derive(Default)]
struct JsonEnd {
    depth: u32,
    in_string: bool,
    escaped: bool,
    ended: bool,
    broken: bool,
}

impl JsonEnd {
    fn read(&mut self, fragment: &str) {
        for byte in fragment.bytes() {
            if self.ended || self.depth == 0 {
                if !byte.is_ascii_whitespace() && (self.ended || byte != b'{') {
                    self.broken = true;
                    return;
                }
                if byte.is_ascii_whitespace() {
                    continue;
                }
            }
            if self.in_string {
                match byte {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' if self.depth > 0 => {
                    self.depth -= 1;
                    self.ended = self.depth == 0;
                }
                _ => {}
            }
        }
    }
}

/// Writes a stream of chat chunks as Anthropic's events.
///
/// Chat streams parallel tool calls each under its own index, and some servers interleave their
/// argument fragments (call A's after call B began); Anthropic's events have one content block open
/// at a time, and a block once stopped takes no more deltas. So one tool call's block is open at a
/// time and its fragments go out as they come; a fragment of another call is kept with that call
/// until the open call's arguments are a whole JSON value, which closes its block, and the next
/// waiting call's block opens with what it kept. Calls that come one after the other (the usual
/// case) stream as they came; interleaved ones are delayed, never lost nor put in another call's
/// block, so the SDK's assembled input of each block is its call's whole arguments. Text that
/// comes while a call's block is open waits for that block to close. A call's block opens once its
/// id and name are known (a server may send them after its first fragment); one that never gets an
/// id is given one at the end, as [`from_chat`] gives it.
///
/// What the plain path would refuse fails the stream as the tier's failure: arguments that are
/// not a JSON object or go on after it, a call whose arguments never ended, and more than
/// [`MAX_HELD`] bytes held back behind an open call (a call that never ends would otherwise keep
/// the rest of the answer, however long, in memory). Before any content went out, the chain
/// falls back; after, the client's stream ends with Anthropic's `error` event.
struct ChatEvents {
    id: String,
    model: String,
    stops: Vec<String>,
    /// The gateway's estimate of the prompt, for `message_start` (Anthropic's gives the input
    /// there; the upstream's own count, where it gives one, comes in `message_delta`).
    prompt_tokens: u64,
    started: bool,
    pinged: bool,
    open: Open,
    /// The next content block's index.
    next_index: u64,
    /// The tool calls, in the order they began.
    calls: Vec<Call>,
    /// Each key's latest call among `calls`: a fragment finds its call without a scan.
    by_key: HashMap<u64, usize>,
    /// The first call whose block has not opened yet: blocks open in the order calls began.
    next_call: usize,
    /// Bytes held back: waiting calls' arguments and the text that waits.
    held: usize,
    /// Why the stream is the tier's failure, once it is.
    failure: Option<String>,
    /// The last tool call that came without an `index` (some servers send parallel calls so):
    /// its key among `calls` and its id, so that a new id opens a new block.
    unindexed: Option<(u64, String)>,
    /// Text that came while a tool call's block was open.
    pending_text: String,
    finish: Option<String>,
    matched: Value,
    usage: Option<Usage>,
    /// The text and tool arguments written, to estimate the output for the client when the
    /// upstream reports no usage.
    written: String,
    ended: bool,
}

impl ChatEvents {
    fn new(request: &[u8], prompt_tokens: u64) -> ChatEvents {
        ChatEvents {
            id: new_id("msg"),
            model: String::new(),
            written: String::new(),
            stops: stop_sequences(request),
            prompt_tokens,
            started: false,
            pinged: false,
            open: Open::None,
            next_index: 0,
            calls: Vec::new(),
            by_key: HashMap::new(),
            next_call: 0,
            held: 0,
            failure: None,
            unindexed: None,
            pending_text: String::new(),
            finish: None,
            matched: Value::Null,
            usage: None,
            ended: false,
        }
    }

    fn emit(out: &mut Vec<(&'static str, String)>, kind: &'static str, mut event: Value) {
        event["type"] = kind.into();
        out.push((kind, event.to_string()));
    }

    fn start(&mut self, out: &mut Vec<(&'static str, String)>) {
        if self.started {
            return;
        }
        self.started = true;
        let estimate = Usage {
            prompt_tokens: self.prompt_tokens,
            ..Usage::default()
        };
        let message = json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": usage_json(Some(&estimate)),
        });
        Self::emit(out, "message_start", json!({"message": message}));
    }

    fn stop_block(&mut self, out: &mut Vec<(&'static str, String)>) {
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => return,
            Open::Text => {}
            Open::Tool(call) => self.calls[call].state = CallState::Closed,
        }
        Self::emit(
            out,
            "content_block_stop",
            json!({"index": self.next_index - 1}),
        );
    }

    fn start_block(&mut self, out: &mut Vec<(&'static str, String)>, open: Open, block: Value) {
        self.stop_block(out);
        self.open = open;
        let index = self.next_index;
        self.next_index += 1;
        Self::emit(
            out,
            "content_block_start",
            json!({"index": index, "content_block": block}),
        );
        if !self.pinged {
            self.pinged = true;
            Self::emit(out, "ping", json!({}));
        }
    }

    fn text(&mut self, out: &mut Vec<(&'static str, String)>, text: &str) {
        self.written.push_str(text);
        if matches!(self.open, Open::Tool(_)) {
            self.pending_text.push_str(text);
            self.hold(text.len());
        } else {
            self.write_text(out, text);
        }
    }

    fn write_text(&mut self, out: &mut Vec<(&'static str, String)>, text: &str) {
        if !matches!(self.open, Open::Text) {
            self.start_block(out, Open::Text, json!({"type": "text", "text": ""}));
        }
        Self::emit(
            out,
            "content_block_delta",
            json!({"index": self.next_index - 1, "delta": {"type": "text_delta", "text": text}}),
        );
    }

    fn write_arguments(&self, out: &mut Vec<(&'static str, String)>, fragment: &str) {
        Self::emit(
            out,
            "content_block_delta",
            json!({"index": self.next_index - 1, "delta": {"type": "input_json_delta", "partial_json": fragment}}),
        );
    }

    /// Counts `bytes` more held back; past [`MAX_HELD`] the stream fails.
    fn hold(&mut self, bytes: usize) {
        self.held += bytes;
        if self.held > MAX_HELD && self.failure.is_none() {
            self.failure = Some(format!(
                "the upstream sent over {MAX_HELD} bytes while a tool call's arguments had not \
                 ended (interleaved tool calls or text), more than the gateway holds back"
            ));
        }
    }

    fn fail(&mut self, why: &str) {
        self.failure.get_or_insert_with(|| why.to_string());
    }

    fn tool_call(&mut self, out: &mut Vec<(&'static str, String)>, fragment: &Value) {
        if self.failure.is_some() {
            return;
        }
        let id = fragment["id"].as_str().filter(|id| !id.is_empty());
        let key = match fragment["index"].as_u64() {
            Some(index) => index,
            None => self.unindexed_key(id),
        };
        // A new id under an index already used is a new call, as without an index: some servers
        // number each call 0.
        let at = match self.by_key.get(&key) {
            Some(&at)
                if !id
                    .is_some_and(|id| !self.calls[at].id.is_empty() && self.calls[at].id != id) =>
            {
                at
            }
            _ => {
                self.calls.push(Call {
                    id: String::new(),
                    name: String::new(),
                    unwritten: String::new(),
                    end: JsonEnd::default(),
                    state: CallState::Waiting,
                });
                self.by_key.insert(key, self.calls.len() - 1);
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[at];
        // The id and the name come with a call's first fragment as a rule; a call whose block has
        // not opened takes them from a later one too.
        if call.state == CallState::Waiting {
            for (field, value) in [
                (&mut call.id, &fragment["id"]),
                (&mut call.name, &fragment["function"]["name"]),
            ] {
                if let Some(value) = value.as_str().filter(|v| !v.is_empty())
                    && field.is_empty()
                {
                    *field = value.to_string();
                }
            }
        }
        if let Some(arguments) = fragment["function"]["arguments"]
            .as_str()
            .filter(|f| !f.is_empty())
        {
            self.written.push_str(arguments);
            let call = &mut self.calls[at];
            call.end.read(arguments);
            if call.end.broken {
                self.fail("a tool call whose arguments are not one JSON object");
                return;
            }
            match call.state {
                CallState::Waiting => {
                    call.unwritten.push_str(arguments);
                    self.hold(arguments.len());
                }
                CallState::Open => self.write_arguments(out, arguments),
                // A call's block closes once its arguments ended, and nothing but whitespace
                // may follow them (`broken` otherwise).
                CallState::Closed => {}
            }
        }
        self.advance(out);
    }

    /// Closes the open call's block once its arguments are whole, and opens the next call's
    /// once its id and name are known; with no call's block open, the text that waited goes out.
    fn advance(&mut self, out: &mut Vec<(&'static str, String)>) {
        loop {
            if let Open::Tool(call) = self.open {
                if !self.calls[call].end.ended {
                    return;
                }
                self.stop_block(out);
            }
            match self.calls.get(self.next_call) {
                Some(call) if !call.id.is_empty() && !call.name.is_empty() => {
                    self.open_call(out, self.next_call);
                }
                _ => break,
            }
        }
        if !self.pending_text.is_empty() {
            let text = std::mem::take(&mut self.pending_text);
            self.held -= text.len();
            self.write_text(out, &text);
        }
    }

    fn open_call(&mut self, out: &mut Vec<(&'static str, String)>, at: usize) {
        self.next_call = at + 1;
        let call = &mut self.calls[at];
        call.state = CallState::Open;
        if call.id.is_empty() {
            call.id = new_id("toolu");
        }
        let block = json!({"type": "tool_use", "id": call.id, "name": call.name, "input": {}});
        let kept = std::mem::take(&mut call.unwritten);
        self.held -= kept.len();
        self.start_block(out, Open::Tool(at), block);
        if !kept.is_empty() {
            self.write_arguments(out, &kept);
        }
    }

    /// The key of a tool call fragment without an `index`: the last such call's, unless it names
    /// another id (a parallel call), which opens a new block instead of merging the two.
    fn unindexed_key(&mut self, id: Option<&str>) -> u64 {
        match (&self.unindexed, id) {
            (Some((key, last)), Some(id)) if last == id => *key,
            (Some((key, _)), None) => *key,
            _ => {
                // Keys apart from any index a server gives.
                let key = u64::MAX - self.calls.len() as u64;
                self.unindexed = Some((key, id.unwrap_or_default().to_string()));
                key
            }
        }
    }

    /// Writes every call's block that is still open or waiting, then the text that waited, and
    /// ends the message with its stop reason and usage.
    fn finish(&mut self, out: &mut Vec<(&'static str, String)>) -> Result<(), String> {
        if self.ended {
            return Ok(());
        }
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        // Arguments that never ended would be `{}` in the client's SDK: the plain path's parse
        // refuses them.
        if self
            .calls
            .iter()
            .any(|call| !call.end.ended && call.end.depth > 0)
        {
            return Err("a tool call whose arguments ended before their JSON object did".into());
        }
        self.ended = true;
        self.start(out);
        self.stop_block(out);
        while self.next_call < self.calls.len() {
            self.open_call(out, self.next_call);
            self.stop_block(out);
        }
        if !self.pending_text.is_empty() {
            let text = std::mem::take(&mut self.pending_text);
            self.held -= text.len();
            self.write_text(out, &text);
        }
        self.stop_block(out);
        let (reason, sequence) = stop_reason(self.finish.as_deref(), &self.matched, &self.stops);
        // The upstream's usage, its input in place of `message_start`'s estimate (the SDKs take a
        // `message_delta`'s input over `message_start`'s). Without it, the output is the
        // gateway's estimate (bounded in time: this runs on the event loop, and an answer may be
        // long) and the input stays `message_start`'s; the relay books its own count (flagged
        // estimated, made off the request path), as for chat, never 0.
        let usage = match &self.usage {
            Some(usage) => usage_json(Some(usage)),
            None => json!({"output_tokens": bounded_count(&self.model, &self.written)}),
        };
        Self::emit(
            out,
            "message_delta",
            json!({
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": usage,
            }),
        );
        Self::emit(out, "message_stop", json!({}));
        Ok(())
    }
}

impl super::chat::ChunkReader for ChatEvents {
    fn model(&mut self) -> &mut String {
        &mut self.model
    }

    fn start(&mut self, out: &mut Vec<(&'static str, String)>) {
        ChatEvents::start(self, out);
    }

    fn usage(&mut self, usage: Usage) {
        self.usage = Some(usage);
    }

    fn text(&mut self, out: &mut Vec<(&'static str, String)>, text: &str) {
        ChatEvents::text(self, out, text);
    }

    fn tool_call(&mut self, out: &mut Vec<(&'static str, String)>, call: &Value) {
        ChatEvents::tool_call(self, out, call);
    }

    fn finished(&mut self, reason: &str, choice: &Value) {
        self.finish = Some(reason.to_string());
        self.matched = choice["stop_reason"].clone();
    }
}

impl StreamTranslator for ChatEvents {
    fn read(&mut self, data: &str, out: &mut Vec<(&'static str, String)>) -> Result<(), String> {
        if data == "[DONE]" {
            return self.finish(out);
        }
        super::chat::read_chunk(self, data, out)?;
        match &self.failure {
            Some(failure) => Err(failure.clone()),
            None => Ok(()),
        }
    }

    fn close(&mut self, out: &mut Vec<(&'static str, String)>) -> Result<(), String> {
        if self.finish.is_some() {
            return self.finish(out);
        }
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn events(chunks: &[&str]) -> Vec<(&'static str, Value)> {
        let mut events = ChatEvents::new(br#"{"stop_sequences": ["END"]}"#, 0);
        let mut out = Vec::new();
        for chunk in chunks {
            events.read(chunk, &mut out).unwrap();
        }
        out.into_iter()
            .map(|(name, data)| (name, serde_json::from_str(&data).unwrap()))
            .collect()
    }

    /// Text then a tool call: the events in Anthropic's order, one block after the other, the
    /// stop reason and the usage (the cache's reads apart from the input) at the end.
    #[test]
    fn a_chat_stream_becomes_anthropics_events_in_order() {
        let out = events(&[
            r#"{"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Let me look."}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"q\":1}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4}}}"#,
            "[DONE]",
        ]);
        let names: Vec<&str> = out.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(out[5].1["content_block"]["type"], "tool_use");
        assert_eq!(out[5].1["index"], 1);
        assert_eq!(out[6].1["delta"]["partial_json"], "{\"q\":1}");
        let delta = &out[8].1;
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        assert_eq!(
            delta["usage"],
            json!({"input_tokens": 6, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 0, "output_tokens": 5})
        );
    }

    /// Parallel tool calls from a server that sends no `index`: each new id is its own
    /// `tool_use` block, and a fragment without an id goes to the call before it (they were
    /// merged into one block, and the SDK kept only the first call).
    #[test]
    fn tool_calls_without_an_index_are_told_apart_by_their_ids() {
        let out = events(&[
            r#"{"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_a","type":"function","function":{"name":"city","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":"{\"city\":\"Oslo\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_b","type":"function","function":{"name":"tz","arguments":"{\"tz\":\"CET\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            "[DONE]",
        ]);
        let starts: Vec<&Value> = out
            .iter()
            .filter(|(name, _)| *name == "content_block_start")
            .map(|(_, data)| data)
            .collect();
        assert_eq!(starts.len(), 2, "{out:?}");
        assert_eq!(starts[0]["content_block"]["id"], "call_a");
        assert_eq!(starts[1]["content_block"]["id"], "call_b");
        let deltas: Vec<(u64, &str)> = out
            .iter()
            .filter(|(name, _)| *name == "content_block_delta")
            .map(|(_, data)| {
                (
                    data["index"].as_u64().unwrap(),
                    data["delta"]["partial_json"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            deltas,
            [(0, "{\"city\":\"Oslo\"}"), (1, "{\"tz\":\"CET\"}")]
        );
    }

    /// What a client's SDK assembles from the events: each block's type, id and, for a tool
    /// call, its `partial_json` deltas joined; checking on the way that one block is open at a
    /// time and every delta goes to the open block.
    fn assembled(out: &[(&'static str, Value)]) -> Vec<(String, String)> {
        let mut blocks: Vec<(String, String)> = Vec::new();
        let mut open: Option<u64> = None;
        for (name, data) in out {
            match *name {
                "content_block_start" => {
                    assert!(open.is_none(), "a block opened over another: {out:?}");
                    let index = data["index"].as_u64().unwrap();
                    assert_eq!(index as usize, blocks.len(), "{out:?}");
                    open = Some(index);
                    let block = &data["content_block"];
                    let id = block["id"].as_str().unwrap_or("text").to_string();
                    blocks.push((id, String::new()));
                }
                "content_block_delta" => {
                    assert_eq!(
                        data["index"].as_u64(),
                        open,
                        "a delta for a block not open: {out:?}"
                    );
                    let delta = &data["delta"];
                    let piece = delta["partial_json"]
                        .as_str()
                        .or(delta["text"].as_str())
                        .unwrap();
                    blocks.last_mut().unwrap().1.push_str(piece);
                }
                "content_block_stop" => {
                    assert_eq!(data["index"].as_u64(), open, "{out:?}");
                    open = None;
                }
                _ => {}
            }
        }
        assert!(open.is_none(), "a block left open: {out:?}");
        blocks
    }

    /// Call A's fragments after call B's began (some servers interleave parallel calls): each
    /// lands in its own block, none after its block stopped.
    #[test]
    fn interleaved_tool_call_fragments_land_in_their_own_blocks() {
        let out = events(&[
            r#"{"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"city","arguments":"{\"city\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"tz","arguments":"{\"tz\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Oslo\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"\"CET\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            "[DONE]",
        ]);
        assert_eq!(
            assembled(&out),
            [
                ("call_a".to_string(), r#"{"city":"Oslo"}"#.to_string()),
                ("call_b".to_string(), r#"{"tz":"CET"}"#.to_string()),
            ]
        );
    }

    fn read_all(chunks: &[&str]) -> Result<Vec<(&'static str, Value)>, String> {
        let mut events = ChatEvents::new(b"{}", 0);
        let mut out = Vec::new();
        for chunk in chunks {
            events.read(chunk, &mut out)?;
        }
        events.close(&mut out)?;
        Ok(out
            .into_iter()
            .map(|(name, data)| (name, serde_json::from_str(&data).unwrap()))
            .collect())
    }

    /// Some servers number every parallel call 0: a new id under a used index is a new call.
    #[test]
    fn a_new_id_under_a_used_index_is_a_new_call() {
        let out = events(&[
            r#"{"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"f","arguments":"{\"a\": 1}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_b","type":"function","function":{"name":"g","arguments":"{\"b\": 2}"}},{"index":0,"id":"call_c","type":"function","function":{"name":"h","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            "[DONE]",
        ]);
        assert_eq!(
            assembled(&out),
            [
                ("call_a".to_string(), r#"{"a": 1}"#.to_string()),
                ("call_b".to_string(), r#"{"b": 2}"#.to_string()),
                ("call_c".to_string(), "{}".to_string()),
            ]
        );
    }

    /// A call whose id and name come after its first fragment: its block waits for them; one
    /// that never gets an id is given one.
    #[test]
    fn a_calls_block_waits_for_its_id_and_name() {
        let out = events(&[
            r#"{"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_late","function":{"name":"f","arguments":" 1}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"name":"g","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            "[DONE]",
        ]);
        let blocks: Vec<&Value> = out
            .iter()
            .filter(|(name, _)| *name == "content_block_start")
            .map(|(_, event)| &event["content_block"])
            .collect();
        assert_eq!(blocks[0]["id"], "call_late");
        assert_eq!(blocks[0]["name"], "f");
        assert!(blocks[1]["id"].as_str().unwrap().starts_with("toolu_"));
        assert_eq!(blocks[1]["name"], "g");
        assert_eq!(assembled(&out)[0].1, r#"{"a": 1}"#);
    }

    /// What the plain path refuses fails the stream: arguments cut short (with or without
    /// `[DONE]`), not an object, going on after the object.
    #[test]
    fn broken_tool_arguments_in_a_stream_fail_it() {
        let call = |arguments: &str| {
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": arguments}}]}}]}).to_string()
        };
        let finish = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#;
        for arguments in [r#"{"a": "x"#, r#""str""#, r#"{"a": 1}}"#, "[1]"] {
            let chunk = call(arguments);
            assert!(
                read_all(&[&chunk, finish, "[DONE]"]).is_err(),
                "{arguments}"
            );
            assert!(read_all(&[&chunk, finish]).is_err(), "{arguments}");
        }
        let whole = call(r#" {"a": 1} "#);
        assert!(read_all(&[&whole, finish, "[DONE]"]).is_ok());
    }

    /// Text held back behind a call whose arguments never end is bounded.
    #[test]
    fn what_waits_behind_an_open_call_is_bounded() {
        let open = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":"{\"a\": \"x"}}]}}]}"#;
        let text = json!({"choices": [{"index": 0, "delta": {"content": "y".repeat(64 << 10)}}]})
            .to_string();
        let mut chunks = vec![open];
        chunks.extend(std::iter::repeat_n(
            text.as_str(),
            MAX_HELD / (64 << 10) + 1,
        ));
        let err = read_all(&chunks).unwrap_err();
        assert!(err.contains("more than the gateway holds back"), "{err}");
    }

    /// `message_start` says the gateway's count of the prompt; `message_delta` the upstream's.
    #[test]
    fn message_start_says_the_prompts_estimate_and_message_delta_the_upstreams_count() {
        let request = json!({"max_tokens": 5, "messages": [{"role": "user", "content": "What is the weather in Oslo today?"}]});
        let bytes = request.to_string();
        let mut events = ChatEvents::new(bytes.as_bytes(), count_prompt("m", bytes.as_bytes()));
        let mut out = Vec::new();
        for chunk in [
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"Sunny."}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":31,"completion_tokens":2}}"#,
            "[DONE]",
        ] {
            events.read(chunk, &mut out).unwrap();
        }
        let start: Value = serde_json::from_str(&out[0].1).unwrap();
        let estimate = count_prompt("m", bytes.as_bytes());
        assert!(estimate > 3);
        assert_eq!(start["message"]["usage"]["input_tokens"], estimate);
        let delta: Value = serde_json::from_str(&out[out.len() - 2].1).unwrap();
        assert_eq!(delta["usage"]["input_tokens"], 31);
        assert_eq!(delta["usage"]["output_tokens"], 2);
        assert_eq!(StreamTranslator::usage(&events).unwrap().prompt_tokens, 31);
    }

    /// vLLM says which stop string matched: a requested one is a stop sequence.
    #[test]
    fn a_matched_stop_sequence_is_named() {
        let out = events(&[
            r#"{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"stop","stop_reason":"END"}]}"#,
            "[DONE]",
        ]);
        let delta = &out[out.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "stop_sequence");
        assert_eq!(delta["delta"]["stop_sequence"], "END");
    }

    /// A tool call whose arguments are not JSON is the tier's failure, not a client's answer.
    #[test]
    fn broken_tool_arguments_fail_the_tier() {
        let chat = json!({"choices": [{"message": {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}, "finish_reason": "tool_calls"}]});
        assert!(from_chat(chat.to_string().as_bytes(), b"{}").is_err());
    }

    /// A user turn's tool results go first, as tool messages right after the assistant's calls.
    #[test]
    fn tool_results_come_before_the_turns_text() {
        let body = json!({
            "model": "m", "max_tokens": 10,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "text", "text": "thanks"}, {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
            ],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "tools": [{"name": "w", "input_schema": {"type": "object"}}],
        });
        let chat: Value =
            serde_json::from_slice(&to_chat(body.to_string().as_bytes(), "m").unwrap()).unwrap();
        let roles: Vec<&str> = chat["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
        assert_eq!(
            chat["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Oslo\"}"
        );
        assert_eq!(chat["tool_choice"], "required");
        assert_eq!(chat["parallel_tool_calls"], false);
    }

    /// What each step of a translated Messages request costs that reads the body again: the
    /// request read and validated (its fields kept raw, `messages` parsed to check the roles),
    /// `needs` (the messages parsed again for images), the answer budget, the body for the tier,
    /// its chat translation (a whole parse), and for a stream the translator's start (the stop
    /// sequences) and the prompt counted for `message_start` (a parse and the tokenizer), on a
    /// 1.4 KB request (system prompt, three turns with a tool call and its result, one tool). The
    /// median of 9 runs of 2,000. Ignored by default (a timing, not a check of behaviour):
    /// `cargo test --release --lib messages_steps -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn messages_steps_cost() {
        use std::hint::black_box;
        use std::time::Instant;
        let body = json!({
            "model": "summarize", "max_tokens": 512, "stream": true,
            "system": "You are a helpful assistant for a travel agency. Answer briefly and use the weather tool when the user asks about the weather somewhere.",
            "messages": [
                {"role": "user", "content": "I am flying to Oslo next week for a conference and I would like to know what to pack. What will the weather be like there, and should I bring an umbrella?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me check the forecast for Oslo."},
                    {"type": "tool_use", "id": "toolu_01", "name": "weather", "input": {"city": "Oslo", "days": 7}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": "Mostly cloudy, 2 to 6 degrees Celsius, rain on Tuesday and Wednesday, light wind."},
                    {"type": "text", "text": "Thanks. And is there anything else I should keep in mind for a business trip there in this season?"}]},
            ],
            "tools": [{"name": "weather", "description": "The weather forecast for a city, for the given number of days.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}],
            "stop_sequences": ["END"],
        })
        .to_string();
        let bytes = body.as_bytes();
        let config = crate::config::Config::parse(
            include_str!("../../examples/tierwise.toml"),
            std::path::Path::new("examples/tierwise.toml"),
            &|_| None,
        )
        .unwrap();
        let step = config.routes[0].chain[0].clone();
        let median = |f: &dyn Fn()| {
            let mut runs: Vec<f64> = (0..9)
                .map(|_| {
                    let started = Instant::now();
                    for _ in 0..2_000 {
                        f();
                    }
                    started.elapsed().as_secs_f64() * 1e6 / 2_000.0
                })
                .collect();
            runs.sort_by(f64::total_cmp);
            runs[4]
        };
        let parsed = RequestBody::parse(super::super::Endpoint::Messages, bytes).unwrap();
        let for_tier = parsed.for_tier(&step);
        let steps: [(&str, &dyn Fn()); 7] = [
            ("parse + validate", &|| {
                black_box(RequestBody::parse(super::super::Endpoint::Messages, bytes).unwrap());
            }),
            ("validate alone", &|| {
                validate(black_box(&parsed)).unwrap();
            }),
            ("needs", &|| {
                black_box(needs(&parsed));
            }),
            ("answer_budget", &|| {
                black_box(answer_budget(&parsed));
            }),
            ("for_tier", &|| {
                black_box(parsed.for_tier(&step));
            }),
            ("to_chat", &|| {
                black_box(to_chat(&for_tier, "m").unwrap());
            }),
            ("stream start (stop sequences)", &|| {
                black_box(ChatEvents::new(&for_tier, 0));
            }),
        ];
        println!("{} bytes", bytes.len());
        for (name, f) in steps {
            println!("{name:40} {:8.2} us", median(f));
        }
        println!(
            "{:40} {:8.2} us",
            "count_prompt (message_start)",
            median(&|| {
                black_box(count_prompt("m", &for_tier));
            })
        );
    }

    /// Any JSON value, up to a few levels deep, with the keys the translation reads among others.
    fn any_json() -> impl Strategy<Value = Value> {
        super::super::any_json_of(
            &[
                "text",
                "tool_use",
                "tool_result",
                "image",
                "user",
                "assistant",
            ],
            &[
                "type", "role", "content", "messages", "tools", "system", "source", "input",
            ],
        )
    }

    proptest! {
        /// Any request body: a chat completion or an error naming what cannot be carried, never
        /// a panic.
        #[test]
        fn any_body_translates_or_is_refused(body in any_json()) {
            let bytes = serde_json::to_vec(&body).unwrap();
            if let Ok(chat) = to_chat(&bytes, "m") {
                let chat: Value = serde_json::from_slice(&chat).unwrap();
                prop_assert!(chat["messages"].is_array());
            }
            let _ = from_chat(&bytes, &bytes);
            let _ = count_prompt("m", &bytes);
        }

        /// Any chat events: events or an error, never a panic; a stream that is read to its end
        /// ends with `message_stop`.
        #[test]
        fn any_chat_events_translate_without_a_panic(chunks in prop::collection::vec(any_json(), 0..8)) {
            let mut events = ChatEvents::new(b"{}", 0);
            let mut out = Vec::new();
            for chunk in &chunks {
                let _ = events.read(&chunk.to_string(), &mut out);
            }
            events.read("[DONE]", &mut out).unwrap();
            prop_assert_eq!(out.last().map(|(name, _)| *name), Some("message_stop"));
            prop_assert_eq!(out.first().map(|(name, _)| *name), Some("message_start"));
        }

        /// Any interleaving of the fragments of N parallel tool calls: one block per call, in
        /// the order the calls began, each assembling to the call's whole arguments; one block
        /// open at a time, no delta to a block not open.
        #[test]
        fn any_interleaving_of_tool_call_fragments_assembles_each_call(
            calls in prop::collection::vec(
                (any_json(), prop::collection::vec(1usize..6, 0..6)),
                1..5,
            ),
            order in prop::collection::vec(0usize..5, 0..64),
        ) {
            // Each call's arguments (an object, as tool inputs are) cut at the given widths.
            let calls: Vec<(String, Vec<String>)> = calls
                .into_iter()
                .map(|(value, cuts)| {
                    let arguments = json!({"v": value}).to_string();
                    let chars: Vec<char> = arguments.chars().collect();
                    let mut pieces = Vec::new();
                    let mut at = 0;
                    for cut in cuts {
                        if at >= chars.len() { break; }
                        let end = (at + cut).min(chars.len());
                        pieces.push(chars[at..end].iter().collect::<String>());
                        at = end;
                    }
                    if at < chars.len() {
                        pieces.push(chars[at..].iter().collect());
                    }
                    (arguments, pieces)
                })
                .collect();
            // Every call's first fragment in call order (so blocks are in call order), then the
            // rest interleaved as `order` picks, each call's own in its order.
            let mut next = vec![1usize; calls.len()];
            let mut chunks = Vec::new();
            let fragment = |call: usize, piece: usize, calls: &[(String, Vec<String>)]| {
                let mut tool = json!({"index": call, "function": {"arguments": calls[call].1[piece]}});
                if piece == 0 {
                    tool["id"] = json!(format!("call_{call}"));
                    tool["function"]["name"] = json!("f");
                }
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [tool]}}]}).to_string()
            };
            for call in 0..calls.len() {
                chunks.push(fragment(call, 0, &calls));
            }
            let mut picks = order.into_iter().map(|pick| pick % calls.len());
            while next.iter().zip(&calls).any(|(at, call)| *at < call.1.len()) {
                let pick = picks.next().unwrap_or(0);
                let call = (pick..pick + calls.len())
                    .map(|i| i % calls.len())
                    .find(|&i| next[i] < calls[i].1.len())
                    .unwrap();
                chunks.push(fragment(call, next[call], &calls));
                next[call] += 1;
            }
            chunks.push(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#.to_string());
            chunks.push("[DONE]".to_string());
            let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
            let out = events(&chunks);
            let blocks = assembled(&out);
            prop_assert_eq!(blocks.len(), calls.len());
            for (at, ((id, input), (arguments, _))) in blocks.iter().zip(&calls).enumerate() {
                prop_assert_eq!(id, &format!("call_{at}"));
                let input: Value = serde_json::from_str(input).unwrap();
                let arguments: Value = serde_json::from_str(arguments).unwrap();
                prop_assert_eq!(input, arguments);
            }
        }

        /// Any text as a stream event's data: read or passed over, never a panic.
        #[test]
        fn any_event_reads_without_a_panic(data in ".{0,200}") {
            let _ = read_event(&data);
        }
    }
}
