"""Several Ollama hosts behind one chatsvc: three simulators, started as README does."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from chatsvc.simulator import Simulator
from tests.e2e.conftest import Gateway, start_gunicorn

# A: llama3.2 + qwen3, parallel 1; B: llama3.2, parallel 2; C: qwen3, parallel 1.
MODELS = {"a": ["llama3.2", "qwen3"], "b": ["llama3.2"], "c": ["qwen3", "mistral"]}
PARALLEL = {"a": 1, "b": 2, "c": 1}
PACE = {"first_token_delay": 0.05, "interval": 0.02, "chunks": 15}


@pytest.fixture
def sims() -> Iterator[dict[str, Simulator]]:
    started = {
        name: Simulator(models=list(models), **PACE).start()
        for name, models in MODELS.items()
    }
    yield started
    for sim in started.values():
        sim.stop()


def host_list(sims: dict[str, Simulator]) -> str:
    return ",".join(f"{sims[n].url}?parallel={PARALLEL[n]}" for n in MODELS)


def start(sims: dict[str, Simulator], tmp_path: Path, **env: str) -> Gateway:
    settings = {
        "OLLAMA_HOST": host_list(sims),
        "CHATSVC_DISCOVERY_S": "1",
        "CHATSVC_PROBE_S": "0.5",
        "CHATSVC_MAX_STREAMS_PER_CLIENT": "64",  # every test client is one address
        **env,
    }
    return start_gunicorn(tmp_path / "gw", settings)


@pytest.fixture
def gw(sims: dict[str, Simulator], tmp_path: Path) -> Iterator[Gateway]:
    gateway = start(sims, tmp_path)
    yield gateway
    gateway.stop()


def chat(url: str, model: str, text: str = "hi", **extra: object) -> list[dict]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    with requests.post(f"{url}/api/chat", json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200, r.text
        return [json.loads(line) for line in r.iter_lines() if line]


def real(lines: list[dict]) -> list[dict]:
    """Without the heartbeats chatsvc sends while a request waits."""
    return [x for x in lines if x.get("done") or x.get("message", {}).get("content")]


def metric(url: str, name: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def served(sim: Simulator) -> int:
    return sum(1 for r in sim.requests if r.path == "/api/chat")


def test_no_host_ever_exceeds_its_parallel_and_every_stream_completes(
    sims: dict[str, Simulator], gw: Gateway
) -> None:
    results: list[list[dict]] = []

    def one(i: int) -> None:
        results.append(chat(gw.url, ["llama3.2", "qwen3"][i % 2], f"q{i}"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 16
    assert all(real(lines)[-1]["done"] is True for lines in results)
    for name, sim in sims.items():
        assert sim.stats()["max_in_flight"] <= PARALLEL[name], name
    # 16 requests on 4 slots: some waited in chatsvc's queue, not on a host.
    assert metric(gw.url, "chatsvc_queue_wait_seconds_count") > 0
    assert served(sims["b"]) > 0 and served(sims["c"]) > 0
    assert metric(gw.url, "chatsvc_queue_waiting") == 0
    assert sum(sim.stats()["waiting"] for sim in sims.values()) == 0


def test_the_host_with_the_model_loaded_wins(
    sims: dict[str, Simulator], gw: Gateway
) -> None:
    # Load llama3.2 on A behind chatsvc's back; discovery reads /api/ps each second.
    chat(sims["a"].url, "llama3.2", keep_alive="10m")
    time.sleep(2.5)
    before = served(sims["a"])
    for i in range(3):
        chat(gw.url, "llama3.2", f"loaded {i}")
    assert served(sims["a"]) == before + 3
    assert served(sims["b"]) == 0


def test_a_host_stopped_before_a_request_costs_the_client_no_error(
    sims: dict[str, Simulator], gw: Gateway
) -> None:
    chat(sims["a"].url, "llama3.2", keep_alive="10m")  # A would win: loaded
    time.sleep(2.5)
    sims["a"].stop()
    for i in range(4):
        assert real(chat(gw.url, "llama3.2", f"after stop {i}"))[-1]["done"] is True
    assert served(sims["b"]) == 4
    up = requests.get(f"{gw.url}/readyz", timeout=10)
    assert up.status_code == 200
    assert up.json()["hosts"][sims["a"].url.split("//")[1]] == "down"


def test_a_failing_host_fails_over_before_the_first_byte(
    sims: dict[str, Simulator], gw: Gateway
) -> None:
    # C answers every chat with Ollama's 500; A has qwen3 too.
    requests.post(f"{sims['c'].url}/_sim/settings", json={"fault": "error_before"})
    for i in range(3):
        assert real(chat(gw.url, "qwen3", f"fail over {i}"))[-1]["done"] is True
    assert served(sims["a"]) == 3


def test_a_host_that_dies_mid_stream_gives_an_in_band_error(
    sims: dict[str, Simulator], gw: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a", "c"):  # whichever serves qwen3 drops the connection
        requests.post(
            f"{sims[name].url}/_sim/settings",
            json={"fault": "drop_after", "fault_after": 3},
        )
    lines = chat(gw.url, "qwen3", "die")
    with capsys.disabled():
        print("\nclient saw:", *lines[-2:], sep="\n  ")
    assert "error" in lines[-1] and not any(x.get("done") for x in lines)
    text = [x for x in lines if "error" not in x and any(x["message"].values())]
    assert len(text) == 3  # one host's text only, nothing spliced after
    assert served(sims["a"]) + served(sims["c"]) == 1


def hold(url: str, model: str, seconds: float) -> socket.socket:
    """A raw streamed chat that stays open; close the socket to leave."""
    host, port = url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)))
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}]})
    sock.sendall(
        f"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
    )
    return sock


def slow(sims: dict[str, Simulator]) -> None:
    for sim in sims.values():
        requests.post(f"{sim.url}/_sim/settings", json={"chunks": 400})


def test_a_client_that_leaves_the_queue_frees_its_place(
    sims: dict[str, Simulator], gw: Gateway
) -> None:
    slow(sims)
    busy = [hold(gw.url, "llama3.2", 0) for _ in range(3)]  # A 1 + B 2 slots
    deadline = time.monotonic() + 10
    while sum(s.stats()["in_flight"] for s in sims.values()) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    waiter = hold(gw.url, "llama3.2", 0)
    while metric(gw.url, "chatsvc_queue_waiting") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert waiter.recv(100).startswith(b"HTTP/1.1 200")  # committed after a heartbeat
    waiter.close()
    left = time.monotonic()
    while metric(gw.url, "chatsvc_queue_waiting") > 0:
        assert time.monotonic() - left < 1.0, "the place was not freed at once"
        time.sleep(0.05)
    for sock in busy:
        sock.close()
    # Its slot never went to a ghost: a new request is served at once.
    for sim in sims.values():
        requests.post(f"{sim.url}/_sim/settings", json={"chunks": 5})
    started = time.monotonic()
    assert real(chat(gw.url, "llama3.2", "next"))[-1]["done"] is True
    assert time.monotonic() - started < 3


def test_beyond_the_queue_limit_a_503_with_retry_after(
    sims: dict[str, Simulator], tmp_path: Path
) -> None:
    gateway = start(sims, tmp_path, CHATSVC_MAX_QUEUE="1")
    try:
        slow(sims)
        busy = [hold(gateway.url, "mistral", 0)]  # only C has it: one slot
        time.sleep(0.5)
        busy.append(hold(gateway.url, "mistral", 0))  # waits
        deadline = time.monotonic() + 10
        while metric(gateway.url, "chatsvc_queue_waiting") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        body = {"model": "mistral", "messages": [{"role": "user", "content": "x"}]}
        full = requests.post(f"{gateway.url}/api/chat", json=body, timeout=10)
        assert full.status_code == 503
        assert full.headers["Retry-After"]
        assert "CHATSVC_MAX_QUEUE" in full.json()["error"]
        for sock in busy:
            sock.close()
    finally:
        gateway.stop()


def test_discovery_notices_a_model_pulled_on_one_host(
    sims: dict[str, Simulator], gw: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    body = {"model": "gemma3", "prompt": "hi", "stream": False}
    missing = requests.post(f"{gw.url}/api/generate", json=body, timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error"] == "model 'gemma3' not found"
    requests.post(f"{sims['b'].url}/_sim/settings", json={"pull_speed": 1e12})
    pulled = requests.post(
        f"{sims['b'].url}/api/pull", json={"model": "gemma3", "stream": False}
    )
    assert pulled.status_code == 200
    started = time.monotonic()
    while not requests.post(f"{gw.url}/api/generate", json=body, timeout=10).ok:
        assert time.monotonic() - started < 5, "discovery never saw the pulled model"
        time.sleep(0.05)
    took = time.monotonic() - started
    with capsys.disabled():
        print(f"\ndiscovery noticed the pulled model after {took:.2f} s")
    assert took < 2.5  # CHATSVC_DISCOVERY_S=1 plus a read


def test_model_lists_are_merged(sims: dict[str, Simulator], gw: Gateway) -> None:
    tags = requests.get(f"{gw.url}/api/tags", timeout=10).json()["models"]
    names = [m["name"] for m in tags]
    assert sorted(names) == ["llama3.2:latest", "mistral:latest", "qwen3:latest"]
    stamps = [m["modified_at"] for m in tags]
    assert stamps == sorted(stamps, reverse=True)
    data = requests.get(f"{gw.url}/v1/models", timeout=10).json()["data"]
    ids = [m["id"] for m in data]
    assert len(ids) == len(set(ids)) == 3


BUSY = b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'


class _BusyOllama(BaseHTTPRequestHandler):
    """An Ollama whose scheduler queue is full: it lists llama3.2 and answers 503."""

    posts: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        key = "models"
        body = {key: [{"name": "llama3.2:latest", "model": "llama3.2:latest"}]}
        self._answer(200, json.dumps(body).encode())

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.posts.append(self.path)
        self._answer(503, BUSY)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_503_busy_host_fails_over(sims: dict[str, Simulator], tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BusyOllama)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    busy = f"http://127.0.0.1:{server.server_address[1]}?parallel=8"
    # Most room: the busy host is the first choice for llama3.2.
    gateway = start(sims, tmp_path, OLLAMA_HOST=f"{busy},{host_list(sims)}")
    try:
        time.sleep(1.5)  # every host's models read
        assert real(chat(gateway.url, "llama3.2", "busy?"))[-1]["done"] is True
        assert _BusyOllama.posts == ["/api/chat"]
        assert served(sims["a"]) + served(sims["b"]) == 1
    finally:
        gateway.stop()
        server.shutdown()
        server.server_close()


def test_delete_and_copy_apply_to_every_host_that_is_up(
    sims: dict[str, Simulator], gw: Gateway
) -> None:
    copied = requests.post(
        f"{gw.url}/api/copy",
        json={"source": "llama3.2", "destination": "mine"},
        timeout=10,
    )
    assert copied.status_code == 200
    names = {n: [m["name"] for m in sims[n]._tags()] for n in ("a", "b", "c")}
    assert "mine:latest" in names["a"] and "mine:latest" in names["b"]
    assert "mine:latest" not in names["c"]  # C has no llama3.2 to copy
    gone = requests.delete(f"{gw.url}/api/delete", json={"model": "llama3.2"})
    assert gone.status_code == 200
    assert all(
        "llama3.2:latest" not in [m["name"] for m in sim._tags()]
        for sim in sims.values()
    )
    again = requests.delete(f"{gw.url}/api/delete", json={"model": "llama3.2"})
    assert again.status_code == 404
