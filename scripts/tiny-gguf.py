#!/usr/bin/env python3
"""Writes a tiny llama-architecture GGUF model for the tests of the local tier (tests/it/llama.rs):
2 layers, 64 wide, 4 heads, a 512-token context, random weights from a fixed seed, and an SPM
(llama) vocabulary of <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF> and a few words, so any
text tokenizes (bytes it has no word for fall back to byte tokens). Its answers are noise; what the
tests want is llama-server's real protocol around it, and a model small enough (about 0.5 MB) to
load in a blink. Run by scripts/llama-server with the pinned gguf package.

Usage: tiny-gguf.py OUTPUT
"""

import sys

import numpy as np
from gguf import GGUFWriter, TokenType

N_CTX = 512
N_EMBD = 64
N_HEAD = 4
N_LAYER = 2
N_FF = 128
WORDS = ["▁the", "▁a", "▁is", "▁hello", "▁world", "▁say", "▁ok", "▁tier", "▁cost", "▁token"]


def vocabulary():
    tokens = [b"<unk>", b"<s>", b"</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>".encode())
        types.append(TokenType.BYTE)
    for word in WORDS:
        tokens.append(word.encode())
        types.append(TokenType.NORMAL)
    # SPM merges by score: longer words win over their bytes.
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(WORDS))]
    return tokens, scores, types


def main(path):
    rng = np.random.default_rng(30)
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)

    w = GGUFWriter(path, "llama")
    w.add_name("tierwise-tiny")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)  # all F32
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    ones = np.ones(N_EMBD, dtype=np.float32)
    w.add_tensor("token_embd.weight", weight(n_vocab, N_EMBD))
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", weight(n_vocab, N_EMBD))
    for i in range(N_LAYER):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.attn_q.weight", weight(N_EMBD, N_EMBD))
        w.add_tensor(f"blk.{i}.attn_k.weight", weight(N_EMBD, N_EMBD))
        w.add_tensor(f"blk.{i}.attn_v.weight", weight(N_EMBD, N_EMBD))
        w.add_tensor(f"blk.{i}.attn_output.weight", weight(N_EMBD, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", weight(N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_up.weight", weight(N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_down.weight", weight(N_EMBD, N_FF))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
