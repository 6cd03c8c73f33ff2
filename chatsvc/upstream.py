"""The one place that talks to Ollama: the official client, pumps, the body loop.

A streamed request that needs no routing, to a plain-HTTP host, is sent by the
response's own thread on a kept-alive socket, and that thread reads Ollama's
head and first line too, with httptools (_send): what the Flask one-liner's
thread does through httpx, without its cost. One that is routed among hosts
(chatsvc.hosts), or goes over TLS, is sent by a pump thread from a bounded pool
with the official client's own httpx client; the pump waits for the head, a free
host, or another host after a failure. Either way one epoll loop per process and
host (_Bodies) then reads the body, with every other stream's, and hands each
chunk on: until the response commits its status, to a queue for the response
side to judge; after that, to the relay's sink on the loop's own thread, so a
chunk wakes one thread, not two, and many ready bodies are read in one wake.
Cancelling shuts the upstream socket down, which ends any wait or read on it at
once and makes Ollama stop.
"""

from __future__ import annotations

import enum
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

import h11
import httptools
import httpx
import ollama
import pydantic

from chatsvc import sockets, transport
from chatsvc.endpoints import Chunk, Endpoint, Line, SseEvent
from chatsvc.errors import (
    BadRequest,
    ChatsvcError,
    NotFound,
    StreamsFull,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
    upstream,
)
from chatsvc.framing import escape_line_breaks

CHECK_OLLAMA_HOST = "check that it is running and that OLLAMA_HOST points at it"


class Signal(enum.Enum):
    """What a Stream hands the response side besides chunks and errors."""

    SILENCE = "silence"  # a heartbeat interval passed with nothing from Ollama
    CANCELLED = "cancelled"  # the client went away
    SHUTDOWN = "shutdown"  # the server is stopping
    ENDED = "ended"  # the sink has the stream's end


Event = Chunk | SseEvent | ChatsvcError | Signal
Sink = Callable[[Event], bool]  # True once it has the stream's end


@dataclass(frozen=True)
class Answer:
    """A plain (not streamed) answer from Ollama, relayed as it came."""

    status: int
    content_type: str | None
    content: bytes
    host: str = ""  # host:port of the Ollama that answered

    def json(self) -> Any:
        return json.loads(self.content)


class Stream:
    """One streamed upstream request, as seen from the response generator."""

    def __init__(self, admit: Callable[[], object] | None = None) -> None:
        self._admit = admit
        # Events until a sink is set; signals, and bytes for the response to
        # send itself, always.
        self._events: SimpleQueue[Event | bytes] = SimpleQueue()
        self._lock = threading.Lock()
        self._sink: Sink | None = None
        self._sink_lock = threading.Lock()  # one event at a time into the sink
        self._sock: socket.socket | None = None
        self.cancelled = False
        self.done = False  # the last chunk is queued: nothing left to cancel
        self.sent = False  # a chunk is queued: no other host may take over
        # Its pump or body has given back what it held (a host's slot, a socket).
        self.let_go = threading.Event()
        self.host: str | None = None  # host:port of the Ollama that serves it
        # The first take reads Ollama's head and first line on its own thread.
        self.read_first: Callable[[float], None] | None = None

    def admit(self) -> None:
        """Before anything reaches Ollama: wait for the stream's slot, or raise
        the 429 or 503 that refused it. Later calls pass."""
        admit, self._admit = self._admit, None
        if admit is not None:
            admit()

    def get(self, timeout: float) -> Event:
        """The next chunk, error or signal; SILENCE if nothing came in time."""
        item = self.take(timeout)
        assert not isinstance(item, bytes)  # only a sink's writer tells bytes
        return item

    def take(self, timeout: float) -> Event | bytes:
        """Like get, and bytes told by a sink that cannot write them itself."""
        if self.read_first is not None:
            read_first, self.read_first = self.read_first, None
            start = time.monotonic()
            read_first(timeout)
            timeout = max(0.0, timeout - (time.monotonic() - start))
        try:
            return self._events.get(timeout=timeout)
        except Empty:
            return Signal.SILENCE

    def put(self, event: Event) -> None:
        """Queue an event, or hand it to the sink on this thread once there is one."""
        with self._sink_lock:
            if self._sink is None:
                self._events.put(event)
            elif self._sink(event):
                self._sink = _drop  # a pump still reading on writes nothing more

    def tell(self, item: Event | bytes) -> None:
        """Queue something for the response side itself, past any sink."""
        self._events.put(item)

    def deliver_to(self, sink: Sink, first: Event) -> None:
        """Send first, then the events already queued, then each event as it comes,
        to sink, on the thread that has it. Signals stay queued for the response.
        """
        with self._sink_lock:
            queued: list[Event | bytes] = []
            try:
                while True:
                    queued.append(self._events.get_nowait())
            except Empty:
                pass
            ended = sink(first)
            for item in queued:
                if isinstance(item, Signal | bytes):
                    self._events.put(item)
                elif not ended:
                    ended = sink(item)
            self._sink = _drop if ended else sink

    def detach(self) -> None:
        """No sink from now on, once the event it may be writing is out."""
        with self._sink_lock:
            self._sink = _drop

    def cancel(self, signal: Signal = Signal.CANCELLED) -> None:
        """Hang up on Ollama and wake the response side; safe from any thread."""
        with self._lock:
            if self.cancelled or self.done:
                return
            self.cancelled = True
            sock = self._sock
        self.tell(signal)
        if sock is not None:
            _shutdown(sock)

    def put_last(self, part: Chunk | SseEvent) -> None:
        with self._lock:
            self.done = not self.cancelled
        self.put(part)

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            cancelled = self.cancelled
        if cancelled:
            _shutdown(sock)


