"""The Ollama simulator against the official client, requests, httpx and raw sockets."""

from __future__ import annotations

import ast
import calendar
import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
import requests

from chatsvc import simulator
from chatsvc.simulator import FAULTS, Hangup, Simulator
from simulator.rawhttp import (
    CREATED_AT,
    HELLO,
    LOCAL_TIME,
    address,
    dechunk,
    error_body,
    exchange,
    read_all,
    send,
    split,
    wait_streams_closed,
)

# --- metadata ---------------------------------------------------------------------


def test_root_get_and_head(sim: Simulator) -> None:
    r = requests.get(sim.url + "/")
    assert (r.status_code, r.text) == (200, "Ollama is running")
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    h = requests.head(sim.url + "/")
    assert (h.status_code, h.content, h.headers["Content-Length"]) == (200, b"", "17")


def test_cli_heartbeat(sim: Simulator) -> None:
    headers = {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "User-Agent": "ollama/0.33.0 (amd64 linux) Go/go1.24.1",
    }
    status, got, payload = exchange(sim, "/", b"", "HEAD")
    assert (status, got["content-length"], payload) == (200, "17", b"")
    r = requests.head(sim.url + "/", headers=headers)
    assert (
        r.status_code < 400 and r.headers["Content-Type"] == "text/plain; charset=utf-8"
    )
    assert sim.requests[-1].headers["user-agent"].startswith("ollama/")


def test_version_tags_and_show(sim: Simulator, client: ollama.Client) -> None:
    assert requests.get(sim.url + "/api/version").json() == {"version": "0.33.0"}
    raw = requests.get(sim.url + "/api/tags").json()["models"]
    names = ["llama3.2:latest", "qwen3:latest", "nomic-embed-text:latest"]
    assert [m["name"] for m in raw] == names
    first = raw[0]
    assert list(first) == ["name", "model", "modified_at", "size", "digest", "details"]
    assert LOCAL_TIME.match(first["modified_at"])
    assert re.fullmatch(r"[0-9a-f]{64}", first["digest"])
    assert first["details"]["family"] == "llama"
    assert raw[0]["modified_at"] > raw[1]["modified_at"]  # newest first
    assert [m.model for m in client.list().models] == names

    shown = client.show("qwen3")
    assert "thinking" in (shown.capabilities or [])
    legacy = requests.post(sim.url + "/api/show", json={"name": "llama3.2:latest"})
    body = legacy.json()
    assert legacy.status_code == 200
    assert list(body)[-5:] == [
        "details",
        "model_info",
        "tensors",
        "capabilities",
        "modified_at",
    ]
    info = body["model_info"]
    assert list(info) == sorted(info)  # a Go map: its keys sorted
    assert info["general.architecture"] == "llama"
    assert info["llama.attention.head_count"] == 24
    assert info["llama.block_count"] == 28 and info["llama.vocab_size"] == 128256
    assert info["tokenizer.ggml.tokens"] is None  # arrays are read only if verbose
    assert body["tensors"][0] == {
        "name": "token_embd.weight",
        "type": "Q4_K",
        "shape": [3072, 128256],
    }
    assert len(body["tensors"]) == 1 + 9 * 28 + 1


def test_ps_lists_models_after_use(sim: Simulator, client: ollama.Client) -> None:
    assert client.ps().models == []
    client.chat(model="qwen3", messages=HELLO)
    running = requests.get(sim.url + "/api/ps").json()["models"]
    assert [m["name"] for m in running] == ["qwen3:latest"]
    assert LOCAL_TIME.match(running[0]["expires_at"])
    client.generate(model="qwen3", prompt="", keep_alive=0)
    assert client.ps().models == []


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"model": "nope"}, 404, "model 'nope:latest' not found"),
        ({"model": "nope:7b"}, 404, "model 'nope:7b' not found"),
        ({}, 400, "model is required"),
        (b"", 400, "missing request body"),
    ],
)
def test_show_errors(sim: Simulator, body: Any, status: int, error: str) -> None:
    got = exchange(sim, "/api/show", body)
    assert (got[0], got[2]) == (status, error_body(error))


