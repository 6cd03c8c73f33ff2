"""The one place that talks to Ollama: the official client, pump threads, hang-ups.

Each streamed request is driven by a pump thread from a bounded pool. The pump
iterates the official client's synchronous iterator and hands every chunk to the
response generator through a queue, so the response side can send heartbeats,
time out and notice a client that left while the upstream is silent. Cancelling
shuts the upstream socket down, which wakes a pump blocked in a read at once and
makes Ollama stop generating.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable, Iterator
from queue import Empty, SimpleQueue
from typing import Any

import httpcore
import httpx
import ollama
import pydantic

from chatsvc.errors import (
    BadRequest,
    ChatsvcError,
    NotFound,
    StreamsFull,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)

# Events a Stream hands to the response side, besides upstream chunks (dicts).
CANCELLED = "cancelled"
SHUTDOWN = "shutdown"
CHECK_OLLAMA_HOST = "check that it is running and that OLLAMA_HOST points at it"

_local = threading.local()


class Stream:
    """One streamed upstream request, as seen from the response generator."""

    def __init__(self) -> None:
        self._events: SimpleQueue[dict[str, Any] | ChatsvcError | str] = SimpleQueue()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.cancelled = False
        self.done = False  # the done chunk is queued: nothing left to cancel

    def get(self, timeout: float) -> dict[str, Any] | ChatsvcError | str | None:
        """The next chunk, error or event; None if nothing came within timeout."""
        try:
            return self._events.get(timeout=timeout)
        except Empty:
            return None

    def get_many(
        self, timeout: float
    ) -> list[dict[str, Any] | ChatsvcError | str | None]:
        """Like get, plus whatever else is already queued: one write for a burst."""
        first = self.get(timeout)
        if first is None:
            return [None]
        events: list[dict[str, Any] | ChatsvcError | str | None] = [first]
        try:
            while True:
                events.append(self._events.get_nowait())
        except Empty:
            return events

    def put(self, event: dict[str, Any] | ChatsvcError | str) -> None:
        self._events.put(event)

    def cancel(self, event: str = CANCELLED) -> None:
        """Hang up on Ollama and wake the response side; safe from any thread."""
        with self._lock:
            if self.cancelled or self.done:
                return
            self.cancelled = True
            sock = self._sock
        self._events.put(event)
        if sock is not None:
            _shutdown(sock)

    def _put_done(self, part: dict[str, Any]) -> None:
        with self._lock:
            self.done = not self.cancelled
        self._events.put(part)

    def _attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            cancelled = self.cancelled
        if cancelled:
            _shutdown(sock)


class Upstream:
    """The Ollama client, the pump pool and the hang-up watcher of one process."""

    def __init__(self, host: str, timeout_s: float, max_streams: int) -> None:
        self.host = host
        # The advice in the 503 for an Ollama nobody answers at.
        self.unreachable_hint = CHECK_OLLAMA_HOST
        self._ending = False  # shutting down: streams started from now end at once
        # Pumps may outlive their response by the moment a cancelled read takes
        # to fail, so pumps and connections get some room over the stream limit.
        room = max_streams + 16
        # httpcore scans every pooled connection on each request, so keep only a
        # few idle ones: Ollama itself runs a handful of generations at once.
        transport = _Transport(
            limits=httpx.Limits(max_connections=room, max_keepalive_connections=16),
        )
        self._client = ollama.Client(
            host=host,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=transport,
            # A proxy from the environment would bypass the transport that lets
            # us hang up on Ollama.
            trust_env=False,
        )
        self._pumps = _Pumps(room)
        self._open: set[Stream] = set()
        self._open_lock = threading.Lock()
        self._watcher = _HangupWatcher()

    def stream(self, path: str, body: dict[str, Any]) -> Stream:
        """Start a streamed request on a pump thread; chunks arrive on the Stream."""
        stream = Stream()
        self._pumps.submit(self._pump, stream, path, {**body, "stream": True})
        with self._open_lock:
            self._open.add(stream)
            ending = self._ending
        if ending:
            stream.cancel(SHUTDOWN)
        return stream

    def finish(self, stream: Stream) -> None:
        """The response is over: stop the upstream unless it got to its done."""
        stream.cancel()
        with self._open_lock:
            self._open.discard(stream)

    def watch(self, client_sock: socket.socket, stream: Stream) -> Callable[[], None]:
        """Cancel stream as soon as the client's socket reports the peer's close."""
        return self._watcher.watch(client_sock, stream.cancel)

    def end_all_after(self, seconds: float) -> None:
        """Let open streams run for seconds more, then end them (server shutdown)."""
        timer = threading.Timer(seconds, self._end_all)
        timer.daemon = True
        timer.start()

    def _end_all(self) -> None:
        with self._open_lock:
            self._ending = True
            streams = list(self._open)
        for stream in streams:
            stream.cancel(SHUTDOWN)

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One plain request/response call; returns the decoded JSON."""
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            # _request_raw is the client's own error handling around httpx: a
            # non-2xx becomes ResponseError with Ollama's message and status.
            response = self._client._request_raw(  # type: ignore[no-untyped-call]
                method, path, json=body, **kwargs
            )
            return response.json()
        except Exception as exc:
            raise to_error(exc, self.host, self.unreachable_hint) from None

    def close(self) -> None:
        self._end_all()
        self._client.close()  # type: ignore[no-untyped-call]

    def _pump(self, stream: Stream, path: str, body: dict[str, Any]) -> None:
        if stream.cancelled:
            return
        _local.stream = stream
        parts: Iterator[dict[str, Any]] | None = None
        try:
            # cls=dict keeps Ollama's chunks exactly as sent (every field, in
            # order) instead of a pydantic round trip that drops unknown fields.
            parts = self._client._request(dict, "POST", path, json=body, stream=True)
            for part in parts:
                if stream.done:
                    continue  # reading on to the end lets the connection be reused
                if part.get("done"):
                    stream._put_done(part)
                else:
                    stream.put(part)
            if not stream.done:
                error = UpstreamError("Ollama ended the stream without a done line")
                error.upstream_kind = "protocol"
                stream.put(error)
        except Exception as exc:
            if not stream.cancelled:
                stream.put(to_error(exc, self.host, self.unreachable_hint))
        finally:
            _local.stream = None
            if parts is not None:
                # Closing an unfinished response drops its connection: the
                # hang-up that tells Ollama to stop.
                parts.close()  # type: ignore[attr-defined]