def _drop(event: Event) -> bool:
    """The sink of a stream whose response has ended."""
    return True


class Upstream:
    """The Ollama client, the pump pool and the hang-up watcher of one process."""

    def __init__(
        self,
        host: str,
        timeout_s: float,
        max_streams: int,
        name: str = "",
        ca_file: str | None = None,
    ) -> None:
        self.host = host
        self.name = name or host  # host:port, for logs and metrics
        # The advice in the 503 for an Ollama nobody answers at.
        self.unreachable_hint = CHECK_OLLAMA_HOST
        self._ending = False  # shutting down: streams started from now end at once
        # Pumps may outlive their response by the moment a cancelled read takes
        # to fail, so pumps and connections get some room over the stream limit.
        room = max_streams + 16
        # httpcore scans every pooled connection on each request, so keep only a
        # few idle ones: Ollama itself runs a handful of generations at once.
        hooks = transport.Transport(
            limits=httpx.Limits(max_connections=room, max_keepalive_connections=16),
            # Else httpx's own: certifi's CAs, as trust_env=False leaves it.
            verify=ssl.create_default_context(cafile=ca_file) if ca_file else True,
        )
        self._client = ollama.Client(
            host=host,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=hooks,
            # A proxy from the environment would bypass the transport that lets
            # us hang up on Ollama.
            trust_env=False,
        )
        self._http: httpx.Client = self._client._client
        transport.keep_no_cookies(self._http)
        self._urls: dict[str, httpx.URL] = {}
        self._pumps = _Pumps(room)
        # Plain HTTP streams go out without httpx (_send); over TLS, httpx and a
        # pump still set up the connection.
        url = self._http.base_url
        # As many idle connections as streams: a burst of streams then finds its
        # connections open, sparing Ollama and chatsvc a handshake for each.
        self._conns = _Conns(url, room) if url.scheme == "http" else None
        # What _send writes before each body's length: the official client's
        # headers (httpx checked them), bar the compression it would undo.
        fields = [(k, v) for k, v in self._http.headers.raw if k != b"accept-encoding"]
        self._head = b"".join(b"%s: %s\r\n" % field for field in fields)
        self._bodies = _Bodies(timeout_s)
        self._timeout_s = timeout_s
        self._connect_s = min(timeout_s, 10.0)
        self._open: set[Stream] = set()
        self._open_lock = threading.Lock()
        self._watcher = _HangupWatcher()

    def stream(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        pump: Callable[[Stream, Endpoint, dict[str, Any]], None] | None = None,
        admit: Callable[[], object] | None = None,
    ) -> Stream:
        """Send a streamed request, here or on a pump thread; chunks arrive on
        the Stream.

        pump replaces this host's own (chatsvc.hosts routes among several);
        admit is what Stream.admit waits for.
        """
        stream = Stream(admit)
        body = {**body, "stream": True}
        if pump is None and self._conns is not None:
            self._send(stream, endpoint, body)
        else:
            work = self._pump if pump is None else pump
            self._pumps.submit(_letting_go, work, stream, endpoint, body)
        with self._open_lock:
            self._open.add(stream)
            ending = self._ending
        if ending:
            stream.cancel(Signal.SHUTDOWN)
        return stream

    def finish(self, stream: Stream) -> None:
        """The response is over: stop the upstream unless it got to its end.

        One that got there ends only once its pump has given its host's slot
        back, so a client that sends its next request on seeing the end finds
        that host free (chatsvc.hosts) rather than racing the pump for it.
        """
        stream.cancel()
        if stream.read_first is not None:  # never read: this ends it, now cancelled
            stream.take(0.0)
        if stream.done:
            stream.let_go.wait(_LET_GO_S)
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
            stream.cancel(Signal.SHUTDOWN)

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
        content: Iterable[bytes] | None = None,
    ) -> Answer:
        """One plain call; Ollama's answer as it came, or an error from the tree."""
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        if content is not None:
            kwargs["content"] = content
        elif body is not None:
            kwargs["json"] = body
        try:
            # _request_raw is the client's own error handling around httpx: a
            # non-2xx becomes ResponseError with Ollama's message and status.
            response = self._client._request_raw(  # type: ignore[no-untyped-call]
                method, path, **kwargs
            )
        except Exception as exc:
            raise to_error(exc, self.host, self.unreachable_hint) from None
        return Answer(
            response.status_code,
            response.headers.get("content-type"),
            response.content,
            self.name,
        )

    def _url(self, path: str) -> httpx.URL:
        # httpx would parse and merge the path with the base URL on every request.
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = self._http.build_request("POST", path).url
        return url

    def close(self) -> None:
        self._end_all()
        self._client.close()  # type: ignore[no-untyped-call]
        if self._conns is not None:
            self._conns.close()

    def _send(self, stream: Stream, endpoint: Endpoint, body: dict[str, Any]) -> None:
        """Send a stream's request from the response's own thread, without httpx.

        A pump thread cost two thread hand-offs before the first byte, and httpx
        much of the rest of 0.3 ms (bench/). This thread writes the request, and
        the first Stream.get reads the answer's head and first line here too;
        whatever is late past that wait, the body loop reads. Raises what refused
        the stream (its slot, an unreachable Ollama).
        """
        conns = self._conns
        assert conns is not None
        stream.host = self.name
        url = self._url(endpoint.path)
        try:
            content = json.dumps(
                body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode()
        except ValueError as exc:  # a NaN, say: as httpx's json= refuses it
            raise to_error(exc, self.host) from None
        # Written here, not by h11: its checks cost more than the rest of the
        # request, and every part was checked once already (the path and host by
        # httpx.URL, the headers by httpx, the body by json).
        request = b"POST %s HTTP/1.1\r\nhost: %s\r\n%scontent-length: %d\r\n\r\n%s" % (
            url.raw_path,
            url.netloc,
            self._head,
            len(content),
            content,
        )
        stream.admit()  # the store's answer has had the time that took to arrive
        try:
            sock = conns.get(self._connect_s, self._timeout_s)
        except Exception as exc:
            raise to_error(_as_httpx(exc), self.host, self.unreachable_hint) from None
        stream.attach(sock)
        try:
            sock.sendall(request)
            sock.setblocking(False)
        except Exception as exc:
            sock.close()
            raise to_error(_as_httpx(exc), self.host, self.unreachable_hint) from None

        def end(body: _Body) -> None:
            error = body.error
            if error is None and not stream.done:
                error = _no_done_line()
            if error is None and body.reusable:
                conns.put(sock)
            else:
                sock.close()
            if error is not None and not stream.cancelled:
                stream.put(to_error(error, self.host, self.unreachable_hint))
            stream.let_go.set()

        parts = _onto(stream, endpoint)
        body_ = _Sent(sock, endpoint.wire, parts, self._timeout_s, end)
        stream.read_first = partial(self._bodies.read_first, body_, stream)

    def _pump(self, stream: Stream, endpoint: Endpoint, body: dict[str, Any]) -> None:
        if stream.cancelled:
            return
        try:
            self.pump(stream, endpoint, body)
        except Exception as exc:
            if not stream.cancelled:
                stream.put(to_error(exc, self.host, self.unreachable_hint))

    def pump(self, stream: Stream, endpoint: Endpoint, body: dict[str, Any]) -> None:
        """Relay one upstream stream onto stream; raise what went wrong."""
        stream.host = self.name

        request = self._http.build_request("POST", self._url(endpoint.path), json=body)
        stream.admit()
        with transport.report_socket(stream.attach):
            # Ollama sends its headers with its first line.
            response = self._http.send(request, stream=True)
        try:
            if response.status_code >= 400:
                response.read()
                # As the official client reports it: Ollama's words and status.
                raise ollama.ResponseError(response.text, response.status_code)
            self._bodies.read(response, endpoint.wire, _onto(stream, endpoint))
        finally:
            # An unfinished body drops its connection: the hang-up that tells
            # Ollama to stop. A finished one goes back to the pool.
            response.close()
        if not stream.done:
            raise _no_done_line()


def _onto(stream: Stream, endpoint: Endpoint) -> Callable[[Chunk | SseEvent], None]:
    """Where a body's parts go: onto stream, its last marked, a swallowed error
    raised."""

    def part(part: Chunk | SseEvent) -> None:
        if stream.done:
            return  # reading on to the end lets the connection be reused
        stream.sent = True
        if endpoint.is_last(part):
            stream.put_last(part)
        elif endpoint.swallowed_error(part):
            raise upstream(UpstreamError, _SWALLOWED, "in_band")
        else:
            stream.put(part)

    return part


def _no_done_line() -> ChatsvcError:
    return upstream(
        UpstreamError, "Ollama ended the stream without a done line", "protocol"
    )


_SWALLOWED = (
    "Ollama failed in the middle of the answer and did not say why "
    "(its /v1 layer drops the message); try again"
)


def _message(error: Any) -> str:
    # /v1 errors are OpenAI's {"message": …} objects; the rest are plain text.
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error) if error else "Ollama answered with an error and no message"


