"""Ollama's /v1 layer (ollama-wire.md §10) on the wire and through the openai SDK."""

from __future__ import annotations

import base64
import json
import re
import struct
import time
from typing import Any

import openai
import pytest
import requests

from chatsvc.simulator import Simulator
from simulator.rawhttp import HELLO, body_of, dechunk, exchange

CHAT = {"model": "llama3.2", "messages": HELLO}
CHUNK_KEYS = ["id", "object", "created", "model", "system_fingerprint", "choices"]


def events(payload: bytes) -> list[Any]:
    """The data of each SSE event; [DONE] as the string."""
    body = b"".join(dechunk(payload))
    assert body.endswith(b"\n\n") and b"\r" not in body
    out = []
    for event in body.split(b"\n\n")[:-1]:
        assert event.startswith(b"data: ") and b"\n" not in event
        data = event[6:]
        out.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return out


def stream(
    sim: Simulator, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, str], list[Any]]:
    status, headers, payload = exchange(sim, path, body | {"stream": True})
    return status, headers, events(payload)


# --- chat ---------------------------------------------------------------------------


def test_chat_stream(sim: Simulator) -> None:
    sim.settings.chunks = 3
    body = CHAT | {"stream_options": {"include_usage": True}}
    status, headers, got = stream(sim, "/v1/chat/completions", body)
    assert (status, headers["content-type"]) == (200, "text/event-stream")
    assert "cache-control" not in headers and headers["transfer-encoding"] == "chunked"
    *chunks, finish, usage, done = got
    assert done == "[DONE]" and len(chunks) == 3
    assert all(list(c) == CHUNK_KEYS for c in chunks + [finish])
    assert re.fullmatch(r"chatcmpl-\d{1,3}", chunks[0]["id"])
    assert (
        len({c["id"] for c in got[:-1]}) == 1
        and len({c["created"] for c in got[:-1]}) == 1
    )
    assert abs(chunks[0]["created"] - time.time()) < 5
    assert (
        chunks[0]["object"] == "chat.completion.chunk"
        and chunks[0]["model"] == "llama3.2"
    )
    first = chunks[0]["choices"]
    assert list(first[0]["delta"]) == ["role", "content"]  # the role rides on the text
    assert first[0]["finish_reason"] is None and list(first[0]) == [
        "index",
        "delta",
        "finish_reason",
    ]
    assert [list(c["choices"][0]["delta"]) for c in chunks[1:]] == [
        ["content"],
        ["content"],
    ]
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage["choices"] == [] and list(usage)[-1] == "usage"
    assert usage["usage"]["completion_tokens"] == 3
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 3


def test_chat_stream_without_usage_and_with_a_length_stop(sim: Simulator) -> None:
    body = CHAT | {"max_tokens": 2}
    *_, finish, done = stream(sim, "/v1/chat/completions", body)[2]
    assert done == "[DONE]" and finish["choices"][0]["finish_reason"] == "length"


def test_chat_whole(sim: Simulator) -> None:
    status, headers, payload = exchange(sim, "/v1/chat/completions", CHAT)  # stream off
    assert (status, headers["content-type"]) == (200, "application/json")
    assert payload.endswith(b"}\n")
    reply = json.loads(payload)
    assert list(reply) == [*CHUNK_KEYS, "usage"]
    assert reply["object"] == "chat.completion" and reply["id"].startswith("chatcmpl-")
    [choice] = reply["choices"]
    assert list(choice) == ["index", "message", "finish_reason"]
    assert choice["finish_reason"] == "stop" and list(choice["message"]) == [
        "role",
        "content",
    ]
    native = requests.post(sim.url + "/api/chat", json=CHAT | {"stream": False}).json()
    assert choice["message"]["content"] == native["message"]["content"]


def test_reasoning_and_tools(sim: Simulator) -> None:
    got = stream(sim, "/v1/chat/completions", CHAT | {"model": "qwen3"})[2]
    first = got[0]["choices"][0]["delta"]
    assert list(first) == ["role", "content", "reasoning"] and first["content"] == ""
    assert any("reasoning" not in g["choices"][0]["delta"] for g in got[1:-2])
    off = stream(
        sim,
        "/v1/chat/completions",
        CHAT | {"model": "qwen3", "reasoning_effort": "none"},
    )[2]
    assert not any(
        "reasoning" in g["choices"][0]["delta"] for g in off[:-1] if g["choices"]
    )

    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    got = stream(sim, "/v1/chat/completions", CHAT | {"tools": [tool]})[2]
    [call] = got[-3]["choices"][0]["delta"]["tool_calls"]
    assert list(call) == ["id", "index", "type", "function"]
    assert re.fullmatch(r"call_[a-z0-9]{8}", call["id"])
    assert call["function"] == {"name": "get_weather", "arguments": "{}"}
    assert got[-2]["choices"][0]["finish_reason"] == "tool_calls"
    whole = requests.post(
        sim.url + "/v1/chat/completions", json=CHAT | {"tools": [tool]}
    ).json()
    assert whole["choices"][0]["finish_reason"] == "tool_calls"
    assert whole["choices"][0]["message"]["tool_calls"][0]["type"] == "function"


