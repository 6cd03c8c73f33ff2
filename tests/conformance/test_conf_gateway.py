"""chatsvc's own promises, seen on a real Ollama: a hang-up stops the model, a
queued stream gets heartbeats, and the keep-alive cap shows in /api/ps."""

from __future__ import annotations

import http.client
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from confprocs import HEARTBEAT_S, start_chatsvc, stop
from confwire import MEASURED, Ollama, Servers, call, is_heartbeat

pytestmark = pytest.mark.chatsvc_only

SHORT = {"num_predict": 2}
ABORTED = "aborting completion request due to client closing the connection"


def _long_chat(servers: Servers, seconds: float) -> dict[str, Any]:
    """A chat that Ollama needs about `seconds` to generate."""
    tokens = max(50, int(servers.model.tokens_per_s * seconds))
    options = {"seed": 7, "temperature": 0, "num_predict": tokens}
    messages = [{"role": "user", "content": "Tell me a long story."}]
    return {"model": servers.model.name, "messages": messages, "options": options}


def _start_stream(url: str, body: dict[str, Any]) -> http.client.HTTPResponse:
    """A raw connection, so the test decides exactly when the socket closes."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("POST", "/api/chat", json.dumps(body),
                 {"Content-Type": "application/json"})  # fmt: skip
    resp = conn.getresponse()
    assert resp.status == 200
    return resp


def _hang_up_after_chunks(resp: http.client.HTTPResponse, chunks: int) -> float:
    for _ in range(chunks):
        line = json.loads(resp.readline())
        assert not line["done"], "the generation ended before the hang-up"
    hung_up = time.monotonic()
    resp.fp.raw._sock.close()  # type: ignore[attr-defined]
    resp.close()
    return hung_up


def _wait_for_log(ollama: Ollama, offset: int, text: str, within: float) -> float:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if text in ollama.log_since(offset):
            return time.monotonic()
        time.sleep(0.005)
    raise AssertionError(f"Ollama never logged {text!r}:\n{ollama.log_since(offset)}")


def _first_line_after(url: str, body: dict[str, Any]) -> float:
    start = time.monotonic()
    resp = _start_stream(url, body)
    json.loads(resp.readline())
    took = time.monotonic() - start
    resp.close()
    return took


def test_hang_up_stops_ollama_within_a_second(
    servers: Servers, ollama_server: Ollama
) -> None:
    if ollama_server.log is None:
        pytest.skip("someone else's Ollama (OLLAMA_HOST): its log is not ours to read")
    offset = ollama_server.log_size()
    resp = _start_stream(servers.other, _long_chat(servers, 60))
    hung_up = _hang_up_after_chunks(resp, 20)
    seen = _wait_for_log(ollama_server, offset, ABORTED, within=5)
    stop_ms = (seen - hung_up) * 1000
    MEASURED.setdefault("hang-up -> Ollama logs the abort, ms", []).append(
        round(stop_ms, 1)
    )
    assert stop_ms < 1000


def test_hang_up_frees_ollama_for_the_next_request(servers: Servers) -> None:
    # With OLLAMA_NUM_PARALLEL=1 a next request would wait the whole minute the
    # abandoned generation had left, had Ollama not stopped it.
    resp = _start_stream(servers.other, _long_chat(servers, 60))
    _hang_up_after_chunks(resp, 20)
    short = {**_long_chat(servers, 0), "options": {"num_predict": 4}}
    took = _first_line_after(servers.other, short)
    MEASURED.setdefault("next request's first line after a hang-up, ms", []).append(
        round(took * 1000, 1)
    )
    assert took < 1.0


def _read_timed(url: str, body: dict[str, Any], out: list[tuple[float, Any]]) -> None:
    resp = _start_stream(url, body)
    for raw in resp:
        out.append((time.monotonic(), json.loads(raw)))
    resp.close()


def test_queued_stream_gets_heartbeats_while_ollama_is_busy(servers: Servers) -> None:
    first: list[tuple[float, Any]] = []
    second: list[tuple[float, Any]] = []
    busy = threading.Thread(
        target=_read_timed, args=(servers.other, _long_chat(servers, 5), first)
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


def _expires_in(ollama_url: str, name: str) -> float:
    models = call(ollama_url, "GET", "/api/ps").json()["models"]
    (entry,) = [m for m in models if m["name"] == name]
    expires = datetime.fromisoformat(entry["expires_at"])
    return (expires - datetime.now(UTC)).total_seconds()


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
            assert call(url, "POST", "/api/generate", body).status == 200
            left = _expires_in(ollama_server.url, name)
            assert expected - 5 < left <= expected + 1, (keep_alive, left)
        # Directly, Ollama keeps what it is asked for: the cap is chatsvc's.
        body = {"model": name, "prompt": "hi", "stream": False, "keep_alive": "1h",
                "options": SHORT}  # fmt: skip
        call(ollama_server.url, "POST", "/api/generate", body)
        assert _expires_in(ollama_server.url, name) > 3500
    finally:
        stop(proc)
        body = {"model": name, "prompt": "", "keep_alive": "5m"}
        call(ollama_server.url, "POST", "/api/generate", body)
