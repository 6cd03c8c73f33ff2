"""Errors: the same status, content type, shape and text from Ollama and through."""

from __future__ import annotations

import re

from confwire import Answer, Servers, answer_differences

UNKNOWN = "no-such-model-conformance:latest"


def test_chat_unknown_model(servers: Servers) -> None:
    body = {"model": UNKNOWN, "messages": [{"role": "user", "content": "hi"}]}
    direct, _ = servers.check("POST", "/api/chat", body)
    assert direct.status == 404


def test_chat_unknown_model_not_streamed(servers: Servers) -> None:
    body = {"model": UNKNOWN, "messages": [{"role": "user", "content": "hi"}],
            "stream": False}  # fmt: skip
    servers.check("POST", "/api/chat", body)


def test_generate_unknown_model(servers: Servers) -> None:
    direct, _ = servers.check(
        "POST", "/api/generate", {"model": UNKNOWN, "prompt": "hi"}
    )
    assert direct.status == 404


def test_embed_unknown_model(servers: Servers) -> None:
    direct, _ = servers.check("POST", "/api/embed", {"model": UNKNOWN, "input": "hi"})
    assert direct.status == 404


def test_embeddings_unknown_model(servers: Servers) -> None:
    servers.check("POST", "/api/embeddings", {"model": UNKNOWN, "prompt": "hi"})


def test_show_unknown_model(servers: Servers) -> None:
    direct, _ = servers.check("POST", "/api/show", {"model": UNKNOWN})
    assert direct.status == 404


def test_chat_bad_json(servers: Servers) -> None:
    servers.check_own_error("POST", "/api/chat", raw=b'{"model": ', names="JSON")


def test_generate_bad_json(servers: Servers) -> None:
    servers.check_own_error("POST", "/api/generate", raw=b"not json", names="JSON")


def test_chat_empty_body(servers: Servers) -> None:
    servers.check_own_error("POST", "/api/chat", raw=b"", names="empty")


def test_chat_no_model(servers: Servers) -> None:
    body = {"messages": []}
    servers.check_own_error("POST", "/api/chat", body, names="model is required")


def test_chat_wrong_type(servers: Servers) -> None:
    body = {"model": servers.model.name, "messages": "hi"}
    servers.check_own_error("POST", "/api/chat", body, names="messages must be")


def test_bad_keep_alive(servers: Servers) -> None:
    body = {"model": servers.model.name, "prompt": "hi", "keep_alive": "forever"}
    direct, _ = servers.check("POST", "/api/generate", body)
    assert direct.status == 400


def test_bad_option_type(servers: Servers) -> None:
    body = {"model": servers.model.name, "prompt": "hi",
            "options": {"temperature": "hot", "num_predict": 4}}  # fmt: skip
    servers.check("POST", "/api/generate", body)


def test_bad_top_logprobs(servers: Servers) -> None:
    body = {"model": servers.model.name, "messages": [], "top_logprobs": 99}
    servers.check_own_error("POST", "/api/chat", body, names="top_logprobs")


# Ollama's text goes on after this with the registry's URL and this machine's
# network error (here the refusing proxy's); the simulator, which has no network,
# says what Ollama says when the registry has no such model.
PULL_ERROR = re.compile(rb'"error":"pull model manifest: (?:[^"\\]|\\.)*"')


def _check_pull(servers: Servers, body: dict[str, object], kind: str) -> Answer:
    if servers.values:  # chatsvc: Ollama's answer, every byte of the text too
        return servers.check("POST", "/api/pull", body, kind=kind)[0]
    direct, other = servers.both("POST", "/api/pull", body)
    for answer in (direct, other):
        assert len(PULL_ERROR.findall(answer.body)) == 1, answer.body
    a, b = (
        Answer(x.status, x.headers, PULL_ERROR.sub(b'"error":"-"', x.body))
        for x in (direct, other)
    )
    diffs = answer_differences(a, b, servers.values, kind)
    assert not diffs, "POST /api/pull: Ollama vs other\n" + "\n".join(diffs)
    return direct


def test_pull_without_network_streamed(servers: Servers) -> None:
    # Local runs send Ollama's registry calls to a proxy that refuses.
    body = {"model": f"{servers.model.prefix}-never-published"}
    direct = _check_pull(servers, body, "ndjson")
    assert "error" in direct.lines()[-1]


def test_pull_without_network_not_streamed(servers: Servers) -> None:
    body = {"model": f"{servers.model.prefix}-never-published", "stream": False}
    direct = _check_pull(servers, body, "json")
    assert direct.status >= 400


def test_pull_bad_name(servers: Servers) -> None:
    servers.check("POST", "/api/pull", {"model": "a/b/c/d/e"})
