//! The prompt of a Messages request — `system`, `messages`, `tools`, `tool_choice` — as
//! `/v1/messages` and `/v1/messages/count_tokens` both read it: the one check of its shape
//! ([`validate_prompt`]), so that counting refuses what sending would refuse, and the one estimate
//! of its tokens ([`estimate`]), which `count_tokens`, a translated stream's `message_start` and a
//! stream without usage share.
//!
//! Both read each part on its own and each message and block on its own, keeping what they do not
//! look into as raw JSON, so that a prompt nested past what a whole parse takes (serde_json's 128
//! levels, in a tool's input) is still checked and counted: what cannot be read is counted at four
//! bytes a token rather than as nothing. A request the server reads is refused past
//! `request::MAX_DEPTH` (100) before either runs; this keeps them whole for any other caller. Both are CPU work in proportion to the prompt; the
//! server runs them on the blocking pool for a large body.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::super::RequestError;
use super::super::media;
use super::super::tokens;

/// The parts of a request the prompt is made of.
#[derive(Deserialize)]
struct Parts<'a> {
    #[serde(borrow, default)]
    system: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_choice: Option<&'a RawValue>,
}

/// A message, its content left raw.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

/// A content block: the fields of the types the gateway knows, each left raw; any other field
/// (`cache_control`, `citations`…) is passed over.
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_use_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    is_error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thinking: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// An image's or a document's source.
#[derive(Deserialize)]
struct Source<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    media_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    url: Option<&'a RawValue>,
    #[serde(borrow, default)]
    file_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

/// A tool definition.
#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input_schema: Option<&'a RawValue>,
}

/// `tool_choice`.
#[derive(Deserialize)]
struct ToolChoice<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
}

/// The image types Anthropic reads.
const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

fn is_string(raw: Option<&RawValue>) -> bool {
    raw.is_some_and(|raw| raw.get().starts_with('"'))
}

fn is_object(raw: Option<&RawValue>) -> bool {
    raw.is_some_and(|raw| raw.get().starts_with('{'))
}

fn is_array(raw: &RawValue) -> bool {
    raw.get().starts_with('[')
}

/// `null` is JSON's way of leaving a field out.
fn given(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|raw| raw.get() != "null")
}

fn invalid(param: &'static str, at: String, problem: &'static str) -> RequestError {
    RequestError::Invalid { param, at, problem }
}

/// What Anthropic's API refuses of a prompt, refused alike by `/v1/messages` (whatever tier would
/// take it) and by `count_tokens`: `messages` an array of at least one message, each a `user` or
/// `assistant` turn whose content is a string or an array of blocks; each block of a type the
/// gateway knows with the fields that type requires (text's `text`, an image's source of base64
/// with an image type, a URL or a file id, a document's source, a tool use's `id`, `name` and
/// `input` object, a tool result's `tool_use_id` and its content's blocks); `system` a string or
/// text blocks; `tools` an array of tools, each named, a custom tool with its `input_schema`;
/// `tool_choice` one of `auto`, `any`, `tool` (with a name) and `none`. A block of a type the
/// gateway does not know (Anthropic adds them often) passes: a tier of Anthropic's format takes
/// it, a translated tier refuses it. Each refusal names where it is (`messages.2.content.0`).
pub fn validate_prompt(body: &[u8]) -> Result<(), RequestError> {
    let parts: Parts<'_> =
        serde_json::from_slice(body).map_err(|err| RequestError::NotJson(err.to_string()))?;
    let messages =
        given(parts.messages).ok_or(RequestError::field("messages", "Field required"))?;
    let messages: Vec<&RawValue> = serde_json::from_str(messages.get()).map_err(|_| {
        RequestError::field(
            "messages",
            "must be an array of messages, each an object with a role and content",
        )
    })?;
    if messages.is_empty() {
        return Err(RequestError::field(
            "messages",
            "must contain at least one message",
        ));
    }
    for (i, message) in messages.iter().enumerate() {
        let at = || format!("messages.{i}");
        let message: Message<'_> = serde_json::from_str(message.get()).map_err(|_| {
            invalid(
                "messages",
                at(),
                "must be an object with a role and content",
            )
        })?;
        let role = given(message.role).map(RawValue::get);
        if !matches!(role, Some("\"user\"" | "\"assistant\"")) {
            return Err(invalid(
                "messages",
                format!("{}.role", at()),
                "must be 'user' or 'assistant' (the system prompt goes in 'system')",
            ));
        }
        let content = given(message.content)
            .ok_or_else(|| invalid("messages", format!("{}.content", at()), "Field required"))?;
        if !is_string(Some(content)) {
            check_blocks(content, &format!("{}.content", at()), "messages")?;
        }
    }
    if let Some(system) = given(parts.system)
        && !is_string(Some(system))
    {
        let blocks: Vec<&RawValue> = serde_json::from_str(system.get()).map_err(|_| {
            RequestError::field("system", "must be a string or an array of text blocks")
        })?;
        for (i, block) in blocks.iter().enumerate() {
            let block: Block<'_> = serde_json::from_str(block.get())
                .map_err(|_| invalid("system", format!("system.{i}"), "must be a text block"))?;
            if block.kind.as_deref() != Some("text") || !is_string(block.text) {
                return Err(invalid(
                    "system",
                    format!("system.{i}"),
                    "must be a text block: {\"type\": \"text\", \"text\": \"…\"}",
                ));
            }
        }
    }
    if let Some(tools) = given(parts.tools) {
        let tools: Vec<&RawValue> = serde_json::from_str(tools.get())
            .map_err(|_| RequestError::field("tools", "must be an array of tools"))?;
        for (i, tool) in tools.iter().enumerate() {
            let at = || format!("tools.{i}");
            let tool: Tool<'_> = serde_json::from_str(tool.get())
                .map_err(|_| invalid("tools", at(), "must be an object with a name"))?;
            if !is_string(tool.name) {
                return Err(invalid("tools", format!("{}.name", at()), "Field required"));
            }
            if matches!(tool.kind.as_deref(), None | Some("custom"))
                && !is_object(tool.input_schema)
            {
                return Err(invalid(
                    "tools",
                    format!("{}.input_schema", at()),
                    "Field required: a custom tool's input_schema is a JSON schema object",
                ));
            }
        }
    }
    if let Some(choice) = given(parts.tool_choice) {
        let choice: ToolChoice<'_> = serde_json::from_str(choice.get()).map_err(|_| {
            RequestError::field(
                "tool_choice",
                "must be an object such as {\"type\": \"auto\"}",
            )
        })?;
        match choice.kind.as_deref() {
            Some("auto" | "any" | "none") => {}
            Some("tool") if is_string(choice.name) => {}
            Some("tool") => {
                return Err(RequestError::field(
                    "tool_choice",
                    "of type 'tool' needs the tool's name",
                ));
            }
            _ => {
                return Err(RequestError::field(
                    "tool_choice",
                    "must be of type auto, any, tool or none",
                ));
            }
        }
    }
    Ok(())
}

