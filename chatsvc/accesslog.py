"""Request ids, request counts and one JSON log line per request."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request

from chatsvc import metrics

log = logging.getLogger("chatsvc.access")
_REQUEST_ID = re.compile(r"^[\w.:@/+=-]{1,128}$")


def line(**fields: Any) -> None:
    record = {"time": datetime.now(UTC).isoformat(timespec="milliseconds")}
    record.update((k, v) for k, v in fields.items() if v is not None)
    log.info(json.dumps(record))


def json_response(
    payload: Any, content_type: str = "application/json; charset=utf-8"
) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")), content_type=content_type
    )


def _begin() -> None:
    g.started = time.monotonic()
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex


def _after(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    rule = request.url_rule.rule if request.url_rule else "unmatched"
    metrics.REQUESTS.labels(rule, str(response.status_code)).inc()
    if not g.get("streaming"):  # a stream logs its own line at its end
        line(
            request_id=g.get("request_id"),
            route=rule,
            model=g.get("model"),
            status=response.status_code,
            host=g.get("host"),
            duration_ms=round((time.monotonic() - g.get("started", 0)) * 1000, 2),
        )
    return response


def init_app(app: Flask) -> None:
    app.before_request(_begin)
    app.after_request(_after)
    if not log.handlers:
        # One JSON object per line on stderr, next to gunicorn's own log.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
