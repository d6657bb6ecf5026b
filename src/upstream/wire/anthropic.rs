//! Anthropic's Messages API (`POST {base_url}/messages`), translated both ways: the gateway's chat
//! completion request written as a Messages request, and the message — whole, or as its stream of
//! events — read back into the gateway's model ([`super::model`]). The key travels as `x-api-key`
//! (or a Bearer token where the provider's `auth` says so) beside `anthropic-version`.
//!
//! What is carried: system and developer messages as `system`; user, assistant and tool messages
//! (consecutive ones of a role as one turn, as Anthropic wants them), text and image parts (a data
//! URL as base64, any other URL as a URL source); tool calls with their ids, their arguments parsed
//! from OpenAI's JSON string into Anthropic's object and written back as a string; `tools`,
//! `tool_choice` and `parallel_tool_calls`; `max_tokens`/`max_completion_tokens`, which Anthropic
//! requires (the request's, which is the client's or else the tier's, else [`DEFAULT_MAX_TOKENS`]);
//! `temperature` (at most 1, Anthropic's ceiling), `top_p`, `stop`, `user`; a `json_schema`
//! response format as `output_config.format`, and `json_object` as an instruction in the system
//! prompt (Anthropic has no schemaless JSON mode). What changes the shape of an answer and cannot be
//! carried (`n` > 1, `logprobs`, audio and file parts) makes the tier pass the request on
//! ([`Lack::Format`]); sampling hints Anthropic has no use for (`seed`, the penalties,
//! `logit_bias`, `service_tier`, `store`, `metadata`, `reasoning_effort`) are left out.
//!
//! Usage: Anthropic's `input_tokens` counts only the input neither read from nor written to its
//! prompt cache; OpenAI's `prompt_tokens` counts all of it. So `prompt_tokens` = `input_tokens` +
//! `cache_read_input_tokens` + `cache_creation_input_tokens`, `cached_tokens` = the cache reads and
//! `cache_write_tokens` = the cache writes, each priced at its own price.
//!
//! Errors (`{"type": "error", "error": {"type", "message"}}`) are rewritten in OpenAI's shape for the
//! client; 529 (`overloaded_error`) is the provider's overload, as a 503 is (`http_529`).

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::super::{Lack, UpstreamError, UpstreamErrorKind, retry_after, uri};
use super::model::{Answer, Delta, Finish, ToolCall};
use crate::openai::{AnthropicUsage, Endpoint};

/// The answer budget sent when neither the client nor the tier gave one; Anthropic requires one.
/// Every current Claude model can write at least this much.
const DEFAULT_MAX_TOKENS: u64 = 4096;

/// What the system prompt gains for OpenAI's `response_format: {"type": "json_object"}`.
const JSON_OBJECT: &str = "Answer with a single JSON object and nothing else.";

/// Whether `endpoint` is Anthropic's own, passed through as it came rather than translated.
pub(super) fn own(endpoint: Endpoint) -> bool {
    endpoint == Endpoint::Messages
}

/// Chat and Messages go to `messages`; Anthropic serves no embeddings, and Responses only through
/// chat.
pub(super) fn urls(base: &url::Url) -> Result<Vec<Option<Uri>>, UpstreamError> {
    Endpoint::ALL
        .iter()
        .map(|endpoint| match endpoint {
            Endpoint::ChatCompletions | Endpoint::Messages => uri(base, "messages").map(Some),
            // Responses reach Anthropic as chat completions, translated twice.
            Endpoint::Embeddings | Endpoint::Responses => Ok(None),
        })
        .collect()
}

/// Anthropic's own count of a Messages request's input tokens, `{base_url}/messages/count_tokens`.
pub(super) fn count_url(base: &url::Url) -> Result<Uri, UpstreamError> {
    uri(base, "messages/count_tokens")
}

/// The fields of a Messages request that Anthropic's `count_tokens` takes: it refuses any other
/// ("Extra inputs are not permitted"), `max_tokens`, `stream` and the sampling parameters among
/// them.
const COUNTED: [&str; 11] = [
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "cache_control",
    "output_config",
    "speed",
    "mcp_servers",
    "context_management",
];

/// A Messages request (as its tier gets it) as a body for `count_tokens`: its fields that
/// counting takes, as they came.
pub(super) fn count_body(body: &[u8]) -> Result<Vec<u8>, UpstreamError> {
    let fields: indexmap::IndexMap<String, &serde_json::value::RawValue> =
        serde_json::from_slice(body)
            .map_err(|_| untranslatable("messages", "the request is not a JSON object"))?;
    let counted: indexmap::IndexMap<&str, &serde_json::value::RawValue> = fields
        .iter()
        .filter(|(name, _)| COUNTED.contains(&name.as_str()))
        .map(|(name, value)| (name.as_str(), *value))
        .collect();
    Ok(serde_json::to_vec(&counted).expect("raw JSON values always serialize"))
}

/// A request the Messages API cannot carry: another tier may take it.
fn untranslatable(param: &'static str, why: &str) -> UpstreamError {
    UpstreamError::new_detail(
        UpstreamErrorKind::Lacks(Lack::Format(param)),
        format!("Anthropic's Messages API cannot carry it: {why}"),
    )
}