/// A message's (or a tool result's) content blocks.
fn check_blocks(content: &RawValue, at: &str, param: &'static str) -> Result<(), RequestError> {
    let blocks: Vec<&RawValue> = serde_json::from_str(content.get()).map_err(|_| {
        invalid(
            param,
            at.to_string(),
            "must be a string or an array of content blocks",
        )
    })?;
    for (i, block) in blocks.iter().enumerate() {
        let at = format!("{at}.{i}");
        let block: Block<'_> = serde_json::from_str(block.get())
            .map_err(|_| invalid(param, at.clone(), "must be a content block object"))?;
        let needs = |ok: bool, field: &str, problem: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(invalid(param, format!("{at}.{field}"), problem))
            }
        };
        match block.kind.as_deref() {
            None => needs(false, "type", "Field required")?,
            Some("text") => needs(is_string(block.text), "text", "Field required: a string")?,
            Some("image") => check_source(block.source, &at, param, true)?,
            Some("document") => check_source(block.source, &at, param, false)?,
            Some("tool_use") => {
                needs(is_string(block.id), "id", "Field required: a string")?;
                needs(is_string(block.name), "name", "Field required: a string")?;
                needs(is_object(block.input), "input", "Field required: an object")?;
            }
            Some("tool_result") => {
                needs(
                    is_string(block.tool_use_id),
                    "tool_use_id",
                    "Field required: a string",
                )?;
                if let Some(content) = given(block.content)
                    && !is_string(Some(content))
                {
                    check_blocks(content, &format!("{at}.content"), param)?;
                }
                needs(
                    given(block.is_error).is_none_or(|flag| matches!(flag.get(), "true" | "false")),
                    "is_error",
                    "must be true or false",
                )?;
            }
            Some("thinking") => needs(
                is_string(block.thinking),
                "thinking",
                "Field required: a string",
            )?,
            Some("redacted_thinking") => {
                needs(is_string(block.data), "data", "Field required: a string")?
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// An image's source (base64 of an image type, a URL, a file id) or a document's (base64 PDF,
/// plain text, content blocks, a URL, a file id).
fn check_source(
    source: Option<&RawValue>,
    at: &str,
    param: &'static str,
    image: bool,
) -> Result<(), RequestError> {
    let at = format!("{at}.source");
    let bad = |problem| Err(invalid(param, at.clone(), problem));
    let Some(source) = given(source) else {
        return bad("Field required");
    };
    let Ok(source) = serde_json::from_str::<Source<'_>>(source.get()) else {
        return bad("must be an object with a type");
    };
    let media = source.media_type.as_deref();
    match (source.kind.as_deref(), image) {
        (Some("base64"), true) if media.is_some_and(|m| IMAGE_TYPES.contains(&m)) => {}
        (Some("base64"), true) => {
            return bad(
                "a base64 image needs a media_type of image/jpeg, image/png, image/gif or image/webp",
            );
        }
        (Some("base64"), false) if media == Some("application/pdf") => {}
        (Some("base64"), false) => {
            return bad("a base64 document needs media_type application/pdf");
        }
        (Some("text"), false) if media == Some("text/plain") => {}
        (Some("text"), false) => return bad("a text document needs media_type text/plain"),
        (Some("content"), false) => {
            return match given(source.content) {
                Some(content) if is_string(Some(content)) => Ok(()),
                Some(content) if is_array(content) => {
                    check_blocks(content, &format!("{at}.content"), param)
                }
                _ => bad("a content document needs content: a string or blocks"),
            };
        }
        (Some("url"), _) if is_string(source.url) => return Ok(()),
        (Some("url"), _) => return bad("a URL source needs url"),
        (Some("file"), _) if is_string(source.file_id) => return Ok(()),
        (Some("file"), _) => return bad("a file source needs file_id"),
        _ if image => return bad("must be of type base64, url or file"),
        _ => return bad("must be of type base64, text, content, url or file"),
    }
    if source.data.is_none() {
        return bad("Field required: data");
    }
    Ok(())
}

/// Whether `messages` (their raw JSON) hold an image block. Read where the request runs, for a
/// route with a tier that cannot see: a scan for the word first (most prompts have none), then
/// each block's type alone, never the blocks whole (10 MiB of blocks parsed as values took
/// ~300 ms).
pub fn has_image(messages: &str) -> bool {
    if memchr::memmem::find(messages.as_bytes(), b"\"image\"").is_none() {
        return false;
    }
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow, default)]
        kind: Option<Cow<'a, str>>,
    }
    let Ok(messages) = serde_json::from_str::<Vec<Message<'_>>>(messages) else {
        return false;
    };
    messages.iter().any(|message| {
        message
            .content
            .and_then(|content| serde_json::from_str::<Vec<Kind<'_>>>(content.get()).ok())
            .is_some_and(|blocks| {
                blocks
                    .iter()
                    .any(|block| block.kind.as_deref() == Some("image"))
            })
    })
}

