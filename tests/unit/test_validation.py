from __future__ import annotations

from typing import Any

import pytest

from chatsvc.errors import BadRequest
from chatsvc.validation import (
    chat_request,
    embed_request,
    generate_request,
    parse_body,
    show_request,
)

OK_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the request body is empty"),
        (b"  \n", "the request body is empty"),
        (b"not json", "the request body is not valid JSON: Expecting value"),
        (b'{"model": "m"', "the request body is not valid JSON"),
        (b"[1, 2]", "must be a JSON object, not a list"),
        (b'"text"', "must be a JSON object, not a string"),
        (b"null", "must be a JSON object, not null"),
        (b'{"x": NaN}', "NaN is not a number"),
        (b"\xff\xfe", "not valid"),
        (b"[" * 2_000 + b"]" * 2_000, "nested more than 100 levels deep"),
        (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested more than 100"),
        (b'{"a":' + b"[" * 900 + b'"\\ud800"' + b"]" * 900 + b"}", "nested more"),
        (b'{"a":' + b"[" * 100 + b"]" * 100 + b"}", "nested more than 100"),
        (b'{"options":{"seed":' + b"9" * 5_000 + b"}}", "more than 4300 digits"),
        (b'{"options":{"temperature":1e999}}', "a number too large to use"),
        (b'{"t":[-1E400]}', "a number too large to use"),
        (b'{"t":' + b"1" * 400 + b".0}", "a number too large to use"),
    ],
)
def test_parse_body_rejects(data: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_body(data)


def test_parse_body_accepts_an_object() -> None:
    assert parse_body(b'{"model": "m", "extra": [1]}') == {"model": "m", "extra": [1]}
    # 100 levels, the most accepted, and the largest finite float.
    deep = parse_body(b'{"a":' + b"[" * 99 + b"1.7e308" + b"]" * 99 + b"}")["a"]
    for _ in range(99):
        (deep,) = deep
    assert deep == 1.7e308


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "model is required"),
        ({"model": ""}, "model is required"),
        ({"model": 3}, "model must be a string, not a number"),
        (
            {"model": "m", "messages": "hi"},
            "messages must be a list of message objects, not a string",
        ),
        ({"model": "m", "messages": {"role": "user"}}, "messages must be a list"),
        ({"model": "m", "messages": ["hi"]}, "messages\\[0\\] must be an object"),
        (
            {"model": "m", "messages": [{"content": "hi"}]},
            "messages\\[0\\].role is required",
        ),
        (
            {"model": "m", "messages": [OK_MESSAGES[0], {"role": 1}]},
            "messages\\[1\\].role must be",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": 5}]},
            "messages\\[0\\].content must be a string",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "images": "x"}]},
            "messages\\[0\\].images must be a list",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "images": ["/etc/passwd"]}]},
            "messages\\[0\\].images\\[0\\] must be base64",
        ),
        ({"model": "m", "stream": "yes"}, "stream must be true or false, not a string"),
        ({"model": "m", "stream": 1}, "stream must be true or false, not a number"),
        ({"model": "m", "options": []}, "options must be an object, not a list"),
        ({"model": "m", "format": "yaml"}, "format must be"),
        ({"model": "m", "keep_alive": True}, "keep_alive must be"),
        ({"model": "m", "think": "very"}, "think must be"),
        (
            {"model": "m", "top_logprobs": 21},
            "top_logprobs must be a whole number from 0 to 20",
        ),
        ({"model": "m", "top_logprobs": True}, "top_logprobs must be"),
        ({"model": "m", "tools": {}}, "tools must be a list"),
        ({"model": "m", "tools": [1]}, "tools\\[0\\] must be an object"),
    ],
)
def test_chat_request_rejects(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        chat_request(body, None)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m"},
        {"model": "m", "messages": []},
        {
            "model": "m",
            "messages": OK_MESSAGES,
            "stream": False,
            "format": "json",
            "options": {"temperature": 0},
            "keep_alive": "5m",
            "think": "high",
            "top_logprobs": 3,
            "tools": [{"type": "function"}],
            "unknown": 1,
        },
        {
            "model": "m",
            "messages": [{"role": "user", "images": ["aGVsbG8="]}],
            "format": {"type": "object"},
            "keep_alive": 0,
            "think": False,
        },
    ],
)
def test_chat_request_accepts(body: dict[str, Any]) -> None:
    assert chat_request(dict(body), None) == body


def test_default_model_fills_a_missing_one() -> None:
    assert chat_request({}, "llama3.2")["model"] == "llama3.2"
    assert generate_request({"model": ""}, "llama3.2")["model"] == "llama3.2"
    assert chat_request({"model": "x"}, "llama3.2")["model"] == "x"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m", "prompt": 1}, "prompt must be a string"),
        ({"model": "m", "raw": "yes"}, "raw must be true or false"),
        (
            {"model": "m", "context": [1, "2"]},
            "context\\[1\\] must be a whole number, not a string",
        ),
        ({"model": "m", "context": 5}, "context must be a list of whole numbers"),
        ({"model": "m", "images": ["not base64!"]}, "images\\[0\\] must be base64"),
        ({"model": "m", "system": {}}, "system must be a string, not an object"),
    ],
)
def test_generate_request_rejects(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        generate_request(body, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m", "input": 1}, "input must be a string or a list of strings"),
        (
            {"model": "m", "input": ["a", 2]},
            "input\\[1\\] must be a string, not a number",
        ),
        ({"model": "m", "dimensions": 1.5}, "dimensions must be a whole number"),
    ],
)
def test_embed_request_rejects(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        embed_request(body, None)


def test_embed_request_accepts_a_string_or_strings() -> None:
    for given in ("a", ["a", "b"], []):
        assert embed_request({"model": "m", "input": given}, None)["input"] == given


def test_show_request_takes_the_legacy_name() -> None:
    assert show_request({"name": "m"}, None) == {"model": "m"}
    with pytest.raises(BadRequest, match="model is required"):
        show_request({}, None)