@pytest.mark.parametrize(
    ("method", "path", "status", "text", "allow"),
    [
        ("GET", "/api/nothing", 404, b"404 page not found", None),
        ("POST", "/v2/chat", 404, b"404 page not found", None),
        ("GET", "/api/chat", 405, b"405 method not allowed", "POST"),
        ("POST", "/api/tags", 405, b"405 method not allowed", "GET, HEAD"),
        ("POST", "/api/ps", 405, b"405 method not allowed", "GET"),
        ("POST", "/api/delete", 405, b"405 method not allowed", "DELETE"),
        ("GET", "/api/blobs/sha256:00", 405, b"405 method not allowed", "POST, HEAD"),
        ("GET", "/api/blobs/", 404, b"404 page not found", None),
        ("GET", "/v1/chat/completions", 405, b"405 method not allowed", "POST"),
    ],
)
def test_router_fallbacks(
    sim: Simulator, method: str, path: str, status: int, text: bytes, allow: str | None
) -> None:
    got_status, headers, body = exchange(sim, path, b"", method)
    assert (got_status, body, headers["content-type"]) == (status, text, "text/plain")
    assert headers.get("allow") == allow


# --- generation through the official client ----------------------------------------


def test_chat_stream_and_whole(client: ollama.Client) -> None:
    parts = list(client.chat(model="llama3.2", messages=HELLO, stream=True))
    *pieces, done = parts
    assert pieces and not any(p.done for p in pieces)
    assert all(p.message.role == "assistant" for p in parts)
    assert all(
        p.model == "llama3.2" and CREATED_AT.match(p.created_at or "") for p in parts
    )
    assert done.done and done.done_reason == "stop" and done.message.content == ""
    assert done.eval_count == len(pieces)
    for metric in ("total_duration", "load_duration", "prompt_eval_duration"):
        assert getattr(done, metric) > 0
    assert (done.prompt_eval_count or 0) > 0 and (done.eval_duration or 0) > 0
    text = "".join(p.message.content or "" for p in pieces)

    whole = client.chat(model="llama3.2", messages=HELLO)
    assert (
        whole.done and whole.message.content == text and whole.eval_count == len(pieces)
    )


def test_generate_stream_and_whole(client: ollama.Client) -> None:
    *pieces, done = client.generate(model="llama3.2", prompt="hi", stream=True)
    assert done.done and done.context and done.response == ""
    text = "".join(p.response or "" for p in pieces)
    whole = client.generate(model="llama3.2:latest", prompt="hi")
    assert whole.response == text and whole.context == done.context
    assert whole.model == "llama3.2:latest"  # echoed as sent
    raw = client.generate(model="llama3.2", prompt="hi", raw=True)
    assert raw.context is None


def test_replies_vary_with_the_prompt(client: ollama.Client) -> None:
    texts = {
        client.generate(model="llama3.2", prompt=f"question {i}").response or ""
        for i in range(12)
    }
    assert len(texts) > 2
    assert any("```" in t for t in texts) and any("\n- " in t for t in texts)


@pytest.mark.parametrize("api", ["chat", "generate"])
def test_unknown_model_is_404(client: ollama.Client, api: str) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        if api == "chat":
            next(iter(client.chat(model="nope", messages=HELLO, stream=True)))
        else:
            next(iter(client.generate(model="nope", prompt="x", stream=True)))
    assert (info.value.status_code, info.value.error) == (404, "model 'nope' not found")