# Ollama's own statuses pass through, so every client sees what Ollama would
# have told it; these few get a class of their own (503: Retry-After).
_STATUSES: dict[int, type[ChatsvcError]] = {
    400: BadRequest,
    404: NotFound,
    503: Unavailable,
}

# httpx's and the client's exceptions, most specific first.
_Caught = tuple[type[BaseException], ...]
_EXCEPTIONS: tuple[tuple[_Caught, type[ChatsvcError], str], ...] = (
    (
        (ConnectionError, httpx.ConnectError, httpx.ConnectTimeout),
        Unavailable,
        "unreachable",
    ),
    ((httpx.ReadTimeout,), UpstreamTimeout, "timeout"),
    (
        (httpx.HTTPError, ValueError, pydantic.ValidationError),
        UpstreamError,
        "protocol",
    ),
)

_TEXTS = {
    "unreachable": "cannot reach Ollama at {host}; {hint}",
    "timeout": "Ollama sent nothing for too long (CHATSVC_UPSTREAM_TIMEOUT_S); "
    "try again later",
    "protocol": "Ollama's answer was cut off or malformed: {exc}",
}


def to_error(
    exc: BaseException,
    host: str,
    unreachable_hint: str = CHECK_OLLAMA_HOST,
) -> ChatsvcError:
    """Translate what the ollama client and httpx raise into our error tree."""
    if isinstance(exc, ChatsvcError):
        return exc
    if isinstance(exc, ollama.ResponseError):
        status = exc.status_code
        kind = f"status_{status}" if status > 0 else "in_band"
        # Ollama's own words, whatever the status.
        error = upstream(
            _STATUSES.get(status, UpstreamError), _message(exc.error), kind
        )
        if status >= 400 and status not in _STATUSES:
            error.code = status
        return error
    refused = _cause(exc, ssl.SSLCertVerificationError)
    if refused is not None:  # reached, but not trusted: say what to do
        text = (
            f"Ollama's certificate at {host} is not trusted "
            f"({refused.verify_message}); set SSL_CERT_FILE to its CA's PEM file"
        )
        return upstream(Unavailable, text, "unreachable")
    for types, cls, kind in _EXCEPTIONS:
        if isinstance(exc, types):
            text = _TEXTS[kind].format(host=host, exc=exc, hint=unreachable_hint)
            return upstream(cls, text, kind)
    return upstream(
        UpstreamError, f"unexpected failure talking to Ollama: {exc!r}", "unexpected"
    )