def test_swallowed_mid_stream_error(sim: Simulator) -> None:
    """The native {"error"} line becomes an ordinary-looking chunk; then nothing."""
    sim.settings.fault, sim.settings.fault_after = "error_after", 2
    status, _, got = stream(sim, "/v1/chat/completions", CHAT)
    assert status == 200 and len(got) == 3 and "[DONE]" not in got
    last = got[-1]
    assert last["model"] == "" and last["id"] == got[0]["id"]
    assert last["created"] == got[0]["created"]
    assert last["choices"] == [
        {"index": 0, "delta": {"content": ""}, "finish_reason": None}
    ]
    completions = stream(sim, "/v1/completions", {"model": "llama3.2", "prompt": "x"})[
        2
    ]
    assert len(completions) == 3 and completions[-1]["model"] == ""
    assert completions[-1]["choices"][0]["text"] == ""


def test_cut_before_done_has_no_finish_and_no_done(sim: Simulator) -> None:
    sim.settings.fault, sim.settings.chunks = "cut_before_done", 3
    got = stream(sim, "/v1/chat/completions", CHAT)[2]
    assert len(got) == 3 and all(g["choices"][0]["finish_reason"] is None for g in got)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("streamed", [True, False])
def test_error_before_the_first_byte(sim: Simulator, path: str, streamed: bool) -> None:
    sim.settings.fault = "error_before"
    body = CHAT if "chat" in path else {"model": "llama3.2", "prompt": "x"}
    status, headers, payload = exchange(sim, path, body | {"stream": streamed})
    assert (status, headers["content-type"]) == (500, "application/json")
    error = {
        "message": sim.settings.fault_message,
        "type": "api_error",
        "param": None,
        "code": None,
    }
    assert (
        body_of(headers, payload)
        == json.dumps({"error": error}, separators=(",", ":")).encode() + b"\n"
    )


def error(status: int, message: str) -> bytes:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(
        status, "api_error"
    )
    shape = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return json.dumps(shape, separators=(",", ":")).encode()


# The middleware's own 400s carry a charset and no newline; errors of the native
# handler come through its writer: no charset, and a newline.
MIDDLEWARE = ("application/json; charset=utf-8", b"")
MIDDLEWARE_ERROR = (400, MIDDLEWARE[0])
NATIVE = ("application/json", b"\n")


