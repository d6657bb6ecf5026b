//! `/v1/responses`, OpenAI's Responses API: a body must hold `input` (a string or a list of
//! items); a tier sets its system prompt as `instructions` and fills in its `max_output_tokens` and
//! `temperature` where the client gave none; prompts and answers are counted item by item; stream
//! events are read for the output text, the end of the response and its usage.
//!
//! A tier whose server does not serve Responses gets the request as a chat completion
//! ([`VIA_CHAT`]), and its answer — whole, or a stream of chat chunks — is written back in
//! Responses' shapes by the gateway, with one `resp_…` id and the stream events in the order
//! OpenAI documents them: `response.created`, `response.in_progress`, then per output item
//! `response.output_item.added`, its content (`response.content_part.added`,
//! `response.output_text.delta`… `.done`, `response.content_part.done`, or
//! `response.function_call_arguments.delta`… `.done`), `response.output_item.done`, and last
//! `response.completed` (`response.incomplete` when the answer budget ran out) with the usage.
//!
//! What is carried to chat: `instructions` as the system message; `input` as a user message, or
//! its items — messages (text and image parts), `function_call` as the assistant's tool calls,
//! `function_call_output` as tool messages; `reasoning` items are left out (chat servers take no
//! thinking back). Function `tools`, `tool_choice`, `parallel_tool_calls`; `text.format` as
//! `response_format`; `max_output_tokens` as the limit the model takes; `temperature`, `top_p`,
//! `user`; `reasoning.effort` as `reasoning_effort`, except to OpenAI's models that are not
//! reasoning models (gpt-4o, gpt-4.1…), which refuse it. What only OpenAI's servers can do
//! (built-in tools such as web search, `item_reference`) makes a translated tier pass the request
//! on. State the gateway keeps only with `[responses] store = true` (`store`,
//! `previous_response_id`) is checked here for its shape; [`crate::stored`] keeps it and writes the
//! turns before a request into it ([`with_state`]). State it never keeps (`background`,
//! `conversation`, stored `prompt`s) is refused with a 400 naming the field, never dropped.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::request::raw;
use super::tokens::{count, text_of};
use super::{
    Chunk, Edits, EndpointSpec, RequestBody, RequestError, Said, StreamMarks, StreamTranslator,
    Usage, ViaChat,
};
use crate::config::{Abilities, ChainTier, takes_max_completion_tokens};

pub const SPEC: EndpointSpec = EndpointSpec {
    path: "responses",
    ledger_name: "responses",
    validate,
    check_prompt: None,
    rewrite,
    count_prompt,
    count_answer,
    warmup,
    answer_texts: Some(answer_texts),
    said: Some(said),
    needs,
    answer_limits: &["max_output_tokens"],
    answer_budget,
    answer_usage,
    read_event,
    done: None,
    interrupted,
    via_chat: Some(VIA_CHAT),
    error_body: super::openai_error,
    key_header: None,
    count_tokens: None,
    overloaded_status: None,
    passed_headers: &[],
};

/// How a tier that serves only chat completions is spoken to.
pub const VIA_CHAT: ViaChat = ViaChat {
    request: to_chat,
    answer: from_chat,
    prompt_first: false,
    stream: |request, _prompt_tokens| Box::new(ChatEvents::new(request)),
};

/// Fields of OpenAI's Responses API that need state the gateway never keeps.
const STATEFUL: [(&str, &str); 3] = [
    (
        "background",
        "is not supported: tierwise answers while the request is open; leave it out or set it to false",
    ),
    (
        "conversation",
        "is not supported: tierwise keeps no conversations; continue one with `previous_response_id`, or send the whole conversation as `input` items",
    ),
    (
        "prompt",
        "is not supported: stored prompt templates live on OpenAI's servers; send the prompt as `input`",
    ),
];

fn validate(body: &RequestBody<'_>) -> Result<(), RequestError> {
    let Some(input) = body.field("input") else {
        return Err(RequestError::field("input", "is required"));
    };
    if !input.get().trim_start().starts_with(['"', '[']) {
        return Err(RequestError::field(
            "input",
            "must be a string or an array of input items",
        ));
    }
    for (name, problem) in STATEFUL {
        if let Some(value) = body.field(name)
            && !matches!(value.get().trim(), "null" | "false")
        {
            return Err(RequestError::field(name, problem));
        }
    }
    if let Some(store) = body.field("store")
        && serde_json::from_str::<Option<bool>>(store.get()).is_err()
    {
        return Err(RequestError::field("store", "must be true or false"));
    }
    if let Some(previous) = body.field("previous_response_id")
        && serde_json::from_str::<Option<String>>(previous.get()).is_err()
    {
        return Err(RequestError::field(
            "previous_response_id",
            "must be the id of an earlier response (a string)",
        ));
    }
    if let Some(value) = body.field("max_output_tokens")
        && serde_json::from_str::<Option<u64>>(value.get()).is_err()
    {
        return Err(RequestError::field(
            "max_output_tokens",
            "must be a whole number of tokens",
        ));
    }
    Ok(())
}

