"""Raw-socket HTTP for byte-exact checks of the simulator's replies."""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

from chatsvc.simulator import Simulator

CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z$")
LOCAL_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
HELLO = [{"role": "user", "content": "hello"}]
JSON_UTF8 = "application/json; charset=utf-8"


def address(sim: Simulator) -> tuple[str, int]:
    host, port = sim.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def send(sim: Simulator, path: str, body: Any, method: str = "POST") -> socket.socket:
    """A raw request that asks for the connection to close after the reply."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sock = socket.create_connection(address(sim))
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


def read_all(sock: socket.socket) -> bytes:
    parts = []
    while part := sock.recv(65536):
        parts.append(part)
    return b"".join(parts)


def split(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, raw body); (0, {}, b"") for no reply at all."""
    if not data:
        return 0, {}, b""
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    return int(status_line.split()[1]), headers, payload


def exchange(
    sim: Simulator, path: str, body: Any, method: str = "POST"
) -> tuple[int, dict[str, str], bytes]:
    with send(sim, path, body, method) as sock:
        return split(read_all(sock))


def body_of(headers: dict[str, str], payload: bytes) -> bytes:
    """The body whatever its framing: dechunked when chunked."""
    if headers.get("transfer-encoding") == "chunked":
        return b"".join(dechunk(payload))
    return payload


def dechunk(payload: bytes) -> list[bytes]:
    """The chunks of a complete chunked body, without the terminating one."""
    chunks: list[bytes] = []
    while True:
        size_line, _, payload = payload.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert payload == b"\r\n"
            return chunks
        chunks.append(payload[:size])
        assert payload[size : size + 2] == b"\r\n"
        payload = payload[size + 2 :]


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}, separators=(",", ":")).encode()


def wait_for(predicate: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def wait_streams_closed(sim: Simulator) -> None:
    deadline = time.monotonic() + 2
    while sim.streams_open and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sim.streams_open == 0
