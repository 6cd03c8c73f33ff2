from __future__ import annotations

from typing import Any

import pytest

from chatsvc import endpoints
from chatsvc.endpoints import Endpoint, SseEvent


@pytest.mark.parametrize(
    ("row", "body", "expected"),
    [
        (endpoints.CHAT, {}, True),
        (endpoints.CHAT, {"stream": None}, True),
        (endpoints.CHAT, {"stream": True}, True),
        (endpoints.CHAT, {"stream": False}, False),
        (endpoints.PULL, {}, True),
        (endpoints.PULL, {"stream": False}, False),
        (endpoints.EMBED, {"stream": True}, False),
        (endpoints.COPY, {}, False),
        # OpenAI's default is one answer; only "stream": true streams.
        (endpoints.OPENAI_CHAT, {}, False),
        (endpoints.OPENAI_CHAT, {"stream": True}, True),
        (endpoints.OPENAI_EMBEDDINGS, {"stream": True}, False),
    ],
)
def test_wants_stream(row: Endpoint, body: dict[str, Any], expected: bool) -> None:
    assert row.wants_stream(body) is expected


@pytest.mark.parametrize(
    ("row", "chunk", "last"),
    [
        (endpoints.CHAT, {"done": True}, True),
        (endpoints.CHAT, {"done": False}, False),
        (endpoints.GENERATE, {"response": "x", "done": False}, False),
        (endpoints.PULL, {"status": "success"}, True),
        (endpoints.PULL, {"status": "pulling manifest"}, False),
        (endpoints.CREATE, {"status": "writing manifest"}, False),
        (endpoints.OPENAI_CHAT, SseEvent("[DONE]"), True),
        (endpoints.OPENAI_CHAT, SseEvent('{"choices":[]}'), False),
        (endpoints.OPENAI_RESPONSES, SseEvent("{}", "response.completed"), True),
        (
            endpoints.OPENAI_RESPONSES,
            SseEvent("{}", "response.output_text.delta"),
            False,
        ),
    ],
)
def test_is_last(row: Endpoint, chunk: Any, last: bool) -> None:
    assert row.is_last(chunk) is last


def test_swallowed_openai_error_is_told_apart() -> None:
    swallowed = SseEvent(
        '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
        '"model":"","system_fingerprint":"fp_ollama","choices":[{"index":0,'
        '"delta":{"role":"assistant","content":""},"finish_reason":null}]}'
    )
    ordinary = SseEvent(swallowed.data.replace('"model":""', '"model":"m"'))
    assert endpoints.OPENAI_CHAT.swallowed_error(swallowed)
    assert not endpoints.OPENAI_CHAT.swallowed_error(ordinary)
    assert not endpoints.CHAT.swallowed_error({"model": ""})


@pytest.mark.parametrize(
    ("row", "chunk", "text"),
    [
        (endpoints.CHAT, {"message": {"content": "Hi"}}, "Hi"),
        (endpoints.GENERATE, {"response": "Hi"}, "Hi"),
        (endpoints.PULL, {"status": "pulling manifest"}, "pulling manifest\n"),
        (
            endpoints.PULL,
            {
                "status": "pulling 1a2b",
                "digest": "sha256:1a2b",
                "total": 9,
                "completed": 3,
            },
            "pulling 1a2b 3/9\n",
        ),
    ],
)
def test_text(row: Endpoint, chunk: dict[str, Any], text: str) -> None:
    assert row.text(chunk) == text


def test_progress_keepalive_repeats_the_last_status() -> None:
    last = {"status": "pulling 1a2b", "digest": "sha256:1a2b", "total": 9}
    assert endpoints.PULL.keepalive("m", "t", last) == {"status": "pulling 1a2b"}
    assert endpoints.PULL.keepalive("m", "t", None) == {"status": "waiting for Ollama"}
    several = {"status": "pulling 1a2b", "completed": 5, "host": "gpu1:11434"}
    beat = endpoints.PULL.keepalive("m", "t", several)
    assert beat == {"status": "pulling 1a2b", "host": "gpu1:11434"}