def test_thinking_and_tools(client: ollama.Client) -> None:
    parts = list(client.chat(model="qwen3", messages=HELLO, stream=True))
    thinking = [p for p in parts if p.message.thinking]
    assert thinking and parts[0].message.thinking and parts[0].message.content == ""
    assert not list(
        p
        for p in client.chat(model="qwen3", messages=HELLO, think=False, stream=True)
        if p.message.thinking
    )
    gen = client.generate(model="qwen3", prompt="hi")
    assert gen.thinking and gen.response

    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    *_, call, done = client.chat(
        model="llama3.2", messages=HELLO, tools=[tool], stream=True
    )
    assert done.done and call.message.tool_calls
    assert call.message.tool_calls[0].function.name == "get_weather"
    assert call.message.tool_calls[0].function.arguments == {}


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        (
            "/api/chat",
            {"model": "nomic-embed-text", "messages": HELLO},
            '"nomic-embed-text" does not support chat',
        ),
        (
            "/api/generate",
            {"model": "nomic-embed-text", "prompt": "x"},
            '"nomic-embed-text" does not support generate',
        ),
        (
            "/api/chat",
            {"model": "gemma3", "messages": HELLO, "tools": [{"type": "function"}]},
            "registry.ollama.ai/library/gemma3:latest does not support tools",
        ),
    ],
)
def test_capabilities(sim: Simulator, path: str, body: Any, error: str) -> None:
    sim.settings.models = ["nomic-embed-text", "gemma3"]
    assert exchange(sim, path, body)[::2] == (400, error_body(error))


def test_think_on_a_plain_model_is_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="llama3.2", messages=HELLO, think=True)
    assert info.value.status_code == 400
    assert info.value.error == '"llama3.2" does not support thinking'


def test_chunks_and_num_predict(sim: Simulator, client: ollama.Client) -> None:
    sim.settings.chunks = 7
    *pieces, done = client.chat(model="llama3.2", messages=HELLO, stream=True)
    assert len(pieces) == 7 and done.done_reason == "stop"
    *pieces, done = client.chat(
        model="llama3.2", messages=HELLO, options={"num_predict": 3}, stream=True
    )
    assert len(pieces) == 3 and done.done_reason == "length" and done.eval_count == 3
    sim.settings.chunks = 0
    assert [
        p.done for p in client.generate(model="llama3.2", prompt="x", stream=True)
    ] == [True]


# --- exact bytes ------------------------------------------------------------------


def test_stream_framing_on_the_wire(sim: Simulator) -> None:
    status, headers, payload = exchange(
        sim, "/api/chat", {"model": "llama3.2", "messages": HELLO}
    )
    assert status == 200
    assert headers["content-type"] == "application/x-ndjson"
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    chunks = dechunk(payload)
    assert len(chunks) > 2
    for chunk in chunks:  # one compact object per chunk, newline-terminated
        assert chunk.endswith(b"}\n") and chunk.count(b"\n") == 1
        assert b'": ' not in chunk and b", " not in chunk[:40]
        assert chunk.startswith(b'{"model":"llama3.2","created_at":"')
    done = json.loads(chunks[-1])
    keys = ["model", "created_at", "message", "done", "done_reason", "total_duration"]
    assert list(done)[:6] == keys


def test_echo_keeps_u0085_raw_and_escapes_html(sim: Simulator) -> None:
    text = "[echo] <script>a&b</script>\u0085next\u2028line é"
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": text}]}
    _, _, payload = exchange(sim, "/api/chat", body)
    chunks = dechunk(payload)
    wire = b"".join(chunks)
    assert b"\xc2\x85" in wire and b"\\u2028" in wire and "é".encode() in wire
    assert b"\\u003c" in wire and b"\\u003e" in wire and b"\\u0026" in wire
    assert b"<" not in wire and b"&" not in wire
    lines = [json.loads(c) for c in chunks]
    assert "".join(line["message"]["content"] for line in lines) == text
    assert all(len(line["message"]["content"]) <= 4 for line in lines)


