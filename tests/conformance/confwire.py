"""One request to two servers, and every client-visible difference between the answers.

`values=True` (chatsvc against Ollama) also compares every value except timestamps,
durations and random ids; `values=False` (the simulator against Ollama) compares
statuses, headers, field names, their order and types, and error texts only, since
the simulator's text is its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

# Numbers measured during the run, printed at the end (bin/conformance's report).
MEASURED: dict[str, list[float]] = {}

# Keys whose values differ between two identical requests.
VOLATILE = {
    "created_at",
    "total_duration",
    "load_duration",
    "prompt_eval_duration",
    "eval_duration",
    "expires_at",
    "created",  # /v1: the answer's unix time
}
# /v1 answer ids are random 3-digit numbers (chatcmpl-417).
VOLATILE_PREFIXES = ("chatcmpl-", "cmpl-", "resp_", "msg_")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        """NDJSON: every line parsed; a blank line fails, as in ollama-python."""
        text = self.body.decode()
        assert text.endswith("\n"), f"stream does not end in a newline: {text[-80:]!r}"
        return [json.loads(line) for line in text[:-1].split("\n")]

    def events(self) -> list[Any]:
        """SSE: each event's data parsed (`[DONE]` kept as a string); comments and
        `event:` names are returned as ("comment", text) and ("event", name)."""
        out: list[Any] = []
        for block in self.body.decode().split("\n\n"):
            for line in block.split("\n"):
                if not line:
                    continue
                if line.startswith(":"):
                    out.append(("comment", line))
                elif line.startswith("event:"):
                    out.append(("event", line[6:].strip()))
                elif line.startswith("data:"):
                    data = line[5:].strip()
                    out.append(data if data == "[DONE]" else json.loads(data))
                else:
                    out.append(("line", line))
        return out


def call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 120,
) -> Answer:
    data = raw if raw is not None else None if body is None else json.dumps(body)
    sent = {"Content-Type": "application/json", **(headers or {})}
    resp = requests.request(
        method, base + path, data=data, headers=sent, timeout=timeout
    )
    return Answer(
        resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content
    )


def _volatile(key: str, value: Any) -> bool:
    return key in VOLATILE or (
        key == "id" and isinstance(value, str) and value.startswith(VOLATILE_PREFIXES)
    )


def _type(value: Any) -> str:
    return type(value).__name__


def differences(
    a: Any, b: Any, values: bool, path: str = "$", error: bool = False
) -> list[str]:
    """Ollama's value `a` against the other server's `b`, difference by difference."""
    if type(a) is not type(b):
        return [f"{path}: type {_type(a)} ({a!r:.60}) vs {_type(b)} ({b!r:.60})"]
    out: list[str] = []
    if isinstance(a, dict):
        missing = [k for k in a if k not in b]
        extra = [k for k in b if k not in a]
        if missing:
            out.append(f"{path}: missing keys {missing}")
        if extra:
            out.append(f"{path}: extra keys {extra}")
        common_a = [k for k in a if k in b]
        common_b = [k for k in b if k in a]
        if common_a != common_b:
            out.append(f"{path}: key order {common_a} vs {common_b}")
        for key in common_a:
            if values and _volatile(key, a[key]) and _volatile(key, b[key]):
                continue
            out += differences(
                a[key], b[key], values, f"{path}.{key}", error or key == "error"
            )
    elif isinstance(a, list):
        if values and len(a) != len(b):
            out.append(f"{path}: {len(a)} items vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            out += differences(x, y, values, f"{path}[{i}]", error)
    elif (values or error) and a != b:
        out.append(f"{path}: {a!r:.200} vs {b!r:.200}")
    return out


def shapes(items: list[Any]) -> list[Any]:
    """A stream reduced to its distinct consecutive shapes (for values=False)."""

    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return [(k, shape(v)) for k, v in value.items()]
        if isinstance(value, list):
            return [shape(value[0])] if value else []
        return _type(value)

    out: list[Any] = []
    for item in items:
        if not out or shape(out[-1]) != shape(item):
            out.append(item)
    return out


def is_heartbeat(item: Any) -> bool:
    """chatsvc's keep-alives (API.md): an SSE comment, or an NDJSON chunk that
    carries nothing (chat or generate), sent during upstream silence."""
    if isinstance(item, tuple):
        return item[0] == "comment"
    if not isinstance(item, dict) or item.get("done") is not False:
        return False
    rest = {k: v for k, v in item.items() if k not in ("model", "created_at", "done")}
    return rest in ({"message": {"role": "assistant", "content": ""}}, {"response": ""})


def _media(content_type: str | None) -> str | None:
    # Known divergence: "; charset=utf-8" on JSON. JSON is UTF-8 by definition
    # (RFC 8259 §8.1) and takes no charset parameter, and Ollama itself sends it
    # on some answers and not on others (ollama-wire.md §4.1, §9, §10.2).
    return content_type.split(";")[0].strip() if content_type else content_type


def answer_differences(
    direct: Answer, other: Answer, values: bool, kind: str = "json"
) -> list[str]:
    """kind: json (one object), ndjson, sse, text or empty."""
    out: list[str] = []
    if direct.status != other.status:
        out.append(f"status {direct.status} vs {other.status}")
    if _media(direct.content_type) != _media(other.content_type):
        out.append(f"content-type {direct.content_type!r} vs {other.content_type!r}")
    if kind in ("ndjson", "sse"):
        for name, answer in (("Ollama", direct), ("other", other)):
            if "content-length" in answer.headers:
                out.append(f"{name}: Content-Length on a stream")
    if direct.status != other.status or (
        _media(direct.content_type) != _media(other.content_type)
    ):
        # Different kinds of answer: show both bodies instead of a field diff.
        out.append(f"bodies {direct.body[:300]!r} vs {other.body[:300]!r}")
        return out
    if kind == "text" or kind == "empty":
        if (values or kind == "empty" or direct.status >= 400) and (
            direct.body != other.body
        ):
            out.append(f"body {direct.body[:300]!r} vs {other.body[:300]!r}")
        return out
    if kind == "json":
        return out + differences(direct.json(), other.json(), values)
    a = direct.lines() if kind == "ndjson" else direct.events()
    b = other.lines() if kind == "ndjson" else other.events()
    # Keep-alives are chatsvc's addition during silences; Ollama sends none.
    a = [item for item in a if not is_heartbeat(item)]
    b = [item for item in b if not is_heartbeat(item)]
    if not values:
        a, b = shapes(a), shapes(b)
    return out + differences(a, b, values, "$stream")


@dataclass
class Ollama:
    url: str
    log: Path | None  # None: someone else's Ollama, whose log we cannot read
    binary: str | None
    env: dict[str, str] = field(default_factory=dict)

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log else 0

    def log_since(self, offset: int) -> str:
        assert self.log is not None
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


@dataclass
class Model:
    name: str  # the tiny model, as installed
    prefix: str  # every model this run creates starts with it
    tokens_per_s: float  # measured at start, to size long generations


@dataclass
class Servers:
    ollama: str
    other: str  # chatsvc, or the simulator
    values: bool  # compare values too (chatsvc) or only the shape (simulator)
    model: Model

    def both(
        self, method: str, path: str, body: Any = None, **kw: Any
    ) -> tuple[Answer, Answer]:
        return call(self.ollama, method, path, body, **kw), call(
            self.other, method, path, body, **kw
        )

    def check_own_error(
        self, method: str, path: str, body: Any = None, names: str = "", **kw: Any
    ) -> tuple[Answer, Answer]:
        """A request chatsvc refuses itself: the same status and shape as Ollama's.

        Known divergence: the message is chatsvc's own sentence naming the field
        or the problem (API.md Errors: 400), not Go's decoder text.
        """
        direct, other = self.both(method, path, body, **kw)
        assert (direct.status, _media(direct.content_type)) == (
            other.status,
            _media(other.content_type),
        )
        assert direct.status == 400
        want, got = direct.json()["error"], other.json()["error"]
        assert list(direct.json()) == list(other.json()) == ["error"]
        assert type(want) is type(got)
        if isinstance(want, dict):  # OpenAI's shape: the same keys, in order
            assert list(want) == list(got)
        if self.values:  # chatsvc
            error = other.json()["error"]
            message = error["message"] if isinstance(error, dict) else error
            assert names in message, message
        return direct, other

    def check(
        self, method: str, path: str, body: Any = None, kind: str = "json", **kw: Any
    ) -> tuple[Answer, Answer]:
        """Send one request to both; fail with every difference found."""
        direct, other = self.both(method, path, body, **kw)
        diffs = answer_differences(direct, other, self.values, kind)
        assert not diffs, f"{method} {path}: Ollama vs other\n" + "\n".join(diffs)
        return direct, other
