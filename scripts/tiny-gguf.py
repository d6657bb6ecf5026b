#!/usr/bin/env python3
"""Writes a tiny llama-architecture GGUF model for the tests of the local tier (tests/it/llama.rs):
2 layers, 64 wide, 4 heads, trained context 2,048 tokens (the tests serve it at 512 with `-c`, and at
2,048 where a window must be above tierwise's floor for learned windows), random weights from a
fixed seed, and an SPM (llama) vocabulary of <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>,
ChatML's two markers and about 200 common English words with their prefixes, so any text tokenizes
(what it has no word for falls back to byte tokens). Its answers are noise; what the tests want is
llama-server's real protocol around it, and a model small enough (730 kB) to load in a blink. Run by scripts/llama-server with the pinned gguf package.

Usage: tiny-gguf.py OUTPUT
"""

import sys

import numpy as np
from gguf import GGUFWriter, TokenType

N_CTX = 2048
N_EMBD = 64
N_HEAD = 4
N_LAYER = 2
N_FF = 128
# Common English words, so that a prompt made of them tokenizes about as OpenAI's tokenizers count
# it (one token a word) and a server's count of a prompt can be set beside tierwise's own; any
# other text falls back to bytes.
WORDS = list(
    dict.fromkeys(
        "the of and to a in is it you that he was for on are with as I his they be at one have"
        " this from or had by word but what some we can out other were all there when up use"
        " your how said an each she which do their time if will way about many then them write"
        " would like so these her long make thing see him two has look more day could go come"
        " did number sound no most people my over know water than call first who may down side"
        " been now find any new work part take get place made live where after back little only"
        " round man year came show every good me give our under name very through just form"
        " sentence great think say help low line differ turn cause much mean before move right"
        " boy old too same tell does set three want air well also play small end put home read"
        " hand port large spell add even land here must big high such follow act why ask men"
        " change went light kind off need house picture try us again animal point mother world"
        " near build self earth father hello cost tier token model answer".split()
    )
)
# ChatML's markers, as the chat template llama-server applies without one in the model uses them:
# one token each, as in the models that use that template.
CONTROL = ["<|im_start|>", "<|im_end|>"]


def pieces():
    """Every word with its leading space (SPM's "▁"), and each of its prefixes: SPM builds a word by
    merging adjacent pieces that are themselves in the vocabulary, so each step must be there."""
    found = {"▁": None}
    for word in WORDS:
        piece = "▁" + word
        for end in range(2, len(piece) + 1):
            found.setdefault(piece[:end], None)
    return list(found)


def vocabulary():
    tokens = [b"<unk>", b"<s>", b"</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>".encode())
        types.append(TokenType.BYTE)
    for marker in CONTROL:
        tokens.append(marker.encode())
        types.append(TokenType.CONTROL)
    words = pieces()
    for piece in words:
        tokens.append(piece.encode())
        types.append(TokenType.NORMAL)
    # SPM merges the pair whose merged piece scores highest first: longer pieces score higher, so
    # a word is built whole before anything else is tried.
    scores = [0.0] * (3 + 256 + len(CONTROL)) + [float(len(piece)) for piece in words]
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
