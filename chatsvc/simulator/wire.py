"""Go and gin on the wire: JSON escaping, timestamps, body binding, durations."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Any


class Reject(Exception):
    """A request answered with a real status and {"error": message}, before any byte.

    ``ctype`` is gin's: c.JSON writes a charset, an error sent down a handler's
    channel before its first line is written as plain ``application/json``.
    """

    def __init__(
        self, status: int, message: str, ctype: str = "application/json; charset=utf-8"
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.ctype = ctype


class Gone(Exception):
    """The client hung up while a reply was being produced."""


# --- encoding ---------------------------------------------------------------------

_GO_ESCAPES = str.maketrans(
    {
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)
_SURROGATE = re.compile("[\ud800-\udfff]")


def go_json(obj: Any, sort_keys: bool = False) -> bytes:
    """Compact JSON escaped like Go's encoding/json (U+0085 stays raw).

    sort_keys: Go writes a map's keys sorted (a struct's in declaration order).
    """
    text = json.dumps(
        obj, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys
    )
    text = text.translate(_GO_ESCAPES)
    try:
        return text.encode()
    except UnicodeEncodeError:  # Go writes a lone surrogate as U+FFFD
        return _SURROGATE.sub("\ufffd", text).encode()


def go_timestamp(ns: int) -> str:
    """Go's RFC 3339 in UTC with nanoseconds, trailing zeros trimmed, as Ollama."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if fraction:
        stamp += "." + f"{fraction:09d}".rstrip("0")
    return stamp + "Z"


def local_time(epoch: float) -> str:
    """Server-local RFC 3339, as Ollama writes modified_at and expires_at."""
    dt = datetime.fromtimestamp(epoch).astimezone()
    digits = f"{dt.microsecond:06d}".rstrip("0")
    offset = dt.strftime("%z")
    offset = "Z" if offset == "+0000" else offset[:3] + ":" + offset[3:]
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + ("." + digits if digits else "") + offset


def loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


# --- gin's ShouldBindJSON ---------------------------------------------------------

_DECODER = json.JSONDecoder()
_GO_SYNTAX = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name": "looking for beginning of object key string",
    "Expecting ':'": "after object key",
    "Expecting ','": "after object key:value pair",
    "Invalid control": "in string literal",
    "Invalid \\escape": "in string escape code",
}
_STR, _BOOL, _INT, _OBJ = (str, "string"), (bool, "bool"), (int, "int"), (dict, "")
_MAP = (dict, "map[string]interface {}")
_F64, _F32 = (float, "float64"), (float, "float32")  # any JSON number fits
# Struct -> the fields whose Go type a wrong JSON kind trips over. Fields typed
# `any` in Go (input, keep_alive, format, think, stop) take every kind.
_FIELDS: dict[str, dict[str, tuple[type, str]]] = {
    "ChatRequest": {
        "model": _STR,
        "messages": (list, "[]api.Message"),
        "tools": (list, "api.Tools"),
        "options": _MAP,
        "stream": _BOOL,
        "top_logprobs": _INT,
    },
    "GenerateRequest": {
        "model": _STR,
        "prompt": _STR,
        "suffix": _STR,
        "system": _STR,
        "template": _STR,
        "context": (list, "[]int"),
        "raw": _BOOL,
        "options": _MAP,
        "stream": _BOOL,
        "top_logprobs": _INT,
    },
    "ShowRequest": {"model": _STR, "name": _STR, "verbose": _BOOL},
    "EmbedRequest": {
        "model": _STR,
        "truncate": _BOOL,
        "dimensions": _INT,
        "options": _MAP,
    },
    "EmbeddingRequest": {"model": _STR, "prompt": _STR, "options": _MAP},
    "PullRequest": {"model": _STR, "name": _STR, "insecure": _BOOL, "stream": _BOOL},
    "PushRequest": {"model": _STR, "name": _STR, "insecure": _BOOL, "stream": _BOOL},
    "CreateRequest": {
        "model": _STR,
        "name": _STR,
        "from": _STR,
        "files": (dict, "map[string]string"),
        "system": _STR,
        "template": _STR,
        "quantize": _STR,
        "stream": _BOOL,
    },
    "CopyRequest": {"source": _STR, "destination": _STR},
    "DeleteRequest": {"model": _STR, "name": _STR},
    # openai's structs, bound by the /v1 middleware.
    "ChatCompletionRequest": {
        "model": _STR,
        "messages": (list, "[]openai.Message"),
        "stream": _BOOL,
        "stream_options": (dict, "openai.StreamOptions"),
        "max_tokens": _INT,
        "seed": _INT,
        "temperature": _F64,
        "frequency_penalty": _F64,
        "presence_penalty": _F64,
        "top_p": _F64,
        "response_format": (dict, "openai.ResponseFormat"),
        "tools": (list, "[]api.Tool"),
        "reasoning": (dict, "openai.Reasoning"),
        "reasoning_effort": _STR,
        "logprobs": _BOOL,
        "top_logprobs": _INT,
    },
    "CompletionRequest": {
        "model": _STR,
        "prompt": _STR,
        "frequency_penalty": _F32,
        "max_tokens": _INT,
        "presence_penalty": _F32,
        "seed": _INT,
        "stream": _BOOL,
        "stream_options": (dict, "openai.StreamOptions"),
        "temperature": _F32,
        "top_p": _F32,
        "suffix": _STR,
        "logprobs": _INT,
    },
    "openai.EmbedRequest": {
        "model": _STR,
        "dimensions": _INT,
        "encoding_format": _STR,
    },
    "ResponsesRequest": {
        "model": _STR,
        "background": _BOOL,
        "include": (list, "[]string"),
        "instructions": _STR,
        "max_output_tokens": _INT,
        "reasoning": (dict, "openai.ResponsesReasoning"),
        "temperature": _F64,
        "text": (dict, "openai.ResponsesText"),
        "top_p": _F64,
        "truncation": _STR,
        "tools": (list, "[]openai.ResponsesTool"),
        "stream": _BOOL,
    },
}


