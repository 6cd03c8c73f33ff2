"""chatsvc's own promises, seen on a real Ollama: a hang-up stops the model, a
queued stream gets heartbeats, and the keep-alive cap shows in /api/ps."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from confprocs import HEARTBEAT_S, start_chatsvc, stop
from confwire import MEASURED, Ollama, Servers, call, is_heartbeat

pytestmark = pytest.mark.chatsvc_only

SHORT = {"num_predict": 2}
# Ollama (gin) logs each request when its handler returns, with its latency:
# [GIN] 2026/12/01 - 16:01:20 | 200 |   34.720732ms |  127.0.0.1 | POST "/api/chat"
GIN_CHAT = re.compile(r'\[GIN\] .*\| +([0-9.]+)(µs|ms|s) +\|.*POST +"/api/chat"')
T = TypeVar("T")
UNIT_S = {"µs": 1e-6, "ms": 1e-3, "s": 1.0}


def _long_chat(servers: Servers, seconds: float) -> dict[str, Any]:
    """A chat that Ollama needs about `seconds` to generate."""
    tokens = max(50, int(servers.model.tokens_per_s * seconds))
    options = {"seed": 7, "temperature": 0, "num_predict": tokens}
    messages = [{"role": "user", "content": "Tell me a long story."}]
    return {"model": servers.model.name, "messages": messages, "options": options}


def _start_stream(url: str, body: dict[str, Any], timeout: float = 30) -> Stream:
    """A raw connection, so the test decides exactly when the socket closes."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", "/api/chat", json.dumps(body),
                     {"Content-Type": "application/json"})  # fmt: skip
        resp = conn.getresponse()
    except BaseException:
        conn.close()
        raise
    assert resp.status == 200
    return Stream(conn, resp)


@dataclass
class Stream:
    conn: http.client.HTTPConnection
    resp: http.client.HTTPResponse

    def close(self) -> None:
        """Hang up: the socket closes now, whatever is left unread."""
        assert self.conn.sock is not None
        self.conn.sock.close()
        self.resp.close()
        self.conn.close()


def _hang_up_after_chunks(stream: Stream, chunks: int) -> float:
    for _ in range(chunks):
        line = json.loads(stream.resp.readline())
        assert not line["done"], "the generation ended before the hang-up"
    hung_up = time.monotonic()
    stream.close()
    return hung_up


