//! `/v1/embeddings`: a body must hold `input` and cannot stream; a tier changes only the model;
//! input is counted text by text (or taken as already-tokenized), and an embedding has no output
//! tokens.

use serde::Deserialize;
use serde_json::{Value, json};

use super::tokens::count;
use super::{Edits, EndpointSpec, RequestBody, RequestError, Usage};
use crate::config::{Abilities, ChainTier};

pub const SPEC: EndpointSpec = EndpointSpec {
    path: "embeddings",
    ledger_name: "embeddings",
    validate,
    check_prompt: None,
    rewrite,
    count_prompt,
    count_answer,
    warmup,
    answer_texts: None,
    said: None,
    needs: |_| Abilities {
        tools: false,
        json_schema: false,
        vision: false,
    },
    answer_limits: &[],
    // An embedding has no output tokens.
    answer_budget: |_| Some(0),
    answer_usage: Usage::of_answer,
    // Embeddings are never streamed (`validate` refuses it).
    read_event: |_| None,
    done: None,
    interrupted: |_, _| (None, String::new()),
    via_chat: None,
    error_body: super::openai_error,
    key_header: None,
    count_tokens: None,
    overloaded_status: None,
    passed_headers: &[],
};

fn validate(body: &RequestBody<'_>) -> Result<(), RequestError> {
    let Some(input) = body.field("input") else {
        return Err(RequestError::field("input", "is required"));
    };
    if !input.get().trim_start().starts_with(['"', '[']) {
        return Err(RequestError::field(
            "input",
            "must be a string, an array of strings or an array of token arrays",
        ));
    }
    if body.stream {
        return Err(RequestError::field(
            "stream",
            "is not supported for embeddings",
        ));
    }
    Ok(())
}

fn rewrite(_: &RequestBody<'_>, _: &ChainTier, _: &mut Edits) {}

fn count_prompt(model: &str, body: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct Embed {
        input: Value,
    }
    match serde_json::from_slice::<Embed>(body).map(|e| e.input) {
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
    }
}

fn count_answer(_: &str, _: &[u8]) -> u64 {
    0
}

fn warmup(model: &str) -> Value {
    json!({"model": model, "input": "warm-up"})
}

#[cfg(test)]
mod tests {
    #[test]
    fn inputs_are_counted_text_by_text() {
        let embed = br#"{"input":["hello world","hello"]}"#;
        assert_eq!(super::count_prompt("text-embedding-3-small", embed), 3);
        let tokens = br#"{"input":[[1,2,3],[4]]}"#;
        assert_eq!(super::count_prompt("text-embedding-3-small", tokens), 4);
    }
}
