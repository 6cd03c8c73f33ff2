"""Ollama-compatible HTTP simulator: paced NDJSON streams, faults, hang-up records."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import random
import re
import select
import signal
import socket
import string
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any

from chatsvc.framing import go_timestamp

VERSION = "0.33.0"
FAULTS = (
    "error_before",  # real 500 before any byte
    "error_after",  # 200, K lines, an {"error"} line, clean end, no done line
    "drop_after",  # 200, K lines, then the connection is closed mid-body
    "cut_before_done",  # 200, every line but the done line, clean end
    "error_first_line",  # pre-0.12.6: 200 whose first line is {"error"}
)


@dataclass
class Settings:
    """Behaviour knobs, read once at the start of each request."""

    models: list[str] = field(default_factory=lambda: ["llama3.2", "qwen3"])
    first_token_delay: float = 0.4
    interval: float = 0.04
    chunks: int | None = None
    fault: str | None = None
    fault_after: int = 3
    fault_message: str = (
        "an error was encountered while running the model: unexpected EOF"
    )


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float


@dataclass(frozen=True)
class Hangup:
    path: str
    at: float
    chunks_sent: int


class _Reject(Exception):
    """A validation error answered with a real status before any byte."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Gone(Exception):
    """The client hung up while a reply was being produced."""


# --- Go-compatible encoding -------------------------------------------------------

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