def _wait_for_chat_log(
    ollama: Ollama, offset: int, within: float
) -> tuple[float, float]:
    """When Ollama logged the end of a chat request, and the latency it logged."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = GIN_CHAT.search(ollama.log_since(offset))
        if found:
            return time.monotonic(), float(found[1]) * UNIT_S[found[2]]
        time.sleep(0.005)
    raise AssertionError(f"Ollama never logged the chat:\n{ollama.log_since(offset)}")


def _first_token_within(url: str, body: dict[str, Any], within: float) -> float | None:
    """Seconds to the first line that is not a heartbeat; None past `within`."""
    start = time.monotonic()
    try:  # straight from Ollama nothing comes, not even the head, until a token
        stream = _start_stream(url, body, timeout=within)
    except TimeoutError:
        return None
    try:
        while is_heartbeat(json.loads(stream.resp.readline())):
            if time.monotonic() - start > within:
                return None
        return time.monotonic() - start
    except TimeoutError:
        return None
    finally:
        stream.close()


def _eventually(read: Callable[[], T], good: Callable[[T], bool], within: float) -> T:
    """Ollama books a finished request or an unload after it has answered
    (server/sched.go, processCompleted): /api/ps lags the answer by a moment."""
    deadline = time.monotonic() + within
    while not good(value := read()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def _loaded(ollama_url: str) -> list[str]:
    return [m["name"] for m in call(ollama_url, "GET", "/api/ps").json()["models"]]


@pytest.fixture
def fresh_runner(servers: Servers) -> None:
    """Unload the model, so that the test starts on a runner of its own.

    Ollama 0.17.4 does not always stop its runner's work when a client leaves
    mid-stream (ollama/ollama#17131; fixed by 0.33): after one hang-up test the
    next one's requests waited 30 s in 2 of 8 runs, and as often straight to
    Ollama as through chatsvc. A new runner has no leftover work.

    Ollama answers the unload before it unloads. A request that came in between
    would share the doomed runner, and the one after it would wait for a reload
    (over a second instead of 10 ms; seen in CI), so wait until the runner is gone.
    """
    _unload(servers)


def _unload(servers: Servers) -> None:
    name = servers.model.name
    body = {"model": name, "keep_alive": 0}
    assert call(servers.ollama, "POST", "/api/generate", body, timeout=30).status == 200
    names = _eventually(
        lambda: _loaded(servers.ollama), lambda names: name not in names, within=10
    )
    assert name not in names


@pytest.mark.usefixtures("fresh_runner")
def test_hang_up_stops_ollama_within_a_second(
    servers: Servers, ollama_server: Ollama
) -> None:
    if ollama_server.log is None:
        pytest.skip("someone else's Ollama (OLLAMA_HOST): its log is not ours to read")
    offset = ollama_server.log_size()
    started = time.monotonic()
    stream = _start_stream(servers.other, _long_chat(servers, 60))
    hung_up = _hang_up_after_chunks(stream, 20)
    # Ollama 0.17 logs nothing else for a generation cancelled mid-stream: its
    # request log line, written when the handler returns, is the proof.
    seen, latency = _wait_for_chat_log(ollama_server, offset, within=5)
    stop_ms = (seen - hung_up) * 1000
    MEASURED.setdefault(
        "hang-up -> Ollama's handler returns (log seen), ms", []
    ).append(round(stop_ms, 1))
    MEASURED.setdefault("Ollama's logged latency - time to hang-up, ms", []).append(
        round((latency - (hung_up - started)) * 1000, 1)
    )
    assert stop_ms < 1000
    # The request Ollama logged lasted until the hang-up, not the minute asked for.
    assert latency < hung_up - started + 1.0


def _next_request_after_hang_up(servers: Servers, ollama: Ollama) -> float | None:
    """Seconds to the first token of a request sent right after a hang-up.

    None when it has none within a second although Ollama ended the abandoned
    request at the hang-up: then Ollama saw it and leaked its slot all the same.
    Ollama 0.17.4 does that with no chatsvc in between too: in 8 of 189 hang-ups
    straight to it, each on a new runner (ollama/ollama#17131).
    """
    offset = ollama.log_size()
    started = time.monotonic()
    stream = _start_stream(servers.other, _long_chat(servers, 60))
    hung_up = _hang_up_after_chunks(stream, 20)
    short = {**_long_chat(servers, 0), "options": {"num_predict": 4}}
    took = _first_token_within(servers.other, short, within=1.0)
    if took is None:
        assert ollama.log is not None, "no token within a second of the hang-up"
        _, latency = _wait_for_chat_log(ollama, offset, within=1)
        assert latency < hung_up - started + 1.0, "Ollama ran on after the hang-up"
    return took


@pytest.mark.usefixtures("fresh_runner")
def test_hang_up_frees_ollama_for_the_next_request(
    servers: Servers, ollama_server: Ollama
) -> None:
    # With OLLAMA_NUM_PARALLEL=1 a next request would wait the whole minute the
    # abandoned generation had left, had Ollama not stopped it.
    took = _next_request_after_hang_up(servers, ollama_server)
    if took is None:  # Ollama's leak, not chatsvc's: once more, on a new runner
        MEASURED.setdefault("Ollama leaked its slot after a hang-up", []).append(1)
        _unload(servers)
        took = _next_request_after_hang_up(servers, ollama_server)
    assert took is not None and took < 1.0
    MEASURED.setdefault("next request's first token after a hang-up, ms", []).append(
        round(took * 1000, 1)
    )


def _read_timed(url: str, body: dict[str, Any], out: list[tuple[float, Any]]) -> None:
    stream = _start_stream(url, body)
    for raw in stream.resp:
        out.append((time.monotonic(), json.loads(raw)))
    stream.close()


def test_queued_stream_gets_heartbeats_while_ollama_is_busy(servers: Servers) -> None:
    first: list[tuple[float, Any]] = []
    second: list[tuple[float, Any]] = []
    busy = threading.Thread(
        target=_read_timed, args=(servers.other, _long_chat(servers, 3), first)
    )
    busy.start()
    while not first:  # Ollama has the one slot
        time.sleep(0.01)
    queued_at = time.monotonic()
    _read_timed(servers.other, _long_chat(servers, 0.2), second)
    busy.join()

    assert first[-1][1]["done"] and second[-1][1]["done"]  # both complete
    first_done = first[-1][0]
    beats = [t for t, item in second if is_heartbeat(item)]
    real = [t for t, item in second if not is_heartbeat(item)]
    # Ollama gave the queued stream nothing until the busy one ended ...
    assert real[0] >= first_done - 0.05
    # ... and chatsvc kept it alive meanwhile, one heartbeat per interval.
    assert len(beats) >= int((first_done - queued_at) / HEARTBEAT_S) - 1 >= 2
    assert all(t < real[0] for t in beats)
    MEASURED["queued stream: heartbeats before its first token"] = [len(beats)]


def _expiry(ollama_url: str, name: str) -> str | None:
    """/api/ps's expires_at for the model, None while it is not loaded."""
    models = call(ollama_url, "GET", "/api/ps").json()["models"]
    return next((m["expires_at"] for m in models if m["name"] == name), None)


def _generate_and_expires_in(url: str, ollama_url: str, body: dict[str, Any]) -> float:
    """Seconds the model stays loaded after this request, once Ollama booked it."""
    before = _expiry(ollama_url, body["model"])
    assert call(url, "POST", "/api/generate", body).status == 200
    after = _eventually(
        lambda: _expiry(ollama_url, body["model"]), lambda e: e != before, within=2
    )
    assert after is not None and after != before, "Ollama never booked the request"
    return (datetime.fromisoformat(after) - datetime.now(UTC)).total_seconds()


def test_keep_alive_cap_shows_in_ps(
    servers: Servers, ollama_server: Ollama, tmp_path: Path
) -> None:
    url, proc, _ = start_chatsvc(
        ollama_server.url, tmp_path, CHATSVC_MAX_KEEP_ALIVE="60"
    )
    name = servers.model.name
    try:
        for keep_alive, expected in (("1h", 60), (-1, 60), (7200, 60), ("30s", 30)):
            body = {"model": name, "prompt": "hi", "stream": False,
                    "keep_alive": keep_alive, "options": SHORT}  # fmt: skip
            left = _generate_and_expires_in(url, ollama_server.url, body)
            assert expected - 5 < left <= expected + 1, (keep_alive, left)
        # Directly, Ollama keeps what it is asked for: the cap is chatsvc's.
        body = {"model": name, "prompt": "hi", "stream": False, "keep_alive": "1h",
                "options": SHORT}  # fmt: skip
        direct = ollama_server.url
        assert _generate_and_expires_in(direct, direct, body) > 3500
    finally:
        stop(proc)
        body = {"model": name, "prompt": "", "keep_alive": "5m"}
        call(ollama_server.url, "POST", "/api/generate", body)
