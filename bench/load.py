"""The benchmark's load client: raw sockets and one selector, cheap per chunk.

Speaks just enough HTTP/1.1 to POST /api/chat and read a streamed NDJSON answer
(chunked, Content-Length or close-delimited), and records what the benchmark
needs: when the request was sent, when the first body byte arrived, when each
line was complete, and whether the stream ended with its done line.
"""

from __future__ import annotations

import json
import random
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

now = time.monotonic  # CLOCK_MONOTONIC: comparable with the simulator's stamps


def chat_request(
    port: int, num_predict: int, prompt: str = "hello", path: str = "/api/chat"
) -> bytes:
    body = json.dumps(
        {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": prompt}],
            "options": {"num_predict": num_predict},
        },
        separators=(",", ":"),
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "User-Agent: chatsvc-bench\r\nAccept: application/x-ndjson\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Response:
    """Incremental parser for one streamed response; feed() it what recv returns."""

    __slots__ = (
        "status",
        "_head",
        "_mode",
        "_left",
        "_buf",
        "_line",
        "t_send",
        "t_first",
        "t_last",
        "lines",
        "done",
        "ended",
        "error",
        "gaps",
    )

    def __init__(self, gaps: list[float] | None = None) -> None:
        self.status = 0
        self._head = b""
        self._mode = ""  # "chunked", "length", "close"
        self._left = 0  # bytes left in the current chunk / the body
        self._buf = b""  # unparsed chunked framing
        self._line = b""  # a body line not yet complete
        self.t_send = 0.0
        self.t_first = 0.0  # first body byte
        self.t_last = 0.0  # last complete line
        self.lines = 0
        self.done = False  # a line with "done":true arrived
        self.ended = False  # the body ended (terminating chunk, length or close)
        self.error = ""
        self.gaps = gaps  # when set, gaps between lines (seconds) are appended

    def feed(self, data: bytes, t: float) -> None:
        if not data:  # the peer closed
            if self._mode == "close":
                self.ended = True
            elif not self.ended:
                self.error = self.error or "connection closed mid-response"
                self.ended = True
            return
        if not self._mode:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self._head[:end], self._head[end + 4 :]
            self._head = b""
            lines = head.split(b"\r\n")
            self.status = int(lines[0].split()[1])
            fields = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip().lower()
            if b"chunked" in fields.get(b"transfer-encoding", b""):
                self._mode = "chunked"
            elif b"content-length" in fields:
                self._mode = "length"
                self._left = int(fields[b"content-length"])
                if self._left == 0:
                    self.ended = True
            else:
                self._mode = "close"
            if not data:
                return
        if self._mode == "chunked":
            self._chunked(data, t)
        else:
            if self._mode == "length":
                data = data[: self._left]
                self._left -= len(data)
                if self._left == 0:
                    self.ended = True
            self._body(data, t)

    def _chunked(self, data: bytes, t: float) -> None:
        buf = self._buf + data if self._buf else data
        pos = 0
        size = len(buf)
        while pos < size:
            if self._left > 0:  # inside a chunk's payload
                take = min(self._left, size - pos)
                self._body(buf[pos : pos + take], t)
                self._left -= take
                pos += take
                if self._left == 0:
                    self._left = -2  # its CRLF follows
                continue
            if self._left < 0:  # skipping the CRLF after a payload
                skip = min(-self._left, size - pos)
                pos += skip
                self._left += skip
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            chunk = int(buf[pos:eol].split(b";")[0], 16)
            pos = eol + 2
            if chunk == 0:
                self.ended = True  # trailers, if any, are not read
                pos = size
                break
            self._left = chunk
        self._buf = buf[pos:] if pos < size else b""

    def _body(self, data: bytes, t: float) -> None:
        if not data:
            return
        if not self.t_first:
            self.t_first = t
        if b"\n" not in data:
            self._line += data
            return
        *complete, self._line = (self._line + data).split(b"\n")
        for line in complete:
            if not line:
                continue
            if self.lines and self.gaps is not None:
                self.gaps.append(t - self.t_last)
            self.lines += 1
            self.t_last = t
            if b'"done":true' in line:
                self.done = True
            elif line.startswith(b'{"error"'):
                self.error = line.decode(errors="replace")[:200]

    @property
    def complete(self) -> bool:
        return self.status == 200 and self.done and self.ended and not self.error


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def one_stream(
    port: int, num_predict: int, timeout: float = 30.0, path: str = "/api/chat"
) -> Response:
    """Send one request on a new connection and read its whole answer."""
    sock = _connect(port)
    try:
        sock.settimeout(timeout)
        request = chat_request(port, num_predict, path=path)
        response = Response()
        response.t_send = now()
        sock.sendall(request)
        while not response.ended:
            data = sock.recv(262144)
            response.feed(data, now())
        return response
    finally:
        sock.close()


def hang_up_after(
    port: int, lines: int, wait: float, phase: float, rng: random.Random
) -> float:
    """Start a stream, hang up after `lines` lines (or `wait` s), return the time.

    The hang-up comes a random fraction of `phase` seconds after the trigger, so
    it lands anywhere within a chunk interval. The socket is drained first so the
    close sends a FIN, as a client that stops reading and closes does.
    """
    sock = _connect(port)
    sock.settimeout(0.01)
    response = Response()
    sock.sendall(chat_request(port, 100000))
    start = now()
    while response.lines < lines and now() - start < wait:
        try:
            response.feed(sock.recv(65536), now())
        except TimeoutError:
            pass
        if response.ended:
            break
    deadline = now() + rng.uniform(0.0, phase)
    while now() < deadline:
        try:
            response.feed(sock.recv(65536), now())
        except TimeoutError:
            pass
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
    except (BlockingIOError, OSError):
        pass
    at = now()
    sock.close()
    return at


def many_streams(
    port: int,
    n: int,
    num_predict: int,
    ramp_s: float,
    deadline_s: float,
    sample_at: float | None = None,
    sampler: Callable[[int], Any] | None = None,
    path: str = "/api/chat",
) -> dict[str, Any]:
    """Open n streams spread over ramp_s seconds and read them all in one loop.

    sampler(open_streams) is called once, sample_at seconds after the start, and
    its result is returned as "sample".
    """
    request = chat_request(port, num_predict, path=path)
    selector = selectors.DefaultSelector()
    gaps: list[float] = []
    responses: list[Response] = []
    open_socks: dict[socket.socket, Response] = {}
    connect_errors = 0
    start = now()
    end = start + deadline_s
    sample: Any = None
    sampled = sample_at is None or sampler is None
    started = 0
    while (started < n or open_socks) and now() < end:
        t = now()
        while started < n and t >= start + ramp_s * started / n:
            try:
                sock = _connect(port)
            except OSError:
                connect_errors += 1
                started += 1
                continue
            sock.setblocking(False)
            response = Response(gaps)
            response.t_send = now()
            sock.send(request)  # small: fits the empty send buffer at once
            selector.register(sock, selectors.EVENT_READ, response)
            open_socks[sock] = response
            responses.append(response)
            started += 1
            t = now()
        if not sampled and t >= start + sample_at:  # type: ignore[operator]
            sampled = True
            sample = sampler(len(open_socks))  # type: ignore[misc]
        if started < n:
            timeout = max(0.0, start + ramp_s * started / n - t)
        else:
            timeout = 0.05
        if not sampled:
            timeout = min(timeout, max(0.0, start + sample_at - t))  # type: ignore[operator]
        for key, _ in selector.select(timeout):
            sock = key.fileobj  # type: ignore[assignment]
            response = key.data
            try:
                data = sock.recv(65536)
            except OSError as exc:
                data = b""
                response.error = response.error or f"recv: {exc}"
            response.feed(data, now())
            if response.ended:
                selector.unregister(sock)
                sock.close()
                del open_socks[sock]
    for sock in open_socks:
        selector.unregister(sock)
        sock.close()
    selector.close()
    return {
        "responses": responses,
        "gaps": gaps,
        "connect_errors": connect_errors,
        "elapsed": now() - start,
        "sample": sample,
    }