/// A text's tokens; an empty one (a prompt may hold many empty blocks) is no work at all.
fn count(model: &str, text: &str) -> u64 {
    if text.is_empty() {
        0
    } else {
        tokens::count(model, text)
    }
}

/// About four bytes a token: what the estimate counts where it cannot read.
fn by_bytes(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// The prompt of `body` in tokens as `model`'s tokenizer counts its text, with `system` in place
/// of the client's where a tier sets its own: the system prompt and each message with 3 tokens of
/// framing (as chat messages are counted), each block by what it holds — text by the tokenizer;
/// an image by its size ([`media::image_tokens_of_base64`]), or at the cap where it is not in the
/// request; a PDF by its pages; a tool use by its name and input, a tool result by its content;
/// the thinking of earlier turns not at all (Anthropic drops it from the context) — and the tool
/// definitions as their JSON. A part, message or block that cannot be read counts at four bytes a
/// token.
pub fn estimate(model: &str, body: &[u8], system: Option<&str>) -> u64 {
    let Ok(parts) = serde_json::from_slice::<Parts<'_>>(body) else {
        return String::from_utf8_lossy(body).len().div_ceil(4) as u64;
    };
    let system = match (system, given(parts.system)) {
        (Some(text), _) => 3 + count(model, text),
        (None, None) => 0,
        (None, Some(system)) => 3 + content_tokens(model, system),
    };
    let messages = given(parts.messages).map_or(0, |messages| {
        match serde_json::from_str::<Vec<&RawValue>>(messages.get()) {
            Ok(messages) => messages
                .iter()
                .map(|message| {
                    3 + match serde_json::from_str::<Message<'_>>(message.get()) {
                        Ok(message) => given(message.content)
                            .map_or(0, |content| content_tokens(model, content)),
                        Err(_) => by_bytes(message.get()),
                    }
                })
                .sum(),
            Err(_) => by_bytes(messages.get()),
        }
    });
    let tools = given(parts.tools)
        .filter(|tools| tools.get() != "[]")
        .map_or(0, |tools| {
            match serde_json::from_str::<Value>(tools.get()) {
                Ok(tools) => count(model, &tools.to_string()),
                Err(_) => by_bytes(tools.get()),
            }
        });
    system + messages + tools + 3
}

