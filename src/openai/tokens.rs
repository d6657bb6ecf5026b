//! OpenAI's tokenizers, for upstreams that report no usage: o200k for the gpt-4o, gpt-4.1, gpt-5
//! and o-series families, cl100k otherwise. Counts made here are always marked estimated.
//!
//! Never call these on a serving thread's event loop: the first use of o200k takes ~90 ms and
//! ~45 MB to load it (cl100k ~30 ms, ~25 MB), and counting an 800-token prompt takes ~40 µs after
//! that, all of which would stall every other request on that thread (docs/benchmarks.md).

use serde_json::Value;
use tiktoken_rs::CoreBPE;

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

/// The text of a message's `content`: a string, or the text parts of a list of parts.
pub fn text_of(content: &Value) -> String {
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

#[cfg(test)]
mod tests {
    #[test]
    fn counts_with_the_model_family_tokenizer() {
        // Literal counts from tiktoken (o200k_base and cl100k_base), not from this module.
        assert_eq!(super::count("gpt-4o", "hello world"), 2);
        assert_eq!(super::count("mistral-7b", "hello world"), 2);
        assert_eq!(
            super::count("gpt-4o", "My card was charged twice for the same order."),
            10
        );
        assert_eq!(
            super::count(
                "mistral-7b",
                "My card was charged twice for the same order."
            ),
            10
        );
    }
}
