"""Pure stream framing: NDJSON, Server-Sent Events and plain text, and choosing one."""

from __future__ import annotations

import functools
import json
import time
from typing import TYPE_CHECKING, Any

from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

if TYPE_CHECKING:  # endpoints' checks raise errors, whose bodies are framed here
    from chatsvc.endpoints import Endpoint

FORMATS = ("ndjson", "sse", "text")

MEDIA_TYPES = {
    "ndjson": "application/x-ndjson",
    "sse": "text/event-stream",
    "text": "text/plain; charset=utf-8",
    "openai": "text/event-stream",
}

# Listed in order of preference, so "*/*" and a bare "application/json" (which the
# official clients send even when streaming) both pick NDJSON.
_ACCEPTED = {
    "application/x-ndjson": "ndjson",
    "application/json": "ndjson",
    "text/event-stream": "sse",
    "text/plain": "text",
}

# ensure_ascii escapes U+0085, U+2028 and U+2029, which httpx's line splitter (and
# so the official client) would otherwise treat as line breaks inside a value.
_json = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode

_RAW_BREAKS = (
    (b"\xc2\x85", b"\\u0085"),
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
)


def escape_line_breaks(line: bytes) -> bytes:
    """Escape raw U+0085/U+2028/U+2029 in one whole line of Ollama's JSON.

    Go writes U+0085 raw inside JSON strings, and httpx's line splitter (which the
    official clients use) breaks lines there. In JSON these bytes can only be
    inside strings, so a JSON escape is exact.
    """
    if b"\xc2\x85" in line or b"\xe2\x80\xa8" in line or b"\xe2\x80\xa9" in line:
        for raw, escaped in _RAW_BREAKS:
            line = line.replace(raw, escaped)
    return line


def _as_json(part: Any) -> bytes:
    """A chunk's JSON: Ollama's own bytes where it has them, escaped as above."""
    raw = getattr(part, "raw", None)
    if raw is None:
        return _json(part).encode("ascii")
    return escape_line_breaks(raw)


SSE_RETRY = b"retry: 3000\n\n"
SSE_PING = b": ping\n\n"


def negotiate(format_param: str | None, accept: str | None) -> str:
    """Pick the stream format from ?format= first, then the Accept header."""
    if format_param is not None:
        if format_param not in FORMATS:
            raise ValueError("format must be one of ndjson, sse or text")
        return format_param
    return _from_accept(accept) if accept else "ndjson"


# Clients send the same few Accept headers again and again, and werkzeug's parse
# costs 15-35 us of each request.
@functools.lru_cache(maxsize=256)
def _from_accept(accept: str) -> str:
    best = parse_accept_header(accept, MIMEAccept).best_match(list(_ACCEPTED))
    return _ACCEPTED[best] if best else "ndjson"


def go_timestamp(ns: int) -> str:
    """Go's RFC 3339 in UTC with nanoseconds, trailing zeros trimmed, as Ollama."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if fraction:
        stamp += "." + f"{fraction:09d}".rstrip("0")
    return stamp + "Z"


def ndjson_line(obj: Any) -> bytes:
    return (_json(obj) + "\n").encode("ascii")


# OpenAI's error types, as Ollama's /v1 middleware picks them.
_OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


def error_body(message: str, status: int = 500, openai: bool = False) -> bytes:
    """An error body: Ollama's {"error"} shape, or OpenAI's; no trailing newline."""
    error: Any = message
    if openai:
        kind = _OPENAI_TYPES.get(status, "api_error")
        error = {"message": message, "type": kind, "param": None, "code": None}
    return _json({"error": error}).encode("ascii")


class Framer:
    """Frames one response's upstream chunks; holds the little state a format needs.

    The format is one of FORMATS, or "openai" for the /v1 routes, whose upstream
    events go out as Ollama's /v1 layer wrote them.
    """

    def __init__(
        self, fmt: str, endpoint: Endpoint, after: int = 0, numbered: bool = False
    ) -> None:
        self.fmt = fmt
        self.endpoint = endpoint
        # A resumable stream's readers number events from where they resume, and
        # on /v1 too, so that EventSource's Last-Event-ID names the chunk.
        self._event_id = after
        self._numbered = numbered
        self._at_line_start = True
        self._last: Any = None

    def start(self) -> bytes:
        return SSE_RETRY if self.fmt == "sse" else b""

    def chunk(self, part: Any) -> bytes:
        if self.fmt == "ndjson":
            self._last = part
            return _as_json(part) + b"\n"
        if self.fmt == "openai":
            event = f"event: {part.event}\n" if part.event else ""
            if self._numbered:
                self._event_id += 1
                event = f"id: {self._event_id}\n{event}"
            return f"{event}data: {part.data}\n\n".encode()
        if self.fmt == "sse":
            self._event_id += 1
            event = "event: done\n" if self.endpoint.is_last(part) else ""
            head = f"id: {self._event_id}\n{event}data: ".encode()
            return head + _as_json(part) + b"\n\n"
        text = self.endpoint.text(part)
        if self.endpoint.is_last(part):
            text += "\n"
        if text:
            self._at_line_start = text.endswith("\n")
        return text.encode()

    def error(self, message: str) -> bytes:
        """The in-band error that ends a stream whose status is already 200."""
        if self.fmt == "ndjson":
            return ndjson_line({"error": message})
        if self.fmt == "openai":
            data = error_body(message, openai=True)
            return b"data: " + data + b"\n\ndata: [DONE]\n\n"
        if self.fmt == "sse":
            return b"event: error\ndata: " + error_body(message) + b"\n\n"
        # The error gets a line of its own, even after half a line of text.
        newline = "" if self._at_line_start else "\n"
        self._at_line_start = True
        return f"{newline}[error] {message}\n".encode()

    def heartbeat(self, model: str, now_ns: int) -> bytes:
        """Bytes that keep idle proxies from cutting the stream; none for text."""
        if self.fmt in ("sse", "openai"):
            return SSE_PING
        if self.fmt == "text":
            return b""
        # NDJSON has no comment syntax and the official client json-parses every
        # line, so the keep-alive is a valid chunk that changes nothing.
        created_at = go_timestamp(now_ns)
        return ndjson_line(self.endpoint.keepalive(model, created_at, self._last))
