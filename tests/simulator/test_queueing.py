"""Slots, waiting and loaded models (ollama-wire.md §11), and the command line."""

from __future__ import annotations

import datetime
import json
import re
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import requests

from chatsvc.simulator import Simulator
from simulator.rawhttp import (
    HELLO,
    JSON_UTF8,
    dechunk,
    error_body,
    exchange,
    read_all,
    send,
    split,
    wait_for,
)

CHAT = {"model": "llama3.2", "messages": HELLO}
BUSY = "server busy, please try again.  maximum pending requests exceeded"


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def expires_in(sim: Simulator, name: str) -> float:
    for model in requests.get(sim.url + "/api/ps").json()["models"]:
        if model["name"] == name:
            at = datetime.datetime.fromisoformat(model["expires_at"])
            return at.timestamp() - time.time()
    raise AssertionError(f"{name} is not loaded")


# --- slots ----------------------------------------------------------------------------


@pytest.mark.parametrize("parallel", [1, 2])
def test_requests_beyond_parallel_wait_silently(sim: Simulator, parallel: int) -> None:
    sim.settings.parallel = parallel
    sim.settings.interval, sim.settings.chunks = 0.1, 10  # a second each
    socks = [send(sim, "/api/chat", CHAT) for _ in range(parallel + 2)]
    try:
        wait_for(lambda: sim.stats()["waiting"] == 2)
        wait_for(lambda: sum(map(readable, socks)) == parallel)
        time.sleep(0.1)  # the first streams last a second
        # The others have nothing, not even a status line, while the first stream.
        assert sum(map(readable, socks)) == parallel
        assert sim.stats()["in_flight"] == parallel
        replies = [split(read_all(s)) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert all(r[0] == 200 and len(dechunk(r[2])) == 11 for r in replies)
    stats = requests.get(sim.url + "/_sim/stats").json()
    assert (stats["max_in_flight"], stats["in_flight"], stats["waiting"]) == (
        parallel,
        0,
        0,
    )


def test_every_route_that_generates_takes_a_slot(sim: Simulator) -> None:
    sim.settings.parallel = 1
    sim.settings.interval, sim.settings.chunks = 0.05, 6
    calls = [
        ("/api/chat", CHAT),
        ("/api/generate", {"model": "llama3.2", "prompt": "x", "stream": False}),
        ("/v1/chat/completions", CHAT | {"stream": True}),
        ("/v1/completions", {"model": "llama3.2", "prompt": "x"}),
        ("/v1/responses", {"model": "llama3.2", "input": "x"}),
    ]
    threads = [
        threading.Thread(target=exchange, args=(sim, path, body))
        for path, body in calls
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sim.stats()["max_in_flight"] == 1 and len(sim.requests) == 5


def test_slots_are_per_model(sim: Simulator) -> None:
    sim.settings.parallel = 1
    sim.settings.interval, sim.settings.chunks = 0.05, 6
    socks = [send(sim, "/api/chat", CHAT | {"model": m}) for m in ("llama3.2", "qwen3")]
    try:
        wait_for(lambda: all(map(readable, socks)))  # one runner each
    finally:
        for s in socks:
            read_all(s)
            s.close()
    assert sim.stats()["max_in_flight"] == 2


def test_waiting_is_first_come_first_served(sim: Simulator) -> None:
    sim.settings.parallel = 1
    sim.settings.interval, sim.settings.chunks = 0.1, 5  # none ends before all wait
    started: list[int] = []

    def call(i: int) -> None:
        body = {"model": "llama3.2", "prompt": f"[echo] {i}", "stream": False}
        requests.post(sim.url + "/api/generate", json=body)
        started.append(i)

    threads = []
    for i in range(5):
        threads.append(threading.Thread(target=call, args=(i,)))
        threads[-1].start()
        queued = i + 1  # in the slot's queue, or in the slot
        wait_for(
            lambda q=queued: sim.stats()["waiting"] + sim.stats()["in_flight"] == q
        )
    for t in threads:
        t.join(10)
    assert started == [0, 1, 2, 3, 4]


def test_a_client_that_leaves_the_wait_frees_its_place(sim: Simulator) -> None:
    sim.settings.parallel = 1
    sim.settings.interval, sim.settings.chunks = 0.05, 20
    with send(sim, "/api/chat", CHAT) as first:
        wait_for(lambda: readable(first))
        with send(sim, "/api/chat", CHAT):
            wait_for(lambda: sim.stats()["waiting"] == 1)
        left = time.monotonic()
        hangup = sim.wait_hangup(2)
        assert hangup is not None and (hangup.path, hangup.chunks_sent) == (
            "/api/chat",
            0,
        )
        assert hangup.at - left < 0.2
        assert sim.stats()["waiting"] == 0
        assert split(read_all(first))[0] == 200  # the first one is unaffected
    assert sim.stats()["max_in_flight"] == 1


def test_raising_parallel_frees_waiters(sim: Simulator) -> None:
    sim.settings.parallel = 1
    sim.settings.interval, sim.settings.chunks = 0.05, 40
    socks = [send(sim, "/api/chat", CHAT) for _ in range(3)]
    try:
        wait_for(lambda: sim.stats()["waiting"] == 2)
        r = requests.post(sim.url + "/_sim/settings", json={"parallel": 3})
        assert r.status_code == 200
        wait_for(lambda: all(map(readable, socks)))
    finally:
        for s in socks:
            s.close()
    bad = requests.post(sim.url + "/_sim/settings", json={"parallel": 0})
    assert bad.status_code == 400 and "parallel" in bad.json()["error"]


def test_a_cold_model_loads_silently_first(sim: Simulator) -> None:
    sim.settings.load_delay = 0.4
    with send(sim, "/api/chat", CHAT | {"stream": False}) as sock:
        time.sleep(0.2)
        assert not readable(sock)  # loading: nothing on the wire
        assert [
            m["name"] for m in requests.get(sim.url + "/api/ps").json()["models"]
        ] == ["llama3.2:latest"]
        reply = json.loads(split(read_all(sock))[2])
    assert reply["load_duration"] >= 0.4e9
    warm = requests.post(sim.url + "/api/chat", json=CHAT | {"stream": False}).json()
    assert warm["load_duration"] < 0.1e9
    load = requests.post(sim.url + "/api/generate", json={"model": "qwen3"})
    assert load.json()["done_reason"] == "load" and load.elapsed.total_seconds() >= 0.4


def test_the_scheduler_loads_one_model_at_a_time(sim: Simulator) -> None:
    sim.settings.load_delay = 0.3
    answered: dict[str, float] = {}

    def load(model: str) -> None:
        requests.post(sim.url + "/api/generate", json={"model": model})
        answered[model] = time.monotonic()

    threads = [threading.Thread(target=load, args=(m,)) for m in ("llama3.2", "qwen3")]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # The second load waited for the first. (Its own request may have been sent
    # a moment after the first load began, so time both from before either.)
    assert max(answered.values()) - started >= 0.6
    warm = requests.post(sim.url + "/api/generate", json={"model": "qwen3"})
    assert warm.elapsed.total_seconds() < 0.3


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/api/chat", CHAT, (JSON_UTF8, error_body(BUSY))),
        (
            "/api/generate",
            {"model": "qwen3", "prompt": ""},
            (JSON_UTF8, error_body(BUSY)),
        ),
        ("/api/embed", {"model": "nomic-embed-text"}, (JSON_UTF8, error_body(BUSY))),
        (
            "/v1/chat/completions",
            CHAT,
            (
                "application/json",
                b'{"error":{"message":"' + BUSY.encode() + b'","type":"api_error",'
                b'"param":null,"code":null}}\n',
            ),
        ),
    ],
)
def test_busy_fault(sim: Simulator, path: str, body: Any, expected: Any) -> None:
    sim.settings.fault = "busy"
    status, headers, payload = exchange(sim, path, body)
    assert (status, headers["content-type"], payload) == (503, *expected)
    assert "retry-after" not in headers


