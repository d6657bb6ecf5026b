//! Writes OpenAI's token tables (o200k_base, cl100k_base) in the compact form
//! `src/openai/tokens.rs` counts with: every token's bytes end to end, and where each starts. The
//! tables come from tiktoken-rs, the same ones its tokenizer loads; held as tiktoken-rs holds them
//! (hash maps both ways, a sorted copy and 128 regex clones) o200k costs 25 MB resident and 50 MB
//! at its peak while loading, in the binary 2.2 MB.

use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let tables = [
        ("o200k", tiktoken_rs::o200k_base()),
        ("cl100k", tiktoken_rs::cl100k_base()),
    ];
    for (name, bpe) in tables {
        let bpe = bpe.expect("tiktoken-rs carries its tables");
        write_table(&Path::new(&out).join(format!("{name}.bin")), &bpe);
    }
}

/// `[n: u32][starts: (n + 1) × u32][bytes]`, little-endian; token `r` is
/// `bytes[starts[r]..starts[r + 1]]`.
fn write_table(path: &Path, bpe: &tiktoken_rs::CoreBPE) {
    let specials = bpe.special_tokens();
    let mut tokens: Vec<Vec<u8>> = Vec::new();
    // Ordinary ranks run from 0 without a gap; the special tokens come after them.
    while let Ok(bytes) = bpe.decode_bytes(&[tokens.len() as u32]) {
        if specials.iter().any(|s| s.as_bytes() == bytes) {
            break;
        }
        tokens.push(bytes);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
    let mut start = 0u32;
    for token in &tokens {
        out.extend_from_slice(&start.to_le_bytes());
        start += token.len() as u32;
    }
    out.extend_from_slice(&start.to_le_bytes());
    for token in &tokens {
        out.extend_from_slice(token);
    }
    std::fs::write(path, out).expect("OUT_DIR is writable");
}
