//! `/v1/chat/completions`: a body must hold a non-empty `messages` array; a tier sets its system
//! prompt, fills in its `max_tokens` and `temperature` where the client gave none (the limit as
//! `max_completion_tokens` for OpenAI's reasoning models, which refuse `max_tokens`, a client's
//! `max_tokens` renamed too), and on streams asks for usage; prompts are counted the way OpenAI's
//! cookbook does; stream chunks are read for each choice's text, their finish and their usage.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::request::raw;
use super::tokens::{count, text_of};
use super::{Edits, EndpointSpec, RequestBody, RequestError, Said, StreamMarks, Usage};
use crate::config::{Abilities, ChainTier, takes_max_completion_tokens};

pub const SPEC: EndpointSpec = EndpointSpec {
    path: "chat/completions",
    ledger_name: "chat.completions",
    validate,
    check_prompt: None,
    rewrite,
    count_prompt,
    count_answer,
    warmup,
    answer_texts: Some(answer_texts),
    said: Some(said),
    needs,
    answer_limits: &["max_tokens", "max_completion_tokens"],
    answer_budget,
    answer_usage: Usage::of_answer,
    read_event: Chunk::read,
    done: Some("[DONE]"),
    interrupted,
    via_chat: None,
    error_body: super::openai_error,
    key_header: None,
    count_tokens: None,
    overloaded_status: None,
    passed_headers: &[],
};

/// Each choice's message content, where it is a string (a tool call's `null` is no text).
fn answer_texts(answer: &mut Value) -> Vec<Vec<&mut String>> {
    answer
        .get_mut("choices")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .map(|choice| match choice.pointer_mut("/message/content") {
            Some(Value::String(text)) => vec![text],
            _ => Vec::new(),
        })
        .collect()
}

