"""A tiny llama GGUF with random weights and a byte-level vocabulary, for Ollama.

`python tests/conformance/tinymodel.py DIR` writes DIR/tiny.gguf and DIR/Modelfile;
`ollama create NAME -f DIR/Modelfile` registers it. The model is made at run time
(a few hundred KB) so no weights are committed or downloaded.

The weights are random, but shaped so that a test can rely on the output:
- the vocabulary is GPT-2's byte-level encoding of printable ASCII and newline, so
  every token is a whole UTF-8 character and Ollama never holds back or drops a
  partial one;
- every token embedding shares one constant component that the output layer turns
  into a large negative logit for end-of-sequence, so generation runs until
  `num_predict` (or a hang-up), which the cancellation and queueing tests need;
- the layers add little to the residual stream, so the next token depends mostly on
  the current one; the seed is chosen so that no token predicts itself, because
  Ollama ends a stream after 30 identical pieces in a row.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

EMBED = 64
HEADS = 4
LAYERS = 2
FFN = 128
CONTEXT = 4096
# Printable ASCII and newline: 96 characters, every one a whole UTF-8 character.
CHARS = [*range(0x20, 0x7F), 0x0A]
BOS, EOS = "<s>", "</s>"
# llama.cpp's BPE loader wants a merge list, so there is one merge and its token.
MERGES = ["t h"]


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (Ġ for space)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(0xA1, 0xAD),
        *range(0xAE, 0x100),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


TOKENS = [*(_byte_to_unicode()[b] for b in CHARS), "th", BOS, EOS]

# Ollama's template language; the roles are spelled out so the prompt is plain ASCII.
TEMPLATE = (
    "{{- if .System }}<|system|>{{ .System }}\n{{ end }}"
    "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}\n{{ end }}"
    "<|assistant|>"
)


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    vocab = len(TOKENS)

    def small(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    embed = rng.standard_normal((vocab, EMBED)).astype(np.float32) * 0.3
    embed[:, 0] = 1.0  # the shared component, always positive after the norm
    output = rng.standard_normal((vocab, EMBED)).astype(np.float32)
    output[:, 0] = 0.0
    for special in (TOKENS.index(BOS), TOKENS.index(EOS)):
        output[special] = 0.0
        output[special, 0] = -10.0  # never chosen: a stream ends only by length

    tensors: dict[str, np.ndarray] = {
        "token_embd.weight": embed,
        "output_norm.weight": np.ones(EMBED, np.float32),
        "output.weight": output,
    }
    for i in range(LAYERS):
        tensors |= {
            f"blk.{i}.attn_norm.weight": np.ones(EMBED, np.float32),
            f"blk.{i}.attn_q.weight": small(EMBED, EMBED),
            f"blk.{i}.attn_k.weight": small(EMBED, EMBED),
            f"blk.{i}.attn_v.weight": small(EMBED, EMBED),
            f"blk.{i}.attn_output.weight": small(EMBED, EMBED),
            f"blk.{i}.ffn_norm.weight": np.ones(EMBED, np.float32),
            f"blk.{i}.ffn_gate.weight": small(FFN, EMBED),
            f"blk.{i}.ffn_up.weight": small(FFN, EMBED),
            f"blk.{i}.ffn_down.weight": small(EMBED, FFN),
        }
    return tensors


def _greedy_next(tensors: dict[str, np.ndarray]) -> np.ndarray:
    """Each token's most likely successor, ignoring the layers' small additions."""
    h = tensors["token_embd.weight"]
    h = h / np.sqrt((h * h).mean(axis=1, keepdims=True) + 1e-5)
    return np.asarray((h @ tensors["output.weight"].T).argmax(axis=1))


def weights() -> dict[str, np.ndarray]:
    """The first seed whose greedy successor is never the token itself."""
    for seed in range(1000):
        tensors = _weights(seed)
        successor = _greedy_next(tensors)
        if not (successor == np.arange(len(successor))).any():
            return tensors
    raise RuntimeError("no seed without a self-loop")  # pragma: no cover


def write(folder: Path) -> Path:
    """Write tiny.gguf and its Modelfile into folder; return the Modelfile's path."""
    folder.mkdir(parents=True, exist_ok=True)
    types = [gguf.TokenType.NORMAL] * (len(TOKENS) - 2) + [gguf.TokenType.CONTROL] * 2

    writer = gguf.GGUFWriter(str(folder / "tiny.gguf"), "llama")
    writer.add_name("chatsvc conformance tiny")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(EMBED)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(EMBED // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(TOKENS))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(TOKENS)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(TOKENS.index(BOS))
    writer.add_eos_token_id(TOKENS.index(EOS))
    writer.add_add_bos_token(False)
    for name, array in weights().items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    modelfile = folder / "Modelfile"
    # One thread: ggml's threads spin at their barriers, and on a busy machine a
    # second thread turns 0.3 ms per token into over a second.
    modelfile.write_text(
        f'FROM ./tiny.gguf\nTEMPLATE """{TEMPLATE}"""\nPARAMETER num_thread 1\n'
    )
    return modelfile


if __name__ == "__main__":
    print(write(Path(sys.argv[1])))
