"""Models: what the registry offers, and what one simulator has installed and loaded."""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .wire import local_time


@dataclass(frozen=True)
class Spec:
    """One model family as the registry serves it."""

    family: str
    parameter_size: str
    size: int  # bytes on disk, all layers
    capabilities: tuple[str, ...]
    context_length: int
    embedding_length: int


_CHAT = ("completion", "tools")
REGISTRY: dict[str, Spec] = {  # base name -> spec; pull of anything else fails
    "llama3.2": Spec("llama", "3.2B", 2019393189, _CHAT, 131072, 3072),
    "qwen3": Spec("qwen3", "8.2B", 5225388164, (*_CHAT, "thinking"), 40960, 4096),
    "deepseek-r1": Spec(
        "qwen2", "7.6B", 4683075271, (*_CHAT, "thinking"), 131072, 3584
    ),
    "mistral": Spec("llama", "7.2B", 4372824384, _CHAT, 32768, 4096),
    "gemma3": Spec(
        "gemma3", "4.3B", 3338801804, ("completion", "vision"), 131072, 2560
    ),
    "nomic-embed-text": Spec(
        "nomic-bert", "137M", 274302450, ("embedding",), 2048, 768
    ),
    "all-minilm": Spec("bert", "23M", 45960996, ("embedding",), 512, 384),
}
_OTHER = Spec("llama", "7B", 4_000_000_000, _CHAT, 4096, 4096)
MODIFIED = 1_767_225_600.0  # a fixed date keeps /api/tags stable between runs
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
_NAME = re.compile(rf"(?:{_PART}/){{0,2}}{_PART}(?::{_PART})?")


def base(name: str) -> str:
    return name.rsplit("/", 1)[-1].partition(":")[0]


def canonical(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def full_name(name: str) -> str:
    """registry.ollama.ai/library/x:latest, as capability errors name a model."""
    parts = canonical(name).split("/")
    if len(parts) == 1:
        parts.insert(0, "library")
    if len(parts) == 2:
        parts.insert(0, "registry.ollama.ai")
    return "/".join(parts)


def valid(name: str) -> bool:
    """model.ParseName(name).IsValid(), near enough: [host/][ns/]model[:tag]."""
    return bool(_NAME.fullmatch(name))


def find(models: list[str], name: str) -> str | None:
    wanted = canonical(name).lower()  # Ollama matches names case-insensitively
    return next((m for m in models if canonical(m).lower() == wanted), None)


def digest(name: str, layer: str = "model") -> str:
    return hashlib.sha256(f"{canonical(name)}/{layer}".encode()).hexdigest()


@dataclass
class Installed:
    """A model the simulator got at run time (pull, create, copy)."""

    spec_of: str  # the base name whose Spec it shares
    modified: float = field(default_factory=time.time)
    system: str = ""


@dataclass
class Loaded:
    """A model in memory, as the scheduler keeps it (ollama-wire.md §11)."""

    keep_alive: float
    busy: int = 0
    idle_since: float | None = None  # None: never idle yet
    ready_at: float = 0.0  # monotonic; until then it is loading

    def expires(self, now: float) -> float:
        if self.idle_since is None:
            return now + self.keep_alive
        return self.idle_since + self.keep_alive


def spec(name: str, installed: dict[str, Installed]) -> Spec:
    made = installed.get(canonical(name).lower())
    return REGISTRY.get(base(made.spec_of if made else name), _OTHER)


def modified(name: str, position: int, installed: dict[str, Installed]) -> float:
    made = installed.get(canonical(name).lower())
    # Later entries are older, so settings.models order is Ollama's newest-first.
    return made.modified if made else MODIFIED - position * 86400


def layers(name: str, s: Spec) -> list[tuple[str, int]]:
    """The manifest's layers (digest, size) in pull order: the config comes last."""
    small = {"template": 1429, "license": 7711, "params": 96, "config": 561}
    weights = s.size - sum(small.values())
    sizes = {"model": weights, **small}
    return [(digest(name, kind), size) for kind, size in sizes.items()]


def details(s: Spec) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": s.family,
        "families": [s.family],
        "parameter_size": s.parameter_size,
        "quantization_level": "F16" if "embedding" in s.capabilities else "Q4_K_M",
    }


def entry(name: str, s: Spec, modified_at: float | None = None) -> dict[str, Any]:
    """One item of /api/tags (with modified_at) or the start of one of /api/ps."""
    shown = canonical(name)
    item: dict[str, Any] = {"name": shown, "model": shown}
    if modified_at is not None:
        item["modified_at"] = local_time(modified_at)
    return item | {"size": s.size, "digest": digest(name), "details": details(s)}


