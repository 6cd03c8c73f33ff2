"""Who may use chatsvc: API keys, admin keys, the allowlist, client identity, CORS."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_cors import CORS

from chatsvc.errors import Forbidden, Unauthorized

_NEEDS_KEY = ("/api/", "/v1/")


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


def _is_guarded(path: str) -> bool:
    return path.startswith(_NEEDS_KEY) or path == "/metrics"


def _authenticate() -> None:
    """With API keys set, every API route and /metrics needs one (not preflights)."""
    config = current_app.config["CHATSVC"]
    keys = config["CHATSVC_API_KEYS"]
    if keys and request.method != "OPTIONS" and _is_guarded(request.path):
        g.api_key = check_key(
            request.headers.get("Authorization"),
            keys + (config["CHATSVC_ADMIN_KEYS"] or ()),
        )


def check_admin() -> None:
    """Model management: open with no keys at all, else admin keys only."""
    config = current_app.config["CHATSVC"]
    admins = config["CHATSVC_ADMIN_KEYS"] or ()
    if not (config["CHATSVC_API_KEYS"] or admins):
        return
    key = g.get("api_key") or check_key(request.headers.get("Authorization"), admins)
    if not any(hmac.compare_digest(key.encode(), a.encode()) for a in admins):
        raise Forbidden("managing models needs an admin key (CHATSVC_ADMIN_KEYS)")


def client_id() -> str:
    """Whose stream this is: the API key, else the client's address."""
    key: str | None = g.get("api_key")
    if key:
        return key
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


def check_models(body: dict[str, Any], allowed: tuple[str, ...] | None) -> None:
    """Every model a request names (copy names two) must be on the allowlist."""
    for name in ("model", "source", "destination"):
        if name in body:
            check_model(body[name], allowed)


def filter_models(payload: Any, allowed: tuple[str, ...] | None) -> Any:
    """Drop models outside the allowlist from /api/tags, /api/ps or /v1/models."""
    if not allowed or not isinstance(payload, dict):
        return payload
    for key in ("models", "data"):  # Ollama's lists, and OpenAI's
        if isinstance(payload.get(key), list):
            payload[key] = [
                m
                for m in payload[key]
                if isinstance(m, dict)
                and is_allowed(m.get("name") or m.get("model") or m.get("id"), allowed)
            ]
    return payload


def init_app(app: Flask) -> None:
    app.before_request(_authenticate)
    origins = app.config["CHATSVC"]["CHATSVC_CORS_ORIGINS"]
    if origins:
        _init_cors(app, origins)


def _init_cors(app: Flask, origins: tuple[str, ...]) -> None:
    """Answer preflights and allow the listed origins; never credentials."""
    wildcard = "*" in origins
    CORS(
        app,
        resources={r"/api/*": {}, r"/v1/*": {}, r"/metrics": {}},
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
    if _is_guarded(request.path):
        response.vary.add("Origin")
    return response