/// The gateway's chat completion request as a Messages request.
pub(super) fn encode(body: &[u8]) -> Result<Vec<u8>, UpstreamError> {
    let chat: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|_| untranslatable("messages", "the request is not a JSON object"))?;
    let field = |name: &str| chat.get(name).filter(|value| !value.is_null());
    let mut out = Map::new();
    out.insert(
        "model".into(),
        chat.get("model").cloned().unwrap_or(Value::Null),
    );

    let (mut system, messages) = messages(field("messages"))?;
    if let Some(format) = field("response_format") {
        match format["type"].as_str() {
            Some("text") => {}
            Some("json_object") => system.push(JSON_OBJECT.to_string()),
            Some("json_schema") => {
                let schema = format["json_schema"]["schema"].clone();
                if !schema.is_object() {
                    return Err(untranslatable(
                        "response_format",
                        "a json_schema response format needs json_schema.schema",
                    ));
                }
                out.insert(
                    "output_config".into(),
                    json!({"format": {"type": "json_schema", "schema": schema}}),
                );
            }
            _ => {
                return Err(untranslatable(
                    "response_format",
                    "an unknown response format",
                ));
            }
        }
    }
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(messages));
    let max_tokens = field("max_completion_tokens")
        .or(field("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), max_tokens.into());

    if field("n").and_then(Value::as_u64).is_some_and(|n| n != 1) {
        return Err(untranslatable("n", "it answers with one choice"));
    }
    if field("logprobs").and_then(Value::as_bool) == Some(true) {
        return Err(untranslatable(
            "logprobs",
            "it reports no log probabilities",
        ));
    }
    if let Some(temperature) = field("temperature").and_then(Value::as_f64) {
        // OpenAI's range is 0–2, Anthropic's 0–1: the hottest OpenAI asks for is Anthropic's hottest.
        out.insert("temperature".into(), json!(temperature.min(1.0)));
    }
    // Current Claude models refuse `temperature` and `top_p` together; OpenAI takes both. The
    // temperature is kept, as Anthropic advises altering one of the two.
    if let Some(top_p) = field("top_p")
        && !out.contains_key("temperature")
    {
        out.insert("top_p".into(), top_p.clone());
    }
    // Anthropic refuses a stop sequence of whitespace alone (OpenAI's common `"\n"`): such a
    // sequence is left out, the others kept.
    let stops: Vec<Value> = match field("stop") {
        Some(Value::String(stop)) => vec![Value::String(stop.clone())],
        Some(Value::Array(stops)) => stops.clone(),
        _ => Vec::new(),
    }
    .into_iter()
    .filter(|stop| stop.as_str().is_some_and(|stop| !stop.trim().is_empty()))
    .collect();
    if !stops.is_empty() {
        out.insert("stop_sequences".into(), Value::Array(stops));
    }
    if let Some(user) = field("user") {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(tools) = field("tools").and_then(Value::as_array) {
        let tools = tools.iter().map(tool).collect::<Result<Vec<_>, _>>()?;
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    let mut choice = match field("tool_choice") {
        None => None,
        Some(Value::String(choice)) => match choice.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "none" => Some(json!({"type": "none"})),
            "required" => Some(json!({"type": "any"})),
            _ => return Err(untranslatable("tool_choice", "an unknown tool_choice")),
        },
        Some(choice) => match choice["function"]["name"].as_str() {
            Some(name) => Some(json!({"type": "tool", "name": name})),
            None => return Err(untranslatable("tool_choice", "an unknown tool_choice")),
        },
    };
    // `none` takes no other field: with no tool called, there is nothing to run in parallel.
    if field("parallel_tool_calls").and_then(Value::as_bool) == Some(false)
        && out.contains_key("tools")
        && choice
            .as_ref()
            .is_none_or(|choice| choice["type"] != "none")
    {
        let choice = choice.get_or_insert_with(|| json!({"type": "auto"}));
        choice["disable_parallel_tool_use"] = Value::Bool(true);
    }
    if let Some(choice) = choice {
        out.insert("tool_choice".into(), choice);
    }
    if field("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), Value::Bool(true));
    }
    Ok(serde_json::to_vec(&out).expect("JSON values always serialize"))
}

/// OpenAI's tool definition as Anthropic's.
fn tool(tool: &Value) -> Result<Value, UpstreamError> {
    let function = &tool["function"];
    let Some(name) = function["name"].as_str() else {
        return Err(untranslatable(
            "tools",
            "a tool that is not a function with a name",
        ));
    };
    let mut out = json!({
        "name": name,
        "input_schema": match &function["parameters"] {
            Value::Null => json!({"type": "object", "properties": {}}),
            parameters => parameters.clone(),
        },
    });
    if let Some(description) = function["description"].as_str() {
        out["description"] = description.into();
    }
    if function["strict"].as_bool() == Some(true) {
        out["strict"] = Value::Bool(true);
    }
    Ok(out)
}

/// The system prompts, and the conversation as Anthropic's alternating turns.
fn messages(messages: Option<&Value>) -> Result<(Vec<String>, Vec<Value>), UpstreamError> {
    let bad = || untranslatable("messages", "a message it has no place for");
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in messages.and_then(Value::as_array).ok_or_else(bad)? {
        let content = &message["content"];
        let (role, blocks) = match message["role"].as_str() {
            Some("system" | "developer") => {
                system.push(text_of(content).ok_or_else(bad)?);
                continue;
            }
            Some("user") => ("user", blocks(content)?),
            Some("assistant") => {
                let mut blocks = blocks(content)?;
                for call in message["tool_calls"].as_array().into_iter().flatten() {
                    blocks.push(tool_use(call)?);
                }
                ("assistant", blocks)
            }
            Some("tool") => {
                let mut result = json!({
                    "type": "tool_result",
                    "tool_use_id": message["tool_call_id"].as_str().ok_or_else(bad)?,
                });
                let text = text_of(content).ok_or_else(bad)?;
                if !text.is_empty() {
                    result["content"] = text.into();
                }
                ("user", vec![result])
            }
            _ => return Err(bad()),
        };
        // An assistant turn with neither text nor tool calls says nothing Anthropic would take.
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let turns = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, turns))
}

/// A message's text: a string, or its text parts joined.
fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::Null => Some(String::new()),
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part["type"].as_str() {
                Some("text") => part["text"].as_str(),
                _ => None,
            })
            .collect::<Option<Vec<&str>>>()
            .map(|texts| texts.concat()),
        _ => None,
    }
}