@pytest.mark.parametrize(
    ("path", "body", "reason", "field"),
    [
        ("/api/chat", {"model": "llama3.2"}, "load", "message"),
        (
            "/api/chat",
            {"model": "qwen3", "messages": [], "keep_alive": 0},
            "unload",
            "message",
        ),
        ("/api/generate", {"model": "llama3.2", "prompt": ""}, "load", "response"),
        ("/api/generate", {"model": "qwen3", "keep_alive": "0s"}, "unload", "response"),
    ],
)
def test_load_reply(
    sim: Simulator, path: str, body: dict[str, Any], reason: str, field: str
) -> None:
    status, headers, payload = exchange(sim, path, body)  # stream defaults to true
    assert status == 200
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert not payload.endswith(b"\n")
    obj = json.loads(payload)
    assert list(obj) == ["model", "created_at", field, "done", "done_reason"]
    assert (obj["done"], obj["done_reason"]) == (True, reason)


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/chat", b"", 400, "missing request body"),
        ("/api/chat", b"  \n", 400, "missing request body"),
        ("/api/chat", b'{"model":', 400, "unexpected EOF"),
        (
            "/api/chat",
            b"x",
            400,
            "invalid character 'x' looking for beginning of value",
        ),
        (
            "/api/chat",
            b'{"model": 5}',
            400,
            "json: cannot unmarshal number into Go struct field "
            "ChatRequest.model of type string",
        ),
        ("/api/chat", b'{"messages": []}', 400, "model is required"),
        ("/api/generate", b'{"prompt": "hi"}', 404, "model '' not found"),
        (
            "/api/generate",
            b'{"model": "x y", "prompt": "hi"}',
            404,
            "model 'x y' not found",
        ),
        (
            "/api/generate",
            b'{"model": "llama3.2", "prompt": "hi", "raw": true, "system": "s"}',
            400,
            "raw mode does not support template, system, or context",
        ),
        (
            "/api/chat",
            b'{"model": "llama3.2", "keep_alive": "soon"}',
            400,
            'time: invalid duration "soon"',
        ),
        (
            "/api/chat",
            b'{"model": "nope", "messages": [], "top_logprobs": 21}',
            400,
            "top_logprobs must be between 0 and 20",
        ),
        (
            "/api/generate",
            b'{"model": "llama3.2", "prompt": "hi", "top_logprobs": -1}',
            400,
            "top_logprobs must be between 0 and 20",
        ),
        # Options are read as the runner is asked for: a 500, before any line.
        (
            "/api/generate",
            b'{"model": "llama3.2", "prompt": "hi", "options": {"temperature": "hot"}}',
            500,
            'option "temperature" must be of type float32',
        ),
        (
            "/api/chat",
            b'{"model": "llama3.2", "messages": [], "options": {"seed": true}}',
            500,
            'option "seed" must be of type integer',
        ),
        (
            "/api/chat",
            b'{"model": "llama3.2", "options": {"stop": ["a", 1], "no_such": "x"}}',
            500,
            'option "stop" must be of an array of strings',
        ),
    ],
)
def test_bad_requests(
    sim: Simulator, path: str, body: bytes, status: int, error: str
) -> None:
    got, headers, payload = exchange(sim, path, body)
    assert (got, payload) == (status, error_body(error))
    assert headers["content-type"] == "application/json; charset=utf-8"