def go_kind(value: Any) -> str:
    """The JSON kind encoding/json names in its errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _fits(value: Any, want: type) -> bool:
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if want is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, want)


def bind(raw: bytes, struct: str) -> dict[str, Any]:
    """Decode a body as gin's ShouldBindJSON would, with Go's error texts."""
    text = raw.decode("utf-8", "replace")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if start == len(text):
        raise Reject(400, "missing request body")
    try:
        # Go decodes only the first value and ignores whatever follows it.
        value, _ = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as err:
        raise Reject(400, _go_syntax_error(err)) from None
    if value is None:
        return {}
    go_struct = struct if "." in struct else f"api.{struct}"
    if not isinstance(value, dict):
        kind = go_kind(value)
        raise Reject(
            400, f"json: cannot unmarshal {kind} into Go value of type {go_struct}"
        )
    for name, (want, go_type) in _FIELDS[struct].items():
        got = value.get(name)
        if got is not None and not _fits(got, want):
            kind = go_kind(got)
            if want is int and isinstance(got, float):  # 1.5 into an int
                kind = f"number {json.dumps(got)}"
            raise Reject(
                400,
                f"json: cannot unmarshal {kind} into Go struct field "
                f"{struct.rpartition('.')[2]}.{name} of type {go_type}",
            )
    # A null leaves a Go field at its zero value, just as a missing key does.
    return {name: given for name, given in value.items() if given is not None}


def _go_syntax_error(err: json.JSONDecodeError) -> str:
    if not err.doc[err.pos :].strip() or err.msg.startswith("Unterminated"):
        return "unexpected EOF"
    # Python points at the backslash of a bad escape, Go at the character after.
    pos = err.pos + 1 if err.msg.startswith("Invalid \\escape") else err.pos
    char = err.doc[pos : pos + 1]
    where = next(
        (go for py, go in _GO_SYNTAX.items() if err.msg.startswith(py)),
        "looking for beginning of value",
    )
    return f"invalid character {char!r} {where}" if char else "unexpected EOF"


# --- api.Options.FromMap -----------------------------------------------------------

# The options Go's Options struct knows, by the kind of its field; others are
# ignored. Any JSON number fits an int or a float32 field (Go decodes it as float64).
_OPTION_KINDS = {
    **dict.fromkeys(
        (
            "num_keep",
            "seed",
            "num_predict",
            "top_k",
            "repeat_last_n",
            "num_ctx",
            "num_batch",
            "num_gpu",
            "main_gpu",
            "num_thread",
        ),
        "integer",
    ),  # fmt: skip
    **dict.fromkeys(
        (
            "top_p",
            "min_p",
            "typical_p",
            "temperature",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
        ),
        "float32",
    ),  # fmt: skip
    "use_mmap": "boolean",
    "stop": "array",
}


def option_error(options: Any) -> str | None:
    """Why FromMap refuses these options (a 500 in Ollama), or None.

    Go ranges over a map in random order; with several bad options this names the
    first one sent.
    """
    for key, value in (options or {}).items():
        kind = _OPTION_KINDS.get(key)
        if kind is None or value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind in ("integer", "float32"):
            fits = number
        elif kind == "boolean":
            fits = isinstance(value, bool)
        else:
            if not isinstance(value, list):
                return f'option "{key}" must be of type array'
            if not all(isinstance(v, str) for v in value):
                return f'option "{key}" must be of an array of strings'
            fits = True
        if not fits:
            return f'option "{key}" must be of type {kind}'
    return None


# --- api.Duration ------------------------------------------------------------------

_DURATION = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
FOREVER = 292 * 365.25 * 86400  # Go's largest time.Duration, about 292 years


def keep_alive(value: Any) -> float | None:
    """Seconds to keep the model loaded, or None when the request leaves it alone."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return FOREVER if value < 0 else float(value)
    text = value if isinstance(value, str) else ""
    unsigned = text.lstrip("+-")
    parts = _DURATION.findall(unsigned)
    spelled = "".join(n + u for n, u in parts)
    if text and unsigned.replace(".", "").isdigit() and unsigned != "0":
        raise Reject(400, f"time: missing unit in duration {json.dumps(text)}")
    if not text or (unsigned != "0" and spelled != unsigned):
        raise Reject(400, f"time: invalid duration {json.dumps(text)}")
    if text.startswith("-"):
        return FOREVER
    return sum(float(n) * _UNITS[u] for n, u in parts)