/// A string's text, or each block's tokens, the blocks a line apart.
fn content_tokens(model: &str, content: &RawValue) -> u64 {
    if let Ok(text) = serde_json::from_str::<Cow<'_, str>>(content.get()) {
        return count(model, &text);
    }
    match serde_json::from_str::<Vec<&RawValue>>(content.get()) {
        Ok(blocks) => {
            let newlines = blocks.len().saturating_sub(1) as u64;
            blocks
                .iter()
                .map(|block| block_tokens(model, block))
                .sum::<u64>()
                + newlines
        }
        Err(_) => by_bytes(content.get()),
    }
}

fn block_tokens(model: &str, raw: &RawValue) -> u64 {
    let Ok(block) = serde_json::from_str::<Block<'_>>(raw.get()) else {
        return by_bytes(raw.get());
    };
    let text_of = |raw: Option<&RawValue>| {
        raw.and_then(|raw| serde_json::from_str::<Cow<'_, str>>(raw.get()).ok())
            .map_or(0, |text| count(model, &text))
    };
    match block.kind.as_deref() {
        Some("text") => text_of(block.text),
        Some("image") => source_tokens(model, block.source, true),
        Some("document") => source_tokens(model, block.source, false),
        Some("tool_use") => {
            text_of(block.name) + block.input.map_or(0, |input| json_tokens(model, input))
        }
        Some("tool_result") => {
            given(block.content).map_or(0, |content| content_tokens(model, content))
        }
        // Earlier turns' thinking is not part of the context Anthropic counts.
        Some("thinking" | "redacted_thinking") => 0,
        // Blocks the gateway does not read (server tools' results, search results…): their JSON.
        _ => json_tokens(model, raw),
    }
}

/// A JSON value's text as written compactly, or at four bytes a token where it cannot be read.
fn json_tokens(model: &str, raw: &RawValue) -> u64 {
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(value) => count(model, &value.to_string()),
        Err(_) => by_bytes(raw.get()),
    }
}

/// An image: by its size, or at the cap where it is only named (a URL, a file: never fetched).
/// A document: a PDF by its pages, a text or content document by its text, one page where it is
/// only named.
fn source_tokens(model: &str, source: Option<&RawValue>, image: bool) -> u64 {
    let Some(source) = source.and_then(|raw| serde_json::from_str::<Source<'_>>(raw.get()).ok())
    else {
        return if image {
            media::IMAGE_CAP
        } else {
            media::PDF_PAGE_TOKENS
        };
    };
    match (source.kind.as_deref(), image, source.data) {
        (Some("base64"), true, Some(data)) => media::image_tokens_of_base64(&data),
        (_, true, _) => media::IMAGE_CAP,
        (Some("base64"), false, Some(data)) => media::pdf_tokens_of_base64(&data),
        (Some("text"), false, Some(text)) => count(model, &text),
        (Some("content"), false, _) => {
            given(source.content).map_or(0, |content| content_tokens(model, content))
        }
        _ => media::PDF_PAGE_TOKENS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deeply nested content (past serde_json's 128 levels) is still checked and counted: its
    /// block at four bytes a token, never 0.
    #[test]
    fn deep_nesting_is_checked_and_counted() {
        let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        let body = format!(
            r#"{{"messages": [{{"role": "assistant", "content": [{{"type": "tool_use", "id": "t", "name": "w", "input": {{"a": {deep}}}}}]}}]}}"#
        );
        validate_prompt(body.as_bytes()).unwrap();
        assert!(estimate("m", body.as_bytes(), None) >= 600 / 4);
        assert!(serde_json::from_str::<Value>(&body).is_err());
    }

    /// What checking and estimating a 10 MiB body of 400k empty text blocks costs, beside what
    /// stays on the event loop (the top-level read). A timing, not a check: `cargo test --release
    /// --lib prompt_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn prompt_cost() {
        use std::time::Instant;
        let blocks = r#"{"type":"text","text":""},"#.repeat(400_000);
        let body = format!(
            r#"{{"model":"m","max_tokens":5,"messages":[{{"role":"user","content":[{}]}}]}}"#,
            blocks.trim_end_matches(',')
        );
        println!("{} bytes", body.len());
        let time = |name: &str, f: &dyn Fn()| {
            let started = Instant::now();
            f();
            println!("{name:32} {:8.1} ms", started.elapsed().as_secs_f64() * 1e3);
        };
        time("top-level read (on the loop)", &|| {
            crate::openai::RequestBody::parse(crate::openai::Endpoint::Messages, body.as_bytes())
                .unwrap();
        });
        time("validate_prompt (blocking pool)", &|| {
            validate_prompt(body.as_bytes()).unwrap();
        });
        time("estimate (blocking pool)", &|| {
            estimate("m", body.as_bytes(), None);
        });
    }
}