def test_body_parsed_whatever_the_content_type(sim: Simulator) -> None:
    body = b'{"model":"llama3.2","prompt":"hi","stream":false,"extra":1} trailing'
    r = requests.post(
        sim.url + "/api/generate", data=body, headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 200 and r.json()["done"] is True
    assert sim.requests[-1].path == "/api/generate"
    assert sim.requests[-1].headers["content-type"] == "text/plain"


def test_requests_are_recorded(sim: Simulator, client: ollama.Client) -> None:
    client.chat(model="llama3.2", messages=HELLO)
    record = sim.requests[-1]
    assert (record.method, record.path) == ("POST", "/api/chat")
    assert record.body["messages"] == HELLO and record.body["stream"] is False
    assert record.headers["user-agent"].startswith("ollama-python/")
    assert record.at <= time.monotonic()


# --- pacing -----------------------------------------------------------------------


def test_first_token_delay_holds_back_the_headers(sim: Simulator) -> None:
    sim.settings.first_token_delay = 0.3
    started = time.monotonic()
    with send(sim, "/api/chat", {"model": "llama3.2", "messages": HELLO}) as sock:
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # not even the status line yet
        sock.settimeout(5)
        first = sock.recv(1)
        waited = time.monotonic() - started
        rest = read_all(sock)
    assert first + rest[:11] == b"HTTP/1.1 200"
    assert 0.29 <= waited < 1.0


def test_first_token_delay_with_the_client(
    sim: Simulator, client: ollama.Client
) -> None:
    sim.settings.first_token_delay = 0.25
    started = time.monotonic()
    parts = iter(client.chat(model="llama3.2", messages=HELLO, stream=True))
    next(parts)
    assert 0.24 <= time.monotonic() - started < 1.0
    list(parts)


def stamp_ns(created_at: str) -> int:
    """Nanoseconds since the epoch from a Go RFC 3339 UTC time."""
    base, _, frac = created_at.removesuffix("Z").partition(".")
    seconds = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 10**9 + int(frac.ljust(9, "0"))


def test_interval_paces_chunks(sim: Simulator) -> None:
    sim.settings.interval = 0.05
    sim.settings.chunks = 4
    arrivals, stamps = [], []
    body = {"model": "llama3.2", "prompt": "x"}
    with (
        httpx.Client() as http,
        http.stream("POST", sim.url + "/api/generate", json=body) as r,
    ):
        for line in r.iter_lines():
            arrivals.append(time.monotonic())
            stamps.append(stamp_ns(json.loads(line)["created_at"]))
    assert len(arrivals) == 5
    # Each line is stamped when made, so server-side gaps are exact...
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert all(50_000_000 <= gap < 500_000_000 for gap in gaps), gaps
    # ...and the client really receives them spread out, not in one burst.
    assert arrivals[-1] - arrivals[0] >= 0.19


def test_a_client_that_stops_reading_holds_up_no_other_stream(
    sim: Simulator,
) -> None:
    # One thread paces every stream; a client that stops reading gets its own
    # thread back, and all its bytes in order once it reads again.
    sim.settings.first_token_delay = 0.2
    sim.settings.interval = 0.001
    sim.settings.chunks = 600
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(address(sim))
    data = json.dumps({"model": "llama3.2", "messages": HELLO}).encode()
    stalled.sendall(
        b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (len(data), data)
    )
    time.sleep(0.1)
    # Loopback grows a send buffer to megabytes; a small one fills within lines.
    server = sim._server
    assert server is not None
    with server.conns_lock:
        (theirs,) = server.conns
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    time.sleep(0.4)  # 600 lines unread: far more than both buffers hold
    sim.settings.first_token_delay = 0
    sim.settings.interval = 0.02
    sim.settings.chunks = 20
    arrivals = []
    body = {"model": "llama3.2", "messages": HELLO}
    with (
        httpx.Client(timeout=2) as http,
        http.stream("POST", sim.url + "/api/chat", json=body) as r,
    ):
        for _ in r.iter_lines():
            arrivals.append(time.monotonic())
    assert len(arrivals) == 21
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert max(gaps) < 0.15, gaps
    with stalled:
        _, _, payload = split(read_all(stalled))
    lines = [json.loads(line) for line in b"".join(dechunk(payload)).splitlines()]
    assert len(lines) == 601 and lines[-1]["done"] is True


def test_whole_reply_takes_the_stream_time(
    sim: Simulator, client: ollama.Client
) -> None:
    sim.settings.interval = 0.02
    sim.settings.chunks = 10
    started = time.monotonic()
    client.generate(model="llama3.2", prompt="x")
    assert 0.19 <= time.monotonic() - started < 1.0


# --- faults -----------------------------------------------------------------------


def test_fault_error_before(sim: Simulator, client: ollama.Client) -> None:
    sim.settings.fault = "error_before"
    with pytest.raises(ollama.ResponseError) as info:
        next(iter(client.chat(model="llama3.2", messages=HELLO, stream=True)))
    assert (info.value.status_code, info.value.error) == (
        500,
        sim.settings.fault_message,
    )
    status, headers, payload = exchange(
        sim, "/api/generate", {"model": "llama3.2", "prompt": "x"}
    )
    assert (status, headers["content-type"]) == (500, "application/json")
    assert dechunk(payload) == [error_body(sim.settings.fault_message)]


def test_fault_error_after(sim: Simulator, client: ollama.Client) -> None:
    sim.settings.fault, sim.settings.fault_after = "error_after", 2
    received = []
    with pytest.raises(ollama.ResponseError) as info:
        for part in client.chat(model="llama3.2", messages=HELLO, stream=True):
            received.append(part)
    assert len(received) == 2 and info.value.status_code == -1
    assert info.value.error == sim.settings.fault_message
    status, _, payload = exchange(
        sim, "/api/generate", {"model": "llama3.2", "prompt": "x"}
    )
    lines = dechunk(payload)  # the body still ends cleanly
    assert status == 200 and len(lines) == 3
    assert lines[-1] == error_body(sim.settings.fault_message) + b"\n"


def test_fault_drop_after(sim: Simulator) -> None:
    sim.settings.fault, sim.settings.fault_after = "drop_after", 3
    received = []
    body = {"model": "llama3.2", "messages": HELLO}
    with httpx.Client() as http, pytest.raises(httpx.HTTPError) as info:
        with http.stream("POST", sim.url + "/api/chat", json=body) as r:
            for line in r.iter_lines():
                received.append(json.loads(line))
    assert len(received) == 3 and not any(p["done"] for p in received)
    assert isinstance(info.value, httpx.RemoteProtocolError)
    assert sim.hangups == []


def test_fault_drop_after_without_streaming_sends_nothing(sim: Simulator) -> None:
    sim.settings.fault = "drop_after"
    body = {"model": "llama3.2", "messages": HELLO, "stream": False}
    assert exchange(sim, "/api/chat", body) == (0, {}, b"")


def test_fault_cut_before_done(sim: Simulator, client: ollama.Client) -> None:
    sim.settings.fault = "cut_before_done"
    parts = list(client.chat(model="llama3.2", messages=HELLO, stream=True))
    assert parts and not any(p.done for p in parts)
    whole = client.chat(model="llama3.2", messages=HELLO)
    assert not whole.done and whole.message.content == "".join(
        p.message.content or "" for p in parts
    )


def test_fault_error_first_line(sim: Simulator, client: ollama.Client) -> None:
    sim.settings.fault = "error_first_line"
    status, _, payload = exchange(
        sim, "/api/chat", {"model": "llama3.2", "messages": HELLO}
    )
    assert status == 200
    assert dechunk(payload) == [error_body(sim.settings.fault_message) + b"\n"]
    with pytest.raises(ollama.ResponseError) as info:
        next(iter(client.chat(model="llama3.2", messages=HELLO, stream=True)))
    assert info.value.status_code == -1


@pytest.mark.parametrize("fault", ["error_before", "error_after", "error_first_line"])
def test_faults_without_streaming_are_500(
    sim: Simulator, client: ollama.Client, fault: str
) -> None:
    sim.settings.fault = fault
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model="llama3.2", prompt="x")
    assert info.value.status_code == 500


