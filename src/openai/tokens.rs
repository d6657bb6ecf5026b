//! OpenAI's tokenizers, for upstreams that report no usage: o200k for the gpt-4o, gpt-4.1, gpt-5
//! and o-series families, cl100k otherwise. Counts made here are always marked estimated, and are
//! tiktoken's own: the same tables (written into the binary by `build.rs` from tiktoken-rs), the
//! same pattern that splits text into pieces, the same merges within a piece; a test compares
//! every count with tiktoken-rs's.
//!
//! Why not tiktoken-rs itself: its tokenizer holds each table as two hash maps, a sorted copy and
//! 128 regex clones, 25 MB resident for o200k and 50 MB at the peak of its 90 ms load, for a count
//! a gateway needs rarely (streams cut by their client, upstreams without usage, prompts near a
//! tier's window). Here a table is read where it lies in the binary (2.2 MB for o200k); built at
//! first use are the pattern's regex and an index of ranks by the tokens' hashes (1.2 MB), which
//! finds a token as fast as tiktoken-rs's map does.

use std::hash::BuildHasher;
use std::sync::OnceLock;

use hashbrown::{DefaultHashBuilder, HashTable};
use serde_json::Value;

/// One encoding: its table as `build.rs` wrote it, its pattern, its special tokens.
struct Encoding {
    /// `[n][starts: n + 1]` as little-endian u32s, then the tokens' bytes.
    table: &'static [u8],
    pattern: &'static str,
    /// Counted as one token each where they appear in a text, as tiktoken's
    /// `encode_with_special_tokens` does.
    specials: &'static [&'static str],
    regex: OnceLock<Option<fancy_regex::Regex>>,
    index: OnceLock<Index>,
}

