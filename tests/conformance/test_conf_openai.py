"""Ollama's /v1 layer, answered by Ollama and by chatsvc (or the simulator)."""

from __future__ import annotations

from typing import Any

import pytest
from confwire import Servers

MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]
SAMPLING = {"seed": 42, "temperature": 0, "max_tokens": 24}


def test_chat_completions(servers: Servers) -> None:
    body = {"model": servers.model.name, "messages": MESSAGES, **SAMPLING}
    direct, _ = servers.check("POST", "/v1/chat/completions", body)
    assert direct.json()["choices"][0]["message"]["content"]


def test_chat_completions_streamed(servers: Servers) -> None:
    body = {"model": servers.model.name, "messages": MESSAGES, "stream": True,
            **SAMPLING}  # fmt: skip
    direct, _ = servers.check("POST", "/v1/chat/completions", body, kind="sse")
    assert direct.events()[-1] == "[DONE]"


def test_chat_completions_streamed_with_usage(servers: Servers) -> None:
    body = {"model": servers.model.name, "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}, **SAMPLING}  # fmt: skip
    servers.check("POST", "/v1/chat/completions", body, kind="sse")


def test_completions(servers: Servers) -> None:
    body = {"model": servers.model.name, "prompt": "Once upon a time", **SAMPLING}
    servers.check("POST", "/v1/completions", body)


def test_completions_streamed(servers: Servers) -> None:
    body = {"model": servers.model.name, "prompt": "Once upon a time",
            "stream": True, **SAMPLING}  # fmt: skip
    servers.check("POST", "/v1/completions", body, kind="sse")


def test_embeddings(servers: Servers) -> None:
    body = {"model": servers.model.name, "input": ["hello", "world"]}
    servers.check("POST", "/v1/embeddings", body)


def test_models(servers: Servers) -> None:
    direct, _ = servers.check("GET", "/v1/models")
    assert servers.model.name in [m["id"] for m in direct.json()["data"]]


def test_model(servers: Servers) -> None:
    servers.check("GET", f"/v1/models/{servers.model.name}")


def _check_not_found(servers: Servers, body: dict[str, object]) -> None:
    """Known divergence: the error's type on a 404.

    API.md (after ollama-wire.md §10.4, read from a newer Ollama) says
    not_found_error; Ollama 0.17.4 says api_error. Everything else must match.
    """
    direct, other = servers.both("POST", "/v1/chat/completions", body)
    assert direct.status == other.status == 404
    want, got = direct.json()["error"], other.json()["error"]
    assert want["type"] in ("api_error", "not_found_error")
    assert {**want, "type": "-"} == {**got, "type": "-"}
    if servers.values:  # chatsvc
        assert got["type"] == "not_found_error"


def test_unknown_model(servers: Servers) -> None:
    _check_not_found(
        servers, {"model": "no-such-model-conformance", "messages": MESSAGES}
    )


def test_unknown_model_streamed(servers: Servers) -> None:
    body = {"model": "no-such-model-conformance", "messages": MESSAGES, "stream": True}
    _check_not_found(servers, body)


def test_empty_messages(servers: Servers) -> None:
    body = {"model": servers.model.name, "messages": []}
    direct, _ = servers.check("POST", "/v1/chat/completions", body)
    assert direct.status == 400


def test_bad_json(servers: Servers) -> None:
    servers.check_own_error(
        "POST", "/v1/chat/completions", raw=b'{"model": ', names="JSON"
    )


@pytest.mark.parametrize("given", [5, ["hi"]], ids=["a number", "a list of strings"])
def test_responses_input_of_the_wrong_shape(servers: Servers, given: Any) -> None:
    body = {"model": servers.model.name, "input": given}
    direct, _ = servers.check("POST", "/v1/responses", body)
    assert direct.status == 400


_BASES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": MESSAGES},
    "/v1/completions": {"prompt": "hi"},
    "/v1/responses": {"input": "hi"},
}


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/v1/chat/completions", "stream_options", True),
        ("/v1/chat/completions", "temperature", "hot"),
        ("/v1/completions", "temperature", "hot"),
        ("/v1/responses", "tools", 5),
    ],
)
def test_a_field_of_the_wrong_type(
    servers: Servers, path: str, field: str, value: Any
) -> None:
    body = {"model": servers.model.name, **_BASES[path], field: value}
    direct, _ = servers.check("POST", path, body)
    assert direct.status == 400
