"""The shared store for real: the embedded one, and Debian's redis-server shared by
two instances of two workers each."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from chatsvc.simulator import Simulator
from chatsvc.store import Store
from tests.e2e.conftest import Gateway, free_port, start_gunicorn

pytestmark = pytest.mark.e2e

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
KEYS = ("k1-0c5e", "k2-9a71", "k3-4bd2")
LEASE_S = 3.0


# -- helpers ---------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def open_stream(
    stack: ExitStack, gw: Gateway, key: str | None = None, source: str = "127.0.0.1"
) -> http.client.HTTPResponse:
    """A streamed chat on a connection of its own, closed when stack closes."""
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(
        host, int(port), timeout=15, source_address=(source, 0)
    )
    stack.callback(conn.close)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request("POST", "/api/chat", body=json.dumps(CHAT), headers=headers)
    return conn.getresponse()


def error_of(response: http.client.HTTPResponse, status: int) -> str:
    assert response.status == status
    assert int(response.getheader("Retry-After") or 0) > 0
    body = json.loads(response.read())
    assert list(body) == ["error"]
    return str(body["error"])


def stream_status(gw: Gateway, key: str) -> int:
    """The status a new stream gets; the stream is closed at once."""
    with ExitStack() as stack:
        return open_stream(stack, gw, key).status


def store_up(gw: Gateway, key: str) -> float:
    with requests.Session() as session:
        text = session.get(
            gw.url + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=5
        ).text
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "chatsvc_store_up"
    ]
    assert len(values) == 1, text
    return values[0]


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def serving_worker(gw: Gateway, response: http.client.HTTPResponse) -> int:
    """The worker pid that holds the server side of response's connection."""
    client_port = response.fp.raw._sock.getsockname()[1]  # type: ignore[union-attr]
    gw_port = int(gw.url.rsplit(":", 1)[1])
    inode = ""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if (int(local.split(":")[1], 16), int(remote.split(":")[1], 16)) == (
            gw_port,
            client_port,
        ):
            inode = fields[9]
    assert inode, "the server side of the connection was not found"
    for pid in children(gw.proc.pid):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except FileNotFoundError:
                continue
    raise AssertionError("no worker holds the connection")


@dataclass
class RedisServer:
    """Debian's redis-server on a loopback port, as a standalone store."""

    folder: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    options: tuple[str, ...] = ()  # more of redis-server's own

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        assert os.path.exists(binary), "bin/test installs redis-server with apt"
        self.port = self.port or free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.folder),
             "--logfile", str(self.folder / "redis.log"), *self.options],
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        try:
            wait_until(self._answers(client), "redis-server to start")
        finally:
            client.close()

    @staticmethod
    def _answers(client: redis.Redis) -> Callable[[], bool]:
        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        return answers

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)


@dataclass
class Pair:
    store: RedisServer
    a: Gateway
    b: Gateway


