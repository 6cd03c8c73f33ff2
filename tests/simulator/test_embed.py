"""Embeddings as Ollama serves them (ollama-wire.md §8): /api/embed, /api/embeddings."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import ollama
import pytest
import requests

from chatsvc.simulator import Simulator
from simulator.rawhttp import JSON_UTF8, error_body, exchange, wait_for

EMBEDDER = "nomic-embed-text"
# qwen3 runs on Ollama's own engine, which embeds only with a pooling head.
NO_EMBEDDINGS = "this model does not support embeddings"
TOO_LONG = "word " * 3000  # nomic-embed-text's context is 2048 tokens


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/embed", b"", 400, "missing request body"),
        ("/api/embed", b"{", 400, "unexpected EOF"),
        (
            "/api/embed",
            {"model": 5},
            400,
            "json: cannot unmarshal number into Go struct field "
            "EmbedRequest.model of type string",
        ),
        ("/api/embed", {"input": "x"}, 404, "model '' not found"),
        ("/api/embed", {"model": "x y", "input": "x"}, 400, "invalid model name"),
        (
            "/api/embed",
            {"model": "nope", "input": "x"},
            404,
            'model "nope" not found, try pulling it first',
        ),
        ("/api/embed", {"model": EMBEDDER, "input": 5}, 400, "invalid input type"),
        (
            "/api/embed",
            {"model": EMBEDDER, "input": ["a", 1]},
            400,
            "invalid input type",
        ),
        ("/api/embed", {"model": "qwen3", "input": "x"}, 501, NO_EMBEDDINGS),
        (
            "/api/embed",
            {"model": EMBEDDER, "input": "x", "options": {"num_ctx": "big"}},
            500,
            'option "num_ctx" must be of type integer',
        ),
        (
            "/api/embed",
            {"model": EMBEDDER, "input": TOO_LONG, "truncate": False},
            400,
            "the input length exceeds the context length",
        ),
        ("/api/embeddings", b"", 400, "missing request body"),
        ("/api/embeddings", {"prompt": "x"}, 400, "model is required"),
        (
            "/api/embeddings",
            {"model": "nope", "prompt": "x"},
            404,
            'model "nope" not found, try pulling it first',
        ),
        # Every runner error is a 500 on the legacy route.
        ("/api/embeddings", {"model": "qwen3", "prompt": "x"}, 500, NO_EMBEDDINGS),
        (
            "/api/embeddings",
            {"model": EMBEDDER, "prompt": "x", "options": {"stop": "end"}},
            500,
            'option "stop" must be of type array',
        ),
        (
            "/api/embeddings",
            {"model": EMBEDDER, "prompt": TOO_LONG},
            500,
            "the input length exceeds the context length",
        ),
    ],
)
def test_errors(sim: Simulator, path: str, body: Any, status: int, error: str) -> None:
    got, headers, payload = exchange(sim, path, body)
    assert (got, payload) == (status, error_body(error))
    assert headers["content-type"] == JSON_UTF8


def test_embed_reply_shape(sim: Simulator) -> None:
    body = {"model": EMBEDDER, "input": ["first text", "second text"]}
    status, headers, payload = exchange(sim, "/api/embed", body)
    assert (status, headers["content-type"]) == (200, JSON_UTF8)
    assert not payload.endswith(b"\n")
    reply = json.loads(payload)
    assert list(reply) == [
        "model",
        "embeddings",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
    ]
    assert reply["model"] == EMBEDDER  # as sent
    assert reply["prompt_eval_count"] == 4
    first, second = reply["embeddings"]
    assert len(first) == len(second) == 768
    assert abs(norm(first) - 1) < 1e-5 and first != second
    # float32s, written as Go writes them: no more digits than float32 needs
    numbers = re.findall(rb"-?\d+\.\d+", payload.partition(b'"embeddings":')[2])
    assert numbers and max(len(n.strip(b"-0.")) for n in numbers) <= 9


def test_the_same_text_gives_the_same_vector(sim: Simulator) -> None:
    def embed(inputs: list[str]) -> list[list[float]]:
        r = requests.post(
            sim.url + "/api/embed", json={"model": EMBEDDER, "input": inputs}
        )
        return r.json()["embeddings"]  # type: ignore[no-any-return]

    a, b = embed(["alpha", "beta"])
    assert embed(["beta", "alpha"]) == [b, a]  # input order, not a batch effect
    assert embed(["alpha"]) == [a]
    other = requests.post(
        sim.url + "/api/embed", json={"model": "all-minilm", "input": "alpha"}
    )
    assert other.status_code == 404  # not installed here


@pytest.mark.parametrize("dimensions", [64, 768, 5000, 0])
def test_dimensions_cut_and_renormalise(sim: Simulator, dimensions: int) -> None:
    full = requests.post(
        sim.url + "/api/embed", json={"model": EMBEDDER, "input": "x"}
    ).json()["embeddings"][0]
    body = {"model": EMBEDDER, "input": "x", "dimensions": dimensions}
    cut = requests.post(sim.url + "/api/embed", json=body).json()["embeddings"][0]
    if 0 < dimensions < 768:
        assert len(cut) == dimensions and abs(norm(cut) - 1) < 1e-5
        scale = norm(full[:dimensions])
        assert all(abs(c * scale - f) < 1e-6 for c, f in zip(cut, full, strict=False))
    else:  # ignored, with no error
        assert cut == full


def test_truncate_cuts_silently(sim: Simulator) -> None:
    reply = requests.post(
        sim.url + "/api/embed", json={"model": EMBEDDER, "input": TOO_LONG}
    ).json()
    assert len(reply["embeddings"]) == 1 and reply["prompt_eval_count"] == 2048


@pytest.mark.parametrize("given", ['"input":""', '"input":[]', '"input":null', ""])
def test_load_only(sim: Simulator, given: str) -> None:
    body = f'{{"model":"{EMBEDDER}"{"," if given else ""}{given}}}'.encode()
    status, _, payload = exchange(sim, "/api/embed", body)
    assert (status, payload) == (200, b'{"model":"nomic-embed-text","embeddings":[]}')
    assert [m["name"] for m in requests.get(sim.url + "/api/ps").json()["models"]] == [
        "nomic-embed-text:latest"
    ]


def test_legacy_embeddings(sim: Simulator) -> None:
    status, headers, payload = exchange(
        sim, "/api/embeddings", {"model": EMBEDDER, "prompt": "alpha"}
    )
    assert (status, headers["content-type"]) == (200, JSON_UTF8)
    reply = json.loads(payload)
    assert list(reply) == ["embedding"]
    raw = reply["embedding"]
    assert len(raw) == 768 and abs(norm(raw) - 1) > 0.5  # not normalised
    # float32 widened to float64: long digit strings, as Go prints them
    assert any(len(n) > 12 for n in re.findall(rb"\d+\.\d+", payload))
    embedded = requests.post(
        sim.url + "/api/embed", json={"model": EMBEDDER, "input": "alpha"}
    ).json()["embeddings"][0]
    assert all(
        abs(r / norm(raw) - e) < 1e-6 for r, e in zip(raw, embedded, strict=True)
    )
    status, _, payload = exchange(sim, "/api/embeddings", {"model": EMBEDDER})
    assert (status, payload) == (200, b'{"embedding":[]}')


def test_keep_alive_zero_unloads(sim: Simulator) -> None:
    body = {"model": EMBEDDER, "input": "x", "keep_alive": 0}
    assert requests.post(sim.url + "/api/embed", json=body).status_code == 200
    # Unloaded as the request ends, just after its reply (as in Ollama).
    wait_for(lambda: requests.get(sim.url + "/api/ps").json() == {"models": []})


def test_fault_error_before(sim: Simulator) -> None:
    sim.settings.fault = "error_before"
    status, _, payload = exchange(sim, "/api/embed", {"model": EMBEDDER, "input": "x"})
    assert (status, payload) == (500, error_body(sim.settings.fault_message))


def test_official_client(client: ollama.Client) -> None:
    reply = client.embed(model=EMBEDDER, input=["one", "two"], dimensions=32)
    assert len(reply.embeddings) == 2 and len(reply.embeddings[0]) == 32
    assert reply.model == EMBEDDER and (reply.prompt_eval_count or 0) == 2
    assert client.embed(model=EMBEDDER).embeddings == []  # input "" loads only
    legacy = client.embeddings(model=EMBEDDER, prompt="one")
    assert len(legacy.embedding) == 768
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(model="qwen3", input="x")
    assert (info.value.status_code, info.value.error) == (501, NO_EMBEDDINGS)


def test_a_chat_model_on_llama_cpp_embeds(client: ollama.Client) -> None:
    """Ollama 0.17.4 runs llama on llama.cpp, which embeds with any model."""
    reply = client.embed(model="llama3.2", input=["one", "two"])
    assert [len(v) for v in reply.embeddings] == [3072, 3072]
    assert abs(norm(reply.embeddings[0]) - 1) < 1e-5
    assert len(client.embeddings(model="llama3.2", prompt="one").embedding) == 3072
