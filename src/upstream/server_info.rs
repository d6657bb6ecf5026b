//! What a local model server says of its model's context window beyond OpenAI's API, read once at
//! start-up and after each recovery: Ollama's `POST /api/show` (the served `num_ctx` where its
//! Modelfile sets one, else the model's trained `<arch>.context_length`) and llama.cpp's
//! `GET /props` (`default_generation_settings.n_ctx`, one slot's share of `--ctx-size`). Both live
//! at the server's root, beside the `/v1/` the provider's `base_url` names. vLLM's window comes
//! with its model listing instead ([`super::ListedModel`]).
//!
//! Ollama's trained length is an upper bound: an Ollama whose Modelfile sets no `num_ctx` serves
//! the context its own default gives (by VRAM, 4k to 256k), and truncates a longer prompt instead
//! of refusing it, so `context_tokens` set in the config (or `OLLAMA_CONTEXT_LENGTH` on the server
//! and in the config) is the reliable way there.

use serde_json::Value;

/// The window an Ollama `/api/show` answer gives.
pub fn ollama_window(body: &[u8]) -> Option<u32> {
    let show: Value = serde_json::from_slice(body).ok()?;
    let configured = show["parameters"].as_str().and_then(|parameters| {
        parameters.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "num_ctx").then(|| words.next()?.parse().ok())?
        })
    });
    configured.or_else(|| {
        show["model_info"]
            .as_object()?
            .iter()
            .find_map(|(key, value)| {
                key.ends_with(".context_length")
                    .then(|| u32::try_from(value.as_u64()?).ok())?
            })
    })
}

/// The window a llama.cpp `/props` answer gives.
pub fn llama_cpp_window(body: &[u8]) -> Option<u32> {
    let props: Value = serde_json::from_slice(body).ok()?;
    let n_ctx = props["default_generation_settings"]["n_ctx"]
        .as_u64()
        .or_else(|| props["n_ctx"].as_u64())?;
    u32::try_from(n_ctx).ok().filter(|tokens| *tokens > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_s_num_ctx_wins_over_the_trained_length() {
        let set = br#"{"parameters": "stop \"[INST]\"\nnum_ctx 8192", "model_info": {"general.architecture": "llama", "llama.context_length": 32768}}"#;
        assert_eq!(ollama_window(set), Some(8192));
        let unset =
            br#"{"parameters": "temperature 0.7", "model_info": {"qwen2.context_length": 32768}}"#;
        assert_eq!(ollama_window(unset), Some(32768));
        assert_eq!(ollama_window(br#"{"model_info": {}}"#), None);
        assert_eq!(ollama_window(b"not json"), None);
    }

    #[test]
    fn llama_cpp_s_slot_context_is_read_from_its_props() {
        assert_eq!(
            llama_cpp_window(
                br#"{"default_generation_settings": {"n_ctx": 4096}, "total_slots": 1}"#
            ),
            Some(4096)
        );
        assert_eq!(llama_cpp_window(br#"{"n_ctx": 2048}"#), Some(2048));
        assert_eq!(
            llama_cpp_window(br#"{"default_generation_settings": {"n_ctx": 0}}"#),
            None
        );
        assert_eq!(llama_cpp_window(br#"{"total_slots": 1}"#), None);
    }
}
