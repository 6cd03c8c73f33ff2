"""Several Ollama hosts behind one chatsvc: three simulators, started as README does."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import ollama
import pytest
import requests

from chatsvc.simulator import Simulator
from tests.e2e.conftest import WORKERS, Gateway, start_gunicorn
from tests.e2e.test_clients import _node

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
    # Back to back: each next request comes the moment the last one ended, when
    # A's one slot must already be free again.
    for i in range(10):
        chat(gw.url, "llama3.2", f"loaded {i}")
    assert served(sims["a"]) == before + 10
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


# -- model management on several hosts -------------------------------------------


def name_of(sim: Simulator) -> str:
    return sim.url.split("//")[1]


def tags(sim: Simulator) -> list[str]:
    return [m["name"] for m in sim._tags()]


def until_down(gw: Gateway, sim: Simulator) -> None:
    """Until every worker has seen sim down (discovery reads every second). Each
    logs it once; /readyz answers from whichever worker takes the connection."""
    line = f"Ollama host {name_of(sim)} is down"
    deadline = time.monotonic() + 10
    while gw.log_text().count(line) < WORKERS:
        assert time.monotonic() < deadline, "not every worker saw the host down"
        time.sleep(0.05)


def pull_lines(url: str, model: str) -> list[dict]:
    body = {"model": model}
    with requests.post(f"{url}/api/pull", json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200, r.text
        return [json.loads(line) for line in r.iter_lines() if line]


def test_pull_applies_to_every_host_that_is_up_one_after_another(
    sims: dict[str, Simulator], gw: Gateway
) -> None:
    for sim in sims.values():  # a few progress lines per layer
        requests.post(f"{sim.url}/_sim/settings", json={"pull_speed": 2e9})
    sims["c"].stop()
    until_down(gw, sims["c"])
    lines = pull_lines(gw.url, "gemma3")
    a, b = name_of(sims["a"]), name_of(sims["b"])
    strays = [line for line in lines if line.get("host") not in (a, b)]
    assert not strays
    order = [line["host"] for line in lines]
    assert order == sorted(order, key=[a, b].index)  # A's pull, then B's
    assert {"status": "finished", "host": a} in lines
    assert lines[-1] == {"status": "success", "host": b}
    assert [x["status"] for x in lines].count("success") == 1
    assert any(x["host"] == a and x.get("completed") for x in lines)
    assert any(x["host"] == b and x.get("completed") for x in lines)
    assert "gemma3:latest" in tags(sims["a"]) and "gemma3:latest" in tags(sims["b"])
    # Every worker routes to both hosts at once: three held chats fill A's one
    # slot and B's two, with no 404 from a list read before the pull.
    slow({"a": sims["a"], "b": sims["b"]})
    held = [hold(gw.url, "gemma3", 0) for _ in range(3)]
    try:
        deadline = time.monotonic() + 10
        while sims["a"].stats()["in_flight"] + sims["b"].stats()["in_flight"] < 3:
            assert time.monotonic() < deadline, "not every host served gemma3"
            time.sleep(0.05)
        assert sims["a"].stats()["in_flight"] == 1
        assert sims["b"].stats()["in_flight"] == 2
    finally:
        for sock in held:
            sock.close()


def test_a_pull_that_fails_on_one_host_ends_with_its_error_and_no_success(
    sims: dict[str, Simulator], gw: Gateway
) -> None:
    for sim in sims.values():
        requests.post(f"{sim.url}/_sim/settings", json={"pull_speed": 2e9})
    fault = {"fault": "error_after", "fault_after": 2, "fault_message": "disk full"}
    requests.post(f"{sims['b'].url}/_sim/settings", json=fault)
    lines = pull_lines(gw.url, "gemma3")
    a, b = name_of(sims["a"]), name_of(sims["b"])
    assert {"status": "finished", "host": a} in lines
    assert lines[-1] == {"error": "disk full"}
    assert not any(x.get("status") == "success" for x in lines)
    assert [x["host"] for x in lines[:-1]].count(b) == 2
    assert "gemma3:latest" not in tags(sims["c"])  # nothing after the failure
    # stream:false: Ollama's own answer to a failed pull, a 500 with the error.
    body = {"model": "gemma3", "stream": False}
    whole = requests.post(f"{gw.url}/api/pull", json=body, timeout=60)
    assert whole.status_code == 500
    assert whole.json() == {"error": "disk full"}


def test_a_client_that_leaves_a_pull_stops_it_and_the_hosts_after(
    sims: dict[str, Simulator], gw: Gateway
) -> None:
    for sim in sims.values():
        requests.post(f"{sim.url}/_sim/settings", json={"pull_speed": 1e6})  # minutes
    host, port = gw.url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)))
    body = json.dumps({"model": "gemma3"})
    sock.sendall(
        f"POST /api/pull HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
    )
    sock.settimeout(10)
    head = sock.recv(4096)
    while name_of(sims["a"]).encode() not in head:  # A's first progress line
        more = sock.recv(4096)
        assert more, head
        head += more
    assert head.startswith(b"HTTP/1.1 200")
    time.sleep(0.3)
    sock.close()
    closed = time.monotonic()
    hangup = sims["a"].wait_hangup(5)
    assert hangup is not None and hangup.path == "/api/pull"
    assert hangup.at - closed < 0.5
    time.sleep(0.5)
    for name in ("b", "c"):
        assert all(r.path != "/api/pull" for r in sims[name].requests), name


PULL_JS = """
import { Ollama } from 'ollama'
const ollama = new Ollama({ host: process.argv[1] })
const parts = []
for await (const part of await ollama.pull({ model: 'gemma3', stream: true })) {
  parts.push(part)
}
const whole = await ollama.pull({ model: 'gemma3' })
console.log(JSON.stringify({ parts, whole }))
"""


def test_official_clients_pull_from_every_host(
    sims: dict[str, Simulator], gw: Gateway
) -> None:
    for sim in sims.values():
        requests.post(f"{sim.url}/_sim/settings", json={"pull_speed": 1e12})
    client = ollama.Client(host=gw.url)
    assert client.pull("gemma3").status == "success"
    parts = list(client.pull("gemma3", stream=True))
    assert [p.status for p in parts].count("success") == 1
    assert parts[-1].status == "success"
    assert [p.status for p in parts].count("finished") == 2  # A and B, before C
    client.close()
    got = _node(PULL_JS, gw.url)
    statuses = [p["status"] for p in got["parts"]]
    assert statuses.count("finished") == 2 and statuses[-1] == "success"
    assert {p["host"] for p in got["parts"]} == {name_of(s) for s in sims.values()}
    assert got["whole"]["status"] == "success"
    assert all("gemma3:latest" in tags(sim) for sim in sims.values())


def test_create_push_and_blobs_go_to_the_host_named(
    sims: dict[str, Simulator], gw: Gateway
) -> None:
    b, c = name_of(sims["b"]), name_of(sims["c"])
    body = {"model": "mine", "from": "llama3.2", "stream": False}
    made = requests.post(f"{gw.url}/api/create?host={b}", json=body, timeout=30)
    assert made.status_code == 200, made.text
    assert made.json() == {"status": "success", "host": b}
    assert "mine:latest" in tags(sims["b"])
    assert "mine:latest" not in tags(sims["a"]) + tags(sims["c"])
    # Every worker knows at once where it is.
    for i in range(4):
        assert real(chat(gw.url, "mine", f"new {i}"))[-1]["done"] is True
    assert served(sims["b"]) == 4
    # Streamed, and without ?host=: the first host in OLLAMA_HOST.
    body = {"model": "mine2", "from": "llama3.2"}
    with requests.post(f"{gw.url}/api/create", json=body, stream=True) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1] == {"status": "success", "host": name_of(sims["a"])}
    assert "mine2:latest" in tags(sims["a"])
    assert "mine2:latest" not in tags(sims["b"]) + tags(sims["c"])
    pushed = requests.post(
        f"{gw.url}/api/push?host={b}", json={"model": "mine", "stream": False}
    )
    # Ollama's own answer from B (the simulator, like Ollama offline, cannot
    # reach the registry).
    assert pushed.status_code == 500 and "registry" in pushed.json()["error"]
    assert [r.path for r in sims["b"].requests].count("/api/push") == 1
    assert all(r.path != "/api/push" for r in sims["a"].requests)

    data = b"GGUF" + b"\0" * 1000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob = f"{gw.url}/api/blobs/{digest}"
    assert requests.head(f"{blob}?host={c}").status_code == 404
    assert requests.post(f"{blob}?host={c}", data=data).status_code == 201
    assert requests.head(f"{blob}?host={c}").status_code == 200
    assert requests.head(blob).status_code == 404  # A has no such blob
    blob_posts = [r for r in sims["c"].requests if r.path.startswith("/api/blobs/")]
    assert [r.method for r in blob_posts] == ["HEAD", "POST", "HEAD"]

    unknown = requests.post(f"{gw.url}/api/create?host=nope:1", json=body)
    assert unknown.status_code == 400
    assert "nope:1" in unknown.json()["error"]
    assert requests.head(f"{blob}?host=nope:1").status_code == 400
    sims["c"].stop()
    until_down(gw, sims["c"])
    down = requests.post(f"{gw.url}/api/create?host={c}", json=body, timeout=10)
    assert down.status_code == 503
    assert down.headers["Retry-After"] and c in down.json()["error"]
    assert requests.post(f"{blob}?host={c}", data=data).status_code == 503


# -- health ----------------------------------------------------------------------


def test_readyz_is_503_while_every_host_is_down_and_200_once_one_is_back(
    sims: dict[str, Simulator], tmp_path: Path
) -> None:
    probe_s = 4.0
    gateway = start(sims, tmp_path, CHATSVC_PROBE_S=str(probe_s))
    try:
        assert requests.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
        stopped = time.monotonic()
        for sim in sims.values():
            sim.stop()
        for sim in sims.values():
            until_down(gateway, sim)
        ready = requests.get(f"{gateway.url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.headers["Retry-After"]
        body = ready.json()
        assert "no Ollama host is up" in body["error"]
        assert body["hosts"] == {name_of(s): "down" for s in sims.values()}
        # Back before the first probe (each worker saw the hosts down at most a
        # discovery interval after the stop, and probes probe_s after that).
        port = int(sims["b"].url.rsplit(":", 1)[1])
        back = Simulator(port=port, models=MODELS["b"], **PACE).start()
        try:
            restarted = time.monotonic()
            assert restarted - stopped < probe_s - 0.5
            line = f"Ollama host {name_of(back)} answers again"
            while gateway.log_text().count(line) < WORKERS:  # every worker's probe
                took = time.monotonic() - restarted
                assert took < probe_s + 1.0, "the host back up was not noticed"
                time.sleep(0.02)
            answer = requests.get(f"{gateway.url}/readyz", timeout=10)
            assert answer.status_code == 200
            assert answer.json()["hosts"][name_of(back)] == "up"
            assert real(chat(gateway.url, "llama3.2"))[-1]["done"] is True
        finally:
            back.stop()
    finally:
        gateway.stop()
