"""Pure request checks: JSON bodies in, Ollama bodies or field-named 400s out."""

from __future__ import annotations

import binascii
import json
import math
import re
from base64 import b64decode
from typing import Any

from chatsvc.config import go_duration
from chatsvc.errors import BadRequest

THINK_LEVELS = ("low", "medium", "high", "max")
_ROLES_HINT = "a role such as user, assistant, system or tool"


def parse_body(data: bytes) -> dict[str, Any]:
    """Decode a request body that must be one JSON object."""
    if not data.strip():
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        body = json.loads(data, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise BadRequest("the request body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except ValueError:  # the one left: Python's limit on an int's digits
        raise BadRequest(
            f"the request body has a number with more than {MAX_DIGITS} digits"
        ) from None
    except RecursionError:
        raise _too_deep() from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, not {_kind(body)}")
    _check_values(body)
    if _SURROGATE_ESCAPE.search(data):
        # json.loads keeps an unpaired \ud83d, which no UTF-8 encoder (so no
        # request to Ollama) can carry; Go's decoder, Ollama's, reads it as U+FFFD.
        body = {_scrub(key): _scrub(item) for key, item in body.items()}
    return body


# Deeper than any real request (a JSON schema in "format", tool parameters), and
# shallow enough that nothing downstream, this module's own _scrub included,
# recurses anywhere near Python's limit.
MAX_DEPTH = 100
# Python's own limit for turning digits into an int (sys.get_int_max_str_digits).
MAX_DIGITS = 4300


def _too_deep() -> BadRequest:
    return BadRequest(f"the request body is nested more than {MAX_DEPTH} levels deep")


def _check_values(body: dict[str, Any]) -> None:
    """Depth, and numbers too large for a float (1e999 reads as inf)."""
    # A stack instead of recursion: the point is to stay far from the limit.
    pending: list[tuple[dict[str, Any] | list[Any], int]] = [(body, 1)]
    while pending:
        container, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise _too_deep()
        for item in container.values() if type(container) is dict else container:
            if type(item) is dict or type(item) is list:
                pending.append((item, depth + 1))
            elif type(item) is float and not math.isfinite(item):
                # It would reach Ollama as Infinity, which is not JSON.
                raise BadRequest("the request body has a number too large to use")


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_scrub(item) for item in value]
    if isinstance(value, dict):
        return {_scrub(key): _scrub(item) for key, item in value.items()}
    return value


def chat_request(body: dict[str, Any], default_model: str | None) -> dict[str, Any]:
    """Check a /api/chat body; return it with the model filled in."""
    _common(body, default_model)
    messages = body.get("messages")
    if messages is not None:
        if not isinstance(messages, list):
            raise _wrong("messages", "a list of message objects", messages)
        for index, message in enumerate(messages):
            _message(f"messages[{index}]", message)
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _wrong("tools", "a list of tool objects", tools)
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _wrong(f"tools[{index}]", "an object", tool)
    return body


def generate_request(body: dict[str, Any], default_model: str | None) -> dict[str, Any]:
    """Check a /api/generate body; return it with the model filled in."""
    _common(body, default_model)
    for name in ("prompt", "suffix", "system", "template"):
        _optional(body, name, str, "a string")
    _optional(body, "raw", bool, "true or false")
    context = body.get("context")
    if isinstance(context, list):
        for index, token in enumerate(context):
            if not _is_int(token):
                raise _wrong(f"context[{index}]", "a whole number", token)
    elif context is not None:
        raise _wrong("context", "a list of whole numbers", context)
    _images("images", body.get("images"))
    return body


def show_request(body: dict[str, Any], default_model: str | None) -> dict[str, Any]:
    """Check a /api/show body."""
    _model(_legacy_name(body), default_model)
    _optional(body, "verbose", bool, "true or false")
    return body


def embed_request(body: dict[str, Any], default_model: str | None) -> dict[str, Any]:
    """Check a /api/embed body: input is a string or a list of strings."""
    _model(body, default_model)
    _keep_alive(body)
    _optional(body, "options", dict, "an object")
    _optional(body, "truncate", bool, "true or false")
    dimensions = body.get("dimensions")
    if dimensions is not None and not _is_int(dimensions):
        raise _wrong("dimensions", "a whole number", dimensions)
    given = body.get("input")
    if isinstance(given, list):
        for index, item in enumerate(given):
            if not isinstance(item, str):
                raise _wrong(f"input[{index}]", "a string", item)
    elif given is not None and not isinstance(given, str):
        raise _wrong("input", "a string or a list of strings", given)
    return body


def embeddings_request(
    body: dict[str, Any], default_model: str | None
) -> dict[str, Any]:
    """Check a legacy /api/embeddings body."""
    _model(body, default_model)
    _keep_alive(body)
    _optional(body, "options", dict, "an object")
    _optional(body, "prompt", str, "a string")
    return body


def pull_request(body: dict[str, Any], default_model: str | None) -> dict[str, Any]:
    """Check a /api/pull or /api/push body (no default model: name it)."""
    _model(_legacy_name(body), None)
    _optional(body, "stream", bool, "true or false")
    _optional(body, "insecure", bool, "true or false")
    return body


def create_request(body: dict[str, Any], default_model: str | None) -> dict[str, Any]:
    """Check a /api/create body; Ollama checks what it is made from."""
    _model(_legacy_name(body), None)
    _optional(body, "stream", bool, "true or false")
    _optional(body, "from", str, "a model name")
    _optional(body, "files", dict, "an object of file names and digests")
    return body


def copy_request(body: dict[str, Any], default_model: str | None) -> dict[str, Any]:
    """Check a /api/copy body: both names are required strings."""
    for name in ("source", "destination"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise _wrong(name, "a model name", body.get(name))
    return body


def delete_request(body: dict[str, Any], default_model: str | None) -> dict[str, Any]:
    """Check a /api/delete body (no default model: name it)."""
    _model(_legacy_name(body), None)
    return body


def openai_request(body: dict[str, Any], default_model: str | None) -> dict[str, Any]:
    """Check what chatsvc itself reads of a /v1 body; Ollama checks the rest."""
    _model(body, default_model)
    _optional(body, "stream", bool, "true or false")
    return body


def cap_keep_alive(body: dict[str, Any], cap_s: float | None) -> None:
    """Lower a longer or "forever" (negative) keep_alive to the operator's cap."""
    value = body.get("keep_alive")
    if cap_s is None or value is None:
        return
    try:
        seconds = go_duration(value) if isinstance(value, str) else float(value)
    except ValueError:
        return  # Ollama answers a bad duration with its own 400
    if seconds < 0 or seconds > cap_s:
        body["keep_alive"] = int(cap_s) if cap_s.is_integer() else cap_s


def _legacy_name(body: dict[str, Any]) -> dict[str, Any]:
    # Ollama's CLI sends the old key "name" with "model": "".
    if not body.get("model") and isinstance(body.get("name"), str):
        body["model"] = body.pop("name")
    return body


def _common(body: dict[str, Any], default_model: str | None) -> None:
    _model(body, default_model)
    _optional(body, "stream", bool, "true or false")
    _optional(body, "options", dict, "an object")
    _optional(body, "logprobs", bool, "true or false")
    for name in ("truncate", "shift"):
        _optional(body, name, bool, "true or false")
    fmt = body.get("format")
    if fmt is not None and fmt not in ("", "json") and not isinstance(fmt, dict):
        raise _wrong("format", '"json" or a JSON schema object', fmt)
    _keep_alive(body)
    think = body.get("think")
    if think is not None and not isinstance(think, bool) and think not in THINK_LEVELS:
        raise _wrong("think", 'true, false, "low", "medium", "high" or "max"', think)
    top = body.get("top_logprobs")
    if top is not None and not (_is_int(top) and 0 <= top <= 20):
        raise _wrong("top_logprobs", "a whole number from 0 to 20", top)


def _keep_alive(body: dict[str, Any]) -> None:
    keep_alive = body.get("keep_alive")
    if keep_alive is not None and not (
        isinstance(keep_alive, str) or _is_number(keep_alive)
    ):
        raise _wrong(
            "keep_alive", 'a number of seconds or a duration like "5m"', keep_alive
        )


def _model(body: dict[str, Any], default_model: str | None) -> None:
    model = body.get("model")
    if model is None or model == "":
        if not default_model:
            raise BadRequest("model is required: name the model to use")
        body["model"] = default_model
    elif not isinstance(model, str):
        raise _wrong("model", "a string", model)


def _message(where: str, message: Any) -> None:
    if not isinstance(message, dict):
        raise _wrong(where, "an object with a role and content", message)
    role = message.get("role")
    if not isinstance(role, str) or not role:
        if role is None:
            raise BadRequest(f"{where}.role is required: {_ROLES_HINT}")
        raise _wrong(f"{where}.role", _ROLES_HINT, role)
    for name in ("content", "thinking", "tool_name", "tool_call_id"):
        value = message.get(name)
        if value is not None and not isinstance(value, str):
            raise _wrong(f"{where}.{name}", "a string", value)
    tool_calls = message.get("tool_calls")
    if tool_calls is not None and not isinstance(tool_calls, list):
        raise _wrong(f"{where}.tool_calls", "a list", tool_calls)
    _images(f"{where}.images", message.get("images"))


def _images(where: str, images: Any) -> None:
    if images is None:
        return
    if not isinstance(images, list):
        raise _wrong(where, "a list of base64 strings", images)
    for index, image in enumerate(images):
        if not isinstance(image, str) or not _is_base64(image):
            raise BadRequest(f"{where}[{index}] must be base64-encoded image data")


def _is_base64(text: str) -> bool:
    try:
        b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return bool(text)


def _optional(body: dict[str, Any], name: str, kind: type, expected: str) -> None:
    value = body.get(name)
    if value is not None and (
        not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))
    ):
        raise _wrong(name, expected, value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _wrong(field: str, expected: str, value: Any) -> BadRequest:
    return BadRequest(f"{field} must be {expected}, not {_kind(value)}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "a string"
    if _is_number(value):
        return "a number"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _reject_constant(name: str) -> None:
    raise BadRequest(f"the request body is not valid JSON: {name} is not a number")
