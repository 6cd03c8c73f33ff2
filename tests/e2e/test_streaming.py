"""chatsvc under real gunicorn, over real sockets, with real clients."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest
import requests

from chatsvc.simulator import Simulator
from tests.e2e.conftest import ROOT, Gateway, bare_env

pytestmark = pytest.mark.e2e

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


def paced(sim: Simulator, chunks: int = 10, interval: float = 0.1) -> float:
    """Make the simulator slow enough that buffering would show; return its duration."""
    sim.settings.first_token_delay = 0.0
    sim.settings.interval = interval
    sim.settings.chunks = chunks
    return chunks * interval


# -- the official ollama client, unchanged -----------------------------------------


def test_ollama_client_chat_and_generate(
    gateway: Gateway, sim: Simulator, request: pytest.FixtureRequest
) -> None:
    sim.settings.chunks = 6
    client = ollama.Client(host=gateway.url)
    request.addfinalizer(client.close)
    parts = list(client.chat(model="llama3.2", messages=CHAT["messages"], stream=True))
    assert len(parts) == 7 and parts[-1].done and parts[-1].eval_count == 6
    whole = client.chat(model="llama3.2", messages=CHAT["messages"])
    assert whole.done and whole.message.content == "".join(
        p.message.content or "" for p in parts
    )
    gen = list(client.generate(model="llama3.2", prompt="hi", stream=True))
    assert gen[-1].done and gen[-1].context
    assert client.generate(model="llama3.2", prompt="hi").response
    assert [m.model for m in client.list().models]
    assert client.show("llama3.2").details is not None
    assert client.ps().models is not None


def test_ollama_client_errors_keep_ollamas_status_and_message(
    gateway: Gateway, sim: Simulator, request: pytest.FixtureRequest
) -> None:
    client = ollama.Client(host=gateway.url)
    request.addfinalizer(client.close)
    with pytest.raises(ollama.ResponseError) as missing:
        list(client.chat(model="nope", messages=CHAT["messages"], stream=True))
    assert missing.value.status_code == 404
    assert missing.value.error == "model 'nope' not found"
    with pytest.raises(ollama.ResponseError) as bad:
        client.chat(model="llama3.2", messages=CHAT["messages"], think="very")
    assert bad.value.status_code == 400 and "think must be" in bad.value.error

    sim.settings.fault = "error_after"
    with pytest.raises(ollama.ResponseError) as in_band:
        list(client.generate(model="llama3.2", prompt="hi", stream=True))
    assert in_band.value.error == sim.settings.fault_message


def test_ollama_client_gets_raw_u0085_intact(gateway: Gateway) -> None:
    # Ollama writes U+0085 raw; the official client alone would split the line there.
    text = "[echo] before\x85after \u2028 <tag> & \u00e9"
    with ollama.Client(host=gateway.url) as client:
        parts = client.chat(
            model="llama3.2", stream=True, messages=[{"role": "user", "content": text}]
        )
        assert "".join(p.message.content or "" for p in parts) == text


def test_ollama_client_survives_heartbeats(start_gateway: Any, sim: Simulator) -> None:
    gw = start_gateway(CHATSVC_HEARTBEAT_S="0.2")
    sim.settings.first_token_delay = 0.7
    sim.settings.chunks = 2
    with ollama.Client(host=gw.url) as client:
        parts = list(
            client.chat(model="llama3.2", messages=CHAT["messages"], stream=True)
        )
    assert sum(1 for p in parts if not p.done and p.message.content == "") >= 2
    assert parts[-1].done


# -- streaming is a claim about time --------------------------------------------------


def timed_lines(response: requests.Response) -> Iterator[tuple[float, bytes]]:
    # iter_lines yields each line as its chunk arrives (not after 512 bytes).
    for line in response.iter_lines():
        yield time.monotonic(), line


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_requests_sees_the_first_chunk_long_before_the_end(
    gateway: Gateway, sim: Simulator, path: str
) -> None:
    duration = paced(sim, chunks=10, interval=0.1)
    body = CHAT if path == "/api/chat" else {"model": "llama3.2", "prompt": "hi"}
    sent = time.monotonic()
    with requests.post(gateway.url + path, json=body, stream=True, timeout=10) as r:
        arrivals = list(timed_lines(r))
    first, last = arrivals[0][0] - sent, arrivals[-1][0] - sent
    assert len(arrivals) == 11 and json.loads(arrivals[-1][1])["done"]
    assert last >= duration * 0.9  # the upstream really was slow...
    assert first < duration / 4  # ...and its first chunk was not held back
    # Each chunk arrives on its own, paced like the upstream, not in a burst.
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert sum(1 for gap in gaps if gap > 0.05) >= 8


def curl(url: str) -> list[str]:
    body = json.dumps(CHAT)
    return ["curl", "-sN", "-H", "Content-Type: application/json", "-d", body, url]


def test_curl_streams_text(gateway: Gateway, sim: Simulator) -> None:
    duration = paced(sim, chunks=10, interval=0.1)
    # curl's own clock times the first byte, from just before it connects: one
    # CI run lost 0.74 s between Popen and the request reaching chatsvc, whose
    # log gave 3 ms to the first byte.
    command = [*curl(f"{gateway.url}/api/chat?format=text")]
    command += ["-w", "%{stderr}%{time_starttransfer}"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.read1(1024)  # type: ignore[attr-defined]
        first_at = time.monotonic()
        rest = proc.stdout.read()
        end_at = time.monotonic()
        first_byte = float(proc.stderr.read())
    assert proc.returncode == 0
    # The first chunk left chatsvc at once, and curl -N handed it on at once,
    # not with the rest at the end of the (slow) upstream.
    assert first and first_byte < duration / 4
    assert end_at - first_at >= duration * 0.6
    assert (first + rest).endswith(b"\n") and b"{" not in first + rest


def test_curl_streams_ndjson(gateway: Gateway, sim: Simulator) -> None:
    paced(sim, chunks=5, interval=0.05)
    out = subprocess.run(
        curl(f"{gateway.url}/api/chat"),
        capture_output=True,
        check=True,
        timeout=10,
    ).stdout
    parts = [json.loads(line) for line in out.splitlines()]
    assert len(parts) == 6 and parts[-1]["done"]


# -- Server-Sent Events, parsed as the spec says ---------------------------------


def sse_events(response: requests.Response) -> Iterator[dict[str, Any]]:
    """A WHATWG-style SSE parser: fields until a blank line; comments kept aside."""
    event: dict[str, Any] = {}
    for raw in response.iter_lines():
        line = raw.decode()
        if line == "":
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            event[name] = (
                event.get(name, "")
                + ("\n" if name == "data" and name in event else "")
                + value
            )


def test_sse_stream(start_gateway: Any, sim: Simulator) -> None:
    gw = start_gateway(CHATSVC_HEARTBEAT_S="0.2")
    sim.settings.first_token_delay = 0.5
    sim.settings.chunks = 3
    with requests.post(
        f"{gw.url}/api/chat",
        json=CHAT,
        stream=True,
        timeout=10,
        headers={"Accept": "text/event-stream"},
    ) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        events = list(sse_events(r))
    assert events[0] == {"retry": "3000"}
    assert {"comment": "ping"} in events[1:3]
    data = [e for e in events if "data" in e]
    assert [e["id"] for e in data] == ["1", "2", "3", "4"]
    assert all("event" not in e for e in data[:3])
    assert data[3]["event"] == "done" and json.loads(data[3]["data"])["done"] is True

    sim.settings.first_token_delay = 0
    sim.settings.fault = "error_after"
    with requests.post(
        f"{gw.url}/api/chat?format=sse", json=CHAT, stream=True, timeout=10
    ) as r:
        events = list(sse_events(r))
    assert events[-1]["event"] == "error"
    assert json.loads(events[-1]["data"]) == {"error": sim.settings.fault_message}


# -- cancellation -------------------------------------------------------------------


def open_stream(
    url: str, path: str = "/api/chat", fmt: str = "ndjson"
) -> socket.socket:
    """Send a streamed chat request on a raw socket; return it unread."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    body = json.dumps(CHAT).encode()
    sock.sendall(
        f"POST {path}?format={fmt} HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def read_some(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    return sock.recv(65536)


@pytest.mark.parametrize("fmt", ["ndjson", "sse", "text"])
def test_hangup_while_tokens_flow_reaches_ollama_within_a_chunk(
    gateway: Gateway, sim: Simulator, fmt: str
) -> None:
    interval = 0.2
    paced(sim, chunks=100, interval=interval)
    sock = open_stream(gateway.url, fmt=fmt)
    assert read_some(sock).startswith(b"HTTP/1.1 200")
    closed_at = time.monotonic()
    sock.close()
    hangup = sim.wait_hangup(5)
    assert hangup is not None and hangup.chunks_sent < 10
    assert hangup.at - closed_at < interval


@pytest.mark.parametrize("fmt", ["ndjson", "text"])
def test_hangup_during_silence_reaches_ollama_within_a_heartbeat(
    gateway: Gateway, sim: Simulator, fmt: str
) -> None:
    # The gateway's heartbeat is 1 s; the upstream says nothing for 30 s. Text
    # sends no keep-alive bytes, so only watching the socket can notice.
    sim.settings.first_token_delay = 30
    sock = open_stream(gateway.url, fmt=fmt)
    if fmt == "ndjson":  # the 200 and a first keep-alive line, a heartbeat in
        assert read_some(sock).startswith(b"HTTP/1.1 200 ")
    else:  # nothing to read: wait out the heartbeat that commits the 200
        time.sleep(1.5)
    closed_at = time.monotonic()
    sock.close()
    hangup = sim.wait_hangup(5)
    assert hangup is not None and hangup.chunks_sent == 0
    assert hangup.at - closed_at < 1.0


def test_hangup_before_the_status_reaches_ollama_at_once(
    gateway: Gateway, sim: Simulator
) -> None:
    # Within the first heartbeat the request's own thread waits on Ollama's
    # socket for its first line, with nothing sent to the client yet.
    sim.settings.first_token_delay = 30
    sock = open_stream(gateway.url)
    deadline = time.monotonic() + 5
    while not sim.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sim.requests, "the request never reached Ollama"
    time.sleep(0.2)
    closed_at = time.monotonic()
    sock.close()
    hangup = sim.wait_hangup(5)
    assert hangup is not None and hangup.chunks_sent == 0
    assert hangup.at - closed_at < 0.5  # well inside the 1 s heartbeat


def worker_pids(gw: Gateway) -> list[int]:
    children = Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


def tcp_inodes() -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            inodes.add(row.split()[9])
    return inodes


def threads_and_sockets(pids: list[int]) -> tuple[int, int]:
    """Threads, and TCP sockets (to clients and to Ollama) of the workers.

    The store's Unix-socket connections are left out: their pool is capped per
    worker (tests/unit/test_store.py) and fills as load comes and goes.
    """
    threads = sockets = 0
    tcp = tcp_inodes()
    for pid in pids:
        threads += len(os.listdir(f"/proc/{pid}/task"))
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            sockets += link.startswith("socket:[") and link[8:-1] in tcp
    return threads, sockets


def cancel_streams(url: str, count: int, at_once: int, silent: bool) -> None:
    for _ in range(count // at_once):
        socks = [open_stream(url) for _ in range(at_once)]
        if not silent:
            for sock in socks:
                assert read_some(sock).startswith(b"HTTP/1.1 200 ")
        for sock in socks:
            sock.close()


def settle(sim: Simulator, pids: list[int], want: tuple[int, int]) -> tuple[int, int]:
    deadline = time.monotonic() + 10
    now = threads_and_sockets(pids)
    while time.monotonic() < deadline and (sim.streams_open or now > want):
        time.sleep(0.1)
        now = threads_and_sockets(pids)
    return now


def test_a_thousand_cancelled_streams_leak_nothing(
    start_gateway: Any, sim: Simulator
) -> None:
    # gunicorn's own thread pool grows to its cap (CHATSVC_MAX_STREAMS + 16) and
    # stays; the warm-up below fills it, so any thread counted after that is one
    # chatsvc left behind.
    gw = start_gateway(
        WEB_CONCURRENCY="1",
        CHATSVC_HEARTBEAT_S="0.2",
        CHATSVC_MAX_STREAMS="64",
        CHATSVC_MAX_STREAMS_PER_CLIENT="64",
    )
    pids = worker_pids(gw)
    sim.settings.interval = 0.05
    sim.settings.chunks = 1000  # no stream can finish before it is cancelled
    # 16 threads held by requests whose (chunked) body is still coming, and 64
    # streams.
    host, port = gw.url.removeprefix("http://").split(":")
    holders = [socket.create_connection((host, int(port))) for _ in range(16)]
    for sock in holders:
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n"
        )
    cancel_streams(gw.url, 64, 64, silent=False)
    for sock in holders:
        sock.close()
    baseline = settle(sim, pids, (0, 0))
    cancel_streams(gw.url, 700, 20, silent=False)
    sim.settings.first_token_delay = 5.0
    cancel_streams(gw.url, 300, 20, silent=True)
    threads, sockets = settle(sim, pids, baseline)
    assert sim.streams_open == 0
    # Every stream that reached Ollama was hung up on. Some of the silent ones
    # were cancelled before their request was sent, or while it was being sent.
    reached = sum(
        1 for r in sim.requests if r.path == "/api/chat" and isinstance(r.body, dict)
    )
    assert len(sim.hangups) == reached >= 740
    assert threads <= baseline[0]
    assert sockets <= baseline[1]
    # And the gateway still serves.
    sim.reset()
    assert requests.post(
        f"{gw.url}/api/chat", json={**CHAT, "stream": False}, timeout=10
    ).json()["done"]


# -- the terminal client ---------------------------------------------------------


def run_cli(
    *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatsvc", "chat", *args],
        cwd=ROOT,
        env=bare_env(**env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_default_url_honours_port_and_chatsvc_url(gateway: Gateway) -> None:
    port = gateway.url.rsplit(":", 1)[1]
    by_port = run_cli("[echo] port", PORT=port)
    assert (by_port.returncode, by_port.stdout) == (0, "[echo] port\n"), by_port
    # CHATSVC_URL wins over PORT, and like OLLAMA_HOST needs no scheme.
    by_url = run_cli("[echo] url", PORT="9", CHATSVC_URL=f"127.0.0.1:{port}/")
    assert (by_url.returncode, by_url.stdout) == (0, "[echo] url\n"), by_url
    no_scheme = run_cli("--url", f"127.0.0.1:{port}", "[echo] bare")
    assert (no_scheme.returncode, no_scheme.stdout) == (0, "[echo] bare\n")


def test_cli_reads_the_prompt_from_stdin(gateway: Gateway) -> None:
    done = run_cli("--url", gateway.url, "-", stdin="[echo] two\nlines")
    assert (done.returncode, done.stdout) == (0, "[echo] two\nlines\n"), done


def test_cli_exits_quietly_when_its_reader_leaves(
    gateway: Gateway, sim: Simulator
) -> None:
    paced(sim, chunks=200, interval=0.01)
    # `python -m chatsvc chat … | head -c 20`
    done = subprocess.run(
        f"{sys.executable} -m chatsvc chat --url {gateway.url} hi | head -c 20",
        shell=True,
        cwd=ROOT,
        env=bare_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert len(done.stdout) == 20
    assert done.stderr == ""


def test_cli_401_says_how_to_pass_the_key(start_gateway: Any) -> None:
    gw = start_gateway(CHATSVC_API_KEYS="k1", WEB_CONCURRENCY="1")
    done = run_cli("--url", gw.url, "-m", "llama3.2", "hi")
    assert done.returncode == 1
    assert "pass the key with --key or $CHATSVC_API_KEY (HTTP 401)" in done.stderr
    with_key = run_cli(
        "--url", gw.url, "-m", "llama3.2", "[echo] in", CHATSVC_API_KEY="k1"
    )
    assert (with_key.returncode, with_key.stdout) == (0, "[echo] in\n"), with_key


def test_cli_streams_a_reply(gateway: Gateway, sim: Simulator) -> None:
    done = run_cli("--url", gateway.url, "[echo] hello there")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[echo] hello there\n"
    # The first model /api/tags lists.
    assert sim.requests[-1].body["model"] == "llama3.2:latest"


def test_cli_streams_as_it_arrives(gateway: Gateway, sim: Simulator) -> None:
    duration = paced(sim, chunks=10, interval=0.1)
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chatsvc",
            "chat",
            "--url",
            gateway.url,
            "-m",
            "qwen3",
            "hi",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.read1(64)  # type: ignore[attr-defined]
        first_at = time.monotonic()
        rest = proc.stdout.read()
        ended = time.monotonic()
    assert proc.returncode == 0 and first and rest.endswith(b"\n")
    assert ended - first_at > duration / 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "nope", "hi"], "model 'nope' not found (HTTP 404)"),
        (["--url", "http://127.0.0.1:9", "-m", "x", "hi"], "cannot talk to chatsvc"),
    ],
)
def test_cli_errors_exit_1(gateway: Gateway, args: list[str], message: str) -> None:
    if "--url" not in args:
        args = ["--url", gateway.url, *args]
    done = run_cli(*args)
    assert done.returncode == 1
    assert message in done.stderr and done.stdout == ""


def test_cli_reports_an_in_band_error(gateway: Gateway, sim: Simulator) -> None:
    sim.settings.fault = "error_after"
    done = run_cli("--url", gateway.url, "hi")
    assert done.returncode == 1 and sim.settings.fault_message in done.stderr
