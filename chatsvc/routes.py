"""The views: the page, health, and one short view per Ollama and OpenAI route."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    render_template,
    request,
)
from werkzeug.exceptions import RequestEntityTooLarge

from chatsvc import endpoints, hosts, metrics, relay, resume, security, validation
from chatsvc.accesslog import json_response
from chatsvc.endpoints import Endpoint
from chatsvc.errors import (
    BadRequest,
    Unavailable,
    UnsupportedMediaType,
    UpstreamTimeout,
)
from chatsvc.framing import negotiate
from chatsvc.relay import state
from chatsvc.upstream import Answer

bp = Blueprint("chatsvc", __name__)

# The page runs only its own files and talks only to chatsvc, so that nothing a
# model or a user writes could ever run as script, even if it became markup.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)


# -- the page, health and metrics ----------------------------------------------


@bp.get("/")
def index() -> Response:
    # Ollama's clients (the CLI's HEAD / heartbeat among them) expect Ollama's
    # answer here; a browser asks for HTML and gets the page.
    if "text/html" not in request.headers.get("Accept", ""):
        return Response("Ollama is running", content_type="text/plain; charset=utf-8")
    response = Response(render_template("index.html"), mimetype="text/html")
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response


@bp.get("/favicon.ico")
def favicon() -> Response:
    return current_app.send_static_file("favicon.svg")  # browsers ask on every load


@bp.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    shared = state()
    shared.store.check()
    if not shared.upstream.single:
        states = shared.upstream.states()
        if "up" in states.values() or "busy" in states.values():
            return json_response({"status": "ready", "hosts": states})
        # API.md's error shape, and each host's state beside it.
        message = f"no Ollama host is up ({', '.join(states)}); try again shortly"
        response = json_response({"error": message, "hosts": states})
        response.status_code = 503
        retry = int(shared.config["CHATSVC_PROBE_S"]) or 1
        response.headers["Retry-After"] = str(retry)
        return response
    try:
        version = shared.upstream.request("GET", "/api/version", timeout=5.0).json()
    except UpstreamTimeout:
        # Not ready is a 503 whatever the cause (API.md), a hung Ollama included.
        raise Unavailable(
            f"Ollama at {shared.upstream.host} did not answer within 5 s"
        ) from None
    return json_response({"status": "ready", "ollama": version.get("version")})


@bp.get("/metrics")
def metrics_view() -> Response:
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)


# -- Ollama's routes -------------------------------------------------------------


@bp.get("/api/version")
def version() -> Response:
    answers = state().upstream.each_up("GET", "/api/version")
    if len(answers) == 1:
        return _relay_answer(answers[0])
    lowest = hosts.lowest_version(str(a.json().get("version")) for a in answers)
    return json_response({"version": lowest})


@bp.get("/api/tags")
@bp.get("/api/ps")
@bp.get("/v1/models")
def model_list() -> Response:
    answers = state().upstream.each_up("GET", request.path)
    allowed = state().config["CHATSVC_MODELS"]
    if len(answers) == 1:
        answer = answers[0]
        if not allowed:
            return _relay_answer(answer)
        filtered = security.filter_models(answer.json(), allowed)
        return json_response(filtered, answer.content_type or "application/json")
    lists = [a.json() for a in answers]
    if request.path == "/v1/models":
        merged = hosts.merge(lists, "data", ("id", "created"))
    else:
        merged = hosts.merge(lists, "models", ("name", "model", "modified_at"))
    return json_response(security.filter_models(merged, allowed))


@bp.get("/v1/models/<path:model>")
def openai_model(model: str) -> Response:
    security.check_model(model, state().config["CHATSVC_MODELS"])
    return _relay_answer(state().upstream.request("GET", request.path))


@bp.post("/api/chat")
def chat() -> Response:
    return _call(endpoints.CHAT)


@bp.post("/api/generate")
def generate() -> Response:
    return _call(endpoints.GENERATE)


@bp.post("/api/embed")
def embed() -> Response:
    return _call(endpoints.EMBED)


@bp.post("/api/embeddings")
def embeddings() -> Response:
    return _call(endpoints.EMBEDDINGS)


@bp.post("/api/show")
def show() -> Response:
    return _call(endpoints.SHOW)


@bp.post("/api/pull")
def pull() -> Response:
    return _call(endpoints.PULL)


@bp.post("/api/push")
def push() -> Response:
    return _call(endpoints.PUSH)


@bp.post("/api/create")
def create() -> Response:
    return _call(endpoints.CREATE)


@bp.post("/api/copy")
def copy() -> Response:
    return _call(endpoints.COPY)


@bp.delete("/api/delete")
def delete() -> Response:
    return _call(endpoints.DELETE)


@bp.route("/api/blobs/<digest>", methods=["HEAD", "POST"])
def blob(digest: str) -> Response:
    security.check_admin()
    upstream = state().upstream.named(request.args.get("host"))
    if request.method == "HEAD":
        return _relay_answer(upstream.request("HEAD", request.path))
    # A model file may be many GiB: pass it on as it arrives, never whole, and
    # past CHATSVC_MAX_BODY_BYTES (which werkzeug's request.stream would apply).
    body = _pieces(request.environ["wsgi.input"])
    return _relay_answer(upstream.request("POST", request.path, content=body))


# -- OpenAI's routes, from Ollama's own /v1 layer --------------------------------


@bp.post("/v1/chat/completions")
def openai_chat() -> Response:
    return _call(endpoints.OPENAI_CHAT)


@bp.post("/v1/completions")
def openai_completions() -> Response:
    return _call(endpoints.OPENAI_COMPLETIONS)


@bp.post("/v1/responses")
def openai_responses() -> Response:
    return _call(endpoints.OPENAI_RESPONSES)


@bp.post("/v1/embeddings")
def openai_embeddings() -> Response:
    return _call(endpoints.OPENAI_EMBEDDINGS)


# -- resumable streams -----------------------------------------------------------


@bp.get("/api/streams/<stream_id>")
def stream_follow(stream_id: str) -> Response:
    return resume.follow(stream_id, _format)


@bp.delete("/api/streams/<stream_id>")
def stream_stop(stream_id: str) -> Response:
    resume.stop(stream_id)
    return Response(status=204)


# -- the one path every relayed call takes ---------------------------------------


def _call(endpoint: Endpoint) -> Response:
    """Check the body, then stream it, collect its progress, or relay one answer."""
    config = state().config
    fmt = "openai" if endpoint.openai else _format()
    body = endpoint.check(_body(), config["CHATSVC_DEFAULT_MODEL"])
    if endpoint.admin:
        security.check_admin()
    security.check_models(body, config["CHATSVC_MODELS"])
    if not endpoint.openai:  # Ollama's /v1 layer takes no keep_alive
        validation.cap_keep_alive(body, config["CHATSVC_MAX_KEEP_ALIVE"])
    host = request.args.get("host") if endpoint.path in hosts.ONE_HOST else None
    if endpoint.wants_stream(body):
        return relay.stream(endpoint, body, fmt, _recorder(endpoint), host)
    if endpoint.streams and endpoint.admin:
        return relay.collect(endpoint, body, host)
    return _relay_answer(state().upstream.request(request.method, endpoint.path, body))


def _recorder(endpoint: Endpoint) -> relay.Recorder | None:
    """resume.record for ?resumable=1, on the routes that may be resumed."""
    if request.args.get("resumable") not in ("1", "true"):
        return None
    if not endpoint.resumable:
        raise BadRequest(
            "resumable=1 works on /api/chat, /api/generate, /v1/chat/completions "
            "and /v1/completions"
        )
    return resume.record


def _format() -> str:
    try:
        return negotiate(request.args.get("format"), request.headers.get("Accept"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


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


def _pieces(stream: IO[bytes], size: int = 1 << 16) -> Iterator[bytes]:
    while piece := stream.read(size):
        yield piece


def _relay_answer(answer: Answer) -> Response:
    g.host = answer.host
    response = Response(answer.content, status=answer.status)
    if answer.content_type:
        response.headers["Content-Type"] = answer.content_type
    else:  # Ollama's empty answers (copy, delete, blobs) have none
        del response.headers["Content-Type"]
    return response


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