def _parameters(s: Spec) -> int:
    count = round(float(s.parameter_size[:-1]) * 1e9)
    return count // 1000 if s.parameter_size.endswith("M") else count


def _shape(s: Spec) -> dict[str, int]:
    """A transformer's sizes, derived from the spec near enough to the real ones
    (llama3.2's come out exact): /api/show's model_info and tensors need them."""
    width = s.embedding_length
    heads = max(1, width // 128)
    return {
        "head_count": heads,
        "head_count_kv": min(8, heads),
        "block_count": max(1, round(_parameters(s) / (12 * width * width))),
        "feed_forward_length": width * 8 // 3,
        "vocab_size": 128256,
    }


def model_info(s: Spec) -> dict[str, Any]:
    """The GGUF's metadata as /api/show lists it, keys sorted as Go writes a map.

    Arrays (the vocabulary) are null: without `verbose` Ollama reads none of
    them, and the simulator has none to show with it. The name and the chat
    template are left out, as Ollama leaves them out.
    """
    arch, shape = s.family, _shape(s)
    info: dict[str, Any] = {
        "general.architecture": arch,
        "general.file_type": 1 if "embedding" in s.capabilities else 15,
        "general.parameter_count": _parameters(s),
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.bos_token_id": 128000,
        "tokenizer.ggml.eos_token_id": 128009,
        "tokenizer.ggml.merges": None,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.token_type": None,
        "tokenizer.ggml.tokens": None,
    }
    for key, value in {
        "attention.head_count": shape["head_count"],
        "attention.head_count_kv": shape["head_count_kv"],
        "attention.layer_norm_rms_epsilon": 1e-05,
        "block_count": shape["block_count"],
        "context_length": s.context_length,
        "embedding_length": s.embedding_length,
        "feed_forward_length": shape["feed_forward_length"],
        "rope.dimension_count": s.embedding_length // shape["head_count"],
        "vocab_size": shape["vocab_size"],
    }.items():
        info[f"{arch}.{key}"] = value
    return dict(sorted(info.items()))


def tensors(s: Spec) -> list[dict[str, Any]]:
    """The weights' names, types and shapes (GGUF order: the fastest dimension
    first), as /api/show lists them for a GGUF model, verbose or not."""
    shape, width = _shape(s), s.embedding_length
    ffn = shape["feed_forward_length"]
    kv = width // shape["head_count"] * shape["head_count_kv"]
    weight = "F16" if "embedding" in s.capabilities else "Q4_K"

    def tensor(name: str, *dims: int) -> dict[str, Any]:
        kind = "F32" if len(dims) == 1 else weight
        return {"name": name, "type": kind, "shape": list(dims)}

    out = [tensor("token_embd.weight", width, shape["vocab_size"])]
    for i in range(shape["block_count"]):
        out += [
            tensor(f"blk.{i}.attn_norm.weight", width),
            tensor(f"blk.{i}.attn_q.weight", width, width),
            tensor(f"blk.{i}.attn_k.weight", width, kv),
            tensor(f"blk.{i}.attn_v.weight", width, kv),
            tensor(f"blk.{i}.attn_output.weight", width, width),
            tensor(f"blk.{i}.ffn_norm.weight", width),
            tensor(f"blk.{i}.ffn_gate.weight", width, ffn),
            tensor(f"blk.{i}.ffn_up.weight", width, ffn),
            tensor(f"blk.{i}.ffn_down.weight", ffn, width),
        ]
    return [*out, tensor("output_norm.weight", width)]


def show(name: str, s: Spec, modified_at: float, system: str) -> dict[str, Any]:
    modelfile = f'# Modelfile generated by "ollama show"\nFROM {canonical(name)}\n'
    reply: dict[str, Any] = {
        "modelfile": modelfile,
        "parameters": 'stop                           "<|eot_id|>"',
        "template": "{{ .Prompt }}",
    }
    if system:
        reply["system"] = system
    return reply | {
        "details": details(s),
        "model_info": model_info(s),
        "tensors": tensors(s),
        "capabilities": list(s.capabilities),
        "modified_at": local_time(modified_at),
    }


def ps_entry(name: str, s: Spec, expires_at: float) -> dict[str, Any]:
    item = entry(name, s)
    item["expires_at"] = local_time(expires_at)
    item["size_vram"] = item["size"]
    item["context_length"] = min(s.context_length, 4096)
    return item
