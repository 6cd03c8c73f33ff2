"""Every official client, through real gunicorn, gives what Ollama itself gives.

Each call goes to the simulator directly and through chatsvc; the answers must be
the same but for timestamps and durations.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest
import requests

from chatsvc.simulator import Simulator
from tests.e2e.conftest import ROOT, Gateway

pytestmark = pytest.mark.e2e

# Fields that differ from one call to the next, whoever answers.
_VOLATILE = {
    "created_at",
    "total_duration",
    "load_duration",
    "prompt_eval_duration",
    "eval_duration",
    "expires_at",
    "modified_at",
    "created",
    "id",
}


def _same(value: Any) -> Any:
    """value without the fields that change between calls."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(exclude_none=True)
    if isinstance(value, dict):
        return {k: _same(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list | tuple):
        return [_same(v) for v in value]
    return value


class Clients:
    """Official clients made for one test, all closed at its end."""

    def __init__(self) -> None:
        self._made: list[ollama.Client | openai.OpenAI] = []

    def ollama(self, url: str, key: str | None = None) -> ollama.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else None
        client = ollama.Client(host=url, headers=headers)
        self._made.append(client)
        return client

    def openai(self, url: str, key: str = "unused") -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        self._made.append(client)
        return client

    def close(self) -> None:
        for client in self._made:
            client.close()


@pytest.fixture
def clients() -> Iterator[Clients]:
    made = Clients()
    yield made
    made.close()


@pytest.fixture
def pair(
    clients: Clients, sim: Simulator, gateway: Gateway
) -> tuple[ollama.Client, ollama.Client]:
    """ollama-python to the simulator directly, and through chatsvc."""
    return clients.ollama(sim.url), clients.ollama(gateway.url)


def _fast(sim: Simulator) -> None:
    sim.settings.first_token_delay = 0.0
    sim.settings.interval = 0.002
    sim.settings.pull_speed = 1e12


MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]
CALLS: dict[str, Callable[[ollama.Client], Any]] = {
    "chat": lambda c: c.chat("llama3.2", MESSAGES),
    "chat stream": lambda c: list(c.chat("llama3.2", MESSAGES, stream=True)),
    "generate": lambda c: c.generate("llama3.2", "Hello"),
    "generate stream": lambda c: list(c.generate("llama3.2", "Hello", stream=True)),
    "embed": lambda c: c.embed("nomic-embed-text", ["one", "two"]),
    "embed one": lambda c: c.embed("nomic-embed-text", "one", dimensions=8),
    "embeddings": lambda c: c.embeddings("nomic-embed-text", "one"),
    "list": lambda c: c.list(),
    "show": lambda c: c.show("llama3.2"),
    "ps": lambda c: c.ps(),
    "version": lambda c: c._request_raw("GET", "/api/version").json(),
    "pull (stream=False, the default)": lambda c: c.pull("mistral"),
    "pull stream": lambda c: list(c.pull("mistral", stream=True)),
}


@pytest.mark.parametrize("call", list(CALLS), ids=list(CALLS))
def test_ollama_python_gets_what_ollama_gives(
    sim: Simulator, pair: tuple[ollama.Client, ollama.Client], call: str
) -> None:
    _fast(sim)
    direct, through = pair
    got = CALLS[call](through)
    sim.reset()  # the same catalogue again: a pull above installed its model
    _fast(sim)
    assert _same(got) == _same(CALLS[call](direct))