fn rewrite(body: &RequestBody<'_>, step: &ChainTier, edits: &mut Edits) {
    let tier = &step.tier;
    // The gateway keeps the state itself (docs/endpoints.md): a server the request is passed
    // through to never keeps it, and never sees an id of the gateway's (the turns before are in
    // `input` already). A tier served through chat keeps both fields, for its answer to echo.
    if tier.provider.serves_responses {
        edits.set("store", raw(&false));
        edits.remove("previous_response_id");
    }
    if let Some(prompt) = &step.system_prompt {
        edits.set("instructions", raw(prompt));
    }
    // `null` is no limit: the tier's applies, as admission (budgets, tpm) reserved it.
    if let Some(max_tokens) = tier.max_tokens
        && !body.gives("max_output_tokens")
    {
        edits.set("max_output_tokens", raw(&max_tokens));
    }
    if let Some(temperature) = tier.temperature
        && !body.gives("temperature")
    {
        edits.set("temperature", raw(&temperature));
    }
}

/// Function tools, a `json_schema` text format, image parts in any input item.
fn needs(body: &RequestBody<'_>) -> Abilities {
    let tools = body
        .field("tools")
        .is_some_and(|tools| !matches!(tools.get().trim(), "null" | "[]"));
    let json_schema = body
        .field("text")
        .and_then(|text| serde_json::from_str::<Value>(text.get()).ok())
        .is_some_and(|text| text["format"]["type"] == "json_schema");
    let vision = body.field("input").is_some_and(|input| {
        serde_json::from_str::<Value>(input.get()).is_ok_and(|input| {
            input.as_array().is_some_and(|items| {
                items.iter().any(|item| {
                    item["content"]
                        .as_array()
                        .is_some_and(|parts| parts.iter().any(|part| part["type"] == "input_image"))
                })
            })
        })
    });
    Abilities {
        tools,
        json_schema,
        vision,
    }
}

fn answer_budget(body: &RequestBody<'_>) -> Option<u64> {
    serde_json::from_str::<u64>(body.field("max_output_tokens")?.get()).ok()
}

/// Responses' usage (`input_tokens`, `output_tokens`, their details) in the gateway's terms.
fn usage_of(usage: &Value) -> Option<Usage> {
    let input = usage["input_tokens"].as_u64();
    let output = usage["output_tokens"].as_u64();
    if input.is_none() && output.is_none() {
        return None;
    }
    let details = &usage["input_tokens_details"];
    Some(Usage {
        prompt_tokens: input.unwrap_or(0),
        completion_tokens: output.unwrap_or(0),
        cached_tokens: details["cached_tokens"].as_u64().unwrap_or(0),
        cache_write_tokens: details["cache_write_tokens"].as_u64().unwrap_or(0),
    })
}

/// Usage in Responses' shape.
fn usage_json(usage: &Usage) -> Value {
    let mut details = json!({"cached_tokens": usage.cached_tokens});
    if usage.cache_write_tokens > 0 {
        details["cache_write_tokens"] = usage.cache_write_tokens.into();
    }
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": details,
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
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

/// The text of an input: a string, or each item's text and tool call, each with 3 tokens of
/// framing, as chat messages are counted; the instructions as one more.
fn count_prompt(model: &str, body: &[u8]) -> u64 {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    let instructions = match request["instructions"].as_str() {
        Some(text) => 3 + count(model, text),
        None => 0,
    };
    let input = match &request["input"] {
        Value::String(text) => 3 + count(model, text),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let text = match item["type"].as_str() {
                    Some("function_call") => item["arguments"].as_str().unwrap_or("").to_string(),
                    Some("function_call_output") => text_of(&item["output"]),
                    _ => parts_text(&item["content"]),
                };
                3 + count(model, &text)
            })
            .sum(),
        _ => 0,
    };
    instructions + input + 3
}

/// The text of a content value: a string, or its parts' `text` joined.
fn parts_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}