def to_error(
    exc: BaseException,
    host: str,
    unreachable_hint: str = CHECK_OLLAMA_HOST,
) -> ChatsvcError:
    """Translate what the ollama client and httpx raise into our error tree."""
    if isinstance(exc, ChatsvcError):
        return exc
    error: ChatsvcError
    if isinstance(exc, ollama.ResponseError):
        # Ollama's own words, and its status where that status is the client's
        # doing (400, 404) or a reason to retry (503).
        kind = {400: BadRequest, 404: NotFound, 503: Unavailable}
        error = kind.get(exc.status_code, UpstreamError)(exc.error)
        error.upstream_kind = (
            f"status_{exc.status_code}" if exc.status_code > 0 else ("in_band")
        )
    elif isinstance(exc, ConnectionError | httpx.ConnectError | httpx.ConnectTimeout):
        error = Unavailable(f"cannot reach Ollama at {host}; {unreachable_hint}")
        error.upstream_kind = "unreachable"
    elif isinstance(exc, httpx.ReadTimeout):
        error = UpstreamTimeout(
            "Ollama sent nothing for too long (CHATSVC_UPSTREAM_TIMEOUT_S); "
            "try again later"
        )
        error.upstream_kind = "timeout"
    elif isinstance(exc, httpx.HTTPError | ValueError | pydantic.ValidationError):
        error = UpstreamError(f"Ollama's answer was cut off or malformed: {exc}")
        error.upstream_kind = "protocol"
    else:
        error = UpstreamError(f"unexpected failure talking to Ollama: {exc!r}")
        error.upstream_kind = "unexpected"
    return error


class _Pumps:
    """Pump threads: reused while streams keep coming, gone after a quiet spell.

    Starting a thread per stream costs a hand-over of the GIL before the first
    byte; an executor's threads never end, so one burst would leave them for good.
    """

    def __init__(self, limit: int, idle_s: float = 2.0) -> None:
        self._limit = limit
        self._idle_s = idle_s
        self._work: SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = (
            SimpleQueue()
        )
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for work that no submit has claimed yet

    def submit(self, work: Callable[..., None], *args: Any) -> None:
        with self._lock:
            start = not self._idle
            if not start:
                self._idle -= 1
            elif self._threads >= self._limit:
                raise StreamsFull("chatsvc is at its limit of streams; try again")
            else:
                self._threads += 1
        self._work.put((work, args))
        if start:
            threading.Thread(target=self._run, name="chatsvc-pump", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                work, args = self._work.get(timeout=self._idle_s)
            except Empty:
                with self._lock:
                    if self._idle:  # no submit counts on this thread: let it go
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue  # a submit claimed it just now; the work is on its way
            try:
                work(*args)
            finally:
                with self._lock:
                    self._idle += 1


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: nothing left to hang up


class _HangupWatcher:
    """One thread per process that waits for clients' sockets to be closed.

    A client that leaves is otherwise noticed only at the next write, which during
    a long prompt evaluation may be a heartbeat interval away.
    """

    def __init__(self) -> None:
        self._poll = select.epoll()
        self._watched: dict[int, tuple[socket.socket, Callable[[], None]]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(
        self, sock: socket.socket, callback: Callable[[], None]
    ) -> Callable[[], None]:
        fd = sock.fileno()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="chatsvc-hangups", daemon=True
                )
                self._thread.start()
            self._watched[fd] = (sock, callback)
            # RDHUP alone: a pipelined next request (readable data) is no hang-up.
            self._poll.register(fd, select.EPOLLRDHUP | select.EPOLLONESHOT)

        def unwatch() -> None:
            with self._lock:
                if self._watched.pop(fd, None) is not None:
                    self._poll.unregister(fd)

        return unwatch

    def _run(self) -> None:
        while True:
            for fd, _ in self._poll.poll():
                with self._lock:
                    entry = self._watched.get(fd)
                    if entry is None:
                        continue
                    state = _peer_state(entry[0])
                    if state == "open":
                        # The event was for a socket unwatched and closed since,
                        # whose number this newer connection now has.
                        self._poll.modify(fd, select.EPOLLRDHUP | select.EPOLLONESHOT)
                        continue
                    del self._watched[fd]
                    self._poll.unregister(fd)
                if state == "closed":
                    entry[1]()
                # "unknown": unread bytes hide whether the peer closed too; the
                # next write will tell.


def _peer_state(sock: socket.socket) -> str:
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return "open"
    except OSError:
        return "closed"
    return "closed" if data == b"" else "unknown"


class _Transport(httpx.HTTPTransport):
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
    """Tells the pump's Stream which socket carries its request."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        self.read = inner.read  # type: ignore[method-assign]  # hot path: no wrapper

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        stream: Stream | None = getattr(_local, "stream", None)
        if stream is not None:
            stream._attach(self._inner.get_extra_info("socket"))
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
