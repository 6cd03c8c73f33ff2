"""The environment variables chatsvc reads, parsed and validated once at start."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A variable has a value chatsvc cannot run with; the message names it."""


def _words(value: str) -> tuple[str, ...]:
    return tuple(word.strip() for word in value.split(",") if word.strip())


def _positive_int(value: str) -> int:
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError("must be a whole number of at least 1")
    return int(value)


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not 0 < number < float("inf"):
        raise ValueError("must be a number of seconds greater than 0")
    return number


def _url(value: str) -> str:
    if not value.strip() or any(c.isspace() for c in value.strip()):
        raise ValueError("must be a host, host:port or URL")
    return value.strip()


def _optional(value: str) -> str | None:
    return value.strip() or None


# (variable, default, parser): API.md's table. A default of None means unset.
VARIABLES: tuple[tuple[str, str | None, Callable[[str], Any]], ...] = (
    ("OLLAMA_HOST", "http://127.0.0.1:11434", _url),
    ("CHATSVC_API_KEYS", None, _words),
    ("CHATSVC_MODELS", None, _words),
    ("CHATSVC_DEFAULT_MODEL", None, _optional),
    ("CHATSVC_CORS_ORIGINS", None, _words),
    ("CHATSVC_MAX_BODY_BYTES", "1048576", _positive_int),
    ("CHATSVC_MAX_STREAMS", "256", _positive_int),
    ("CHATSVC_MAX_STREAMS_PER_CLIENT", "8", _positive_int),
    ("CHATSVC_HEARTBEAT_S", "10", _positive_float),
    ("CHATSVC_UPSTREAM_TIMEOUT_S", "300", _positive_float),
    # gunicorn's graceful_timeout, which takes whole seconds.
    ("CHATSVC_GRACEFUL_TIMEOUT_S", "30", _positive_int),
    ("CHATSVC_CLIENT_TIMEOUT_S", "30", _positive_float),
)


def load(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return {variable: parsed value}; raise ConfigError naming the bad variable."""
    environ = os.environ if environ is None else environ
    config: dict[str, Any] = {}
    for name, default, parse in VARIABLES:
        raw = environ.get(name, default)
        if raw is None:
            config[name] = None
            continue
        try:
            config[name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r} is not valid: {exc}") from None
    _check(config)
    return config


def _check(config: dict[str, Any]) -> None:
    models = config["CHATSVC_MODELS"]
    default = config["CHATSVC_DEFAULT_MODEL"]
    if models and default and default not in models:
        raise ConfigError(f"CHATSVC_DEFAULT_MODEL={default!r} is not in CHATSVC_MODELS")
    if config["CHATSVC_API_KEYS"] == ():
        raise ConfigError("CHATSVC_API_KEYS is set but holds no key")
