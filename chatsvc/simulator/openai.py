"""Ollama's /v1 layer: OpenAI bodies in, native bodies through, OpenAI bytes out (§10).

Like Ollama's middleware (middleware/openai.go), each route is a request
translation and a writer that re-encodes whatever the native handler writes,
one native line at a time. That is how the quirks arise on their own: a native
mid-stream {"error"} line decodes as an empty chat response and goes out as an
ordinary chunk with "model":"", and no finish chunk or [DONE] follows.
"""

from __future__ import annotations

import base64
import calendar
import random
import re
import struct
import time
from datetime import datetime
from typing import Any

from .wire import Reject, bind, go_json

_TYPES = {400: "invalid_request_error", 404: "not_found_error"}
_EFFORTS = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}
DONE = b"data: [DONE]\n\n"


def error(status: int, message: str) -> dict[str, Any]:
    kind = _TYPES.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def bind_body(raw: bytes, struct_name: str) -> dict[str, Any]:
    try:
        return bind(raw, struct_name)
    except Reject as err:  # the middleware does not special-case io.EOF
        if err.message == "missing request body":
            raise Reject(400, "EOF") from None
        raise


def unix(created_at: Any) -> int:
    """Go's time.Unix() of a created_at or modified_at; now for a zero time."""
    if not isinstance(created_at, str) or not created_at:
        return int(time.time())
    if created_at.endswith("Z"):
        stamp = created_at[:-1].partition(".")[0]
        return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
    return int(datetime.fromisoformat(created_at).timestamp())


def go_float(value: Any) -> Any:
    """Go writes a whole float64 without a fraction: 1, not 1.0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _owner(name: str) -> str:
    """model.ParseName(name).Namespace: "library" unless the name says otherwise."""
    parts = name.partition(":")[0].split("/")
    return parts[-2] if len(parts) > 1 else "library"


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    stop = body.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        options["stop"] = [s for s in stop if isinstance(s, str)]
    if body.get("max_tokens") is not None:
        options["num_predict"] = body["max_tokens"]
    # A missing temperature or top_p is sent as 1.0, over the Modelfile's value.
    options["temperature"] = body.get("temperature", 1.0)
    if body.get("seed") is not None:
        options["seed"] = body["seed"]
    options["top_p"] = body.get("top_p") or 1.0
    return options


def think_of(effort: Any) -> Any:
    if not effort:
        return None
    if effort not in _EFFORTS:
        allowed = (
            '"minimal", "low", "medium", "high", "xhigh", "ultra", "max", or "none"'
        )
        raise Reject(
            400,
            f"invalid reasoning value: {go_json(effort).decode()} (must be {allowed})",
        )
    return _EFFORTS[effort]


_IMAGE = re.compile(r"data:(?:image/(?:jpeg|jpg|png|webp))?;base64,(.*)", re.S)


def _image(given: Any) -> str:
    """decodeImageURL: base64 data URIs only; the base64 Ollama takes natively."""
    url = given.get("url") if isinstance(given, dict) else given
    if not isinstance(url, str):
        raise Reject(400, "invalid message format")
    if url.startswith(("http://", "https://")):
        message = (
            "image URLs are not currently supported, "
            "please use base64 encoded data instead"
        )
        raise Reject(400, message)
    found = _IMAGE.fullmatch(url)
    try:
        if found is None:
            raise ValueError(url)
        base64.b64decode(found.group(1), validate=True)
    except ValueError:
        raise Reject(400, "invalid image input") from None
    return found.group(1)


def _go_type(value: Any) -> str:
    """Go's %T of a JSON value decoded into `any`."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "float64"
    return "map[string]interface {}"  # lists and strings were handled already


def _messages(messages: list[Any]) -> list[dict[str, Any]]:
    native = []
    for msg in messages:
        if not isinstance(msg, dict):
            raise Reject(400, "invalid message format")
        role, content = msg.get("role", ""), msg.get("content")
        if isinstance(content, str):
            native.append({"role": role, "content": content})
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    native.append({"role": role, "content": part["text"]})
                elif kind == "image_url":
                    image = _image(part.get("image_url"))
                    native.append({"role": role, "content": "", "images": [image]})
                else:
                    raise Reject(400, "invalid message format")
        elif msg.get("tool_calls") is None:
            raise Reject(400, f"invalid message content type: {_go_type(content)}")
        else:
            native.append({"role": role, "content": ""})
    return native


