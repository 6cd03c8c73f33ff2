"""Reference (b): the simplest Flask relay of Ollama's stream.

`Response(stream_with_context(gen()))` over the official client's iterator, as the
Flask streaming docs and most tutorials write it: no pump thread, no heartbeats,
no limits. Served by gunicorn gthread like chatsvc; OLLAMA_HOST picks the upstream.
"""

from __future__ import annotations

from collections.abc import Iterator

import ollama
from flask import Flask, Response, request, stream_with_context

app = Flask(__name__)


@app.post("/api/chat")
def chat() -> Response:
    body = request.get_json()
    body.pop("stream", None)

    def gen() -> Iterator[str]:
        for part in ollama.chat(**body, stream=True):
            yield part.model_dump_json(exclude_none=True) + "\n"

    return Response(stream_with_context(gen()), mimetype="application/x-ndjson")
