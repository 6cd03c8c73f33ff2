"""One request as Ollama's gin serves it: routing, views, pacing, faults, hang-ups."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from . import catalog, management, openai, responses
from .pacer import Steps
from .replies import (
    Reply,
    compose,
    final,
    load_reply,
    normalized,
    ns,
    prefix,
    tail,
    tokens,
    tool_tail,
    vector,
)
from .wire import (
    Gone,
    Reject,
    bind,
    go_json,
    go_timestamp,
    keep_alive,
    loads,
    option_error,
)

if TYPE_CHECKING:
    from .server import Settings, Simulator, _Server

VERSION = "0.33.0"
BUSY = "server busy, please try again.  maximum pending requests exceeded"
JSON = "application/json; charset=utf-8"


def _readable(sock: socket.socket, timeout: float) -> bool:
    # poll has no FD_SETSIZE limit, which matters with hundreds of streams
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    return bool(select.select([sock], [], [], timeout)[0])


class _Out:
    """The response writer a native handler writes through (gin's ResponseWriter).

    Status and headers leave with the first line, as Ollama's do.
    """

    ctype = "application/x-ndjson"
    extra: tuple[tuple[str, str], ...] = ()

    def __init__(self, handler: Handler) -> None:
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
        return self.h.head(200, self.ctype, None, extra=self.extra)


class _OpenAIOut(_Out):
    """Ollama's /v1 middleware: every native write re-encoded by an openai.Writer."""

    def __init__(self, handler: Handler, writer: openai.Writer) -> None:
        super().__init__(handler)
        self.writer = writer
        self.ctype, self.extra = writer.content_type, writer.headers

    def whole(
        self, status: int, obj: Any, ctype: str = JSON, chunked: bool = False
    ) -> None:
        if status != 200:  # writeError: OpenAI's shape, no charset, a newline
            body = go_json(openai.error(status, obj["error"])) + b"\n"
            self.h.reply(status, body, "application/json", chunked=chunked)
            return
        body = b"".join(self.writer.encode(obj))
        self.h.reply(200, body, self.ctype, extra=self.extra)

    def line(self, data: bytes) -> None:
        for piece in self.writer.encode(json.loads(data)):
            super().line(piece)

    def close(self, last: bytes = b"") -> None:
        pieces = self.writer.encode(json.loads(last)) if last else []
        framed = b"".join(self.h.frame(p) for p in pieces)
        self.h.write(self._head() + framed + self.h.end())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    _sent = 0
    _started = 0.0
    _out: _Out
    _paced = False  # the pacer's thread runs this handler's steps
    _backlog: list[bytes] | None = None  # what the paced client has not taken yet

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
        if self._paced:  # on the pacer's thread, which must never block
            if self._backlog is None:
                try:
                    sent = self.connection.send(data, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    raise Gone from None
                if sent == len(data):
                    return
                data, self._backlog = data[sent:], []
            self._backlog.append(data)
            return
        try:
            self.wfile.write(data)
        except OSError:
            raise Gone from None

    @property
    def behind(self) -> bool:
        """The client is not reading as fast as the pacer writes."""
        return self._backlog is not None

    def _pace(self, steps: Steps) -> None:
        """Run steps, each once it is due: on the pacer's thread while the client
        keeps up, on this one before the first wait and once it falls behind."""
        for due in steps:
            if due > time.monotonic():
                break
        else:
            return
        self._paced = True
        try:
            rest = self.server.pacer.run(steps, due, self)
        finally:
            self._paced = False
            backlog, self._backlog = self._backlog, None
            if backlog:
                self.write(b"".join(backlog))
        if rest is not None:
            self.wait(rest)
            for due in steps:
                self.wait(due)

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
        if self._backlog:  # a rare fault on a slow client: wait for it to read
            backlog, self._backlog, self._paced = self._backlog, None, False
            self.write(b"".join(backlog))
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
            sim._record(self.command, path, headers, loads(raw), self._started)
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
        if not 0 <= (body.get("top_logprobs") or 0) <= 20:
            raise Reject(400, "top_logprobs must be between 0 and 20")
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
        capabilities = sim._spec(model).capabilities
        thinks = "thinking" in capabilities
        if think not in (None, False) and not thinks:
            raise Reject(400, f'"{model}" does not support thinking')
        if "completion" not in capabilities and not load_only:
            raise Reject(
                400, f'"{model}" does not support {"chat" if chat else "generate"}'
            )
        if chat and body.get("tools") and "tools" not in capabilities:
            raise Reject(400, f"{catalog.full_name(model)} does not support tools")
        self._check_options(body)
        with self._runner(model, keep, settings):
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
        self._pace(self._lines(model, chat, reply, s, times, tails))

    def _lines(
        self,
        model: str,
        chat: bool,
        reply: Reply,
        s: Settings,
        times: tuple[float, float, float],
        tails: Iterator[bytes],
    ) -> Steps:
        """_stream's answer, yielding when each next line is due."""
        out = self._out
        yield times[2] + s.first_token_delay
        if s.fault == "error_before":
            out.whole(500, {"error": s.fault_message}, "application/json", True)
            return
        first = time.monotonic()
        start = prefix(model)
        for line_tail in tails:
            if self._sent:
                yield time.monotonic() + s.interval
            out.line(start + go_timestamp(time.time_ns()).encode() + line_tail)
            self._sent += 1
        if self._sent:
            yield time.monotonic() + s.interval
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
        keep, s = keep_alive(body.get("keep_alive")), self.sim._snapshot()
        self._check_options(body)
        with self._runner(found, keep, s):
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
                "total_duration": ns(time.monotonic() - self._started),
                "load_duration": ns(loaded - self._started),
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
        keep, s = keep_alive(body.get("keep_alive")), self.sim._snapshot()
        self._check_options(body)
        with self._runner(found, keep, s):
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
    def _runner(self, model: str, keep: float | None, s: Settings) -> Iterator[None]:
        """The model's runner for one request: loaded, silently, and kept in use.

        A hang-up from here on is recorded; the scheduler's full queue is a 503.
        """
        if s.fault == "busy":
            raise Reject(503, BUSY)
        with self.sim._using(model, keep, s.load_delay) as ready_at, self._streaming():
            self.wait(ready_at)  # loading: as silent as the wait for a slot
            yield

    @staticmethod
    def _check_options(body: dict[str, Any]) -> None:
        """scheduleRunner reads the options before it asks for a runner: a 500."""
        error = option_error(body.get("options"))
        if error:
            raise Reject(500, error)

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
        self._openai(responses.request, self._chat, raw)

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
