"""The `ollama` CLI's call sequences (ollama-wire.md §12), replayed as HTTP calls."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from chatsvc.simulator import Simulator

CLI = {
    "Accept": "application/json",
    "Content-Type": "application/json",
    "User-Agent": "ollama/0.33.0 (amd64 linux) Go/go1.24.1",
}
STREAM = CLI | {"Accept": "application/x-ndjson"}
HI = [{"role": "user", "content": "hi"}]

# (method, path, body, status, what the CLI needs from the reply); every command
# starts with the heartbeat. Bodies are whole Go structs: empty fields are sent.
SEQUENCES: dict[str, list[tuple[str, str, Any, int, str]]] = {
    "list": [("GET", "/api/tags", None, 200, "models")],
    "ps": [("GET", "/api/ps", None, 200, "models")],
    "show": [
        (
            "POST",
            "/api/show",
            {"model": "", "verbose": False, "name": "qwen3"},
            200,
            "capabilities",
        ),
    ],
    "run (not installed)": [
        ("POST", "/api/show", {"model": "gemma3"}, 404, "error"),
        (
            "POST",
            "/api/pull",
            {"model": "", "username": "", "password": "", "name": "gemma3"},
            200,
            "success",
        ),
        ("POST", "/api/show", {"model": "gemma3"}, 200, "capabilities"),
        ("POST", "/api/show", {"model": "gemma3"}, 200, "capabilities"),
        (
            "POST",
            "/api/generate",
            {"model": "gemma3", "prompt": "", "system": "", "options": None},
            200,
            "load",
        ),
        (
            "POST",
            "/api/chat",
            {"model": "gemma3", "messages": HI, "format": "", "options": {}},
            200,
            "done",
        ),
    ],
    "run a thinking model": [
        ("POST", "/api/show", {"model": "qwen3"}, 200, "capabilities"),
        ("POST", "/api/show", {"model": "qwen3"}, 200, "capabilities"),
        (
            "POST",
            "/api/generate",
            {"model": "qwen3", "prompt": "", "think": True},
            200,
            "load",
        ),
        (
            "POST",
            "/api/chat",
            {"model": "qwen3", "messages": HI, "think": True},
            200,
            "done",
        ),
    ],
    "run an embedding model": [
        ("POST", "/api/show", {"model": "nomic-embed-text"}, 200, "capabilities"),
        (
            "POST",
            "/api/embed",
            {"model": "nomic-embed-text", "input": "prompt"},
            200,
            "embeddings",
        ),
    ],
    "pull of a name the registry lacks": [
        ("POST", "/api/pull", {"model": "", "name": "nothing"}, 200, "error"),
        ("POST", "/api/show", {"model": "nothing:cloud"}, 404, "error"),
    ],
    "cp": [
        ("POST", "/api/copy", {"source": "llama3.2", "destination": "mine"}, 200, ""),
        ("POST", "/api/show", {"model": "mine"}, 200, "capabilities"),
    ],
    "rm": [
        ("POST", "/api/show", {"model": "llama3.2"}, 200, "capabilities"),
        (
            "POST",
            "/api/generate",
            {"model": "llama3.2", "prompt": "", "keep_alive": "0s"},
            200,
            "unload",
        ),
        ("DELETE", "/api/delete", {"model": "", "name": "llama3.2"}, 200, ""),
    ],
    "stop": [
        ("POST", "/api/show", {"model": "qwen3"}, 200, "capabilities"),
        (
            "POST",
            "/api/generate",
            {"model": "qwen3", "prompt": "", "keep_alive": "0s"},
            200,
            "unload",
        ),
    ],
}


def check(reply: requests.Response, needs: str) -> None:
    if not needs:  # copy and delete: exactly 200 with an empty body
        assert reply.content == b""
        return
    lines = [json.loads(line) for line in reply.content.splitlines()]
    last = lines[-1]
    if needs in ("load", "unload"):
        assert last["done_reason"] == needs and len(lines) == 1
    elif needs == "done":
        assert last["done"] is True
    elif needs == "success":
        assert last == {"status": "success"}
    else:
        assert needs in last
    if needs in ("models",):  # the CLI prints digest[:12]
        assert all(len(m["digest"]) >= 12 for m in last["models"])


@pytest.mark.parametrize("command", list(SEQUENCES))
def test_cli_sequence(sim: Simulator, command: str) -> None:
    with requests.Session() as http:
        assert http.head(sim.url + "/", headers=CLI).status_code < 400  # heartbeat
        for method, path, body, status, needs in SEQUENCES[command]:
            headers = STREAM if path in ("/api/chat", "/api/pull") else CLI
            reply = http.request(method, sim.url + path, json=body, headers=headers)
            assert reply.status_code == status, (path, reply.text)
            check(reply, needs)
    assert [r.path for r in sim.requests][1:] == [s[1] for s in SEQUENCES[command]]
