"""The HTTP server: routes, pacing, faults, slots and hang-ups, as Ollama's gin does."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import os
import select
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any

from . import catalog, management, openai
from .replies import (
    Reply,
    compose,
    final,
    load_reply,
    normalized,
    prefix,
    tail,
    tokens,
    tool_tail,
    vector,
)
from .wire import Gone, Reject, bind, go_json, go_timestamp, keep_alive, loads

VERSION = "0.33.0"
FAULTS = (
    "error_before",  # real 500 before any byte (also /api/embed and /v1)
    "error_after",  # 200, K lines, an {"error"} line, clean end, no done line;
    # on /v1 Ollama's middleware swallows it: a "model":"" chunk, no finish, no [DONE]
    "drop_after",  # 200, K lines, then the connection is closed mid-body
    "cut_before_done",  # 200, every line but the done line, clean end
    "error_first_line",  # pre-0.12.6: 200 whose first line is {"error"}
    "busy",  # Ollama's 503 when its scheduler queue is full (OLLAMA_MAX_QUEUE)
)
BUSY = "server busy, please try again.  maximum pending requests exceeded"
JSON = "application/json; charset=utf-8"


@dataclass
class Settings:
    """Behaviour knobs, read once at the start of each request."""

    models: list[str] = field(
        default_factory=lambda: ["llama3.2", "qwen3", "nomic-embed-text"]
    )
    first_token_delay: float = 0.4
    interval: float = 0.04
    chunks: int | None = None
    fault: str | None = None
    fault_after: int = 3
    fault_message: str = (
        "an error was encountered while running the model: unexpected EOF"
    )
    parallel: int | None = None  # OLLAMA_NUM_PARALLEL per model; None: no limit
    load_delay: float = 0.0  # seconds to load a model that is not loaded
    pull_speed: float = 100e6  # bytes per second a pull downloads
    pull_tick: float = 0.06  # seconds between progress lines, as Ollama's ticker


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


class _Out:
    """The response writer a native handler writes through (gin's ResponseWriter).

    Status and headers leave with the first line, as Ollama's do.
    """

    def __init__(self, handler: _Handler) -> None:
        self.h = handler
        self.committed = False

    def whole(
        self, status: int, obj: Any, ctype: str = JSON, chunked: bool = False
    ) -> None:
        """One object (c.JSON); obj None is an empty body with no Content-Type."""
        body = b"" if obj is None else go_json(obj)
        self.h.reply(status, body, ctype if obj is not None else "", chunked=chunked)

    def line(self, data: bytes) -> None:
        """One line of a committed stream, flushed."""
        if self.committed:  # the hot path: one call, one write
            self.h.write(self.h.frame(data))
        else:
            self.h.write(self._head() + self.h.frame(data))

    def close(self, last: bytes = b"") -> None:
        """An optional last line, then the clean end of the body."""
        framed = self.h.frame(last) if last else b""
        self.h.write(self._head() + framed + self.h.end())

    def drop(self, commit: bool = True) -> None:
        """Cut the connection; with commit, after the status line if not yet sent."""
        if commit:
            self.h.write(self._head())
        self.h.drop()

    def _head(self) -> bytes:
        if self.committed:
            return b""
        self.committed = True
        return self.h.head(200, "application/x-ndjson", None)


class _OpenAIOut(_Out):
    """Ollama's /v1 middleware: every native write re-encoded by an openai.Writer."""

    def __init__(self, handler: _Handler, writer: openai.Writer) -> None:
        super().__init__(handler)
        self.writer = writer

    def whole(
        self, status: int, obj: Any, ctype: str = JSON, chunked: bool = False
    ) -> None:
        if status != 200:  # writeError: OpenAI's shape, no charset, a newline
            body = go_json(openai.error(status, obj["error"])) + b"\n"
            self.h.reply(status, body, "application/json", chunked=chunked)
            return
        body = b"".join(self.writer.encode(obj))
        self.h.reply(200, body, self.writer.content_type, extra=self.writer.headers)

    def line(self, data: bytes) -> None:
        for piece in self.writer.encode(json.loads(data)):
            super().line(piece)

    def close(self, last: bytes = b"") -> None:
        pieces = self.writer.encode(json.loads(last)) if last else []
        framed = b"".join(self.h.frame(p) for p in pieces)
        self.h.write(self._head() + framed + self.h.end())

    def _head(self) -> bytes:
        if self.committed:
            return b""
        self.committed = True
        writer = self.writer
        return self.h.head(200, writer.content_type, None, extra=writer.headers)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    _sent = 0
    _started = 0.0
    _out: _Out

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

    def write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
        except OSError:
            raise Gone from None

    def gone(self, timeout: float = 0.0) -> bool:
        """Whether the client hung up, waiting up to timeout for it to."""
        if not _readable(self.connection, timeout):
            return False
        try:
            peeked: bytes = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True
        return peeked == b""

    def wait(self, deadline: float) -> None:
        """Sleep until deadline, raising Gone as soon as the client leaves."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        if self.gone(remaining):
            raise Gone
        # Pipelined bytes keep the socket readable; nothing more to learn here.
        time.sleep(max(0.0, deadline - time.monotonic()))

    def frame(self, data: bytes) -> bytes:
        if self.request_version == "HTTP/1.1":
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data

    def end(self) -> bytes:
        return b"0\r\n\r\n" if self.request_version == "HTTP/1.1" else b""

    def head(
        self,
        status: int,
        ctype: str,
        length: int | None,
        allow: str = "",
        extra: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        reason = self.responses.get(status, ("",))[0]
        lines = [f"HTTP/1.1 {status} {reason}"]
        if ctype:
            lines.append(f"Content-Type: {ctype}")
        lines += [f"{k}: {v}" for k, v in extra if k != "Connection"]
        lines.append(f"Date: {self.date_time_string()}")
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
        else:  # /v1/responses says keep-alive out loud
            lines += [f"{k}: {v}" for k, v in extra if k == "Connection"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def reply(
        self,
        status: int,
        body: bytes,
        ctype: str,
        allow: str = "",
        chunked: bool = False,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        length = None if chunked else len(body)
        head = self.head(status, ctype, length, allow, extra)
        if self.command == "HEAD":
            body = b""
        elif chunked:
            body = self.frame(body) + self.end()
        self.write(head + body)

    def json(self, status: int, obj: Any) -> None:
        self.reply(status, go_json(obj), JSON)

    def drop(self) -> None:
        """Close mid-body with a FIN, so the client has read what was sent."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def body_parts(self, size: int = 65536) -> Iterator[bytes]:
        """The request body as it arrives, never whole in memory."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while length := int(self.rfile.readline().split(b";")[0], 16):
                yield self.rfile.read(length)
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            part = self.rfile.read(min(size, left))
            if not part:
                raise ValueError("body ended early")
            left -= len(part)
            yield part

    # -- routing

    def _dispatch(self) -> None:
        self._started = time.monotonic()
        self._out = _Out(self)
        sim = self.server.sim
        path = self.path.partition("?")[0]
        pattern, param = _match(path)
        action = _ROUTES.get(pattern, {}).get(self.command, "")
        try:
            raw = b"" if action in _OWN_BODY else b"".join(self.body_parts())
        except ValueError:
            self.close_connection = True
            self.reply(400, b"400 Bad Request", "text/plain; charset=utf-8")
            return
        if not path.startswith("/_sim/"):
            headers = {k.lower(): v for k, v in self.headers.items()}
            record = RequestRecord(
                self.command, path, headers, loads(raw), self._started
            )
            with sim._cond:
                sim.requests.append(record)
        try:
            if not pattern:
                self.reply(404, b"404 page not found", "text/plain")
            elif not action:
                allow = ", ".join(_ROUTES[pattern])
                self.reply(405, b"405 method not allowed", "text/plain", allow)
            else:
                try:
                    getattr(self, action)(raw, param)
                except Reject as err:
                    self._out.whole(err.status, {"error": err.message}, err.ctype)
        except Gone:
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch

    @property
    def sim(self) -> Simulator:
        return self.server.sim

    @contextmanager
    def _streaming(self) -> Iterator[None]:
        """An open stream: counted, and a hang-up in it is recorded."""
        self._sent = 0
        with self.sim._stream_open():
            try:
                yield
            except Gone:
                self.close_connection = True
                self.sim._hung_up(self.path.partition("?")[0], self._sent)

    # -- metadata

    def _root(self, raw: bytes, param: str) -> None:
        self.reply(200, b"Ollama is running", "text/plain; charset=utf-8")

    def _version(self, raw: bytes, param: str) -> None:
        self.json(200, {"version": VERSION})

    def _list(self, raw: bytes, param: str) -> None:
        self._out.whole(200, {"models": self.sim._tags()})

    def _ps(self, raw: bytes, param: str) -> None:
        self.json(200, {"models": self.sim._running()})

    def _show(self, raw: bytes, param: str) -> None:
        body = bind(raw, "ShowRequest")
        name = body.get("model") or body.get("name") or ""
        if not name:
            raise Reject(400, "model is required")
        self._out.whole(200, self.sim._show(name))

    # -- generation

    def _chat(self, raw: bytes, param: str) -> None:
        self._generation(raw, chat=True)

    def _generate(self, raw: bytes, param: str) -> None:
        self._generation(raw, chat=False)

    def _generation(self, raw: bytes, chat: bool) -> None:
        sim = self.sim
        settings = sim._snapshot()
        body = bind(raw, "ChatRequest" if chat else "GenerateRequest")
        model = body.get("model") or ""
        if chat and not model:
            raise Reject(400, "model is required")
        if catalog.find(settings.models, model) is None:
            raise Reject(404, f"model '{model}' not found")
        if not chat and body.get("raw"):
            if body.get("template") or body.get("system") or body.get("context"):
                msg = "raw mode does not support template, system, or context"
                raise Reject(400, msg)
        keep = keep_alive(body.get("keep_alive"))
        load_only = not body.get("messages" if chat else "prompt")
        if load_only and keep == 0:
            sim._unload(model)
            self._out.whole(200, load_reply(model, chat, "unload"))
            return
        think = body.get("think")
        if think not in (None, True, False, "low", "medium", "high", "max"):
            raise Reject(400, f"invalid think value: {json.dumps(think)}")
        thinks = "thinking" in sim._spec(model).capabilities
        if think not in (None, False) and not thinks:
            raise Reject(400, f'"{model}" does not support thinking')
        if settings.fault == "busy":
            raise Reject(503, BUSY)
        loading = sim._using(model, keep, settings.load_delay)
        with loading as ready_at, self._streaming():
            self.wait(ready_at)  # loading: as silent as the wait for a slot
            loaded = time.monotonic()
            if load_only:
                self._out.whole(200, load_reply(model, chat, "load"))
                return
            reply = compose(body, chat, settings.chunks, thinks and think is not False)
            with sim._slot(model, self.gone):
                times = (self._started, loaded, time.monotonic())
                if body.get("stream") is False:
                    self._whole(model, chat, reply, settings, times)
                else:
                    self._stream(model, chat, reply, settings, times)

    def _stream(
        self,
        model: str,
        chat: bool,
        reply: Reply,
        s: Settings,
        times: tuple[float, float, float],
    ) -> None:
        # Lazy, so a huge `chunks` costs nothing before the first line.
        tails: Iterator[bytes] = itertools.chain(
            (tail(chat, p, True) for p in reply.thinking),
            (tail(chat, p, False) for p in reply.content),
            [tool_tail(reply.tool_calls)] if reply.tool_calls else [],
        )
        if s.fault in ("error_after", "drop_after"):
            tails = itertools.islice(tails, s.fault_after)
        elif s.fault == "error_first_line":
            tails = iter(())
        out = self._out
        self.wait(times[2] + s.first_token_delay)
        if s.fault == "error_before":
            out.whole(500, {"error": s.fault_message}, "application/json", True)
            return
        first = time.monotonic()
        start = prefix(model)
        for line_tail in tails:
            if self._sent:
                self.wait(time.monotonic() + s.interval)
            out.line(start + go_timestamp(time.time_ns()).encode() + line_tail)
            self._sent += 1
        if self._sent:
            self.wait(time.monotonic() + s.interval)
        if s.fault == "drop_after":
            out.drop()
            return
        if s.fault in ("error_after", "error_first_line"):
            last = go_json({"error": s.fault_message}) + b"\n"
        elif s.fault == "cut_before_done":
            last = b""
        else:
            done = final(model, chat, reply, (*times, first), whole=False)
            last = go_json(done) + b"\n"
        out.close(last)
        self._sent += bool(last)

    def _whole(
        self,
        model: str,
        chat: bool,
        reply: Reply,
        s: Settings,
        times: tuple[float, float, float],
    ) -> None:
        self.wait(times[2] + s.first_token_delay)
        first = time.monotonic()
        if s.fault == "drop_after":
            self.wait(first + s.interval * min(reply.lines, s.fault_after))
            self._out.drop(commit=False)
            return
        if s.fault not in ("error_before", "error_first_line"):
            self.wait(first + s.interval * reply.lines)
        if s.fault in ("error_before", "error_after", "error_first_line"):
            self._out.whole(500, {"error": s.fault_message})
            return
        obj = final(model, chat, reply, (*times, first), whole=True)
        if s.fault == "cut_before_done":  # no final chunk: only the text survives
            kept = ("model", "created_at", "message", "response")
            obj = {k: v for k, v in obj.items() if k in kept} | {"done": False}
        self._out.whole(200, obj)

    # -- embeddings (§8)

    def _embed(self, raw: bytes, param: str) -> None:
        body = bind(raw, "EmbedRequest")
        model = body.get("model") or ""
        if not model:
            raise Reject(404, "model '' not found")
        if not catalog.valid(model):
            raise Reject(400, "invalid model name")
        given = body.get("input")
        if isinstance(given, list) and all(isinstance(t, str) for t in given):
            texts = given
        elif isinstance(given, str) or given is None:
            texts = [given] if given else []
        else:
            raise Reject(400, "invalid input type")
        found = self._installed(model)
        keep = keep_alive(body.get("keep_alive"))
        with self._runner(found, keep) as s:
            if not texts:
                self._out.whole(200, {"model": model, "embeddings": []})
                return
            loaded = time.monotonic()
            spec = self.sim._spec(found)
            if "embedding" not in spec.capabilities:
                raise Reject(501, _NO_EMBEDDINGS)
            context = _context(spec, body.get("options"))
            counts = [tokens(t) for t in texts]
            if body.get("truncate") is False and max(counts) > context:
                raise Reject(400, "the input length exceeds the context length")
            vectors = self._embedding(found, texts, spec.embedding_length, s)
            dimensions = body.get("dimensions")
            reply = {
                "model": model,
                "embeddings": [normalized(v, dimensions) for v in vectors],
                "total_duration": _ns(time.monotonic() - self._started),
                "load_duration": _ns(loaded - self._started),
                "prompt_eval_count": sum(min(c, context) for c in counts),
            }
            self._out.whole(200, reply)

    def _embeddings(self, raw: bytes, param: str) -> None:
        body = bind(raw, "EmbeddingRequest")
        model = body.get("model") or ""
        if not model:
            raise Reject(400, "model is required")
        if not catalog.valid(model):
            raise Reject(400, "invalid model name")
        found = self._installed(model)
        with self._runner(found, keep_alive(body.get("keep_alive"))) as s:
            prompt = body.get("prompt") or ""
            if not prompt:
                self._out.whole(200, {"embedding": []})
                return
            spec = self.sim._spec(found)
            # Every runner error is a 500 here, the 501 and the overflow included.
            if "embedding" not in spec.capabilities:
                raise Reject(500, _NO_EMBEDDINGS)
            if tokens(prompt) > _context(spec, body.get("options")):
                raise Reject(500, "the input length exceeds the context length")
            [raw_vector] = self._embedding(found, [prompt], spec.embedding_length, s)
            self._out.whole(200, {"embedding": raw_vector})  # not normalised

    @contextmanager
    def _runner(self, model: str, keep: float | None) -> Iterator[Settings]:
        """The model's runner for one request: loaded (silently) and kept in use."""
        s = self.sim._snapshot()
        if s.fault == "busy":
            raise Reject(503, BUSY)
        with self.sim._using(model, keep, s.load_delay) as ready_at, self._streaming():
            self.wait(ready_at)
            yield s

    def _installed(self, model: str) -> str:
        found = catalog.find(self.sim.settings.models, model)
        if found is None:
            message = f"model {go_json(model).decode()} not found, try pulling it first"
            raise Reject(404, message)
        return found

    def _embedding(
        self, model: str, texts: list[str], size: int, s: Settings
    ) -> list[list[float]]:
        """The raw vectors, computed in a slot after the first_token_delay."""
        with self.sim._slot(model, self.gone):
            self.wait(time.monotonic() + s.first_token_delay)
            if s.fault == "error_before":
                raise Reject(500, s.fault_message)
            return [vector(catalog.canonical(model), t, size) for t in texts]

    # -- model management (§9)

    def _pull(self, raw: bytes, param: str) -> None:
        body = bind(raw, "PullRequest")
        name = body.get("model") or body.get("name") or ""
        if not catalog.valid(name):
            raise Reject(400, "invalid model name")
        s = self.sim._snapshot()
        have = catalog.find(s.models, name) is not None
        steps = management.pull(
            name, have, s.pull_speed, s.pull_tick, lambda: self.sim._install(name)
        )
        steps = management.faulty(steps, s.fault, s.fault_after, s.fault_message)
        self._progress(steps, body.get("stream") is not False)

    def _push(self, raw: bytes, param: str) -> None:
        body = bind(raw, "PushRequest")
        name = body.get("model") or body.get("name") or ""
        if not name:
            raise Reject(400, "model is required")
        s = self.sim._snapshot()
        installed = catalog.find(s.models, name) is not None
        steps = management.push(name, installed, s.pull_tick)
        self._progress(steps, body.get("stream") is not False)

    def _create(self, raw: bytes, param: str) -> None:
        body = bind(raw, "CreateRequest")
        name = body.get("model") or body.get("name") or ""
        files = body.get("files") or {}
        for path, digest in files.items():
            if path.startswith("/") or ".." in path.split("/"):
                raise Reject(400, "file path must be relative")
            if not isinstance(digest, str) or not management.BLOB_DIGEST.fullmatch(
                digest
            ):
                raise Reject(400, "invalid digest format")
        if not catalog.valid(name):
            raise Reject(400, "invalid model name")
        s = self.sim._snapshot()
        system = str(body.get("system") or "")

        def install(spec_of: str) -> None:
            self.sim._install(name, spec_of or name, system)

        steps = management.create(
            body,
            lambda n: catalog.find(self.sim.settings.models, n),
            self.sim._blob,
            s.pull_tick,
            s.pull_speed,
            install,
        )
        self._progress(steps, body.get("stream") is not False)

    def _progress(self, steps: Iterator[management.Step], stream: bool) -> None:
        """streamResponse, or with stream:false waitForStream (§9)."""
        with self._streaming():
            last: dict[str, Any] = {}
            for step in steps:
                self.wait(time.monotonic() + step.wait)
                if step.drop:
                    self._out.drop(commit=stream)
                    return
                error = "error" in step.line
                if error and (not stream or not self._sent):
                    self._out.whole(step.status, step.line, "application/json", stream)
                    return
                if stream:
                    self._out.line(go_json(step.line) + b"\n")
                    self._sent += 1
                if error:
                    break
                last = step.line
            if stream:
                self._out.close()
            else:  # waitForStream: the last line, and no charset
                self._out.whole(200, last, "application/json")

    def _copy(self, raw: bytes, param: str) -> None:
        body = bind(raw, "CopyRequest")
        source, destination = body.get("source", ""), body.get("destination", "")
        if not catalog.valid(source):
            raise Reject(400, f"source {go_json(source).decode()} is invalid")
        if not catalog.valid(destination):
            raise Reject(400, f"destination {go_json(destination).decode()} is invalid")
        found = catalog.find(self.sim.settings.models, source)
        if found is None:
            raise Reject(404, f"model {go_json(source).decode()} not found")
        self.sim._install(destination, self.sim._spec_of(found))
        self._out.whole(200, None)

    def _delete(self, raw: bytes, param: str) -> None:
        body = bind(raw, "DeleteRequest")
        name = body.get("model") or body.get("name") or ""
        if not name:
            raise Reject(400, "model is required")
        if not catalog.valid(name):
            raise Reject(400, f"name {go_json(name).decode()} is invalid")
        if not self.sim._remove(name):
            raise Reject(404, f"model '{name}' not found")
        self._out.whole(200, None)

    def _head_blob(self, raw: bytes, param: str) -> None:
        if not management.BLOB_DIGEST.fullmatch(param):
            raise Reject(400, "invalid digest format")
        if self.sim._blob(param) is None:
            raise Reject(404, f"blob {go_json(param).decode()} not found")
        self.reply(200, b"", "")

    def _create_blob(self, raw: bytes, param: str) -> None:
        if not management.BLOB_DIGEST.fullmatch(param):
            self.close_connection = True  # the body was not read
            raise Reject(400, "invalid digest format")
        if self.sim._blob(param) is not None:
            self.close_connection = True  # present: the body is not read
            self.reply(200, b"", "")
            return
        sha, head = hashlib.sha256(), b""
        try:
            for part in self.body_parts():
                sha.update(part)
                head = head or part[:4]
        except (ValueError, OSError):
            self.close_connection = True
            raise Gone from None
        got = "sha256:" + sha.hexdigest()
        self.sim._add_blob(got, head)  # kept under the digest it really has
        if got != param:
            raise Reject(
                400,
                f"digest mismatch, expected {json.dumps(param)}, got {json.dumps(got)}",
            )
        self.reply(201, b"", "")

    # -- the /v1 layer (§10)

    def _openai(
        self,
        translate: Callable[[bytes], tuple[dict[str, Any], openai.Writer]],
        native: Callable[[bytes, str], None],
        raw: bytes,
        param: str = "",
    ) -> None:
        try:
            body, writer = translate(raw)
        except Reject as err:  # the middleware's own: charset, no newline
            self.json(err.status, openai.error(err.status, err.message))
            return
        self._out = _OpenAIOut(self, writer)
        native(go_json(body), param)

    def _v1_chat(self, raw: bytes, param: str) -> None:
        self._openai(openai.chat, self._chat, raw)

    def _v1_completions(self, raw: bytes, param: str) -> None:
        self._openai(openai.completions, self._generate, raw)

    def _v1_embeddings(self, raw: bytes, param: str) -> None:
        self._openai(openai.embeddings, self._embed, raw)

    def _v1_models(self, raw: bytes, param: str) -> None:
        self._openai(lambda _: ({}, openai.ListWriter()), self._list, raw)

    def _v1_model(self, raw: bytes, param: str) -> None:
        writer = openai.RetrieveWriter(param)
        self._openai(lambda _: ({"name": param}, writer), self._show, raw)

    def _v1_responses(self, raw: bytes, param: str) -> None:
        self._openai(openai.responses, self._chat, raw)

    # -- control

    def _stats(self, raw: bytes, param: str) -> None:
        self.json(200, self.sim.stats())

    def _settings(self, raw: bytes, param: str) -> None:
        changes = loads(raw)
        if not isinstance(changes, dict):
            raise Reject(400, "settings must be a JSON object")
        self.json(200, self.sim._configure(changes))

    def _reset(self, raw: bytes, param: str) -> None:
        self.sim.reset()
        self.json(200, dataclasses.asdict(self.sim.settings))


_NO_EMBEDDINGS = "This server does not support embeddings. Start it with `--embeddings`"


def _context(spec: catalog.Spec, options: Any) -> int:
    num_ctx = options.get("num_ctx") if isinstance(options, dict) else None
    if isinstance(num_ctx, int) and 0 < num_ctx < spec.context_length:
        return num_ctx
    return spec.context_length


def _ns(seconds: float) -> int:
    return max(1, int(seconds * 1e9))


_ROUTES: dict[str, dict[str, str]] = {
    "/": {"GET": "_root", "HEAD": "_root"},
    "/api/version": {"GET": "_version", "HEAD": "_version"},
    "/api/tags": {"GET": "_list", "HEAD": "_list"},
    "/api/ps": {"GET": "_ps"},
    "/api/show": {"POST": "_show"},
    "/api/chat": {"POST": "_chat"},
    "/api/generate": {"POST": "_generate"},
    "/api/embed": {"POST": "_embed"},
    "/api/embeddings": {"POST": "_embeddings"},
    "/api/pull": {"POST": "_pull"},
    "/api/push": {"POST": "_push"},
    "/api/create": {"POST": "_create"},
    "/api/copy": {"POST": "_copy"},
    "/api/delete": {"DELETE": "_delete"},
    "/api/blobs/:digest": {"POST": "_create_blob", "HEAD": "_head_blob"},
    "/v1/chat/completions": {"POST": "_v1_chat"},
    "/v1/completions": {"POST": "_v1_completions"},
    "/v1/embeddings": {"POST": "_v1_embeddings"},
    "/v1/models": {"GET": "_v1_models"},
    "/v1/models/:model": {"GET": "_v1_model"},
    "/v1/responses": {"POST": "_v1_responses"},
    "/_sim/stats": {"GET": "_stats"},
    "/_sim/settings": {"POST": "_settings"},
    "/_sim/reset": {"POST": "_reset"},
}
_OWN_BODY = frozenset({"_create_blob"})  # reads its body itself, as it arrives


def _match(path: str) -> tuple[str, str]:
    """(route pattern, its one path parameter), or ("", "") for gin's 404."""
    if path in _ROUTES:
        return path, ""
    head, _, param = path.rpartition("/")
    pattern = next((p for p in _ROUTES if p.startswith(head + "/:")), "")
    return (pattern, param) if pattern and param else ("", "")


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
    if s.parallel is not None and not (number(s.parallel, int) and s.parallel > 0):
        return "parallel must be null or an integer >= 1"
    if not number(s.pull_speed) or not s.pull_speed or not number(s.pull_tick):
        return "pull_speed must be a number > 0 and pull_tick a number >= 0"
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
        self._installed: dict[str, catalog.Installed] = {}  # lower canonical ->
        self._loaded: dict[str, catalog.Loaded] = {}  # lower canonical ->
        self._blobs: dict[str, bytes] = {}  # "sha256-<hex>" -> first bytes
        self._queues: dict[str, deque[object]] = {}  # waiting for a slot, FIFO
        self._busy: dict[str, int] = {}  # slots taken per model
        self._in_flight = 0
        self._max_in_flight = 0
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
        """Restore the constructor's settings and forget every record and model."""
        with self._cond:
            self.settings = Settings(**copy.deepcopy(self._overrides))
            self.requests.clear()
            self.hangups.clear()
            self._returned = 0
            self._installed.clear()
            self._loaded.clear()
            self._blobs.clear()
            self._max_in_flight = self._in_flight

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
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "waiting": sum(len(q) for q in self._queues.values()),
                "cpu_seconds": cpu.user + cpu.system,
            }

    # -- used by the handler

    def _snapshot(self) -> Settings:
        current = self.settings
        return dataclasses.replace(current, models=list(current.models))

    def _configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        unknown = set(changes) - {f.name for f in dataclasses.fields(Settings)}
        if unknown:
            raise Reject(400, f"unknown setting {sorted(unknown)[0]!r}")
        updated = dataclasses.replace(self.settings, **changes)
        if problem := _invalid(updated):
            raise Reject(400, problem)
        with self._cond:
            self.settings = updated
            self._cond.notify_all()  # a higher `parallel` frees waiters
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

    @contextmanager
    def _slot(self, model: str, gone: Callable[[], bool]) -> Iterator[None]:
        """One of the model's `parallel` slots; waits FIFO and silently for it."""
        key = catalog.canonical(model).lower()
        ticket = object()
        with self._cond:
            queue = self._queues.setdefault(key, deque())
            queue.append(ticket)
            try:
                while not (
                    queue[0] is ticket
                    and self._busy.get(key, 0) < (self.settings.parallel or sys.maxsize)
                ):
                    # Silent while it waits, but it notices the client leaving.
                    self._cond.wait(0.02)
                    if gone():
                        raise Gone
            finally:
                queue.remove(ticket)
                self._cond.notify_all()
            self._busy[key] = self._busy.get(key, 0) + 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._cond:
                self._busy[key] -= 1
                self._in_flight -= 1
                self._cond.notify_all()

    @contextmanager
    def _using(self, model: str, keep: float | None, delay: float) -> Iterator[float]:
        """The model loaded (if need be) and in use for one request.

        Yields when (monotonic) the load is done; the keep-alive timer starts when
        the model's last request ends.
        """
        key = catalog.canonical(model).lower()
        with self._cond:
            loaded = self._loaded.get(key)
            if (
                loaded
                and not loaded.busy
                and loaded.expires(time.time()) <= time.time()
            ):
                loaded = None  # expired: unloaded, so loaded again
            if loaded is None:
                default = 300.0 if keep is None else keep
                ready_at = time.monotonic() + delay
                loaded = self._loaded[key] = catalog.Loaded(default, ready_at=ready_at)
            elif keep is not None:  # any request that carries keep_alive replaces it
                loaded.keep_alive = keep
            loaded.busy += 1
        try:
            yield loaded.ready_at
        finally:
            with self._cond:
                loaded.busy -= 1
                if not loaded.busy:
                    loaded.idle_since = time.time()
                    if loaded.keep_alive == 0 and self._loaded.get(key) is loaded:
                        del self._loaded[key]

    def _unload(self, model: str) -> None:
        with self._cond:
            self._loaded.pop(catalog.canonical(model).lower(), None)

    def _running(self) -> list[dict[str, Any]]:
        now = time.time()
        with self._cond:
            live = [
                (loaded.expires(now), name)
                for name, loaded in self._loaded.items()
                if loaded.busy or loaded.expires(now) > now
            ]
            models = list(self.settings.models)
        running = []
        for expiry, key in sorted(live, reverse=True):
            name = catalog.find(models, key) or key
            running.append(catalog.ps_entry(name, self._spec(name), expiry))
        return running

    def _spec_of(self, name: str) -> str:
        made = self._installed.get(catalog.canonical(name).lower())
        return made.spec_of if made else name

    def _spec(self, name: str) -> catalog.Spec:
        return catalog.spec(name, self._installed)

    def _tags(self) -> list[dict[str, Any]]:
        models = list(self.settings.models)
        listed = [
            (catalog.modified(m, i, self._installed), m) for i, m in enumerate(models)
        ]
        listed.sort(key=lambda pair: pair[0], reverse=True)  # newest first
        return [catalog.entry(m, self._spec(m), t) for t, m in listed]

    def _show(self, name: str) -> dict[str, Any]:
        models = list(self.settings.models)
        found = catalog.find(models, name)
        if found is None:
            raise Reject(404, f"model '{catalog.canonical(name)}' not found")
        made = self._installed.get(catalog.canonical(found).lower())
        when = catalog.modified(found, models.index(found), self._installed)
        return catalog.show(found, self._spec(found), when, made.system if made else "")

    def _install(self, name: str, spec_of: str = "", system: str = "") -> None:
        key = catalog.canonical(name).lower()
        with self._cond:
            models = [
                m for m in self.settings.models if catalog.canonical(m).lower() != key
            ]
            self.settings.models = [name, *models]
            self._installed[key] = catalog.Installed(spec_of or name, system=system)

    def _remove(self, name: str) -> bool:
        key = catalog.canonical(name).lower()
        with self._cond:
            models = self.settings.models
            kept = [m for m in models if catalog.canonical(m).lower() != key]
            self.settings.models = kept
            self._installed.pop(key, None)  # a loaded runner stays until it expires
            return len(kept) < len(models)

    def _blob(self, digest: str) -> bytes | None:
        return self._blobs.get(digest.replace(":", "-", 1))

    def _add_blob(self, digest: str, head: bytes) -> None:
        with self._cond:
            self._blobs[digest.replace(":", "-", 1)] = head
