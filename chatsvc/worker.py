"""gunicorn's gthread worker with a deadline for slow clients and JSON errors.

gthread hands a connection to a thread as soon as its first byte arrives, and the
thread then reads the rest of the head and the body with no deadline: a client
that sends one byte a second holds a thread for as long as it likes, and a few
hundred of them stop the server. Here the main loop collects each request's head
(and a small body of known length) without a thread, and a thread reads whatever
is left under the same deadline, CHATSVC_CLIENT_TIMEOUT_S from the request's first
byte.
"""

from __future__ import annotations

import errno
import math
import re
import selectors
import socket
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.workers import gthread
from werkzeug.exceptions import RequestTimeout

from chatsvc.config import load
from chatsvc.framing import error_body

# The head is handed to a thread once complete, or once this large: the parser
# then reads the rest (under the deadline) and applies gunicorn's own limits.
_HEAD_BUFFER = 65536
_CONTENT_LENGTH = re.compile(rb"\ncontent-length:[ \t]*(\d{1,12})[ \t]*\r", re.I)
_EXPECT = re.compile(rb"\nexpect:", re.I)
_TIMEOUT_MESSAGE = (
    "the request did not arrive within CHATSVC_CLIENT_TIMEOUT_S; send it again"
)
# gunicorn's own rejections, in words a client can act on; others keep its text.
_MESSAGES = {
    414: "the request line is longer than this server accepts",
    431: "the request headers are too large or too many",
    500: "internal error; see the server log",
}


class ClientTimeout(RequestTimeout):
    """The request's head or body did not arrive in time (an HTTP 408)."""

    description = _TIMEOUT_MESSAGE


class _ReadDeadline:
    """A client socket's reading side for gunicorn's parser, with a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline = math.inf
        self.timed_out = False
        # gunicorn bounds its drain of an unread body with these.
        self.gettimeout = sock.gettimeout
        self.settimeout = sock.settimeout

    def recv(self, size: int) -> bytes:
        if self.deadline == math.inf:
            return self._sock.recv(size)
        remaining = self.deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            self._sock.settimeout(remaining)
            return self._sock.recv(size)
        except TimeoutError:
            self.timed_out = True
            # Not an OSError: werkzeug would turn that into a 400 "disconnected".
            raise ClientTimeout() from None
        finally:
            self._sock.settimeout(None)


class _Conn(gthread.TConn):  # type: ignore[misc]
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.head = bytearray()
        self.deadline = 0.0  # 0: none yet
        self.reader: _ReadDeadline | None = None

    def init(self) -> None:
        # Called by the thread before every request on the connection.
        super().init()
        if self.is_http2:
            return
        if self.reader is None:
            self.reader = _ReadDeadline(self.sock)
            self.parser.unreader.sock = self.reader
        self.reader.deadline = self.deadline or math.inf
        if self.head:
            self.parser.unreader.unread(bytes(self.head))
            self.head.clear()


class Worker(gthread.ThreadWorker):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = load()
        self.client_timeout: float = config["CHATSVC_CLIENT_TIMEOUT_S"]
        self.max_body: int = config["CHATSVC_MAX_BODY_BYTES"]
        self.heads: deque[_Conn] = deque()  # still sending their head, by deadline
        self._stopped_at = 0.0

    def init_process(self) -> None:
        # gunicorn's one place that writes its own error responses (HTML); this
        # runs in the worker process only.
        util.write_error = _write_json_error
        super().init_process()

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self._await_head(_Conn(self.cfg, sock, addr, listener.getsockname()))

    def on_client_socket_readable(self, conn: _Conn, client: socket.socket) -> None:
        # A kept-alive connection's next request: its head, too, without a thread.
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_head(conn)

    def _await_head(self, conn: _Conn) -> None:
        conn.deadline = time.monotonic() + self.client_timeout
        if self.cfg.is_ssl or self.cfg.http2_cleartext != "off":
            # An encrypted head, or an HTTP/2 preface gunicorn reads from the
            # socket itself: left to the thread, as gthread does.
            self.enqueue_req(conn)
            return
        conn.sock.setblocking(False)
        self.heads.append(conn)
        on_readable = partial(self._on_head_bytes, conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, on_readable)
        on_readable(conn.sock)  # a kept-alive client's bytes are already here

    def _on_head_bytes(self, conn: _Conn, client: socket.socket) -> None:
        try:
            data = client.recv(_HEAD_BUFFER)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the client left
            self._stop_awaiting(conn)
            self.nr_conns -= 1
            conn.close()
            return
        conn.head += data
        if self._request_in(conn.head):
            self._stop_awaiting(conn)
            conn.data_ready = True
            self.enqueue_req(conn)

    def _request_in(self, data: bytearray) -> bool:
        """Whether data holds enough of the request to hand it to a thread."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return b"\n\n" in data or len(data) >= _HEAD_BUFFER
        # A small body of known length is collected here too, as nginx would;
        # a chunked one, or one the client sends only after "100 Continue", is
        # read by the thread under the deadline.
        length = _CONTENT_LENGTH.search(data, 0, end + 2)
        if length is None or _EXPECT.search(data, 0, end):
            return True
        size = int(length[1])
        return size > self.max_body or len(data) >= end + 4 + size

    def _stop_awaiting(self, conn: _Conn) -> None:
        self.poller.unregister(conn.sock)
        self.heads.remove(conn)

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        if not self.alive:
            # Stopping: a head still arriving gets what a kept-alive connection
            # gets, gunicorn's stop linger (the same cap keeps the order).
            self._stopped_at = self._stopped_at or now
            cap = self._stopped_at + gthread.STOP_KEEPALIVE_LINGER
            for conn in self.heads:
                conn.deadline = min(conn.deadline, cap)
        while self.heads and self.heads[0].deadline <= now:
            conn = self.heads[0]
            self._stop_awaiting(conn)
            self.nr_conns -= 1
            if conn.head:
                try:
                    _write_json_error(conn.sock, 408, "Request Timeout", "")
                except OSError:
                    pass  # the client is gone or not reading: closing says it all
            conn.close()

    def handle(self, conn: _Conn) -> Any:
        if not conn.deadline:  # pipelined: its head came with the last request
            conn.deadline = time.monotonic() + self.client_timeout
        try:
            result = super().handle(conn)
        finally:
            conn.deadline = 0.0
        if conn.reader is not None and conn.reader.timed_out:
            # Done here rather than by the main loop's graceful close, which would
            # stall every connection while it drains a client that trickles on.
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return False
        return result

    def _keepalive_after(self, conn: _Conn, keepalive: bool) -> bool:
        if conn.reader is not None:
            if conn.reader.timed_out:
                return False
            # The request is in; gunicorn bounds the drain of an unread body.
            conn.reader.deadline = math.inf
        return bool(super()._keepalive_after(conn, keepalive))

    def handle_error(self, req: Any, client: Any, addr: Any, exc: Exception) -> None:
        if isinstance(exc, ClientTimeout):
            self.log.info("Request from %s not received in time", addr)
            try:
                _write_json_error(client, 408, "Request Timeout", "")
            except OSError:
                pass
            return
        super().handle_error(req, client, addr, exc)


def _write_json_error(sock: Any, status: int, reason: str, message: str) -> None:
    """util.write_error's replacement: the {"error"} shape instead of HTML."""
    if status == 408:
        text = _TIMEOUT_MESSAGE
    else:
        text = _MESSAGES.get(status) or f"the request is malformed: {message}"
    body = error_body(text)
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)