def test_every_fault_is_covered() -> None:
    assert set(FAULTS) == {
        "error_before",
        "error_after",
        "drop_after",
        "cut_before_done",
        "error_first_line",
        "busy",
    }


# --- hang-ups ---------------------------------------------------------------------


def test_hangup_during_first_token_delay_raw_socket(sim: Simulator) -> None:
    sim.settings.first_token_delay = 5
    sock = send(sim, "/api/chat", {"model": "llama3.2", "messages": HELLO})
    time.sleep(0.1)
    assert sim.streams_open == 1
    closed = time.monotonic()
    sock.close()
    hangup = sim.wait_hangup(2)
    assert hangup is not None
    assert (hangup.path, hangup.chunks_sent) == ("/api/chat", 0)
    assert 0 <= hangup.at - closed < 0.05
    wait_streams_closed(sim)


def test_hangup_during_first_token_delay_requests(sim: Simulator) -> None:
    sim.settings.first_token_delay = 5
    body = {"model": "llama3.2", "prompt": "x"}
    with requests.Session() as session, pytest.raises(requests.ReadTimeout):
        session.post(sim.url + "/api/generate", json=body, timeout=0.2, stream=True)
    gave_up = time.monotonic()
    hangup = sim.wait_hangup(2)
    assert hangup is not None and hangup.path == "/api/generate"
    assert abs(hangup.at - gave_up) < 0.05


