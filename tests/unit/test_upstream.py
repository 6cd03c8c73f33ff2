from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable

import h11
import httpx
import ollama
import pytest
import trustme

from chatsvc.endpoints import CHAT
from chatsvc.errors import (
    BadRequest,
    NotFound,
    StreamsFull,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from chatsvc.framing import escape_line_breaks
from chatsvc.simulator import Simulator
from chatsvc.upstream import Signal, Upstream, _Pumps, to_error


@pytest.mark.parametrize(
    ("line", "escaped"),
    [
        (b'{"a":"x"}', b'{"a":"x"}'),
        (b'{"a":"\xc2\x85"}', b'{"a":"\\u0085"}'),
        (b'{"a":"\xe2\x80\xa8\xe2\x80\xa9"}', b'{"a":"\\u2028\\u2029"}'),
        (b'{"a":"\xe2\x80\x99"}', b'{"a":"\xe2\x80\x99"}'),  # a right quote stays
        (b'{"a":"\xc2\xa9"}', b'{"a":"\xc2\xa9"}'),  # so does the copyright sign
    ],
)
def test_escape_line_breaks(line: bytes, escaped: bytes) -> None:
    assert escape_line_breaks(line) == escaped


def test_an_escaped_line_is_one_line_of_the_same_json() -> None:
    text = "a\x85b\u2028c\u2029d\u2019e\u00e9"
    line = escape_line_breaks(json.dumps({"t": text}, ensure_ascii=False).encode())
    assert line.decode().splitlines() == [line.decode()]
    assert json.loads(line) == {"t": text}


@pytest.mark.parametrize(
    ("exc", "kind", "status", "upstream_kind"),
    [
        (
            ollama.ResponseError('{"error":"model \'x\' not found"}', 404),
            NotFound,
            404,
            "status_404",
        ),
        (ollama.ResponseError("bad", 400), BadRequest, 400, "status_400"),
        (ollama.ResponseError("busy", 503), Unavailable, 503, "status_503"),
        (ollama.ResponseError("boom", 500), UpstreamError, 500, "status_500"),
        (ollama.ResponseError("no embeddings", 501), UpstreamError, 501, "status_501"),
        (ollama.ResponseError("boom"), UpstreamError, 502, "in_band"),
        (ConnectionError("no"), Unavailable, 503, "unreachable"),
        (httpx.ConnectError("no"), Unavailable, 503, "unreachable"),
        (httpx.ReadTimeout("slow"), UpstreamTimeout, 504, "timeout"),
        (httpx.RemoteProtocolError("cut"), UpstreamError, 502, "protocol"),
        (json.JSONDecodeError("bad", "x", 0), UpstreamError, 502, "protocol"),
    ],
)
def test_to_error(exc: Exception, kind: type, status: int, upstream_kind: str) -> None:
    error = to_error(exc, "http://gpu:11434")
    assert type(error) is kind
    assert error.status == status
    assert error.upstream_kind == upstream_kind


def test_to_error_keeps_ollamas_words() -> None:
    error = to_error(
        ollama.ResponseError('{"error":"model \'x\' not found"}', 404), "h"
    )
    assert error.message == "model 'x' not found"
    assert (
        "http://gpu:11434"
        in to_error(httpx.ConnectError("no"), "http://gpu:11434").message
    )


def wait_until(condition: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


def test_pumps_reuse_a_thread_then_let_it_go() -> None:
    pumps = _Pumps(limit=3, idle_s=0.2)
    ran: list[int] = []
    for _ in range(3):
        pumps.submit(lambda: ran.append(threading.get_ident()))
        assert wait_until(lambda: pumps._idle == 1)
    assert len(ran) == 3 and len(set(ran)) == 1 and pumps._threads == 1
    # Other tests' pools come and go meanwhile: follow this pool's one thread.
    (thread,) = [t for t in threading.enumerate() if t.ident == ran[0]]
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert pumps._threads == 0 and pumps._idle == 0


def test_pumps_are_bounded() -> None:
    pumps = _Pumps(limit=2, idle_s=0.2)
    release = threading.Event()
    pumps.submit(release.wait)
    pumps.submit(release.wait)
    with pytest.raises(StreamsFull):
        pumps.submit(release.wait)
    release.set()
    assert wait_until(lambda: pumps._idle == 2)
    pumps.submit(lambda: None)  # a freed thread takes it
    assert pumps._threads == 2


def test_unreachable_hint_replaces_the_advice() -> None:
    error = to_error(httpx.ConnectError("no"), "http://h:1", "the simulator restarts")
    assert error.message == "cannot reach Ollama at http://h:1; the simulator restarts"
    assert error.status == 503


def test_after_end_all_open_and_new_streams_end_with_shutdown(sim: Simulator) -> None:
    sim.settings.first_token_delay = 0
    sim.settings.interval = 0.05
    sim.settings.chunks = 1000
    upstream = Upstream(sim.url, timeout_s=5, max_streams=4)
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    try:
        open_one = upstream.stream(CHAT, body)
        assert isinstance(open_one.get(5), dict)
        upstream.end_all_after(0.0)
        while (event := open_one.get(5)) is not Signal.SHUTDOWN:
            assert isinstance(event, dict), event
        # A stream that starts after the end (gunicorn still serves a request that
        # arrives on a kept-alive connection while it stops) ends at once too.
        assert upstream.stream(CHAT, body).get(5) is Signal.SHUTDOWN
    finally:
        upstream.close()


def test_the_hangup_watcher_survives_a_socket_closed_before_unwatch() -> None:
    from chatsvc.upstream import _HangupWatcher

    watcher = _HangupWatcher()
    fired: list[str] = []
    left, right = socket.socketpair()
    unwatch = watcher.watch(left, lambda: fired.append("first"))
    left.close()  # gunicorn may close a client socket before the relay's finally
    unwatch()
    right.close()
    # The watcher thread still serves the next socket.
    left, right = socket.socketpair()
    watcher.watch(left, lambda: fired.append("second"))
    right.close()
    assert wait_until(lambda: fired == ["second"])
    left.close()


class _Origin:
    """A bare HTTP/1.1 server: one done line for every request, on kept-alive
    connections, which it closes after each answer if told to (without saying so).
    """

    ANSWER = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b'1b\r\n{"done":true,"message":{}}\n\r\n0\r\n\r\n'
    )

    def __init__(self, close_after: bool, answer: bytes = ANSWER) -> None:
        self.close_after = close_after
        self.answer = answer
        self.accepted = 0
        self.closed = threading.Semaphore(0)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while True:
                head, sep, rest = data.partition(b"\r\n\r\n")
                if not sep:
                    more = conn.recv(65536)
                    if not more:
                        return
                    data += more
                    continue
                length = int(head.lower().split(b"content-length: ")[1].split()[0])
                while len(rest) < length:
                    rest += conn.recv(65536)
                data = rest[length:]
                conn.sendall(self.answer)
                if self.close_after:
                    conn.shutdown(socket.SHUT_RDWR)
                    self.closed.release()
                    return

    def close(self) -> None:
        self._listener.close()


_CLOSE = _Origin.ANSWER.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


@pytest.mark.parametrize(
    ("close_after", "answer", "accepted"),
    [
        (False, _Origin.ANSWER, 1),
        (True, _Origin.ANSWER, 3),  # closed while idle: found out before it is used
        (False, _CLOSE, 3),
        (False, _Origin.ANSWER + b"HTTP/1.1 200 OK\r\n", 3),  # bytes nobody asked for
    ],
    ids=["kept-alive", "closed-while-idle", "connection-close", "bytes-after"],
)
def test_streams_reuse_a_kept_alive_connection_only_when_it_may_be(
    close_after: bool, answer: bytes, accepted: int
) -> None:
    origin = _Origin(close_after, answer)
    upstream = Upstream(origin.url, timeout_s=5, max_streams=4)
    body = {"model": "m", "messages": []}
    try:
        for _ in range(3):
            stream = upstream.stream(CHAT, body)
            assert stream.get(5) == {"done": True, "message": {}}
            upstream.finish(stream)  # a reusable connection is back in the pool
            if close_after:
                assert origin.closed.acquire(timeout=5)
        assert origin.accepted == accepted
    finally:
        upstream.close()
        origin.close()


def test_a_head_later_than_the_first_wait_is_read_by_the_body_loop(
    sim: Simulator,
) -> None:
    sim.settings.first_token_delay = 0.3
    sim.settings.interval = 0.01
    sim.settings.chunks = 3
    upstream = Upstream(sim.url, timeout_s=5, max_streams=4)
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    try:
        stream = upstream.stream(CHAT, body)
        started = time.monotonic()
        assert stream.get(0.05) is Signal.SILENCE  # the response's wait is over
        assert time.monotonic() - started < 0.2
        parts = [stream.get(5) for _ in range(4)]
        assert [getattr(p, "get", dict)("done") for p in parts] == [
            False,
            False,
            False,
            True,
        ]
    finally:
        upstream.close()


def test_the_body_loop_reads_a_tls_record_that_arrives_in_pieces() -> None:
    """An https Ollama: epoll wakes for part of a TLS record, which is no error."""
    from chatsvc.upstream import _Bodies, _Pumped

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    listener = socket.create_server(("127.0.0.1", 0))
    line = b'{"done":true,"message":{}}\n'
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(line), line)
    )

    def serve() -> None:
        conn, _ = listener.accept()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = server_ctx.wrap_bio(incoming, outgoing, server_side=True)
        request = b""
        while not request.endswith(b"\r\n\r\n"):
            try:
                tls.do_handshake()
                request += tls.read(65536)
            except ssl.SSLWantReadError:
                conn.sendall(outgoing.read())
                incoming.write(conn.recv(65536))
        conn.sendall(outgoing.read())
        time.sleep(0.05)
        tls.write(answer)
        record = outgoing.read()
        with conn:
            for piece in (record[:10], record[10:]):  # one record, two segments
                conn.sendall(piece)
                time.sleep(0.05)

    threading.Thread(target=serve, daemon=True).start()
    raw = socket.create_connection(listener.getsockname())
    sock = client_ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    conn = h11.Connection(h11.CLIENT)
    head = h11.Request(method="POST", target="/api/chat", headers=[("host", "x")])
    sock.sendall(conn.send(head) + conn.send(h11.EndOfMessage()))
    sock.setblocking(False)
    parts: list[object] = []
    body = _Pumped(conn, sock, "ndjson", parts.append, timeout_s=5)
    try:
        _Bodies(timeout_s=5)._add(body)
        assert body.ended.wait(5)
        assert body.error is None
        assert parts == [{"done": True, "message": {}}]
    finally:
        sock.close()
        listener.close()
