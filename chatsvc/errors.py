"""The error tree: every failure a client can see, with its HTTP status.

ChatsvcError
├── BadRequest (400)
├── Unauthorized (401)
├── Forbidden (403)
├── NotFound (404)             the upstream does not know the model
├── UnsupportedMediaType (415)
├── TooManyStreams (429)       per-client stream limit
├── UpstreamError (502)        Ollama answered with an error or broke its protocol
├── Unavailable (503)          Ollama unreachable, or the server's stream limit
│   └── StoreUnavailable       the shared store (Redis/Valkey) does not answer
└── UpstreamTimeout (504)      Ollama went silent for too long

werkzeug's own 404, 405 and 413 are answered in the same {"error"} shape.
"""

from __future__ import annotations


class ChatsvcError(Exception):
    status = 500
    retry_after: int | None = None
    # Set on errors that came from Ollama or from reaching it, for metrics.
    upstream_kind: str | None = None

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(ChatsvcError):
    status = 400


class Unauthorized(ChatsvcError):
    status = 401


class Forbidden(ChatsvcError):
    status = 403


class NotFound(ChatsvcError):
    status = 404


class UnsupportedMediaType(ChatsvcError):
    status = 415


class TooManyStreams(ChatsvcError):
    status = 429
    retry_after = 1


class UpstreamError(ChatsvcError):
    status = 502


class Unavailable(ChatsvcError):
    status = 503


class StreamsFull(Unavailable):
    retry_after = 1


class StoreUnavailable(Unavailable):
    retry_after = 5


class UpstreamTimeout(ChatsvcError):
    status = 504