def test_hangup_during_flow(sim: Simulator) -> None:
    sim.settings.interval = 0.05
    sim.settings.chunks = 100
    body: dict[str, Any] = {"model": "llama3.2", "messages": HELLO}
    with requests.post(sim.url + "/api/chat", json=body, stream=True) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
    closed = time.monotonic()
    hangup = sim.wait_hangup(2)
    assert hangup is not None
    assert 3 <= hangup.chunks_sent < 10
    assert abs(hangup.at - closed) < 0.05
    wait_streams_closed(sim)
    assert sim.wait_hangup(0.05) is None  # exactly one record


def test_hangup_when_the_client_abandons_its_generator(
    sim: Simulator, client: ollama.Client
) -> None:
    sim.settings.interval = 0.05
    sim.settings.chunks = 100
    parts = client.generate(model="llama3.2", prompt="x", stream=True)
    next(parts), next(parts)
    assert isinstance(parts, Generator)  # the client's lazy generator
    parts.close()
    hangup = sim.wait_hangup(2)
    assert hangup is not None and hangup.chunks_sent >= 2


def test_hangup_while_a_whole_reply_is_produced(sim: Simulator) -> None:
    sim.settings.interval = 0.05
    sim.settings.chunks = 100
    body = {"model": "llama3.2", "messages": HELLO, "stream": False}
    with send(sim, "/api/chat", body):
        time.sleep(0.1)
    hangup = sim.wait_hangup(2)
    assert hangup == Hangup("/api/chat", hangup.at if hangup else 0.0, 0)


def test_finished_streams_record_no_hangup(
    sim: Simulator, client: ollama.Client
) -> None:
    list(client.chat(model="llama3.2", messages=HELLO, stream=True))
    exchange(sim, "/api/generate", {"model": "llama3.2", "prompt": "x"})
    assert sim.wait_hangup(0.1) is None and sim.hangups == []
    assert sim.streams_open == 0


def test_wait_hangup_wakes_a_waiting_thread(sim: Simulator) -> None:
    sim.settings.first_token_delay = 5
    got: list[Hangup | None] = []
    waiter = threading.Thread(target=lambda: got.append(sim.wait_hangup(3)))
    waiter.start()
    with send(sim, "/api/chat", {"model": "llama3.2", "messages": HELLO}):
        time.sleep(0.05)
    waiter.join(3)
    assert got and got[0] is not None


# --- connections, control and the command line ------------------------------------


def test_keep_alive_reuses_the_connection(sim: Simulator) -> None:
    conn = http.client.HTTPConnection(*address(sim))
    try:
        socks = []
        for _ in range(3):
            body = json.dumps({"model": "llama3.2", "prompt": "x"})
            conn.request("POST", "/api/generate", body)
            response = conn.getresponse()
            lines = response.read().splitlines()
            assert json.loads(lines[-1])["done"] is True
            socks.append(conn.sock)
        assert socks[0] is socks[1] is socks[2] is not None
    finally:
        conn.close()


