"""Ollama's /v1/responses: its translation, ToResponse and ResponsesStreamConverter.

Stateless, as Ollama's: previous_response_id, store and tool_choice are ignored.
"""

from __future__ import annotations

import random
import time
from typing import Any

from .openai import (
    Writer,
    bind_body,
    go_float,
    json_line,
    think_of,
    tool_calls_of,
    unix,
)
from .wire import Reject, go_json, go_kind


class ResponsesWriter(Writer):
    """openai.ResponsesStreamConverter (Go maps, so keys sorted), or ToResponse."""

    def __init__(self, stream: bool, request: dict[str, Any]) -> None:
        self.stream = stream
        if stream:
            self.headers = (("Cache-Control", "no-cache"), ("Connection", "keep-alive"))
        self.request = request
        self.model = str(request.get("model", ""))
        self.response_id = f"resp_{random.randrange(999999)}"
        self.item_id = f"msg_{random.randrange(999999)}"
        self.sequence = 0
        self.started = False
        self.text = ""
        self.thinking = ""
        self.reasoning_id = ""
        self.output_index = 0
        self.items: list[dict[str, Any]] = []
        self.tool_calls_sent = False

    def encode(self, native: dict[str, Any]) -> list[bytes]:
        message = native.get("message") or {}
        if not self.stream:
            return json_line(self._whole(native, message))
        out: list[bytes] = []
        if not self.sequence:
            for kind in ("response.created", "response.in_progress"):
                out += self._event(
                    kind, response=self._response("in_progress", [], None)
                )
        thinking, content = message.get("thinking", ""), message.get("content", "")
        calls = tool_calls_of(message.get("tool_calls"))
        if thinking:
            out += self._thinking(thinking)
        if calls:
            out += self._finish_reasoning() + self._calls(calls)
            self.tool_calls_sent = True
        elif content and not self.tool_calls_sent:
            out += self._finish_reasoning() + self._text(content)
        if native.get("done"):
            out += self._finish_reasoning() + self._completed(native)
        return out

    def _event(self, kind: str, **data: Any) -> list[bytes]:
        data |= {"type": kind, "sequence_number": self.sequence}
        self.sequence += 1
        return [f"event: {kind}\ndata: ".encode() + go_json(data, True) + b"\n\n"]

    def _thinking(self, thinking: str) -> list[bytes]:
        out: list[bytes] = []
        if not self.reasoning_id:
            self.reasoning_id = f"rs_{random.randrange(999999)}"
            item = {"id": self.reasoning_id, "type": "reasoning", "summary": []}
            out += self._event(
                "response.output_item.added", output_index=self.output_index, item=item
            )
        self.thinking += thinking
        return out + self._event(
            "response.reasoning_summary_text.delta",
            item_id=self.reasoning_id,
            output_index=self.output_index,
            summary_index=0,
            delta=thinking,
        )

    def _finish_reasoning(self) -> list[bytes]:
        if not self.reasoning_id:
            return []
        item = {
            "id": self.reasoning_id,
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": self.thinking}],
            "encrypted_content": self.thinking,
        }
        self.items.append(item)
        index, item_id, text = self.output_index, self.reasoning_id, self.thinking
        self.reasoning_id, self.thinking = "", ""
        self.output_index += 1
        return self._event(
            "response.reasoning_summary_text.done",
            item_id=item_id,
            output_index=index,
            summary_index=0,
            text=text,
        ) + self._event("response.output_item.done", output_index=index, item=item)

    def _calls(self, calls: list[dict[str, Any]]) -> list[bytes]:
        out: list[bytes] = []
        for i, call in enumerate(calls):
            index = self.output_index + i
            item_id = f"fc_{random.randrange(999999)}_{i}"
            args = call["function"]["arguments"]
            item = {
                "id": item_id,
                "type": "function_call",
                "status": "completed",
                "call_id": call["id"],
                "name": call["function"]["name"],
                "arguments": args,
            }
            self.items.append(item)
            added = item | {"status": "in_progress", "arguments": ""}
            out += self._event(
                "response.output_item.added", output_index=index, item=added
            )
            out += self._event(
                "response.function_call_arguments.delta",
                item_id=item_id,
                output_index=index,
                delta=args,
            )
            out += self._event(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                arguments=args,
            )
            out += self._event(
                "response.output_item.done", output_index=index, item=item
            )
        return out

    def _part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _message(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [self._part(text)]
        item = {"id": self.item_id, "type": "message", "status": status}
        return item | {"role": "assistant", "content": content}

    def _text(self, content: str) -> list[bytes]:
        out: list[bytes] = []
        where = {"item_id": self.item_id, "output_index": self.output_index}
        if not self.started:
            self.started = True
            out += self._event(
                "response.output_item.added",
                output_index=self.output_index,
                item=self._message("in_progress", None),
            )
            out += self._event(
                "response.content_part.added",
                **where,
                content_index=0,
                part=self._part(""),
            )
        self.text += content
        return out + self._event(
            "response.output_text.delta",
            **where,
            content_index=0,
            delta=content,
            logprobs=[],
        )

    def _completed(self, native: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        output = list(self.items)
        if self.started and not self.tool_calls_sent:
            where = {"item_id": self.item_id, "output_index": self.output_index}
            text = self.text
            out += self._event(
                "response.output_text.done",
                **where,
                content_index=0,
                text=text,
                logprobs=[],
            )
            out += self._event(
                "response.content_part.done",
                **where,
                content_index=0,
                part=self._part(text),
            )
            out += self._event(
                "response.output_item.done",
                output_index=self.output_index,
                item=self._message("completed", text),
            )
        if self.started:
            output.append(self._message("completed", self.text))
        usage = self._usage(native)
        response = self._response("completed", output, usage)
        response["completed_at"] = int(time.time())
        return out + self._event("response.completed", response=response)

    def _usage(self, native: dict[str, Any]) -> dict[str, Any]:
        given, made = native.get("prompt_eval_count", 0), native.get("eval_count", 0)
        return {
            "input_tokens": given,
            "output_tokens": made,
            "total_tokens": given + made,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }

    def _response(
        self, status: str, output: list[Any], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        r = self.request
        reasoning, text = r.get("reasoning"), r.get("text")
        reasoning = reasoning if isinstance(reasoning, dict) else {}
        text = text if isinstance(text, dict) else {}
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": int(time.time()),
            "completed_at": None,
            "status": status,
            "incomplete_details": None,
            "model": self.model,
            "previous_response_id": None,
            "instructions": r.get("instructions") or None,
            "output": output,
            "error": None,
            "tools": r.get("tools") or [],
            "tool_choice": "auto",
            "truncation": r.get("truncation") or "disabled",
            "parallel_tool_calls": True,
            "text": {"format": text.get("format") or {"type": "text"}},
            "top_p": go_float(r.get("top_p", 1)),
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": go_float(r.get("temperature", 1)),
            "reasoning": (
                {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
                if reasoning
                else None
            ),
            "usage": usage,
            "max_output_tokens": r.get("max_output_tokens"),
            "max_tool_calls": None,
            "store": False,
            "background": bool(r.get("background")),
            "service_tier": "default",
            "metadata": {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }

    def _whole(self, native: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
        """ToResponse: a struct, so its keys keep declaration order."""
        output: list[dict[str, Any]] = []
        if message.get("thinking"):
            output.append(
                {
                    "id": f"rs_{self.response_id}",
                    "type": "reasoning",
                    "summary": [{"type": "summary_text", "text": message["thinking"]}],
                    "encrypted_content": message["thinking"],
                }
            )
        calls = tool_calls_of(message.get("tool_calls"))
        for i, call in enumerate(calls):
            output.append(
                {
                    "id": f"fc_{self.response_id}_{i}",
                    "type": "function_call",
                    "status": "completed",
                    "call_id": call["id"],
                    "name": call["function"]["name"],
                    "arguments": call["function"]["arguments"],
                }
            )
        if not calls:
            output.append(
                {
                    "id": self.item_id,
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [self._part(message.get("content", ""))],
                }
            )
        response = self._response("completed", output, self._usage(native))
        response["created_at"] = unix(native.get("created_at"))
        response["completed_at"] = int(time.time())
        return response


# How encoding/json names the type ResponsesInput.UnmarshalJSON reads each item's
# "type" and "role" into (openai/responses.go), in its errors.
_ITEM_TYPE = 'struct { Type string "json:\\"type\\""; Role string "json:\\"role\\"" }'


def _responses_input(given: Any) -> list[dict[str, Any]]:
    if isinstance(given, str):
        return [{"role": "user", "content": given}] if given else []
    if given is not None and not isinstance(given, list):
        raise Reject(
            400,
            f"input must be a string or array: json: cannot unmarshal "
            f"{go_kind(given)} into Go value of type []json.RawMessage",
        )
    messages = []
    for index, item in enumerate(given or []):
        if not isinstance(item, dict):
            raise Reject(
                400,
                f"input[{index}]: json: cannot unmarshal {go_kind(item)} "
                f"into Go value of type {_ITEM_TYPE}",
            )
        content = item.get("content")
        if isinstance(content, list):  # input_text / output_text parts
            content = "".join(
                str(p.get("text", "")) for p in content if isinstance(p, dict)
            )
        if item.get("type", "message") == "message":
            messages.append(
                {"role": item.get("role", "user"), "content": content or ""}
            )
    return messages


def request(raw: bytes) -> tuple[dict[str, Any], Writer]:
    body = bind_body(raw, "ResponsesRequest")
    messages = _responses_input(body.get("input"))
    if body.get("instructions"):
        messages.insert(0, {"role": "system", "content": body["instructions"]})
    stream = body.get("stream") is True  # defaults to false
    native: dict[str, Any] = {
        "model": body.get("model", ""),
        "messages": messages,
        "stream": stream,
        "options": {"temperature": body.get("temperature", 1.0)}
        | {"top_p": body.get("top_p", 1.0)}
        | (
            {"num_predict": body["max_output_tokens"]}
            if body.get("max_output_tokens") is not None
            else {}
        ),
    }
    if body.get("tools"):
        native["tools"] = [
            {
                "type": "function",
                "function": {k: v for k, v in t.items() if k != "type"},
            }
            for t in body["tools"]
            if isinstance(t, dict)
        ]
    reasoning = body.get("reasoning")
    think = think_of(reasoning.get("effort") if isinstance(reasoning, dict) else None)
    if think is not None:
        native["think"] = think
    return native, ResponsesWriter(stream, body)
