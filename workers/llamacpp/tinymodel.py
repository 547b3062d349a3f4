"""A tiny random-weight llama GGUF for tests and benchmarks. Its output is NOISE.

The model is small enough to write in milliseconds and load in llama-server in well under a
second, so tests can exercise the real binary without downloading weights. The vocabulary is
byte-level (every byte is a token), which makes /tokenize round trips exact for any prompt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SEED = 1234
N_VOCAB = 260  # <unk>, <s>, </s>, 256 byte tokens, one normal token
N_EMBD = 64
N_HEAD = 4
N_FF = 128
N_LAYER = 2
N_CTX = 512

NAME = "llmrelay-tiny-test-model"
DESCRIPTION = (
    "TEST MODEL with random weights written by llmrelay (workers.llamacpp.tinymodel). "
    "Its output is noise; it exists only to exercise llama-server in tests and benchmarks."
)


def _vocab() -> tuple[list[str], list[int], list[float]]:
    from gguf import TokenType

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581"]
    types = [int(TokenType.UNKNOWN), int(TokenType.CONTROL), int(TokenType.CONTROL)]
    types += [int(TokenType.BYTE)] * 256 + [int(TokenType.NORMAL)]
    scores = [0.0] * len(tokens)
    assert len(tokens) == N_VOCAB
    return tokens, types, scores


def write_tiny_model(path: str | Path, *, n_ctx: int = N_CTX) -> Path:
    """Write the tiny test model to `path` (deterministic: same bytes for the same n_ctx).

    llama-server caps a slot's context at the training context, so tests that need a long
    generation (to act on it mid-stream) ask for a larger `n_ctx`.
    """
    from gguf import GGUFWriter

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)

    def weights(*shape: int) -> np.ndarray:
        # numpy shape is (rows, cols) = GGUF (ne1, ne0); llama.cpp wants (out, in) here.
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    writer = GGUFWriter(str(out), "llama")
    writer.add_name(NAME)
    writer.add_description(DESCRIPTION)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # all F32

    tokens, types, scores = _vocab()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores(scores)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    # No implicit leading space, so /tokenize of any text maps 1:1 onto its UTF-8 bytes.
    writer.add_add_space_prefix(False)

    writer.add_tensor("token_embd.weight", weights(N_VOCAB, N_EMBD))
    for i in range(N_LAYER):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", ones(N_EMBD))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{blk}.{name}.weight", weights(N_EMBD, N_EMBD))
        writer.add_tensor(f"{blk}.ffn_norm.weight", ones(N_EMBD))
        writer.add_tensor(f"{blk}.ffn_gate.weight", weights(N_FF, N_EMBD))
        writer.add_tensor(f"{blk}.ffn_up.weight", weights(N_FF, N_EMBD))
        writer.add_tensor(f"{blk}.ffn_down.weight", weights(N_EMBD, N_FF))
    writer.add_tensor("output_norm.weight", ones(N_EMBD))
    writer.add_tensor("output.weight", weights(N_VOCAB, N_EMBD))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m workers.llamacpp.tinymodel PATH", file=sys.stderr)
        return 2
    print(write_tiny_model(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
