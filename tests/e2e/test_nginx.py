"""deploy/nginx.conf in front of a real gunicorn: unbuffered streams, heartbeats."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chatsvc.simulator import Simulator

pytestmark = pytest.mark.e2e

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
READ_TIMEOUT_S = 2  # nginx's proxy_read_timeout in the rendered copy
HEARTBEAT_S = "0.5"  # chatsvc's, well under READ_TIMEOUT_S
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
ONE_MIB = 1048576  # CHATSVC_MAX_BODY_BYTES's default


@dataclass
class Proxy:
    host: str
    port: int
    gateway: Any  # tests/e2e/conftest.py's Gateway
    prefix: Path

    def post(
        self,
        path: str,
        body: Any,
        headers: dict[str, str] | None = None,
        timeout: float = 15,
        source: str = "127.0.0.1",
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection(
            self.host, self.port, timeout=timeout, source_address=(source, 0)
        )
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request(
            "POST",
            path,
            body=data,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        return conn, conn.getresponse()

    def error_log(self) -> str:
        log = self.prefix / "logs" / "error.log"
        return log.read_text(errors="replace") if log.exists() else ""


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        pytest.fail(
            "nginx is not installed: these tests need Debian's nginx-light "
            "(bin/test installs it; or apt-get install nginx-light)"
        )
    return found


def render(upstream_port: int, listen_port: int) -> str:
    """deploy/nginx.conf with test ports and a short proxy_read_timeout."""
    text = CONF.read_text()
    for pattern, replacement in (
        (r"server 127\.0\.0\.1:\d+;", f"server 127.0.0.1:{upstream_port};"),
        (r"listen \d+;", f"listen 127.0.0.1:{listen_port};"),
        (r"proxy_read_timeout \d+s;", f"proxy_read_timeout {READ_TIMEOUT_S}s;"),
    ):
        text, count = re.subn(pattern, replacement, text)
        assert count == 1, f"deploy/nginx.conf should have one {pattern!r}"
    return text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def start_proxy(
    start_gateway: Callable[..., Any], tmp_path: Path
) -> Iterator[Callable[..., Proxy]]:
    """start_proxy(**env) -> a gateway with short heartbeats (and env) behind nginx
    running the rendered config."""
    binary = nginx_binary()
    started: list[tuple[subprocess.Popen[bytes], Proxy]] = []

    def start(**env: str) -> Proxy:
        gateway = start_gateway(CHATSVC_HEARTBEAT_S=HEARTBEAT_S, **env)
        prefix = tmp_path / f"nginx{len(started)}"
        (prefix / "logs").mkdir(parents=True)
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(render(int(gateway.url.rsplit(":", 1)[1]), port))
        with (prefix / "stderr.log").open("wb") as stderr:
            proc = subprocess.Popen(
                [binary, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                stdout=stderr,
                stderr=subprocess.STDOUT,
            )
        proxy = Proxy("127.0.0.1", port, gateway, prefix)
        started.append((proc, proxy))
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    "nginx exited at start:\n"
                    + (prefix / "stderr.log").read_text()
                    + proxy.error_log()
                )
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proxy
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"nginx did not listen:\n{proxy.error_log()}")
                time.sleep(0.02)

    try:
        yield start
        for _, proxy in started:
            assert not re.search(r"\[(emerg|alert|crit)\]", proxy.error_log())
    finally:
        for proc, _ in started:
            proc.terminate()
            proc.wait(10)


@pytest.fixture
def proxy(start_proxy: Callable[..., Proxy]) -> Proxy:
    return start_proxy()


def timed_lines(response: http.client.HTTPResponse) -> list[tuple[float, bytes]]:
    lines = []
    while line := response.readline():
        lines.append((time.monotonic(), line))
    return lines


def test_config_passes_nginx_own_check(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(free_port(), free_port()))
    result = subprocess.run(
        [nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_chunks_arrive_through_nginx_as_produced(proxy: Proxy, sim: Simulator) -> None:
    interval, chunks = 0.2, 10
    sim.settings.first_token_delay = 0
    sim.settings.interval = interval
    sim.settings.chunks = chunks
    sent = time.monotonic()
    conn, response = proxy.post("/api/chat", CHAT)
    assert response.status == 200
    lines = timed_lines(response)
    conn.close()
    parts = [json.loads(line) for _, line in lines]
    assert len(parts) == chunks + 1 and parts[-1]["done"] is True
    first, done = lines[0][0], lines[-1][0]
    # The upstream writes line i at i * interval: each must get through about then,
    # not when the upstream is done (2 s in), as a buffering proxy would deliver it.
    assert first - sent < 0.8
    assert done - first >= chunks * interval * 0.8
    for index, (arrived, _) in enumerate(lines):
        assert arrived - sent <= index * interval + 0.8, f"line {index} held back"


@pytest.mark.parametrize(
    ("fmt", "beat"), [("ndjson", b'"content":""'), ("sse", b": ping")]
)
def test_heartbeats_carry_a_stream_across_a_silence_longer_than_nginx_allows(
    proxy: Proxy, sim: Simulator, fmt: str, beat: bytes
) -> None:
    silence = 2.5 * READ_TIMEOUT_S
    sim.settings.first_token_delay = silence
    sim.settings.interval = 0
    sim.settings.chunks = 3
    sent = time.monotonic()
    conn, response = proxy.post(f"/api/chat?format={fmt}", CHAT)
    assert response.status == 200
    body = response.read()  # raises IncompleteRead if nginx cut the stream
    conn.close()
    assert time.monotonic() - sent >= silence
    assert body.count(beat) >= 2 * READ_TIMEOUT_S
    if fmt == "ndjson":
        assert json.loads(body.splitlines()[-1])["done"] is True
    else:
        assert (
            body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1].startswith(b"id: 4\nevent: done")
        )


def test_without_heartbeats_nginx_cuts_the_same_silence(
    proxy: Proxy, sim: Simulator
) -> None:
    # The control: the text format sends no keep-alive bytes, so the rendered
    # proxy_read_timeout must end this request; otherwise the test above proves
    # nothing about heartbeats.
    sim.settings.first_token_delay = 2.5 * READ_TIMEOUT_S
    sim.settings.chunks = 3
    sent = time.monotonic()
    conn, response = proxy.post("/api/chat?format=text", CHAT)
    try:
        body = response.read()
        cut = response.status == 504
    except http.client.IncompleteRead:
        cut = True
        body = b""
    conn.close()
    assert cut, (response.status, body)
    if body:  # nginx's 504, in chatsvc's error shape
        assert list(json.loads(body)) == ["error"]
    assert time.monotonic() - sent < 2 * READ_TIMEOUT_S
    # nginx hung up on chatsvc, and chatsvc passed the hang-up on to Ollama.
    assert sim.wait_hangup(5) is not None


@pytest.mark.parametrize("incoming", ["client-id-42", None])
def test_request_id_goes_through_nginx_to_chatsvc_log(
    proxy: Proxy, sim: Simulator, incoming: str | None
) -> None:
    sim.settings.first_token_delay = 0
    headers = {"X-Request-ID": incoming} if incoming else {}
    conn, response = proxy.post("/api/chat", CHAT, headers)
    response.read()
    conn.close()
    request_id = response.getheader("X-Request-ID") or ""
    if incoming:
        assert request_id == incoming
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)  # nginx's $request_id
    logged = [
        json.loads(line)
        for line in proxy.gateway.log_text().splitlines()
        if line.startswith("{") and request_id in line
    ]
    assert [(r["route"], r["outcome"]) for r in logged] == [("/api/chat", "completed")]


def test_nginx_own_413_is_prompt_and_in_the_error_shape(proxy: Proxy) -> None:
    # Far over client_max_body_size: nginx answers from the Content-Length alone.
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=5)
    try:
        conn.putrequest("POST", "/api/chat")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(3 * ONE_MIB))
        conn.endheaders(b'{"model"')
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 413
    assert response.getheader("Content-Type") == "application/json; charset=utf-8"
    assert list(json.loads(body)) == ["error"]


@pytest.mark.parametrize(("size", "status"), [(ONE_MIB, 200), (ONE_MIB + 1, 413)])
def test_body_limit_through_nginx_is_chatsvc_limit(
    proxy: Proxy, sim: Simulator, size: int, status: int
) -> None:
    # nginx may not refuse what chatsvc accepts (CHATSVC_MAX_BODY_BYTES, 1 MiB by
    # default), and what it refuses gets the error shape.
    sim.settings.first_token_delay = 0
    empty = len(json.dumps({**CHAT, "pad": ""}).encode())
    body = json.dumps({**CHAT, "pad": "x" * (size - empty)}).encode()
    assert len(body) == size
    conn, response = proxy.post("/api/chat", body)
    data = response.read()
    conn.close()
    assert response.status == status
    if status == 200:
        assert json.loads(data.splitlines()[-1])["done"] is True
    else:
        assert list(json.loads(data)) == ["error"]


def test_clients_behind_nginx_keep_their_own_stream_limit(
    start_proxy: Callable[..., Proxy], sim: Simulator
) -> None:
    # Through the proxy every client reaches chatsvc from nginx's address; the
    # per-client limit must still count each real client (X-Forwarded-For), not
    # everyone behind nginx as one. All of 127/8 is this machine.
    proxy = start_proxy(CHATSVC_MAX_STREAMS_PER_CLIENT="1", WEB_CONCURRENCY="1")
    sim.settings.first_token_delay = 0
    sim.settings.interval = 0.1
    sim.settings.chunks = 100
    conns = []
    try:
        for source, status in [
            ("127.0.0.2", 200),
            ("127.0.0.3", 200),
            ("127.0.0.2", 429),
        ]:
            conn, response = proxy.post("/api/chat", CHAT, source=source)
            conns.append(conn)
            assert response.status == status, (source, response.read())
            response.readline()
    finally:
        for conn in conns:
            conn.close()


def test_nginx_holds_a_slow_body_so_chatsvc_never_waits_for_it(
    start_proxy: Callable[..., Proxy], sim: Simulator
) -> None:
    # chatsvc gives a body one second; this chunked one takes three to arrive.
    # Through nginx it still works: nginx reads it whole, then passes it on at
    # once (unbuffered, nginx would relay the chunks as they come, and time out).
    proxy = start_proxy(CHATSVC_CLIENT_TIMEOUT_S="1")
    sim.settings.first_token_delay = 0
    body = json.dumps(CHAT).encode()
    head = (
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        sock.sendall(head)
        for third in (body[:10], body[10:20], body[20:]):
            sock.sendall(b"%x\r\n%s\r\n" % (len(third), third))
            time.sleep(1.0)
        sock.sendall(b"0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data[:300]
    assert b'"done":true' in data
