"""chatsvc: a streaming chat gateway and web page in front of Ollama."""

from __future__ import annotations

from typing import Any

from flask import Flask

from chatsvc import accesslog, errors, relay, routes, security, store
from chatsvc import config as config_module
from chatsvc.hosts import Hosts


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app from the environment, with test_config's values on top."""
    app = Flask(__name__, template_folder="../templates", static_folder="../static")
    config = config_module.load()
    config.update(test_config or {})
    app.config["MAX_CONTENT_LENGTH"] = config["CHATSVC_MAX_BODY_BYTES"]
    app.config["CHATSVC"] = config
    if config["CHATSVC_REDIS_URL"] is None:
        # gunicorn.conf.py starts the embedded store and sets it for the workers.
        raise config_module.ConfigError(
            "CHATSVC_REDIS_URL is unset: start chatsvc with gunicorn.conf.py "
            "(README's run command), or point it at a Redis or Valkey server"
        )
    shared_store = store.Store(config["CHATSVC_REDIS_URL"], config["CHATSVC_LEASE_S"])
    app.extensions["chatsvc"] = relay.State(
        config=config,
        upstream=Hosts(config, shared_store),
        store=shared_store,
        slots=store.Slots(
            shared_store,
            config["CHATSVC_MAX_STREAMS"],
            config["CHATSVC_MAX_STREAMS_PER_CLIENT"],
        ),
    )
    accesslog.init_app(app)
    security.init_app(app)
    errors.init_app(app)
    routes.init_app(app)
    return app
