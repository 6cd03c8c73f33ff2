"""Who may use chatsvc: API keys, the model allowlist, CORS."""

from __future__ import annotations

import hmac
from typing import Any

from flask import Flask, Response, request
from flask_cors import CORS

from chatsvc.errors import Forbidden, Unauthorized


def check_key(authorization: str | None, keys: tuple[str, ...]) -> str:
    """Return the caller's key, or raise 401 unless it is one of keys."""
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized(
            "this server needs an API key: send Authorization: Bearer <key>"
        )
    # Compare against every key, in constant time, so timing tells nothing.
    matched = False
    for candidate in keys:
        matched |= hmac.compare_digest(key.encode(), candidate.encode())
    if not matched:
        raise Unauthorized("the API key is not valid")
    return key


def _tagged(name: str) -> str:
    # Ollama reads "llama3.2" as "llama3.2:latest"; so must the allowlist.
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def is_allowed(model: Any, allowed: tuple[str, ...] | None) -> bool:
    if not allowed:
        return True
    return isinstance(model, str) and _tagged(model) in {_tagged(a) for a in allowed}


def check_model(model: str, allowed: tuple[str, ...] | None) -> None:
    if not is_allowed(model, allowed):
        choices = ", ".join(allowed or ())
        raise Forbidden(
            f"model {model!r} is not available here; choose one of: {choices}"
        )


def filter_models(payload: Any, allowed: tuple[str, ...] | None) -> Any:
    """Drop models outside the allowlist from a /api/tags or /api/ps answer."""
    if not allowed or not isinstance(payload, dict):
        return payload
    models = payload.get("models") or []
    payload["models"] = [
        m
        for m in models
        if isinstance(m, dict) and is_allowed(m.get("name") or m.get("model"), allowed)
    ]
    return payload


def init_cors(app: Flask, origins: tuple[str, ...]) -> None:
    """Answer preflights and allow the listed origins; never credentials."""
    wildcard = "*" in origins
    CORS(
        app,
        resources={r"/api/*": {}, r"/metrics": {}},
        origins="*" if wildcard else list(origins),
        # "*" goes out as "*": flask-cors would otherwise echo every Origin back.
        send_wildcard=wildcard,
        allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        expose_headers=["X-Request-ID", "Retry-After"],
        max_age=600,
    )
    if not wildcard:
        app.after_request(_vary_on_origin)


def _vary_on_origin(response: Response) -> Response:
    # Only listed origins get Access-Control-Allow-Origin, so every answer depends
    # on Origin, even with one origin listed or none matching (where flask-cors
    # leaves Vary out): a shared cache must not hand one origin's answer to another.
    if request.path.startswith("/api/") or request.path == "/metrics":
        response.vary.add("Origin")
    return response