@pytest.mark.parametrize(
    ("path", "method", "body", "status", "kind", "message"),
    [
        ("/v1/chat/completions", "POST", b"", 400, MIDDLEWARE, "EOF"),
        (
            "/v1/chat/completions",
            "POST",
            {"model": "llama3.2"},
            400,
            MIDDLEWARE,
            "[] is too short - 'messages'",
        ),
        (
            "/v1/chat/completions",
            "POST",
            CHAT | {"model": 1},
            400,
            MIDDLEWARE,
            "json: cannot unmarshal number into Go struct field "
            "ChatCompletionRequest.model of type string",
        ),
        (
            "/v1/chat/completions",
            "POST",
            CHAT | {"stream_options": True},
            400,
            MIDDLEWARE,
            "json: cannot unmarshal bool into Go struct field "
            "ChatCompletionRequest.stream_options of type openai.StreamOptions",
        ),
        (
            "/v1/chat/completions",
            "POST",
            CHAT | {"temperature": "hot"},
            400,
            MIDDLEWARE,
            "json: cannot unmarshal string into Go struct field "
            "ChatCompletionRequest.temperature of type float64",
        ),
        (
            "/v1/completions",
            "POST",
            {"model": "llama3.2", "prompt": "x", "temperature": "hot"},
            400,
            MIDDLEWARE,
            "json: cannot unmarshal string into Go struct field "
            "CompletionRequest.temperature of type float32",
        ),
        (
            "/v1/responses",
            "POST",
            {"model": "llama3.2", "input": "x", "tools": 5},
            400,
            MIDDLEWARE,
            "json: cannot unmarshal number into Go struct field "
            "ResponsesRequest.tools of type []openai.ResponsesTool",
        ),
        (
            "/v1/chat/completions",
            "POST",
            CHAT | {"reasoning_effort": "huge"},
            400,
            MIDDLEWARE,
            'invalid reasoning value: "huge" (must be "minimal", "low", "medium", '
            '"high", "xhigh", "ultra", "max", or "none")',
        ),
        (
            "/v1/chat/completions",
            "POST",
            CHAT | {"model": "nope"},
            404,
            NATIVE,
            "model 'nope' not found",
        ),
        (
            "/v1/chat/completions",
            "POST",
            {"messages": HELLO},
            400,
            NATIVE,
            "model is required",
        ),
        (
            "/v1/chat/completions",
            "POST",
            CHAT | {"reasoning_effort": "high"},
            400,
            NATIVE,
            '"llama3.2" does not support thinking',
        ),
        (
            "/v1/completions",
            "POST",
            {"model": "nope", "prompt": "x"},
            404,
            NATIVE,
            "model 'nope' not found",
        ),
        (
            "/v1/embeddings",
            "POST",
            {"model": "nomic-embed-text", "input": None},
            400,
            MIDDLEWARE,
            "invalid input",
        ),
        (
            "/v1/embeddings",
            "POST",
            {"model": "nomic-embed-text", "input": []},
            400,
            MIDDLEWARE,
            "invalid input",
        ),
        (
            "/v1/embeddings",
            "POST",
            {"model": "nomic-embed-text", "input": "x", "encoding_format": "int8"},
            400,
            MIDDLEWARE,
            "Invalid value for 'encoding_format' = int8. "
            "Supported values: ['float', 'base64'].",
        ),
        (
            "/v1/embeddings",
            "POST",
            {"model": "nope", "input": "x"},
            404,
            NATIVE,
            'model "nope" not found, try pulling it first',
        ),
        (
            "/v1/embeddings",
            "POST",
            {"model": "llama3.2", "input": "x"},
            501,
            NATIVE,
            "This server does not support embeddings. Start it with `--embeddings`",
        ),
        ("/v1/models/nope", "GET", b"", 404, NATIVE, "model 'nope:latest' not found"),
    ],
)
def test_errors(
    sim: Simulator,
    path: str,
    method: str,
    body: Any,
    status: int,
    kind: tuple[str, bytes],
    message: str,
) -> None:
    got, headers, payload = exchange(sim, path, body, method)
    assert (got, headers["content-type"]) == (status, kind[0])
    assert payload == error(status, message) + kind[1]


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (None, "invalid message content type: <nil>"),
        (5, "invalid message content type: float64"),
        ({"a": 1}, "invalid message content type: map[string]interface {}"),
        ([{"type": "audio"}], "invalid message format"),
    ],
)
def test_message_content(sim: Simulator, content: Any, error: str) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": content}]}
    got, headers, payload = exchange(sim, "/v1/chat/completions", body)
    assert (got, headers["content-type"]) == MIDDLEWARE_ERROR
    assert json.loads(payload)["error"]["message"] == error


def image(url: str) -> dict[str, Any]:
    part = {"type": "image_url", "image_url": {"url": url}}
    return {"model": "gemma3", "messages": [{"role": "user", "content": [part]}]}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            image("https://example.com/cat.png"),
            400,
            "image URLs are not currently supported, "
            "please use base64 encoded data instead",
        ),
        (image("data:image/gif;base64,R0lGOD"), 400, "invalid image input"),
        (image("data:image/png;base64,***"), 400, "invalid image input"),
        (image("data:image/png;base64,iVBORw0KGgo="), 404, "model 'gemma3' not found"),
    ],
)
def test_image_urls(sim: Simulator, body: Any, status: int, message: str) -> None:
    got, _, payload = exchange(sim, "/v1/chat/completions", body)
    assert (got, json.loads(payload)["error"]["message"]) == (status, message)


@pytest.mark.parametrize(
    ("method", "path", "status", "text"),
    [
        ("GET", "/v1/chat/completions", 405, b"405 method not allowed"),
        ("POST", "/v1/models", 405, b"405 method not allowed"),
        ("GET", "/v1/models/library/llama3.2", 404, b"404 page not found"),
        ("POST", "/v1/messages/count", 404, b"404 page not found"),
    ],
)
def test_router_fallbacks(
    sim: Simulator, method: str, path: str, status: int, text: bytes
) -> None:
    got, headers, payload = exchange(sim, path, b"", method)
    assert (got, headers["content-type"], payload) == (status, "text/plain", text)