/// A message's content as Anthropic's blocks.
fn blocks(content: &Value) -> Result<Vec<Value>, UpstreamError> {
    let bad = |why| untranslatable("messages", why);
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) if text.is_empty() => Ok(Vec::new()),
        Value::String(text) => Ok(vec![json!({"type": "text", "text": text})]),
        Value::Array(parts) => parts
            .iter()
            .filter(|part| part["type"] != "text" || part["text"] != "")
            .map(|part| match part["type"].as_str() {
                Some("text") => match part["text"].as_str() {
                    Some(text) => Ok(with_cache_control(json!({"type": "text", "text": text}), part)),
                    None => Err(bad("a text part without text")),
                },
                Some("image_url") => {
                    let url = part["image_url"]["url"]
                        .as_str()
                        .ok_or_else(|| bad("an image part without a URL"))?;
                    Ok(json!({"type": "image", "source": image_source(url).ok_or_else(|| bad("an image data URL that is not base64"))?}))
                }
                _ => Err(bad("a content part other than text and images")),
            })
            .collect(),
        _ => Err(bad("content that is neither text nor parts")),
    }
}

/// A block with the client's `cache_control` breakpoint, where its part has one (Anthropic caches
/// a prompt only up to the breakpoints a request marks).
fn with_cache_control(mut block: Value, part: &Value) -> Value {
    if let Some(control) = part
        .get("cache_control")
        .filter(|control| control.is_object())
    {
        block["cache_control"] = control.clone();
    }
    block
}

/// An image URL as Anthropic's source: a `data:` URL as base64, any other as a URL.
fn image_source(url: &str) -> Option<Value> {
    let Some(data) = url.strip_prefix("data:") else {
        return Some(json!({"type": "url", "url": url}));
    };
    let (media_type, base64) = data.split_once(";base64,")?;
    Some(json!({"type": "base64", "media_type": media_type, "data": base64}))
}

/// An assistant's earlier tool call as Anthropic's `tool_use` block.
fn tool_use(call: &Value) -> Result<Value, UpstreamError> {
    let bad = |why| untranslatable("messages", why);
    let function = &call["function"];
    let arguments = function["arguments"].as_str().unwrap_or("");
    let input: Value = if arguments.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(arguments)
            .map_err(|_| bad("a tool call whose arguments are not JSON"))?
    };
    if !input.is_object() {
        return Err(bad("a tool call whose arguments are not a JSON object"));
    }
    Ok(json!({
        "type": "tool_use",
        "id": call["id"].as_str().ok_or_else(|| bad("a tool call without an id"))?,
        "name": function["name"].as_str().ok_or_else(|| bad("a tool call without a name"))?,
        "input": input,
    }))
}

fn finish(stop_reason: &str) -> Finish {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => Finish::Length,
        "tool_use" => Finish::ToolCalls,
        "refusal" => Finish::ContentFilter,
        // end_turn, stop_sequence, pause_turn and whatever Anthropic adds next.
        _ => Finish::Stop,
    }
}

/// A content block of a message, or the start of one in a stream.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    /// Thinking, server tools' blocks and whatever Anthropic adds: nothing an OpenAI client reads.
    #[serde(other)]
    Other,
}

/// A whole message as the gateway's answer.
pub(super) fn decode_answer(body: &[u8]) -> Result<Answer, UpstreamError> {
    #[derive(Deserialize)]
    struct Message {
        id: String,
        #[serde(default)]
        model: String,
        content: Vec<Block>,
        #[serde(default)]
        stop_reason: Option<String>,
        #[serde(default)]
        usage: Option<AnthropicUsage>,
    }
    let message: Message = serde_json::from_slice(body).map_err(|err| {
        UpstreamError::malformed(format!("the answer is not an Anthropic message: {err}"))
    })?;
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in message.content {
        match block {
            Block::Text { text: piece } => text.get_or_insert_default().push_str(&piece),
            Block::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id,
                name,
                arguments: arguments(&input),
            }),
            Block::Other => {}
        }
    }
    Ok(Answer {
        id: message.id,
        model: message.model,
        text,
        tool_calls,
        finish: message.stop_reason.as_deref().map(finish),
        usage: message.usage.and_then(AnthropicUsage::usage),
    })
}

