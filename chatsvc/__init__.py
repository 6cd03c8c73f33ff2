"""chatsvc: a streaming chat gateway and web page in front of Ollama."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from chatsvc import config as config_module
from chatsvc import routes, security, store
from chatsvc.upstream import Upstream


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app from the environment, with test_config's values on top."""
    app = Flask(__name__, template_folder="../templates", static_folder="../static")
    config = config_module.load()
    config.update(test_config or {})
    app.config["MAX_CONTENT_LENGTH"] = config["CHATSVC_MAX_BODY_BYTES"]
    if config["CHATSVC_REDIS_URL"] is None:
        # gunicorn.conf.py starts the embedded store and sets it for the workers.
        raise config_module.ConfigError(
            "CHATSVC_REDIS_URL is unset: start chatsvc with gunicorn.conf.py "
            "(README's run command), or point it at a Redis or Valkey server"
        )
    shared_store = store.Store(config["CHATSVC_REDIS_URL"], config["CHATSVC_LEASE_S"])
    app.extensions["chatsvc"] = routes.State(
        config=config,
        upstream=Upstream(
            config["OLLAMA_HOST"],
            timeout_s=config["CHATSVC_UPSTREAM_TIMEOUT_S"],
            max_streams=config["CHATSVC_MAX_STREAMS"],
        ),
        store=shared_store,
        slots=store.Slots(
            shared_store,
            config["CHATSVC_MAX_STREAMS"],
            config["CHATSVC_MAX_STREAMS_PER_CLIENT"],
        ),
    )
    if config["CHATSVC_CORS_ORIGINS"]:
        security.init_cors(app, config["CHATSVC_CORS_ORIGINS"])
    routes.init_app(app)
    _log_to_stderr()
    return app


def _log_to_stderr() -> None:
    """One JSON object per line on stderr, next to gunicorn's own log."""
    log = logging.getLogger("chatsvc.access")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
