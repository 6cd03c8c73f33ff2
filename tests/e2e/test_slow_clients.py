"""Slow and malformed clients: deadlines, threads kept free, errors in our shape."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests

from chatsvc.simulator import Simulator
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
BODY = json.dumps(CHAT).encode()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def response_of(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """Read one response that the server closes after: (status, JSON body)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), data
    return int(head.split()[1]), json.loads(body)


@contextmanager
def trickling(url: str, count: int, first: bytes, slow: bytes) -> Iterator[None]:
    """count connections, each sending first, then slow one byte a second."""
    socks = [connect(url) for _ in range(count)]
    for sock in socks:
        sock.sendall(first)
    stop = threading.Event()

    def trickle() -> None:
        for position in range(len(slow)):
            for sock in socks:
                try:
                    sock.send(slow[position : position + 1])
                except OSError:
                    pass  # closed by the server: that is its right
            if stop.wait(1.0):
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join()
        for sock in socks:
            sock.close()


def timed(call: Callable[[], requests.Response]) -> float:
    started = time.monotonic()
    response = call()
    assert response.status_code == 200, response.text
    return time.monotonic() - started


HEAD = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
HEAD_WITH_LENGTH = HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY)


@pytest.mark.parametrize(
    ("first", "slow"),
    [(b"", HEAD), (HEAD_WITH_LENGTH, BODY)],
    ids=["head", "body"],
)
def test_600_slow_connections_leave_the_server_answering(
    start_gateway: Callable[..., Gateway], sim: Simulator, first: bytes, slow: bytes
) -> None:
    # The probe: 64 streams a worker (80 threads), two workers.
    gw = start_gateway(CHATSVC_MAX_STREAMS="64")
    sim.settings.first_token_delay = 0
    sim.settings.interval = 0.005
    sim.settings.chunks = 10
    with trickling(gw.url, 600, first, slow):
        time.sleep(3)  # all 600 are mid-request, three bytes in
        for _ in range(5):
            health = timed(lambda: requests.get(f"{gw.url}/healthz", timeout=5))
            chat = timed(
                lambda: requests.post(f"{gw.url}/api/chat", json=CHAT, timeout=5)
            )
            assert health < 1 and chat < 1, (health, chat)
            time.sleep(0.5)


def test_a_head_that_never_ends_gets_a_408(
    start_gateway: Callable[..., Gateway],
) -> None:
    gw = start_gateway(CHATSVC_CLIENT_TIMEOUT_S="1")
    with connect(gw.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        status, body = response_of(sock)
        waited = time.monotonic() - started
    assert status == 408
    assert body == {
        "error": "the request did not arrive within CHATSVC_CLIENT_TIMEOUT_S; "
        "send it again"
    }
    assert 1 <= waited < 3  # the deadline, checked once a second


def test_a_chunked_body_that_never_ends_gets_a_408(
    start_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = start_gateway(CHATSVC_CLIENT_TIMEOUT_S="2")
    with connect(gw.url) as sock:
        sock.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        started = time.monotonic()
        # A chunk now and then, as a stalled upload through a proxy would send.
        for _ in range(5):
            sock.sendall(b"1\r\n{\r\n")
            time.sleep(0.5)
        status, body = response_of(sock)
        waited = time.monotonic() - started
    assert status == 408 and "CHATSVC_CLIENT_TIMEOUT_S" in body["error"]
    assert 2 <= waited < 4
    assert not [r for r in sim.requests if r.path == "/api/chat"]
    # The thread it held is free, and so is the server.
    assert requests.get(f"{gw.url}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("request_bytes", "status", "message"),
    [
        (b"GARBAGE\r\n\r\n", 400, "the request is malformed: Invalid Request Line"),
        (
            b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            414,
            "the request line is longer than this server accepts",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
            431,
            "the request headers are too large or too many",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: 1\r\n" % n for n in range(101))
            + b"\r\n",
            431,
            "the request headers are too large or too many",
        ),
    ],
    ids=["bad-request-line", "uri-too-long", "header-too-large", "too-many-headers"],
)
def test_gunicorns_own_rejections_use_the_error_shape(
    gateway: Gateway, request_bytes: bytes, status: int, message: str
) -> None:
    with connect(gateway.url) as sock:
        sock.sendall(request_bytes)
        got_status, body = response_of(sock)
    assert got_status == status
    assert list(body) == ["error"] and body["error"].startswith(message), body


@pytest.mark.parametrize("query", ["", "?resumable=1"], ids=["plain", "resumable"])
def test_a_client_that_stops_reading_holds_up_no_other_stream(
    start_gateway: Callable[..., Gateway], sim: Simulator, query: str
) -> None:
    # One worker, so both streams share its body reader.
    gw = start_gateway(WEB_CONCURRENCY="1")
    sim.settings.first_token_delay = 0
    sim.settings.interval = 0
    sim.settings.chunks = 60_000  # about 9 MB: more than the sockets buffer
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    stalled.connect((host, int(port)))
    head = HEAD_WITH_LENGTH.replace(b"/api/chat", b"/api/chat" + query.encode())
    stalled.sendall(head + BODY)
    try:
        assert stalled.recv(1, socket.MSG_PEEK)  # its stream began
        sim.settings.interval = 0.02
        sim.settings.chunks = 100
        arrivals = []
        with requests.post(
            f"{gw.url}/api/chat", json=CHAT, stream=True, timeout=10
        ) as other:
            for line in other.iter_lines():
                arrivals.append(time.monotonic())
                assert "error" not in json.loads(line)
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
        assert len(arrivals) == 101 and max(gaps) < 0.5, max(gaps)
        # The stalled client, reading at last, gets its whole stream in order.
        stalled.settimeout(10)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            piece = stalled.recv(65536)
            assert piece, "the server closed the stalled stream"
            data += piece
    finally:
        stalled.close()
    body = data.partition(b"\r\n\r\n")[2]
    lines = [json.loads(line) for line in body.split(b"\n") if line.startswith(b"{")]
    assert len(lines) == 60_001 and lines[-1]["done"] is True