/// The first choice's message: its content and its tool calls.
pub fn said(answer: &Value) -> Said {
    let message = &answer["choices"][0]["message"];
    let tool_calls = message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|call| {
            let function = &call["function"];
            (
                function["name"].as_str().unwrap_or("").to_string(),
                function["arguments"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    Said {
        text: message["content"].as_str().unwrap_or("").to_string(),
        tool_calls,
    }
}

fn validate(body: &RequestBody<'_>) -> Result<(), RequestError> {
    let messages = body
        .field("messages")
        .ok_or(RequestError::field("messages", "is required"))?;
    // Every message an object with a string role, which every OpenAI-compatible server needs; the
    // rest of each message is skipped. A body nested past `request::MAX_DEPTH` was refused when it
    // was read; the walk below keeps serde_json's own limit (128) as a second guard for a body
    // validated without that read.
    let messages: Vec<MessageShape> = serde_json::from_str(messages.get()).map_err(|_| {
        RequestError::field(
            "messages",
            "must be an array of messages, each an object with a string 'role'",
        )
    })?;
    if messages.is_empty() {
        return Err(RequestError::field(
            "messages",
            "must contain at least one message",
        ));
    }
    for name in ["max_tokens", "max_completion_tokens"] {
        if let Some(value) = body.field(name)
            && serde_json::from_str::<Option<u64>>(value.get()).is_err()
        {
            return Err(RequestError::field(
                name,
                "must be a whole number of tokens",
            ));
        }
    }
    Ok(())
}

/// What validation reads of a message: its role, and its content walked without being kept.
#[derive(Deserialize)]
struct MessageShape<'a> {
    #[serde(borrow, rename = "role")]
    _role: std::borrow::Cow<'a, str>,
    #[serde(default, rename = "content")]
    _content: Option<Walked>,
}

/// Any JSON value, walked and dropped. Unlike a skipped field, a walk counts nesting, so serde_json
/// refuses content nested past its limit of 128 (a second guard: a request read by
/// `RequestBody::read` is refused past `MAX_DEPTH`, 100, before it gets here).
struct Walked;

impl<'de> Deserialize<'de> for Walked {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Walked, D::Error> {
        deserializer.deserialize_any(Walked)
    }
}

impl<'de> serde::de::Visitor<'de> for Walked {
    type Value = Walked;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Walked, E> {
        Ok(Walked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Walked, E> {
        Ok(Walked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Walked, E> {
        Ok(Walked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Walked, E> {
        Ok(Walked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Walked, E> {
        Ok(Walked)
    }

    fn visit_unit<E>(self) -> Result<Walked, E> {
        Ok(Walked)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Walked, A::Error> {
        while seq.next_element::<Walked>()?.is_some() {}
        Ok(Walked)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Walked, A::Error> {
        while map.next_entry::<serde::de::IgnoredAny, Walked>()?.is_some() {}
        Ok(Walked)
    }
}

/// Tools, a `json_schema` response format, image parts in any message.
fn needs(body: &RequestBody<'_>) -> Abilities {
    let tools = body
        .field("tools")
        .is_some_and(|tools| !matches!(tools.get().trim(), "null" | "[]"));
    #[derive(Deserialize)]
    struct Format<'a> {
        #[serde(borrow, rename = "type")]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    let json_schema = body
        .field("response_format")
        .and_then(|format| serde_json::from_str::<Format>(format.get()).ok())
        .is_some_and(|format| format.kind.as_deref() == Some("json_schema"));
    let vision = body.field("messages").is_some_and(|messages| {
        serde_json::from_str::<Value>(messages.get()).is_ok_and(|messages| {
            messages.as_array().is_some_and(|messages| {
                messages.iter().any(|message| {
                    message["content"]
                        .as_array()
                        .is_some_and(|parts| parts.iter().any(|part| part["type"] == "image_url"))
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

/// `max_completion_tokens`, else `max_tokens`.
fn answer_budget(body: &RequestBody<'_>) -> Option<u64> {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|name| serde_json::from_str::<u64>(body.field(name)?.get()).ok())
}

fn rewrite(body: &RequestBody<'_>, step: &ChainTier, edits: &mut Edits) {
    let tier = &step.tier;
    if let Some(messages) = step
        .system_prompt
        .as_deref()
        .and_then(|prompt| messages_with_system(body, prompt))
    {
        edits.set("messages", messages);
    }
    if body.stream && tier.provider.takes_stream_options() {
        edits.set("stream_options", stream_options_with_usage(body));
    } else if body.stream {
        // An older Azure API version refuses the field, even the client's own: the stream goes
        // without it, and its tokens are counted and marked estimated.
        edits.remove("stream_options");
    }
    let limit = token_limit_field(&tier.model);
    if limit == "max_completion_tokens"
        && let Some(client_limit) = body.field("max_tokens")
    {
        // The client wrote for models that take `max_tokens`; this tier's refuses it, and takes
        // the same budget under the other name.
        edits.remove("max_tokens");
        if !body.gives("max_completion_tokens") && body.gives("max_tokens") {
            edits.set("max_completion_tokens", client_limit.to_owned());
        }
    }
    // A `null` limit is no limit: the tier's applies, as budgets and tpm reserved it.
    if let Some(max_tokens) = tier.max_tokens
        && !body.gives("max_tokens")
        && !body.gives("max_completion_tokens")
    {
        edits.set(limit, raw(&max_tokens));
    }
    if let Some(temperature) = tier.temperature
        && !body.has("temperature")
    {
        edits.set("temperature", raw(&temperature));
    }
}

#[derive(Deserialize)]
struct MessageRole<'a> {
    #[serde(borrow)]
    role: Option<&'a str>,
}

/// The client's messages with the first system message replaced by `prompt` (or `prompt` put
/// first where the client sent none).
fn messages_with_system(body: &RequestBody<'_>, prompt: &str) -> Option<Box<RawValue>> {
    let list: Vec<&RawValue> = serde_json::from_str(body.field("messages")?.get()).ok()?;
    let first_is_system = list
        .first()
        .and_then(|m| serde_json::from_str::<MessageRole>(m.get()).ok())
        .is_some_and(|m| m.role == Some("system"));
    let system = raw(&json!({ "role": "system", "content": prompt }));
    let rest = if first_is_system {
        &list[1..]
    } else {
        &list[..]
    };
    let mut messages: Vec<&RawValue> = Vec::with_capacity(rest.len() + 1);
    messages.push(&system);
    messages.extend_from_slice(rest);
    Some(raw(&messages))
}

/// The client's `stream_options` with `include_usage` switched on, so that every stream tells
/// tierwise what it cost.
fn stream_options_with_usage(body: &RequestBody<'_>) -> Box<RawValue> {
    let mut options = body
        .field("stream_options")
        .and_then(|raw| serde_json::from_str::<serde_json::Map<String, Value>>(raw.get()).ok())
        .unwrap_or_default();
    options.insert("include_usage".into(), Value::Bool(true));
    raw(&options)
}

/// Each message's text plus 3 tokens of framing, plus 3 that prime the answer.
fn count_prompt(model: &str, body: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct Chat {
        #[serde(default)]
        messages: Vec<Value>,
    }
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

/// The text of every choice of a non-streamed answer.
fn count_answer(model: &str, body: &[u8]) -> u64 {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
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

fn warmup(model: &str) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]});
    body[token_limit_field(model)] = json!(1);
    body
}

/// The field that bounds an answer's tokens for `model`: `max_tokens`, which every
/// OpenAI-compatible server takes, except on OpenAI's reasoning models, which refuse it.
fn token_limit_field(model: &str) -> &'static str {
    if takes_max_completion_tokens(model) {
        "max_completion_tokens"
    } else {
        "max_tokens"
    }
}

/// A stream broken after the client saw chunks ends with an OpenAI-shaped error event, which
/// OpenAI's SDKs raise as an error.
fn interrupted(_: &StreamMarks, message: &str) -> (Option<&'static str>, String) {
    let error = json!({
        "error": {
            "message": message,
            "type": "upstream_error",
            "param": null,
            "code": "stream_interrupted",
        }
    });
    (None, error.to_string())
}

/// What tierwise reads from one stream event (a chat chunk, or another endpoint's event).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    /// The chunk has choices (a usage-only chunk has none).
    pub has_choices: bool,
    /// A choice finished: the answer is whole even if `[DONE]` never comes.
    pub finished: bool,
    /// The upstream reported an error in the middle of the stream (`{"error": …}`).
    pub error: bool,
    /// The content the chunk adds to each choice's answer, by the choice's `index`: as a rule one
    /// piece, of choice 0; a request for `n` > 1 choices gets its choices' chunks interleaved.
    pub texts: Vec<(u32, String)>,
    /// The tool calls' names and argument fragments the chunk adds: no part of the answer's text,
    /// but of its output, which the gateway estimates from both when the upstream gives no usage.
    pub tool_text: String,
    pub usage: Option<Usage>,
    /// The answer's id, where the event announces it (Responses' `response.created`).
    pub response_id: Option<String>,
    /// The event's sequence number, where events are numbered (Responses').
    pub sequence: Option<u64>,
    /// Counts of the answer's usage the event gives, some of them, merged over the stream with
    /// those of earlier events (Anthropic's `message_start` gives the input and the cache's
    /// figures, its `message_delta` the output and maybe the others again).
    pub counts: Option<super::AnthropicUsage>,
    /// The whole answer, where the event that ends the stream carries it (Responses'
    /// `response.completed`): what is kept of a streamed answer for its next turn.
    pub answer: Option<Value>,
    /// The event carries the answer's object whole (Responses' `response.created`,
    /// `.in_progress`, `.completed`…), which says whether and under which id it is kept.
    pub answer_object: bool,
}

impl Chunk {
    /// Reads a chunk's data; `None` when it is not a JSON chunk (it is relayed as it came).
    /// Most chunks are one choice adding some text and nothing else; those are read by
    /// [`Chunk::scan`] without parsing the whole chunk, the rest in full.
    pub fn read(data: &str) -> Option<Chunk> {
        Chunk::scan(data).or_else(|| Chunk::parse(data))
    }

    /// The usual chunk read from its bytes: one choice, choice 0, whose delta has at most one
    /// `content`, no usage, no error and no finish. `None` for anything else, or anything this
    /// cannot be sure of (the text has escapes, a key appears twice, an `index` other than 0),
    /// which [`Chunk::parse`] then reads.
    ///
    /// A key found as `"name"` followed by `:` is a key: a quote inside a JSON string is escaped,
    /// so the bytes of a string never hold `"name":`.
    fn scan(data: &str) -> Option<Chunk> {
        let bytes = data.as_bytes();
        if !bytes.starts_with(b"{") || !bytes.ends_with(b"}") {
            return None;
        }
        for key in [&USAGE, &ERROR, &FINISH_REASON] {
            if values_of(bytes, key).any(|value| !value.starts_with(b"null")) {
                return None;
            }
        }
        // A tool call's fragment counts in the output's estimate: read in full.
        if TOOL_CALLS.find(bytes).is_some() {
            return None;
        }
        // Every index 0, the choice's among them: its text is choice 0's.
        let zero = |value: &[u8]| {
            value.strip_prefix(b"0").is_some_and(|rest| {
                rest.first()
                    .is_none_or(|&b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())
            })
        };
        if !values_of(bytes, &INDEX).all(zero) {
            return None;
        }
        values_of(bytes, &CHOICES).next()?.strip_prefix(b"[{")?;
        // One choice's delta, and the text only from within it.
        let mut deltas = DELTA.find_iter(bytes);
        let delta = deltas.next()?;
        if deltas.next().is_some() || values_of(&bytes[..delta], &CONTENT).next().is_some() {
            return None;
        }
        let mut contents = values_of(&bytes[delta..], &CONTENT);
        let text = match contents.next() {
            None => String::new(),
            Some(value) if value.starts_with(b"null") => String::new(),
            Some(value) => {
                let text = value.strip_prefix(b"\"")?;
                let end = memchr::memchr2(b'"', b'\\', text)?;
                if text[end] != b'"' {
                    return None;
                }
                std::str::from_utf8(&text[..end]).ok()?.to_string()
            }
        };
        if contents.next().is_some() {
            return None;
        }
        Some(Chunk {
            has_choices: true,
            texts: if text.is_empty() {
                Vec::new()
            } else {
                vec![(0, text)]
            },
            ..Chunk::default()
        })
    }

    fn parse(data: &str) -> Option<Chunk> {
        #[derive(Deserialize)]
        struct Wire<'a> {
            #[serde(default)]
            choices: Vec<Choice>,
            #[serde(borrow, default)]
            usage: Option<&'a RawValue>,
            #[serde(default)]
            error: Option<IgnoredAny>,
        }
        #[derive(Deserialize)]
        struct Choice {
            #[serde(default)]
            index: u32,
            finish_reason: Option<IgnoredAny>,
            delta: Option<Delta>,
        }
        #[derive(Deserialize)]
        struct Delta {
            content: Option<String>,
            #[serde(default)]
            tool_calls: Option<Vec<ToolCall>>,
        }
        #[derive(Deserialize)]
        struct ToolCall {
            #[serde(default)]
            function: Option<Function>,
        }
        #[derive(Deserialize)]
        struct Function {
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            arguments: Option<String>,
        }
        let wire: Wire<'_> = serde_json::from_str(data).ok()?;
        let mut chunk = Chunk {
            has_choices: !wire.choices.is_empty(),
            usage: wire.usage.and_then(Usage::from_raw),
            error: wire.error.is_some(),
            ..Chunk::default()
        };
        for choice in wire.choices {
            chunk.finished |= choice.finish_reason.is_some();
            let Some(delta) = choice.delta else {
                continue;
            };
            for function in delta
                .tool_calls
                .into_iter()
                .flatten()
                .flat_map(|c| c.function)
            {
                for said in [function.name, function.arguments].into_iter().flatten() {
                    chunk.tool_text.push_str(&said);
                }
            }
            if let Some(content) = delta.content
                && !content.is_empty()
            {
                chunk.texts.push((choice.index, content));
            }
        }
        Some(chunk)
    }
}

/// A streamed answer's text, each choice's apart: a request for `n` > 1 choices gets their chunks
/// interleaved, and one string of them all would read "A-one B-one A-two …".
#[derive(Debug, Default)]
pub struct ChoiceTexts {
    /// By the choice's index, in the order the choices first added text; as a rule one.
    choices: Vec<(u32, String)>,
    bytes: usize,
}

/// The index [`ChoiceTexts`] keeps the tool calls' names and arguments under: no choice's text,
/// but output the gateway estimates when the upstream gives no usage (kept among the choices so
/// that a finished request's ending stays its size).
const TOOL_TEXT: u32 = u32::MAX;

impl ChoiceTexts {
    /// Adds a chunk's texts; `false`, adding nothing, when that would hold more than `max` bytes.
    pub fn add(&mut self, texts: Vec<(u32, String)>, max: usize) -> bool {
        let adding: usize = texts.iter().map(|(_, text)| text.len()).sum();
        if self.bytes + adding > max {
            return false;
        }
        self.bytes += adding;
        for (index, text) in texts {
            match self.choices.iter_mut().find(|(known, _)| *known == index) {
                Some((_, answer)) => answer.push_str(&text),
                None => self.choices.push((index, text)),
            }
        }
        true
    }

    /// The choices' texts, without the tool calls'.
    fn texts(&self) -> impl Iterator<Item = &(u32, String)> {
        self.choices.iter().filter(|(index, _)| *index != TOOL_TEXT)
    }

    /// Choice 0's text: what a non-streamed answer's scorers read too (its first choice).
    pub fn first(&self) -> &str {
        self.choices
            .iter()
            .find(|(index, _)| *index == 0)
            .map_or("", |(_, text)| text.as_str())
    }

    /// Each choice's text, in index order.
    pub fn each(&self) -> impl Iterator<Item = &str> {
        let mut choices: Vec<&(u32, String)> = self.texts().collect();
        choices.sort_by_key(|(index, _)| *index);
        choices.into_iter().map(|(_, text)| text.as_str())
    }

    /// The text as the ledger keeps it: one choice's as it is; several each under a line
    /// `[choice N]`, in index order, so that none reads as part of another.
    pub fn stored(&self) -> String {
        let mut choices: Vec<&(u32, String)> = self.texts().collect();
        if let [(_, only)] = &choices[..] {
            return only.clone();
        }
        choices.sort_by_key(|(index, _)| *index);
        choices
            .iter()
            .map(|(index, text)| format!("[choice {index}]\n{text}"))
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    /// Adds a chunk's tool-call text, up to `max` bytes of it (only an estimate is made of it).
    pub fn add_tool_text(&mut self, text: &str, max: usize) {
        if text.is_empty() {
            return;
        }
        match self
            .choices
            .iter_mut()
            .find(|(index, _)| *index == TOOL_TEXT)
        {
            Some((_, kept)) if kept.len() + text.len() <= max => kept.push_str(text),
            Some(_) => {}
            None if text.len() <= max => self.choices.push((TOOL_TEXT, text.to_string())),
            None => {}
        }
    }

    /// Every text of the output, to count: each choice's, then the tool calls'.
    pub fn into_texts(self) -> Vec<String> {
        self.choices.into_iter().map(|(_, text)| text).collect()
    }
}

/// The keys [`Chunk::scan`] looks for, each searcher built once rather than per chunk.
static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\""));
static TOOL_CALLS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"tool_calls\""));
static FINISH_REASON: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"finish_reason\""));
static CHOICES: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"choices\""));
static DELTA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"delta\""));
static CONTENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"content\""));
static INDEX: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"index\""));

/// What follows each `key` in `bytes` that is followed by a colon: the value's bytes and the rest,
/// from the first byte after the colon and any whitespace.
fn values_of<'a>(bytes: &'a [u8], key: &'a Finder<'static>) -> impl Iterator<Item = &'a [u8]> + 'a {
    key.find_iter(bytes).filter_map(move |at| {
        let rest = bytes[at + key.needle().len()..].trim_ascii_start();
        Some(rest.strip_prefix(b":")?.trim_ascii_start())
    })
}

/// What a translation of a chat stream into another endpoint's events does with each part of a
/// chunk (Responses' and Messages' `ChatEvents`); [`read_chunk`] reads the chunk once for both.
pub(crate) trait ChunkReader {
    /// The answer's model, empty until a chunk names it.
    fn model(&mut self) -> &mut String;
    /// The endpoint's opening events, once.
    fn start(&mut self, out: &mut Vec<(&'static str, String)>);
    fn usage(&mut self, usage: Usage);
    fn text(&mut self, out: &mut Vec<(&'static str, String)>, text: &str);
    fn tool_call(&mut self, out: &mut Vec<(&'static str, String)>, call: &Value);
    /// Choice 0 finished for `reason`; `choice` is the whole choice (vLLM's `stop_reason`).
    fn finished(&mut self, reason: &str, choice: &Value);
}

/// Reads one chat chunk (not `[DONE]`) into `reader`: its model, usage, and choice 0's text, tool
/// calls and finish — an answer translated from chat is one answer. An upstream's error event
/// is the error.
pub(crate) fn read_chunk(
    reader: &mut impl ChunkReader,
    data: &str,
    out: &mut Vec<(&'static str, String)>,
) -> Result<(), String> {
    let chunk: Value = serde_json::from_str(data)
        .map_err(|err| format!("a chat chunk that is not JSON: {err}"))?;
    if let Some(error) = chunk.get("error").filter(|error| !error.is_null()) {
        return Err(format!(
            "the upstream's stream reported an error: {}",
            error["message"].as_str().unwrap_or("no message")
        ));
    }
    if let Some(model) = chunk["model"].as_str()
        && reader.model().is_empty()
    {
        *reader.model() = model.to_string();
    }
    reader.start(out);
    if let Some(usage) = chunk
        .get("usage")
        .and_then(|usage| Usage::from_raw(&raw(usage)))
    {
        reader.usage(usage);
    }
    for choice in chunk["choices"].as_array().into_iter().flatten() {
        if choice["index"].as_u64().unwrap_or(0) != 0 {
            continue;
        }
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|text| !text.is_empty()) {
            reader.text(out, text);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            reader.tool_call(out, call);
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            reader.finished(reason, choice);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        /// Any text as a stream event's data: read or passed over, never a panic.
        #[test]
        fn any_stream_event_reads_without_a_panic(data in ".{0,200}") {
            let _ = Chunk::read(&data);
        }
    }

    use super::*;

    #[test]
    fn prompts_and_answers_are_counted_like_the_cookbook() {
        let body = br#"{"model":"x","messages":[{"role":"user","content":"hello world"}]}"#;
        assert_eq!(count_prompt("gpt-4o", body), 3 + 2 + 3);
        let parts =
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"hello world"}]}]}"#;
        assert_eq!(count_prompt("gpt-4o", parts), 8);
        let answer = br#"{"choices":[{"message":{"content":"hello world"}}]}"#;
        assert_eq!(count_answer("gpt-4o", answer), 2);
        assert_eq!(count_answer("gpt-4o", b"not json"), 0);
    }

    /// A chunk as servers write it, from its parts.
    fn chunk_json(
        first_index: usize,
        choices: &[(Option<String>, Option<&str>, bool)],
        usage: u8,
        error: u8,
        logprobs: bool,
        pretty: bool,
    ) -> String {
        let choices: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(index, (content, finish, tools))| {
                let mut delta = json!({"role": "assistant"});
                if let Some(content) = content {
                    delta["content"] = json!(content);
                }
                if *tools {
                    delta["tool_calls"] =
                        json!([{"index": 0, "function": {"arguments": "{\"content\": 1}"}}]);
                }
                let index = first_index + index;
                let mut choice = json!({"index": index, "delta": delta, "finish_reason": finish});
                if logprobs {
                    choice["logprobs"] = json!({"content": [{"token": "a", "logprob": -0.1}]});
                }
                choice
            })
            .collect();
        let mut chunk = json!({"id": "c-1", "object": "chat.completion.chunk", "choices": choices});
        match usage {
            0 => {}
            1 => chunk["usage"] = Value::Null,
            _ => chunk["usage"] = json!({"prompt_tokens": 5, "completion_tokens": 2}),
        }
        match error {
            0 => {}
            1 => chunk["error"] = Value::Null,
            _ => chunk["error"] = json!({"message": "boom"}),
        }
        if pretty {
            serde_json::to_string_pretty(&chunk).unwrap()
        } else {
            chunk.to_string()
        }
    }

    proptest::proptest! {
        /// Read from its bytes or parsed in full, a chunk says the same.
        #[test]
        fn scanned_chunks_read_as_parsed_ones(
            choices in proptest::collection::vec(
                (
                    proptest::option::of("\\PC{0,12}|[a-z\"\\\\:{} ]{0,12}"),
                    proptest::option::of(proptest::sample::select(vec!["stop", "length"])),
                    proptest::bool::ANY,
                ),
                0..3,
            ),
            first_index in 0usize..3,
            usage in 0u8..3,
            error in 0u8..3,
            logprobs in proptest::bool::ANY,
            pretty in proptest::bool::ANY,
        ) {
            let data = chunk_json(first_index, &choices, usage, error, logprobs, pretty);
            proptest::prop_assert_eq!(Chunk::read(&data), Chunk::parse(&data), "{}", data);
        }
    }

    #[test]
    fn the_usual_chunk_is_read_from_its_bytes() {
        let data = chunk_json(
            0,
            &[(Some("Hi there".into()), None, false)],
            0,
            0,
            false,
            false,
        );
        let chunk = Chunk::scan(&data).expect("one choice adding text needs no full parse");
        assert_eq!(chunk.texts, [(0, "Hi there".to_string())]);
        // What the scan cannot be sure of, it leaves to the parse.
        let x = || Some("x".to_string());
        for unsure in [
            chunk_json(
                0,
                &[(Some("a \"quoted\" word".into()), None, false)],
                0,
                0,
                false,
                false,
            ),
            chunk_json(0, &[(x(), Some("stop"), false)], 0, 0, false, false),
            chunk_json(0, &[(x(), None, false)], 2, 0, false, false),
            chunk_json(
                0,
                &[(x(), None, false), (x(), None, false)],
                0,
                0,
                false,
                false,
            ),
            chunk_json(0, &[(x(), None, false)], 0, 0, true, false),
            // Another choice's text: the scan reads choice 0's only.
            chunk_json(1, &[(x(), None, false)], 0, 0, false, false),
        ] {
            assert!(Chunk::scan(&unsure).is_none(), "{unsure}");
        }
    }

    #[test]
    fn chunks_give_their_text_finish_and_usage() {
        let chunk = Chunk::read(r#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}"#)
            .unwrap();
        assert!(chunk.has_choices && !chunk.finished && chunk.usage.is_none());
        assert_eq!(chunk.texts, [(0, "Hi".to_string())]);
        let last = Chunk::read(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#).unwrap();
        assert!(last.finished);
        let usage =
            Chunk::read(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#)
                .unwrap();
        assert!(!usage.has_choices);
        assert_eq!(usage.usage.unwrap().completion_tokens, 1);
        assert!(Chunk::read("not json").is_none());
        assert!(
            Chunk::read(r#"{"error":{"message":"boom"}}"#)
                .unwrap()
                .error
        );
    }
}
