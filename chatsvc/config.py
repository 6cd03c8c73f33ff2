"""The environment variables chatsvc reads, parsed and validated once at start."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from redis.connection import parse_url


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


@dataclass(frozen=True)
class HostEntry:
    """One Ollama host of OLLAMA_HOST: its URL, its name, its `parallel`."""

    url: str  # as the ollama client takes it, without ?parallel
    name: str  # host:port, for messages, metrics and /readyz
    parallel: int | None


def parse_hosts(value: str) -> tuple[HostEntry, ...]:
    """OLLAMA_HOST's comma-separated hosts, each with an optional ?parallel=N."""
    from ollama._client import _parse_host  # the client's own reading of a host

    entries: list[HostEntry] = []
    for raw in value.split(","):
        text = _url(raw)
        base, _, query = text.partition("?")
        parallel = None
        if query:
            key, _, number = query.partition("=")
            if key != "parallel" or "&" in number:
                raise ValueError(f"{text!r}: the only option is ?parallel=N")
            parallel = _positive_int(number)
        try:
            url = _parse_host(base)
        except ValueError as exc:
            raise ValueError(f"{text!r} does not parse: {exc}") from None
        name = urlsplit(url).netloc
        if name in (entry.name for entry in entries):
            raise ValueError(f"{name} is listed twice")
        entries.append(HostEntry(url, name, parallel))
    return tuple(entries)


def _hosts(value: str) -> str:
    parse_hosts(value)
    return value.strip()


_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0}
_UNIT_S.update(m=60.0, h=3600.0)


def go_duration(text: str) -> float:
    """Seconds in a Go duration such as "5m", "1h30m" or "-1s" (Ollama's syntax)."""
    sign = -1.0 if text.startswith("-") else 1.0
    rest = text[1:] if text[:1] in "+-" else text
    if rest == "0":
        return 0.0
    seconds, at = 0.0, 0
    for part in _DURATION_PART.finditer(rest):
        if part.start() != at:
            break
        seconds += float(part[1]) * _UNIT_S[part[2]]
        at = part.end()
    if not rest or at != len(rest):
        raise ValueError(f"{text!r} is not a duration")
    return sign * seconds


def _keep_alive_cap(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = go_duration(value.strip())
        except ValueError:
            seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ValueError('must be seconds, or a duration such as "30m", of 0 or more')
    return seconds


def _store_url(value: str) -> str | None:
    url = value.strip()
    if not url:
        return None
    # redis-py's own parser: what it accepts here is what the workers connect to.
    parsed = parse_url(url)  # type: ignore[no-untyped-call]
    if url.startswith("unix:") and not parsed.get("path"):
        raise ValueError("a unix:// URL needs the socket's path")
    return url


def _optional(value: str) -> str | None:
    return value.strip() or None


def _ca_file(value: str) -> str | None:
    path = value.strip()
    if path:
        try:  # what an https Ollama's certificate is then checked against
            ssl.create_default_context(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load it as PEM certificates: {exc}") from None
    return path or None


# (variable, default, parser): API.md's table. A default of None means unset.
VARIABLES: tuple[tuple[str, str | None, Callable[[str], Any]], ...] = (
    ("OLLAMA_HOST", "http://127.0.0.1:11434", _hosts),
    ("CHATSVC_API_KEYS", None, _words),
    ("CHATSVC_ADMIN_KEYS", None, _words),
    ("CHATSVC_MODELS", None, _words),
    ("CHATSVC_DEFAULT_MODEL", None, _optional),
    ("CHATSVC_CORS_ORIGINS", None, _words),
    ("CHATSVC_MAX_BODY_BYTES", "1048576", _positive_int),
    ("CHATSVC_MAX_STREAMS", "256", _positive_int),
    ("CHATSVC_MAX_STREAMS_PER_CLIENT", "8", _positive_int),
    ("CHATSVC_MAX_QUEUE", "256", _positive_int),
    ("CHATSVC_MAX_KEEP_ALIVE", None, _keep_alive_cap),
    ("CHATSVC_HEARTBEAT_S", "10", _positive_float),
    ("CHATSVC_UPSTREAM_TIMEOUT_S", "300", _positive_float),
    ("CHATSVC_DISCOVERY_S", "30", _positive_float),
    ("CHATSVC_PROBE_S", "5", _positive_float),
    ("CHATSVC_REDIS_URL", None, _store_url),
    ("CHATSVC_LEASE_S", "30", _positive_float),
    ("CHATSVC_RESUME_GRACE_S", "30", _positive_float),
    ("CHATSVC_RESUME_TTL_S", "300", _positive_float),
    # gunicorn's graceful_timeout, which takes whole seconds.
    ("CHATSVC_GRACEFUL_TIMEOUT_S", "30", _positive_int),
    ("CHATSVC_CLIENT_TIMEOUT_S", "30", _positive_float),
    # OpenSSL's variable, as curl and httpx read it: the CAs for an https Ollama.
    ("SSL_CERT_FILE", None, _ca_file),
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
    for name in ("CHATSVC_API_KEYS", "CHATSVC_ADMIN_KEYS"):
        if config[name] == ():
            raise ConfigError(f"{name} is set but holds no key")