def go_json(obj: Any) -> bytes:
    """Compact JSON escaped like Go's encoding/json (U+0085 stays raw)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    text = text.translate(_GO_ESCAPES)
    try:
        return text.encode()
    except UnicodeEncodeError:  # Go writes a lone surrogate as U+FFFD
        return _SURROGATE.sub("\ufffd", text).encode()


def _local_time(epoch: float) -> str:
    """Server-local RFC 3339, as Ollama writes modified_at and expires_at."""
    dt = datetime.fromtimestamp(epoch).astimezone()
    digits = f"{dt.microsecond:06d}".rstrip("0")
    offset = dt.strftime("%z")
    offset = "Z" if offset == "+0000" else offset[:3] + ":" + offset[3:]
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + ("." + digits if digits else "") + offset


_DECODER = json.JSONDecoder()
_GO_SYNTAX = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name": "looking for beginning of object key string",
    "Expecting ':'": "after object key",
    "Expecting ','": "after object key:value pair",
    "Invalid control": "in string literal",
    "Invalid \\escape": "in string escape code",
}
_FIELDS: dict[str, dict[str, tuple[type, str]]] = {
    "ChatRequest": {
        "model": (str, "string"),
        "messages": (list, "[]api.Message"),
        "tools": (list, "api.Tools"),
        "options": (dict, "map[string]interface {}"),
        "stream": (bool, "bool"),
    },
    "GenerateRequest": {
        "model": (str, "string"),
        "prompt": (str, "string"),
        "suffix": (str, "string"),
        "system": (str, "string"),
        "template": (str, "string"),
        "context": (list, "[]int"),
        "raw": (bool, "bool"),
        "options": (dict, "map[string]interface {}"),
        "stream": (bool, "bool"),
    },
    "ShowRequest": {
        "model": (str, "string"),
        "name": (str, "string"),
        "verbose": (bool, "bool"),
    },
}


def _go_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _bind(raw: bytes, struct: str) -> dict[str, Any]:
    """Decode a body as gin's ShouldBindJSON would, with Go's error texts."""
    text = raw.decode("utf-8", "replace")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if start == len(text):
        raise _Reject(400, "missing request body")
    try:
        # Go decodes only the first value and ignores whatever follows it.
        value, _ = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as err:
        raise _Reject(400, _go_syntax_error(err)) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        kind = _go_kind(value)
        raise _Reject(
            400, f"json: cannot unmarshal {kind} into Go value of type api.{struct}"
        )
    for name, (want, go_type) in _FIELDS[struct].items():
        got = value.get(name)
        if got is not None and not isinstance(got, want):
            raise _Reject(
                400,
                f"json: cannot unmarshal {_go_kind(got)} into Go struct field "
                f"{struct}.{name} of type {go_type}",
            )
    return value


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


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


_DURATION = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_FOREVER = 10.0**10


def _keep_alive(value: Any) -> float:
    """Seconds to keep the model loaded: a number of seconds or a Go duration."""
    if value is None:
        return 300.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _FOREVER if value < 0 else float(value)
    text = value if isinstance(value, str) else ""
    unsigned = text.lstrip("+-")
    parts = _DURATION.findall(unsigned)
    spelled = "".join(n + u for n, u in parts)
    if not text or (unsigned != "0" and spelled != unsigned):
        raise _Reject(400, f"time: invalid duration {json.dumps(text)}")
    if text.startswith("-"):
        return _FOREVER
    return sum(float(n) * _UNITS[u] for n, u in parts)


# --- models -----------------------------------------------------------------------

_CATALOG = {  # base name -> family, parameter size, bytes on disk
    "llama3.2": ("llama", "3.2B", 2019393189),
    "qwen3": ("qwen3", "8.2B", 5225388164),
}
_THINKING = frozenset({"qwen3", "deepseek-r1", "gpt-oss", "magistral"})
_MODIFIED = 1_767_225_600.0  # a fixed date keeps /api/tags stable between runs


def _base(name: str) -> str:
    return name.rsplit("/", 1)[-1].partition(":")[0]


def _canonical(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def _find(models: list[str], name: str) -> str | None:
    wanted = _canonical(name)
    return next((m for m in models if _canonical(m) == wanted), None)


def _thinks(name: str) -> bool:
    return _base(name) in _THINKING


def _model_entry(name: str, modified_at: str = "") -> dict[str, Any]:
    family, params, size = _CATALOG.get(_base(name), ("llama", "7B", 4_000_000_000))
    entry: dict[str, Any] = {"name": _canonical(name), "model": _canonical(name)}
    if modified_at:
        entry["modified_at"] = modified_at
    return entry | {
        "size": size,
        "digest": hashlib.sha256(_canonical(name).encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": params,
            "quantization_level": "Q4_K_M",
        },
    }


def _modified(position: int) -> str:
    # Later entries are older, so settings.models order is Ollama's newest-first.
    return _local_time(_MODIFIED - position * 86400)


def _show(name: str, position: int) -> dict[str, Any]:
    entry = _model_entry(name)
    details = entry["details"]
    parameters = round(float(details["parameter_size"][:-1]) * 1e9)
    capabilities = ["completion", "tools"] + (["thinking"] if _thinks(name) else [])
    return {
        "modelfile": f'# Modelfile generated by "ollama show"\nFROM {entry["name"]}\n',
        "parameters": 'stop                           "<|eot_id|>"',
        "template": "{{ .Prompt }}",
        "details": details,
        "model_info": {
            "general.architecture": details["family"],
            "general.file_type": 15,
            "general.parameter_count": parameters,
            f"{details['family']}.context_length": 131072,
        },
        "capabilities": capabilities,
        "modified_at": _modified(position),
    }


# --- replies ----------------------------------------------------------------------

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
_WORDS = re.compile(r"\s*\S+|\s+$")
_ALNUM = string.ascii_lowercase + string.digits


@dataclass
class _Reply:
    thinking: list[str]
    content: list[str]
    tool_calls: list[dict[str, Any]]
    done_reason: str
    prompt_tokens: int
    context: bool  # generate without raw returns token ids


def _last_user_text(body: dict[str, Any], chat: bool) -> str:
    if not chat:
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else ""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    users = [m for m in messages if str(m.get("role", "")).lower() == "user"]
    last = (users or messages or [{}])[-1].get("content")
    return last if isinstance(last, str) else ""


def _compose(
    body: dict[str, Any], chat: bool, settings: Settings, thinking: bool
) -> _Reply:
    text = _last_user_text(body, chat)
    if "[echo]" in text:
        pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
    else:
        seed = zlib.crc32(text.encode("utf-8", "surrogatepass"))
        pieces = _WORDS.findall(_CORPUS[seed % len(_CORPUS)])
    if settings.chunks is not None:
        pieces = [pieces[i % len(pieces)] for i in range(settings.chunks)]
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
        len(_WORDS.findall(m["content"]))
        for m in body.get("messages") or []
        if isinstance(m, dict) and isinstance(m.get("content"), str)
    )
    return _Reply(
        thinking=_WORDS.findall(_THOUGHT) if thinking else [],
        content=pieces,
        tool_calls=calls,
        done_reason=reason,
        prompt_tokens=10 + (words if chat else len(_WORDS.findall(text))),
        context=not chat and not body.get("raw"),
    )


@functools.lru_cache(maxsize=64)
def _prefix(model: str) -> bytes:
    return b'{"model":' + go_json(model) + b',"created_at":"'


@functools.lru_cache(maxsize=8192)
def _tail(chat: bool, piece: str, thinking: bool) -> bytes:
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


def _tool_tail(calls: list[dict[str, Any]]) -> bytes:
    message = {"role": "assistant", "content": "", "tool_calls": calls}
    return b'",' + go_json({"message": message, "done": False})[1:] + b"\n"


def _ns(seconds: float) -> int:
    return max(1, int(seconds * 1e9))


def _final(
    model: str, chat: bool, reply: _Reply, times: tuple[float, float], whole: bool
) -> dict[str, Any]:
    """The done line, or with whole=True the single stream:false object."""
    started, first = times
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
        "total_duration": _ns(now - started),
        "load_duration": _ns((first - started) * 0.25),
        "prompt_eval_count": reply.prompt_tokens,
        "prompt_eval_duration": _ns((first - started) * 0.75),
        "eval_count": generated,
        "eval_duration": _ns(now - first),
    }
    obj.update((k, v) for k, v in metrics.items() if v)  # Go omits zero metrics
    return obj


def _load_reply(model: str, chat: bool, reason: str) -> dict[str, Any]:
    obj: dict[str, Any] = {"model": model, "created_at": go_timestamp(time.time_ns())}
    if chat:
        obj["message"] = {"role": "assistant", "content": ""}
    else:
        obj["response"] = ""
    obj.update(done=True, done_reason=reason)
    return obj


# --- HTTP -------------------------------------------------------------------------


def _readable(sock: socket.socket, timeout: float) -> bool:
    # poll has no FD_SETSIZE limit, which matters with hundreds of streams
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    return bool(select.select([sock], [], [], timeout)[0])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        self.sim = sim
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        TCPServer.server_bind(self)  # skips HTTPServer's reverse DNS lookup
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients leaving is routine
            super().handle_error(request, client_address)

    def drop_all(self) -> None:
        with self.conns_lock:
            conns = list(self.conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    _sent = 0
    _started = 0.0

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests and benchmarks read the records instead."""

    def setup(self) -> None:
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self) -> None:
        with self.server.conns_lock:
            self.server.conns.discard(self.connection)
        super().finish()

    # -- plumbing

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
        except OSError:
            raise _Gone from None

    def _wait(self, deadline: float) -> None:
        """Sleep until deadline, raising _Gone as soon as the client leaves."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not _readable(self.connection, remaining):
            return
        try:
            gone = self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            gone = True
        if gone:
            raise _Gone
        # Pipelined bytes keep the socket readable; nothing more to learn here.
        time.sleep(max(0.0, deadline - time.monotonic()))

    def _frame(self, data: bytes) -> bytes:
        if self.request_version == "HTTP/1.1":
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data

    def _end(self) -> bytes:
        return b"0\r\n\r\n" if self.request_version == "HTTP/1.1" else b""

    def _head(
        self, status: int, ctype: str, length: int | None, allow: str = ""
    ) -> bytes:
        reason = self.responses.get(status, ("",))[0]
        lines = [
            f"HTTP/1.1 {status} {reason}",
            f"Content-Type: {ctype}",
            f"Date: {self.date_time_string()}",
        ]
        if allow:
            lines.append(f"Allow: {allow}")
        if length is not None:
            lines.append(f"Content-Length: {length}")
        elif self.request_version == "HTTP/1.1":
            lines.append("Transfer-Encoding: chunked")
        else:
            self.close_connection = True  # HTTP/1.0 bodies end at close
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _reply(
        self,
        status: int,
        body: bytes,
        ctype: str,
        allow: str = "",
        chunked: bool = False,
    ) -> None:
        head = self._head(status, ctype, None if chunked else len(body), allow)
        if self.command == "HEAD":
            body = b""
        elif chunked:
            body = self._frame(body) + self._end()
        self._write(head + body)

    def _json(self, status: int, obj: Any) -> None:
        self._reply(status, go_json(obj), "application/json; charset=utf-8")

    def _drop(self) -> None:
        """Close mid-body with a FIN, so the client has read what was sent."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    # -- routing

    def _dispatch(self) -> None:
        self._started = time.monotonic()
        sim = self.server.sim
        path = self.path.partition("?")[0]
        try:
            raw = self._read_body()
        except ValueError:
            self.close_connection = True
            self._reply(400, b"400 Bad Request", "text/plain; charset=utf-8")
            return
        if not path.startswith("/_sim/"):
            headers = {k.lower(): v for k, v in self.headers.items()}
            record = RequestRecord(
                self.command, path, headers, _loads(raw), self._started
            )
            with sim._cond:
                sim.requests.append(record)
        methods, action = _ROUTES.get(path, ((), ""))
        try:
            if not action:
                self._reply(404, b"404 page not found", "text/plain")
            elif self.command not in methods:
                allow = ", ".join(methods)
                self._reply(405, b"405 method not allowed", "text/plain", allow)
            else:
                try:
                    getattr(self, action)(raw, path)
                except _Reject as err:
                    self._json(err.status, {"error": err.message})
        except _Gone:
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch

    def _root(self, raw: bytes, path: str) -> None:
        self._reply(200, b"Ollama is running", "text/plain; charset=utf-8")

    def _version(self, raw: bytes, path: str) -> None:
        self._json(200, {"version": VERSION})

    def _list(self, raw: bytes, path: str) -> None:
        models = list(self.server.sim.settings.models)
        listed = [_model_entry(m, _modified(i)) for i, m in enumerate(models)]
        self._json(200, {"models": listed})

    def _ps(self, raw: bytes, path: str) -> None:
        self._json(200, {"models": self.server.sim._running()})

    def _show(self, raw: bytes, path: str) -> None:
        body = _bind(raw, "ShowRequest")
        name = body.get("model") or body.get("name") or ""
        if not name:
            raise _Reject(400, "model is required")
        models = list(self.server.sim.settings.models)
        found = _find(models, name)
        if found is None:
            raise _Reject(404, f"model '{_canonical(name)}' not found")
        self._json(200, _show(found, models.index(found)))

    def _stats(self, raw: bytes, path: str) -> None:
        self._json(200, self.server.sim.stats())

    def _settings(self, raw: bytes, path: str) -> None:
        changes = _loads(raw)
        if not isinstance(changes, dict):
            raise _Reject(400, "settings must be a JSON object")
        self._json(200, self.server.sim._configure(changes))

    def _reset(self, raw: bytes, path: str) -> None:
        self.server.sim.reset()
        self._json(200, dataclasses.asdict(self.server.sim.settings))

    # -- generation

    def _generation(self, raw: bytes, path: str) -> None:
        sim = self.server.sim
        settings = sim._snapshot()
        chat = path == "/api/chat"
        body = _bind(raw, "ChatRequest" if chat else "GenerateRequest")
        model = body.get("model") or ""
        if chat and not model:
            raise _Reject(400, "model is required")
        if _find(settings.models, model) is None:
            raise _Reject(404, f"model '{model}' not found")
        if not chat and body.get("raw"):
            if body.get("template") or body.get("system") or body.get("context"):
                msg = "raw mode does not support template, system, or context"
                raise _Reject(400, msg)
        keep = _keep_alive(body.get("keep_alive"))
        load_only = not body.get("messages" if chat else "prompt")
        if load_only and keep == 0:
            sim._touch(model, 0)
            self._json(200, _load_reply(model, chat, "unload"))
            return
        think = body.get("think")
        if think not in (None, True, False, "low", "medium", "high", "max"):
            raise _Reject(400, f"invalid think value: {json.dumps(think)}")
        if think not in (None, False) and not _thinks(model):
            raise _Reject(400, f'"{model}" does not support thinking')
        sim._touch(model, keep)
        if load_only:
            self._json(200, _load_reply(model, chat, "load"))
            return
        reply = _compose(body, chat, settings, _thinks(model) and think is not False)
        self._sent = 0
        with sim._stream_open():
            try:
                if body.get("stream") is False:
                    self._whole(model, chat, reply, settings)
                else:
                    self._stream(model, chat, reply, settings)
            except _Gone:
                self.close_connection = True
                sim._hung_up(path, self._sent)

    def _stream(self, model: str, chat: bool, reply: _Reply, s: Settings) -> None:
        # Lazy, so a huge `chunks` costs nothing before the first line.
        tails: Iterator[bytes] = itertools.chain(
            (_tail(chat, p, True) for p in reply.thinking),
            (_tail(chat, p, False) for p in reply.content),
            [_tool_tail(reply.tool_calls)] if reply.tool_calls else [],
        )
        if s.fault in ("error_after", "drop_after"):
            tails = itertools.islice(tails, s.fault_after)
        elif s.fault == "error_first_line":
            tails = iter(())
        self._wait(self._started + s.first_token_delay)
        if s.fault == "error_before":
            error = go_json({"error": s.fault_message})
            self._reply(500, error, "application/json", chunked=True)
            return
        # Status and headers leave with the first line, as Ollama's do.
        pending = self._head(200, "application/x-ndjson", None)
        first = time.monotonic()
        prefix = _prefix(model)
        for tail in tails:
            if self._sent:
                self._wait(time.monotonic() + s.interval)
            line = prefix + go_timestamp(time.time_ns()).encode() + tail
            self._write(pending + self._frame(line))
            pending = b""
            self._sent += 1
        if self._sent:
            self._wait(time.monotonic() + s.interval)
        if s.fault == "drop_after":
            self._write(pending)
            self._drop()
            return
        if s.fault in ("error_after", "error_first_line"):
            last = go_json({"error": s.fault_message}) + b"\n"
        elif s.fault == "cut_before_done":
            last = b""
        else:
            done = _final(model, chat, reply, (self._started, first), whole=False)
            last = go_json(done) + b"\n"
        self._write(pending + (self._frame(last) if last else b"") + self._end())
        self._sent += bool(last)

    def _whole(self, model: str, chat: bool, reply: _Reply, s: Settings) -> None:
        lines = len(reply.thinking) + len(reply.content) + bool(reply.tool_calls)
        self._wait(self._started + s.first_token_delay)
        first = time.monotonic()
        if s.fault == "drop_after":
            self._wait(first + s.interval * min(lines, s.fault_after))
            self._drop()
            return
        if s.fault not in ("error_before", "error_first_line"):
            self._wait(first + s.interval * lines)
        if s.fault in ("error_before", "error_after", "error_first_line"):
            self._json(500, {"error": s.fault_message})
            return
        obj = _final(model, chat, reply, (self._started, first), whole=True)
        if s.fault == "cut_before_done":  # no final chunk: only the text survives
            kept = ("model", "created_at", "message", "response")
            obj = {k: v for k, v in obj.items() if k in kept} | {"done": False}
        self._json(200, obj)