E = TypeVar("E", bound=BaseException)


def _cause(exc: BaseException | None, kind: type[E]) -> E | None:
    """exc, or the first exception of that kind in the chain that led to it."""
    while exc is not None and not isinstance(exc, kind):
        exc = exc.__cause__ or exc.__context__
    return exc


_LET_GO_S = 1.0  # a pump past its stream's last line returns within moments


def _letting_go(
    work: Callable[[Stream, Endpoint, dict[str, Any]], None],
    stream: Stream,
    endpoint: Endpoint,
    body: dict[str, Any],
) -> None:
    try:
        work(stream, endpoint, body)
    finally:
        stream.let_go.set()


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


class _Bodies:
    """One thread per host and process that reads every stream's body.

    A pump waits for Ollama's headers, then hands the body here and sleeps until
    it ends. A thread reading each body woke for every chunk, and at hundreds of
    streams the GIL's hand-overs between them cost more than the chunks; one
    epoll loop reads whatever bodies are ready in one wake.
    """

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._poll = select.epoll()
        self._reading: dict[int, _Body] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def read(
        self, response: httpx.Response, wire: str, part: Callable[[Any], None]
    ) -> None:
        """Hand each part of response's body to part, here or on the loop's
        thread; return at the end of the body, or raise what went wrong."""
        conn, sock = transport.body_of(response)
        body = _Pumped(conn, sock, wire, part, self._timeout_s)
        if body.advance(None):  # what came with the headers first
            sock.setblocking(False)
            self._add(body)
            body.ended.wait()
        if body.error is not None:
            raise body.error

    def read_first(self, body: _Body, stream: Stream, timeout: float) -> None:
        """Read body's head and first part on this thread, for up to timeout;
        then the loop reads on, or body.then has its end."""
        deadline = time.monotonic() + timeout
        wait = select.poll()
        wait.register(body.fd, select.POLLIN)
        try:
            while not stream.sent:
                left = min(deadline, body.deadline) - time.monotonic()
                if left <= 0 or not wait.poll(left * 1000):
                    if time.monotonic() >= body.deadline:
                        raise httpx.ReadTimeout("no bytes from Ollama")
                    break  # this thread's wait is over
                try:
                    more = body.advance(body.sock.recv(_READ_BYTES))
                except BlockingIOError:
                    continue
                if not more:
                    body.finish(None)
                    return
        except Exception as exc:
            body.finish(exc)
            return
        self._add(body)

    def _add(self, body: _Body) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="chatsvc-bodies", daemon=True
                )
                self._thread.start()
            stale = self._reading.pop(body.fd, None)
            if stale is not None:  # its socket was closed under it (shutdown)
                stale.finish(httpx.ReadError("the connection was closed"))
            self._reading[body.fd] = body
            self._poll.register(body.fd, select.EPOLLIN)

    def _run(self) -> None:
        check_at = time.monotonic() + _TICK_S
        reader = sockets.Reader(_READ_BYTES)
        while True:
            for fd, _ in self._poll.poll(_TICK_S):
                body = self._reading.get(fd)
                if body is None:
                    continue
                try:
                    if body.tls:
                        more = body.advance(body.sock.recv(_READ_BYTES))
                    else:
                        more = body.advance(reader.recv(body.sock))
                except _NOT_YET:
                    continue
                except Exception as exc:
                    self._end(body, exc)
                else:
                    if not more:
                        self._end(body, None)
            now = time.monotonic()
            if now >= check_at:
                check_at = now + _TICK_S
                with self._lock:
                    late = [b for b in self._reading.values() if b.deadline <= now]
                for body in late:
                    self._end(body, httpx.ReadTimeout("no bytes from Ollama"))

    def _end(self, body: _Body, error: BaseException | None) -> None:
        with self._lock:
            if self._reading.pop(body.fd, None) is None:
                return
            try:
                self._poll.unregister(body.fd)
            except OSError:
                pass  # closed meanwhile (the client shut down): epoll dropped it
        body.finish(error)