# --- writers ------------------------------------------------------------------------


class Writer:
    """Re-encodes what a native handler writes with status 200 (a *Writer in Go).

    encode() gives what one native write becomes, as the pieces flushed one by one.
    """

    stream = False
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def content_type(self) -> str:
        return "text/event-stream" if self.stream else "application/json"

    def encode(self, native: dict[str, Any]) -> list[bytes]:
        raise NotImplementedError


def _sse(obj: Any) -> bytes:
    return b"data: " + go_json(obj) + b"\n\n"


def json_line(obj: Any) -> list[bytes]:
    return [go_json(obj) + b"\n"]  # json.NewEncoder adds the newline


def _reason(native: dict[str, Any]) -> str | None:
    return native.get("done_reason") or None


def tool_calls_of(calls: Any) -> list[dict[str, Any]]:
    out = []
    for call in calls or []:
        function = call.get("function") or {}
        out.append(
            {
                "id": call.get("id", ""),
                "index": function.get("index", 0),
                "type": "function",
                "function": {
                    "name": function.get("name", ""),
                    "arguments": go_json(function.get("arguments")).decode(),
                },
            }
        )
    return out


def _usage(native: dict[str, Any]) -> dict[str, int]:
    prompt, done = native.get("prompt_eval_count", 0), native.get("eval_count", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": done,
        "total_tokens": prompt + done,
    }


class ChatWriter(Writer):
    def __init__(self, stream: bool, include_usage: bool) -> None:
        self.stream = stream
        self.include_usage = include_usage
        self.id = f"chatcmpl-{random.randrange(999)}"
        self.tool_call_sent = False

    def encode(self, native: dict[str, Any]) -> list[bytes]:
        model = native.get("model", "")
        message = native.get("message") or {}
        content, thinking = message.get("content", ""), message.get("thinking", "")
        calls = tool_calls_of(message.get("tool_calls"))
        if not self.stream:
            reply: dict[str, Any] = {
                "role": message.get("role", ""),
                "content": content,
            }
            if thinking:
                reply["reasoning"] = thinking
            if calls:
                reply["tool_calls"] = calls
            return json_line(
                {
                    "id": self.id,
                    "object": "chat.completion",
                    "created": unix(native.get("created_at")),
                    "model": model,
                    "system_fingerprint": "fp_ollama",
                    "choices": [
                        {
                            "index": 0,
                            "message": reply,
                            # A tool call overrides any reason, or none.
                            "finish_reason": "tool_calls" if calls else _reason(native),
                        }
                    ],
                    "usage": _usage(native),
                }
            )
        # ToChunk: one chunk per native line, each with the role and the content
        # (even ""), the done line's chunk with its finish_reason; created is now.
        delta: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            delta["reasoning"] = thinking
        if calls:
            delta["tool_calls"] = calls
        reason = _reason(native)
        if reason and (self.tool_call_sent or calls):
            reason = "tool_calls"
        self.tool_call_sent = self.tool_call_sent or bool(calls)
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
        }
        out = _sse(chunk)
        if native.get("done"):
            if self.include_usage:
                out += _sse(chunk | {"choices": [], "usage": _usage(native)})
            out += DONE
        return [out]


class CompleteWriter(Writer):
    def __init__(self, stream: bool, include_usage: bool) -> None:
        self.stream = stream
        self.include_usage = include_usage
        self.id = f"cmpl-{random.randrange(999)}"

    def encode(self, native: dict[str, Any]) -> list[bytes]:
        choice = {
            "text": native.get("response", ""),
            "index": 0,
            "finish_reason": _reason(native),
        }
        model = native.get("model", "")
        if not self.stream:
            return json_line(
                {
                    "id": self.id,
                    "object": "text_completion",
                    "created": unix(native.get("created_at")),
                    "model": model,
                    "system_fingerprint": "fp_ollama",
                    "choices": [choice],
                    "usage": _usage(native),
                }
            )
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": int(time.time()),
            "choices": [choice],
            "model": model,
            "system_fingerprint": "fp_ollama",
        }
        if self.include_usage:
            chunk["usage"] = {
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "total_tokens": 0,
            }
        out = _sse(chunk)
        if native.get("done"):
            if self.include_usage:
                out += _sse(chunk | {"choices": [], "usage": _usage(native)})
            out += DONE
        return [out]