_ROUTES: dict[str, tuple[tuple[str, ...], str]] = {
    "/": (("GET", "HEAD"), "_root"),
    "/api/version": (("GET", "HEAD"), "_version"),
    "/api/tags": (("GET", "HEAD"), "_list"),
    "/api/ps": (("GET",), "_ps"),
    "/api/show": (("POST",), "_show"),
    "/api/chat": (("POST",), "_generation"),
    "/api/generate": (("POST",), "_generation"),
    "/_sim/stats": (("GET",), "_stats"),
    "/_sim/settings": (("POST",), "_settings"),
    "/_sim/reset": (("POST",), "_reset"),
}


# --- public API -------------------------------------------------------------------


def _invalid(s: Settings) -> str | None:
    """Why these settings cannot be used, or None."""

    def number(v: Any, kind: type = float) -> bool:
        allowed = (int, float) if kind is float else (int,)
        return isinstance(v, allowed) and not isinstance(v, bool) and v >= 0

    if not isinstance(s.models, list) or not all(isinstance(m, str) for m in s.models):
        return "models must be a list of strings"
    if not number(s.first_token_delay) or not number(s.interval):
        return "first_token_delay and interval must be numbers >= 0"
    if not (s.chunks is None or number(s.chunks, int)) or not number(
        s.fault_after, int
    ):
        return "chunks (or null) and fault_after must be integers >= 0"
    if s.fault is not None and s.fault not in FAULTS:
        return f"fault must be null or one of: {', '.join(FAULTS)}"
    if not isinstance(s.fault_message, str):
        return "fault_message must be a string"
    return None


