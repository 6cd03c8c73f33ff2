"""The httpx/httpcore hooks the official client cannot be given any other way.

- The upstream socket is reported the moment a request is written on it, so that
  a client's hang-up can shut it down even before Ollama sends its headers.
- A streamed body's h11 state and socket are handed to the one loop that reads
  every stream's body.
- The client keeps no cookies.

Both lean on httpcore internals (pinned in requirements.txt, with h11); the
canary tests in tests/unit/test_transport.py fail loudly if an upgrade moves them.
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
    bound: Any = response.stream  # httpx's BoundSyncStream
    connection = bound._stream._httpcore_stream._stream._connection
    sock = connection._network_stream.get_extra_info("socket")
    return connection._h11_state, sock


def keep_no_cookies(client: httpx.Client) -> None:
    """One client carries every user's requests, so a cookie that Ollama (or a
    proxy before it) set for one must never go out with another's. Not reading
    responses for cookies also saves httpx about 0.1 ms before each first byte.
    """
    client._cookies = _NoCookies()  # the public setter wraps any jar in Cookies


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class Transport(httpx.HTTPTransport):
    """httpx's transport, plus two things the ollama client cannot be told."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Ollama sends its headers only with its first line, possibly minutes in,
        # so the socket must be known from the moment the request is written.
        pool = self._pool  # httpcore.ConnectionPool; no public way to set this
        pool._network_backend = _Backend(pool._network_backend)


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