# Nothing to read yet: a TLS socket (an https Ollama, read after a pump) also
# wakes epoll for part of a record, which it cannot decrypt until the rest comes.
_NOT_YET = (BlockingIOError, ssl.SSLWantReadError)
_TICK_S = 0.5  # how often _Bodies looks for bodies silent past their timeout
_READ_BYTES = 65536


class _Body:
    """One response body being read: its lines, and what to do with its parts.

    advance() takes what the socket gave, with the parser of the subclass.
    """

    def __init__(
        self,
        sock: socket.socket,
        wire: str,
        part: Callable[[Any], None],
        timeout_s: float,
        then: Callable[[_Body], None] | None = None,
    ) -> None:
        self.then = then  # at the end, on the thread that saw it
        self.sock = sock
        self.fd = sock.fileno()
        self.tls = isinstance(sock, ssl.SSLSocket)  # read through its ssl object
        self.part = part
        self.parse: Callable[[bytes], Any] = _ndjson if wire != "sse" else _Sse()
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.error: BaseException | None = None
        self.ended = threading.Event()
        self._rest = b""  # a line not finished yet
        self._status = 200
        self._refusal = bytearray()  # the body of an answer of 400 and up
        self.reusable = False  # _Sent: ended cleanly, nothing after it

    def finish(self, error: BaseException | None) -> None:
        # As httpcore would have raised them, for to_error.
        if isinstance(error, h11.RemoteProtocolError):
            error = httpx.RemoteProtocolError(str(error))
        elif isinstance(error, OSError):
            error = httpx.ReadError(str(error))
        self.error = error
        self.ended.set()
        if self.then is not None:
            self.then(self)

    def advance(self, data: bytes | None) -> bool:
        """Take data (b"": the peer closed); False once the body has ended."""
        raise NotImplementedError

    def _data(self, data: bytes) -> None:
        if self._status < 400:
            self._lines(data)
        else:
            self._refusal += data

    def _end(self) -> None:
        if self._status >= 400:
            # As the official client reports it: Ollama's words and status.
            text = self._refusal.decode(errors="replace")
            raise ollama.ResponseError(text, self._status)
        self._lines(b"\n\n")  # the last line, and an SSE event left open

    def _lines(self, data: bytes) -> None:
        *lines, self._rest = (self._rest + data).split(b"\n")
        for line in lines:
            part = self.parse(line)
            if part is not None:
                self.part(part)