class Simulator:
    """An in-process Ollama stand-in; ``with Simulator(...) as sim:`` serves it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **settings: Any) -> None:
        self.host = host
        self.port = port
        self._overrides = settings
        self.settings = Settings(**settings)
        if problem := _invalid(self.settings):
            raise ValueError(problem)
        self.url = ""
        self.requests: list[RequestRecord] = []
        self.hangups: list[Hangup] = []
        self._cond = threading.Condition()
        self._streams_open = 0
        self._returned = 0  # hang-ups already handed out by wait_hangup
        self._loaded: dict[str, float] = {}  # canonical name -> expiry (epoch)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Simulator:
        server = _Server((self.host, self.port), self)
        self._server = server
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="chatsvc-simulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_all()  # in-flight streams end as if the server died
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Restore the constructor's settings and forget every record."""
        with self._cond:
            self.settings = Settings(**copy.deepcopy(self._overrides))
            self.requests.clear()
            self.hangups.clear()
            self._returned = 0
            self._loaded.clear()

    @property
    def streams_open(self) -> int:
        return self._streams_open

    def wait_hangup(self, timeout: float) -> Hangup | None:
        """Return the next hang-up not yet returned here, waiting up to timeout."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: len(self.hangups) > self._returned, timeout
            ):
                return None
            self._returned += 1
            return self.hangups[self._returned - 1]

    def stats(self) -> dict[str, Any]:
        cpu = os.times()
        with self._cond:
            return {
                "hangups": [dataclasses.asdict(h) for h in self.hangups],
                "streams_open": self._streams_open,
                "requests": len(self.requests),
                "cpu_seconds": cpu.user + cpu.system,
            }

    # -- used by the handler

    def _snapshot(self) -> Settings:
        current = self.settings
        return dataclasses.replace(current, models=list(current.models))

    def _configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        unknown = set(changes) - {f.name for f in dataclasses.fields(Settings)}
        if unknown:
            raise _Reject(400, f"unknown setting {sorted(unknown)[0]!r}")
        updated = dataclasses.replace(self.settings, **changes)
        if problem := _invalid(updated):
            raise _Reject(400, problem)
        self.settings = updated
        return dataclasses.asdict(updated)

    @contextmanager
    def _stream_open(self) -> Iterator[None]:
        with self._cond:
            self._streams_open += 1
        try:
            yield
        finally:
            with self._cond:
                self._streams_open -= 1

    def _hung_up(self, path: str, chunks_sent: int) -> None:
        at = time.monotonic()
        if self._server is None:  # stop() cut the stream, the client did not
            return
        with self._cond:
            self.hangups.append(Hangup(path, at, chunks_sent))
            self._cond.notify_all()

    def _touch(self, model: str, keep_alive: float) -> None:
        with self._cond:
            if keep_alive == 0:
                self._loaded.pop(_canonical(model), None)
            else:
                self._loaded[_canonical(model)] = time.time() + keep_alive

    def _running(self) -> list[dict[str, Any]]:
        now = time.time()
        with self._cond:
            live = sorted(
                ((t, n) for n, t in self._loaded.items() if t > now), reverse=True
            )
        running = []
        for expiry, name in live:
            entry = _model_entry(name)
            entry["expires_at"] = _local_time(expiry)
            entry["size_vram"] = entry["size"]
            entry["context_length"] = 4096
            running.append(entry)
        return running


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m chatsvc.simulator",
        description="Ollama-compatible simulator for demos, tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument(
        "--first-token-delay", type=float, default=Settings.first_token_delay
    )
    parser.add_argument("--interval", type=float, default=Settings.interval)
    parser.add_argument("--chunks", type=int, default=None)
    parser.add_argument("--fault", choices=FAULTS, default=None)
    args = parser.parse_args(argv)
    sim = Simulator(
        args.host,
        args.port,
        first_token_delay=args.first_token_delay,
        interval=args.interval,
        chunks=args.chunks,
        fault=args.fault,
    )
    sim.start()
    print(f"chatsvc simulator listening on {sim.url}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