class EmbedWriter(Writer):
    def __init__(self, model: str, encoding_format: str) -> None:
        self.model = model
        self.base64 = encoding_format.lower() == "base64"

    def encode(self, native: dict[str, Any]) -> list[bytes]:
        vectors = native.get("embeddings")
        if vectors is None:
            return json_line(
                {"object": "", "data": None, "model": "", "usage": _no_usage()}
            )
        data = [
            {"object": "embedding", "embedding": self._pack(v), "index": i}
            for i, v in enumerate(vectors)
        ]
        tokens = native.get("prompt_eval_count", 0)
        return json_line(
            {
                "object": "list",
                "data": data or None,
                "model": self.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def _pack(self, vector: list[float]) -> Any:
        if not self.base64:
            return vector
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _no_usage() -> dict[str, int]:
    return {"prompt_tokens": 0, "total_tokens": 0}


class ListWriter(Writer):
    def encode(self, native: dict[str, Any]) -> list[bytes]:
        data = [
            {
                "id": m.get("model") or m.get("name"),
                "object": "model",
                "created": unix(m.get("modified_at")),
                "owned_by": _owner(m.get("model") or m.get("name")),
            }
            for m in native.get("models") or []
        ]
        return json_line({"object": "list", "data": data or None})


class RetrieveWriter(Writer):
    def __init__(self, model: str) -> None:
        self.model = model

    def encode(self, native: dict[str, Any]) -> list[bytes]:
        return json_line(
            {
                "id": self.model,
                "object": "model",
                "created": unix(native.get("modified_at")),
                "owned_by": _owner(self.model),
            }
        )


# --- request translations: raw OpenAI body -> (native body, writer) ------------------


def chat(raw: bytes) -> tuple[dict[str, Any], Writer]:
    body = bind_body(raw, "ChatCompletionRequest")
    if not body.get("messages"):
        raise Reject(400, "[] is too short - 'messages'")
    native: dict[str, Any] = {
        "model": body.get("model", ""),
        "messages": _messages(body["messages"]),
        "options": _options(body),
        "stream": bool(body.get("stream")),
    }
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        native["format"] = "json"
    if body.get("tools"):
        native["tools"] = body["tools"]
    reasoning = body.get("reasoning")
    effort = (
        reasoning.get("effort")
        if isinstance(reasoning, dict)
        else body.get("reasoning_effort")
    )
    think = think_of(effort)
    if think is not None:
        native["think"] = think
    usage = (body.get("stream_options") or {}).get("include_usage") is True
    return native, ChatWriter(native["stream"], usage)


def completions(raw: bytes) -> tuple[dict[str, Any], Writer]:
    body = bind_body(raw, "CompletionRequest")
    options = _options(body) | {
        "frequency_penalty": body.get("frequency_penalty", 0),
        "presence_penalty": body.get("presence_penalty", 0),
    }
    native = {
        "model": body.get("model", ""),
        "prompt": body.get("prompt", ""),
        "options": options,
        "stream": bool(body.get("stream")),
    }
    if body.get("suffix"):
        native["suffix"] = body["suffix"]
    usage = (body.get("stream_options") or {}).get("include_usage") is True
    return native, CompleteWriter(native["stream"], usage)


def embeddings(raw: bytes) -> tuple[dict[str, Any], Writer]:
    body = bind_body(raw, "openai.EmbedRequest")
    fmt = body.get("encoding_format") or ""
    if fmt and fmt.lower() not in ("float", "base64"):
        message = (
            f"Invalid value for 'encoding_format' = {fmt}. "
            "Supported values: ['float', 'base64']."
        )
        raise Reject(400, message)
    given = body.get("input")
    if given == "":
        given = [""]
    if given is None or given == []:
        raise Reject(400, "invalid input")
    native = {"model": body.get("model", ""), "input": given}
    if body.get("dimensions"):
        native["dimensions"] = body["dimensions"]
    return native, EmbedWriter(str(body.get("model", "")), fmt)