/// A tool's input as OpenAI's arguments string.
fn arguments(input: &Value) -> String {
    match input {
        Value::Null => "{}".to_string(),
        input => input.to_string(),
    }
}

/// Reads a stream's events into the gateway's pieces of an answer. Anthropic numbers content
/// blocks (text and tool calls together); OpenAI numbers tool calls alone, so each tool block is
/// given the next tool index.
///
/// `message_start` is held back until the model begins its answer (its first content block, of
/// any kind, thinking too) or the message ends: the stream is committed to this tier on its first
/// piece, and Anthropic may send an `overloaded_error` right after `message_start`, or the
/// connection break there, before any of the answer exists. Then the first piece is the error (or
/// there is none), and the request falls back instead of ending the client's stream in an error.
#[derive(Default)]
pub(super) struct Events {
    tool_index: HashMap<u64, u32>,
    usage: AnthropicUsage,
    /// `message_start`'s piece, until the answer begins.
    start: Option<Delta>,
    /// A `message_delta` gave the output count: the usage is the whole answer's, not
    /// `message_start`'s early figures.
    counted: bool,
}

impl Events {
    /// The pieces one event's data adds (none for a ping's or a block's end).
    pub(super) fn read(&mut self, data: &str, out: &mut Vec<Delta>) -> Result<(), UpstreamError> {
        #[derive(Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Event {
            MessageStart {
                message: Start,
            },
            ContentBlockStart {
                index: u64,
                content_block: Block,
            },
            ContentBlockDelta {
                index: u64,
                delta: BlockDelta,
            },
            MessageDelta {
                delta: MessageDelta,
                #[serde(default)]
                usage: Option<AnthropicUsage>,
            },
            MessageStop {},
            Ping {},
            Error {
                error: ErrorBody,
            },
            /// `content_block_stop` and the events Anthropic may add, which it asks clients to
            /// pass over.
            #[serde(other)]
            Other,
        }
        #[derive(Deserialize)]
        struct Start {
            id: String,
            #[serde(default)]
            model: String,
            #[serde(default)]
            usage: Option<AnthropicUsage>,
        }
        #[derive(Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum BlockDelta {
            TextDelta {
                text: String,
            },
            InputJsonDelta {
                partial_json: String,
            },
            /// Thinking, signatures, citations.
            #[serde(other)]
            Other,
        }
        #[derive(Deserialize)]
        struct MessageDelta {
            #[serde(default)]
            stop_reason: Option<String>,
        }
        let event: Event = serde_json::from_str(data).map_err(|err| {
            UpstreamError::stream_broken(format!("an event that is not Anthropic's: {err}"))
        })?;
        if matches!(
            event,
            Event::ContentBlockStart { .. }
                | Event::ContentBlockDelta { .. }
                | Event::MessageDelta { .. }
                | Event::MessageStop {}
        ) {
            out.extend(self.start.take());
        }
        match event {
            Event::MessageStart { message } => {
                if let Some(usage) = message.usage {
                    self.usage.update(usage);
                }
                self.start = Some(Delta::Start {
                    id: message.id,
                    model: message.model,
                });
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                Block::Text { text } if !text.is_empty() => out.push(Delta::Text(text)),
                Block::ToolUse { id, name, input } => {
                    let tool = u32::try_from(self.tool_index.len()).unwrap_or(u32::MAX);
                    self.tool_index.insert(index, tool);
                    out.push(Delta::ToolCall {
                        index: tool,
                        id,
                        name,
                    });
                    // Anthropic starts a tool block with an empty input and streams it after; one
                    // given whole here is passed on whole.
                    if input.as_object().is_some_and(|input| !input.is_empty()) {
                        out.push(Delta::Arguments {
                            index: tool,
                            fragment: input.to_string(),
                        });
                    }
                }
                _ => {}
            },
            Event::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } if !text.is_empty() => out.push(Delta::Text(text)),
                BlockDelta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                    if let Some(&tool) = self.tool_index.get(&index) {
                        out.push(Delta::Arguments {
                            index: tool,
                            fragment: partial_json,
                        });
                    }
                }
                _ => {}
            },
            // Anthropic may send several, each with the counts so far; the usage chunk waits for
            // `message_stop`, so that the client gets one, the last before `[DONE]`.
            Event::MessageDelta { delta, usage } => {
                // The answer's length is known only here: `message_start`'s output count is the
                // few tokens written so far, so a delta without one leaves the usage unknown.
                if let Some(usage) = usage {
                    self.counted |= usage.output_tokens.is_some();
                    self.usage.update(usage);
                }
                if let Some(stop_reason) = delta.stop_reason {
                    out.push(Delta::Finish(finish(&stop_reason)));
                }
            }
            Event::MessageStop {} => {
                // Without an output count from a `message_delta`, `message_start`'s early one
                // would pass for the answer's: the gateway counts the answer instead.
                if self.counted
                    && let Some(usage) = self.usage.usage()
                {
                    out.push(Delta::Usage(usage));
                }
                out.push(Delta::Done);
            }
            Event::Ping {} => out.push(Delta::KeepAlive),
            // Anthropic ends a stream after its error event; the gateway's stream ends with it,
            // without `[DONE]`, as a stream cut short ends (the relay's one rule for a failed
            // stream: its error event is the last). Its type is OpenAI's, as in a refusal. Before
            // the answer began, the error is the first piece and `message_start`'s is dropped:
            // nothing of this tier reaches the client, which may then fall back.
            Event::Error { error } => {
                self.start = None;
                out.push(Delta::Error {
                    kind: openai_type(&error.kind),
                    code: error.kind,
                    message: error.message,
                });
            }
            Event::Other => {}
        }
        Ok(())
    }
}