class _Pumped(_Body):
    """A body whose head a pump read through httpx: h11 (httpcore's) reads on."""

    def __init__(self, conn: h11.Connection, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = conn

    def advance(self, data: bytes | None) -> bool:
        if data is not None:
            self.deadline = time.monotonic() + self.timeout_s
            self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                return True
            if type(event) is h11.Data:
                self._data(event.data)
            elif type(event) is h11.EndOfMessage:
                self._end()
                return False
            elif type(event) is h11.Response:
                self._status = event.status_code
            elif type(event) is not h11.InformationalResponse:
                raise httpx.RemoteProtocolError(f"unexpected {event!r} in a body")


class _Sent(_Body):
    """The answer to a request _send wrote: httptools (llhttp, in C) parses it,
    head and body, for a fraction of h11's cost per chunk."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parser = httptools.HttpResponseParser(self)
        self._pieces: list[bytes] = []
        self._complete = False
        self._keep = False  # the answer lets the connection be kept alive
        self._after = False  # bytes came after the answer

    # httptools' callbacks, during feed_data.
    def on_message_begin(self) -> None:
        self._after = self._complete

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, piece: bytes) -> None:
        # Handled once feed_data returns: what a callback raises (Ollama's own
        # error line, say) would come out of httptools as a parser error.
        self._pieces.append(piece)

    def on_message_complete(self) -> None:
        if self._status >= 200:  # not a 1xx before the answer
            self._complete = True
            # Here: once feed_data returns, llhttp has reset for the next answer.
            self._keep = self._parser.should_keep_alive()

    def advance(self, data: bytes | None) -> bool:
        if data is not None:
            self.deadline = time.monotonic() + self.timeout_s
            if not data and not self._complete:
                raise httpx.RemoteProtocolError(
                    "Ollama closed the connection before the end of its answer"
                )
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError as exc:
                if not self._complete:
                    raise httpx.RemoteProtocolError(str(exc)) from None
                self._after = True
        pieces, self._pieces = self._pieces, []
        for piece in pieces:
            self._data(piece)
        if not self._complete:
            return True
        self.reusable = self._keep and not self._after
        self._end()
        return False


def _ndjson(line: bytes) -> Line | None:
    if not line.strip():
        return None
    # Decoded here: json.loads would first look for a UTF-16 or -32 encoding,
    # a quarter of its time on every chunk, and Ollama writes UTF-8.
    fields = json.loads(line.decode())
    if not isinstance(fields, dict):
        raise ValueError(f"a line that is not a JSON object: {line[:80]!r}")
    if error := fields.get("error"):
        raise ollama.ResponseError(error)  # as the official client raises it
    part = Line(fields)
    part.raw = line
    return part


class _Sse:
    """Ollama's /v1 Server-Sent Events, line by line."""

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []

    def __call__(self, raw: bytes) -> SseEvent | None:
        # Relayed as they came, so raw U+0085/2028/2029 are escaped here.
        line = escape_line_breaks(raw).decode().removesuffix("\r")
        if line.startswith("data:"):
            self._data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            self._event = line[6:].strip()
        elif not line and self._data:
            event = SseEvent("\n".join(self._data), self._event)
            self._event, self._data = None, []
            return event
        return None


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
                    self._forget(fd)

        return unwatch

    def _forget(self, fd: int) -> None:
        try:
            self._poll.unregister(fd)
        except OSError:
            pass  # closed meanwhile: the kernel already took it out of the set

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
                    self._forget(fd)
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


def _as_httpx(exc: BaseException) -> BaseException:
    """What httpx raises for a failure before the request is out, for to_error."""
    return httpx.ConnectError(str(exc)) if isinstance(exc, OSError) else exc


class _Conns:
    """Kept-alive connections to one plain-HTTP host, for streams sent by _send."""

    def __init__(self, url: httpx.URL, keep: int) -> None:
        self._address = (url.host, url.port or 80)
        self._keep = keep
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def get(self, connect_s: float, send_s: float) -> socket.socket:
        """An open connection, with send_s to send on it."""
        while True:
            with self._lock:
                sock = self._idle.pop() if self._idle else None
            if sock is None:
                break
            if _peer_state(sock) == "open":
                sock.settimeout(send_s)
                return sock
            sock.close()  # Ollama closed it, or it holds bytes nobody asked for
        sock = socket.create_connection(self._address, timeout=connect_s)
        sock.settimeout(send_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def put(self, sock: socket.socket) -> None:
        with self._lock:
            if len(self._idle) < self._keep:
                self._idle.append(sock)
                return
        sock.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle, self._keep = self._idle, [], 0
        for sock in idle:
            sock.close()