/// Every output item's text and every function call's arguments.
fn count_answer(model: &str, body: &[u8]) -> u64 {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    answer["output"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| match item["type"].as_str() {
                    Some("function_call") => count(model, item["arguments"].as_str().unwrap_or("")),
                    _ => count(model, &parts_text(&item["content"])),
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A response is one answer: its text is every output message's `output_text` parts in order
/// (what the SDKs' `output_text` joins).
fn answer_texts(answer: &mut Value) -> Vec<Vec<&mut String>> {
    let parts = answer
        .get_mut("output")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter(|item| item["type"] == "message")
        .filter_map(|item| item.get_mut("content").and_then(Value::as_array_mut))
        .flatten()
        .filter(|part| part["type"] == "output_text")
        .filter_map(|part| match part.get_mut("text") {
            Some(Value::String(text)) => Some(text),
            _ => None,
        })
        .collect();
    vec![parts]
}

/// The output messages' text and the `function_call` items.
fn said(answer: &Value) -> Said {
    let items = answer["output"].as_array().map_or(&[][..], Vec::as_slice);
    let mut said = Said::default();
    for item in items {
        match item["type"].as_str() {
            Some("message") => said.text.push_str(&output_text_of(&item["content"])),
            Some("function_call") => said.tool_calls.push((
                item["name"].as_str().unwrap_or("").to_string(),
                item["arguments"].as_str().unwrap_or("").to_string(),
            )),
            _ => {}
        }
    }
    said
}

/// A message's `output_text` parts joined (a refusal part is no answer text).
fn output_text_of(content: &Value) -> String {
    content
        .as_array()
        .into_iter()
        .flatten()
        .filter(|part| part["type"] == "output_text")
        .filter_map(|part| part["text"].as_str())
        .collect()
}

/// 16 tokens is the least OpenAI's Responses API takes.
fn warmup(model: &str) -> Value {
    json!({"model": model, "input": "Hi", "max_output_tokens": 16})
}

/// A stream event: its type, the text it adds, the response's id, the end and the usage.
fn read_event(data: &str) -> Option<Chunk> {
    #[derive(Deserialize)]
    struct Event<'a> {
        #[serde(borrow, rename = "type")]
        kind: Cow<'a, str>,
        #[serde(default)]
        sequence_number: Option<u64>,
        #[serde(default)]
        delta: Option<String>,
        #[serde(default)]
        response: Option<Value>,
    }
    let event: Event<'_> = serde_json::from_str(data).ok()?;
    let mut chunk = Chunk {
        has_choices: true,
        sequence: event.sequence_number,
        answer_object: event.response.is_some(),
        ..Chunk::default()
    };
    match event.kind.as_ref() {
        "response.created" => {
            chunk.response_id = event
                .response
                .as_ref()
                .and_then(|r| r["id"].as_str())
                .map(str::to_string);
        }
        "response.output_text.delta" => {
            if let Some(delta) = event.delta.filter(|d| !d.is_empty()) {
                chunk.texts.push((0, delta));
            }
        }
        "response.function_call_arguments.delta" => {
            chunk.tool_text = event.delta.unwrap_or_default();
        }
        "response.completed" | "response.incomplete" => {
            chunk.finished = true;
            chunk.usage = event.response.as_ref().and_then(|r| usage_of(&r["usage"]));
            chunk.answer = event.response;
        }
        "response.failed" => {
            chunk.finished = true;
            chunk.error = true;
            chunk.usage = event.response.as_ref().and_then(|r| usage_of(&r["usage"]));
        }
        "error" => chunk.error = true,
        _ => {}
    }
    Some(chunk)
}

/// A stream broken after the client saw events ends with `response.failed`, as OpenAI ends a
/// response that failed while it was generated.
fn interrupted(marks: &StreamMarks, message: &str) -> (Option<&'static str>, String) {
    let event = json!({
        "type": "response.failed",
        "sequence_number": marks.sequence.map_or(0, |last| last + 1),
        "response": {
            "id": marks.response_id,
            "object": "response",
            "status": "failed",
            // A response that failed is never kept.
            "store": false,
            "error": {"code": "server_error", "message": message},
            "incomplete_details": null,
            "output": [],
            "usage": null,
        },
    });
    (Some("response.failed"), event.to_string())
}

/// A request as it goes on once the gateway keeps its state: a request continuing an earlier
/// response gets `before` — the items of the turns before it, each turn's input items then its
/// output items ([`carry`]) — ahead of its own `input` (OpenAI's rule: the earlier
/// `instructions` are not carried), and `store` set to whether its answer is kept. Its
/// `previous_response_id` stays, for a translated answer to echo; a tier the request is passed
/// through to never gets it ([`SPEC`]'s rewrite). Returns the body and the request's own input
/// items, which is what is kept of its turn.
pub fn with_state(
    body: &[u8],
    before: Option<Vec<Value>>,
    store: bool,
) -> Result<(Vec<u8>, Vec<Value>), RequestError> {
    let mut request: Map<String, Value> =
        serde_json::from_slice(body).map_err(|_| cannot("input", "is not a JSON object"))?;
    let own = match request.get("input") {
        Some(Value::String(text)) => vec![json!({
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        })],
        Some(Value::Array(items)) => items.clone(),
        _ => return Err(cannot("input", "must be a string or an array of items")),
    };
    if let Some(mut input) = before {
        input.extend(own.iter().cloned());
        request.insert("input".into(), Value::Array(input));
    }
    request.insert("store".into(), Value::Bool(store));
    let body = serde_json::to_vec(&request).expect("JSON values always serialize");
    Ok((body, own))
}

/// Adds one kept turn to the items a next turn is sent: its input items, then its answer's
/// output items as input items.
pub fn carry(items: &mut Vec<Value>, input: Vec<Value>, response: &Value) {
    items.extend(input);
    let output = response["output"].as_array().into_iter().flatten();
    items.extend(output.filter_map(carried));
}

/// An earlier answer's output item as the next turn's input item: without its id, which only the
/// server that made it knows (OpenAI refuses an id it did not keep); a reasoning item only where
/// it carries its encrypted content, the one form a server that keeps nothing takes back (with
/// its id, which that content needs).
fn carried(item: &Value) -> Option<Value> {
    let mut item = sent_back(item)?;
    if item["type"] != "reasoning"
        && let Some(fields) = item.as_object_mut()
    {
        fields.remove("id");
    }
    Some(item)
}

/// An earlier answer's output item as it goes back in a next turn, if it does.
fn sent_back(item: &Value) -> Option<Value> {
    if item["type"] == "reasoning" && !item["encrypted_content"].is_string() {
        return None;
    }
    Some(item.clone())
}

/// Adds one kept turn to the items `GET /v1/responses/{id}/input_items` lists: its input items,
/// then, for a turn before the one listed, its output items (those a next turn was sent), each as
/// OpenAI lists an item — with an `id` (an output item keeps its own; an input item without one
/// gets one made of its turn's id `turn` and its place, the same at every listing) and a message
/// as `type: message` with a list of content parts.
///
/// The ids are unique within a listing, for `after` and `before` to name one item: an id already
/// listed in an earlier turn (`seen`) — an upstream's that repeats, or a client's sent again — is
/// listed as one made of its turn's id and its place instead, the same at every listing since the
/// turns are always listed oldest first.
pub fn list_turn(
    items: &mut Vec<Value>,
    seen: &mut HashSet<String>,
    turn: &str,
    input: Vec<Value>,
    response: Option<&Value>,
) {
    let from = items.len();
    list_turn_as_kept(items, turn, input, response);
    let turn = turn.strip_prefix("resp_").unwrap_or(turn);
    for (place, item) in items[from..].iter_mut().enumerate() {
        let id = item["id"].as_str().unwrap_or_default().to_string();
        let prefix = id.split_once('_').map_or("item", |(prefix, _)| prefix);
        let mut unique = id.clone();
        let mut again = 0;
        // An item without an id (an upstream's output item may have none) gets one too.
        while unique.is_empty() || !seen.insert(unique.clone()) {
            unique = match again {
                0 => format!("{prefix}_{turn}_{place}"),
                n => format!("{prefix}_{turn}_{place}_{n}"),
            };
            again += 1;
        }
        if unique != id {
            item["id"] = Value::String(unique);
        }
    }
}

/// One turn's items as [`list_turn`] lists them, with their ids as kept.
fn list_turn_as_kept(
    items: &mut Vec<Value>,
    turn: &str,
    input: Vec<Value>,
    response: Option<&Value>,
) {
    let turn = turn.strip_prefix("resp_").unwrap_or(turn);
    for (index, mut item) in input.into_iter().enumerate() {
        let Some(fields) = item.as_object_mut() else {
            continue;
        };
        let message =
            fields.contains_key("role") && fields.get("type").is_none_or(|kind| kind == "message");
        if message {
            fields.insert("type".into(), json!("message"));
            if let Some(Value::String(text)) = fields.get("content") {
                let part = if fields.get("role").is_some_and(|role| role == "assistant") {
                    "output_text"
                } else {
                    "input_text"
                };
                let parts = json!([{"type": part, "text": text}]);
                fields.insert("content".into(), parts);
            }
        }
        if !fields.get("id").is_some_and(Value::is_string) {
            let prefix = if message { "msg" } else { "item" };
            fields.insert("id".into(), json!(format!("{prefix}_{turn}_{index}")));
        }
        items.push(item);
    }
    if let Some(response) = response {
        let output = response["output"].as_array().into_iter().flatten();
        items.extend(output.filter_map(sent_back));
    }
}

/// Why a request cannot be written as a chat completion.
fn cannot(param: &'static str, problem: &'static str) -> RequestError {
    RequestError::field(param, problem)
}

/// The Responses request (as the tier gets it) as a chat completion for `model`.
fn to_chat(body: &[u8], model: &str) -> Result<Vec<u8>, RequestError> {
    let request: Map<String, Value> =
        serde_json::from_slice(body).map_err(|_| cannot("input", "is not a JSON object"))?;
    let field = |name: &str| request.get(name).filter(|value| !value.is_null());
    let mut chat = Map::new();
    chat.insert("model".into(), model.into());
    let mut messages = Vec::new();
    if let Some(instructions) = field("instructions") {
        let text = instructions
            .as_str()
            .ok_or(cannot("instructions", "must be a string"))?;
        messages.push(json!({"role": "system", "content": text}));
    }
    match field("input") {
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for item in items {
                input_item(item, &mut messages)?;
            }
        }
        _ => return Err(cannot("input", "must be a string or an array of items")),
    }
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = field("tools").and_then(Value::as_array) {
        let tools = tools.iter().map(tool).collect::<Result<Vec<_>, _>>()?;
        if !tools.is_empty() {
            chat.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(choice) = field("tool_choice") {
        let choice = match choice {
            Value::String(_) => choice.clone(),
            Value::Object(_) if choice["type"] == "function" => {
                json!({"type": "function", "function": {"name": choice["name"]}})
            }
            _ => return Err(cannot("tool_choice", "names a tool other than a function")),
        };
        chat.insert("tool_choice".into(), choice);
    }
    if let Some(format) = field("text").map(|text| &text["format"]) {
        match format["type"].as_str() {
            None | Some("text") => {}
            Some("json_object") => {
                chat.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some("json_schema") => {
                let mut schema = json!({"name": format["name"], "schema": format["schema"]});
                for key in ["strict", "description"] {
                    if !format[key].is_null() {
                        schema[key] = format[key].clone();
                    }
                }
                chat.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": schema}),
                );
            }
            Some(_) => return Err(cannot("text", "has a format other than text or JSON")),
        }
    }
    if let Some(limit) = field("max_output_tokens") {
        let name = if takes_max_completion_tokens(model) {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        chat.insert(name.into(), limit.clone());
    }
    for name in ["temperature", "top_p", "user", "parallel_tool_calls"] {
        if let Some(value) = field(name) {
            chat.insert(name.into(), value.clone());
        }
    }
    if let Some(effort) = field("reasoning").map(|reasoning| &reasoning["effort"])
        && !effort.is_null()
        && takes_reasoning_effort(model)
    {
        chat.insert("reasoning_effort".into(), effort.clone());
    }
    if field("stream").and_then(Value::as_bool) == Some(true) {
        chat.insert("stream".into(), Value::Bool(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(serde_json::to_vec(&chat).expect("JSON values always serialize"))
}

/// OpenAI's chat models that are not reasoning models refuse `reasoning_effort`; its reasoning
/// models and other servers' models take it (or ignore it).
fn takes_reasoning_effort(model: &str) -> bool {
    takes_max_completion_tokens(model)
        || !(model.starts_with("gpt-") || model.starts_with("chatgpt-"))
}

/// One input item as chat messages, appended to `messages`: consecutive function calls (and the
/// text before them) are one assistant message, as chat servers expect.
fn input_item(item: &Value, messages: &mut Vec<Value>) -> Result<(), RequestError> {
    let kind = item["type"]
        .as_str()
        .unwrap_or(if item.get("role").is_some() {
            "message"
        } else {
            ""
        });
    match kind {
        "message" => {
            let role = match item["role"].as_str() {
                Some("system" | "developer") => "system",
                Some("user") => "user",
                Some("assistant") => "assistant",
                _ => {
                    return Err(cannot(
                        "input",
                        "has a message whose role is not user, assistant, system or developer",
                    ));
                }
            };
            let content = message_content(&item["content"], role == "assistant")?;
            messages.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let call = json!({
                "id": item["call_id"].as_str().ok_or(cannot("input", "has a function_call without a call_id"))?,
                "type": "function",
                "function": {
                    "name": item["name"].as_str().ok_or(cannot("input", "has a function_call without a name"))?,
                    "arguments": item["arguments"].as_str().unwrap_or("{}"),
                },
            });
            match messages.last_mut() {
                Some(last) if last["role"] == "assistant" => {
                    if !last["tool_calls"].is_array() {
                        last["tool_calls"] = json!([]);
                    }
                    last["tool_calls"]
                        .as_array_mut()
                        .expect("just made an array")
                        .push(call);
                }
                _ => messages
                    .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let output = match &item["output"] {
                Value::String(text) => text.clone(),
                parts @ Value::Array(_) => parts_text(parts),
                _ => {
                    return Err(cannot(
                        "input",
                        "has a function_call_output without an output",
                    ));
                }
            };
            messages.push(json!({
                "role": "tool",
                "tool_call_id": item["call_id"].as_str().ok_or(cannot("input", "has a function_call_output without a call_id"))?,
                "content": output,
            }));
        }
        // The model's own thinking from an earlier turn: chat servers take none back.
        "reasoning" => {}
        _ => {
            return Err(cannot(
                "input",
                "has an item other than a message, function_call, function_call_output or reasoning",
            ));
        }
    }
    Ok(())
}

/// A message's content for chat: a string where it is all text (which every chat server takes),
/// else text and image parts.
fn message_content(content: &Value, assistant: bool) -> Result<Value, RequestError> {
    let parts = match content {
        Value::String(_) => return Ok(content.clone()),
        Value::Array(parts) => parts,
        _ => {
            return Err(cannot(
                "input",
                "has a message whose content is neither text nor parts",
            ));
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        match part["type"].as_str() {
            Some("input_text" | "output_text" | "text") => {
                out.push(json!({"type": "text", "text": part["text"].as_str().unwrap_or("")}));
            }
            Some("refusal") => {
                out.push(json!({"type": "text", "text": part["refusal"].as_str().unwrap_or("")}));
            }
            Some("input_image") => {
                let url = part["image_url"].as_str().ok_or(cannot(
                    "input",
                    "has an image part without an image_url (file ids live on OpenAI's servers)",
                ))?;
                let mut image = json!({"url": url});
                if let Some(detail) = part["detail"].as_str() {
                    image["detail"] = detail.into();
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            _ => {
                return Err(cannot(
                    "input",
                    "has a content part other than text and images",
                ));
            }
        }
    }
    if assistant || out.iter().all(|part| part["type"] == "text") {
        let text: String = out
            .iter()
            .filter_map(|part| part["text"].as_str())
            .collect();
        return Ok(Value::String(text));
    }
    Ok(Value::Array(out))
}

/// A Responses function tool as chat's.
fn tool(tool: &Value) -> Result<Value, RequestError> {
    if tool["type"] != "function" {
        return Err(cannot(
            "tools",
            "has a tool other than a function (built-in tools run on OpenAI's servers)",
        ));
    }
    let mut function = json!({
        "name": tool["name"].as_str().ok_or(cannot("tools", "has a function without a name"))?,
    });
    for key in ["description", "parameters", "strict"] {
        if !tool[key].is_null() {
            function[key] = tool[key].clone();
        }
    }
    Ok(json!({"type": "function", "function": function}))
}

/// An id of the gateway's making, `prefix_` and 32 hex digits, time-ordered.
/// A fresh id of the gateway's, time-ordered (`resp_…`, `msg_…`).
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// The fields a response repeats from its request, with OpenAI's defaults where it has none.
fn echo(request: &[u8]) -> Map<String, Value> {
    let request: Map<String, Value> = serde_json::from_slice(request).unwrap_or_default();
    let mut out = Map::new();
    for (name, default) in [
        ("instructions", Value::Null),
        ("max_output_tokens", Value::Null),
        ("metadata", json!({})),
        ("parallel_tool_calls", Value::Bool(true)),
        ("previous_response_id", Value::Null),
        ("reasoning", json!({"effort": null, "summary": null})),
        ("temperature", Value::Null),
        ("text", json!({"format": {"type": "text"}})),
        ("tool_choice", json!("auto")),
        ("tools", json!([])),
        ("top_p", Value::Null),
        ("truncation", json!("disabled")),
        ("user", Value::Null),
    ] {
        let value = request.get(name).filter(|v| !v.is_null()).cloned();
        out.insert(name.into(), value.unwrap_or(default));
    }
    let store = request.get("store").and_then(Value::as_bool);
    out.insert("store".into(), Value::Bool(store.unwrap_or(false)));
    out
}

/// Why a chat answer that finished for `finish_reason` is an incomplete response, if it is: cut at
/// its token limit, or withheld by a content filter (never told as completed, so never cached).
fn incomplete_reason(finish_reason: Option<&str>) -> Option<&'static str> {
    match finish_reason {
        Some("length") => Some("max_output_tokens"),
        Some("content_filter") => Some("content_filter"),
        _ => None,
    }
}

/// A response object: `status` (and why it is incomplete, if it is), `output`, `usage` and the
/// echoed request fields.
fn response_object(
    id: &str,
    created_at: u64,
    model: &str,
    echo: &Map<String, Value>,
    (status, incomplete): (&str, Option<&str>),
    output: Vec<Value>,
    usage: Option<&Usage>,
) -> Value {
    let mut response = json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": null,
        "incomplete_details": incomplete.map_or(Value::Null, |reason| json!({"reason": reason})),
        "model": model,
        "output": output,
        "usage": usage.map(usage_json),
    });
    let object = response.as_object_mut().expect("built as an object");
    for (name, value) in echo {
        object.insert(name.clone(), value.clone());
    }
    response
}

fn message_item(id: &str, status: &str, text: &str) -> Value {
    json!({
        "id": id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [output_text(text)],
    })
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn function_call_item(id: &str, status: &str, call_id: &str, name: &str, arguments: &str) -> Value {
    json!({
        "id": id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    })
}

/// A whole chat completion (choice 0) as a response to `request`.
fn from_chat(chat: &[u8], request: &[u8]) -> Result<Vec<u8>, String> {
    let chat: Value =
        serde_json::from_slice(chat).map_err(|err| format!("the answer is not JSON: {err}"))?;
    let choice = &chat["choices"][0];
    let message = &choice["message"];
    let mut output = Vec::new();
    if let Some(text) = message["content"].as_str().filter(|text| !text.is_empty()) {
        output.push(message_item(&new_id("msg"), "completed", text));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let function = &call["function"];
        output.push(function_call_item(
            &new_id("fc"),
            "completed",
            call["id"].as_str().unwrap_or_default(),
            function["name"].as_str().unwrap_or_default(),
            function["arguments"].as_str().unwrap_or("{}"),
        ));
    }
    let incomplete = incomplete_reason(choice["finish_reason"].as_str());
    let status = if incomplete.is_some() {
        "incomplete"
    } else {
        "completed"
    };
    let usage = chat
        .get("usage")
        .and_then(|usage| Usage::from_raw(&raw(usage)));
    let response = response_object(
        &new_id("resp"),
        chat["created"].as_u64().unwrap_or_else(now),
        chat["model"].as_str().unwrap_or_default(),
        &echo(request),
        (status, incomplete),
        output,
        usage.as_ref(),
    );
    Ok(serde_json::to_vec(&response).expect("JSON values always serialize"))
}

/// An output item being streamed.
struct OpenItem {
    id: String,
    output_index: usize,
    kind: ItemKind,
}

enum ItemKind {
    Message {
        text: String,
    },
    FunctionCall {
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Writes a stream of chat chunks as Responses' events.
struct ChatEvents {
    id: String,
    created_at: u64,
    model: String,
    echo: Map<String, Value>,
    sequence: u64,
    started: bool,
    /// The output items: those done (by their output index), and those still open (their chat
    /// tool index beside them).
    done: Vec<(usize, Value)>,
    open: Vec<(Option<u64>, OpenItem)>,
    next_index: usize,
    status: &'static str,
    /// Why the answer is incomplete, once a choice finished short of its end.
    incomplete: Option<&'static str>,
    /// A choice finished: the answer is whole even if `[DONE]` never comes.
    finished: bool,
    usage: Option<Usage>,
    ended: bool,
}

impl ChatEvents {
    fn new(request: &[u8]) -> ChatEvents {
        ChatEvents {
            id: new_id("resp"),
            created_at: now(),
            model: String::new(),
            echo: echo(request),
            sequence: 0,
            started: false,
            done: Vec::new(),
            open: Vec::new(),
            next_index: 0,
            status: "completed",
            incomplete: None,
            finished: false,
            usage: None,
            ended: false,
        }
    }

    fn emit(
        &mut self,
        out: &mut Vec<(&'static str, String)>,
        kind: &'static str,
        mut event: Value,
    ) {
        event["type"] = kind.into();
        event["sequence_number"] = self.sequence.into();
        self.sequence += 1;
        out.push((kind, event.to_string()));
    }

    fn response(&self, status: &str, output: Vec<Value>) -> Value {
        response_object(
            &self.id,
            self.created_at,
            &self.model,
            &self.echo,
            (status, self.incomplete.filter(|_| status == "incomplete")),
            output,
            self.usage.as_ref(),
        )
    }

    fn start(&mut self, out: &mut Vec<(&'static str, String)>) {
        if self.started {
            return;
        }
        self.started = true;
        let response = self.response("in_progress", Vec::new());
        self.emit(out, "response.created", json!({"response": response}));
        self.emit(out, "response.in_progress", json!({"response": response}));
    }

    /// Opens an output item, closing the message before a function call (text comes first).
    fn open(&mut self, out: &mut Vec<(&'static str, String)>, tool: Option<u64>, kind: ItemKind) {
        let (id, item) = match &kind {
            ItemKind::Message { .. } => {
                let id = new_id("msg");
                let item = json!({"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []});
                (id, item)
            }
            ItemKind::FunctionCall { call_id, name, .. } => {
                let id = new_id("fc");
                let item = function_call_item(&id, "in_progress", call_id, name, "");
                (id, item)
            }
        };
        let output_index = self.next_index;
        self.next_index += 1;
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": output_index, "item": item}),
        );
        if matches!(kind, ItemKind::Message { .. }) {
            self.emit(
                out,
                "response.content_part.added",
                json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": output_text("")}),
            );
        }
        self.open.push((
            tool,
            OpenItem {
                id,
                output_index,
                kind,
            },
        ));
    }

    fn close(&mut self, out: &mut Vec<(&'static str, String)>, item: OpenItem) {
        let OpenItem {
            id,
            output_index,
            kind,
        } = item;
        let done = match kind {
            ItemKind::Message { text } => {
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": output_index, "content_index": 0, "text": text, "logprobs": []}),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": output_text(&text)}),
                );
                message_item(&id, "completed", &text)
            }
            ItemKind::FunctionCall {
                call_id,
                name,
                arguments,
            } => {
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": output_index, "name": name, "arguments": arguments}),
                );
                function_call_item(&id, "completed", &call_id, &name, &arguments)
            }
        };
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": output_index, "item": done}),
        );
        self.done.push((output_index, done));
    }

    fn close_message(&mut self, out: &mut Vec<(&'static str, String)>) {
        if let Some(at) = self.open.iter().position(|(tool, _)| tool.is_none()) {
            let (_, item) = self.open.remove(at);
            self.close(out, item);
        }
    }

    fn text(&mut self, out: &mut Vec<(&'static str, String)>, delta: &str) {
        if !self.open.iter().any(|(tool, _)| tool.is_none()) {
            self.open(
                out,
                None,
                ItemKind::Message {
                    text: String::new(),
                },
            );
        }
        let (_, item) = self
            .open
            .iter_mut()
            .find(|(tool, _)| tool.is_none())
            .expect("just opened");
        let ItemKind::Message { text } = &mut item.kind else {
            unreachable!("the item without a tool index is the message")
        };
        text.push_str(delta);
        let (id, output_index) = (item.id.clone(), item.output_index);
        self.emit(
            out,
            "response.output_text.delta",
            json!({"item_id": id, "output_index": output_index, "content_index": 0, "delta": delta, "logprobs": []}),
        );
    }

    fn tool_call(&mut self, out: &mut Vec<(&'static str, String)>, call: &Value) {
        let index = call["index"].as_u64().unwrap_or(0);
        let function = &call["function"];
        if !self.open.iter().any(|(tool, _)| *tool == Some(index)) {
            self.close_message(out);
            let kind = ItemKind::FunctionCall {
                call_id: call["id"].as_str().unwrap_or_default().to_string(),
                name: function["name"].as_str().unwrap_or_default().to_string(),
                arguments: String::new(),
            };
            self.open(out, Some(index), kind);
        }
        let Some(fragment) = function["arguments"].as_str().filter(|f| !f.is_empty()) else {
            return;
        };
        let (_, item) = self
            .open
            .iter_mut()
            .find(|(tool, _)| *tool == Some(index))
            .expect("just opened");
        if let ItemKind::FunctionCall { arguments, .. } = &mut item.kind {
            arguments.push_str(fragment);
        }
        let (id, output_index) = (item.id.clone(), item.output_index);
        self.emit(
            out,
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": output_index, "delta": fragment}),
        );
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

    fn finished(&mut self, reason: &str, _: &Value) {
        self.finished = true;
        if let Some(why) = incomplete_reason(Some(reason)) {
            self.status = "incomplete";
            self.incomplete = Some(why);
        }
    }
}

impl StreamTranslator for ChatEvents {
    fn read(&mut self, data: &str, out: &mut Vec<(&'static str, String)>) -> Result<(), String> {
        if data == "[DONE]" {
            self.finish(out);
            return Ok(());
        }
        super::chat::read_chunk(self, data, out)
    }

    fn close(&mut self, out: &mut Vec<(&'static str, String)>) -> Result<(), String> {
        if self.finished {
            self.finish(out);
        }
        Ok(())
    }
}

impl ChatEvents {
    /// Closes the open items and ends the response with its usage.
    fn finish(&mut self, out: &mut Vec<(&'static str, String)>) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.start(out);
        for (_, item) in std::mem::take(&mut self.open) {
            self.close(out, item);
        }
        let mut done = std::mem::take(&mut self.done);
        done.sort_by_key(|(index, _)| *index);
        let output = done.into_iter().map(|(_, item)| item).collect();
        let status = self.status;
        let response = self.response(status, output);
        let kind = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(out, kind, json!({"response": response}));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `"max_output_tokens": null` leaves the answer unbounded upstream: the tier's limit applies
    /// as if the field were absent, since budgets and tpm reserve that limit as the worst case.
    #[test]
    fn a_null_limit_gets_the_tiers_limit() {
        let config = crate::config::Config::parse(
            "[providers.openai]\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [tiers]\napi = { provider = \"openai\", model = \"gpt-4o\", max_tokens = 10 }\n\
             [routes.r]\nkind = \"classification\"\ntiers = [\"api\"]\n",
            std::path::Path::new("tierwise.toml"),
            &|_| None,
        )
        .unwrap();
        let body = serde_json::to_vec(
            &serde_json::json!({"model": "r", "input": "hi", "max_output_tokens": null}),
        )
        .unwrap();
        let parsed = RequestBody::parse(crate::openai::Endpoint::Responses, &body).unwrap();
        let sent: Value =
            serde_json::from_slice(&parsed.for_tier(&config.routes[0].chain[0])).unwrap();
        assert_eq!(sent["max_output_tokens"], 10, "{sent}");
    }

    /// Any JSON value, up to a few levels deep, with the keys the translation reads among others.
    fn any_json() -> impl Strategy<Value = Value> {
        super::super::any_json_of(
            &[
                "message",
                "function_call",
                "function_call_output",
                "input_image",
                "json_schema",
                "function",
            ],
            &[
                "type", "role", "content", "input", "tools", "text", "format", "call_id", "output",
                "name",
            ],
        )
    }

    proptest! {
        /// Any request body: a chat completion or an error naming what cannot be carried, never
        /// a panic; whatever it writes is a JSON object with messages.
        #[test]
        fn any_body_translates_or_is_refused(body in any_json()) {
            let bytes = serde_json::to_vec(&body).unwrap();
            if let Ok(chat) = to_chat(&bytes, "m") {
                let chat: Value = serde_json::from_slice(&chat).unwrap();
                prop_assert!(chat["messages"].is_array());
            }
            let _ = from_chat(&bytes, &bytes);
        }

        /// Any chat events, in any order: events or an error, never a panic; the events a stream
        /// ends with are numbered in sequence.
        #[test]
        fn any_chat_events_translate_without_a_panic(chunks in prop::collection::vec(any_json(), 0..8)) {
            let mut events = ChatEvents::new(b"{}");
            let mut out = Vec::new();
            for chunk in &chunks {
                let _ = events.read(&chunk.to_string(), &mut out);
            }
            let _ = events.read("[DONE]", &mut out);
            for (at, (_, data)) in out.iter().enumerate() {
                let event: Value = serde_json::from_str(data).unwrap();
                prop_assert_eq!(event["sequence_number"].as_u64(), Some(at as u64));
            }
        }

        /// Any text as a stream event's data: read or passed over, never a panic.
        #[test]
        fn any_event_reads_without_a_panic(data in ".{0,200}") {
            let _ = read_event(&data);
        }
    }

    /// A next turn carries the earlier input, then the earlier output without the items' ids
    /// (and reasoning only with its encrypted content), then its own input; `store` as asked.
    #[test]
    fn a_next_turn_carries_the_conversation_without_item_ids() {
        let earlier = json!({"output": [
            {"id": "rs_1", "type": "reasoning", "summary": []},
            {"id": "rs_2", "type": "reasoning", "summary": [], "encrypted_content": "x"},
            {"id": "msg_1", "type": "message", "role": "assistant", "content": [output_text("Hello")]},
            {"id": "fc_1", "type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        ]});
        let mut before = Vec::new();
        carry(
            &mut before,
            vec![json!({"role": "user", "content": "Hi"})],
            &earlier,
        );
        let body = br#"{"model": "m", "input": "Go on", "previous_response_id": "resp_1"}"#;
        let (written, own) = with_state(body, Some(before), true).unwrap();
        let written: Value = serde_json::from_slice(&written).unwrap();
        assert_eq!(own.len(), 1, "what is kept of the turn is its own input");
        let input = written["input"].as_array().unwrap().clone();
        assert_eq!(input[4], own[0]);
        assert_eq!(written["store"], true);
        assert_eq!(written["previous_response_id"], "resp_1");
        let kinds: Vec<&str> = input
            .iter()
            .map(|item| item["type"].as_str().unwrap_or("message"))
            .collect();
        assert_eq!(
            kinds,
            [
                "message",
                "reasoning",
                "message",
                "function_call",
                "message"
            ]
        );
        assert_eq!(
            input[1]["id"], "rs_2",
            "a reasoning item keeps the id its content needs"
        );
        assert!(input[2].get("id").is_none() && input[3].get("id").is_none());
        assert_eq!(input[4]["content"][0]["text"], "Go on");
    }

    /// A chat stream that ran out of its budget ends `response.incomplete`, with the reason.
    #[test]
    fn a_chat_stream_cut_by_its_limit_ends_incomplete() {
        let mut events = ChatEvents::new(br#"{"max_output_tokens": 3}"#);
        let mut out = Vec::new();
        for chunk in [
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3}}"#,
            "[DONE]",
        ] {
            events.read(chunk, &mut out).unwrap();
        }
        let (name, last) = out.last().unwrap();
        assert_eq!(*name, "response.incomplete");
        let last: Value = serde_json::from_str(last).unwrap();
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
        assert_eq!(last["response"]["usage"]["output_tokens"], 3);
        assert_eq!(last["response"]["max_output_tokens"], 3);
    }

    /// A chat answer a content filter withheld is an incomplete response saying so, streamed or
    /// not: never `completed`, which a client would take for an answer (and the cache keep).
    #[test]
    fn a_content_filter_refusal_is_incomplete_not_completed() {
        let mut events = ChatEvents::new(b"{}");
        let mut out = Vec::new();
        for chunk in [
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"I"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"content_filter"}]}"#,
            "[DONE]",
        ] {
            events.read(chunk, &mut out).unwrap();
        }
        let (name, last) = out.last().unwrap();
        assert_eq!(*name, "response.incomplete");
        let last: Value = serde_json::from_str(last).unwrap();
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "content_filter"
        );
        assert_eq!(
            incomplete_reason(Some("content_filter")),
            Some("content_filter")
        );
        assert_eq!(incomplete_reason(Some("stop")), None);
    }
}
