//! OpenAI's tokenizers, for upstreams that report no usage: o200k for the gpt-4o, gpt-4.1, gpt-5
//! and o-series families, cl100k otherwise. Counts made here are always marked estimated, and are
//! tiktoken's own (the same tables, loaded from `tiktoken-rs`).
//!
//! Never call these on a serving thread's event loop: loading o200k takes ~90 ms and ~45 MB (cl100k
//! ~30 ms, ~25 MB), and counting an 800-token prompt takes ~40 µs after that, all of which would
//! stall every other request on that thread (docs/benchmarks.md).
//!
//! A tokenizer is loaded when a count first needs it and released once it has gone unused for
//! [`IDLE`]: counting is rare (streams cut by their client, upstreams without usage), and a
//! gateway should not carry 45 MB for the rest of its life because of one such request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// How long a loaded tokenizer may go unused before it is released.
pub const IDLE: Duration = Duration::from_secs(60);

/// One tokenizer's slot: loaded, when last used.
struct Slot {
    load: fn() -> Option<CoreBPE>,
    loaded: Mutex<Option<(Arc<CoreBPE>, Instant)>>,
}

static O200K: Slot = Slot {
    load: || tiktoken_rs::o200k_base().ok(),
    loaded: Mutex::new(None),
};
static CL100K: Slot = Slot {
    load: || tiktoken_rs::cl100k_base().ok(),
    loaded: Mutex::new(None),
};

impl Slot {
    /// The tokenizer, loaded if it is not, and marked used now.
    fn get(&'static self) -> Arc<CoreBPE> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((bpe, used)) = loaded.as_mut() {
            *used = Instant::now();
            return bpe.clone();
        }
        let bpe = Arc::new((self.load)().expect("tiktoken-rs carries its tables in the binary"));
        *loaded = Some((bpe.clone(), Instant::now()));
        drop(loaded);
        // A thread of its own releases it once idle, then ends; the next count loads it again.
        let spawned = std::thread::Builder::new()
            .name("tierwise-tokenizer".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(IDLE / 4);
                    if self.release_if_idle(IDLE) {
                        return;
                    }
                }
            });
        if let Err(err) = spawned {
            tracing::warn!("cannot start the tokenizer's release thread: {err}; it stays loaded");
        }
        bpe
    }

    /// Releases the tokenizer if it has gone unused for `idle`; `true` when it is not loaded now.
    fn release_if_idle(&self, idle: Duration) -> bool {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded
            .as_ref()
            .is_some_and(|(_, used)| used.elapsed() >= idle)
        {
            *loaded = None;
        }
        loaded.is_none()
    }

    #[cfg(test)]
    fn is_loaded(&self) -> bool {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

fn tokenizer(model: &str) -> &'static Slot {
    let o200k = ["gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4", "chatgpt-4o"];
    if o200k.iter().any(|family| model.starts_with(family)) {
        &O200K
    } else {
        &CL100K
    }
}

pub fn count(model: &str, text: &str) -> u64 {
    tokenizer(model)
        .get()
        .encode_with_special_tokens(text)
        .len() as u64
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
    use super::*;

    /// Loaded by a count, released once idle, loaded again by the next count: the same counts.
    #[test]
    fn a_tokenizer_is_released_when_idle_and_loaded_again_when_needed() {
        assert_eq!(count("gpt-4o", "hello world"), 2);
        assert!(O200K.is_loaded());
        assert!(
            !O200K.release_if_idle(Duration::from_secs(3600)),
            "just used"
        );
        // Released under the slot's lock (another test's count may load it again at once).
        assert!(O200K.release_if_idle(Duration::ZERO));
        assert_eq!(count("gpt-4o", "hello world"), 2);
        assert!(O200K.is_loaded());
    }

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
