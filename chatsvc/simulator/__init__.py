"""An Ollama stand-in on the wire: python -m chatsvc.simulator, or Simulator() in tests.

It imports nothing from chatsvc: the product is tested against it.

  wire.py        Go's JSON, timestamps, gin's body binding, durations
  catalog.py     the registry's models, installed and loaded models
  replies.py     reply text, chunk bytes, final stats, embeddings
  management.py  pull, push and create progress streams
  openai.py      Ollama's /v1 middleware: translations and writers
  handler.py     one request: routes and views, pacing, faults, hang-ups
  server.py      Simulator: settings, records, model state, slots, the server
"""

from __future__ import annotations

from .server import FAULTS, VERSION, Hangup, RequestRecord, Settings, Simulator

__all__ = ["FAULTS", "VERSION", "Hangup", "RequestRecord", "Settings", "Simulator"]