@pytest.mark.parametrize(
    ("call", "status"),
    [
        (lambda c: c.chat("no-such-model", MESSAGES), 404),
        (lambda c: c.embed("no-such-model", "x"), 404),
        (lambda c: c.show("no-such-model"), 404),
        (lambda c: c.push("llama3.2"), 500),
        (lambda c: c.pull("no-such-model", stream=True).__next__(), None),
        (lambda c: list(c.pull("no-such-model", stream=True)), -1),
        (lambda c: c.copy("no-such-model", "x"), 404),
        (lambda c: c.delete("no-such-model"), 404),
    ],
    ids=["chat", "embed", "show", "push", "pull first", "pull", "copy", "delete"],
)
def test_ollama_python_errors_are_ollamas(
    sim: Simulator,
    pair: tuple[ollama.Client, ollama.Client],
    call: Callable[[ollama.Client], Any],
    status: Any,
) -> None:
    _fast(sim)
    direct, through = pair
    if status is None:  # the first progress line comes before the failure
        assert _same(call(through)) == _same(call(direct))
        return
    with pytest.raises(ollama.ResponseError) as want:
        call(direct)
    with pytest.raises(ollama.ResponseError) as got:
        call(through)
    assert (got.value.error, got.value.status_code) == (
        want.value.error,
        want.value.status_code,
    )
    assert want.value.status_code == status


def test_ollama_python_manages_models(
    sim: Simulator,
    gateway: Gateway,
    pair: tuple[ollama.Client, ollama.Client],
    tmp_path: Path,
) -> None:
    _fast(sim)
    direct, through = pair
    assert through.create("mine", from_="llama3.2", system="Be brief.").status == (
        "success"
    )
    assert through.copy("mine", "mine-too").status == "success"
    names = {m.model for m in direct.list().models}
    assert {"mine:latest", "mine-too:latest"} <= names
    assert through.show("mine-too").details.family == "llama"
    assert through.delete("mine-too").status == "success"
    assert "mine-too:latest" not in {m.model for m in direct.list().models}
    through.delete("mine")

    blob = tmp_path / "weights.gguf"
    blob.write_bytes(os.urandom(300_000))
    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    assert through.create_blob(blob) == digest
    head = requests.head(f"{gateway.url}/api/blobs/{digest}", timeout=5)
    assert head.status_code == 200
    assert requests.head(f"{sim.url}/api/blobs/{digest}", timeout=5).status_code == 200
    wrong = requests.post(
        f"{gateway.url}/api/blobs/sha256:{'0' * 64}", data=b"not it", timeout=5
    )
    assert wrong.status_code == 400 and "digest mismatch" in wrong.json()["error"]


