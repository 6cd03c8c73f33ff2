"""Pure: one row per relayed route, with every fact the relay needs about it.

A row says how a body is checked, whether it streams, which chunk is the last,
where its text is, and what a keep-alive chunk looks like. The relay and the
framers read these rows; they hold no route names of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chatsvc import validation

Chunk = dict[str, Any]


class Line(dict[str, Any]):
    """An NDJSON chunk as Ollama sent it: its fields, and its line to relay as is."""

    __slots__ = ("raw",)
    raw: bytes


@dataclass(frozen=True)
class SseEvent:
    """One event of an upstream Server-Sent Events stream (Ollama's /v1 layer)."""

    data: str
    event: str | None = None


def _chat_text(chunk: Chunk) -> str:
    message = chunk.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    return text if isinstance(text, str) else ""


def _generate_text(chunk: Chunk) -> str:
    text = chunk.get("response")
    return text if isinstance(text, str) else ""


def _progress_text(chunk: Chunk) -> str:
    status = chunk.get("status")
    if not isinstance(status, str):
        return ""
    if chunk.get("total"):
        return f"{status} {chunk.get('completed', 0)}/{chunk['total']}\n"
    return status + "\n"


def _chat_keepalive(model: str, created_at: str, last: Any) -> Chunk:
    message = {"role": "assistant", "content": ""}
    return {"model": model, "created_at": created_at, "message": message, "done": False}


def _generate_keepalive(model: str, created_at: str, last: Any) -> Chunk:
    return {"model": model, "created_at": created_at, "response": "", "done": False}


def _progress_keepalive(model: str, created_at: str, last: Any) -> Chunk:
    # The same status again: the ollama CLI redraws nothing for a repeat. On
    # several hosts every line says whose it is (chatsvc.hosts), this one too.
    last = last if isinstance(last, dict) else {}
    status = last.get("status")
    beat = {"status": status if isinstance(status, str) else "waiting for Ollama"}
    if "host" in last:
        beat["host"] = last["host"]
    return beat


def _is_done(chunk: Any) -> bool:
    return isinstance(chunk, dict) and chunk.get("done") is True


def _is_success(chunk: Any) -> bool:
    return isinstance(chunk, dict) and chunk.get("status") == "success"


def _is_openai_end(event: Any) -> bool:
    # Chat and completions end with [DONE]; /v1/responses with its completed event.
    return isinstance(event, SseEvent) and (
        event.data == "[DONE]" or event.event == "response.completed"
    )


def _openai_swallowed(event: SseEvent) -> bool:
    # Ollama's /v1 layer turns a mid-stream error into an empty chunk whose model
    # is "" and then stops without [DONE]: the SDK would end silently truncated.
    return '"model":""' in event.data


@dataclass(frozen=True)
class Endpoint:
    path: str  # the upstream path, also chatsvc's
    check: Callable[[dict[str, Any], str | None], dict[str, Any]]
    streams: bool = False  # streamed unless the body says "stream": false
    stream_default: bool = True  # Ollama's default for "stream"
    wire: str = "ndjson"  # what the upstream streams: "ndjson" or "sse"
    is_last: Callable[[Any], bool] = _is_done
    text: Callable[[Chunk], str] = _generate_text
    keepalive: Callable[[str, str, Any], Chunk] = _generate_keepalive
    admin: bool = False  # model management: admin keys only
    openai: bool = False  # OpenAI's shapes for errors and streams
    resumable: bool = False  # may be recorded with ?resumable=1

    def wants_stream(self, body: dict[str, Any]) -> bool:
        stream = body.get("stream")
        return self.streams and (self.stream_default if stream is None else stream)

    def is_load_reply(self, chunk: Any) -> bool:
        """Ollama's answer to a load or unload request: one object, not a stream."""
        return self.is_last(chunk) and chunk.get("done_reason") in ("load", "unload")

    def swallowed_error(self, chunk: Any) -> bool:
        return self.openai and isinstance(chunk, SseEvent) and _openai_swallowed(chunk)


def _management(path: str, check: Any) -> Endpoint:
    return Endpoint(
        path,
        check,
        streams=True,
        is_last=_is_success,
        text=_progress_text,
        keepalive=_progress_keepalive,
        admin=True,
    )


def _openai(
    path: str, streams: bool, stream_default: bool = False, resumable: bool = False
) -> Endpoint:
    return Endpoint(
        path,
        validation.openai_request,
        streams=streams,
        stream_default=stream_default,
        wire="sse",
        is_last=_is_openai_end,
        openai=True,
        resumable=resumable,
    )


CHAT = Endpoint(
    "/api/chat",
    validation.chat_request,
    streams=True,
    text=_chat_text,
    keepalive=_chat_keepalive,
    resumable=True,
)
GENERATE = Endpoint(
    "/api/generate", validation.generate_request, streams=True, resumable=True
)
EMBED = Endpoint("/api/embed", validation.embed_request)
EMBEDDINGS = Endpoint("/api/embeddings", validation.embeddings_request)
SHOW = Endpoint("/api/show", validation.show_request)
PULL = _management("/api/pull", validation.pull_request)
PUSH = _management("/api/push", validation.pull_request)
CREATE = _management("/api/create", validation.create_request)
COPY = Endpoint("/api/copy", validation.copy_request, admin=True)
DELETE = Endpoint("/api/delete", validation.delete_request, admin=True)
OPENAI_CHAT = _openai("/v1/chat/completions", streams=True, resumable=True)
OPENAI_COMPLETIONS = _openai("/v1/completions", streams=True, resumable=True)
OPENAI_RESPONSES = _openai("/v1/responses", streams=True)
OPENAI_EMBEDDINGS = _openai("/v1/embeddings", streams=False)

RESUMABLE = {row.path: row for row in (CHAT, GENERATE, OPENAI_CHAT, OPENAI_COMPLETIONS)}
