"""The official ollama-python and openai clients, unchanged, on both servers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ollama
import openai
import pytest
from confwire import Servers, differences, shapes

OPTIONS = {"seed": 42, "temperature": 0, "num_predict": 24}
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


def _same(servers: Servers, direct: Any, other: Any) -> None:
    direct, other = _plain(direct), _plain(other)
    if not servers.values and isinstance(direct, list) and isinstance(other, list):
        direct, other = shapes(direct), shapes(other)  # the simulator's own text
    diffs = differences(direct, other, servers.values)
    assert not diffs, "Ollama vs other, as the client sees them:\n" + "\n".join(diffs)


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return value


@pytest.fixture
def clients() -> Iterator[list[Any]]:
    """Every client a test makes is closed after it (no socket left to the GC)."""
    made: list[Any] = []
    yield made
    for client in made:
        client.close()


def _ollama(url: str, made: list[Any]) -> ollama.Client:
    made.append(ollama.Client(host=url))
    return made[-1]


def _openai(url: str, made: list[Any]) -> openai.OpenAI:
    made.append(openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0))
    return made[-1]


def test_ollama_chat(servers: Servers, clients: list[Any]) -> None:
    answers = [
        _ollama(url, clients).chat(
            model=servers.model.name, messages=MESSAGES, options=OPTIONS
        )
        for url in (servers.ollama, servers.other)
    ]
    _same(servers, *answers)
    assert answers[0].message.content


def test_ollama_chat_streamed(servers: Servers, clients: list[Any]) -> None:
    answers = [
        list(
            _ollama(url, clients).chat(
                model=servers.model.name,
                messages=MESSAGES,
                options=OPTIONS,
                stream=True,
            )
        )
        for url in (servers.ollama, servers.other)
    ]
    _same(servers, *answers)
    assert answers[0][-1].done


def test_ollama_generate_streamed(servers: Servers, clients: list[Any]) -> None:
    answers = [
        list(
            _ollama(url, clients).generate(
                model=servers.model.name, prompt="Hi", options=OPTIONS, stream=True
            )
        )
        for url in (servers.ollama, servers.other)
    ]
    _same(servers, *answers)


def test_ollama_embed_and_embeddings(servers: Servers, clients: list[Any]) -> None:
    for call in ("embed", "embeddings"):
        kw = {"input": "hello"} if call == "embed" else {"prompt": "hello"}
        answers = [
            getattr(_ollama(url, clients), call)(model=servers.model.name, **kw)
            for url in (servers.ollama, servers.other)
        ]
        _same(servers, *answers)


def test_ollama_list_show_ps_version(servers: Servers, clients: list[Any]) -> None:
    for name, args in (("list", ()), ("show", (servers.model.name,)), ("ps", ())):
        answers = [
            getattr(_ollama(url, clients), name)(*args)
            for url in (servers.ollama, servers.other)
        ]
        _same(servers, *answers)


def test_ollama_unknown_model(servers: Servers, clients: list[Any]) -> None:
    errors = []
    for url in (servers.ollama, servers.other):
        with pytest.raises(ollama.ResponseError) as info:
            list(
                _ollama(url, clients).chat(
                    model="no-such-model-conformance", messages=MESSAGES, stream=True
                )
            )
        errors.append((info.value.status_code, info.value.error))
    assert errors[0] == errors[1]


def test_openai_chat(servers: Servers, clients: list[Any]) -> None:
    answers = [
        _openai(url, clients).chat.completions.create(
            model=servers.model.name,
            messages=MESSAGES,  # type: ignore[arg-type]
            seed=42,
            temperature=0,
            max_tokens=24,
        )
        for url in (servers.ollama, servers.other)
    ]
    _same(servers, *answers)


def test_openai_chat_streamed(servers: Servers, clients: list[Any]) -> None:
    answers = [
        list(
            _openai(url, clients).chat.completions.create(
                model=servers.model.name,
                messages=MESSAGES,  # type: ignore[arg-type]
                seed=42,
                temperature=0,
                max_tokens=24,
                stream=True,
            )
        )
        for url in (servers.ollama, servers.other)
    ]
    _same(servers, *answers)
    assert answers[0][-1].choices[0].finish_reason == "length"


def test_openai_models_and_embeddings(servers: Servers, clients: list[Any]) -> None:
    models = [
        _openai(url, clients).models.list().data
        for url in (servers.ollama, servers.other)
    ]
    _same(servers, *models)
    vectors = [
        _openai(url, clients).embeddings.create(model=servers.model.name, input="hello")
        for url in (servers.ollama, servers.other)
    ]
    _same(servers, *vectors)


def test_openai_unknown_model(servers: Servers, clients: list[Any]) -> None:
    errors = []
    for url in (servers.ollama, servers.other):
        with pytest.raises(openai.NotFoundError) as info:
            _openai(url, clients).chat.completions.create(
                model="no-such-model-conformance",
                messages=MESSAGES,  # type: ignore[arg-type]
            )
        errors.append((info.value.status_code, info.value.body))
    # Known divergence in the error's type (see test_conf_openai._check_not_found).
    (want_status, want), (got_status, got) = errors
    assert want_status == got_status == 404
    assert isinstance(want, dict) and isinstance(got, dict)
    assert {**want, "type": "-"} == {**got, "type": "-"}
