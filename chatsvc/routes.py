"""The views: the page, the streamed chat/generate relay, pass-through and health."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    render_template,
    request,
    stream_with_context,
)
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wrappers import Response as WerkzeugResponse

from chatsvc import metrics, security, validation
from chatsvc.errors import (
    BadRequest,
    ChatsvcError,
    UnsupportedMediaType,
    UpstreamTimeout,
)
from chatsvc.framing import MEDIA_TYPES, Framer, error_body, negotiate
from chatsvc.upstream import CANCELLED, SHUTDOWN, Stream, Upstream

bp = Blueprint("chatsvc", __name__)
log = logging.getLogger("chatsvc.access")

STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "X-Content-Type-Options": "nosniff",
}
_REQUEST_ID = re.compile(r"^[\w.:@/+=-]{1,128}$")


@dataclass
class State:
    """What the views share within one process; built once by create_app."""

    config: dict[str, Any]
    upstream: Upstream
    slots: security.Slots


def state() -> State:
    return current_app.extensions["chatsvc"]  # type: ignore[no-any-return]


# -- the page and health -------------------------------------------------------


# The page runs only its own files and talks only to chatsvc, so that nothing a
# model or a user writes could ever run as script, even if it became markup.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@bp.get("/")
def index() -> Response:
    response = Response(render_template("index.html"), mimetype="text/html")
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response


@bp.get("/favicon.ico")
def favicon() -> Response:
    return current_app.send_static_file("favicon.svg")  # browsers ask on every load


@bp.get("/healthz")
def healthz() -> Response:
    return _json({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    version = state().upstream.request("GET", "/api/version", timeout=5.0)
    return _json({"status": "ready", "ollama": version.get("version")})


@bp.get("/metrics")
def metrics_view() -> Response:
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)


# -- pass-through --------------------------------------------------------------


@bp.get("/api/version")
def version() -> Response:
    return _json(state().upstream.request("GET", "/api/version"))


@bp.get("/api/tags")
def tags() -> Response:
    payload = state().upstream.request("GET", "/api/tags")
    return _json(security.filter_models(payload, state().config["CHATSVC_MODELS"]))


@bp.get("/api/ps")
def ps() -> Response:
    payload = state().upstream.request("GET", "/api/ps")
    return _json(security.filter_models(payload, state().config["CHATSVC_MODELS"]))


@bp.post("/api/show")
def show() -> Response:
    config = state().config
    body = validation.show_request(_body(), config["CHATSVC_DEFAULT_MODEL"])
    security.check_model(body["model"], config["CHATSVC_MODELS"])
    return _json(state().upstream.request("POST", "/api/show", body))


# -- chat and generate -----------------------------------------------------------


@bp.post("/api/chat")
def chat() -> Response:
    return _generation("chat", validation.chat_request)


@bp.post("/api/generate")
def generate() -> Response:
    return _generation("generate", validation.generate_request)


def _generation(
    route: str, check: Callable[[dict[str, Any], str | None], dict[str, Any]]
) -> Response:
    shared = state()
    config = shared.config
    try:
        fmt = negotiate(request.args.get("format"), request.headers.get("Accept"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    body = check(_body(), config["CHATSVC_DEFAULT_MODEL"])
    security.check_model(body["model"], config["CHATSVC_MODELS"])
    g.model = body["model"]
    path = f"/api/{route}"
    if not validation.wants_stream(body):
        return _json(shared.upstream.request("POST", path, body))

    client = g.get("api_key") or _client_address()
    shared.slots.acquire(client)
    try:
        stream = shared.upstream.stream(path, body)
    except BaseException:
        shared.slots.release(client)
        raise
    run = _Run(
        route=path,
        model=body["model"],
        client=client,
        stream=stream,
        shared=shared,
        request_id=g.request_id,
        started=g.started,
    )
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        run.unwatch = shared.upstream.watch(sock, stream)
    try:
        # Ollama holds its headers until the first line is ready; waiting one
        # heartbeat for it lets an early failure keep its real status.
        first = stream.get(config["CHATSVC_HEARTBEAT_S"])
        if isinstance(first, ChatsvcError):
            raise first
        if first == CANCELLED:
            raise ChatsvcError("the client closed the request", status=499)
    except BaseException:
        run.close()
        raise
    # The status is now committed: from here on errors go in-band.
    g.streaming = True
    metrics.STREAMS_OPEN.inc()
    framer = Framer(fmt, route)
    relay = _relay(run, framer, first, config["CHATSVC_HEARTBEAT_S"])
    return Response(
        stream_with_context(relay),
        content_type=MEDIA_TYPES[fmt],
        headers=STREAM_HEADERS,
    )


@dataclass(eq=False)
class _Run:
    """One committed stream: what its end must release, log and count."""

    route: str
    model: str
    client: str
    stream: Stream
    shared: State
    request_id: str
    started: float
    unwatch: Callable[[], None] | None = None
    chunks: int = 0
    ttft: float | None = None
    outcome: str = "cancelled"
    closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.unwatch is not None:
            self.unwatch()
        self.shared.upstream.finish(self.stream)
        self.shared.slots.release(self.client)


def _relay(
    run: _Run, framer: Framer, first: Any, heartbeat_s: float
) -> Iterator[bytes]:
    events = [first]
    head = framer.start()
    try:
        while True:
            data, ended = _frame(run, framer, events)
            if head or data:
                yield head + data
                head = b""
                if run.ttft is None and run.chunks:
                    run.ttft = time.monotonic() - run.started
            if ended:
                return
            events = run.stream.get_many(heartbeat_s)
    finally:
        run.close()
        _end_stream(run)


def _frame(run: _Run, framer: Framer, events: list[Any]) -> tuple[bytes, bool]:
    """Frame a batch of events; True once the stream has ended."""
    out = []
    for event in events:
        if type(event) is dict:
            out.append(framer.chunk(event))
            run.chunks += 1
            if event.get("done"):
                run.outcome = "completed"
                return b"".join(out), True
        elif event is None:  # a heartbeat interval of upstream silence
            out.append(framer.heartbeat(run.model, time.time_ns()))
        elif isinstance(event, ChatsvcError):
            _count_upstream_error(event)
            timed_out = isinstance(event, UpstreamTimeout)
            run.outcome = "timeout" if timed_out else "upstream_error"
            out.append(framer.error(event.message))
            return b"".join(out), True
        elif event == SHUTDOWN:
            run.outcome = "shutdown"
            message = "chatsvc is restarting and ended this stream; send it again"
            out.append(framer.error(message))
            return b"".join(out), True
        else:  # CANCELLED: the client went away
            return b"".join(out), True
    return b"".join(out), False


def _end_stream(run: _Run) -> None:
    metrics.STREAMS_OPEN.dec()
    metrics.STREAMS.labels(run.outcome).inc()
    metrics.CHUNKS.labels(run.route).inc(run.chunks)
    if run.ttft is not None:
        metrics.TTFT.labels(run.route).observe(run.ttft)
    _log_line(
        request_id=run.request_id,
        route=run.route,
        model=run.model,
        status=200,
        ttfb_ms=None if run.ttft is None else round(run.ttft * 1000, 2),
        chunks=run.chunks,
        duration_ms=round((time.monotonic() - run.started) * 1000, 2),
        outcome=run.outcome,
    )


# -- request plumbing ----------------------------------------------------------


def _body() -> dict[str, Any]:
    if not request.is_json:
        raise UnsupportedMediaType(
            "send the body as JSON with the header Content-Type: application/json"
        )
    # get_data raises 413 from the Content-Length alone, before reading the body.
    data = request.get_data(cache=False)
    # Without a Content-Length (chunked), werkzeug stops reading at the limit and
    # says nothing: one more byte from the server's stream tells a longer body.
    limit = state().config["CHATSVC_MAX_BODY_BYTES"]
    if len(data) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return validation.parse_body(data)


def _client_address() -> str:
    peer = request.remote_addr or "unknown"
    # Behind a proxy on this machine (deploy/nginx.conf) every client arrives from
    # loopback: count the address the proxy saw, the last X-Forwarded-For entry.
    # Only a local peer is believed, as gunicorn's forwarded_allow_ips does.
    forwarded = request.headers.get("X-Forwarded-For", "").rsplit(",", 1)[-1].strip()
    if forwarded and _is_loopback(peer):
        return forwarded
    return peer


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _json(payload: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")),
        status=status,
        content_type="application/json; charset=utf-8",
    )


def _error_response(error: ChatsvcError) -> Response:
    response = Response(
        error_body(error.message),
        status=error.status,
        content_type="application/json; charset=utf-8",
    )
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _count_upstream_error(error: ChatsvcError) -> None:
    if error.upstream_kind is not None:
        metrics.UPSTREAM_ERRORS.labels(error.upstream_kind).inc()


@bp.before_app_request
def _begin() -> None:
    g.started = time.monotonic()
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
    keys = state().config["CHATSVC_API_KEYS"]
    if (
        keys
        and request.method != "OPTIONS"
        and (request.path.startswith("/api/") or request.path == "/metrics")
    ):
        g.api_key = security.check_key(request.headers.get("Authorization"), keys)


@bp.after_app_request
def _after(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    rule = request.url_rule.rule if request.url_rule else "unmatched"
    metrics.REQUESTS.labels(rule, str(response.status_code)).inc()
    if not g.get("streaming"):
        _log_line(
            request_id=g.get("request_id"),
            route=rule,
            model=g.get("model"),
            status=response.status_code,
            duration_ms=round((time.monotonic() - g.get("started", 0)) * 1000, 2),
        )
    return response


@bp.app_errorhandler(ChatsvcError)
def _chatsvc_error(error: ChatsvcError) -> Response:
    _count_upstream_error(error)
    return _error_response(error)


@bp.app_errorhandler(HTTPException)
def _http_error(error: HTTPException) -> WerkzeugResponse:
    response = error.get_response()
    message = {
        404: f"there is no route {request.path}",
        405: f"{request.method} is not allowed on {request.path}",
        413: "the request body is larger than CHATSVC_MAX_BODY_BYTES allows",
    }.get(error.code or 500, error.description or error.name)
    response.set_data(error_body(message))
    response.content_type = "application/json; charset=utf-8"
    return response


@bp.app_errorhandler(Exception)
def _unexpected(error: Exception) -> Response:
    current_app.logger.exception("unexpected error", exc_info=error)
    return _error_response(ChatsvcError("internal error; see the server log"))


def _log_line(**fields: Any) -> None:
    record = {"time": datetime.now(UTC).isoformat(timespec="milliseconds")}
    record.update((k, v) for k, v in fields.items() if v is not None)
    log.info(json.dumps(record))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
