from __future__ import annotations

import json

import pytest

from chatsvc.endpoints import CHAT as CHAT_ROW
from chatsvc.endpoints import GENERATE as GENERATE_ROW
from chatsvc.framing import Framer, error_body, go_timestamp, ndjson_line, negotiate

CHAT = {
    "model": "m",
    "created_at": "t",
    "message": {"role": "assistant", "content": "Hi"},
    "done": False,
}
CHAT_DONE = {
    "model": "m",
    "created_at": "t",
    "message": {"role": "assistant", "content": ""},
    "done": True,
    "done_reason": "stop",
    "eval_count": 2,
}
GEN = {"model": "m", "created_at": "t", "response": "Hi", "done": False}


@pytest.mark.parametrize(
    ("param", "accept", "expected"),
    [
        (None, None, "ndjson"),
        (None, "", "ndjson"),
        (None, "*/*", "ndjson"),
        (None, "application/json", "ndjson"),
        (None, "application/x-ndjson", "ndjson"),
        (None, "text/event-stream", "sse"),
        (None, "text/plain", "text"),
        (None, "text/html", "ndjson"),
        (None, "text/plain;q=0.5, text/event-stream", "sse"),
        ("text", "text/event-stream", "text"),
        ("sse", None, "sse"),
        ("ndjson", "text/plain", "ndjson"),
    ],
)
def test_negotiate(param: str | None, accept: str | None, expected: str) -> None:
    assert negotiate(param, accept) == expected


ROWS = {"chat": CHAT_ROW, "generate": GENERATE_ROW}


def test_negotiate_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="ndjson, sse or text"):
        negotiate("xml", None)


@pytest.mark.parametrize(
    ("ns", "expected"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1_767_323_045_123_456_789, "2026-01-02T03:04:05.123456789Z"),
        (1_767_323_045_200_000_000, "2026-01-02T03:04:05.2Z"),
        (1_767_323_045_310_000_000, "2026-01-02T03:04:05.31Z"),
        (1_700_000_000_000_000_001, "2023-11-14T22:13:20.000000001Z"),
    ],
)
def test_go_timestamp(ns: int, expected: str) -> None:
    assert go_timestamp(ns) == expected


@pytest.mark.parametrize(
    ("obj", "line"),
    [
        ({"a": "b"}, b'{"a":"b"}\n'),
        ({"t": "x\ny"}, b'{"t":"x\\ny"}\n'),
        ({"t": "\x85"}, b'{"t":"\\u0085"}\n'),
        ({"t": "\u2028\u2029"}, b'{"t":"\\u2028\\u2029"}\n'),
        ({"t": "\x0b\x0c\x1c\x1d\x1e"}, b'{"t":"\\u000b\\f\\u001c\\u001d\\u001e"}\n'),
        ({"t": "h\u00e9 \U0001f600"}, b'{"t":"h\\u00e9 \\ud83d\\ude00"}\n'),
    ],
)
def test_ndjson_line_is_one_line_whatever_the_text(
    obj: dict[str, str], line: bytes
) -> None:
    assert ndjson_line(obj) == line
    # What httpx's splitter (str.splitlines) sees must be exactly one line.
    assert line.decode().splitlines() == [line.decode()[:-1]]
    assert json.loads(line) == obj


def test_error_body_has_no_newline() -> None:
    assert error_body("bad") == b'{"error":"bad"}'


def test_ndjson_framer() -> None:
    framer = Framer("ndjson", CHAT_ROW)
    assert framer.start() == b""
    assert framer.chunk(CHAT) == ndjson_line(CHAT)
    assert framer.error("boom") == b'{"error":"boom"}\n'


def test_ndjson_heartbeat_is_a_valid_empty_chunk() -> None:
    chat = Framer("ndjson", CHAT_ROW).heartbeat("m", 1_767_323_045_200_000_000)
    assert chat == (
        b'{"model":"m","created_at":"2026-01-02T03:04:05.2Z",'
        b'"message":{"role":"assistant","content":""},"done":false}\n'
    )
    gen = json.loads(Framer("ndjson", GENERATE_ROW).heartbeat("m", 0))
    assert gen == {
        "model": "m",
        "created_at": "1970-01-01T00:00:00Z",
        "response": "",
        "done": False,
    }


def test_sse_framer_numbers_events_and_names_done_and_error() -> None:
    framer = Framer("sse", CHAT_ROW)
    assert framer.start() == b"retry: 3000\n\n"
    assert framer.chunk(CHAT) == b"id: 1\ndata: " + ndjson_line(CHAT)[:-1] + b"\n\n"
    assert framer.heartbeat("m", 0) == b": ping\n\n"
    assert framer.chunk(CHAT_DONE) == (
        b"id: 2\nevent: done\ndata: " + ndjson_line(CHAT_DONE)[:-1] + b"\n\n"
    )
    assert framer.error("boom") == b'event: error\ndata: {"error":"boom"}\n\n'


def test_sse_data_never_spans_lines() -> None:
    framer = Framer("sse", GENERATE_ROW)
    event = framer.chunk({"response": "a\nb\r\u2028", "done": False})
    assert event.count(b"\n") == 3  # id line, data line, blank line


@pytest.mark.parametrize(
    ("route", "parts", "expected"),
    [
        ("chat", [CHAT, CHAT_DONE], b"Hi\n"),
        ("generate", [GEN, {"response": " there", "done": True}], b"Hi there\n"),
        ("generate", [{"response": "\u00e9", "done": False}], "\u00e9".encode()),
        ("chat", [{"message": {"role": "assistant"}, "done": False}], b""),
    ],
)
def test_text_framer_writes_only_the_text(
    route: str, parts: list[dict[str, object]], expected: bytes
) -> None:
    framer = Framer("text", ROWS[route])
    assert b"".join(framer.chunk(p) for p in parts) == expected
    assert framer.heartbeat("m", 0) == b""


def test_text_error_starts_on_its_own_line() -> None:
    framer = Framer("text", GENERATE_ROW)
    assert framer.error("early") == b"[error] early\n"
    framer.chunk(GEN)
    assert framer.error("late") == b"\n[error] late\n"
    framer.chunk({"response": "line\n", "done": False})
    assert framer.error("after newline") == b"[error] after newline\n"
