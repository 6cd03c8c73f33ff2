"""Reference: Open WebUI's way of using several Ollama hosts.

open-webui `routers/ollama.py` keeps each host's model list and sends a request
to `random.choice` of the hosts that list its model, with no slot count and no
retry on another host. OLLAMA_HOSTS (comma-separated URLs) names the hosts.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import ollama
from flask import Flask, Response, request, stream_with_context

app = Flask(__name__)
URLS = os.environ["OLLAMA_HOSTS"].split(",")
# Read once, in the master (--preload), as Open WebUI keeps its model lists; with
# throwaway clients, so no worker inherits the master's pooled connections.
MODELS = {url: {m.model for m in ollama.Client(host=url).list().models} for url in URLS}
CLIENTS = {url: ollama.Client(host=url) for url in URLS}


def _has(models: set[str | None], name: str) -> bool:
    return name in models or f"{name}:latest" in models


@app.get("/models")
def models() -> dict[str, list[str]]:
    return {url: sorted(str(m) for m in names) for url, names in MODELS.items()}


@app.post("/api/chat")
def chat() -> Response:
    body = request.get_json()
    body.pop("stream", None)
    urls = [url for url, models in MODELS.items() if _has(models, body["model"])]
    client = CLIENTS[random.choice(urls)]

    def gen() -> Iterator[str]:
        for part in client.chat(**body, stream=True):
            yield part.model_dump_json(exclude_none=True) + "\n"

    return Response(stream_with_context(gen()), mimetype="application/x-ndjson")
