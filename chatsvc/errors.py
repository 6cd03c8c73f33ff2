"""The error tree, built on werkzeug's HTTP exceptions, and the one handler.

ChatsvcError (werkzeug HTTPException; `description` is the one sentence sent)
├── BadRequest (400)
├── Unauthorized (401)          WWW-Authenticate: Bearer
├── Forbidden (403)
├── NotFound (404)              the upstream does not know the model
├── UnsupportedMediaType (415)
├── TooManyStreams (429)        per-client stream limit; Retry-After
├── ClientClosed (499)          the client left before the status was sent
├── UpstreamError (502)         Ollama answered with an error or broke its protocol
├── Unavailable (503)           Ollama unreachable; Retry-After
│   ├── StreamsFull (503)       the server's stream limit
│   └── StoreUnavailable (503)  the shared store (Redis/Valkey) does not answer
└── UpstreamTimeout (504)       Ollama went silent for too long

werkzeug's own 404, 405 and 413 are answered in the same shape: {"error": msg}, or
OpenAI's {"error": {"message", "type", "param", "code"}} on /v1/*.
"""

from __future__ import annotations

from flask import Flask, Response, current_app, request
from werkzeug import exceptions
from werkzeug.datastructures import WWWAuthenticate

from chatsvc import metrics
from chatsvc.framing import error_body


class ChatsvcError(exceptions.HTTPException):
    # No code of its own: each subclass takes werkzeug's (a bare one is a 500).
    # Set on errors that came from Ollama or from reaching it, for metrics.
    upstream_kind: str | None = None

    @property
    def message(self) -> str:
        return self.description or ""

    @property
    def status(self) -> int:
        return self.code or 500


class BadRequest(ChatsvcError, exceptions.BadRequest):
    pass


class Unauthorized(ChatsvcError, exceptions.Unauthorized):
    def __init__(self, description: str) -> None:
        super().__init__(description, www_authenticate=WWWAuthenticate("Bearer"))


class Forbidden(ChatsvcError, exceptions.Forbidden):
    pass


class NotFound(ChatsvcError, exceptions.NotFound):
    pass


class UnsupportedMediaType(ChatsvcError, exceptions.UnsupportedMediaType):
    pass


class TooManyStreams(ChatsvcError, exceptions.TooManyRequests):
    def __init__(self, description: str, retry_after: int = 1) -> None:
        super().__init__(description, retry_after=retry_after)


class ClientClosed(ChatsvcError):
    code = 499


class UpstreamError(ChatsvcError, exceptions.BadGateway):
    pass


class Unavailable(ChatsvcError, exceptions.ServiceUnavailable):
    def __init__(self, description: str, retry_after: int = 1) -> None:
        super().__init__(description, retry_after=retry_after)


class StreamsFull(Unavailable):
    pass


class StoreUnavailable(Unavailable):
    def __init__(self, description: str, retry_after: int = 5) -> None:
        super().__init__(description, retry_after=retry_after)


class UpstreamTimeout(ChatsvcError, exceptions.GatewayTimeout):
    pass


def upstream(cls: type[ChatsvcError], message: str, kind: str) -> ChatsvcError:
    """An error that came from Ollama or from reaching it, labelled for metrics."""
    error = cls(message)
    error.upstream_kind = kind
    return error


# What werkzeug's own errors say, in a sentence a user can act on.
_WERKZEUG_MESSAGES = {
    404: "there is no route {path}",
    405: "{method} is not allowed on {path}",
    413: "the request body is larger than CHATSVC_MAX_BODY_BYTES allows",
}


def message_of(error: exceptions.HTTPException) -> str:
    if isinstance(error, ChatsvcError):
        return error.message
    template = _WERKZEUG_MESSAGES.get(error.code or 500)
    if template is None:
        return error.description or error.name
    return template.format(path=request.path, method=request.method)


def count(error: exceptions.HTTPException) -> None:
    """Count an error that came from Ollama or from reaching it."""
    if isinstance(error, ChatsvcError) and error.upstream_kind is not None:
        metrics.UPSTREAM_ERRORS.labels(error.upstream_kind).inc()


def _handle(error: exceptions.HTTPException) -> Response:
    status = error.code or 500
    count(error)
    response = Response(
        error_body(message_of(error), status, request.path.startswith("/v1/")),
        status=status,
        content_type="application/json; charset=utf-8",
    )
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _unexpected(error: Exception) -> Response:
    current_app.logger.exception("unexpected error", exc_info=error)
    return _handle(ChatsvcError("internal error; see the server log"))


def init_app(app: Flask) -> None:
    app.register_error_handler(exceptions.HTTPException, _handle)
    app.register_error_handler(Exception, _unexpected)