def test_many_concurrent_streams(sim: Simulator) -> None:
    sim.settings.chunks = 20
    sim.settings.interval = 0.005
    body = {"model": "llama3.2", "prompt": "x"}
    socks = [send(sim, "/api/generate", body) for _ in range(150)]
    try:
        replies = [read_all(s) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert all(len(dechunk(r.partition(b"\r\n\r\n")[2])) == 21 for r in replies)
    wait_streams_closed(sim)


def test_control_endpoints(sim: Simulator, client: ollama.Client) -> None:
    r = requests.post(sim.url + "/_sim/settings", json={"chunks": 2, "models": ["m1"]})
    assert r.status_code == 200 and r.json()["chunks"] == 2
    assert sim.settings.models == ["m1"]
    assert len(list(client.generate(model="m1", prompt="x", stream=True))) == 3
    stats = requests.get(sim.url + "/_sim/stats").json()
    assert stats["requests"] == 1 and stats["streams_open"] == 0
    assert stats["hangups"] == [] and stats["cpu_seconds"] > 0
    bad = requests.post(sim.url + "/_sim/settings", json={"fault": "meteor"})
    assert bad.status_code == 400 and "fault" in bad.json()["error"]
    assert (
        requests.post(sim.url + "/_sim/settings", json={"nope": 1}).status_code == 400
    )
    assert requests.post(sim.url + "/_sim/reset").status_code == 200
    assert sim.settings.chunks is None
    assert sim.settings.models == ["llama3.2", "qwen3", "nomic-embed-text"]
    assert sim.settings.first_token_delay == 0 and sim.requests == []


def test_stats_lists_hangups(sim: Simulator) -> None:
    sim.settings.first_token_delay = 5
    with send(sim, "/api/chat", {"model": "llama3.2", "messages": HELLO}):
        time.sleep(0.05)
    assert sim.wait_hangup(2) is not None
    hangups = requests.get(sim.url + "/_sim/stats").json()["hangups"]
    assert [(h["path"], h["chunks_sent"]) for h in hangups] == [("/api/chat", 0)]


def test_constructor_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        Simulator(fault="meteor")
    with pytest.raises(TypeError):
        Simulator(speed=3)


def test_command_line() -> None:
    args = [sys.executable, "-m", "chatsvc.simulator", "--port", "0"]
    args += ["--first-token-delay", "0", "--interval", "0", "--chunks", "2"]
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.fullmatch(
                r"chatsvc simulator listening on (http://127\.0\.0\.1:\d+)\n", line
            )
            assert match, line
            url = match.group(1)
            assert not url.endswith(":0")
            assert requests.get(url + "/api/version").json() == {"version": "0.33.0"}
            reply = requests.post(
                url + "/api/chat", json={"model": "llama3.2", "messages": HELLO}
            )
            assert len(reply.content.splitlines()) == 3
        finally:
            proc.terminate()
            proc.wait(5)


def test_a_client_that_stops_reading_blocks_the_writer(sim: Simulator) -> None:
    sim.settings.chunks = 500_000
    with send(sim, "/api/generate", {"model": "llama3.2", "prompt": "x"}):
        time.sleep(0.5)  # kernel buffers hold far fewer than 500k lines
        assert sim.streams_open == 1 and sim.hangups == []
    closed = time.monotonic()
    hangup = sim.wait_hangup(2)  # the blocked write fails once the client is gone
    assert hangup is not None and 0 < hangup.chunks_sent < 500_000
    assert abs(hangup.at - closed) < 0.05


def test_http_1_0_gets_an_unchunked_stream(sim: Simulator) -> None:
    sim.settings.chunks = 3
    with socket.create_connection(address(sim)) as sock:
        body = b'{"model":"llama3.2","prompt":"x"}'
        sock.sendall(
            b"POST /api/generate HTTP/1.0\r\nContent-Length: 33\r\n\r\n" + body
        )
        head, _, payload = read_all(sock).partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert [json.loads(line)["done"] for line in payload.splitlines()] == [
        False,
        False,
        False,
        True,
    ]


def test_the_simulator_imports_nothing_from_the_product() -> None:
    package = Path(simulator.__file__).parent
    for source in package.glob("*.py"):
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, (source.name, node.module)  # no `from ..`
                names = [node.module or ""] if node.level == 0 else []
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not any(n.split(".")[0] == "chatsvc" for n in names), source.name