OPENAI_CALLS: dict[str, Callable[[openai.OpenAI], Any]] = {
    "chat": lambda c: c.chat.completions.create(model="llama3.2", messages=MESSAGES),
    "chat stream": lambda c: [
        chunk.choices[0].delta.content if chunk.choices else chunk.usage
        for chunk in c.chat.completions.create(
            model="llama3.2",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    ],
    "completions": lambda c: c.completions.create(model="llama3.2", prompt="Hello"),
    "completions stream": lambda c: [
        chunk.choices[0].text
        for chunk in c.completions.create(model="llama3.2", prompt="Hi", stream=True)
    ],
    "embeddings": lambda c: c.embeddings.create(
        model="nomic-embed-text", input=["one", "two"]
    ),
    "models": lambda c: c.models.list().data,
    "model": lambda c: c.models.retrieve("llama3.2"),
}


@pytest.mark.parametrize("call", list(OPENAI_CALLS), ids=list(OPENAI_CALLS))
def test_openai_sdk_gets_what_ollama_gives(
    clients: Clients, sim: Simulator, gateway: Gateway, call: str
) -> None:
    _fast(sim)
    direct = OPENAI_CALLS[call](clients.openai(sim.url))
    through = OPENAI_CALLS[call](clients.openai(gateway.url))
    assert _same(through) == _same(direct)
    assert through


def test_openai_sdk_unknown_model_is_not_found(
    clients: Clients, sim: Simulator, gateway: Gateway
) -> None:
    direct, through = clients.openai(sim.url), clients.openai(gateway.url)
    with pytest.raises(openai.NotFoundError) as want:
        direct.chat.completions.create(model="nope", messages=MESSAGES)
    with pytest.raises(openai.NotFoundError) as got:
        through.chat.completions.create(model="nope", messages=MESSAGES)
    assert got.value.message == want.value.message
    assert "nope" in got.value.message


def test_openai_mid_stream_failure_raises_instead_of_truncating(
    clients: Clients, sim: Simulator, gateway: Gateway
) -> None:
    sim.settings.fault = "error_after"
    sim.settings.fault_after = 3

    def read(url: str) -> str:
        stream = clients.openai(url).chat.completions.create(
            model="llama3.2", messages=MESSAGES, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    # Ollama's own /v1 layer ends such a stream silently, cut short...
    assert read(sim.url)
    # ...chatsvc tells the SDK, which raises.
    with pytest.raises(openai.APIError, match="failed in the middle"):
        read(gateway.url)


def test_openai_errors_have_openais_shape(gateway: Gateway) -> None:
    response = requests.post(
        f"{gateway.url}/v1/chat/completions",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (None, None)
    assert "not valid JSON" in error["message"]
    missing = requests.get(f"{gateway.url}/v1/nothing", timeout=5)
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"


def _node(script: str, url: str) -> Any:
    done = subprocess.run(
        ["node", "--input-type=module", "-e", script, url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


OLLAMA_JS = """
import { Ollama } from 'ollama'
const ollama = new Ollama({ host: process.argv[1] })
const parts = []
for await (const part of await ollama.chat({
  model: 'llama3.2', stream: true,
  messages: [{ role: 'user', content: 'Why is the sky blue?' }] })) {
  parts.push(part.message.content)
}
const embed = await ollama.embed({ model: 'nomic-embed-text', input: ['one', 'two'] })
console.log(JSON.stringify({ text: parts.join(''), chunks: parts.length,
                             embeddings: embed.embeddings }))
"""


def test_ollama_js_chat_and_embed(sim: Simulator, gateway: Gateway) -> None:
    _fast(sim)
    through = _node(OLLAMA_JS, gateway.url)
    assert through == _node(OLLAMA_JS, sim.url)
    assert through["chunks"] > 1 and len(through["embeddings"]) == 2


# -- the ollama CLI's call sequences (ollama-wire.md §12), as it sends them -------

CLI = {
    "Accept": "application/json",
    "Content-Type": "application/json",
    "User-Agent": "ollama/0.33.0 (amd64 linux) Go/go1.26",
}


def _cli(url: str, method: str, path: str, body: Any = None) -> requests.Response:
    headers = dict(CLI)
    if path in ("/api/pull", "/api/chat", "/api/generate") and body is not None:
        if body.get("stream") is not False:
            headers["Accept"] = "application/x-ndjson"
    return requests.request(method, url + path, json=body, headers=headers, timeout=30)


def _sequence(url: str, calls: list[tuple[str, str, Any]]) -> list[Any]:
    answers = []
    for method, path, body in [("HEAD", "/", None), *calls]:
        response = _cli(url, method, path, body)
        lines = [json.loads(x) for x in response.text.splitlines() if x.strip()]
        answers.append((response.status_code, _same(lines)))
    return answers


SEQUENCES = {
    "list": [("GET", "/api/tags", None)],
    "ps": [("GET", "/api/ps", None)],
    "show": [("POST", "/api/show", {"model": "", "verbose": False, "name": "qwen3"})],
    "run": [
        ("POST", "/api/show", {"model": "qwen3"}),
        ("POST", "/api/show", {"model": "qwen3"}),
        ("POST", "/api/generate", {"model": "qwen3", "prompt": "", "think": True}),
        ("POST", "/api/chat", {"model": "qwen3", "messages": MESSAGES, "think": True}),
    ],
    "run, pulling first": [
        ("POST", "/api/show", {"model": "gemma3"}),
        ("POST", "/api/pull", {"model": "", "name": "gemma3"}),
        ("POST", "/api/show", {"model": "gemma3"}),
        ("POST", "/api/generate", {"model": "gemma3", "prompt": "hi", "system": ""}),
    ],
    "cp then rm": [
        ("POST", "/api/copy", {"source": "llama3.2", "destination": "cli-copy"}),
        ("POST", "/api/show", {"model": "cli-copy"}),
        ("POST", "/api/generate", {"model": "cli-copy", "keep_alive": "0s"}),
        ("DELETE", "/api/delete", {"model": "", "name": "cli-copy"}),
    ],
}


@pytest.mark.parametrize("command", list(SEQUENCES), ids=list(SEQUENCES))
def test_ollama_cli_sequences(sim: Simulator, gateway: Gateway, command: str) -> None:
    _fast(sim)
    through = _sequence(gateway.url, SEQUENCES[command])
    sim.reset()
    _fast(sim)
    direct = _sequence(sim.url, SEQUENCES[command])
    assert through == direct
    assert through[0] == (200, [])  # HEAD / is the CLI's heartbeat


# -- streaming and cancelling are claims about time --------------------------------


def _open_stream(url: str, path: str, body: Any) -> tuple[socket.socket, float]:
    """Send a streamed request on a raw socket; wait for its first body bytes."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    payload = json.dumps(body).encode()
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    started = time.monotonic()
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock, time.monotonic() - started


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"model": "llama3.2", "messages": MESSAGES, "stream": True},
        ),
        ("/api/pull", {"model": "mistral"}),
    ],
    ids=["v1", "pull"],
)
def test_hang_up_reaches_ollama(
    sim: Simulator, gateway: Gateway, path: str, body: Any
) -> None:
    sim.settings.first_token_delay = 0.0
    sim.settings.interval = 0.05
    sim.settings.chunks = 200
    sim.settings.pull_speed = 1e6  # minutes for the whole model
    sock, first = _open_stream(gateway.url, path, body)
    assert first < 1.0
    time.sleep(0.3)
    sock.close()
    closed = time.monotonic()
    hangup = sim.wait_hangup(5)
    assert hangup is not None and hangup.path == path
    # within one chunk interval (50 ms), with room for a loaded machine
    assert hangup.at - closed < 0.1


def test_v1_stream_is_paced_and_kept_alive(sim: Simulator, gateway: Gateway) -> None:
    # Ollama sends nothing for 2.5 s (a queued request), then 10 chunks 50 ms apart.
    sim.settings.first_token_delay = 2.5
    sim.settings.interval = 0.05
    sim.settings.chunks = 10
    started = time.monotonic()
    response = requests.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "llama3.2", "messages": MESSAGES, "stream": True},
        stream=True,
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert "Content-Length" not in response.headers
    arrivals = []
    for line in response.iter_lines():
        if line:
            arrivals.append((time.monotonic() - started, line))
    pings = [at for at, line in arrivals if line == b": ping"]
    data = [at for at, line in arrivals if line.startswith(b"data: {")]
    assert pings and pings[0] < 2.0  # the gateway's heartbeat (1 s in the fixture)
    assert arrivals[-1][1] == b"data: [DONE]"
    assert data[-1] - data[0] > 0.3  # chunks arrive as made, not in one burst


# -- model management: keys, allowlist, long silent calls, big blobs ---------------


def test_management_needs_an_admin_key(
    clients: Clients, sim: Simulator, start_gateway: Callable[..., Gateway]
) -> None:
    _fast(sim)
    gw = start_gateway(CHATSVC_API_KEYS="user-key", CHATSVC_ADMIN_KEYS="admin-key")
    body = {"model": "mistral", "stream": False}

    def pull(key: str | None) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.post(f"{gw.url}/api/pull", json=body, headers=headers)

    assert pull(None).status_code == 401
    refused = pull("user-key")
    assert refused.status_code == 403 and "admin key" in refused.json()["error"]
    assert pull("admin-key").json() == {"status": "success"}
    chat = clients.ollama(gw.url, key="admin-key")
    assert chat.chat("llama3.2", MESSAGES).message.content
    with pytest.raises(openai.AuthenticationError):
        clients.openai(gw.url, key="wrong").models.list()


def test_allowlist_covers_management_and_v1(
    clients: Clients, sim: Simulator, start_gateway: Callable[..., Gateway]
) -> None:
    _fast(sim)
    gw = start_gateway(CHATSVC_MODELS="llama3.2")
    client = clients.ollama(gw.url)
    for call in (
        lambda: client.pull("qwen3"),
        lambda: client.copy("llama3.2", "elsewhere"),
        lambda: client.delete("qwen3"),
        lambda: client.embed("nomic-embed-text", "x"),
    ):
        with pytest.raises(ollama.ResponseError) as refused:
            call()
        assert refused.value.status_code == 403
    sdk = clients.openai(gw.url)
    assert [m.id for m in sdk.models.list().data] == ["llama3.2:latest"]
    with pytest.raises(openai.PermissionDeniedError):
        sdk.chat.completions.create(model="qwen3", messages=MESSAGES)


def test_a_long_pull_without_streaming_is_not_cut_by_the_timeout(
    clients: Clients, sim: Simulator, start_gateway: Callable[..., Gateway]
) -> None:
    # The pull takes about 3 s; Ollama sends progress all along, so a 1 s
    # silence limit must not end it, though the client hears nothing till the end.
    sim.settings.pull_speed = 45960996 / 3
    gw = start_gateway(CHATSVC_UPSTREAM_TIMEOUT_S="1")
    started = time.monotonic()
    answer = clients.ollama(gw.url).pull("all-minilm")
    assert answer.status == "success"
    assert time.monotonic() - started > 2.5


def test_keep_alive_is_capped(
    clients: Clients, sim: Simulator, start_gateway: Callable[..., Gateway]
) -> None:
    _fast(sim)
    gw = start_gateway(CHATSVC_MAX_KEEP_ALIVE="10m")
    client = clients.ollama(gw.url)
    sent = {
        "-1": -1,
        "forever string": "-1s",
        "longer": "2h",
        "shorter": 30,
        "zero": 0,
        "none": None,
    }
    for keep_alive in sent.values():
        client.chat("llama3.2", MESSAGES, keep_alive=keep_alive)
        client.embed("nomic-embed-text", "x", keep_alive=keep_alive)
    seen = [
        r.body.get("keep_alive", "absent")
        for r in sim.requests
        if r.path in ("/api/chat", "/api/embed")
    ]
    expected = [600, 600, 600, 600, 600, 600, 30, 30, 0, 0, "absent", "absent"]
    assert seen == expected


def _worker_peak_kib(gateway: Gateway) -> int:
    children = subprocess.run(
        ["pgrep", "-P", str(gateway.proc.pid)], capture_output=True, text=True
    ).stdout.split()
    peaks = []
    for pid in children:
        status = Path(f"/proc/{pid}/status").read_text()
        peaks += [int(x.split()[1]) for x in status.splitlines() if "VmHWM" in x]
    return max(peaks)


def test_a_blob_upload_streams_through(sim: Simulator, gateway: Gateway) -> None:
    size = 256 << 20
    piece = os.urandom(1 << 20)
    digest = hashlib.sha256(piece * (size // len(piece))).hexdigest()
    before = _worker_peak_kib(gateway)
    response = requests.post(
        f"{gateway.url}/api/blobs/sha256:{digest}",
        data=(piece for _ in range(size // len(piece))),  # chunked, no length
        headers={"Content-Type": "application/json"},  # as ollama-python sends it
        timeout=120,
    )
    assert response.status_code == 201, response.text
    assert response.content == b""
    # 256 MiB went through; no worker grew by even a tenth of that.
    assert _worker_peak_kib(gateway) - before < (size >> 10) // 10
