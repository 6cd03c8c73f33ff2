"""Random bodies, headers and ?format= against /api/chat and /api/generate."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from chatsvc.simulator import Simulator

# -- strategies --------------------------------------------------------------------

# Any code point, lone surrogates included (JSON can carry them as \ud800), and
# a few that have broken JSON relays before.
texts = st.text(st.characters(exclude_categories=()), max_size=12) | st.sampled_from(
    ["\ud83d", "a\udc00b", "\u2028", "\x85", "\x00", "\ufeff", "\U0001f600"]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | texts
    | st.sampled_from(["", "json", "5m", "-1", "llama3.2", "user", "aGk="])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3)
    ),
    max_leaves=6,
)


def either(*good: Any) -> st.SearchStrategy[Any]:
    """A plausible value for a field half the time, else any JSON value."""
    return st.sampled_from(good) | json_values


messages = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "role": either("user", "assistant", "system", "tool", ""),
            "content": texts | texts | json_values,
            "thinking": json_values,
            "images": either(["aGk="], ["not base64!"], []),
            "tool_calls": either([], [{"function": {"name": "f", "arguments": {}}}]),
            "tool_name": json_values,
        },
    )
    | json_values,
    max_size=3,
)
# Each field chatsvc or Ollama reads, with values that are mostly plausible.
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "model": either("llama3.2", "llama3.2:latest", "qwen3", "no-such-model", ""),
    "messages": messages | json_values,
    "prompt": texts | json_values,
    "suffix": json_values,
    "system": json_values,
    "template": json_values,
    "stream": either(True, False),
    "raw": either(True, False),
    "think": either(True, False, "low", "high", "extreme"),
    "format": either("", "json", {"type": "object"}, "xml"),
    "keep_alive": either("5m", 0, -1, "1h30m", "soon", 10**30, 1e300),
    "options": st.dictionaries(
        st.sampled_from(["num_predict", "temperature", "seed", "stop"]),
        json_values,
        max_size=2,
    )
    | json_values,
    "images": either(["aGk="], ["@@"], []),
    "context": either([1, 2, 3], [True], [1.5]),
    "tools": either([{"type": "function", "function": {"name": "f"}}], [1]),
    "top_logprobs": either(0, 5, 21, -1),
    "logprobs": json_values,
    "truncate": json_values,
    "shift": json_values,
}
some_fields = st.lists(
    st.one_of([st.tuples(st.just(k), v) for k, v in FIELD_VALUES.items()]),
    max_size=4,
).map(dict)
VALID = [
    {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
    {"model": "llama3.2", "prompt": "hi"},
    {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    },
    {"model": "llama3.2", "prompt": "hi", "stream": False},
]
# A valid body with a few fields changed (most often), any set of the fields, any
# JSON value, or bytes that may not be JSON (or UTF-8) at all.
bodies = st.one_of(
    st.tuples(st.sampled_from(VALID), some_fields).map(lambda bc: {**bc[0], **bc[1]}),
    st.tuples(st.sampled_from(VALID), some_fields).map(lambda bc: {**bc[0], **bc[1]}),
    some_fields,
    json_values,
).map(lambda value: json.dumps(value).encode()) | st.binary(max_size=40)


def _nested(depth: int, opener: str, inner: str) -> str:
    closer = "]" if opener == "[" else "}"
    return opener * depth + inner + closer * depth


# What a reliability probe sent: values nested past any limit (a lone surrogate at
# the bottom), integers past Python's 4,300 digits, and floats past float's range.
hostile_values = st.one_of(
    st.builds(
        _nested,
        st.integers(90, 3_000) | st.sampled_from([100_000]),
        st.sampled_from(["[", '{"a":']),
        st.sampled_from(["1", '"\\ud800"', "[]", '"x"']),
    ),
    st.integers(4_290, 6_000).map(lambda digits: "9" * digits),
    st.builds(
        "{}{}e{}".format,
        st.sampled_from(["", "-"]),
        st.integers(1, 99),
        st.integers(300, 100_000),
    ),
)
hostile_fields = st.sampled_from(
    ['"options":{"seed":%s}', '"options":{"temperature":%s}', '"format":%s',
     '"messages":[{"role":"user","content":%s}]', '"keep_alive":%s', '"x":%s']
)  # fmt: skip
hostile_bodies = st.builds(
    lambda field, value: '{"model":"llama3.2","prompt":"hi",' + field % value + "}",
    hostile_fields,
    hostile_values,
).map(str.encode) | hostile_values.map(str.encode)
bodies = bodies | hostile_bodies
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30
)
content_types = (
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/problem+json",
        ]
    )
    | st.sampled_from(
        [
            None,
            "text/plain",
            "application/x-ndjson",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ]
    )
    | header_text
)
accepts = (
    st.sampled_from(
        [
            None,
            "*/*",
            "application/json",
            "application/x-ndjson",
            "text/event-stream",
            "text/plain",
            "text/html",
            "text/plain;q=0.1, text/event-stream",
            "",
        ]
    )
    | header_text
)
authorizations = (
    st.just("Bearer k1")
    | st.sampled_from(
        [None, "bearer k1", "Bearer  k1 ", "Bearer wrong", "Basic k1", "Bearer"]
    )
    | header_text
)
formats = (
    st.none()
    | st.sampled_from(["ndjson", "sse", "text"])
    | st.sampled_from(["", "NDJSON", "xml"])
    | st.text(max_size=12)
)  # a URL carries no lone surrogate


# -- what every answer must look like -----------------------------------------------


def check(response: TestResponse) -> None:
    status, body = response.status_code, response.get_data()
    # Ollama answers a wrongly typed option with its own 500, relayed as it came.
    ollamas = status == 500 and body.startswith(b'{"error":"option \\"')
    assert 200 <= status < 300 or 400 <= status < 500 or ollamas, (status, body[:300])
    ctype = response.content_type
    if status >= 400:
        assert ctype == "application/json; charset=utf-8"
        error = json.loads(body)
        assert list(error) == ["error"] and isinstance(error["error"], str), error
        assert error["error"]
        return
    if ctype == "application/json; charset=utf-8":  # "stream": false
        assert json.loads(body)["done"] is True
    elif ctype == "application/x-ndjson":
        assert body.endswith(b"\n")
        parts = [json.loads(line) for line in body.split(b"\n")[:-1]]
        assert all(p.get("done") is False for p in parts[:-1]), parts
        assert parts[-1].get("done") is True or list(parts[-1]) == ["error"], parts[-1]
    elif ctype == "text/event-stream":
        assert body.startswith(b"retry: 3000\n\n") and body.endswith(b"\n\n")
        last = body[:-2].rsplit(b"\n\n", 1)[-1].split(b"\n")
        kinds = [line for line in last if line.startswith(b"event: ")]
        assert kinds in ([b"event: done"], [b"event: error"]), last
        assert json.loads(last[-1].removeprefix(b"data: ")) is not None
    else:
        assert ctype == "text/plain; charset=utf-8", ctype
        assert body.endswith(b"\n")
        body.decode()  # whole characters only


# -- the test ------------------------------------------------------------------------


@pytest.fixture
def clients(make_app: Any, sim: Simulator) -> list[FlaskClient]:
    """One open app, one with every guard on; the simulator as fast as it goes."""
    sim.settings.first_token_delay = 0
    sim.settings.interval = 0
    guarded = make_app(
        CHATSVC_API_KEYS=("k1",),
        CHATSVC_MODELS=("llama3.2",),
        CHATSVC_DEFAULT_MODEL="llama3.2",
        CHATSVC_CORS_ORIGINS=("https://app.example",),
        CHATSVC_MAX_BODY_BYTES=4096,
    )
    return [make_app().test_client(), guarded.test_client()]


@settings(
    max_examples=200,
    # A slow example is a hang in the making; the limit leaves room for a loaded
    # machine, where a normal one takes well under 0.1 s.
    deadline=timedelta(seconds=5),
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    which=st.sampled_from([0, 1]),
    path=st.sampled_from(["/api/chat", "/api/generate"]),
    body=bodies,
    content_type=content_types,
    accept=accepts,
    authorization=authorizations,
    fmt=formats,
)
# Found by this test: a lone surrogate (valid JSON) was answered with a 502.
@example(
    which=0,
    path="/api/chat",
    body=b'{"model":"llama3.2","messages":[{"role":"user","content":"\\ud83d"}]}',
    content_type="application/json",
    accept=None,
    authorization=None,
    fmt=None,
)
# Found by a reliability probe: each was a 500 or a 502.
@example(
    which=0,
    path="/api/chat",
    body=b'{"a":' + b"[" * 900 + b'"\\ud800"' + b"]" * 900 + b"}",
    content_type="application/json",
    accept=None,
    authorization=None,
    fmt=None,
)
@example(
    which=0,
    path="/api/generate",
    body=b'{"model":"llama3.2","prompt":"hi","options":{"temperature":1e999}}',
    content_type="application/json",
    accept=None,
    authorization=None,
    fmt=None,
)
# Ollama's own 500 (hypothesis found it at random, a flaky failure until allowed).
@example(
    which=0,
    path="/api/chat",
    body=b'{"model":"llama3.2","messages":[],"options":{"num_predict":[]}}',
    content_type="application/json",
    accept=None,
    authorization=None,
    fmt=None,
)
def test_any_request_gets_a_well_formed_answer(
    clients: list[FlaskClient],
    which: int,
    path: str,
    body: bytes,
    content_type: str | None,
    accept: str | None,
    authorization: str | None,
    fmt: str | None,
) -> None:
    headers = {
        name: value
        for name, value in [
            ("Content-Type", content_type),
            ("Accept", accept),
            ("Authorization", authorization),
        ]
        if value is not None
    }
    response = clients[which].post(
        path,
        data=body,
        headers=headers,
        query_string={} if fmt is None else {"format": fmt},
    )
    event(f"{response.status_code} {response.content_type}")
    try:
        check(response)
    finally:
        response.close()  # what a WSGI server does: ends the stream, frees its slot
