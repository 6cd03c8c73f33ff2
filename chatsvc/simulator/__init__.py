"""An Ollama stand-in on the wire: python -m chatsvc.simulator, or Simulator() in tests.

It imports nothing from chatsvc: the product is tested against it. It speaks the
native API (chat, generate, embed, embeddings, tags, show, ps, version, pull, push,
create, copy, delete, blobs), Ollama's /v1 layer (chat/completions, completions,
embeddings, models, responses) and gin's 404/405, as ollama-wire.md
describes them. Where that document (read from 0.33) and Ollama 0.17.4, which
`bin/conformance --simulator` holds it to, differ, it answers as 0.17.4: a chat
model on llama.cpp embeds, and /v1 chat chunks each carry the role.

Settings (constructor keywords, ``sim.settings.x = ...``, or POST /_sim/settings):
  models             installed models, newest first
  first_token_delay  seconds of silence before the first line (prompt evaluation)
  interval           seconds between lines; chunks: how many text lines (None: text)
  fault, fault_after, fault_message   see FAULTS
  parallel           generations in flight per model (OLLAMA_NUM_PARALLEL); None: any
  load_delay         seconds to load a model that is not loaded
  pull_speed         bytes a second a pull downloads; pull_tick: seconds a line
GET /_sim/stats: hangups, streams_open, requests, in_flight, max_in_flight, waiting,
cpu_seconds. POST /_sim/reset: the constructor's settings, no records, no models
pulled or created, nothing loaded.

  wire.py        Go's JSON, timestamps, gin's body binding, durations
  catalog.py     the registry's models, installed and loaded models
  replies.py     reply text, chunk bytes, final stats, embeddings
  management.py  pull, push and create progress streams
  openai.py      Ollama's /v1 middleware: translations and writers
  responses.py   /v1/responses: its translation, events and whole reply
  handler.py     one request: routes and views, pacing, faults, hang-ups
  server.py      Simulator: settings, records, model state, slots, the server
"""

from __future__ import annotations

from .server import FAULTS, VERSION, Hangup, RequestRecord, Settings, Simulator

__all__ = ["FAULTS", "VERSION", "Hangup", "RequestRecord", "Settings", "Simulator"]