/// Every rank, found by the hash of its token's bytes: a table of ranks rather than of keys, since
/// the keys are already in the binary.
struct Index {
    ranks: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

static O200K: Encoding = Encoding {
    table: include_bytes!(concat!(env!("OUT_DIR"), "/o200k.bin")),
    pattern: concat!(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    specials: &["<|endoftext|>", "<|endofprompt|>"],
    regex: OnceLock::new(),
    index: OnceLock::new(),
};

static CL100K: Encoding = Encoding {
    table: include_bytes!(concat!(env!("OUT_DIR"), "/cl100k.bin")),
    pattern: r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s",
    specials: &[
        "<|endoftext|>",
        "<|fim_prefix|>",
        "<|fim_middle|>",
        "<|fim_suffix|>",
        "<|endofprompt|>",
    ],
    regex: OnceLock::new(),
    index: OnceLock::new(),
};

impl Encoding {
    fn word(&self, index: usize) -> usize {
        let at = index * 4;
        u32::from_le_bytes([
            self.table[at],
            self.table[at + 1],
            self.table[at + 2],
            self.table[at + 3],
        ]) as usize
    }

    fn len(&self) -> usize {
        self.word(0)
    }

    /// The bytes of the token ranked `rank`.
    fn token(&self, rank: usize) -> &'static [u8] {
        let bytes = 4 * (self.len() + 2);
        &self.table[bytes + self.word(1 + rank)..bytes + self.word(2 + rank)]
    }

    /// The rank of the token made of exactly `bytes`, if there is one.
    fn rank(&self, bytes: &[u8]) -> Option<u32> {
        let index = self.index.get_or_init(|| {
            let hasher = DefaultHashBuilder::default();
            let mut ranks = HashTable::with_capacity(self.len());
            for rank in 0..self.len() {
                let hash = hasher.hash_one(self.token(rank));
                ranks.insert_unique(hash, rank as u32, |&r| {
                    hasher.hash_one(self.token(r as usize))
                });
            }
            Index { ranks, hasher }
        });
        let hash = index.hasher.hash_one(bytes);
        index
            .ranks
            .find(hash, |&rank| self.token(rank as usize) == bytes)
            .copied()
    }

    fn count(&self, text: &str) -> u64 {
        let mut total = 0;
        let mut rest = text;
        loop {
            let special = self
                .specials
                .iter()
                .filter_map(|special| rest.find(special).map(|at| (at, special.len())))
                .min();
            let Some((at, len)) = special else {
                return total + self.count_ordinary(rest);
            };
            total += self.count_ordinary(&rest[..at]) + 1;
            rest = &rest[at + len..];
        }
    }

    /// Tokens of a text without special tokens: the pattern's pieces, each a token or merged
    /// down to tokens.
    fn count_ordinary(&self, text: &str) -> u64 {
        let regex = self
            .regex
            .get_or_init(|| fancy_regex::Regex::new(self.pattern).ok());
        let Some(regex) = regex else {
            return estimate(text);
        };
        let mut total = 0;
        for piece in regex.find_iter(text) {
            match piece {
                Ok(piece) => total += self.piece_tokens(piece.as_str().as_bytes()),
                // The pattern gave up backtracking (a pathological text): tiktoken-rs would panic.
                Err(_) => return estimate(text),
            }
        }
        total
    }

    /// Byte-pair merges within one piece: starting from single bytes, the adjacent pair that
    /// forms the lowest-ranked token is merged first (the leftmost of equals), until no adjacent
    /// pair forms a token; what is left is the piece's tokens.
    fn piece_tokens(&self, piece: &[u8]) -> u64 {
        if piece.len() < 2 || self.rank(piece).is_some() {
            return 1;
        }
        // `bounds[i]..bounds[i + 1]` is a part; `pair[i]` the rank of parts i and i + 1 as one.
        let mut bounds: Vec<usize> = (0..=piece.len()).collect();
        let pair_rank = |bounds: &[usize], i: usize| {
            bounds
                .get(i + 2)
                .and_then(|&end| self.rank(&piece[bounds[i]..end]))
                .unwrap_or(u32::MAX)
        };
        let mut pair: Vec<u32> = (0..bounds.len()).map(|i| pair_rank(&bounds, i)).collect();
        loop {
            let mut best = (u32::MAX, 0);
            for (i, &rank) in pair.iter().enumerate() {
                if rank < best.0 {
                    best = (rank, i);
                }
            }
            let (rank, i) = best;
            if rank == u32::MAX {
                return (bounds.len() - 1) as u64;
            }
            bounds.remove(i + 1);
            pair.remove(i + 1);
            pair[i] = pair_rank(&bounds, i);
            if i > 0 {
                pair[i - 1] = pair_rank(&bounds, i - 1);
            }
        }
    }
}

/// About four bytes a token: only where the pattern cannot be used.
fn estimate(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

fn encoding(model: &str) -> &'static Encoding {
    let o200k = ["gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4", "chatgpt-4o"];
    if o200k.iter().any(|family| model.starts_with(family)) {
        &O200K
    } else {
        &CL100K
    }
}

pub fn count(model: &str, text: &str) -> u64 {
    encoding(model).count(text)
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
    use proptest::prelude::*;

    use super::*;

    /// Texts of the kinds a gateway counts: prose, chat, code, JSON, numbers, many scripts,
    /// emoji, odd whitespace, contractions, special tokens.
    const CORPUS: &[&str] = &[
        "",
        "hello world",
        "My card was charged twice for the same order.",
        "The customer writes that the invoice total does not match the order.\n\nPlease advise.",
        "I'm sure they'll say it's fine, but we've seen THEY'RE wrong. Don't you think?",
        "fn main() {\n    let x: Vec<u8> = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n",
        "def f(a, b=2):\n\treturn {'k': [a, b, None]}  # comment\r\n",
        r#"{"label": "billing", "confidence": 0.93, "items": [{"sku": "A-1234", "qty": 12}]}"#,
        "1234567890 3.14159 -42 1e10 0x1F 2026-11-30T05:30:00Z $1,299.99 99%",
        "Ünïcödé façade naïve coöperate — “quotes” and ‘apostrophes’ … ½ ¼",
        "你好，世界！这是一个测试。日本語のテキストも。한국어 문장입니다.",
        "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم שלום עולם नमस्ते दुनिया",
        "emoji 🎉🚀👍🏽 family 👨‍👩‍👧‍👦 flags 🇩🇪🇯🇵 and ✔︎ marks",
        "   leading spaces\ttabs\t\ttrailing   \n\n\n   \r\n \u{a0}nbsp\u{2003}em",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "<|endoftext|>start<|endofprompt|> middle <|fim_prefix|>x<|fim_middle|>y<|fim_suffix|>",
        "https://example.com/path?query=1&b=two#frag user@example.org C:\\Windows\\path",
        "ALLCAPS camelCaseWords snake_case_words kebab-case-words PascalCase HTTPServerError",
        "\u{0}\u{1}\u{7f}\u{80}\u{ff}\u{fffd}\u{10ffff} control and edge code points",
    ];

    fn tiktoken(model: &str, text: &str) -> u64 {
        let bpe = if std::ptr::eq(encoding(model), &O200K) {
            tiktoken_rs::o200k_base_singleton()
        } else {
            tiktoken_rs::cl100k_base_singleton()
        };
        bpe.encode_with_special_tokens(text).len() as u64
    }

    #[test]
    fn counts_are_tiktokens_on_the_corpus() {
        for model in ["gpt-4o", "gpt-3.5-turbo"] {
            for text in CORPUS {
                assert_eq!(
                    count(model, text),
                    tiktoken(model, text),
                    "{model}: {text:?}"
                );
            }
        }
    }

    proptest! {
        /// Any text, counted by both encodings: the same count as tiktoken-rs gives.
        #[test]
        fn counts_are_tiktokens_on_any_text(text in "\\PC{0,120}|[ a-zA-Z0-9'\\n\\t.,!?-]{0,200}") {
            for model in ["gpt-4o", "mistral-7b"] {
                prop_assert_eq!(count(model, &text), tiktoken(model, &text));
            }
        }
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
