"""What the simulated model says: reply text, chunk bytes, final stats, embeddings."""

from __future__ import annotations

import functools
import hashlib
import math
import random
import re
import string
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any

from .wire import go_json, go_timestamp

_CORPUS = (
    "Hello! I'm a simulated assistant. I can't run a real model, but I stream words "
    "at a steady pace so you can watch how a reply arrives.",
    "Here are three things to check when a stream stalls:\n\n"
    "1. **Buffering** in a proxy between you and the server.\n"
    "2. **Timeouts** shorter than the time to the first token.\n"
    "3. **Compression**, which holds bytes back until a block fills.",
    "A small Python example:\n\n```python\ndef greet(name: str) -> str:\n"
    '    return f"Hello, {name}!"\n\n\nprint(greet("world"))\n```\n\n'
    "Call `greet()` with any name you like.",
    "Streaming sends each token as soon as it is ready. The client reads one JSON "
    'object per line, and the last line carries `"done": true` with timings.',
    "Short answer: yes. Long answer: it depends on the context window, the length "
    "of the prompt & how many requests share the model at the same time.",
    "Some markdown for the renderer:\n\n- *emphasis* and **strong** text\n"
    "- a [link](https://ollama.com)\n- inline code such as `x < y && y > z`\n\n"
    "> Quotes work too.",
)
_THOUGHT = "Okay, the user wants an answer. Let me keep it short and clear, then reply."
WORDS = re.compile(r"\s*\S+|\s+$")
_ALNUM = string.ascii_lowercase + string.digits


@dataclass
class Reply:
    thinking: list[str]
    content: list[str]
    tool_calls: list[dict[str, Any]]
    done_reason: str
    prompt_tokens: int
    context: bool  # generate without raw returns token ids

    @property
    def lines(self) -> int:
        return len(self.thinking) + len(self.content) + bool(self.tool_calls)


def _last_user_text(body: dict[str, Any], chat: bool) -> str:
    if not chat:
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else ""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    users = [m for m in messages if str(m.get("role", "")).lower() == "user"]
    last = (users or messages or [{}])[-1].get("content")
    return last if isinstance(last, str) else ""


def compose(
    body: dict[str, Any], chat: bool, chunks: int | None, thinking: bool
) -> Reply:
    text = _last_user_text(body, chat)
    if "[echo]" in text:
        pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
    else:
        seed = zlib.crc32(text.encode("utf-8", "surrogatepass"))
        pieces = WORDS.findall(_CORPUS[seed % len(_CORPUS)])
    if chunks is not None:
        pieces = [pieces[i % len(pieces)] for i in range(chunks)]
    options = body.get("options")
    limit = options.get("num_predict") if isinstance(options, dict) else None
    reason = "stop"
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit:
        if limit < len(pieces):
            pieces, reason = pieces[:limit], "length"
    tools = body.get("tools") if chat else None
    calls = []
    if isinstance(tools, list) and tools and isinstance(tools[0], dict):
        function = tools[0].get("function")
        name = function.get("name") if isinstance(function, dict) else None
        call_id = "call_" + "".join(random.choices(_ALNUM, k=8))
        function_call = {"index": 0, "name": str(name or ""), "arguments": {}}
        calls.append({"id": call_id, "function": function_call})
    words = sum(
        len(WORDS.findall(m["content"]))
        for m in body.get("messages") or []
        if isinstance(m, dict) and isinstance(m.get("content"), str)
    )
    return Reply(
        thinking=WORDS.findall(_THOUGHT) if thinking else [],
        content=pieces,
        tool_calls=calls,
        done_reason=reason,
        prompt_tokens=10 + (words if chat else len(WORDS.findall(text))),
        context=not chat and not body.get("raw"),
    )


# --- chunk bytes --------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def prefix(model: str) -> bytes:
    return b'{"model":' + go_json(model) + b',"created_at":"'


