"""Who may use chatsvc and how much: API keys, the model allowlist, stream slots."""

from __future__ import annotations

import hmac
import threading
from collections import Counter
from typing import Any

from flask import Flask
from flask_cors import CORS

from chatsvc.errors import Forbidden, StreamsFull, TooManyStreams, Unauthorized


def check_key(authorization: str | None, keys: tuple[str, ...]) -> str:
    """Return the caller's key, or raise 401 unless it is one of keys."""
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("this server needs an API key: send Authorization: Bearer <key>")
    # Compare against every key, in constant time, so timing tells nothing.
    matched = False
    for candidate in keys:
        matched |= hmac.compare_digest(key.encode(), candidate.encode())
    if not matched:
        raise Unauthorized("the API key is not valid")
    return key


def check_model(model: str, allowed: tuple[str, ...] | None) -> None:
    if allowed and model not in allowed:
        raise Forbidden(
            f"model {model!r} is not available here; choose one of: {', '.join(allowed)}"
        )


def filter_models(payload: Any, allowed: tuple[str, ...] | None) -> Any:
    """Drop models outside the allowlist from a /api/tags or /api/ps answer."""
    if not allowed or not isinstance(payload, dict):
        return payload
    models = payload.get("models") or []
    payload["models"] = [
        m for m in models
        if isinstance(m, dict) and (m.get("name") in allowed or m.get("model") in allowed)
    ]
    return payload


class Slots:
    """Counts open streams per process and per client, and refuses past the limits."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self._open: Counter[str] = Counter()
        self._total = 0
        self._lock = threading.Lock()

    def acquire(self, client: str) -> None:
        with self._lock:
            if self._total >= self.max_total:
                raise StreamsFull(
                    f"the server has {self.max_total} streams open; try again shortly"
                )
            if self._open[client] >= self.max_per_client:
                raise TooManyStreams(
                    f"you already have {self.max_per_client} streams open; "
                    "wait for one to finish"
                )
            self._open[client] += 1
            self._total += 1

    def release(self, client: str) -> None:
        with self._lock:
            self._total -= 1
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]

    @property
    def total(self) -> int:
        return self._total


def init_cors(app: Flask, origins: tuple[str, ...]) -> None:
    """Answer preflights and allow the listed origins; never credentials."""
    CORS(
        app,
        resources={r"/api/*": {}, r"/metrics": {}},
        origins="*" if "*" in origins else list(origins),
        allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        expose_headers=["X-Request-ID", "Retry-After"],
        max_age=600,
    )