impl Events {
    /// What is known of the usage so far, for a stream that ends without its usage chunk: the
    /// whole answer's once a `message_delta` counted it, else `message_start`'s input figures
    /// (exact, cache reads and writes included), the output left to count.
    pub(super) fn usage_so_far(&self) -> Option<crate::upstream::UsageSoFar> {
        let usage = self.usage.usage()?;
        Some(if self.counted {
            crate::upstream::UsageSoFar::Whole(usage)
        } else {
            crate::upstream::UsageSoFar::Prompt(usage)
        })
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// What a status other than 2xx means, with Anthropic's error body rewritten in OpenAI's shape
/// (passed back to the client where the refusal is the request's).
pub(super) fn refusal(status: StatusCode, body: Bytes, headers: &HeaderMap) -> UpstreamError {
    #[derive(Deserialize)]
    struct Envelope {
        error: ErrorBody,
    }
    // 529 is Anthropic's own overload: the provider's failure, as a 503 is, and named as it came
    // (`http_529`) in the fallback header and the ledger.
    let overloaded = status.as_u16() == 529;
    let parsed = serde_json::from_slice::<Envelope>(&body);
    let spent = parsed
        .as_ref()
        .is_ok_and(|Envelope { error }| quota_spent(status, error));
    let body = match parsed {
        Ok(Envelope { error }) => Bytes::from(
            json!({"error": {
                "message": error.message,
                "type": openai_type(&error.kind),
                "param": null,
                "code": if error.kind.is_empty() { Value::Null } else { Value::String(error.kind) },
            }})
            .to_string(),
        ),
        Err(_) => body,
    };
    if spent || status == StatusCode::PAYMENT_REQUIRED {
        return UpstreamError::quota_exhausted(status, body, retry_after(headers));
    }
    let mut error = UpstreamError::status(status, body, retry_after(headers));
    if overloaded {
        error.detail = "answered HTTP 529 (overloaded_error)".into();
    }
    error
}

/// The wordings in which Anthropic refuses for the account's money rather than the request: its
/// credit spent, or the spend limit the organisation set reached. Older answers give them as a
/// 400 `invalid_request_error`, newer ones as a 402 `billing_error`; each is anchored at the
/// start of Anthropic's message, since a message may quote the client's words further on.
const QUOTA_SPENT: [&str; 3] = [
    "Your credit balance is too low",
    "You have reached your specified API usage limits",
    "Usage is blocked due to insufficient credits",
];

fn quota_spent(status: StatusCode, error: &ErrorBody) -> bool {
    error.kind == "billing_error"
        || (status == StatusCode::BAD_REQUEST
            && QUOTA_SPENT
                .iter()
                .any(|wording| error.message.starts_with(wording)))
}

/// Anthropic's error type as the OpenAI type an SDK expects beside the same status.
fn openai_type(kind: &str) -> &'static str {
    match kind {
        "authentication_error"
        | "permission_error"
        | "not_found_error"
        | "invalid_request_error"
        | "request_too_large" => "invalid_request_error",
        "billing_error" => "insufficient_quota",
        "rate_limit_error" => "rate_limit_error",
        "overloaded_error" | "api_error" => "server_error",
        _ => "upstream_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::Usage;

    fn encoded(chat: Value) -> Value {
        serde_json::from_slice(&encode(&serde_json::to_vec(&chat).unwrap()).unwrap()).unwrap()
    }

    fn refused(chat: Value) -> UpstreamError {
        encode(&serde_json::to_vec(&chat).unwrap()).unwrap_err()
    }

    /// Every part of a chat request Anthropic has a place for lands in it: system prompts, turns
    /// (tool results merged into one user turn), tool calls with their ids and their arguments as
    /// an object, images, tools and the tool choice, the limits and the sampling.
    #[test]
    fn a_chat_request_is_written_as_a_messages_request() {
        let chat = json!({
            "model": "claude-sonnet-5-5",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this picture, and the weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_01", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_02", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "toolu_01", "content": "18°C"},
                {"role": "tool", "tool_call_id": "toolu_02", "content": [{"type": "text", "text": "4°C"}]},
            ],
            "tools": [{"type": "function", "function": {
                "name": "weather", "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            }}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "parallel_tool_calls": false,
            "max_completion_tokens": 300,
            "temperature": 1.5,
            "top_p": 0.9,
            "stop": "END",
            "user": "u-42",
            "seed": 7,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        assert_eq!(
            encoded(chat),
            json!({
                "model": "claude-sonnet-5-5",
                "system": "Be brief.\n\nUse tools.",
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is in this picture, and the weather?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "toolu_01", "name": "weather", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": "toolu_02", "name": "weather", "input": {"city": "Oslo"}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18°C"},
                        {"type": "tool_result", "tool_use_id": "toolu_02", "content": "4°C"},
                    ]},
                ],
                "max_tokens": 300,
                "temperature": 1.0,
                "stop_sequences": ["END"],
                "metadata": {"user_id": "u-42"},
                "tools": [{
                    "name": "weather", "description": "The weather in a city",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                }],
                "tool_choice": {"type": "tool", "name": "weather", "disable_parallel_tool_use": true},
                "stream": true,
            })
        );
    }

    #[test]
    fn the_answer_budget_and_json_output_are_anthropics() {
        let hi = json!([{"role": "user", "content": "hi"}]);
        let plain = encoded(json!({"model": "m", "messages": hi}));
        assert_eq!(plain["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(
            encoded(json!({"model": "m", "messages": hi, "max_tokens": 12}))["max_tokens"],
            12
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let structured = encoded(json!({"model": "m", "messages": hi,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}));
        assert_eq!(
            structured["output_config"],
            json!({"format": {"type": "json_schema", "schema": schema}})
        );
        let object = encoded(
            json!({"model": "m", "messages": hi, "response_format": {"type": "json_object"}}),
        );
        assert_eq!(object["system"], JSON_OBJECT);
        for choice in [("auto", "auto"), ("none", "none"), ("required", "any")] {
            let tools = json!([{"type": "function", "function": {"name": "f"}}]);
            let sent = encoded(
                json!({"model": "m", "messages": hi, "tools": tools, "tool_choice": choice.0}),
            );
            assert_eq!(sent["tool_choice"], json!({"type": choice.1}));
            assert_eq!(
                sent["tools"][0]["input_schema"],
                json!({"type": "object", "properties": {}})
            );
        }
    }

    /// What OpenAI takes and Claude refuses is written so Claude takes it: `temperature` with
    /// `top_p` keeps the temperature alone; a whitespace-only stop sequence is left out;
    /// `tool_choice: "none"` carries no `disable_parallel_tool_use`.
    #[test]
    fn what_claude_refuses_is_not_sent() {
        let hi = json!([{"role": "user", "content": "hi"}]);
        let both = encoded(json!({"model": "m", "messages": hi, "temperature": 0.2, "top_p": 0.9}));
        assert_eq!(
            (both["temperature"].as_f64(), both.get("top_p")),
            (Some(0.2), None)
        );
        let alone = encoded(json!({"model": "m", "messages": hi, "top_p": 0.9}));
        assert_eq!(alone["top_p"], 0.9);
        let stops = encoded(json!({"model": "m", "messages": hi, "stop": ["\n", " ", "END"]}));
        assert_eq!(stops["stop_sequences"], json!(["END"]));
        let newline = encoded(json!({"model": "m", "messages": hi, "stop": "\n"}));
        assert!(newline.get("stop_sequences").is_none());
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let none = encoded(json!({"model": "m", "messages": hi, "tools": tools,
            "tool_choice": "none", "parallel_tool_calls": false}));
        assert_eq!(none["tool_choice"], json!({"type": "none"}));
    }

    /// A client's `cache_control` breakpoint on a text part reaches Anthropic on its block.
    #[test]
    fn a_cache_breakpoint_on_a_text_part_is_carried() {
        let sent = encoded(
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "a long document", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "the question"},
            ]}]}),
        );
        assert_eq!(
            sent["messages"][0]["content"],
            json!([
                {"type": "text", "text": "a long document", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "the question"},
            ])
        );
    }

    /// What would change the answer's shape is not dropped: the tier passes the request on.
    #[test]
    fn what_anthropic_cannot_carry_passes_the_request_on() {
        let hi = json!([{"role": "user", "content": "hi"}]);
        for (chat, param) in [
            (json!({"model": "m", "messages": hi, "n": 2}), "n"),
            (
                json!({"model": "m", "messages": hi, "logprobs": true}),
                "logprobs",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
                "messages",
            ),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{not json"}}]}]}),
                "messages",
            ),
        ] {
            let error = refused(chat.clone());
            assert_eq!(
                error.kind,
                UpstreamErrorKind::Lacks(Lack::Format(param)),
                "{chat}"
            );
            assert!(error.is_retryable() && !error.counts_against_provider());
        }
    }

    /// Text and tool calls come back in OpenAI's terms, ids kept and the input as a JSON string;
    /// usage counts every input token, with cache reads and writes apart.
    #[test]
    fn a_message_is_read_as_the_gateways_answer() {
        let message = json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-5-5",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_01", "name": "weather", "input": {"city": "Paris"}},
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 100, "output_tokens": 12, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 30},
        });
        let answer = decode_answer(message.to_string().as_bytes()).unwrap();
        assert_eq!(
            answer,
            Answer {
                id: "msg_01".into(),
                model: "claude-sonnet-5-5".into(),
                text: Some("Checking.".into()),
                tool_calls: vec![ToolCall {
                    id: "toolu_01".into(),
                    name: "weather".into(),
                    arguments: "{\"city\":\"Paris\"}".into(),
                }],
                finish: Some(Finish::ToolCalls),
                usage: Some(Usage {
                    prompt_tokens: 150,
                    completion_tokens: 12,
                    cached_tokens: 30,
                    cache_write_tokens: 20,
                }),
            }
        );
        assert!(decode_answer(b"{\"id\": \"msg_01\", \"cont").is_err());
    }

    /// A stream's events, in the order Anthropic's reference gives them, become the gateway's
    /// pieces: tool calls numbered apart from the text block, usage once the message ends.
    #[test]
    fn a_stream_is_read_as_the_gateways_pieces() {
        let events = [
            r#"{"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant","content":[],"model":"claude-haiku-4-5","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1,"cache_read_input_tokens":5,"cache_creation_input_tokens":0}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me check"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01","name":"weather","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\": \"Pa"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ris\"}"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":40}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let mut reader = Events::default();
        let mut pieces = Vec::new();
        for event in events {
            reader.read(event, &mut pieces).unwrap();
        }
        assert_eq!(
            pieces,
            [
                Delta::Start {
                    id: "msg_01".into(),
                    model: "claude-haiku-4-5".into()
                },
                Delta::KeepAlive,
                Delta::Text("Let me check".into()),
                Delta::ToolCall {
                    index: 0,
                    id: "toolu_01".into(),
                    name: "weather".into()
                },
                Delta::Arguments {
                    index: 0,
                    fragment: "{\"city\": \"Pa".into()
                },
                Delta::Arguments {
                    index: 0,
                    fragment: "ris\"}".into()
                },
                Delta::Finish(Finish::ToolCalls),
                Delta::Usage(Usage {
                    prompt_tokens: 30,
                    completion_tokens: 40,
                    cached_tokens: 5,
                    cache_write_tokens: 0,
                }),
                Delta::Done,
            ]
        );
        let mut pieces = Vec::new();
        Events::default()
            .read(
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                &mut pieces,
            )
            .unwrap();
        assert_eq!(
            pieces,
            [Delta::Error {
                kind: "server_error",
                code: "overloaded_error".into(),
                message: "Overloaded".into()
            }]
        );
        assert!(Events::default().read("not json", &mut Vec::new()).is_err());

        // Overloaded right after `message_start`: the error is the first piece, so the request
        // can still fall back; so is a ping's keep-alive no start of the answer.
        let mut reader = Events::default();
        let mut pieces = Vec::new();
        for event in [
            r#"{"type":"message_start","message":{"id":"msg_02","model":"claude-haiku-4-5","usage":{"input_tokens":5,"output_tokens":1}}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ] {
            reader.read(event, &mut pieces).unwrap();
        }
        assert_eq!(
            pieces,
            [
                Delta::KeepAlive,
                Delta::Error {
                    kind: "server_error",
                    code: "overloaded_error".into(),
                    message: "Overloaded".into()
                },
            ]
        );
    }

    /// A usage that lacks a count is no usage (the gateway then counts the tokens and says they
    /// are estimated), never a count of 0: a whole message without `output_tokens`, and a stream
    /// whose `message_delta` carries no output count, which `message_start`'s early count of 1
    /// must not stand in for. Thinking blocks, their deltas and their signatures are passed over.
    #[test]
    fn a_usage_missing_a_count_is_left_to_the_gateways_estimate() {
        let message = json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
            "content": [{"type": "redacted_thinking", "data": "EmwKAhgBEgy"}, {"type": "text", "text": "Hi."}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 100},
        });
        let answer = decode_answer(message.to_string().as_bytes()).unwrap();
        assert_eq!(answer.text.as_deref(), Some("Hi."));
        assert_eq!(answer.usage, None);

        let events = [
            r#"{"type":"message_start","message":{"id":"msg_01","model":"claude-haiku-4-5","usage":{"input_tokens":25,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me think"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hi."}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let mut reader = Events::default();
        let mut pieces = Vec::new();
        for event in events {
            reader.read(event, &mut pieces).unwrap();
        }
        assert_eq!(
            pieces,
            [
                Delta::Start {
                    id: "msg_01".into(),
                    model: "claude-haiku-4-5".into()
                },
                Delta::Text("Hi.".into()),
                Delta::Finish(Finish::Stop),
                Delta::Done,
            ]
        );
    }

    /// Usage reaches the client once, when the message stops, with the last counts, however many
    /// `message_delta` events carried them; a `message_delta` without an output count leaves the
    /// answer to be counted (never `message_start`'s early 1 as if exact), while the input
    /// figures `message_start` gave stay known for the ledger.
    #[test]
    fn usage_comes_once_at_the_end_and_only_when_counted() {
        let start = r#"{"type":"message_start","message":{"id":"msg_01","model":"claude-haiku-4-5","usage":{"input_tokens":1000,"output_tokens":1,"cache_read_input_tokens":50000,"cache_creation_input_tokens":3000}}}"#;
        let text = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi."}}"#;
        let usages = |events: &[&str]| {
            let mut reader = Events::default();
            let mut pieces = Vec::new();
            for event in events {
                reader.read(event, &mut pieces).unwrap();
            }
            let usages: Vec<Usage> = pieces
                .iter()
                .filter_map(|piece| match piece {
                    Delta::Usage(usage) => Some(*usage),
                    _ => None,
                })
                .collect();
            (usages, pieces.last().cloned(), reader.usage_so_far())
        };
        let whole = Usage {
            prompt_tokens: 54_000,
            completion_tokens: 20,
            cached_tokens: 50_000,
            cache_write_tokens: 3000,
        };
        let (once, last, _) = usages(&[
            start,
            text,
            r#"{"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":10}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":20}}"#,
            r#"{"type":"message_stop"}"#,
        ]);
        assert_eq!((once, last), (vec![whole], Some(Delta::Done)));

        let (none, _, so_far) = usages(&[
            start,
            text,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#,
            r#"{"type":"message_stop"}"#,
        ]);
        assert_eq!(none, Vec::new());
        let Some(crate::upstream::UsageSoFar::Prompt(prompt)) = so_far else {
            panic!("{so_far:?}");
        };
        assert_eq!(
            (
                prompt.prompt_tokens,
                prompt.cached_tokens,
                prompt.cache_write_tokens
            ),
            (54_000, 50_000, 3000)
        );
        // Cut after a counted delta, before `message_stop`: the counts are the whole answer's.
        let (_, _, so_far) = usages(&[
            start,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":20}}"#,
        ]);
        assert_eq!(so_far, Some(crate::upstream::UsageSoFar::Whole(whole)));
    }

    /// Anthropic's errors in OpenAI's shape; 529 is the provider's overload, as a 503 is; a prompt too
    /// long is the request's size, with the window it states.
    #[test]
    fn errors_read_in_openais_terms() {
        let overloaded = refusal(
            StatusCode::from_u16(529).unwrap(),
            Bytes::from_static(br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#),
            &HeaderMap::new(),
        );
        assert_eq!(
            overloaded.kind,
            UpstreamErrorKind::Status(StatusCode::from_u16(529).unwrap())
        );
        assert_eq!(overloaded.reason(), "http_529");
        assert!(overloaded.is_retryable() && overloaded.counts_against_provider());
        let invalid = refusal(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(br#"{"type":"error","error":{"type":"invalid_request_error","message":"messages: roles must alternate"}}"#),
            &HeaderMap::new(),
        );
        assert!(!invalid.is_retryable());
        assert_eq!(
            serde_json::from_slice::<Value>(&invalid.body).unwrap(),
            json!({"error": {"message": "messages: roles must alternate", "type": "invalid_request_error", "param": null, "code": "invalid_request_error"}})
        );
        let too_long = refusal(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"}}"#),
            &HeaderMap::new(),
        );
        assert_eq!(too_long.kind, UpstreamErrorKind::ContextTooLong);
        let refusal = too_long.context_refusal().unwrap();
        assert_eq!((refusal.window, refusal.prompt), (200_000, 208_310));
    }

    /// The account's money spent, in each of Anthropic's wordings, is the provider's state: the
    /// request moves on, the tier rests (a rate limit's rest, at least a minute), the breaker
    /// hears nothing. The same words quoted later in a message are the client's.
    #[test]
    fn a_spent_account_is_a_rest_not_the_clients_error() {
        for (status, body) in [
            (
                402,
                r#"{"type":"error","error":{"type":"billing_error","message":"Your credit balance is too low to access the Anthropic API."}}"#,
            ),
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#,
            ),
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"You have reached your specified API usage limits. You will regain access on 2027-01-01 at 00:00 UTC."}}"#,
            ),
        ] {
            let error = refusal(
                StatusCode::from_u16(status).unwrap(),
                Bytes::from_static(body.as_bytes()),
                &HeaderMap::new(),
            );
            assert_eq!(error.kind, UpstreamErrorKind::QuotaExhausted, "{body}");
            assert!(error.is_retryable() && error.is_rate_limit(), "{body}");
            assert!(!error.counts_against_provider(), "{body}");
            assert!(
                error.retry_after >= Some(crate::upstream::QUOTA_REST),
                "{body}"
            );
        }
        let quoted = refusal(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(br#"{"type":"error","error":{"type":"invalid_request_error","message":"messages.0: 'Your credit balance is too low' is not a tool name"}}"#),
            &HeaderMap::new(),
        );
        assert_eq!(
            quoted.kind,
            UpstreamErrorKind::Status(StatusCode::BAD_REQUEST)
        );
    }

    proptest::proptest! {
        /// Any text as an event, any bytes as a request or an answer: read or refused, never a
        /// panic.
        #[test]
        fn anything_is_read_or_refused_without_a_panic(
            text in ".{0,200}",
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let _ = Events::default().read(&text, &mut Vec::new());
            let _ = encode(&bytes);
            let _ = decode_answer(&bytes);
            let _ = refusal(StatusCode::BAD_REQUEST, Bytes::from(bytes), &HeaderMap::new());
        }
    }
}