@functools.lru_cache(maxsize=8192)
def tail(chat: bool, piece: str, thinking: bool) -> bytes:
    """Everything after created_at for one line; cached, as pieces repeat."""
    rest: dict[str, Any]
    if chat:
        message = {"role": "assistant", "content": "" if thinking else piece}
        if thinking:
            message["thinking"] = piece
        rest = {"message": message, "done": False}
    else:
        rest = {"response": "" if thinking else piece}
        if thinking:
            rest["thinking"] = piece
        rest["done"] = False
    return b'",' + go_json(rest)[1:] + b"\n"


def tool_tail(calls: list[dict[str, Any]]) -> bytes:
    message = {"role": "assistant", "content": "", "tool_calls": calls}
    return b'",' + go_json({"message": message, "done": False})[1:] + b"\n"


def ns(seconds: float) -> int:
    return max(1, int(seconds * 1e9))


def final(
    model: str,
    chat: bool,
    reply: Reply,
    times: tuple[float, float, float, float],
    whole: bool,
) -> dict[str, Any]:
    """The done line, or with whole=True the single stream:false object.

    times: when the handler started, got its runner, got a slot, sent a first token.
    """
    started, loaded, slotted, first = times
    now = time.monotonic()
    content = "".join(reply.content) if whole else ""
    thought = "".join(reply.thinking) if whole else ""
    obj: dict[str, Any] = {"model": model, "created_at": go_timestamp(time.time_ns())}
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thought:
            message["thinking"] = thought
        if whole and reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        obj["message"] = message
    else:
        obj["response"] = content
        if thought:
            obj["thinking"] = thought
    obj["done"] = True
    obj["done_reason"] = reply.done_reason
    generated = len(reply.thinking) + len(reply.content)
    if reply.context:
        tokens = reply.prompt_tokens + generated
        obj["context"] = [(i * 7919 + 128000) % 128256 for i in range(tokens)]
    metrics = {
        "total_duration": ns(now - started),
        # A few ms with the model warm; time queued for a slot is not in it.
        "load_duration": ns((loaded - started) + 0.002),
        "prompt_eval_count": reply.prompt_tokens,
        "prompt_eval_duration": ns(first - slotted),
        "eval_count": generated,
        "eval_duration": ns(now - first),
    }
    obj.update((k, v) for k, v in metrics.items() if v)  # Go omits zero metrics
    return obj


def load_reply(model: str, chat: bool, reason: str) -> dict[str, Any]:
    obj: dict[str, Any] = {"model": model, "created_at": go_timestamp(time.time_ns())}
    if chat:
        obj["message"] = {"role": "assistant", "content": ""}
    else:
        obj["response"] = ""
    obj.update(done=True, done_reason=reason)
    return obj


# --- embeddings ---------------------------------------------------------------------


def _float32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


def _short32(value: float) -> float:
    """The float32 as Go prints it: the fewest digits that read back the same."""
    for digits in range(6, 10):
        short = float(f"{value:.{digits}g}")
        if _float32(short) == value:
            return short
    return value


def vector(model: str, text: str, size: int) -> list[float]:
    """The model's raw float32 vector for a text: the same text, the same vector."""
    seed = hashlib.sha256(f"{model}\x00{text}".encode("utf-8", "surrogatepass"))
    rng = random.Random(seed.digest())
    # Kept off zero so no value prints in exponent form, where Go and Python differ.
    return [
        _float32(math.copysign(max(abs(g), 0.01), g))
        for g in (rng.gauss(0, 1) for _ in range(size))
    ]


def normalized(values: list[float], dimensions: int | None = None) -> list[float]:
    """L2-normalised float32s, cut to dimensions first, as /api/embed returns them."""
    if dimensions and 0 < dimensions < len(values):
        values = values[:dimensions]
    norm = 1.0 / max(math.sqrt(sum(v * v for v in values)), 1e-12)
    return [_short32(_float32(v * norm)) for v in values]


def tokens(text: str) -> int:
    """Roughly how many tokens a text is: one per word piece, at least one."""
    return max(1, len(WORDS.findall(text)))