# --- loaded models and keep_alive ---------------------------------------------------


def test_ps_after_use_and_keep_alive(sim: Simulator) -> None:
    assert requests.get(sim.url + "/api/ps").json() == {"models": []}
    requests.post(sim.url + "/api/chat", json=CHAT | {"keep_alive": "1h"})
    assert abs(expires_in(sim, "llama3.2:latest") - 3600) < 5
    requests.post(sim.url + "/api/chat", json=CHAT)  # no keep_alive: left alone
    assert abs(expires_in(sim, "llama3.2:latest") - 3600) < 5
    requests.post(sim.url + "/api/generate", json={"model": "qwen3", "keep_alive": 600})
    assert abs(expires_in(sim, "qwen3:latest") - 600) < 5
    running = requests.get(sim.url + "/api/ps").json()["models"]
    assert [m["name"] for m in running] == ["llama3.2:latest", "qwen3:latest"]
    assert list(running[0]) == [
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
    ]
    requests.post(sim.url + "/api/chat", json=CHAT | {"keep_alive": -1})
    assert expires_in(sim, "llama3.2:latest") > 280 * 365 * 86400  # "Forever"
    requests.post(sim.url + "/api/chat", json=CHAT | {"keep_alive": "0s"})
    # Unloaded as the request ends, just after its reply (as in Ollama).
    wait_for(lambda: len(requests.get(sim.url + "/api/ps").json()["models"]) == 1)
    names = [m["name"] for m in requests.get(sim.url + "/api/ps").json()["models"]]
    assert names == ["qwen3:latest"]