# --- completions, embeddings, models ------------------------------------------------


def test_completions(sim: Simulator) -> None:
    sim.settings.chunks = 2
    body = {
        "model": "llama3.2",
        "prompt": "x",
        "stream_options": {"include_usage": True},
    }
    *chunks, usage, done = stream(sim, "/v1/completions", body)[2]
    assert done == "[DONE]" and len(chunks) == 3  # two texts and the final line's
    keys = [
        "id",
        "object",
        "created",
        "choices",
        "model",
        "system_fingerprint",
        "usage",
    ]
    assert all(list(c) == keys for c in chunks)
    assert all(
        c["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for c in chunks
    )
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 2
    whole = requests.post(
        sim.url + "/v1/completions", json={"model": "llama3.2", "prompt": "x"}
    )
    reply = whole.json()
    assert list(reply) == [
        "id",
        "object",
        "created",
        "model",
        "system_fingerprint",
        "choices",
        "usage",
    ]
    assert reply["object"] == "text_completion" and re.fullmatch(
        r"cmpl-\d{1,3}", reply["id"]
    )
    assert list(reply["choices"][0]) == ["text", "index", "finish_reason"]


def test_embeddings(sim: Simulator) -> None:
    body = {"model": "nomic-embed-text", "input": ["a", "b"]}
    status, headers, payload = exchange(sim, "/v1/embeddings", body)
    assert (status, headers["content-type"]) == (200, "application/json")
    reply = json.loads(payload)
    assert list(reply) == ["object", "data", "model", "usage"]
    assert [list(d) for d in reply["data"]] == [["object", "embedding", "index"]] * 2
    assert reply["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    native = requests.post(sim.url + "/api/embed", json=body).json()["embeddings"]
    assert [d["embedding"] for d in reply["data"]] == native
    packed = requests.post(
        sim.url + "/v1/embeddings", json=body | {"encoding_format": "BASE64"}
    )
    first = base64.b64decode(packed.json()["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(first) // 4}f", first)) == pytest.approx(
        native[0], rel=1e-6
    )
    empty = requests.post(
        sim.url + "/v1/embeddings", json={"model": "nomic-embed-text", "input": ""}
    )
    assert len(empty.json()["data"]) == 1  # "" is sent as [""]


def test_models(sim: Simulator) -> None:
    status, headers, payload = exchange(sim, "/v1/models", b"", "GET")
    assert (status, headers["content-type"]) == (200, "application/json")
    reply = json.loads(payload)
    tags = requests.get(sim.url + "/api/tags").json()["models"]
    assert [m["id"] for m in reply["data"]] == [t["model"] for t in tags]
    assert reply["data"][0] == {
        "id": "llama3.2:latest",
        "object": "model",
        "created": 1767225600,
        "owned_by": "library",
    }
    sim.settings.models = ["someone/thing:7b"]
    assert (
        requests.get(sim.url + "/v1/models").json()["data"][0]["owned_by"] == "someone"
    )
    got = requests.get(sim.url + "/v1/models/someone%2Fthing:7b")
    assert got.status_code == 404  # a single path segment only
    sim.settings.models = []
    assert (
        exchange(sim, "/v1/models", b"", "GET")[2] == b'{"object":"list","data":null}\n'
    )
    sim.settings.models = ["llama3.2"]
    one = requests.get(sim.url + "/v1/models/llama3.2")
    assert one.json() == {
        "id": "llama3.2",
        "object": "model",
        "created": 1767225600,
        "owned_by": "library",
    }


# --- responses ----------------------------------------------------------------------


def test_responses_whole(sim: Simulator) -> None:
    body = {"model": "llama3.2", "input": "hello", "instructions": "Be brief."}
    status, headers, payload = exchange(sim, "/v1/responses", body)
    assert (status, headers["content-type"]) == (200, "application/json")
    reply = json.loads(payload)
    assert list(reply)[:6] == [
        "id",
        "object",
        "created_at",
        "completed_at",
        "status",
        "incomplete_details",
    ]
    assert reply["object"] == "response" and reply["status"] == "completed"
    assert reply["instructions"] == "Be brief." and reply["top_p"] == 1
    assert b'"top_p":1,' in payload  # Go writes a whole float64 as 1
    [item] = reply["output"]
    assert item["type"] == "message" and item["content"][0]["type"] == "output_text"
    assert sim.requests[-1].body["input"] == "hello"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            5,
            "input must be a string or array: json: cannot unmarshal number "
            "into Go value of type []json.RawMessage",
        ),
        (
            ["hi"],
            "input[0]: json: cannot unmarshal string into Go value of type struct "
            '{ Type string "json:\\"type\\""; Role string "json:\\"role\\"" }',
        ),
    ],
)
def test_responses_input_of_the_wrong_shape_is_a_400(
    sim: Simulator, given: Any, message: str
) -> None:
    body = {"model": "llama3.2", "input": given}
    status, _, payload = exchange(sim, "/v1/responses", body)
    assert status == 400
    assert json.loads(payload)["error"]["message"] == message


