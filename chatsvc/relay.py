"""One relayed stream: slot, request, hang-up watch, frames, heartbeats, the end.

Every streamed route runs through stream(); what differs between routes is in its
endpoints row. collect() reads the same stream for a model-management call sent with
"stream": false, whose one answer may be many silent minutes away.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Response, current_app, g, request, stream_with_context

from chatsvc import accesslog, errors, metrics, security, sockets
from chatsvc.endpoints import Endpoint
from chatsvc.errors import ChatsvcError, ClientClosed, UpstreamTimeout
from chatsvc.framing import MEDIA_TYPES, Framer
from chatsvc.hosts import Hosts
from chatsvc.store import Claim, Slots, Store
from chatsvc.upstream import Event, Signal, Stream

_CHUNK = b"%X\r\n%s\r\n"  # HTTP/1.1 chunked framing, as gunicorn writes it
STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "X-Content-Type-Options": "nosniff",
}


@dataclass
class State:
    """What the views share within one process; built once by create_app."""

    config: dict[str, Any]
    upstream: Hosts
    store: Store
    slots: Slots


def state() -> State:
    return current_app.extensions["chatsvc"]  # type: ignore[no-any-return]


@dataclass(eq=False)
class Run:
    """One upstream stream: what its end must release, log and count."""

    endpoint: Endpoint
    model: str
    claim: Claim
    stream: Stream
    shared: State
    request_id: str
    started: float
    unwatch: Callable[[], None] | None = None
    write: Writer | None = None  # where the server's socket can be written directly
    last_write: float = 0.0
    last: bytes = b""  # the stream's end, sent after its slot is free
    chunks: int = 0
    ttft: float | None = None
    outcome: str = "cancelled"
    closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.unwatch is not None:
            self.unwatch()
        self.shared.upstream.finish(self.stream)
        self.claim.release()


def _start(endpoint: Endpoint, body: dict[str, Any], host: str | None = None) -> Run:
    """Ask for a slot, send the request and watch the client's socket.

    The slot's answer is read just before the request goes to Ollama; a refusal
    is raised here, or comes back as the stream's first event from a pump.
    """
    shared = state()
    claim = shared.slots.ask(security.client_id())
    try:
        stream = shared.upstream.stream(endpoint, body, host, admit=claim.lease)
    except BaseException:
        claim.release()
        raise
    run = Run(
        endpoint=endpoint,
        model=str(body.get("model", "")),
        claim=claim,
        stream=stream,
        shared=shared,
        request_id=g.request_id,
        started=g.started,
    )
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        run.unwatch = shared.upstream.watch(sock, stream)
    return run


def _raise_early(event: Event) -> None:
    """Before the status is sent, a failure keeps its own status."""
    if isinstance(event, ChatsvcError):
        raise event
    if event is Signal.CANCELLED:
        raise ClientClosed("the client closed the request")


# resume.record: registers a run as resumable, then answers as its first reader.
Recorder = Callable[["Run"], Callable[[Event, str], Response]]


def stream(
    endpoint: Endpoint,
    body: dict[str, Any],
    fmt: str,
    record: Recorder | None = None,
    host: str | None = None,
) -> Response:
    """A streamed answer: the status once the first chunk is in, then the rest.

    host is ?host= on create and push (chatsvc.hosts.ONE_HOST).
    """
    heartbeat_s = state().config["CHATSVC_HEARTBEAT_S"]
    run = _start(endpoint, body, host)
    try:
        # Ollama holds its headers until the first line is ready; waiting one
        # heartbeat for it lets an early failure keep its real status.
        first = run.stream.get(heartbeat_s)
        _raise_early(first)
        if fmt == "ndjson" and endpoint.is_load_reply(first):
            # A load or unload is one JSON object, even when a stream was asked
            # for (ollama-wire.md §1.5); the ollama CLI reads it so.
            run.outcome = "completed"
            run.close()
            return accesslog.json_response(first)
        respond = None if record is None else record(run)
    except BaseException:
        run.close()
        raise
    # The status is now committed: from here on errors go in-band.
    g.streaming = True
    metrics.STREAMS_OPEN.inc()
    if respond is not None:
        return respond(first, fmt)
    framer = Framer(fmt, endpoint)

    def direct(write: Callable[[bytes], object]) -> None:
        run.write = Writer(write, run.stream.tell)

    return Streamed(
        stream_with_context(_relay(run, framer, first, heartbeat_s)),
        direct,
        content_type=MEDIA_TYPES[fmt],
        headers=STREAM_HEADERS,
    )


class Streamed(Response):
    """A response whose chunks another thread may write with the server's write()."""

    def __init__(
        self,
        body: Iterator[bytes],
        direct: Callable[[Callable[[bytes], object]], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(body, **kwargs)
        self._direct = direct

    def __call__(self, environ: Any, start_response: Any) -> Any:
        app_iter, status, headers = self.get_wsgi_response(environ)
        write = start_response(status, headers)
        # gunicorn's write() sends at once; a test client's only buffers until
        # the body is first read, so there the response generator sends what
        # the other thread frames. So it does over gunicorn's own TLS
        # (--certfile): the other thread's sends would go past the ssl object.
        sock = environ.get("gunicorn.socket")
        if sock is not None and not isinstance(sock, ssl.SSLSocket):
            self._direct(write)
        return app_iter


class Writer:
    """Sends a stream's bytes from the thread that framed them without ever
    blocking it: that thread reads many streams' bodies (chatsvc.upstream).

    The first write is gunicorn's, which adds the headers; the two go out in one
    send, sparing the client a wake-up before its first byte. What the client's
    socket cannot take at once goes to the response thread, which sends it, and
    all that follows, itself.
    """

    def __init__(
        self, write: Callable[[bytes], object], tell: Callable[[bytes], object]
    ) -> None:
        self._write = write
        self._tell = tell  # to the response thread
        self._sock: socket.socket | None = None
        self._chunked = False
        self._behind = False

    def __call__(self, data: bytes) -> None:
        if self._sock is None:
            response = self._write.__self__  # type: ignore[attr-defined]
            self._sock, self._chunked = response.sock, response.chunked
            parts = _Parts()  # gunicorn would send the head and the chunk apart
            response.sock = parts
            try:
                self._write(data)
            finally:
                response.sock = self._sock
            self._sock.sendall(b"".join(parts))
            return
        if self._chunked:  # gunicorn's framing, which it ends in close()
            data = _CHUNK % (len(data), data)
        if not self._behind:
            try:
                sent = sockets.send(self._sock, data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            self._behind, data = True, data[sent:]
        self._tell(data)

    def send(self, data: bytes) -> None:
        """On the response thread: send what the other thread could not."""
        assert self._sock is not None
        self._sock.sendall(data)

    def last(self, data: bytes) -> None:
        """On the response thread, once the other is done: the stream's end."""
        if self._sock is None:
            self(data)  # the first write, with the head: sent whole
        else:
            self.send(_CHUNK % (len(data), data) if self._chunked else data)


class _Parts(list[bytes]):
    """A socket to gunicorn that keeps what it is sent."""

    def sendall(self, data: bytes) -> None:
        self.append(data)


def collect(
    endpoint: Endpoint, body: dict[str, Any], host: str | None = None
) -> Response:
    """The last chunk of a stream, as one JSON answer ("stream": false).

    Ollama sends progress while it pulls, so CHATSVC_UPSTREAM_TIMEOUT_S bounds
    each silence, not the whole call, and a client that leaves stops the pull.
    """
    run = _start(endpoint, body, host)
    try:
        while True:
            event = run.stream.get(state().config["CHATSVC_HEARTBEAT_S"])
            if isinstance(event, ChatsvcError) and event.upstream_kind == "in_band":
                event.code = 500  # what Ollama answers such a call with
            _raise_early(event)
            if endpoint.is_last(event):
                run.outcome = "completed"
                # As Ollama answers "stream": false: no charset, no newline.
                return accesslog.json_response(event, "application/json")
    finally:
        run.close()


def _relay(
    run: Run, framer: Framer, first: Event, heartbeat_s: float
) -> Iterator[bytes]:
    """Wait for the end, sending heartbeats; the body loop writes the chunks."""
    stream = run.stream
    write = run.write or stream.tell
    head = framer.start()

    def sink(event: Event) -> bool:  # on the thread that has it, one at a time
        nonlocal head
        data, ended = _frame(run, framer, event)
        if head:
            data, head = head + data, b""
        if ended:  # the response thread sends it, once the slot is free
            run.last = data
            stream.tell(Signal.ENDED)
            return True
        if data:
            try:
                write(data)
            except OSError:  # the client is gone
                run.outcome = "cancelled"
                stream.tell(Signal.ENDED)
                return True
        run.last_write = time.monotonic()
        if data and run.ttft is None and run.chunks:
            run.ttft = run.last_write - run.started
        return False

    try:
        stream.deliver_to(sink, first)
        while True:
            quiet = time.monotonic() - run.last_write
            item = stream.take(max(0.0, heartbeat_s - quiet))
            if isinstance(item, bytes):
                if run.write is None:
                    yield item
                else:
                    try:
                        run.write.send(item)
                    except OSError:  # the client is gone
                        run.outcome = "cancelled"
                        return
            elif item is Signal.SILENCE:
                if time.monotonic() - run.last_write >= heartbeat_s:
                    stream.put(Signal.SILENCE)
            elif item is Signal.SHUTDOWN:
                stream.put(item)  # its in-band error, after any chunk being written
            else:  # ENDED, or CANCELLED: the client went away
                # The slot is free before the client can read the last line,
                # so a client that starts its next stream on it is not refused.
                run.close()
                if not run.last:
                    return
                if run.ttft is None and run.chunks:
                    run.ttft = time.monotonic() - run.started
                if run.write is None:
                    yield run.last
                    return
                try:
                    run.write.last(run.last)
                except OSError:  # the client is gone
                    run.outcome = "cancelled"
                return
    finally:
        stream.detach()
        run.close()
        _end_stream(run)


def _frame(run: Run, framer: Framer, event: Event) -> tuple[bytes, bool]:
    """Frame one event; True once the stream has ended."""
    if not isinstance(event, Signal | ChatsvcError):
        run.chunks += 1
        if run.endpoint.is_last(event):
            run.outcome = "completed"
            return framer.chunk(event), True
        return framer.chunk(event), False
    if event is Signal.SILENCE:
        return framer.heartbeat(run.model, time.time_ns()), False
    if isinstance(event, ChatsvcError):
        errors.count(event)
        timed_out = isinstance(event, UpstreamTimeout)
        run.outcome = "timeout" if timed_out else "upstream_error"
        return framer.error(event.message), True
    if event is Signal.SHUTDOWN:
        run.outcome = "shutdown"
        message = "chatsvc is restarting and ended this stream; send it again"
        return framer.error(message), True
    return b"", True  # CANCELLED: the client went away


def _end_stream(run: Run) -> None:
    metrics.STREAMS_OPEN.dec()
    metrics.STREAMS.labels(run.outcome).inc()
    metrics.CHUNKS.labels(run.endpoint.path).inc(run.chunks)
    if run.ttft is not None:
        metrics.TTFT.labels(run.endpoint.path).observe(run.ttft)
    accesslog.line(
        request_id=run.request_id,
        route=run.endpoint.path,
        model=run.model,
        status=200,
        ttfb_ms=None if run.ttft is None else round(run.ttft * 1000, 2),
        chunks=run.chunks,
        duration_ms=round((time.monotonic() - run.started) * 1000, 2),
        outcome=run.outcome,
        host=run.stream.host,
    )