@pytest.fixture(scope="module")
def pair(
    _simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    """Two instances of two workers each, sharing one redis-server."""
    folder = tmp_path_factory.mktemp("store")
    store = RedisServer(folder)
    store.start()
    env = {
        "OLLAMA_HOST": _simulator.url,
        "CHATSVC_REDIS_URL": store.url,
        "CHATSVC_LEASE_S": str(LEASE_S),
        "CHATSVC_API_KEYS": ",".join(KEYS),
        "CHATSVC_MAX_STREAMS": "4",
        "CHATSVC_MAX_STREAMS_PER_CLIENT": "2",
        "WEB_CONCURRENCY": "2",
    }
    a = start_gunicorn(folder / "a", env)
    b = start_gunicorn(folder / "b", env)
    yield Pair(store, a, b)
    for gw in (a, b):
        gw.stop(signal.SIGKILL)
    store.stop()


@pytest.fixture
def shared(pair: Pair, sim: Simulator) -> Iterator[Pair]:
    """The pair with an empty store, and long slow streams from the simulator."""
    with pair.store.client() as client:
        wait_until(lambda: client.keys("chatsvc:*") == [], "an empty store")
    sim.settings.first_token_delay = 0
    sim.settings.interval = 0.1
    sim.settings.chunks = 600
    yield pair


def leases(pair: Pair) -> int:
    with pair.store.client() as client:
        return int(client.zcard("chatsvc:slots:all"))


# -- two instances, one store ----------------------------------------------------


def test_limits_hold_across_instances_and_workers(shared: Pair) -> None:
    a, b = shared.a, shared.b
    with ExitStack() as stack, ExitStack() as first:
        held = [open_stream(first, a, KEYS[0])]
        # With the first stream's worker stopped, a's other worker takes the next.
        worker = serving_worker(a, held[0])
        os.kill(worker, signal.SIGSTOP)
        try:
            held.append(open_stream(stack, a, KEYS[1]))
            other = serving_worker(a, held[1])
        finally:
            os.kill(worker, signal.SIGCONT)
        assert other != worker
        held.append(open_stream(stack, b, KEYS[0]))
        for response in held:
            assert response.status == 200 and json.loads(response.readline())
        # A third stream for the same key, on either instance: 429.
        for gw in (a, b):
            message = error_of(open_stream(stack, gw, KEYS[0]), 429)
            assert message == "you already have 2 streams open; wait for one to finish"
        assert open_stream(stack, b, KEYS[1]).status == 200
        assert leases(shared) == 4
        # Four streams in all, wherever they run: the fifth gets 503.
        for gw in (a, b):
            message = error_of(open_stream(stack, gw, KEYS[2]), 503)
            assert message == "the server has 4 streams open; try again shortly"
        # One ends on instance a; its slot is free at once on instance b.
        first.close()
        wait_until(lambda: leases(shared) == 3, "the slot to be released")
        assert open_stream(stack, b, KEYS[0]).status == 200
        assert leases(shared) == 4
    wait_until(lambda: leases(shared) == 0, "every slot to be released")


def test_a_sigkilled_workers_slots_come_back_within_the_lease(shared: Pair) -> None:
    with ExitStack() as stack:
        held = open_stream(stack, shared.a, KEYS[0])
        assert held.status == 200 and json.loads(held.readline())
        second = open_stream(stack, shared.b, KEYS[0])
        assert second.status == 200
        worker = serving_worker(shared.a, held)
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        # The dead worker's lease holds its slot until it expires, then frees it.
        refused = 0
        while True:
            status = stream_status(shared.b, KEYS[0])
            if status == 200:
                break
            assert status == 429
            refused += 1
            assert time.monotonic() - killed < LEASE_S + 1.0
            time.sleep(0.05)
        took = time.monotonic() - killed
    print(f"\nslot of a SIGKILLed worker back after {took:.2f} s (lease {LEASE_S} s)")
    assert refused > 0
    # Renewed every LEASE_S / 3, so it expires between 2/3 and 1 lease after death.
    assert LEASE_S * 2 / 3 - 0.3 < took < LEASE_S + 0.5
    wait_until(lambda: leases(shared) == 0, "every slot to be released")


def test_store_stopped_then_restarted(shared: Pair, sim: Simulator) -> None:
    a, b = shared.a, shared.b
    key = KEYS[0]
    sim.settings.chunks = 30  # 3 s
    with ExitStack() as stack:
        running = open_stream(stack, a, key)
        assert running.status == 200 and json.loads(running.readline())
        shared.store.stop()

        for gw in (a, b):
            message = error_of(open_stream(stack, gw, key), 503)
            assert message == f"chatsvc cannot reach its store at {shared.store.url}"
            with requests.Session() as session:
                ready = session.get(gw.url + "/readyz", timeout=5)
            assert ready.status_code == 503 and "store" in ready.json()["error"]
            assert store_up(gw, key) == 0
        # The stream open before the store went away runs to its end.
        lines = [json.loads(line) for line in running.read().splitlines()]
        assert lines[-1]["done"] is True

        shared.store.start()
        restarted = time.monotonic()
        for gw in (a, b):
            wait_until(lambda gw=gw: stream_status(gw, key) == 200, "recovery")
        print(f"\nboth instances served again {time.monotonic() - restarted:.2f} s")
        for gw in (a, b):
            wait_until(lambda gw=gw: store_up(gw, key) == 1, "chatsvc_store_up 1")
            with requests.Session() as session:
                assert session.get(gw.url + "/readyz", timeout=5).status_code == 200


# -- the embedded store ----------------------------------------------------------

ANNOUNCED = re.compile(
    r"^chatsvc: CHATSVC_REDIS_URL is unset; serving the embedded store "
    r"\(valkey-server [\d.]+\) at (unix://\S+)$",
    re.MULTILINE,
)


def embedded_url(gw: Gateway) -> str:
    found = ANNOUNCED.search(gw.log_text())
    assert found, gw.log_text()
    return found.group(1)


def store_process(gw: Gateway) -> int:
    [pid] = [
        pid
        for pid in children(gw.proc.pid)
        if b"valkey-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    return pid


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped


def test_embedded_store_is_private_announced_and_stopped(
    start_gateway: Callable[..., Gateway],
) -> None:
    gw = start_gateway()
    url = embedded_url(gw)
    folder = Path(url.removeprefix("unix://")).parent
    assert (folder.stat().st_mode & 0o777) == 0o700
    assert "store.sock" in os.listdir(folder)
    # Nothing is written to disk: no RDB or AOF file.
    with redis.Redis.from_url(url, decode_responses=True) as client:
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
    pid = store_process(gw)
    assert gw.stop() == 0
    assert gone(pid) and not folder.exists()

    # A master killed outright takes its store with it, and the next start
    # removes the folder it could not.
    gw = start_gateway()
    pid = store_process(gw)
    folder = Path(embedded_url(gw).removeprefix("unix://")).parent
    gw.stop(signal.SIGKILL)
    wait_until(lambda: gone(pid), "the store to exit with its master", timeout=5)
    assert folder.exists()
    start_gateway()
    assert not folder.exists()


def test_a_thousand_streams_cancelled_at_random_points_leave_no_lease(
    start_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = start_gateway()
    url = embedded_url(gw)
    sim.settings.first_token_delay = 0.1
    sim.settings.interval = 0.02
    sim.settings.chunks = 10  # about 0.3 s each
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps(CHAT).encode()
    request = (
        f"POST /api/chat HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    clients, each = 50, 20
    seeded = random.Random(10)
    pauses = [[seeded.uniform(0, 0.8) for _ in range(each)] for _ in range(clients)]

    def client(n: int) -> None:
        # One address per client thread keeps each under the per-client limit.
        for pause in pauses[n]:
            with socket.create_connection(
                (host, int(port)), source_address=(f"127.0.1.{n + 1}", 0)
            ) as sock:
                sock.sendall(request)
                time.sleep(pause)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def ended() -> list[dict[str, Any]]:
        found = []
        for line in gw.log_text().splitlines():
            if line.startswith("{") and '"/api/chat"' in line:
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:  # a line caught half-written
                    pass
        return found

    wait_until(lambda: len(ended()) >= clients * each, "every request to end", 30)
    took = time.monotonic() - started
    records = ended()
    assert len(records) == clients * each
    outcomes = {
        kind: sum(1 for r in records if r.get("outcome", str(r["status"])) == kind)
        for kind in ("499", "cancelled", "completed")
    }
    print(f"\n{clients * each} streams in {took:.1f} s: {outcomes}")
    # Hang-ups came before the first byte, mid-stream and after the end.
    assert all(count >= 10 for count in outcomes.values()), outcomes
    others = [r for r in records if r.get("outcome", str(r["status"])) not in outcomes]
    assert others == []
    with redis.Redis.from_url(url, decode_responses=True) as client:
        assert client.keys("*") == []


def test_a_release_after_a_quiet_spell_reaches_a_store_that_closed_the_connection(
    tmp_path: Path,
) -> None:
    # redis-server's `timeout` closes a client idle that long; over TCP, a write
    # into the closed connection seems to succeed and is lost.
    server = RedisServer(tmp_path, options=("--timeout", "1"))
    server.start()
    store = Store(server.url, 30)
    raw = server.client()
    try:
        lease = store.lease([("t:quiet", 1)])
        time.sleep(2.5)  # the store closes the idle connection the lease came by
        store.release(lease)
        assert raw.zcard("t:quiet") == 0
    finally:
        store.close()
        raw.close()
        server.stop()