def test_responses_stream(sim: Simulator) -> None:
    sim.settings.chunks = 2
    body = {"model": "llama3.2", "input": "hello", "stream": True}
    status, headers, payload = exchange(sim, "/v1/responses", body)
    assert (status, headers["content-type"], headers["cache-control"]) == (
        200,
        "text/event-stream",
        "no-cache",
    )
    chunks = dechunk(payload)
    assert all(
        c.startswith(b"event: ") and c.endswith(b"\n\n") for c in chunks
    )  # one a flush
    parsed = []
    for chunk in chunks:
        kind, data = chunk[:-2].split(b"\n")
        parsed.append((kind[7:].decode(), json.loads(data[6:])))
        keys = list(parsed[-1][1])
        assert keys == sorted(
            keys
        )  # Go maps: keys sorted, type and sequence_number too
    assert [k for k, _ in parsed] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [d["sequence_number"] for _, d in parsed] == list(range(10))
    assert all(d["type"] == k for k, d in parsed)
    completed = parsed[-1][1]["response"]
    assert (
        completed["status"] == "completed" and completed["usage"]["output_tokens"] == 2
    )
    assert b"[DONE]" not in payload


# --- hang-ups and the SDK -----------------------------------------------------------


def test_hangup_on_a_v1_stream(sim: Simulator) -> None:
    sim.settings.interval, sim.settings.chunks = 0.05, 100
    with requests.post(
        sim.url + "/v1/chat/completions", json=CHAT | {"stream": True}, stream=True
    ) as r:
        lines = r.iter_lines()
        next(lines)
    closed = time.monotonic()
    hangup = sim.wait_hangup(2)
    assert hangup is not None and hangup.path == "/v1/chat/completions"
    assert hangup.at - closed < 0.2


@pytest.fixture
def sdk(sim: Simulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="ollama", max_retries=0)


def test_openai_sdk(sim: Simulator, sdk: openai.OpenAI) -> None:
    messages: Any = HELLO
    whole = sdk.chat.completions.create(model="llama3.2", messages=messages)
    parts = sdk.chat.completions.create(
        model="llama3.2", messages=messages, stream=True
    )
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    assert whole.choices[0].message.content == text and whole.usage is not None
    completion = sdk.completions.create(model="llama3.2", prompt="x")
    assert completion.choices[0].text and completion.choices[0].finish_reason == "stop"
    vectors = sdk.embeddings.create(model="nomic-embed-text", input=["a"])  # base64
    native = requests.post(
        sim.url + "/api/embed", json={"model": "nomic-embed-text", "input": "a"}
    )
    assert vectors.data[0].embedding == pytest.approx(
        native.json()["embeddings"][0], rel=1e-6
    )
    assert [m.id for m in sdk.models.list()][:1] == ["llama3.2:latest"]
    assert sdk.models.retrieve("qwen3").owned_by == "library"
    response = sdk.responses.create(model="llama3.2", input="hello")
    assert response.output_text == whole.choices[0].message.content
    with pytest.raises(openai.NotFoundError) as info:
        sdk.chat.completions.create(model="nope", messages=messages)
    assert info.value.message.endswith("model 'nope' not found")


def test_openai_sdk_sees_a_swallowed_error_as_a_short_answer(
    sim: Simulator, sdk: openai.OpenAI
) -> None:
    sim.settings.fault, sim.settings.fault_after = "error_after", 2
    messages: Any = HELLO
    parts = list(
        sdk.chat.completions.create(model="llama3.2", messages=messages, stream=True)
    )
    assert len(parts) == 3 and parts[-1].model == ""  # no exception: silently short
    assert parts[-1].choices[0].finish_reason is None
