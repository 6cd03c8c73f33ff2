"""Ollama's native routes, answered by Ollama and by chatsvc (or the simulator)."""

from __future__ import annotations

from confwire import Servers, call

# Greedy and seeded: the same request gives the same text twice.
OPTIONS = {"seed": 42, "temperature": 0, "num_predict": 24}
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Why is the sky blue?"},
]


def test_chat_streamed(servers: Servers) -> None:
    body = {"model": servers.model.name, "messages": MESSAGES, "options": OPTIONS}
    direct, _ = servers.check("POST", "/api/chat", body, kind="ndjson")
    lines = direct.lines()
    assert len(lines) > 2 and lines[-1]["done"] is True  # a real stream was compared


def test_chat_not_streamed(servers: Servers) -> None:
    body = {"model": servers.model.name, "messages": MESSAGES, "options": OPTIONS,
            "stream": False}  # fmt: skip
    direct, _ = servers.check("POST", "/api/chat", body)
    assert direct.json()["message"]["content"]


def test_generate_streamed(servers: Servers) -> None:
    body = {
        "model": servers.model.name,
        "prompt": "Once upon a time",
        "options": OPTIONS,
    }
    direct, _ = servers.check("POST", "/api/generate", body, kind="ndjson")
    assert "context" in direct.lines()[-1]


def test_generate_not_streamed(servers: Servers) -> None:
    body = {"model": servers.model.name, "prompt": "Once upon a time",
            "system": "Be brief.", "options": OPTIONS, "stream": False}  # fmt: skip
    servers.check("POST", "/api/generate", body)


def test_generate_raw_streamed(servers: Servers) -> None:
    body = {"model": servers.model.name, "prompt": "abc", "raw": True,
            "options": OPTIONS}  # fmt: skip
    servers.check("POST", "/api/generate", body, kind="ndjson")


def test_chat_with_no_messages_loads_and_answers_once(servers: Servers) -> None:
    # Ollama answers one JSON object (done_reason "load") even for a stream.
    body = {"model": servers.model.name, "messages": []}
    direct, _ = servers.check("POST", "/api/chat", body)
    assert direct.json()["done_reason"] == "load"


def test_generate_with_no_prompt_loads_and_answers_once(servers: Servers) -> None:
    body = {"model": servers.model.name, "prompt": ""}
    direct, _ = servers.check("POST", "/api/generate", body)
    assert direct.json()["done_reason"] == "load"


def test_embed_list(servers: Servers) -> None:
    body = {"model": servers.model.name, "input": ["hello", "world"]}
    direct, _ = servers.check("POST", "/api/embed", body)
    assert len(direct.json()["embeddings"]) == 2


def test_embed_string(servers: Servers) -> None:
    servers.check("POST", "/api/embed", {"model": servers.model.name, "input": "hi"})


def test_embeddings_legacy(servers: Servers) -> None:
    body = {"model": servers.model.name, "prompt": "hello"}
    direct, _ = servers.check("POST", "/api/embeddings", body)
    assert direct.json()["embedding"]


def test_tags(servers: Servers) -> None:
    direct, _ = servers.check("GET", "/api/tags")
    assert servers.model.name in [m["name"] for m in direct.json()["models"]]


def test_show(servers: Servers) -> None:
    direct, _ = servers.check("POST", "/api/show", {"model": servers.model.name})
    assert "completion" in direct.json()["capabilities"]


def test_show_legacy_name(servers: Servers) -> None:
    servers.check("POST", "/api/show", {"name": servers.model.name, "verbose": False})


def test_ps(servers: Servers) -> None:
    call(servers.ollama, "POST", "/api/generate", {"model": servers.model.name})
    direct, _ = servers.check("GET", "/api/ps")
    assert servers.model.name in [m["name"] for m in direct.json()["models"]]


def test_version(servers: Servers) -> None:
    servers.check("GET", "/api/version")


def test_root_for_a_client(servers: Servers) -> None:
    servers.check("GET", "/", kind="text")


def test_root_head(servers: Servers) -> None:
    direct, _ = servers.check("HEAD", "/", kind="empty")
    assert direct.status == 200
