"""The httpx/httpcore hooks the official client cannot be given any other way.

- The upstream socket is reported the moment a request is written on it, so that
  a client's hang-up can shut it down even before Ollama sends its headers.
- Raw U+0085/U+2028/U+2029 in Ollama's bytes are escaped before httpx's line
  splitter (and so the official client) sees them.
- A streamed body's h11 state and socket are handed to the one loop that reads
  every stream's body.

Both lean on httpcore internals (pinned in requirements.txt); the canary tests in
tests/unit/test_transport.py fail loudly if an upgrade moves them.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import h11
import httpcore
import httpx

_local = threading.local()


@contextmanager
def report_socket(attach: Callable[[socket.socket], None]) -> Iterator[None]:
    """Call attach with the socket of each request this thread writes meanwhile."""
    _local.attach = attach
    try:
        yield
    finally:
        _local.attach = None


def body_of(response: httpx.Response) -> tuple[h11.Connection, socket.socket]:
    """The h11 state and the socket of a streamed response whose body is unread.

    One epoll loop reads every stream's body (chatsvc.upstream), which needs
    both; httpx offers neither, so this walks httpcore's objects.
    """
    escaped: Any = response.stream._stream  # type: ignore[union-attr]
    connection = escaped._inner._httpcore_stream._stream._connection
    sock = connection._network_stream.get_extra_info("socket")
    return connection._h11_state, sock


class Transport(httpx.HTTPTransport):
    """httpx's transport, plus two things the ollama client cannot be told."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Ollama sends its headers only with its first line, possibly minutes in,
        # so the socket must be known from the moment the request is written.
        pool = self._pool  # httpcore.ConnectionPool; no public way to set this
        pool._network_backend = _Backend(pool._network_backend)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.stream = _EscapedLineBreaks(response.stream)  # type: ignore[arg-type]
        return response


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _NetworkStream(self._inner.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _NetworkStream(self._inner.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _NetworkStream(httpcore.NetworkStream):
    """Reports the socket that carries a request to report_socket's caller."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        self.read = inner.read  # type: ignore[method-assign]  # hot path: no wrapper

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        attach = getattr(_local, "attach", None)
        if attach is not None:
            attach(self._inner.get_extra_info("socket"))
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _NetworkStream(self._inner.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


_RAW_BREAKS = (
    (b"\xc2\x85", b"\\u0085"),
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
)


def escape_line_breaks(data: bytes) -> tuple[bytes, bytes]:
    """Escape raw U+0085/U+2028/U+2029; return (escaped, undecided tail).

    Go writes U+0085 raw inside JSON strings, and httpx's line splitter (which the
    official client uses) breaks lines there. In NDJSON these bytes can only be
    inside strings, so a JSON escape is exact. A sequence cut at the end of data
    is held back as the tail, to be prefixed to the next piece.
    """
    tail = b""
    for prefix in (b"\xe2\x80", b"\xe2", b"\xc2"):
        if data.endswith(prefix):
            data, tail = data[: -len(prefix)], prefix
            break
    if b"\xc2\x85" in data or b"\xe2\x80\xa8" in data or b"\xe2\x80\xa9" in data:
        for raw, escaped in _RAW_BREAKS:
            data = data.replace(raw, escaped)
    return data, tail


class _EscapedLineBreaks(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        tail = b""
        for piece in self._inner:
            data, tail = escape_line_breaks(tail + piece if tail else piece)
            if data:
                yield data
        if tail:
            yield tail

    def close(self) -> None:
        self._inner.close()
