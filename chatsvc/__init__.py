"""chatsvc: a streaming chat gateway and web page in front of Ollama."""

from __future__ import annotations

from typing import Any

from flask import Flask

from chatsvc import accesslog, errors, relay, routes, security
from chatsvc import config as config_module
from chatsvc.upstream import Upstream


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app from the environment, with test_config's values on top."""
    app = Flask(__name__, template_folder="../templates", static_folder="../static")
    config = config_module.load()
    config.update(test_config or {})
    app.config["MAX_CONTENT_LENGTH"] = config["CHATSVC_MAX_BODY_BYTES"]
    app.config["CHATSVC"] = config
    app.extensions["chatsvc"] = relay.State(
        config=config,
        upstream=Upstream(
            config["OLLAMA_HOST"],
            timeout_s=config["CHATSVC_UPSTREAM_TIMEOUT_S"],
            max_streams=config["CHATSVC_MAX_STREAMS"],
        ),
        slots=security.Slots(
            config["CHATSVC_MAX_STREAMS"], config["CHATSVC_MAX_STREAMS_PER_CLIENT"]
        ),
    )
    accesslog.init_app(app)
    security.init_app(app)
    errors.init_app(app)
    routes.init_app(app)
    return app
