"""Reference (a): the common FastAPI recipe for relaying Ollama's stream.

A sync generator over the official client's iterator in a StreamingResponse
(Starlette runs each step of it in its thread pool), served by uvicorn
`--workers 2`. OLLAMA_HOST picks the upstream.
"""

from __future__ import annotations

from collections.abc import Iterator

import ollama
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

app = FastAPI()


@app.post("/api/chat")
async def chat(request: Request) -> StreamingResponse:
    body = await request.json()
    body.pop("stream", None)

    def gen() -> Iterator[str]:
        for part in ollama.chat(**body, stream=True):
            yield part.model_dump_json(exclude_none=True) + "\n"

    return StreamingResponse(gen(), media_type="application/x-ndjson")