def test_a_model_expires(sim: Simulator) -> None:
    requests.post(sim.url + "/api/chat", json=CHAT | {"keep_alive": "200ms"})
    assert expires_in(sim, "llama3.2:latest") <= 0.2
    time.sleep(0.3)
    assert requests.get(sim.url + "/api/ps").json() == {"models": []}


def test_expires_at_during_a_request(sim: Simulator) -> None:
    """Never idle since its load: now + keep_alive; busy later: the stale time."""
    sim.settings.interval, sim.settings.chunks = 0.05, 12
    with send(sim, "/api/chat", CHAT | {"keep_alive": "10m"}) as sock:
        wait_for(lambda: readable(sock))
        first = expires_in(sim, "llama3.2:latest")
        time.sleep(0.3)
        assert (
            abs(first - 600) < 2 and abs(expires_in(sim, "llama3.2:latest") - 600) < 2
        )
        read_all(sock)
    requests.post(sim.url + "/api/chat", json=CHAT | {"keep_alive": 0.3})
    with send(sim, "/api/chat", CHAT) as sock:  # before it expires: timer stopped
        wait_for(lambda: readable(sock))
        time.sleep(0.35)
        assert expires_in(sim, "llama3.2:latest") < 0  # the CLI prints "Stopping..."
        read_all(sock)
    time.sleep(0.35)  # idle past its keep_alive: unloaded
    assert requests.get(sim.url + "/api/ps").json() == {"models": []}
    with send(sim, "/api/chat", CHAT) as sock:  # loaded afresh: the default 5m
        wait_for(lambda: readable(sock))
        assert abs(expires_in(sim, "llama3.2:latest") - 300) < 2
        read_all(sock)


@pytest.mark.parametrize(
    ("keep_alive", "error"),
    [
        ("300", 'time: missing unit in duration "300"'),
        ("soon", 'time: invalid duration "soon"'),
        ("5x", 'time: invalid duration "5x"'),
    ],
)
def test_bad_keep_alive(sim: Simulator, keep_alive: str, error: str) -> None:
    status, _, payload = exchange(sim, "/api/chat", CHAT | {"keep_alive": keep_alive})
    assert (status, payload) == (400, error_body(error))


# --- the command line -----------------------------------------------------------------


def test_command_line_parallel_and_models() -> None:
    args = [sys.executable, "-m", "chatsvc.simulator", "--port", "0", "--parallel", "1"]
    args += ["--models", "mistral,gemma3:4b", "--first-token-delay", "0"]
    args += ["--interval", "0.05", "--chunks", "6", "--load-delay", "0.2"]
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split()[-1]  # gunicorn.conf.py reads this
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
            tags = requests.get(url + "/api/tags").json()["models"]
            assert [m["name"] for m in tags] == ["mistral:latest", "gemma3:4b"]
            body = {"model": "mistral", "messages": HELLO}
            threads = [
                threading.Thread(
                    target=requests.post,
                    args=(url + "/api/chat",),
                    kwargs={"json": body},
                )
                for _ in range(3)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            stats = requests.get(url + "/_sim/stats").json()
            assert (stats["max_in_flight"], stats["requests"]) == (1, 4)
            cold = requests.post(url + "/api/chat", json=body | {"model": "gemma3:4b"})
            assert json.loads(cold.content.splitlines()[-1])["load_duration"] >= 0.2e9
        finally:
            proc.terminate()
            proc.wait(5)


def test_command_line_rejects_a_bad_parallel() -> None:
    args = [sys.executable, "-m", "chatsvc.simulator", "--port", "0", "--parallel", "0"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=20)
    assert done.returncode == 2 and "parallel" in done.stderr
